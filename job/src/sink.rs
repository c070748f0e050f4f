//! Where projections go: the `ProjectionSink` trait and the JSON-lines sink (one line per org and project).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use projector_shared::projection::Projection;
use projector_shared::{OrgId, ProjectId, RunId};
use serde::{Deserialize, Serialize};

use projector_shared::backoff::Backoff;

use crate::error::Error;

/// One project's projection as stored: keyed by (org, project, hour), stamped with run and fencing token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProjectionRecord {
    pub run_id: RunId,
    pub org_id: OrgId,
    pub project_id: ProjectId,
    /// The first projected hour; `hourly[i]` is for `first_hour + i` hours.
    pub first_hour: DateTime<Utc>,
    pub hourly: Vec<u64>,
    pub spike_threshold: u64,
    /// The slot lease's fencing token; a store may refuse a write older than one it has seen.
    pub fencing_token: u64,
}

impl ProjectionRecord {
    pub fn new(
        run_id: &RunId,
        org_id: OrgId,
        project_id: ProjectId,
        first_hour: DateTime<Utc>,
        projection: Projection,
        fencing_token: u64,
    ) -> Self {
        ProjectionRecord {
            run_id: run_id.clone(),
            org_id,
            project_id,
            first_hour,
            hourly: projection.hourly,
            spike_threshold: projection.spike_threshold,
            fencing_token,
        }
    }
}

/// Stores the projections of one organization.
pub trait ProjectionSink: Send + Sync {
    fn write(&self, records: Vec<ProjectionRecord>) -> BoxFuture<'_, Result<(), Error>>;

    /// Makes everything written so far durable.
    fn flush(&self) -> Result<(), Error> {
        Ok(())
    }

    /// Those of `orgs` whose stored projection starts after `first_hour`: a write for
    /// `first_hour` would be refused as stale, so querying them would be wasted. A replayed past
    /// tick asks before it fans out. A store that cannot tell (a file, the discard sink) names
    /// none, and the fence still refuses the stale writes.
    fn fresher(&self, orgs: &[OrgId], first_hour: DateTime<Utc>) -> BoxFuture<'_, Result<Vec<OrgId>, Error>> {
        let _ = (orgs, first_hour);
        Box::pin(async { Ok(Vec::new()) })
    }
}

/// A write refused by a store's fence, counted: a later run, or the same run under a newer slot
/// lease, already stored this org's projections (the time of a run is its first hour, in seconds).
pub(crate) fn refused_as_stale(record: &ProjectionRecord, stored_first_hour: i64, stored_token: u64) -> Error {
    metrics::counter!(projector_shared::metrics::PROJECTION_STALE_REFUSED_TOTAL).increment(1);
    Error::StaleWrite {
        org_id: record.org_id,
        first_hour: record.first_hour.timestamp(),
        token: record.fencing_token,
        stored_first_hour,
        stored_token,
    }
}

/// Attempts of one projection write when its store fails transiently: 0.2 + 0.4 + 0.8 + 1.6 s of
/// backoff, enough for a connection to be re-made after a store restart.
const WRITE_ATTEMPTS: u32 = 5;
const WRITE_RETRY_FIRST_PAUSE: std::time::Duration = std::time::Duration::from_millis(200);

/// Runs an idempotent write, retrying with backoff while `transient` says the failure may pass
/// (a store restart), rather than turning a blip into the org's outcome. On failure returns the
/// last error and the number of attempts made.
pub(crate) async fn write_with_retries<T, E, F, Fut>(org_id: OrgId, mut write: F, transient: impl Fn(&E) -> bool) -> Result<T, (E, u32)>
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let mut backoff = Backoff::new(WRITE_RETRY_FIRST_PAUSE, WRITE_RETRY_FIRST_PAUSE * 2u32.pow(WRITE_ATTEMPTS - 2));
    let mut attempt = 1;
    loop {
        match write().await {
            Ok(answer) => return Ok(answer),
            Err(e) if transient(&e) && attempt < WRITE_ATTEMPTS => {
                tracing::debug!(org_id = %org_id, attempt, error = %e, "projection write failed; retrying");
                tokio::time::sleep(backoff.next_pause()).await;
                attempt += 1;
            }
            Err(e) => return Err((e, attempt)),
        }
    }
}

/// Appends one JSON line per record to a file: for embedded runs and debugging.
#[derive(Debug)]
pub struct JsonLinesSink {
    path: PathBuf,
    file: Mutex<std::io::BufWriter<std::fs::File>>,
}

impl JsonLinesSink {
    /// Creates (or truncates) the file.
    pub fn create(path: &Path) -> Result<Self, Error> {
        let file = std::fs::File::create(path).map_err(|e| Error::Sink {
            target: path.display().to_string(),
            detail: format!("{e} (check that the directory exists and is writable)"),
        })?;
        Ok(JsonLinesSink { path: path.to_owned(), file: Mutex::new(std::io::BufWriter::new(file)) })
    }

    fn sink_error(&self, e: impl std::fmt::Display) -> Error {
        Error::Sink { target: self.path.display().to_string(), detail: e.to_string() }
    }
}

impl ProjectionSink for JsonLinesSink {
    fn write(&self, records: Vec<ProjectionRecord>) -> BoxFuture<'_, Result<(), Error>> {
        let result = (|| {
            let mut lines = Vec::new();
            for r in &records {
                serde_json::to_writer(&mut lines, r).map_err(|e| self.sink_error(e))?;
                lines.push(b'\n');
            }
            // One write per org keeps an org's lines together when many jobs write at once.
            let mut file = self.file.lock().unwrap_or_else(|p| p.into_inner());
            file.write_all(&lines).map_err(|e| self.sink_error(e))
        })();
        Box::pin(async move { result })
    }

    fn flush(&self) -> Result<(), Error> {
        let mut file = self.file.lock().unwrap_or_else(|p| p.into_inner());
        file.flush().map_err(|e| self.sink_error(e))
    }
}

/// Keeps nothing: for runs that only want the summary.
#[derive(Debug, Default)]
pub struct DiscardSink;

impl ProjectionSink for DiscardSink {
    fn write(&self, _records: Vec<ProjectionRecord>) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(async { Ok(()) })
    }
}
