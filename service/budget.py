"""Where the memory budget is decided, and how the process's memory is read.

The budget is MEMORY_BUDGET_MB when set, else the container's own limit (cgroup v2
`memory.max`, cgroup v1 `memory.limit_in_bytes`), else 512 MB: Render's free plan.
What it is spent on is memory that cannot be reclaimed (`unreclaimable_mb`): anonymous memory,
the process's and its cgroup's. File-backed pages (mapped prepacked weights) are reclaimable:
the registry adds an allowance for those a running model reads (service/registry.py).
"""

import contextlib
import os
import re
import resource
import threading
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

DEFAULT_BUDGET_MB = 512
MB = 1024 * 1024
# cgroup v1 reports "no limit" as a page-rounded 2**63; anything this large is no limit.
_UNLIMITED_BYTES = 1 << 60

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
    group = limited_cgroup(root, proc_cgroup)
    if group is None:
        return None
    found = _read_limit([group.path / _LIMIT_FILE[group.version]])
    assert found is not None  # limited_cgroup just read it
    return found[0] / MB, f"cgroup v{group.version} {_LIMIT_FILE[group.version]}"


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

    def __init__(self, path: str, size: int = 4096) -> None:
        self.path = path
        self.size = size  # bytes read: the whole file
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
        return os.pread(self._fd, self.size, 0)

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
        return _psutil_process().memory_info().rss / MB
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


@dataclass(frozen=True)
class ProcessMemory:
    """This process's resident memory split as /proc/self/status splits it (MB)."""

    rss_mb: float
    anon_mb: float  # RssAnon: heap, arenas, copied weights; never reclaimed without swap
    file_mb: float  # RssFile: mapped files (prepacked weights, libraries); clean, reclaimable
    shmem_mb: float  # RssShmem: shared memory, tmpfs; not reclaimable without swap

    @property
    def unreclaimable_mb(self) -> float:
        return self.anon_mb + self.shmem_mb


SELF_STATUS = Path("/proc/self/status")
# Read for every model call (the registry admits each one): from a kept descriptor, the 4 fields
# picked out by one regex, ~5x faster than opening the file and splitting its ~55 lines.
_STATUS = ProcFile(str(SELF_STATUS), 16 * 1024) if SELF_STATUS.exists() else None
_STATUS_FIELDS = re.compile(rb"\n(VmRSS|RssAnon|RssFile|RssShmem):\s*(\d+)")  # never the first line


def process_memory(status: Path | None = None) -> ProcessMemory:
    """This process's memory (`status` None), or another's from its status file (zeros once it ended)."""
    fields = {"VmRSS": 0.0, "RssAnon": 0.0, "RssFile": 0.0, "RssShmem": 0.0}
    try:
        if status is not None:
            text = status.read_bytes()
        else:
            text = _STATUS.read() if _STATUS is not None else SELF_STATUS.read_bytes()
    except OSError:
        if status is not None:  # a child that has ended
            return ProcessMemory(0.0, 0.0, 0.0, 0.0)
        text = b""
    for name, kb in _STATUS_FIELDS.findall(text):
        fields[name.decode()] = int(kb) / 1024
    if not fields["VmRSS"]:  # no /proc (macOS): all of RSS counts as anonymous, the safe side
        rss = rss_mb()
        return ProcessMemory(rss, rss, 0.0, 0.0)
    return ProcessMemory(fields["VmRSS"], fields["RssAnon"], fields["RssFile"], fields["RssShmem"])


@dataclass(frozen=True)
class CgroupMemory:
    """The memory cgroup's own figures (MB): they include child processes and kernel memory."""

    version: int
    current_mb: float  # v2 memory.current, v1 memory.usage_in_bytes: what the limit is checked against
    anon_mb: float  # v2 anon, v1 total_rss
    file_mb: float  # v2 file, v1 total_cache: page cache, reclaimable except its shmem part
    shmem_mb: float
    peak_mb: float | None  # v2 memory.peak, v1 memory.max_usage_in_bytes

    @property
    def unreclaimable_mb(self) -> float:
        """All that is charged except page cache the kernel can drop."""
        return max(self.current_mb - self.file_mb + self.shmem_mb, self.anon_mb + self.shmem_mb, 0.0)


@dataclass(frozen=True)
class CgroupDir:
    version: int
    path: Path


_LIMIT_FILE = {2: "memory.max", 1: "memory.limit_in_bytes"}


def limited_cgroup(
    root: Path = Path("/sys/fs/cgroup"), proc_cgroup: Path = Path("/proc/self/cgroup")
) -> CgroupDir | None:
    """The memory cgroup whose limit applies to this process (v2, else v1): its own group, else the
    namespaced root when its own files cannot be read; None when there is no limit.

    Without a limit the group may be the host's root, whose figures are every process's."""
    v2_path, v1_path = cgroup_paths(proc_cgroup)
    lookups = []
    if v2_path is not None:
        lookups.append((2, [root / v2_path.lstrip("/"), root]))
    if v1_path is not None:
        lookups.append((1, [root / "memory" / v1_path.lstrip("/"), root / "memory"]))
    for version, dirs in lookups:
        for path in dirs:
            if not (path / _LIMIT_FILE[version]).is_file():
                continue
            if _read_limit([path / _LIMIT_FILE[version]]) is not None:
                return CgroupDir(version, path)
            break  # the first readable limit decides, as the kernel's own group does
    return None


def _parse_stat(text: bytes) -> dict[str, int]:
    stats = {}
    for line in text.splitlines():
        name, _, value = line.partition(b" ")
        if value.strip().isdigit():
            stats[name.decode()] = int(value)
    return stats


def _parse_int(read: Callable[[str], bytes], name: str) -> int | None:
    try:
        return int(read(name).strip())
    except (OSError, ValueError):
        return None


class _KeptFiles:
    """The own cgroup's memory files, each read from a descriptor kept open (`ProcFile`): they are
    read for every model call, and opening three files each time cost more than reading them."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._files: dict[str, ProcFile] = {}

    def read(self, name: str) -> bytes:
        file = self._files.get(name)
        if file is None:
            file = self._files[name] = ProcFile(str(self.directory / name), 64 * 1024)
        return file.read()


@lru_cache(maxsize=1)
def _own_files(group: CgroupDir) -> _KeptFiles:
    return _KeptFiles(group.path)


def cgroup_memory(group: CgroupDir | None) -> CgroupMemory | None:
    """The group's memory figures, or None when it has none to read."""
    if group is None:
        return None
    read = _own_files(group).read if group is own_cgroup() else lambda name: (group.path / name).read_bytes()
    try:
        stat = _parse_stat(read("memory.stat"))
    except OSError:
        return None
    if group.version == 2:
        current = _parse_int(read, "memory.current")
        peak = _parse_int(read, "memory.peak")
        anon, file, shmem = stat.get("anon", 0), stat.get("file", 0), stat.get("shmem", 0)
    else:
        current = _parse_int(read, "memory.usage_in_bytes")
        peak = _parse_int(read, "memory.max_usage_in_bytes")
        # total_* include the group's children (a variant being made by a child process).
        anon = stat.get("total_rss", stat.get("rss", 0))
        file = stat.get("total_cache", stat.get("cache", 0))
        shmem = stat.get("total_shmem", stat.get("shmem", 0))
    if current is None:
        return None
    return CgroupMemory(
        group.version, current / MB, anon / MB, file / MB, shmem / MB, None if peak is None else peak / MB
    )


@lru_cache
def own_cgroup() -> CgroupDir | None:
    return limited_cgroup()


def unreclaimable_mb() -> float:
    """What the budget counts as used: memory the kernel cannot take back without killing.

    The process's anonymous memory and its tracked children's (the OCR worker), or its cgroup's
    unreclaimable memory when that is larger (it also holds other child processes, such as a
    prepacked variant being made, and kernel memory). Mapped weights are not in it: they are
    clean file pages, dropped and re-read under pressure.
    """
    children = sum(process_memory(Path(f"/proc/{pid}/status")).unreclaimable_mb for pid in list(_children))
    return unreclaimable_of(process_memory(), cgroup_memory(own_cgroup()), children)


def unreclaimable_of(process: ProcessMemory, group: CgroupMemory | None, children_mb: float = 0.0) -> float:
    """The process's and its tracked children's, or the cgroup's when larger."""
    own = process.unreclaimable_mb + children_mb
    return max(own, group.unreclaimable_mb) if group is not None else own


def peak_rss_mb() -> float:
    """The process's high-water mark (VmHWM), in MB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def thread_count() -> int:
    return _psutil_process().num_threads()


@lru_cache(maxsize=1)
def _psutil_process() -> Any:
    """psutil, imported when first asked (/memory, no /proc): not on the path to a first answer."""
    import psutil

    return psutil.Process()
