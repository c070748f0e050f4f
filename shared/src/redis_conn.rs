//! The one way Projector opens a Redis connection: an endpoint (URL plus TLS trust), lazy connects
//! (a process starts while Redis is down), bounded timeouts, reconnects with capped backoff, and
//! URLs that never show a password in a message.

use std::path::PathBuf;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

/// Where Redis is and how to trust it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Endpoint {
    /// `redis://`, `rediss://` (TLS) or `unix://` URL; may carry a password.
    pub url: String,
    /// With `rediss://`: PEM file of the CA that signed the server's certificate.
    pub tls_ca_file: Option<PathBuf>,
    /// With `rediss://`: accept any certificate (staging only).
    pub tls_insecure: bool,
}

impl Endpoint {
    /// The URL with any password replaced by `***`, for messages and logs.
    pub fn redacted(&self) -> String {
        redact_url(&self.url)
    }

    /// A client for this endpoint, with the configured TLS trust.
    pub fn client(&self) -> Result<redis::Client, redis::RedisError> {
        let mut url = self.url.clone();
        if self.tls_insecure && url.starts_with("rediss://") && !url.contains("#insecure") {
            url.push_str("#insecure");
        }
        match &self.tls_ca_file {
            Some(path) if url.starts_with("rediss://") => {
                let root_cert = std::fs::read(path).map_err(|e| {
                    redis::RedisError::from((
                        redis::ErrorKind::InvalidClientConfig,
                        "cannot read redis.tls_ca_file",
                        format!("{}: {e}", path.display()),
                    ))
                })?;
                redis::Client::build_with_tls(url, redis::TlsCertificates { client_tls: None, root_cert: Some(root_cert) })
            }
            _ => redis::Client::open(url),
        }
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
        Endpoint { url: c.url.clone(), tls_ca_file: c.tls_ca_file.clone(), tls_insecure: c.tls_insecure }
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

/// A lazily connecting, self-healing connection; `round_trip_budget` bounds connect and each reply.
pub fn connection_manager(
    endpoint: impl Into<Endpoint>,
    round_trip_budget: Duration,
) -> Result<(redis::Client, ConnectionManager), redis::RedisError> {
    let client = endpoint.into().client()?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(round_trip_budget))
        .set_response_timeout(Some(round_trip_budget))
        .set_number_of_retries(3)
        .set_max_delay(Duration::from_secs(2));
    let conn = ConnectionManager::new_lazy_with_config(client.clone(), config)?;
    Ok((client, conn))
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
    let mut pause = Duration::from_millis(50);
    for _ in 0..4 {
        match call().await {
            Err(e) if is_transient(&e) => {
                tracing::debug!(error = %e, retry_in_ms = pause.as_millis() as u64, "transient Redis error; retrying");
                tokio::time::sleep(pause).await;
                pause *= 2;
            }
            other => return other,
        }
    }
    call().await
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
