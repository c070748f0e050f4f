//! Rate policies on query starts: at most N starts in any window W, over several windows at once,
//! strict (sliding log) or smooth (GCRA), with a bounded wait; the `RateLimiter` trait, its
//! answers, and the gate that applies one (enforced or in shadow) with its logs and metrics.
//! The Redis, SQLite and in-memory limiters live beside it and share the same semantics.

mod gate;
mod memory;
mod redis;
mod sqlite;
pub mod store;

use std::time::Duration;

use futures::future::BoxFuture;
use projector_config::RateConfig;
pub use projector_config::{RateMode, RateWindow};

use crate::error::Error;

pub use gate::{Pass, RateGate};
pub use memory::MemoryRateLimiter;
pub use redis::{RateNow, RedisRateLimiter, WindowNow};
pub use sqlite::SqliteRateLimiter;

/// What one limiter enforces: its windows (shortest first), mode and bounded wait.
#[derive(Debug, Clone, PartialEq)]
pub struct RatePolicy {
    pub windows: Vec<RateWindow>,
    pub mode: RateMode,
    /// Smooth mode: starts allowed back to back before spacing applies.
    pub burst: u32,
    pub max_delay: Duration,
    /// Strict mode: each window is kept this much wider (`rate.start_jitter`), so starts that
    /// reach the service slightly out of order still fit N in W there.
    pub start_jitter: Duration,
}

impl RatePolicy {
    pub fn from_config(config: &RateConfig) -> Self {
        RatePolicy {
            windows: config.rates.clone(),
            mode: config.mode,
            burst: config.burst.max(1),
            max_delay: config.max_delay,
            start_jitter: config.start_jitter,
        }
    }

    /// `strict` or `smooth`, as in config, logs and key names.
    pub fn mode_name(&self) -> &'static str {
        match self.mode {
            RateMode::Strict => "strict",
            RateMode::Smooth => "smooth",
        }
    }

    /// The span a window is enforced over: strict windows are widened by `start_jitter`.
    pub fn enforced_span(&self, window: &RateWindow) -> Duration {
        match self.mode {
            RateMode::Strict => window.span + self.start_jitter,
            RateMode::Smooth => window.span,
        }
    }

    /// The policy as written in config: `10/s,5000/h`.
    pub fn describe(&self) -> String {
        self.windows.iter().map(ToString::to_string).collect::<Vec<_>>().join(",")
    }
}

/// Why an admission was delayed or refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockReason {
    /// A window of the policy was full.
    Window,
    /// A cooldown after a 429 was in force.
    Cooldown,
}

impl BlockReason {
    /// The `reason` label of `projector_rate_blocked_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            BlockReason::Window => "window",
            BlockReason::Cooldown => "cooldown",
        }
    }
}

/// The answer to one admission request, decided in one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Reserved: the query may start `wait` from now (never more than `max_delay`). `delayed_by`
    /// says what held it back when `wait` > 0. `at_us` is the reserved time on the limiter's clock.
    Admitted { wait: Duration, delayed_by: Option<BlockReason>, at_us: u64 },
    /// Nothing reserved: the earliest start would be `retry_after` from now, beyond `max_delay`.
    Refused { retry_after: Duration, reason: BlockReason },
}

/// Admits query starts under one policy, fleet-wide (Redis) or in one process (memory).
pub trait RateLimiter: Send + Sync {
    /// One admission request, decided at once: reserved within `max_delay`, or refused with
    /// the wait. `Err` means the limiter could not be asked.
    fn admit(&self) -> BoxFuture<'_, Result<Admission, Error>>;

    /// Holds every admission for `length` (after a 429 from the query service).
    fn cool_down(&self, length: Duration) -> BoxFuture<'_, Result<(), Error>>;

    fn policy(&self) -> &RatePolicy;
}

/// One decision, shared by the memory limiter and mirrored by `lua/rate_acquire.lua`: the
/// earliest admission time at or after `now` that clears every window and the cooldown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Decision {
    pub admitted: bool,
    pub wait_us: u64,
    pub reason: Option<BlockReason>,
    pub at_us: u64,
}

impl Decision {
    pub(crate) fn into_admission(self) -> Admission {
        let wait = Duration::from_micros(self.wait_us);
        match (self.admitted, self.reason) {
            (true, delayed_by) => Admission::Admitted { wait, delayed_by, at_us: self.at_us },
            (false, reason) => Admission::Refused { retry_after: wait, reason: reason.unwrap_or(BlockReason::Window) },
        }
    }
}
