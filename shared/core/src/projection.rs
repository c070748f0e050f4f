//! Projection math, pure: three weeks of hourly event counts per project in, the next 24 hours out.
//!
//! # Input
//! For one project, `history[i]` is the number of events in hour `i` of the window that ends at
//! the tick; `history.last()` is the hour just before the tick. Up to [`HISTORY_HOURS`] (3 weeks)
//! are used; a shorter history means a newer project.
//!
//! # Formula
//! Let `n = history.len()`. For each of the next 24 hours `j = 0..24`, the samples are the counts
//! at the same hour of the week in the previous weeks:
//!
//! ```text
//! samples(j) = { history[n + j - 168 k]  for k = 1, 2, 3  where 0 <= n + j - 168 k < n }
//! projected(j) = median(samples(j))                 if samples(j) is not empty
//!              = round(mean(history))               if samples(j) is empty and n > 0
//!              = 0                                  if n = 0
//! ```
//!
//! The median of the same hour in up to three weeks keeps weekly seasonality and ignores a
//! one-off spike (with three samples, one spike cannot move the median). With two samples the
//! median is their mean, rounded half up. A project younger than a week has no same-hour sample
//! for some hours and falls back to its mean hourly level.
//!
//! The spike threshold is the volume above which an hour counts as a spike:
//!
//! ```text
//! spike_threshold = max(MIN_SPIKE_THRESHOLD, ceil(SPIKE_FACTOR x max_j projected(j)))
//! ```
//!
//! `MIN_SPIKE_THRESHOLD` keeps tiny and new projects from tripping spike protection on noise.

use serde::{Deserialize, Serialize};

/// Three weeks of hours.
pub const HISTORY_HOURS: usize = 3 * HOURS_PER_WEEK;
/// Hours projected ahead.
pub const PROJECTED_HOURS: usize = 24;
/// A spike is more than this many times the busiest projected hour.
pub const SPIKE_FACTOR: u64 = 3;
/// No project's threshold is below this many events per hour.
pub const MIN_SPIKE_THRESHOLD: u64 = 1_000;

const HOURS_PER_WEEK: usize = 168;
const WEEKS: usize = 3;

/// One project's projection for the next 24 hours.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Projection {
    /// Expected events in each of the next 24 hours, starting at the tick.
    pub hourly: Vec<u64>,
    pub spike_threshold: u64,
}

/// Projects one project's next 24 hours from its hourly history (oldest first).
pub fn project(history: &[u64]) -> Projection {
    // Only the last three weeks count, even if the caller sends more.
    let history = &history[history.len().saturating_sub(HISTORY_HOURS)..];
    let n = history.len();
    let level = mean_rounded(history);
    let hourly: Vec<u64> = (0..PROJECTED_HOURS)
        .map(|j| {
            let mut samples: Vec<u64> =
                (1..=WEEKS).filter_map(|k| (n + j).checked_sub(HOURS_PER_WEEK * k)).filter(|&i| i < n).map(|i| history[i]).collect();
            median(&mut samples).unwrap_or(level)
        })
        .collect();
    let peak = hourly.iter().copied().max().unwrap_or(0);
    Projection { spike_threshold: MIN_SPIKE_THRESHOLD.max(peak.saturating_mul(SPIKE_FACTOR)), hourly }
}

fn median(samples: &mut [u64]) -> Option<u64> {
    samples.sort_unstable();
    let n = samples.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(samples[n / 2]),
        _ => Some(mean_rounded(&samples[n / 2 - 1..=n / 2])),
    }
}

/// Mean rounded half up; 0 for no values.
fn mean_rounded(values: &[u64]) -> u64 {
    if values.is_empty() {
        return 0;
    }
    let sum: u128 = values.iter().map(|&v| u128::from(v)).sum();
    let n = values.len() as u128;
    u64::try_from((2 * sum + n) / (2 * n)).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Three flat weeks where hour-of-week h has count 100 + h.
    fn seasonal_weeks() -> Vec<u64> {
        (0..HISTORY_HOURS).map(|i| 100 + (i % HOURS_PER_WEEK) as u64).collect()
    }

    #[test]
    fn empty_history_projects_zero_with_the_floor_threshold() {
        let p = project(&[]);
        assert_eq!(p.hourly, vec![0; 24]);
        assert_eq!(p.spike_threshold, MIN_SPIKE_THRESHOLD);
    }

    #[test]
    fn weekly_seasonality_is_carried_forward() {
        // The next hour (j = 0) is hour-of-week 504 % 168 = 0, so 100; j = 23 is 123.
        let p = project(&seasonal_weeks());
        let expected: Vec<u64> = (0..24).map(|j| 100 + j).collect();
        assert_eq!(p.hourly, expected);
        // peak 123 x 3 = 369, below the floor.
        assert_eq!(p.spike_threshold, 1_000);
    }

    #[test]
    fn a_one_off_spike_does_not_move_the_projection() {
        let mut h = seasonal_weeks();
        // Hour-of-week 5 of the middle week spikes to 50,000.
        h[HOURS_PER_WEEK + 5] = 50_000;
        let p = project(&h);
        assert_eq!(p.hourly[5], 105, "median of 105, 50000, 105");
    }

    #[test]
    fn a_brand_new_project_falls_back_to_its_mean() {
        // 10 hours of history: 10, 20, ..., 100 -> mean 55; no same-hour sample from a week ago.
        let h: Vec<u64> = (1..=10).map(|i| i * 10).collect();
        let p = project(&h);
        assert_eq!(p.hourly, vec![55; 24]);
        assert_eq!(p.spike_threshold, 1_000);
    }

    #[test]
    fn two_weeks_of_history_take_the_rounded_mean_of_two_samples() {
        // Week one: every hour 10; week two: every hour 15 -> median of {10, 15} = 12.5 -> 13.
        let mut h = vec![10; HOURS_PER_WEEK];
        h.extend(vec![15; HOURS_PER_WEEK]);
        let p = project(&h);
        assert_eq!(p.hourly, vec![13; 24]);
    }

    #[test]
    fn partial_week_mixes_samples_and_fallback() {
        // 170 hours: j = 0, 1 have no sample a week back (170 + j - 168 = 2 + j is in range for all j),
        // so every hour has exactly one sample: history[2 + j].
        let h: Vec<u64> = (0..170).map(|i| i as u64).collect();
        let p = project(&h);
        assert_eq!(p.hourly[0], 2);
        assert_eq!(p.hourly[23], 25);
        // 160 hours: j < 8 have no sample (160 + j < 168) and use the mean 79.5 -> 80.
        let h: Vec<u64> = (0..160).map(|i| i as u64).collect();
        let p = project(&h);
        assert_eq!(p.hourly[0], 80);
        assert_eq!(p.hourly[7], 80);
        assert_eq!(p.hourly[8], 0, "160 + 8 - 168 = index 0");
        assert_eq!(p.hourly[23], 15);
    }

    #[test]
    fn busy_projects_get_a_threshold_of_three_times_the_peak() {
        let h = vec![2_000; HISTORY_HOURS];
        let p = project(&h);
        assert_eq!(p.hourly, vec![2_000; 24]);
        assert_eq!(p.spike_threshold, 6_000);
    }

    #[test]
    fn only_the_last_three_weeks_count() {
        let mut h = vec![1_000_000; 100];
        h.extend(seasonal_weeks());
        assert_eq!(project(&h), project(&seasonal_weeks()));
    }
}
