//! The in-process slot limiter: a fair (first-come-first-served) semaphore with a bounded wait.
//! Used by the embedded run and as the local fallback when Redis is unreachable and policy is fail-open.
//! Following the query service's numbers, it holds back permits so that no more than the
//! service admits are out, as the Redis limiter's `lua/slots_service.lua` caps the fleet.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use futures::future::BoxFuture;
use projector_core::service::ServiceQuota;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{
    Acquire, ReleaseSlot, ServiceSteering, SlotLimiter, SlotPermit, SlotRequest, TimedOut, record_granted, record_released,
    record_timed_out,
};
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
    /// Slots granted and not yet given back.
    out: AtomicU32,
    next_token: AtomicU64,
    /// With `slots.follow_service`: the service's bound and the permits held back to enforce it.
    steer: Option<Arc<Steer>>,
    /// Ends the task that holds permits back, with the limiter.
    stop: CancellationToken,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl MemorySlotLimiter {
    pub fn new(limit: u32) -> Self {
        Self::build(limit, None)
    }

    /// A limiter whose limit in force is also capped by the query service's own numbers, as
    /// `slots.follow_service` caps the fleet's (the embedded run).
    pub fn following_service(limit: u32, steering: ServiceSteering) -> Self {
        Self::build(limit, Some(steering))
    }

    fn build(limit: u32, steering: Option<ServiceSteering>) -> Self {
        let steer = steering.map(|steering| {
            Arc::new(Steer {
                steering,
                share: std::sync::Mutex::new(ServiceShare::default()),
                held: std::sync::Mutex::new(None),
                changed: Notify::new(),
                started: std::sync::Once::new(),
            })
        });
        MemorySlotLimiter {
            inner: Arc::new(Inner {
                slots: Arc::new(Semaphore::new(limit as usize)),
                limit,
                waiting: AtomicU32::new(0),
                out: AtomicU32::new(0),
                next_token: AtomicU64::new(1),
                steer,
                stop: CancellationToken::new(),
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
    /// Slots held by queries (the permits held back for the service's cap are not).
    fn in_use(&self) -> u32 {
        self.out.load(Ordering::SeqCst)
    }

    fn record_occupancy(&self) {
        let limit = self.in_force();
        super::record_occupancy(self.in_use(), limit, if limit < self.limit { "service" } else { "config" });
    }

    /// The limit in force: the configured one, or the service's bound (cap, else room) while one
    /// holds.
    fn in_force(&self) -> u32 {
        let cap = self.steer.as_ref().and_then(|s| s.cap_now(Instant::now()));
        cap.map_or(self.limit, |c| c.min(self.limit))
    }
}

/// The service's numbers as they cap this process's limit: the cap, and the permits held back
/// from the semaphore so that only the cap's worth are handed out.
#[derive(Debug)]
struct Steer {
    steering: ServiceSteering,
    share: std::sync::Mutex<ServiceShare>,
    /// Permits out of circulation while a cap is in force (`limit − cap` of them once settled).
    held: std::sync::Mutex<Option<OwnedSemaphorePermit>>,
    changed: Notify,
    started: std::sync::Once,
}

impl Steer {
    fn cap_now(&self, now: Instant) -> Option<u32> {
        self.share.lock().ok().and_then(|s| s.in_force(now))
    }

    /// Takes a slot coming back into the permits held back when they are short of
    /// `limit − cap`; otherwise hands it back to go to the semaphore.
    fn absorb(&self, permit: OwnedSemaphorePermit, limit: u32) -> Option<OwnedSemaphorePermit> {
        let target = self.target(limit, Instant::now()).0;
        let Ok(mut held) = self.held.lock() else { return Some(permit) };
        let have = held.as_ref().map_or(0, OwnedSemaphorePermit::num_permits);
        if have >= target {
            return Some(permit);
        }
        hold(&mut held, permit);
        drop(held);
        // The task may be waiting for this one in its acquire_many: it settles again.
        self.changed.notify_one();
        None
    }

    /// How many permits the service's bound holds back, and when that bound next changes.
    fn target(&self, limit: u32, now: Instant) -> (usize, Option<Instant>) {
        let (cap, until) = match self.share.lock() {
            Ok(s) => (s.in_force(now).map_or(limit, |c| c.min(limit)), s.lapses(now)),
            Err(_) => (limit, None),
        };
        ((limit - cap) as usize, until)
    }

    /// Moves the permits held back toward `limit − bound` with what is free now, without waiting:
    /// surplus ones go back at once. Returns how many are still missing, and when the bound next
    /// changes.
    fn settle(&self, slots: &Arc<Semaphore>, limit: u32) -> (u32, Option<Instant>) {
        let (target, until) = self.target(limit, Instant::now());
        let Ok(mut held) = self.held.lock() else { return (0, until) };
        let mut have = held.as_ref().map_or(0, OwnedSemaphorePermit::num_permits);
        if have > target {
            match held.as_mut() {
                Some(h) if target > 0 => drop(h.split(have - target)),
                _ => *held = None,
            }
            have = target;
        }
        while have < target {
            // A free permit exists only when nobody waits for it, so this jumps no waiter.
            let Ok(p) = slots.clone().try_acquire_owned() else { break };
            hold(&mut held, p);
            have += 1;
        }
        (u32::try_from(target - have).unwrap_or(u32::MAX), until)
    }

    /// Keeps the permits held back settled as slots come back, as the cap changes, and when it
    /// lapses. The missing ones are taken with one `acquire_many`, which puts this task at the
    /// head of the semaphore's line: no waiter gets a slot until the slots out are under the cap.
    async fn hold_back(self: Arc<Self>, slots: Arc<Semaphore>, limit: u32, stop: CancellationToken) {
        loop {
            let (missing, until) = self.settle(&slots, limit);
            let lapses = async {
                match until {
                    Some(u) => tokio::time::sleep_until(u).await,
                    None => std::future::pending().await,
                }
            };
            let more = async {
                if missing == 0 {
                    return std::future::pending().await;
                }
                slots.clone().acquire_many_owned(missing).await
            };
            tokio::select! {
                got = more => match got {
                    Ok(p) => {
                        if let Ok(mut held) = self.held.lock() {
                            hold(&mut held, p);
                        }
                    }
                    Err(_closed) => return,
                },
                () = self.changed.notified() => {}
                () = lapses => {}
                () = stop.cancelled() => return,
            }
        }
    }
}

/// Adds `permit` to the permits held back.
fn hold(held: &mut Option<OwnedSemaphorePermit>, permit: OwnedSemaphorePermit) {
    match held.as_mut() {
        Some(h) => h.merge(permit),
        None => *held = Some(permit),
    }
}

/// Other callers' share of the referrer and the cap it leaves, computed as
/// `lua/slots_service.lua` computes them for the fleet (its header says why each rule).
#[derive(Debug, Default)]
struct ServiceShare {
    window_started: Option<Instant>,
    current: Option<i64>,
    previous: Option<i64>,
    rejected_at: Option<Instant>,
    /// The cap and when it lapses without a newer answer.
    cap: Option<(u32, Instant)>,
    /// What the service admits at all (its limit less the margin), and until when it is
    /// remembered (`slots.service_memory`): it bounds the limit after the cap lapses.
    room: Option<(u32, Instant)>,
}

/// The span over which a share must last to count (the Lua script's `WINDOW_MS`).
const SHARE_WINDOW: Duration = Duration::from_secs(5);

impl ServiceShare {
    /// The service's bound now: its cap while fresh, else its remembered room while that is.
    fn in_force(&self, now: Instant) -> Option<u32> {
        let fresh = |b: Option<(u32, Instant)>| b.filter(|(_, until)| *until > now);
        fresh(self.cap).or_else(|| fresh(self.room)).map(|(c, _)| c)
    }

    /// When the bound in force lapses (the cap's end, then the room's), if any bound holds.
    fn lapses(&self, now: Instant) -> Option<Instant> {
        [self.cap, self.room].into_iter().flatten().map(|(_, until)| until).filter(|u| *u > now).min()
    }

    /// One answer's numbers, with this process's slots in use now; returns the new cap.
    fn heard(&mut self, q: ServiceQuota, in_use: u32, steering: &ServiceSteering, rejected: bool, age: Duration, now: Instant) -> u32 {
        let seen = (q.quota_used - i64::from(in_use)).max(0);
        match self.window_started {
            Some(started) if now.duration_since(started) < SHARE_WINDOW => {
                self.current = Some(self.current.map_or(seen, |c| c.min(seen)));
            }
            started => {
                // A window that ended long ago (the last run) says nothing about now.
                if started.is_some_and(|s| now.duration_since(s) >= 2 * SHARE_WINDOW) {
                    self.current = None;
                }
                self.previous = self.current;
                self.current = Some(seen);
                self.window_started = Some(now);
            }
        }
        let current = self.current.unwrap_or(seen);
        let mut others = self.previous.map_or(current, |p| p.min(current));
        if rejected {
            others = others.max(seen);
        }
        let mut cap = q.rejection_threshold - others - i64::from(steering.margin);
        if steering.use_throttle && q.throttle_threshold > 0 {
            // The throttle point is a preference: it never takes more than half the room to
            // refusal (the Lua script's header says why).
            cap = cap.min((q.throttle_threshold - others).max((cap + 1) / 2));
        }
        let mut cap = u32::try_from(cap.max(1)).unwrap_or(u32::MAX);
        let mut room = q.rejection_threshold - i64::from(steering.margin);
        if steering.use_throttle && q.throttle_threshold > 0 {
            room = room.min(q.throttle_threshold);
        }
        self.room = Some((u32::try_from(room.max(1)).unwrap_or(u32::MAX), now + steering.memory));
        if rejected {
            self.rejected_at = Some(now);
        } else if let (Some(at), Some((held, _))) = (self.rejected_at, self.cap.filter(|(_, until)| *until > now))
            && now.checked_sub(age).is_some_and(|sent| sent < at)
        {
            // Numbers from before the latest refusal may lower the cap, never raise it.
            cap = cap.min(held);
        }
        self.cap = Some((cap, now + steering.ttl));
        cap
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
                    inner.out.fetch_add(1, Ordering::SeqCst);
                    record_granted(elapsed);
                    inner.record_occupancy();
                    let token = inner.next_token.fetch_add(1, Ordering::SeqCst);
                    let release = MemoryRelease { permit: Some(permit), inner: inner.clone() };
                    Ok(Acquire::Granted(SlotPermit::new(format!("mem-{token}"), token, CancellationToken::new(), Box::new(release))))
                }
                Ok(Err(_closed)) => Err(Error::LimiterClosed { waited: elapsed }),
                Err(_elapsed) => {
                    record_timed_out(elapsed);
                    Ok(Acquire::TimedOut(TimedOut {
                        waited: elapsed,
                        in_use: inner.in_use(),
                        limit: inner.in_force(),
                        queue_position: inner.waiting.load(Ordering::SeqCst) + 1,
                    }))
                }
            }
        })
    }

    fn limit(&self) -> u32 {
        self.inner.in_force()
    }

    fn heard_service(&self, quota: ServiceQuota, rejected: bool, age: Duration) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(async move {
            let inner = &self.inner;
            // Off, or the service's counter failed (-1): the configured limit rules.
            let Some(steer) = inner.steer.as_ref().filter(|_| quota.quota_used >= 0) else { return Ok(()) };
            let in_use = inner.in_use();
            let (before, cap) = match steer.share.lock() {
                Ok(mut share) => {
                    let now = Instant::now();
                    let before = share.in_force(now);
                    (before, share.heard(quota, in_use, &steer.steering, rejected, age, now))
                }
                Err(_) => return Ok(()),
            };
            // Before the caller gives its own slot back (a 429's numbers come first): the cap
            // takes what is free now, so the next waiter already meets it.
            steer.settle(&inner.slots, inner.limit);
            steer.started.call_once(|| {
                tokio::spawn(steer.clone().hold_back(inner.slots.clone(), inner.limit, inner.stop.clone()));
            });
            steer.changed.notify_one();
            if before != Some(cap) {
                tracing::info!(
                    cap,
                    was = before.unwrap_or(0),
                    service_limit = quota.rejection_threshold,
                    service_count = quota.quota_used,
                    leases = in_use,
                    limit_in_force = cap.min(inner.limit),
                    "the query service's numbers cap the slot limit"
                );
            }
            Ok(())
        })
    }
}

/// A granted slot: dropping it, however that comes about, gives the slot back.
struct MemoryRelease {
    permit: Option<OwnedSemaphorePermit>,
    inner: Arc<Inner>,
}

impl Drop for MemoryRelease {
    fn drop(&mut self) {
        if let (Some(permit), Some(steer)) = (self.permit.take(), &self.inner.steer) {
            // While more are out than the service's cap, a slot that comes back is held back
            // rather than handed to the next waiter.
            drop(steer.absorb(permit, self.inner.limit));
        }
        self.inner.out.fetch_sub(1, Ordering::SeqCst);
        record_released();
        self.inner.record_occupancy();
    }
}

impl ReleaseSlot for MemoryRelease {
    fn release(self: Box<Self>) -> BoxFuture<'static, Result<(), Error>> {
        drop(self);
        Box::pin(async { Ok(()) })
    }

    fn release_on_drop(self: Box<Self>) {
        // Nothing to await in memory: give the slot back right here.
        drop(self);
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

    async fn granted(limiter: &MemorySlotLimiter, org: u64) -> SlotPermit {
        match limiter.acquire(request(org), Duration::from_secs(1)).await.expect("ok") {
            Acquire::Granted(p) => p,
            Acquire::TimedOut(t) => panic!("org {org} got no slot: {t:?}"),
        }
    }

    async fn refused(limiter: &MemorySlotLimiter, org: u64) -> TimedOut {
        match limiter.acquire(request(org), Duration::from_secs(1)).await.expect("ok") {
            Acquire::Granted(_) => panic!("org {org} got a slot over the service's cap"),
            Acquire::TimedOut(t) => t,
        }
    }

    /// Until the task holding permits back has taken every free one (it waits at the head of the
    /// line for the rest).
    async fn held_back(limiter: &MemorySlotLimiter) {
        for _ in 0..1_000 {
            if limiter.inner.slots.available_permits() == 0 {
                return;
            }
            tokio::task::yield_now().await;
        }
        panic!("the permits over the cap were never held back");
    }

    /// The service admits 5 and throttles above 3, with 4 of this process's queries running: the
    /// cap is min(5 − 2, 3) = 3, no slot is granted until fewer than 3 are out, and when the cap
    /// lapses (`ttl` without a newer answer) the configured 10 rule again.
    #[tokio::test(start_paused = true)]
    async fn the_services_numbers_cap_the_limit_until_they_lapse() {
        let steering = ServiceSteering { margin: 2, ttl: Duration::from_secs(60), use_throttle: true, memory: Duration::ZERO };
        let limiter = MemorySlotLimiter::following_service(10, steering);
        let mut out = Vec::new();
        for org in 0..4 {
            out.push(granted(&limiter, org).await);
        }
        let numbers = ServiceQuota { quota_used: 4, rejection_threshold: 5, throttle_threshold: 3 };
        limiter.heard_service(numbers, false, Duration::ZERO).await.expect("heard");
        assert_eq!(limiter.limit(), 3);
        held_back(&limiter).await;
        let t = refused(&limiter, 10).await;
        assert_eq!((t.in_use, t.limit), (4, 3), "4 out, over the cap of 3");

        out.truncate(2);
        assert_eq!(limiter.in_use(), 2);
        let third = granted(&limiter, 11).await;
        let t = refused(&limiter, 12).await;
        assert_eq!((t.in_use, t.limit), (3, 3), "the cap is reached, not exceeded");

        // Other callers: the service counts 7 with 3 of ours out, so 4 are theirs and the cap is
        // max(1, 5 − 4 − 2) = 1; a refusal counts their share at once.
        let crowded = ServiceQuota { quota_used: 7, rejection_threshold: 5, throttle_threshold: 3 };
        limiter.heard_service(crowded, true, Duration::ZERO).await.expect("heard");
        assert_eq!(limiter.limit(), 1);
        drop(third);
        out.clear();
        let only = granted(&limiter, 13).await;
        let t = refused(&limiter, 14).await;
        assert_eq!((t.in_use, t.limit), (1, 1));
        drop(only);

        // No answer for longer than ttl: the cap lapses and the held-back permits come back.
        tokio::time::sleep(Duration::from_secs(61)).await;
        assert_eq!(limiter.limit(), 10);
        let mut all = Vec::new();
        for org in 20..30 {
            all.push(granted(&limiter, org).await);
        }
        assert_eq!(limiter.in_use(), 10);
    }

    /// Without `slots.follow_service`, or with the service's counter failed (-1), the numbers
    /// change nothing.
    #[tokio::test]
    async fn numbers_are_ignored_when_not_followed_or_unknown() {
        let numbers = ServiceQuota { quota_used: 1, rejection_threshold: 2, throttle_threshold: 0 };
        let plain = MemorySlotLimiter::new(10);
        plain.heard_service(numbers, false, Duration::ZERO).await.expect("heard");
        assert_eq!(plain.limit(), 10);
        let steering = ServiceSteering { margin: 0, ttl: Duration::from_secs(60), use_throttle: false, memory: Duration::ZERO };
        let following = MemorySlotLimiter::following_service(10, steering);
        following.heard_service(ServiceQuota { quota_used: -1, ..numbers }, false, Duration::ZERO).await.expect("heard");
        assert_eq!(following.limit(), 10);
        // The one query the service counts is this process's own: the cap is the service's 2.
        let _ours = granted(&following, 1).await;
        following.heard_service(numbers, false, Duration::ZERO).await.expect("heard");
        assert_eq!(following.limit(), 2);
    }

    /// With `slots.service_memory`, the service's own limit less the margin (10 − 2) outlives
    /// the cap that also counted other callers (10 − 4 − 2): the limit in force goes from 4 to 8,
    /// not back to the configured 20, until the memory lapses too.
    #[tokio::test(start_paused = true)]
    async fn the_services_room_outlives_its_cap_for_its_memory() {
        let steering = ServiceSteering { margin: 2, ttl: Duration::from_secs(60), use_throttle: false, memory: Duration::from_secs(3600) };
        let limiter = MemorySlotLimiter::following_service(20, steering);
        let ours = granted(&limiter, 1).await;
        let numbers = ServiceQuota { quota_used: 5, rejection_threshold: 10, throttle_threshold: 66 };
        limiter.heard_service(numbers, false, Duration::ZERO).await.expect("heard");
        assert_eq!(limiter.limit(), 4, "10 less 4 of other callers less the margin");
        drop(ours);

        tokio::time::sleep(Duration::from_secs(61)).await;
        assert_eq!(limiter.limit(), 8, "the cap lapsed, the room holds");
        let mut out = Vec::new();
        for org in 10..18 {
            out.push(granted(&limiter, org).await);
        }
        let t = refused(&limiter, 18).await;
        assert_eq!((t.in_use, t.limit), (8, 8));
        out.clear();

        tokio::time::sleep(Duration::from_secs(3600)).await;
        assert_eq!(limiter.limit(), 20, "forgotten after its memory");
        for org in 20..40 {
            out.push(granted(&limiter, org).await);
        }
    }
}
