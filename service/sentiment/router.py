"""`POST /analyze` and `POST /analyze/file`: sync routes, so the blocking inference runs in the
threadpool (a request waiting for its micro-batch blocks a pool thread, not the event loop)."""

from typing import Annotated

from fastapi import APIRouter, Form, UploadFile
from fastapi.responses import StreamingResponse

from service.exceptions import error_examples
from service.sentiment.bulk import NDJSON, BulkOptions, analyze_file
from service.sentiment.schemas import AnalyzeBatchResult, AnalyzeRequest, AnalyzeResult
from service.sentiment.service import analyze

router = APIRouter(tags=["sentiment"])


@router.post(
    "/analyze",
    response_model=AnalyzeResult | AnalyzeBatchResult,
    responses=error_examples(400, 422, 503),
    summary="Sentiment, emotion, hate speech or irony of one text or a batch",
)
def analyze_texts(request: AnalyzeRequest) -> AnalyzeResult | AnalyzeBatchResult:
    predictions = analyze(request.all_texts(), request.task, request.lang)
    if request.text is not None:
        return AnalyzeResult(task=request.task, lang=request.lang, **predictions[0].model_dump())
    return AnalyzeBatchResult(task=request.task, lang=request.lang, results=predictions)


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
