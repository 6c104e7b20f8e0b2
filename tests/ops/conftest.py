"""Fixtures of the ops tests: the app under ops settings from the environment."""

from collections.abc import Callable, Iterator

import pytest
from fastapi.testclient import TestClient

from service.ocr.config import get_ocr_settings
from service.ops.config import OpsSettings, get_ops_settings
from tests.support import app_client


@pytest.fixture
def ops_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., None]]:
    """`ops_env(API_KEY="k")`: exactly these ops settings (the rest default) until the test ends."""

    def set_env(**env: str) -> None:
        for name in OpsSettings.model_fields:
            monkeypatch.delenv(name.upper(), raising=False)
        monkeypatch.setenv("MEMORY_WATCHDOG", "false")
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        get_ops_settings.cache_clear()
        get_ocr_settings.cache_clear()

    yield set_env
    monkeypatch.undo()
    get_ops_settings.cache_clear()
    get_ocr_settings.cache_clear()


@pytest.fixture
def ops_client(ops_env: Callable[..., None]) -> Iterator[Callable[..., TestClient]]:
    """`ops_client(API_KEY="k")`: the whole app (main.py) with these ops settings; nothing loads."""
    managers = []

    def make(**env: str) -> TestClient:
        ops_env(**env)
        manager = app_client(BACKEND="onnx", ONNX_DIR="/nonexistent", NUM_THREADS="1")
        managers.append(manager)
        return manager.__enter__()

    yield make
    for manager in reversed(managers):
        manager.__exit__(None, None, None)
