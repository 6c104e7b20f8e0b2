"""File-backed models (issue 11): the old way (weights in anonymous memory) beside the new one
(the prepacked variant, weights mapped from a file), each in its own fresh server process.

    python -m bench.filebacked single --model DIR [--requests 1000]
    python -m bench.filebacked cgroup --models DIR [--limit-mb 512] [--requests 200]
    python -m bench.filebacked allowance --model DIR [--room-mb 160,120,100,80,60,40]
    python -m bench.filebacked render --model DIR [--limit-mb 512] [--cpus 0.1]
    python -m bench.filebacked standins --source DIR --out DIR

single: one exported RoBERTuito-scale model, served plain (PREPACKED=false), from a variant made
before the server starts, and from a variant made by the server's first load (none on disk):
first answer after process start, then the project's 1000 mixed requests (service/bench.py's
mix), then anonymous, file-backed and total RSS, peak RSS and the server's CPU per text.
cgroup: the four Spanish tasks (sentiment, emotion, hate_speech, irony; --models holds
<task>-es dirs, as `standins` writes them) plus OCR in one server inside a real memory cgroup of
--limit-mb (v1 or v2, no swap), requests cycling over the five: loaded items, evictions, OOM kills,
the cgroup's own figures. Needs root (it writes the cgroup hierarchy).
allowance: one model served from its variant in memory cgroups of its anonymous memory plus
each --room-mb for file pages: major page faults and CPU per call (the file allowance's evidence).
render: a deploy's first start in cgroups like Render's free instance (512 MB, a CPU quota of
0.1): making the variant, then the first answer with it, plain, and with it made by the first load.
standins: RoBERTuito-shape models for emotion (7 labels), hate_speech (3, multi-label) and
irony (2) from the random sentiment model at --source, with a new head, exported as the
service exports (they stand in for pysentimiento's, which this machine cannot download).
"""

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench.server import Sampler, launch
from bench.serving import SHORT, Client, analyze, bench_args, long_text, ocr, start_server

MB = 1024 * 1024
# pysentimiento's label sets (pysentimiento 0.7.3, Spanish models).
STANDIN_HEADS: dict[str, tuple[list[str], str]] = {
    "emotion": (
        ["others", "joy", "sadness", "anger", "surprise", "disgust", "fear"],
        "single_label_classification",
    ),
    "hate_speech": (["hateful", "targeted", "aggressive"], "multi_label_classification"),
    "irony": (["not ironic", "ironic"], "single_label_classification"),
}
TICKS = os.sysconf("SC_CLK_TCK")


def proc_status(pid: int) -> dict[str, float]:
    """VmRSS, VmHWM, RssAnon, RssFile of a process (MB)."""
    wanted = ("VmRSS", "VmHWM", "RssAnon", "RssFile", "RssShmem")
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in wanted:
            out[name] = int(value.split()[0]) / 1024
    return out


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc/PID/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


class AnonSampler(Sampler):
    """The largest RssAnon and VmRSS of a process, sampled every 20 ms while the block runs."""

    def __init__(self, pid: int) -> None:
        self.pid, self.anon_max, self.rss_max = pid, 0.0, 0.0

    def sample(self) -> bool:
        try:
            status = proc_status(self.pid)
        except OSError:
            return False
        self.anon_max = max(self.anon_max, status["RssAnon"])
        self.rss_max = max(self.rss_max, status["VmRSS"])
        return True


def mixed_requests(server: Client, requests: int, seed: int = 0) -> int:
    """bench/serving.py's mix: short and 150-word texts, singles and batches of 4 and 8; returns texts."""
    rng, texts = random.Random(seed), 0
    for index in range(requests):
        kind = index % 4
        if kind == 0:
            body: dict[str, Any] = {"text": rng.choice(SHORT)}
        elif kind == 1:
            body = {"text": long_text(rng)}
        elif kind == 2:
            body = {"texts": rng.sample(SHORT, 4)}
        else:
            body = {"texts": [long_text(rng) if i % 2 else rng.choice(SHORT) for i in range(8)]}
        analyze(server, body)
        texts += len(body.get("texts", [None]))
    return texts


MODES = ("plain", "variant-made-at-first-load", "variant")


def single(
    model: Path, requests: int, work: Path, modes: Sequence[str] = MODES
) -> dict[str, dict[str, float]]:
    """Plain vs variant (made before start, and made by the first load) of one model."""
    from service.sentiment.backends import prepacked

    results = {}
    for mode in modes:
        copy = work / mode
        shutil.copytree(
            model, copy, ignore=shutil.ignore_patterns("prepacked", ".prepacked-*"), symlinks=True
        )
        figures: dict[str, float] = {}
        if mode == "variant":
            started = time.perf_counter()
            done = subprocess.run(
                [sys.executable, "-m", "service.sentiment.backends.prepacked", str(copy)],
                capture_output=True,
                text=True,
                check=True,
            )
            figures["make_wall_s"] = round(time.perf_counter() - started, 2)
            info = prepacked.read_info(copy / prepacked.LINK) or {}
            figures["make_cpu_s"] = info.get("make_cpu_s", -1.0)
            figures["variant_disk_mb"] = round(sum(info.get("files", {}).values()) / MB, 1)
            print(done.stdout.strip(), file=sys.stderr)
        env = {
            "BACKEND": "onnx",
            "MODEL_SENTIMENT_ES": str(copy),
            "NUM_THREADS": "1",
            "MEMORY_BUDGET_MB": "8192",
            "PREPACKED": "false" if mode == "plain" else "true",
        }
        server = start_server(env, None, None)
        try:
            pid = server.server.pid
            cpu_start = cpu_seconds(pid)
            analyze(server, {"text": SHORT[0]})
            figures["first_answer_s"] = round(time.perf_counter() - server.started, 2)
            figures["first_answer_server_cpu_s"] = round(cpu_seconds(pid) - cpu_start, 2)
            first = proc_status(pid)
            with AnonSampler(pid) as sampler:
                cpu_before = cpu_seconds(pid)
                texts = mixed_requests(server, requests)
                cpu_used = cpu_seconds(pid) - cpu_before
            after = proc_status(pid)
            _, report = server.request("GET", "/memory")
            figures.update(
                {
                    "anon_first_mb": round(first["RssAnon"], 1),
                    "anon_after_mb": round(after["RssAnon"], 1),
                    "anon_max_mb": round(sampler.anon_max, 1),
                    "file_after_mb": round(after["RssFile"], 1),
                    "rss_after_mb": round(after["VmRSS"], 1),
                    "peak_rss_mb": round(after["VmHWM"], 1),
                    "texts": texts,
                    "cpu_ms_per_text": round(1000 * cpu_used / texts, 2),
                    "model_cost_mb": report["loaded"][0]["cost_mb"],
                    "model_file_mb": report["loaded"][0].get("file_mb", 0.0),
                }
            )
        finally:
            server.stop()
        results[mode] = figures
        print(mode, json.dumps(figures), file=sys.stderr)
    if not {"plain", "variant"} <= set(results):
        return results
    plain, variant = results["plain"], results["variant"]
    results["ratios"] = {
        "cpu_per_text_variant_over_plain": round(variant["cpu_ms_per_text"] / plain["cpu_ms_per_text"], 3),
        "anon_after_variant_over_plain": round(variant["anon_after_mb"] / plain["anon_after_mb"], 3),
    }
    return results


@contextmanager
def memory_cgroup(limit_mb: int, name: str = "filebacked") -> Iterator[Path]:
    """A fresh memory cgroup (v1 if mounted, else v2) limited to `limit_mb`, no swap; `name` tells
    apart the groups one process holds at once."""
    v1 = Path("/sys/fs/cgroup/memory")
    root, version = (v1, 1) if (v1 / "memory.limit_in_bytes").is_file() else (Path("/sys/fs/cgroup"), 2)
    path = root / f"bench-{name}-{os.getpid()}"
    path.mkdir()
    try:
        if version == 1:
            (path / "memory.limit_in_bytes").write_text(str(limit_mb * MB))
            swap = path / "memory.memsw.limit_in_bytes"
            if swap.exists():
                swap.write_text(str(limit_mb * MB))
        else:
            (path / "memory.max").write_text(str(limit_mb * MB))
            (path / "memory.swap.max").write_text("0")
        yield path
    finally:
        for _ in range(50):
            try:
                path.rmdir()
                break
            except OSError:
                time.sleep(0.1)


def cgroup_counters(path: Path) -> dict[str, float]:
    """OOM kills, limit hits and peak of a cgroup (v1 or v2)."""
    if (path / "memory.failcnt").exists():
        control = dict(line.split() for line in (path / "memory.oom_control").read_text().splitlines())
        return {
            "oom_kills": int(control.get("oom_kill", 0)),
            "limit_hits": int((path / "memory.failcnt").read_text()),
            "peak_mb": round(int((path / "memory.max_usage_in_bytes").read_text()) / MB, 1),
        }
    events = dict(line.split() for line in (path / "memory.events").read_text().splitlines())
    return {
        "oom_kills": int(events.get("oom_kill", 0)),
        "limit_hits": int(events.get("max", 0)),
        "peak_mb": round(int((path / "memory.peak").read_text()) / MB, 1),
    }


TASKS_ES = ("sentiment", "emotion", "hate_speech", "irony")


def in_cgroup(models: Path, limit_mb: int, requests: int, prepacked_on: bool, work: Path) -> dict[str, Any]:
    """The four Spanish tasks and OCR in one server inside a memory cgroup of `limit_mb`."""
    from bench.documents import encode, letter_page

    env: dict[str, str | None] = {
        "BACKEND": "onnx",
        "NUM_THREADS": "1",
        "PREPACKED": "true" if prepacked_on else "false",
        "RECYCLE_ON_HARD_LIMIT": "false",
    }
    copies = []
    for task in TASKS_ES:
        copy = work / f"{task}-es-{'variant' if prepacked_on else 'plain'}"
        shutil.copytree(
            models / f"{task}-es", copy, ignore=shutil.ignore_patterns("prepacked", ".prepacked-*")
        )
        env[f"MODEL_{task.upper()}_ES"] = str(copy)
        copies.append(copy)
    os.sync()
    for path in (f for copy in copies for f in copy.iterdir()):  # their page cache is charged to us:
        with path.open("rb") as handle:  # drop it, so that the server's cgroup pays for what it reads
            os.posix_fadvise(handle.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
    page = encode(letter_page(lines=12))
    env["MEMORY_BUDGET_MB"] = None  # the budget must come from the cgroup
    with memory_cgroup(limit_mb) as path:
        if prepacked_on:  # start.sh's step, in the same cgroup as the server
            join = f'echo $$ > {path}/cgroup.procs && exec "$@"'
            make = [sys.executable, "-m", "service.sentiment.backends.prepacked", *map(str, copies)]
            subprocess.run(["bash", "-c", join, "make", *make], check=True)
        server = Client(launch(work / "cgroup-server.log", python_args=bench_args, cgroup=path, **env))
        try:
            server.server.wait_healthy(120)
            rng = random.Random(0)
            statuses: dict[str, int] = {}
            for index in range(requests):
                slot = index % 5
                if slot == 4:
                    try:
                        ocr(server, page, "image/png")
                        key = "ocr"
                    except RuntimeError as error:  # a refusal, counted like /analyze's
                        key = f"ocr {str(error).split()[2]}"
                    statuses[key] = statuses.get(key, 0) + 1
                    continue
                task = TASKS_ES[slot]
                body: dict[str, Any] = {"task": task, "lang": "es"}
                if index % 3:
                    body["text"] = rng.choice(SHORT)
                else:
                    body["texts"] = [long_text(rng) for _ in range(4)]
                status, _ = server.request("POST", "/analyze", body)
                key = task if status == 200 else f"{task} {status}"
                statuses[key] = statuses.get(key, 0) + 1
            _, report = server.request("GET", "/memory")
            status = proc_status(server.server.pid)
            return {
                "requests": statuses,
                "loaded": {item["key"]: (item["cost_mb"], item.get("file_mb")) for item in report["loaded"]},
                "evictions": report["counters"]["evictions"],
                "refusals": report["counters"]["refusals"],
                "anon_mb": round(status["RssAnon"], 1),
                "file_mb": round(status["RssFile"], 1),
                "rss_mb": round(status["VmRSS"], 1),
                "peak_rss_mb": round(status["VmHWM"], 1),
                "used_mb": report["used_mb"],
                "budget": [report["budget_mb"], report["budget_source"]],
                "cgroup": report.get("cgroup"),
                **cgroup_counters(path),
            }
        finally:
            server.stop()


def allowance_child(model: Path, calls: int) -> dict[str, float]:
    """In this process: serve `model` as the backend does, then `calls` calls of a 64-token text:
    the file pages one call references, and the major faults and CPU per call in steady state."""
    import resource

    from service.sentiment.backends.file_pages import mapped_kb
    from service.sentiment.backends.onnx_backend import OnnxModel

    analyzer = OnnxModel(model, num_threads=1)
    text = " ".join(["el servicio de hoy fue lento pero la gente amable"] * 6)
    Path("/proc/self/clear_refs").write_text("1")  # every page's referenced bit off
    analyzer.predict_probas([text])  # and warm: every page a call needs has been read once
    referenced = mapped_kb(analyzer.served.graph.parent.resolve())["Referenced"] / 1024
    before, cpu, wall = (
        resource.getrusage(resource.RUSAGE_SELF).ru_majflt,
        time.process_time(),
        time.monotonic(),
    )
    for _ in range(calls):
        analyzer.predict_probas([text])
    status = proc_status(os.getpid())
    return {
        "served_variant": analyzer.served.variant,
        "allowance_mb": round(analyzer.file_mb, 1),
        "referenced_by_one_call_mb": round(referenced, 1),
        "wall_ms_per_call": round(1000 * (time.monotonic() - wall) / calls, 1),
        "major_faults_per_call": round(
            (resource.getrusage(resource.RUSAGE_SELF).ru_majflt - before) / calls, 1
        ),
        "cpu_ms_per_call": round(1000 * (time.process_time() - cpu) / calls, 1),
        "anon_mb": round(status["RssAnon"], 1),
        "file_mb": round(status["RssFile"], 1),
    }


def allowance(model: Path, room_mb: list[int], calls: int) -> list[dict[str, Any]]:
    """The same child in memory cgroups of its anonymous memory + each `room_mb` for file pages:
    how much room a call's mapped weights need before it stops re-reading them from disk."""
    child = [sys.executable, "-m", "bench.filebacked", "allowance-child", "--model", str(model)]
    unlimited = subprocess.run([*child, "--calls", "3"], capture_output=True, text=True, check=True)
    probe = json.loads(unlimited.stdout.splitlines()[-1])
    rows = []
    for room in room_mb:
        limit = int(probe["anon_mb"] + room)
        weights = model / "prepacked" / "model.onnx.data"
        with weights.open("rb") as handle:  # drop its cached pages: they must be charged to the new group
            os.posix_fadvise(handle.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
        with memory_cgroup(limit) as path:
            command = ["bash", "-c", f'echo $$ > {path}/cgroup.procs && exec "$@"', "allowance", *child]
            command += ["--calls", str(calls)]
            done = subprocess.run(
                command, capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1]
            )
            row: dict[str, Any] = {"limit_mb": limit, "room_for_file_pages_mb": room, **cgroup_counters(path)}
            if done.returncode == 0:
                row.update(json.loads(done.stdout.splitlines()[-1]))
            else:
                row["failed"] = done.stderr.strip().splitlines()[-1:] or [f"exit {done.returncode}"]
        rows.append(row)
        print(json.dumps(row), file=sys.stderr)
    return rows


@contextmanager
def render_like(limit_mb: int, cpus: float) -> Iterator[tuple[Path, Path]]:
    """A memory and a CPU cgroup like a Render free instance (512 MB, 0.1 CPU; cgroup v1 here)."""
    with memory_cgroup(limit_mb) as memory:
        cpu = Path("/sys/fs/cgroup/cpu") / f"bench-filebacked-{os.getpid()}"
        cpu.mkdir()
        try:
            period = int((cpu / "cpu.cfs_period_us").read_text())
            (cpu / "cpu.cfs_quota_us").write_text(str(int(period * cpus)))
            yield memory, cpu
        finally:
            for _ in range(50):
                try:
                    cpu.rmdir()
                    break
                except OSError:
                    time.sleep(0.1)


def render_cold_start(model: Path, work: Path, limit_mb: int, cpus: float) -> dict[str, float]:
    """A deploy's first start on a Render-like instance: making the variant, then the first answer
    with it, without it (PREPACKED=false), and with the variant made by the first load."""
    figures: dict[str, float] = {}
    with render_like(limit_mb, cpus) as (memory, cpu):
        for mode in ("make", "variant", "plain", "made-at-first-load"):
            copy = work / f"render-{mode}"
            if not copy.exists():
                shutil.copytree(model, copy, ignore=shutil.ignore_patterns("prepacked", ".prepacked-*"))
            if mode == "make":
                join = f'echo $$ > {memory}/cgroup.procs && echo $$ > {cpu}/cgroup.procs && exec "$@"'
                make = [sys.executable, "-m", "service.sentiment.backends.prepacked", str(copy)]
                started = time.perf_counter()
                subprocess.run(["bash", "-c", join, "render", *make], check=True)
                figures["make_variant_s"] = round(time.perf_counter() - started, 1)
                shutil.move(copy, work / "render-variant")
                continue
            env = {"BACKEND": "onnx", "MODEL_SENTIMENT_ES": str(copy), "NUM_THREADS": "1"}
            env["PREPACKED"] = str(mode != "plain").lower()
            server = launch(work / f"render-{mode}.log", python_args=bench_args, cgroup=memory, **env)
            (cpu / "cgroup.procs").write_text(str(server.pid))  # before its imports: they take seconds
            try:
                server.wait_healthy(600)
                figures[f"{mode}_listening_s"] = round(time.perf_counter() - server.started, 1)
                analyze(Client(server), {"text": SHORT[0]})
                figures[f"{mode}_first_answer_s"] = round(time.perf_counter() - server.started, 1)
            finally:
                server.stop()
            print(json.dumps(figures), file=sys.stderr)
    return figures


def build_standins(source: Path, out: Path) -> None:
    """emotion, hate_speech and irony models of RoBERTuito's shape: `source` with a new head."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from service.export.build import export_model

    for task, (labels, problem_type) in STANDIN_HEADS.items():
        target = out / f"{task}-es"
        if (target / "manifest.json").is_file():
            continue
        torch.manual_seed(1)
        model = AutoModelForSequenceClassification.from_pretrained(
            source,
            num_labels=len(labels),
            id2label=dict(enumerate(labels)),
            label2id={label: i for i, label in enumerate(labels)},
            problem_type=problem_type,
            ignore_mismatched_sizes=True,
        )
        with tempfile.TemporaryDirectory() as tmp:
            model.save_pretrained(tmp)
            AutoTokenizer.from_pretrained(source).save_pretrained(tmp)
            export_model(task, "es", tmp, target)
        print(f"standins: {target}", file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.filebacked", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    one = sub.add_parser("single")
    one.add_argument("--model", type=Path, required=True)
    one.add_argument("--requests", type=int, default=1000)
    one.add_argument("--modes", default=",".join(MODES), help=f"some of {', '.join(MODES)}")
    group = sub.add_parser("cgroup")
    group.add_argument("--models", type=Path, required=True)
    group.add_argument("--limit-mb", type=int, default=512)
    group.add_argument("--requests", type=int, default=200)
    group.add_argument("--modes", default="variant,plain", help="variant, plain or both")
    room = sub.add_parser("allowance")
    room.add_argument("--model", type=Path, required=True)
    room.add_argument("--room-mb", default="160,120,100,80,60,40")
    room.add_argument("--calls", type=int, default=20)
    child = sub.add_parser("allowance-child")
    child.add_argument("--model", type=Path, required=True)
    child.add_argument("--calls", type=int, default=20)
    render = sub.add_parser("render")
    render.add_argument("--model", type=Path, required=True)
    render.add_argument("--limit-mb", type=int, default=512)
    render.add_argument("--cpus", type=float, default=0.1)
    stand = sub.add_parser("standins")
    stand.add_argument("--source", type=Path, required=True)
    stand.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    if args.command == "standins":
        build_standins(args.source, args.out)
        return
    if args.command == "allowance-child":
        print(json.dumps(allowance_child(args.model, args.calls)))
        return
    if args.command == "allowance":
        print(json.dumps(allowance(args.model, [int(mb) for mb in args.room_mb.split(",")], args.calls)))
        return
    with tempfile.TemporaryDirectory(prefix="bench-filebacked-") as tmp:
        if args.command == "single":
            result: dict[str, Any] = single(args.model, args.requests, Path(tmp), args.modes.split(","))
        elif args.command == "render":
            result = render_cold_start(args.model, Path(tmp), args.limit_mb, args.cpus)
        else:
            result = {}
            for mode in args.modes.split(","):
                result[mode] = in_cgroup(
                    args.models, args.limit_mb, args.requests, mode == "variant", Path(tmp)
                )
                print(mode, json.dumps(result[mode]), file=sys.stderr)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
