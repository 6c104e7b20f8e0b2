"""manifest.json: what the onnx backend needs to serve a dir, and how the dir was made."""

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from transformers import PretrainedConfig, PreTrainedTokenizerBase

from service.config import TOKEN_TASKS
from service.sentiment.backends.onnx_backend import MANIFEST

FORMAT_VERSION = 1
MODEL_FILE = "model.onnx"
TOKENIZER_FILE = "tokenizer.json"
# pysentimiento's analyzers set tokenizer.model_max_length = 128 whatever the model's config says.
MAX_LENGTH = 128
SINGLE_LABEL = "single_label_classification"
TOKEN_PROBLEM = "token_classification"  # ner, pos: logits per sub-token


def build_manifest(
    out_dir: Path,
    *,
    task: str,
    lang: str,
    source: str,
    config: PretrainedConfig,
    tokenizer: PreTrainedTokenizerBase,
    quantization: dict[str, Any] | None,
    fp32_onnx_bytes: int,
    accuracy: dict[str, Any] | None = None,
    gate: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The manifest of the files already in `out_dir` (itself excepted); `gate` is the accuracy
    gate's record (service/export/gate.py), `accuracy` the report of `--data`."""
    if tokenizer.pad_token is None:
        raise ValueError("the tokenizer has no padding token, so batches cannot be padded")
    manifest: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "task": task,
        "lang": lang,
        "source": source,
        "model_file": MODEL_FILE,
        "tokenizer_file": TOKENIZER_FILE,
        "id2label": {str(i): config.id2label[i] for i in range(config.num_labels)},
        "problem_type": TOKEN_PROBLEM if task in TOKEN_TASKS else config.problem_type or SINGLE_LABEL,
        "max_length": MAX_LENGTH,
        "pad_token_id": tokenizer.pad_token_id,
        "pad_token": str(tokenizer.pad_token),
        "vocab_size": config.vocab_size,
        "unk_token_id": tokenizer.unk_token_id,
        "quantization": quantization,
        "files": {
            f.name: f.stat().st_size for f in sorted(out_dir.iterdir()) if f.is_file() and f.name != MANIFEST
        },
        "fp32_onnx_bytes": fp32_onnx_bytes,
        "exported_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    if gate is not None:
        manifest["gate"] = gate
    if accuracy is not None:
        manifest["accuracy"] = accuracy
    return manifest


def model_bytes(manifest: dict[str, Any]) -> int:
    """The model's size on disk: the graph and, for INT8, its external weights file."""
    return sum(size for name, size in manifest["files"].items() if name.startswith(MODEL_FILE))


def write_manifest(out_dir: Path, manifest: dict[str, Any]) -> Path:
    path = out_dir / MANIFEST
    path.write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path
