"""Batch invariance and repeated texts: what each candidate costs, and what dedupe and the cache save.

    python -m bench.invariance variants --scale-model DIR --gate-int8 DIR --gate-fp32 DIR [--fp32 DIR]
    python -m bench.invariance stream --model DIR [--requests 2000] [--repeat 0.35]

variants: the INT8 model as served (`OnnxModel`) with each candidate for batch invariance: the
token count padded to a multiple of 1 (the old default), 2 (the default), 4 or 8; MatMulNBits
accuracy level 0 (fp32 compute: MLAS has no 8-bit fp32 kernel, so B is dequantized on every call)
padded to 2; the fp32 export (--fp32). For each, at the scale model (RoBERTuito's shape): CPU ms
per text of --texts tweets of the shared Spanish set, one per call and in sorted calls of 8 (what
micro-batching runs), and the largest probability difference between a text alone and the same
text among 1-7 random mates at a random place; and on the gate model (tweet-sentiment-minilm, the
quantization-sensitive one): label agreement with its fp32 export on both shared sets, as the
export's accuracy gate counts it, and the same invariance figure over 100 texts of each set
(padding to 4 or 8 changes no number that padding to 2 does not: not repeated).

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
import onnx

from service.budget import Budget
from service.evaluate import predict, read_labelled, score
from service.registry import Registry
from service.sentiment import batching, cache
from service.sentiment.analyzer import Analyzer
from service.sentiment.backends.onnx_backend import OnnxModel
from service.sentiment.preprocessing import preprocess_tweet
from service.sentiment.schemas import Prediction

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "sentiment"
SETS = {"xlmt_spanish": "es", "xlmt_english": "en"}
BATCH = 8
GATE_SAMPLE = 100


def analyzer(model_dir: Path, multiple: int, lang: str = "es") -> Analyzer:
    """The model as served, its calls padded to a multiple of `multiple` tokens."""
    model = OnnxModel(model_dir, 1)
    manifest = model.manifest
    model.tokenizer.enable_padding(
        pad_id=manifest["pad_token_id"], pad_token=manifest["pad_token"], pad_to_multiple_of=multiple
    )
    return Analyzer(model, manifest["task"], lang, "onnx")


def with_accuracy_level(model_dir: Path, level: int, work: Path) -> Path:
    """A copy of an export whose MatMulNBits nodes compute at `level`."""
    out = work / f"{model_dir.name}-accuracy-{level}"
    shutil.copytree(model_dir, out)
    graph = onnx.load(out / "model.onnx", load_external_data=False)
    for node in graph.graph.node:
        for attribute in node.attribute:
            if node.op_type == "MatMulNBits" and attribute.name == "accuracy_level":
                attribute.i = level
    onnx.save(graph, out / "model.onnx")  # the weights file beside it is unchanged
    return out


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
    """Largest |alone - among random mates| over `texts`, and how many texts differ by > 1e-6."""
    rng = random.Random(seed)
    worst, differing = 0.0, 0
    for text in texts:
        alone = np.array(model.model.predict_probas([text])[0])
        mates = rng.sample(list(texts), rng.randint(1, BATCH - 1))
        place = rng.randint(0, len(mates))
        batch = [*mates[:place], text, *mates[place:]]
        difference = float(np.abs(np.array(model.model.predict_probas(batch)[place]) - alone).max())
        worst, differing = max(worst, difference), differing + (difference > 1e-6)
    return worst, differing


def gate(model: Analyzer, references: dict[str, list[Prediction | None]]) -> dict[str, Any]:
    """Agreement with fp32 on both shared sets (as the export's accuracy gate), and invariance on
    --gate-sample texts of each (tests/sentiment/test_invariance.py checks every text)."""
    result: dict[str, Any] = {}
    for name, lang in SETS.items():
        model.lang = lang
        labelled = read_labelled(DATA / name)
        report = score(labelled.labels, model.model.labels, predict(model, labelled.texts), references[name])
        sample = random.Random(1).sample(preprocessed(name), GATE_SAMPLE)
        worst, differing = max_batch_difference(model, sample)
        result[lang] = {
            "agreement": round(report["agreement"], 4),
            "macro_f1_delta_points": round(100 * (report["macro_f1"] - report["reference_macro_f1"]), 2),
            "batch_max_diff": worst,
            "batch_texts_differing": differing,
        }
    return result


def variants(args: argparse.Namespace) -> dict[str, Any]:
    texts = preprocessed("xlmt_spanish", args.texts)
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="invariance-") as tmp:
        work = Path(tmp)
        scale_acc0 = (
            with_accuracy_level(args.scale_model, 0, work) if "acc0" in args.only else args.scale_model
        )
        gate_acc0 = with_accuracy_level(args.gate_int8, 0, work) if "acc0" in args.only else args.gate_int8
        candidates: dict[str, tuple[str, Path, Path | None, int]] = {
            "pad1": ("weight-only, unpadded (old default)", args.scale_model, args.gate_int8, 1),
            "pad2": ("weight-only, padded to 2 (default)", args.scale_model, args.gate_int8, 2),
            "pad4": ("weight-only, padded to 4", args.scale_model, args.gate_int8, 4),
            "pad8": ("weight-only, padded to 8", args.scale_model, args.gate_int8, 8),
            "acc0": ("weight-only, accuracy_level 0, padded to 2", scale_acc0, gate_acc0, 2),
        }
        if args.fp32 is not None:
            candidates["fp32"] = ("fp32 (no quantization)", args.fp32, None, 1)
        candidates = {key: value for key, value in candidates.items() if key in args.only}
        references = {}
        if not args.no_gate:
            fp32 = analyzer(args.gate_fp32, 1)
            for name, lang in SETS.items():
                fp32.lang = lang
                references[name] = predict(fp32, read_labelled(DATA / name).texts)
        for name, scale_dir, gate_dir, multiple in candidates.values():
            model = analyzer(scale_dir, multiple)
            worst, differing = max_batch_difference(model, texts)
            row: dict[str, Any] = {
                "cpu_ms_single": cpu_ms_per_text(lambda model=model: singles(model, texts)),
                "cpu_ms_in_calls_of_8": cpu_ms_per_text(lambda model=model: in_calls_of(model, texts)),
                "scale_batch_max_diff": worst,
                "scale_texts_differing": differing,
            }
            del model
            if gate_dir is not None and multiple <= 2 and not args.no_gate:
                row["gate"] = gate(analyzer(gate_dir, multiple), references)
            results[name] = row
            print(name, json.dumps(row), flush=True)
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
    one = commands.add_parser("variants", help="CPU time, accuracy and invariance of each candidate")
    one.add_argument("--scale-model", type=Path, required=True, help="the INT8 export at RoBERTuito's scale")
    one.add_argument("--gate-int8", type=Path, required=True, help="tweet-sentiment-minilm's INT8 export")
    one.add_argument("--gate-fp32", type=Path, required=True, help="its fp32 export (--no-quantize)")
    one.add_argument("--fp32", type=Path, help="the fp32 export at scale, to time it too")
    one.add_argument("--no-gate", action="store_true", help="time only")
    one.add_argument("--texts", type=int, default=32, help="tweets timed at scale")
    one.add_argument(
        "--only",
        type=lambda s: s.split(","),
        default=["pad1", "pad2", "pad4", "pad8", "acc0", "fp32"],
        help="candidates to run (one process each runs faster on shared cores)",
    )
    two = commands.add_parser("stream", help="dedupe and the result cache on a retweet-like stream")
    two.add_argument("--model", type=Path, required=True, help="an INT8 export")
    two.add_argument("--requests", type=int, default=2000)
    two.add_argument("--repeat", type=float, default=0.35, help="share of requests repeating an earlier text")
    two.add_argument("--cache-entries", type=lambda s: [int(x) for x in s.split(",")], default=[256, 1024])
    two.add_argument("--cache-mb", type=float, default=4.0)
    args = parser.parse_args()
    results = variants(args) if args.command == "variants" else measure_stream(args)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
