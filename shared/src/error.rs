//! The one error type of `projector-shared`, with messages an on-call person can act on.

use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("malformed spike-projection job ({reason}); payload starts with {sample:?}; the job cannot run and is dropped")]
    MalformedJob { reason: String, sample: String },

    #[error("slot backend unavailable: {detail} (check that Redis is reachable; jobs are counted as slot_unavailable meanwhile)")]
    SlotBackendUnavailable { detail: String },

    #[error("redis unavailable while {doing}: {detail} (check redis.url and that Redis is up)")]
    Redis { doing: String, detail: String },

    #[error("slot wait gave up after {waited:?} because the limiter was closed")]
    LimiterClosed { waited: Duration },

    #[error("cannot read organizations file {path}: {source}")]
    OrgFile { path: std::path::PathBuf, source: std::io::Error },
}

impl Error {
    /// A job that failed with this error could succeed if tried again.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::SlotBackendUnavailable { .. } | Error::Redis { .. })
    }
}

impl Error {
    /// Wraps a Redis error with what was being done, for messages an operator can act on.
    pub fn redis(doing: impl Into<String>) -> impl FnOnce(redis::RedisError) -> Error {
        let doing = doing.into();
        move |e| Error::Redis { doing, detail: e.to_string() }
    }
}
