"""A real uvicorn server in a subprocess on 127.0.0.1: started, waited for, stopped gracefully.

The profiler and the browser test both need the service as it runs in production (its own
process, real sockets, its own RSS), not an in-process test client.
"""

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# What start.sh exports before uvicorn starts: glibc reads MALLOC_ARENA_MAX only at process start.
PROCESS_ENV = {"MALLOC_ARENA_MAX": "2", "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def uvicorn_args(port: int) -> list[str]:
    """start.sh's uvicorn options, bound to loopback."""
    return [
        "-m", "uvicorn", "main:app", "--host", "127.0.0.1", "--port", str(port),
        "--workers", "1", "--loop", "asyncio", "--http", "h11", "--no-access-log", "--log-level", "warning",
    ]  # fmt: skip


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    url: str
    log: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def log_tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:]


def _wait_healthy(server: Server, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"the server exited with {server.process.returncode}:\n{server.log_tail()}")
        try:
            with urllib.request.urlopen(f"{server.url}/health", timeout=1) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            time.sleep(0.1)
    raise TimeoutError(f"the server did not answer /health in {timeout_s:.0f} s:\n{server.log_tail()}")


def stop(server: Server, timeout_s: float = 20.0) -> int:
    """SIGINT (uvicorn's graceful shutdown, which lets tracers write their files), then SIGKILL."""
    if server.process.poll() is None:
        server.process.send_signal(signal.SIGINT)
        try:
            server.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait()
    return server.process.returncode


@contextmanager
def running_server(
    env: Mapping[str, str],
    port: int,
    log: Path,
    python_args: Sequence[str] | None = None,
    startup_timeout_s: float = 60.0,
) -> Iterator[Server]:
    """Run `python <python_args>` (default: uvicorn main:app) from the project root until the block ends.

    `env` is added to this process's environment; stdout and stderr go to `log`.
    """
    args = list(python_args) if python_args is not None else uvicorn_args(port)
    full_env = {**PROCESS_ENV, **os.environ, **env}
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, *args], cwd=ROOT, env=full_env, stdout=sink, stderr=subprocess.STDOUT
        )
    server = Server(process, f"http://127.0.0.1:{port}", log)
    try:
        _wait_healthy(server, startup_timeout_s)
        yield server
    finally:
        stop(server)
