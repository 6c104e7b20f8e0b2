"""An app serving a fake model (fast, controllable); the real minilm export and the stand-ins are
tests/conftest.py's."""

from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient

from service.sentiment import service
from service.sentiment.analyzer import Analyzer
from tests.sentiment.fakes import FakeModel


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
