"""Graceful shutdown and recycling, with real server processes started as start.sh starts them.

SIGTERM (a deploy on Render): the listening socket closes at once, the request in flight
finishes, and the process exits 0 within --timeout-graceful-shutdown (plus a second).
A worker that recycles (max requests, or the memory watchdog's hard limit) exits 0 by itself and
supervise.sh starts a fresh one; a SIGTERM to supervise.sh ends it all with 0.
"""

import signal
import subprocess
import sys
import time
from contextlib import suppress

import pytest

from bench.server import Server, multipart, read_response, request_head
from tests.ocr.samples import ENGLISH, encode, pdf_of, text_page
from tests.support import ROOT, real_server, recycling_server, tessdata_missing

pytestmark = pytest.mark.slow  # real servers, exports or browsers: not the quick tier


needs_tessdata = pytest.mark.skipif(tessdata_missing() is not None, reason=f"{tessdata_missing()}")


def ocr_body(data: bytes, content_type: str) -> tuple[bytes, dict[str, str]]:
    body, form_type = multipart({"lang": "en"}, "upload", data, content_type)
    return body, {"Content-Type": form_type}


def healthy(server: Server) -> bool:
    try:
        return server.request("GET", "/health", timeout=5).status == 200
    except OSError:
        return False


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"not within {timeout} s: {what}")


@needs_tessdata
def test_sigterm_finishes_the_request_in_flight_refuses_new_ones_and_exits_0(tmp_path):
    body, headers = ocr_body(encode(text_page(ENGLISH[:1])), "image/png")
    with real_server(tmp_path, "--timeout-graceful-shutdown", "10") as server:
        assert server.request("POST", "/ocr", body, headers).status == 200  # the engine is loaded
        half = len(body) // 2
        with server.connect() as upload:
            upload.sendall(request_head("POST", "/ocr", len(body), headers) + body[:half])
            time.sleep(0.5)  # the request is in flight: the app waits for the rest of its body
            server.process.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
            time.sleep(0.5)
            with pytest.raises(ConnectionRefusedError):
                server.connect(timeout=2)
            upload.sendall(body[half:])
            response = read_response(upload)
        assert response.status == 200, response.body
        assert "quick brown fox" in response.json()["pages"][0]["text"]
        assert server.process.wait(timeout=10) == 0
        assert time.monotonic() - signalled < 10
        assert "Finished server process" in server.output()


@needs_tessdata
def test_work_still_running_at_the_graceful_timeout_does_not_hold_the_exit(tmp_path):
    """Twenty full pages of text keep a threadpool thread busy ~20 s; the exit does not wait for it."""
    pdf = pdf_of([text_page(ENGLISH * 12, size=(1275, 1650)) for _ in range(20)])
    body, headers = ocr_body(pdf, "application/pdf")
    with real_server(tmp_path, "--timeout-graceful-shutdown", "1") as server, server.connect() as upload:
        upload.sendall(request_head("POST", "/ocr", len(body), headers) + body)
        time.sleep(1.5)  # recognition has started
        server.process.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        assert server.process.wait(timeout=10) == 0
        assert time.monotonic() - signalled < 4  # 1 s graceful + 1 s for idle threads + slack
    assert "still running abandoned work" in server.output()


# A daemon thread building onnxruntime sessions over and over while the process leaves after
# `delay` seconds: where the interpreter's finalization ends the thread, it is mostly inside
# onnxruntime's C++ frames, and the process aborts (134) in about a third of the runs.
LEAVE_WITH_A_SESSION_BEING_BUILT = """
import sys, threading, time
import numpy as np, onnx, onnxruntime
from onnx import TensorProto, helper, numpy_helper
from service.ops import serve

weights = numpy_helper.from_array(np.ones((1024, 1024), np.float32), "w")
nodes = [helper.make_node("MatMul", [f"x{i}", "w"], [f"x{i + 1}"]) for i in range(8)]
shape = [None, 1024]
graph = helper.make_graph(
    nodes, "g", [helper.make_tensor_value_info("x0", TensorProto.FLOAT, shape)],
    [helper.make_tensor_value_info("x8", TensorProto.FLOAT, shape)], [weights],
)
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()

def build():
    while True:
        onnxruntime.InferenceSession(model, providers=["CPUExecutionProvider"])

threading.Thread(target=build, daemon=True).start()
time.sleep(float(sys.argv[1]))
serve.leave(0)
"""


@pytest.mark.parametrize("delay", [0.1, 0.4, 0.8])
def test_leaving_with_a_daemon_thread_inside_onnxruntime_exits_0(delay: float) -> None:
    """As the warm-up's load or a variant's swap may be at a SIGTERM (CI once saw exit 134)."""
    run = subprocess.run(
        [sys.executable, "-c", LEAVE_WITH_A_SESSION_BEING_BUILT, str(delay)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    assert "terminate called" not in run.stderr


def test_a_recycled_worker_is_replaced_and_sigterm_ends_the_loop_with_0(tmp_path):
    with real_server(tmp_path, "--limit-max-requests", "5", supervised=True) as server:
        (first,) = server.worker_pids()
        for _ in range(5):
            with suppress(ConnectionRefusedError):  # the port is closed while a worker restarts
                server.request("GET", "/health")
        wait_for(lambda: server.worker_pids() not in ([], [first]), 30, "a fresh worker")
        (second,) = server.worker_pids()
        wait_for(lambda: healthy(server), 30, "the fresh worker serving")
        assert "recycled" in server.output()
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(timeout=15) == 0
        assert server.worker_pids() == []
        assert second != first


def test_a_worker_over_its_hard_limit_refuses_work_then_recycles(tmp_path):
    """A budget below what an idle worker holds: the hard limit is passed from the start."""
    with recycling_server(tmp_path) as server:
        (first,) = server.worker_pids()
        response = server.request(
            "POST", "/analyze", b'{"text": "hola"}', {"Content-Type": "application/json"}
        )
        assert response.status == 503
        assert response.json()["error"]["code"] == "over_memory_budget"
        assert response.headers["retry-after"] == "5"
        assert server.request("GET", "/health").status == 200
        wait_for(lambda: server.worker_pids() not in ([], [first]), 30, "the worker recycled")
        assert "recycling" in server.output()
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(timeout=15) == 0


def test_start_sh_serves_with_the_command_tested_here():
    start = (ROOT / "start.sh").read_text()
    assert "exec bash service/ops/supervise.sh python -m service.ops.serve main:app" in start
    for flag in (
        "--workers 1",
        "--loop asyncio",
        "--http h11",
        "--no-access-log",
        "--timeout-graceful-shutdown",
    ):
        assert flag in start
