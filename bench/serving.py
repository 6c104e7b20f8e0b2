"""Benchmark the backends side by side, each in its own fresh uvicorn server process.

    python -m bench [--source DIR] [--requests 1000] [--backends onnx,torch]
    python -m bench --concurrency 1,8,32 [--seconds 20] [--backends onnx]
    python -m bench --bulk 1000,100000 [--backends onnx]
    python -m bench --ocr 200 [--backends onnx]
    python -m bench --protocol 3000 [--onnx DIR]
    python -m bench --per-request tiny,DIR[,DIR...] [--baseline OTHER_CHECKOUT] [--cgroup-mb 1024]

At RoBERTuito scale by default: a model with RoBERTuito's exact shape and real tokenizer
(`../shared/models/robertuito-shape`) and random weights from a fixed seed, exported like a
real one. Memory and speed do not depend on the weights. Prints a table, then one JSON line.

--concurrency: closed-loop clients (Locust users, one text per request, tweet-sized texts) against a
server with MICRO_BATCHING on, then one with it off: texts/s, p50/p95 latency and RSS per level.
--bulk: one server, a CSV of each size through POST /analyze/file: rows/s and RSS while streaming.
--ocr N: one server with the sentiment model and OCR both loaded: its RSS after N mixed requests
(single texts, batches, OCR of a page, OCR of a page with analyze=true), then the peak RSS and
time of OCR of a 12 MP photo and of a 20-page PDF (pages/s).
All three run under MEMORY_BUDGET_MB=--budget (512 by default: Render's free plan), on --cpus cores.
--protocol N: the Hugging Face protocol's cost. One onnx server gets N requests of the same texts,
one at a time, through POST /analyze, POST /predict and POST /models/sentiment-es in alternated
rounds: the server's CPU time per request of each, side by side. Then the idle RSS of fresh servers
with and without the protocol's router (its module replaced by an empty router), alternated.
--per-request DIRS: what batching saves and what a request costs around the model. Per exported
model dir (`tiny`: a 1-layer model whose call costs ~0.1 ms, exported here), one server (start.sh's
command, one intra-op thread) per checkout (this one, and --baseline's when given), all up at once;
in alternated rounds each gets 1-text requests, requests of 16 distinct short texts, and the same
16 texts as 16 requests: the server's CPU per request of each (from /proc), and `16-in-1 / 16
singles`, the CPU of one 16-text request over 16 single ones; also how many model calls a 16-text
request made (BATCH_MAX_SIZE cuts it; /metrics' sentiment_batch_size count).
"""

import argparse
import contextlib
import csv
import http.client
import itertools
import json
import os
import random
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

from bench.server import Sampler, Server, launch, multipart
from bench.swarm import Job, Swarm

ROOT = Path(__file__).resolve().parents[1]
SHAPE = ROOT.parent / "shared" / "models" / "robertuito-shape"
MINILM = ROOT.parent / "shared" / "models" / "tweet-sentiment-minilm"
SHORT = [
    "me encanta este lugar 😍",
    "odio los lunes",
    "qué día tan bonito",
    "@usuario jajaja no puede ser",
    "el tren llega tarde otra vez",
    "gracias por todo!!",
    "#NoMásViolencia basta ya",
    "no sé qué pensar de esto",
]
WORDS = [
    "el",
    "servicio",
    "de",
    "hoy",
    "fue",
    "lento",
    "pero",
    "la",
    "gente",
    "amable",
    "y",
    "la",
    "comida",
    "muy",
    "rica",
    "aunque",
    "cara",
]


def long_text(rng: random.Random) -> str:
    """About 150 words: past the 128-token limit, so it measures the longest input."""
    return " ".join(rng.choice(WORDS) for _ in range(150))


def build_random_model(shape_dir: Path, out: Path, seed: int = 0, **shape: int) -> Path:
    """A model of the shape in `shape_dir` (with `shape` changed) with seeded random weights, plus
    its tokenizer."""
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification

    torch.manual_seed(seed)
    config = AutoConfig.from_pretrained(shape_dir)
    config.update(shape)
    AutoModelForSequenceClassification.from_config(config).save_pretrained(out)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (shape_dir / name).is_file():
            shutil.copy(shape_dir / name, out / name)
    return out


def bench_args(port: int) -> list[str]:
    """The uvicorn command these figures were always taken with (plain uvicorn, its default HTTP
    parser and access log), kept so that new figures compare with MEMORY.md's."""
    return ["-m", "uvicorn", "main:app", "--port", str(port), "--workers", "1", "--loop", "asyncio"]


class Client:
    """Keep-alive JSON requests to one launched server (latencies count no connection set-up), and
    the server's memory figures."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.port = server.port
        self.started = server.started
        self.connection: http.client.HTTPConnection | None = None

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        if self.connection is None:
            self.connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        payload = json.dumps(body) if body is not None else None
        self.connection.request(method, path, payload, {"content-type": "application/json"})
        response = self.connection.getresponse()
        return response.status, json.loads(response.read() or b"null")

    def rss_mb(self) -> float:
        return self.server.rss_mb()

    def peak_mb(self) -> float:
        return self.server.peak_mb()

    def stop(self) -> None:
        self.server.stop()
        self.server.log.unlink(missing_ok=True)


def timed(call: Callable[[], Any]) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def analyze(server: Client, body: dict[str, Any]) -> None:
    status, answer = server.request("POST", "/analyze", body)
    if status != 200:
        raise RuntimeError(f"/analyze answered {status}: {answer}")


def measure(backend: str, model: Path, port: int | None, requests: int) -> dict[str, float]:
    rng = random.Random(0)
    env = {
        "BACKEND": backend,
        "MODEL_SENTIMENT_ES": str(model),
        "NUM_THREADS": "1",
        "MEMORY_BUDGET_MB": "8192",
    }
    server = start_server(env, port, None)
    try:
        rss_start = server.rss_mb()
        analyze(server, {"text": SHORT[0]})
        cold_start = time.perf_counter() - server.started
        rss_first = server.rss_mb()
        for index in range(requests):
            kind = index % 4
            if kind == 0:
                analyze(server, {"text": rng.choice(SHORT)})
            elif kind == 1:
                analyze(server, {"text": long_text(rng)})
            elif kind == 2:
                analyze(server, {"texts": rng.sample(SHORT, 4)})
            else:
                analyze(server, {"texts": [long_text(rng) if i % 2 else rng.choice(SHORT) for i in range(8)]})
        rss_after = server.rss_mb()
        latencies = sorted(timed(lambda: analyze(server, {"text": rng.choice(SHORT)})) for _ in range(200))
        batch = [rng.choice(SHORT) if i % 2 else long_text(rng)[:200] for i in range(32)]
        batch_seconds = [timed(lambda: analyze(server, {"texts": batch})) for _ in range(10)]
        return {
            "rss_start_mb": round(rss_start, 1),
            "rss_first_mb": round(rss_first, 1),
            "rss_after_mb": round(rss_after, 1),
            "peak_rss_mb": round(server.peak_mb(), 1),
            "p50_ms": round(statistics.median(latencies) * 1000, 2),
            "p95_ms": round(latencies[int(len(latencies) * 0.95)] * 1000, 2),
            "batch32_texts_per_s": round(32 / statistics.median(batch_seconds), 1),
            "cold_start_s": round(cold_start, 2),
        }
    finally:
        server.stop()


def tweet(rng: random.Random) -> str:
    """A short tweet three times in four, else a long one (280 characters)."""
    return long_text(rng)[:280] if rng.random() < 0.25 else rng.choice(SHORT)


class RssSampler(Sampler):
    """The server's highest RSS while a measurement runs, sampled every 20 ms."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.max_mb = server.rss_mb()

    def sample(self) -> bool:
        self.max_mb = max(self.max_mb, self.server.rss_mb())
        return True


def start_server(env: dict[str, str], port: int | None, cpus: int | None) -> Client:
    """A server (on a free port unless --port), on its first `cpus` cores only when given (as a
    container's CPU limit would), answering /health."""
    handle, log = tempfile.mkstemp(prefix="bench-server-", suffix=".log")
    os.close(handle)
    server = launch(Path(log), python_args=bench_args, port=port, cpus=cpus, **env)
    try:
        server.wait_healthy(120)  # its error carries the log's tail
    except Exception:
        server.stop()
        Path(log).unlink(missing_ok=True)
        raise
    return Client(server)


def batched_texts(server: Client) -> tuple[int, int]:
    """Texts and model batches the server's micro-batchers have run so far."""
    server.connection = None  # uvicorn closes idle keep-alive connections
    _, system = server.request("GET", "/system")
    stats = system["batching"].values()
    return sum(s["texts"] for s in stats), sum(s["batches"] for s in stats)


def measure_concurrency(
    env: dict[str, str], port: int | None, levels: list[int], seconds: float, cpus: int | None
) -> dict[int, dict]:
    """Per level, that many closed-loop clients (Locust users, one tweet per request, user i's
    texts seeded with i) for `seconds`: texts/s, p50/p95 latency, refusals, RSS."""
    with Swarm() as swarm:  # Locust's child starts while the server loads, not inside a measurement
        server = start_server(env, port, cpus)
        try:
            for _ in range(20):  # load the model, warm the session
                analyze(server, {"text": SHORT[0]})
            results = {}
            for clients in levels:
                texts_before, batches_before = batched_texts(server)
                job = Job(server.server.url, clients, timeout_s=300, text=tweet, seconds=seconds)
                with RssSampler(server) as rss:
                    outcome = swarm.run(job)
                elapsed = outcome.ended - outcome.started
                latencies = sorted(record.seconds for record in outcome.records if record.status == 200)
                refused = [record.status for record in outcome.records if record.status != 200]
                results[clients] = {
                    "texts_per_s": round(len(latencies) / elapsed, 1),
                    "p50_ms": round(statistics.median(latencies) * 1000, 1),
                    "p95_ms": round(latencies[int(len(latencies) * 0.95)] * 1000, 1),
                    "refused": len(refused),
                    "rss_max_mb": round(rss.max_mb, 1),
                }
                texts, batches = batched_texts(server)
                if batches > batches_before:
                    mean = (texts - texts_before) / (batches - batches_before)
                    results[clients]["mean_batch"] = round(mean, 2)
            results[levels[-1]]["peak_rss_mb"] = round(server.peak_mb(), 1)
            return results
        finally:
            server.stop()


def _multipart_csv(path: Path, rows: int, boundary: str) -> None:
    """A multipart body: the id_column field, then a CSV of `rows` tweets as the file."""
    rng = random.Random(rows)
    with path.open("w", encoding="utf-8", newline="") as body:
        body.write(f'--{boundary}\r\nContent-Disposition: form-data; name="id_column"\r\n\r\nid\r\n')
        body.write(f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="rows.csv"\r\n')
        body.write("Content-Type: text/csv\r\n\r\n")
        writer = csv.writer(body)
        writer.writerow(["id", "text"])
        for index in range(rows):
            writer.writerow([index, tweet(rng)])
        body.write(f"\r\n--{boundary}--\r\n")


def measure_bulk(
    env: dict[str, str], port: int | None, sizes: list[int], work: Path, cpus: int | None
) -> dict[int, dict]:
    server = start_server(env, port, cpus)
    try:
        analyze(server, {"text": SHORT[0]})
        results = {}
        for rows in sizes:
            boundary = f"bench{rows}"
            path = work / f"bulk-{rows}.multipart"
            _multipart_csv(path, rows, boundary)
            rss_before = server.rss_mb()
            connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=3600)
            start = time.perf_counter()
            with RssSampler(server) as rss, path.open("rb") as body:
                headers = {
                    "content-type": f"multipart/form-data; boundary={boundary}",
                    "content-length": str(path.stat().st_size),
                }
                connection.request("POST", "/analyze/file", body, headers)
                response = connection.getresponse()
                lines = errors = 0
                while line := response.readline():
                    lines += 1
                    errors += b'"error"' in line
            elapsed = time.perf_counter() - start
            connection.close()
            path.unlink()
            if response.status != 200 or lines != rows:
                raise RuntimeError(f"/analyze/file answered {response.status} with {lines} of {rows} lines")
            results[rows] = {
                "rows_per_s": round(rows / elapsed, 1),
                "error_rows": errors,
                "rss_before_mb": round(rss_before, 1),
                "rss_max_mb": round(rss.max_mb, 1),
                "rss_after_mb": round(server.rss_mb(), 1),
            }
        return results
    finally:
        server.stop()


def ocr(server: Client, data: bytes, content_type: str, **fields: str) -> dict[str, Any]:
    body, form_type = multipart({"lang": "es", **fields}, "upload", data, content_type)
    server.connection = None
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=600)
    connection.request("POST", "/ocr", body, {"content-type": form_type})
    response = connection.getresponse()
    answer = json.loads(response.read())
    connection.close()
    if response.status != 200:
        raise RuntimeError(f"/ocr answered {response.status}: {answer}")
    return answer


def measure_ocr(env: dict[str, str], port: int | None, requests: int, cpus: int | None) -> dict[str, float]:
    """The sentiment model and OCR in one server: RSS after mixed requests, then OCR peaks."""
    # Imported here: PIL and the page generators are needed by this measurement only.
    from bench.documents import encode, letter_page, pdf_of, photo_12mp

    rng = random.Random(0)
    page = encode(letter_page(), "PNG")
    photo = encode(photo_12mp(), "JPEG", quality=85)
    pdf = pdf_of([letter_page(seed=index) for index in range(20)])
    server = start_server(env, port, cpus)
    try:
        page_seconds = []
        for index in range(requests):
            kind = index % 4
            if kind == 0:
                analyze(server, {"text": tweet(rng)})
            elif kind == 1:
                analyze(server, {"texts": [tweet(rng) for _ in range(8)]})
            else:
                extra = {"analyze": "true"} if kind == 3 else {}
                page_seconds.append(timed(partial(ocr, server, page, "image/png", **extra)))
        server.connection = None
        _, memory = server.request("GET", "/memory")
        figures = {
            "rss_after_mixed_mb": round(server.rss_mb(), 1),
            "loaded": sorted(item["key"] for item in memory["loaded"]),
            "page_s_p50": round(statistics.median(page_seconds), 2),
        }
        documents = (("photo_12mp", photo, "image/jpeg"), ("pdf_20_pages", pdf, "application/pdf"))
        for name, data, content_type in documents:
            rss_before = server.rss_mb()
            with RssSampler(server) as rss:
                seconds = timed(partial(ocr, server, data, content_type))
            figures[f"{name}_rss_before_mb"] = round(rss_before, 1)
            figures[f"{name}_peak_mb"] = round(rss.max_mb, 1)
            figures[f"{name}_s"] = round(seconds, 2)
        figures["pdf_pages_per_s"] = round(20 / figures["pdf_20_pages_s"], 2)
        figures["rss_end_mb"] = round(server.rss_mb(), 1)
        figures["peak_rss_mb"] = round(server.peak_mb(), 1)
        return figures
    finally:
        server.stop()


PROTOCOL_ROUTES = {
    "/analyze": lambda text: {"text": text},
    "/predict": lambda text: {"inputs": text},
    "/models/sentiment-es": lambda text: {"inputs": text},
}
# The server command of --protocol's idle servers: the same for both, but for the protocol's router,
# replaced by an empty one before main.py imports it (so nothing of service.protocol is loaded).
SERVE_WITHOUT_PROTOCOL = """
import sys, types, uvicorn
from fastapi import APIRouter
if sys.argv[1] == "without":
    sys.modules["service.protocol.router"] = types.SimpleNamespace(router=APIRouter())
uvicorn.run("main:app", host="127.0.0.1", port=int(sys.argv[2]), loop="asyncio", log_level="warning")
"""


def protocol_server_args(variant: str, port: int) -> list[str]:
    return ["-c", SERVE_WITHOUT_PROTOCOL, variant, str(port)]


def measure_protocol(model: Path, requests: int, rounds: int = 10) -> dict[str, Any]:
    """--protocol: CPU ms per request of each route on one server, then idle RSS with and without."""
    rng = random.Random(0)
    texts = [
        rng.choice(SHORT) if index % 2 else long_text(rng)[:280] for index in range(requests // (3 * rounds))
    ]
    env = {
        "BACKEND": "onnx",
        "MODEL_SENTIMENT_ES": str(model),
        "NUM_THREADS": "1",
        "MEMORY_BUDGET_MB": "8192",
    }
    server = start_server(env, None, None)
    cpu: dict[str, list[float]] = {route: [] for route in PROTOCOL_ROUTES}
    try:
        for route, body in PROTOCOL_ROUTES.items():  # the model loads, every route's code is warm
            status, answer = server.request("POST", route, body(texts[0]))
            if status != 200:
                raise RuntimeError(f"{route} answered {status}: {answer}")
        for round_index in range(rounds):
            order = list(PROTOCOL_ROUTES)[round_index % 3 :] + list(PROTOCOL_ROUTES)[: round_index % 3]
            for route in order:
                before = server.server.cpu_seconds()
                for text in texts:
                    server.request("POST", route, PROTOCOL_ROUTES[route](text))
                cpu[route].append((server.server.cpu_seconds() - before) / len(texts) * 1000)
    finally:
        server.stop()
    figures: dict[str, Any] = {
        f"cpu_ms {route}": round(statistics.fmean(samples), 3) for route, samples in cpu.items()
    }
    figures["round_spread_ms /analyze"] = round(statistics.stdev(cpu["/analyze"]), 3)
    for route in ("/predict", "/models/sentiment-es"):
        figures[f"{route} vs /analyze"] = round(
            statistics.fmean(cpu[route]) / statistics.fmean(cpu["/analyze"]), 3
        )
        # Paired by round (each round runs every route), so drift of a shared machine cancels out.
        differences = [ms - base for ms, base in zip(cpu[route], cpu["/analyze"], strict=True)]
        figures[f"{route} - /analyze ms"] = round(statistics.fmean(differences), 3)
        figures[f"{route} - /analyze ms, std error"] = round(statistics.stdev(differences) / rounds**0.5, 3)
    idle: dict[str, list[float]] = {"with": [], "without": []}
    for variant in ("with", "without") * 3:
        log = Path(tempfile.mkstemp(prefix="bench-server-", suffix=".log")[1])
        idle_server = launch(log, python_args=partial(protocol_server_args, variant), **env)
        try:
            idle_server.wait_healthy(120)
            time.sleep(2)
            idle[variant].append(idle_server.rss_mb())
        finally:
            idle_server.stop()
            log.unlink(missing_ok=True)
    for variant, samples in idle.items():
        figures[f"idle_rss_mb {variant} protocol"] = round(statistics.median(samples), 1)
    figures["idle_rss_mb protocol adds"] = round(
        statistics.median(idle["with"]) - statistics.median(idle["without"]), 1
    )
    figures["texts_per_round"] = len(texts)
    return figures


def distinct_texts(count: int, offset: int) -> list[str]:
    """`count` short tweets, none the same (identical texts are computed once), preprocessed to
    about the same length so that a batch of them pads little."""
    return [f"{SHORT[index % len(SHORT)]} {offset + index}" for index in range(count)]


def cpu_ms_per_request(server: Client, bodies: list[dict[str, Any]] | int) -> float:
    """The server's CPU (user + system, all its threads) per request of `bodies` to /analyze (a
    count: that many GET /health, the floor of any route), sent one by one on a new connection
    (uvicorn closes one left idle while the other servers were measured)."""
    server.connection = None
    before = server.server.cpu_seconds()
    if isinstance(bodies, int):
        for _ in range(bodies):
            server.request("GET", "/health")
    else:
        for body in bodies:
            analyze(server, body)
    count = bodies if isinstance(bodies, int) else len(bodies)
    return (server.server.cpu_seconds() - before) / count * 1000


def model_calls(server: Client) -> float:
    """Model calls made so far: the count of /metrics' `sentiment_batch_size` histogram."""
    response = server.server.request("GET", "/metrics")
    for line in response.body.decode().splitlines():
        if line.startswith("sentiment_batch_size_count"):
            return float(line.split()[-1])
    return 0.0


def measure_per_request(
    models: list[Path], checkouts: dict[str, Path], rounds: int, seconds: float, cgroup_mb: int | None = None
) -> dict[str, dict[str, Any]]:
    """--per-request: per model and checkout, CPU ms per request of each kind, alternated by round.
    `cgroup_mb`: each server in a memory cgroup of its own with that limit as its budget (as on
    Render, where the registry reads the cgroup's files too)."""
    from bench.filebacked import memory_cgroup

    results: dict[str, dict[str, Any]] = {}
    for model in models:
        env = {
            "BACKEND": "onnx",
            "MODEL_SENTIMENT_ES": str(model),
            "NUM_THREADS": "1",
            "MEMORY_BUDGET_MB": None if cgroup_mb else "8192",
        }
        servers: dict[str, Client] = {}
        cgroups = contextlib.ExitStack()
        try:
            for name, root in checkouts.items():
                log = Path(tempfile.mkstemp(prefix="bench-server-", suffix=".log")[1])
                group = (
                    cgroups.enter_context(memory_cgroup(cgroup_mb, f"per-request-{name}"))
                    if cgroup_mb
                    else None
                )
                servers[name] = Client(launch(log, root=root, cgroup=group, **env))
            for server in servers.values():
                server.server.wait_healthy(120)
                analyze(server, {"text": SHORT[0]})
                server.server.wait_for_variant()
                server.connection = None  # left idle meanwhile: uvicorn may have closed it
                analyze(server, {"texts": distinct_texts(16, 0)})
            # Enough requests for ~`seconds` of CPU per kind and round (/proc counts in 10 ms ticks).
            single_ms = statistics.median(
                cpu_ms_per_request(server, [{"text": text} for text in distinct_texts(20, 100)])
                for server in servers.values()
            )
            singles = max(20, int(seconds * 1000 / single_ms))
            batches = max(3, singles // 16)
            samples: dict[str, dict[str, list[float]]] = {
                name: {
                    "GET /health": [],
                    "1 text": [],
                    "16 texts in 1": [],
                    "16 texts as 16": [],
                    "model calls per 16": [],
                }
                for name in servers
            }
            for round_index in range(rounds):
                order = (
                    list(servers)[round_index % len(servers) :] + list(servers)[: round_index % len(servers)]
                )
                for name in order:
                    server, offset = servers[name], 1000 * (round_index + 1)
                    texts = distinct_texts(16 * batches, offset)
                    kinds = samples[name]
                    kinds["GET /health"].append(cpu_ms_per_request(server, max(200, singles)))
                    kinds["1 text"].append(
                        cpu_ms_per_request(
                            server, [{"text": text} for text in distinct_texts(singles, offset)]
                        )
                    )
                    groups = [texts[start : start + 16] for start in range(0, len(texts), 16)]
                    calls_before = model_calls(server)
                    kinds["16 texts in 1"].append(cpu_ms_per_request(server, [{"texts": g} for g in groups]))
                    kinds["model calls per 16"].append((model_calls(server) - calls_before) / len(groups))
                    kinds["16 texts as 16"].append(
                        16 * cpu_ms_per_request(server, [{"text": text} for text in texts])
                    )
        finally:
            for server in servers.values():
                server.stop()
            cgroups.close()
        manifest = json.loads((model / "manifest.json").read_text())
        recipe = (manifest.get("quantization") or {}).get("recipe", "fp32")
        for name, kinds in samples.items():
            figures: dict[str, Any] = {kind: round(statistics.median(ms), 2) for kind, ms in kinds.items()}
            figures["16-in-1 / 16 singles"] = round(figures["16 texts in 1"] / figures["16 texts as 16"], 3)
            figures["rounds (1 text)"] = [round(ms, 2) for ms in kinds["1 text"]]
            results[f"{model.name} ({recipe}) {name}"] = figures
    return results


def next_ports(first: int | None) -> Iterator[int | None]:
    """--port, --port + 1, ... when given; else None: each server on a free port."""
    return itertools.count(first) if first else itertools.repeat(None)


def print_table(results: dict[str, dict[str, float]]) -> None:
    backends = list(results)
    print(f"{'metric':<22}" + "".join(f"{b:>12}" for b in backends))
    for metric in next(iter(results.values())):
        print(f"{metric:<22}" + "".join(f"{results[b][metric]:>12}" for b in backends))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--source", type=Path, help="a transformers model dir (default: RoBERTuito-shape, random)"
    )
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--backends", default="onnx,torch")
    parser.add_argument("--port", type=int, help="first port of the servers (default: free ports)")
    parser.add_argument("--concurrency", help="client counts, e.g. 1,8,32: micro-batching on vs off")
    parser.add_argument("--seconds", type=float, default=20.0, help="per concurrency level")
    parser.add_argument("--bulk", help="CSV row counts, e.g. 1000,100000, through POST /analyze/file")
    parser.add_argument("--ocr", type=int, help="mixed sentiment + OCR requests, then the OCR peaks")
    parser.add_argument("--onnx", type=Path, help="an exported model dir: no export")
    parser.add_argument("--budget", default="512", help="MEMORY_BUDGET_MB of the servers")
    parser.add_argument("--threads", help="NUM_THREADS of the servers (default: detected)")
    parser.add_argument("--cpus", type=int, help="run the servers on this many cores")
    parser.add_argument("--protocol", type=int, help="requests: /predict's CPU and RSS beside /analyze's")
    parser.add_argument("--per-request", help="exported model dirs, comma-separated: CPU per request")
    parser.add_argument(
        "--baseline", type=Path, help="--per-request: another checkout's server beside this one"
    )
    parser.add_argument("--rounds", type=int, default=3, help="--per-request: alternated rounds")
    parser.add_argument(
        "--cpu-seconds", type=float, default=1.5, help="--per-request: CPU seconds per kind and round"
    )
    parser.add_argument(
        "--cgroup-mb", type=int, help="--per-request: each server in a memory cgroup, its budget"
    )
    args = parser.parse_args()
    if args.per_request:
        per_request(args)
        return
    if args.protocol:
        args.backends = "onnx"

    with tempfile.TemporaryDirectory(prefix="bench-") as work:
        models = {}
        if "torch" in args.backends or not args.onnx:
            models["torch"] = args.source or build_random_model(SHAPE, Path(work) / "robertuito-random")
        if "onnx" in args.backends:
            if args.onnx:
                models["onnx"] = args.onnx
            else:  # the export stack is imported only when it is needed
                from service.export.build import export_model

                models["onnx"] = Path(work) / "onnx"
                export_model("sentiment", "es", str(models["torch"]), models["onnx"])
        ports = next_ports(args.port)
        if args.protocol:
            figures = measure_protocol(models["onnx"], args.protocol)
            for metric, value in figures.items():
                print(f"{metric:<40}{value:>12}")
            print(json.dumps(figures))
            return
        if args.concurrency or args.bulk or args.ocr:
            throughput(args, models, Path(work))
            return
        results = {
            backend: measure(backend, models[backend], next(ports), args.requests)
            for backend in args.backends.split(",")
        }
    print_table(results)
    summary: dict[str, Any] = {backend: figures for backend, figures in results.items()}
    if {"onnx", "torch"} <= set(results):
        summary["rss_ratio"] = round(results["onnx"]["rss_after_mb"] / results["torch"]["rss_after_mb"], 3)
        summary["latency_ratio"] = round(results["onnx"]["p50_ms"] / results["torch"]["p50_ms"], 3)
    print(json.dumps(summary))


def tiny_model(work: Path) -> Path:
    """MiniLM's tokenizer on a 1-layer, 32-wide encoder with random weights, exported fp32: its call
    costs ~0.1 ms, so what a request costs is nearly all the service around the model."""
    from service.export.build import export_model

    source = build_random_model(
        MINILM,
        work / "tiny-src",
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
    )
    export_model("sentiment", "es", str(source), work / "tiny", recipe=None)
    return work / "tiny"


def per_request(args: argparse.Namespace) -> None:
    """--per-request: the CPU flags, a table per model and checkout, then one JSON line."""
    from service.sentiment.backends.prepacked import cpu_features

    checkouts = {"this": ROOT} | ({"baseline": args.baseline.resolve()} if args.baseline else {})
    flags = cpu_features()
    print("cpu flags:", " ".join(flags))
    with tempfile.TemporaryDirectory(prefix="bench-") as work:
        models = [
            tiny_model(Path(work)) if path == "tiny" else Path(path).resolve()
            for path in args.per_request.split(",")
        ]
        results = measure_per_request(models, checkouts, args.rounds, args.cpu_seconds, args.cgroup_mb)
    print(
        f"{'server CPU ms per request':<44}" + "".join(f"{kind:>22}" for kind in next(iter(results.values())))
    )
    for name, figures in results.items():
        print(f"{name:<44}" + "".join(f"{value!s:>22}" for value in figures.values()))
    print(json.dumps({"cpu_flags": flags, "load_average": os.getloadavg(), **results}))


def throughput(args: argparse.Namespace, models: dict[str, Path], work: Path) -> None:
    """--concurrency, --bulk and --ocr: each backend's servers in turn, then the table and one JSON line."""
    columns: dict[str, dict] = {}
    summary: dict[str, Any] = {}
    ports = next_ports(args.port)
    for backend in args.backends.split(","):
        env = {
            "BACKEND": backend,
            "MODEL_SENTIMENT_ES": str(models[backend]),
            "MEMORY_BUDGET_MB": args.budget,
        }
        if args.threads:
            env["NUM_THREADS"] = args.threads
        if args.concurrency:
            levels = [int(level) for level in args.concurrency.split(",")]
            runs = {}
            for batching in ("on", "off"):
                port = next(ports)
                env["MICRO_BATCHING"] = "true" if batching == "on" else "false"
                runs[batching] = measure_concurrency(env, port, levels, args.seconds, args.cpus)
                for clients, figures in runs[batching].items():
                    columns[f"{backend} {batching} c={clients}"] = figures
            single_p50 = runs["on"][levels[0]]["p50_ms"]
            summary[backend] = {
                "runs": runs,
                "speedup_on_vs_off": {
                    c: round(runs["on"][c]["texts_per_s"] / runs["off"][c]["texts_per_s"], 2) for c in levels
                },
                "p95_on_vs_off": {
                    c: round(runs["on"][c]["p95_ms"] / runs["off"][c]["p95_ms"], 2) for c in levels
                },
                "p95_on_vs_single_p50": {c: round(runs["on"][c]["p95_ms"] / single_p50, 2) for c in levels},
            }
        if args.bulk:
            port = next(ports)
            env.pop("MICRO_BATCHING", None)
            sizes = [int(size) for size in args.bulk.split(",")]
            bulk = measure_bulk(env, port, sizes, work, args.cpus)
            for rows, figures in bulk.items():
                columns[f"{backend} {rows} rows"] = figures
            summary.setdefault(backend, {})["bulk"] = bulk
        if args.ocr:
            port = next(ports)
            env.pop("MICRO_BATCHING", None)
            figures = measure_ocr(env, port, args.ocr, args.cpus)
            columns[f"{backend} sentiment+ocr"] = figures
            summary.setdefault(backend, {})["ocr"] = figures
    metrics = list(dict.fromkeys(metric for figures in columns.values() for metric in figures))
    print(f"{'metric':<14}" + "".join(f"{name:>22}" for name in columns))
    for metric in metrics:
        print(f"{metric:<14}" + "".join(f"{figures.get(metric, '')!s:>22}" for figures in columns.values()))
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
