"""`POST /ocr/batch`: several files in one request, results in order, a bad file its own error."""

import threading
from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from bench.documents import LayeredPage, encode, layered_pdf, page_lines, text_page
from bench.hostile_files import inflating_pdf
from service.ocr import sandbox
from service.ocr.sandbox import get_worker
from service.registry import get_registry
from tests.ocr.conftest import needs_tessdata
from tests.ocr.samples import ENGLISH, blank_pdf, cer, encrypted_pdf, pdf_of, tiff_of
from tests.ocr.test_ocr_api import assert_error

pytestmark = needs_tessdata

MakeClient = Callable[..., TestClient]
LINES = page_lines(4, seed=11)
IMAGE = encode(text_page(ENGLISH[:1], size=(1000, 120)))


def batch(client: TestClient, files: list[tuple[str, bytes]], **form: str):
    return client.post("/ocr/batch", files=[("file", file) for file in files], data=form)


def test_each_file_gets_its_result_or_its_error_in_order(ocr_client: MakeClient) -> None:
    client = ocr_client()
    files = [
        ("letter.pdf", layered_pdf([LayeredPage(LINES)])),
        ("broken.pdf", b"%PDF-1.7\n1 0 obj << /Type /Catalog >> garbage"),
        ("scan.png", IMAGE),
        ("locked.pdf", encrypted_pdf()),
        ("notes.txt", b"not an image\n" * 8),
        ("empty.png", b""),
        ("scan.pdf", pdf_of([text_page(ENGLISH[1:2], size=(1275, 160))])),
    ]
    response = batch(client, files, lang="en")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["lang"] == "en" and body["seconds"] > 0
    results = body["files"]
    assert [result["filename"] for result in results] == [name for name, _ in files]
    errors = {result["filename"]: result["error"] for result in results if "error" in result}
    assert {name: (error["status"], error["code"]) for name, error in errors.items()} == {
        "broken.pdf": (422, "undecodable_file"),
        "locked.pdf": (422, "encrypted_pdf"),
        "notes.txt": (415, "unsupported_media_type"),
        "empty.png": (422, "invalid_input"),
    }
    assert all(error["message"] for error in errors.values())
    letter, _, image, _, _, _, scan = results
    assert letter["format"] == "pdf" and letter["pages"][0]["text"] == "\n".join(LINES)
    assert letter["pages"][0]["source"] == "text_layer"
    assert image["format"] == "png" and cer(ENGLISH[0], image["pages"][0]["text"]) < 0.02
    assert scan["pages"][0]["source"] == "ocr" and cer(ENGLISH[1], scan["pages"][0]["text"]) < 0.02
    assert get_registry().counters["loads"] == 1  # one engine for the whole batch


def test_more_files_than_allowed_are_refused_before_any_decoding(ocr_client: MakeClient) -> None:
    client = ocr_client(OCR_MAX_FILES="2")
    error = assert_error(batch(client, [("a.png", IMAGE)] * 3), 413, "too_large")
    assert "OCR_MAX_FILES=2" in error["message"] and (error["files"], error["max_files"]) == (3, 2)
    assert get_registry().counters["loads"] == 0  # no engine loaded, nothing decoded
    assert batch(client, [("a.png", IMAGE)] * 2).status_code == 200


def test_all_files_together_stay_within_the_upload_limit(ocr_client: MakeClient) -> None:
    client = ocr_client(OCR_MAX_UPLOAD_MB="0.05")
    big = b"\x89PNG\r\n\x1a\n" + bytes(20_000)
    error = assert_error(batch(client, [("a.png", big)] * 3), 413, "too_large")
    assert "OCR_MAX_UPLOAD_MB=0.05" in error["message"]


def test_files_share_the_page_limit(ocr_client: MakeClient) -> None:
    client = ocr_client(OCR_MAX_PAGES="3")
    files = [
        ("two.pdf", blank_pdf(612, 792, pages=2)),
        ("also-two.pdf", blank_pdf(612, 792, pages=2)),
        ("one.png", IMAGE),
        ("more.png", IMAGE),
    ]
    results = batch(client, files, lang="en").json()["files"]
    assert len(results[0]["pages"]) == 2
    assert results[1]["error"]["code"] == "too_large" and "1 left" in results[1]["error"]["message"]
    assert len(results[2]["pages"]) == 1
    assert results[3]["error"]["code"] == "too_large" and "OCR_MAX_PAGES=3" in results[3]["error"]["message"]


def test_pages_selects_each_files_pages_a_file_it_does_not_fit_gets_its_error(ocr_client: MakeClient) -> None:
    files = [
        ("three.pdf", blank_pdf(612, 792, pages=3)),
        ("three.tiff", tiff_of([Image.new("L", (200, 100), 255)] * 3)),
        ("one.png", IMAGE),
        ("one.pdf", blank_pdf(612, 792)),
    ]
    document, tiff, image, short = batch(ocr_client(), files, pages="2-3", lang="en").json()["files"]
    assert [page["page"] for page in document["pages"]] == [2, 3]
    assert (tiff["page_count"], [page["page"] for page in tiff["pages"]]) == (3, [2, 3])
    for error, what in ((image["error"], "PNG has 1"), (short["error"], "PDF has 1")):
        assert error["code"] == "invalid_input" and "past the last page" in error["message"], error
        assert what in error["message"]


@pytest.mark.slow
def test_a_file_that_kills_the_worker_is_its_own_error(ocr_client: MakeClient) -> None:
    """A PDF stream that inflates past OCR_WORK_MB (real worker, real cap): that file gets 413,
    the files after it are read by the worker that replaces it."""
    client = ocr_client()
    files = [("a.png", IMAGE), ("inflating.pdf", inflating_pdf(300)), ("b.png", IMAGE)]
    response = batch(client, files, lang="en")
    assert response.status_code == 200, response.text
    first, bomb, last = response.json()["files"]
    assert bomb["error"]["status"] == 413 and bomb["error"]["code"] == "too_large", bomb
    assert cer(ENGLISH[0], first["pages"][0]["text"]) < 0.02
    assert cer(ENGLISH[0], last["pages"][0]["text"]) < 0.02
    assert get_worker().pid is not None
    assert client.post("/ocr", files={"file": ("a.png", IMAGE)}, data={"lang": "en"}).status_code == 200


def test_analyze_runs_once_over_the_readable_pages_of_all_files(
    ocr_client: MakeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    sentiment = pytest.importorskip("service.sentiment.service")
    calls = []

    def fake_analyze(texts: list[str], task: str, lang: str, fallback: bool = False) -> list:
        calls.append(list(texts))
        return [sentiment.Prediction(label="NEU", probas={"NEG": 0.2, "NEU": 0.6, "POS": 0.2}) for _ in texts]

    monkeypatch.setattr(sentiment, "analyze", fake_analyze)
    files = [
        ("a.png", IMAGE),
        ("blank.pdf", blank_pdf(612, 792)),
        ("letter.pdf", layered_pdf([LayeredPage(LINES)])),
    ]
    image, blank, letter = batch(ocr_client(), files, lang="en", analyze="true").json()["files"]
    assert calls == [[image["pages"][0]["text"], letter["pages"][0]["text"]]]
    assert blank["pages"][0]["sentiment"] is None and letter["pages"][0]["sentiment"]["label"] == "NEU"


def test_ocr_refuses_a_second_file_rather_than_dropping_it(ocr_client: MakeClient) -> None:
    client = ocr_client()
    response = client.post("/ocr", files=[("file", ("a.png", IMAGE)), ("file", ("b.png", IMAGE))])
    error = assert_error(response, 422, "invalid_input")
    assert "/ocr/batch" in error["message"]
    assert get_registry().counters["loads"] == 0


def test_openapi_documents_the_batch_and_the_new_fields(ocr_client: MakeClient) -> None:
    schema = ocr_client().get("/openapi.json").json()
    operation = schema["paths"]["/ocr/batch"]["post"]
    assert {"200", "413", "422", "503"} <= set(operation["responses"])
    example = schema["components"]["schemas"]["OcrBatchResponse"]["examples"][0]
    assert example["files"][1]["error"]["code"] == "encrypted_pdf"
    page = example["files"][0]["pages"][0]
    assert page["source"] == "text_layer" and page["words"][0]["box"] == [150, 188, 262, 210]
    schemas = schema["components"]["schemas"]
    body = next(value for name, value in schemas.items() if name.startswith("Body_ocr_files"))
    assert body["properties"]["file"]["type"] == "array"
    assert body["allOf"] == [{"$ref": "#/components/schemas/OcrOptions"}]
    options = schemas["OcrOptions"]["properties"]
    assert options["ocr"]["enum"] == ["auto", "force"] and options["ocr"]["examples"] == ["auto"]
    assert options["words"]["type"] == "boolean"
    assert set(schemas["PageResult"]["properties"]) >= {"source", "text_layer", "width", "height", "words"}


def test_a_result_past_the_reply_limit_is_413_and_the_worker_is_replaced(
    ocr_client: MakeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A page whose result (its words with boxes) passes MAX_REPLY_BYTES: the server must not wait
    for a worker that is still writing it. That upload gets 413, the next is read as usual."""
    monkeypatch.setattr(sandbox, "MAX_REPLY_BYTES", 4096)
    client = ocr_client()
    replies: list = []
    thread = threading.Thread(
        target=lambda: replies.append(
            client.post(
                "/ocr",
                files={"file": ("dense.pdf", layered_pdf([LayeredPage(page_lines(30))]))},
                data={"words": "true"},
            )
        ),
        daemon=True,
    )
    thread.start()
    thread.join(60)
    assert replies, "the server hung waiting for the worker"
    assert_error(replies[0], 413, "too_large")
    assert "4,096" in replies[0].json()["error"]["message"]
    after = client.post("/ocr", files={"file": ("a.png", IMAGE)}, data={"lang": "en"})
    assert after.status_code == 200 and cer(ENGLISH[0], after.json()["pages"][0]["text"]) < 0.02
