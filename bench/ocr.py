"""Time and memory of OCR on generated documents: `python -m bench.ocr [--pages 20]`.

Runs through the same path as the route (registry, admission, the OCR worker process that decodes
and recognises) and prints, per document: seconds, pages/s, the RSS it left and its peak RSS over
the baseline, this process and the worker together (the sum of their high-water marks). Peaks are
reset between documents through /proc/<pid>/clear_refs (Linux).

`--legibility` instead reads a page of 10.5-pt text scaled to lower and lower dpi and prints how
much of the text comes back at each: where OCR_MIN_DPI comes from.
"""

import argparse
import difflib
import time
from collections.abc import Callable
from pathlib import Path

from PIL import Image

from bench.documents import encode, letter_page, page_lines, pdf_of, photo_12mp
from service.budget import rss_mb
from service.ocr.config import TESSERACT_LANGS, get_ocr_settings
from service.ocr.engine import TesseractEngine
from service.ocr.sandbox import get_worker
from service.ocr.schemas import OcrOptions
from service.ocr.service import ocr_upload
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


def _measure(name: str, make: Callable[[], bytes], lang: str) -> None:
    data = make()
    before = rss_mb()
    _reset_peak()
    started = time.perf_counter()
    result = ocr_upload(data, None, OcrOptions(lang=lang), started)
    seconds = time.perf_counter() - started
    chars = sum(len(page.text) for page in result.pages)
    print(
        f"{name:<28} {len(data) / 1e6:6.1f} MB {len(result.pages):3d} p {seconds:7.2f} s "
        f"{len(result.pages) / seconds:5.2f} p/s {chars:6d} chars  "
        f"peak +{_peak_mb() - before:6.1f} MB  after +{rss_mb() - before:5.1f} MB  rss {rss_mb():6.1f} MB"
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
    args = parser.parse_args()
    if args.legibility:
        legibility(args.lang)
        return
    print(f"baseline rss {rss_mb():.1f} MB (imports done)")
    _measure("warm-up (engine load)", lambda: encode(Image.new("L", (64, 64), 255), "PNG"), args.lang)
    print(f"registry: {get_registry().snapshot()}")
    _measure("150 dpi letter page, PNG", lambda: encode(letter_page(), "PNG"), args.lang)
    _measure("12 MP photo, JPEG", lambda: encode(photo_12mp(), "JPEG", quality=85), args.lang)

    _measure(f"{args.pages}-page 150 dpi PDF", lambda: pdf_of([letter_page()] * args.pages), args.lang)


if __name__ == "__main__":
    main()
