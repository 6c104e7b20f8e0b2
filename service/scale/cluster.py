"""Connecting to Ray, and the environment each of the service's Ray workers starts with.

A worker is a process of its own, on this machine or another node: it reads the service's settings
from its environment like the plain server does, so the driver passes its settings on (a worker
of an existing cluster does not inherit the driver's environment), plus the two that size one
worker: NUM_THREADS (its CPUs) and MEMORY_BUDGET_MB (the memory Ray reserves for it).
"""

import math
import os

import ray

from service.config import Settings
from service.ocr.config import OcrSettings
from service.ops.config import OpsSettings

MB = 1024 * 1024
# Read when a process starts (glibc, tokenizers): a worker must get them at its start.
_PROCESS_VARS = ("MALLOC_ARENA_MAX", "MALLOC_MMAP_THRESHOLD_", "TOKENIZERS_PARALLELISM")


def settings_env() -> dict[str, str]:
    """The service's settings set in the driver's environment (MODEL_*, MAX_TEXT_CHARS, API_KEY...)."""
    names = {name.upper() for name in Settings.model_fields}
    names |= {f"OCR_{name.upper()}" for name in OcrSettings.model_fields}
    names |= {name.upper() for name in OpsSettings.model_fields}
    names |= set(_PROCESS_VARS)
    return {name: os.environ[name] for name in sorted(names) if name in os.environ}


def worker_env(cpus: float, memory_mb: int, **extra: str) -> dict[str, str]:
    """One worker's environment: the driver's settings, sized to the worker's CPUs and memory."""
    return {
        **settings_env(),
        "NUM_THREADS": str(max(1, math.floor(cpus))),
        "MEMORY_BUDGET_MB": str(memory_mb),
        **extra,
    }


def worker_options(cpus: float, memory_mb: int, **extra_env: str) -> dict[str, object]:
    """Ray resources and environment of one worker (an actor or a Serve replica): the scheduler
    places it only where `memory_mb` is free, and the worker's own registry keeps within it."""
    return {
        "num_cpus": cpus,
        "memory": memory_mb * MB,
        "runtime_env": {"env_vars": worker_env(cpus, memory_mb, **extra_env)},
    }


def connect(address: str | None = None, num_cpus: int | None = None) -> None:
    """Join the cluster at `address` (or RAY_ADDRESS), else start a local one with `num_cpus`.

    The local one has no dashboard: it is a process and port a batch job does not need.
    """
    if ray.is_initialized():
        return
    if address or os.environ.get("RAY_ADDRESS"):
        ray.init(address=address)
    else:
        ray.init(num_cpus=num_cpus, include_dashboard=False)
