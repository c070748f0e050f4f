//! One spike-projection job, walked forward: admit → route → slot → still open → rate → query
//! (paged) → release → store → record. The handler, the pipeline, the query clients and the
//! projection sinks, shared by `projector-worker` and the embedded run of `projector-scheduler`.
//! It owns no process: no metrics endpoint, no signal handling, no maintenance service.

pub mod build;
pub mod error;
pub mod handler;
pub mod history;
pub mod pipeline;
pub mod postgres_sink;
pub mod probe;
pub mod query;
pub mod redis_sink;
pub mod sink;
pub mod snuba;
pub mod sqlite_sink;

pub use error::Error;
pub use handler::JobHandler;
pub use pipeline::{Pipeline, PipelineSettings};
pub use probe::QueryProbe;
