//! Newtypes for the domain's identifiers: organizations, projects and runs.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// An organization, the unit of one spike-projection job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct OrgId(pub u64);

/// A project inside an organization; projections are per project.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ProjectId(pub u64);

/// One fan-out of every organization: derived from the tick so every replica names it the same.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RunId(pub String);

impl RunId {
    /// The run of a cron tick: every scheduler replica derives the same id for the same tick.
    pub fn for_tick(tick: DateTime<Utc>) -> Self {
        RunId(format!("run-{}", tick.format("%Y%m%dT%H%M%SZ")))
    }

    /// A manual run (`run-once`): the tick plus a random suffix, so two manual runs never merge.
    pub fn manual(tick: DateTime<Utc>) -> Self {
        let suffix = uuid::Uuid::new_v4().simple().to_string();
        RunId(format!("run-{}-{}", tick.format("%Y%m%dT%H%M%SZ"), &suffix[..8]))
    }
}

impl fmt::Display for OrgId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl fmt::Display for ProjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl fmt::Display for RunId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn tick_run_ids_are_stable_and_manual_ones_unique() {
        let tick = Utc.with_ymd_and_hms(2026, 11, 22, 13, 0, 0).single().expect("valid time");
        assert_eq!(RunId::for_tick(tick), RunId::for_tick(tick));
        assert_eq!(RunId::for_tick(tick).0, "run-20261122T130000Z");
        assert_ne!(RunId::manual(tick), RunId::manual(tick));
        assert!(RunId::manual(tick).0.starts_with("run-20261122T130000Z-"));
    }
}
