//! Slot limiter benchmark against a private local `redis-server`: round trip, acquire+release,
//! handoff latency (limit 50, 200 waiters), throughput, and the shared-counter design (INCR/DECR, retry every second) it replaced.
//! Prints the figures and writes them to target/bench/slots.json.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use projector_shared::OrgId;
use projector_shared::slots::{Acquire, RedisSlotLimiter, RedisSlotSettings, SlotLimiter, SlotPermit, SlotRequest};
use projector_tests::RedisServer;
use tokio::sync::mpsc;

const LIMIT: u32 = 50;
const WAITERS: usize = 200;

fn request(org: u64) -> SlotRequest {
    SlotRequest::new("bench", OrgId(org))
}

fn percentile(samples: &mut [Duration], p: f64) -> u64 {
    samples.sort_unstable();
    let i = ((samples.len() as f64 - 1.0) * p).round() as usize;
    samples.get(i).map(|d| d.as_micros() as u64).unwrap_or(0)
}

async fn granted(l: &RedisSlotLimiter, org: u64, wait: Duration) -> anyhow::Result<SlotPermit> {
    match l.acquire(request(org), wait).await? {
        Acquire::Granted(p) => Ok(p),
        Acquire::TimedOut(t) => anyhow::bail!("timed out: {t:?}"),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let server = RedisServer::start();
    let url = server.url();
    let settings = RedisSlotSettings::new(LIMIT, Duration::from_secs(30));
    let limiter = RedisSlotLimiter::new(&url, settings.clone())?;
    let client = redis::Client::open(url.as_str())?;
    let mut conn = client.get_multiplexed_async_connection().await?;

    // Round trip.
    let mut pings = Vec::new();
    for _ in 0..2_000 {
        let t = Instant::now();
        let _: String = redis::cmd("PING").query_async(&mut conn).await?;
        pings.push(t.elapsed());
    }
    let ping_p50 = percentile(&mut pings, 0.5);

    // Uncontended acquire + release.
    let mut cycles = Vec::new();
    for i in 0..2_000 {
        let t = Instant::now();
        let p = granted(&limiter, i, Duration::from_secs(1)).await?;
        let acquired = t.elapsed();
        p.release().await?;
        cycles.push(acquired);
    }
    let acquire_p50 = percentile(&mut cycles, 0.5);
    let acquire_p99 = percentile(&mut cycles, 0.99);

    // Handoff: 50 held, 200 waiting; release one, time until the next waiter holds.
    let mut held = Vec::new();
    for i in 0..LIMIT {
        held.push(granted(&limiter, u64::from(i), Duration::from_secs(1)).await?);
    }
    let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, SlotPermit)>();
    for w in 0..WAITERS {
        let (l, tx) = (RedisSlotLimiter::new(&url, settings.clone())?, tx.clone());
        tokio::spawn(async move {
            if let Ok(p) = granted(&l, 10_000 + w as u64, Duration::from_secs(120)).await {
                let _ = tx.send((Instant::now(), p));
            }
        });
    }
    // Let every waiter queue up.
    while limiter.inspect().await?.waiters.len() < WAITERS {
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

    // Throughput: 50 clients acquiring and releasing as fast as they can for 3 s.
    let done = Arc::new(AtomicU64::new(0));
    let stop_at = Instant::now() + Duration::from_secs(3);
    let mut clients = Vec::new();
    for c in 0..LIMIT {
        let (l, done) = (limiter.clone(), done.clone());
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
    // The same server, right after, so machine noise hits both figures alike.
    let reference_ops = redis_benchmark_eval(&server.socket());
    let script_calls = throughput_ops * 2;

    let counter_handoff_p50 = counter_handoffs(&client).await?;

    let figures = serde_json::json!({
        "ping_p50_us": ping_p50,
        "acquire_p50_us": acquire_p50,
        "acquire_p99_us": acquire_p99,
        "handoff_p50_us": handoff_p50,
        "handoff_p99_us": handoff_p99,
        "throughput_ops": throughput_ops,
        "counter_handoff_p50_us": counter_handoff_p50,
        "redis_benchmark_eval_ops": reference_ops,
        "throughput_share_of_redis_benchmark": reference_ops.map(|r| script_calls as f64 / r as f64),
    });
    println!("redis PING round trip p50           {ping_p50} us");
    println!("uncontended acquire p50 / p99       {acquire_p50} / {acquire_p99} us (each followed by a release)");
    println!("handoff p50 / p99 (limit 50, 200 waiters)  {handoff_p50} / {handoff_p99} us");
    println!("acquire+release throughput, 50 clients  {throughput_ops} cycles/s = {script_calls} script calls/s");
    match reference_ops {
        Some(r) => {
            println!("redis-benchmark EVAL, 50 clients        {r} calls/s (ours: {:.0}% of it)", script_calls as f64 * 100.0 / r as f64)
        }
        None => println!("redis-benchmark not found: no reference figure"),
    }
    println!("the design document's counter (INCR/DECR, 1 s polling) handoff p50  {counter_handoff_p50} us");
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("slots.json"), serde_json::to_vec_pretty(&figures)?)?;
    println!("written to target/bench/slots.json");
    Ok(())
}

/// `redis-benchmark` running a comparable script (TIME + ZADD + ZREM) with 50 clients; None if
/// the tool is missing or its output cannot be read.
fn redis_benchmark_eval(socket: &std::path::Path) -> Option<u64> {
    let script = "redis.call('TIME'); redis.call('ZADD', KEYS[1], 1, ARGV[1]); return redis.call('ZREM', KEYS[1], ARGV[1])";
    let out = std::process::Command::new("redis-benchmark")
        .arg("-s")
        .arg(socket)
        .args(["-c", "50", "-n", "150000", "-q", "EVAL", script, "1", "{b}:z", "x"])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    // The last carriage-return-separated chunk holds "...: 45361.76 requests per second, ...".
    let last = text.rsplit('\r').next()?;
    let figure = last.split("requests per second").next()?.rsplit(' ').nth(1)?;
    figure.parse::<f64>().ok().map(|f| f as u64)
}

/// The design the limiter replaced: a shared counter, INCR to take, DECR to give back, retry every second.
async fn counter_handoffs(client: &redis::Client) -> anyhow::Result<u64> {
    const KEY: &str = "counter:concurrent";
    let mut conn = client.get_multiplexed_async_connection().await?;
    let _: () = redis::cmd("SET").arg(KEY).arg(LIMIT).query_async(&mut conn).await?;
    let (tx, mut rx) = mpsc::unbounded_channel::<Instant>();
    let mut tasks = Vec::new();
    for w in 0..WAITERS {
        let (mut c, tx) = (client.get_multiplexed_async_connection().await?, tx.clone());
        tasks.push(tokio::spawn(async move {
            // Waiters start spread over the first second, as tasks arriving in a batch would.
            tokio::time::sleep(Duration::from_millis((w as u64 * 5) % 1000)).await;
            loop {
                let n: i64 = redis::cmd("INCR").arg(KEY).query_async(&mut c).await.unwrap_or(i64::MAX);
                if n <= i64::from(LIMIT) {
                    let _ = tx.send(Instant::now());
                    return;
                }
                let _: Result<i64, _> = redis::cmd("DECR").arg(KEY).query_async(&mut c).await;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let mut samples = Vec::new();
    for _ in 0..20 {
        let t = Instant::now();
        let _: i64 = redis::cmd("DECR").arg(KEY).query_async(&mut conn).await?;
        let at = rx.recv().await.ok_or_else(|| anyhow::anyhow!("counter waiter vanished"))?;
        samples.push(at.saturating_duration_since(t));
    }
    for t in tasks {
        t.abort();
    }
    Ok(percentile(&mut samples, 0.5))
}
