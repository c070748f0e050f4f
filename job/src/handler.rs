//! One job to one recorded outcome, the same in both modes (the worker process and the embedded
//! run): decode, admit by the run ledger, route by the rollout flag, run the pipeline, reschedule
//! a slot timeout if configured, record the outcome.

use std::sync::Arc;
use std::time::{Duration, Instant};

use apalis::prelude::{BoxDynError, Data, Task, TaskBuilder};
use futures::channel::mpsc::UnboundedSender;
use projector_config::{Config, OnSlotTimeout};
use projector_queue as queue;
use projector_shared::SpikeProjectionJob;
use projector_shared::backoff::{Backoff, plus_jitter};
use projector_shared::events::CancelWatch;
use projector_shared::metrics as m;
use projector_shared::redis_conn::RedisConn;
use projector_shared::rollout::{Rollout, Route};
use projector_shared::run::{Admission, Outcome, Recorded, RunLedger};
use projector_shared::trail::{Attempt, Step, Why};
use tokio::sync::RwLock;
use tracing::Instrument;

use crate::error::Error;
use crate::pipeline::{Ended, Pipeline};

/// Which path an org takes: the limited one (a slot first) or the legacy unlimited one.
pub enum Routing {
    /// Every org takes a slot first (the embedded run, which has no flag store).
    AllLimited,
    /// The rollout flag (in Redis or the SQLite file) decides per org; unset or unreadable means
    /// limited.
    Flag(Box<RolloutFlag>),
}

impl Routing {
    /// The path `job` takes, and why.
    async fn route(&self, job: &SpikeProjectionJob) -> Route {
        match self {
            Routing::AllLimited => Route::Limited("embedded run".to_owned()),
            Routing::Flag(flag) => flag.route(job).await,
        }
    }
}

/// The rollout flag, re-read from where the fleet keeps it at most every `refresh`.
pub struct RolloutFlag {
    store: FlagStore,
    cached: RwLock<(Option<Instant>, Rollout)>,
    refresh: Duration,
}

/// Where the fleet keeps the rollout flag.
enum FlagStore {
    Redis(RedisConn),
    Sqlite(projector_shared::run_sqlite::SqliteRuns),
}

impl RolloutFlag {
    pub fn new(conn: RedisConn, refresh: Duration) -> Self {
        RolloutFlag { store: FlagStore::Redis(conn), cached: RwLock::new((None, Rollout::default())), refresh }
    }

    /// The flag in one machine's SQLite file.
    pub fn on_file(runs: projector_shared::run_sqlite::SqliteRuns, refresh: Duration) -> Self {
        RolloutFlag { store: FlagStore::Sqlite(runs), cached: RwLock::new((None, Rollout::default())), refresh }
    }

    async fn load(&self) -> Result<Rollout, projector_shared::Error> {
        match &self.store {
            FlagStore::Redis(conn) => Ok(Rollout::load(&mut conn.clone()).await?),
            FlagStore::Sqlite(runs) => Ok(runs.rollout().await?),
        }
    }

    async fn route(&self, job: &SpikeProjectionJob) -> Route {
        let fresh = |cached: &(Option<Instant>, Rollout)| cached.0.is_some_and(|at| at.elapsed() < self.refresh);
        {
            let cached = self.cached.read().await;
            if fresh(&cached) {
                return cached.1.route(job.org_id);
            }
        }
        let mut cached = self.cached.write().await;
        // Jobs that queued for the write lock find the flag already re-read by the first of them.
        if fresh(&cached) {
            return cached.1.route(job.org_id);
        }
        match self.load().await {
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
        cached.1.route(job.org_id)
    }
}

/// Where a job goes back to when a try ends in a way that may pass: the worker's Redis queue, or
/// the embedded run's in-memory one.
pub enum Requeue {
    /// A delayed task in the shared queue, due after the backoff.
    Redis {
        conn: RedisConn,
        /// `runs.dedup_window`: how long the run's dedupe set keeps the rescheduled job's member.
        dedup_window: Duration,
    },
    /// The embedded run's queue: the job is sent again once its backoff has passed. The run waits
    /// for every org's outcome, so a job on its way back keeps the run open.
    Memory(UnboundedSender<Task<serde_json::Value>>),
    /// The queue in one machine's SQLite file, due after the backoff.
    Sqlite(queue::sqlite::SqliteQueue),
}

/// A try that may pass later (a refusal, a transient failure, with `slots.on_timeout =
/// "reschedule"` a slot timeout) goes back to the queue after a jittered backoff instead of
/// becoming the org's outcome, within `runs.max_attempts` tries and the run's deadline.
pub struct Rescheduler {
    pub requeue: Requeue,
    pub max_reschedules: u32,
    /// `runs.max_attempts`: tries of an org whose try failed in a way that may pass.
    pub max_attempts: u32,
}

impl Rescheduler {
    /// From config: every worker has one (a per-org 429 is always tried again later); slot
    /// timeouts use it only with `slots.on_timeout = "reschedule"` ([`reschedules_skips`]).
    pub fn from_config(config: &Config, conn: &RedisConn) -> Self {
        Self::with(config, Requeue::Redis { conn: conn.clone(), dedup_window: config.runs.dedup_window })
    }

    /// From config, going back to `requeue`.
    pub fn with(config: &Config, requeue: Requeue) -> Self {
        Rescheduler { requeue, max_reschedules: config.slots.max_reschedules, max_attempts: config.runs.max_attempts }
    }
}

/// Whether slot timeouts and rate refusals go back to the queue (`slots.on_timeout = "reschedule"`).
pub fn reschedules_skips(config: &Config) -> bool {
    config.slots.on_timeout == OnSlotTimeout::Reschedule
}

impl Rescheduler {
    /// Puts the job back: at `retry_after` (rounded up to the second) when the rate policy named
    /// one, else after a jittered exponential backoff.
    async fn reschedule(&self, job: &SpikeProjectionJob, retry_after: Option<Duration>, last_try: Option<String>) -> Result<(), Error> {
        let next = job.next_try(last_try);
        let backoff = retry_after.unwrap_or_else(|| {
            plus_jitter(Backoff::new(Duration::from_secs(1), Duration::from_secs(64)).nth(next.reschedules), Duration::from_secs(2))
        });
        match &self.requeue {
            Requeue::Redis { conn, dedup_window } => {
                let backoff = backoff.as_secs() + u64::from(backoff.subsec_nanos() > 0);
                let run_at = chrono::Utc::now().timestamp().max(0) as u64 + backoff;
                // The reschedule's own dedupe member (`<org>:r<n>`): not a duplicate of the job it follows.
                let task = queue::task(&next, run_at);
                queue::push(conn, &job.run_id, &[task], *dedup_window)
                    .await
                    .map(|_| ())
                    .map_err(|e| Error::Shared(projector_shared::Error::redis(format!("rescheduling org {}", job.org_id))(e)))
            }
            Requeue::Sqlite(queue) => {
                let backoff = backoff.as_secs() + u64::from(backoff.subsec_nanos() > 0);
                let run_at = chrono::Utc::now().timestamp().max(0) as u64 + backoff;
                // A file that may heal (a full disk, a long lock) is waited for until the run's
                // deadline: the next write there, the record of this try as an outcome, would
                // otherwise land as soon as it heals, and a try that may pass is not an outcome.
                let mut pause = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
                loop {
                    match queue.push(&[(next.clone(), run_at)]).await {
                        Ok(_) => return Ok(()),
                        Err(e) if e.is_retryable() && job.deadline.is_some_and(|d| chrono::Utc::now() < d) => {
                            tracing::warn!(error = %e, "cannot put the job back in the SQLite queue yet; trying again");
                            tokio::time::sleep(pause.next_pause()).await;
                        }
                        Err(e) => return Err(Error::Shared(e.into())),
                    }
                }
            }
            Requeue::Memory(queue) => {
                let payload = next.to_payload();
                let queue = queue.clone();
                let org_id = job.org_id;
                tokio::spawn(async move {
                    tokio::time::sleep(backoff).await;
                    // Closed: the run is over (Ctrl-C), and it accounts only for the orgs that ended.
                    if queue.unbounded_send(TaskBuilder::new(payload).build()).is_err() {
                        tracing::debug!(org_id = %org_id, "the run ended before this org's next try");
                    }
                });
                Ok(())
            }
        }
    }
}

/// Waits of one org for a refusal to pass, when its run has a deadline: the deadline is the
/// real bound; this only stops a loop should retry_after ever be 0.
const MAX_REFUSAL_WAITS: u32 = 1_000;

/// Jobs being handled now; the drain on SIGTERM waits for this to reach 0.
#[derive(Clone)]
pub struct RunningJobs(tokio::sync::watch::Sender<usize>);

/// One job being handled; dropping it ends the count.
struct RunningJob(tokio::sync::watch::Sender<usize>);

impl RunningJobs {
    fn enter(&self) -> RunningJob {
        self.0.send_modify(|n| *n += 1);
        RunningJob(self.0.clone())
    }

    pub fn now(&self) -> usize {
        *self.0.borrow()
    }

    /// Resolves when no job is being handled.
    pub async fn none(&self) {
        let mut running = self.0.subscribe();
        let _ = running.wait_for(|n| *n == 0).await;
    }
}

impl Drop for RunningJob {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// Everything a job needs, shared by every job of one process.
pub struct JobHandler {
    pub pipeline: Pipeline,
    pub ledger: Arc<dyn RunLedger>,
    pub routing: Routing,
    pub rescheduler: Option<Rescheduler>,
    /// Slot timeouts and rate refusals go back to the queue (`slots.on_timeout = "reschedule"`).
    pub reschedule_skips: bool,
    pub running: RunningJobs,
    /// The fleet's cancelled runs, mirrored (worker only); without it, the ledger is asked.
    pub cancels: Option<CancelWatch>,
}

impl JobHandler {
    pub fn new(pipeline: Pipeline, ledger: Arc<dyn RunLedger>, routing: Routing, rescheduler: Option<Rescheduler>) -> Self {
        JobHandler {
            pipeline,
            ledger,
            routing,
            rescheduler,
            reschedule_skips: false,
            running: RunningJobs(tokio::sync::watch::Sender::new(0)),
            cancels: None,
        }
    }

    /// Slot timeouts and rate refusals go back to the queue too (`slots.on_timeout = "reschedule"`).
    pub fn rescheduling_skips(self, yes: bool) -> Self {
        JobHandler { reschedule_skips: yes, ..self }
    }

    /// Answers "cancelled?" from `cancels` while it is live, without a round trip to Redis.
    pub fn with_cancel_watch(self, cancels: CancelWatch) -> Self {
        JobHandler { cancels: Some(cancels), ..self }
    }

    /// One queue payload to one recorded outcome. `Err` only when the outcome could not be
    /// recorded, so the queue keeps the job and it is tried again (the ledger then avoids a re-query).
    /// Every line the job logs is inside one `job` span carrying its run, org and attempt.
    pub async fn handle_payload(&self, payload: serde_json::Value) -> Result<(), Error> {
        let _running = self.running.enter();
        match SpikeProjectionJob::decode(&payload) {
            Ok(job) => {
                let span = tracing::info_span!("job", run_id = %job.run_id, org_id = %job.org_id, attempt = job.attempt);
                self.handle(&job).instrument(span).await
            }
            Err(e) => {
                self.malformed(&payload, e).await;
                Ok(())
            }
        }
    }

    async fn handle(&self, job: &SpikeProjectionJob) -> Result<(), Error> {
        match self.ledger.outcome_of(&job.run_id, job.org_id, job.attempt).await {
            Ok(Admission::Open) => {}
            Ok(Admission::Accounted(outcome)) => {
                tracing::info!(outcome = outcome.as_str(), "duplicate delivery; already accounted for");
                return Ok(());
            }
            Ok(Admission::Superseded) => {
                tracing::info!("a later attempt owns this org (runs retry); dropped");
                return Ok(());
            }
            Ok(refused @ (Admission::UnknownRun | Admission::NotPlanned)) => {
                let (reason, why) = match refused {
                    Admission::UnknownRun => ("unknown_run", "its run does not exist (expired, or never created)"),
                    _ => ("not_planned", "its org is not in the run's plan"),
                };
                metrics::counter!(m::TASK_ERROR_TOTAL, "reason" => reason).increment(1);
                tracing::warn!(reason, "job refused without a query: {why}");
                return Ok(());
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot check the run record; running the job")
            }
        }
        let route = self.routing.route(job).await;
        let mut ended = match &route {
            Route::Limited(_) => {
                let gate = RunGate { ledger: self.ledger.as_ref(), cancels: self.cancels.as_ref() };
                self.pipeline.run_checked(job, Some(&gate)).await
            }
            Route::Legacy(_) => self.pipeline.process_unlimited(job).await,
        };
        let limited = route.is_limited();
        ended.steps.insert(0, Step::Routed { limited, why: route.why().to_owned() });
        if job.reschedules > 0 {
            ended.steps.insert(0, Step::Rescheduled { times: job.reschedules, last: None, tries: job.earlier_tries() });
        }
        if ended.stale {
            return Ok(());
        }
        let outcome = ended.outcome;
        if let Some(rescheduler) = &self.rescheduler
            && let Some(last_try) = self.next_try(rescheduler, job, &mut ended, limited)
        {
            match rescheduler.reschedule(job, ended.retry_after, last_try).await {
                Ok(()) => {
                    tracing::info!(reschedules = job.reschedules + 1, skipped = outcome.as_str(), "job rescheduled");
                    return Ok(());
                }
                Err(e) => {
                    tracing::warn!(error = %e, outcome = outcome.as_str(), "cannot reschedule; recording the skip")
                }
            }
        }
        let attempt = ended.attempt(job, &self.pipeline.settings.holder);
        match self.ledger.record(&job.run_id, job.org_id, &attempt).await {
            Ok(Recorded::FinishedTheRun) => self.log_run_finished(&job.run_id).await,
            Ok(Recorded::Recorded | Recorded::AlreadyAccounted) => {}
            Ok(Recorded::UnknownRun | Recorded::NotPlanned) => {
                tracing::warn!("outcome not recorded: the run or its plan is gone (expired or reset)");
            }
            Err(e) => {
                tracing::error!(outcome = outcome.as_str(), error = %e, "cannot record the outcome; the job will be tried again");
                return Err(e.into());
            }
        }
        if let Some(reason) = &ended.stop_run {
            self.stop_run(&job.run_id, reason).await;
        }
        Ok(())
    }

    /// After this org's own outcome is recorded: ends the run's other open orgs as failed, with
    /// a reason that points at the refused query, so no other worker sends it again.
    async fn stop_run(&self, run_id: &projector_shared::RunId, reason: &str) {
        let why = Why::new("run_stopped", format!("not queried: the run stopped because {reason}"));
        match self.ledger.stop(run_id, &why).await {
            Ok(n) => tracing::error!(run_id = %run_id, orgs = n, reason, "run stopped: its open orgs end failed without a query"),
            Err(e) => {
                tracing::warn!(run_id = %run_id, error = %e, "cannot stop the run in its record; this worker fails its orgs without a query")
            }
        }
    }

    /// Whether this try's end goes back to the queue instead of being the org's outcome, and what
    /// the next try's trail says of it. A refusal (a 429, the rate policy) waits as long as the
    /// run's deadline leaves time; a failure that may pass gets `runs.max_attempts` tries; a slot
    /// timeout goes back only with `slots.on_timeout = "reschedule"`. Nothing goes back past the
    /// deadline: then the reason says so. The legacy path keeps its one try.
    fn next_try(&self, rescheduler: &Rescheduler, job: &SpikeProjectionJob, ended: &mut Ended, limited: bool) -> Option<Option<String>> {
        let outcome = ended.outcome;
        let retry_after = ended.retry_after;
        let refused = matches!(outcome, Outcome::RateLimited | Outcome::SkippedRatePolicy) && retry_after.is_some();
        let failed = matches!(outcome, Outcome::Failed | Outcome::SlotUnavailable) && retry_after.is_some();
        let tries = job.reschedules + 1;
        let may = if refused && limited {
            // With no deadline (a job of an older fan-out), refusals fall back to the tries budget.
            if job.deadline.is_some() { tries < MAX_REFUSAL_WAITS } else { tries < rescheduler.max_attempts }
        } else if failed && limited {
            tries < rescheduler.max_attempts
        } else {
            self.reschedule_skips && outcome == Outcome::SkippedNoSlot && job.reschedules < rescheduler.max_reschedules
        };
        if !may {
            return None;
        }
        let comes_back = chrono::Utc::now() + retry_after.unwrap_or(Duration::from_secs(1));
        if job.deadline.is_some_and(|d| comes_back >= d) {
            if let Some(why) = &mut ended.why {
                *why = Why::new("deadline", format!("no time left before the run's deadline for another try; {}", why.message));
            }
            return None;
        }
        if !(refused || failed) {
            // A slot timeout's reschedule: the trail says only how many times.
            return Some(None);
        }
        let backoff = retry_after.map(|d| format!(" (tried again after {} ms)", d.as_millis())).unwrap_or_default();
        Some(ended.why.as_ref().map(|w| format!("{}: {}{backoff}", w.kind, w.message)))
    }

    /// One info line per run, written by whoever recorded its last org: per-org skips are logged
    /// at debug only, so this line is where a run's skips show up in the log.
    async fn log_run_finished(&self, run_id: &projector_shared::RunId) {
        match self.ledger.summary(run_id).await {
            Ok(Some(s)) => tracing::info!(
                run_id = %run_id, orgs = s.orgs_total, outcomes = %s.outcomes, "run finished"
            ),
            Ok(None) | Err(_) => tracing::info!(run_id = %run_id, "run finished (totals: projectorctl run {run_id})"),
        }
    }

    /// A job that cannot be read: counted, logged with a sample, and recorded as failed when its
    /// run and org can still be made out, so the run accounts for it. It is never retried.
    async fn malformed(&self, payload: &serde_json::Value, e: projector_core::Error) {
        metrics::counter!(m::TASK_ERROR_TOTAL, "reason" => "malformed_job").increment(1);
        tracing::error!(error = %e, "malformed spike-projection job; dropped");
        let run = payload.get("run_id").and_then(|v| v.as_str()).map(|r| projector_shared::RunId(r.to_owned()));
        let org = payload.get("org_id").and_then(|v| v.as_u64()).map(projector_shared::OrgId);
        if let (Some(run), Some(org)) = (run, org) {
            let mut attempt = Attempt::bare(Outcome::Failed);
            attempt.why = Some(Why::new("malformed_job", e.to_string()));
            attempt.attempt = payload.get("attempt").and_then(|v| v.as_u64()).and_then(|n| u32::try_from(n).ok()).unwrap_or(0);
            match self.ledger.record(&run, org, &attempt).await {
                Ok(Recorded::UnknownRun | Recorded::NotPlanned) => {
                    tracing::warn!(run_id = %run, org_id = %org, "the malformed job names a run or org that was never planned; not recorded");
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(run_id = %run, org_id = %org, error = %e, "cannot record the malformed job as failed"),
            }
        }
    }
}

/// What the pipeline asks once a slot is granted: whether the run still wants this org. The
/// handler lends it its ledger and cancel mirror, so the pipeline never calls back into the
/// handler.
struct RunGate<'a> {
    ledger: &'a dyn RunLedger,
    cancels: Option<&'a CancelWatch>,
}

impl crate::pipeline::StillOpen for RunGate<'_> {
    fn still_open<'a>(&'a self, job: &'a SpikeProjectionJob) -> futures::future::BoxFuture<'a, bool> {
        Box::pin(async move {
            if let Some(cancelled) = self.cancels.and_then(|c| c.is_cancelled(&job.run_id)) {
                return !cancelled;
            }
            // Unsure (the record cannot be read): the admission already let it in; let it run.
            !matches!(self.ledger.outcome_of(&job.run_id, job.org_id, job.attempt).await, Ok(a) if a != Admission::Open)
        })
    }
}

/// The apalis handler both modes register: the job loop hands each payload to the `JobHandler`.
pub async fn run_job(payload: serde_json::Value, handler: Data<Arc<JobHandler>>) -> Result<(), BoxDynError> {
    handler.handle_payload(payload).await.map_err(|e| Box::new(e) as BoxDynError)
}
