"""Batch invariance and repeated texts: what each candidate costs, and what dedupe and the cache save.

    python -m bench.invariance candidates --scale-source DIR [--gate-source DIR] [--texts 32] [--work DIR]
    python -m bench.invariance padding --model DIR [--texts 32] [--rounds 10]
    python -m bench.invariance stream --model DIR [--requests 2000] [--repeat 0.35]

candidates: every way of serving the model that issue 12 weighs, each exported from the same fp32
graph by `service.export.quantize` (what `python -m service.export` ships): the default recipe
(`weight-only`: MatMulNBits 8-bit, blocks of 128, accuracy level 4) with every call padded to an
even token count (the default) and unpadded (before issue 12); accuracy levels 0 and 1 (fp32
compute); blocks of 32, padded and not; every other recipe of quantize.py (optimum's dynamic
MatMulInteger presets and the mixed ones); fp32. For each: at the scale model (RoBERTuito's shape),
CPU ms per text of --texts tweets of the shared Spanish set, one per call and in sorted calls of 8
(what micro-batching runs), and the largest probability difference between a text alone and among
random mates; on the gate model (tweet-sentiment-minilm, the quantization-sensitive one) the
export's accuracy gate (label agreement with fp32 >= 97 % and macro-F1 within 1 point on both
shared sets, size <= 30 % of fp32), and the same invariance figure over every text of both sets.

padding: the default's one cost measured closely: the default export at scale unpadded and padded
to an even token count, rounds alternated, median CPU ms per text and the ratio.

stream: a retweet-like stream of single-text requests through `batching.infer` in calls of 8 (as
micro-batching groups them under load): each request repeats an earlier request's text with
probability --repeat (picked uniformly among earlier requests, so a text already repeated is
repeated more: a Yule-Simon process, with a Zipf-like tail), else it is the next unseen tweet of
the shared sets. CPU time of the whole stream without dedupe (the old `infer`), with dedupe, and
with dedupe plus result caches of several sizes; their hit rates and memory.

CPU time is `time.process_time` of this one-threaded process (NUM_THREADS=1): the cores are shared
with other jobs, so wall time would measure them. Prints tables, then one JSON line.
"""

import argparse
import dataclasses
import hashlib
import json
import os
import random
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("NUM_THREADS", "1")

import numpy as np

from service.budget import Budget
from service.evaluate import predict, read_labelled, score
from service.export.build import export_model
from service.export.manifest import MODEL_FILE, write_manifest
from service.export.quantize import DEFAULT_RECIPE, RECIPES, Recipe, quantize
from service.hardware import CPU_BATCH
from service.registry import Registry
from service.sentiment import batching, cache
from service.sentiment.analyzer import Analyzer
from service.sentiment.backends.onnx_backend import ROW_MULTIPLE, OnnxModel, read_manifest
from service.sentiment.preprocessing import preprocess_tweet
from service.sentiment.schemas import Prediction

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
DATA = SHARED / "data" / "sentiment"
SETS = {"xlmt_spanish": "es", "xlmt_english": "en"}
BATCH = 8
MIN_AGREEMENT, MAX_F1_DROP, MAX_SIZE = 0.97, 0.01, 0.30  # the gate of bench.recipes and the docs


@dataclasses.dataclass(frozen=True)
class Candidate:
    summary: str
    recipe: Recipe | None  # None: fp32
    multiple: int = ROW_MULTIPLE  # each call's token count is padded to a multiple of this


def candidates() -> dict[str, Candidate]:
    shipped = RECIPES[DEFAULT_RECIPE]
    ours = {
        "fp32": Candidate("fp32 (no quantization)", None),
        "default": Candidate(f"{DEFAULT_RECIPE}, block 128, accuracy 4, padded to 2 (default)", shipped),
        "unpadded": Candidate(
            f"{DEFAULT_RECIPE}, block 128, accuracy 4, unpadded (before issue 12)", shipped, 1
        ),
        "acc0": Candidate(
            f"{DEFAULT_RECIPE}, accuracy 0, padded to 2", dataclasses.replace(shipped, accuracy_level=0)
        ),
        "acc1": Candidate(
            f"{DEFAULT_RECIPE}, accuracy 1, padded to 2", dataclasses.replace(shipped, accuracy_level=1)
        ),
        "block32": Candidate(
            f"{DEFAULT_RECIPE}, block 32, accuracy 4, padded to 2",
            dataclasses.replace(shipped, block_size=32),
        ),
        "block32-unpadded": Candidate(
            f"{DEFAULT_RECIPE}, block 32, accuracy 4, unpadded",
            dataclasses.replace(shipped, block_size=32),
            1,
        ),
    }
    others = {
        name: Candidate(f"{name}, padded to 2", r) for name, r in RECIPES.items() if name != DEFAULT_RECIPE
    }
    return ours | others


def analyzer(model_dir: Path, multiple: int, lang: str = "es") -> Analyzer:
    """The model as served, its calls padded to a multiple of `multiple` tokens."""
    model = OnnxModel(model_dir, 1, prepacked=False)
    manifest = model.manifest
    model.tokenizer.enable_padding(
        pad_id=manifest["pad_token_id"], pad_token=manifest["pad_token"], pad_to_multiple_of=multiple
    )
    return Analyzer(model, manifest["task"], lang, "onnx")


def fp32_export(source: Path, out: Path) -> Path:
    """`python -m service.export --no-quantize` of `source`, kept in `out` across runs."""
    if not (out / "manifest.json").is_file():
        export_model("sentiment", "es", str(source), out, recipe=None)
    return out


def quantized(fp32_dir: Path, name: str, recipe: Recipe, out: Path) -> Path:
    """What `export_model` ships for `recipe`, quantized from the fp32 graph already exported."""
    if (out / "manifest.json").is_file():
        return out
    staged = out.with_name(out.name + ".staged")
    shutil.rmtree(staged, ignore_errors=True)
    shutil.copytree(fp32_dir, staged, ignore=shutil.ignore_patterns(f"{MODEL_FILE}*", "manifest.json"))
    quantize(fp32_dir / MODEL_FILE, staged / MODEL_FILE, recipe)
    manifest = read_manifest(fp32_dir) | {
        "quantization": {"recipe": name, **dataclasses.asdict(recipe)},
        "files": {f.name: f.stat().st_size for f in sorted(staged.iterdir()) if f.is_file()},
    }
    write_manifest(staged, manifest)
    staged.rename(out)
    return out


def model_mb(model_dir: Path) -> float:
    return sum(f.stat().st_size for f in model_dir.glob(f"{MODEL_FILE}*")) / 1e6


def preprocessed(name: str, limit: int | None = None) -> list[str]:
    lang = SETS[name]
    texts = (preprocess_tweet(text, lang) for text in read_labelled(DATA / name).texts)
    return [text for text in texts if text][:limit]


def cpu_ms_per_text(run: Callable[[], int], rounds: int = 3) -> float:
    """Median over rounds of CPU ms per text; `run` returns the texts it did."""
    samples = []
    for _ in range(rounds):
        start = time.process_time()
        done = run()
        samples.append((time.process_time() - start) * 1000 / done)
    return round(sorted(samples)[len(samples) // 2], 2)


def singles(model: Analyzer, texts: Sequence[str]) -> int:
    for text in texts:
        model.model.predict_probas([text])
    return len(texts)


def in_calls_of(model: Analyzer, texts: Sequence[str], size: int = BATCH) -> int:
    ordered = sorted(texts, key=len)
    for start in range(0, len(ordered), size):
        model.model.predict_probas(ordered[start : start + size])
    return len(texts)


def max_batch_difference(model: Analyzer, texts: Sequence[str], seed: int = 0) -> tuple[float, int]:
    """Largest |alone - among random mates| over `texts`, and how many texts differ by > 1e-6.

    Each text among 1 to CPU_BATCH - 1 (the default BATCH_MAX_SIZE) random mates, at a random place."""
    rng = random.Random(seed)
    worst, differing = 0.0, 0
    for text in texts:
        alone = np.array(model.model.predict_probas([text])[0])
        mates = rng.sample(list(texts), rng.randint(1, CPU_BATCH - 1))
        place = rng.randint(0, len(mates))
        batch = [*mates[:place], text, *mates[place:]]
        difference = float(np.abs(np.array(model.model.predict_probas(batch)[place]) - alone).max())
        worst, differing = max(worst, difference), differing + (difference > 1e-6)
    return worst, differing


def gate(
    model: Analyzer, references: dict[str, list[Prediction | None]], sample: int | None = None
) -> dict[str, Any]:
    """The export's accuracy gate on both shared sets, and invariance over every text of both (or a
    random `sample` of each: six calls a text, where the gate's own batches take one)."""
    result: dict[str, Any] = {}
    for name, lang in SETS.items():
        model.lang = lang
        labelled = read_labelled(DATA / name)
        report = score(labelled.labels, model.model.labels, predict(model, labelled.texts), references[name])
        texts = preprocessed(name)
        if sample is not None and sample < len(texts):
            texts = random.Random(1).sample(texts, sample)
        worst, differing = max_batch_difference(model, texts)
        result[lang] = {
            "agreement": round(report["agreement"], 4),
            "macro_f1_delta_points": round(100 * (report["macro_f1"] - report["reference_macro_f1"]), 2),
            "batch_max_diff": worst,
            "batch_texts_differing": differing,
            "texts": len(texts),
        }
    return result


def measure_candidates(args: argparse.Namespace) -> dict[str, Any]:
    texts = preprocessed("xlmt_spanish", args.texts)
    work = args.work or Path(tempfile.mkdtemp(prefix="invariance-"))
    work.mkdir(parents=True, exist_ok=True)
    scale_fp32 = fp32_export(args.scale_source, work / "scale-fp32")
    gate_fp32 = fp32_export(args.gate_source, work / "gate-fp32")
    reference = analyzer(gate_fp32, ROW_MULTIPLE)
    references = {}
    for name, lang in SETS.items():
        reference.lang = lang
        references[name] = predict(reference, read_labelled(DATA / name).texts)
    del reference
    results: dict[str, Any] = {}
    for key in args.only:  # in the order asked
        candidate = candidates()[key]
        dirs = {"scale": scale_fp32, "gate": gate_fp32}
        if candidate.recipe is not None:
            name = candidate.recipe.summary
            dirs = {
                role: quantized(fp32, name, candidate.recipe, work / f"{role}-{_slug(candidate.recipe)}")
                for role, fp32 in dirs.items()
            }
        model = analyzer(dirs["scale"], candidate.multiple)
        worst, differing = max_batch_difference(model, texts)
        row: dict[str, Any] = {
            "summary": candidate.summary,
            "gate_mb": round(model_mb(dirs["gate"]), 1),
            "gate_size_share": round(model_mb(dirs["gate"]) / model_mb(gate_fp32), 3),
            "scale_mb": round(model_mb(dirs["scale"]), 1),
            "cpu_ms_single": cpu_ms_per_text(lambda model=model: singles(model, texts)),
            "cpu_ms_in_calls_of_8": cpu_ms_per_text(lambda model=model: in_calls_of(model, texts)),
            "scale_batch_max_diff": worst,
            "scale_texts_differing": differing,
        }
        del model
        row["gate"] = gate(analyzer(dirs["gate"], candidate.multiple), references, args.sample)
        row["passes"] = None  # fp32 is the reference, not a candidate for the gate
        if candidate.recipe is not None:
            row["passes"] = row["gate_size_share"] <= MAX_SIZE and all(
                lang["agreement"] >= MIN_AGREEMENT and abs(lang["macro_f1_delta_points"]) <= 100 * MAX_F1_DROP
                for lang in row["gate"].values()
            )
        results[key] = row
        print(key, json.dumps(row), flush=True)
    print(table(results))
    return results


def _slug(recipe: Recipe) -> str:
    """A dir name per distinct recipe (stable across runs), so padding variants share one export."""
    return hashlib.sha1(json.dumps(dataclasses.asdict(recipe), sort_keys=True).encode()).hexdigest()[:12]


HEAD = [
    "candidate",
    "MB at scale",
    "gate: % of fp32",
    "es / en agreement",
    "es / en ΔF1 (points)",
    "passes",
    "CPU ms / text, one per call",
    "CPU ms / text, calls of 8",
    "max diff at scale",
    "max diff es / en (texts > 1e-6)",
]


def table(results: dict[str, Any]) -> str:
    lines = ["| " + " | ".join(HEAD) + " |", "|" + "---|" * len(HEAD)]
    for row in results.values():
        es, en = row["gate"]["es"], row["gate"]["en"]
        cells = [
            row["summary"],
            f"{row['scale_mb']:.0f}",
            f"{100 * row['gate_size_share']:.1f}",
            f"{100 * es['agreement']:.1f} / {100 * en['agreement']:.1f} %",
            f"{es['macro_f1_delta_points']:+.2f} / {en['macro_f1_delta_points']:+.2f}",
            {True: "yes", False: "no", None: "—"}[row["passes"]],
            f"{row['cpu_ms_single']:.1f}",
            f"{row['cpu_ms_in_calls_of_8']:.1f}",
            f"{row['scale_batch_max_diff']:.2g}",
            f"{es['batch_max_diff']:.2g} ({es['batch_texts_differing']}) / "
            f"{en['batch_max_diff']:.2g} ({en['batch_texts_differing']})",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def measure_padding(args: argparse.Namespace) -> dict[str, Any]:
    """The default's one cost, side by side: the same export unpadded and padded to 2, their rounds
    alternated so that the neighbours' load falls on both alike; median CPU ms per text and ratio."""
    texts = preprocessed("xlmt_spanish", args.texts)
    models = {multiple: analyzer(args.model, multiple) for multiple in (1, ROW_MULTIPLE)}
    results: dict[str, Any] = {"texts": len(texts), "rounds": args.rounds}
    for label, run in (("one per call", singles), ("calls of 8", in_calls_of)):
        samples: dict[int, list[float]] = {multiple: [] for multiple in models}
        for _ in range(args.rounds):
            for multiple, model in models.items():
                samples[multiple].append(
                    cpu_ms_per_text(lambda model=model, run=run: run(model, texts), rounds=1)
                )
        medians = {multiple: float(np.median(values)) for multiple, values in samples.items()}
        results[label] = {
            "cpu_ms_unpadded": round(medians[1], 2),
            f"cpu_ms_padded_to_{ROW_MULTIPLE}": round(medians[ROW_MULTIPLE], 2),
            "ratio": round(medians[ROW_MULTIPLE] / medians[1], 3),
        }
        print(label, json.dumps(results[label]), flush=True)
    return results


def stream(texts: Sequence[str], requests: int, repeat: float, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    fresh = iter(rng.sample(list(texts), len(texts)))
    out: list[str] = []
    for _ in range(requests):
        out.append(rng.choice(out) if out and rng.random() < repeat else next(fresh))
    return out


def old_infer(model: Analyzer, texts: Sequence[str], registry: Registry) -> list[Prediction]:
    """`batching.infer` before dedupe: every text of the call computed, copies too."""
    lengths = [batching.estimated_tokens(text) for text in texts]
    order = sorted(range(len(texts)), key=lengths.__getitem__)
    results: dict[int, Prediction] = {}
    for run in batching.buckets([lengths[i] for i in order], BATCH):
        indices = [order[i] for i in run]
        predictions = batching._call(model, [texts[i] for i in indices], registry)
        results.update(zip(indices, predictions, strict=True))
    return [results[i] for i in range(len(texts))]


def measure_stream(args: argparse.Namespace) -> dict[str, Any]:
    pool = preprocessed("xlmt_spanish") + preprocessed("xlmt_english")
    requests = stream(pool, args.requests, args.repeat)
    calls = [requests[i : i + BATCH] for i in range(0, len(requests), BATCH)]
    model = analyzer(args.model, 2)
    registry = Registry(Budget(8192, "bench", 0.0))
    results: dict[str, Any] = {
        "requests": len(requests),
        "distinct_texts": len(set(requests)),
        "repeated_share": round(1 - len(set(requests)) / len(requests), 4),
        "copies_within_a_call_of_8": sum(len(call) - len(set(call)) for call in calls),
    }

    def new_infer(call: list[str]) -> Any:
        return batching.infer(model, call, registry, BATCH)

    runs: dict[str, tuple[Callable[[list[str]], Any], int]] = {
        "no dedupe (old infer)": (lambda call: old_infer(model, call, registry), 0),
        "dedupe": (new_infer, 0),
    }
    runs |= {f"dedupe + cache of {entries}": (new_infer, entries) for entries in args.cache_entries}
    for name, (run, entries) in runs.items():
        with cache.running(entries, args.cache_mb, registry) as results_cache:
            start = time.process_time()
            for call in calls:
                run(call)
            cpu_s = time.process_time() - start
            row: dict[str, Any] = {
                "cpu_s": round(cpu_s, 2),
                "cpu_ms_per_request": round(1000 * cpu_s / len(requests), 2),
            }
            if results_cache is not None:
                stats = results_cache.stats()
                row |= {"hit_rate": stats["hit_rate"], "cache_mb": stats["mb"]}
        results[name] = row
        print(name, json.dumps(row), flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.invariance", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    one = commands.add_parser("candidates", help="CPU time, accuracy and invariance of each candidate")
    one.add_argument(
        "--scale-source", type=Path, required=True, help="RoBERTuito's shape (a transformers dir)"
    )
    one.add_argument(
        "--gate-source",
        type=Path,
        default=SHARED / "models" / "tweet-sentiment-minilm",
        help="the gate model",
    )
    one.add_argument("--texts", type=int, default=32, help="tweets timed at scale")
    one.add_argument("--sample", type=int, help="texts of each set checked for invariance (default: all)")
    one.add_argument("--work", type=Path, help="keep the exports here (reused by the next run)")
    one.add_argument(
        "--only",
        type=lambda s: s.split(","),
        default=list(candidates()),
        help="candidates to run: " + ",".join(candidates()),
    )
    two = commands.add_parser("stream", help="dedupe and the result cache on a retweet-like stream")
    two.add_argument("--model", type=Path, required=True, help="an INT8 export")
    two.add_argument("--requests", type=int, default=2000)
    two.add_argument("--repeat", type=float, default=0.35, help="share of requests repeating an earlier text")
    two.add_argument("--cache-entries", type=lambda s: [int(x) for x in s.split(",")], default=[256, 1024])
    two.add_argument("--cache-mb", type=float, default=4.0)
    three = commands.add_parser("padding", help="the default export unpadded vs padded to 2, alternated")
    three.add_argument("--model", type=Path, required=True, help="the default INT8 export at scale")
    three.add_argument("--texts", type=int, default=32)
    three.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    commands_run = {"candidates": measure_candidates, "stream": measure_stream, "padding": measure_padding}
    results = commands_run[args.command](args)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
