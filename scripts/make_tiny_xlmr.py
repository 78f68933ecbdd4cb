#!/usr/bin/env python3
"""Write tests/data/tiny-xlmr: a small model of another family than MiniLM, as a
sentence-transformers export folder with an ONNX graph, and sentence-transformers' own vectors
for it, so make test can check that embedserve serves such a folder exactly.

What differs from the MiniLM models on purpose: an XLM-RoBERTa encoder (positions offset past the
padding id, no token_type_ids input), a SentencePiece-style Unigram tokenizer (NFKC, Metaspace,
<s> ... </s>) trained here on the committed quality corpus, CLS pooling, a Normalize module, and
query/document prompts. The weights are random (seed 0): the check is that tokenizer, graph,
pooling, normalisation and prompts behave as in sentence-transformers, not what the vectors mean.
Small enough to commit (about 1 MB). Run once, in the reference venv:

    python3 -m venv /tmp/ref && /tmp/ref/bin/pip install -r scripts/requirements-quality-reference.txt
    /tmp/ref/bin/python scripts/make_tiny_xlmr.py
"""

import json
import shutil
from pathlib import Path

import torch
from sentence_transformers import SentenceTransformer, models
from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors, trainers
from tokenizers.models import Unigram
from transformers import XLMRobertaConfig, XLMRobertaModel, XLMRobertaTokenizerFast

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "data" / "tiny-xlmr"
MAX_TOKENS = 128
PROMPTS = {"query": "query: ", "document": "passage: "}


def corpus() -> list[str]:
    quality = json.loads((ROOT / "tests/data/quality/set.json").read_text())
    texts = list(quality["texts"].values()) if isinstance(quality["texts"], dict) else list(quality["texts"])
    calibration = (ROOT / "scripts/calibration.txt").read_text().splitlines()
    return texts + quality["corpus"] + quality["queries"] + calibration + list(PROMPTS.values())


def train_tokenizer(texts: list[str]) -> XLMRobertaTokenizerFast:
    tok = Tokenizer(Unigram())
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    special = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    trainer = trainers.UnigramTrainer(vocab_size=2000, special_tokens=special, unk_token="<unk>")
    tok.train_from_iterator(texts, trainer)
    bos, eos = tok.token_to_id("<s>"), tok.token_to_id("</s>")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=[("<s>", bos), ("</s>", eos)]
    )
    return XLMRobertaTokenizerFast(tokenizer_object=tok, model_max_length=MAX_TOKENS)


def texts_to_check() -> list[str]:
    quality = json.loads((ROOT / "tests/data/quality/set.json").read_text())
    texts = list(quality["texts"].values()) if isinstance(quality["texts"], dict) else list(quality["texts"])
    return texts[:24] + ["word " * 300, "Ünïcödé façade — naïve café 東京 😀", "x"]


def main() -> None:
    torch.manual_seed(0)
    if OUT.exists():
        shutil.rmtree(OUT)
    work = OUT.parent / "tiny-xlmr-hf"
    tokenizer = train_tokenizer(corpus())
    config = XLMRobertaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        max_position_embeddings=MAX_TOKENS + 2,
        type_vocab_size=1,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    encoder = XLMRobertaModel(config, add_pooling_layer=False).eval()
    encoder.save_pretrained(work)
    tokenizer.save_pretrained(work)

    transformer = models.Transformer(str(work), max_seq_length=MAX_TOKENS)
    pooling = models.Pooling(transformer.get_word_embedding_dimension(), pooling_mode="cls")
    st = SentenceTransformer(modules=[transformer, pooling, models.Normalize()], prompts=PROMPTS, device="cpu")
    st.save(str(OUT))
    shutil.rmtree(work)
    (OUT / "README.md").unlink(missing_ok=True)  # a generated model card

    # The graph: token states from ids and mask (XLM-R has no token types).
    (OUT / "onnx").mkdir()
    hf = st[0].auto_model.eval()
    ids = torch.tensor([[0, 10, 11, 12, 2], [0, 13, 2, 1, 1]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])

    class States(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask):
            return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    torch.onnx.export(
        States(hf),
        (ids, mask),
        str(OUT / "onnx" / "model.onnx"),
        input_names=["input_ids", "attention_mask"],
        output_names=["last_hidden_state"],
        dynamic_axes={"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"},
                      "last_hidden_state": {0: "batch", 1: "seq"}},
        opset_version=17,
        dynamo=False,
    )

    # sentence-transformers' own vectors and ids, from the saved folder, with and without prompts.
    st = SentenceTransformer(str(OUT), device="cpu")
    texts = texts_to_check()
    reference = {"texts": texts, "vectors": {}, "ids": {}}
    for prompt in [None, "query", "document"]:
        key = prompt or "none"
        vectors = st.encode(texts, prompt_name=prompt, normalize_embeddings=False, convert_to_numpy=True)
        reference["vectors"][key] = [[round(float(x), 7) for x in v] for v in vectors]
        prefix = PROMPTS.get(prompt, "") if prompt else ""
        features = st.tokenize([prefix + t for t in texts])
        reference["ids"][key] = [
            [int(i) for i, m in zip(row, mask) if m] for row, mask in zip(features["input_ids"], features["attention_mask"])
        ]
    (OUT.parent / "tiny-xlmr-reference.json").write_text(json.dumps(reference) + "\n")
    for path in sorted(OUT.rglob("*")):
        if path.is_file():
            print(f"{path.relative_to(ROOT)}: {path.stat().st_size} bytes")


if __name__ == "__main__":
    main()
