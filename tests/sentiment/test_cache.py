"""Repeated texts: computed once per model call, and answered from the result cache when it is on."""

import threading
import time
from concurrent.futures import ThreadPoolExecutor

from service.sentiment import cache
from service.sentiment.batching import infer
from service.sentiment.cache import ENTRY_OVERHEAD_BYTES, ResultCache
from service.sentiment.schemas import Prediction
from tests.sentiment.fakes import FakeModel, fake_item, fake_probas, fake_registry


def expected(text: str) -> dict[str, float]:
    return dict(zip(["NEG", "NEU", "POS"], fake_probas(text), strict=True))


def prediction(value: float) -> Prediction:
    return Prediction(label="NEU", probas={"NEG": value, "NEU": 0.5, "POS": 0.5 - value})


def test_identical_texts_in_one_call_are_computed_once():
    model = FakeModel()
    registry = fake_registry()
    texts = ["hola", "adiós", "hola", "hola", "otro"]
    predictions = infer(fake_item(model).load(), texts, registry, max_size=8)
    assert [p.probas for p in predictions] == [expected(text) for text in texts]
    assert sorted(text for call in model.calls for text in call) == ["adiós", "hola", "otro"]
    assert registry.counters["duplicate_texts"] == 2


class Gate(threading.Event):
    """Holds the fake model's first call for up to a minute (a loaded CI machine is slow)."""

    def wait(self, timeout: float | None = None) -> bool:
        return super().wait(60)


def test_concurrent_requests_for_one_text_share_one_row(fake_app):
    gate = Gate()
    model = FakeModel(gate=gate)  # the first call holds the worker until the others queued
    client = fake_app(model)
    with ThreadPoolExecutor(6) as pool:
        answers = [pool.submit(client.post, "/analyze", json={"text": "el mismo"}) for _ in range(6)]
        deadline = time.monotonic() + 60
        while client.get("/system").json()["batching"].get("sentiment:es", {}).get("requests", 0) < 6:
            assert time.monotonic() < deadline, "the requests never queued"
            time.sleep(0.01)
        gate.set()  # all 6 queued behind the held first call (which may have taken several)
        bodies = [answer.result().json() for answer in answers]
    assert all(body == bodies[0] for body in bodies)
    assert model.calls in ([["el mismo"]], [["el mismo"], ["el mismo"]])  # each batch's copies: one row
    assert client.get("/memory").json()["counters"]["duplicate_texts"] == 6 - len(model.calls)


def test_least_recently_used_entries_go_first():
    results = ResultCache(max_entries=2, max_mb=1)
    results.put_many("m#1", {"a": prediction(0.1), "b": prediction(0.2)})
    assert results.get_many("m#1", ["a"]) == {"a": prediction(0.1)}  # "a" is now the most recent
    results.put_many("m#1", {"c": prediction(0.3)})
    assert set(results.get_many("m#1", ["a", "b", "c"])) == {"a", "c"}
    stats = results.stats()
    assert (stats["entries"], stats["evictions"], stats["hits"], stats["misses"]) == (2, 1, 3, 1)


def test_the_bytes_bound_holds_and_models_do_not_share_entries():
    one_entry_mb = (ENTRY_OVERHEAD_BYTES + 200) / 2**20
    results = ResultCache(max_entries=100, max_mb=3 * one_entry_mb)
    results.put_many("m#1", {f"{i:03d}" + "x" * 100: prediction(i / 100) for i in range(10)})
    assert results.stats()["entries"] == 3
    assert results.stats()["mb"] <= results.stats()["max_mb"]
    results.put_many("m#1", {"ya": prediction(0.4)})
    assert results.get_many("m#2", ["ya"]) == {}  # another model (or a reload) never answers
    results.drop("m#")
    assert results.stats()["entries"] == 0 and results.stats()["mb"] == 0


def test_infer_answers_repeated_texts_from_the_cache_and_the_budget_counts_it():
    model = FakeModel()
    registry = fake_registry()
    analyzer = fake_item(model).load()
    with cache.running(max_entries=16, max_mb=2, registry=registry) as results:
        assert registry.reserved_mb == 2  # the bound is reserved before the cache fills
        first = infer(analyzer, ["uno", "dos"], registry, max_size=8)
        again = infer(analyzer, ["dos", "tres", "uno"], registry, max_size=8)
        assert model.calls == [["uno", "dos"], ["tres"]]
        assert [p.probas for p in again] == [expected("dos"), expected("tres"), expected("uno")]
        assert again[0] == first[1]
        assert results is not None and results.stats()["hits"] == 2
        registry.unload_listeners[-1]("sentiment:es")  # the model unloads: its entries go
        assert results.stats()["entries"] == 0
    assert registry.reserved_mb == 0 and cache.active_cache() is None


def test_off_by_default_and_system_reports_it(fake_app, make_client):
    client = fake_app(FakeModel())
    assert client.get("/system").json()["result_cache"] is None
    client.close()
    client = fake_app(FakeModel(), RESULT_CACHE_ENTRIES="64", RESULT_CACHE_MB="1")
    for _ in range(3):
        assert client.post("/analyze", json={"text": "otra vez"}).status_code == 200
    stats = client.get("/system").json()["result_cache"]
    assert stats["hits"] == 2 and stats["entries"] == 1 and stats["max_mb"] == 1
    assert client.get("/memory").json()["reserved_mb"] == 1
