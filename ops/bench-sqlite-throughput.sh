#!/bin/sh
# Run from the repository after `cargo build --release -p projector-scheduler`.
# Three embedded runs on one SQLite file, 2,000 orgs x 200 ms at slots.limit 50: wall time and share of the ideal 8 s.
# The runs project the same orgs in the same hour, so projections are discarded: in the file, the
# fence would refuse the older of two writes of one org.
dir=$(mktemp -d)
start=$(date +%s.%N)
for i in 1 2 3; do
  PROJECTOR_BACKEND_KIND=sqlite PROJECTOR_BACKEND_DSN=sqlite://$dir/fleet.db PROJECTOR_SLOTS_LIMIT=50 \
  PROJECTOR_WORKER_CONCURRENCY=50 PROJECTOR_QUERY_SYNTHETIC_LATENCY=200ms PROJECTOR_SINK_KIND=discard \
  "$(dirname "$0")/../target/release/projector-scheduler" run-once --embedded --orgs $([ $i = 3 ] && echo 666 || echo 667) \
    --batch-delay 0s --summary-json $dir/s$i.json >/dev/null 2>$dir/err$i.log &
done
wait
end=$(date +%s.%N)
echo "wall $(echo "$end - $start" | bc) s; ideal 8 s; share $(echo "scale=3; 8 / ($end - $start)" | bc)"
grep -h -o '"completed": [0-9]*\|"max_concurrent_queries": [0-9]*\|"duration_ms": [0-9]*' $dir/s*.json | tr '\n' ' '; echo
rm -rf "$dir"
