"""No label value comes from the client: 10,000 made-up methods, paths and query strings, sent to a
real server in a real 512 MB memory cgroup, add no series to /metrics or rows to the dashboard's
route table, and no memory. Before the fix each made-up method was a new series (the issue's
2,000 requests grew /metrics from 8 KB to 79 MB)."""

import re
import socket
from contextlib import ExitStack
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from bench.server import Server
from service.monitoring.metrics import OTHER_METHOD, method_label
from tests.ops.test_soak import memory_cgroup
from tests.support import real_server

KEY = "label-test-key"
AUTH = {"X-API-Key": KEY}
REQUESTS = 10_000
PIPELINED = 200
# Answers follow each other with no line break between a body and the next status line.
STATUS_LINE = re.compile(rb"HTTP/1\.1 (\d{3}) ")


def test_method_label_has_a_fixed_set():
    assert method_label("POST") == "POST"
    assert method_label("MKCALENDAR") == OTHER_METHOD
    assert method_label("get") == OTHER_METHOD  # methods are case-sensitive: this is not GET


def _series(server: Server) -> set[tuple[str, tuple[tuple[str, str], ...]]]:
    text = server.request("GET", "/metrics", headers=AUTH).body.decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items())))
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def _routes(server: Server) -> dict:
    return server.request("GET", "/dashboard/data", headers=AUTH).json()["routes"]


def _pipeline(server: Server, heads: list[bytes]) -> list[int]:
    """Send `heads` on one kept-alive connection, `PIPELINED` at a time; their statuses."""
    statuses: list[int] = []
    with socket.create_connection(("127.0.0.1", server.port), timeout=60) as sock:
        for start in range(0, len(heads), PIPELINED):
            batch = heads[start : start + PIPELINED]
            sock.sendall(b"".join(batch))
            data = b""
            while data.count(b"HTTP/1.1 ") < len(batch):
                chunk = sock.recv(1 << 20)
                assert chunk, f"the server closed the connection after {len(statuses)} answers"
                data += chunk
            statuses += [int(status) for status in STATUS_LINE.findall(data)]
    return statuses


def _anon_mb(server: Server) -> float:
    for line in Path(f"/proc/{server.worker_pid()}/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1024
    raise KeyError("RssAnon")


def _heads(count: int, offset: int) -> list[bytes]:
    """Made-up methods on made-up paths, real methods on made-up paths, made-up methods on a real
    route: every path and query string distinct, and every made-up method too."""
    heads = []
    for i in range(offset, offset + count):
        method = ("GET", f"X{i:05d}M", f"Y{i:05d}M")[i % 3]
        path = "/health" if i % 3 == 2 else f"/n{i}/{i * 7}"
        heads.append(f"{method} {path}?q={i}&r=x{i} HTTP/1.1\r\nHost: a\r\n\r\n".encode())
    return heads


def _request_series(series: set) -> set:
    return {item for item in series if item[0].startswith("http_request")}


@pytest.mark.slow
def test_client_made_methods_paths_and_queries_add_no_series(tmp_path):
    with ExitStack() as stack:
        cgroup = stack.enter_context(memory_cgroup(512))
        server = stack.enter_context(
            real_server(
                tmp_path,
                cgroup=cgroup.path,
                API_KEY=KEY,
                RATE_LIMIT_PER_MIN="30",
                BACKEND="onnx",
                ONNX_DIR=str(tmp_path),  # nothing to load: every request here is refused or routed
            )
        )
        # Every series these requests can make, first: each kind of request, past the rate limit.
        warm = _pipeline(server, _heads(PIPELINED, 0))
        assert {401, 405, 429} <= set(warm), set(warm)
        _series(server), _routes(server)  # the scrapes' own series
        before, routes_before, anon_before = _series(server), _routes(server), _anon_mb(server)

        statuses = _pipeline(server, _heads(REQUESTS, PIPELINED))
        assert len(statuses) == REQUESTS and set(statuses) <= {401, 405, 429}, set(statuses)

        after, routes_after, anon_after = _series(server), _routes(server), _anon_mb(server)
        assert cgroup.oom_kills() == 0
        assert server.request("GET", "/health").status == 200
    assert _request_series(after) == _request_series(before)
    assert set(routes_after) == set(routes_before)
    assert {name.split()[0] for name in routes_after} <= {"GET", OTHER_METHOD}, set(routes_after)
    assert anon_after - anon_before < 5, (anon_before, anon_after)
