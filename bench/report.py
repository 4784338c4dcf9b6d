#!/usr/bin/env python3
"""Turns the raw outputs of one bench/run.sh run into the committed results.

    report.py RAW_DIR OUT_DIR NAME

RAW_DIR holds what run.sh wrote (oha JSON, /proc figures, bench-client JSON, machine
facts). Writes OUT_DIR/NAME.{json,md,png} and copies them to OUT_DIR/latest.{json,md,png}.
The budget of issue 3 is checked here; each line says PASS or MISS with its figures.
"""

import json
import shutil
import sys
from pathlib import Path

TARGETS = ["direct", "nginx", "pingora", "hyper", "tollgate"]
# The targets that are a proxy process of their own. `pingora` is bench-pingora-floor,
# Pingora's proxy loop with nothing else: the framework's own floor. `hyper` is
# bench-hyper-floor --on-pingora: a Pingora server serving hyper's HTTP/1 proxy loop, the
# floor of the leaner session layer the gateway could move to.
PROXIES = ["nginx", "pingora", "hyper", "tollgate"]
# Floors reported as context beside tollgate: target and label.
FLOORS = [("pingora", "Pingora floor"), ("hyper", "hyper on Pingora floor")]
WORKLOADS = ["nonstream", "stream"]
MODES = ["c1", "c16", "c64", "rate"]
MODE_LABEL = {"c1": "c=1", "c16": "c=16", "c64": "c=64", "rate": "open loop"}

# "RSS returns near idle": after the streams close, RSS is at most this far above the
# RSS before they opened: max(NEAR_IDLE_MIB, NEAR_IDLE_FRACTION of the rise).
NEAR_IDLE_MIB = 8.0
NEAR_IDLE_FRACTION = 0.2


def load(path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def ms(seconds):
    return None if seconds is None else seconds * 1000.0


def load_case(raw, name):
    """One load case: oha's figures plus the /proc figures of run.sh."""
    meta = load(raw / f"{name}.meta.json")
    oha = load(raw / f"{name}.oha.json")
    if meta is None or oha is None:
        return None
    summary = oha.get("summary", {})
    pct = oha.get("latencyPercentiles", {})
    first_byte = oha.get("firstBytePercentiles") or {}
    statuses = {int(k): v for k, v in (oha.get("statusCodeDistribution") or {}).items()}
    socket_errors = oha.get("errorDistribution") or {}
    responses = sum(statuses.values())
    ok = sum(v for k, v in statuses.items() if 200 <= k < 300)
    errors = (responses - ok) + sum(socket_errors.values())
    tck = meta["clk_tck"]

    def cpu_ms_per_req(ticks):
        return ticks * 1000.0 / tck / responses if responses else None

    has_proxy = bool(meta["proxy_pids"].strip())
    return {
        "name": name,
        "target": meta["target"],
        "workload": meta["workload"],
        "mode": meta["mode"],
        "duration_s": summary.get("total"),
        "requests": responses,
        "ok": ok,
        "rps": summary.get("requestsPerSec"),
        "p50_ms": ms(pct.get("p50")),
        "p90_ms": ms(pct.get("p90")),
        "p99_ms": ms(pct.get("p99")),
        "max_ms": ms(summary.get("slowest")),
        # Time to the response header, as oha measures it under the same load.
        "ttfb_p50_ms": ms(first_byte.get("p50")),
        "ttfb_p99_ms": ms(first_byte.get("p99")),
        "errors": errors,
        "non_2xx": responses - ok,
        "socket_errors": socket_errors,
        "proxy_cpu_ms_per_req": cpu_ms_per_req(meta["proxy_cpu_ticks"]) if has_proxy else None,
        "mock_cpu_ms_per_req": cpu_ms_per_req(meta["mock_cpu_ticks"]),
        "proxy_peak_rss_mib": meta["proxy_hwm_kb"] / 1024.0 if has_proxy else None,
        "proxy_rss_sampled_max_mib": meta["proxy_rss_sampled_max_kb"] / 1024.0 if has_proxy else None,
    }


def fmt(value, digits=2, unit=""):
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:,.{digits}f}{unit}"
    return f"{value:,}{unit}"


def build(raw):
    machine = load(raw / "machine.json") or {}
    cases = []
    for workload in WORKLOADS:
        for mode in MODES:
            for target in TARGETS:
                case = load_case(raw, f"{target}.{workload}.{mode}")
                if case:
                    cases.append(case)
    ttfb = {t: load(raw / f"{t}.stream.ttfb.json") for t in TARGETS}
    ttft = {t: load(raw / f"{t}.slow.ttft.json") for t in TARGETS}
    hold = {t: load(raw / f"{t}.hold.json") for t in PROXIES}
    idle = {}
    for t in PROXIES:
        for when in ["start", "after_load"]:
            d = load(raw / f"{t}.idle.{when}.json")
            if d:
                idle.setdefault(t, {})[when] = d["rss_kb"] / 1024.0
    result = {
        "machine": machine,
        "cases": cases,
        "stream_ttfb": ttfb,
        "slow_ttft": ttft,
        "ttft_added_ms": ttft_added(ttft),
        "hold_streams": hold,
        "idle_rss_mib": idle,
    }
    result["budget"] = budget(result)
    return result


def ttft_added(ttft):
    direct = (ttft.get("direct") or {}).get("ttft_ms")
    out = {}
    for t in PROXIES:
        mine = (ttft.get(t) or {}).get("ttft_ms")
        if direct and mine:
            out[t] = {p: mine[p] - direct[p] for p in ["p50", "p90", "p99"]}
    return out


def find_case(result, target, workload, mode):
    for c in result["cases"]:
        if (c["target"], c["workload"], c["mode"]) == (target, workload, mode):
            return c
    return None


def check(name, ok, figures):
    if ok is None:
        return {"check": name, "status": "N/A", "figures": figures}
    return {"check": name, "status": "PASS" if ok else "MISS", "figures": figures}


def info(name, figures):
    """A context line: figures beside the budget, not checked against it."""
    return {"check": f"(context) {name}", "status": "INFO", "figures": figures}


def peak_mib(hold):
    """Peak RSS while the streams were held: the sampled maximum or the kernel's HWM."""
    return max(hold["rss_during_max_mib"], hold.get("hwm_during_mib") or 0.0)


def floor_context(result, target, label):
    """Context lines for one floor: CPU and throughput against nginx and tollgate at
    c=64, p99 added at c=16, and memory with the streams held open."""
    lines = []
    for workload in WORKLOADS:
        t = find_case(result, "tollgate", workload, "c64")
        p = find_case(result, target, workload, "c64")
        n = find_case(result, "nginx", workload, "c64")
        if t and p and n and p["proxy_cpu_ms_per_req"] and n["proxy_cpu_ms_per_req"]:
            floor, mine = p["proxy_cpu_ms_per_req"], t["proxy_cpu_ms_per_req"]
            lines.append(info(
                f"{label}, {workload} at c=64",
                f"CPU/request {floor:.4f} ms = {floor / n['proxy_cpu_ms_per_req']:.2f}× nginx; "
                f"tollgate = {mine / floor:.2f}× the floor ({mine - floor:+.4f} ms); "
                f"throughput {p['rps'] / n['rps']:.2f}× nginx"))
    for workload in WORKLOADS:
        p = find_case(result, target, workload, "c16")
        d = find_case(result, "direct", workload, "c16")
        if p and d:
            lines.append(info(
                f"{label}, p99 {workload} at c=16",
                f"{p['p99_ms']:.3f} ms, added {p['p99_ms'] - d['p99_ms']:+.3f} ms over direct"))
    hold = result["hold_streams"].get(target)
    if hold and hold.get("rss_during_max_mib") is not None:
        lines.append(info(
            f"{label}, open streams",
            f"{peak_mib(hold):.1f} MiB peak with {hold['held_open_at_release']:,}/"
            f"{hold['requested']:,} streams open (before {hold['rss_before_mib']:.1f} MiB)"))
    return lines


def budget(result):
    checks = []
    # CPU per request, at the c=64 closed loop (the steadiest, most loaded case) and the
    # open loop; both reported, the c=64 one is checked.
    for workload in WORKLOADS:
        t = find_case(result, "tollgate", workload, "c64") or find_case(result, "tollgate", workload, "c16")
        n = find_case(result, "nginx", workload, t["mode"]) if t else None
        if t and n and t["proxy_cpu_ms_per_req"] and n["proxy_cpu_ms_per_req"]:
            ratio = t["proxy_cpu_ms_per_req"] / n["proxy_cpu_ms_per_req"]
            checks.append(check(
                f"CPU/request {workload} ({MODE_LABEL[t['mode']]}): tollgate ≤ 1.5 × nginx",
                ratio <= 1.5,
                f"tollgate {t['proxy_cpu_ms_per_req']:.4f} ms, nginx {n['proxy_cpu_ms_per_req']:.4f} ms, "
                f"ratio {ratio:.2f}× (limit 1.50×)"))
        else:
            checks.append(check(f"CPU/request {workload}: tollgate ≤ 1.5 × nginx", None, "not measured"))

    for workload in WORKLOADS:
        t = find_case(result, "tollgate", workload, "c64")
        n = find_case(result, "nginx", workload, "c64")
        if t and n and t["rps"] and n["rps"]:
            ratio = t["rps"] / n["rps"]
            checks.append(check(
                f"Throughput {workload} at c=64: tollgate ≥ 0.8 × nginx",
                ratio >= 0.8,
                f"tollgate {t['rps']:,.0f} req/s, nginx {n['rps']:,.0f} req/s, ratio {ratio:.2f}× (floor 0.80×)"))
        else:
            checks.append(check(f"Throughput {workload} at c=64: tollgate ≥ 0.8 × nginx", None, "not measured"))

    for workload in WORKLOADS:
        t = find_case(result, "tollgate", workload, "c16")
        d = find_case(result, "direct", workload, "c16")
        n = find_case(result, "nginx", workload, "c16")
        if t and d:
            added = t["p99_ms"] - d["p99_ms"]
            nginx_note = f"; nginx {n['p99_ms']:.3f} ms (+{n['p99_ms'] - d['p99_ms']:.3f})" if n else ""
            checks.append(check(
                f"p99 {workload} at c=16: tollgate ≤ direct + 1 ms",
                added <= 1.0,
                f"tollgate {t['p99_ms']:.3f} ms, direct {d['p99_ms']:.3f} ms, added {added:+.3f} ms{nginx_note}"))
        else:
            checks.append(check(f"p99 {workload} at c=16: tollgate ≤ direct + 1 ms", None, "not measured"))

    # Context, not a budget line: at c=16 the machine is saturated and p99 is mostly
    # queueing; the open-loop run shows the latency added when it is not.
    for workload in WORKLOADS:
        t = find_case(result, "tollgate", workload, "rate")
        d = find_case(result, "direct", workload, "rate")
        if t and d:
            checks.append(info(
                f"p99 {workload}, open loop: tollgate vs direct",
                f"tollgate {t['p99_ms']:.3f} ms, direct {d['p99_ms']:.3f} ms, "
                f"added {t['p99_ms'] - d['p99_ms']:+.3f} ms; p50 added "
                f"{t['p50_ms'] - d['p50_ms']:+.3f} ms"))

    # Context, not a budget line: the same figures for the floors, proxy loops with
    # nothing on them, which bound from below what a gateway built on them can reach.
    for target, label in FLOORS:
        checks += floor_context(result, target, label)

    added = result["ttft_added_ms"].get("tollgate")
    ttft = result["slow_ttft"]
    if added:
        nginx_added = result["ttft_added_ms"].get("nginx")
        nginx_note = f"; nginx adds {nginx_added['p99']:+.3f} ms" if nginx_added else ""
        checks.append(check(
            "TTFT added by tollgate ≤ 1 ms at p99",
            added["p99"] <= 1.0,
            f"p99 tollgate {ttft['tollgate']['ttft_ms']['p99']:.3f} ms vs direct "
            f"{ttft['direct']['ttft_ms']['p99']:.3f} ms: {added['p99']:+.3f} ms "
            f"(p50 {added['p50']:+.3f} ms){nginx_note}"))
    else:
        checks.append(check("TTFT added by tollgate ≤ 1 ms at p99", None, "not measured"))

    idle = result["idle_rss_mib"].get("tollgate", {})
    if "start" in idle:
        after = f", {idle['after_load']:.1f} MiB after the load runs" if "after_load" in idle else ""
        checks.append(check("Idle RSS of tollgate ≤ 30 MB", idle["start"] <= 30.0,
                            f"{idle['start']:.1f} MiB at start{after}"))
    else:
        checks.append(check("Idle RSS of tollgate ≤ 30 MB", None, "not measured"))

    hold = result["hold_streams"].get("tollgate")
    if hold and hold.get("rss_during_max_mib") is not None:
        during = peak_mib(hold)
        held = hold["held_open_at_release"]
        full = held >= hold["requested"]
        checks.append(check(
            f"{hold['requested']:,} open streams: tollgate RSS ≤ 250 MB",
            during <= 250.0 and full,
            f"{during:.1f} MiB peak with {held:,}/{hold['requested']:,} streams open "
            f"(before {hold['rss_before_mib']:.1f} MiB)"))
        before, after = hold["rss_before_mib"], hold["rss_after_mib"]
        allowed = max(NEAR_IDLE_MIB, NEAR_IDLE_FRACTION * (during - before))
        checks.append(check(
            "RSS returns near idle after the streams close",
            after is not None and after - before <= allowed,
            f"before {before:.1f} MiB, during {during:.1f} MiB, after {fmt(after, 1)} MiB "
            f"(allowed: before + {allowed:.1f} MiB)"))
    else:
        checks.append(check("Open streams: tollgate RSS ≤ 250 MB", None, "not measured"))
    return checks


# --- markdown -----------------------------------------------------------------------------

def markdown(result):
    m = result["machine"]
    s = m.get("settings", {})
    lines = [
        f"# Load harness results — {m.get('date', '?')}, commit {m.get('commit', '?')}"
        + (" (uncommitted changes in src/)" if m.get("tollgate_src_dirty") else ""),
        "",
        f"Machine: {m.get('nproc')} cores ({m.get('cpu_model')}), kernel {m.get('kernel')}, "
        f"{m.get('rustc')}, nginx {m.get('nginx')}, {m.get('oha')}."
        + (" **Smoke run: figures are indicative only.**" if m.get("smoke") else ""),
        "",
        f"Each load run: {s.get('warmup_s')} s warm-up, then {s.get('duration_s')} s measured; "
        f"open loop at {s.get('rate')} req/s. Streams: {s.get('chunks')} chunks + usage + [DONE]. "
        "Generator, proxy and mock share the same cores, so req/s and latency include "
        "contention; CPU ms/request (utime+stime from /proc over the run ÷ responses) is the "
        "steady figure. nginx CPU and RSS are summed over master and workers. `pingora` is "
        "bench-pingora-floor: Pingora's own proxy loop with nothing on it (no body parsing, "
        "policy, metrics or log), the floor of any gateway built on Pingora. `hyper` is "
        "bench-hyper-floor --on-pingora: a Pingora server (listeners, runtime) serving hyper's "
        "HTTP/1 proxy loop with nothing on it, the floor of a gateway that keeps Pingora's "
        "server and replaces its HTTP session layer.",
        "",
        "## Budget",
        "",
    ]
    for c in result["budget"]:
        lines.append(f"- **{c['status']}** {c['check']}: {c['figures']}")
    lines += [
        "",
        "## Load cases",
        "",
        "| workload | load | case | req/s | p50 ms | p90 ms | p99 ms | TTFB p50 / p99 ms | errors | proxy CPU ms/req | mock CPU ms/req | proxy peak RSS MiB |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for c in result["cases"]:
        lines.append(
            f"| {c['workload']} | {MODE_LABEL[c['mode']]} | {c['target']} | {fmt(c['rps'], 0)} | "
            f"{fmt(c['p50_ms'], 3)} | {fmt(c['p90_ms'], 3)} | {fmt(c['p99_ms'], 3)} | "
            + (f"{fmt(c['ttfb_p50_ms'], 3)} / {fmt(c['ttfb_p99_ms'], 3)}" if c["workload"] == "stream" else "")
            + f" | {c['errors']} | "
            f"{fmt(c['proxy_cpu_ms_per_req'], 4)} | {fmt(c['mock_cpu_ms_per_req'], 4)} | "
            f"{fmt(c['proxy_peak_rss_mib'], 1)} |")

    lines += [
        "",
        "## Streams one at a time: time to first byte (fast mock, concurrency 1, bench-client)",
        "",
        "| case | requests | errors | TTFB p50 ms | TTFB p99 ms | first event p50 ms | first event p99 ms | whole stream p50 ms | whole stream p99 ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for t in TARGETS:
        d = result["stream_ttfb"].get(t)
        if not d:
            continue
        b, e, tot = d.get("ttfb_ms") or {}, d.get("ttft_ms") or {}, d.get("total_ms") or {}
        lines.append(
            f"| {t} | {d['requests_ok']} | {d['errors']} | {fmt(b.get('p50'), 3)} | {fmt(b.get('p99'), 3)} | "
            f"{fmt(e.get('p50'), 3)} | {fmt(e.get('p99'), 3)} | {fmt(tot.get('p50'), 3)} | {fmt(tot.get('p99'), 3)} |")

    lines += [
        "",
        f"## Slow mock: time to first token ({s.get('slow_delay_ms')} ms before each chunk, concurrency 4)",
        "",
        "| case | requests | errors | TTFT p50 ms | TTFT p99 ms | added p50 ms | added p99 ms |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for t in TARGETS:
        d = result["slow_ttft"].get(t)
        if not d:
            continue
        e = d.get("ttft_ms") or {}
        added = result["ttft_added_ms"].get(t, {})
        lines.append(
            f"| {t} | {d['requests_ok']} | {d['errors']} | {fmt(e.get('p50'), 3)} | {fmt(e.get('p99'), 3)} | "
            f"{fmt(added.get('p50'), 3)} | {fmt(added.get('p99'), 3)} |")

    lines += [
        "",
        "## Memory",
        "",
        "| case | idle RSS at start MiB | idle after load MiB | streams open | RSS before MiB | RSS with streams open MiB | RSS after close MiB |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for t in PROXIES:
        idle = result["idle_rss_mib"].get(t, {})
        h = result["hold_streams"].get(t) or {}
        during = peak_mib(h) if h.get("rss_during_max_mib") is not None else None
        opened = f"{h['held_open_at_release']:,}/{h['requested']:,}" if h else "–"
        lines.append(
            f"| {t} | {fmt(idle.get('start'), 1)} | {fmt(idle.get('after_load'), 1)} | {opened} | "
            f"{fmt(h.get('rss_before_mib'), 1)} | {fmt(during, 1)} | {fmt(h.get('rss_after_mib'), 1)} |")
    lines += ["", f"Chart: `{result['name']}.png`.", ""]
    return "\n".join(lines)


# --- chart --------------------------------------------------------------------------------

COLORS = {"direct": "#9e9e9e", "nginx": "#2e7d32", "pingora": "#ef6c00", "hyper": "#8e24aa",
          "tollgate": "#1565c0"}


def chart(result, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = result["cases"]
    groups = [(w, m) for w in WORKLOADS for m in MODES if any(
        c["workload"] == w and c["mode"] == m for c in cases)]
    fig, axes = plt.subplots(3, 1, figsize=(13, 13))
    fig.suptitle(f"tollgate load harness — {result['machine'].get('date', '')} "
                 f"commit {result['machine'].get('commit', '')}", fontsize=13)

    # 1. Latency percentiles: a bar per target, p50 solid, p90 and p99 stacked lighter.
    ax = axes[0]
    width = 0.8 / len(TARGETS)
    for gi, (w, m) in enumerate(groups):
        for ti, t in enumerate(TARGETS):
            c = find_case(result, t, w, m)
            if not c or c["p50_ms"] is None:
                continue
            x = gi + (ti - (len(TARGETS) - 1) / 2) * width
            ax.bar(x, c["p99_ms"], width, color=COLORS[t], alpha=0.3)
            ax.bar(x, c["p90_ms"], width, color=COLORS[t], alpha=0.55)
            ax.bar(x, c["p50_ms"], width, color=COLORS[t], alpha=1.0,
                   label=t if gi == 0 else None)
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels([f"{w}\n{MODE_LABEL[m]}" for w, m in groups])
    ax.set_yscale("log")
    ax.set_ylabel("latency ms (log)")
    ax.set_title("Latency per case: p50 (solid), p90 (mid), p99 (light)")
    ax.legend(loc="upper left")
    ax.grid(axis="y", which="both", alpha=0.3)

    # 2. CPU per request of the proxy (and the mock for scale).
    ax = axes[1]
    for gi, (w, m) in enumerate(groups):
        for ti, t in enumerate(PROXIES):
            c = find_case(result, t, w, m)
            if not c or c["proxy_cpu_ms_per_req"] is None:
                continue
            x = gi + (ti - (len(PROXIES) - 1) / 2) * width
            ax.bar(x, c["proxy_cpu_ms_per_req"] * 1000, width, color=COLORS[t],
                   label=t if gi == 0 else None)
            ax.text(x, c["proxy_cpu_ms_per_req"] * 1000, f"{c['proxy_cpu_ms_per_req'] * 1000:.0f}",
                    ha="center", va="bottom", fontsize=8)
        d = find_case(result, "direct", w, m)
        if d and d["mock_cpu_ms_per_req"] is not None:
            half = len(PROXIES) / 2 * width
            ax.plot([gi - half, gi + half], [d["mock_cpu_ms_per_req"] * 1000] * 2, color="black",
                    linestyle=":", label="mock (direct)" if gi == 0 else None)
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels([f"{w}\n{MODE_LABEL[m]}" for w, m in groups])
    ax.set_ylabel("proxy CPU µs / request")
    ax.set_title("Proxy CPU per request (utime+stime from /proc)")
    ax.legend(loc="upper left")
    ax.grid(axis="y", alpha=0.3)

    # 3. Throughput and TTFT added.
    ax = axes[2]
    closed = [(w, m) for w, m in groups if m != "rate"]
    for gi, (w, m) in enumerate(closed):
        for ti, t in enumerate(TARGETS):
            c = find_case(result, t, w, m)
            if not c or c["rps"] is None:
                continue
            ax.bar(gi + (ti - (len(TARGETS) - 1) / 2) * width, c["rps"], width, color=COLORS[t],
                   label=t if gi == 0 else None)
    ax.set_xticks(range(len(closed)))
    ax.set_xticklabels([f"{w}\n{MODE_LABEL[m]}" for w, m in closed])
    ax.set_ylabel("requests / s")
    added = result["ttft_added_ms"]
    note = ", ".join(f"{t} {added[t]['p50']:+.2f}/{added[t]['p99']:+.2f} ms" for t in added)
    ax.set_title("Throughput, closed loop" + (f"\nTTFT added over direct (p50/p99): {note}" if note else ""))
    ax.legend(loc="upper left")
    ax.grid(axis="y", alpha=0.3)

    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    raw, out_dir, name = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
    out_dir.mkdir(parents=True, exist_ok=True)
    result = build(raw)
    result["name"] = name
    (out_dir / f"{name}.json").write_text(json.dumps(result, indent=1) + "\n")
    md = markdown(result)
    (out_dir / f"{name}.md").write_text(md)
    chart(result, out_dir / f"{name}.png")
    for ext in ["json", "md", "png"]:
        shutil.copyfile(out_dir / f"{name}.{ext}", out_dir / f"latest.{ext}")
    print(md)
    print(f"written: {out_dir}/{name}.{{json,md,png}} and latest.*", file=sys.stderr)


if __name__ == "__main__":
    main()
