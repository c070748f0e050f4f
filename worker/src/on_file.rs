//! The worker process of a single-machine fleet (`backend.kind = "sqlite"`): the same job handler
//! as on Redis, over the file every process of the machine shares — apalis-sqlite's queue, the
//! SQLite slot limiter, rate windows, run records, pause and rollout flag — with the services
//! that file needs (pause, deadlines, retention), run until shutdown.

use std::sync::Arc;
use std::time::{Duration, Instant};

use apalis::prelude::{WorkerBuilder, WorkerBuilderExt};
use apalis_core::backend::ext::BackendExt;
use apalis_core::backend::ext::poll_strategy::Strategy;
use futures::future::BoxFuture;
use projector_config::Config;
use projector_job::handler::{JobHandler, Requeue, Rescheduler, RolloutFlag, Routing, reschedules_skips, run_job};
use projector_job::pipeline::Pipeline;
use projector_job::sink::ProjectionSink;
use projector_job::sqlite_sink::SqliteSink;
use projector_queue::sqlite::SqliteQueue;
use projector_shared::backoff::Backoff;
use projector_shared::metrics as m;
use projector_shared::run_sqlite::SqliteRuns;
use projector_shared::slots::{SlotLimiter, SqliteSlotLimiter, SqliteSlotSettings};
use projector_sqlite::Database;
use tokio_util::sync::CancellationToken;

use crate::error::Error;
use crate::metrics_http::Readiness;
use crate::services::{PauseSource, PauseWatch, Periodic, Services};

/// How often a worker reads the pause, looks for runs past their deadline and deletes what
/// `runs.retention` has passed (the last at most once a minute).
const PAUSE_CHECK: Duration = Duration::from_millis(250);
const DEADLINE_CHECK: Duration = Duration::from_secs(1);
const RETENTION_CHECK: Duration = Duration::from_secs(60);
/// How often the job loop is marked alive besides apalis's own beat (2 s, three missed = dead).
const KEEP_ALIVE: Duration = Duration::from_secs(1);
/// How long, after the drain, slot releases may delay the exit.
const SLOT_TASKS_GRACE: Duration = Duration::from_secs(5);

/// Runs a worker on the SQLite file until `shutdown`, then drains in-flight jobs for at most
/// `worker.shutdown_grace`.
pub async fn run(config: Config, readiness: Readiness, services: &Services, shutdown: CancellationToken) -> Result<(), Error> {
    let name = format!("projector-worker-{}-{}", std::process::id(), &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let dsn = config.backend.dsn.clone().unwrap_or_default();
    let db = Database::open(&dsn, config.backend.busy_timeout).await.map_err(projector_shared::Error::from)?;
    let queue = SqliteQueue::open(&db).await.map_err(projector_shared::Error::from)?;
    let runs = SqliteRuns::new(db.clone(), config.runs.retention);
    let mut settings = SqliteSlotSettings::new(config.slots.limit, config.slots.lease_ttl);
    if let Some(steering) = projector_job::build::service_steering(&config) {
        settings = settings.following_service(steering);
    }
    let slots = SqliteSlotLimiter::new(db.clone(), settings);
    let limiter: Arc<dyn SlotLimiter> = Arc::new(slots.clone());
    let rate = projector_job::build::rate_gate(&config, projector_job::build::RateStore::File(&db));
    let sink: Arc<dyn ProjectionSink> = match config.sink.kind {
        projector_config::SinkKind::Sqlite => Arc::new(SqliteSink::new(db.clone(), config.sink.ttl)),
        _ => projector_job::build::sink(&config, None).await?,
    };
    let pipeline = Pipeline::from_config(&config, name.clone(), limiter, sink, rate)?;
    let handler = Arc::new(
        JobHandler::new(
            pipeline,
            Arc::new(runs.clone()),
            Routing::Flag(Box::new(RolloutFlag::on_file(runs.clone(), config.worker.rollout_refresh))),
            Some(Rescheduler::with(&config, Requeue::Sqlite(queue.clone()))),
        )
        .rescheduling_skips(reschedules_skips(&config)),
    );
    tracing::info!(
        worker = %name, file = %db.file().display(), query_source = ?config.query.source,
        query_url = config.query.url.as_deref().unwrap_or("-"), concurrency = config.worker.concurrency,
        slots_limit = config.slots.limit, "worker started on the SQLite file"
    );
    if config.adaptive.enabled {
        tracing::warn!(
            "adaptive.enabled is Redis-only: on the SQLite file the limit follows slots.limit and the service's own numbers (slots.follow_service), not the adaptive multiplier"
        );
    }
    let (pause_tx, paused) = tokio::sync::watch::channel(false);
    services.spawn_every(Arc::new(PauseWatch { source: PauseSource::File(runs.clone()), paused: pause_tx }), PAUSE_CHECK);
    services.spawn_every(Arc::new(DeadlineSweep { runs: runs.clone() }), DEADLINE_CHECK);
    services.spawn_every(
        Arc::new(Retention {
            runs: runs.clone(),
            queue: queue.clone(),
            retention: config.runs.retention,
            completed_detail: config.runs.completed_detail,
        }),
        RETENTION_CHECK,
    );
    let (current_loop, loop_name) = tokio::sync::watch::channel(String::new());
    services.spawn_every(Arc::new(KeepAlive { queue: queue.clone(), loop_name }), KEEP_ALIVE);
    let job_loop = JobLoop { name: name.clone(), queue, handler, readiness: readiness.clone(), config: &config, paused, current_loop };
    let result = job_loop.run(&shutdown).await;
    readiness.set_job_loop_running(false);
    if !slots.wait_for_background(SLOT_TASKS_GRACE).await {
        tracing::warn!(
            worker = %name,
            "slot tasks still running at exit: a slot kept for a query not answered stays leased in the file until that query must have ended (query.max_duration)"
        );
    }
    db.close().await;
    result
}

/// The apalis job loop on the file's queue, restarted with backoff when it fails and stopped
/// (after a drain) on shutdown or a pause.
struct JobLoop<'a> {
    name: String,
    queue: SqliteQueue,
    handler: Arc<JobHandler>,
    readiness: Readiness,
    config: &'a Config,
    paused: tokio::sync::watch::Receiver<bool>,
    /// The apalis name of the job loop running now, for the keep-alive service.
    current_loop: tokio::sync::watch::Sender<String>,
}

impl JobLoop<'_> {
    async fn run(&self, shutdown: &CancellationToken) -> Result<(), Error> {
        let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
        for attempt in 1u32.. {
            let mut paused = self.paused.clone();
            if *paused.borrow_and_update() {
                tracing::warn!(worker = %self.name, "fleet paused: taking no jobs until `projectorctl resume`");
                tokio::select! {
                    _ = paused.wait_for(|p| !*p) => tracing::info!(worker = %self.name, "fleet resumed: taking jobs again"),
                    () = shutdown.cancelled() => return Ok(()),
                }
            }
            // A fresh name per loop: apalis-sqlite puts a dead name's jobs back for the others.
            let loop_name = format!("{}-{attempt}", self.name);
            let started = Instant::now();
            let stop = shutdown.child_token();
            let on_pause = stop.clone();
            let mut paused = self.paused.clone();
            let pause_watch = tokio::spawn(async move {
                if paused.wait_for(|p| *p).await.is_ok() {
                    tracing::warn!("fleet paused (projectorctl pause): finishing the running jobs, taking no new ones");
                    on_pause.cancel();
                }
            });
            let ended = self.run_loop(&loop_name, &stop).await;
            pause_watch.abort();
            if shutdown.is_cancelled() {
                return Ok(());
            }
            if stop.is_cancelled() {
                continue;
            }
            self.readiness.set_job_loop_running(false);
            if started.elapsed() > Duration::from_secs(30) {
                backoff.reset();
            }
            let pause = backoff.next_pause();
            let consecutive = self.readiness.job_loop_failed();
            tracing::error!(
                worker = %self.name, error = %ended.err().unwrap_or_else(|| "ended on its own".to_owned()), consecutive_failures = consecutive,
                retry_in_ms = pause.as_millis() as u64, "job loop failed (is the SQLite file reachable and writable? see error); restarting"
            );
            metrics::counter!(m::WORKER_RESTARTS_TOTAL).increment(1);
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                () = shutdown.cancelled() => return Ok(()),
            }
        }
        Ok(())
    }

    /// One apalis job loop, to its failure or through the drain of its running jobs.
    async fn run_loop(&self, loop_name: &str, stop: &CancellationToken) -> Result<(), String> {
        let worker = WorkerBuilder::new(loop_name)
            .backend(self.queue.storage().poll_with_strategy(Strategy::new().interval(self.config.worker.poll_interval)))
            .data(self.handler.clone())
            .concurrency(self.config.worker.concurrency)
            .build(run_job);
        self.current_loop.send_replace(loop_name.to_owned());
        self.readiness.set_job_loop_running(true);
        let signal = stop.clone();
        let run = worker.run_until(async move {
            signal.cancelled().await;
            Ok::<(), std::io::Error>(())
        });
        tokio::pin!(run);
        tokio::select! {
            r = &mut run => return r.map_err(|e| e.to_string()),
            () = stop.cancelled() => {}
        }
        self.readiness.set_job_loop_running(false);
        // apalis stops fetching on the same signal; the jobs already running finish inside its
        // stream, so `run` is still polled while they do.
        let grace = self.config.worker.shutdown_grace;
        match tokio::time::timeout(grace, &mut run).await {
            Ok(r) => {
                tracing::info!(worker = %self.name, "in-flight jobs finished; slots released");
                r.map_err(|e| e.to_string())
            }
            Err(_) => {
                tracing::warn!(
                    worker = %self.name, grace_ms = grace.as_millis() as u64, still_running = self.handler.running.now(),
                    "in-flight jobs did not finish within worker.shutdown_grace; other workers take them over once this one's heartbeat stops, and their slot leases expire on their own"
                );
                Ok(())
            }
        }
    }
}

/// Marks the running job loop alive every second, whatever its jobs wait for
/// (`SqliteQueue::keep_alive` says why).
struct KeepAlive {
    queue: SqliteQueue,
    loop_name: tokio::sync::watch::Receiver<String>,
}

impl Periodic for KeepAlive {
    fn name(&self) -> &'static str {
        "keep_alive"
    }

    fn run_once(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let name = self.loop_name.borrow().clone();
            if name.is_empty() {
                return;
            }
            if let Err(e) = self.queue.keep_alive(&name).await {
                tracing::debug!(error = %e, "cannot mark the job loop alive; apalis's own beat may still");
            }
        })
    }
}

/// Ends the open orgs of runs past their deadline (first outcome wins: every worker may).
struct DeadlineSweep {
    runs: SqliteRuns,
}

impl Periodic for DeadlineSweep {
    fn name(&self) -> &'static str {
        "deadline_sweep"
    }

    fn run_once(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            match self.runs.end_overdue().await {
                Ok(ended) => {
                    for (run_id, n) in ended.into_iter().filter(|(_, n)| *n > 0) {
                        metrics::counter!(m::RUN_DEADLINE_ORGS_TOTAL).increment(n);
                        tracing::warn!(run_id = %run_id, orgs = n, "the run's deadline passed: its open orgs end deadline (a try already querying records what it reaches)");
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot end the open orgs of runs past their deadline; retried next round"),
            }
        })
    }
}

/// Deletes runs older than `runs.retention` and the queue's finished jobs, and compacts the
/// completed orgs of runs finished `runs.completed_detail` ago; run once a minute.
struct Retention {
    runs: SqliteRuns,
    queue: SqliteQueue,
    retention: Duration,
    completed_detail: Duration,
}

impl Periodic for Retention {
    fn name(&self) -> &'static str {
        "retention"
    }

    fn run_once(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            // One run per round: a large run's compaction is many short transactions.
            match self.runs.compact_due(self.completed_detail).await {
                Ok(Some((run_id, orgs))) => {
                    tracing::info!(run_id = %run_id, orgs, "compacted the completed orgs of a finished run (runs.completed_detail passed)")
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "cannot compact a finished run; retried next round"),
            }
            match self.runs.purge_expired().await {
                Ok(0) => {}
                Ok(n) => tracing::info!(runs = n, "deleted runs older than runs.retention"),
                Err(e) => tracing::warn!(error = %e, "cannot delete expired runs; retried next round"),
            }
            // A finished job's outcome is in its run's record: its row goes after a minute (a
            // resumed fan-out reads the run's plan, not the queue). Jobs apalis gave up on stay
            // for an operator, as long as the run.
            if let Err(e) = self.queue.vacuum(RETENTION_CHECK, self.retention).await {
                tracing::warn!(error = %e, "cannot delete finished jobs; retried next round");
            }
        })
    }
}
