"""Calibration for recipes that need it: per-channel activation maxima of the fp32 export.

The texts go through the service's own path (preprocessing, tokenizer.json, one text per call)
on the fp32 reference the export has just written, so the maxima are those of what the model will
be fed. By default a model is calibrated on the shipped gate texts of its language
(service/export/gate_texts/), tweets like those it will serve: the gate then measures the texts
calibration saw (one maximum per channel, nothing fitted to answers); the shared sets of the
benchmark are the held-out check. Measured against other choices in docs/int8-recipes.md. A user
calibrates on their own texts with `python -m service.export ... --calibration FILE` (one a line).
"""

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from service.config import PAIR_TASKS
from service.evaluate import load_analyzer
from service.export.gate import read_texts
from service.sentiment.analyzer import Pair

Feed = dict[str, np.ndarray]
MAX_TEXTS = 600  # maxima settle well before (measured: docs/int8-recipes.md); each costs one fp32 call


def default_texts(lang: str) -> list[str]:
    """The shipped gate texts of the model's language: tweets like those it will serve."""
    return read_texts(lang)[:MAX_TEXTS]


def read_file(path: Path) -> list[str]:
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not lines:
        raise ValueError(f"{path}: no calibration texts (one text a line)")
    return lines[:MAX_TEXTS]


class _Recorder:
    """Stands in for the analyzer's session: keeps every feed, answers with the real session."""

    def __init__(self, session: ort.InferenceSession) -> None:
        self.session, self.feeds = session, []

    def run(self, names: Any, feed: Feed, options: Any = None) -> Any:
        self.feeds.append({name: array.copy() for name, array in feed.items()})
        return self.session.run(names, feed, options)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.session, name)


def feeds(reference: Path, task: str, lang: str, texts: Sequence[str]) -> list[Feed]:
    """The model inputs of `texts` (one per call, as a single request gets them) on `reference`."""
    analyzer = load_analyzer(reference, task, lang)
    recorder = _Recorder(analyzer.model.session)
    analyzer.model.session = recorder
    for i, text in enumerate(texts):
        item = Pair(text, texts[(i + 1) % len(texts)]) if task in PAIR_TASKS else text
        analyzer.predict([item])
    return recorder.feeds


def channel_maxima(fp32: Path, tensors: Sequence[str], inputs: Sequence[Feed]) -> dict[str, np.ndarray]:
    """max |x| per channel (last axis) of each tensor over the real tokens (attention mask) of `inputs`."""
    model = onnx.load(fp32)
    outputs = {o.name for o in model.graph.output}
    model.graph.output.extend(
        onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)
        for name in tensors
        if name not in outputs
    )
    maxima: dict[str, np.ndarray] = {}
    with tempfile.TemporaryDirectory(prefix="calibrate-") as tmp:
        path = Path(tmp) / "model.onnx"
        onnx.save(model, path, save_as_external_data=True, location="model.onnx.data")
        del model
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        for feed in inputs:
            ids = next(iter(feed.values()))
            real = feed.get("attention_mask", np.ones(ids.shape, np.int64)).astype(bool)
            for name, value in zip(tensors, session.run(list(tensors), feed), strict=True):
                row_max = np.abs(value[real]).max(axis=0)
                maxima[name] = np.maximum(maxima[name], row_max) if name in maxima else row_max
    return maxima
