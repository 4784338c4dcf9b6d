"""conf/grafana-dashboard.json: the Grafana dashboard built on the gateway's metrics.

No gateway is started. The JSON must parse as a Grafana 10/11 dashboard whose panels all
query the templated Prometheus data source; every metric an expression names must be one
the gateway exports (KNOWN below, kept in step with src/request_metrics.rs,
src/cache/stats.rs and the config metrics), with labels it has, so that renaming a metric
or a label breaks this test rather than the dashboard. Every expression is checked for
shape here, then parsed by `promtool check rules` and evaluated by a real Prometheus server
(both from the `prometheus` Debian package that scripts/setup.sh installs).
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = REPO_ROOT / "conf" / "grafana-dashboard.json"

# Every metric the gateway exports, with its labels (histograms by their base name).
KNOWN: dict[str, frozenset[str]] = {
    name: frozenset(labels)
    for name, labels in {
        "tollgate_requests_total": ("route", "model", "pool", "status"),
        "tollgate_request_duration_seconds": ("route", "model"),
        "tollgate_gateway_overhead_seconds": ("route",),
        "tollgate_upstream_ttft_seconds": ("pool",),
        "tollgate_upstream_inter_chunk_seconds": ("pool",),
        "tollgate_tokens_total": ("model", "kind"),
        "tollgate_cost_usd_total": ("model",),
        "tollgate_rejections_total": ("reason",),
        "tollgate_upstream_failures_total": ("code",),
        "tollgate_retries_total": ("pool",),
        "tollgate_fallbacks_total": ("model",),
        "tollgate_requests_in_flight": (),
        "tollgate_key_requests_total": ("key", "team"),
        "tollgate_key_tokens_total": ("key", "team", "kind"),
        "tollgate_endpoint_up": ("pool", "endpoint"),
        "tollgate_endpoint_breaker_state": ("pool", "endpoint"),
        "tollgate_endpoint_in_flight": ("pool", "endpoint"),
        "tollgate_redis_errors_total": ("component",),
        "tollgate_cache_requests_total": ("result",),
        "tollgate_cache_coalesced_total": (),
        "tollgate_cache_hit_bytes_total": (),
        "tollgate_cache_stores_total": (),
        "tollgate_cache_stored_bytes_total": (),
        "tollgate_cache_saved_tokens_total": ("kind",),
        "tollgate_cache_saved_usd_total": (),
        "tollgate_cache_faults_total": ("reason",),
        "tollgate_cache_memory_bytes": (),
        "tollgate_config_reloads_total": ("result",),
        "tollgate_config_info": ("hash",),
        "tollgate_config_last_reload_success_timestamp_seconds": (),
    }.items()
}
HISTOGRAMS = frozenset({
    "tollgate_request_duration_seconds",
    "tollgate_gateway_overhead_seconds",
    "tollgate_upstream_ttft_seconds",
    "tollgate_upstream_inter_chunk_seconds",
})
HISTOGRAM_SUFFIXES = ("_bucket", "_count", "_sum")
# Labels Prometheus adds to every scraped series.
TARGET_LABELS = frozenset({"instance", "job"})

DS_VAR = "DS_PROMETHEUS"
GRID_COLUMNS = 24
METRIC = re.compile(r"tollgate_[a-z_]+")
SELECTOR = re.compile(r"(tollgate_[a-z_]+)\s*\{([^}]*)\}")
# A metric name with its label matchers, if any.
USE = re.compile(r"(tollgate_[a-z_]+)(?:\s*\{([^}]*)\})?")
MATCHER = re.compile(r'(\w+)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"')
# Functions whose argument must be a range vector.
RANGE_FUNCTIONS = re.compile(r"\b(rate|irate|increase|delta|idelta|deriv|changes|resets|\w+_over_time)\s*\(")
LABEL_VALUES = re.compile(r"^\s*label_values\((.*),\s*(\w+)\s*\)\s*$", re.S)
# What Grafana puts in place of its variables, for Prometheus and promtool.
SUBSTITUTIONS = {
    "$__rate_interval": "1m",
    "$__interval": "1m",
    "$__range": "1h",
    "$model": ".*",
    "$pool": ".*",
}
PROMETHEUS_STARTUP_S = 30.0
PROMETHEUS_STOP_S = 10.0


def _dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def _panels(panels: list[dict]):
    """Every panel, rows' children included (a collapsed row holds its panels)."""
    for p in panels:
        yield p
        yield from _panels(p.get("panels", []))


def _query_panels(dash: dict) -> list[dict]:
    return [p for p in _panels(dash["panels"]) if p.get("type") != "row"]


def _variables(dash: dict) -> dict[str, dict]:
    return {v["name"]: v for v in dash.get("templating", {}).get("list", [])}


def _variable_query(var: dict) -> str:
    q = var.get("query")
    return q.get("query", "") if isinstance(q, dict) else (q or "")


def _exprs(dash: dict) -> list[tuple[str, str]]:
    """(where, PromQL) for every panel target, and the series selector of every
    label_values() variable."""
    out = []
    for p in _query_panels(dash):
        for t in p.get("targets", []):
            out.append((f"panel {p.get('id')} {p.get('title')!r} target {t.get('refId')}", t.get("expr", "")))
    for name, var in _variables(dash).items():
        if var.get("type") == "query":
            m = LABEL_VALUES.match(_variable_query(var))
            assert m, f"variable {name}: not a label_values(selector, label) query"
            out.append((f"variable {name}", m.group(1)))
    return out


def _base_metric(name: str) -> str:
    for suffix in HISTOGRAM_SUFFIXES:
        if name.endswith(suffix) and name[: -len(suffix)] in HISTOGRAMS:
            return name[: -len(suffix)]
    return name


def _substitute(expr: str) -> str:
    for var, value in SUBSTITUTIONS.items():
        expr = expr.replace(var, value)
    assert "$" not in expr, f"a Grafana variable is left unreplaced in {expr!r}"
    return expr


def _strip_strings(expr: str) -> str:
    """The expression with the contents of its string literals blanked out."""
    out, quote, i = [], None, 0
    while i < len(expr):
        c = expr[i]
        if quote:
            if c == "\\" and quote != "`":
                out.append("  ")
                i += 2
                continue
            if c == quote:
                quote = None
                out.append(c)
            else:
                out.append(" ")
        else:
            if c in "\"'`":
                quote = c
            out.append(c)
        i += 1
    assert quote is None, f"unterminated string literal in {expr!r}"
    return "".join(out)


def _closing(text: str, open_at: int) -> int:
    """Index of the parenthesis closing the one at `open_at` (strings already blanked)."""
    depth = 0
    for i in range(open_at, len(text)):
        if text[i] == "(":
            depth += 1
        elif text[i] == ")":
            depth -= 1
            if depth == 0:
                return i
    raise AssertionError(f"no closing parenthesis for position {open_at} in {text!r}")


def test_the_dashboard_parses_as_an_importable_grafana_dashboard() -> None:
    dash = _dashboard()
    assert dash.get("title") and dash.get("uid")
    assert 36 <= dash.get("schemaVersion", 0) <= 41, "a Grafana 10/11 schema version"
    assert dash.get("id") is None, "no instance-specific id (importable anywhere)"
    variables = _variables(dash)
    ds = variables.get(DS_VAR)
    assert ds and ds["type"] == "datasource" and ds["query"] == "prometheus", \
        f"a data source variable ${DS_VAR} of type prometheus"
    for name in ("model", "pool"):
        var = variables.get(name)
        assert var and var["type"] == "query", f"query variable ${name}"
        assert var["datasource"] == {"type": "prometheus", "uid": f"${{{DS_VAR}}}"}
        m = LABEL_VALUES.match(_variable_query(var))
        assert m and m.group(2) == name, f"${name} lists label_values(..., {name})"
        for metric in METRIC.findall(m.group(1)):
            assert name in KNOWN.get(metric, ()), f"${name}: {metric} has no {name} label"
        # "All" must match the empty label too (rejections have no pool, unknown models no model).
        assert var.get("includeAll") and var.get("allValue") == ".*"


def test_every_panel_has_a_title_the_prometheus_variable_and_a_query() -> None:
    dash = _dashboard()
    panels = list(_panels(dash["panels"]))
    assert len(panels) > 10
    problems = []
    for p in panels:
        where = f"panel {p.get('id')} ({p.get('type')})"
        if not str(p.get("title", "")).strip():
            problems.append(f"{where}: no title")
        if p.get("type") == "row":
            continue
        if p.get("datasource") != {"type": "prometheus", "uid": f"${{{DS_VAR}}}"}:
            problems.append(f"{where}: datasource {p.get('datasource')!r} is not the ${DS_VAR} variable")
        targets = p.get("targets") or []
        if not any(str(t.get("expr", "")).strip() for t in targets):
            problems.append(f"{where}: no target with an expr")
        for t in targets:
            if t.get("datasource", p.get("datasource")) != p.get("datasource"):
                problems.append(f"{where} target {t.get('refId')}: another datasource")
        if p.get("type") in ("timeseries", "stat") and not p.get("fieldConfig", {}).get("defaults", {}).get("unit"):
            problems.append(f"{where}: no unit")
    assert not problems, "\n".join(problems)


def test_panel_ids_are_unique() -> None:
    ids = [p.get("id") for p in _panels(_dashboard()["panels"])]
    assert all(isinstance(i, int) for i in ids), ids
    assert len(ids) == len(set(ids)), f"duplicate panel ids: {sorted(i for i in ids if ids.count(i) > 1)}"


def test_panels_sit_within_the_grid_without_overlapping() -> None:
    dash = _dashboard()
    problems = []
    for p in _panels(dash["panels"]):
        g = p.get("gridPos")
        if not g or not all(isinstance(g.get(k), int) for k in ("x", "y", "w", "h")):
            problems.append(f"panel {p.get('id')}: gridPos {g!r}")
            continue
        if g["x"] < 0 or g["y"] < 0 or g["w"] < 1 or g["h"] < 1 or g["x"] + g["w"] > GRID_COLUMNS:
            problems.append(f"panel {p.get('id')}: gridPos {g!r} outside {GRID_COLUMNS} columns")
    assert not problems, "\n".join(problems)
    # The top-level layout (expanded rows place their panels at the top level).
    top = [(p["id"], p["gridPos"]) for p in dash["panels"]]
    for i, (a, ga) in enumerate(top):
        for b, gb in top[i + 1:]:
            apart = (ga["x"] + ga["w"] <= gb["x"] or gb["x"] + gb["w"] <= ga["x"]
                     or ga["y"] + ga["h"] <= gb["y"] or gb["y"] + gb["h"] <= ga["y"])
            assert apart, f"panels {a} and {b} overlap: {ga} {gb}"


def test_every_metric_is_one_the_gateway_exports() -> None:
    unknown = []
    for where, expr in _exprs(_dashboard()):
        for name in METRIC.findall(expr):
            base = _base_metric(name)
            if base not in KNOWN:
                unknown.append(f"{where}: {name}")
            elif base in HISTOGRAMS and name == base:
                unknown.append(f"{where}: histogram {name} used without _bucket/_count/_sum")
    assert not unknown, "metrics the gateway does not export:\n" + "\n".join(unknown)


def test_label_matchers_use_labels_the_metric_has() -> None:
    problems = []
    for where, expr in _exprs(_dashboard()):
        for name, matchers in SELECTOR.findall(expr):
            base = _base_metric(name)
            labels = KNOWN.get(base, frozenset()) | TARGET_LABELS
            if name.endswith("_bucket") and base in HISTOGRAMS:
                labels |= {"le"}
            for label, _op, _value in MATCHER.findall(matchers):
                if label not in labels and label != "__name__":
                    problems.append(f"{where}: {name} has no label {label!r}")
    assert not problems, "\n".join(problems)


def test_model_and_pool_variables_filter_every_metric_with_those_labels() -> None:
    problems = []
    for where, expr in _exprs(_dashboard()):
        if where.startswith("variable "):
            continue
        for m in USE.finditer(expr):
            name = m.group(1)
            labels = KNOWN.get(_base_metric(name), frozenset())
            matchers = {label: value for label, _op, value in MATCHER.findall(m.group(2) or "")}
            for var in ("model", "pool"):
                if var in labels and matchers.get(var) != f"${var}":
                    problems.append(f'{where}: {name} is not filtered by {var}=~"${var}"')
    assert not problems, "\n".join(problems)


def test_every_expression_is_well_formed() -> None:
    problems = []
    for where, expr in _exprs(_dashboard()):
        text = _strip_strings(expr)
        stack = []
        for i, c in enumerate(text):
            if c in "([{":
                stack.append(c)
            elif c in ")]}":
                if not stack or "([{"[")]}".index(c)] != stack.pop():
                    problems.append(f"{where}: unbalanced {c!r} at {i} in {expr!r}")
                    break
        else:
            if stack:
                problems.append(f"{where}: unclosed {stack[-1]!r} in {expr!r}")
                continue
        for m in RANGE_FUNCTIONS.finditer(text):
            open_at = m.end() - 1
            arg = text[open_at + 1:_closing(text, open_at)]
            if not re.search(r"\[[^\[\]]+\]\s*$", arg):
                problems.append(f"{where}: {m.group(1)}() without a range selector [...]: {expr!r}")
        for m in re.finditer(r"\bhistogram_quantile\s*\(", text):
            open_at = m.end() - 1
            arg = text[open_at + 1:_closing(text, open_at)]
            if "_bucket" not in arg or not re.search(r"\bby\s*\([^)]*\ble\b", arg):
                problems.append(f"{where}: histogram_quantile() needs _bucket series summed by le: {expr!r}")
    assert not problems, "\n".join(problems)


def test_promtool_parses_every_expression(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool (Debian package prometheus) is installed by setup.sh"
    exprs = _exprs(_dashboard())
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:expr_{i}", "expr": _substitute(expr)} for i, (_, expr) in enumerate(exprs)
    ]}]}
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(json.dumps(rules, indent=1))  # JSON is YAML
    check = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=30)
    if check.returncode != 0:
        output = check.stdout + check.stderr
        named = sorted({int(i) for i in re.findall(r"dashboard:expr_(\d+)", output)})
        pytest.fail(
            f"promtool check rules failed:\n{output}\n"
            + "\n".join(f"dashboard:expr_{i} is {exprs[i][0]}: {exprs[i][1]}" for i in named),
            pytrace=False,
        )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def prometheus_url():
    """A Prometheus server with nothing to scrape and an empty TSDB of its own."""
    binary = shutil.which("prometheus")
    assert binary, "prometheus (Debian package) is installed by setup.sh"
    with tempfile.TemporaryDirectory(prefix="tollgate-dashboard-prom-") as tmp:
        cfg = Path(tmp) / "prometheus.yml"
        cfg.write_text("global: {scrape_interval: 15s}\nscrape_configs: []\n")
        log_path = Path(tmp) / "prometheus.log"
        url = None
        proc = None
        try:
            for _attempt in range(3):  # a port taken between _free_port() and the bind
                port = _free_port()
                with open(log_path, "wb") as log:
                    proc = subprocess.Popen(
                        [binary, f"--config.file={cfg}", f"--storage.tsdb.path={tmp}/data",
                         f"--web.listen-address=127.0.0.1:{port}"],
                        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                    )
                deadline = time.monotonic() + PROMETHEUS_STARTUP_S
                while time.monotonic() < deadline and proc.poll() is None:
                    try:
                        with urllib.request.urlopen(f"http://127.0.0.1:{port}/-/ready", timeout=1) as r:
                            if r.status == 200:
                                url = f"http://127.0.0.1:{port}"
                                break
                    except (urllib.error.URLError, ConnectionError, OSError):
                        pass
                    time.sleep(0.1)
                if url or proc.poll() is None or "address already in use" not in log_path.read_text(errors="replace"):
                    break
            if not url:
                pytest.fail(f"prometheus did not become ready in {PROMETHEUS_STARTUP_S:.0f}s:\n"
                            + log_path.read_text(errors="replace")[-4000:], pytrace=False)
            yield url
        finally:
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=PROMETHEUS_STOP_S)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=PROMETHEUS_STOP_S)


def _query(base_url: str, expr: str) -> dict:
    body = urllib.parse.urlencode({"query": expr}).encode()
    req = urllib.request.Request(base_url + "/api/v1/query", data=body, method="POST",
                                 headers={"Content-Type": "application/x-www-form-urlencoded"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.load(r)
    except urllib.error.HTTPError as e:  # 400 bad_data, 422 execution errors: JSON bodies too
        return json.loads(e.read() or b"{}")


def test_prometheus_evaluates_every_expression(prometheus_url: str) -> None:
    # The check is meaningful: a malformed query is refused.
    refused = _query(prometheus_url, "sum(rate(tollgate_requests_total[1m])")
    assert refused.get("status") == "error" and refused.get("errorType") == "bad_data", refused
    problems = []
    for where, expr in _exprs(_dashboard()):
        answer = _query(prometheus_url, _substitute(expr))
        if answer.get("status") != "success":
            problems.append(f"{where}: {answer.get('errorType')}: {answer.get('error')}\n    {expr}")
    assert not problems, "\n".join(problems)
