"""OCR uploads that wait, beside /analyze: `python -m bench.ocr_flood --model DIR [--root DIR]`.

One slow upload (a 3-page TIFF of letters) runs first; once /memory shows its reservation, N - 1
more letter pages are sent at once, while one client sends ordinary /analyze requests one after
the other and /memory is read every 50 ms. Printed: the uploads' answers (how many admitted, how
fast the refusals came and with which Retry-After), /analyze's answers and latencies, the most
/memory reported reserved, and the server's RSS (and the OCR worker's) at their highest.
`--large-mb 15` floods with 15 MB uploads instead: what waiting uploads hold in server memory.
`--root` serves another checkout's code, so one run measures the code before a change and after it.
tests/ops/test_ocr_queue.py runs the same flood in a real 512 MB memory cgroup.
"""

import argparse
import json
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from bench.documents import encode, letter_page
from bench.server import ROOT, Server, multipart, running_server

ANALYZE_BODY = json.dumps({"text": "¡Qué buen día hace hoy!", "lang": "es"}).encode()


@dataclass
class Flood:
    uploads: list[tuple[int, float, str | None]] = field(default_factory=list)  # status, s, Retry-After
    analyze: list[tuple[int, float]] = field(default_factory=list)  # status, seconds
    max_reserved_mb: float = 0.0
    max_used_mb: float = 0.0
    max_rss_mb: float = 0.0  # the server's and the OCR worker's RSS together, as /memory says
    max_anon_mb: float = 0.0  # the server process's anonymous memory: where held upload bytes show
    anon_before_mb: float = 0.0  # the same before the flood, the model loaded

    def admitted(self) -> int:
        return sum(status == 200 for status, _, _ in self.uploads)

    def summary(self) -> str:
        statuses = Counter(status for status, _, _ in self.uploads)
        refusals = [seconds for status, seconds, _ in self.uploads if status == 503]
        retry = sorted({after for status, _, after in self.uploads if status == 503})
        latencies = sorted(seconds for _, seconds in self.analyze) or [0.0]
        analyze = Counter(status for status, _ in self.analyze)
        return (
            f"uploads {dict(statuses)}; refusals within {max(refusals, default=0):.2f} s, "
            f"Retry-After {retry}; /analyze {dict(analyze)}, median {latencies[len(latencies) // 2]:.2f} s, "
            f"max {latencies[-1]:.2f} s; /memory: reserved at most {self.max_reserved_mb:.0f} MB, "
            f"used {self.max_used_mb:.0f} MB, server anonymous {self.anon_before_mb:.0f} -> "
            f"{self.max_anon_mb:.0f} MB, "
            f"server + worker RSS {self.max_rss_mb:.0f} MB"
        )


def ocr_bodies(large_mb: float = 0) -> tuple[tuple[bytes, str], tuple[bytes, str]]:
    """(the slow first upload: a 3-page TIFF of letters, the flood's upload: a letter page as PNG,
    or with `large_mb` a blank uncompressed TIFF of that many MB) as multipart bodies."""
    pages = [letter_page(seed=seed) for seed in range(3)]
    slow = encode(pages[0], "TIFF", save_all=True, append_images=pages[1:], compression="tiff_lzw")
    if large_mb:
        side = int((large_mb * 2**20) ** 0.5)
        flood_part = ("blank.tiff", encode(Image.new("L", (side, side), 255), "TIFF"), "image/tiff")
    else:
        flood_part = ("letter.png", encode(pages[0]), "image/png")
    return multipart({"lang": "es"}, "letters.tiff", slow, "image/tiff"), multipart(
        {"lang": "es"}, *flood_part
    )


def flood(server: Server, uploads: int = 30, large_mb: float = 0, timeout_s: float = 600) -> Flood:
    """The flood against a running server with a sentiment model for `lang=es`."""
    (slow, slow_type), (page, page_type) = ocr_bodies(large_mb)
    result = Flood()
    done = threading.Event()
    json_type = {"Content-Type": "application/json"}
    assert server.request("POST", "/analyze", ANALYZE_BODY, json_type).status == 200  # the model loaded
    result.anon_before_mb = server.request("GET", "/memory").json()["anon_mb"]

    def upload(body: bytes, content_type: str) -> None:
        started = time.monotonic()
        answer = server.request("POST", "/ocr", body, {"Content-Type": content_type}, timeout=timeout_s)
        result.uploads.append((answer.status, time.monotonic() - started, answer.headers.get("retry-after")))

    def watch_memory() -> None:
        while not done.is_set():
            report = server.request("GET", "/memory").json()
            result.max_reserved_mb = max(result.max_reserved_mb, report["reserved_mb"])
            result.max_used_mb = max(result.max_used_mb, report["used_mb"])
            result.max_rss_mb = max(result.max_rss_mb, report["rss_mb"] + report["worker_rss_mb"])
            result.max_anon_mb = max(result.max_anon_mb, report["anon_mb"])
            time.sleep(0.05)

    def analyze() -> None:
        while not done.is_set():
            started = time.monotonic()
            answer = server.request("POST", "/analyze", ANALYZE_BODY, json_type, timeout=timeout_s)
            result.analyze.append((answer.status, time.monotonic() - started))
            time.sleep(0.1)

    first = threading.Thread(target=upload, args=(slow, slow_type))
    first.start()
    deadline = time.monotonic() + 120
    while server.request("GET", "/memory").json()["reserved_mb"] == 0:  # the first one runs
        assert time.monotonic() < deadline and first.is_alive(), "the first upload never ran"
        time.sleep(0.02)
    watchers = [threading.Thread(target=watch_memory), threading.Thread(target=analyze)]
    rest = [threading.Thread(target=upload, args=(page, page_type)) for _ in range(uploads - 1)]
    for thread in watchers + rest:
        thread.start()
    for thread in [first, *rest]:
        thread.join(timeout_s)
    done.set()
    for thread in watchers:
        thread.join(timeout_s)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="an exported sentiment model dir (es)")
    parser.add_argument("--root", type=Path, help="serve this checkout's code (default: this one)")
    parser.add_argument("--uploads", type=int, default=30)
    parser.add_argument("--large-mb", type=float, default=0, help="flood with blank TIFFs of this size")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="ocr-flood-"))
    with running_server(
        workdir,
        root=args.root or ROOT,
        NUM_THREADS="1",
        MEMORY_BUDGET_MB="512",
        BACKEND="onnx",
        MODEL_SENTIMENT_ES=str(args.model.resolve()),
    ) as server:
        print(flood(server, args.uploads, args.large_mb).summary(), flush=True)


if __name__ == "__main__":
    main()
