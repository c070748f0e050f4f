//! One adaptive limit for the whole fleet: its settings, this process's counts of ok, 429 and
//! throttled answers since they were last reported, and the multiplier last heard from Redis
//! (which scales the slot limit there, and every rate here). The decision itself is
//! `lua/slots_adaptive.lua`, called through `RedisSlotLimiter::report_answers`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// A window with fewer answers than this decides nothing.
pub const ADAPTIVE_MIN_SAMPLES: u64 = 10;

/// `[adaptive]`, as the script takes it (`enabled` is the worker's to read).
pub type AdaptiveSettings = projector_config::AdaptiveConfig;

/// The fleet's multiplier as this process last heard it; shared by the reporter (writes) and the
/// rate limiter (reads, to scale every rate). 1 until the first report.
#[derive(Debug, Clone)]
pub struct Multiplier(Arc<AtomicU64>);

impl Default for Multiplier {
    fn default() -> Self {
        Multiplier(Arc::new(AtomicU64::new(1.0_f64.to_bits())))
    }
}

impl Multiplier {
    pub fn get(&self) -> f64 {
        f64::from_bits(self.0.load(Ordering::Relaxed))
    }

    pub fn set(&self, m: f64) {
        self.0.store(m.to_bits(), Ordering::Relaxed);
    }
}

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
