//! The error of any crate under `shared/`, saying which one failed and keeping its error whole,
//! for the binaries that use several of them through `projector-shared`.

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Redis(#[from] projector_redis::Error),

    #[error(transparent)]
    Limits(#[from] projector_limits::Error),

    #[error(transparent)]
    Runs(#[from] projector_runs::Error),

    #[error(transparent)]
    Sqlite(#[from] projector_sqlite::Error),

    #[error(transparent)]
    Domain(#[from] projector_core::Error),
}

impl Error {
    /// Wraps a Redis error with what was being done, for messages an operator can act on.
    pub fn redis(doing: impl Into<String>) -> impl FnOnce(redis::RedisError) -> Error {
        let wrap = projector_redis::Error::redis(doing);
        move |e| Error::Redis(wrap(e))
    }

    /// A job that failed with this error could succeed if tried again.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Redis(e) => e.is_retryable(),
            Error::Limits(e) => e.is_retryable(),
            Error::Runs(e) => e.is_retryable(),
            Error::Sqlite(e) => e.is_retryable(),
            Error::Domain(_) => false,
        }
    }

    /// The Redis failure underneath, if that is what this is.
    pub fn redis_failure(&self) -> Option<&projector_redis::Error> {
        match self {
            Error::Redis(e) | Error::Limits(projector_limits::Error::Redis(e)) | Error::Runs(projector_runs::Error::Redis(e)) => Some(e),
            _ => None,
        }
    }

    /// A Redis-side failure that no retry can mend (wrong credentials, a script error): a
    /// process meeting one at start exits instead of retrying forever.
    pub fn is_fatal(&self) -> bool {
        self.redis_failure().is_some_and(projector_redis::Error::is_fatal)
    }
}

/// Lets `$target` take the error of any crate under `shared/` with `?`, into `$variant` (which
/// holds a [`Error`]): one line in each binary's error module instead of an `impl` per crate.
#[macro_export]
macro_rules! from_shared_errors {
    ($target:ty, $variant:path) => {
        impl From<$crate::RedisError> for $target {
            fn from(e: $crate::RedisError) -> Self {
                $variant(e.into())
            }
        }
        impl From<$crate::LimitsError> for $target {
            fn from(e: $crate::LimitsError) -> Self {
                $variant(e.into())
            }
        }
        impl From<$crate::RunsError> for $target {
            fn from(e: $crate::RunsError) -> Self {
                $variant(e.into())
            }
        }
        impl From<$crate::SqliteError> for $target {
            fn from(e: $crate::SqliteError) -> Self {
                $variant(e.into())
            }
        }
    };
}
