//! Batch planning: organizations into batches of `batch.size`, batch k released at k x the delay
//! in force: `batch.delay`, or less when that would not release every org in time ([`Pacing`]).

use std::num::NonZeroUsize;
use std::time::Duration;

use crate::ids::OrgId;

/// One batch of organizations and when it becomes runnable, relative to the tick.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    pub index: u32,
    pub release_after: Duration,
    pub orgs: Vec<OrgId>,
}

/// The share of the time from a run's first release to its deadline that its releases may take.
/// The rest is left for what comes after the last release: its slot wait (`slots.max_wait`, 60
/// s), its query (up to `query.max_duration`, 60 s), and the retries of refusals and failures
/// with their backoff (up to 30 s each). Half an hourly run's hour is 30 minutes of it: enough
/// for several rounds of those on the last batch, while the releases still spread over the other
/// half (docs/limits.md, "Pacing").
pub const RELEASE_SHARE: f64 = 0.5;

/// How a run's batches are released: `size` orgs every `delay`. `delay` is `batch.delay`
/// (`configured`), or less when at `batch.delay` the releases would not end within
/// [`RELEASE_SHARE`] of the time to the deadline: `batch.delay` is an upper bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pacing {
    pub size: usize,
    pub batches: usize,
    /// The delay between two batches in force.
    pub delay: Duration,
    /// `batch.delay`, as configured.
    pub configured: Duration,
    /// How long the releases may take (the share of the time to the deadline), when there is one.
    pub budget: Option<Duration>,
}

impl Pacing {
    /// Paces `orgs` orgs in batches of `size`, at most `configured` apart, so that the last batch
    /// is released within [`RELEASE_SHARE`] of `time_to_deadline` (from the first release).
    pub fn new(orgs: usize, size: NonZeroUsize, configured: Duration, time_to_deadline: Option<Duration>) -> Self {
        let batches = orgs.div_ceil(size.get());
        let budget = time_to_deadline.map(|t| t.mul_f64(RELEASE_SHARE));
        let gaps = u32::try_from(batches.saturating_sub(1)).unwrap_or(u32::MAX);
        let delay = match budget {
            // Whole milliseconds, rounded down, so the last release stays within the budget.
            Some(budget) if gaps > 0 && configured.saturating_mul(gaps) > budget => {
                Duration::from_millis(u64::try_from((budget / gaps).as_millis()).unwrap_or(u64::MAX))
            }
            _ => configured,
        };
        Pacing { size: size.get(), batches, delay, configured, budget }
    }

    /// Whether `batch.delay` was tightened to fit the deadline.
    pub fn tightened(&self) -> bool {
        self.delay < self.configured
    }

    /// From the first release to the last.
    pub fn span(&self) -> Duration {
        self.delay.saturating_mul(u32::try_from(self.batches.saturating_sub(1)).unwrap_or(u32::MAX))
    }

    /// One sentence: the pacing in force, and whether and by how much it was tightened.
    pub fn describe(&self) -> String {
        let every = format_ms(self.delay);
        let span = format_ms(self.span());
        if self.tightened() {
            let factor = self.configured.as_secs_f64() / self.delay.as_secs_f64().max(0.001);
            format!(
                "pacing: {} orgs every {every} ({} batches released over {span}), tightened {factor:.1}x from batch.delay {} so the releases end within {:.0}% of the time to the deadline",
                self.size,
                self.batches,
                format_ms(self.configured),
                RELEASE_SHARE * 100.0
            )
        } else {
            format!("pacing: {} orgs every {every} (batch.delay; {} batches released over {span})", self.size, self.batches)
        }
    }
}

/// "450ms", "2s", "1m 5s": a duration as an operator reads it.
fn format_ms(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1_000 {
        format!("{ms}ms")
    } else if ms.is_multiple_of(1_000) && ms < 60_000 {
        format!("{}s", ms / 1_000)
    } else if ms < 60_000 {
        format!("{:.2}s", d.as_secs_f64())
    } else {
        format!("{}m {}s", ms / 60_000, (ms % 60_000) / 1_000)
    }
}

/// Splits `orgs` in order into batches of `size`; the last batch may be smaller.
pub fn plan_batches(orgs: &[OrgId], size: NonZeroUsize, delay: Duration) -> Vec<Batch> {
    orgs.chunks(size.get())
        .enumerate()
        .map(|(k, chunk)| {
            let index = u32::try_from(k).unwrap_or(u32::MAX);
            Batch { index, release_after: delay.saturating_mul(index), orgs: chunk.to_vec() }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn orgs(n: u64) -> Vec<OrgId> {
        (1..=n).map(OrgId).collect()
    }

    fn size(n: usize) -> NonZeroUsize {
        NonZeroUsize::new(n).expect("non-zero")
    }

    #[test]
    fn the_default_pacing_fits_100000_orgs_into_half_an_hourly_deadline() {
        let hour = Duration::from_secs(3600);
        let p = Pacing::new(100_000, size(25), Duration::from_secs(2), Some(hour));
        assert_eq!(p.batches, 4_000);
        assert!(p.tightened());
        assert_eq!(p.delay, Duration::from_millis(450), "1,800 s over 3,999 gaps, rounded down");
        assert!(p.span() <= hour / 2, "{:?}", p.span());
        assert!(p.describe().contains("tightened 4.4x from batch.delay 2s"), "{}", p.describe());
    }

    #[test]
    fn a_run_that_fits_keeps_batch_delay_and_one_batch_needs_no_pacing() {
        let fits = Pacing::new(1_000, size(25), Duration::from_secs(2), Some(Duration::from_secs(3600)));
        assert_eq!((fits.delay, fits.tightened(), fits.span()), (Duration::from_secs(2), false, Duration::from_secs(78)));
        assert!(fits.describe().starts_with("pacing: 25 orgs every 2s (batch.delay; 40 batches"), "{}", fits.describe());
        let one = Pacing::new(10, size(25), Duration::from_secs(2), Some(Duration::from_millis(1)));
        assert_eq!((one.batches, one.delay), (1, Duration::from_secs(2)));
        let no_deadline = Pacing::new(100_000, size(25), Duration::from_secs(2), None);
        assert!(!no_deadline.tightened());
    }

    #[test]
    fn sixty_orgs_in_batches_of_25() {
        let plan = plan_batches(&orgs(60), size(25), Duration::from_secs(2));
        let sizes: Vec<usize> = plan.iter().map(|b| b.orgs.len()).collect();
        assert_eq!(sizes, [25, 25, 10]);
        let releases: Vec<u64> = plan.iter().map(|b| b.release_after.as_secs()).collect();
        assert_eq!(releases, [0, 2, 4]);
        assert_eq!(plan[1].orgs.first(), Some(&OrgId(26)));
        assert_eq!(plan[2].index, 2);
    }

    #[test]
    fn every_org_is_planned_exactly_once_in_order() {
        let all = orgs(1003);
        let plan = plan_batches(&all, size(7), Duration::from_millis(100));
        let flat: Vec<OrgId> = plan.iter().flat_map(|b| b.orgs.clone()).collect();
        assert_eq!(flat, all);
        assert_eq!(plan.len(), 144);
        assert_eq!(plan[143].release_after, Duration::from_millis(14_300));
    }

    #[test]
    fn edge_cases() {
        assert!(plan_batches(&[], size(25), Duration::from_secs(2)).is_empty());
        let one = plan_batches(&orgs(3), size(25), Duration::ZERO);
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].release_after, Duration::ZERO);
    }
}
