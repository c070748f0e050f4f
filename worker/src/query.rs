//! Where hourly event counts come from: the `QuerySource` trait and the built-in synthetic source.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use projector_shared::synthetic::{hourly_counts, synthetic_projects};
use projector_shared::{OrgId, ProjectId};

use crate::error::Error;

/// Asks for the hourly counts of an organization's projects over the window ending at `end`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryRequest {
    pub org_id: OrgId,
    /// Empty: every project of the organization.
    pub project_ids: Vec<ProjectId>,
    /// Exclusive end of the window, on an hour boundary.
    pub end: DateTime<Utc>,
    pub hours: usize,
}

/// Hourly counts per project, oldest hour first.
pub type OrgHistory = BTreeMap<ProjectId, Vec<u64>>;

/// A query's answer: the history, and whether the service flagged the referrer as throttled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub history: OrgHistory,
    pub throttled: bool,
}

/// The analytics store, as a job sees it.
pub trait QuerySource: Send + Sync {
    fn hourly_counts(&self, request: &HistoryRequest) -> BoxFuture<'_, Result<OrgHistory, Error>>;

    /// The history with what the service said about it; sources that cannot throttle keep this.
    fn answer<'a>(&'a self, request: &'a HistoryRequest) -> BoxFuture<'a, Result<Answer, Error>> {
        Box::pin(async move { Ok(Answer { history: self.hourly_counts(request).await?, throttled: false }) })
    }
}

/// Deterministic synthetic counts after a fixed latency; stands in for the analytics store.
#[derive(Debug, Clone)]
pub struct SyntheticQuery {
    pub latency: Duration,
}

impl QuerySource for SyntheticQuery {
    fn hourly_counts(&self, request: &HistoryRequest) -> BoxFuture<'_, Result<OrgHistory, Error>> {
        let request = request.clone();
        Box::pin(async move {
            tokio::time::sleep(self.latency).await;
            let projects = if request.project_ids.is_empty() { synthetic_projects(request.org_id) } else { request.project_ids.clone() };
            let end_hour = request.end.timestamp().div_euclid(3600);
            Ok(projects.into_iter().map(|p| (p, hourly_counts(request.org_id, p, end_hour, request.hours))).collect())
        })
    }
}
