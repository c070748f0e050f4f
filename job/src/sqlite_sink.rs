//! The projections of a single machine in its SQLite file (`sink.kind = "sqlite"`): one row per
//! org and project, written for the whole org in one transaction and fenced as the Redis and
//! PostgreSQL sinks are: a write is refused whole when a row of its projects holds a later run
//! (first hour), or the same run under a newer slot lease (fencing token; 0 cannot be fenced).

use std::time::Duration;

use futures::future::BoxFuture;
use projector_sqlite::{Database, sqlx};

use crate::error::Error;
use crate::sink::{ProjectionRecord, ProjectionSink};

/// Writes projections to `projector_projections` in the backend's file.
#[derive(Clone)]
pub struct SqliteSink {
    db: Database,
    /// An org's rows from runs older than this before the written one go (projects it no longer has).
    ttl: Duration,
}

/// What one write did.
enum Written {
    Stored,
    Stale { stored_first_hour: i64, stored_token: i64 },
}

impl SqliteSink {
    pub fn new(db: Database, ttl: Duration) -> Self {
        SqliteSink { db, ttl }
    }

    fn failed(&self, e: impl std::fmt::Display) -> Error {
        Error::Sink { target: self.db.file().display().to_string(), detail: e.to_string() }
    }

    async fn write_once(&self, records: &[ProjectionRecord]) -> Result<Written, projector_sqlite::Error> {
        let Some(first) = records.first() else { return Ok(Written::Stored) };
        let (org, first_hour) = (i64::try_from(first.org_id.0).unwrap_or(i64::MAX), first.first_hour.timestamp());
        let token = i64::try_from(first.fencing_token).unwrap_or(i64::MAX);
        let mut w = self.db.write("writing projections").await?;
        for r in records {
            let newer: Option<(i64, i64)> = sqlx::query_as(
                "SELECT first_hour, fencing_token FROM projector_projections WHERE org_id = ?1 AND project_id = ?2
                   AND (first_hour > ?3 OR (first_hour = ?3 AND ?4 > 0 AND fencing_token > ?4))",
            )
            .bind(org)
            .bind(i64::try_from(r.project_id.0).unwrap_or(i64::MAX))
            .bind(first_hour)
            .bind(token)
            .fetch_optional(&mut *w.tx)
            .await
            .map_err(w.err())?;
            if let Some((stored_first_hour, stored_token)) = newer {
                // Nothing of this org is written: the transaction rolls back when dropped.
                return Ok(Written::Stale { stored_first_hour, stored_token });
            }
        }
        for r in records {
            let hourly = serde_json::to_string(&r.hourly).unwrap_or_else(|_| "[]".to_owned());
            sqlx::query(
                "INSERT INTO projector_projections (org_id, project_id, run_id, first_hour, hourly, spike_threshold, fencing_token, written_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                 ON CONFLICT (org_id, project_id) DO UPDATE SET run_id = excluded.run_id, first_hour = excluded.first_hour,
                   hourly = excluded.hourly, spike_threshold = excluded.spike_threshold, fencing_token = excluded.fencing_token,
                   written_ms = excluded.written_ms",
            )
            .bind(org)
            .bind(i64::try_from(r.project_id.0).unwrap_or(i64::MAX))
            .bind(&r.run_id.0)
            .bind(first_hour)
            .bind(hourly)
            .bind(i64::try_from(r.spike_threshold).unwrap_or(i64::MAX))
            .bind(token)
            .bind(w.now_ms)
            .execute(&mut *w.tx)
            .await
            .map_err(w.err())?;
        }
        let prune_before = first_hour.saturating_sub(i64::try_from(self.ttl.as_secs()).unwrap_or(i64::MAX));
        sqlx::query("DELETE FROM projector_projections WHERE org_id = ?1 AND first_hour < ?2")
            .bind(org)
            .bind(prune_before)
            .execute(&mut *w.tx)
            .await
            .map_err(w.err())?;
        w.commit().await?;
        Ok(Written::Stored)
    }

    async fn write_org(&self, records: Vec<ProjectionRecord>) -> Result<(), Error> {
        let Some(first) = records.first().cloned() else { return Ok(()) };
        let written = crate::sink::write_with_retries(first.org_id, || self.write_once(&records), projector_sqlite::Error::is_retryable)
            .await
            .map_err(|(e, attempts)| self.failed(format!("{e} (after {attempts} attempt(s))")))?;
        match written {
            Written::Stored => Ok(()),
            Written::Stale { stored_first_hour, stored_token } => {
                Err(crate::sink::refused_as_stale(&first, stored_first_hour, u64::try_from(stored_token).unwrap_or(0)))
            }
        }
    }
}

impl ProjectionSink for SqliteSink {
    fn write(&self, records: Vec<ProjectionRecord>) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(self.write_org(records))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use projector_shared::projection::Projection;
    use projector_shared::{OrgId, ProjectId, RunId};

    fn record(run: &str, hour: u32, project: u64, token: u64, hourly: Vec<u64>) -> ProjectionRecord {
        let first_hour = chrono::Utc.with_ymd_and_hms(2026, 12, 7, hour, 0, 0).single().expect("hour");
        let projection = Projection { hourly, spike_threshold: 10 };
        ProjectionRecord::new(&RunId(run.to_owned()), OrgId(7), ProjectId(project), first_hour, projection, token)
    }

    async fn stored(db: &Database) -> Vec<(i64, String, String, i64)> {
        sqlx::query_as("SELECT project_id, run_id, hourly, fencing_token FROM projector_projections ORDER BY project_id")
            .fetch_all(db.pool())
            .await
            .expect("rows")
    }

    #[tokio::test]
    async fn writes_are_fenced_by_run_and_token_and_a_refused_write_changes_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let dsn = format!("sqlite://{}", dir.path().join("p.db").display());
        let db = Database::open(&dsn, projector_sqlite::DEFAULT_BUSY_TIMEOUT).await.expect("db");
        let sink = SqliteSink::new(db.clone(), Duration::from_secs(7 * 24 * 3600));
        sink.write(vec![record("r10", 10, 1, 5, vec![1, 2]), record("r10", 10, 2, 5, vec![3])]).await.expect("first");
        // The same run under an older lease: refused whole, though project 3 is new.
        let older = sink.write(vec![record("r10", 10, 1, 4, vec![9]), record("r10", 10, 3, 4, vec![9])]).await;
        assert!(matches!(older, Err(Error::StaleWrite { stored_token: 5, .. })), "{older:?}");
        // An earlier run: refused.
        let earlier = sink.write(vec![record("r09", 9, 2, 99, vec![9])]).await;
        assert!(matches!(earlier, Err(Error::StaleWrite { .. })), "{earlier:?}");
        assert_eq!(stored(&db).await, vec![(1, "r10".to_owned(), "[1,2]".to_owned(), 5), (2, "r10".to_owned(), "[3]".to_owned(), 5)]);
        // A later run overwrites; a project the org no longer has goes once it is older than the ttl.
        let short = SqliteSink::new(db.clone(), Duration::from_secs(3600));
        short.write(vec![record("r12", 12, 1, 1, vec![4])]).await.expect("later run");
        assert_eq!(stored(&db).await, vec![(1, "r12".to_owned(), "[4]".to_owned(), 1)]);
    }
}
