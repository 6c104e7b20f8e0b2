"""Uploaded records, not lines: a CSV record bounded in characters and fields however many lines it
spans, an unclosed quote refused, and every echoed value written as valid UTF-8 JSON, in CSV and
JSONL, on the first row and on later ones (issue 21)."""

import csv
import io
import json
import random
import tracemalloc

import pytest

from bench import records as uploads
from service.exceptions import BadInput
from service.jsontext import dumps
from service.sentiment.bulk import BulkOptions, csv_rows, jsonl_rows
from service.sentiment.records import (
    MAX_FIELDS,
    MAX_NAMES,
    MAX_RECORD_CHARS,
    UNCLOSED_QUOTE,
    csv_records,
    line_records,
)
from tests.sentiment.fakes import FakeModel
from tests.sentiment.test_bulk import strict_json, upload

TOO_MANY_FIELDS = f"has more than {MAX_FIELDS} fields"


def records(text: str, max_chars: int = MAX_RECORD_CHARS, max_fields: int = MAX_FIELDS) -> list:
    """Each record as csv parses its lines, or its problem."""
    stream = io.StringIO(text, newline="")
    return [
        record.problem or next(csv.reader(record.lines))
        for record in csv_records(stream, max_chars, max_fields)
    ]


def rows(text: str | io.StringIO, **options: str) -> list[tuple[int, object, str | None, str | None]]:
    read = csv_rows if options.pop("format", "csv") == "csv" else jsonl_rows
    stream = io.StringIO(text, newline="") if isinstance(text, str) else text
    found = read(stream, BulkOptions(**options), max_chars=2000)
    return [(row.number, row.id, row.text, row.error and row.error["message"]) for row in found]


def csv_boundaries(text: str, max_chars: int, max_fields: int) -> list:
    """What csv.reader itself makes of `text`, with the bounds applied afterwards: each record's
    fields, or the set of bounds it passes. The reference `csv_records` must agree with."""
    lines = io.StringIO(text, newline="").readlines()
    consumed = 0

    def feed():
        nonlocal consumed
        for line in lines:
            consumed += len(line)
            yield line

    reader, found = csv.reader(feed()), []
    while True:
        before = consumed
        try:
            fields = next(reader)
        except StopIteration:
            return found
        if fields:
            passed = {"longer"} if consumed - before > max_chars else set()
            passed |= {"fields"} if len(fields) > max_fields else set()
            found.append(passed or fields)


def test_records_end_where_csv_ends_them():
    """csv_records runs csv's state machine only to find where records end; on random text made of
    what matters to it (quotes, doubled quotes, separators, every line end), split into pieces by
    small bounds, it agrees with csv.reader on every record, and refuses exactly those past a bound."""
    rng = random.Random(21)
    alphabet = ["a", "bb", ",", '"', '""', "\n", "\r", "\r\n", " ", ",,"]
    for _ in range(20_000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30)))
        max_chars, max_fields = rng.randint(1, 12), rng.randint(1, 6)
        expected = csv_boundaries(text, max_chars, max_fields)
        got = records(text, max_chars, max_fields)
        if got and got[-1] == UNCLOSED_QUOTE:  # csv makes the rest of the file its last field
            assert isinstance(expected[-1], list)
            got, expected = got[:-1], expected[:-1]
        assert len(got) == len(expected), (text, max_chars, max_fields, expected, got)
        for mine, theirs in zip(got, expected, strict=True):
            if isinstance(theirs, set):  # past a bound: refused by whichever it passed first
                assert any(word in mine for word in theirs), (text, expected, got)
            else:
                assert mine == theirs, (text, expected, got)


def test_a_record_spans_lines_and_blank_lines_are_no_records():
    text = 'id,"the\ntext"\r\n\r\n\n1,"dos\r\nlíneas, y ""comillas"""\n\n2,fin'
    assert records(text) == [["id", "the\ntext"], ["1", 'dos\r\nlíneas, y "comillas"'], ["2", "fin"]]


def test_a_header_spanning_lines_is_read_as_one_record():
    text = '"the\nid","te""xt"\n1,hola\n'
    assert rows(text, text_column='te"xt', id_column="the\nid") == [(1, "1", "hola", None)]


def test_bounds_count_characters_and_fields_however_many_lines_a_record_spans():
    many_lines = "a," + '"x\n",' * 10 + "b\nok\n"
    assert records(many_lines, max_fields=5) == ["has more than 5 fields", ["ok"]]
    assert records(many_lines, max_chars=30) == [
        "is longer than 30 characters (inside a quoted field: is a quote left open?)",
        ["ok"],
    ]
    assert records("a,b,c\nd\n", max_fields=3) == [["a", "b", "c"], ["d"]]  # at the bound: kept
    assert records("abc\n" + "x" * 50 + "\nd", max_chars=10) == [
        ["abc"],
        "is longer than 10 characters",
        ["d"],
    ]


def test_an_unclosed_quote_is_refused_not_read_to_the_end_as_a_field():
    assert records('a,b\n1,"open\n2,x\n') == [["a", "b"], UNCLOSED_QUOTE]
    assert records('a,b\n1,"closed"""\n') == [["a", "b"], ["1", 'closed"']]
    assert records('a,b\n1,x"y\n') == [["a", "b"], ["1", 'x"y']]  # a quote inside a plain field is text


def test_a_header_past_a_bound_is_refused_at_once_without_reading_the_rest():
    """The 422 comes as soon as the header passes its bound: nothing after it is read."""
    stream = io.StringIO('"columns\n",' * (MAX_FIELDS + 1) + "\n" + "1,hola\n" * 100_000, newline="")
    with pytest.raises(BadInput, match=f"^the CSV header {TOO_MANY_FIELDS}$"):
        next(csv_rows(stream, BulkOptions(), max_chars=2000))
    assert stream.tell() < 12 * (MAX_FIELDS + 2)


@pytest.mark.parametrize(
    ("header", "phrase"),
    [
        ('"columns\n",' * (MAX_FIELDS + 1) + "\n", TOO_MANY_FIELDS),
        (",".join(f"c{i}" for i in range(MAX_FIELDS + 1)) + "\n", TOO_MANY_FIELDS),
        ("x" * (MAX_RECORD_CHARS + 1) + "\n", f"is longer than {MAX_RECORD_CHARS} characters"),
        ('id,"text\n' + "1,hola\n" * 20_000, "inside a quoted field: is a quote left open?"),
        ('id,"text\n1,hola\n', UNCLOSED_QUOTE),
    ],
)
def test_a_header_past_a_bound_or_with_an_unclosed_quote_is_the_uploads_422(fake_app, header, phrase):
    response = upload(fake_app(FakeModel()), header + "1,hola\n")
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_input" and phrase in error["message"]
    assert error["message"].startswith("the CSV header ") and len(response.content) < 500


def test_a_missing_column_names_a_few_columns_and_how_many_it_left_out(fake_app):
    columns = [f"column number {i} " + "x" * 130 for i in range(500)]
    response = upload(fake_app(FakeModel()), ",".join(columns) + "\n1\n")
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert len(error["columns"]) == MAX_NAMES and error["columns_left_out"] == 500 - MAX_NAMES
    assert error["columns"][0] == columns[0][:99] + "…"
    assert f"and {500 - MAX_NAMES} more" in error["message"] and len(response.content) < 4000


def test_a_row_past_a_bound_is_that_rows_error_and_the_rows_after_it_are_read():
    text = (
        "id,text\n1,uno\n"
        + '2,"dos\n",'
        + '"x\n",' * MAX_FIELDS
        + "\n3,tres\n"
        + "4,"
        + "y" * (MAX_RECORD_CHARS + 5)
        + "\n5,cinco\n"
        + '6,"sin cerrar\n7,siete\n'
    )
    assert rows(text, id_column="id") == [
        (1, "1", "uno", None),
        (2, None, None, f"the row {TOO_MANY_FIELDS}"),
        (3, "3", "tres", None),
        (4, None, None, f"the row is longer than {MAX_RECORD_CHARS} characters"),
        (5, "5", "cinco", None),
        (6, None, None, f"the row {UNCLOSED_QUOTE}"),
    ]


def test_the_first_row_past_a_bound_is_its_error_not_the_uploads(fake_app):
    content = "id,text\n" + '1,"x\n",' * (MAX_FIELDS + 1) + "\n2,hola\n"
    lines = [
        strict_json(line) for line in upload(fake_app(FakeModel()), content, id_column="id").text.splitlines()
    ]
    assert lines[0] == {
        "row": 1,
        "id": None,
        "error": {"code": "invalid_input", "message": f"the row {TOO_MANY_FIELDS}"},
    }
    assert lines[1]["id"] == "2" and "probas" in lines[1]


def test_reading_a_huge_record_holds_none_of_it():
    """A quoted record of 100,000 fields over 100,000 lines (700 KB) and a 1 MB line: read past with a
    peak of Python allocations far below their size."""
    text = "id,text\n1,hola\n" + '2,"x\n",' * 100_000 + "\n" + "3," + "y" * 1_000_000 + "\n4,fin\n"
    stream = io.StringIO(text, newline="")
    tracemalloc.start()
    try:
        found = rows(stream, id_column="id")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert [row[0] for row in found] == [1, 2, 3, 4] and found[3][2] == "fin"
    assert peak < 2 * MAX_RECORD_CHARS * 4 + 200_000, peak  # a piece or two of a line, not the record


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        # Blank lines of every ending, anywhere: no rows.
        (
            "\r\n\n\rid,text\r\n\r\n1,hola\r\n\n\n\r2,adiós\r",
            [(1, "1", "hola", None), (2, "2", "adiós", None)],
        ),
        # A BOM past the file's first (utf-8-sig drops that one) is a character of its field.
        ("id,text\n1,\ufeffhola\n", [(1, "1", "\ufeffhola", None)]),
        # NUL bytes are characters of their field; a text of them only is unreadable.
        ("id,text\n1,a\0b\n2,\0\0\n", [(1, "1", "a\0b", None), (2, "2", "\0\0", "the text")]),
    ],
)
def test_blank_lines_boms_and_nul_bytes(content, expected):
    found = [(n, i, t, e and e[:8]) for n, i, t, e in rows(content, id_column="id")]
    assert found == expected


def test_a_utf16_file_is_a_clear_422_with_a_bounded_body(fake_app):
    response = upload(fake_app(FakeModel()), "id,text\n1,hola\n".encode("utf-16"))
    assert response.status_code == 422 and "no column 'text'" in response.json()["error"]["message"]


def test_a_csv_that_is_not_utf8_is_read_with_replacement_characters(fake_app):
    """Undecodable bytes (here a UTF-8-encoded surrogate) become U+FFFD: ids and columns echoed are
    always valid Unicode in a CSV."""
    content = b"id,text\n\xed\xbf\xbf,hola\n"
    (line,) = upload(fake_app(FakeModel()), content, id_column="id").text.splitlines()
    assert json.loads(line)["id"] == "\ufffd" * 3


LONE = "\udfff"


def test_a_lone_surrogate_is_written_escaped_as_valid_utf8_json():
    assert dumps({"id": LONE, "t": "ñ"}) == '{"id": "\\udfff", "t": "\\u00f1"}'
    assert dumps({"id": "ñ"}) == '{"id": "ñ"}'  # as is when it encodes
    assert json.loads(dumps({"id": [LONE, {LONE: 1}]})) == {"id": [LONE, {LONE: 1}]}


@pytest.mark.parametrize("at", [1, 2, 500])
def test_a_lone_surrogate_id_leaves_the_stream_whole(fake_app, at):
    """Issue 21: the stream broke at the row whose id is "\\udfff" (nothing at all on row 2)."""
    ids: list = list(range(1, 1001))
    ids[at - 1] = LONE
    ids[-1] = {"k": [LONE, "ñ"], LONE: LONE}
    content = "\n".join(json.dumps({"text": f"texto {i}", "id": ids[i - 1]}) for i in range(1, 1001))
    response = upload(fake_app(FakeModel(), BATCH_MAX_SIZE="8"), content, "rows.jsonl", id_column="id")
    assert response.status_code == 200
    lines = response.content.decode("utf-8").splitlines()  # strict UTF-8: no surrogate written raw
    out = [strict_json(line) for line in lines]
    assert [line["row"] for line in out] == list(range(1, 1001))
    assert [line["id"] for line in out] == ids and all("probas" in line for line in out)


@pytest.mark.parametrize(
    "content",
    [
        '{"\\udc80": 1}\n{"text": "hola"}\n',  # issue 21: a 500 writing the error
        json.dumps({f"\\udc80 key {i}": i for i in range(5000)}).replace("\\\\", "\\") + "\n",
    ],
)
def test_a_first_jsonl_row_without_the_text_key_is_a_422_whatever_its_keys(fake_app, content):
    response = upload(fake_app(FakeModel()), content, "rows.jsonl")
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/json"
    error = json.loads(response.content.decode("utf-8"))["error"]
    assert error["keys"][0].startswith("\udc80") and len(error["keys"]) <= MAX_NAMES
    assert len(response.content) < 4000 and "no key 'text'" in error["message"]


def test_later_jsonl_rows_with_lone_surrogates_are_their_errors_or_escaped(fake_app):
    content = '{"text": "uno"}\n{"text": "\\ud800"}\n{"\\udc80": 1}\n{"text": "fin", "\\udc80": 2}\n'
    response = upload(fake_app(FakeModel()), content, "rows.jsonl")
    out = [strict_json(line) for line in response.content.decode("utf-8").splitlines()]
    assert [("probas" in line) for line in out] == [True, False, False, True]
    assert "lone surrogate" in out[1]["error"]["message"] and "missing" in out[2]["error"]["message"]


def test_jsonl_lines_are_bounded_and_blank_ones_skipped():
    stream = io.StringIO('{"a": 1}\n\n\r\n' + "x" * 40 + '\n{"b": 2}', newline="")
    found = [(record.lines, record.problem) for record in line_records(stream, 20)]
    assert found == [(['{"a": 1}\n'], None), ([], "is longer than 20 characters"), (['{"b": 2}'], None)]


def test_deep_nesting_huge_numbers_and_long_lines_are_their_rows_errors():
    data = (
        uploads.deep_json_lines().decode()
        + '\n{"text": "'
        + "a" * (3 * MAX_RECORD_CHARS)
        + '"}\n{"text": "x"}'
    )
    found = rows(data, format="jsonl")
    assert found[0][2] == "me encanta" and found[-1][2:] == ("x", None) and "longer than" in found[-2][3]
    errors = [message for _, _, _, message in found if message]
    assert len(errors) == 401 and all(("not valid JSON" in m) or ("longer than" in m) for m in errors)
