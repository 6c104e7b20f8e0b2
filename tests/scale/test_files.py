"""Finding bulk inputs (paths, directories, globs, compressed files) and reading their rows with
the upload route's readers, without a cluster."""

import gzip
import json

import pytest

pytest.importorskip("ray", reason="the Ray extra is not installed (bash start.sh install ray)")

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from service.exceptions import BadInput
from service.scale.files import RowReader, expand_inputs, format_of, glob_regex
from service.sentiment.bulk import BulkOptions
from service.sentiment.records import MAX_FIELDS, UNCLOSED_QUOTE

pytestmark = pytest.mark.slow  # real servers, exports or browsers: not the quick tier


def test_format_of_looks_past_compression():
    assert format_of("s3://b/tweets.csv") == "csv"
    assert format_of("a/b.JSONL.gz") == "jsonl"
    assert format_of("x.ndjson") == "jsonl"
    assert format_of("part-0.parquet") == "parquet"
    assert format_of("notes.txt") is None


def test_glob_regex():
    assert glob_regex("/d/*.csv").match("/d/a.csv")
    assert not glob_regex("/d/*.csv").match("/d/sub/a.csv")
    assert glob_regex("/d/**/*.csv").match("/d/sub/deeper/a.csv")
    assert glob_regex("/d/**/*.csv").match("/d/a.csv")
    assert glob_regex("/d/part-[0-1]?.csv").match("/d/part-07.csv")
    assert not glob_regex("/d/part-[!0]?.csv").match("/d/part-07.csv")


def test_expand_inputs(tmp_path):
    (tmp_path / "sub").mkdir()
    for name in ("a.csv", "b.csv.gz", "sub/c.csv", "_SUCCESS", ".hidden.csv", "notes.txt"):
        (tmp_path / name).write_bytes(b"text\nhola\n")
    paths, fs, file_format = expand_inputs([str(tmp_path)])
    assert file_format == "csv" and isinstance(fs, pafs.LocalFileSystem)
    assert [p.removeprefix(str(tmp_path)) for p in paths] == ["/a.csv", "/b.csv.gz", "/sub/c.csv"]
    paths, _, _ = expand_inputs([f"{tmp_path}/*.csv", f"{tmp_path}/a.csv"])
    assert [p.removeprefix(str(tmp_path)) for p in paths] == ["/a.csv"]  # each file once
    paths, _, _ = expand_inputs([f"{tmp_path}/**/*.csv"])
    assert [p.removeprefix(str(tmp_path)) for p in paths] == ["/a.csv", "/sub/c.csv"]
    with pytest.raises(BadInput, match="matches no file"):
        expand_inputs([f"{tmp_path}/*.parquet"])
    with pytest.raises(BadInput, match="no such file"):
        expand_inputs([f"{tmp_path}/missing.csv"])
    with pytest.raises(BadInput, match="pass --format"):
        expand_inputs([f"{tmp_path}/notes.txt"])
    assert expand_inputs([f"{tmp_path}/notes.txt"], file_format="csv")[2] == "csv"


def rows(reader: RowReader, path) -> list[dict]:
    fs = pafs.LocalFileSystem()
    with reader.open(fs, str(path)) as file:
        return [row for block in reader.blocks(file, str(path)) for row in block.to_pylist()]


def test_rows_keep_every_line_with_its_error(tmp_path):
    path = tmp_path / "t.jsonl.gz"
    lines = ['{"id": 7, "text": "hola"}', "{broken", '{"id": "b", "text": 5}', "", '{"id": [1], "text": " "}']
    path.write_bytes(gzip.compress("\n".join(lines).encode()))
    reader = RowReader("jsonl", BulkOptions(id_column="id"), max_chars=100, rows_per_block=2)
    got = rows(reader, path)
    assert [(r["row"], r["id"], r["text"]) for r in got] == [
        (1, "7", "hola"),
        (2, None, None),
        (3, "b", None),
        (4, "[1]", None),
    ]
    assert got[0]["error"] is None
    assert got[1]["error"]["message"].startswith("the line is not valid JSON")
    assert got[2]["error"]["message"] == "'text' is missing or not a string"
    assert got[3]["error"]["message"] == "the text is empty or only whitespace"


def test_parquet_rows_keep_id_types_and_report_missing_text(tmp_path):
    path = tmp_path / "t.parquet"
    table = pa.table({"id": pa.array([10, 11, 12], pa.int64()), "text": ["hola", None, "x" * 101]})
    pq.write_table(table, path, row_group_size=2)
    got = rows(RowReader("parquet", BulkOptions(id_column="id"), max_chars=100), path)
    assert [(r["row"], r["id"]) for r in got] == [(1, 10), (2, 11), (3, 12)]
    assert [r["error"] and r["error"]["message"] for r in got] == [
        None,
        "the text is missing",
        "the text has 101 characters; at most MAX_TEXT_CHARS=100",
    ]


def test_whole_file_problems_are_raised_before_scoring(tmp_path):
    fs = pafs.LocalFileSystem()
    csv_path = tmp_path / "t.csv"
    csv_path.write_text("id,body\n1,hola\n")
    with pytest.raises(BadInput, match="no column 'text'"):
        RowReader("csv", BulkOptions(), 100).check(fs, str(csv_path))
    parquet_path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"text": [1, 2]}), parquet_path)
    with pytest.raises(BadInput, match="holds int64, not text"):
        RowReader("parquet", BulkOptions(), 100).check(fs, str(parquet_path))
    jsonl_path = tmp_path / "t.jsonl"
    jsonl_path.write_text(json.dumps({"body": "hola"}) + "\n")
    with pytest.raises(BadInput, match="first row has no key 'text'"):
        RowReader("jsonl", BulkOptions(), 100).check(fs, str(jsonl_path))


def test_lone_surrogate_ids_are_kept_escaped_as_arrow_strings(tmp_path):
    """Arrow's strings are UTF-8: a JSONL id holding a lone surrogate (valid JSON) failed the whole
    read task; it is kept as its escaped JSON, as other non-string ids are (issue 21)."""
    path = tmp_path / "t.jsonl"
    lines = [
        '{"id": "\\udfff", "text": "uno"}',
        '{"id": {"\\udc80": "ñ"}, "text": "dos"}',
        '{"id": "ñ", "text": "tres"}',
    ]
    path.write_text("\n".join(lines) + "\n")
    got = rows(RowReader("jsonl", BulkOptions(id_column="id"), 100), path)
    assert [(r["id"], r["text"], r["error"]) for r in got] == [
        ('"\\udfff"', "uno", None),
        ('{"\\udc80": "\\u00f1"}', "dos", None),
        ("ñ", "tres", None),
    ]
    assert json.loads(got[0]["id"]) == "\udfff"


def test_csv_records_are_bounded_as_the_upload_route_bounds_them(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("id,text\n1,uno\n" + '2,"x\n",' * (MAX_FIELDS + 1) + '\n3,tres\n4,"abierta\n5,cinco\n')
    got = rows(RowReader("csv", BulkOptions(id_column="id"), 100), path)
    assert [(r["row"], r["id"], r["text"]) for r in got] == [
        (1, "1", "uno"),
        (2, None, None),
        (3, "3", "tres"),
        (4, None, None),
    ]
    assert got[1]["error"]["message"] == f"the row has more than {MAX_FIELDS} fields"
    assert got[3]["error"]["message"] == f"the row {UNCLOSED_QUOTE}"
    header = tmp_path / "h.csv"
    header.write_text('"columns\n",' * (MAX_FIELDS + 1) + "\n1,hola\n")
    with pytest.raises(BadInput, match=f"the CSV header has more than {MAX_FIELDS} fields"):
        RowReader("csv", BulkOptions(), 100).check(pafs.LocalFileSystem(), str(header))
