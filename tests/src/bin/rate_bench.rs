//! Rate-policy benchmark against a private local `redis-server`: one admission (`rate_acquire.lua`)
//! for strict `10/s + 5000/h` and smooth `20/s` policies that admit at once, and one that
//! refuses, each against a `PING` in the same run; and the Redis calls per admission.
//! Prints the figures and writes them to target/bench/rate.json.

use std::time::{Duration, Instant};

use projector_shared::rate::{RateLimiter, RateMode, RatePolicy, RateWindow, RedisRateLimiter};
use projector_tests::RedisServer;

const SAMPLES: usize = 5_000;

fn percentile(samples: &mut [Duration], p: f64) -> u64 {
    samples.sort_unstable();
    let i = ((samples.len() as f64 - 1.0) * p).round() as usize;
    samples.get(i).map(|d| d.as_micros() as u64).unwrap_or(0)
}

fn policy(mode: RateMode, windows: &[(u32, u64)], max_delay: Duration) -> RatePolicy {
    RatePolicy {
        windows: windows.iter().map(|&(limit, secs)| RateWindow { limit, span: Duration::from_secs(secs) }).collect(),
        mode,
        burst: 1,
        max_delay,
        start_jitter: Duration::ZERO,
    }
}

/// (p50, p99) in us of `SAMPLES` admissions.
async fn admissions(limiter: &RedisRateLimiter) -> anyhow::Result<(u64, u64)> {
    let mut took = Vec::with_capacity(SAMPLES);
    for _ in 0..SAMPLES {
        let t = Instant::now();
        limiter.admit().await?;
        took.push(t.elapsed());
    }
    Ok((percentile(&mut took, 0.5), percentile(&mut took, 0.99)))
}

fn evalsha_calls(info: &str) -> u64 {
    info.lines()
        .find(|l| l.starts_with("cmdstat_evalsha:"))
        .and_then(|l| l.split("calls=").nth(1))
        .and_then(|v| v.split(',').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let server = RedisServer::start();
    let (_, conn) = projector_shared::redis_conn::connection_manager(server.url(), Duration::from_secs(2))?;
    let mut admin = conn.clone();

    let mut pings = Vec::with_capacity(SAMPLES);
    for _ in 0..SAMPLES {
        let t = Instant::now();
        let _: String = redis::cmd("PING").query_async(&mut admin).await?;
        pings.push(t.elapsed());
    }
    let ping = (percentile(&mut pings, 0.5), percentile(&mut pings, 0.99));

    // Limits far above the sample count: every admission is granted at once (the hot path).
    let strict = RedisRateLimiter::new(
        conn.clone(),
        "bench-strict",
        policy(RateMode::Strict, &[(1_000_000, 1), (10_000_000, 3600)], Duration::ZERO),
    );
    let smooth = RedisRateLimiter::new(conn.clone(), "bench-smooth", policy(RateMode::Smooth, &[(1_000_000, 1)], Duration::ZERO));
    // One per hour and no delay: every admission after the first is refused with its wait.
    let refusing = RedisRateLimiter::new(conn.clone(), "bench-refuse", policy(RateMode::Strict, &[(1, 3600)], Duration::ZERO));
    limiter_warm(&[&strict, &smooth, &refusing]).await?;

    let _: () = redis::cmd("CONFIG").arg("RESETSTAT").query_async(&mut admin).await?;
    let strict_t = admissions(&strict).await?;
    let info: String = redis::cmd("INFO").arg("commandstats").query_async(&mut admin).await?;
    let calls_per_admission = evalsha_calls(&info) as f64 / SAMPLES as f64;
    let smooth_t = admissions(&smooth).await?;
    let refuse_t = admissions(&refusing).await?;

    println!("rate admission, {SAMPLES} samples each, private redis-server on a unix socket (us):");
    println!("  PING                          p50 {:>5}  p99 {:>5}", ping.0, ping.1);
    println!("  strict 2 windows, admitted    p50 {:>5}  p99 {:>5}", strict_t.0, strict_t.1);
    println!("  smooth 1 window, admitted     p50 {:>5}  p99 {:>5}", smooth_t.0, smooth_t.1);
    println!("  strict, refused with its wait p50 {:>5}  p99 {:>5}", refuse_t.0, refuse_t.1);
    println!("  Redis calls per admission: {calls_per_admission:.3} (EVALSHA)");
    let json = serde_json::json!({
        "samples": SAMPLES,
        "ping_us": {"p50": ping.0, "p99": ping.1},
        "strict_admitted_us": {"p50": strict_t.0, "p99": strict_t.1},
        "smooth_admitted_us": {"p50": smooth_t.0, "p99": smooth_t.1},
        "strict_refused_us": {"p50": refuse_t.0, "p99": refuse_t.1},
        "redis_calls_per_admission": calls_per_admission,
    });
    let dir = projector_tests::manifest_path("../target/bench");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("rate.json"), serde_json::to_vec_pretty(&json)?)?;
    Ok(())
}

/// Loads the script (the first call is EVALSHA, NOSCRIPT, SCRIPT LOAD, EVALSHA) before measuring.
async fn limiter_warm(limiters: &[&RedisRateLimiter]) -> anyhow::Result<()> {
    for l in limiters {
        l.admit().await?;
    }
    Ok(())
}
