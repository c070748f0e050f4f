//! The worker's long-running tasks as named services, one file per periodic service (each says
//! in its header why every worker may run it): each is spawned on one tracker, awaited
//! after the drain (no task outlives the process's `run`), and a panic in one is logged, counted
//! (`projector_service_panics_total{service}`) and, for a periodic service, restarted at its next
//! round, never a silent death.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use projector_shared::metrics as m;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

mod adaptive_reporter;
mod deadline_sweep;
mod due_promoter;
mod heartbeat;
mod pause_watch;
mod queue_gauges;
mod rate_policy_refresh;
mod vacuum;

pub use adaptive_reporter::AdaptiveReporter;
pub use deadline_sweep::DeadlineSweep;
pub use due_promoter::DuePromoter;
pub use heartbeat::Heartbeat;
pub use pause_watch::{PauseSource, PauseWatch};
pub use queue_gauges::QueueGauges;
pub use rate_policy_refresh::RatePolicyRefresh;
pub use vacuum::{VACUUM_EVERY_INTERVALS, Vacuum, vacuum_every};

/// A duty done once per round; tests call `run_once` directly.
pub trait Periodic: Send + Sync + 'static {
    /// The service's name in logs and in the panic counter's `service` label.
    fn name(&self) -> &'static str;

    /// One round. Failures are the service's to log; it is called again next round.
    fn run_once(&self) -> BoxFuture<'_, ()>;
}

/// Every service of one worker process: spawned here, awaited by `wait`.
#[derive(Clone)]
pub struct Services {
    tracker: TaskTracker,
    shutdown: CancellationToken,
}

impl Services {
    pub fn new(shutdown: CancellationToken) -> Self {
        Services { tracker: TaskTracker::new(), shutdown }
    }

    /// Runs `service` every `every` until shutdown; a round that panics is reported and the
    /// service goes on at the next round.
    pub fn spawn_every(&self, service: Arc<dyn Periodic>, every: Duration) {
        metrics::counter!(m::SERVICE_PANICS_TOTAL, "service" => service.name()).increment(0);
        let shutdown = self.shutdown.clone();
        self.tracker.spawn(async move {
            // The first round at once (a worker starts with its duties done), then jittered rounds:
            // workers started together (a deploy) do not all hit Redis in the same millisecond.
            let mut first = true;
            loop {
                let pause = if first { Duration::ZERO } else { jittered(every) };
                first = false;
                tokio::select! {
                    () = tokio::time::sleep(pause) => {}
                    () = shutdown.cancelled() => return,
                }
                if let Err(panic) = AssertUnwindSafe(service.run_once()).catch_unwind().await {
                    report_panic(service.name(), panic.as_ref());
                    tracing::warn!(service = service.name(), "service restarts at its next round");
                }
            }
        });
    }

    /// Runs a one-shot service (one that loops on the shutdown token itself) to its end; a panic
    /// is reported. Nothing restarts it: one that must never stop runs in the supervisor instead.
    pub fn spawn(&self, name: &'static str, service: impl Future<Output = ()> + Send + 'static) {
        metrics::counter!(m::SERVICE_PANICS_TOTAL, "service" => name).increment(0);
        self.tracker.spawn(async move {
            if let Err(panic) = AssertUnwindSafe(service).catch_unwind().await {
                report_panic(name, panic.as_ref());
            }
        });
    }

    /// Waits for every service to end; call after shutdown was signalled.
    pub async fn wait(&self) {
        self.tracker.close();
        self.tracker.wait().await;
    }
}

/// `every`, give or take a tenth, at random.
pub fn jittered(every: Duration) -> Duration {
    use rand::Rng as _;
    every.mul_f64(rand::rng().random_range(0.9..=1.1))
}

fn report_panic(service: &'static str, panic: &(dyn std::any::Any + Send)) {
    let message = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".to_owned());
    metrics::counter!(m::SERVICE_PANICS_TOTAL, "service" => service).increment(1);
    tracing::error!(service, panic = %message, "service panicked (a bug: please report it with this line)");
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    struct PanicsOnce(AtomicU32);

    impl Periodic for PanicsOnce {
        fn name(&self) -> &'static str {
            "panics_once"
        }

        fn run_once(&self) -> BoxFuture<'_, ()> {
            Box::pin(async move {
                if self.0.fetch_add(1, Ordering::SeqCst) == 0 {
                    panic!("first round fails");
                }
            })
        }
    }

    #[tokio::test]
    async fn a_panicking_round_is_survived_and_every_service_ends_with_the_process() {
        let shutdown = CancellationToken::new();
        let services = Services::new(shutdown.clone());
        let service = Arc::new(PanicsOnce(AtomicU32::new(0)));
        services.spawn_every(service.clone(), Duration::from_millis(1));
        services.spawn("one_shot", {
            let shutdown = shutdown.clone();
            async move { shutdown.cancelled().await }
        });
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while service.0.load(Ordering::SeqCst) < 3 {
            assert!(tokio::time::Instant::now() < deadline, "the service did not run again after its panic");
            tokio::task::yield_now().await;
        }
        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(5), services.wait()).await.expect("every service ends on shutdown");
    }

    #[test]
    fn rounds_are_jittered_by_a_tenth_either_way() {
        let every = Duration::from_secs(1);
        let pauses: Vec<Duration> = (0..200).map(|_| jittered(every)).collect();
        assert!(pauses.iter().all(|p| *p >= Duration::from_millis(900) && *p <= Duration::from_millis(1100)), "{pauses:?}");
        let distinct: std::collections::BTreeSet<_> = pauses.iter().collect();
        assert!(distinct.len() > 100, "not one fixed pause: {} distinct", distinct.len());
    }
}
