//! A run's outcomes: every org of a run ends in exactly one recorded outcome, and the summary totals them.

use std::collections::HashMap;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::ids::{OrgId, RunId};

/// How one organization's job ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Projections stored.
    Completed,
    /// No slot within `slots.max_wait`; not queried.
    SkippedNoSlot,
    /// The analytics store refused the query with a 429.
    RateLimited,
    /// Any other error.
    Failed,
    /// The slot backend (Redis) could not be asked; not queried (fail closed).
    SlotUnavailable,
}

impl Outcome {
    pub const ALL: [Outcome; 5] =
        [Outcome::Completed, Outcome::SkippedNoSlot, Outcome::RateLimited, Outcome::Failed, Outcome::SlotUnavailable];

    /// The name used in run records, summaries and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Completed => "completed",
            Outcome::SkippedNoSlot => "skipped_no_slot",
            Outcome::RateLimited => "rate_limited",
            Outcome::Failed => "failed",
            Outcome::SlotUnavailable => "slot_unavailable",
        }
    }
}

/// The totals of one run, as printed and written by `--summary-json`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunSummary {
    pub run_id: String,
    pub orgs_total: u64,
    pub completed: u64,
    pub skipped_no_slot: u64,
    pub rate_limited: u64,
    pub failed: u64,
    pub slot_unavailable: u64,
    /// The most queries in flight at once during the run, as seen by an independent probe.
    pub max_concurrent_queries: u64,
    pub duration_ms: u64,
    /// Orgs that did not complete, by outcome, so a person can re-run them.
    #[serde(default)]
    pub skipped_org_ids: Vec<OrgId>,
    #[serde(default)]
    pub failed_org_ids: Vec<OrgId>,
}

impl RunSummary {
    /// Orgs with a recorded outcome.
    pub fn accounted(&self) -> u64 {
        self.completed + self.skipped_no_slot + self.rate_limited + self.failed + self.slot_unavailable
    }

    pub fn count(&self, outcome: Outcome) -> u64 {
        match outcome {
            Outcome::Completed => self.completed,
            Outcome::SkippedNoSlot => self.skipped_no_slot,
            Outcome::RateLimited => self.rate_limited,
            Outcome::Failed => self.failed,
            Outcome::SlotUnavailable => self.slot_unavailable,
        }
    }
}

/// Records the outcome of each org of one run in memory; the first outcome recorded for an org wins.
#[derive(Debug)]
pub struct MemoryRunLedger {
    run_id: RunId,
    orgs_total: u64,
    outcomes: Mutex<HashMap<OrgId, Outcome>>,
    changed: tokio::sync::Notify,
}

impl MemoryRunLedger {
    pub fn new(run_id: RunId, orgs_total: u64) -> Self {
        MemoryRunLedger { run_id, orgs_total, outcomes: Mutex::new(HashMap::new()), changed: tokio::sync::Notify::new() }
    }

    /// Records `outcome` for `org`; returns false if the org already had one (a duplicate delivery).
    pub fn record(&self, org: OrgId, outcome: Outcome) -> bool {
        let inserted = {
            let mut map = self.outcomes.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            match map.entry(org) {
                std::collections::hash_map::Entry::Occupied(_) => false,
                std::collections::hash_map::Entry::Vacant(v) => {
                    v.insert(outcome);
                    true
                }
            }
        };
        if inserted {
            self.changed.notify_waiters();
        }
        inserted
    }

    /// The outcome recorded for `org`, if any.
    pub fn outcome_of(&self, org: OrgId) -> Option<Outcome> {
        let map = self.outcomes.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        map.get(&org).copied()
    }

    /// Orgs with an outcome so far.
    pub fn accounted(&self) -> u64 {
        let map = self.outcomes.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        map.len() as u64
    }

    /// Resolves once every org of the run has an outcome.
    pub async fn all_accounted(&self) {
        loop {
            let notified = self.changed.notified();
            if self.accounted() >= self.orgs_total {
                return;
            }
            notified.await;
        }
    }

    /// Totals so far; `max_concurrent_queries` and `duration_ms` are the caller's to fill.
    pub fn summary(&self) -> RunSummary {
        let map = self.outcomes.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut s = RunSummary { run_id: self.run_id.0.clone(), orgs_total: self.orgs_total, ..RunSummary::default() };
        for (&org, &outcome) in map.iter() {
            match outcome {
                Outcome::Completed => s.completed += 1,
                Outcome::SkippedNoSlot => {
                    s.skipped_no_slot += 1;
                    s.skipped_org_ids.push(org);
                }
                Outcome::RateLimited => {
                    s.rate_limited += 1;
                    s.failed_org_ids.push(org);
                }
                Outcome::Failed => {
                    s.failed += 1;
                    s.failed_org_ids.push(org);
                }
                Outcome::SlotUnavailable => {
                    s.slot_unavailable += 1;
                    s.skipped_org_ids.push(org);
                }
            }
        }
        s.skipped_org_ids.sort();
        s.failed_org_ids.sort();
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_outcome_wins_and_totals_add_up() {
        let ledger = MemoryRunLedger::new(RunId("run-t".into()), 4);
        assert!(ledger.record(OrgId(1), Outcome::Completed));
        assert!(!ledger.record(OrgId(1), Outcome::Failed), "duplicate delivery ignored");
        assert!(ledger.record(OrgId(2), Outcome::SkippedNoSlot));
        assert!(ledger.record(OrgId(3), Outcome::Failed));
        let s = ledger.summary();
        assert_eq!((s.completed, s.skipped_no_slot, s.failed), (1, 1, 1));
        assert_eq!(s.accounted(), 3);
        assert_eq!(s.skipped_org_ids, [OrgId(2)]);
        assert_eq!(ledger.outcome_of(OrgId(1)), Some(Outcome::Completed));
    }

    #[tokio::test]
    async fn all_accounted_wakes_on_the_last_org() {
        let ledger = std::sync::Arc::new(MemoryRunLedger::new(RunId("run-t".into()), 2));
        let waiter = tokio::spawn({
            let ledger = ledger.clone();
            async move { ledger.all_accounted().await }
        });
        ledger.record(OrgId(1), Outcome::Completed);
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        ledger.record(OrgId(2), Outcome::Completed);
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter).await.expect("woken").expect("joined");
    }
}
