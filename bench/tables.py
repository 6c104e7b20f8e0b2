"""Table detection measured: `python -m bench.tables compare [--pages 6] [--img2table DIR]` chooses
the method; `python -m bench.tables peaks --model DIR` measures what tables cost a real server.

compare:
Reads the same generated pages (ruled and unruled tables with known cells, a page with two tables,
pages of plain text) two ways, each in its own fresh process so that memory figures are its own:

- `own`: service.ocr.tables (numpy): ruling lines found and erased, Tesseract's words (sparse-text
  segmentation, as the service reads a page whose tables are asked for), then the grid or the
  aligned columns; `own-auto`: the same on words from Tesseract's default segmentation;
- `img2table`: img2table 2.0 (OpenCV) on the page, its cells filled with the same Tesseract
  words (an OCRInstance over tesserocr, so both read the same recognition).

Per method: exact cells over all expected cells (a cell counts when the detected table holding
the expected one has the same text at the same row and column, whitespace collapsed), tables
found where none is (false tables), the RSS the method's import adds to a fresh process that
imported the OCR worker's modules (Pillow, tesserocr, pdfium; no numpy), the peak RSS over the
process's RSS while a page is read (recognition included, the same for both), and the CPU
seconds of table detection alone. img2table is never a requirement of the service: install it apart,

    pip install --target /tmp/i2t --no-deps img2table==2.0.0 opencv-contrib-python==5.1.0.95 \\
        xlsxwriter==3.3.1 beautifulsoup4==4.15.0 soupsieve==4.1.3

and pass `--img2table /tmp/i2t` (numpy and pypdfium2 come from the venv).

peaks: one server (bench.server's launcher, 512 MB budget, one thread) with the sentiment model
DIR loaded by an /analyze request, then /ocr of a 20-page PDF (10 text-layer and 10 scanned pages,
a ruled table on a text-layer page and an unruled one on a scanned page) and of a 12 MP JPEG photo
of a page with a ruled table, each without and with `tables=true`. Printed per request: the
highest sum of the server's and its OCR worker's RSS (sampled every 20 ms), each one's VmHWM, the
seconds, and the tables found. `--plain` serves the plain model (weights in anonymous memory)
instead of its prepacked variant (weights in a mapped file, counted in RSS while touched).
"""

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import tesserocr
from PIL import Image

from bench.documents import (
    TablePage,
    encode,
    letter_page,
    table_cells,
    table_page,
    table_pdf,
    table_photo_12mp,
)
from bench.server import Server, multipart, running_server
from service.ocr.config import OcrSettings
from service.ocr.images import open_image, prepare_image
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
    and an unruled table, two tilted and two photographed ruled tables, and two pages of text."""
    pages = []
    for seed in range(count):
        for ruled in (True, False):
            cells = table_cells(6 + seed % 5, _COLUMNS[seed % 2], seed=seed)
            kind = "ruled" if ruled else "unruled"
            pages.append(Page(f"{kind}-{seed}", table_page([(cells, ruled)], seed=seed), [cells]))
    first, second = table_cells(5, _COLUMNS[0], seed=100), table_cells(4, _COLUMNS[1], seed=101)
    pages.append(Page("two-tables", table_page([(first, True), (second, False)], seed=7), [first, second]))
    # Harder: a ruled table tilted by 1 degree, and one photographed (12 MP JPEG, read as the
    # service decodes it: gray, at most OCR_MAX_SIDE pixels a side).
    settings = OcrSettings()
    for seed in range(2):
        cells = table_cells(6, _COLUMNS[seed % 2], seed=200 + seed)
        tilted = table_page([(cells, True)], seed=seed).rotate(
            1.0, fillcolor=255, resample=Image.Resampling.BICUBIC
        )
        pages.append(Page(f"tilted-{seed}", tilted, [cells]))
        jpeg = encode(table_photo_12mp(cells), "JPEG", quality=85)
        pages.append(
            Page(f"photo-{seed}", prepare_image(open_image(jpeg, "jpeg", settings), settings), [cells])
        )
    pages += [Page(f"text-{seed}", letter_page(seed=seed), []) for seed in range(2)]
    return pages


def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1]) / 1024
    return 0.0


def _reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")


def tesseract_words(
    api: tesserocr.PyTessBaseAPI, image: Image.Image, psm: int = tesserocr.PSM.SPARSE_TEXT
) -> list[tuple[Word, int]]:
    """Tesseract's words on `image`, each with the number of its text line; sparse text, as the
    service recognises a page whose tables are asked for (service/ocr/engine.py)."""
    api.SetPageSegMode(psm)
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


Reader = Callable[[tesserocr.PyTessBaseAPI, Image.Image], tuple[list[list[list[str]]], float]]


def _own(psm: int) -> Reader:
    from service.ocr.tables import detect_tables, erase_rules, ruling_lines

    def read(api: tesserocr.PyTessBaseAPI, image: Image.Image) -> tuple[list[list[list[str]]], float]:
        started = time.process_time()
        rules = ruling_lines(image)
        erase_rules(image, rules)
        cpu = time.process_time() - started
        words = [word for word, _ in tesseract_words(api, image, psm)]
        started = time.process_time()
        tables = detect_tables(words, rules)
        cpu += time.process_time() - started
        return [[[cell.text for cell in row] for row in table.rows] for table in tables], cpu

    return read


def _img2table() -> Reader:
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


METHODS: dict[str, Callable[[], Reader]] = {
    "own": lambda: _own(tesserocr.PSM.SPARSE_TEXT),
    "own-auto": lambda: _own(tesserocr.PSM.AUTO),
    "img2table": _img2table,
}


def run(method: str, pages: int) -> dict[str, Any]:
    """One method over the corpus, in this process: what `compare` starts in a child."""
    documents = corpus(pages)
    api = tesserocr.PyTessBaseAPI(
        path=f"{resolve_tessdata('spa')}/", lang="spa", oem=tesserocr.OEM.LSTM_ONLY, psm=tesserocr.PSM.AUTO
    )
    tesseract_words(api, letter_page())  # the engine's caches, as in a worker that has read a page
    read = METHODS[method]()
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
        "peak_mb": round(max(peaks), 1),
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


IMPORTS = {
    "own": "import service.ocr.tables",
    "img2table": "import cv2, img2table.document, img2table.ocr._types, img2table.tables.extractor",
}


def import_mb(method: str, img2table: Path | None) -> tuple[float, float]:
    """RSS and anonymous memory the method's modules add to a fresh process that imported the OCR
    worker's modules (the budget counts the anonymous part; the rest is mapped library files)."""
    code = (
        f"import sys; sys.path.append({str(img2table)!r})\n"
        "import service.ocr.worker\n"
        "from service.budget import process_memory\n"
        "before = process_memory()\n"
        f"{IMPORTS[method.removesuffix('-auto')]}\n"
        "after = process_memory()\n"
        "print(after.rss_mb - before.rss_mb, after.anon_mb - before.anon_mb)\n"
    )
    output = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    rss, anon = output.split()
    return float(rss), float(anon)


def compare(pages: int, img2table: Path | None) -> None:
    print(
        f"{'method':<10} {'exact cells':>16} {'false':>5} {'import MB (anon)':>16} {'peak MB':>8}"
        f" {'CPU s/page':>10}"
    )
    for method in ["own", "own-auto"] + (["img2table"] if img2table else []):
        command = [sys.executable, "-m", "bench.tables", "compare", "--run", method, "--pages", str(pages)]
        if method == "img2table":
            command += ["--img2table", str(img2table)]
        output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        result = json.loads(output.splitlines()[-1])
        share = result["exact"] / result["cells"]
        imported, anon = import_mb(method, img2table)
        print(
            f"{method:<10} {result['exact']:>5}/{result['cells']:<4} {share:6.1%}"
            f" {result['false_tables']:>5} {imported:>9.1f} ({anon:4.1f}) {result['peak_mb']:>8}"
            f" {result['table_cpu_s_per_page']:>10}"
        )
        for miss in result["misses"]:
            print(f"    {miss}")


def _proc_mb(pid: int, field: str) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


class PairSampler:
    """The highest simultaneous RSS of the server and its OCR worker, the same of their anonymous
    memory (what the budget counts: service/budget.py), and the worker's VmHWM, every 20 ms while
    the block runs (the worker's high-water mark is reset first: it outlives requests)."""

    def __init__(self, server: Server) -> None:
        self.server, self.total_mb, self.anon_mb, self.worker_hwm_mb = server, 0.0, 0.0, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _children(self) -> list[int]:
        return [child.pid for child in psutil.Process(self.server.pid).children()]

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            children = self._children()
            pids = [self.server.pid, *children]
            self.total_mb = max(self.total_mb, sum(_proc_mb(pid, "VmRSS:") for pid in pids))
            self.anon_mb = max(self.anon_mb, sum(_proc_mb(pid, "RssAnon:") for pid in pids))
            for pid in children:
                self.worker_hwm_mb = max(self.worker_hwm_mb, _proc_mb(pid, "VmHWM:"))

    def __enter__(self) -> "PairSampler":
        for pid in self._children():
            Path(f"/proc/{pid}/clear_refs").write_text("5")
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


def peak_documents() -> dict[str, tuple[bytes, str, list[list[list[str]]]]]:
    """The two documents of issue 14's peaks: bytes, content type, the tables they hold."""
    invoices = table_cells(8, _COLUMNS[0], seed=20)
    stock = table_cells(6, _COLUMNS[1], seed=21)
    pages = [TablePage(invoices, ruled=True)]
    pages += [TablePage(None, layer="text" if index % 2 else "scan", seed=index) for index in range(1, 10)]
    pages.append(TablePage(stock, ruled=False, layer="scan", seed=10))
    pages += [TablePage(None, layer="scan" if index % 2 else "text", seed=index) for index in range(11, 20)]
    photo = table_photo_12mp(invoices)
    return {
        "pdf_20_mixed": (table_pdf(pages), "application/pdf", [invoices, stock]),
        "photo_12mp_table": (encode(photo, "JPEG", quality=85), "image/jpeg", [invoices]),
    }


def peaks(model: Path, prepacked: bool = True) -> None:
    documents = peak_documents()
    workdir = Path(tempfile.mkdtemp(prefix="tables-peaks-"))
    env = {
        "MEMORY_BUDGET_MB": "512",
        "NUM_THREADS": "1",
        "MODEL_SENTIMENT_ES": str(model),
        "PREPACKED_DIR": str(workdir / "prepacked"),  # never write into the model's own dir
        "ONNX_DIR": str(workdir),
        "PREPACKED": str(prepacked).lower(),
    }
    with running_server(workdir, name="tables-peaks", **env) as server:
        body = json.dumps({"text": "qué buen día"}).encode()
        answer = server.request("POST", "/analyze", body, {"Content-Type": "application/json"}, timeout=300)
        print(f"sentiment loaded: /analyze {answer.status}, server RSS {server.rss_mb():.1f} MB")
        print(
            f"{'document':<18} {'tables':<6} {'status':>6} {'RSS peak':>8} {'anon peak':>9}"
            f" {'server HWM':>10} {'worker HWM':>10}  s"
        )
        for name, (data, content_type, expected) in documents.items():
            for tables in (False, True):
                _peak(server, name, data, content_type, expected if tables else None)
        memory = server.request("GET", "/memory").json()
        loaded = ", ".join(f"{item['key']} {item['cost_mb']} MB" for item in memory["loaded"])
        print(f"loaded at the end, with the cost the registry measured: {loaded}")


def _peak(
    server: Server, name: str, data: bytes, content_type: str, tables: list[list[list[str]]] | None
) -> None:
    """One /ocr request measured; with `tables`, asking for tables and scoring those expected."""
    body, multipart_type = multipart(
        {"lang": "es", "tables": str(tables is not None).lower()}, name, data, content_type
    )
    started = time.perf_counter()
    with PairSampler(server) as sampler:
        answer = server.request("POST", "/ocr", body, {"Content-Type": multipart_type}, timeout=900)
    seconds = time.perf_counter() - started
    print(
        f"{name:<18} {tables is not None!s:<6} {answer.status:>6} {sampler.total_mb:>8.1f}"
        f" {sampler.anon_mb:>9.1f} {server.peak_mb():>10.1f} {sampler.worker_hwm_mb:>10.1f}  {seconds:.1f}"
    )
    if tables is None or answer.status != 200:
        return
    found = [
        (page["page"], [[cell["text"] for cell in row] for row in table["rows"]])
        for page in answer.json()["pages"]
        for table in page["tables"]
    ]
    print(f"    tables found on pages {[number for number, _ in found]}")
    for cells in tables:
        best = max((_exact(cells, table) for _, table in found), default=0)
        print(f"    the {len(cells)}x{len(cells[0])} table: {best}/{sum(map(len, cells))} cells exact")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    comparing = commands.add_parser("compare", help="own method against img2table on generated tables")
    comparing.add_argument("--pages", type=int, default=6, help="pages of each table kind")
    comparing.add_argument(
        "--img2table", type=Path, help="a directory img2table was installed into (--target)"
    )
    comparing.add_argument("--run", choices=list(METHODS), help=argparse.SUPPRESS)
    peaking = commands.add_parser("peaks", help="peaks of issue 14's table documents on a real server")
    peaking.add_argument("--model", type=Path, required=True, help="the exported sentiment:es model dir")
    peaking.add_argument(
        "--plain", action="store_true", help="serve the plain model, not its prepacked variant"
    )
    args = parser.parse_args()
    if args.command == "peaks":
        peaks(args.model, prepacked=not args.plain)
    elif args.run:
        if args.img2table:
            sys.path.append(str(args.img2table))  # after the venv: its numpy and pypdfium2 win
        print(json.dumps(run(args.run, args.pages)))
    else:
        compare(args.pages, args.img2table)


if __name__ == "__main__":
    main()
