#!/usr/bin/env bash
# Runs every test of the workspace, on a fresh machine too: installs what the tests need, builds, tests.
# Tests that need Redis start their own redis-server on a free port; this only makes sure it is installed.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v redis-server >/dev/null 2>&1; then
    echo "ops/test.sh: installing redis-server (the Redis tests start their own)" >&2
    sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq redis-server >/dev/null
fi

cargo build --workspace --all-targets --locked
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --workspace --no-fail-fast --locked
else
    cargo test --workspace --no-fail-fast --locked
fi
