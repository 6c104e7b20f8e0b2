"""OCR of one upload: check it, then decode and recognise it in the OCR worker, then analyse.

The order matters for the budget: cheap checks first (kind, page selection), then the engine
through the registry (which may evict idle models to fit it), then a reservation of exactly
OCR_WORK_MB, the most the worker process may add while it decodes and reads this upload
(`service/ocr/sandbox.py`). No untrusted byte is decoded in the server process itself.
The engine is released before sentiment runs, so the registry may unload it to fit a model.
"""

import time
from typing import Any

from service.exceptions import BadInput
from service.ocr.config import TESSERACT_LANGS, OcrSettings, get_ocr_settings
from service.ocr.sandbox import OcrWorker, get_worker
from service.ocr.schemas import OcrOptions, OcrResponse, PageResult, PageSentiment
from service.ocr.tessdata import resolve_tessdata
from service.ocr.uploads import check_kind
from service.registry import Loadable, get_registry

MB = 1024 * 1024
# RSS an engine adds to the worker: the LSTM model and its caches (measured 14 MB for spa's
# 3.4 MB traineddata, +7 MB kept after the first page), plus the file itself.
ENGINE_BASE_MB = 25.0
# RSS of the worker process itself (Python, Pillow, pdfium, libtesseract: 30.3 MB measured after its
# imports, 2026-11-30), paid with its first engine.
WORKER_BASE_MB = 32.0


class EngineHandle:
    """A Tesseract engine loaded in the OCR worker; closing it unloads it there."""

    def __init__(self, worker: OcrWorker, code: str) -> None:
        self.worker = worker
        self.code = code

    def close(self) -> None:
        """Called by the registry when it unloads the engine."""
        self.worker.unload_engine(self.code)


def engine_item(code: str, settings: OcrSettings) -> Loadable:
    """The Tesseract engine of one traineddata as a registry item."""

    def load() -> EngineHandle:
        worker = get_worker()
        worker.load_engine(code, resolve_tessdata(code, settings))
        return EngineHandle(worker, code)

    def traineddata_mb() -> float:
        try:
            return (resolve_tessdata(code, settings) / f"{code}.traineddata").stat().st_size / MB
        except Exception:  # ModelUnavailable: load() will say what to install
            return 0.0

    def estimate_mb() -> float:
        worker_running = get_worker().pid is not None
        return ENGINE_BASE_MB + traineddata_mb() + (0.0 if worker_running else WORKER_BASE_MB)

    def describe() -> dict[str, Any]:
        return {
            "kind": "ocr",
            "engine": "tesseract",
            "lang": code,
            "tessdata": str(resolve_tessdata(code, settings)),
            "traineddata_mb": round(traineddata_mb(), 1),
            "worker_pid": get_worker().pid,
        }

    return Loadable(key=f"ocr:{code}", load=load, estimate_mb=estimate_mb, describe=describe)


def _read(
    data: bytes, kind: str, options: OcrOptions, lang: str, settings: OcrSettings
) -> tuple[int, list[PageResult]]:
    what = "this image" if kind != "pdf" else "these PDF pages"
    item, registry = engine_item(TESSERACT_LANGS[lang], settings), get_registry()
    with registry.use(item) as engine, registry.reserve(settings.work_mb, f"reading {what}", on=item.key):
        page_count, pages = engine.worker.ocr(data, kind, options.pages, engine.code, settings)
    return page_count, [
        PageResult(
            page=page.page,
            text=page.text,
            confidence=round(page.confidence, 3),
            unreadable=not page.text,
            seconds=round(page.seconds, 3),
        )
        for page in pages
    ]


def _add_sentiment(pages: list[PageResult], lang: str) -> None:
    # Imported here: the sentiment stack loads only for requests that ask for it.
    from service.sentiment.service import analyze

    readable = [page for page in pages if not page.unreadable]
    if not readable:
        return
    predictions = analyze([page.text for page in readable], "sentiment", lang)
    for page, prediction in zip(readable, predictions, strict=True):
        page.sentiment = PageSentiment.model_validate(prediction.model_dump())


def ocr_upload(data: bytes, declared_type: str | None, options: OcrOptions, started: float) -> OcrResponse:
    """OCR an upload's bytes; `started` is when the request began, for the total time."""
    settings = get_ocr_settings()
    lang = options.lang or settings.default_lang
    kind = check_kind(data, declared_type)
    if kind != "pdf" and options.pages is not None and options.pages.strip() != "1":
        raise BadInput("pages selects pages of a PDF; an image has a single page")
    page_count, pages = _read(data, kind, options, lang, settings)
    if options.analyze:
        _add_sentiment(pages, lang)
    return OcrResponse(
        format=kind,
        lang=lang,
        page_count=page_count,
        pages=pages,
        seconds=round(time.perf_counter() - started, 3),
    )
