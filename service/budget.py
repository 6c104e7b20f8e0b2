"""Where the memory budget is decided, and how the process's memory is read.

The budget is MEMORY_BUDGET_MB when set, else the container's own limit (cgroup v2
`memory.max`, cgroup v1 `memory.limit_in_bytes`), else 512 MB: Render's free plan.
"""

import contextlib
import os
import resource
import threading
from dataclasses import dataclass
from pathlib import Path

import psutil

DEFAULT_BUDGET_MB = 512
MB = 1024 * 1024
# cgroup v1 reports "no limit" as a page-rounded 2**63; anything this large is no limit.
_UNLIMITED_BYTES = 1 << 60

_process = psutil.Process()
# Child processes whose memory is the service's too (the OCR worker), by pid.
_children: dict[int, "ProcFile"] = {}


@dataclass(frozen=True)
class Budget:
    limit_mb: float
    source: str
    margin_mb: float

    @property
    def usable_mb(self) -> float:
        """What loads and requests may fill: the limit less the safety margin."""
        return self.limit_mb - self.margin_mb


def cgroup_paths(proc_cgroup: Path, controller: str = "memory") -> tuple[str | None, str | None]:
    """The process's cgroup v2 path and its cgroup v1 path for `controller` (memory, cpu)."""
    v2 = v1 = None
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return None, None
    for line in lines:
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hierarchy == "0" and controllers == "":
            v2 = path
        elif controller in controllers.split(","):
            v1 = path
    return v2, v1


def _read_limit(candidates: list[Path]) -> tuple[int, Path] | None:
    """The first readable limit among candidates; None when unlimited or unreadable."""
    for path in candidates:
        try:
            raw = path.read_text().strip()
        except OSError:
            continue
        if raw == "max":
            return None
        try:
            value = int(raw)
        except ValueError:
            continue
        return (value, path) if 0 < value < _UNLIMITED_BYTES else None
    return None


def cgroup_limit(
    root: Path = Path("/sys/fs/cgroup"), proc_cgroup: Path = Path("/proc/self/cgroup")
) -> tuple[float, str] | None:
    """The container's memory limit in MB and which file said so, or None if unlimited."""
    v2_path, v1_path = cgroup_paths(proc_cgroup)
    lookups = []
    if v2_path is not None:
        own = root / v2_path.lstrip("/") / "memory.max"
        lookups.append(("cgroup v2 memory.max", [own, root / "memory.max"]))
    if v1_path is not None:
        own = root / "memory" / v1_path.lstrip("/") / "memory.limit_in_bytes"
        lookups.append(("cgroup v1 memory.limit_in_bytes", [own, root / "memory" / "memory.limit_in_bytes"]))
    for source, candidates in lookups:
        found = _read_limit(candidates)
        if found is not None:
            value, _ = found
            return value / MB, source
    return None


def detect_budget(
    env_budget_mb: int | None,
    margin_mb: float,
    root: Path = Path("/sys/fs/cgroup"),
    proc_cgroup: Path = Path("/proc/self/cgroup"),
) -> Budget:
    if env_budget_mb is not None:
        return Budget(float(env_budget_mb), "env MEMORY_BUDGET_MB", margin_mb)
    found = cgroup_limit(root, proc_cgroup)
    if found is not None:
        limit_mb, source = found
        return Budget(limit_mb, source, margin_mb)
    return Budget(float(DEFAULT_BUDGET_MB), "default", margin_mb)


class ProcFile:
    """A /proc file kept open and re-read from offset 0: a read needs no new descriptor, so the
    memory watchdog keeps reading RSS while the process has run out of them (EMFILE). Reopened in a
    forked child, since /proc/self was resolved by the process that opened it."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd = -1
        self._pid = 0
        self._lock = threading.Lock()

    def read(self) -> bytes:
        pid = os.getpid()
        if self._pid != pid:
            with self._lock:
                if self._pid != pid:
                    if self._fd >= 0:
                        os.close(self._fd)  # the parent's, inherited through fork
                    self._fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
                    self._pid = pid
        return os.pread(self._fd, 4096, 0)

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0 and self._pid == os.getpid():
                os.close(self._fd)
            self._fd, self._pid = -1, 0


_STATM = ProcFile("/proc/self/statm") if os.path.exists("/proc/self/statm") else None
_PAGE_BYTES = resource.getpagesize()


def _statm_rss_mb(statm: ProcFile) -> float:
    """The second field of a statm file (what psutil reads as RSS), in MB."""
    return int(statm.read().split()[1]) * _PAGE_BYTES / MB


def own_rss_mb() -> float:
    """This process's resident set size, from a kept descriptor; psutil where there is no /proc."""
    if _STATM is None:
        return _process.memory_info().rss / MB
    return _statm_rss_mb(_STATM)


def track_child(pid: int) -> None:
    """Count a child process's RSS in `rss_mb` from now on (until `forget_child`); its statm is
    opened now and kept, like this process's own."""
    statm = ProcFile(f"/proc/{pid}/statm")
    with contextlib.suppress(OSError):  # it has already ended
        statm.read()
        _children[pid] = statm


def forget_child(pid: int) -> None:
    statm = _children.pop(pid, None)
    if statm is not None:
        statm.close()


def child_rss_mb() -> float:
    """RSS of the tracked child processes, in MB."""
    total = 0.0
    for statm in list(_children.values()):
        try:
            total += _statm_rss_mb(statm)
        except (OSError, IndexError, ValueError):  # it ended; its owner forgets it
            continue
    return total


def rss_mb() -> float:
    """The service's RSS: this process and its tracked children (the OCR worker), which the
    watchdog, the registry and /metrics compare with the budget."""
    return own_rss_mb() + (child_rss_mb() if _children else 0.0)


def peak_rss_mb() -> float:
    """The process's high-water mark (VmHWM), in MB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def thread_count() -> int:
    return _process.num_threads()
