"""Embeddings through the official OpenAI SDK, in both wire encodings.

The SDK asks for `encoding_format: "base64"` unless told otherwise and decodes the
little-endian float32 bytes itself; the gateway must honour that.
"""

from __future__ import annotations

import base64
import json
import struct

import openai
from openai.types import CreateEmbeddingResponse

from conftest import EMBEDDING_DIMS, EMBEDDING_MODEL

INPUTS = ["the first sentence", "a second, different sentence"]


def _f32(values) -> bytes:
    """Exact float32 bytes: JSON floats and base64 float32 compare without tolerance."""
    return struct.pack(f"<{len(values)}f", *values)


def _assert_response(resp: CreateEmbeddingResponse, n: int) -> None:
    assert isinstance(resp, CreateEmbeddingResponse)
    assert resp.object == "list"
    assert isinstance(resp.model, str) and resp.model
    assert len(resp.data) == n
    for i, item in enumerate(resp.data):
        assert item.object == "embedding"
        assert item.index == i
        assert isinstance(item.embedding, list) and len(item.embedding) == EMBEDDING_DIMS
        assert all(isinstance(x, float) for x in item.embedding), item.embedding
    assert isinstance(resp.usage.prompt_tokens, int)
    assert isinstance(resp.usage.total_tokens, int)


def test_embeddings_default_sdk_call_uses_base64(client: openai.OpenAI) -> None:
    raw = client.embeddings.with_raw_response.create(model=EMBEDDING_MODEL, input=INPUTS)
    sent = json.loads(raw.http_request.content)
    assert sent.get("encoding_format") == "base64", sent  # what this SDK version does

    body = json.loads(raw.text)
    for item in body["data"]:
        assert isinstance(item["embedding"], str), "encoding_format=base64 must return a base64 string"
        assert len(base64.b64decode(item["embedding"])) == 4 * EMBEDDING_DIMS

    resp = raw.parse()  # the SDK decodes base64 into floats
    _assert_response(resp, len(INPUTS))


def test_embeddings_float_matches_base64(client: openai.OpenAI) -> None:
    as_b64 = client.embeddings.create(model=EMBEDDING_MODEL, input=INPUTS)
    as_float = client.embeddings.create(model=EMBEDDING_MODEL, input=INPUTS, encoding_format="float")
    _assert_response(as_b64, len(INPUTS))
    _assert_response(as_float, len(INPUTS))
    for a, b in zip(as_b64.data, as_float.data):
        assert _f32(a.embedding) == _f32(b.embedding), (a.embedding, b.embedding)


def test_embeddings_single_string_and_determinism(client: openai.OpenAI) -> None:
    one = client.embeddings.create(model=EMBEDDING_MODEL, input=INPUTS[0], encoding_format="float")
    again = client.embeddings.create(model=EMBEDDING_MODEL, input=INPUTS[0], encoding_format="float")
    batch = client.embeddings.create(model=EMBEDDING_MODEL, input=INPUTS, encoding_format="float")
    _assert_response(one, 1)
    assert one.data[0].embedding == again.data[0].embedding
    assert _f32(one.data[0].embedding) == _f32(batch.data[0].embedding), (
        f"input={INPUTS[0]!r} and input=[{INPUTS[0]!r}, ...] must embed the text the same way:\n"
        f"  string: {one.data[0].embedding}\n  list:   {batch.data[0].embedding}"
    )
