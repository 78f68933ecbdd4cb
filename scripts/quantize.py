#!/usr/bin/env python3
"""Quantize an ONNX embedding model to int8 compute and gate it on quality against its fp32 original.

    scripts/quantize.py IN.onnx OUT.onnx [--tokenizer tokenizer.json] [--output NAME]
                        [--pooling mean|cls|none] [--max-tokens N] [--recipe NAME] [--force]

(`make quantize IN=... OUT=...` runs this with the project's venv.) The chosen recipe is what
the default model is built with; see RECIPES and docs/quantization.md for what else was tried.

The quality report embeds a fixed text set (short, long, multilingual, code), a retrieval set
(602 sentences, 209 paraphrase queries) and 175 long texts of every kind (prose, code, logs,
tables, lists, repetitive text, JSON, 16 languages), all in tests/data/quality/, with the fp32
original and the quantized model, and checks:
  - cosine between the two vectors of each text, for the fixed texts, the retrieval texts and
    the long texts in each length bucket (< 100, 100-159, 160-256, > 256 tokens): min >= 0.99,
    mean >= 0.996;
  - nearest corpus sentence of each query: the same under both models for >= 98% of queries;
  - recall@10 of the query's source sentence within 1 point of the fp32 model's.
A model that fails is not written unless --force is given (then it is written and the exit
status is still 1).

The module also restores the fp32 graph of the shipped MiniLM-L6 model (make assets uses it):
that graph stores its weights as int8 and casts them back to fp32 at run time; its weights are
replaced by the original fp32 ones from sentence-transformers' safetensors file, each matched to
the int8 weight it dequantizes to within half a quantization step.
"""

from __future__ import annotations

import argparse
import json
import shutil
import struct
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper
from tokenizers import Tokenizer

ROOT = Path(__file__).resolve().parent.parent
QUALITY = ROOT / "tests" / "data" / "quality"

# The gate, as in the README's model section.
MIN_COSINE = 0.99
MEAN_COSINE = 0.996
TOP1_AGREEMENT = 0.98
RECALL_POINTS = 1.0


# --- Recipes -----------------------------------------------------------------------------------


def _dynamic(src: Path, dst: Path, *, per_channel: bool, reduce_range: bool, exclude=(), ops=("MatMul",)):
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        src,
        dst,
        op_types_to_quantize=list(ops),
        per_channel=per_channel,
        reduce_range=reduce_range,
        weight_type=QuantType.QInt8,
        nodes_to_exclude=list(exclude),
    )


def ffn_output_matmuls(model: onnx.ModelProto) -> list[str]:
    """The MatMuls whose weight has more rows than columns: each layer's FFN down-projection
    (1536 -> 384 in MiniLM), where activations after GELU have the widest range."""
    inits = {i.name: i for i in model.graph.initializer}
    names = []
    for node in model.graph.node:
        if node.op_type == "MatMul" and node.input[1] in inits:
            dims = inits[node.input[1]].dims
            if len(dims) == 2 and dims[0] > dims[1]:
                names.append(node.name)
    return names


def fuse_transformer(src: Path, dst: Path, heads: int = 0, hidden: int = 0) -> None:
    """ONNX Runtime's transformer fusions (attention, skip layer norm, GELU, embeddings) saved
    offline; heads and hidden size 0 are read from the graph."""
    from onnxruntime.transformers.optimizer import optimize_model

    model = optimize_model(str(src), model_type="bert", num_heads=heads, hidden_size=hidden, opt_level=0)
    model.save_model_to_file(str(dst))


def smooth(
    src: Path, dst: Path, tokenizer: Path | None, texts: list[str], alpha: float = 0.65, max_tokens: int = 512,
    exponents: dict[str, list[int]] | None = None,
) -> dict[str, list[int]]:
    """SmoothQuant (Xiao et al., 2023) for dynamic int8: per input channel j of each weight
    MatMul, s_j = max|X_j|^alpha / max|W_j|^(1 - alpha); the weight rows are multiplied by s and
    the activation divided by it (one Mul per input tensor, shared by the MatMuls that read it).
    The product is unchanged in exact arithmetic, but a transformer's few outlier channels no
    longer set the per-tensor int8 range of every activation. max|X_j| is calibrated by running
    the fp32 model on `texts`, one at a time (no padding)."""
    model = onnx.load(src)
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    uses: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1
    groups: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        w = inits.get(node.input[1]) if node.op_type == "MatMul" and len(node.input) == 2 else None
        if w is not None and len(w.dims) == 2 and uses[w.name] == 1 and node.input[0] not in inits:
            groups.setdefault(node.input[0], []).append(node)
    if not groups:
        shutil.copy(src, dst)
        return {}
    if exponents is None:
        exponents = _calibrate_smoothing(model, groups, inits, tokenizer, texts, alpha, max_tokens)
    muls = {}
    for name, nodes in groups.items():
        scale = np.exp2(np.array(exponents[name], dtype=np.float32))
        for n in nodes:
            w = numpy_helper.to_array(inits[n.input[1]])
            inits[n.input[1]].CopyFrom(numpy_helper.from_array((w * scale[:, None]).astype(np.float32), n.input[1]))
        smoothed = f"{name}_smoothed"
        graph.initializer.append(numpy_helper.from_array((1.0 / scale).astype(np.float32), f"{name}_smooth_scale"))
        muls[name] = onnx.helper.make_node("Mul", [name, f"{name}_smooth_scale"], [smoothed], name=f"{name}_smooth")
        for n in nodes:
            n.input[0] = smoothed
    # Each Mul goes just before the first node that reads its output (keeps topological order).
    ordered = []
    for node in graph.node:
        for name in node.input:
            if name.endswith("_smoothed") and name[: -len("_smoothed")] in muls:
                ordered.append(muls.pop(name[: -len("_smoothed")]))
        ordered.append(node)
    del graph.node[:]
    graph.node.extend(ordered)
    onnx.checker.check_model(model)
    onnx.save(model, dst)
    return exponents


def _calibrate_smoothing(model, groups, inits, tokenizer, texts, alpha, max_tokens) -> dict[str, list[int]]:
    # Calibrate: the MatMuls' activations as extra outputs of a copy of the graph.
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    known = {o.name for o in probe.graph.output}
    for name in groups:
        if name not in known:
            probe.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    wanted = {i.name for i in session.get_inputs()}
    tok = Tokenizer.from_file(str(tokenizer))
    tok.no_padding()
    tok.enable_truncation(max_tokens)
    names = list(groups)
    amax = {name: None for name in names}
    for text in texts:
        e = tok.encode(text)
        feeds = {
            "input_ids": np.array([e.ids], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask], dtype=np.int64),
            "token_type_ids": np.array([e.type_ids], dtype=np.int64),
        }
        for name, value in zip(names, session.run(names, {k: v for k, v in feeds.items() if k in wanted})):
            m = np.abs(value.reshape(-1, value.shape[-1])).max(0)
            amax[name] = m if amax[name] is None else np.maximum(amax[name], m)

    exponents = {}
    for name, nodes in groups.items():
        wmax = np.max([np.abs(numpy_helper.to_array(inits[n.input[1]])).max(1) for n in nodes], axis=0)
        scale = np.power(np.maximum(amax[name], 1e-5), alpha) / np.power(np.maximum(wmax, 1e-5), 1 - alpha)
        exponents[name] = [int(e) for e in np.clip(np.round(np.log2(scale)), -8, 8)]
    return exponents


# min over x of GELU(x) = x * Phi(x): -0.16997 at x = -0.7518 (erf form; the tanh form's is the
# same to 4 digits). Rounded away from zero.
GELU_MIN = -0.1700


def lower_bounds(graph: onnx.GraphProto, inits: dict[str, onnx.TensorProto]) -> dict[str, np.ndarray]:
    """Tensors known to be >= a constant (per channel, last axis): ReLU and GELU outputs (the Gelu
    ops, or the erf decomposition 0.5 * x * (1 + erf(x / sqrt 2)) in either order), and those
    times a positive constant vector (SmoothQuant's Mul). Such activations are quantized over
    [bound, max] instead of [-max, max]: one more bit where it matters most (the FFN's
    down-projection, whose input is a GELU's)."""
    producer = {o: n for n in graph.node for o in n.output}
    constants = {name: numpy_helper.to_array(t) for name, t in inits.items()}
    for n in graph.node:
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
            constants[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)

    def const(name: str, value: float) -> bool:
        c = constants.get(name)
        return c is not None and c.size == 1 and abs(float(c.reshape(())) - value) < 1e-4

    def erf_gelu(name: str) -> bool:
        # Walk back through Mul/Add from `name`, collecting the non-constant leaves.
        leaves, erfs, halves, stack = set(), [], 0, [(name, 0)]
        while stack:
            t, depth = stack.pop()
            n = producer.get(t)
            if n is not None and n.op_type == "Erf":
                erfs.append(n)
            elif n is not None and depth < 3 and (
                (n.op_type == "Add" and any(const(i, 1.0) for i in n.input))
                or (n.op_type == "Mul" and all(const(i, 0.5) for i in n.input if i in constants))
            ):
                halves += n.op_type == "Mul" and any(i in constants for i in n.input)
                stack += [(i, depth + 1) for i in n.input if i not in constants]
            elif t not in constants:
                leaves.add(t)
        if len(erfs) != 1 or len(leaves) != 1 or halves != 1:
            return False
        div = producer.get(erfs[0].input[0])
        return div is not None and div.input[0] in leaves and (
            (div.op_type == "Div" and const(div.input[1], 2**0.5)) or (div.op_type == "Mul" and const(div.input[1], 2**-0.5))
        )

    bounds: dict[str, np.ndarray] = {}
    for n in graph.node:
        out = n.output[0] if n.output else ""
        if n.op_type == "Relu":
            bounds[out] = np.zeros(1, dtype=np.float32)
        elif n.op_type in ("Gelu", "FastGelu", "BiasGelu") or (n.op_type == "Mul" and erf_gelu(out)):
            bounds[out] = np.full(1, GELU_MIN, dtype=np.float32)
        elif n.op_type == "Mul" and len(n.input) == 2:
            x, c = (n.input[0], n.input[1]) if n.input[1] in constants else (n.input[1], n.input[0])
            scale = constants.get(c)
            if x in bounds and scale is not None and scale.ndim <= 1 and np.all(scale > 0):
                bounds[out] = (bounds[x] * scale).astype(np.float32)
    return bounds


def per_token_int8(src: Path, dst: Path, exclude: frozenset[str] = frozenset()) -> None:
    """int8 MatMuls for every weight MatMul, with a scale per token for the activation (from each
    row's range at run time) and per output column for the weight.

    ONNX Runtime's dynamic quantization takes one scale for a whole activation tensor, so a few
    tokens with large activations (BERT's [CLS] and [SEP]) cost every other token its precision;
    a scale per token does not, and a text's vector no longer depends on what it is batched with.
    Each activation is quantized once to uint8 (QuantizeLinear along the rows) and shared by the
    MatMuls that read it (query, key and value):
      - symmetric by default: [-max, max] to 1..255, zero point 128;
      - from its lower bound where one is known (lower_bounds: GELU, ReLU): x + c >= 0, with
        c = -bound per channel, to 0..255, zero point 0; the MatMul then subtracts the constant
        row c @ W. One more bit for the FFN's down-projection, the most sensitive MatMul.
    Each MatMul is a MatMulIntegerToFloat (com.microsoft) with the weight's column scales, then
    one Mul by the row scales.

    The weights are stored as uint8 with zero point 128 (w + 128, w in -127..127): ONNX Runtime's
    u8 x u8 kernels widen to 16 bits and compute the exact integer sums on every CPU. Its u8 x s8
    kernels are faster, but on CPUs without VNNI (AVX2, AVX-512 without VNNI) they add pairs of
    products in saturating 16-bit sums (vpmaddubsw: 255 x 127 x 2 > 32,767), so the same graph
    would give other vectors there. embedserve re-encodes the weights as int8 with zero point 0
    (the same integers) at load where a probe shows the u8 x s8 kernel exact (VNNI, AMX): see
    signed_weights here and src/models/int8.rs."""
    model = onnx.load(src)
    graph = model.graph
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    if opset < 13:
        sys.exit(f"error: {src} uses opset {opset}; per-token quantization needs 13 or later")
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(onnx.helper.make_opsetid("com.microsoft", 1))
    inits = {i.name: i for i in graph.initializer}
    bounds = lower_bounds(graph, inits)
    uses: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1
    make = onnx.helper.make_node
    constants = {
        "q8_inv127": np.array(1.0 / 127.0, dtype=np.float32),
        "q8_inv255": np.array(1.0 / 255.0, dtype=np.float32),
        "q8_tiny": np.array(1e-12, dtype=np.float32),
        "q8_one": np.array(1.0, dtype=np.float32),
        "q8_zero_point": np.array(128, dtype=np.uint8),
        "q8_zero": np.array(0, dtype=np.uint8),
        "q8_weight_zero_point": np.array(128, dtype=np.uint8),
        "q8_axis1": np.array([1], dtype=np.int64),
        "q8_start": np.array([0], dtype=np.int64),
        "q8_end": np.array([-1], dtype=np.int64),
    }
    for name, value in constants.items():
        graph.initializer.append(numpy_helper.from_array(value, name))

    def reduce_max(x: str, out: str) -> onnx.NodeProto:
        if opset >= 18:
            return make("ReduceMax", [x, "q8_axis1"], [out], keepdims=0)
        return make("ReduceMax", [x], [out], axes=[1], keepdims=0)

    # activation -> (uint8 rows, row scales, shape prefix, zero point, shift c or None)
    quantized: dict[str, tuple[str, str, str, str, np.ndarray | None]] = {}
    nodes: list[onnx.NodeProto] = []
    for node in graph.node:
        w = inits.get(node.input[1]) if node.op_type == "MatMul" and len(node.input) == 2 else None
        if w is None or len(w.dims) != 2 or uses[w.name] != 1 or node.input[0] in inits or node.name in exclude:
            nodes.append(node)
            continue
        x, p = node.input[0], node.name or node.output[0]
        k, n = w.dims
        if x not in quantized:
            q = f"{x}_q8"
            graph.initializer.append(numpy_helper.from_array(np.array([-1, k], dtype=np.int64), f"{q}_2d"))
            nodes += [
                make("Shape", [x], [f"{q}_shape"]),
                make("Slice", [f"{q}_shape", "q8_start", "q8_end"], [f"{q}_prefix"]),
                make("Reshape", [x, f"{q}_2d"], [f"{q}_rows"]),
            ]
            shift = None
            if x in bounds:
                shift = np.broadcast_to(-bounds[x], (k,)).astype(np.float32)
                graph.initializer.append(numpy_helper.from_array(shift, f"{q}_shift"))
                nodes += [
                    make("Add", [f"{q}_rows", f"{q}_shift"], [f"{q}_shifted"]),
                    reduce_max(f"{q}_shifted", f"{q}_max"),
                ]
                rows, inverse_levels, zero_point = f"{q}_shifted", "q8_inv255", "q8_zero"
            else:
                nodes += [make("Abs", [f"{q}_rows"], [f"{q}_abs"]), reduce_max(f"{q}_abs", f"{q}_max")]
                rows, inverse_levels, zero_point = f"{q}_rows", "q8_inv127", "q8_zero_point"
            nodes += [
                make("Max", [f"{q}_max", "q8_tiny"], [f"{q}_max_nz"]),
                make("Mul", [f"{q}_max_nz", inverse_levels], [f"{q}_scale"]),
                make("Shape", [f"{q}_scale"], [f"{q}_scale_shape"]),
                make("Expand", [zero_point, f"{q}_scale_shape"], [f"{q}_zero_points"]),
                make("QuantizeLinear", [rows, f"{q}_scale", f"{q}_zero_points"], [q], axis=0),
                make("Unsqueeze", [f"{q}_scale", "q8_axis1"], [f"{q}_scale_col"]),
            ]
            quantized[x] = (q, f"{q}_scale_col", f"{q}_prefix", zero_point, shift)
        q, row_scale, prefix, zero_point, shift = quantized[x]
        weight = numpy_helper.to_array(w)
        column_scale = (np.maximum(np.abs(weight).max(0), 1e-12) / 127.0).astype(np.float32)
        weight_q = np.clip(np.round(weight / column_scale), -127, 127).astype(np.int16)
        graph.initializer.remove(w)
        graph.initializer.append(numpy_helper.from_array((weight_q + 128).astype(np.uint8), f"{w.name}_q8"))
        graph.initializer.append(numpy_helper.from_array(column_scale, f"{w.name}_q8_scale"))
        graph.initializer.append(numpy_helper.from_array(np.array([n], dtype=np.int64), f"{p}_q8_n"))
        nodes += [
            make(
                "MatMulIntegerToFloat",
                [q, f"{w.name}_q8", "q8_one", f"{w.name}_q8_scale", zero_point, "q8_weight_zero_point"],
                [f"{p}_q8_cols"],
                name=f"{p}_q8",
                domain="com.microsoft",
            ),
            make("Mul", [f"{p}_q8_cols", row_scale], [f"{p}_q8_scaled"]),
        ]
        scaled = f"{p}_q8_scaled"
        if shift is not None:
            # (x + c) @ W - c @ W, with W as the integer path sees it.
            offset = (shift.astype(np.float64) @ (weight_q.astype(np.float64) * column_scale)).astype(np.float32)
            graph.initializer.append(numpy_helper.from_array(offset, f"{p}_q8_offset"))
            nodes.append(make("Sub", [scaled, f"{p}_q8_offset"], [f"{p}_q8_unshifted"]))
            scaled = f"{p}_q8_unshifted"
        nodes += [
            make("Concat", [prefix, f"{p}_q8_n"], [f"{p}_q8_shape"], axis=0),
            make("Reshape", [scaled, f"{p}_q8_shape"], [node.output[0]]),
        ]
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.checker.check_model(model)
    onnx.save(model, dst)


def signed_weights(model: onnx.ModelProto) -> onnx.ModelProto:
    """The same model with the uint8 weights (zero point 128) of its MatMulIntegerToFloat nodes
    as int8 (zero point 0): the same integers, for ONNX Runtime's faster u8 x s8 kernels, which
    are exact only on CPUs with VNNI or AMX (what embedserve does at load on such CPUs)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    inits = {i.name: i for i in out.graph.initializer}
    flipped = set()
    for node in out.graph.node:
        if node.op_type == "MatMulIntegerToFloat" and len(node.input) >= 6:
            for name in (node.input[1], node.input[5]):
                t = inits[name]
                if name not in flipped and t.data_type == onnx.TensorProto.UINT8:
                    a = numpy_helper.to_array(t).astype(np.int16) - 128
                    t.CopyFrom(numpy_helper.from_array(a.astype(np.int8), name))
                    flipped.add(name)
    return out


def int8_embedding_tables(src: Path, dst: Path) -> None:
    """Each Gather from a 2-D float table (word and position embeddings) reads an int8 table with
    one scale per row instead, and dequantizes only the rows it gathered: a quarter of the
    table's memory, and no fp32 copy of it at load."""
    model = onnx.load(src)
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    make = onnx.helper.make_node
    nodes = []
    for node in graph.node:
        table = inits.get(node.input[0]) if node.op_type == "Gather" else None
        axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
        if table is None or len(table.dims) != 2 or table.data_type != onnx.TensorProto.FLOAT or axis != 0:
            nodes.append(node)
            continue
        t = numpy_helper.to_array(table)
        row_scale = (np.maximum(np.abs(t).max(1, keepdims=True), 1e-12) / 127.0).astype(np.float32)
        graph.initializer.remove(table)
        graph.initializer.append(
            numpy_helper.from_array(np.clip(np.round(t / row_scale), -127, 127).astype(np.int8), f"{table.name}_q8")
        )
        graph.initializer.append(numpy_helper.from_array(row_scale, f"{table.name}_q8_scale"))
        out, ids = node.output[0], node.input[1]
        nodes += [
            make("Gather", [f"{table.name}_q8", ids], [f"{out}_q8"], axis=0),
            make("Gather", [f"{table.name}_q8_scale", ids], [f"{out}_scale"], axis=0),
            make("Cast", [f"{out}_q8"], [f"{out}_f32"], to=onnx.TensorProto.FLOAT),
            make("Mul", [f"{out}_f32", f"{out}_scale"], [out]),
        ]
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.checker.check_model(model)
    onnx.save(model, dst)


def recipe_per_tensor(src: Path, dst: Path, **_) -> None:
    _dynamic(src, dst, per_channel=False, reduce_range=False)


def recipe_per_channel(src: Path, dst: Path, **_) -> None:
    _dynamic(src, dst, per_channel=True, reduce_range=True)


def recipe_per_channel_full_range(src: Path, dst: Path, **_) -> None:
    _dynamic(src, dst, per_channel=True, reduce_range=False)


def recipe_per_channel_ffn_fp32(src: Path, dst: Path, **_) -> None:
    _dynamic(src, dst, per_channel=True, reduce_range=True, exclude=ffn_output_matmuls(onnx.load(src)))


def recipe_per_channel_embeddings(src: Path, dst: Path, **_) -> None:
    _dynamic(src, dst, per_channel=True, reduce_range=True, ops=("MatMul", "Gather"))


def recipe_smooth_per_token(src: Path, dst: Path, tokenizer: Path | None = None, calibration: list[str] | None = None,
                            exponents: dict[str, list[int]] | None = None) -> dict[str, list[int]]:
    """The default: SmoothQuant (alpha 0.65, powers of two), then int8 MatMuls with a scale per
    token, then int8 embedding tables."""
    with tempfile.TemporaryDirectory() as tmp:
        smoothed, per_token = Path(tmp) / "smoothed.onnx", Path(tmp) / "per-token.onnx"
        exponents = smooth(src, smoothed, tokenizer, calibration or calibration_texts(), 0.65, exponents=exponents)
        per_token_int8(smoothed, per_token)
        int8_embedding_tables(per_token, dst)
    return exponents


def recipe_per_token(src: Path, dst: Path, **_) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        per_token_int8(src, Path(tmp) / "per-token.onnx")
        int8_embedding_tables(Path(tmp) / "per-token.onnx", dst)


def calibration_texts(path: Path = Path(__file__).resolve().parent / "calibration.txt") -> list[str]:
    return [line for line in path.read_text().splitlines() if line.strip()]


RECIPES = {
    "smooth-per-token": recipe_smooth_per_token,
    "per-token": recipe_per_token,
    "per-tensor": recipe_per_tensor,
    "per-channel": recipe_per_channel,
    "per-channel-full-range": recipe_per_channel_full_range,
    "per-channel-ffn-fp32": recipe_per_channel_ffn_fp32,
    "per-channel-embeddings": recipe_per_channel_embeddings,
}
DEFAULT_RECIPE = "smooth-per-token"


# --- Embedding with Python ONNX Runtime --------------------------------------------------------


@dataclass
class Encoder:
    """Embeds texts the way embedserve does: tokenizer truncation, the model's inputs, pooling
    over the attention mask, L2 normalisation."""

    session: ort.InferenceSession
    tokenizer: Tokenizer
    output: str
    pooling: str

    @classmethod
    def open(
        cls, model: Path, tokenizer: Path, output: str | None, pooling: str, max_tokens: int, threads: int = 0,
        optimize: bool = True,
    ):
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        if not optimize:
            # How embedserve should serve an int8 graph this script wrote: graph_optimization = "none".
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
        tok = Tokenizer.from_file(str(tokenizer))
        tok.no_padding()
        tok.enable_truncation(max_tokens)
        output = output or session.get_outputs()[0].name
        return cls(session, tok, output, pooling)

    def embed(self, texts: list[str], batch: int = 32) -> np.ndarray:
        wanted = {i.name for i in self.session.get_inputs()}
        encodings = self.tokenizer.encode_batch(texts)
        order = sorted(range(len(texts)), key=lambda i: len(encodings[i].ids))
        out = np.zeros((len(texts), 0), dtype=np.float32)
        rows: dict[int, np.ndarray] = {}
        for start in range(0, len(order), batch):
            chunk = order[start : start + batch]
            width = max(len(encodings[i].ids) for i in chunk)
            ids = np.zeros((len(chunk), width), dtype=np.int64)
            mask = np.zeros_like(ids)
            types = np.zeros_like(ids)
            for r, i in enumerate(chunk):
                e = encodings[i]
                ids[r, : len(e.ids)] = e.ids
                mask[r, : len(e.ids)] = e.attention_mask
                types[r, : len(e.ids)] = e.type_ids
            feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
            (hidden,) = self.session.run([self.output], {k: v for k, v in feeds.items() if k in wanted})
            if self.pooling == "mean":
                m = mask[:, :, None].astype(np.float32)
                pooled = (hidden * m).sum(1) / m.sum(1)
            elif self.pooling == "cls":
                pooled = hidden[:, 0]
            else:
                pooled = hidden
            for r, i in enumerate(chunk):
                rows[i] = pooled[r]
        out = np.stack([rows[i] for i in range(len(texts))]).astype(np.float32)
        return out / np.linalg.norm(out, axis=1, keepdims=True)


# --- The quality set and report ----------------------------------------------------------------


@dataclass
class QualitySet:
    texts: list[str]
    corpus: list[str]
    queries: list[str]
    answers: list[int]
    long: list[str]
    long_tokens: list[int]

    @classmethod
    def load(cls, folder: Path = QUALITY) -> "QualitySet":
        data = json.loads((folder / "set.json").read_text())
        long = json.loads((folder / "long.json").read_text())["texts"]
        return cls(
            data["texts"], data["corpus"], [q["text"] for q in data["queries"]], [q["answer"] for q in data["queries"]],
            [t["text"] for t in long], [t["tokens"] for t in long],
        )

    def all_texts(self) -> list[str]:
        return self.texts + self.corpus + self.queries + self.long

    @staticmethod
    def minilm_reference(folder: Path = QUALITY) -> np.ndarray:
        """The fp32 sentence-transformers vectors of all-MiniLM-L6-v2 for all_texts(), in order
        (scripts/make_quality_reference.py)."""
        files = ("minilm-l6-fp32.f32", "long-minilm-l6-fp32.f32")
        return np.concatenate([np.fromfile(folder / f, dtype="<f4").reshape(-1, 384) for f in files])

    def split(self, vectors: np.ndarray):
        a = len(self.texts)
        b = a + len(self.corpus)
        c = b + len(self.queries)
        return vectors[:a], vectors[a:b], vectors[b:c], vectors[c:]

    def groups(self, cosines: np.ndarray) -> dict[str, np.ndarray]:
        """The gated groups of per-text cosines: the fixed texts, the retrieval set's sentences and
        queries, and the long texts by length."""
        fixed, corpus, queries, long = self.split(cosines)
        tokens = np.array(self.long_tokens)
        out = {"fixed texts": fixed, "retrieval texts": np.concatenate([corpus, queries])}
        for name, (lo, hi) in LENGTH_BUCKETS.items():
            out[f"long {name} tokens"] = long[(tokens >= lo) & (tokens <= hi)]
        return out


# The long texts' length buckets, in tokens ([CLS] and [SEP] included, before truncation).
LENGTH_BUCKETS = {"< 100": (0, 99), "100-159": (100, 159), "160-256": (160, 256), "> 256": (257, 10**9)}


def retrieval(corpus: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """Each query's corpus indices, nearest first (cosine: the vectors are normalised)."""
    return np.argsort(-(queries @ corpus.T), axis=1, kind="stable")


def report(qs: QualitySet, reference: np.ndarray, candidate: np.ndarray) -> dict:
    _, ref_corpus, ref_queries, _ = qs.split(reference)
    _, cand_corpus, cand_queries, _ = qs.split(candidate)
    cos_all = (reference * candidate).sum(1)
    ref_rank = retrieval(ref_corpus, ref_queries)
    cand_rank = retrieval(cand_corpus, cand_queries)
    answers = np.array(qs.answers)
    recall_ref = float(np.mean([a in r[:10] for a, r in zip(answers, ref_rank)]))
    recall_cand = float(np.mean([a in r[:10] for a, r in zip(answers, cand_rank)]))
    # Not gated: each corpus sentence's nearest other sentence. The corpus is one narrow domain,
    # full of near ties, so this moves far more than the paraphrase queries do.
    ref_nn = ref_corpus @ ref_corpus.T
    cand_nn = cand_corpus @ cand_corpus.T
    np.fill_diagonal(ref_nn, -2.0)
    np.fill_diagonal(cand_nn, -2.0)
    r = {
        "groups": {name: (float(c.min()), float(c.mean()), len(c)) for name, c in qs.groups(cos_all).items()},
        "corpus_neighbour_agreement": float(np.mean(ref_nn.argmax(1) == cand_nn.argmax(1))),
        "min_cosine_all": float(cos_all.min()),
        "mean_cosine_all": float(cos_all.mean()),
        "top1_agreement": float(np.mean(ref_rank[:, 0] == cand_rank[:, 0])),
        "recall10_reference": recall_ref,
        "recall10": recall_cand,
    }
    r["failures"] = gate(r)
    return r


def gate(r: dict) -> list[str]:
    failures = []
    for name, (low, mean, _) in r["groups"].items():
        if low < MIN_COSINE:
            failures.append(f"{name}: min cosine {low:.4f} < {MIN_COSINE}")
        if mean < MEAN_COSINE:
            failures.append(f"{name}: mean cosine {mean:.4f} < {MEAN_COSINE}")
    if r["top1_agreement"] < TOP1_AGREEMENT:
        failures.append(f"top-1 agreement {r['top1_agreement']:.1%} < {TOP1_AGREEMENT:.0%}")
    if (r["recall10_reference"] - r["recall10"]) * 100 > RECALL_POINTS:
        failures.append(
            f"recall@10 {r['recall10']:.1%} is more than {RECALL_POINTS:g} point below the fp32 {r['recall10_reference']:.1%}"
        )
    return failures


def print_report(r: dict, file=sys.stdout) -> None:
    for name, (low, mean, n) in r["groups"].items():
        print(f"{name} ({n}): min cosine {low:.4f} (gate {MIN_COSINE}), mean {mean:.4f} (gate {MEAN_COSINE})", file=file)
    print(
        f"all {r.get('count', '')} texts: min cosine {r['min_cosine_all']:.4f}, mean {r['mean_cosine_all']:.4f}\n"
        f"retrieval: top-1 agreement {r['top1_agreement']:.1%} (gate {TOP1_AGREEMENT:.0%}), "
        f"recall@10 {r['recall10']:.1%} vs fp32 {r['recall10_reference']:.1%} (gate: within {RECALL_POINTS:g} point)\n"
        f"each corpus sentence's nearest other sentence, same as fp32: {r['corpus_neighbour_agreement']:.1%} (not gated)",
        file=file,
    )
    print("PASS" if not r["failures"] else "FAIL: " + "; ".join(r["failures"]), file=file)


# --- fp32 compute from ONNX Runtime's dynamic int8 ------------------------------------------------


def dequantize_matmuls(src: Path, dst: Path) -> int:
    """`src`, a graph from ONNX Runtime's dynamic quantization (each weight MatMul is
    DynamicQuantizeLinear -> MatMulInteger -> Cast -> Mul by the two scales), with every such
    MatMul turned back into an fp32 MatMul on its own int8 weights, dequantized: (w - zero
    point) * scale. What is left is exactly the weights of the file, computed in fp32.

    Why: the dynamic graph quantizes each activation with one scale for the whole tensor,
    computed at run time over the whole batch (padding included), so a text's vector depends on
    what it is batched with (cosine 0.997 measured on bge-small), and one fp32 rounding that moves
    a tensor's maximum moves every value of it: the same graph gave reranker logits 0.62 apart on
    an AVX2 and an AVX-512 CPU. Dequantized, the weights are the same and the results are not
    batch- or CPU-dependent. Returns the number of MatMuls restored."""
    model = onnx.load(src)
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    drop: set[int] = set()
    replacements: dict[int, onnx.NodeProto] = {}
    restored = 0
    for node in graph.node:
        if node.op_type != "MatMulInteger" or node.input[1] not in inits:
            continue
        dql = producer.get(node.input[0])
        casts = consumers.get(node.output[0], [])
        if dql is None or dql.op_type != "DynamicQuantizeLinear" or len(casts) != 1 or casts[0].op_type != "Cast":
            sys.exit(f"error: {node.name or node.output[0]}: not DynamicQuantizeLinear -> MatMulInteger -> Cast")
        muls = consumers.get(casts[0].output[0], [])
        if len(muls) != 1 or muls[0].op_type != "Mul":
            sys.exit(f"error: {node.output[0]}: its Cast is not followed by one Mul")
        mul = muls[0]
        scales = producer.get(next(i for i in mul.input if i != casts[0].output[0]))
        if scales is None or scales.op_type != "Mul":
            sys.exit(f"error: {node.output[0]}: its scale is not a Mul of the two scales")
        weight_scale = next(i for i in scales.input if i in inits)
        w_q = numpy_helper.to_array(inits[node.input[1]]).astype(np.float32)
        w_zp = numpy_helper.to_array(inits[node.input[3]]).astype(np.float32) if len(node.input) > 3 and node.input[3] else 0.0
        w = ((w_q - w_zp) * numpy_helper.to_array(inits[weight_scale]).astype(np.float32)).astype(np.float32)
        weight = f"{node.input[1]}_dequantized"
        graph.initializer.append(numpy_helper.from_array(w, weight))
        replacements[id(node)] = onnx.helper.make_node("MatMul", [dql.input[0], weight], [mul.output[0]], name=node.name)
        drop |= {id(casts[0]), id(mul), id(scales)}
        restored += 1
    nodes = [replacements.get(id(n), n) for n in graph.node if id(n) not in drop]
    # Quantizers nothing reads any more.
    read = {i for n in nodes for i in n.input}
    nodes = [n for n in nodes if not (n.op_type == "DynamicQuantizeLinear" and not any(o in read for o in n.output))]
    read = {i for n in nodes for i in n.input} | {o.name for o in graph.output}
    kept = [i for i in graph.initializer if i.name in read]
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.initializer[:]
    graph.initializer.extend(kept)
    onnx.checker.check_model(model)
    onnx.save(model, dst)
    return restored


# --- Restoring the shipped model's fp32 weights ------------------------------------------------


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    data = path.read_bytes()
    (size,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + size])
    body = data[8 + size :]
    dtypes = {"F32": "<f4", "I64": "<i8"}
    return {
        name: np.frombuffer(body[m["data_offsets"][0] : m["data_offsets"][1]], dtype=dtypes[m["dtype"]]).reshape(m["shape"])
        for name, m in header.items()
        if name != "__metadata__"
    }


def restore_fp32(int8_model: Path, safetensors: Path) -> onnx.ModelProto:
    """The graph of `int8_model` with each `Cast(w_q) * w_scale` weight replaced by the fp32
    tensor of `safetensors` it quantizes (checked to within half a quantization step)."""
    model = onnx.load(int8_model)
    graph = model.graph
    weights = {k: v for k, v in read_safetensors(safetensors).items() if v.dtype == np.float32}
    candidates = [(k, v) for k, v in weights.items()] + [(k, v.T) for k, v in weights.items() if v.ndim == 2]
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    dropped_nodes, dropped_inits, restored = set(), set(), []
    for node in graph.node:
        if node.op_type != "Cast" or not node.input[0].endswith("_q"):
            continue
        base = node.input[0][: -len("_q")]
        (mul,) = consumers[node.output[0]]
        if mul.op_type != "Mul" or base + "_scale" not in mul.input:
            sys.exit(f"error: {node.output[0]} is not dequantized by a Mul with {base}_scale")
        scale = inits[base + "_scale"]
        dequantized = inits[node.input[0]].astype(np.float32) * scale
        diff, name, tensor = min(
            ((float(np.abs(v - dequantized).max()), k, v) for k, v in candidates if v.shape == dequantized.shape),
            key=lambda t: t[0],
        )
        if diff > 0.5001 * float(scale.max()):
            sys.exit(f"error: no fp32 weight in {safetensors.name} matches {base} (closest {name}, off by {diff})")
        restored.append(numpy_helper.from_array(np.ascontiguousarray(tensor, dtype=np.float32), mul.output[0]))
        dropped_nodes |= {id(node), id(mul)}
        dropped_inits |= {node.input[0], base + "_scale"}
    if not restored:
        sys.exit(f"error: {int8_model} has no int8-stored weights to restore")
    nodes = [n for n in graph.node if id(n) not in dropped_nodes]
    kept = [i for i in graph.initializer if i.name not in dropped_inits]
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.initializer[:]
    graph.initializer.extend(kept + restored)
    # The fp32 parameters the export kept (biases, layer norms) must be the same tensors too.
    for init in kept:
        name = init.name.removeprefix("inner.")
        if name in weights and not np.array_equal(numpy_helper.to_array(init), weights[name]):
            sys.exit(f"error: {init.name} differs from {name} in {safetensors.name}")
    onnx.checker.check_model(model)
    return model


# --- Command line ------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("input", type=Path, help="the fp32 ONNX model")
    parser.add_argument("output", type=Path, help="where to write the int8 model")
    parser.add_argument("--tokenizer", type=Path, help="tokenizer.json (default: next to the input)")
    parser.add_argument("--output-name", dest="output_name", help="graph output to pool (default: the first)")
    parser.add_argument("--pooling", choices=["mean", "cls", "none"], default="mean")
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--recipe", choices=sorted(RECIPES), default=DEFAULT_RECIPE)
    parser.add_argument(
        "--calibration", type=Path, help="texts to calibrate smoothing on, one per line (default: scripts/calibration.txt)"
    )
    parser.add_argument(
        "--smoothing", type=Path,
        help="JSON of smoothing exponents: used if the file exists, else calibrated and written there (reproducible builds)",
    )
    parser.add_argument("--force", action="store_true", help="write the model even if it fails the gate")
    args = parser.parse_args()

    tokenizer = args.tokenizer or args.input.parent / "tokenizer.json"
    for path in (args.input, tokenizer):
        if not path.is_file():
            sys.exit(f"error: {path} not found")
    with tempfile.TemporaryDirectory() as tmp:
        candidate = Path(tmp) / "model-int8.onnx"
        calibration = calibration_texts(args.calibration) if args.calibration else None
        exponents = json.loads(args.smoothing.read_text()) if args.smoothing and args.smoothing.exists() else None
        exponents = RECIPES[args.recipe](
            args.input, candidate, tokenizer=tokenizer, calibration=calibration, exponents=exponents
        )
        qs = QualitySet.load()
        texts = qs.all_texts()
        reference = Encoder.open(args.input, tokenizer, args.output_name, args.pooling, args.max_tokens).embed(texts)
        vectors = Encoder.open(
            candidate, tokenizer, args.output_name, args.pooling, args.max_tokens, optimize=False
        ).embed(texts)
        r = report(qs, reference, vectors)
        r["count"] = len(texts)
        print(f"{args.input} -> {args.output} ({args.recipe}): {candidate.stat().st_size / 2**20:.1f} MiB")
        print_report(r)
        if r["failures"] and not args.force:
            print("not written: the model fails the quality gate (--force writes it anyway)", file=sys.stderr)
            return 1
        args.output.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(candidate, args.output)
        print(f"wrote {args.output}")
        if args.smoothing and exponents and not args.smoothing.exists():
            args.smoothing.write_text(json.dumps(exponents, separators=(",", ":")) + "\n")
            print(f"wrote {args.smoothing}")
    return 1 if r["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
