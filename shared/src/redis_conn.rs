//! The one way Projector opens a Redis connection: lazy (a process starts while Redis is down),
//! bounded timeouts, and reconnects with capped backoff instead of a tight loop.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

/// A lazily connecting, self-healing connection; `round_trip_budget` bounds connect and each reply.
pub fn connection_manager(url: &str, round_trip_budget: Duration) -> Result<(redis::Client, ConnectionManager), redis::RedisError> {
    let client = redis::Client::open(url)?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(round_trip_budget))
        .set_response_timeout(Some(round_trip_budget))
        .set_number_of_retries(3)
        .set_max_delay(Duration::from_secs(2));
    let conn = ConnectionManager::new_lazy_with_config(client.clone(), config)?;
    Ok((client, conn))
}
