//! `projectorctl`: the operator's command line — inspect and steer the cluster-wide slots, the
//! rollout flag and run records in Redis.

use std::fmt::Write as _;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use projector_config::{Config, ConfigArgs};
use projector_process::telemetry::{self, LogFormat};
use projector_shared::redis_conn::Endpoint;
use projector_shared::rollout::{RATE_LIMIT_FLAG, Rollout};
use projector_shared::run::Outcome;
use projector_shared::run_record::{OrgIds, RunRecords};
use projector_shared::slots::{RedisSlotLimiter, RedisSlotSettings};
use projector_shared::{OrgId, RunId};

/// Inspect and steer a running Projector fleet through Redis (redis.url, or --redis-url).
///
/// Exit codes: 0 done; 1 the command failed (e.g. Redis unreachable, refused limit); 2 bad
/// configuration or usage.
#[derive(Debug, Parser)]
#[command(name = "projectorctl", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,

    /// Log format on stderr (json: every stderr line is a JSON object, errors included)
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The cluster-wide query slots.
    Slots {
        #[command(subcommand)]
        action: SlotAction,
    },
    /// The rollout flag organizations:spike-projection-rate-limit (limited path = slot first).
    /// Workers pick up a change within worker.rollout_refresh (2 s), without a restart.
    Flag {
        #[command(subcommand)]
        action: FlagAction,
    },
    /// A run's record: totals per outcome, and the orgs that did not complete.
    Run {
        /// Run id, as printed by projector-scheduler (e.g. run-20261122T130000Z)
        run_id: String,
        #[command(flatten)]
        config: ConfigArgs,
    },
}

#[derive(Debug, Subcommand)]
enum FlagAction {
    /// Show the flag as stored and how many of orgs 1..=N it routes to each path.
    Show {
        #[arg(long, default_value_t = 1000)]
        sample: u64,
        #[command(flatten)]
        config: ConfigArgs,
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
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// Forget the flag: back to the safe default, every org limited.
    Clear {
        #[command(flatten)]
        config: ConfigArgs,
    },
}

#[derive(Debug, Subcommand)]
enum SlotAction {
    /// Show the limit in force, every holder (worker, org, age, expiry, fencing token) and every waiter.
    Inspect {
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// Set the limit for every worker at once, without a restart; it wins over every worker's
    /// slots.limit until `slots reset-limit`. Lowering it interrupts no running query: it takes
    /// effect as leases are released. Raising it serves waiters immediately. A limit above
    /// query.referrer_limit (the query service's own limit, 100) is refused without --force.
    SetLimit {
        /// New limit; keep it below the query service's per-referrer limit
        #[arg(required_unless_present = "from_config", conflicts_with = "from_config")]
        limit: Option<u32>,
        /// Use slots.limit from the configuration (file, environment, --set) instead
        #[arg(long)]
        from_config: bool,
        /// Accept a limit above query.referrer_limit (the query service will answer 429s)
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// Forget the limit stored in Redis: the next slot request writes that worker's configured
    /// slots.limit again. This hands the limit back to configuration.
    ResetLimit {
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// Drop every lease and waiter (what reset_concurrent_count did in earlier designs). Holders learn at their next
    /// renewal that their lease is gone. Use only when the slots are known to be stuck.
    Reset {
        #[command(flatten)]
        config: ConfigArgs,
    },
}

impl Command {
    fn config_args(&self) -> &ConfigArgs {
        match self {
            Command::Run { config, .. }
            | Command::Flag { action: FlagAction::Show { config, .. } | FlagAction::Set { config, .. } | FlagAction::Clear { config } }
            | Command::Slots {
                action:
                    SlotAction::Inspect { config }
                    | SlotAction::SetLimit { config, .. }
                    | SlotAction::ResetLimit { config }
                    | SlotAction::Reset { config },
            } => config,
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    telemetry::init(cli.log_format);
    let config = match projector_process::runtime::config_or_exit(cli.command.config_args().load(Vec::new())) {
        Ok(c) => c,
        Err(code) => return code,
    };
    match projector_process::runtime::block_on_main(run(cli.command, config)) {
        Some(text) => {
            telemetry::print(&text);
            ExitCode::SUCCESS
        }
        None => ExitCode::FAILURE,
    }
}

/// Runs the command; returns what it prints on stdout.
async fn run(command: Command, config: Config) -> anyhow::Result<String> {
    match command {
        Command::Slots { action } => slots(&config, action).await,
        Command::Flag { action } => flag(&config, action).await,
        Command::Run { run_id, .. } => run_record(&config, &run_id).await,
    }
}

fn connection(config: &Config) -> anyhow::Result<redis::aio::ConnectionManager> {
    let endpoint = Endpoint::from(&config.redis);
    let (_, conn) = projector_shared::redis_conn::connection_manager(&endpoint, std::time::Duration::from_secs(5))
        .with_context(|| format!("connecting to {}", endpoint.redacted()))?;
    Ok(conn)
}

async fn flag(config: &Config, action: FlagAction) -> anyhow::Result<String> {
    let mut conn = connection(config)?;
    let mut rollout = Rollout::load(&mut conn).await?;
    let sample = match action {
        FlagAction::Show { sample, .. } => sample,
        FlagAction::Set { enabled, percentage, allow, deny, .. } => {
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
        FlagAction::Clear { .. } => {
            rollout = Rollout::default();
            let _: () = redis::cmd("DEL").arg(projector_shared::keys::flag(RATE_LIMIT_FLAG)).query_async(&mut conn).await?;
            1000
        }
    };
    let show = |v: Option<String>| v.unwrap_or_else(|| "unset".to_owned());
    let mut out = String::new();
    let _ = writeln!(out, "{RATE_LIMIT_FLAG}");
    let _ = writeln!(out, "  enabled: {}", show(rollout.enabled.map(|e| e.to_string())));
    let _ = writeln!(out, "  percentage: {}", show(rollout.percentage.map(|p| p.to_string())));
    let _ = writeln!(out, "  allow: {:?}", rollout.allow.iter().map(|o| o.0).collect::<Vec<_>>());
    let _ = writeln!(out, "  deny: {:?}", rollout.deny.iter().map(|o| o.0).collect::<Vec<_>>());
    let limited = (1..=sample).filter(|o| rollout.is_limited(OrgId(*o))).count();
    let _ = writeln!(out, "  of orgs 1..={sample}: {limited} limited (slot first), {} legacy", sample as usize - limited);
    Ok(out)
}

async fn run_record(config: &Config, run_id: &str) -> anyhow::Result<String> {
    let records = RunRecords::new(connection(config)?, config.runs.retention);
    let run_id = RunId(run_id.to_owned());
    let Some(s) = records.summary(&run_id, OrgIds::List).await? else {
        anyhow::bail!("no record of run {run_id} in {} (records are kept 7 days)", Endpoint::from(&config.redis).redacted());
    };
    let mut out = format!("run {}: {} of {} orgs accounted for\n", s.run_id, s.accounted(), s.orgs_total);
    for outcome in Outcome::ALL {
        let _ = writeln!(out, "  {:<18}{:>8}", outcome.as_str(), s.count(outcome));
    }
    let ids = |v: &[OrgId]| v.iter().map(|o| o.0.to_string()).collect::<Vec<_>>().join(",");
    if !s.skipped_org_ids.is_empty() {
        let _ = writeln!(out, "  not queried (skipped_no_slot, slot_unavailable, skipped_rate_policy): {}", ids(&s.skipped_org_ids));
    }
    if !s.failed_org_ids.is_empty() {
        let _ = writeln!(out, "  failed (rate_limited, failed): {}", ids(&s.failed_org_ids));
    }
    Ok(out)
}

async fn slots(config: &Config, action: SlotAction) -> anyhow::Result<String> {
    let limiter = RedisSlotLimiter::new(&config.redis, RedisSlotSettings::new(config.slots.limit, config.slots.lease_ttl))?;
    let redis = Endpoint::from(&config.redis).redacted();
    let mut out = String::new();
    match action {
        SlotAction::Inspect { .. } => {
            let state = limiter.inspect().await.with_context(|| format!("reading slots from {redis}"))?;
            match state.limit {
                Some(limit) => {
                    let _ = writeln!(
                        out,
                        "limit: {limit} (stored in Redis; it wins over every worker's slots.limit until `slots reset-limit`)"
                    );
                }
                None => {
                    let _ = writeln!(
                        out,
                        "limit: none stored in Redis yet; the first slot request stores its worker's slots.limit (here: {})",
                        config.slots.limit
                    );
                }
            }
            let _ = writeln!(out, "holders: {}", state.holders.len());
            for h in &state.holders {
                let _ = writeln!(
                    out,
                    "  lease {}  worker {}  org {}  token {}  age {:.1}s  expires in {:.1}s",
                    h.lease_id,
                    h.process,
                    h.org_id,
                    h.fencing_token,
                    h.age.as_secs_f64(),
                    h.expires_in.as_secs_f64()
                );
            }
            let _ = writeln!(out, "waiters: {}", state.waiters.len());
            for (position, (id, info)) in state.waiters.iter().enumerate() {
                let _ = writeln!(out, "  #{} {id}  {info}", position + 1);
            }
        }
        SlotAction::SetLimit { limit, from_config, force, .. } => {
            let limit = if from_config { config.slots.limit } else { limit.unwrap_or(config.slots.limit) };
            anyhow::ensure!(limit >= 1, "a limit of 0 would stop every query; use 1 or more");
            let ceiling = config.query.referrer_limit;
            if limit > ceiling {
                anyhow::ensure!(
                    force,
                    "refusing limit {limit}: it is above query.referrer_limit {ceiling}, the query service's own limit for {}, so queries beyond {ceiling} would get 429s. Use a lower limit, or --force if the service's limit was raised (and set query.referrer_limit to match)",
                    config.query.referrer
                );
                tracing::warn!(limit, referrer_limit = ceiling, "slot limit set above the query service's per-referrer limit (--force)");
            }
            limiter.set_limit(limit).await.with_context(|| format!("setting the limit in {redis}"))?;
            let _ = writeln!(
                out,
                "limit set to {limit} for every worker (stored in Redis; `projectorctl slots reset-limit` hands it back to config)"
            );
        }
        SlotAction::ResetLimit { .. } => {
            let removed = limiter.clear_limit().await.with_context(|| format!("resetting the limit in {redis}"))?;
            let _ = writeln!(
                out,
                "{}; the next slot request stores its worker's slots.limit",
                if removed { "stored limit removed" } else { "no limit was stored" }
            );
        }
        SlotAction::Reset { .. } => {
            let dropped = limiter.reset().await.with_context(|| format!("resetting slots in {redis}"))?;
            let _ = writeln!(out, "dropped {dropped} leases and every waiter");
        }
    }
    Ok(out)
}
