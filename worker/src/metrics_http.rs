//! The worker's HTTP endpoint: `/metrics` (Prometheus text from the process's recorder) and `/healthz`.

use std::net::SocketAddr;

use axum::Router;
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusBuilder;
use tokio_util::sync::CancellationToken;

use crate::error::Error;

/// Installs the Prometheus recorder and serves it on `addr` until `shutdown`. Fails (so the process
/// exits with a clear message) if the address is taken.
pub async fn serve(addr: SocketAddr, shutdown: CancellationToken) -> Result<(), Error> {
    let handle = PrometheusBuilder::new().install_recorder().map_err(|e| Error::Metrics { addr, detail: e.to_string() })?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| Error::Metrics { addr, detail: format!("{e} (set worker.metrics_addr to a free address, e.g. 127.0.0.1:0)") })?;
    let bound = listener.local_addr().unwrap_or(addr);
    let app = Router::new().route("/metrics", get(move || std::future::ready(handle.render()))).route("/healthz", get(|| async { "ok" }));
    tracing::info!(addr = %bound, "serving /metrics and /healthz");
    tokio::spawn(async move {
        let served = axum::serve(listener, app).with_graceful_shutdown(async move { shutdown.cancelled().await }).await;
        if let Err(e) = served {
            tracing::error!(error = %e, "metrics endpoint stopped");
        }
    });
    Ok(())
}
