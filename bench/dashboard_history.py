"""What the dashboard's history costs: its fixed memory, and the CPU time of keeping and serving it.

    python -m bench.dashboard_history [--samples 10000]

Figures are for the default settings (HISTORY_WINDOW_S=3600, HISTORY_STEP_S=5, HISTORY_EVENTS=256)
unless those are set in the environment. Run it in a fresh process: memory figures are deltas of
this process's RSS, and CPU figures are process time (not wall time), so a busy machine does not
inflate them much.
"""

import argparse
import gc
import json
import os
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

from service.budget import rss_mb
from service.monitoring.config import get_monitoring_settings
from service.monitoring.history import History, Layout


def cpu_us(action: Callable[[int], object], times: int) -> float:
    """Process CPU time per call, in microseconds."""
    started = time.process_time()
    for i in range(times):
        action(i)
    return (time.process_time() - started) / times * 1e6


def opened(layout: Layout, directory: Path | None) -> dict[str, float]:
    """RSS and Python-heap growth of opening one history (its map is touched when it opens)."""
    gc.collect()
    before = rss_mb()
    tracemalloc.start()
    history = History(layout, directory)
    python_bytes = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    grown = rss_mb() - before
    history.close()
    return {"rss_kib": round(grown * 1024, 1), "python_heap_kib": round(python_bytes / 1024, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--samples", type=int, default=10_000, help="samples (and events) to time")
    args = parser.parse_args()
    os.environ.setdefault("MEMORY_BUDGET_MB", "512")
    settings = get_monitoring_settings()
    layout = Layout(settings.history_samples, settings.history_events, settings.history_step_s)
    report: dict[str, object] = {
        "layout": {"samples": layout.samples, "events": layout.events, "step_s": layout.step_s},
        "map_bytes": layout.size,
    }
    with tempfile.TemporaryDirectory() as directory:
        report["anonymous"] = opened(layout, None)
        report["file"] = opened(layout, Path(directory))

    history = History(layout)
    history.sample()  # the registry is created on the first one, not timed
    n = args.samples
    report["cpu_us"] = {
        "sample (read RSS, budget, registry; store)": round(cpu_us(lambda i: history.sample(), n), 2),
        "record_sample (store only)": round(
            cpu_us(lambda i: history.record_sample({"t": i, "rss_mb": 1.0}), n), 2
        ),
        "observe_request (per request)": round(
            cpu_us(lambda i: history.observe_request("/analyze", 200, 0.01), n), 2
        ),
        "record_event (distinct, the ring wraps)": round(
            cpu_us(lambda i: history.record_event("load", f"model:{i}", 1.0), n), 2
        ),
    }
    full = history.read()
    body = json.dumps(full, separators=(",", ":"))
    report["full_ring_read_ms"] = round(cpu_us(lambda i: history.read(), 50) / 1000, 2)
    report["full_ring_json_bytes"] = len(body)
    per_sample_s = report["cpu_us"]["sample (read RSS, budget, registry; store)"] / 1e6
    report["sampler_share_of_one_core"] = f"{per_sample_s / layout.step_s:.1e}"
    history.close()
    report["route_full_ring"] = served_full_ring(layout.samples)
    print(json.dumps(report, indent=2))


def served_full_ring(samples: int, times: int = 20) -> dict[str, float]:
    """GET /dashboard/history of a full ring through the whole app (middleware, validation, JSON),
    in-process: the CPU time includes the test client's side of the request."""
    from fastapi.testclient import TestClient

    from main import app
    from service.monitoring.history import current_history

    with TestClient(app) as client:
        history = current_history()
        assert history is not None
        for _ in range(samples):
            history.sample()
        for i in range(history.layout.events):
            history.record_event("load", f"model:{i}", 1.0)
        size = len(client.get("/dashboard/history").content)
        per_call = cpu_us(lambda i: client.get("/dashboard/history"), times) / 1000
    return {"cpu_ms_per_request": round(per_call, 2), "response_bytes": size}


if __name__ == "__main__":
    main()
