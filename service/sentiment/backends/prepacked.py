"""Prepacked variants: the exported model with onnxruntime's prepacked weights saved to a file.

As exported, a model's weights are repacked for this CPU's kernels at every load, into anonymous
memory that the kernel can never reclaim (+94 MB at RoBERTuito scale). A session can instead save
its optimized graph with the prepacked weights in an external file; a session over that file maps
them (+4 MB anonymous): clean file-backed pages that a cgroup under pressure drops and re-reads
instead of OOM-killing the process (MEMORY.md, "File-backed models").

The packed layout depends on the onnxruntime version and on the CPU features that pick MLAS's
kernels, so a variant is keyed by everything that makes it valid: the build makes one
(`python -m service.sentiment.backends.prepacked --configured`, run by `start.sh install`), which
a server on the same kind of CPU maps at once; a server on another kind serves the plain model
first and makes its own after its first answer, in a niced child process (its load peak must not
stay in the server), then swaps it in (onnx_backend.py, the registry's `improve`). A variant is
written to a temp dir, published by an atomic symlink swap, and trusted only after its
probabilities matched the plain model's on fixed inputs. Anything else (missing, stale key,
failed check, unwritable dir, corrupt file) serves the plain model, with one log line saying why.
"""

import argparse
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from service import budget

FORMAT = 1
LINK = "prepacked"  # <model dir>/prepacked, or PREPACKED_DIR/<name>-<hash>: a symlink to the variant
INFO = "variant.json"
GRAPH = "model.onnx"
WEIGHTS = "model.onnx.data"
# Initializers under this size stay inside the graph (read into anonymous memory): biases and
# layer norms, a few KB each. Larger ones go to the mapped file (MEMORY.md: the sizes tried).
MIN_EXTERNAL_BYTES = 4096
# Fixed inputs of the check, one padded batch (texts as the backend gets them: preprocessed).
PROBE_TEXTS = (
    "que buen día hace hoy, me encanta @usuario",
    "this is the worst service I have ever used, never again emoji cara enojada emoji",
)
# Largest |p_variant - p_plain| trusted. Same CPU and batch shape, the variant runs the same
# kernels on the same packed numbers: measured differences are 0 to ~1e-6 (MEMORY.md). A layout
# packed for other kernels gives garbage (differences of tenths). The model's own variation with
# the batch shape is up to 0.0077 (INT8), so 1e-4 is far below anything a user could see.
TOLERANCE = 1e-4
# x86 and arm CPU flags (/proc/cpuinfo) that select MLAS's GEMM and quantized-GEMM kernels.
KERNEL_FLAGS = frozenset(
    {
        "sse3", "ssse3", "sse4_1", "sse4_2", "avx", "avx2", "fma", "f16c",
        "avx512f", "avx512bw", "avx512dq", "avx512vl", "avx512cd", "avx512_vnni", "avx512_bf16",
        "avx512_fp16", "avxvnni", "avx_vnni_int8", "amx_tile", "amx_int8", "amx_bf16", "amx_fp16",
        "asimd", "asimddp", "asimdhp", "i8mm", "bf16", "sve", "sve2", "sme",
    }
)  # fmt: skip


def cpu_features(cpuinfo: Path = Path("/proc/cpuinfo")) -> list[str]:
    """The kernel-selecting flags of this CPU (x86 `flags`, arm `Features`), sorted."""
    try:
        lines = cpuinfo.read_text().splitlines()
    except OSError:
        return []
    for line in lines:
        name, _, value = line.partition(":")
        if name.strip() in ("flags", "Features"):
            return sorted(set(value.split()) & KERNEL_FLAGS)
    return []


def model_files(model_dir: Path, manifest: dict[str, Any]) -> list[Path]:
    """The exported graph and its weights (model.onnx, model.onnx.data)."""
    name = manifest["model_file"]
    return sorted(p for p in model_dir.iterdir() if p.is_file() and p.name.startswith(name))


def _stats(files: Sequence[Path]) -> dict[str, list[int]]:
    return {f.name: [f.stat().st_size, f.stat().st_mtime_ns] for f in files}


def _sha256(files: Sequence[Path]) -> str:
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode() + b"\0")
        with path.open("rb") as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()


def current_key(
    model_dir: Path, manifest: dict[str, Any], known: dict[str, Any] | None = None
) -> dict[str, Any]:
    """What a valid variant of this model on this machine must have been made with.

    The model's hash is taken from `known` (a variant's info) when its files' sizes and mtimes are
    the ones recorded there: hashing 110 MB takes seconds on a 0.1-CPU instance, at every load.
    """
    files = model_files(model_dir, manifest)
    stats = _stats(files)
    recorded = (known or {}).get("model_stats")
    same = recorded == stats and known is not None
    return {
        "format": FORMAT,
        "onnxruntime": ort.__version__,
        "machine": platform.machine(),
        "cpu_features": cpu_features(),
        "model_sha256": known["key"]["model_sha256"] if same else _sha256(files),
    }


def variant_link(model_dir: Path, store: Path | None) -> Path:
    """Where the variant of `model_dir` is published: in it, or in PREPACKED_DIR when set."""
    if store is None:
        return model_dir / LINK
    tag = hashlib.sha256(str(model_dir.resolve()).encode()).hexdigest()[:10]
    return store / f"{model_dir.name}-{tag}"


@dataclass
class Choice:
    """What the backend serves: the graph to open, whether it is the variant, and why."""

    graph: Path
    variant: bool
    reason: str
    info: dict[str, Any] = field(default_factory=dict)


def read_info(link: Path) -> dict[str, Any] | None:
    try:
        return json.loads((link / INFO).read_text())
    except (OSError, ValueError):
        return None


def inspect(model_dir: Path, manifest: dict[str, Any], store: Path | None) -> Choice:
    """The variant if it is there, complete and made for this model on this machine."""
    plain = model_dir / manifest["model_file"]
    link = variant_link(model_dir, store)
    info = read_info(link)
    if info is None:
        return Choice(plain, False, f"no prepacked variant at {link}")
    key = current_key(model_dir, manifest, info)
    if info.get("key") != key:
        changed = sorted(k for k in key if info.get("key", {}).get(k) != key[k])
        return Choice(plain, False, f"the variant at {link} is stale ({', '.join(changed)} changed)")
    for name, size in info.get("files", {}).items():
        path = link / name
        if not path.is_file() or path.stat().st_size != size:
            return Choice(plain, False, f"the variant at {link} is incomplete ({name})")
    return Choice(link / GRAPH, True, f"prepacked variant at {link}", info)


def probe_feed(session: ort.InferenceSession, tokenizer: Any) -> dict[str, Any]:
    """The fixed probe batch as the backend would feed it."""
    encodings = tokenizer.encode_batch(list(PROBE_TEXTS))
    feed = {
        "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
        "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
    }
    if "token_type_ids" in {node.name for node in session.get_inputs()}:
        feed["token_type_ids"] = np.array([e.type_ids for e in encodings], dtype=np.int64)
    return feed


def probabilities(session: ort.InferenceSession, feed: dict[str, Any], multi_label: bool) -> np.ndarray:
    (logits,) = session.run(["logits"], feed)
    logits = logits.astype(np.float64)
    if multi_label:
        return 1.0 / (1.0 + np.exp(-logits))
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def check(probas: np.ndarray, info: dict[str, Any]) -> float | None:
    """The largest difference from the plain model's recorded probe probabilities; None if over."""
    reference = np.array(info["probe"]["plain_probabilities"], dtype=np.float64)
    if probas.shape != reference.shape:
        return None
    diff = float(np.abs(probas - reference).max())
    return diff if diff <= TOLERANCE else None


class MakeError(Exception):
    """The variant could not be made or did not pass its check; the message says why."""


def saving_options(base: ort.SessionOptions, graph: Path) -> ort.SessionOptions:
    """`base` that also writes the optimized graph to `graph`, prepacked weights beside it."""
    base.optimized_model_filepath = str(graph)
    base.log_severity_level = 3  # not the warning that the saved graph is for this machine: it is keyed so
    for key, value in (
        ("session.save_external_prepacked_constant_initializers", "1"),
        ("session.optimized_model_external_initializers_file_name", WEIGHTS),
        ("session.optimized_model_external_initializers_min_size_in_bytes", str(MIN_EXTERNAL_BYTES)),
    ):
        base.add_session_config_entry(key, value)
    return base


def make(model_dir: Path, store: Path | None = None) -> dict[str, Any]:
    """Make, check and publish the variant of `model_dir`; returns its info. Run it in a child.

    Raises MakeError (unwritable dir, failed check); leaves no partial variant behind.
    """
    from tokenizers import Tokenizer

    from service.sentiment.backends.onnx_backend import load_tokenizer, read_manifest, session_options

    started = time.process_time()
    manifest = read_manifest(model_dir)
    link = variant_link(model_dir, store)
    try:
        link.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".prepacked-", dir=link.parent))
    except OSError as error:
        raise MakeError(f"cannot write beside {link}: {error}") from error
    try:
        key = current_key(model_dir, manifest)
        cpu = ["CPUExecutionProvider"]
        plain_graph = str(model_dir / manifest["model_file"])
        plain = ort.InferenceSession(
            plain_graph, saving_options(session_options(1), staging / GRAPH), providers=cpu
        )
        tokenizer: Tokenizer = load_tokenizer(model_dir, manifest)
        multi_label = manifest["problem_type"] == "multi_label_classification"
        feed = probe_feed(plain, tokenizer)
        expected = probabilities(plain, feed, multi_label)
        del plain  # before the variant loads: the child's peak is one model, not two
        variant = ort.InferenceSession(str(staging / GRAPH), session_options(1), providers=cpu)
        diff = float(np.abs(probabilities(variant, feed, multi_label) - expected).max())
        del variant
        if not diff <= TOLERANCE:
            raise MakeError(f"its probabilities differ from the plain model's by {diff:.3g} (> {TOLERANCE})")
        info = {
            "key": key,
            "model_stats": _stats(model_files(model_dir, manifest)),
            "files": {p.name: p.stat().st_size for p in sorted(staging.iterdir())},
            "probe": {"plain_probabilities": expected.tolist(), "max_abs_diff": diff, "tolerance": TOLERANCE},
            "made_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "make_cpu_s": round(time.process_time() - started, 2),
        }
        (staging / INFO).write_text(json.dumps(info, indent=2) + "\n")
        _publish(staging, link)
        return info
    except MakeError:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    except Exception as error:
        shutil.rmtree(staging, ignore_errors=True)
        raise MakeError(f"{type(error).__name__}: {error}") from error


def _publish(staging: Path, link: Path) -> None:
    """Point `link` at `staging` in one rename, then remove the variant it pointed at before.

    A reader sees the old variant or the new one, never half of one; a session that still maps
    the old files keeps them until it closes (unlinked files live while mapped)."""
    for path in staging.iterdir():
        with path.open("rb") as handle:
            os.fsync(handle.fileno())
    previous = link.resolve() if link.is_symlink() else None
    temp_link = link.parent / f".{link.name}.{os.getpid()}.link"
    temp_link.unlink(missing_ok=True)
    temp_link.symlink_to(staging.name)
    if link.exists() and not link.is_symlink():  # a real dir in the way (made by hand): replace it
        shutil.rmtree(link)
    os.replace(temp_link, link)
    if previous is not None and previous != staging.resolve() and previous.parent == link.parent:
        shutil.rmtree(previous, ignore_errors=True)


def discard(model_dir: Path, store: Path | None) -> None:
    """Remove a variant found unusable at load, so that the next load or start makes a new one."""
    link = variant_link(model_dir, store)
    target = link.resolve() if link.is_symlink() else None
    try:
        link.unlink(missing_ok=True)
        if target is not None and target.parent == link.parent.resolve():
            shutil.rmtree(target, ignore_errors=True)
    except OSError:
        pass  # a read-only store: the plain model is served, the next start.sh reports it


# Keys whose variant this process failed to make: a reload after an eviction serves the plain
# model without paying for another child that would fail the same way.
_failed: dict[str, str] = {}
# The child runs at the lowest priority: the server's requests come first on a 0.1-CPU instance.
NICE = 19
_CHILD = (
    "import os, runpy, sys; os.nice(int(sys.argv.pop(1))); "
    "runpy.run_module('service.sentiment.backends.prepacked', run_name='__main__')"
)


def make_here(model_dir: Path, manifest: dict[str, Any], store: Path | None) -> str | None:
    """Make the variant in a child unless one made with this key already failed here; None when
    a valid variant is there afterwards, else why not."""
    memo = json.dumps([str(model_dir.resolve()), current_key(model_dir, manifest)], sort_keys=True)
    if memo in _failed:
        return f"{_failed[memo]} (earlier try)"
    failure = make_in_child(model_dir, store)
    if failure is None and not inspect(model_dir, manifest, store).variant:
        failure = "the child made no valid variant"
    if failure is not None:
        _failed[memo] = failure
    return failure


def make_in_child(model_dir: Path, store: Path | None, timeout_s: float = 1800) -> str | None:
    """Make the variant in a fresh interpreter at nice NICE, so its load peak leaves with it and
    requests keep the CPU; the budget counts its memory while it runs. None on success, else why
    it failed (the child's last line of stderr)."""
    command = [sys.executable, "-c", _CHILD, str(NICE), str(model_dir)]
    if store is not None:
        command += ["--store", str(store)]
    try:
        child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    except OSError as error:
        return f"{type(error).__name__}: {error}"
    budget.track_child(child.pid)
    try:
        _, stderr = child.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired as error:
        child.kill()
        child.communicate()
        return f"{type(error).__name__}: {error}"
    finally:
        budget.forget_child(child.pid)
    if child.returncode == 0:
        return None
    lines = [line for line in stderr.splitlines() if line.strip()]
    return lines[-1] if lines else f"exit status {child.returncode}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m service.sentiment.backends.prepacked",
        description="Make the prepacked variant of exported model dirs (or of every configured one).",
    )
    parser.add_argument("model_dirs", nargs="*", type=Path)
    parser.add_argument("--configured", action="store_true", help="the EXPORT_MODELS dirs of the settings")
    parser.add_argument(
        "--store", type=Path, help="where variants go (default: PREPACKED_DIR, else each dir)"
    )
    parser.add_argument("--force", action="store_true", help="remake even a valid variant")
    args = parser.parse_args(argv)

    from service.config import get_settings
    from service.sentiment.backends.onnx_backend import read_manifest

    settings = get_settings()
    store = args.store or settings.prepacked_dir
    dirs = list(args.model_dirs)
    if args.configured:
        dirs += [settings.exported_dir(task, lang) for task, lang in settings.export_targets()]
    failed = 0
    for model_dir in dirs:
        if not (model_dir / "manifest.json").is_file():
            print(f"prepacked: {model_dir}: not an exported model dir; skipped", file=sys.stderr)
            continue
        if not args.force and inspect(model_dir, read_manifest(model_dir), store).variant:
            print(f"prepacked: {model_dir}: the variant is valid")
            continue
        try:
            info = make(model_dir, store)
        except MakeError as error:
            failed += 1
            print(f"prepacked: {model_dir}: not made: {error}", file=sys.stderr)
            continue
        size = sum(info["files"].values()) / 2**20
        print(
            f"prepacked: {model_dir}: made {variant_link(model_dir, store)} ({size:.1f} MiB, "
            f"{info['make_cpu_s']} s CPU, probe max diff {info['probe']['max_abs_diff']:.2g})"
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
