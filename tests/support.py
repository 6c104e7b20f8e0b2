"""Test support: the shared models and data, and an app configured through the environment."""

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from bench.server import Server, running_server
from service import evaluate
from service.config import Settings, get_settings
from service.ocr.tessdata import resolve_tessdata
from service.registry import get_registry

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
MINILM = SHARED / "models" / "tweet-sentiment-minilm"
ROBERTUITO_SHAPE = SHARED / "models" / "robertuito-shape"
DATA = SHARED / "data" / "sentiment"

needs_minilm = pytest.mark.skipif(
    not (MINILM / "model.safetensors").is_file(),
    reason=f"needs the trained model in {MINILM} (the project's ../shared is absent)",
)
needs_data = pytest.mark.skipif(
    not (DATA / "xlmt_english" / "test_text.txt").is_file(),
    reason=f"needs the labelled tweets in {DATA} (the project's ../shared is absent)",
)


def read_labelled(name: str) -> tuple[list[str], list[str]]:
    """A shared labelled set as texts and label names, read by the service's own reader."""
    labelled = evaluate.read_labelled(DATA / name)
    names = {"0": "NEG", "1": "NEU", "2": "POS"}
    return labelled.texts, [names[label] for label in labelled.labels]


@contextmanager
def configured(**env: str) -> Iterator[Settings]:
    """Run with exactly these settings (env vars) and a fresh registry, restoring all after. The
    default model is not loaded in the background (WARM_UP) unless a test asks for it."""
    with pytest.MonkeyPatch.context() as patch:
        for name in Settings.model_fields:
            patch.delenv(name.upper(), raising=False)
        for name, value in {"WARM_UP": "false", **env}.items():
            patch.setenv(name, value)
        get_settings.cache_clear()
        get_registry.cache_clear()
        try:
            yield get_settings()
        finally:
            get_settings.cache_clear()
            get_registry.cache_clear()


@contextmanager
def app_client(**env: str) -> Iterator[TestClient]:
    with configured(**env):
        from main import app

        with TestClient(app, raise_server_exceptions=False) as client:
            yield client


def tessdata_missing() -> str | None:
    """Why OCR in Spanish and English (what the server tests send) cannot run here, or None."""
    try:
        for code in ("spa", "eng"):
            resolve_tessdata(code)
    except Exception as error:
        return str(error)
    return None


def real_server(workdir: Path, *args: str, **options: Any) -> AbstractContextManager[Server]:
    """bench.server's real server with one thread, as the tests' servers always ran (two agents'
    servers on two shared cores must not oversubscribe them)."""
    return running_server(workdir, *args, **{"NUM_THREADS": "1", **options})


def recycling_server(workdir: Path, **options: Any) -> AbstractContextManager[Server]:
    """A supervised real server whose budget is below what an idle worker holds: it passes the hard
    limit from the start, refuses work, and recycles once RECYCLE_MIN_UPTIME_S has passed."""
    settings = {
        "MEMORY_BUDGET_MB": "30",
        "RECYCLE_MIN_UPTIME_S": "3",
        "WATCHDOG_INTERVAL_S": "0.2",
        "BACKEND": "onnx",
        "ONNX_DIR": str(workdir),
    }
    return real_server(workdir, supervised=True, **{**settings, **options})


# The uncased WordPiece tokenizer that Italian and Portuguese BERT stand-ins use (bench/standins.py).
WORDPIECE_TOKENIZER = MINILM / "tokenizer.json"
