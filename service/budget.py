"""Where the memory budget is decided, and how the process's memory is read.

The budget is MEMORY_BUDGET_MB when set, else the container's own limit (cgroup v2
`memory.max`, cgroup v1 `memory.limit_in_bytes`), else 512 MB: Render's free plan.
"""

import contextlib
import resource
from dataclasses import dataclass
from pathlib import Path

import psutil

DEFAULT_BUDGET_MB = 512
MB = 1024 * 1024
# cgroup v1 reports "no limit" as a page-rounded 2**63; anything this large is no limit.
_UNLIMITED_BYTES = 1 << 60

_process = psutil.Process()
# Child processes whose memory is the service's too (the OCR worker), by pid.
_children: dict[int, psutil.Process] = {}


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


def track_child(pid: int) -> None:
    """Count a child process's RSS in `rss_mb` from now on (until `forget_child`)."""
    with contextlib.suppress(psutil.NoSuchProcess):
        _children[pid] = psutil.Process(pid)


def forget_child(pid: int) -> None:
    _children.pop(pid, None)


def child_rss_mb() -> float:
    """RSS of the tracked child processes, in MB."""
    total = 0
    for child in list(_children.values()):
        try:
            total += child.memory_info().rss
        except psutil.Error:  # it ended; its owner forgets it
            continue
    return total / MB


def rss_mb() -> float:
    """The service's RSS: this process and its tracked children (the OCR worker)."""
    return _process.memory_info().rss / MB + (child_rss_mb() if _children else 0.0)


def peak_rss_mb() -> float:
    """The process's high-water mark (VmHWM), in MB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def thread_count() -> int:
    return _process.num_threads()
