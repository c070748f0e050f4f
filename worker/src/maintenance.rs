//! The worker's periodic duties, one service each (see `services`): promoting due jobs, the queue
//! and slot gauges, the heartbeat, and the vacuum of finished jobs. Each round's failure is logged
//! and retried next round. See docs/apalis-redis.md for the apalis-redis behaviour they work around.

use std::time::Duration;

use futures::future::BoxFuture;
use projector_queue as queue;
use projector_shared::metrics as m;
use projector_shared::redis_conn::RedisConn;
use projector_shared::slots::{RedisSlotLimiter, SlotLimiter};

use crate::services::Periodic;

/// Finished jobs are vacuumed every this many housekeeping intervals (apalis keeps them forever):
/// once a minute at the default interval of 1 s.
pub const VACUUM_EVERY_INTERVALS: u32 = 60;

/// Moves due jobs to the ready list in bounded steps (apalis's own fetch fails past ~8,000).
pub struct DuePromoter {
    pub conn: RedisConn,
}

impl Periodic for DuePromoter {
    fn name(&self) -> &'static str {
        "due_promoter"
    }

    fn run_once(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            if let Err(e) = queue::promote_due(&self.conn).await {
                tracing::debug!(error = %e, "cannot move due jobs to the ready list");
            }
        })
    }
}

/// Fleet-wide gauges read from Redis: queue depth (apalis's own counts read the wrong keys), and
/// slots in use against the limit in force, from the leases themselves.
pub struct QueueGauges {
    pub conn: RedisConn,
    pub slots: RedisSlotLimiter,
    /// `slots.limit`, to tell a limit an operator stored from the configured one.
    pub configured_limit: u32,
}

impl Periodic for QueueGauges {
    fn name(&self) -> &'static str {
        "queue_gauges"
    }

    fn run_once(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            match queue::depth(&self.conn).await {
                Ok(depth) => {
                    metrics::gauge!(m::QUEUE_READY_JOBS).set(depth.ready as f64);
                    metrics::gauge!(m::QUEUE_SCHEDULED_JOBS).set(depth.scheduled as f64);
                }
                Err(e) => tracing::debug!(error = %e, "cannot read the queue depth"),
            }
            match self.slots.occupancy_now().await {
                Ok(o) => {
                    projector_shared::slots::record_occupancy(
                        o.in_use,
                        o.in_force.unwrap_or(self.slots.limit()),
                        o.source(self.configured_limit),
                    );
                    metrics::gauge!(m::ADAPTIVE_MULTIPLIER).set(o.multiplier);
                }
                Err(e) => tracing::debug!(error = %e, "cannot read slot occupancy"),
            }
        })
    }
}

/// The worker's heartbeat (`projector:workers`), and the expiry of the running job loop's apalis
/// metadata, so a worker killed with SIGKILL leaves nothing behind for good.
pub struct Heartbeat {
    pub conn: RedisConn,
    pub name: String,
    /// What this worker publishes about itself; jobs, slots and the last error are refreshed
    /// at every beat.
    pub registration: projector_shared::heartbeat::Registration,
    pub running: crate::handler::RunningJobs,
    /// The apalis name of the job loop running now.
    pub current_loop: tokio::sync::watch::Receiver<String>,
    /// The rate gate, whose policy in force is published at every beat.
    pub rate: Option<projector_shared::rate::RateGate>,
}

impl Periodic for Heartbeat {
    fn name(&self) -> &'static str {
        "heartbeat"
    }

    fn run_once(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let registration = projector_shared::heartbeat::Registration {
                jobs_in_flight: self.running.now() as u64,
                slots_held: projector_shared::slots::held_by_process(),
                last_error: crate::probe::last_error(),
                service: projector_shared::service::latest().map(|(q, ago)| (q, u64::try_from(ago.as_millis()).unwrap_or(u64::MAX))),
                rate: self.rate.as_ref().map_or_else(|| "none".to_owned(), projector_shared::rate::RateGate::summary),
                ..self.registration.clone()
            };
            if let Err(e) = projector_shared::heartbeat::beat(&self.conn, &self.name, &registration).await {
                tracing::debug!(error = %e, "cannot write the worker heartbeat");
            }
            let current = self.current_loop.borrow().clone();
            if let Err(e) = queue::expire_worker(&self.conn, &current, projector_shared::heartbeat::ALIVE_WITHIN * 4).await {
                tracing::debug!(error = %e, "cannot refresh the job loop's metadata expiry");
            }
        })
    }
}

/// Reports this worker's query answers to the fleet's adaptive window every round and takes
/// back the multiplier in force (`[adaptive]`); the report that closes a window logs the change
/// with its inputs and counts it.
pub struct AdaptiveReporter {
    pub slots: RedisSlotLimiter,
    pub settings: projector_shared::adaptive::AdaptiveSettings,
    /// Where the rate limiter reads the multiplier from.
    pub multiplier: projector_shared::adaptive::Multiplier,
}

impl Periodic for AdaptiveReporter {
    fn name(&self) -> &'static str {
        "adaptive_reporter"
    }

    fn run_once(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let answers = projector_shared::adaptive::SIGNALS.drain();
            match self.slots.report_answers(answers, &self.settings).await {
                Ok(report) => {
                    self.multiplier.set(report.multiplier);
                    metrics::gauge!(m::ADAPTIVE_MULTIPLIER).set(report.multiplier);
                    if let (true, Some(direction)) = (report.closed || report.cut_early, report.direction) {
                        let (ok, r429, throttled) = report.window;
                        metrics::counter!(m::ADAPTIVE_ADJUSTMENTS_TOTAL, "direction" => direction, "signal" => signal_label(&report.signal))
                            .increment(1);
                        let ratio = if ok + r429 == 0 { 0.0 } else { r429 as f64 / (ok + r429) as f64 };
                        tracing::info!(
                            stage = "adaptive", direction, signal = %report.signal, multiplier = report.multiplier,
                            limit_in_force = report.limit_in_force, window_ok = ok, window_429 = r429, window_throttled = throttled,
                            ratio_429 = ratio, high_429_ratio = self.settings.high_429_ratio,
                            "{}", if report.cut_early { "adaptive limit cut mid-window: the 429 ratio crossed the bound" } else { "adaptive window closed" }
                        );
                    }
                }
                Err(e) => {
                    // The answers of this round are lost to the adaptive window, not to the run.
                    tracing::debug!(error = %e, "cannot report query answers to the adaptive window");
                }
            }
        })
    }
}

/// Applies the rate policy an operator set at runtime (`projectorctl rate set`, stored in Redis)
/// over this worker's configuration, and goes back to the configuration when it is cleared.
pub struct RatePolicyRefresh {
    pub conn: RedisConn,
    pub config: projector_config::Config,
    pub gate: projector_shared::rate::RateGate,
    pub multiplier: projector_shared::adaptive::Multiplier,
    /// The runtime changes in force now (empty: the configuration's policy).
    pub applied: std::sync::Mutex<Vec<(String, String)>>,
}

impl Periodic for RatePolicyRefresh {
    fn name(&self) -> &'static str {
        "rate_policy_refresh"
    }

    fn run_once(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let referrer = &self.config.query.referrer;
            let changes = match projector_shared::rate::store::runtime_changes(&self.conn, referrer).await {
                Ok(c) => c,
                Err(e) => {
                    tracing::debug!(error = %e, "cannot read the runtime rate policy; the one in force stays");
                    return;
                }
            };
            if *self.applied.lock().unwrap_or_else(std::sync::PoisonError::into_inner) == changes {
                return;
            }
            match self.config.rate_policy_with(referrer, &changes) {
                Ok(rate) => {
                    let limiter = crate::build::rate_limiter(&self.config, &rate, Some((&self.conn, self.multiplier.clone())));
                    self.gate.replace(limiter, rate.enforce, rate.cooldown_after_429);
                    let (rates, mode, enforce) = self.gate.describe();
                    tracing::info!(
                        stage = "rate-limiter", event_type = "policy", referrer = %referrer, rates = %rates, mode, enforce,
                        max_delay_ms = rate.max_delay.as_millis() as u64, runtime = !changes.is_empty(),
                        "rate policy now in force"
                    );
                    *self.applied.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = changes;
                }
                Err(problems) => {
                    tracing::warn!(problems = %problems.join("; "), "the runtime rate policy in Redis does not load; the one in force stays");
                }
            }
        })
    }
}

/// The bounded `signal` label: what moved the multiplier, or `none`.
fn signal_label(signal: &str) -> &'static str {
    match signal {
        "429" => "429",
        "throttle" => "throttle",
        "demand" => "demand",
        _ => "none",
    }
}

/// Deletes finished jobs' data and metadata (apalis keeps them forever), never a job waiting for
/// a retry (docs/apalis-redis.md#vacuum-deletes-retries).
pub struct Vacuum {
    pub conn: RedisConn,
}

impl Periodic for Vacuum {
    fn name(&self) -> &'static str {
        "vacuum"
    }

    fn run_once(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            match queue::vacuum_done(&self.conn).await {
                Ok(n) => tracing::debug!(removed = n, "vacuumed finished jobs"),
                Err(e) => tracing::warn!(error = %e, "vacuum of finished jobs failed; retried next round"),
            }
        })
    }
}

/// Ends the orgs still open in runs past their deadline (`runs.deadline`) and exports how late
/// the latest open run is predicted to finish. Every worker may run it: ending an org is
/// first-outcome-wins in the run record, so two workers ending the same run end each org once.
pub struct DeadlineSweep {
    pub records: projector_shared::run_record::RunRecords,
}

/// Runs looked at for an open one past its deadline (one Redis round trip per second per worker:
/// a few recent runs, since an open run older than ten ticks has long met its deadline).
const DEADLINE_RUNS_WITHIN: usize = 10;

impl Periodic for DeadlineSweep {
    fn name(&self) -> &'static str {
        "deadline_sweep"
    }

    fn run_once(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let open = match self.records.open_runs(DEADLINE_RUNS_WITHIN).await {
                Ok(open) => open,
                Err(e) => return tracing::debug!(error = %e, "cannot read the open runs for their deadlines"),
            };
            let now = match self.records.redis_now().await {
                Ok(now) => now,
                Err(e) => return tracing::debug!(error = %e, "cannot read Redis time for run deadlines"),
            };
            let overrun = open.iter().map(|r| r.predicted_overrun_s(now)).fold(0.0, f64::max);
            metrics::gauge!(m::RUN_PREDICTED_OVERRUN_SECONDS).set(overrun);
            for run in open.iter().filter(|r| r.deadline.is_some_and(|d| d <= now)) {
                let run_id = projector_shared::RunId(run.run_id.clone());
                match self.records.end_at_deadline(&run_id).await {
                    Ok(0) => {}
                    Ok(n) => {
                        metrics::counter!(m::RUN_DEADLINE_ORGS_TOTAL).increment(n);
                        tracing::warn!(run_id = %run_id, orgs = n, "the run's deadline passed: its open orgs end skipped_no_slot (reason deadline)")
                    }
                    Err(e) => {
                        tracing::warn!(run_id = %run_id, error = %e, "cannot end the open orgs of a run past its deadline; retried next round")
                    }
                }
            }
        })
    }
}

/// How often the vacuum runs for a given housekeeping interval.
pub fn vacuum_every(housekeeping: Duration) -> Duration {
    housekeeping * VACUUM_EVERY_INTERVALS
}

/// Reads the fleet-wide pause (`projectorctl pause`) every round and tells the supervisor when it
/// changes. A read that fails keeps the last state: a Redis blip neither pauses nor resumes.
pub struct PauseWatch {
    pub conn: RedisConn,
    pub paused: tokio::sync::watch::Sender<bool>,
}

impl Periodic for PauseWatch {
    fn name(&self) -> &'static str {
        "pause_watch"
    }

    fn run_once(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            match projector_shared::pause::paused(&self.conn).await {
                Ok(pause) => {
                    self.paused.send_if_modified(|p| std::mem::replace(p, pause.is_some()) != pause.is_some());
                }
                Err(e) => tracing::debug!(error = %e, "cannot read the fleet pause; keeping the last state"),
            }
        })
    }
}
