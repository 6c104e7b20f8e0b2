"""Hostile CSV and JSON Lines uploads to /analyze/file against a real server in a real 512 MB memory
cgroup (issue 21, rows 3, 7 and 8 of its table, and more of their kinds): each is answered with a
bounded 422 or a whole NDJSON stream, nothing is OOM-killed, the cgroup's anonymous memory stays
near where it was, the same server process serves on, and an ordinary /analyze is answered at once.

The uploads are bench/records.py's, which measures them before and after (MEMORY.md, issue 21).
Skips where no memory cgroup can be made.
"""

import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from bench.records import UPLOADS, anon_mb, upload
from bench.server import Response, Server
from service.sentiment.records import MAX_FIELDS, MAX_RECORD_CHARS
from tests.ops.test_soak import Cgroup, memory_cgroup
from tests.support import needs_minilm, real_server

pytestmark = [needs_minilm, pytest.mark.slow]

LIMIT_MB = 512
# What an upload may add to the cgroup's anonymous memory: a record's pieces and a chunk of rows,
# the multipart parser's buffers; the attacks took it to the 512 MB limit.
MAX_GROWTH_MB = 60
PROMPT_S = 5.0
TOO_MANY_FIELDS = f"has more than {MAX_FIELDS} fields"


@dataclass
class Served:
    server: Server
    cgroup: Cgroup
    pid: int
    anon_before: float = 0.0

    def send(self, name: str) -> tuple[Response, float]:
        """The upload's answer and the cgroup's peak anonymous memory while it was answered."""
        data = UPLOADS[name][1]()
        self.anon_before = anon_mb(self.cgroup.path)
        answers: list[Response] = []
        sender = threading.Thread(target=lambda: answers.append(upload(self.server, name, data)))
        sender.start()
        peak = self.anon_before
        while sender.is_alive():
            if self.server.process.poll() is None:
                peak = max(peak, anon_mb(self.cgroup.path))
            time.sleep(0.02)
        assert answers, f"no answer to {name}:\n{self.server.log_tail()}"
        return answers[0], peak

    def assert_unharmed(self, peak: float) -> None:
        assert self.server.process.poll() is None and self.server.pid == self.pid, self.server.log_tail()
        assert self.cgroup.oom_kills() == 0
        assert peak - self.anon_before < MAX_GROWTH_MB, (self.anon_before, peak)
        started = time.monotonic()
        response = self.server.request(
            "POST", "/analyze", b'{"text": "me encanta"}', {"Content-Type": "application/json"}
        )
        assert response.status == 200 and response.json()["label"] in {"POS", "NEG", "NEU"}, response.body
        assert time.monotonic() - started < PROMPT_S


@pytest.fixture(scope="module")
def served(tmp_path_factory, onnx_minilm_int8: Path) -> Iterator[Served]:
    workdir = tmp_path_factory.mktemp("records")
    with (
        memory_cgroup(LIMIT_MB) as cgroup,
        real_server(
            workdir,
            cgroup=cgroup.path,
            MEMORY_BUDGET_MB=None,  # from the cgroup
            BACKEND="onnx",
            MODEL_SENTIMENT_ES=str(onnx_minilm_int8),
            MODEL_SENTIMENT_EN=str(onnx_minilm_int8),
        ) as server,
    ):
        warm = upload(server, "warm.csv", b"id,text\n1,hola\n")  # loads the model
        assert warm.status == 200, warm.body
        yield Served(server, cgroup, server.pid)


def refused(phrase: str, **details: object) -> Callable[[Response], None]:
    """A 422 in the error shape, small, whose message holds `phrase`."""

    def check(response: Response) -> None:
        assert response.status == 422, response.body[:300]
        assert response.headers["content-type"] == "application/json" and len(response.body) < 1000
        error = json.loads(response.body.decode("utf-8"))["error"]
        assert error["code"] == "invalid_input" and phrase in error["message"], error
        assert {name: error[name] for name in details} == details

    return check


def streamed(*expected: str | None, rows: int | None = None) -> Callable[[Response], None]:
    """A 200 whose NDJSON (strict UTF-8, one JSON value a line) has one line per row: a result
    where `expected` says None, an error holding the phrase where it says one."""

    def check(response: Response) -> None:
        assert response.status == 200, response.body[:300]
        lines = [json.loads(line) for line in response.body.decode("utf-8").splitlines()]
        assert [line["row"] for line in lines] == list(range(1, (rows or len(expected)) + 1))
        for line, phrase in zip(lines, expected, strict=False):
            if phrase is None:
                assert "probas" in line, line
            else:
                assert phrase in line["error"]["message"], line

    return check


def every_row_answered(response: Response) -> None:
    streamed(rows=1000)(response)
    lines = [json.loads(line) for line in response.body.decode("utf-8").splitlines()]
    assert all("probas" in line for line in lines) and lines[499]["id"] == "\udfff"


def nested_rows_are_errors(response: Response) -> None:
    streamed(None, "not valid JSON", "not valid JSON", rows=601)(response)
    lines = [json.loads(line) for line in response.body.decode("utf-8").splitlines()]
    assert sum("error" in line for line in lines) == 400


CHECKS: dict[str, Callable[[Response], None]] = {
    "quoted_header": refused(f"the CSV header {TOO_MANY_FIELDS}"),
    "wide_header": refused(f"the CSV header {TOO_MANY_FIELDS}"),
    "unclosed_header": refused("the CSV header is longer than"),
    "wide_row": streamed(None, f"the row {TOO_MANY_FIELDS}", None),
    "unclosed_row": streamed(None, f"the row is longer than {MAX_RECORD_CHARS} characters (inside a quoted"),
    "blank_lines": streamed(None),
    "nul_line": streamed(None, f"the row is longer than {MAX_RECORD_CHARS}", None),
    "long_json_line": streamed(None, f"the row is longer than {MAX_RECORD_CHARS}", None),
    "deep_json_lines": nested_rows_are_errors,
    "surrogate_ids": every_row_answered,
    "surrogate_key": refused("no key 'text'", keys=["\udc80"], keys_left_out=0),
}


@pytest.mark.parametrize("name", list(CHECKS))
def test_a_hostile_file_is_answered_within_the_budget(served: Served, name: str) -> None:
    response, peak = served.send(name)
    CHECKS[name](response)
    served.assert_unharmed(peak)
