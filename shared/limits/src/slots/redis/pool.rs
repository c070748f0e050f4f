//! Connections for `BLPOP`, one per blocked waiter: a blocked connection serves nobody else, so
//! waits cannot share the multiplexed one. Idle ones are kept for the next wait, at most
//! [`MAX_IDLE`]; a burst of waiters beyond that opens connections that are closed afterwards.

use std::sync::Mutex;

use projector_redis::redis_conn::RedisConn;

use super::Inner;
use crate::error::Error;

/// Idle blocking connections kept per limiter: a worker's waiters rarely exceed its concurrency.
pub(super) const MAX_IDLE: usize = 64;

/// Idle blocking connections, at most [`MAX_IDLE`].
#[derive(Default)]
pub(super) struct BlockingPool(Mutex<Vec<RedisConn>>);

impl BlockingPool {
    fn take(&self) -> Option<RedisConn> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).pop()
    }

    /// Keeps `conn` for the next wait, or closes it (drops it) when the pool is full.
    fn put(&self, conn: RedisConn) {
        let mut idle = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < MAX_IDLE {
            idle.push(conn);
        }
    }

    /// Closes every idle connection: after one failed, the others may be stale too.
    pub(super) fn clear(&self) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    #[cfg(test)]
    fn idle(&self) -> usize {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

impl Inner {
    /// A connection for one `BLPOP`, and whether it came from the pool (it may have gone stale).
    pub(super) async fn blocking_connection(&self) -> Result<(RedisConn, bool), Error> {
        if let Some(conn) = self.blocking.take() {
            return Ok((conn, true));
        }
        // BLPOP holds the connection for up to `recheck`; the response timeout must outlast it.
        let connect = projector_redis::redis_conn::dedicated_connection(
            &self.endpoint,
            &self.client,
            self.settings.round_trip_budget,
            self.settings.recheck * 2 + self.settings.round_trip_budget,
        );
        match tokio::time::timeout(self.settings.round_trip_budget, connect).await {
            Ok(Ok(conn)) => Ok((conn, false)),
            Ok(Err(e)) => Err(self.unavailable(e)),
            Err(_) => Err(Error::SlotBackendUnavailable { detail: "connecting for a slot wait timed out".to_owned() }),
        }
    }

    /// Gives a connection back after its `BLPOP` answered; a pool already full closes it.
    pub(super) fn return_blocking(&self, conn: RedisConn) {
        self.blocking.put(conn);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_pool_keeps_at_most_its_bound_of_idle_connections() {
        let client = redis::Client::open("redis://127.0.0.1:1").expect("a URL");
        let pool = BlockingPool::default();
        for _ in 0..MAX_IDLE + 10 {
            let conn = redis::aio::ConnectionManager::new_lazy_with_config(client.clone(), Default::default()).expect("lazy");
            pool.put(RedisConn::Server(conn));
        }
        assert_eq!(pool.idle(), MAX_IDLE);
        assert!(pool.take().is_some());
        assert_eq!(pool.idle(), MAX_IDLE - 1);
    }
}
