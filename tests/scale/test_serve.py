"""The app on Ray Serve answers like the plain app: the same predictions, the same errors, with
each replica under its own memory budget."""

import csv
import io
import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("ray", reason="the Ray extra is not installed (bash start.sh install ray)")

import httpx
import yaml
from fastapi.testclient import TestClient
from ray import serve
from ray.serve.schema import ServeDeploySchema

from service.scale.serve import APP_NAME, ReplicaOptions, ServeOptions, app_builder, start
from tests.support import ROOT, app_client, configured

pytestmark = pytest.mark.slow  # real servers, exports or browsers: not the quick tier


TOLERANCE = 1e-5
MEMORY_MB = 1024
JSON_BODIES = {
    "one text": {"text": "me encanta este lugar 😍"},
    "a batch": {"texts": ["odio los lunes", "qué día tan bonito", "@usuario jajaja no puede ser"]},
    "empty": {"text": ""},
    "blank in a batch": {"texts": ["hola", "   "]},
    "emptied by preprocessing": {"text": "☹☹☹☹"},
    "too long": {"text": "x" * 2001},
    "too many": {"texts": ["hola"] * 33},
    "both fields": {"text": "a", "texts": ["b"]},
    "unknown task": {"text": "hola", "task": "sarcasm"},
    "a model that is not there": {"text": "hello", "lang": "en"},
}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def env(onnx_minilm: Path) -> dict[str, str]:
    return {"MODEL_SENTIMENT_ES": str(onnx_minilm), "MEMORY_BUDGET_MB": str(MEMORY_MB)}


@pytest.fixture(scope="module")
def served(ray_cluster: str, env: dict[str, str]) -> Iterator[httpx.Client]:
    """One deployment that may autoscale to two replicas, on a free loopback port."""
    with configured(**env):  # the settings each replica is given come from this environment
        options = ServeOptions(port=free_port(), autoscale=(1, 2), memory_mb=MEMORY_MB)
        start(options)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{options.port}", timeout=120) as client:
            yield client
    finally:
        serve.shutdown()


@pytest.fixture(scope="module")
def plain(env: dict[str, str]) -> Iterator[TestClient]:
    """The plain app in this process, whose RSS holds whatever earlier tests loaded: its budget is
    the machine's, not a replica's (no compared answer depends on the budget)."""
    with app_client(**{**env, "MEMORY_BUDGET_MB": "8192"}) as client:
        yield client


def assert_same(got: httpx.Response, expected, where: str) -> None:
    assert got.status_code == expected.status_code, (where, got.text, expected.text)
    assert got.headers.get("retry-after") == expected.headers.get("retry-after"), where
    if got.status_code != 200:
        assert got.json() == expected.json(), where
        return
    body, reference = got.json(), expected.json()
    results = body.get("results", [body])
    references = reference.get("results", [reference])
    assert [r["label"] for r in results] == [r["label"] for r in references], where
    for result, ref in zip(results, references, strict=True):
        for label, p in ref["probas"].items():
            assert abs(result["probas"][label] - p) <= TOLERANCE, (where, label)


def test_analyze_answers_and_errors_like_the_plain_app(served, plain):
    for where, body in JSON_BODIES.items():
        assert_same(served.post("/analyze", json=body), plain.post("/analyze", json=body), where)
    for where, content in {
        "invalid JSON": b'{"text": "hola"',
        "lone surrogate": b'{"text": "\\ud800"}',
    }.items():
        raw = {"content": content, "headers": {"content-type": "application/json"}}
        assert_same(served.post("/analyze", **raw), plain.post("/analyze", **raw), where)
    assert_same(served.get("/nowhere"), plain.get("/nowhere"), "no such route")
    assert served.get("/health").json() == plain.get("/health").json() == {"status": "ok"}


def test_bulk_upload_streams_like_the_plain_app(served, plain):
    rows = io.StringIO()
    writer = csv.writer(rows)
    writer.writerows([["id", "text"], ["a", "me encanta"], ["b", ""], ["c", "odio los lunes"]])
    upload = {"files": {"file": ("t.csv", rows.getvalue().encode())}, "data": {"id_column": "id"}}
    got, expected = served.post("/analyze/file", **upload), plain.post("/analyze/file", **upload)
    assert got.status_code == expected.status_code == 200
    lines = [json.loads(line) for line in got.text.splitlines()]
    references = [json.loads(line) for line in expected.text.splitlines()]
    assert [(line["row"], line["id"], line.get("label"), line.get("error")) for line in lines] == [
        (line["row"], line["id"], line.get("label"), line.get("error")) for line in references
    ]


def test_each_replica_keeps_its_memory_budget(served):
    memory = served.get("/memory").json()
    assert memory["budget_mb"] == MEMORY_MB and memory["budget_source"] == "env MEMORY_BUDGET_MB"
    assert memory["rss_mb"] < MEMORY_MB
    assert [item["key"] for item in memory["loaded"]] == ["sentiment:es"]
    hardware = served.get("/system").json()["hardware"]
    assert hardware["threads"] == 1 and "NUM_THREADS" in hardware["from_settings"]
    status = serve.status().applications[APP_NAME]
    assert status.status == "RUNNING"
    assert status.deployments[APP_NAME].replica_states.get("RUNNING", 0) >= 1


def test_the_config_file_builds_the_deployment():
    config = yaml.safe_load((ROOT / "service" / "scale" / "serve.yaml").read_text())
    schema = ServeDeploySchema.model_validate(config)
    (application,) = schema.applications
    assert application.import_path == "service.scale.serve:app_builder"
    options = ReplicaOptions.model_validate(application.args)
    assert app_builder(options) is not None
