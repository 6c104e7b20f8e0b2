"""The budget comes from the env var, the container's cgroup (v2 or v1), or the 512 MB default."""

import errno
import resource
from pathlib import Path

import psutil
import pytest

from service.budget import DEFAULT_BUDGET_MB, cgroup_limit, detect_budget, peak_rss_mb, rss_mb
from service.ops.watchdog import Limits, Watchdog

MB = 1024 * 1024


def fake_cgroup(tmp_path: Path, proc_lines: list[str], files: dict[str, str]) -> tuple[Path, Path]:
    root = tmp_path / "sys_fs_cgroup"
    for relative, content in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
    proc = tmp_path / "proc_self_cgroup"
    proc.write_text("\n".join(proc_lines) + "\n")
    return root, proc


def test_cgroup_v2_limit_of_the_process_own_group(tmp_path):
    root, proc = fake_cgroup(
        tmp_path, ["0::/render/web"], {"render/web/memory.max": str(512 * MB), "memory.max": "max"}
    )
    assert cgroup_limit(root, proc) == (512.0, "cgroup v2 memory.max")


def test_cgroup_v2_namespaced_root(tmp_path):
    root, proc = fake_cgroup(tmp_path, ["0::/"], {"memory.max": str(1024 * MB)})
    budget = detect_budget(None, 32, root, proc)
    assert (budget.limit_mb, budget.source, budget.usable_mb) == (1024.0, "cgroup v2 memory.max", 992.0)


def test_cgroup_v2_unlimited_falls_back_to_default(tmp_path):
    root, proc = fake_cgroup(tmp_path, ["0::/"], {"memory.max": "max"})
    budget = detect_budget(None, 32, root, proc)
    assert (budget.limit_mb, budget.source) == (DEFAULT_BUDGET_MB, "default")


def test_cgroup_v1_memory_controller(tmp_path):
    root, proc = fake_cgroup(
        tmp_path,
        ["5:cpu,cpuacct:/", "4:memory:/docker/abc", "0::/"],
        {"memory/docker/abc/memory.limit_in_bytes": str(768 * MB)},
    )
    assert cgroup_limit(root, proc) == (768.0, "cgroup v1 memory.limit_in_bytes")


def test_cgroup_v1_unlimited_is_no_limit(tmp_path):
    root, proc = fake_cgroup(
        tmp_path, ["4:memory:/"], {"memory/memory.limit_in_bytes": "9223372036854771712"}
    )
    assert cgroup_limit(root, proc) is None


def test_env_var_wins_over_cgroup(tmp_path):
    root, proc = fake_cgroup(tmp_path, ["0::/"], {"memory.max": str(256 * MB)})
    budget = detect_budget(400, 10, root, proc)
    assert (budget.limit_mb, budget.source, budget.usable_mb) == (400.0, "env MEMORY_BUDGET_MB", 390.0)


def test_unreadable_cgroup_files_mean_the_default(tmp_path):
    budget = detect_budget(None, 32, tmp_path / "missing", tmp_path / "missing_proc")
    assert (budget.limit_mb, budget.source) == (DEFAULT_BUDGET_MB, "default")


def test_rss_readings_are_real():
    assert 10 < rss_mb() < 4096
    assert peak_rss_mb() >= rss_mb() * 0.9


def test_rss_is_read_while_no_descriptor_can_be_opened():
    """The watchdog reads RSS from a kept descriptor: it works when the process runs out (EMFILE)."""
    rss_mb()  # opened once, as the watchdog's first check does at startup
    watchdog = Watchdog(Limits(1e6, 1e6 * 0.85, 1e6 * 0.95), evict_idle=lambda *_: [])
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    held = []
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, hard))
        with pytest.raises(OSError):  # exhaust the descriptors below the limit
            while True:
                held.append(open("/dev/null"))  # noqa: SIM115
        with pytest.raises(OSError) as exhausted:
            psutil.Process().memory_info()  # what the watchdog used to do: open /proc/self/statm
        assert exhausted.value.errno == errno.EMFILE or "Too many open files" in str(exhausted.value)
        assert rss_mb() > 10
        watchdog.check()
        assert watchdog.rss_mb > 10
    finally:
        for file in held:
            file.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
