"""A recipe's MatMulNBits block size and accuracy level reach the graph and the manifest.

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

from service.export.quantize import DEFAULT_RECIPE, RECIPES, describe, quantize

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
    out = quantize(fp32, tmp_path / "model.onnx", recipe)
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
