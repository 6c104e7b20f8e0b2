"""Cheap refusals on a real server: JSON bodies just under MAX_JSON_BODY_MB that cannot be valid
are answered with a small 422/400 while the process's peak RSS (VmHWM, read from /proc) stays far
below the 512 MB budget, and /health keeps answering meanwhile.

Before the shape checks (service/sentiment/schemas.py), the 2 MB `{"texts": [1,1,...]}` took
~1.3 GB and 20+ s of the event loop, and answered with a 114 MB error body (issue 10).
"""

import json
from collections.abc import Iterator

import pytest

from bench.refusals import BODIES, JSON, MIB, HealthProbe, status_mb
from bench.server import Server
from tests.support import real_server

BUDGET_MB = 512


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[Server]:
    # No model is needed: every body here is refused before one would load.
    with real_server(
        tmp_path_factory.mktemp("refusals"),
        BACKEND="onnx",
        ONNX_DIR="/nonexistent",
        MEMORY_BUDGET_MB=str(BUDGET_MB),
        MAX_BATCH="32",
    ) as server:
        yield server


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
    # Refused on its structure, never parsed: the body itself and little more (measured: +3.8 MB).
    assert peak - before < 32, (name, before, peak)
    assert peak < BUDGET_MB / 2, (name, before, peak)
    assert probe.answers >= 1
    # Not a timing test: before the shape checks the event loop stalled ~10 s on the million items.
    assert probe.slowest_s < 3, probe.slowest_s
    assert server.request("GET", "/health").status == 200
