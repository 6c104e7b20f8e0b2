"""The fp32 ONNX graph of a model source, by optimum's exporter.

Named onnx_export, not onnx, so that no script run from this folder can shadow the `onnx` package.
"""

from pathlib import Path

from transformers import AutoConfig, AutoTokenizer, PretrainedConfig, PreTrainedTokenizerBase

OPSET = 18


class ExportError(Exception):
    """An expected failure (a source that cannot load): reported as a message, not a traceback."""


def load_source(source: str) -> tuple[PretrainedConfig, PreTrainedTokenizerBase]:
    """Config and tokenizer, loaded first so that a bad source fails fast with a clear message."""
    looks_local = source.startswith(("/", ".")) or Path(source).exists()  # hub ids are org/name
    if looks_local and not Path(source).is_dir():
        raise ExportError(f"--source {source}: no such directory (a transformers model dir or a hub id)")
    try:
        config = AutoConfig.from_pretrained(source)
        tokenizer = AutoTokenizer.from_pretrained(source)
    except Exception as error:  # OSError, HF hub errors, ValueError: all mean "cannot load"
        hint = (
            ""
            if looks_local
            else " The Hugging Face hub is unreachable on some machines: pass --source DIR with a local "
            "transformers model dir."
        )
        raise ExportError(
            f"cannot load the model source {source!r}: {str(error).rstrip('.')}.{hint}"
        ) from error
    return config, tokenizer


def export_fp32(source: str, work_dir: Path, head: str = "text-classification") -> Path:
    """Export to `work_dir` (optimum also writes config and tokenizer files there); the ONNX path.

    `head` is optimum's task: text-classification, or token-classification for ner and pos."""
    from optimum.exporters.onnx import main_export

    main_export(source, output=work_dir, task=head, opset=OPSET, device="cpu", do_validation=False)
    return work_dir / "model.onnx"
