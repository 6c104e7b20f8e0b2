"""A real server process on 127.0.0.1, and raw HTTP to it: the one launcher for the benchmarks,
the profiler and the tests.

Memory, slow uploads, refused connections and signals need the service as it runs in production:
its own process, real sockets, its own RSS. The TestClient reads a whole body before the app sees
any of it and shares the test process's memory.

`running_server` starts one (start.sh's command by default, under supervise.sh if asked, in a
memory cgroup or on some cores if asked), waits for /health, and stops it gracefully at the end;
`Server` reads its PID, RSS, peak RSS and CPU time from /proc and shows its log when it fails.
"""

import json
import os
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

import psutil

ROOT = Path(__file__).resolve().parents[1]
# What start.sh exports before uvicorn starts: glibc reads MALLOC_ARENA_MAX only at process start.
START_ENV = {"MALLOC_ARENA_MAX": "2", "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}
# The launching process's own pinning, never the server's: the server pins itself from NUM_THREADS,
# and the tests' conftest turns the watchdog off for in-process apps only.
NOT_INHERITED = ("MALLOC_ARENA_MAX", "MEMORY_WATCHDOG")
SUPERVISE = ["bash", str(ROOT / "service" / "ops" / "supervise.sh")]
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def serve_args(port: int) -> list[str]:
    """start.sh's server command (service.ops.serve), less what it takes from the environment, on loopback."""
    return [
        "-m", "service.ops.serve", "main:app", "--workers", "1", "--loop", "asyncio",
        "--http", "h11", "--no-access-log", "--host", "127.0.0.1", "--port", str(port),
    ]  # fmt: skip


def uvicorn_args(port: int) -> list[str]:
    """start.sh's uvicorn options on plain uvicorn (what the profiler wraps in memray), warnings only."""
    return [
        "-m", "uvicorn", "main:app", "--host", "127.0.0.1", "--port", str(port),
        "--workers", "1", "--loop", "asyncio", "--http", "h11", "--no-access-log", "--log-level", "warning",
    ]  # fmt: skip


def free_port() -> int:
    """A port the kernel says is free on loopback now (never a fixed one: servers run side by side)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def server_env(**env: str | None) -> dict[str, str]:
    """start.sh's allocator settings, this environment less its own pinning, then `env` (None: unset)."""
    inherited = {
        key: value
        for key, value in os.environ.items()
        if not key.endswith("_NUM_THREADS") and key not in NOT_INHERITED
    }
    merged = {**START_ENV, **inherited, "HF_HUB_OFFLINE": "1", **env}
    return {key: value for key, value in merged.items() if value is not None}


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> dict:
        return json.loads(self.body)


class Loopback:
    """Something listening on 127.0.0.1:`port` (the real server, the container's published port)."""

    port: int

    def request(
        self,
        method: str,
        path: str,
        body: bytes = b"",
        headers: dict[str, str] | None = None,
        timeout: float = 60,
    ) -> "Response":
        """One request on its own connection (`Connection: close`)."""
        return http_request(self.port, method, path, body, headers, timeout)


class Sampler:
    """Calls `sample` every `interval_s` on a thread of its own while the `with` block runs, so
    a peak between the measurement's own reads is seen."""

    interval_s = 0.02

    def sample(self) -> bool:
        """One reading; False ends the sampling (the process read is gone)."""
        raise NotImplementedError

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s) and self.sample():
            pass

    def __enter__(self) -> Self:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


@dataclass
class Server(Loopback):
    process: subprocess.Popen[bytes]
    port: int
    log: Path
    supervised: bool = False
    started: float = field(default_factory=time.perf_counter)  # perf_counter just before the launch

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.process.pid

    def connect(self, timeout: float = 30) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=timeout)

    def worker_pids(self) -> list[int]:
        """The python processes serving: the process itself, or the supervisor's children."""
        if not self.supervised:
            return [self.process.pid] if self.process.poll() is None else []
        try:
            return [child.pid for child in psutil.Process(self.process.pid).children()]
        except psutil.NoSuchProcess:
            return []

    def worker_pid(self) -> int:
        pids = self.worker_pids()
        if len(pids) != 1:
            raise RuntimeError(f"expected one serving process, found {pids}:\n{self.log_tail()}")
        return pids[0]

    def _status_mb(self, field_name: str) -> float:
        for line in Path(f"/proc/{self.worker_pid()}/status").read_text().splitlines():
            if line.startswith(field_name):
                return int(line.split()[1]) / 1024
        raise KeyError(field_name)

    def rss_mb(self) -> float:
        return self._status_mb("VmRSS:")

    def anon_mb(self) -> float:
        """RssAnon: what the serving process cannot give back to the kernel without swap."""
        return self._status_mb("RssAnon:")

    def peak_mb(self) -> float:
        """VmHWM: the highest RSS the serving process has had."""
        return self._status_mb("VmHWM:")

    def cpu_seconds(self) -> float:
        """User + system CPU time of the serving process so far (from /proc, so shared cores don't count)."""
        stat = Path(f"/proc/{self.worker_pid()}/stat").read_text()
        fields = stat[stat.rindex(")") + 2 :].split()  # after the command name, which may hold spaces
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def log_tail(self, chars: int = 3000) -> str:
        return self.output()[-chars:]

    def wait_healthy(self, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                if self.request("GET", "/health", timeout=2).status == 200:
                    return
            except OSError:
                time.sleep(0.1)
        raise TimeoutError(f"the server did not answer /health within {timeout_s:.0f} s:\n{self.log_tail()}")

    def wait_for_variant(self, timeout_s: float = 300) -> None:
        """Until every loaded model serves what it will keep serving: a model loaded plain has its
        prepacked variant made in a child process (in the server's cgroup, if any) after its first
        answer, then swapped in; measuring before would mix two sessions, and count the child."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            loaded = self.request("GET", "/memory").json()["loaded"]
            if all(item.get("prepacked") != "coming" for item in loaded):
                return
            time.sleep(0.2)
        raise TimeoutError(f"the prepacked variant was not made within {timeout_s:.0f} s")

    def stop(self, timeout_s: float = 20.0) -> int | None:
        """SIGINT (uvicorn's graceful shutdown, which lets tracers write their files), then SIGKILL
        to whatever is left of the process group (a supervisor's workers included)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            with suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout_s)
        with suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        with suppress(subprocess.TimeoutExpired):
            self.process.wait(10)
        return self.process.returncode


def launch(
    log: Path,
    *extra_args: str,
    python_args: Callable[[int], Sequence[str]] = serve_args,
    supervised: bool = False,
    cgroup: Path | Sequence[Path] | None = None,
    cpus: int | None = None,
    port: int | None = None,
    root: Path = ROOT,
    program: Sequence[str] = (sys.executable,),
    **env: str | None,
) -> Server:
    """Start `python <python_args(port)> <extra_args>` from the project root, in its own session.

    `program`: what runs instead of python (`bash start.sh`, with PORT in `env`).
    `supervised`: under supervise.sh, as start.sh runs it. `cgroup`: a memory cgroup directory (or
    several: a CPU one too) the process joins before it execs (so the server and all it starts are
    accounted there). `cpus`:
    pinned to the first `cpus` cores, as a container's CPU limit would. `env`: see `server_env`.
    Its output goes to `log`."""
    port = port or free_port()
    command = [*program, *python_args(port), *extra_args]
    if supervised:
        command = [*SUPERVISE, *command]
    if cgroup is not None:
        joins = " && ".join(
            f"echo $$ > {path}/cgroup.procs" for path in ([cgroup] if isinstance(cgroup, Path) else cgroup)
        )
        command = ["bash", "-c", f'{joins} && exec "$@"', "server", *command]
    log.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with log.open("wb") as out:
        process = subprocess.Popen(
            command,
            cwd=root,
            env=server_env(**env),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    if cpus:
        os.sched_setaffinity(process.pid, range(cpus))
    return Server(process, port, log, supervised, started)


@contextmanager
def running_server(
    workdir: Path,
    *extra_args: str,
    name: str = "server",
    startup_timeout_s: float = 60.0,
    python_args: Callable[[int], Sequence[str]] = serve_args,
    supervised: bool = False,
    cgroup: Path | None = None,
    cpus: int | None = None,
    port: int | None = None,
    root: Path = ROOT,
    **env: str | None,
) -> Iterator[Server]:
    """`launch` with its log in `workdir/<name>-<port>.log`, wait for /health, yield, stop.
    A failure inside the block gets the server's log tail attached."""
    port = port or free_port()
    server = launch(
        workdir / f"{name}-{port}.log",
        *extra_args,
        python_args=python_args,
        supervised=supervised,
        cgroup=cgroup,
        cpus=cpus,
        port=port,
        root=root,
        **env,
    )
    try:
        server.wait_healthy(startup_timeout_s)  # its error carries the log's tail
        try:
            yield server
        except Exception as error:
            error.add_note(f"server log ({server.log}):\n{server.log_tail()}")
            raise
    finally:
        server.stop()


# Answers on one connection follow each other with no line break between a body and the next status line.
STATUS_LINE = re.compile(rb"HTTP/1\.1 (\d{3}) ")


def pipeline(server: Server, heads: list[bytes], at_once: int = 200) -> list[int]:
    """Send bodiless requests `heads` on one kept-alive connection, `at_once` at a time, and return
    their statuses: thousands of requests a second, as a client flooding one connection sends them."""
    statuses: list[int] = []
    with server.connect(60) as sock:
        for start in range(0, len(heads), at_once):
            batch = heads[start : start + at_once]
            sock.sendall(b"".join(batch))
            data = b""
            while len(STATUS_LINE.findall(data)) < len(batch):
                chunk = sock.recv(1 << 20)
                if not chunk:
                    raise ConnectionError(f"the server closed the connection after {len(statuses)} answers")
                data += chunk
            statuses += [int(status) for status in STATUS_LINE.findall(data)]
    return statuses


def http_request(
    port: int,
    method: str,
    path: str,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
    timeout: float = 60,
) -> Response:
    """One request to 127.0.0.1:`port` on its own connection (`Connection: close`)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        send_body(sock, request_head(method, path, len(body), headers), body)
        return read_response(sock)


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


def multipart(fields: dict[str, str], file_name: str, data: bytes, content_type: str) -> tuple[bytes, str]:
    """A multipart/form-data body with `fields` and one file part; returns it and its content type."""
    boundary = "benchboundary7MA4YWxkTrZu0gW"
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
        for name, value in fields.items()
    ]
    parts.append(
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{file_name}"\r\n'
        f"Content-Type: {content_type}\r\n\r\n".encode()
        + data
        + b"\r\n"
    )
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"
