//! The one error type of `projector-runs`: a record that cannot be read as the domain says
//! (`projector_core::Error`), a Redis failure (classed by `projector-redis`, its source kept), or a SQLite one (classed by
//! `projector-sqlite`).

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Domain(#[from] projector_core::Error),

    #[error(transparent)]
    Redis(#[from] projector_redis::Error),

    #[error(transparent)]
    Sqlite(#[from] projector_sqlite::Error),

    #[error("{what} in Redis cannot be read ({detail}): written by another version, or edited by hand")]
    Corrupt { what: String, detail: String },

    #[error("{doing}: Redis took the write but does not hold it (evicted or flushed at once); check maxmemory-policy")]
    NotKept { doing: String },
}

impl Error {
    /// A call that failed with this error could succeed if tried again.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Redis(e) => e.is_retryable(),
            Error::Sqlite(e) => e.is_retryable(),
            Error::Domain(_) | Error::Corrupt { .. } | Error::NotKept { .. } => false,
        }
    }

    /// Wraps a Redis error with what was being done (see `projector_redis::Error::redis`).
    pub fn redis(doing: impl Into<String>) -> impl FnOnce(redis::RedisError) -> Error {
        let wrap = projector_redis::Error::redis(doing);
        move |e| Error::Redis(wrap(e))
    }
}
