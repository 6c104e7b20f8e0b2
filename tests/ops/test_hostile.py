"""A hostile corpus against a real server on 127.0.0.1: every case gets a 4xx JSON error, and the
server goes on serving good requests after each one.

Bad texts, oversized and binary bodies, junk Unicode, 10k-item batches, deep JSON, wrong content
types, decompression bombs, corrupt and oversized PDFs, and slow-loris uploads (which need a real
socket: they are cut by REQUEST_TIMEOUT_S with a 408).
"""

import gzip
import json
import os
import select
import socket
import time
import zlib
from collections.abc import Iterator

import pytest

from bench.server import Response, Server, multipart, read_response, request_head
from tests.ocr.samples import (
    ENGLISH,
    blank_pdf,
    encode,
    encrypted_pdf,
    pdf_from_objects,
    png_header_only,
    text_page,
)
from tests.support import MINILM, needs_minilm, real_server, tessdata_missing

pytestmark = [
    pytest.mark.slow,
    needs_minilm,
    pytest.mark.skipif(tessdata_missing() is not None, reason=f"{tessdata_missing()}"),
]

JSON = {"Content-Type": "application/json"}
GOOD_TEXT = {"text": "¡Qué buen día hace hoy! Me encanta."}
REQUEST_TIMEOUT_S = 2
MAX_JSON_BODY_MB = 1
OCR_MAX_UPLOAD_MB = 2


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[Server]:
    with real_server(
        tmp_path_factory.mktemp("hostile"),
        "--timeout-graceful-shutdown",
        "5",
        BACKEND="torch",
        MODEL_SENTIMENT_ES=str(MINILM),
        MODEL_SENTIMENT_EN=str(MINILM),
        MEMORY_BUDGET_MB="4096",
        MAX_BATCH="32",
        REQUEST_TIMEOUT_S=str(REQUEST_TIMEOUT_S),
        MAX_JSON_BODY_MB=str(MAX_JSON_BODY_MB),
        OCR_MAX_UPLOAD_MB=str(OCR_MAX_UPLOAD_MB),
    ) as server:
        # Loading torch and the model takes longer than the 2 s timeout: the first requests get 504
        # while the load goes on in the background, and a later one finds the model loaded.
        deadline = time.monotonic() + 60
        while server.request("POST", "/analyze", json.dumps(GOOD_TEXT).encode(), JSON).status == 504:
            assert time.monotonic() < deadline, server.output()
            time.sleep(1)
        # So does starting the OCR worker process with its engine, under a loaded machine.
        body, form_type = multipart({"lang": "en"}, "page.png", GOOD_PNG, "image/png")
        while server.request("POST", "/ocr", body, {"Content-Type": form_type}).status == 504:
            assert time.monotonic() < deadline, server.output()
            time.sleep(1)
        assert_serving(server)
        yield server


def assert_serving(server: Server) -> None:
    response = server.request("POST", "/analyze", json.dumps(GOOD_TEXT).encode(), JSON)
    assert response.status == 200, response.body
    assert response.json()["label"] in {"POS", "NEG", "NEU"}
    body, form_type = multipart({"lang": "en"}, "page.png", GOOD_PNG, "image/png")
    response = server.request("POST", "/ocr", body, {"Content-Type": form_type})
    assert response.status == 200, response.body
    assert "quick brown fox" in response.json()["pages"][0]["text"]


def assert_json_4xx(response: Response, status: int | set[int], code: str | None = None) -> None:
    statuses = {status} if isinstance(status, int) else status
    assert response.status in statuses, (response.status, response.body[:300])
    assert response.headers["content-type"] == "application/json", response.headers
    error = response.json()["error"]
    assert error["message"] and "Traceback" not in response.body.decode("utf-8", "replace")
    if code is not None:
        assert error["code"] == code, error


GOOD_PNG = encode(text_page(ENGLISH[:1]))


def analyze(payload: object) -> tuple[bytes, dict[str, str]]:
    return json.dumps(payload).encode(), JSON


def ocr(data: bytes, declared: str, **fields: str) -> tuple[bytes, dict[str, str]]:
    body, form_type = multipart({"lang": "en", **fields}, "upload", data, declared)
    return body, {"Content-Type": form_type}


def image_pdf(width: int, height: int) -> bytes:
    """A one-page PDF drawing a width x height gray image of zeros: small file, huge decode."""
    data = zlib.compress(b"\0" * min(width * height, 20_000_000), 9)
    image = b"<< /Type /XObject /Subtype /Image /Width %d /Height %d /ColorSpace /DeviceGray " % (
        width,
        height,
    )
    image += (
        b"/BitsPerComponent 8 /Filter /FlateDecode /Length %d >>\nstream\n" % len(data)
        + data
        + b"\nendstream"
    )
    return pdf_from_objects(
        [
            b"<< /Type /Catalog /Pages 2 0 R >>",
            b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
            b"/Resources << /XObject << /Im0 4 0 R >> >> /Contents 5 0 R >>",
            image,
            b"<< /Length 30 >>\nstream\nq 612 0 0 792 0 0 cm /Im0 Do Q\nendstream",
        ]
    )


# (id, method, path, body, headers, expected status(es), expected error code or None)
CASES = [
    # Empty, huge and binary texts.
    ("empty-text", "POST", "/analyze", *analyze({"text": ""}), 422, "invalid_input"),
    ("whitespace-text", "POST", "/analyze", *analyze({"text": " \n\t\u3000 "}), 422, "invalid_input"),
    ("no-body", "POST", "/analyze", b"", JSON, 422, "invalid_input"),
    ("empty-object", "POST", "/analyze", *analyze({}), 422, "invalid_input"),
    ("text-over-max-chars", "POST", "/analyze", *analyze({"text": "x" * 100_000}), 422, "invalid_input"),
    ("body-over-json-limit", "POST", "/analyze", *analyze({"text": "x" * 3_000_000}), 413, "too_large"),
    ("binary-body", "POST", "/analyze", os.urandom(4096), JSON, 400, None),
    ("binary-body-no-type", "POST", "/analyze", os.urandom(4096), {}, 422, None),
    ("invalid-utf8", "POST", "/analyze", b'{"text": "\xff\xfe\xfd"}', JSON, 400, None),
    # Unicode junk.
    ("lone-surrogate", "POST", "/analyze", b'{"text": "abc \\ud800 def"}', JSON, 422, "invalid_input"),
    (
        "nul-and-controls",
        "POST",
        "/analyze",
        *analyze({"text": "\x00\x01\x02\x7f\x9f"}),
        422,
        "invalid_input",
    ),
    (
        "zero-width-only",
        "POST",
        "/analyze",
        *analyze({"text": "\u200b\u200c\u200d\u2060\ufeff" * 50}),
        422,
        None,
    ),
    ("bidi-overrides", "POST", "/analyze", *analyze({"text": "\u202e\u202d\u2066\u2069" * 20}), 422, None),
    ("noncharacters", "POST", "/analyze", *analyze({"text": "\ufffe\uffff\U0010ffff"}), 422, None),
    ("private-use", "POST", "/analyze", *analyze({"texts": ["ok", "\ue000\uf8ff" * 30]}), 422, None),
    ("emptied-by-preprocessing", "POST", "/analyze", *analyze({"text": "☹☹☹☹"}), 422, "invalid_input"),
    # Batches.
    ("10k-batch", "POST", "/analyze", *analyze({"texts": ["hola"] * 10_000}), 422, "invalid_input"),
    ("10k-batch-huge", "POST", "/analyze", *analyze({"texts": ["hola" * 100] * 10_000}), 413, "too_large"),
    ("batch-of-non-strings", "POST", "/analyze", *analyze({"texts": [1, None, {"a": 1}, [2]]}), 422, None),
    # Nested JSON.
    ("deep-array", "POST", "/analyze", b"[" * 200_000 + b"]" * 200_000, JSON, 422, "invalid_input"),
    ("deep-object", "POST", "/analyze", b'{"a":' * 100_000 + b"1" + b"}" * 100_000, JSON, 422, None),
    ("nested-text", "POST", "/analyze", *analyze({"text": {"a": {"b": {"c": ["d"]}}}}), 422, "invalid_input"),
    # Wrong content types and methods.
    ("text-plain", "POST", "/analyze", b"hola", {"Content-Type": "text/plain"}, 422, None),
    ("xml", "POST", "/analyze", b"<text>hola</text>", {"Content-Type": "application/xml"}, 422, None),
    (
        "form-urlencoded",
        "POST",
        "/analyze",
        b"text=hola",
        {"Content-Type": "application/x-www-form-urlencoded"},
        422,
        None,
    ),
    ("multipart-to-analyze", "POST", "/analyze", *ocr(b"hola", "text/plain"), 422, None),
    ("json-to-ocr", "POST", "/ocr", *analyze(GOOD_TEXT), 422, None),
    ("text-declared-png", "POST", "/ocr", *ocr(b"just some text, not an image", "image/png"), 415, None),
    ("png-declared-pdf", "POST", "/ocr", *ocr(GOOD_PNG, "application/pdf"), 415, None),
    ("empty-upload", "POST", "/ocr", *ocr(b"", "image/png"), 422, None),
    ("get-analyze", "GET", "/analyze", b"", {}, 405, "http_error"),
    ("unknown-path", "GET", "/nowhere/../etc/passwd", b"", {}, 404, "http_error"),
    # Decompression bombs.
    (
        "gzip-body",
        "POST",
        "/analyze",
        gzip.compress(b" " * 50_000_000),
        {**JSON, "Content-Encoding": "gzip"},
        400,
        None,
    ),
    ("png-bomb", "POST", "/ocr", *ocr(png_header_only(30_000, 30_000), "image/png"), 413, "too_large"),
    ("pdf-image-bomb", "POST", "/ocr", *ocr(image_pdf(50_000, 50_000), "application/pdf"), 413, "too_large"),
    # Corrupt and oversized PDFs.
    ("pdf-garbage", "POST", "/ocr", *ocr(b"%PDF-1.7\n" + os.urandom(3000), "application/pdf"), 422, None),
    ("pdf-truncated", "POST", "/ocr", *ocr(blank_pdf(612, 792)[:120], "application/pdf"), 422, None),
    ("pdf-encrypted", "POST", "/ocr", *ocr(encrypted_pdf(), "application/pdf"), 422, "encrypted_pdf"),
    ("pdf-huge-page", "POST", "/ocr", *ocr(blank_pdf(14_400, 14_400), "application/pdf"), 413, "too_large"),
    (
        "pdf-too-many-pages",
        "POST",
        "/ocr",
        *ocr(blank_pdf(612, 792, pages=500), "application/pdf"),
        413,
        None,
    ),
    (
        "pdf-bad-page-range",
        "POST",
        "/ocr",
        *ocr(blank_pdf(612, 792), "application/pdf", pages="7-9"),
        422,
        None,
    ),
    ("upload-over-limit", "POST", "/ocr", *ocr(os.urandom(3 * 1024 * 1024), "image/png"), 413, "too_large"),
]


@pytest.mark.parametrize(
    ("method", "path", "body", "headers", "status", "code"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_hostile_input_gets_4xx_json_and_the_server_goes_on(
    server, method, path, body, headers, status, code
):
    assert_json_4xx(server.request(method, path, body, headers), status, code)
    assert_serving(server)


def test_declared_oversize_upload_is_refused_before_it_is_sent(server):
    """Content-Length says 50 MB; the 413 comes back with none of it sent."""
    with server.connect(timeout=10) as sock:
        _, headers = ocr(b"", "image/png")
        sock.sendall(request_head("POST", "/ocr", 50 * 1024 * 1024, headers))
        assert_json_4xx(read_response(sock), 413, "too_large")
    assert_serving(server)


def test_chunked_upload_is_cut_at_the_limit(server):
    """No Content-Length: the bytes are counted as they arrive, and the 413 comes at the limit."""
    chunk = os.urandom(256 * 1024)
    framed, headers = ocr(b"<file>", "image/png")
    part_head = framed[: framed.index(b"<file>")]  # the form field and the file part's headers
    sent, meant = 0, 20 * OCR_MAX_UPLOAD_MB * 1024 * 1024
    with server.connect(timeout=10) as sock:
        sock.sendall(request_head("POST", "/ocr", None, {**headers, "Transfer-Encoding": "chunked"}))
        sock.sendall(b"%x\r\n%s\r\n" % (len(part_head), part_head))
        while sent < meant:
            if select.select([sock], [], [], 0)[0]:
                break  # the server has answered
            try:
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += len(chunk)
        assert_json_4xx(read_response(sock), 413, "too_large")
    assert sent < meant / 4  # the limit plus what the kernel's socket buffers took in
    assert_serving(server)


def trickle(server: Server, path: str, body: bytes, headers: dict[str, str]) -> tuple[Response, float, int]:
    """Send the head, then one byte every 0.25 s, until the server answers."""
    started = time.monotonic()
    with server.connect(timeout=15) as sock:
        sock.sendall(request_head("POST", path, len(body), headers))
        sent = 0
        while sent < len(body) and not select.select([sock], [], [], 0.25)[0]:
            try:
                sock.sendall(body[sent : sent + 1])
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += 1
        return read_response(sock), time.monotonic() - started, sent


@pytest.mark.parametrize("target", ["analyze", "ocr"])
def test_slow_loris_upload_is_cut_by_the_request_timeout(server, target):
    body, headers = analyze(GOOD_TEXT) if target == "analyze" else ocr(GOOD_PNG, "image/png")
    response, seconds, sent = trickle(server, f"/{target}", body, headers)
    assert_json_4xx(response, 408, "request_timeout")
    assert REQUEST_TIMEOUT_S <= seconds < REQUEST_TIMEOUT_S + 2
    assert sent < len(body)
    assert_serving(server)


def test_many_hostile_connections_at_once_leave_the_server_serving(server):
    """Twenty idle half-requests hold connections; good requests are still answered meanwhile."""
    idle: list[socket.socket] = []
    try:
        for _ in range(20):
            sock = server.connect(timeout=10)
            sock.sendall(request_head("POST", "/analyze", 1000, JSON) + b'{"text": "')
            idle.append(sock)
        assert_serving(server)
        for sock in idle:
            assert_json_4xx(read_response(sock), 408, "request_timeout")
    finally:
        for sock in idle:
            sock.close()
    assert_serving(server)


def compact(payload: object) -> bytes:
    return json.dumps(payload, separators=(",", ":")).encode()


def with_headers(count: int, size: int) -> dict[str, str]:
    return {f"X-Junk-{index}": "v" * size for index in range(count)}


# Bodies just under MAX_JSON_BODY_MB that cannot be valid, refused on their shape before per-item
# validation, and headers h11 refuses: (id, method, path, body, headers, status, code).
SHAPE_CASES = [
    ("ints-in-texts", "POST", "/analyze", compact({"texts": [1] * 400_000}), JSON, 422, "invalid_input"),
    ("strings-in-texts", "POST", "/analyze", compact({"texts": ["hola"] * 120_000}), JSON, 422, None),
    ("objects-in-texts", "POST", "/analyze", compact({"texts": [{}] * 300_000}), JSON, 422, None),
    ("lists-in-texts", "POST", "/analyze", compact({"texts": [[]] * 300_000}), JSON, 422, None),
    (
        "unknown-keys",
        "POST",
        "/analyze",
        compact({"text": "hola", **{f"k{i}": 0 for i in range(80_000)}}),
        JSON,
        422,
        "invalid_input",
    ),
    ("one-huge-key", "POST", "/analyze", compact({"text": "hola", "k" * 900_000: 0}), JSON, 422, None),
    ("bad-items-in-a-batch", "POST", "/analyze", compact({"texts": [1] * 32}), JSON, 422, "invalid_input"),
    (
        "deep-texts",
        "POST",
        "/analyze",
        b'{"texts":' + b"[" * 500_000 + b"]" * 500_000 + b"}",
        JSON,
        422,
        None,
    ),
    (
        "deep-objects-in-text",
        "POST",
        "/analyze",
        b'{"text":' + b'{"a":' * 150_000 + b"1" + b"}" * 150_000 + b"}",
        JSON,
        422,
        None,
    ),
    ("huge-int-literal", "POST", "/analyze", b'{"text":' + b"9" * 900_000 + b"}", JSON, 400, None),
    ("huge-float-literal", "POST", "/analyze", b'{"text":1e' + b"9" * 1000 + b"}", JSON, 422, None),
    ("non-finite-literals", "POST", "/analyze", b'{"texts":[NaN,Infinity,-Infinity]}', JSON, 422, None),
    ("many-headers", "GET", "/health", b"", with_headers(400, 50), 431, "headers_too_large"),
    ("huge-header-line", "GET", "/health", b"", with_headers(1, 20_000), 431, "headers_too_large"),
    ("huge-request-line", "GET", "/health?" + "q" * 20_000, b"", {}, 431, "headers_too_large"),
    ("header-without-colon", "GET", "/health", b"", {"X-Broken\r\nno colon here": "x"}, 400, "invalid_http"),
]


@pytest.mark.parametrize(
    ("method", "path", "body", "headers", "status", "code"),
    [case[1:] for case in SHAPE_CASES],
    ids=[case[0] for case in SHAPE_CASES],
)
def test_what_cannot_be_valid_is_refused_small_and_the_server_goes_on(
    server, method, path, body, headers, status, code
):
    assert len(body) < MAX_JSON_BODY_MB * 1024 * 1024
    response = server.request(method, path, body, headers)
    assert_json_4xx(response, status, code)
    error = response.json()["error"]
    assert len(error.get("problems", [])) <= 10
    assert len(response.body) < 2000  # never more than the request: at most 10 clipped problems
    if code == "invalid_input" and path == "/analyze" and body.count(b",") > 10:
        assert (
            error.get("left_out", 0) > 0 or "MAX_BATCH" in error["message"] or "unknown" in error["message"]
        )
    assert_serving(server)


def test_hostile_jsonl_lines_are_their_rows_errors_and_the_stream_goes_on(server):
    """Deep nesting and non-finite ids in /analyze/file: those rows' errors, every line strict JSON."""
    lines = [
        b'{"text": "me encanta", "id": 1}',
        b"[" * 60_000 + b"]" * 60_000,
        b'{"text": "hola", "id": NaN}',
        b'{"text": "hola", "id": 1e999}',
        b'{"text": "hola", "id": ' + b"[" * 990 + b"]" * 990 + b"}",
        b'{"text": "lo odio", "id": 6}',
    ]
    body, form_type = multipart({"id_column": "id"}, "rows.jsonl", b"\n".join(lines), "application/x-ndjson")
    response = server.request("POST", "/analyze/file", body, {"Content-Type": form_type})
    assert response.status == 200, response.body[:300]

    def refuse(name: str) -> None:
        raise ValueError(f"{name} in an NDJSON line")

    rows = [json.loads(line, parse_constant=refuse) for line in response.body.decode().splitlines()]
    assert [row["row"] for row in rows] == [1, 2, 3, 4, 5, 6]
    assert [("label" in row) for row in rows] == [True, False, False, False, False, True]
    assert all(row["error"]["code"] == "invalid_input" for row in rows[1:5])
    assert_serving(server)
