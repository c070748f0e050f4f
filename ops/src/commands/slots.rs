//! `projectorctl slots`: inspect and steer the cluster-wide query slots.

use std::fmt::Write as _;

use anyhow::Context;
use clap::Subcommand;
use projector_config::Config;
use projector_shared::redis_conn::Endpoint;

use super::slot_limiter;
use crate::views::View;

#[derive(Debug, Subcommand)]
pub enum SlotAction {
    /// Show the limit, how many slots are held and how many wait (with the oldest lease); --all
    /// lists every holder (worker, org, age, expiry, fencing token) and every waiter.
    ///
    /// With --json: prints {"limit" (stored, or null), "configured", "holders", "waiters", "oldest_lease_age_ms"}; with --all also "holder_list": [{lease_id, worker, org_id, fencing_token, age_ms, expires_in_ms}] and "waiter_list": [{id, info}] in arrival order
    Inspect {
        /// Every holder and every waiter, not only the counts
        #[arg(long)]
        all: bool,
    },
    /// Set the limit for every worker at once, without a restart; it wins over every worker's
    /// slots.limit until `slots reset-limit`. Lowering it interrupts no running query: it takes
    /// effect as leases are released. Raising it serves waiters immediately. A limit above
    /// query.referrer_limit (the query service's own limit, 100) is refused without --force.
    ///
    /// With --json: prints {"limit"}
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
    },
    /// Forget the limit stored in Redis: the next slot request writes that worker's configured
    /// slots.limit again. This hands the limit back to configuration.
    ///
    /// With --json: prints {"removed": true|false}
    ResetLimit {},
    /// Drop every lease and waiter (what reset_concurrent_count did in earlier designs). Holders learn at their next
    /// renewal that their lease is gone. Use only when the slots are known to be stuck.
    ///
    /// With --json: prints {"leases_dropped"}
    Reset {
        /// Confirm without a prompt (scripts); without it a terminal is asked, anything else refused
        #[arg(long)]
        yes: bool,
    },
}

/// The slots as `backend.kind` keeps them: in Redis, or in one machine's SQLite file.
enum Slots {
    Redis(projector_shared::slots::RedisSlotLimiter),
    File(projector_shared::slots::SqliteSlotLimiter),
}

impl Slots {
    async fn open(config: &Config) -> anyhow::Result<Slots> {
        if !config.on_file() {
            return Ok(Slots::Redis(slot_limiter(config)?));
        }
        let dsn = config.backend.dsn.clone().unwrap_or_default();
        let db = projector_sqlite::Database::open(&dsn, config.backend.busy_timeout).await?;
        let settings = projector_shared::slots::SqliteSlotSettings::new(config.slots.limit, config.slots.lease_ttl);
        Ok(Slots::File(projector_shared::slots::SqliteSlotLimiter::new(db, settings)))
    }

    /// Where the slots are, for messages.
    fn place(&self, config: &Config) -> String {
        match self {
            Slots::Redis(_) => Endpoint::from(&config.redis).redacted(),
            Slots::File(_) => config.backend.dsn.clone().unwrap_or_default(),
        }
    }

    /// What stores the limit, for messages: "Redis" or "the SQLite file".
    fn store(&self) -> &'static str {
        match self {
            Slots::Redis(_) => "Redis",
            Slots::File(_) => "the SQLite file",
        }
    }

    async fn inspect(&self) -> anyhow::Result<projector_shared::slots::SlotState> {
        Ok(match self {
            Slots::Redis(l) => l.inspect().await?,
            Slots::File(l) => l.inspect().await?,
        })
    }

    async fn set_limit(&self, limit: u32) -> anyhow::Result<()> {
        match self {
            Slots::Redis(l) => l.set_limit(limit).await?,
            Slots::File(l) => l.set_limit(limit).await?,
        }
        Ok(())
    }

    async fn clear_limit(&self) -> anyhow::Result<bool> {
        Ok(match self {
            Slots::Redis(l) => l.clear_limit().await?,
            Slots::File(l) => l.clear_limit().await?,
        })
    }

    async fn reset(&self) -> anyhow::Result<u64> {
        Ok(match self {
            Slots::Redis(l) => l.reset().await?,
            Slots::File(l) => l.reset().await?,
        })
    }
}

pub async fn run(config: &Config, action: SlotAction) -> anyhow::Result<View> {
    let limiter = Slots::open(config).await?;
    let place = limiter.place(config);
    let store = limiter.store();
    match action {
        SlotAction::Inspect { all, .. } => inspect(config, &limiter, all).await,
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
            limiter.set_limit(limit).await.with_context(|| format!("setting the limit in {place}"))?;
            Ok(View::new(
                serde_json::json!({"limit": limit}),
                format!(
                    "limit set to {limit} for every worker (stored in {store}; `projectorctl slots reset-limit` hands it back to config)\n"
                ),
            ))
        }
        SlotAction::ResetLimit { .. } => {
            let removed = limiter.clear_limit().await.with_context(|| format!("resetting the limit in {place}"))?;
            Ok(View::new(
                serde_json::json!({"removed": removed}),
                format!(
                    "{}; the next slot request stores its worker's slots.limit\n",
                    if removed { "stored limit removed" } else { "no limit was stored" }
                ),
            ))
        }
        SlotAction::Reset { yes } => {
            let held = limiter.inspect().await.with_context(|| format!("reading slots from {place}"))?;
            let effect = format!(
                "dropping {} lease(s) and {} waiter(s): their queries may still be running, so the fleet can exceed the limit until they end",
                held.holders.len(),
                held.waiters.len()
            );
            super::confirm(&effect, yes)?;
            let dropped = limiter.reset().await.with_context(|| format!("resetting slots in {place}"))?;
            Ok(View::new(serde_json::json!({"leases_dropped": dropped}), format!("dropped {dropped} leases and every waiter\n")))
        }
    }
}

/// `slots inspect`: the limit, holders and waiters (each listed with `--all`).
async fn inspect(config: &Config, limiter: &Slots, all: bool) -> anyhow::Result<View> {
    let (place, store) = (limiter.place(config), limiter.store());
    let mut out = String::new();
    let state = limiter.inspect().await.with_context(|| format!("reading slots from {place}"))?;
    let oldest = state.holders.iter().map(|h| h.age).max();
    let mut value = serde_json::json!({
        "limit": state.limit, "configured": config.slots.limit, "holders": state.holders.len(),
        "waiters": state.waiters.len(), "oldest_lease_age_ms": oldest.map(|a| a.as_millis() as u64),
    });
    if all {
        value["holder_list"] = state
            .holders
            .iter()
            .map(|h| {
                serde_json::json!({
                    "lease_id": h.lease_id, "worker": h.process, "org_id": h.org_id, "fencing_token": h.fencing_token,
                    "age_ms": h.age.as_millis() as u64, "expires_in_ms": h.expires_in.as_millis() as u64,
                })
            })
            .collect();
        value["waiter_list"] = state.waiters.iter().map(|(id, info)| serde_json::json!({"id": id, "info": info})).collect();
    }
    match state.limit {
        Some(limit) => {
            let _ = writeln!(out, "limit: {limit} (stored in {store}; it wins over every worker's slots.limit until `slots reset-limit`)");
        }
        None => {
            let _ = writeln!(
                out,
                "limit: none stored in {store} yet; the first slot request stores its worker's slots.limit (here: {})",
                config.slots.limit
            );
        }
    }
    let oldest = oldest.map(|a| format!(" (oldest lease {:.1}s)", a.as_secs_f64())).unwrap_or_default();
    let _ = writeln!(out, "holders: {}{oldest}", state.holders.len());
    for h in state.holders.iter().filter(|_| all) {
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
    let anyone = !state.holders.is_empty() || !state.waiters.is_empty();
    if anyone && !all {
        let _ = writeln!(out, "(`slots inspect --all` lists every holder and waiter)");
    }
    for (position, (id, info)) in state.waiters.iter().enumerate().filter(|_| all) {
        let _ = writeln!(out, "  #{} {id}  {info}", position + 1);
    }
    Ok(View::new(value, out))
}
