//! The fleet-wide queue and slot gauges, and the fleet's slot history. Every worker runs it: the
//! gauges only read, and every worker exports the same values (dashboards aggregate with
//! `max()`); the history script appends at most one sample per period of Redis time, whichever
//! worker comes first, so any number of workers keeps one history.

use futures::future::BoxFuture;
use projector_queue as queue;
use projector_shared::metrics as m;
use projector_shared::redis_conn::RedisConn;
use projector_shared::slots::{RedisSlotLimiter, SlotLimiter};

use super::Periodic;

/// Fleet-wide gauges read from Redis: queue depth (apalis's own counts read the wrong keys), and
/// slots in use against the limit in force, from the leases themselves.
pub struct QueueGauges {
    pub conn: RedisConn,
    pub slots: RedisSlotLimiter,
    /// `slots.limit`, to tell a limit an operator stored from the configured one.
    pub configured_limit: u32,
    /// `worker.slot_sample_interval`: the spacing of the slot history's samples.
    pub sample_every: std::time::Duration,
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
            match self.slots.occupancy_now().await {
                Ok(o) => {
                    projector_shared::slots::record_occupancy(
                        o.in_use,
                        o.in_force.unwrap_or(self.slots.limit()),
                        o.source(self.configured_limit),
                    );
                    metrics::gauge!(m::ADAPTIVE_MULTIPLIER).set(o.multiplier);
                    metrics::gauge!(m::SERVICE_OTHER_CALLERS).set(o.service_others.map_or(f64::NAN, f64::from));
                }
                Err(e) => tracing::debug!(error = %e, "cannot read slot occupancy"),
            }
            if let Err(e) = self.slots.record_history(self.sample_every).await {
                tracing::debug!(error = %e, "cannot append to the slot history");
            }
        })
    }
}
