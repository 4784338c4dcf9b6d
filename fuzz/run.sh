#!/usr/bin/env bash
# Builds the fuzz targets (cargo-fuzz, libFuzzer) and runs each for a bounded time, one
# after the other, then writes a markdown report: seconds run, executions, corpus size,
# crashes per target.
#
#   fuzz/run.sh                    every target, FUZZ_SECONDS each (default 300)
#   fuzz/run.sh --smoke            every target for a few seconds (CI); report in results/tmp/
#   fuzz/run.sh sse_stream ...     only the targets named
#
# Knobs: FUZZ_SECONDS (seconds per target; 300, smoke 5), FUZZ_SANITIZER (none; `address`
# needs a nightly toolchain, or RUSTC_BOOTSTRAP=1 on stable), FUZZ_SKIP_BUILD=1.
# The working corpus grows in fuzz/.work/<target>/ (git-ignored) next to the committed
# seeds in fuzz/corpus/<target>/; a crashing input is kept in fuzz/artifacts/<target>/.
# Exits non-zero when a target crashed (or failed to run).
set -euo pipefail

FUZZ_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$FUZZ_DIR/.." && pwd)"
cd "$FUZZ_DIR"

ALL_TARGETS=(request_body sse_stream config_load auth_token)
CARGO_FUZZ_VERSION=0.13.2

SMOKE=0
TARGETS=()
for arg in "$@"; do
    case "$arg" in
        --smoke) SMOKE=1 ;;
        -h | --help)
            sed -n '2,15p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
            exit 0
            ;;
        -*) echo "fuzz/run.sh: unknown option $arg" >&2; exit 2 ;;
        *) TARGETS+=("$arg") ;;
    esac
done
[ "${#TARGETS[@]}" -gt 0 ] || TARGETS=("${ALL_TARGETS[@]}")
for t in "${TARGETS[@]}"; do
    [ -d "fuzz_targets" ] && [ -f "fuzz_targets/$t.rs" ] || { echo "fuzz/run.sh: no target $t" >&2; exit 2; }
done

if [ "$SMOKE" -eq 1 ]; then SECONDS_EACH="${FUZZ_SECONDS:-5}"; else SECONDS_EACH="${FUZZ_SECONDS:-300}"; fi
SANITIZER="${FUZZ_SANITIZER:-none}"
export OPENSSL_NO_VENDOR=1
# Without a sanitizer every flag cargo-fuzz passes is stable; ASan needs -Zsanitizer.
if [ "$SANITIZER" != none ]; then export RUSTC_BOOTSTRAP=1; fi

say() { printf 'fuzz: %s\n' "$*"; }

# --- tools and build ---------------------------------------------------------------------
if ! cargo fuzz --version >/dev/null 2>&1; then
    say "installing cargo-fuzz $CARGO_FUZZ_VERSION from crates.io"
    cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked
fi

# Release with debug assertions and overflow checks (cargo-fuzz's default), 16 codegen
# units: builds about twice as fast on 2 cores as cargo-fuzz's default of 1, for a few
# percent fewer executions per second.
BUILD_FLAGS=(-s "$SANITIZER" --codegen-units 16)
BIN_DIR="$FUZZ_DIR/target/x86_64-unknown-linux-gnu/release"
build_start=$SECONDS
if [ "${FUZZ_SKIP_BUILD:-0}" != 1 ]; then
    say "building ${TARGETS[*]} (sanitizer $SANITIZER)"
    cargo fuzz build "${BUILD_FLAGS[@]}" >&2
fi
BUILD_SECS=$((SECONDS - build_start))

# --- runs --------------------------------------------------------------------------------
STAMP="$(date -u +%Y%m%dT%H%M%SZ)"
COMMIT="$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
if [ "$SMOKE" -eq 1 ]; then OUT_DIR="$FUZZ_DIR/results/tmp"; else OUT_DIR="$FUZZ_DIR/results"; fi
LOG_DIR="$FUZZ_DIR/results/tmp/$STAMP"
mkdir -p "$OUT_DIR" "$LOG_DIR"

ROWS=()
FAILED=()
for t in "${TARGETS[@]}"; do
    work="$FUZZ_DIR/.work/$t"
    artifacts="$FUZZ_DIR/artifacts/$t"
    mkdir -p "$work" "$artifacts"
    before="$(find "$artifacts" -type f | wc -l)"
    corpus_before="$(find "$work" "$FUZZ_DIR/corpus/$t" -type f | wc -l)"
    log="$LOG_DIR/$t.log"
    say "$t: ${SECONDS_EACH}s"
    start=$SECONDS
    rc=0
    # -timeout: an input slower than 10 s is a finding too. libFuzzer writes new inputs
    # into the first directory (the working corpus) and only reads the seeds.
    "$BIN_DIR/$t" "$work" "$FUZZ_DIR/corpus/$t" \
        -max_total_time="$SECONDS_EACH" -timeout=10 -rss_limit_mb=2048 \
        -print_final_stats=1 -artifact_prefix="$artifacts/" \
        </dev/null >"$log" 2>&1 || rc=$?
    ran=$((SECONDS - start))
    # (A target that crashed on a seed prints no coverage line: hence the `|| true`.)
    execs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)"
    rss="$(sed -n 's/^stat::peak_rss_mb: *//p' "$log" | tail -1)"
    cov="$( { grep -oE 'cov: [0-9]+ ft: [0-9]+' "$log" || true; } | tail -1 |
        sed 's/cov: \([0-9]*\) ft: \([0-9]*\)/\1 \/ \2/')"
    corpus="$(find "$work" "$FUZZ_DIR/corpus/$t" -type f | wc -l)"
    seeds="$(find "$FUZZ_DIR/corpus/$t" -type f | wc -l)"
    crashes=$(($(find "$artifacts" -type f | wc -l) - before))
    if [ "$rc" -ne 0 ] || [ "$crashes" -gt 0 ]; then
        FAILED+=("$t")
        say "$t: FAILED (exit $rc); log $log"
        grep -E '^==[0-9]+==|panicked at|^SUMMARY|Test unit written' "$log" | head -10 >&2 || true
    fi
    say "$t: ${ran}s, ${execs:-?} executions, corpus $corpus_before -> $corpus files ($seeds seeds), crashes $crashes"
    ROWS+=("| \`$t\` | $ran | ${execs:-?} | $(( ${execs:-0} / (ran > 0 ? ran : 1) )) | $corpus_before → $corpus ($seeds seeds) | ${cov:-?} | ${rss:-?} | $crashes |")
done

# --- report ------------------------------------------------------------------------------
report="$OUT_DIR/$STAMP-$COMMIT.md"
{
    echo "# Fuzz run $STAMP at $COMMIT"
    echo
    echo "$( [ "$SMOKE" -eq 1 ] && echo "Smoke run" || echo "Bench run" ): each target for ${SECONDS_EACH}s, one after the other, one core each (libFuzzer, \`-s $SANITIZER\`, release with debug assertions and overflow checks)."
    echo "Machine: $(nproc) cores, $(rustc --version), cargo-fuzz $(cargo fuzz --version 2>/dev/null | awk '{print $2}'). Build: ${BUILD_SECS}s."
    echo
    echo "| target | seconds | executions | exec/s | corpus files, start → end | coverage (cov / ft) | peak RSS MB | crashes |"
    echo "|---|---|---|---|---|---|---|---|"
    printf '%s\n' "${ROWS[@]}"
    echo
    if [ "${#FAILED[@]}" -eq 0 ]; then
        echo "No crash, timeout or out-of-memory in any target."
    else
        echo "Failed: ${FAILED[*]} (inputs in fuzz/artifacts/<target>/, logs in fuzz/results/tmp/$STAMP/)."
    fi
} >"$report"
cat "$report"
say "report: ${report#"$ROOT"/}"
[ "${#FAILED[@]}" -eq 0 ]
