"""A PDF page's embedded text, judged before anything renders: used as it is when it covers the
page, so that the page is never rasterised nor recognised.

Runs in the OCR worker, in the PDF producer thread (pdfium is not thread-safe). A text layer is
used only when it is what a reader sees; otherwise the page is OCRed and the reason is reported:
- `absent`: no character at all (an image-only page, a scan).
- `garbage`: over GARBAGE_SHARE of its characters are control characters, private-use glyphs,
  replacement characters, or glyphs pdfium cannot map to Unicode (fonts without a ToUnicode map).
- `hidden`: over HIDDEN_SHARE of its characters are invisible (render mode 3 or 7) or lie under an
  image drawn after them. That is how other tools store their own OCR of a scan. It is not
  trusted: it is another engine's guess of unknown quality, where a text layer promises the
  document's own text; the pixels are what the reader sees, so this service reads those.
- `sparse`: a scan with a few stray characters: images cover SCAN_IMAGE_SHARE of the page or more
  and fewer than SCAN_MIN_CHARS characters are visible (a stamped page number, a Bates label).
  A page without images is used whatever its length: there is nothing else on it to read.
"""

import contextlib
import math
import unicodedata
from collections.abc import Iterator
from ctypes import c_int, c_void_p, cast
from dataclasses import dataclass
from typing import Literal

import pypdfium2 as pdfium
import pypdfium2.raw as pdfium_c

from service.ocr.words import Word

Status = Literal["used", "absent", "garbage", "hidden", "sparse"]

GARBAGE_SHARE = 0.1
HIDDEN_SHARE = 0.5
SCAN_IMAGE_SHARE = 0.25
SCAN_MIN_CHARS = 100
# Within a word, consecutive glyph boxes are at most this many glyph heights apart.
WORD_GAP = 0.6
_INVISIBLE_MODES = {pdfium_c.FPDF_TEXTRENDERMODE_INVISIBLE, pdfium_c.FPDF_TEXTRENDERMODE_CLIP}
_BAD_CATEGORIES = {"Cc", "Co", "Cs", "Cn"}
_NONCHARACTERS = {0xFFFD, 0xFFFE, 0xFFFF}
_NO_BOX = (0.0, 0.0, 0.0, 0.0)


@dataclass(frozen=True)
class TextLayer:
    status: Status
    text: str  # the page's text when used, else ""
    words: list[Word] | None  # with their pixel boxes, when used and asked for


@dataclass(frozen=True)
class _Char:
    char: str
    box: tuple[float, float, float, float]  # left, bottom, right, top in PDF points
    bad: bool
    hidden: bool


@dataclass(frozen=True)
class _Painted:
    """A top-level page object that paints an image (an image, or a form holding one)."""

    order: int
    bounds: tuple[float, float, float, float]


def read_text_layer(page: pdfium.PdfPage, size: tuple[int, int], words: bool) -> TextLayer:
    """The page's text layer, judged; `size` is the page's pixel size at its OCR scale."""
    textpage = page.get_textpage()
    try:
        painted, order_of = _painted_objects(page)
        chars = list(_chars(textpage, painted, order_of, boxes=words or bool(painted)))
        status = _judge(chars, page, painted)
        if status != "used":
            return TextLayer(status, "", None)
        text = "\n".join(line.rstrip() for line in textpage.get_text_range().splitlines()).strip()
        return TextLayer("used", text, _words(page, chars, size) if words else None)
    finally:
        textpage.close()


def _address(pointer: object) -> int:
    return cast(pointer, c_void_p).value or 0


def _painted_objects(page: pdfium.PdfPage) -> tuple[list[_Painted], dict[int, int]]:
    """Top-level images (and forms holding images) in drawing order, and each object's top-level
    position by address (a form's children take their form's)."""
    painted: list[_Painted] = []
    order_of: dict[int, int] = {}
    for order in range(pdfium_c.FPDFPage_CountObjects(page)):
        raw = pdfium_c.FPDFPage_GetObject(page, order)
        if _paints_image(raw, order_of, order):
            painted.append(_Painted(order, _bounds(raw)))
    return painted, order_of


def _paints_image(raw: object, order_of: dict[int, int], order: int) -> bool:
    order_of[_address(raw)] = order
    kind = pdfium_c.FPDFPageObj_GetType(raw)
    if kind == pdfium_c.FPDF_PAGEOBJ_IMAGE:
        return True
    if kind != pdfium_c.FPDF_PAGEOBJ_FORM:
        return False
    children = [pdfium_c.FPDFFormObj_GetObject(raw, i) for i in range(pdfium_c.FPDFFormObj_CountObjects(raw))]
    return any([_paints_image(child, order_of, order) for child in children])  # every child mapped


def _bounds(raw: object) -> tuple[float, float, float, float]:
    left, bottom, right, top = (
        pdfium_c.FS_FLOAT(),
        pdfium_c.FS_FLOAT(),
        pdfium_c.FS_FLOAT(),
        pdfium_c.FS_FLOAT(),
    )
    if not pdfium_c.FPDFPageObj_GetBounds(raw, left, bottom, right, top):
        return (0.0, 0.0, 0.0, 0.0)
    return (left.value, bottom.value, right.value, top.value)


def _chars(
    textpage: pdfium.PdfTextPage, painted: list[_Painted], order_of: dict[int, int], boxes: bool
) -> Iterator[_Char]:
    """The page's own characters (not pdfium's generated spaces and line breaks); their boxes
    only when `boxes` (words are asked for, or images may cover them): one call fewer per character."""
    modes: dict[int, int] = {}
    for index in range(textpage.count_chars()):
        if pdfium_c.FPDFText_IsGenerated(textpage, index) == 1:
            continue
        code = pdfium_c.FPDFText_GetUnicode(textpage, index)
        char = chr(code) if code < 0x110000 else "\ufffd"
        bad = pdfium_c.FPDFText_HasUnicodeMapError(textpage, index) == 1 or _is_bad(char)
        box = _NO_BOX
        if boxes:
            with contextlib.suppress(pdfium.PdfiumError):
                box = textpage.get_charbox(index)
        raw = pdfium_c.FPDFText_GetTextObject(textpage, index)
        address = _address(raw)
        if address and address not in modes:
            modes[address] = pdfium_c.FPDFTextObj_GetTextRenderMode(raw)
        order = order_of.get(address)  # None: an object pdfium did not list (never judged covered)
        hidden = modes.get(address) in _INVISIBLE_MODES or (
            order is not None and _covered(box, order, painted)
        )
        yield _Char(char, box, bad, hidden)


def _is_bad(char: str) -> bool:
    if char in "\t\n\r":
        return False
    return ord(char) in _NONCHARACTERS or unicodedata.category(char) in _BAD_CATEGORIES


def _covered(box: tuple[float, float, float, float], order: int, painted: list[_Painted]) -> bool:
    """Whether an image drawn after the character's object paints over its centre."""
    x, y = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    return any(
        image.order > order
        and image.bounds[0] <= x <= image.bounds[2]
        and image.bounds[1] <= y <= image.bounds[3]
        for image in painted
    )


def _judge(chars: list[_Char], page: pdfium.PdfPage, painted: list[_Painted]) -> Status:
    inked = [char for char in chars if not char.char.isspace()]
    if not inked:
        return "absent"
    if sum(char.bad for char in inked) > GARBAGE_SHARE * len(inked):
        return "garbage"
    visible = sum(not char.hidden for char in inked)
    if len(inked) - visible > HIDDEN_SHARE * len(inked):
        return "hidden"
    if visible < SCAN_MIN_CHARS and _image_share(page, painted) >= SCAN_IMAGE_SHARE:
        return "sparse"
    return "used"


def _image_share(page: pdfium.PdfPage, painted: list[_Painted]) -> float:
    """The share of the page's area that images paint (overlaps counted once per image, capped at 1)."""
    left, bottom, right, top = page.get_bbox()
    area = max((right - left) * (top - bottom), 1.0)
    covered = 0.0
    for image in painted:
        width = min(image.bounds[2], right) - max(image.bounds[0], left)
        height = min(image.bounds[3], top) - max(image.bounds[1], bottom)
        covered += max(width, 0.0) * max(height, 0.0)
    return min(covered / area, 1.0)


def _words(page: pdfium.PdfPage, chars: list[_Char], size: tuple[int, int]) -> list[Word]:
    """Characters grouped into words at spaces, line breaks and wide gaps, boxed in page pixels."""
    words: list[Word] = []
    current: list[_Char] = []
    for char in chars:
        if char.char.isspace() or char.bad:
            words += _word(page, current, size)
            current = []
            continue
        if current and _gap(current[-1].box, char.box) > WORD_GAP * _glyph_size(char.box, current[-1].box):
            words += _word(page, current, size)
            current = []
        current.append(char)
    return words + _word(page, current, size)


def _gap(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    return max(b[0] - a[2], a[0] - b[2], b[1] - a[3], a[1] - b[3], 0.0)


def _glyph_size(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    return max(a[2] - a[0], a[3] - a[1], b[2] - b[0], b[3] - b[1], 1.0)


def _word(page: pdfium.PdfPage, chars: list[_Char], size: tuple[int, int]) -> list[Word]:
    if not chars:
        return []
    left = min(char.box[0] for char in chars)
    bottom = min(char.box[1] for char in chars)
    right = max(char.box[2] for char in chars)
    top = max(char.box[3] for char in chars)
    (x0, y0), (x1, y1) = _to_pixels(page, left, top, size), _to_pixels(page, right, bottom, size)
    text = "".join(char.char for char in chars)
    return [Word(text, min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1), 1.0)]


def _to_pixels(page: pdfium.PdfPage, x: float, y: float, size: tuple[int, int]) -> tuple[int, int]:
    """A point of the page in the pixels of its rendering at `size` (rotation and crop box included)."""
    device_x, device_y = c_int(), c_int()
    pdfium_c.FPDF_PageToDevice(page, 0, 0, size[0], size[1], 0, x, y, device_x, device_y)
    return device_x.value, device_y.value


def pixel_size(width_pt: float, height_pt: float, scale: float) -> tuple[int, int]:
    """The page's size in pixels at `scale`, as pdfium renders it."""
    return math.ceil(width_pt * scale), math.ceil(height_pt * scale)
