"""Form fields and response of `POST /ocr`."""

from pydantic import BaseModel, ConfigDict, Field, field_validator

from service.ocr.config import OcrLang
from service.ocr.jobs import PAGES_PATTERN, Kind


class OcrOptions(BaseModel):
    """The form fields sent beside `file`."""

    pages: str | None = Field(
        default=None,
        pattern=PAGES_PATTERN,
        max_length=200,
        description="PDF pages to read, counted from 1, e.g. `1-3,5`. Default: every page, "
        "refused when the PDF has more than OCR_MAX_PAGES. Images have one page (of a multi-page "
        "TIFF or an animated WebP, the first is read).",
        examples=["1-3,5"],
    )
    lang: OcrLang | None = Field(
        default=None, description="Language of the text: `es` (Tesseract `spa`) or `en` (`eng`); default es."
    )
    analyze: bool = Field(
        default=False,
        description="Also run the `lang` sentiment model on each readable page's text "
        "(the model reads a page's first ~128 tokens).",
    )

    @field_validator("pages", mode="before")
    @classmethod
    def _blank_is_all(cls, value: object) -> object:
        """HTML forms send an empty string for a field left blank."""
        return None if isinstance(value, str) and not value.strip() else value


class PageSentiment(BaseModel):
    label: str | list[str] = Field(description="The most probable label.")
    probas: dict[str, float] = Field(description="Every label's probability.")


class PageResult(BaseModel):
    page: int = Field(description="Page number in the document, counted from 1.")
    text: str = Field(description="The recognised text; empty when the page is unreadable.")
    confidence: float = Field(ge=0, le=1, description="Tesseract's mean word confidence, 0-1.")
    unreadable: bool = Field(description="True when Tesseract found no text on the page.")
    seconds: float = Field(description="Time spent recognising this page.")
    sentiment: PageSentiment | None = Field(
        default=None, description="With `analyze=true`, the sentiment of a readable page's text."
    )


class OcrResponse(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "format": "pdf",
                    "lang": "es",
                    "page_count": 3,
                    "pages": [
                        {
                            "page": 1,
                            "text": "Estimado cliente:\nGracias por su compra.",
                            "confidence": 0.93,
                            "unreadable": False,
                            "seconds": 1.84,
                            "sentiment": {"label": "POS", "probas": {"NEG": 0.01, "NEU": 0.12, "POS": 0.87}},
                        },
                        {"page": 3, "text": "", "confidence": 0.0, "unreadable": True, "seconds": 0.21},
                    ],
                    "seconds": 2.31,
                }
            ]
        }
    )

    format: Kind = Field(description="What the upload's content is, whatever its name or declared type.")
    lang: OcrLang
    page_count: int = Field(description="Pages in the document (1 for an image); `pages` lists those read.")
    pages: list[PageResult]
    seconds: float = Field(description="Time spent on the whole request, upload reading included.")
