"""The response cache as the official OpenAI SDK sees it: a hit gives the same objects as
the miss that filled it, for whole answers and streams, and says so in `x-cache`.

The gateway's chat model forwards to the in-process fake upstream (upstream.py), whose
answers carry the time they were made in `created`: an answer made twice would differ, so
equal objects mean the second came from the cache.
"""

from __future__ import annotations

import openai
import pytest

import upstream
from conftest import Gateway

CONFIG = """\
models:
  gpt-4o-mini:
    targets: [{{pool: fake-openai}}]
pools:
  fake-openai:
    provider: openai
    endpoints:
      - {{url: "{upstream}/v1", api_key: upstream-secret}}
    health_check: {{enabled: false}}
    retry: {{attempts: 1}}
cache:
  backend: memory
  ttl: 10m
"""


@pytest.fixture(scope="module")
def gw(start_gateway, fake_upstream: upstream.FakeUpstream) -> Gateway:
    return start_gateway(CONFIG.format(upstream=fake_upstream.url), name="cache")


@pytest.fixture
def client(gw: Gateway):
    c = openai.OpenAI(base_url=gw.api_base, api_key="sk-unused", max_retries=0, timeout=15.0)
    yield c
    c.close()


def ask(content: str) -> dict:
    return {
        "model": "gpt-4o-mini",
        "temperature": 0,
        "messages": [{"role": "user", "content": content}],
    }


def test_a_hit_gives_the_same_completion_object(client, fake_upstream) -> None:
    before = len(fake_upstream.inference())
    first = client.chat.completions.with_raw_response.create(**ask("cache me, whole"))
    second = client.chat.completions.with_raw_response.create(**ask("cache me, whole"))
    assert first.headers["x-cache"] == "MISS"
    assert second.headers["x-cache"] == "HIT"
    assert len(fake_upstream.inference()) == before + 1
    a, b = first.parse(), second.parse()
    assert a.model_dump() == b.model_dump()
    assert b.choices[0].message.content == "".join(upstream.REPLY_WORDS)
    assert b.usage is not None and b.usage.total_tokens == a.usage.total_tokens


@pytest.mark.parametrize("include_usage", [False, True])
def test_a_hit_replays_the_same_stream(client, fake_upstream, include_usage: bool) -> None:
    body = ask(f"cache me, streamed, usage={include_usage}")
    extra = {"stream_options": {"include_usage": True}} if include_usage else {}
    before = len(fake_upstream.inference())
    runs = []
    for want in ("MISS", "HIT"):
        with client.chat.completions.with_streaming_response.create(
            **body, stream=True, **extra
        ) as resp:
            assert resp.headers["x-cache"] == want
            runs.append([chunk.model_dump() for chunk in resp.parse()])
    assert len(fake_upstream.inference()) == before + 1
    miss, hit = runs
    assert hit == miss
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in hit if c["choices"])
    assert text == "".join(upstream.REPLY_WORDS)
    usage = [c for c in hit if c.get("usage")]
    assert len(usage) == (1 if include_usage else 0)


def test_a_sampled_request_is_not_cached(client, fake_upstream) -> None:
    body = ask("sampled")
    body["temperature"] = 0.8
    before = len(fake_upstream.inference())
    for _ in range(2):
        resp = client.chat.completions.with_raw_response.create(**body)
        assert resp.headers["x-cache"] == "BYPASS"
    assert len(fake_upstream.inference()) == before + 2
