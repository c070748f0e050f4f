#!/bin/sh
# Run from the repository after `cargo build --release --workspace`.
# A single-machine fleet on one SQLite file: three `projector-worker run` processes and
# `projector-scheduler run-once --wait`, 2,000 orgs x 200 ms (synthetic queries) at slots.limit 50.
# Prints the run's duration (tick to last outcome) and its share of the ideal 2,000 x 0.2 / 50 = 8 s.
set -eu
bin="$(cd "$(dirname "$0")/.." && pwd)/target/release"
dir=$(mktemp -d)
export PROJECTOR_BACKEND_KIND=sqlite PROJECTOR_BACKEND_DSN="sqlite://$dir/fleet.db" PROJECTOR_SLOTS_LIMIT=50 \
  PROJECTOR_WORKER_CONCURRENCY=${CONCURRENCY:-25} PROJECTOR_QUERY_SYNTHETIC_LATENCY=200ms PROJECTOR_SINK_KIND=sqlite \
  PROJECTOR_WORKER_METRICS_ADDR=127.0.0.1:0
pids=""
for i in 1 2 3; do
  "$bin/projector-worker" run 2>"$dir/worker$i.log" &
  pids="$pids $!"
done
trap 'kill $pids 2>/dev/null; rm -rf "$dir"' EXIT
# Wait (at most 30 s) for the three workers' heartbeats in the file.
for _ in $(seq 300); do
  alive=$("$bin/projectorctl" --json status 2>/dev/null | sed -n 's/.*"alive":\([0-9]*\).*/\1/p')
  [ "${alive:-0}" = 3 ] && break
  sleep 0.1
done
"$bin/projector-scheduler" run-once --orgs 2000 --batch-delay 0s --wait --summary-json "$dir/summary.json" >/dev/null 2>"$dir/scheduler.log"
ms=$(sed -n 's/.*"duration_ms": *\([0-9]*\).*/\1/p' "$dir/summary.json")
completed=$(sed -n 's/.*"completed": *\([0-9]*\).*/\1/p' "$dir/summary.json")
echo "completed $completed of 2000 in $ms ms; ideal 8000 ms; share $(echo "scale=3; 8000 / $ms" | bc)"
