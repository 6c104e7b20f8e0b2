"""Bulk scoring on Ray Data: files in, one scored row out per input row, on any Ray cluster.

Reading is spread over read tasks (one stream per file, `files.RowsDatasource`), scoring over a
pool of actors that each load the model once, through the service's own registry and under its
own memory budget, and run `/analyze/file`'s chunk analysis on every batch: the same
preprocessing, length-sorted model calls and per-row errors. Writers put Parquet or JSON Lines
files under the output directory. Ray's progress bars show each stage.
"""

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.json as pajson
import ray
from ray.data import DataContext, SaveMode

from service.config import get_settings, model_env_var
from service.hardware import current
from service.registry import get_registry
from service.scale.cluster import connect, worker_options
from service.scale.files import (
    ERROR_TYPE,
    InputFormat,
    JsonLinesDatasink,
    OutputFormat,
    RowReader,
    RowsDatasource,
    expand_inputs,
    output_in_use,
)
from service.sentiment.bulk import BulkOptions, Row, analyze_chunk
from service.sentiment.language import detector_item
from service.sentiment.schemas import AUTO
from service.sentiment.service import check_supported, model_item, onnx_dir_for, task_langs

RESERVED_COLUMNS = ("path", "row", "label", "probas", "error", "text")
AUTO_COLUMNS = ("lang", "lang_confidence")  # added with --lang auto
# Reading and writing hold no CPU of their own: they parse and write in microseconds per row what
# the model takes milliseconds for, and a task waiting for a CPU that the actors hold would never run
# on a cluster they fill (a 1-CPU one deadlocked so).
IO_TASKS = {"num_cpus": 0}
# Enough rows per output file that millions of rows make hundreds of files, not thousands.
MIN_ROWS_PER_FILE = 100_000


@dataclass
class ScoreOptions:
    """What `python -m service.scale score` takes; see its --help for each."""

    inputs: list[str]
    output: str
    text_column: str = "text"
    id_column: str | None = None
    task: str | None = None
    lang: str | None = None
    fallback: bool = False
    input_format: InputFormat | None = None
    output_format: OutputFormat = "parquet"
    model: str | None = None
    actors: tuple[int, int] | None = None
    cpus_per_actor: float = 1.0
    memory_mb: int = 1024
    batch_size: int = 256
    overwrite: bool = False
    filesystem: pafs.FileSystem | None = field(default=None, repr=False)


class Scorer:
    """One Ray Data actor: the model is loaded once, when the actor starts, and kept. With
    `lang="auto"`, every language's model and the detector, and two more columns: `lang`, the
    language each row was read in, and `lang_confidence`."""

    def __init__(self, task: str, lang: str, fallback: bool = False) -> None:
        self.task, self.lang, self.fallback = task, lang, fallback
        self.registry = get_registry()
        langs = task_langs(task) if lang == AUTO else (lang,)
        # A model that cannot load fails the actor now.
        with self.registry.use_all([model_item(task, name) for name in langs]) as analyzers:
            labels = list(dict.fromkeys(label for analyzer in analyzers for label in analyzer.model.labels))
            self.multi_label = any(analyzer.model.multi_label for analyzer in analyzers)
        if lang == AUTO:
            with self.registry.use(detector_item()):
                pass
        self.probas_type = pa.struct([(label, pa.float64()) for label in labels])
        self.label_type = pa.list_(pa.string()) if self.multi_label else pa.string()
        self.max_size = current(get_settings()).batch_max_size

    def __call__(self, batch: pa.Table) -> pa.Table:
        columns = batch.to_pydict()
        rows = [
            Row(number, text=text, error=error)
            for number, text, error in zip(columns["row"], columns["text"], columns["error"], strict=True)
        ]
        analyze_chunk(rows, self.task, self.lang, self.fallback, self.registry, self.max_size)
        scored = batch.drop_columns(["text", "error"])
        predictions = [row.prediction for row in rows]
        scored = scored.append_column(
            "label", pa.array([p.label if p else None for p in predictions], self.label_type)
        )
        scored = scored.append_column(
            "probas", pa.array([p.probas if p else None for p in predictions], self.probas_type)
        )
        if self.lang == AUTO:
            scored = scored.append_column("lang", pa.array([p.lang if p else None for p in predictions]))
            confidence = [p.lang_confidence if p else None for p in predictions]
            scored = scored.append_column("lang_confidence", pa.array(confidence, pa.float64()))
        return scored.append_column("error", pa.array([row.error for row in rows], ERROR_TYPE))


def model_dir(options: ScoreOptions, task: str, lang: str) -> str:
    """The exported model: --model, else where the plain server would find it (MODEL_*, ONNX_DIR)."""
    path = Path(options.model) if options.model else onnx_dir_for(task, lang, get_settings())
    if not (path / "manifest.json").is_file():
        raise FileNotFoundError(
            f"no exported model at {path} (no manifest.json): export one with `python -m service.export "
            f"--task {task} --lang {lang} --out {path}`, or pass --model DIR"
        )
    return str(path)


def model_dirs(options: ScoreOptions, task: str, lang: str) -> dict[str, str]:
    """MODEL_<TASK>_<LANG> -> exported dir, for every model the actors load: one, or with
    `auto` each of the task's languages (--model names one dir, so it is refused with auto)."""
    if lang != AUTO:
        check_supported(task, lang)
        return {model_env_var(task, lang): model_dir(options, task, lang)}
    if options.model:
        raise ValueError(
            "--model names one model; with --lang auto each language's comes from MODEL_* or ONNX_DIR"
        )
    langs = task_langs(task)
    if not langs:
        check_supported(task, AUTO)  # raises, listing what is supported
    return {model_env_var(task, name): model_dir(options, task, name) for name in langs}


def actor_pool(options: ScoreOptions) -> tuple[int, int]:
    """--actors, else from one up to as many as the cluster's CPUs hold."""
    if options.actors is not None:
        return options.actors
    cpus = ray.cluster_resources().get("CPU", 1.0)
    return 1, max(1, int(cpus // options.cpus_per_actor))


def score(options: ScoreOptions, address: str | None = None, num_cpus: int | None = None) -> dict[str, Any]:
    """Score every row of the inputs into `options.output`; returns the summary the CLI prints.

    Inputs, columns and model are checked before Ray is joined (`cluster.connect`: the cluster at
    `address`, else a local one of `num_cpus`, unless this process is connected already)."""
    settings = get_settings()
    task = options.task or settings.default_task
    lang = options.lang or settings.default_lang
    if options.fallback and lang != AUTO:
        raise ValueError("--fallback is only for --lang auto")
    reserved = RESERVED_COLUMNS + (AUTO_COLUMNS if lang == AUTO else ())
    if options.id_column in reserved:
        raise ValueError(f"--id-column {options.id_column!r} clashes with an output column {reserved}")
    models = model_dirs(options, task, lang)
    if not options.overwrite and output_in_use(options.output, options.filesystem):
        raise ValueError(f"--output {options.output} already holds files; pass --overwrite to replace them")
    paths, filesystem, input_format = expand_inputs(options.inputs, options.filesystem, options.input_format)
    bulk = BulkOptions(text_column=options.text_column, id_column=options.id_column)
    reader = RowReader(input_format, bulk, settings.max_text_chars)
    reader.check(filesystem, paths[0])

    connect(address, num_cpus)

    DataContext.get_current().execution_options.preserve_order = True  # output rows in input order
    started = time.perf_counter()
    dataset = ray.data.read_datasource(RowsDatasource(paths, filesystem, reader), **IO_TASKS).map_batches(
        Scorer,
        fn_constructor_kwargs={"task": task, "lang": lang, "fallback": options.fallback},
        batch_size=options.batch_size,
        batch_format="pyarrow",
        zero_copy_batch=True,
        concurrency=actor_pool(options),
        **worker_options(options.cpus_per_actor, options.memory_mb, **models),
    )
    mode = SaveMode.OVERWRITE if options.overwrite else SaveMode.CREATE
    if options.output_format == "parquet":
        dataset.write_parquet(
            options.output,
            filesystem=options.filesystem,
            min_rows_per_file=MIN_ROWS_PER_FILE,
            mode=mode,
            ray_remote_args=IO_TASKS,
        )
    else:
        dataset.write_datasink(
            JsonLinesDatasink(
                options.output, filesystem=options.filesystem, min_rows_per_file=MIN_ROWS_PER_FILE, mode=mode
            ),
            ray_remote_args=IO_TASKS,
        )
    seconds = time.perf_counter() - started
    written = summarize(options.output, options.output_format, options.filesystem)
    return {
        "input_files": len(paths),
        "format": input_format,
        "task": task,
        "lang": lang,
        "model": models[model_env_var(task, lang)] if lang != AUTO else models,
        **written,
        "seconds": round(seconds, 2),
        "rows_per_s": round(written["rows"] / seconds, 1),
        "output": options.output,
    }


def summarize(
    output: str, output_format: OutputFormat, filesystem: pafs.FileSystem | None = None
) -> dict[str, Any]:
    """Rows written and errors by code, read back from the output's `error` column."""
    if output_format == "parquet":
        data = pads.dataset(output, format="parquet", filesystem=filesystem)
    else:
        schema = pa.schema([("error", ERROR_TYPE)])
        parse = pajson.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore")
        file_format = pads.JsonFileFormat(parse_options=parse)
        data = pads.dataset(output, format=file_format, schema=schema, filesystem=filesystem)
    errors: dict[str, int] = {}
    rows = 0
    for batch in data.to_batches(columns=["error"]):
        rows += batch.num_rows
        for error in batch.column("error").to_pylist():
            if error is not None:
                errors[error["code"]] = errors.get(error["code"], 0) + 1
    return {"rows": rows, "errors": sum(errors.values()), "errors_by_code": errors}
