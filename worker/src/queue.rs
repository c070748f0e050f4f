//! The apalis-redis job queue as Projector uses it: its settings, pushing jobs (delayed, with
//! idempotency keys) and moving due jobs to the ready list in bounded steps. Shared by the
//! scheduler's fan-out and the worker (reschedules, housekeeping).

use std::time::Duration;

use apalis::prelude::TaskBuilder;
use apalis_redis::RedisTask;
use projector_shared::{SpikeProjectionJob, keys};
use redis::aio::ConnectionManager;

/// At most this many due jobs are moved to the ready list per script call.
const PROMOTE_CHUNK: usize = 1_000;

/// KEYS: scheduled set, ready list, signal list. ARGV: max jobs. Moves due jobs (Redis time) to
/// the ready list, as apalis's fetch does, but bounded: apalis moves every due job with one
/// `unpack(...)`, which Redis's Lua refuses past ~8,000 values ("too many results to unpack"), so
/// after a worker outage during a big run every fetch would fail, forever.
const PROMOTE_DUE: &str = r"
local now = tonumber(redis.call('TIME')[1])
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], 0, now, 'LIMIT', 0, tonumber(ARGV[1]))
if #ids > 0 then
  redis.call('RPUSH', KEYS[2], unpack(ids))
  redis.call('ZREM', KEYS[1], unpack(ids))
  redis.call('DEL', KEYS[3])
  redis.call('LPUSH', KEYS[3], 1)
end
return #ids
";

/// Moves every due job to the ready list in bounded steps; returns how many were moved.
pub async fn promote_due(conn: &ConnectionManager) -> Result<u64, redis::RedisError> {
    let config = config();
    let script = redis::Script::new(PROMOTE_DUE);
    let mut moved = 0u64;
    loop {
        let n: u64 = script
            .key(config.scheduled_jobs_set())
            .key(config.active_jobs_list())
            .key(config.signal_list())
            .arg(PROMOTE_CHUNK)
            .invoke_async(&mut conn.clone())
            .await?;
        moved += n;
        if n < PROMOTE_CHUNK as u64 {
            return Ok(moved);
        }
    }
}

/// The apalis-redis settings every Projector process uses for the job queue.
pub fn config() -> apalis_redis::Config {
    apalis_redis::Config::default()
        .queue(keys::JOB_QUEUE)
        // One job per fetch: prefetched jobs send no heartbeat and get run twice
        // (docs/apalis-redis.md#prefetch-runs-twice).
        .batch_size(1)
        .heartbeat_interval(Duration::from_secs(2))
        .missed_heartbeats(3)
        .idempotency_ttl(Some(Duration::from_secs(7 * 24 * 3600)))
}

/// A job as a queue task: runnable from `run_at` (unix seconds), dropped on push if a task with
/// the same idempotency key was pushed before.
pub fn task(job: &SpikeProjectionJob, run_at: u64, idempotency_key: String) -> RedisTask {
    TaskBuilder::new(job.encode()).run_at_timestamp(run_at).idempotency_key(idempotency_key).build()
}

/// Pushes tasks in one script call; returns how many were new (the rest were duplicates).
pub async fn push(conn: &ConnectionManager, tasks: &[RedisTask]) -> Result<u64, apalis_redis::Error> {
    let (ready, scheduled) = apalis_redis::queries::push_tasks(&mut conn.clone(), &config(), tasks).await?;
    Ok(u64::from(ready) + u64::from(scheduled))
}
