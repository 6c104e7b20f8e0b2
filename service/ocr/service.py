"""OCR of uploads: check each, then decode and recognise it in the OCR worker, then analyse.

The order matters for the budget: cheap checks first (the kind, from each part's first bytes),
then a place in line for the OCR worker (503 past OCR_QUEUE_MAX waiting), and only when the
request's turn comes does it cost memory: its bytes are read from the parts the form parser spooled,
the engine is loaded through the registry (which may evict idle models to fit it), and exactly
OCR_WORK_MB, the most the worker process may add while it decodes and reads an upload
(`service/ocr/sandbox.py`), plus the worker's copy of the largest file, is reserved. A request that
waits holds no reservation, so it never starves `/analyze` of memory. No untrusted byte is decoded
in the server process itself. The engine is released before sentiment runs, so the registry may
unload it to fit a model.

`lang=auto`: one engine of several languages (OCR_AUTO_LANGS, its own registry item) reads every
page, then the pages' sentiment goes through `/analyze`'s `lang: "auto"` path (`analyze_auto`): each
page's language detected in its text, every model needed held at once or none (`Registry.use_all`),
a page whose language cannot be told its own error.
"""

import time
from contextlib import nullcontext
from dataclasses import replace
from typing import Any

from fastapi import UploadFile

from service.error_handlers import ErrorDetail
from service.exceptions import BadInput, ServiceError, TooLarge
from service.ocr.config import OcrSettings, get_ocr_settings
from service.ocr.jobs import ReadOptions
from service.ocr.sandbox import OcrJob, OcrPage, OcrWorker, get_worker
from service.ocr.schemas import (
    OcrBatchResponse,
    OcrFile,
    OcrFileError,
    OcrOptions,
    OcrResponse,
    PageAutoSentiment,
    PageResult,
    PageSentiment,
    TableCell,
    TableResult,
    WordBox,
)
from service.ocr.tessdata import resolve_tessdata
from service.ocr.uploads import check_kind, read_uploads
from service.registry import Loadable, get_registry
from service.sentiment.schemas import AutoPrediction, TextError

MB = 1024 * 1024
# RSS an engine adds to the worker: the LSTM model and its caches (measured 14 MB for spa's
# 3.4 MB traineddata, +7 MB kept after the first page), plus the file itself.
ENGINE_BASE_MB = 25.0
# What each further language of a several-language engine (lang=auto) adds beside its file: 13.8 MB
# measured for eng's 3.9 MB file, 26.0 MB for ita's and por's 5.3 MB (MEMORY.md, "Issue 27 - OCR").
EXTRA_LANGUAGE_MB = 10.0
# RSS of the worker process itself (Python, Pillow, pdfium, libtesseract: 30.3 MB measured after its
# imports, 2026-11-30), paid with its first engine.
WORKER_BASE_MB = 32.0
# Unreclaimable memory table detection adds to the worker: numpy and service/ocr/tables.py
# imported, measured 6.0 MB anonymous (of 12.3 MB RSS; the rest is numpy's mapped libraries) in a
# fresh process, 1.8 MB in a worker that has read pages (MEMORY.md, "Issue 14 - tables"). Its work
# per page (a few page-sized masks, 4-8 MB) runs inside OCR_WORK_MB.
TABLES_MB = 6.0


class EngineHandle:
    """A Tesseract engine loaded in the OCR worker; closing it unloads it there."""

    def __init__(self, worker: OcrWorker, code: str) -> None:
        self.worker = worker
        self.code = code

    def close(self) -> None:
        """Called by the registry when it unloads the engine."""
        self.worker.unload_engine(self.code)


def engine_item(code: str, settings: OcrSettings) -> Loadable:
    """The Tesseract engine of one traineddata, or of several (`spa+eng+ita+por`, lang=auto), as a
    registry item of its own: each language's model is loaded into it, so it costs their sum."""

    def load() -> EngineHandle:
        worker = get_worker()
        worker.load_engine(code, resolve_tessdata(code, settings))
        return EngineHandle(worker, code)

    def traineddata_mb() -> float:
        try:
            folder = resolve_tessdata(code, settings)
            return sum((folder / f"{part}.traineddata").stat().st_size for part in code.split("+")) / MB
        except Exception:  # ModelUnavailable: load() will say what to install
            return 0.0

    def estimate_mb() -> float:
        worker_running = get_worker().pid is not None
        extra = EXTRA_LANGUAGE_MB * code.count("+")
        return ENGINE_BASE_MB + extra + traineddata_mb() + (0.0 if worker_running else WORKER_BASE_MB)

    def describe() -> dict[str, Any]:
        return {
            "kind": "ocr",
            "engine": "tesseract",
            "lang": code,
            "tessdata": str(resolve_tessdata(code, settings)),
            "traineddata_mb": round(traineddata_mb(), 1),
            "worker_pid": get_worker().pid,
        }

    def check() -> None:
        """Missing language data is said before anything is unloaded to make room for it."""
        resolve_tessdata(code, settings)

    return Loadable(key=f"ocr:{code}", load=load, estimate_mb=estimate_mb, describe=describe, check=check)


class TablesHandle:
    """Table detection imported in the OCR worker; closing it gives that memory back."""

    def __init__(self, worker: OcrWorker) -> None:
        self.worker = worker

    def close(self) -> None:
        self.worker.unload_tables()


def tables_item() -> Loadable:
    """Table detection in the OCR worker as a registry item: loaded with the first table request."""

    def load() -> TablesHandle:
        worker = get_worker()
        worker.load_tables()
        return TablesHandle(worker)

    def describe() -> dict[str, Any]:
        return {"kind": "ocr", "engine": "tables", "worker_pid": get_worker().pid}

    return Loadable(key="ocr:tables", load=load, estimate_mb=lambda: TABLES_MB, describe=describe)


# What the kind is read from: a PDF's header may be anywhere in its first KiB.
HEAD_BYTES = 1024


def _job(part: UploadFile, options: OcrOptions) -> OcrJob:
    """Cheap checks before the request waits or reads anything: the kind, from the magic bytes
    at the start of the spooled part. The job's bytes are filled in when its turn comes."""
    head = part.file.read(HEAD_BYTES)
    part.file.seek(0)
    if not head:
        raise BadInput("the uploaded file is empty")
    kind = check_kind(head, part.content_type)
    read = ReadOptions(
        options.pages,
        force_ocr=options.ocr == "force",
        words=options.words,
        tables=options.tables,
        columns=options.columns,
        table_csv=options.table_csv,
    )
    return OcrJob(b"", kind, read)


def _checked(parts: list[UploadFile], options: OcrOptions) -> list[OcrJob | ServiceError]:
    checked: list[OcrJob | ServiceError] = []
    for part in parts:
        try:
            checked.append(_job(part, options))
        except ServiceError as error:
            checked.append(error)
    return checked


def _read_all(
    parts: list[UploadFile], options: OcrOptions, lang: str, settings: OcrSettings, batch: bool
) -> list[OcrFile | ServiceError]:
    """Each upload read in turn in the OCR worker, or its own error. One turn at the worker, one
    engine use and one reservation serve all of them (one job runs at a time); they share
    OCR_MAX_UPLOAD_MB and OCR_MAX_PAGES: each job may read the pages the files before it left."""
    checked = _checked(parts, options)
    if all(isinstance(job, ServiceError) for job in checked):
        return [job for job in checked if isinstance(job, ServiceError)]  # no turn, no engine, no reservation
    item, registry = engine_item(settings.tesseract_code(lang), settings), get_registry()
    with get_worker().turn(settings):
        # Until now the bytes stayed where the form parser spooled them; only the request whose
        # turn it is holds its files in memory (at most OCR_MAX_UPLOAD_MB, all files together).
        readable = [part for part, job in zip(parts, checked, strict=True) if isinstance(job, OcrJob)]
        data = iter(read_uploads(readable, settings.max_upload_mb))
        jobs = [job if isinstance(job, ServiceError) else replace(job, data=next(data)) for job in checked]
        # The worker receives each file before it caps its work at OCR_WORK_MB: its copy counts too.
        largest_mb = max(len(job.data) for job in jobs if isinstance(job, OcrJob)) / MB
        with (
            registry.use(item) as engine,
            registry.use(tables_item()) if options.tables else nullcontext(),
            registry.reserve(
                settings.work_mb + largest_mb,
                "reading these files" if batch else "reading this upload",
                on=item.key,
            ),
        ):
            return _run_jobs(engine, parts, jobs, settings)


def _run_jobs(
    engine: EngineHandle, parts: list[UploadFile], jobs: list[OcrJob | ServiceError], settings: OcrSettings
) -> list[OcrFile | ServiceError]:
    results: list[OcrFile | ServiceError] = []
    pages_left = settings.max_pages
    for part, job in zip(parts, jobs, strict=True):
        if isinstance(job, ServiceError):
            results.append(job)
            continue
        started = time.perf_counter()
        try:
            if pages_left < 1:
                raise TooLarge(
                    f"the files before this one took all OCR_MAX_PAGES={settings.max_pages} pages "
                    "of this request; send this file in another request",
                    max_pages=settings.max_pages,
                )
            counted = replace(job, options=replace(job.options, pages_left=pages_left))
            page_count, pages = engine.worker.run(counted, engine.code, settings)
        except ServiceError as error:
            results.append(error)
            continue
        pages_left -= len(pages)
        results.append(
            OcrFile(
                filename=part.filename,
                format=job.kind,
                page_count=page_count,
                pages=[_result(page) for page in pages],
                seconds=round(time.perf_counter() - started, 3),
            )
        )
    return results


def _result(page: OcrPage) -> PageResult:
    words = None
    if page.words is not None:
        words = [
            WordBox(text=w.text, box=(w.left, w.top, w.right, w.bottom), confidence=w.confidence)
            for w in page.words
        ]
    return PageResult(
        page=page.page,
        source=page.source,  # type: ignore[arg-type]
        text_layer=page.text_layer,  # type: ignore[arg-type]
        text=page.text,
        confidence=round(page.confidence, 3),
        unreadable=not page.text,
        width=page.width,
        height=page.height,
        seconds=round(page.seconds, 3),
        words=words,
        tables=None if page.tables is None else [_table(table) for table in page.tables],
    )


def _table(table: dict[str, Any]) -> TableResult:
    rows = [[TableCell(text=text, box=tuple(box)) for text, *box in row] for row in table["rows"]]
    return TableResult(box=tuple(table["box"]), ruled=table["ruled"], rows=rows, csv=table["csv"])


def _add_sentiment(pages: list[PageResult], lang: str, fallback: bool) -> None:
    """Each readable page's sentiment, all pages in one call: with `auto`, each page by its own
    language's model (or its own error), every model it needs held at once."""
    # Imported here: the sentiment stack loads only for requests that ask for it.
    from service.sentiment.service import analyze

    readable = [page for page in pages if not page.unreadable]
    if not readable:
        return
    predictions = analyze([page.text for page in readable], "sentiment", lang, fallback=fallback)
    for page, prediction in zip(readable, predictions, strict=True):
        if isinstance(prediction, TextError):
            page.sentiment = prediction
        else:
            shape = PageAutoSentiment if isinstance(prediction, AutoPrediction) else PageSentiment
            page.sentiment = shape.model_validate(prediction.model_dump())


def ocr_upload(part: UploadFile, options: OcrOptions, started: float) -> OcrResponse:
    """OCR an uploaded file; `started` is when the request began, for the total time."""
    settings = get_ocr_settings()
    lang = options.lang or settings.default_lang
    (read,) = _read_all([part], options, lang, settings, batch=False)
    if isinstance(read, ServiceError):
        raise read
    if options.analyze:
        _add_sentiment(read.pages, lang, options.fallback)
    seconds = round(time.perf_counter() - started, 3)
    return OcrResponse(
        format=read.format, lang=lang, page_count=read.page_count, pages=read.pages, seconds=seconds
    )


def ocr_batch(parts: list[UploadFile], options: OcrOptions, started: float) -> OcrBatchResponse:
    """OCR several uploaded files in order; a file that fails is its own error entry, the others go on."""
    settings = get_ocr_settings()
    lang = options.lang or settings.default_lang
    results = _read_all(parts, options, lang, settings, batch=True)
    if options.analyze:
        pages = [page for read in results if isinstance(read, OcrFile) for page in read.pages]
        _add_sentiment(pages, lang, options.fallback)
    files = [
        read if isinstance(read, OcrFile) else _file_error(part.filename, read)
        for part, read in zip(parts, results, strict=True)
    ]
    return OcrBatchResponse(lang=lang, files=files, seconds=round(time.perf_counter() - started, 3))


def _file_error(filename: str | None, error: ServiceError) -> OcrFileError:
    detail = ErrorDetail(status=error.status_code, code=error.code, message=error.message, **error.details)
    return OcrFileError(filename=filename, error=detail)
