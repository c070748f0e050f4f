#!/usr/bin/env bash
# Runs every test of the workspace, on a fresh machine too: installs what the tests need, builds, tests.
# Tests that need Redis start their own redis-server (on a private unix socket, or a TLS port);
# PostgreSQL tests run initdb and postgres in a temp dir. ops/install-test-tools.sh only makes
# sure the tools are installed.
set -euo pipefail
cd "$(dirname "$0")/.."

ops/install-test-tools.sh

cargo build --workspace --all-targets --locked
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --workspace --no-fail-fast --locked
else
    cargo test --workspace --no-fail-fast --locked
fi
