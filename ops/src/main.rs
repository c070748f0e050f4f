//! `projectorctl`: the operator's command line — inspect and steer the cluster-wide slots in Redis.

use anyhow::Context;
use clap::{Parser, Subcommand};
use projector_config::ConfigArgs;
use projector_shared::slots::{RedisSlotLimiter, RedisSlotSettings};

/// Inspect and steer a running Projector fleet through Redis (redis.url, or --redis-url).
#[derive(Debug, Parser)]
#[command(name = "projectorctl", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,

    #[command(flatten)]
    config: ConfigArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The cluster-wide query slots.
    Slots {
        #[command(subcommand)]
        action: SlotAction,
    },
}

#[derive(Debug, Subcommand)]
enum SlotAction {
    /// Show the limit, every holder (worker, org, age, expiry, fencing token) and every waiter.
    Inspect,
    /// Set the limit for every worker at once, without a restart. Lowering it interrupts no running
    /// query: it takes effect as leases are released. Raising it serves waiters immediately.
    SetLimit {
        /// New limit (keep it below the query service's per-referrer limit of 100)
        limit: u32,
    },
    /// Drop every lease and waiter (the seed's reset_concurrent_count). Holders learn at their next
    /// renewal that their lease is gone. Use only when the slots are known to be stuck.
    Reset,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let config = cli.config.load_or_exit();
    let limiter = RedisSlotLimiter::new(&config.redis.url, RedisSlotSettings::new(config.slots.limit, config.slots.lease_ttl))?;
    let Command::Slots { action } = cli.command;
    let redis = &config.redis.url;
    match action {
        SlotAction::Inspect => {
            let state = limiter.inspect().await.with_context(|| format!("reading slots from {redis}"))?;
            match state.limit {
                Some(limit) => println!("limit: {limit} (in Redis)"),
                None => println!("limit: not set in Redis yet (workers will set {})", config.slots.limit),
            }
            println!("holders: {}", state.holders.len());
            for h in &state.holders {
                println!(
                    "  lease {}  worker {}  org {}  token {}  age {:.1}s  expires in {:.1}s",
                    h.lease_id, h.holder, h.org_id, h.fencing_token, h.age.as_secs_f64(), h.expires_in.as_secs_f64()
                );
            }
            println!("waiters: {}", state.waiters.len());
            for (position, (id, info)) in state.waiters.iter().enumerate() {
                println!("  #{} {id}  {info}", position + 1);
            }
        }
        SlotAction::SetLimit { limit } => {
            anyhow::ensure!(limit >= 1, "a limit of 0 would stop every query; use 1 or more");
            limiter.set_limit(limit).await.with_context(|| format!("setting the limit in {redis}"))?;
            println!("limit set to {limit} for every worker");
        }
        SlotAction::Reset => {
            let dropped = limiter.reset().await.with_context(|| format!("resetting slots in {redis}"))?;
            println!("dropped {dropped} leases and every waiter");
        }
    }
    Ok(())
}
