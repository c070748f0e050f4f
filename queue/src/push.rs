//! Pushing a run's jobs: delayed, deduplicated per run, written as apalis-redis's own push would.

use std::sync::LazyLock;
use std::time::Duration;

use projector_shared::redis_conn::RedisConn;
use projector_shared::{RunId, SpikeProjectionJob, keys};

use crate::apalis_layout::{config, job_dedupe};

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
static PUSH_JOBS: LazyLock<redis::Script> = LazyLock::new(|| projector_shared::lua::script(include_str!("../../lua/push_jobs.lua")));

/// Pushes jobs of `run_id` in one script call; returns how many were new (the rest were
/// duplicates). Jobs due now go straight to the ready list and wake the fetchers. The run's
/// dedupe set is kept `dedup_window` (`runs.dedup_window`) after its last push.
pub async fn push(conn: &RedisConn, run_id: &RunId, jobs: &[QueuedJob], dedup_window: Duration) -> Result<u64, redis::RedisError> {
    let config = config(conn.layout());
    let mut invocation = PUSH_JOBS.key(config.job_data_hash());
    invocation
        .key(config.active_jobs_list())
        .key(config.signal_list())
        .key(config.scheduled_jobs_set())
        .key(job_dedupe(conn.layout(), run_id))
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

/// Which of `members` (dedupe members, `SpikeProjectionJob::dedupe_member`) the run's dedupe set
/// holds: the jobs already pushed within `runs.dedup_window`. Read 1,000 at a time.
pub async fn pushed(conn: &RedisConn, run_id: &RunId, members: &[String]) -> Result<Vec<bool>, redis::RedisError> {
    let mut out = Vec::with_capacity(members.len());
    for chunk in members.chunks(1_000) {
        let found: Vec<bool> =
            redis::cmd("SMISMEMBER").arg(job_dedupe(conn.layout(), run_id)).arg(chunk).query_async(&mut conn.clone()).await?;
        out.extend(found);
    }
    Ok(out)
}
