//! The one way Projector opens a Redis connection: an endpoint (URL plus TLS trust; one server, a
//! Redis Cluster, or the master a Sentinel names), lazy connects (a process starts while Redis is
//! down), bounded timeouts, reconnects with capped backoff, and URLs that never show a password in
//! a message.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Value};

/// A connection to Redis, cheap to clone: one server through a self-healing manager, one
/// dedicated connection (a blocking wait holds it), a Redis Cluster (routed by key slot), or the
/// master a Redis Sentinel names (asked again after a failover).
#[derive(Clone)]
pub enum RedisConn {
    Server(ConnectionManager),
    Dedicated(MultiplexedConnection),
    Cluster(ClusterLink),
    Sentinel(SentinelLink),
}

/// The master of a Sentinel-watched set, found through the Sentinel at first use and again after
/// a connection error or a `READONLY` answer (the old master came back as a replica): a failover
/// costs the calls in flight, which callers retry as they retry any transient error.
#[derive(Clone)]
pub struct SentinelLink {
    endpoint: Arc<Endpoint>,
    budget: Duration,
    master: Arc<std::sync::Mutex<Option<MultiplexedConnection>>>,
}

impl SentinelLink {
    async fn connection(&self) -> redis::RedisResult<MultiplexedConnection> {
        if let Some(conn) = self.master.lock().unwrap_or_else(|p| p.into_inner()).clone() {
            return Ok(conn);
        }
        let conn = master_connection(&self.endpoint, self.budget, self.budget).await?;
        *self.master.lock().unwrap_or_else(|p| p.into_inner()) = Some(conn.clone());
        Ok(conn)
    }

    /// After an error: whether the master may have moved, in which case it is looked up again.
    fn after<T>(&self, result: redis::RedisResult<T>) -> redis::RedisResult<T> {
        if let Err(e) = &result
            && (is_transient(e) || e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly))
        {
            *self.master.lock().unwrap_or_else(|p| p.into_inner()) = None;
        }
        result
    }
}

/// The current master's client, as the Sentinel at `endpoint.url` names it, within `budget`.
async fn master_client(endpoint: &Endpoint, budget: Duration) -> redis::RedisResult<redis::Client> {
    let master = endpoint.sentinel_master.as_deref().unwrap_or_default();
    let mut sentinel =
        redis::sentinel::SentinelClient::build(vec![endpoint.url.as_str()], master, None, redis::sentinel::SentinelServerType::Master)?;
    tokio::time::timeout(budget, sentinel.async_get_client())
        .await
        .map_err(|_| redis::RedisError::from((redis::ErrorKind::Io, "asking the Sentinel for the master timed out")))?
}

async fn master_connection(
    endpoint: &Endpoint,
    connect_timeout: Duration,
    response_timeout: Duration,
) -> redis::RedisResult<MultiplexedConnection> {
    let config =
        redis::AsyncConnectionConfig::new().set_connection_timeout(Some(connect_timeout)).set_response_timeout(Some(response_timeout));
    master_client(endpoint, connect_timeout).await?.get_multiplexed_async_connection_with_config(&config).await
}

/// A pub/sub connection: to the server, the cluster's seed node (a cluster relays every message
/// to every node), or the master the Sentinel names now.
pub async fn pubsub(endpoint: &Endpoint) -> redis::RedisResult<redis::aio::PubSub> {
    if endpoint.sentinel_master.is_some() {
        return master_client(endpoint, Duration::from_secs(5)).await?.get_async_pubsub().await;
    }
    endpoint.client()?.get_async_pubsub().await
}

/// A Redis Cluster connection made at its first use, so a process starts while the cluster is
/// down; a failed connect is tried again at the next call. Once made, redis-rs follows the
/// cluster's topology and reconnects to its nodes itself.
#[derive(Clone)]
pub struct ClusterLink {
    client: Arc<redis::cluster::ClusterClient>,
    conn: Arc<tokio::sync::OnceCell<ClusterConnection>>,
}

impl ClusterLink {
    async fn connection(&self) -> redis::RedisResult<ClusterConnection> {
        self.conn.get_or_try_init(|| self.client.get_async_connection()).await.cloned()
    }
}

impl RedisConn {
    /// How keys are named on this Redis: with hash tags on a cluster, as always on one server.
    pub fn layout(&self) -> crate::keys::KeyLayout {
        match self {
            RedisConn::Cluster(_) => crate::keys::KeyLayout::Cluster,
            RedisConn::Server(_) | RedisConn::Dedicated(_) | RedisConn::Sentinel(_) => crate::keys::KeyLayout::Server,
        }
    }
}

impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            RedisConn::Server(c) => c.req_packed_command(cmd),
            RedisConn::Dedicated(c) => c.req_packed_command(cmd),
            RedisConn::Cluster(link) => Box::pin(async move {
                let mut c = link.connection().await?;
                c.req_packed_command(cmd).await
            }),
            RedisConn::Sentinel(link) => Box::pin(async move {
                let mut c = link.after(link.connection().await)?;
                link.after(c.req_packed_command(cmd).await)
            }),
        }
    }

    fn req_packed_commands<'a>(&'a mut self, pipeline: &'a Pipeline, offset: usize, count: usize) -> RedisFuture<'a, Vec<Value>> {
        match self {
            RedisConn::Server(c) => c.req_packed_commands(pipeline, offset, count),
            RedisConn::Dedicated(c) => c.req_packed_commands(pipeline, offset, count),
            RedisConn::Cluster(link) => Box::pin(async move {
                let mut c = link.connection().await?;
                match c.req_packed_commands(pipeline, offset, count).await {
                    // A cluster sends a pipeline to one node, so its keys must share a slot. The
                    // reads that span runs, workers or queue entries (operator views) go command
                    // by command instead; a transaction must stay whole.
                    Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::CrossSlot) && !pipeline.is_transaction() => {
                        let mut values = Vec::with_capacity(pipeline.len());
                        for cmd in pipeline.cmd_iter() {
                            values.push(c.req_packed_command(cmd).await?);
                        }
                        Ok(values)
                    }
                    other => other,
                }
            }),
            RedisConn::Sentinel(link) => Box::pin(async move {
                let mut c = link.after(link.connection().await)?;
                link.after(c.req_packed_commands(pipeline, offset, count).await)
            }),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            RedisConn::Server(c) => c.get_db(),
            RedisConn::Dedicated(c) => c.get_db(),
            RedisConn::Cluster(_) | RedisConn::Sentinel(_) => 0,
        }
    }
}

/// Where Redis is and how to trust it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Endpoint {
    /// `redis://`, `rediss://` (TLS) or `unix://` URL; may carry a password.
    pub url: String,
    /// With `rediss://`: PEM file of the CA that signed the server's certificate.
    pub tls_ca_file: Option<PathBuf>,
    /// With `rediss://`: accept any certificate (staging only).
    pub tls_insecure: bool,
    /// `url` is one node of a Redis Cluster; the others are found from it.
    pub cluster: bool,
    /// `url` is a Redis Sentinel, and this the name of the master set it watches.
    pub sentinel_master: Option<String>,
}

impl Endpoint {
    /// The URL with any password replaced by `***`, for messages and logs.
    pub fn redacted(&self) -> String {
        redact_url(&self.url)
    }

    /// A client for this endpoint, with the configured TLS trust. On a cluster it reaches the
    /// node in `url` only: what a pub/sub subscription needs (a cluster relays every message to
    /// every node), not keys.
    pub fn client(&self) -> Result<redis::Client, redis::RedisError> {
        let mut url = self.url.clone();
        if self.tls_insecure && url.starts_with("rediss://") && !url.contains("#insecure") {
            url.push_str("#insecure");
        }
        if url.starts_with("rediss://")
            && let Some(certificates) = self.trusted_ca()?
        {
            return redis::Client::build_with_tls(url, certificates);
        }
        redis::Client::open(url)
    }

    /// `tls_ca_file` read, as the certificates redis-rs trusts.
    fn trusted_ca(&self) -> Result<Option<redis::TlsCertificates>, redis::RedisError> {
        let Some(path) = &self.tls_ca_file else { return Ok(None) };
        let root_cert = std::fs::read(path).map_err(|e| {
            redis::RedisError::from((
                redis::ErrorKind::InvalidClientConfig,
                "cannot read redis.tls_ca_file",
                format!("{}: {e}", path.display()),
            ))
        })?;
        Ok(Some(redis::TlsCertificates { client_tls: None, root_cert: Some(root_cert) }))
    }
}

impl From<&str> for Endpoint {
    fn from(url: &str) -> Self {
        Endpoint { url: url.to_owned(), ..Endpoint::default() }
    }
}

impl From<&String> for Endpoint {
    fn from(url: &String) -> Self {
        Endpoint::from(url.as_str())
    }
}

impl From<String> for Endpoint {
    fn from(url: String) -> Self {
        Endpoint { url, ..Endpoint::default() }
    }
}

impl From<&projector_config::RedisConfig> for Endpoint {
    fn from(c: &projector_config::RedisConfig) -> Self {
        Endpoint {
            url: c.url.clone(),
            tls_ca_file: c.tls_ca_file.clone(),
            tls_insecure: c.tls_insecure,
            cluster: c.cluster,
            sentinel_master: c.sentinel_master.clone(),
        }
    }
}

impl From<&Endpoint> for Endpoint {
    fn from(e: &Endpoint) -> Self {
        e.clone()
    }
}

pub use projector_config::redact_url;

/// Masks every URL password that appears in `text` (error messages from libraries quote URLs).
pub fn redact_text(text: &str, endpoint: &Endpoint) -> String {
    match url::Url::parse(&endpoint.url).ok().and_then(|u| u.password().map(str::to_owned)) {
        Some(password) if !password.is_empty() => text.replace(&password, "***"),
        _ => text.to_owned(),
    }
}

/// A lazily connecting, self-healing connection; `round_trip_budget` bounds connect and each
/// reply. The client is `Endpoint::client`, for `dedicated_connection` on one server. A cluster
/// connection names its keys with the cluster layout (`RedisConn::layout`).
pub fn connection_manager(
    endpoint: impl Into<Endpoint>,
    round_trip_budget: Duration,
) -> Result<(redis::Client, RedisConn), redis::RedisError> {
    let endpoint = endpoint.into();
    let client = endpoint.client()?;
    if endpoint.sentinel_master.is_some() {
        let link = SentinelLink { endpoint: Arc::new(endpoint), budget: round_trip_budget, master: Arc::new(std::sync::Mutex::new(None)) };
        return Ok((client, RedisConn::Sentinel(link)));
    }
    if endpoint.cluster {
        let link =
            ClusterLink { client: Arc::new(cluster_client(&endpoint, round_trip_budget)?), conn: Arc::new(tokio::sync::OnceCell::new()) };
        return Ok((client, RedisConn::Cluster(link)));
    }
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(round_trip_budget))
        .set_response_timeout(Some(round_trip_budget))
        .set_number_of_retries(3)
        .set_max_delay(Duration::from_secs(2));
    let conn = ConnectionManager::new_lazy_with_config(client.clone(), config)?;
    Ok((client, RedisConn::Server(conn)))
}

/// A connection of its own, made now, for a command that blocks it (`BLPOP`) up to
/// `response_timeout`; on a cluster, a cluster connection of its own.
pub async fn dedicated_connection(
    endpoint: &Endpoint,
    client: &redis::Client,
    connect_timeout: Duration,
    response_timeout: Duration,
) -> Result<RedisConn, redis::RedisError> {
    if endpoint.sentinel_master.is_some() {
        return Ok(RedisConn::Dedicated(master_connection(endpoint, connect_timeout, response_timeout).await?));
    }
    if endpoint.cluster {
        let client = Arc::new(cluster_client(endpoint, response_timeout)?);
        let conn = client.get_async_connection().await?;
        return Ok(RedisConn::Cluster(ClusterLink { client, conn: Arc::new(tokio::sync::OnceCell::new_with(Some(conn))) }));
    }
    let config =
        redis::AsyncConnectionConfig::new().set_connection_timeout(Some(connect_timeout)).set_response_timeout(Some(response_timeout));
    Ok(RedisConn::Dedicated(client.get_multiplexed_async_connection_with_config(&config).await?))
}

fn cluster_client(endpoint: &Endpoint, response_timeout: Duration) -> Result<redis::cluster::ClusterClient, redis::RedisError> {
    let mut builder = redis::cluster::ClusterClient::builder([endpoint.url.as_str()])
        .connection_timeout(response_timeout)
        .response_timeout(response_timeout)
        .retries(3);
    if endpoint.url.starts_with("rediss://")
        && let Some(certificates) = endpoint.trusted_ca()?
    {
        builder = builder.certs(certificates);
    }
    if endpoint.tls_insecure {
        builder = builder.danger_accept_invalid_hostnames(true);
    }
    builder.build()
}

/// A connection-level failure (dropped, refused, reset, timed out): the same call may work a
/// moment later, typically once the connection manager has reconnected after a Redis restart.
pub fn is_transient(e: &redis::RedisError) -> bool {
    e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() || e.is_timeout()
}

/// Runs an idempotent Redis call, retrying transient failures a few times with short backoff
/// (50 ms, 100 ms, 200 ms, 400 ms): a connection manager fails its first call after Redis comes
/// back, and that must not become an org's outcome. Other errors return at once.
pub async fn retry_transient<T, F, Fut>(mut call: F) -> Result<T, redis::RedisError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, redis::RedisError>>,
{
    let mut backoff = crate::backoff::Backoff::new(Duration::from_millis(50), Duration::from_millis(400));
    for _ in 0..4 {
        match call().await {
            Err(e) if is_transient(&e) => {
                let pause = backoff.next_pause();
                tracing::debug!(error = %e, retry_in_ms = pause.as_millis() as u64, "transient Redis error; retrying");
                tokio::time::sleep(pause).await;
            }
            other => return other,
        }
    }
    call().await
}

/// Asks Redis a PING within `budget`, for a process starting or a readiness probe: `Ok`, or the
/// failure classed ([`crate::RedisFailure`]) so that a wrong password reads as one, not as "no
/// answer". A budget that passes is a [`crate::RedisFailure::Timeout`].
pub async fn check(conn: &RedisConn, budget: Duration) -> Result<(), crate::Error> {
    let mut conn = conn.clone();
    let ping = redis::cmd("PING");
    match tokio::time::timeout(budget, ping.query_async::<String>(&mut conn)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(crate::Error::redis("checking Redis (PING)")(e)),
        Err(_) => Err(crate::Error::Redis {
            doing: "checking Redis (PING)".to_owned(),
            failure: crate::RedisFailure::Timeout,
            detail: format!("no answer within {budget:?}"),
        }),
    }
}

/// At a process's start: a failure no retry can mend (wrong credentials) is returned, so the
/// process exits 1 with that line instead of starting and failing every job; one that may pass
/// (Redis still starting) is logged, and the process goes on and retries as it runs.
pub async fn check_at_start(conn: &RedisConn, who: &str) -> Result<(), crate::Error> {
    match check(conn, Duration::from_secs(5)).await {
        Ok(()) => Ok(()),
        Err(e) if e.is_fatal() => Err(e),
        Err(e) => {
            tracing::warn!(error = %e, "{who} starts although Redis does not answer yet; it retries as it runs");
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_show() {
        assert_eq!(redact_url("redis://:secret@127.0.0.1:6379"), "redis://:***@127.0.0.1:6379");
        assert_eq!(redact_url("rediss://user:secret@cache:6380/2"), "rediss://user:***@cache:6380/2");
        assert_eq!(redact_url("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
        assert!(!redact_url("redis://:secret@host:notaport").contains("secret"));
        let e = Endpoint::from("redis://:s3cret@host:1");
        assert_eq!(redact_text("connection to redis://:s3cret@host:1 refused", &e), "connection to redis://:***@host:1 refused");
    }
}
