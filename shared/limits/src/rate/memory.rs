//! The in-process rate limiter, for the embedded run: the same decision as `lua/rate_acquire.lua`
//! (strict sliding log or smooth GCRA, all windows at once, reservation within `max_delay`), on
//! this process's monotonic clock.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::time::Instant;

use super::{Admission, BlockReason, Decision, RateLimiter, RateMode, RatePolicy};
use crate::error::Error;

/// Admits starts under `policy` within this process.
#[derive(Debug, Clone)]
pub struct MemoryRateLimiter {
    policy: RatePolicy,
    origin: Instant,
    state: Arc<Mutex<State>>,
}

/// What a rate limiter remembers between decisions.
#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct State {
    /// Strict: admission times per window, oldest first (they never go backwards).
    pub(crate) admitted: Vec<VecDeque<u64>>,
    /// Smooth: theoretical arrival time per window.
    pub(crate) tat: Vec<f64>,
    pub(crate) cooldown_until: u64,
}

impl MemoryRateLimiter {
    pub fn new(policy: RatePolicy) -> Self {
        let n = policy.windows.len();
        let state = State { admitted: vec![VecDeque::new(); n], tat: vec![0.0; n], cooldown_until: 0 };
        MemoryRateLimiter { policy, origin: Instant::now(), state: Arc::new(Mutex::new(state)) }
    }

    fn now_us(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // The state is a few numbers, consistent after every statement: a panic elsewhere
        // cannot leave it half-written.
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The decision at `now` (us on this limiter's clock), reserving when admitted.
    fn decide(&self, now: u64) -> Decision {
        decide(&self.policy, &mut self.state(), now)
    }
}

/// The decision at `now` (us) under `policy` from `state`, reserving in it when admitted: the
/// one rule the memory and SQLite limiters share, and `lua/rate_acquire.lua` mirrors.
pub(crate) fn decide(policy: &RatePolicy, state: &mut State, now: u64) -> Decision {
    let mut at = now;
    let mut reason = None;
    if state.cooldown_until > now {
        at = state.cooldown_until;
        reason = Some(BlockReason::Cooldown);
    }
    let later = |candidate: u64, at: &mut u64, reason: &mut Option<BlockReason>| {
        if candidate > *at {
            *at = candidate;
            *reason = Some(BlockReason::Window);
        }
    };
    match policy.mode {
        RateMode::Strict => {
            for (w, admitted) in policy.windows.iter().zip(state.admitted.iter_mut()) {
                let span = span_us(policy.enforced_span(w));
                while admitted.front().is_some_and(|&t| t + span <= now) {
                    admitted.pop_front();
                }
                if let Some(&last) = admitted.back() {
                    later(last, &mut at, &mut reason);
                }
                let limit = w.limit as usize;
                if admitted.len() >= limit {
                    later(admitted[admitted.len() - limit] + span, &mut at, &mut reason);
                }
            }
        }
        RateMode::Smooth => {
            for (w, tat) in policy.windows.iter().zip(state.tat.iter()) {
                let interval = span_us(w.span) as f64 / f64::from(w.limit);
                let tolerance = f64::from(policy.burst.min(w.limit) - 1) * interval;
                let allowed = (tat.max(now as f64) - tolerance).ceil().max(0.0) as u64;
                later(allowed, &mut at, &mut reason);
            }
        }
    }
    let wait_us = at - now;
    // A cooldown refuses whatever max_delay says (lua/rate_acquire.lua).
    if wait_us > span_us(policy.max_delay) || reason == Some(BlockReason::Cooldown) {
        return Decision { admitted: false, wait_us, reason, at_us: at };
    }
    match policy.mode {
        RateMode::Strict => state.admitted.iter_mut().for_each(|admitted| admitted.push_back(at)),
        RateMode::Smooth => {
            for (w, tat) in policy.windows.iter().zip(state.tat.iter_mut()) {
                *tat = tat.max(at as f64) + span_us(w.span) as f64 / f64::from(w.limit);
            }
        }
    }
    Decision { admitted: true, wait_us, reason, at_us: at }
}

fn span_us(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

impl RateLimiter for MemoryRateLimiter {
    fn admit(&self) -> BoxFuture<'_, Result<Admission, Error>> {
        let decision = self.decide(self.now_us());
        Box::pin(async move { Ok(decision.into_admission()) })
    }

    fn cool_down(&self, length: Duration) -> BoxFuture<'_, Result<(), Error>> {
        let until = self.now_us() + span_us(length);
        let mut state = self.state();
        state.cooldown_until = state.cooldown_until.max(until);
        Box::pin(async { Ok(()) })
    }

    fn policy(&self) -> &RatePolicy {
        &self.policy
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rate::RateWindow;

    fn policy(mode: RateMode, windows: &[(u32, u64)], burst: u32, max_delay_ms: u64) -> RatePolicy {
        RatePolicy {
            windows: windows.iter().map(|&(limit, ms)| RateWindow { limit, span: Duration::from_millis(ms) }).collect(),
            mode,
            burst,
            max_delay: Duration::from_millis(max_delay_ms),
            start_jitter: Duration::ZERO,
        }
    }

    /// The most admission times in any half-open interval of `span_us`.
    fn most_in_any_window(times: &[u64], span_us: u64) -> usize {
        let mut sorted = times.to_vec();
        sorted.sort_unstable();
        let mut start = 0;
        let mut most = 0;
        for end in 0..sorted.len() {
            while sorted[end] - sorted[start] >= span_us {
                start += 1;
            }
            most = most.max(end - start + 1);
        }
        most
    }

    #[test]
    fn strict_never_puts_more_than_n_in_any_window_of_any_length_listed() {
        let limiter = MemoryRateLimiter::new(policy(RateMode::Strict, &[(10, 1_000), (50, 10_000)], 1, 400));
        let mut times = Vec::new();
        let mut refused = 0;
        // Ten times the allowed rate for 30 s, offered every 10 ms of a simulated clock.
        for now in (0..30_000_000u64).step_by(10_000) {
            match limiter.decide(now) {
                d if d.admitted => times.push(d.at_us),
                d => {
                    assert!(d.wait_us > 400_000, "refused only beyond max_delay: {d:?}");
                    refused += 1;
                }
            }
        }
        assert!(most_in_any_window(&times, 1_000_000) <= 10);
        assert!(most_in_any_window(&times, 10_000_000) <= 50);
        assert!(times.len() >= 145, "the long window's budget is used: {} admitted", times.len());
        assert!(refused > 2_000);
    }

    #[test]
    fn smooth_keeps_the_long_run_rate_and_allows_the_burst() {
        let limiter = MemoryRateLimiter::new(policy(RateMode::Smooth, &[(20, 1_000)], 5, 2_000));
        let first: Vec<Decision> = (0..5).map(|_| limiter.decide(0)).collect();
        assert!(first.iter().all(|d| d.admitted && d.wait_us == 0), "a burst of 5 starts at once: {first:?}");
        let sixth = limiter.decide(0);
        assert_eq!(sixth.wait_us, 50_000, "then one every W/N = 50 ms");
        let mut times = Vec::new();
        for now in (0..60_000_000u64).step_by(1_000) {
            let d = limiter.decide(now);
            if d.admitted {
                times.push(d.at_us);
            }
        }
        // Reservations reach up to max_delay past the last offer: count the first 60 s only.
        let rate = times.iter().filter(|&&t| t < 60_000_000).count() as f64 / 60.0;
        assert!((rate - 20.0).abs() / 20.0 <= 0.01, "long-run rate {rate}/s");
        assert!(most_in_any_window(&times, 1_000_000) <= 5 + 20);
    }

    #[test]
    fn a_wait_beyond_max_delay_is_refused_with_the_wait_and_reserves_nothing() {
        let limiter = MemoryRateLimiter::new(policy(RateMode::Strict, &[(2, 1_000)], 1, 300));
        assert!(limiter.decide(0).admitted);
        assert!(limiter.decide(100_000).admitted);
        let refused = limiter.decide(200_000);
        assert_eq!((refused.admitted, refused.wait_us, refused.reason), (false, 800_000, Some(BlockReason::Window)));
        let again = limiter.decide(700_000);
        assert_eq!((again.admitted, again.wait_us), (true, 300_000), "the refusal reserved nothing");
    }

    #[tokio::test(start_paused = true)]
    async fn a_cooldown_refuses_every_admission_until_it_ends_whatever_max_delay_says() {
        let limiter = MemoryRateLimiter::new(policy(RateMode::Strict, &[], 1, 10_000));
        limiter.cool_down(Duration::from_secs(5)).await.expect("memory");
        let refused = limiter.admit().await.expect("memory");
        assert_eq!(refused, Admission::Refused { retry_after: Duration::from_secs(5), reason: BlockReason::Cooldown });
        tokio::time::advance(Duration::from_millis(4_500)).await;
        let still = limiter.admit().await.expect("memory");
        assert!(matches!(still, Admission::Refused { reason: BlockReason::Cooldown, .. }), "{still:?}");
        tokio::time::advance(Duration::from_millis(500)).await;
        let admitted = limiter.admit().await.expect("memory");
        assert_eq!(admitted, Admission::Admitted { wait: Duration::ZERO, delayed_by: None, at_us: 5_000_000 });
    }
}
