"""An app serving a fake model (fast, controllable), and the real minilm exported to ONNX once."""

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.sentiment import service
from service.sentiment.analyzer import Analyzer
from tests.sentiment.fakes import FakeModel
from tests.support import MINILM, ROOT


@pytest.fixture
def fake_app(make_client, monkeypatch, tmp_path) -> Callable[..., TestClient]:
    """The app with every sentiment model replaced by `model`; env sets the other settings."""

    def make(model: FakeModel, **env: str) -> TestClient:
        monkeypatch.setattr(
            service,
            "create_analyzer",
            lambda task, lang, source, backend, threads: Analyzer(model, task, lang, backend),
        )
        settings = {
            "BACKEND": "torch",
            "MODEL_SENTIMENT_ES": str(tmp_path),
            "MEMORY_BUDGET_MB": "8192",
            **env,
        }
        return make_client(**settings)

    return make


@pytest.fixture(scope="session")
def onnx_minilm(tmp_path_factory) -> Path:
    """The trained minilm exported with `python -m service.export` as it ships (the default INT8
    recipe), whose answers do not depend on batch mates: tests compare them exactly."""
    if not (MINILM / "model.safetensors").is_file():
        pytest.skip(f"needs the trained model in {MINILM} (the project's ../shared is absent)")
    out = tmp_path_factory.mktemp("onnx") / "sentiment-es"
    command = [sys.executable, "-m", "service.export", "--task", "sentiment", "--lang", "es"]
    command += ["--source", str(MINILM), "--out", str(out)]
    subprocess.run(command, cwd=ROOT, check=True, capture_output=True)
    return out
