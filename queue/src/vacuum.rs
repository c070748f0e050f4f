//! Deleting finished jobs, and the waiting jobs of a cancelled run.

use std::sync::LazyLock;

use projector_shared::redis_conn::RedisConn;

use crate::apalis_layout::config;
use crate::promote::PROMOTE_CHUNK;

/// Deletes finished jobs, bounded; its contract is in the file's header.
static VACUUM_DONE: LazyLock<redis::Script> = LazyLock::new(|| projector_shared::lua::script(include_str!("../../lua/vacuum_done.lua")));

/// Deletes finished jobs (data, metadata, done-set entry) in bounded steps; returns how many.
///
/// apalis's own vacuum deletes every job whose status is Done, Failed or Killed, and a job that
/// apalis put back for a retry carries status Failed while it waits in the scheduled set: its
/// data would be deleted and the retry would become a poison entry, losing its org
/// (docs/apalis-redis.md#vacuum-deletes-retries). This one deletes only jobs in the done set, and
/// keeps the dead set for operators.
pub async fn vacuum_done(conn: &RedisConn) -> Result<u64, redis::RedisError> {
    let config = config(conn.layout());
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

/// Removes waiting jobs; its contract is in the file's header.
static REMOVE_JOBS: LazyLock<redis::Script> = LazyLock::new(|| projector_shared::lua::script(include_str!("../../lua/remove_jobs.lua")));

/// Removes every job of `run_id` that still waits in the queue (scheduled or ready), in bounded
/// steps; returns how many. Jobs already fetched by a worker are left to it.
pub async fn remove_run_jobs(conn: &RedisConn, run_id: &projector_shared::RunId) -> Result<u64, redis::RedisError> {
    let config = config(conn.layout());
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
