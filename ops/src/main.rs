//! `projectorctl`: the operator's command line — inspect and steer the cluster-wide slots, the
//! rollout flag and run records in Redis.

use anyhow::Context;
use clap::{Parser, Subcommand};
use projector_config::ConfigArgs;
use projector_shared::rollout::{RATE_LIMIT_FLAG, Rollout};
use projector_shared::run::Outcome;
use projector_shared::run_record::RunRecords;
use projector_shared::slots::{RedisSlotLimiter, RedisSlotSettings};
use projector_shared::{OrgId, RunId};

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
    /// The rollout flag organizations:spike-projection-rate-limit (limited path = slot first).
    /// Workers pick up a change within 2 s, without a restart.
    Flag {
        #[command(subcommand)]
        action: FlagAction,
    },
    /// A run's record: totals per outcome, and the skipped and failed organizations.
    Run {
        /// Run id, as printed by projector-scheduler (e.g. run-20261122T130000Z)
        run_id: String,
    },
}

#[derive(Debug, Subcommand)]
enum FlagAction {
    /// Show the flag as stored and how many of orgs 1..=N it routes to each path.
    Show {
        #[arg(long, default_value_t = 1000)]
        sample: u64,
    },
    /// Change the flag. Unset fields keep their value; never set at all, everyone is limited.
    Set {
        /// false: everyone not on the allow list takes the legacy path (no slot)
        #[arg(long)]
        enabled: Option<bool>,
        /// Share of orgs (0-100) on the limited path; raising it keeps the orgs already in
        #[arg(long, value_parser = clap::value_parser!(u8).range(0..=100))]
        percentage: Option<u8>,
        /// Comma-separated org ids always on the limited path
        #[arg(long, value_delimiter = ',')]
        allow: Option<Vec<u64>>,
        /// Comma-separated org ids always on the legacy path (beats --allow)
        #[arg(long, value_delimiter = ',')]
        deny: Option<Vec<u64>>,
    },
    /// Forget the flag: back to the safe default, every org limited.
    Clear,
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
    let redis = config.redis.url.clone();
    match cli.command {
        Command::Slots { action } => slots(&config, action).await,
        Command::Flag { action } => flag(&redis, action).await,
        Command::Run { run_id } => run(&redis, &run_id).await,
    }
}

fn connection(redis: &str) -> anyhow::Result<redis::aio::ConnectionManager> {
    let (_, conn) = projector_shared::redis_conn::connection_manager(redis, std::time::Duration::from_secs(5))
        .with_context(|| format!("connecting to {redis}"))?;
    Ok(conn)
}

async fn flag(redis: &str, action: FlagAction) -> anyhow::Result<()> {
    let mut conn = connection(redis)?;
    let mut rollout = Rollout::load(&mut conn).await?;
    let sample = match action {
        FlagAction::Show { sample } => sample,
        FlagAction::Set { enabled, percentage, allow, deny } => {
            rollout.enabled = enabled.or(rollout.enabled);
            rollout.percentage = percentage.or(rollout.percentage);
            if let Some(ids) = allow {
                rollout.allow = ids.into_iter().map(OrgId).collect();
            }
            if let Some(ids) = deny {
                rollout.deny = ids.into_iter().map(OrgId).collect();
            }
            rollout.save(&mut conn).await?;
            1000
        }
        FlagAction::Clear => {
            rollout = Rollout::default();
            let _: () = redis::cmd("DEL").arg(projector_shared::keys::flag(RATE_LIMIT_FLAG)).query_async(&mut conn).await?;
            1000
        }
    };
    let show = |v: Option<String>| v.unwrap_or_else(|| "unset".to_owned());
    println!("{RATE_LIMIT_FLAG}");
    println!("  enabled: {}", show(rollout.enabled.map(|e| e.to_string())));
    println!("  percentage: {}", show(rollout.percentage.map(|p| p.to_string())));
    println!("  allow: {:?}", rollout.allow.iter().map(|o| o.0).collect::<Vec<_>>());
    println!("  deny: {:?}", rollout.deny.iter().map(|o| o.0).collect::<Vec<_>>());
    let limited = (1..=sample).filter(|o| rollout.is_limited(OrgId(*o))).count();
    println!("  of orgs 1..={sample}: {limited} limited (slot first), {} legacy", sample as usize - limited);
    Ok(())
}

async fn run(redis: &str, run_id: &str) -> anyhow::Result<()> {
    let records = RunRecords::new(connection(redis)?);
    let run_id = RunId(run_id.to_owned());
    let Some(s) = records.summary(&run_id, true).await? else {
        anyhow::bail!("no record of run {run_id} in {redis} (records are kept 7 days)");
    };
    println!("run {}: {} of {} orgs accounted for", s.run_id, s.accounted(), s.orgs_total);
    for outcome in Outcome::ALL {
        println!("  {:<18}{:>8}", outcome.as_str(), s.count(outcome));
    }
    let ids = |v: &[OrgId]| v.iter().map(|o| o.0.to_string()).collect::<Vec<_>>().join(",");
    if !s.skipped_org_ids.is_empty() {
        println!("  skipped: {}", ids(&s.skipped_org_ids));
    }
    if !s.failed_org_ids.is_empty() {
        println!("  failed or not queried: {}", ids(&s.failed_org_ids));
    }
    Ok(())
}

async fn slots(config: &projector_config::Config, action: SlotAction) -> anyhow::Result<()> {
    let limiter = RedisSlotLimiter::new(&config.redis.url, RedisSlotSettings::new(config.slots.limit, config.slots.lease_ttl))?;
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
                    h.lease_id,
                    h.holder,
                    h.org_id,
                    h.fencing_token,
                    h.age.as_secs_f64(),
                    h.expires_in.as_secs_f64()
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
