"""One profiling pass: a server started, driven through the load's phases, sampled, stopped.

The phases are the warm-up, then the rest of the load in two halves, so that growth over the
second half, when every cache is warm, stands out. A traced server is controlled by signals
(see traced.py) at the phase boundaries.
"""

import argparse
import json
import os
import signal
import sys
import threading
import time
import tracemalloc
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from bench.profiling import load, report
from bench.server import Server, running_server
from bench.swarm import Swarm

MB = 1024 * 1024
SIGNAL_TIMEOUT_S = 180.0


@dataclass
class PassResult:
    warm_requests: int
    samples: list[tuple[float, float]] = field(default_factory=list)  # (seconds, RSS MB)
    marks: dict[str, float] = field(default_factory=dict)  # phase boundary -> seconds
    results: list[load.Result] = field(default_factory=list)
    memory: dict[str, Any] = field(default_factory=dict)  # the server's /memory at the end

    def rss_at(self, mark: str) -> float:
        t = self.marks[mark]
        return min(self.samples, key=lambda sample: abs(sample[0] - t))[1]

    def named_marks(self) -> dict[str, float]:
        names = {
            "start": "before the load",
            "warm": f"after warm-up ({self.warm_requests} requests)",
            "half": "half-way through the rest",
            "end": "after the load",
        }
        return {names[mark]: t for mark, t in self.marks.items()}


class RssSampler(threading.Thread):
    """Reads the server's RSS every `interval_s` from outside, so it costs the server nothing."""

    def __init__(self, pid: int, started: float, out: list[tuple[float, float]], interval_s: float) -> None:
        super().__init__(daemon=True)
        self._process = psutil.Process(pid)
        self._t0, self._out, self._interval_s = started, out, interval_s
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            try:
                rss = self._process.memory_info().rss / MB
            except psutil.Error:
                return
            self._out.append((time.perf_counter() - self._t0, rss))
            self._halt.wait(self._interval_s)

    def stop(self) -> None:
        self._halt.set()
        self.join()


def _get_json(server: Server, path: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{server.url}{path}", timeout=30) as response:
        return json.load(response)


def _wait_for(path: Path, server: Server, what: str) -> None:
    deadline = time.monotonic() + SIGNAL_TIMEOUT_S
    while not path.exists():
        if time.monotonic() > deadline or server.process.poll() is not None:
            raise RuntimeError(f"{what}: nothing from the server:\n{server.log_tail()}")
        time.sleep(0.05)


class Tracer:
    """Drives the traced server by signals: starts tracing at warm-up's end unless it traced from
    the start, and takes a snapshot at each later phase boundary."""

    def __init__(self, folder: Path, trace_from: str) -> None:
        self.folder = folder
        self.trace_from = trace_from
        self.snapshot_at = ("warm", "half", "end") if trace_from == "start" else ("half", "end")
        self.totals: dict[str, dict] = {}  # label -> traced totals, in the order taken

    def at(self, label: str, server: Server) -> None:
        if label == "warm" and self.trace_from == "warm":
            os.kill(server.pid, signal.SIGUSR2)
            _wait_for(self.folder / "tracing", server, "starting tracemalloc")
        if label in self.snapshot_at:
            number = len(self.totals)
            os.kill(server.pid, signal.SIGUSR1)
            _wait_for(self.folder / f"snapshot-{number}.pickle", server, f"snapshot {label}")
            self.totals[label] = json.loads((self.folder / f"snapshot-{number}.json").read_text())

    def load(self, label: str) -> tracemalloc.Snapshot:
        number = list(self.totals).index(label)
        return report.load_snapshot(self.folder / f"snapshot-{number}.pickle")


def run_pass(
    name: str,
    python_args: list[str],
    env: dict[str, str],
    calls: tuple[list[load.Call], list[load.Call]],
    args: argparse.Namespace,
    swarm: Swarm,
    at_boundary: Callable[[str, Server], None] | None = None,
) -> PassResult:
    """Start the server, send the warm-up, then the rest in two halves through `swarm`, and stop it.

    `at_boundary` runs at each phase boundary (start, warm, half, end) before it is timed."""
    warmup, rest = calls
    phases = (warmup, rest[: len(rest) // 2], rest[len(rest) // 2 :])
    result = PassResult(warm_requests=len(warmup))
    with running_server(
        args.workdir, name=f"server-{name}", python_args=lambda _port: python_args, port=args.port, **env
    ) as server:
        started = time.perf_counter()
        sampler = RssSampler(server.pid, started, result.samples, args.sample_interval)
        sampler.start()
        try:
            for label, phase in zip(("start", "warm", "half"), phases, strict=True):
                if at_boundary is not None:
                    at_boundary(label, server)
                result.marks[label] = time.perf_counter() - started
                result.results += load.run(swarm, server.url, phase, args.concurrency, started)
            if at_boundary is not None:
                at_boundary("end", server)
            result.marks["end"] = time.perf_counter() - started
            result.memory = _get_json(server, "/memory")
        finally:
            sampler.stop()
    print(f"profile: {name} pass done in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    return result
