//! `projector-worker`: the distributed worker process (jobs from Redis). The embedded run hosts
//! the same pipeline in-process today; this binary's Redis consumer is the distributed-pipeline work.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use projector_config::ConfigArgs;

/// Takes spike-projection jobs from Redis, holds a cluster-wide slot for each query, and stores projections.
#[derive(Debug, Parser)]
#[command(name = "projector-worker", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,

    #[command(flatten)]
    config: ConfigArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Consume jobs until SIGTERM (not in this build yet: use `projector-scheduler run-once --embedded`).
    Run,
    /// Print the effective configuration, after every layer, and exit.
    Config,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = cli.config.load_or_exit();
    match cli.command {
        Command::Config => {
            for key in projector_config::KEYS {
                println!("{} = {:?}", key.name, (key.get)(&config));
            }
            ExitCode::SUCCESS
        }
        Command::Run => {
            eprintln!(
                "error: the Redis-backed worker is not in this build yet; run a whole batch in one process with `projector-scheduler run-once --embedded`"
            );
            ExitCode::FAILURE
        }
    }
}
