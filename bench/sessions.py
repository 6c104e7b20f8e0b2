"""Measure onnxruntime session and run options: RSS after session creation, after a large call,
and latency.

    python -m bench.sessions [--model DIR] [--work /tmp/robertuito-int8]

Each variant runs in a fresh subprocess (RSS never comes back down in one process, so variants
measured together would hide each other). Without --model, a RoBERTuito-scale model (its shape and
tokenizer, seeded random weights) is built and exported INT8 under --work, outside the repo.
"""

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import onnxruntime as ort

ROOT = Path(__file__).resolve().parents[1]
SHAPE = ROOT.parent / "shared" / "models" / "robertuito-shape"
MB = 1024 * 1024
RUNS = 200
SHORT = "me encanta este lugar emoji cara sonriente con ojos de corazón emoji"  # preprocessed already
LONG = " ".join(["palabra"] * 200)  # past the 128-token limit: the largest activations


def _set(name: str, value: object) -> Callable[[ort.SessionOptions], None]:
    return lambda options: setattr(options, name, value)


def _entry(key: str, value: str) -> Callable[[ort.SessionOptions], None]:
    return lambda options: options.add_session_config_entry(key, value)


VARIANTS: dict[str, Callable[[ort.SessionOptions], None]] = {
    "default": lambda options: None,
    "enable_cpu_mem_arena=False": _set("enable_cpu_mem_arena", False),
    "enable_mem_pattern=False": _set("enable_mem_pattern", False),
    "session.disable_prepacking=1": _entry("session.disable_prepacking", "1"),
    "session.use_device_allocator_for_initializers=1": _entry(
        "session.use_device_allocator_for_initializers", "1"
    ),
    "graph optimization: basic": _set(
        "graph_optimization_level", ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    ),
    "graph optimization: extended": _set(
        "graph_optimization_level", ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    ),
    "graph optimization: disabled": _set(
        "graph_optimization_level", ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    ),
}
# Variants of the run options every call uses (onnx_backend.run_options).
RUN_VARIANTS: dict[str, Callable[[bool], ort.RunOptions]] = {
    "run: no arena shrinkage": lambda cpu_arena: ort.RunOptions(),
}


def child(model: Path, variant: str) -> dict[str, float]:
    """In a fresh process: RSS added by the session (at its peak, after, after malloc_trim), latency."""
    import psutil

    from service import runtime
    from service.sentiment.backends import onnx_backend

    base_options = onnx_backend.session_options

    def options(num_threads: int) -> ort.SessionOptions:
        result = base_options(num_threads)
        VARIANTS[variant](result)
        return result

    if variant in RUN_VARIANTS:
        onnx_backend.run_options = RUN_VARIANTS[variant]
    else:
        onnx_backend.session_options = options
    process = psutil.Process()
    before = process.memory_info().rss
    model_ = onnx_backend.OnnxModel(model, num_threads=1)
    created = process.memory_info().rss
    peak = _high_water_mark()
    runtime.trim_heap()
    trimmed = process.memory_info().rss
    for _ in range(10):
        model_.predict_probas([SHORT])
    timings = []
    for _ in range(RUNS):
        start = time.process_time()  # CPU time: the cores are shared with other processes
        model_.predict_probas([SHORT])
        timings.append(time.process_time() - start)
    after_runs = process.memory_info().rss
    model_.predict_probas([LONG] * 32)
    after_large = process.memory_info().rss
    long_timings = []
    for _ in range(3):
        start = time.process_time()
        model_.predict_probas([LONG] * 8)
        long_timings.append(time.process_time() - start)
    return {
        "peak_mb": (peak - before) / MB,
        "session_mb": (created - before) / MB,
        "after_trim_mb": (trimmed - before) / MB,
        "after_runs_mb": (after_runs - before) / MB,
        "after_large_mb": (after_large - before) / MB,
        "ms": 1000 * statistics.median(timings),
        "long8_ms": 1000 * statistics.median(long_timings),
    }


def _high_water_mark() -> int:
    """Peak RSS in bytes from VmHWM: unlike ru_maxrss, it does not inherit the parent's peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


def build(work: Path) -> Path:
    """RoBERTuito's shape with seeded random weights, exported with the default recipe."""
    out = work / "int8"
    if not (out / "manifest.json").is_file():
        from bench.serving import build_random_model
        from service.export.build import export_model

        source = build_random_model(SHAPE, work / "random-model")
        export_model("sentiment", "es", str(source), out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.sessions", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--model", type=Path, help="an exported dir (default: build RoBERTuito scale)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/robertuito-int8"))
    parser.add_argument("--child", choices=[*VARIANTS, *RUN_VARIANTS], help=argparse.SUPPRESS)
    args = parser.parse_args()
    model = args.model or build(args.work)
    if args.child:
        print(json.dumps(child(model, args.child)))
        return
    print(f"model: {model}\n")
    print(
        "| variant | RSS added (MB): peak | after creation | after malloc_trim | after 200 runs "
        "| after a call of 32 long texts | CPU ms, 1 short text | CPU ms, 8 long texts |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for variant in [*VARIANTS, *RUN_VARIANTS]:
        command = [sys.executable, "-m", "bench.sessions", "--model", str(model), "--child", variant]
        result = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)
        keys = ("peak_mb", "session_mb", "after_trim_mb", "after_runs_mb", "after_large_mb")
        mb = [f"{result[key]:.0f}" for key in keys]
        print(f"| {variant} | {' | '.join(mb)} | {result['ms']:.1f} | {result['long8_ms']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
