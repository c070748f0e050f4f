//! `projector-worker`: load config, set up logging and metrics, run the worker until SIGTERM.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use projector_config::{ConfigArgs, JobArgs, WorkerArgs};
use projector_process::telemetry;

/// Takes spike-projection jobs from Redis, holds a cluster-wide slot for each query, and stores projections.
#[derive(Debug, Parser)]
#[command(name = "projector-worker", version = projector_process::VERSION, long_about = None, after_help = projector_config::LAYERS_HELP)]
struct Cli {
    #[command(subcommand)]
    command: Command,

    #[command(flatten)]
    log: telemetry::LogArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Consume jobs from redis.url until SIGTERM or Ctrl-C, worker.concurrency at a time.
    ///
    /// Serves /metrics (Prometheus text), /healthz (liveness) and /readyz (readiness: the job
    /// loop runs and Redis answers) on worker.metrics_addr. On SIGTERM it stops taking jobs, lets
    /// in-flight jobs finish within worker.shutdown_grace, releases every slot and exits 0. A
    /// Redis outage is survived: the job loop restarts with backoff.
    Run {
        #[command(flatten)]
        config: ConfigArgs,
        #[command(flatten)]
        jobs: JobArgs,
        #[command(flatten)]
        worker: WorkerArgs,
    },
    /// Print the effective configuration, after every layer, as a TOML file that loads back.
    Config {
        #[command(flatten)]
        config: ConfigArgs,
        /// Print passwords in URLs as they are (otherwise shown as ***)
        #[arg(long)]
        show_secrets: bool,
    },
}

fn main() -> ExitCode {
    let cli: Cli = projector_process::telemetry::parse_args();
    telemetry::init(cli.log.log_format);
    match cli.command {
        Command::Config { config, show_secrets } => {
            let config = match projector_process::runtime::config_or_exit(config.load(Vec::new())) {
                Ok(c) => c,
                Err(code) => return code,
            };
            telemetry::print(&projector_config::to_toml(&config, show_secrets));
            ExitCode::SUCCESS
        }
        Command::Run { config, jobs, worker } => {
            let loaded = config.load([jobs.flag_values(), worker.flag_values()].concat());
            let loaded = loaded.and_then(|c| c.backend_for_fleet("projector-worker run").map(|()| c));
            let config = match projector_process::runtime::config_or_exit(loaded) {
                Ok(c) => c,
                Err(code) => return code,
            };
            match projector_process::runtime::block_on_main(run(config)) {
                Some(()) => ExitCode::SUCCESS,
                None => ExitCode::FAILURE,
            }
        }
    }
}

async fn run(config: projector_config::Config) -> anyhow::Result<()> {
    let shutdown = projector_process::shutdown::on_signal();
    let on_file = config.on_file();
    let readiness = if on_file {
        projector_worker::metrics_http::Readiness::on_file()
    } else {
        let (_, health_conn) = projector_shared::redis_conn::connection_manager(&config.redis, std::time::Duration::from_secs(1))?;
        projector_shared::redis_conn::check_at_start(&health_conn, "the worker").await?;
        projector_worker::metrics_http::Readiness::new(health_conn)
    };
    let services = projector_worker::services::Services::new(shutdown.clone());
    let (_, server, upkeep) =
        projector_worker::metrics_http::serve(config.worker.metrics_addr, readiness.clone(), shutdown.clone()).await?;
    services.spawn("metrics_server", server);
    metrics::gauge!(projector_shared::metrics::QUERY_REFERRER_LIMIT).set(f64::from(config.query.referrer_limit));
    services.spawn_every(std::sync::Arc::new(upkeep), projector_worker::metrics_http::METRICS_UPKEEP_EVERY);
    let result = if on_file {
        projector_worker::on_file::run(config, readiness, &services, shutdown.clone()).await
    } else {
        projector_worker::serve::run(config, readiness, &services, shutdown.clone()).await
    };
    shutdown.cancel();
    // No service outlives the process's run.
    services.wait().await;
    Ok(result?)
}
