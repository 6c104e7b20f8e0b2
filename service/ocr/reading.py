"""One upload's pages as the OCR worker reads them: each page's text, words, size and source, in
one shape whatever the page came from (an image, a PDF page's text layer, a rendered PDF page).

Runs in the worker process, under its memory cap. `read_pages` is the one place that walks a
document: anything else computed per page (word boxes for callers, tables) reads a `PageRead`
there, including the gray image that was recognised, which stays open only until the next page
is asked for.
"""

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from PIL import Image

from service.ocr.engine import TesseractEngine
from service.ocr.images import check_work, frame_count, open_image, prepare_image, seek_frame
from service.ocr.jobs import KIND_NAMES, JobLimits, Kind, ReadOptions
from service.ocr.pdf import LoadedPage, PdfPages, parse_pages
from service.ocr.words import Word

if TYPE_CHECKING:  # imported when tables are asked for: numpy stays out of a worker that never is
    from service.ocr.tables import Table

Source = Literal["text_layer", "ocr"]
# What became of a PDF page's text layer: `used`, or why it was not (textlayer.py), or `skipped`
# when OCR was forced; None for an image.
TextLayerStatus = Literal["used", "absent", "garbage", "hidden", "sparse", "skipped"]


@dataclass
class PageRead:
    number: int  # 1-based
    source: Source
    text_layer: TextLayerStatus | None
    text: str
    confidence: float  # 0-1; 1.0 for a text layer
    width: int  # page pixels: the recognised image's, or the rendering's at the OCR scale
    height: int
    words: list[Word] | None  # when asked for
    image: Image.Image | None  # the gray image recognised; None for a text-layer page
    tables: "list[Table] | None" = None  # when asked for


def read_pages(
    engine: TesseractEngine,
    data: bytes,
    kind: Kind,
    options: ReadOptions,
    limits: JobLimits,
    on_outline: Callable[[int], None],
    on_page_started: Callable[[int], None],
) -> Iterator[PageRead]:
    """Each selected page, read; `on_outline` gets the page count before the first page, and
    `on_page_started` each page's number before its work starts. The image of a page is closed
    when the next one is asked for (or the iteration ends)."""
    if kind == "pdf":
        yield from _pdf_pages(engine, data, options, limits, on_outline, on_page_started)
        return
    image = open_image(data, kind, limits)
    try:
        count = frame_count(data, image)
        what = KIND_NAMES[kind]
        numbers = parse_pages(options.pages, count, limits.max_pages, options.pages_left, what=what)
        on_outline(count)
        for number in numbers:
            on_page_started(number)
            seek_frame(image, number, kind, limits)
            check_work(image, limits)
            prepared = prepare_image(image, limits)
            if number == numbers[-1] and prepared is not image:
                image.close()  # free the full-size decode before the last page's recognition
            elif number != numbers[-1] and prepared is image:
                prepared = image.copy()  # recognition closes its image; the next page needs this one
            yield from _recognized(engine, number, None, prepared, options)
    finally:
        image.close()


def _pdf_pages(
    engine: TesseractEngine,
    data: bytes,
    options: ReadOptions,
    limits: JobLimits,
    on_outline: Callable[[int], None],
    on_page_started: Callable[[int], None],
) -> Iterator[PageRead]:
    pdf = PdfPages(
        data,
        options.pages,
        limits,
        pages_left=options.pages_left,
        force_ocr=options.force_ocr,
        words=options.words or options.tables,
        render_all=options.tables,
    )
    with pdf as document:
        on_outline(document.page_count)
        for page in document:
            on_page_started(page.number)
            if page.layer_used:
                yield _from_text_layer(page, options)
            else:
                assert page.image is not None
                status = page.text_layer.status if page.text_layer is not None else "skipped"
                yield from _recognized(engine, page.number, status, page.image, options)


def _from_text_layer(page: LoadedPage, options: ReadOptions) -> PageRead:
    """A page read from its text layer; with tables, from the layer's words and the ruling lines
    of its rendering (closed here)."""
    assert page.text_layer is not None
    layer = page.text_layer
    tables = None
    if options.tables:
        from service.ocr.tables import detect_tables, ruling_lines

        assert page.image is not None and layer.words is not None
        try:
            rules = ruling_lines(page.image)
        finally:
            page.image.close()
        tables = detect_tables(layer.words, rules, options.columns)
    words = layer.words if options.words else None
    return PageRead(page.number, "text_layer", "used", layer.text, 1.0, *page.size, words, None, tables)


def _recognized(
    engine: TesseractEngine,
    number: int,
    status: TextLayerStatus | None,
    image: Image.Image,
    options: ReadOptions,
) -> Iterator[PageRead]:
    """A page recognised; with tables, its ruling lines are found and erased first (Tesseract
    reads a line beside a word as part of it), and its tables built from the words."""
    try:
        tables = None
        if options.tables:
            from service.ocr.tables import detect_tables, erase_rules, ruling_lines

            rules = ruling_lines(image)
            erase_rules(image, rules)
            result = engine.recognize(image, words=True, sparse=True)
            tables = detect_tables(result.words or [], rules, options.columns)
        else:
            result = engine.recognize(image, options.words)
        words = result.words if options.words else None
        yield PageRead(
            number, "ocr", status, result.text, result.confidence, *image.size, words, image, tables
        )
    finally:
        image.close()
