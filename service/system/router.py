"""Liveness, readiness and the memory report a dashboard polls."""

from fastapi import APIRouter

from service.budget import (
    CgroupMemory,
    cgroup_memory,
    child_rss_mb,
    own_cgroup,
    peak_rss_mb,
    process_memory,
    rss_mb,
    thread_count,
)
from service.config import get_settings
from service.error_handlers import error_examples
from service.hardware import current, num_threads
from service.ingress import LEDGER
from service.monitoring.history import current_history
from service.registry import get_registry
from service.sentiment.batching import active_pool
from service.sentiment.cache import active_cache
from service.sentiment.service import model_item, model_key
from service.system.schemas import CgroupReport, Health, MemoryReport, Ready, SystemReport

router = APIRouter(tags=["system"])


@router.get("/health", response_model=Health, summary="Liveness: cheap, never loads a model")
async def health() -> Health:
    return Health()


@router.get(
    "/ready",
    response_model=Ready,
    responses=error_examples(503),
    summary="Readiness: 200 once the default model can serve (loads it if needed)",
)
def ready() -> Ready:
    settings = get_settings()
    with get_registry().use(model_item(settings.default_task, settings.default_lang)):
        pass
    return Ready(
        status="ready",
        model=model_key(settings.default_task, settings.default_lang),
        backend=settings.backend,
    )


@router.get("/memory", response_model=MemoryReport, summary="Process memory against the budget")
def memory() -> MemoryReport:
    registry = get_registry()
    budget = registry.budget
    process, rss = process_memory(), rss_mb()
    group = cgroup_memory(own_cgroup())
    used = registry.used_mb()
    settings = get_settings()
    history = current_history()
    return MemoryReport(
        rss_mb=round(rss, 1),
        worker_rss_mb=round(child_rss_mb(), 1),
        anon_mb=round(process.anon_mb, 1),
        file_mb=round(process.file_mb, 1),
        shmem_mb=round(process.shmem_mb, 1),
        used_mb=round(used, 1),
        running_file_mb=round(registry.running_file_mb, 1),
        peak_rss_mb=round(max(peak_rss_mb(), rss), 1),
        budget_mb=round(budget.limit_mb, 1),
        budget_source=budget.source,
        margin_mb=budget.margin_mb,
        headroom_mb=round(budget.usable_mb - used, 1),
        reserved_mb=round(registry.reserved_mb, 1),
        threads=thread_count(),
        num_threads_setting=num_threads(settings),
        backend=settings.backend,
        loaded=registry.snapshot(),
        counters=dict(registry.counters),
        history_bytes=history.bytes if history is not None else 0,
        cgroup=_cgroup_report(group),
        ingress=LEDGER.snapshot(),
    )


def _cgroup_report(group: CgroupMemory | None) -> CgroupReport | None:
    if group is None:
        return None
    return CgroupReport(
        version=group.version,
        current_mb=round(group.current_mb, 1),
        anon_mb=round(group.anon_mb, 1),
        file_mb=round(group.file_mb, 1),
        shmem_mb=round(group.shmem_mb, 1),
        unreclaimable_mb=round(group.unreclaimable_mb, 1),
        peak_mb=None if group.peak_mb is None else round(group.peak_mb, 1),
    )


@router.get(
    "/system",
    response_model=SystemReport,
    summary="Detected cores, memory and GPU, the threads and batching derived from them, the queues",
)
def system() -> SystemReport:
    pool, cache = active_pool(), active_cache()
    return SystemReport(
        hardware=current(get_settings()),
        batching=pool.stats() if pool else {},
        result_cache=cache.stats() if cache else None,
    )
