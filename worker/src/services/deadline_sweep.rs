//! Ends the orgs of runs past their deadline, and compacts finished runs once
//! `runs.completed_detail` has passed. Every worker runs it: ending an org is first-outcome-wins
//! in the run record, so two workers ending the same run end each org once, and one worker takes
//! each run to compact.

use futures::future::BoxFuture;
use projector_shared::metrics as m;

use super::Periodic;

/// Ends the orgs still open in runs past their deadline (`runs.deadline`) and exports how late
/// the latest open run is predicted to finish. Every worker may run it: ending an org is
/// first-outcome-wins in the run record, so two workers ending the same run end each org once.
pub struct DeadlineSweep {
    pub records: projector_shared::run_record::RunRecords,
    /// `runs.completed_detail`: how long after its end a run is compacted.
    pub completed_detail: std::time::Duration,
}

impl Periodic for DeadlineSweep {
    fn name(&self) -> &'static str {
        "deadline_sweep"
    }

    fn run_once(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let open = match self.records.open_runs().await {
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
                        tracing::warn!(run_id = %run_id, orgs = n, "the run's deadline passed: its open orgs end deadline (a try already querying records what it reaches)")
                    }
                    Err(e) => {
                        tracing::warn!(run_id = %run_id, error = %e, "cannot end the open orgs of a run past its deadline; retried next round")
                    }
                }
            }
            // One run per round: a large run's compaction is many short calls, never a long one.
            match self.records.compact_due(self.completed_detail).await {
                Ok(Some((run_id, orgs))) => {
                    tracing::info!(run_id = %run_id, orgs, "compacted the completed orgs of a finished run (runs.completed_detail passed)")
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "cannot compact a finished run; retried next round"),
            }
        })
    }
}
