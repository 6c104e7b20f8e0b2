"""The memory watchdog contains leak-like growth: soft limit cleans up, hard limit refuses, then recovery.

The leak is real (bytearrays that a route keeps), and so are the models (registry items holding
memory): one the route uses, one loaded earlier and idle since, which the soft limit unloads.
RSS is read as what these hold plus a fixed base, so the figures do not depend on what else the
test process holds; the watchdog's checks are called after each request instead of on its
thread's clock, so the sequence is exact.
"""

import gc
import time

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from service.budget import MB, Budget
from service.error_handlers import install_handlers
from service.ops import install_ops
from service.ops import watchdog as watchdog_module
from service.ops.watchdog import Limits, Watchdog
from service.registry import Loadable, Registry
from tests.support import app_client

BUDGET_MB = 200.0  # soft limit 170 MB, hard limit 190 MB
BASE_MB = 60.0
BUSY_MB = 30
IDLE_MB = 40
LEAK_PER_REQUEST_MB = 10
MIN_IDLE_S = 0.5


class Memory:
    """What the process holds: a base, the models the registry has loaded, and what has leaked."""

    def __init__(self) -> None:
        self.models: dict[str, bytearray] = {}
        self.leaked: list[bytearray] = []

    def rss(self) -> float:
        held = sum(len(block) for block in [*self.models.values(), *self.leaked])
        return BASE_MB + held / MB


class Model:
    def __init__(self, memory: Memory, name: str, size_mb: int) -> None:
        self.memory, self.name = memory, name
        memory.models[name] = bytearray(size_mb * MB)

    def close(self) -> None:
        del self.memory.models[self.name]


def model_item(memory: Memory, name: str, size_mb: int) -> Loadable:
    return Loadable(name, load=lambda: Model(memory, name, size_mb), estimate_mb=lambda: size_mb)


def leaky_app(memory: Memory, registry: Registry) -> FastAPI:
    """An app of this test only: each request uses a model and leaks 10 MB that nothing frees."""
    app = FastAPI()
    install_handlers(app)
    busy = model_item(memory, "busy", BUSY_MB)

    @app.post("/work")
    def work() -> dict:
        with registry.use(busy):
            memory.leaked.append(bytearray(LEAK_PER_REQUEST_MB * MB))
        return {"rss_mb": memory.rss()}

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok"}

    @app.get("/memory")
    def memory_report() -> dict:
        return {"rss_mb": memory.rss()}

    install_ops(app)
    return app


@pytest.fixture
def collections(monkeypatch) -> list[int]:
    """gc.collect, counted: in a test process holding torch each real one takes ~0.3 s, and the
    fake memory here is freed by reference counting anyway."""
    calls: list[int] = []
    monkeypatch.setattr(gc, "collect", lambda generation=2: calls.append(generation) or 0)
    return calls


@pytest.fixture
def contained(ops_env, monkeypatch, collections):
    ops_env(REQUEST_TIMEOUT_S="0")
    memory = Memory()
    registry = Registry(Budget(BUDGET_MB, "test", 0), used=memory.rss)
    watchdog = Watchdog(
        Limits(BUDGET_MB, soft_mb=0.85 * BUDGET_MB, hard_mb=0.95 * BUDGET_MB),
        evict_idle=registry.evict_idle,
        used=memory.rss,
        cleanup_cooldown_s=0,
        min_idle_s=MIN_IDLE_S,
    )
    monkeypatch.setattr(watchdog_module, "_current", watchdog)
    with TestClient(leaky_app(memory, registry), raise_server_exceptions=False) as client:
        with registry.use(model_item(memory, "idle", IDLE_MB)):
            pass
        time.sleep(MIN_IDLE_S)  # the idle model has been unused long enough to be unloaded
        yield client, memory, registry, watchdog


def test_leak_like_growth_is_contained_then_recovers(contained, collections):
    client, memory, registry, watchdog = contained
    statuses, peak = [], 0.0
    # The busy model stays in use throughout (as by a long request), so only the idle one can go.
    with registry.use(model_item(memory, "busy", BUSY_MB)):
        for _ in range(30):
            response = client.post("/work")
            statuses.append(response.status_code)
            watchdog.check()
            peak = max(peak, memory.rss())
            if response.status_code == 503:
                error = response.json()["error"]
                assert error["code"] == "over_memory_budget"
                assert response.headers["retry-after"] == "5"
                assert error["hard_limit_mb"] == 190

    # Soft limit (170 MB): gc and malloc_trim could not free the leak, so the idle model was unloaded;
    # the one in use every request stayed.
    assert registry.counters["evictions"] == 1
    assert not registry.is_loaded("idle") and registry.is_loaded("busy")
    assert watchdog.counters["cleanups"] >= 2
    assert len(collections) >= watchdog.counters["cleanups"]
    # Hard limit (190 MB): new work refused; the growth stopped there, under the 200 MB budget.
    first_refusal = statuses.index(503)
    assert statuses[:first_refusal].count(200) >= 5
    assert set(statuses[first_refusal:]) == {503}
    assert peak == 190 < BUDGET_MB
    assert watchdog.refusing and watchdog.counters["refused"] == 30 - first_refusal
    # What a platform and an operator read is never refused.
    assert client.get("/health").status_code == 200
    assert client.get("/memory").json()["rss_mb"] == 190

    # Memory that frees up (as in a fresh worker) admits work again, but only halfway back to the
    # soft limit (180 MB), so that admission does not flap at the hard limit.
    memory.leaked[:3] = []
    watchdog.check()
    assert memory.rss() == 160 and not watchdog.refusing
    assert client.post("/work").status_code == 200


def test_refusal_ends_halfway_back_to_the_soft_limit(collections):
    memory = Memory()
    watchdog = Watchdog(
        Limits(BUDGET_MB, 170, 190), evict_idle=lambda until_mb, min_idle_s: [], used=memory.rss
    )
    for rss, refusing in ((195, True), (185, True), (181, True), (179, False), (189, False), (190, True)):
        memory.leaked[:] = [bytearray(int((rss - BASE_MB) * MB))]
        watchdog.check()
        assert watchdog.refusing is refusing, rss
        assert watchdog.admit() is not refusing
        if not refusing:
            watchdog.release()


def over_the_hard_limit() -> tuple[Watchdog, list[float], list[float]]:
    """A watchdog at 195 MB (hard limit 190) that records recycles, on a clock the test moves."""
    memory = Memory()
    memory.leaked.append(bytearray(135 * MB))  # 195 MB
    recycled: list[float] = []
    now = [0.0]
    watchdog = Watchdog(
        Limits(BUDGET_MB, 170, 190),
        evict_idle=lambda until_mb, min_idle_s: [],
        used=memory.rss,
        recycle=lambda: recycled.append(memory.rss()),
        min_uptime_s=60,
        clock=lambda: now[0],
    )
    return watchdog, recycled, now


def test_recycling_waits_for_the_work_in_flight_and_happens_once(collections):
    watchdog, recycled, now = over_the_hard_limit()
    assert watchdog.admit()  # a request in flight when the limit is reached
    watchdog.check()
    assert watchdog.refusing and not watchdog.admit()
    now[0] = 120
    watchdog.check()
    assert recycled == []  # it may still finish, and free what it held
    watchdog.release()
    watchdog.check()
    assert recycled == [195]
    watchdog.check()
    assert recycled == [195] and watchdog.refusing  # once; and nothing is admitted meanwhile


def test_a_young_worker_is_not_recycled(collections):
    """A worker over the hard limit right after it started would be over it again after a restart."""
    watchdog, recycled, now = over_the_hard_limit()
    for now[0] in (1, 30, 59):
        watchdog.check()
    assert watchdog.refusing and recycled == []
    now[0] = 61
    watchdog.check()
    assert recycled == [195]


def test_soft_limit_cleans_up_at_most_every_cooldown(collections):
    memory = Memory()
    memory.leaked.append(bytearray(115 * MB))  # 175 MB: over the soft limit, under the hard one
    now = [0.0]
    watchdog = Watchdog(
        Limits(BUDGET_MB, 170, 190),
        evict_idle=lambda until_mb, min_idle_s: [],
        used=memory.rss,
        cleanup_cooldown_s=5,
        clock=lambda: now[0],
    )
    for now[0] in range(10):
        watchdog.check()
    assert watchdog.counters["cleanups"] == 2  # at 0 s and 5 s
    assert not watchdog.refusing


def test_the_app_lifespan_runs_the_watchdog_thread(ops_env):
    """The real app: a budget below what this process already holds is over the hard limit at once."""
    ops_env(MEMORY_WATCHDOG="true", WATCHDOG_INTERVAL_S="0.05")
    with app_client(
        BACKEND="onnx", ONNX_DIR="/nonexistent", MEMORY_BUDGET_MB="20", NUM_THREADS="1"
    ) as client:
        watchdog = watchdog_module.current_watchdog()
        assert watchdog is not None and watchdog.refusing
        response = client.post("/analyze", json={"text": "hola"})
        assert response.status_code == 503
        assert response.json()["error"]["code"] == "over_memory_budget"
        assert response.headers["retry-after"] == "5"
        assert client.get("/health").status_code == 200
        assert client.get("/memory").status_code == 200
        assert watchdog._thread is not None and watchdog._thread.is_alive()
    assert watchdog_module.current_watchdog() is None
    assert not watchdog._thread.is_alive()
