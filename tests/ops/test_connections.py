"""Connections against a real server (start.sh's command): half-sent headers are cut at
HEADER_TIMEOUT_S, connections past MAX_CONNECTIONS (or what the descriptor limit leaves room for)
are refused at once, other clients are answered meanwhile, and the log stays small.

Before ops/connections.py, a stalled header held its socket forever: ~20,000 of them exhausted the
descriptors, asyncio logged each failed accept (230 MB in 25 s) and the watchdog could not read
/proc (issue 10).
"""

import asyncio
import json
import logging
import os
import resource
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import pytest
import uvicorn

from bench.server import ROOT, Server, free_port, serve_args, server_env
from service.ops import serve
from service.ops.connections import BACKLOG, LISTEN_QUEUE, QueuedServer, RepeatedErrorFilter

pytestmark = pytest.mark.slow  # real servers, exports or browsers: not the quick tier


HEADER_TIMEOUT_S = 2
HALF_A_HEADER = b"POST /analyze HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: appl"


@contextmanager
def server_with(
    tmp_path: Path, nofile: int | None = None, header_timeout_s: float = HEADER_TIMEOUT_S, **env: str
) -> Iterator[Server]:
    """start.sh's server command (no model needed), optionally under a low descriptor limit."""
    port = free_port()
    log = tmp_path / f"server-{port}.log"

    def limit_descriptors() -> None:
        if nofile is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, *serve_args(port)],
            cwd=ROOT,
            env=server_env(
                BACKEND="onnx", ONNX_DIR="/nonexistent", HEADER_TIMEOUT_S=str(header_timeout_s), **env
            ),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=limit_descriptors,
        )
    server = Server(process, port, log)
    try:
        server.wait_healthy()
        yield server
    finally:
        process.kill()
        process.wait(10)


def stall(
    server: Server, count: int, first_bytes: bytes = HALF_A_HEADER, header_timeout_s: float = HEADER_TIMEOUT_S
) -> list[socket.socket]:
    sockets = []
    for _ in range(count):
        sock = server.connect(timeout=header_timeout_s + 10)
        if first_bytes:
            with suppress(OSError):  # a refused connection may already be closed
                sock.sendall(first_bytes)
        sockets.append(sock)
    return sockets


def answer_of(sock: socket.socket) -> tuple[int | None, dict]:
    """The status and JSON error the server sent before closing, or (None, {}) for a bare close.
    A socket.timeout here means the server kept the connection open: the test fails."""
    data = b""
    with suppress(ConnectionResetError):
        while chunk := sock.recv(65536):
            data += chunk
    if not data:
        return None, {}
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)["error"]


def open_descriptors(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_stalled_headers_are_cut_and_others_answered_meanwhile(tmp_path):
    with server_with(tmp_path, MAX_CONNECTIONS="64") as server:
        stalled = stall(server, 40) + stall(server, 5, b"")  # half a header, or nothing at all
        try:
            started = time.monotonic()
            assert server.request("GET", "/health").status == 200  # answered while they stall
            answers = [answer_of(sock) for sock in stalled]
            assert time.monotonic() - started < HEADER_TIMEOUT_S + 10
        finally:
            for sock in stalled:
                sock.close()
        for status, error in answers:
            assert status == 408 and error["code"] == "request_timeout", (status, error)
            assert "HEADER_TIMEOUT_S=2" in error["message"]
        assert server.request("GET", "/health").status == 200


def test_a_kept_alive_connection_that_starts_a_second_request_and_stalls_is_cut(tmp_path):
    with server_with(tmp_path) as server, server.connect(timeout=HEADER_TIMEOUT_S + 10) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        first = sock.recv(65536)
        assert first.startswith(b"HTTP/1.1 200"), first
        sock.sendall(b"GET /health HTTP/1.1\r\nHo")
        status, error = answer_of(sock)
        assert status == 408, (status, error)


def test_a_body_left_unread_after_an_early_answer_does_not_hold_the_connection(tmp_path):
    """A 404 is answered without reading the body; the client trickling the rest is cut too."""
    with server_with(tmp_path) as server, server.connect(timeout=HEADER_TIMEOUT_S + 10) as sock:
        sock.sendall(b"POST /nowhere HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1000\r\n\r\nx")
        data, deadline = b"", time.monotonic() + HEADER_TIMEOUT_S + 8
        with suppress(BrokenPipeError, ConnectionResetError):
            while time.monotonic() < deadline:
                sock.settimeout(0.5)
                try:
                    chunk = sock.recv(65536)
                except TimeoutError:
                    sock.sendall(b"x")  # one more byte every half second, never the whole body
                    continue
                if not chunk:
                    break
                data += chunk
        assert data.startswith(b"HTTP/1.1 404"), data[:200]
        assert time.monotonic() < deadline, "the connection was still open"


def test_connections_past_the_cap_are_refused_at_once_and_the_log_stays_small(tmp_path):
    """Under a descriptor limit of 512 the cap is (512 - 64 - 4 x 64) / 2 = 96 connections: the rest
    get a 503 at once, the server never runs out of descriptors, nothing is logged per connection.
    The header timeout outlasts opening the 400 however loaded the machine, so none frees its place
    early: the cap's worth wait for their 408. A stalled one that has held its place for SHED_AFTER_S
    (1 s) gives it up to a newer one (408 too; issue 21), so on a slow machine a few more see 408."""
    with server_with(tmp_path, nofile=512, header_timeout_s=30) as server:
        pid = server.process.pid
        stalled = stall(server, 400, header_timeout_s=30)
        try:
            assert open_descriptors(pid) < 512
            answers = [answer_of(sock) for sock in stalled]
        finally:
            for sock in stalled:
                sock.close()
        statuses = [status for status, _ in answers]
        assert statuses.count(408) + statuses.count(503) == 400 and statuses.count(408) >= 96, statuses
        refused = next(error for status, error in answers if status == 503)
        assert refused["code"] == "too_many_connections" and "MAX_CONNECTIONS=96" in refused["message"]
        assert server.request("GET", "/health").status == 200
        assert server.request("GET", "/memory").status == 200
        log = server.output()
        assert "out of system resource" not in log and "check failed" not in log, log[-3000:]
        assert len(log) < 10_000, log[-3000:]


def test_proxy_headers_are_not_believed_from_an_untrusted_peer(tmp_path):
    """From 127.0.0.1 (trusted by uvicorn's own default), a rotating X-Forwarded-For must not reset
    the rate limit: the server command trusts only FORWARDED_ALLOW_IPS, unset here."""
    with server_with(tmp_path, RATE_LIMIT_PER_MIN="3") as server:
        statuses = [
            server.request("GET", "/memory", headers={"X-Forwarded-For": f"203.0.113.{i}"}).status
            for i in range(5)
        ]
        assert statuses == [200, 200, 200, 429, 429]


def render_env(name: str) -> str:
    """An env var's value in render.yaml (one `- key:` line, its `value:` on the next)."""
    lines = (ROOT / "render.yaml").read_text().splitlines()
    at = next(i for i, line in enumerate(lines) if line.strip() == f"- key: {name}")
    return lines[at + 1].split("value:", 1)[1].strip().strip('"')


@pytest.mark.parametrize("trusted", ["127.0.0.1", render_env("FORWARDED_ALLOW_IPS")])
def test_forwarded_allow_ips_makes_the_limit_see_the_forwarded_client(tmp_path, trusted):
    """As render.yaml sets it: behind a trusted proxy each forwarded client has its own bucket."""
    with server_with(tmp_path, RATE_LIMIT_PER_MIN="2", FORWARDED_ALLOW_IPS=trusted) as server:
        for i in range(4):
            forwarded = {"X-Forwarded-For": f"203.0.113.{i}"}
            assert server.request("GET", "/memory", headers=forwarded).status == 200


def test_a_repeated_error_is_logged_once_a_minute_with_how_many_were_dropped():
    now = [0.0]
    only_some = RepeatedErrorFilter(every_s=60, clock=lambda: now[0])

    def record(message: str) -> logging.LogRecord:
        return logging.LogRecord("asyncio", logging.ERROR, __file__, 1, message, None, None)

    accept = "socket.accept() out of system resource\nsocket: <asyncio.TransportSocket fd=7>"
    assert only_some.filter(record(accept))
    assert not any(only_some.filter(record(accept)) for _ in range(100_000))
    assert all(only_some.filter(record("another message")) for _ in range(3))  # not a flood message
    now[0] = 61.0
    next_one = record(accept)
    assert only_some.filter(next_one)
    assert "(100000 more like this in the last 61 s not logged)" in next_one.getMessage()


def kernel_queue(listening: socket.socket) -> int:
    """The most connections the kernel queues for accept(2) on a listening TCP socket: tcp_info's
    tcpi_sacked holds it while the socket listens."""
    return struct.unpack_from("I", listening.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 32), 28)[0]


def test_the_kernel_queues_a_burst_while_asyncio_accepts_a_backlog_a_tick():
    """asyncio gives listen(2) the number it accepts a tick; with a queue of 64, 300 clients at once
    got SYN cookies and 28-50 of them a connection reset (tests/ops/test_ingress.py's burst)."""

    async def app(scope, receive, send) -> None:
        raise AssertionError("no request is sent")

    config = uvicorn.Config(app, host="127.0.0.1", port=0, backlog=BACKLOG, lifespan="off", log_level="error")
    config.load()
    server = QueuedServer(config)
    server.lifespan = config.lifespan_class(config)

    async def queues() -> list[int]:
        await server.startup()
        try:
            return [kernel_queue(listening) for listening in server.servers[0].sockets]
        finally:
            await server.shutdown()

    somaxconn = int(Path("/proc/sys/net/core/somaxconn").read_text())
    assert BACKLOG < LISTEN_QUEUE
    assert asyncio.run(queues()) == [min(LISTEN_QUEUE, somaxconn)]


def test_the_server_command_starts_the_queued_server(monkeypatch: pytest.MonkeyPatch):
    from uvicorn.config import HTTP_PROTOCOLS

    cli = sys.modules["uvicorn.main"]
    monkeypatch.setattr(cli, "Server", cli.Server)  # restored after the test, as are the protocols
    for name in ("h11", "auto"):
        monkeypatch.setitem(HTTP_PROTOCOLS, name, HTTP_PROTOCOLS[name])
    argv = serve.harden(["serve", "main:app"])
    assert cli.Server is QueuedServer
    assert argv[argv.index("--backlog") + 1] == str(BACKLOG)
