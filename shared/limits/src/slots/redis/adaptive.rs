//! The Redis slot limiter's adaptive side: the query service's own numbers capping the fleet's
//! limit (`heard_service`), the fleet's answer windows moving the multiplier (`report_answers`),
//! and what operators set, read and reset of it.

use std::sync::atomic::Ordering;
use std::time::Duration;

use projector_core::service::ServiceQuota;

use super::super::scripts::{ADAPTIVE, AdaptiveReport, SERVICE, ServiceCap};
use super::{RedisSlotLimiter, ServiceSteering, ms};
use crate::adaptive::{ADAPTIVE_MIN_SAMPLES, AdaptiveSettings, SignalCounts};
use crate::error::Error;

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

impl RedisSlotLimiter {
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
        let mut call = SERVICE.on(&inner.keys);
        call.arg(quota.quota_used)
            .arg(quota.rejection_threshold)
            .arg(quota.throttle_threshold.max(0))
            .arg(u8::from(steering.use_throttle))
            .arg(steering.margin)
            .arg(ms(steering.ttl))
            .arg(inner.settings.initial_limit)
            .arg(u8::from(rejected))
            .arg(ms(age))
            .arg(ms(steering.memory));
        let capped: ServiceCap = inner.call(&call).await?;
        inner.limit_seen.store(capped.limit_in_force, Ordering::SeqCst);
        let before = inner.service_cap_seen.swap(capped.cap, Ordering::SeqCst);
        // An observing steering (slots.follow_service off) sets no cap: nothing to log.
        if before != capped.cap && !steering.ttl.is_zero() {
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
        let mut call = ADAPTIVE.on(&inner.keys);
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

    /// Forgets the multiplier and its window, and the service's cap and room (one hash): the
    /// limit in force is the stored limit again until the next answer.
    pub async fn reset_multiplier(&self) -> Result<bool, Error> {
        let removed: u8 = redis::cmd("DEL")
            .arg(self.inner.keys.adaptive())
            .query_async(&mut self.inner.conn.clone())
            .await
            .map_err(|e| self.inner.unavailable(e))?;
        Ok(removed == 1)
    }
}
