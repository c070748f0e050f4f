#!/usr/bin/env python3
"""Projector and BullMQ on the same workload, each on a fresh redis-server and its own fake query
service, in one invocation; prints one table.

Workload: ORGS jobs, one query each at LATENCY against the fake (projector-fake-snuba), 4 worker
processes x 60 jobs in flight, a fleet-wide limit of 50 concurrent queries (Projector: slots;
BullMQ 6.7.0: Queue.setGlobalConcurrency). Build first: cargo build --release --workspace.

Usage: bench/peers/compare.py [--orgs 2000,10000] [--latency 40ms,200ms] [--json FILE]
"""
import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
RELEASE = os.path.join(ROOT, "target", "release")
BULLMQ = os.path.join(ROOT, "bench", "peers", "bullmq")
WORKERS, CONCURRENCY, LIMIT = 4, 60, 50


def ms(text):
    return float(text[:-2]) if text.endswith("ms") else float(text[:-1]) * 1000


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fake_stats(url):
    with urllib.request.urlopen(f"{url}/stats") as r:
        return json.load(r)


def mean_in_flight(stats):
    span = stats["last_end_unix_ms"] - stats["first_start_unix_ms"]
    return stats["busy_ms"] / span if span > 0 else 0.0


def projector(orgs, latency):
    bench = os.path.join(RELEASE, "projector-pipeline-bench")
    args = [bench, "--fanout-orgs", "1", "--orgs", str(orgs), "--latency", latency, "--workers", str(WORKERS),
            "--concurrency", str(CONCURRENCY), "--limit", str(LIMIT)]
    subprocess.run(args, check=True, stdout=subprocess.DEVNULL)
    with open(os.path.join(ROOT, "target", "bench", "pipeline.json")) as f:
        p = json.load(f)
    cost = p["cost_per_org"]
    return {
        "system": "projector", "completed": p["completed"], "share_of_ideal": p["share_of_ideal"],
        "max_in_flight": p["max_in_flight_at_query_service"], "mean_in_flight": p["mean_in_flight_at_query_service"],
        "rejected_429": p["rejected_429"], "redis_commands_per_job": cost["redis_commands_total"],
        "redis_memory_bytes_per_job": cost["redis_memory_bytes_during_run"], "redis_cpu_us_per_job": cost["redis_cpu_us"],
    }


def bullmq(orgs, latency):
    if not os.path.isdir(os.path.join(BULLMQ, "node_modules")):
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=BULLMQ, check=True, stdout=subprocess.DEVNULL)
    procs = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            port = free_port()
            procs.append(subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                           "--appendonly", "no", "--dir", tmp], stdout=subprocess.DEVNULL))
            fake = subprocess.Popen([os.path.join(RELEASE, "projector-fake-snuba"), "--addr", "127.0.0.1:0",
                                     "--latency", latency], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            procs.append(fake)
            fake_url = "http://" + fake.stdout.readline().strip()
            deadline = time.time() + 10
            while subprocess.run(["redis-cli", "-p", str(port), "ping"], capture_output=True).stdout.strip() != b"PONG":
                if time.time() > deadline:
                    raise RuntimeError("redis-server did not start")
                time.sleep(0.05)
            env = dict(os.environ, REDIS_URL=f"redis://127.0.0.1:{port}", QUERY_URL=fake_url, ORGS=str(orgs),
                       WORKERS=str(WORKERS), CONCURRENCY=str(CONCURRENCY), LIMIT=str(LIMIT))
            out = subprocess.run(["node", os.path.join(BULLMQ, "bench.mjs")], env=env, check=True, capture_output=True, text=True)
            b = json.loads(out.stdout.strip().splitlines()[-1])
            stats = fake_stats(fake_url)
    finally:
        for p in procs:
            p.kill()
            p.wait()
    ideal = LIMIT / (ms(latency) / 1000)
    return {
        "system": "bullmq 6.7.0", "completed": b["completed"], "share_of_ideal": b["completed"] / b["wall_s"] / ideal,
        "max_in_flight": stats["max_in_flight"], "mean_in_flight": mean_in_flight(stats), "rejected_429": stats["rejected_429"],
        "redis_commands_per_job": b["redis_commands_per_job"], "redis_memory_bytes_per_job": b["redis_memory_bytes_per_job"],
        "redis_cpu_us_per_job": b["redis_cpu_us_per_job"],
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--orgs", default="2000,10000")
    ap.add_argument("--latency", default="40ms,200ms")
    ap.add_argument("--json", help="also write every row to this file")
    a = ap.parse_args()
    rows = []
    for latency in a.latency.split(","):
        for orgs in [int(o) for o in a.orgs.split(",")]:
            for run in (projector, bullmq):
                row = dict(run(orgs, latency), orgs=orgs, latency=latency)
                rows.append(row)
                print(f"  {row['system']}: {orgs} orgs at {latency} done", file=sys.stderr)
    header = "| system | orgs | L | share of ideal | max in flight | mean in flight | 429s | Redis cmds/job | Redis mem/job | Redis CPU/job |"
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for r in rows:
        print(f"| {r['system']} | {r['orgs']} | {r['latency']} | {r['share_of_ideal']:.3f} | {r['max_in_flight']} | "
              f"{r['mean_in_flight']:.1f} | {r['rejected_429']} | {r['redis_commands_per_job']:.1f} | "
              f"{r['redis_memory_bytes_per_job']:.0f} B | {r['redis_cpu_us_per_job']:.0f} µs |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
