//! History benchmark against a private local `redis-server`: one run of `--orgs` orgs (ids with
//! random gaps, three projects each, a realistic trail per org, `--failed-per-mille` of them
//! failed) recorded through `RunRecords`, then compacted as `runs.completed_detail` does. Prints
//! the Redis memory of the run's keys before and after (`MEMORY USAGE ... SAMPLES 0`), the bytes
//! per org, how long compaction took, and what a week of hourly runs keeps at 100,000 and
//! 1,000,000 orgs.

use std::time::{Duration, Instant};

use clap::Parser;
use projector_shared::run::Outcome;
use projector_shared::run_record::RunRecords;
use projector_shared::trail::{Attempt, Step, Why};
use projector_shared::{OrgId, ProjectId, RunId};
use projector_tests::RedisServer;

#[derive(Parser)]
struct Args {
    /// Orgs in the run.
    #[arg(long, default_value_t = 100_000)]
    orgs: u64,
    /// Orgs per thousand that end failed (they keep their full record).
    #[arg(long, default_value_t = 10)]
    failed_per_mille: u64,
}

async fn run_bytes(conn: &projector_shared::redis_conn::RedisConn, run: &RunId) -> anyhow::Result<(u64, u64)> {
    let layout = conn.layout();
    let (mut all, mut trail) = (0, 0);
    for key in [
        layout.run(run),
        layout.run_orgs(run),
        layout.run_plan(run),
        layout.run_trail(run),
        layout.run_attempts(run),
        layout.run_completed(run),
    ] {
        let bytes: Option<u64> = redis::cmd("MEMORY").arg("USAGE").arg(&key).arg("SAMPLES").arg(0).query_async(&mut conn.clone()).await?;
        all += bytes.unwrap_or(0);
        if key == layout.run_trail(run) {
            trail = bytes.unwrap_or(0);
        }
    }
    Ok((all, trail))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let server = RedisServer::start();
    let (_, conn) = projector_shared::redis_conn::connection_manager(server.url(), Duration::from_secs(5))?;
    let runs = projector_config::RunsConfig {
        retention: Duration::from_secs(7 * 86_400),
        summary_retention: Duration::from_secs(90 * 86_400),
        trail_retention: Duration::from_secs(86_400),
        ..projector_config::RunsConfig::default()
    };
    let records = RunRecords::for_config(conn.clone(), &runs);
    let run = RunId("run-history-bench".into());
    records.create(&run, chrono::Utc::now(), args.orgs).await?;
    // Ids with gaps of 1 to 64, as a fleet's active orgs among all orgs ever created.
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut id = 1_000u64;
    let plan: Vec<(OrgId, Vec<ProjectId>)> = (0..args.orgs)
        .map(|_| {
            id += 1 + next() % 64;
            (OrgId(id), (0..3).map(|p| ProjectId(id * 10 + p)).collect())
        })
        .collect();
    records.store_plan(&run, &plan).await?;
    records.mark_fanned_out(&run).await?;
    let completed = Attempt {
        worker: "projector-worker-7f3a-host-1".into(),
        steps: vec![
            Step::Routed { limited: true, why: "rollout flag never set".into() },
            Step::Slot { granted: true, waited_ms: 12, token: Some(184_467), in_use: None, limit: None, queue_position: None },
            Step::Query { status: "ok".into(), ms: 41, throttled: false, pages: 1 },
        ],
        ..Attempt::bare(Outcome::Completed)
    };
    let failed = Attempt { why: Some(Why::new("server_error", "the query service answered 500")), ..Attempt::bare(Outcome::Failed) };
    for (i, (org, _)) in plan.iter().enumerate() {
        let every = 1_000 / args.failed_per_mille.max(1);
        let attempt = if args.failed_per_mille > 0 && (i as u64).is_multiple_of(every) { &failed } else { &completed };
        records.record(&run, *org, attempt).await?;
    }
    let summary = records.summary(&run, projector_shared::run_record::OrgIds::Leave).await?.expect("the run");
    let (n_completed, n_failed) = (summary.count(Outcome::Completed), summary.count(Outcome::Failed));
    let (before, trail) = run_bytes(&conn, &run).await?;
    let started = Instant::now();
    let compacted = records.compact(&run).await?;
    let took = started.elapsed();
    let (after, _) = run_bytes(&conn, &run).await?;
    let per_org_full = before as f64 / args.orgs as f64;
    let per_completed = after as f64 / n_completed.max(1) as f64;
    println!(
        "run of {} orgs ({n_completed} completed, {n_failed} failed), compacted {compacted} in {:.2} s",
        args.orgs,
        took.as_secs_f64()
    );
    println!("  before compaction: {before} B, {per_org_full:.0} B per org ({:.0} B of it trail)", trail as f64 / args.orgs as f64);
    println!("  after compaction:  {after} B, {per_completed:.1} B per completed org (the failed orgs' full records included)");
    // A week of hourly runs: the run under way and the one in its completed_detail hour in full,
    // 166 compacted, whose orgs that did not complete keep everything (their trail included).
    let failed_share = n_failed as f64 / args.orgs as f64;
    let compact_per_org = (after as f64 - failed_share * args.orgs as f64 * per_org_full) / args.orgs as f64;
    let week_per_org = 2.0 * per_org_full + 166.0 * (compact_per_org + failed_share * per_org_full);
    for n in [100_000u64, 1_000_000] {
        println!("  a week of hourly runs at {n} orgs: {:.2} GB of run history", week_per_org * n as f64 / 1e9);
    }
    Ok(())
}
