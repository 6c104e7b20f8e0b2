"""Form fields and responses of `POST /ocr` and `POST /ocr/batch`."""

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from service.error_handlers import ErrorDetail
from service.ocr.config import AUTO, OcrLangOrAuto
from service.ocr.jobs import PAGES_PATTERN, Kind
from service.sentiment.schemas import Detected, TextError


class OcrOptions(BaseModel):
    """The form fields sent beside `file`."""

    pages: str | None = Field(
        default=None,
        pattern=PAGES_PATTERN,
        max_length=200,
        description="Pages to read, counted from 1, e.g. `1-3,5`: a PDF's pages, or the pages of a "
        "multi-page TIFF or the frames of an animated WebP or PNG (any other image, a JPEG included, "
        "has one page). Default: every page, refused when the file has more than OCR_MAX_PAGES. On "
        "`/ocr/batch`, each file's pages (a file it does not fit gets its own error).",
        examples=["1-3,5"],
    )
    lang: OcrLangOrAuto | None = Field(
        default=None,
        description="Language of the text: `es` (Tesseract `spa`), `en` (`eng`), `it` (`ita`), `pt` (`por`), "
        "or `auto`: Tesseract reads with the languages of OCR_AUTO_LANGS (default `spa+ita+por`) and, "
        "with `analyze=true`, each page's sentiment is read by the model of the language detected in "
        'its text, as `/analyze`\'s `lang: "auto"` does. Default: OCR_DEFAULT_LANG (es).',
        examples=["es", "auto"],
    )
    analyze: bool = Field(
        default=False,
        description="Also run the `lang` sentiment model on each readable page's text "
        "(the model reads a page's first ~128 tokens).",
    )
    fallback: bool = Field(
        default=False,
        description="With `lang=auto` and `analyze=true`: a page whose language cannot be told (too "
        "short, another language, no clear winner) is read by DEFAULT_LANG's model (`lang_source: "
        "fallback`) instead of getting an error in its `sentiment`.",
    )
    ocr: Literal["auto", "force"] = Field(
        default="auto",
        description="`auto`: a PDF page whose embedded text layer covers it is read from that layer, "
        "exactly and without rendering; other pages are OCRed. `force`: every page is rendered and "
        "OCRed, whatever its text layer (for a PDF whose text layer is wrong).",
        examples=["auto"],
    )
    words: bool = Field(
        default=False,
        description="Also return each page's words with their box `[x0, y0, x1, y1]` in page pixels "
        "(top-left origin; a PDF page's pixels at its OCR scale, rendered or not) and their confidence.",
    )
    tables: bool = Field(
        default=False,
        description="Also detect each page's tables: ruled ones from their lines, unruled ones from "
        "aligned columns of words; each comes back as rows of cells with their text and box. A page "
        "without a table gets an empty list. A text-layer page's tables come from its text layer; an "
        "OCRed page is then read as sparse text (each group of words apart, which reads cells more "
        "exactly), so its `text` lists those groups in Tesseract's order.",
    )
    columns: int | None = Field(
        default=None,
        ge=2,
        le=50,
        description="With `tables=true`: how many columns the unruled tables have, when known. It "
        "splits them at their widest gaps (narrow gaps included); ruled tables follow their lines.",
        examples=[4],
    )
    table_csv: bool = Field(
        default=False,
        description="With `tables=true`: also give each table as CSV text (RFC 4180) in its `csv`.",
    )

    @field_validator("pages", mode="before")
    @classmethod
    def _blank_is_all(cls, value: object) -> object:
        """HTML forms send an empty string for a field left blank."""
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("columns", mode="before")
    @classmethod
    def _blank_is_none(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @model_validator(mode="after")
    def _table_options_need_tables(self) -> "OcrOptions":
        for name in ("columns", "table_csv"):
            if getattr(self, name) not in (None, False) and not self.tables:
                raise ValueError(f"{name} applies to tables: send tables=true with it")
        return self

    @model_validator(mode="after")
    def _fallback_needs_auto_sentiment(self) -> "OcrOptions":
        if self.fallback and (self.lang != AUTO or not self.analyze):
            raise ValueError(
                "fallback applies to lang=auto's sentiment: send lang=auto and analyze=true with it"
            )
        return self


class PageSentiment(BaseModel):
    label: str | list[str] = Field(description="The most probable label.")
    probas: dict[str, float] = Field(description="Every label's probability.")


class PageAutoSentiment(Detected, PageSentiment):
    """With `lang=auto`: the page's sentiment, by the model of the language detected in its text."""


class WordBox(BaseModel):
    text: str
    box: tuple[int, int, int, int] = Field(
        description="`[x0, y0, x1, y1]` in page pixels, top-left origin, within `width` x `height`."
    )
    confidence: float = Field(
        ge=0, le=1, description="Tesseract's word confidence; 1 for a text layer's words."
    )


class TableCell(BaseModel):
    text: str = Field(description="The cell's words in reading order; empty for an empty cell.")
    box: tuple[int, int, int, int] = Field(
        description="`[x0, y0, x1, y1]` in page pixels: between a ruled table's lines, or an "
        "unruled table's column and row."
    )


class TableResult(BaseModel):
    box: tuple[int, int, int, int] = Field(description="`[x0, y0, x1, y1]` of the whole table, in pixels.")
    ruled: bool = Field(description="True when found from its ruling lines, false from aligned columns.")
    rows: list[list[TableCell]] = Field(
        description="Top to bottom, each row's cells left to right; every row has as many cells."
    )
    csv: str | None = Field(default=None, description="With `table_csv=true`: the table's text as CSV.")


class PageResult(BaseModel):
    page: int = Field(description="Page number in the document, counted from 1.")
    source: Literal["text_layer", "ocr"] = Field(
        description="Where the text comes from: the PDF's embedded text layer, or OCR of the page's pixels."
    )
    text_layer: Literal["used", "absent", "garbage", "hidden", "sparse", "skipped"] | None = Field(
        default=None,
        description="For a PDF page, what became of its text layer: `used`; `absent` (none: a scan); "
        "`garbage` (control characters, private-use or unmappable glyphs); `hidden` (invisible or under "
        "an image: another tool's OCR, not trusted); `sparse` (a scan with a few stray characters); "
        "`skipped` (ocr=force). None for an image.",
    )
    text: str = Field(description="The page's text; empty when the page is unreadable.")
    confidence: float = Field(
        ge=0, le=1, description="Tesseract's mean word confidence, 0-1; 1 for a text layer."
    )
    unreadable: bool = Field(description="True when no text was found on the page.")
    width: int = Field(description="The page's width in pixels, the unit of word boxes.")
    height: int = Field(description="The page's height in pixels.")
    seconds: float = Field(description="Time spent reading this page.")
    words: list[WordBox] | None = Field(default=None, description="With `words=true`: the page's words.")
    tables: list[TableResult] | None = Field(
        default=None, description="With `tables=true`: the page's tables, top to bottom; [] when it has none."
    )
    sentiment: PageAutoSentiment | PageSentiment | TextError | None = Field(
        default=None,
        description="With `analyze=true`, the sentiment of a readable page's text. With `lang=auto` it "
        "also says the language whose model read it (`lang`, `lang_confidence`, `lang_source`), or, for a "
        'page whose language cannot be told, is `{"error": {"code": "too_short" | '
        '"unknown_language", ...}}` (that page\'s alone: the other pages are answered).',
    )


PAGE_EXAMPLE = {
    "page": 1,
    "source": "text_layer",
    "text_layer": "used",
    "text": "Estimado cliente:\nGracias por su compra.",
    "confidence": 1.0,
    "unreadable": False,
    "width": 1275,
    "height": 1650,
    "seconds": 0.02,
    "words": [
        {"text": "Estimado", "box": [150, 188, 262, 210], "confidence": 1.0},
        {"text": "cliente:", "box": [272, 188, 368, 210], "confidence": 1.0},
    ],
    "sentiment": {"label": "POS", "probas": {"NEG": 0.01, "NEU": 0.12, "POS": 0.87}},
}
TABLE_PAGE_EXAMPLE = {
    "page": 2,
    "source": "ocr",
    "text_layer": "absent",
    "text": "Fecha Cliente Importe\n05/10/2025 García López 8.779,57",
    "confidence": 0.91,
    "unreadable": False,
    "width": 1275,
    "height": 1650,
    "seconds": 1.35,
    "tables": [
        {
            "box": [90, 210, 745, 302],
            "ruled": True,
            "rows": [
                [
                    {"text": "Fecha", "box": [90, 210, 257, 256]},
                    {"text": "Cliente", "box": [257, 210, 470, 256]},
                    {"text": "Importe", "box": [470, 210, 745, 256]},
                ],
                [
                    {"text": "05/10/2025", "box": [90, 256, 257, 302]},
                    {"text": "García López", "box": [257, 256, 470, 302]},
                    {"text": "8.779,57", "box": [470, 256, 745, 302]},
                ],
            ],
            "csv": 'Fecha,Cliente,Importe\r\n05/10/2025,García López,"8.779,57"\r\n',
        }
    ],
}
BLANK_PAGE_EXAMPLE = {
    "page": 3,
    "source": "ocr",
    "text_layer": "absent",
    "text": "",
    "confidence": 0.0,
    "unreadable": True,
    "width": 1275,
    "height": 1650,
    "seconds": 1.21,
}
# lang=auto with analyze=true: each page's sentiment by its own language's model, or its own error.
AUTO_PAGE_EXAMPLES = [
    {
        **{key: value for key, value in PAGE_EXAMPLE.items() if key != "words"},
        "text": "Amanhã começará a preparação para a final, não há tempo a perder.",
        "sentiment": {
            "label": "NEU",
            "probas": {"NEG": 0.08, "NEU": 0.61, "POS": 0.31},
            "lang": "pt",
            "lang_confidence": 0.99,
            "lang_source": "detected",
        },
    },
    {
        **{key: value for key, value in PAGE_EXAMPLE.items() if key != "words"},
        "page": 2,
        "text": "OK",
        "sentiment": {
            "error": {
                "code": "too_short",
                "message": "the text has fewer than 6 letters: too short to tell its language",
                "detected": None,
            }
        },
    },
]


class OcrResponse(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "format": "pdf",
                    "lang": "es",
                    "page_count": 3,
                    "pages": [PAGE_EXAMPLE, TABLE_PAGE_EXAMPLE, BLANK_PAGE_EXAMPLE],
                    "seconds": 2.31,
                },
                {
                    "format": "pdf",
                    "lang": "auto",
                    "page_count": 2,
                    "pages": AUTO_PAGE_EXAMPLES,
                    "seconds": 1.84,
                },
            ]
        }
    )

    format: Kind = Field(description="What the upload's content is, whatever its name or declared type.")
    lang: OcrLangOrAuto
    page_count: int = Field(description="Pages in the document (1 for an image); `pages` lists those read.")
    pages: list[PageResult]
    seconds: float = Field(description="Time spent on the whole request, upload reading included.")


class OcrFile(BaseModel):
    """One file of a batch, read."""

    filename: str | None = Field(description="The file part's name, as sent.")
    format: Kind
    page_count: int
    pages: list[PageResult]
    seconds: float = Field(description="Time spent reading this file.")


class OcrFileError(BaseModel):
    """One file of a batch that could not be read: the error `POST /ocr` would answer for it alone."""

    filename: str | None
    error: ErrorDetail = Field(
        description="`status` (the HTTP status it would get alone), `code`, `message`."
    )


class OcrBatchResponse(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "lang": "es",
                    "files": [
                        {
                            "filename": "factura.pdf",
                            "format": "pdf",
                            "page_count": 3,
                            "pages": [PAGE_EXAMPLE, BLANK_PAGE_EXAMPLE],
                            "seconds": 1.3,
                        },
                        {
                            "filename": "contrato.pdf",
                            "error": {
                                "status": 422,
                                "code": "encrypted_pdf",
                                "message": "the PDF is encrypted with a password; send a decrypted copy",
                            },
                        },
                    ],
                    "seconds": 1.42,
                }
            ]
        }
    )

    lang: OcrLangOrAuto
    files: list[OcrFile | OcrFileError] = Field(description="One entry per file part, in the order sent.")
    seconds: float = Field(description="Time spent on the whole request, upload reading included.")
