//! Runs spike-projection jobs: take a slot, query hourly counts, compute projections, store them,
//! give the slot back, and say how the job ended. Hosted by `projector-worker` and by the embedded run.

pub mod build;
pub mod error;
pub mod handler;
pub mod history;
pub mod metrics_http;
pub mod pipeline;
pub mod postgres_sink;
pub mod probe;
pub mod query;
pub mod redis_sink;
pub mod serve;
pub mod services;
pub mod sink;
pub mod snuba;
pub mod supervisor;

pub use error::Error;
pub use handler::JobHandler;
pub use pipeline::{Pipeline, PipelineSettings};
pub use probe::QueryProbe;
