//! The one shutdown signal of a process: cancelled on SIGTERM or Ctrl-C, created once in `main`
//! and passed down to everything that must stop.

use tokio_util::sync::CancellationToken;

/// A token cancelled when the process gets SIGTERM or Ctrl-C. Call inside a runtime.
pub fn on_signal() -> CancellationToken {
    let shutdown = CancellationToken::new();
    let token = shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutdown requested");
        token.cancel();
    });
    shutdown
}

async fn wait_for_signal() {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
