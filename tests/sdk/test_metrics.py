"""Prometheus metrics and the admin API on the admin listener, seen from outside.

The metrics text is checked by `promtool check metrics` and parsed with the reference
parser (`prometheus_client`); its counters must move as requests of each kind go
through. A real Prometheus server scrapes a gateway and PromQL returns the request count
sent. Everything runs on 127.0.0.1.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import httpx2
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

import upstream
from conftest import Gateway, _free_port

ADMIN_TOKEN = "admin-token-0123456789abcdef"
UPSTREAM_KEY = "upstream-secret-key-9876"

CONFIG = """\
models:
  gpt-4o-mini:
    targets: [{{pool: fake-openai}}]
  broken:
    targets: [{{pool: dead}}]
pools:
  fake-openai:
    provider: openai
    endpoints:
      - {{url: "{upstream}/v1", api_key: {upstream_key}}}
    health_check: {{enabled: false}}
    retry: {{attempts: 1}}
  dead:
    provider: openai
    endpoints:
      - {{url: "http://127.0.0.1:{dead_port}/v1", api_key: {upstream_key}}}
    health_check: {{enabled: false}}
    retry: {{attempts: 2, backoff: 1ms}}
quotas:
  models:
    gpt-4o-mini: {{rpm: 100000}}
  prices:
    gpt-4o-mini: {{input: 1, output: 2}}
cache:
  backend: memory
admin:
  address: 127.0.0.1:{admin_port}
  token: {admin_token}
"""


def start(start_gateway, fake_upstream, name: str) -> tuple[Gateway, int]:
    admin_port = _free_port()
    gw = start_gateway(
        CONFIG.format(
            upstream=fake_upstream.url,
            upstream_key=UPSTREAM_KEY,
            dead_port=_free_port(),
            admin_port=admin_port,
            admin_token=ADMIN_TOKEN,
        ),
        name=name,
    )
    # The admin listener is a service of its own: it may come up just after /health.
    deadline = time.monotonic() + 10
    while True:
        try:
            with socket.create_connection(("127.0.0.1", admin_port), timeout=1):
                break
        except OSError:
            assert time.monotonic() < deadline, "the admin listener did not come up"
            time.sleep(0.02)
    return gw, admin_port


@pytest.fixture(scope="module")
def gw(start_gateway, fake_upstream: upstream.FakeUpstream) -> tuple[Gateway, int]:
    return start(start_gateway, fake_upstream, "metrics")


def get(port: int, path: str, token: str | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    if token is not None:
        req.add_header("authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    """Every sample as {(name, sorted labels): value}."""
    status, body = get(port, "/metrics")
    assert status == 200
    out = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def total(samples: dict, name: str, **labels: str) -> float:
    """The sum of `name` over the series whose labels include `labels`."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= set(ls))


def test_counters_move_with_each_kind_of_request(gw) -> None:
    gateway, admin_port = gw
    client = openai.OpenAI(base_url=gateway.api_base, api_key="unused", max_retries=0, timeout=15)
    before = scrape(admin_port)

    ask = {"model": "gpt-4o-mini", "temperature": 0, "messages": [{"role": "user", "content": "count me"}]}
    client.chat.completions.create(**ask)  # miss
    client.chat.completions.create(**ask)  # hit
    stream = client.chat.completions.create(
        model="gpt-4o-mini", stream=True, messages=[{"role": "user", "content": "stream me"}]
    )
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "x"}])
    bad = httpx2.post(gateway.api_base + "/chat/completions", content=b"{not json", headers={"content-type": "application/json"})
    assert bad.status_code == 400
    with pytest.raises(openai.APIStatusError) as dead:
        client.chat.completions.create(model="broken", messages=[{"role": "user", "content": "x"}])
    assert dead.value.status_code >= 500
    client.close()

    # The access log line, and so the metrics, follow the response: poll.
    deadline = time.monotonic() + 10
    while True:
        after = scrape(admin_port)
        d = lambda name, **l: total(after, name, **l) - total(before, name, **l)  # noqa: E731
        if d("tollgate_requests_total") >= 6 or time.monotonic() > deadline:
            break
        time.sleep(0.05)

    assert d("tollgate_requests_total", route="chat_completions", model="gpt-4o-mini", status="2xx") == 3
    assert d("tollgate_requests_total", route="chat_completions", status="4xx") == 2
    assert d("tollgate_requests_total", route="chat_completions", model="broken", pool="dead", status="5xx") == 1
    assert d("tollgate_rejections_total", reason="unknown_model") == 1
    assert d("tollgate_rejections_total", reason="invalid_request") == 1
    assert d("tollgate_upstream_failures_total", code="upstream_unreachable") == 1
    assert d("tollgate_retries_total", pool="dead") == 1
    assert d("tollgate_cache_requests_total", result="hit") == 1
    assert d("tollgate_cache_requests_total", result="miss") == 1
    assert d("tollgate_cache_saved_tokens_total", kind="prompt") == upstream.PROMPT_TOKENS
    # The miss and the stream were charged; the hit was not.
    assert d("tollgate_tokens_total", model="gpt-4o-mini", kind="prompt") == 2 * upstream.PROMPT_TOKENS
    assert d("tollgate_tokens_total", model="gpt-4o-mini", kind="completion") == 2 * upstream.COMPLETION_TOKENS
    per_answer = (upstream.PROMPT_TOKENS * 1 + upstream.COMPLETION_TOKENS * 2) / 1e6
    assert d("tollgate_cost_usd_total", model="gpt-4o-mini") == pytest.approx(2 * per_answer)
    assert d("tollgate_request_duration_seconds_count", route="chat_completions") == 6
    assert d("tollgate_gateway_overhead_seconds_count", route="chat_completions") == 6
    assert d("tollgate_upstream_ttft_seconds_count", pool="fake-openai") == 1
    assert total(after, "tollgate_endpoint_up", pool="fake-openai") == 1
    assert total(after, "tollgate_endpoint_breaker_state", pool="dead") == 0
    assert ("tollgate_requests_in_flight", ()) in after

    # The whole text passes Prometheus's own linter.
    status, body = get(admin_port, "/metrics")
    check = subprocess.run(["promtool", "check", "metrics"], input=body, capture_output=True, timeout=30)
    assert check.returncode == 0, check.stdout.decode() + check.stderr.decode()
    # No secret in the metrics.
    assert UPSTREAM_KEY.encode() not in body and ADMIN_TOKEN.encode() not in body


def test_the_admin_api_wants_its_token(gw) -> None:
    _, admin_port = gw
    for token in (None, "wrong-token-0123456789abcdef", ADMIN_TOKEN[:-1]):
        status, body = get(admin_port, "/admin/pools", token)
        assert status == 401, body
        assert json.loads(body)["error"]["code"] == "invalid_admin_token"
    status, body = get(admin_port, "/admin/pools", ADMIN_TOKEN)
    assert status == 200, body
    pools = {p["name"]: p for p in json.loads(body)["data"]}
    assert pools["fake-openai"]["endpoints"][0]["up"] is True
    assert pools["dead"]["endpoints"][0]["breaker"] == "closed"

    status, body = get(admin_port, "/admin/config", ADMIN_TOKEN)
    assert status == 200
    config = json.loads(body)
    assert config["pools"]["fake-openai"]["endpoints"][0]["api_key"] == "[redacted]"
    assert config["admin"]["token"] == "[redacted]"
    assert UPSTREAM_KEY.encode() not in body and ADMIN_TOKEN.encode() not in body
    status, _ = get(admin_port, "/admin/nothing-here", ADMIN_TOKEN)
    assert status == 404


def test_a_prometheus_server_scrapes_the_request_count(start_gateway, fake_upstream) -> None:
    prometheus = shutil.which("prometheus")
    assert prometheus, "prometheus (Debian package) is installed by setup.sh"
    gateway, admin_port = start(start_gateway, fake_upstream, "scraped")
    sent = 7
    with openai.OpenAI(base_url=gateway.api_base, api_key="unused", max_retries=0, timeout=15) as client:
        for i in range(sent):
            client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": f"n{i}"}])

    web_port = _free_port()
    with tempfile.TemporaryDirectory(prefix="tollgate-prom-") as tmp:
        cfg = Path(tmp) / "prometheus.yml"
        cfg.write_text(
            "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
            "scrape_configs:\n"
            f"  - job_name: tollgate\n    static_configs: [{{targets: ['127.0.0.1:{admin_port}']}}]\n"
        )
        proc = subprocess.Popen(
            [prometheus, f"--config.file={cfg}", f"--storage.tsdb.path={tmp}/data",
             f"--web.listen-address=127.0.0.1:{web_port}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        try:
            query = urllib.parse.quote('sum(tollgate_requests_total{route="chat_completions",status="2xx"})')
            deadline = time.monotonic() + 30
            value = None
            while time.monotonic() < deadline:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{web_port}/api/v1/query?query={query}", timeout=2) as r:
                        result = json.load(r)["data"]["result"]
                    if result:
                        value = float(result[0]["value"][1])
                        if value == sent:
                            break
                except (urllib.error.URLError, ConnectionError, OSError):
                    pass
                time.sleep(0.25)
            assert value == sent, f"PromQL gave {value}, sent {sent}"
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
