"""Small uploads that are expensive to decode: what an attacker sends to an OCR service.

Each is a few KB to a few hundred KB on the wire and hundreds of MB to decode naively: images just
under OCR_MAX_PIXELS in modes that conversions multiply, progressive JPEGs whose coefficient
buffers are kept whole, PDFs whose streams inflate 1000x or whose images hide inside forms, and
PDFs whose structure loops.
"""

import io
import zlib

from PIL import Image

# Just under the default OCR_MAX_PIXELS (40 M): 6324 x 6324 = 39.99 M.
SIDE = 6324


def palette_png(side: int = SIDE) -> bytes:
    """A 1-bit palette PNG (~5 KB): 40 MB as P, 160 MB as the RGBA a naive conversion makes."""
    image = Image.new("P", (side, side), 0)
    image.putpalette([255, 255, 255, 0, 0, 0])
    buffer = io.BytesIO()
    image.save(buffer, "PNG", bits=1, optimize=True)
    return buffer.getvalue()


def transparent_png(side: int = SIDE) -> bytes:
    """A fully transparent RGBA PNG (~155 KB): 160 MB decoded, before any conversion."""
    buffer = io.BytesIO()
    Image.new("RGBA", (side, side), (0, 0, 0, 0)).save(buffer, "PNG")
    return buffer.getvalue()


def sixteen_bit_png(side: int = SIDE) -> bytes:
    """A 16-bit grayscale PNG: 80 MB decoded, 160 MB as the 32-bit image a point() makes."""
    buffer = io.BytesIO()
    Image.new("I;16", (side, side), 1000).save(buffer, "PNG")
    return buffer.getvalue()


def progressive_jpeg(side: int = SIDE) -> bytes:
    """A progressive 4:4:4 JPEG: libjpeg keeps every coefficient (6 bytes a pixel, ~240 MB) even
    when asked to decode at 1/8 scale."""
    buffer = io.BytesIO()
    Image.new("RGB", (side, side), (200, 30, 90)).save(
        buffer, "JPEG", progressive=True, subsampling=0, quality=95
    )
    return buffer.getvalue()


def lzw_tiff(side: int = SIDE) -> bytes:
    """An RGBA TIFF compressed with LZW (~1 MB): 160 MB decoded."""
    buffer = io.BytesIO()
    Image.new("RGBA", (side, side), (255, 255, 255, 0)).save(buffer, "TIFF", compression="tiff_lzw")
    return buffer.getvalue()


def pdf_from_objects(objects: list[bytes]) -> bytes:
    """A PDF of numbered objects (1 is the catalog) with a correct cross-reference table."""
    out = io.BytesIO()
    out.write(b"%PDF-1.7\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(out.tell())
        out.write(b"%d 0 obj\n" % number + body + b"\nendobj\n")
    xref = out.tell()
    out.write(b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1))
    for offset in offsets:
        out.write(b"%010d 00000 n \n" % offset)
    out.write(b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref))
    return out.getvalue()


def _stream(dictionary: bytes, data: bytes) -> bytes:
    return b"<< %s /Length %d >>\nstream\n" % (dictionary, len(data)) + data + b"\nendstream"


def _deflated(total: int, unit: bytes) -> bytes:
    """`unit` repeated to `total` bytes, deflated in pieces (never all of it in memory at once)."""
    compressor = zlib.compressobj(9)
    piece = unit * (4 * 1024 * 1024 // len(unit))
    parts, left = [], total
    while left > 0:
        parts.append(compressor.compress(piece[: min(left, len(piece))]))
        left -= len(piece)
    return b"".join(parts) + compressor.flush()


def inflating_pdf(inflated_mb: int = 300) -> bytes:
    """One page whose content stream (~300 KB) inflates to `inflated_mb` MB of drawing operators."""
    content = _deflated(inflated_mb * 1024 * 1024, b"0 0 m\n")
    return pdf_from_objects(
        [
            b"<< /Type /Catalog /Pages 2 0 R >>",
            b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R >>",
            _stream(b"/Filter /FlateDecode", content),
        ]
    )


def dense_text_layer_pdf(million_chars: int = 2) -> bytes:
    """One page whose text layer holds `million_chars` million characters (one-letter words in
    0.3-pt Helvetica) from a content stream that deflates to a few KB: pdfium's text page and the
    words (with their boxes, on request) grow with the characters, not with the upload."""
    line = b"(" + b"a " * 500 + b") Tj 0 0.35 Td\n"  # 1,000 characters, 500 words, the next line above
    content = zlib.compress(b"BT /F1 0.3 Tf 10 10 Td\n" + line * (million_chars * 1000) + b"ET", 9)
    return pdf_from_objects(
        [
            b"<< /Type /Catalog /Pages 2 0 R >>",
            b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
            b"/Resources << /Font << /F1 << /Type /Font /Subtype /Type1 /BaseFont /Helvetica >> >> >> >>",
            _stream(b"/Filter /FlateDecode", content),
        ]
    )


def image_in_form_pdf(side: int = SIDE) -> bytes:
    """An image of side x side RGB pixels (~120 MB decoded) drawn through a form XObject, where a
    count of the page's own image objects does not see it; its data deflates from a few KB."""
    pixels = _deflated(side * side * 3, b"\x80\x40\x20")
    image = _stream(
        b"/Type /XObject /Subtype /Image /Width %d /Height %d /ColorSpace /DeviceRGB "
        b"/BitsPerComponent 8 /Filter /FlateDecode" % (side, side),
        pixels,
    )
    form = _stream(
        b"/Type /XObject /Subtype /Form /BBox [0 0 612 792] /Resources << /XObject << /Im 6 0 R >> >>",
        b"q 612 0 0 792 0 0 cm /Im Do Q",
    )
    return _page_drawing_form(form, image)


def looping_page_tree_pdf() -> bytes:
    """A page tree that lists itself among its kids."""
    return pdf_from_objects(
        [
            b"<< /Type /Catalog /Pages 2 0 R >>",
            b"<< /Type /Pages /Kids [2 0 R 3 0 R] /Count 2 >>",
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] >>",
        ]
    )


def self_drawing_form_pdf() -> bytes:
    """A form XObject that draws itself: unbounded recursion for a naive renderer."""
    return _page_drawing_form(
        _stream(
            b"/Type /XObject /Subtype /Form /BBox [0 0 612 792] /Resources << /XObject << /Fm 5 0 R >> >>",
            b"/Fm Do",
        )
    )


def _page_drawing_form(form: bytes, *more: bytes) -> bytes:
    """One page whose content draws `form` (object 5); `more` are objects 6 on."""
    return pdf_from_objects(
        [
            b"<< /Type /Catalog /Pages 2 0 R >>",
            b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
            b"/Resources << /XObject << /Fm 5 0 R >> >> >>",
            _stream(b"", b"/Fm Do"),
            form,
            *more,
        ]
    )


def many_page_tiff(pages: int = 3000, side: int = 64, looping: bool = False) -> bytes:
    """A TIFF of `pages` blank `side` x `side` pages (~100 bytes each: every page's IFD points at
    the same strip). `looping`: the last IFD points back at the first, a chain without an end."""
    strip = bytes([255]) * side * side
    out = bytearray(b"II*\x00") + (8 + len(strip)).to_bytes(4, "little") + strip
    # (tag, type SHORT=3/LONG=4, value): width, height, 8 bits, no compression, min-is-black=0
    # inverted (1: white is 255), strip offset, rows per strip, strip bytes.
    tags = [(256, 4, side), (257, 4, side), (258, 3, 8), (259, 3, 1), (262, 3, 1), (273, 4, 8)]
    tags += [(278, 4, side), (279, 4, len(strip))]
    first = len(out)
    for page in range(pages):
        here = len(out)
        following = here + 2 + 12 * len(tags) + 4
        last = page == pages - 1
        out += len(tags).to_bytes(2, "little")
        for tag, kind, value in tags:
            out += tag.to_bytes(2, "little") + kind.to_bytes(2, "little") + (1).to_bytes(4, "little")
            out += value.to_bytes(2 if kind == 3 else 4, "little").ljust(4, b"\0")
        out += (0 if last and not looping else first if last else following).to_bytes(4, "little")
    return bytes(out)
