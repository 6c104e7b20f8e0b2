"""Measure every INT8 recipe of quantize.py against the fp32 export; print a markdown table.

    python -m bench.recipes [--source DIR] [--data DIR ...] [--recipes a,b] [--scale-model DIR]

Each recipe is exported by `export_model`, exactly as `python -m service.export` ships it, and run
through the service's analyzer. Gate: agreement with fp32 labels >= 97 % and macro-F1 within one
point of fp32 on every set, model <= 30 % of the fp32 ONNX file. --scale-model adds the latency of
the same recipes on another model (RoBERTuito's shape with random weights: see bench.serving).
"""

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.serving import SHORT, build_random_model
from service.evaluate import guess_lang, load_analyzer, predict, read_labelled, score
from service.export.build import export_model
from service.export.manifest import model_bytes
from service.export.quantize import RECIPES

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
MIN_AGREEMENT, MAX_F1_DROP, MAX_SIZE = 0.97, 0.01, 0.30
ROUNDS = 40  # x len(SHORT) single-text calls per latency figure


def latency_ms(model_dir: Path) -> float:
    """Median CPU ms of one short text through the analyzer (preprocessing + tokenizer + session).

    CPU time of this one-threaded process, not wall time: the cores are shared, and wall time
    then measures the neighbours more than the recipe.
    """
    analyzer = load_analyzer(model_dir, "sentiment", "es")
    for text in SHORT:
        analyzer.predict([text])
    timings = []
    for _ in range(ROUNDS):
        for text in SHORT:
            start = time.process_time()
            analyzer.predict([text])
            timings.append(time.process_time() - start)
    return 1000 * statistics.median(timings)


def measure(source: str, data: list[Path], names: list[str], work: Path) -> list[dict[str, Any]]:
    fp32_dir = work / "fp32"
    fp32 = export_model("sentiment", "es", source, fp32_dir, recipe=None)
    fp32_bytes = model_bytes(fp32)
    sets = {guess_lang(folder): read_labelled(folder) for folder in data}
    references = {
        lang: predict(load_analyzer(fp32_dir, "sentiment", lang), s.texts) for lang, s in sets.items()
    }
    rows = [{"recipe": "fp32 (no quantization)", "bytes": fp32_bytes, "ms": latency_ms(fp32_dir)}]
    for name in names:
        out = work / name
        manifest = export_model("sentiment", "es", source, out, recipe=name, gate=False)
        row: dict[str, Any] = {
            "recipe": name,
            "bytes": model_bytes(manifest),
            "ms": latency_ms(out),
        }
        for lang, labelled in sets.items():
            analyzer = load_analyzer(out, "sentiment", lang)
            report = score(
                labelled.labels, analyzer.model.labels, predict(analyzer, labelled.texts), references[lang]
            )
            row[f"{lang} agreement"] = report["agreement"]
            row[f"{lang} dF1"] = report["macro_f1"] - report["reference_macro_f1"]
        row["passes"] = row["bytes"] <= MAX_SIZE * fp32_bytes and all(
            row[f"{lang} agreement"] >= MIN_AGREEMENT and abs(row[f"{lang} dF1"]) <= MAX_F1_DROP
            for lang in sets
        )
        rows.append(row)
        print(f"measured {name}", flush=True)
    for row in rows:
        row["size %"] = 100 * row["bytes"] / fp32_bytes
    return rows


def scale_latency(shape: Path, names: list[str], work: Path) -> dict[str, float]:
    source = str(build_random_model(shape, work / "random-model"))
    result = {}
    for name in [None, *names]:
        out = work / f"scale-{name}"
        export_model("sentiment", "es", source, out, recipe=name, gate=False)
        result[name or "fp32 (no quantization)"] = latency_ms(out)
        print(f"measured {name} at scale", flush=True)
    return result


def table(rows: list[dict[str, Any]], langs: list[str], scale: dict[str, float]) -> str:
    head = ["recipe", "MB", "% of fp32"]
    head += [f"{lang} agreement" for lang in langs] + [f"{lang} ΔF1 (points)" for lang in langs]
    head += ["CPU ms / short text"] + (["CPU ms at scale"] if scale else []) + ["passes"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [f"`{row['recipe']}`", f"{row['bytes'] / 1e6:.1f}", f"{row['size %']:.1f}"]
        cells += [f"{100 * row[f'{lang} agreement']:.1f} %" if "passes" in row else "—" for lang in langs]
        cells += [f"{100 * row[f'{lang} dF1']:+.2f}" if "passes" in row else "—" for lang in langs]
        cells.append(f"{row['ms']:.2f}")
        if scale:
            cells.append(f"{scale[row['recipe']]:.1f}")
        cells.append({True: "yes", False: "no"}.get(row.get("passes"), "—"))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.recipes", description=__doc__.split("\n")[0])
    parser.add_argument("--source", default=str(SHARED / "models" / "tweet-sentiment-minilm"))
    parser.add_argument(
        "--data",
        type=Path,
        action="append",
        help="labelled set(s) (default: ../shared/data/sentiment/xlmt_spanish and xlmt_english)",
    )
    parser.add_argument("--recipes", default=",".join(RECIPES), help="comma-separated recipe names")
    parser.add_argument("--scale-model", type=Path, help="a shape dir (config + tokenizer) for 'ms at scale'")
    args = parser.parse_args()
    data = args.data or [SHARED / "data" / "sentiment" / name for name in ("xlmt_spanish", "xlmt_english")]
    names = args.recipes.split(",")
    with tempfile.TemporaryDirectory(prefix="recipes-") as tmp:
        rows = measure(args.source, data, names, Path(tmp))
        scale = scale_latency(args.scale_model, names, Path(tmp)) if args.scale_model else {}
    print(table(rows, [guess_lang(folder) for folder in data], scale))
    passing = sorted((row for row in rows if row.get("passes")), key=lambda row: (row["ms"], row["bytes"]))
    print(f"\nfastest passing (then smallest): {passing[0]['recipe'] if passing else 'none'}")


if __name__ == "__main__":
    main()
