//! `projector-shared`: the state every Projector process shares through Redis — the connection
//! and key layout, slots, rates and the adaptive multiplier, run records, heartbeats, the pause,
//! the rollout flag and fleet events — over the domain of `projector-core`, re-exported here so
//! that `projector_shared::job` and the rest keep their paths.
//!
//! It must never know the queue (apalis-redis is `projector-queue`'s), the query service or HTTP.

pub mod adaptive;
pub mod backoff;
pub mod error;
pub mod events;
pub mod heartbeat;
pub mod keys;
pub mod ledger;
pub mod lua;
pub mod pause;
pub mod rate;
pub mod redis_conn;
pub mod rollout;
pub mod run_record;
pub mod slots;

pub use projector_core::{batch, ids, job, metrics, org, projection, service, synthetic, trail};

/// A run's outcomes and totals (`projector-core`) and where they are kept (the ledger).
pub mod run {
    pub use crate::ledger::{MemoryRunLedger, RunLedger};
    pub use projector_core::run::*;
}

pub use error::{Error, RedisFailure};
pub use ids::{OrgId, ProjectId, RunId};
pub use job::SpikeProjectionJob;
