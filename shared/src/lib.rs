//! `projector-shared`: one door to the crates under `shared/`, for the binaries — the domain
//! (`projector-core`), the Redis plumbing (`projector-redis`), what bounds the queries
//! (`projector-limits`) and the fleet's runs and members (`projector-runs`) — so that
//! `projector_shared::job`, `::slots`, `::run_record` and the rest keep their paths. It adds one
//! error type that says which of them failed; it owns nothing else.
//!
//! It must never know the queue (apalis-redis is `projector-queue`'s), the query service or HTTP.

mod error;

pub use projector_core::{batch, ids, job, metrics, org, projection, service, synthetic, trail};
pub use projector_limits::{adaptive, rate, slots};
pub use projector_redis::{backoff, keys, lua, redis_conn};
pub use projector_runs::sqlite as run_sqlite;
pub use projector_runs::{events, heartbeat, ledger, pause, rollout, run_record};

/// A run's outcomes and totals (`projector-core`) and where they are kept (the ledger).
pub mod run {
    pub use projector_core::run::*;
    pub use projector_runs::ledger::{MemoryRunLedger, RunLedger};
}

pub use error::Error;
pub use ids::{OrgId, ProjectId, RunId};
pub use job::SpikeProjectionJob;
pub use projector_limits::Error as LimitsError;
pub use projector_redis::Error as RedisError;
pub use projector_redis::RedisFailure;
pub use projector_runs::Error as RunsError;
pub use projector_sqlite::Error as SqliteError;
