//! Process plumbing shared by every Projector binary (kept out of the domain crate): logging
//! set-up and fatal reports (`telemetry`), the async main and config errors (`runtime`), and the
//! one shutdown signal (`shutdown`).

pub mod runtime;
pub mod shutdown;
pub mod telemetry;
