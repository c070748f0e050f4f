//! The job loop's supervisor: runs the apalis job loop, restarts it with capped backoff when it
//! fails (quarantining entries it cannot fetch first), and on shutdown drains the jobs in flight.
//! Built around the apalis-redis 1.0 behaviours in docs/apalis-redis.md (each mitigation names its entry).

use projector_shared::backoff::Backoff;
use std::sync::Arc;
use std::time::{Duration, Instant};

use apalis::prelude::{WorkerBuilder, WorkerBuilderExt};
use apalis_core::backend::ext::BackendExt;
use apalis_core::backend::ext::poll_strategy::Strategy;
use apalis_redis::RedisStorage;
use projector_queue as queue;
use projector_shared::metrics as m;
use projector_shared::redis_conn::RedisConn;
use tokio_util::sync::CancellationToken;

use crate::error::Error;
use crate::metrics_http::Readiness;
use projector_job::handler::{JobHandler, run_job};

/// How long a drained loop may take to send its last jobs' acknowledgements and end.
const ACK_FLUSH: Duration = Duration::from_secs(2);

/// Keeps one apalis job loop running for this worker.
pub struct Supervisor {
    pub name: String,
    pub conn: RedisConn,
    pub handler: Arc<JobHandler>,
    pub readiness: Readiness,
    pub concurrency: usize,
    pub shutdown_grace: Duration,
    /// The apalis name of the job loop running now, for the heartbeat service.
    pub current_loop: tokio::sync::watch::Sender<String>,
    /// Whether the fleet is paused (`projectorctl pause`), kept current by `PauseWatch`.
    pub paused: tokio::sync::watch::Receiver<bool>,
    /// Announcements that jobs are ready (`events::JobsReady`): the job loop fetches at once.
    pub jobs_ready: projector_shared::events::JobsReady,
    /// `worker.poll_interval`: how often the idle job loop polls besides the announcements.
    pub poll_interval: Duration,
}

impl Supervisor {
    /// Runs the job loop until `shutdown`, restarting it with backoff when it fails, then drains
    /// the jobs in flight for at most `shutdown_grace`.
    pub async fn run(&self, shutdown: &CancellationToken) -> Result<(), Error> {
        // Any Redis error ends an apalis worker (docs/apalis-redis.md#redis-errors-end-the-loop): run it
        // again under a fresh name (#unique-names), with capped exponential backoff instead of
        // apalis's tight restart loop.
        let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
        let mut attempt = 0u32;
        loop {
            if self.wait_while_paused(shutdown).await {
                return Ok(());
            }
            attempt += 1;
            let loop_name = format!("{}-{attempt}", self.name);
            let started = Instant::now();
            // The loop stops (and drains) on shutdown or on a pause, whichever comes first.
            let stop = shutdown.child_token();
            let mut paused = self.paused.clone();
            let on_pause = stop.clone();
            let pause_watch = tokio::spawn(async move {
                if paused.wait_for(|p| *p).await.is_ok() {
                    tracing::warn!("fleet paused (projectorctl pause): finishing the running jobs, taking no new ones");
                    on_pause.cancel();
                }
            });
            let end = self.run_loop(&loop_name, &stop).await;
            pause_watch.abort();
            let result = match end {
                LoopEnd::Drained { settled } => {
                    if settled {
                        self.return_unstarted(&loop_name).await;
                    }
                    if shutdown.is_cancelled() {
                        return Ok(());
                    }
                    // Paused: this loop's name is done with; the next one starts after resume.
                    if let Err(e) = queue::forget_worker(&self.conn, &loop_name).await {
                        tracing::debug!(worker = %loop_name, error = %e, "cannot delete the job loop's apalis metadata; it expires on its own");
                    }
                    continue;
                }
                LoopEnd::Ended(result) => result,
            };
            self.readiness.set_job_loop_running(false);
            if shutdown.is_cancelled() {
                tracing::info!(worker = %self.name, "worker drained and stopped");
                return Ok(());
            }
            // A loop that ran a while before failing starts the backoff over.
            if started.elapsed() > Duration::from_secs(30) {
                backoff.reset();
            }
            let pause = backoff.next_pause();
            self.after_failure(&loop_name, result, pause).await;
            metrics::counter!(m::WORKER_RESTARTS_TOTAL).increment(1);
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                () = shutdown.cancelled() => return Ok(()),
            }
        }
    }

    /// While the fleet is paused, waits for resume; `true` if shutdown came first.
    async fn wait_while_paused(&self, shutdown: &CancellationToken) -> bool {
        let mut paused = self.paused.clone();
        if !*paused.borrow_and_update() {
            return false;
        }
        tracing::warn!(worker = %self.name, "fleet paused: taking no jobs until `projectorctl resume`");
        tokio::select! {
            _ = paused.wait_for(|p| !*p) => {
                tracing::info!(worker = %self.name, "fleet resumed: taking jobs again");
                false
            }
            () = shutdown.cancelled() => true,
        }
    }

    /// One apalis job loop, to its failure or through the drain.
    async fn run_loop(&self, loop_name: &str, shutdown: &CancellationToken) -> LoopEnd {
        // Before apalis's first fetch: a backlog of due jobs larger than its fetch can move would
        // make every fetch fail (see queue::promote_due).
        if let Err(e) = queue::promote_due(&self.conn).await {
            tracing::warn!(error = %e, "cannot move due jobs to the ready list; retried by the job loop");
        }
        let storage = RedisStorage::<serde_json::Value, RedisConn>::new(self.conn.clone()).with_config(queue::config(self.conn.layout()));
        self.current_loop.send_replace(loop_name.to_owned());
        let worker = WorkerBuilder::new(loop_name)
            // Fetch at once when jobs are announced ready; poll anyway, for jobs that become due.
            .backend(storage.poll_with_strategy(Strategy::new().stream(self.jobs_ready.stream()).interval(self.poll_interval)))
            .data(self.handler.clone())
            .concurrency(self.concurrency)
            .build(run_job);
        self.readiness.set_job_loop_running(true);
        let survived = self.readiness.reset_failures_after(Duration::from_secs(30));
        let stop = shutdown.clone();
        let run = worker.run_until(async move {
            stop.cancelled().await;
            Ok::<(), std::io::Error>(())
        });
        tokio::pin!(run);
        let result = tokio::select! {
            r = &mut run => r,
            () = shutdown.cancelled() => {
                self.readiness.set_job_loop_running(false);
                // apalis stops fetching on the same signal; we wait for the jobs already running.
                // The jobs run inside apalis's stream, so `run` must still be polled meanwhile.
                // `settled`: the loop itself ended without an error, so every started job's
                // acknowledgement was sent; a job's ack goes out after its handler returns, hence
                // the short wait.
                let drain = async {
                    tokio::select! {
                        r = &mut run => return r.is_ok(),
                        () = self.handler.running.none() => {}
                    }
                    // A loop that ended on an error may have lost an ack: not settled.
                    matches!(tokio::time::timeout(ACK_FLUSH, &mut run).await, Ok(Ok(())))
                };
                let settled = match tokio::time::timeout(self.shutdown_grace, drain).await {
                    Ok(settled) => {
                        tracing::info!(worker = %self.name, "in-flight jobs finished; slots released");
                        settled
                    }
                    Err(_) => {
                        tracing::warn!(
                            worker = %self.name, grace_ms = self.shutdown_grace.as_millis() as u64, still_running = self.handler.running.now(),
                            "in-flight jobs did not finish within worker.shutdown_grace; other workers take them over once this one's heartbeat stops, and their slot leases expire on their own"
                        );
                        false
                    }
                };
                survived.abort();
                return LoopEnd::Drained { settled };
            }
        };
        survived.abort();
        LoopEnd::Ended(result.map_err(|e| e.to_string()))
    }

    /// After a settled drain: the jobs the loop fetched but never started go back to the front of
    /// the ready list now. Left in its in-flight set, they would wait for the orphan sweep of a
    /// running loop, and during a pause none runs.
    async fn return_unstarted(&self, loop_name: &str) {
        match queue::return_unstarted(&self.conn, loop_name).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(worker = %loop_name, jobs = n, "jobs fetched but not started went back to the ready list"),
            Err(e) => tracing::warn!(
                worker = %loop_name, error = %e,
                "cannot give back the jobs fetched but not started; the orphan sweep of a running worker returns them"
            ),
        }
    }

    /// After a job loop ended: quarantine what it could not fetch, forget its apalis metadata,
    /// count the failure and say why.
    async fn after_failure(&self, loop_name: &str, result: Result<(), String>, backoff: Duration) {
        let name = &self.name;
        // Entries apalis cannot fetch would stop every loop that takes them: move them out first.
        let poison = match queue::quarantine_unfetchable(&self.conn, loop_name).await {
            Ok(poison) => poison,
            Err(e) => {
                tracing::warn!(worker = %name, error = %e, "cannot check the failed job loop's jobs for poison entries");
                Vec::new()
            }
        };
        for entry in &poison {
            metrics::counter!(m::TASK_ERROR_TOTAL, "reason" => "malformed_job").increment(1);
            tracing::error!(task_id = %entry.id, reason = %entry.reason, payload = %entry.sample, "queue entry cannot be fetched; moved to the dead set, never retried");
        }
        if let Err(e) = queue::forget_worker(&self.conn, loop_name).await {
            tracing::debug!(worker = %loop_name, error = %e, "cannot delete the job loop's apalis metadata; it expires on its own");
        }
        let consecutive = self.readiness.job_loop_failed();
        match result {
            Ok(()) => tracing::warn!(worker = %name, "job loop ended on its own; restarting"),
            Err(e) if !poison.is_empty() => tracing::warn!(
                worker = %name, error = %e, quarantined = poison.len(), retry_in_ms = backoff.as_millis() as u64,
                "job loop stopped on a poison queue entry, now in the dead set; restarting"
            ),
            Err(e) => tracing::error!(
                worker = %name, error = %e, consecutive_failures = consecutive, retry_in_ms = backoff.as_millis() as u64,
                "job loop failed (check that Redis is reachable; see error); restarting"
            ),
        }
    }
}

/// How one job loop ended.
enum LoopEnd {
    /// Shutdown or pause: the jobs in flight were drained (or the grace period ran out).
    /// `settled` when the loop ended with every started job acknowledged.
    Drained { settled: bool },
    /// The loop stopped on its own, usually on a Redis error.
    Ended(Result<(), String>),
}
