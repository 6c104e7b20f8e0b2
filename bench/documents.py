"""Documents with known text, made on the fly: what the OCR benchmarks, the profiler's load and
the tests send to /ocr. Nothing here is used while serving."""

import io
import random
import struct
import time
import zlib
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

DEJAVU = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")  # Debian's fonts-dejavu-core
TEXT = (
    "el informe trimestral muestra que las ventas crecieron un doce por ciento en marzo gracias a "
    "la campaña de primavera aunque los costes de envío subieron y varios clientes pidieron más plazo "
    "para pagar sus facturas según explicó ayer la directora financiera de la compañía"
)


def font(size: int = 28) -> ImageFont.FreeTypeFont:
    """DejaVu Sans when installed, else the TrueType font Pillow embeds (ASCII glyphs only)."""
    if DEJAVU.is_file():
        return ImageFont.truetype(str(DEJAVU), size)
    return ImageFont.load_default(size=size)


def text_page(lines: list[str], size: tuple[int, int] = (1275, 260), font_size: int = 28) -> Image.Image:
    """Black text on white, ~11 pt at 150 dpi by default."""
    image = Image.new("L", size, 255)
    draw = ImageDraw.Draw(image)
    face = font(font_size)
    for index, line in enumerate(lines):
        draw.text((60, 40 + index * int(font_size * 1.8)), line, font=face, fill=0)
    return image


def page_lines(count: int, seed: int = 0) -> list[str]:
    """Lines of ~75 characters of Spanish words in a varied order, like running text."""
    lines, words = [], iter(random.Random(seed).choices(TEXT.split(), k=count * 20))
    for _ in range(count):
        line = next(words)
        while len(line) < 70:
            line += " " + next(words)
        lines.append(line)
    return lines


def letter_page(lines: int = 36, seed: int = 0) -> Image.Image:
    """A 150 dpi US-letter page (1275x1650) of 10-11 pt text."""
    page = Image.new("L", (1275, 1650), 255)
    draw = ImageDraw.Draw(page)
    face = font(22)
    for index, line in enumerate(page_lines(lines, seed)):
        draw.text((90, 90 + index * 40), line, font=face, fill=0)
    return page


def photo_12mp() -> Image.Image:
    """A 4000x3000 photo-like image: a noisy, tinted background with a printed block in it."""
    photo = Image.merge("RGB", [Image.effect_noise((4000, 3000), 25 + 5 * band) for band in range(3)])
    photo.paste(letter_page(18).resize((2550, 1650)).convert("RGB"), (700, 700))
    return photo


def encode(image: Image.Image, fmt: str = "PNG", **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def pdf_of(pages: list[Image.Image], dpi: float = 150) -> bytes:
    """A PDF of the pages, one image each (as a scanner writes it); the same bytes every time
    (Pillow would date it to the second, so two seeded load plans could differ)."""
    epoch = time.gmtime(0)
    options = {"resolution": dpi, "save_all": True, "creationDate": epoch, "modDate": epoch}
    return encode(pages[0], "PDF", append_images=pages[1:], **options)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG declaring width x height 8-bit gray pixels, with almost no data: a bomb's header."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )
