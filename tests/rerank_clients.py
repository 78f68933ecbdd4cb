"""Reranks with the clients people already have, unchanged but for the base URL and key, and
prints what each answered as JSON, for tests/api/rerank.rs to compare with /v1/rerank's:
  - cohere's ClientV2.rerank (POST /v2/rerank);
  - LlamaIndex's Text Embeddings Inference reranker (POST /rerank with {query, texts}).

Usage: python tests/rerank_clients.py http://127.0.0.1:PORT MODEL QUERY DOCUMENT...
"""

import json
import sys

import cohere
from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode
from llama_index.postprocessor.tei_rerank import TextEmbeddingInference

base_url, model, query, documents = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]

co = cohere.ClientV2(api_key="acme-dev-key", base_url=base_url)
response = co.rerank(model=model, query=query, documents=documents, top_n=len(documents))
cohere_results = [{"index": r.index, "relevance_score": r.relevance_score} for r in response.results]
assert response.meta.billed_units.search_units == 1, response.meta

reranker = TextEmbeddingInference(base_url=base_url, auth_token="acme-dev-key", top_n=len(documents))
nodes = [NodeWithScore(node=TextNode(text=d, id_=str(i)), score=0.0) for i, d in enumerate(documents)]
ranked = reranker.postprocess_nodes(nodes, QueryBundle(query_str=query))
llama_results = [{"index": int(n.node.id_), "score": n.score} for n in ranked]

print(json.dumps({"cohere": cohere_results, "llama_index": llama_results}))
