"""INT8 recipes: how each kind of weight of an fp32 ONNX graph is stored in 8 (or 4) bits.

Three storage schemes are mixed per kind of node (a fourth, per-row INT8, is rows.py's):
- dynamic INT8 (optimum's ORTQuantizer, MatMulInteger): weights and activations in int8, the
  activations quantized per tensor at run time. Fastest, but the FFN matmuls lose the most
  accuracy that way (measured role by role: docs/int8-recipes.md).
- weight-only 8-bit (onnxruntime's MatMulNBits, blocks of 128 along K, accuracy_level 4): int8
  weights, activations quantized per block and row inside the kernel; accurate, slower. The same
  kernel takes 4-bit blocks: half the bytes again, at some accuracy.
- embeddings: ORTQuantizer's Gather (one scale for the whole table) or GatherBlockQuantized with
  uint8 blocks of 128 along the hidden axis (written here: onnxruntime's tool writes only 4 bits).
`python -m bench.recipes` measures every recipe (docs/int8-recipes.md). DEFAULT_RECIPE
says which one is used and why; FALLBACK, what the export's accuracy gate tries when a model
loses too much to it (embeddings fp32, then also the MatMuls whose 8-bit copy is worst, then fp32).
"""

import logging
import re
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from service.export import rows
from service.export.calibrate import Feed, channel_maxima

BLOCK_SIZE = 128
ACCURACY_LEVEL = 4  # MatMulNBits computes with int8 activations (per block) rather than fp32
_MS_DOMAIN = "com.microsoft"

ALL_MATMULS = r"MatMul$"
ATTENTION = r"attention/(self/(query|key|value)|output/dense)/MatMul$"
QKV = r"attention/self/(query|key|value)/MatMul$"
FFN_OUT = r"layer\.\d+/output/dense/MatMul$"
QKV_AND_FFN_OUT = f"({QKV})|({FFN_OUT})"


@dataclass(frozen=True)
class Recipe:
    summary: str
    preset: str = "avx512_vnni"  # optimum AutoQuantizationConfig preset of the dynamic step
    per_channel: bool = True
    reduce_range: bool = False
    dynamic: str | None = ALL_MATMULS  # regex of the MatMul node names quantized dynamically
    weight_only: bool = False  # the other constant-weight MatMuls: MatMulNBits...
    weight_bits: int = 8  # ...of this many bits
    embeddings: str = "per-tensor"  # or "blockwise", or "fp32" (left as exported)
    block_size: int = BLOCK_SIZE  # MatMulNBits: weights per scale along K
    accuracy_level: int = ACCURACY_LEVEL  # MatMulNBits: 4 int8 activations, 0 or 1 fp32
    # weight-only: the share of MatMul weights left fp32, those whose 8-bit copy is worst (fp32_matmuls)
    fp32_share: float = 0.0
    rows: bool = False  # constant-weight MatMuls per-row INT8 (rows.py), but those rows_exclude names
    rows_exclude: str | None = None  # regex of MatMul names left to the other settings (weight_only)
    row_weight_bits: int = 8  # rows: 7 keeps AVX2's VPMADDUBSW from saturating (same answers on any x86)
    row_activation_bits: int = 8  # rows: or 7, the other way to keep it from saturating
    row_pairs: bool = False  # rows: 8-bit weights whose adjacent pairs cannot saturate AVX2 (rows.py)
    smooth: float = 0.0  # rows: SmoothQuant strength from calibration maxima (0: calibration-free)
    # rows: (regex of MatMul names, count): of their inputs, the `count` largest channels kept fp32
    # (rows.split_outliers), the first pattern first; their other channels smoothed by outlier_smooth
    outliers: tuple[tuple[str, int], ...] = ()
    outlier_smooth: float = 0.0

    @property
    def calibrated(self) -> bool:
        """Whether the recipe reads calibration maxima (calibrate.py): smoothing or outlier channels."""
        return bool(self.smooth or self.outliers)


# The per-row recipes (rows.py) are variants of these two.
_ROWS = Recipe(
    "per-row INT8 activations x per-channel 8-bit weights (MatMulIntegerToFloat), SmoothQuant 0.8, "
    "blockwise embeddings",
    dynamic=None,
    embeddings="blockwise",
    rows=True,
    smooth=0.8,
)
_ROWS_FFN_NBITS = Recipe(
    "per-row INT8 (SmoothQuant 0.5) on every MatMul but the FFN outputs, those weight-only 8-bit "
    "(MatMulNBits), blockwise embeddings",
    dynamic=None,
    weight_only=True,
    embeddings="blockwise",
    rows=True,
    rows_exclude=FFN_OUT,
    smooth=0.5,
)
RECIPES: dict[str, Recipe] = {
    "avx2": Recipe("optimum avx2 preset: dynamic, per-tensor weights", preset="avx2", per_channel=False),
    "vnni-per-channel": Recipe("optimum avx512_vnni preset: dynamic, per-channel weights"),
    "avx512-reduce-range": Recipe(
        "optimum avx512 preset, per-channel, 7-bit weights", "avx512", reduce_range=True
    ),
    "vnni-fp32-ffn": Recipe("vnni-per-channel on attention only; FFN matmuls left fp32", dynamic=ATTENTION),
    "weight-only": Recipe(
        "every MatMul weight-only 8-bit, blockwise 8-bit embeddings",
        dynamic=None,
        weight_only=True,
        embeddings="blockwise",
    ),
    "weight-only-emb-per-tensor": Recipe(
        "every MatMul weight-only 8-bit, per-tensor embeddings", dynamic=None, weight_only=True
    ),
    "weight-only-4bit": Recipe(
        "every MatMul weight-only 4-bit, blockwise 8-bit embeddings",
        dynamic=None,
        weight_only=True,
        weight_bits=4,
        embeddings="blockwise",
    ),
    "weight-only-fp32-emb": Recipe(
        "every MatMul weight-only 8-bit, embeddings fp32", dynamic=None, weight_only=True, embeddings="fp32"
    ),
    "weight-only-fp32-worst": Recipe(
        "weight-only 8-bit, embeddings and the quarter of MatMul weights that 8 bits copy worst fp32",
        dynamic=None,
        weight_only=True,
        embeddings="fp32",
        fp32_share=0.25,
    ),
    "mixed-attention": Recipe(
        "dynamic vnni per-channel on attention q/k/v/output, weight-only 8-bit FFN, blockwise embeddings",
        dynamic=ATTENTION,
        weight_only=True,
        embeddings="blockwise",
    ),
    "int8-rows": _ROWS,
    "int8-rows-7bit": replace(
        _ROWS,
        summary="int8-rows with 7-bit weights: no AVX2 saturation, the same integers on every x86 CPU",
        row_weight_bits=7,
    ),
    "int8-rows-pairs": replace(
        _ROWS,
        summary="int8-rows with 8-bit weights fitted so that no adjacent pair saturates AVX2's VPMADDUBSW",
        row_pairs=True,
    ),
    "int8-rows-plain": replace(_ROWS, summary="int8-rows without SmoothQuant: calibration-free", smooth=0.0),
    "int8-rows-outliers": replace(
        _ROWS,
        summary="every MatMul per-row INT8 with pair-fitted 8-bit weights, but each input's 64 largest "
        "channels (calibrated) computed fp32 beside it; the other channels SmoothQuant 0.5",
        row_pairs=True,
        smooth=0.0,
        outliers=((ALL_MATMULS, 64),),
        outlier_smooth=0.5,
    ),
    "int8-rows-ffn-nbits": _ROWS_FFN_NBITS,
    "int8-rows-ffn-pairs": replace(
        _ROWS_FFN_NBITS,
        summary="int8-rows-ffn-nbits with 8-bit weights fitted so that no adjacent pair saturates AVX2's "
        "VPMADDUBSW: the same integers on every x86 CPU",
        row_pairs=True,
    ),
    "int8-rows-ffn-pairs-nbits-qkv": replace(
        _ROWS_FFN_NBITS,
        summary="int8-rows-ffn-pairs with the q/k/v projections weight-only 8-bit too: per-row INT8 on "
        "the attention output and FFN input MatMuls only",
        rows_exclude=QKV_AND_FFN_OUT,
        row_pairs=True,
    ),
    "mixed-qkv": Recipe(
        "dynamic vnni per-channel on q/k/v, weight-only 8-bit elsewhere, blockwise embeddings",
        dynamic=QKV,
        weight_only=True,
        embeddings="blockwise",
    ),
}
# weight-only stays the default (issue 23, docs/int8-recipes.md). The per-row recipe is 1.5x faster
# on a VNNI/AMX CPU and, with its 8-bit weights fitted so that AVX2's pairwise int16 sums cannot
# saturate (row_pairs), computes the same integers on an AVX2-only CPU: a model built on one CPU
# answers the same on the other. But on the trained MiniLM its label agreement with fp32 moves
# between 97.2 and 99.0 % with the texts it is calibrated on (weight-only: 98.5-99.0 %, nothing to
# calibrate), and its probabilities stray ~20 % further from fp32's: no margin over the 98.5 % bound
# on tweets it has not seen. `int8-rows-outliers` (third round), the per-row rung now, is closer to
# fp32 than weight-only under every calibration tried and 1.6x / 2.1x faster, but its fp32 outlier
# weights are prepacked into ~19 MB more anonymous memory at RoBERTuito scale (+3.7 MB beside a
# prepacked variant). Ask for it with `--recipe int8-rows-outliers`; the gate still decides.
DEFAULT_RECIPE = "weight-only"
VNNI_RECIPE = "int8-rows-outliers"
# What the export tries, in order from the recipe asked for, until one passes its kind's accuracy
# gate (service/export/gate.py): fewer tensors quantized, fp32 for the weights 8 bits copy worst, fp32 (None).
FALLBACK: tuple[str | None, ...] = (
    VNNI_RECIPE,
    DEFAULT_RECIPE,
    "weight-only-fp32-emb",
    "weight-only-fp32-worst",
    None,
)


def fallback_chain(recipe: str | None) -> list[str | None]:
    """`recipe` first, then the rungs of FALLBACK after it (all of them after a recipe not in it)."""
    rest = FALLBACK[FALLBACK.index(recipe) + 1 :] if recipe in FALLBACK else FALLBACK
    return [recipe, *(name for name in rest if name != recipe)]


def describe(name: str) -> dict[str, Any]:
    """The recipe as the manifest records it."""
    return {"recipe": name, **asdict(RECIPES[name])}


def quantize(fp32: Path, out: Path, recipe: Recipe, calibration: Sequence[Feed] = ()) -> list[str]:
    """Write the INT8 graph of `fp32` to `out` (optimum's intermediate files stay in a temp dir);
    the names of the MatMuls the recipe left fp32 by their weights' 8-bit error (`fp32_share`).
    `calibration`: model inputs (calibrate.feeds) for a recipe that calibrates."""
    if recipe.rows:
        model = onnx.load(fp32)
        if recipe.calibrated:
            if not calibration:
                raise ValueError("a recipe with smooth > 0 or outliers needs calibration inputs")
            maxima = channel_maxima(fp32, list(rows.weight_groups(model)), calibration)
            for pattern, count in recipe.outliers:
                rows.split_outliers(model, maxima, pattern, count, recipe.outlier_smooth)
            if recipe.smooth:
                rows.smooth(model, maxima, recipe.smooth)
        rows.quantize_rows(
            model, recipe.row_weight_bits, recipe.rows_exclude, recipe.row_activation_bits, recipe.row_pairs
        )
    elif recipe.dynamic or recipe.embeddings == "per-tensor":
        model = _dynamic(fp32, recipe)
    else:
        model = onnx.load(fp32)
    kept = fp32_matmuls(model, recipe.fp32_share, recipe.block_size) if recipe.fp32_share else []
    if recipe.weight_only:
        model = _weight_only(model, recipe, kept)
    if recipe.embeddings == "blockwise":
        quantize_embeddings(model)
    save(model, out)
    return kept


def save(model: onnx.ModelProto, out: Path) -> Path:
    """Weights beside the graph: measured at RoBERTuito scale, load peak 191 -> 115 MB and resident
    after load 137 -> 114 MB at the same speed; and the budget's estimate reads the graph apart."""
    onnx.save(
        model, out, save_as_external_data=True, all_tensors_to_one_file=True, location=f"{out.name}.data"
    )
    return out


def fp32_matmuls(model: onnx.ModelProto, share: float, block_size: int = BLOCK_SIZE) -> list[str]:
    """The `share` of constant-weight MatMuls whose blockwise 8-bit copy loses most of a typical
    weight (int8_error): an outlier sets its block's scale, and the block's other weights round away."""
    tables = {t.name: t for t in model.graph.initializer}
    errors = {
        node.name: int8_error(numpy_helper.to_array(tables[node.input[1]]), block_size)
        for node in model.graph.node
        if node.op_type == "MatMul" and node.input[1] in tables and len(tables[node.input[1]].dims) == 2
    }
    count = round(share * len(errors))
    return sorted(sorted(errors, key=errors.__getitem__, reverse=True)[:count])


def int8_error(weights: np.ndarray, block_size: int = BLOCK_SIZE) -> float:
    """mean |W - deq(q8(W))| / median |W|, for asymmetric uint8 blocks of `block_size` along K
    (axis 0) as MatMulNBits stores them: a typical weight's error, relative to a typical weight
    that outliers cannot inflate. ~0.01 for Gaussian weights, ~0.5 when half of them round to 0."""
    k, n = weights.shape
    padded = np.zeros((-(-k // block_size) * block_size, n), np.float32)
    padded[:k] = weights
    blocks = padded.reshape(-1, block_size, n)
    low, high = np.minimum(blocks.min(1, keepdims=True), 0), np.maximum(blocks.max(1, keepdims=True), 0)
    scale = np.where(high > low, (high - low) / 255, 1)
    zero = np.round(-low / scale)
    copy = ((np.clip(np.round(blocks / scale) + zero, 0, 255) - zero) * scale).reshape(padded.shape)[:k]
    typical = float(np.median(np.abs(weights)))
    return float(np.mean(np.abs(copy - weights))) / typical if typical else 0.0


def _dynamic(fp32: Path, recipe: Recipe) -> onnx.ModelProto:
    from optimum.onnxruntime import ORTQuantizer
    from optimum.onnxruntime.configuration import AutoQuantizationConfig

    graph = onnx.load(fp32, load_external_data=False).graph
    pattern = re.compile(recipe.dynamic or r"(?!)")
    excluded = [n.name for n in graph.node if n.op_type == "MatMul" and not pattern.search(n.name)]
    operators = (["MatMul"] if recipe.dynamic else []) + (
        ["Gather"] if recipe.embeddings == "per-tensor" else []
    )
    options: dict[str, Any] = {"reduce_range": True} if recipe.reduce_range else {}
    config = getattr(AutoQuantizationConfig, recipe.preset)(
        is_static=False,
        per_channel=recipe.per_channel,
        nodes_to_exclude=excluded,
        operators_to_quantize=operators,
        **options,
    )
    with tempfile.TemporaryDirectory() as tmp:
        ORTQuantizer.from_pretrained(fp32.parent, file_name=fp32.name).quantize(config, tmp)
        return onnx.load(next(Path(tmp).glob("*_quantized.onnx")))


def _weight_only(model: onnx.ModelProto, recipe: Recipe, keep: list[str]) -> onnx.ModelProto:
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    # The module configures the root logger at INFO on import and logs every node.
    logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(logging.WARNING)
    quantizer = MatMulNBitsQuantizer(
        model,
        bits=recipe.weight_bits,
        block_size=recipe.block_size,
        accuracy_level=recipe.accuracy_level,
        op_types_to_quantize=("MatMul",),
        nodes_to_exclude=keep,
    )
    quantizer.process()
    return quantizer.model.model


def quantize_embeddings(model: onnx.ModelProto, block_size: int = BLOCK_SIZE) -> None:
    """Gathers from 2-D tables -> GatherBlockQuantized: uint8, asymmetric, one scale per block of a row."""
    tables = {t.name: t for t in model.graph.initializer}
    nodes = []
    for node in model.graph.node:
        table = tables.get(node.input[0]) if node.op_type == "Gather" else None
        if table is None or len(table.dims) != 2 or table.dims[1] % block_size:
            nodes.append(node)
            continue
        weights = numpy_helper.to_array(table).astype(np.float32)
        blocks = weights.reshape(weights.shape[0], -1, block_size)
        low, high = np.minimum(blocks.min(-1), 0), np.maximum(blocks.max(-1), 0)
        scale = np.where(high > low, (high - low) / 255, 1).astype(np.float32)
        zero = np.round(-low / scale).clip(0, 255).astype(np.uint8)
        data = (np.round(blocks / scale[..., None]) + zero[..., None]).clip(0, 255).astype(np.uint8)
        names = [f"{table.name}_{suffix}" for suffix in ("q8", "scales", "zero_points")]
        arrays = (data.reshape(weights.shape), scale, zero)
        model.graph.initializer.extend(numpy_helper.from_array(a, n) for a, n in zip(arrays, names))
        model.graph.initializer.remove(table)
        nodes.append(
            helper.make_node(
                "GatherBlockQuantized",
                [names[0], node.input[1], names[1], names[2]],
                list(node.output),
                name=f"{node.name}_q8",
                domain=_MS_DOMAIN,
                gather_axis=0,
                quantize_axis=1,
                block_size=block_size,
                bits=8,
            )
        )
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    if not any(opset.domain == _MS_DOMAIN for opset in model.opset_import):
        model.opset_import.append(helper.make_opsetid(_MS_DOMAIN, 1))
