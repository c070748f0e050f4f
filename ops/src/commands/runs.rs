//! `projectorctl runs`: recent runs, one run in detail, and a run's failed orgs run again or
//! the run cancelled.

use crate::records::Records;
use clap::Subcommand;
use projector_config::Config;
use projector_shared::RunId;

use crate::views::View;
use crate::{actions, views};

#[derive(Debug, Subcommand)]
pub enum RunsAction {
    /// Recent runs, newest first: tick, orgs, completed, other outcomes, duration and state
    /// (fanning out, running, done, cancelled, or skipped: a tick not fanned out while an
    /// earlier run was open, schedule.overlap).
    ///
    /// With --json: prints {"runs": [{run_id, tick, started (the tick, or when a replayed past tick was fanned out), orgs_total, accounted, state, duration_ms, finished, cancelled, retried, eta_s, outcomes: {<outcome>: n}, skipped (why, or null)}]}
    List {
        /// How many runs
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// One run: the count per outcome, every org that did not complete with its reason (error
    /// kind and message, slot wait, retry_after), and progress over time.
    ///
    /// With --json: prints the `runs list` object plus "not_completed": [{org_id, outcome, attempt, at_ms, worker, reason: {kind, message}, slot_wait_ms, retry_after_ms, attempts}], "not_completed_total", "open_org_ids" and "progress": [{after_ms, accounted}]
    Show {
        /// Run id, as printed by projector-scheduler or `runs list`
        run_id: String,
        /// List every org that did not complete, not only the first 500
        #[arg(long)]
        all: bool,
    },
    /// Run a run's orgs again that ended in the given outcomes, as a follow-up attempt linked to
    /// the run (each with its own dedupe member <org>:a<n>); orgs that completed are never re-run.
    /// The run's record then shows each org's latest outcome and keeps earlier attempts.
    ///
    /// With --json: prints {run_id, reopened: [[org_id, attempt]], enqueued}
    Retry {
        run_id: String,
        /// Comma-separated outcomes to retry [default: every one but completed and cancelled]
        #[arg(long, value_name = "OUTCOMES")]
        outcomes: Option<String>,
    },
    /// Cancel a run: its orgs without an outcome end as `cancelled` (accounted), and its waiting
    /// jobs are removed from the queue. Jobs already running finish; none starts a query after.
    ///
    /// With --json: prints {orgs_cancelled, jobs_removed}
    Cancel {
        run_id: String,
        /// Confirm without a prompt (scripts); without it a terminal is asked, anything else refused
        #[arg(long)]
        yes: bool,
    },
}

/// Runs one `runs` subcommand; returns what it prints.
pub async fn run(config: &Config, action: RunsAction) -> anyhow::Result<View> {
    match action {
        RunsAction::List { limit, .. } => views::runs_list(config, limit).await,
        RunsAction::Show { run_id, all, .. } => {
            views::runs_show(config, &run_id, if all { views::Listed::All } else { views::Listed::First }).await
        }
        RunsAction::Retry { run_id, outcomes, .. } => {
            let outcomes = match outcomes {
                Some(list) => actions::parse_outcomes(&list)?,
                None => actions::RETRY_BY_DEFAULT.to_vec(),
            };
            let done = actions::retry(&Records::open(config).await?, config, &RunId(run_id), &outcomes).await?;
            let text = format!(
                "run {}: {} org(s) reopened for a follow-up attempt, {} job(s) enqueued; follow it with `projectorctl runs show {}`\n",
                done.run_id,
                done.reopened.len(),
                done.enqueued,
                done.run_id
            );
            Ok(View::new(serde_json::to_value(&done)?, text))
        }
        RunsAction::Cancel { run_id, yes } => {
            super::confirm(
                &format!("cancelling run {run_id} ends every org without an outcome as cancelled: they get no projection this run"),
                yes,
            )?;
            let done = actions::cancel(&Records::open(config).await?, config, &RunId(run_id.clone())).await?;
            let text = format!(
                "run {run_id} cancelled: {} org(s) end as cancelled, {} job(s) removed from the queue; jobs already running finish\n",
                done.orgs_cancelled, done.jobs_removed
            );
            Ok(View::new(serde_json::to_value(done)?, text))
        }
    }
}
