"""`python -m bench.profile --requests N [--ocr-files M]`: profile a real server under a mixed load.

The same seeded load runs in up to three passes, each on a fresh server with this process's
environment (BACKEND, MODEL_*, MEMORY_BUDGET_MB, ...), as start.sh would start it:
1. untraced: the honest RSS curve and latencies;
2. under tracemalloc, by default from the end of warm-up (`--trace-from start` traces imports and
   model loads too, but makes torch's import take minutes): which Python lines hold memory, and
   what grows once every cache is warm;
3. under memray, where installed: native allocations too (onnxruntime, torch, Tesseract), from
   the first import on, charged to the Python line that made them.
"""

import argparse
import importlib.util
import os
import shlex
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from bench.profiling import load, report
from bench.profiling.passes import PassResult, Tracer, run_pass
from bench.server import free_port, uvicorn_args
from bench.swarm import Swarm
from service.config import get_settings

MB = 1024 * 1024
DEFAULT_FRAMES = 25
# The settings worth repeating in the report: they decide what the numbers mean.
REPORTED_ENV = ("BACKEND", "MEMORY_BUDGET_MB", "MEMORY_MARGIN_MB", "NUM_THREADS", "MAX_BATCH", "DEFAULT_LANG")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=200, help="sentiment and ops requests (default 200)")
    parser.add_argument("--ocr-files", type=int, default=0, help="OCR uploads mixed in (default 0)")
    parser.add_argument("--concurrency", type=int, default=2, help="requests in flight (default 2)")
    parser.add_argument(
        "--out", type=Path, default=Path("/tmp/profile-report.md"), help="the Markdown report"
    )
    parser.add_argument("--top", type=int, default=15, help="allocation sites per table (default 15)")
    parser.add_argument(
        "--frames", type=int, default=DEFAULT_FRAMES, help="tracemalloc frames per allocation"
    )
    parser.add_argument(
        "--trace-from",
        choices=("warm", "start"),
        default="warm",
        help="start tracemalloc after warm-up (default) or with the interpreter (loads too; slow)",
    )
    parser.add_argument(
        "--memray",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="run the memray pass (default: when memray is installed)",
    )
    parser.add_argument(
        "--workdir", type=Path, help="keep snapshots, the memray capture and server logs here"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sample-interval", type=float, default=0.1, help="seconds between RSS samples")
    args = parser.parse_args(argv)
    if args.requests < 1 or args.ocr_files < 0:
        parser.error("--requests must be at least 1 and --ocr-files at least 0")
    installed = importlib.util.find_spec("memray") is not None
    if args.memray and not installed:
        parser.error("--memray: memray is not installed (pip install -r requirements-dev.txt)")
    args.memray = installed if args.memray is None else args.memray
    return args


def _header(args: argparse.Namespace, argv: list[str] | None, plain: PassResult) -> list[str]:
    memory = plain.memory
    command = shlex.join(["python", "-m", "bench.profile", *(argv if argv is not None else sys.argv[1:])])
    env = ", ".join(f"`{k}={os.environ[k]}`" for k in REPORTED_ENV if k in os.environ) or "defaults"
    models = ", ".join(f"`{k}={v}`" for k, v in sorted(os.environ.items()) if k.startswith("MODEL_"))
    loaded = "; ".join(f"`{item['key']}` {item['cost_mb']:.1f} MB" for item in memory.get("loaded", []))
    return [
        f"# Memory profile, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        "",
        f"- Command: `{command}`",
        f"- Settings: {env}; models: {models or 'defaults'}",
        f"- Load: {args.requests} sentiment/ops requests and {args.ocr_files} OCR uploads, "
        f"{args.concurrency} in flight, seed {args.seed}; the first {plain.warm_requests} are the warm-up",
        f"- Untraced server at the end: backend `{memory.get('backend')}`, budget "
        f"{memory.get('budget_mb')} MB ({memory.get('budget_source')}), loaded: {loaded or 'nothing'}; "
        f"counters {memory.get('counters')}",
    ]


def _findings(
    plain: PassResult,
    tracer: Tracer,
    sites: dict[str, list[report.Site]],
    memray: report.MemrayFindings | None,
    budget_mb: float,
) -> list[str]:
    peak_t, peak = max(plain.samples, key=lambda sample: sample[1])
    growth = tracer.totals["end"]["traced_bytes"] - tracer.totals["half"]["traced_bytes"]
    lines = [
        "## Findings",
        "",
        f"- Untraced RSS: {plain.rss_at('start'):.1f} MB before any request, {plain.rss_at('warm'):.1f} MB "
        f"after warm-up, {plain.rss_at('end'):.1f} MB at the end; peak {peak:.1f} MB at {peak_t:.1f} s, "
        f"{100 * peak / budget_mb:.0f} % of the {budget_mb:.0f} MB budget.",
        f"- Over the second half of the load: RSS {plain.rss_at('end') - plain.rss_at('half'):+.1f} MB, "
        f"Python memory {growth / MB:+.2f} MB (tracemalloc).",
    ]
    for label, top_sites in sites.items():
        if top_sites:
            listed = ", ".join(f"`{site.where}` {site.size / MB:.2f} MB" for site in top_sites[:3])
            lines.append(f"- Python memory still held at the end, largest by {label}: {listed}.")
    if memray is not None and memray.project_sites:
        listed = ", ".join(f"`{site.where}` {site.size / MB:.1f} MB" for site in memray.project_sites[:3])
        lines.append(f"- At memray's heap peak (native included), largest by project line: {listed}.")
    failures = sorted({r.call.name for r in plain.results if r.status >= 500 or r.status == 0})
    lines.append(
        f"- 5xx or failed connections: {', '.join(failures)}."
        if failures
        else "- No 5xx, no failed connection."
    )
    return lines


def _rss_by_pass(passes: dict[str, PassResult]) -> str:
    rows = [
        "| pass | before the load | after warm-up | half-way | end | peak |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, result in passes.items():
        marks = " | ".join(f"{result.rss_at(mark):.1f}" for mark in ("start", "warm", "half", "end"))
        rows.append(f"| {name} | {marks} | {max(mb for _, mb in result.samples):.1f} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    calls = load.plan(args.requests, args.ocr_files, get_settings().max_batch, args.seed)
    args.port = free_port()
    with tempfile.TemporaryDirectory(prefix="profile-") as scratch, Swarm() as swarm:
        args.workdir = args.workdir or Path(scratch)
        args.workdir.mkdir(parents=True, exist_ok=True)
        passes = {"untraced": run_pass("untraced", uvicorn_args(args.port), {}, calls, args, swarm)}

        tracer = Tracer(args.workdir / "tracemalloc", args.trace_from)
        tracer.folder.mkdir(parents=True, exist_ok=True)
        traced_args = ["-m", "bench.profiling.traced", str(args.port), str(tracer.folder)]
        env = {"PYTHONTRACEMALLOC": str(args.frames)} if args.trace_from == "start" else {}
        passes["tracemalloc"] = run_pass(
            "tracemalloc", [*traced_args, str(args.frames)], env, calls, args, swarm, tracer.at
        )
        snapshots = {label: tracer.load(label) for label in ("half", "end")}
        by_line, by_project = report.tracemalloc_sites(snapshots["end"])

        memray = None
        if args.memray:
            capture = args.workdir / "memray.bin"
            memray_args = ["-m", "memray", "run", "--quiet", "--force", "--aggregate", "-o", str(capture)]
            passes["memray"] = run_pass(
                "memray", [*memray_args, *uvicorn_args(args.port)], {}, calls, args, swarm
            )
            memray = report.memray_section(capture, args.top)

    plain = passes["untraced"]
    budget_mb = float(plain.memory.get("budget_mb") or 0)
    sites = {
        "allocating line": report.top(by_line, 3),
        "project line": [site for site in report.top(by_project, 4) if site.where != report.NO_PROJECT_FRAME],
    }
    scope = (
        "the whole process, from the interpreter's start (imports and model loads included)"
        if args.trace_from == "start"
        else "the load after warm-up only (imports and model loads are in memray's tables)"
    )
    document = [
        *_header(args, argv, plain),
        "",
        *_findings(plain, tracer, sites, memray, budget_mb),
        "",
        "## RSS over time (untraced pass)",
        "",
        report.rss_section(
            plain.samples,
            plain.named_marks(),
            budget_mb,
            f"Sampled from outside every {args.sample_interval} s.",
        ),
        "",
        "The same load under each tracer, for comparison (MB; tracers add their own bookkeeping, and "
        "tracemalloc's snapshots add short spikes):",
        "",
        _rss_by_pass(passes),
        "",
        "## Requests (untraced pass)",
        "",
        report.requests_table(plain.results),
        "",
        report.tracemalloc_section(snapshots, tracer.totals, args.top, scope),
    ]
    if memray is not None:
        document += ["", memray.text]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(document) + "\n", encoding="utf-8")
    print(f"profile: report written to {args.out}", file=sys.stderr)
    return 0
