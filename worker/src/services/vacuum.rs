//! Deletes finished jobs. Every worker runs it: `lua/vacuum_done.lua` deletes in bounded, atomic
//! steps, and deleting a job twice is a no-op.

use std::time::Duration;

use futures::future::BoxFuture;
use projector_queue as queue;
use projector_shared::redis_conn::RedisConn;

use super::Periodic;

/// Finished jobs are vacuumed every this many housekeeping intervals (apalis keeps them forever):
/// once a minute at the default interval of 1 s.
pub const VACUUM_EVERY_INTERVALS: u32 = 60;

/// Deletes finished jobs' data and metadata (apalis keeps them forever), never a job waiting for
/// a retry (docs/apalis-redis.md#vacuum-deletes-retries).
pub struct Vacuum {
    pub conn: RedisConn,
}

impl Periodic for Vacuum {
    fn name(&self) -> &'static str {
        "vacuum"
    }

    fn run_once(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            match queue::vacuum_done(&self.conn).await {
                Ok(n) => tracing::debug!(removed = n, "vacuumed finished jobs"),
                Err(e) => tracing::warn!(error = %e, "vacuum of finished jobs failed; retried next round"),
            }
        })
    }
}

/// How often the vacuum runs for a given housekeeping interval.
pub fn vacuum_every(housekeeping: Duration) -> Duration {
    housekeeping * VACUUM_EVERY_INTERVALS
}
