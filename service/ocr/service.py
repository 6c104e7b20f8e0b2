"""OCR of one upload: check it, reserve its memory, recognise page by page, then analyse.

The order matters for the budget: cheap checks first (kind, header, page selection), then the
engine through the registry (which may evict idle models to fit it), then a reservation of
the request's working memory against what is left, and only then decoding and recognition.
The engine is released before sentiment runs, so the registry may unload it to fit a model.
"""

import time
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

from PIL import Image

from service import runtime
from service.exceptions import BadInput, ModelUnavailable
from service.ocr.config import TESSERACT_LANGS, OcrSettings, get_ocr_settings
from service.ocr.images import decoded_bytes, fit_within, open_image, prepare_image
from service.ocr.pdf import PdfPages
from service.ocr.schemas import OcrOptions, OcrResponse, PageResult, PageSentiment
from service.ocr.tessdata import resolve_tessdata
from service.ocr.uploads import Kind, check_kind
from service.registry import Loadable, get_registry

if TYPE_CHECKING:
    from service.ocr.engine import TesseractEngine

MB = 1024 * 1024
# RSS an engine adds: libtesseract's import (~7 MB), the LSTM model and its caches (measured
# 14 MB for spa's 3.4 MB traineddata, +7 MB kept after the first page), plus the file itself.
ENGINE_BASE_MB = 25.0
# Peak RSS of recognising an 8-bit page, per pixel (measured 11-12.5 B on 2-5 MP pages).
WORK_BYTES_PER_PIXEL = 14
# pdfium decodes a page's embedded images at full size, in 32-bit pixels, to draw it.
PDF_IMAGE_BYTES_PER_PIXEL = 4


def image_work_mb(image: Image.Image, settings: OcrSettings) -> float:
    """The decoded image, its grayscale copy, and recognition of the downscaled copy."""
    width, height = image.size
    out_width, out_height = fit_within(image.size, settings.max_side)
    return (decoded_bytes(image) + width * height + out_width * out_height * WORK_BYTES_PER_PIXEL) / MB


def pdf_work_mb(largest_image_pixels: int, settings: OcrSettings) -> float:
    """Pages in flight (rendering, queued, being read, plus a copy), recognition of one,
    and the largest set of embedded images pdfium decodes for one page."""
    pages_in_flight = settings.render_queue + 3
    page_bytes = settings.page_pixels * (pages_in_flight + WORK_BYTES_PER_PIXEL)
    return (page_bytes + largest_image_pixels * PDF_IMAGE_BYTES_PER_PIXEL) / MB


def engine_item(code: str, settings: OcrSettings) -> Loadable:
    """The Tesseract engine of one traineddata as a registry item."""

    def load() -> "TesseractEngine":
        # Imported here: libtesseract's RSS is paid on first use, and measured by the registry.
        from service.ocr.engine import TesseractEngine

        tessdata = resolve_tessdata(code, settings)
        try:
            return TesseractEngine(tessdata, code)
        except RuntimeError as error:  # tesserocr's "Failed to init API"
            raise ModelUnavailable(f"Tesseract could not load {code} from {tessdata}: {error}") from error

    def traineddata_mb() -> float:
        try:
            return (resolve_tessdata(code, settings) / f"{code}.traineddata").stat().st_size / MB
        except ModelUnavailable:
            return 0.0  # load() will say what to install

    def describe() -> dict[str, Any]:
        return {
            "kind": "ocr",
            "engine": "tesseract",
            "lang": code,
            "tessdata": str(resolve_tessdata(code, settings)),
            "traineddata_mb": round(traineddata_mb(), 1),
        }

    return Loadable(
        key=f"ocr:{code}", load=load, estimate_mb=lambda: ENGINE_BASE_MB + traineddata_mb(), describe=describe
    )


def _engine(lang: str, settings: OcrSettings) -> AbstractContextManager["TesseractEngine"]:
    return get_registry().use(engine_item(TESSERACT_LANGS[lang], settings))


def _recognize(engine: "TesseractEngine", number: int, image: Image.Image) -> PageResult:
    started = time.perf_counter()
    result = engine.recognize(image)
    return PageResult(
        page=number,
        text=result.text,
        confidence=round(result.confidence, 3),
        unreadable=not result.text,
        seconds=round(time.perf_counter() - started, 3),
    )


def _ocr_image(data: bytes, kind: Kind, options: OcrOptions, lang: str, settings: OcrSettings) -> PageResult:
    if options.pages is not None and options.pages.strip() != "1":
        raise BadInput("pages selects pages of a PDF; an image has a single page")
    image = open_image(data, kind, settings)
    need_mb = image_work_mb(image, settings)
    with _engine(lang, settings) as engine, get_registry().reserve(need_mb, "this image"):
        prepared = prepare_image(image, settings)
        if prepared is not image:
            image.close()  # free the full-size decode before recognition
        return _recognize(engine, 1, prepared)


def _ocr_pdf(
    data: bytes, options: OcrOptions, lang: str, settings: OcrSettings
) -> tuple[int, list[PageResult]]:
    with PdfPages(data, options.pages, settings) as document:
        need_mb = pdf_work_mb(document.largest_image_pixels, settings)
        what = f"{len(document.numbers)} PDF page(s)"
        with _engine(lang, settings) as engine, get_registry().reserve(need_mb, what):
            return document.page_count, [_recognize(engine, page.number, page.image) for page in document]


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
    try:
        if kind == "pdf":
            page_count, pages = _ocr_pdf(data, options, lang, settings)
        else:
            page_count, pages = 1, [_ocr_image(data, kind, options, lang, settings)]
    finally:
        runtime.trim_heap()  # give decoded pages and Tesseract's scratch memory back now
    if options.analyze:
        _add_sentiment(pages, lang)
    return OcrResponse(
        format=kind,
        lang=lang,
        page_count=page_count,
        pages=pages,
        seconds=round(time.perf_counter() - started, 3),
    )
