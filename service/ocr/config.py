"""OCR settings, kept apart from `service.config` so the OCR sidecar owns its knobs.

Every limit here bounds memory or time before the work starts: upload bytes, decoded pixels,
rendered PDF pixels and pages. The defaults fit one request inside the 512 MB budget with a
sentiment model loaded beside the OCR engine.
"""

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from service.ocr.jobs import JobLimits

OcrLang = Literal["es", "en", "it", "pt"]
# `lang=auto`: Tesseract reads with OCR_AUTO_LANGS, then each page's sentiment is read by the model
# of the language detected in its text.
AUTO = "auto"
OcrLangOrAuto = OcrLang | Literal["auto"]

# The API's language codes and the Tesseract traineddata each one loads: the languages with a
# sentiment model.
TESSERACT_LANGS: dict[str, str] = {"es": "spa", "en": "eng", "it": "ita", "pt": "por"}


class OcrSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="OCR_", env_file=".env", extra="ignore")

    max_upload_mb: float = Field(default=20, gt=0)
    # Pages read per request, all files together.
    max_pages: int = Field(default=20, ge=1)
    # Files per request on POST /ocr/batch; they share OCR_MAX_UPLOAD_MB and OCR_MAX_PAGES.
    max_files: int = Field(default=10, ge=1)
    # Decoded pixels of an uploaded image, read from its header before decoding.
    max_pixels: int = Field(default=40_000_000, ge=1)
    # Images are downscaled to this many pixels per side before recognition.
    max_side: int = Field(default=2000, ge=64)
    min_side: int = Field(default=8, ge=1)
    # Pixels of one rasterised PDF page: A4 (1240x1754) and letter (1275x1650) fit at 150 dpi,
    # larger pages are rendered at a lower dpi so that no page allocates more.
    page_pixels: int = Field(default=2_250_000, ge=10_000)
    dpi: int = Field(default=150, ge=36, le=600)
    # A page that fits OCR_PAGE_PIXELS only below this dpi is refused (413) rather than read as
    # blank: 10.5-pt text read back 100 % similar at 75 dpi, 93 % at 60 and 18 % at 50 (MEMORY.md).
    min_dpi: int = Field(default=60, ge=1, le=600)
    # Rendered pages waiting for recognition: 1 lets the next page render while one is read.
    render_queue: int = Field(default=1, ge=1, le=4)
    # Working memory of one OCR job (decoding + recognition), enforced in the OCR worker process
    # as a hard cap (service/ocr/worker.py) and reserved in the budget while the job runs.
    work_mb: float = Field(default=96, ge=32)
    # A job whose worker says nothing for this long (one page rendered and read) is stopped.
    page_timeout_s: float = Field(default=60, gt=0)
    # OCR requests that may wait for the worker while one runs (holding no reservation while they
    # wait); more get 503 at once.
    queue_max: int = Field(default=4, ge=0)
    default_lang: OcrLang = "es"
    # lang=auto: the languages of the one Tesseract engine that reads every page (comma-separated;
    # the first is tried first on each word). Each costs the engine memory and CPU; the default was
    # chosen by measurement (MEMORY.md, "Issue 27 - OCR"). Every page's language is then detected
    # among all the sentiment languages, whichever of them Tesseract read it with.
    auto_langs: str = "es,it,pt"
    # A directory holding <lang>.traineddata; Tesseract's own TESSDATA_PREFIX is honoured too.
    tessdata: Path | None = Field(
        default=None, validation_alias=AliasChoices("OCR_TESSDATA", "TESSDATA_PREFIX")
    )

    @field_validator("auto_langs")
    @classmethod
    def _known_langs(cls, value: str) -> str:
        langs = [lang.strip() for lang in value.split(",") if lang.strip()]
        unknown = [lang for lang in langs if lang not in TESSERACT_LANGS]
        if not langs or unknown or len(set(langs)) != len(langs):
            raise ValueError(
                f"OCR_AUTO_LANGS lists each of {', '.join(TESSERACT_LANGS)} at most once: {value!r}"
            )
        return ",".join(langs)

    def tesseract_code(self, lang: str) -> str:
        """What Tesseract loads for a request's `lang`: "spa", or for `auto` "spa+ita+por"."""
        langs = self.auto_langs.split(",") if lang == AUTO else [lang]
        return "+".join(TESSERACT_LANGS[each] for each in langs)

    def job_limits(self) -> JobLimits:
        """What the OCR worker needs of these settings for one job."""
        return JobLimits(**self.model_dump(include=set(JobLimits.__dataclass_fields__)))


@lru_cache
def get_ocr_settings() -> OcrSettings:
    return OcrSettings()
