//! Batch planning: organizations into batches of `batch.size`, batch k released at k x `batch.delay`.

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
