//! The scheduler of a single-machine fleet (`backend.kind = "sqlite"`): `run-once` (with
//! `--wait`, `--tick`, `--resume`) and `serve`, fanning out into apalis-sqlite's queue in the file
//! the workers share. The plan is stored with the run in one transaction before any job, and each
//! org's job is marked once it is in the queue, so a fan-out cut short is finished by
//! `run-once --resume` (or by replaying its tick) without a duplicate.

use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use projector_config::{Config, WhenPaused};
use projector_queue::sqlite::SqliteQueue;
use projector_shared::RunId;
use projector_shared::metrics as m;
use projector_shared::run::RunSummary;
use projector_shared::run_record::OrgIds;
use projector_shared::run_sqlite::{PlannedOrg, SqliteRuns};
use projector_sqlite::Database;
use tokio_util::sync::CancellationToken;

use crate::distributed::{RunOnceMode, RunOnceResult, Which};
use crate::error::Error;
use crate::fanout::{Plan, WaitEnd};
use crate::orgs::list_orgs;

/// Jobs pushed per transaction: a short write, so workers' fetches and records interleave.
const JOBS_PER_PUSH: usize = 500;

/// The file's run records and queue.
pub struct Fleet {
    pub runs: SqliteRuns,
    pub queue: SqliteQueue,
}

impl Fleet {
    /// Opens `backend.dsn` (creating and migrating it when needed).
    pub async fn open(config: &Config) -> Result<Fleet, Error> {
        let dsn = config.backend.dsn.clone().unwrap_or_default();
        let db = Database::open(&dsn, config.backend.busy_timeout).await.map_err(projector_shared::Error::from)?;
        let queue = SqliteQueue::open(&db).await.map_err(projector_shared::Error::from)?;
        Ok(Fleet { runs: SqliteRuns::new(db, config.runs.retention), queue })
    }
}

/// `run-once` on the file.
pub async fn run_once(config: &Config, mode: RunOnceMode, which: Which, shutdown: CancellationToken) -> Result<RunOnceResult, Error> {
    let fleet = Fleet::open(config).await?;
    let run_id = match which {
        Which::Resume(run_id) => {
            if fleet.runs.overview(&run_id).await.map_err(shared)?.is_none() {
                return Err(Error::Resume {
                    run_id: run_id.0.clone(),
                    detail: format!(
                        "no such run in {} (it never existed, or runs.retention deleted it); `projectorctl runs list` shows the runs kept",
                        fleet.runs.database().file().display()
                    ),
                });
            }
            run_id
        }
        Which::Tick(tick) => match plan_and_store(config, &fleet, RunId::for_tick(tick), tick, mode).await? {
            Planned::Stored(run_id) => run_id,
            Planned::DryRun(text) => return Ok(RunOnceResult::DryRun(text)),
        },
        Which::New => {
            let now = Utc::now();
            match plan_and_store(config, &fleet, RunId::manual(now), now, mode).await? {
                Planned::Stored(run_id) => run_id,
                Planned::DryRun(text) => return Ok(RunOnceResult::DryRun(text)),
            }
        }
    };
    let (new, duplicates) = enqueue_the_rest(&fleet, &run_id).await?;
    tracing::info!(run_id = %run_id, new, duplicates, file = %fleet.runs.database().file().display(), "run fanned out into the SQLite queue");
    match mode {
        RunOnceMode::DryRun | RunOnceMode::Enqueue => Ok(RunOnceResult::Enqueued { run_id, new, duplicates }),
        RunOnceMode::Wait(timeout) => {
            let (summary, end) = wait_for_run(&fleet, &run_id, timeout, &shutdown).await?;
            let workers_alive = match end {
                WaitEnd::TimedOut => fleet.queue.workers_alive().await.ok(),
                _ => None,
            };
            Ok(RunOnceResult::Finished { summary, end, workers_alive })
        }
    }
}

/// A run planned: stored with its plan, or (a dry run) only described.
enum Planned {
    Stored(RunId),
    DryRun(String),
}

/// Plans the run and stores it with its plan; a dry run stores nothing.
async fn plan_and_store(config: &Config, fleet: &Fleet, run_id: RunId, tick: DateTime<Utc>, mode: RunOnceMode) -> Result<Planned, Error> {
    let mut orgs = list_orgs(config)?;
    // The orgs that did not complete in the last run go first, as on Redis.
    if let Some(last) = fleet.runs.recent(2).await.map_err(shared)?.into_iter().find(|r| r.run_id != run_id.0) {
        let left_out: std::collections::HashSet<_> = fleet
            .runs
            .orgs(&RunId(last.run_id.clone()))
            .await
            .map_err(shared)?
            .into_iter()
            .filter(|o| o.outcome != Some(projector_shared::run::Outcome::Completed))
            .map(|o| o.org)
            .collect();
        if !left_out.is_empty() {
            orgs.orgs.sort_by_key(|o| !left_out.contains(&o.org_id));
            tracing::info!(run_id = %run_id, first = left_out.len(), "the orgs that did not complete in the last run go first");
        }
    }
    let rollout = fleet.runs.rollout().await.map_err(shared)?;
    let plan = Plan::new(config, &orgs, run_id.clone(), tick, &rollout);
    if mode == RunOnceMode::DryRun {
        return Ok(Planned::DryRun(plan.describe()));
    }
    let planned: Vec<PlannedOrg> =
        plan.jobs.iter().map(|j| PlannedOrg { org: j.job.org_id, batch: j.job.batch_index, projects: j.job.project_ids.clone() }).collect();
    let created = fleet.runs.create(&run_id, tick, plan.deadline, Some(&plan.pacing), &planned).await.map_err(shared)?;
    if created {
        tracing::info!(run_id = %run_id, orgs = planned.len(), batches = plan.batches, "{}", plan.pacing.describe());
    } else {
        tracing::info!(run_id = %run_id, "the run exists already: enqueueing what its plan has not put in the queue yet");
    }
    Ok(Planned::Stored(run_id))
}

/// Pushes every planned org of the run whose job is not in the queue yet, batch by batch at its
/// release time (counted from now for what is left); returns (new, already in the queue).
async fn enqueue_the_rest(fleet: &Fleet, run_id: &RunId) -> Result<(u64, u64), Error> {
    let Some(rest) = fleet.runs.to_enqueue(run_id).await.map_err(shared)? else {
        return Err(Error::Resume { run_id: run_id.0.clone(), detail: "the run's record is gone".to_owned() });
    };
    let delay = rest.pacing.map_or(Duration::ZERO, |p| p.delay);
    let first_batch = rest.orgs.first().map_or(0, |o| o.batch);
    let from = rest.tick.max(Utc::now());
    let (mut new, mut duplicates) = (0, 0);
    for chunk in rest.orgs.chunks(JOBS_PER_PUSH) {
        let jobs: Vec<_> = chunk
            .iter()
            .map(|o| {
                let after = delay.saturating_mul(o.batch.saturating_sub(first_batch));
                let release = from + TimeDelta::from_std(after).unwrap_or(TimeDelta::MAX);
                let job = projector_shared::SpikeProjectionJob {
                    deadline: rest.deadline,
                    ..projector_shared::SpikeProjectionJob::planned(run_id.clone(), o.org, o.batch, rest.tick, o.projects.clone())
                };
                (job, u64::try_from(release.timestamp()).unwrap_or(0))
            })
            .collect();
        let pushed = fleet.queue.push(&jobs).await.map_err(projector_shared::Error::from)?;
        new += pushed;
        duplicates += jobs.len() as u64 - pushed;
        let orgs: Vec<_> = chunk.iter().map(|o| o.org).collect();
        fleet.runs.mark_enqueued(run_id, &orgs).await.map_err(shared)?;
    }
    fleet.runs.mark_fanned_out(run_id).await.map_err(shared)?;
    Ok((new, duplicates))
}

/// Follows the run until every org has an outcome, `timeout`, or Ctrl-C; then its summary.
async fn wait_for_run(
    fleet: &Fleet,
    run_id: &RunId,
    timeout: Duration,
    shutdown: &CancellationToken,
) -> Result<(RunSummary, WaitEnd), Error> {
    let started = std::time::Instant::now();
    let end = tokio::select! {
        r = fleet.runs.wait_finished(run_id, timeout) => if r.map_err(shared)? { WaitEnd::Accounted } else { WaitEnd::TimedOut },
        () = shutdown.cancelled() => WaitEnd::Interrupted,
    };
    let Some(mut summary) = fleet.runs.summary(run_id, OrgIds::List).await.map_err(shared)? else {
        return Ok((RunSummary { run_id: run_id.0.clone(), ..RunSummary::default() }, WaitEnd::Lost));
    };
    if summary.duration_ms == 0 {
        summary.duration_ms = started.elapsed().as_millis() as u64;
    }
    Ok((summary, end))
}

/// Fans out at every tick of `schedule.cron` until `shutdown`. Several `serve` processes on one
/// file fan a tick out once: the run of a tick is created once, and its jobs are deduplicated.
pub async fn serve(config: &Config, shutdown: CancellationToken) -> Result<(), Error> {
    let fleet = Fleet::open(config).await?;
    // `/metrics` and `/readyz` as on Redis: the tick counters and the tick loop's readiness (the
    // run gauges read from the Redis record are Redis-only).
    let readiness = crate::health::SchedulerReadiness::on_file();
    let services = projector_worker::services::Services::new(shutdown.clone());
    let (_, server, upkeep) = projector_worker::metrics_http::serve_endpoints(
        config.schedule.metrics_addr,
        readiness.clone(),
        crate::health::register_series,
        shutdown.clone(),
    )
    .await?;
    services.spawn("metrics_server", server);
    services.spawn_every(std::sync::Arc::new(upkeep), projector_worker::metrics_http::METRICS_UPKEEP_EVERY);
    readiness.set_tick_loop_running(true);
    let result = tick_loop(config, &fleet, &shutdown).await;
    readiness.set_tick_loop_running(false);
    shutdown.cancel();
    services.wait().await;
    result
}

/// The ticks of `schedule.cron`, each fanned out once however many `serve` share the file.
async fn tick_loop(config: &Config, fleet: &Fleet, shutdown: &CancellationToken) -> Result<(), Error> {
    tracing::info!(cron = %config.schedule.cron.source(), file = %fleet.runs.database().file().display(), "scheduler serving on the SQLite file");
    if config.schedule.overlap != projector_config::Overlap::Skip {
        tracing::warn!(
            overlap = ?config.schedule.overlap,
            "schedule.overlap other than \"skip\" is Redis-only: on the SQLite file a tick is skipped while an earlier run is open"
        );
    }
    for tick in config.schedule.cron.upcoming(Utc) {
        let wait = (tick - Utc::now()).to_std().unwrap_or_default();
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = shutdown.cancelled() => return Ok(()),
        }
        let run_id = RunId::for_tick(tick);
        if config.schedule.when_paused == WhenPaused::Skip
            && let Ok(Some(pause)) = fleet.runs.paused().await
        {
            tracing::warn!(run_id = %run_id, reason = %pause.reason, "fleet paused and schedule.when_paused = \"skip\": tick skipped; after resume, re-run it with run-once --tick {}", tick.to_rfc3339());
            metrics::counter!(m::SCHEDULER_TICKS_TOTAL, "outcome" => "skipped_paused").increment(1);
            continue;
        }
        // schedule.overlap on one machine: a tick is skipped while an earlier run is open.
        match fleet.runs.open_runs().await {
            Ok(open) if open.iter().any(|r| r.run_id != run_id.0) => {
                tracing::warn!(run_id = %run_id, open = %open[0].run_id, "an earlier run is still open: tick skipped");
                metrics::counter!(m::SCHEDULER_TICKS_TOTAL, "outcome" => "skipped_overlap").increment(1);
                continue;
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(run_id = %run_id, error = %e, "cannot read the open runs; fanning out"),
        }
        let fanned = async {
            plan_and_store(config, fleet, run_id.clone(), tick, RunOnceMode::Enqueue).await?;
            enqueue_the_rest(fleet, &run_id).await
        };
        // A slow fan-out must still end on SIGTERM.
        let fanned = async {
            tokio::select! {
                r = fanned => r,
                () = shutdown.cancelled() => Ok((0, 0)),
            }
        };
        match fanned.await {
            // Another `serve` on the file fanned this tick out: nothing was new here.
            Ok((0, _)) => {
                metrics::counter!(m::SCHEDULER_TICKS_TOTAL, "outcome" => "other_replica").increment(1);
                tracing::info!(run_id = %run_id, "tick fanned out by another scheduler on the file");
            }
            Ok((new, duplicates)) => {
                metrics::counter!(m::SCHEDULER_TICKS_TOTAL, "outcome" => "fanned_out").increment(1);
                tracing::info!(run_id = %run_id, new, duplicates, "tick fanned out");
            }
            Err(e) => {
                metrics::counter!(m::SCHEDULER_TICKS_TOTAL, "outcome" => "failed").increment(1);
                tracing::error!(run_id = %run_id, error = %e, "cannot fan out the tick; finish it with run-once --tick {}", tick.to_rfc3339());
            }
        }
    }
    Ok(())
}

/// The limit the run's summary names, and how many of its orgs the rollout flag sends down the
/// legacy path now. The file's limiter keeps no limit but `slots.limit` (the service's cap only
/// lowers it).
pub async fn bound(config: &Config, run_id: &RunId) -> (u32, &'static str, u64) {
    let legacy = async {
        let fleet = Fleet::open(config).await.ok()?;
        let rollout = fleet.runs.rollout().await.ok()?;
        let orgs = fleet.runs.orgs(run_id).await.ok()?;
        Some(orgs.iter().filter(|o| !rollout.is_limited(o.org)).count() as u64)
    };
    (config.slots.limit, "slots.limit", legacy.await.unwrap_or(0))
}

fn shared(e: projector_shared::RunsError) -> Error {
    Error::Shared(e.into())
}
