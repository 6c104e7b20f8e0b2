"""POST /analyze/file: CSV or JSONL in, NDJSON out, one line per row, bad rows reported in the
stream, whole-file problems answered before it, and memory that does not grow with the file."""

import csv
import io
import json
import math
import tempfile
import tracemalloc

import pytest

from service.exceptions import BadInput
from service.sentiment import service
from service.sentiment.analyzer import Analyzer
from service.sentiment.bulk import (
    BulkOptions,
    analyze_file,
    csv_rows,
    detect_format,
    jsonl_rows,
)
from service.sentiment.records import MAX_RECORD_CHARS, line_records
from tests.sentiment.fakes import LABELS, FakeModel, fake_probas
from tests.sentiment.test_batching import tweets
from tests.support import configured


def expected(text: str) -> dict[str, float]:
    return dict(zip(LABELS, fake_probas(text), strict=True))


def ndjson(response) -> list[dict]:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/x-ndjson")
    return [json.loads(line) for line in response.text.splitlines()]


def upload(client, content: str | bytes, name: str = "rows.csv", **form: str):
    data = content.encode() if isinstance(content, str) else content
    return client.post("/analyze/file", files={"file": (name, data)}, data=form)


def test_detect_format():
    assert detect_format("a.csv", b"{") == "csv"
    assert detect_format("a.JSONL", b"id,text") == "jsonl"
    assert detect_format("a.ndjson", b"") == "jsonl"
    assert detect_format(None, b'\xef\xbb\xbf\n {"text": 1}') == "jsonl"
    assert detect_format("upload", b"id,text\n") == "csv"


def test_line_records_skip_a_long_line_without_holding_it():
    stream = io.StringIO("short\n" + "x" * 25 + "\nok\n\n" + "y" * 30)
    records = [(record.lines, record.problem) for record in line_records(stream, 10)]
    too_long = "is longer than 10 characters"
    assert records == [(["short\n"], None), ([], too_long), (["ok\n"], None), ([], too_long)]


def test_csv_rows():
    content = (
        "id,text,extra\n"
        "1,hola,a\n"
        '2,"dos líneas\ny una coma, aquí",b\n'
        "\n"
        "3,,c\n"
        "4\n"
        f"5,{'x' * 51},d\n"
        f"6,{'y' * (MAX_RECORD_CHARS + 10)},e\n"
        "7,fin,f\n"
    )
    rows = list(csv_rows(io.StringIO(content), BulkOptions(id_column="id"), max_chars=50))
    assert [(r.number, r.id) for r in rows] == [
        (1, "1"),
        (2, "2"),
        (3, "3"),
        (4, "4"),
        (5, "5"),
        (6, None),
        (7, "7"),
    ]
    assert [r.text for r in rows if r.error is None] == ["hola", "dos líneas\ny una coma, aquí", "fin"]
    errors = {r.number: r.error["message"] for r in rows if r.error}
    assert "empty" in errors[3]
    assert "no 'text' field" in errors[4]
    assert "MAX_TEXT_CHARS=50" in errors[5]
    assert f"longer than {MAX_RECORD_CHARS}" in errors[6]


@pytest.mark.parametrize(
    ("options", "phrase"),
    [
        (BulkOptions(text_column="tweet"), "no column 'tweet'"),
        (BulkOptions(id_column="key"), "no column 'key'"),
    ],
)
def test_csv_without_the_named_column_is_refused_before_any_row(options, phrase):
    with pytest.raises(BadInput, match=phrase) as refused:
        next(csv_rows(io.StringIO("id,text\n1,hola\n"), options, max_chars=50))
    assert refused.value.details["columns"] == ["id", "text"]


def test_jsonl_rows():
    content = (
        '{"text": "hola", "id": 7}\n\nnot json\n[1, 2]\n{"id": 9}\n{"text": 3}\n'
        '{"text": "\\ud800 suelto"}\n{"text": "fin", "id": "z"}\n'
    )
    rows = list(jsonl_rows(io.StringIO(content), BulkOptions(id_column="id"), max_chars=50))
    assert [(r.number, r.id, r.text) for r in rows if r.error is None] == [(1, 7, "hola"), (7, "z", "fin")]
    errors = {r.number: r.error["message"] for r in rows if r.error}
    assert set(errors) == {2, 3, 4, 5, 6}
    assert "not valid JSON" in errors[2] and "not a JSON object" in errors[3]
    assert "lone surrogate" in errors[6]
    with pytest.raises(BadInput, match="first row has no key 'text'"):
        next(jsonl_rows(io.StringIO('{"tweet": "hola"}\n'), BulkOptions(), max_chars=50))


HOSTILE_LINES = {
    "nan-id": '{"text": "hola", "id": NaN}',
    "infinity-id": '{"text": "hola", "id": -Infinity}',
    "overflowing-id": '{"text": "hola", "id": 1e999}',
    "huge-int-id": '{"text": "hola", "id": ' + "9" * 100_000 + "}",
    "deep-array": "[" * 60_000 + "]" * 60_000,
    "deep-object": '{"a":' * 20_000 + "1" + "}" * 20_000,
    "deep-id": '{"text": "hola", "id": ' + "[" * 60_000 + "]" * 60_000 + "}",
}
# Parses (just under the recursion limit) but is too deep for the encoder deeper in the stack.
DEEP_ID = '{"text": "hola", "id": ' + "[" * 990 + "]" * 990 + "}"


def strict_json(line: str) -> dict:
    def refuse(name: str) -> None:
        raise ValueError(f"{name} in an NDJSON line")

    return json.loads(line, parse_constant=refuse)


@pytest.mark.parametrize("name", HOSTILE_LINES)
def test_a_hostile_jsonl_line_is_that_rows_error(name):
    content = '{"text": "uno", "id": 1}\n' + HOSTILE_LINES[name] + '\n{"text": "tres", "id": 3}\n'
    rows = list(jsonl_rows(io.StringIO(content), BulkOptions(id_column="id"), max_chars=50))
    assert [(r.number, r.id, r.text) for r in rows if r.error is None] == [(1, 1, "uno"), (3, 3, "tres")]
    assert rows[1].error["code"] == "invalid_input" and "not valid JSON" in rows[1].error["message"]


@pytest.mark.parametrize("name", ["deep-array", "nan-id"])
def test_a_hostile_first_line_is_its_rows_error_too(name):
    content = HOSTILE_LINES[name] + '\n{"text": "dos"}\n'
    rows = list(jsonl_rows(io.StringIO(content), BulkOptions(), max_chars=50))
    assert rows[0].error is not None and rows[1].text == "dos"


def test_hostile_jsonl_lines_leave_the_stream_strict_json_and_whole(fake_app):
    """Every row streams, in order, each line strict JSON (no bare NaN), the bad ones as errors:
    deep nesting used to end the stream (a 500 on the first row, the valid rows before it lost later)."""
    client = fake_app(FakeModel(), BATCH_MAX_SIZE="4")
    lines = ["".join(['{"text": "bien ', str(i), '", "id": ', str(i), "}"]) for i in range(3)]
    lines += [*HOSTILE_LINES.values(), DEEP_ID, '{"text": "fin", "id": [[[[1]]]]}']
    lines.insert(0, HOSTILE_LINES["deep-array"])
    response = upload(client, "\n".join(lines) + "\n", "rows.jsonl", id_column="id")
    assert response.status_code == 200, response.text
    out = [strict_json(line) for line in response.text.splitlines()]
    assert [line["row"] for line in out] == list(range(1, len(lines) + 1))
    assert [("probas" in line) for line in out] == [False, True, True, True] + [False] * 8 + [True]
    assert out[1]["id"] == 0 and out[-1]["id"] == [[[[1]]]]


def test_a_non_finite_result_is_an_error_line_not_a_bare_nan(fake_app):
    class NanModel(FakeModel):
        def predict_probas(self, texts):
            return [[math.nan, 0.5, 0.5] for _ in texts]

    lines = upload(fake_app(NanModel()), "text\nhola\n").text.splitlines()
    assert [strict_json(line)["error"]["code"] for line in lines] == ["internal_error"]


def test_csv_upload_streams_one_line_per_row(fake_app):
    model = FakeModel()
    client = fake_app(model, BATCH_MAX_SIZE="4")
    texts = [f"texto {i}" for i in range(10)]
    content = (
        "\ufeffid,text\n" + "".join(f"r{i},{text}\n" for i, text in enumerate(texts)) + "r10,☹☹☹☹\nr11,  \n"
    )
    lines = ndjson(upload(client, content, id_column="id"))
    assert [line["row"] for line in lines] == list(range(1, 13))
    assert [line["id"] for line in lines] == [f"r{i}" for i in range(12)]
    assert [line["probas"] for line in lines[:10]] == [expected(text) for text in texts]
    assert all(line["label"] in LABELS for line in lines[:10])
    assert "preprocessing" in lines[10]["error"]["message"] and "empty" in lines[11]["error"]["message"]
    assert max(map(len, model.calls)) <= 4


def test_jsonl_upload_detected_from_content_and_format_field(fake_app):
    client = fake_app(FakeModel())
    content = '{"tweet": "hola", "n": 1}\n{"tweet": "adiós", "n": 2}\n'
    for name, form in (("data.txt", {}), ("data.csv", {"format": "jsonl"})):
        lines = ndjson(upload(client, content, name, text_column="tweet", id_column="n", **form))
        assert [(line["row"], line["id"], line["probas"]) for line in lines] == [
            (1, 1, expected("hola")),
            (2, 2, expected("adiós")),
        ]


def test_a_failing_chunk_costs_its_rows_not_the_stream(fake_app):
    client = fake_app(FakeModel(), BATCH_MAX_SIZE="2")
    content = "text\nuno\ndos\nboom\ncuatro\ncinco\n"
    lines = ndjson(upload(client, content))
    assert [("error" in line) for line in lines] == [False, False, True, True, False]
    assert lines[2]["error"]["code"] == "internal_error"
    assert lines[4]["probas"] == expected("cinco")


@pytest.mark.parametrize(
    ("content", "form", "status", "phrase"),
    [
        ("id,tweet\n1,hola\n", {}, 422, "no column 'text'"),
        ("", {}, 422, "empty"),
        ("id,text\n", {}, 422, "no rows"),
        ("\n\n", {"format": "jsonl"}, 422, "no rows"),
        ('{"tweet": "hola"}\n', {"format": "jsonl"}, 422, "no key 'text'"),
        ("text\nhola\n", {"format": "xml"}, 422, "format"),
        ("text\nhola\n", {"lang": "fr"}, 422, "lang"),
    ],
)
def test_whole_file_problems_are_answered_before_streaming(fake_app, content, form, status, phrase):
    response = upload(fake_app(FakeModel()), content, **form)
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert phrase in response.json()["error"]["message"]


def test_a_model_that_cannot_load_is_503_before_streaming(make_client):
    client = make_client(BACKEND="torch", MODEL_SENTIMENT_ES="/nonexistent/model")
    response = upload(client, "text\nhola\n")
    assert response.status_code == 503
    assert response.json()["error"]["env_var"] == "MODEL_SENTIMENT_ES"


class StatelessModel(FakeModel):
    """Keeps no record of its calls, which would grow with the file."""

    def predict_probas(self, texts):
        return [fake_probas(text) for text in texts]


def _peak_bytes(rows: int, monkeypatch, tmp_path) -> int:
    """Python's allocation high-water mark while streaming a `rows`-row CSV through a fake model."""
    model = StatelessModel()
    monkeypatch.setattr(service, "create_analyzer", lambda *_: Analyzer(model, "sentiment", "es", "torch"))
    with tempfile.TemporaryFile() as file:
        file.write(
            b"id,text\n" + b"".join(b"%d,texto numero %d con algo de relleno\n" % (i, i) for i in range(rows))
        )
        file.seek(0)
        with configured(BACKEND="torch", MODEL_SENTIMENT_ES=str(tmp_path), MEMORY_BUDGET_MB="8192"):
            tracemalloc.start()
            try:
                lines = sum(chunk.count(b"\n") for chunk in analyze_file(file, "rows.csv", BulkOptions()))
                return tracemalloc.get_traced_memory()[1]
            finally:
                tracemalloc.stop()
                assert lines == rows


@pytest.mark.slow
def test_memory_does_not_grow_with_the_file(monkeypatch, tmp_path):
    _peak_bytes(300, monkeypatch, tmp_path)  # one-time allocations: imports, compiled patterns
    small = _peak_bytes(300, monkeypatch, tmp_path)
    large = _peak_bytes(6_000, monkeypatch, tmp_path)
    assert large < small * 1.2 + 64 * 1024, (small, large)


@pytest.mark.slow
def test_bulk_through_the_exported_onnx_model_matches_analyze(make_client, onnx_minilm):
    client = make_client(
        BACKEND="onnx", MODEL_SENTIMENT_ES=str(onnx_minilm), MEMORY_BUDGET_MB="4096", BATCH_MAX_SIZE="8"
    )
    texts = tweets(60)
    content = io.StringIO()
    writer = csv.writer(content)
    writer.writerow(["id", "text"])
    writer.writerows((f"t{i}", text) for i, text in enumerate(texts))
    lines = ndjson(upload(client, content.getvalue(), id_column="id"))
    assert [line["id"] for line in lines] == [f"t{i}" for i in range(len(texts))]
    for line, text in zip(lines, texts, strict=True):  # exactly: chunks of 8 vs one text a call
        assert line["probas"] == client.post("/analyze", json={"text": text}).json()["probas"]
