"""Tesseract through tesserocr: one API object per language, used by one thread at a time.

A `PyTessBaseAPI` holds per-image state, so concurrent requests take turns on a lock. It is
only ever given PIL images in memory (`SetImage`): Tesseract never opens a path or a URL.
"""

import threading
from dataclasses import dataclass
from pathlib import Path

import tesserocr
from PIL import Image

from service.ocr.words import Word


@dataclass(frozen=True)
class Recognition:
    text: str
    confidence: float  # mean word confidence, 0-1; 0 when nothing was read
    words: list[Word] | None  # when asked for: each word's box in the image's pixels


class TesseractEngine:
    def __init__(self, tessdata: Path, code: str) -> None:
        self.code = code
        self._lock = threading.Lock()
        # LSTM only: the legacy engine's data would cost memory and is not in every traineddata.
        self._api = tesserocr.PyTessBaseAPI(
            path=f"{tessdata}/", lang=code, oem=tesserocr.OEM.LSTM_ONLY, psm=tesserocr.PSM.AUTO
        )

    def recognize(self, image: Image.Image, words: bool = False, sparse: bool = False) -> Recognition:
        """The image's text; with `words`, also its words, read from the same recognition.

        `sparse` reads each group of words apart (Tesseract's sparse-text segmentation), not as
        lines of a paragraph: table cells come out more exactly, a gap between two cells no
        longer read as a character (MEMORY.md, "Issue 14 - tables")."""
        with self._lock:
            try:
                self._api.SetPageSegMode(tesserocr.PSM.SPARSE_TEXT if sparse else tesserocr.PSM.AUTO)
                self._api.SetImage(image)
                text = self._api.GetUTF8Text().strip()
                confidence = self._api.MeanTextConf()
                boxes = (self._words() if text else []) if words else None
            finally:
                self._api.Clear()  # drop the image and its layout now, not at the next page
        return Recognition(text, confidence / 100 if text else 0.0, boxes)

    def _words(self) -> list[Word]:
        """Every recognised word with its box and confidence (tesserocr's ResultIterator)."""
        found: list[Word] = []
        iterator = self._api.GetIterator()
        if iterator is None:  # nothing recognised
            return found
        level = tesserocr.RIL.WORD
        for word in tesserocr.iterate_level(iterator, level):
            try:
                text = word.GetUTF8Text(level).strip()
            except RuntimeError:  # tesserocr's "No text returned": an empty element
                continue
            box = word.BoundingBox(level)
            if text and box is not None:
                found.append(Word(text, *box, round(word.Confidence(level) / 100, 3)))
        return found

    def close(self) -> None:
        """Called by the registry when it unloads the engine."""
        with self._lock:
            self._api.End()
