"""Drives embedserve with the official `openai` SDK; exits non-zero on any failed check.

Usage: python tests/openai_client.py http://127.0.0.1:PORT/v1
"""

import math
import struct
import sys

import openai

base_url = sys.argv[1]
client = openai.OpenAI(base_url=base_url, api_key="acme-dev-key", max_retries=0)


def f32(x):
    return struct.unpack("<f", struct.pack("<f", x))[0]


def norm(v):
    return math.sqrt(sum(x * x for x in v))


def cosine(a, b):
    return sum(x * y for x, y in zip(a, b)) / (norm(a) * norm(b))


# The SDK asks for base64 when no encoding is given, then decodes it to floats.
default = client.embeddings.create(model="minilm-l6-int8", input=["The cat sat.", "A dog ran."])
assert default.object == "list" and len(default.data) == 2, default
assert [d.index for d in default.data] == [0, 1]
assert all(len(d.embedding) == 384 for d in default.data)
assert abs(norm(default.data[0].embedding) - 1) < 1e-5
assert default.usage.prompt_tokens > 0 and default.usage.total_tokens == default.usage.prompt_tokens

floats = client.embeddings.create(model="minilm-l6-int8", input=["The cat sat.", "A dog ran."], encoding_format="float")
for a, b in zip(default.data, floats.data):
    assert [f32(x) for x in a.embedding] == [f32(y) for y in b.embedding], "base64 and float differ"

short = client.embeddings.create(model="paraphrase-l3", input="The cat sat.", dimensions=128, user="tester")
assert short.model == "paraphrase-l3"
assert len(short.data[0].embedding) == 128
assert abs(norm(short.data[0].embedding) - 1) < 1e-5

same = client.embeddings.create(model="minilm-l6-int8", input="The cat sat.", encoding_format="float")
assert cosine(same.data[0].embedding, floats.data[0].embedding) > 0.99999

try:
    client.embeddings.create(model="no-such-model", input="x")
    raise SystemExit("expected a 404")
except openai.NotFoundError as e:
    assert e.status_code == 404 and e.body["code"] == "model_not_found", e.body

try:
    client.embeddings.create(model="minilm-l6-int8", input="x", dimensions=0)
    raise SystemExit("expected a 422")
except openai.UnprocessableEntityError as e:
    assert e.body["param"] == "dimensions", e.body

print("openai", openai.__version__, "- all checks passed")
