"""Bulk analysis: `POST /analyze/file` streams a CSV or JSONL upload of any size through the model
and streams NDJSON back, one line per input row, at constant memory.

One chunk of rows (BATCH_MAX_SIZE) is in memory at a time: CSV records are read by
`records.csv_records`, which holds none past MAX_RECORD_CHARS or MAX_FIELDS however many lines it
spans, JSON lines are read line by line and one longer than MAX_RECORD_CHARS is read past in pieces
rather than whole, and each chunk's results are sent before the next chunk is read. A bad row
(unparseable, past a bound, empty text, too long, nothing left after preprocessing) gets an error
line and the stream goes on; every line is valid UTF-8 JSON whatever the row echoes
(`service.jsontext`). What is wrong with the whole file (no rows, no such column, a header past a
bound) is a 422 before anything is streamed, whose body names at most a few columns, and a model
that cannot load a 503.
"""

import csv
import io
import itertools
import json
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Literal, TextIO

from pydantic import BaseModel, Field

from service import jsontext
from service.config import TEXT_TASKS, get_settings
from service.exceptions import BadInput, ServiceError
from service.hardware import WORK_MB_FIXED, current
from service.registry import Registry, get_registry
from service.sentiment.analyzer import Analyzer
from service.sentiment.batching import infer
from service.sentiment.language import detector_item
from service.sentiment.records import csv_records, line_records, sample_names
from service.sentiment.schemas import AUTO, AutoPrediction, LangOrAuto, Prediction, TextTask, unreadable
from service.sentiment.service import check_supported, detect, model_item, task_langs

logger = logging.getLogger(__name__)

FileFormat = Literal["csv", "jsonl"]
NDJSON = "application/x-ndjson"
SNIFF_BYTES = 4096


class BulkOptions(BaseModel):
    """The form fields that come with the file."""

    text_column: str = Field(
        default="text", min_length=1, description="The column (CSV) or key (JSONL) to analyze."
    )
    id_column: str | None = Field(
        default=None, description="A column or key copied to each result line as `id`, to match rows."
    )
    task: TextTask | None = Field(default=None, description="Defaults to DEFAULT_TASK.")
    lang: LangOrAuto | None = Field(
        default=None,
        description="Defaults to DEFAULT_LANG. `auto`: each row read by the model of its own language; "
        "each result line then has `lang`, `lang_confidence` and `lang_source`.",
    )
    fallback: bool = Field(
        default=False,
        description="With `lang=auto`: a row whose language cannot be told is read by DEFAULT_LANG's model "
        "instead of getting an error line.",
    )
    format: FileFormat | None = Field(
        default=None, description="`csv` or `jsonl`; by default from the file name, else from the content."
    )


@dataclass
class Row:
    number: int  # 1 for the first data row
    id: Any = None
    text: str | None = None
    error: dict[str, str] | None = None
    prediction: Prediction | None = None
    detection: tuple[str, float, str] | None = None  # lang "auto": (lang used, its confidence, source)


def _error(code: str, message: str) -> dict[str, str]:
    return {"code": code, "message": message}


def detect_format(filename: str | None, head: bytes) -> FileFormat:
    suffix = Path(filename or "").suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        return "jsonl"
    if suffix == ".csv":
        return "csv"
    return "jsonl" if head.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"{") else "csv"


def check_row(row: Row, max_chars: int) -> Row:
    if not row.text or not row.text.strip():
        row.error = _error("invalid_input", "the text is empty or only whitespace")
    elif problem := unreadable(row.text):
        row.error = _error("invalid_input", f"the text {problem}")
    elif len(row.text) > max_chars:
        row.error = _error(
            "invalid_input", f"the text has {len(row.text)} characters; at most MAX_TEXT_CHARS={max_chars}"
        )
    return row


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite(literal: str) -> float:
    value = float(literal)
    if not math.isfinite(value):
        raise ValueError(f"the number {literal[:20]!r} is out of range")
    return value


def parse_line(line: str) -> Any:
    """Strict JSON: NaN, Infinity and numbers that overflow to them are refused, so that what is
    echoed back (an `id`) stays JSON; nesting past Python's recursion limit is a ValueError too."""
    try:
        return json.loads(line, parse_constant=_no_constant, parse_float=_finite)
    except RecursionError:
        raise ValueError("it is nested too deeply") from None


def _refused(number: int, problem: str) -> Row:
    return Row(number, error=_error("invalid_input", f"the row {problem}"))


def _missing(field: str, name: str, where: str, kind: str, names: list[str]) -> BadInput:
    """No such column or key: the error names at most a few of those there are."""
    listed, left_out = sample_names(names)
    more = f" and {left_out} more" if left_out else ""
    return BadInput(
        f"{field}: {where} has no {kind} {name!r}; its {kind}s: {listed}{more}",
        **{f"{kind}s": listed, f"{kind}s_left_out": left_out},
    )


def _column(columns: list[str], name: str, field: str) -> int:
    if name not in columns:
        raise _missing(field, name, "the CSV header", "column", columns)
    return columns.index(name)


def csv_rows(stream: TextIO, options: BulkOptions, max_chars: int) -> Iterator[Row]:
    """Rows of a CSV with a header; the header is checked before the first row is yielded."""
    records = csv_records(stream)
    header = next(records, None)
    if header is None:
        raise BadInput("the file is empty")
    if header.problem is not None:
        raise BadInput(f"the CSV header {header.problem}")
    try:
        columns = [name.strip() for name in next(csv.reader(header.lines))]
    except csv.Error as error:
        raise BadInput(f"the CSV header is not valid CSV: {error}") from None
    text_at = _column(columns, options.text_column, "text_column")
    id_at = _column(columns, options.id_column, "id_column") if options.id_column else None
    for number, record in enumerate(records, 1):
        if record.problem is not None:
            yield _refused(number, record.problem)
            continue
        try:
            fields = next(csv.reader(record.lines))
        except csv.Error as error:
            yield Row(number, error=_error("invalid_input", f"the row is not valid CSV: {error}"))
            continue
        row = Row(number, fields[id_at] if id_at is not None and id_at < len(fields) else None)
        if text_at >= len(fields):
            row.error = _error("invalid_input", f"the row has no {options.text_column!r} field")
            yield row
            continue
        row.text = fields[text_at]
        yield check_row(row, max_chars)


def jsonl_rows(stream: TextIO, options: BulkOptions, max_chars: int) -> Iterator[Row]:
    """Rows of JSON Lines, one object per line; the first must have the text key."""
    number = 0
    for record in line_records(stream):
        if record.problem is None and not record.lines[0].strip():
            continue
        number += 1
        if record.problem is not None:
            yield _refused(number, record.problem)
            continue
        try:
            value = parse_line(record.lines[0])
        except ValueError as error:
            yield Row(number, error=_error("invalid_input", f"the line is not valid JSON: {error}"))
            continue
        if not isinstance(value, dict):
            yield Row(number, error=_error("invalid_input", "the line is not a JSON object"))
            continue
        if number == 1 and options.text_column not in value:
            raise _missing("text_column", options.text_column, "the first row", "key", list(value))
        row = Row(number, value.get(options.id_column) if options.id_column else None)
        text = value.get(options.text_column)
        if not isinstance(text, str):
            row.error = _error("invalid_input", f"{options.text_column!r} is missing or not a string")
            yield row
            continue
        row.text = text
        yield check_row(row, max_chars)


def analyze_chunk(
    chunk: list[Row], task: str, lang: str, fallback: bool, registry: Registry, max_size: int
) -> None:
    """Fill in each row's prediction or error; a failure costs this chunk's rows, never the stream.
    `lang="auto"`: each row to the model of its language, every model the chunk needs held at once."""
    todo = [row for row in chunk if row.error is None]
    if not todo:
        return
    try:
        groups = _by_language(todo, task, fallback) if lang == AUTO else {lang: todo}
        items = [model_item(task, name) for name in groups]
        with registry.use_all(items, WORK_MB_FIXED) as analyzers:
            for (name, rows), analyzer in zip(groups.items(), analyzers, strict=True):
                _predict_rows(rows, analyzer, registry, max_size, name if lang == AUTO else None)
    except ServiceError as error:
        failure = _error(error.code, error.message)
    except Exception:
        logger.exception("bulk analysis failed on rows %d-%d", chunk[0].number, chunk[-1].number)
        failure = _error("internal_error", "the server failed on these rows; it keeps serving")
    else:
        return
    for row in todo:
        if row.prediction is None and row.error is None:
            row.error = failure


def _by_language(rows: list[Row], task: str, fallback: bool) -> dict[str, list[Row]]:
    """Rows grouped by detected language (DEFAULT_LANG for the undetected ones with `fallback`);
    the rest get the detection's error."""
    default = get_settings().default_lang
    groups: dict[str, list[Row]] = {}
    for row, found in zip(rows, detect([row.text for row in rows], task_langs(task)), strict=True):
        lang = found.lang or (default if fallback else None)
        if lang is None:
            row.error = {"code": found.error, "message": found.message()}
            if found.other is not None:
                row.error["detected"] = found.other
            continue
        row.detection = (lang, found.scores.get(lang, 0.0), "detected" if found.lang else "fallback")
        groups.setdefault(lang, []).append(row)
    return groups


def _predict_rows(
    rows: list[Row], analyzer: Analyzer, registry: Registry, max_size: int, lang: str | None
) -> None:
    ready, texts = [], []
    for row in rows:
        try:
            texts.append(analyzer.preprocess([row.text])[0])
            ready.append(row)
        except BadInput:
            row.error = _error(
                "invalid_input",
                "nothing is left of the text after pysentimiento's preprocessing "
                "(it drops characters such as ☹ ~ … ™)",
            )
    if not ready:
        return
    for row, prediction in zip(ready, infer(analyzer, texts, registry, max_size), strict=True):
        if lang is not None and row.detection is not None:
            _, confidence, source = row.detection
            prediction = AutoPrediction(
                **prediction.model_dump(), lang=lang, lang_confidence=confidence, lang_source=source
            )
        row.prediction = prediction


def _line(row: Row, with_id: bool) -> str:
    body: dict[str, Any] = {"row": row.number}
    if with_id:
        body["id"] = row.id
    if row.prediction is not None:
        body.update(row.prediction.model_dump())
    else:
        body["error"] = row.error
    try:
        line = jsontext.dumps(body, allow_nan=False) + "\n"  # valid UTF-8 whatever the id holds
    except RecursionError:  # an id nested just under the parser's limit, deeper than the encoder's
        failure = _error("invalid_input", "the row's id is nested too deeply to echo")
    except ValueError:  # a NaN probability from a broken model: the row's error, never a bare NaN
        failure = _error("internal_error", "the model's result for this row is not a finite number")
    else:
        return line
    return json.dumps({"row": row.number, "error": failure}, ensure_ascii=False) + "\n"


def _results(
    rows: Iterator[Row],
    task: str,
    lang: str,
    fallback: bool,
    registry: Registry,
    max_size: int,
    with_id: bool,
) -> Iterator[bytes]:
    while chunk := list(itertools.islice(rows, max_size)):
        analyze_chunk(chunk, task, lang, fallback, registry, max_size)
        yield "".join(_line(row, with_id) for row in chunk).encode()


def analyze_file(upload: BinaryIO, filename: str | None, options: BulkOptions) -> Iterator[bytes]:
    """Check the file and load the model now (errors are plain 422/503 answers), then return the
    NDJSON stream of results. With `lang=auto` the detector is loaded now and each chunk loads
    the models its rows need."""
    settings = get_settings()
    task = options.task or settings.default_task
    lang = options.lang or settings.default_lang
    if options.fallback and lang != AUTO:
        raise BadInput("fallback: only for lang=auto")
    registry = get_registry()
    if lang == AUTO:
        if options.fallback:
            check_supported(task, settings.default_lang, TEXT_TASKS)
        with registry.use(detector_item()):
            pass
    else:
        check_supported(task, lang, TEXT_TASKS)
        with registry.use(model_item(task, lang)):
            pass
    file_format = options.format or detect_format(filename, upload.read(SNIFF_BYTES))
    upload.seek(0)
    stream = io.TextIOWrapper(upload, encoding="utf-8-sig", errors="replace", newline="")
    read = csv_rows if file_format == "csv" else jsonl_rows
    rows = read(stream, options, settings.max_text_chars)
    first = next(rows, None)  # checks the header or first record before anything is streamed
    if first is None:
        raise BadInput("the file has no rows to analyze")
    rows = itertools.chain([first], rows)
    max_size = current(settings).batch_max_size
    return _results(rows, task, lang, options.fallback, registry, max_size, options.id_column is not None)
