//! A run's outcomes: every org of a run ends in exactly one recorded outcome, and the summary totals them.

use serde::{Deserialize, Serialize};

use crate::ids::OrgId;

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
    /// The run's deadline (`runs.deadline`) passed before the org could be queried; not queried
    /// by this run. A try already querying at the deadline replaces it with what it reached.
    Deadline,
}

impl Outcome {
    pub const ALL: [Outcome; 8] = [
        Outcome::Completed,
        Outcome::SkippedNoSlot,
        Outcome::RateLimited,
        Outcome::Failed,
        Outcome::SlotUnavailable,
        Outcome::SkippedRatePolicy,
        Outcome::Cancelled,
        Outcome::Deadline,
    ];

    /// Parses the name used in run records (`completed`, `skipped_no_slot`, …).
    pub fn parse(name: &str) -> Option<Outcome> {
        Outcome::ALL.into_iter().find(|o| o.as_str() == name)
    }

    /// Whether the org was never queried (no slot, no slot backend, no rate admission, a
    /// cancelled run, the run's deadline): it can simply be run again. The other non-completed
    /// outcomes queried and failed.
    pub fn not_queried(self) -> bool {
        matches!(
            self,
            Outcome::SkippedNoSlot | Outcome::SlotUnavailable | Outcome::SkippedRatePolicy | Outcome::Cancelled | Outcome::Deadline
        )
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
            Outcome::Deadline => "deadline",
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
    /// Orgs never queried (skipped_no_slot, slot_unavailable, skipped_rate_policy, cancelled,
    /// deadline), so a person can re-run them.
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
