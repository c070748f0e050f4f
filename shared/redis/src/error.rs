//! The one error type of `projector-redis`: a Redis failure, classed ([`RedisFailure`]), with
//! what was being done and the advice for its class, so that a person on call can act on it.

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{} while {doing}: {detail} ({})", failure.headline(), failure.advice())]
    Redis { doing: String, failure: RedisFailure, detail: String },
}

impl Error {
    /// A job that failed with this error could succeed if tried again.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Redis { failure, .. } => failure.may_heal(),
        }
    }

    /// The class of the failure.
    pub fn failure(&self) -> RedisFailure {
        match self {
            Error::Redis { failure, .. } => *failure,
        }
    }

    /// Wraps a Redis error with what was being done, for messages an operator can act on.
    pub fn redis(doing: impl Into<String>) -> impl FnOnce(redis::RedisError) -> Error {
        let doing = doing.into();
        move |e| Error::Redis { doing, failure: RedisFailure::of(&e), detail: e.to_string() }
    }

    /// A Redis-side failure that no retry can mend (wrong credentials, a script error): a
    /// process meeting one at start exits instead of retrying forever.
    pub fn is_fatal(&self) -> bool {
        matches!(self, Error::Redis { failure, .. } if !failure.may_heal())
    }
}

/// What went wrong with Redis, in the words every binary uses: each class has its own advice,
/// because "check that Redis is up" sends the person on call the wrong way for a wrong password
/// or a full memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedisFailure {
    /// No connection: refused, dropped, reset, DNS, no master known.
    Unreachable,
    /// Connected, but no answer within the budget.
    Timeout,
    /// The password or user was refused, or the user lacks a command (NOAUTH, WRONGPASS, NOPERM).
    Auth,
    /// `maxmemory` reached: Redis refuses writes (OOM).
    OutOfMemory,
    /// The URL points at a replica (READONLY), e.g. mid-failover.
    ReadOnly,
    /// Redis is loading its dataset after a restart (LOADING).
    Loading,
    /// One of Projector's Lua scripts failed.
    Script,
    /// Anything else Redis answered with an error.
    Other,
}

impl RedisFailure {
    /// The class of `e`, from its kind first and its code and text where the kind is generic
    /// (an OOM inside a script arrives as a script error whose text says OOM).
    pub fn of(e: &redis::RedisError) -> RedisFailure {
        use redis::{ErrorKind, ServerErrorKind};
        let text = e.to_string();
        let code = e.code().unwrap_or_default();
        if e.kind() == ErrorKind::AuthenticationFailed
            || matches!(code, "NOAUTH" | "WRONGPASS" | "NOPERM")
            || text.contains("NOAUTH")
            || text.contains("WRONGPASS")
        {
            RedisFailure::Auth
        } else if code == "OOM" || text.contains("OOM command not allowed") || (text.contains("OOM") && text.contains("maxmemory")) {
            RedisFailure::OutOfMemory
        } else if e.kind() == ErrorKind::Server(ServerErrorKind::ReadOnly) || text.contains("READONLY") {
            RedisFailure::ReadOnly
        } else if e.kind() == ErrorKind::Server(ServerErrorKind::BusyLoading) {
            RedisFailure::Loading
        } else if e.is_timeout() {
            RedisFailure::Timeout
        } else if crate::redis_conn::is_transient(e)
            || matches!(
                e.kind(),
                ErrorKind::ClusterConnectionNotFound
                    | ErrorKind::MasterNameNotFoundBySentinel
                    | ErrorKind::NoValidReplicasFoundBySentinel
                    | ErrorKind::Server(ServerErrorKind::MasterDown | ServerErrorKind::ClusterDown | ServerErrorKind::TryAgain)
            )
        {
            RedisFailure::Unreachable
        } else if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript)
            || text.contains("Error running script")
            || text.contains("user_script")
        {
            RedisFailure::Script
        } else {
            RedisFailure::Other
        }
    }

    /// The class's name in logs, JSON and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            RedisFailure::Unreachable => "unreachable",
            RedisFailure::Timeout => "timeout",
            RedisFailure::Auth => "auth",
            RedisFailure::OutOfMemory => "out_of_memory",
            RedisFailure::ReadOnly => "read_only",
            RedisFailure::Loading => "loading",
            RedisFailure::Script => "script_error",
            RedisFailure::Other => "error",
        }
    }

    fn headline(self) -> &'static str {
        match self {
            RedisFailure::Unreachable => "redis unreachable",
            RedisFailure::Timeout => "redis did not answer in time",
            RedisFailure::Auth => "redis refused the credentials",
            RedisFailure::OutOfMemory => "redis is out of memory (maxmemory reached)",
            RedisFailure::ReadOnly => "redis answered as a read-only replica",
            RedisFailure::Loading => "redis is still loading its data",
            RedisFailure::Script => "a Projector Lua script failed in redis",
            RedisFailure::Other => "redis refused a command",
        }
    }

    /// What the person on call should do, by class.
    pub fn advice(self) -> &'static str {
        match self {
            RedisFailure::Unreachable => "check redis.url and that Redis is up",
            RedisFailure::Timeout => "Redis or the network is slow: check `redis-cli --latency` and Redis's CPU",
            RedisFailure::Auth => "check the user and password in redis.url (redis://user:password@host); this does not heal by retrying",
            RedisFailure::OutOfMemory => {
                "writes fail until memory is freed: raise maxmemory, or shorten runs.retention and purge old jobs (projectorctl jobs purge)"
            }
            RedisFailure::ReadOnly => "point redis.url at the master (or use redis+sentinel://); during a failover this passes",
            RedisFailure::Loading => "Redis restarted and is reading its data; this passes",
            RedisFailure::Script => "a bug or a Redis without scripting: report this line",
            RedisFailure::Other => "see Redis's message",
        }
    }

    /// Whether the same call may succeed later without anyone changing anything.
    pub fn may_heal(self) -> bool {
        !matches!(self, RedisFailure::Auth | RedisFailure::Script)
    }
}
