//! Turns configuration into the parts a pipeline is made of: the query source and the projection
//! sink. Shared by the worker process and the embedded run so both read `query.*`/`sink.*` alike.

use std::path::Path;
use std::sync::Arc;

use projector_config::{Config, QuerySourceKind, RateConfig, SinkKind};

use projector_shared::adaptive::Multiplier;
use projector_shared::rate::{MemoryRateLimiter, RateGate, RateLimiter, RatePolicy, RedisRateLimiter, SqliteRateLimiter};
use projector_shared::slots::ServiceSteering;

use crate::error::Error;
use crate::postgres_sink::PostgresSink;
use crate::query::{QuerySource, SyntheticQuery};
use crate::redis_sink::RedisSink;
use crate::sink::{DiscardSink, JsonLinesSink, ProjectionSink};
use crate::snuba::{SnubaQuery, SnubaSettings};

/// The query source `query.source` names.
pub fn query_source(config: &Config) -> Result<Arc<dyn QuerySource>, Error> {
    Ok(match (config.query.source, &config.query.url) {
        (QuerySourceKind::Snuba, Some(url)) => Arc::new(SnubaQuery::new(SnubaSettings {
            url: url.clone(),
            dataset: config.query.dataset.clone(),
            referrer: config.query.referrer.clone(),
            categories: config.query.categories.clone(),
            timeout: config.query.timeout,
            tls_ca_file: config.query.tls_ca_file.clone(),
            tls_insecure: config.query.tls_insecure,
        })?),
        // Config validation requires query.url with snuba; synthetic needs nothing.
        _ => Arc::new(SyntheticQuery { latency: config.query.synthetic_latency }),
    })
}

/// How the query service's own numbers cap the slot limit (`slots.follow_service`), the same in
/// the worker's Redis limiter and the embedded run's memory one; `None` when they do not.
pub fn service_steering(config: &Config) -> Option<ServiceSteering> {
    config.slots.follow_service.then_some(ServiceSteering {
        margin: config.slots.service_margin,
        ttl: config.slots.service_ttl,
        memory: config.slots.service_memory,
        use_throttle: config.adaptive.use_throttle_signal,
    })
}

/// Where a rate policy's windows live.
pub enum RateStore<'a> {
    /// In this process (the embedded run on memory).
    Process,
    /// In the SQLite file every process of this machine shares.
    File(&'a projector_sqlite::Database),
    /// In Redis for the fleet, scaled by the fleet's adaptive multiplier.
    Fleet(&'a projector_shared::redis_conn::RedisConn, Multiplier),
}

/// The rate gate of `query.referrer`'s policy (`[rate]` with its overrides). In a worker
/// (`Fleet`) there is always one, so that a policy set at runtime applies; with no policy it
/// passes every start without a Redis call. The embedded run gets one, in this process or in its
/// file, only when configured.
pub fn rate_gate(config: &Config, store: RateStore<'_>) -> Option<RateGate> {
    let rate = config.rate_policy(&config.query.referrer);
    if !matches!(store, RateStore::Fleet(..)) && !rate.is_active() {
        return None;
    }
    let fail_open = config.slots.on_redis_error == projector_config::OnRedisError::FailOpen;
    let limiter = rate_limiter(config, &rate, store);
    Some(RateGate::new(limiter, config.query.referrer.clone(), rate.enforce, rate.cooldown_after_429).fail_open(fail_open))
}

/// The limiter of one rate policy: fleet-wide in Redis, machine-wide in a file, or in this process.
pub fn rate_limiter(config: &Config, rate: &RateConfig, store: RateStore<'_>) -> Arc<dyn RateLimiter> {
    let policy = RatePolicy::from_config(rate);
    match store {
        RateStore::Fleet(conn, multiplier) => {
            Arc::new(RedisRateLimiter::new(conn.clone(), &config.query.referrer, policy).with_multiplier(multiplier).enforced(rate.enforce))
        }
        RateStore::File(db) => Arc::new(SqliteRateLimiter::new(db.clone(), &config.query.referrer, policy)),
        RateStore::Process => Arc::new(MemoryRateLimiter::new(policy)),
    }
}

/// The sink `sink.kind` names; `output` (a CLI flag) overrides it with a JSON-lines file. A
/// PostgreSQL sink migrates its schema here when `sink.migrate` says so.
pub async fn sink(config: &Config, output: Option<&Path>) -> Result<Arc<dyn ProjectionSink>, Error> {
    if let Some(path) = output {
        return Ok(Arc::new(JsonLinesSink::create(path)?));
    }
    Ok(match (config.sink.kind, &config.sink.path) {
        (SinkKind::Redis, _) => Arc::new(RedisSink::new(&config.redis, config.sink.ttl)?),
        (SinkKind::JsonLines, Some(path)) => Arc::new(JsonLinesSink::create(path)?),
        (SinkKind::Postgres, _) => {
            let url = config.sink.postgres_url.as_deref().ok_or_else(|| Error::Sink {
                target: "sink.postgres_url".to_owned(),
                detail: "not set; sink.kind = \"postgres\" needs it".to_owned(),
            })?;
            Arc::new(PostgresSink::open(url, config.sink.postgres_pool, config.sink.ttl, config.sink.migrate).await?)
        }
        // Config refuses sink.kind = "sqlite" without the SQLite backend, whose file it needs:
        // the process that opened the file (a worker on it, the embedded run) builds `SqliteSink`.
        (SinkKind::Sqlite, _) => {
            return Err(Error::Sink {
                target: "sink.kind".to_owned(),
                detail: "\"sqlite\" stores projections in the SQLite backend's file, which this process has not opened".to_owned(),
            });
        }
        (SinkKind::JsonLines, None) | (SinkKind::Discard, _) => Arc::new(DiscardSink),
    })
}
