"""Peak memory of hostile uploads: `python -m bench.hostile [--concurrency 4] [--root DIR]`,
and what client-made request labels cost: `python -m bench.hostile --labels 10000 [--root DIR]`.

Each upload of `bench/hostile_files.py` goes to a fresh server (512 MB budget, OCR only), alone or
N at once, and the line printed says the answers, the server's VmHWM and the OCR worker's (sampled
every 20 ms: a worker killed by its cap is replaced). `--root` serves another checkout's code, so
the same uploads measure the code before a change and after it in one run.
"""

import argparse
import tempfile
import threading
import time
from pathlib import Path

import psutil

from bench import hostile_files
from bench.server import ROOT, multipart, pipeline, running_server

NAMES = [
    "palette_png",
    "transparent_png",
    "sixteen_bit_png",
    "progressive_jpeg",
    "lzw_tiff",
    "inflating_pdf",
    "image_in_form_pdf",
    "looping_page_tree_pdf",
    "self_drawing_form_pdf",
    "dense_text_layer_pdf",
]


def _hwm_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def measure(name: str, data: bytes, concurrency: int, root: Path | None) -> str:
    body, content_type = multipart({"lang": "es"}, "upload", data, "application/octet-stream")
    statuses: list[int] = []
    workdir = Path(tempfile.mkdtemp(prefix="hostile-"))
    with running_server(
        workdir, root=root or ROOT, NUM_THREADS="1", MEMORY_BUDGET_MB="512", ONNX_DIR=str(workdir)
    ) as server:

        def send() -> None:
            answer = server.request("POST", "/ocr", body, {"Content-Type": content_type}, timeout=600)
            statuses.append(answer.status)

        threads = [threading.Thread(target=send) for _ in range(concurrency)]
        for thread in threads:
            thread.start()
        worker_peak = 0.0
        while any(thread.is_alive() for thread in threads):
            for child in psutil.Process(server.pid).children():
                worker_peak = max(worker_peak, _hwm_mb(child.pid))
            time.sleep(0.02)
        server_peak = server.peak_mb()
    return (
        f"{name:24s} x{concurrency} {len(data):>9,} B  answers {sorted(statuses)}  "
        f"server {server_peak:.0f} MB  worker {worker_peak:.0f} MB  total {server_peak + worker_peak:.0f} MB"
    )


def made_up_requests(count: int, offset: int = 0) -> list[bytes]:
    """Bodiless requests whose every method, path and query string is new: made-up methods on
    made-up paths, GET on made-up paths, made-up methods on a real route (405)."""
    heads = []
    for i in range(offset, offset + count):
        method = ("GET", f"X{i:05d}M", f"Y{i:05d}M")[i % 3]
        path = "/health" if i % 3 == 2 else f"/n{i}/{i * 7}"
        heads.append(f"{method} {path}?q={i}&r=x{i} HTTP/1.1\r\nHost: a\r\n\r\n".encode())
    return heads


def labels(count: int, root: Path | None) -> str:
    """/metrics' size and the server's anonymous memory before and after `count` made-up requests."""
    workdir = Path(tempfile.mkdtemp(prefix="labels-"))
    with running_server(workdir, root=root or ROOT, NUM_THREADS="1", ONNX_DIR=str(workdir)) as server:
        before = len(server.request("GET", "/metrics").body), server.anon_mb()
        pipeline(server, made_up_requests(count))
        after = len(server.request("GET", "/metrics").body), server.anon_mb()
        peak = server.peak_mb()
    return (
        f"{root or ROOT}: {count:,} made-up requests: "
        f"/metrics {before[0] / 1024:.1f} -> {after[0] / 1024:.1f} KB, "
        f"anonymous {before[1]:.1f} -> {after[1]:.1f} MB, peak RSS {peak:.1f} MB"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--concurrency", type=int, default=1, help="copies of each upload sent at once")
    parser.add_argument("--root", type=Path, help="serve this checkout's code (default: this one)")
    parser.add_argument("--only", nargs="*", choices=NAMES, default=NAMES)
    parser.add_argument("--labels", type=int, metavar="N", help="instead: N made-up methods, paths, queries")
    args = parser.parse_args()
    if args.labels:
        print(labels(args.labels, args.root))
        return
    for name in args.only:
        print(measure(name, getattr(hostile_files, name)(), args.concurrency, args.root), flush=True)


if __name__ == "__main__":
    main()
