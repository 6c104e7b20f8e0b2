"""What runs inside the OCR worker process: decoding untrusted uploads and recognising them.

The server never decodes an image or a PDF itself. It starts this module as a child process
(`service/ocr/sandbox.py`) and sends it one job at a time. Before each job the worker lowers its
own RLIMIT_DATA to what it uses now plus OCR_WORK_MB, so no input, whatever its format tricks
(a palette PNG converted to RGBA, progressive JPEG coefficient buffers, a PDF stream that inflates
to 300 MB), can make it use more: an allocation past the limit fails, raising MemoryError in
Python or ending the process in native code, and the server answers that request alone.

Messages are length-prefixed JSON over the socket the server passes as fd `argv[1]`; the upload's
bytes follow a job as one raw message. Results go back page by page, as `reading.read_pages`
yields them (a PDF page from its text layer or OCRed, with its size and, on request, its words).
"""

import gc
import json
import resource
import sys
from dataclasses import astuple
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any

from service import runtime
from service.exceptions import ServiceError, TooLarge
from service.ocr.engine import TesseractEngine
from service.ocr.errors import Undecodable
from service.ocr.jobs import JobLimits, ReadOptions
from service.ocr.reading import PageRead, read_pages

if TYPE_CHECKING:
    from service.ocr.tables import Table

MB = 1024 * 1024
# What the worker accepts from the server in one message: an upload, with its multipart slack.
MAX_MESSAGE_BYTES = 256 * MB


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field):
                return int(line.split()[1])
    return 0


def rss_mb() -> float:
    return _status_kb("VmRSS:") / 1024


def _cap_data(work_mb: float) -> None:
    """Let the coming job map at most `work_mb` more private writable memory than now."""
    limit = _status_kb("VmData:") * 1024 + int(work_mb * MB)
    resource.setrlimit(resource.RLIMIT_DATA, (limit, resource.RLIM_INFINITY))


def _uncap_data() -> None:
    resource.setrlimit(resource.RLIMIT_DATA, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))


def _error(error: ServiceError) -> dict[str, Any]:
    return {
        "error": {"status": error.status_code, "code": error.code, "message": error.message, **error.details}
    }


class Worker:
    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.engines: dict[str, TesseractEngine] = {}

    def send(self, message: dict[str, Any]) -> None:
        self.conn.send_bytes(json.dumps(message).encode())

    def serve(self) -> None:
        self.send({"ready": True, "rss_mb": rss_mb()})
        while True:
            try:
                request = json.loads(self.conn.recv_bytes(MAX_MESSAGE_BYTES))
            except EOFError:  # the server closed its end: it is gone or unloaded the worker
                return
            getattr(self, f"op_{request['op']}")(request)

    def op_load(self, request: dict[str, Any]) -> None:
        code = request["code"]
        try:
            if code not in self.engines:
                self.engines[code] = TesseractEngine(request["tessdata"], code)
        except RuntimeError as error:  # tesserocr's "Failed to init API"
            self.send({"error": {"status": 503, "code": "model_unavailable", "message": str(error)}})
            return
        runtime.trim_heap()
        self.send({"ok": True, "rss_mb": rss_mb()})

    def op_unload(self, request: dict[str, Any]) -> None:
        engine = self.engines.pop(request["code"], None)
        if engine is not None:
            engine.close()
        gc.collect()
        runtime.trim_heap()
        self.send({"ok": True, "rss_mb": rss_mb()})

    def op_load_tables(self, request: dict[str, Any]) -> None:
        """Table detection as the registry item `ocr:tables`: its import (numpy) is what it costs."""
        import service.ocr.tables  # noqa: F401

        runtime.trim_heap()
        self.send({"ok": True, "rss_mb": rss_mb()})

    def op_ocr(self, request: dict[str, Any]) -> None:
        data = self.conn.recv_bytes(MAX_MESSAGE_BYTES)
        limits = JobLimits(**request["limits"])
        options = ReadOptions(**request["options"])
        engine = self.engines[request["code"]]
        _cap_data(limits.work_mb)
        try:
            pages = read_pages(
                engine,
                data,
                request["kind"],
                options,
                limits,
                on_outline=lambda count: self.send({"outline": {"page_count": count}}),
                on_page_started=lambda number: self.send({"page_started": number}),
            )
            for page in pages:
                self.send({"page": page_message(page, options.table_csv)})
            message: dict[str, Any] = {"done": True}
        except ServiceError as error:
            message = _error(error)
        except MemoryError:
            message = _error(TooLarge(_over_work_mb(limits), limit_mb=limits.work_mb))
        except Exception as error:  # a decoder's own failure on a malformed file
            print(f"ocr worker: {type(error).__name__}: {error}", file=sys.stderr)
            message = _error(Undecodable(f"the upload cannot be decoded: {type(error).__name__}: {error}"))
        finally:
            del data
            _uncap_data()
            gc.collect()
            runtime.trim_heap()
        message["rss_mb"] = rss_mb()
        self.send(message)


def page_message(page: PageRead, table_csv: bool = False) -> dict[str, Any]:
    """A page as the server receives it; words as compact [text, left, top, right, bottom, confidence],
    tables' cells as [text, left, top, right, bottom]."""
    words = None if page.words is None else [astuple(word) for word in page.words]
    tables = None if page.tables is None else [table_message(table, table_csv) for table in page.tables]
    return {
        "page": page.number,
        "source": page.source,
        "text_layer": page.text_layer,
        "text": page.text,
        "confidence": page.confidence,
        "width": page.width,
        "height": page.height,
        "words": words,
        "tables": tables,
    }


def table_message(table: "Table", csv: bool) -> dict[str, Any]:
    """A table for the server, with its CSV made here (the server never imports the table module)."""
    return {
        "box": [table.left, table.top, table.right, table.bottom],
        "ruled": table.ruled,
        "rows": [[astuple(cell) for cell in row] for row in table.rows],
        "csv": table.csv() if csv else None,
    }


def _over_work_mb(limits: JobLimits) -> str:
    return (
        f"decoding this upload needs more than OCR_WORK_MB={limits.work_mb:g} MB of working memory; "
        "send a smaller image or fewer, smaller pages"
    )


def main() -> None:
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # a crash on hostile input leaves no core file
    Worker(Connection(int(sys.argv[1]))).serve()


if __name__ == "__main__":
    main()
