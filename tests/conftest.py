"""Fixtures every test module may use."""

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.sentiment.standins import Standins
from tests.support import MINILM, ROBERTUITO_SHAPE, ROOT, WORDPIECE_TOKENIZER, app_client

# The test process's RSS (torch, what earlier tests left) is not the app's: a watchdog measuring
# it would refuse requests at random. tests/ops turns it on where it is tested.
os.environ.setdefault("MEMORY_WATCHDOG", "false")
# Nor a default model loading in the background of every app and server a test starts (a test of
# the warm-up turns it on).
os.environ.setdefault("WARM_UP", "false")


@pytest.fixture
def make_client() -> Iterator[Callable[..., TestClient]]:
    """A function-scoped app with the given env; closed at the end of the test."""
    stack = []

    def make(**env: str) -> TestClient:
        manager = app_client(**env)
        stack.append(manager)
        return manager.__enter__()

    yield make
    for manager in reversed(stack):
        manager.__exit__(None, None, None)


@pytest.fixture(scope="session")
def onnx_minilm(tmp_path_factory) -> Path:
    """The trained minilm exported with `python -m service.export`, unquantized: INT8 recipes that
    quantize activations per tensor make a text's probabilities depend on its batch-mates, which
    would hide whether each caller got its own results."""
    if not (MINILM / "model.safetensors").is_file():
        pytest.skip(f"needs the trained model in {MINILM} (the project's ../shared is absent)")
    out = tmp_path_factory.mktemp("onnx") / "sentiment-es"
    command = [sys.executable, "-m", "service.export", "--task", "sentiment", "--lang", "es"]
    command += ["--source", str(MINILM), "--out", str(out), "--no-quantize"]
    subprocess.run(command, cwd=ROOT, check=True, capture_output=True)
    return out


@pytest.fixture(scope="session")
def onnx_minilm_int8(tmp_path_factory) -> Path:
    """The trained minilm exported as it ships (the default INT8 recipe): the batch-invariance
    tests compare its answers exactly (tests/sentiment/test_invariance.py)."""
    if not (MINILM / "model.safetensors").is_file():
        pytest.skip(f"needs the trained model in {MINILM} (the project's ../shared is absent)")
    out = tmp_path_factory.mktemp("onnx-int8") / "sentiment-es"
    command = [sys.executable, "-m", "service.export", "--task", "sentiment", "--lang", "es"]
    command += ["--source", str(MINILM), "--out", str(out)]
    subprocess.run(command, cwd=ROOT, check=True, capture_output=True)
    return out


@pytest.fixture(scope="session")
def standins(tmp_path_factory) -> Standins:
    """Tiny stand-ins of pysentimiento's models, built and exported on first use."""
    if not (ROBERTUITO_SHAPE / "tokenizer.json").is_file() or not WORDPIECE_TOKENIZER.is_file():
        pytest.skip("needs ../shared/models (RoBERTuito's shape and the minilm's tokenizer)")
    return Standins(tmp_path_factory.mktemp("standins"))
