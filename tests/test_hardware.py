"""Hardware auto-configuration with faked hardware: cgroup CPU quotas, affinity, RENDER_CPU_COUNT,
nvidia-smi and onnxruntime's providers; settings override all of it."""

import logging
from pathlib import Path

import pytest

from service import hardware
from service.budget import Budget
from service.hardware import (
    CPU,
    CUDA,
    Cpus,
    Gpu,
    auto_threads,
    cgroup_cpu_quota,
    derive,
    detect_cpus,
    num_threads,
    onnx_providers,
    parse_nvidia_smi,
)
from tests.support import configured

H100 = "NVIDIA H100 80GB HBM3, 81559\n"


def fake_cgroup(root: Path, proc_line: str, files: dict[str, str]) -> Path:
    """A /sys/fs/cgroup tree with `files` (relative paths) and a /proc/self/cgroup of one line."""
    for name, content in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(content)
    root.mkdir(parents=True, exist_ok=True)
    proc = root / "proc-self-cgroup"
    proc.write_text(proc_line + "\n")
    return proc


@pytest.mark.parametrize(
    ("proc_line", "files", "found"),
    [
        ("0::/app.slice", {"app.slice/cpu.max": "50000 100000\n"}, (0.5, "cgroup v2 cpu.max")),
        ("0::/app.slice", {"app.slice/cpu.max": "max 100000\n"}, None),
        ("0::/app.slice", {"cpu.max": "200000 100000\n"}, (2.0, "cgroup v2 cpu.max")),  # at the root
        (
            "4:cpu,cpuacct:/docker/abc",
            {
                "cpu,cpuacct/docker/abc/cpu.cfs_quota_us": "10000",
                "cpu,cpuacct/docker/abc/cpu.cfs_period_us": "100000",
            },
            (0.1, "cgroup v1 cpu.cfs_quota_us"),
        ),
        (
            "3:cpu:/docker/abc",
            {"cpu/cpu.cfs_quota_us": "150000", "cpu/cpu.cfs_period_us": "100000"},
            (1.5, "cgroup v1 cpu.cfs_quota_us"),
        ),
        ("3:cpu:/", {"cpu/cpu.cfs_quota_us": "-1", "cpu/cpu.cfs_period_us": "100000"}, None),
        ("3:cpu:/", {"cpu/cpu.cfs_quota_us": "garbage", "cpu/cpu.cfs_period_us": "100000"}, None),
        ("4:memory:/x", {"memory/x/memory.limit_in_bytes": "1"}, None),  # no cpu controller
    ],
)
def test_cgroup_cpu_quota(tmp_path, proc_line, files, found):
    proc = fake_cgroup(tmp_path, proc_line, files)
    assert cgroup_cpu_quota(tmp_path, proc) == found


def test_cores_are_the_smallest_known_limit(tmp_path):
    proc = fake_cgroup(tmp_path, "0::/", {"cpu.max": "10000 100000"})
    cpus = detect_cpus(affinity=8, root=tmp_path, proc_cgroup=proc, environ={"RENDER_CPU_COUNT": "1"})
    assert cpus == Cpus(cores=0.1, source="cgroup v2 cpu.max", affinity=8, quota=0.1, render=1.0)
    assert auto_threads(cpus) == 1

    no_quota = fake_cgroup(tmp_path / "none", "0::/", {})
    render = detect_cpus(
        affinity=8, root=tmp_path / "none", proc_cgroup=no_quota, environ={"RENDER_CPU_COUNT": "2"}
    )
    assert (render.cores, render.source) == (2.0, "RENDER_CPU_COUNT")
    assert auto_threads(render) == 2
    plain = detect_cpus(
        affinity=4, root=tmp_path / "none", proc_cgroup=no_quota, environ={"RENDER_CPU_COUNT": "x"}
    )
    assert (plain.cores, plain.source, plain.render) == (4.0, "CPU affinity", None)
    assert auto_threads(Cpus(2.7, "test", 4, 2.7, None)) == 2


def test_num_threads_setting_wins_over_detection():
    cpus = Cpus(8.0, "CPU affinity", 8, None, None)
    with configured() as settings:
        assert num_threads(settings, cpus) == 8
    with configured(NUM_THREADS="3") as settings:
        assert num_threads(settings, cpus) == 3


def test_parse_nvidia_smi():
    assert parse_nvidia_smi(H100 + "Tesla T4, 15360 MiB\nbroken line\n\n") == [
        Gpu(name="NVIDIA H100 80GB HBM3", memory_mb=81559),
        Gpu(name="Tesla T4", memory_mb=15360),
    ]
    assert parse_nvidia_smi("") == []


def test_onnx_providers():
    assert onnx_providers(use_gpu=False, available=[CUDA, CPU]) == [CPU]
    assert onnx_providers(use_gpu=True, available=["TensorrtExecutionProvider", CUDA, CPU]) == [CUDA, CPU]
    assert onnx_providers(use_gpu=True, available=[CPU]) == [CPU]
    assert onnx_providers(use_gpu=True) == [CPU]  # the installed (CPU) onnxruntime has no CUDA


def derived(
    cpus: Cpus, budget_mb: float = 512, gpus=(), providers=(CPU,), **env: str
) -> hardware.HardwareConfig:
    with configured(**env) as settings:
        return derive(settings, cpus, Budget(budget_mb, "test", 32), list(gpus), list(providers))


def test_derived_config_on_render_free():
    config = derived(Cpus(0.1, "cgroup v2 cpu.max", 8, 0.1, 0.1))
    assert (config.threads, config.device, config.batch_max_size, config.batch_max_wait_ms) == (
        1,
        "cpu",
        8,
        5.0,
    )
    assert config.queue_max == 8 * 32 and config.micro_batching and config.from_settings == []


def test_derived_config_with_a_gpu():
    gpu = Gpu(name="NVIDIA H100 80GB HBM3", memory_mb=81559)
    config = derived(Cpus(16, "CPU affinity", 16, None, None), 8192, [gpu], [CUDA, CPU], USE_GPU="true")
    assert (config.device, config.batch_max_size, config.batch_max_wait_ms, config.queue_max) == (
        "cuda",
        64,
        2.0,
        256,
    )
    assert config.threads == 16 and config.gpus == [gpu]
    torch = derived(Cpus(16, "CPU affinity", 16, None, None), 8192, [gpu], [CUDA, CPU], BACKEND="torch")
    assert torch.device == "cpu"  # the torch backend is the CPU build


def test_a_small_budget_caps_the_batch():
    config = derived(Cpus(4, "CPU affinity", 4, None, None), budget_mb=160)  # 128 MB usable
    share = 128 * hardware.BATCH_BUDGET_SHARE
    assert config.batch_max_size == int((share - hardware.WORK_MB_FIXED) / hardware.WORK_MB_PER_TEXT) == 3


def test_settings_override_detection():
    config = derived(
        Cpus(0.1, "cgroup v2 cpu.max", 8, 0.1, None),
        NUM_THREADS="2",
        BATCH_MAX_SIZE="8",
        BATCH_MAX_WAIT_MS="0",
        QUEUE_MAX="10",
        MICRO_BATCHING="false",
    )
    assert (config.threads, config.batch_max_size, config.batch_max_wait_ms, config.queue_max) == (
        2,
        8,
        0.0,
        10,
    )
    assert not config.micro_batching
    assert config.from_settings == ["NUM_THREADS", "BATCH_MAX_SIZE", "BATCH_MAX_WAIT_MS", "QUEUE_MAX"]


def test_detect_reports_a_gpu_that_onnxruntime_cannot_use():
    with configured(USE_GPU="true", MEMORY_BUDGET_MB="1024") as settings:
        config = hardware.detect(settings, smi=lambda: H100)
    assert config.gpus == [Gpu(name="NVIDIA H100 80GB HBM3", memory_mb=81559)]
    assert config.onnx_providers == [CPU] and config.device == "cpu"  # CI's onnxruntime is the CPU build
    assert config.memory_budget_mb == 1024 and config.memory_budget_source == "env MEMORY_BUDGET_MB"


def test_startup_logs_one_block_and_system_shows_it(make_client, caplog):
    with caplog.at_level(logging.INFO, logger="uvicorn.error"):
        client = make_client(MEMORY_BUDGET_MB="512", BATCH_MAX_SIZE="6", QUEUE_MAX="24")
    (block,) = [r.getMessage() for r in caplog.records if "hardware and throughput config" in r.getMessage()]
    assert "batching  on: up to 6 texts per call" in block and "queue of 24 texts" in block
    assert "512 MB budget, from env MEMORY_BUDGET_MB" in block
    report = client.get("/system").json()
    assert report["hardware"]["batch_max_size"] == 6
    assert report["hardware"]["queue_max"] == 24
    assert report["hardware"]["from_settings"] == ["BATCH_MAX_SIZE", "QUEUE_MAX"]
    assert report["hardware"]["threads"] >= 1
    assert report["batching"] == {}
    assert client.get("/memory").json()["num_threads_setting"] == report["hardware"]["threads"]


@pytest.mark.slow
def test_threads_are_pinned_from_detection_before_numeric_imports():
    from tests.system.test_system import run_python

    code = """
import json, os, sys
import service
print(json.dumps({"numeric": [m for m in ("numpy", "onnxruntime", "torch") if m in sys.modules],
                  "omp": os.environ["OMP_NUM_THREADS"]}))
"""
    assert run_python(code, RENDER_CPU_COUNT="1") == {"numeric": [], "omp": "1"}
    assert run_python(code, RENDER_CPU_COUNT="1", NUM_THREADS="3")["omp"] == "3"
