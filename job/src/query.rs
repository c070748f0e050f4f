//! Where hourly counts come from: the `QuerySource` trait (one page of rows per call), the page
//! plan that reads an org's whole window, and the built-in synthetic source.

use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use futures::future::BoxFuture;
use projector_shared::synthetic::{hourly_counts, synthetic_projects};
use projector_shared::{OrgId, ProjectId};

use crate::error::Error;

/// The most rows one SnQL query may return (`MAX_LIMIT` in Snuba's `snuba/query/snql/parser.py`).
pub const MAX_PAGE_ROWS: usize = 10_000;

/// One page of one organization's hourly counts: some of its projects over `[start, end)`,
/// ordered by project then hour, `limit` rows from `offset`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageRequest {
    pub org_id: OrgId,
    /// This page's projects; empty: every project of the organization.
    pub project_ids: Vec<ProjectId>,
    /// Inclusive, on an hour boundary.
    pub start: DateTime<Utc>,
    /// Exclusive, on an hour boundary.
    pub end: DateTime<Utc>,
    pub limit: usize,
    pub offset: usize,
}

/// One row: a project's count in one hour (Unix hour: seconds / 3600).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Row {
    pub project_id: ProjectId,
    pub hour: i64,
    pub count: u64,
}

pub use projector_shared::service::ServiceQuota;

/// A page's rows and what the service said alongside them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Page {
    pub rows: Vec<Row>,
    /// The referrer policy's numbers, when the service sent them.
    pub quota: Option<ServiceQuota>,
    /// The service flagged the referrer as throttled (its early warning before rejections).
    pub throttled: bool,
}

/// The analytics store, as a job sees it.
pub trait QuerySource: Send + Sync {
    /// One page of rows, ordered by project then hour.
    fn page<'a>(&'a self, request: &'a PageRequest) -> BoxFuture<'a, Result<Page, Error>>;
}

/// How an org's window is read: its projects in groups small enough that one page holds a
/// group's every hour, each group paged on (`OFFSET`) only if a page comes back full.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryPlan {
    pub org_id: OrgId,
    /// Empty: every project of the org, paged by `OFFSET` alone.
    pub project_ids: Vec<ProjectId>,
    pub end: DateTime<Utc>,
    pub hours: usize,
    /// Rows per page, at most [`MAX_PAGE_ROWS`].
    pub page_rows: usize,
}

impl HistoryPlan {
    pub fn start(&self) -> DateTime<Utc> {
        self.end - TimeDelta::hours(i64::try_from(self.hours).unwrap_or(i64::MAX))
    }

    /// Projects per query: as many as fit a page with every hour of each (at least one).
    pub fn projects_per_query(&self) -> usize {
        (self.page_rows.saturating_sub(1) / self.hours.max(1)).max(1)
    }

    /// The project groups, each read by one query unless its page comes back full; one empty
    /// group when the org's projects are not known.
    pub fn groups(&self) -> Vec<&[ProjectId]> {
        if self.project_ids.is_empty() {
            return vec![&[]];
        }
        self.project_ids.chunks(self.projects_per_query()).collect()
    }

    /// The first page of a group.
    pub fn first_page(&self, group: &[ProjectId]) -> PageRequest {
        PageRequest {
            org_id: self.org_id,
            project_ids: group.to_vec(),
            start: self.start(),
            end: self.end,
            limit: self.page_rows,
            offset: 0,
        }
    }
}

/// Deterministic synthetic counts after a fixed latency; stands in for the analytics store.
#[derive(Debug, Clone)]
pub struct SyntheticQuery {
    pub latency: Duration,
}

impl QuerySource for SyntheticQuery {
    fn page<'a>(&'a self, request: &'a PageRequest) -> BoxFuture<'a, Result<Page, Error>> {
        Box::pin(async move {
            tokio::time::sleep(self.latency).await;
            Ok(Page { rows: synthetic_rows(request), quota: None, throttled: false })
        })
    }
}

/// The rows the analytics store would hold for `request` in the synthetic data set: hours with
/// no events left out, as Snuba leaves them out.
pub fn synthetic_rows(request: &PageRequest) -> Vec<Row> {
    let mut projects = if request.project_ids.is_empty() { synthetic_projects(request.org_id) } else { request.project_ids.clone() };
    // Snuba orders by project (ORDER BY project_id): so does this source.
    let hours = usize::try_from((request.end - request.start).num_hours()).unwrap_or(0);
    let end_hour = request.end.timestamp().div_euclid(3600);
    let start_hour = request.start.timestamp().div_euclid(3600);
    projects.sort_unstable();
    projects.dedup();
    projects
        .into_iter()
        .flat_map(|p| {
            hourly_counts(request.org_id, p, end_hour, hours)
                .into_iter()
                .enumerate()
                .filter(|(_, count)| *count > 0)
                .map(move |(i, count)| Row { project_id: p, hour: start_hour + i as i64, count })
        })
        .skip(request.offset)
        .take(request.limit)
        .collect()
}
