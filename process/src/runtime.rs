//! How a binary runs its async `main`: one multi-threaded runtime, and a failure reported once,
//! with its whole error chain, in the chosen log format.

use std::fmt::Display;
use std::future::Future;

/// Runs `main` to completion; `None` means it failed (or no runtime could be built) and was reported.
pub fn block_on_main<T, E: Display>(main: impl Future<Output = Result<T, E>>) -> Option<T> {
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            crate::telemetry::report_fatal(&format!("cannot start the async runtime: {e}"));
            return None;
        }
    };
    match runtime.block_on(main) {
        Ok(value) => Some(value),
        Err(e) => {
            crate::telemetry::report_fatal(&format!("{e:#}"));
            None
        }
    }
}

/// The loaded configuration, or every problem reported once (in the log format chosen) and the
/// exit code for bad configuration, 2, in every Projector binary.
pub fn config_or_exit(
    loaded: Result<projector_config::Config, projector_config::ConfigError>,
) -> Result<projector_config::Config, std::process::ExitCode> {
    loaded.map_err(|e| {
        crate::telemetry::report_fatal(&e);
        std::process::ExitCode::from(2)
    })
}
