"""Accuracy of a model as the service serves it, optionally against a reference model.

    python -m service.evaluate --model DIR --data DIR [--reference DIR_OR_HUB_ID] [--limit N]
                               [--task T] [--lang L]

Prints one JSON object. A dir holding `manifest.json` loads with the onnx backend, anything else
(a transformers dir or a hub id) with the torch backend, both through `create_analyzer`: what is
measured is exactly what `/analyze` answers. The metrics live here, and the export's accuracy
report calls `evaluate` too, so both always count the same way.
"""

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from service.config import get_settings
from service.hardware import num_threads
from service.sentiment.analyzer import Analyzer, create_analyzer
from service.sentiment.backends.onnx_backend import MANIFEST, read_manifest
from service.sentiment.preprocessing import preprocess_tweet
from service.sentiment.schemas import Prediction, TokenPrediction

BATCH = 32
# Texts that preprocessing empties cannot be analyzed (the API answers 422): they are left out.
EMPTY_HANDLING = "skipped"
_LANG_HINTS = {"spanish": "es", "english": "en"}


class EvaluationError(Exception):
    """An expected failure (missing data, a model that cannot load): a message, not a traceback."""


@dataclass
class Labelled:
    name: str
    texts: list[str]
    labels: list[str]  # as written: a class id ("0") or a label name ("NEG")


def read_labelled(data_dir: Path, limit: int | None = None) -> Labelled:
    """A folder with test_text.txt (one text a line) and test_labels.txt (one label a line)."""
    text_file, label_file = data_dir / "test_text.txt", data_dir / "test_labels.txt"
    if not text_file.is_file() or not label_file.is_file():
        raise EvaluationError(f"{data_dir} needs test_text.txt and test_labels.txt")
    texts = text_file.read_text(encoding="utf-8").splitlines()
    labels = [line.strip() for line in label_file.read_text(encoding="utf-8").splitlines() if line.strip()]
    if len(texts) != len(labels):
        raise EvaluationError(f"{data_dir}: {len(texts)} texts but {len(labels)} labels")
    return Labelled(data_dir.name, texts[:limit], labels[:limit])


def guess_lang(data_dir: Path) -> str:
    name = data_dir.name.lower()
    return next((lang for hint, lang in _LANG_HINTS.items() if hint in name), "es")


def is_exported(source: str | Path) -> bool:
    return (Path(source) / MANIFEST).is_file()


def load_analyzer(source: str | Path, task: str, lang: str) -> Any:
    backend = "onnx" if is_exported(source) else "torch"
    try:
        # The exported model itself: a prepacked variant belongs to the machine that serves it, and
        # the export (which calls this) runs on Render's build machine.
        return create_analyzer(task, lang, source, backend, num_threads(get_settings()), prepacked=False)
    except Exception as error:  # a missing dir, an unreachable hub, a broken export
        hint = (
            ""
            if is_exported(source)
            else " (the Hugging Face hub is unreachable on some machines: pass a dir)"
        )
        raise EvaluationError(f"cannot load {source} with the {backend} backend{hint}: {error}") from error


def predict(analyzer: Analyzer, texts: Sequence[str]) -> list[Prediction | None]:
    """Batched predictions through the service's path; None where preprocessing left nothing.

    Batches hold texts of similar length: less padding is faster, and keeps dynamic INT8 (whose
    activation scales see the padded positions too) close to what a single text gets.
    """
    processed = [preprocess_tweet(text, analyzer.lang) for text in texts]
    kept = sorted((index for index, text in enumerate(processed) if text), key=lambda i: len(processed[i]))
    results: list[Prediction | None] = [None] * len(texts)
    for start in range(0, len(kept), BATCH):
        batch = kept[start : start + BATCH]
        for index, prediction in zip(batch, analyzer.predict_preprocessed([processed[i] for i in batch])):
            results[index] = prediction
    return results


def macro_f1(gold: Sequence[str], predicted: Sequence[str]) -> float:
    """Unweighted mean of per-class F1 over the classes seen in gold or predictions (as sklearn)."""
    scores = []
    for label in sorted(set(gold) | set(predicted)):
        tp = sum(g == p == label for g, p in zip(gold, predicted, strict=True))
        fp = sum(p == label != g for g, p in zip(gold, predicted, strict=True))
        fn = sum(g == label != p for g, p in zip(gold, predicted, strict=True))
        scores.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    return sum(scores) / len(scores)


def score(
    labels: Sequence[str],
    label_names: Sequence[str],
    predictions: Sequence[Prediction | None],
    reference: Sequence[Prediction | None] | None = None,
) -> dict[str, Any]:
    """Accuracy and macro-F1 against gold; with a reference, the same for it plus label agreement."""
    kept = [
        i
        for i, prediction in enumerate(predictions)
        if prediction is not None and (reference is None or reference[i] is not None)
    ]
    gold = [label_names[int(label)] if label.isdigit() else label for label in labels]
    gold = [gold[i] for i in kept]
    mine = [_single_label(predictions[i]) for i in kept]
    result: dict[str, Any] = {
        "n": len(kept),
        "empty_after_preprocessing": len(predictions) - len(kept),
        "empty_handling": EMPTY_HANDLING,
        "accuracy": _accuracy(gold, mine),
        "macro_f1": macro_f1(gold, mine),
    }
    if reference is not None:
        theirs = [_single_label(reference[i]) for i in kept]
        result |= {
            "reference_accuracy": _accuracy(gold, theirs),
            "reference_macro_f1": macro_f1(gold, theirs),
            "agreement": _accuracy(theirs, mine),
            "max_proba_diff": max(
                abs(p - reference[i].probas[label])
                for i in kept
                for label, p in predictions[i].probas.items()
            ),
        }
    return result


def evaluate(
    model: str | Path,
    data: Path,
    reference: str | Path | None = None,
    limit: int | None = None,
    task: str | None = None,
    lang: str | None = None,
) -> dict[str, Any]:
    manifest = read_manifest(Path(model)) if is_exported(model) else {}
    task = manifest.get("task") or task or "sentiment"
    lang = manifest.get("lang") or lang or guess_lang(data)
    labelled = read_labelled(data, limit)
    analyzer = load_analyzer(model, task, lang)
    predictions = predict(analyzer, labelled.texts)
    reference_predictions = None
    if reference is not None:
        reference_predictions = predict(load_analyzer(reference, task, lang), labelled.texts)
    head = {"model": str(model), "data": str(data), "task": task, "lang": lang, "backend": analyzer.backend}
    if reference is not None:
        head["reference"] = str(reference)
    return head | score(labelled.labels, analyzer.model.labels, predictions, reference_predictions)


def compare_texts(mine: Sequence[Prediction], theirs: Sequence[Prediction]) -> dict[str, Any]:
    """A text or pair model against its reference, text by text: the share given the same label (for
    multi-label, the same decision on every label; and the share of (text, label) decisions alike),
    and each text's largest probability difference (mean, 95th percentile, max)."""
    if not mine or len(mine) != len(theirs):
        raise EvaluationError(f"{len(mine)} predictions to compare with {len(theirs)}")
    pairs = list(zip(mine, theirs))
    diffs = sorted(max(abs(p - b.probas[label]) for label, p in a.probas.items()) for a, b in pairs)
    report: dict[str, Any] = {
        "texts": len(mine),
        "label_agreement": sum(a.label == b.label for a, b in pairs) / len(mine),
        "mean_proba_diff": sum(diffs) / len(diffs),
        "p95_proba_diff": diffs[min(len(diffs) - 1, int(0.95 * len(diffs)))],
        "max_proba_diff": diffs[-1],
    }
    if isinstance(mine[0].label, list):
        decisions = [(p > 0.5) == (b.probas[label] > 0.5) for a, b in pairs for label, p in a.probas.items()]
        report["decision_agreement"] = sum(decisions) / len(decisions)
    return report


def compare_tokens(mine: Sequence[TokenPrediction], theirs: Sequence[TokenPrediction]) -> dict[str, Any]:
    """ner/pos against a reference on the same texts: the share of words labelled alike and of texts
    labelled alike throughout; for ner, the share of texts with the same entity set and the entity
    spans' F1 with the reference's spans (type, start, end) as gold."""
    words = same_words = same_texts = same_sets = spans_mine = spans_theirs = spans_both = 0
    for a, b in zip(mine, theirs, strict=True):
        words += len(a.labels)
        same = sum(x == y for x, y in zip(a.labels, b.labels, strict=True))
        same_words += same
        same_texts += same == len(a.labels)
        a_spans = {(e.type, e.start, e.end) for e in a.entities or ()}
        b_spans = {(e.type, e.start, e.end) for e in b.entities or ()}
        same_sets += a_spans == b_spans
        spans_mine, spans_theirs, spans_both = (
            spans_mine + len(a_spans), spans_theirs + len(b_spans), spans_both + len(a_spans & b_spans)
        )  # fmt: skip
    if not words:
        raise EvaluationError("no words to compare: every text was empty after preprocessing")
    report: dict[str, Any] = {
        "texts": len(mine),
        "words": words,
        "label_agreement": same_words / words,
        "texts_identical": same_texts / len(mine),
    }
    if mine[0].entities is not None:
        total = spans_mine + spans_theirs
        report["entity_set_agreement"] = same_sets / len(mine)
        report["entity_span_f1"] = 2 * spans_both / total if total else 1.0
    return report


def _single_label(prediction: Prediction | None) -> str:
    if prediction is None or not isinstance(prediction.label, str):
        raise EvaluationError("only single-label tasks can be evaluated (one gold label per text)")
    return prediction.label


def _accuracy(gold: Sequence[str], predicted: Sequence[str]) -> float:
    return sum(g == p for g, p in zip(gold, predicted, strict=True)) / len(gold) if gold else 0.0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m service.evaluate", description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="an exported dir (onnx), a transformers dir or hub id")
    parser.add_argument("--data", required=True, type=Path, help="a folder with test_text/test_labels.txt")
    parser.add_argument("--reference", help="a model to compare labels and probabilities with")
    parser.add_argument("--limit", type=int, help="evaluate the first N texts only")
    parser.add_argument("--task", help="when --model has no manifest (default: sentiment)")
    parser.add_argument("--lang", help="when --model has no manifest (default: from the data folder's name)")
    args = parser.parse_args(argv)
    try:
        report = evaluate(args.model, args.data, args.reference, args.limit, args.task, args.lang)
    except EvaluationError as error:
        print(f"evaluate: error: {error}", file=sys.stderr)
        return 2
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
