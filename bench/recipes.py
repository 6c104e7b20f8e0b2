"""INT8 recipes side by side: CPU per text, the accuracy gate, batch invariance, anonymous memory.

    python -m bench.recipes [--recipes weight-only,int8-rows] [--scale-model DIR] [--rounds 4]
                            [--source DIR] [--data DIR ...] [--texts 96] [--calibration FILE]
                            [--profile]

Prints this CPU's kernel-selecting flags, then one row per model: fp32 and each recipe, every one
exported by `export_model` as `python -m service.export` ships it (gate off: each recipe as is).
- Gate (issue 23): on the trained gate model (--source, tweet-sentiment-minilm), label agreement
  with its fp32 export >= 98.5 % and macro-F1 within 0.5 points on every --data set (the shared
  Spanish and English sets; calibrated recipes calibrate on the shipped gate texts, not on these,
  or on --calibration's texts), with the count of texts whose label differs from fp32's.
- At the scale model (--scale-model: RoBERTuito's shape, random seeded weights): CPU ms per text of
  --texts tweets of the Spanish set one per call, and in calls of 16 sorted by length; the models
  take turns every round (alternated order) and the median is shown. CPU time of this one-threaded
  process (`time.process_time`), not wall time: the cores are shared.
- Invariance: the largest probability difference of a text alone vs among 1-7 random mates, over
  the same tweets at scale, and how many differ by more than 1e-6.
- Anonymous memory: RssAnon added by loading the scale model in a fresh process (plain model, no
  prepacked variant) and answering 16 texts, after `malloc_trim`.
- --profile: where each scale model's time goes, onnxruntime's per-node profile summed by operator
  type (ms per text, one per call and in sorted calls of 16): what to cut next.
"""

import argparse
import collections
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("NUM_THREADS", "1")

from bench.invariance import max_batch_difference, preprocessed
from bench.serving import build_random_model
from service.evaluate import guess_lang, load_analyzer, predict, read_labelled, score
from service.export.build import export_model
from service.export.manifest import model_bytes
from service.export.quantize import DEFAULT_RECIPE, RECIPES, VNNI_RECIPE
from service.sentiment.analyzer import Analyzer
from service.sentiment.backends.prepacked import cpu_features

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
MIN_AGREEMENT, MAX_F1_DROP = 0.985, 0.005  # issue 23: no worse than weight-only on the shared sets
FP32 = "fp32"
BATCH = 16


def u8s8_kernel() -> str:
    """Which int8 GEMM onnxruntime dispatched here, by one product that AVX2's VPMADDUBSW saturates
    (255 * 127 * 2 > 32767) and VNNI/AMX do not: the CPU flags above cannot show bench/avx2only.c's
    masking, this can."""
    import numpy as np
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    weights = numpy_helper.from_array(np.full((64, 16), 127, np.int8), "b")
    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["a", "b"], ["y"])],
        "u8s8",
        [helper.make_tensor_value_info("a", TensorProto.UINT8, [None, 64])],
        [helper.make_tensor_value_info("y", TensorProto.INT32, [None, 16])],
        [weights],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]).SerializeToString()
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    got = session.run(None, {"a": np.full((64, 64), 255, np.uint8)})[0][0, 0]
    return "exact (VNNI or AMX)" if got == 255 * 127 * 64 else "saturating (AVX2 VPMADDUBSW)"


def export(source: str, out: Path, recipe: str | None, calibration: Path | None = None) -> Path:
    export_model("sentiment", "es", source, out, recipe=recipe, gate=False, calibration=calibration)
    return out


def gate(
    source: str, data: list[Path], names: list[str | None], work: Path, calibration: Path | None = None
) -> dict[str, dict[str, Any]]:
    """Per recipe: agreement (and the texts that differ) and macro-F1 change against the fp32
    export on each set, and the verdict."""
    sets = {guess_lang(folder): read_labelled(folder) for folder in data}
    fp32 = export(source, work / "gate-fp32", None)
    references = {lang: predict(load_analyzer(fp32, "sentiment", lang), s.texts) for lang, s in sets.items()}
    results: dict[str, dict[str, Any]] = {}
    for name in names:
        if name is None:
            continue
        out = export(source, work / f"gate-{name}", name, calibration)
        row: dict[str, Any] = {"MB": model_bytes(json.loads((out / "manifest.json").read_text())) / 1e6}
        for lang, labelled in sets.items():
            analyzer = load_analyzer(out, "sentiment", lang)
            report = score(
                labelled.labels, analyzer.model.labels, predict(analyzer, labelled.texts), references[lang]
            )
            differing = round((1 - report["agreement"]) * report["n"])
            row[lang] = (report["agreement"], report["macro_f1"] - report["reference_macro_f1"], differing)
        row["passes"] = all(
            a >= MIN_AGREEMENT and abs(d) <= MAX_F1_DROP for a, d, _ in (row[k] for k in sets)
        )
        results[name] = row
        print(f"gate measured: {name}", flush=True)
    return results


def timed(analyzer: Analyzer, texts: list[str]) -> tuple[float, float]:
    """CPU ms per text one per call, then in sorted calls of BATCH."""
    start = time.process_time()
    for text in texts:
        analyzer.model.predict_probas([text])
    single = time.process_time() - start
    ordered = sorted(texts, key=len)
    start = time.process_time()
    for i in range(0, len(ordered), BATCH):
        analyzer.model.predict_probas(ordered[i : i + BATCH])
    return 1000 * single / len(texts), 1000 * (time.process_time() - start) / len(texts)


def at_scale(dirs: dict[str, Path], texts: list[str], rounds: int) -> dict[str, dict[str, Any]]:
    analyzers = {name: load_analyzer(path, "sentiment", "es") for name, path in dirs.items()}
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in dirs}
    for analyzer in analyzers.values():
        timed(analyzer, texts[:8])
    for round_ in range(rounds):
        order = list(analyzers) if round_ % 2 == 0 else list(reversed(analyzers))
        for name in order:
            samples[name].append(timed(analyzers[name], texts))
    results = {}
    for name, analyzer in analyzers.items():
        worst, differing = max_batch_difference(analyzer, texts)
        results[name] = {
            "single": statistics.median(s for s, _ in samples[name]),
            "batched": statistics.median(b for _, b in samples[name]),
            "rounds": samples[name],
            "max_diff": worst,
            "differing": differing,
        }
    return results


def op_profile(model_dir: Path, texts: list[str], top: int = 8) -> dict[str, list[tuple[str, float, float]]]:
    """Kernel ms per text and % by operator type, one per call and batched (the service's session
    options; the first call's allocations included)."""
    import onnxruntime as ort

    from service.sentiment.backends.onnx_backend import session_options

    analyzer = load_analyzer(model_dir, "sentiment", "es")
    result = {}
    for mode in ("single", "batched"):
        options = session_options(1)
        options.enable_profiling = True
        options.profile_file_prefix = str(model_dir / f"profile-{mode}")
        session = ort.InferenceSession(
            str(model_dir / "model.onnx"), options, providers=["CPUExecutionProvider"]
        )
        analyzer.model.session = session
        if mode == "single":
            for text in texts:
                analyzer.model.predict_probas([text])
        else:
            ordered = sorted(texts, key=len)
            for i in range(0, len(ordered), BATCH):
                analyzer.model.predict_probas(ordered[i : i + BATCH])
        profile = Path(session.end_profiling())
        events = json.loads(profile.read_text())
        profile.unlink()
        by_op: collections.Counter[str] = collections.Counter()
        for event in events:
            if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
                by_op[event["args"]["op_name"]] += event["dur"]
        total = sum(by_op.values()) or 1
        result[mode] = [(op, us / 1000 / len(texts), 100 * us / total) for op, us in by_op.most_common(top)]
    return result


_ANON_CHILD = """
import json, sys
from service.budget import process_memory
from service.runtime import trim_heap
before = process_memory().anon_mb
from service.evaluate import load_analyzer
analyzer = load_analyzer(sys.argv[1], "sentiment", "es")
analyzer.model.predict_probas(json.loads(sys.argv[2]))
trim_heap()
print(json.dumps(process_memory().anon_mb - before))
"""


def anon_mb(model_dir: Path, texts: list[str]) -> float:
    """RssAnon a fresh process adds by loading the model (imports first) and answering 16 texts."""
    env = os.environ | {"PREPACKED": "false", "PYTHONPATH": str(ROOT)}
    warm = "import service.evaluate, onnxruntime, tokenizers\n"
    out = subprocess.run(
        [sys.executable, "-c", warm + _ANON_CHILD, str(model_dir), json.dumps(texts[:BATCH])],
        capture_output=True, text=True, env=env, cwd=ROOT, check=True,
    )  # fmt: skip
    return float(out.stdout.strip().splitlines()[-1])


def table(
    names: list[str | None], gates: dict[str, Any], scale: dict[str, Any], anon: dict[str, float]
) -> str:
    langs = sorted({k for row in gates.values() for k in row if k not in ("MB", "passes")})
    head = ["recipe", "ms/text single", "ms/text batched 16", "max diff alone vs mates (texts > 1e-6)"]
    head += ["anon MB"] + [f"{lang} agreement (texts differing) / ΔF1" for lang in langs]
    head += ["gate MB", "gate"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name in names:
        key = name or FP32
        cells = [f"`{key}`" + (" (default)" if name == DEFAULT_RECIPE else "")]
        if key in scale:
            s = scale[key]
            cells += [f"{s['single']:.1f}", f"{s['batched']:.1f}", f"{s['max_diff']:.2g} ({s['differing']})"]
            cells.append(f"{anon.get(key, float('nan')):.0f}")
        else:
            cells += ["—"] * 4
        g = gates.get(key)
        shown = "{:.1f} % ({}) / {:+.2f}"
        cells += [
            shown.format(100 * g[lang][0], g[lang][2], 100 * g[lang][1]) if g else "—" for lang in langs
        ]
        verdict = "reference" if key == FP32 else "not run"
        cells += [f"{g['MB']:.1f}", "passes" if g["passes"] else "fails"] if g else ["—", verdict]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.recipes", description=__doc__.split("\n")[0])
    parser.add_argument("--source", default=str(SHARED / "models" / "tweet-sentiment-minilm"))
    parser.add_argument(
        "--data", type=Path, action="append", help="labelled set(s) (default: both shared sets)"
    )
    parser.add_argument("--recipes", default=f"{DEFAULT_RECIPE},{VNNI_RECIPE}", help="comma-separated names")
    parser.add_argument(
        "--scale-model", type=Path, help="a shape dir (config + tokenizer), e.g. robertuito-shape"
    )
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--texts", type=int, default=96)
    parser.add_argument("--no-gate", action="store_true")
    parser.add_argument("--profile", action="store_true", help="per-operator profile of each scale model")
    parser.add_argument(
        "--calibration", type=Path, help="texts (one a line) to calibrate on, instead of the gate texts"
    )
    args = parser.parse_args()
    data = args.data or [SHARED / "data" / "sentiment" / name for name in ("xlmt_spanish", "xlmt_english")]
    recipes = list(dict.fromkeys(args.recipes.split(",")))
    unknown = [name for name in recipes if name not in RECIPES]
    if unknown:
        parser.error(f"unknown recipe(s): {', '.join(unknown)}")
    names: list[str | None] = [None, *recipes]
    flags = cpu_features()
    print(f"CPU: {' '.join(flags)}")
    vnni = "avx512_vnni" in flags or "avxvnni" in flags
    print(f"AMX: {'present' if 'amx_int8' in flags else 'absent'}; VNNI: {'present' if vnni else 'absent'}")
    print(f"onnxruntime's u8s8 GEMM here: {u8s8_kernel()}")
    print("load average at start: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
    with tempfile.TemporaryDirectory(prefix="recipes-") as tmp:
        work = Path(tmp)
        gates = {} if args.no_gate else gate(args.source, data, names, work, args.calibration)
        scale: dict[str, Any] = {}
        anon: dict[str, float] = {}
        profiles: dict[str, Any] = {}
        if args.scale_model:
            source = str(build_random_model(args.scale_model, work / "random-model"))
            dirs = {name or FP32: export(source, work / f"scale-{name or FP32}", name) for name in names}
            texts = preprocessed("xlmt_spanish", args.texts)
            scale = at_scale(dirs, texts, args.rounds)
            anon = {name: anon_mb(path, texts) for name, path in dirs.items()}
            profiles = {name: op_profile(path, texts) for name, path in dirs.items() if args.profile}
    print("load average at end: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
    print(json.dumps({"flags": flags, "gate": gates, "scale": scale, "anon_mb": anon}, default=str))
    print(table(names, gates, scale, anon))
    for name, modes in profiles.items():
        for mode, shares in modes.items():
            shown = ", ".join(f"{op} {ms:.2f} ({share:.0f} %)" for op, ms, share in shares)
            print(f"profile {name} {mode}, kernel ms per text: {shown}")


if __name__ == "__main__":
    main()
