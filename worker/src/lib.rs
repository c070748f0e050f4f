//! The worker process around the job path (`projector-job`): the job loop's supervisor, the
//! maintenance services (one file each under `services/`), the metrics endpoint and readiness,
//! and shutdown; `on_file` is the same worker on one machine's SQLite file. What one job does is `projector-job`'s.

pub mod error;
pub mod metrics_http;
pub mod on_file;
pub mod serve;
pub mod services;
pub mod supervisor;

pub use error::Error;
