"""Ray against the plain server, side by side on the same cores and rows (issue 15).

    python -m bench.ray --onnx DIR [--rows 2000] [--seconds 20] [--clients 8] [--skip bulk|serve]

bulk: one CSV of tweets through `POST /analyze/file` of one plain server (1 and 2 cores), and through
`service.scale.score` on a local Ray cluster of 1 and 2 CPUs (one actor per CPU).
serve: closed-loop clients (one tweet per request) against one plain server and Ray Serve with 1
and 2 replicas, on 2 cores.

Each system runs pinned to the same cores (the first 1 or 2) and in a cpuacct cgroup of its own, so
its CPU seconds are its own however busy the machine is: rows (or requests) per CPU-second is the
figure that holds on shared cores; wall-clock rates are printed beside it. Memory: the highest RSS
of each Ray actor or replica process and of the whole group, sampled every 0.25 s. The model is
RoBERTuito's shape by default: pass its export (`python -m service.export`) as --onnx.
"""

import argparse
import csv
import http.client
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from bench.server import free_port, serve_args, server_env
from bench.serving import SHORT, tweet

ROOT = Path(__file__).resolve().parents[1]
CGROUP_V1 = Path("/sys/fs/cgroup/cpuacct")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class Group:
    """A cpuacct cgroup (v1, or v2's cpu.stat) that a child process and all it starts run in."""

    def __init__(self, name: str) -> None:
        if CGROUP_V1.is_dir():
            self.path = CGROUP_V1 / name
        else:
            self.path = Path("/sys/fs/cgroup") / name
        self.path.mkdir()

    def enter(self) -> None:
        """Called in the child before it execs: everything it starts inherits the group."""
        (self.path / "cgroup.procs").write_text(str(os.getpid()))

    def cpu_s(self) -> float:
        if (self.path / "cpuacct.usage").is_file():
            return int((self.path / "cpuacct.usage").read_text()) / 1e9
        stat = dict(line.split() for line in (self.path / "cpu.stat").read_text().splitlines())
        return int(stat["usage_usec"]) / 1e6

    def pids(self) -> list[int]:
        return [int(pid) for pid in (self.path / "cgroup.procs").read_text().split()]

    def remove(self) -> None:
        for _ in range(50):
            try:
                self.path.rmdir()
                return
            except OSError:  # processes still leaving
                time.sleep(0.1)


def _status(pid: int) -> tuple[str, float, float]:
    """A process's command line (Ray sets `ray::<Actor>` as its title), RSS in MB and CPU seconds."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return cmdline, int(line.split()[1]) / 1024, (int(stat[11]) + int(stat[12])) / CLOCK_TICKS
    except (OSError, IndexError):
        pass
    return "", 0.0, 0.0


class Sampler:
    """Highest RSS of the group's processes whose title holds `marker` (each one), and of the group;
    the CPU seconds those processes spent while it ran (all of it for those started meanwhile)."""

    def __init__(self, group: Group, marker: str) -> None:
        self.group = group
        self.marker = marker
        self.per_process: dict[int, float] = {}
        self.cpu_start: dict[int, float] = {}
        self.cpu_last: dict[int, float] = {}
        self.total_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        total = 0.0
        for pid in self.group.pids():
            title, rss, cpu = _status(pid)
            total += rss
            if self.marker in title:
                self.per_process[pid] = max(self.per_process.get(pid, 0.0), rss)
                self.cpu_start.setdefault(pid, 0.0)
                self.cpu_last[pid] = cpu
        self.total_mb = max(self.total_mb, total)

    def _run(self) -> None:
        while not self._stop.wait(0.25):
            self._sample()

    def __enter__(self) -> "Sampler":
        for pid in self.group.pids():  # processes already running count from now
            title, _, cpu = _status(pid)
            if self.marker in title:
                self.cpu_start[pid] = cpu
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def cpu_s(self) -> float:
        return sum(self.cpu_last[pid] - self.cpu_start[pid] for pid in self.cpu_last)

    def report(self) -> dict[str, Any]:
        return {
            "rss_max_mb_each": sorted(round(mb, 1) for mb in self.per_process.values()),
            "rss_max_mb_group": round(self.total_mb, 1),
        }


@contextmanager
def started(command: list[str], cpus: int, env: dict[str, str], name: str) -> Iterator[tuple[Any, Group]]:
    """`command` on the first `cpus` cores in a cgroup of its own, ended (SIGTERM) on exit."""
    group = Group(f"bench-ray-{os.getpid()}-{name}")

    def confine() -> None:
        group.enter()
        os.sched_setaffinity(0, range(cpus))

    process = subprocess.Popen(
        command,
        cwd=ROOT,
        env=server_env(**env),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        preexec_fn=confine,
    )
    try:
        yield process, group
    finally:
        process.terminate()
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        for pid in group.pids():  # what the process left behind (Ray's own daemons)
            with suppress(ProcessLookupError):
                os.kill(pid, 9)
        group.remove()


def plain_server(port: int, cpus: int, model: Path, name: str, threads: int | None = None):
    """start.sh's server command on `cpus` cores, NUM_THREADS = `threads` (default: its cores)."""
    threads = threads or cpus
    command = [sys.executable, *serve_args(port)]
    env = {"MODEL_SENTIMENT_ES": str(model), "NUM_THREADS": str(threads), "MEMORY_BUDGET_MB": "1024"}
    return started(command, cpus, env, name)


def wait_until(port: int, timeout_s: float = 600) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            connection.request(
                "POST", "/analyze", json.dumps({"text": SHORT[0]}), {"content-type": "application/json"}
            )
            if connection.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"nothing answered /analyze on port {port}")


def write_csv(path: Path, rows: int) -> None:
    rng = random.Random(rows)
    with path.open("w", encoding="utf-8", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["id", "text"])
        writer.writerows([index, tweet(rng)] for index in range(rows))


def bulk_plain(source: Path, rows: int, cpus: int, model: Path) -> dict[str, Any]:
    port = free_port()
    with plain_server(port, cpus, model, f"plain-bulk-{cpus}") as (_, group):
        wait_until(port)
        boundary = "benchray"
        head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="id_column"\r\n\r\nid\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="rows.csv"\r\n'
            "Content-Type: text/csv\r\n\r\n"
        ).encode()
        body = head + source.read_bytes() + f"\r\n--{boundary}--\r\n".encode()
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=3600)
        with Sampler(group, "main:app") as sampler:
            cpu_before, start = group.cpu_s(), time.perf_counter()
            connection.request(
                "POST", "/analyze/file", body, {"content-type": f"multipart/form-data; boundary={boundary}"}
            )
            response = connection.getresponse()
            lines = sum(1 for _ in iter(response.readline, b""))
            wall, cpu = time.perf_counter() - start, group.cpu_s() - cpu_before
        if response.status != 200 or lines != rows:
            raise RuntimeError(f"/analyze/file answered {response.status} with {lines} of {rows} lines")
        return {
            "rows_per_s": round(rows / wall, 1),
            "rows_per_cpu_s": round(rows / cpu, 1),
            **sampler.report(),
        }


def bulk_ray(source: Path, rows: int, cpus: int, model: Path, work: Path) -> dict[str, Any]:
    """`score` in a driver of its own (`_score` below), pinned with its whole local cluster."""
    command = [
        sys.executable,
        "-m",
        "bench.ray",
        "_score",
        "--input",
        str(source),
        "--output",
        str(work / f"out-{cpus}"),
    ]
    command += ["--model", str(model), "--cpus", str(cpus)]
    with (
        started(command, cpus, {}, f"ray-bulk-{cpus}") as (process, group),
        Sampler(group, "Scorer") as sampler,
    ):
        output, _ = process.communicate(timeout=3600)
    lines = [line for line in output.splitlines() if line.startswith("{")]
    if not lines:
        raise RuntimeError(f"the Ray driver ended with {process.returncode} and no summary")
    summary = json.loads(lines[-1])
    if summary["rows"] != rows or summary["errors"]:
        raise RuntimeError(f"Ray scored {summary['rows']} rows with {summary['errors']} errors, of {rows}")
    return {
        "rows_per_s": summary["rows_per_s"],
        "rows_per_cpu_s": round(rows / summary["cpu_s"], 1),
        "rows_per_actor_cpu_s": round(rows / sampler.cpu_s, 1),
        "actors": cpus,
        **sampler.report(),
    }


def score_driver(args: argparse.Namespace) -> None:
    """The Ray side of `bulk_ray`: the pipeline's wall time and its group's CPU seconds, as JSON."""
    from service.scale.cluster import connect
    from service.scale.score import ScoreOptions, score

    group_file = next(
        (CGROUP_V1 / line.split(":", 2)[2].lstrip("/") / "cpuacct.usage")
        for line in Path("/proc/self/cgroup").read_text().splitlines()
        if ":cpuacct" in line or ",cpuacct" in line
    )
    connect(num_cpus=args.cpus)
    options = ScoreOptions(
        inputs=[args.input],
        output=args.output,
        id_column="id",
        model=args.model,
        actors=(args.cpus, args.cpus),
    )
    before = int(group_file.read_text())
    summary = score(options)
    summary["cpu_s"] = (int(group_file.read_text()) - before) / 1e9
    print(json.dumps(summary), flush=True)


def _client(port: int, seed: int, deadline: float, latencies: list[float], refused: list[int]) -> None:
    rng = random.Random(seed)
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        connection.request(
            "POST", "/analyze", json.dumps({"text": tweet(rng)}), {"content-type": "application/json"}
        )
        response = connection.getresponse()
        response.read()
        if response.status == 200:
            latencies.append(time.perf_counter() - start)
        else:
            refused.append(response.status)
    connection.close()


def load(port: int, group: Group, clients: int, seconds: float, marker: str) -> dict[str, Any]:
    for _ in range(20):  # every replica's model loaded and warm
        wait_until(port)
    latencies: list[float] = []
    refused: list[int] = []
    deadline = time.perf_counter() + seconds
    threads = [
        threading.Thread(target=_client, args=(port, i, deadline, latencies, refused)) for i in range(clients)
    ]
    with Sampler(group, marker) as sampler:
        cpu_before, start = group.cpu_s(), time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        wall, cpu = time.perf_counter() - start, group.cpu_s() - cpu_before
    latencies.sort()
    return {
        "requests_per_s": round(len(latencies) / wall, 1),
        "requests_per_cpu_s": round(len(latencies) / cpu, 1),
        "requests_per_worker_cpu_s": round(len(latencies) / sampler.cpu_s, 1),
        "p50_ms": round(statistics.median(latencies) * 1000, 1),
        "p95_ms": round(latencies[int(len(latencies) * 0.95)] * 1000, 1),
        "refused": len(refused),
        **sampler.report(),
    }


def serve_plain(model: Path, clients: int, seconds: float) -> dict[str, Any]:
    port = free_port()
    with plain_server(port, 2, model, "plain-serve", threads=1) as (_, group):  # start.sh's NUM_THREADS
        wait_until(port)
        return load(port, group, clients, seconds, "main:app")


def serve_ray(model: Path, replicas: int, clients: int, seconds: float) -> dict[str, Any]:
    port = free_port()
    command = [sys.executable, "-m", "service.scale", "serve", "--num-cpus", "2", "--port", str(port)]
    command += ["--replicas", str(replicas), "--memory-mb", "1024"]
    env = {"MODEL_SENTIMENT_ES": str(model)}
    with started(command, 2, env, f"ray-serve-{replicas}") as (_, group):
        wait_until(port)
        return {"replicas": replicas, **load(port, group, clients, seconds, "ServeReplica")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command")
    driver = commands.add_parser("_score", help="internal: the Ray driver of one bulk run")
    for name in ("--input", "--output", "--model"):
        driver.add_argument(name, required=True)
    driver.add_argument("--cpus", type=int, required=True)
    parser.add_argument("--onnx", type=Path, required=False, help="an exported model (RoBERTuito's shape)")
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--skip", choices=("bulk", "serve"))
    args = parser.parse_args()
    if args.command == "_score":
        score_driver(args)
        return
    if args.onnx is None or not (args.onnx / "manifest.json").is_file():
        parser.error("--onnx DIR: an exported model dir (python -m service.export) is needed")
    results: dict[str, Any] = {"rows": args.rows, "model": str(args.onnx)}
    with tempfile.TemporaryDirectory(prefix="bench-ray-") as tmp:
        work = Path(tmp)
        if args.skip != "bulk":
            source = work / "tweets.csv"
            write_csv(source, args.rows)
            for cpus in (1, 2):
                results[f"bulk_plain_{cpus}cpu"] = bulk_plain(source, args.rows, cpus, args.onnx)
                print(json.dumps({f"bulk_plain_{cpus}cpu": results[f"bulk_plain_{cpus}cpu"]}), flush=True)
                results[f"bulk_ray_{cpus}cpu"] = bulk_ray(source, args.rows, cpus, args.onnx, work)
                print(json.dumps({f"bulk_ray_{cpus}cpu": results[f"bulk_ray_{cpus}cpu"]}), flush=True)
        if args.skip != "serve":
            results["serve_plain"] = serve_plain(args.onnx, args.clients, args.seconds)
            print(json.dumps({"serve_plain": results["serve_plain"]}), flush=True)
            for replicas in (1, 2):
                results[f"serve_ray_{replicas}"] = serve_ray(args.onnx, replicas, args.clients, args.seconds)
                print(json.dumps({f"serve_ray_{replicas}": results[f"serve_ray_{replicas}"]}), flush=True)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
