"""Errors and request ids as the official OpenAI SDK sees them.

Every error is an OpenAI error body, {"error": {"message", "type", "param", "code"}},
which the SDK turns into typed exceptions (NotFoundError, BadRequestError, ...).
"""

from __future__ import annotations

import openai
import pytest
from openai.types import CreateEmbeddingResponse
from openai.types.chat import ChatCompletion

from conftest import CHAT_MODEL, EMBEDDING_MODEL

UNKNOWN_MODEL = "no-such-model-xyz"
USER = [{"role": "user", "content": "hi"}]


def _assert_openai_error_body(exc: openai.APIStatusError) -> dict:
    body = exc.response.json()
    assert set(body) == {"error"}, body
    err = body["error"]
    assert {"message", "type", "param", "code"} <= set(err), err
    assert isinstance(err["message"], str) and err["message"], err
    assert isinstance(err["type"], str) and err["type"], err
    assert exc.response.headers.get("content-type", "").startswith("application/json")
    return err


def _assert_model_not_found(exc: openai.NotFoundError) -> None:
    assert exc.status_code == 404
    assert exc.code == "model_not_found", exc.body
    _assert_openai_error_body(exc)


def test_unknown_model_chat(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model=UNKNOWN_MODEL, messages=USER)
    _assert_model_not_found(info.value)
    assert UNKNOWN_MODEL in info.value.message


def test_unknown_model_chat_stream(client: openai.OpenAI) -> None:
    # A stream that cannot start is an ordinary HTTP error, not an SSE stream.
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model=UNKNOWN_MODEL, messages=USER, stream=True)
    _assert_model_not_found(info.value)


def test_unknown_model_completions(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client.completions.create(model=UNKNOWN_MODEL, prompt="hi")
    _assert_model_not_found(info.value)


def test_unknown_model_embeddings(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client.embeddings.create(model=UNKNOWN_MODEL, input="hi")
    _assert_model_not_found(info.value)


def test_unknown_model_retrieve(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client.models.retrieve(UNKNOWN_MODEL)
    _assert_model_not_found(info.value)


@pytest.mark.parametrize(
    "body",
    [
        pytest.param({"model": CHAT_MODEL}, id="missing-messages"),
        pytest.param({"model": CHAT_MODEL, "messages": "hello"}, id="messages-not-a-list"),
        pytest.param({"model": CHAT_MODEL, "messages": [{"content": "no role"}]}, id="message-without-role"),
        pytest.param({"messages": USER}, id="missing-model"),
    ],
)
def test_bad_chat_request(client: openai.OpenAI, body: dict) -> None:
    # The SDK's typed create() will not send these, so go through its generic post().
    with pytest.raises(openai.BadRequestError) as info:
        client.post("/chat/completions", body=body, cast_to=ChatCompletion)
    assert info.value.status_code == 400
    _assert_openai_error_body(info.value)
    assert info.value.request_id


@pytest.mark.parametrize(
    "body",
    [
        pytest.param({"model": EMBEDDING_MODEL}, id="missing-input"),
        pytest.param({"model": EMBEDDING_MODEL, "input": {"not": "text"}}, id="input-wrong-type"),
        pytest.param({"model": EMBEDDING_MODEL, "input": [{"not": "text"}]}, id="input-list-of-objects"),
        pytest.param({"model": EMBEDDING_MODEL, "input": "x", "encoding_format": "hex"}, id="bad-encoding-format"),
    ],
)
def test_bad_embeddings_request(client: openai.OpenAI, body: dict) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.post("/embeddings", body=body, cast_to=CreateEmbeddingResponse)
    _assert_openai_error_body(info.value)


def test_request_id_on_success(client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(model=CHAT_MODEL, messages=USER)
    assert raw.status_code == 200
    first = raw.headers.get("x-request-id")
    assert first, dict(raw.headers)
    assert raw.request_id == first
    assert isinstance(raw.parse(), ChatCompletion)

    second = client.models.with_raw_response.list().headers.get("x-request-id")
    assert second and second != first, "each request gets its own id"


def test_request_id_on_errors(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as not_found:
        client.chat.completions.with_raw_response.create(model=UNKNOWN_MODEL, messages=USER)
    assert not_found.value.request_id, dict(not_found.value.response.headers)

    with pytest.raises(openai.BadRequestError) as bad:
        client.post("/chat/completions", body={"model": CHAT_MODEL}, cast_to=ChatCompletion)
    assert bad.value.request_id, dict(bad.value.response.headers)
    assert bad.value.request_id != not_found.value.request_id
