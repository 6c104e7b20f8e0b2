"""`POST /analyze`: a sync route, so the blocking inference runs in the threadpool."""

from fastapi import APIRouter

from service.exceptions import error_examples
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
