#!/usr/bin/env bash
# Runs every test of the workspace, on a fresh machine too: installs what the tests need, builds, tests.
# Tests that need Redis start their own redis-server (on a private unix socket, or a TLS port);
# this only makes sure the tools are installed: redis-server, promtool (alert rule tests) and
# systemd-analyze (deploy unit checks).
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
if [ "${#missing[@]}" -gt 0 ]; then
    echo "ops/test.sh: installing ${missing[*]} (the tests use them)" >&2
    sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    # Debian starts the packaged services on install; the tests start their own.
    $sudo systemctl disable --now prometheus redis-server >/dev/null 2>&1 || true
fi

cargo build --workspace --all-targets --locked
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --workspace --no-fail-fast --locked
else
    cargo test --workspace --no-fail-fast --locked
fi
