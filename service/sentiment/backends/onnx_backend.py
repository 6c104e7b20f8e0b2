"""The onnx backend: onnxruntime + tokenizers + numpy, and nothing that imports torch.

It reads a model dir written by `python -m service.export`: `manifest.json` (labels, problem
type, max length, padding token, model file), the ONNX model and `tokenizer.json`. One class serves
every kind of task: texts, text pairs, and words (ner, pos: logits per sub-token).
"""

import json
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from tokenizers import Encoding, Tokenizer

from service.config import get_settings
from service.hardware import onnx_providers
from service.sentiment.backends import file_pages, prepacked
from service.sentiment.tokens import WordLabel

MANIFEST = "manifest.json"
logger = logging.getLogger("uvicorn.error")  # INFO shows under uvicorn
# Every call is padded to an even number of tokens per text, so that each MatMulNBits call has an
# even number of rows (texts x tokens). onnxruntime 1.32's 8-bit MatMulNBits kernel for AVX512
# (MLAS `MlasQ8Int8GemmKernelBlkLen128Avx512`, accuracy level 4) computes rows in pairs and an odd
# last row on its own, and the two paths sum their lanes in different orders; the int8
# re-quantization of the next layer's activations turns that last-bit difference into up to 0.017
# in a probability. With an even row count every row takes the paired path, whatever its batch
# mates (docs/int8-recipes.md, "Batch invariance", with its cost). A padded token is masked.
ROW_MULTIPLE = 2


def read_manifest(model_dir: Path) -> dict[str, Any]:
    return json.loads((model_dir / MANIFEST).read_text())


def load_tokenizer(model_dir: Path, manifest: dict[str, Any]) -> Tokenizer:
    tokenizer = Tokenizer.from_file(str(model_dir / manifest["tokenizer_file"]))
    tokenizer.enable_truncation(manifest["max_length"])
    tokenizer.enable_padding(
        pad_id=manifest["pad_token_id"], pad_token=manifest["pad_token"], pad_to_multiple_of=ROW_MULTIPLE
    )
    return tokenizer


def session_options(num_threads: int) -> ort.SessionOptions:
    """One intra-op pool of NUM_THREADS and no inter-op pool: more threads than cores is slower.

    The rest stays default, by measurement (docs/int8-recipes.md, RoBERTuito-scale INT8): arena or
    mem-pattern off and other optimization levels change nothing; disabling prepacking is 5.8x slower.
    """
    options = ort.SessionOptions()
    options.intra_op_num_threads = num_threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return options


def run_options(cpu_arena: bool = True) -> ort.RunOptions:
    """Each call gives its activations back to the system when it ends.

    Without it onnxruntime's CPU arena keeps the largest call's working memory for good (RSS
    188 -> 415 MB after one call of 32 long texts at RoBERTuito scale, INT8), which the budget
    would have to count as used; with it (and service/runtime.py's mmap threshold) RSS returns to
    ~200 MB after every call, for 0-6 % more CPU time per call (MEMORY.md).
    """
    options = ort.RunOptions()
    if cpu_arena:  # onnxruntime refuses to shrink an arena that does not exist
        options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
    return options


@dataclass
class Served:
    """Which graph a model serves, why, and the file-backed MB one call of it reads."""

    graph: Path
    variant: bool
    reason: str
    file_mb: float
    coming: bool = False  # plain now; its variant is made and swapped in later (`OnnxModel.use_variant`)


def open_session(
    model_dir: Path,
    manifest: dict[str, Any],
    tokenizer: Tokenizer,
    num_threads: int,
    prepacked_ok: bool = True,
) -> tuple[ort.InferenceSession, Served]:
    """The prepacked variant when a valid one is on disk, else the plain model at once (the variant
    is then made after the first answer: `Served.coming`); one log line says which and why."""
    settings = get_settings()
    plain = model_dir / manifest["model_file"]
    wanted = prepacked_ok and settings.prepacked and not settings.use_gpu
    why_plain = "PREPACKED=false" if prepacked_ok else "the plain model asked for"
    choice = prepacked.Choice(plain, False, why_plain)
    if wanted:
        choice = prepacked.inspect(model_dir, manifest, settings.prepacked_dir)
    opened = None
    if choice.variant:
        opened = _open_variant(model_dir, choice, tokenizer, manifest, num_threads, settings.prepacked_dir)
    if opened is not None:
        session, served = opened
    else:
        file_pages.read_ahead(prepacked.model_files(model_dir, manifest))
        session = ort.InferenceSession(
            str(plain), session_options(num_threads), providers=onnx_providers(settings.use_gpu)
        )
        served = Served(plain, False, choice.reason, file_pages.mapped_mb(model_dir.resolve()), coming=wanted)
    _log_served(model_dir, served)
    warning = saturation_warning(manifest, prepacked.cpu_features())
    if warning is not None:
        logger.warning("onnx %s: %s", model_dir, warning)
    return session, served


# CPU flags whose int8 dot products do not saturate (MLAS's VNNI and AMX kernels).
_EXACT_INT8_FLAGS = frozenset({"avx512_vnni", "avxvnni", "amx_int8"})


def saturation_warning(manifest: dict[str, Any], features: list[str]) -> str | None:
    """Why a per-row INT8 model with plain 8-bit weights and activations (service/export/rows.py)
    answers worse here: an x86 CPU without VNNI or AMX runs it on AVX2's VPMADDUBSW, whose int16
    pair sums saturate (the MiniLM fell from 98.6 % to 94.9 % label agreement; docs/int8-recipes.md).
    None when that does not apply: 7-bit weights or activations, or 8-bit weights whose adjacent
    pairs were fitted under the bound (`row_pairs`), compute the same integers on every x86 CPU."""
    recipe = manifest.get("quantization") or {}
    if not recipe.get("rows") or recipe.get("row_pairs"):
        return None
    if recipe.get("row_weight_bits", 8) != 8 or recipe.get("row_activation_bits", 8) != 8:
        return None
    if "avx2" not in features or _EXACT_INT8_FLAGS.intersection(features):
        return None
    return (
        f"its recipe {recipe.get('recipe')} was gated where int8 products are exact (VNNI/AMX); this "
        "CPU has AVX2 only, whose int8 products saturate and lose accuracy: export it on this CPU (its gate "
        "then falls back), or with --recipe int8-rows-outliers (no saturation) or weight-only"
    )


def _open_variant(
    model_dir: Path,
    choice: prepacked.Choice,
    tokenizer: Tokenizer,
    manifest: dict[str, Any],
    num_threads: int,
    store: Path | None,
) -> tuple[ort.InferenceSession, Served] | None:
    """A session over the variant that passed its probe; None (and the variant discarded, its
    reason appended to `choice.reason`) when it is corrupt or fails the probe.

    Its files are not read through first (the plain model's are): onnxruntime maps and reads the
    whole variant anyway, and at 0.1 CPU on a cold page cache the read-through cost more CPU than
    it saved (MEMORY.md, issue 22, helper wake4)."""
    settings = get_settings()
    multi_label = manifest["problem_type"] == "multi_label_classification"
    try:
        session = ort.InferenceSession(
            str(choice.graph), session_options(num_threads), providers=onnx_providers(settings.use_gpu)
        )
        diff = prepacked.check(_probe(session, tokenizer, multi_label), choice.info)
    except Exception as error:  # a truncated or corrupt file: ORT refuses it or the probe fails
        choice.reason += f" is unusable ({type(error).__name__}: {error})"
    else:
        if diff is not None:
            reason = f"{choice.reason} (probe max diff {diff:.2g})"
            mapped = file_pages.mapped_mb(choice.graph.parent.resolve())
            return session, Served(choice.graph, True, reason, mapped)
        choice.reason += " failed its check at load"
    prepacked.discard(model_dir, store)
    return None


def _log_served(model_dir: Path, served: Served) -> None:
    logger.info(
        "onnx %s: serving %s: %s; file-backed pages per call %.1f MB",
        model_dir,
        "the prepacked variant" if served.variant else "the plain model",
        served.reason + ("; its prepacked variant is made after the first answer" if served.coming else ""),
        served.file_mb,
    )


def _probe(session: ort.InferenceSession, tokenizer: Tokenizer, multi_label: bool) -> np.ndarray:
    return prepacked.probabilities(session, prepacked.probe_feed(session, tokenizer), multi_label)


class OnnxModel:
    def __init__(self, model_dir: Path, num_threads: int, prepacked: bool = True) -> None:
        """`prepacked=False`: the exported model itself, never a variant (what the export measures)."""
        self.model_dir, self.num_threads = model_dir, num_threads
        self.store = get_settings().prepacked_dir  # where its variant is (made)
        manifest = read_manifest(model_dir)
        self.manifest = manifest
        id2label = manifest["id2label"]
        self.labels = [id2label[str(i)] for i in range(len(id2label))]
        self.multi_label = manifest["problem_type"] == "multi_label_classification"
        self.tokenizer = load_tokenizer(model_dir, manifest)
        options = session_options(num_threads)
        self.run_options = run_options(options.enable_cpu_mem_arena)
        self.session, self.served = open_session(model_dir, manifest, self.tokenizer, num_threads, prepacked)
        self.input_names = {node.name for node in self.session.get_inputs()}
        # File-backed MB its calls read (the mapped weights): the registry's allowance for this
        # model while work runs on it (service/sentiment/backends/file_pages.py).
        self.file_mb = self.served.file_mb
        # A converted BERTweet tokenizer can emit ids past the model's vocab where the original
        # tokenizer gives <unk> (service/export/tokenizer.py): map them back to <unk>.
        self.vocab_size = manifest.get("vocab_size")
        self.unk_token_id = manifest.get("unk_token_id")
        self.answered = threading.Event()  # a call has returned: its variant may be made now
        self._generation = 0  # bumped by each session swap
        self._calls: dict[int, int] = {}  # generation -> calls running on that session
        self._calls_lock = threading.Condition()

    def make_variant(self) -> str | None:
        """Make this model's prepacked variant in a child (None when a valid one is there now, else
        why not). Slow (seconds of CPU), so called off the request path, after the first answer."""
        return prepacked.make_here(self.model_dir, self.manifest, self.store)

    def use_variant(self) -> bool:
        """Swap the valid variant on disk in for the plain session, once the calls running on that
        one have ended (its memory goes back when this returns); False if it is not usable."""
        choice = prepacked.inspect(self.model_dir, self.manifest, self.store)
        opened = _open_variant(
            self.model_dir, choice, self.tokenizer, self.manifest, self.num_threads, self.store
        )
        if opened is None:
            _log_served(self.model_dir, Served(self.served.graph, False, choice.reason, self.file_mb))
            return False
        session, served = opened
        served.reason += ", made here after the first answer"
        with self._calls_lock:
            old = self._generation
            self.session, self.served, self.file_mb = session, served, served.file_mb
            self._generation += 1
            self._calls_lock.wait_for(lambda: not self._calls.get(old))
            self._calls.pop(old, None)
        _log_served(self.model_dir, served)
        return True

    def predict_probas(self, texts: Sequence[str]) -> list[list[float]]:
        return self._probas(self.tokenizer.encode_batch(list(texts)))

    def predict_pair_probas(self, texts: Sequence[str], contexts: Sequence[str]) -> list[list[float]]:
        """Each text with its context as the second segment, as `tokenizer(texts, contexts)` encodes them."""
        return self._probas(
            self.tokenizer.encode_batch([(str(t), c) for t, c in zip(texts, contexts, strict=True)])
        )

    def predict_word_labels(self, words: Sequence[Sequence[str]]) -> list[list[WordLabel | None]]:
        """Per word, the argmax label id of its first sub-token and its softmax probability (None when
        truncation dropped it), as `tokenizer(words, is_split_into_words=True)` encodes words."""
        encodings = self.tokenizer.encode_batch([list(w) for w in words], is_pretokenized=True)
        logits = self._logits(encodings)
        label_ids = logits.argmax(axis=-1)
        shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
        scores = (shifted / shifted.sum(axis=-1, keepdims=True)).max(axis=-1)
        result = []
        for sentence, encoding, ids, row in zip(words, encodings, label_ids, scores, strict=True):
            first: dict[int, WordLabel] = {}
            for position, word_id in enumerate(encoding.word_ids):
                if word_id is not None and word_id not in first:
                    first[word_id] = (int(ids[position]), float(row[position]))
            result.append([first.get(index) for index in range(len(sentence))])
        return result

    def _probas(self, encodings: list[Encoding]) -> list[list[float]]:
        return _probabilities(self._logits(encodings), self.multi_label).tolist()

    def _logits(self, encodings: list[Encoding]) -> np.ndarray:
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        if self.vocab_size is not None and self.unk_token_id is not None:
            ids[ids >= self.vocab_size] = self.unk_token_id
        feed = {
            "input_ids": ids,
            "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
        }
        if "token_type_ids" in self.input_names:
            feed["token_type_ids"] = np.array([e.type_ids for e in encodings], dtype=np.int64)
        with self._calls_lock:
            session, generation = self.session, self._generation
            self._calls[generation] = self._calls.get(generation, 0) + 1
        try:
            (logits,) = session.run(["logits"], feed, self.run_options)
        finally:
            del session  # the last reference to a swapped-out session: its memory goes now
            with self._calls_lock:
                self._calls[generation] -= 1
                self._calls_lock.notify_all()
        self.answered.set()
        return logits.astype(np.float32)


def _probabilities(logits: np.ndarray, multi_label: bool) -> np.ndarray:
    if multi_label:
        return 1.0 / (1.0 + np.exp(-logits))
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)
