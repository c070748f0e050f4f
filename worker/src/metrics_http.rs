//! The worker's HTTP endpoint: `/metrics` (Prometheus text from the process's recorder),
//! `/healthz` (liveness: the process answers) and `/readyz` (readiness: the job loop runs and
//! Redis answers).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use futures::future::BoxFuture;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use projector_shared::metrics as m;
use projector_shared::redis_conn::RedisConn;
use tokio_util::sync::CancellationToken;

use crate::error::Error;

/// What `/readyz` reports: set by the supervisor while the job loop runs, checked against Redis.
#[derive(Clone)]
pub struct Readiness {
    job_loop_running: Arc<AtomicBool>,
    /// Job-loop failures in a row; a loop that keeps failing is not ready even while it runs.
    failures: Arc<AtomicU32>,
    /// Redis, pinged by each check; `None` on the SQLite file, which the job loop itself reads.
    conn: Option<RedisConn>,
}

/// Consecutive job-loop failures after which `/readyz` says not ready until a loop survives.
const FAILING_AFTER: u32 = 3;

impl Readiness {
    pub fn new(conn: RedisConn) -> Self {
        Readiness { job_loop_running: Arc::new(AtomicBool::new(false)), failures: Arc::new(AtomicU32::new(0)), conn: Some(conn) }
    }

    /// Readiness of a worker on the SQLite file: its job loop, which fails when the file does.
    pub fn on_file() -> Self {
        Readiness { job_loop_running: Arc::new(AtomicBool::new(false)), failures: Arc::new(AtomicU32::new(0)), conn: None }
    }

    /// Counts a job-loop failure; returns how many in a row.
    pub fn job_loop_failed(&self) -> u32 {
        self.failures.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// Forgets past failures once the loop now running has lasted `survive` (aborted when it ends).
    pub fn reset_failures_after(&self, survive: Duration) -> tokio::task::JoinHandle<()> {
        let failures = self.failures.clone();
        tokio::spawn(async move {
            tokio::time::sleep(survive).await;
            failures.store(0, Ordering::SeqCst);
        })
    }

    /// The supervisor says whether the job loop is running.
    pub fn set_job_loop_running(&self, running: bool) {
        self.job_loop_running.store(running, Ordering::SeqCst);
    }

    /// `Ok` when the job loop runs and Redis (if it is the backend) answers a PING within a second;
    /// otherwise why not.
    pub async fn check(&self) -> Result<(), String> {
        if !self.job_loop_running.load(Ordering::SeqCst) {
            return Err("job loop not running (starting, restarting after an error, or draining)".to_owned());
        }
        let failures = self.failures.load(Ordering::SeqCst);
        if failures >= FAILING_AFTER {
            return Err(format!("job loop keeps failing ({failures} failures in a row; see the worker's log)"));
        }
        match &self.conn {
            Some(conn) => projector_shared::redis_conn::check(conn, Duration::from_secs(1)).await.map_err(|e| e.to_string()),
            None => Ok(()),
        }
    }
}

/// How often the recorder's histogram samples are folded into their buckets when nobody scrapes.
pub const METRICS_UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// Folds the recorder's raw histogram samples into buckets. `install_recorder` spawns no upkeep of
/// its own, and until a scrape drains them every `record` keeps its sample: a worker nobody
/// scraped grew by ~18 B per job (the 30-minute soak's RSS creep).
pub struct MetricsUpkeep {
    handle: PrometheusHandle,
}

impl crate::services::Periodic for MetricsUpkeep {
    fn name(&self) -> &'static str {
        "metrics_upkeep"
    }

    fn run_once(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move { self.handle.run_upkeep() })
    }
}

/// A readiness check for `/readyz`: `Ok` when ready, otherwise why not (shown to the caller).
pub trait ReadyCheck: Clone + Send + Sync + 'static {
    fn check(&self) -> BoxFuture<'_, Result<(), String>>;
}

impl ReadyCheck for Readiness {
    fn check(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(Readiness::check(self))
    }
}

/// The worker's endpoint: [`serve_endpoints`] with every worker series registered at zero.
pub async fn serve(
    addr: SocketAddr,
    readiness: Readiness,
    shutdown: CancellationToken,
) -> Result<(SocketAddr, impl Future<Output = ()> + Send + 'static, MetricsUpkeep), Error> {
    serve_endpoints(addr, readiness, register_every_series, shutdown).await
}

/// Installs the Prometheus recorder (histograms with buckets that fit slot waits and queries),
/// runs `register` so dashboards and alerts see its series before the first event, and serves
/// `/metrics`, `/healthz` and `/readyz` (by `ready`) on `addr` until `shutdown`. Returns the
/// bound address, the server task and the recorder's upkeep (run it every
/// [`METRICS_UPKEEP_EVERY`]). Fails (so the process exits with a clear message) if the address
/// is taken.
pub async fn serve_endpoints(
    addr: SocketAddr,
    ready: impl ReadyCheck,
    register: fn(),
    shutdown: CancellationToken,
) -> Result<(SocketAddr, impl Future<Output = ()> + Send + 'static, MetricsUpkeep), Error> {
    let mut builder = PrometheusBuilder::new();
    for (name, buckets) in m::HISTOGRAMS {
        builder = builder
            .set_buckets_for_metric(Matcher::Full((*name).to_owned()), buckets)
            .map_err(|e| Error::Metrics { addr, detail: e.to_string() })?;
    }
    let handle = builder.install_recorder().map_err(|e| Error::Metrics { addr, detail: e.to_string() })?;
    register();
    let upkeep = MetricsUpkeep { handle: handle.clone() };
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| Error::Metrics {
        addr,
        detail: format!("{e} (another process on this host? give each its own metrics address, or port 0 for a free one)"),
    })?;
    let bound = listener.local_addr().unwrap_or(addr);
    let app =
        Router::new().route("/metrics", get(move || std::future::ready(handle.render()))).route("/healthz", get(|| async { "ok" })).route(
            "/readyz",
            get(move || {
                let ready = ready.clone();
                async move {
                    match ready.check().await {
                        Ok(()) => (StatusCode::OK, "ready".to_owned()),
                        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {why}")),
                    }
                }
            }),
        );
    tracing::info!(addr = %bound, "serving /metrics, /healthz and /readyz");
    let server = async move {
        let served = axum::serve(listener, app).with_graceful_shutdown(async move { shutdown.cancelled().await }).await;
        if let Err(e) = served {
            tracing::error!(error = %e, "metrics endpoint stopped");
        }
    };
    Ok((bound, server, upkeep))
}

/// Every counter (with each of its bounded label values), gauge and histogram at zero.
fn register_every_series() {
    for name in [
        m::SLOT_ACQUIRED_TOTAL,
        m::SLOT_RELEASED_TOTAL,
        m::SLOT_WAIT_TIMEOUT_TOTAL,
        m::SLOT_LEASE_RECLAIMED_TOTAL,
        m::SLOT_LEASE_LOST_TOTAL,
        m::SLOT_FALLBACK_TOTAL,
        m::TASK_STARTED_TOTAL,
        m::TASK_COMPLETED_TOTAL,
        m::TASK_SKIPPED_NO_SLOT_TOTAL,
        m::QUERY_RATE_LIMITED_TOTAL,
        m::QUERY_THROTTLED_TOTAL,
        m::PROJECTION_STALE_REFUSED_TOTAL,
        m::WORKER_RESTARTS_TOTAL,
        m::RATE_ADMITTED_TOTAL,
        m::RATE_LIMITER_ERRORS_TOTAL,
        m::RATE_COOLDOWNS_TOTAL,
    ] {
        metrics::counter!(name).increment(0);
    }
    for reason in ["window", "cooldown"] {
        metrics::counter!(m::RATE_BLOCKED_TOTAL, "reason" => reason).increment(0);
        for would in ["delay", "refuse"] {
            metrics::counter!(m::RATE_SHADOW_TOTAL, "would" => would, "reason" => reason).increment(0);
        }
    }
    for reason in projector_job::error::REASONS {
        metrics::counter!(m::TASK_ERROR_TOTAL, "reason" => *reason).increment(0);
    }
    for kind in projector_job::error::QUERY_ERROR_KINDS {
        metrics::counter!(m::QUERY_ERRORS_TOTAL, "kind" => *kind).increment(0);
    }
    for name in [m::CONCURRENT_QUERIES, m::UTILIZATION_PERCENT, m::QUEUE_READY_JOBS, m::QUEUE_SCHEDULED_JOBS] {
        metrics::gauge!(name).increment(0.0);
    }
    for source in projector_shared::slots::LIMIT_SOURCES {
        metrics::gauge!(m::SLOT_LIMIT, "source" => *source).increment(0.0);
    }
    metrics::gauge!(m::ADAPTIVE_MULTIPLIER).set(1.0);
    for (direction, signal) in [("down", "429"), ("down", "throttle"), ("hold", "throttle"), ("up", "demand"), ("hold", "none")] {
        metrics::counter!(m::ADAPTIVE_ADJUSTMENTS_TOTAL, "direction" => direction, "signal" => signal).increment(0);
    }
    // A histogram shows its buckets only once it has a sample; describing it is not enough, so
    // the series appear at the first slot wait and the first query.
    for (name, _) in m::HISTOGRAMS {
        metrics::describe_histogram!(*name, metrics::Unit::Seconds, "see shared/core/src/metrics.rs");
    }
}
