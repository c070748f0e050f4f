//! The `fail_open` policy: ask the cluster-wide limiter first, and when it cannot be asked at all
//! (Redis unreachable), fall back to a small per-process limit instead of not querying.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;

use super::{Acquire, MemorySlotLimiter, SlotLimiter, SlotRequest};
use crate::error::Error;
use projector_core::metrics as m;

/// Wraps a cluster-wide limiter; only `Err` (the limiter could not answer) falls back, never a
/// timeout, so a full cluster stays full.
pub struct FailOpenLimiter {
    primary: Arc<dyn SlotLimiter>,
    fallback: MemorySlotLimiter,
}

impl FailOpenLimiter {
    pub fn new(primary: Arc<dyn SlotLimiter>, fallback_limit: u32) -> Self {
        FailOpenLimiter { primary, fallback: MemorySlotLimiter::new(fallback_limit) }
    }

    /// Slots held under the fallback limit now.
    pub fn fallback_in_use(&self) -> u32 {
        self.fallback.in_use()
    }
}

impl SlotLimiter for FailOpenLimiter {
    fn acquire(&self, request: SlotRequest, max_wait: Duration) -> BoxFuture<'_, Result<Acquire, Error>> {
        Box::pin(async move {
            let started = Instant::now();
            match self.primary.acquire(request.clone(), max_wait).await {
                Err(e) => {
                    tracing::warn!(
                        org_id = %request.org_id,
                        error = %e,
                        fallback_limit = self.fallback.limit(),
                        "slot limiter unreachable; slots.on_redis_error = fail_open, so this job queries under the local fallback limit"
                    );
                    metrics::counter!(m::SLOT_FALLBACK_TOTAL).increment(1);
                    self.fallback.acquire(request, max_wait.saturating_sub(started.elapsed())).await
                }
                answer => answer,
            }
        })
    }

    fn limit(&self) -> u32 {
        self.primary.limit()
    }

    fn pause_grants(&self, cooldown: Duration) -> BoxFuture<'_, Result<(), Error>> {
        self.primary.pause_grants(cooldown)
    }

    fn heard_service(
        &self,
        quota: projector_core::service::ServiceQuota,
        rejected: bool,
        age: Duration,
    ) -> BoxFuture<'_, Result<(), Error>> {
        self.primary.heard_service(quota, rejected, age)
    }
}
