//! Moves due jobs to the ready list in bounded steps. Every worker runs it: `lua/promote_due.lua`
//! is one bounded, atomic step, so two workers promoting at once move each job once.

use futures::future::BoxFuture;
use projector_queue as queue;
use projector_shared::redis_conn::RedisConn;

use super::Periodic;

/// Moves due jobs to the ready list in bounded steps (apalis's own fetch fails past ~8,000).
pub struct DuePromoter {
    pub conn: RedisConn,
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
