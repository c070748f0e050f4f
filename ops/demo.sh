#!/usr/bin/env bash
# A local fleet in one command, with its own ports and no system service: a private redis-server,
# the fake query service, two workers, `projector-scheduler serve` on a one-minute cron and the
# status page. It prints the URLs and the next commands to try; Ctrl-C stops everything and
# removes its files. A demo killed with -9 cannot: the next one stops its processes and removes
# its folder.
#
#   ops/demo.sh [--orgs N] [--bin-dir DIR]
#
# --orgs N       organizations per run (default 200)
# --bin-dir DIR  use the binaries in DIR instead of building release ones (tests use target/debug)
set -euo pipefail
cd "$(dirname "$0")/.."

orgs=200
bin_dir=""
while [ $# -gt 0 ]; do
    case "$1" in
        --orgs) orgs="$2"; shift 2 ;;
        --bin-dir) bin_dir="$2"; shift 2 ;;
        -h|--help) sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "ops/demo.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
if [ -z "$bin_dir" ]; then
    cargo build --release --quiet --workspace --bins
    bin_dir=target/release
fi
bin_dir="$(cd "$bin_dir" && pwd)"
command -v redis-server >/dev/null || { echo "ops/demo.sh: redis-server is missing (ops/install-test-tools.sh installs it)" >&2; exit 1; }

# An earlier demo that could not clean up (killed with -9, or its terminal gone): its processes
# outlive it and its folder stays. Its processes write their logs into its folder, which tells
# them apart from anything else; stop them and remove the folder.
for old in /tmp/projector-demo.*; do
    [ -f "$old/demo.pid" ] || continue
    kill -0 "$(cat "$old/demo.pid")" 2>/dev/null && continue
    for pid in $(cat "$old/pids" 2>/dev/null); do
        case "$(readlink "/proc/$pid/fd/2" 2>/dev/null)" in "$old"/*) kill -TERM "$pid" 2>/dev/null || true ;; esac
    done
    rm -rf "$old"
    echo "ops/demo.sh: stopped the leftovers of an earlier demo that was killed ($old)" >&2
done

dir="$(mktemp -d /tmp/projector-demo.XXXXXX)"
echo $$ >"$dir/demo.pid"
pids=()
stop() {
    trap - EXIT INT TERM
    echo "stopping the demo fleet" >&2
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$dir"
}
trap stop EXIT
trap 'exit 130' INT TERM
# A closed pipe (ops/demo.sh | head) would end the script by SIGPIPE, past the EXIT trap: stop
# the fleet and remove its files then too.
trap 'exit 141' PIPE HUP

# Waits until FILE has a line matching PATTERN (at most 60 s) and prints the value after "addr=".
addr_of() {
    local file="$1" pattern="$2"
    for _ in $(seq 600); do
        if line="$(grep -m1 -- "$pattern" "$file" 2>/dev/null)"; then
            echo "$line" | sed -n 's/.*addr=\([^ ]*\).*/\1/p'
            return 0
        fi
        sleep 0.1
    done
    echo "ops/demo.sh: no '$pattern' in $file within 60 s:" >&2
    cat "$file" >&2
    exit 1
}

redis-server --port 0 --unixsocket "$dir/redis.sock" --unixsocketperm 700 --save "" --appendonly no --dir "$dir" >"$dir/redis.log" 2>&1 &
pids+=($!); echo $! >>"$dir/pids"
for _ in $(seq 100); do [ -S "$dir/redis.sock" ] && break; sleep 0.1; done
export PROJECTOR_REDIS_URL="unix://$dir/redis.sock"

"$bin_dir/projector-fake-snuba" --addr 127.0.0.1:0 --latency 50ms --jitter 20ms >"$dir/fake.out" 2>"$dir/fake.log" &
pids+=($!); echo $! >>"$dir/pids"
for _ in $(seq 100); do [ -s "$dir/fake.out" ] && break; sleep 0.1; done
fake="$(head -1 "$dir/fake.out")"
case "$fake" in http*) ;; *) fake="http://$fake" ;; esac
# Every setting of the fleet is in the environment, so the set-up printed below carries all of it:
# a command run from another shell (a replay with run-once --tick) sees the same schedule.
export PROJECTOR_QUERY_SOURCE=snuba PROJECTOR_QUERY_URL="$fake" PROJECTOR_ORGS_COUNT="$orgs" RUST_LOG="${RUST_LOG:-info}"
export PROJECTOR_SCHEDULE_CRON="0 * * * * *"

for n in 1 2; do
    "$bin_dir/projector-worker" run --metrics-addr 127.0.0.1:0 >/dev/null 2>"$dir/worker-$n.log" &
    pids+=($!); echo $! >>"$dir/pids"
done
"$bin_dir/projector-scheduler" serve --metrics-addr 127.0.0.1:0 >/dev/null 2>"$dir/scheduler.log" &
pids+=($!); echo $! >>"$dir/pids"
"$bin_dir/projectorctl" serve --addr 127.0.0.1:0 >/dev/null 2>"$dir/page.log" &
pids+=($!); echo $! >>"$dir/pids"

worker1="$(addr_of "$dir/worker-1.log" "serving /metrics")"
worker2="$(addr_of "$dir/worker-2.log" "serving /metrics")"
scheduler="$(addr_of "$dir/scheduler.log" "serving /metrics")"
page="$(addr_of "$dir/page.log" "status page serving")"

cat <<EOF
Projector demo fleet is up (files and logs in $dir):
  status page:        http://$page/
  query service:      $fake/stats
  worker metrics:     http://$worker1/metrics  http://$worker2/metrics
  scheduler metrics:  http://$scheduler/metrics (a run of $orgs orgs at the top of every minute)
Try, in another shell (this set-up is every setting the fleet runs with):
  export PROJECTOR_REDIS_URL=$PROJECTOR_REDIS_URL
  export PROJECTOR_QUERY_SOURCE=$PROJECTOR_QUERY_SOURCE PROJECTOR_QUERY_URL=$PROJECTOR_QUERY_URL PROJECTOR_ORGS_COUNT=$PROJECTOR_ORGS_COUNT
  export PROJECTOR_SCHEDULE_CRON="$PROJECTOR_SCHEDULE_CRON"
  $bin_dir/projectorctl status
  $bin_dir/projector-scheduler run-once --wait --orgs $orgs --batch-delay 0s
  $bin_dir/projectorctl runs list
  curl -s $fake/stats
If Redis loses its data, the open run is lost; run its tick again (ops/RUNBOOK.md, "Redis lost its data"):
  $bin_dir/projector-scheduler run-once --tick <the tick of the lost run, from $dir/scheduler.log>
Ctrl-C stops everything.
EOF
wait
