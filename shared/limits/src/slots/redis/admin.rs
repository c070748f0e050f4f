//! What operators do to the Redis slot limiter and read from it: store or clear the limit,
//! reset every lease and waiter, inspect holders and waiters, and the occupancy the gauges and
//! `status` report. None of it takes a slot.

use std::sync::atomic::Ordering;
use std::time::Duration;

use super::super::scripts::{OCCUPANCY, Occupancy, RESET, SET_LIMIT};
use super::{RedisSlotLimiter, ms};
use crate::error::Error;

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
    /// How long the head of the line has waited (since it joined, on Redis time).
    pub oldest_wait: Option<Duration>,
}

/// What `inspect` reads in one pipeline: limit, leases with expiry, holder info, queue, waiter
/// info, the head of the line with its arrival score, Redis `TIME`.
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
    /// Sets the limit for every process at once. Lowering it interrupts no holder; raising it serves waiters now.
    pub async fn set_limit(&self, limit: u32) -> Result<(), Error> {
        let inner = &self.inner;
        let _in_use_and_limit: (u32, u32) =
            inner.call(SET_LIMIT.on(&inner.keys).arg(limit).arg(ms(inner.settings.handoff_reserve)).arg(inner.keys.wake_prefix())).await?;
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
        self.inner.call(&RESET.on(&self.inner.keys)).await
    }

    /// The limit, holders and waiters, as Redis has them now.
    pub async fn inspect(&self) -> Result<SlotState, Error> {
        let k = &self.inner.keys;
        let mut conn = self.inner.conn.clone();
        let (limit, leases, holders, queue, waiting, head, time): RawSlotState = redis::pipe()
            .get(k.limit())
            .zrange_withscores(k.leases(), 0, -1)
            .hgetall(k.holders())
            .zrange(k.queue(), 0, -1)
            .hgetall(k.waiting())
            .zrange_withscores(k.queue(), 0, 0)
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
        // The queue is scored by arrival: Redis ms x 1000 plus a counter (`slots_acquire`).
        let oldest_wait = head.first().map(|(_, score)| Duration::from_millis(now.saturating_sub(score / 1000)));
        Ok(SlotState { limit, holders, waiters, oldest_wait })
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
        self.inner.call(&OCCUPANCY.on(&self.inner.keys)).await
    }

    /// Every key of this limiter that exists now (for tests and `projectorctl`).
    pub async fn existing_keys(&self) -> Result<Vec<String>, Error> {
        let mut conn = self.inner.conn.clone();
        let pattern = format!("{}*", self.inner.keys.limit().trim_end_matches("limit"));
        let mut keys: Vec<String> = redis::cmd("KEYS").arg(pattern).query_async(&mut conn).await.map_err(|e| self.inner.unavailable(e))?;
        keys.sort();
        Ok(keys)
    }
}
