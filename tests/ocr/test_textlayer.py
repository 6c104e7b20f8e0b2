"""What counts as a usable text layer, and its words' boxes, on generated PDFs (no OCR here)."""

from collections.abc import Iterator
from contextlib import contextmanager

import pypdfium2 as pdfium
import pytest

from bench.documents import (
    FONT_PT,
    LayeredPage,
    baseline_pt,
    garbage_text_pdf,
    layered_pdf,
    page_lines,
    word_spans,
)
from service.ocr.textlayer import SCAN_MIN_CHARS, TextLayer, pixel_size, read_text_layer
from tests.ocr.samples import blank_pdf, needs_dejavu, pdf_from_objects, pdf_of, text_page

SCALE = 150 / 72
LINES = page_lines(8, seed=3)


@contextmanager
def first_page(data: bytes) -> Iterator[pdfium.PdfPage]:
    document = pdfium.PdfDocument(data)
    try:
        page = document[0]
        yield page
        page.close()
    finally:
        document.close()


def read(data: bytes, words: bool = False) -> TextLayer:
    with first_page(data) as page:
        width, height = page.get_size()
        return read_text_layer(page, pixel_size(width, height, SCALE), words)


@needs_dejavu
def test_a_text_layer_is_read_exactly() -> None:
    lines = ["El señor Muñoz compró tres árboles frutales.", "¿Cuándo llegará el paquete? ¡Mañana!", *LINES]
    layer = read(layered_pdf([LayeredPage(lines)]))
    assert (layer.status, layer.text, layer.words) == ("used", "\n".join(lines), None)


@pytest.mark.parametrize(
    ("page", "status"),
    [
        (LayeredPage(LINES, "scan"), "absent"),  # an image only: a scan
        (LayeredPage(LINES, "hidden"), "hidden"),  # a scan with another tool's invisible OCR layer
        (LayeredPage(LINES, "under"), "hidden"),  # visible text, but painted over by the page's image
        (LayeredPage(LINES, "stamped"), "sparse"),  # a scan whose only text is a stamped page number
        (LayeredPage(LINES, "text"), "used"),
    ],
)
def test_what_a_text_layer_is_judged(page: LayeredPage, status: str) -> None:
    layer = read(layered_pdf([page]))
    assert layer.status == status
    assert bool(layer.text) == (status == "used")


def test_an_empty_page_has_no_text_layer() -> None:
    assert read(blank_pdf(612, 792)).status == "absent"
    assert read(pdf_of([text_page(["scanned words"])])).status == "absent"


def test_a_scan_with_a_long_visible_stamp_is_a_text_page() -> None:
    # Past SCAN_MIN_CHARS visible characters, the text is what the page says, image or not.
    stamp = "x" * SCAN_MIN_CHARS
    assert read(layered_pdf([LayeredPage(LINES, "stamped", stamp=stamp)])).status == "used"


def test_a_short_text_page_without_images_is_used() -> None:
    layer = read(layered_pdf([LayeredPage(["Anexo I"])]))
    assert (layer.status, layer.text) == ("used", "Anexo I")


def test_text_inside_a_form_xobject_is_a_text_layer() -> None:
    """Text drawn by a form XObject (as many generators wrap page content) is mapped to its form."""
    text = b"BT /F1 12 Tf 72 700 Td (Hello from inside a form) Tj ET"
    page_content = b"q /Fm1 Do Q"
    data = pdf_from_objects(
        [
            b"<< /Type /Catalog /Pages 2 0 R >>",
            b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
            b"/Resources << /XObject << /Fm1 5 0 R >> >> >>",
            b"<< /Length %d >>\nstream\n%s\nendstream" % (len(page_content), page_content),
            b"<< /Type /XObject /Subtype /Form /BBox [0 0 612 792] /Resources << /Font << /F1 6 0 R >> >> "
            b"/Length %d >>\nstream\n%s\nendstream" % (len(text), text),
            b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
        ]
    )
    layer = read(data, words=True)
    assert (layer.status, layer.text) == ("used", "Hello from inside a form")
    assert layer.words is not None and [word.text for word in layer.words] == [
        "Hello",
        "from",
        "inside",
        "a",
        "form",
    ]
    # 72 pt from the left edge, baseline 92 pt from the top: at 150 dpi, x from 150 px, above y 192.
    assert 148 <= layer.words[0].left <= 156 and 185 <= layer.words[0].bottom <= 194


def test_private_use_and_control_characters_are_garbage() -> None:
    assert read(garbage_text_pdf()).status == "garbage"


@needs_dejavu
def test_word_boxes_are_where_the_words_were_written() -> None:
    lines = LINES[:4]
    layer = read(layered_pdf([LayeredPage(lines)]), words=True)
    assert layer.words is not None
    expected = [
        (word, index, left, right)
        for index, line in enumerate(lines)
        for word, left, right in word_spans(line)
    ]
    assert [word.text for word in layer.words] == [word for word, *_ in expected]
    for word, (_, line, left, right) in zip(layer.words, expected, strict=True):
        # Glyph ink lies within the advance widths, a side bearing (< 1.5 pt) in from each end.
        assert left * SCALE - 1 <= word.left <= (left + 1.5) * SCALE, word
        assert (right - 1.5) * SCALE <= word.right <= right * SCALE + 1, word
        baseline = baseline_pt(line) * SCALE
        assert baseline - FONT_PT * SCALE <= word.top < word.bottom <= baseline + 0.3 * FONT_PT * SCALE, word
        assert word.confidence == 1.0


def test_word_boxes_follow_a_rotated_page() -> None:
    """A /Rotate 90 page renders landscape: its boxes are in the rendering's pixels."""
    data = layered_pdf([LayeredPage(["rotated words"])])
    document = pdfium.PdfDocument(data)
    try:
        page = document[0]
        page.set_rotation(90)
        width, height = page.get_size()  # pdfium reports the displayed (rotated) size
        assert width > height
        layer = read_text_layer(page, pixel_size(width, height, SCALE), True)
        page.close()
    finally:
        document.close()
    assert layer.words is not None and [word.text for word in layer.words] == ["rotated", "words"]
    first, second = layer.words
    # Rotated clockwise: the line runs down the right-hand side, top to bottom.
    assert first.bottom <= second.top and first.left > width * SCALE / 2
