//! The rate policy an operator sets at runtime, fleet-wide, in Redis (`projectorctl rate set`):
//! `[rate]` keys with raw values, applied by every worker over its own configuration within
//! `worker.rollout_refresh`, until `projectorctl rate reset`.

use projector_redis::redis_conn::RedisConn;

use crate::error::Error;
use projector_redis::keys::RateKeys;

/// The runtime changes stored for `referrer`, sorted by key; empty when none.
pub async fn runtime_changes(conn: &RedisConn, referrer: &str) -> Result<Vec<(String, String)>, Error> {
    let mut changes: Vec<(String, String)> = redis::cmd("HGETALL")
        .arg(RateKeys::new(referrer).runtime_policy())
        .query_async(&mut conn.clone())
        .await
        .map_err(Error::redis("reading the runtime rate policy"))?;
    changes.sort();
    Ok(changes)
}

/// Stores `changes` (already checked against the configuration) over what is stored.
pub async fn set_runtime_changes(conn: &RedisConn, referrer: &str, changes: &[(String, String)]) -> Result<(), Error> {
    if changes.is_empty() {
        return Ok(());
    }
    let _: () = redis::cmd("HSET")
        .arg(RateKeys::new(referrer).runtime_policy())
        .arg(changes)
        .query_async(&mut conn.clone())
        .await
        .map_err(Error::redis("storing the runtime rate policy"))?;
    Ok(())
}

/// Forgets the runtime policy: workers go back to their configuration. True if one was stored.
pub async fn clear_runtime_changes(conn: &RedisConn, referrer: &str) -> Result<bool, Error> {
    let removed: u8 = redis::cmd("DEL")
        .arg(RateKeys::new(referrer).runtime_policy())
        .query_async(&mut conn.clone())
        .await
        .map_err(Error::redis("clearing the runtime rate policy"))?;
    Ok(removed == 1)
}
