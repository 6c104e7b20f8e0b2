"""Export a model to the self-contained INT8 ONNX dir that the onnx backend serves.

    python -m service.export --task T --lang L [--source DIR_OR_HUB_ID] [--out DIR] [--data DIR]
                             [--no-quantize | --recipe NAME]
    python -m service.export --list-missing     # EXPORT_MODELS targets without an exported dir

--source defaults to MODEL_<TASK>_<LANG>, --out to <ONNX_DIR>/<task>-<lang>. With --data (a folder
with test_text.txt / test_labels.txt) the manifest records accuracy against the fp32 export.
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


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m service.export", description=__doc__.split("\n")[0])
    parser.add_argument("--list-missing", action="store_true", help="print the targets still to export")
    parser.add_argument("--task", choices=TASKS)
    parser.add_argument("--lang", choices=LANGS)
    parser.add_argument("--source", help="a transformers model dir or hub id (default: MODEL_<TASK>_<LANG>)")
    parser.add_argument("--out", type=Path, help="the dir to write (default: <ONNX_DIR>/<task>-<lang>)")
    parser.add_argument("--data", type=Path, help="labelled texts: record accuracy vs fp32 in the manifest")
    parser.add_argument(
        "--min-agreement",
        type=float,
        help="ner/pos with --data: refuse the export when fewer words than this share (default 0.97) "
        "get fp32's label",
    )
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--no-quantize", action="store_true", help="keep the fp32 graph")
    group.add_argument("--recipe", help="an INT8 recipe of service/export/quantize.py (default: its DEFAULT)")
    args = parser.parse_args(argv)
    if args.list_missing:
        print("\n".join(list_missing()))
        return 0
    if not (args.task and args.lang):
        parser.error("--task and --lang are required")
    if not is_supported(args.task, args.lang):
        parser.error(f"pysentimiento has no {args.task} model for {args.lang}")

    from service.export.build import MIN_TOKEN_AGREEMENT, export_model
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
        min_agreement = MIN_TOKEN_AGREEMENT if args.min_agreement is None else args.min_agreement
        manifest = export_model(args.task, args.lang, source, out, args.data, recipe, min_agreement)
    except ExportError as error:
        print(f"export: error: {error}", file=sys.stderr)
        return 2
    size = model_bytes(manifest)
    print(
        f"exported {source} to {out}: model {size / 2**20:.1f} MiB "
        f"({100 * size / manifest['fp32_onnx_bytes']:.0f} % of fp32), recipe {recipe or 'none (fp32)'}"
    )
    if "accuracy" in manifest:
        print(f"accuracy: {manifest['accuracy']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
