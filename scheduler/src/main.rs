//! `projector-scheduler`: parse flags, load config, set up logging, run the chosen command.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use projector_config::ConfigArgs;
use projector_scheduler::distributed::{RunOnceOptions, RunOnceResult, run_once, serve};
use projector_scheduler::embedded::{EmbeddedOptions, run_embedded};
use projector_scheduler::report::{summary_table, write_summary_json};
use projector_shared::run::RunSummary;
use projector_shared::telemetry::{self, LogFormat};

/// Fans out one spike-projection job per organization, in batches, to workers that share a
/// cluster-wide limit of concurrent queries.
///
/// Configuration: defaults < --config FILE < PROJECTOR_<SECTION>_<KEY> environment < flags.
/// See config.example.toml for every key.
#[derive(Debug, Parser)]
#[command(name = "projector-scheduler", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,

    #[command(flatten)]
    config: ConfigArgs,

    /// Log format on stderr
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run one fan-out now (for an external cron such as a Kubernetes CronJob).
    ///
    /// Without --embedded: lists organizations, evaluates the rollout flag, and enqueues one
    /// delayed job per organization in Redis (batch k runnable at tick + k × batch.delay) for
    /// projector-worker processes. With --embedded, the whole run happens in this process with no
    /// Redis: in-process workers and an in-memory slot limiter at slots.limit.
    /// Exits 0 when the run is enqueued (or, with --wait/--embedded, when every organization is
    /// accounted for: completed, skipped_no_slot, rate_limited, failed or slot_unavailable).
    RunOnce {
        /// Run scheduler, workers and slot limiter in this process; needs no Redis
        #[arg(long)]
        embedded: bool,

        /// Print the plan (orgs, batches, release times, rollout routing) and enqueue nothing
        #[arg(long, conflicts_with = "embedded")]
        dry_run: bool,

        /// Follow the run until every organization is accounted for, then print the summary
        #[arg(long, conflicts_with = "embedded")]
        wait: bool,

        /// With --wait: give up after this long (exit 1, summary of what is accounted so far)
        #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = humantime::parse_duration)]
        wait_timeout: std::time::Duration,

        /// Fan out (or finish fanning out) the run of this cron tick, e.g. 2026-11-22T13:00:00Z;
        /// jobs already enqueued for it are not enqueued again
        #[arg(long, value_name = "RFC3339", conflicts_with = "embedded")]
        tick: Option<chrono::DateTime<chrono::Utc>>,

        /// Write the run summary as JSON to PATH
        #[arg(long, value_name = "PATH")]
        summary_json: Option<PathBuf>,

        /// With --embedded: write projections as JSON lines to PATH (one line per org and project)
        #[arg(long, value_name = "PATH")]
        output: Option<PathBuf>,
    },
    /// Fan out at every tick of schedule.cron until SIGTERM. Several replicas may run: exactly one
    /// fans out each tick (a Redis lock keyed by the tick).
    Serve,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = cli.config.load_or_exit();
    telemetry::init(cli.log_format);
    projector_shared::runtime::block_on_main(run(cli.command, config)).unwrap_or(ExitCode::FAILURE)
}

async fn run(command: Command, config: projector_config::Config) -> anyhow::Result<ExitCode> {
    let shutdown = projector_shared::shutdown::on_signal();
    match command {
        Command::Serve => {
            serve(&config, shutdown).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::RunOnce { embedded: true, summary_json, output, .. } => {
            let summary = run_embedded(&config, EmbeddedOptions { output }, shutdown).await?;
            finish(&summary, &config, summary_json.as_deref(), true)?;
            Ok(if summary.accounted() == summary.orgs_total { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
        Command::RunOnce { embedded: false, dry_run, wait, wait_timeout, tick, summary_json, .. } => {
            let options = RunOnceOptions { dry_run, tick, wait: wait.then_some(wait_timeout), summary_json: summary_json.clone() };
            match run_once(&config, options).await? {
                RunOnceResult::DryRun(plan) => {
                    print!("{plan}");
                    Ok(ExitCode::SUCCESS)
                }
                RunOnceResult::Enqueued { run_id, new, duplicates } => {
                    println!("run {run_id}: {new} jobs enqueued, {duplicates} already enqueued");
                    Ok(ExitCode::SUCCESS)
                }
                RunOnceResult::Finished { summary, complete } => {
                    finish(&summary, &config, summary_json.as_deref(), false)?;
                    if !complete {
                        eprintln!("error: --wait-timeout passed with {} of {} orgs accounted for", summary.accounted(), summary.orgs_total);
                    }
                    Ok(if complete { ExitCode::SUCCESS } else { ExitCode::FAILURE })
                }
            }
        }
    }
}

/// Prints the summary table and writes the summary JSON if asked.
fn finish(
    summary: &RunSummary,
    config: &projector_config::Config,
    summary_json: Option<&std::path::Path>,
    probed: bool,
) -> anyhow::Result<()> {
    print!("{}", summary_table(summary, config.slots.limit, probed));
    if let Some(path) = summary_json {
        write_summary_json(summary, path).with_context(|| format!("cannot write the run summary to {}", path.display()))?;
    }
    Ok(())
}
