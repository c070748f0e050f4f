//! Operator actions on runs, shared by `projectorctl` and the status page: retry a run's orgs,
//! cancel a run, pause and resume the fleet. Each is logged.

use anyhow::Context;
use chrono::Utc;
use projector_config::Config;
use projector_shared::redis_conn::RedisConn;
use projector_shared::run::Outcome;
use projector_shared::run_record::RunRecords;
use projector_shared::{OrgId, RunId, SpikeProjectionJob};

use crate::records::Records;

/// The outcomes `runs retry` picks when none are named: every one that did not complete, but
/// not `cancelled` (an operator stopped those on purpose; name it to retry them).
pub const RETRY_BY_DEFAULT: [Outcome; 6] = [
    Outcome::SkippedNoSlot,
    Outcome::RateLimited,
    Outcome::Failed,
    Outcome::SlotUnavailable,
    Outcome::SkippedRatePolicy,
    Outcome::Deadline,
];

/// What `runs retry` did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Retried {
    pub run_id: String,
    /// Orgs reopened by this call, with their new attempt number.
    pub reopened: Vec<(u64, u32)>,
    /// Jobs new to the queue: the reopened orgs, plus any earlier retry whose push had failed.
    pub enqueued: u64,
}

/// Reopens the run's orgs whose outcome is in `outcomes` and enqueues a follow-up attempt for
/// each (dedupe member `<org>:a<n>`), runnable now. Orgs reopened by an earlier retry
/// that still have no outcome are pushed again too: their member makes that a no-op unless the
/// earlier push was lost, so repeating a retry that failed half-way finishes it.
pub async fn retry(records: &Records, config: &Config, run_id: &RunId, outcomes: &[Outcome]) -> anyhow::Result<Retried> {
    let (reopened, enqueued) = match records {
        Records::Redis(records, conn) => retry_in_redis(records, conn, config, run_id, outcomes).await?,
        Records::File(runs, queue) => {
            let Some((tick, plan)) = runs.plan_projects(run_id).await? else { return Err(crate::views::no_record(config, run_id)) };
            let reopened = runs.reopen(run_id, outcomes).await.with_context(|| format!("reopening orgs of run {run_id}"))?;
            let open: Vec<(OrgId, u32)> =
                runs.orgs(run_id).await?.into_iter().filter(|o| o.outcome.is_none() && o.attempt > 0).map(|o| (o.org, o.attempt)).collect();
            let projects: std::collections::HashMap<OrgId, Vec<projector_shared::ProjectId>> =
                plan.into_iter().map(|p| (p.org, p.projects)).collect();
            let now = Utc::now().timestamp().max(0) as u64;
            let jobs: Vec<_> = open
                .iter()
                .map(|(org, attempt)| {
                    let planned =
                        SpikeProjectionJob::planned(run_id.clone(), *org, 0, tick, projects.get(org).cloned().unwrap_or_default());
                    (SpikeProjectionJob { attempt: *attempt, ..planned }, now)
                })
                .collect();
            let enqueued = queue.push(&jobs).await.map_err(|e| {
                anyhow::anyhow!(
                    "the orgs are reopened but enqueuing their jobs failed: {e}; run `projectorctl runs retry {run_id}` again to push the rest"
                )
            })?;
            (reopened, enqueued)
        }
    };
    tracing::warn!(run_id = %run_id, reopened = reopened.len(), enqueued, outcomes = ?outcomes.iter().map(|o| o.as_str()).collect::<Vec<_>>(), "run retried by an operator");
    Ok(Retried { run_id: run_id.0.clone(), reopened: reopened.into_iter().map(|(o, n)| (o.0, n)).collect(), enqueued })
}

async fn retry_in_redis(
    records: &RunRecords,
    conn: &RedisConn,
    config: &Config,
    run_id: &RunId,
    outcomes: &[Outcome],
) -> anyhow::Result<(Vec<(OrgId, u32)>, u64)> {
    let Some(plan) = records.plan(run_id).await? else { return Err(crate::views::no_record(config, run_id)) };
    let reopened = records.reopen(run_id, outcomes).await.with_context(|| format!("reopening orgs of run {run_id}"))?;
    let open: Vec<(OrgId, u32)> =
        records.orgs(run_id).await?.into_iter().filter(|o| o.outcome.is_none() && o.attempt > 0).map(|o| (o.org, o.attempt)).collect();
    let projects: std::collections::HashMap<OrgId, Vec<projector_shared::ProjectId>> = plan.orgs.into_iter().collect();
    let now = Utc::now().timestamp().max(0) as u64;
    let tasks: Vec<_> = open
        .iter()
        .map(|(org, attempt)| {
            let planned = SpikeProjectionJob::planned(run_id.clone(), *org, 0, plan.tick, projects.get(org).cloned().unwrap_or_default());
            let job = SpikeProjectionJob { attempt: *attempt, ..planned };
            projector_queue::task(&job, now)
        })
        .collect();
    let mut enqueued = 0;
    for chunk in tasks.chunks(2_000) {
        enqueued += projector_queue::push(conn, run_id, chunk, config.runs.dedup_window).await.map_err(|e| {
            anyhow::anyhow!(
                "the orgs are reopened but enqueuing their jobs failed: {e}; run `projectorctl runs retry {run_id}` again to push the rest"
            )
        })?;
    }
    Ok((reopened, enqueued))
}

/// What `runs cancel` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Cancelled {
    /// Orgs that had no outcome and now end as `cancelled`.
    pub orgs_cancelled: u64,
    /// Jobs taken out of the queue.
    pub jobs_removed: u64,
}

/// Cancels a run: its open orgs end as `cancelled` first (so a job fetched meanwhile is refused
/// before it queries), then its waiting jobs are removed from the queue.
pub async fn cancel(records: &Records, config: &Config, run_id: &RunId) -> anyhow::Result<Cancelled> {
    crate::views::run_record(config, records, run_id).await?;
    let orgs_cancelled = records.cancel(run_id).await?;
    let removed = match records {
        Records::Redis(_, conn) => projector_queue::remove_run_jobs(conn, run_id).await.map_err(anyhow::Error::from),
        Records::File(_, queue) => queue.remove_run_jobs(run_id).await.map_err(anyhow::Error::from),
    };
    let jobs_removed = removed
        .with_context(|| format!("the run's orgs are cancelled, but removing its jobs from the queue failed (workers drop them unrun); run `projectorctl runs cancel {run_id}` again"))?;
    tracing::warn!(run_id = %run_id, orgs_cancelled, jobs_removed, "run cancelled by an operator");
    Ok(Cancelled { orgs_cancelled, jobs_removed })
}

/// Pauses the fleet (`projectorctl pause`, or the page): workers take no new job within a second.
pub async fn pause(records: &Records, reason: &str) -> anyhow::Result<projector_shared::pause::Pause> {
    let pause = records.pause(reason).await?;
    tracing::warn!(reason = %pause.reason, "fleet paused");
    Ok(pause)
}

/// Ends a pause; `false` when there was none.
pub async fn resume(records: &Records) -> anyhow::Result<bool> {
    let was = records.resume().await?;
    tracing::info!(was_paused = was, "fleet resumed");
    Ok(was)
}

/// Parses `--outcomes failed,skipped_no_slot,…`.
pub fn parse_outcomes(list: &str) -> anyhow::Result<Vec<Outcome>> {
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|name| {
            Outcome::parse(name).filter(|o| *o != Outcome::Completed).ok_or_else(|| {
                let names: Vec<&str> = Outcome::ALL.iter().filter(|o| **o != Outcome::Completed).map(|o| o.as_str()).collect();
                anyhow::anyhow!("--outcomes: {name:?} is not an outcome that can be retried; use any of {}", names.join(", "))
            })
        })
        .collect()
}
