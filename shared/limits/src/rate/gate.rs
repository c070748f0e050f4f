//! The rate gate a job passes just before its query starts: asks the limiter once, holds the start
//! for the reserved wait (or, in shadow mode, only says what it would have done), starts the
//! fleet-wide cooldown after a 429, and logs (`stage="rate-limiter"`) and counts every decision.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use super::{Admission, BlockReason, RateLimiter};
use crate::error::Error;
use projector_core::metrics as m;

/// Whether the query may start now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pass {
    Go,
    /// Refused by an enforced policy: the job ends `skipped_rate_policy`, or is rescheduled at
    /// `retry_after`.
    Refused {
        retry_after: Duration,
        reason: BlockReason,
    },
}

/// One referrer's policy as a job meets it; an operator's runtime change replaces it whole.
#[derive(Clone)]
pub struct RateGate {
    current: Arc<RwLock<Arc<GatePolicy>>>,
    referrer: String,
    /// `slots.on_redis_error = "fail_open"`: a limiter that cannot be asked lets the start through.
    fail_open: bool,
}

/// The policy in force at one moment.
struct GatePolicy {
    limiter: Arc<dyn RateLimiter>,
    /// `false`: shadow mode.
    enforce: bool,
    cooldown_after_429: Duration,
}

impl GatePolicy {
    /// Whether anything can delay or refuse a start: windows, or a cooldown after 429s.
    fn is_active(&self) -> bool {
        !self.limiter.policy().windows.is_empty() || !self.cooldown_after_429.is_zero()
    }
}

impl RateGate {
    pub fn new(limiter: Arc<dyn RateLimiter>, referrer: impl Into<String>, enforce: bool, cooldown_after_429: Duration) -> Self {
        let current = Arc::new(GatePolicy { limiter, enforce, cooldown_after_429 });
        RateGate { current: Arc::new(RwLock::new(current)), referrer: referrer.into(), fail_open: false }
    }

    /// With `true`, a limiter that cannot be asked (Redis unreachable) lets the start through,
    /// as `slots.on_redis_error = "fail_open"` does for slots; the error is still logged and counted.
    pub fn fail_open(self, fail_open: bool) -> Self {
        RateGate { fail_open, ..self }
    }

    /// Puts another policy in force for every job that asks from now on (`projectorctl rate set`).
    pub fn replace(&self, limiter: Arc<dyn RateLimiter>, enforce: bool, cooldown_after_429: Duration) {
        let next = Arc::new(GatePolicy { limiter, enforce, cooldown_after_429 });
        *self.current.write().unwrap_or_else(std::sync::PoisonError::into_inner) = next;
    }

    fn current(&self) -> Arc<GatePolicy> {
        self.current.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// The policy in force, as written in config (`10/s,5000/h`), its mode and whether it is enforced.
    pub fn describe(&self) -> (String, &'static str, bool) {
        let current = self.current();
        let policy = current.limiter.policy();
        (policy.describe(), policy.mode_name(), current.enforce)
    }

    /// The policy in force in one line, as workers publish it: `20/s, 5000/h (strict, enforced)`,
    /// or `none`.
    pub fn summary(&self) -> String {
        let (rates, mode, enforced) = self.describe();
        if rates.is_empty() || rates == "none" {
            return "none".to_owned();
        }
        format!("{rates} ({mode}, {})", if enforced { "enforced" } else { "shadow" })
    }

    /// Whether a policy or a cooldown is in force, so that [`RateGate::pass`] asks the limiter.
    pub fn is_in_force(&self) -> bool {
        self.current().is_active()
    }

    /// The longest [`RateGate::pass`] may hold a start: a slot taken before it must outlive it.
    pub fn max_delay(&self) -> Duration {
        let current = self.current();
        if current.enforce && current.is_active() { current.limiter.policy().max_delay } else { Duration::ZERO }
    }

    /// Asks for an admission and, when enforced, waits for it. `Err`: the limiter could not be asked.
    pub async fn pass(&self) -> Result<Pass, Error> {
        let current = self.current();
        if !current.is_active() {
            return Ok(Pass::Go);
        }
        let (limiter, enforce) = (&current.limiter, current.enforce);
        let policy = limiter.policy();
        let max_delay_ms = policy.max_delay.as_millis() as u64;
        let admission = match limiter.admit().await {
            Ok(a) => a,
            Err(e) => {
                metrics::counter!(m::RATE_LIMITER_ERRORS_TOTAL).increment(1);
                tracing::warn!(
                    stage = "rate-limiter", event_type = "error", referrer = %self.referrer, error = %e, fail_open = self.fail_open,
                    "rate policy could not be asked"
                );
                return if self.fail_open { Ok(Pass::Go) } else { Err(e) };
            }
        };
        match admission {
            Admission::Admitted { wait, delayed_by, .. } => {
                metrics::counter!(m::RATE_ADMITTED_TOTAL).increment(1);
                let delay_ms = wait.as_millis() as u64;
                if let (Some(reason), false) = (delayed_by, enforce) {
                    metrics::counter!(m::RATE_SHADOW_TOTAL, "would" => "delay", "reason" => reason.as_str()).increment(1);
                }
                let applied = if enforce { wait } else { Duration::ZERO };
                metrics::histogram!(m::RATE_DELAY_SECONDS).record(applied.as_secs_f64());
                tracing::debug!(
                    stage = "rate-limiter", event_type = "acquire", referrer = %self.referrer, delay_ms,
                    policy_max_delay_ms = max_delay_ms, acquired = true, enforced = enforce,
                    reason = delayed_by.map_or("none", BlockReason::as_str), "rate admission"
                );
                if !applied.is_zero() {
                    tokio::time::sleep(applied).await;
                }
                Ok(Pass::Go)
            }
            Admission::Refused { retry_after, reason } => {
                let retry_after_ms = retry_after.as_millis() as u64;
                if enforce {
                    metrics::counter!(m::RATE_BLOCKED_TOTAL, "reason" => reason.as_str()).increment(1);
                } else {
                    metrics::counter!(m::RATE_SHADOW_TOTAL, "would" => "refuse", "reason" => reason.as_str()).increment(1);
                }
                tracing::debug!(
                    stage = "rate-limiter", event_type = if enforce { "refused" } else { "shadow_refused" },
                    referrer = %self.referrer, delay_ms = retry_after_ms, policy_max_delay_ms = max_delay_ms,
                    acquired = !enforce, reason = reason.as_str(), "rate admission refused"
                );
                Ok(if enforce { Pass::Refused { retry_after, reason } } else { Pass::Go })
            }
        }
    }

    /// `rate.cooldown_after_429` in force now (zero: none).
    pub fn cooldown(&self) -> Duration {
        self.current().cooldown_after_429
    }

    /// A query got a 429: with `rate.cooldown_after_429` set, no query starts anywhere in the fleet
    /// until it ends. A cooldown that cannot be written is logged; the 429 is already counted.
    pub async fn saw_429(&self) {
        let current = self.current();
        if current.cooldown_after_429.is_zero() {
            return;
        }
        match current.limiter.cool_down(current.cooldown_after_429).await {
            Ok(()) => {
                metrics::counter!(m::RATE_COOLDOWNS_TOTAL).increment(1);
                tracing::warn!(
                    stage = "rate-limiter", event_type = "cooldown", referrer = %self.referrer,
                    cooldown_ms = current.cooldown_after_429.as_millis() as u64, "429 from the query service; fleet-wide cooldown started"
                );
            }
            Err(e) => {
                metrics::counter!(m::RATE_LIMITER_ERRORS_TOTAL).increment(1);
                tracing::warn!(stage = "rate-limiter", event_type = "error", referrer = %self.referrer, error = %e, "cooldown could not be started");
            }
        }
    }
}
