"""Identity, rate limits and budgets as the official OpenAI SDK sees them.

One gateway with an `auth:` section (keys, one by SHA-256, a disabled and an expired key,
an HS256 JWT issuer) and `quotas:` (per-key rpm/tpm, a team rpm, token and USD budgets).
Its chat models forward to the in-process fake upstream (upstream.py), whose answers
always report PROMPT_TOKENS + COMPLETION_TOKENS of usage, so budgets are charged a known
amount; `mock-echo` is answered by the built-in mock provider.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import json
import re
import time

import httpx2
import openai
import pytest

import upstream
from conftest import Gateway

USER = [{"role": "user", "content": "hi"}]

KEYS = {
    "good": "sk-test-good-0123456789",
    "hashed": "sk-test-hashed-0123456789",
    "off": "sk-test-disabled-0123456789",
    "old": "sk-test-expired-0123456789",
    "slow": "sk-test-slow-0123456789",
    "broke": "sk-test-broke-0123456789",
    "spender": "sk-test-spender-0123456789",
    "duo-a": "sk-test-duo-a-0123456789",
    "duo-b": "sk-test-duo-b-0123456789",
    "mocked": "sk-test-mocked-0123456789",
}
JWT_SECRET = "tollgate-sdk-tests-hs256-secret-0123456789"
TOKENS_BUDGET = 40  # broke: lifetime tokens; each answer costs 15
USD_BUDGET = 0.04  # spender: per day; each answer costs $0.015 at the prices below
PER_ANSWER_USD = (upstream.PROMPT_TOKENS + upstream.COMPLETION_TOKENS) * 1000 / 1e6

CONFIG = """\
models:
  gpt-4o-mini:
    aliases: [mini]
    targets: [{{pool: fake-openai}}]
  gpt-4o:
    targets: [{{pool: fake-openai}}]
  mock-echo:
    targets: [{{pool: local-mock, model: mock-small}}]
pools:
  fake-openai:
    provider: openai
    endpoints:
      - {{url: "{upstream}/v1", api_key: upstream-secret}}
    retry: {{attempts: 1}}
  local-mock:
    provider: mock
    mock: {{chunk_delay: 0ms}}
auth:
  keys:
    - {{id: good, secret: {good}, team: apps, tier: gold, models: ["gpt-4o-mini", "mock-*"]}}
    - {{id: hashed, sha256: {hashed_sha256}}}
    - {{id: off, secret: {off}, enabled: false}}
    - {{id: old, secret: {old}, expires: "2020-01-01T00:00:00Z"}}
    - {{id: slow, secret: {slow}}}
    - {{id: broke, secret: {broke}}}
    - {{id: spender, secret: {spender}}}
    - {{id: duo-a, secret: {duo-a}, team: duo}}
    - {{id: duo-b, secret: {duo-b}, team: duo}}
    - {{id: mocked, secret: {mocked}}}
  jwt:
    algorithms: [HS256]
    hs256_secret: {jwt_secret}
    audience: tollgate
    claims: {{team: org, models: allowed_models}}
quotas:
  keys:
    good: {{rpm: 1000, tpm: 1000000}}
    slow: {{rpm: 2}}
    broke: {{budgets: [{{tokens: {tokens_budget}, window: lifetime}}]}}
    spender: {{budgets: [{{usd: {usd_budget}, window: day}}]}}
    mocked: {{rpm: 1000, budgets: [{{tokens: {tokens_budget}, window: lifetime}}]}}
  teams:
    duo: {{rpm: 3}}
  prices:
    gpt-4o-mini: {{input: 1000, output: 1000}}
  default_max_tokens: 5
"""

# Go-style durations, as OpenAI writes them: 12ms, 1.5s, 59s, 1m0s, 6m0s.
GO_DURATION = re.compile(r"^(\d+h)?(\d+m)?\d+(\.\d+)?(ms|s)$")


@pytest.fixture(scope="module")
def gw(start_gateway, fake_upstream: upstream.FakeUpstream) -> Gateway:
    return start_gateway(
        CONFIG.format(
            upstream=fake_upstream.url,
            hashed_sha256=hashlib.sha256(KEYS["hashed"].encode()).hexdigest(),
            jwt_secret=JWT_SECRET,
            tokens_budget=TOKENS_BUDGET,
            usd_budget=USD_BUDGET,
            **KEYS,
        ),
        name="auth",
    )


def sdk(gw: Gateway, api_key: str, **kw) -> openai.OpenAI:
    kw.setdefault("max_retries", 0)
    return openai.OpenAI(base_url=gw.api_base, api_key=api_key, timeout=15.0, **kw)


@pytest.fixture
def clients():
    """Closes the clients a test opens."""
    opened: list[openai.OpenAI] = []

    def make(gw: Gateway, api_key: str, **kw) -> openai.OpenAI:
        c = sdk(gw, api_key, **kw)
        opened.append(c)
        return c

    yield make
    for c in opened:
        c.close()


def wait_for_log(gw: Gateway, count: int, **match: object) -> list[dict[str, str]]:
    """The access log lines matching `match`, once there are at least `count` (the line is
    written just after the answer, so it may lag the client by a moment)."""
    deadline = time.monotonic() + 5
    while True:
        lines = gw.access_log(**match)
        if len(lines) >= count or time.monotonic() > deadline:
            return lines
        time.sleep(0.01)


def same_minute_ahead(seconds: float) -> None:
    """Waits for the next UTC minute if fewer than `seconds` are left in this one, so that a
    few calls land in one fixed rpm window."""
    into = time.time() % 60
    if into > 60 - seconds:
        time.sleep(60 - into + 0.05)


def hs256_jwt(claims: dict, secret: str = JWT_SECRET) -> str:
    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    header = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    payload = b64(json.dumps(claims).encode())
    signing_input = f"{header}.{payload}".encode()
    sig = hmac.new(secret.encode(), signing_input, hashlib.sha256).digest()
    return f"{header}.{payload}.{b64(sig)}"


def assert_error_body(exc: openai.APIStatusError, code: str) -> dict:
    assert exc.code == code, exc.body
    err = exc.response.json()["error"]
    assert {"message", "type", "param", "code"} <= set(err), err
    assert err["code"] == code
    assert exc.response.headers.get("x-request-id")
    return err


# --- identify -------------------------------------------------------------------------


def test_unknown_key(gw: Gateway, clients) -> None:
    with pytest.raises(openai.AuthenticationError) as info:
        clients(gw, "sk-test-not-a-key-0123456789").chat.completions.create(model="gpt-4o-mini", messages=USER)
    assert info.value.status_code == 401
    err = assert_error_body(info.value, "invalid_api_key")
    # At most 4 + 4 characters of a presented key are shown.
    assert "not-a-key" not in err["message"]


# The SDK always sends a key; a request may drop its Authorization header explicitly.
NO_BEARER = {"Authorization": openai.Omit()}


def test_missing_key(gw: Gateway, clients) -> None:
    client = clients(gw, "unused")
    with pytest.raises(openai.AuthenticationError) as info:
        client.chat.completions.create(model="gpt-4o-mini", messages=USER, extra_headers=NO_BEARER)
    assert info.value.status_code == 401
    assert_error_body(info.value, "missing_api_key")
    with pytest.raises(openai.AuthenticationError) as info:
        client.models.list(extra_headers=NO_BEARER)
    assert_error_body(info.value, "missing_api_key")


@pytest.mark.parametrize(("key_id", "why"), [("off", "disabled"), ("old", "expired")])
def test_disabled_and_expired_keys(gw: Gateway, clients, key_id: str, why: str) -> None:
    with pytest.raises(openai.AuthenticationError) as info:
        clients(gw, KEYS[key_id]).chat.completions.create(model="gpt-4o-mini", messages=USER)
    err = assert_error_body(info.value, "invalid_api_key")
    assert why in err["message"]
    assert KEYS[key_id] not in err["message"]


@pytest.mark.parametrize("header", ["api-key", "x-api-key"])
def test_key_in_other_headers(gw: Gateway, clients, header: str) -> None:
    client = clients(gw, "unused", default_headers={header: KEYS["good"]})
    reply = client.chat.completions.create(model="gpt-4o-mini", messages=USER, extra_headers=NO_BEARER)
    assert reply.choices[0].message.content == "".join(upstream.REPLY_WORDS)


def test_key_stored_as_sha256(gw: Gateway, clients) -> None:
    reply = clients(gw, KEYS["hashed"]).chat.completions.create(model="gpt-4o", messages=USER)
    assert reply.usage is not None and reply.usage.total_tokens == 15
    assert wait_for_log(gw, 1, key_id="hashed", status=200)


# --- admit: models --------------------------------------------------------------------


def test_model_not_allowed(gw: Gateway, clients, fake_upstream: upstream.FakeUpstream) -> None:
    before = len(fake_upstream.inference())
    client = clients(gw, KEYS["good"])
    with pytest.raises(openai.PermissionDeniedError) as info:
        client.chat.completions.create(model="gpt-4o", messages=USER)
    assert info.value.status_code == 403
    assert_error_body(info.value, "model_not_allowed")
    with pytest.raises(openai.PermissionDeniedError) as info:
        client.chat.completions.create(model="gpt-4o", messages=USER, stream=True)
    assert_error_body(info.value, "model_not_allowed")
    assert len(fake_upstream.inference()) == before


def test_alias_of_allowed_model(gw: Gateway, clients) -> None:
    # `mini` resolves to gpt-4o-mini before the model check.
    reply = clients(gw, KEYS["good"]).chat.completions.create(model="mini", messages=USER)
    assert reply.choices[0].message.content


def test_models_list_shows_allowed_only(gw: Gateway, clients) -> None:
    ids = sorted(m.id for m in clients(gw, KEYS["good"]).models.list())
    assert ids == ["gpt-4o-mini", "mock-echo"]
    # A key without `models:` sees every model.
    ids = sorted(m.id for m in clients(gw, KEYS["hashed"]).models.list())
    assert ids == ["gpt-4o", "gpt-4o-mini", "mock-echo"]


def test_retrieve_hidden_model(gw: Gateway, clients) -> None:
    with pytest.raises((openai.NotFoundError, openai.PermissionDeniedError)):
        clients(gw, KEYS["good"]).models.retrieve("gpt-4o")


# --- a valid key ------------------------------------------------------------------------


def test_chat_with_valid_key(gw: Gateway, clients, fake_upstream: upstream.FakeUpstream) -> None:
    raw = clients(gw, KEYS["good"]).chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=USER)
    reply = raw.parse()
    assert reply.choices[0].message.content == "".join(upstream.REPLY_WORDS)
    assert reply.usage is not None and reply.usage.prompt_tokens == upstream.PROMPT_TOKENS
    # The upstream gets the pool's key, never the caller's.
    last = fake_upstream.inference()[-1]
    auth = {k.lower(): v for k, v in last.headers.items()}.get("authorization")
    assert auth == "Bearer upstream-secret"
    # The access log names the key and its team, and the usage charged.
    (line,) = wait_for_log(gw, 1, request_id=raw.headers["x-request-id"])
    assert (line["key_id"], line["team"], line["status"]) == ("good", "apps", "200")
    assert line["prompt_tokens"] == str(upstream.PROMPT_TOKENS)
    assert line["completion_tokens"] == str(upstream.COMPLETION_TOKENS)


def test_stream_with_valid_key(gw: Gateway, clients) -> None:
    client = clients(gw, KEYS["good"])
    with client.chat.completions.with_streaming_response.create(
        model="gpt-4o-mini", messages=USER, stream=True
    ) as response:
        assert response.headers["x-ratelimit-limit-requests"] == "1000"
        chunks = list(response.parse())
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "".join(upstream.REPLY_WORDS)
    # The gateway asks upstream for usage (to charge it) but did not pass on the usage
    # chunk the client did not ask for.
    assert all(c.choices for c in chunks), [c for c in chunks if not c.choices]
    assert all(c.usage is None for c in chunks)


def test_stream_with_usage_asked(gw: Gateway, clients) -> None:
    stream = clients(gw, KEYS["good"]).chat.completions.create(
        model="gpt-4o-mini", messages=USER, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.total_tokens == upstream.PROMPT_TOKENS + upstream.COMPLETION_TOKENS


def test_jwt(gw: Gateway, clients) -> None:
    now = int(time.time())
    claims = {"sub": "jwt-user", "org": "apps", "aud": "tollgate", "exp": now + 300, "allowed_models": ["gpt-4o-mini"]}
    client = clients(gw, hs256_jwt(claims))
    assert client.chat.completions.create(model="gpt-4o-mini", messages=USER).choices
    assert [m.id for m in client.models.list()] == ["gpt-4o-mini"]
    with pytest.raises(openai.PermissionDeniedError) as info:
        client.chat.completions.create(model="gpt-4o", messages=USER)
    assert_error_body(info.value, "model_not_allowed")
    assert wait_for_log(gw, 1, key_id="jwt-user", team="apps", status=200)

    refused = {
        "expired": hs256_jwt({**claims, "exp": now - 3600}),
        "wrong audience": hs256_jwt({**claims, "aud": "someone-else"}),
        "bad signature": hs256_jwt(claims, secret="another-secret-of-at-least-32-bytes!!"),
    }
    for what, token in refused.items():
        with pytest.raises(openai.AuthenticationError) as info:
            clients(gw, token).chat.completions.create(model="gpt-4o-mini", messages=USER)
        err = assert_error_body(info.value, "invalid_token")
        assert token not in err["message"], what


# --- rate limits ------------------------------------------------------------------------


def test_ratelimit_headers(gw: Gateway, clients) -> None:
    client = clients(gw, KEYS["good"])
    same_minute_ahead(5)
    first = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=USER, max_tokens=5)
    second = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=USER, max_tokens=5)
    for raw in (first, second):
        h = raw.headers
        assert h["x-ratelimit-limit-requests"] == "1000"
        assert h["x-ratelimit-limit-tokens"] == "1000000"
        assert GO_DURATION.match(h["x-ratelimit-reset-requests"]), h["x-ratelimit-reset-requests"]
        assert GO_DURATION.match(h["x-ratelimit-reset-tokens"]), h["x-ratelimit-reset-tokens"]
        assert 0 <= int(h["x-ratelimit-remaining-tokens"]) < 1000000
        assert raw.parse().choices  # the body is still the typed completion
    # Both calls in one window (other tests may use the key in between only serially).
    r1 = int(first.headers["x-ratelimit-remaining-requests"])
    r2 = int(second.headers["x-ratelimit-remaining-requests"])
    assert r2 == r1 - 1 and r1 < 1000


def test_rpm_exceeded(gw: Gateway, clients, fake_upstream: upstream.FakeUpstream) -> None:
    client = clients(gw, KEYS["slow"])
    same_minute_ahead(5)
    before = len(fake_upstream.inference())
    client.chat.completions.create(model="gpt-4o-mini", messages=USER)
    client.chat.completions.create(model="gpt-4o-mini", messages=USER)
    with pytest.raises(openai.RateLimitError) as info:
        client.chat.completions.create(model="gpt-4o-mini", messages=USER)
    exc = info.value
    assert exc.status_code == 429
    err = assert_error_body(exc, "rate_limit_exceeded")
    assert err["type"] == "requests"
    assert "RPM" in err["message"] and "Limit 2" in err["message"]
    h = exc.response.headers
    retry_after, retry_after_ms = int(h["retry-after"]), int(h["retry-after-ms"])
    # To the next minute: retry-after is whole seconds, rounded up, at least 1.
    assert 1 <= retry_after <= 60 and 0 < retry_after_ms <= 60000
    assert retry_after == max(1, -(-retry_after_ms // 1000))
    assert "x-should-retry" not in h  # waiting helps: the SDK may retry
    assert len(fake_upstream.inference()) == before + 2


def test_team_rpm_is_shared(gw: Gateway, clients) -> None:
    a, b = clients(gw, KEYS["duo-a"]), clients(gw, KEYS["duo-b"])
    same_minute_ahead(5)
    for c in (a, b, a):
        c.chat.completions.create(model="gpt-4o-mini", messages=USER)
    with pytest.raises(openai.RateLimitError) as info:
        b.chat.completions.create(model="gpt-4o-mini", messages=USER)
    err = assert_error_body(info.value, "rate_limit_exceeded")
    assert "duo" in err["message"]


# --- budgets ----------------------------------------------------------------------------


def spend_until_refused(client: openai.OpenAI, model: str = "gpt-4o-mini", limit: int = 6) -> tuple[int, openai.RateLimitError]:
    """Calls until the budget refuses; returns how many calls were answered, and the error."""
    for answered in range(limit):
        try:
            client.chat.completions.create(model=model, messages=USER)
        except openai.RateLimitError as exc:
            return answered, exc
    pytest.fail(f"{limit} calls answered: the budget never refused")


def assert_budget_refusal(exc: openai.RateLimitError) -> dict:
    assert exc.status_code == 429
    err = assert_error_body(exc, "insufficient_quota")
    assert err["type"] == "insufficient_quota"
    assert exc.response.headers.get("x-should-retry") == "false"
    return err


def test_tokens_budget_exhausted(gw: Gateway, clients) -> None:
    answered, exc = spend_until_refused(clients(gw, KEYS["broke"]))
    per_answer = upstream.PROMPT_TOKENS + upstream.COMPLETION_TOKENS
    # Charged what the upstream reported, so refused once the next reservation cannot fit.
    assert answered == TOKENS_BUDGET // per_answer, answered
    err = assert_budget_refusal(exc)
    assert f"{answered * per_answer} tokens used" in err["message"], err["message"]

    # With the SDK's default retries, a budget refusal is not retried (x-should-retry:
    # false): one request leaves the client and one reaches the gateway. A retry would
    # carry the same x-request-id, which the gateway keeps and logs.
    sent = []
    http = httpx2.Client(event_hooks={"request": [lambda request: sent.append(request.url)]})
    client = clients(gw, KEYS["broke"], max_retries=2, http_client=http)
    request_id = f"sdk-budget-{time.time_ns()}"
    with pytest.raises(openai.RateLimitError) as info:
        client.chat.completions.create(model="gpt-4o-mini", messages=USER, extra_headers={"x-request-id": request_id})
    assert_budget_refusal(info.value)
    assert info.value.response.headers["x-request-id"] == request_id
    assert len(sent) == 1, sent
    assert len(wait_for_log(gw, 1, request_id=request_id)) == 1
    time.sleep(0.1)
    assert len(gw.access_log(request_id=request_id)) == 1


def test_usd_budget_exhausted(gw: Gateway, clients) -> None:
    answered, exc = spend_until_refused(clients(gw, KEYS["spender"]))
    assert answered == int(USD_BUDGET / PER_ANSWER_USD), answered
    err = assert_budget_refusal(exc)
    assert "USD" in err["message"] or "$" in err["message"], err["message"]


def test_mock_provider_answers_are_charged(gw: Gateway, clients) -> None:
    answered, exc = spend_until_refused(clients(gw, KEYS["mocked"]), model="mock-echo", limit=12)
    assert_budget_refusal(exc)


def test_mock_provider_ratelimit_headers(gw: Gateway, clients) -> None:
    raw = clients(gw, KEYS["good"]).chat.completions.with_raw_response.create(model="mock-echo", messages=USER)
    assert raw.headers["x-ratelimit-limit-requests"] == "1000"
