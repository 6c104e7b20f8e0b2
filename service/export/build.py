"""One export: source -> fp32 ONNX -> INT8 recipe -> a self-contained dir the onnx backend serves.

Everything is built in a temp dir and moved into `out` only when complete, manifest last: the
service treats a dir with a manifest as ready, and optimum's intermediate files (and the fp32
graph, when quantizing) never reach `out`.
"""

import functools
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import onnx

from service.config import TOKEN_TASKS
from service.evaluate import EvaluationError, evaluate
from service.export import calibrate
from service.export.calibrate import Feed
from service.export.gate import Gate
from service.export.manifest import MAX_LENGTH, MODEL_FILE, build_manifest, write_manifest
from service.export.onnx_export import ExportError, export_fp32, load_source
from service.export.quantize import DEFAULT_RECIPE, RECIPES, describe, fallback_chain, quantize, save
from service.export.tokenizer import save_tokenizer_json
from service.sentiment.backends.onnx_backend import MANIFEST


def export_model(
    task: str,
    lang: str,
    source: str,
    out: Path,
    data: Path | None = None,
    recipe: str | None = DEFAULT_RECIPE,
    gate: bool = True,
    calibration: Path | None = None,
) -> dict[str, Any]:
    """Export `source` to `out` with `recipe` (None: fp32); with `data`, record accuracy vs fp32.

    With `gate` (what the CLI and start.sh always do), a quantized candidate is served only if it
    keeps its kind's thresholds against the fp32 export on the gate texts (service/export/gate.py);
    else the next recipe of the fallback chain is tried, fp32 last. `gate=False` keeps `recipe`
    unchecked: for benchmarks of one recipe. `calibration`: a file of texts (one a line) for a recipe
    that calibrates (service/export/calibrate.py); by default the gate texts of its language."""
    config, tokenizer = load_source(source)
    if data is not None and task in TOKEN_TASKS:
        raise ExportError("--data holds gold labels per text: ner/pos are checked against fp32 by the gate")
    with tempfile.TemporaryDirectory(prefix="export-") as tmp:
        head = "token-classification" if task in TOKEN_TASKS else "text-classification"
        fp32 = _export_fp32(source, Path(tmp) / "fp32", head)
        finish = functools.partial(
            _finish,
            task=task,
            lang=lang,
            source=source,
            config=config,
            tokenizer=tokenizer,
            fp32_onnx_bytes=fp32.stat().st_size,
        )
        reference = fp32.parent
        manifest = finish(reference, quantization=None)  # optimum's dir made servable: the fp32 reference
        checker = _gate(task, lang, manifest["problem_type"], reference) if gate and recipe else None
        attempts: list[dict[str, Any]] = []
        inputs: list[Feed] = []  # calibration inputs, computed once if a candidate needs them
        for candidate in fallback_chain(recipe) if checker else [recipe]:
            staged = Path(tmp) / f"out-{candidate or 'fp32'}"
            staged.mkdir()
            if candidate and RECIPES[candidate].calibrated and not inputs:
                inputs = _calibration(reference, task, lang, calibration)
            quantization = _stage(fp32, staged / MODEL_FILE, candidate, inputs)
            manifest = finish(staged, quantization=quantization)
            if checker is None or candidate is None:
                break
            attempts.append(_check(checker, staged, candidate))
            if attempts[-1]["passed"]:
                break
            shutil.rmtree(staged)
        extra: dict[str, Any] = {}
        if checker is not None:
            extra["gate"] = checker.record(attempts, candidate)
        if data is not None:
            extra["accuracy"] = _accuracy(staged, data, reference if candidate else None)
        if extra:
            manifest = finish(staged, quantization=quantization, **extra)
        _publish(staged, out)
    return manifest


def _stage(fp32: Path, out: Path, recipe: str | None, inputs: list[Feed]) -> dict[str, Any] | None:
    """Write `recipe`'s graph of `fp32` to `out` (None: fp32 itself); the manifest's quantization."""
    if recipe is None:
        save(onnx.load(fp32), out)
        return None
    kept = quantize(fp32, out, RECIPES[recipe], inputs if RECIPES[recipe].calibrated else ())
    extra = {"calibration_inputs": len(inputs)} if RECIPES[recipe].calibrated else {}
    return describe(recipe) | ({"fp32_matmuls": kept} if kept else {}) | extra


def _calibration(reference: Path, task: str, lang: str, texts: Path | None) -> list[Feed]:
    try:
        lines = calibrate.read_file(texts) if texts else calibrate.default_texts(lang)
        return calibrate.feeds(reference, task, lang, lines)
    except (OSError, ValueError, EvaluationError) as error:
        raise ExportError(f"calibration: {error}") from error


def _gate(task: str, lang: str, problem_type: str, reference: Path) -> Gate:
    try:
        return Gate(task, lang, problem_type, reference)
    except EvaluationError as error:
        raise ExportError(f"the accuracy gate could not run the fp32 reference: {error}") from error


def _check(checker: Gate, staged: Path, recipe: str) -> dict[str, Any]:
    try:
        return checker.check(staged, recipe)
    except EvaluationError as error:
        raise ExportError(f"the accuracy gate could not run on {recipe}: {error}") from error


def _export_fp32(source: str, work_dir: Path, head: str) -> Path:
    try:
        return export_fp32(source, work_dir, head)
    except Exception as error:  # an architecture optimum cannot export, a broken checkpoint
        raise ExportError(f"optimum could not export {source}: {type(error).__name__}: {error}") from error


def _finish(out_dir: Path, **fields: Any) -> dict[str, Any]:
    """Write tokenizer.json and manifest.json beside the model file."""
    try:
        save_tokenizer_json(fields["tokenizer"], out_dir, MAX_LENGTH)
    except ValueError as error:
        raise ExportError(str(error)) from error
    manifest = build_manifest(out_dir, **fields)
    write_manifest(out_dir, manifest)
    return manifest


def _accuracy(model_dir: Path, data: Path, reference: Path | None) -> dict[str, Any]:
    try:
        report = evaluate(model_dir, data, reference)
    except EvaluationError as error:
        raise ExportError(f"accuracy report on {data}: {error}") from error
    del report["model"]
    if reference is not None:
        report["reference"] = "the fp32 ONNX export of the same source"
    return report


def file_mode() -> int:
    """What a plain new file gets under this process's umask (0644 under the usual 022)."""
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


def _publish(staged: Path, out: Path) -> None:
    """Move the files into `out`, each readable as the umask allows: onnx writes the weights file
    0600, which a server running as another user (a container's non-root user) cannot read."""
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST).unlink(missing_ok=True)  # the dir is not servable until the new manifest lands
    mode = file_mode()
    for path in sorted(staged.iterdir()):
        path.chmod(mode)
    for path in sorted(staged.iterdir()):  # the model, its weights and the tokenizer; manifest last
        if path.name != MANIFEST:
            shutil.move(path, out / path.name)
    shutil.move(staged / MANIFEST, out / MANIFEST)
