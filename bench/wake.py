"""A free-plan spin-up (issue 22): Render's build, then its start command on a fresh copy of the
build output (and again on the disk that start left) in a cgroup like the free instance
(512 MB, 0.1 CPU), page cache dropped first, polled from outside.

    python -m bench.wake [--model DIR] [--ref REV] [--cpus 0.1] [--limit-mb 512] [--work DIR]
    python -m bench.wake --compare REV [--rounds 3] [--prepacked true]

--compare: build both the working tree and REV, then alternate their starts (fresh disk, kept
disk) for --rounds rounds, so that both see the same machine load; a table of the first answers
(wall and CPU seconds) and the load average close the run.

    python -m bench.wake --steps DIR [--rounds 3]

--steps: the server's path to its first answer in one process at full speed, in a build output
DIR (`--work`'s `build-after`, or any dir `start.sh install` set up): CPU seconds per step (the
imports in the server's order, the default model's load, its first call), the collector paused as
`serve.py` pauses it; no cgroup, page cache as it is.

Where the kernel counts the free memory it reports to its host (this VM's `page_reporting` module:
its virtio balloon gives free pages back, and the first touch of such a page is a fault in the host,
charged to the guest task that touches it), each start also says how many MB went back to the host
from just before its caches were dropped to its first answer: 146-962 MB per start here, which
does not say what those faults cost (MEMORY.md, issue 22, helper wake4).

--model: a transformers model dir to export as sentiment:es (default: RoBERTuito's shape with
seeded random weights, built from ../shared/models/robertuito-shape). --ref: build that commit
(a clean clone) instead of the working tree, for a before/after. Needs root (cgroups, drop_caches).

Prints, per start (default settings, then PREPACKED=false; fresh disk, then kept disk): seconds
to /health, to the first `POST /analyze` 200 and to /ready, the CPU seconds the instance had
spent by then, each process it ran with its CPU seconds, the server's own `wake:` log lines, then
the steady state once the prepacked variant is in place (median of short tweets, anonymous MB).
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from bench.filebacked import cpu_seconds, memory_cgroup
from bench.server import ROOT, Sampler, Server, free_port, launch
from bench.serving import SHORT, build_random_model

SHAPE = ROOT.parent / "shared" / "models" / "robertuito-shape"
# render.yaml's environment, with the Spanish model only (the English one is another shape).
RENDER_ENV = {
    "BACKEND": "onnx",
    "EXPORT_MODELS": "sentiment:es",
    "NUM_THREADS": "1",
    "FORWARDED_ALLOW_IPS": "*",
    "MALLOC_ARENA_MAX": "2",
    "MALLOC_MMAP_THRESHOLD_": "1048576",
    "MAX_BATCH": "32",
    "MAX_TEXT_CHARS": "2000",
}
VENV = (ROOT / ".venv").resolve()


def build(ref: str | None, model: Path, out: Path) -> float:
    """Render's buildCommand on a clean checkout; returns its wall seconds."""
    if ref is None:
        shutil.copytree(
            ROOT, out, ignore=shutil.ignore_patterns(".git", ".venv", "models", "__pycache__", ".*_cache")
        )
    else:
        subprocess.run(["git", "clone", "-q", str(ROOT), str(out)], check=True)
        subprocess.run(["git", "-C", str(out), "checkout", "-q", ref], check=True)
    started = time.perf_counter()
    subprocess.run(
        ["bash", "start.sh", "install"], cwd=out, env=_env(MODEL_SENTIMENT_ES=str(model)), check=True
    )
    return time.perf_counter() - started


def _env(**extra: str) -> dict[str, str]:
    keep = {k: v for k, v in os.environ.items() if not k.endswith("_NUM_THREADS")}
    path = f"{VENV / 'bin'}:{keep.get('PATH', '')}"
    return {**keep, **RENDER_ENV, "VIRTUAL_ENV": str(VENV), "PATH": path, **extra}


@contextmanager
def cpu_cgroup(cpus: float | None) -> Iterator[tuple[list[Path], Path | None]]:
    """Cgroups limiting CPU to `cpus` (v1: cpu + cpuacct; v2: one dir); yields (dirs, usage file)."""
    v1 = Path("/sys/fs/cgroup/cpu")
    name = f"bench-wake-{os.getpid()}"
    if (v1 / "cpu.cfs_quota_us").is_file():
        dirs = [v1 / name, Path("/sys/fs/cgroup/cpuacct") / name]
        usage = dirs[1] / "cpuacct.usage"
    else:
        dirs = [Path("/sys/fs/cgroup") / name]
        usage = dirs[0] / "cpu.stat"
    for path in dirs:
        path.mkdir()
    try:
        if cpus is not None and len(dirs) == 2:
            period = int((dirs[0] / "cpu.cfs_period_us").read_text())
            (dirs[0] / "cpu.cfs_quota_us").write_text(str(int(period * cpus)))
        elif cpus is not None:
            (dirs[0] / "cpu.max").write_text(f"{int(100000 * cpus)} 100000")
        yield dirs, usage
    finally:
        for path in dirs:
            for _ in range(50):
                try:
                    path.rmdir()
                    break
                except OSError:
                    time.sleep(0.1)


def cgroup_cpu_s(usage: Path) -> float:
    text = usage.read_text()
    if usage.name == "cpuacct.usage":
        return int(text) / 1e9
    stat = dict(line.split() for line in text.splitlines())
    return int(stat["usage_usec"]) / 1e6


class Processes(Sampler):
    """Each process of the cgroup: when it was first seen, its command and its last CPU seconds."""

    interval_s = 0.01

    def __init__(self, procs: Path, started: float) -> None:
        self.procs, self.started = procs, started
        self.seen: dict[int, dict[str, Any]] = {}

    def sample(self) -> bool:
        for pid in map(int, self.procs.read_text().split()):
            with suppress(OSError, ValueError, IndexError):  # gone meanwhile: seen when it lived
                cpu = cpu_seconds(pid)
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
                entry = self.seen.setdefault(pid, {"at_s": time.perf_counter() - self.started})
                entry |= {"cmd": cmd, "cpu_s": cpu}
        return True


def drop_caches() -> None:
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


# This VM's kernel counts the free memory it has reported to the host (free page reporting).
REPORTED_KIB = Path("/sys/module/page_reporting/parameters/reported_kib")


def host_reported_kib() -> int | None:
    """KiB of free memory this VM has given back to its host so far; None where not counted."""
    try:
        return int(REPORTED_KIB.read_text())
    except (OSError, ValueError):
        return None


def start(run_dir: Path, model: Path, cpus: float | None, limit_mb: int, **env: str) -> dict[str, Any]:
    """`bash start.sh` in `run_dir` inside the cgroups; the first answer's timeline and the steady state."""
    figures: dict[str, Any] = {}
    port = free_port()
    with memory_cgroup(limit_mb) as memory, cpu_cgroup(cpus) as (cpu_dirs, usage):
        reported = host_reported_kib()
        drop_caches()
        server = launch(
            run_dir / "wake.log",
            program=["bash", "start.sh"],
            python_args=lambda _: [],
            cgroup=[memory, *cpu_dirs],
            root=run_dir,
            port=port,
            **_env(PORT=str(port), MODEL_SENTIMENT_ES=str(model), PYTHONUNBUFFERED="1", **env),
        )
        try:
            with Processes(memory / "cgroup.procs", server.started) as processes:
                figures |= _first_answers(server, usage)
                if reported is not None:
                    figures["host_reported_mb"] = round(((host_reported_kib() or reported) - reported) / 1024)
                figures |= _steady(server)
            figures["processes"] = [
                {"at_s": round(p["at_s"], 2), "cpu_s": p.get("cpu_s", 0.0), "cmd": p["cmd"][:110]}
                for p in processes.seen.values()
            ]
        finally:
            server.stop()
    figures["log"] = [line for line in server.output().splitlines() if "wake:" in line or "onnx " in line]
    return figures


def _first_answers(server: Server, usage: Path) -> dict[str, Any]:
    marks: dict[str, Any] = {}
    body = json.dumps({"text": SHORT[0]}).encode()
    headers = {"Content-Type": "application/json"}
    deadline = time.perf_counter() + 600
    while "first_answer_s" not in marks and time.perf_counter() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"start.sh exited with {server.process.returncode}:\n{server.log_tail()}")
        try:
            if "health_s" not in marks and server.request("GET", "/health", timeout=5).status == 200:
                _mark(marks, "health", server, usage)
            if "health_s" in marks and server.request("POST", "/analyze", body, headers, 120).status == 200:
                _mark(marks, "first_answer", server, usage)
        except OSError:
            time.sleep(0.05)
    ready = server.request("GET", "/ready", timeout=120)
    _mark(marks, f"ready_{ready.status}", server, usage)
    return marks


def _mark(marks: dict[str, Any], name: str, server: Server, usage: Path) -> None:
    marks[f"{name}_s"] = round(time.perf_counter() - server.started, 2)
    marks[f"{name}_cpu_s"] = round(cgroup_cpu_s(usage), 2)


def _steady(server: Server, texts: int = 30) -> dict[str, Any]:
    """Once the prepacked variant is in place (when the server says one is coming): short tweets."""
    started = time.perf_counter()
    while time.perf_counter() - started < 300:
        (loaded,) = server.request("GET", "/memory").json()["loaded"]
        if loaded.get("prepacked", "in place") != "coming":
            break
        time.sleep(0.5)
    figures: dict[str, Any] = {"swap_wait_s": round(time.perf_counter() - started, 1)}
    latencies = []
    headers = {"Content-Type": "application/json"}
    for index in range(texts):
        body = json.dumps({"text": f"{SHORT[index % len(SHORT)]} {index}"}).encode()
        began = time.perf_counter()
        response = server.request("POST", "/analyze", body, headers)
        latencies.append(time.perf_counter() - began)
        assert response.status == 200, response.body
    memory = server.request("GET", "/memory").json()
    figures |= {
        "median_short_s": round(statistics.median(latencies), 3),
        "anon_mb": memory["anon_mb"],
        "file_mb": memory["file_mb"],
        "served": {k: v for k, v in memory["loaded"][0].items() if k in ("prepacked", "cost_mb", "file_mb")},
    }
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.wake", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, help="transformers dir (default: random RoBERTuito shape)")
    parser.add_argument("--ref", help="build this git commit instead of the working tree")
    parser.add_argument("--cpus", type=float, default=0.1)
    parser.add_argument("--limit-mb", type=int, default=512)
    parser.add_argument("--work", type=Path, help="kept afterwards when given")
    parser.add_argument("--compare", metavar="REV", help="alternate the working tree with this commit")
    parser.add_argument(
        "--rounds", type=int, default=None, help="rounds (default 1; 3 with --compare or --steps)"
    )
    parser.add_argument("--steps", type=Path, metavar="DIR", help="the CPU per step in this build output")
    parser.add_argument(
        "--prepacked",
        default="true,other-cpu,false",
        help="PREPACKED values to compare; other-cpu: true, the build's variant keyed for another CPU",
    )
    args = parser.parse_args()
    args.rounds = args.rounds or (3 if args.compare or args.steps else 1)
    if args.steps:
        for _ in range(args.rounds):
            command = [str(VENV / "bin" / "python"), "-c", STEPS]
            env = start_env(args.steps, _env(PYTHONPATH=".", **PINNED))
            subprocess.run(command, cwd=args.steps, env=env, check=True)
            print()
        return
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-wake-"))
    work.mkdir(parents=True, exist_ok=True)
    model = args.model
    if model is None:
        model = work / "source"
        if not (model / "config.json").is_file():
            build_random_model(SHAPE, model)
    if args.compare:
        compare(args, model, work)
        return
    output = work / "build"
    shutil.rmtree(output, ignore_errors=True)
    print(f"build ({args.ref or 'working tree'}): {build(args.ref, model, output):.1f} s wall")
    results: dict[str, list[dict[str, Any]]] = {}
    try:
        for round_ in range(args.rounds):
            for prepacked in args.prepacked.split(","):
                run_dir = work / f"run-prepacked-{prepacked}"
                start_twice(args, model, output, run_dir, prepacked, "", round_, results)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    table(results)


# What start.sh exports besides render.yaml's settings (older builds' too): pinning reads no settings.
PINNED = {
    **{f"{name}_NUM_THREADS": "1" for name in ("OMP", "MKL", "OPENBLAS", "NUMEXPR")},
    "TOKENIZERS_PARALLELISM": "false",
    "CUDA_VISIBLE_DEVICES": "",
}


def start_env(build: Path, env: dict[str, str]) -> dict[str, str]:
    """`env` with what the build's start.sh exports at its top (its `export` lines, evaluated as it
    would): --steps runs each build as its own server command would run."""
    script = 'eval "$(grep -E "^export " start.sh)"; env -0'
    done = subprocess.run(["bash", "-c", script], cwd=build, env=env, capture_output=True, check=True)
    return dict(item.split("=", 1) for item in done.stdout.decode().split("\0") if "=" in item)


# Run in a build output: the server's imports in its order, then what its warm-up thread does.
STEPS = """
import resource
def cpu():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime
marks = [("interpreter and site", cpu())]
from service import runtime
runtime.pause_gc()
try:
    from service import dataclass_code
    dataclass_code.install()
except ImportError:  # a build from before it
    pass
import uvicorn.main, uvicorn.config
marks.append(("uvicorn (and click)", cpu()))
from service.fastapi_import import FastAPI
marks.append(("FastAPI, starlette, pydantic", cpu()))
import main
marks.append(("the app's modules and eager routes", cpu()))
import numpy, onnxruntime, tokenizers
marks.append(("numpy, onnxruntime, tokenizers", cpu()))
from service.config import get_settings
from service.registry import get_registry
from service.sentiment.service import model_item
settings = get_settings()
with get_registry().use(model_item(settings.default_task, settings.default_lang)) as analyzer:
    marks.append(("the model: tokenizer, weights, session, probe", cpu()))
    runtime.resume_gc()
    analyzer.model.predict_probas(["que buen dia hace hoy"])
    marks.append(("its first call", cpu()))
previous = marks[0][1]
for name, at in marks:
    print(f"{name:52s} {at - previous:6.3f} s  (total {at:.3f} s)")
    previous = at
"""


def start_twice(
    args: argparse.Namespace,
    model: Path,
    output: Path,
    run_dir: Path,
    prepacked: str,
    side: str,
    round_: int,
    results: dict[str, list[dict[str, Any]]],
) -> None:
    """Start a fresh copy of the build `output` in `run_dir`, then again on the disk it kept."""
    shutil.rmtree(run_dir, ignore_errors=True)
    shutil.copytree(output, run_dir, symlinks=True)
    if prepacked == "other-cpu":
        as_if_built_on_another_cpu(run_dir)
    value = "true" if prepacked == "other-cpu" else prepacked
    for disk in ("fresh", "kept"):
        name = f"{side}PREPACKED={prepacked} {disk} disk"
        figures = start(run_dir, model, args.cpus, args.limit_mb, PREPACKED=value)
        figures["load_avg"] = os.getloadavg()[0]
        report(f"{name} (round {round_ + 1})", figures)
        results.setdefault(name, []).append(figures)


def compare(args: argparse.Namespace, model: Path, work: Path) -> None:
    """The working tree and `args.compare` built, then started in alternation, `args.rounds` times."""
    sides = {"after": None, "before": args.compare}
    outputs = {}
    for side, ref in sides.items():
        outputs[side] = work / f"build-{side}"
        shutil.rmtree(outputs[side], ignore_errors=True)
        print(f"build {side} ({ref or 'working tree'}): {build(ref, model, outputs[side]):.1f} s wall")
    rows: dict[str, list[dict[str, Any]]] = {}
    try:
        for round_ in range(args.rounds):
            for side in sides if round_ % 2 == 0 else reversed(sides):
                for prepacked in args.prepacked.split(","):
                    run_dir = work / f"run-{side}-{prepacked}"
                    start_twice(args, model, outputs[side], run_dir, prepacked, f"{side} ", round_, rows)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    table(rows)


def table(rows: dict[str, list[dict[str, Any]]]) -> None:
    """The starts' figures as MEMORY.md's table: one row per kind of start, one value per run."""
    print(
        "\n| start | runs | /health s (CPU s) | first answer s (CPU s) | median short s | anon MB | load "
        "| MB given back to the host |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name, runs in rows.items():
        cells = [
            ", ".join(f"{r['health_s']:.1f} ({r['health_cpu_s']:.2f})" for r in runs),
            ", ".join(f"{r['first_answer_s']:.1f} ({r['first_answer_cpu_s']:.2f})" for r in runs),
            ", ".join(f"{r['median_short_s']:.3f}" for r in runs),
            ", ".join(f"{r['anon_mb']:.1f}" for r in runs),
            ", ".join(f"{r['load_avg']:.1f}" for r in runs),
            ", ".join(str(r.get("host_reported_mb", "-")) for r in runs),
        ]
        print(f"| {name} | {len(runs)} | " + " | ".join(cells) + " |")


def as_if_built_on_another_cpu(run_dir: Path) -> None:
    """Rekey the build's variants as if Render's build machine had other CPU features than this one."""
    for info_path in run_dir.glob("models/*/prepacked/variant.json"):
        info = json.loads(info_path.read_text())
        info["key"]["cpu_features"] = ["another-cpu"]
        info_path.write_text(json.dumps(info))


def report(name: str, figures: dict[str, Any]) -> None:
    print(f"\n== {name}")
    for process in figures["processes"]:
        print(f"  +{process['at_s']:6.2f} s  {process['cpu_s']:5.2f} s CPU  {process['cmd']}")
    for line in figures["log"]:
        print(f"  log: {line[:160]}")
    marks = {k: v for k, v in figures.items() if k not in ("processes", "log")}
    print("  " + json.dumps(marks))


if __name__ == "__main__":
    main()
