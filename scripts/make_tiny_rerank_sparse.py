#!/usr/bin/env python3
"""Write tests/data/tiny-cross-encoder and tests/data/tiny-splade: two small BERT models as
sentence-transformers folders with ONNX graphs, and sentence-transformers' own outputs for them,
so make test can check that embedserve reranks and sparse-encodes such folders exactly.

  - tiny-cross-encoder: a CrossEncoder over a BertForSequenceClassification (one label), saved
    with CrossEncoder.save; onnx/model.onnx takes input_ids, attention_mask, token_type_ids and
    gives logits [batch, 1]. Reference (tiny-cross-encoder-reference.json): 12 (query, document)
    pairs, some over the 128-token limit (short query + long document, long + long, long query +
    short document) so that longest-first truncation matters, with the pair's token ids and type
    ids as the CrossEncoder's tokenizer produced them, the raw logits, and CrossEncoder.predict's
    scores under its default activation (recorded by class name).
  - tiny-splade: a SparseEncoder (MLMTransformer + SpladePooling, max pooling of
    log(1 + relu(logits))) over a BertForMaskedLM, saved with SparseEncoder.save; onnx/model.onnx
    takes the same inputs and gives logits [batch, sequence, vocab]. Reference
    (tiny-splade-reference.json): SparseEncoder.encode of 12 texts, some over 128 tokens, as
    ascending indices and non-zero values, with their token ids and the SpladePooling settings.

Both use the same WordPiece vocabulary of 1500 tokens (lowercase, BERT normalizer and
pre-tokenizer, [CLS] A [SEP] B [SEP] with token types), built here from the word counts of the
committed quality set and calibration text (characters, common word endings as ## continuations,
common words; see train_vocabulary), and the same tiny sizes (hidden 32, 2 layers, 2 heads, intermediate 64,
128 positions). The weights are random (seed 0), drawn wider than BERT's default (std 0.2, not
0.02) so that outputs spread and a wrong input shows; the MLM decoder bias is set to -3 so that
the SPLADE vectors are sparse as a trained model's are. The check is that tokenizer, graph,
truncation, activation and pooling behave as in sentence-transformers, not what the scores mean.
Each folder is a few hundred kB. The ONNX graphs are checked against the references here with
ONNX Runtime (all optimizations off). Run once, in the reference venv:

    python3 -m venv /tmp/ref && /tmp/ref/bin/pip install -r scripts/requirements-quality-reference.txt
    /tmp/ref/bin/python scripts/make_tiny_rerank_sparse.py
"""

import json
import shutil
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import onnxruntime as ort
import sentence_transformers
import torch
from sentence_transformers import CrossEncoder, SparseEncoder
from sentence_transformers.sparse_encoder.modules import MLMTransformer, SpladePooling
from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import WordPiece
from transformers import BertConfig, BertForMaskedLM, BertForSequenceClassification, BertTokenizerFast

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data"
CROSS = DATA / "tiny-cross-encoder"
SPLADE = DATA / "tiny-splade"
MAX_TOKENS = 128
INIT_STD = 0.2
MLM_BIAS = -3.0
VOCAB_SIZE = 1500
N_ENDINGS = 150
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def corpus() -> list[str]:
    quality = json.loads((ROOT / "tests/data/quality/set.json").read_text())
    calibration = (ROOT / "scripts/calibration.txt").read_text().splitlines()
    return quality["texts"] + quality["corpus"] + [q["text"] for q in quality["queries"]] + calibration


def train_vocabulary(texts: list[str], normalizer, pre_tokenizer) -> dict[str, int]:
    """A WordPiece vocabulary from word counts, deterministically (tokenizers' WordPieceTrainer breaks
    ties in hash-map order, so it gives another vocabulary on each run): the special tokens, every
    character seen, as a word start and (if seen inside a word) as a continuation, the most common
    word endings of 2-4 characters as continuations, then the most common words; ties by text."""
    words = Counter()
    for text in texts:
        words.update(w for w, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text)))
    starts, inner, endings = Counter(), Counter(), Counter()
    for word, count in words.items():
        starts[word[0]] += count
        for ch in word[1:]:
            inner[ch] += count
        for k in range(2, 5):
            if len(word) >= k + 2:
                endings[word[-k:]] += count

    def ranked(counter: Counter) -> list[str]:
        return [w for w, _ in sorted(counter.items(), key=lambda item: (-item[1], item[0]))]

    tokens = list(SPECIAL)
    tokens += sorted(set(starts) | set(inner))
    tokens += ["##" + ch for ch in sorted(inner)]
    tokens += ["##" + e for e in ranked(endings)[:N_ENDINGS]]
    tokens += [w for w in ranked(words) if len(w) > 1][: VOCAB_SIZE - len(tokens)]
    assert len(tokens) == len(set(tokens)) == VOCAB_SIZE, len(tokens)
    return {t: i for i, t in enumerate(tokens)}


def train_tokenizer(texts: list[str]) -> BertTokenizerFast:
    normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, strip_accents=None,
                                            lowercase=True)
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    vocab = train_vocabulary(texts, normalizer, pre_tokenizer)
    tok = Tokenizer(WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100))
    tok.normalizer = normalizer
    tok.pre_tokenizer = pre_tokenizer
    tok.decoder = decoders.WordPiece(prefix="##")
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)]
    )
    return BertTokenizerFast(tokenizer_object=tok, model_max_length=MAX_TOKENS, do_lower_case=True,
                             unk_token="[UNK]", sep_token="[SEP]", pad_token="[PAD]", cls_token="[CLS]",
                             mask_token="[MASK]")


def bert_config(tokenizer: BertTokenizerFast, **extra) -> BertConfig:
    return BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=MAX_TOKENS,
        type_vocab_size=2,
        initializer_range=INIT_STD,
        pad_token_id=tokenizer.pad_token_id,
        **extra,
    )


def pairs() -> list[tuple[str, str]]:
    texts = json.loads((ROOT / "tests/data/quality/set.json").read_text())["texts"]
    long_a, long_b = texts[2], texts[3]  # 217 and 346 MiniLM tokens
    return [
        ("how do I reset my password", "Open the settings page, choose security and click reset password; a link is "
         "sent to your email."),
        ("how do I reset my password", "The cat sat on the mat."),
        ("what is photosynthesis", "Photosynthesis converts light energy into chemical energy stored in glucose."),
        ("capital of germany", "Berlin"),
        ("hello", "world"),
        ("Le chat dort sur le canapé", "Der schnelle braune Fuchs springt über den faulen Hund."),
        ("東京は日本の首都", "Москва — столица России и крупнейший город страны."),
        ("emoji 🙂🙂", "e = mc^2; ∑ x_i / n ≈ μ"),
        # Over the limit: the document alone, both, the query alone.
        ("what did the committee decide about the rail line", long_a),
        (long_a, long_b),
        (long_b, "yes"),
        ("word " * 70, "word " * 70),
    ]


def splade_texts() -> list[str]:
    texts = json.loads((ROOT / "tests/data/quality/set.json").read_text())["texts"]
    return [
        "hello world",
        "x",
        "How do I reset my password if I no longer have access to my email?",
        "The Treaty of Westphalia in 1648 ended the Thirty Years' War in the Holy Roman Empire.",
        "fn main() { println!(\"Hello, world!\"); }",
        "Crème brûlée à São Paulo, naïve café; 東京で寿司を食べました 🍣🎉 ¿Qué tal?",
        "Москва — столица России и крупнейший город страны.",
        "THE QUICK BROWN FOX JUMPS OVER THE LAZY DOG",
        "a a a a a a a a a a a a a a a a a a a a",
        texts[2],  # over the limit
        texts[3],  # further over
        "token " * 200,
    ]


def export(model: torch.nn.Module, path: Path, logits_axes: dict) -> None:
    class Logits(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.inner(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids).logits

    ids = torch.tensor([[2, 10, 11, 12, 3], [2, 13, 3, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    types = torch.tensor([[0, 0, 0, 1, 1], [0, 0, 0, 0, 0]])
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(
        Logits(model.eval()),
        (ids, mask, types),
        str(path),
        input_names=["input_ids", "attention_mask", "token_type_ids"],
        output_names=["logits"],
        dynamic_axes={**{n: {0: "batch", 1: "seq"} for n in ("input_ids", "attention_mask", "token_type_ids")},
                      "logits": logits_axes},
        opset_version=17,
        dynamo=False,
    )


def session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def unpadded(features: dict) -> list[dict]:
    rows = []
    for i in range(features["input_ids"].shape[0]):
        keep = features["attention_mask"][i].bool()
        row = {"ids": [int(x) for x in features["input_ids"][i][keep]]}
        if "token_type_ids" in features:
            row["type_ids"] = [int(x) for x in features["token_type_ids"][i][keep]]
        rows.append(row)
    return rows


def make_cross_encoder(tokenizer: BertTokenizerFast, work: Path) -> None:
    torch.manual_seed(0)
    config = bert_config(tokenizer, num_labels=1)
    BertForSequenceClassification(config).eval().save_pretrained(work)
    tokenizer.save_pretrained(work)
    CrossEncoder(str(work), max_length=MAX_TOKENS, device="cpu").save(str(CROSS))
    (CROSS / "README.md").unlink(missing_ok=True)  # a generated model card

    ce = CrossEncoder(str(CROSS), device="cpu")
    assert ce.max_seq_length == MAX_TOKENS, ce.max_seq_length
    export(ce.model, CROSS / "onnx" / "model.onnx", {0: "batch"})

    items = pairs()
    scores = ce.predict(items, convert_to_numpy=True)
    logits = ce.predict(items, activation_fn=torch.nn.Identity(), convert_to_numpy=True)
    features = ce.preprocess([list(p) for p in items])
    rows = unpadded(features)
    # The graph on the same ids, one pair at a time.
    graph = session(CROSS / "onnx" / "model.onnx")
    graph_diff = 0.0
    for row, logit in zip(rows, logits):
        feed = {"input_ids": np.array([row["ids"]]), "attention_mask": np.ones((1, len(row["ids"])), dtype=np.int64),
                "token_type_ids": np.array([row["type_ids"]])}
        graph_diff = max(graph_diff, abs(float(graph.run(["logits"], feed)[0][0, 0]) - float(logit)))
    # And all pairs as one padded batch.
    batch = graph.run(["logits"], {k: features[k].numpy().astype(np.int64)
                                   for k in ("input_ids", "attention_mask", "token_type_ids")})[0]
    graph_diff = max(graph_diff, float(np.abs(batch[:, 0] - logits).max()))
    activation = type(ce.activation_fn).__name__
    print(f"tiny-cross-encoder: activation {activation}, logits {np.round(logits, 4).tolist()}, "
          f"tokens {[len(r['ids']) for r in rows]}, ONNX vs torch max |logit diff| {graph_diff:.2g}", file=sys.stderr)
    reference = {
        "about": (
            "sentence-transformers CrossEncoder over tests/data/tiny-cross-encoder (random tiny BERT, "
            "scripts/make_tiny_rerank_sparse.py), sentence-transformers "
            f"{sentence_transformers.__version__}, torch {torch.__version__}, CPU. Per pair: ids and type_ids as "
            f"CrossEncoder.preprocess produced them (longest-first truncation to max_length {MAX_TOKENS}, padding "
            "removed), tokens = their count, logit = predict with an identity activation, score = predict with the "
            "default activation (activation). onnx/model.onnx gives the same logits within "
            f"{max(graph_diff, 1e-7):.1g} (ONNX Runtime, optimizations off)."
        ),
        "activation": activation,
        "max_length": MAX_TOKENS,
        "pairs": [
            {"query": q, "document": d, "tokens": len(row["ids"]), **row,
             "logit": float(logit), "score": float(score)}
            for (q, d), row, logit, score in zip(items, rows, logits, scores)
        ],
    }
    (DATA / "tiny-cross-encoder-reference.json").write_text(json.dumps(reference, ensure_ascii=False) + "\n")


def make_splade(tokenizer: BertTokenizerFast, work: Path) -> None:
    torch.manual_seed(0)
    mlm = BertForMaskedLM(bert_config(tokenizer)).eval()
    with torch.no_grad():
        mlm.cls.predictions.bias.fill_(MLM_BIAS)
    mlm.save_pretrained(work)
    tokenizer.save_pretrained(work)
    transformer = MLMTransformer(str(work), max_seq_length=MAX_TOKENS)
    pooling = SpladePooling(pooling_strategy="max", activation_function="relu", embedding_dimension=len(tokenizer))
    SparseEncoder(modules=[transformer, pooling], device="cpu").save(str(SPLADE))
    (SPLADE / "README.md").unlink(missing_ok=True)

    encoder = SparseEncoder(str(SPLADE), device="cpu")
    modules = json.loads((SPLADE / "modules.json").read_text())
    assert any(m["type"].endswith("SpladePooling") for m in modules), modules
    splade_module = encoder[-1]
    assert encoder.max_seq_length == MAX_TOKENS, encoder.max_seq_length
    export(encoder[0].auto_model, SPLADE / "onnx" / "model.onnx", {0: "batch", 1: "seq"})

    texts = splade_texts()
    dense = encoder.encode(texts, convert_to_tensor=True, convert_to_sparse_tensor=False).to_dense().numpy()
    rows = unpadded(encoder.preprocess(texts))
    graph = session(SPLADE / "onnx" / "model.onnx")
    graph_diff = 0.0
    entries = []
    for text, row, weights in zip(texts, rows, dense):
        n = len(row["ids"])
        feed = {"input_ids": np.array([row["ids"]]), "attention_mask": np.ones((1, n), dtype=np.int64),
                "token_type_ids": np.zeros((1, n), dtype=np.int64)}
        logits = graph.run(["logits"], feed)[0][0]
        graph_diff = max(graph_diff, float(np.abs(np.log1p(np.maximum(logits, 0)).max(axis=0) - weights).max()))
        (indices,) = np.nonzero(weights)
        entries.append({"text": text, "tokens": n, "ids": row["ids"], "nnz": int(len(indices)),
                        "indices": [int(i) for i in indices], "values": [float(weights[i]) for i in indices]})
    # And all texts as one padded batch.
    features = encoder.preprocess(texts)
    mask = features["attention_mask"].numpy()
    batch = graph.run(["logits"], {"input_ids": features["input_ids"].numpy(), "attention_mask": mask,
                                   "token_type_ids": np.zeros_like(mask)})[0]
    pooled = (np.log1p(np.maximum(batch, 0)) * mask[:, :, None]).max(axis=1)
    graph_diff = max(graph_diff, float(np.abs(pooled - dense).max()))
    print(f"tiny-splade: modules {[m['type'] for m in modules]}, tokens {[e['tokens'] for e in entries]}, "
          f"nnz {[e['nnz'] for e in entries]} of {dense.shape[1]}, ONNX vs torch max |weight diff| {graph_diff:.2g}",
          file=sys.stderr)
    reference = {
        "about": (
            "sentence-transformers SparseEncoder.encode over tests/data/tiny-splade (random tiny BERT MLM, "
            "scripts/make_tiny_rerank_sparse.py), sentence-transformers "
            f"{sentence_transformers.__version__}, torch {torch.__version__}, CPU, texts in one padded batch. Per "
            f"text: ids as SparseEncoder.preprocess produced them (truncation to {MAX_TOKENS}, padding removed), "
            "tokens = their count, the vector's non-zero entries as ascending indices and values, nnz = their count. "
            "splade_pooling: the SpladePooling settings (weight_j = pooling over tokens of log(1 + activation(logit))). "
            f"onnx/model.onnx gives the same weights within {max(graph_diff, 1e-7):.1g} (ONNX Runtime, optimizations off)."
        ),
        "splade_pooling": {"pooling_strategy": splade_module.pooling_strategy,
                           "activation_function": splade_module.activation_function},
        "max_length": MAX_TOKENS,
        "vocab_size": int(dense.shape[1]),
        "texts": entries,
    }
    (DATA / "tiny-splade-reference.json").write_text(json.dumps(reference, ensure_ascii=False) + "\n")


def main() -> None:
    torch.set_num_threads(2)
    for folder in (CROSS, SPLADE):
        if folder.exists():
            shutil.rmtree(folder)
    tokenizer = train_tokenizer(corpus())
    print(f"vocabulary: {len(tokenizer)} tokens", file=sys.stderr)
    work = DATA / "tiny-rerank-sparse-hf"
    for make in (make_cross_encoder, make_splade):
        if work.exists():
            shutil.rmtree(work)
        make(tokenizer, work)
        shutil.rmtree(work)
    for folder in (CROSS, SPLADE):
        total = 0
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                total += path.stat().st_size
                print(f"{path.relative_to(ROOT)}: {path.stat().st_size} bytes")
        print(f"{folder.relative_to(ROOT)}: {total} bytes in all")


if __name__ == "__main__":
    main()
