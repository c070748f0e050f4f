//! `projector-worker`: load config, set up logging and metrics, run the worker until SIGTERM.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use projector_config::ConfigArgs;
use projector_shared::telemetry::{self, LogFormat};

/// Takes spike-projection jobs from Redis, holds a cluster-wide slot for each query, and stores projections.
///
/// Configuration: defaults < --config FILE < PROJECTOR_<SECTION>_<KEY> environment < flags.
/// See config.example.toml for every key.
#[derive(Debug, Parser)]
#[command(name = "projector-worker", version)]
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
    /// Consume jobs from redis.url until SIGTERM or Ctrl-C, worker.concurrency at a time.
    ///
    /// Serves /metrics (Prometheus text) and /healthz on worker.metrics_addr. On SIGTERM it stops
    /// taking jobs, lets in-flight jobs finish within worker.shutdown_grace, releases every slot
    /// and exits 0. A Redis outage is survived: the job loop restarts with backoff.
    Run,
    /// Print the effective configuration, after every layer, and exit.
    Config,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = cli.config.load_or_exit();
    match cli.command {
        Command::Config => {
            use std::io::Write;
            let mut out = std::io::stdout().lock();
            for key in projector_config::KEYS {
                // A closed pipe (`| head`) ends the listing quietly instead of panicking.
                if writeln!(out, "{} = {:?}", key.name, (key.get)(&config)).is_err() {
                    break;
                }
            }
            ExitCode::SUCCESS
        }
        Command::Run => {
            telemetry::init(cli.log_format);
            match projector_shared::runtime::block_on_main(run(config)) {
                Some(()) => ExitCode::SUCCESS,
                None => ExitCode::FAILURE,
            }
        }
    }
}

async fn run(config: projector_config::Config) -> anyhow::Result<()> {
    let shutdown = projector_shared::shutdown::on_signal();
    let (_, health_conn) = projector_shared::redis_conn::connection_manager(&config.redis, std::time::Duration::from_secs(1))?;
    let readiness = projector_worker::metrics_http::Readiness::new(health_conn);
    let (_, server) = projector_worker::metrics_http::serve(config.worker.metrics_addr, readiness.clone(), shutdown.clone()).await?;
    let result = projector_worker::serve::run(config, readiness, shutdown.clone()).await;
    shutdown.cancel();
    if let Err(e) = server.await {
        tracing::error!(error = %e, "metrics endpoint task panicked");
    }
    Ok(result?)
}
