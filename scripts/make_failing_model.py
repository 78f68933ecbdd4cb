#!/usr/bin/env python3
"""Write a model that fails at run time on some inputs, for the batch isolation tests.

It is tests/data/tiny-xlmr with its word-embedding table cut to its first ROWS rows: the
tokenizer still gives ids up to 1,999, and ONNX Runtime's Gather refuses the rarer ones
("indices element out of data bounds"), so any input holding a token id >= ROWS fails its run
while inputs of common tokens embed exactly as with the full model. This is how a model whose
tokenizer and graph disagree fails in production.

    .venv-models/bin/python scripts/make_failing_model.py OUT_DIR [--rows 1000]

OUT_DIR gets a copy of the export folder with onnx/model.onnx replaced (about 0.6 MB). The API
tests run this in their setup (EMBEDSERVE_MODELS_PYTHON), so nothing binary is committed.
"""

import argparse
import shutil
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "tests" / "data" / "tiny-xlmr"
TABLE = "model.embeddings.word_embeddings.weight"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--rows", type=int, default=1000, help="rows of the embedding table kept")
    args = parser.parse_args()
    if args.out.exists():
        shutil.rmtree(args.out)
    shutil.copytree(SOURCE, args.out)
    model = onnx.load(SOURCE / "onnx" / "model.onnx")
    (table,) = [t for t in model.graph.initializer if t.name == TABLE]
    full = numpy_helper.to_array(table)
    if not 0 < args.rows < full.shape[0]:
        raise SystemExit(f"--rows must be between 1 and {full.shape[0] - 1}")
    table.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(full[: args.rows]), TABLE))
    onnx.checker.check_model(model)
    onnx.save(model, args.out / "onnx" / "model.onnx")
    print(f"{args.out}: {TABLE} cut from {full.shape[0]} to {args.rows} rows")


if __name__ == "__main__":
    main()
