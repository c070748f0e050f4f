//! Projector's one typed `Config`, loaded as defaults < file < environment < flags and validated all at once.
//!
//! Only this crate reads configuration files and `PROJECTOR_*` environment variables.
//! Every key is described once, in [`keys`]; loading, error messages, the `--set`
//! flag and `config.example.toml` all follow that table.

mod args;
mod error;
mod keys;
mod load;
mod value;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// How settings are layered, for every binary's `--help`.
pub const LAYERS_HELP: &str =
    "Configuration: defaults < --config FILE < PROJECTOR_<SECTION>_<KEY> environment < flags. See config.example.toml for every key.";

pub use args::{ConfigArgs, FanOutArgs, JobArgs, ServeArgs, WorkerArgs};
pub use error::{ConfigError, Problem};
pub use keys::{KEYS, KeySpec, env_var_for, markdown_table};
pub use load::{Env, FlagValue, Source, load};
pub use value::{RateWindow, format_duration, rates as parse_rates, redact_url};

/// Everything a Projector process can be told, with the defaults below.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub backend: BackendConfig,
    pub redis: RedisConfig,
    pub slots: SlotsConfig,
    pub batch: BatchConfig,
    pub schedule: ScheduleConfig,
    pub orgs: OrgsConfig,
    pub query: QueryConfig,
    pub sink: SinkConfig,
    pub worker: WorkerConfig,
    pub runs: RunsConfig,
    pub rate: RateConfig,
    pub adaptive: AdaptiveConfig,
    pub ops: OpsConfig,
}

/// `[ops]`: the operator's tools (`projectorctl serve`).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct OpsConfig {
    /// The token the status page's state-changing actions require (with `--allow-actions`).
    pub action_token: Option<String>,
}

/// `[adaptive]`: one multiplier for the fleet, steered by the query service's answers.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct AdaptiveConfig {
    pub enabled: bool,
    pub window: Duration,
    pub high_429_ratio: f64,
    pub increase_step_pct: f64,
    pub decrease_step_pct: f64,
    pub min_multiplier: f64,
    pub max_multiplier: f64,
    pub use_throttle_signal: bool,
}

/// `[backend]`: where the queue, the slots, the rate windows and the runs live.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct BackendConfig {
    /// `None`: memory for the embedded run, Redis (`redis.url`) for a fleet's processes.
    pub kind: Option<BackendKind>,
    /// The SQLite file (`sqlite:///absolute/path.db`), or Redis's URL in place of `redis.url`.
    pub dsn: Option<String>,
    /// How long a process waits for another's write lock on a SQLite file.
    pub busy_timeout: Duration,
    /// Where `kind` was set (file, environment, flag), for the message that refuses it.
    pub kind_from: Option<Source>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    /// In this process only: forgotten at exit (the embedded run).
    Memory,
    /// One SQLite file shared by the processes of one machine.
    Sqlite,
    /// A Redis server, Sentinel or Cluster shared by a fleet.
    Redis,
}

impl BackendKind {
    pub fn as_str(self) -> &'static str {
        match self {
            BackendKind::Memory => "memory",
            BackendKind::Sqlite => "sqlite",
            BackendKind::Redis => "redis",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct RedisConfig {
    pub url: String,
    /// PEM file of the CA that signed the server's certificate (`rediss://` only).
    pub tls_ca_file: Option<PathBuf>,
    /// Accept any server certificate (`rediss://` only; self-signed staging servers).
    pub tls_insecure: bool,
    /// `url` is one node of a Redis Cluster.
    pub cluster: bool,
    /// `url` is a Redis Sentinel watching the master set of this name.
    pub sentinel_master: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct SlotsConfig {
    /// Slots held at once across the whole fleet.
    pub limit: u32,
    /// How long a lease lives without renewal.
    pub lease_ttl: Duration,
    /// How long a job waits for a slot before it gives up.
    pub max_wait: Duration,
    pub on_timeout: OnSlotTimeout,
    pub on_redis_error: OnRedisError,
    /// Per-process slots under `fail_open` while Redis is unreachable: the fleet total is
    /// this times the number of worker processes, so keep it small.
    pub fallback_limit: u32,
    pub max_reschedules: u32,
    /// The query service's own numbers cap the limit in force.
    pub follow_service: bool,
    /// Slots kept below what the service admits.
    pub service_margin: u32,
    /// How long one answer's cap holds.
    pub service_ttl: Duration,
    /// How long the service's own limit is remembered after its last answer.
    pub service_memory: Duration,
    /// At most one report of the service's numbers per this span from each worker.
    pub service_report_every: Duration,
}

/// What a job does when its slot wait times out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnSlotTimeout {
    /// Record `skipped_no_slot` and move on (the default: a skipped org is counted and the next run covers it).
    #[default]
    Skip,
    /// Re-enqueue with jittered backoff, at most `slots.max_reschedules` times.
    Reschedule,
}

/// What a job does when Redis cannot be asked for a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnRedisError {
    /// Do not query; record `slot_unavailable`.
    #[default]
    FailClosed,
    /// Query under a local fallback limit.
    FailOpen,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct BatchConfig {
    pub size: usize,
    pub delay: Duration,
}

/// The default schedule: at the top of every hour.
static HOURLY: std::sync::LazyLock<cron::Schedule> =
    std::sync::LazyLock::new(|| "0 0 * * * *".parse().expect("the default cron expression is valid"));

#[derive(Debug, Clone, PartialEq)]
pub struct ScheduleConfig {
    /// Six-field cron expression (seconds first), UTC; parsed once, when the config is loaded.
    pub cron: cron::Schedule,
    /// What a tick does while the fleet is paused.
    pub when_paused: WhenPaused,
    /// What a tick does while an earlier run is still open.
    pub overlap: Overlap,
    /// Where `serve` answers /metrics, /healthz and /readyz.
    pub metrics_addr: SocketAddr,
}

/// What a scheduler tick does while an earlier run is still open (`schedule.overlap`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Overlap {
    /// Record the tick as skipped and leave the open run alone (the default: runs never pile up,
    /// and the open run's orgs keep their place; the skipped tick is in `runs list`).
    #[default]
    Skip,
    /// Wait for the open run to end, until the next tick at most (then the tick is skipped).
    Queue,
    /// Cancel the open run and fan out the new one.
    Replace,
}

/// What a scheduler tick does while the fleet is paused (`projectorctl pause`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WhenPaused {
    /// Fan out as usual: the jobs wait in the queue until `projectorctl resume`.
    #[default]
    Enqueue,
    /// Skip the tick (logged and counted); re-run it later with `run-once --tick`.
    Skip,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct OrgsConfig {
    pub source: OrgSourceKind,
    pub count: u64,
    pub path: Option<PathBuf>,
    /// Ignore keys of the organizations file that are not its own, instead of refusing the file.
    pub allow_unknown_keys: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OrgSourceKind {
    #[default]
    Synthetic,
    File,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct QueryConfig {
    pub source: QuerySourceKind,
    pub url: Option<String>,
    /// Queries go to `{url}/{dataset}/snql`.
    pub dataset: String,
    /// Outcome categories summed into the accepted volume.
    pub categories: Vec<u8>,
    /// Rows per page (SnQL `LIMIT`), at most 10,000.
    pub page_rows: usize,
    pub referrer: String,
    pub timeout: Duration,
    /// The longest the query service counts one query as running (Snuba's
    /// `max_query_duration_s`), whatever `timeout` says: a slot under which a query was sent is
    /// not handed to anyone else before the query must have ended there.
    pub max_duration: Duration,
    /// The operator knows the service bounds a query by less than [`SERVICE_QUERY_BOUND`]: a
    /// `max_duration` below it is accepted.
    pub max_duration_below_service: bool,
    /// Latency of one synthetic query, standing in for the analytics store.
    pub synthetic_latency: Duration,
    /// The query service's own limit of concurrent queries per referrer; slots.limit stays below it.
    pub referrer_limit: u32,
    /// PEM file of the CA that signed the query service's certificate (`https://` only).
    pub tls_ca_file: Option<PathBuf>,
    /// Accept any certificate from the query service (`https://` only; staging).
    pub tls_insecure: bool,
}

impl QueryConfig {
    /// The longest a query may run at the service: `query.max_duration`.
    pub fn max_duration(&self) -> Duration {
        self.max_duration
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum QuerySourceKind {
    #[default]
    Synthetic,
    Snuba,
}

/// Where a worker stores projections.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SinkConfig {
    pub kind: SinkKind,
    pub path: Option<PathBuf>,
    /// Lifetime of an org's stored projections after its last write.
    pub ttl: Duration,
    /// The PostgreSQL database of `sink.kind = "postgres"`.
    pub postgres_url: Option<String>,
    /// Connections per process to that database.
    pub postgres_pool: usize,
    /// Apply the store's schema migrations at start.
    pub migrate: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SinkKind {
    /// One hash per org in Redis, readable by other services.
    #[default]
    Redis,
    /// One JSON line per org and project in a file.
    JsonLines,
    /// Keeps nothing (load tests).
    Discard,
    /// One row per (org, project, hour) in PostgreSQL's `spike_projections`.
    Postgres,
    /// One row per (org, project) in the backend's SQLite file (`backend.kind = "sqlite"`).
    Sqlite,
}

#[derive(Debug, Clone, PartialEq)]
pub struct WorkerConfig {
    /// Jobs in flight per worker process.
    pub concurrency: usize,
    pub metrics_addr: SocketAddr,
    pub shutdown_grace: Duration,
    /// How long the rollout flag read from Redis is trusted before it is read again.
    pub rollout_refresh: Duration,
    /// How often due jobs are promoted, queue and slot gauges refreshed and the heartbeat written.
    pub housekeeping_interval: Duration,
    /// How often an idle job loop polls; announced jobs are fetched at once.
    pub poll_interval: Duration,
    /// The spacing of the fleet's slot samples (the status page's last-hour chart).
    pub slot_sample_interval: Duration,
}

/// How long a run's traces are kept in Redis.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RunsConfig {
    /// The run record, its per-org outcomes and its plan live this long after their last write.
    pub retention: Duration,
    /// A run's summary (its record hash and its place in the runs index) lives this long after
    /// the run's last write: at least `retention`, after which only the summary is left.
    pub summary_retention: Duration,
    /// Each org's trail in a run (what `explain` prints) lives this long after the run's last write.
    pub trail_retention: Duration,
    /// How long a finished run keeps its completed orgs' full records before they are compacted
    /// into a list of (org, time recorded); orgs that did not complete are never compacted.
    pub completed_detail: Duration,
    /// How long after a run's last push its jobs stay deduplicated (one set per run): a re-fan-out
    /// of the same tick, or `--resume`, within this window enqueues no job twice.
    pub dedup_window: Duration,
    /// Tries of one org in one run when a try fails in a way that may pass (a 5xx, a timeout, a
    /// referrer 429, the store unreachable): the first and the retries together.
    pub max_attempts: u32,
    /// How long after its tick a run may take; `None`: one period of the schedule.
    pub deadline: Option<Duration>,
}

impl Config {
    /// When a run of `tick` must be over: `runs.deadline` after it, else one period of the
    /// schedule after it (the gap between the schedule's next two ticks; an hour when it has
    /// none). For a scheduled tick that is the next tick. A manual run gets a whole period too,
    /// not the seconds left until the next tick when it starts just before one.
    pub fn run_deadline(&self, tick: chrono::DateTime<chrono::Utc>) -> chrono::DateTime<chrono::Utc> {
        match self.runs.deadline {
            Some(d) => tick + chrono::TimeDelta::from_std(d).unwrap_or(chrono::TimeDelta::MAX),
            None => {
                let mut ticks = self.schedule.cron.after(&tick);
                match (ticks.next(), ticks.next()) {
                    (Some(first), Some(second)) => tick + (second - first),
                    _ => tick + chrono::TimeDelta::hours(1),
                }
            }
        }
    }
}

/// The rate policy on query starts (`[rate]`), with per-referrer overrides.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RateConfig {
    /// Windows, shortest first; empty means no rate policy.
    pub rates: Vec<RateWindow>,
    /// The longest a query start may be delayed to fit the policy; beyond it the job is refused.
    pub max_delay: Duration,
    pub mode: RateMode,
    /// Smooth mode: how many admissions may start back to back before spacing applies.
    pub burst: u32,
    /// Strict mode: how far out of order admitted starts may reach the query service; windows
    /// are kept this much wider so the service's own count stays within the policy.
    pub start_jitter: Duration,
    /// `false`: shadow mode; nothing is delayed or refused, what would have been is logged and counted.
    pub enforce: bool,
    /// After a 429 from the query service, no query starts anywhere in the fleet for this long.
    pub cooldown_after_429: Duration,
    /// `[rate.referrers."<referrer>"]`: keys of this section that differ for one referrer, as
    /// (key, raw value), checked at load; [`Config::rate_policy`] applies them.
    pub referrers: std::collections::BTreeMap<String, Vec<(String, String)>>,
}

impl RateConfig {
    /// Whether any rate policy or cooldown applies.
    pub fn is_active(&self) -> bool {
        !self.rates.is_empty() || !self.cooldown_after_429.is_zero()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RateMode {
    /// Sliding window: never more than N starts in any interval W.
    #[default]
    Strict,
    /// GCRA: starts spaced W/N apart after a burst, exact long-run rate.
    Smooth,
}

impl Config {
    /// The rate policy for `referrer`: `[rate]` with that referrer's overrides applied.
    pub fn rate_policy(&self, referrer: &str) -> RateConfig {
        // The file's overrides were checked at load, so none fails here.
        self.rate_policy_with(referrer, &[]).unwrap_or_else(|_| self.rate.clone())
    }

    /// [`Config::rate_policy`] with `changes` (key, raw value) applied on top: a runtime policy
    /// set by an operator. Every change that does not parse is named in the error.
    pub fn rate_policy_with(&self, referrer: &str, changes: &[(String, String)]) -> Result<RateConfig, Vec<String>> {
        let mut scratch = Config { rate: RateConfig { referrers: Default::default(), ..self.rate.clone() }, ..Config::default() };
        let mut errors = Vec::new();
        for (key, raw) in self.rate.referrers.get(referrer).into_iter().flatten().chain(changes) {
            let spec = RATE_POLICY_KEYS.contains(&key.as_str()).then(|| keys::find(&format!("rate.{key}"))).flatten();
            match spec {
                Some(spec) => {
                    if let Err(allowed) = (spec.set)(&mut scratch, raw) {
                        errors.push(format!("rate.{key} = {raw:?}: {allowed}"));
                    }
                }
                None => errors.push(format!("{key}: not a rate policy key; one of {}", RATE_POLICY_KEYS.join(", "))),
            }
        }
        if errors.is_empty() { Ok(scratch.rate) } else { Err(errors) }
    }
}

/// Datasets whose entity has every column the accepted-outcomes query reads or filters on
/// (`org_id`, `project_id`, `timestamp`, `time`, `outcome`, `category`, `quantity`), as checked in
/// Snuba's `snuba/datasets/configuration/<dataset>/entities/<entity>.yaml` (docs/snuba.md). An
/// entity without one refuses the query (`validate_data_model: error`), so `query.dataset`
/// accepts only these, at start.
/// How long Snuba counts a query as running against a referrer's concurrency limit when nothing
/// ends it sooner: `max_query_duration_s`, default `state.max_query_duration_s = 60`
/// (`snuba/state/__init__.py`, read by `BaseConcurrentRateLimitAllocationPolicy` in
/// `snuba/query/allocation_policies/concurrent_rate_limit.py`; docs/snuba.md). The default of
/// `query.max_duration`, and its floor unless `query.max_duration_below_service` says otherwise.
pub const SERVICE_QUERY_BOUND: std::time::Duration = std::time::Duration::from_secs(60);

pub const DATASETS_WITH_OUTCOMES: &[&str] = &["outcomes", "outcomes_raw"];

/// The `[rate]` keys a referrer table, or a runtime policy in Redis, may set.
pub const RATE_POLICY_KEYS: &[&str] = &["rates", "max_delay", "mode", "burst", "start_jitter", "enforce", "cooldown_after_429"];

/// Placeholders only: the defaults are the key table's (`Config::default`).
impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            concurrency: 1,
            metrics_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            shutdown_grace: Duration::ZERO,
            rollout_refresh: Duration::ZERO,
            housekeeping_interval: Duration::ZERO,
            poll_interval: Duration::ZERO,
            slot_sample_interval: Duration::ZERO,
        }
    }
}

impl Default for Config {
    /// Every key's default, from the key table (`keys.rs`), where each is written once.
    fn default() -> Self {
        let mut config = Config {
            backend: BackendConfig::default(),
            redis: RedisConfig::default(),
            slots: SlotsConfig::default(),
            batch: BatchConfig::default(),
            schedule: ScheduleConfig {
                cron: HOURLY.clone(),
                when_paused: WhenPaused::Enqueue,
                overlap: Overlap::Skip,
                metrics_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            },
            orgs: OrgsConfig::default(),
            query: QueryConfig::default(),
            sink: SinkConfig::default(),
            worker: WorkerConfig::default(),
            runs: RunsConfig::default(),
            rate: RateConfig::default(),
            adaptive: AdaptiveConfig::default(),
            ops: OpsConfig::default(),
        };
        for key in KEYS {
            if let Some(default) = key.default
                && let Err(e) = (key.set)(&mut config, default)
            {
                // A fault in the key table itself; the config tests catch it before any release.
                panic!("the default of {} ({default:?}) does not parse: {e}", key.name);
            }
        }
        config
    }
}

/// The configuration as a TOML file that loads back to the same values: every key under its
/// section, keys without a value commented out. Passwords in URLs are shown as `***` unless
/// `show_secrets`.
/// A short digest of the configuration a process runs with, for comparing the fleet's members:
/// every key but the ones that differ between members on purpose (listen addresses), secrets
/// masked. FNV-1a over the printed configuration: stable across builds and platforms.
pub fn digest(config: &Config) -> String {
    let printed = to_toml(config, false);
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for line in printed.lines().filter(|l| !l.starts_with("metrics_addr")) {
        for byte in line.bytes().chain(std::iter::once(b'\n')) {
            hash = (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    format!("{hash:016x}")[..12].to_owned()
}

/// The slot settings a worker runs with, in one line for operators.
pub fn slot_summary(config: &Config) -> String {
    format!(
        "limit {}, max_wait {}, on_timeout {}, follow_service {}",
        config.slots.limit,
        format_duration(config.slots.max_wait),
        match config.slots.on_timeout {
            OnSlotTimeout::Skip => "skip",
            OnSlotTimeout::Reschedule => "reschedule",
        },
        config.slots.follow_service
    )
}

pub fn to_toml(config: &Config, show_secrets: bool) -> String {
    let mut out = String::from("# Effective Projector configuration (every layer applied).\n");
    let mut section = "";
    for key in KEYS {
        let (sec, name) = key.name.split_once('.').unwrap_or(("", key.name));
        if sec != section {
            out.push_str(&format!("\n[{sec}]\n"));
            section = sec;
        }
        let mut value = (key.get)(config);
        if !show_secrets {
            value = value::redact_url(&value);
            if key.name == "ops.action_token" && !value.is_empty() {
                value = "***".to_owned();
            }
        }
        if value.is_empty() {
            out.push_str(&format!("# {name} = (not set)\n"));
        } else if value.parse::<i64>().is_ok() || value == "true" || value == "false" {
            out.push_str(&format!("{name} = {value}\n"));
        } else {
            out.push_str(&format!("{name} = {}\n", toml::Value::String(value)));
        }
    }
    for (referrer, overrides) in &config.rate.referrers {
        out.push_str(&format!("\n[rate.referrers.{}]\n", toml::Value::String(referrer.clone())));
        for (key, raw) in overrides {
            out.push_str(&format!("{key} = {}\n", toml::Value::String(raw.clone())));
        }
    }
    out
}

/// Which processes a backend can serve, checked at start so that a combination that cannot work
/// exits 2 with a sentence, before anything is read or written.
impl Config {
    /// For the embedded run: memory (the default) or a SQLite file.
    pub fn backend_for_embedded(&self) -> Result<(), ConfigError> {
        match self.backend.kind {
            None | Some(BackendKind::Memory) | Some(BackendKind::Sqlite) => Ok(()),
            Some(BackendKind::Redis) => Err(backend_problem(
                &self.backend,
                "cannot carry the embedded run, which runs its jobs inside this process: run projector-scheduler run-once without \
                 --embedded and projector-worker run for a Redis fleet, or unset backend.kind",
            )),
        }
    }

    /// Whether this fleet lives in one machine's SQLite file (`backend.kind = "sqlite"`).
    pub fn on_file(&self) -> bool {
        self.backend.kind == Some(BackendKind::Sqlite)
    }

    /// For a fleet's process (`process`: the scheduler's fan-out, a worker, projectorctl): Redis, or
    /// the SQLite file of one machine.
    pub fn backend_for_fleet(&self, process: &str) -> Result<(), ConfigError> {
        match self.backend.kind {
            None | Some(BackendKind::Redis) => Ok(()),
            Some(BackendKind::Memory) => Err(backend_problem(
                &self.backend,
                &format!(
                    "keeps everything inside one process, and {process} shares its queue and slots with other processes: use \
                     run-once --embedded for a run in one process, or backend.kind = \"redis\""
                ),
            )),
            // Every process of one machine shares the file; the file refuses a network file system.
            Some(BackendKind::Sqlite) => Ok(()),
        }
    }
}

/// `backend.kind` refused for this process, with where it was set.
fn backend_problem(backend: &BackendConfig, allowed: &str) -> ConfigError {
    ConfigError::Invalid(vec![Problem {
        key: "backend.kind".to_owned(),
        value: backend.kind.map(|k| k.as_str().to_owned()),
        source: backend.kind_from.clone().unwrap_or(Source::Default),
        allowed: allowed.to_owned(),
    }])
}
