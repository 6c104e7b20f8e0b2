"""Test documents with known text, made on the fly: images, PDFs and broken files."""

import io

import pytest
from PIL import Image

# The generators shared with the benchmarks, re-exported for the tests that import them from here.
from bench.documents import DEJAVU as DEJAVU
from bench.documents import cer as cer
from bench.documents import encode as encode
from bench.documents import font as font
from bench.documents import pdf_of as pdf_of
from bench.documents import png_header_only as png_header_only
from bench.documents import text_page as text_page

SPANISH = [
    "El señor Muñoz compró tres árboles frutales.",
    "¿Cuándo llegará el paquete? ¡Mañana por la tarde!",
    "La reunión empezó a las diez y media en punto.",
]
ENGLISH = [
    "The quick brown fox jumps over the lazy dog.",
    "Invoice 2024-118: total due 1,250.00 EUR.",
    "Please reply before Friday, 12 March.",
]

needs_dejavu = pytest.mark.skipif(
    not DEJAVU.is_file(),
    reason=f"accented text needs a full TrueType font: apt-get install fonts-dejavu-core ({DEJAVU})",
)


def pdf_from_objects(objects: list[bytes], trailer: bytes = b"") -> bytes:
    """A PDF with these objects (1 is the catalog) and a correct cross-reference table."""
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R %s>>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        trailer,
        xref,
    )
    return bytes(out)


def encrypted_pdf() -> bytes:
    """A one-page PDF under the standard security handler whose user password is not empty."""
    page_tree = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] >>",
        b"<< /Filter /Standard /V 1 /R 2 /Length 40 /P -4 /O <%s> /U <%s> >>" % (b"11" * 32, b"22" * 32),
    ]
    file_id = b"<0123456789abcdef0123456789abcdef>"
    return pdf_from_objects(page_tree, b"/Encrypt 4 0 R /ID [%s %s] " % (file_id, file_id))


def blank_pdf(width_pt: float, height_pt: float, pages: int = 1) -> bytes:
    kids = b" ".join(b"%d 0 R" % (3 + i) for i in range(pages))
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [%s] /Count %d >>" % (kids, pages),
    ]
    objects += [b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 %g %g] >>" % (width_pt, height_pt)] * pages
    return pdf_from_objects(objects)


def tiff_of(pages: list[Image.Image], fmt: str = "TIFF", **options: object) -> bytes:
    """A multi-frame image of these pages: a multi-page TIFF, or an animated WEBP or PNG."""
    buffer = io.BytesIO()
    pages[0].save(buffer, fmt, save_all=True, append_images=pages[1:], **options)
    return buffer.getvalue()
