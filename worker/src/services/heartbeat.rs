//! This worker's heartbeat and registration. Every worker runs its own: it writes only this
//! worker's keys.

use futures::future::BoxFuture;
use projector_queue as queue;
use projector_shared::redis_conn::RedisConn;

use super::Periodic;

/// The worker's heartbeat (`projector:workers`), and the expiry of the running job loop's apalis
/// metadata, so a worker killed with SIGKILL leaves nothing behind for good.
pub struct Heartbeat {
    pub conn: RedisConn,
    pub name: String,
    /// What this worker publishes about itself; jobs, slots and the last error are refreshed
    /// at every beat.
    pub registration: projector_shared::heartbeat::Registration,
    pub running: projector_job::handler::RunningJobs,
    /// The apalis name of the job loop running now.
    pub current_loop: tokio::sync::watch::Receiver<String>,
    /// The rate gate, whose policy in force is published at every beat.
    pub rate: Option<projector_shared::rate::RateGate>,
}

impl Periodic for Heartbeat {
    fn name(&self) -> &'static str {
        "heartbeat"
    }

    fn run_once(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let registration = projector_shared::heartbeat::Registration {
                jobs_in_flight: self.running.now() as u64,
                slots_held: projector_shared::slots::held_by_process(),
                last_error: projector_job::probe::last_error(),
                service: projector_shared::service::latest().map(|(q, ago)| (q, u64::try_from(ago.as_millis()).unwrap_or(u64::MAX))),
                rate: self.rate.as_ref().map_or_else(|| "none".to_owned(), projector_shared::rate::RateGate::summary),
                ..self.registration.clone()
            };
            if let Err(e) = projector_shared::heartbeat::beat(&self.conn, &self.name, &registration).await {
                tracing::debug!(error = %e, "cannot write the worker heartbeat");
            }
            let current = self.current_loop.borrow().clone();
            if let Err(e) = queue::expire_worker(&self.conn, &current, projector_shared::heartbeat::ALIVE_WITHIN * 4).await {
                tracing::debug!(error = %e, "cannot refresh the job loop's metadata expiry");
            }
        })
    }
}
