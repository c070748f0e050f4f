//! The PostgreSQL projection store as a `ProjectionSink`: one fenced, batched write per org
//! (`projector_postgres::Store::write_org`), retried while PostgreSQL is briefly unreachable.

use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use projector_postgres::{OrgWrite, ProjectHours, Store, WriteOutcome};
use projector_shared::OrgId;

use crate::error::Error;
use crate::sink::{ProjectionRecord, ProjectionSink};

/// Projects per write call: 24 rows each, so about 48,000 rows per statement at most.
const PROJECTS_PER_CALL: usize = 2_000;

/// Writes projections to the `spike_projections` table.
#[derive(Clone)]
pub struct PostgresSink {
    store: Store,
    ttl: Duration,
}

impl PostgresSink {
    /// Opens the pool and, with `migrate`, applies the schema's migrations: a worker that cannot
    /// reach its store, or finds a schema newer than it knows, says so at start.
    pub async fn open(url: &str, pool: usize, ttl: Duration, migrate: bool) -> Result<Self, Error> {
        let store = Store::new(url, pool).map_err(|e| Error::Sink { target: "sink.postgres_url".to_owned(), detail: e.to_string() })?;
        if migrate {
            let applied = store.migrate().await.map_err(|e| Error::Sink { target: store.target().to_owned(), detail: e.to_string() })?;
            tracing::info!(store = %store.target(), applied = applied.len(), "projection store schema is current");
        }
        Ok(PostgresSink { store, ttl })
    }

    /// Writes the org in calls of at most [`PROJECTS_PER_CALL`] projects, each fenced on its own
    /// projects: a 20,000-project org would otherwise be one 480,000-row statement.
    async fn write_org(&self, records: Vec<ProjectionRecord>) -> Result<(), Error> {
        for chunk in records.chunks(PROJECTS_PER_CALL) {
            self.write_chunk(chunk).await?;
        }
        Ok(())
    }

    async fn write_chunk(&self, records: &[ProjectionRecord]) -> Result<(), Error> {
        let Some(first) = records.first() else { return Ok(()) };
        let ttl = chrono::Duration::from_std(self.ttl).unwrap_or(chrono::Duration::MAX);
        let write = OrgWrite {
            org_id: first.org_id.0,
            run_id: &first.run_id.0,
            first_hour: first.first_hour,
            fencing_token: first.fencing_token,
            prune_before: first.first_hour.checked_sub_signed(ttl).unwrap_or(first.first_hour),
            projects: records
                .iter()
                .map(|r| ProjectHours { project_id: r.project_id.0, spike_threshold: r.spike_threshold, hourly: r.hourly.clone() })
                .collect(),
        };
        let outcome =
            crate::sink::write_with_retries(first.org_id, || self.store.write_org(&write), projector_postgres::Error::is_transient)
                .await
                .map_err(|(e, attempts)| Error::Sink {
                target: self.store.target().to_owned(),
                detail: format!("{e} (after {attempts} attempt(s))"),
            })?;
        match outcome {
            WriteOutcome::Written { .. } => Ok(()),
            WriteOutcome::Stale { stored_first_hour, stored_token } => {
                Err(crate::sink::refused_as_stale(first, stored_first_hour.timestamp(), stored_token))
            }
        }
    }
}

impl ProjectionSink for PostgresSink {
    fn write(&self, records: Vec<ProjectionRecord>) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(self.write_org(records))
    }

    fn fresher(&self, orgs: &[OrgId], first_hour: DateTime<Utc>) -> BoxFuture<'_, Result<Vec<OrgId>, Error>> {
        let ids: Vec<u64> = orgs.iter().map(|o| o.0).collect();
        Box::pin(async move {
            let fresher = self
                .store
                .orgs_fresher_than(&ids, first_hour)
                .await
                .map_err(|e| Error::Sink { target: self.store.target().to_owned(), detail: e.to_string() })?;
            Ok(fresher.into_iter().map(OrgId).collect())
        })
    }
}
