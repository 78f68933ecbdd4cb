#!/usr/bin/env python3
"""Try every recipe of scripts/quantize.py on
the fp32 MiniLM-L6 that make assets restores, and print the table in docs/quantization.md:
quality against the fp32 sentence-transformers reference, file size, session memory, session
build time, one-sentence latency and batch-of-32 throughput, all in one run so that they compare.

    .venv-models/bin/python scripts/quantize_explore.py [--threads 2] [--only a,b]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import quantize as q  # noqa: E402

ROOT = q.ROOT
MODELS = ROOT / "assets" / "models"
TOKENIZER = MODELS / "minilm-uncased-tokenizer.json"

# One process per model, so that resident memory is the session's alone.
PROBE = r"""
import json, sys, time, resource, numpy as np, onnxruntime as ort
from tokenizers import Tokenizer
def rss():
    return int(open('/proc/self/statm').read().split()[1]) * 4096
path, threads = sys.argv[1], int(sys.argv[2])
tok = Tokenizer.from_file(sys.argv[3]); tok.enable_truncation(256)
before = rss()
o = ort.SessionOptions(); o.intra_op_num_threads = threads
t = time.perf_counter(); s = ort.InferenceSession(path, o, providers=['CPUExecutionProvider']); create = time.perf_counter() - t
names = {i.name for i in s.get_inputs()}
def feeds(texts):
    tok.enable_padding()
    es = tok.encode_batch(texts)
    f = {'input_ids': np.array([e.ids for e in es]), 'attention_mask': np.array([e.attention_mask for e in es]),
         'token_type_ids': np.array([e.type_ids for e in es])}
    return {k: v for k, v in f.items() if k in names}
one = feeds(["A quick brown fox jumps over the lazy dog while the farmer watches from the porch."])
s.run(None, one)
lat = []
for _ in range(300):
    t = time.perf_counter(); s.run(None, one); lat.append(time.perf_counter() - t)
batch = feeds([f"sentence number {i} about the weather, the markets and the news of the day" for i in range(32)])
s.run(None, batch)
t = time.perf_counter(); n = 0
while time.perf_counter() - t < 3:
    s.run(None, batch); n += 32
tput = n / (time.perf_counter() - t)
print(json.dumps({"create_ms": create * 1e3, "p50_ms": float(np.percentile(lat, 50)) * 1e3,
                  "per_s": tput, "session_mib": (rss() - before) / 2**20}))
"""


def measure(model: Path, threads: int) -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE, str(model), str(threads), str(TOKENIZER)],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def fixed(r: dict) -> str:
    low, mean, _ = r["groups"]["fixed texts"]
    return f"{low:.4f} / {mean:.4f}"


def worst_long(r: dict) -> str:
    low, mean, _ = min((v for k, v in r["groups"].items() if k.startswith("long")), key=lambda v: v[0])
    return f"{low:.4f} / {min(v[1] for k, v in r['groups'].items() if k.startswith('long')):.4f}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", default="")
    args = parser.parse_args()
    fp32 = MODELS / "minilm-l6-fp32" / "model.onnx"
    qs = q.QualitySet.load()
    reference = q.QualitySet.minilm_reference()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        candidates = {
            "fp32 (restored export)": fp32,
            "shipped int8 storage (fp32 compute)": MODELS / "minilm-l6-int8-storage" / "model.onnx",
        }
        for name, recipe in q.RECIPES.items():
            out = tmp / f"{name}.onnx"
            recipe(fp32, out, tokenizer=TOKENIZER)
            candidates[name] = out
        only = [o for o in args.only.split(",") if o]
        for name, path in candidates.items():
            if only and not any(o in name for o in only):
                continue
            enc = q.Encoder.open(path, TOKENIZER, "last_hidden_state", "mean", 256, threads=args.threads)
            r = q.report(qs, reference, enc.embed(qs.all_texts()))
            m = measure(path, args.threads)
            rows.append((name, path.stat().st_size / 2**20, r, m))
            print(f"{name}: {r} {m}", file=sys.stderr)
    print(f"| recipe | file MiB | session MiB | create ms | 1 sentence p50 ms | batch 32 /s | min / mean cos (fixed) | min / mean cos (long, worst bucket) | top-1 agree | recall@10 (fp32 {rows[0][2]['recall10_reference']:.1%}) | gate |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name, size, r, m in rows:
        print(f"| {name} | {size:.1f} | {m['session_mib']:.0f} | {m['create_ms']:.0f} | {m['p50_ms']:.2f} | {m['per_s']:.0f} | "
              f"{fixed(r)} | {worst_long(r)} | {r['top1_agreement']:.1%} | "
              f"{r['recall10']:.1%} | {'pass' if not r['failures'] else 'FAIL'} |")


if __name__ == "__main__":
    main()
