"""Embeds with the clients people already have, each at its defaults but for the base URL and
key, and prints what each returned as one JSON line, for tests/api/clients.rs to compare with
/v1/embed's vectors:
  - langchain-openai's OpenAIEmbeddings (POST /v1/embeddings with tiktoken token ids: its
    default; texts over 8,191 tiktoken tokens are split into chunks client-side and the chunk
    vectors averaged), embed_documents and embed_query;
  - cohere's ClientV2.embed (POST /v2/embed);
  - llama-index-embeddings-text-embeddings-inference's TextEmbeddingsInference (POST /embed);
  - huggingface_hub's InferenceClient(base_url=...).feature_extraction (POST /, TEI's route).

tiktoken's cl100k_base file cannot be downloaded here: the caller sets TIKTOKEN_CACHE_DIR to a
folder holding it (tiktoken checks its sha256).

Usage: python tests/embed_clients.py http://127.0.0.1:PORT MODEL < texts.json
"""

import json
import sys
import warnings

import cohere
from huggingface_hub import InferenceClient
from langchain_openai import OpenAIEmbeddings
from llama_index.embeddings.text_embeddings_inference import TextEmbeddingsInference

base_url, model = sys.argv[1], sys.argv[2]
texts = json.load(sys.stdin)
out = {}

# LangChain warns that tiktoken does not know the model and falls back to cl100k_base: what
# every non-OpenAI model name does.
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    langchain = OpenAIEmbeddings(base_url=f"{base_url}/v1", api_key="acme-dev-key", model=model)
    assert langchain.check_embedding_ctx_length and langchain.tiktoken_enabled, "LangChain's defaults changed"
    out["langchain_documents"] = langchain.embed_documents(texts)
    out["langchain_query"] = langchain.embed_query(texts[0])

co = cohere.ClientV2(api_key="acme-dev-key", base_url=base_url)
response = co.embed(model=model, texts=texts, input_type="search_document", embedding_types=["float"])
assert response.meta.billed_units.input_tokens > 0, response.meta
out["cohere"] = response.embeddings.float_

llama = TextEmbeddingsInference(base_url=base_url, auth_token="acme-dev-key", model_name=model)
out["llama_index"] = llama.get_text_embedding_batch(texts)

hub = InferenceClient(base_url=base_url, api_key="acme-dev-key")
out["huggingface_hub"] = hub.feature_extraction(texts).tolist()

print(json.dumps(out))
