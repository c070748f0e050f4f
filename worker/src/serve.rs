//! The worker process put together: the job handler (slot limiter, query source, sink, run
//! records, rollout flag), its services (due-job promotion, gauges, heartbeat, vacuum) and the
//! job loop's supervisor, run until shutdown; every service is awaited before `run` returns.

use std::sync::Arc;
use std::time::Duration;

use projector_config::{Config, OnRedisError};
use projector_shared::events::{CancelWatch, JobsReady};
use projector_shared::run_record::RunRecords;
use projector_shared::slots::{FailOpenLimiter, RedisSlotLimiter, RedisSlotSettings, SlotLimiter};
use tokio_util::sync::CancellationToken;

use crate::error::Error;
use crate::metrics_http::Readiness;
use crate::services::Services;
use crate::services::{
    AdaptiveReporter, DeadlineSweep, DuePromoter, Heartbeat, PauseSource, PauseWatch, QueueGauges, RatePolicyRefresh, Vacuum, vacuum_every,
};
use crate::supervisor::Supervisor;
use projector_job::handler::{JobHandler, Rescheduler, RolloutFlag, Routing};
use projector_job::pipeline::Pipeline;

/// How long, after the drain, slot releases still retrying (Redis unreachable) may delay the exit;
/// a lease they could not release expires on its own.
const SLOT_TASKS_GRACE: Duration = Duration::from_secs(5);
/// How often a worker reads the fleet-wide pause.
const PAUSE_CHECK: Duration = Duration::from_millis(250);
/// How often a worker looks for runs past their deadline: a run ends at most this late.
const DEADLINE_CHECK: Duration = Duration::from_secs(1);

/// Runs the worker until `shutdown`, then drains in-flight jobs for at most `worker.shutdown_grace`.
pub async fn run(config: Config, readiness: Readiness, services: &Services, shutdown: CancellationToken) -> Result<(), Error> {
    let name = format!("projector-worker-{}-{}", std::process::id(), &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let (_, conn) = projector_shared::redis_conn::connection_manager(&config.redis, Duration::from_secs(2))
        .map_err(projector_shared::Error::redis("opening the job queue connection"))?;
    let (slots, limiter) = slot_limiter(&config)?;
    let multiplier = projector_shared::adaptive::Multiplier::default();
    let rate = projector_job::build::rate_gate(&config, projector_job::build::RateStore::Fleet(&conn, multiplier.clone()));
    let sink = projector_job::build::sink(&config, None).await?;
    let pipeline = Pipeline::from_config(&config, name.clone(), limiter, sink, rate.clone())?;
    let cancels = CancelWatch::default();
    let handler = Arc::new(
        JobHandler::new(
            pipeline,
            Arc::new(RunRecords::for_config(conn.clone(), &config.runs)),
            Routing::Flag(Box::new(RolloutFlag::new(conn.clone(), config.worker.rollout_refresh))),
            Some(Rescheduler::from_config(&config, &conn)),
        )
        .rescheduling_skips(projector_job::handler::reschedules_skips(&config))
        .with_cancel_watch(cancels.clone()),
    );
    let endpoint = projector_shared::redis_conn::Endpoint::from(&config.redis);
    let jobs_ready = JobsReady::default();
    {
        // Until it is subscribed, every slot grant asks the run record and the job loop only
        // polls: correct, slower.
        let (endpoint, conn, shutdown, ready) = (endpoint.clone(), conn.clone(), shutdown.clone(), jobs_ready.clone());
        services.spawn("fleet_events", async move { cancels.follow(endpoint, conn, ready, shutdown).await });
    }
    let in_force = announce_limit(&slots, config.slots.limit).await;
    tracing::info!(
        worker = %name, redis = %endpoint.redacted(), query_source = ?config.query.source,
        query_url = config.query.url.as_deref().unwrap_or("-"), concurrency = config.worker.concurrency,
        slots_limit = %in_force, "worker started"
    );
    let (current_loop, loop_name) = tokio::sync::watch::channel(String::new());
    let (pause_tx, paused) = tokio::sync::watch::channel(false);
    let fleet = Fleet { conn: &conn, slots: &slots, name: &name, running: handler.running.clone(), loop_name, pause_tx };
    spawn_services(&config, services, fleet, rate, multiplier);
    let supervisor = Supervisor {
        name: name.clone(),
        conn: conn.clone(),
        handler,
        readiness: readiness.clone(),
        concurrency: config.worker.concurrency,
        shutdown_grace: config.worker.shutdown_grace,
        current_loop,
        paused,
        jobs_ready,
        poll_interval: config.worker.poll_interval,
    };
    let result = supervisor.run(&shutdown).await;
    readiness.set_job_loop_running(false);
    if !slots.wait_for_background(SLOT_TASKS_GRACE).await {
        tracing::warn!(
            worker = %name,
            "slot tasks still running at exit: a slot kept for a query not answered stays leased in Redis until that query must have ended (query.max_duration); a release still retrying (Redis unreachable?) expires on its own"
        );
    }
    if let Err(e) = projector_shared::heartbeat::leave(&conn, &name).await {
        tracing::debug!(worker = %name, error = %e, "cannot remove the heartbeat; it ages out on its own");
    }
    result
}

/// What the worker's services need of the process.
struct Fleet<'a> {
    conn: &'a projector_shared::redis_conn::RedisConn,
    slots: &'a RedisSlotLimiter,
    name: &'a str,
    running: projector_job::handler::RunningJobs,
    loop_name: tokio::sync::watch::Receiver<String>,
    pause_tx: tokio::sync::watch::Sender<bool>,
}

/// Spawns the worker's periodic services. Each is safe to run on every worker at once
/// (ARCHITECTURE.md, "Why every worker runs every service").
fn spawn_services(
    config: &Config,
    services: &Services,
    fleet: Fleet<'_>,
    rate: Option<projector_shared::rate::RateGate>,
    multiplier: projector_shared::adaptive::Multiplier,
) {
    let every = config.worker.housekeeping_interval;
    services.spawn_every(Arc::new(DuePromoter { conn: fleet.conn.clone() }), every);
    services.spawn_every(
        Arc::new(QueueGauges {
            conn: fleet.conn.clone(),
            slots: fleet.slots.clone(),
            configured_limit: config.slots.limit,
            sample_every: config.worker.slot_sample_interval,
        }),
        every,
    );
    let registration = projector_shared::heartbeat::Registration {
        host: host_name(),
        pid: std::process::id(),
        version: projector_process::VERSION.to_owned(),
        started: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        slots: projector_config::slot_summary(config),
        config_digest: projector_config::digest(config),
        ..Default::default()
    };
    services.spawn_every(
        Arc::new(Heartbeat {
            conn: fleet.conn.clone(),
            name: fleet.name.to_owned(),
            registration,
            running: fleet.running,
            current_loop: fleet.loop_name,
            rate: rate.clone(),
        }),
        every,
    );
    services.spawn_every(Arc::new(Vacuum { conn: fleet.conn.clone() }), vacuum_every(every));
    services.spawn_every(
        Arc::new(DeadlineSweep {
            records: RunRecords::for_config(fleet.conn.clone(), &config.runs),
            completed_detail: config.runs.completed_detail,
        }),
        DEADLINE_CHECK,
    );
    // Operators expect a pause to hold within a second.
    services.spawn_every(Arc::new(PauseWatch { source: PauseSource::Redis(fleet.conn.clone()), paused: fleet.pause_tx }), PAUSE_CHECK);
    if let Some(gate) = rate {
        let refresh = RatePolicyRefresh {
            conn: fleet.conn.clone(),
            config: config.clone(),
            gate,
            multiplier: multiplier.clone(),
            applied: std::sync::Mutex::new(Vec::new()),
        };
        services.spawn_every(Arc::new(refresh), config.worker.rollout_refresh);
    }
    if config.adaptive.enabled {
        let settings = config.adaptive.clone();
        services.spawn_every(Arc::new(AdaptiveReporter { slots: fleet.slots.clone(), settings, multiplier }), every);
    }
}

/// The Redis slot limiter (following the service's numbers unless told not to), and the limiter
/// jobs use: the same, or wrapped to fail open (`slots.on_redis_error`).
fn slot_limiter(config: &Config) -> Result<(RedisSlotLimiter, Arc<dyn SlotLimiter>), Error> {
    let mut slot_settings =
        RedisSlotSettings::new(config.slots.limit, config.slots.lease_ttl).reporting_service_every(config.slots.service_report_every);
    if let Some(steering) = projector_job::build::service_steering(config) {
        slot_settings = slot_settings.following_service(steering);
    }
    let slots = RedisSlotLimiter::new(&config.redis, slot_settings)?;
    let redis_limiter: Arc<dyn SlotLimiter> = Arc::new(slots.clone());
    let limiter: Arc<dyn SlotLimiter> = match config.slots.on_redis_error {
        OnRedisError::FailClosed => redis_limiter,
        OnRedisError::FailOpen => Arc::new(FailOpenLimiter::new(redis_limiter, config.slots.fallback_limit)),
    };
    Ok((slots, limiter))
}

/// The limit in force, as text for the start-up log: Redis's value wins once set (operators change
/// it at runtime with projectorctl); a configured value that differs is named in a warning.
async fn announce_limit(slots: &RedisSlotLimiter, configured: u32) -> String {
    match slots.occupancy().await {
        Ok((in_use, Some(stored))) => {
            projector_shared::slots::record_occupancy(in_use, stored, if stored == configured { "config" } else { "stored" });
            if stored != configured {
                tracing::warn!(
                    in_force = stored,
                    configured,
                    "slots.limit differs from the limit stored in Redis; the stored limit is in force (set by projectorctl slots set-limit). Hand it back to config with `projectorctl slots reset-limit`"
                );
            }
            format!("{stored} (in Redis)")
        }
        Ok((_, None)) => format!("{configured} (slots.limit; written to Redis at the first slot request)"),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the slot limit from Redis yet");
            format!("{configured} (slots.limit; Redis not reachable yet)")
        }
    }
}

/// This machine's name, for the worker's registration.
fn host_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok().map(|h| h.trim().to_owned()))
        .unwrap_or_else(|| "unknown".to_owned())
}
