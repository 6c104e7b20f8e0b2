"""A real server process on 127.0.0.1, started with start.sh's command, and raw HTTP to it.

Slow uploads, refused connections and signals need a real socket and a real process; the
TestClient reads a whole body before the app sees any of it.
"""

import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import psutil

from bench.serving import multipart as multipart  # re-exported for the ops tests
from service.ocr.config import TESSERACT_LANGS
from service.ocr.tessdata import resolve_tessdata
from tests.support import ROOT

# start.sh's server command, less what it takes from the environment (host, port, timeouts).
SERVE = [sys.executable, "-m", "service.ops.serve", "main:app", "--workers", "1", "--loop", "asyncio"]
SERVE += ["--http", "h11", "--no-access-log", "--host", "127.0.0.1"]
SUPERVISE = ["bash", str(ROOT / "service" / "ops" / "supervise.sh")]


def tessdata_missing() -> str | None:
    try:
        for code in TESSERACT_LANGS.values():
            resolve_tessdata(code)
    except Exception as error:
        return str(error)
    return None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def server_env(**env: str) -> dict[str, str]:
    """This environment less the test process's own pinning, with the watchdog on (conftest turns
    it off for in-process tests) and the given settings."""
    inherited = {
        key: value
        for key, value in os.environ.items()
        if not key.endswith("_NUM_THREADS") and key not in ("MALLOC_ARENA_MAX", "MEMORY_WATCHDOG")
    }
    return {**inherited, "NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", **env}


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> dict:
        return json.loads(self.body)


@dataclass
class Server:
    process: subprocess.Popen
    port: int
    log: Path
    supervised: bool

    def connect(self, timeout: float = 30) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=timeout)

    def request(
        self,
        method: str,
        path: str,
        body: bytes = b"",
        headers: dict[str, str] | None = None,
        timeout: float = 60,
    ) -> Response:
        with self.connect(timeout) as sock:
            send_body(sock, request_head(method, path, len(body), headers), body)
            return read_response(sock)

    def worker_pids(self) -> list[int]:
        """The python processes serving: the process itself, or the supervisor's children."""
        if not self.supervised:
            return [self.process.pid] if self.process.poll() is None else []
        try:
            return [child.pid for child in psutil.Process(self.process.pid).children()]
        except psutil.NoSuchProcess:
            return []

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def request_head(method: str, path: str, length: int | None, headers: dict[str, str] | None = None) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", "Connection: close"]
    if length is not None:
        lines.append(f"Content-Length: {length}")
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def send_body(sock: socket.socket, head: bytes, body: bytes, chunk: int = 64 * 1024) -> None:
    """Send the head, then the body in chunks, stopping as soon as the server answers early (a 413
    for a declared length): sending on would make its close reset the connection, and a reset can
    drop the answer before it is read. Like curl, wait a moment after the head of a large body."""
    sock.sendall(head)
    if len(body) > 1024 * 1024 and select.select([sock], [], [], 0.2)[0]:
        return
    for offset in range(0, len(body), chunk):
        if select.select([sock], [], [], 0)[0]:
            return
        try:
            sock.sendall(body[offset : offset + chunk])
        except (BrokenPipeError, ConnectionResetError):
            return


def read_response(sock: socket.socket) -> Response:
    """Read until the server closes (every request here says `Connection: close`)."""
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        if not data:
            raise
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if headers.get("transfer-encoding") == "chunked":
        body = _unchunk(body)
    return Response(int(status_line.split()[1]), headers, body)


def _unchunk(data: bytes) -> bytes:
    out = b""
    while data:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out += data[:size]
        data = data[size + 2 :]
    return out


def wait_until_serving(server: Server, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"the server exited with {server.process.returncode}:\n{server.output()}")
        try:
            if server.request("GET", "/health", timeout=2).status == 200:
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"the server did not answer /health within {timeout} s:\n{server.output()}")


@contextmanager
def running_server(tmp_path: Path, *args: str, supervised: bool = False, **env: str) -> Iterator[Server]:
    """Start the server (under supervise.sh if asked), wait for /health, and end it after."""
    port = free_port()
    command = [*SERVE, "--port", str(port), *args]
    if supervised:
        command = [*SUPERVISE, *command]
    log = tmp_path / f"server-{port}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            command,
            cwd=ROOT,
            env=server_env(**env),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = Server(process, port, log, supervised)
    try:
        wait_until_serving(server)
        yield server
    finally:
        with suppress(ProcessLookupError):  # the group this test started: server and its workers
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)
