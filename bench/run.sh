#!/usr/bin/env bash
# Tollgate's load harness: one command, five cases of the same workload side by side.
#
#   bench/run.sh            full run (~10 minutes), results in bench/results/
#   bench/run.sh --smoke    quick check (~1-2 minutes), results in bench/results/tmp/
#
#   direct   : oha -> bench-upstream (the floor)
#   nginx    : oha -> nginx (Debian, bench/nginx/nginx.conf) -> bench-upstream
#   pingora  : oha -> bench-pingora-floor (Pingora's own proxy loop, nothing else) -> bench-upstream
#   hyper    : oha -> bench-hyper-floor --on-pingora (a Pingora server serving hyper's HTTP/1
#              proxy loop, nothing else) -> bench-upstream
#   tollgate : oha -> tollgate (release, bench/conf/tollgate.yaml) -> bench-upstream
#
# Every process it starts is stopped on exit, every run is bounded in time and all
# traffic goes to 127.0.0.1. Knobs (environment): see `usage` below and bench/README.md.
set -euo pipefail

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$BENCH_DIR/.." && pwd)"
cd "$ROOT"

usage() {
    cat <<'EOF'
usage: bench/run.sh [--smoke] [--help]

environment (defaults for the full run; --smoke shortens them):
  BENCH_DURATION=10        seconds of each measured load run
  BENCH_WARMUP=2           seconds of warm-up before each measured run
  BENCH_RATE=1000          requests/s of the open-loop (fixed-rate) runs
  BENCH_CHUNKS=20          SSE chunks per streamed answer of the fast mock
  BENCH_SLOW_DELAY_MS=20   per-chunk delay of the slow mock (TTFT test)
  BENCH_TTFT_REQUESTS=1000 requests per TTFB/TTFT measurement
  BENCH_HOLD_STREAMS=5000  concurrently open slow streams in the memory test
  BENCH_HOLD_SECS=6        how long they are held open while memory is sampled
  BENCH_PORT_OFFSET=0      added to every port (to run beside something using them)
  BENCH_SKIP_SETUP=1       do not install tools (oha, nginx, matplotlib venv)
EOF
}

# --- settings ---------------------------------------------------------------------------
SMOKE=0
for arg in "$@"; do
    case "$arg" in
        --smoke) SMOKE=1 ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; exit 2 ;;
    esac
done

if [ "$SMOKE" -eq 1 ]; then
    DURATION="${BENCH_DURATION:-2}"
    WARMUP="${BENCH_WARMUP:-1}"
    TTFT_REQUESTS="${BENCH_TTFT_REQUESTS:-80}"
    HOLD_STREAMS="${BENCH_HOLD_STREAMS:-300}"
    HOLD_SECS="${BENCH_HOLD_SECS:-2}"
    MODES=(c16)
else
    DURATION="${BENCH_DURATION:-10}"
    WARMUP="${BENCH_WARMUP:-2}"
    TTFT_REQUESTS="${BENCH_TTFT_REQUESTS:-1000}"
    HOLD_STREAMS="${BENCH_HOLD_STREAMS:-5000}"
    HOLD_SECS="${BENCH_HOLD_SECS:-6}"
    MODES=(c1 c16 c64 rate)
fi
RATE="${BENCH_RATE:-1000}"
CHUNKS="${BENCH_CHUNKS:-20}"
SLOW_DELAY_MS="${BENCH_SLOW_DELAY_MS:-20}"
SKIP_SETUP="${BENCH_SKIP_SETUP:-0}"
PORT_OFFSET="${BENCH_PORT_OFFSET:-0}"
TARGETS=(direct nginx pingora hyper tollgate)
PROXIES=(nginx pingora hyper tollgate)   # the targets with a process of their own to measure
WORKLOADS=(nonstream stream)

# Pinned tool versions, so runs stay comparable.
OHA_VERSION="1.16.0"
MATPLOTLIB_VERSION="3.11.2"

# Loopback ports, as written in bench/conf/tollgate.yaml and bench/nginx/nginx.conf; a run
# renders both files with BENCH_PORT_OFFSET added (see render_configs).
MOCK_FAST_PORT=$((19101 + PORT_OFFSET))   # no delay: throughput and CPU
MOCK_SLOW_PORT=$((19102 + PORT_OFFSET))   # BENCH_SLOW_DELAY_MS per chunk: TTFT pass-through
MOCK_HOLD_PORT=$((19103 + PORT_OFFSET))   # 1 s per chunk: streams stay open (memory test)
NGINX_FAST_PORT=$((19201 + PORT_OFFSET))
NGINX_SLOW_PORT=$((19202 + PORT_OFFSET))
NGINX_HOLD_PORT=$((19203 + PORT_OFFSET))
FLOOR_FAST_PORT=$((19251 + PORT_OFFSET))
FLOOR_SLOW_PORT=$((19252 + PORT_OFFSET))
FLOOR_HOLD_PORT=$((19253 + PORT_OFFSET))
HYPER_FAST_PORT=$((19271 + PORT_OFFSET))
HYPER_SLOW_PORT=$((19272 + PORT_OFFSET))
HYPER_HOLD_PORT=$((19273 + PORT_OFFSET))
TOLLGATE_PORT=$((19300 + PORT_OFFSET))
TOLLGATE_ADMIN_PORT=$((19301 + PORT_OFFSET))   # metrics
ALL_PORTS=("$MOCK_FAST_PORT" "$MOCK_SLOW_PORT" "$MOCK_HOLD_PORT" "$NGINX_FAST_PORT"
    "$NGINX_SLOW_PORT" "$NGINX_HOLD_PORT" "$FLOOR_FAST_PORT" "$FLOOR_SLOW_PORT" "$FLOOR_HOLD_PORT"
    "$HYPER_FAST_PORT" "$HYPER_SLOW_PORT" "$HYPER_HOLD_PORT" "$TOLLGATE_PORT" "$TOLLGATE_ADMIN_PORT")
CHAT_PATH=/v1/chat/completions

TOOLS_DIR="$BENCH_DIR/.tools"
VENV="$BENCH_DIR/.venv"
OHA="$TOOLS_DIR/bin/oha"
TARGET_DIR="$(cargo metadata --format-version 1 --no-deps 2>/dev/null |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')"
UPSTREAM_BIN="$TARGET_DIR/release/bench-upstream"
CLIENT_BIN="$TARGET_DIR/release/bench-client"
TOLLGATE_BIN="$TARGET_DIR/release/tollgate"
FLOOR_BIN="$TARGET_DIR/release/bench-pingora-floor"
HYPER_BIN="$TARGET_DIR/release/bench-hyper-floor"

STAMP="$(date -u +%Y%m%dT%H%M%SZ)"
RUN_DIR="$BENCH_DIR/results/tmp/$STAMP"    # raw outputs and logs (git-ignored)
CLK_TCK="$(getconf CLK_TCK)"

say() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { printf '[bench] error: %s\n' "$*" >&2; exit 1; }

# --- processes and cleanup --------------------------------------------------------------
STARTED_PIDS=()   # every background process this script started

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    local pid
    for pid in "${STARTED_PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    # Give them up to 5 s to exit, then force.
    local tries
    for pid in "${STARTED_PIDS[@]}"; do
        for ((tries = 0; tries < 50; tries++)); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
    done
    wait 2>/dev/null || true
    if [ "$rc" -ne 0 ]; then
        say "failed (exit $rc); logs in $RUN_DIR"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Waits (bounded) until TCP port $1 on 127.0.0.1 accepts connections.
wait_for_port() {
    local port="$1" name="$2" tries
    for ((tries = 0; tries < 100; tries++)); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            return 0
        fi
        sleep 0.1
    done
    die "$name did not listen on 127.0.0.1:$port within 10 s (logs: $RUN_DIR)"
}

port_in_use() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# --- tools ------------------------------------------------------------------------------
APT_UPDATED=0
apt_install() {
    [ "$(id -u)" -eq 0 ] || die "need root to apt-get install $* (or install it yourself)"
    export DEBIAN_FRONTEND=noninteractive
    if [ "$APT_UPDATED" -eq 0 ]; then
        apt-get update -qq
        APT_UPDATED=1
    fi
    say "apt-get install $*"
    apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

install_tools() {
    local missing=()
    command -v nginx >/dev/null 2>&1 || missing+=(nginx-light)
    command -v curl >/dev/null 2>&1 || missing+=(curl)
    python3 -c 'import venv, ensurepip' 2>/dev/null || missing+=(python3-venv)
    if [ "${#missing[@]}" -gt 0 ]; then
        apt_install "${missing[@]}"
    fi

    if ! { [ -x "$OHA" ] && "$OHA" --version | grep -q " $OHA_VERSION\$"; }; then
        say "cargo install oha $OHA_VERSION into bench/.tools (a few minutes, once)"
        # A kept target dir lets an interrupted install resume where it stopped.
        cargo install oha --version "$OHA_VERSION" --locked --root "$TOOLS_DIR" \
            --target-dir "$TOOLS_DIR/target" --quiet
    fi

    if ! "$VENV/bin/python" -c "import matplotlib; assert matplotlib.__version__ == '$MATPLOTLIB_VERSION'" 2>/dev/null; then
        say "python venv bench/.venv with matplotlib $MATPLOTLIB_VERSION"
        rm -rf "$VENV"
        python3 -m venv "$VENV"
        PIP_DISABLE_PIP_VERSION_CHECK=1 "$VENV/bin/python" -m pip install -q --no-input \
            "matplotlib==$MATPLOTLIB_VERSION"
    fi
}

check_tools() {
    command -v nginx >/dev/null 2>&1 || die "nginx missing (run without BENCH_SKIP_SETUP)"
    [ -x "$OHA" ] || die "$OHA missing (run without BENCH_SKIP_SETUP)"
    [ -x "$VENV/bin/python" ] || die "$VENV missing (run without BENCH_SKIP_SETUP)"
}

build() {
    say "cargo build --release -p tollgate -p tollgate-bench"
    cargo build --release --quiet -p tollgate -p tollgate-bench
}

# Open files: 5,000 held streams take 10,000 sockets in a proxy.
raise_fd_limit() {
    local hard
    hard="$(ulimit -Hn)"
    if [ "$hard" = unlimited ] || [ "$hard" -gt 65536 ]; then hard=65536; fi
    ulimit -n "$hard"
    local needed=$((HOLD_STREAMS * 2 + 1000))
    if [ "$(ulimit -n)" -lt "$needed" ]; then
        say "open-file limit $(ulimit -n) < $needed: holding $(( ($(ulimit -n) - 1000) / 2 )) streams instead of $HOLD_STREAMS"
        HOLD_STREAMS=$(( ($(ulimit -n) - 1000) / 2 ))
    fi
}

# --- /proc figures ----------------------------------------------------------------------

# utime+stime in clock ticks, summed over the given pids.
cpu_ticks() {
    local total=0 pid stat fields
    for pid in "$@"; do
        stat="$(<"/proc/$pid/stat")"
        # Fields after the command name, which may hold spaces: from field 3 (state) on.
        read -ra fields <<<"${stat##*) }"
        total=$((total + fields[11] + fields[12]))   # fields 14 (utime) and 15 (stime)
    done
    echo "$total"
}

# A /proc/PID/status field in kB (VmRSS:, VmHWM:), summed over the given pids.
status_kb() {
    local field="$1" total=0 pid key value _
    shift
    for pid in "$@"; do
        while read -r key value _; do
            if [ "$key" = "$field" ]; then
                total=$((total + value))
                break
            fi
        done <"/proc/$pid/status"
    done
    echo "$total"
}

# Resets the peak-RSS counters (VmHWM) so that each run reports its own peak.
reset_peak_rss() {
    local pid
    for pid in "$@"; do
        echo 5 >"/proc/$pid/clear_refs" 2>/dev/null || true
    done
}

# Samples the summed VmRSS of the pids every 0.2 s into $1 (max so far), for at most
# $2 seconds or until killed.
sample_rss() {
    local out="$1" seconds="$2" max=0 now i
    shift 2
    for ((i = 0; i < seconds * 5; i++)); do
        now="$(status_kb VmRSS: "$@" 2>/dev/null || echo 0)"
        if [ "$now" -gt "$max" ]; then
            max="$now"
            echo "$max" >"$out"
        fi
        sleep 0.2
    done
}

# --- the processes under test -----------------------------------------------------------
MOCK_FAST_PID=""
NGINX_PID=""
TOLLGATE_PID=""

# start_mock NAME PORT [bench-upstream options]; sets MOCK_PID.
MOCK_PID=""
start_mock() {
    local name="$1" port="$2"
    shift 2
    "$UPSTREAM_BIN" --listen "127.0.0.1:$port" "$@" >"$RUN_DIR/logs/$name.log" 2>&1 &
    MOCK_PID="$!"
    STARTED_PIDS+=("$MOCK_PID")
    wait_for_port "$port" "$name"
}

# Copies of the committed configs in the run directory, with BENCH_PORT_OFFSET added to
# every 127.0.0.1 port, and tollgate's pid file and upgrade socket kept in the run directory.
render_configs() {
    python3 - "$PORT_OFFSET" "$RUN_DIR" "$BENCH_DIR" <<'PY'
import re, sys
offset, run_dir, bench_dir = int(sys.argv[1]), sys.argv[2], sys.argv[3]
def shift(text):
    return re.sub(r"127\.0\.0\.1:(\d+)", lambda m: f"127.0.0.1:{int(m[1]) + offset}", text)
conf = shift(open(f"{bench_dir}/conf/tollgate.yaml").read())
conf = re.sub(r"(?m)^(\s*pid_file:).*$", rf"\1 {run_dir}/tollgate.pid", conf)
conf = re.sub(r"(?m)^(\s*upgrade_sock:).*$", rf"\1 {run_dir}/tollgate-upgrade.sock", conf)
open(f"{run_dir}/tollgate.yaml", "w").write(conf)
open(f"{run_dir}/nginx/nginx.conf", "w").write(shift(open(f"{bench_dir}/nginx/nginx.conf").read()))
PY
}

start_nginx() {
    local prefix="$RUN_DIR/nginx"
    mkdir -p "$prefix/logs" "$prefix/tmp"
    chmod 777 "$prefix/tmp"   # nginx workers run as an unprivileged user
    nginx -t -q -p "$prefix" -c "$prefix/nginx.conf" -e "$prefix/logs/error.log"
    nginx -p "$prefix" -c "$prefix/nginx.conf" -e "$prefix/logs/error.log" \
        >"$RUN_DIR/logs/nginx.out" 2>&1 &
    NGINX_PID="$!"
    STARTED_PIDS+=("$NGINX_PID")
    wait_for_port "$NGINX_FAST_PORT" nginx
}

# A floor: one process with a listener per mock, as nginx has.
# start_floor_process NAME BIN FAST_PORT SLOW_PORT HOLD_PORT [ARGS...]; sets STARTED_PID.
start_floor_process() {
    local name="$1" bin="$2" fast="$3" slow="$4" hold="$5"
    shift 5
    "$bin" --threads 2 "$@" \
        --route "127.0.0.1:$fast=127.0.0.1:$MOCK_FAST_PORT" \
        --route "127.0.0.1:$slow=127.0.0.1:$MOCK_SLOW_PORT" \
        --route "127.0.0.1:$hold=127.0.0.1:$MOCK_HOLD_PORT" \
        >"$RUN_DIR/logs/$name.out" 2>"$RUN_DIR/logs/$name.log" &
    STARTED_PID="$!"
    STARTED_PIDS+=("$STARTED_PID")
    wait_for_port "$fast" "$(basename "$bin")"
}

# Pingora's own proxy loop.
start_floor() {
    start_floor_process pingora "$FLOOR_BIN" "$FLOOR_FAST_PORT" "$FLOOR_SLOW_PORT" "$FLOOR_HOLD_PORT"
    FLOOR_PID="$STARTED_PID"
}

# hyper's HTTP/1 on a Pingora server: the candidate leaner session layer.
start_hyper() {
    start_floor_process hyper "$HYPER_BIN" "$HYPER_FAST_PORT" "$HYPER_SLOW_PORT" "$HYPER_HOLD_PORT" \
        --on-pingora
    HYPER_PID="$STARTED_PID"
}

start_tollgate() {
    RUST_LOG=info "$TOLLGATE_BIN" -c "$RUN_DIR/tollgate.yaml" \
        >"$RUN_DIR/logs/tollgate.out" 2>"$RUN_DIR/logs/tollgate.log" &
    TOLLGATE_PID="$!"
    STARTED_PIDS+=("$TOLLGATE_PID")
    wait_for_port "$TOLLGATE_PORT" tollgate
}

# The nginx processes that do the work: the master and its workers.
nginx_pids() {
    echo "$NGINX_PID"
    ps --ppid "$NGINX_PID" -o pid= | tr -d ' '
}

# The processes whose CPU and memory count as the proxy's, for a target.
proxy_pids() {
    case "$1" in
        direct) ;;
        nginx) nginx_pids ;;
        pingora) echo "$FLOOR_PID" ;;
        hyper) echo "$HYPER_PID" ;;
        tollgate) echo "$TOLLGATE_PID" ;;
    esac
}

# Base URL of a target for a mock: target_url TARGET fast|slow|hold
target_url() {
    local target="$1" mock="$2"
    case "$target/$mock" in
        direct/fast) echo "http://127.0.0.1:$MOCK_FAST_PORT$CHAT_PATH" ;;
        direct/slow) echo "http://127.0.0.1:$MOCK_SLOW_PORT$CHAT_PATH" ;;
        direct/hold) echo "http://127.0.0.1:$MOCK_HOLD_PORT$CHAT_PATH" ;;
        nginx/fast) echo "http://127.0.0.1:$NGINX_FAST_PORT$CHAT_PATH" ;;
        nginx/slow) echo "http://127.0.0.1:$NGINX_SLOW_PORT$CHAT_PATH" ;;
        nginx/hold) echo "http://127.0.0.1:$NGINX_HOLD_PORT$CHAT_PATH" ;;
        pingora/fast) echo "http://127.0.0.1:$FLOOR_FAST_PORT$CHAT_PATH" ;;
        pingora/slow) echo "http://127.0.0.1:$FLOOR_SLOW_PORT$CHAT_PATH" ;;
        pingora/hold) echo "http://127.0.0.1:$FLOOR_HOLD_PORT$CHAT_PATH" ;;
        hyper/fast) echo "http://127.0.0.1:$HYPER_FAST_PORT$CHAT_PATH" ;;
        hyper/slow) echo "http://127.0.0.1:$HYPER_SLOW_PORT$CHAT_PATH" ;;
        hyper/hold) echo "http://127.0.0.1:$HYPER_HOLD_PORT$CHAT_PATH" ;;
        tollgate/*) echo "http://127.0.0.1:$TOLLGATE_PORT$CHAT_PATH" ;;
    esac
}

chat_body() {
    local model="$1" stream="$2"
    printf '{"model":"%s","messages":[{"role":"user","content":"Say hello in one short sentence."}],"stream":%s}' \
        "$model" "$stream"
}

# --- one load case ----------------------------------------------------------------------

# oha arguments for a mode: c1, c16, c64 (closed loop) or rate (open loop at BENCH_RATE).
mode_args() {
    case "$1" in
        c1) echo "-c 1" ;;
        c16) echo "-c 16" ;;
        c64) echo "-c 64" ;;
        rate) echo "-c 64 -q $RATE --latency-correction" ;;
    esac
}

run_oha() {
    local url="$1" body="$2" seconds="$3" out="$4"
    shift 4
    # shellcheck disable=SC2046
    "$OHA" "$url" -m POST -H 'content-type: application/json' \
        -H 'authorization: Bearer bench-client-key' -d "$body" \
        -z "${seconds}s" -w --no-tui --output-format json "$@" >"$out"
}

run_load_case() {
    local target="$1" workload="$2" mode="$3"
    local name="$target.$workload.$mode"
    local stream=false
    [ "$workload" = stream ] && stream=true
    local url body pids
    url="$(target_url "$target" fast)"
    body="$(chat_body bench-fast "$stream")"
    mapfile -t pids < <(proxy_pids "$target")
    # shellcheck disable=SC2207
    local args=($(mode_args "$mode"))

    say "$name: warm-up ${WARMUP}s, then ${DURATION}s"
    run_oha "$url" "$body" "$WARMUP" /dev/null "${args[@]}"

    reset_peak_rss "${pids[@]}"
    local proxy0=0 mock0
    [ "${#pids[@]}" -gt 0 ] && proxy0="$(cpu_ticks "${pids[@]}")"
    mock0="$(cpu_ticks "$MOCK_FAST_PID")"
    local rss_file="$RUN_DIR/raw/$name.rss"
    echo 0 >"$rss_file"
    local sampler=""
    if [ "${#pids[@]}" -gt 0 ]; then
        sample_rss "$rss_file" $((DURATION + 30)) "${pids[@]}" &
        sampler="$!"
        STARTED_PIDS+=("$sampler")
    fi
    local t0=$SECONDS
    run_oha "$url" "$body" "$DURATION" "$RUN_DIR/raw/$name.oha.json" "${args[@]}"
    local wall=$((SECONDS - t0))
    local proxy1=0 mock1 hwm=0
    [ "${#pids[@]}" -gt 0 ] && proxy1="$(cpu_ticks "${pids[@]}")"
    mock1="$(cpu_ticks "$MOCK_FAST_PID")"
    [ "${#pids[@]}" -gt 0 ] && hwm="$(status_kb VmHWM: "${pids[@]}")"
    if [ -n "$sampler" ]; then
        kill "$sampler" 2>/dev/null || true
        wait "$sampler" 2>/dev/null || true
    fi
    cat >"$RUN_DIR/raw/$name.meta.json" <<EOF
{"name": "$name", "target": "$target", "workload": "$workload", "mode": "$mode",
 "duration_s": $DURATION, "wall_s": $wall, "rate": $RATE, "clk_tck": $CLK_TCK,
 "proxy_pids": "${pids[*]}", "proxy_cpu_ticks": $((proxy1 - proxy0)),
 "mock_cpu_ticks": $((mock1 - mock0)), "proxy_hwm_kb": $hwm,
 "proxy_rss_sampled_max_kb": $(cat "$rss_file")}
EOF
}

# --- TTFB / TTFT / open streams ---------------------------------------------------------

run_ttfb_case() {
    local target="$1"
    say "$target.stream.ttfb: $TTFT_REQUESTS streamed requests, one at a time"
    "$CLIENT_BIN" ttft --url "$(target_url "$target" fast)" --model bench-fast \
        --requests "$TTFT_REQUESTS" --concurrency 1 --timeout-secs 60 \
        >"$RUN_DIR/raw/$target.stream.ttfb.json"
}

run_ttft_case() {
    local target="$1"
    say "$target.slow.ttft: $TTFT_REQUESTS requests, ${SLOW_DELAY_MS} ms per chunk, concurrency 4"
    "$CLIENT_BIN" ttft --url "$(target_url "$target" slow)" --model bench-slow \
        --requests "$TTFT_REQUESTS" --concurrency 4 --timeout-secs 120 \
        >"$RUN_DIR/raw/$target.slow.ttft.json"
}

run_hold_case() {
    local target="$1" pids watch=()
    mapfile -t pids < <(proxy_pids "$target")
    local pid
    for pid in "${pids[@]}"; do watch+=(--watch-pid "$pid"); done
    # A few streams cut short first, so that what the first one loads once for good (for
    # tollgate, the o200k tokenizer that counts a cut-short stream's prompt, ~30 MiB) is
    # in the "before" figure and not taken for memory the streams kept.
    say "$target.hold: warm-up, 20 streams cut short"
    "$CLIENT_BIN" hold-streams --url "$(target_url "$target" hold)" --model bench-hold \
        --count 20 --hold-secs 1 --open-timeout-secs 30 --settle-secs 1 \
        >"$RUN_DIR/raw/$target.hold-warmup.json"
    say "$target.hold: $HOLD_STREAMS open streams held ${HOLD_SECS}s"
    "$CLIENT_BIN" hold-streams --url "$(target_url "$target" hold)" --model bench-hold \
        --count "$HOLD_STREAMS" --hold-secs "$HOLD_SECS" --open-timeout-secs 90 \
        --settle-secs 5 "${watch[@]}" >"$RUN_DIR/raw/$target.hold.json"
}

idle_rss() {
    local label="$1"
    local t pids
    for t in "${PROXIES[@]}"; do
        mapfile -t pids < <(proxy_pids "$t")
        echo "{\"target\": \"$t\", \"when\": \"$label\", \"rss_kb\": $(status_kb VmRSS: "${pids[@]}")}" \
            >"$RUN_DIR/raw/$t.idle.$label.json"
    done
}

machine_json() {
    local commit dirty=false
    commit="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
    if [ -n "$(git status --porcelain -- src Cargo.toml Cargo.lock 2>/dev/null)" ]; then dirty=true; fi
    python3 - "$RUN_DIR/raw/machine.json" <<EOF
import json, sys
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "unknown")
json.dump({
    "date": "$(date -u +%Y-%m-%dT%H:%M:%SZ)",
    "stamp": "$STAMP",
    "commit": "$commit",
    "tollgate_src_dirty": $( [ "$dirty" = true ] && echo True || echo False ),
    "smoke": $( [ "$SMOKE" -eq 1 ] && echo True || echo False ),
    "nproc": $(nproc),
    "cpu_model": cpu,
    "kernel": "$(uname -r)",
    "rustc": "$(rustc --version)",
    "nginx": "$(nginx -v 2>&1 | sed 's/^nginx version: //')",
    "oha": "$("$OHA" --version)",
    "settings": {"duration_s": $DURATION, "warmup_s": $WARMUP, "rate": $RATE,
                 "chunks": $CHUNKS, "slow_delay_ms": $SLOW_DELAY_MS,
                 "ttft_requests": $TTFT_REQUESTS, "hold_streams": $HOLD_STREAMS,
                 "hold_secs": $HOLD_SECS, "modes": "${MODES[*]}".split()},
}, open(sys.argv[1], "w"), indent=1)
EOF
}

# --- main -------------------------------------------------------------------------------
main() {
    mkdir -p "$RUN_DIR/raw" "$RUN_DIR/logs" "$RUN_DIR/nginx"
    if [ "$SKIP_SETUP" = 1 ]; then check_tools; else install_tools; fi
    build
    raise_fd_limit
    local port
    for port in "${ALL_PORTS[@]}"; do
        if port_in_use "$port"; then die "port $port is in use: is another run going on?"; fi
    done

    render_configs
    say "starting mocks, nginx, the Pingora and hyper floors and tollgate (run directory $RUN_DIR)"
    start_mock mock-fast "$MOCK_FAST_PORT" --chunks "$CHUNKS"
    MOCK_FAST_PID="$MOCK_PID"
    start_mock mock-slow "$MOCK_SLOW_PORT" --chunks 2 --chunk-delay-ms "$SLOW_DELAY_MS"
    start_mock mock-hold "$MOCK_HOLD_PORT" --chunks 120 --chunk-delay-ms 1000
    start_nginx
    start_floor
    start_hyper
    start_tollgate
    sleep 1
    machine_json
    idle_rss start

    local mode workload target
    for workload in "${WORKLOADS[@]}"; do
        for mode in "${MODES[@]}"; do
            for target in "${TARGETS[@]}"; do
                run_load_case "$target" "$workload" "$mode"
            done
        done
    done
    for target in "${TARGETS[@]}"; do run_ttfb_case "$target"; done
    for target in "${TARGETS[@]}"; do run_ttft_case "$target"; done
    idle_rss after_load
    for target in "${PROXIES[@]}"; do run_hold_case "$target"; done

    local out_dir="$BENCH_DIR/results" commit
    [ "$SMOKE" -eq 1 ] && out_dir="$BENCH_DIR/results/tmp"
    commit="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
    say "report"
    "$VENV/bin/python" "$BENCH_DIR/report.py" "$RUN_DIR/raw" "$out_dir" "$STAMP-$commit"
}

main
