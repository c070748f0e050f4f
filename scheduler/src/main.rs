//! `projector-scheduler`: parse flags, load config, set up logging, run the chosen command.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use projector_config::{ConfigArgs, FanOutArgs, JobArgs, ServeArgs};
use projector_process::telemetry;
use projector_scheduler::distributed::{RunOnceMode, RunOnceResult, Which, legacy_orgs, limit_in_force, run_once, serve};
use projector_scheduler::embedded::{EmbeddedOptions, run_embedded};
use projector_scheduler::fanout::WaitEnd;
use projector_scheduler::report::{Bound, FailOn, exit, max_duration_caveat, summary_table, write_summary_json};
use projector_shared::run::RunSummary;

/// Fans out one spike-projection job per organization, in batches, to workers that share a
/// cluster-wide limit of concurrent queries.
#[derive(Debug, Parser)]
#[command(name = "projector-scheduler", version = projector_process::VERSION, long_about = None, after_help = projector_config::LAYERS_HELP)]
struct Cli {
    #[command(subcommand)]
    command: Command,

    #[command(flatten)]
    log: telemetry::LogArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run one fan-out now (for an external cron such as a Kubernetes CronJob).
    ///
    /// Without --embedded: lists organizations, evaluates the rollout flag, and enqueues one
    /// delayed job per organization in Redis (batch k runnable at tick + k × batch.delay) for
    /// projector-worker processes. With --embedded, the whole run happens in this process with no
    /// Redis: in-process workers and an in-memory slot limiter at slots.limit.
    ///
    /// Exit codes: 0 every org completed (or, without --wait, the run was enqueued); 1 the run
    /// could not start or be followed (e.g. Redis unreachable, no organizations); 2 bad
    /// configuration; 3 the run finished and some org ended in an outcome named by --fail-on;
    /// 4 --wait-timeout passed first; 130 interrupted (the partial summary is still written).
    RunOnce(Box<RunOnceArgs>),
    /// Fan out at every tick of schedule.cron until SIGTERM. Several replicas may run: exactly one
    /// fans out each tick (a Redis lock keyed by the tick).
    ///
    /// Serves /metrics (ticks, the last fan-out, the last finished run), /healthz and /readyz
    /// (Redis answers and the tick loop runs) on schedule.metrics_addr. Exits 1 at start when
    /// Redis refuses the credentials.
    Serve {
        #[command(flatten)]
        config: ConfigArgs,
        #[command(flatten)]
        fan_out: FanOutArgs,
        #[command(flatten)]
        serve: ServeArgs,
    },
}

#[derive(Debug, clap::Args)]
struct RunOnceArgs {
    /// Run scheduler, workers and slot limiter in this process; needs no Redis
    #[arg(long)]
    embedded: bool,

    /// Print the plan (orgs, batches, release times, rollout routing) and enqueue nothing
    #[arg(long, conflicts_with = "embedded")]
    dry_run: bool,

    /// Follow the run until every organization is accounted for, then print the summary
    #[arg(long, conflicts_with = "embedded")]
    wait: bool,

    /// With --wait: give up after this long (exit 4, with the summary of what is accounted so far)
    #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = humantime::parse_duration)]
    wait_timeout: std::time::Duration,

    /// Fan out (or finish fanning out) the run of this cron tick, e.g. 2026-11-22T13:00:00Z;
    /// jobs already enqueued for it are not enqueued again
    #[arg(long, value_name = "RFC3339", conflicts_with = "embedded")]
    tick: Option<chrono::DateTime<chrono::Utc>>,

    /// With --tick: fan out a tick that is not on schedule.cron anyway
    #[arg(long, requires = "tick")]
    force: bool,

    /// Finish the fan-out of an existing run (e.g. one whose scheduler was killed mid-fan-out)
    /// from the plan stored with it: only its orgs whose jobs are missing are enqueued, in
    /// batches of batch.size released batch.delay apart from now
    #[arg(long, value_name = "RUN_ID", conflicts_with_all = ["embedded", "tick", "dry_run"])]
    resume: Option<String>,

    /// Outcomes that make a finished run exit 3: "any" (every outcome but completed), "none",
    /// or a list such as failed,rate_limited to tolerate skips on purpose
    #[arg(long, value_name = "OUTCOMES", default_value = "any")]
    fail_on: FailOn,

    /// Write the run summary as JSON to PATH
    #[arg(long, value_name = "PATH")]
    summary_json: Option<PathBuf>,

    /// With --embedded: write projections as JSON lines to PATH (one line per org and project)
    #[arg(long, value_name = "PATH")]
    output: Option<PathBuf>,

    #[command(flatten)]
    config: ConfigArgs,

    #[command(flatten)]
    fan_out: FanOutArgs,

    #[command(flatten)]
    jobs: JobArgs,
}

fn main() -> ExitCode {
    let cli: Cli = projector_process::telemetry::parse_args();
    telemetry::init(cli.log.log_format);
    let loaded = match &cli.command {
        Command::Serve { config, fan_out, serve } => config.load([fan_out.flag_values(), serve.flag_values()].concat()),
        Command::RunOnce(args) => args.config.load([args.fan_out.flag_values(), args.jobs.flag_values()].concat()),
    };
    // The backend must suit what this process is about to be: the embedded run, or a fleet's.
    let loaded = loaded.and_then(|config| {
        match &cli.command {
            Command::RunOnce(args) if args.embedded => config.backend_for_embedded(),
            Command::RunOnce(_) => config.backend_for_fleet("projector-scheduler run-once"),
            Command::Serve { .. } => config.backend_for_fleet("projector-scheduler serve"),
        }?;
        Ok(config)
    });
    let config = match projector_process::runtime::config_or_exit(loaded) {
        Ok(config) => config,
        Err(code) => return code,
    };
    projector_process::runtime::block_on_main(run(cli.command, config)).unwrap_or(ExitCode::from(exit::ERROR))
}

async fn run(command: Command, config: projector_config::Config) -> anyhow::Result<ExitCode> {
    let shutdown = projector_process::shutdown::on_signal();
    let args = match command {
        Command::Serve { .. } if config.on_file() => {
            projector_scheduler::on_file::serve(&config, shutdown).await?;
            return Ok(ExitCode::SUCCESS);
        }
        Command::Serve { .. } => {
            serve(&config, shutdown).await?;
            return Ok(ExitCode::SUCCESS);
        }
        Command::RunOnce(args) => args,
    };
    if args.embedded {
        let summary = run_embedded(&config, EmbeddedOptions { output: args.output.clone() }, shutdown).await?;
        // The embedded run measures its own peak, and routes every org to the limited path.
        let bound =
            Bound { limit: config.slots.limit, source: "slots.limit".into(), caveat: max_duration_caveat(&config.query), legacy: 0 };
        finish(&summary, &bound, args.summary_json.as_deref())?;
        if summary.interrupted {
            eprintln!(
                "interrupted: {} of {} orgs accounted for; the others were not run. An embedded run keeps no state: running it again is a new run of all {} orgs. The partial summary above{} lists what finished.",
                summary.accounted(),
                summary.orgs_total,
                summary.orgs_total,
                if args.summary_json.is_some() { " and in --summary-json" } else { "" }
            );
            return Ok(ExitCode::from(exit::INTERRUPTED));
        }
        return Ok(args.fail_on.judge(&summary));
    }
    let mode = match (args.dry_run, args.wait) {
        (true, _) => RunOnceMode::DryRun,
        (false, true) => RunOnceMode::Wait(args.wait_timeout),
        (false, false) => RunOnceMode::Enqueue,
    };
    let which = match (&args.resume, args.tick) {
        (Some(run_id), _) => Which::Resume(projector_shared::RunId(run_id.clone())),
        (None, Some(tick)) => {
            if !args.force
                && let Err(why) = projector_scheduler::distributed::check_tick(&config.schedule.cron, tick)
            {
                eprintln!("error: {why}; nothing was enqueued (pass --force to fan it out anyway)");
                return Ok(ExitCode::from(exit::ERROR));
            }
            Which::Tick(tick)
        }
        (None, None) => Which::New,
    };
    let result = if config.on_file() {
        projector_scheduler::on_file::run_once(&config, mode, which, shutdown.clone()).await?
    } else {
        run_once(&config, mode, which, shutdown.clone()).await?
    };
    match result {
        RunOnceResult::DryRun(plan) => {
            telemetry::print(&plan);
            Ok(ExitCode::SUCCESS)
        }
        RunOnceResult::NothingToDo { run_id, fresher } => {
            telemetry::print(&format!(
                "nothing to do: all {fresher} orgs of run {run_id} already hold a fresher projection than this tick's; no job was enqueued\n"
            ));
            Ok(ExitCode::SUCCESS)
        }
        RunOnceResult::Enqueued { run_id, new, duplicates } => {
            telemetry::print(&format!(
                "run {run_id}: {new} jobs enqueued, {duplicates} already enqueued (follow it with: projectorctl run {run_id})\n"
            ));
            Ok(ExitCode::SUCCESS)
        }
        RunOnceResult::Finished { summary, end, workers_alive } => finished(&config, &args, &summary, end, workers_alive).await,
    }
}

/// Prints the summary table, logs one line for the run, and writes the summary JSON if asked.
fn finish(summary: &RunSummary, bound: &Bound, summary_json: Option<&std::path::Path>) -> anyhow::Result<()> {
    tracing::info!(
        run_id = %summary.run_id, orgs = summary.orgs_total, outcomes = %summary.outcomes, "run summary"
    );
    telemetry::print(&summary_table(summary, bound));
    if let Some(path) = summary_json {
        write_summary_json(summary, path).with_context(|| format!("cannot write the run summary to {}", path.display()))?;
    }
    Ok(())
}

/// A followed run's end: its summary, then the exit code and the line that says how it ended.
async fn finished(
    config: &projector_config::Config,
    args: &RunOnceArgs,
    summary: &projector_shared::run::RunSummary,
    end: WaitEnd,
    workers_alive: Option<u64>,
) -> anyhow::Result<ExitCode> {
    // A run followed until Ctrl-C says so in its summary, as the embedded run's does.
    let summary = &projector_shared::run::RunSummary { interrupted: end == WaitEnd::Interrupted, ..summary.clone() };
    let run_id = projector_shared::RunId(summary.run_id.clone());
    let (limit, source, legacy) = if config.on_file() {
        projector_scheduler::on_file::bound(config, &run_id).await
    } else {
        let (limit, source) = limit_in_force(config).await;
        (limit, source, legacy_orgs(config, &run_id).await)
    };
    let bound = Bound { limit, source: source.to_owned(), caveat: max_duration_caveat(&config.query), legacy };
    finish(summary, &bound, args.summary_json.as_deref())?;
    match end {
        WaitEnd::Accounted => Ok(args.fail_on.judge(summary)),
        WaitEnd::Interrupted => {
            eprintln!(
                "interrupted: {} of {} orgs accounted for so far; the run goes on in the workers (follow it with projectorctl run {}; stop it with projectorctl runs cancel {} --yes)",
                summary.accounted(),
                summary.orgs_total,
                summary.run_id,
                summary.run_id
            );
            Ok(ExitCode::from(exit::INTERRUPTED))
        }
        WaitEnd::Lost => {
            eprintln!(
                "error: the record of run {} is gone from Redis (a restart without persistence, or a flush), with {} of {} orgs accounted for: the run is lost and nothing will account for the rest. Check Redis (persistence, maxmemory-policy), then fan the tick out again with run-once --tick",
                summary.run_id,
                summary.accounted(),
                summary.orgs_total
            );
            Ok(ExitCode::from(exit::ERROR))
        }
        WaitEnd::TimedOut => {
            let workers = match workers_alive {
                Some(0) if config.on_file() => {
                    "; no worker is alive (no heartbeat in the SQLite file within 10s): start projector-worker with the same backend.dsn"
                        .to_owned()
                }
                Some(0) => {
                    "; no worker is alive (no heartbeat in Redis within 15s): start projector-worker against the same redis.url".to_owned()
                }
                Some(n) => format!(
                    "; {n} worker(s) alive, so the run is still being worked on: follow it with projectorctl run {}",
                    summary.run_id
                ),
                None => "; whether any worker is alive is unknown (Redis did not answer)".to_owned(),
            };
            eprintln!("error: --wait-timeout passed with {} of {} orgs accounted for{workers}", summary.accounted(), summary.orgs_total);
            Ok(ExitCode::from(exit::WAIT_TIMED_OUT))
        }
    }
}
