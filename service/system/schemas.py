"""Responses of the operational routes."""

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from service.hardware import HardwareConfig


class Health(BaseModel):
    status: str = "ok"


class Ready(BaseModel):
    status: str
    model: str
    backend: str


class LoadedItem(BaseModel):
    model_config = ConfigDict(extra="allow")

    key: str = Field(description="`task:lang` for a sentiment model, `ocr:<lang>` for the OCR engine.")
    cost_mb: float = Field(description="Unreclaimable (anonymous) memory the item added when it loaded (MB).")
    file_mb: float = Field(
        0.0,
        description="File-backed MB one call of it reads (mapped weights): counted while work runs on it.",
    )
    running: int = Field(0, description="Admitted work running on it now.")
    recipe: str | None = Field(
        None,
        description="An exported (onnx) model: the quantization recipe it is served with, `fp32` when the "
        "export's accuracy gate let no INT8 recipe through.",
    )
    gate: dict[str, Any] | None = Field(
        None,
        description="An exported model: its export's accuracy gate against its own fp32 (kind, thresholds, "
        "the recipe's figures, why earlier recipes fell back); null when exported before the gate.",
    )
    loaded_at: float
    last_used: float
    in_use: int


class CgroupReport(BaseModel):
    version: int = Field(description="1 or 2.")
    current_mb: float = Field(
        description="v2 memory.current, v1 memory.usage_in_bytes: what the limit is checked against."
    )
    anon_mb: float = Field(description="v2 anon, v1 total_rss.")
    file_mb: float = Field(description="v2 file, v1 total_cache: page cache, reclaimable but for shmem.")
    shmem_mb: float
    unreclaimable_mb: float = Field(description="current - file + shmem: what page reclaim cannot free.")
    peak_mb: float | None = Field(description="v2 memory.peak, v1 memory.max_usage_in_bytes.")


class MemoryReport(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "rss_mb": 231.4,
                    "worker_rss_mb": 0.0,
                    "anon_mb": 96.3,
                    "file_mb": 135.1,
                    "shmem_mb": 0.0,
                    "used_mb": 96.3,
                    "running_file_mb": 0.0,
                    "peak_rss_mb": 262.0,
                    "budget_mb": 512.0,
                    "budget_source": "cgroup v2 memory.max",
                    "margin_mb": 32.0,
                    "headroom_mb": 383.7,
                    "reserved_mb": 0.0,
                    "threads": 5,
                    "num_threads_setting": 1,
                    "backend": "onnx",
                    "loaded": [
                        {
                            "key": "sentiment:es",
                            "cost_mb": 9.1,
                            "file_mb": 98.6,
                            "running": 0,
                            "recipe": "weight-only",
                            "gate": {
                                "kind": "single_label",
                                "texts": 300,
                                "thresholds": ["label_agreement >= 0.97", "p95_proba_diff <= 0.05"],
                                "recipe": "weight-only",
                                "passed": True,
                                "figures": {"label_agreement": 0.99, "p95_proba_diff": 0.012},
                                "why": "the first recipe passed",
                            },
                            "loaded_at": 1795000000.0,
                            "last_used": 1795000100.0,
                            "in_use": 0,
                            "backend": "onnx",
                        }
                    ],
                    "counters": {"loads": 1, "evictions": 0, "refusals": 0, "load_failures": 0},
                    "history_bytes": 81920,
                    "cgroup": {
                        "version": 2,
                        "current_mb": 240.2,
                        "anon_mb": 98.0,
                        "file_mb": 139.9,
                        "shmem_mb": 0.0,
                        "unreclaimable_mb": 100.3,
                        "peak_mb": 301.5,
                    },
                }
            ]
        }
    )

    rss_mb: float = Field(
        description="Resident set size of the service now: this process and its OCR worker process."
    )
    worker_rss_mb: float = Field(
        default=0.0, description="Of rss_mb, the OCR worker process's (0 while no OCR engine is loaded)."
    )
    anon_mb: float = Field(
        description="This process's RssAnon: memory the kernel can never reclaim (no swap)."
    )
    file_mb: float = Field(
        description="This process's RssFile: mapped files (prepacked weights); reclaimable."
    )
    shmem_mb: float = Field(description="RssShmem.")
    used_mb: float = Field(
        description="What the budget counts: unreclaimable memory (this process's and its OCR worker's, or "
        "their cgroup's when larger) + reserved + running_file_mb + ingress.pending_mb."
    )
    running_file_mb: float = Field(description="File allowances of the models work is running on now.")
    peak_rss_mb: float = Field(description="The process's RSS high-water mark.")
    budget_mb: float
    budget_source: str = Field(
        description="env MEMORY_BUDGET_MB, cgroup v2 memory.max, cgroup v1 memory.limit_in_bytes or default."
    )
    margin_mb: float = Field(description="Kept free below the budget.")
    headroom_mb: float = Field(description="budget - margin - used: what loads and requests may still use.")
    reserved_mb: float = Field(description="Working memory admitted to requests still running.")
    threads: int = Field(description="OS threads of this process.")
    num_threads_setting: int
    backend: str
    loaded: list[LoadedItem]
    counters: dict[str, Any]
    history_bytes: int = Field(
        default=0,
        description="Fixed memory of the dashboard's history (HISTORY_WINDOW_S / HISTORY_STEP_S samples "
        "and HISTORY_EVENTS events), allocated at start and part of rss_mb.",
    )
    cgroup: CgroupReport | None = Field(description="The memory cgroup's own figures, when it has a limit.")
    ingress: dict[str, Any] = Field(
        default_factory=dict,
        description="Request bodies held in memory by all requests together (service/ingress.py): held_mb "
        "(counted against ceiling_mb, INGRESS_MAX_MB), pending_mb (declared, not arrived: part of used_mb), "
        "peak_mb, refusals (503 ingress_full).",
    )


class BatcherStats(BaseModel):
    requests: int = Field(description="Requests queued for this model.")
    texts: int = Field(description="Texts run in batches.")
    batches: int
    largest_batch: int
    mean_batch: float
    rejected: int = Field(description="Requests refused with 503 because the queue was full.")
    queued: int = Field(description="Texts waiting now.")
    running: bool = Field(description="Whether the model's worker thread is alive.")


class ResultCacheStats(BaseModel):
    hits: int = Field(description="Texts answered from the cache since startup.")
    misses: int
    evictions: int
    hit_rate: float
    entries: int
    max_entries: int = Field(description="RESULT_CACHE_ENTRIES.")
    mb: float = Field(description="What the entries take now (estimated).")
    max_mb: float = Field(description="RESULT_CACHE_MB, reserved in the memory budget.")


class SystemReport(BaseModel):
    hardware: HardwareConfig
    batching: dict[str, BatcherStats] = Field(
        description="Per model (`task:lang`) since startup; empty with MICRO_BATCHING off."
    )
    result_cache: ResultCacheStats | None = Field(
        default=None, description="The cache of recent results; null when RESULT_CACHE_ENTRIES is 0 (off)."
    )
