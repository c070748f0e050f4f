//! The worker process around the job path (`projector-job`): the job loop's supervisor, the
//! maintenance services (one file each under `services/`), the metrics endpoint and readiness,
//! and shutdown. What one job does is `projector-job`'s.

pub mod error;
pub mod metrics_http;
pub mod serve;
pub mod services;
pub mod supervisor;

pub use error::Error;
