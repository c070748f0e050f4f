//! Compaction of a finished run on the SQLite file, by the rule of the Redis record
//! (`compact.rs`): `runs.completed_detail` after the run finished, its completed orgs leave their
//! rows (outcome, plan entry, trail: about 440 B each) for one packed list per run of (org, when
//! its outcome was recorded), a few bytes each. Orgs that did not complete keep everything for
//! `runs.retention`; a completed org still answers "completed" and when. The list is packed as
//! the Redis record packs its blocks (`compact::pack`: org gaps and seconds after the run began).

use std::time::Duration;

use projector_core::ids::{OrgId, RunId};
use projector_sqlite::{Write, sqlx};

use crate::compact::CompactedOrg;
use crate::error::Error;
use crate::sqlite::SqliteRuns;

/// Completed orgs moved per transaction: the file's lock is never held for long.
const ORGS_PER_STEP: i64 = 20_000;

impl SqliteRuns {
    /// Compacts the completed orgs of one run that finished more than `after` ago; returns the
    /// run and how many orgs it compacted, `None` when no run is due.
    pub async fn compact_due(&self, after: Duration) -> Result<Option<(RunId, u64)>, Error> {
        let db = self.database();
        let before = db.now_ms().await? - i64::try_from(after.as_millis()).unwrap_or(i64::MAX);
        let due: Option<String> = sqlx::query_scalar(
            "SELECT r.run_id FROM projector_runs r WHERE r.finished_ms IS NOT NULL AND r.finished_ms <= ?1
               AND EXISTS (SELECT 1 FROM projector_run_orgs o WHERE o.run_id = r.run_id AND o.outcome = 'completed') LIMIT 1",
        )
        .bind(before)
        .fetch_optional(db.pool())
        .await
        .map_err(db.err("looking for finished runs to compact"))?;
        let Some(run_id) = due.map(RunId) else { return Ok(None) };
        let mut compacted = 0;
        loop {
            let mut w = db.write("compacting a finished run").await?;
            let moved = compact_step(&mut w, &run_id).await?;
            w.commit().await?;
            compacted += moved;
            if moved < u64::try_from(ORGS_PER_STEP).unwrap_or(u64::MAX) {
                return Ok(Some((run_id, compacted)));
            }
        }
    }

    /// The run's compacted orgs, by org.
    pub async fn compacted_orgs(&self, run_id: &RunId) -> Result<Vec<CompactedOrg>, Error> {
        let db = self.database();
        let stored: Option<Vec<u8>> = sqlx::query_scalar("SELECT orgs FROM projector_run_completed WHERE run_id = ?1")
            .bind(&run_id.0)
            .fetch_optional(db.pool())
            .await
            .map_err(db.err(format!("reading the compacted orgs of run {run_id}")))?;
        let began = self.began_ms(run_id).await?;
        Ok(stored.map(|b| unpacked(&b, began)).unwrap_or_default())
    }

    async fn began_ms(&self, run_id: &RunId) -> Result<i64, Error> {
        let db = self.database();
        let began: Option<i64> = sqlx::query_scalar("SELECT created_ms FROM projector_runs WHERE run_id = ?1")
            .bind(&run_id.0)
            .fetch_optional(db.pool())
            .await
            .map_err(db.err(format!("reading run {run_id}")))?;
        Ok(began.unwrap_or(0))
    }

    /// How many of the run's orgs are compacted (all completed).
    pub(crate) async fn compacted_count(&self, run_id: &RunId) -> Result<u64, Error> {
        let db = self.database();
        let n: Option<i64> = sqlx::query_scalar("SELECT count FROM projector_run_completed WHERE run_id = ?1")
            .bind(&run_id.0)
            .fetch_optional(db.pool())
            .await
            .map_err(db.err(format!("reading run {run_id}")))?;
        Ok(n.and_then(|n| u64::try_from(n).ok()).unwrap_or(0))
    }
}

/// Moves up to [`ORGS_PER_STEP`] completed orgs of the run into its packed list; returns how many.
async fn compact_step(w: &mut Write, run_id: &RunId) -> Result<u64, Error> {
    let rows: Vec<(i64, String)> =
        sqlx::query_as("SELECT org_id, trail FROM projector_run_orgs WHERE run_id = ?1 AND outcome = 'completed' ORDER BY org_id LIMIT ?2")
            .bind(&run_id.0)
            .bind(ORGS_PER_STEP)
            .fetch_all(&mut *w.tx)
            .await
            .map_err(w.err())?;
    if rows.is_empty() {
        return Ok(0);
    }
    let stored: Option<Vec<u8>> = sqlx::query_scalar("SELECT orgs FROM projector_run_completed WHERE run_id = ?1")
        .bind(&run_id.0)
        .fetch_optional(&mut *w.tx)
        .await
        .map_err(w.err())?;
    let began: i64 = sqlx::query_scalar("SELECT created_ms FROM projector_runs WHERE run_id = ?1")
        .bind(&run_id.0)
        .fetch_one(&mut *w.tx)
        .await
        .map_err(w.err())?;
    let mut orgs: Vec<(u64, u64)> = stored.map(|b| crate::compact::unpack(&b)).unwrap_or_default();
    orgs.extend(rows.iter().map(|(org, trail)| {
        // The last attempt's line starts with the time it was recorded; kept as 1 + seconds
        // after the run began (0: not known).
        let at: Option<i64> = trail.lines().last().and_then(|l| l.split_once(' ')).and_then(|(at, _)| at.parse().ok());
        let secs = at.map_or(0, |at| u64::try_from((at - began).max(0) / 1_000).unwrap_or(0) + 1);
        (u64::try_from(*org).unwrap_or(0), secs)
    }));
    orgs.sort_by_key(|(org, _)| *org);
    orgs.dedup_by_key(|(org, _)| *org);
    sqlx::query("INSERT OR REPLACE INTO projector_run_completed (run_id, orgs, count) VALUES (?1, ?2, ?3)")
        .bind(&run_id.0)
        .bind(crate::compact::pack(&orgs))
        .bind(i64::try_from(orgs.len()).unwrap_or(i64::MAX))
        .execute(&mut *w.tx)
        .await
        .map_err(w.err())?;
    let last = rows.last().map_or(0, |(org, _)| *org);
    let moved = sqlx::query("DELETE FROM projector_run_orgs WHERE run_id = ?1 AND outcome = 'completed' AND org_id <= ?2")
        .bind(&run_id.0)
        .bind(last)
        .execute(&mut *w.tx)
        .await
        .map_err(w.err())?;
    Ok(moved.rows_affected())
}

/// The compacted orgs of a stored list, with their times from the run's start.
fn unpacked(bytes: &[u8], began: i64) -> Vec<CompactedOrg> {
    crate::compact::unpack(bytes)
        .into_iter()
        .map(|(org, at)| CompactedOrg { org: OrgId(org), at_ms: crate::run_record::RunRecords::at_ms(began, at) })
        .collect()
}
