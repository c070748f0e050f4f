//! The fleet-wide pause: one Redis hash that operators set and clear (`projectorctl pause` /
//! `resume`); workers stop taking jobs while it exists, and the scheduler holds or enqueues ticks
//! as `schedule.when_paused` says.

use projector_redis::redis_conn::RedisConn;

use crate::error::Error;
use projector_redis::keys;

/// A pause in force.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pause {
    pub reason: String,
    /// When it was set (Redis time, unix ms).
    pub since_ms: u64,
}

/// Pauses the fleet (or changes the reason of the pause in force, keeping its start).
pub async fn pause(conn: &RedisConn, reason: &str) -> Result<Pause, Error> {
    let mut conn = conn.clone();
    let (secs, micros): (u64, u64) = redis::cmd("TIME").query_async(&mut conn).await.map_err(Error::redis("reading Redis time"))?;
    let _: () = redis::pipe()
        .atomic()
        .cmd("HSETNX")
        .arg(keys::PAUSED)
        .arg("since_ms")
        .arg(secs * 1000 + micros / 1000)
        .ignore()
        .hset(keys::PAUSED, "reason", reason)
        .ignore()
        .query_async(&mut conn)
        .await
        .map_err(Error::redis("pausing the fleet"))?;
    paused(&conn).await?.ok_or_else(|| Error::NotKept { doing: "pausing the fleet".to_owned() })
}

/// Ends the pause; `false` when there was none.
pub async fn resume(conn: &RedisConn) -> Result<bool, Error> {
    let removed: u64 =
        redis::cmd("DEL").arg(keys::PAUSED).query_async(&mut conn.clone()).await.map_err(Error::redis("resuming the fleet"))?;
    Ok(removed > 0)
}

/// The pause in force, if any.
pub async fn paused(conn: &RedisConn) -> Result<Option<Pause>, Error> {
    let fields: std::collections::HashMap<String, String> =
        redis::cmd("HGETALL").arg(keys::PAUSED).query_async(&mut conn.clone()).await.map_err(Error::redis("reading the pause"))?;
    if fields.is_empty() {
        return Ok(None);
    }
    Ok(Some(Pause {
        reason: fields.get("reason").cloned().unwrap_or_default(),
        since_ms: fields.get("since_ms").and_then(|v| v.parse().ok()).unwrap_or(0),
    }))
}
