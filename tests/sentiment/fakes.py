"""A fake `ProbabilityModel` that records its calls, and a registry and model item around it."""

import threading
import time
import zlib
from collections.abc import Callable, Sequence
from typing import Any

from service.budget import Budget
from service.registry import Loadable, Registry
from service.sentiment.analyzer import Analyzer

LABELS = ["NEG", "NEU", "POS"]


def fake_probas(text: str) -> list[float]:
    """Different for every text, so a caller given someone else's result is caught."""
    neg = (zlib.crc32(text.encode()) % 1000) / 2000
    return [neg, 0.25, 0.75 - neg]


class FakeModel:
    labels = LABELS
    multi_label = False

    def __init__(
        self,
        delay_s: float = 0.0,
        fail_above: int | None = None,
        error: Callable[[str], Exception] = MemoryError,
        gate: threading.Event | None = None,
    ) -> None:
        self.delay_s = delay_s
        self.fail_above = fail_above
        self.error = error
        self.gate = gate
        self.calls: list[list[str]] = []
        self.active = self.max_active = 0
        self._lock = threading.Lock()

    def predict_probas(self, texts: Sequence[str]) -> list[list[float]]:
        with self._lock:
            self.calls.append(list(texts))
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        try:
            if self.gate is not None:
                self.gate.wait(10)
            if "boom" in texts:
                raise ValueError("the fake model breaks on 'boom'")
            if self.fail_above is not None and len(texts) > self.fail_above:
                raise self.error(f"fake: {len(texts)} texts do not fit")
            time.sleep(self.delay_s)
            return [fake_probas(text) for text in texts]
        finally:
            with self._lock:
                self.active -= 1


def fake_registry(budget_mb: float = 4096, rss_mb: float = 100.0) -> Registry:
    return Registry(Budget(budget_mb, "test", 0.0), used=lambda: rss_mb)


def fake_item(model: FakeModel, key: str = "sentiment:es") -> Loadable:
    return Loadable(key=key, load=lambda: Analyzer(model, "sentiment", "es", "onnx"), estimate_mb=lambda: 1.0)


def install_weighted_models(
    monkeypatch: Any, models: dict[str, FakeModel], budget_mb: float, admission_wait_s: float
) -> list[str]:
    """The language models of `models` through a registry of `budget_mb` that counts 100 MB per
    loaded one (50 MB before any), installed as the sentiment service's and micro-batching's; the
    languages loaded, in order."""
    from service import startup
    from service.sentiment import service

    used = {"mb": 50.0}
    loads: list[str] = []

    class Weighted(Analyzer):
        def close(self) -> None:
            used["mb"] -= 100

    def model_item(task: str, lang: str) -> Loadable:
        def load() -> Analyzer:
            loads.append(lang)
            used["mb"] += 100
            return Weighted(models[lang], task, lang, "torch")

        return Loadable(key=f"{task}:{lang}", load=load, estimate_mb=lambda: 100.0)

    registry = Registry(
        Budget(budget_mb, "test", 0), used=lambda: used["mb"], admission_wait_s=admission_wait_s
    )
    monkeypatch.setattr(service, "model_item", model_item)
    monkeypatch.setattr(service, "get_registry", lambda: registry)
    monkeypatch.setattr(startup, "get_registry", lambda: registry)  # micro-batching's too, as the app starts
    return loads
