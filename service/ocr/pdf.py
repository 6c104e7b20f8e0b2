"""Reading PDF pages one at a time, so memory stays flat whatever the page count.

A producer thread opens the document, checks the page selection, then loads the selected pages
into a bounded queue while the caller recognises the previous one: a page whose text layer covers
it (`service/ocr/textlayer.py`) is read from that layer and never rendered; any other page, or
every page when OCR is forced, is rendered for recognition. pdfium is not
thread-safe: every pdfium call happens in that thread, under a process-wide lock so that two
requests' producers never call it at once, and every pdfium object is closed there too.
Each page is rendered at OCR_DPI, lowered so that the bitmap stays within OCR_PAGE_PIXELS
whatever the page's size, in 8-bit grayscale. A page so large that this would take it below
OCR_MIN_DPI, where text is no longer legible, is refused before anything renders.
"""

import contextlib
import math
import queue
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from types import TracebackType

import pypdfium2 as pdfium
import pypdfium2.raw as pdfium_c
from PIL import Image

from service.exceptions import BadInput, TooLarge
from service.ocr.errors import EncryptedPdf, Undecodable
from service.ocr.jobs import PAGES_PATTERN, JobLimits
from service.ocr.textlayer import TextLayer, pixel_size, read_text_layer

_PDFIUM_LOCK = threading.Lock()
_POLL_S = 0.05


@dataclass(frozen=True)
class LoadedPage:
    """A page as the producer hands it over: its text layer, used or not, and its rendering
    unless that layer is used (and `render_all` is off). `size` is its pixel size at its OCR
    scale, rendered or not."""

    number: int  # 1-based
    size: tuple[int, int]
    text_layer: TextLayer | None  # None when OCR is forced: the layer is not even read
    image: Image.Image | None

    @property
    def layer_used(self) -> bool:
        return self.text_layer is not None and self.text_layer.status == "used"


@dataclass(frozen=True)
class _Outline:
    page_count: int
    numbers: list[int]


class _Done:
    pass


def parse_pages(
    spec: str | None, page_count: int, max_pages: int, pages_left: int | None = None, what: str = "PDF"
) -> list[int]:
    """The sorted page numbers that `spec` ("1-3,5") selects; all pages when it is None.

    `pages_left` is what the request may still read when earlier files took some of OCR_MAX_PAGES;
    `what` names the document in errors (a PDF, or an image whose frames are its pages)."""
    left = max_pages if pages_left is None else pages_left
    limit = f"OCR_MAX_PAGES={max_pages} per request" + (
        "" if left == max_pages else f", all files together; {left} left for this one"
    )
    if page_count == 0:
        raise Undecodable(f"the {what} has no pages")
    if spec is None:
        if page_count > left:
            raise TooLarge(
                f"the {what} has {page_count} pages; at most {limit}: "
                f"select some with `pages`, e.g. pages=1-{max(left, 1)}",
                page_count=page_count,
                max_pages=max_pages,
            )
        return list(range(1, page_count + 1))
    if not re.fullmatch(PAGES_PATTERN, spec):
        raise BadInput(f"pages: {spec!r} is not a list of pages and ranges like 1-3,5")
    selected: set[int] = set()
    for part in spec.split(","):
        first, _, last = part.partition("-")
        start, end = int(first), int(last or first)
        if not 1 <= start <= end:
            raise BadInput(f"pages: {part.strip()} is not a page or a rising range of pages counted from 1")
        if end > page_count:
            raise BadInput(
                f"pages: {part.strip()} goes past the last page; the {what} has {page_count}",
                page_count=page_count,
            )
        if end - start + 1 > left or len(selected | set(range(start, end + 1))) > left:
            raise TooLarge(f"pages: {spec} selects more than {limit}", max_pages=max_pages)
        selected.update(range(start, end + 1))
    return sorted(selected)


def render_scale(width_pt: float, height_pt: float, dpi: int, page_pixels: int) -> float:
    """Points-to-pixels scale for `dpi`, lowered so that the page fits in `page_pixels`."""
    scale = dpi / 72
    area = max(width_pt, 1.0) * max(height_pt, 1.0) * scale * scale
    return scale * min(1.0, math.sqrt(page_pixels / area))


def _open_error(error: pdfium.PdfiumError) -> Exception:
    if error.err_code in (pdfium_c.FPDF_ERR_PASSWORD, pdfium_c.FPDF_ERR_SECURITY):
        return EncryptedPdf("the PDF is encrypted with a password; send a decrypted copy")
    return Undecodable(f"the PDF cannot be read: {error}")


def _embedded_image_pixels(page: pdfium.PdfPage) -> int:
    """Pixels of the images pdfium will decode, at full size, to draw this page."""
    images = page.get_objects(filter=[pdfium_c.FPDF_PAGEOBJ_IMAGE])
    return sum(width * height for width, height in (image.get_px_size() for image in images))


class PdfPages:
    """`with PdfPages(data, pages, limits) as pdf:` checks the document and the selection;
    iterating then loads the pages. Leaving the block stops and joins the producer.

    `pages_left` bounds the selection when earlier files of the request took some of OCR_MAX_PAGES;
    `force_ocr` renders every page whatever its text layer; `words` boxes a used layer's words;
    `render_all` renders a page read from its text layer too (its ruling lines for tables)."""

    def __init__(
        self,
        data: bytes,
        pages: str | None,
        limits: JobLimits,
        *,
        pages_left: int | None = None,
        force_ocr: bool = False,
        words: bool = False,
        render_all: bool = False,
    ) -> None:
        self._data = data
        self._spec = pages
        self._limits = limits
        self._pages_left = pages_left
        self._force_ocr = force_ocr
        self._words = words
        self._render_all = render_all
        self._queue: queue.Queue[object] = queue.Queue(maxsize=limits.render_queue)
        self._go = threading.Event()  # set by iteration: nothing is rendered before the caller asks
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._produce, name="ocr-pdf-render", daemon=True)
        self.page_count = 0
        self.numbers: list[int] = []

    def __enter__(self) -> "PdfPages":
        self._thread.start()
        try:
            outline = self._next()
        except BaseException:
            self.close()
            raise
        assert isinstance(outline, _Outline)
        self.page_count, self.numbers = outline.page_count, outline.numbers
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __iter__(self) -> Iterator[LoadedPage]:
        self._go.set()
        while not isinstance(item := self._next(), _Done):
            assert isinstance(item, LoadedPage)
            yield item

    def close(self) -> None:
        """Stop the producer, unblocking it if it waits on a full queue, and join it."""
        self._stop.set()
        self._go.set()
        while self._thread.is_alive():
            with contextlib.suppress(queue.Empty):
                self._queue.get_nowait()
            self._thread.join(_POLL_S)

    def _next(self) -> object:
        while True:
            try:
                item = self._queue.get(timeout=_POLL_S)
            except queue.Empty:
                if not self._thread.is_alive() and self._queue.empty():
                    raise RuntimeError("the PDF renderer stopped without a result") from None
                continue
            if isinstance(item, BaseException):
                raise item
            return item

    def _put(self, item: object) -> bool:
        """Queue `item`, waiting for room; False once the consumer has gone."""
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def _produce(self) -> None:
        try:
            with _PDFIUM_LOCK:
                document = pdfium.PdfDocument(self._data)
        except pdfium.PdfiumError as error:
            self._put(_open_error(error))
            return
        try:
            with _PDFIUM_LOCK:
                outline = self._outline(document)
            if not self._put(outline):
                return
            self._go.wait()
            for number in outline.numbers:
                if self._stop.is_set():
                    return
                with _PDFIUM_LOCK:
                    page = self._load(document, number)
                if not self._put(page):
                    return
            self._put(_Done())
        except pdfium.PdfiumError as error:  # a broken structure: a page tree that loops, a missing page
            self._put(Undecodable(f"the PDF cannot be read: {error}"))
        except Exception as error:  # handed to the consumer, which raises it
            self._put(error)
        finally:
            with _PDFIUM_LOCK:
                document.close()

    def _outline(self, document: pdfium.PdfDocument) -> _Outline:
        numbers = parse_pages(self._spec, len(document), self._limits.max_pages, self._pages_left)
        for number in numbers:
            page = document[number - 1]
            try:
                pixels = _embedded_image_pixels(page)
                width, height = page.get_size()
            finally:
                page.close()
            self._check_legible(number, width, height)
            if pixels > self._limits.max_pixels:
                raise TooLarge(
                    f"page {number} embeds images of {pixels:,} pixels; at most OCR_MAX_PIXELS="
                    f"{self._limits.max_pixels:,} per page",
                    page=number,
                    limit_pixels=self._limits.max_pixels,
                )
        return _Outline(len(document), numbers)

    def _check_legible(self, number: int, width_pt: float, height_pt: float) -> None:
        limits = self._limits
        dpi = render_scale(width_pt, height_pt, limits.dpi, limits.page_pixels) * 72
        if dpi < limits.min_dpi:
            raise TooLarge(
                f"page {number} is {width_pt / 72:.0f} x {height_pt / 72:.0f} inches: within "
                f"OCR_PAGE_PIXELS={limits.page_pixels:,} it would render at {dpi:.0f} dpi, below "
                f"the {limits.min_dpi} dpi that text needs to be read; send smaller pages",
                page=number,
                dpi=round(dpi, 1),
                min_dpi=limits.min_dpi,
            )

    def _load(self, document: pdfium.PdfDocument, number: int) -> LoadedPage:
        page = document[number - 1]
        try:
            width, height = page.get_size()
            scale = render_scale(width, height, self._limits.dpi, self._limits.page_pixels)
            size = pixel_size(width, height, scale)
            layer = None if self._force_ocr else read_text_layer(page, size, self._words)
            if layer is not None and layer.status == "used" and not self._render_all:
                return LoadedPage(number, size, layer, None)
            bitmap = page.render(scale=scale, grayscale=True)
            try:
                # A copy PIL owns: the bitmap's buffer is freed by pdfium, in this thread.
                image = bitmap.to_pil().copy()
            finally:
                bitmap.close()
        except pdfium.PdfiumError as error:
            raise Undecodable(f"page {number} of the PDF cannot be read: {error}") from error
        finally:
            page.close()
        return LoadedPage(number, image.size, layer, image)
