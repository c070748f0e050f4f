//! Moving due jobs from apalis's scheduled set to its ready list, in bounded steps.

use std::sync::LazyLock;

use projector_shared::keys;
use projector_shared::redis_conn::RedisConn;

use crate::apalis_layout::config;

/// At most this many due jobs are moved to the ready list per script call.
pub(crate) const PROMOTE_CHUNK: usize = 1_000;

/// Moves due jobs to the ready list, bounded; its contract is in the file's header.
static PROMOTE_DUE: LazyLock<redis::Script> = LazyLock::new(|| projector_shared::lua::script(include_str!("../../lua/promote_due.lua")));

/// Moves every due job to the ready list in bounded steps; returns how many were moved.
pub async fn promote_due(conn: &RedisConn) -> Result<u64, redis::RedisError> {
    let config = config(conn.layout());
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
