//! The run records of a single-machine fleet on one SQLite file (`backend.kind = "sqlite"`): the
//! same rules as the Redis record (`lua/run_record.lua`, `lua/run_admit.lua`), each decision
//! taken in one write transaction on the file's clock. One row per run, one per planned org.

use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use projector_core::batch::Pacing;
use projector_core::ids::{OrgId, ProjectId, RunId};
use projector_core::run::{Admission, Outcome, Recorded, RunSummary};
use projector_core::trail::{self, Attempt};
use projector_sqlite::{Database, Write, sqlx};

use crate::error::Error;
use crate::ledger::RunLedger;
use crate::run_record::OrgIds;

/// Orgs written per statement when a plan is stored (SQLite binds at most 32,766 values).
const ORGS_PER_INSERT: usize = 500;

/// One planned org: its batch (release order) and its projects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedOrg {
    pub org: OrgId,
    pub batch: u32,
    pub projects: Vec<ProjectId>,
}

/// What a fan-out (or its resumption) still has to put in the queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToEnqueue {
    pub tick: DateTime<Utc>,
    pub deadline: Option<DateTime<Utc>>,
    pub pacing: Option<Pacing>,
    /// Planned orgs with no job in the queue yet and no outcome, by batch.
    pub orgs: Vec<PlannedOrg>,
}

/// Run records on the file every process of this machine shares.
#[derive(Debug, Clone)]
pub struct SqliteRuns {
    pub(crate) db: Database,
    /// `runs.retention`: a run's rows are deleted this long after it was created.
    retention: Duration,
}

impl SqliteRuns {
    pub fn new(db: Database, retention: Duration) -> Self {
        SqliteRuns { db, retention }
    }

    pub fn database(&self) -> &Database {
        &self.db
    }

    /// Creates the run with its whole plan in one transaction, so a run is never seen half
    /// planned; `false` when the run already exists (a replayed tick), which is left as it is.
    pub async fn create(
        &self,
        run_id: &RunId,
        tick: DateTime<Utc>,
        deadline: DateTime<Utc>,
        pacing: Option<&Pacing>,
        plan: &[PlannedOrg],
    ) -> Result<bool, Error> {
        let mut w = self.db.write("creating a run").await?;
        let exists: Option<i64> = sqlx::query_scalar("SELECT 1 FROM projector_runs WHERE run_id = ?1")
            .bind(&run_id.0)
            .fetch_optional(&mut *w.tx)
            .await
            .map_err(w.err())?;
        if exists.is_some() {
            return Ok(false);
        }
        let pacing = pacing.map(|p| format!("{} {} {}", p.size, p.delay.as_millis(), p.configured.as_millis()));
        sqlx::query(
            "INSERT INTO projector_runs (run_id, tick_ms, created_ms, orgs_total, deadline_ms, pacing) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )
        .bind(&run_id.0)
        .bind(tick.timestamp_millis())
        .bind(w.now_ms)
        .bind(i64::try_from(plan.len()).unwrap_or(i64::MAX))
        .bind(deadline.timestamp_millis())
        .bind(pacing)
        .execute(&mut *w.tx)
        .await
        .map_err(w.err())?;
        for chunk in plan.chunks(ORGS_PER_INSERT) {
            let values = vec!["(?, ?, ?, ?)"; chunk.len()].join(", ");
            let sql = format!("INSERT INTO projector_run_orgs (run_id, org_id, batch, projects) VALUES {values}");
            let mut insert = sqlx::query(sqlx::AssertSqlSafe(sql));
            for org in chunk {
                let projects = org.projects.iter().map(|p| p.0.to_string()).collect::<Vec<_>>().join(",");
                insert = insert.bind(&run_id.0).bind(org_i64(org.org)).bind(i64::from(org.batch)).bind(projects);
            }
            insert.execute(&mut *w.tx).await.map_err(w.err())?;
        }
        w.commit().await?;
        Ok(true)
    }

    /// The run's planned orgs that have neither a job in the queue nor an outcome; `None` when
    /// there is no such run.
    pub async fn to_enqueue(&self, run_id: &RunId) -> Result<Option<ToEnqueue>, Error> {
        let err = || self.db.err(format!("reading the plan of run {run_id}"));
        let run: Option<(i64, Option<i64>, Option<String>, i64)> =
            sqlx::query_as("SELECT tick_ms, deadline_ms, pacing, orgs_total FROM projector_runs WHERE run_id = ?1")
                .bind(&run_id.0)
                .fetch_optional(self.db.pool())
                .await
                .map_err(err())?;
        let Some((tick_ms, deadline_ms, pacing, orgs_total)) = run else { return Ok(None) };
        let rows: Vec<(i64, i64, String)> = sqlx::query_as(
            "SELECT org_id, batch, projects FROM projector_run_orgs WHERE run_id = ?1 AND enqueued = 0 AND outcome IS NULL ORDER BY batch, org_id",
        )
        .bind(&run_id.0)
        .fetch_all(self.db.pool())
        .await
        .map_err(err())?;
        let orgs = rows.into_iter().map(planned_org).collect();
        Ok(Some(ToEnqueue {
            tick: at(tick_ms).unwrap_or_default(),
            deadline: deadline_ms.and_then(at),
            pacing: pacing.as_deref().and_then(|p| pacing_of(p, orgs_total)),
            orgs,
        }))
    }

    /// Notes that the jobs of `orgs` are in the queue: a resumed fan-out leaves them out.
    pub async fn mark_enqueued(&self, run_id: &RunId, orgs: &[OrgId]) -> Result<(), Error> {
        let mut w = self.db.write("noting jobs enqueued").await?;
        for org in orgs {
            sqlx::query("UPDATE projector_run_orgs SET enqueued = 1 WHERE run_id = ?1 AND org_id = ?2")
                .bind(&run_id.0)
                .bind(org_i64(*org))
                .execute(&mut *w.tx)
                .await
                .map_err(w.err())?;
        }
        Ok(w.commit().await?)
    }

    /// Notes that every job of the run is in the queue (the run leaves `fanning out`).
    pub async fn mark_fanned_out(&self, run_id: &RunId) -> Result<(), Error> {
        let mut w = self.db.write("marking a run fanned out").await?;
        sqlx::query("UPDATE projector_runs SET fanned_out_ms = coalesce(fanned_out_ms, ?2) WHERE run_id = ?1")
            .bind(&run_id.0)
            .bind(w.now_ms)
            .execute(&mut *w.tx)
            .await
            .map_err(w.err())?;
        Ok(w.commit().await?)
    }

    /// Whether attempt `attempt` of (run, org) may run, as `lua/run_admit.lua` decides.
    pub async fn admit(&self, run_id: &RunId, org: OrgId, attempt: u32) -> Result<Admission, Error> {
        let row: Option<(Option<String>, i64)> =
            sqlx::query_as("SELECT outcome, attempt FROM projector_run_orgs WHERE run_id = ?1 AND org_id = ?2")
                .bind(&run_id.0)
                .bind(org_i64(org))
                .fetch_optional(self.db.pool())
                .await
                .map_err(self.db.err(format!("checking org {org} of run {run_id}")))?;
        let Some((outcome, current)) = row else {
            return Ok(if self.exists(run_id).await? { Admission::NotPlanned } else { Admission::UnknownRun });
        };
        Ok(match outcome.as_deref().and_then(Outcome::parse) {
            _ if i64::from(attempt) < current => Admission::Superseded,
            Some(outcome) => Admission::Accounted(outcome),
            None => Admission::Open,
        })
    }

    async fn exists(&self, run_id: &RunId) -> Result<bool, Error> {
        let found: Option<i64> = sqlx::query_scalar("SELECT 1 FROM projector_runs WHERE run_id = ?1")
            .bind(&run_id.0)
            .fetch_optional(self.db.pool())
            .await
            .map_err(self.db.err(format!("reading run {run_id}")))?;
        Ok(found.is_some())
    }

    /// Records one org's outcome with its trail line, by the rules of `lua/run_record.lua`: the
    /// first outcome of an attempt wins, except that a query's outcome replaces `cancelled` or
    /// `deadline` set while it ran; the record of the run's last org finishes the run.
    pub async fn record(&self, run_id: &RunId, org: OrgId, attempt: &Attempt) -> Result<Recorded, Error> {
        let mut w = self.db.write("recording an outcome").await?;
        let recorded = record_in(&mut w, run_id, org, attempt).await?;
        w.commit().await?;
        Ok(recorded)
    }

    /// Reopens the run's orgs whose outcome is in `outcomes` for a follow-up attempt (`runs
    /// retry`), as `lua/run_retry.lua` does; returns each with its new attempt number. The run
    /// is open again until they end.
    pub async fn reopen(&self, run_id: &RunId, outcomes: &[Outcome]) -> Result<Vec<(OrgId, u32)>, Error> {
        let mut w = self.db.write("reopening orgs for a retry").await?;
        let rows: Vec<(i64, Option<String>, i64)> =
            sqlx::query_as("SELECT org_id, outcome, attempt FROM projector_run_orgs WHERE run_id = ?1 AND outcome IS NOT NULL")
                .bind(&run_id.0)
                .fetch_all(&mut *w.tx)
                .await
                .map_err(w.err())?;
        let mut reopened = Vec::new();
        for (org, outcome, attempt) in rows {
            if !outcome.as_deref().and_then(Outcome::parse).is_some_and(|o| outcomes.contains(&o)) {
                continue;
            }
            sqlx::query("UPDATE projector_run_orgs SET outcome = NULL, attempt = ?3, enqueued = 1 WHERE run_id = ?1 AND org_id = ?2")
                .bind(&run_id.0)
                .bind(org)
                .bind(attempt + 1)
                .execute(&mut *w.tx)
                .await
                .map_err(w.err())?;
            reopened.push((OrgId(u64::try_from(org).unwrap_or(0)), u32::try_from(attempt + 1).unwrap_or(u32::MAX)));
        }
        let n = i64::try_from(reopened.len()).unwrap_or(i64::MAX);
        sqlx::query(
            "UPDATE projector_runs SET accounted = accounted - ?2, retried = retried + ?2,
                 finished_ms = CASE WHEN ?2 > 0 THEN NULL ELSE finished_ms END WHERE run_id = ?1",
        )
        .bind(&run_id.0)
        .bind(n)
        .execute(&mut *w.tx)
        .await
        .map_err(w.err())?;
        w.commit().await?;
        Ok(reopened)
    }

    /// The projects of each planned org, and the run's tick: what a follow-up attempt's job needs.
    pub async fn plan_projects(&self, run_id: &RunId) -> Result<Option<(DateTime<Utc>, Vec<PlannedOrg>)>, Error> {
        let Some(overview) = self.overview(run_id).await? else { return Ok(None) };
        let rows: Vec<(i64, i64, String)> = sqlx::query_as("SELECT org_id, batch, projects FROM projector_run_orgs WHERE run_id = ?1")
            .bind(&run_id.0)
            .fetch_all(self.db.pool())
            .await
            .map_err(self.db.err(format!("reading the plan of run {run_id}")))?;
        let orgs = rows.into_iter().map(planned_org).collect();
        Ok(Some((overview.tick.unwrap_or_default(), orgs)))
    }

    /// Ends every open org of the run with `outcome` and the trail line `line` (a cancel, a
    /// stop, the deadline); returns how many orgs this ended. Orgs that ended keep their outcome.
    pub async fn end_open_orgs(&self, run_id: &RunId, outcome: Outcome, line: &Attempt) -> Result<u64, Error> {
        let mut w = self.db.write("ending a run's open orgs").await?;
        let open: Vec<(i64, i64)> = sqlx::query_as("SELECT org_id, attempt FROM projector_run_orgs WHERE run_id = ?1 AND outcome IS NULL")
            .bind(&run_id.0)
            .fetch_all(&mut *w.tx)
            .await
            .map_err(w.err())?;
        if outcome == Outcome::Cancelled {
            sqlx::query("UPDATE projector_runs SET cancelled_ms = coalesce(cancelled_ms, ?2) WHERE run_id = ?1")
                .bind(&run_id.0)
                .bind(w.now_ms)
                .execute(&mut *w.tx)
                .await
                .map_err(w.err())?;
        }
        let mut ended = 0;
        for (org, attempt) in open {
            let line = Attempt { attempt: u32::try_from(attempt).unwrap_or(0), ..line.clone() };
            if matches!(
                record_in(&mut w, run_id, OrgId(u64::try_from(org).unwrap_or(0)), &line).await?,
                Recorded::Recorded | Recorded::FinishedTheRun
            ) {
                ended += 1;
            }
        }
        w.commit().await?;
        Ok(ended)
    }

    /// Ends every open org of every run past its deadline as `deadline`; returns the runs it
    /// ended orgs of, with how many.
    pub async fn end_overdue(&self) -> Result<Vec<(RunId, u64)>, Error> {
        let now = self.db.now_ms().await?;
        let overdue: Vec<String> = sqlx::query_scalar(
            "SELECT run_id FROM projector_runs WHERE finished_ms IS NULL AND deadline_ms IS NOT NULL AND deadline_ms <= ?1",
        )
        .bind(now)
        .fetch_all(self.db.pool())
        .await
        .map_err(self.db.err("looking for runs past their deadline"))?;
        let why = trail::Why::new("deadline", "the run's deadline passed before this org was queried (runs.deadline)");
        let line = Attempt { why: Some(why), steps: vec![trail::Step::Deadline], ..Attempt::bare(Outcome::Deadline) };
        let mut ended = Vec::new();
        for run_id in overdue {
            let run_id = RunId(run_id);
            let n = self.end_open_orgs(&run_id, Outcome::Deadline, &line).await?;
            ended.push((run_id, n));
        }
        Ok(ended)
    }

    /// Deletes the runs created more than `runs.retention` ago, and their orgs; returns how many.
    pub async fn purge_expired(&self) -> Result<u64, Error> {
        let mut w = self.db.write("deleting expired runs").await?;
        let before = w.now_ms - i64::try_from(self.retention.as_millis()).unwrap_or(i64::MAX);
        for table in ["projector_run_orgs", "projector_run_completed"] {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "DELETE FROM {table} WHERE run_id IN (SELECT run_id FROM projector_runs WHERE created_ms < ?1)"
            )))
            .bind(before)
            .execute(&mut *w.tx)
            .await
            .map_err(w.err())?;
        }
        let runs =
            sqlx::query("DELETE FROM projector_runs WHERE created_ms < ?1").bind(before).execute(&mut *w.tx).await.map_err(w.err())?;
        w.commit().await?;
        Ok(runs.rows_affected())
    }
}

/// One org's record decided inside `w`, as `lua/run_record.lua` decides it.
async fn record_in(w: &mut Write, run_id: &RunId, org: OrgId, attempt: &Attempt) -> Result<Recorded, Error> {
    let run: Option<(i64, i64, Option<i64>)> =
        sqlx::query_as("SELECT orgs_total, accounted, finished_ms FROM projector_runs WHERE run_id = ?1")
            .bind(&run_id.0)
            .fetch_optional(&mut *w.tx)
            .await
            .map_err(w.err())?;
    let Some((orgs_total, accounted, finished_ms)) = run else { return Ok(Recorded::UnknownRun) };
    let row: Option<(Option<String>, i64, String)> =
        sqlx::query_as("SELECT outcome, attempt, trail FROM projector_run_orgs WHERE run_id = ?1 AND org_id = ?2")
            .bind(&run_id.0)
            .bind(org_i64(org))
            .fetch_optional(&mut *w.tx)
            .await
            .map_err(w.err())?;
    let Some((ended, current, trail_text)) = row else { return Ok(Recorded::NotPlanned) };
    if i64::from(attempt.attempt) < current {
        return Ok(Recorded::AlreadyAccounted);
    }
    let counts = match ended.as_deref().and_then(Outcome::parse) {
        None => 1,
        // A query's outcome replaces the cancel or the deadline that came while it ran, so the
        // record says what reached the query service; the org was already counted.
        Some(Outcome::Cancelled | Outcome::Deadline) if !attempt.outcome.not_queried() => 0,
        Some(_) => return Ok(Recorded::AlreadyAccounted),
    };
    let trail_text = append_trail(&trail_text, w.now_ms, &attempt.to_line());
    sqlx::query("UPDATE projector_run_orgs SET outcome = ?3, trail = ?4 WHERE run_id = ?1 AND org_id = ?2")
        .bind(&run_id.0)
        .bind(org_i64(org))
        .bind(attempt.outcome.as_str())
        .bind(trail_text)
        .execute(&mut *w.tx)
        .await
        .map_err(w.err())?;
    let accounted = accounted + counts;
    let finishes = finished_ms.is_none() && accounted >= orgs_total;
    sqlx::query("UPDATE projector_runs SET accounted = ?2, finished_ms = CASE WHEN ?3 THEN ?4 ELSE finished_ms END WHERE run_id = ?1")
        .bind(&run_id.0)
        .bind(accounted)
        .bind(finishes)
        .bind(w.now_ms)
        .execute(&mut *w.tx)
        .await
        .map_err(w.err())?;
    Ok(if finishes { Recorded::FinishedTheRun } else { Recorded::Recorded })
}

/// The trail with one more line (`<ms> <JSON>`, as the Redis record keeps it), keeping the last
/// [`trail::KEPT_ATTEMPTS`].
fn append_trail(trail_text: &str, at_ms: i64, line: &str) -> String {
    let mut lines: Vec<&str> = trail_text.lines().collect();
    let new = format!("{at_ms} {line}");
    lines.push(&new);
    let skip = lines.len().saturating_sub(trail::KEPT_ATTEMPTS);
    lines[skip..].join("\n")
}

fn planned_org((org, batch, projects): (i64, i64, String)) -> PlannedOrg {
    PlannedOrg {
        org: OrgId(u64::try_from(org).unwrap_or(0)),
        batch: u32::try_from(batch).unwrap_or(0),
        projects: projects.split(',').filter_map(|p| p.parse().ok()).map(ProjectId).collect(),
    }
}

/// Org ids are stored as SQLite integers (i64); ids past i64::MAX do not occur (Sentry's are
/// 64-bit signed in its own database).
pub(crate) fn org_i64(org: OrgId) -> i64 {
    i64::try_from(org.0).unwrap_or(i64::MAX)
}

pub(crate) fn at(ms: i64) -> Option<DateTime<Utc>> {
    DateTime::<Utc>::from_timestamp_millis(ms)
}

/// The pacing stored as "size delay_ms configured_ms".
pub(crate) fn pacing_of(stored: &str, orgs_total: i64) -> Option<Pacing> {
    let mut parts = stored.split(' ').map(|p| p.parse::<u64>().ok());
    let (size, delay, configured) = (parts.next()??, parts.next()??, parts.next()??);
    let size = usize::try_from(size).ok().filter(|s| *s > 0)?;
    Some(Pacing {
        size,
        batches: usize::try_from(orgs_total).unwrap_or(0).div_ceil(size),
        delay: Duration::from_millis(delay),
        configured: Duration::from_millis(configured),
        budget: None,
    })
}

impl RunLedger for SqliteRuns {
    fn outcome_of<'a>(&'a self, run_id: &'a RunId, org: OrgId, attempt: u32) -> BoxFuture<'a, Result<Admission, Error>> {
        Box::pin(self.admit(run_id, org, attempt))
    }

    fn record<'a>(&'a self, run_id: &'a RunId, org: OrgId, attempt: &'a Attempt) -> BoxFuture<'a, Result<Recorded, Error>> {
        Box::pin(SqliteRuns::record(self, run_id, org, attempt))
    }

    fn summary<'a>(&'a self, run_id: &'a RunId) -> BoxFuture<'a, Result<Option<RunSummary>, Error>> {
        Box::pin(SqliteRuns::summary(self, run_id, OrgIds::Leave))
    }

    fn stop<'a>(&'a self, run_id: &'a RunId, why: &'a trail::Why) -> BoxFuture<'a, Result<u64, Error>> {
        let line = Attempt { why: Some(why.clone()), steps: vec![trail::Step::Stopped], ..Attempt::bare(Outcome::Failed) };
        Box::pin(async move { self.end_open_orgs(run_id, Outcome::Failed, &line).await })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rollout::Rollout;
    use projector_core::trail::Why;

    async fn runs(dir: &tempfile::TempDir, retention: Duration) -> SqliteRuns {
        let dsn = format!("sqlite://{}", dir.path().join("fleet.db").display());
        SqliteRuns::new(Database::open(&dsn, Duration::from_secs(5)).await.expect("file"), retention)
    }

    fn plan(n: u64) -> Vec<PlannedOrg> {
        (1..=n).map(|o| PlannedOrg { org: OrgId(o), batch: 0, projects: vec![ProjectId(o * 10)] }).collect()
    }

    async fn create(runs: &SqliteRuns, id: &str, orgs: u64) -> RunId {
        let run = RunId(id.to_owned());
        let now = Utc::now();
        assert!(runs.create(&run, now, now + chrono::TimeDelta::hours(1), None, &plan(orgs)).await.expect("create"));
        run
    }

    #[tokio::test]
    async fn the_first_outcome_wins_strangers_are_refused_and_the_last_org_finishes_the_run_once() {
        let dir = tempfile::tempdir().expect("dir");
        let runs = runs(&dir, Duration::from_secs(3600)).await;
        let run = create(&runs, "run-a", 2).await;
        let now = Utc::now();
        assert!(!runs.create(&run, now, now, None, &plan(5)).await.expect("again"), "a replayed tick keeps the run as it is");
        assert_eq!(runs.admit(&run, OrgId(1), 0).await.expect("admit"), Admission::Open);
        assert_eq!(runs.admit(&run, OrgId(9), 0).await.expect("admit"), Admission::NotPlanned);
        assert_eq!(runs.admit(&RunId("nope".into()), OrgId(1), 0).await.expect("admit"), Admission::UnknownRun);
        let done = Attempt::bare(Outcome::Completed);
        assert_eq!(runs.record(&run, OrgId(1), &done).await.expect("record"), Recorded::Recorded);
        assert_eq!(runs.record(&run, OrgId(1), &Attempt::bare(Outcome::Failed)).await.expect("dup"), Recorded::AlreadyAccounted);
        assert_eq!(runs.admit(&run, OrgId(1), 0).await.expect("admit"), Admission::Accounted(Outcome::Completed));
        assert_eq!(runs.record(&run, OrgId(9), &done).await.expect("stranger"), Recorded::NotPlanned);
        assert_eq!(runs.record(&RunId("nope".into()), OrgId(1), &done).await.expect("no run"), Recorded::UnknownRun);
        assert_eq!(runs.record(&run, OrgId(2), &Attempt::bare(Outcome::SkippedNoSlot)).await.expect("last"), Recorded::FinishedTheRun);
        let summary = runs.summary(&run, OrgIds::List).await.expect("summary").expect("run");
        assert_eq!((summary.count(Outcome::Completed), summary.count(Outcome::SkippedNoSlot)), (1, 1));
        assert_eq!(summary.skipped_org_ids, vec![OrgId(2)]);
        assert_eq!(runs.overview(&run).await.expect("overview").expect("run").state(), crate::run_record::RunState::Done);
        // The trail keeps each attempt, as the Redis record's lines read.
        let org = runs.org(&run, OrgId(1)).await.expect("org").expect("planned");
        assert_eq!(org.trail.len(), 1);
        assert_eq!(org.trail[0].attempt.outcome, Outcome::Completed);
    }

    #[tokio::test]
    async fn a_query_that_ran_past_the_deadline_replaces_it_and_a_retry_supersedes_the_attempt_before() {
        let dir = tempfile::tempdir().expect("dir");
        let runs = runs(&dir, Duration::from_secs(3600)).await;
        let run = create(&runs, "run-b", 3).await;
        let line = Attempt { why: Some(Why::new("deadline", "passed")), ..Attempt::bare(Outcome::Deadline) };
        assert_eq!(runs.end_open_orgs(&run, Outcome::Deadline, &line).await.expect("end"), 3);
        assert!(runs.overview(&run).await.expect("overview").expect("run").finished.is_some(), "every org ended: the run finished");
        // A query already running records what it reached, and the run is not counted twice.
        assert_eq!(runs.record(&run, OrgId(1), &Attempt::bare(Outcome::Completed)).await.expect("late"), Recorded::Recorded);
        assert_eq!(runs.record(&run, OrgId(2), &Attempt::bare(Outcome::SkippedNoSlot)).await.expect("late"), Recorded::AlreadyAccounted);
        let overview = runs.overview(&run).await.expect("overview").expect("run");
        assert_eq!(overview.accounted(), 3);
        assert_eq!(overview.counts.iter().find(|(o, _)| *o == Outcome::Completed).map(|(_, n)| *n), Some(1));
        // runs retry: the deadline orgs get attempt 1; attempt 0 of them is stale from then on.
        let reopened = runs.reopen(&run, &[Outcome::Deadline]).await.expect("reopen");
        assert_eq!(reopened, vec![(OrgId(2), 1), (OrgId(3), 1)]);
        assert!(runs.overview(&run).await.expect("overview").expect("run").finished.is_none(), "open again");
        assert_eq!(runs.admit(&run, OrgId(2), 0).await.expect("admit"), Admission::Superseded);
        assert_eq!(runs.record(&run, OrgId(2), &Attempt::bare(Outcome::Completed)).await.expect("stale"), Recorded::AlreadyAccounted);
        let retry = Attempt { attempt: 1, ..Attempt::bare(Outcome::Completed) };
        assert_eq!(runs.record(&run, OrgId(2), &retry).await.expect("retry"), Recorded::Recorded);
        assert_eq!(runs.record(&run, OrgId(3), &retry).await.expect("retry"), Recorded::FinishedTheRun);
        assert_eq!(runs.org(&run, OrgId(2)).await.expect("org").expect("planned").trail.len(), 2, "both attempts kept");
    }

    #[tokio::test]
    async fn runs_past_retention_are_deleted_with_their_orgs_and_the_pause_and_flag_round_trip() {
        let dir = tempfile::tempdir().expect("dir");
        let runs = runs(&dir, Duration::from_millis(1)).await;
        let run = create(&runs, "run-c", 4).await;
        let before = runs.database().now_ms().await.expect("now");
        while runs.database().now_ms().await.expect("now") <= before + 1 {
            tokio::task::yield_now().await;
        }
        assert_eq!(runs.purge_expired().await.expect("purge"), 1);
        assert!(runs.overview(&run).await.expect("overview").is_none());
        assert!(runs.orgs(&run).await.expect("orgs").is_empty(), "its orgs went with it");
        assert!(runs.paused().await.expect("paused").is_none());
        let first = runs.pause("deploy").await.expect("pause");
        let again = runs.pause("still deploying").await.expect("pause");
        assert_eq!((again.reason.as_str(), again.since_ms), ("still deploying", first.since_ms), "a pause keeps its start");
        assert!(runs.resume().await.expect("resume"));
        assert!(!runs.resume().await.expect("resume"));
        let flag = Rollout { enabled: Some(false), percentage: Some(30), allow: [OrgId(1)].into(), deny: [OrgId(2), OrgId(3)].into() };
        runs.save_rollout(&flag).await.expect("save");
        assert_eq!(runs.rollout().await.expect("load"), flag);
    }

    #[tokio::test]
    async fn a_finished_runs_completed_orgs_are_compacted_and_still_answer_completed_and_when() {
        let dir = tempfile::tempdir().expect("dir");
        let runs = runs(&dir, Duration::from_secs(3600)).await;
        let run = create(&runs, "run-d", 3).await;
        assert_eq!(runs.compact_due(Duration::ZERO).await.expect("compact"), None, "an open run is not compacted");
        runs.record(&run, OrgId(1), &Attempt::bare(Outcome::Completed)).await.expect("record");
        runs.record(&run, OrgId(3), &Attempt::bare(Outcome::Completed)).await.expect("record");
        runs.record(&run, OrgId(2), &Attempt::bare(Outcome::Failed)).await.expect("record");
        let recorded_at = runs.org(&run, OrgId(3)).await.expect("org").expect("planned").trail[0].at_ms;
        assert_eq!(runs.compact_due(Duration::ZERO).await.expect("compact"), Some((run.clone(), 2)));
        assert_eq!(runs.compact_due(Duration::ZERO).await.expect("compact"), None, "once");
        let rows: i64 =
            sqlx::query_scalar("SELECT count(*) FROM projector_run_orgs").fetch_one(runs.database().pool()).await.expect("rows");
        assert_eq!(rows, 1, "only the org that did not complete keeps its row");
        let overview = runs.overview(&run).await.expect("overview").expect("run");
        assert_eq!(overview.counts.iter().find(|(o, _)| *o == Outcome::Completed).map(|(_, n)| *n), Some(2));
        assert_eq!(overview.state(), crate::run_record::RunState::Done);
        let org = runs.org(&run, OrgId(3)).await.expect("org").expect("answers");
        assert_eq!(org.outcome, Some(Outcome::Completed));
        let at = org.compacted_at_ms.flatten().expect("when it was recorded");
        assert!((at - recorded_at).abs() < 1_000, "to the second: {at} vs {recorded_at}");
        assert_eq!(runs.orgs(&run).await.expect("orgs").iter().map(|o| o.org.0).collect::<Vec<_>>(), vec![1, 2, 3]);
        let summary = runs.summary(&run, OrgIds::List).await.expect("summary").expect("run");
        assert_eq!((summary.count(Outcome::Completed), summary.failed_org_ids.clone()), (2, vec![OrgId(2)]));
        assert_eq!(runs.org(&run, OrgId(2)).await.expect("org").expect("kept").trail.len(), 1, "the failed org keeps its trail");
    }
}
