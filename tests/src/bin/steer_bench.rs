//! How the fleet steers by the query service: three runs against `projector-fake-snuba`, each
//! with its own redis-server and workers, sampled every 250 ms. For each run it prints the 429s,
//! the completion time against the ideal (orgs × latency / capacity), and writes the limit in
//! force, the queries in flight at the fake and its 429s over time to `docs/steer-<run>.csv`
//! (draw them with `projector-plot-adaptive docs/steer-*.csv`).
//! Usage: projector-steer-bench [--orgs 3000] [--latency 100ms] (build with --release first).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use projector_shared::slots::{RedisSlotLimiter, RedisSlotSettings};
use projector_tests::fleet::{base_env, run, text, worker};
use projector_tests::{FakeSnuba, Proc, RedisServer, workspace_bin};

#[derive(Debug, Parser)]
#[command(name = "projector-steer-bench")]
struct Args {
    /// Orgs per run.
    #[arg(long, default_value_t = 3000)]
    orgs: u64,
    /// Latency of one fake query.
    #[arg(long, default_value = "100ms", value_parser = humantime::parse_duration)]
    latency: Duration,
}

/// One run's setup.
struct Scenario {
    name: &'static str,
    /// The fake's flags beyond --latency.
    fake: &'static [&'static str],
    /// The workers' flags beyond --concurrency.
    worker: &'static [&'static str],
    /// The service's capacity (for the ideal time).
    capacity: u64,
    /// Drop the fake's capacity to this once a fifth of the orgs are done.
    drop_to: Option<u64>,
}

const SCENARIOS: &[Scenario] = &[
    Scenario { name: "service-30", fake: &["--concurrency-limit", "30"], worker: &[], capacity: 30, drop_to: None },
    Scenario { name: "drop-100-20", fake: &["--concurrency-limit", "100"], worker: &[], capacity: 20, drop_to: Some(20) },
    Scenario {
        name: "no-details-30",
        fake: &["--concurrency-limit", "30", "--no-quota-details"],
        worker: &["--set", "adaptive.enabled=true", "--set", "adaptive.window=1s"],
        capacity: 30,
        drop_to: None,
    },
];

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let fake_bin = workspace_bin("projector-fake-snuba");
    let latency = humantime::format_duration(args.latency).to_string();
    println!("run,orgs,completed,rejected_429,max_in_flight,seconds,ideal_seconds,ratio_to_ideal");
    for s in SCENARIOS {
        let redis = RedisServer::start();
        let mut fake_args = vec!["--latency", latency.as_str()];
        fake_args.extend_from_slice(s.fake);
        let fake = FakeSnuba::start(fake_bin.to_str().context("fake path")?, &fake_args);
        let env = base_env(&redis, &fake.url());
        let mut worker_args = vec!["--concurrency", "60", "--set", "slots.max_wait=10m"];
        worker_args.extend_from_slice(s.worker);
        let workers: Vec<Proc> = (0..3).map(|_| worker(&env, &worker_args)).collect();
        let samples = Arc::new(Mutex::new(vec!["t_s,limit_in_force,in_flight,rejected_429_total,throttled_total".to_owned()]));
        let rt = tokio::runtime::Runtime::new()?;
        let started = Instant::now();
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let sampler = {
            let (url, fake_url, into, done) = (redis.url(), fake.url(), samples.clone(), done.clone());
            let drop_to = s.drop_to;
            let orgs = args.orgs;
            rt.spawn(async move {
                let slots = RedisSlotLimiter::new(url, RedisSlotSettings::new(50, Duration::from_secs(30)))?;
                let mut dropped = drop_to.is_none();
                // The measurement's sampling period.
                let mut every = tokio::time::interval(Duration::from_millis(250));
                while !done.load(std::sync::atomic::Ordering::SeqCst) {
                    every.tick().await;
                    let (Ok(now), Ok(stats)) = (
                        slots.occupancy_now().await,
                        async { reqwest::get(format!("{fake_url}/stats")).await?.json::<serde_json::Value>().await }.await,
                    ) else {
                        continue;
                    };
                    let n = |k: &str| stats[k].as_u64().unwrap_or(0);
                    into.lock().map_err(|_| anyhow::anyhow!("samples"))?.push(format!(
                        "{:.2},{},{},{},{}",
                        started.elapsed().as_secs_f64(),
                        now.in_force.unwrap_or(50),
                        n("in_flight"),
                        n("rejected_429"),
                        n("throttled")
                    ));
                    if !dropped && n("requests") >= orgs / 5 {
                        let body = serde_json::json!({"concurrency_limit": drop_to});
                        reqwest::Client::new().post(format!("{fake_url}/config")).json(&body).send().await?;
                        dropped = true;
                    }
                }
                Ok::<(), anyhow::Error>(())
            })
        };
        let orgs = args.orgs.to_string();
        let dir = tempfile::tempdir()?;
        let summary_path = dir.path().join("summary.json");
        let summary_arg = summary_path.to_str().context("temp path")?;
        let out = run(
            "projector-scheduler",
            &env,
            &[
                "run-once",
                "--wait",
                "--wait-timeout",
                "20m",
                "--fail-on",
                "none",
                "--orgs",
                &orgs,
                "--batch-delay",
                "0s",
                "--summary-json",
                summary_arg,
            ],
        );
        let seconds = started.elapsed().as_secs_f64();
        done.store(true, std::sync::atomic::Ordering::SeqCst);
        rt.block_on(sampler)??;
        anyhow::ensure!(out.status.success(), "{}: run-once failed: {}", s.name, text(&out.stderr));
        let summary: serde_json::Value = serde_json::from_slice(&std::fs::read(&summary_path)?)?;
        let stats = fake.stats_now();
        let ideal = args.orgs as f64 * args.latency.as_secs_f64() / s.capacity as f64;
        println!(
            "{},{},{},{},{},{:.1},{:.1},{:.2}",
            s.name,
            args.orgs,
            summary["completed"],
            stats["rejected_429"],
            stats["max_in_flight"],
            seconds,
            ideal,
            seconds / ideal
        );
        let csv = projector_tests::manifest_path(&format!("../docs/steer-{}.csv", s.name));
        let lines = samples.lock().map_err(|_| anyhow::anyhow!("samples"))?.join("\n");
        std::fs::write(&csv, lines + "\n").with_context(|| format!("writing {}", csv.display()))?;
        drop(workers);
    }
    Ok(())
}
