"""schemathesis against the app's own OpenAPI schema: no 5xx, every response declared and matching it.

The app runs in-process (ASGI) with the torch backend and the trained minilm serving every task
and language, so `/analyze` and `/ready` really run. Operations with a body also get invalid
bodies, which must be refused with a 4xx. Examples are derandomized: CI sees the same cases
every run (SCHEMA_EXAMPLES raises their number for a longer hunt). Every operation in the schema
is tested, so routes added later are covered without listing them here. (schemathesis' pytest
plugin does not run under pytest 9, so hypothesis drives its strategies directly.)
"""

import gc
import os

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from service.config import LANGS, TASKS, model_env_var
from service.registry import get_registry
from service.runtime import trim_heap
from tests.support import MINILM, configured, needs_minilm

pytestmark = pytest.mark.slow  # real servers, exports or browsers: not the quick tier


CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
EXAMPLES_PER_OPERATION = int(os.environ.get("SCHEMA_EXAMPLES", "25"))
# A case's first request for a (task, lang) loads a torch model (22 pairs, ner/pos also spaCy): on
# two shared cores that passes schemathesis' default 10 s read timeout.
CALL_TIMEOUT_S = 120


def negative_data_refused(ctx, response, case):
    """negative_data_rejection, with 413 a refusal too: a body refused for its size or its number of
    file parts as it arrives is refused before anything validates it (service/forms.py)."""
    if response.status_code == 413:
        return None
    return negative_data_rejection(ctx, response, case)


def _run(operation: schemathesis.APIOperation, mode: GenerationMode) -> None:
    checks = [*CHECKS, negative_data_refused] if mode is GenerationMode.NEGATIVE else CHECKS

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=EXAMPLES_PER_OPERATION,
        deadline=None,
        derandomize=True,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    def run(case: schemathesis.Case) -> None:
        case.call_and_validate(checks=checks, timeout=CALL_TIMEOUT_S)

    run()


def release_models() -> None:
    """Unload the eight models and give their heap back, so later tests in this process do not see
    their RSS fall when a load trims it."""
    registry = get_registry()
    for item in registry.snapshot():
        registry.unload(item["key"])
    gc.collect()
    trim_heap()


@needs_minilm
def test_every_response_is_declared_and_no_5xx(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # never the hub, even by mistake
    # Every task and language is served by minilm: a model only the hub could provide is a 503.
    models = {model_env_var(task, lang): str(MINILM) for task in TASKS for lang in LANGS}
    with configured(**models, BACKEND="torch", MEMORY_BUDGET_MB="8192", MAX_BATCH="8", NUM_THREADS="1"):
        from main import app

        schema = schemathesis.openapi.from_asgi("/openapi.json", app)
        operations = [result.ok() for result in schema.get_all_operations()]
        assert {"POST /analyze", "POST /ocr", "GET /health"} <= {op.label for op in operations}
        failures = {}
        for operation in operations:
            modes = [GenerationMode.POSITIVE] + ([GenerationMode.NEGATIVE] if operation.body else [])
            for mode in modes:
                try:
                    _run(operation, mode)
                except Exception as error:  # collect every operation's failure, then report them all
                    failures[f"{operation.label} ({mode.value})"] = error
        release_models()
        if failures:
            pytest.fail("\n\n".join(f"{label}:\n{error}" for label, error in failures.items()), pytrace=False)
