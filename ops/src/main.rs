//! `projectorctl`: the operator's command line — inspect and steer the cluster-wide slots, the
//! rollout flag and run records in Redis.

use std::process::ExitCode;

mod actions;
mod commands;
mod file_status;
mod records;
mod views;
mod web;

use commands::Command;
pub(crate) use commands::{connection, slot_limiter};

use clap::Parser;
use projector_config::ConfigArgs;
use projector_process::telemetry;

/// Inspect and steer a running Projector fleet through Redis (redis.url, or --redis-url).
///
/// Exit codes: 0 done; 1 the command failed (e.g. Redis unreachable, refused limit); 2 bad
/// configuration or usage.
#[derive(Debug, Parser)]
#[command(name = "projectorctl", version = projector_process::VERSION)]
struct Cli {
    #[command(subcommand)]
    command: Command,

    #[command(flatten)]
    log: telemetry::LogArgs,

    /// Print one JSON object instead of text (the shape is in each command's --help); before or
    /// after the subcommand
    #[arg(long, global = true)]
    json: bool,

    /// The configuration flags, global: before the subcommand (as with kubectl or redis-cli) or
    /// after it.
    #[command(flatten)]
    config: ConfigArgs,
}

fn main() -> ExitCode {
    let cli: Cli = projector_process::telemetry::parse_args();
    telemetry::init(cli.log.log_format);
    // Every command but `db` reads or changes the fleet's shared state.
    let loaded = cli.config.load(Vec::new()).and_then(|c| match cli.command {
        commands::Command::Db { .. } => Ok(c),
        _ => c.backend_for_fleet("projectorctl").map(|()| c),
    });
    let config = match projector_process::runtime::config_or_exit(loaded) {
        Ok(c) => c,
        Err(code) => return code,
    };
    match projector_process::runtime::block_on_main(commands::run(cli.command, config, cli.json)) {
        Some(text) => {
            telemetry::print(&text);
            ExitCode::SUCCESS
        }
        None => ExitCode::FAILURE,
    }
}
