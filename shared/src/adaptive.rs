//! The query service's answers as the adaptive limit sees them: this process's counts of ok,
//! 429 and throttled answers since they were last reported to the fleet.

use std::sync::atomic::{AtomicU64, Ordering};

/// Counts of one process, drained by whoever reports them.
#[derive(Debug, Default)]
pub struct QuerySignals {
    ok: AtomicU64,
    rate_limited: AtomicU64,
    throttled: AtomicU64,
}

/// One drain of [`QuerySignals`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SignalCounts {
    pub ok: u64,
    pub rate_limited: u64,
    pub throttled: u64,
}

impl QuerySignals {
    pub const fn new() -> Self {
        QuerySignals { ok: AtomicU64::new(0), rate_limited: AtomicU64::new(0), throttled: AtomicU64::new(0) }
    }

    /// A query answered 200 (throttled or not).
    pub fn ok(&self) {
        self.ok.fetch_add(1, Ordering::Relaxed);
    }

    /// A query refused with 429.
    pub fn rate_limited(&self) {
        self.rate_limited.fetch_add(1, Ordering::Relaxed);
    }

    /// A 200 answer marked throttled.
    pub fn throttled(&self) {
        self.throttled.fetch_add(1, Ordering::Relaxed);
    }

    /// The counts since the last drain, zeroed.
    pub fn drain(&self) -> SignalCounts {
        SignalCounts {
            ok: self.ok.swap(0, Ordering::Relaxed),
            rate_limited: self.rate_limited.swap(0, Ordering::Relaxed),
            throttled: self.throttled.swap(0, Ordering::Relaxed),
        }
    }
}

/// This process's signals: the query client and the pipeline record, the reporter drains.
pub static SIGNALS: QuerySignals = QuerySignals::new();
