"""Starts one tollgate process for the whole test session and hands out OpenAI SDK clients.

The gateway binary is $TOLLGATE_BIN (default: target/debug/tollgate under the repo root).
It runs on a free loopback port with the model set of conf/gateway.yaml, all answered by
the built-in `mock` provider, so no network and no provider key are involved.
"""

from __future__ import annotations

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

# conf/gateway.yaml's model set, on a port and with pid/socket paths of the test's own.
# grace_period_seconds: 0 so that stopping the gateway does not wait for idle connections.
CONFIG_TEMPLATE = """\
server:
  pid_file: {pid_file}
  upgrade_sock: {upgrade_sock}
  threads: 2
  grace_period_seconds: 0
  graceful_shutdown_timeout_seconds: 1
listeners:
  - address: 127.0.0.1:{port}
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


_GATEWAY: Gateway | None = None


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


def _start(binary: Path, workdir: Path, attempt: int) -> Gateway:
    port = _free_port()
    config_path = workdir / f"gateway-{attempt}.yaml"
    log_path = workdir / f"gateway-{attempt}.log"
    config_path.write_text(
        CONFIG_TEMPLATE.format(
            port=port,
            pid_file=workdir / f"tollgate-{attempt}.pid",
            upgrade_sock=workdir / f"tollgate-{attempt}.sock",
            dims=EMBEDDING_DIMS,
        )
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


@pytest.fixture(scope="session")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Gateway:
    global _GATEWAY
    binary = _binary()
    if not binary.is_file() or not os.access(binary, os.X_OK):
        pytest.fail(
            f"tollgate binary not found at {binary}: run `cargo build` "
            "(or set TOLLGATE_BIN)",
            pytrace=False,
        )
    workdir = Path(tempfile.mkdtemp(prefix="tollgate-sdk-", dir=tmp_path_factory.getbasetemp()))

    gw = None
    for attempt in range(1, 4):
        gw = _start(binary, workdir, attempt)
        if gw.process.poll() is None and _health_ok(gw.base_url):
            break
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
    assert gw is not None
    _GATEWAY = gw
    try:
        yield gw
    finally:
        _stop(gw.process)
        _GATEWAY = None
        code = gw.process.returncode
        # Died during the session rather than being stopped by us: make that visible.
        if code not in (0, -signal.SIGINT, -signal.SIGKILL, 128 + signal.SIGINT):
            print(f"\ntollgate exited with {code}; output:\n{gw.log_tail()}")


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
    if report.failed and _GATEWAY is not None:
        report.sections.append(("tollgate output (tail)", _GATEWAY.log_tail()))
    return report
