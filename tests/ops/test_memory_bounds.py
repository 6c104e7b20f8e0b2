"""Hostile uploads against a real server inside a real 512 MB memory cgroup: each is answered
(200, or a JSON 413/422), the server keeps serving, nothing is OOM-killed, and the peak memory of
the server and its OCR worker, read from the kernel, stays within the budget.

Where no memory cgroup can be made, the same run asserts on the processes' own high-water marks
(VmHWM from /proc) instead: the server's, and the OCR worker's after each request.
"""

import json
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, suppress
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from bench import hostile_files
from bench.server import Server, multipart
from tests.ocr.samples import encode, text_page
from tests.ops.test_soak import Cgroup, memory_cgroup
from tests.support import real_server, tessdata_missing

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(tessdata_missing() is not None, reason=f"{tessdata_missing()}"),
]

LIMIT_MB = 512
MB = 1024 * 1024

# (generator, the answers a bounded server may give). A 200 is fine when it fits the cap.
CASES = {
    "palette_png": {200, 413},
    "transparent_png": {200, 413},
    "sixteen_bit_png": {200, 413},
    "progressive_jpeg": {413},
    "lzw_tiff": {200, 413},
    "inflating_pdf": {413, 422},
    "image_in_form_pdf": {200, 413},
    "looping_page_tree_pdf": {422},
    "self_drawing_form_pdf": {200, 422},
    "dense_text_layer_pdf": {200, 413},
}


@dataclass
class Bounded:
    server: Server
    cgroup: Cgroup | None
    worker_peaks: list[float]

    def post(self, data: bytes, timeout: float = 120):
        # Word boxes asked of every upload: the most a page's result can hold.
        body, content_type = multipart(
            {"lang": "es", "words": "true"}, "upload", data, "application/octet-stream"
        )
        return self.server.request("POST", "/ocr", body, {"Content-Type": content_type}, timeout=timeout)

    def note_worker_peak(self) -> None:
        """The OCR worker's VmHWM now (it is replaced after a job that killed it)."""
        for child in psutil.Process(self.server.pid).children(recursive=True):
            with suppress(psutil.Error, OSError):  # it may end between the listing and the read
                if "service.ocr.worker" in " ".join(child.cmdline()):
                    self.worker_peaks.append(_status_mb(child.pid, "VmHWM:"))

    def assert_within_budget(self) -> None:
        assert self.server.process.poll() is None, self.server.log_tail()
        assert self.server.request("GET", "/health").status == 200
        if self.cgroup is not None:
            assert self.cgroup.oom_kills() == 0
            peak = self.cgroup.peak_mb()
            assert peak is not None and peak <= LIMIT_MB, peak
        self.note_worker_peak()
        server_peak = self.server.peak_mb()
        assert server_peak + max(self.worker_peaks, default=0.0) <= LIMIT_MB, (server_peak, self.worker_peaks)


def _status_mb(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1]) / 1024
    return 0.0


@pytest.fixture(scope="module")
def uploads() -> dict[str, bytes]:
    return {name: getattr(hostile_files, name)() for name in CASES}


@pytest.fixture(scope="module")
def bounded(tmp_path_factory) -> Iterator[Bounded]:
    workdir = tmp_path_factory.mktemp("bounded")
    with ExitStack() as stack:
        try:
            cgroup: Cgroup | None = stack.enter_context(memory_cgroup(LIMIT_MB))
        except pytest.skip.Exception:
            cgroup = None  # no writable memory cgroup here: the processes' own peaks still count
        server = stack.enter_context(
            real_server(
                workdir,
                cgroup=cgroup.path if cgroup else None,
                MEMORY_BUDGET_MB=None if cgroup else str(LIMIT_MB),  # from the cgroup when there is one
                ONNX_DIR=str(workdir),  # no sentiment model: these requests are OCR only
                OCR_PAGE_TIMEOUT_S="60",
            )
        )
        bounded = Bounded(server, cgroup, [])
        readable = bounded.post(encode(text_page(["hola"])))
        assert readable.status == 200, readable.body
        yield bounded


@pytest.mark.parametrize("name", list(CASES))
def test_a_hostile_upload_is_answered_within_the_budget(
    bounded: Bounded, uploads: dict[str, bytes], name: str
) -> None:
    response = bounded.post(uploads[name])
    assert response.status in CASES[name], response.body[:500]
    if response.status >= 400:
        error = response.json()["error"]
        assert error["code"] in {"too_large", "undecodable_file"} and error["message"]
    bounded.assert_within_budget()
    after = bounded.post(encode(text_page(["hola"])))  # the next upload is read as usual
    assert after.status == 200 and json.loads(after.body)["pages"][0]["text"].strip() == "hola"


@pytest.mark.parametrize("name", ["palette_png", "progressive_jpeg", "inflating_pdf"])
def test_four_at_once_stay_within_the_budget(bounded: Bounded, uploads: dict[str, bytes], name: str) -> None:
    statuses: list[int] = []

    def send() -> None:
        statuses.append(bounded.post(uploads[name], timeout=300).status)

    threads = [threading.Thread(target=send) for _ in range(4)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    while any(thread.is_alive() for thread in threads):
        bounded.note_worker_peak()
        time.sleep(0.05)
    assert sorted(statuses) and set(statuses) <= CASES[name], statuses
    assert time.monotonic() - started < 300
    bounded.assert_within_budget()
