//! The slot limiter of a single-machine fleet on one SQLite file: leases timed by the file's
//! clock, fencing tokens, first-come-first-served waiters, renewal while held, bounded waits;
//! the same promises as the Redis limiter, for every process that opens the same file.
//!
//! SQLite has no blocking pop, so each process keeps one watcher: it reads `PRAGMA data_version`
//! (which changes when another connection commits) every millisecond while this process has
//! waiters, and on a change reads once which waiters may now take a slot. Only those try the
//! write transaction that grants it; the others sleep, so a release wakes one write, not one per
//! waiter.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use projector_redis::backoff::Backoff;
use projector_sqlite::{Database, Write, sqlx};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::ServiceSteering;
use super::{
    Acquire, ReleaseSlot, SlotLimiter, SlotPermit, SlotRequest, TimedOut, record_granted, record_released, record_timed_out,
    renew_while_held,
};
use crate::error::Error;
use projector_core::metrics as m;
use projector_core::service::ServiceQuota;

/// How the SQLite limiter behaves; `limit` and `lease_ttl` come from `slots.*`.
#[derive(Debug, Clone)]
pub struct SqliteSlotSettings {
    /// Name of the limiter; "default" unless several resources are limited.
    pub name: String,
    /// Written to the file only when no limit is stored there yet; operators change it at runtime.
    pub initial_limit: u32,
    pub lease_ttl: Duration,
    /// A waiter's place in line lasts this long after its last sign of life: a stopped or killed
    /// process's waiters are passed over after it.
    pub waiter_grace: Duration,
    /// The watcher re-reads the line at least this often, for leases that run out with no commit.
    pub recheck: Duration,
    /// How the query service's numbers cap the limit (`slots.follow_service`); `None`: they do not.
    pub service: Option<ServiceSteering>,
}

impl SqliteSlotSettings {
    pub fn new(initial_limit: u32, lease_ttl: Duration) -> Self {
        SqliteSlotSettings {
            name: "default".to_owned(),
            initial_limit,
            lease_ttl,
            waiter_grace: Duration::from_secs(2),
            recheck: Duration::from_millis(50),
            service: None,
        }
    }

    /// With the query service's numbers capping the limit.
    pub fn following_service(self, steering: ServiceSteering) -> Self {
        SqliteSlotSettings { service: Some(steering), ..self }
    }
}

/// Slots shared by every process that opens the same SQLite file and limiter name.
#[derive(Clone)]
pub struct SqliteSlotLimiter {
    inner: Arc<Inner>,
}

struct Inner {
    db: Database,
    settings: SqliteSlotSettings,
    /// The limit last read from the file, for `limit()` and the gauges.
    limit_seen: AtomicU32,
    /// This process's waiters: id → what wakes it when the watcher sees it may take a slot.
    waiters: Mutex<HashMap<String, Arc<Notify>>>,
    /// Wakes the watcher when the first waiter arrives.
    watcher_wake: Notify,
    stop: CancellationToken,
    background: tokio_util::task::TaskTracker,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// The limit in force at `?2` (the stored limit, or the service's cap while it holds), whether
/// grants are paused until then, and the last place given in line.
const LIMIT_IN_FORCE: &str = "SELECT CASE WHEN service_cap IS NOT NULL AND service_cap_until_ms > ?2 THEN min(stored_limit, service_cap) \
     ELSE stored_limit END, paused_until_ms, seq FROM projector_slot_limiters WHERE name = ?1";

/// What one write transaction decided for a waiter.
enum Turn {
    Granted(u64),
    Waiting,
    GaveUp { in_use: u32, limit: u32, position: u32 },
}

impl SqliteSlotLimiter {
    /// A limiter on `db`; its watcher runs on the current runtime until the last clone is dropped.
    pub fn new(db: Database, settings: SqliteSlotSettings) -> Self {
        let inner = Arc::new(Inner {
            db,
            limit_seen: AtomicU32::new(settings.initial_limit),
            settings,
            waiters: Mutex::new(HashMap::new()),
            watcher_wake: Notify::new(),
            stop: CancellationToken::new(),
            background: tokio_util::task::TaskTracker::new(),
        });
        tokio::spawn(watch(Arc::downgrade(&inner), inner.stop.clone()));
        SqliteSlotLimiter { inner }
    }

    /// Slots held now (leases not expired), waiters in line, and the limit in force (the stored
    /// limit, capped by the service's numbers while they hold; `None` before the first request).
    pub async fn occupancy(&self) -> Result<(u64, u64, Option<u32>), Error> {
        let db = &self.inner.db;
        let now = db.now_ms().await?;
        let err = || db.err("reading the slots");
        let name = &self.inner.settings.name;
        let in_use: i64 = sqlx::query_scalar("SELECT count(*) FROM projector_slot_leases WHERE name = ?1 AND expires_ms > ?2")
            .bind(name)
            .bind(now)
            .fetch_one(db.pool())
            .await
            .map_err(err())?;
        let waiters: i64 = sqlx::query_scalar("SELECT count(*) FROM projector_slot_waiters WHERE name = ?1")
            .bind(name)
            .fetch_one(db.pool())
            .await
            .map_err(err())?;
        let limit: Option<(Option<i64>, i64, i64)> =
            sqlx::query_as(LIMIT_IN_FORCE).bind(name).bind(now).fetch_optional(db.pool()).await.map_err(err())?;
        let limit = limit.and_then(|(l, _, _)| l).and_then(|l| u32::try_from(l).ok());
        Ok((u64::try_from(in_use).unwrap_or(0), u64::try_from(waiters).unwrap_or(0), limit))
    }

    /// The file this limiter lives in.
    pub(crate) fn database(&self) -> &Database {
        &self.inner.db
    }

    /// The limiter's name in the file (`default` unless settings name another).
    pub(crate) fn name(&self) -> &str {
        &self.inner.settings.name
    }

    /// Waits at most `within` for this limiter's background work (renewals, releases, abandoned
    /// waits) to end; false if some is still running. Call once nothing holds a slot.
    pub async fn wait_for_background(&self, within: Duration) -> bool {
        let background = &self.inner.background;
        background.close();
        let ended = tokio::time::timeout(within, background.wait()).await.is_ok();
        background.reopen();
        ended
    }

    async fn acquire_inner(&self, id: &str, request: &SlotRequest, max_wait: Duration) -> Result<Acquire, Error> {
        let inner = &self.inner;
        let started = Instant::now();
        let deadline = started + max_wait;
        let first_lease = request.query_max_duration.map_or(inner.settings.lease_ttl, |q| q.max(inner.settings.lease_ttl));
        let woken = Arc::new(Notify::new());
        let mut in_line = InLine::join(inner, id, woken.clone());
        // A live waiter renews its place well within the grace, whatever else happens.
        let heartbeat = inner.settings.waiter_grace / 4;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let asked = Instant::now();
            let turn = inner.turn(id, request, first_lease, remaining).await?;
            // Granted or given up, the same transaction took the waiter out of the line.
            in_line.answered = !matches!(turn, Turn::Waiting);
            match turn {
                Turn::Granted(token) => return Ok(self.granted(id.to_owned(), token, first_lease, started, asked)),
                Turn::GaveUp { in_use, limit, position } => {
                    let waited = started.elapsed();
                    record_timed_out(waited);
                    return Ok(Acquire::TimedOut(TimedOut { waited, in_use, limit, queue_position: position }));
                }
                Turn::Waiting => {}
            }
            let nap = heartbeat.min(deadline.saturating_duration_since(Instant::now()));
            let _ = tokio::time::timeout(nap, woken.notified()).await;
        }
    }

    /// A lease made by the transaction begun at `asked`.
    fn granted(&self, id: String, token: u64, first_lease: Duration, started: Instant, asked: Instant) -> Acquire {
        record_granted(started.elapsed());
        let lost = CancellationToken::new();
        let stop = CancellationToken::new();
        let held_until = Instant::now() + first_lease;
        let (inner, lease) = (self.inner.clone(), id.clone());
        let renew = move || {
            let (inner, lease) = (inner.clone(), lease.clone());
            async move { inner.renew(&lease, inner.settings.lease_ttl).await }
        };
        let lease_ttl = self.inner.settings.lease_ttl;
        self.inner.background.spawn(renew_while_held(id.clone(), lease_ttl / 3, lease_ttl, held_until, lost.clone(), stop.clone(), renew));
        let release = SqliteRelease { inner: self.inner.clone(), id: id.clone(), held_until, stop };
        Acquire::Granted(SlotPermit::new(id, token, lost, Box::new(release)).leased(asked, first_lease))
    }
}

impl Inner {
    fn ms(d: Duration) -> i64 {
        i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
    }

    /// The limiter's row exists from the first transaction that needs it, with `slots.limit`.
    async fn ensure_row(&self, w: &mut Write) -> Result<(), Error> {
        // A limit an operator cleared (`slots reset-limit`) takes this process's slots.limit.
        sqlx::query(
            "INSERT INTO projector_slot_limiters (name, stored_limit) VALUES (?1, ?2)
             ON CONFLICT (name) DO UPDATE SET stored_limit = coalesce(stored_limit, excluded.stored_limit)",
        )
        .bind(&self.settings.name)
        .bind(i64::from(self.settings.initial_limit))
        .execute(&mut *w.tx)
        .await
        .map_err(w.err())?;
        Ok(())
    }

    /// One write transaction: reclaims what ran out, then grants this waiter a slot if its place
    /// in line and the room allow, or keeps its place (or, out of time, leaves the line).
    async fn turn(&self, id: &str, request: &SlotRequest, first_lease: Duration, remaining: Duration) -> Result<Turn, Error> {
        let name = &self.settings.name;
        let mut w = self.db.write("taking a slot").await?;
        let now = w.now_ms;
        self.ensure_row(&mut w).await?;
        let reclaimed = sqlx::query("DELETE FROM projector_slot_leases WHERE name = ?1 AND expires_ms <= ?2")
            .bind(name)
            .bind(now)
            .execute(&mut *w.tx)
            .await
            .map_err(w.err())?
            .rows_affected();
        sqlx::query("DELETE FROM projector_slot_waiters WHERE name = ?1 AND waiter_id <> ?2 AND (deadline_ms <= ?3 OR seen_ms <= ?3 - ?4)")
            .bind(name)
            .bind(id)
            .bind(now)
            .bind(Self::ms(self.settings.waiter_grace))
            .execute(&mut *w.tx)
            .await
            .map_err(w.err())?;
        let (limit, paused_until, last_seq): (i64, i64, i64) =
            sqlx::query_as(LIMIT_IN_FORCE).bind(name).bind(now).fetch_one(&mut *w.tx).await.map_err(w.err())?;
        let limit = u32::try_from(limit.max(0)).unwrap_or(u32::MAX);
        let in_use: i64 = sqlx::query_scalar::<_, i64>("SELECT count(*) FROM projector_slot_leases WHERE name = ?1")
            .bind(name)
            .fetch_one(&mut *w.tx)
            .await
            .map_err(w.err())?;
        let mine: Option<i64> = sqlx::query_scalar("SELECT seq FROM projector_slot_waiters WHERE name = ?1 AND waiter_id = ?2")
            .bind(name)
            .bind(id)
            .fetch_optional(&mut *w.tx)
            .await
            .map_err(w.err())?;
        // A newcomer's place is after everyone in line now.
        let place = mine.unwrap_or(last_seq + 1);
        let ahead: i64 = sqlx::query_scalar::<_, i64>("SELECT count(*) FROM projector_slot_waiters WHERE name = ?1 AND seq < ?2")
            .bind(name)
            .bind(place)
            .fetch_one(&mut *w.tx)
            .await
            .map_err(w.err())?;
        let turn = if now >= paused_until && in_use + ahead < i64::from(limit) {
            let token: i64 =
                sqlx::query_scalar::<_, i64>("UPDATE projector_slot_limiters SET fence = fence + 1 WHERE name = ?1 RETURNING fence")
                    .bind(name)
                    .fetch_one(&mut *w.tx)
                    .await
                    .map_err(w.err())?;
            sqlx::query(
                "INSERT INTO projector_slot_leases (name, lease_id, holder, org_id, acquired_ms, expires_ms, token) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )
            .bind(name)
            .bind(id)
            .bind(&request.holder)
            .bind(i64::try_from(request.org_id.0).unwrap_or(i64::MAX))
            .bind(now)
            .bind(now.saturating_add(Self::ms(first_lease)))
            .bind(token)
            .execute(&mut *w.tx)
            .await
            .map_err(w.err())?;
            sqlx::query("DELETE FROM projector_slot_waiters WHERE name = ?1 AND waiter_id = ?2")
                .bind(name)
                .bind(id)
                .execute(&mut *w.tx)
                .await
                .map_err(w.err())?;
            Turn::Granted(u64::try_from(token).unwrap_or(0))
        } else if remaining.is_zero() {
            sqlx::query("DELETE FROM projector_slot_waiters WHERE name = ?1 AND waiter_id = ?2")
                .bind(name)
                .bind(id)
                .execute(&mut *w.tx)
                .await
                .map_err(w.err())?;
            Turn::GaveUp {
                in_use: u32::try_from(in_use).unwrap_or(u32::MAX),
                limit,
                position: u32::try_from(ahead + 1).unwrap_or(u32::MAX),
            }
        } else {
            if mine.is_none() {
                sqlx::query("UPDATE projector_slot_limiters SET seq = ?2 WHERE name = ?1")
                    .bind(name)
                    .bind(place)
                    .execute(&mut *w.tx)
                    .await
                    .map_err(w.err())?;
            }
            sqlx::query(
                "INSERT INTO projector_slot_waiters (name, waiter_id, seq, holder, org_id, deadline_ms, seen_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT (name, waiter_id) DO UPDATE SET seen_ms = excluded.seen_ms",
            )
            .bind(name)
            .bind(id)
            .bind(place)
            .bind(&request.holder)
            .bind(i64::try_from(request.org_id.0).unwrap_or(i64::MAX))
            .bind(now.saturating_add(Self::ms(remaining)))
            .bind(now)
            .execute(&mut *w.tx)
            .await
            .map_err(w.err())?;
            Turn::Waiting
        };
        w.commit().await?;
        self.limit_seen.store(limit, Ordering::SeqCst);
        if reclaimed > 0 {
            metrics::counter!(m::SLOT_LEASE_RECLAIMED_TOTAL).increment(reclaimed);
        }
        if let Turn::Granted(_) | Turn::GaveUp { .. } = turn {
            super::record_occupancy(u32::try_from(in_use + i64::from(matches!(turn, Turn::Granted(_)))).unwrap_or(0), limit, "stored");
        }
        Ok(turn)
    }

    /// The ids of the waiters that may take a slot now, first come first served: as many as
    /// there is room for, among those still alive and in time. A read: it takes no lock.
    async fn may_take_now(&self) -> Result<HashSet<String>, Error> {
        let name = &self.settings.name;
        let now = self.db.now_ms().await?;
        let err = || self.db.err("reading the slot line");
        let row: Option<(Option<i64>, i64, i64)> =
            sqlx::query_as(LIMIT_IN_FORCE).bind(name).bind(now).fetch_optional(self.db.pool()).await.map_err(err())?;
        let Some((limit, paused_until, _)) = row else { return Ok(HashSet::new()) };
        // A limit an operator cleared: the next turn stores this process's slots.limit.
        let limit = limit.unwrap_or(i64::from(self.settings.initial_limit));
        if paused_until > now {
            return Ok(HashSet::new());
        }
        let in_use: i64 = sqlx::query_scalar::<_, i64>("SELECT count(*) FROM projector_slot_leases WHERE name = ?1 AND expires_ms > ?2")
            .bind(name)
            .bind(now)
            .fetch_one(self.db.pool())
            .await
            .map_err(err())?;
        let room = (limit - in_use).max(0);
        let ids: Vec<String> = sqlx::query_scalar(
            "SELECT waiter_id FROM projector_slot_waiters WHERE name = ?1 AND deadline_ms > ?2 AND seen_ms > ?2 - ?3 ORDER BY seq LIMIT ?4",
        )
        .bind(name)
        .bind(now)
        .bind(Self::ms(self.settings.waiter_grace))
        .bind(room)
        .fetch_all(self.db.pool())
        .await
        .map_err(err())?;
        Ok(ids.into_iter().collect())
    }

    async fn renew(&self, id: &str, extend: Duration) -> Result<bool, Error> {
        let mut w = self.db.write("renewing a slot lease").await?;
        let renewed = sqlx::query(
            "UPDATE projector_slot_leases SET expires_ms = max(expires_ms, ?3) WHERE name = ?1 AND lease_id = ?2 AND expires_ms > ?4",
        )
        .bind(&self.settings.name)
        .bind(id)
        .bind(w.now_ms.saturating_add(Self::ms(extend)))
        .bind(w.now_ms)
        .execute(&mut *w.tx)
        .await
        .map_err(w.err())?
        .rows_affected();
        w.commit().await?;
        Ok(renewed == 1)
    }

    async fn release(&self, id: &str) -> Result<(), Error> {
        let mut w = self.db.write("releasing a slot").await?;
        sqlx::query("DELETE FROM projector_slot_leases WHERE name = ?1 AND lease_id = ?2")
            .bind(&self.settings.name)
            .bind(id)
            .execute(&mut *w.tx)
            .await
            .map_err(w.err())?;
        w.commit().await?;
        record_released();
        Ok(())
    }

    /// Takes a wait that ended without an answer out of the line, and gives back a slot its last
    /// transaction may have granted before the wait was dropped: no permit holds that lease.
    async fn leave_line(&self, id: &str) -> Result<(), Error> {
        let mut w = self.db.write("leaving the slot line").await?;
        for statement in [
            "DELETE FROM projector_slot_waiters WHERE name = ?1 AND waiter_id = ?2",
            "DELETE FROM projector_slot_leases WHERE name = ?1 AND lease_id = ?2",
        ] {
            sqlx::query(statement).bind(&self.settings.name).bind(id).execute(&mut *w.tx).await.map_err(w.err())?;
        }
        Ok(w.commit().await?)
    }
}

/// A waiter of this process, known to the watcher for as long as it lives; dropped mid-wait (its
/// job cancelled), it leaves the line in the file too, so no slot waits on a waiter that is gone.
struct InLine {
    inner: Arc<Inner>,
    id: String,
    /// The wait ended with an answer, and the line in the file holds nothing of it.
    answered: bool,
}

impl InLine {
    fn join(inner: &Arc<Inner>, id: &str, woken: Arc<Notify>) -> InLine {
        let mut waiters = inner.waiters.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        waiters.insert(id.to_owned(), woken);
        if waiters.len() == 1 {
            inner.watcher_wake.notify_one();
        }
        InLine { inner: inner.clone(), id: id.to_owned(), answered: false }
    }
}

impl Drop for InLine {
    fn drop(&mut self) {
        self.inner.waiters.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(&self.id);
        if self.answered {
            return;
        }
        let (inner, id) = (self.inner.clone(), std::mem::take(&mut self.id));
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            inner.background.clone().spawn_on(
                async move {
                    if let Err(e) = inner.leave_line(&id).await {
                        tracing::debug!(waiter = %id, error = %e, "cannot leave the slot line; the entry lapses on its own");
                    }
                },
                &handle,
            );
        }
    }
}

/// The process's watcher: while it has waiters, sees every commit to the file within a
/// millisecond and wakes the waiters that may now take a slot.
async fn watch(inner: std::sync::Weak<Inner>, stop: CancellationToken) {
    let mut conn = None;
    let mut seen_version = -1_i64;
    let mut last_read = Instant::now();
    loop {
        let Some(this) = inner.upgrade() else { return };
        let idle = this.waiters.lock().unwrap_or_else(std::sync::PoisonError::into_inner).is_empty();
        if idle {
            let wake = async { this.watcher_wake.notified().await };
            tokio::select! {
                () = stop.cancelled() => return,
                () = wake => {}
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            continue;
        }
        if conn.is_none() {
            conn = this.db.pool().acquire().await.ok().map(|c| c.detach());
        }
        let version: Option<i64> = match conn.as_mut() {
            Some(c) => sqlx::query_scalar("PRAGMA data_version").fetch_one(&mut *c).await.ok(),
            None => None,
        };
        if version.is_none() {
            conn = None;
        }
        let changed = version.is_some_and(|v| v != seen_version);
        if changed || last_read.elapsed() >= this.settings.recheck {
            seen_version = version.unwrap_or(seen_version);
            last_read = Instant::now();
            match this.may_take_now().await {
                Ok(ids) => {
                    let waiters = this.waiters.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                    for (id, woken) in waiters.iter() {
                        if ids.contains(id) {
                            woken.notify_one();
                        }
                    }
                }
                Err(e) => tracing::debug!(error = %e, "reading the slot line failed; waiters re-check on their own"),
            }
        }
        drop(this);
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(Duration::from_millis(1)) => {}
        }
    }
}

struct SqliteRelease {
    inner: Arc<Inner>,
    id: String,
    held_until: Instant,
    stop: CancellationToken,
}

impl ReleaseSlot for SqliteRelease {
    fn cover(&self, query_max_duration: Duration) -> BoxFuture<'static, Result<(), Error>> {
        let (inner, id) = (self.inner.clone(), self.id.clone());
        Box::pin(async move {
            if inner.renew(&id, query_max_duration).await? {
                Ok(())
            } else {
                Err(Error::SlotBackendUnavailable { detail: format!("slot lease {id} ran out before its next query") })
            }
        })
    }

    fn keep(self: Box<Self>, until: Instant) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.release_on_drop();
            return;
        };
        let background = self.inner.background.clone();
        background.spawn_on(
            async move {
                tokio::time::sleep_until(until).await;
                if let Err(e) = self.release().await {
                    tracing::warn!(error = %e, "releasing a kept slot failed; its lease runs out on its own");
                }
            },
            &runtime,
        );
    }

    fn release(self: Box<Self>) -> BoxFuture<'static, Result<(), Error>> {
        self.stop.cancel();
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return Box::pin(async move { self.inner.release(&self.id).await });
        };
        // In its own task, started now: a caller dropped mid-release must not leave the lease
        // behind with renewals stopped. A failed release (the file locked past busy_timeout, a
        // full disk) is tried again until the lease would have run out anyway.
        let (first_attempt, answer) = tokio::sync::oneshot::channel();
        let background = self.inner.background.clone();
        background.spawn_on(
            async move {
                let Err(e) = self.inner.release(&self.id).await else {
                    let _ = first_attempt.send(Ok(()));
                    return;
                };
                let _ = first_attempt.send(Err(e));
                let give_up_at = Instant::now().max(self.held_until) + self.inner.settings.lease_ttl;
                let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
                while Instant::now() < give_up_at {
                    tokio::time::sleep(backoff.next_pause()).await;
                    if self.inner.release(&self.id).await.is_ok() {
                        tracing::info!(lease_id = %self.id, "slot released after a failed attempt");
                        return;
                    }
                }
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

impl SlotLimiter for SqliteSlotLimiter {
    fn acquire(&self, request: SlotRequest, max_wait: Duration) -> BoxFuture<'_, Result<Acquire, Error>> {
        Box::pin(async move {
            let id = uuid::Uuid::new_v4().simple().to_string();
            // A file that may heal (locked past busy_timeout, a full disk, an I/O error) is the
            // slot backend unavailable, as an unreachable Redis is: counted slot_unavailable and
            // tried again, never granted.
            self.acquire_inner(&id, &request, max_wait).await.map_err(|e| match e {
                Error::Sqlite(e) if e.is_retryable() => Error::SlotBackendUnavailable { detail: e.to_string() },
                other => other,
            })
        })
    }

    fn limit(&self) -> u32 {
        self.inner.limit_seen.load(Ordering::SeqCst)
    }

    fn heard_service(&self, quota: ServiceQuota, rejected: bool, _age: Duration) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(async move {
            // Off, or the service's counter failed (-1): the stored limit rules.
            let Some(steering) = self.inner.settings.service.filter(|_| quota.quota_used >= 0) else { return Ok(()) };
            let inner = &self.inner;
            let mut w = inner.db.write("capping the slot limit by the service's numbers").await?;
            inner.ensure_row(&mut w).await?;
            let leases: i64 =
                sqlx::query_scalar::<_, i64>("SELECT count(*) FROM projector_slot_leases WHERE name = ?1 AND expires_ms > ?2")
                    .bind(&inner.settings.name)
                    .bind(w.now_ms)
                    .fetch_one(&mut *w.tx)
                    .await
                    .map_err(w.err())?;
            let cap = service_cap(quota, leases, &steering);
            // A refusal's numbers always lower the cap at once; an answer's may raise it back.
            let sql = if rejected {
                "UPDATE projector_slot_limiters SET service_cap = CASE WHEN service_cap IS NOT NULL AND service_cap_until_ms > ?4 \
                 THEN min(service_cap, ?2) ELSE ?2 END, service_cap_until_ms = ?3 WHERE name = ?1"
            } else {
                "UPDATE projector_slot_limiters SET service_cap = ?2, service_cap_until_ms = ?3 WHERE name = ?1"
            };
            sqlx::query(sql)
                .bind(&inner.settings.name)
                .bind(i64::from(cap))
                .bind(w.now_ms.saturating_add(Inner::ms(steering.ttl)))
                .bind(w.now_ms)
                .execute(&mut *w.tx)
                .await
                .map_err(w.err())?;
            w.commit().await?;
            Ok(())
        })
    }

    fn pause_grants(&self, cooldown: Duration) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(async move {
            let mut w = self.inner.db.write("pausing slot grants").await?;
            self.inner.ensure_row(&mut w).await?;
            sqlx::query("UPDATE projector_slot_limiters SET paused_until_ms = max(paused_until_ms, ?2) WHERE name = ?1")
                .bind(&self.inner.settings.name)
                .bind(w.now_ms.saturating_add(Inner::ms(cooldown)))
                .execute(&mut *w.tx)
                .await
                .map_err(w.err())?;
            w.commit().await.map_err(Error::from)
        })
    }
}

/// The cap one answer sets: the service's limit less what other callers run there (its count
/// less the fleet's leases) less the margin; with the throttle signal, at most the throttle point
/// less the others, but never below half the room to refusal (the rule of `lua/slots_service.lua`
/// and the memory limiter, on the latest answer alone: without their 5 s window of the lowest
/// count, a query between two reads counts as another caller's, which only lowers the cap).
fn service_cap(q: ServiceQuota, leases: i64, steering: &ServiceSteering) -> u32 {
    let others = (q.quota_used - leases).max(0);
    let mut cap = q.rejection_threshold - others - i64::from(steering.margin);
    if steering.use_throttle && q.throttle_threshold > 0 {
        cap = cap.min((q.throttle_threshold - others).max((cap + 1) / 2));
    }
    u32::try_from(cap.max(1)).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const STEER: ServiceSteering = ServiceSteering { margin: 2, ttl: Duration::from_secs(60), use_throttle: true, memory: Duration::ZERO };

    #[test]
    fn the_services_numbers_cap_the_limit_as_the_other_limiters_do() {
        let q = |used, limit, throttle| ServiceQuota { quota_used: used, rejection_threshold: limit, throttle_threshold: throttle };
        // Alone on the referrer: the service's 30 less the margin.
        assert_eq!(service_cap(q(10, 30, 0), 10, &STEER), 28);
        // 15 queries of another caller: they take their share.
        assert_eq!(service_cap(q(25, 30, 0), 10, &STEER), 13);
        // The throttle point never takes more than half the room to refusal.
        assert_eq!(service_cap(q(85, 100, 66), 10, &STEER), 12);
        assert_eq!(service_cap(q(10, 100, 66), 10, &STEER), 66);
        // A service full of others still leaves one slot, so the fleet learns when room comes back.
        assert_eq!(service_cap(q(200, 100, 0), 0, &STEER), 1);
    }
}
