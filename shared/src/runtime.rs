//! How a binary runs its async `main`: one multi-threaded runtime, and a failure reported with its
//! whole error chain on stderr and in the log.

use std::fmt::Display;
use std::future::Future;

/// Runs `main` to completion; `None` means it failed (or no runtime could be built) and was reported.
pub fn block_on_main<T, E: Display>(main: impl Future<Output = Result<T, E>>) -> Option<T> {
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return None;
        }
    };
    match runtime.block_on(main) {
        Ok(value) => Some(value),
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("error: {e:#}");
            None
        }
    }
}
