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

from service.config import TOKEN_TASKS, get_settings
from service.hardware import num_threads
from service.sentiment.analyzer import Analyzer, create_analyzer
from service.sentiment.backends.onnx_backend import MANIFEST, read_manifest
from service.sentiment.preprocessing import preprocess_tweet
from service.sentiment.schemas import Prediction

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


def read_texts(data_dir: Path, limit: int | None = None) -> list[str]:
    """test_text.txt alone: what ner/pos agreement needs (no gold labels)."""
    text_file = data_dir / "test_text.txt"
    if not text_file.is_file():
        raise EvaluationError(f"{data_dir} needs test_text.txt")
    return [line for line in text_file.read_text(encoding="utf-8").splitlines() if line.strip()][:limit]


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


def token_agreement(model: Path, reference: Path, texts: Sequence[str]) -> dict[str, Any]:
    """ner/pos of two exported dirs (INT8 and its fp32 reference) on the same texts: the share of
    words labelled alike, of texts labelled alike throughout, and (ner) entity spans' F1 with the
    reference's spans (type, start, end) as gold."""
    manifest = read_manifest(model)
    task, lang = manifest["task"], manifest["lang"]
    if task not in TOKEN_TASKS:
        raise EvaluationError(f"{model} is a {task} model, not ner or pos")
    mine_analyzer, their_analyzer = load_analyzer(model, task, lang), load_analyzer(reference, task, lang)
    processed = sorted(
        (text for text in (preprocess_tweet(t, lang, preprocess_handles=False) for t in texts) if text),
        key=len,
    )
    words = same_words = same_texts = spans_mine = spans_theirs = spans_both = 0
    for start in range(0, len(processed), BATCH):
        batch = processed[start : start + BATCH]
        mine = mine_analyzer.predict_preprocessed(batch)
        theirs = their_analyzer.predict_preprocessed(batch)
        for a, b in zip(mine, theirs, strict=True):
            words += len(a.labels)
            same = sum(x == y for x, y in zip(a.labels, b.labels, strict=True))
            same_words += same
            same_texts += same == len(a.labels)
            if a.entities is not None and b.entities is not None:
                a_spans = {(e.type, e.start, e.end) for e in a.entities}
                b_spans = {(e.type, e.start, e.end) for e in b.entities}
                spans_mine, spans_theirs = spans_mine + len(a_spans), spans_theirs + len(b_spans)
                spans_both += len(a_spans & b_spans)
    if not words:
        raise EvaluationError("no words to compare: every text was empty after preprocessing")
    report: dict[str, Any] = {
        "texts": len(processed),
        "words": words,
        "label_agreement": same_words / words,
        "texts_identical": same_texts / len(processed),
    }
    if task == "ner":
        total = spans_mine + spans_theirs
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
