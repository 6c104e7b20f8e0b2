"""Waiting for the OCR worker holds a place in line, nothing else: no reservation, no engine, no
bytes in memory; past OCR_QUEUE_MAX waiting, a request is refused at once (503 + Retry-After)."""

import threading
import time
from collections.abc import Callable, Iterator

import pytest
from fastapi.testclient import TestClient

from service.budget import Budget
from service.ocr.sandbox import OcrWorker, get_worker
from service.registry import get_registry
from tests.ocr.conftest import needs_tessdata
from tests.ocr.samples import ENGLISH, encode, text_page

pytestmark = needs_tessdata

MB = 1024 * 1024
QUEUE_MAX = 2


def post(client: TestClient, data: bytes):
    return client.post("/ocr", files={"file": ("page.png", data)}, data={"lang": "en"})


@pytest.fixture
def held(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[threading.Event, threading.Event]]:
    """(running, release): a job in the worker sets `running` and waits for `release`."""
    running, release = threading.Event(), threading.Event()
    original = OcrWorker.run

    def run_when_released(self, job, code, settings):
        running.set()
        assert release.wait(30)
        return original(self, job, code, settings)

    monkeypatch.setattr(OcrWorker, "run", run_when_released)
    yield running, release
    release.set()


def wait_for(condition: Callable[[], bool], timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_waiting_uploads_reserve_nothing_and_the_queue_is_bounded(
    ocr_client: Callable[..., TestClient], held: tuple[threading.Event, threading.Event]
) -> None:
    running, release = held
    client = ocr_client(OCR_QUEUE_MAX=str(QUEUE_MAX), OCR_WORK_MB="64")
    page = encode(text_page(ENGLISH[:1], size=(1000, 120)))
    statuses: list[int] = []
    threads = [threading.Thread(target=lambda: statuses.append(post(client, page).status_code))]
    threads[0].start()
    assert running.wait(20)
    registry, worker = get_registry(), get_worker()
    # The one running holds OCR_WORK_MB and the worker's copy of its file.
    running_mb = 64 + len(page) / MB
    assert registry.reserved_mb == pytest.approx(running_mb)

    for _ in range(QUEUE_MAX):
        threads.append(threading.Thread(target=lambda: statuses.append(post(client, page).status_code)))
        threads[-1].start()
    wait_for(lambda: worker.waiting == 1 + QUEUE_MAX)
    time.sleep(0.2)  # were they holding anything, they would have reserved it by now
    assert registry.reserved_mb == pytest.approx(running_mb)
    assert registry.snapshot()[0]["running"] == 1

    started = time.monotonic()
    refused = post(client, page)
    assert time.monotonic() - started < 2
    assert refused.status_code == 503, refused.text
    assert refused.json()["error"]["code"] == "overloaded"
    assert f"OCR_QUEUE_MAX={QUEUE_MAX}" in refused.json()["error"]["message"]
    assert int(refused.headers["Retry-After"]) > 0

    release.set()
    for thread in threads:
        thread.join(60)
    assert statuses == [200] * (1 + QUEUE_MAX)
    assert registry.reserved_mb == 0 and worker.waiting == 0


def test_other_work_is_admitted_while_uploads_wait(
    ocr_client: Callable[..., TestClient],
    held: tuple[threading.Event, threading.Event],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Room for one OCR job and a little more: the waiting uploads take none of that little, so
    work beside them (what an /analyze batch reserves) is admitted at once, not after them."""
    running, release = held
    client = ocr_client(OCR_QUEUE_MAX=str(QUEUE_MAX), OCR_WORK_MB="64")
    page = encode(text_page(ENGLISH[:1], size=(1000, 120)))
    release.set()
    assert post(client, page).status_code == 200  # the engine is loaded
    running.clear()
    release.clear()
    registry = get_registry()
    monkeypatch.setattr(
        registry, "budget", Budget(limit_mb=registry.used_mb() + 64 + 30, source="test", margin_mb=0)
    )
    threads = [threading.Thread(target=post, args=(client, page)) for _ in range(1 + QUEUE_MAX)]
    for thread in threads:
        thread.start()
    assert running.wait(20)
    wait_for(lambda: get_worker().waiting == 1 + QUEUE_MAX)
    monkeypatch.setattr(registry, "admission_wait_s", 0.5)
    started = time.monotonic()
    with registry.reserve(10, "a batch of texts"):
        assert time.monotonic() - started < 0.5
    release.set()
    for thread in threads:
        thread.join(60)
