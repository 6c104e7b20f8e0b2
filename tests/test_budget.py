"""The budget comes from the env var, the container's cgroup (v2 or v1), or the 512 MB default;
it is spent on memory that cannot be reclaimed, read from the process and its cgroup."""

import errno
import os
import resource
from pathlib import Path

import psutil
import pytest

from service import budget
from service.budget import (
    DEFAULT_BUDGET_MB,
    cgroup_limit,
    cgroup_memory,
    detect_budget,
    limited_cgroup,
    peak_rss_mb,
    process_memory,
    rss_mb,
    unreclaimable_of,
)
from service.exceptions import OverBudget
from service.ops.watchdog import Limits, Watchdog
from service.registry import Loadable, Registry

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
        assert watchdog.used_mb > 10
    finally:
        for file in held:
            file.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


# ---- memory that cannot be reclaimed: what the budget counts -------------------------------------


def status_file(tmp_path: Path, anon_mb: float, file_mb: float, shmem_mb: float = 0) -> Path:
    path = tmp_path / "status"
    kb = {name: int(mb * 1024) for name, mb in (("anon", anon_mb), ("file", file_mb), ("shmem", shmem_mb))}
    path.write_text(
        "Name:\tpython\n"
        f"VmRSS:\t{kb['anon'] + kb['file'] + kb['shmem']} kB\n"
        f"RssAnon:\t{kb['anon']} kB\nRssFile:\t{kb['file']} kB\nRssShmem:\t{kb['shmem']} kB\n"
    )
    return path


def v2_tree(tmp_path: Path, current_mb: float, anon_mb: float, file_mb: float, shmem_mb: float = 0):
    return fake_cgroup(
        tmp_path,
        ["0::/render/web"],
        {
            "render/web/memory.max": str(512 * MB),
            "render/web/memory.current": str(int(current_mb * MB)),
            "render/web/memory.peak": str(int((current_mb + 20) * MB)),
            "render/web/memory.stat": f"anon {int(anon_mb * MB)}\nfile {int(file_mb * MB)}\n"
            f"kernel {4 * MB}\nshmem {int(shmem_mb * MB)}\nfile_mapped {int(file_mb * MB)}\n",
            "memory.max": "max",
        },
    )


def v1_tree(tmp_path: Path, usage_mb: float, rss_mb: float, cache_mb: float):
    return fake_cgroup(
        tmp_path,
        ["12:cpu,cpuacct:/", "4:memory:/docker/abc", "0::/"],
        {
            "memory/docker/abc/memory.limit_in_bytes": str(512 * MB),
            "memory/docker/abc/memory.usage_in_bytes": str(int(usage_mb * MB)),
            "memory/docker/abc/memory.max_usage_in_bytes": str(int((usage_mb + 30) * MB)),
            # rss/cache: this group alone; total_*: with its children (a child making a variant).
            "memory/docker/abc/memory.stat": f"cache {int(cache_mb * MB) // 2}\nrss {int(rss_mb * MB) // 2}\n"
            f"shmem 0\nmapped_file {int(cache_mb * MB)}\ntotal_cache {int(cache_mb * MB)}\n"
            f"total_rss {int(rss_mb * MB)}\ntotal_shmem 0\n",
        },
    )


def test_process_memory_splits_anonymous_from_file_backed(tmp_path):
    memory = process_memory(status_file(tmp_path, anon_mb=80, file_mb=150, shmem_mb=2))
    assert (memory.rss_mb, memory.anon_mb, memory.file_mb) == (232, 80, 150)
    assert memory.unreclaimable_mb == 82  # shared memory cannot be dropped either


def test_real_process_memory_adds_up():
    memory = process_memory()
    assert (
        0 < memory.anon_mb < memory.rss_mb
        and abs(memory.anon_mb + memory.file_mb + memory.shmem_mb - memory.rss_mb) < 1
    )


def test_own_process_memory_read_fast_agrees_with_its_status_file():
    """This process's figures come from a kept descriptor; another process's from its file."""
    fast, slow = process_memory(), process_memory(Path(f"/proc/{os.getpid()}/status"))
    assert abs(fast.rss_mb - slow.rss_mb) < 2 and abs(fast.anon_mb - slow.anon_mb) < 2
    assert process_memory(Path("/proc/0/status")) == process_memory(Path("/nonexistent/status"))


def test_the_own_cgroup_read_from_kept_descriptors_follows_its_files(tmp_path, monkeypatch):
    root, proc = v2_tree(tmp_path, current_mb=470, anon_mb=120, file_mb=340)
    own = limited_cgroup(root, proc)
    monkeypatch.setattr(budget, "own_cgroup", lambda: own)
    assert cgroup_memory(own).unreclaimable_mb == 130
    v2_tree(tmp_path, current_mb=520, anon_mb=200, file_mb=300)  # the same files, rewritten
    group = cgroup_memory(own)
    assert (group.current_mb, group.anon_mb, group.peak_mb, group.unreclaimable_mb) == (520, 200, 540, 220)


def test_cgroup_v2_figures_and_what_cannot_be_reclaimed(tmp_path):
    root, proc = v2_tree(tmp_path, current_mb=470, anon_mb=120, file_mb=340)
    group = cgroup_memory(limited_cgroup(root, proc))
    assert group is not None and group.version == 2
    assert (group.current_mb, group.anon_mb, group.file_mb, group.peak_mb) == (470, 120, 340, 490)
    assert group.unreclaimable_mb == 130  # anon + kernel memory: all but the page cache


def test_cgroup_v1_figures_count_child_processes(tmp_path):
    root, proc = v1_tree(tmp_path, usage_mb=460, rss_mb=140, cache_mb=310)
    group = cgroup_memory(limited_cgroup(root, proc))
    assert group is not None and group.version == 1
    assert (group.anon_mb, group.file_mb, group.peak_mb) == (140, 310, 490)
    assert group.unreclaimable_mb == 150


def test_no_cgroup_figures_without_a_limit(tmp_path):
    """An unlimited group may be the host's root: its figures are every process's, not ours."""
    root, proc = fake_cgroup(
        tmp_path, ["0::/"], {"memory.max": "max", "memory.current": str(9000 * MB), "memory.stat": "anon 1\n"}
    )
    assert limited_cgroup(root, proc) is None and cgroup_memory(None) is None


def test_the_larger_of_process_and_cgroup_is_counted(tmp_path):
    process = process_memory(status_file(tmp_path, anon_mb=90, file_mb=120))
    root, proc = v2_tree(tmp_path, current_mb=450, anon_mb=230, file_mb=210)  # a child holds 140 MB
    assert unreclaimable_of(process, cgroup_memory(limited_cgroup(root, proc))) == 240
    assert unreclaimable_of(process, None) == 90


def budget_registry(tmp_path: Path, tree, **figures: float) -> Registry:
    """A registry whose budget and used memory both come from a fake cgroup tree."""
    root, proc = tree(tmp_path, **figures)
    process = process_memory(status_file(tmp_path, anon_mb=50, file_mb=300))
    budget = detect_budget(None, 32, root, proc)
    return Registry(
        budget,
        used=lambda: unreclaimable_of(process, cgroup_memory(limited_cgroup(root, proc))),
        admission_wait_s=0,
    )


@pytest.mark.parametrize(
    ("tree", "figures"),
    [
        (v2_tree, {"current_mb": 470, "anon_mb": 120, "file_mb": 340}),
        (v1_tree, {"usage_mb": 470, "rss_mb": 125, "cache_mb": 345}),
    ],
    ids=["v2", "v1"],
)
def test_file_pages_do_not_crowd_out_work_that_fits(tmp_path, tree, figures):
    """470 of 512 MB charged, 345 of it page cache: a 200 MB load fits (130 + 200 < 480), where a
    budget on RSS or memory.current would have refused it."""
    registry = budget_registry(tmp_path, tree, **figures)
    assert registry.budget.limit_mb == 512
    with registry.use(Loadable(key="m", load=object, estimate_mb=lambda: 200)):
        pass
    assert registry.is_loaded("m") and registry.counters["refusals"] == 0


@pytest.mark.parametrize(
    ("tree", "figures"),
    [
        (v2_tree, {"current_mb": 470, "anon_mb": 400, "file_mb": 60}),
        (v1_tree, {"usage_mb": 470, "rss_mb": 405, "cache_mb": 65}),
    ],
    ids=["v2", "v1"],
)
def test_anonymous_memory_is_refused_before_the_oom_killer_sees_it(tmp_path, tree, figures):
    registry = budget_registry(tmp_path, tree, **figures)
    with (
        pytest.raises(OverBudget) as refused,
        registry.use(Loadable(key="m", load=object, estimate_mb=lambda: 100)),
    ):
        pass
    assert refused.value.details["short_by_mb"] > 0 and not registry.is_loaded("m")
