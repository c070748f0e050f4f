//! The Redis projection store: one hash per organization, one compact field per project (the
//! projected hours as an array under one header), written idempotently in one script call that
//! refuses writes from a stale run or lease.

use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use projector_shared::OrgId;
use projector_shared::keys;
use projector_shared::redis_conn::RedisConn;
use projector_shared::redis_conn::{Endpoint, is_transient, redact_text};
use redis::Script;

use crate::error::Error;
use crate::sink::{ProjectionRecord, ProjectionSink};

/// Projects per script call: two values each, well under the ~8,000 that Lua's `unpack` holds.
const PROJECTS_PER_CALL: usize = 2_000;

/// Header reads in flight at once when asking which orgs hold fresher projections.
const FRESHNESS_READS_IN_FLIGHT: usize = 64;

/// Writes one org's projections, fenced; its contract is in the file's header.
static WRITE: std::sync::LazyLock<Script> =
    std::sync::LazyLock::new(|| projector_shared::lua::script(include_str!("../../lua/projection_write.lua")));

/// Writes projections to Redis for other services to read.
#[derive(Clone)]
pub struct RedisSink {
    conn: RedisConn,
    url: String,
    ttl: Duration,
}

/// `projection_write`'s reply.
struct WriteReply {
    written: bool,
    /// The newer write that refused this one: its first hour and fencing token.
    stored_first_hour: i64,
    stored_token: u64,
}

impl redis::FromRedisValue for WriteReply {
    fn from_redis_value(v: redis::Value) -> Result<Self, redis::ParsingError> {
        let (written, stored_first_hour, stored_token): (u8, i64, u64) = redis::FromRedisValue::from_redis_value(v)?;
        Ok(WriteReply { written: written == 1, stored_first_hour, stored_token })
    }
}

impl RedisSink {
    /// Connects lazily: a worker starts while Redis is down, and writes fail (retryably) until it is back.
    pub fn new(endpoint: impl Into<Endpoint>, ttl: Duration) -> Result<Self, Error> {
        let endpoint = endpoint.into();
        let (_, conn) = projector_shared::redis_conn::connection_manager(&endpoint, Duration::from_secs(2))
            .map_err(|e| Error::Sink { target: endpoint.redacted(), detail: redact_text(&e.to_string(), &endpoint) })?;
        Ok(RedisSink { conn, url: endpoint.redacted(), ttl })
    }

    async fn write_org(&self, records: Vec<ProjectionRecord>) -> Result<(), Error> {
        let Some(first) = records.first() else { return Ok(()) };
        let chunks = records.len().div_ceil(PROJECTS_PER_CALL);
        for (i, chunk) in records.chunks(PROJECTS_PER_CALL).enumerate() {
            let reply = self.write_chunk(chunk, records.len(), i + 1 == chunks).await?;
            if !reply.written {
                return Err(crate::sink::refused_as_stale(first, reply.stored_first_hour, reply.stored_token));
            }
        }
        Ok(())
    }

    /// Reads one project's header per org (HRANDFIELD: every project of a write carries the same
    /// header, and the script refuses a write if any stored project is later). A leftover field
    /// of a dropped project may hide a fresher org; that org is then queried and refused by the
    /// fence, as before this check. Reads go concurrently on the multiplexed connection, which
    /// pipelines them, and each read names one key, so a cluster routes it.
    async fn orgs_fresher_than(&self, orgs: Vec<OrgId>, first_hour: i64) -> Result<Vec<OrgId>, Error> {
        use futures::StreamExt;
        let reads = futures::stream::iter(orgs).map(|org| {
            let mut conn = self.conn.clone();
            async move {
                let pair: Vec<String> =
                    redis::cmd("HRANDFIELD").arg(keys::projections(org)).arg(1).arg("WITHVALUES").query_async(&mut conn).await?;
                let stored = pair.get(1).and_then(|v| serde_json::from_str::<serde_json::Value>(v).ok());
                let stored_first_hour = stored.and_then(|v| v.get("first_hour").and_then(serde_json::Value::as_i64)).unwrap_or(0);
                Ok::<_, redis::RedisError>((org, stored_first_hour > first_hour))
            }
        });
        let mut fresher = Vec::new();
        let mut reads = reads.buffer_unordered(FRESHNESS_READS_IN_FLIGHT);
        while let Some(read) = reads.next().await {
            let (org, is_fresher) =
                read.map_err(|e| Error::Sink { target: self.url.clone(), detail: format!("reading stored projections: {e}") })?;
            if is_fresher {
                fresher.push(org);
            }
        }
        fresher.sort_unstable();
        Ok(fresher)
    }

    /// One script call for a chunk of the org's projects (`total` in the whole write).
    async fn write_chunk(&self, chunk: &[ProjectionRecord], total: usize, last: bool) -> Result<WriteReply, Error> {
        let Some(first) = chunk.first() else { return Ok(WriteReply { written: true, stored_first_hour: 0, stored_token: 0 }) };
        let (org, token, first_hour) = (first.org_id, first.fencing_token, first.first_hour.timestamp());
        let mut invocation = WRITE.key(keys::projections(org));
        let ttl_secs = i64::try_from(self.ttl.as_secs()).unwrap_or(i64::MAX);
        invocation
            .arg(first_hour)
            .arg(token)
            .arg(u64::try_from(self.ttl.as_millis()).unwrap_or(u64::MAX))
            .arg(first_hour.saturating_sub(ttl_secs))
            .arg(total)
            .arg(u8::from(last));
        for r in chunk {
            let value = serde_json::json!({
                "run_id": r.run_id.0,
                "fencing_token": r.fencing_token,
                "first_hour": first_hour,
                "spike_threshold": r.spike_threshold,
                "hourly": r.hourly,
            });
            invocation.arg(keys::projection_field(r.project_id)).arg(value.to_string());
        }
        // The write is idempotent (same run and token rewrite the same values), so a blip is retried.
        crate::sink::write_with_retries(
            org,
            || {
                let mut conn = self.conn.clone();
                let invocation = &invocation;
                async move { invocation.invoke_async(&mut conn).await }
            },
            is_transient,
        )
        .await
        .map_err(|(e, attempts)| Error::Sink { target: self.url.clone(), detail: format!("{e} (after {attempts} attempt(s))") })
    }
}

impl ProjectionSink for RedisSink {
    fn write(&self, records: Vec<ProjectionRecord>) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(self.write_org(records))
    }

    fn fresher(&self, orgs: &[OrgId], first_hour: DateTime<Utc>) -> BoxFuture<'_, Result<Vec<OrgId>, Error>> {
        let orgs = orgs.to_vec();
        Box::pin(self.orgs_fresher_than(orgs, first_hour.timestamp()))
    }
}
