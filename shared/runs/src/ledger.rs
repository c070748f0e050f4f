//! Where a run's outcomes are kept, as the job handler sees it: the [`RunLedger`] trait and the
//! embedded run's in-memory ledger (the Redis one is `run_record::RunRecords`).

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use futures::future::BoxFuture;
use projector_core::ids::{OrgId, RunId};
use projector_core::run::{Admission, Outcome, Recorded, RunSummary};
use projector_core::trail::Attempt;

use crate::error::Error;

/// Where a run's outcomes are kept: in Redis for distributed runs (`run_record::RunRecords`), in
/// memory for the embedded run (`MemoryRunLedger`). The job handler uses only this, so both
/// modes admit, record and total the same way.
pub trait RunLedger: Send + Sync {
    /// Whether attempt `attempt` of (run, org) may run: its run exists, the org is planned, has no
    /// outcome yet, and no later attempt owns it.
    fn outcome_of<'a>(&'a self, run_id: &'a RunId, org: OrgId, attempt: u32) -> BoxFuture<'a, Result<Admission, Error>>;

    /// Records how an org ended, with its trail; the first outcome of an attempt wins, and a stale
    /// attempt records nothing.
    fn record<'a>(&'a self, run_id: &'a RunId, org: OrgId, attempt: &'a Attempt) -> BoxFuture<'a, Result<Recorded, Error>>;

    /// The run's totals so far; `None` if there is no such run.
    fn summary<'a>(&'a self, run_id: &'a RunId) -> BoxFuture<'a, Result<Option<RunSummary>, Error>>;

    /// Ends the run's open orgs as `failed` with `why`: the query service refused the query
    /// itself. Returns how many orgs it ended. In one process (the embedded run) the pipeline's
    /// own record of stopped runs already fails them without a query, so there is nothing to do.
    fn stop<'a>(&'a self, _run_id: &'a RunId, _why: &'a projector_core::trail::Why) -> BoxFuture<'a, Result<u64, Error>> {
        Box::pin(async { Ok(0) })
    }
}

/// One run's outcomes in memory, for the embedded run; the first outcome recorded for an org wins.
#[derive(Debug)]
pub struct MemoryRunLedger {
    run_id: RunId,
    planned: HashSet<OrgId>,
    outcomes: Mutex<HashMap<OrgId, Outcome>>,
    changed: tokio::sync::Notify,
}

impl MemoryRunLedger {
    /// A ledger for the run `run_id` of the orgs `planned`.
    pub fn new(run_id: RunId, planned: impl IntoIterator<Item = OrgId>) -> Self {
        MemoryRunLedger {
            run_id,
            planned: planned.into_iter().collect(),
            outcomes: Mutex::new(HashMap::new()),
            changed: tokio::sync::Notify::new(),
        }
    }

    fn outcomes(&self) -> std::sync::MutexGuard<'_, HashMap<OrgId, Outcome>> {
        self.outcomes.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn admission(&self, run_id: &RunId, org: OrgId) -> Admission {
        if *run_id != self.run_id {
            return Admission::UnknownRun;
        }
        if !self.planned.contains(&org) {
            return Admission::NotPlanned;
        }
        match self.outcomes().get(&org) {
            Some(&outcome) => Admission::Accounted(outcome),
            None => Admission::Open,
        }
    }

    fn insert(&self, run_id: &RunId, org: OrgId, outcome: Outcome) -> Recorded {
        let recorded = match self.admission(run_id, org) {
            Admission::UnknownRun => return Recorded::UnknownRun,
            Admission::NotPlanned => return Recorded::NotPlanned,
            Admission::Accounted(_) | Admission::Superseded => return Recorded::AlreadyAccounted,
            Admission::Open => {
                let mut map = self.outcomes();
                match map.entry(org) {
                    std::collections::hash_map::Entry::Occupied(_) => Recorded::AlreadyAccounted,
                    std::collections::hash_map::Entry::Vacant(v) => {
                        v.insert(outcome);
                        if map.len() == self.planned.len() { Recorded::FinishedTheRun } else { Recorded::Recorded }
                    }
                }
            }
        };
        self.changed.notify_waiters();
        recorded
    }

    /// Orgs with an outcome so far.
    pub fn accounted(&self) -> u64 {
        self.outcomes().len() as u64
    }

    /// Resolves once every org of the run has an outcome.
    pub async fn all_accounted(&self) {
        loop {
            let notified = self.changed.notified();
            if self.accounted() >= self.planned.len() as u64 {
                return;
            }
            notified.await;
        }
    }

    /// Totals so far, with the ids of the orgs that did not complete; `max_concurrent_queries`
    /// and `duration_ms` are the caller's to fill.
    pub fn totals(&self) -> RunSummary {
        let mut s = RunSummary { run_id: self.run_id.0.clone(), orgs_total: self.planned.len() as u64, ..RunSummary::default() };
        for (&org, &outcome) in self.outcomes().iter() {
            s.add(org, outcome);
        }
        s.sort_ids();
        s
    }
}

impl RunLedger for MemoryRunLedger {
    // The embedded run has no retries: every job is attempt 0, and trails are not kept.
    fn outcome_of<'a>(&'a self, run_id: &'a RunId, org: OrgId, _attempt: u32) -> BoxFuture<'a, Result<Admission, Error>> {
        Box::pin(std::future::ready(Ok(self.admission(run_id, org))))
    }

    fn record<'a>(&'a self, run_id: &'a RunId, org: OrgId, attempt: &'a Attempt) -> BoxFuture<'a, Result<Recorded, Error>> {
        Box::pin(std::future::ready(Ok(self.insert(run_id, org, attempt.outcome))))
    }

    fn summary<'a>(&'a self, run_id: &'a RunId) -> BoxFuture<'a, Result<Option<RunSummary>, Error>> {
        Box::pin(std::future::ready(Ok((*run_id == self.run_id).then(|| self.totals()))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_first_outcome_wins_strangers_are_refused_and_totals_add_up() {
        let run = RunId("run-t".into());
        let ledger = MemoryRunLedger::new(run.clone(), (1..=4).map(OrgId));
        assert_eq!(ledger.record(&run, OrgId(1), &Attempt::bare(Outcome::Completed)).await.expect("memory"), Recorded::Recorded);
        assert_eq!(ledger.record(&run, OrgId(1), &Attempt::bare(Outcome::Failed)).await.expect("memory"), Recorded::AlreadyAccounted);
        assert_eq!(ledger.record(&run, OrgId(2), &Attempt::bare(Outcome::SkippedNoSlot)).await.expect("memory"), Recorded::Recorded);
        assert_eq!(ledger.record(&run, OrgId(3), &Attempt::bare(Outcome::Failed)).await.expect("memory"), Recorded::Recorded);
        assert_eq!(ledger.record(&run, OrgId(99), &Attempt::bare(Outcome::Completed)).await.expect("memory"), Recorded::NotPlanned);
        let other = RunId("run-other".into());
        assert_eq!(ledger.record(&other, OrgId(4), &Attempt::bare(Outcome::Completed)).await.expect("memory"), Recorded::UnknownRun);
        assert_eq!(ledger.outcome_of(&other, OrgId(4), 0).await.expect("memory"), Admission::UnknownRun);
        let s = ledger.summary(&run).await.expect("memory").expect("this run");
        assert_eq!((s.count(Outcome::Completed), s.count(Outcome::SkippedNoSlot), s.count(Outcome::Failed)), (1, 1, 1));
        assert_eq!(
            s.outcomes.to_string(),
            "completed=1 skipped_no_slot=1 rate_limited=0 failed=1 slot_unavailable=0 skipped_rate_policy=0 cancelled=0 deadline=0"
        );
        let json = serde_json::to_value(&s).expect("json");
        assert_eq!((json["completed"].as_u64(), json["slot_unavailable"].as_u64()), (Some(1), Some(0)), "one field per outcome: {json}");
        assert_eq!(serde_json::from_value::<RunSummary>(json).expect("loads back"), s);
        assert_eq!(s.accounted(), 3);
        assert_eq!(s.skipped_org_ids, [OrgId(2)]);
        assert_eq!(ledger.outcome_of(&run, OrgId(1), 0).await.expect("memory"), Admission::Accounted(Outcome::Completed));
        assert_eq!(ledger.outcome_of(&run, OrgId(4), 0).await.expect("memory"), Admission::Open);
        assert_eq!(ledger.record(&run, OrgId(4), &Attempt::bare(Outcome::Completed)).await.expect("memory"), Recorded::FinishedTheRun);
    }

    #[test]
    fn every_outcome_is_filed_under_one_list() {
        let mut s = RunSummary::default();
        for (org, outcome) in Outcome::ALL.into_iter().enumerate() {
            s.add(OrgId(org as u64), outcome);
        }
        s.sort_ids();
        // completed 0, skipped_no_slot 1, rate_limited 2, failed 3, slot_unavailable 4, skipped_rate_policy 5, cancelled 6,
        // deadline 7
        assert_eq!(s.skipped_org_ids, [OrgId(1), OrgId(4), OrgId(5), OrgId(6), OrgId(7)], "never queried");
        assert_eq!(s.failed_org_ids, [OrgId(2), OrgId(3)], "queried and failed");
        for o in Outcome::ALL {
            assert_eq!(s.count(o), 1);
            assert_eq!(Outcome::parse(o.as_str()), Some(o));
        }
        assert_eq!(s.not_completed(), 7);
    }

    #[tokio::test]
    async fn all_accounted_wakes_on_the_last_org() {
        let run = RunId("run-t".into());
        let ledger = std::sync::Arc::new(MemoryRunLedger::new(run.clone(), [OrgId(1), OrgId(2)]));
        let waiter = tokio::spawn({
            let ledger = ledger.clone();
            async move { ledger.all_accounted().await }
        });
        ledger.record(&run, OrgId(1), &Attempt::bare(Outcome::Completed)).await.expect("memory");
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        ledger.record(&run, OrgId(2), &Attempt::bare(Outcome::Completed)).await.expect("memory");
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter).await.expect("woken").expect("joined");
    }
}
