//! The job queue: everything that knows apalis-redis's keys, status strings and Lua — its
//! settings, building and pushing jobs (delayed, deduplicated per run), moving due jobs to the
//! ready list in bounded steps, quarantining entries apalis cannot fetch, the vacuum of finished
//! jobs and the queue depth. Used by the scheduler's fan-out and by the worker. It relies on
//! apalis-redis 1.0.0's internal layout (docs/apalis-redis.md), hence the exact version pin.

use std::sync::LazyLock;
use std::time::Duration;

use projector_shared::redis_conn::RedisConn;
use projector_shared::{RunId, SpikeProjectionJob, keys};

/// At most this many due jobs are moved to the ready list per script call.
const PROMOTE_CHUNK: usize = 1_000;

/// Moves due jobs to the ready list, bounded; its contract is in the file's header.
static PROMOTE_DUE: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(include_str!("../../lua/promote_due.lua")));

/// Moves every due job to the ready list in bounded steps; returns how many were moved.
pub async fn promote_due(conn: &RedisConn) -> Result<u64, redis::RedisError> {
    let config = config();
    let mut moved = 0u64;
    loop {
        let n: u64 = PROMOTE_DUE
            .key(config.scheduled_jobs_set())
            .key(config.active_jobs_list())
            .key(config.signal_list())
            .arg(PROMOTE_CHUNK)
            .arg(keys::JOBS_READY_CHANNEL)
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
        .queue(keys::job_queue())
        // One job per fetch: prefetched jobs send no heartbeat and get run twice
        // (docs/apalis-redis.md#prefetch-runs-twice).
        .batch_size(1)
        .heartbeat_interval(Duration::from_secs(2))
        .missed_heartbeats(3)
        // Locking only stamps "Running" on the job's metadata, at 7 commands per job and an LREM that
        // scans the whole ready list for an id the fetch already took off it (quadratic in the
        // backlog). A dead worker's jobs come back through its in-flight set, which the fetch keeps
        // (docs/apalis-redis.md#no-lock).
        .lock_tasks(false)
        // Nobody listens to apalis's own pub/sub events: workers wake on projector:jobs-ready.
        .emit_events(false)
}

/// A job ready to push: its queue id, its member in the run's dedupe set, its payload and when it
/// may run (unix seconds).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedJob {
    pub id: String,
    pub member: String,
    pub payload: Vec<u8>,
    pub run_at: u64,
}

/// A job as the queue holds it: runnable from `run_at` (unix seconds), under a fresh id, dropped
/// on push if its run already holds its dedupe member.
pub fn task(job: &SpikeProjectionJob, run_at: u64) -> QueuedJob {
    QueuedJob { id: ulid::Ulid::generate().to_string(), member: job.dedupe_member(), payload: job.encode(), run_at }
}

/// apalis's default, written into each job's metadata as apalis-redis's own push would.
const MAX_ATTEMPTS: u32 = 25;

/// Enqueues jobs of one run; its contract is in the file's header.
static PUSH_JOBS: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(include_str!("../../lua/push_jobs.lua")));

/// Pushes jobs of `run_id` in one script call; returns how many were new (the rest were
/// duplicates). Jobs due now go straight to the ready list and wake the fetchers. The run's
/// dedupe set is kept `dedup_window` (`runs.dedup_window`) after its last push.
pub async fn push(conn: &RedisConn, run_id: &RunId, jobs: &[QueuedJob], dedup_window: Duration) -> Result<u64, redis::RedisError> {
    let config = config();
    let mut invocation = PUSH_JOBS.key(config.job_data_hash());
    invocation
        .key(config.active_jobs_list())
        .key(config.signal_list())
        .key(config.scheduled_jobs_set())
        .key(keys::job_dedupe(run_id))
        .arg(config.job_meta_hash())
        .arg(u64::try_from(dedup_window.as_millis()).unwrap_or(u64::MAX).max(1))
        .arg(MAX_ATTEMPTS)
        .arg(keys::JOBS_READY_CHANNEL);
    for job in jobs {
        invocation.arg(&job.id).arg(&job.member).arg(&job.payload[..]).arg(job.run_at);
    }
    let (ready, scheduled): (u64, u64) = invocation.invoke_async(&mut conn.clone()).await?;
    Ok(ready + scheduled)
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
pub async fn quarantine_unfetchable(conn: &RedisConn, loop_name: &str) -> Result<Vec<Quarantined>, redis::RedisError> {
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
pub async fn expire_worker(conn: &RedisConn, loop_name: &str, ttl: Duration) -> Result<(), redis::RedisError> {
    let key = format!("{}:workers:metadata:{loop_name}", keys::job_queue());
    redis::cmd("PEXPIRE").arg(key).arg(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX)).query_async::<()>(&mut conn.clone()).await
}

/// Deletes a finished job loop's apalis worker metadata (`…:workers:metadata:<name>`), which
/// apalis keeps forever and would grow by one key per worker start or loop restart.
pub async fn forget_worker(conn: &RedisConn, loop_name: &str) -> Result<(), redis::RedisError> {
    let key = format!("{}:workers:metadata:{loop_name}", keys::job_queue());
    redis::cmd("DEL").arg(key).query_async::<()>(&mut conn.clone()).await
}

/// Gives back a drained loop's unstarted jobs; its contract is in the file's header.
static RETURN_UNSTARTED: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(include_str!("../../lua/return_unstarted.lua")));

/// Puts the jobs a stopped job loop fetched but never started back at the front of the ready
/// list, and takes the loop out of apalis's set of loops; returns how many went back. Call it
/// only once every job the loop started has ended and been acknowledged: an id still in its
/// in-flight set is then one nobody runs.
pub async fn return_unstarted(conn: &RedisConn, loop_name: &str) -> Result<u64, redis::RedisError> {
    let config = config();
    RETURN_UNSTARTED
        .key(format!("{}:{loop_name}", config.inflight_jobs_set()))
        .key(config.active_jobs_list())
        .key(config.signal_list())
        .key(config.workers_set())
        .arg(loop_name)
        .arg(keys::JOBS_READY_CHANNEL)
        .invoke_async(&mut conn.clone())
        .await
}

/// Deletes finished jobs, bounded; its contract is in the file's header.
static VACUUM_DONE: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(include_str!("../../lua/vacuum_done.lua")));

/// Deletes finished jobs (data, metadata, done-set entry) in bounded steps; returns how many.
///
/// apalis's own vacuum deletes every job whose status is Done, Failed or Killed, and a job that
/// apalis put back for a retry carries status Failed while it waits in the scheduled set: its
/// data would be deleted and the retry would become a poison entry, losing its org
/// (docs/apalis-redis.md#vacuum-deletes-retries). This one deletes only jobs in the done set, and
/// keeps the dead set for operators.
pub async fn vacuum_done(conn: &RedisConn) -> Result<u64, redis::RedisError> {
    let config = config();
    let mut removed = 0u64;
    loop {
        let n: u64 = VACUUM_DONE
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

/// How many jobs wait in the queue now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Depth {
    /// Runnable now (the ready list).
    pub ready: u64,
    /// Waiting for their release time (the scheduled set).
    pub scheduled: u64,
}

/// The queue's depth, read from apalis-redis's keys (its own counts read the wrong ones).
pub async fn depth(conn: &RedisConn) -> Result<Depth, redis::RedisError> {
    let config = config();
    let (ready, scheduled): (u64, u64) =
        redis::pipe().llen(config.active_jobs_list()).zcard(config.scheduled_jobs_set()).query_async(&mut conn.clone()).await?;
    Ok(Depth { ready, scheduled })
}

/// The queue as an operator sees it: besides the depth, the jobs fetched by a worker and not yet
/// finished, and the dead-lettered ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Overview {
    pub ready: u64,
    pub scheduled: u64,
    pub in_flight: u64,
    pub dead: u64,
}

/// Reads the [`Overview`]: two round trips (the job loops, then every count).
pub async fn overview(conn: &RedisConn) -> Result<Overview, redis::RedisError> {
    let config = config();
    let mut conn = conn.clone();
    let loops: Vec<String> = redis::cmd("ZRANGE").arg(config.workers_set()).arg(0).arg(-1).query_async(&mut conn).await?;
    let mut pipe = redis::pipe();
    pipe.llen(config.active_jobs_list()).zcard(config.scheduled_jobs_set()).scard(config.dead_jobs_set());
    for name in &loops {
        pipe.scard(format!("{}:{name}", config.inflight_jobs_set()));
    }
    let counts: Vec<u64> = pipe.query_async(&mut conn).await?;
    let at = |i: usize| counts.get(i).copied().unwrap_or(0);
    Ok(Overview { ready: at(0), scheduled: at(1), dead: at(2), in_flight: counts.iter().skip(3).sum() })
}

/// A dead-lettered job, as `projectorctl jobs dead` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadJob {
    pub id: String,
    /// Why it is dead: Projector's quarantine reason, or apalis's status when it killed the job.
    pub reason: String,
    /// The first 200 characters of the payload, or empty when there is none.
    pub sample: String,
}

/// Every dead-lettered job, sorted by id, at most `limit`.
pub async fn dead_jobs(conn: &RedisConn, limit: usize) -> Result<Vec<DeadJob>, redis::RedisError> {
    let config = config();
    let mut conn = conn.clone();
    let mut ids: Vec<String> = redis::cmd("SMEMBERS").arg(config.dead_jobs_set()).query_async(&mut conn).await?;
    ids.sort();
    ids.truncate(limit);
    if ids.is_empty() {
        // The client refuses to send an empty pipeline.
        return Ok(Vec::new());
    }
    let mut pipe = redis::pipe();
    for id in &ids {
        let meta = format!("{}:{id}", config.job_meta_hash());
        pipe.hget(config.job_data_hash(), id).hget(&meta, "projector_reason").hget(&meta, "status");
    }
    let fields: Vec<Option<Vec<u8>>> = pipe.query_async(&mut conn).await?;
    Ok(ids
        .into_iter()
        .zip(fields.chunks(3))
        .map(|(id, f)| {
            let text = |i: usize| f.get(i).cloned().flatten().map(|b| String::from_utf8_lossy(&b).into_owned());
            let reason =
                text(1).or_else(|| text(2).map(|s| format!("status {s} (killed by apalis)"))).unwrap_or_else(|| "unknown".to_owned());
            DeadJob { sample: f.first().cloned().flatten().as_deref().map(projector_shared::job::sample).unwrap_or_default(), id, reason }
        })
        .collect())
}

/// Requeues or purges dead jobs; its contract is in the file's header.
static DEAD_JOBS: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(include_str!("../../lua/dead_jobs.lua")));

/// What [`requeue_dead`] or [`purge_dead`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeadJobsChanged {
    /// Jobs requeued (or purged).
    pub done: u64,
    /// Jobs left dead because their payload cannot run (requeue only).
    pub left: u64,
}

async fn change_dead(conn: &RedisConn, action: &str, ids: &[String]) -> Result<DeadJobsChanged, redis::RedisError> {
    let config = config();
    let mut invocation = DEAD_JOBS.key(config.dead_jobs_set());
    invocation.key(config.job_data_hash()).key(config.active_jobs_list()).key(config.signal_list()).key(config.job_meta_hash()).arg(action);
    for id in ids {
        invocation.arg(id);
    }
    let (done, left): (u64, u64) = invocation.invoke_async(&mut conn.clone()).await?;
    Ok(DeadJobsChanged { done, left })
}

/// Puts dead jobs (`ids`, or every one when empty) back on the ready list with fresh metadata;
/// a payload that is not JSON stays dead.
pub async fn requeue_dead(conn: &RedisConn, ids: &[String]) -> Result<DeadJobsChanged, redis::RedisError> {
    change_dead(conn, "requeue", ids).await
}

/// Deletes dead jobs (`ids`, or every one when empty): their data and metadata.
pub async fn purge_dead(conn: &RedisConn, ids: &[String]) -> Result<DeadJobsChanged, redis::RedisError> {
    change_dead(conn, "purge", ids).await
}

/// Removes waiting jobs; its contract is in the file's header.
static REMOVE_JOBS: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(include_str!("../../lua/remove_jobs.lua")));

/// Removes every job of `run_id` that still waits in the queue (scheduled or ready), in bounded
/// steps; returns how many. Jobs already fetched by a worker are left to it.
pub async fn remove_run_jobs(conn: &RedisConn, run_id: &projector_shared::RunId) -> Result<u64, redis::RedisError> {
    let config = config();
    let mut conn = conn.clone();
    let mut waiting: Vec<String> = Vec::new();
    let mut cursor = 0u64;
    loop {
        let (next, page): (u64, Vec<(String, f64)>) =
            redis::cmd("ZSCAN").arg(config.scheduled_jobs_set()).arg(cursor).arg("COUNT").arg(PROMOTE_CHUNK).query_async(&mut conn).await?;
        waiting.extend(page.into_iter().map(|(id, _)| id));
        if next == 0 {
            break;
        }
        cursor = next;
    }
    let ready: Vec<String> = redis::cmd("LRANGE").arg(config.active_jobs_list()).arg(0).arg(-1).query_async(&mut conn).await?;
    waiting.extend(ready);
    let mut removed = 0;
    for chunk in waiting.chunks(PROMOTE_CHUNK) {
        let payloads: Vec<Option<Vec<u8>>> = redis::cmd("HMGET").arg(config.job_data_hash()).arg(chunk).query_async(&mut conn).await?;
        let ours: Vec<&String> = chunk
            .iter()
            .zip(payloads)
            .filter(|(_, payload)| {
                payload
                    .as_deref()
                    .and_then(|p| serde_json::from_slice::<serde_json::Value>(p).ok())
                    .is_some_and(|job| job.get("run_id").and_then(|r| r.as_str()) == Some(run_id.0.as_str()))
            })
            .map(|(id, _)| id)
            .collect();
        if ours.is_empty() {
            continue;
        }
        let mut invocation = REMOVE_JOBS.key(config.scheduled_jobs_set());
        invocation.key(config.active_jobs_list()).key(config.job_data_hash()).key(config.job_meta_hash());
        for id in ours {
            invocation.arg(id);
        }
        removed += invocation.invoke_async::<u64>(&mut conn).await?;
    }
    Ok(removed)
}
