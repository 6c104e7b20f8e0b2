"""Words on a page with their boxes: what Tesseract recognises and what a PDF's text layer holds,
in one shape, so word boxes and table detection read both the same way.

Boxes are in the page's pixels (top-left origin): for an image, its own pixels as recognised; for a
PDF page, the pixels it has, or would have, when rendered at its OCR scale (`pdf.render_scale`).
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class Word:
    text: str
    left: int
    top: int
    right: int
    bottom: int
    confidence: float  # 0-1: Tesseract's word confidence, 1.0 for a text layer's words
