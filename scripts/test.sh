#!/usr/bin/env bash
# The whole tollgate test suite, as CI runs it (.ci/run) and as a developer runs it:
#   setup -> rustfmt -> clippy -> build -> validate conf/*.yaml -> Rust tests -> SDK tests
#   -> fuzz smoke
# Stops at the first failing step and says which one it was.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

# Link the system OpenSSL (also set in .cargo/config.toml; kept here in case that is bypassed).
export OPENSSL_NO_VENDOR=1
export PYTHONDONTWRITEBYTECODE=1
CI="${CI:-}"
if [ "$CI" = "true" ]; then
    # Clean clone, one build: incremental caches only cost time and disk.
    export CARGO_INCREMENTAL=0
    export CARGO_TERM_COLOR=never
    QUIET=(--quiet)
    NEXTEST_QUIET=(--cargo-quiet)
    FMT_COLOR=(--color never)
    PYTEST_CI=(--tb=short)
else
    QUIET=()
    NEXTEST_QUIET=()
    FMT_COLOR=()
    PYTEST_CI=()
fi

# The fuzz targets' checks run over the committed corpus with the Rust tests
# (tests/fuzz_corpus.rs), in seconds. The libFuzzer smoke step (last) builds the fuzz
# targets, about 16 CPU-minutes from a clean clone (8-12 minutes on 2 cores, plus 1.5 for
# installing cargo-fuzz): too much for every run, so it runs only with FUZZ_SMOKE=1; see
# fuzz/README.md. setup.sh installs cargo-fuzz only then.
FUZZ_SMOKE="${FUZZ_SMOKE:-0}"
export FUZZ_SMOKE

SUITE_START=$SECONDS
STEP=""
STEP_START=$SECONDS
DONE_STEPS=()

step() {
    finish_step
    STEP="$1"
    STEP_START=$SECONDS
    printf '\n==> %s\n' "$STEP"
}
finish_step() {
    if [ -n "$STEP" ]; then
        DONE_STEPS+=("$STEP $((SECONDS - STEP_START))s")
        STEP=""
    fi
}
on_exit() {
    local rc=$?
    local total=$((SECONDS - SUITE_START))
    local failed_step="${STEP:-?}"
    finish_step
    local times
    times="$(IFS=,; echo "${DONE_STEPS[*]}" | sed 's/,/, /g')"
    if [ "$rc" -eq 0 ]; then
        printf '\ntest.sh: OK in %ss (%s)\n' "$total" "$times"
    else
        printf '\ntest.sh: FAILED at step "%s" (exit %s) after %ss (%s)\n' "$failed_step" "$rc" "$total" "$times" >&2
    fi
}
trap on_exit EXIT

step "setup"
bash scripts/setup.sh

step "cargo fmt --check"
cargo fmt --all -- --check "${FMT_COLOR[@]}"

step "cargo clippy"
cargo clippy "${QUIET[@]}" --workspace --all-targets -- -D warnings

step "cargo build"
cargo build "${QUIET[@]}"
BIN="$ROOT/target/debug/tollgate"
[ -x "$BIN" ] || { echo "test.sh: $BIN was not built" >&2; exit 1; }

step "validate conf/*.yaml"
failed=()
shopt -s nullglob
configs=(conf/*.yaml)
shopt -u nullglob
[ "${#configs[@]}" -gt 0 ] || { echo "test.sh: no conf/*.yaml to validate" >&2; exit 1; }
for cfg in "${configs[@]}"; do
    # Secrets such as ${OPENAI_API_KEY} are not on a test machine: give each variable that a
    # config names, and the environment lacks, a placeholder so the rest is still checked.
    placeholders=()
    for var in $(sed 's/#.*//' "$cfg" | grep -oE '\$\{[A-Za-z_][A-Za-z0-9_]*' | cut -c3- | sort -u); do
        [ -n "${!var:-}" ] || placeholders+=("$var=tollgate-validate-placeholder")
    done
    note=""
    [ "${#placeholders[@]}" -eq 0 ] || note="  (placeholder ${placeholders[*]%%=*})"
    if out="$(env "${placeholders[@]}" "$BIN" --validate -c "$cfg" </dev/null 2>&1)"; then
        echo "  ok      $cfg$note"
    else
        echo "  FAILED  $cfg"
        printf '%s\n' "$out" | sed 's/^/          /'
        failed+=("$cfg")
    fi
done
if [ "${#failed[@]}" -gt 0 ]; then
    echo "test.sh: invalid configs: ${failed[*]}" >&2
    exit 1
fi

if cargo nextest --version >/dev/null 2>&1; then
    step "cargo nextest run"
    NEXTEST_ARGS=(--workspace --no-fail-fast --no-tests=warn)
    if [ "$CI" = "true" ]; then
        # Report only failures, retries and slow tests; the summary line is always printed.
        NEXTEST_ARGS+=(--status-level slow)
    fi
    cargo nextest run "${NEXTEST_QUIET[@]}" "${NEXTEST_ARGS[@]}" </dev/null
    # nextest does not run doctests; build them only when some doc comment has a code block.
    if grep -rqsE --include='*.rs' '^[[:space:]]*//[/!].*```' src bench plugins; then
        step "cargo test --doc"
        cargo test "${QUIET[@]}" --workspace --doc </dev/null
    fi
else
    step "cargo test"
    cargo test "${QUIET[@]}" --workspace --no-fail-fast </dev/null
fi

step "SDK tests (pytest tests/sdk)"
TOLLGATE_BIN="$BIN" .venv/bin/python -m pytest tests/sdk -q "${PYTEST_CI[@]}" </dev/null

if [ "$FUZZ_SMOKE" = 1 ]; then
    step "fuzz smoke (fuzz/run.sh --smoke)"
    # Builds the fuzz targets (their own workspace and target dir, fuzz/target) and runs
    # each for FUZZ_SECONDS (5) on the committed seeds: any crash fails the step.
    FUZZ_QUIET=()
    [ "$CI" = "true" ] && FUZZ_QUIET=(env CARGO_TERM_QUIET=true)
    "${FUZZ_QUIET[@]}" env FUZZ_SECONDS="${FUZZ_SECONDS:-5}" fuzz/run.sh --smoke </dev/null
else
    finish_step
    echo
    echo "==> fuzz smoke skipped (FUZZ_SMOKE=0; FUZZ_SMOKE=1 runs it)"
fi
