//! `projectorctl`: the operator's command line. Today it only documents what it will do.

use clap::{Parser, Subcommand};

/// Inspect and steer a running Projector fleet through Redis.
///
/// Slot commands (inspect, reset, set-limit) and flag commands arrive with the Redis slot limiter
/// and the distributed pipeline; see ops/RUNBOOK.md.
#[derive(Debug, Parser)]
#[command(name = "projectorctl", version)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Show the slot limit, holders and waiters (not in this build yet)
    Slots,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        None => {
            use clap::CommandFactory;
            Cli::command().print_help()?;
            Ok(())
        }
        Some(Command::Slots) => anyhow::bail!("slot inspection needs the Redis slot limiter, which this build does not have yet"),
    }
}
