"""The Hugging Face protocol's answers, computed by `/analyze`'s own path.

Every text goes through `service.sentiment.service.analyze` (the same budget, micro-batching,
result cache and limits); this module only reshapes its answers: probabilities as labels ranked by
score, ner entities and pos words with their offsets and scores. `lang` is passed through as sent
(`auto`: each text read by its own language's model, as `/analyze` reads it).
"""

from collections.abc import Sequence
from typing import Any

from service.config import PAIR_TASKS, TOKEN_TASKS, get_settings
from service.exceptions import BadInput, LanguageUndetected
from service.hardware import current
from service.protocol.schemas import ClassifierLabels, Info, LabelScore, ModelType, TokenEntity
from service.registry import get_registry
from service.sentiment.schemas import AUTO, Prediction, TextError, TokenPrediction
from service.sentiment.service import analyze, check_supported, model_item

# The tokens each text is read in: pysentimiento sets max_length 128 for every model (both backends).
MAX_INPUT_TOKENS = 128
# The model's own activation: what its probabilities already are (pysentimiento's AnalyzerOutput).
OWN_FUNCTION = {False: "softmax", True: "sigmoid"}
# How ner/pos words are grouped: pysentimiento's (first sub-token's label, BIO grouping), which is
# transformers' "first" aggregation on word-level labels.
AGGREGATION = "first"


def check_pairs(task: str, lang: str, paired: bool) -> None:
    """Pair tasks read each text beside a second one; the others read one text."""
    if paired and task not in PAIR_TASKS:
        raise BadInput(
            f"{task}/{lang} reads one text: text pairs are only for {' and '.join(PAIR_TASKS)}",
            supported_pair_tasks=list(PAIR_TASKS),
        )
    if not paired and task in PAIR_TASKS:
        raise BadInput(
            f"{task}/{lang} reads each text beside a second one (its target or context): send "
            '{"text": ..., "text_pair": ...} (the Inference API) or [text, text_pair] (/predict)'
        )


def classify(
    texts: Sequence[str],
    task: str,
    lang: str,
    contexts: Sequence[str] | None = None,
    top_k: int | None = None,
    function_to_apply: str | None = None,
) -> list[list[LabelScore]]:
    """Each text's labels, highest score first (the `top_k` best), from `/analyze`'s probas."""
    if task in TOKEN_TASKS:
        raise BadInput(
            f'{task}/{lang} is a token-classification model: POST {{"inputs": text}} to /models/{task}-{lang}'
        )
    if function_to_apply == "none":
        raise BadInput("function_to_apply=none is not served: the models answer probabilities, not logits")
    predictions = _answered(analyze(texts, task, lang, contexts))
    multi_label = bool(predictions) and isinstance(predictions[0].label, list)
    if function_to_apply is not None and function_to_apply != OWN_FUNCTION[multi_label]:
        raise BadInput(
            f"function_to_apply={function_to_apply} is not served: the {task}/{lang} model answers "
            f"{OWN_FUNCTION[multi_label]} probabilities; send {OWN_FUNCTION[multi_label]} or leave it out"
        )
    return [_ranked(prediction, top_k) for prediction in predictions]  # type: ignore[arg-type]


def _answered(predictions: Sequence[Any]) -> Sequence[Any]:
    """`{task}-auto`'s answers, or a 422 for a text whose language could not be told: the protocol
    has no per-text error, so the request is refused naming it (`/analyze` answers the others)."""
    for index, prediction in enumerate(predictions):
        if isinstance(prediction, TextError):
            error = prediction.error
            raise LanguageUndetected(error.code, f"inputs[{index}]: {error.message}", detected=error.detected)
    return predictions


def _ranked(prediction: Prediction, top_k: int | None) -> list[LabelScore]:
    scores = sorted(prediction.probas.items(), key=lambda item: item[1], reverse=True)
    return [LabelScore(label=label, score=score) for label, score in scores[:top_k]]


def token_entities(
    texts: Sequence[str],
    task: str,
    lang: str,
    aggregation_strategy: str | None = None,
    ignore_labels: Sequence[str] | None = None,
) -> list[list[TokenEntity]]:
    """ner: `/analyze`'s entities; pos: its words; each with offsets and the mean of its words' scores."""
    if task not in TOKEN_TASKS:
        raise BadInput(f"{task}/{lang} is a text-classification model: it has no token-classification answer")
    if aggregation_strategy not in (None, AGGREGATION):
        raise BadInput(
            f"aggregation_strategy={aggregation_strategy} is not served: words are grouped as "
            f"pysentimiento groups them ({AGGREGATION!r}: a word takes its first sub-token's label); "
            "send first or leave it out"
        )
    ignored = {"O"} if ignore_labels is None else set(ignore_labels)
    predictions: list[TokenPrediction] = _answered(analyze(texts, task, lang))  # type: ignore[assignment]
    return [
        [entity for entity in _entities(prediction) if entity.entity_group not in ignored]
        for prediction in predictions
    ]


def _entities(prediction: TokenPrediction) -> list[TokenEntity]:
    spans = _offsets(prediction.text, prediction.tokens)
    if prediction.entities is None:  # pos: every labelled word
        return [
            TokenEntity(entity_group=label, score=score, word=token, start=start, end=end)
            for token, label, score, (start, end) in zip(
                prediction.tokens, prediction.labels, prediction.scores, spans, strict=True
            )
            if label is not None and score is not None
        ]
    entities = []
    for entity in prediction.entities:
        scores = [
            score
            for score, (start, _) in zip(prediction.scores, spans, strict=True)
            if score is not None and entity.start <= start < entity.end
        ]
        entities.append(
            TokenEntity(
                entity_group=entity.type,
                score=sum(scores) / len(scores),
                word=entity.text,
                start=entity.start,
                end=entity.end,
            )
        )
    return entities


def _offsets(text: str, tokens: Sequence[str]) -> list[tuple[int, int]]:
    """Each token's span in `text`, by spaCy's invariant: `text` is its tokens in order, each but a
    whitespace token followed by the one space it takes as `whitespace_` when a space follows it
    (further whitespace is a token of its own)."""
    spans, cursor = [], 0
    for token in tokens:
        spans.append((cursor, cursor + len(token)))
        cursor += len(token)
        if not token.isspace() and text.startswith(" ", cursor):
            cursor += 1
    return spans


def model_info(task: str, lang: str, version: str) -> Info:
    """TEI's `/info` of (task, lang): its labels come from the model, loaded as `/ready` loads it."""
    if lang == AUTO:
        raise BadInput(
            f"/info describes one model, and {task}-auto reads each text with its own language's: "
            f"ask /models/{task}-{{lang}}/info"
        )
    check_supported(task, lang)
    settings = get_settings()
    item = model_item(task, lang)
    with get_registry().use(item) as analyzer:
        labels = list(analyzer.model.labels)
        manifest = getattr(analyzer.model, "manifest", None) or {}
    hardware = current(settings)
    return Info(
        model_id=str(settings.model_source(task, lang)),
        model_dtype="int8" if manifest.get("quantization") else "float32",
        model_type=ModelType(
            classifier=ClassifierLabels(
                id2label={str(index): label for index, label in enumerate(labels)},
                label2id={label: index for index, label in enumerate(labels)},
            )
        ),
        task=task,
        lang=lang,
        max_concurrent_requests=hardware.queue_max,
        max_input_length=MAX_INPUT_TOKENS,
        max_batch_tokens=hardware.batch_max_size * MAX_INPUT_TOKENS,
        max_batch_requests=hardware.batch_max_size,
        max_client_batch_size=settings.max_batch,
        max_input_chars=settings.max_text_chars,
        tokenization_workers=1,
        version=version,
    )
