"""Multi-page images: `python -m bench.frames [--peaks]`.

Prints the CPU seconds of counting a TIFF's pages with Pillow's `n_frames`, of Pillow seeking to
the last page, and of `service.ocr.images`'s own walk of the directory chain, for TIFFs of 3,000 to
200,000 pages and for 20 MB of empty directories (the most a 20 MB upload can ask of the walk).
`--peaks` also reads one 300-dpi letter page as a TIFF and three in one TIFF through a real server
(512 MB budget, OCR only) and prints the OCR worker's peak RSS for each.
"""

import argparse
import io
import struct
import tempfile
import threading
import time
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path

import psutil
from PIL import Image

from bench.documents import encode, letter_page
from bench.hostile_files import many_page_tiff
from bench.server import multipart, running_server
from service.ocr.images import tiff_directories


def _cpu_s(work: Callable[[], object]) -> tuple[object, float]:
    started = time.process_time()
    result = work()
    return result, time.process_time() - started


def _pillow_count(data: bytes) -> int:
    return Image.open(io.BytesIO(data)).n_frames


def _pillow_last(data: bytes, pages: int) -> int:
    image = Image.open(io.BytesIO(data))
    image.seek(pages - 1)
    image.load()
    return image.tell() + 1


def empty_directories(megabytes: int = 20) -> bytes:
    """A TIFF header and then nothing but directories of no entries, each pointing at the next."""
    count = megabytes * 2**20 // 6
    out = bytearray(b"II*\x00" + struct.pack("<I", 8))
    for index in range(count):
        out += struct.pack("<HI", 0, len(out) + 6 if index < count - 1 else 0)
    return bytes(out)


def counting() -> None:
    for pages in (3000, 30_000, 200_000):
        data = many_page_tiff(pages)
        line = f"{pages:>7,} pages {len(data) / 2**20:5.1f} MB:"
        if pages <= 30_000:  # Pillow is quadratic: 200,000 would take minutes
            counted, seconds = _cpu_s(lambda data=data: _pillow_count(data))
            line += f" Pillow n_frames {counted} in {seconds:.3f} s,"
            last, seconds = _cpu_s(lambda data=data, pages=pages: _pillow_last(data, pages))
            line += f" seek to page {last} {seconds:.3f} s,"
        walked, seconds = _cpu_s(lambda data=data: tiff_directories(data))
        print(f"{line} walk {walked} in {seconds:.3f} s", flush=True)
    data = empty_directories()
    walked, seconds = _cpu_s(lambda: tiff_directories(data))
    print(f"20 MB of empty directories: walk {walked:,} in {seconds:.2f} s", flush=True)


def _hwm_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def peaks() -> None:
    letters = [letter_page(seed=seed).resize((2550, 3300)) for seed in range(1, 4)]
    one = encode(letters[0], "TIFF", compression="tiff_lzw")
    three = encode(letters[0], "TIFF", compression="tiff_lzw", save_all=True, append_images=letters[1:])
    for name, data in (("1 page", one), ("3 pages", three)):
        workdir = Path(tempfile.mkdtemp(prefix="frames-"))
        settings = {"NUM_THREADS": "1", "MEMORY_BUDGET_MB": "512", "ONNX_DIR": str(workdir)}
        with running_server(workdir, **settings) as server:
            body, content_type = multipart({"lang": "es"}, "pages.tiff", data, "image/tiff")
            peak, done = [0.0], threading.Event()

            def watch(server=server, peak=peak, done=done) -> None:
                while not done.is_set():
                    for child in psutil.Process(server.pid).children():
                        with suppress(OSError):  # it may end between the listing and the read
                            peak[0] = max(peak[0], _hwm_mb(child.pid))
                    time.sleep(0.02)

            watcher = threading.Thread(target=watch)
            watcher.start()
            answer = server.request("POST", "/ocr", body, {"Content-Type": content_type}, timeout=300)
            done.set()
            watcher.join()
            print(
                f"{name}: {len(data) // 1024} KB, {answer.status}, worker VmHWM {peak[0]:.0f} MB, "
                f"server VmHWM {server.peak_mb():.0f} MB",
                flush=True,
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--peaks", action="store_true", help="also the OCR worker's peak on 1 and 3 pages")
    args = parser.parse_args()
    counting()
    if args.peaks:
        peaks()


if __name__ == "__main__":
    main()
