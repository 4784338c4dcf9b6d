"""GET /v1/models and /v1/models/{id} through the official OpenAI SDK."""

from __future__ import annotations

import openai
from openai.types import Model

from conftest import CHAT_MODEL, EMBEDDING_MODEL


def test_models_list(client: openai.OpenAI) -> None:
    models = list(client.models.list())
    ids = [m.id for m in models]
    assert CHAT_MODEL in ids and EMBEDDING_MODEL in ids, ids
    assert len(ids) == len(set(ids)), f"duplicate ids: {ids}"
    for m in models:
        assert isinstance(m, Model)
        assert m.object == "model"
        assert isinstance(m.created, int)
        assert isinstance(m.owned_by, str) and m.owned_by


def test_models_list_wire_format(client: openai.OpenAI) -> None:
    body = client.models.with_raw_response.list().http_response.json()
    assert body["object"] == "list"
    assert isinstance(body["data"], list)
    for m in body["data"]:
        assert {"id", "object", "created", "owned_by"} <= set(m), m


def test_models_retrieve(client: openai.OpenAI) -> None:
    m = client.models.retrieve(CHAT_MODEL)
    assert isinstance(m, Model)
    assert m.id == CHAT_MODEL
    assert m.object == "model"
    assert isinstance(m.created, int)
    assert isinstance(m.owned_by, str) and m.owned_by
