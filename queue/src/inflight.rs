//! A job loop's in-flight jobs and apalis worker metadata: expired while it runs, forgotten
//! when it ends, its unstarted jobs given back.

use std::sync::LazyLock;
use std::time::Duration;

use projector_shared::keys;
use projector_shared::redis_conn::RedisConn;

use crate::apalis_layout::{config, worker_metadata};

/// Lets a running job loop's apalis worker metadata expire after `ttl` unless refreshed (by
/// housekeeping, every round), so a worker killed with SIGKILL leaves nothing behind for good.
pub async fn expire_worker(conn: &RedisConn, loop_name: &str, ttl: Duration) -> Result<(), redis::RedisError> {
    let key = worker_metadata(conn.layout(), loop_name);
    redis::cmd("PEXPIRE").arg(key).arg(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX)).query_async::<()>(&mut conn.clone()).await
}

/// Deletes a finished job loop's apalis worker metadata (`…:workers:metadata:<name>`), which
/// apalis keeps forever and would grow by one key per worker start or loop restart.
pub async fn forget_worker(conn: &RedisConn, loop_name: &str) -> Result<(), redis::RedisError> {
    let key = worker_metadata(conn.layout(), loop_name);
    redis::cmd("DEL").arg(key).query_async::<()>(&mut conn.clone()).await
}

/// Gives back a drained loop's unstarted jobs; its contract is in the file's header.
static RETURN_UNSTARTED: LazyLock<redis::Script> =
    LazyLock::new(|| projector_shared::lua::script(include_str!("../../lua/return_unstarted.lua")));

/// Puts the jobs a stopped job loop fetched but never started back at the front of the ready
/// list, and takes the loop out of apalis's set of loops; returns how many went back. Call it
/// only once every job the loop started has ended and been acknowledged: an id still in its
/// in-flight set is then one nobody runs.
pub async fn return_unstarted(conn: &RedisConn, loop_name: &str) -> Result<u64, redis::RedisError> {
    let config = config(conn.layout());
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
