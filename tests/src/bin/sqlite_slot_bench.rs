//! Slot limiter benchmark on a SQLite file: uncontended acquire, handoff latency (limit 50, 200
//! waiters spread over three limiters on the file, as three processes would hold them) and
//! throughput. Prints the figures and writes them to target/bench/sqlite-slots.json.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use projector_shared::OrgId;
use projector_shared::slots::{Acquire, SlotLimiter, SlotPermit, SlotRequest, SqliteSlotLimiter, SqliteSlotSettings};
use projector_sqlite::{DEFAULT_BUSY_TIMEOUT, Database};
use tokio::sync::mpsc;

const LIMIT: u32 = 50;
const WAITERS: usize = 200;

fn percentile(samples: &mut [Duration], p: f64) -> u64 {
    samples.sort_unstable();
    let i = ((samples.len() as f64 - 1.0) * p).round() as usize;
    samples.get(i).map(|d| d.as_micros() as u64).unwrap_or(0)
}

async fn granted(l: &SqliteSlotLimiter, org: u64, wait: Duration) -> anyhow::Result<SlotPermit> {
    match l.acquire(SlotRequest::new("bench", OrgId(org)), wait).await? {
        Acquire::Granted(p) => Ok(p),
        Acquire::TimedOut(t) => anyhow::bail!("timed out: {t:?}"),
    }
}

async fn waiting(db: &Database) -> anyhow::Result<i64> {
    Ok(projector_sqlite::sqlx::query_scalar("SELECT count(*) FROM projector_slot_waiters").fetch_one(db.pool()).await?)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let dsn = format!("sqlite://{}", dir.path().join("bench.db").display());
    let settings = SqliteSlotSettings::new(LIMIT, Duration::from_secs(30));
    let mut limiters = Vec::new();
    for _ in 0..3 {
        limiters.push(SqliteSlotLimiter::new(Database::open(&dsn, DEFAULT_BUSY_TIMEOUT).await?, settings.clone()));
    }
    let db = Database::open(&dsn, DEFAULT_BUSY_TIMEOUT).await?;
    let limiter = &limiters[0];

    // Uncontended acquire + release.
    let mut cycles = Vec::new();
    for i in 0..1_000 {
        let t = Instant::now();
        let p = granted(limiter, i, Duration::from_secs(1)).await?;
        cycles.push(t.elapsed());
        p.release().await?;
    }
    let acquire_p50 = percentile(&mut cycles, 0.5);
    let acquire_p99 = percentile(&mut cycles, 0.99);

    // Handoff: 50 held, 200 waiting; release one, time until the next waiter holds.
    let mut held = Vec::new();
    for i in 0..LIMIT {
        held.push(granted(limiter, u64::from(i), Duration::from_secs(1)).await?);
    }
    let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, SlotPermit)>();
    for w in 0..WAITERS {
        let (l, tx) = (limiters[w % limiters.len()].clone(), tx.clone());
        tokio::spawn(async move {
            if let Ok(p) = granted(&l, 10_000 + w as u64, Duration::from_secs(120)).await {
                let _ = tx.send((Instant::now(), p));
            }
        });
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while waiting(&db).await? < WAITERS as i64 {
        anyhow::ensure!(Instant::now() < deadline, "the waiters did not all get in line within 60 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut handoffs = Vec::new();
    for _ in 0..WAITERS {
        let Some(p) = held.pop() else { break };
        let t = Instant::now();
        p.release().await?;
        let (at, permit) = rx.recv().await.ok_or_else(|| anyhow::anyhow!("waiter vanished"))?;
        handoffs.push(at.saturating_duration_since(t));
        held.push(permit);
    }
    for p in held.drain(..) {
        p.release().await?;
    }
    let handoff_p50 = percentile(&mut handoffs, 0.5);
    let handoff_p99 = percentile(&mut handoffs, 0.99);

    // Throughput: 50 clients over the three limiters, acquiring and releasing for 3 s.
    let done = Arc::new(AtomicU64::new(0));
    let stop_at = Instant::now() + Duration::from_secs(3);
    let mut clients = Vec::new();
    for c in 0..LIMIT {
        let (l, done) = (limiters[c as usize % limiters.len()].clone(), done.clone());
        clients.push(tokio::spawn(async move {
            while Instant::now() < stop_at {
                if let Ok(p) = granted(&l, u64::from(c), Duration::from_secs(1)).await
                    && p.release().await.is_ok()
                {
                    done.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for c in clients {
        c.await?;
    }
    let throughput_ops = done.load(Ordering::Relaxed) / 3;

    let figures = serde_json::json!({
        "acquire_p50_us": acquire_p50,
        "acquire_p99_us": acquire_p99,
        "handoff_p50_us": handoff_p50,
        "handoff_p99_us": handoff_p99,
        "throughput_ops": throughput_ops,
    });
    println!("uncontended acquire p50 / p99       {acquire_p50} / {acquire_p99} us (each followed by a release)");
    println!("handoff p50 / p99 (limit 50, 200 waiters on 3 limiters)  {handoff_p50} / {handoff_p99} us");
    println!("acquire+release throughput, 50 clients  {throughput_ops} cycles/s");
    std::fs::create_dir_all("target/bench")?;
    std::fs::write("target/bench/sqlite-slots.json", serde_json::to_vec_pretty(&figures)?)?;
    Ok(())
}
