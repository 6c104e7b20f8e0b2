"""The server's side of the OCR worker: a child process whose memory per job is capped.

Why a process: what decoding an image or a PDF costs depends on tricks an attacker chooses
(palettes, alpha, progressive JPEGs, streams that inflate 1000x, images inside forms), and any
estimate made from the outside can be beaten. The worker (`service/ocr/worker.py`) caps itself
before each job at OCR_WORK_MB over what it already uses, so the cost of a job is bounded by
construction: the registry reserves exactly OCR_WORK_MB for it, and the worker's RSS is part of
the memory the budget counts (`service.budget.unreclaimable_mb`). A job that needs more fails alone: 413,
or 422 when the worker died on a malformed file; the server keeps serving and the next job
starts a new worker.

One worker serves every language: each Tesseract engine is a registry item loaded into it, and
the worker exits when the last one is unloaded. Requests take turns at the worker, one at a time;
OCR_QUEUE_MAX more may wait, past that a request is refused at once with 503. A request that waits
holds nothing but its place: its engine, its reservation and its bytes in memory come with its turn
(`service/ocr/service.py`). A request with several files (`POST /ocr/batch`) holds its turn for all
of them and runs one job per file: each job is capped and can fail alone, and the worker it killed
is replaced for the next file.
"""

import dataclasses
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from service import budget
from service.exceptions import BadInput, ModelUnavailable, Overloaded, ServiceError, TooLarge
from service.ocr.config import OcrSettings
from service.ocr.errors import Undecodable
from service.ocr.jobs import Kind, ReadOptions
from service.ocr.words import Word

logger = logging.getLogger(__name__)

MB = 1024 * 1024
# Replies are page texts: far below this, whatever the upload.
MAX_REPLY_BYTES = 16 * MB
_STARTUP_TIMEOUT_S = 30.0
_ROOT = Path(__file__).resolve().parents[2]
# Signals that native code raises when an allocation fails under the cap (pdfium and Tesseract
# abort on out-of-memory); any other death is a crash on a malformed file.
_MEMORY_DEATHS = {signal.SIGABRT, signal.SIGKILL}


class WorkerDied(Exception):
    """The worker process ended or stopped answering; it is replaced on the next job."""

    def __init__(self, message: str, timed_out: bool = False, reply_too_large: bool = False) -> None:
        super().__init__(message)
        self.timed_out = timed_out
        self.reply_too_large = reply_too_large


@dataclass(frozen=True)
class OcrJob:
    """One file to read, and how (`service/ocr/reading.py` in the worker)."""

    data: bytes
    kind: Kind
    options: ReadOptions


@dataclass
class OcrPage:
    page: int
    source: str  # text_layer | ocr
    text_layer: str | None
    text: str
    confidence: float
    width: int
    height: int
    words: list[Word] | None
    tables: list[dict[str, Any]] | None  # the worker's table messages (worker.table_message)
    seconds: float


class OcrWorker:
    """One worker process and the engines loaded in it; thread-safe."""

    def __init__(self) -> None:
        self._process: subprocess.Popen[bytes] | None = None
        self._conn: Connection | None = None
        self._engines: dict[str, str] = {}  # code -> tessdata dir, reloaded into a new process
        self._tables = False  # table detection imported, and imported again into a new process
        self._lock = threading.Lock()  # one message exchange (a job, a load) at a time
        self._turn_lock = threading.Lock()  # one request's turn (its jobs) at a time
        self._waiting = 0  # requests in `turn`: the one whose turn it is, and those waiting
        self._waiting_lock = threading.Lock()

    # -- process ------------------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def _start(self) -> None:
        parent, child = socket.socketpair()
        env = {**os.environ, "MALLOC_ARENA_MAX": "1"}  # one arena: no 64 MB reservation per thread
        try:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "service.ocr.worker", str(child.fileno())],
                pass_fds=[child.fileno()],
                cwd=_ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
            )
        finally:
            child.close()
        self._conn = Connection(parent.detach())
        budget.track_child(self._process.pid)
        try:
            self._receive(_STARTUP_TIMEOUT_S)
        except WorkerDied as error:
            self._stop()
            raise ModelUnavailable(f"the OCR worker process did not start: {error}") from error
        for code, tessdata in self._engines.items():
            self._load_in_process(code, tessdata)
        if self._tables:
            self._send({"op": "load_tables"})
            self._receive(_STARTUP_TIMEOUT_S)

    def _stop(self) -> None:
        process, conn = self._process, self._conn
        self._process = self._conn = None
        if conn is not None:
            conn.close()  # the worker exits on EOF
        if process is not None:
            try:
                process.wait(timeout=2)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            budget.forget_child(process.pid)

    def _ensure_started(self) -> None:
        if self._process is None or self._process.poll() is not None:
            if self._process is not None:
                self._stop()
            self._start()

    # -- messages -----------------------------------------------------------------------------

    def _send(self, message: dict[str, Any], payload: bytes | None = None) -> None:
        assert self._conn is not None
        try:
            self._conn.send_bytes(json.dumps(message).encode())
            if payload is not None:
                self._conn.send_bytes(payload)
        except OSError as error:
            raise WorkerDied(f"could not write to it: {error}") from error

    def _receive(self, timeout_s: float) -> dict[str, Any]:
        """The next message, or WorkerDied when the process ends or is silent for `timeout_s`."""
        assert self._conn is not None and self._process is not None
        try:
            if not self._conn.poll(timeout_s):
                self._process.kill()
                self._process.wait()
                raise WorkerDied(f"no answer in {timeout_s:g} s", timed_out=True)
            reply: dict[str, Any] = json.loads(self._conn.recv_bytes(MAX_REPLY_BYTES))
        except (EOFError, OSError) as error:
            # A reply past MAX_REPLY_BYTES leaves the worker alive, still writing it: stop it rather
            # than wait on it. Any other failure here means it is gone.
            alive = self._process.poll() is None
            if alive:
                self._process.kill()
            self._process.wait()
            too_large = alive and isinstance(error, OSError)
            raise WorkerDied(f"exit status {self._process.returncode}", reply_too_large=too_large) from error
        return reply

    def _load_in_process(self, code: str, tessdata: str) -> None:
        self._send({"op": "load", "code": code, "tessdata": tessdata})
        reply = self._receive(_STARTUP_TIMEOUT_S)
        if "error" in reply:
            raise ModelUnavailable(
                f"Tesseract could not load {code} from {tessdata}: {reply['error']['message']}"
            )

    # -- engines ------------------------------------------------------------------------------

    def load_engine(self, code: str, tessdata: Path) -> None:
        with self._lock:
            self._ensure_started()
            try:
                self._load_in_process(code, str(tessdata))
            except WorkerDied as error:
                self._stop()
                raise ModelUnavailable(f"the OCR worker died loading {code}: {error}") from error
            self._engines[code] = str(tessdata)

    def unload_engine(self, code: str) -> None:
        """Drop an engine; the process ends with the last one, giving all its memory back."""
        with self._lock:
            self._engines.pop(code, None)
            if self._process is None:
                return
            if not self._engines:
                self._stop()
                return
            try:
                self._send({"op": "unload", "code": code})
                self._receive(_STARTUP_TIMEOUT_S)
            except WorkerDied:
                self._stop()

    def load_tables(self) -> None:
        """Import table detection into the worker (numpy; service/ocr/tables.py)."""
        with self._lock:
            self._ensure_started()
            try:
                self._send({"op": "load_tables"})
                self._receive(_STARTUP_TIMEOUT_S)
            except WorkerDied as error:
                self._stop()
                raise ModelUnavailable(f"the OCR worker died loading table detection: {error}") from error
            self._tables = True

    def unload_tables(self) -> None:
        """A module cannot be unimported: the worker is replaced by one without it (its engines
        reload in the background), so that the memory really comes back."""
        with self._lock:
            if not self._tables:
                return
            self._tables = False
            if self._process is None:
                return
            self._stop()
        threading.Thread(target=self._restart, name="ocr-worker-restart", daemon=True).start()

    # -- jobs ---------------------------------------------------------------------------------

    def run(self, job: OcrJob, code: str, settings: OcrSettings) -> tuple[int, list[OcrPage]]:
        """Recognise one upload in the worker, within `turn`: (page count, pages read), or the job's
        own error. A worker that died on the previous job is replaced first."""
        with self._lock:
            return self._run(job, code, settings)

    def _run(self, job: OcrJob, code: str, settings: OcrSettings) -> tuple[int, list[OcrPage]]:
        self._ensure_started()
        message = {
            "op": "ocr",
            "kind": job.kind,
            "options": dataclasses.asdict(job.options),
            "code": code,
            "limits": dataclasses.asdict(settings.job_limits()),
        }
        progress = _Progress()
        try:
            self._send(message, job.data)
            return self._collect(settings, progress)
        except WorkerDied as error:
            status = self._process.returncode if self._process is not None else None
            self._stop()
            threading.Thread(target=self._restart, name="ocr-worker-restart", daemon=True).start()
            raise _death_error(status, progress.page, settings, error) from error

    @contextmanager
    def turn(self, settings: OcrSettings) -> Iterator[None]:
        """The worker to this request alone, for one job or for each file of a request in turn;
        refused at once (503) when OCR_QUEUE_MAX requests already wait for it. Loading an engine
        into the worker is not a turn: it is done within one."""
        with self._waiting_lock:
            if self._waiting > settings.queue_max:
                raise Overloaded(
                    f"{self._waiting} OCR requests are already waiting for the OCR worker "
                    f"(OCR_QUEUE_MAX={settings.queue_max}); retry shortly",
                    retry_after_s=5,
                )
            self._waiting += 1
        try:
            with self._turn_lock:
                yield
        finally:
            with self._waiting_lock:
                self._waiting -= 1

    @property
    def waiting(self) -> int:
        """Requests in line for the worker, the one whose turn it is included."""
        return self._waiting

    def _collect(self, settings: OcrSettings, progress: "_Progress") -> tuple[int, list[OcrPage]]:
        page_count, pages = 0, []
        started = time.perf_counter()
        while True:
            reply = self._receive(settings.page_timeout_s)
            if "outline" in reply:
                page_count = reply["outline"]["page_count"]
            elif "page_started" in reply:
                progress.page, started = reply["page_started"], time.perf_counter()
            elif "page" in reply:
                pages.append(_page(reply["page"], time.perf_counter() - started))
            elif "error" in reply:
                raise _service_error(reply["error"])
            elif reply.get("done"):
                return page_count, pages

    def _restart(self) -> None:
        """Start the next worker (and its engines) now, so the next upload does not wait for it."""
        with self._lock:
            if self._engines and self._process is None:
                try:
                    self._start()
                except Exception:  # the next job retries and reports it
                    logger.exception("the OCR worker could not be restarted")
                    self._stop()

    def close(self) -> None:
        with self._lock:
            self._engines.clear()
            self._tables = False
            self._stop()


@dataclass
class _Progress:
    page: int = 0  # the page being read, named if the worker dies on it


def _page(page: dict[str, Any], seconds: float) -> OcrPage:
    words = page.pop("words")
    page["words"] = None if words is None else [Word(*word) for word in words]
    return OcrPage(**page, seconds=seconds)


def _service_error(error: dict[str, Any]) -> ServiceError:
    """The worker's error as the same ServiceError, with its status, code and details."""
    status, code, message = error.pop("status"), error.pop("code"), error.pop("message")
    exception = ServiceError(message, **error)
    exception.status_code, exception.code = status, code
    return exception


def _death_error(status: int | None, page: int, settings: OcrSettings, cause: WorkerDied) -> ServiceError:
    where = f" while reading page {page}" if page else ""
    if cause.reply_too_large:
        return TooLarge(
            f"the result of this upload{where} is larger than the {MAX_REPLY_BYTES:,} bytes the OCR worker "
            "may send for one page; the worker was stopped: ask without words or tables, or send smaller "
            "pages",
            limit_bytes=MAX_REPLY_BYTES,
        )
    if cause.timed_out:
        return BadInput(
            f"reading this upload took longer than OCR_PAGE_TIMEOUT_S={settings.page_timeout_s:g} s{where}; "
            "the OCR worker was stopped",
            timeout_s=settings.page_timeout_s,
        )
    if status is not None and status < 0 and -status in _MEMORY_DEATHS:
        return TooLarge(
            f"decoding this upload needed more than OCR_WORK_MB={settings.work_mb:g} MB of working "
            f"memory{where}; the OCR worker was stopped and the server keeps serving: send a smaller file",
            limit_mb=settings.work_mb,
        )
    return Undecodable(
        f"the OCR worker failed on this upload{where} ({cause}): the file is malformed; "
        "the server keeps serving"
    )


_worker: OcrWorker | None = None
_worker_lock = threading.Lock()


def get_worker() -> OcrWorker:
    """The process's one OCR worker handle (its process starts with the first engine)."""
    global _worker
    with _worker_lock:
        if _worker is None:
            _worker = OcrWorker()
        return _worker
