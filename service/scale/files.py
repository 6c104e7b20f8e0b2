"""Bulk scoring's files: inputs found by path, directory or glob on any pyarrow filesystem (local,
S3, GCS, HDFS...), read row by row with the readers of `POST /analyze/file`, and JSON Lines out.

Every input row becomes one output row: a row that cannot be analyzed (empty, too long, no text,
invalid CSV or JSON) carries an `error` instead of being dropped, exactly as the upload route
reports it. Rows are numbered per file from 1 (`row`) and keep their file (`path`) and id.
"""

import io
import itertools
import json
import re
from collections.abc import Iterable, Iterator
from pathlib import PurePosixPath
from typing import Any, Literal

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from ray.data.block import BlockAccessor
from ray.data.datasource import FileBasedDatasource
from ray.data.datasource.file_datasink import BlockBasedFileDatasink

from service import jsontext
from service.exceptions import BadInput
from service.sentiment.bulk import BulkOptions, Row, check_row, csv_rows, jsonl_rows

InputFormat = Literal["csv", "jsonl", "parquet"]
OutputFormat = Literal["parquet", "jsonl"]
_FORMATS: dict[str, InputFormat] = {
    ".csv": "csv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
}
# Compression that pyarrow undoes while reading a CSV or JSONL stream, told by the suffix.
_COMPRESSED = (".gz", ".bz2", ".zst", ".lz4")
_GLOB_CHARS = re.compile(r"[*?\[]")
ERROR_TYPE = pa.struct([("code", pa.string()), ("message", pa.string())])
ROWS_PER_BLOCK = 1024


def format_of(path: str) -> InputFormat | None:
    """The format a file name says, looking past a compression suffix (`tweets.csv.gz` is CSV)."""
    name = PurePosixPath(path).name.lower()
    for suffix in _COMPRESSED:
        name = name.removesuffix(suffix)
    return _FORMATS.get(PurePosixPath(name).suffix)


def glob_regex(pattern: str) -> re.Pattern[str]:
    """A path glob as a regex: `*` and `?` stay within one directory, `**/` spans any number."""
    parts, index = [], 0
    while index < len(pattern):
        if pattern.startswith("**/", index):
            parts.append("(?:[^/]*/)*")
            index += 3
        elif pattern.startswith("**", index):
            parts.append(".*")
            index += 2
        elif pattern[index] == "*":
            parts.append("[^/]*")
            index += 1
        elif pattern[index] == "?":
            parts.append("[^/]")
            index += 1
        elif pattern[index] == "[" and (end := pattern.find("]", index + 2)) != -1:
            body = pattern[index + 1 : end]
            parts.append("[" + ("^" + body[1:] if body.startswith("!") else body).replace("\\", "\\\\") + "]")
            index = end + 1
        else:
            parts.append(re.escape(pattern[index]))
            index += 1
    return re.compile("".join(parts) + r"\Z")


def filesystem_and_path(uri: str, filesystem: pafs.FileSystem | None) -> tuple[pafs.FileSystem, str]:
    if filesystem is not None:
        return filesystem, uri
    if "://" not in uri:  # a local path, relative or not
        return pafs.LocalFileSystem(), str(PurePosixPath(pafs.LocalFileSystem().normalize_path(uri)))
    return pafs.FileSystem.from_uri(uri)


def _listed(filesystem: pafs.FileSystem, base: str) -> list[str]:
    """Files under `base`, skipping hidden and `_`-prefixed names (`_SUCCESS`, `.crc`) as Ray does."""
    selector = pafs.FileSelector(base, recursive=True)
    return sorted(
        info.path
        for info in filesystem.get_file_info(selector)
        if info.type == pafs.FileType.File
        and not any(part.startswith((".", "_")) for part in info.path[len(base) :].split("/"))
    )


def _expand_one(uri: str, filesystem: pafs.FileSystem | None) -> tuple[pafs.FileSystem, list[str]]:
    fs, path = filesystem_and_path(uri, filesystem)
    if _GLOB_CHARS.search(path):
        parts = path.split("/")
        first = next(i for i, part in enumerate(parts) if _GLOB_CHARS.search(part))
        base = "/".join(parts[:first]) or "/"
        pattern = glob_regex(path)
        if fs.get_file_info(base).type != pafs.FileType.Directory:
            return fs, []
        return fs, [found for found in _listed(fs, base) if pattern.match(found)]
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.Directory:
        return fs, [found for found in _listed(fs, path) if format_of(found)]
    if info.type == pafs.FileType.File:
        return fs, [path]
    raise BadInput(f"--input {uri}: no such file or directory")


def output_in_use(uri: str, filesystem: pafs.FileSystem | None = None) -> bool:
    """Whether the output directory already holds files (a run would mix its rows with them)."""
    fs, path = filesystem_and_path(uri, filesystem)
    if fs.get_file_info(path).type != pafs.FileType.Directory:
        return False
    return bool(fs.get_file_info(pafs.FileSelector(path, recursive=False)))


def expand_inputs(
    uris: Iterable[str], filesystem: pafs.FileSystem | None = None, file_format: InputFormat | None = None
) -> tuple[list[str], pafs.FileSystem, InputFormat]:
    """The files that paths, directories (their CSV, JSONL and Parquet files) and globs name, on one
    filesystem and in one format, which `file_format` sets and file names tell otherwise."""
    paths: list[str] = []
    filesystems: set[str] = set()
    resolved: pafs.FileSystem | None = None
    for uri in uris:
        resolved, found = _expand_one(uri, filesystem)
        if not found:
            raise BadInput(f"--input {uri}: matches no file")
        filesystems.add(resolved.type_name)
        paths += [path for path in found if path not in paths]
    if resolved is None:
        raise BadInput("--input: give at least one path, directory or glob")
    if len(filesystems) > 1:
        raise BadInput(f"--input: all inputs must be on one filesystem, not {sorted(filesystems)}")
    formats = {format_of(path) for path in paths}
    if file_format is None:
        if len(formats) != 1 or None in formats:
            raise BadInput(
                f"--input: cannot tell one format from the file names ({sorted(map(str, formats))}); "
                "pass --format csv, jsonl or parquet"
            )
        file_format = formats.pop()
    return paths, resolved, file_format


def _json_id(value: Any) -> str | None:
    """A JSONL row's id as text: strings as they are, numbers and others as their JSON, and so is a
    string holding a lone surrogate (Arrow's strings are UTF-8, which cannot hold one; its JSON
    escapes it, as /analyze/file echoes it)."""
    if value is None or (isinstance(value, str) and jsontext.encodable(value)):
        return value
    return jsontext.dumps(value)


def parquet_rows(
    table_file: pa.NativeFile, options: BulkOptions, max_chars: int, rows_per_batch: int
) -> Iterator[tuple[list[Row], pa.Array | None]]:
    """Batches of a Parquet file's rows, each with its id column as stored (types kept)."""
    parquet = pq.ParquetFile(table_file)
    schema = parquet.schema_arrow
    columns = [options.text_column] + ([options.id_column] if options.id_column else [])
    for field, name in zip(("text_column", "id_column"), columns, strict=False):
        if name not in schema.names:
            raise BadInput(f"{field}: the file has no column {name!r}; its columns: {schema.names}")
    text_type = schema.field(options.text_column).type
    if not (pa.types.is_string(text_type) or pa.types.is_large_string(text_type)):
        raise BadInput(f"text_column: {options.text_column!r} holds {text_type}, not text")
    number = 0
    for batch in parquet.iter_batches(batch_size=rows_per_batch, columns=columns):
        rows = []
        for text in batch.column(options.text_column).to_pylist():
            number += 1
            if text is None:
                rows.append(Row(number, error={"code": "invalid_input", "message": "the text is missing"}))
            else:
                rows.append(check_row(Row(number, text=text), max_chars))
        yield rows, batch.column(options.id_column) if options.id_column else None


class RowReader:
    """A file as a stream of blocks of `path, row, [id], text, error`, never read whole."""

    def __init__(
        self,
        file_format: InputFormat,
        options: BulkOptions,
        max_chars: int,
        rows_per_block: int = ROWS_PER_BLOCK,
    ) -> None:
        self.file_format = file_format
        self.options = options
        self.max_chars = max_chars
        self.rows_per_block = rows_per_block

    def open(self, filesystem: pafs.FileSystem, path: str, **open_args: Any) -> pa.NativeFile:
        if self.file_format == "parquet":  # its footer is at the end: random access, not a stream
            return filesystem.open_input_file(path)
        return filesystem.open_input_stream(path, **open_args)

    def blocks(self, file: pa.NativeFile, path: str) -> Iterator[pa.Table]:
        if self.file_format == "parquet":
            for rows, ids in parquet_rows(file, self.options, self.max_chars, self.rows_per_block):
                yield self._table(path, rows, ids)
            return
        text = io.TextIOWrapper(file, encoding="utf-8-sig", errors="replace", newline="")
        read = csv_rows if self.file_format == "csv" else jsonl_rows
        rows = read(text, self.options, self.max_chars)
        while chunk := list(itertools.islice(rows, self.rows_per_block)):
            ids = None
            if self.options.id_column:
                values = [_json_id(row.id) if self.file_format == "jsonl" else row.id for row in chunk]
                ids = pa.array(values, pa.string())
            yield self._table(path, chunk, ids)

    def _table(self, path: str, rows: list[Row], ids: pa.Array | None) -> pa.Table:
        columns: dict[str, pa.Array] = {
            "path": pa.array([path] * len(rows), pa.string()),
            "row": pa.array([row.number for row in rows], pa.int64()),
        }
        if ids is not None and self.options.id_column:
            columns[self.options.id_column] = ids
        columns["text"] = pa.array([row.text if row.error is None else None for row in rows], pa.string())
        columns["error"] = pa.array([row.error for row in rows], ERROR_TYPE)
        return pa.table(columns)

    def check(self, filesystem: pafs.FileSystem, path: str) -> None:
        """Read a file's header or first row now: a missing column is one clear error before any
        worker starts, as `/analyze/file` answers 422 before streaming."""
        with self.open(filesystem, path) as file:  # pyarrow detects compression from the name
            next(self.blocks(file, path), None)


class RowsDatasource(FileBasedDatasource):
    """Ray Data's read side: one read task streams each file through a `RowReader`."""

    def __init__(self, paths: list[str], filesystem: pafs.FileSystem, reader: RowReader) -> None:
        super().__init__(paths, filesystem=filesystem)
        self.reader = reader

    def _open_input_source(self, filesystem: pafs.FileSystem, path: str, **open_args: Any) -> pa.NativeFile:
        if self.reader.file_format == "parquet":
            return self.reader.open(filesystem, path)
        return super()._open_input_source(filesystem, path, **open_args)

    def _read_stream(self, f: pa.NativeFile, path: str) -> Iterator[pa.Table]:
        yield from self.reader.blocks(f, path)


class JsonLinesDatasink(BlockBasedFileDatasink):
    """One JSON object per output row, written like `/analyze/file`'s lines (no pandas: its JSON
    writer rounds floats to 10 digits and turns integer ids with gaps into floats)."""

    def __init__(self, path: str, **kwargs: Any) -> None:
        super().__init__(path, file_format="jsonl", **kwargs)

    def write_block_to_file(self, block: BlockAccessor, file: pa.NativeFile) -> None:
        for row in block.to_arrow().to_pylist():
            file.write((json.dumps(row, ensure_ascii=False, default=str) + "\n").encode())
