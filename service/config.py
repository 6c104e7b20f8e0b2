"""Settings, read once from the environment (and an optional `.env`).

Every knob of the service lives here so that the README's table and the code cannot drift.
This module imports nothing numeric: `service.runtime` reads it before numpy/torch/onnxruntime
are imported, to pin their threads.
"""

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

Backend = Literal["onnx", "torch"]

# pysentimiento 0.7.3's own hub models: its `pysentimiento.analyzer.models` table, the production
# default. Every (task, lang) pair of that table is served (tests/test_catalog.py enumerates it).
HUB_MODELS: dict[tuple[str, str], str] = {
    ("sentiment", "es"): "pysentimiento/robertuito-sentiment-analysis",
    ("emotion", "es"): "pysentimiento/robertuito-emotion-analysis",
    ("hate_speech", "es"): "pysentimiento/robertuito-hate-speech",
    ("irony", "es"): "pysentimiento/robertuito-irony",
    ("ner", "es"): "pysentimiento/robertuito-ner",
    ("pos", "es"): "pysentimiento/robertuito-pos",
    ("targeted_sentiment", "es"): "pysentimiento/roberta-targeted-sentiment-analysis",
    ("context_hate_speech", "es"): "piuba-bigdata/beto-contextualized-hate-speech",
    ("sentiment", "en"): "finiteautomata/bertweet-base-sentiment-analysis",
    ("emotion", "en"): "finiteautomata/bertweet-base-emotion-analysis",
    ("hate_speech", "en"): "pysentimiento/bertweet-hate-speech",
    ("irony", "en"): "pysentimiento/bertweet-irony",
    ("ner", "en"): "pysentimiento/robertuito-ner",
    ("pos", "en"): "pysentimiento/robertuito-pos",
    ("sentiment", "it"): "pysentimiento/bert-it-sentiment",
    ("emotion", "it"): "pysentimiento/bert-it-emotion",
    ("hate_speech", "it"): "pysentimiento/bert-it-hate-speech",
    ("irony", "it"): "pysentimiento/bert-it-irony",
    ("sentiment", "pt"): "pysentimiento/bertweet-pt-sentiment",
    ("emotion", "pt"): "pysentimiento/bert-pt-emotion",
    ("hate_speech", "pt"): "pysentimiento/bertabaporu-pt-hate-speech",
    ("irony", "pt"): "pysentimiento/bertabaporu-pt-irony",
}

# What a task's model answers: a label per text, a label per word (ner, pos), or a label per text
# read beside a second text (targeted_sentiment's target, context_hate_speech's context).
TEXT_TASKS: tuple[str, ...] = ("sentiment", "emotion", "hate_speech", "irony")
TOKEN_TASKS: tuple[str, ...] = ("ner", "pos")
PAIR_TASKS: tuple[str, ...] = ("targeted_sentiment", "context_hate_speech")
TASKS: tuple[str, ...] = TEXT_TASKS + TOKEN_TASKS + PAIR_TASKS
LANGS: tuple[str, ...] = ("es", "en", "it", "pt")
Task = Literal[
    "sentiment", "emotion", "hate_speech", "irony", "ner", "pos", "targeted_sentiment", "context_hate_speech"
]
Lang = Literal["es", "en", "it", "pt"]


def is_supported(task: str, lang: str) -> bool:
    return (task, lang) in HUB_MODELS


def supported_pairs() -> dict[str, list[str]]:
    """lang -> its tasks, for error messages: what can be asked for instead."""
    pairs: dict[str, list[str]] = {}
    for task, lang in HUB_MODELS:
        pairs.setdefault(lang, []).append(task)
    return pairs


def model_env_var(task: str, lang: str) -> str:
    """The environment variable that names the model source of (task, lang)."""
    return f"MODEL_{task.upper()}_{lang.upper()}"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore")

    port: int = 8000
    backend: Backend = "onnx"
    default_task: Task = "sentiment"
    default_lang: Lang = "es"

    # Model sources: a hub id or a local directory (a transformers model, or an exported
    # ONNX dir holding manifest.json). Defaults are pysentimiento's own models.
    model_sentiment_es: str = HUB_MODELS[("sentiment", "es")]
    model_emotion_es: str = HUB_MODELS[("emotion", "es")]
    model_hate_speech_es: str = HUB_MODELS[("hate_speech", "es")]
    model_irony_es: str = HUB_MODELS[("irony", "es")]
    model_ner_es: str = HUB_MODELS[("ner", "es")]
    model_pos_es: str = HUB_MODELS[("pos", "es")]
    model_targeted_sentiment_es: str = HUB_MODELS[("targeted_sentiment", "es")]
    model_context_hate_speech_es: str = HUB_MODELS[("context_hate_speech", "es")]
    model_sentiment_en: str = HUB_MODELS[("sentiment", "en")]
    model_emotion_en: str = HUB_MODELS[("emotion", "en")]
    model_hate_speech_en: str = HUB_MODELS[("hate_speech", "en")]
    model_irony_en: str = HUB_MODELS[("irony", "en")]
    model_ner_en: str = HUB_MODELS[("ner", "en")]
    model_pos_en: str = HUB_MODELS[("pos", "en")]
    model_sentiment_it: str = HUB_MODELS[("sentiment", "it")]
    model_emotion_it: str = HUB_MODELS[("emotion", "it")]
    model_hate_speech_it: str = HUB_MODELS[("hate_speech", "it")]
    model_irony_it: str = HUB_MODELS[("irony", "it")]
    model_sentiment_pt: str = HUB_MODELS[("sentiment", "pt")]
    model_emotion_pt: str = HUB_MODELS[("emotion", "pt")]
    model_hate_speech_pt: str = HUB_MODELS[("hate_speech", "pt")]
    model_irony_pt: str = HUB_MODELS[("irony", "pt")]

    # Where `python -m service.export` writes, and the onnx backend looks for, exported models
    # of sources that are not already exported dirs: <onnx_dir>/<task>-<lang>/.
    onnx_dir: Path = Path("models")
    # The (task:lang) models that start.sh / the Render build export when missing.
    export_models: str = "sentiment:es"
    # Serve each exported model from its prepacked variant (weights in a mapped file, not in
    # anonymous memory), made on this machine when missing (service/sentiment/backends/prepacked.py).
    prepacked: bool = True
    # Where variants go; unset: `prepacked/` inside each exported model dir.
    prepacked_dir: Path | None = None
    # Load the default model in the background as the app starts, so that the port opens at once
    # and the first request (a spin-up's visitor) waits only for what is left of that load.
    warm_up: bool = True

    memory_budget_mb: int | None = Field(default=None, gt=0)
    memory_margin_mb: int = Field(default=32, ge=0)
    # How long work or a load that does not fit yet waits in line for memory before a 503: one
    # batch of long texts takes seconds on a fraction of a CPU, and the line is first come, first
    # served, so a wait includes the turns of those ahead.
    admission_wait_s: float = Field(default=30, ge=0, le=600)
    # Unset: derived from the cores the process may use (service/hardware.py); these four too.
    num_threads: int | None = Field(default=None, ge=1, le=64)
    use_gpu: bool = False
    max_batch: int = Field(default=32, ge=1, le=1024)
    max_text_chars: int = Field(default=2000, ge=1)
    # Micro-batching of concurrent /analyze requests (service/sentiment/batching.py).
    micro_batching: bool = True
    batch_max_size: int | None = Field(default=None, ge=1, le=1024)
    batch_max_wait_ms: float | None = Field(default=None, ge=0, le=1000)
    queue_max: int | None = Field(default=None, ge=1)
    # A cache of recent predictions for repeated texts (service/sentiment/cache.py); 0 entries: off.
    # Its MB bound is reserved in the memory budget while the app runs.
    result_cache_entries: int = Field(default=0, ge=0, le=1_000_000)
    result_cache_mb: float = Field(default=4.0, gt=0, le=1024)

    def model_source(self, task: str, lang: str) -> str:
        return getattr(self, f"model_{task}_{lang}")

    def exported_dir(self, task: str, lang: str) -> Path:
        """The exported dir the onnx backend serves: MODEL_<TASK>_<LANG> itself if it is one."""
        source = Path(self.model_source(task, lang))
        return source if (source / "manifest.json").is_file() else self.onnx_dir / f"{task}-{lang}"

    def export_targets(self) -> list[tuple[str, str]]:
        """Parse EXPORT_MODELS ("sentiment:es,irony:en") into (task, lang) pairs."""
        pairs = []
        for item in filter(None, (part.strip() for part in self.export_models.split(","))):
            task, _, lang = item.partition(":")
            if not is_supported(task, lang):
                raise ValueError(f"EXPORT_MODELS: {item!r} is not one of pysentimiento's task:lang pairs")
            pairs.append((task, lang))
        return pairs


@lru_cache
def get_settings() -> Settings:
    return Settings()
