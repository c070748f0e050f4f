//! Applies the runtime rate policy (`projectorctl rate set`) to this worker's gate. Every worker
//! runs its own: it reads Redis and changes only this process.

use futures::future::BoxFuture;
use projector_shared::redis_conn::RedisConn;

use super::Periodic;

/// Applies the rate policy an operator set at runtime (`projectorctl rate set`, stored in Redis)
/// over this worker's configuration, and goes back to the configuration when it is cleared.
pub struct RatePolicyRefresh {
    pub conn: RedisConn,
    pub config: projector_config::Config,
    pub gate: projector_shared::rate::RateGate,
    pub multiplier: projector_shared::adaptive::Multiplier,
    /// The runtime changes in force now (empty: the configuration's policy).
    pub applied: std::sync::Mutex<Vec<(String, String)>>,
}

impl Periodic for RatePolicyRefresh {
    fn name(&self) -> &'static str {
        "rate_policy_refresh"
    }

    fn run_once(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let referrer = &self.config.query.referrer;
            let changes = match projector_shared::rate::store::runtime_changes(&self.conn, referrer).await {
                Ok(c) => c,
                Err(e) => {
                    tracing::debug!(error = %e, "cannot read the runtime rate policy; the one in force stays");
                    return;
                }
            };
            if *self.applied.lock().unwrap_or_else(std::sync::PoisonError::into_inner) == changes {
                return;
            }
            match self.config.rate_policy_with(referrer, &changes) {
                Ok(rate) => {
                    let limiter = projector_job::build::rate_limiter(
                        &self.config,
                        &rate,
                        projector_job::build::RateStore::Fleet(&self.conn, self.multiplier.clone()),
                    );
                    self.gate.replace(limiter, rate.enforce, rate.cooldown_after_429);
                    let (rates, mode, enforce) = self.gate.describe();
                    tracing::info!(
                        stage = "rate-limiter", event_type = "policy", referrer = %referrer, rates = %rates, mode, enforce,
                        max_delay_ms = rate.max_delay.as_millis() as u64, runtime = !changes.is_empty(),
                        "rate policy now in force"
                    );
                    *self.applied.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = changes;
                }
                Err(problems) => {
                    tracing::warn!(problems = %problems.join("; "), "the runtime rate policy in Redis does not load; the one in force stays");
                }
            }
        })
    }
}
