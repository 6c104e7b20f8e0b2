"""The dashboard's history: fixed-size rings that keep the newest samples and events, merge floods,
survive a worker's recycle through their file, and are fed by the registry, the watchdog and the
request middleware; `/dashboard/history` serves them behind the API key like `/dashboard/data`."""

import os
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import suppress

import psutil
import pytest

from service import events
from service.budget import Budget
from service.exceptions import OverBudget, TooLarge
from service.monitoring import history as history_module
from service.monitoring.config import MonitoringSettings, get_monitoring_settings
from service.monitoring.history import DETAIL_BYTES, FILE_NAME, MERGE_S, History, Layout
from service.ops.config import get_ops_settings
from service.ops.watchdog import Limits, Watchdog
from service.registry import Loadable, Registry
from tests.support import recycling_server

KEY = "dashboard-test-key-0123"


@pytest.fixture(autouse=True)
def _fresh_ops_settings() -> Iterator[None]:
    """API_KEY set by a test here is gone for the next one."""
    yield
    get_ops_settings.cache_clear()


@pytest.fixture
def history_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., None]]:
    """`history_env(HISTORY_STEP_S="0.1")`: these history settings for the app started next."""

    def set_env(**env: str) -> None:
        for name in MonitoringSettings.model_fields:
            monkeypatch.delenv(name.upper(), raising=False)
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        get_monitoring_settings.cache_clear()

    yield set_env
    monkeypatch.undo()
    get_monitoring_settings.cache_clear()


def sample(history: History, t: float, **values: float) -> None:
    history.record_sample({"t": t, "rss_mb": 100.0, **values})


def test_the_sample_ring_keeps_the_newest_in_order_in_fixed_memory():
    layout = Layout(samples=5, events=16, step_s=5)
    history = History(layout)
    try:
        size = history.bytes
        for t in range(1, 13):
            sample(history, float(t), rss_mb=100.0 + t)
        read = history.read()["samples"]
        assert read["t"] == [8.0, 9.0, 10.0, 11.0, 12.0]
        assert read["rss_mb"] == [108.0, 109.0, 110.0, 111.0, 112.0]
        assert history.read(after=10.0)["samples"]["t"] == [11.0, 12.0]
        assert history.read(after=12.0)["samples"]["t"] == []
        assert history.bytes == size == layout.size  # never grows
    finally:
        history.close()


def test_default_window_is_an_hour_at_5_s_steps_in_under_100_kib(history_env):
    history_env()
    settings = get_monitoring_settings()
    assert settings.history_samples == 720
    layout = Layout(settings.history_samples, settings.history_events, settings.history_step_s)
    assert layout.size < 100 * 1024
    with pytest.raises(ValueError, match="at most"):
        MonitoringSettings(history_window_s=10**7, history_step_s=1)


def test_step_counts_come_from_requests_and_events_and_start_over_each_sample():
    history = History(Layout(samples=10, events=16, step_s=5))
    try:
        history.observe_request("/analyze", 200, 0.25)
        history.observe_request("/analyze", 503, 0.05)
        history.observe_request("/ocr", 500, 0.1)
        history.observe_request("/dashboard/data", 200, 0.01)  # the page's own polling is left out
        history.record_event("load", "sentiment:es", 120.0)
        history.record_event("eviction", "sentiment:es", 90.0)
        history.record_event("refusal", "loading sentiment:en")
        history.record_event("watchdog", "cleanup over the soft limit", 300.0)
        sample(history, 1.0)
        sample(history, 2.0)
        read = history.read()["samples"]
        assert read["requests"] == [3, 0]
        assert read["latency_s"] == [0.4, 0.0]
        assert read["errors_503"] == [1, 0]
        assert read["errors_5xx"] == [2, 0]
        assert (read["loads"], read["evictions"], read["refusals"], read["watchdog"]) == ([1, 0],) * 4
    finally:
        history.close()


def test_repeated_events_merge_and_the_event_ring_keeps_the_newest():
    history = History(Layout(samples=4, events=16, step_s=5))
    try:
        for i in range(50):  # a flood of one refusal: one entry, counted
            history.record_event("refusal", "loading sentiment:en", at=1000.0 + i)
        history.record_event("load", "sentiment:es", 120.0, at=1100.0)
        history.record_event("refusal", "loading sentiment:en", at=1101.0)  # not in a row: its own entry
        history.record_event("refusal", "loading sentiment:en", at=1101.0 + MERGE_S + 1)  # too late to merge
        kept = history.read()["events"]
        assert [(e["kind"], e["count"]) for e in kept] == [
            ("refusal", 50),
            ("load", 1),
            ("refusal", 1),
            ("refusal", 1),
        ]
        assert (kept[0]["t"], kept[0]["t_last"]) == (1000.0, 1049.0)
        assert kept[1] == {
            "t": 1100.0,
            "t_last": 1100.0,
            "kind": "load",
            "detail": "sentiment:es",
            "value": 120.0,
            "count": 1,
        }
        for i in range(40):
            history.record_event("load", f"model:{i}", at=2000.0 + i)
        kept = history.read()["events"]
        assert [e["detail"] for e in kept] == [f"model:{i}" for i in range(24, 40)]
        history.record_event("watchdog", "é" * DETAIL_BYTES, at=3000.0)  # cut at a character, never mid-way
        assert history.read()["events"][-1]["detail"] == "é" * (DETAIL_BYTES // 2)
    finally:
        history.close()


def test_a_file_history_is_carried_on_by_the_next_process_and_locked_meanwhile(tmp_path):
    layout = Layout(samples=8, events=16, step_s=5)
    first = History(layout, tmp_path)
    assert first.persisted and not first.restored
    sample(first, 1.0, rss_mb=200.0)
    first.record_event("recycle", "RSS stays over the hard limit", 480.0, at=1.5)
    second = History(layout, tmp_path)  # the file is locked: a second user keeps its own, in memory
    try:
        assert not second.persisted
        assert second.read()["samples"]["t"] == []
    finally:
        second.close()
    first.close()  # the worker exits: the lock goes
    assert (tmp_path / FILE_NAME).stat().st_size == layout.size
    third = History(layout, tmp_path)
    try:
        assert third.persisted and third.restored
        assert third.read()["samples"]["rss_mb"] == [200.0]
        assert [e["kind"] for e in third.read()["events"]] == ["recycle"]
        sample(third, 2.0)
        assert third.read()["samples"]["t"] == [1.0, 2.0]
    finally:
        third.close()
    other = History(Layout(samples=8, events=16, step_s=1), tmp_path)  # a new layout starts afresh
    try:
        assert other.persisted and not other.restored
        assert other.read() == {
            "samples": {name: [] for name, _ in history_module.SAMPLE_COLUMNS},
            "events": [],
        }
    finally:
        other.close()


def test_an_unusable_history_dir_falls_back_to_memory(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a dir")
    history = History(Layout(samples=4, events=16, step_s=5), blocker / "sub")
    try:
        assert not history.persisted
        sample(history, 1.0)
        assert history.read()["samples"]["t"] == [1.0]
    finally:
        history.close()


@pytest.mark.slow
def test_the_registry_and_the_watchdog_say_what_they_did():
    seen: list[tuple[str, str]] = []
    unsubscribe = events.subscribe(lambda kind, detail, value, at: seen.append((kind, detail)))
    try:
        registry = Registry(Budget(limit_mb=1000, margin_mb=0, source="test"), used=lambda: 100.0)
        with registry.use(Loadable("fake:a", load=object, estimate_mb=lambda: 10.0)):
            pass
        registry.unload("fake:a")
        with pytest.raises(OverBudget), registry.use(Loadable("huge", load=object, estimate_mb=lambda: 1e6)):
            pass
        with pytest.raises(TooLarge), registry.reserve(5000, "a batch of 500 texts"):
            pass
        rss = [900.0]
        watchdog = Watchdog(
            Limits(1000, 850, 950), evict_idle=lambda until_mb, min_idle_s: [], used=lambda: rss[0],
            recycle=lambda: None, min_uptime_s=0, cleanup_cooldown_s=0,
        )  # fmt: skip
        watchdog.check()  # over the soft limit: a cleanup
        rss[0] = 960.0
        watchdog.check()  # over the hard limit: refusing
        watchdog.check()  # still over it with nothing in flight: recycle
    finally:
        unsubscribe()
    assert seen[0][0] == "load" and seen[0][1].startswith("fake:a in ")
    assert seen[1:4] == [
        ("eviction", "fake:a"),
        ("refusal", "loading huge"),
        ("refusal", "a batch of 500 texts"),
    ]
    kinds = [kind for kind, _ in seen[4:]]
    assert kinds.count("watchdog") >= 2 and kinds[-1] == "recycle"
    assert ("watchdog", "over the hard limit: refusing new work") in seen


def test_the_app_samples_serves_and_counts_its_history(make_client, history_env):
    history_env(HISTORY_STEP_S="0.1", HISTORY_WINDOW_S="60")
    client = make_client(BACKEND="onnx", ONNX_DIR="/nonexistent", MEMORY_BUDGET_MB="4096")
    assert client.post("/analyze", json={"text": "hola"}).status_code == 503  # no model here
    client.get("/health")
    deadline = time.monotonic() + 10
    while sum(client.get("/dashboard/history").json()["samples"]["requests"]) < 2:
        assert time.monotonic() < deadline, "no sample counted the requests"
        time.sleep(0.1)
    response = client.get("/dashboard/history")
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert (body["step_s"], body["capacity"], body["window_s"]) == (0.1, 600, 60.0)
    assert body["persisted"] is False and body["pid"] == os.getpid()
    samples = body["samples"]
    assert samples["t"] == sorted(samples["t"]) and len(samples["t"]) >= 2
    assert samples["budget_mb"][-1] == 4096 and samples["rss_mb"][-1] > 10
    assert sum(samples["errors_503"]) == 1
    assert [e["kind"] for e in body["events"]][:1] == ["start"]
    newest = samples["t"][-1]
    assert all(t > newest for t in client.get(f"/dashboard/history?after={newest}").json()["samples"]["t"])
    assert client.get("/memory").json()["history_bytes"] == body["bytes"] == Layout(600, 256, 0.1).size
    for bad in ("-1", "abc", "nan", "inf"):
        error = client.get(f"/dashboard/history?after={bad}")
        assert error.status_code == 422, bad
        assert error.json()["error"]["code"]


def test_only_the_page_shell_is_served_without_the_key(make_client, monkeypatch):
    monkeypatch.setenv("API_KEY", KEY)
    get_ops_settings.cache_clear()
    client = make_client(BACKEND="onnx", ONNX_DIR="/nonexistent")
    page = client.get("/dashboard")
    assert page.status_code == 200
    assert page.headers["referrer-policy"] == "no-referrer"
    assert "set-cookie" not in page.headers
    assert "rss_mb" not in page.text.split("<script>")[0]  # a shell: the data comes from the feeds
    for path in ("/dashboard/data", "/dashboard/history", "/dashboard/", "/dashboard/other", "/metrics"):
        assert client.get(path).status_code == 401, path
        assert (
            client.get(path, headers={"X-API-Key": "wrong"})
            .json()["error"]["message"]
            .startswith("the API key is wrong")
        )
    for path in ("/dashboard/data", "/dashboard/history"):
        assert client.get(path, headers={"X-API-Key": KEY}).status_code == 200, path
        assert client.get(path, headers={"Authorization": f"Bearer {KEY}"}).status_code == 200, path


def wait_for(condition: Callable[[], object], timeout: float, what: str) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with suppress(OSError, ValueError, KeyError):
            value = condition()
            if value:
                return value
        time.sleep(0.1)
    raise AssertionError(f"not within {timeout} s: {what}")


@pytest.mark.slow
def test_the_history_survives_a_recycle_under_supervise_sh(tmp_path):
    """A real worker over its hard limit refuses work, then recycles; supervise.sh starts a fresh one,
    whose history still has the first worker's samples, its 503 and the recycle."""
    with recycling_server(tmp_path, HISTORY_STEP_S="0.2") as server:
        (first,) = server.worker_pids()
        history_dir = psutil.Process(first).environ()["HISTORY_DIR"]
        assert os.path.isfile(os.path.join(history_dir, FILE_NAME))
        response = server.request(
            "POST", "/analyze", b'{"text": "hola"}', {"Content-Type": "application/json"}
        )
        assert response.status == 503
        wait_for(lambda: server.worker_pids() not in ([], [first]), 30, "the worker recycled")
        (second,) = server.worker_pids()

        def history_of_second() -> dict | None:
            body = server.request("GET", "/dashboard/history").json()
            return body if body["pid"] == second and second in body["samples"]["pid"] else None

        body = wait_for(history_of_second, 30, "the fresh worker's history")
        assert body["persisted"] is True
        samples = body["samples"]
        before = [i for i, pid in enumerate(samples["pid"]) if pid == first]
        assert before and max(before) < samples["pid"].index(second)  # the first worker's, then its own
        assert sum(samples["errors_503"][i] for i in before) >= 1
        assert any(samples["refusing"][i] for i in before)
        kinds = [(e["kind"], e["detail"]) for e in body["events"]]
        assert ("start", f"worker {first} started") in kinds
        assert any(kind == "recycle" for kind, _ in kinds)
        assert ("stop", f"worker {first} stopping") in kinds
        assert ("start", f"worker {second} started, the previous worker's history kept") in kinds
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(timeout=15) == 0
    assert not os.path.exists(history_dir)  # supervise.sh's own dir goes with it


def test_a_closed_history_drops_what_races_the_shutdown():
    history = History(Layout(samples=4, events=16, step_s=5))
    history.close()
    history.record_event("load", "sentiment:es", 1.0)  # an event from a request still finishing
    sample(history, 1.0)
    history.observe_request("/analyze", 200, 0.1)
    assert history.read()["events"] == []
