//! Process plumbing shared by every Projector binary (kept out of the domain crate): logging
//! set-up and fatal reports (`telemetry`), the async main and config errors (`runtime`), and the
//! one shutdown signal (`shutdown`).

pub mod runtime;
pub mod shutdown;
pub mod telemetry;

/// What `--version` prints after the binary's name: the release and the commit it was built
/// from, so a report from a host names the exact code it ran.
pub const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (commit ", env!("PROJECTOR_COMMIT"), ")");
