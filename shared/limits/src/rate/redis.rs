//! The fleet-wide rate limiter: one `lua/rate_acquire.lua` call per admission, on Redis time, all
//! windows checked at once under one hash tag.

use std::sync::LazyLock;
use std::time::Duration;

use futures::future::BoxFuture;
use projector_redis::redis_conn::RedisConn;
use redis::{FromRedisValue, ParsingError, Script, Value};

use super::{Admission, BlockReason, Decision, RateLimiter, RatePolicy};
use crate::error::Error;
use projector_redis::keys::RateKeys;

static ACQUIRE: LazyLock<Script> = LazyLock::new(|| projector_redis::lua::script(include_str!("../../../../lua/rate_acquire.lua")));

impl FromRedisValue for Decision {
    fn from_redis_value(v: Value) -> Result<Self, ParsingError> {
        let (admitted, wait_us, reason, _binding, at_us): (u8, u64, u8, u32, u64) = FromRedisValue::from_redis_value(v)?;
        let reason = match reason {
            1 => Some(BlockReason::Window),
            2 => Some(BlockReason::Cooldown),
            _ => None,
        };
        Ok(Decision { admitted: admitted == 1, wait_us, reason, at_us })
    }
}

/// Admits starts under `policy` for the whole fleet, in the Redis at `conn`.
#[derive(Clone)]
pub struct RedisRateLimiter {
    conn: RedisConn,
    keys: RateKeys,
    policy: RatePolicy,
    window_keys: Vec<String>,
    /// The fleet's adaptive multiplier, scaling every window's limit (1 without adaptation).
    multiplier: crate::adaptive::Multiplier,
    /// Shadow mode: the script also counts what enforcement would have done.
    enforce: bool,
}

impl RedisRateLimiter {
    /// The limiter of `referrer`'s policy.
    pub fn new(conn: RedisConn, referrer: &str, policy: RatePolicy) -> Self {
        let keys = RateKeys::new(referrer);
        let window_keys = policy.windows.iter().map(|w| keys.window(policy.mode_name(), w.limit, w.span.as_millis())).collect();
        RedisRateLimiter { conn, keys, policy, window_keys, multiplier: Default::default(), enforce: true }
    }

    /// `false`: the policy runs in shadow mode, and the script counts what it would have done.
    pub fn enforced(self, enforce: bool) -> Self {
        RedisRateLimiter { enforce, ..self }
    }

    /// Scales every window's limit by the fleet's adaptive multiplier, as last heard.
    pub fn with_multiplier(self, multiplier: crate::adaptive::Multiplier) -> Self {
        RedisRateLimiter { multiplier, ..self }
    }

    /// The cooldown left now, if any (Redis time).
    pub async fn cooldown_left(&self) -> Result<Option<Duration>, Error> {
        let left: i64 = redis::cmd("PTTL")
            .arg(self.keys.cooldown())
            .query_async(&mut self.conn.clone())
            .await
            .map_err(Error::redis("reading the rate cooldown"))?;
        Ok((left > 0).then(|| Duration::from_millis(left.unsigned_abs())))
    }
}

/// A policy's state in Redis now, for operators.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct RateNow {
    /// Per window (as configured): admissions counted in it now (strict: in the last W, reserved
    /// ones included; smooth: how many starts' worth the theoretical arrival time is ahead of now).
    pub windows: Vec<WindowNow>,
    pub cooldown_left_ms: u64,
    /// Shadow mode: what enforcement would have done, since the counters were created.
    pub shadow_would_delay: u64,
    pub shadow_would_refuse: u64,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct WindowNow {
    pub window: String,
    pub limit: u32,
    pub used: u64,
}

impl RedisRateLimiter {
    /// The live window counts, the cooldown left and the shadow counters, on Redis time.
    pub async fn now(&self) -> Result<RateNow, Error> {
        let mut conn = self.conn.clone();
        let doing = "reading the rate policy's state";
        let ((secs, micros), cooldown, shadow): ((u64, u64), i64, std::collections::HashMap<String, u64>) = redis::pipe()
            .cmd("TIME")
            .cmd("PTTL")
            .arg(self.keys.cooldown())
            .cmd("HGETALL")
            .arg(self.keys.shadow())
            .query_async(&mut conn)
            .await
            .map_err(Error::redis(doing))?;
        let now = secs * 1_000_000 + micros;
        let mut windows = Vec::new();
        for (w, key) in self.policy.windows.iter().zip(&self.window_keys) {
            let used = match self.policy.mode {
                super::RateMode::Strict => {
                    let from = now.saturating_sub(us(self.policy.enforced_span(w)));
                    redis::cmd("ZCOUNT")
                        .arg(key)
                        .arg(format!("({from}"))
                        .arg("+inf")
                        .query_async::<u64>(&mut conn)
                        .await
                        .map_err(Error::redis(doing))?
                }
                super::RateMode::Smooth => {
                    let tat: Option<f64> = redis::cmd("GET").arg(key).query_async(&mut conn).await.map_err(Error::redis(doing))?;
                    let interval = us(w.span) as f64 / f64::from(w.limit);
                    tat.map_or(0, |t| ((t - now as f64).max(0.0) / interval).ceil() as u64)
                }
            };
            windows.push(WindowNow { window: w.to_string(), limit: w.limit, used });
        }
        Ok(RateNow {
            windows,
            cooldown_left_ms: cooldown.max(0).unsigned_abs(),
            shadow_would_delay: shadow.get("would_delay").copied().unwrap_or(0),
            shadow_would_refuse: shadow.get("would_refuse").copied().unwrap_or(0),
        })
    }
}

fn us(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

impl RateLimiter for RedisRateLimiter {
    fn admit(&self) -> BoxFuture<'_, Result<Admission, Error>> {
        Box::pin(async move {
            let mut call = ACQUIRE.key(self.keys.cooldown());
            call.key(self.keys.shadow())
                .key(&self.window_keys)
                .arg(self.policy.mode_name())
                .arg(uuid::Uuid::new_v4().simple().to_string())
                .arg(us(self.policy.max_delay))
                .arg(self.policy.burst)
                .arg(self.multiplier.get())
                .arg(u8::from(self.enforce));
            for w in &self.policy.windows {
                call.arg(w.limit).arg(us(self.policy.enforced_span(w)));
            }
            let decision: Decision =
                call.invoke_async(&mut self.conn.clone()).await.map_err(Error::redis("asking the rate policy for an admission"))?;
            Ok(decision.into_admission())
        })
    }

    fn cool_down(&self, length: Duration) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(async move {
            let ms = u64::try_from(length.as_millis()).unwrap_or(u64::MAX).max(1);
            let _: () = redis::cmd("SET")
                .arg(self.keys.cooldown())
                .arg(1)
                .arg("PX")
                .arg(ms)
                .query_async(&mut self.conn.clone())
                .await
                .map_err(Error::redis("starting the rate cooldown after a 429"))?;
            Ok(())
        })
    }

    fn policy(&self) -> &RatePolicy {
        &self.policy
    }
}
