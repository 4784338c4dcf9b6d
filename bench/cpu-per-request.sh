#!/usr/bin/env bash
# CPU cost per request of tollgate, independent of wall time: starts the fast mock and a
# tollgate on loopback, sends a fixed number of requests with bench-client (keep-alive,
# closed loop), and divides tollgate's utime+stime (/proc), context switches and,
# optionally, syscalls (strace -c) by the number of requests.
#
#   bench/cpu-per-request.sh [nonstream|stream] [requests] [concurrency]
#
# Environment: CPR_PORT_BASE (default 29100: mock on +1, tollgate on +200),
# CPR_STRACE=1 to count syscalls too (slows the run; its CPU figure is then not used),
# CPR_PERF_RECORD=FILE to record a perf profile of tollgate during the run (CPR_PERF_ARGS
# adds perf record options, e.g. "--call-graph dwarf,8192" or "-e page-faults"),
# CPR_PROXY=floor|hyper|nginx to measure bench-pingora-floor, bench-hyper-floor (HYPER_ARGS=
# --on-pingora: on a Pingora server) or nginx in tollgate's place,
# CPR_WORK_STEALING=false for Pingora's per-thread runtimes,
# CPR_EXTRA_YAML='log: {access: off}' to append top-level sections to the config,
# CPR_POLICY=1 to turn on the harness's policy stack (API key, rpm/tpm/concurrency limits,
# a USD and a token budget, the admin listener with metrics),
# CPR_CALLGRIND=FILE to run tollgate under callgrind and print the instructions per request
# on its request path: for non-stream requests a count that repeats from run to run, unlike
# CPU time on a shared machine (not for streams, whose reads and polls depend on timing; use
# a few thousand requests; the CPU figure is then not meaningful),
# TOLLGATE_BIN / UPSTREAM_BIN / CLIENT_BIN to pick binaries (default target/release).
set -euo pipefail

MODE="${1:-nonstream}"
REQUESTS="${2:-20000}"
CONC="${3:-16}"
BASE="${CPR_PORT_BASE:-29100}"
MOCK_PORT=$((BASE + 1))
TG_PORT=$((BASE + 200))
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
REL="${CARGO_TARGET_DIR:-$ROOT/target}/release"
TOLLGATE_BIN="${TOLLGATE_BIN:-$REL/tollgate}"
UPSTREAM_BIN="${UPSTREAM_BIN:-$REL/bench-upstream}"
CLIENT_BIN="${CLIENT_BIN:-$REL/bench-client}"
FLOOR_BIN="${FLOOR_BIN:-$REL/bench-pingora-floor}"
HYPER_BIN="${HYPER_BIN:-$REL/bench-hyper-floor}"
DIR="$(mktemp -d /tmp/cpr.XXXXXX)"
CLK_TCK="$(getconf CLK_TCK)"
PIDS=()

cleanup() {
    for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do
        for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$p" 2>/dev/null || true
    done
    [ -n "${KEEP:-}" ] || rm -rf "$DIR"
}
trap cleanup EXIT

# Tools beyond the build: nginx comes with bench/run.sh's setup (or apt-get install
# nginx-light), strace and perf with apt-get install strace linux-perf.
need() { command -v "$1" >/dev/null 2>&1 || { echo "$1 is not installed: $2" >&2; exit 2; }; }
[ "${CPR_PROXY:-tollgate}" != nginx ] || need nginx "apt-get install nginx-light (bench/run.sh installs it)"
[ "${CPR_STRACE:-0}" != 1 ] || need strace "apt-get install strace"
[ -z "${CPR_PERF_RECORD:-}" ] || need perf "apt-get install linux-perf"
[ -z "${CPR_CALLGRIND:-}" ] || need valgrind "apt-get install valgrind"

# wait_port PORT [TRIES]: polls every 0.1 s.
wait_port() {
    for _ in $(seq "${2:-100}"); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    echo "port $1 did not open" >&2
    exit 1
}

cat >"$DIR/tollgate.yaml" <<EOF
server:
  threads: ${CPR_THREADS:-2}
  work_stealing: ${CPR_WORK_STEALING:-true}
  grace_period_seconds: 1
  graceful_shutdown_timeout_seconds: 1
  pid_file: $DIR/tollgate.pid
  upgrade_sock: $DIR/upgrade.sock
listeners:
  - address: 127.0.0.1:$TG_PORT
limits:
  max_body_bytes: 16777216
  body_read_timeout: 30s
models:
  bench-fast:
    targets:
      - pool: fast
pools:
  fast:
    provider: openai
    endpoints:
      - url: http://127.0.0.1:$MOCK_PORT/v1
        api_key: bench-upstream-key
    dns_refresh: 30s
${CPR_EXTRA_YAML:-}
EOF
if [ "${CPR_POLICY:-0}" = 1 ]; then
    # bench-client sends `Bearer bench-key` (kept here as its SHA-256), as in bench/conf.
    cat >>"$DIR/tollgate.yaml" <<EOF
admin:
  address: 127.0.0.1:$((TG_PORT + 1))
auth:
  keys:
    - id: bench-ttft
      sha256: b0962662e937d44c699c8305d90cbf190b3150c59b13863d1380b5cc3c711bb7
      team: bench
quotas:
  keys:
    bench-ttft:
      rpm: 100000000
      tpm: 100000000000
      concurrency: 100000
      budgets:
        - {usd: 1000000, window: day}
  teams:
    bench:
      budgets:
        - {tokens: 100000000000, window: month}
  prices:
    bench-fast: {input: 2.5, output: 10, cached_input: 1.25}
EOF
fi
VALGRIND=()
[ -z "${CPR_CALLGRIND:-}" ] || VALGRIND=(valgrind --tool=callgrind "--callgrind-out-file=$CPR_CALLGRIND")

"$UPSTREAM_BIN" --listen "127.0.0.1:$MOCK_PORT" --chunks 20 >"$DIR/mock.log" 2>&1 &
PIDS+=($!)
case "${CPR_PROXY:-tollgate}" in
tollgate)
    RUST_LOG="${RUST_LOG:-info}" "${VALGRIND[@]}" "$TOLLGATE_BIN" -c "$DIR/tollgate.yaml" >"$DIR/tollgate.out" 2>"$DIR/tollgate.log" &
    ;;
floor)
    "${VALGRIND[@]}" "$FLOOR_BIN" --route "127.0.0.1:$TG_PORT=127.0.0.1:$MOCK_PORT" \
        --threads "${CPR_THREADS:-2}" ${FLOOR_ARGS:-} >"$DIR/tollgate.out" 2>"$DIR/tollgate.log" &
    ;;
hyper)
    "${VALGRIND[@]}" "$HYPER_BIN" --route "127.0.0.1:$TG_PORT=127.0.0.1:$MOCK_PORT" \
        --threads "${CPR_THREADS:-2}" ${HYPER_ARGS:-} >"$DIR/tollgate.out" 2>"$DIR/tollgate.log" &
    ;;
nginx)
    mkdir -p "$DIR/nginx/logs" "$DIR/nginx/tmp"
    cat >"$DIR/nginx/nginx.conf" <<EOF
worker_processes ${CPR_THREADS:-2};
pid nginx.pid;
error_log logs/error.log warn;
daemon off;
events { worker_connections 4096; use epoll; }
http {
    access_log logs/access.log combined;
    client_body_temp_path tmp;
    proxy_temp_path tmp;
    keepalive_requests 1000000;
    client_max_body_size 16m;
    tcp_nodelay on;
    proxy_http_version 1.1;
    proxy_set_header Connection "";
    proxy_set_header Authorization "Bearer bench-upstream-key";
    proxy_buffering off;
    upstream mock { server 127.0.0.1:$MOCK_PORT; keepalive 256; keepalive_requests 1000000; }
    server { listen 127.0.0.1:$TG_PORT; location / { proxy_pass http://mock; } }
}
EOF
    nginx -p "$DIR/nginx" -c "$DIR/nginx/nginx.conf" 2>"$DIR/tollgate.log" &
    ;;
*) echo "CPR_PROXY is tollgate, floor, hyper or nginx" >&2; exit 2 ;;
esac
TG=$!
PIDS+=("$TG")
wait_port "$MOCK_PORT"
wait_port "$TG_PORT" 600

stream_flag=(--no-stream)
[ "$MODE" = stream ] && stream_flag=()
OHA="${OHA:-$(command -v oha || echo "$ROOT/bench/.tools/bin/oha")}"
stream_json=false
[ "$MODE" = stream ] && stream_json=true
load() {
    if [ "${CPR_LOAD:-client}" = oha ]; then
        timeout 120 "$OHA" "http://127.0.0.1:$TG_PORT/v1/chat/completions" -m POST \
            -H 'content-type: application/json' -H 'authorization: Bearer bench-client-key' \
            -d "{\"model\":\"bench-fast\",\"messages\":[{\"role\":\"user\",\"content\":\"Say hello in one short sentence.\"}],\"stream\":$stream_json}" \
            -n "$1" -c "$CONC" --no-tui --output-format json >"$2"
    else
        timeout 120 "$CLIENT_BIN" ttft --url "http://127.0.0.1:$TG_PORT/v1/chat/completions" \
            "${stream_flag[@]}" --requests "$1" --concurrency "$CONC" --timeout-secs 100 >"$2"
    fi
}
# nginx's workers are children of its master: their CPU is summed with it.
procs() { echo "$TG"; pgrep -P "$TG" || true; }
# User and system clock ticks, summed over the processes.
cpu_ticks() { for p in $(procs); do awk '{print $14, $15}' "/proc/$p/stat"; done | awk '{u += $1; s += $2} END {print u, s}'; }
ctxsw() { for p in $(procs); do cat /proc/"$p"/task/*/status; done | awk '/ctxt_switches/ {s += $2} END {print s}'; }

load 2000 /dev/null # warm-up: connections, pools, allocator

read -r u0 s0 < <(cpu_ticks); c0=$(ctxsw); l0=$(wc -l <"$DIR/tollgate.log")
[ -z "${CPR_CALLGRIND:-}" ] || callgrind_control -z "$TG" >/dev/null
if [ -n "${CPR_PERF_RECORD:-}" ]; then
    perf record ${CPR_PERF_ARGS:-} -F 1999 -p "$TG" -o "$CPR_PERF_RECORD" 2>/dev/null &
    PERF=$!
    sleep 0.5
fi
if [ "${CPR_STRACE:-0}" = 1 ]; then
    strace -c -f -p "$TG" -o "$DIR/strace.txt" &
    STRACE=$!
    sleep 0.5
fi
load "$REQUESTS" "$DIR/client.json"
if [ -n "${STRACE:-}" ]; then kill -INT "$STRACE"; wait "$STRACE" || true; fi
if [ -n "${PERF:-}" ]; then kill -INT "$PERF"; wait "$PERF" || true; fi
[ -z "${CPR_CALLGRIND:-}" ] || callgrind_control -d "$TG" >/dev/null
read -r u1 s1 < <(cpu_ticks); c1=$(ctxsw); l1=$(wc -l <"$DIR/tollgate.log")
sleep 0.3 # buffered access lines reach the log
l1=$(wc -l <"$DIR/tollgate.log")
# Only tollgate's log has a line per request; the others count the requests sent.
[ "${CPR_PROXY:-tollgate}" = tollgate ] || l1=$l0
python3 - "$u0" "$s0" "$u1" "$s1" "$c0" "$c1" "$REQUESTS" "$CLK_TCK" "$l0" "$l1" <<'PY'
import sys
u0, s0, u1, s1, c0, c1, n, tck, l0, l1 = map(int, sys.argv[1:])
n = l1 - l0 if l1 > l0 else n  # access-log lines: the requests served, warm-up ones included
print(f"requests {n}")
ms = lambda ticks: ticks * 1000 / tck / n
print(f"proxy CPU ms/request {ms(u1 - u0 + s1 - s0):.4f} (user {ms(u1 - u0):.4f}, system {ms(s1 - s0):.4f})  context switches/request {(c1 - c0) / n:.2f}")
PY
if [ -f "$DIR/strace.txt" ]; then
    n=$(( l1 > l0 ? l1 - l0 : REQUESTS ))
    awk -v n="$n" 'NR > 2 && $NF != "total" && $4 ~ /^[0-9]+$/ {printf "  %-16s %6.2f /request\n", $NF, $4 / n}' "$DIR/strace.txt" | sort -k2 -nr | head -15
fi
if [ -n "${CPR_CALLGRIND:-}" ]; then
    # The dump taken after the measured requests; the request path is everything the
    # listener's per-connection task runs (tollgate's phases and Pingora's session).
    n=$(( l1 > l0 ? l1 - l0 : REQUESTS ))
    # Tollgate's request path, and the whole process (any proxy: the floors, for
    # comparison; it also counts the runtime's idle polling and timers).
    callgrind_annotate --inclusive=yes --threshold=100 "$CPR_CALLGRIND.1" 2>/dev/null |
        awk -v n="$n" '/PROGRAM TOTALS/ { gsub(",", "", $1); printf "process instructions/request %.0f\n", $1 / n }
            /HeadDeadlineApp<A> as pingora_core::apps::ServerApp>::process_new::\{\{closure\}\}( \[|$)/ {
            gsub(",", "", $1); if ($1 + 0 > max + 0) max = $1 + 0 }
            END { if (max) printf "request path instructions/request %.0f (callgrind: %s.1)\n", max / n, FILE }' FILE="$CPR_CALLGRIND"
fi
