//! Domain types and the pieces every Projector process uses: ids, the job wire format, batch plans,
//! slots, projection math, run outcomes, metric names and the synthetic data source.

pub mod adaptive;
pub mod batch;
pub mod error;
pub mod events;
pub mod heartbeat;
pub mod ids;
pub mod job;
pub mod keys;
pub mod metrics;
pub mod org;
pub mod pause;
pub mod projection;
pub mod rate;
pub mod redis_conn;
pub mod rollout;
pub mod run;
pub mod run_record;
pub mod service;
pub mod slots;
pub mod synthetic;
pub mod trail;

pub use error::{Error, RedisFailure};
pub use ids::{OrgId, ProjectId, RunId};
pub use job::SpikeProjectionJob;
