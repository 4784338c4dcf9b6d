#!/usr/bin/env python3
"""Turns one bench/soak.sh run into the committed results: OUT_DIR/NAME.{json,md,png}.

Memory and file descriptors: the gateway's RSS and open fds sampled every second; the
figures at the start (right after the warm-up), the middle and the end of the load are
medians over 10 s; "flat" means the end is within max(8 MiB, 10 %) of the start for RSS
and within 16 of it for fds, and the least-squares slope after warm-up is small.

Requests: every request the client sent (its own x-request-id) must have exactly one
access-log line, and the access log no line the client did not send; a request is lost
when the client saw neither a success, nor an OpenAI error, nor its own hang-up.
"""

import argparse
import collections
import csv
import json
import statistics
from pathlib import Path

RSS_FLAT_MIB = 8.0
RSS_FLAT_FRACTION = 0.10
FDS_FLAT = 16


def samples(path):
    rows = []
    with open(path) as f:
        for r in csv.DictReader(f):
            if r["rss_kb"] and r["fds"]:
                rows.append((int(r["t"]), int(r["rss_kb"]) / 1024.0, int(r["fds"])))
    return rows


def window(rows, t_mid, half=5):
    near = [r for r in rows if abs(r[0] - t_mid) <= half] or rows[-1:]
    return {"t": t_mid, "rss_mib": round(statistics.median(r[1] for r in near), 1),
            "fds": int(statistics.median(r[2] for r in near))}


def slope_per_min(points):
    if len(points) < 3:
        return 0.0
    xs = [p[0] for p in points]
    ys = [p[1] for p in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return 0.0 if den == 0 else 60.0 * sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / den


def main():
    p = argparse.ArgumentParser()
    for name in ("run-dir", "out-dir", "name", "commit"):
        p.add_argument(f"--{name}", required=True)
    for name in ("seconds", "warmup", "rate", "concurrency"):
        p.add_argument(f"--{name}", type=float, required=True)
    a = p.parse_args()
    run, out = Path(a.run_dir), Path(a.out_dir)
    out.mkdir(parents=True, exist_ok=True)

    rows = samples(run / "samples.csv")
    client = json.loads((run / "client.json").read_text())
    reqs = client["requests"]
    # The load starts about 3 s after sampling does (soak.sh); the client's t is from its
    # own start.
    load_start = 3
    load_end = load_start + a.seconds
    t_start = load_start + a.warmup
    t_mid = (t_start + load_end) / 2
    t_end = load_end - 6
    idle = rows[:3]
    after = [r for r in rows if r[0] > load_end + 3]
    start, mid, end = window(rows, t_start), window(rows, t_mid), window(rows, t_end)
    steady = [r for r in rows if t_start <= r[0] <= load_end]
    rss_slope = slope_per_min([(r[0], r[1]) for r in steady])
    fds_slope = slope_per_min([(r[0], r[2]) for r in steady])
    rss_allow = max(RSS_FLAT_MIB, RSS_FLAT_FRACTION * start["rss_mib"])
    rss_flat = end["rss_mib"] - start["rss_mib"] <= rss_allow
    fds_flat = end["fds"] - start["fds"] <= FDS_FLAT
    memory = {
        "idle_before": {"rss_mib": round(statistics.median(r[1] for r in idle), 1) if idle else None,
                        "fds": int(statistics.median(r[2] for r in idle)) if idle else None},
        "start": start, "middle": mid, "end": end,
        "idle_after": {"rss_mib": round(statistics.median(r[1] for r in after), 1) if after else None,
                       "fds": int(statistics.median(r[2] for r in after)) if after else None},
        "peak_rss_mib": round(max(r[1] for r in rows), 1),
        "peak_fds": max(r[2] for r in rows),
        "rss_slope_mib_per_min": round(rss_slope, 3),
        "fds_slope_per_min": round(fds_slope, 3),
        "rss_flat": rss_flat, "fds_flat": fds_flat,
        "rss_allowance_mib": round(rss_allow, 1),
    }

    # Requests: client outcomes against access-log lines, by x-request-id.
    log_lines = collections.Counter()
    log_status = {}
    log_gone = {}
    other_lines = 0
    for line in (run / "access.log").read_text().splitlines():
        try:
            obj = json.loads(line)
        except ValueError:
            other_lines += 1
            continue
        rid = obj.get("request_id", "")
        log_lines[rid] += 1
        log_status[rid] = obj.get("status")
        log_gone[rid] = obj.get("client_gone")
    outcomes = collections.Counter(r["outcome"] for r in reqs)
    by_kind = collections.defaultdict(collections.Counter)
    for r in reqs:
        by_kind[r["kind"]][r["outcome"]] += 1
    sent = {r["id"] for r in reqs}
    missing = sorted(i for i in sent if log_lines[i] == 0)
    duplicated = sorted(i for i in sent if log_lines[i] > 1)
    unknown = sorted(i for i in log_lines if i not in sent)
    status_mismatch = [
        {"id": r["id"], "client": r["status"], "log": log_status.get(r["id"])}
        for r in reqs
        if r["outcome"] in ("ok", "openai_error") and log_status.get(r["id"]) != r["status"]
    ]
    lost = [r for r in reqs if r["outcome"] == "lost"]
    errors = collections.Counter(
        f'{r["kind"]}: {r["status"]} {r["detail"]}' for r in reqs if r["outcome"] == "openai_error")
    log_status_counts = collections.Counter(str(log_status[i]) for i in log_lines)
    requests = {
        "client_requests": len(reqs),
        "client_outcomes": dict(outcomes),
        "by_kind": {k: dict(v) for k, v in sorted(by_kind.items())},
        "access_log_lines": sum(log_lines.values()) + other_lines,
        "access_log_statuses": dict(sorted(log_status_counts.items())),
        "access_log_client_gone": sum(1 for i in log_gone if log_gone[i]),
        "missing_from_log": len(missing), "duplicated_in_log": len(duplicated),
        "unknown_in_log": len(unknown), "unparsed_log_lines": other_lines,
        "status_mismatches": len(status_mismatch),
        "lost": len(lost),
        "openai_errors_seen": dict(errors.most_common(12)),
        "examples": {"missing": missing[:5], "duplicated": duplicated[:5], "unknown": unknown[:5],
                     "status_mismatch": status_mismatch[:5],
                     "lost": [{k: r[k] for k in ("id", "kind", "detail", "t")} for r in lost[:10]]},
    }
    agree = (not missing and not duplicated and not unknown and not other_lines
             and not status_mismatch)
    verdict = {"no_request_lost": not lost and agree, "log_and_client_agree": agree,
               "rss_flat": rss_flat, "fds_flat": fds_flat}
    result = {"name": a.name, "commit": a.commit,
              "settings": {"seconds": a.seconds, "warmup": a.warmup, "rate": a.rate,
                           "concurrency": a.concurrency, "client": client["summary"]["settings"],
                           "mix": client["summary"]["kinds"]},
              "verdict": verdict, "memory": memory, "requests": requests,
              "samples": [{"t": r[0], "rss_mib": round(r[1], 2), "fds": r[2]} for r in rows]}
    (out / f"{a.name}.json").write_text(json.dumps(result, indent=1) + "\n")
    chart_note = chart(rows, (load_start, t_start, load_end), out / f"{a.name}.png")
    (out / f"{a.name}.md").write_text(markdown(result, chart_note))
    print((out / f"{a.name}.md").read_text())


def yes(b):
    return "yes" if b else "**NO**"


def markdown(r, chart_note):
    m, q, s, v = r["memory"], r["requests"], r["settings"], r["verdict"]
    lines = [
        f"# Soak run {r['name']}",
        "",
        f"{s['seconds']:.0f} s of mixed traffic at up to {s['rate']:.0f} requests/s over "
        f"{s['concurrency']:.0f} client connections (bench/soak.sh, bench/conf/soak.yaml); "
        f"tollgate release build at {r['commit']}. Warm-up left out of the flatness check: "
        f"{s['warmup']:.0f} s.",
        "",
        "## Verdict",
        "",
        f"- RSS flat after warm-up: {yes(v['rss_flat'])} "
        f"(end − start {m['end']['rss_mib'] - m['start']['rss_mib']:+.1f} MiB, allowed "
        f"{m['rss_allowance_mib']} MiB; slope {m['rss_slope_mib_per_min']:+.3f} MiB/min)",
        f"- Open fds flat after warm-up: {yes(v['fds_flat'])} "
        f"(end − start {m['end']['fds'] - m['start']['fds']:+d}; slope "
        f"{m['fds_slope_per_min']:+.3f}/min)",
        f"- Access log and client agree, request by request: {yes(v['log_and_client_agree'])}",
        f"- No request lost: {yes(v['no_request_lost'])}",
        "",
        "## Memory and file descriptors",
        "",
        "| when | t (s) | RSS (MiB) | open fds |",
        "|---|---|---|---|",
        f"| idle, before the load | 0–2 | {m['idle_before']['rss_mib']} | {m['idle_before']['fds']} |",
        f"| start (after warm-up) | {m['start']['t']:.0f} | {m['start']['rss_mib']} | {m['start']['fds']} |",
        f"| middle | {m['middle']['t']:.0f} | {m['middle']['rss_mib']} | {m['middle']['fds']} |",
        f"| end | {m['end']['t']:.0f} | {m['end']['rss_mib']} | {m['end']['fds']} |",
        f"| idle, after the load | +3–10 | {m['idle_after']['rss_mib']} | {m['idle_after']['fds']} |",
        "",
        f"Peak: {m['peak_rss_mib']} MiB RSS, {m['peak_fds']} fds. Medians over 10 s around each "
        f"point; samples every second in the JSON. {chart_note}",
        "",
        "## Requests",
        "",
        f"Client: **{q['client_requests']}** requests — "
        + ", ".join(f"{k} {n}" for k, n in sorted(q["client_outcomes"].items())) + ".",
        f"Access log: **{q['access_log_lines']}** lines (statuses "
        + ", ".join(f"{k}: {n}" for k, n in q["access_log_statuses"].items())
        + f"; client_gone {q['access_log_client_gone']}).",
        f"Matched by x-request-id: missing from the log {q['missing_from_log']}, logged twice "
        f"{q['duplicated_in_log']}, logged but never sent {q['unknown_in_log']}, status "
        f"differs {q['status_mismatches']}; lost {q['lost']}.",
        "",
        "| kind | " + " | ".join(["ok", "openai_error", "disconnected", "lost"]) + " |",
        "|---|---|---|---|---|",
    ]
    for kind, c in q["by_kind"].items():
        lines.append(f"| {kind} | " + " | ".join(str(c.get(k, 0)) for k in
                                                  ("ok", "openai_error", "disconnected", "lost")) + " |")
    lines += ["", "OpenAI errors the client saw (kind: status code):", ""]
    lines += [f"- {k}: {n}" for k, n in q["openai_errors_seen"].items()] or ["- none"]
    if q["lost"] or not v["log_and_client_agree"]:
        lines += ["", "Examples: `" + json.dumps(q["examples"]) + "`"]
    lines.append("")
    return "\n".join(lines)


def chart(rows, marks, path):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "No chart: matplotlib is not installed."
    load_start, t_start, load_end = marks
    ts = [r[0] for r in rows]
    fig, ax1 = plt.subplots(figsize=(10, 4.5))
    ax1.plot(ts, [r[1] for r in rows], color="tab:blue", label="RSS (MiB)")
    ax1.set_xlabel("seconds")
    ax1.set_ylabel("RSS (MiB)", color="tab:blue")
    ax1.set_ylim(bottom=0)
    ax2 = ax1.twinx()
    ax2.plot(ts, [r[2] for r in rows], color="tab:orange", label="open fds")
    ax2.set_ylabel("open fds", color="tab:orange")
    ax2.set_ylim(bottom=0)
    for x, label in ((load_start, "load"), (t_start, "warm-up over"), (load_end, "load ends")):
        ax1.axvline(x, color="grey", linestyle=":", linewidth=1)
        ax1.text(x, ax1.get_ylim()[1] * 0.02, f" {label}", color="grey", fontsize=8)
    ax1.set_title("tollgate under mixed traffic: RSS and open file descriptors, sampled every second")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return f"Chart: `{path.name}`."


if __name__ == "__main__":
    main()
