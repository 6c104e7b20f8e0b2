"""Sentiment models as registry items: where each (task, lang) model comes from, what it costs.

The route calls `analyze`; the model behind it is loaded on first use through the registry,
under the memory budget, and stays a singleton until the budget needs its room.
"""

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from starlette.concurrency import run_in_threadpool

from service.config import (
    LANGS,
    TOKEN_TASKS,
    Settings,
    get_settings,
    is_supported,
    model_env_var,
    supported_pairs,
)
from service.exceptions import ModelUnavailable, UnsupportedTaskOrLang
from service.hardware import WORK_MB_FIXED, current, num_threads
from service.registry import Loadable, Registry, get_registry
from service.sentiment import batching
from service.sentiment.analyzer import Analyzer, Pair, TokenAnalyzer, create_analyzer, model_key
from service.sentiment.language import Detection, detector_item
from service.sentiment.schemas import (
    AUTO,
    AutoPrediction,
    AutoTokenPrediction,
    Prediction,
    TextError,
    TokenPrediction,
)
from service.sentiment.tokens import require_spacy

MB = 1024 * 1024
# What `analyze` answers: one model's predictions, or per text its language's (lang `auto`).
Predictions = (
    list[Prediction] | list[TokenPrediction] | list[AutoPrediction | AutoTokenPrediction | TextError]
)
# RSS a backend's imports add the first time a model loads (measured: torch + transformers +
# pysentimiento ~300 MB; onnxruntime + tokenizers + numpy ~45 MB), then weights x overhead.
_IMPORT_MB = {"torch": 300.0, "onnx": 45.0}
_WEIGHTS_FACTOR = {"torch": 1.3, "onnx": 1.2}
_UNKNOWN_WEIGHTS_MB = {"torch": 500.0, "onnx": 130.0}  # a hub id: RoBERTuito-size guess
# spaCy's tokenizer, imported with the first ner/pos model: +51 MB RSS beside the onnx backend (MEMORY.md).
_WORD_TOKENIZER_MB = 55.0
_WEIGHT_SUFFIXES = (".onnx", ".data", ".safetensors", ".bin", ".pt")
_VARIANT_MB = 8.0  # see _prepacked_estimate_mb
# A model loaded plain gets its prepacked variant after its first answer, or this long after its
# load without one; the child that makes it needs the plain model's memory plus its own imports.
VARIANT_AFTER_S = 30.0
VARIANT_CHILD_MB = _IMPORT_MB["onnx"]


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


def export_record(model_dir: Path) -> dict[str, Any]:
    """How an exported dir was made, as its manifest says: the recipe served ("fp32" unquantized)
    and the export's accuracy gate without its attempts (None: exported before the gate)."""
    from service.sentiment.backends.onnx_backend import read_manifest

    manifest = read_manifest(model_dir)
    gate = manifest.get("gate")
    return {
        "recipe": (manifest.get("quantization") or {}).get("recipe", "fp32"),
        "gate": None if gate is None else {k: v for k, v in gate.items() if k != "attempts"},
    }


def _prepacked_estimate_mb(model_dir: Path, settings: Settings, weights_mb: float) -> float:
    """Unreclaimable MB of a first load that serves the prepacked variant.

    Measured at RoBERTuito scale: +7 MB over a valid variant (its graph and buffers; the weights
    are mapped); without one the plain model loads first (its variant is made later, in a child
    that `Registry.improve` admits on its own)."""
    from service.sentiment.backends import prepacked
    from service.sentiment.backends.onnx_backend import read_manifest

    manifest = read_manifest(model_dir)
    if prepacked.inspect(model_dir, manifest, settings.prepacked_dir).variant:
        return (model_dir / manifest["model_file"]).stat().st_size / MB * 2 + _VARIANT_MB
    return weights_mb * _WEIGHTS_FACTOR["onnx"]


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

    state: dict[str, str] = {}

    def load() -> Analyzer | TokenAnalyzer:
        try:
            analyzer = create_analyzer(task, lang, source, backend, num_threads(settings))
        except Exception as error:  # a hub that cannot be reached, a missing or broken dir
            raise _unavailable(task, lang, settings, error) from error
        state.clear()
        if getattr(getattr(analyzer.model, "served", None), "coming", False):
            state["prepacked"] = "coming"
            _variant_later(model_key(task, lang), analyzer)
        return analyzer

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
        details = {
            "kind": "sentiment",
            "task": task,
            "backend": backend,
            "source": str(source),
            "file_bytes": files,
            **state,
        }
        if backend == "onnx":
            details |= export_record(path)
        return details

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


def _variant_later(key: str, analyzer: Analyzer | TokenAnalyzer) -> None:
    """The prepacked variant of a model that loaded plain (none valid on disk for this CPU): made
    after its first answer (or VARIANT_AFTER_S without one) in a niced child, then swapped in."""
    model = analyzer.model

    def run() -> None:
        model.answered.wait(VARIANT_AFTER_S)
        get_registry().improve(
            key,
            analyzer,
            model.make_variant,
            lambda: model.file_mb if model.use_variant() else None,
            VARIANT_CHILD_MB,
            f"the prepacked variant of {key}",
        )

    threading.Thread(target=run, name=f"variant-{key}", daemon=True).start()


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
    texts: Sequence[str],
    task: str,
    lang: str,
    contexts: Sequence[str] | None = None,
    fallback: bool = False,
) -> Predictions:
    """Analyze raw texts with the (task, lang) model, loading it on first use.

    Preprocessing runs in the caller's thread, inference in the model's micro-batches; the model
    is held meanwhile, so it cannot be unloaded while the request waits for its batch. Pair tasks
    take one context (a target) per text. `lang="auto"`: see `analyze_auto`.
    """
    if lang == AUTO:
        return analyze_auto(texts, task, contexts, fallback)
    check_supported(task, lang)
    item, registry = model_item(task, lang), get_registry()
    with registry.use(item) as analyzer:
        return _predict(item, analyzer, texts, contexts, registry)


async def analyze_async(
    texts: Sequence[str],
    task: str,
    lang: str,
    contexts: Sequence[str] | None = None,
    fallback: bool = False,
) -> Predictions:
    """`analyze` for an async route. With micro-batching on and the model loaded, the request
    never takes a pool thread: two thread hand-offs less per request (the route's and its response
    check's), which cost more CPU than a bare route. Whatever may block (a load, language
    detection, inference in the caller's thread) runs in the threadpool, as `analyze`."""
    pool = batching.active_pool()
    if pool is not None and lang != AUTO:
        check_supported(task, lang)
        item = model_item(task, lang)
        with get_registry().use_loaded(item) as analyzer:
            if analyzer is not None:
                return await batching.analyze_async(pool.batcher(item), analyzer, _inputs(texts, contexts))
    return await run_in_threadpool(analyze, texts, task, lang, contexts, fallback)


def _inputs(texts: Sequence[str], contexts: Sequence[str] | None) -> Sequence[str]:
    """Pair tasks' texts carry their context (one per text)."""
    if contexts is None:
        return texts
    return [Pair(text, context) for text, context in zip(texts, contexts, strict=True)]


def _predict(
    item: Loadable,
    analyzer: Analyzer | TokenAnalyzer,
    texts: Sequence[str],
    contexts: Sequence[str] | None,
    registry: Registry,
) -> list[Prediction] | list[TokenPrediction]:
    return batching.analyze(
        item, analyzer, _inputs(texts, contexts), registry, current(get_settings()).batch_max_size
    )


def task_langs(task: str) -> tuple[str, ...]:
    """The languages that have a model for `task`: what `auto` detects among."""
    return tuple(lang for lang in LANGS if is_supported(task, lang))


def detect(texts: Sequence[str], candidates: tuple[str, ...]) -> list[Detection]:
    """Each text's language among `candidates`, by the detector (a registry item)."""
    with get_registry().use(detector_item()) as detector:
        return [detector.detect(text, candidates) for text in texts]


def analyze_auto(
    texts: Sequence[str], task: str, contexts: Sequence[str] | None = None, fallback: bool = False
) -> list[AutoPrediction | AutoTokenPrediction | TextError]:
    """Each text read by the model of its own language, detected among the task's languages;
    results in input order. A text whose language cannot be told gets a `TextError`, or with
    `fallback` DEFAULT_LANG's model.

    Every model the batch needs is held at once (`Registry.use_all`): the request waits until the
    budget holds them all, or is refused with 503 + Retry-After, never answered in part. Each
    language's texts then go through that model's micro-batching, one language after another.
    """
    candidates = task_langs(task)
    if not candidates:
        check_supported(task, AUTO)  # raises, listing what is supported
    default = get_settings().default_lang
    if fallback:
        check_supported(task, default)
    detections = detect(texts, candidates)
    chosen = [found.lang or (default if fallback else None) for found in detections]
    groups: dict[str, list[int]] = {}
    for index, lang in enumerate(chosen):
        if lang is not None:
            groups.setdefault(lang, []).append(index)
    results: list[AutoPrediction | AutoTokenPrediction | TextError] = [
        TextError(error={"code": found.error, "message": found.message(), "detected": found.other})
        if lang is None
        else None
        for found, lang in zip(detections, chosen, strict=True)
    ]
    if not groups:
        return results
    registry = get_registry()
    items = [model_item(task, lang) for lang in groups]
    with registry.use_all(items, WORK_MB_FIXED) as analyzers:
        for (lang, indexes), item, analyzer in zip(groups.items(), items, analyzers, strict=True):
            group_contexts = [contexts[i] for i in indexes] if contexts is not None else None
            predictions = _predict(item, analyzer, [texts[i] for i in indexes], group_contexts, registry)
            for index, prediction in zip(indexes, predictions, strict=True):
                found = detections[index]
                shape = AutoTokenPrediction if isinstance(prediction, TokenPrediction) else AutoPrediction
                results[index] = shape(
                    **prediction.model_dump(),
                    lang=lang,
                    lang_confidence=found.scores.get(lang, 0.0),
                    lang_source="detected" if found.lang is not None else "fallback",
                )
    return results
