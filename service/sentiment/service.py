"""Sentiment models as registry items: where each (task, lang) model comes from, what it costs.

The route calls `analyze`; the model behind it is loaded on first use through the registry,
under the memory budget, and stays a singleton until the budget needs its room.
"""

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from service.config import TOKEN_TASKS, Settings, get_settings, is_supported, model_env_var, supported_pairs
from service.exceptions import ModelUnavailable, UnsupportedTaskOrLang
from service.hardware import current, num_threads
from service.registry import Loadable, get_registry
from service.sentiment import batching
from service.sentiment.analyzer import Analyzer, Pair, TokenAnalyzer, create_analyzer, model_key
from service.sentiment.schemas import Prediction, TokenPrediction
from service.sentiment.tokens import require_spacy

MB = 1024 * 1024
# RSS a backend's imports add the first time a model loads (measured: torch + transformers +
# pysentimiento ~300 MB; onnxruntime + tokenizers + numpy ~45 MB), then weights x overhead.
_IMPORT_MB = {"torch": 300.0, "onnx": 45.0}
_WEIGHTS_FACTOR = {"torch": 1.3, "onnx": 1.2}
_UNKNOWN_WEIGHTS_MB = {"torch": 500.0, "onnx": 130.0}  # a hub id: RoBERTuito-size guess
# spaCy's tokenizer, imported with the first ner/pos model: +51 MB RSS beside the onnx backend (MEMORY.md).
_WORD_TOKENIZER_MB = 55.0
_WEIGHT_SUFFIXES = (".onnx", ".data", ".safetensors", ".bin", ".pt")
_VARIANT_MB, _MAKE_VARIANT_FACTOR = 8.0, 2.0  # see _prepacked_estimate_mb


def onnx_dir_for(task: str, lang: str, settings: Settings) -> Path:
    """The exported dir the onnx backend serves: MODEL_<TASK>_<LANG> itself if it is one."""
    return settings.exported_dir(task, lang)


def model_source(task: str, lang: str, settings: Settings) -> str | Path:
    if settings.backend == "onnx":
        return onnx_dir_for(task, lang, settings)
    return settings.model_source(task, lang)


def _weights_mb(source: str | Path) -> float | None:
    path = Path(source)
    if not path.is_dir():
        return None
    return sum(f.stat().st_size for f in path.iterdir() if f.suffix in _WEIGHT_SUFFIXES) / MB


def _prepacked_estimate_mb(model_dir: Path, settings: Settings, weights_mb: float) -> float:
    """Unreclaimable MB of a first load that serves the prepacked variant.

    Measured at RoBERTuito scale: +7 MB over a valid variant (its graph and buffers; the weights
    are mapped); making a missing one peaks in the child at ~2x the weights (its plain session
    plus the packing), counted here because the child is in the same cgroup."""
    from service.sentiment.backends import prepacked
    from service.sentiment.backends.onnx_backend import read_manifest

    manifest = read_manifest(model_dir)
    if prepacked.inspect(model_dir, manifest, settings.prepacked_dir).variant:
        return (model_dir / manifest["model_file"]).stat().st_size / MB * 2 + _VARIANT_MB
    return weights_mb * _MAKE_VARIANT_FACTOR


def _is_local_path(source: str | Path) -> bool:
    """Hub ids are `org/name`; anything absolute, relative-dotted or existing is a path."""
    text = str(source)
    return text.startswith(("/", ".", "~")) or Path(text).exists()


def _unavailable(task: str, lang: str, settings: Settings, error: Exception) -> ModelUnavailable:
    var = model_env_var(task, lang)
    if settings.backend == "onnx":
        out = onnx_dir_for(task, lang, settings)
        hint = (
            f"export it with `python -m service.export --task {task} --lang {lang} --out {out}` "
            f"(source: {var}={settings.model_source(task, lang)}), or set {var} to an exported model dir"
        )
    else:
        hint = f"set {var} to a local model dir (the Hugging Face hub is unreachable on some machines)"
    return ModelUnavailable(
        f"the {task}/{lang} model could not be loaded: {hint}",
        env_var=var,
        reason=f"{type(error).__name__}: {error}"[:500],
    )


def model_item(task: str, lang: str) -> Loadable:
    settings = get_settings()
    backend = settings.backend
    source = model_source(task, lang, settings)

    def check() -> None:
        if task in TOKEN_TASKS:
            require_spacy()
        if backend == "onnx" and not (Path(source) / "manifest.json").is_file():
            raise _unavailable(task, lang, settings, FileNotFoundError(f"{source}/manifest.json"))
        if backend == "torch" and _is_local_path(source) and not Path(source).is_dir():
            raise _unavailable(task, lang, settings, FileNotFoundError(f"no model dir at {source}"))

    def load() -> Analyzer | TokenAnalyzer:
        try:
            return create_analyzer(task, lang, source, backend, num_threads(settings))
        except Exception as error:  # a hub that cannot be reached, a missing or broken dir
            raise _unavailable(task, lang, settings, error) from error

    def estimate_mb() -> float:
        weights = _weights_mb(source)
        if weights is None:
            weights = _UNKNOWN_WEIGHTS_MB[backend]
        loaded = get_registry().snapshot()
        first_of_backend = not any(e.get("backend") == backend for e in loaded)
        first_token_model = task in TOKEN_TASKS and not any(e.get("task") in TOKEN_TASKS for e in loaded)
        imports = (_IMPORT_MB[backend] if first_of_backend else 0.0) + (
            _WORD_TOKENIZER_MB if first_token_model else 0.0
        )
        exported = backend == "onnx" and (Path(source) / "manifest.json").is_file()
        if exported and settings.prepacked and not settings.use_gpu:
            return _prepacked_estimate_mb(Path(source), settings, weights) + imports
        return weights * _WEIGHTS_FACTOR[backend] + imports

    def describe() -> dict[str, Any]:
        path = Path(source)
        files = {f.name: f.stat().st_size for f in path.iterdir() if f.is_file()} if path.is_dir() else {}
        return {
            "kind": "sentiment",
            "task": task,
            "backend": backend,
            "source": str(source),
            "file_bytes": files,
        }

    def file_allowance(analyzer: Analyzer) -> float:
        return float(getattr(analyzer.model, "file_mb", 0.0))

    return Loadable(
        key=model_key(task, lang),
        load=load,
        estimate_mb=estimate_mb,
        describe=describe,
        check=check,
        file_mb=file_allowance,
    )


def check_supported(task: str, lang: str, tasks: Sequence[str] | None = None) -> None:
    """Every (task, lang) pair of pysentimiento's `create_analyzer` table is served; anything else is
    refused naming, per language, what is (`tasks` narrows it: bulk files take one label per text)."""
    pairs = {
        lang: [t for t in names if tasks is None or t in tasks] for lang, names in supported_pairs().items()
    }
    if is_supported(task, lang) and lang in pairs and task in pairs[lang]:
        return
    listing = "; ".join(f"{name}: {', '.join(names)}" for name, names in pairs.items() if names)
    raise UnsupportedTaskOrLang(
        f"unsupported task/lang {task}/{lang}; supported per language: {listing}",
        supported=pairs,
    )


def analyze(
    texts: Sequence[str], task: str, lang: str, contexts: Sequence[str] | None = None
) -> list[Prediction] | list[TokenPrediction]:
    """Analyze raw texts with the (task, lang) model, loading it on first use.

    Preprocessing runs in the caller's thread, inference in the model's micro-batches; the model
    is held meanwhile, so it cannot be unloaded while the request waits for its batch. Pair tasks
    take one context (a target) per text.
    """
    check_supported(task, lang)
    if contexts is not None:
        texts = [Pair(text, context) for text, context in zip(texts, contexts, strict=True)]
    item, registry = model_item(task, lang), get_registry()
    with registry.use(item) as analyzer:
        max_size = current(get_settings()).batch_max_size
        return batching.analyze(item, analyzer, texts, registry, max_size)
