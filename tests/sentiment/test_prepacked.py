"""Prepacked variants: made in a child, checked against the plain model, served; and every way one
can be wrong (corrupt, truncated, made for another CPU, not makeable) serves the plain model."""

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

from service.sentiment.backends import file_pages, prepacked
from service.sentiment.backends.onnx_backend import OnnxModel, read_manifest, saturation_warning
from tests.support import configured

pytestmark = pytest.mark.slow  # real servers, exports or browsers: not the quick tier


TEXTS = ["me encanta este lugar", "odio los lunes, qué horror", "el tren llega tarde otra vez"]


@pytest.fixture
def model_dir(onnx_minilm: Path, tmp_path: Path) -> Path:
    """A private copy of the exported minilm, without any variant made by other tests."""
    copy = tmp_path / "sentiment-es"
    shutil.copytree(onnx_minilm, copy, ignore=shutil.ignore_patterns(prepacked.LINK, ".prepacked-*"))
    return copy


def load(model_dir: Path, **env: str) -> OnnxModel:
    with configured(**env):
        return OnnxModel(model_dir, num_threads=1)


def improved(model: OnnxModel) -> OnnxModel:
    """What the registry does after the first answer of a model loaded plain: make, swap in."""
    assert model.served.coming
    assert model.make_variant() is None
    assert model.use_variant()
    return model


@pytest.fixture
def plain_probas(model_dir: Path) -> np.ndarray:
    return np.array(load(model_dir, PREPACKED="false").predict_probas(TEXTS))


def served_logs(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("onnx ")]


def test_without_a_variant_the_plain_model_serves_at_once_and_the_variant_is_swapped_in(
    model_dir, plain_probas, caplog
):
    caplog.set_level(logging.INFO, logger="uvicorn.error")
    model = load(model_dir)
    assert not model.served.variant and model.served.coming and "no prepacked variant" in model.served.reason
    assert not (model_dir / prepacked.LINK).exists()  # nothing was made on the load's path
    assert "made after the first answer" in served_logs(caplog)[0]
    assert np.abs(np.array(model.predict_probas(TEXTS)) - plain_probas).max() == 0

    improved(model)
    assert model.served.variant and model.served.graph == model_dir / "prepacked" / "model.onnx"
    assert "made here after the first answer" in model.served.reason
    assert "serving the prepacked variant" in served_logs(caplog)[-1]
    info = prepacked.read_info(model_dir / prepacked.LINK)
    manifest = read_manifest(model_dir)
    assert info["key"] == prepacked.current_key(model_dir, manifest)
    assert info["probe"]["max_abs_diff"] <= prepacked.TOLERANCE
    assert (model_dir / prepacked.LINK).is_symlink() and not list(model_dir.glob(".prepacked-*.link"))
    # Its weights are a mapped file: the probe read them from there.
    assert model.file_mb > 10
    assert np.abs(np.array(model.predict_probas(TEXTS)) - plain_probas).max() <= prepacked.TOLERANCE

    caplog.clear()
    again = load(model_dir)  # a reload maps the variant on disk: nothing is coming
    assert again.served.variant and not again.served.coming
    assert len(served_logs(caplog)) == 1


def test_corrupt_variant_falls_back_to_the_plain_model_and_is_discarded(model_dir, plain_probas, caplog):
    improved(load(model_dir))
    weights = model_dir / prepacked.LINK / prepacked.WEIGHTS
    size = weights.stat().st_size
    with weights.open("r+b") as handle:  # same size, so only the check can tell
        handle.seek(size // 10)
        handle.write(np.random.default_rng(0).integers(0, 256, size * 8 // 10, dtype=np.uint8).tobytes())
    caplog.set_level(logging.INFO, logger="uvicorn.error")
    model = load(model_dir)
    assert not model.served.variant and model.served.graph == model_dir / "model.onnx"
    assert "failed its check at load" in model.served.reason or "is unusable" in model.served.reason
    assert len(served_logs(caplog)) == 1 and "serving the plain model" in served_logs(caplog)[0]
    assert np.abs(np.array(model.predict_probas(TEXTS)) - plain_probas).max() == 0
    assert not (model_dir / prepacked.LINK).exists()  # the server makes a good one after its first answer
    assert improved(model).served.variant


def test_truncated_variant_is_remade(model_dir):
    improved(load(model_dir))
    weights = model_dir / prepacked.LINK / prepacked.WEIGHTS
    with weights.open("r+b") as handle:
        handle.truncate(weights.stat().st_size // 2)
    model = load(model_dir)
    assert not model.served.variant and "incomplete" in model.served.reason
    improved(model)
    info = prepacked.read_info(model_dir / prepacked.LINK)
    assert (model_dir / prepacked.LINK / prepacked.WEIGHTS).stat().st_size == info["files"][prepacked.WEIGHTS]


def another_cpu(model_dir: Path) -> None:
    """Rewrite the variant's key as if made on a CPU that differs in AVX-512 VNNI and AMX."""
    path = model_dir / prepacked.LINK / prepacked.INFO
    info = json.loads(path.read_text())
    info["key"]["cpu_features"] = sorted(set(info["key"]["cpu_features"]) ^ {"avx512_vnni", "amx_int8"})
    path.write_text(json.dumps(info))


def test_variant_from_another_cpu_is_not_used_and_is_remade_here(model_dir):
    improved(load(model_dir))
    another_cpu(model_dir)
    old_target = (model_dir / prepacked.LINK).resolve()
    model = load(model_dir)
    assert not model.served.variant and "stale (cpu_features changed)" in model.served.reason
    improved(model)
    assert (model_dir / prepacked.LINK).resolve() != old_target and not old_target.exists()
    assert prepacked.read_info(model_dir / prepacked.LINK)["key"]["cpu_features"] == prepacked.cpu_features()


def test_variant_from_another_cpu_serves_plain_when_none_can_be_made(model_dir, plain_probas, monkeypatch):
    improved(load(model_dir))
    another_cpu(model_dir)
    monkeypatch.setattr(prepacked, "make_in_child", lambda model_dir, store: "MakeError: disk full")
    model = load(model_dir)
    assert "disk full" in model.make_variant()
    assert "earlier try" in model.make_variant()  # a reload does not pay for a child that fails again
    assert not model.served.variant and "stale (cpu_features changed)" in model.served.reason
    assert np.abs(np.array(model.predict_probas(TEXTS)) - plain_probas).max() == 0


def test_unwritable_store_serves_plain_and_says_why(model_dir, tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    model = load(model_dir, PREPACKED_DIR=str(blocker / "variants"))
    assert not model.served.variant and "cannot write beside" in model.make_variant()
    assert not model.use_variant() and not model.served.variant
    assert not (model_dir / prepacked.LINK).exists()


def test_a_store_outside_read_only_model_dirs(model_dir, tmp_path):
    store = tmp_path / "variants"
    model = improved(load(model_dir, PREPACKED_DIR=str(store)))
    assert model.served.variant and model.served.graph.parent.parent == store
    assert not (model_dir / prepacked.LINK).exists()


def test_cpu_features_keep_only_kernel_selecting_flags(tmp_path):
    x86 = tmp_path / "x86"
    x86.write_text(
        "processor\t: 0\nflags\t\t: fpu vme sse4_2 avx avx2 fma avx512f avx512_vnni hypervisor rdrand\n"
    )
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd evtstrm aes asimddp sve i8mm\n")
    assert prepacked.cpu_features(x86) == ["avx", "avx2", "avx512_vnni", "avx512f", "fma", "sse4_2"]
    assert prepacked.cpu_features(arm) == ["asimd", "asimddp", "i8mm", "sve"]
    assert prepacked.cpu_features(tmp_path / "missing") == []


def test_mapped_size_of_a_models_files(tmp_path):
    smaps = tmp_path / "smaps"
    smaps.write_text(
        "7f0000000000-7f0006400000 r--p 00000000 08:01 42   /models/es/prepacked/model.onnx.data\n"
        "Size:             102400 kB\nRss:               90000 kB\nReferenced:        80000 kB\n"
        "7f0006400000-7f0006500000 r--p 06400000 08:01 42   /models/es/prepacked/model.onnx.data\n"
        "Size:               1024 kB\nRss:                   0 kB\nReferenced:            0 kB\n"
        "7f1000000000-7f1000100000 r-xp 00000000 08:01 43   /usr/lib/libc.so.6\n"
        "Size:               1024 kB\nRss:                1000 kB\nReferenced:         1000 kB\n"
        "7f2000000000-7f2000100000 rw-p 00000000 00:00 0 \n"
        "Size:               1024 kB\nRss:                1000 kB\n"
    )
    prefix = Path("/models/es/prepacked")
    assert file_pages.mapped_kb(prefix, smaps) == {"Size": 103424, "Rss": 90000, "Referenced": 80000}
    assert file_pages.mapped_mb(prefix, smaps) == 101
    assert file_pages.mapped_mb(Path("/models/es"), smaps) == 101  # the variant is inside the model dir
    assert file_pages.mapped_mb(Path("/models/en"), smaps) == 0


def test_a_per_row_int8_model_on_a_cpu_without_vnni_or_amx_is_said_to_lose_accuracy() -> None:
    """AVX2's int8 products saturate with 8-bit weights: the model was gated elsewhere."""
    rows = {"quantization": {"recipe": "int8-rows-ffn-nbits", "rows": True, "row_weight_bits": 8}}
    avx2 = ["avx", "avx2", "fma"]
    warning = saturation_warning(rows, avx2)
    assert warning is not None and "int8-rows-ffn-nbits" in warning
    assert "--recipe int8-rows-outliers" in warning and "weight-only" in warning
    assert saturation_warning(rows, [*avx2, "avx512_vnni"]) is None
    assert saturation_warning(rows, [*avx2, "avxvnni"]) is None
    assert saturation_warning(rows, [*avx2, "amx_int8"]) is None
    assert saturation_warning(rows, ["asimd", "asimddp"]) is None  # not an x86 kernel
    for safe in ({"row_weight_bits": 7}, {"row_activation_bits": 7}, {"row_pairs": True}):
        assert saturation_warning({"quantization": {**rows["quantization"], **safe}}, avx2) is None
    assert saturation_warning({"quantization": {"recipe": "weight-only"}}, avx2) is None
    assert saturation_warning({"quantization": None}, avx2) is None
