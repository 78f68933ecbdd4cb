#!/usr/bin/env python3
"""The Python ceiling for `make bench`'s rerank figures: a cross-encoder ONNX file run by Python
onnxruntime on (query, passage) pairs at a fixed batch, tokenized by `tokenizers` with the pair
template, longest side cut first, padded to the longest pair of each batch (what a hand-written
Python service does at best, with no HTTP and no queue).

Reads the workload from stdin: [{"query": str, "passages": [str, ...]}, ...]. Prints one JSON
line: {"pairs_per_second", "cpu_ms_per_pair", "threads"}.

Usage: bench_rerank_ceiling.py MODEL.onnx TOKENIZER.json MAX_TOKENS SECONDS BATCH
"""

import json
import sys
import time

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer


def main() -> None:
    onnx_path, tokenizer_path, max_tokens, seconds, batch = sys.argv[1:6]
    max_tokens, seconds, batch = int(max_tokens), float(seconds), int(batch)
    work = json.load(sys.stdin)
    pairs = [(w["query"], p) for w in work for p in w["passages"]]

    tokenizer = Tokenizer.from_file(tokenizer_path)
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length=max_tokens, strategy="longest_first")
    tokenizer.enable_padding()
    session = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]

    def run(chunk):
        encoded = tokenizer.encode_batch(chunk)
        feed = {
            "input_ids": np.array([e.ids for e in encoded], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in encoded], dtype=np.int64),
            "token_type_ids": np.array([e.type_ids for e in encoded], dtype=np.int64),
        }
        return session.run(None, {n: feed[n] for n in names})

    cycle = (pairs * (batch // len(pairs) + 2))
    run(cycle[:batch])
    done, at = 0, 0
    started, cpu = time.perf_counter(), time.process_time()
    while time.perf_counter() - started < seconds:
        chunk = cycle[at : at + batch]
        run(chunk)
        done += len(chunk)
        at = (at + batch) % len(pairs)
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    threads = session.get_session_options().intra_op_num_threads
    print(json.dumps({"pairs_per_second": done / wall, "cpu_ms_per_pair": cpu / done * 1e3, "threads": threads}))


if __name__ == "__main__":
    main()
