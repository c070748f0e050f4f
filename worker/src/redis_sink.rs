//! The Redis projection store: one hash per organization, a field per (project, projected hour),
//! written idempotently in one script call that refuses writes from a stale run or lease.

use std::time::Duration;

use futures::future::BoxFuture;
use projector_shared::keys;
use projector_shared::metrics as m;
use projector_shared::redis_conn::{Endpoint, is_transient, redact_text};
use redis::Script;
use redis::aio::ConnectionManager;

use crate::error::Error;
use crate::sink::{ProjectionRecord, ProjectionSink};

/// KEYS: the org's hash. ARGV: first_hour (unix s), fencing token, ttl (ms), prune_before (unix s),
/// then field/value pairs. A write is refused whole if any of its hours holds a projection from a
/// later run (first_hour), or from the same run under a newer lease (fencing token; 0 = no slot,
/// the legacy path, which cannot be fenced). Returns {written(0|1), stored_first_hour, stored_token}.
const WRITE: &str = r"
local first_hour, token = tonumber(ARGV[1]), tonumber(ARGV[2])
for i = 5, #ARGV, 2 do
  local old = redis.call('HGET', KEYS[1], ARGV[i])
  if old then
    local ok, stored = pcall(cjson.decode, old)
    if ok and type(stored) == 'table' then
      local h, t = tonumber(stored.first_hour) or 0, tonumber(stored.fencing_token) or 0
      if h > first_hour or (h == first_hour and token > 0 and t > token) then
        return {0, h, t}
      end
    end
  end
end
for i = 5, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
local prune_before = tonumber(ARGV[4])
for _, f in ipairs(redis.call('HKEYS', KEYS[1])) do
  local hour = tonumber(string.match(f, ':(%d+)$'))
  if hour and hour < prune_before then redis.call('HDEL', KEYS[1], f) end
end
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return {1, 0, 0}
";

/// Attempts of one projection write when Redis fails transiently: 0.2 + 0.4 + 0.8 + 1.6 s of
/// backoff, enough for a connection manager to reconnect after a Redis restart.
const SINK_ATTEMPTS: u32 = 5;
const SINK_RETRY_FIRST_PAUSE: Duration = Duration::from_millis(200);

/// Writes projections to Redis for other services to read.
#[derive(Clone)]
pub struct RedisSink {
    conn: ConnectionManager,
    url: String,
    ttl: Duration,
    script: Script,
}

impl RedisSink {
    /// Connects lazily: a worker starts while Redis is down, and writes fail (retryably) until it is back.
    pub fn new(endpoint: impl Into<Endpoint>, ttl: Duration) -> Result<Self, Error> {
        let endpoint = endpoint.into();
        let (_, conn) = projector_shared::redis_conn::connection_manager(&endpoint, Duration::from_secs(2))
            .map_err(|e| Error::Sink { target: endpoint.redacted(), detail: redact_text(&e.to_string(), &endpoint) })?;
        Ok(RedisSink { conn, url: endpoint.redacted(), ttl, script: Script::new(WRITE) })
    }

    async fn write_org(&self, records: Vec<ProjectionRecord>) -> Result<(), Error> {
        let Some(first) = records.first() else { return Ok(()) };
        let (org, token, first_hour) = (first.org_id, first.fencing_token, first.first_hour.timestamp());
        let mut invocation = self.script.key(keys::projections(org));
        let ttl_secs = i64::try_from(self.ttl.as_secs()).unwrap_or(i64::MAX);
        invocation
            .arg(first_hour)
            .arg(token)
            .arg(u64::try_from(self.ttl.as_millis()).unwrap_or(u64::MAX))
            .arg(first_hour.saturating_sub(ttl_secs));
        for r in &records {
            for (i, projected) in r.hourly.iter().enumerate() {
                let hour = first_hour + 3600 * i as i64;
                let value = serde_json::json!({
                    "projected": projected,
                    "spike_threshold": r.spike_threshold,
                    "run_id": r.run_id.0,
                    "fencing_token": r.fencing_token,
                    "first_hour": first_hour,
                });
                invocation.arg(keys::projection_field(r.project_id, hour)).arg(value.to_string());
            }
        }
        // The write is idempotent (same run and token rewrite the same values), so a Redis blip is
        // retried here, with backoff, rather than turning into the org's outcome.
        let mut pause = SINK_RETRY_FIRST_PAUSE;
        let mut attempt = 1;
        let (written, stored_first_hour, stored_token): (u8, i64, u64) = loop {
            let mut conn = self.conn.clone();
            match invocation.invoke_async(&mut conn).await {
                Ok(answer) => break answer,
                Err(e) if is_transient(&e) && attempt < SINK_ATTEMPTS => {
                    tracing::debug!(org_id = %org, attempt, error = %e, "projection write failed; retrying");
                    tokio::time::sleep(pause).await;
                    pause *= 2;
                    attempt += 1;
                }
                Err(e) => {
                    return Err(Error::Sink { target: self.url.clone(), detail: format!("{e} (after {attempt} attempt(s))") });
                }
            }
        };
        if written == 1 {
            return Ok(());
        }
        metrics::counter!(m::PROJECTION_STALE_REFUSED_TOTAL).increment(1);
        Err(Error::StaleWrite { org_id: org, first_hour, token, stored_first_hour, stored_token })
    }
}

impl ProjectionSink for RedisSink {
    fn write(&self, records: Vec<ProjectionRecord>) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(self.write_org(records))
    }
}
