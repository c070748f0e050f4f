//! The dead set: entries apalis cannot fetch are quarantined there with a reason, listed,
//! requeued or purged by operators.

use std::sync::LazyLock;

use projector_shared::redis_conn::RedisConn;

use crate::apalis_layout::config;

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
    let config = config(conn.layout());
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
    let config = config(conn.layout());
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
static DEAD_JOBS: LazyLock<redis::Script> = LazyLock::new(|| projector_shared::lua::script(include_str!("../../lua/dead_jobs.lua")));

/// What [`requeue_dead`] or [`purge_dead`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeadJobsChanged {
    /// Jobs requeued (or purged).
    pub done: u64,
    /// Jobs left dead because their payload cannot run (requeue only).
    pub left: u64,
}

async fn change_dead(conn: &RedisConn, action: &str, ids: &[String]) -> Result<DeadJobsChanged, redis::RedisError> {
    let config = config(conn.layout());
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
