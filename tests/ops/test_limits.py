"""API key, rate limit, body size limit and request timeout, in-process.

The slow-upload (408) and socket-level cases are in test_hostile.py against a real server.
"""

import asyncio
import threading
import time

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from service.error_handlers import install_handlers
from service.ocr.config import get_ocr_settings
from service.ops import install_ops
from service.ops import security as security_module
from service.ops.bodylimit import BodyLimitMiddleware
from service.ops.config import get_ops_settings
from service.ops.ratelimit import TokenBuckets

KEY = "s3cret-key-0123456789"


def assert_error(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert error["code"] == code
    assert error["message"]
    return error


def test_no_key_is_asked_for_while_api_key_is_unset_or_empty(ops_client):
    assert ops_client().get("/memory").status_code == 200
    assert ops_client(API_KEY="  ").get("/memory").status_code == 200


def test_api_key_in_either_header_and_never_for_health(ops_client):
    client = ops_client(API_KEY=KEY)
    assert client.get("/health").json() == {"status": "ok"}
    for headers in (
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": f"Basic {KEY}"},
        {"Authorization": f"Bearer {KEY[:-1]}"},
        {"X-API-Key": KEY + "x"},
    ):
        response = client.get("/memory", headers=headers)
        assert_error(response, 401, "unauthorized")
        assert response.headers["www-authenticate"].startswith("Bearer")
    for path in ("/ready", "/docs", "/openapi.json", "/metrics", "/nowhere"):
        assert client.get(path).status_code == 401, path
    assert_error(client.post("/analyze", json={"text": "hola"}), 401, "unauthorized")
    for headers in (
        {"Authorization": f"Bearer {KEY}"},
        {"authorization": f"bearer  {KEY} "},
        {"X-API-Key": KEY},
    ):
        assert client.get("/memory", headers=headers).status_code == 200, headers
    # Past the key check the request reaches the route: an empty text is the route's own 422.
    assert_error(client.post("/analyze", json={"text": ""}, headers={"X-API-Key": KEY}), 422, "invalid_input")


def test_api_key_is_compared_in_constant_time(ops_client, monkeypatch):
    compared = []

    def spy(a: bytes, b: bytes) -> bool:
        compared.append((len(a), len(b)))
        return real(a, b)

    real = security_module.hmac.compare_digest
    monkeypatch.setattr(security_module.hmac, "compare_digest", spy)
    client = ops_client(API_KEY=KEY)
    client.get("/memory", headers={"Authorization": "Bearer short", "X-API-Key": KEY})
    # Both headers compared, as fixed-length digests whatever the lengths of the keys.
    assert compared == [(32, 32), (32, 32)]


def test_rate_limit_answers_429_with_retry_after_and_spares_health(ops_client):
    client = ops_client(RATE_LIMIT_PER_MIN="3")
    assert [client.get("/memory").status_code for _ in range(3)] == [200, 200, 200]
    response = client.get("/memory")
    error = assert_error(response, 429, "rate_limited")
    assert int(response.headers["retry-after"]) == error["retry_after_s"] == 20  # one token per 20 s
    assert all(client.get("/health").status_code == 200 for _ in range(10))


def test_rate_limit_keys_on_the_checked_api_key_so_others_cannot_spend_its_quota(ops_client):
    client = ops_client(API_KEY=KEY, RATE_LIMIT_PER_MIN="3")
    authorized = {"X-API-Key": KEY}
    # Requests without the key (here from the same address) are refused before the rate limit
    # counts them against the key; they spend their address's bucket instead.
    assert [client.get("/memory").status_code for _ in range(3)] == [401, 401, 401]
    assert_error(client.get("/memory", headers={"X-API-Key": "guess"}), 429, "rate_limited")
    assert [client.get("/memory", headers=authorized).status_code for _ in range(3)] == [200, 200, 200]
    assert_error(client.get("/memory", headers=authorized), 429, "rate_limited")


def test_a_key_is_no_client_while_api_key_is_unset(ops_client):
    """Made-up keys are not checked then, so each must not open a fresh bucket."""
    client = ops_client(RATE_LIMIT_PER_MIN="2")
    statuses = [client.get("/memory", headers={"X-API-Key": f"made-up-{i}"}).status_code for i in range(3)]
    assert statuses == [200, 200, 429]


def test_token_buckets_refill_per_client_and_stay_bounded():
    now = [0.0]
    buckets = TokenBuckets(60, max_clients=3, clock=lambda: now[0])
    assert all(buckets.take("a") == 0 for _ in range(60))
    assert buckets.take("a") == pytest.approx(1.0)
    assert buckets.take("b") == 0  # another client has its own bucket
    now[0] += 1.0
    assert buckets.take("a") == 0
    assert buckets.take("a") == pytest.approx(1.0)
    for index in range(10):
        buckets.take(f"rotating-{index}")
    assert len(buckets) == 3


def test_body_over_the_limit_is_413_before_and_while_reading(ops_client):
    client = ops_client(MAX_JSON_BODY_MB="0.01")  # 10 KiB
    body = b'{"text": "' + b"x" * 20_000 + b'"}'
    declared = client.post("/analyze", content=body, headers={"content-type": "application/json"})
    assert_error(declared, 413, "too_large")
    assert "MAX_JSON_BODY_MB" in declared.json()["error"]["message"]
    streamed = client.post("/analyze", content=iter([body]), headers={"content-type": "application/json"})
    assert_error(streamed, 413, "too_large")
    # No content type (FastAPI parses JSON then), or another type than an upload: read whole too.
    assert_error(client.post("/analyze", content=body), 413, "too_large")
    assert_error(
        client.post("/analyze", content=body, headers={"content-type": "text/plain"}), 413, "too_large"
    )
    assert_error(client.post("/analyze", json={"text": ""}), 422, "invalid_input")


def test_the_upload_limit_stays_above_the_ocr_one(ops_client):
    client = ops_client(MAX_BODY_MB="1", OCR_MAX_UPLOAD_MB="2")
    upload = {"file": ("big.png", b"\x89PNG\r\n\x1a\n" + b"\0" * (2_500 * 1024), "image/png")}
    error = assert_error(client.post("/ocr", files=upload), 413, "too_large")
    assert "OCR_MAX_UPLOAD_MB" in error["message"]  # the OCR route's own, more precise answer


def test_the_body_stops_being_read_at_the_limit():
    """Chunks that would never end: the app is told the client left once the limit is passed."""
    pulled = 0
    sent: list[dict] = []
    seen_by_app: list[str] = []

    async def endless_receive() -> dict:
        nonlocal pulled
        pulled += 1
        return {"type": "http.request", "body": b"x" * 1024, "more_body": True}

    async def send(message: dict) -> None:
        sent.append(message)

    async def app(scope, receive, send) -> None:
        while True:
            message = await receive()
            seen_by_app.append(message["type"])
            if message["type"] == "http.disconnect":
                return

    upload = b"multipart/form-data; boundary=x"
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/analyze/file",
        "headers": [(b"content-type", upload)],
    }
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MAX_BODY_MB", "2")
        patch.setenv("OCR_MAX_UPLOAD_MB", "0.5")
        get_ops_settings.cache_clear()
        get_ocr_settings.cache_clear()
        try:
            asyncio.run(BodyLimitMiddleware(app)(scope, endless_receive, send))
        finally:
            get_ops_settings.cache_clear()
            get_ocr_settings.cache_clear()
    assert pulled == 2 * 1024 + 1  # 1 KiB chunks: the first one past 2 MB ends it
    assert seen_by_app[-1] == "http.disconnect"
    assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 413


def slow_app() -> tuple[FastAPI, threading.Event]:
    """An app of this test only (the service has no slow route): a sync route that takes 1.5 s."""
    finished = threading.Event()
    app = FastAPI()
    install_handlers(app)

    @app.get("/slow")
    def slow() -> dict:
        time.sleep(1.5)
        finished.set()
        return {"done": True}

    @app.get("/fast")
    def fast() -> dict:
        return {"done": True}

    install_ops(app)
    return app, finished


def test_timeout_answers_504_at_once_and_the_work_finishes_in_the_background(ops_env):
    ops_env(REQUEST_TIMEOUT_S="0.3")
    app, finished = slow_app()
    with TestClient(app, raise_server_exceptions=False) as client:
        started = time.perf_counter()
        response = client.get("/slow")
        assert time.perf_counter() - started < 1.2
        assert_error(response, 504, "timeout")
        assert "REQUEST_TIMEOUT_S=0.3" in response.json()["error"]["message"]
        assert not finished.is_set()
        assert client.get("/fast").json() == {"done": True}
        assert finished.wait(3)  # the thread could not be stopped; it ran to its end, unanswered


def test_no_timeout_when_it_is_zero(ops_env):
    ops_env(REQUEST_TIMEOUT_S="0")
    app, _ = slow_app()
    with TestClient(app, raise_server_exceptions=False) as client:
        assert client.get("/slow").json() == {"done": True}
