#!/bin/sh
# A persistent fleet on one machine, with no Redis: WORKERS (3) `projector-worker run` processes
# and `projector-scheduler serve` on one SQLite file (the first argument, by default
# var/projector.db). Stopped, together, by Ctrl-C; started again, it goes on from the file: open
# runs, rate windows, pause and rollout flag included. Every PROJECTOR_* setting in the
# environment applies to all of them (for example PROJECTOR_QUERY_SOURCE=snuba and
# PROJECTOR_QUERY_URL for a real query service; unset, queries are synthetic).
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
file=${1:-$root/var/projector.db}
mkdir -p "$(dirname "$file")"
case $file in /*) ;; *) file="$(pwd)/$file" ;; esac
(cd "$root" && cargo build --release -q -p projector-worker -p projector-scheduler -p projector-ops)
export PROJECTOR_BACKEND_KIND=sqlite PROJECTOR_BACKEND_DSN="sqlite://$file"
export PROJECTOR_WORKER_METRICS_ADDR="${PROJECTOR_WORKER_METRICS_ADDR:-127.0.0.1:0}"
pids=""
trap 'kill $pids 2>/dev/null; wait' INT TERM EXIT
for _ in $(seq "${WORKERS:-3}"); do
  "$root/target/release/projector-worker" run &
  pids="$pids $!"
done
"$root/target/release/projector-scheduler" serve &
pids="$pids $!"
echo "fleet on $file: ${WORKERS:-3} workers and the scheduler (schedule.cron); in another shell:" >&2
echo "  PROJECTOR_BACKEND_KIND=sqlite PROJECTOR_BACKEND_DSN=sqlite://$file $root/target/release/projectorctl status" >&2
wait
