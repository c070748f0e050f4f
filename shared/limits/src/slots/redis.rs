//! The cluster-wide slot limiter on Redis: per-holder leases scored by Redis time, fencing tokens,
//! first-come-first-served waiters woken directly on release, renewal while held, bounded waits.
//! This file is the limiter (acquire, renew, release); `admin` is what operators do to it,
//! `adaptive` how the service's numbers and the fleet's answers move its limit, `pool` the
//! bounded blocking connections its waits use, `history` the samples the status page charts.

mod adaptive;
mod admin;
mod history;
mod pool;

pub use adaptive::AdaptiveWindow;
pub use admin::{Holder, SlotState};
pub use history::{HISTORY_SPAN, SlotHistory, SlotSample, samples_to_keep};

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use futures::future::BoxFuture;
use projector_redis::redis_conn::RedisConn;
use rand::Rng;
use redis::Client;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::scripts::{ACQUIRE, Acquired, CANCEL, Cancelled, PAUSE, RELEASE, RENEW, Released};
use super::{
    Acquire, ReleaseSlot, SlotLimiter, SlotPermit, SlotRequest, TimedOut, record_granted, record_released, record_timed_out,
    renew_while_held,
};
use crate::error::Error;
use projector_core::metrics as m;
use projector_core::service::ServiceQuota;
use projector_redis::backoff::Backoff;
use projector_redis::keys::SlotKeys;
use projector_redis::redis_conn::{Endpoint, is_transient, redact_text};

/// How the Redis limiter behaves; `limit` and `lease_ttl` come from `slots.*`.
#[derive(Debug, Clone)]
pub struct RedisSlotSettings {
    /// Name of the limiter (part of every key); "default" unless several resources are limited.
    pub name: String,
    /// Written to Redis only when no limit is set there yet; operators change it at runtime.
    pub initial_limit: u32,
    pub lease_ttl: Duration,
    /// How long a slot handed to a waiter stays reserved for it before it must collect it.
    pub handoff_reserve: Duration,
    /// A waiter re-checks this often (jittered) in case a wake-up was missed.
    pub recheck: Duration,
    /// Budget for one round trip; waits return within `max_wait` plus this, even when Redis is down.
    pub round_trip_budget: Duration,
    /// How the query service's own numbers cap the limit (`slots.follow_service`); `None`: they
    /// do not.
    pub service: Option<ServiceSteering>,
    /// At most one report of the service's numbers per this span from this process
    /// (`slots.service_report_every`), unless it is a refusal or the service's limits changed.
    pub service_report_every: Duration,
}

/// How the query service's numbers cap the fleet's limit (`lua/slots_service.lua`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ServiceSteering {
    /// Kept below what the service admits, for queries that start between two answers.
    pub margin: u32,
    /// How long one answer's cap holds without a newer one.
    pub ttl: Duration,
    /// Also stay at or under the service's throttle point (`adaptive.use_throttle_signal`).
    pub use_throttle: bool,
    /// How long the service's own limit (less the margin) still bounds the limit after the cap
    /// lapses (`slots.service_memory`): the next run starts within it. Zero: forgotten with the cap.
    pub memory: Duration,
}

impl RedisSlotSettings {
    pub fn new(initial_limit: u32, lease_ttl: Duration) -> Self {
        RedisSlotSettings {
            name: "default".to_owned(),
            initial_limit,
            lease_ttl,
            // A waiter handed a slot is blocked on its wake-up list and collects it within one
            // round trip; a longer reserve only idles the slot when the waiter is gone.
            handoff_reserve: Duration::from_secs(1).min(lease_ttl),
            recheck: Duration::from_secs(1),
            round_trip_budget: Duration::from_millis(500),
            service: None,
            service_report_every: Duration::ZERO,
        }
    }

    /// Sends the service's numbers at most once per `every` (`slots.service_report_every`).
    pub fn reporting_service_every(self, every: Duration) -> Self {
        RedisSlotSettings { service_report_every: every, ..self }
    }

    /// With the query service's numbers capping the limit.
    pub fn following_service(self, steering: ServiceSteering) -> Self {
        RedisSlotSettings { service: Some(steering), ..self }
    }

    fn renew_every(&self) -> Duration {
        self.lease_ttl / 3
    }
}

/// Slots shared by every process that points at the same Redis and limiter name.
#[derive(Clone)]
pub struct RedisSlotLimiter {
    inner: Arc<Inner>,
}

struct Inner {
    endpoint: Endpoint,
    client: Client,
    conn: RedisConn,
    /// Dedicated connections for `BLPOP`, one per blocked waiter, reused afterwards (bounded).
    blocking: pool::BlockingPool,
    keys: SlotKeys,
    settings: RedisSlotSettings,
    /// The limit last seen in Redis, for `limit()` and the utilization gauge.
    limit_seen: AtomicU32,
    /// The service's cap this process set or saw last (0: none), to log only its changes.
    service_cap_seen: AtomicU32,
    /// This process's last report of the service's numbers: when, and the limits it carried.
    service_reported: std::sync::Mutex<Option<(Instant, i64, i64)>>,
    /// Renewals, release retries and abandoned waits: tracked so a process can wait for them at exit.
    background: tokio_util::task::TaskTracker,
}

impl RedisSlotLimiter {
    /// Creates a limiter; no connection is made until the first call, so a worker starts even if Redis is down.
    pub fn new(endpoint: impl Into<Endpoint>, settings: RedisSlotSettings) -> Result<Self, Error> {
        let endpoint = endpoint.into();
        let unavailable = |e: redis::RedisError| Error::SlotBackendUnavailable {
            detail: redact_text(&format!("{}: {e}", endpoint.redacted()), &endpoint),
        };
        let (client, conn) = projector_redis::redis_conn::connection_manager(&endpoint, settings.round_trip_budget).map_err(unavailable)?;
        Ok(RedisSlotLimiter {
            inner: Arc::new(Inner {
                endpoint,
                client,
                conn,
                blocking: pool::BlockingPool::default(),
                keys: SlotKeys::new(&settings.name),
                limit_seen: AtomicU32::new(settings.initial_limit),
                service_cap_seen: AtomicU32::new(0),
                service_reported: std::sync::Mutex::new(None),
                settings,
                background: tokio_util::task::TaskTracker::new(),
            }),
        })
    }

    /// Waits at most `within` for this limiter's background work (renewals, release retries,
    /// abandoned waits) to end; false if some is still running. Call once nothing holds a slot.
    pub async fn wait_for_background(&self, within: Duration) -> bool {
        let background = &self.inner.background;
        background.close();
        let ended = tokio::time::timeout(within, background.wait()).await.is_ok();
        background.reopen();
        ended
    }

    async fn acquire_inner(&self, id: String, request: SlotRequest, max_wait: Duration) -> Result<Acquire, Error> {
        let inner = &self.inner;
        let started = Instant::now();
        let deadline = started + max_wait;
        let info = format!("{}|{}", request.holder, request.org_id);
        // A slot taken for a query is first granted until the query must have ended at the
        // service; renewals then never shorten it (ZADD GT), so a paused holder keeps it.
        let first_lease = request.query_max_duration.map_or(inner.settings.lease_ttl, |q| q.max(inner.settings.lease_ttl));
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let nap = jitter(inner.settings.recheck).min(remaining);
            // The waiter's entry lasts until a second after its next re-check (after this nap): a
            // live waiter renews it every round, while a dead one's is passed over at hand-off
            // once it is overdue and reclaimed a second after it would have re-checked, so no slot
            // is handed to a process that is gone (`hand_off` in lua/lib/slots.lua).
            let wait_ms = if remaining.is_zero() { 0 } else { ms(nap) + ENTRY_GRACE_MS };
            let asked = Instant::now();
            let reply: Acquired = inner
                .call(
                    ACQUIRE
                        .on(&inner.keys)
                        .arg(&id)
                        .arg(&info)
                        .arg(ms(first_lease))
                        .arg(wait_ms)
                        .arg(inner.settings.initial_limit)
                        .arg(ms(inner.settings.handoff_reserve))
                        .arg(inner.keys.wake_prefix()),
                )
                .await?;
            record_reclaimed(reply.reclaimed);
            inner.limit_seen.store(reply.limit, Ordering::SeqCst);
            if let Some(token) = reply.granted {
                return Ok(self.granted(id, token, first_lease, started, asked));
            }
            if remaining.is_zero() {
                return self.give_up(id, first_lease, started).await;
            }
            if let Some(token) = self.wait_for_handoff(&id, nap).await? {
                // The lease was made for us, reserved briefly; a renewal makes it a full lease.
                let asked = Instant::now();
                let renewed: u8 = inner.call(RENEW.on(&inner.keys).arg(&id).arg(ms(first_lease))).await?;
                if renewed == 1 {
                    return Ok(self.granted(id, token, first_lease, started, asked));
                }
            }
        }
    }

    /// Blocks on this waiter's own wake-up list for at most `nap`. `Some(token)` when a slot was handed over.
    async fn wait_for_handoff(&self, id: &str, nap: Duration) -> Result<Option<u64>, Error> {
        let inner = &self.inner;
        let seconds = nap.as_secs_f64().max(0.001);
        // A pooled connection may have died with a Redis restart: when one fails, whatever the
        // error, every pooled connection is dropped and the wait is tried once more on a fresh one
        // (as after a transient error on a fresh one); a stale connection is never an outcome.
        let mut retried = false;
        loop {
            let (mut conn, pooled) = inner.blocking_connection().await?;
            let popped: Result<Option<(String, u64)>, _> =
                redis::cmd("BLPOP").arg(inner.keys.wake(id)).arg(seconds).query_async(&mut conn).await;
            match popped {
                Ok(result) => {
                    inner.return_blocking(conn);
                    return Ok(result.map(|(_, token)| token));
                }
                Err(e) if (pooled || is_transient(&e)) && !retried => {
                    tracing::debug!(error = %e, pooled, "slot wait connection failed; retrying on a fresh one");
                    inner.blocking.clear();
                    retried = true;
                }
                Err(e) => return Err(inner.unavailable(e)),
            }
        }
    }

    /// Leaves the queue at the deadline; a slot handed over in the same instant is taken, not lost.
    async fn give_up(&self, id: String, first_lease: Duration, started: Instant) -> Result<Acquire, Error> {
        let inner = &self.inner;
        let asked = Instant::now();
        let left: Cancelled = inner.call(CANCEL.on(&inner.keys).arg(&id).arg(ms(first_lease)).arg(inner.keys.wake_prefix())).await?;
        if let Some(token) = left.granted {
            return Ok(self.granted(id, token, first_lease, started, asked));
        }
        let waited = started.elapsed();
        record_timed_out(waited);
        Ok(Acquire::TimedOut(TimedOut { waited, in_use: left.in_use, limit: left.limit, queue_position: left.waiters_left + 1 }))
    }

    /// A lease made by a call begun at `asked`.
    fn granted(&self, id: String, token: u64, first_lease: Duration, started: Instant, asked: Instant) -> Acquire {
        record_granted(started.elapsed());
        let lost = CancellationToken::new();
        let stop = CancellationToken::new();
        let held_until = Instant::now() + first_lease;
        let (inner, lease) = (self.inner.clone(), id.clone());
        let renew = move || {
            let (inner, lease) = (inner.clone(), lease.clone());
            async move {
                inner.call::<u8>(RENEW.on(&inner.keys).arg(&lease).arg(ms(inner.settings.lease_ttl))).await.map(|renewed| renewed == 1)
            }
        };
        let settings = &self.inner.settings;
        self.inner.background.spawn(renew_while_held(
            id.clone(),
            settings.renew_every(),
            settings.lease_ttl,
            held_until,
            lost.clone(),
            stop.clone(),
            renew,
        ));
        let release = RedisRelease { inner: self.inner.clone(), id: id.clone(), held_until, stop };
        Acquire::Granted(SlotPermit::new(id, token, lost, Box::new(release)).leased(asked, first_lease))
    }
}

impl Inner {
    fn unavailable(&self, e: redis::RedisError) -> Error {
        Error::SlotBackendUnavailable { detail: e.to_string() }
    }

    /// One script call, bounded by the round-trip budget whatever the connection is doing. A
    /// connection error is retried (every script is idempotent: acquire by its waiter id): after
    /// Redis comes back, a pooled connection fails its first call before it reconnects, and that
    /// must not become an org's outcome.
    async fn call<T: redis::FromRedisValue>(&self, invocation: &redis::ScriptInvocation<'_>) -> Result<T, Error> {
        let deadline = Instant::now() + self.settings.round_trip_budget;
        let mut backoff = Backoff::new(Duration::from_millis(20), self.settings.round_trip_budget);
        loop {
            let mut conn = self.conn.clone();
            let left = deadline.saturating_duration_since(Instant::now());
            let error = match tokio::time::timeout(left, invocation.invoke_async(&mut conn)).await {
                Ok(Ok(v)) => return Ok(v),
                Ok(Err(e)) if is_transient(&e) => self.unavailable(e),
                Ok(Err(e)) => return Err(self.unavailable(e)),
                Err(_) => {
                    return Err(Error::SlotBackendUnavailable {
                        detail: format!("no answer within {:?}", self.settings.round_trip_budget),
                    });
                }
            };
            let pause = backoff.next_pause();
            if Instant::now() + pause >= deadline {
                return Err(error);
            }
            tokio::time::sleep(pause).await;
        }
    }
}

impl SlotLimiter for RedisSlotLimiter {
    fn acquire(&self, request: SlotRequest, max_wait: Duration) -> BoxFuture<'_, Result<Acquire, Error>> {
        Box::pin(async move {
            // Whatever Redis does, the caller hears back within max_wait plus one round trip (plus the give-up call).
            let bound = max_wait + self.inner.settings.round_trip_budget * 2;
            let started = Instant::now();
            let id = uuid::Uuid::new_v4().simple().to_string();
            // If this wait ends without an answer (dropped with its job, timed out, or Redis
            // failed), its place in the queue, or a slot handed to it, must not be left behind
            // for a waiter that is gone: every later release would hand slots to the ghost.
            let mut guard =
                AbandonOnDrop { inner: Some(self.inner.clone()), id: id.clone(), until: started + max_wait + Duration::from_secs(2) };
            let result = tokio::time::timeout(bound, self.acquire_inner(id, request, max_wait)).await;
            if matches!(result, Ok(Ok(_))) {
                guard.inner = None;
            }
            match result {
                Ok(result) => result,
                // The timer fired far later than asked: this process was stopped or starved (a
                // pause, a VM stall), not Redis. The job got no slot within max_wait: say so.
                Err(_) if started.elapsed() > bound + Duration::from_secs(1) => {
                    tracing::warn!(
                        waited_ms = started.elapsed().as_millis() as u64,
                        bound_ms = bound.as_millis() as u64,
                        "slot wait overran its bound: this process was paused or starved of CPU, not Redis"
                    );
                    record_timed_out(started.elapsed());
                    Ok(Acquire::TimedOut(TimedOut { waited: started.elapsed(), in_use: 0, limit: self.limit(), queue_position: 0 }))
                }
                Err(_) => Err(Error::SlotBackendUnavailable {
                    detail: format!("the slot limiter gave no answer within {bound:?} (Redis slow or unreachable)"),
                }),
            }
        })
    }

    fn limit(&self) -> u32 {
        self.inner.limit_seen.load(Ordering::SeqCst)
    }

    fn pause_grants(&self, cooldown: Duration) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(async move {
            let _ends: u64 = self.inner.call(PAUSE.on(&self.inner.keys).arg(ms(cooldown))).await?;
            Ok(())
        })
    }

    fn heard_service(&self, quota: ServiceQuota, rejected: bool, age: Duration) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(async move {
            if quota.quota_used < 0 {
                // The service's counter failed (-1): nothing to learn from this answer.
                return Ok(());
            }
            // Not following (slots.follow_service off), the numbers are still recorded, with a
            // cap that is never in force: status and the other-callers gauge work them out at
            // the answers, as when following.
            if !rejected && !self.report_due(quota) {
                return Ok(());
            }
            let observe = ServiceSteering { margin: 0, ttl: Duration::ZERO, use_throttle: false, memory: Duration::ZERO };
            let steering = self.inner.settings.service.unwrap_or(observe);
            self.heard_service(quota, &steering, rejected, age).await.map(|_| ())
        })
    }
}

impl RedisSlotLimiter {
    /// Whether an answer's numbers go to Redis: one script call per answer would be the largest
    /// Redis cost of a short query, and a few reports a second per worker keep the cap and the
    /// other callers' count current. Always when the service's limits changed (a new override),
    /// else once per `service_report_every`; a refusal never asks (the caller sends it).
    fn report_due(&self, quota: ServiceQuota) -> bool {
        let every = self.inner.settings.service_report_every;
        let mut last = self.inner.service_reported.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = Instant::now();
        let due = match *last {
            Some((at, threshold, throttle)) => {
                now.duration_since(at) >= every || threshold != quota.rejection_threshold || throttle != quota.throttle_threshold
            }
            None => true,
        };
        if due {
            *last = Some((now, quota.rejection_threshold, quota.throttle_threshold));
        }
        due
    }
}

/// Leaves the queue for a wait that ended without an answer: cancels the waiter and gives back a
/// slot handed to it meanwhile, retrying in the background until the waiter would have expired.
struct AbandonOnDrop {
    /// `None` once the wait ended with an answer (granted, or given up cleanly).
    inner: Option<Arc<Inner>>,
    id: String,
    until: Instant,
}

impl Drop for AbandonOnDrop {
    fn drop(&mut self) {
        let Some(inner) = self.inner.take() else { return };
        let Ok(handle) = tokio::runtime::Handle::try_current() else { return };
        let (id, until) = (std::mem::take(&mut self.id), self.until);
        let background = inner.background.clone();
        background.spawn_on(
            async move {
                let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
                loop {
                    let pause = backoff.next_pause();
                    let cancelled: Result<Cancelled, Error> =
                        inner.call(CANCEL.on(&inner.keys).arg(&id).arg(ms(inner.settings.lease_ttl)).arg(inner.keys.wake_prefix())).await;
                    let released = match cancelled {
                        Ok(Cancelled { granted: Some(_), .. }) => inner
                            .call::<Released>(
                                RELEASE
                                    .on(&inner.keys)
                                    .arg(&id)
                                    .arg(inner.settings.initial_limit)
                                    .arg(ms(inner.settings.handoff_reserve))
                                    .arg(inner.keys.wake_prefix()),
                            )
                            .await
                            .map(|_| ()),
                        Ok(_) => Ok(()),
                        Err(e) => Err(e),
                    };
                    match released {
                        Ok(()) => return,
                        Err(e) if Instant::now() + pause >= until => {
                            tracing::debug!(waiter = %id, error = %e, "cannot leave the slot queue; the entry expires on its own");
                            return;
                        }
                        Err(_) => tokio::time::sleep(pause).await,
                    }
                }
            },
            &handle,
        );
    }
}

struct RedisRelease {
    inner: Arc<Inner>,
    id: String,
    /// When the first lease ends at the latest; a failed release is retried until then.
    held_until: Instant,
    stop: CancellationToken,
}

impl RedisRelease {
    async fn release_once(&self) -> Result<(), Error> {
        let inner = &self.inner;
        let released: Released = inner
            .call(
                RELEASE
                    .on(&inner.keys)
                    .arg(&self.id)
                    .arg(inner.settings.initial_limit)
                    .arg(ms(inner.settings.handoff_reserve))
                    .arg(inner.keys.wake_prefix()),
            )
            .await?;
        record_reclaimed(released.reclaimed);
        record_released();
        Ok(())
    }

    /// After a failed release: a lease left behind would hold a slot for nothing until it expires
    /// (after an outage, AOF even restores it), so keep trying until the release succeeds or the
    /// lease has run out anyway.
    async fn retry_until_expired(&self) {
        let give_up_at = Instant::now().max(self.held_until) + self.inner.settings.lease_ttl;
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
        while Instant::now() < give_up_at {
            tokio::time::sleep(backoff.next_pause()).await;
            match self.release_once().await {
                Ok(()) => {
                    tracing::info!(lease_id = %self.id, "slot released after a failed attempt");
                    return;
                }
                Err(e) => tracing::debug!(lease_id = %self.id, error = %e, "slot release retry failed"),
            }
        }
    }
}

impl ReleaseSlot for RedisRelease {
    fn cover(&self, query_max_duration: Duration) -> BoxFuture<'static, Result<(), Error>> {
        let (inner, id) = (self.inner.clone(), self.id.clone());
        Box::pin(async move {
            let renewed: u8 = inner.call(RENEW.on(&inner.keys).arg(&id).arg(ms(query_max_duration))).await?;
            if renewed == 1 {
                Ok(())
            } else {
                Err(Error::SlotBackendUnavailable { detail: format!("slot lease {id} expired before its next query") })
            }
        })
    }

    fn keep(self: Box<Self>, until: Instant) {
        // Renewed while kept, then released: if this process dies meanwhile, the lease still runs
        // at least to its last query's start + query.max_duration (the grant's floor, or `cover`).
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.release_on_drop();
            return;
        };
        let background = self.inner.background.clone();
        background.spawn_on(
            async move {
                tokio::time::sleep_until(until).await;
                if let Err(e) = self.release().await {
                    tracing::warn!(error = %e, "releasing a kept slot failed; its lease expires on its own");
                }
            },
            &runtime,
        );
    }

    fn release(self: Box<Self>) -> BoxFuture<'static, Result<(), Error>> {
        // Renewals stop now, whether or not the caller waits for the answer.
        self.stop.cancel();
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            // Nowhere to retry from: one attempt, when the caller polls it.
            return Box::pin(async move { self.release_once().await });
        };
        // The release runs in its own task, started now: a caller dropped mid-release (its job
        // loop failed during an outage) must not leave the lease behind with renewals stopped,
        // where it would hold a slot for nothing until its query floor ran out.
        let (first_attempt, answer) = tokio::sync::oneshot::channel();
        let background = self.inner.background.clone();
        background.spawn_on(
            async move {
                let Err(e) = self.release_once().await else {
                    let _ = first_attempt.send(Ok(()));
                    return;
                };
                let _ = first_attempt.send(Err(e));
                self.retry_until_expired().await;
            },
            &runtime,
        );
        Box::pin(async move {
            answer.await.unwrap_or_else(|_| {
                Err(Error::SlotBackendUnavailable { detail: "the runtime stopped before the slot was released".to_owned() })
            })
        })
    }
}

fn record_reclaimed(n: u64) {
    if n > 0 {
        metrics::counter!(m::SLOT_LEASE_RECLAIMED_TOTAL).increment(n);
    }
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// How long a waiter's queue entry outlives its next re-check: room for one slow round trip.
/// `hand_off` (lua/lib/slots.lua, `OVERDUE_MS`) passes over a waiter 300 ms late for its re-check.
const ENTRY_GRACE_MS: u64 = 1_000;

/// `d` ± 20%, so waiters that missed a wake-up do not re-check in lockstep.
fn jitter(d: Duration) -> Duration {
    let factor = rand::rng().random_range(0.8..1.2);
    d.mul_f64(factor)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One report per span, unless the service's limits changed; no Redis is needed to decide.
    #[tokio::test(start_paused = true)]
    async fn the_services_numbers_are_reported_once_per_span_or_when_its_limits_change() {
        let settings = RedisSlotSettings::new(10, Duration::from_secs(30)).reporting_service_every(Duration::from_millis(250));
        let limiter = RedisSlotLimiter::new("redis://127.0.0.1:1", settings).expect("no connection is made yet");
        let q = |used, threshold| ServiceQuota { quota_used: used, rejection_threshold: threshold, throttle_threshold: 66 };
        assert!(limiter.report_due(q(5, 100)), "the first answer");
        assert!(!limiter.report_due(q(9, 100)), "the same limits within the span");
        assert!(limiter.report_due(q(9, 30)), "a new limit at once");
        tokio::time::advance(Duration::from_millis(100)).await;
        assert!(!limiter.report_due(q(12, 30)));
        tokio::time::advance(Duration::from_millis(150)).await;
        assert!(limiter.report_due(q(12, 30)), "a span after the last report");
    }
}
