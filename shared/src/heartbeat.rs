//! Worker heartbeats in Redis: each worker process stamps its name with Redis time every
//! housekeeping tick; anyone can count the workers alive without trusting a worker's clock.

use std::sync::LazyLock;
use std::time::Duration;

use redis::Script;
use redis::aio::ConnectionManager;

use crate::error::Error;
use crate::keys;

/// A worker whose last heartbeat is older than this is counted as gone.
pub const ALIVE_WITHIN: Duration = Duration::from_secs(15);

static BEAT: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("../../lua/heartbeat_beat.lua")));
static ALIVE: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("../../lua/heartbeat_alive.lua")));

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Records that worker `name` is alive now.
pub async fn beat(conn: &ConnectionManager, name: &str) -> Result<(), Error> {
    let _: u8 = BEAT
        .key(keys::WORKERS)
        .arg(name)
        .arg(ms(ALIVE_WITHIN * 4))
        .invoke_async(&mut conn.clone())
        .await
        .map_err(Error::redis("writing the worker heartbeat"))?;
    Ok(())
}

/// Removes worker `name` at a clean exit, so it stops counting as alive at once.
pub async fn leave(conn: &ConnectionManager, name: &str) -> Result<(), Error> {
    let _: u8 = redis::cmd("ZREM")
        .arg(keys::WORKERS)
        .arg(name)
        .query_async(&mut conn.clone())
        .await
        .map_err(Error::redis("removing the worker heartbeat"))?;
    Ok(())
}

/// How many workers beat within [`ALIVE_WITHIN`].
pub async fn alive(conn: &ConnectionManager) -> Result<u64, Error> {
    ALIVE.key(keys::WORKERS).arg(ms(ALIVE_WITHIN)).invoke_async(&mut conn.clone()).await.map_err(Error::redis("counting live workers"))
}
