"""Tables through `POST /ocr`: images, scanned and text-layer PDF pages, CSV, the column hint, the
`ocr:tables` registry item, and table requests that find nothing or make no sense."""

import csv
import io
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from bench.documents import TablePage, encode, letter_page, table_cells, table_page, table_pdf
from service.ocr.sandbox import get_worker
from service.registry import get_registry
from tests.ocr.conftest import needs_tessdata
from tests.ocr.samples import needs_dejavu

pytestmark = [pytest.mark.slow, needs_tessdata, needs_dejavu]

MakeClient = Callable[..., TestClient]
ROOT = Path(__file__).resolve().parents[2]
INVOICES = table_cells(6, ["fecha", "cliente", "ciudad", "unidades", "importe"], seed=2)
STOCK = table_cells(5, ["codigo", "producto", "unidades", "importe"], seed=3)


def post(client: TestClient, data: bytes, **form: str) -> dict:
    response = client.post("/ocr", files={"file": ("upload", data)}, data=form)
    assert response.status_code == 200, response.text
    return response.json()


def texts(table: dict) -> list[list[str]]:
    return [[cell["text"] for cell in row] for row in table["rows"]]


def exact_share(expected: list[list[str]], table: dict) -> float:
    exact = sum(
        want == got
        for want_row, got_row in zip(expected, texts(table), strict=False)
        for want, got in zip(want_row, got_row, strict=False)
    )
    return exact / sum(len(row) for row in expected)


def test_a_ruled_table_image_comes_back_as_cells_and_csv(ocr_client: MakeClient) -> None:
    client = ocr_client()
    body = post(client, encode(table_page([(INVOICES, True)])), tables="true", table_csv="true")
    (page,) = body["pages"]
    (table,) = page["tables"]
    assert table["ruled"] and len(table["rows"]) == 7 and {len(row) for row in table["rows"]} == {5}
    assert exact_share(INVOICES, table) >= 0.95
    assert list(csv.reader(io.StringIO(table["csv"]))) == texts(table)
    x0, y0, x1, y1 = table["box"]
    assert 0 <= x0 < x1 <= page["width"] and 0 <= y0 < y1 <= page["height"]
    first = table["rows"][0][0]["box"]
    assert first[:2] == [x0, y0] and first[2] < x1
    assert "words" not in page or page["words"] is None  # tables alone do not return the words
    assert "|" not in page["text"]  # the lines were erased before recognition


def test_a_page_without_a_table_gets_an_empty_list_and_no_table_request_no_key(
    ocr_client: MakeClient,
) -> None:
    client = ocr_client()
    (page,) = post(client, encode(letter_page(12)), tables="true", columns="3")["pages"]
    assert page["tables"] == [] and page["text"]
    (page,) = post(client, encode(letter_page(12)))["pages"]
    assert page.get("tables") is None


def test_pdf_tables_from_text_layer_and_scanned_pages(ocr_client: MakeClient) -> None:
    pdf = table_pdf(
        [
            TablePage(INVOICES, ruled=True),
            TablePage(STOCK, ruled=False),
            TablePage(None),
            TablePage(STOCK, ruled=False, layer="scan"),
        ]
    )
    pages = post(ocr_client(), pdf, tables="true")["pages"]
    assert [page["source"] for page in pages] == ["text_layer", "text_layer", "text_layer", "ocr"]
    assert [[table["ruled"] for table in page["tables"]] for page in pages] == [[True], [False], [], [False]]
    assert texts(pages[0]["tables"][0]) == INVOICES  # a text layer's cells are exact
    assert texts(pages[1]["tables"][0]) == STOCK
    assert exact_share(STOCK, pages[3]["tables"][0]) >= 0.95


def test_a_batch_gets_each_files_tables_and_a_corrupt_file_its_own_error(ocr_client: MakeClient) -> None:
    files = [
        ("stock.png", encode(table_page([(STOCK, False)]))),
        ("broken.pdf", b"%PDF-1.7\n1 0 obj << /Type /Catalog >> garbage"),
        ("invoices.pdf", table_pdf([TablePage(INVOICES)])),
    ]
    response = ocr_client().post(
        "/ocr/batch", files=[("file", file) for file in files], data={"tables": "true"}
    )
    assert response.status_code == 200, response.text
    stock, broken, invoices = response.json()["files"]
    assert exact_share(STOCK, stock["pages"][0]["tables"][0]) >= 0.95
    assert broken["error"]["code"] == "undecodable_file"
    assert texts(invoices["pages"][0]["tables"][0]) == INVOICES


def test_the_column_hint_splits_an_unruled_table_at_its_widest_gaps(ocr_client: MakeClient) -> None:
    client = ocr_client()
    image = encode(table_page([(STOCK, False)]))
    (found,) = post(client, image, tables="true")["pages"][0]["tables"]
    assert len(found["rows"][0]) == 4
    (hinted,) = post(client, image, tables="true", columns="2")["pages"][0]["tables"]
    assert len(hinted["rows"][0]) == 2


@pytest.mark.parametrize(
    "form",
    [
        {"columns": "3"},
        {"table_csv": "true"},
        {"tables": "true", "columns": "1"},
        {"tables": "true", "columns": "many"},
        {"tables": "maybe"},
    ],
)
def test_table_options_that_make_no_sense_are_a_422(ocr_client: MakeClient, form: dict[str, str]) -> None:
    response = ocr_client().post("/ocr", files={"file": ("page.png", encode(letter_page(2)))}, data=form)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == "invalid_input"


def test_table_detection_is_a_registry_item_loaded_with_the_first_table_request(
    ocr_client: MakeClient,
) -> None:
    client = ocr_client()
    image = encode(table_page([(STOCK, True)]))
    post(client, image)
    registry = get_registry()
    assert not registry.is_loaded("ocr:tables")
    post(client, image, tables="true")
    assert registry.is_loaded("ocr:tables")
    entry = next(entry for entry in registry.snapshot() if entry["key"] == "ocr:tables")
    assert entry["engine"] == "tables" and entry["worker_pid"] == get_worker().pid
    # Unloading it replaces the worker (a module cannot be unimported); the next request still works.
    pid = get_worker().pid
    registry.unload("ocr:tables")
    assert not registry.is_loaded("ocr:tables")
    (page,) = post(client, image, tables="true")["pages"]
    assert get_worker().pid != pid and len(page["tables"]) == 1


def test_openapi_shows_the_table_fields_with_examples(ocr_client: MakeClient) -> None:
    schema = ocr_client().get("/openapi.json").json()
    components = schema["components"]["schemas"]
    fields = components["OcrOptions"]["properties"]
    assert {"tables", "columns", "table_csv"} <= set(fields) and fields["columns"]["examples"]
    example = components["OcrResponse"]["examples"][0]
    assert any(page.get("tables") for page in example["pages"])
    assert "TableResult" in components and "TableCell" in components


def test_nothing_of_table_detection_is_imported_at_startup() -> None:
    """numpy comes with the first table request (the `ocr:tables` item), in the worker alone."""
    code = (
        "import sys, main, service.ocr.worker\n"
        "print(sorted({'numpy', 'service.ocr.tables'} & sys.modules.keys()))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert result.stdout.strip() == "[]"
