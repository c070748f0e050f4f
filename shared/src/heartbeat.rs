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

/// KEYS: workers zset. ARGV: name, stale_ms. Stamps `name` with Redis time, drops entries older
/// than stale_ms (dead workers) and keeps the set itself from outliving the fleet.
static BEAT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local workers = KEYS[1]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', workers, now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', workers, '-inf', now - tonumber(ARGV[2]))
redis.call('PEXPIRE', workers, tonumber(ARGV[2]))
return 1
",
    )
});

/// KEYS: workers zset. ARGV: within_ms. Returns how many workers beat within `within_ms`.
static ALIVE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return redis.call('ZCOUNT', KEYS[1], now - tonumber(ARGV[1]), '+inf')
",
    )
});

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
