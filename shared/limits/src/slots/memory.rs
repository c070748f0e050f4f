//! The in-process slot limiter: a fair (first-come-first-served) semaphore with a bounded wait.
//! Used by the embedded run and as the local fallback when Redis is unreachable and policy is fail-open.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{Acquire, ReleaseSlot, SlotLimiter, SlotPermit, SlotRequest, TimedOut, record_granted, record_released, record_timed_out};
use crate::error::Error;

/// At most `limit` slots at once within this process.
#[derive(Debug, Clone)]
pub struct MemorySlotLimiter {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    slots: Arc<Semaphore>,
    limit: u32,
    waiting: AtomicU32,
    next_token: AtomicU64,
}

impl MemorySlotLimiter {
    pub fn new(limit: u32) -> Self {
        MemorySlotLimiter {
            inner: Arc::new(Inner {
                slots: Arc::new(Semaphore::new(limit as usize)),
                limit,
                waiting: AtomicU32::new(0),
                next_token: AtomicU64::new(1),
            }),
        }
    }

    /// Slots held now.
    pub fn in_use(&self) -> u32 {
        self.inner.in_use()
    }

    /// Waiters in line now.
    pub fn waiting(&self) -> u32 {
        self.inner.waiting.load(Ordering::SeqCst)
    }
}

impl Inner {
    fn in_use(&self) -> u32 {
        let free = u32::try_from(self.slots.available_permits()).unwrap_or(u32::MAX);
        self.limit.saturating_sub(free)
    }
}

/// Counts a waiter in line for as long as it lives, including when its future is dropped mid-wait.
struct InLine<'a>(&'a AtomicU32);

impl<'a> InLine<'a> {
    fn join(counter: &'a AtomicU32) -> Self {
        counter.fetch_add(1, Ordering::SeqCst);
        InLine(counter)
    }
}

impl Drop for InLine<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl SlotLimiter for MemorySlotLimiter {
    fn acquire(&self, _request: SlotRequest, max_wait: Duration) -> BoxFuture<'_, Result<Acquire, Error>> {
        Box::pin(async move {
            let started = Instant::now();
            let inner = &self.inner;
            let waited = {
                let _in_line = InLine::join(&inner.waiting);
                tokio::time::timeout(max_wait, inner.slots.clone().acquire_owned()).await
            };
            let elapsed = started.elapsed();
            match waited {
                Ok(Ok(permit)) => {
                    record_granted(elapsed);
                    super::record_occupancy(inner.in_use(), inner.limit, "config");
                    let token = inner.next_token.fetch_add(1, Ordering::SeqCst);
                    let release = MemoryRelease { permit, inner: inner.clone() };
                    Ok(Acquire::Granted(SlotPermit::new(format!("mem-{token}"), token, CancellationToken::new(), Box::new(release))))
                }
                Ok(Err(_closed)) => Err(Error::LimiterClosed { waited: elapsed }),
                Err(_elapsed) => {
                    record_timed_out(elapsed);
                    Ok(Acquire::TimedOut(TimedOut {
                        waited: elapsed,
                        in_use: inner.in_use(),
                        limit: inner.limit,
                        queue_position: inner.waiting.load(Ordering::SeqCst) + 1,
                    }))
                }
            }
        })
    }

    fn limit(&self) -> u32 {
        self.inner.limit
    }
}

struct MemoryRelease {
    permit: OwnedSemaphorePermit,
    inner: Arc<Inner>,
}

impl MemoryRelease {
    fn give_back(self) {
        let MemoryRelease { permit, inner } = self;
        drop(permit);
        record_released();
        super::record_occupancy(inner.in_use(), inner.limit, "config");
    }
}

impl ReleaseSlot for MemoryRelease {
    fn release(self: Box<Self>) -> BoxFuture<'static, Result<(), Error>> {
        self.give_back();
        Box::pin(async { Ok(()) })
    }

    fn release_on_drop(self: Box<Self>) {
        // Nothing to await in memory: give the slot back right here.
        self.give_back();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use projector_core::ids::OrgId;
    use std::sync::atomic::AtomicUsize;

    fn request(org: u64) -> SlotRequest {
        SlotRequest::new("test", OrgId(org))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_bound_holds_under_200_concurrent_tasks_and_timeouts_leave_no_residue() {
        let limit = 7;
        let limiter = MemorySlotLimiter::new(limit);
        let holding = Arc::new(AtomicUsize::new(0));
        let max_seen = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for i in 0..200u64 {
            let (limiter, holding, max_seen) = (limiter.clone(), holding.clone(), max_seen.clone());
            tasks.push(tokio::spawn(async move {
                // A third of the waiters are impatient, so some time out while others hold.
                let max_wait = if i % 3 == 0 { Duration::from_millis(1) } else { Duration::from_secs(30) };
                match limiter.acquire(request(i), max_wait).await.expect("memory limiter never errors") {
                    Acquire::Granted(permit) => {
                        let now = holding.fetch_add(1, Ordering::SeqCst) + 1;
                        max_seen.fetch_max(now, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(2)).await;
                        holding.fetch_sub(1, Ordering::SeqCst);
                        if i % 2 == 0 {
                            permit.release().await.expect("release");
                        }
                        true
                    }
                    Acquire::TimedOut(t) => {
                        assert_eq!(t.limit, limit);
                        assert!(t.queue_position >= 1);
                        false
                    }
                }
            }));
        }
        let mut granted = 0;
        for t in tasks {
            if t.await.expect("task") {
                granted += 1;
            }
        }
        assert!(max_seen.load(Ordering::SeqCst) <= limit as usize);
        assert_eq!(max_seen.load(Ordering::SeqCst), limit as usize, "the limit was reached");
        assert!(granted >= 133, "every patient waiter was served ({granted})");
        assert!(granted < 200, "some impatient waiters timed out");
        assert_eq!(limiter.in_use(), 0, "every slot came back");
        assert_eq!(limiter.waiting(), 0, "no waiter left in line");
    }

    #[tokio::test]
    async fn timeout_reports_occupancy_and_a_dropped_waiter_leaves_the_line() {
        let limiter = MemorySlotLimiter::new(1);
        let Acquire::Granted(held) = limiter.acquire(request(1), Duration::ZERO).await.expect("ok") else {
            panic!("first acquire must be granted");
        };
        let Acquire::TimedOut(t) = limiter.acquire(request(2), Duration::from_millis(20)).await.expect("ok") else {
            panic!("second acquire must time out");
        };
        assert_eq!((t.in_use, t.limit, t.queue_position), (1, 1, 1));
        assert!(t.waited >= Duration::from_millis(20));

        // A waiter whose future is dropped mid-wait (its job was cancelled) leaves the line.
        let abandoned = tokio::spawn({
            let limiter = limiter.clone();
            async move { limiter.acquire(request(3), Duration::from_secs(60)).await.map(|_| ()) }
        });
        while limiter.waiting() == 0 {
            tokio::task::yield_now().await;
        }
        abandoned.abort();
        let _ = abandoned.await;
        assert_eq!(limiter.waiting(), 0);

        drop(held);
        assert_eq!(limiter.in_use(), 0, "dropping a permit releases its slot");
        let Acquire::Granted(again) = limiter.acquire(request(4), Duration::ZERO).await.expect("ok") else {
            panic!("slot is free again");
        };
        assert!(again.fencing_token() > 1, "tokens grow");
    }
}
