"""`POST /analyze` and `POST /analyze/file`. `/analyze` is async: on a loaded model with
micro-batching on, a request preprocesses its texts on the event loop and awaits its batch, holding
no pool thread; whatever may block (a load, language detection, inference without batching) runs in
the threadpool (service/sentiment/service.py, `analyze_async`). `/analyze/file` is a sync route."""

from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import APIRouter, Form, Request, Response, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import StreamingResponse

from service.config import TOKEN_TASKS
from service.error_handlers import error_examples
from service.exceptions import LanguageUndetected
from service.forms import FormRoute
from service.sentiment.bulk import NDJSON, BulkOptions, analyze_file
from service.sentiment.schemas import (
    AUTO,
    AnalyzeBatchResult,
    AnalyzeRequest,
    AnalyzeResult,
    AutoBatchResult,
    AutoPrediction,
    AutoResult,
    AutoTokenBatchResult,
    AutoTokenPrediction,
    AutoTokenResult,
    TextError,
    TokenBatchResult,
    TokenPrediction,
    TokenResult,
    shape_problem,
)
from service.sentiment.service import analyze_async


def is_json(content_type: str | None) -> bool:
    """What FastAPI parses as JSON: no content type, `application/json` or `application/*+json`."""
    media = (content_type or "").split(";")[0].strip().lower()
    return (
        not media
        or media == "application/json"
        or (media.startswith("application/") and media.endswith("+json"))
    )


class ShapeCheckedRoute(FormRoute):
    """Refuses a JSON body that cannot be valid from its structure (`shape_problem`) before FastAPI
    parses it into objects; the body read here is the one FastAPI then parses (Starlette caches it).
    A form (`/analyze/file`) is parsed under the bounds of service/forms.py."""

    def get_route_handler(self) -> Callable[[Request], Awaitable[Response]]:
        handler = super().get_route_handler()

        async def checked(request: Request) -> Response:
            if is_json(request.headers.get("content-type")):
                problem = shape_problem(await request.body())
                if problem is not None:
                    error = {"type": "value_error", "loc": ("body",), "msg": problem, "input": None}
                    raise RequestValidationError([error])
            return await handler(request)

        return checked


router = APIRouter(tags=["sentiment"], route_class=ShapeCheckedRoute)


Answer = (
    AnalyzeResult
    | AnalyzeBatchResult
    | TokenResult
    | TokenBatchResult
    | AutoResult
    | AutoBatchResult
    | AutoTokenResult
    | AutoTokenBatchResult
)


@router.post(
    "/analyze",
    response_model=Answer,
    responses=error_examples(400, 422, 503),
    summary="Sentiment, emotion, hate speech, irony, targeted sentiment, named entities or parts of "
    "speech of one text or a batch",
    description="Every model of pysentimiento's `create_analyzer`: `sentiment`, `emotion`, `hate_speech` "
    "and `irony` in es, en, it and pt; `ner` and `pos` (a label per word, entities with offsets) in es "
    "and en; `targeted_sentiment` and `context_hate_speech` (es), which read each text with its "
    '`context`. An unsupported task/lang pair gets 422 listing the supported ones. `lang: "auto"`: '
    "each text is read by the model of its own language (detected among the task's), and says which "
    "and how sure; a text whose language cannot be told gets an `error` in its place in a batch "
    "(a 422 for one `text`), or DEFAULT_LANG's model with `fallback: true`.",
)
async def analyze_texts(request: AnalyzeRequest) -> Answer:
    task, lang = request.task, request.lang
    contexts = request.all_contexts()
    predictions = await analyze_async(request.all_texts(), task, lang, contexts, request.fallback)
    if lang == AUTO:
        return _auto_answer(request, predictions)
    tokens = bool(predictions) and isinstance(predictions[0], TokenPrediction)
    if request.text is not None:
        single = TokenResult if tokens else AnalyzeResult
        return single(task=task, lang=lang, **predictions[0].model_dump())
    batch = TokenBatchResult if tokens else AnalyzeBatchResult
    return batch(task=task, lang=lang, results=predictions)


def _auto_answer(
    request: AnalyzeRequest, results: list[AutoPrediction | AutoTokenPrediction | TextError]
) -> Answer:
    """One text: its result with the language used, or its error as the request's 422. A batch:
    every text's result or error, in order."""
    if request.text is not None:
        (result,) = results
        if isinstance(result, TextError):
            detected = {"detected": result.error.detected} if result.error.detected else {}
            raise LanguageUndetected(result.error.code, result.error.message, **detected)
        single = AutoTokenResult if isinstance(result, AutoTokenPrediction) else AutoResult
        return single(task=request.task, **result.model_dump())
    tokens = request.task in TOKEN_TASKS
    batch = AutoTokenBatchResult if tokens else AutoBatchResult
    return batch(task=request.task, lang=AUTO, results=results)


@router.post(
    "/analyze/file",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": 'One JSON line per row: `{"row": 1, "id": ..., "label": ..., "probas": {...}}`, '
            'or `{"row": 2, "error": {"code": ..., "message": ...}}` for a bad row.',
            "content": {NDJSON: {}},
        },
        **error_examples(422, 503),
    },
    summary="Every row of a CSV or JSONL upload of any size, streamed back as NDJSON at constant memory",
)
def analyze_upload(file: UploadFile, options: Annotated[BulkOptions, Form()]) -> StreamingResponse:
    return StreamingResponse(analyze_file(file.file, file.filename, options), media_type=NDJSON)
