"""An app with only the OCR router, over a fresh registry and settings from the environment."""

import os
from collections.abc import Callable, Iterator

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from service.config import get_settings
from service.error_handlers import install_handlers
from service.exceptions import ModelUnavailable
from service.ocr.config import OcrSettings, get_ocr_settings
from service.ocr.router import router
from service.ocr.tessdata import resolve_tessdata
from service.registry import get_registry


def _clear_caches() -> None:
    get_settings.cache_clear()
    get_ocr_settings.cache_clear()
    get_registry.cache_clear()


def _missing_tessdata(*codes: str) -> str | None:
    try:
        for code in codes:
            resolve_tessdata(code)
    except ModelUnavailable as error:
        return error.message
    return None


def _needs(*codes: str) -> pytest.MarkDecorator:
    # Skipped on a developer's machine without the language data; in CI (CI=true) a missing install
    # step must fail, not turn the OCR tests into skips.
    missing = _missing_tessdata(*codes)
    return pytest.mark.skipif(missing is not None and os.environ.get("CI") != "true", reason=f"{missing}")


needs_tessdata = _needs("spa", "eng")
# lang=auto's engine: the languages of OCR_AUTO_LANGS, read from one directory.
needs_auto_tessdata = _needs(OcrSettings().tesseract_code("auto"))


@pytest.fixture
def ocr_client(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., TestClient]]:
    """`ocr_client(OCR_MAX_PAGES="2")`: a client whose settings and registry start afresh.

    The budget is set large so that whatever other tests left in this process's RSS does not
    refuse these requests; the budget tests shrink it on purpose."""
    clients: list[TestClient] = []

    def make(**env: str) -> TestClient:
        for name, value in {"MEMORY_BUDGET_MB": "8192", **env}.items():
            monkeypatch.setenv(name, value)
        _clear_caches()
        app = FastAPI()
        install_handlers(app)
        app.include_router(router)
        client = TestClient(app, raise_server_exceptions=False)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()
    monkeypatch.undo()
    _clear_caches()
