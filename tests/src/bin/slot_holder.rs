//! A worker-like process for the slot tests: many tasks take slots from the Redis limiter, and an
//! independent observer counter in Redis checks that no more than the limit hold at once.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use clap::Parser;
use projector_shared::OrgId;
use projector_shared::slots::{Acquire, RedisSlotLimiter, RedisSlotSettings, SlotLimiter, SlotRequest};

#[derive(Debug, Parser)]
struct Args {
    #[arg(long)]
    redis_url: String,
    #[arg(long)]
    limit: u32,
    #[arg(long, default_value_t = 10)]
    tasks: u32,
    #[arg(long, default_value_t = 5)]
    iterations: u32,
    #[arg(long, default_value = "5ms", value_parser = humantime::parse_duration)]
    hold: Duration,
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    max_wait: Duration,
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    lease_ttl: Duration,
    /// Take each slot for a query of at most this long (query.max_duration): the lease is not
    /// reclaimed before grant + this, even while the process is stopped.
    #[arg(long, value_parser = humantime::parse_duration)]
    query_max_duration: Option<Duration>,
    /// The observer counter: incremented while holding; its value must never exceed the limit.
    #[arg(long, default_value = "observer:holding")]
    observer: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let limiter = RedisSlotLimiter::new(&args.redis_url, RedisSlotSettings::new(args.limit, args.lease_ttl))?;
    let observer = redis::Client::open(args.redis_url.as_str())?.get_multiplexed_async_connection().await?;
    let (granted, timed_out, violations, lost) =
        (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let max_seen = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for t in 0..args.tasks {
        let limiter = limiter.clone();
        let mut obs = observer.clone();
        let key = args.observer.clone();
        let (granted, timed_out, violations, lost, max_seen) =
            (granted.clone(), timed_out.clone(), violations.clone(), lost.clone(), max_seen.clone());
        let (iterations, hold, max_wait, limit, query) = (args.iterations, args.hold, args.max_wait, args.limit, args.query_max_duration);
        tasks.push(tokio::spawn(async move {
            for i in 0..iterations {
                let request = SlotRequest {
                    holder: format!("holder-{}", std::process::id()),
                    org_id: OrgId(u64::from(t * 1000 + i)),
                    query_max_duration: query,
                };
                match limiter.acquire(request, max_wait).await {
                    Ok(Acquire::Granted(permit)) => {
                        granted.fetch_add(1, Ordering::SeqCst);
                        println!("granted token={}", permit.fencing_token());
                        let now: u64 = redis::cmd("INCR").arg(&key).query_async(&mut obs).await.unwrap_or(0);
                        max_seen.fetch_max(now, Ordering::SeqCst);
                        if now > u64::from(limit) {
                            violations.fetch_add(1, Ordering::SeqCst);
                        }
                        tokio::select! {
                            () = tokio::time::sleep(hold) => {}
                            () = permit.lost() => {}
                        }
                        if permit.is_lost() {
                            lost.fetch_add(1, Ordering::SeqCst);
                            println!("lost token={}", permit.fencing_token());
                        }
                        let _: Result<i64, _> = redis::cmd("DECR").arg(&key).query_async(&mut obs).await;
                        let _ = permit.release().await;
                    }
                    Ok(Acquire::TimedOut(_)) => {
                        timed_out.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(e) => {
                        eprintln!("acquire failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    println!(
        "{}",
        serde_json::json!({
            "granted": granted.load(Ordering::SeqCst),
            "timed_out": timed_out.load(Ordering::SeqCst),
            "violations": violations.load(Ordering::SeqCst),
            "lost": lost.load(Ordering::SeqCst),
            "max_seen": max_seen.load(Ordering::SeqCst),
        })
    );
    Ok(())
}
