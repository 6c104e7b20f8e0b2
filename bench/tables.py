"""Which table method: `python -m bench.tables [--pages 6] [--img2table DIR]`.

Reads the same generated pages (ruled and unruled tables with known cells, a page with two tables,
pages of plain text) two ways, each in its own fresh process so that memory figures are its own:

- `own`: service.ocr.tables (numpy): ruling lines found and erased, Tesseract's words, then the
  grid or the aligned columns;
- `img2table`: img2table 2.0 (OpenCV) on the page, its cells filled with the same Tesseract
  words (an OCRInstance over tesserocr, so both read the same recognition).

Per method: exact cells over all expected cells (a cell counts when the detected table holding
the expected one has the same text at the same row and column, whitespace collapsed), tables
found where none is (false tables), the RSS the method's import adds to a process that already
holds Pillow, tesserocr and a loaded engine (the OCR worker's state), the peak RSS over that
baseline while a page is read (recognition included, the same for both), and the CPU seconds
of table detection alone. img2table is never a requirement of the service: install it apart,

    pip install --target /tmp/i2t --no-deps img2table==2.0.0 opencv-contrib-python==5.1.0.95 \\
        xlsxwriter==3.3.1 beautifulsoup4==4.15.0 soupsieve==4.1.3

and pass `--img2table /tmp/i2t` (numpy and pypdfium2 come from the venv).
"""

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tesserocr
from PIL import Image

from bench.documents import letter_page, table_cells, table_page
from service.ocr.tessdata import resolve_tessdata
from service.ocr.words import Word

MB = 1024 * 1024
_COLUMNS = [
    ["fecha", "cliente", "ciudad", "unidades", "importe"],
    ["codigo", "producto", "unidades", "importe"],
]


@dataclass
class Page:
    name: str
    image: Image.Image
    tables: list[list[list[str]]]  # the expected tables' cells, top to bottom


def corpus(count: int) -> list[Page]:
    """`count` pages of each kind: one ruled table, one unruled table; then one page with a ruled
    and an unruled table, and two pages of plain text."""
    pages = []
    for seed in range(count):
        for ruled in (True, False):
            cells = table_cells(6 + seed % 5, _COLUMNS[seed % 2], seed=seed)
            kind = "ruled" if ruled else "unruled"
            pages.append(Page(f"{kind}-{seed}", table_page([(cells, ruled)], seed=seed), [cells]))
    first, second = table_cells(5, _COLUMNS[0], seed=100), table_cells(4, _COLUMNS[1], seed=101)
    pages.append(Page("two-tables", table_page([(first, True), (second, False)], seed=7), [first, second]))
    pages += [Page(f"text-{seed}", letter_page(seed=seed), []) for seed in range(2)]
    return pages


def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1]) / 1024
    return 0.0


def _reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")


def tesseract_words(api: tesserocr.PyTessBaseAPI, image: Image.Image) -> list[tuple[Word, int]]:
    """Tesseract's words on `image`, each with the number of its text line."""
    api.SetImage(image)
    api.Recognize()
    words, line = [], -1
    level = tesserocr.RIL.WORD
    for item in tesserocr.iterate_level(api.GetIterator(), level):
        if item.IsAtBeginningOf(tesserocr.RIL.TEXTLINE):
            line += 1
        text = (item.GetUTF8Text(level) or "").strip()
        if text:
            words.append((Word(text, *item.BoundingBox(level), item.Confidence(level) / 100), line))
    api.Clear()
    return words


# -- the two methods, each run in its own process -------------------------------------------------


def _own() -> Callable[[tesserocr.PyTessBaseAPI, Image.Image], tuple[list[list[list[str]]], float]]:
    from service.ocr.tables import detect_tables, erase_rules, ruling_lines

    def read(api: tesserocr.PyTessBaseAPI, image: Image.Image) -> tuple[list[list[list[str]]], float]:
        started = time.process_time()
        rules = ruling_lines(image)
        erase_rules(image, rules)
        cpu = time.process_time() - started
        words = [word for word, _ in tesseract_words(api, image)]
        started = time.process_time()
        tables = detect_tables(words, rules)
        cpu += time.process_time() - started
        return [[[cell.text for cell in row] for row in table.rows] for table in tables], cpu

    return read


def _img2table() -> Callable[[tesserocr.PyTessBaseAPI, Image.Image], tuple[list[list[list[str]]], float]]:
    import numpy as np
    from img2table.document import Image as Img2TableImage
    from img2table.ocr._types import OCRData, OCRInstance

    class Tesserocr(OCRInstance):  # type: ignore[misc]
        """img2table's OCR step answered with the page's Tesseract words, read beforehand."""

        def __init__(self, words: list[tuple[Word, int]]) -> None:
            self.words = words

        def of(self, document: Any) -> Any:
            records = [
                {
                    "id": f"word_{index}",
                    "parent": f"line_{line}",
                    "value": word.text,
                    "confidence": round(word.confidence * 100),
                    "x1": word.left,
                    "y1": word.top,
                    "x2": word.right,
                    "y2": word.bottom,
                }
                for index, (word, line) in enumerate(self.words)
            ]
            return OCRData(records={0: records}) if records else None

    def read(api: tesserocr.PyTessBaseAPI, image: Image.Image) -> tuple[list[list[list[str]]], float]:
        words = tesseract_words(api, image)
        buffer = np.asarray(image.convert("RGB"))
        import cv2

        encoded = cv2.imencode(".png", buffer[:, :, ::-1])[1].tobytes()
        started = time.process_time()
        document = Img2TableImage(src=encoded)
        tables = document.extract_tables(ocr=Tesserocr(words), borderless_tables=True, min_confidence=1)
        cpu = time.process_time() - started
        found = [[[cell.value or "" for cell in row] for row in table.content.values()] for table in tables]
        return found, cpu

    return read


def run(method: str, pages: int) -> dict[str, Any]:
    """One method over the corpus, in this process: what `compare` starts in a child."""
    documents = corpus(pages)
    api = tesserocr.PyTessBaseAPI(
        path=f"{resolve_tessdata('spa')}/", lang="spa", oem=tesserocr.OEM.LSTM_ONLY, psm=tesserocr.PSM.AUTO
    )
    tesseract_words(api, letter_page())  # the engine's caches, as in a worker that has read a page
    baseline = _status_mb("VmRSS:")
    read = {"own": _own, "img2table": _img2table}[method]()
    imported = _status_mb("VmRSS:") - baseline
    expected_cells = exact = false_tables = 0
    cpu, peaks, misses = 0.0, [], []
    for page in documents:
        before = _status_mb("VmRSS:")
        _reset_peak()
        found, seconds = read(api, page.image.copy())
        peaks.append(_status_mb("VmHWM:") - before)
        cpu += seconds
        false_tables += max(0, len(found) - len(page.tables))
        for cells in page.tables:
            expected_cells += sum(len(row) for row in cells)
            best = max((_exact(cells, table) for table in found), default=0)
            exact += best
            if best < sum(len(row) for row in cells):
                misses.append(f"{page.name}: {best}/{sum(len(row) for row in cells)}")
    return {
        "method": method,
        "pages": len(documents),
        "cells": expected_cells,
        "exact": exact,
        "false_tables": false_tables,
        "import_mb": round(imported, 1),
        "peak_mb": round(max(peaks), 1),
        "rss_after_mb": round(_status_mb("VmRSS:") - baseline, 1),
        "table_cpu_s_per_page": round(cpu / len(documents), 3),
        "misses": misses,
    }


def _exact(expected: list[list[str]], found: list[list[str]]) -> int:
    def norm(text: str) -> str:
        return " ".join(text.split())

    return sum(
        norm(want) == norm(got)
        for want_row, got_row in zip(expected, found, strict=False)
        for want, got in zip(want_row, got_row, strict=False)
    )


def compare(pages: int, img2table: Path | None) -> None:
    print(
        f"{'method':<10} {'exact cells':>16} {'false':>5} {'import MB':>9} {'peak MB':>8} {'CPU s/page':>10}"
    )
    for method in ["own"] + (["img2table"] if img2table else []):
        command = [sys.executable, "-m", "bench.tables", "--run", method, "--pages", str(pages)]
        if method == "img2table":
            command += ["--img2table", str(img2table)]
        output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        result = json.loads(output.splitlines()[-1])
        share = result["exact"] / result["cells"]
        print(
            f"{method:<10} {result['exact']:>5}/{result['cells']:<4} {share:6.1%}"
            f" {result['false_tables']:>5} {result['import_mb']:>9} {result['peak_mb']:>8}"
            f" {result['table_cpu_s_per_page']:>10}"
        )
        for miss in result["misses"]:
            print(f"    {miss}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pages", type=int, default=6, help="pages of each table kind")
    parser.add_argument("--img2table", type=Path, help="a directory img2table was installed into (--target)")
    parser.add_argument("--run", choices=["own", "img2table"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:
        if args.img2table:
            sys.path.append(str(args.img2table))  # after the venv: its numpy and pypdfium2 win
        print(json.dumps(run(args.run, args.pages)))
    else:
        compare(args.pages, args.img2table)


if __name__ == "__main__":
    main()
