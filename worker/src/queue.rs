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

/// A queue entry apalis-redis cannot fetch, moved to the dead set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quarantined {
    pub id: String,
    /// Why apalis cannot fetch it: no data, data that is not JSON, or no metadata.
    pub reason: String,
    /// The first 200 characters of the payload, if there is one.
    pub sample: String,
}

/// Moves every entry of a failed job loop's in-flight set that apalis-redis cannot fetch to the
/// dead set, with the reason in its metadata (`projector_reason`). apalis fails the whole fetch on
/// such an entry ("Task decoding error", "Invalid job data format", "Missing attempts in
/// metadata"), and the orphan sweep would put it back to stop the next loop too, forever
/// (docs/apalis-redis.md#undecodable-payload). Entries that can be fetched stay for the sweep.
pub async fn quarantine_unfetchable(conn: &ConnectionManager, loop_name: &str) -> Result<Vec<Quarantined>, redis::RedisError> {
    let config = config();
    let inflight = format!("{}:{loop_name}", config.inflight_jobs_set());
    let mut conn = conn.clone();
    let ids: Vec<String> = redis::cmd("SMEMBERS").arg(&inflight).query_async(&mut conn).await?;
    let mut moved = Vec::new();
    for id in ids {
        let meta_key = format!("{}:{id}", config.job_meta_hash());
        let (data, attempts): (Option<Vec<u8>>, Option<String>) =
            redis::pipe().hget(config.job_data_hash(), &id).hget(&meta_key, "attempts").query_async(&mut conn).await?;
        let reason = match (&data, &attempts) {
            (None, _) => "the queue holds its id but no payload",
            (Some(d), _) if serde_json::from_slice::<serde_json::Value>(d).is_err() => "the payload is not JSON",
            (Some(_), None) => "the payload has no apalis metadata (attempts)",
            (Some(_), Some(_)) => continue,
        };
        redis::pipe()
            .atomic()
            .srem(&inflight, &id)
            .sadd(config.dead_jobs_set(), &id)
            .hset(&meta_key, "status", "Killed")
            .hset(&meta_key, "projector_reason", reason)
            .query_async::<()>(&mut conn)
            .await?;
        moved.push(Quarantined {
            sample: data.as_deref().map(projector_shared::job::sample).unwrap_or_default(),
            id,
            reason: reason.to_owned(),
        });
    }
    Ok(moved)
}

/// Lets a running job loop's apalis worker metadata expire after `ttl` unless refreshed (by
/// housekeeping, every round), so a worker killed with SIGKILL leaves nothing behind for good.
pub async fn expire_worker(conn: &ConnectionManager, loop_name: &str, ttl: Duration) -> Result<(), redis::RedisError> {
    let key = format!("{}:workers:metadata:{loop_name}", keys::JOB_QUEUE);
    redis::cmd("PEXPIRE").arg(key).arg(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX)).query_async::<()>(&mut conn.clone()).await
}

/// Deletes a finished job loop's apalis worker metadata (`…:workers:metadata:<name>`), which
/// apalis keeps forever and would grow by one key per worker start or loop restart.
pub async fn forget_worker(conn: &ConnectionManager, loop_name: &str) -> Result<(), redis::RedisError> {
    let key = format!("{}:workers:metadata:{loop_name}", keys::JOB_QUEUE);
    redis::cmd("DEL").arg(key).query_async::<()>(&mut conn.clone()).await
}

/// KEYS: done set, data hash, meta prefix. ARGV: max jobs. Deletes the data and metadata of up to
/// ARGV[1] finished jobs and takes them out of the done set; returns how many.
const VACUUM_DONE: &str = r"
local done, data, meta = KEYS[1], KEYS[2], KEYS[3]
local ids = redis.call('SPOP', done, tonumber(ARGV[1]))
for _, id in ipairs(ids) do
  redis.call('HDEL', data, id)
  redis.call('DEL', meta .. ':' .. id)
  redis.call('HDEL', meta .. ':result', id)
end
return #ids
";

static VACUUM_DONE_SCRIPT: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| redis::Script::new(VACUUM_DONE));

/// Deletes finished jobs (data, metadata, done-set entry) in bounded steps; returns how many.
///
/// apalis's own vacuum deletes every job whose status is Done, Failed or Killed, and a job that
/// apalis put back for a retry carries status Failed while it waits in the scheduled set: its
/// data would be deleted and the retry would become a poison entry, losing its org
/// (docs/apalis-redis.md#vacuum-deletes-retries). This one deletes only jobs in the done set, and
/// keeps the dead set for operators.
pub async fn vacuum_done(conn: &ConnectionManager) -> Result<u64, redis::RedisError> {
    let config = config();
    let mut removed = 0u64;
    loop {
        let n: u64 = VACUUM_DONE_SCRIPT
            .key(config.done_jobs_set())
            .key(config.job_data_hash())
            .key(config.job_meta_hash())
            .arg(PROMOTE_CHUNK)
            .invoke_async(&mut conn.clone())
            .await?;
        removed += n;
        if n < PROMOTE_CHUNK as u64 {
            return Ok(removed);
        }
    }
}
