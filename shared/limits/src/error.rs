//! The one error type of `projector-limits`: the slot backend out of reach, a wait cut short by
//! a closed limiter, or a Redis failure (classed by `projector-redis`, its source kept).

use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "slot backend unavailable: {detail} (check that Redis, or the SQLite file, is reachable and writable; jobs are counted as slot_unavailable and tried again meanwhile)"
    )]
    SlotBackendUnavailable { detail: String },

    #[error("slot wait gave up after {waited:?} because the limiter was closed")]
    LimiterClosed { waited: Duration },

    #[error(transparent)]
    Redis(#[from] projector_redis::Error),

    #[error(transparent)]
    Sqlite(#[from] projector_sqlite::Error),
}

impl Error {
    /// A job that failed with this error could succeed if tried again.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::SlotBackendUnavailable { .. } => true,
            Error::Redis(e) => e.is_retryable(),
            Error::Sqlite(e) => e.is_retryable(),
            Error::LimiterClosed { .. } => false,
        }
    }

    /// Wraps a Redis error with what was being done (see `projector_redis::Error::redis`).
    pub fn redis(doing: impl Into<String>) -> impl FnOnce(redis::RedisError) -> Error {
        let wrap = projector_redis::Error::redis(doing);
        move |e| Error::Redis(wrap(e))
    }
}
