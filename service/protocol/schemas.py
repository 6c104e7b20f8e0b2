"""Request and response models of the Hugging Face inference protocol.

Two dialects of it: Text Embeddings Inference's `POST /predict` and `GET /info`, and the Inference
API's payload that `huggingface_hub.InferenceClient` and `@huggingface/inference` send to a model's
endpoint root (`{"inputs": ..., "parameters": {...}}`). The texts they carry are validated as
`/analyze`'s are (service/protocol/router.py builds an `AnalyzeRequest` of them).
"""

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from service.config import get_settings


class TextPair(BaseModel):
    """The Inference API's pair form: a text read beside a second one (a target, a context)."""

    model_config = ConfigDict(extra="forbid")

    text: str
    text_pair: str


def _at_most_max_batch(data: Any, field: str) -> Any:
    """O(1) refusal of a list of inputs over MAX_BATCH, before pydantic validates it item by item."""
    if isinstance(data, dict) and isinstance(data.get(field), list):
        count, most = len(data[field]), get_settings().max_batch
        if count > most:
            raise ValueError(f"{count} inputs sent; at most MAX_BATCH={most} per request")
    return data


class PredictRequest(BaseModel):
    """TEI's `/predict` body for sequence classification."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"inputs": "¡Qué buen día hace hoy! 😍"},
                {"inputs": ["I love this!", "This is awful"]},
                {"inputs": [["El gobierno de Milei anunció recortes", "Milei"]]},
            ]
        },
    )

    inputs: str | list[str] | list[list[str]] = Field(
        description="One text, a batch of texts, or a batch of [text, text_pair] pairs (pair tasks: "
        "targeted_sentiment's target, context_hate_speech's context). At most MAX_BATCH."
    )
    truncate: bool | None = Field(
        default=None,
        description="Texts are always read as pysentimiento reads them, cut at the model's 128 tokens "
        "(`/info`'s auto_truncate): true or unset; false is refused.",
    )
    truncation_direction: Literal["right", "left"] | None = Field(
        default=None, description="Only `right` (the end of a long text is dropped)."
    )
    raw_scores: bool = Field(
        default=False, description="Refused when true: the models answer probabilities, not logits."
    )

    @model_validator(mode="before")
    @classmethod
    def _refuse_cheaply(cls, data: Any) -> Any:
        return _at_most_max_batch(data, "inputs")


class Parameters(BaseModel):
    """The Inference API's `parameters`: text-classification's and token-classification's."""

    model_config = ConfigDict(extra="forbid")

    top_k: int | None = Field(default=None, ge=1, description="text-classification: the k best labels.")
    function_to_apply: Literal["softmax", "sigmoid", "none"] | None = Field(
        default=None,
        description="text-classification: only the model's own (softmax; sigmoid for multi-label "
        "models) is served, since the models answer probabilities.",
    )
    aggregation_strategy: Literal["none", "simple", "first", "average", "max"] | None = Field(
        default=None,
        description="token-classification: only `first` (pysentimiento's: a word takes its first "
        "sub-token's label and score, and words are grouped by their BIO tags), the default.",
    )
    ignore_labels: list[str] | None = Field(
        default=None, description="token-classification: entity groups left out (default: `O`)."
    )
    stride: int | None = Field(default=None, description="Refused: a text longer than 128 tokens is cut.")


class InferenceRequest(BaseModel):
    """The Inference API's payload, at a model's endpoint root."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"inputs": "¡Qué buen día hace hoy! 😍"},
                {"inputs": ["I love this!", "This is awful"], "parameters": {"top_k": 1}},
                {"inputs": {"text": "El gobierno de Milei anunció recortes", "text_pair": "Milei"}},
                {"inputs": "Lionel Messi juega en Miami con @usuario"},
            ]
        },
    )

    inputs: str | TextPair | list[str] | list[TextPair] = Field(
        description="One text or a batch (at most MAX_BATCH); pair tasks take `{text, text_pair}`."
    )
    parameters: Parameters | None = Field(default=None, description="Unset or null: every default.")
    options: dict[str, Any] | None = Field(
        default=None, description="The hosted API's options (wait_for_model, use_cache): accepted, unused."
    )

    @model_validator(mode="before")
    @classmethod
    def _refuse_cheaply(cls, data: Any) -> Any:
        return _at_most_max_batch(data, "inputs")


class LabelScore(BaseModel):
    """One label of one text, as TEI and the Inference API's text-classification answer it."""

    label: str
    score: float = Field(description="Its probability, as `/analyze`'s `probas` gives it.")


class TokenEntity(BaseModel):
    """One entity (ner) or word (pos), as the Inference API's token-classification answers it."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"entity_group": "PER", "score": 0.997, "word": "Lionel Messi", "start": 0, "end": 12}
            ]
        }
    )

    entity_group: str = Field(description="ner: PER, LOC, ... (USER for an @handle); pos: the tag.")
    score: float = Field(description="The mean of its words' scores (`/analyze`'s `scores`).")
    word: str = Field(description="Its text in the preprocessed input, as `/analyze`'s entities.")
    start: int
    end: int


class ClassifierLabels(BaseModel):
    id2label: dict[str, str]
    label2id: dict[str, int]


class ModelType(BaseModel):
    classifier: ClassifierLabels


class Info(BaseModel):
    """TEI's `/info`, for the model the path names."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "model_id": "pysentimiento/robertuito-sentiment-analysis",
                    "model_sha": None,
                    "model_dtype": "int8",
                    "model_type": {
                        "classifier": {
                            "id2label": {"0": "NEG", "1": "NEU", "2": "POS"},
                            "label2id": {"NEG": 0, "NEU": 1, "POS": 2},
                        }
                    },
                    "task": "sentiment",
                    "lang": "es",
                    "max_concurrent_requests": 256,
                    "max_input_length": 128,
                    "max_batch_tokens": 1024,
                    "max_batch_requests": 8,
                    "max_client_batch_size": 32,
                    "max_input_chars": 2000,
                    "auto_truncate": True,
                    "tokenization_workers": 1,
                    "version": "0.1.0",
                    "sha": None,
                    "docker_label": None,
                }
            ]
        }
    )

    model_id: str
    model_sha: str | None = None
    model_dtype: str = Field(description="int8 (an INT8 export), float32 (fp32 export or torch).")
    model_type: ModelType
    task: str
    lang: str
    max_concurrent_requests: int = Field(description="Texts that may wait for the model (QUEUE_MAX).")
    max_input_length: int = Field(description="Tokens the model reads of a text; the rest is cut.")
    max_batch_tokens: int = Field(description="max_batch_requests x max_input_length.")
    max_batch_requests: int = Field(description="Texts per model call (BATCH_MAX_SIZE).")
    max_client_batch_size: int = Field(description="Texts per request (MAX_BATCH).")
    max_input_chars: int = Field(description="Characters per text (MAX_TEXT_CHARS).")
    auto_truncate: bool = True
    tokenization_workers: int = Field(description="Tokenization runs in the request's own thread.")
    version: str
    sha: str | None = None
    docker_label: str | None = None
