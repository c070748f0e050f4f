//! The worker's periodic duties, one service each (see `services`): promoting due jobs, the queue
//! and slot gauges, the heartbeat, and the vacuum of finished jobs. Each round's failure is logged
//! and retried next round. See docs/apalis-redis.md for the apalis-redis behaviour they work around.

use std::time::Duration;

use futures::future::BoxFuture;
use projector_queue as queue;
use projector_shared::metrics as m;
use projector_shared::slots::{RedisSlotLimiter, SlotLimiter};
use redis::aio::ConnectionManager;

use crate::services::Periodic;

/// Finished jobs are vacuumed every this many housekeeping intervals (apalis keeps them forever):
/// once a minute at the default interval of 1 s.
pub const VACUUM_EVERY_INTERVALS: u32 = 60;

/// Moves due jobs to the ready list in bounded steps (apalis's own fetch fails past ~8,000).
pub struct DuePromoter {
    pub conn: ConnectionManager,
}

impl Periodic for DuePromoter {
    fn name(&self) -> &'static str {
        "due_promoter"
    }

    fn run_once(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            if let Err(e) = queue::promote_due(&self.conn).await {
                tracing::debug!(error = %e, "cannot move due jobs to the ready list");
            }
        })
    }
}

/// Fleet-wide gauges read from Redis: queue depth (apalis's own counts read the wrong keys), and
/// slots in use against the limit in force, from the leases themselves.
pub struct QueueGauges {
    pub conn: ConnectionManager,
    pub slots: RedisSlotLimiter,
}

impl Periodic for QueueGauges {
    fn name(&self) -> &'static str {
        "queue_gauges"
    }

    fn run_once(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            match queue::depth(&self.conn).await {
                Ok(depth) => {
                    metrics::gauge!(m::QUEUE_READY_JOBS).set(depth.ready as f64);
                    metrics::gauge!(m::QUEUE_SCHEDULED_JOBS).set(depth.scheduled as f64);
                }
                Err(e) => tracing::debug!(error = %e, "cannot read the queue depth"),
            }
            match self.slots.occupancy().await {
                Ok((in_use, limit)) => projector_shared::slots::record_occupancy(in_use, limit.unwrap_or(self.slots.limit())),
                Err(e) => tracing::debug!(error = %e, "cannot read slot occupancy"),
            }
        })
    }
}

/// The worker's heartbeat (`projector:workers`), and the expiry of the running job loop's apalis
/// metadata, so a worker killed with SIGKILL leaves nothing behind for good.
pub struct Heartbeat {
    pub conn: ConnectionManager,
    pub name: String,
    /// The apalis name of the job loop running now.
    pub current_loop: tokio::sync::watch::Receiver<String>,
}

impl Periodic for Heartbeat {
    fn name(&self) -> &'static str {
        "heartbeat"
    }

    fn run_once(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            if let Err(e) = projector_shared::heartbeat::beat(&self.conn, &self.name).await {
                tracing::debug!(error = %e, "cannot write the worker heartbeat");
            }
            let current = self.current_loop.borrow().clone();
            if let Err(e) = queue::expire_worker(&self.conn, &current, projector_shared::heartbeat::ALIVE_WITHIN * 4).await {
                tracing::debug!(error = %e, "cannot refresh the job loop's metadata expiry");
            }
        })
    }
}

/// Deletes finished jobs' data and metadata (apalis keeps them forever), never a job waiting for
/// a retry (docs/apalis-redis.md#vacuum-deletes-retries).
pub struct Vacuum {
    pub conn: ConnectionManager,
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
