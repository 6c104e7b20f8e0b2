"""A spin-up (issue 22): start.sh runs no Python before the server once the build set things up,
the app imports nothing the first answer does not need, the default model loads in the background
while /health answers, and a request that arrives meanwhile waits for that load."""

import gc
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from importlib import import_module
from pathlib import Path

import pytest
from fastapi import APIRouter, FastAPI
from fastapi.testclient import TestClient

from service import runtime
from service.lazy_routers import include_later
from tests.support import ROOT

# Stands in for python: records its arguments and whether pydantic's plugins are off, says its
# version, and "serves" by exiting 1 (so supervise.sh ends at once: it restarts only a worker that
# exits 0).
FAKE_PYTHON = """#!/usr/bin/env bash
echo "$* [plugins: ${PYDANTIC_DISABLE_PLUGINS-unset}]" >> "$TRACE"
[ "$1" = "-V" ] && echo "Python 3.11.7"
case "$*" in *service.ops.serve*) exit 1 ;; esac
exit 0
"""


def fake_checkout(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """start.sh with the files it reads, and an environment whose `python` is FAKE_PYTHON."""
    checkout = tmp_path / "checkout"
    (checkout / "service" / "ops").mkdir(parents=True)
    shutil.copy(ROOT / "start.sh", checkout)
    shutil.copy(ROOT / "service" / "ops" / "supervise.sh", checkout / "service" / "ops")
    for requirements in ROOT.glob("requirements*.txt"):
        shutil.copy(requirements, checkout)
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").write_text(FAKE_PYTHON)
    (venv / "bin" / "python").chmod(0o755)
    env = {
        "PATH": f"{venv / 'bin'}:{os.environ['PATH']}",
        "VIRTUAL_ENV": str(venv),
        "TRACE": str(tmp_path / "trace"),
        "EXPORT_MODELS": "sentiment:es",
        "HOME": str(tmp_path),
    }
    return checkout, env


def traced(checkout: Path, env: dict[str, str], tmp_path: Path, *args: str) -> list[str]:
    (tmp_path / "trace").unlink(missing_ok=True)
    subprocess.run(["bash", str(checkout / "start.sh"), *args], env=env, capture_output=True, timeout=60)
    return (tmp_path / "trace").read_text().splitlines()


def test_start_runs_no_python_before_the_server_once_the_build_set_up(tmp_path):
    checkout, env = fake_checkout(tmp_path)
    build = traced(checkout, env, tmp_path, "install")
    assert any("service.export --list-missing" in line for line in build)
    assert any("compileall" in line for line in build)
    assert any("-m service.dataclass_code" in line for line in build)
    assert any("service.sentiment.backends.prepacked --configured" in line for line in build)

    start = traced(checkout, env, tmp_path)
    assert len(start) == 1 and "-m service.ops.serve main:app" in start[0]  # the server, and nothing else

    # Other settings than the build's: the setup runs again (the export is checked).
    again = traced(checkout, {**env, "EXPORT_MODELS": "sentiment:es,irony:es"}, tmp_path)
    assert any("service.export --list-missing" in line for line in again)
    # But the prepacked variant is the server's to make, after its first answer.
    assert not any("prepacked" in line for line in again)


def test_the_server_starts_with_pydantic_plugins_off_unless_the_environment_says_otherwise(tmp_path):
    checkout, env = fake_checkout(tmp_path)
    traced(checkout, env, tmp_path, "install")
    (server,) = traced(checkout, env, tmp_path)
    assert server.endswith("[plugins: __all__]")
    (server,) = traced(checkout, {**env, "PYDANTIC_DISABLE_PLUGINS": ""}, tmp_path)
    assert server.endswith("[plugins: ]")


HEAVY = (
    *("onnxruntime", "numpy", "tokenizers", "torch", "transformers"),
    *("PIL", "pypdfium2", "spacy", "tesserocr"),
)
DEFERRED = ("service.protocol.router", "service.ocr.router", "service.monitoring.router")


def test_the_app_imports_nothing_heavy_before_its_first_answer_needs_it():
    """Importing the app (what runs before the port opens) leaves the model stack and OCR's to the
    warm-up thread and the routes that need them, and the routers the first answer does not use
    to their first request."""
    code = f"import json, sys, main; print(json.dumps([m for m in {HEAVY + DEFERRED!r} if m in sys.modules]))"
    assert json.loads(python(code)) == []


def python(code: str) -> str:
    """The last line `code` prints in a fresh interpreter at the project's root."""
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True, timeout=60
    )
    return done.stdout.splitlines()[-1]


def test_fastapi_own_models_are_built_at_first_use_and_the_app_s_at_import():
    code = (
        "import json, main; from fastapi.openapi.models import OpenAPI; from pydantic import BaseModel; "
        "from service.sentiment.schemas import AnalyzeRequest; "
        "before = OpenAPI.__pydantic_complete__; main.app.openapi(); "
        "print(json.dumps([before, OpenAPI.__pydantic_complete__, AnalyzeRequest.__pydantic_complete__, "
        "'defer_build' in BaseModel.model_config]))"
    )
    assert json.loads(python(code)) == [False, True, True, False]


def test_routes_are_declared_without_importing_pydantic_v1_and_v1_models_are_still_refused():
    """FastAPI asks of every route's types whether they are pydantic v1 models; the app's routes are
    declared without importing `pydantic.v1` for that, and once something has imported it a v1 model
    is refused as FastAPI refuses it."""
    code = (
        "import json, sys, warnings; warnings.simplefilter('ignore'); import main; "
        "imported = 'pydantic.v1' in sys.modules; "
        "from fastapi import FastAPI; from pydantic import v1; "
        "M = type('M', (v1.BaseModel,), {'__annotations__': {'x': int}}); app = FastAPI(); "
        "error = None\n"
        "try:\n    app.router.add_api_route('/m', lambda: None, response_model=M)\n"
        "except Exception as caught:\n    error = type(caught).__name__\n"
        "print(json.dumps([imported, error]))"
    )
    assert json.loads(python(code)) == [False, "PydanticV1NotSupportedError"]


def test_the_server_command_imports_fastapi_only_after_pausing_the_collector():
    """`python -m service.ops.serve` imports the `service` and `service.ops` packages before its
    own code runs: neither may import FastAPI, or the pause (in its `main`) would come too late."""
    code = "import json, sys, service.ops.serve; print(json.dumps('fastapi' in sys.modules))"
    assert json.loads(python(code)) is False


def test_the_collector_paused_for_the_start_resumes_with_the_start_s_objects_frozen():
    assert gc.isenabled()
    runtime.resume_gc()  # not paused: nothing to undo
    assert gc.get_freeze_count() == 0
    runtime.pause_gc()
    try:
        assert not gc.isenabled()
    finally:
        runtime.resume_gc()
    try:
        assert gc.isenabled() and gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
    runtime.pause_gc(at_most_s=0.2)  # nobody resumes it: it resumes itself
    try:
        deadline = time.monotonic() + 10
        while not gc.isenabled() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert gc.isenabled()
    finally:
        runtime.resume_gc()
        gc.unfreeze()


def test_deferred_routers_are_included_in_place_at_their_first_request(monkeypatch):
    """A deferred router: not imported until asked for, then routed (405s too) and documented in
    the order `include_router` gives, as the same app with every router included at once."""
    monkeypatch.delitem(sys.modules, SAMPLE, raising=False)

    def assemble(deferred: bool) -> FastAPI:
        app = FastAPI()
        app.include_router(sample_router("/first"))
        if deferred:
            include_later(app, SAMPLE, ("/deferred",))
        else:
            app.include_router(import_module(SAMPLE).router)
        app.include_router(sample_router("/last"))
        return app

    eager = assemble(deferred=False)
    del sys.modules[SAMPLE]
    app = assemble(deferred=True)
    client = TestClient(app)
    assert client.get("/first").json() == "/first" and client.get("/last").json() == "/last"
    assert client.get("/elsewhere").status_code == 404 and SAMPLE not in sys.modules  # passed by
    assert client.get("/deferred/7").json() == {"item": 7}
    assert client.post("/deferred/7").status_code == 405
    assert client.get("/deferred/7/", follow_redirects=False).status_code == 307
    assert client.get("/last").json() == "/last"
    assert app.openapi() == eager.openapi()
    assert [getattr(r, "path", None) for r in app.routes] == [getattr(r, "path", None) for r in eager.routes]


def test_the_openapi_document_includes_what_is_deferred(monkeypatch):
    monkeypatch.delitem(sys.modules, SAMPLE, raising=False)
    app = FastAPI()
    include_later(app, SAMPLE, ("/deferred",))
    assert "/deferred/{item}" in TestClient(app).get("/openapi.json").json()["paths"]
    assert app.url_path_for("deferred_item", item=3) == "/deferred/3"


def test_the_app_s_deferred_routers_declare_every_path_they_serve_and_health_imports_none():
    code = (
        "import json, sys; from importlib import import_module; from fastapi.testclient import TestClient; "
        "import main; from service.lazy_routers import DeferredRouter; "
        "stands = [r for r in main.app.routes if isinstance(r, DeferredRouter)]; "
        "TestClient(main.app).get('/health'); "
        "imported = [s.module for s in stands if s.module in sys.modules]; "
        "print(json.dumps([imported, sorted(s.module for s in stands), [(s.module, r.path) for s in stands "
        "for r in import_module(s.module).router.routes if not s.covers(r.path)]]))"
    )
    imported, deferred, uncovered = json.loads(python(code))
    assert imported == [] and deferred == sorted(DEFERRED)
    assert uncovered == []


SAMPLE = "tests.system.deferred_sample"


def sample_router(path: str) -> APIRouter:
    router = APIRouter()
    router.add_api_route(path, lambda: path, methods=["GET"])
    return router


@pytest.fixture
def slow_load(monkeypatch):
    """Model loads that take 1.5 s more, counted."""
    from service.sentiment import service

    real, loads = service.create_analyzer, []

    def create_analyzer(*args, **kwargs):
        loads.append(time.monotonic())
        time.sleep(1.5)
        return real(*args, **kwargs)

    monkeypatch.setattr(service, "create_analyzer", create_analyzer)
    return loads


@pytest.mark.slow
def test_health_answers_during_the_warm_up_and_a_request_waits_for_it(make_client, onnx_minilm, slow_load):
    began = time.monotonic()
    client = make_client(
        WARM_UP="true", MODEL_SENTIMENT_ES=str(onnx_minilm), PREPACKED="false", MEMORY_BUDGET_MB="4096"
    )
    assert client.get("/health").status_code == 200
    assert time.monotonic() - began < 1.5  # the app started before the load ended
    answers = {}

    def ready() -> None:
        answers["ready"] = client.get("/ready")

    waiter = threading.Thread(target=ready)
    waiter.start()
    response = client.post("/analyze", json={"text": "me encanta"})
    waiter.join()
    assert response.status_code == 200, response.text
    assert answers["ready"].status_code == 200 and answers["ready"].json()["status"] == "ready"
    assert len(slow_load) == 1  # the request and /ready waited for the warm-up's load
    assert time.monotonic() - slow_load[0] >= 1.5
    assert client.get("/memory").json()["counters"]["loads"] == 1


def test_without_warm_up_nothing_loads_until_asked(make_client, onnx_minilm, slow_load):
    client = make_client(
        WARM_UP="false", MODEL_SENTIMENT_ES=str(onnx_minilm), PREPACKED="false", MEMORY_BUDGET_MB="4096"
    )
    time.sleep(0.2)
    assert client.get("/memory").json()["loaded"] == [] and slow_load == []
    assert client.get("/ready").status_code == 200
    assert len(slow_load) == 1


@pytest.mark.slow
def test_a_model_loaded_plain_gets_its_variant_after_its_first_answer(make_client, onnx_minilm, tmp_path):
    model = tmp_path / "sentiment-es"
    shutil.copytree(onnx_minilm, model, ignore=shutil.ignore_patterns("prepacked", ".prepacked-*"))
    client = make_client(WARM_UP="true", MODEL_SENTIMENT_ES=str(model), MEMORY_BUDGET_MB="4096")
    first = client.post("/analyze", json={"text": "me encanta"})
    assert first.status_code == 200, first.text
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        (loaded,) = client.get("/memory").json()["loaded"]
        if loaded["prepacked"] != "coming":
            break
        time.sleep(0.2)
    assert loaded["prepacked"] == "in place"
    assert loaded["file_mb"] > 10  # its weights are mapped from the variant's file now
    assert (model / "prepacked" / "variant.json").is_file()
    again = client.post("/analyze", json={"text": "me encanta"}).json()
    assert abs(again["probas"]["POS"] - first.json()["probas"]["POS"]) <= 1e-4
