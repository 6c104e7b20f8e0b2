"""Per-row INT8: int8 GEMMs whose activation scales never depend on the other texts of a call.

Each constant-weight MatMul becomes `MatMulIntegerToFloat` (onnxruntime's U8S8 GEMM: VNNI or AMX
where the CPU has them, AVX2 otherwise) between
- its input quantized row by row (one token of one text: scale = max |x| of that row / 127, uint8
  around 128), computed in the graph at run time, and
- its weights, int8 per output channel (8 bits, or 7: an AVX2 CPU without VNNI multiplies uint8
  by int8 pairwise into 16 bits with saturation (VPMADDUBSW), which 255 * 127 * 2 overflows; with
  weights within +-64, or activations within 1..127, no pair can (`saturation_free`), so every
  x86 CPU computes the same integers, at some accuracy: measured).
The output is rescaled by the row's scale. A row's numbers depend on that row alone, so a text's
answer is the same alone or among any mates (padding rows included), unlike dynamic INT8's one
scale per call. MatMuls that read one input share its quantization (q, k and v).

`smooth` (SmoothQuant, Xiao et al. 2023) moves part of each input channel's range into the
weights: x / s and s * W, s = max|x|^a / max|W|^(1-a) per input channel, from calibration
maxima. A few channels of a transformer's activations are 10-100x the others and set every row's
scale; dividing them down keeps the other channels' precision. The factors are fixed at export,
so they keep the per-row property. Measured in docs/int8-recipes.md.
"""

import re
from collections.abc import Mapping
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

_MS_DOMAIN = "com.microsoft"
OUTLIER_SUFFIX = "_outliers_fp32"  # split_outliers' small MatMuls: fp32 by design, never quantized
_PAIR_SUM = 32767  # AVX2's VPMADDUBSW: a_k * w_k + a_k+1 * w_k+1 saturates to int16 beyond this


def weight_limit(bits: int) -> int:
    """The largest |int8 weight| of `bits` bits: 127 for 8; for 7, 64 (one step past 7 bits' 63,
    still saturation-free against 8-bit activations: 2 * 255 * 64 = 32640)."""
    return 127 if bits == 8 else 2 ** (bits - 1)


def activation_limit(bits: int) -> int:
    """The largest |quantized activation| of `bits` bits: uint8 within 1 + 2 * limit around limit + 1."""
    return 2 ** (bits - 1) - 1


def pair_limit(activation_bits: int) -> int:
    """The largest |w_k| + |w_k+1| (k even: the pair VPMADDUBSW adds) that cannot saturate."""
    return _PAIR_SUM // (2 * activation_limit(activation_bits) + 1)


def saturation_free(weight_bits: int, activation_bits: int, pairs: bool = False) -> bool:
    """Whether no pair of products can leave int16 on AVX2 (largest uint8 activation x largest weights)."""
    return pairs or 2 * weight_limit(weight_bits) <= pair_limit(activation_bits)


def quantize_weights(
    weight: np.ndarray, limit: int, pairs: int | None = None, steps: int = 16
) -> tuple[np.ndarray, np.ndarray]:
    """int8 weights per output channel and their scales. Plain: scale = max |w| / limit. With
    `pairs` (the largest |w_k| + |w_k+1| allowed, k even: the pair VPMADDUBSW adds), each channel
    takes, of `steps` scales from its 8-bit one up to one where no pair needs it, the one whose
    copy is closest once every pair over `pairs` is shrunk to fit: a channel's few large pairs
    lose a little, its other weights keep 8-bit steps."""
    scale = np.maximum(np.abs(weight).max(axis=0) / limit, 1e-12)
    if pairs is None:
        return np.clip(np.round(weight / scale), -limit, limit).astype(np.int8), scale.astype(np.float32)
    padded = np.vstack([weight, np.zeros((len(weight) % 2, weight.shape[1]), weight.dtype)])
    widest = np.maximum((np.abs(padded[0::2]) + np.abs(padded[1::2])).max(axis=0) / pairs, scale)
    best, best_error = None, np.full(weight.shape[1], np.inf)
    best_scale = scale
    for t in np.linspace(0, 1, steps):
        candidate = (scale * (widest / scale) ** t).astype(np.float32)
        q = _fit_pairs(np.clip(np.round(padded / candidate), -limit, limit), pairs)
        error = ((q * candidate - padded) ** 2).sum(axis=0)
        better = error < best_error
        best = q if best is None else np.where(better, q, best)
        best_scale, best_error = np.where(better, candidate, best_scale), np.where(better, error, best_error)
    return best[: len(weight)].astype(np.int8), best_scale.astype(np.float32)


def _fit_pairs(q: np.ndarray, pairs: int) -> np.ndarray:
    """Shrink each pair (rows 2j, 2j+1) whose |sum| of magnitudes is over `pairs`, in proportion."""
    total = np.abs(q[0::2]) + np.abs(q[1::2])
    shrink = np.where(total > pairs, pairs / np.maximum(total, 1), 1.0)
    fitted = q.copy()
    for start in (0, 1):
        fitted[start::2] = np.sign(q[start::2]) * np.floor(np.abs(q[start::2]) * shrink)
    return fitted


def weight_groups(model: onnx.ModelProto, exclude: str | None = None) -> dict[str, list[onnx.NodeProto]]:
    """The MatMuls with a constant 2-D weight, by the activation tensor they read."""
    tables = {t.name: t for t in model.graph.initializer}
    groups: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        table = tables.get(node.input[1]) if node.op_type == "MatMul" else None
        if node.name.endswith(OUTLIER_SUFFIX) or (exclude and re.search(exclude, node.name)):
            continue
        if table is not None and len(table.dims) == 2:
            groups.setdefault(node.input[0], []).append(node)
    return groups


def _smoothing(maximum: np.ndarray, weights: list[np.ndarray], alpha: float) -> np.ndarray:
    """SmoothQuant's per-channel factors s = max|x|^alpha / max|W|^(1-alpha) (the largest weight of
    the channel's row over the MatMuls reading it), kept within [1e-2, 1e2]."""
    weight_max = np.max([np.abs(w).max(axis=1) for w in weights], axis=0)
    factors = np.maximum(maximum, 1e-5) ** alpha / np.maximum(weight_max, 1e-5) ** (1 - alpha)
    return np.clip(factors, 1e-2, 1e2)


def smooth(model: onnx.ModelProto, maxima: Mapping[str, np.ndarray], alpha: float) -> None:
    """Divide each group's input by s per channel (one Mul) and multiply its weights' rows by s."""
    tables = {t.name: t for t in model.graph.initializer}
    inserted: dict[str, list[onnx.NodeProto]] = {}
    for tensor, nodes in weight_groups(model).items():
        if tensor not in maxima:
            continue
        weights = [numpy_helper.to_array(tables[n.input[1]]).astype(np.float32) for n in nodes]
        factors = _smoothing(maxima[tensor], weights, alpha).astype(np.float32)
        inverse = f"{tensor}_smooth_inverse"
        model.graph.initializer.append(numpy_helper.from_array(1 / factors, inverse))
        smoothed = f"{tensor}_smoothed"
        inserted[tensor] = [helper.make_node("Mul", [tensor, inverse], [smoothed], name=smoothed)]
        for node, weight in zip(nodes, weights, strict=True):
            table = tables[node.input[1]]
            table.CopyFrom(numpy_helper.from_array(weight * factors[:, None], table.name))
            node.input[0] = smoothed
    _insert_after(model, inserted)


def split_outliers(
    model: onnx.ModelProto, maxima: Mapping[str, np.ndarray], pattern: str, count: int, alpha: float
) -> None:
    """LLM.int8()-style, for the MatMuls named by `pattern`: the `count` input channels with the
    largest calibration maxima go through a small fp32 MatMul (a Gather of those channels x their
    weight rows); the others, those channels zeroed and smoothed by `alpha` in the same Mul, stay a
    constant-weight MatMul for `quantize_rows`. The outliers then no longer set every row's scale.
    The MatMul's bias Add, if any, moves into the small MatMul (a column of ones appended to its
    input, the bias as the last weight row): one pass over the output instead of two. Channels and
    factors are fixed at export: the per-row property holds."""
    tables = {t.name: t for t in model.graph.initializer}
    biases = _bias_adds(model, tables) if _opset(model) >= 18 else {}  # Pad's axes input: opset 18
    replaced: dict[str, list[onnx.NodeProto]] = {}
    inserted: dict[str, list[onnx.NodeProto]] = {}
    arrays: dict[str, np.ndarray] = {
        "outliers_pad": np.array([0, 1], np.int64),
        "outliers_axis": np.array([-1], np.int64),
    }
    arrays["outliers_one"] = np.array(1.0, np.float32)
    for tensor, nodes in weight_groups(model).items():
        if tensor not in maxima or not all(re.search(pattern, n.name) for n in nodes):
            continue
        weights = [numpy_helper.to_array(tables[n.input[1]]).astype(np.float32) for n in nodes]
        outlier = np.zeros(len(weights[0]), bool)
        outlier[np.argsort(maxima[tensor])[::-1][:count]] = True
        factors = _smoothing(maxima[tensor], weights, alpha) if alpha else np.ones(len(outlier), np.float32)
        channels, rest, gathered = f"{tensor}_outlier_channels", f"{tensor}_inliers", f"{tensor}_outliers"
        arrays[f"{tensor}_keep"] = np.where(outlier, 0.0, 1 / factors).astype(np.float32)
        arrays[channels] = np.flatnonzero(outlier).astype(np.int64)
        inserted[tensor] = [
            helper.make_node("Mul", [tensor, f"{tensor}_keep"], [rest], name=rest),
            helper.make_node("Gather", [tensor, channels], [gathered], name=gathered, axis=-1),
        ]
        if any(n.name in biases for n in nodes):
            pad = ["outliers_pad", "outliers_one", "outliers_axis"]
            inserted[tensor].append(
                helper.make_node("Pad", [gathered, *pad], [f"{gathered}_ones"], name=f"{gathered}_ones")
            )
        for node, weight in zip(nodes, weights, strict=True):
            table, output = tables[node.input[1]], node.output[0]
            rest_rows = np.where(outlier[:, None], 0.0, weight * factors[:, None])
            arrays[f"{table.name}_rest"] = rest_rows.astype(np.float32)
            outliers_in, outlier_rows = gathered, weight[outlier]
            if node.name in biases:
                add, bias = biases[node.name]
                outliers_in, outlier_rows = f"{gathered}_ones", np.vstack([outlier_rows, bias])
                output = add.output[0]
            arrays[f"{table.name}_outliers"] = outlier_rows.astype(np.float32)
            model.graph.initializer.remove(table)
            replaced[node.name] = [
                helper.make_node(
                    "MatMul", [rest, f"{table.name}_rest"], [f"{output}_int8_part"], name=node.name
                ),
                helper.make_node(
                    "MatMul", [outliers_in, f"{table.name}_outliers"], [f"{output}_fp32_part"],
                    name=f"{node.name}{OUTLIER_SUFFIX}",
                ),
                helper.make_node(
                    "Add", [f"{output}_int8_part", f"{output}_fp32_part"], [output], name=f"{node.name}_sum"
                ),
            ]  # fmt: skip
    folded = {biases[name][0].name for name in replaced if name in biases}
    model.graph.initializer.extend(numpy_helper.from_array(v, k) for k, v in arrays.items())
    nodes = [
        new for node in model.graph.node if node.name not in folded for new in replaced.get(node.name, [node])
    ]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    _insert_after(model, inserted)
    _drop_unread(model)


def _drop_unread(model: onnx.ModelProto) -> None:
    """Remove the Identity nodes and initializers nothing reads (the biases moved into the outlier
    MatMuls, the Pad constants where no bias moved), so that onnxruntime does not warn about each
    at every load."""
    outputs = _graph_outputs(model)
    while True:
        read = {name for node in model.graph.node for name in node.input} | outputs
        unread = [n for n in model.graph.node if n.op_type == "Identity" and n.output[0] not in read]
        for node in unread:
            model.graph.node.remove(node)
        if not unread:
            break
    tables = [t for t in model.graph.initializer if t.name not in read]
    for table in tables:
        model.graph.initializer.remove(table)


def _bias_adds(
    model: onnx.ModelProto, tables: Mapping[str, onnx.TensorProto]
) -> dict[str, tuple[Any, np.ndarray]]:
    """MatMul name -> (the Add that adds a constant 1-D bias to its output, that bias), where that
    Add is the output's only reader."""
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    # torch's exporter names a shared initializer once and the others through Identity nodes
    aliases = {n.output[0]: n.input[0] for n in model.graph.node if n.op_type == "Identity"}
    outputs = _graph_outputs(model)
    found = {}
    for node in model.graph.node:
        after = readers.get(node.output[0], []) if node.op_type == "MatMul" else []
        if len(after) != 1 or after[0].op_type != "Add" or node.output[0] in outputs:
            continue
        add = after[0]
        other = next(name for name in add.input if name != node.output[0])
        other = aliases.get(other, other)
        if other in tables and len(tables[other].dims) == 1:
            found[node.name] = (add, numpy_helper.to_array(tables[other]).astype(np.float32))
    return found


def _graph_outputs(model: onnx.ModelProto) -> set[str]:
    return {output.name for output in model.graph.output}


def quantize_rows(
    model: onnx.ModelProto,
    weight_bits: int = 8,
    exclude: str | None = None,
    activation_bits: int = 8,
    pairs: bool = False,
) -> None:
    """Every constant-weight MatMul but `exclude`'s -> per-row uint8 input x per-channel int8 weights;
    `pairs`: weights scaled so that no adjacent pair can saturate AVX2 (`quantize_weights`)."""
    limit, levels = weight_limit(weight_bits), activation_limit(activation_bits)
    pair_sum = pair_limit(activation_bits) if pairs else None
    tables = {t.name: t for t in model.graph.initializer}
    constants = {
        "rows_inverse_levels": np.array(1 / levels, np.float32),
        "rows_epsilon": np.array(1e-12, np.float32),
        "rows_one": np.array(1.0, np.float32),
        "rows_zero_point": np.array(levels + 1, np.uint8),
        "rows_last_axis": np.array([-1], np.int64),
    }
    model.graph.initializer.extend(numpy_helper.from_array(v, k) for k, v in constants.items())
    replaced: dict[str, list[onnx.NodeProto]] = {}
    inserted: dict[str, list[onnx.NodeProto]] = {}
    for tensor, nodes in weight_groups(model, exclude).items():
        scale, quantized = f"{tensor}_row_scale", f"{tensor}_rows_q8"
        inserted[tensor] = _row_quantization(tensor, scale, quantized, _opset(model))
        for node in nodes:
            table = tables[node.input[1]]
            weight = numpy_helper.to_array(table).astype(np.float32)
            q8, column_scale = quantize_weights(weight, limit, pair_sum)
            model.graph.initializer.remove(table)
            model.graph.initializer.extend(
                [
                    numpy_helper.from_array(q8, f"{table.name}_q8"),
                    numpy_helper.from_array(column_scale, f"{table.name}_scale"),
                ]
            )
            output = node.output[0]
            replaced[node.name] = [
                helper.make_node(
                    "MatMulIntegerToFloat",
                    [quantized, f"{table.name}_q8", "rows_one", f"{table.name}_scale", "rows_zero_point"],
                    [f"{output}_per_row"],
                    name=f"{node.name}_int8",
                    domain=_MS_DOMAIN,
                ),
                helper.make_node(
                    "Mul", [f"{output}_per_row", scale], [output], name=f"{node.name}_row_scale"
                ),
            ]
    nodes = [new for node in model.graph.node for new in replaced.get(node.name, [node])]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    _insert_after(model, inserted)
    if not any(opset.domain == _MS_DOMAIN for opset in model.opset_import):
        model.opset_import.append(helper.make_opsetid(_MS_DOMAIN, 1))


def _opset(model: onnx.ModelProto) -> int:
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def _row_quantization(tensor: str, scale: str, quantized: str, opset: int) -> list[onnx.NodeProto]:
    """scale = max(|x| of the row) / levels; q = uint8(round(x * (1 / scale)) + levels + 1): nothing
    across rows. max |x| as max(max x, -min x): two reads, no |x| written; a Mul by the row's
    reciprocal rather than a Div of every element (measured: docs/int8-recipes.md)."""
    # ReduceMax takes its axes as an input from opset 18, as an attribute before
    axes: tuple[list[str], dict[str, Any]] = (["rows_last_axis"], {}) if opset >= 18 else ([], {"axes": [-1]})
    name = f"{tensor}_rows"
    steps = [
        ("ReduceMax", [tensor, *axes[0]], "high", {"keepdims": 1, **axes[1]}),
        ("ReduceMin", [tensor, *axes[0]], "low", {"keepdims": 1, **axes[1]}),
        ("Neg", [f"{name}_low"], "negated", {}),
        ("Max", [f"{name}_high", f"{name}_negated", "rows_epsilon"], "max", {}),
        ("Mul", [f"{name}_max", "rows_inverse_levels"], "scale", {}),
        ("Reciprocal", [scale], "inverse", {}),
        ("Mul", [tensor, f"{name}_inverse"], "scaled", {}),
        ("QuantizeLinear", [f"{name}_scaled", "rows_one", "rows_zero_point"], "q8", {}),
    ]
    outputs = {"scale": scale, "q8": quantized}
    return [
        helper.make_node(op, inputs, [outputs.get(step, f"{name}_{step}")], name=f"{name}_{step}", **kw)
        for op, inputs, step, kw in steps
    ]


def _insert_after(model: onnx.ModelProto, inserted: dict[str, list[onnx.NodeProto]]) -> None:
    """Insert each tensor's new nodes right after the node that makes it (first for a graph input),
    in one pass: rebuilding the node list copies the nodes, so edit them before, never after."""
    graph_inputs = [
        new for tensor, news in inserted.items() for new in news if not _made_by_a_node(model, tensor)
    ]
    nodes = [*graph_inputs]
    for node in model.graph.node:
        nodes.append(node)
        nodes.extend(new for output in node.output for new in inserted.get(output, []))
    del model.graph.node[:]
    model.graph.node.extend(nodes)


def _made_by_a_node(model: onnx.ModelProto, tensor: str) -> bool:
    return any(tensor in node.output for node in model.graph.node)
