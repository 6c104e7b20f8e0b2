"""Time and memory of OCR on generated documents: `python -m bench.ocr [--pages 20]`.

Runs through the same path as the route (registry, admission, the OCR worker process that decodes
and recognises) and prints, per document: seconds, pages/s, the RSS it left and its peak RSS over
the baseline, this process and the worker together (the sum of their high-water marks). Peaks are
reset between documents through /proc/<pid>/clear_refs (Linux).

`--documents` instead compares, side by side, a text-layer PDF read from its text layer and the same
PDF OCRed (`ocr=force`), a mixed PDF, and a batch of files (`POST /ocr/batch`'s path), with the CPU
seconds of this process and of the worker, and the worker's own peak RSS.

`--legibility` instead reads a page of 10.5-pt text scaled to lower and lower dpi and prints how
much of the text comes back at each: where OCR_MIN_DPI comes from.
"""

import argparse
import difflib
import io
import os
import time
from collections.abc import Callable
from pathlib import Path

from fastapi import UploadFile
from PIL import Image

from bench.documents import LayeredPage, encode, layered_pdf, letter_page, page_lines, pdf_of, photo_12mp
from service.budget import rss_mb
from service.ocr.config import TESSERACT_LANGS, get_ocr_settings
from service.ocr.engine import TesseractEngine
from service.ocr.sandbox import get_worker
from service.ocr.schemas import OcrOptions
from service.ocr.service import ocr_batch, ocr_upload
from service.ocr.tessdata import resolve_tessdata
from service.registry import get_registry


def _pids() -> list[str]:
    worker = get_worker().pid
    return ["self"] + ([str(worker)] if worker is not None else [])


def _reset_peak() -> None:
    for pid in _pids():
        Path(f"/proc/{pid}/clear_refs").write_text("5")


def _peak_mb() -> float:
    """VmHWM of this process plus the worker's, which clear_refs resets (maxrss is never reset)."""
    total = 0.0
    for pid in _pids():
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                total += int(line.split()[1]) / 1024
    return total


def _part(data: bytes, filename: str | None = None) -> UploadFile:
    """A file part as the route receives it, without a declared content type."""
    return UploadFile(io.BytesIO(data), filename=filename)


def _measure(name: str, make: Callable[[], bytes], lang: str) -> None:
    data = make()
    before = rss_mb()
    _reset_peak()
    started = time.perf_counter()
    result = ocr_upload(_part(data), OcrOptions(lang=lang), started)
    seconds = time.perf_counter() - started
    chars = sum(len(page.text) for page in result.pages)
    print(
        f"{name:<28} {len(data) / 1e6:6.1f} MB {len(result.pages):3d} p {seconds:7.2f} s "
        f"{len(result.pages) / seconds:5.2f} p/s {chars:6d} chars  "
        f"peak +{_peak_mb() - before:6.1f} MB  after +{rss_mb() - before:5.1f} MB  rss {rss_mb():6.1f} MB"
    )


def _worker_cpu_s() -> float:
    pid = get_worker().pid
    if pid is None:
        return 0.0
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def _worker_peak_mb() -> float:
    pid = get_worker().pid
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _compare(name: str, uploads: list[bytes], options: OcrOptions) -> None:
    """One request's wall and CPU time (server side and worker), its peaks, and where pages came from."""
    before = rss_mb()
    _reset_peak()
    cpu, worker_cpu, started = time.process_time(), _worker_cpu_s(), time.perf_counter()
    files = [_part(data, f"file-{index}") for index, data in enumerate(uploads)]
    if len(files) == 1:
        pages = ocr_upload(files[0], options, started).pages
    else:
        results = ocr_batch(files, options, started).files
        pages = [page for result in results for page in getattr(result, "pages", [])]
    seconds = time.perf_counter() - started
    cpu, worker_cpu = time.process_time() - cpu, _worker_cpu_s() - worker_cpu
    sources = {source: sum(page.source == source for page in pages) for source in ("text_layer", "ocr")}
    print(
        f"{name:<40} {len(pages):3d} p ({sources['text_layer']} layer, {sources['ocr']} ocr) "
        f"{seconds:7.2f} s wall  cpu {cpu:5.2f} s here + {worker_cpu:6.2f} s worker  "
        f"worker peak {_worker_peak_mb():6.1f} MB  peak +{_peak_mb() - before:6.1f} MB over {before:.1f}"
    )


def documents(pages: int, lang: str) -> None:
    """Text layers against OCR of the same pages, a mixed PDF, and a batch of files."""
    text = [LayeredPage(page_lines(36, seed=index)) for index in range(pages)]
    mixed = [LayeredPage(page.lines, "text" if index % 2 else "scan") for index, page in enumerate(text)]
    auto, force = OcrOptions(lang=lang), OcrOptions(lang=lang, ocr="force")
    _compare("warm-up (engine load)", [encode(Image.new("L", (64, 64), 255), "PNG")], auto)
    for round_ in (1, 2):  # alternating, so that a change in the machine's load hits both
        _compare(f"{pages}-page text-layer PDF, auto #{round_}", [layered_pdf(text)], auto)
        _compare(f"{pages}-page text-layer PDF, ocr=force #{round_}", [layered_pdf(text)], force)
    _compare(f"{pages}-page mixed PDF (1/2 scans)", [layered_pdf(mixed)], auto)
    per_file = max(pages // 10, 1)
    batch = [layered_pdf(mixed[index : index + per_file]) for index in range(0, per_file * 10, per_file)]
    _compare(f"batch of 10 mixed PDFs x {per_file} p", batch, auto)
    _compare(f"batch of 10 mixed PDFs x {per_file} p, words", batch, OcrOptions(lang=lang, words=True))


def legibility(lang: str) -> None:
    """Similarity of the text read to the text printed, for a 150 dpi page scaled down."""
    page, truth = letter_page(12), " ".join(page_lines(12))
    code = TESSERACT_LANGS[lang]
    engine = TesseractEngine(resolve_tessdata(code, get_ocr_settings()), code)  # generated pages: in-process
    try:
        for dpi in (150, 100, 75, 60, 50, 40):
            scale = dpi / 150
            scaled = page.resize((round(page.width * scale), round(page.height * scale)), Image.LANCZOS)
            text = " ".join(engine.recognize(scaled).text.split())
            similarity = difflib.SequenceMatcher(None, text, truth).ratio()
            print(f"{dpi:4d} dpi  {similarity:6.1%} similar to the text printed ({len(text)} chars)")
    finally:
        engine.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pages", type=int, default=20, help="pages of the PDF")
    parser.add_argument("--lang", default="es")
    parser.add_argument("--legibility", action="store_true", help="text read vs dpi, nothing else")
    parser.add_argument("--documents", action="store_true", help="text layers vs OCR, mixed PDFs, batches")
    args = parser.parse_args()
    if args.legibility:
        legibility(args.lang)
        return
    if args.documents:
        print(f"baseline rss {rss_mb():.1f} MB (imports done)")
        documents(args.pages, args.lang)
        return
    print(f"baseline rss {rss_mb():.1f} MB (imports done)")
    _measure("warm-up (engine load)", lambda: encode(Image.new("L", (64, 64), 255), "PNG"), args.lang)
    print(f"registry: {get_registry().snapshot()}")
    _measure("150 dpi letter page, PNG", lambda: encode(letter_page(), "PNG"), args.lang)
    _measure("12 MP photo, JPEG", lambda: encode(photo_12mp(), "JPEG", quality=85), args.lang)

    _measure(f"{args.pages}-page 150 dpi PDF", lambda: pdf_of([letter_page()] * args.pages), args.lang)


if __name__ == "__main__":
    main()
