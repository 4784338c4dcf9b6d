"""Starts one tollgate process for the whole test session and hands out OpenAI SDK clients.

The gateway binary is $TOLLGATE_BIN (default: target/debug/tollgate under the repo root).
It runs on a free loopback port with the model set of conf/gateway.yaml, all answered by
the built-in `mock` provider, so no network and no provider key are involved.

Tests that need another configuration (authentication, quotas, a real `openai` pool) start
their own gateway through the `start_gateway` fixture, which takes the YAML below the
`server:`/`listeners:` sections; `fake_upstream` is an OpenAI-compatible server in this
process (see upstream.py) for such pools to forward to.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import openai
import pytest

import upstream

REPO_ROOT = Path(__file__).resolve().parents[2]
STARTUP_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 10.0
LOG_TAIL_LINES = 40

# What the tests expect of the mock provider (see CONFIG_TEMPLATE).
EMBEDDING_DIMS = 16
CHAT_MODEL = "gpt-4o-mini"
CHAT_ALIAS = "mini"
CHAT_TARGET_MODEL = "mock-small"
EMBEDDING_MODEL = "text-embedding-3-small"

# Every test gateway's process settings: its own port and pid/socket paths.
# grace_period_seconds: 0 so that stopping the gateway does not wait for idle connections.
SERVER_TEMPLATE = """\
server:
  pid_file: {pid_file}
  upgrade_sock: {upgrade_sock}
  threads: 2
  grace_period_seconds: 0
  graceful_shutdown_timeout_seconds: 1
listeners:
  - address: 127.0.0.1:{port}
"""

# conf/gateway.yaml's model set (the session gateway's config, below SERVER_TEMPLATE).
CONFIG_TEMPLATE = """\
models:
  gpt-4o-mini:
    aliases: [mini]
    targets:
      - pool: local-mock
        model: mock-small
  text-embedding-3-small:
    targets:
      - pool: local-mock
pools:
  local-mock:
    provider: mock
    mock: {{chunk_delay: 0ms, embedding_dims: {dims}}}
"""


@dataclass
class Gateway:
    base_url: str  # e.g. http://127.0.0.1:41234  (no /v1)
    log_path: Path
    config_path: Path
    process: subprocess.Popen

    @property
    def api_base(self) -> str:
        return self.base_url + "/v1"

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError as exc:
            return f"(cannot read {self.log_path}: {exc})"
        tail = text.splitlines()[-lines:]
        return "\n".join(tail) if tail else "(gateway printed nothing)"

    def access_log(self, **match: object) -> list[dict[str, str]]:
        """The access log lines written so far, as {field: value} (quotes removed), keeping
        those whose fields equal every `match` value (compared as strings)."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return []
        entries = []
        for line in text.splitlines():
            if not line.startswith("{"):
                continue
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if entry.get("message") != "request":
                continue
            # Compared as strings, as the log's text form would show them.
            fields = {k: json.dumps(v) if isinstance(v, bool) else str(v) for k, v in entry.items()}
            if all(fields.get(k) == str(v) for k, v in match.items()):
                entries.append(fields)
        return entries


# Every gateway running, for the failure report hook.
_GATEWAYS: list[Gateway] = []


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _binary() -> Path:
    raw = os.environ.get("TOLLGATE_BIN", "target/debug/tollgate")
    path = Path(raw)
    if not path.is_absolute():
        path = REPO_ROOT / path
    return path


def _health_ok(base_url: str) -> bool:
    try:
        with urllib.request.urlopen(base_url + "/health", timeout=1.0) as resp:
            return resp.status == 200
    except (urllib.error.URLError, ConnectionError, OSError):
        return False


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    # SIGINT is Pingora's fast shutdown; SIGTERM would wait out the grace period.
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=STOP_TIMEOUT_S)


def _start(binary: Path, workdir: Path, name: str, body: str) -> Gateway:
    port = _free_port()
    config_path = workdir / f"{name}.yaml"
    log_path = workdir / f"{name}.log"
    config_path.write_text(
        SERVER_TEMPLATE.format(
            port=port,
            pid_file=workdir / f"{name}.pid",
            upgrade_sock=workdir / f"{name}.sock",
        )
        + body
    )
    env = dict(os.environ)
    env.setdefault("RUST_BACKTRACE", "1")
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [str(binary), "-c", str(config_path)],
            cwd=REPO_ROOT,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
    gw = Gateway(f"http://127.0.0.1:{port}", log_path, config_path, proc)

    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    delay = 0.02
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return gw  # exited; the caller decides whether to retry
        if _health_ok(gw.base_url):
            return gw
        time.sleep(delay)
        delay = min(delay * 1.5, 0.25)
    return gw


def _launch(workdir: Path, name: str, body: str) -> Gateway:
    """Starts a gateway on `body` (the YAML below server/listeners) and waits for /health;
    fails the test with the gateway's output when it does not come up."""
    binary = _binary()
    if not binary.is_file() or not os.access(binary, os.X_OK):
        pytest.fail(
            f"tollgate binary not found at {binary}: run `cargo build` "
            "(or set TOLLGATE_BIN)",
            pytrace=False,
        )
    gw = None
    for attempt in range(1, 4):
        gw = _start(binary, workdir, f"{name}-{attempt}", body)
        if gw.process.poll() is None and _health_ok(gw.base_url):
            _GATEWAYS.append(gw)
            return gw
        exited = gw.process.poll()
        _stop(gw.process)
        # A port taken between _free_port() and the gateway's bind is worth another try;
        # anything else (bad config, crash, no /health) fails at once.
        if exited is not None and "in use" in gw.log_tail().lower() and attempt < 3:
            continue
        state = f"exited with {exited}" if exited is not None else "did not answer GET /health with 200"
        pytest.fail(
            f"tollgate {state} within {STARTUP_TIMEOUT_S:.0f}s\n"
            f"command: {binary} -c {gw.config_path}\n"
            f"config:\n{gw.config_path.read_text()}\n"
            f"--- gateway output ({gw.log_path}) ---\n{gw.log_tail()}",
            pytrace=False,
        )
    raise AssertionError("unreachable")


def _shutdown(gw: Gateway) -> None:
    _stop(gw.process)
    if gw in _GATEWAYS:
        _GATEWAYS.remove(gw)
    code = gw.process.returncode
    # Died during the session rather than being stopped by us: make that visible.
    if code not in (0, -signal.SIGINT, -signal.SIGKILL, 128 + signal.SIGINT):
        print(f"\ntollgate exited with {code}; output:\n{gw.log_tail()}")


@pytest.fixture(scope="session")
def sdk_workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return Path(tempfile.mkdtemp(prefix="tollgate-sdk-", dir=tmp_path_factory.getbasetemp()))


@pytest.fixture(scope="session")
def gateway(sdk_workdir: Path) -> Gateway:
    gw = _launch(sdk_workdir, "gateway", CONFIG_TEMPLATE.format(dims=EMBEDDING_DIMS))
    try:
        yield gw
    finally:
        _shutdown(gw)


@pytest.fixture(scope="session")
def start_gateway(sdk_workdir: Path):
    """A function that starts a gateway on the given YAML (every section but `server` and
    `listeners`, which the harness writes) and returns its Gateway; every gateway started
    this way is stopped at the end of the session."""
    started: list[Gateway] = []
    names: dict[str, int] = {}

    def start(body: str, name: str = "custom") -> Gateway:
        names[name] = names.get(name, 0) + 1
        gw = _launch(sdk_workdir, f"{name}{names[name]}", body)
        started.append(gw)
        return gw

    try:
        yield start
    finally:
        for gw in started:
            _shutdown(gw)


@pytest.fixture(scope="session")
def fake_upstream() -> upstream.FakeUpstream:
    """An OpenAI-compatible upstream in this process, for `provider: openai` pools."""
    up = upstream.start()
    try:
        yield up
    finally:
        up.stop()


@pytest.fixture(scope="session")
def client(gateway: Gateway) -> openai.OpenAI:
    c = openai.OpenAI(
        base_url=gateway.api_base,
        api_key="sk-tollgate-test",
        max_retries=0,
        timeout=15.0,
    )
    yield c
    c.close()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    """Attach the tail of the gateway's output to every failing test's report."""
    report = yield
    if report.failed:
        for gw in _GATEWAYS:
            report.sections.append((f"tollgate output (tail of {gw.log_path.name})", gw.log_tail()))
    return report
