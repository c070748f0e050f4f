//! The run record in Redis: one run's totals and each organization's outcome, written by the
//! scheduler (totals) and by every worker (outcomes), read by `run-once --wait` and operators.

use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use projector_redis::redis_conn::RedisConn;
use redis::Script;

use crate::error::Error;
use crate::ledger::RunLedger;
use projector_core::batch::Pacing;
use projector_core::ids::{OrgId, RunId};
use projector_core::run::{Admission, Outcome, Recorded, RunSummary};
use projector_core::trail::{self, Attempt};
use projector_redis::keys;
use projector_redis::redis_conn::retry_transient;

use projector_redis::lua::script;

/// Records one org's outcome and trail; its contract is in the file's header.
static RECORD: std::sync::LazyLock<Script> = std::sync::LazyLock::new(|| script(include_str!("../../../lua/run_record.lua")));

/// What a job asks of the run record before its slot; its contract is in the file's header.
static ADMIT: std::sync::LazyLock<Script> = std::sync::LazyLock::new(|| script(include_str!("../../../lua/run_admit.lua")));

/// Reopens orgs for a follow-up attempt; its contract is in the file's header.
static RETRY: std::sync::LazyLock<Script> = std::sync::LazyLock::new(|| script(include_str!("../../../lua/run_retry.lua")));

/// Ends a run's open orgs as cancelled; its contract is in the file's header.
static CANCEL: std::sync::LazyLock<Script> = std::sync::LazyLock::new(|| script(include_str!("../../../lua/run_cancel.lua")));
/// Puts a run in the cancelled set and announces it (`lua/run_cancel_mark.lua`).
static CANCEL_MARK: std::sync::LazyLock<Script> = std::sync::LazyLock::new(|| script(include_str!("../../../lua/run_cancel_mark.lua")));

/// Orgs per retry or cancel script call: bounded, so Redis is never blocked for long.
const ORGS_PER_CALL: usize = 1_000;

/// What `lua/run_record.lua` returns, as a [`Recorded`].
fn recorded(code: i8) -> Recorded {
    match code {
        -1 => Recorded::UnknownRun,
        -2 => Recorded::NotPlanned,
        0 => Recorded::AlreadyAccounted,
        2 => Recorded::FinishedTheRun,
        _ => Recorded::Recorded,
    }
}

/// A run's plan as stored in Redis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredPlan {
    pub tick: DateTime<Utc>,
    /// How many orgs the run was planned with; more than `orgs.len() + compacted` means the plan
    /// was cut short.
    pub orgs_total: u64,
    pub orgs: Vec<(OrgId, Vec<projector_core::ProjectId>)>,
    /// Completed orgs compacted out of the plan after the run finished (`runs.completed_detail`).
    pub compacted: u64,
}

/// Whether a summary lists the ids of orgs that did not complete (one read per org) or only totals.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrgIds {
    Leave,
    List,
}

/// Reads and writes run records over one shared connection.
#[derive(Clone)]
pub struct RunRecords {
    pub(crate) conn: RedisConn,
    /// How long a record lives after its last write (`runs.retention`).
    pub(crate) retention: Duration,
    /// How long the orgs' trails live after the run's last write (`runs.trail_retention`).
    trail_retention: Duration,
    /// How long the run's summary lives after its last write (`runs.summary_retention`).
    summary_retention: Duration,
}

impl RunRecords {
    /// Records written through this one live `retention` after their last write, trails and
    /// summaries included.
    pub fn new(conn: RedisConn, retention: Duration) -> Self {
        RunRecords { conn, retention, trail_retention: retention, summary_retention: retention }
    }

    /// Records kept as `[runs]` says: `runs.retention`, `runs.trail_retention` for trails and
    /// `runs.summary_retention` for the run's summary.
    pub fn for_config(conn: RedisConn, runs: &projector_config::RunsConfig) -> Self {
        RunRecords {
            conn,
            retention: runs.retention,
            trail_retention: runs.trail_retention,
            summary_retention: runs.summary_retention.max(runs.retention),
        }
    }

    fn retention_ms(&self) -> u64 {
        u64::try_from(self.retention.as_millis()).unwrap_or(u64::MAX)
    }

    fn trail_retention_ms(&self) -> u64 {
        u64::try_from(self.trail_retention.as_millis()).unwrap_or(u64::MAX)
    }

    fn summary_retention_ms(&self) -> u64 {
        u64::try_from(self.summary_retention.as_millis()).unwrap_or(u64::MAX)
    }

    /// Creates (or, for a re-run of the same tick, keeps) the record of a run of `orgs_total` orgs,
    /// and lists it among the recent runs (`projectorctl runs list`).
    pub async fn create(&self, run_id: &RunId, tick: DateTime<Utc>, orgs_total: u64) -> Result<(), Error> {
        self.write_record(run_id, tick, orgs_total, None).await
    }

    /// The run hash and its place in the runs index; a run (`skipped: None`) also enters the open
    /// index, a skipped tick is marked skipped in the same HSET that makes it a record, so no
    /// reader ever sees it as a run fanning out.
    async fn write_record(&self, run_id: &RunId, tick: DateTime<Utc>, orgs_total: u64, skipped: Option<&str>) -> Result<(), Error> {
        let key = self.conn.layout().run(run_id);
        // The record hash is the run's summary: it and the runs index outlive the per-org hashes.
        let ttl_ms = i64::try_from(self.summary_retention_ms()).unwrap_or(i64::MAX);
        // When the run began on Redis's clock: a past tick replayed now began now, not at its tick.
        let now: (u64, u64) = redis::cmd("TIME").query_async(&mut self.conn.clone()).await.map_err(Error::redis("reading Redis time"))?;
        let (tick_text, total) = (tick.to_rfc3339(), orgs_total.to_string());
        let mut fields = vec![("run_id", run_id.0.as_str()), ("tick", tick_text.as_str()), ("orgs_total", total.as_str())];
        if let Some(why) = skipped {
            fields.push(("skipped", why));
        }
        // Not a transaction: on a cluster the runs index and the run hash live in different slots.
        let mut pipe = redis::pipe();
        pipe.cmd("HSETNX").arg(&key).arg("created_ms").arg(now.0 * 1_000 + now.1 / 1_000).ignore();
        pipe.hset_multiple(&key, &fields).ignore();
        if skipped.is_none() {
            // A tick skipped earlier and fanned out now (run-once --tick) is a run like any other.
            pipe.hdel(&key, "skipped").ignore();
        }
        pipe.pexpire(&key, ttl_ms)
            .ignore()
            .zadd(keys::RUNS, &run_id.0, tick.timestamp_millis())
            .ignore()
            .zrembyscore(keys::RUNS, "-inf", tick.timestamp_millis().saturating_sub(ttl_ms))
            .ignore()
            .pexpire(keys::RUNS, ttl_ms)
            .ignore();
        if skipped.is_none() {
            // Open until a reader of the index sees it ended (`open_runs`).
            pipe.zadd(keys::OPEN_RUNS, &run_id.0, tick.timestamp_millis()).ignore().pexpire(keys::OPEN_RUNS, ttl_ms).ignore();
        }
        pipe.query_async::<()>(&mut self.conn.clone()).await.map_err(Error::redis(format!("writing the record of run {run_id}")))
    }

    /// Removes every key of a run that never had a job (its plan could not be stored whole):
    /// `runs list` then shows no run "fanning out" forever, and a second try starts clean.
    /// Deletes are what Redis still accepts when it is out of memory.
    pub async fn discard(&self, run_id: &RunId) -> Result<(), Error> {
        redis::pipe()
            .del(self.conn.layout().run_plan(run_id))
            .del(self.conn.layout().run_orgs(run_id))
            .del(self.conn.layout().run_trail(run_id))
            .del(self.conn.layout().run_attempts(run_id))
            .del(self.conn.layout().run_finished(run_id))
            .del(self.conn.layout().run(run_id))
            .zrem(keys::RUNS, &run_id.0)
            .zrem(keys::OPEN_RUNS, &run_id.0)
            .query_async::<()>(&mut self.conn.clone())
            .await
            .map_err(Error::redis(format!("rolling back run {run_id}")))
    }

    /// Redis's own time: deadlines are judged by it, never by a worker's clock.
    pub async fn redis_now(&self) -> Result<DateTime<Utc>, Error> {
        let (secs, micros): (i64, i64) =
            redis::cmd("TIME").query_async(&mut self.conn.clone()).await.map_err(Error::redis("reading Redis time"))?;
        Ok(DateTime::from_timestamp(secs, u32::try_from(micros * 1000).unwrap_or(0)).unwrap_or_else(Utc::now))
    }

    /// When the run must be over: at the deadline its open orgs end (`end_at_deadline`).
    pub async fn set_deadline(&self, run_id: &RunId, deadline: DateTime<Utc>) -> Result<(), Error> {
        self.set_schedule(run_id, deadline, None).await
    }

    /// The run's deadline and the pacing its fan-out releases batches at, for `runs show`.
    pub async fn set_schedule(&self, run_id: &RunId, deadline: DateTime<Utc>, pacing: Option<&Pacing>) -> Result<(), Error> {
        let mut cmd = redis::cmd("HSET");
        cmd.arg(self.conn.layout().run(run_id)).arg("deadline_ms").arg(deadline.timestamp_millis());
        if let Some(p) = pacing {
            let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
            cmd.arg("batch_size").arg(p.size).arg("batch_delay_ms").arg(ms(p.delay)).arg("batch_delay_configured_ms").arg(ms(p.configured));
        }
        cmd.query_async::<()>(&mut self.conn.clone()).await.map_err(Error::redis(format!("setting the deadline of run {run_id}")))
    }

    /// Ends every open org of a run past its deadline as `deadline`, announced like a cancel so
    /// no queued job of it queries. A job already querying then records what it reached
    /// (`completed` once its projections are stored), which replaces `deadline`
    /// (`lua/run_record.lua`). Returns how many orgs this ended.
    pub async fn end_at_deadline(&self, run_id: &RunId) -> Result<u64, Error> {
        let why = trail::Why::new("deadline", "the run's deadline passed before this org was queried (runs.deadline)");
        let line = Attempt { why: Some(why), steps: vec![trail::Step::Deadline], ..Attempt::bare(Outcome::Deadline) };
        self.end_open_orgs(run_id, Outcome::Deadline, &line).await
    }

    /// Records a tick that was not fanned out, and why: it shows in `runs list` as `skipped`.
    pub async fn record_skipped_tick(&self, run_id: &RunId, tick: DateTime<Utc>, why: &str) -> Result<(), Error> {
        self.write_record(run_id, tick, 0, Some(why)).await
    }

    /// Marks `run_id` as the run fanned out last (`keys::LAST_PLANNED_RUN`).
    pub async fn mark_last_planned(&self, run_id: &RunId) -> Result<(), Error> {
        redis::cmd("SET")
            .arg(keys::LAST_PLANNED_RUN)
            .arg(&run_id.0)
            .arg("PX")
            .arg(self.summary_retention_ms())
            .query_async::<()>(&mut self.conn.clone())
            .await
            .map_err(Error::redis("marking the run fanned out last"))
    }

    /// The orgs of the run fanned out last, other than `run_id`, that have not completed (no
    /// outcome yet, or one other than `completed`); empty when there is no such run or record.
    pub async fn not_completed_in_last_run(&self, run_id: &RunId) -> Result<std::collections::HashSet<OrgId>, Error> {
        let last: Option<String> = redis::cmd("GET")
            .arg(keys::LAST_PLANNED_RUN)
            .query_async(&mut self.conn.clone())
            .await
            .map_err(Error::redis("reading the run fanned out last"))?;
        let Some(last) = last.filter(|l| *l != run_id.0) else { return Ok(Default::default()) };
        let orgs = self.orgs(&RunId(last)).await?;
        Ok(orgs.into_iter().filter(|o| o.outcome != Some(Outcome::Completed)).map(|o| o.org).collect())
    }

    /// Every run still open (fanning out or running), newest first, from the index of open runs:
    /// however many runs and skipped ticks came since, an open run is in it. Runs found ended
    /// (done, cancelled, skipped, or their record expired) leave the index here, so it holds
    /// little more than the open runs.
    pub async fn open_runs(&self) -> Result<Vec<RunOverview>, Error> {
        let mut conn = self.conn.clone();
        let ids: Vec<String> = redis::cmd("ZREVRANGE")
            .arg(keys::OPEN_RUNS)
            .arg(0)
            .arg(-1)
            .query_async(&mut conn)
            .await
            .map_err(Error::redis("listing open runs"))?;
        let overviews = self.overviews(ids.clone()).await?;
        let finished: Vec<(String, DateTime<Utc>)> = overviews.iter().filter_map(|r| Some((r.run_id.clone(), r.finished?))).collect();
        let open: Vec<RunOverview> =
            overviews.into_iter().filter(|r| matches!(r.state(), RunState::FanningOut | RunState::Running)).collect();
        let ended: Vec<&String> = ids.iter().filter(|id| !open.iter().any(|r| &r.run_id == *id)).collect();
        if !ended.is_empty() {
            // A run that finished waits for compaction (`runs.completed_detail`) from its end.
            let mut pipe = redis::pipe();
            for (run_id, at) in finished.iter().filter(|(id, _)| ended.contains(&id)) {
                pipe.cmd("ZADD").arg(keys::COMPACT_RUNS).arg("NX").arg(at.timestamp_millis()).arg(run_id).ignore();
            }
            pipe.pexpire(keys::COMPACT_RUNS, i64::try_from(self.summary_retention_ms()).unwrap_or(i64::MAX)).ignore();
            pipe.zrem(keys::OPEN_RUNS, &ended).ignore();
            pipe.query_async::<()>(&mut conn).await.map_err(Error::redis("dropping ended runs from the open index"))?;
        }
        Ok(open)
    }

    /// Records how an org ended, with its trail; a second outcome for the same attempt (duplicate
    /// delivery) or an outcome of a superseded attempt is ignored.
    pub async fn record(&self, run_id: &RunId, org: OrgId, attempt: &Attempt) -> Result<Recorded, Error> {
        let line = attempt.to_line();
        // Idempotent (the first outcome wins), so a transient error is simply retried.
        retry_transient(|| {
            let mut conn = self.conn.clone();
            let mut invocation = RECORD.key(self.conn.layout().run(run_id));
            invocation
                .key(self.conn.layout().run_orgs(run_id))
                .key(self.conn.layout().run_plan(run_id))
                .key(self.conn.layout().run_trail(run_id))
                .key(self.conn.layout().run_attempts(run_id))
                .key(self.conn.layout().run_finished(run_id))
                .arg(org.0)
                .arg(attempt.outcome.as_str())
                .arg(self.retention_ms())
                .arg(attempt.attempt)
                .arg(&line)
                .arg(trail::KEPT_ATTEMPTS)
                .arg(self.trail_retention_ms())
                .arg(self.summary_retention_ms());
            async move { invocation.invoke_async::<i8>(&mut conn).await }
        })
        .await
        .map(recorded)
        .map_err(Error::redis(format!("recording org {org} of run {run_id}")))
    }

    /// Waits at most `wait` for the run to finish (its last org recorded); `true` if it did in
    /// that time. Blocks one connection: use a connection of its own, or a short `wait`.
    pub async fn wait_finished(&self, run_id: &RunId, wait: Duration) -> Result<bool, Error> {
        let popped: Option<(String, String)> = redis::cmd("BLPOP")
            .arg(self.conn.layout().run_finished(run_id))
            .arg(wait.as_secs_f64())
            .query_async(&mut self.conn.clone())
            .await
            .map_err(Error::redis(format!("waiting for run {run_id} to finish")))?;
        Ok(popped.is_some())
    }

    /// Stores the run's plan (org → project ids), in bounded steps; call before enqueuing any job.
    pub async fn store_plan(&self, run_id: &RunId, orgs: &[(OrgId, Vec<projector_core::ProjectId>)]) -> Result<(), Error> {
        let key = self.conn.layout().run_plan(run_id);
        for chunk in orgs.chunks(2_000) {
            // One HSET per chunk, not per org: Redis counts (and spends) per command.
            let fields: Vec<(u64, String)> = chunk
                .iter()
                .map(|(org, projects)| (org.0, projects.iter().map(|p| p.0.to_string()).collect::<Vec<_>>().join(",")))
                .collect();
            let mut pipe = redis::pipe();
            pipe.hset_multiple(&key, &fields).ignore();
            pipe.pexpire(&key, i64::try_from(self.retention_ms()).unwrap_or(i64::MAX)).ignore();
            retry_transient(|| {
                let mut conn = self.conn.clone();
                let pipe = pipe.clone();
                async move { pipe.query_async::<()>(&mut conn).await }
            })
            .await
            .map_err(Error::redis(format!("storing the plan of run {run_id}")))?;
        }
        Ok(())
    }

    /// The run's plan and tick, as `store_plan` and `create` left them: `None` if the run is unknown.
    pub async fn plan(&self, run_id: &RunId) -> Result<Option<StoredPlan>, Error> {
        let mut conn = self.conn.clone();
        let doing = || format!("reading the plan of run {run_id}");
        let (tick, total, compacted): (Option<String>, Option<u64>, Option<u64>) = redis::pipe()
            .hget(self.conn.layout().run(run_id), "tick")
            .hget(self.conn.layout().run(run_id), "orgs_total")
            .hget(self.conn.layout().run(run_id), "compacted")
            .query_async(&mut conn)
            .await
            .map_err(Error::redis(doing()))?;
        let (Some(tick), Some(orgs_total)) = (tick, total) else { return Ok(None) };
        let tick = DateTime::parse_from_rfc3339(&tick)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|e| Error::Corrupt { what: format!("the tick of run {run_id}"), detail: format!("{tick:?}: {e}") })?;
        let mut orgs = Vec::new();
        let mut cursor = 0u64;
        loop {
            let (next, page): (u64, Vec<(u64, String)>) = redis::cmd("HSCAN")
                .arg(self.conn.layout().run_plan(run_id))
                .arg(cursor)
                .arg("COUNT")
                .arg(2_000)
                .query_async(&mut conn)
                .await
                .map_err(Error::redis(doing()))?;
            for (org, list) in page {
                let projects = list.split(',').filter_map(|p| p.parse().ok()).map(projector_core::ProjectId).collect();
                orgs.push((OrgId(org), projects));
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
        orgs.sort_by_key(|(org, _)| *org);
        Ok(Some(StoredPlan { tick, orgs_total, orgs, compacted: compacted.unwrap_or(0) }))
    }

    /// Whether attempt `attempt` of (run, org) may run: its run exists, the org is in the run's
    /// plan, has no outcome yet and no later attempt owns it. One round trip (two for an org the
    /// run did not plan).
    pub async fn admit(&self, run_id: &RunId, org: OrgId, attempt: u32) -> Result<Admission, Error> {
        // One script call, one round trip: the admission is on every job's path.
        let (planned, outcome, current): (i8, String, u32) = retry_transient(|| {
            let mut conn = self.conn.clone();
            let mut invocation = ADMIT.key(self.conn.layout().run(run_id));
            invocation
                .key(self.conn.layout().run_plan(run_id))
                .key(self.conn.layout().run_orgs(run_id))
                .key(self.conn.layout().run_attempts(run_id))
                .arg(org.0);
            async move { invocation.invoke_async(&mut conn).await }
        })
        .await
        .map_err(Error::redis(format!("checking org {org} of run {run_id}")))?;
        match planned {
            1 => {}
            0 => return Ok(Admission::NotPlanned),
            _ => return Ok(Admission::UnknownRun),
        }
        Ok(match Outcome::parse(&outcome) {
            _ if attempt < current => Admission::Superseded,
            Some(outcome) => Admission::Accounted(outcome),
            None => Admission::Open,
        })
    }

    /// The run's totals, and with [`OrgIds::List`] the ids of the orgs that did not complete.
    pub async fn summary(&self, run_id: &RunId, ids: OrgIds) -> Result<Option<RunSummary>, Error> {
        let mut conn = self.conn.clone();
        let doing = || format!("reading run {run_id}");
        let fields: std::collections::HashMap<String, String> =
            redis::cmd("HGETALL").arg(self.conn.layout().run(run_id)).query_async(&mut conn).await.map_err(Error::redis(doing()))?;
        if fields.is_empty() {
            return Ok(None);
        }
        let n = |k: &str| fields.get(k).and_then(|v| v.parse().ok()).unwrap_or(0u64);
        let mut summary = RunSummary { run_id: run_id.0.clone(), orgs_total: n("orgs_total"), ..RunSummary::default() };
        match ids {
            OrgIds::Leave => {
                for outcome in Outcome::ALL {
                    summary.set_count(outcome, n(outcome.as_str()));
                }
            }
            OrgIds::List => {
                // Totals and lists from the same per-org record, filed as the embedded ledger files them.
                let orgs: std::collections::HashMap<u64, String> = redis::cmd("HGETALL")
                    .arg(self.conn.layout().run_orgs(run_id))
                    .query_async(&mut conn)
                    .await
                    .map_err(Error::redis(doing()))?;
                for (org, outcome) in orgs {
                    if let Some(outcome) = Outcome::parse(&outcome) {
                        summary.add(OrgId(org), outcome);
                    }
                }
                // Completed orgs compacted after runs.completed_detail left the orgs hash.
                let compacted = n("compacted");
                summary.set_count(Outcome::Completed, summary.count(Outcome::Completed) + compacted);
                summary.sort_ids();
            }
        }
        Ok(Some(summary))
    }
}

/// One recent run as `projectorctl runs list` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunOverview {
    pub run_id: String,
    pub tick: Option<DateTime<Utc>>,
    pub orgs_total: u64,
    /// Count per outcome, in [`Outcome::ALL`] order.
    pub counts: Vec<(Outcome, u64)>,
    /// When every job of the run was in the queue (Redis time); `None` while fanning out.
    pub fanned_out: Option<DateTime<Utc>>,
    /// When its last org was recorded (Redis time), if it finished.
    pub finished: Option<DateTime<Utc>>,
    /// When an operator cancelled it (Redis time), if one did.
    pub cancelled: Option<DateTime<Utc>>,
    /// Orgs reopened by `runs retry`, over every retry of the run.
    pub retried: u64,
    /// Why the tick was not fanned out (an earlier run still open, `schedule.overlap`).
    pub skipped: Option<String>,
    /// When the run must be over (`runs.deadline`); `None` for runs recorded before deadlines.
    pub deadline: Option<DateTime<Utc>>,
    /// When its record was first created (Redis time); `None` for runs recorded before this.
    pub created: Option<DateTime<Utc>>,
    /// How its batches were released (`None` for skipped ticks and older records).
    pub pacing: Option<Pacing>,
}

/// Where a run is: `fanning out`, `running`, `done` or `cancelled`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunState {
    FanningOut,
    Running,
    Done,
    Cancelled,
    /// A tick recorded but not fanned out.
    Skipped,
}

impl RunState {
    pub fn as_str(self) -> &'static str {
        match self {
            RunState::FanningOut => "fanning out",
            RunState::Running => "running",
            RunState::Done => "done",
            RunState::Cancelled => "cancelled",
            RunState::Skipped => "skipped",
        }
    }
}

impl RunOverview {
    pub fn accounted(&self) -> u64 {
        self.counts.iter().map(|(_, n)| n).sum()
    }

    /// When the run began: its tick, or when its record was created if that came later (a past
    /// tick replayed with `run-once --tick` began when it was replayed, not days ago).
    pub fn started(&self) -> Option<DateTime<Utc>> {
        match (self.tick, self.created) {
            (Some(tick), Some(created)) => Some(tick.max(created)),
            (tick, created) => tick.or(created),
        }
    }

    /// Milliseconds from the run's start to its end, or to `now` while it runs; a skipped tick
    /// never ran (`None`).
    pub fn duration_ms(&self, now: DateTime<Utc>) -> Option<i64> {
        if self.state() == RunState::Skipped {
            return None;
        }
        let started = self.started()?;
        Some((self.finished.unwrap_or(now) - started).num_milliseconds().max(0))
    }

    /// Seconds left at the pace so far, for a running run that has made progress: the
    /// predicted finish, from how fast its orgs have been accounted (query time and the limit
    /// in force, as they were).
    pub fn eta_s(&self, now: DateTime<Utc>) -> Option<f64> {
        if self.state() != RunState::Running || self.accounted() == 0 {
            return None;
        }
        let elapsed = self.duration_ms(now)? as f64 / 1000.0;
        let pace = self.accounted() as f64 / elapsed.max(0.001);
        Some(self.orgs_total.saturating_sub(self.accounted()) as f64 / pace)
    }

    /// How many seconds after its deadline the run is predicted to finish (0 when on time, or
    /// with no prediction or deadline yet).
    pub fn predicted_overrun_s(&self, now: DateTime<Utc>) -> f64 {
        match (self.eta_s(now), self.deadline) {
            (Some(eta), Some(deadline)) => (eta - (deadline - now).num_milliseconds() as f64 / 1000.0).max(0.0),
            _ => 0.0,
        }
    }

    pub fn state(&self) -> RunState {
        if self.skipped.is_some() {
            RunState::Skipped
        } else if self.cancelled.is_some() {
            RunState::Cancelled
        } else if projector_core::run::is_finished(self.accounted(), self.orgs_total) {
            RunState::Done
        } else if self.fanned_out.is_none() {
            RunState::FanningOut
        } else {
            RunState::Running
        }
    }

    fn from_fields(run_id: String, fields: &std::collections::HashMap<String, String>) -> Self {
        let n = |k: &str| fields.get(k).and_then(|v| v.parse().ok()).unwrap_or(0u64);
        let at = |k: &str| fields.get(k).and_then(|v| v.parse::<i64>().ok()).and_then(DateTime::<Utc>::from_timestamp_millis);
        RunOverview {
            tick: fields.get("tick").and_then(|t| DateTime::parse_from_rfc3339(t).ok()).map(|t| t.with_timezone(&Utc)),
            orgs_total: n("orgs_total"),
            counts: Outcome::ALL.iter().map(|o| (*o, n(o.as_str()))).collect(),
            fanned_out: at("fanned_out_ms"),
            finished: at("finished_ms"),
            cancelled: at("cancelled_ms"),
            retried: n("retried"),
            skipped: fields.get("skipped").cloned(),
            deadline: at("deadline_ms"),
            created: at("created_ms"),
            pacing: pacing_of(fields, n("orgs_total")),
            run_id,
        }
    }
}

/// The pacing a run record keeps (`set_schedule`), when it has one.
fn pacing_of(fields: &std::collections::HashMap<String, String>, orgs: u64) -> Option<Pacing> {
    let n = |k: &str| fields.get(k).and_then(|v| v.parse::<u64>().ok());
    let (size, delay, configured) = (n("batch_size")?, n("batch_delay_ms")?, n("batch_delay_configured_ms")?);
    let size = usize::try_from(size).ok().filter(|s| *s > 0)?;
    Some(Pacing {
        size,
        batches: usize::try_from(orgs).unwrap_or(usize::MAX).div_ceil(size),
        delay: Duration::from_millis(delay),
        configured: Duration::from_millis(configured),
        budget: None,
    })
}

/// One org of a run as the record keeps it: its latest outcome and the trail of its attempts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrgRecord {
    pub org: OrgId,
    /// `None` while it has no outcome (not run yet, or reopened by a retry).
    pub outcome: Option<Outcome>,
    /// The attempt open now (0 until a retry).
    pub attempt: u32,
    /// Its attempts, oldest first (the last [`trail::KEPT_ATTEMPTS`]).
    pub trail: Vec<trail::Recorded>,
    /// For a completed org compacted after `runs.completed_detail` (its trail gone): when its
    /// outcome was recorded (Redis ms), if known.
    pub compacted_at_ms: Option<Option<i64>>,
}

impl RunRecords {
    /// The most recent runs (by tick), newest first, at most `limit`; runs whose record has
    /// expired are left out.
    pub async fn recent(&self, limit: usize) -> Result<Vec<RunOverview>, Error> {
        let mut conn = self.conn.clone();
        let stop = isize::try_from(limit.max(1)).unwrap_or(isize::MAX) - 1;
        let ids: Vec<String> =
            redis::cmd("ZREVRANGE").arg(keys::RUNS).arg(0).arg(stop).query_async(&mut conn).await.map_err(Error::redis("listing runs"))?;
        self.overviews(ids).await
    }

    /// The overviews of `ids`, in that order; runs whose record has expired are left out.
    async fn overviews(&self, ids: Vec<String>) -> Result<Vec<RunOverview>, Error> {
        let mut conn = self.conn.clone();
        if ids.is_empty() {
            // The client refuses to send an empty pipeline.
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for id in &ids {
            pipe.hgetall(self.conn.layout().run(&RunId(id.clone())));
        }
        let records: Vec<std::collections::HashMap<String, String>> =
            pipe.query_async(&mut conn).await.map_err(Error::redis("reading recent runs"))?;
        Ok(ids
            .into_iter()
            .zip(records)
            .filter(|(_, fields)| !fields.is_empty())
            .map(|(run_id, fields)| RunOverview::from_fields(run_id, &fields))
            .collect())
    }

    /// One run's overview; `None` if there is no such run.
    pub async fn overview(&self, run_id: &RunId) -> Result<Option<RunOverview>, Error> {
        let fields: std::collections::HashMap<String, String> = redis::cmd("HGETALL")
            .arg(self.conn.layout().run(run_id))
            .query_async(&mut self.conn.clone())
            .await
            .map_err(Error::redis(format!("reading run {run_id}")))?;
        Ok((!fields.is_empty()).then(|| RunOverview::from_fields(run_id.0.clone(), &fields)))
    }

    /// Notes that every job of the run is in the queue (the run leaves `fanning out`).
    pub async fn mark_fanned_out(&self, run_id: &RunId) -> Result<(), Error> {
        let now: (u64, u64) = redis::cmd("TIME").query_async(&mut self.conn.clone()).await.map_err(Error::redis("reading Redis time"))?;
        let ms = now.0 * 1_000 + now.1 / 1_000;
        redis::cmd("HSET")
            .arg(self.conn.layout().run(run_id))
            .arg("fanned_out_ms")
            .arg(ms)
            .query_async::<()>(&mut self.conn.clone())
            .await
            .map_err(Error::redis(format!("marking run {run_id} fanned out")))
    }

    /// Every org of the run's plan with its outcome (`None`: not ended yet) and open attempt,
    /// sorted by org; trails are left empty (read them with [`RunRecords::trails`]).
    pub async fn orgs(&self, run_id: &RunId) -> Result<Vec<OrgRecord>, Error> {
        use std::collections::HashMap;
        let mut conn = self.conn.clone();
        let doing = || format!("reading the orgs of run {run_id}");
        let (outcomes, attempts, planned): (HashMap<u64, String>, HashMap<u64, u32>, Vec<u64>) = redis::pipe()
            .hgetall(self.conn.layout().run_orgs(run_id))
            .hgetall(self.conn.layout().run_attempts(run_id))
            .hkeys(self.conn.layout().run_plan(run_id))
            .query_async(&mut conn)
            .await
            .map_err(Error::redis(doing()))?;
        let mut orgs: Vec<OrgRecord> = planned
            .into_iter()
            .map(|org| OrgRecord {
                org: OrgId(org),
                outcome: outcomes.get(&org).and_then(|o| Outcome::parse(o)),
                attempt: attempts.get(&org).copied().unwrap_or(0),
                trail: Vec::new(),
                compacted_at_ms: None,
            })
            .collect();
        // Completed orgs compacted after runs.completed_detail; one may be in both while a
        // compaction is under way (the list is written first): the full record wins.
        let planned: std::collections::HashSet<OrgId> = orgs.iter().map(|o| o.org).collect();
        for c in self.compacted_orgs(run_id).await?.into_iter().filter(|c| !planned.contains(&c.org)) {
            orgs.push(OrgRecord {
                org: c.org,
                outcome: Some(Outcome::Completed),
                attempt: 0,
                trail: Vec::new(),
                compacted_at_ms: Some(c.at_ms),
            });
        }
        orgs.sort_by_key(|o| o.org);
        Ok(orgs)
    }

    /// Fills in the trails of `orgs` (one HMGET).
    pub async fn trails(&self, run_id: &RunId, orgs: &mut [OrgRecord]) -> Result<(), Error> {
        if orgs.is_empty() {
            return Ok(());
        }
        let ids: Vec<u64> = orgs.iter().map(|o| o.org.0).collect();
        let lines: Vec<Option<String>> = redis::cmd("HMGET")
            .arg(self.conn.layout().run_trail(run_id))
            .arg(ids)
            .query_async(&mut self.conn.clone())
            .await
            .map_err(Error::redis(format!("reading trails of run {run_id}")))?;
        for (org, line) in orgs.iter_mut().zip(lines) {
            org.trail = line.as_deref().map(trail::parse).unwrap_or_default();
        }
        Ok(())
    }

    /// When orgs ended (Redis ms, their latest attempt), for up to `sample` orgs picked at random
    /// (every org when the run has fewer): enough to draw progress over time without reading a
    /// large run's every trail.
    pub async fn end_times(&self, run_id: &RunId, sample: usize) -> Result<Vec<i64>, Error> {
        let pairs: Vec<(String, String)> = redis::cmd("HRANDFIELD")
            .arg(self.conn.layout().run_trail(run_id))
            .arg(sample)
            .arg("WITHVALUES")
            .query_async(&mut self.conn.clone())
            .await
            .map_err(Error::redis(format!("sampling trails of run {run_id}")))?;
        let mut times: Vec<i64> = pairs.iter().filter_map(|(_, t)| trail::parse(t).last().map(|r| r.at_ms)).collect();
        // A compacted run's completed orgs have no trail left: their record times are in the
        // compact list. Every `step`-th keeps the sample's size and the curve's shape.
        let compacted: Vec<i64> = self.compacted_orgs(run_id).await?.into_iter().filter_map(|c| c.at_ms).collect();
        if !compacted.is_empty() {
            let step = (compacted.len() + times.len()).div_ceil(sample.max(1)).max(1);
            times.extend(compacted.into_iter().step_by(step));
        }
        times.sort_unstable();
        Ok(times)
    }

    /// One org of a run; `None` if the run does not exist or did not plan it.
    pub async fn org(&self, run_id: &RunId, org: OrgId) -> Result<Option<OrgRecord>, Error> {
        let (planned, outcome, attempt, trail): (bool, Option<String>, Option<u32>, Option<String>) = redis::pipe()
            .hexists(self.conn.layout().run_plan(run_id), org.0)
            .hget(self.conn.layout().run_orgs(run_id), org.0)
            .hget(self.conn.layout().run_attempts(run_id), org.0)
            .hget(self.conn.layout().run_trail(run_id), org.0)
            .query_async(&mut self.conn.clone())
            .await
            .map_err(Error::redis(format!("reading org {org} of run {run_id}")))?;
        if !planned {
            let compacted = self.compacted_org(run_id, org).await?;
            return Ok(compacted.map(|c| OrgRecord {
                org,
                outcome: Some(Outcome::Completed),
                attempt: 0,
                trail: Vec::new(),
                compacted_at_ms: Some(c.at_ms),
            }));
        }
        Ok(Some(OrgRecord {
            org,
            outcome: outcome.as_deref().and_then(Outcome::parse),
            attempt: attempt.unwrap_or(0),
            trail: trail.as_deref().map(trail::parse).unwrap_or_default(),
            compacted_at_ms: None,
        }))
    }

    /// Reopens the run's orgs whose outcome is in `outcomes` for a follow-up attempt; returns
    /// each reopened org with its new attempt number. Orgs whose outcome changed meanwhile are
    /// left alone.
    pub async fn reopen(&self, run_id: &RunId, outcomes: &[Outcome]) -> Result<Vec<(OrgId, u32)>, Error> {
        let chosen: Vec<(OrgId, Outcome)> =
            self.orgs(run_id).await?.into_iter().filter_map(|o| o.outcome.filter(|x| outcomes.contains(x)).map(|x| (o.org, x))).collect();
        let mut reopened = Vec::new();
        for chunk in chosen.chunks(ORGS_PER_CALL) {
            let mut invocation = RETRY.key(self.conn.layout().run(run_id));
            invocation.key(self.conn.layout().run_orgs(run_id)).key(self.conn.layout().run_attempts(run_id)).arg(self.retention_ms());
            for (org, had) in chunk {
                invocation.arg(org.0).arg(had.as_str());
            }
            let flat: Vec<u64> =
                invocation.invoke_async(&mut self.conn.clone()).await.map_err(Error::redis(format!("reopening orgs of run {run_id}")))?;
            reopened.extend(flat.chunks(2).filter_map(|p| Some((OrgId(*p.first()?), u32::try_from(*p.get(1)?).ok()?))));
        }
        Ok(reopened)
    }

    /// Ends every open org of the run as `cancelled` and marks the run cancelled; returns how
    /// many orgs this cancelled. Orgs that already ended keep their outcome.
    pub async fn cancel(&self, run_id: &RunId) -> Result<u64, Error> {
        let line = Attempt { steps: vec![trail::Step::Cancelled], ..Attempt::bare(Outcome::Cancelled) };
        self.end_open_orgs(run_id, Outcome::Cancelled, &line).await
    }

    /// Ends every open org of the run as `failed` with `why`, because the query service refused
    /// the query itself: every org would earn the same answer. Announced like a cancel, so a job
    /// that gets its slot from then on sends no query. Returns how many orgs this ended.
    pub async fn stop(&self, run_id: &RunId, why: &trail::Why) -> Result<u64, Error> {
        let line = Attempt { why: Some(why.clone()), steps: vec![trail::Step::Stopped], ..Attempt::bare(Outcome::Failed) };
        self.end_open_orgs(run_id, Outcome::Failed, &line).await
    }

    async fn end_open_orgs(&self, run_id: &RunId, outcome: Outcome, line: &Attempt) -> Result<u64, Error> {
        let planned: Vec<u64> = redis::cmd("HKEYS")
            .arg(self.conn.layout().run_plan(run_id))
            .query_async(&mut self.conn.clone())
            .await
            .map_err(Error::redis(format!("reading the plan of run {run_id}")))?;
        let exists: bool = redis::cmd("EXISTS")
            .arg(self.conn.layout().run(run_id))
            .query_async(&mut self.conn.clone())
            .await
            .map_err(Error::redis(format!("reading run {run_id}")))?;
        if !exists {
            return Ok(0);
        }
        // Announced first: a job that gets its slot from now on sends no query.
        CANCEL_MARK
            .key(keys::CANCELLED_RUNS)
            .arg(&run_id.0)
            .arg(self.retention_ms())
            .arg(keys::CANCELS_CHANNEL)
            .invoke_async::<()>(&mut self.conn.clone())
            .await
            .map_err(Error::redis(format!("announcing the cancel of run {run_id}")))?;
        let line = line.to_line();
        let mut cancelled = 0;
        // An empty plan still marks the run cancelled (one call with no orgs).
        let chunks: Vec<&[u64]> = if planned.is_empty() { vec![&[]] } else { planned.chunks(ORGS_PER_CALL).collect() };
        for chunk in chunks {
            let mut invocation = CANCEL.key(self.conn.layout().run(run_id));
            invocation
                .key(self.conn.layout().run_orgs(run_id))
                .key(self.conn.layout().run_trail(run_id))
                .key(self.conn.layout().run_finished(run_id))
                .arg(self.retention_ms())
                .arg(&line)
                .arg(trail::KEPT_ATTEMPTS)
                .arg(self.trail_retention_ms())
                .arg(self.summary_retention_ms())
                .arg(outcome.as_str());
            for org in chunk {
                invocation.arg(*org);
            }
            let n: u64 = invocation.invoke_async(&mut self.conn.clone()).await.map_err(Error::redis(format!("cancelling run {run_id}")))?;
            cancelled += n;
        }
        Ok(cancelled)
    }
}

impl RunLedger for RunRecords {
    fn outcome_of<'a>(&'a self, run_id: &'a RunId, org: OrgId, attempt: u32) -> BoxFuture<'a, Result<Admission, Error>> {
        Box::pin(self.admit(run_id, org, attempt))
    }

    fn record<'a>(&'a self, run_id: &'a RunId, org: OrgId, attempt: &'a Attempt) -> BoxFuture<'a, Result<Recorded, Error>> {
        Box::pin(RunRecords::record(self, run_id, org, attempt))
    }

    fn summary<'a>(&'a self, run_id: &'a RunId) -> BoxFuture<'a, Result<Option<RunSummary>, Error>> {
        Box::pin(RunRecords::summary(self, run_id, OrgIds::Leave))
    }

    fn stop<'a>(&'a self, run_id: &'a RunId, why: &'a trail::Why) -> BoxFuture<'a, Result<u64, Error>> {
        Box::pin(RunRecords::stop(self, run_id, why))
    }
}
