"""The recent past the dashboard draws on first paint: fixed-size rings of samples and events.

Every HISTORY_STEP_S a thread takes one sample (RSS, budget, headroom, the requests, 503s, loads,
evictions, refusals and watchdog actions of that step); events (`service.events`) are kept with
their time and what they were about. Both are rings in one memory map whose size is fixed when the
process starts: the history never grows, and its bytes are in RSS from the start (every page is
touched then). Columns are typed views (`memoryview.cast`) over the map, so a sample is a few
stores and the server does not need numpy for it.

With HISTORY_DIR set (supervise.sh makes one that outlives its workers), the map is a file there:
a worker that recycles leaves its history in the page cache and the next one carries on with it.
The file is locked (`flock`) by the worker using it; a second process that finds it locked keeps
its own history in anonymous memory rather than corrupting the shared one.
"""

import fcntl
import logging
import mmap
import os
import struct
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from service import events
from service.budget import rss_mb
from service.monitoring.config import get_monitoring_settings
from service.registry import get_registry

logger = logging.getLogger(__name__)

FILE_NAME = "history.bin"
MAGIC = b"P512HIST"
VERSION = 1
HEADER = struct.Struct("<8sIIIIdQQ")  # magic, version, layout, samples, events, step_s, written x2
HEADER_BYTES = 64
DETAIL_BYTES = 60
# Consecutive events of one kind and detail this close together are one entry with a count: a
# flood of refusals or a watchdog cleaning up every few seconds cannot push the loads out.
MERGE_S = 60.0
OWN_ROUTE_PREFIX = "/dashboard"  # the page's own polling is not the service's traffic

# One sample: (name, typecode). 'd' float64, 'f' float32, 'I' uint32.
SAMPLE_COLUMNS: tuple[tuple[str, str], ...] = (
    ("t", "d"),  # Unix seconds
    ("pid", "I"),  # the worker that took it: a change is a restart
    ("rss_mb", "f"),
    ("budget_mb", "f"),
    ("usable_mb", "f"),  # budget - margin: loads are refused above it
    ("headroom_mb", "f"),  # usable - RSS - reserved, as /memory reports it
    ("reserved_mb", "f"),
    ("models_loaded", "I"),
    ("refusing", "I"),  # 1 while the watchdog refuses new work at its hard limit
    # What happened during the step that ends at t:
    ("requests", "I"),
    ("latency_s", "f"),  # the summed latency of those requests
    ("errors_503", "I"),
    ("errors_5xx", "I"),
    ("loads", "I"),
    ("evictions", "I"),
    ("refusals", "I"),
    ("load_failures", "I"),
    ("watchdog", "I"),
    ("recycles", "I"),
)
EVENT_COLUMNS: tuple[tuple[str, str], ...] = (("t", "d"), ("t_last", "d"), ("value", "f"), ("count", "I"))
# Per-step counts taken from events, by event kind.
COUNTED_KINDS = {
    "load": "loads",
    "eviction": "evictions",
    "refusal": "refusals",
    "load_failure": "load_failures",
    "watchdog": "watchdog",
    "recycle": "recycles",
}
STEP_COUNTS = ("requests", "latency_s", "errors_503", "errors_5xx", *COUNTED_KINDS.values())


def _aligned(offset: int) -> int:
    return (offset + 7) // 8 * 8


@dataclass(frozen=True)
class Layout:
    samples: int
    events: int
    step_s: float

    def columns(self) -> list[tuple[str, str, int, int]]:
        """(ring, name, offset, bytes) of every column, sample columns first."""
        out = []
        offset = HEADER_BYTES
        for ring, columns, rows in (("s", SAMPLE_COLUMNS, self.samples), ("e", EVENT_COLUMNS, self.events)):
            for name, code in columns:
                size = rows * struct.calcsize(code)
                out.append((ring, name, offset, size))
                offset = _aligned(offset + size)
        out.append(("e", "kind", offset, self.events))
        offset = _aligned(offset + self.events)
        out.append(("e", "detail", offset, self.events * DETAIL_BYTES))
        return out

    @property
    def size(self) -> int:
        *_, offset, size = self.columns()[-1]
        return mmap.PAGESIZE * -(-(offset + size) // mmap.PAGESIZE)

    @property
    def checksum(self) -> int:
        """Changes with anything that moves a byte: then an old file is started afresh."""
        return zlib.crc32(repr((SAMPLE_COLUMNS, EVENT_COLUMNS, DETAIL_BYTES, self)).encode())


def _open_map(layout: Layout, directory: Path | None) -> tuple[mmap.mmap, int | None]:
    """The file map in `directory` (locked, allocated on disk), or anonymous memory: (map, fd)."""
    if directory is None:
        return mmap.mmap(-1, layout.size), None
    try:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(directory / FILE_NAME, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as error:
        logger.warning("history: cannot open a file in %s (%s); kept in memory only", directory, error)
        return mmap.mmap(-1, layout.size), None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if os.fstat(fd).st_size != layout.size:
            os.ftruncate(fd, 0)
            os.ftruncate(fd, layout.size)
        # Blocks on disk now: a store into a sparse map on a full disk would be SIGBUS later.
        os.posix_fallocate(fd, 0, layout.size)
        return mmap.mmap(fd, layout.size), fd
    except OSError as error:
        os.close(fd)
        reason = "another process holds it" if isinstance(error, BlockingIOError) else str(error)
        logger.warning("history: %s/%s unusable (%s); kept in memory only", directory, FILE_NAME, reason)
        return mmap.mmap(-1, layout.size), None


class History:
    """The two rings over one map; every method is safe to call from any thread."""

    def __init__(
        self, layout: Layout, directory: Path | None = None, refusing: Callable[[], bool] = lambda: False
    ) -> None:
        self.layout = layout
        self.refusing = refusing  # whether the watchdog refuses new work now (ops owns the watchdog)
        self._map, self._fd = _open_map(layout, directory)
        self.persisted = self._fd is not None
        self._lock = threading.Lock()
        self._view = memoryview(self._map)
        self._samples: dict[str, memoryview] = {}
        self._events: dict[str, memoryview] = {}
        for ring, name, offset, size in layout.columns():
            view = self._view[offset : offset + size]
            if name not in ("kind", "detail"):
                view = view.cast(dict(SAMPLE_COLUMNS if ring == "s" else EVENT_COLUMNS)[name])
            (self._samples if ring == "s" else self._events)[name] = view
        magic, version, checksum, _, _, _, self._written, self._events_written = HEADER.unpack_from(self._map)
        self.restored = (magic, version, checksum) == (MAGIC, VERSION, layout.checksum) and self._written > 0
        if not self.restored:
            self._view[:] = bytes(layout.size)
            self._written = self._events_written = 0
            self._write_header()
        else:
            self._touch()
        self._step = dict.fromkeys(STEP_COUNTS, 0.0)
        # Set under the lock by close(): a request or an event racing the app's shutdown is dropped.
        self._closed = False

    @property
    def bytes(self) -> int:
        return self.layout.size

    def _touch(self) -> None:
        """Read every page, so the whole map is resident (and counted in RSS) from the start."""
        for offset in range(0, self.layout.size, mmap.PAGESIZE):
            self._map[offset]

    def _write_header(self) -> None:
        layout = self.layout
        HEADER.pack_into(
            self._map, 0, MAGIC, VERSION, layout.checksum, layout.samples, layout.events, layout.step_s,
            self._written, self._events_written,
        )  # fmt: skip

    def close(self) -> None:
        with self._lock:
            self._closed = True
            for view in (*self._samples.values(), *self._events.values(), self._view):
                view.release()
            self._map.close()
            if self._fd is not None:
                os.close(self._fd)  # the lock goes with it

    # What happens between samples.
    def observe_request(self, route: str, status: int, seconds: float) -> None:
        if route.startswith(OWN_ROUTE_PREFIX):
            return
        with self._lock:
            step = self._step
            step["requests"] += 1
            step["latency_s"] += seconds
            if status >= 500:
                step["errors_5xx"] += 1
                if status == 503:
                    step["errors_503"] += 1

    def record_event(
        self, kind: events.Kind, detail: str = "", value: float = 0.0, at: float | None = None
    ) -> None:
        now = time.time() if at is None else at
        raw = detail.encode()[:DETAIL_BYTES].decode("utf-8", "ignore").encode()
        code = events.KINDS.index(kind)
        ring = self._events
        with self._lock:
            if self._closed:
                return
            counted = COUNTED_KINDS.get(kind)
            if counted is not None:
                self._step[counted] += 1
            if self._events_written:
                last = (self._events_written - 1) % self.layout.events
                start = last * DETAIL_BYTES
                if (
                    ring["kind"][last] == code
                    and bytes(ring["detail"][start : start + DETAIL_BYTES]).rstrip(b"\0") == raw
                    and now - ring["t_last"][last] <= MERGE_S
                ):
                    ring["t_last"][last] = now
                    ring["value"][last] = value
                    ring["count"][last] += 1
                    return
            index = self._events_written % self.layout.events
            ring["t"][index] = ring["t_last"][index] = now
            ring["value"][index] = value
            ring["count"][index] = 1
            ring["kind"][index] = code
            start = index * DETAIL_BYTES
            ring["detail"][start : start + DETAIL_BYTES] = raw.ljust(DETAIL_BYTES, b"\0")
            self._events_written += 1
            self._write_header()

    def record_sample(self, values: dict[str, float]) -> None:
        """Store one sample: `values` (the readings) plus what the step counted, which starts over."""
        with self._lock:
            if self._closed:
                return
            row = {**values, **self._step}
            self._step = dict.fromkeys(STEP_COUNTS, 0.0)
            index = self._written % self.layout.samples
            for name, code in SAMPLE_COLUMNS:
                value = row.get(name, 0)
                self._samples[name][index] = int(value) if code == "I" else float(value)
            self._written += 1
            self._write_header()

    def sample(self) -> None:
        """Read the process's state now and store it with the step's counts."""
        registry = get_registry()
        budget = registry.budget
        rss = rss_mb()
        reserved = registry.reserved_mb
        self.record_sample(
            {
                "t": time.time(),
                "pid": os.getpid(),
                "rss_mb": rss,
                "budget_mb": budget.limit_mb,
                "usable_mb": budget.usable_mb,
                "headroom_mb": budget.usable_mb - rss - reserved,
                "reserved_mb": reserved,
                "models_loaded": len(registry.snapshot()),
                "refusing": int(self.refusing()),
            }
        )

    # Reading it back, oldest first.
    def _order(self, written: int, capacity: int) -> list[int]:
        if written <= capacity:
            return list(range(written))
        first = written % capacity
        return [*range(first, capacity), *range(first)]

    def read(self, after: float | None = None) -> dict[str, Any]:
        """The samples taken after `after` (all when None) as columns, and every event kept."""
        with self._lock:
            if self._closed:
                return {"samples": {name: [] for name, _ in SAMPLE_COLUMNS}, "events": []}
            order = self._order(self._written, self.layout.samples)
            times = self._samples["t"].tolist()
            rows = [i for i in order if after is None or times[i] > after]
            samples = {}
            for name, code in SAMPLE_COLUMNS:
                column = self._samples[name].tolist()
                if code == "f":
                    samples[name] = [round(column[i], 2) for i in rows]
                else:
                    samples[name] = [column[i] for i in rows]
            ring = self._events
            kept = []
            for i in self._order(self._events_written, self.layout.events):
                start = i * DETAIL_BYTES
                kept.append(
                    {
                        "t": ring["t"][i],
                        "t_last": ring["t_last"][i],
                        "kind": events.KINDS[ring["kind"][i]],
                        "detail": bytes(ring["detail"][start : start + DETAIL_BYTES]).rstrip(b"\0").decode(),
                        "value": round(ring["value"][i], 1),
                        "count": ring["count"][i],
                    }
                )
        return {"samples": samples, "events": kept}


class Sampler:
    """The thread that takes a sample every step, on a fixed schedule that does not drift."""

    def __init__(self, history: History) -> None:
        self.history = history
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dashboard-history", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        step = self.history.layout.step_s
        due = time.monotonic() + step
        while not self._stop.wait(max(due - time.monotonic(), 0)):
            try:
                self.history.sample()
            except Exception:  # one failed reading must not end the history
                logger.exception("history: sample failed")
            due += step
            if due < time.monotonic():  # the process was stopped or starved: skip, do not catch up
                due = time.monotonic() + step


_current: History | None = None
_sampler: Sampler | None = None
_unsubscribe = None


def current_history() -> History | None:
    return _current


def observe_request(route: str, status: int, seconds: float) -> None:
    """Called by the metrics middleware for every request."""
    history = _current
    if history is not None:
        history.observe_request(route, status, seconds)


def start_history(refusing: Callable[[], bool] = lambda: False) -> History:
    """Open the history (carrying on a previous worker's, if HISTORY_DIR holds one) and sample it.

    `refusing` says whether the memory watchdog refuses new work now (the app's lifespan passes it).
    """
    global _current, _sampler, _unsubscribe
    stop_history()
    settings = get_monitoring_settings()
    layout = Layout(settings.history_samples, settings.history_events, settings.history_step_s)
    history = History(layout, settings.history_dir, refusing)
    kept = ", the previous worker's history kept" if history.restored else ""
    history.record_event("start", f"worker {os.getpid()} started{kept}", rss_mb())
    history.sample()
    _unsubscribe = events.subscribe(history.record_event)
    _current = history
    _sampler = Sampler(history)
    _sampler.start()
    return history


def stop_history() -> None:
    global _current, _sampler, _unsubscribe
    if _sampler is not None:
        _sampler.stop()
        _sampler = None
    if _unsubscribe is not None:
        _unsubscribe()
        _unsubscribe = None
    if _current is not None:
        history, _current = _current, None
        history.record_event("stop", f"worker {os.getpid()} stopping", rss_mb())
        history.close()
