"""Documents with known text, made on the fly: what the OCR benchmarks, the profiler's load and
the tests send to /ocr. Nothing here is used while serving."""

import datetime
import io
import random
import struct
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from fpdf import FPDF
from fpdf.enums import TextMode
from PIL import Image, ImageDraw, ImageFont

from bench.hostile_files import pdf_from_objects

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


# The same short report in each language that has a sentiment model (written for this project),
# for OCR with `lang=auto`: which language each page is read in, and how well each engine reads it.
LANG_LINES: dict[str, list[str]] = {
    "es": [
        "El equipo celebró la victoria con una cena en el centro de la ciudad.",
        "Los aficionados cantaron durante horas y nadie quería volver a casa.",
        "Según el entrenador, fue el mejor partido de toda la temporada.",
        "Mañana empezará la preparación para la final del próximo domingo.",
    ],
    "en": [
        "The team celebrated the victory with a dinner in the city centre.",
        "The fans sang for hours and nobody wanted to go back home that night.",
        "According to the coach, it was the best match of the whole season.",
        "Tomorrow they will start getting ready for the final next Sunday.",
    ],
    "it": [
        "La squadra ha festeggiato la vittoria con una cena in centro città.",
        "I tifosi hanno cantato per ore e nessuno voleva tornare a casa.",
        "Secondo l'allenatore è stata la partita più bella della stagione.",
        "Domani inizierà la preparazione per la finale di domenica prossima.",
    ],
    "pt": [
        "A equipa comemorou a vitória com um jantar no centro da cidade.",
        "Os adeptos cantaram durante horas e ninguém queria voltar para casa.",
        "Segundo o treinador, foi o melhor jogo de toda a temporada.",
        "Amanhã começará a preparação para a final, não há tempo a perder.",
    ],
}


def language_page(lang: str, lines: int = 4) -> Image.Image:
    """A 150 dpi letter page of `lines` lines of LANG_LINES[lang], repeated as needed."""
    text = [LANG_LINES[lang][index % len(LANG_LINES[lang])] for index in range(lines)]
    page = Image.new("L", (1275, 1650), 255)
    draw, face = ImageDraw.Draw(page), font(22)
    for index, line in enumerate(text):
        draw.text((90, 90 + index * 40), line, font=face, fill=0)
    return page


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


def cer(expected: str, actual: str) -> float:
    """Character error rate: edit distance over the expected length, whitespace collapsed (difflib's
    ratio is no measure of it: on a page of repeated lines it pairs the wrong ones)."""
    a, b = " ".join(expected.split()), " ".join(actual.split())
    previous = list(range(len(b) + 1))
    for i, char_a in enumerate(a, 1):
        current = [i]
        for j, char_b in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (char_a != char_b)))
        previous = current
    return previous[-1] / max(len(a), 1)


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


# Text-layer PDFs (fpdf2): letter pages, lines at known places, so the text read and each word's
# box can be checked exactly. Points here; the service's pixels are points x OCR_DPI / 72.
LETTER_PT = (612.0, 792.0)
MARGIN_PT = 72.0
LINE_PT = 20.0
FONT_PT = 11.0
Layer = Literal["text", "scan", "hidden", "under", "stamped"]


@dataclass(frozen=True)
class LayeredPage:
    """A page's lines and how they are stored: `text` a text layer only; `scan` an image only;
    `hidden` an image with the same text as an invisible layer (render mode 3, another tool's OCR);
    `under` visible text painted over by the image of the page; `stamped` an image with a short
    visible stamp (`stamp`) as its only text."""

    lines: list[str]
    layer: Layer = "text"
    stamp: str = "Página 3"


def _fpdf() -> FPDF:
    pdf = FPDF(unit="pt", format="letter")
    pdf.set_creation_date(datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC))  # the same bytes every time
    if DEJAVU.is_file():
        pdf.add_font("dejavu", fname=str(DEJAVU))
        pdf.set_font("dejavu", size=FONT_PT)
    else:  # a core font: Latin-1 text only
        pdf.set_font("helvetica", size=FONT_PT)
    return pdf


def baseline_pt(line: int) -> float:
    """The baseline of line `line` (0-based), from the top of the page."""
    return MARGIN_PT + (line + 1) * LINE_PT


def word_spans(line: str) -> list[tuple[str, float, float]]:
    """Each word of a line of a text-layer page with its left and right edge in points (advance
    widths: the ink starts a side bearing later)."""
    pdf, spans, x = _fpdf(), [], MARGIN_PT
    for index, word in enumerate(line.split(" ")):
        if index:
            x += pdf.get_string_width(" ")
        width = pdf.get_string_width(word)
        if word:
            spans.append((word, x, x + width))
        x += width
    return spans


def scanned_letter(lines: list[str], dpi: int = 150) -> Image.Image:
    """A letter page at `dpi` with the lines printed where a text-layer page has them."""
    scale = dpi / 72
    page = Image.new("L", (round(LETTER_PT[0] * scale), round(LETTER_PT[1] * scale)), 255)
    draw, face = ImageDraw.Draw(page), font(round(FONT_PT * scale))
    for index, line in enumerate(lines):
        draw.text((MARGIN_PT * scale, baseline_pt(index) * scale), line, font=face, fill=0, anchor="ls")
    return page


def layered_pdf(pages: list[LayeredPage]) -> bytes:
    """A PDF whose pages store their text as `LayeredPage.layer` says."""
    pdf = _fpdf()
    for page in pages:
        pdf.add_page()
        if page.layer in ("text", "hidden", "under"):
            pdf.text_mode = TextMode.INVISIBLE if page.layer == "hidden" else TextMode.FILL
            for index, line in enumerate(page.lines):
                pdf.text(MARGIN_PT, baseline_pt(index), line)
            pdf.text_mode = TextMode.FILL
        if page.layer != "text":
            pdf.image(scanned_letter(page.lines), x=0, y=0, w=LETTER_PT[0], h=LETTER_PT[1])
        if page.layer == "stamped":
            pdf.text(LETTER_PT[0] - 2 * MARGIN_PT, LETTER_PT[1] - MARGIN_PT / 2, page.stamp)
    return bytes(pdf.output())


def garbage_text_pdf(visible: str = "INVOICE 2024 TOTAL DUE") -> bytes:
    """One page showing `visible` in Helvetica whose text layer is garbage: its ToUnicode map sends
    letters to private-use code points and digits to control characters (a broken font subset)."""
    cmap = (
        b"/CIDInit /ProcSet findresource begin 12 dict begin begincmap /CMapName /Garbage def "
        b"1 begincodespacerange <00> <FF> endcodespacerange "
        b"2 beginbfrange <41> <5A> <E000> <30> <39> <0001> endbfrange "
        b"endcmap CMapName currentdict /CMap defineresource pop end end"
    )
    content = b"BT /F1 24 Tf 72 700 Td (%s) Tj ET" % visible.encode("latin-1")
    return pdf_from_objects(
        [
            b"<< /Type /Catalog /Pages 2 0 R >>",
            b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
            b"/Resources << /Font << /F1 5 0 R >> >> >>",
            b"<< /Length %d >>\nstream\n%s\nendstream" % (len(content), content),
            b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /ToUnicode 6 0 R >>",
            b"<< /Length %d >>\nstream\n%s\nendstream" % (len(cmap), cmap),
        ]
    )


# -- Tables with known cells (issue 14): ruled and unruled, for the table tests and bench.tables --

_NAMES = ["Muñoz", "García López", "Pérez", "Ibáñez Ruiz", "Navarro", "Sánchez", "Domínguez", "Ortega Gil"]
_CITIES = ["Madrid", "Sevilla", "Bilbao", "Valencia", "Zaragoza", "Málaga", "Córdoba", "Murcia"]
_PRODUCTS = ["tornillos", "cable eléctrico", "pintura", "bisagras", "tuercas", "madera", "yeso", "cola"]
# Columns a generated table may have: a header and a maker of cell texts from a seeded random.
TABLE_COLUMNS: dict[str, tuple[str, object]] = {
    "fecha": ("Fecha", lambda r: f"{r.randint(1, 28):02d}/{r.randint(1, 12):02d}/{r.randint(2019, 2025)}"),
    "cliente": ("Cliente", lambda r: r.choice(_NAMES)),
    "ciudad": ("Ciudad", lambda r: r.choice(_CITIES)),
    "producto": ("Producto", lambda r: r.choice(_PRODUCTS)),
    "unidades": ("Unidades", lambda r: str(r.randint(1, 900))),
    "importe": ("Importe", lambda r: f"{r.randint(1, 9)}.{r.randint(0, 999):03d},{r.randint(0, 99):02d}"),
    "codigo": ("Código", lambda r: f"A-{r.randint(100, 999)}"),
}


def table_cells(rows: int, columns: list[str], seed: int = 0) -> list[list[str]]:
    """A header row and `rows` rows of the named TABLE_COLUMNS, with seeded values."""
    draw = random.Random(seed)
    makers = [TABLE_COLUMNS[name][1] for name in columns]
    header = [TABLE_COLUMNS[name][0] for name in columns]
    return [header] + [[make(draw) for make in makers] for _ in range(rows)]  # type: ignore[operator]


def draw_table(
    page: Image.Image, cells: list[list[str]], origin: tuple[int, int], ruled: bool, font_size: int = 24
) -> tuple[int, int, int, int]:
    """Draw `cells` on `page` at `origin`, with a grid of lines when `ruled`, else aligned columns
    only (numbers right-aligned, as registers print them); returns the table's box."""
    draw, face = ImageDraw.Draw(page), font(font_size)
    pad, row_height = int(font_size * 0.8), int(font_size * 1.9)
    widths = [
        max(int(draw.textlength(row[c], font=face)) for row in cells) + 2 * pad for c in range(len(cells[0]))
    ]
    left, top = origin
    xs = [left + sum(widths[:c]) for c in range(len(widths) + 1)]
    for r, row in enumerate(cells):
        y = top + r * row_height + (row_height - font_size) // 2
        for c, text in enumerate(row):
            numeric = r > 0 and text.replace(".", "").replace(",", "").isdigit()
            x = xs[c + 1] - pad - int(draw.textlength(text, font=face)) if numeric else xs[c] + pad
            draw.text((x, y), text, font=face, fill=0)
    bottom = top + len(cells) * row_height
    if ruled:
        for r in range(len(cells) + 1):
            draw.line([(xs[0], top + r * row_height), (xs[-1], top + r * row_height)], fill=0, width=2)
        for x in xs:
            draw.line([(x, top), (x, bottom)], fill=0, width=2)
    return xs[0], top, xs[-1], bottom


def table_page(
    tables: list[tuple[list[list[str]], bool]], size: tuple[int, int] = (1275, 1650), seed: int = 0
) -> Image.Image:
    """A 150 dpi page with a paragraph, then each (cells, ruled) table followed by a paragraph."""
    page = Image.new("L", size, 255)
    draw, face = ImageDraw.Draw(page), font(22)
    y = 90
    for index, (cells, ruled) in enumerate([([], False), *tables]):
        if cells:
            y = draw_table(page, cells, (90, y), ruled)[3] + 50
        for line in page_lines(3, seed + index):
            draw.text((90, y), line, font=face, fill=0)
            y += 40
        y += 40
    return page


def table_photo_12mp(cells: list[list[str]]) -> Image.Image:
    """A 4000x3000 photo-like image of a page holding a ruled table of `cells`."""
    photo = Image.merge("RGB", [Image.effect_noise((4000, 3000), 25 + 5 * band) for band in range(3)])
    photo.paste(table_page([(cells, True)], size=(2550, 2200)).convert("RGB"), (700, 400))
    return photo


@dataclass(frozen=True)
class TablePage:
    """A letter page of a table PDF: a paragraph, `cells` as a table, a paragraph (no cells: a
    full page of text), stored as a text layer with vector lines (`text`) or as a 150 dpi image of
    the page (`scan`)."""

    cells: list[list[str]] | None
    ruled: bool = True
    layer: Literal["text", "scan"] = "text"
    seed: int = 0


def _numeric(row: int, text: str) -> bool:
    return row > 0 and text.replace(".", "").replace(",", "").isdigit()


def _text_layer_table(pdf: FPDF, cells: list[list[str]], top: float, ruled: bool) -> float:
    """`draw_table` in a PDF's own text and lines, in points; returns the table's bottom."""
    pad, row_height = FONT_PT * 0.8, FONT_PT * 1.9
    widths = [max(pdf.get_string_width(row[c]) for row in cells) + 2 * pad for c in range(len(cells[0]))]
    xs = [MARGIN_PT + sum(widths[:c]) for c in range(len(widths) + 1)]
    for r, row in enumerate(cells):
        baseline = top + r * row_height + (row_height + FONT_PT * 0.7) / 2
        for c, text in enumerate(row):
            x = xs[c + 1] - pad - pdf.get_string_width(text) if _numeric(r, text) else xs[c] + pad
            pdf.text(x, baseline, text)
    bottom = top + len(cells) * row_height
    if ruled:
        pdf.set_line_width(1.0)
        for r in range(len(cells) + 1):
            pdf.line(xs[0], top + r * row_height, xs[-1], top + r * row_height)
        for x in xs:
            pdf.line(x, top, x, bottom)
    return bottom


def table_pdf(pages: list[TablePage]) -> bytes:
    """A PDF of `pages`, text-layer and scanned ones mixed, tables with known cells."""
    pdf = _fpdf()
    for page in pages:
        pdf.add_page()
        if page.layer == "scan":
            image = (
                table_page([(page.cells, page.ruled)], seed=page.seed)
                if page.cells
                else letter_page(seed=page.seed)
            )
            pdf.image(image, x=0, y=0, w=LETTER_PT[0], h=LETTER_PT[1])
        elif page.cells is None:
            for index, line in enumerate(page_lines(30, page.seed)):
                pdf.text(MARGIN_PT, baseline_pt(index), line)
        else:
            y = MARGIN_PT
            for part in ([], page.cells):
                if part:
                    y = _text_layer_table(pdf, part, y, page.ruled) + LINE_PT
                for line in page_lines(3, page.seed):
                    y += LINE_PT
                    pdf.text(MARGIN_PT, y, line)
                y += LINE_PT
    return bytes(pdf.output())
