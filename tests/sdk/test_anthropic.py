"""Anthropic through the gateway, with the official SDKs:

- the `openai` SDK against a `provider: anthropic` pool (a fake speaking Anthropic's wire
  format) gets the very objects it gets from an OpenAI pool with the same content;
- the `anthropic` SDK against `POST /v1/messages` routed to an OpenAI-compatible pool gets
  Anthropic's objects: plain, streamed, and tool use.
"""

from __future__ import annotations

import anthropic
import openai
import pytest

import anthropic_upstream
from upstream import COMPLETION_TOKENS, PROMPT_TOKENS, REPLY_WORDS

# Both pools get the same upstream model id, so the answers can be compared whole.
UPSTREAM_MODEL = "fake-model"
TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Current weather",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
ANTHROPIC_TOOLS = [{"name": "get_weather", "description": "Current weather",
                    "input_schema": TOOLS[0]["function"]["parameters"]}]
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def dual() -> anthropic_upstream.DualUpstream:
    up = anthropic_upstream.start()
    try:
        yield up
    finally:
        up.stop()


@pytest.fixture(scope="module")
def gw(start_gateway, dual):
    return start_gateway(
        f"""\
models:
  claude:
    targets: [{{pool: ant, model: {UPSTREAM_MODEL}}}]
  gpt:
    targets: [{{pool: oai, model: {UPSTREAM_MODEL}}}]
pools:
  ant:
    provider: anthropic
    endpoints: [{{url: '{dual.anthropic_url}', api_key: sk-ant-fake}}]
    health_check: {{enabled: false}}
  oai:
    provider: openai
    endpoints: [{{url: '{dual.openai_url}', api_key: sk-oai-fake}}]
    health_check: {{enabled: false}}
""",
        name="anthropic",
    )


@pytest.fixture(scope="module")
def oai(gw) -> openai.OpenAI:
    c = openai.OpenAI(base_url=gw.api_base, api_key="unused", max_retries=0, timeout=15.0)
    yield c
    c.close()


@pytest.fixture(scope="module")
def ant(gw) -> anthropic.Anthropic:
    c = anthropic.Anthropic(base_url=gw.base_url, api_key="unused", max_retries=0, timeout=15.0)
    yield c
    c.close()


def _same(obj) -> dict:
    """model_dump() without what differs by nature: the id and the clock."""
    d = obj.model_dump()
    d.pop("id", None)
    d.pop("created", None)
    return d


# --- the openai SDK, Anthropic pool vs OpenAI pool -------------------------------------


def test_openai_sdk_non_stream_matches_an_openai_upstream(oai, dual):
    via_anthropic = oai.chat.completions.create(model="claude", messages=MESSAGES)
    sent = dual.last("/anthropic")
    assert sent.headers.get("x-api-key") == "sk-ant-fake"
    assert sent.headers.get("anthropic-version") == "2023-06-01"
    assert sent.body["system"] == "Be brief."
    via_openai = oai.chat.completions.create(model="gpt", messages=MESSAGES)
    assert _same(via_anthropic) == _same(via_openai)
    assert via_anthropic.choices[0].message.content == "".join(REPLY_WORDS)
    assert via_anthropic.usage.prompt_tokens == PROMPT_TOKENS
    assert via_anthropic.usage.completion_tokens == COMPLETION_TOKENS


def test_openai_sdk_stream_with_usage_matches_an_openai_upstream(oai):
    def chunks(model: str) -> list[dict]:
        stream = oai.chat.completions.create(
            model=model, messages=MESSAGES, stream=True, stream_options={"include_usage": True})
        return [_same(c) for c in stream]

    via_anthropic = chunks("claude")
    assert via_anthropic == chunks("gpt")
    assert "".join(c["choices"][0]["delta"]["content"] or "" for c in via_anthropic if c["choices"]) == "".join(REPLY_WORDS)
    usage = via_anthropic[-1]["usage"]
    assert (usage["prompt_tokens"], usage["completion_tokens"]) == (PROMPT_TOKENS, COMPLETION_TOKENS)


def test_openai_sdk_tool_call_matches_an_openai_upstream(oai, dual):
    via_anthropic = oai.chat.completions.create(
        model="claude", messages=MESSAGES, tools=TOOLS, tool_choice="required")
    assert dual.last("/anthropic").body["tool_choice"] == {"type": "any"}
    via_openai = oai.chat.completions.create(
        model="gpt", messages=MESSAGES, tools=TOOLS, tool_choice="required")
    assert _same(via_anthropic) == _same(via_openai)
    call = via_anthropic.choices[0].message.tool_calls[0]
    assert call.function.name == "get_weather"
    assert call.function.arguments == anthropic_upstream.TOOL_ARGS_TEXT
    assert via_anthropic.choices[0].finish_reason == "tool_calls"

    def chunks(model: str) -> list[dict]:
        stream = oai.chat.completions.create(
            model=model, messages=MESSAGES, tools=TOOLS, stream=True,
            stream_options={"include_usage": True})
        return [_same(c) for c in stream]

    assert chunks("claude") == chunks("gpt")


def test_openai_sdk_gets_a_400_for_what_anthropic_lacks(oai):
    with pytest.raises(openai.BadRequestError) as e:
        oai.chat.completions.create(model="claude", messages=MESSAGES, n=2)
    assert e.value.body["param"] == "n"


# --- the anthropic SDK on /v1/messages, OpenAI pool ------------------------------------


def test_anthropic_sdk_non_stream(ant, dual):
    msg = ant.messages.create(model="gpt", max_tokens=64, system="Be brief.",
                              messages=[{"role": "user", "content": "hi"}])
    assert isinstance(msg, anthropic.types.Message)
    assert msg.role == "assistant"
    assert [b.type for b in msg.content] == ["text"]
    assert msg.content[0].text == "".join(REPLY_WORDS)
    assert msg.stop_reason == "end_turn"
    assert (msg.usage.input_tokens, msg.usage.output_tokens) == (PROMPT_TOKENS, COMPLETION_TOKENS)
    sent = dual.last("/openai")
    assert sent.body["messages"] == MESSAGES
    assert sent.body["max_tokens"] == 64


def test_anthropic_sdk_stream(ant):
    with ant.messages.stream(model="gpt", max_tokens=64,
                             messages=[{"role": "user", "content": "hi"}]) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "".join(REPLY_WORDS)
    assert final.content[0].text == text
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens == COMPLETION_TOKENS
    assert final.usage.input_tokens == PROMPT_TOKENS


def test_anthropic_sdk_tool_use(ant, dual):
    msg = ant.messages.create(model="gpt", max_tokens=64, tools=ANTHROPIC_TOOLS,
                              tool_choice={"type": "any"},
                              messages=[{"role": "user", "content": "weather in Paris?"}])
    assert msg.stop_reason == "tool_use"
    block = msg.content[0]
    assert block.type == "tool_use"
    assert (block.name, block.input, block.id) == ("get_weather", anthropic_upstream.TOOL_ARGS,
                                                    anthropic_upstream.TOOL_CALL_ID)
    assert dual.last("/openai").body["tool_choice"] == "required"

    # The tool's result goes back as a tool message; streamed tool use accumulates the
    # argument pieces into the same input.
    with ant.messages.stream(
        model="gpt", max_tokens=64, tools=ANTHROPIC_TOOLS,
        messages=[
            {"role": "user", "content": "weather in Paris?"},
            {"role": "assistant", "content": [{"type": "tool_use", "id": block.id, "name": block.name, "input": block.input}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": block.id, "content": "18C"}]},
        ],
    ) as stream:
        final = stream.get_final_message()
    assert final.content[0].type == "tool_use"
    assert final.content[0].input == anthropic_upstream.TOOL_ARGS
    sent = dual.last("/openai").body["messages"]
    assert sent[1]["tool_calls"][0]["function"]["arguments"] == anthropic_upstream.TOOL_ARGS_TEXT
    assert sent[2] == {"role": "tool", "tool_call_id": block.id, "content": "18C"}


def test_anthropic_sdk_errors(ant):
    with pytest.raises(anthropic.NotFoundError) as e:
        ant.messages.create(model="no-such-model", max_tokens=8, messages=[{"role": "user", "content": "hi"}])
    assert e.value.body["error"]["type"] == "not_found_error"
