//! The rate limiter of a single-machine fleet on one SQLite file: the memory limiter's decision
//! (`memory::decide`), taken in one write transaction on the file's clock, so every process on
//! the file shares the windows and a window survives a restart.

use std::collections::VecDeque;
use std::time::Duration;

use futures::future::BoxFuture;
use projector_sqlite::{Database, Write, sqlx};

use super::memory::{State, decide};
use super::{Admission, RateLimiter, RateMode, RatePolicy};
use crate::error::Error;

/// Admits starts under `policy` for every process on the file.
#[derive(Debug, Clone)]
pub struct SqliteRateLimiter {
    db: Database,
    referrer: String,
    policy: RatePolicy,
    /// One row per window, named by mode, limit and span as in Redis: a changed policy starts
    /// from clean windows, and an unchanged one goes on from where the last process left it.
    windows: Vec<String>,
}

impl SqliteRateLimiter {
    /// The limiter of `referrer`'s policy on `db`.
    pub fn new(db: Database, referrer: &str, policy: RatePolicy) -> Self {
        let windows = policy.windows.iter().map(|w| format!("{}:{}/{}ms", policy.mode_name(), w.limit, w.span.as_millis())).collect();
        SqliteRateLimiter { db, referrer: referrer.to_owned(), policy, windows }
    }

    async fn load(&self, w: &mut Write) -> Result<State, Error> {
        let n = self.windows.len();
        let mut state = State { admitted: vec![VecDeque::new(); n], tat: vec![0.0; n], cooldown_until: 0 };
        for (i, window) in self.windows.iter().enumerate() {
            let stored: Option<String> = sqlx::query_scalar("SELECT state FROM projector_rate_windows WHERE referrer = ?1 AND window = ?2")
                .bind(&self.referrer)
                .bind(window)
                .fetch_optional(&mut *w.tx)
                .await
                .map_err(w.err())?;
            let Some(stored) = stored else { continue };
            // A row this build cannot read starts the window afresh, loudly: refusing every start
            // for a damaged row would stop the fleet, and the row is rewritten on this admission.
            match self.policy.mode {
                RateMode::Strict => match serde_json::from_str::<VecDeque<u64>>(&stored) {
                    Ok(times) => state.admitted[i] = times,
                    Err(e) => tracing::warn!(referrer = %self.referrer, window, error = %e, "unreadable rate window; starting it afresh"),
                },
                RateMode::Smooth => match stored.parse::<f64>() {
                    Ok(tat) => state.tat[i] = tat,
                    Err(e) => tracing::warn!(referrer = %self.referrer, window, error = %e, "unreadable rate window; starting it afresh"),
                },
            }
        }
        let cooldown: Option<i64> = sqlx::query_scalar("SELECT until_us FROM projector_rate_cooldowns WHERE referrer = ?1")
            .bind(&self.referrer)
            .fetch_optional(&mut *w.tx)
            .await
            .map_err(w.err())?;
        state.cooldown_until = cooldown.and_then(|c| u64::try_from(c).ok()).unwrap_or(0);
        Ok(state)
    }

    async fn store(&self, w: &mut Write, state: &State) -> Result<(), Error> {
        for (i, window) in self.windows.iter().enumerate() {
            let value = match self.policy.mode {
                RateMode::Strict => serde_json::to_string(&state.admitted[i]).unwrap_or_else(|_| "[]".to_owned()),
                RateMode::Smooth => state.tat[i].to_string(),
            };
            sqlx::query(
                "INSERT INTO projector_rate_windows (referrer, window, state) VALUES (?1, ?2, ?3)
                 ON CONFLICT (referrer, window) DO UPDATE SET state = excluded.state",
            )
            .bind(&self.referrer)
            .bind(window)
            .bind(value)
            .execute(&mut *w.tx)
            .await
            .map_err(w.err())?;
        }
        Ok(())
    }
}

/// The file's clock in microseconds.
fn us(now_ms: i64) -> u64 {
    u64::try_from(now_ms).unwrap_or(0).saturating_mul(1_000)
}

impl RateLimiter for SqliteRateLimiter {
    fn admit(&self) -> BoxFuture<'_, Result<Admission, Error>> {
        Box::pin(async move {
            let mut w = self.db.write("admitting a query start").await?;
            let mut state = self.load(&mut w).await?;
            let before = state.clone();
            let decision = decide(&self.policy, &mut state, us(w.now_ms));
            if state != before {
                self.store(&mut w, &state).await?;
            }
            w.commit().await?;
            Ok(decision.into_admission())
        })
    }

    fn cool_down(&self, length: Duration) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(async move {
            let mut w = self.db.write("starting a rate cooldown").await?;
            let until = us(w.now_ms).saturating_add(u64::try_from(length.as_micros()).unwrap_or(u64::MAX));
            sqlx::query(
                "INSERT INTO projector_rate_cooldowns (referrer, until_us) VALUES (?1, ?2)
                 ON CONFLICT (referrer) DO UPDATE SET until_us = max(until_us, excluded.until_us)",
            )
            .bind(&self.referrer)
            .bind(i64::try_from(until).unwrap_or(i64::MAX))
            .execute(&mut *w.tx)
            .await
            .map_err(w.err())?;
            Ok(w.commit().await?)
        })
    }

    fn policy(&self) -> &RatePolicy {
        &self.policy
    }
}
