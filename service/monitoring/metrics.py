"""Prometheus metrics: request counts and latency, memory against the budget, model churn, batching.

Request metrics are ordinary prometheus-client objects, so they aggregate across workers when
`PROMETHEUS_MULTIPROC_DIR` is set (prometheus-client then keeps them in mmap files that
`MultiProcessCollector` sums). Everything else is read at scrape time from the state that already
exists (`service.budget`, the registry and its counters, the batcher's queue) rather than kept a
second time: those values describe the process that answers the scrape, so in multiprocess mode
they carry a `pid` label.
"""

import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from service.budget import MB, cgroup_memory, own_cgroup, peak_rss_mb, process_memory, rss_mb
from service.registry import get_registry

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# From a /health call (~1 ms) to a multi-page OCR upload (tens of seconds).
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
UNMATCHED_ROUTE = "<unmatched>"
# The methods HTTP defines (RFC 9110, plus PATCH): any other method a client makes up is counted as
# OTHER, so no label value comes from the client and the number of series stays fixed.
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"})
OTHER_METHOD = "OTHER"

# registry=None: these are collected by `scrape_registry()`, never by prometheus-client's global one.
REQUESTS = Counter(
    "http_requests",
    "HTTP requests answered, by route template.",
    ["method", "route", "status"],
    registry=None,
)
LATENCY = Histogram(
    "http_request_duration_seconds",
    "Time from receiving a request to the end of its response body, by route template.",
    ["method", "route"],
    buckets=LATENCY_BUCKETS,
    registry=None,
)
BATCH_SIZE = Histogram("sentiment_batch_size", "Texts per model call.", buckets=BATCH_BUCKETS, registry=None)
# Prometheus' standard process metrics (process_resident_memory_bytes, process_cpu_seconds_total,
# process_open_fds, process_start_time_seconds...) that existing dashboards and alerts expect. They
# live in prometheus-client's global registry, which /metrics does not serve, so they are added here.
PROCESS = ProcessCollector(registry=None)

_queue_depth: Callable[[], int] | None = None


def method_label(method: str) -> str:
    return method if method in KNOWN_METHODS else OTHER_METHOD


def observe_request(method: str, route: str, status: int, seconds: float) -> None:
    """Count a request; `route` is a template or UNMATCHED_ROUTE (never the raw path), `status` is
    the server's own, and `method` is bounded here: every label value has a fixed set."""
    method = method_label(method)
    REQUESTS.labels(method, route, str(status)).inc()
    LATENCY.labels(method, route).observe(seconds)


def observe_batch(size: int) -> None:
    """Called by the batcher with the number of texts of each model call it makes."""
    BATCH_SIZE.observe(size)


def set_queue_depth_source(source: Callable[[], int]) -> None:
    """The batcher registers how to read its queue length; it is read at each scrape."""
    global _queue_depth
    _queue_depth = source


def multiproc_dir() -> str | None:
    return os.environ.get(MULTIPROC_ENV) or None


class StateCollector(Collector):
    """Memory, budget, loaded models and registry counters, read when scraped."""

    def __init__(self, pid_label: bool) -> None:
        self._labels = {"pid": str(os.getpid())} if pid_label else {}

    def _gauge(self, name: str, doc: str, value: float, **labels: str) -> GaugeMetricFamily:
        merged = {**self._labels, **labels}
        family = GaugeMetricFamily(name, doc, labels=list(merged))
        family.add_metric(list(merged.values()), value)
        return family

    def collect(self) -> Iterator[Metric]:
        registry = get_registry()
        budget = registry.budget
        process, rss = process_memory(), rss_mb()
        yield self._gauge(
            "process_rss_bytes", "Resident set size of this process and its OCR worker.", rss * MB
        )
        yield self._gauge(
            "process_anon_bytes",
            "RssAnon: anonymous memory, never reclaimed without swap.",
            process.anon_mb * MB,
        )
        yield self._gauge(
            "process_file_bytes",
            "RssFile: mapped files (prepacked weights), reclaimable.",
            process.file_mb * MB,
        )
        yield self._gauge(
            "process_peak_rss_bytes", "High-water mark of this process's RSS.", max(peak_rss_mb(), rss) * MB
        )
        yield from self._cgroup()
        used = registry.used_mb()
        yield self._gauge(
            "memory_used_bytes",
            "What the budget counts: unreclaimable memory + reserved work + running models' file allowances.",
            used * MB,
        )
        yield self._gauge(
            "memory_budget_bytes",
            "The memory budget and where it came from.",
            budget.limit_mb * MB,
            source=budget.source,
        )
        yield self._gauge("memory_margin_bytes", "Kept free below the budget.", budget.margin_mb * MB)
        yield self._gauge(
            "memory_headroom_bytes",
            "budget - margin - used: what loads and requests may still use.",
            (budget.usable_mb - used) * MB,
        )
        loaded = registry.snapshot()
        models = GaugeMetricFamily(
            "model_cost_bytes",
            "Unreclaimable memory each loaded item added when it loaded.",
            labels=[*self._labels, "key"],
        )
        files = GaugeMetricFamily(
            "model_file_bytes",
            "File-backed pages one call of each loaded item reads (its allowance while it runs).",
            labels=[*self._labels, "key"],
        )
        for item in loaded:
            models.add_metric([*self._labels.values(), item["key"]], item["cost_mb"] * MB)
            files.add_metric([*self._labels.values(), item["key"]], item.get("file_mb", 0.0) * MB)
        yield models
        yield files
        yield self._gauge("models_loaded", "Items (models, OCR engines) loaded now.", len(loaded))
        for name, value in registry.counters.items():
            counter = CounterMetricFamily(f"model_{name}", f"Registry {name}.", labels=list(self._labels))
            counter.add_metric(list(self._labels.values()), value)
            yield counter
        if _queue_depth is not None:
            yield self._gauge("sentiment_queue_depth", "Texts waiting for a model call.", _queue_depth())

    def _cgroup(self) -> Iterator[Metric]:
        """The memory cgroup's own figures, when it has a limit (v1 names mapped to v2's)."""
        group = cgroup_memory(own_cgroup())
        if group is None:
            return
        for name, doc, value in (
            ("current", "v2 memory.current / v1 memory.usage_in_bytes.", group.current_mb),
            ("anon", "v2 anon / v1 total_rss of memory.stat.", group.anon_mb),
            ("file", "v2 file / v1 total_cache of memory.stat.", group.file_mb),
            ("unreclaimable", "current - file + shmem.", group.unreclaimable_mb),
            ("peak", "v2 memory.peak / v1 memory.max_usage_in_bytes.", group.peak_mb),
        ):
            if value is not None:
                yield self._gauge(f"cgroup_memory_{name}_bytes", f"The memory cgroup's {doc}", value * MB)


class _Live(Collector):
    """This process's request and batch metrics, when they are not in multiprocess files."""

    def collect(self) -> Iterable[Metric]:
        for metric in (REQUESTS, LATENCY, BATCH_SIZE):
            yield from metric.collect()


def _event_registry() -> CollectorRegistry:
    """Request and batch metrics: this process's, or every worker's in multiprocess mode."""
    registry = CollectorRegistry()
    path = multiproc_dir()
    if path is not None:
        MultiProcessCollector(registry, path)
    else:
        registry.register(_Live())
    return registry


def scrape_registry() -> CollectorRegistry:
    """Everything /metrics serves, built per scrape as multiprocess mode needs."""
    registry = _event_registry()
    registry.register(StateCollector(pid_label=multiproc_dir() is not None))
    registry.register(PROCESS)
    return registry


def exposition() -> bytes:
    return generate_latest(scrape_registry())


def route_stats() -> dict[str, dict[str, Any]]:
    """Per `METHOD route`: request count, total seconds and cumulative latency buckets.

    Read from the same collectors as /metrics, so it is summed over workers the same way.
    """
    stats: dict[str, dict[str, Any]] = {}

    def entry(labels: dict[str, str]) -> dict[str, Any]:
        return stats.setdefault(
            f"{labels['method']} {labels['route']}",
            {"count": 0.0, "sum_s": 0.0, "buckets": {}, "errors": 0.0, "refused": 0.0},
        )

    for family in _event_registry().collect():
        for sample in family.samples:
            if sample.name == "http_requests_total":
                item = entry(sample.labels)
                if sample.labels["status"].startswith("5"):
                    item["errors"] += sample.value
                if sample.labels["status"] == "503":
                    item["refused"] += sample.value
            elif sample.name == "http_request_duration_seconds_count":
                entry(sample.labels)["count"] += sample.value
            elif sample.name == "http_request_duration_seconds_sum":
                entry(sample.labels)["sum_s"] += sample.value
            elif sample.name == "http_request_duration_seconds_bucket":
                buckets = entry(sample.labels)["buckets"]
                buckets[sample.labels["le"]] = buckets.get(sample.labels["le"], 0.0) + sample.value
    return stats
