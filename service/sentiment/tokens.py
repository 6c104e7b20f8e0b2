"""Token classification (ner, pos) exactly as pysentimiento 0.7.3's AnalyzerForTokenClassification.

Ported, like preprocessing.py, so the onnx backend never imports pysentimiento (and with it torch):
- words are spaCy's tokens of the preprocessed text (a blank `Spanish()` / `English()` tokenizer; its
  analyzer uses English for "en" and Spanish otherwise, so Italian or Portuguese are never asked);
- a word's label is the model's label of its first sub-token (its score: that label's probability);
  a word starting with "@" is "B-USER";
  a word whose sub-tokens were all truncated (past 128) has none;
- ner groups BIO labels into entities with spaCy's character offsets (`decode`); pos drops "B-".
`tests/sentiment/test_tokens.py` checks the output against pysentimiento's own on the same model.
"""

import importlib.util
import sys
from collections.abc import Sequence
from functools import lru_cache
from typing import Any, Protocol

from service.exceptions import ModelUnavailable
from service.sentiment.schemas import Entity, TokenPrediction

# thinc (spaCy's ML library) imports these when they are installed, only to tell whether it may use
# them: torch alone adds ~260 MB of RSS to a process that needs spaCy's tokenizer and nothing else.
_OPTIONAL_ML_MODULES = ("torch", "tensorflow", "mxnet", "cupy", "jax")


class Word(Protocol):
    """What `decode` reads of a spaCy token."""

    text: str
    idx: int
    whitespace_: str


def require_spacy() -> None:
    """spaCy is an extra (requirements-tokens.txt): without it ner/pos are unavailable (503, before
    their model loads) and every other task serves as usual. Looked up, not imported."""
    if importlib.util.find_spec("spacy") is None:
        raise ModelUnavailable(
            "ner and pos split words with spaCy, which is not installed: install requirements-tokens.txt "
            "(`bash start.sh install` does when EXPORT_MODELS names a ner or pos model)",
            missing="spacy",
        )


@lru_cache
def word_tokenizer(lang: str) -> Any:
    """spaCy's rule-based tokenizer of `lang` (no pipeline, no model), imported without torch
    unless the process already has it (the torch backend)."""
    hidden = [name for name in _OPTIONAL_ML_MODULES if name not in sys.modules]
    for name in hidden:
        sys.modules[name] = None  # type: ignore[assignment]  # makes `import name` fail at once
    try:
        if lang == "en":
            from spacy.lang.en import English as Language
        else:
            from spacy.lang.es import Spanish as Language
    finally:
        for name in hidden:
            if sys.modules.get(name) is None:
                del sys.modules[name]
    return Language().tokenizer


# A word's label id (its first sub-token's argmax) and that label's softmax probability.
WordLabel = tuple[int, float]


class WordLabelModel(Protocol):
    """What a backend provides for token tasks: label names in id order, and for each text split in
    words, each word's first sub-token's label id and probability (None past truncation)."""

    labels: list[str]

    def predict_word_labels(self, words: Sequence[Sequence[str]]) -> list[list[WordLabel | None]]: ...


def word_labels(
    words: Sequence[str], first: Sequence[WordLabel | None], labels: Sequence[str]
) -> tuple[list[str | None], list[float | None]]:
    """pysentimiento's alignment: the first sub-token's label, "B-USER" for an @handle (a rule's
    label, so its score is 1.0, not the model's)."""
    names: list[str | None] = []
    scores: list[float | None] = []
    for word, predicted in zip(words, first, strict=True):
        if predicted is None:
            names.append(None)
            scores.append(None)
        elif word.startswith("@"):
            names.append("B-USER")
            scores.append(1.0)
        else:
            names.append(labels[predicted[0]])
            scores.append(predicted[1])
    return names, scores


def decode(words: Sequence[Word], labels: Sequence[str | None]) -> list[Entity]:
    """BIO labels -> entities, line for line pysentimiento's `decode` (including that an I- tag
    after another type opens a new entity, and that non-BIO labels group while they repeat)."""
    segments: list[tuple[list[Word], str | None]] = []
    current: list[Word] | None = None
    current_type: str | None = None
    for word, label in zip(words, labels):
        if label is None:
            continue
        if label == "O":
            if current_type != "O":
                if current:
                    segments.append((current, current_type))
                current, current_type = [], "O"
        elif label.startswith("B-"):
            if current:
                segments.append((current, current_type))
            current, current_type = [word], label[2:]
        elif label.startswith("I-"):
            if current_type == label[2:] and current is not None:
                current.append(word)
            else:
                if current:
                    segments.append((current, current_type))
                current, current_type = [word], label[2:]
        elif label != current_type:
            if current:
                segments.append((current, current_type))
            current, current_type = [word], label
        elif current is not None:
            current.append(word)
    if current:
        segments.append((current, current_type))
    return [
        Entity(
            type=str(kind),
            text="".join(w.text + w.whitespace_ for w in group).strip(),
            start=group[0].idx,
            end=group[-1].idx + len(group[-1].text),
        )
        for group, kind in segments
    ]


def predict_tokens(
    model: WordLabelModel, texts: Sequence[str], lang: str, chunk: bool
) -> list[TokenPrediction]:
    """Preprocessed texts -> words, labels and (ner, `chunk`) entities."""
    tokenizer = word_tokenizer(lang)
    docs = [list(tokenizer(text)) for text in texts]
    words = [[token.text for token in doc] for doc in docs]
    results = []
    for text, doc, sentence, first in zip(texts, docs, words, model.predict_word_labels(words), strict=True):
        labels, scores = word_labels(sentence, first, model.labels)
        if chunk:
            entities = decode(doc, labels)
            results.append(
                TokenPrediction(text=text, tokens=sentence, labels=labels, scores=scores, entities=entities)
            )
        else:
            # pysentimiento strips "B-" (its POS labels carry it for seqeval); on a word without a
            # label (a run of spaces, past 128 sub-tokens) it fails, and the label stays null here.
            pos = [label[2:] if label is not None and label.startswith("B-") else label for label in labels]
            results.append(TokenPrediction(text=text, tokens=sentence, labels=pos, scores=scores))
    return results
