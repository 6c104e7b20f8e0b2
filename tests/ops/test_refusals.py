"""Cheap refusals on a real server: JSON bodies just under MAX_JSON_BODY_MB that cannot be valid
are answered with a small 422/400 while the process's peak RSS (VmHWM, read from /proc) stays far
below the 512 MB budget, and /health keeps answering meanwhile.

Before the shape checks, the 2 MB `{"texts": [1,1,...]}` took ~1.5 GB and ~10 s of the event loop
and answered with a 114 MB error body (issue 10).
"""

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.ops.server import Server, running_server

JSON = {"Content-Type": "application/json"}
BUDGET_MB = 512
MIB = 1024 * 1024


def status_mb(pid: int, field: str) -> float:
    """A `VmHWM`/`VmRSS` line of /proc/<pid>/status, in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def items_body(item: bytes, prefix: bytes = b'{"texts":[', suffix: bytes = b"]}") -> bytes:
    """As many comma-separated `item`s as fit just under 2 MiB (the default MAX_JSON_BODY_MB)."""
    count = (2 * MIB - len(prefix) - len(suffix) - 16) // (len(item) + 1)
    return prefix + b",".join([item] * count) + suffix


# Each the shape of an attack at the body limit: many cheap items that each cost a Python object.
BODIES = {
    "million-ints": b'{"texts":[' + b",".join([b"1"] * 1_000_000) + b"]}",
    "strings": items_body(b'"a"'),
    "empty-lists": items_body(b"[]"),
    "empty-objects": items_body(b"{}"),
    "floats": items_body(b"1.5"),
    "unknown-keys": b'{"text":"hola",'
    + b",".join(b'"k%d":0' % i for i in range(2 * MIB // 12))[: 2 * MIB - 64].rpartition(b",")[0]
    + b"}",
    "nested-texts": b'{"texts":' + b"[" * 900_000 + b"]" * 100 + b"}",
}


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[Server]:
    # No model is needed: every body here is refused before one would load.
    with running_server(
        tmp_path_factory.mktemp("refusals"),
        BACKEND="onnx",
        ONNX_DIR="/nonexistent",
        MEMORY_BUDGET_MB=str(BUDGET_MB),
        MAX_BATCH="32",
    ) as server:
        yield server


class HealthProbe(threading.Thread):
    """Asks /health over and over while a hostile request is in flight; keeps the slowest answer."""

    def __init__(self, server: Server) -> None:
        super().__init__(daemon=True)
        self.server = server
        self.stop = threading.Event()
        self.slowest_s = 0.0
        self.answers = 0

    def run(self) -> None:
        while not self.stop.is_set():
            started = time.monotonic()
            assert self.server.request("GET", "/health", timeout=30).status == 200
            self.slowest_s = max(self.slowest_s, time.monotonic() - started)
            self.answers += 1
            time.sleep(0.05)


@pytest.mark.parametrize("name", BODIES)
def test_an_invalid_body_at_the_limit_is_refused_small_and_cheap(server, name):
    body = BODIES[name]
    assert len(body) < 2 * MIB
    pid = server.process.pid
    before = status_mb(pid, "VmHWM")
    probe = HealthProbe(server)
    probe.start()
    try:
        response = server.request("POST", "/analyze", body, JSON)
    finally:
        probe.stop.set()
        probe.join(30)
    assert response.status in (400, 422), response.body[:300]
    assert response.headers["content-type"] == "application/json"
    assert "error" in json.loads(response.body)
    assert len(response.body) < 2000 < len(body)
    peak = status_mb(pid, "VmHWM")
    # The parsed body is the only cost: tens of MB at most for 2 MB of the costliest items.
    assert peak - before < 100, (name, before, peak)
    assert peak < BUDGET_MB / 2, (name, before, peak)
    assert probe.answers >= 1
    # Not a timing test: before the shape checks the event loop stalled ~10 s on the million items.
    assert probe.slowest_s < 3, probe.slowest_s
    assert server.request("GET", "/health").status == 200
