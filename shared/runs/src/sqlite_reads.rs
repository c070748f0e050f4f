//! Reading the run records on the SQLite file, for `run-once --wait`, the ledger's summary and
//! `projectorctl`: a run's overview and totals, its orgs with their trails (compacted orgs
//! included), recent and open runs.

use std::time::Duration;

use projector_core::ids::{OrgId, RunId};
use projector_core::run::{Outcome, RunSummary};
use projector_core::trail;
use projector_sqlite::sqlx;

use crate::error::Error;
use crate::run_record::{OrgIds, OrgRecord, RunOverview};
use crate::sqlite::{SqliteRuns, at, org_i64, pacing_of};

impl SqliteRuns {
    /// The run's totals, and with [`OrgIds::List`] the ids of the orgs that did not complete.
    pub async fn summary(&self, run_id: &RunId, ids: OrgIds) -> Result<Option<RunSummary>, Error> {
        let Some(overview) = self.overview(run_id).await? else { return Ok(None) };
        let mut summary = RunSummary { run_id: run_id.0.clone(), orgs_total: overview.orgs_total, ..RunSummary::default() };
        match ids {
            OrgIds::Leave => {
                for (outcome, n) in &overview.counts {
                    summary.set_count(*outcome, *n);
                }
            }
            OrgIds::List => {
                let rows: Vec<(i64, String)> =
                    sqlx::query_as("SELECT org_id, outcome FROM projector_run_orgs WHERE run_id = ?1 AND outcome IS NOT NULL")
                        .bind(&run_id.0)
                        .fetch_all(self.db.pool())
                        .await
                        .map_err(self.db.err(format!("reading the orgs of run {run_id}")))?;
                for (org, outcome) in rows {
                    if let Some(outcome) = Outcome::parse(&outcome) {
                        summary.add(OrgId(u64::try_from(org).unwrap_or(0)), outcome);
                    }
                }
                // Completed orgs compacted after runs.completed_detail left the per-org rows.
                let compacted = self.compacted_count(run_id).await?;
                summary.set_count(Outcome::Completed, summary.count(Outcome::Completed) + compacted);
                summary.sort_ids();
            }
        }
        if let (Some(end), Some(start)) = (overview.finished, overview.started()) {
            summary.duration_ms = u64::try_from((end - start).num_milliseconds()).unwrap_or(0);
        }
        Ok(Some(summary))
    }

    /// Whether the run has finished (every org accounted), `None` when there is no such run.
    pub async fn finished(&self, run_id: &RunId) -> Result<Option<bool>, Error> {
        // One row read: `run-once --wait` asks this ten times a second.
        let finished: Option<Option<i64>> = sqlx::query_scalar("SELECT finished_ms FROM projector_runs WHERE run_id = ?1")
            .bind(&run_id.0)
            .fetch_optional(self.db.pool())
            .await
            .map_err(self.db.err(format!("reading run {run_id}")))?;
        Ok(finished.map(|f| f.is_some()))
    }

    /// The most recent runs (by tick), newest first, at most `limit`.
    pub async fn recent(&self, limit: usize) -> Result<Vec<RunOverview>, Error> {
        let ids: Vec<String> = sqlx::query_scalar("SELECT run_id FROM projector_runs ORDER BY tick_ms DESC, created_ms DESC LIMIT ?1")
            .bind(i64::try_from(limit.max(1)).unwrap_or(i64::MAX))
            .fetch_all(self.db.pool())
            .await
            .map_err(self.db.err("listing runs"))?;
        let mut runs = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(run) = self.overview(&RunId(id)).await? {
                runs.push(run);
            }
        }
        Ok(runs)
    }

    /// Every run not finished and not cancelled, newest first.
    pub async fn open_runs(&self) -> Result<Vec<RunOverview>, Error> {
        let ids: Vec<String> = sqlx::query_scalar(
            "SELECT run_id FROM projector_runs WHERE finished_ms IS NULL AND cancelled_ms IS NULL ORDER BY tick_ms DESC",
        )
        .fetch_all(self.db.pool())
        .await
        .map_err(self.db.err("listing open runs"))?;
        let mut runs = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(run) = self.overview(&RunId(id)).await? {
                runs.push(run);
            }
        }
        Ok(runs)
    }

    /// One run's overview; `None` if there is no such run.
    pub async fn overview(&self, run_id: &RunId) -> Result<Option<RunOverview>, Error> {
        let err = || self.db.err(format!("reading run {run_id}"));
        type Row = (i64, i64, i64, Option<i64>, Option<String>, Option<i64>, Option<i64>, Option<i64>, i64);
        let row: Option<Row> = sqlx::query_as(
            "SELECT tick_ms, created_ms, orgs_total, deadline_ms, pacing, fanned_out_ms, finished_ms, cancelled_ms, retried
             FROM projector_runs WHERE run_id = ?1",
        )
        .bind(&run_id.0)
        .fetch_optional(self.db.pool())
        .await
        .map_err(err())?;
        let Some((tick, created, total, deadline, pacing, fanned_out, finished, cancelled, retried)) = row else { return Ok(None) };
        let counted: Vec<(String, i64)> =
            sqlx::query_as("SELECT outcome, count(*) FROM projector_run_orgs WHERE run_id = ?1 AND outcome IS NOT NULL GROUP BY outcome")
                .bind(&run_id.0)
                .fetch_all(self.db.pool())
                .await
                .map_err(err())?;
        let compacted = self.compacted_count(run_id).await?;
        let count = |o: Outcome| {
            let rows = counted.iter().find(|(name, _)| name == o.as_str()).map_or(0, |(_, n)| u64::try_from(*n).unwrap_or(0));
            rows + if o == Outcome::Completed { compacted } else { 0 }
        };
        let orgs_total = u64::try_from(total).unwrap_or(0);
        Ok(Some(RunOverview {
            run_id: run_id.0.clone(),
            tick: at(tick),
            orgs_total,
            counts: Outcome::ALL.iter().map(|o| (*o, count(*o))).collect(),
            fanned_out: fanned_out.and_then(at),
            finished: finished.and_then(at),
            cancelled: cancelled.and_then(at),
            retried: u64::try_from(retried).unwrap_or(0),
            skipped: None,
            deadline: deadline.and_then(at),
            created: at(created),
            pacing: pacing.as_deref().and_then(|p| pacing_of(p, total)),
        }))
    }

    /// Every org of the run's plan with its outcome, open attempt and trail, sorted by org.
    pub async fn orgs(&self, run_id: &RunId) -> Result<Vec<OrgRecord>, Error> {
        let rows: Vec<(i64, Option<String>, i64, String)> =
            sqlx::query_as("SELECT org_id, outcome, attempt, trail FROM projector_run_orgs WHERE run_id = ?1 ORDER BY org_id")
                .bind(&run_id.0)
                .fetch_all(self.db.pool())
                .await
                .map_err(self.db.err(format!("reading the orgs of run {run_id}")))?;
        let mut orgs: Vec<OrgRecord> = rows.into_iter().map(org_record).collect();
        orgs.extend(self.compacted_orgs(run_id).await?.into_iter().map(compacted_record));
        orgs.sort_by_key(|o| o.org);
        Ok(orgs)
    }

    /// One org of a run; `None` if the run does not exist or did not plan it.
    pub async fn org(&self, run_id: &RunId, org: OrgId) -> Result<Option<OrgRecord>, Error> {
        let row: Option<(i64, Option<String>, i64, String)> =
            sqlx::query_as("SELECT org_id, outcome, attempt, trail FROM projector_run_orgs WHERE run_id = ?1 AND org_id = ?2")
                .bind(&run_id.0)
                .bind(org_i64(org))
                .fetch_optional(self.db.pool())
                .await
                .map_err(self.db.err(format!("reading org {org} of run {run_id}")))?;
        match row {
            Some(row) => Ok(Some(org_record(row))),
            None => Ok(self.compacted_orgs(run_id).await?.into_iter().find(|c| c.org == org).map(compacted_record)),
        }
    }

    /// Waits until the run finishes, at most `wait`; `true` when it did. Other processes finish
    /// it, so this polls the row (every 100 ms: a summary that late is not noticed).
    pub async fn wait_finished(&self, run_id: &RunId, wait: Duration) -> Result<bool, Error> {
        let until = tokio::time::Instant::now() + wait;
        loop {
            if self.finished(run_id).await? != Some(false) {
                return Ok(true);
            }
            if tokio::time::Instant::now() >= until {
                return Ok(false);
            }
            tokio::time::sleep(Duration::from_millis(100).min(until - tokio::time::Instant::now())).await;
        }
    }
}

/// A compacted org as the record answers for it: completed, and when.
fn compacted_record(c: crate::compact::CompactedOrg) -> OrgRecord {
    OrgRecord { org: c.org, outcome: Some(Outcome::Completed), attempt: 0, trail: Vec::new(), compacted_at_ms: Some(c.at_ms) }
}

fn org_record((org, outcome, attempt, trail_text): (i64, Option<String>, i64, String)) -> OrgRecord {
    OrgRecord {
        org: OrgId(u64::try_from(org).unwrap_or(0)),
        outcome: outcome.as_deref().and_then(Outcome::parse),
        attempt: u32::try_from(attempt).unwrap_or(0),
        trail: trail::parse(&trail_text),
        compacted_at_ms: None,
    }
}
