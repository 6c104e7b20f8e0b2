"""Per-row INT8 (issue 23): int8 GEMMs whose activation scales come from each row alone.

A tiny graph (an embedding Gather, then two MatMuls) checks what rows.py writes: every constant-weight
MatMul becomes MatMulIntegerToFloat, a row's answer is bit-identical alone and among other rows,
7-bit weights or activations and pair-fitted 8-bit weights cannot saturate AVX2's pairwise int16
sums, SmoothQuant's rescaling alone leaves the function unchanged, splitting the outlier channels
off (with the bias moved into their fp32 MatMul) alone leaves it unchanged too, and a recipe that
calibrates refuses to run without calibration inputs.
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
from service.export.quantize import ALL_MATMULS, RECIPES, VNNI_RECIPE, quantize

PAIRED = "int8-rows-pairs"
OUTLIERS = "int8-rows-outliers"

K, N, VOCAB = 256, 64, 50


def tiny(path: Path, bias: bool = False) -> Path:
    """Gather, MatMul, MatMul; `bias`: the first MatMul's output plus a constant bias (opset 18)."""
    rng = np.random.default_rng(3)
    table = rng.normal(size=(VOCAB, K)).astype(np.float32)
    table[:, 7] *= 40  # an outlier channel, as transformers' activations have
    first = [helper.make_node("MatMul", ["embedded", "first"], ["hidden"], name="first/MatMul")]
    if bias:
        first = [
            helper.make_node("MatMul", ["embedded", "first"], ["product"], name="first/MatMul"),
            helper.make_node("Add", ["first_bias", "product"], ["hidden"], name="first/Add"),
        ]
    graph = helper.make_graph(
        [
            helper.make_node("Gather", ["table", "ids"], ["embedded"], name="embeddings/Gather"),
            *first,
            helper.make_node("MatMul", ["hidden", "second"], ["out"], name="second/MatMul"),
        ],
        "tiny",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", "tokens"])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", "tokens", N])],
        [
            numpy_helper.from_array(table, "table"),
            numpy_helper.from_array(rng.normal(size=(K, K)).astype(np.float32) / 16, "first"),
            numpy_helper.from_array(rng.normal(size=(K, N)).astype(np.float32) / 16, "second"),
            *([numpy_helper.from_array(rng.normal(size=K).astype(np.float32), "first_bias")] if bias else []),
        ],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18 if bias else 17)]), path)
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
    nodes = onnx.load(out, load_external_data=False).graph.node
    assert [n.op_type for n in nodes].count("MatMulIntegerToFloat") == 2
    # fp32 MatMuls left: only the outlier channels' small ones
    assert all(n.name.endswith(rows.OUTLIER_SUFFIX) for n in nodes if n.op_type == "MatMul")
    reference = run(fp32, IDS)
    return float(np.abs(run(out, IDS) - reference).max() / np.abs(reference).max())


def test_every_constant_weight_matmul_becomes_an_int8_gemm_and_smoothing_brings_it_closer(fp32, tmp_path):
    errors = {
        name: relative_error(fp32, tmp_path / f"{name}.onnx", name) for name in RECIPES if "rows" in name
    }
    # the outlier channel sets every row's scale without smoothing; with it, 8 bits are closer than 7
    assert errors["int8-rows"] < errors["int8-rows-plain"] < 0.15
    assert errors["int8-rows"] < errors["int8-rows-7bit"] < 0.05
    # the outlier channel computed fp32 (and, in this graph, a quarter of the others): closer still
    assert errors[OUTLIERS] < errors[PAIRED]


@pytest.mark.parametrize("recipe", ["int8-rows", OUTLIERS])
def test_a_rows_answer_is_identical_alone_and_among_other_rows(fp32, tmp_path, recipe):
    out = tmp_path / "model.onnx"
    quantize(fp32, out, RECIPES[recipe], FEEDS)
    together = run(out, IDS)
    for i in range(len(IDS)):
        assert np.array_equal(run(out, IDS[i : i + 1])[0], together[i])
    # a mate whose values are 100x larger (one scale per call would coarsen the others) changes nothing
    loud = np.concatenate([IDS[:1], IDS[:1]])
    assert np.array_equal(run(out, loud)[0], together[0])


def int8_weights(fp32: Path, out: Path, recipe: str) -> list[np.ndarray]:
    quantize(fp32, out, RECIPES[recipe], FEEDS)
    model = onnx.load(out)
    return [numpy_helper.to_array(t) for t in model.graph.initializer if t.data_type == TensorProto.INT8]


def worst_pair_product(weights: np.ndarray, activation: int = 255) -> int:
    """The largest |a_k w_k + a_k+1 w_k+1| (k even) a uint8 activation row can make: what AVX2's
    VPMADDUBSW must fit in int16."""
    w = weights.astype(np.int64)
    return int(activation * (np.abs(w[0::2]) + np.abs(w[1::2])).max())


def test_seven_bit_weights_stay_within_64_where_no_pair_saturates(fp32, tmp_path):
    weights = int8_weights(fp32, tmp_path / "model.onnx", "int8-rows-7bit")
    assert len(weights) == 2 and max(int(np.abs(w).max()) for w in weights) == 64
    assert max(worst_pair_product(w) for w in weights) <= 32767
    assert rows.saturation_free(7, 8) and rows.saturation_free(8, 7) and not rows.saturation_free(8, 8)


def test_pair_limited_weights_cannot_saturate_and_most_channels_keep_8_bits(fp32, tmp_path):
    eight = int8_weights(fp32, tmp_path / "eight.onnx", "int8-rows")
    paired = int8_weights(fp32, tmp_path / "paired.onnx", PAIRED)
    assert max(worst_pair_product(w) for w in eight) > 32767  # plain 8 bits can saturate AVX2
    for weights in paired:
        assert worst_pair_product(weights) <= 32767
        assert np.mean(np.abs(weights).max(axis=0) >= 100) > 0.5  # 7 bits would stop at 64
    for weights in int8_weights(fp32, tmp_path / "outliers.onnx", OUTLIERS):
        assert worst_pair_product(weights) <= 32767
    assert rows.saturation_free(8, 8, pairs=True)


def test_pair_fitting_is_never_worse_than_coarsening_the_channel_and_leaves_other_channels_alone():
    rng = np.random.default_rng(5)
    weight = rng.normal(scale=0.5, size=(4096, 4)).astype(np.float32)
    weight[0:2, :2] = [[5.0, 5.0], [0.0, 0.0]]  # the channel's 8-bit step: 5 / 127
    weight[10:12, 0] = 2.7  # a pair just over the bound at that step (69 + 69 > 128): shrink it
    weight[10:12, 1] = 5.0  # a pair far over (127 + 127): shrinking costs more than a coarser step
    weight[:, 2:] *= 0.3
    weight[20:22, 2:] = [[3.0], [0.0]]  # channels whose largest weight has a small neighbour
    q, scale = rows.quantize_weights(weight, 127, rows.pair_limit(8))
    assert worst_pair_product(q) <= 32767
    for column in range(2):
        coarse = np.abs(weight[10:12, column]).sum() / rows.pair_limit(8)  # the whole channel fitted
        coarsened = np.round(weight[:, column] / coarse) * coarse
        copies = (q[:, column] * scale[column], coarsened)
        errors = [((copy - weight[:, column]) ** 2).sum() for copy in copies]
        assert errors[0] < errors[1] if column == 0 else errors[0] <= errors[1]
    assert scale[0] < 2 * 2.7 / rows.pair_limit(8) and scale[1] > 1.5 * 5 / 127
    q8, scale8 = rows.quantize_weights(weight, 127)
    assert np.array_equal(q[:, 2:], q8[:, 2:]) and np.array_equal(scale[2:], scale8[2:])  # no big pairs


def test_seven_bit_activations_stay_within_1_to_127_and_cannot_saturate_8_bit_weights(fp32):
    model = onnx.load(fp32)
    rows.quantize_rows(model, activation_bits=7)
    model.graph.output.append(helper.make_tensor_value_info("embedded_rows_q8", TensorProto.UINT8, None))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    out, q = session.run(None, {"ids": IDS})
    assert q.min() == 1 and q.max() == 127  # each row's largest |x| lands on 64 -+ 63
    weights = [numpy_helper.to_array(t) for t in model.graph.initializer if t.data_type == TensorProto.INT8]
    assert max(worst_pair_product(w, activation=127) for w in weights) <= 32767
    reference = run(fp32, IDS)
    assert np.abs(out - reference).max() / np.abs(reference).max() < 0.15


def test_smoothing_alone_keeps_the_function_and_divides_the_outlier_channel(fp32):
    model = onnx.load(fp32)
    maxima = channel_maxima(fp32, list(rows.weight_groups(model)), FEEDS)
    assert maxima["embedded"][7] > 10 * np.median(maxima["embedded"])
    rows.smooth(model, maxima, 0.5)
    assert [n.op_type for n in model.graph.node].count("Mul") == 2  # one per activation tensor
    assert np.allclose(run(model, IDS), run(fp32, IDS), rtol=1e-4, atol=1e-4)
    inverse = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}["embedded_smooth_inverse"]
    assert inverse[7] < np.median(inverse)


def test_splitting_the_outliers_off_alone_keeps_the_function_and_moves_the_bias(tmp_path):
    fp32 = tiny(tmp_path / "fp32.onnx", bias=True)
    model = onnx.load(fp32)
    maxima = channel_maxima(fp32, list(rows.weight_groups(model)), FEEDS)
    rows.split_outliers(model, maxima, "MatMul$", 16, 0.5)
    assert np.allclose(run(model, IDS), run(fp32, IDS), rtol=1e-4, atol=1e-4)
    tables = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    assert 7 in tables["embedded_outlier_channels"] and tables["embedded_keep"][7] == 0
    names = {n.name: n.op_type for n in model.graph.node}
    assert "first/Add" not in names and names["first/MatMul_outliers_fp32"] == "MatMul"
    assert tables["first_outliers"].shape == (16 + 1, K)  # the bias as its last row
    assert tables["second_outliers"].shape == (16, N)  # no bias to move
    assert set(rows.weight_groups(model)) == {
        "embedded_inliers",
        "hidden_inliers",
    }  # what quantize_rows takes


@pytest.mark.parametrize("recipe", ["int8-rows", OUTLIERS])
def test_a_calibrated_recipe_needs_calibration_inputs(fp32, tmp_path, recipe):
    assert RECIPES[recipe].calibrated
    with pytest.raises(ValueError, match="calibration"):
        quantize(fp32, tmp_path / "model.onnx", RECIPES[recipe])
    quantize(fp32, tmp_path / "model.onnx", dataclasses.replace(RECIPES["int8-rows"], smooth=0.0))


def test_the_per_row_rung_keeps_every_inputs_outlier_channels_fp32_and_cannot_saturate():
    recipe = RECIPES[VNNI_RECIPE]
    assert recipe.rows and recipe.calibrated and recipe.rows_exclude is None
    assert [pattern for pattern, count in recipe.outliers if count > 0] == [ALL_MATMULS]
    assert rows.saturation_free(recipe.row_weight_bits, recipe.row_activation_bits, recipe.row_pairs)


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
