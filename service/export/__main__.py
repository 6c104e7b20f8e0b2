"""Export a model to the self-contained INT8 ONNX dir that the onnx backend serves.

    python -m service.export --task T --lang L [--source DIR_OR_HUB_ID] [--out DIR] [--data DIR]
                             [--no-quantize | --recipe NAME] [--calibration FILE]
    python -m service.export --list-missing     # EXPORT_MODELS targets without an exported dir
    python -m service.export --gate-lines       # each exported EXPORT_MODELS target's gate line

--source defaults to MODEL_<TASK>_<LANG>, --out to <ONNX_DIR>/<task>-<lang>. Every quantized export
passes its kind's accuracy gate against its own fp32 export or falls back to the next recipe, fp32
last (service/export/gate.py); it prints the gate's line. With --data (a folder with test_text.txt /
test_labels.txt; text tasks) the manifest also records accuracy against gold and the fp32 export.
--calibration: texts (one a line, up to 600 used) for a recipe that calibrates (the default's
SmoothQuant); by default the shipped gate texts of --lang (service/export/calibrate.py).
The export stack (requirements-export.txt) is imported only when exporting: --list-missing runs
with the runtime's packages alone, before start.sh installs it.
"""

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from service.config import LANGS, TASKS, get_settings, is_supported
from service.sentiment.service import onnx_dir_for


def list_missing() -> list[str]:
    settings = get_settings()
    return [
        f"{task}:{lang}"
        for task, lang in settings.export_targets()
        if not (onnx_dir_for(task, lang, settings) / "manifest.json").is_file()
    ]


def gate_lines() -> list[str]:
    from service.export.gate import gate_line
    from service.sentiment.backends.onnx_backend import read_manifest

    settings = get_settings()
    lines = []
    for task, lang in settings.export_targets():
        model_dir = onnx_dir_for(task, lang, settings)
        if (model_dir / "manifest.json").is_file():
            lines.append(gate_line(f"{task}:{lang}", read_manifest(model_dir)))
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m service.export", description=__doc__.split("\n")[0])
    parser.add_argument("--list-missing", action="store_true", help="print the targets still to export")
    parser.add_argument("--gate-lines", action="store_true", help="print each exported target's gate line")
    parser.add_argument("--task", choices=TASKS)
    parser.add_argument("--lang", choices=LANGS)
    parser.add_argument("--source", help="a transformers model dir or hub id (default: MODEL_<TASK>_<LANG>)")
    parser.add_argument("--out", type=Path, help="the dir to write (default: <ONNX_DIR>/<task>-<lang>)")
    parser.add_argument("--data", type=Path, help="labelled texts: record accuracy vs fp32 in the manifest")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--no-quantize", action="store_true", help="keep the fp32 graph")
    group.add_argument(
        "--recipe",
        help="the INT8 recipe tried first (default: quantize.py's DEFAULT_RECIPE); the gate may fall back",
    )
    parser.add_argument("--calibration", type=Path, help="texts, one a line, for a recipe that calibrates")
    args = parser.parse_args(argv)
    if args.list_missing:
        print("\n".join(list_missing()))
        return 0
    if args.gate_lines:
        print("\n".join(gate_lines()))
        return 0
    if not (args.task and args.lang):
        parser.error("--task and --lang are required")
    if not is_supported(args.task, args.lang):
        parser.error(f"pysentimiento has no {args.task} model for {args.lang}")

    from service.export.build import export_model
    from service.export.gate import gate_line
    from service.export.manifest import model_bytes
    from service.export.onnx_export import ExportError
    from service.export.quantize import DEFAULT_RECIPE, RECIPES

    settings = get_settings()
    source = args.source or settings.model_source(args.task, args.lang)
    out = args.out or settings.onnx_dir / f"{args.task}-{args.lang}"
    recipe = None if args.no_quantize else args.recipe or DEFAULT_RECIPE
    if recipe is not None and recipe not in RECIPES:
        parser.error(f"--recipe {recipe}: not one of {', '.join(RECIPES)}")
    if (Path(source) / "manifest.json").is_file():
        parser.error(
            f"--source {source} is already an exported dir; pass the transformers model it came from"
        )
    try:
        manifest = export_model(
            args.task, args.lang, source, out, args.data, recipe, calibration=args.calibration
        )
    except ExportError as error:
        print(f"export: error: {error}", file=sys.stderr)
        return 2
    size = model_bytes(manifest)
    print(
        f"exported {source} to {out}: model {size / 2**20:.1f} MiB "
        f"({100 * size / manifest['fp32_onnx_bytes']:.0f} % of fp32)"
    )
    print(gate_line(f"{args.task}:{args.lang}", manifest))
    if "accuracy" in manifest:
        print(f"accuracy: {manifest['accuracy']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
