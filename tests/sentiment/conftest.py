"""An app serving a fake model (fast, controllable); the real minilm export is tests/conftest.py's."""

from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient

from service.sentiment import service
from service.sentiment.analyzer import Analyzer
from tests.sentiment.fakes import FakeModel
from tests.sentiment.standins import Standins
from tests.support import ROBERTUITO_SHAPE, WORDPIECE_TOKENIZER


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
def standins(tmp_path_factory) -> Standins:
    """Tiny stand-ins of pysentimiento's models, built and exported on first use."""
    if not (ROBERTUITO_SHAPE / "tokenizer.json").is_file() or not WORDPIECE_TOKENIZER.is_file():
        pytest.skip("needs ../shared/models (RoBERTuito's shape and the minilm's tokenizer)")
    return Standins(tmp_path_factory.mktemp("standins"))
