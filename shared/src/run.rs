//! A run's outcomes: every org of a run ends in exactly one recorded outcome, and the summary totals them.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use futures::future::BoxFuture;

use crate::error::Error;
use crate::ids::{OrgId, RunId};
use crate::trail::Attempt;

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
    /// The rate policy (`[rate]`) admitted no start within `rate.max_delay`, or a cooldown after a
    /// 429 was in force; not queried.
    SkippedRatePolicy,
    /// An operator cancelled the run (`projectorctl runs cancel`) before the org ran; not queried.
    Cancelled,
}

impl Outcome {
    pub const ALL: [Outcome; 7] = [
        Outcome::Completed,
        Outcome::SkippedNoSlot,
        Outcome::RateLimited,
        Outcome::Failed,
        Outcome::SlotUnavailable,
        Outcome::SkippedRatePolicy,
        Outcome::Cancelled,
    ];

    /// Parses the name used in run records (`completed`, `skipped_no_slot`, …).
    pub fn parse(name: &str) -> Option<Outcome> {
        Outcome::ALL.into_iter().find(|o| o.as_str() == name)
    }

    /// Whether the org was never queried (no slot, no slot backend, no rate admission, or a
    /// cancelled run): it can simply be run again. The other non-completed outcomes queried and failed.
    pub fn not_queried(self) -> bool {
        matches!(self, Outcome::SkippedNoSlot | Outcome::SlotUnavailable | Outcome::SkippedRatePolicy | Outcome::Cancelled)
    }

    /// The name used in run records, summaries and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Completed => "completed",
            Outcome::SkippedNoSlot => "skipped_no_slot",
            Outcome::RateLimited => "rate_limited",
            Outcome::Failed => "failed",
            Outcome::SlotUnavailable => "slot_unavailable",
            Outcome::SkippedRatePolicy => "skipped_rate_policy",
            Outcome::Cancelled => "cancelled",
        }
    }
}

/// How many orgs ended in each outcome. Shown as `completed=3 skipped_no_slot=0 …`, serialized
/// as one field per outcome, in `Outcome::ALL`'s order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutcomeCounts([u64; Outcome::ALL.len()]);

impl OutcomeCounts {
    pub fn get(&self, outcome: Outcome) -> u64 {
        self.0[outcome as usize]
    }

    pub fn set(&mut self, outcome: Outcome, n: u64) {
        self.0[outcome as usize] = n;
    }

    pub fn add(&mut self, outcome: Outcome) {
        self.0[outcome as usize] += 1;
    }

    /// Orgs with an outcome.
    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }

    /// Every outcome with its count, in `Outcome::ALL`'s order.
    pub fn iter(&self) -> impl Iterator<Item = (Outcome, u64)> + '_ {
        Outcome::ALL.into_iter().map(|o| (o, self.get(o)))
    }
}

impl std::fmt::Display for OutcomeCounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, (outcome, n)) in self.iter().enumerate() {
            let sep = if i == 0 { "" } else { " " };
            write!(f, "{sep}{}={n}", outcome.as_str())?;
        }
        Ok(())
    }
}

impl Serialize for OutcomeCounts {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(Some(Outcome::ALL.len()))?;
        for (outcome, n) in self.iter() {
            map.serialize_entry(outcome.as_str(), &n)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for OutcomeCounts {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Counts;
        impl<'de> serde::de::Visitor<'de> for Counts {
            type Value = OutcomeCounts;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a count per outcome")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<OutcomeCounts, A::Error> {
                let mut counts = OutcomeCounts::default();
                while let Some(key) = map.next_key::<String>()? {
                    match Outcome::parse(&key) {
                        Some(outcome) => counts.set(outcome, map.next_value()?),
                        None => {
                            map.next_value::<serde::de::IgnoredAny>()?;
                        }
                    }
                }
                Ok(counts)
            }
        }
        deserializer.deserialize_map(Counts)
    }
}

/// The totals of one run, as printed and written by `--summary-json`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunSummary {
    pub run_id: String,
    pub orgs_total: u64,
    /// How many orgs ended in each outcome: one JSON field per outcome (`"completed": 3`, …).
    #[serde(flatten)]
    pub outcomes: OutcomeCounts,
    /// The most queries in flight at once during the run, as seen by an independent probe. Only
    /// the embedded run measures it (its queries run in this process); a distributed run's
    /// queries happen in worker processes, so the field is left out rather than reported as 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrent_queries: Option<u64>,
    pub duration_ms: u64,
    /// Orgs never queried (skipped_no_slot, slot_unavailable, skipped_rate_policy, cancelled), so a person can re-run them.
    #[serde(default)]
    pub skipped_org_ids: Vec<OrgId>,
    /// Orgs whose query or store failed (rate_limited, failed).
    #[serde(default)]
    pub failed_org_ids: Vec<OrgId>,
    /// Lines of the organizations file that were skipped: how many, and the first few.
    #[serde(default, skip_serializing_if = "BadLines::is_empty")]
    pub bad_lines: BadLines,
    /// True when the run was interrupted (Ctrl-C) before every org was accounted for.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub interrupted: bool,
}

/// Bad lines of an organizations file, as a summary carries them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BadLines {
    pub count: u64,
    /// The first [`BadLines::SHOWN`], with their 1-based line numbers.
    pub first: Vec<BadLineNote>,
}

/// One bad line: where, and why it was skipped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BadLineNote {
    pub line: usize,
    pub reason: String,
}

impl BadLines {
    pub const SHOWN: usize = 5;

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    pub fn from_file(lines: &[crate::org::BadLine]) -> Self {
        BadLines {
            count: lines.len() as u64,
            first: lines.iter().take(Self::SHOWN).map(|b| BadLineNote { line: b.line, reason: b.reason.clone() }).collect(),
        }
    }
}

/// A run is finished once every one of its orgs (there is at least one) has an outcome.
pub fn is_finished(accounted: u64, orgs_total: u64) -> bool {
    orgs_total > 0 && accounted >= orgs_total
}

impl RunSummary {
    /// Orgs with a recorded outcome.
    pub fn accounted(&self) -> u64 {
        self.outcomes.total()
    }

    /// Every org has an outcome.
    pub fn is_finished(&self) -> bool {
        is_finished(self.accounted(), self.orgs_total)
    }

    /// Files one org's outcome: its total, and its id under the list its outcome belongs to.
    /// The one place both the embedded ledger and the Redis run record build a summary from.
    pub fn add(&mut self, org: OrgId, outcome: Outcome) {
        self.outcomes.add(outcome);
        if outcome.not_queried() {
            self.skipped_org_ids.push(org);
        } else if outcome != Outcome::Completed {
            self.failed_org_ids.push(org);
        }
    }

    /// Sorts the id lists (call after the last [`RunSummary::add`]).
    pub fn sort_ids(&mut self) {
        self.skipped_org_ids.sort();
        self.failed_org_ids.sort();
    }

    /// Orgs that did not complete.
    pub fn not_completed(&self) -> u64 {
        self.accounted() - self.count(Outcome::Completed)
    }

    /// Sets the total of one outcome (from a record that keeps totals, not ids).
    pub fn set_count(&mut self, outcome: Outcome, n: u64) {
        self.outcomes.set(outcome, n);
    }

    pub fn count(&self, outcome: Outcome) -> u64 {
        self.outcomes.get(outcome)
    }
}

/// What recording an outcome did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    /// No such run (expired, or a job naming a run that never existed): nothing recorded.
    UnknownRun,
    /// The org is not in the run's plan: nothing recorded, the run's totals stay true.
    NotPlanned,
    /// The org already had an outcome (a duplicate delivery); nothing changed.
    AlreadyAccounted,
    /// The outcome is recorded.
    Recorded,
    /// The outcome is recorded and it was the run's last org.
    FinishedTheRun,
}

/// Whether a job may run, by its run record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// The org of a planned run has no outcome yet: run the job.
    Open,
    /// Already accounted for (a duplicate delivery): acknowledge without querying.
    Accounted(Outcome),
    /// No such run: refuse without querying.
    UnknownRun,
    /// The org is not in the run's plan: refuse without querying.
    NotPlanned,
    /// A later attempt (`projectorctl runs retry`) owns the org now: this job is stale.
    Superseded,
}

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
    fn stop<'a>(&'a self, _run_id: &'a RunId, _why: &'a crate::trail::Why) -> BoxFuture<'a, Result<u64, Error>> {
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
            "completed=1 skipped_no_slot=1 rate_limited=0 failed=1 slot_unavailable=0 skipped_rate_policy=0 cancelled=0"
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
        // completed 0, skipped_no_slot 1, rate_limited 2, failed 3, slot_unavailable 4, skipped_rate_policy 5, cancelled 6
        assert_eq!(s.skipped_org_ids, [OrgId(1), OrgId(4), OrgId(5), OrgId(6)], "never queried");
        assert_eq!(s.failed_org_ids, [OrgId(2), OrgId(3)], "queried and failed");
        for o in Outcome::ALL {
            assert_eq!(s.count(o), 1);
            assert_eq!(Outcome::parse(o.as_str()), Some(o));
        }
        assert_eq!(s.not_completed(), 6);
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
