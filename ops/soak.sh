#!/usr/bin/env bash
# Soak: runs one spike-projection run after another against a private redis-server, the fake
# query service (observing, not refusing) and two workers, for --duration (default 30m), and
# reports: runs, orgs per outcome, the most queries the service saw at once (must stay <= the
# slot limit), worker RSS, Redis memory and key count over time, and keys without a TTL.
# Run records and idempotency keys are kept only --retention (default 5m) and --dedup-window
# (default 2m), instead of 7 days and 2 h, so that what a run leaves in Redis reaches its steady
# state within the soak: memory is then flat only if nothing else grows.
# Usage: ops/soak.sh [--duration 30m] [--orgs 500] [--limit 50] [--sample-every 30]
#                    [--retention 5m] [--dedup-window 2m]
set -euo pipefail
cd "$(dirname "$0")/.."

duration=30m orgs=500 limit=50 every=30 retention=5m dedup=2m
while [ $# -gt 0 ]; do
    case "$1" in
        --duration) duration="$2"; shift 2 ;;
        --orgs) orgs="$2"; shift 2 ;;
        --limit) limit="$2"; shift 2 ;;
        --sample-every) every="$2"; shift 2 ;;
        --retention) retention="$2"; shift 2 ;;
        --dedup-window) dedup="$2"; shift 2 ;;
        -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
done
case "$duration" in
    *h) seconds=$(( ${duration%h} * 3600 )) ;;
    *m) seconds=$(( ${duration%m} * 60 )) ;;
    *s) seconds=${duration%s} ;;
    *) seconds=$duration ;;
esac

cargo build --release --workspace --bins --locked >&2
bin=target/release
work=$(mktemp -d /tmp/projector-soak.XXXXXX)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

redis-server --port 0 --unixsocket "$work/redis.sock" --save "" --appendonly no --dir "$work" >/dev/null 2>&1 &
pids+=($!)
until redis-cli -s "$work/redis.sock" ping >/dev/null 2>&1; do sleep 0.1; done
rc() { redis-cli -s "$work/redis.sock" "$@"; }

"$bin/projector-fake-snuba" --addr 127.0.0.1:0 --latency 50ms --jitter 20ms --concurrency-limit 100000 >"$work/fake.addr" 2>/dev/null &
pids+=($!)
until [ -s "$work/fake.addr" ]; do sleep 0.1; done
fake="http://$(head -1 "$work/fake.addr")"

export PROJECTOR_REDIS_URL="unix://$work/redis.sock" PROJECTOR_QUERY_SOURCE=snuba PROJECTOR_QUERY_URL="$fake" \
       PROJECTOR_SLOTS_LIMIT="$limit" PROJECTOR_WORKER_METRICS_ADDR=127.0.0.1:0 RUST_LOG=warn \
       PROJECTOR_RUNS_RETENTION="$retention" PROJECTOR_RUNS_DEDUP_WINDOW="$dedup"
workers=()
for i in 1 2; do
    "$bin/projector-worker" run --concurrency 64 2>"$work/worker-$i.log" &
    pids+=($!); workers+=($!)
done

declare -A outcome_total=()
runs=0 started=$(date +%s) next_sample=0
printf '%8s %6s %12s %12s %14s %10s %12s\n' elapsed_s runs worker1_rss_kb worker2_rss_kb redis_used_b redis_keys keys_no_ttl
while [ $(( $(date +%s) - started )) -lt "$seconds" ]; do
    if [ "$(date +%s)" -ge "$next_sample" ]; then
        next_sample=$(( $(date +%s) + every ))
        rss=()
        for p in "${workers[@]}"; do rss+=("$(awk '/VmRSS/ {print $2}' /proc/"$p"/status)"); done
        used=$(rc info memory | awk -F: '/^used_memory:/ {print $2}' | tr -d '\r')
        keys=$(rc dbsize)
        # One server-side pass (a client-side PTTL per key took minutes at 20,000 keys and
        # starved the soak of runs).
        no_ttl=$(rc eval "local n = 0 for _, k in ipairs(redis.call('KEYS', '*')) do if redis.call('PTTL', k) == -1 then n = n + 1 end end return n" 0)
        printf '%8s %6s %12s %12s %14s %10s %12s\n' $(( $(date +%s) - started )) "$runs" "${rss[0]}" "${rss[1]}" "$used" "$keys" "$no_ttl"
    fi
    "$bin/projector-scheduler" run-once --wait --wait-timeout 10m --fail-on none --orgs "$orgs" --batch-delay 0s \
        --summary-json "$work/s.json" >/dev/null 2>>"$work/scheduler.log"
    runs=$((runs + 1))
    for o in completed skipped_no_slot rate_limited failed slot_unavailable skipped_rate_policy; do
        n=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1])).get(sys.argv[2],0))" "$work/s.json" "$o")
        outcome_total[$o]=$(( ${outcome_total[$o]:-0} + n ))
    done
done

stats=$(curl -s "$fake/stats")
echo
echo "runs: $runs of $orgs orgs in $(( $(date +%s) - started ))s (slot limit $limit)"
for o in completed skipped_no_slot rate_limited failed slot_unavailable skipped_rate_policy; do echo "  $o: ${outcome_total[$o]:-0}"; done
echo "query service: $stats"
echo "keys without a TTL at the end:"
while read -r key; do
    [ -n "$key" ] && [ "$(rc pttl "$key")" = "-1" ] && echo "  $key ($(rc type "$key"), $(rc memory usage "$key") bytes)"
done < <(rc --scan)
