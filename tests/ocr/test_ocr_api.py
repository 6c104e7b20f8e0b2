"""`POST /ocr` end to end: real Tesseract on generated pages with known text."""

import asyncio
import dataclasses
import json
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from service.budget import Budget, rss_mb
from service.ocr import tessdata
from service.ocr.engine import TesseractEngine
from service.registry import get_registry
from tests.ocr.conftest import needs_tessdata
from tests.ocr.samples import (
    ENGLISH,
    SPANISH,
    blank_pdf,
    cer,
    encode,
    encrypted_pdf,
    needs_dejavu,
    pdf_of,
    png_header_only,
    text_page,
)

pytestmark = needs_tessdata

MakeClient = Callable[..., TestClient]


def post(client: TestClient, data: bytes, name: str = "upload", content_type: str | None = None, **form: str):
    file = (name, data, content_type) if content_type else (name, data)
    return client.post("/ocr", files={"file": file}, data=form)


def assert_error(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code, error
    assert error["message"]
    return error


@needs_dejavu
def test_spanish_png_is_read_with_accents(ocr_client: MakeClient) -> None:
    response = post(ocr_client(), encode(text_page(SPANISH)), "carta.png", lang="es")
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["format"], body["lang"], body["page_count"]) == ("png", "es", 1)
    (page,) = body["pages"]
    assert cer("\n".join(SPANISH), page["text"]) < 0.02, page["text"]
    assert page["page"] == 1 and not page["unreadable"] and page["confidence"] > 0.8
    assert page["seconds"] > 0 and body["seconds"] >= page["seconds"]


def test_english_jpeg_rgb(ocr_client: MakeClient) -> None:
    jpeg = encode(text_page(ENGLISH).convert("RGB"), "JPEG", quality=90)
    response = post(ocr_client(), jpeg, "scan.jpg", lang="en")
    assert response.status_code == 200, response.text
    assert response.json()["format"] == "jpeg"
    assert cer("\n".join(ENGLISH), response.json()["pages"][0]["text"]) < 0.02


def test_large_photo_is_downscaled_and_read(ocr_client: MakeClient) -> None:
    # 4000x3000 (12 MP) with big text: decoded at 1/2 scale in grayscale, read at 2000 px wide.
    photo = Image.new("RGB", (4000, 3000), (230, 225, 215))
    photo.paste(text_page(ENGLISH[:2], size=(3400, 500), font_size=72).convert("RGB"), (300, 1200))
    response = post(ocr_client(), encode(photo, "JPEG", quality=85), "photo.jpg", lang="en")
    assert response.status_code == 200, response.text
    assert cer("\n".join(ENGLISH[:2]), response.json()["pages"][0]["text"]) < 0.02


def test_transparent_webp_and_tiff(ocr_client: MakeClient) -> None:
    client = ocr_client()
    text = text_page(ENGLISH[:1])
    # Black text drawn only in the alpha channel over transparent black: read on white paper.
    rgba = Image.new("RGBA", text.size, (0, 0, 0, 0))
    rgba.putalpha(text.point(lambda value: 255 - value))
    for data, fmt in ((encode(rgba, "WEBP", lossless=True), "webp"), (encode(text, "TIFF"), "tiff")):
        response = post(client, data)
        assert response.status_code == 200, response.text
        assert response.json()["format"] == fmt
        assert cer(ENGLISH[0], response.json()["pages"][0]["text"]) < 0.02


def test_pdf_page_selection_and_default(ocr_client: MakeClient) -> None:
    client = ocr_client()
    lines = [f"Page {word} of the quarterly report." for word in ("one", "two", "three")]
    pdf = pdf_of([text_page([line], size=(1275, 160)) for line in lines])
    response = post(client, pdf, "report.pdf", "application/pdf", pages="3,1", lang="en")
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["format"], body["page_count"]) == ("pdf", 3)
    assert [page["page"] for page in body["pages"]] == [1, 3]
    for page in body["pages"]:
        assert cer(lines[page["page"] - 1], page["text"]) < 0.02, page

    response = post(client, pdf, "report.pdf", lang="en")  # no pages: all of them
    assert [page["page"] for page in response.json()["pages"]] == [1, 2, 3]


def test_blank_page_is_flagged_unreadable(ocr_client: MakeClient) -> None:
    response = post(ocr_client(), encode(Image.new("L", (800, 600), 255)))
    assert response.status_code == 200, response.text
    (page,) = response.json()["pages"]
    assert page == {**page, "text": "", "unreadable": True, "confidence": 0.0}


def test_engine_is_loaded_once_per_language(ocr_client: MakeClient) -> None:
    client = ocr_client()
    image = encode(text_page(ENGLISH[:1], size=(1000, 120)))
    for _ in range(2):
        assert post(client, image, lang="en").status_code == 200
    registry = get_registry()
    assert registry.counters["loads"] == 1
    (entry,) = registry.snapshot()
    assert (entry["key"], entry["kind"], entry["engine"], entry["lang"]) == (
        "ocr:eng",
        "ocr",
        "tesseract",
        "eng",
    )
    assert post(client, image, lang="es").status_code == 200
    assert registry.counters["loads"] == 2


BAD_UPLOADS = [
    # (name, data, declared content type, form fields, status, error code)
    ("empty.png", b"", None, {}, 422, "invalid_input"),
    ("noise.bin", bytes(range(256)) * 8, None, {}, 415, "unsupported_media_type"),
    ("notes.txt", b"just some text, not an image\n" * 10, "text/plain", {}, 415, "unsupported_media_type"),
    ("cut.png", encode(text_page(ENGLISH))[:300], None, {}, 422, "undecodable_file"),
    ("doc.png", pdf_of([text_page(ENGLISH[:1])]), "image/png", {}, 415, "unsupported_media_type"),
    ("scan.pdf", encode(text_page(ENGLISH[:1])), "application/pdf", {}, 415, "unsupported_media_type"),
    ("broken.pdf", b"%PDF-1.7\n1 0 obj << /Type /Catalog >> garbage", None, {}, 422, "undecodable_file"),
    ("locked.pdf", encrypted_pdf(), None, {}, 422, "encrypted_pdf"),
    ("bomb.png", png_header_only(20_000, 20_000), None, {}, 413, "too_large"),
    ("tiny.png", encode(Image.new("L", (4, 4), 255)), None, {}, 422, "invalid_input"),
    ("page.png", encode(Image.new("L", (64, 64), 255)), None, {"pages": "2"}, 422, "invalid_input"),
    ("page.png", encode(Image.new("L", (64, 64), 255)), None, {"lang": "fr"}, 422, "invalid_input"),
    ("three.pdf", blank_pdf(612, 792, pages=3), None, {"pages": "2-4"}, 422, "invalid_input"),
    ("three.pdf", blank_pdf(612, 792, pages=3), None, {"pages": "one"}, 422, "invalid_input"),
    ("three.pdf", blank_pdf(612, 792, pages=3), None, {"pages": "3-1"}, 422, "invalid_input"),
]


@pytest.mark.parametrize(("name", "data", "content_type", "form", "status", "code"), BAD_UPLOADS)
def test_bad_uploads_get_a_json_4xx(
    ocr_client: MakeClient,
    name: str,
    data: bytes,
    content_type: str | None,
    form: dict,
    status: int,
    code: str,
) -> None:
    client = ocr_client()
    assert_error(post(client, data, name, content_type, **form), status, code)
    ok = post(client, encode(Image.new("L", (64, 64), 255)))
    assert ok.status_code == 200 and ok.json()["pages"][0]["unreadable"]


def test_mismatch_message_says_what_was_received(ocr_client: MakeClient) -> None:
    pdf = blank_pdf(612, 792)
    error = assert_error(post(ocr_client(), pdf, "x.png", "image/png"), 415, "unsupported_media_type")
    assert "image/png" in error["message"] and "PDF" in error["message"] and error["detected"] == "pdf"


def test_page_and_upload_limits(ocr_client: MakeClient) -> None:
    client = ocr_client(OCR_MAX_PAGES="2", OCR_MAX_UPLOAD_MB="0.01")
    error = assert_error(post(client, blank_pdf(612, 792, pages=3)), 413, "too_large")
    assert "OCR_MAX_PAGES=2" in error["message"]
    error = assert_error(post(client, blank_pdf(612, 792, pages=3), pages="1-3"), 413, "too_large")
    assert "OCR_MAX_PAGES=2" in error["message"]
    assert post(client, blank_pdf(612, 792, pages=3), pages="2-3").status_code == 200
    error = assert_error(post(client, b"\x89PNG\r\n\x1a\n" + bytes(20_000)), 413, "too_large")
    assert "OCR_MAX_UPLOAD_MB=0.01" in error["message"]


def test_body_over_the_route_limit_is_refused_while_streaming(ocr_client: MakeClient) -> None:
    response = post(ocr_client(), b"\0" * (21 * 1024 * 1024))
    assert response.status_code == 413
    assert "error" in response.json()


def test_chunked_body_is_cut_off_at_the_limit(ocr_client: MakeClient) -> None:
    """Without a Content-Length, the route stops reading once the body passes the limit."""
    app = ocr_client(OCR_MAX_UPLOAD_MB="0.1").app
    head = b'--xyz\r\nContent-Disposition: form-data; name="file"; filename="x.png"\r\n\r\n\x89PNG\r\n\x1a\n'
    pulled = 0
    sent: list[dict] = []

    async def receive() -> dict:
        nonlocal pulled
        pulled += 1
        return {"type": "http.request", "body": head if pulled == 1 else bytes(64 * 1024), "more_body": True}

    async def send(message: dict) -> None:
        sent.append(message)

    headers = [(b"content-type", b"multipart/form-data; boundary=xyz"), (b"transfer-encoding", b"chunked")]
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
    }
    scope |= {"path": "/ocr", "raw_path": b"/ocr", "query_string": b"", "root_path": "", "headers": headers}
    asyncio.run(app(scope, receive, send))
    assert sent[0]["status"] == 413, sent
    assert json.loads(sent[1]["body"])["error"]["code"] == "too_large"
    assert pulled <= 5  # 0.1 MB + 64 KiB of multipart slack, in 64 KiB chunks


def test_huge_pdf_page_is_refused_before_it_renders(ocr_client: MakeClient) -> None:
    # A 200 x 200 inch page at 150 dpi would be 30000 x 30000 pixels (900 MB); within the pixel
    # cap it would be 7.5 dpi, which no text survives.
    before = rss_mb()
    error = assert_error(post(ocr_client(), blank_pdf(200 * 72, 200 * 72)), 413, "too_large")
    assert error["page"] == 1 and error["dpi"] < 8, error
    assert rss_mb() - before < 50


def test_a_poster_page_is_read_at_a_lower_dpi_within_the_pixel_cap(ocr_client: MakeClient) -> None:
    # A2 (16.5 x 23.4 inches) fits OCR_PAGE_PIXELS at ~76 dpi: legible, so it is read.
    response = post(ocr_client(), blank_pdf(16.5 * 72, 23.4 * 72))
    assert response.status_code == 200, response.text
    assert response.json()["pages"][0]["unreadable"]


def test_budget_refuses_a_request_that_cannot_fit(
    ocr_client: MakeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = ocr_client()
    page = encode(text_page(ENGLISH[:1], size=(1275, 1650)))
    assert post(client, page, lang="en").status_code == 200  # the engine is now loaded
    registry = get_registry()
    # 10 MB of headroom over what the budget counts: a page reserves OCR_WORK_MB.
    limit_mb = registry.used_mb() + 10
    monkeypatch.setattr(registry, "budget", Budget(limit_mb=limit_mb, source="test", margin_mb=0))
    monkeypatch.setattr(registry, "admission_wait_s", 0.5)  # nothing running will make room
    response = post(client, page, lang="en")
    error = assert_error(response, 503, "over_memory_budget")
    assert int(response.headers["Retry-After"]) > 0 and error["needed_mb"] > error["headroom_mb"]
    response = post(client, blank_pdf(612, 792), lang="en")
    assert_error(response, 503, "over_memory_budget")
    monkeypatch.setattr(registry, "budget", Budget(limit_mb=8192, source="test", margin_mb=0))
    assert post(client, page, lang="en").status_code == 200
    assert registry.counters["loads"] == 1


@pytest.mark.slow
def test_failing_recognition_stops_the_pdf_renderer(monkeypatch: pytest.MonkeyPatch) -> None:
    """In the worker: an engine failure mid-PDF is that job's error, and no renderer is left."""
    calls = []

    def fail_on_second_page(self: TesseractEngine, image: Image.Image, words: bool = False):
        calls.append(image.size)
        if len(calls) == 2:
            raise RuntimeError("simulated engine failure")
        return original(self, image, words)

    original = TesseractEngine.recognize
    monkeypatch.setattr(TesseractEngine, "recognize", fail_on_second_page)
    replies = run_worker_job(blank_pdf(612, 792, pages=6), "pdf")
    assert replies[-1]["error"]["code"] == "undecodable_file", replies
    assert "simulated engine failure" in replies[-1]["error"]["message"]
    assert len(calls) == 2 and sum("page" in reply for reply in replies) == 1
    assert not [thread for thread in threading.enumerate() if thread.name == "ocr-pdf-render"]
    monkeypatch.setattr(TesseractEngine, "recognize", original)
    assert run_worker_job(blank_pdf(612, 792, pages=2), "pdf")[-1].get("done")


def run_worker_job(data: bytes, kind: str, **options: object) -> list[dict]:
    """One job through `service.ocr.worker.Worker` in this process, its replies in order."""
    from service.ocr.config import OcrSettings
    from service.ocr.worker import Worker

    class Conn:
        def __init__(self) -> None:
            self.sent: list[dict] = []

        def send_bytes(self, raw: bytes) -> None:
            self.sent.append(json.loads(raw))

        def recv_bytes(self, maxlength: int) -> bytes:
            return data

    conn = Conn()
    worker = Worker(conn)  # type: ignore[arg-type]
    worker.op_load({"code": "spa", "tessdata": str(tessdata.resolve_tessdata("spa"))})
    limits = dataclasses.asdict(OcrSettings(_env_file=None).job_limits())
    worker.op_ocr({"kind": kind, "options": options, "code": "spa", "limits": limits})
    worker.op_unload({"code": "spa"})
    return conn.sent[1:-1]


def test_analyze_adds_sentiment_to_readable_pages(
    ocr_client: MakeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    sentiment = pytest.importorskip(
        "service.sentiment.service", reason="the sentiment service is not there yet"
    )
    calls = []

    def fake_analyze(texts: list[str], task: str, lang: str, fallback: bool = False) -> list:
        calls.append((list(texts), task, lang, fallback))
        return [sentiment.Prediction(label="POS", probas={"NEG": 0.1, "NEU": 0.1, "POS": 0.8}) for _ in texts]

    monkeypatch.setattr(sentiment, "analyze", fake_analyze)
    pdf = pdf_of([text_page(ENGLISH[:1], size=(1275, 160)), Image.new("L", (1275, 160), 255)])
    response = post(ocr_client(), pdf, lang="en", analyze="true")
    assert response.status_code == 200, response.text
    first, blank = response.json()["pages"]
    assert first["sentiment"] == {"label": "POS", "probas": {"NEG": 0.1, "NEU": 0.1, "POS": 0.8}}
    assert blank["unreadable"] and blank["sentiment"] is None
    assert calls == [([first["text"]], "sentiment", "en", False)]


def test_missing_language_data_is_a_503_naming_the_install(
    ocr_client: MakeClient, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(tessdata, "pypi_dir", lambda: tmp_path)
    monkeypatch.setattr(tessdata, "DEBIAN_DIRS", ())
    monkeypatch.delenv("TESSDATA_PREFIX", raising=False)
    client = ocr_client(OCR_TESSDATA=str(tmp_path))
    error = assert_error(post(client, encode(text_page(SPANISH[:1]))), 503, "model_unavailable")
    assert "python -m service.ocr.tessdata install spa" in error["message"]


def test_openapi_documents_the_route(ocr_client: MakeClient) -> None:
    operation = ocr_client().get("/openapi.json").json()["paths"]["/ocr"]["post"]
    assert {"200", "413", "415", "422", "503"} <= set(operation["responses"])
    assert "multipart/form-data" in operation["requestBody"]["content"]
