//! The scheduler against Redis: `run-once` (one fan-out now, optionally followed to the end) and
//! `serve` (a fan-out at every cron tick, by exactly one replica per tick).

use std::time::Duration;

use chrono::{DateTime, Utc};
use projector_config::{Config, Overlap, WhenPaused};
use projector_shared::RunId;
use projector_shared::metrics as m;
use projector_shared::redis_conn::RedisConn;
use projector_shared::rollout::Rollout;
use projector_shared::run::RunSummary;
use projector_shared::run_record::RunRecords;
use tokio_util::sync::CancellationToken;

use std::sync::Arc;

use projector_worker::metrics_http::{METRICS_UPKEEP_EVERY, serve_endpoints};
use projector_worker::services::Services;

use crate::error::Error;
use crate::fanout::{Plan, WaitEnd, enqueue, take_tick_lock, wait_for_run};
use crate::health::{self, RunGauges, SchedulerReadiness};
use crate::orgs::{OrgList, list_orgs};

/// What `run-once` was asked to do besides fanning out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunOnceMode {
    /// Print the plan; enqueue nothing.
    DryRun,
    /// Enqueue and return.
    Enqueue,
    /// Enqueue, then follow the run until every org is accounted for, at most this long.
    Wait(Duration),
}

/// How a `run-once` ended.
#[derive(Debug)]
pub enum RunOnceResult {
    DryRun(String),
    /// A replayed past tick whose every org already holds a fresher projection: nothing to query.
    NothingToDo {
        run_id: RunId,
        fresher: usize,
    },
    Enqueued {
        run_id: RunId,
        new: u64,
        duplicates: u64,
    },
    Finished {
        summary: RunSummary,
        end: WaitEnd,
        workers_alive: Option<u64>,
    },
}

fn connect(config: &Config) -> Result<RedisConn, Error> {
    projector_shared::redis_conn::connection_manager(&config.redis, Duration::from_secs(5))
        .map(|(_, conn)| conn)
        .map_err(|e| projector_shared::Error::redis("connecting")(e).into())
}

async fn plan(config: &Config, conn: &RedisConn, run_id: RunId, tick: DateTime<Utc>, replay: bool) -> Result<Plan, Error> {
    let mut orgs = list_orgs(config)?;
    let fresher = if replay { leave_out_fresher(config, &mut orgs, tick).await } else { 0 };
    first_the_orgs_left_out_last_time(config, conn, &run_id, &mut orgs).await;
    let rollout = match Rollout::load(&mut conn.clone()).await {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the rollout flag; the plan shows every org on the limited path (what workers do too)");
            Rollout::default()
        }
    };
    Ok(Plan { fresher, ..Plan::new(config, &orgs, run_id, tick, &rollout) })
}

/// Moves to the front the orgs that did not complete in the run fanned out last (cut by its
/// deadline, cancelled by `overlap = "replace"`, refused, failed), keeping the list's order
/// otherwise. A run cut short always cuts its last batches: without this, the same orgs would go
/// last, and be cut, run after run. When the record cannot be read the list's order stands.
async fn first_the_orgs_left_out_last_time(config: &Config, conn: &RedisConn, run_id: &RunId, orgs: &mut OrgList) {
    let records = RunRecords::for_config(conn.clone(), &config.runs);
    let left_out = match records.not_completed_in_last_run(run_id).await {
        Ok(left_out) => left_out,
        Err(e) => return tracing::warn!(run_id = %run_id, error = %e, "cannot read the last run's outcomes; orgs keep the list's order"),
    };
    if left_out.is_empty() {
        return;
    }
    // A stable sort: the left-out orgs first, each group in the list's order.
    orgs.orgs.sort_by_key(|o| !left_out.contains(&o.org_id));
    let first = orgs.orgs.iter().take_while(|o| left_out.contains(&o.org_id)).count();
    tracing::info!(run_id = %run_id, first, "the orgs that did not complete in the last run go first");
}

/// Takes out of `orgs` those whose stored projection is fresher than `tick`'s: a replayed past
/// tick would query them only to have every write refused as stale. The store is asked once,
/// before any job exists; when it cannot answer, nobody is left out (the fence still refuses
/// the stale writes). Returns how many were left out.
async fn leave_out_fresher(config: &Config, orgs: &mut crate::orgs::OrgList, tick: DateTime<Utc>) -> usize {
    let first_hour = projector_shared::job::first_hour_of(tick);
    let ids: Vec<_> = orgs.orgs.iter().map(|o| o.org_id).collect();
    let fresher = match projector_job::build::sink(config, None).await {
        Ok(sink) => sink.fresher(&ids, first_hour).await,
        Err(e) => Err(e),
    };
    let fresher: std::collections::HashSet<_> = match fresher {
        Ok(fresher) => fresher.into_iter().collect(),
        Err(e) => {
            tracing::warn!(error = %e, tick = %tick.to_rfc3339(), "cannot ask the projection store which orgs hold fresher projections; every org is fanned out and the store's fence refuses stale writes");
            return 0;
        }
    };
    orgs.orgs.retain(|o| !fresher.contains(&o.org_id));
    if !fresher.is_empty() {
        tracing::info!(tick = %tick.to_rfc3339(), fresher = fresher.len(), left = orgs.orgs.len(), "orgs with a fresher stored projection are left out of the replayed tick");
    }
    fresher.len()
}

/// Whether `tick` is a tick of `schedule`: a run keyed by an off-schedule time (a typo, a local
/// time) would be a run nobody scheduled, beside the real one. `Err` names the nearest ticks.
pub fn check_tick(schedule: &cron::Schedule, tick: DateTime<Utc>) -> Result<(), String> {
    let just_before = tick - chrono::TimeDelta::seconds(1);
    let next = schedule.after(&just_before).next();
    if next == Some(tick) {
        return Ok(());
    }
    let previous = schedule.after(&(tick - chrono::TimeDelta::days(31))).take_while(|t| *t < tick).last();
    let show = |t: Option<DateTime<Utc>>| t.map_or_else(|| "none".to_owned(), |t| t.to_rfc3339());
    Err(format!(
        "tick {} is not on schedule.cron ({}): the ticks around it are {} and {}",
        tick.to_rfc3339(),
        schedule.source(),
        show(previous),
        show(next)
    ))
}

/// Which run `run-once` fans out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Which {
    /// A fresh manual run.
    New,
    /// The run of this cron tick: re-running finishes an interrupted fan-out without duplicates.
    Tick(DateTime<Utc>),
    /// An existing run, finished from the plan stored with it.
    Resume(RunId),
}

/// One fan-out now (or the rest of one, with [`Which::Resume`]).
///
/// `shutdown` (Ctrl-C, SIGTERM) ends a `--wait` early with the summary so far.
pub async fn run_once(config: &Config, mode: RunOnceMode, which: Which, shutdown: CancellationToken) -> Result<RunOnceResult, Error> {
    let conn = connect(config)?;
    if let Which::Resume(run_id) = which {
        let enqueued = crate::fanout::resume(&conn, &run_id, &config.runs, &config.batch).await?;
        tracing::info!(run_id = %run_id, new = enqueued.new, duplicates = enqueued.duplicates, "run resumed from its stored plan");
        return follow(&conn, &config.runs, run_id, mode, enqueued, projector_shared::run::BadLines::default(), &shutdown).await;
    }
    let tick = match which {
        Which::Tick(t) => Some(t),
        _ => None,
    };
    let endpoint = projector_shared::redis_conn::Endpoint::from(&config.redis);
    tracing::info!(redis = %endpoint.redacted(), orgs_source = ?config.orgs.source, orgs_count = config.orgs.count, "run-once starting");
    let (run_id, tick) = match tick {
        Some(t) => (RunId::for_tick(t), t),
        None => {
            let now = Utc::now();
            (RunId::manual(now), now)
        }
    };
    let replay = matches!(which, Which::Tick(_));
    let plan = plan(config, &conn, run_id.clone(), tick, replay).await?;
    if plan.jobs.is_empty() && plan.fresher > 0 {
        return Ok(RunOnceResult::NothingToDo { run_id, fresher: plan.fresher });
    }
    if mode == RunOnceMode::DryRun {
        return Ok(RunOnceResult::DryRun(plan.describe()));
    }
    let started = std::time::Instant::now();
    let enqueued = enqueue(&conn, &plan).await?;
    tracing::info!(
        run_id = %run_id, orgs = plan.jobs.len(), batches = plan.batches, new = enqueued.new,
        duplicates = enqueued.duplicates, took_ms = started.elapsed().as_millis() as u64, "run fanned out"
    );
    follow(&conn, &config.runs, run_id, mode, enqueued, plan.bad_lines.clone(), &shutdown).await
}

/// After the fan-out: return, or follow the run to its end.
async fn follow(
    conn: &RedisConn,
    runs: &projector_config::RunsConfig,
    run_id: RunId,
    mode: RunOnceMode,
    enqueued: crate::fanout::Enqueued,
    bad_lines: projector_shared::run::BadLines,
    shutdown: &CancellationToken,
) -> Result<RunOnceResult, Error> {
    match mode {
        RunOnceMode::DryRun | RunOnceMode::Enqueue => {
            Ok(RunOnceResult::Enqueued { run_id, new: enqueued.new, duplicates: enqueued.duplicates })
        }
        RunOnceMode::Wait(timeout) => {
            let (mut summary, end) = wait_for_run(conn, &run_id, runs, timeout, shutdown).await?;
            summary.bad_lines = bad_lines;
            // When nothing moved, whether any worker is alive is the first thing to know.
            let workers_alive = match end {
                WaitEnd::TimedOut => projector_shared::heartbeat::alive(conn).await.ok(),
                WaitEnd::Accounted | WaitEnd::Interrupted | WaitEnd::Lost => None,
            };
            Ok(RunOnceResult::Finished { summary, end, workers_alive })
        }
    }
}

/// The slot limit in force: Redis's value once set (operators change it at runtime), otherwise
/// the configured one, with where it came from.
pub async fn limit_in_force(config: &Config) -> (u32, &'static str) {
    let settings = projector_shared::slots::RedisSlotSettings::new(config.slots.limit, config.slots.lease_ttl);
    let now = match projector_shared::slots::RedisSlotLimiter::new(&config.redis, settings) {
        Ok(limiter) => limiter.occupancy_now().await.ok(),
        Err(_) => None,
    };
    // The limit in force (the service's cap and the adaptive limit applied), and what set it.
    match now {
        Some(o) => (o.in_force.unwrap_or(config.slots.limit), crate::report::source_text(o.source(config.slots.limit))),
        None => (config.slots.limit, "slots.limit"),
    }
}

/// How many orgs of `run_id`'s plan the rollout flag sends down the legacy path now (no slot):
/// the summary says they ran outside the limit. 0 when the plan or the flag cannot be read.
pub async fn legacy_orgs(config: &Config, run_id: &RunId) -> u64 {
    let Ok(conn) = connect(config) else { return 0 };
    let rollout = Rollout::load(&mut conn.clone()).await.unwrap_or_default();
    let records = RunRecords::for_config(conn, &config.runs);
    match records.plan(run_id).await {
        Ok(Some(plan)) => plan.orgs.iter().filter(|(org, _)| !rollout.is_limited(*org)).count() as u64,
        _ => 0,
    }
}

/// Fans out at every tick of `schedule.cron` until `shutdown`. Every replica wakes at the tick;
/// the one that takes the tick's lock fans out, the others log and wait for the next tick.
pub async fn serve(config: &Config, shutdown: CancellationToken) -> Result<(), Error> {
    let conn = connect(config)?;
    projector_shared::redis_conn::check_at_start(&conn, "the scheduler").await?;
    let readiness = SchedulerReadiness::new(conn.clone());
    let services = Services::new(shutdown.clone());
    let (_, server, upkeep) =
        serve_endpoints(config.schedule.metrics_addr, readiness.clone(), health::register_series, shutdown.clone()).await?;
    services.spawn("metrics_server", server);
    services.spawn_every(Arc::new(upkeep), METRICS_UPKEEP_EVERY);
    metrics::gauge!(m::SCHEDULE_PERIOD_SECONDS).set(health::period(&config.schedule.cron).as_secs_f64());
    let gauges = RunGauges::new(RunRecords::for_config(conn.clone(), &config.runs), conn.clone());
    services.spawn_every(Arc::new(gauges), RUN_GAUGES_EVERY);
    readiness.set_tick_loop_running(true);
    let result = tick_loop(config, &conn, &shutdown).await;
    readiness.set_tick_loop_running(false);
    // The endpoint and the gauges end with the loop.
    shutdown.cancel();
    services.wait().await;
    result
}

/// How often the run gauges are read from the run record.
const RUN_GAUGES_EVERY: Duration = Duration::from_secs(5);

/// The ticks of `schedule.cron`, each fanned out by the replica that takes its lock.
async fn tick_loop(config: &Config, conn: &RedisConn, shutdown: &CancellationToken) -> Result<(), Error> {
    let schedule = &config.schedule.cron;
    let owner = format!("scheduler-{}-{}", std::process::id(), &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let endpoint = projector_shared::redis_conn::Endpoint::from(&config.redis);
    tracing::info!(cron = %config.schedule.cron.source(), owner = %owner, redis = %endpoint.redacted(), orgs_source = ?config.orgs.source, "scheduler serving");
    let mut ticks = schedule.upcoming(Utc).peekable();
    while let Some(tick) = ticks.next() {
        let next_tick = ticks.peek().copied();
        let wait = (tick - Utc::now()).to_std().unwrap_or_default();
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = shutdown.cancelled() => return Ok(()),
        }
        let run_id = RunId::for_tick(tick);
        if config.schedule.when_paused == WhenPaused::Skip {
            match projector_shared::pause::paused(conn).await {
                Ok(Some(pause)) => {
                    tracing::warn!(
                        run_id = %run_id, reason = %pause.reason,
                        "fleet paused and schedule.when_paused = \"skip\": tick skipped; after resume, re-run it with run-once --tick {}",
                        tick.to_rfc3339()
                    );
                    metrics::counter!(m::SCHEDULER_TICKS_TOTAL, "outcome" => "skipped_paused").increment(1);
                    continue;
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(run_id = %run_id, error = %e, "cannot read the fleet pause; fanning out"),
            }
        }
        // Held well past the fan-out so a slow replica waking late cannot fan out again.
        match take_tick_lock(conn, &run_id, &owner, Duration::from_secs(3600)).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::info!(run_id = %run_id, "another scheduler replica fans out this tick");
                metrics::counter!(m::SCHEDULER_TICKS_TOTAL, "outcome" => "other_replica").increment(1);
                continue;
            }
            Err(e) => {
                metrics::counter!(m::SCHEDULER_TICKS_TOTAL, "outcome" => "failed").increment(1);
                tracing::error!(run_id = %run_id, error = %e, "cannot take the tick lock; tick skipped (re-run it with run-once --tick {})", tick.to_rfc3339());
                continue;
            }
        }
        let records = RunRecords::for_config(conn.clone(), &config.runs);
        if !overlap_allows(config, &records, &run_id, tick, next_tick, shutdown).await {
            continue;
        }
        let result = async {
            let plan = plan(config, conn, run_id.clone(), tick, false).await?;
            enqueue(conn, &plan).await.map(|e| (plan.jobs.len(), e))
        }
        .await;
        match result {
            Ok((orgs, e)) => {
                metrics::counter!(m::SCHEDULER_TICKS_TOTAL, "outcome" => "fanned_out").increment(1);
                tracing::info!(run_id = %run_id, orgs, new = e.new, duplicates = e.duplicates, "tick fanned out")
            }
            Err(e) => {
                metrics::counter!(m::SCHEDULER_TICKS_TOTAL, "outcome" => "failed").increment(1);
                tracing::error!(run_id = %run_id, error = %e, "fan-out failed; re-run it with run-once --tick {}", tick.to_rfc3339())
            }
        }
    }
    Ok(())
}

/// How often a queued tick looks again whether the open run has ended.
const QUEUED_RECHECK: Duration = Duration::from_secs(1);

/// Whether this tick may fan out while earlier runs are open, by `schedule.overlap`: skip it
/// (recorded as a skipped run), wait for them (until the next tick at most), or cancel them.
/// A tick that cannot read the record fans out: the fleet's slots still bound the queries.
async fn overlap_allows(
    config: &Config,
    records: &RunRecords,
    run_id: &RunId,
    tick: DateTime<Utc>,
    next_tick: Option<DateTime<Utc>>,
    shutdown: &CancellationToken,
) -> bool {
    let mut still_open = open_runs(records, run_id).await;
    if still_open.is_empty() {
        return true;
    }
    match config.schedule.overlap {
        Overlap::Replace => {
            for old in &still_open {
                match records.cancel(&RunId(old.clone())).await {
                    Ok(n) => {
                        tracing::warn!(run_id = %run_id, replaced = %old, cancelled_orgs = n, "an earlier run was still open; cancelled it (schedule.overlap = \"replace\")")
                    }
                    Err(e) => {
                        tracing::error!(run_id = %run_id, replaced = %old, error = %e, "cannot cancel the open run; fanning out anyway")
                    }
                }
            }
            metrics::counter!(m::SCHEDULER_TICKS_TOTAL, "outcome" => "replaced").increment(1);
            true
        }
        Overlap::Queue => {
            let give_up = next_tick.unwrap_or(tick + chrono::TimeDelta::hours(1));
            while !still_open.is_empty() && Utc::now() < give_up {
                tokio::select! {
                    () = tokio::time::sleep(QUEUED_RECHECK) => {}
                    () = shutdown.cancelled() => return false,
                }
                still_open = open_runs(records, run_id).await;
            }
            if still_open.is_empty() {
                tracing::info!(run_id = %run_id, "the earlier run ended; the queued tick fans out (schedule.overlap = \"queue\")");
                return true;
            }
            skip(records, run_id, tick, &format!("queued behind {} until the next tick, which came first", still_open.join(", "))).await;
            false
        }
        Overlap::Skip => {
            skip(records, run_id, tick, &format!("{} still open (schedule.overlap = \"skip\")", still_open.join(", "))).await;
            false
        }
    }
}

/// The ids of the runs still open besides `run_id` (none when the record cannot be read).
async fn open_runs(records: &RunRecords, run_id: &RunId) -> Vec<String> {
    match records.open_runs().await {
        Ok(open) => open.into_iter().filter(|r| r.run_id != run_id.0).map(|r| r.run_id).collect(),
        Err(e) => {
            tracing::warn!(run_id = %run_id, error = %e, "cannot read the open runs; fanning out");
            Vec::new()
        }
    }
}

/// Records a tick that does not fan out: logged, counted, and in `runs list` as skipped.
async fn skip(records: &RunRecords, run_id: &RunId, tick: DateTime<Utc>, why: &str) {
    metrics::counter!(m::SCHEDULER_TICKS_TOTAL, "outcome" => "skipped_overlap").increment(1);
    tracing::warn!(run_id = %run_id, why, "tick skipped: an earlier run is still open");
    if let Err(e) = records.record_skipped_tick(run_id, tick, why).await {
        tracing::warn!(run_id = %run_id, error = %e, "cannot record the skipped tick");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tick_off_the_schedule_is_named_with_the_ticks_around_it() {
        let hourly: cron::Schedule = "0 0 * * * *".parse().expect("cron");
        let on = DateTime::parse_from_rfc3339("2026-11-22T13:00:00Z").expect("time").with_timezone(&Utc);
        assert_eq!(check_tick(&hourly, on), Ok(()));
        let off = DateTime::parse_from_rfc3339("2026-11-22T13:17:00Z").expect("time").with_timezone(&Utc);
        let why = check_tick(&hourly, off).expect_err("off schedule");
        assert!(why.contains("2026-11-22T13:00:00+00:00 and 2026-11-22T14:00:00+00:00"), "{why}");
    }
}
