"""Table detection (service.ocr.tables): on Tesseract's words from generated pages with known cells,
and on exact words where the structure alone is under test."""

import csv
import io

import pytest
import tesserocr
from PIL import Image, ImageDraw

from bench.documents import letter_page, table_cells, table_page
from bench.tables import tesseract_words
from service.ocr.tables import Rule, Table, detect_tables, erase_rules, ruling_lines
from service.ocr.tessdata import resolve_tessdata
from service.ocr.words import Word
from tests.ocr.conftest import needs_tessdata
from tests.ocr.samples import needs_dejavu

pytestmark = pytest.mark.slow  # real servers, exports or browsers: not the quick tier


COLUMNS = [
    ["fecha", "cliente", "ciudad", "unidades", "importe"],
    ["codigo", "producto", "unidades", "importe"],
]


@pytest.fixture(scope="module")
def tesseract() -> tesserocr.PyTessBaseAPI:
    api = tesserocr.PyTessBaseAPI(
        path=f"{resolve_tessdata('spa')}/", lang="spa", oem=tesserocr.OEM.LSTM_ONLY, psm=tesserocr.PSM.AUTO
    )
    yield api
    api.End()


def read_tables(api: tesserocr.PyTessBaseAPI, page: Image.Image, columns: int | None = None) -> list[Table]:
    """What the OCR worker does with a page when tables are asked for."""
    rules = ruling_lines(page)
    erase_rules(page, rules)
    return detect_tables([word for word, _ in tesseract_words(api, page)], rules, columns)


def texts(table: Table) -> list[list[str]]:
    return [[cell.text for cell in row] for row in table.rows]


def exact_cells(expected: list[list[str]], table: Table) -> int:
    return sum(
        want == got
        for want_row, got_row in zip(expected, texts(table), strict=False)
        for want, got in zip(want_row, got_row, strict=False)
    )


def word(text: str, left: int, top: int, width: int | None = None, height: int = 20) -> Word:
    return Word(text, left, top, left + (width or 12 * len(text)), top + height, 1.0)


# -- on Tesseract's words ------------------------------------------------------------------------


@needs_tessdata
@needs_dejavu
@pytest.mark.parametrize("ruled", [True, False], ids=["ruled", "unruled"])
def test_generated_tables_read_at_least_95_percent_of_cells_exactly(
    tesseract: tesserocr.PyTessBaseAPI, ruled: bool
) -> None:
    exact = total = 0
    for seed in range(3):
        cells = table_cells(8, COLUMNS[seed % 2], seed=seed)
        tables = read_tables(tesseract, table_page([(cells, ruled)], seed=seed))
        assert [(len(table.rows), len(table.rows[0]), table.ruled) for table in tables] == [
            (len(cells), len(cells[0]), ruled)
        ]
        exact += exact_cells(cells, tables[0])
        total += sum(len(row) for row in cells)
    assert exact / total >= 0.95, f"{exact} of {total} cells exact"


@needs_tessdata
@needs_dejavu
def test_a_ruled_and_an_unruled_table_on_one_page_come_back_in_order(
    tesseract: tesserocr.PyTessBaseAPI,
) -> None:
    first, second = table_cells(4, COLUMNS[0], seed=10), table_cells(3, COLUMNS[1], seed=11)
    tables = read_tables(tesseract, table_page([(first, True), (second, False)]))
    assert [table.ruled for table in tables] == [True, False]
    assert tables[0].bottom < tables[1].top
    assert exact_cells(first, tables[0]) >= 0.9 * sum(map(len, first))
    assert exact_cells(second, tables[1]) >= 0.9 * sum(map(len, second))


@needs_tessdata
@needs_dejavu
def test_a_page_of_running_text_has_no_table(tesseract: tesserocr.PyTessBaseAPI) -> None:
    assert read_tables(tesseract, letter_page(seed=3)) == []
    assert read_tables(tesseract, letter_page(seed=4), columns=3) == []


@needs_tessdata
@needs_dejavu
def test_a_slightly_rotated_ruled_table_keeps_its_grid(tesseract: tesserocr.PyTessBaseAPI) -> None:
    cells = table_cells(6, COLUMNS[0], seed=5)
    page = table_page([(cells, True)]).rotate(1.0, fillcolor=255, resample=Image.Resampling.BICUBIC)
    tables = read_tables(tesseract, page)
    assert [(len(table.rows), len(table.rows[0])) for table in tables] == [(7, 5)]
    assert exact_cells(cells, tables[0]) >= 0.8 * 35  # the grid holds; recognition of tilted text errs more


# -- ruling lines ---------------------------------------------------------------------------------


def test_ruling_lines_are_found_and_letters_and_filled_blocks_are_not() -> None:
    page = Image.new("L", (800, 600), 255)
    draw = ImageDraw.Draw(page)
    draw.line([(50, 100), (700, 100)], fill=0, width=2)
    draw.line([(300, 150), (300, 500)], fill=0, width=3)
    draw.rectangle((400, 200, 700, 400), fill=30)  # a photo or shading, not a line
    draw.text((60, 120), "l I | 1 — texto", fill=0)
    rules = ruling_lines(page)
    assert len(rules) == 2
    horizontal, vertical = sorted(rules, key=lambda rule: not rule.horizontal)
    assert horizontal.horizontal and abs(horizontal.left - 50) <= 2 and abs(horizontal.right - 701) <= 2
    assert not vertical.horizontal and abs(vertical.top - 150) <= 2 and abs(vertical.bottom - 501) <= 2
    erase_rules(page, rules)
    assert page.getpixel((300, 300)) == 255 and page.getpixel((500, 300)) == 30


# -- structure, on exact words --------------------------------------------------------------------


def grid_rules(xs: list[int], ys: list[int]) -> list[Rule]:
    return [Rule(xs[0], y, xs[-1], y + 2) for y in ys] + [Rule(x, ys[0], x + 2, ys[-1]) for x in xs]


def test_a_grid_puts_each_word_in_the_cell_holding_its_centre_and_keeps_empty_cells() -> None:
    words = [
        word("Nombre", 110, 110),
        word("Total", 310, 110),
        word("Ana", 110, 160),
        word("María", 160, 160),
    ]
    words += [
        word("|", 299, 160, width=4),
        word("3,50", 310, 210),
    ]  # a line read as a bar, then a row's 2nd cell
    tables = detect_tables(words, grid_rules([100, 300, 500], [100, 150, 200, 250]))
    assert len(tables) == 1 and tables[0].ruled
    assert texts(tables[0]) == [["Nombre", "Total"], ["Ana María", ""], ["", "3,50"]]
    assert (tables[0].rows[2][1].left, tables[0].rows[2][1].top) == (301, 201)


def test_a_grid_without_outer_borders_is_closed_by_its_lines_ends() -> None:
    rules = [Rule(100, 149, 500, 151), Rule(100, 199, 500, 201), Rule(299, 100, 301, 250)]
    words = [word("a", 120, 115), word("b", 320, 115), word("c", 120, 165), word("d", 320, 165)]
    words += [word("e", 120, 215), word("f", 320, 215)]
    assert [texts(table) for table in detect_tables(words, rules)] == [[["a", "b"], ["c", "d"], ["e", "f"]]]


def test_a_lone_box_or_lone_lines_are_not_tables() -> None:
    box = grid_rules([100, 500], [100, 300])
    assert detect_tables([word("aviso", 120, 150)], box) == []
    assert detect_tables([word("x", 120, 150)], [Rule(100, 100, 500, 102), Rule(100, 200, 500, 202)]) == []


def unruled(rows: list[list[str]], xs: list[int], top: int = 100, pitch: int = 40) -> list[Word]:
    return [
        word(text, x, top + r * pitch)
        for r, row in enumerate(rows)
        for text, x in zip(row, xs, strict=True)
        for text in [text]
        if text
    ]


def test_aligned_columns_make_an_unruled_table_with_a_row_per_line() -> None:
    rows = [
        ["Código", "Producto", "Importe"],
        ["A-1", "tuercas", "12,00"],
        ["A-2", "", "7,50"],
        ["A-3", "cola", "1,25"],
    ]
    tables = detect_tables(unruled(rows, [100, 300, 600]))
    assert len(tables) == 1 and not tables[0].ruled
    assert texts(tables[0]) == rows


def test_running_text_above_and_below_stays_out_of_an_unruled_table() -> None:
    para = [
        word(text, 100 + 70 * i, 20) for i, text in enumerate(["la", "tabla", "muestra", "las", "ventas"])
    ]
    after = [word(text, 100 + 70 * i, 300) for i, text in enumerate(["fin", "del", "informe"])]
    rows = [["Mes", "Ventas"], ["enero", "10"], ["febrero", "12"]]
    tables = detect_tables([*para, *unruled(rows, [100, 400]), *after])
    assert [texts(table) for table in tables] == [rows]


def test_a_column_hint_keeps_the_widest_gaps() -> None:
    rows = [["Juan", "Pérez", "Madrid"], ["Ana", "Gil", "Bilbao"], ["Luis", "Sanz", "Murcia"]]
    words = unruled(rows, [100, 200, 450])  # first and last names 40+ px apart: three columns
    assert len(texts(detect_tables(words)[0])[0]) == 3
    hinted = detect_tables(words, columns=2)
    assert texts(hinted[0]) == [["Juan Pérez", "Madrid"], ["Ana Gil", "Bilbao"], ["Luis Sanz", "Murcia"]]


def test_a_column_hint_finds_columns_closer_than_the_default_gap() -> None:
    rows = [["1", "uno"], ["2", "dos"], ["3", "tres"]]
    words = unruled(rows, [100, 126])  # 14 px apart: under the default gap of 0.9 letter heights
    assert detect_tables(words) == []
    assert texts(detect_tables(words, columns=2)[0]) == rows


def test_csv_quotes_what_needs_quoting() -> None:
    rows = [
        ["Cliente", "Importe"],
        ['Ana "la jefa"', "1.250,00"],
        ["Gil, Luis", "7"],
        ["Ruiz", ""],
        ["Sanz", "0,50"],
    ]
    table = detect_tables(unruled(rows, [100, 400]))[0]
    assert list(csv.reader(io.StringIO(table.csv()))) == rows


def test_two_lines_sharing_one_wide_gap_are_not_a_table() -> None:
    # Two lines of running text where a word misread as two left a gap at the same place in both.
    lines = [["ventas ayer sus ciento pi", "ron facturas"], ["primavera sus el aunque", "tora informe"]]
    assert detect_tables(unruled(lines, [100, 520])) == []
    assert len(detect_tables(unruled([*lines, ["costes de envío", "marzo"]], [100, 520]))) == 1
