"""Chat completions through the official OpenAI SDK: plain, streamed, aliases."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import openai
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from conftest import CHAT_ALIAS, CHAT_MODEL, CHAT_TARGET_MODEL

PROMPT = "tollgate says hello to the quick brown fox"
# The response's `model` may be the public name, the alias asked for, or the pool's model id.
ACCEPTED_MODEL_NAMES = {CHAT_MODEL, CHAT_ALIAS, CHAT_TARGET_MODEL}


def _messages(text: str = PROMPT):
    return [{"role": "user", "content": text}]


def _assert_usage(usage) -> None:
    assert usage is not None, "usage missing"
    for field in ("prompt_tokens", "completion_tokens", "total_tokens"):
        value = getattr(usage, field)
        assert isinstance(value, int) and not isinstance(value, bool), f"usage.{field}={value!r}"
        assert value >= 0
    assert usage.completion_tokens > 0
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_chat_non_stream(client: openai.OpenAI) -> None:
    resp = client.chat.completions.create(model=CHAT_MODEL, messages=_messages())

    assert isinstance(resp, ChatCompletion)
    assert resp.object == "chat.completion"
    assert isinstance(resp.id, str) and resp.id
    assert isinstance(resp.created, int) and resp.created > 0
    assert resp.model in ACCEPTED_MODEL_NAMES, resp.model
    assert len(resp.choices) == 1
    choice = resp.choices[0]
    assert choice.index == 0
    assert choice.finish_reason == "stop"
    assert choice.message.role == "assistant"
    content = choice.message.content
    assert isinstance(content, str) and content.strip(), f"empty content: {content!r}"
    assert PROMPT in content, f"mock should echo the prompt, got {content!r}"
    _assert_usage(resp.usage)


def test_chat_echoes_last_user_message(client: openai.OpenAI) -> None:
    resp = client.chat.completions.create(
        model=CHAT_MODEL,
        messages=[
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "first question alpha"},
            {"role": "assistant", "content": "first answer beta"},
            {"role": "user", "content": "second question gamma"},
        ],
    )
    content = resp.choices[0].message.content
    assert "second question gamma" in content, content
    assert "alpha" not in content and "beta" not in content, content


def test_chat_stream_with_usage(client: openai.OpenAI) -> None:
    reference = client.chat.completions.create(model=CHAT_MODEL, messages=_messages())
    expected_text = reference.choices[0].message.content

    stream = client.chat.completions.create(
        model=CHAT_MODEL,
        messages=_messages(),
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks: list[ChatCompletionChunk] = list(stream)  # must end cleanly, no exception

    assert chunks, "stream produced no chunks"
    for chunk in chunks:
        assert isinstance(chunk, ChatCompletionChunk)
        assert chunk.object == "chat.completion.chunk", chunk
        assert chunk.model in ACCEPTED_MODEL_NAMES, chunk.model
    assert len({c.id for c in chunks}) == 1, "all chunks of one stream share an id"

    usage_chunks = [c for c in chunks if not c.choices]
    assert len(usage_chunks) == 1, f"want exactly one chunk with choices: [], got {len(usage_chunks)}"
    assert usage_chunks[0] is chunks[-1], "the usage chunk must be the last one"
    _assert_usage(chunks[-1].usage)
    assert chunks[-1].usage.model_dump() == reference.usage.model_dump()
    for chunk in chunks[:-1]:
        assert chunk.usage is None, f"usage only on the final chunk: {chunk}"

    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == expected_text
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 1, (
        "the mock streams word by word: expected several content deltas"
    )
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop"], finishes
    roles = [c.choices[0].delta.role for c in chunks if c.choices and c.choices[0].delta.role]
    assert roles in ([], ["assistant"]), roles


def test_chat_stream_without_usage(client: openai.OpenAI) -> None:
    chunks = list(client.chat.completions.create(model=CHAT_MODEL, messages=_messages(), stream=True))
    assert chunks
    assert all(c.choices for c in chunks), "no usage chunk unless stream_options.include_usage"
    assert all(c.usage is None for c in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert PROMPT in text


def test_chat_stream_wire_format(client: openai.OpenAI) -> None:
    """The raw SSE: JSON `data:` events, terminated by `data: [DONE]` and nothing after it."""
    with client.chat.completions.with_streaming_response.create(
        model=CHAT_MODEL,
        messages=_messages(),
        stream=True,
        stream_options={"include_usage": True},
    ) as response:
        assert response.status_code == 200
        assert response.headers.get("content-type", "").startswith("text/event-stream")
        assert response.headers.get("x-request-id")
        data_lines = [line[len("data:"):].strip() for line in response.iter_lines() if line.startswith("data:")]

    assert data_lines, "no data: lines"
    assert data_lines[-1] == "[DONE]", f"stream must end with data: [DONE], ended with {data_lines[-1]!r}"
    assert data_lines.count("[DONE]") == 1
    events = [json.loads(line) for line in data_lines[:-1]]
    assert all(e["object"] == "chat.completion.chunk" for e in events)
    assert events[-1]["choices"] == [] and isinstance(events[-1]["usage"], dict)


def test_chat_alias(client: openai.OpenAI) -> None:
    resp = client.chat.completions.create(model=CHAT_ALIAS, messages=_messages("alias check"))
    assert resp.choices[0].message.content and "alias check" in resp.choices[0].message.content
    assert resp.model in ACCEPTED_MODEL_NAMES, resp.model

    chunks = list(client.chat.completions.create(model=CHAT_ALIAS, messages=_messages("alias stream"), stream=True))
    assert "alias stream" in "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def test_chat_concurrent_streams_do_not_mix(client: openai.OpenAI) -> None:
    def run(i: int) -> tuple[str, str]:
        prompt = f"request number {i} of eight"
        stream = client.chat.completions.create(model=CHAT_MODEL, messages=_messages(prompt), stream=True)
        return prompt, "".join(c.choices[0].delta.content or "" for c in stream if c.choices)

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(run, range(8)))
    for prompt, text in results:
        assert prompt in text, (prompt, text)
