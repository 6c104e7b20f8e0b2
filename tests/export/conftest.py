"""The stand-in models of tests/sentiment, shared with the export tests."""

from tests.sentiment.conftest import standins  # noqa: F401
