#!/usr/bin/env bash
# Runs the whole suite N times in a row (default 20) while a CPU hog keeps both cores busy, and
# reports how many runs passed. Usage: ops/flake-check.sh [N]. Exit 0 only if every run passed.
# The hog is stress-ng (installed with apt-get when missing) or, failing that, a busy shell loop.
set -euo pipefail
cd "$(dirname "$0")/.."
runs="${1:-20}"
cpus="$(nproc)"

ops/install-test-tools.sh
if ! command -v stress-ng >/dev/null 2>&1; then
    sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
    ($sudo apt-get install -y -qq stress-ng >/dev/null 2>&1) || true
fi

cargo build --workspace --all-targets --locked

hogs=()
if command -v stress-ng >/dev/null 2>&1; then
    stress-ng --cpu "$cpus" --quiet &
    hogs+=($!)
else
    for _ in $(seq "$cpus"); do (while :; do :; done) & hogs+=($!); done
fi
trap 'kill "${hogs[@]}" 2>/dev/null || true' EXIT

passed=0
log_dir="target/flake-check"
mkdir -p "$log_dir"
for i in $(seq "$runs"); do
    start=$(date +%s)
    if cargo nextest run --workspace --locked --no-fail-fast >"$log_dir/run-$i.log" 2>&1; then
        passed=$((passed + 1))
        echo "run $i/$runs: pass ($(( $(date +%s) - start ))s)"
    else
        echo "run $i/$runs: FAIL ($(( $(date +%s) - start ))s), see $log_dir/run-$i.log:"
        grep -E '^\s+(FAIL|TIMEOUT|SIGSEGV|SIGABRT)' "$log_dir/run-$i.log" || true
    fi
done
echo "flake-check: $passed of $runs runs passed under $cpus-CPU load (cargo nextest run --workspace)"
[ "$passed" -eq "$runs" ]
