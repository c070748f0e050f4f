//! `projectorctl`: the operator's command line — inspect and steer the cluster-wide slots, the
//! rollout flag and run records in Redis.

use std::fmt::Write as _;
use std::process::ExitCode;

mod actions;
mod views;
mod web;

use anyhow::Context;
use clap::{Parser, Subcommand};
use projector_config::{Config, ConfigArgs};
use projector_process::telemetry::{self, LogFormat};
use projector_shared::rate::{RatePolicy, RedisRateLimiter, store};
use projector_shared::redis_conn::Endpoint;
use projector_shared::rollout::{RATE_LIMIT_FLAG, Rollout};

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

    /// The configuration flags, given before the subcommand (as with kubectl or redis-cli); the
    /// same flags after it win where both are given.
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
    Run {
        /// Run id, as printed by projector-scheduler (e.g. run-20261122T130000Z)
        run_id: String,
        /// Print the same object as `runs show --json`
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// Pause the fleet: every worker stops taking jobs within a second and finishes the ones
    /// running. Scheduler ticks meanwhile are enqueued or skipped as schedule.when_paused says.
    Pause {
        /// Why, for whoever looks next (shown by `status`)
        #[arg(long, default_value = "paused by an operator")]
        reason: String,
        /// Print {"paused": true, "reason", "since_ms"}
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// End a pause: workers take jobs again within a second.
    Resume {
        /// Print {"paused": false, "was_paused"}
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        config: ConfigArgs,
    },
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
    Workers {
        /// Print {"alive", "workers": [{name, host, pid, version, started, jobs_in_flight,
        /// slots_held, last_error, beat_ms_ago, registered}]}
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// Everything recorded about one org in one run, in order: how the flag routed it, its slot
    /// wait, rate admission, query answer, store write (fencing token) and outcome, per attempt;
    /// for an org still under way, also where it is now (holding a slot, or its place in line).
    Explain {
        /// Run id, as printed by projector-scheduler or `runs list`
        run_id: String,
        /// Organization id
        org_id: u64,
        /// Print {run_id, org_id, outcome, attempt, now: null (it ended) or {holding_slot,
        /// waiting_for_slot}, attempts: [{at_ms, attempt, outcome, worker, why: {kind, message},
        /// steps: [{step: routed|slot|rate|query|store|rescheduled|cancelled, …}]}]}
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        config: ConfigArgs,
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
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// One screen: the limit in force and its source, slots in use and waiters, the queue (ready,
    /// scheduled, in flight, dead), workers alive, the latest run's progress with an ETA, and the
    /// rollout flag.
    Status {
        /// Print {"redis", "limit": {in_force, source, stored, configured, adaptive_multiplier},
        /// "slots": {in_use, waiters, oldest_wait_ms}, "queue": {ready, scheduled, in_flight, dead},
        /// "workers": {alive, jobs_in_flight}, "run": (as in `runs list`) or null, "paused": null or {reason, since_ms},
        /// "rollout": {enabled, percentage, allow, deny}}
        #[arg(long)]
        json: bool,
        /// Redraw every this often (e.g. 2s) until Ctrl-C
        #[arg(long, value_name = "INTERVAL", value_parser = humantime::parse_duration)]
        watch: Option<std::time::Duration>,
        #[command(flatten)]
        config: ConfigArgs,
    },
}

#[derive(Debug, Subcommand)]
enum JobsAction {
    /// Dead-lettered jobs (payloads a job loop could not fetch, jobs apalis killed), with why.
    Dead {
        /// How many to list (sorted by id)
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Print {"dead": n, "jobs": [{id, reason, sample}]}
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// Put dead jobs back on the ready list with fresh metadata; a payload that is not JSON stays dead.
    Requeue {
        /// Job ids, as `jobs dead` lists them
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        ids: Vec<String>,
        /// Every dead job
        #[arg(long)]
        all: bool,
        /// Print {"requeued", "left_dead"}
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// Delete dead jobs: their payload and metadata are gone for good.
    Purge {
        /// Job ids, as `jobs dead` lists them
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        ids: Vec<String>,
        /// Every dead job
        #[arg(long)]
        all: bool,
        /// Print {"purged"}
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        config: ConfigArgs,
    },
}

#[derive(Debug, Subcommand)]
enum RunsAction {
    /// Recent runs, newest first: tick, orgs, completed, other outcomes, duration and state
    /// (fanning out, running, done, cancelled, or skipped: a tick not fanned out while an
    /// earlier run was open, schedule.overlap).
    List {
        /// How many runs
        #[arg(long, default_value_t = 20)]
        limit: usize,
        /// Print {"runs": [{run_id, tick, orgs_total, accounted, state, duration_ms, finished,
        /// cancelled, retried, eta_s, outcomes: {<outcome>: n}, skipped (why, or null)}]}
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// One run: the count per outcome, every org that did not complete with its reason (error
    /// kind and message, slot wait, retry_after), and progress over time.
    Show {
        /// Run id, as printed by projector-scheduler or `runs list`
        run_id: String,
        /// List every org that did not complete, not only the first 500
        #[arg(long)]
        all: bool,
        /// Print the `runs list` object plus "not_completed": [{org_id, outcome, attempt, at_ms,
        /// worker, reason: {kind, message}, slot_wait_ms, retry_after_ms, attempts}],
        /// "not_completed_total", "open_org_ids" and "progress": [{after_ms, accounted}]
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// Run a run's orgs again that ended in the given outcomes, as a follow-up attempt linked to
    /// the run (each with its own dedupe member <org>:a<n>); orgs that completed are never re-run.
    /// The run's record then shows each org's latest outcome and keeps earlier attempts.
    Retry {
        run_id: String,
        /// Comma-separated outcomes to retry [default: every one but completed and cancelled]
        #[arg(long, value_name = "OUTCOMES")]
        outcomes: Option<String>,
        /// Print {run_id, reopened: [[org_id, attempt]], enqueued}
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// Cancel a run: its orgs without an outcome end as `cancelled` (accounted), and its waiting
    /// jobs are removed from the queue. Jobs already running finish; none starts a query after.
    Cancel {
        run_id: String,
        /// Print {orgs_cancelled, jobs_removed}
        #[arg(long)]
        json: bool,
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
        /// Print {"flag", "enabled", "percentage", "allow", "deny", "sample", "limited", "legacy"}
        /// (unset fields are null)
        #[arg(long)]
        json: bool,
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
        /// Print the flag as `flag show --json` does, after the change
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// Forget the flag: back to the safe default, every org limited.
    Clear {
        /// Print the flag as `flag show --json` does, after the change
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        config: ConfigArgs,
    },
}

#[derive(Debug, Subcommand)]
enum RateAction {
    /// The policy in force (configuration plus any runtime change), the live window counts, the
    /// adaptive multiplier, any cooldown in force and the shadow counters.
    Show {
        /// Print one JSON object instead of text
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// Change the policy for every worker at once, without a restart; it wins over the workers'
    /// [rate] configuration until `rate reset`. Only the given keys change; each is checked as
    /// it would be in a config file.
    Set {
        /// Windows, shortest first: "20/s,5000/h" (empty string: no windows)
        #[arg(long)]
        rates: Option<String>,
        /// Longest delay before a start is refused, e.g. "2s"
        #[arg(long)]
        max_delay: Option<String>,
        /// "strict" or "smooth"
        #[arg(long)]
        mode: Option<String>,
        #[arg(long)]
        burst: Option<String>,
        #[arg(long)]
        start_jitter: Option<String>,
        /// false: shadow mode (nothing delayed or refused; counted)
        #[arg(long)]
        enforce: Option<String>,
        /// Fleet-wide pause after a 429, e.g. "5s" ("0s": none)
        #[arg(long)]
        cooldown_after_429: Option<String>,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// Forget the runtime policy: workers go back to their [rate] configuration.
    Reset {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        config: ConfigArgs,
    },
}

#[derive(Debug, Subcommand)]
enum DbAction {
    /// Apply every schema migration the database lacks, in order, under a lock (safe while workers
    /// start). Workers do this themselves at start unless sink.migrate = false.
    Migrate {
        /// Print {"store", "applied": [{version, name}], "migrations": [{version, name, applied_at}]}
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// Every migration this build knows, and when the database applied it (pending if not).
    Status {
        /// Print {"store", "migrations": [{version, name, applied_at (RFC 3339 or null)}], "pending"}
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        config: ConfigArgs,
    },
}

#[derive(Debug, Subcommand)]
enum AdaptiveAction {
    /// The multiplier, the slot limit it puts in force, and the last window closed.
    Show {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// Set the multiplier by hand (between adaptive.min_multiplier and max_multiplier); with
    /// adaptation enabled, the fleet moves on from it at the next window.
    Set {
        multiplier: f64,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// Forget the multiplier and its window: the stored slot limit and the configured rates
    /// apply as they are.
    Reset {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        config: ConfigArgs,
    },
}

#[derive(Debug, Subcommand)]
enum SlotAction {
    /// Show the limit, how many slots are held and how many wait (with the oldest lease); --all
    /// lists every holder (worker, org, age, expiry, fencing token) and every waiter.
    Inspect {
        /// Every holder and every waiter, not only the counts
        #[arg(long)]
        all: bool,
        /// Print {"limit" (stored, or null), "configured", "holders", "waiters",
        /// "oldest_lease_age_ms"}; with --all also "holder_list": [{lease_id, worker, org_id,
        /// fencing_token, age_ms, expires_in_ms}] and "waiter_list": [{id, info}] in arrival order
        #[arg(long)]
        json: bool,
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
        /// Print {"limit"}
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// Forget the limit stored in Redis: the next slot request writes that worker's configured
    /// slots.limit again. This hands the limit back to configuration.
    ResetLimit {
        /// Print {"removed": true|false}
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// Drop every lease and waiter (what reset_concurrent_count did in earlier designs). Holders learn at their next
    /// renewal that their lease is gone. Use only when the slots are known to be stuck.
    Reset {
        /// Print {"leases_dropped"}
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        config: ConfigArgs,
    },
}

impl Command {
    fn config_args(&self) -> &ConfigArgs {
        match self {
            Command::Run { config, .. }
            | Command::Workers { config, .. }
            | Command::Pause { config, .. }
            | Command::Jobs {
                action: JobsAction::Dead { config, .. } | JobsAction::Requeue { config, .. } | JobsAction::Purge { config, .. },
            }
            | Command::Resume { config, .. }
            | Command::Status { config, .. }
            | Command::Explain { config, .. }
            | Command::Serve { config, .. }
            | Command::Runs {
                action:
                    RunsAction::List { config, .. }
                    | RunsAction::Show { config, .. }
                    | RunsAction::Retry { config, .. }
                    | RunsAction::Cancel { config, .. },
            }
            | Command::Rate {
                action: RateAction::Show { config, .. } | RateAction::Set { config, .. } | RateAction::Reset { config, .. },
            }
            | Command::Adaptive {
                action: AdaptiveAction::Show { config, .. } | AdaptiveAction::Set { config, .. } | AdaptiveAction::Reset { config, .. },
            }
            | Command::Flag {
                action: FlagAction::Show { config, .. } | FlagAction::Set { config, .. } | FlagAction::Clear { config, .. },
            }
            | Command::Db { action: DbAction::Migrate { config, .. } | DbAction::Status { config, .. } }
            | Command::Slots {
                action:
                    SlotAction::Inspect { config, .. }
                    | SlotAction::SetLimit { config, .. }
                    | SlotAction::ResetLimit { config, .. }
                    | SlotAction::Reset { config, .. },
            } => config,
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    telemetry::init(cli.log_format);
    let config = match projector_process::runtime::config_or_exit(cli.command.config_args().over(&cli.config).load(Vec::new())) {
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
        Command::Run { run_id, json, .. } => views::runs_show(&config, &run_id, views::Listed::First, json).await,
        Command::Runs { action: RunsAction::List { limit, json, .. } } => views::runs_list(&config, limit, json).await,
        Command::Runs { action: RunsAction::Show { run_id, all, json, .. } } => {
            views::runs_show(&config, &run_id, if all { views::Listed::All } else { views::Listed::First }, json).await
        }
        Command::Runs { action: RunsAction::Retry { run_id, outcomes, json, .. } } => {
            let outcomes = match outcomes {
                Some(list) => actions::parse_outcomes(&list)?,
                None => actions::RETRY_BY_DEFAULT.to_vec(),
            };
            let done = actions::retry(&connection(&config)?, &config, &RunId(run_id), &outcomes).await?;
            Ok(if json {
                format!("{}\n", serde_json::to_value(&done)?)
            } else {
                format!(
                    "run {}: {} org(s) reopened for a follow-up attempt, {} job(s) enqueued; follow it with `projectorctl runs show {}`\n",
                    done.run_id,
                    done.reopened.len(),
                    done.enqueued,
                    done.run_id
                )
            })
        }
        Command::Runs { action: RunsAction::Cancel { run_id, json, .. } } => {
            let done = actions::cancel(&connection(&config)?, &config, &RunId(run_id.clone())).await?;
            Ok(if json {
                format!("{}\n", serde_json::to_value(done)?)
            } else {
                format!(
                    "run {run_id} cancelled: {} org(s) end as cancelled, {} job(s) removed from the queue; jobs already running finish\n",
                    done.orgs_cancelled, done.jobs_removed
                )
            })
        }
        Command::Explain { run_id, org_id, json, .. } => views::explain(&config, &run_id, org_id, json).await,
        Command::Serve { addr, allow_actions, .. } => web::serve(config, addr, allow_actions).await.map(|()| String::new()),
        Command::Workers { json, .. } => views::workers(&config, json).await,
        Command::Jobs { action } => jobs(&config, action).await,
        Command::Pause { reason, json, .. } => {
            let pause = actions::pause(&connection(&config)?, &reason).await?;
            Ok(if json {
                format!("{}\n", serde_json::json!({"paused": true, "reason": pause.reason, "since_ms": pause.since_ms}))
            } else {
                format!("fleet paused ({}): workers take no new jobs within a second; `projectorctl resume` ends it\n", pause.reason)
            })
        }
        Command::Resume { json, .. } => {
            let was = actions::resume(&connection(&config)?).await?;
            Ok(if json {
                format!("{}\n", serde_json::json!({"paused": false, "was_paused": was}))
            } else if was {
                "fleet resumed: workers take jobs again within a second\n".to_owned()
            } else {
                "the fleet was not paused\n".to_owned()
            })
        }
        Command::Status { json, watch: None, .. } => views::status(&config, json).await,
        Command::Status { json, watch: Some(every), .. } => loop {
            let screen = views::status(&config, json).await?;
            // Clear the screen and home the cursor, then draw; Ctrl-C ends it.
            telemetry::print(&if json { screen } else { format!("\x1b[2J\x1b[H{screen}") });
            tokio::time::sleep(every).await;
        },
        Command::Rate { action } => rate(&config, action).await,
        Command::Adaptive { action } => adaptive(&config, action).await,
        Command::Db { action } => db(&config, action).await,
    }
}

/// `projectorctl jobs dead|requeue|purge`.
async fn jobs(config: &Config, action: JobsAction) -> anyhow::Result<String> {
    let conn = connection(config)?;
    let redis = Endpoint::from(&config.redis).redacted();
    match action {
        JobsAction::Dead { limit, json, .. } => {
            let dead = projector_queue::dead_jobs(&conn, limit).await.with_context(|| format!("reading dead jobs from {redis}"))?;
            if json {
                let jobs: Vec<_> = dead.iter().map(|j| serde_json::json!({"id": j.id, "reason": j.reason, "sample": j.sample})).collect();
                return Ok(format!("{}\n", serde_json::json!({"dead": dead.len(), "jobs": jobs})));
            }
            let mut out = format!("{} dead job(s)\n", dead.len());
            for j in &dead {
                let _ =
                    writeln!(out, "  {}  {}\n      payload: {}", j.id, j.reason, if j.sample.is_empty() { "(none)" } else { &j.sample });
            }
            Ok(out)
        }
        JobsAction::Requeue { ids, json, .. } => {
            let changed = projector_queue::requeue_dead(&conn, &ids).await.with_context(|| format!("requeuing dead jobs in {redis}"))?;
            tracing::info!(requeued = changed.done, left_dead = changed.left, "dead jobs requeued");
            Ok(if json {
                format!("{}\n", serde_json::json!({"requeued": changed.done, "left_dead": changed.left}))
            } else {
                format!("requeued {}; {} left dead (payload not JSON: purge them)\n", changed.done, changed.left)
            })
        }
        JobsAction::Purge { ids, json, .. } => {
            let changed = projector_queue::purge_dead(&conn, &ids).await.with_context(|| format!("purging dead jobs in {redis}"))?;
            tracing::info!(purged = changed.done, "dead jobs purged");
            Ok(if json { format!("{}\n", serde_json::json!({"purged": changed.done})) } else { format!("purged {}\n", changed.done) })
        }
    }
}

/// `projectorctl db migrate|status`.
async fn db(config: &Config, action: DbAction) -> anyhow::Result<String> {
    let url = config.sink.postgres_url.as_deref().ok_or_else(|| {
        anyhow::anyhow!(
            "sink.postgres_url is not set: pass --set sink.postgres_url=postgresql://user@host/db or PROJECTOR_SINK_POSTGRES_URL"
        )
    })?;
    let store = projector_postgres::Store::new(url, 1)?;
    let (applied, json) = match action {
        DbAction::Migrate { json, .. } => (Some(store.migrate().await?), json),
        DbAction::Status { json, .. } => (None, json),
    };
    let states = store.migration_states().await?;
    let pending = states.iter().filter(|m| m.applied_at.is_none()).count();
    if json {
        let mut value = serde_json::json!({
            "store": store.target(),
            "migrations": states.iter().map(|m| serde_json::json!({
                "version": m.version, "name": m.name, "applied_at": m.applied_at.map(|t| t.to_rfc3339()),
            })).collect::<Vec<_>>(),
            "pending": pending,
        });
        if let Some(applied) = &applied {
            value["applied"] = applied.iter().map(|m| serde_json::json!({"version": m.version, "name": m.name})).collect();
        }
        return Ok(format!("{value}\n"));
    }
    let mut out = format!("store: {}\n", store.target());
    for m in &states {
        let when = m.applied_at.map_or_else(|| "pending".to_owned(), |t| format!("applied {}", t.to_rfc3339()));
        out.push_str(&format!("  {:>4}  {:<28} {when}\n", m.version, m.name));
    }
    match applied {
        Some(applied) if applied.is_empty() => out.push_str("nothing to apply: the schema is current\n"),
        Some(applied) => out.push_str(&format!("applied {} migration(s) now\n", applied.len())),
        None if pending > 0 => out.push_str(&format!("{pending} pending: run `projectorctl db migrate`\n")),
        None => out.push_str("the schema is current\n"),
    }
    Ok(out)
}

/// The policy in force now for query.referrer, with its live state, as text or one JSON object.
async fn rate_report(config: &Config, conn: &projector_shared::redis_conn::RedisConn, json: bool) -> anyhow::Result<String> {
    let referrer = &config.query.referrer;
    let changes = store::runtime_changes(conn, referrer).await?;
    let rate = config
        .rate_policy_with(referrer, &changes)
        .map_err(|problems| anyhow::anyhow!("the runtime policy in Redis does not load: {}", problems.join("; ")))?;
    let policy = RatePolicy::from_config(&rate);
    let live = RedisRateLimiter::new(conn.clone(), referrer, policy.clone()).now().await?;
    let slots = slot_limiter(config)?;
    let multiplier = slots.occupancy_now().await?.multiplier;
    if json {
        let value = serde_json::json!({
            "referrer": referrer,
            "rates": policy.describe(),
            "mode": policy.mode_name(),
            "burst": policy.burst,
            "max_delay_ms": policy.max_delay.as_millis() as u64,
            "start_jitter_ms": policy.start_jitter.as_millis() as u64,
            "enforce": rate.enforce,
            "cooldown_after_429_ms": rate.cooldown_after_429.as_millis() as u64,
            "runtime_changes": changes.iter().cloned().collect::<std::collections::BTreeMap<_, _>>(),
            "adaptive_multiplier": multiplier,
            "live": live,
        });
        return Ok(format!("{value}\n"));
    }
    let mut out = String::new();
    let source = if changes.is_empty() { "configuration" } else { "runtime change in Redis (`projectorctl rate reset` hands it back)" };
    let rates = if policy.windows.is_empty() { "none".to_owned() } else { policy.describe() };
    let _ = writeln!(out, "rate policy for {referrer} (from {source})");
    let _ = writeln!(
        out,
        "  rates: {rates}  mode: {}  burst: {}  max_delay: {}  start_jitter: {}",
        policy.mode_name(),
        policy.burst,
        projector_config::format_duration(policy.max_delay),
        projector_config::format_duration(policy.start_jitter)
    );
    let _ = writeln!(
        out,
        "  enforce: {}{}  cooldown_after_429: {}",
        rate.enforce,
        if rate.enforce { "" } else { " (shadow mode)" },
        projector_config::format_duration(rate.cooldown_after_429)
    );
    for (key, value) in &changes {
        let _ = writeln!(out, "  runtime change: {key} = {value}");
    }
    let _ = writeln!(out, "  adaptive multiplier: {multiplier}");
    for w in &live.windows {
        let scaled = ((f64::from(w.limit) * multiplier + 1e-9).floor() as u64).max(1);
        let _ = writeln!(out, "  window {}: {} of {scaled} used now", w.window, w.used);
    }
    match live.cooldown_left_ms {
        0 => {
            let _ = writeln!(out, "  cooldown: none");
        }
        ms => {
            let _ = writeln!(out, "  cooldown: {ms} ms left (after a 429)");
        }
    }
    let _ = writeln!(out, "  shadow: would have delayed {}, would have refused {}", live.shadow_would_delay, live.shadow_would_refuse);
    Ok(out)
}

async fn rate(config: &Config, action: RateAction) -> anyhow::Result<String> {
    let conn = connection(config)?;
    let referrer = &config.query.referrer;
    match action {
        RateAction::Show { json, .. } => rate_report(config, &conn, json).await,
        RateAction::Set { rates, max_delay, mode, burst, start_jitter, enforce, cooldown_after_429, json, .. } => {
            let given = [
                ("rates", rates),
                ("max_delay", max_delay),
                ("mode", mode),
                ("burst", burst),
                ("start_jitter", start_jitter),
                ("enforce", enforce),
                ("cooldown_after_429", cooldown_after_429),
            ];
            let changes: Vec<(String, String)> = given.into_iter().filter_map(|(k, v)| v.map(|v| (k.to_owned(), v))).collect();
            anyhow::ensure!(
                !changes.is_empty(),
                "nothing to change; give at least one of --rates, --max-delay, --mode, --burst, --start-jitter, --enforce, --cooldown-after-429"
            );
            let mut all = store::runtime_changes(&conn, referrer).await?;
            all.retain(|(k, _)| !changes.iter().any(|(c, _)| c == k));
            all.extend(changes.iter().cloned());
            config.rate_policy_with(referrer, &all).map_err(|problems| anyhow::anyhow!("refused: {}", problems.join("; ")))?;
            store::set_runtime_changes(&conn, referrer, &changes).await?;
            let report = rate_report(config, &conn, json).await?;
            Ok(if json { report } else { format!("{report}every worker applies it within worker.rollout_refresh\n") })
        }
        RateAction::Reset { json, .. } => {
            let removed = store::clear_runtime_changes(&conn, referrer).await?;
            let report = rate_report(config, &conn, json).await?;
            Ok(if json {
                report
            } else {
                format!(
                    "{}\n{report}",
                    if removed {
                        "runtime policy removed; workers go back to their [rate] configuration"
                    } else {
                        "no runtime policy was stored"
                    }
                )
            })
        }
    }
}

async fn adaptive(config: &Config, action: AdaptiveAction) -> anyhow::Result<String> {
    let slots = slot_limiter(config)?;
    let redis = Endpoint::from(&config.redis).redacted();
    let (json, note) = match action {
        AdaptiveAction::Show { json, .. } => (json, String::new()),
        AdaptiveAction::Set { multiplier, json, .. } => {
            let (min, max) = (config.adaptive.min_multiplier, config.adaptive.max_multiplier);
            anyhow::ensure!(
                (min..=max).contains(&multiplier),
                "refusing multiplier {multiplier}: outside [adaptive.min_multiplier {min}, adaptive.max_multiplier {max}]"
            );
            slots.set_multiplier(multiplier).await.with_context(|| format!("setting the multiplier in {redis}"))?;
            (json, format!("multiplier set to {multiplier} for every worker\n"))
        }
        AdaptiveAction::Reset { json, .. } => {
            let removed = slots.reset_multiplier().await.with_context(|| format!("resetting the multiplier in {redis}"))?;
            (json, format!("{}\n", if removed { "multiplier and window removed" } else { "no multiplier was stored" }))
        }
    };
    let now = slots.occupancy_now().await.with_context(|| format!("reading the slots in {redis}"))?;
    let last = slots.last_adaptive_window().await?;
    if json {
        let value = serde_json::json!({
            "multiplier": now.multiplier,
            "stored_limit": now.limit,
            "limit_in_force": now.in_force,
            "in_use": now.in_use,
            "enabled_here": config.adaptive.enabled,
            "last_window": last,
        });
        return Ok(format!("{value}\n"));
    }
    let mut out = note;
    let _ = writeln!(out, "adaptive multiplier: {}", now.multiplier);
    let _ = writeln!(
        out,
        "slot limit: {} stored, {} in force, {} in use",
        now.limit.map_or("none".to_owned(), |l| l.to_string()),
        now.in_force.map_or("none".to_owned(), |l| l.to_string()),
        now.in_use
    );
    match last {
        Some(w) => {
            let _ = writeln!(
                out,
                "last window closed {} ms ago: {} ok, {} 429, {} throttled; signal {}",
                w.closed_ms_ago,
                w.ok,
                w.rate_limited,
                w.throttled,
                if w.signal.is_empty() { "none" } else { &w.signal }
            );
        }
        None => {
            let _ = writeln!(out, "no window closed yet (adaptive.enabled on the workers: is it on?)");
        }
    }
    Ok(out)
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

async fn flag(config: &Config, action: FlagAction) -> anyhow::Result<String> {
    let mut conn = connection(config)?;
    let mut rollout = Rollout::load(&mut conn).await?;
    let (sample, json) = match action {
        FlagAction::Show { sample, json, .. } => (sample, json),
        FlagAction::Set { enabled, percentage, allow, deny, json, .. } => {
            rollout.enabled = enabled.or(rollout.enabled);
            rollout.percentage = percentage.or(rollout.percentage);
            if let Some(ids) = allow {
                rollout.allow = ids.into_iter().map(OrgId).collect();
            }
            if let Some(ids) = deny {
                rollout.deny = ids.into_iter().map(OrgId).collect();
            }
            rollout.save(&mut conn).await?;
            (1000, json)
        }
        FlagAction::Clear { json, .. } => {
            rollout = Rollout::default();
            let _: () = redis::cmd("DEL").arg(projector_shared::keys::flag(RATE_LIMIT_FLAG)).query_async(&mut conn).await?;
            (1000, json)
        }
    };
    let limited = (1..=sample).filter(|o| rollout.is_limited(OrgId(*o))).count();
    if json {
        let value = serde_json::json!({
            "flag": RATE_LIMIT_FLAG, "enabled": rollout.enabled, "percentage": rollout.percentage,
            "allow": rollout.allow.iter().map(|o| o.0).collect::<Vec<_>>(), "deny": rollout.deny.iter().map(|o| o.0).collect::<Vec<_>>(),
            "sample": sample, "limited": limited, "legacy": sample as usize - limited,
        });
        return Ok(format!("{value}\n"));
    }
    let show = |v: Option<String>| v.unwrap_or_else(|| "unset".to_owned());
    let mut out = String::new();
    let _ = writeln!(out, "{RATE_LIMIT_FLAG}");
    let _ = writeln!(out, "  enabled: {}", show(rollout.enabled.map(|e| e.to_string())));
    let _ = writeln!(out, "  percentage: {}", show(rollout.percentage.map(|p| p.to_string())));
    let _ = writeln!(out, "  allow: {:?}", rollout.allow.iter().map(|o| o.0).collect::<Vec<_>>());
    let _ = writeln!(out, "  deny: {:?}", rollout.deny.iter().map(|o| o.0).collect::<Vec<_>>());
    let _ = writeln!(out, "  of orgs 1..={sample}: {limited} limited (slot first), {} legacy", sample as usize - limited);
    Ok(out)
}

async fn slots(config: &Config, action: SlotAction) -> anyhow::Result<String> {
    let limiter = slot_limiter(config)?;
    let redis = Endpoint::from(&config.redis).redacted();
    let mut out = String::new();
    match action {
        SlotAction::Inspect { all, json, .. } => {
            let state = limiter.inspect().await.with_context(|| format!("reading slots from {redis}"))?;
            let oldest = state.holders.iter().map(|h| h.age).max();
            if json {
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
                return Ok(format!("{value}\n"));
            }
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
        }
        SlotAction::SetLimit { limit, from_config, force, json, .. } => {
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
            if json {
                return Ok(format!("{}\n", serde_json::json!({"limit": limit})));
            }
            let _ = writeln!(
                out,
                "limit set to {limit} for every worker (stored in Redis; `projectorctl slots reset-limit` hands it back to config)"
            );
        }
        SlotAction::ResetLimit { json, .. } => {
            let removed = limiter.clear_limit().await.with_context(|| format!("resetting the limit in {redis}"))?;
            if json {
                return Ok(format!("{}\n", serde_json::json!({"removed": removed})));
            }
            let _ = writeln!(
                out,
                "{}; the next slot request stores its worker's slots.limit",
                if removed { "stored limit removed" } else { "no limit was stored" }
            );
        }
        SlotAction::Reset { json, .. } => {
            let dropped = limiter.reset().await.with_context(|| format!("resetting slots in {redis}"))?;
            if json {
                return Ok(format!("{}\n", serde_json::json!({"leases_dropped": dropped})));
            }
            let _ = writeln!(out, "dropped {dropped} leases and every waiter");
        }
    }
    Ok(out)
}
