"""Per-row INT8 (issue 23): int8 GEMMs whose activation scales come from each row alone.

A tiny graph (an embedding Gather, then two MatMuls) checks what rows.py writes: every constant-weight
MatMul becomes MatMulIntegerToFloat, a row's answer is bit-identical alone and among other rows,
7-bit weights stay within +-63, SmoothQuant's rescaling alone leaves the function unchanged, and a
recipe that smooths refuses to run without calibration inputs.
"""

import dataclasses
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from service.export import calibrate, rows
from service.export.calibrate import channel_maxima
from service.export.quantize import RECIPES, VNNI_RECIPE, quantize

K, N, VOCAB = 256, 64, 50


def tiny(path: Path) -> Path:
    rng = np.random.default_rng(3)
    table = rng.normal(size=(VOCAB, K)).astype(np.float32)
    table[:, 7] *= 40  # an outlier channel, as transformers' activations have
    graph = helper.make_graph(
        [
            helper.make_node("Gather", ["table", "ids"], ["embedded"], name="embeddings/Gather"),
            helper.make_node("MatMul", ["embedded", "first"], ["hidden"], name="first/MatMul"),
            helper.make_node("MatMul", ["hidden", "second"], ["out"], name="second/MatMul"),
        ],
        "tiny",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", "tokens"])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", "tokens", N])],
        [
            numpy_helper.from_array(table, "table"),
            numpy_helper.from_array(rng.normal(size=(K, K)).astype(np.float32) / 16, "first"),
            numpy_helper.from_array(rng.normal(size=(K, N)).astype(np.float32) / 16, "second"),
        ],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


@pytest.fixture(scope="module")
def fp32(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny(tmp_path_factory.mktemp("rows") / "fp32.onnx")


def run(path: Path | onnx.ModelProto, ids: np.ndarray) -> np.ndarray:
    model = str(path) if isinstance(path, Path) else path.SerializeToString()
    return ort.InferenceSession(model, providers=["CPUExecutionProvider"]).run(None, {"ids": ids})[0]


IDS = np.random.default_rng(4).integers(0, VOCAB, size=(6, 5)).astype(np.int64)
FEEDS = [{"ids": IDS[i : i + 1]} for i in range(len(IDS))]


def relative_error(fp32: Path, out: Path, name: str) -> float:
    quantize(fp32, out, RECIPES[name], FEEDS)
    ops = [node.op_type for node in onnx.load(out, load_external_data=False).graph.node]
    assert ops.count("MatMulIntegerToFloat") == 2 and "MatMul" not in ops
    reference = run(fp32, IDS)
    return float(np.abs(run(out, IDS) - reference).max() / np.abs(reference).max())


def test_every_constant_weight_matmul_becomes_an_int8_gemm_and_smoothing_brings_it_closer(fp32, tmp_path):
    errors = {
        name: relative_error(fp32, tmp_path / f"{name}.onnx", name) for name in RECIPES if "rows" in name
    }
    # the outlier channel sets every row's scale without smoothing; with it, 8 bits are closer than 7
    assert errors["int8-rows"] < errors["int8-rows-plain"] < 0.15
    assert errors["int8-rows"] < errors["int8-rows-7bit"] < 0.05


def test_a_rows_answer_is_identical_alone_and_among_other_rows(fp32, tmp_path):
    out = tmp_path / "model.onnx"
    quantize(fp32, out, RECIPES["int8-rows"], FEEDS)
    together = run(out, IDS)
    for i in range(len(IDS)):
        assert np.array_equal(run(out, IDS[i : i + 1])[0], together[i])
    # a mate whose values are 100x larger (one scale per call would coarsen the others) changes nothing
    loud = np.concatenate([IDS[:1], IDS[:1]])
    assert np.array_equal(run(out, loud)[0], together[0])


def test_seven_bit_weights_stay_within_63(fp32, tmp_path):
    out = tmp_path / "model.onnx"
    quantize(fp32, out, RECIPES["int8-rows-7bit"], FEEDS)
    model = onnx.load(out)
    weights = [numpy_helper.to_array(t) for t in model.graph.initializer if t.data_type == TensorProto.INT8]
    assert len(weights) == 2 and max(int(np.abs(w).max()) for w in weights) == 63


def test_smoothing_alone_keeps_the_function_and_divides_the_outlier_channel(fp32):
    model = onnx.load(fp32)
    maxima = channel_maxima(fp32, list(rows.weight_groups(model)), FEEDS)
    assert maxima["embedded"][7] > 10 * np.median(maxima["embedded"])
    rows.smooth(model, maxima, 0.5)
    assert [n.op_type for n in model.graph.node].count("Mul") == 2  # one per activation tensor
    assert np.allclose(run(model, IDS), run(fp32, IDS), rtol=1e-4, atol=1e-4)
    inverse = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}["embedded_smooth_inverse"]
    assert inverse[7] < np.median(inverse)


def test_a_smoothing_recipe_needs_calibration_inputs(fp32, tmp_path):
    with pytest.raises(ValueError, match="calibration"):
        quantize(fp32, tmp_path / "model.onnx", RECIPES["int8-rows"])
    quantize(fp32, tmp_path / "model.onnx", dataclasses.replace(RECIPES["int8-rows"], smooth=0.0))


def test_the_default_smooths_and_keeps_the_ffn_outputs_weight_only():
    recipe = RECIPES[VNNI_RECIPE]
    assert recipe.rows and recipe.smooth > 0 and recipe.weight_only
    assert recipe.rows_exclude is not None and "output/dense" in recipe.rows_exclude


@pytest.mark.parametrize("lang", ["es", "en", "it", "pt"])
def test_default_calibration_texts_are_the_shipped_gate_texts_of_the_language(lang):
    from service.export.gate import read_texts

    texts = calibrate.default_texts(lang)
    assert texts == read_texts(lang)[: calibrate.MAX_TEXTS] and len(texts) >= 300


def test_a_calibration_file_is_read_one_text_a_line(tmp_path):
    path = tmp_path / "texts.txt"
    path.write_text("uno\n\n dos \n", encoding="utf-8")
    assert calibrate.read_file(path) == ["uno", " dos "]
    path.write_text("\n", encoding="utf-8")
    with pytest.raises(ValueError):
        calibrate.read_file(path)
