"""The Hugging Face inference protocol, next to `/analyze`: TEI's `/predict` and `/info`, and an
endpoint root per model for `huggingface_hub.InferenceClient` and `@huggingface/inference`.

The default model (DEFAULT_TASK, DEFAULT_LANG) answers at `/`, `/predict` and `/info`; every
(task, lang) at `/models/{task}-{lang}` and its `/predict` and `/info`. Sync routes, as `/analyze`'s:
inference blocks a pool thread, not the event loop. Errors come in TEI's shape
(service/error_handlers.py), which both clients put in their exceptions.
"""

from typing import Any

from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from service.config import TOKEN_TASKS, get_settings
from service.error_handlers import HfErrorResponse
from service.exceptions import BadInput
from service.protocol.schemas import (
    InferenceRequest,
    Info,
    LabelScore,
    Parameters,
    PredictRequest,
    TextPair,
    TokenEntity,
)
from service.protocol.service import check_pairs, classify, model_info, token_entities
from service.sentiment.router import ShapeCheckedRoute
from service.sentiment.schemas import AUTO, AnalyzeRequest
from service.sentiment.service import check_supported, task_langs

router = APIRouter(tags=["hugging face protocol"], route_class=ShapeCheckedRoute)

MODEL_PATH = "/models/{model}"
Classified = list[list[LabelScore]] | list[LabelScore]
Answer = list[list[LabelScore]] | list[TokenEntity] | list[list[TokenEntity]]

_ERRORS = {
    400: "The body is not valid JSON.",
    422: "The input is invalid or not served by this model (a pair to a one-text model, a parameter "
    "it cannot honour, an unknown model); `error` says which and why.",
    503: "The model cannot be loaded or the memory budget is full; see Retry-After.",
}


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    example = {
        "error": "text has 2500 characters; at most MAX_TEXT_CHARS=2000",
        "error_type": "invalid_input",
    }
    return {
        code: {
            "model": HfErrorResponse,
            "description": _ERRORS[code],
            "content": {"application/json": {"example": example}},
        }
        for code in codes
    }


def _model(name: str | None) -> tuple[str, str]:
    """`{task}-{lang}` -> (task, lang); None: the default model. `lang` is passed on as named."""
    if name is None:
        settings = get_settings()
        return settings.default_task, settings.default_lang
    task, _, lang = name.rpartition("-")
    if lang != AUTO or not task_langs(task):  # `{task}-auto`: each text to its own language's model
        check_supported(task, lang)
    return task, lang


def _validated(
    texts: list[str], contexts: list[str] | None, single: bool, task: str, lang: str
) -> AnalyzeRequest:
    """The texts as `/analyze` would take them: its checks, limits and messages."""
    check_pairs(task, lang, contexts is not None)
    fields: dict[str, Any] = {"task": task, "lang": lang}
    if single:
        fields["text"] = texts[0]
        if contexts is not None:
            fields["context"] = contexts[0]
    else:
        fields["texts"] = texts
        if contexts is not None:
            fields["context"] = contexts
    try:
        return AnalyzeRequest(**fields)
    except ValidationError as error:
        raise RequestValidationError(error.errors()) from None


def _predict(body: PredictRequest, name: str | None) -> Classified:
    task, lang = _model(name)
    if body.raw_scores:
        raise BadInput("raw_scores=true is not served: the models answer probabilities, not logits")
    if body.truncate is False:
        raise BadInput(
            "truncate=false is not served: every text is read as pysentimiento reads it, cut at the "
            "model's 128 tokens (auto_truncate); send truncate=true or leave it out"
        )
    if body.truncation_direction == "left":
        raise BadInput("truncation_direction=left is not served: a long text's end is cut (right)")
    inputs = body.inputs
    single = isinstance(inputs, str)
    texts: list[str]
    contexts: list[str] | None = None
    if single:
        texts = [inputs]  # type: ignore[list-item]
    elif inputs and isinstance(inputs[0], list):
        if any(len(pair) != 2 for pair in inputs):
            raise BadInput("each pair in `inputs` is [text, text_pair]: two strings")
        texts, contexts = [pair[0] for pair in inputs], [pair[1] for pair in inputs]  # type: ignore[misc]
    else:
        texts = list(inputs)  # type: ignore[arg-type]
    request = _validated(texts, contexts, single, task, lang)
    ranked = classify(request.all_texts(), task, lang, request.all_contexts())
    return ranked[0] if single else ranked


def _infer(body: InferenceRequest, name: str | None) -> Answer:
    task, lang = _model(name)
    inputs = body.inputs
    single = isinstance(inputs, str | TextPair)
    items = [inputs] if single else list(inputs)  # type: ignore[list-item]
    paired = bool(items) and isinstance(items[0], TextPair)
    texts = [item.text if isinstance(item, TextPair) else item for item in items]
    contexts = [item.text_pair for item in items] if paired else None  # type: ignore[union-attr]
    request = _validated(texts, contexts, single, task, lang)
    parameters = body.parameters or Parameters()
    _check_parameters(parameters, task, lang)
    if task in TOKEN_TASKS:
        if parameters.stride is not None:
            raise BadInput(
                "stride is not served: a text is read in one window of 128 tokens, the rest is cut"
            )
        entities = token_entities(
            request.all_texts(),
            task,
            lang,
            parameters.aggregation_strategy,
            parameters.ignore_labels,
        )
        return entities[0] if single else entities
    return classify(
        request.all_texts(),
        task,
        lang,
        request.all_contexts(),
        parameters.top_k,
        parameters.function_to_apply,
    )


# The Inference API's parameters of each kind of answer.
_TEXT_PARAMETERS = ("top_k", "function_to_apply")
_TOKEN_PARAMETERS = ("aggregation_strategy", "ignore_labels", "stride")


def _check_parameters(parameters: Parameters, task: str, lang: str) -> None:
    """A parameter of the other kind of answer is refused rather than ignored."""
    kind, foreign = "text-classification", _TOKEN_PARAMETERS
    if task in TOKEN_TASKS:
        kind, foreign = "token-classification", _TEXT_PARAMETERS
    sent = [name for name in foreign if getattr(parameters, name) is not None]
    if sent:
        raise BadInput(f"{', '.join(sent)}: not a parameter of {kind}, which {task}/{lang} answers")


_PREDICT = {
    "response_model": Classified,
    "responses": {
        200: {
            "description": "One text: its labels, highest score first; a batch: one such list per text.",
            "content": {
                "application/json": {
                    "example": [
                        {"label": "POS", "score": 0.978},
                        {"label": "NEU", "score": 0.018},
                        {"label": "NEG", "score": 0.004},
                    ]
                }
            },
        },
        **_errors(400, 422, 503),
    },
    "summary": "TEI's sequence classification: each input's labels with scores, highest first",
    "description": "Text Embeddings Inference's `/predict`: `inputs` is a text, a list of texts, or a list "
    "of [text, text_pair] pairs (targeted_sentiment, context_hate_speech). Scores are `/analyze`'s "
    "probabilities; texts are cut at the model's 128 tokens as pysentimiento cuts them "
    "(`truncate` true or unset); `raw_scores` is refused.",
}


@router.post("/predict", **_PREDICT)
def predict_default(body: PredictRequest) -> Classified:
    return _predict(body, None)


@router.post(MODEL_PATH + "/predict", **_PREDICT)
def predict_model(model: str, body: PredictRequest) -> Classified:
    return _predict(body, model)


_INFER = {
    "response_model": Answer,
    "responses": {
        200: {
            "description": "text-classification: one list of labels with scores per input, highest "
            "first (a single input too, as the Inference API answers it). token-classification (ner, pos): "
            "the text's entities (a batch: one list per text).",
            "content": {
                "application/json": {
                    "examples": {
                        "text-classification": {
                            "value": [
                                [
                                    {"label": "POS", "score": 0.978},
                                    {"label": "NEU", "score": 0.018},
                                    {"label": "NEG", "score": 0.004},
                                ]
                            ]
                        },
                        "token-classification": {
                            "value": [
                                {
                                    "entity_group": "PER",
                                    "score": 0.997,
                                    "word": "Lionel Messi",
                                    "start": 0,
                                    "end": 12,
                                },
                                {
                                    "entity_group": "USER",
                                    "score": 1.0,
                                    "word": "@usuario",
                                    "start": 32,
                                    "end": 40,
                                },
                            ]
                        },
                    }
                }
            },
        },
        **_errors(400, 422, 503),
    },
    "summary": "A model's endpoint root: the Inference API's text-classification and token-classification",
    "description": "Point `huggingface_hub.InferenceClient(model=URL)` or `@huggingface/inference`'s "
    '`endpointUrl` here. text-classification: `{"inputs": text | [texts] | {text, text_pair}, '
    '"parameters": {"top_k", "function_to_apply"}}`; token-classification (ner, pos) answers '
    "`entity_group`, `score`, `word`, `start`, `end` with aggregation `first` (pysentimiento's words: "
    "each takes its first sub-token's label; the score is the mean of its words').",
}


@router.post("/", **_INFER)
def infer_default(body: InferenceRequest) -> Answer:
    return _infer(body, None)


@router.post(MODEL_PATH, **_INFER)
def infer_model(model: str, body: InferenceRequest) -> Answer:
    return _infer(body, model)


_INFO = {
    "response_model": Info,
    "responses": _errors(422, 503),
    "summary": "TEI's /info: the model's labels, input and batch limits, version",
    "description": "Loads the model if it is not loaded (as `/ready` does), to read its labels.",
}


@router.get("/info", **_INFO)
def info_default(request: Request) -> Info:
    return model_info(*_model(None), request.app.version)


@router.get(MODEL_PATH + "/info", **_INFO)
def info_model(model: str, request: Request) -> Info:
    return model_info(*_model(model), request.app.version)
