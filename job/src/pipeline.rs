//! One job, start to end: slot (bounded wait) → rate admission (bounded delay) → query →
//! release → projection → store → outcome.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use projector_shared::SpikeProjectionJob;
use projector_shared::adaptive::SIGNALS;
use projector_shared::metrics as m;
use projector_shared::projection::{HISTORY_HOURS, Projection};
use projector_shared::rate::{Pass, RateGate};
use projector_shared::run::Outcome;
use projector_shared::slots::{Acquire, SlotLimiter, SlotPermit, SlotRequest};
use projector_shared::trail::{Attempt, Step, Why};
use projector_shared::{ProjectId, RunId};

use crate::error::Error;
use crate::history::Fold;
use crate::probe::QueryProbe;
use crate::query::{HistoryPlan, QuerySource};
use crate::sink::{ProjectionRecord, ProjectionSink};

/// Settings of the pipeline, taken from `slots.*` and the process identity.
#[derive(Debug, Clone)]
pub struct PipelineSettings {
    /// This worker's name, stored with every lease.
    pub holder: String,
    pub max_wait: Duration,
    /// `query.max_duration`: how long the service counts a query after it starts there.
    pub query_max_duration: Duration,
    /// `query.timeout`: the client gives up on a query this long after sending it, so a query
    /// not answered reached the service by then or never did.
    pub query_timeout: Duration,
    /// `query.page_rows`: rows per page (at most 10,000, Snuba's largest LIMIT).
    pub page_rows: usize,
}

/// Runs this process stopped because the query service refused the query itself (a 400): their
/// other orgs end `failed` without a query. Shared by every job of the process.
#[derive(Debug, Default)]
pub struct StoppedRuns(std::sync::Mutex<std::collections::HashMap<RunId, String>>);

impl StoppedRuns {
    /// Why `run` was stopped, if it was.
    pub fn reason(&self, run: &RunId) -> Option<String> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).get(run).cloned()
    }

    /// Stops `run`; true for the first stop of it (the one that logs and counts).
    fn stop(&self, run: &RunId, reason: &str) -> bool {
        let mut runs = self.0.lock().unwrap_or_else(|p| p.into_inner());
        // Bounded: a process sees a handful of runs a day; an old entry only costs its bytes.
        if runs.len() > 1_000 {
            runs.clear();
        }
        runs.insert(run.clone(), reason.to_owned()).is_none()
    }
}

/// Everything a job needs, shared by all jobs of a process.
#[derive(Clone)]
pub struct Pipeline {
    pub limiter: Arc<dyn SlotLimiter>,
    pub query: Arc<dyn QuerySource>,
    pub sink: Arc<dyn ProjectionSink>,
    pub probe: QueryProbe,
    /// The rate policy on query starts (`[rate]`), when one is configured.
    pub rate: Option<RateGate>,
    pub settings: PipelineSettings,
    pub stopped: Arc<StoppedRuns>,
}

/// How a job ended: its outcome, when a retry could be admitted (rate policy refusals), why it
/// did not complete, and the steps on the way (the org's trail in the run record).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ended {
    pub outcome: Outcome,
    pub retry_after: Option<Duration>,
    pub why: Option<Why>,
    pub steps: Vec<Step>,
    /// The org was accounted for (a cancelled run, a later attempt) while this job waited for its
    /// slot: nothing was queried and there is nothing to record.
    pub stale: bool,
    /// The service refused the query itself: the whole run stops, for this reason.
    pub stop_run: Option<String>,
}

impl From<Outcome> for Ended {
    fn from(outcome: Outcome) -> Self {
        Ended { outcome, retry_after: None, why: None, steps: Vec::new(), stale: false, stop_run: None }
    }
}

impl Ended {
    /// The attempt to record: this outcome, its reason and steps, run by `worker`.
    pub fn attempt(&self, job: &SpikeProjectionJob, worker: &str) -> Attempt {
        Attempt { attempt: job.attempt, outcome: self.outcome, worker: worker.to_owned(), why: self.why.clone(), steps: self.steps.clone() }
    }
}

/// Asked once a job's slot is granted: whether its org may still be queried (its run was not
/// cancelled meanwhile). The job handler answers from the workers' cancel mirror, or the run record.
pub trait StillOpen: Send + Sync {
    fn still_open<'a>(&'a self, job: &'a SpikeProjectionJob) -> futures::future::BoxFuture<'a, bool>;
}

/// Gives the slot back; a failure is only logged, since the lease expires on its own.
async fn release(permit: SlotPermit) {
    if let Err(e) = permit.release().await {
        tracing::warn!(error = %e, "slot release failed");
    }
}

/// Logs once per new value when the service's limit for the referrer is below the slot limit in
/// force: the fleet would then meet 429s before its slots run out (`projectorctl status` and
/// the page say the same, with what to do).
fn warn_if_below_limit(q: projector_shared::service::ServiceQuota, in_force: u32) {
    static WARNED_AT: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(i64::MIN);
    if q.rejection_threshold >= i64::from(in_force) {
        return;
    }
    if WARNED_AT.swap(q.rejection_threshold, std::sync::atomic::Ordering::Relaxed) != q.rejection_threshold {
        tracing::warn!(
            service_limit = q.rejection_threshold,
            slot_limit = in_force,
            "the query service admits fewer queries for this referrer than the slots in force; lower the limit with `projectorctl slots set-limit {}`",
            q.rejection_threshold
        );
    }
}

/// The advice for a referrer refusal of an org on the legacy path, which takes no slot.
const LEGACY_ADVICE: &str = "this org is on the legacy path (rollout flag) and takes no slot, so slots.limit does not bound it; put it on the limited path with `projectorctl flag`";

/// Snuba's bytes-scanned window (`BytesScannedWindowAllocationPolicy.WINDOW_SECONDS`): an org
/// over its byte budget is tried again once the window has moved past its scans.
const BYTES_POLICY_WINDOW: Duration = Duration::from_secs(600);

/// When a try that did not end the org may be tried again: a per-org concurrency 429 after a
/// short jittered exponential backoff (its other queries end in seconds), a bytes 429 after the
/// policy's window, and a failure that may pass (a 5xx, a timeout, ClickHouse overloaded, a
/// referrer 429, the service or a store unreachable, a lost lease) after a jittered exponential
/// backoff from 1 s, at most 30 s. `None` for what would fail again the same way.
fn retry_after(e: &Error, reschedules: u32) -> Option<Duration> {
    use crate::error::RejectionClass;
    use projector_shared::backoff::{Backoff, equal_jitter, plus_jitter};
    const SECOND: Duration = Duration::from_secs(1);
    let backoff = || equal_jitter(Backoff::new(SECOND, Duration::from_secs(30)).nth(reschedules));
    match e {
        Error::RateLimited { class: RejectionClass::Tenant, .. } => {
            Some(plus_jitter(Backoff::new(SECOND, Duration::from_secs(32)).nth(reschedules), SECOND))
        }
        Error::RateLimited { class: RejectionClass::Bytes, .. } => Some(plus_jitter(BYTES_POLICY_WINDOW, Duration::from_secs(60))),
        Error::RateLimited { class: RejectionClass::Referrer, .. }
        | Error::QueryServer { .. }
        | Error::QueryTimeout(_)
        | Error::ServiceTimeout { .. }
        | Error::ServiceOverloaded { .. }
        | Error::QueryUnreachable { .. }
        | Error::Sink { .. }
        | Error::Incomplete { .. }
        | Error::LeaseLost
        | Error::Shared(projector_shared::Error::Limits(projector_shared::LimitsError::SlotBackendUnavailable { .. })) => Some(backoff()),
        _ => None,
    }
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Pipeline {
    /// The one way both the worker and the embedded run assemble a pipeline: the parts that
    /// differ between them (slot limiter, sink, rate gate) are given; the rest comes from config.
    pub fn from_config(
        config: &projector_config::Config,
        holder: String,
        limiter: Arc<dyn SlotLimiter>,
        sink: Arc<dyn ProjectionSink>,
        rate: Option<RateGate>,
    ) -> Result<Pipeline, Error> {
        Ok(Pipeline {
            limiter,
            query: crate::build::query_source(config)?,
            sink,
            probe: QueryProbe::default(),
            rate,
            settings: PipelineSettings {
                holder,
                max_wait: config.slots.max_wait,
                query_max_duration: config.query.max_duration(),
                query_timeout: config.query.timeout,
                page_rows: config.query.page_rows,
            },
            stopped: Default::default(),
        })
    }

    /// Runs one job on the legacy path: no slot, as before the rollout. Only for organizations an
    /// operator excluded from the rate-limit flag; its writes carry fencing token 0 (unfenced).
    pub async fn process_unlimited(&self, job: &SpikeProjectionJob) -> Ended {
        metrics::counter!(m::TASK_STARTED_TOTAL).increment(1);
        let mut steps = Vec::new();
        if let Some(reason) = self.stopped.reason(&job.run_id) {
            return self.finish(job, Err(Error::RunStopped { reason }), steps);
        }
        let stored = match self.query(job, None, &mut steps).await {
            Ok((first_hour, projections)) => self.store(job, first_hour, projections, 0, &mut steps).await,
            Err(e) => Err(e),
        };
        let mut ended = self.finish(job, stored, steps);
        // No slot limit bounds this org's query: advice to lower it would not help it.
        if let Some(why) = ended.why.as_mut().filter(|w| w.advice.contains("slots.limit")) {
            why.advice = LEGACY_ADVICE.to_owned();
        }
        ended
    }

    /// Runs one job to its outcome. Never panics on bad input; every path is logged and counted.
    pub async fn process(&self, job: &SpikeProjectionJob) -> Outcome {
        self.run(job).await.outcome
    }

    /// Runs one job to its end: the outcome, and for a rate refusal when to try again.
    pub async fn run(&self, job: &SpikeProjectionJob) -> Ended {
        self.run_checked(job, None).await
    }

    /// [`Pipeline::run`], asking `gate` once the slot is granted whether the org may still be
    /// queried: a run cancelled during the slot wait sends no query.
    pub async fn run_checked(&self, job: &SpikeProjectionJob, gate: Option<&dyn StillOpen>) -> Ended {
        metrics::counter!(m::TASK_STARTED_TOTAL).increment(1);
        let mut steps = Vec::new();
        if let Some(reason) = self.stopped.reason(&job.run_id) {
            return self.finish(job, Err(Error::RunStopped { reason }), steps);
        }
        let permit = match self.take_slot(job, &mut steps).await {
            Ok(permit) => permit,
            Err(ended) => return *ended,
        };
        let token = permit.fencing_token();
        if let Some(gate) = gate
            && !gate.still_open(job).await
        {
            tracing::info!("run cancelled during the slot wait; no query");
            release(permit).await;
            return Ended { stale: true, steps, ..Outcome::Cancelled.into() };
        }
        // The rate admission comes after the slot, so a query starts the moment its admission is
        // due: admitted starts cannot bunch up behind a slot wait (docs/limits.md, "Rate policies").
        // A refusal drops the permit, which gives the slot back.
        if let Some(ended) = self.admit_start(job, &mut steps).await {
            return *ended;
        }
        let queried = self.query(job, Some(&permit), &mut steps).await;
        self.give_back(&queried, permit).await;
        let stored = match queried {
            Ok((first_hour, projections)) => self.store(job, first_hour, projections, token, &mut steps).await,
            Err(e) => Err(e),
        };
        self.finish(job, stored, steps)
    }

    /// Waits for a slot, at most `slots.max_wait`: the permit, or how the job ended without one.
    async fn take_slot(&self, job: &SpikeProjectionJob, steps: &mut Vec<Step>) -> Result<SlotPermit, Box<Ended>> {
        // The query starts at most rate.max_delay after the grant: the lease must outlive a
        // paused holder until the query must have ended at the service.
        let rate_delay = self.rate.as_ref().map_or(Duration::ZERO, RateGate::max_delay);
        let request = SlotRequest {
            holder: self.settings.holder.clone(),
            org_id: job.org_id,
            query_max_duration: Some(self.settings.query_max_duration + rate_delay),
        };
        let waiting = Instant::now();
        match self.limiter.acquire(request, self.settings.max_wait).await {
            Ok(Acquire::Granted(permit)) => {
                steps.push(Step::Slot {
                    granted: true,
                    waited_ms: ms(waiting.elapsed()),
                    token: Some(permit.fencing_token()),
                    in_use: None,
                    limit: None,
                    queue_position: None,
                });
                Ok(permit)
            }
            Ok(Acquire::TimedOut(t)) => {
                // One line per org would flood the log when the limit is too low; the run's summary
                // and run_spike_projection_skipped_no_slot_total carry the count.
                tracing::debug!(
                    waited_ms = t.waited.as_millis() as u64,
                    in_use = t.in_use,
                    limit = t.limit,
                    queue_position = t.queue_position,
                    "no slot within slots.max_wait; job skipped"
                );
                metrics::counter!(m::TASK_SKIPPED_NO_SLOT_TOTAL).increment(1);
                steps.push(Step::Slot {
                    granted: false,
                    waited_ms: ms(t.waited),
                    token: None,
                    in_use: Some(t.in_use),
                    limit: Some(t.limit),
                    queue_position: Some(t.queue_position),
                });
                let why = Why::new("no_slot", format!("no slot within slots.max_wait ({} of {} held)", t.in_use, t.limit));
                Err(Box::new(Ended { why: Some(why), steps: std::mem::take(steps), ..Outcome::SkippedNoSlot.into() }))
            }
            Err(e) => Err(Box::new(self.finish(job, Err(Error::from(e)), std::mem::take(steps)))),
        }
    }

    /// Asks the rate policy for the query's start: `None` to go on, or how the job ended.
    async fn admit_start(&self, job: &SpikeProjectionJob, steps: &mut Vec<Step>) -> Option<Box<Ended>> {
        let rate = self.rate.as_ref()?;
        match rate.pass().await {
            // Without a policy or a cooldown nothing was asked: no step to tell.
            Ok(Pass::Go) if !rate.is_in_force() => None,
            Ok(Pass::Go) => {
                steps.push(Step::Rate { admitted: true, reason: None, retry_after_ms: None });
                None
            }
            Ok(Pass::Refused { retry_after, reason }) => {
                tracing::debug!(
                    reason = reason.as_str(),
                    retry_after_ms = retry_after.as_millis() as u64,
                    "no rate admission within rate.max_delay; job skipped"
                );
                steps.push(Step::Rate { admitted: false, reason: Some(reason.as_str().to_owned()), retry_after_ms: Some(ms(retry_after)) });
                let why = Why::new(reason.as_str(), format!("no rate admission within rate.max_delay; retry after {} ms", ms(retry_after)));
                let steps = std::mem::take(steps);
                Some(Box::new(Ended { retry_after: Some(retry_after), why: Some(why), steps, ..Outcome::SkippedRatePolicy.into() }))
            }
            Err(e) => {
                let unavailable = projector_shared::Error::Limits(projector_shared::LimitsError::SlotBackendUnavailable {
                    detail: format!("rate policy: {e}"),
                });
                Some(Box::new(self.finish(job, Err(Error::from(unavailable)), std::mem::take(steps))))
            }
        }
    }

    /// After the query: a referrer 429 lowers the fleet's limit (and starts a cooldown) before
    /// the slot goes back; an abandoned query keeps its slot until the service must have ended it.
    async fn give_back<T>(&self, queried: &Result<T, Error>, permit: SlotPermit) {
        if let Err(Error::RateLimited { class: crate::error::RejectionClass::Referrer, service, .. }) = queried {
            if let Some(q) = service {
                // Before the slot goes back: the lowered limit keeps it from the next waiter while
                // the fleet is over what the service admits.
                self.heard_service(**q, true, Duration::ZERO).await;
            }
            if let Some(rate) = &self.rate {
                rate.saw_429().await;
                // The cooldown also holds slot grants, before this slot goes back: jobs waiting for
                // a slot keep their place in line rather than meet the rate gate's refusal.
                if !rate.cooldown().is_zero()
                    && let Err(e) = self.limiter.pause_grants(rate.cooldown()).await
                {
                    tracing::debug!(error = %e, "cannot pause slot grants for the cooldown");
                }
            }
        }
        // The slot guards the query service only: it goes back before the store, so the next
        // query starts sooner (the fencing token still stamps the write). A query abandoned
        // unanswered keeps it until the service must have ended it: the permit's own rule.
        release(permit).await;
    }

    /// The service's own numbers from an answer: they cap the fleet's limit at once (a limiter
    /// that follows them), and a limit above them is logged.
    async fn heard_service(&self, q: projector_shared::service::ServiceQuota, rejected: bool, age: Duration) {
        if let Err(e) = self.limiter.heard_service(q, rejected, age).await {
            tracing::debug!(error = %e, "cannot pass the query service's numbers to the slot limiter");
        }
        warn_if_below_limit(q, self.limiter.limit());
    }

    /// The end of a job that got as far as its query (or failed before it): completed, or the
    /// error's outcome with its reason.
    fn finish(&self, job: &SpikeProjectionJob, stored: Result<usize, Error>, steps: Vec<Step>) -> Ended {
        match stored {
            Ok(projects) => {
                tracing::debug!(projects, "projections stored");
                metrics::counter!(m::TASK_COMPLETED_TOTAL).increment(1);
                Ended { steps, ..Outcome::Completed.into() }
            }
            Err(e) => {
                let why = e.why();
                let stop_run = match &e {
                    Error::QueryRefused { .. } => {
                        let reason = e.to_string();
                        if self.stopped.stop(&job.run_id, &reason) {
                            metrics::counter!(m::RUN_STOPPED_TOTAL).increment(1);
                            tracing::error!(error = %e, "the query service refused the query itself; the run's other orgs end failed without a query");
                        }
                        Some(reason)
                    }
                    _ => None,
                };
                let retry_after = retry_after(&e, job.reschedules);
                Ended { why: Some(why), steps, stop_run, retry_after, ..self.failed(e).into() }
            }
        }
    }

    /// Reads the org's window page by page (projects in groups whose every hour fits a page, a
    /// group paged on only if a page comes back full) and folds each page into projections as it
    /// comes. Abandons the read if the permit's lease is lost; before each query after the first,
    /// and before the first when the first lease may not outlive it, the lease is stretched to
    /// cover it (its start + query.max_duration).
    async fn query(
        &self,
        job: &SpikeProjectionJob,
        permit: Option<&SlotPermit>,
        steps: &mut Vec<Step>,
    ) -> Result<(DateTime<Utc>, Vec<(ProjectId, Projection)>), Error> {
        // Projections start at the tick's hour; history is the three weeks before it.
        let first_hour = job.first_hour();
        let plan = HistoryPlan {
            org_id: job.org_id,
            project_ids: job.project_ids.clone(),
            end: first_hour,
            hours: HISTORY_HOURS,
            page_rows: self.settings.page_rows,
        };
        let mut fold = Fold::new(plan.start().timestamp().div_euclid(3600), plan.hours);
        let started = Instant::now();
        let (mut pages, mut throttled) = (0u32, false);
        let _in_flight = self.probe.enter();
        let read = async {
            for group in plan.groups() {
                let mut page = plan.first_page(group);
                loop {
                    // A later page, or a first one sent so long after the grant (the holder
                    // paused) that the first lease may not outlive it: the lease is stretched to
                    // cover the query first, and a lease that lapsed meanwhile sends nothing.
                    if let Some(p) = permit
                        && (pages > 0 || !p.covers(self.settings.query_max_duration))
                    {
                        p.cover(self.settings.query_max_duration).await.map_err(Error::from)?;
                    }
                    let one = Instant::now();
                    // From here until its answer the query counts at the service: the permit
                    // keeps the slot that long whatever becomes of this future.
                    let sent = permit.map(|p| p.query_sent(self.settings.query_timeout, self.settings.query_max_duration));
                    let answer = self.query.page(&page).await;
                    if let Some(sent) = sent
                        && answer.as_ref().err().is_none_or(|e| !e.query_may_still_run())
                    {
                        sent.answered();
                    }
                    metrics::histogram!(m::QUERY_DURATION_SECONDS).record(one.elapsed().as_secs_f64());
                    pages += 1;
                    let answer = answer?;
                    SIGNALS.ok();
                    throttled |= answer.throttled;
                    if let Some(q) = answer.quota {
                        self.heard_service(q, false, one.elapsed()).await;
                    }
                    fold.add(&answer.rows, group)?;
                    if answer.rows.len() < page.limit {
                        break;
                    }
                    page.offset += page.limit;
                }
                fold.end_group(group);
            }
            Ok::<(), Error>(())
        };
        let lease_lost = async {
            match permit {
                Some(p) => p.lost().await,
                None => std::future::pending().await,
            }
        };
        let result = tokio::select! {
            r = read => r,
            () = lease_lost => Err(Error::LeaseLost),
        };
        metrics::histogram!(m::QUERY_PAGES).record(f64::from(pages));
        let status = match &result {
            Ok(()) => "ok".to_owned(),
            Err(e) if pages > 1 => format!("{} (page {pages})", e.reason()),
            Err(e) => e.reason().to_owned(),
        };
        steps.push(Step::Query { status, ms: ms(started.elapsed()), throttled, pages });
        if let Err(Error::RateLimited { class: crate::error::RejectionClass::Referrer, .. } | Error::ServiceOverloaded { .. }) = &result {
            SIGNALS.rate_limited();
        }
        result?;
        Ok((first_hour, fold.into_projections()))
    }

    /// Stores the projections stamped with `token`.
    async fn store(
        &self,
        job: &SpikeProjectionJob,
        first_hour: DateTime<Utc>,
        projections: Vec<(ProjectId, Projection)>,
        token: u64,
        steps: &mut Vec<Step>,
    ) -> Result<usize, Error> {
        let records: Vec<ProjectionRecord> = projections
            .into_iter()
            .map(|(project_id, projection)| ProjectionRecord::new(&job.run_id, job.org_id, project_id, first_hour, projection, token))
            .collect();
        let projects = records.len();
        let writing = Instant::now();
        let written = self.sink.write(records).await;
        metrics::histogram!(m::SINK_WRITE_SECONDS).record(writing.elapsed().as_secs_f64());
        steps.push(Step::Store { ok: written.is_ok(), token, projects, ms: ms(writing.elapsed()) });
        written?;
        Ok(projects)
    }

    fn failed(&self, e: Error) -> Outcome {
        let reason = e.reason();
        metrics::counter!(m::TASK_ERROR_TOTAL, "reason" => reason).increment(1);
        crate::probe::note_error(reason, &e);
        tracing::error!(
            reason, retryable = e.is_retryable(), error = %e,
            "spike projection failed"
        );
        match e {
            Error::RateLimited { .. } => Outcome::RateLimited,
            Error::Shared(projector_shared::Error::Limits(projector_shared::LimitsError::SlotBackendUnavailable { .. })) => {
                Outcome::SlotUnavailable
            }
            _ => Outcome::Failed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::query::{Page, PageRequest, SyntheticQuery};
    use crate::sink::DiscardSink;
    use chrono::{TimeZone, Utc};
    use futures::future::BoxFuture;
    use projector_shared::slots::MemorySlotLimiter;
    use projector_shared::{OrgId, RunId};
    use std::sync::Mutex;

    #[derive(Default)]
    struct Recording(Mutex<Vec<ProjectionRecord>>);

    impl ProjectionSink for Recording {
        fn write(&self, records: Vec<ProjectionRecord>) -> BoxFuture<'_, Result<(), Error>> {
            self.0.lock().expect("lock").extend(records);
            Box::pin(async { Ok(()) })
        }
    }

    struct RateLimitedQuery;

    impl QuerySource for RateLimitedQuery {
        fn page<'a>(&'a self, _: &'a PageRequest) -> BoxFuture<'a, Result<Page, Error>> {
            Box::pin(async {
                Err(Error::RateLimited {
                    class: crate::error::RejectionClass::Referrer,
                    policy: "ReferrerGuardRailPolicy".into(),
                    quota_used: Some(101),
                    threshold: Some(100),
                    storage_key: None,
                    message: String::new(),
                    service: None,
                })
            })
        }
    }

    fn job(org: u64) -> SpikeProjectionJob {
        let at = Utc.with_ymd_and_hms(2026, 11, 22, 13, 17, 5).single().expect("valid");
        SpikeProjectionJob::planned(RunId("run-test".into()), OrgId(org), 0, at, vec![])
    }

    fn pipeline(limiter: MemorySlotLimiter, query: Arc<dyn QuerySource>, sink: Arc<dyn ProjectionSink>) -> Pipeline {
        Pipeline {
            limiter: Arc::new(limiter),
            query,
            sink,
            probe: QueryProbe::default(),
            rate: None,
            settings: PipelineSettings {
                holder: "test".into(),
                max_wait: Duration::from_millis(20),
                query_max_duration: Duration::from_secs(1),
                query_timeout: Duration::from_secs(1),
                page_rows: 10_000,
            },
            stopped: Default::default(),
        }
    }

    #[tokio::test]
    async fn a_job_stores_one_record_per_project_from_the_tick_hour() {
        let sink = Arc::new(Recording::default());
        let limiter = MemorySlotLimiter::new(2);
        let p = pipeline(limiter.clone(), Arc::new(SyntheticQuery { latency: Duration::ZERO }), sink.clone());
        assert_eq!(p.process(&job(7)).await, Outcome::Completed);
        let records = sink.0.lock().expect("lock").clone();
        let projects = projector_shared::synthetic::synthetic_projects(OrgId(7));
        assert_eq!(records.len(), projects.len());
        assert_eq!(records[0].first_hour, Utc.with_ymd_and_hms(2026, 11, 22, 13, 0, 0).single().expect("valid"));
        assert_eq!(records[0].hourly.len(), 24);
        assert!(records[0].fencing_token > 0);
        assert_eq!(limiter.in_use(), 0, "slot released");
        assert_eq!(p.probe.max(), 1);
    }

    #[tokio::test]
    async fn no_slot_means_skipped_without_a_query() {
        let limiter = MemorySlotLimiter::new(1);
        let held = limiter.acquire(SlotRequest::new("other", OrgId(1)), Duration::ZERO).await;
        let p = pipeline(limiter.clone(), Arc::new(SyntheticQuery { latency: Duration::ZERO }), Arc::new(DiscardSink));
        assert_eq!(p.process(&job(2)).await, Outcome::SkippedNoSlot);
        assert_eq!(p.probe.max(), 0, "no query ran");
        drop(held);
    }

    fn rate_gate(windows: &[(u32, u64)], max_delay_ms: u64, enforce: bool, cooldown: Duration) -> RateGate {
        use projector_shared::rate::{MemoryRateLimiter, RateMode, RatePolicy, RateWindow};
        let policy = RatePolicy {
            windows: windows.iter().map(|&(limit, ms)| RateWindow { limit, span: Duration::from_millis(ms) }).collect(),
            mode: RateMode::Strict,
            burst: 1,
            max_delay: Duration::from_millis(max_delay_ms),
            start_jitter: Duration::ZERO,
        };
        RateGate::new(Arc::new(MemoryRateLimiter::new(policy)), "test", enforce, cooldown)
    }

    #[tokio::test]
    async fn a_job_the_rate_policy_refuses_is_skipped_without_a_query_and_gives_its_slot_back() {
        let limiter = MemorySlotLimiter::new(4);
        let mut p = pipeline(limiter.clone(), Arc::new(SyntheticQuery { latency: Duration::ZERO }), Arc::new(DiscardSink));
        p.rate = Some(rate_gate(&[(1, 60_000)], 100, true, Duration::ZERO));
        let first = p.run(&job(1)).await;
        assert_eq!((first.outcome, first.retry_after), (Outcome::Completed, None));
        assert!(
            matches!(
                first.steps[..],
                [Step::Slot { granted: true, .. }, Step::Rate { admitted: true, .. }, Step::Query { .. }, Step::Store { ok: true, .. }]
            ),
            "{:?}",
            first.steps
        );
        let refused = p.run(&job(2)).await;
        assert_eq!(refused.outcome, Outcome::SkippedRatePolicy);
        let retry_after = refused.retry_after.expect("a refusal says when to retry");
        assert!(retry_after > Duration::from_secs(59) && retry_after <= Duration::from_secs(60), "{retry_after:?}");
        assert_eq!(p.probe.max(), 1, "only the admitted job queried");
        tokio::time::timeout(Duration::from_secs(5), async {
            while limiter.in_use() > 0 {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the refused job's slot comes back");
    }

    #[tokio::test]
    async fn in_shadow_mode_nothing_is_refused() {
        let mut p = pipeline(MemorySlotLimiter::new(4), Arc::new(SyntheticQuery { latency: Duration::ZERO }), Arc::new(DiscardSink));
        p.rate = Some(rate_gate(&[(1, 60_000)], 100, false, Duration::ZERO));
        for org in 1..=3 {
            assert_eq!(p.process(&job(org)).await, Outcome::Completed);
        }
    }

    #[tokio::test]
    async fn a_429_starts_the_cooldown_and_the_next_job_meets_it() {
        let mut p = pipeline(MemorySlotLimiter::new(4), Arc::new(RateLimitedQuery), Arc::new(DiscardSink));
        p.rate = Some(rate_gate(&[], 100, true, Duration::from_secs(30)));
        assert_eq!(p.process(&job(1)).await, Outcome::RateLimited);
        let next = p.run(&job(2)).await;
        assert_eq!(next.outcome, Outcome::SkippedRatePolicy);
        assert!(next.retry_after.is_some_and(|r| r > Duration::from_secs(29)), "{next:?}");
    }

    #[tokio::test]
    async fn a_legacy_orgs_refusal_advises_the_rollout_flag_not_slots_limit() {
        let p = pipeline(MemorySlotLimiter::new(1), Arc::new(RateLimitedQuery), Arc::new(DiscardSink));
        let limited = p.run(&job(3)).await;
        assert!(limited.why.as_ref().is_some_and(|w| w.advice.contains("lower slots.limit")), "{limited:?}");
        let legacy = p.process_unlimited(&job(3)).await;
        let advice = legacy.why.map(|w| w.advice).unwrap_or_default();
        assert!(
            advice.contains("legacy path") && advice.contains("projectorctl flag") && !advice.contains("lower slots.limit"),
            "{advice}"
        );
    }

    #[tokio::test]
    async fn a_429_is_recorded_as_rate_limited_and_the_slot_comes_back() {
        let limiter = MemorySlotLimiter::new(1);
        let p = pipeline(limiter.clone(), Arc::new(RateLimitedQuery), Arc::new(DiscardSink));
        assert_eq!(p.process(&job(3)).await, Outcome::RateLimited);
        assert_eq!(limiter.in_use(), 0);
    }
}
