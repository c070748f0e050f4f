//! `projector-scheduler`: parse flags, load config, set up logging, run the chosen command.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use projector_config::ConfigArgs;
use projector_scheduler::embedded::{EmbeddedOptions, run_embedded};
use projector_scheduler::report::{summary_table, write_summary_json};
use projector_shared::telemetry::{self, LogFormat};
use tokio_util::sync::CancellationToken;

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
    /// Run one fan-out now.
    ///
    /// With --embedded, the whole run happens in this process with no Redis: synthetic
    /// organizations, in-process workers and an in-memory slot limiter at slots.limit.
    /// Exits 0 when every organization is accounted for (completed, skipped_no_slot,
    /// rate_limited, failed or slot_unavailable).
    RunOnce {
        /// Run scheduler, workers and slot limiter in this process; needs no Redis
        #[arg(long)]
        embedded: bool,

        /// Write the run summary as JSON to PATH
        #[arg(long, value_name = "PATH")]
        summary_json: Option<PathBuf>,

        /// Write projections as JSON lines to PATH (one line per org and project)
        #[arg(long, value_name = "PATH")]
        output: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = cli.config.load_or_exit();
    telemetry::init(cli.log_format);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command, config)) {
        Ok(code) => code,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command, config: projector_config::Config) -> anyhow::Result<ExitCode> {
    let shutdown = CancellationToken::new();
    tokio::spawn({
        let shutdown = shutdown.clone();
        async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                shutdown.cancel();
            }
        }
    });
    match command {
        Command::RunOnce { embedded: false, .. } => {
            anyhow::bail!(
                "run-once without --embedded fans out to Redis workers, which this build does not have yet; use --embedded"
            )
        }
        Command::RunOnce { embedded: true, summary_json, output } => {
            let summary = run_embedded(&config, EmbeddedOptions { output }, shutdown).await?;
            print!("{}", summary_table(&summary, config.slots.limit));
            if let Some(path) = summary_json {
                write_summary_json(&summary, &path)
                    .with_context(|| format!("cannot write the run summary to {}", path.display()))?;
            }
            Ok(if summary.accounted() == summary.orgs_total { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
    }
}
