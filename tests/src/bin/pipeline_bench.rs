//! End-to-end pipeline benchmark with real processes (build them first: `cargo build --release
//! --workspace`): fan-out time for 100,000 orgs, throughput against the ideal `limit / latency`,
//! and average slot utilization while a backlog exists, and the run's cost per org: Redis commands
//! (script calls and the commands inside them apart), Redis CPU, Redis memory during the run and
//! what of it would still be there an hour later, and worker CPU. Prints the figures and writes
//! target/bench/pipeline.json.

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use projector_postgres::Store;
use projector_shared::RunId;
use projector_shared::keys::{self, SlotKeys};
use projector_tests::{FakeSnuba, PostgresServer, RedisServer, free_port, workspace_bin};

#[derive(Debug, Parser)]
struct Args {
    /// Organizations in the fan-out measurement
    #[arg(long, default_value_t = 100_000)]
    fanout_orgs: u64,
    /// Organizations in the throughput measurement
    #[arg(long, default_value_t = 2_000)]
    orgs: u64,
    /// Latency of one fake query
    #[arg(long, default_value = "200ms", value_parser = humantime::parse_duration)]
    latency: Duration,
    #[arg(long, default_value_t = 50)]
    limit: u32,
    #[arg(long, default_value_t = 3)]
    workers: usize,
    /// Jobs in flight per worker
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Where projections go: redis, postgres (a private PostgreSQL started by the bench) or discard
    #[arg(long, default_value = "redis", value_parser = ["redis", "postgres", "discard"])]
    sink: String,
    /// Also charge every Redis command to the script or direct command that sent it (a MONITOR
    /// capture; it slows Redis, so use it for the counts, not the timings)
    #[arg(long)]
    attribute: bool,
    /// After the run, compact its history as `runs.completed_detail` does and print what a fleet
    /// of this many orgs, run hourly with a week of history, needs of Redis (memory and CPU),
    /// from the figures this run measured
    #[arg(long)]
    project: Option<u64>,
}

/// Sum over workers of one sample of their /metrics.
fn summed(metrics: &[String], series: &str) -> f64 {
    metrics.iter().filter_map(|m| projector_tests::sample(m, series)).sum()
}

/// One `INFO` section as key → value.
fn info(conn: &mut redis::Connection, section: &str) -> anyhow::Result<BTreeMap<String, String>> {
    let text: String = redis::cmd("INFO").arg(section).query(conn)?;
    Ok(text.lines().filter_map(|l| l.split_once(':')).map(|(k, v)| (k.to_owned(), v.trim().to_owned())).collect())
}

/// Redis's own CPU so far (user + system), in µs.
fn redis_cpu_us(conn: &mut redis::Connection) -> anyhow::Result<f64> {
    let cpu = info(conn, "cpu")?;
    let secs = |k: &str| cpu.get(k).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    Ok((secs("used_cpu_user") + secs("used_cpu_sys")) * 1e6)
}

/// `INFO commandstats` as command → (calls, µs); commands run inside scripts are counted too.
fn command_stats(conn: &mut redis::Connection) -> anyhow::Result<BTreeMap<String, (u64, u64)>> {
    let mut stats = BTreeMap::new();
    for (key, value) in info(conn, "commandstats")? {
        let Some(cmd) = key.strip_prefix("cmdstat_") else { continue };
        let field = |name: &str| {
            value.split(',').find_map(|kv| kv.strip_prefix(&format!("{name}="))).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        };
        stats.insert(cmd.to_owned(), (field("calls"), field("usec")));
    }
    Ok(stats)
}

/// Prints the run's Redis memory by kind of key, most first, and returns it as JSON.
fn print_memory(kinds: &BTreeMap<String, projector_tests::memory::Kind>, orgs: u64) -> serde_json::Value {
    let per_org = |n: u64| n as f64 / orgs.max(1) as f64;
    let mut rows: Vec<(&String, &projector_tests::memory::Kind)> = kinds.iter().filter(|(_, k)| per_org(k.bytes) >= 1.0).collect();
    rows.sort_by_key(|(_, k)| std::cmp::Reverse(k.bytes));
    println!("Redis memory per org by kind of key (MEMORY USAGE; kinds under 1 B per org left out):");
    let mut json = serde_json::Map::new();
    for (kind, k) in rows {
        let lives = k.longest_ttl_ms.map_or("no TTL".to_owned(), |ms| format!("{:.1} h left", ms as f64 / 3_600_000.0));
        println!("  {:>7.0} B  {:>6} keys  {lives:<12} {kind}", per_org(k.bytes), k.keys);
        json.insert(kind.clone(), serde_json::json!({"bytes_per_org": per_org(k.bytes), "keys": k.keys, "ttl_ms": k.longest_ttl_ms}));
    }
    serde_json::Value::Object(json)
}

/// A process's CPU so far (user + system), in µs, from /proc.
fn process_cpu_us(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces) start at field 3; utime and stime are 14 and 15.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields.get(11).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0)
        + fields.get(12).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    let per_second: f64 = Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0);
    Ok(ticks / per_second * 1e6)
}

/// Prints each sender's commands per org, most first, and returns them as JSON.
fn print_attribution(parts: &BTreeMap<String, projector_tests::cost::Part>, orgs: u64) -> serde_json::Value {
    let per_org = |n: u64| n as f64 / orgs.max(1) as f64;
    let mut rows: Vec<(&String, &projector_tests::cost::Part)> = parts.iter().collect();
    rows.sort_by_key(|(_, p)| std::cmp::Reverse(p.calls + p.inner_total()));
    let total: u64 = rows.iter().map(|(_, p)| p.calls + p.inner_total()).sum();
    println!("Redis commands per org by sender (MONITOR capture; {:.1} in all):", per_org(total));
    println!("  {:<28} {:>7} {:>8} {:>7}  commands inside", "sender", "calls", "inside", "total");
    let mut json = serde_json::Map::new();
    for (name, part) in rows {
        let mut inner: Vec<(&String, &u64)> = part.inner.iter().collect();
        inner.sort_by_key(|(_, n)| std::cmp::Reverse(**n));
        let listed: Vec<String> = inner.iter().map(|(c, n)| format!("{c} {:.2}", per_org(**n))).collect();
        println!(
            "  {name:<28} {:>7.2} {:>8.2} {:>7.2}  {}",
            per_org(part.calls),
            per_org(part.inner_total()),
            per_org(part.calls + part.inner_total()),
            listed.join(", ")
        );
        json.insert(
            name.clone(),
            serde_json::json!({
                "calls": per_org(part.calls),
                "inside": inner.iter().map(|(c, n)| ((*c).clone(), serde_json::json!(per_org(**n)))).collect::<serde_json::Map<_, _>>(),
            }),
        );
    }
    serde_json::Value::Object(json)
}

/// What one measured run says a fleet of `fleet` orgs needs of Redis.
struct Projection {
    fleet: u64,
    orgs: u64,
    compacted: u64,
    full_history_per_org: f64,
    retained_per_org: f64,
    projections_per_org: f64,
    queued_per_org: f64,
    cpu_us_per_org: f64,
    commands_per_org: f64,
    calls_per_org: Option<f64>,
}

/// Prints and returns the projection: per org as measured, then the fleet's week. The week keeps
/// the run under way and the one in its `runs.completed_detail` hour in full, 166 runs
/// compacted (their orgs that did not complete in full, as measured in this run), every org's
/// projection, and at the peak of a fan-out every job queued at once.
fn print_projection(p: &Projection) -> serde_json::Value {
    let n = p.fleet as f64;
    let week = n * (p.projections_per_org + 2.0 * p.full_history_per_org + 166.0 * p.retained_per_org);
    let peak = week + n * p.queued_per_org;
    let core_share = n * p.cpu_us_per_org / 3_600.0 / 1e6;
    println!("projection from this run ({} orgs, {} compacted):", p.orgs, p.compacted);
    match p.calls_per_org {
        Some(calls) => println!("  per org: {calls:.1} calls, {:.1} commands, {:.0} µs of Redis CPU", p.commands_per_org, p.cpu_us_per_org),
        None => {
            println!("  per org: {:.1} commands, {:.0} µs of Redis CPU (calls: with --attribute)", p.commands_per_org, p.cpu_us_per_org)
        }
    }
    println!(
        "  per org: run history {:.0} B in full, {:.1} B once compacted; projection {:.0} B; {:.0} B while queued",
        p.full_history_per_org, p.retained_per_org, p.projections_per_org, p.queued_per_org
    );
    println!(
        "  {} orgs hourly with a week of history: {:.2} GB of Redis ({:.2} GB at a fan-out's peak), {:.1} % of one Redis core",
        p.fleet,
        week / 1e9,
        peak / 1e9,
        core_share * 100.0
    );
    serde_json::json!({
        "fleet_orgs": p.fleet,
        "week_gb": week / 1e9,
        "peak_gb": peak / 1e9,
        "redis_core_share": core_share,
        "full_history_bytes_per_org": p.full_history_per_org,
        "retained_bytes_per_org": p.retained_per_org,
        "projection_bytes_per_org": p.projections_per_org,
        "queued_bytes_per_org": p.queued_per_org,
    })
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let redis = RedisServer::start();
    let fake_bin = workspace_bin("projector-fake-snuba");
    let latency = format!("{}ms", args.latency.as_millis());
    let fake = FakeSnuba::start(fake_bin.to_str().unwrap_or_default(), &["--latency", &latency]);
    let postgres = (args.sink == "postgres").then(PostgresServer::start);
    let mut env = vec![
        ("PROJECTOR_REDIS_URL", redis.url()),
        ("PROJECTOR_QUERY_SOURCE", "snuba".into()),
        ("PROJECTOR_QUERY_URL", fake.url()),
        ("PROJECTOR_WORKER_METRICS_ADDR", "127.0.0.1:0".into()),
        ("PROJECTOR_SLOTS_LIMIT", args.limit.to_string()),
        ("PROJECTOR_SLOTS_MAX_WAIT", "10m".into()),
        ("PROJECTOR_SINK_KIND", args.sink.clone()),
        ("RUST_LOG", "warn".into()),
    ];
    if let Some(pg) = &postgres {
        env.push(("PROJECTOR_SINK_POSTGRES_URL", pg.url()));
    }

    // 1. Fan-out of 100,000 orgs (no workers): plan, run record, delayed bulk pushes.
    let mut conn = redis.connection();
    let used_memory = |conn: &mut redis::Connection| -> anyhow::Result<u64> {
        Ok(info(conn, "memory")?.get("used_memory").and_then(|v| v.parse().ok()).unwrap_or(0))
    };
    let fanout_memory_before = used_memory(&mut conn)?;
    let started = Instant::now();
    let out = Command::new(workspace_bin("projector-scheduler"))
        .args(["run-once", "--orgs", &args.fanout_orgs.to_string(), "--batch-delay", "2s"])
        .envs(env.iter().cloned())
        .output()?;
    let fanout = started.elapsed();
    anyhow::ensure!(out.status.success(), "fan-out failed: {}", String::from_utf8_lossy(&out.stderr));
    let fanout_memory = used_memory(&mut conn)?.saturating_sub(fanout_memory_before);
    // The first batch is due at once (ready list), the others wait in the scheduled set.
    let queue = projector_queue::config(projector_shared::keys::KeyLayout::Server);
    let (ready, scheduled): (u64, u64) = redis::pipe().llen(queue.active_jobs_list()).zcard(queue.scheduled_jobs_set()).query(&mut conn)?;
    anyhow::ensure!(
        ready + scheduled == args.fanout_orgs,
        "expected {} queued jobs, found {ready} ready and {scheduled} scheduled",
        args.fanout_orgs
    );
    let _: () = redis::cmd("FLUSHALL").query(&mut conn)?;

    // 2. Throughput and utilization: workers × 64 jobs in flight against `limit` slots.
    let mut workers = Vec::new();
    let metrics_addrs: Vec<String> = (0..args.workers).map(|_| format!("127.0.0.1:{}", free_port())).collect();
    for addr in &metrics_addrs {
        workers.push(
            Command::new(workspace_bin("projector-worker"))
                .args(["run", "--concurrency", &args.concurrency.to_string(), "--metrics-addr", addr])
                .envs(env.iter().cloned())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()?,
        );
    }
    std::thread::sleep(Duration::from_millis(500));
    let memory_before = used_memory(&mut conn)?;
    let cpu_before = redis_cpu_us(&mut conn)?;
    let workers_cpu_before: f64 = workers.iter().map(|w| process_cpu_us(w.id()).unwrap_or(0.0)).sum();
    let _: () = redis::cmd("CONFIG").arg("RESETSTAT").query(&mut conn)?;
    let capture = if args.attribute { Some(projector_tests::cost::Capture::start(&redis.socket())?) } else { None };
    let dir = tempfile::tempdir()?;
    let summary_path = dir.path().join("s.json");
    let run = Command::new(workspace_bin("projector-scheduler"))
        .args(["run-once", "--wait", "--wait-timeout", "30m", "--orgs", &args.orgs.to_string(), "--batch-delay", "0s", "--summary-json"])
        .arg(&summary_path)
        .envs(env.iter().cloned())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let keys = SlotKeys::new("default");
    let queue = projector_queue::config(projector_shared::keys::KeyLayout::Server);
    let (mut samples, mut busy) = (0u64, 0f64);
    let mut run = run;
    let started = Instant::now();
    let mut first_grant: Option<Duration> = None;
    while run.try_wait()?.is_none() {
        let (in_use, waiting, ready): (u64, u64, u64) =
            redis::pipe().zcard(keys.leases()).zcard(keys.queue()).llen(queue.active_jobs_list()).query(&mut conn)?;
        if in_use > 0 && first_grant.is_none() {
            first_grant = Some(started.elapsed());
        }
        // A backlog: jobs wait for a slot or for a worker.
        if waiting + ready > 0 {
            samples += 1;
            busy += in_use as f64 / f64::from(args.limit);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let summary: serde_json::Value = serde_json::from_slice(&std::fs::read(&summary_path)?)?;
    let parts = capture.map(|c| c.finish()).transpose()?;
    // The cost ledger, read before the workers' housekeeping (vacuum) changes what the run left.
    let commands = command_stats(&mut conn)?;
    let redis_cpu = redis_cpu_us(&mut conn)? - cpu_before;
    let memory_after = used_memory(&mut conn)?;
    let workers_cpu: f64 = workers.iter().map(|w| process_cpu_us(w.id()).unwrap_or(0.0)).sum::<f64>() - workers_cpu_before;
    let kinds = projector_tests::memory::by_kind(&mut conn)?;
    // Finished jobs have no TTL, but the workers' vacuum deletes them within a minute.
    let vacuumed = |kind: &str| {
        [queue.job_data_hash(), queue.done_jobs_set()].iter().any(|k| k == kind) || kind.starts_with(&format!("{}:", queue.job_meta_hash()))
    };
    let left_after = |ms: u64| kinds.iter().filter(|(kind, k)| !vacuumed(kind) && k.outlives(ms)).map(|(_, k)| k.bytes).sum::<u64>();
    let (left_after_an_hour, left_after_a_week) = (left_after(3_600_000), left_after(7 * 24 * 3_600_000 + 1));
    let all_keys: u64 = kinds.values().map(|k| k.bytes).sum();
    let projections = kinds.get(&projector_tests::memory::kind_of(&keys::projections(projector_shared::OrgId(1)))).map_or(0, |k| k.bytes);
    let tick: Option<String> = redis::cmd("HGET")
        .arg(keys::KeyLayout::Server.run(&RunId(summary["run_id"].as_str().unwrap_or_default().to_owned())))
        .arg("tick")
        .query(&mut conn)?;
    let tick_ms = tick.and_then(|t| chrono::DateTime::parse_from_rfc3339(&t).ok()).map(|t| t.timestamp_millis());
    let metrics: Vec<String> = metrics_addrs.iter().map(|a| projector_tests::scrape(a)).collect();
    let (store_s, stores) = (summed(&metrics, "projector_sink_write_seconds_sum"), summed(&metrics, "projector_sink_write_seconds_count"));
    let (query_s, queries) =
        (summed(&metrics, "projector_query_duration_seconds_sum"), summed(&metrics, "projector_query_duration_seconds_count"));
    let rows = match &postgres {
        Some(pg) => Some(tokio::runtime::Runtime::new()?.block_on(Store::new(&pg.url(), 1)?.count_rows())?),
        None => None,
    };
    for mut w in workers {
        let _ = w.kill();
        let _ = w.wait();
    }
    let completed = summary["completed"].as_u64().unwrap_or(0);
    let wall = Duration::from_millis(summary["duration_ms"].as_u64().unwrap_or(0));
    let throughput = completed as f64 / wall.as_secs_f64();
    let ideal = f64::from(args.limit) / args.latency.as_secs_f64();
    let utilization = if samples > 0 { busy / samples as f64 * 100.0 } else { 0.0 };
    let stats = tokio::runtime::Runtime::new()?.block_on(fake.stats());
    let number = |k: &str| stats[k].as_f64().unwrap_or(0.0);
    let service_span_ms = number("last_end_unix_ms") - number("first_start_unix_ms");
    let mean_in_flight = if service_span_ms > 0.0 { number("busy_ms") / service_span_ms } else { 0.0 };
    let tick_to_first_query_ms = tick_ms.map(|t| number("first_start_unix_ms") - t as f64);
    let (mean_store_ms, mean_query_ms) = (store_s / stores.max(1.0) * 1000.0, query_s / queries.max(1.0) * 1000.0);
    let store_share = if store_s + query_s > 0.0 { store_s / (store_s + query_s) } else { 0.0 };

    let per_org = |x: f64| x / completed.max(1) as f64;
    let is_script = |c: &str| matches!(c, "evalsha" | "eval" | "evalsha_ro" | "eval_ro" | "fcall" | "script|load");
    let script_calls: u64 = commands.iter().filter(|(c, _)| is_script(c)).map(|(_, (n, _))| n).sum();
    let inner_or_direct: u64 = commands.iter().filter(|(c, _)| !is_script(c)).map(|(_, (n, _))| n).sum();
    let mut by_calls: Vec<(&String, &(u64, u64))> = commands.iter().filter(|(c, _)| !is_script(c)).collect();
    by_calls.sort_by_key(|(_, (calls, _))| std::cmp::Reverse(*calls));
    let top: Vec<String> = by_calls.iter().take(8).map(|(c, (n, _))| format!("{c} {:.1}", per_org(*n as f64))).collect();
    let mut figures = serde_json::json!({
        "fanout_orgs": args.fanout_orgs,
        "fanout_seconds": fanout.as_secs_f64(),
        "fanout_redis_memory_bytes": fanout_memory,
        "orgs": args.orgs,
        "completed": completed,
        "latency_ms": args.latency.as_millis() as u64,
        "limit": args.limit,
        "workers": args.workers,
        "throughput_per_s": throughput,
        "ideal_per_s": ideal,
        "share_of_ideal": throughput / ideal,
        "utilization_percent": utilization,
        "first_grant_ms": first_grant.unwrap_or_default().as_millis() as u64,
        "max_in_flight_at_query_service": stats["max_in_flight"],
        "rejected_429": stats["rejected_429"],
        "mean_in_flight_at_query_service": mean_in_flight,
        "tick_to_first_query_ms": tick_to_first_query_ms,
        "sink": args.sink,
        "concurrency": args.concurrency,
        "mean_store_write_ms": mean_store_ms,
        "mean_query_ms": mean_query_ms,
        "store_share_of_query_plus_store": store_share,
        "rows_written": rows,
        "rows_per_s": rows.map(|r| r as f64 / wall.as_secs_f64()),
        "cost_per_org": {
            "redis_script_calls": per_org(script_calls as f64),
            "redis_other_commands": per_org(inner_or_direct as f64),
            "redis_commands_total": per_org((script_calls + inner_or_direct) as f64),
            "redis_cpu_us": per_org(redis_cpu),
            "redis_memory_bytes_during_run": per_org(memory_after.saturating_sub(memory_before) as f64),
            "redis_memory_bytes_after_an_hour": per_org(left_after_an_hour as f64),
            "redis_memory_bytes_after_runs_retention": per_org(left_after_a_week as f64),
            "redis_memory_bytes_of_keys": per_org(all_keys as f64),
            "redis_memory_bytes_of_keys_but_projections": per_org(all_keys.saturating_sub(projections) as f64),
            "worker_cpu_us": per_org(workers_cpu),
            "top_commands": top,
        },
    });
    println!(
        "fan-out of {} orgs (process start to exit)   {:.2} s; Redis memory {:.1} MB = {:.0} B per queued org",
        args.fanout_orgs,
        fanout.as_secs_f64(),
        fanout_memory as f64 / 1e6,
        fanout_memory as f64 / args.fanout_orgs.max(1) as f64
    );
    println!(
        "run of {} orgs, {} workers x {}, limit {}, query latency {:?}, sink {}",
        args.orgs, args.workers, args.concurrency, args.limit, args.latency, args.sink
    );
    println!(
        "  completed {completed} in {:.2} s = {throughput:.1} orgs/s; ideal {ideal:.1}/s -> {:.1}% of ideal",
        wall.as_secs_f64(),
        throughput / ideal * 100.0
    );
    println!("  first slot granted {:.0} ms after the run was started", first_grant.unwrap_or_default().as_secs_f64() * 1000.0);
    println!("  average slot utilization while a backlog existed: {utilization:.1}% ({samples} samples)");
    println!(
        "  query service: max in flight {}, mean in flight {mean_in_flight:.1}, 429s {}",
        stats["max_in_flight"], stats["rejected_429"]
    );
    match tick_to_first_query_ms {
        Some(ms) => println!("  first query at the service {ms:.0} ms after the run's tick (its first batch's release time)"),
        None => println!("  first query: the run record has no tick"),
    }
    println!(
        "  store ({}): mean write {mean_store_ms:.2} ms against a mean query of {mean_query_ms:.1} ms = {:.1}% of query + store",
        args.sink,
        store_share * 100.0
    );
    if let Some(rows) = rows {
        println!("  PostgreSQL: {rows} rows = {:.0} rows/s over the run", rows as f64 / wall.as_secs_f64());
    }
    println!("cost per org:");
    println!(
        "  Redis commands {:.1}: {:.1} script calls + {:.1} other (inside scripts or direct); most: {}",
        per_org((script_calls + inner_or_direct) as f64),
        per_org(script_calls as f64),
        per_org(inner_or_direct as f64),
        top.join(", ")
    );
    println!("  Redis CPU {:.0} µs; worker CPU {:.0} µs (all workers)", per_org(redis_cpu), per_org(workers_cpu));
    println!(
        "  Redis memory {:.0} B during the run, {:.0} B of it still there an hour later (no TTL, or a TTL beyond an hour)",
        per_org(memory_after.saturating_sub(memory_before) as f64),
        per_org(left_after_an_hour as f64)
    );
    println!(
        "  of the keys: {:.0} B per org ({:.0} B without the projections themselves); an hour later {:.0} B; after runs.retention {:.0} B (finished jobs, vacuumed within a minute, counted as gone)",
        per_org(all_keys as f64),
        per_org(all_keys.saturating_sub(projections) as f64),
        per_org(left_after_an_hour as f64),
        per_org(left_after_a_week as f64)
    );
    figures["memory_by_kind"] = print_memory(&kinds, completed);
    if let Some(fleet) = args.project {
        let run_id = RunId(summary["run_id"].as_str().unwrap_or_default().to_owned());
        let history = |kinds: &BTreeMap<String, projector_tests::memory::Kind>| {
            kinds.iter().filter(|(kind, _)| kind.starts_with("projector:run:")).map(|(_, k)| k.bytes).sum::<u64>()
        };
        let full = history(&kinds);
        let compacted = tokio::runtime::Runtime::new()?.block_on(async {
            let (_, rc) = projector_shared::redis_conn::connection_manager(redis.url(), Duration::from_secs(5))?;
            let records = projector_shared::run_record::RunRecords::new(rc, Duration::from_secs(7 * 86_400));
            anyhow::Ok(records.compact(&run_id).await?)
        })?;
        let retained = history(&projector_tests::memory::by_kind(&mut conn)?);
        let queued = fanout_memory as f64 / args.fanout_orgs.max(1) as f64;
        let calls = figures
            .get("attribution_per_org")
            .and_then(|a| a.as_object())
            .map(|a| a.values().filter_map(|v| v["calls"].as_f64()).sum::<f64>());
        figures["projection"] = print_projection(&Projection {
            fleet,
            orgs: completed,
            compacted,
            full_history_per_org: per_org(full as f64),
            retained_per_org: per_org(retained as f64),
            projections_per_org: per_org(projections as f64),
            queued_per_org: queued,
            cpu_us_per_org: per_org(redis_cpu),
            commands_per_org: per_org((script_calls + inner_or_direct) as f64),
            calls_per_org: calls,
        });
    }
    if let Some(parts) = parts {
        figures["attribution_per_org"] = print_attribution(&parts, completed);
    }
    let out_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    std::fs::create_dir_all(&out_dir)?;
    std::fs::write(out_dir.join("pipeline.json"), serde_json::to_vec_pretty(&figures)?)?;
    println!("written to target/bench/pipeline.json");
    Ok(())
}
