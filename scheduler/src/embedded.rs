//! The embedded run: a whole batch in one process with no Redis — apalis `MemoryStorage`, in-process
//! workers, the in-memory slot limiter, batches released on their schedule, and a summary at the end.

use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use apalis::prelude::{MemorySink, MemoryStorage, MemoryStorageError, Task, TaskBuilder, WorkerBuilder, WorkerBuilderExt};
use chrono::Utc;
use futures::channel::mpsc::UnboundedSender;
use futures::{SinkExt, StreamExt};
use projector_config::{BackendKind, Config, SinkKind};
use projector_job::Pipeline;
use projector_job::build::RateStore;
use projector_job::handler::{JobHandler, Requeue, Rescheduler, Routing, reschedules_skips, run_job};
use projector_job::sink::{DiscardSink, ProjectionSink};
use projector_job::sqlite_sink::SqliteSink;
use projector_shared::batch::{Pacing, plan_batches};
use projector_shared::run::{MemoryRunLedger, RunSummary};
use projector_shared::slots::{MemorySlotLimiter, SlotLimiter, SqliteSlotLimiter, SqliteSlotSettings};
use projector_shared::{RunId, SpikeProjectionJob};
use projector_sqlite::Database;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::error::Error;
use crate::orgs::list_orgs;

/// What the embedded run does besides the run itself.
#[derive(Debug, Clone, Default)]
pub struct EmbeddedOptions {
    /// Write projections here as JSON lines (one line per org and project).
    pub output: Option<PathBuf>,
}

/// Runs every organization through the pipeline in this process and returns the run's totals.
/// `shutdown` (Ctrl-C) stops releasing batches and ends the run early: the summary then says
/// `interrupted` and accounts only for the orgs that finished.
pub async fn run_embedded(config: &Config, options: EmbeddedOptions, shutdown: CancellationToken) -> Result<RunSummary, Error> {
    let started = Instant::now();
    let tick = Utc::now();
    let run_id = RunId::manual(tick);
    let list = list_orgs(config)?;
    let orgs = &list.orgs;
    let size = NonZeroUsize::new(config.batch.size).unwrap_or(NonZeroUsize::MIN);
    // Paced as a fleet's run is: batch.delay, or tighter so every org is released in time.
    let deadline = config.run_deadline(tick);
    let pacing = Pacing::new(orgs.len(), size, config.batch.delay, (deadline - tick).to_std().ok());
    let batches = plan_batches(&orgs.iter().map(|o| o.org_id).collect::<Vec<_>>(), size, pacing.delay);
    let projects: std::collections::HashMap<_, _> = orgs.iter().map(|o| (o.org_id, o.project_ids.clone())).collect();
    tracing::info!(
        run_id = %run_id, orgs = orgs.len(), batches = batches.len(), batch_size = config.batch.size,
        batch_delay_ms = pacing.delay.as_millis() as u64, slots_limit = config.slots.limit,
        concurrency = config.worker.concurrency, "embedded run starting; {}", pacing.describe()
    );

    let ledger = Arc::new(MemoryRunLedger::new(run_id.clone(), orgs.iter().map(|o| o.org_id)));
    // The same handler as the worker process's: the memory ledger instead of the run record, no
    // flag store (every org takes a slot first), the memory queue to go back to. The service's
    // own numbers cap the run's limit as they cap a fleet's (slots.follow_service).
    // Every embedded run on this machine that names the same SQLite file shares its slots and
    // its rate windows (which outlive the process), and stores projections there with
    // sink.kind = "sqlite".
    let db = match (config.backend.kind, config.backend.dsn.as_deref()) {
        (Some(BackendKind::Sqlite), Some(dsn)) => {
            let db = Database::open(dsn, config.backend.busy_timeout).await?;
            tracing::info!(file = %db.file().display(), "slots and rate windows are kept in the SQLite file");
            Some(db)
        }
        _ => None,
    };
    // Embedded runs need no Redis: projections go to --output, to PostgreSQL or the SQLite file
    // when sink.kind says so, or nowhere.
    let sink: Arc<dyn ProjectionSink> = match (&options.output, config.sink.kind, &db) {
        (Some(path), _, _) => projector_job::build::sink(config, Some(path)).await?,
        (None, SinkKind::Postgres, _) => projector_job::build::sink(config, None).await?,
        (None, SinkKind::Sqlite, Some(db)) => Arc::new(SqliteSink::new(db.clone(), config.sink.ttl)),
        (None, _, _) => Arc::new(DiscardSink),
    };
    let (limiter, rate) = match &db {
        Some(db) => {
            let mut settings = SqliteSlotSettings::new(config.slots.limit, config.slots.lease_ttl);
            if let Some(steering) = projector_job::build::service_steering(config) {
                settings = settings.following_service(steering);
            }
            let limiter: Arc<dyn SlotLimiter> = Arc::new(SqliteSlotLimiter::new(db.clone(), settings));
            (limiter, projector_job::build::rate_gate(config, RateStore::File(db)))
        }
        None => {
            let limiter: Arc<dyn SlotLimiter> = Arc::new(match projector_job::build::service_steering(config) {
                Some(steering) => MemorySlotLimiter::following_service(config.slots.limit, steering),
                None => MemorySlotLimiter::new(config.slots.limit),
            });
            (limiter, projector_job::build::rate_gate(config, RateStore::Process))
        }
    };
    let pipeline = Pipeline::from_config(config, format!("embedded-{}", std::process::id()), limiter, sink.clone(), rate)?;
    let probe = pipeline.probe.clone();
    let (queue, storage) = memory_queue();
    // A refusal or a failure that may pass goes back to the in-memory queue after its backoff,
    // as a worker's goes back to Redis: within runs.max_attempts tries and the run's deadline.
    let rescheduler = Rescheduler::with(config, Requeue::Memory(queue.clone()));
    let handler = Arc::new(
        JobHandler::new(pipeline, ledger.clone(), Routing::AllLimited, Some(rescheduler)).rescheduling_skips(reschedules_skips(config)),
    );
    let workers_stop = CancellationToken::new();
    let worker = WorkerBuilder::new(format!("projector-embedded-{}", std::process::id()))
        .backend(storage)
        .data(handler)
        .concurrency(config.worker.concurrency)
        .build(run_job);
    let stop = workers_stop.clone();
    let workers = tokio::spawn(async move {
        worker
            .run_until(async move {
                stop.cancelled().await;
                Ok::<(), std::io::Error>(())
            })
            .await
    });

    let interrupted_flag = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let progress = spawn_progress(ledger.clone(), workers_stop.clone(), interrupted_flag.clone());

    // Release each batch at its time; jobs run as soon as they are released.
    let release = async {
        let jobs = Jobs { run_id: &run_id, tick, deadline, projects: &projects };
        release_batches(&queue, &jobs, started, &batches).await?;
        ledger.all_accounted().await;
        Ok::<(), Error>(())
    };

    let interrupted = tokio::select! {
        r = release => {
            r?;
            false
        }
        () = shutdown.cancelled() => true,
    };
    interrupted_flag.store(interrupted, std::sync::atomic::Ordering::SeqCst);
    workers_stop.cancel();
    let _ = progress.await;
    match workers.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "in-process workers stopped with an error"),
        Err(e) => tracing::warn!(error = %e, "in-process workers panicked"),
    }
    sink.flush()?;

    let mut summary = ledger.totals();
    summary.max_concurrent_queries = Some(probe.max());
    summary.bad_lines = list.bad_lines;
    summary.interrupted = interrupted;
    summary.duration_ms = started.elapsed().as_millis() as u64;
    Ok(summary)
}

/// What every job of the run shares.
struct Jobs<'a> {
    run_id: &'a RunId,
    tick: chrono::DateTime<Utc>,
    /// `runs.deadline` after the tick, else one period of the schedule: no try is retried past it.
    deadline: chrono::DateTime<Utc>,
    projects: &'a std::collections::HashMap<projector_shared::OrgId, Vec<projector_shared::ProjectId>>,
}

/// Pushes each batch's jobs into the in-memory queue at its release time.
async fn release_batches(
    queue: &UnboundedSender<Task<serde_json::Value>>,
    jobs: &Jobs<'_>,
    started: Instant,
    batches: &[projector_shared::batch::Batch],
) -> Result<(), Error> {
    let run_id = jobs.run_id;
    let refused = |e: String| Error::Enqueue { run_id: run_id.to_string(), detail: e };
    for batch in batches {
        tokio::time::sleep_until(started + batch.release_after).await;
        for &org_id in &batch.orgs {
            let projects = jobs.projects.get(&org_id).cloned().unwrap_or_default();
            let job = SpikeProjectionJob {
                deadline: Some(jobs.deadline),
                ..SpikeProjectionJob::planned(run_id.clone(), org_id, batch.index, jobs.tick, projects)
            };
            let key = job.idempotency_key();
            let task = TaskBuilder::new(job.to_payload()).idempotency_key(key).build();
            queue.unbounded_send(task).map_err(|e| refused(e.to_string()))?;
        }
        tracing::debug!(run_id = %run_id, batch = batch.index, orgs = batch.orgs.len(), "batch released");
    }
    Ok(())
}

/// An apalis in-memory queue whose sending half stays with the run, so batches can be released later.
///
/// The run keeps its own clone of the channel sender rather than a clone of the storage's
/// `MemorySink`: the sink's lock is also taken by the worker's `poll_ready`, and when the two
/// contend the worker's waker is lost and it never polls again (seen with apalis-core 1.0.0).
fn memory_queue() -> (UnboundedSender<Task<serde_json::Value>>, MemoryStorage<serde_json::Value>) {
    let (sender, receiver) = futures::channel::mpsc::unbounded::<Task<serde_json::Value>>();
    let storage_sender = Box::new(sender.clone().sink_map_err(MemoryStorageError::from))
        as Box<dyn futures::Sink<Task<serde_json::Value>, Error = MemoryStorageError> + Send + Sync + Unpin>;
    let storage_sink = MemorySink::new(Arc::new(futures::lock::Mutex::new(storage_sender)));
    (sender, MemoryStorage::new_with(storage_sink, receiver.boxed()))
}

/// Shows progress (`crate::progress`) until `done`.
fn spawn_progress(
    ledger: Arc<MemoryRunLedger>,
    done: CancellationToken,
    interrupted: Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut progress = crate::progress::Progress::new(ledger.totals().orgs_total, Duration::from_secs(2));
        let mut ticker = tokio::time::interval(progress.interval());
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                () = done.cancelled() => break,
            }
            progress.show(&ledger.totals());
        }
        progress.finish(&ledger.totals(), interrupted.load(std::sync::atomic::Ordering::SeqCst));
    })
}
