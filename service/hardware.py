"""Hardware auto-configuration: the cores, memory and GPU this process may use, and the threads
and batching settings derived from them.

`os.cpu_count()` reports the host's cores, not the container's: on Render's 0.1 CPU that many
threads would fight over a tenth of one core. So the cores are the smallest of what the
kernel enforces (CPU affinity, the cgroup CPU quota) and what Render says (`RENDER_CPU_COUNT`).
Every detector takes its inputs as arguments so tests can fake the hardware; settings override
everything detected. Nothing numeric is imported here: `service.runtime` uses this module to pin
threads before numpy or onnxruntime load.
"""

import logging
import math
import os
import shutil
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from service.budget import Budget, cgroup_paths, detect_budget
from service.config import Settings

CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_CGROUP = Path("/proc/self/cgroup")
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
NVIDIA_SMI_QUERY = ["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader,nounits"]

# Working memory of a model call: a fixed part plus this per text at the full 128 tokens. Measured at
# RoBERTuito scale (INT8 onnx, one thread): RSS grew 13, 68, 116 and 223 MB for calls of 1, 8, 16
# and 32 texts of 128 tokens. It is the admission estimate of a batch, and caps the derived batch
# size on small budgets.
WORK_MB_FIXED, WORK_MB_PER_TEXT = 6.0, 7.0
# Defaults when the settings name none. On one CPU core at RoBERTuito scale (INT8 onnx, tweets of
# mixed length, sorted and bucketed) texts/s rose 1.9x from 1 to 8 texts per call and fell past 8
# (MEMORY.md); a GPU wants more (not measured: no GPU machine was available). Waits of 2 to 50 ms
# gave the same texts/s and p95 with 8 clients on one core (MEMORY.md): the wait stays short.
CPU_BATCH, GPU_BATCH = 8, 64
CPU_WAIT_MS, GPU_WAIT_MS = 5.0, 2.0
# Texts that may wait for one model: 4 full model calls, and at least 8 requests of MAX_BATCH
# texts, so that a few clients sending full batches at once are queued, not refused. A queued
# text costs only its characters; the bound caps waiting. Measured in the 512 MB soak (8
# clients, MEMORY.md): a bound of 32 texts answered 503 to 52 of 149 batch requests.
QUEUE_BATCHES, QUEUE_REQUESTS = 4, 8
BATCH_BUDGET_SHARE = 0.25  # a full batch may need at most this share of the usable budget

logger = logging.getLogger("uvicorn.error")  # configured at INFO under uvicorn, so the block shows


@dataclass(frozen=True)
class Cpus:
    cores: float  # what the process may use: the smallest of the three below that is known
    source: str
    affinity: int
    quota: float | None  # cgroup cpu quota / period
    render: float | None  # RENDER_CPU_COUNT


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _v2_quota(text: str) -> float | None:
    """`cpu.max` holds "QUOTA PERIOD", or "max PERIOD" when unlimited."""
    quota, _, period = text.partition(" ")
    if quota == "max":
        return None
    return int(quota) / int(period or 100_000)


def _v1_quota(directory: Path) -> float | None:
    quota, period = _read(directory / "cpu.cfs_quota_us"), _read(directory / "cpu.cfs_period_us")
    if quota is None or period is None or int(quota) <= 0:  # -1: unlimited
        return None
    return int(quota) / int(period)


def cgroup_cpu_quota(root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_CGROUP) -> tuple[float, str] | None:
    """The cgroup's CPU quota in cores and which file said so, or None if unlimited or unreadable.

    Looked up through the process's own cgroup path, then at the root, as `budget.cgroup_limit`
    does for memory.
    """
    v2_path, v1_path = cgroup_paths(proc_cgroup, controller="cpu")
    try:
        if v2_path is not None:
            for path in (root / v2_path.lstrip("/") / "cpu.max", root / "cpu.max"):
                text = _read(path)
                if text is not None:
                    quota = _v2_quota(text)
                    return None if quota is None else (quota, "cgroup v2 cpu.max")
        if v1_path is not None:
            for mount in ("cpu", "cpu,cpuacct"):
                for directory in (root / mount / v1_path.lstrip("/"), root / mount):
                    if (directory / "cpu.cfs_quota_us").is_file():
                        quota = _v1_quota(directory)
                        return None if quota is None else (quota, "cgroup v1 cpu.cfs_quota_us")
    except ValueError:  # a file that does not hold numbers: no quota we can trust
        return None
    return None


def affinity_cores() -> int:
    """Cores the scheduler lets this process run on (`taskset`, cpusets)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def detect_cpus(
    affinity: int | None = None,
    root: Path = CGROUP_ROOT,
    proc_cgroup: Path = PROC_CGROUP,
    environ: Mapping[str, str] = os.environ,
) -> Cpus:
    affinity = affinity_cores() if affinity is None else affinity
    quota = cgroup_cpu_quota(root, proc_cgroup)
    try:
        render = float(environ["RENDER_CPU_COUNT"])
    except (KeyError, ValueError):
        render = None
    candidates = [(float(affinity), "CPU affinity")]
    if quota is not None:
        candidates.append(quota)
    if render is not None and render > 0:
        candidates.append((render, "RENDER_CPU_COUNT"))
    cores, source = min(candidates, key=lambda candidate: candidate[0])
    return Cpus(cores, source, affinity, quota[0] if quota else None, render)


def auto_threads(cpus: Cpus) -> int:
    """One intra-op thread per whole core, at least one: more threads than cores is slower."""
    return max(1, min(64, math.floor(cpus.cores)))


def num_threads(settings: Settings, cpus: Cpus | None = None) -> int:
    """NUM_THREADS when set, else derived from the cores."""
    if settings.num_threads is not None:
        return settings.num_threads
    return auto_threads(cpus or detect_cpus())


class Gpu(BaseModel):
    name: str
    memory_mb: float


def parse_nvidia_smi(output: str) -> list[Gpu]:
    """Lines of `name, memory.total` (MiB, with `nounits`); malformed lines are skipped."""
    gpus = []
    for line in output.splitlines():
        name, _, memory = line.rpartition(",")
        try:
            gpus.append(Gpu(name=name.strip(), memory_mb=float(memory.strip().removesuffix("MiB"))))
        except ValueError:
            continue
    return [gpu for gpu in gpus if gpu.name]


@lru_cache
def nvidia_smi() -> str:
    """What `nvidia-smi` says about the GPUs, or "" without one (the hardware does not change)."""
    if shutil.which("nvidia-smi") is None:
        return ""
    try:
        result = subprocess.run(NVIDIA_SMI_QUERY, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return result.stdout if result.returncode == 0 else ""


def onnx_providers(use_gpu: bool, available: Sequence[str] | None = None) -> list[str]:
    """onnxruntime's execution providers, CUDA first when USE_GPU allows it and the installed
    onnxruntime has it (the `onnxruntime-gpu` wheel); CPU otherwise, and always as the fallback.

    onnxruntime is imported only when a GPU is allowed: the CPU answer needs no import.
    """
    if not use_gpu:
        return [CPU]
    if available is None:
        import onnxruntime

        available = onnxruntime.get_available_providers()
    return [CUDA, CPU] if CUDA in available else [CPU]


class HardwareConfig(BaseModel):
    """What was detected and what was derived from it, logged at startup and shown by /system."""

    model_config = ConfigDict(frozen=True)

    cpu_cores: float = Field(description="Cores this process may use: the smallest known limit.")
    cpu_source: str = Field(
        description="CPU affinity, cgroup v2 cpu.max, cgroup v1 quota or RENDER_CPU_COUNT."
    )
    cpu_affinity: int
    cpu_quota: float | None = Field(description="The cgroup CPU quota in cores; null when unlimited.")
    render_cpu_count: float | None
    threads: int = Field(description="Intra-op threads of onnxruntime/torch (NUM_THREADS or derived).")
    memory_budget_mb: float
    memory_budget_source: str
    gpus: list[Gpu] = Field(description="NVIDIA GPUs nvidia-smi lists, allowed or not.")
    use_gpu: bool
    backend: str
    onnx_providers: list[str] = Field(description="What the onnx backend asks onnxruntime for, in order.")
    device: Literal["cpu", "cuda"] = Field(description="Where the models run.")
    micro_batching: bool
    batch_max_size: int = Field(description="Texts per model call, at most.")
    batch_max_wait_ms: float = Field(description="How long a batch waits for more requests, at most.")
    queue_max: int = Field(description="Texts that may wait for the model; past it /analyze answers 503.")
    from_settings: list[str] = Field(description="The settings that overrode detection.")


def derive(
    settings: Settings, cpus: Cpus, budget: Budget, gpus: list[Gpu], providers: list[str]
) -> HardwareConfig:
    """Threads, batch size, wait and queue bound from the hardware; any that is set wins."""
    on_gpu = settings.backend == "onnx" and providers[0] == CUDA
    default_batch = GPU_BATCH if on_gpu else CPU_BATCH
    # On a small budget a full batch's working memory must still fit next to the model.
    fits = int((budget.usable_mb * BATCH_BUDGET_SHARE - WORK_MB_FIXED) / WORK_MB_PER_TEXT)
    default_batch = max(1, min(default_batch, fits))
    batch = settings.batch_max_size or default_batch
    wait = settings.batch_max_wait_ms
    queue = settings.queue_max or max(QUEUE_BATCHES * batch, QUEUE_REQUESTS * settings.max_batch)
    names = ("num_threads", "batch_max_size", "batch_max_wait_ms", "queue_max")
    return HardwareConfig(
        cpu_cores=round(cpus.cores, 3),
        cpu_source=cpus.source,
        cpu_affinity=cpus.affinity,
        cpu_quota=cpus.quota,
        render_cpu_count=cpus.render,
        threads=num_threads(settings, cpus),
        memory_budget_mb=round(budget.limit_mb, 1),
        memory_budget_source=budget.source,
        gpus=gpus,
        use_gpu=settings.use_gpu,
        backend=settings.backend,
        onnx_providers=providers,
        device="cuda" if on_gpu else "cpu",
        micro_batching=settings.micro_batching,
        batch_max_size=batch,
        batch_max_wait_ms=wait if wait is not None else (GPU_WAIT_MS if on_gpu else CPU_WAIT_MS),
        queue_max=queue,
        from_settings=[name.upper() for name in names if getattr(settings, name) is not None],
    )


def detect(settings: Settings, smi: Callable[[], str] = nvidia_smi) -> HardwareConfig:
    budget = detect_budget(settings.memory_budget_mb, settings.memory_margin_mb)
    gpus = parse_nvidia_smi(smi())
    # Without a GPU there is no point importing onnxruntime to ask for its CUDA provider.
    providers = onnx_providers(settings.use_gpu and bool(gpus))
    return derive(settings, detect_cpus(), budget, gpus, providers)


def describe(config: HardwareConfig) -> str:
    """The one readable block logged at startup."""
    limits = (
        f"affinity {config.cpu_affinity}, cgroup quota {config.cpu_quota}, "
        f"RENDER_CPU_COUNT {config.render_cpu_count}"
    )
    providers = ", ".join(config.onnx_providers)
    gpus = "; ".join(f"{gpu.name} ({gpu.memory_mb:.0f} MB)" for gpu in config.gpus) or "none"
    batching = (
        f"on: up to {config.batch_max_size} texts per call, waits up to {config.batch_max_wait_ms:g} ms, "
        f"queue of {config.queue_max} texts"
        if config.micro_batching
        else f"off (bulk and multi-text requests still run in calls of up to {config.batch_max_size})"
    )
    overridden = ", ".join(config.from_settings) or "none"
    return "\n".join(
        [
            "hardware and throughput config (settings override detection):",
            f"  cpu       {config.cpu_cores:g} cores, from {config.cpu_source} ({limits})",
            f"  threads   {config.threads} intra-op",
            f"  memory    {config.memory_budget_mb:g} MB budget, from {config.memory_budget_source}",
            f"  gpu       {gpus}; USE_GPU={str(config.use_gpu).lower()}",
            f"  device    {config.device} ({config.backend} backend; onnx providers {providers})",
            f"  batching  {batching}",
            f"  settings  {overridden}",
        ]
    )


_current: HardwareConfig | None = None


def configure(settings: Settings) -> HardwareConfig:
    """Detect, log the block once and keep the result for /system (the app's startup)."""
    global _current
    _current = detect(settings)
    logger.info(describe(_current))
    return _current


def reset() -> None:
    global _current
    _current = None


def current(settings: Settings) -> HardwareConfig:
    """The startup's config, or a fresh detection outside an app (scripts, tests)."""
    return _current if _current is not None else detect(settings)
