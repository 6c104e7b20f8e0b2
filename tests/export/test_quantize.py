"""A recipe's MatMulNBits block size and accuracy level reach the graph and the manifest; the
fallback recipes leave fp32 what they say (issue 26).

bench.invariance exports the default recipe with other block sizes and accuracy levels (issue 12);
a tiny graph (one embedding Gather, one MatMul) checks that what it measures is what it asked for.
"""

import dataclasses
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from service.export.quantize import (
    DEFAULT_RECIPE,
    FALLBACK,
    RECIPES,
    VNNI_RECIPE,
    describe,
    fallback_chain,
    fp32_matmuls,
    int8_error,
    quantize,
)

K, N, VOCAB = 256, 64, 50


@pytest.fixture(scope="module")
def fp32(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rng = np.random.default_rng(0)
    table = numpy_helper.from_array(rng.normal(size=(VOCAB, K)).astype(np.float32), "table")
    weight = numpy_helper.from_array(rng.normal(size=(K, N)).astype(np.float32) / 16, "weight")
    graph = helper.make_graph(
        [
            helper.make_node("Gather", ["table", "ids"], ["embedded"], name="embeddings/Gather"),
            helper.make_node("MatMul", ["embedded", "weight"], ["out"], name="dense/MatMul"),
        ],
        "tiny",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", "tokens"])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", "tokens", N])],
        [table, weight],
    )
    path = tmp_path_factory.mktemp("tiny") / "fp32.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def run(path: Path, ids: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"ids": ids})[0]


@pytest.mark.parametrize(("block_size", "accuracy_level"), [(128, 4), (32, 4), (128, 0)])
def test_the_matmul_gets_the_recipes_block_size_and_accuracy_level(
    fp32, tmp_path, block_size, accuracy_level
):
    recipe = dataclasses.replace(
        RECIPES[DEFAULT_RECIPE], block_size=block_size, accuracy_level=accuracy_level
    )
    out = tmp_path / "model.onnx"
    assert quantize(fp32, out, recipe) == []  # no MatMul left fp32
    nodes = onnx.load(out, load_external_data=False).graph.node
    [matmul] = [node for node in nodes if node.op_type == "MatMulNBits"]
    attributes = {a.name: helper.get_attribute_value(a) for a in matmul.attribute}
    # accuracy_level 0 is the operator's default, which the quantizer leaves unwritten
    assert (attributes["block_size"], attributes.get("accuracy_level", 0), attributes["bits"]) == (
        block_size,
        accuracy_level,
        8,
    )
    assert [node.op_type for node in nodes if "Gather" in node.op_type] == ["GatherBlockQuantized"]
    ids = np.arange(12, dtype=np.int64).reshape(2, 6)
    assert np.abs(run(out, ids) - run(fp32, ids)).max() < 0.05  # 8-bit weights: close to fp32


def test_the_manifest_records_the_shipped_block_size_and_accuracy_level():
    described = describe(DEFAULT_RECIPE)
    assert (described["recipe"], described["block_size"], described["accuracy_level"]) == (
        DEFAULT_RECIPE,
        128,
        4,
    )


def test_the_fallback_chain_starts_at_the_recipe_asked_for_and_ends_in_fp32():
    assert fallback_chain(VNNI_RECIPE) == list(FALLBACK)
    assert FALLBACK[:2] == (VNNI_RECIPE, DEFAULT_RECIPE)  # per-row falls back to the default
    assert fallback_chain(DEFAULT_RECIPE) == list(FALLBACK[1:])
    assert fallback_chain("weight-only-fp32-emb") == ["weight-only-fp32-emb", "weight-only-fp32-worst", None]
    assert fallback_chain("mixed-attention") == ["mixed-attention", *FALLBACK]
    assert all(name in RECIPES for name in FALLBACK[:-1]) and FALLBACK[-1] is None


def test_int8_error_is_small_for_gaussian_weights_and_near_one_when_an_outlier_sets_the_scale():
    weights = np.random.default_rng(1).normal(size=(K, N)).astype(np.float32)
    assert int8_error(weights) < 0.02
    weights[0] = 1000 * np.abs(weights).max()  # one row: in the first block of every column
    assert int8_error(weights) > 0.4  # half the rows (the first block of 2) rounded away


def two_matmuls(path: Path, outlier: bool) -> Path:
    rng = np.random.default_rng(2)
    first, second = (rng.normal(size=(K, K)).astype(np.float32) / 16 for _ in range(2))
    if outlier:
        second[3] = 1000.0
    graph = helper.make_graph(
        [
            helper.make_node("Gather", ["table", "ids"], ["embedded"], name="embeddings/Gather"),
            helper.make_node("MatMul", ["embedded", "first"], ["hidden"], name="first/MatMul"),
            helper.make_node("MatMul", ["hidden", "second"], ["out"], name="second/MatMul"),
        ],
        "two",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", "tokens"])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", "tokens", K])],
        [
            numpy_helper.from_array(rng.normal(size=(VOCAB, K)).astype(np.float32), "table"),
            numpy_helper.from_array(first, "first"),
            numpy_helper.from_array(second, "second"),
        ],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def test_the_worst_copied_matmul_is_the_one_left_fp32(tmp_path):
    model = onnx.load(two_matmuls(tmp_path / "fp32.onnx", outlier=True))
    assert fp32_matmuls(model, 0.5) == ["second/MatMul"]
    assert fp32_matmuls(model, 0.0) == [] and len(fp32_matmuls(model, 1.0)) == 2


def test_fallback_recipes_keep_fp32_what_they_say(tmp_path):
    fp32 = two_matmuls(tmp_path / "fp32.onnx", outlier=True)
    kinds = {}
    for name in ("weight-only-fp32-emb", "weight-only-fp32-worst"):
        out = tmp_path / name / "model.onnx"
        out.parent.mkdir()
        kept = quantize(
            fp32, out, dataclasses.replace(RECIPES[name], fp32_share=RECIPES[name].fp32_share * 2)
        )
        kinds[name] = (kept, sorted(n.op_type for n in onnx.load(out, load_external_data=False).graph.node))
    # fp32 embeddings: the Gather stays; worst share (a half of 2 here): the outlier's MatMul stays
    assert kinds["weight-only-fp32-emb"] == ([], ["Gather", "MatMulNBits", "MatMulNBits"])
    assert kinds["weight-only-fp32-worst"] == (["second/MatMul"], ["Gather", "MatMul", "MatMulNBits"])
