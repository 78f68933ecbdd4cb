#!/usr/bin/env python3
"""Write tests/data/reference.json: embeddings computed independently of embedserve.

Python onnxruntime and the Python `tokenizers` package run each text alone (batch of one, no
padding), with the pooling the model's config names, then L2-normalise: what embedserve must
return by default. Run once with `make reference`; the output is committed as a fixture.
"""

import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

ROOT = Path(__file__).resolve().parent.parent
ASSETS = ROOT / "assets" / "models"
TOKENIZER = ASSETS / "minilm-uncased-tokenizer.json"

LONG = (
    "The committee reviewed the proposal in detail, weighing the costs of the new rail line "
    "against the expected growth in regional traffic, the environmental surveys of the river "
    "valley, and the concerns raised by residents at three public meetings. "
)
TEXTS = {
    "short": "hello world",
    "sentence": "A quick brown fox jumps over the lazy dog while the farmer watches from the porch.",
    "paragraph": LONG * 5,  # about 200 tokens
    "over_limit": LONG * 8,  # over 256 tokens: truncated by both models
    "non_ascii": "Crème brûlée à São Paulo, naïve café; 東京で寿司を食べました 🍣🎉 ¿Qué tal?",
}

MODELS = {
    # id: (onnx file, inputs, max tokens, how to pool)
    "minilm-l6-int8": ("minilm-l6-int8/model.onnx", ["input_ids", "attention_mask", "token_type_ids"], 256, "mean"),
    "paraphrase-l3": ("paraphrase-l3-int8/model.onnx", ["input_ids", "attention_mask"], 128, "461"),
}


def embed(session, tokenizer, inputs, pooling, text):
    enc = tokenizer.encode(text)
    feeds = {
        "input_ids": np.array([enc.ids], dtype=np.int64),
        "attention_mask": np.array([enc.attention_mask], dtype=np.int64),
        "token_type_ids": np.array([enc.type_ids], dtype=np.int64),
    }
    names = [o.name for o in session.get_outputs()]
    outputs = dict(zip(names, session.run(None, {k: feeds[k] for k in inputs})))
    if pooling == "mean":
        states = outputs["last_hidden_state"][0]
        mask = feeds["attention_mask"][0][:, None].astype(np.float32)
        vector = (states * mask).sum(0) / mask.sum()
    else:
        vector = outputs[pooling][0]
        # The graph's pooled output must be the mean of its token states.
        token_mean = outputs["onnx::Shape_422"][0].mean(0)
        assert np.abs(vector - token_mean).max() < 1e-5, "461 is not the token mean"
    vector = vector / np.linalg.norm(vector)
    return len(enc.ids), vector


def cpu() -> str:
    """The CPU the reference was computed on: int8 vectors depend on its fp32 kernels' family
    (tests/api/helpers.rs states the tolerance and why)."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    field = lambda name: next((l.split(":", 1)[1].strip() for l in info.splitlines() if l.startswith(name)), "")
    wanted = ("avx2", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8")
    return f"{field('model name')} ({' '.join(f for f in field('flags').split() if f in wanted)})"


def main():
    out = {"cpu": cpu(), "texts": TEXTS, "models": {}}
    for model_id, (onnx, inputs, max_tokens, pooling) in MODELS.items():
        tokenizer = Tokenizer.from_file(str(TOKENIZER))
        tokenizer.no_padding()
        tokenizer.enable_truncation(max_tokens)
        # As config/default.toml builds them: graph_optimization = "none" (an int8 graph's
        # rounding makes fused and unfused runs differ by more than the tests' tolerance).
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        session = ort.InferenceSession(str(ASSETS / onnx), options, providers=["CPUExecutionProvider"])
        rows = {}
        for name, text in TEXTS.items():
            tokens, vector = embed(session, tokenizer, inputs, pooling, text)
            rows[name] = {"tokens": tokens, "embedding": [float(f"{x:.8g}") for x in vector]}
            print(f"{model_id:16} {name:12} {tokens:4} tokens", file=sys.stderr)
        out["models"][model_id] = rows
    target = ROOT / "tests" / "data" / "reference.json"
    target.write_text(json.dumps(out, ensure_ascii=False, separators=(",", ":")) + "\n")
    print(f"wrote {target} ({target.stat().st_size} bytes)", file=sys.stderr)


if __name__ == "__main__":
    main()
