//! The fleet-wide rate limiter: one `lua/rate_acquire.lua` call per admission, on Redis time, all
//! windows checked at once under one hash tag.

use std::sync::LazyLock;
use std::time::Duration;

use futures::future::BoxFuture;
use redis::aio::ConnectionManager;
use redis::{FromRedisValue, ParsingError, Script, Value};

use super::{Admission, BlockReason, Decision, RateLimiter, RatePolicy};
use crate::error::Error;
use crate::keys::RateKeys;

static ACQUIRE: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("../../../lua/rate_acquire.lua")));

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
    conn: ConnectionManager,
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
    pub fn new(conn: ConnectionManager, referrer: &str, policy: RatePolicy) -> Self {
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
