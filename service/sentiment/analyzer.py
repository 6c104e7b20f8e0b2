"""The analyzer: pysentimiento's preprocessing, a backend's probabilities, pysentimiento's labels.

Both backends share this one path, so they can differ only in the numbers their model gives:
texts are preprocessed here with the torch-free port of `preprocess_tweet`, the backend turns
preprocessed texts into probabilities, and labels are chosen exactly as pysentimiento's
`AnalyzerOutput` does (argmax, or every label over 0.5 for multi-label tasks). Pair tasks
(targeted_sentiment, context_hate_speech) read each text with a second segment; token tasks (ner,
pos) answer a label per word (service/sentiment/tokens.py).
"""

import itertools
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from service.config import PAIR_TASKS, TOKEN_TASKS, Backend
from service.exceptions import BadInput
from service.sentiment.preprocessing import preprocess_tweet
from service.sentiment.schemas import Prediction, TokenPrediction
from service.sentiment.tokens import WordLabelModel, predict_tokens


class ProbabilityModel(Protocol):
    """What a backend provides: label names in id order and a batch -> probabilities call."""

    labels: list[str]
    multi_label: bool

    def predict_probas(self, texts: Sequence[str]) -> list[list[float]]: ...


_instances = itertools.count(1)


def model_key(task: str, lang: str) -> str:
    return f"{task}:{lang}"


class PairModel(ProbabilityModel, Protocol):
    """A backend for targeted_sentiment / context_hate_speech: each text read with its second segment."""

    def predict_pair_probas(self, texts: Sequence[str], contexts: Sequence[str]) -> list[list[float]]: ...


class Pair(str):
    """A text and its second segment (a target, a context): a `str` of the text, so batching sorts,
    sizes and queues it like any other; the context rides along."""

    context: str

    def __new__(cls, text: str, context: str) -> "Pair":
        pair = super().__new__(cls, text)
        pair.context = context
        return pair

    # Equal and hashed with the context: identical texts are computed once (batching.infer) and
    # cached, and the same text with another target is another input.
    def __eq__(self, other: object) -> bool:
        return str.__eq__(self, other) is True and getattr(other, "context", None) == self.context

    def __ne__(self, other: object) -> bool:
        return not self == other

    def __hash__(self) -> int:
        return hash((str(self), self.context))


class Analyzer:
    def __init__(self, model: ProbabilityModel, task: str, lang: str, backend: Backend) -> None:
        self.model = model
        self.task = task
        self.lang = lang
        self.backend = backend
        # This loaded instance, for the result cache: `task:lang` (the registry's key) + a serial,
        # so a model loaded again (perhaps re-exported meanwhile) never sees older results.
        self.identity = f"{model_key(task, lang)}#{next(_instances)}"

    @property
    def key(self) -> str:
        """The model's registry key (`task:lang`)."""
        return model_key(self.task, self.lang)

    def preprocess(self, texts: Sequence[str]) -> list[str]:
        """Preprocess as pysentimiento does; a text that comes out empty cannot be analyzed."""
        processed = [preprocess_tweet(text, self.lang) for text in texts]
        return _non_empty(processed)

    def predict(self, texts: Sequence[str]) -> list[Prediction]:
        return self.predict_preprocessed(self.preprocess(texts))

    def predict_preprocessed(self, texts: Sequence[str]) -> list[Prediction]:
        return [self._prediction(row) for row in self.model.predict_probas(texts)]

    def _prediction(self, row: Sequence[float]) -> Prediction:
        probas = {label: float(p) for label, p in zip(self.model.labels, row, strict=True)}
        if self.model.multi_label:
            label: str | list[str] = [name for name, p in probas.items() if p > 0.5]
        else:
            label = max(probas.items(), key=lambda item: item[1])[0]
        return Prediction(label=label, probas=probas)


class PairAnalyzer(Analyzer):
    """targeted_sentiment, context_hate_speech: pysentimiento's `predict(text, context=...)`, whose
    context is preprocessed like the text (preprocess_context=True) and encoded as the pair's second
    segment."""

    model: PairModel

    def preprocess(self, texts: Sequence[str]) -> list[str]:
        processed = _non_empty([preprocess_tweet(text, self.lang) for text in texts])
        contexts = [preprocess_tweet(_context(text), self.lang) for text in texts]
        _non_empty(contexts, what="context(s)")
        return [Pair(text, context) for text, context in zip(processed, contexts, strict=True)]

    def predict_preprocessed(self, texts: Sequence[str]) -> list[Prediction]:
        contexts = [_context(text) for text in texts]
        return [self._prediction(row) for row in self.model.predict_pair_probas(texts, contexts)]


class TokenAnalyzer:
    """ner, pos: pysentimiento's token-classification analyzer (handles kept: @names become USER)."""

    def __init__(self, model: WordLabelModel, task: str, lang: str, backend: Backend) -> None:
        self.model = model
        self.task = task
        self.lang = lang
        self.backend = backend

    @property
    def key(self) -> str:
        """The model's registry key (`task:lang`)."""
        return model_key(self.task, self.lang)

    def preprocess(self, texts: Sequence[str]) -> list[str]:
        return _non_empty([preprocess_tweet(text, self.lang, preprocess_handles=False) for text in texts])

    def predict(self, texts: Sequence[str]) -> list[TokenPrediction]:
        return self.predict_preprocessed(self.preprocess(texts))

    def predict_preprocessed(self, texts: Sequence[str]) -> list[TokenPrediction]:
        return predict_tokens(self.model, texts, self.lang, chunk=self.task == "ner")


def _context(text: str) -> str:
    if not isinstance(text, Pair):
        raise TypeError("a pair task's texts carry their context: build them with Pair(text, context)")
    return text.context


def _non_empty(processed: list[str], what: str = "text(s)") -> list[str]:
    empty = [index for index, text in enumerate(processed) if not text]
    if empty:
        raise BadInput(
            f"nothing is left of {what} at index {empty} after pysentimiento's preprocessing "
            "(it drops characters such as ☹ ~ … ™)",
            empty_after_preprocessing=empty,
        )
    return processed


def create_analyzer(
    task: str, lang: str, source: str | Path, backend: Backend, num_threads: int = 1, prepacked: bool = True
) -> Analyzer | TokenAnalyzer:
    """Load the model for (task, lang) from `source` with the given backend.

    `source` is a hub id or a transformers model dir for torch, an exported dir for onnx.
    Backends are imported here, not at module level, so that the onnx path never imports torch.
    """
    model: Any
    if backend == "torch":
        from service.sentiment.backends.torch_backend import TorchModel

        model = TorchModel(task, lang, str(source), num_threads)
    else:
        from service.sentiment.backends.onnx_backend import OnnxModel

        model = OnnxModel(Path(source), num_threads, prepacked)
    if task in TOKEN_TASKS:
        return TokenAnalyzer(model, task, lang, backend)
    if task in PAIR_TASKS:
        return PairAnalyzer(model, task, lang, backend)
    return Analyzer(model, task, lang, backend)
