//! `projector-core`: what a spike-projection run is, with no I/O. It owns the ids, the job's
//! wire format, batch plans, the projection math, orgs (and reading an org file), trails, run
//! outcomes and totals, the query service's numbers as a value, and every metric name.
//!
//! It must never know Redis, the network, the queue or a runtime: those live in
//! `projector-shared` (Redis-backed state) and the crates above it. `cargo tree -p
//! projector-core` lists no redis, tokio or rustls.

pub mod batch;
pub mod error;
pub mod ids;
pub mod job;
pub mod metrics;
pub mod org;
pub mod projection;
pub mod run;
pub mod service;
pub mod synthetic;
pub mod trail;

pub use error::Error;
pub use ids::{OrgId, ProjectId, RunId};
pub use job::SpikeProjectionJob;
