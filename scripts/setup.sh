#!/usr/bin/env bash
# Installs what building and testing tollgate needs, and nothing that is already there:
#   - Debian packages: cmake, pkg-config, libssl-dev (system OpenSSL, see .cargo/config.toml),
#     redis-server (the shared-state tests start their own Redis on a free port),
#     prometheus (promtool and a Prometheus server for the metrics tests)
#   - a Python venv at .venv/ with the pinned packages of tests/sdk/requirements.txt
#   - cargo-fuzz (from crates.io, pinned) for the fuzz smoke step (fuzz/run.sh --smoke)
# Safe to run again and again; a second run only checks and returns in about a second.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

PYTHON="${PYTHON:-python3}"
VENV="$ROOT/.venv"
REQS="$ROOT/tests/sdk/requirements.txt"
STAMP="$VENV/.requirements.sha256"

say() { printf 'setup: %s\n' "$*"; }
die() { printf 'setup: error: %s\n' "$*" >&2; exit 1; }

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || die "not root and no sudo: cannot install system packages"
    # Ask for a password only when someone is there to type it.
    if [ -t 0 ]; then SUDO=(sudo); else SUDO=(sudo -n); fi
fi

APT_UPDATED=0
apt_install() {
    command -v apt-get >/dev/null 2>&1 || die "missing $*, and no apt-get to install it with"
    export DEBIAN_FRONTEND=noninteractive
    if [ "$APT_UPDATED" -eq 0 ]; then
        say "apt-get update"
        "${SUDO[@]}" apt-get update -qq
        APT_UPDATED=1
    fi
    say "apt-get install $*"
    "${SUDO[@]}" apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# --- system packages -----------------------------------------------------------------
missing=()
command -v cmake >/dev/null 2>&1 || missing+=(cmake)
command -v pkg-config >/dev/null 2>&1 || missing+=(pkg-config)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
# promtool and a Prometheus server for the metrics tests.
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
if ! { command -v pkg-config >/dev/null 2>&1 && pkg-config --exists openssl; } &&
    ! dpkg -s libssl-dev >/dev/null 2>&1; then
    missing+=(libssl-dev)
fi
if [ "${#missing[@]}" -gt 0 ]; then
    apt_install "${missing[@]}"
else
    say "system packages present (cmake, pkg-config, libssl-dev, redis-server, prometheus)"
fi

# --- Rust toolchain --------------------------------------------------------------------
command -v cargo >/dev/null 2>&1 || die "cargo not found: install a Rust toolchain (rustup) first"
cargo fmt --version >/dev/null 2>&1 || die "rustfmt missing: rustup component add rustfmt"
cargo clippy --version >/dev/null 2>&1 || die "clippy missing: rustup component add clippy"
if cargo nextest --version >/dev/null 2>&1; then
    say "rust: $(rustc --version | cut -d' ' -f1-2), nextest present"
else
    say "rust: $(rustc --version | cut -d' ' -f1-2), no cargo-nextest (tests fall back to cargo test)"
fi

# cargo-fuzz builds the fuzz targets (fuzz/); the stable toolchain is enough (-s none).
# Only for the libFuzzer smoke step (FUZZ_SMOKE=1; off by default).
CARGO_FUZZ_VERSION=0.13.2
if [ "${FUZZ_SMOKE:-0}" != 1 ]; then
    say "cargo-fuzz not needed (FUZZ_SMOKE=0)"
elif cargo fuzz --version 2>/dev/null | grep -q " $CARGO_FUZZ_VERSION\$"; then
    say "cargo-fuzz $CARGO_FUZZ_VERSION present"
else
    say "cargo install cargo-fuzz $CARGO_FUZZ_VERSION (about 1.5 minutes, once)"
    cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked --quiet
fi

# --- Python venv for tests/sdk ---------------------------------------------------------
command -v "$PYTHON" >/dev/null 2>&1 || die "$PYTHON not found"
py_tag="$("$PYTHON" -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])')"
want="$( { sha256sum "$REQS" | cut -d' ' -f1; echo "python $py_tag"; } | sha256sum | cut -d' ' -f1)"

# A venv whose interpreter is gone (Python moved or upgraded) is rebuilt from scratch.
if [ -d "$VENV" ] && ! "$VENV/bin/python" -c 'import sys' >/dev/null 2>&1; then
    say "removing broken venv $VENV"
    rm -rf "$VENV"
fi

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ]; then
    say "python venv up to date (.venv, python $py_tag)"
else
    if [ ! -x "$VENV/bin/python" ]; then
        say "creating venv .venv (python $py_tag)"
        if ! "$PYTHON" -m venv "$VENV" >/dev/null 2>&1; then
            rm -rf "$VENV"
            apt_install python3-venv
            "$PYTHON" -m venv "$VENV"
        fi
    fi
    say "pip install -r tests/sdk/requirements.txt"
    PIP_DISABLE_PIP_VERSION_CHECK=1 "$VENV/bin/python" -m pip install -q --no-input -r "$REQS"
    echo "$want" >"$STAMP"
fi

say "ok"
