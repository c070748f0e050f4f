//! `projectorctl jobs`: dead-lettered jobs, listed, requeued or purged.

use std::fmt::Write as _;

use anyhow::Context;
use clap::Subcommand;
use projector_config::Config;
use projector_shared::redis_conn::Endpoint;

use super::connection;
use crate::views::View;

#[derive(Debug, Subcommand)]
pub enum JobsAction {
    /// Dead-lettered jobs (payloads a job loop could not fetch, jobs apalis killed), with why.
    ///
    /// With --json: prints {"dead": n, "jobs": [{id, reason, sample}]}
    Dead {
        /// How many to list (sorted by id)
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Put dead jobs back on the ready list with fresh metadata; a payload that is not JSON stays dead.
    ///
    /// With --json: prints {"requeued", "left_dead"}
    Requeue {
        /// Job ids, as `jobs dead` lists them
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        ids: Vec<String>,
        /// Every dead job
        #[arg(long)]
        all: bool,
    },
    /// Delete dead jobs: their payload and metadata are gone for good.
    ///
    /// With --json: prints {"purged"}
    Purge {
        /// Job ids, as `jobs dead` lists them
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        ids: Vec<String>,
        /// Every dead job
        #[arg(long)]
        all: bool,
        /// Confirm without a prompt (scripts); without it a terminal is asked, anything else refused
        #[arg(long)]
        yes: bool,
    },
}

/// `projectorctl jobs dead|requeue|purge`.
pub async fn run(config: &Config, action: JobsAction) -> anyhow::Result<View> {
    let conn = connection(config)?;
    let redis = Endpoint::from(&config.redis).redacted();
    match action {
        JobsAction::Dead { limit, .. } => {
            let dead = projector_queue::dead_jobs(&conn, limit).await.with_context(|| format!("reading dead jobs from {redis}"))?;
            let jobs: Vec<_> = dead.iter().map(|j| serde_json::json!({"id": j.id, "reason": j.reason, "sample": j.sample})).collect();
            let value = serde_json::json!({"dead": dead.len(), "jobs": jobs});
            let mut out = format!("{} dead job(s)\n", dead.len());
            for j in &dead {
                let _ =
                    writeln!(out, "  {}  {}\n      payload: {}", j.id, j.reason, if j.sample.is_empty() { "(none)" } else { &j.sample });
            }
            Ok(View::new(value, out))
        }
        JobsAction::Requeue { ids, .. } => {
            let changed = projector_queue::requeue_dead(&conn, &ids).await.with_context(|| format!("requeuing dead jobs in {redis}"))?;
            tracing::info!(requeued = changed.done, left_dead = changed.left, "dead jobs requeued");
            Ok(View::new(
                serde_json::json!({"requeued": changed.done, "left_dead": changed.left}),
                format!("requeued {}; {} left dead (payload not JSON: purge them)\n", changed.done, changed.left),
            ))
        }
        JobsAction::Purge { ids, yes, .. } => {
            let what = if ids.is_empty() { "every dead job".to_owned() } else { format!("{} dead job(s)", ids.len()) };
            super::confirm(&format!("purging {what} deletes their payloads for good"), yes)?;
            let changed = projector_queue::purge_dead(&conn, &ids).await.with_context(|| format!("purging dead jobs in {redis}"))?;
            tracing::info!(purged = changed.done, "dead jobs purged");
            Ok(View::new(serde_json::json!({"purged": changed.done}), format!("purged {}\n", changed.done)))
        }
    }
}
