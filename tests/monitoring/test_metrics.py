"""GET /metrics: memory against the budget, per-route requests, registry churn, batching hooks,
the middleware's handling of streamed responses, and summing across worker processes."""

import asyncio
import os
import subprocess
import sys
import textwrap

import pytest
from prometheus_client.parser import text_string_to_metric_families

from service.exceptions import OverBudget
from service.monitoring import metrics
from service.monitoring.middleware import MetricsMiddleware
from service.registry import Loadable, get_registry
from tests.support import ROOT

MB = 1024 * 1024


def sample(text: str, name: str, **labels: str) -> float | None:
    """The value of the sample `name` whose labels include `labels`, or None."""
    for family in text_string_to_metric_families(text):
        for item in family.samples:
            if item.name == name and labels.items() <= item.labels.items():
                return item.value
    return None


def test_memory_and_budget_gauges(make_client):
    client = make_client(MEMORY_BUDGET_MB="300", MEMORY_MARGIN_MB="20")
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert sample(text, "memory_budget_bytes", source="env MEMORY_BUDGET_MB") == 300 * MB
    assert sample(text, "memory_margin_bytes") == 20 * MB
    rss = sample(text, "process_rss_bytes")
    assert rss is not None and rss > 10 * MB
    assert sample(text, "process_peak_rss_bytes") >= rss
    anon, file = sample(text, "process_anon_bytes"), sample(text, "process_file_bytes")
    assert 0 < anon < rss and file > 0 and abs(anon + file - rss) < 2 * MB  # shmem: none here
    used = sample(text, "memory_used_bytes")
    assert used >= anon * 0.95  # the budget counts anonymous memory (nothing runs: no allowances)
    headroom = sample(text, "memory_headroom_bytes")
    assert abs(headroom - (280 * MB - used)) < 1 * MB
    assert sample(text, "models_loaded") == 0
    assert 'pid="' not in text  # one process: no pid label


def test_standard_process_metrics(make_client):
    """prometheus-client's process collector, as dashboards and alerts expect it."""
    text = make_client(MEMORY_BUDGET_MB="300").get("/metrics").text
    resident = sample(text, "process_resident_memory_bytes")
    assert resident is not None and abs(resident - sample(text, "process_rss_bytes")) < 20 * MB
    assert sample(text, "process_cpu_seconds_total") > 0
    assert 3 <= sample(text, "process_open_fds") <= sample(text, "process_max_fds")
    assert sample(text, "process_start_time_seconds") > 1_600_000_000
    assert sample(text, "process_virtual_memory_bytes") > resident


def test_requests_are_counted_by_route_template(make_client):
    client = make_client()
    before = sample(client.get("/metrics").text, "http_requests_total", route="/health", status="200") or 0
    for _ in range(3):
        client.get("/health")
    client.post("/analyze", json={"text": ""})
    for path in ("/nope", "/a/b/c", "/random-123", "/wp-admin.php"):
        assert client.get(path).status_code == 404
    text = client.get("/metrics").text
    assert sample(text, "http_requests_total", method="GET", route="/health", status="200") == before + 3
    assert sample(text, "http_requests_total", method="POST", route="/analyze", status="422") >= 1
    # Unknown paths share one series, so probing cannot grow the number of series.
    assert sample(text, "http_requests_total", route="<unmatched>", status="404") >= 4
    assert "/wp-admin.php" not in text
    assert sample(text, "http_request_duration_seconds_count", method="GET", route="/health") >= 3
    assert sample(text, "http_request_duration_seconds_bucket", route="/health", le="+Inf") >= 3


def test_registry_loads_evictions_refusals_and_model_cost(make_client):
    client = make_client(MEMORY_BUDGET_MB="4096")
    registry = get_registry()
    item = Loadable(key="fake:model", load=object, estimate_mb=lambda: 1.0, describe=lambda: {"kind": "test"})
    with registry.use(item):
        pass
    text = client.get("/metrics").text
    assert sample(text, "model_loads_total") == 1
    assert sample(text, "models_loaded") == 1
    assert sample(text, "model_cost_bytes", key="fake:model") is not None
    registry.unload("fake:model")
    huge = Loadable(key="huge:model", load=object, estimate_mb=lambda: 1e7)
    with pytest.raises(OverBudget), registry.use(huge):
        pass
    text = client.get("/metrics").text
    assert sample(text, "model_evictions_total") == 1
    assert sample(text, "model_refusals_total") == 1
    assert sample(text, "models_loaded") == 0


def test_batch_sizes_and_queue_depth_hooks(make_client, monkeypatch):
    client = make_client()
    before = sample(client.get("/metrics").text, "sentiment_batch_size_count") or 0
    monkeypatch.setattr(metrics, "_queue_depth", metrics._queue_depth)  # restored after the test
    metrics.set_queue_depth_source(lambda: 7)
    metrics.observe_batch(8)
    metrics.observe_batch(3)
    text = client.get("/metrics").text
    assert sample(text, "sentiment_queue_depth") == 7
    assert sample(text, "sentiment_batch_size_count") == before + 2
    assert sample(text, "sentiment_batch_size_bucket", le="4.0") >= 1


def test_dashboard_data_reports_memory_and_routes(make_client):
    client = make_client(MEMORY_BUDGET_MB="300")
    client.get("/health")
    data = client.get("/dashboard/data").json()
    assert data["memory"]["budget_mb"] == 300
    health = data["routes"]["GET /health"]
    assert health["count"] >= 1 and health["sum_s"] > 0
    assert health["buckets"]["+Inf"] == health["count"]


def test_dashboard_page_is_self_contained(make_client):
    response = make_client().get("/dashboard")
    assert response.status_code == 200
    page = response.text
    assert "<canvas" in page and "fetch(" in page
    # Nothing is loaded from anywhere: no external scripts, styles, fonts or images, and a CSP that says so.
    for marker in ("http://", "https://", "<script src", '<link rel="stylesheet"', "@import"):
        assert marker not in page
    assert "default-src 'none'" in response.headers["content-security-policy"]


def requests_seen(method: str, route: str, status: str) -> float:
    """This process's count of requests with these labels."""
    for family in metrics.REQUESTS.collect():
        for item in family.samples:
            if item.name == "http_requests_total" and item.labels == {
                "method": method,
                "route": route,
                "status": status,
            }:
                return item.value
    return 0.0


def run_asgi(app, method: str, on_send=None) -> list[dict]:
    """Run an ASGI app once with an empty request; return the messages it sent."""
    sent: list[dict] = []
    scope = {"type": "http", "method": method, "path": "/x", "headers": []}

    async def receive() -> dict:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict) -> None:
        sent.append(message)
        if on_send is not None:
            on_send(message)

    asyncio.run(asyncio.wait_for(app(scope, receive, send), timeout=5))
    return sent


def test_middleware_passes_streamed_bodies_through_unbuffered():
    """Each chunk reaches the client before the app produces the next one (a buffering middleware
    would hold the first chunk until the end, and this app would wait for it forever)."""
    first_chunk_delivered = asyncio.Event()

    async def streaming_app(scope, receive, send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"first", "more_body": True})
        await asyncio.wait_for(first_chunk_delivered.wait(), timeout=2)
        await send({"type": "http.response.body", "body": b"second", "more_body": False})

    def on_send(message: dict) -> None:
        if message.get("body") == b"first":
            first_chunk_delivered.set()

    before = requests_seen("GET", "<unmatched>", "200")
    sent = run_asgi(MetricsMiddleware(streaming_app), "GET", on_send)
    assert [message.get("body") for message in sent[1:]] == [b"first", b"second"]
    assert requests_seen("GET", "<unmatched>", "200") == before + 1


def test_middleware_counts_a_crash_as_500():
    async def crashing_app(scope, receive, send) -> None:
        raise RuntimeError("boom")

    before = requests_seen("POST", "<unmatched>", "500")
    with pytest.raises(RuntimeError):
        run_asgi(MetricsMiddleware(crashing_app), "POST")
    assert requests_seen("POST", "<unmatched>", "500") == before + 1


WORKER = textwrap.dedent(
    """
    import sys
    from fastapi.testclient import TestClient
    from main import app

    with TestClient(app) as client:
        for _ in range(int(sys.argv[1])):
            assert client.get("/health").status_code == 200
        if sys.argv[2] == "scrape":
            print(client.get("/metrics").text)
    """
)


@pytest.mark.slow
def test_multiprocess_workers_are_summed(tmp_path):
    """With PROMETHEUS_MULTIPROC_DIR, each worker writes its own files and a scrape sums them all."""
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path), "MEMORY_BUDGET_MB": "512"}

    def worker(requests: int, mode: str) -> str:
        done = subprocess.run(
            [sys.executable, "-c", WORKER, str(requests), mode],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stdout

    worker(3, "quiet")
    text = worker(2, "scrape")
    assert sample(text, "http_requests_total", method="GET", route="/health", status="200") == 5
    assert sample(text, "http_request_duration_seconds_count", route="/health") == 5
    # Process state describes the worker that answered, and says which one.
    assert sample(text, "process_rss_bytes") > 0
    assert 'process_rss_bytes{pid="' in text
    assert sample(text, "process_resident_memory_bytes") > 0
