"""RSS and CPU per text of each new kind of model, at full size, and torch vs onnx on the same weights.

    python -m bench.models [--work DIR] [--kinds sentiment:it,ner:es,...] [--texts N]

For each (task, lang): a stand-in at its real shape (bench/standins.py, random weights), exported
with the default INT8 recipe; then, each in a fresh process (RSS never comes back down in one):
the onnx backend's RSS before and after loading, and CPU ms per text (one text per call, the
tricky-tweet corpus); the torch backend's output beside the onnx one on the same texts (label
agreement, and the largest probability difference for text tasks).
"""

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT / "tests" / "sentiment" / "data" / "tricky_tweets.txt"
KINDS = "sentiment:it,hate_speech:pt,hate_speech:en,ner:es,pos:en,targeted_sentiment:es"
TARGET = "el gobierno"  # targeted_sentiment: one target for every text


def texts(limit: int) -> list[str]:
    from service.sentiment.preprocessing import preprocess_tweet

    lines = [line.replace("\\n", "\n") for line in CORPUS.read_text(encoding="utf-8").splitlines()]
    return [line for line in lines if preprocess_tweet(line, "es", preprocess_handles=False)][-limit:]


def _inputs(task: str, batch: list[str]) -> list[str]:
    from service.config import PAIR_TASKS
    from service.sentiment.analyzer import Pair

    return [Pair(text, TARGET) for text in batch] if task in PAIR_TASKS else batch


def child(task: str, lang: str, model: str, backend: str, limit: int) -> dict[str, Any]:
    """In a fresh process: RSS added by loading the model (the backend's libraries imported first;
    spaCy, which a token model imports on its first call, counts), CPU ms per text, the outputs."""
    import importlib

    import psutil

    from service import runtime
    from service.sentiment.analyzer import create_analyzer

    importlib.import_module(f"service.sentiment.backends.{backend}_backend")
    if backend == "torch":
        importlib.import_module("pysentimiento")
    process = psutil.Process()
    sample = texts(limit)
    before = process.memory_info().rss
    analyzer = create_analyzer(task, lang, model, backend)
    analyzer.predict(_inputs(task, sample[:1]))  # first call: lazy imports (spaCy), allocations
    runtime.trim_heap()
    loaded = process.memory_info().rss
    outputs, timings = [], []
    for text in sample:
        start = time.process_time()
        (result,) = analyzer.predict(_inputs(task, [text]))
        timings.append(time.process_time() - start)
        outputs.append(result.model_dump())
    return {
        "load_mb": (loaded - before) / 2**20,
        "rss_mb": process.memory_info().rss / 2**20,
        "cpu_ms": 1000 * statistics.median(timings),
        "outputs": outputs,
    }


def compare(task: str, torch_out: list[dict[str, Any]], onnx_out: list[dict[str, Any]]) -> dict[str, Any]:
    if "tokens" in torch_out[0]:
        pairs = [
            (a, b) for t, o in zip(torch_out, onnx_out, strict=True) for a, b in zip(t["labels"], o["labels"])
        ]
        return {"word label agreement": sum(a == b for a, b in pairs) / len(pairs), "words": len(pairs)}
    agree = sum(t["label"] == o["label"] for t, o in zip(torch_out, onnx_out, strict=True))
    diff = max(abs(t["probas"][k] - o["probas"][k]) for t, o in zip(torch_out, onnx_out) for k in t["probas"])
    return {"label agreement": agree / len(torch_out), "max proba diff": diff}


def run_child(*args: str) -> dict[str, Any]:
    command = [sys.executable, "-m", "bench.models", "--child", *args]
    result = subprocess.run(command, cwd=ROOT, check=True, capture_output=True, text=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.models", description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, help="keep models here (default: a temp dir)")
    parser.add_argument("--kinds", default=KINDS)
    parser.add_argument("--texts", type=int, default=60)
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        task, lang, model, backend = args.child
        print(json.dumps(child(task, lang, model, backend, args.texts)))
        return
    from bench.standins import build_standin
    from service.export.build import export_model

    with tempfile.TemporaryDirectory(prefix="bench-models-") as tmp:
        work = args.work or Path(tmp)
        print(
            "| model (stand-in shape) | onnx INT8 MB | onnx RSS added by the model (MB) | onnx CPU ms/text "
            "| torch RSS added by the model (MB) | torch CPU ms/text | torch vs onnx |"
        )
        print("|---|---|---|---|---|---|---|")
        for kind in args.kinds.split(","):
            task, lang = kind.split(":")
            source, out = work / f"{task}-{lang}-hf", work / f"{task}-{lang}-int8"
            if not (source / "config.json").is_file():
                build_standin(task, lang, source)
            if not (out / "manifest.json").is_file():
                export_model(task, lang, str(source), out)
            size = sum(f.stat().st_size for f in out.glob("model.onnx*")) / 2**20
            onnx = run_child(task, lang, str(out), "onnx", "--texts", str(args.texts))
            torch = run_child(task, lang, str(source), "torch", "--texts", str(args.texts))
            versus = compare(task, torch["outputs"], onnx["outputs"])
            shown = ", ".join(f"{k} {v:.4g}" for k, v in versus.items())
            print(
                f"| {task}/{lang} | {size:.0f} | {onnx['load_mb']:.0f} | {onnx['cpu_ms']:.1f} "
                f"| {torch['load_mb']:.0f} | {torch['cpu_ms']:.1f} | {shown} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
