//! The worker process: takes spike-projection jobs from apalis-redis, routes each org by the rollout
//! flag, runs it through the pipeline, records its outcome in the run record, and serves metrics.
//! Built around the apalis-redis 1.0 behaviours in docs/apalis-redis.md (each mitigation names its entry).

use std::sync::Arc;
use std::time::{Duration, Instant};

use apalis::prelude::{BoxDynError, Data, WorkerBuilder, WorkerBuilderExt};
use apalis_core::backend::ext::BackendExt;
use apalis_redis::RedisStorage;
use projector_config::{Config, OnRedisError, OnSlotTimeout};
use projector_shared::SpikeProjectionJob;
use projector_shared::metrics as m;
use projector_shared::rollout::Rollout;
use projector_shared::run::Outcome;
use projector_shared::run_record::{Admission, OrgIds, Recorded, RunRecords};
use projector_shared::slots::{FailOpenLimiter, RedisSlotLimiter, RedisSlotSettings, SlotLimiter};
use rand::Rng;
use redis::aio::ConnectionManager;
use tokio::sync::RwLock;
use tokio_util::sync::CancellationToken;

use crate::error::Error;
use crate::metrics_http::Readiness;
use crate::pipeline::{Pipeline, PipelineSettings};
use crate::probe::QueryProbe;
use projector_queue as queue;

/// How often an idle worker looks for due jobs (apalis's default is its heartbeat: tens of seconds).
const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// Finished jobs' data and metadata are deleted every this many housekeeping rounds (apalis keeps
/// them forever): once a minute at the default interval of 1 s.
const VACUUM_EVERY_ROUNDS: u32 = 60;

/// Everything a job handler shares within one worker process.
struct WorkerState {
    pipeline: Pipeline,
    records: RunRecords,
    conn: ConnectionManager,
    rollout: RwLock<(Option<Instant>, Rollout)>,
    /// How long `rollout` is trusted (`worker.rollout_refresh`).
    rollout_refresh: Duration,
    on_timeout: OnSlotTimeout,
    max_reschedules: u32,
    /// Jobs being handled now; the drain on SIGTERM waits for this to reach 0 (bounded by the
    /// grace period) and reports how many were left if the grace period runs out.
    in_flight: tokio::sync::watch::Sender<usize>,
}

/// Counts a job as in flight for as long as it lives.
struct InFlight<'a>(&'a tokio::sync::watch::Sender<usize>);

impl<'a> InFlight<'a> {
    fn enter(counter: &'a tokio::sync::watch::Sender<usize>) -> Self {
        counter.send_modify(|n| *n += 1);
        InFlight(counter)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

impl WorkerState {
    /// The rollout flag, re-read at most every ROLLOUT_REFRESH. Unreadable means the safe default.
    async fn is_limited(&self, job: &SpikeProjectionJob) -> bool {
        let refresh = self.rollout_refresh;
        let fresh = |cached: &(Option<Instant>, Rollout)| cached.0.is_some_and(|at| at.elapsed() < refresh);
        {
            let cached = self.rollout.read().await;
            if fresh(&cached) {
                return cached.1.is_limited(job.org_id);
            }
        }
        let mut cached = self.rollout.write().await;
        // Jobs that queued for the write lock find the flag already re-read by the first of them.
        if fresh(&cached) {
            return cached.1.is_limited(job.org_id);
        }
        match Rollout::load(&mut self.conn.clone()).await {
            Ok(r) => {
                if cached.0.is_some() && r != cached.1 {
                    tracing::info!(rollout = ?r, "rollout flag changed; new jobs follow it");
                }
                *cached = (Some(Instant::now()), r);
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the rollout flag; every org takes the limited path meanwhile");
                *cached = (Some(Instant::now()), Rollout::default());
            }
        }
        cached.1.is_limited(job.org_id)
    }

    /// Re-enqueues a job whose slot wait timed out, after a jittered backoff.
    async fn reschedule(&self, job: &SpikeProjectionJob) -> Result<(), Error> {
        let next = SpikeProjectionJob { reschedules: job.reschedules + 1, ..job.clone() };
        let backoff = 2u64.pow(next.reschedules.min(6)) + rand::rng().random_range(0..3);
        let run_at = chrono::Utc::now().timestamp().max(0) as u64 + backoff;
        let task = queue::task(&next, run_at, format!("{}:r{}", job.idempotency_key(), next.reschedules));
        // apalis_redis::Error is not a redis::RedisError, so Error::redis does not apply here.
        queue::push(&self.conn, &[task]).await.map(|_| ()).map_err(|e| {
            Error::Shared(projector_shared::Error::Redis { doing: format!("rescheduling org {}", job.org_id), detail: e.to_string() })
        })
    }
}

/// Runs the worker until `shutdown`, then drains in-flight jobs for at most `worker.shutdown_grace`.
pub async fn run(config: Config, readiness: Readiness, shutdown: CancellationToken) -> Result<(), Error> {
    let name = format!("projector-worker-{}-{}", std::process::id(), &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let (_, conn) = projector_shared::redis_conn::connection_manager(&config.redis, Duration::from_secs(2))
        .map_err(projector_shared::Error::redis("opening the job queue connection"))?;
    let slots = RedisSlotLimiter::new(&config.redis, RedisSlotSettings::new(config.slots.limit, config.slots.lease_ttl))?;
    let redis_limiter: Arc<dyn SlotLimiter> = Arc::new(slots.clone());
    let limiter: Arc<dyn SlotLimiter> = match config.slots.on_redis_error {
        OnRedisError::FailClosed => redis_limiter,
        OnRedisError::FailOpen => Arc::new(FailOpenLimiter::new(redis_limiter, config.slots.fallback_limit)),
    };
    let state = Arc::new(WorkerState {
        pipeline: Pipeline {
            limiter,
            query: crate::build::query_source(&config)?,
            sink: crate::build::sink(&config, None)?,
            probe: QueryProbe::default(),
            settings: PipelineSettings {
                holder: name.clone(),
                max_wait: config.slots.max_wait,
                query_max_duration: config.query.max_duration(),
            },
        },
        records: RunRecords::new(conn.clone()),
        conn: conn.clone(),
        rollout: RwLock::new((None, Rollout::default())),
        rollout_refresh: config.worker.rollout_refresh,
        on_timeout: config.slots.on_timeout,
        max_reschedules: config.slots.max_reschedules,
        in_flight: tokio::sync::watch::Sender::new(0),
    });
    let endpoint = projector_shared::redis_conn::Endpoint::from(&config.redis);
    let in_force = announce_limit(&slots, config.slots.limit).await;
    tracing::info!(
        worker = %name, redis = %endpoint.redacted(), query_source = ?config.query.source,
        query_url = config.query.url.as_deref().unwrap_or("-"), concurrency = config.worker.concurrency,
        slots_limit = %in_force, "worker started"
    );
    let (current_loop, loop_name) = tokio::sync::watch::channel(String::new());
    let housekeeper =
        Housekeeping { conn: conn.clone(), slots, name: name.clone(), every: config.worker.housekeeping_interval, current_loop: loop_name };
    let housekeeping = tokio::spawn(housekeeper.run(shutdown.clone()));
    let result = supervise(&config, &name, &conn, &state, &readiness, &current_loop, &shutdown).await;
    readiness.set_job_loop_running(false);
    // Housekeeping ends on the same shutdown signal; a panic there is reported, not lost.
    if let Err(e) = housekeeping.await {
        tracing::error!(worker = %name, error = %e, "housekeeping task panicked");
    }
    if let Err(e) = projector_shared::heartbeat::leave(&conn, &name).await {
        tracing::debug!(worker = %name, error = %e, "cannot remove the heartbeat; it ages out on its own");
    }
    result
}

/// The limit in force, as text for the start-up log: Redis's value wins once set (operators change
/// it at runtime with projectorctl); a configured value that differs is named in a warning.
async fn announce_limit(slots: &RedisSlotLimiter, configured: u32) -> String {
    match slots.occupancy().await {
        Ok((in_use, Some(stored))) => {
            projector_shared::slots::record_occupancy(in_use, stored);
            if stored != configured {
                tracing::warn!(
                    in_force = stored,
                    configured,
                    "slots.limit differs from the limit stored in Redis; the stored limit is in force (set by projectorctl slots set-limit). Hand it back to config with `projectorctl slots reset-limit`"
                );
            }
            format!("{stored} (in Redis)")
        }
        Ok((_, None)) => format!("{configured} (slots.limit; written to Redis at the first slot request)"),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the slot limit from Redis yet");
            format!("{configured} (slots.limit; Redis not reachable yet)")
        }
    }
}

/// Runs the apalis job loop until `shutdown`, restarting it with backoff when it fails, then
/// drains the jobs in flight.
async fn supervise(
    config: &Config,
    name: &str,
    conn: &ConnectionManager,
    state: &Arc<WorkerState>,
    readiness: &Readiness,
    current_loop: &tokio::sync::watch::Sender<String>,
    shutdown: &CancellationToken,
) -> Result<(), Error> {
    let conn = conn.clone();

    // Any Redis error ends an apalis worker (docs/apalis-redis.md#redis-errors-end-the-loop): run it
    // again under a fresh name (#unique-names),
    // with capped exponential backoff instead of apalis's tight restart loop.
    let mut backoff = Duration::from_millis(500);
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        // Before apalis's first fetch: a backlog of due jobs larger than its fetch can move would
        // make every fetch fail (see queue::promote_due).
        if let Err(e) = queue::promote_due(&conn).await {
            tracing::warn!(error = %e, "cannot move due jobs to the ready list; retried by the job loop");
        }
        let storage = RedisStorage::<serde_json::Value>::new(conn.clone()).with_config(queue::config());
        current_loop.send_replace(format!("{name}-{attempt}"));
        let worker = WorkerBuilder::new(format!("{name}-{attempt}"))
            .backend(storage.poll_with_interval(POLL_INTERVAL))
            .data(state.clone())
            .concurrency(config.worker.concurrency)
            .build(handle_job);
        let started = Instant::now();
        readiness.set_job_loop_running(true);
        let survived = readiness.reset_failures_after(Duration::from_secs(30));
        let stop = shutdown.clone();
        let grace = config.worker.shutdown_grace;
        let run = worker.run_until(async move {
            stop.cancelled().await;
            Ok::<(), std::io::Error>(())
        });
        tokio::pin!(run);
        let result = tokio::select! {
            r = &mut run => r,
            () = shutdown.cancelled() => {
                readiness.set_job_loop_running(false);
                // apalis stops fetching on the same signal; we wait for the jobs already running.
                // The jobs run inside apalis's stream, so `run` must still be polled meanwhile.
                let mut in_flight = state.in_flight.subscribe();
                let drain = async {
                    tokio::select! {
                        _ = &mut run => {}
                        _ = in_flight.wait_for(|n| *n == 0) => {}
                    }
                };
                let drained = tokio::time::timeout(grace, drain).await;
                match drained {
                    Ok(_) => tracing::info!(worker = %name, "in-flight jobs finished; slots released"),
                    Err(_) => tracing::warn!(
                        worker = %name, grace_ms = grace.as_millis() as u64, still_running = *state.in_flight.borrow(),
                        "in-flight jobs did not finish within worker.shutdown_grace; other workers take them over once this one's heartbeat stops, and their slot leases expire on their own"
                    ),
                }
                return Ok(());
            }
        };
        survived.abort();
        readiness.set_job_loop_running(false);
        if shutdown.is_cancelled() {
            tracing::info!(worker = %name, "worker drained and stopped");
            return Ok(());
        }
        let loop_name = format!("{name}-{attempt}");
        // Entries apalis cannot fetch would stop every loop that takes them: move them out first.
        let poison = match queue::quarantine_unfetchable(&conn, &loop_name).await {
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
        if let Err(e) = queue::forget_worker(&conn, &loop_name).await {
            tracing::debug!(worker = %loop_name, error = %e, "cannot delete the job loop's apalis metadata; it expires on its own");
        }
        let consecutive = readiness.job_loop_failed();
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
        metrics::counter!(m::WORKER_RESTARTS_TOTAL).increment(1);
        if started.elapsed() > Duration::from_secs(30) {
            backoff = Duration::from_millis(500);
        }
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            () = shutdown.cancelled() => return Ok(()),
        }
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
}

/// One job to one recorded outcome. Returns `Ok` except when the outcome could not be recorded,
/// so apalis keeps the job and it is tried again (the duplicate check then avoids a re-query).
async fn handle_job(payload: serde_json::Value, state: Data<Arc<WorkerState>>) -> Result<(), BoxDynError> {
    let _in_flight = InFlight::enter(&state.in_flight);
    let job: SpikeProjectionJob = match serde_json::from_value(payload.clone()) {
        Ok(job) => job,
        Err(e) => return malformed(&state, payload, e).await,
    };
    match state.records.admit(&job.run_id, job.org_id).await {
        Ok(Admission::Open) => {}
        Ok(Admission::Accounted(outcome)) => {
            tracing::info!(run_id = %job.run_id, org_id = %job.org_id, outcome = outcome.as_str(), "duplicate delivery; already accounted for");
            return Ok(());
        }
        Ok(refused @ (Admission::UnknownRun | Admission::NotPlanned)) => {
            let (reason, why) = match refused {
                Admission::UnknownRun => ("unknown_run", "its run does not exist (expired, or never created)"),
                _ => ("not_planned", "its org is not in the run's plan"),
            };
            metrics::counter!(m::TASK_ERROR_TOTAL, "reason" => reason).increment(1);
            tracing::warn!(run_id = %job.run_id, org_id = %job.org_id, reason, "job refused without a query: {why}");
            return Ok(());
        }
        Err(e) => tracing::warn!(run_id = %job.run_id, org_id = %job.org_id, error = %e, "cannot check the run record; running the job"),
    }
    let outcome =
        if state.is_limited(&job).await { state.pipeline.process(&job).await } else { state.pipeline.process_unlimited(&job).await };
    if outcome == Outcome::SkippedNoSlot && state.on_timeout == OnSlotTimeout::Reschedule && job.reschedules < state.max_reschedules {
        match state.reschedule(&job).await {
            Ok(()) => {
                tracing::info!(run_id = %job.run_id, org_id = %job.org_id, reschedules = job.reschedules + 1, "no slot; job rescheduled");
                return Ok(());
            }
            Err(e) => {
                tracing::warn!(run_id = %job.run_id, org_id = %job.org_id, error = %e, "cannot reschedule; recording skipped_no_slot")
            }
        }
    }
    match state.records.record(&job.run_id, job.org_id, outcome).await {
        Ok(Recorded::FinishedTheRun) => log_run_finished(&state.records, &job.run_id).await,
        Ok(Recorded::Recorded | Recorded::AlreadyAccounted) => {}
        Ok(Recorded::UnknownRun | Recorded::NotPlanned) => {
            tracing::warn!(run_id = %job.run_id, org_id = %job.org_id, "outcome not recorded: the run or its plan is gone (expired or reset)");
        }
        Err(e) => {
            tracing::error!(run_id = %job.run_id, org_id = %job.org_id, outcome = outcome.as_str(), error = %e, "cannot record the outcome; the job will be tried again");
            return Err(e.into());
        }
    }
    Ok(())
}

/// One info line per run, written by the worker that recorded its last org: per-org skips are
/// logged at debug only, so this line is where a run's skips show up in the log.
async fn log_run_finished(records: &RunRecords, run_id: &projector_shared::RunId) {
    match records.summary(run_id, OrgIds::Leave).await {
        Ok(Some(s)) => tracing::info!(
            run_id = %run_id, orgs = s.orgs_total, completed = s.completed, skipped_no_slot = s.skipped_no_slot,
            rate_limited = s.rate_limited, failed = s.failed, slot_unavailable = s.slot_unavailable, "run finished"
        ),
        Ok(None) | Err(_) => tracing::info!(run_id = %run_id, "run finished (totals: projectorctl run {run_id})"),
    }
}

/// A job that cannot be read: counted, logged with a sample, and recorded as failed when its run
/// and org can still be made out, so the run accounts for it. It is never retried.
async fn malformed(state: &WorkerState, payload: serde_json::Value, e: serde_json::Error) -> Result<(), BoxDynError> {
    let sample = projector_shared::job::sample(payload.to_string().as_bytes());
    metrics::counter!(m::TASK_ERROR_TOTAL, "reason" => "malformed_job").increment(1);
    tracing::error!(error = %e, payload = %sample, "malformed spike-projection job; dropped");
    let run = payload.get("run_id").and_then(|v| v.as_str()).map(|r| projector_shared::RunId(r.to_owned()));
    let org = payload.get("org_id").and_then(|v| v.as_u64()).map(projector_shared::OrgId);
    if let (Some(run), Some(org)) = (run, org) {
        match state.records.record(&run, org, Outcome::Failed).await {
            Ok(Recorded::UnknownRun | Recorded::NotPlanned) => {
                tracing::warn!(run_id = %run, org_id = %org, "the malformed job names a run or org that was never planned; not recorded");
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(run_id = %run, org_id = %org, error = %e, "cannot record the malformed job as failed"),
        }
    }
    Ok(())
}

/// The worker's periodic duties, once per `worker.housekeeping_interval`: bounded promotion of due
/// jobs, queue depth gauges (apalis's own counts read the wrong keys), fleet slot gauges from the
/// leases in Redis, the worker heartbeat, and a vacuum of finished jobs every minute (apalis keeps
/// them forever). See docs/apalis-redis.md for the apalis-redis behaviour this works around.
struct Housekeeping {
    /// The apalis name of the job loop running now, whose metadata must expire if we die.
    current_loop: tokio::sync::watch::Receiver<String>,
    conn: ConnectionManager,
    slots: RedisSlotLimiter,
    name: String,
    every: Duration,
}

impl Housekeeping {
    async fn run(self, shutdown: CancellationToken) {
        let mut ticker = tokio::time::interval(self.every);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut rounds = 0u32;
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                () = shutdown.cancelled() => return,
            }
            self.run_once().await;
            rounds += 1;
            if rounds.is_multiple_of(VACUUM_EVERY_ROUNDS) {
                match queue::vacuum_done(&self.conn).await {
                    Ok(n) => tracing::debug!(removed = n, "vacuumed finished jobs"),
                    Err(e) => tracing::warn!(error = %e, "vacuum of finished jobs failed; retried next minute"),
                }
            }
        }
    }

    /// One round of every duty but the vacuum; each failure is logged and retried next round.
    async fn run_once(&self) {
        if let Err(e) = queue::promote_due(&self.conn).await {
            tracing::debug!(error = %e, "cannot move due jobs to the ready list");
        }
        let config = queue::config();
        let depth: Result<(u64, u64), _> =
            redis::pipe().llen(config.active_jobs_list()).zcard(config.scheduled_jobs_set()).query_async(&mut self.conn.clone()).await;
        if let Ok((ready, scheduled)) = depth {
            metrics::gauge!(m::QUEUE_READY_JOBS).set(ready as f64);
            metrics::gauge!(m::QUEUE_SCHEDULED_JOBS).set(scheduled as f64);
        }
        match self.slots.occupancy().await {
            Ok((in_use, limit)) => projector_shared::slots::record_occupancy(in_use, limit.unwrap_or(self.slots.limit())),
            Err(e) => tracing::debug!(error = %e, "cannot read slot occupancy"),
        }
        if let Err(e) = projector_shared::heartbeat::beat(&self.conn, &self.name).await {
            tracing::debug!(error = %e, "cannot write the worker heartbeat");
        }
        let current = self.current_loop.borrow().clone();
        if let Err(e) = queue::expire_worker(&self.conn, &current, projector_shared::heartbeat::ALIVE_WITHIN * 4).await {
            tracing::debug!(error = %e, "cannot refresh the job loop's metadata expiry");
        }
    }
}
