//! The distributed fan-out: plan a run (orgs → batches → release times, rollout routing), enqueue
//! every job at once as a delayed apalis-redis job in bulk script calls, and follow the run record.

use projector_shared::backoff::Backoff;
use std::num::NonZeroUsize;
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeDelta, Utc};
use projector_config::{Config, RunsConfig};
use projector_shared::batch::{Pacing, plan_batches};
use projector_shared::run::BadLines;

use crate::orgs::OrgList;
use projector_queue as queue;
use projector_shared::redis_conn::RedisConn;
use projector_shared::rollout::Rollout;
use projector_shared::run::RunSummary;
use projector_shared::run_record::{OrgIds, RunRecords};
use projector_shared::{RunId, SpikeProjectionJob};

use crate::error::Error;

/// Jobs per enqueue script call: big enough to make 100,000 orgs a few dozen round trips, small
/// enough not to block Redis for long.
const PUSH_CHUNK: usize = 2_000;

/// Jobs in the first enqueue script call: a full chunk runs for tens of milliseconds, during which
/// Redis serves nobody, so the first jobs are pushed (and announced) on their own and idle workers
/// start on them while the rest are pushed.
const FIRST_PUSH_CHUNK: usize = 100;
/// At most this many jobs become due in the same second: apalis-redis 1.0.0's fetch promotes every
/// due job with one `unpack(...)`, and Redis's Lua refuses more than ~8,000 values (checked:
/// 7,000 pass, 10,000 fail). Workers also promote due jobs themselves in bounded steps.
const MAX_DUE_PER_SECOND: usize = 4_000;

/// One job of a plan and when it becomes runnable.
#[derive(Debug, Clone)]
pub struct PlannedJob {
    pub job: SpikeProjectionJob,
    pub release_at: DateTime<Utc>,
    /// Whether the rollout flag routes the org to the limited path (slot first).
    pub limited: bool,
}

/// A run, planned: what `--dry-run` prints and what the fan-out enqueues.
#[derive(Debug, Clone)]
pub struct Plan {
    pub run_id: RunId,
    pub tick: DateTime<Utc>,
    pub batches: usize,
    pub jobs: Vec<PlannedJob>,
    /// Lines of the organizations file that were skipped.
    pub bad_lines: BadLines,
    /// How long the run's record, and its dedupe set, are kept.
    pub runs: RunsConfig,
    /// When the run must be over (`runs.deadline`, else one period of the schedule).
    pub deadline: DateTime<Utc>,
    /// Orgs left out of a replayed past tick: the store already holds a fresher projection.
    pub fresher: usize,
    /// The pacing in force: `batch.delay`, or tighter so every org is released in time.
    pub pacing: Pacing,
}

impl Plan {
    /// Batches of `batch.size` released at `tick + k × delay`, routed by `rollout`: the delay is
    /// `batch.delay`, or tighter when that would not release every org within
    /// [`RELEASE_SHARE`](projector_shared::batch::RELEASE_SHARE) of the time to the deadline.
    pub fn new(config: &Config, list: &OrgList, run_id: RunId, tick: DateTime<Utc>, rollout: &Rollout) -> Self {
        let orgs = &list.orgs;
        let size = NonZeroUsize::new(config.batch.size).unwrap_or(NonZeroUsize::MIN);
        let ids: Vec<_> = orgs.iter().map(|o| o.org_id).collect();
        // A past tick replayed now (`run-once --tick`) would be past its deadline before it starts:
        // it gets its deadline counted from now instead.
        let deadline = Some(config.run_deadline(tick)).filter(|d| *d > Utc::now()).unwrap_or_else(|| config.run_deadline(Utc::now()));
        // Likewise its batches are paced from now: from its tick they would all be due at once,
        // every org of the run at the service together — the burst the batches exist to prevent.
        let release_from = tick.max(Utc::now());
        let pacing = Pacing::new(ids.len(), size, config.batch.delay, (deadline - release_from).to_std().ok());
        let batches = plan_batches(&ids, size, pacing.delay);
        // plan_batches keeps the order of `orgs`, so the n-th org belongs to the n-th batch slot.
        let batch_of = batches.iter().flat_map(|b| std::iter::repeat_n(b, b.orgs.len()));
        let jobs = orgs
            .iter()
            .zip(batch_of)
            .enumerate()
            .map(|(i, (info, batch))| {
                let spread = TimeDelta::seconds((i / MAX_DUE_PER_SECOND) as i64);
                let planned = TimeDelta::from_std(batch.release_after).unwrap_or(TimeDelta::MAX);
                PlannedJob {
                    job: SpikeProjectionJob {
                        deadline: Some(deadline),
                        ..SpikeProjectionJob::planned(run_id.clone(), info.org_id, batch.index, tick, info.project_ids.clone())
                    },
                    release_at: release_from + planned.max(spread),
                    limited: rollout.is_limited(info.org_id),
                }
            })
            .collect();
        Plan {
            run_id,
            tick,
            batches: batches.len(),
            jobs,
            bad_lines: list.bad_lines.clone(),
            runs: config.runs.clone(),
            deadline,
            fresher: 0,
            pacing,
        }
    }

    /// The `--dry-run` listing: one line per batch, then the routing totals.
    pub fn describe(&self) -> String {
        let mut out =
            format!("run {} at tick {}: {} orgs in {} batches\n", self.run_id, self.tick.to_rfc3339(), self.jobs.len(), self.batches);
        out.push_str(&format!("{}; deadline {}\n", self.pacing.describe(), self.deadline.to_rfc3339()));
        let mut i = 0;
        while i < self.jobs.len() {
            let batch = self.jobs[i].job.batch_index;
            let end = self.jobs[i..].iter().position(|j| j.job.batch_index != batch).map_or(self.jobs.len(), |p| i + p);
            let jobs = &self.jobs[i..end];
            let legacy: Vec<String> = jobs.iter().filter(|j| !j.limited).map(|j| j.job.org_id.to_string()).collect();
            let orgs: Vec<String> = jobs.iter().map(|j| j.job.org_id.to_string()).collect();
            out.push_str(&format!(
                "batch {batch:>5}  release {}  orgs {}  legacy path: {}\n",
                jobs[0].release_at.format("%H:%M:%S"),
                orgs.join(","),
                if legacy.is_empty() { "none".to_owned() } else { legacy.join(",") },
            ));
            i = end;
        }
        let limited = self.jobs.iter().filter(|j| j.limited).count();
        out.push_str(&format!(
            "rollout {}: {limited} orgs on the limited path (slot first), {} on the legacy path\n",
            projector_shared::rollout::RATE_LIMIT_FLAG,
            self.jobs.len() - limited
        ));
        if self.fresher > 0 {
            out.push_str(&format!("{} orgs left out: the store holds a fresher projection than this tick's\n", self.fresher));
        }
        out.push_str(&crate::report::bad_lines_note(&self.bad_lines));
        out
    }
}

/// What an enqueue did: jobs new to the queue, and jobs pushed before (the run's dedupe set).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Enqueued {
    pub new: u64,
    pub duplicates: u64,
}

/// How soon a followed run's record is read again; longer while Redis does not answer.
const READ_AGAIN: Duration = Duration::from_millis(200);

/// Creates the run record and enqueues every job of the plan as a delayed job. Safe to repeat for
/// the same run id: the run's dedupe set drops the jobs already enqueued.
pub async fn enqueue(conn: &RedisConn, plan: &Plan) -> Result<Enqueued, Error> {
    let enqueue_error = |detail: String| Error::Enqueue { run_id: plan.run_id.to_string(), detail };
    let records = RunRecords::for_config(conn.clone(), &plan.runs);
    records.create(&plan.run_id, plan.tick, plan.jobs.len() as u64).await.map_err(|e| enqueue_error(e.to_string()))?;
    records.set_schedule(&plan.run_id, plan.deadline, Some(&plan.pacing)).await.map_err(|e| enqueue_error(e.to_string()))?;
    // The whole plan is stored before the first job: the run then accounts only for its own orgs,
    // and a fan-out cut short can be finished by run id (`run-once --resume`).
    let orgs: Vec<_> = plan.jobs.iter().map(|p| (p.job.org_id, p.job.project_ids.clone())).collect();
    if let Err(e) = records.store_plan(&plan.run_id, &orgs).await {
        // No job was pushed yet: a run without its whole plan can neither account for its orgs
        // nor be resumed, so it is taken back whole rather than left "fanning out" for good.
        let rolled_back = match records.discard(&plan.run_id).await {
            Ok(()) => "the run was rolled back and nothing was enqueued; run it again once Redis has room".to_owned(),
            Err(undo) => format!("rolling the run back failed too ({undo}); nothing was enqueued"),
        };
        return Err(enqueue_error(format!("{e}; {rolled_back}")));
    }
    if let Err(e) = records.mark_last_planned(&plan.run_id).await {
        tracing::debug!(run_id = %plan.run_id, error = %e, "cannot mark the run fanned out last; the next plan keeps the list's order");
    }
    let pacing = plan.pacing.describe();
    if plan.pacing.tightened() {
        // Said before the first job, so a deadline that batch.delay could not meet is no surprise.
        tracing::warn!(run_id = %plan.run_id, orgs = orgs.len(), deadline = %plan.deadline.to_rfc3339(), "run planned; {pacing}; enqueuing");
    } else {
        tracing::info!(run_id = %plan.run_id, orgs = orgs.len(), deadline = %plan.deadline.to_rfc3339(), "run planned; {pacing}; enqueuing");
    }
    let enqueued = push_jobs(conn, &plan.run_id, &plan.jobs, plan.runs.dedup_window).await?;
    mark_fanned_out(&records, &plan.run_id).await;
    Ok(enqueued)
}

/// The run leaves `fanning out` in `projectorctl runs list`; a failure only leaves that label.
async fn mark_fanned_out(records: &RunRecords, run_id: &RunId) {
    if let Err(e) = records.mark_fanned_out(run_id).await {
        tracing::warn!(run_id = %run_id, error = %e, "cannot mark the run fanned out; runs list shows it fanning out");
    }
}

/// The jobs of each enqueue script call, in order: a small first chunk, then full ones.
fn push_chunks<T>(jobs: &[T]) -> impl Iterator<Item = &[T]> {
    let (first, rest) = jobs.split_at(jobs.len().min(FIRST_PUSH_CHUNK));
    std::iter::once(first).filter(|c| !c.is_empty()).chain(rest.chunks(PUSH_CHUNK))
}

/// Pushes jobs in bulk script calls; jobs already enqueued (in the run's dedupe set) are skipped.
async fn push_jobs(conn: &RedisConn, run_id: &RunId, jobs: &[PlannedJob], dedup_window: Duration) -> Result<Enqueued, Error> {
    let mut new = 0u64;
    for chunk in push_chunks(jobs) {
        let tasks: Vec<_> = chunk.iter().map(|p| queue::task(&p.job, p.release_at.timestamp().max(0) as u64)).collect();
        // Jobs due now go to the ready list and the push wakes idle workers itself.
        new += queue::push(conn, run_id, &tasks, dedup_window).await.map_err(|e| Error::Enqueue {
            run_id: run_id.to_string(),
            // Classed like every Redis failure (out of memory, unreachable, …), with its advice.
            detail: format!(
                "{} (jobs enqueued so far stay; finish the run with run-once --resume {run_id})",
                projector_shared::Error::redis("enqueuing jobs")(e)
            ),
        })?;
        tracing::debug!(run_id = %run_id, jobs = chunk.len(), enqueued_so_far = new, "jobs enqueued");
    }
    Ok(Enqueued { new, duplicates: jobs.len() as u64 - new })
}

/// Finishes the fan-out of a run that was cut short, from the plan stored with it: the planned
/// orgs whose job is not in the run's dedupe set are enqueued, with the run's own pacing counted
/// from now (`batch.size` per `batch.delay`, as the fan-out spreads them), and the run's deadline.
pub async fn resume(conn: &RedisConn, run_id: &RunId, runs: &RunsConfig, batch: &projector_config::BatchConfig) -> Result<Enqueued, Error> {
    let records = RunRecords::for_config(conn.clone(), runs);
    let Some(stored) = records.plan(run_id).await? else {
        return Err(Error::Resume {
            run_id: run_id.to_string(),
            detail: format!("no record of it (records are kept runs.retention = {})", projector_config::format_duration(runs.retention)),
        });
    };
    // A finished run's completed orgs may have been compacted out of its plan: they count.
    if (stored.orgs.len() as u64) + stored.compacted < stored.orgs_total {
        return Err(Error::Resume {
            run_id: run_id.to_string(),
            detail: format!(
                "its plan was stored for {} of {} orgs before the fan-out stopped, and no job was enqueued yet; start it again (for a cron tick: run-once --tick {})",
                stored.orgs.len(),
                stored.orgs_total,
                stored.tick.to_rfc3339()
            ),
        });
    }
    let deadline = records.overview(run_id).await?.and_then(|o| o.deadline);
    let members: Vec<String> = stored.orgs.iter().map(|(org, _)| org.0.to_string()).collect();
    let pushed = queue::pushed(conn, run_id, &members)
        .await
        .map_err(|e| Error::Resume { run_id: run_id.to_string(), detail: format!("cannot read which jobs were enqueued: {e}") })?;
    let planned = stored.orgs.len() as u64;
    let missing: Vec<_> = stored.orgs.into_iter().zip(pushed).filter(|(_, done)| !done).map(|(org, _)| org).collect();
    let already = planned - missing.len() as u64;
    let jobs = resumed_jobs(run_id, stored.tick, deadline, missing, batch, Utc::now());
    tracing::info!(
        run_id = %run_id, missing = jobs.len(), last_release = %jobs.last().map_or(Utc::now(), |j| j.release_at).to_rfc3339(),
        "resuming: the missing jobs are released with the run's pacing from now"
    );
    let mut enqueued = push_jobs(conn, run_id, &jobs, runs.dedup_window).await?;
    enqueued.duplicates += already;
    mark_fanned_out(&records, run_id).await;
    Ok(enqueued)
}

/// The missing orgs' jobs, in batches of `batch.size` released `batch.delay` apart from `now`, or
/// closer when that would not release them within the share of the time left to the deadline.
fn resumed_jobs(
    run_id: &RunId,
    tick: DateTime<Utc>,
    deadline: Option<DateTime<Utc>>,
    missing: Vec<(projector_shared::OrgId, Vec<projector_shared::ProjectId>)>,
    batch: &projector_config::BatchConfig,
    now: DateTime<Utc>,
) -> Vec<PlannedJob> {
    let size = batch.size.max(1);
    // The missing jobs fit what is left before the deadline, as a fresh fan-out's would.
    let left = deadline.and_then(|d| (d - now).to_std().ok());
    let pacing = Pacing::new(missing.len(), NonZeroUsize::new(size).unwrap_or(NonZeroUsize::MIN), batch.delay, left);
    let delay = TimeDelta::from_std(pacing.delay).unwrap_or(TimeDelta::MAX);
    missing
        .into_iter()
        .enumerate()
        .map(|(i, (org_id, project_ids))| {
            let index = i / size;
            let paced = delay.checked_mul(i32::try_from(index).unwrap_or(i32::MAX)).unwrap_or(TimeDelta::MAX);
            let spread = TimeDelta::seconds((i / MAX_DUE_PER_SECOND) as i64);
            let batch_index = u32::try_from(index).unwrap_or(u32::MAX);
            PlannedJob {
                job: SpikeProjectionJob { deadline, ..SpikeProjectionJob::planned(run_id.clone(), org_id, batch_index, tick, project_ids) },
                release_at: now.checked_add_signed(paced.max(spread)).unwrap_or(DateTime::<Utc>::MAX_UTC),
                limited: true,
            }
        })
        .collect()
}

/// How following a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitEnd {
    /// Every org of the run has an outcome.
    Accounted,
    /// The timeout passed first.
    TimedOut,
    /// Ctrl-C or SIGTERM came first; the run goes on in the workers.
    Interrupted,
    /// The run's record is gone from Redis (a restart without persistence, a flush): nothing can
    /// account for its orgs any more.
    Lost,
}

/// The longest one blocking wait for a run's finish signal: well inside the connection's 5 s
/// round-trip budget.
const FINISH_WAIT: Duration = Duration::from_secs(1);

/// Follows the run record until every org is accounted for or `timeout` passes; returns the last
/// summary seen and how the wait ended. A Redis error does not end the wait: the run goes on in
/// the workers, so the record is read again with backoff until the timeout.
pub async fn wait_for_run(
    conn: &RedisConn,
    run_id: &RunId,
    runs: &RunsConfig,
    timeout: Duration,
    shutdown: &tokio_util::sync::CancellationToken,
) -> Result<(RunSummary, WaitEnd), Error> {
    let records = RunRecords::for_config(conn.clone(), runs);
    let started = Instant::now();
    let mut last_seen = RunSummary { run_id: run_id.0.clone(), ..RunSummary::default() };
    let mut progress = crate::progress::Progress::new(0, Duration::from_secs(2));
    let mut backoff = Backoff::new(READ_AGAIN, Duration::from_secs(5));
    loop {
        let read_again = match records.summary(run_id, OrgIds::Leave).await {
            Ok(Some(summary)) => {
                backoff.reset();
                last_seen = summary;
                READ_AGAIN
            }
            Ok(None) => {
                // The record was written before the first job: gone now means Redis lost it.
                last_seen.duration_ms = started.elapsed().as_millis() as u64;
                progress.finish(&last_seen, false);
                return Ok((last_seen, WaitEnd::Lost));
            }
            Err(e) => {
                let pause = backoff.next_pause();
                tracing::warn!(run_id = %run_id, error = %e, retry_in_ms = pause.as_millis() as u64, "cannot read the run record; still following the run");
                pause
            }
        };
        let done = last_seen.is_finished();
        let interrupted = shutdown.is_cancelled();
        if done || interrupted || started.elapsed() >= timeout {
            let mut full = match records.summary(run_id, OrgIds::List).await {
                Ok(Some(full)) => full,
                Ok(None) | Err(_) => last_seen,
            };
            full.duration_ms = started.elapsed().as_millis() as u64;
            progress.finish(&full, interrupted && !done);
            let end = match (done, interrupted) {
                (true, _) => WaitEnd::Accounted,
                (false, true) => WaitEnd::Interrupted,
                (false, false) => WaitEnd::TimedOut,
            };
            return Ok((full, end));
        }
        progress.show(&last_seen);
        let pause = read_again.min(progress.interval()).min(timeout.saturating_sub(started.elapsed()));
        // Between reads, block on the run's finish signal: the end is seen at once, not at the
        // next read. On error (Redis away), simply wait out the pause.
        tokio::select! {
            waited = records.wait_finished(run_id, pause.min(FINISH_WAIT)) => {
                if waited.is_err() {
                    tokio::select! {
                        () = tokio::time::sleep(pause) => {}
                        () = shutdown.cancelled() => {}
                    }
                }
            }
            () = shutdown.cancelled() => {}
        }
    }
}

/// Takes the lock of a cron tick for `hold`; only the replica that gets it fans the tick out.
pub async fn take_tick_lock(conn: &RedisConn, run_id: &RunId, owner: &str, hold: Duration) -> Result<bool, Error> {
    let taken: Option<String> = redis::cmd("SET")
        .arg(projector_shared::keys::tick_lock(run_id))
        .arg(owner)
        .arg("NX")
        .arg("PX")
        .arg(hold.as_millis() as u64)
        .query_async(&mut conn.clone())
        .await
        .map_err(projector_shared::Error::redis(format!("taking the lock of {run_id}")))?;
    Ok(taken.is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_push_is_small_then_full_chunks_carry_every_job_once_in_order() {
        for n in [0, 1, FIRST_PUSH_CHUNK, FIRST_PUSH_CHUNK + 1, FIRST_PUSH_CHUNK + PUSH_CHUNK, 10_000] {
            let jobs: Vec<usize> = (0..n).collect();
            let chunks: Vec<&[usize]> = push_chunks(&jobs).collect();
            assert_eq!(chunks.concat(), jobs, "{n} jobs: each once, in order");
            assert!(chunks.iter().all(|c| !c.is_empty()), "{n} jobs: no empty script call");
            if n > 0 {
                assert_eq!(chunks[0].len(), n.min(FIRST_PUSH_CHUNK), "{n} jobs: the first call is small");
            }
            assert!(chunks.iter().skip(1).all(|c| c.len() <= PUSH_CHUNK), "{n} jobs: then full chunks at most");
        }
    }

    #[test]
    fn a_replayed_past_tick_is_paced_from_now_and_keeps_its_tick() {
        let config = projector_config::Config {
            batch: projector_config::BatchConfig { size: 25, delay: Duration::from_secs(2) },
            ..projector_config::Config::default()
        };
        let orgs = crate::orgs::OrgList {
            orgs: (1..=100)
                .map(|o| projector_shared::org::OrgInfo { org_id: projector_shared::OrgId(o), project_ids: vec![], active: true })
                .collect(),
            bad_lines: Default::default(),
        };
        let tick = Utc::now() - TimeDelta::days(14);
        let before = Utc::now();
        let plan = Plan::new(&config, &orgs, RunId::for_tick(tick), tick, &Rollout::default());
        let offsets: Vec<i64> = plan.jobs.iter().map(|j| (j.release_at - before).num_seconds()).collect();
        assert_eq!((offsets[0], offsets[24], offsets[25], offsets[99]), (0, 0, 2, 6), "25 per 2 s, from now, not all due at once");
        assert!(plan.jobs.iter().all(|j| j.job.scheduled_at == tick), "the jobs keep their tick: it sets the projected hours");
    }

    #[test]
    fn a_resume_releases_the_missing_jobs_with_the_runs_pacing_from_now() {
        let batch = projector_config::BatchConfig { size: 25, delay: Duration::from_secs(2) };
        let now = Utc::now();
        let missing: Vec<_> = (1..=100).map(|o| (projector_shared::OrgId(o), vec![])).collect();
        let jobs = resumed_jobs(&RunId("run-r".into()), now, None, missing, &batch, now);
        let offsets: Vec<i64> = jobs.iter().map(|j| (j.release_at - now).num_seconds()).collect();
        assert_eq!((offsets[0], offsets[24], offsets[25], offsets[99]), (0, 0, 2, 6), "25 per 2 s, from now");
        assert_eq!(jobs[99].job.batch_index, 3);
    }
}
