"""Issue 21's OCR attacks against a real server in a real 512 MB memory cgroup: uploads that wait
for the OCR worker hold nothing but their place (30 at once: at most 1 + OCR_QUEUE_MAX admitted,
the rest refused at once with 503 + Retry-After, /analyze answered promptly beside them), and a
3,000-page TIFF is counted, refused past OCR_MAX_PAGES and read page by page when selected.
Each test ends with no OOM kill, the same server process and a prompt 200 for an ordinary request.
"""

import json
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import pytest

from bench.hostile_files import many_page_tiff
from bench.ocr_flood import ANALYZE_BODY, flood
from bench.server import Server
from tests.ops.test_soak import Cgroup, memory_cgroup
from tests.support import real_server, tessdata_missing

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(tessdata_missing() is not None, reason=f"{tessdata_missing()}"),
]

LIMIT_MB = 512
QUEUE_MAX = 4
WORK_MB = 96
UPLOADS = 30
LARGE_MB = 15


@dataclass
class Served:
    server: Server
    cgroup: Cgroup
    pid: int

    def analyze(self):
        return self.server.request("POST", "/analyze", ANALYZE_BODY, {"Content-Type": "application/json"})

    def ocr(self, data: bytes, route: str = "/ocr", files: int = 1, **fields: str):
        """`data` as `files` file parts (several for /ocr/batch), with these form fields."""
        boundary = "ocrqueue7MA4YWxk"
        parts = [
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
            for name, value in fields.items()
        ]
        head = f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="pages.tiff"\r\n'
        parts += [(head + "Content-Type: image/tiff\r\n\r\n").encode() + data + b"\r\n"] * files
        body = b"".join(parts) + f"--{boundary}--\r\n".encode()
        content_type = f"multipart/form-data; boundary={boundary}"
        return self.server.request("POST", route, body, {"Content-Type": content_type}, timeout=300)

    def assert_unharmed(self) -> None:
        """No OOM kill, within the budget, the same process, and an ordinary request answered promptly."""
        assert self.cgroup.oom_kills() == 0
        peak = self.cgroup.peak_mb()
        assert peak is not None and peak <= LIMIT_MB, peak
        assert self.server.process.poll() is None and self.server.pid == self.pid, self.server.log_tail()
        started = time.monotonic()
        assert self.analyze().status == 200
        assert time.monotonic() - started < 5


@pytest.fixture(scope="module")
def served(tmp_path_factory, onnx_minilm_int8: Path) -> Iterator[Served]:
    workdir = tmp_path_factory.mktemp("ocr-queue")
    with ExitStack() as stack:
        cgroup = stack.enter_context(memory_cgroup(LIMIT_MB))
        server = stack.enter_context(
            real_server(
                workdir,
                cgroup=cgroup.path,
                BACKEND="onnx",
                MODEL_SENTIMENT_ES=str(onnx_minilm_int8),
                OCR_QUEUE_MAX=str(QUEUE_MAX),
                OCR_WORK_MB=str(WORK_MB),
            )
        )
        yield Served(server, cgroup, server.pid)


def test_thirty_waiting_uploads_hold_only_their_places(served: Served) -> None:
    result = flood(served.server, UPLOADS)
    print(result.summary(), f"cgroup peak {served.cgroup.peak_mb():.0f} MB")
    assert len(result.uploads) == UPLOADS
    # Before: 28 of 30 admitted, 288 MB reserved, /analyze refused after waiting 30 s.
    assert result.admitted() <= 1 + QUEUE_MAX, result.summary()
    refused = [(seconds, after) for status, seconds, after in result.uploads if status == 503]
    assert len(refused) >= UPLOADS - 1 - QUEUE_MAX and all(after and int(after) > 0 for _, after in refused)
    assert max(seconds for seconds, _ in refused) < 5, result.summary()
    assert {status for status, _, _ in result.uploads} <= {200, 503}
    # One job at a time reserves: OCR_WORK_MB and the worker's copy of its file (a few MB).
    assert 0 < result.max_reserved_mb <= WORK_MB + 20, result.summary()
    assert result.analyze and {status for status, _ in result.analyze} == {200}
    assert max(seconds for _, seconds in result.analyze) < 5, result.summary()
    served.assert_unharmed()


def test_waiting_large_uploads_stay_out_of_memory(served: Served) -> None:
    """12 uploads of 15 MB: before, every one was read into the server's memory while it waited
    (12 admitted, 288 MB reserved, server anonymous memory 332 MB: `python -m bench.ocr_flood
    --large-mb 15 --uploads 12 --root <main>`, MEMORY.md). Now only the running one's are."""
    result = flood(served.server, 12, large_mb=LARGE_MB)
    print(result.summary(), f"cgroup peak {served.cgroup.peak_mb():.0f} MB")
    assert result.admitted() <= 1 + QUEUE_MAX, result.summary()
    assert {status for status, _, _ in result.uploads} <= {200, 503}
    # What QUEUE_MAX waiting uploads would hold in memory, were their bytes read before their turn.
    assert result.max_anon_mb - result.anon_before_mb < QUEUE_MAX * LARGE_MB, result.summary()
    assert 0 < result.max_reserved_mb <= WORK_MB + LARGE_MB + 20, result.summary()
    assert {status for status, _ in result.analyze} == {200}
    assert max(seconds for _, seconds in result.analyze) < 5, result.summary()
    served.assert_unharmed()


def test_a_3000_page_tiff_is_refused_whole_and_read_page_by_page(served: Served) -> None:
    tiff = many_page_tiff(3000)
    started = time.monotonic()
    refused = served.ocr(tiff, lang="es")
    assert refused.status == 413, refused.body[:300]
    error = refused.json()["error"]
    assert (error["code"], error["page_count"]) == ("too_large", 3000) and "OCR_MAX_PAGES" in error["message"]
    assert time.monotonic() - started < 10
    read = served.ocr(tiff, lang="es", pages="1,2999-3000")
    assert read.status == 200, read.body[:300]
    body = json.loads(read.body)
    assert body["page_count"] == 3000 and [page["page"] for page in body["pages"]] == [1, 2999, 3000]
    served.assert_unharmed()


def test_a_batch_of_many_page_tiffs_reads_each_ones_selection(served: Served) -> None:
    answer = served.ocr(many_page_tiff(3000), "/ocr/batch", files=3, lang="es", pages="2-3")
    assert answer.status == 200, answer.body[:300]
    files = answer.json()["files"]
    assert [(item["page_count"], [page["page"] for page in item["pages"]]) for item in files] == [
        (3000, [2, 3])
    ] * 3
    served.assert_unharmed()
