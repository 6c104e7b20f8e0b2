"""What the server hands the OCR worker with each job: the upload's kind and the limits that bound
the job's work, as plain data, so that the worker process never imports the settings stack
(pydantic-settings and FastAPI would add ~25 MB to it). `OcrSettings.job_limits()` makes them.
"""

from dataclasses import dataclass
from typing import Literal

Kind = Literal["pdf", "png", "jpeg", "tiff", "webp"]
KIND_NAMES: dict[Kind, str] = {"pdf": "a PDF", "png": "PNG", "jpeg": "JPEG", "tiff": "TIFF", "webp": "WebP"}

# PDF page selections: "1-3,5".
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
