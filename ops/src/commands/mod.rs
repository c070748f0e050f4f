//! `projectorctl`'s commands: the command tree, one file per command group, and the dispatch.

use projector_config::Config;
use projector_shared::redis_conn::Endpoint;
use projector_shared::slots::{RedisSlotLimiter, RedisSlotSettings};

use anyhow::Context;
use clap::Subcommand;

use crate::{views, web};

pub mod adaptive;
pub mod db;
pub mod flag;
pub mod jobs;
pub mod rate;
pub mod runs;
pub mod slots;
pub mod status;

use adaptive::AdaptiveAction;
use db::DbAction;
use flag::FlagAction;
use jobs::JobsAction;
use rate::RateAction;
use runs::RunsAction;
use slots::SlotAction;

#[derive(Debug, Subcommand)]
pub enum Command {
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
    /// The rate policy on query starts (`[rate]`) for query.referrer: show it live, or change it
    /// for every worker at once, at runtime (workers apply it within worker.rollout_refresh).
    Rate {
        #[command(subcommand)]
        action: RateAction,
    },
    /// The fleet's adaptive multiplier on the slot limit and every rate (`[adaptive]`).
    Adaptive {
        #[command(subcommand)]
        action: AdaptiveAction,
    },
    /// The PostgreSQL projection store (sink.postgres_url): its schema migrations.
    Db {
        #[command(subcommand)]
        action: DbAction,
    },
    /// A run's record: totals per outcome, and the orgs that did not complete (same as `runs show`).
    ///
    /// With --json: prints the same object as `runs show --json`
    Run {
        /// Run id, as printed by projector-scheduler (e.g. run-20261122T130000Z)
        run_id: String,
    },
    /// Pause the fleet: every worker stops taking jobs within a second and finishes the ones
    /// running. Scheduler ticks meanwhile are enqueued or skipped as schedule.when_paused says.
    ///
    /// With --json: prints {"paused": true, "reason", "since_ms"}
    Pause {
        /// Why, for whoever looks next (shown by `status`)
        #[arg(long, default_value = "paused by an operator")]
        reason: String,
    },
    /// End a pause: workers take jobs again within a second.
    ///
    /// With --json: prints {"paused": false, "was_paused"}
    Resume {},
    /// Dead-lettered jobs: list them with their reason, requeue them, or purge them.
    Jobs {
        #[command(subcommand)]
        action: JobsAction,
    },
    /// Recent runs, and one run in detail.
    Runs {
        #[command(subcommand)]
        action: RunsAction,
    },
    /// The workers alive now: host, pid, version, start time, jobs in flight, slots held, last
    /// error. A worker leaves the list 15 s after its last heartbeat.
    ///
    /// With --json: prints {"alive", "workers": [{name, host, pid, version, started, jobs_in_flight, slots_held, last_error, beat_ms_ago, registered}]}
    Workers {},
    /// Everything recorded about one org in one run, in order: how the flag routed it, its slot
    /// wait, rate admission, query answer, store write (fencing token) and outcome, per attempt;
    /// for an org still under way, also where it is now (holding a slot, or its place in line).
    ///
    /// With --json: prints {run_id, org_id, outcome, attempt, now: null (it ended) or {holding_slot, waiting_for_slot}, attempts: [{at_ms, attempt, outcome, worker, why: {kind, message}, steps: [{step: routed|slot|rate|query|store|rescheduled|cancelled, …}]}]}
    Explain {
        /// Run id, as printed by projector-scheduler or `runs list`
        run_id: String,
        /// Organization id
        org_id: u64,
    },
    /// A status page: live status, run history, run detail with per-org reasons, and workers, as
    /// HTML at / and as JSON under /api/ (the same objects as `--json`). Read-only unless
    /// --allow-actions.
    Serve {
        /// Address to listen on
        #[arg(long, default_value = "127.0.0.1:9000")]
        addr: std::net::SocketAddr,
        /// Offer pause, resume, retry and cancel, each requiring ops.action_token (set in config
        /// or PROJECTOR_OPS_ACTION_TOKEN); every action is logged
        #[arg(long)]
        allow_actions: bool,
    },
    /// One screen: the limit in force and its source, slots in use and waiters, the last hour's
    /// slot peaks, the queue (ready, scheduled, in flight, dead), workers alive, the latest run's
    /// progress with an ETA, and the rollout flag.
    ///
    /// With --json: prints {"redis", "limit": {in_force, source, stored, configured, adaptive_multiplier}, "slots": {in_use, waiters, oldest_wait_ms}, "slot_history": {now_ms, samples: [{at_ms, in_use, limit, service_used}], peak_in_use, peak_limit, peak_service_used}, "queue": {ready, scheduled, in_flight, dead}, "workers": {alive, jobs_in_flight}, "run": (as in `runs list`) or null, "paused": null or {reason, since_ms}, "rollout": {enabled, percentage, allow, deny}}
    Status {
        /// Redraw every this often (e.g. 2s) until Ctrl-C
        #[arg(long, value_name = "INTERVAL", value_parser = humantime::parse_duration)]
        watch: Option<std::time::Duration>,
    },
}

/// Runs the command; returns what it prints on stdout.
pub async fn run(command: Command, config: Config, json: bool) -> anyhow::Result<String> {
    // Every command but `db` reads Redis: a wrong password or a full memory is named as such
    // here, once, rather than as whatever the first call happens to time out on. The status page
    // starts anyway: it is what on-call opens while Redis is down, and each view names the error.
    if config.on_file() {
        refuse_on_file(&command)?;
    } else if !matches!(command, Command::Db { .. } | Command::Serve { .. }) {
        projector_shared::redis_conn::check(&connection(&config)?, std::time::Duration::from_secs(3))
            .await
            .with_context(|| format!("reaching Redis at {}", Endpoint::from(&config.redis).redacted()))?;
    }
    let view = match command {
        Command::Slots { action } => slots::run(&config, action).await?,
        Command::Flag { action } => flag::run(&config, action).await?,
        Command::Run { run_id, .. } => views::runs_show(&config, &run_id, views::Listed::First).await?,
        Command::Runs { action } => runs::run(&config, action).await?,
        Command::Explain { run_id, org_id, .. } => views::explain(&config, &run_id, org_id).await?,
        Command::Serve { addr, allow_actions, .. } => return web::serve(config, addr, allow_actions).await.map(|()| String::new()),
        Command::Workers { .. } => views::workers(&config).await?,
        Command::Jobs { action } => jobs::run(&config, action).await?,
        Command::Pause { reason, .. } => status::pause(&config, &reason).await?,
        Command::Resume { .. } => status::resume(&config).await?,
        Command::Status { watch: None, .. } => views::status(&config).await?,
        Command::Status { watch: Some(every), .. } => return status::watch(&config, every, json).await,
        Command::Rate { action } => rate::run(&config, action).await?,
        Command::Adaptive { action } => adaptive::run(&config, action).await?,
        Command::Db { action } => db::run(&config, action).await?,
    };
    Ok(views::render(&view, json))
}

/// The commands that read what only Redis keeps (rate and adaptive state, dead jobs) are refused on the SQLite file with what to use instead; the rest
/// work on both.
fn refuse_on_file(command: &Command) -> anyhow::Result<()> {
    let name = match command {
        Command::Rate { .. } => "rate",
        Command::Adaptive { .. } => "adaptive",
        Command::Jobs { .. } => "jobs",
        _ => return Ok(()),
    };
    anyhow::bail!(
        "`projectorctl {name}` reads state only the Redis backend keeps; with backend.kind = \"sqlite\" use `projectorctl status`, `runs`, `explain`, `pause`, `resume`, `flag`, `slots`, `workers` and `serve` (ARCHITECTURE.md, \"Backends\", lists what each backend has)"
    )
}

/// The fleet's slot limiter, as configured.
pub(crate) fn slot_limiter(config: &Config) -> anyhow::Result<RedisSlotLimiter> {
    Ok(RedisSlotLimiter::new(&config.redis, RedisSlotSettings::new(config.slots.limit, config.slots.lease_ttl))?)
}

pub(crate) fn connection(config: &Config) -> anyhow::Result<projector_shared::redis_conn::RedisConn> {
    let endpoint = Endpoint::from(&config.redis);
    let (_, conn) = projector_shared::redis_conn::connection_manager(&endpoint, std::time::Duration::from_secs(5))
        .with_context(|| format!("connecting to {}", endpoint.redacted()))?;
    Ok(conn)
}

/// Asks before a change that lowers protection or destroys state: `effect` says what it will do.
/// `--yes` confirms; on a terminal the operator is asked; anywhere else (a script, a pipe) the
/// change is refused with the effect and how to confirm, and nothing changes.
pub(crate) fn confirm(effect: &str, yes: bool) -> anyhow::Result<()> {
    use std::io::{BufRead, IsTerminal, Write};
    if yes {
        return Ok(());
    }
    if !std::io::stdin().is_terminal() {
        anyhow::bail!("{effect}. Nothing changed: run it again with --yes to confirm");
    }
    eprint!("{effect}.\nContinue? [y/N] ");
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    if matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes") {
        Ok(())
    } else {
        anyhow::bail!("not confirmed; nothing changed")
    }
}
