//! The cluster-wide slot limiter on Redis: per-holder leases scored by Redis time, fencing tokens,
//! first-come-first-served waiters woken directly on release, renewal while held, bounded waits.

mod history;

pub use history::{HISTORY_SPAN, SlotHistory, SlotSample, samples_to_keep};

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use projector_redis::redis_conn::RedisConn;
use rand::Rng;
use redis::Client;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::scripts::{
    ACQUIRE, ADAPTIVE, Acquired, AdaptiveReport, CANCEL, Cancelled, OCCUPANCY, Occupancy, PAUSE, RELEASE, RENEW, RESET, Released, SERVICE,
    SET_LIMIT, ServiceCap,
};
use super::{Acquire, ReleaseSlot, SlotLimiter, SlotPermit, SlotRequest, TimedOut, record_granted, record_released, record_timed_out};
use crate::adaptive::{ADAPTIVE_MIN_SAMPLES, AdaptiveSettings, SignalCounts};
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
}

impl RedisSlotSettings {
    pub fn new(initial_limit: u32, lease_ttl: Duration) -> Self {
        RedisSlotSettings {
            name: "default".to_owned(),
            initial_limit,
            lease_ttl,
            handoff_reserve: Duration::from_secs(2).min(lease_ttl),
            recheck: Duration::from_secs(1),
            round_trip_budget: Duration::from_millis(500),
            service: None,
        }
    }

    /// With the query service's numbers capping the limit.
    pub fn following_service(self, steering: ServiceSteering) -> Self {
        RedisSlotSettings { service: Some(steering), ..self }
    }

    fn renew_every(&self) -> Duration {
        self.lease_ttl / 3
    }
}

/// One holder of a slot, as `inspect` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub lease_id: String,
    /// The process holding it (a worker's name, or the embedded run's).
    pub process: String,
    pub org_id: String,
    pub fencing_token: u64,
    pub age: Duration,
    pub expires_in: Duration,
}

/// The state of the limiter, for operators.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotState {
    pub limit: Option<u32>,
    pub holders: Vec<Holder>,
    /// Waiter ids with `holder|org`, in arrival order.
    pub waiters: Vec<(String, String)>,
    /// How soon the first waiter to give up does (its deadline, on Redis time); with the
    /// waiters' `slots.max_wait` this tells how long the oldest has waited.
    pub first_gives_up_in: Option<Duration>,
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
    /// Dedicated connections for `BLPOP`, one per blocked waiter, reused afterwards.
    blocking: Mutex<Vec<RedisConn>>,
    keys: SlotKeys,
    settings: RedisSlotSettings,
    /// The limit last seen in Redis, for `limit()` and the utilization gauge.
    limit_seen: AtomicU32,
    /// The service's cap this process set or saw last (0: none), to log only its changes.
    service_cap_seen: AtomicU32,
    /// Renewals, release retries and abandoned waits: tracked so a process can wait for them at exit.
    background: tokio_util::task::TaskTracker,
}

/// The last window the fleet's adaptive limit closed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AdaptiveWindow {
    pub closed_ms_ago: u64,
    /// Windows the fleet has closed since the multiplier was last reset.
    pub windows_closed: u64,
    pub ok: u64,
    pub rate_limited: u64,
    pub throttled: u64,
    /// What moved the multiplier: `429`, `throttle`, `demand`, or empty.
    pub signal: String,
}

/// What `inspect` reads in one pipeline: limit, leases with expiry, holder info, queue, waiter
/// info, the earliest waiter deadline, Redis `TIME`.
type RawSlotState = (
    Option<u32>,
    Vec<(String, u64)>,
    std::collections::HashMap<String, String>,
    Vec<String>,
    std::collections::HashMap<String, String>,
    Vec<(String, u64)>,
    (u64, u64),
);

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
                blocking: Mutex::new(Vec::new()),
                keys: SlotKeys::new(&settings.name),
                limit_seen: AtomicU32::new(settings.initial_limit),
                service_cap_seen: AtomicU32::new(0),
                settings,
                background: tokio_util::task::TaskTracker::new(),
            }),
        })
    }

    /// Sets the limit for every process at once. Lowering it interrupts no holder; raising it serves waiters now.
    pub async fn set_limit(&self, limit: u32) -> Result<(), Error> {
        let inner = &self.inner;
        let _in_use_and_limit: (u32, u32) = inner
            .call(SET_LIMIT.key(inner.keys.script_keys()).arg(limit).arg(ms(inner.settings.handoff_reserve)).arg(inner.keys.wake_prefix()))
            .await?;
        inner.limit_seen.store(limit, Ordering::SeqCst);
        Ok(())
    }

    /// Forgets the stored limit: the next slot request writes its process's configured
    /// `slots.limit` again (the way to hand the limit back to configuration).
    pub async fn clear_limit(&self) -> Result<bool, Error> {
        let removed: u8 = redis::cmd("DEL")
            .arg(self.inner.keys.limit())
            .query_async(&mut self.inner.conn.clone())
            .await
            .map_err(|e| self.inner.unavailable(e))?;
        Ok(removed == 1)
    }

    /// Drops every lease and waiter (after an incident: the `reset_concurrent_count` of earlier designs); returns how many leases were dropped.
    /// Holders learn at their next renewal that their lease is gone.
    pub async fn reset(&self) -> Result<u64, Error> {
        self.inner.call(&RESET.key(self.inner.keys.script_keys())).await
    }

    /// The limit, holders and waiters, as Redis has them now.
    pub async fn inspect(&self) -> Result<SlotState, Error> {
        let k = &self.inner.keys;
        let mut conn = self.inner.conn.clone();
        let (limit, leases, holders, queue, waiting, first_deadline, time): RawSlotState = redis::pipe()
            .get(k.limit())
            .zrange_withscores(k.leases(), 0, -1)
            .hgetall(k.holders())
            .zrange(k.queue(), 0, -1)
            .hgetall(k.waiting())
            .zrange_withscores(k.waiter_deadlines(), 0, 0)
            .cmd("TIME")
            .query_async(&mut conn)
            .await
            .map_err(|e| self.inner.unavailable(e))?;
        let now = time.0 * 1000 + time.1 / 1000;
        let holders = leases
            .into_iter()
            .map(|(lease_id, expiry)| {
                let info = holders.get(&lease_id).cloned().unwrap_or_default();
                let mut parts = info.split('|');
                let process = parts.next().unwrap_or_default().to_owned();
                let org_id = parts.next().unwrap_or_default().to_owned();
                let acquired: u64 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(now);
                let fencing_token = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
                Holder {
                    lease_id,
                    process,
                    org_id,
                    fencing_token,
                    age: Duration::from_millis(now.saturating_sub(acquired)),
                    expires_in: Duration::from_millis(expiry.saturating_sub(now)),
                }
            })
            .collect();
        let waiters = queue
            .into_iter()
            .map(|id| {
                let info = waiting.get(&id).cloned().unwrap_or_default();
                (id, info)
            })
            .collect();
        let first_gives_up_in = first_deadline.first().map(|(_, at)| Duration::from_millis(at.saturating_sub(now)));
        Ok(SlotState { limit, holders, waiters, first_gives_up_in })
    }

    /// Live leases (unexpired, on Redis time) and the limit stored in Redis (`None` before any
    /// worker or operator set one).
    pub async fn occupancy(&self) -> Result<(u32, Option<u32>), Error> {
        let now = self.occupancy_now().await?;
        Ok((now.in_use, now.limit))
    }

    /// Live leases, the stored limit, the limit in force (stored x adaptive multiplier) and the
    /// multiplier: what the fleet-wide gauges report.
    pub async fn occupancy_now(&self) -> Result<Occupancy, Error> {
        self.inner.call(&OCCUPANCY.key(self.inner.keys.script_keys())).await
    }

    /// Caps the fleet's limit by the query service's own numbers from one answer (the cap holds
    /// `steering.ttl`), and says what the cap became. Logs when it changes.
    /// `rejected`: the numbers came with a 429, so the fleet is over what the service admits now.
    /// `age`: how long ago the answered query was sent (its numbers are as of then).
    pub async fn heard_service(
        &self,
        quota: ServiceQuota,
        steering: &ServiceSteering,
        rejected: bool,
        age: Duration,
    ) -> Result<ServiceCap, Error> {
        let inner = &self.inner;
        let mut call = SERVICE.key(inner.keys.script_keys());
        call.arg(quota.quota_used)
            .arg(quota.rejection_threshold)
            .arg(quota.throttle_threshold.max(0))
            .arg(u8::from(steering.use_throttle))
            .arg(steering.margin)
            .arg(ms(steering.ttl))
            .arg(inner.settings.initial_limit)
            .arg(u8::from(rejected))
            .arg(ms(age));
        let capped: ServiceCap = inner.call(&call).await?;
        inner.limit_seen.store(capped.limit_in_force, Ordering::SeqCst);
        let before = inner.service_cap_seen.swap(capped.cap, Ordering::SeqCst);
        if before != capped.cap {
            tracing::info!(
                cap = capped.cap,
                was = before,
                service_limit = quota.rejection_threshold,
                service_count = quota.quota_used,
                others = capped.others,
                leases = capped.in_use,
                limit_in_force = capped.limit_in_force,
                "the query service's numbers cap the slot limit"
            );
        }
        Ok(capped)
    }

    /// Adds one worker's query answers to the fleet's adaptive window; the first report after the
    /// window ends closes it and moves the multiplier (`lua/slots_adaptive.lua`).
    pub async fn report_answers(&self, answers: SignalCounts, settings: &AdaptiveSettings) -> Result<AdaptiveReport, Error> {
        let inner = &self.inner;
        let mut call = ADAPTIVE.key(inner.keys.script_keys());
        call.arg(answers.ok + answers.throttled)
            .arg(answers.rate_limited)
            .arg(answers.throttled)
            .arg(ms(settings.window))
            .arg(settings.high_429_ratio)
            .arg(settings.increase_step_pct)
            .arg(settings.decrease_step_pct)
            .arg(settings.min_multiplier)
            .arg(settings.max_multiplier)
            .arg(u8::from(settings.use_throttle_signal))
            .arg(ADAPTIVE_MIN_SAMPLES)
            .arg(inner.settings.initial_limit);
        let report: AdaptiveReport = inner.call(&call).await?;
        inner.limit_seen.store(report.limit_in_force, Ordering::SeqCst);
        Ok(report)
    }

    /// Sets the fleet's multiplier by hand (`projectorctl adaptive set`); adaptation, if enabled,
    /// moves on from it at the next window.
    pub async fn set_multiplier(&self, multiplier: f64) -> Result<(), Error> {
        let _: () = redis::cmd("HSET")
            .arg(self.inner.keys.adaptive())
            .arg("multiplier")
            .arg(format!("{multiplier:.6}"))
            .query_async(&mut self.inner.conn.clone())
            .await
            .map_err(|e| self.inner.unavailable(e))?;
        Ok(())
    }

    /// The last adaptive window the fleet closed, if any.
    pub async fn last_adaptive_window(&self) -> Result<Option<AdaptiveWindow>, Error> {
        let mut conn = self.inner.conn.clone();
        let (fields, (secs, micros)): (std::collections::HashMap<String, String>, (u64, u64)) = redis::pipe()
            .hgetall(self.inner.keys.adaptive())
            .cmd("TIME")
            .query_async(&mut conn)
            .await
            .map_err(|e| self.inner.unavailable(e))?;
        let num = |k: &str| fields.get(k).and_then(|v| v.parse::<u64>().ok());
        Ok(num("last_closed_ms").map(|closed| AdaptiveWindow {
            closed_ms_ago: (secs * 1000 + micros / 1000).saturating_sub(closed),
            windows_closed: num("windows").unwrap_or(0),
            ok: num("last_ok").unwrap_or(0),
            rate_limited: num("last_r429").unwrap_or(0),
            throttled: num("last_throttled").unwrap_or(0),
            signal: fields.get("last_signal").cloned().unwrap_or_default(),
        }))
    }

    /// Forgets the multiplier and its window: the limit in force is the stored limit again.
    pub async fn reset_multiplier(&self) -> Result<bool, Error> {
        let removed: u8 = redis::cmd("DEL")
            .arg(self.inner.keys.adaptive())
            .query_async(&mut self.inner.conn.clone())
            .await
            .map_err(|e| self.inner.unavailable(e))?;
        Ok(removed == 1)
    }

    /// Every key of this limiter that exists now (for tests and `projectorctl`).
    pub async fn existing_keys(&self) -> Result<Vec<String>, Error> {
        let mut conn = self.inner.conn.clone();
        let pattern = format!("{}*", self.inner.keys.limit().trim_end_matches("limit"));
        let mut keys: Vec<String> = redis::cmd("KEYS").arg(pattern).query_async(&mut conn).await.map_err(|e| self.inner.unavailable(e))?;
        keys.sort();
        Ok(keys)
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
            // The waiter's entry outlives its own deadline by a second so a live waiter is never dropped
            // between its re-checks; a dead one is dropped from the queue a second after it would have given up.
            let wait_ms = if remaining.is_zero() { 0 } else { ms(remaining) + 1_000 };
            let reply: Acquired = inner
                .call(
                    ACQUIRE
                        .key(inner.keys.script_keys())
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
                return Ok(self.granted(id, token, first_lease, started));
            }
            if remaining.is_zero() {
                return self.give_up(id, first_lease, started).await;
            }
            let nap = jitter(inner.settings.recheck).min(remaining);
            if let Some(token) = self.wait_for_handoff(&id, nap).await? {
                // The lease was made for us, reserved briefly; a renewal makes it a full lease.
                let renewed: u8 = inner.call(RENEW.key(inner.keys.script_keys()).arg(&id).arg(ms(first_lease))).await?;
                if renewed == 1 {
                    return Ok(self.granted(id, token, first_lease, started));
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
                    inner.blocking.lock().unwrap_or_else(|p| p.into_inner()).clear();
                    retried = true;
                }
                Err(e) => return Err(inner.unavailable(e)),
            }
        }
    }

    /// Leaves the queue at the deadline; a slot handed over in the same instant is taken, not lost.
    async fn give_up(&self, id: String, first_lease: Duration, started: Instant) -> Result<Acquire, Error> {
        let inner = &self.inner;
        let left: Cancelled =
            inner.call(CANCEL.key(inner.keys.script_keys()).arg(&id).arg(ms(first_lease)).arg(inner.keys.wake_prefix())).await?;
        if let Some(token) = left.granted {
            return Ok(self.granted(id, token, first_lease, started));
        }
        let waited = started.elapsed();
        record_timed_out(waited);
        Ok(Acquire::TimedOut(TimedOut { waited, in_use: left.in_use, limit: left.limit, queue_position: left.waiters_left + 1 }))
    }

    fn granted(&self, id: String, token: u64, first_lease: Duration, started: Instant) -> Acquire {
        record_granted(started.elapsed());
        let lost = CancellationToken::new();
        let stop = CancellationToken::new();
        let held_until = Instant::now() + first_lease;
        self.inner.background.spawn(renew_while_held(self.inner.clone(), id.clone(), held_until, lost.clone(), stop.clone()));
        let release = RedisRelease { inner: self.inner.clone(), id: id.clone(), held_until, stop };
        Acquire::Granted(SlotPermit::new(id, token, lost, Box::new(release)))
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

    /// A connection for one `BLPOP`, and whether it came from the pool (it may have gone stale).
    async fn blocking_connection(&self) -> Result<(RedisConn, bool), Error> {
        let pooled = self.blocking.lock().unwrap_or_else(|p| p.into_inner()).pop();
        if let Some(conn) = pooled {
            return Ok((conn, true));
        }
        // BLPOP holds the connection for up to `recheck`; the response timeout must outlast it.
        let connect = projector_redis::redis_conn::dedicated_connection(
            &self.endpoint,
            &self.client,
            self.settings.round_trip_budget,
            self.settings.recheck * 2 + self.settings.round_trip_budget,
        );
        match tokio::time::timeout(self.settings.round_trip_budget, connect).await {
            Ok(Ok(conn)) => Ok((conn, false)),
            Ok(Err(e)) => Err(self.unavailable(e)),
            Err(_) => Err(Error::SlotBackendUnavailable { detail: "connecting for a slot wait timed out".to_owned() }),
        }
    }

    fn return_blocking(&self, conn: RedisConn) {
        self.blocking.lock().unwrap_or_else(|p| p.into_inner()).push(conn);
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
            let _ends: u64 = self.inner.call(PAUSE.key(self.inner.keys.script_keys()).arg(ms(cooldown))).await?;
            Ok(())
        })
    }

    fn heard_service(&self, quota: ServiceQuota, rejected: bool, age: Duration) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(async move {
            match self.inner.settings.service {
                Some(steering) if quota.quota_used >= 0 => self.heard_service(quota, &steering, rejected, age).await.map(|_| ()),
                // Off, or the service's counter failed (-1): the stored limit and AIMD rule.
                _ => Ok(()),
            }
        })
    }
}

/// Renews the lease every `lease_ttl / 3` until released; tells the holder if the lease is lost.
/// `held_until` is when the first lease ends at the latest (its query floor included).
async fn renew_while_held(inner: Arc<Inner>, id: String, held_until: Instant, lost: CancellationToken, stop: CancellationToken) {
    let every = inner.settings.renew_every();
    let mut last_ok = Instant::now();
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
        let result: Result<u8, Error> = inner.call(RENEW.key(inner.keys.script_keys()).arg(&id).arg(ms(inner.settings.lease_ttl))).await;
        match result {
            Ok(1) => last_ok = Instant::now(),
            Ok(_) => {
                tracing::warn!(lease_id = %id, "slot lease lost: it expired before renewal (holder paused or Redis reset)");
                metrics::counter!(m::SLOT_LEASE_LOST_TOTAL).increment(1);
                lost.cancel();
                return;
            }
            Err(e) if last_ok.elapsed() >= inner.settings.lease_ttl && Instant::now() >= held_until => {
                tracing::warn!(lease_id = %id, error = %e, "slot lease lost: renewals failed until the lease ran out");
                metrics::counter!(m::SLOT_LEASE_LOST_TOTAL).increment(1);
                lost.cancel();
                return;
            }
            Err(e) => tracing::debug!(lease_id = %id, error = %e, "slot lease renewal failed; retrying"),
        }
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
                    let cancelled: Result<Cancelled, Error> = inner
                        .call(CANCEL.key(inner.keys.script_keys()).arg(&id).arg(ms(inner.settings.lease_ttl)).arg(inner.keys.wake_prefix()))
                        .await;
                    let released = match cancelled {
                        Ok(Cancelled { granted: Some(_), .. }) => inner
                            .call::<Released>(
                                RELEASE
                                    .key(inner.keys.script_keys())
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
                    .key(inner.keys.script_keys())
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
            let renewed: u8 = inner.call(RENEW.key(inner.keys.script_keys()).arg(&id).arg(ms(query_max_duration))).await?;
            if renewed == 1 {
                Ok(())
            } else {
                Err(Error::SlotBackendUnavailable { detail: format!("slot lease {id} expired before its next query") })
            }
        })
    }

    fn keep(self: Box<Self>, for_at_least: Duration) {
        // Renewed while kept, then released: if this process dies meanwhile, the lease still runs
        // at least to its last query's start + query.max_duration (the grant's floor, or `cover`).
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.release_on_drop();
            return;
        };
        let background = self.inner.background.clone();
        background.spawn_on(
            async move {
                tokio::time::sleep(for_at_least).await;
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

/// `d` ± 20%, so waiters that missed a wake-up do not re-check in lockstep.
fn jitter(d: Duration) -> Duration {
    let factor = rand::rng().random_range(0.8..1.2);
    d.mul_f64(factor)
}
