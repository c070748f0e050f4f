//! The query service's own numbers for Projector's referrer, as its answers report them
//! (`ReferrerGuardRailPolicy` in Snuba's `quota_allowance`): the type, and the latest this
//! process heard, which its heartbeat publishes so `status` can show the fleet's freshest.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The referrer's numbers at the service, from one answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServiceQuota {
    /// Queries of this referrer running at the service, from every caller; -1 when the service's
    /// own counter failed (it then fails open).
    pub quota_used: i64,
    /// The limit in force for the referrer, overrides included.
    pub rejection_threshold: i64,
    /// Above this many, the service throttles the referrer's queries (fewer threads).
    pub throttle_threshold: i64,
}

impl ServiceQuota {
    /// How many of the referrer's running queries are not the fleet's, given how many slots the
    /// fleet holds (each held slot is at most one running query). `None` when the service's
    /// counter failed.
    pub fn others(&self, fleet_in_flight: u64) -> Option<i64> {
        (self.quota_used >= 0).then(|| (self.quota_used - i64::try_from(fleet_in_flight).unwrap_or(i64::MAX)).max(0))
    }

    /// How many more than the fleet's own the referrer may run before a warning: a tenth of the
    /// limit, at least 5 (queries starting and ending between two reads blur the count).
    pub fn others_margin(&self) -> i64 {
        (self.rejection_threshold / 10).max(5)
    }
}

static LATEST: Mutex<Option<(ServiceQuota, Instant)>> = Mutex::new(None);

/// Records the numbers of an answer this process just read.
pub fn heard(quota: ServiceQuota) {
    *LATEST.lock().unwrap_or_else(|p| p.into_inner()) = Some((quota, Instant::now()));
}

/// The latest numbers this process heard, and how long ago.
pub fn latest() -> Option<(ServiceQuota, Duration)> {
    LATEST.lock().unwrap_or_else(|p| p.into_inner()).map(|(q, at)| (q, at.elapsed()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn others_are_the_count_beyond_the_fleets_slots() {
        let q = ServiceQuota { quota_used: 40, rejection_threshold: 100, throttle_threshold: 66 };
        assert_eq!((q.others(30), q.others(50), q.others_margin()), (Some(10), Some(0), 10));
        assert_eq!(ServiceQuota { quota_used: -1, ..q }.others(3), None, "the service's counter failed");
        assert_eq!(ServiceQuota { rejection_threshold: 20, ..q }.others_margin(), 5);
    }
}
