//! Synthetic data standing in for the organization list and the analytics store: deterministic
//! per org and project, with weekly seasonality, noise, occasional spikes and brand-new projects.

use crate::ids::{OrgId, ProjectId};
use crate::org::OrgInfo;

/// Organizations `1..=count`, each with 1 to 4 projects.
pub fn synthetic_orgs(count: u64) -> Vec<OrgInfo> {
    (1..=count).map(|id| OrgInfo { org_id: OrgId(id), project_ids: synthetic_projects(OrgId(id)), active: true }).collect()
}

/// The projects of a synthetic organization: `org x 100 + 1 ..= org x 100 + k`, k in 1..=4.
pub fn synthetic_projects(org: OrgId) -> Vec<ProjectId> {
    let k = 1 + mix(org.0, 0, 0) % 4;
    (1..=k).map(|i| ProjectId(org.0.saturating_mul(100) + i)).collect()
}

/// Hourly event counts of one project for the `hours` hours ending before `end_hour`
/// (hours since the Unix epoch), oldest first. The same inputs always give the same counts.
pub fn hourly_counts(org: OrgId, project: ProjectId, end_hour: i64, hours: usize) -> Vec<u64> {
    let seed = mix(org.0, project.0, 1);
    // About one project in ten is brand new: it started 1 to 100 hours ago.
    let age = if seed.is_multiple_of(10) { 1 + (seed >> 8) % 100 } else { u64::MAX };
    let base = 20.0 + (seed % 5_000) as f64;
    let start = end_hour - hours as i64;
    (start..end_hour)
        .map(|hour| {
            let hours_ago = (end_hour - hour) as u64;
            if hours_ago > age {
                return 0;
            }
            let h = hour.rem_euclid(168) as u64;
            let hour_of_day = (h % 24) as f64;
            let weekend = h / 24 >= 5;
            let daily = 1.0 + 0.6 * ((hour_of_day - 9.0) / 24.0 * std::f64::consts::TAU).cos();
            let weekly = if weekend { 0.6 } else { 1.0 };
            let r = mix(seed, hour as u64, 2);
            let noise = 0.85 + (r % 1_000) as f64 / 1_000.0 * 0.3;
            // Roughly one hour in 300 is a spike of 5 to 20 times the usual volume.
            let spike = if r % 300 == 7 { 5.0 + ((r >> 16) % 16) as f64 } else { 1.0 };
            (base * daily * weekly * noise * spike).round() as u64
        })
        .collect()
}

/// SplitMix64 over three words: cheap, stable across platforms and releases.
pub fn mix(a: u64, b: u64, c: u64) -> u64 {
    let mut z = a
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(b.wrapping_mul(0xC2B2_AE3D_27D4_EB4F))
        .wrapping_add(c.wrapping_mul(0x1656_67B1_9E37_79F9));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::projection::HISTORY_HOURS;

    #[test]
    fn deterministic_and_different_per_project() {
        let a = hourly_counts(OrgId(7), ProjectId(701), 500_000, HISTORY_HOURS);
        assert_eq!(a, hourly_counts(OrgId(7), ProjectId(701), 500_000, HISTORY_HOURS));
        assert_ne!(a, hourly_counts(OrgId(7), ProjectId(702), 500_000, HISTORY_HOURS));
        assert_eq!(a.len(), HISTORY_HOURS);
    }

    #[test]
    fn shifting_the_window_keeps_the_overlap() {
        let a = hourly_counts(OrgId(3), ProjectId(301), 500_000, 48);
        let b = hourly_counts(OrgId(3), ProjectId(301), 500_001, 48);
        assert_eq!(a[1..], b[..47]);
    }

    #[test]
    fn the_population_has_seasonality_spikes_and_new_projects() {
        let orgs = synthetic_orgs(300);
        let (mut new, mut spiky) = (0, 0);
        for org in &orgs {
            assert!((1..=4).contains(&org.project_ids.len()));
            for &p in &org.project_ids {
                let h = hourly_counts(org.org_id, p, 500_000, HISTORY_HOURS);
                if h[0] == 0 && *h.last().unwrap_or(&0) > 0 {
                    new += 1;
                }
                let mean = h.iter().sum::<u64>() as f64 / h.len() as f64;
                if h.iter().any(|&c| c as f64 > 4.0 * mean) {
                    spiky += 1;
                }
            }
        }
        assert!(new > 10, "some brand-new projects ({new})");
        assert!(spiky > 100, "many projects have a spike somewhere ({spiky})");
    }
}
