"""/health, /ready, /memory, the OpenAPI docs, and thread pinning before numeric imports."""

import json
import os
import subprocess
import sys

import pytest

from tests.support import MINILM, ROOT, needs_minilm


def test_health_is_cheap_and_loads_nothing(make_client):
    client = make_client(BACKEND="torch", MODEL_SENTIMENT_ES="/nonexistent")
    assert client.get("/health").json() == {"status": "ok"}
    assert client.get("/memory").json()["loaded"] == []


def test_ready_is_503_until_the_default_model_can_serve(make_client, tmp_path):
    client = make_client(BACKEND="onnx", ONNX_DIR=str(tmp_path))
    response = client.get("/ready")
    assert response.status_code == 503
    assert response.json()["error"]["env_var"] == "MODEL_SENTIMENT_ES"


@needs_minilm
def test_ready_loads_the_default_model_and_memory_reports_it(make_client):
    client = make_client(
        BACKEND="torch", MODEL_SENTIMENT_EN=str(MINILM), DEFAULT_LANG="en", MEMORY_BUDGET_MB="4096"
    )
    response = client.get("/ready")
    assert response.status_code == 200, response.text
    assert response.json() == {"status": "ready", "model": "sentiment:en", "backend": "torch"}
    report = client.get("/memory").json()
    (loaded,) = report["loaded"]
    assert loaded["key"] == "sentiment:en"
    assert loaded["backend"] == "torch"
    assert loaded["cost_mb"] >= 0
    assert loaded["file_bytes"]["model.safetensors"] == (MINILM / "model.safetensors").stat().st_size
    assert report["counters"]["loads"] == 1


@pytest.mark.slow
@needs_minilm
def test_load_cost_is_the_rss_the_load_added():
    """In a fresh process: in this one, heap freed by earlier tests would absorb the load."""
    code = """
import json
from service.registry import get_registry
from service.sentiment.service import model_item
with get_registry().use(model_item("sentiment", "es")):
    pass
print(json.dumps(get_registry().snapshot()[0]))
"""
    loaded = run_python(code, BACKEND="torch", MODEL_SENTIMENT_ES=str(MINILM), MEMORY_BUDGET_MB="4096")
    assert loaded["key"] == "sentiment:es"
    assert loaded["cost_mb"] > 150  # torch's imports and the 87 MB model


def test_memory_report_fields(make_client):
    report = make_client(MEMORY_BUDGET_MB="300", MEMORY_MARGIN_MB="20", NUM_THREADS="1").get("/memory").json()
    assert report["budget_mb"] == 300
    assert report["budget_source"] == "env MEMORY_BUDGET_MB"
    assert report["margin_mb"] == 20
    assert abs(report["headroom_mb"] - (300 - 20 - report["used_mb"])) <= 0.11  # each rounded to 0.1
    # The budget counts anonymous memory, not RSS: mapped files are reclaimable.
    assert report["used_mb"] >= report["anon_mb"] > 0
    own_rss = report["rss_mb"] - report["worker_rss_mb"]  # rss_mb adds the OCR worker's
    assert abs(own_rss - report["anon_mb"] - report["file_mb"] - report["shmem_mb"]) <= 0.41
    assert report["peak_rss_mb"] >= report["rss_mb"]
    assert report["threads"] >= 1
    assert report["backend"] == "onnx"
    assert set(report["counters"]) >= {"loads", "evictions", "refusals"}


def test_openapi_has_examples_for_requests_and_responses(make_client):
    schema = make_client().get("/openapi.json").json()
    analyze = schema["paths"]["/analyze"]["post"]
    assert {"200", "400", "422", "503"} <= set(analyze["responses"])
    components = schema["components"]["schemas"]
    assert components["AnalyzeRequest"]["examples"]
    assert components["AnalyzeResult"]["examples"]
    assert components["MemoryReport"]["examples"]
    assert {"/health", "/ready", "/memory", "/analyze"} <= set(schema["paths"])


def run_python(code: str, **env: str) -> dict:
    clean = {
        k: v for k, v in os.environ.items() if not k.endswith("_NUM_THREADS") and not k.startswith("MALLOC_")
    }
    result = subprocess.run(
        [sys.executable, "-c", code],
        env={**clean, **env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_importing_the_package_pins_threads_before_numeric_libraries():
    code = """
import json, os, sys
import service
numeric = [m for m in ("numpy", "torch", "onnxruntime") if m in sys.modules]
import torch
print(json.dumps({
    "numeric_before": numeric,
    "env": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
            "TOKENIZERS_PARALLELISM", "MALLOC_ARENA_MAX", "MALLOC_MMAP_THRESHOLD_", "CUDA_VISIBLE_DEVICES")},
    "torch_threads": torch.get_num_threads(),
}))
"""
    pinned = run_python(code, NUM_THREADS="1")
    assert pinned["numeric_before"] == []
    assert pinned["env"] == {
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "MALLOC_ARENA_MAX": "2",
        "MALLOC_MMAP_THRESHOLD_": "1048576",
        "CUDA_VISIBLE_DEVICES": "",
    }
    assert pinned["torch_threads"] == 1
    assert run_python(code, NUM_THREADS="2")["torch_threads"] == 2


def test_startup_warns_when_the_default_model_cannot_leave_room(make_client, caplog, tmp_path):
    with caplog.at_level("WARNING", logger="service.registry"):
        make_client(MEMORY_BUDGET_MB="96", ONNX_DIR=str(tmp_path))
    assert any(
        "default model sentiment:es" in r.message and "MEMORY_BUDGET_MB" in r.message for r in caplog.records
    ), [r.message for r in caplog.records]
