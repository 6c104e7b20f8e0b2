"""Micro-batching: each caller gets exactly its results, the queue is bounded, memory failures
split batches, padding is bucketed, and worker threads stop with their model and the app."""

import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from service import hardware
from service.budget import Budget
from service.exceptions import OverBudget, Overloaded
from service.registry import Registry
from service.sentiment import batching, service
from service.sentiment.analyzer import Analyzer
from service.sentiment.batching import Batcher, buckets, infer, is_allocation_failure, work_mb
from service.sentiment.preprocessing import preprocess_tweet
from tests.sentiment.fakes import FakeModel, fake_item, fake_probas, fake_registry
from tests.support import app_client, configured


def config(**env: str) -> hardware.HardwareConfig:
    with configured(**env) as settings:
        return hardware.detect(settings, smi=lambda: "")


def expected(text: str) -> dict[str, float]:
    return dict(zip(["NEG", "NEU", "POS"], fake_probas(text), strict=True))


def batcher_threads() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name.startswith("batcher ")]


def test_concurrent_callers_each_get_their_own_results_in_fewer_model_calls():
    model = FakeModel(delay_s=0.01)
    registry, item = fake_registry(), fake_item(model)
    requests = [[f"texto {i} {j}" for j in range(1 + i % 3)] for i in range(48)]
    start = threading.Barrier(len(requests))

    def call(texts: list[str]) -> list[dict[str, float]]:
        start.wait()
        with registry.use(item) as analyzer:
            return [p.probas for p in batching.analyze(item, analyzer, texts, registry, max_size=16)]

    with batching.running(
        config(BATCH_MAX_SIZE="16", BATCH_MAX_WAIT_MS="50", QUEUE_MAX="200"), registry
    ) as pool:
        with ThreadPoolExecutor(len(requests)) as threads:
            answers = list(threads.map(call, requests))
        stats = pool.stats()["sentiment:es"]

    for texts, answer in zip(requests, answers, strict=True):
        assert answer == [expected(text) for text in texts]
    assert len(model.calls) < len(requests) / 2
    assert sum(map(len, model.calls)) == sum(map(len, requests))
    assert max(map(len, model.calls)) <= 16
    assert model.max_active == 1  # one worker: the model is never run twice at once
    assert stats["requests"] == len(requests) and stats["largest_batch"] > 1
    assert batcher_threads() == []  # stopped and joined with the pool


def test_a_request_larger_than_the_batch_is_run_in_chunks():
    model = FakeModel()
    registry, item = fake_registry(), fake_item(model)
    batcher = Batcher(item, registry, max_size=4, max_wait_s=0.0, queue_max=8)
    texts = [f"texto {i}" for i in range(30)]  # more than the batch and than the queue bound
    predictions = batcher.submit(texts).result(timeout=5)
    assert [p.probas for p in predictions] == [expected(text) for text in texts]
    assert max(map(len, model.calls)) <= 4
    batcher.stop(final=True).join(5)


def test_a_full_queue_refuses_at_once():
    gate = threading.Event()
    model = FakeModel(gate=gate)
    registry, item = fake_registry(), fake_item(model)
    batcher = Batcher(item, registry, max_size=2, max_wait_s=0.0, queue_max=4)
    running = batcher.submit(["a", "b"])
    while not model.calls:  # the worker holds that batch in the (blocked) model
        time.sleep(0.005)
    queued = [batcher.submit(["c", "d"]), batcher.submit(["e", "f"])]
    with pytest.raises(Overloaded) as refused:
        batcher.submit(["g"])
    assert refused.value.headers == {"Retry-After": "1"}
    assert refused.value.details == {"queued": 4, "queue_max": 4}
    gate.set()
    assert [p.probas for p in running.result(5)] == [expected("a"), expected("b")]
    assert [p.probas for p in queued[1].result(5)] == [expected("e"), expected("f")]
    assert batcher.stats()["rejected"] == 1
    batcher.stop(final=True).join(5)


def test_full_queue_is_503_with_retry_after_over_http(fake_app):
    gate = threading.Event()
    model = FakeModel(gate=gate)
    client = fake_app(model, BATCH_MAX_SIZE="1", QUEUE_MAX="2", BATCH_MAX_WAIT_MS="0")

    def post(text: str):
        return client.post("/analyze", json={"text": text})

    with ThreadPoolExecutor(3) as threads:
        first = threads.submit(post, "uno")
        while not model.calls:  # "uno" is in the (blocked) model
            time.sleep(0.01)
        waiting = [threads.submit(post, text) for text in ("dos", "tres")]
        while client.get("/system").json()["batching"]["sentiment:es"]["queued"] < 2:
            time.sleep(0.01)
        refused = post("cuatro")
        gate.set()
        answers = [future.result(10) for future in (first, *waiting)]
    assert refused.status_code == 503, refused.text
    assert refused.headers["Retry-After"] == "1"
    assert refused.json()["error"]["code"] == "overloaded"
    assert [a.status_code for a in answers] == [200, 200, 200]
    assert answers[2].json()["probas"] == expected("tres")


def test_preprocessing_that_empties_a_text_is_still_that_request_s_422(fake_app):
    client = fake_app(FakeModel(delay_s=0.01), BATCH_MAX_WAIT_MS="50")
    with ThreadPoolExecutor(8) as threads:
        good = list(threads.map(lambda i: client.post("/analyze", json={"text": f"hola {i}"}), range(6)))
        bad = client.post("/analyze", json={"texts": ["bien", "☹☹☹☹"]})
    assert [r.status_code for r in good] == [200] * 6
    assert bad.status_code == 422 and bad.json()["error"]["empty_after_preprocessing"] == [1]


def test_a_lone_client_never_waits_for_company(fake_app):
    client = fake_app(FakeModel(), BATCH_MAX_WAIT_MS="300")

    def timed(body: dict) -> float:
        started = time.monotonic()
        client.post("/analyze", json=body)
        return time.monotonic() - started

    with ThreadPoolExecutor(8) as threads:  # a burst: the next batch expects company, once
        list(threads.map(lambda i: client.post("/analyze", json={"text": f"hola {i}"}), range(16)))
    timed({"text": "después"})
    assert timed({"text": "sola"}) < 0.15
    assert client.post("/analyze", json={"text": "☹☹☹☹"}).status_code == 422
    assert timed({"text": "sola otra vez"}) < 0.15  # the withdrawn caller left no batch waiting


def test_batches_are_sorted_by_length_and_cut_where_padding_would_be_wasted():
    model = FakeModel()
    texts = ["corto", "x" * 400, "breve", "y" * 390, "hola", "z" * 380]
    predictions = infer(model_analyzer(model), texts, fake_registry(), max_size=16)
    assert [p.probas for p in predictions] == [expected(text) for text in texts]  # in input order
    assert model.calls == [["corto", "breve", "hola"], ["z" * 380, "y" * 390, "x" * 400]]


def model_analyzer(model: FakeModel):
    return fake_item(model).load()


def test_buckets():
    runs = buckets([10] * 20, max_size=8)  # equal lengths: as few calls as the size allows
    assert len(runs) == 3 and all(len(run) <= 8 for run in runs) and sum(map(len, runs)) == 20
    assert buckets([5, 5, 6, 128, 128], max_size=16) == [range(0, 3), range(3, 5)]
    assert buckets([20, 21, 22], max_size=16) == [range(0, 3)]  # close lengths: one call
    assert buckets([], max_size=4) == []


def test_memory_failures_split_the_batch_down_to_what_fits():
    model = FakeModel(fail_above=2)
    registry = fake_registry()
    texts = [f"texto {i}" for i in range(8)]
    predictions = infer(model_analyzer(model), texts, registry, max_size=8)
    assert [p.probas for p in predictions] == [expected(text) for text in texts]
    assert sum(len(call) for call in model.calls if len(call) <= 2) == 8  # the calls that ran
    assert registry.counters["batch_splits"] == 3  # 8 -> 4 + 4 -> 2 + 2 + 2 + 2


class RuntimeException(Exception):
    """What onnxruntime raises, matched by its module and its text."""

    __module__ = "onnxruntime.capi.onnxruntime_pybind11_state"


def test_onnxruntime_allocation_failures_split_too_and_other_errors_do_not():
    allocation = RuntimeException("Failed to allocate memory for requested buffer of size 123456")
    model = FakeModel(fail_above=1, error=lambda _: allocation)
    predictions = infer(model_analyzer(model), ["a", "b"], fake_registry(), max_size=8)
    assert [p.probas for p in predictions] == [expected("a"), expected("b")]
    assert is_allocation_failure(allocation)
    assert is_allocation_failure(RuntimeException("std::bad_alloc"))
    assert not is_allocation_failure(RuntimeException("Invalid input name: input_ids"))
    assert not is_allocation_failure(ValueError("Failed to allocate"))  # not onnxruntime's
    assert is_allocation_failure(RuntimeError("[enforce fail] DefaultCPUAllocator: can't allocate memory"))
    with pytest.raises(ValueError):
        infer(model_analyzer(FakeModel()), ["boom", "b"], fake_registry(), max_size=8)


def test_a_single_text_that_cannot_fit_is_refused():
    with pytest.raises(MemoryError):
        infer(model_analyzer(FakeModel(fail_above=0)), ["a"], fake_registry(), max_size=8)


def test_a_batch_that_would_pass_the_budget_is_split_before_it_runs():
    model = FakeModel()
    texts = [f"{i}" + "x" * 600 for i in range(8)]  # each a full 128 tokens
    assert work_mb(texts) == hardware.WORK_MB_FIXED + 8 * hardware.WORK_MB_PER_TEXT
    registry = fake_registry(budget_mb=100 + work_mb(texts[:3]), rss_mb=100)  # room for 3
    predictions = infer(model_analyzer(model), texts, registry, max_size=8)
    assert len(predictions) == 8
    assert model.calls and max(map(len, model.calls)) <= 2  # 8 -> 4 + 4 -> 2 + 2 + 2 + 2
    assert registry.counters["batch_splits"] == 3
    assert registry.reserved_mb == 0
    with pytest.raises(OverBudget):
        infer(model_analyzer(model), texts[:1], fake_registry(budget_mb=101, rss_mb=100), max_size=8)


def test_splits_are_counted_in_memory_report(fake_app):
    client = fake_app(FakeModel(fail_above=1))
    response = client.post("/analyze", json={"texts": ["uno", "dos", "tres", "cuatro"]})
    assert response.status_code == 200, response.text
    assert [r["probas"] for r in response.json()["results"]] == [
        expected(t) for t in ("uno", "dos", "tres", "cuatro")
    ]
    assert client.get("/memory").json()["counters"]["batch_splits"] >= 2


def test_the_worker_stops_when_its_model_is_unloaded_and_restarts_on_demand():
    registry = fake_registry()
    item = fake_item(FakeModel())
    with batching.running(config(), registry) as pool:
        with registry.use(item) as analyzer:
            batching.analyze(item, analyzer, ["hola"], registry, max_size=16)
        batcher = pool.batcher(item)
        assert batcher.running and len(batcher_threads()) == 1
        worker = batcher_threads()[0]
        registry.unload(item.key)
        worker.join(5)
        assert not worker.is_alive() and not batcher.running
        with registry.use(item) as analyzer:
            assert batching.analyze(item, analyzer, ["otra"], registry, max_size=16)[0].probas == expected(
                "otra"
            )
        assert batcher.running
    assert batcher_threads() == []
    assert registry.unload_listeners == []


def test_app_shutdown_stops_the_workers(monkeypatch, tmp_path):
    model = FakeModel()
    monkeypatch.setattr(service, "create_analyzer", lambda *_: Analyzer(model, "sentiment", "es", "torch"))
    with app_client(BACKEND="torch", MODEL_SENTIMENT_ES=str(tmp_path), MEMORY_BUDGET_MB="8192") as client:
        assert client.post("/analyze", json={"text": "hola"}).status_code == 200
        assert len(batcher_threads()) == 1
    assert batcher_threads() == []  # the lifespan's shutdown joined it


def test_micro_batching_off_runs_in_the_request_thread(fake_app):
    model = FakeModel(delay_s=0.02)
    client = fake_app(model, MICRO_BATCHING="false")
    with ThreadPoolExecutor(4) as threads:
        answers = list(threads.map(lambda i: client.post("/analyze", json={"text": f"t {i}"}), range(4)))
    assert [a.json()["probas"] for a in answers] == [expected(f"t {i}") for i in range(4)]
    assert len(model.calls) == 4
    assert client.get("/system").json()["batching"] == {}
    assert batcher_threads() == []


def test_work_estimate_grows_with_padding():
    assert work_mb(["hola"]) < work_mb(["x" * 600])
    assert math.isclose(work_mb(["x" * 600] * 2), hardware.WORK_MB_FIXED + 2 * hardware.WORK_MB_PER_TEXT)


def tweets(count: int) -> list[str]:
    """Varied real-looking tweets (mixed lengths), none that preprocessing empties."""
    lines = (Path(__file__).parent / "data" / "tricky_tweets.txt").read_text(encoding="utf-8").splitlines()
    usable = [line for line in lines if len(line.strip()) > 3 and preprocess_tweet(line, "es")]
    return usable[:count]


@pytest.mark.slow
def test_concurrent_requests_through_the_exported_onnx_model(make_client, onnx_minilm):
    client = make_client(
        BACKEND="onnx", MODEL_SENTIMENT_ES=str(onnx_minilm), MEMORY_BUDGET_MB="4096", BATCH_MAX_WAIT_MS="20"
    )
    texts = tweets(40)
    alone = [client.post("/analyze", json={"text": text}).json() for text in texts]  # batches of one
    with ThreadPoolExecutor(16) as threads:
        together = list(threads.map(lambda text: client.post("/analyze", json={"text": text}).json(), texts))
    assert together == alone  # exactly: a text's answer does not depend on its batch-mates
    stats = client.get("/system").json()["batching"]["sentiment:es"]
    assert stats["requests"] == 80 and stats["batches"] < 80 and stats["largest_batch"] > 1


def test_the_halves_of_a_refused_batch_do_not_wait_again():
    """The batch waited its turn for memory once; each half takes what fits now or is refused."""
    texts = ["x" * 600] * 8
    registry = Registry(Budget(100 + work_mb(texts), "test", 0), used=lambda: 100, admission_wait_s=2)
    hold = registry.reserve(50, "someone else's batch")  # worth waiting for, but never given back
    hold.__enter__()
    started = time.monotonic()
    try:
        with pytest.raises(OverBudget):
            infer(model_analyzer(FakeModel()), texts, registry, max_size=8)
    finally:
        hold.__exit__(None, None, None)
    assert 1.9 < time.monotonic() - started < 3.5  # one wait of 2 s, not one per level of halves (4)


def test_identical_texts_with_other_contexts_are_computed_apart():
    """A pair task's text with two targets is two inputs: the dedupe and the cache key on both."""
    from service.sentiment.analyzer import Pair

    text = "el gobierno anunció recortes"
    one, other = Pair(text, "Milei"), Pair(text, "recortes")
    assert one != other and one == Pair(text, "Milei")
    assert list(dict.fromkeys([one, other, Pair(str(one), "Milei")])) == [one, other]
    assert one != str(one) and str(one) != one


def test_a_loaded_model_s_requests_take_no_pool_thread(fake_app, monkeypatch):
    """With micro-batching on and the model loaded, a request awaits its batch on the event loop: no
    pool thread is held while it waits, and two thread hand-offs a request are saved. The load
    itself (it may take seconds, or wait for memory) still runs in the pool."""
    client = fake_app(FakeModel())
    pooled: list[str] = []
    real = service.run_in_threadpool

    async def counting(function, *args, **kwargs):
        pooled.append(function.__name__)
        return await real(function, *args, **kwargs)

    monkeypatch.setattr(service, "run_in_threadpool", counting)
    assert client.post("/analyze", json={"text": "carga el modelo"}).status_code == 200
    assert pooled == ["analyze"]
    answer = client.post("/analyze", json={"texts": ["hola", "adiós"]})
    single = client.post("/analyze", json={"text": "otra"})
    assert [r["probas"] for r in answer.json()["results"]] == [expected("hola"), expected("adiós")]
    assert single.json()["probas"] == expected("otra")
    assert pooled == ["analyze"]
    assert client.post("/analyze", json={"text": "☹☹☹☹"}).status_code == 422  # preprocessing's own refusal


def test_a_cancelled_request_is_dropped_from_its_batch():
    """A caller that gave up before its batch started (its request timed out) is not computed, and
    the worker goes on serving the others."""
    gate = threading.Event()
    model = FakeModel(gate=gate)
    registry, item = fake_registry(), fake_item(model)
    batcher = Batcher(item, registry, max_size=1, max_wait_s=0.0, queue_max=8)
    running = batcher.submit(["a"])
    while not model.calls:  # the worker holds "a" in the (blocked) model
        time.sleep(0.005)
    dropped, kept = batcher.submit(["b"]), batcher.submit(["c"])
    assert dropped.cancel()
    gate.set()
    assert [p.probas for p in kept.result(5)] == [expected("c")]
    assert [p.probas for p in running.result(5)] == [expected("a")]
    assert model.calls == [["a"], ["c"]]
    batcher.stop(final=True).join(5)


def test_a_request_that_timed_out_waiting_for_its_batch_is_not_computed(fake_app):
    from service.ops.config import get_ops_settings

    gate = threading.Event()
    gate.set()
    model = FakeModel(gate=gate)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("REQUEST_TIMEOUT_S", "0.5")
        get_ops_settings.cache_clear()
        try:
            client = fake_app(model, BATCH_MAX_SIZE="1", BATCH_MAX_WAIT_MS="0")
            assert client.post("/analyze", json={"text": "carga"}).status_code == 200
            gate.clear()
            with ThreadPoolExecutor(1) as threads:
                first = threads.submit(client.post, "/analyze", json={"text": "primero"})
                while model.calls[-1] != ["primero"]:
                    time.sleep(0.01)
                late = client.post("/analyze", json={"text": "tarde"})  # queued behind it
                gate.set()
                first.result(10)  # timed out too, but its batch had started: computed, answer dropped
        finally:
            get_ops_settings.cache_clear()
    assert late.status_code == 504 and late.json()["error"]["code"] == "timeout"
    assert client.post("/analyze", json={"text": "después"}).json()["probas"] == expected("después")
    assert [texts for texts in model.calls if "tarde" in texts] == []
    assert model.calls[-2:] == [["primero"], ["después"]]
