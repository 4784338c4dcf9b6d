"""Legacy text completions (POST /v1/completions) through the official OpenAI SDK."""

from __future__ import annotations

import openai
from openai.types import Completion

from conftest import CHAT_ALIAS, CHAT_MODEL, CHAT_TARGET_MODEL

PROMPT = "once upon a time in a gateway"
ACCEPTED_MODEL_NAMES = {CHAT_MODEL, CHAT_ALIAS, CHAT_TARGET_MODEL}


def _assert_usage(usage) -> None:
    assert usage is not None, "usage missing"
    for field in ("prompt_tokens", "completion_tokens", "total_tokens"):
        value = getattr(usage, field)
        assert isinstance(value, int) and not isinstance(value, bool), f"usage.{field}={value!r}"
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_completion_non_stream(client: openai.OpenAI) -> None:
    resp = client.completions.create(model=CHAT_MODEL, prompt=PROMPT)

    assert isinstance(resp, Completion)
    assert resp.object == "text_completion"
    assert isinstance(resp.id, str) and resp.id
    assert isinstance(resp.created, int)
    assert resp.model in ACCEPTED_MODEL_NAMES, resp.model
    assert len(resp.choices) == 1
    choice = resp.choices[0]
    assert choice.index == 0
    assert choice.finish_reason == "stop"
    assert isinstance(choice.text, str) and PROMPT in choice.text, choice.text
    _assert_usage(resp.usage)


def test_completion_stream(client: openai.OpenAI) -> None:
    reference = client.completions.create(model=CHAT_MODEL, prompt=PROMPT)

    chunks = list(
        client.completions.create(
            model=CHAT_MODEL, prompt=PROMPT, stream=True, stream_options={"include_usage": True}
        )
    )
    assert chunks
    assert all(c.object == "text_completion" for c in chunks)
    assert len({c.id for c in chunks}) == 1
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == reference.choices[0].text
    usage_chunks = [c for c in chunks if not c.choices]
    assert len(usage_chunks) == 1 and usage_chunks[0] is chunks[-1]
    _assert_usage(chunks[-1].usage)
    assert chunks[-1].usage.model_dump() == reference.usage.model_dump()
