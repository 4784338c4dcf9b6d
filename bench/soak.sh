#!/usr/bin/env bash
# Soak run (not CI): SOAK_SECONDS of mixed traffic through tollgate, its RSS and open file
# descriptors sampled every second, and every request the client sent matched with the
# gateway's access log.
#
#   bench/soak.sh           10 minutes; writes bench/results/soak-<date>-<commit>.{json,md,png}
#   bench/soak.sh --smoke   30 s; writes bench/results/tmp/
#
# Knobs: SOAK_SECONDS (600, smoke 30), SOAK_RATE (requests/s, 150), SOAK_CONCURRENCY
# (client connections, 32), SOAK_WARMUP (seconds left out of the flatness check, 60,
# smoke 5), SOAK_PORT_OFFSET (0), BENCH_SKIP_SETUP=1 (do not install matplotlib).
#
# What runs, on 127.0.0.1 (ports + SOAK_PORT_OFFSET): bench-upstream healthy (19401) and
# flaky (19402: every 3rd request 503, every 4th stream cut mid-body), nothing on 19403
# (a dead endpoint), tollgate (19410, admin 19411) with bench/conf/soak.yaml, and
# bench/soak_client.py. See bench/README.md, "Soak".
set -euo pipefail

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$BENCH_DIR/.." && pwd)"
cd "$ROOT"

SMOKE=0
case "${1:-}" in
    --smoke) SMOKE=1 ;;
    -h | --help) sed -n '2,17p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    "") ;;
    *) echo "soak.sh: unknown argument $1" >&2; exit 2 ;;
esac
if [ "$SMOKE" -eq 1 ]; then
    SECS="${SOAK_SECONDS:-30}"; WARMUP="${SOAK_WARMUP:-5}"
else
    SECS="${SOAK_SECONDS:-600}"; WARMUP="${SOAK_WARMUP:-60}"
fi
RATE="${SOAK_RATE:-150}"
CONCURRENCY="${SOAK_CONCURRENCY:-32}"
OFFSET="${SOAK_PORT_OFFSET:-0}"
MATPLOTLIB_VERSION="3.11.2"   # as bench/run.sh
VENV="$BENCH_DIR/.venv"
HEALTHY_PORT=$((19401 + OFFSET))
FLAKY_PORT=$((19402 + OFFSET))
DEAD_PORT=$((19403 + OFFSET))
GW_PORT=$((19410 + OFFSET))
ADMIN_PORT=$((19411 + OFFSET))
KEY=soak-client-key

STAMP="$(date -u +%Y%m%dT%H%M%SZ)"
COMMIT="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
RUN_DIR="$BENCH_DIR/results/tmp/soak-$STAMP"
mkdir -p "$RUN_DIR"

say() { printf '[soak %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { printf '[soak] error: %s\n' "$*" >&2; exit 1; }

STARTED_PIDS=()
cleanup() {
    local rc=$? pid tries
    trap - EXIT INT TERM
    for pid in "${STARTED_PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${STARTED_PIDS[@]}"; do
        for ((tries = 0; tries < 50; tries++)); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
    done
    wait 2>/dev/null || true
    [ "$rc" -eq 0 ] || say "failed (exit $rc); logs in $RUN_DIR"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_for_port() {
    local tries
    for ((tries = 0; tries < 100; tries++)); do
        port_in_use "$1" && return 0
        sleep 0.1
    done
    die "$2 did not listen on 127.0.0.1:$1 within 10 s (logs: $RUN_DIR)"
}

# --- tools and build ---------------------------------------------------------------------
if [ "${BENCH_SKIP_SETUP:-0}" != 1 ] &&
    ! "$VENV/bin/python" -c "import matplotlib; assert matplotlib.__version__ == '$MATPLOTLIB_VERSION'" 2>/dev/null; then
    say "python venv bench/.venv with matplotlib $MATPLOTLIB_VERSION"
    rm -rf "$VENV"
    python3 -m venv "$VENV"
    PIP_DISABLE_PIP_VERSION_CHECK=1 "$VENV/bin/python" -m pip install -q --no-input \
        "matplotlib==$MATPLOTLIB_VERSION"
fi
PY=python3
[ -x "$VENV/bin/python" ] && PY="$VENV/bin/python"

say "cargo build --release -p tollgate -p tollgate-bench"
cargo build --release --quiet -p tollgate -p tollgate-bench
TARGET_DIR="$(cargo metadata --format-version 1 --no-deps |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')"
UPSTREAM_BIN="$TARGET_DIR/release/bench-upstream"
TOLLGATE_BIN="$TARGET_DIR/release/tollgate"

for port in "$HEALTHY_PORT" "$FLAKY_PORT" "$DEAD_PORT" "$GW_PORT" "$ADMIN_PORT"; do
    if port_in_use "$port"; then die "port $port is in use: is another run going on?"; fi
done
ulimit -n "$(ulimit -Hn | sed 's/unlimited/65536/')" 2>/dev/null || true

# --- start -------------------------------------------------------------------------------
python3 - "$OFFSET" "$RUN_DIR" "$BENCH_DIR" <<'PY'
import re, sys
offset, run_dir, bench_dir = int(sys.argv[1]), sys.argv[2], sys.argv[3]
conf = open(f"{bench_dir}/conf/soak.yaml").read()
conf = re.sub(r"127\.0\.0\.1:(\d+)", lambda m: f"127.0.0.1:{int(m[1]) + offset}", conf)
conf = re.sub(r"(?m)^(\s*pid_file:).*$", rf"\1 {run_dir}/tollgate.pid", conf)
conf = re.sub(r"(?m)^(\s*upgrade_sock:).*$", rf"\1 {run_dir}/tollgate-upgrade.sock", conf)
conf = re.sub(r"(?m)^(\s*access:).*$", rf"\1 {run_dir}/access.log", conf)
open(f"{run_dir}/soak.yaml", "w").write(conf)
PY
"$TOLLGATE_BIN" --validate -c "$RUN_DIR/soak.yaml" >/dev/null

say "starting mocks and tollgate (run directory ${RUN_DIR#"$ROOT"/})"
"$UPSTREAM_BIN" --listen "127.0.0.1:$HEALTHY_PORT" --chunks 20 --chunk-delay-ms 10 \
    >"$RUN_DIR/mock-healthy.log" 2>&1 &
STARTED_PIDS+=("$!")
"$UPSTREAM_BIN" --listen "127.0.0.1:$FLAKY_PORT" --chunks 20 --chunk-delay-ms 10 \
    --fail-every 3 --cut-every 4 >"$RUN_DIR/mock-flaky.log" 2>&1 &
STARTED_PIDS+=("$!")
wait_for_port "$HEALTHY_PORT" mock-healthy
wait_for_port "$FLAKY_PORT" mock-flaky
"$TOLLGATE_BIN" -c "$RUN_DIR/soak.yaml" >"$RUN_DIR/tollgate.out" 2>"$RUN_DIR/tollgate.log" &
GW_PID="$!"
STARTED_PIDS+=("$GW_PID")
wait_for_port "$GW_PORT" tollgate
sleep 2   # first health checks

# --- sample and load ---------------------------------------------------------------------
# t (s since start), RSS (kB), open fds, every second; bounded in count, stops with the pid.
sample() {
    local i key value _ rss fds t0=$SECONDS
    echo "t,rss_kb,fds" >"$RUN_DIR/samples.csv"
    for ((i = 0; i < SECS + 120; i++)); do
        [ -e "$RUN_DIR/sampling.stop" ] && break
        rss=""
        while read -r key value _; do
            [ "$key" = VmRSS: ] && { rss="$value"; break; }
        done <"/proc/$GW_PID/status" 2>/dev/null || break
        fds="$(find "/proc/$GW_PID/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l)"
        echo "$((SECONDS - t0)),$rss,$fds" >>"$RUN_DIR/samples.csv"
        sleep 1
    done
}
sample &
SAMPLER_PID="$!"
STARTED_PIDS+=("$SAMPLER_PID")

sleep 3   # idle baseline samples
say "load: ${SECS}s at up to ${RATE} req/s over ${CONCURRENCY} connections"
client_rc=0
python3 "$BENCH_DIR/soak_client.py" --port "$GW_PORT" --key "$KEY" --seconds "$SECS" \
    --rate "$RATE" --concurrency "$CONCURRENCY" --out "$RUN_DIR/client.json" \
    >"$RUN_DIR/client.out" 2>"$RUN_DIR/client.err" || client_rc=$?
say "load over (client exit $client_rc); idle for 10 s"
sleep 10   # the access log is written as each request ends; the fds settle
touch "$RUN_DIR/sampling.stop"
wait "$SAMPLER_PID" 2>/dev/null || true
kill -0 "$GW_PID" 2>/dev/null || die "tollgate is gone (log: $RUN_DIR/tollgate.log)"
[ -s "$RUN_DIR/client.json" ] || die "the client wrote no results (see $RUN_DIR/client.err)"

# --- report ------------------------------------------------------------------------------
if [ "$SMOKE" -eq 1 ]; then OUT_DIR="$BENCH_DIR/results/tmp"; else OUT_DIR="$BENCH_DIR/results"; fi
"$PY" "$BENCH_DIR/soak_report.py" --run-dir "$RUN_DIR" --out-dir "$OUT_DIR" \
    --name "soak-$STAMP-$COMMIT" --seconds "$SECS" --warmup "$WARMUP" --rate "$RATE" \
    --concurrency "$CONCURRENCY" --commit "$COMMIT"
