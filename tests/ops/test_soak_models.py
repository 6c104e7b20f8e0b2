"""Soak: every pysentimiento model (4 tasks x es, en) and OCR in one server in a real 512 MB memory
cgroup, beside the same soak on one model. Only on demand:

    SOAK_SECONDS=600 SOAK_MODELS_DIR=models SOAK_REPORT=soak-models.json \
        .venv/bin/python -m pytest -m soak -s tests/ops/test_soak_models.py

SOAK_MODELS_DIR holds the exported dirs <task>-<lang> (as `python -m service.export` writes them
under ONNX_DIR); the test skips, naming what is missing, without all eight. Each run starts
supervise.sh + the server in a fresh cgroup child exactly as tests/ops/test_soak.py does (budget
from the cgroup, prepacked variants made by start.sh's step before the server starts), and drives
8 clients for SOAK_SECONDS: each request goes to the next (task, lang) in turn, with an OCR page
every OCR_EVERY requests. The one-model run sends every text request to sentiment/es.
Pass: 0 OOM kills, 0 5xx, no 503 retried, no worker restart, no eviction in the eight-model run
beyond what its report explains; it reports texts/s of both runs, RSS, anonymous memory,
memory.current, memory.peak, major page faults and evictions.
"""

import itertools
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from contextlib import suppress
from pathlib import Path
from typing import Any

import psutil
import pytest

from bench.server import Server, launch
from service.config import TEXT_TASKS
from tests.ocr.samples import ENGLISH, SPANISH, encode, text_page
from tests.ops.test_soak import LIMIT_MB, Tally, memory_cgroup, send_retrying, upload_request
from tests.support import ROOT, tessdata_missing

pytestmark = pytest.mark.soak

MB = 1024 * 1024
CLIENTS = 8
OCR_EVERY = 9
SAMPLE_EVERY_S = 2.0
# Issue 11's eight: the four text tasks in Spanish and English (not every task and language served).
PAIRS = [(task, lang) for task in TEXT_TASKS for lang in ("es", "en")]


def models_dir() -> Path:
    base = Path(os.environ.get("SOAK_MODELS_DIR", "models"))
    base = base if base.is_absolute() else ROOT / base
    missing = [f"{t}-{lang}" for t, lang in PAIRS if not (base / f"{t}-{lang}" / "manifest.json").is_file()]
    if missing:
        pytest.skip(
            f"needs all eight exported models in SOAK_MODELS_DIR={base}; missing: {', '.join(missing)}"
        )
    return base


def drop_page_cache(models: Path) -> None:
    """Evict the models' (and their variants') cached pages: pages cached by an earlier run stay
    charged to another cgroup, so the new one would map them without paying for them (RSS above the
    limit). A fresh instance starts with none."""
    os.sync()
    for path in (p for p in models.rglob("*") if p.is_file() and not p.is_symlink()):
        with path.open("rb") as handle:
            os.posix_fadvise(handle.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)


def worker_figures(pid: int) -> dict[str, float]:
    status = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "RssAnon", "RssFile"):
            status[name] = int(value.split()[0]) / 1024
    major_faults = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[9])
    return {**status, "major_faults": major_faults}


class Rotation:
    """Each request to the next (task, lang) in turn, across all clients; OCR mixed in."""

    def __init__(self, pairs: list[tuple[str, str]], page: bytes) -> None:
        self._next = itertools.cycle(pairs)
        self._count = itertools.count()
        self._lock = threading.Lock()
        self.page = page
        self.texts = [*SPANISH, *ENGLISH]

    def request(self, seed: int) -> tuple[str, int, tuple[str, str, bytes, dict[str, str]]]:
        with self._lock:
            index = next(self._count)
            if index % OCR_EVERY == OCR_EVERY - 1:
                return "ocr", 0, upload_request("/ocr", self.page, "image/png", lang="es")
            task, lang = next(self._next)
        texts = [self.texts[(index + i) % len(self.texts)] for i in range(1 + index % 4)]
        body = json.dumps({"texts": texts, "task": task, "lang": lang}).encode()
        return f"{task}:{lang}", len(texts), ("POST", "/analyze", body, {"Content-Type": "application/json"})


def client(
    server: Server, rotation: Rotation, seed: int, stop: threading.Event, tally: Tally, done: list
) -> None:
    while not stop.is_set():
        kind, texts, request = rotation.request(seed)
        response = send_retrying(server, kind, request, tally)
        if response is not None and response.status == 200:
            with tally.lock:
                done.append(texts)


def soak(
    tmp_path: Path, models: Path, pairs: list[tuple[str, str]], seconds: float, name: str
) -> dict[str, Any]:
    env: dict[str, str | None] = {
        "BACKEND": "onnx",
        "NUM_THREADS": "1",
        "MEMORY_WATCHDOG": "true",
        "MALLOC_ARENA_MAX": "2",
        "ONNX_DIR": str(models),
        "PREPACKED": "true",
        "MEMORY_BUDGET_MB": None,  # the budget must come from the cgroup
    }
    for task, lang in PAIRS:
        env[f"MODEL_{task.upper()}_{lang.upper()}"] = str(models / f"{task}-{lang}")
    page = encode(text_page(SPANISH * 2, size=(1275, 500)))
    drop_page_cache(models)
    with memory_cgroup(LIMIT_MB) as cgroup:
        # start.sh's step: the variants are made before the server starts, in the same cgroup.
        make = [sys.executable, "-m", "service.sentiment.backends.prepacked"]
        make += [str(models / f"{task}-{lang}") for task, lang in pairs]
        wrap = ["bash", "-c", f'echo $$ > {cgroup.path}/cgroup.procs && exec "$@"', "soak"]
        subprocess.run([*wrap, *make], cwd=ROOT, check=True, timeout=1800)
        server = launch(
            tmp_path / f"{name}.log",
            "--timeout-graceful-shutdown",
            "25",
            supervised=True,
            cgroup=cgroup.path,
            **env,
        )
        process = server.process
        samples: list[dict[str, float]] = []
        try:
            server.wait_healthy(120)
            (worker,) = server.worker_pids()
            faults_start = worker_figures(worker)["major_faults"]
            stop, tally, done = threading.Event(), Tally(), []
            rotation = Rotation(pairs, page)
            threads = [
                threading.Thread(target=client, args=(server, rotation, seed, stop, tally, done), daemon=True)
                for seed in range(CLIENTS)
            ]
            started = time.monotonic()
            for thread in threads:
                thread.start()
            workers_seen = {worker}
            while time.monotonic() - started < seconds:
                time.sleep(SAMPLE_EVERY_S)
                workers_seen.update(server.worker_pids())
                with suppress(psutil.NoSuchProcess, ValueError, FileNotFoundError):
                    samples.append({**worker_figures(worker), "cgroup_mb": cgroup.usage_mb()})
            stop.set()
            for thread in threads:
                thread.join(timeout=360)
            elapsed = time.monotonic() - started
            memory = server.request("GET", "/memory").json()
            faults = worker_figures(worker)["major_faults"] - faults_start
            server.process.send_signal(15)
            server.process.wait(timeout=60)
        finally:
            with suppress(ProcessLookupError):
                os.killpg(process.pid, 9)
            process.wait(10)
        oom_kills, cgroup_peak = cgroup.oom_kills(), cgroup.peak_mb()

    def spread(key: str) -> dict[str, float]:
        values = [sample[key] for sample in samples]
        return {"median": round(statistics.median(values), 1), "max": round(max(values), 1)} if values else {}

    return {
        "run": name,
        "seconds": round(elapsed, 1),
        "requests": sum(tally.statuses.values()),
        "texts_per_s": round(sum(done) / elapsed, 2),
        "statuses": dict(sorted(tally.statuses.items())),
        "retried_503_by_code": dict(tally.backpressure),
        "failures": tally.failures[:20],
        "oom_kills": oom_kills,
        "worker_restarts": len(workers_seen) - 1,
        "rss_mb": spread("VmRSS"),
        "anon_mb": spread("RssAnon"),
        "file_mb": spread("RssFile"),
        "memory_current_mb": spread("cgroup_mb"),
        "memory_peak_mb": cgroup_peak and round(cgroup_peak, 1),
        "major_faults": faults,
        "evictions": memory["counters"]["evictions"],
        "loaded": [item["key"] for item in memory["loaded"]],
        "budget": [memory["budget_mb"], memory["budget_source"]],
    }


def test_eight_models_and_ocr_in_a_512_mb_cgroup(tmp_path):
    seconds = float(os.environ.get("SOAK_SECONDS", "600"))
    models = models_dir()
    if tessdata_missing():
        pytest.skip(tessdata_missing())
    one = soak(tmp_path, models, [("sentiment", "es")], seconds, "one-model")
    eight = soak(tmp_path, models, PAIRS, seconds, "eight-models")
    report = {
        "one_model": one,
        "eight_models": eight,
        "texts_per_s_ratio": round(eight["texts_per_s"] / one["texts_per_s"], 3),
    }
    out = Path(os.environ.get("SOAK_REPORT", tmp_path / "soak-models.json"))
    out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    for run in (one, eight):
        assert run["oom_kills"] == 0, report
        assert run["worker_restarts"] == 0, report
        assert run["failures"] == [], report
        assert not run["retried_503_by_code"], report
        assert run["requests"] > CLIENTS, report
    assert eight["budget"][0] == LIMIT_MB, report
