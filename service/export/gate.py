"""The export's accuracy gate: an INT8 model against its own fp32 export, on texts of its language.

Every export quantizes, then compares the quantized model's answers with the fp32 export's on the
gate texts of its language (gate_texts/<lang>.txt: 300 tweet-like texts per language, written for
this project, shipped and read offline), by what its kind answers. A recipe whose figures miss one
of its kind's THRESHOLDS is not served: the export tries the next recipe of the fallback chain
(service/export/quantize.py, FALLBACK) and records every attempt in the manifest.

Imports the runtime's packages only: `python -m service.export --gate-lines` runs without the
export stack.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from service.config import PAIR_TASKS, TOKEN_TASKS
from service.evaluate import BATCH, compare_texts, compare_tokens, load_analyzer
from service.sentiment.analyzer import Pair

TEXTS_DIR = Path(__file__).with_name("gate_texts")


@dataclass(frozen=True)
class Threshold:
    figure: str  # a key of evaluate.compare_texts / compare_tokens
    bound: float
    at_least: bool  # the figure must be >= bound (agreements); else <= bound (differences)

    def holds(self, figures: dict[str, Any]) -> bool:
        value = figures[self.figure]
        return value >= self.bound if self.at_least else value <= self.bound

    def __str__(self) -> str:
        return f"{self.figure} {'>=' if self.at_least else '<='} {self.bound:g}"

    def missed(self, figures: dict[str, Any]) -> str:
        return f"{self.figure} {figures[self.figure]:.4g} {'<' if self.at_least else '>'} {self.bound:g}"


# Per kind, every bound the quantized model must keep against its fp32 export. At least as strict
# as the gate before it (97 % label agreement on tweet-sentiment-minilm; 97 % of ner/pos words).
THRESHOLDS: dict[str, tuple[Threshold, ...]] = {
    "single_label": (Threshold("label_agreement", 0.97, True), Threshold("p95_proba_diff", 0.05, False)),
    # label_agreement here is the whole decision (every label's p > 0.5) of a text.
    "multi_label": (Threshold("label_agreement", 0.97, True), Threshold("p95_proba_diff", 0.05, False)),
    "ner": (Threshold("label_agreement", 0.97, True), Threshold("entity_span_f1", 0.95, True)),
    "pos": (Threshold("label_agreement", 0.97, True),),
}


def kind(task: str, problem_type: str) -> str:
    """The gate's kind of a model: ner, pos, multi_label or single_label (text and pair tasks); as
    the backends read the manifest's problem type."""
    if task in TOKEN_TASKS:
        return task
    return "multi_label" if problem_type == "multi_label_classification" else "single_label"


def read_texts(lang: str) -> list[str]:
    path = TEXTS_DIR / f"{lang}.txt"
    return [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def inputs(task: str, lang: str) -> list[str]:
    """The gate texts as the model takes them: a pair task's context is the next text."""
    texts = read_texts(lang)
    if task in PAIR_TASKS:
        return [Pair(text, texts[(i + 1) % len(texts)]) for i, text in enumerate(texts)]
    return texts


def predict(model_dir: Path, task: str, lang: str, texts: Sequence[str]) -> list[Any]:
    """Every text's answer from an exported dir, as the service computes it, in batches of texts of
    similar length (as micro-batching groups them)."""
    analyzer = load_analyzer(model_dir, task, lang)
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    answers: list[Any] = [None] * len(texts)
    for start in range(0, len(order), BATCH):
        batch = order[start : start + BATCH]
        for index, answer in zip(batch, analyzer.predict([texts[i] for i in batch]), strict=True):
            answers[index] = answer
    return answers


class Gate:
    """The fp32 export's answers, computed once; then each candidate's figures against them."""

    def __init__(self, task: str, lang: str, problem_type: str, reference: Path) -> None:
        self.task, self.lang, self.kind = task, lang, kind(task, problem_type)
        self.texts = inputs(task, lang)
        self.reference = predict(reference, task, lang, self.texts)

    def check(self, model_dir: Path, recipe: str) -> dict[str, Any]:
        """One attempt: the recipe, its figures, whether it passed, and the bounds it missed."""
        answers = predict(model_dir, self.task, self.lang, self.texts)
        compare = compare_tokens if self.kind in TOKEN_TASKS else compare_texts
        figures = compare(answers, self.reference)
        missed = [t.missed(figures) for t in THRESHOLDS[self.kind] if not t.holds(figures)]
        return {"recipe": recipe, "passed": not missed, "figures": figures, "missed": missed}

    def record(self, attempts: list[dict[str, Any]], recipe: str | None) -> dict[str, Any]:
        """The manifest's `gate`: what was served, the figures it passed with, and why not earlier."""
        passed = next((a for a in attempts if a["passed"]), None)
        failed = [f"{a['recipe']}: {', '.join(a['missed'])}" for a in attempts if not a["passed"]]
        return {
            "kind": self.kind,
            "texts": len(self.texts),
            "reference": "the fp32 ONNX export of the same source",
            "thresholds": [str(t) for t in THRESHOLDS[self.kind]],
            "recipe": recipe or "fp32",
            "passed": passed is not None or recipe is None,
            "figures": passed["figures"] if passed else None,
            "why": "; ".join(failed) if failed else "the first recipe passed",
            "attempts": attempts,
        }


def gate_line(key: str, manifest: dict[str, Any]) -> str:
    """One line for a person: the recipe served and the gate's verdict."""
    gate = manifest.get("gate")
    if gate is None:
        if manifest.get("quantization") is None:
            return f"gate {key}: fp32, not quantized: nothing to gate"
        return f"gate {key}: {manifest['quantization']['recipe']}, not gated (exported without the gate)"
    figures = gate["figures"]
    shown = (
        ", ".join(f"{t.split()[0]} {figures[t.split()[0]]:.4g}" for t in gate["thresholds"])
        if figures
        else "fp32 is its own reference"
    )
    fallback = "" if gate["why"] == "the first recipe passed" else f" (fallback: {gate['why']})"
    return f"gate {key}: {gate['recipe']} [{gate['kind']}, {gate['texts']} texts: {shown}]{fallback}"
