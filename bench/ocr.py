"""Time and memory of OCR on generated documents: `python -m bench.ocr [--pages 20]`.

Runs through the same path as the route (registry, admission, the OCR worker process that decodes
and recognises) and prints, per document: seconds, pages/s, the RSS it left and its peak RSS over
the baseline, this process and the worker together (the sum of their high-water marks). Peaks are
reset between documents through /proc/<pid>/clear_refs (Linux).

`--documents` instead compares, side by side, a text-layer PDF read from its text layer and the same
PDF OCRed (`ocr=force`), a mixed PDF, and a batch of files (`POST /ocr/batch`'s path), with the CPU
seconds of this process and of the worker, and the worker's own peak RSS.

`--engines spa spa+eng spa+eng+ita+por` instead compares Tesseract engines of one or several
languages (`lang=auto` runs one of several): each loaded through the registry into a fresh OCR worker,
in alternating rounds, with the registry's measured cost, the worker's RSS and anonymous memory once
loaded, then a 4-page PDF (one page each in es, en, it, pt): the worker's CPU seconds, its peak RSS,
each page's character error rate, and the language `lang=auto`'s detector reads in the page's text
(and its confidence): what the sentiment of that page then depends on.

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

from bench.documents import (
    LANG_LINES,
    LayeredPage,
    cer,
    encode,
    language_page,
    layered_pdf,
    letter_page,
    page_lines,
    pdf_of,
    photo_12mp,
)
from service.budget import rss_mb
from service.ocr.config import TESSERACT_LANGS, get_ocr_settings
from service.ocr.engine import TesseractEngine
from service.ocr.jobs import ReadOptions
from service.ocr.sandbox import OcrJob, get_worker
from service.ocr.schemas import OcrOptions
from service.ocr.service import engine_item, ocr_batch, ocr_upload
from service.ocr.tessdata import resolve_tessdata
from service.registry import get_registry
from service.sentiment.language import Detector


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


def _worker_status_mb(field: str = "VmHWM") -> float:
    pid = get_worker().pid
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _worker_peak_mb() -> float:
    return _worker_status_mb("VmHWM")


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


def engines(codes: list[str], rounds: int, lines: int, dpi: int) -> None:
    """Each engine loaded into a fresh worker through the registry, then one page per language,
    scanned at `dpi` (the page is printed at 150 dpi and scaled: below 150, a poorer scan)."""
    settings, registry = get_ocr_settings(), get_registry()
    langs = list(LANG_LINES)
    scans = [language_page(lang, lines) for lang in langs]
    scans = [
        page.resize((page.width * dpi // 150, page.height * dpi // 150), Image.LANCZOS) for page in scans
    ]
    pdf = pdf_of(scans, dpi)
    truth = [[LANG_LINES[lang][i % len(LANG_LINES[lang])] for i in range(lines)] for lang in langs]
    detector = Detector()
    print(
        f"{len(langs)}-page PDF ({', '.join(langs)}), {lines} lines a page at {dpi} dpi, "
        f"{len(pdf) / 1e3:.0f} kB"
    )
    for round_ in range(1, rounds + 1):
        for code in codes:  # the same order each round: every engine sees the same machine's load
            item = engine_item(code, settings)
            with registry.use(item) as engine:
                cost = next(e["cost_mb"] for e in registry.snapshot() if e["key"] == item.key)
                rss, anon = _worker_status_mb("VmRSS"), _worker_status_mb("RssAnon")
                load_peak, cpu = _worker_peak_mb(), _worker_cpu_s()
                _, pages = engine.worker.run(OcrJob(pdf, "pdf", ReadOptions()), code, settings)
                cpu = _worker_cpu_s() - cpu
                errors = [
                    cer("\n".join(lines_), page.text) for lines_, page in zip(truth, pages, strict=True)
                ]
                peak = _worker_peak_mb()
            registry.unload(item.key)  # its last engine: the worker process ends, the next starts afresh
            cer = "  ".join(f"{lang} {error:5.1%}" for lang, error in zip(langs, errors, strict=True))
            found = [detector.detect(page.text, tuple(langs)) for page in pages]
            detected = " ".join(f"{d.lang or d.error}:{d.confidence:.3f}" for d in found)
            print(
                f"#{round_} {code:<16} cost {cost:5.1f} MB  worker rss {rss:5.1f} anon {anon:5.1f} "
                f"(load peak {load_peak:5.1f})  cpu {cpu:5.2f} s / {len(pages)} p  peak {peak:5.1f} MB  "
                f"CER {cer}  detected {detected}"
            )


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
    parser.add_argument("--engines", nargs="+", metavar="CODE", help="Tesseract engines side by side")
    parser.add_argument("--rounds", type=int, default=3, help="--engines: alternating rounds")
    parser.add_argument("--lines", type=int, default=24, help="--engines: lines on each language's page")
    parser.add_argument("--dpi", type=int, default=150, help="--engines: the pages' scan resolution")
    args = parser.parse_args()
    if args.engines:
        engines(args.engines, args.rounds, args.lines, args.dpi)
        return
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
