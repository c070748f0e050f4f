//! The SQLite slot limiter for operators (`projectorctl slots` on the file): its state (limit,
//! holders, waiters), a limit set for every process at runtime or handed back to configuration,
//! and the reset of stuck slots, as the Redis limiter's `admin.rs` offers them.

use std::time::Duration;

use projector_sqlite::sqlx;

use super::sqlite::SqliteSlotLimiter;
use super::{Holder, SlotState};
use crate::error::Error;

impl SqliteSlotLimiter {
    /// The limiter's state now: the stored limit, every holder and every waiter in line order.
    pub async fn inspect(&self) -> Result<SlotState, Error> {
        let (db, name) = (self.database(), self.name());
        let err = || db.err("reading the slots");
        let now = db.now_ms().await?;
        let limit: Option<Option<i64>> = sqlx::query_scalar("SELECT stored_limit FROM projector_slot_limiters WHERE name = ?1")
            .bind(name)
            .fetch_optional(db.pool())
            .await
            .map_err(err())?;
        let leases: Vec<(String, String, i64, i64, i64, i64)> = sqlx::query_as(
            "SELECT lease_id, holder, org_id, token, acquired_ms, expires_ms FROM projector_slot_leases
              WHERE name = ?1 AND expires_ms > ?2 ORDER BY acquired_ms",
        )
        .bind(name)
        .bind(now)
        .fetch_all(db.pool())
        .await
        .map_err(err())?;
        let waiters: Vec<(String, String, i64, i64)> =
            sqlx::query_as("SELECT waiter_id, holder, org_id, seen_ms FROM projector_slot_waiters WHERE name = ?1 ORDER BY seq")
                .bind(name)
                .fetch_all(db.pool())
                .await
                .map_err(err())?;
        let ms = |v: i64| Duration::from_millis(u64::try_from(v.max(0)).unwrap_or(0));
        Ok(SlotState {
            limit: limit.flatten().and_then(|l| u32::try_from(l).ok()),
            holders: leases
                .into_iter()
                .map(|(lease_id, process, org, token, acquired, expires)| Holder {
                    lease_id,
                    process,
                    org_id: org.to_string(),
                    fencing_token: u64::try_from(token).unwrap_or(0),
                    age: ms(now - acquired),
                    expires_in: ms(expires - now),
                })
                .collect(),
            // The line keeps when each waiter last showed it lives, not when it joined: the head's
            // wait is not known here.
            oldest_wait: None,
            waiters: waiters.into_iter().map(|(id, holder, org, _)| (id, format!("{holder}|{org}"))).collect(),
        })
    }

    /// Sets the limit for every process on the file; it wins over their `slots.limit` until
    /// [`SqliteSlotLimiter::clear_limit`].
    pub async fn set_limit(&self, limit: u32) -> Result<(), Error> {
        let mut w = self.database().write("setting the slot limit").await?;
        sqlx::query(
            "INSERT INTO projector_slot_limiters (name, stored_limit) VALUES (?1, ?2) ON CONFLICT (name) DO UPDATE SET stored_limit = excluded.stored_limit",
        )
        .bind(self.name())
        .bind(i64::from(limit))
        .execute(&mut *w.tx)
        .await
        .map_err(w.err())?;
        w.commit().await?;
        Ok(())
    }

    /// Forgets the stored limit: the next slot request stores its process's `slots.limit`.
    /// Returns whether one was stored.
    pub async fn clear_limit(&self) -> Result<bool, Error> {
        let mut w = self.database().write("clearing the slot limit").await?;
        // The row stays: its fence only grows, whoever holds the slots next.
        let cleared = sqlx::query("UPDATE projector_slot_limiters SET stored_limit = NULL WHERE name = ?1 AND stored_limit IS NOT NULL")
            .bind(self.name())
            .execute(&mut *w.tx)
            .await
            .map_err(w.err())?
            .rows_affected();
        w.commit().await?;
        Ok(cleared > 0)
    }

    /// Drops every lease and waiter; holders learn at their next renewal. Returns the leases dropped.
    pub async fn reset(&self) -> Result<u64, Error> {
        let mut w = self.database().write("resetting the slots").await?;
        let dropped = sqlx::query("DELETE FROM projector_slot_leases WHERE name = ?1")
            .bind(self.name())
            .execute(&mut *w.tx)
            .await
            .map_err(w.err())?
            .rows_affected();
        sqlx::query("DELETE FROM projector_slot_waiters WHERE name = ?1").bind(self.name()).execute(&mut *w.tx).await.map_err(w.err())?;
        w.commit().await?;
        Ok(dropped)
    }
}
