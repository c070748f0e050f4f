//! The one exponential backoff every retry loop uses: a first pause, doubled after each failure
//! up to a bound, with "equal jitter" where many callers retry together. It only counts; the
//! caller sleeps, so a loop can race the pause against a shutdown or a deadline.

use std::time::Duration;

use rand::Rng;

/// Pauses between tries: `first`, then doubled after each, at most `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub const fn new(first: Duration, max: Duration) -> Self {
        Backoff { first, max, next: first }
    }

    /// The pause before the next try; the one after it is twice as long, up to the bound.
    pub fn next_pause(&mut self) -> Duration {
        let pause = self.next;
        self.next = self.next.saturating_mul(2).min(self.max);
        pause
    }

    /// Back to the first pause, after a success.
    pub fn reset(&mut self) {
        self.next = self.first;
    }

    /// The pause before try `n` (0: the first retry) without state: `first × 2ⁿ`, at most the bound.
    pub fn nth(&self, n: u32) -> Duration {
        self.first.saturating_mul(2u32.saturating_pow(n.min(31))).min(self.max)
    }
}

/// `pause` with "equal jitter": half of it fixed, the other half at random, so callers that
/// failed together do not retry together, and none retries sooner than half the pause.
pub fn equal_jitter(pause: Duration) -> Duration {
    let half = pause / 2;
    half + half.mul_f64(rand::rng().random_range(0.0..=1.0))
}

/// Up to `max` more than `pause`, at random: spreads retries without shortening any.
pub fn plus_jitter(pause: Duration, max: Duration) -> Duration {
    pause + max.mul_f64(rand::rng().random_range(0.0..=1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn pauses_double_up_to_the_bound_and_reset_to_the_first() {
        let mut b = Backoff::new(50 * MS, 400 * MS);
        let pauses: Vec<_> = (0..6).map(|_| b.next_pause()).collect();
        assert_eq!(pauses, [50 * MS, 100 * MS, 200 * MS, 400 * MS, 400 * MS, 400 * MS]);
        b.reset();
        assert_eq!(b.next_pause(), 50 * MS);
    }

    #[test]
    fn the_nth_pause_is_the_same_without_state_and_never_overflows() {
        let b = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
        assert_eq!((0..7).map(|n| b.nth(n).as_secs()).collect::<Vec<_>>(), [1, 2, 4, 8, 16, 30, 30]);
        assert_eq!(b.nth(u32::MAX), Duration::from_secs(30));
    }

    #[test]
    fn jitter_stays_within_its_bounds() {
        for _ in 0..200 {
            let j = equal_jitter(Duration::from_secs(2));
            assert!(j >= Duration::from_secs(1) && j <= Duration::from_secs(2), "{j:?}");
            let p = plus_jitter(Duration::from_secs(2), Duration::from_secs(1));
            assert!(p >= Duration::from_secs(2) && p <= Duration::from_secs(3), "{p:?}");
        }
    }
}
