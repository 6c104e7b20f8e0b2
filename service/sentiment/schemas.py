"""Request and response models of `POST /analyze`."""

import unicodedata
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from service.config import PAIR_TASKS, TEXT_TASKS, Lang, Task, get_settings

# The tasks whose answer is one label per text (bulk analysis serves these).
TextTask = Literal["sentiment", "emotion", "hate_speech", "irony"]
assert set(TextTask.__args__) == set(TEXT_TASKS)

# Unicode categories that show nothing: controls, format, surrogates, private use, unassigned, spaces.
_INVISIBLE = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zs", "Zl", "Zp"})


def unreadable(text: str) -> str | None:
    """Why a text is no text at all, or None. A lone surrogate (JSON's "\\ud800" decodes to one)
    is not Unicode and makes the tokenizers fail; a text of only invisible characters is junk."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "holds a lone surrogate, which is not valid Unicode"
    if all(unicodedata.category(char) in _INVISIBLE for char in text):
        return "has no visible character, only control, format, private-use or unassigned ones"
    return None


class Prediction(BaseModel):
    """One text's result, as pysentimiento's AnalyzerOutput gives it."""

    label: str | list[str] = Field(
        description="The most probable label; for multi-label tasks (hate_speech) every label over 0.5."
    )
    probas: dict[str, float] = Field(description="Every label's probability.")


AUTO = "auto"
LangOrAuto = Lang | Literal["auto"]


class Detected(BaseModel):
    """With `lang: "auto"`: which language's model read the text, and why that one."""

    lang: Lang = Field(description="The language whose model analyzed the text.")
    lang_confidence: float = Field(
        description="The detector's probability for that language among the task's languages (0-1); "
        "low for a fallback."
    )
    lang_source: Literal["detected", "fallback"] = Field(
        description="`detected`; `fallback`: the language could not be told and the request asked for "
        "`fallback`, so DEFAULT_LANG's model read it."
    )


class AutoPrediction(Detected, Prediction):
    """One text's result under `lang: "auto"`."""


class TextErrorDetail(BaseModel):
    code: Literal["too_short", "unknown_language"]
    message: str
    detected: str | None = Field(
        default=None, description="The language it looks like when that language has no model (ISO 639-1)."
    )


class TextError(BaseModel):
    """A text of an `auto` batch whose language could not be told; the others are answered."""

    error: TextErrorDetail


class Entity(BaseModel):
    """A named entity, as pysentimiento's NER analyzer groups BIO labels into one."""

    type: str = Field(description="PER, LOC, ORG, ... (USER for an @handle)")
    text: str
    start: int = Field(description="Offset of its first character in `text`, the preprocessed input.")
    end: int = Field(description="Offset just past its last character in `text`.")


class TokenPrediction(BaseModel):
    """One text's result for ner or pos, as pysentimiento's TokenClassificationOutput gives it."""

    text: str = Field(description="The input after pysentimiento's preprocessing: what offsets refer to.")
    tokens: list[str] = Field(description="spaCy's words of `text`, as pysentimiento splits it.")
    labels: list[str | None] = Field(
        description="One label per token: BIO tags (ner) or a part of speech (pos); an @handle is "
        "B-USER / USER; null for a word the model saw no sub-token of (past 128, a run of spaces)."
    )
    scores: list[float | None] = Field(
        description="One per token: the probability the model gives its label (the softmax of its "
        "first sub-token; 1.0 for an @handle, whose label is a rule's; null where the label is)."
    )
    entities: list[Entity] | None = Field(
        default=None, description="ner only: consecutive B-/I- tokens grouped into entities."
    )


class AutoTokenPrediction(Detected, TokenPrediction):
    """One text's ner/pos result under `lang: "auto"`."""


class AnalyzeRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"text": "¡Qué buen día hace hoy! 😍"},
                {"texts": ["I love this!", "This is awful"], "task": "sentiment", "lang": "en"},
                {"text": "Che bella giornata! @mario", "task": "sentiment", "lang": "it"},
                {"texts": ["¡Qué buen día!", "What a great day!", "Che bella giornata!"], "lang": "auto"},
                {"text": "Lionel Messi juega en Miami con @usuario", "task": "ner", "lang": "es"},
                {"text": "I love this song", "task": "pos", "lang": "en"},
                {
                    "text": "El gobierno de Milei anunció nuevos recortes",
                    "context": "Milei",
                    "task": "targeted_sentiment",
                    "lang": "es",
                },
            ]
        },
    )

    text: str | None = Field(default=None, description="One text. Send either `text` or `texts`.")
    texts: list[str] | None = Field(default=None, description="A batch of texts, at most MAX_BATCH.")
    task: Task | None = Field(default=None, description="Defaults to DEFAULT_TASK.")
    lang: LangOrAuto | None = Field(
        default=None,
        description='Defaults to DEFAULT_LANG. `"auto"`: each text is read by the model of its own '
        "language, detected among the task's languages.",
    )
    fallback: bool = Field(
        default=False,
        description='With `lang: "auto"`: a text whose language cannot be told (too short, another '
        "language) is read by DEFAULT_LANG's model instead of getting an error.",
    )
    context: str | list[str] | None = Field(
        default=None,
        description="targeted_sentiment: the target; context_hate_speech: the context (e.g. the news "
        "headline a comment answers). One string for `text`, one per text for `texts`; "
        "not accepted by other tasks.",
    )

    @model_validator(mode="before")
    @classmethod
    def _refuse_cheaply(cls, data: Any) -> Any:
        """O(1) checks of the parsed body before pydantic validates it item by item: a million-item
        `texts` or a million unknown keys would otherwise cost a million errors (GBs) first."""
        if not isinstance(data, dict):
            return data  # pydantic's own single error
        unknown = [key for key in data if key not in cls.model_fields]
        if unknown:
            shown = ", ".join(repr(key[:40]) for key in unknown[:5])
            more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
            raise ValueError(f"unknown field(s) {shown}{more}; the fields are {', '.join(cls.model_fields)}")
        texts, max_batch = data.get("texts"), get_settings().max_batch
        if isinstance(texts, list) and len(texts) > max_batch:
            raise ValueError(f"{len(texts)} texts sent; at most MAX_BATCH={max_batch} per request")
        return data

    @model_validator(mode="after")
    def _check(self) -> "AnalyzeRequest":
        settings = get_settings()
        if (self.text is None) == (self.texts is None):
            raise ValueError("send exactly one of `text` (a string) or `texts` (a list of strings)")
        texts = self.all_texts()
        if not texts:
            raise ValueError("`texts` is empty: send at least one text")
        if len(texts) > settings.max_batch:
            raise ValueError(f"{len(texts)} texts sent; at most MAX_BATCH={settings.max_batch} per request")
        for index, text in enumerate(texts):
            where = "text" if self.text is not None else f"texts[{index}]"
            if not text.strip():
                raise ValueError(f"{where} is empty or only whitespace")
            if problem := unreadable(text):
                raise ValueError(f"{where} {problem}")
            if len(text) > settings.max_text_chars:
                raise ValueError(
                    f"{where} has {len(text)} characters; at most MAX_TEXT_CHARS={settings.max_text_chars}"
                )
        self.task = self.task or settings.default_task
        self.lang = self.lang or settings.default_lang
        if self.fallback and self.lang != AUTO:
            raise ValueError('`fallback` is only for `lang: "auto"`')
        self._check_context(len(texts))
        return self

    def _check_context(self, count: int) -> None:
        if self.task not in PAIR_TASKS:
            if self.context is not None:
                raise ValueError(f"`context` is only for {' and '.join(PAIR_TASKS)}, not {self.task}")
            return
        contexts = self.all_contexts()
        if not contexts or (self.text is not None) != isinstance(self.context, str):
            shape = "one string" if self.text is not None else f"a list of {count} strings"
            raise ValueError(f"{self.task} needs `context`: {shape}, the target or context of each text")
        if len(contexts) != count:
            raise ValueError(f"{len(contexts)} contexts for {count} texts: send one per text")
        for index, context in enumerate(contexts):
            if not context.strip() or unreadable(context):
                raise ValueError(f"context[{index}] is empty or unreadable")
            if len(context) > get_settings().max_text_chars:
                raise ValueError(
                    f"context[{index}] is longer than MAX_TEXT_CHARS={get_settings().max_text_chars}"
                )

    def all_texts(self) -> list[str]:
        return [self.text] if self.text is not None else list(self.texts or [])

    def all_contexts(self) -> list[str] | None:
        if self.context is None:
            return None
        return [self.context] if isinstance(self.context, str) else list(self.context)


def shape_problem(raw: bytes) -> str | None:
    """Why a raw `/analyze` body cannot be valid from its size in structure alone, or None.

    A valid body is one object of at most 4 fields and MAX_BATCH texts, so it holds at most one
    comma, bracket or brace per character of its texts plus a few: counted in C, without parsing,
    that refuses 2 MB of `1,` or `[],` before `json.loads` turns it into a million objects (tens of
    MB and seconds of the event loop). What passes is bounded by MAX_BATCH x MAX_TEXT_CHARS items.
    """
    settings = get_settings()
    structure = raw.count(b",") + raw.count(b"[") + raw.count(b"{")
    most = settings.max_batch * (settings.max_text_chars + 2) + 2 * len(AnalyzeRequest.model_fields)
    if structure <= most:
        return None
    return (
        f"holds {structure} commas, brackets and braces: more than MAX_BATCH={settings.max_batch} "
        f"texts of MAX_TEXT_CHARS={settings.max_text_chars} characters could"
    )


class AnalyzeResult(Prediction):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "task": "sentiment",
                    "lang": "es",
                    "label": "POS",
                    "probas": {"NEG": 0.004, "NEU": 0.018, "POS": 0.978},
                }
            ]
        }
    )

    task: Task
    lang: Lang


class AnalyzeBatchResult(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "task": "sentiment",
                    "lang": "en",
                    "results": [
                        {"label": "POS", "probas": {"NEG": 0.01, "NEU": 0.02, "POS": 0.97}},
                        {"label": "NEG", "probas": {"NEG": 0.95, "NEU": 0.04, "POS": 0.01}},
                    ],
                }
            ]
        }
    )

    task: Task
    lang: Lang
    results: list[Prediction]


class TokenResult(TokenPrediction):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "task": "ner",
                    "lang": "es",
                    "text": "Lionel Messi juega en Miami con @usuario",
                    "tokens": ["Lionel", "Messi", "juega", "en", "Miami", "con", "@usuario"],
                    "labels": ["B-PER", "I-PER", "O", "O", "B-LOC", "O", "B-USER"],
                    "scores": [0.998, 0.997, 0.999, 0.999, 0.991, 0.999, 1.0],
                    "entities": [
                        {"type": "PER", "text": "Lionel Messi", "start": 0, "end": 12},
                        {"type": "LOC", "text": "Miami", "start": 22, "end": 27},
                        {"type": "USER", "text": "@usuario", "start": 32, "end": 40},
                    ],
                }
            ]
        }
    )

    task: Task
    lang: Lang


class TokenBatchResult(BaseModel):
    task: Task
    lang: Lang
    results: list[TokenPrediction]


class AutoResult(AutoPrediction):
    """One text under `lang: "auto"`: `lang` is the language detected (or fallen back to)."""

    task: Task


class AutoBatchResult(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "task": "sentiment",
                    "lang": "auto",
                    "results": [
                        {
                            "label": "POS",
                            "probas": {"NEG": 0.01, "NEU": 0.02, "POS": 0.97},
                            "lang": "it",
                            "lang_confidence": 0.99,
                            "lang_source": "detected",
                        },
                        {
                            "error": {
                                "code": "unknown_language",
                                "message": "the text looks like 'fr', a language with no model for this task",
                                "detected": "fr",
                            }
                        },
                    ],
                }
            ]
        }
    )

    task: Task
    lang: Literal["auto"]
    results: list[AutoPrediction | TextError] = Field(description="One per text, in input order.")


class AutoTokenResult(AutoTokenPrediction):
    task: Task


class AutoTokenBatchResult(BaseModel):
    task: Task
    lang: Literal["auto"]
    results: list[AutoTokenPrediction | TextError] = Field(description="One per text, in input order.")
