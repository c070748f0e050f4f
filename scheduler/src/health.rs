//! What `projector-scheduler serve` tells Prometheus and load balancers: `/readyz` (Redis
//! answers and the tick loop runs) and the run gauges, read from the run record in Redis so
//! that every replica reports the same fleet-wide values (aggregate them with `max()`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::future::BoxFuture;
use projector_shared::metrics as m;
use projector_shared::redis_conn::RedisConn;
use projector_shared::run::Outcome;
use projector_shared::run_record::{RunOverview, RunRecords, RunState};
use projector_worker::metrics_http::ReadyCheck;

/// `/readyz` of the scheduler: the tick loop runs and Redis answers a PING within a second.
#[derive(Clone)]
pub struct SchedulerReadiness {
    tick_loop_running: Arc<AtomicBool>,
    /// Redis, pinged by each check; `None` on the SQLite file.
    conn: Option<RedisConn>,
}

impl SchedulerReadiness {
    pub fn new(conn: RedisConn) -> Self {
        SchedulerReadiness { tick_loop_running: Arc::new(AtomicBool::new(false)), conn: Some(conn) }
    }

    /// Readiness of a scheduler on one machine's SQLite file: its tick loop.
    pub fn on_file() -> Self {
        SchedulerReadiness { tick_loop_running: Arc::new(AtomicBool::new(false)), conn: None }
    }

    /// The tick loop says whether it runs.
    pub fn set_tick_loop_running(&self, running: bool) {
        self.tick_loop_running.store(running, Ordering::SeqCst);
    }
}

impl ReadyCheck for SchedulerReadiness {
    fn check(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            if !self.tick_loop_running.load(Ordering::SeqCst) {
                return Err("tick loop not running (starting or stopping)".to_owned());
            }
            match &self.conn {
                Some(conn) => projector_shared::redis_conn::check(conn, Duration::from_secs(1)).await.map_err(|e| e.to_string()),
                None => Ok(()),
            }
        })
    }
}

/// Every outcome a tick can have, as `projector_scheduler_ticks_total`'s `outcome` label.
pub const TICK_OUTCOMES: &[&str] = &["fanned_out", "skipped_overlap", "replaced", "skipped_paused", "other_replica", "failed"];

/// The scheduler's series at zero, so that alerts and dashboards see them before the first tick.
/// The last-run timestamps stay absent until a run has finished: an alert tells "never" from
/// "long ago" by that.
pub fn register_series() {
    metrics::gauge!(m::SCHEDULER_STARTED_SECONDS).set(chrono::Utc::now().timestamp_millis() as f64 / 1000.0);
    for outcome in TICK_OUTCOMES {
        metrics::counter!(m::SCHEDULER_TICKS_TOTAL, "outcome" => *outcome).increment(0);
    }
    metrics::gauge!(m::RUNS_OPEN).set(0.0);
    for outcome in Outcome::ALL {
        metrics::gauge!(m::RUN_LAST_ORGS, "outcome" => outcome.as_str()).set(0.0);
    }
}

/// Runs looked at for the gauges: far more than are ever open at once.
const RECENT_RUNS: usize = 50;

/// The seconds between the schedule's next two ticks (an hour for a schedule with fewer).
pub fn period(schedule: &cron::Schedule) -> Duration {
    let mut ticks = schedule.upcoming(chrono::Utc);
    match (ticks.next(), ticks.next()) {
        (Some(a), Some(b)) => (b - a).to_std().unwrap_or(Duration::from_secs(3600)),
        _ => Duration::from_secs(3600),
    }
}

/// Refreshes the fleet gauges from Redis: the last fan-out, the last finished run (when, how
/// long, its outcomes), how many runs are open and how many workers are alive. A read that fails
/// leaves the gauges as they were; the timestamps then age, which is what the alerts watch.
pub struct RunGauges {
    records: RunRecords,
    conn: RedisConn,
}

impl RunGauges {
    pub fn new(records: RunRecords, conn: RedisConn) -> Self {
        RunGauges { records, conn }
    }

    /// Sets the gauges from `recent` runs, newest first.
    pub fn set_from(recent: &[RunOverview]) {
        let open = recent.iter().filter(|r| matches!(r.state(), RunState::Running | RunState::FanningOut)).count();
        metrics::gauge!(m::RUNS_OPEN).set(open as f64);
        if let Some(fanned_out) = recent.iter().filter_map(|r| r.fanned_out).max() {
            metrics::gauge!(m::RUN_LAST_FANOUT_SECONDS).set(fanned_out.timestamp_millis() as f64 / 1000.0);
        }
        let Some((run, finished)) =
            recent.iter().filter(|r| r.state() == RunState::Done).filter_map(|r| r.finished.map(|f| (r, f))).max_by_key(|(_, f)| *f)
        else {
            return;
        };
        metrics::gauge!(m::RUN_LAST_FINISHED_SECONDS).set(finished.timestamp_millis() as f64 / 1000.0);
        if let Some(ms) = run.duration_ms(finished) {
            metrics::gauge!(m::RUN_LAST_DURATION_SECONDS).set(ms as f64 / 1000.0);
        }
        for (outcome, n) in &run.counts {
            metrics::gauge!(m::RUN_LAST_ORGS, "outcome" => outcome.as_str()).set(*n as f64);
        }
    }
}

impl projector_worker::services::Periodic for RunGauges {
    fn name(&self) -> &'static str {
        "run_gauges"
    }

    fn run_once(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            match self.records.recent(RECENT_RUNS).await {
                Ok(recent) => RunGauges::set_from(&recent),
                Err(e) => tracing::warn!(error = %e, "cannot read the recent runs for the run gauges; they keep their last values"),
            }
            match projector_shared::heartbeat::alive(&self.conn).await {
                Ok(n) => metrics::gauge!(m::WORKERS_ALIVE).set(n as f64),
                Err(e) => tracing::warn!(error = %e, "cannot count live workers; projector_workers_alive keeps its last value"),
            }
        })
    }
}
