"""What the server hands the OCR worker with each job: the upload's kind, how to read it and the
limits that bound the job's work, as plain data, so that the worker process never imports the settings stack
(pydantic-settings and FastAPI would add ~25 MB to it). `OcrSettings.job_limits()` makes them.
"""

from dataclasses import dataclass
from typing import Literal

Kind = Literal["pdf", "png", "jpeg", "tiff", "webp"]
KIND_NAMES: dict[Kind, str] = {"pdf": "a PDF", "png": "PNG", "jpeg": "JPEG", "tiff": "TIFF", "webp": "WebP"}

# Page selections: "1-3,5".
PAGES_PATTERN = r"^\s*\d{1,6}(\s*-\s*\d{1,6})?(\s*,\s*\d{1,6}(\s*-\s*\d{1,6})?)*\s*$"


@dataclass(frozen=True)
class JobLimits:
    """The OCR_* settings that bound one job; each is documented in `service/ocr/config.py`."""

    max_pages: int
    max_pixels: int
    max_side: int
    min_side: int
    page_pixels: int
    dpi: int
    min_dpi: int
    render_queue: int
    work_mb: float


@dataclass(frozen=True)
class ReadOptions:
    """How to read one upload's pages: the request's form fields, and what is left of its pages."""

    pages: str | None = None  # a page selection, "1-3,5" (a PDF's pages, an image's frames)
    force_ocr: bool = False  # OCR every PDF page, text layer or not
    words: bool = False  # each page's words with their boxes
    pages_left: int | None = (
        None  # what the request may still read of OCR_MAX_PAGES (earlier files took the rest)
    )
    tables: bool = False  # each page's tables
    columns: int | None = None  # the caller's hint for unruled tables
    table_csv: bool = False  # each table also as CSV
