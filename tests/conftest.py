"""Fixtures every test module may use."""

import os
from collections.abc import Callable, Iterator

import pytest
from fastapi.testclient import TestClient

from tests.support import app_client

# The test process's RSS (torch, what earlier tests left) is not the app's: a watchdog measuring
# it would refuse requests at random. tests/ops turns it on where it is tested.
os.environ.setdefault("MEMORY_WATCHDOG", "false")


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
