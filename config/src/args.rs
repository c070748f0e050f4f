//! The command-line layer: `--config`, `--set KEY=VALUE` and `--redis-url` for every command,
//! plus named flags for the keys a command actually uses, grouped so that each subcommand's
//! `--help` lists only the flags that apply to it.

use std::path::PathBuf;

use clap::Args;

use crate::load::{Env, FlagValue, load};
use crate::{Config, ConfigError};

/// Configuration flags every Projector command takes.
///
/// Precedence: defaults < `--config` file < `PROJECTOR_<SECTION>_<KEY>` environment < flags.
#[derive(Debug, Clone, Default, Args)]
pub struct ConfigArgs {
    /// TOML configuration file (see config.example.toml for every key)
    #[arg(long, value_name = "PATH", global = true)]
    pub config: Option<PathBuf>,

    /// Set any configuration key, e.g. --set slots.lease_ttl=10s (repeatable)
    #[arg(long = "set", value_name = "KEY=VALUE", global = true)]
    pub set: Vec<String>,

    /// Redis URL: redis://, rediss:// (TLS) or unix:///path [key: redis.url]
    #[arg(long, value_name = "URL", global = true)]
    pub redis_url: Option<String>,
}

/// Flags of commands that plan a run (which orgs, in which batches).
#[derive(Debug, Clone, Default, Args)]
pub struct FanOutArgs {
    /// Number of synthetic organizations [key: orgs.count, default 200]
    #[arg(long, value_name = "N")]
    pub orgs: Option<String>,

    /// Organizations per batch [key: batch.size, default 25]
    #[arg(long, value_name = "N")]
    pub batch_size: Option<String>,

    /// Delay between batch releases, e.g. 2s or 100ms [key: batch.delay, default 2s]
    #[arg(long, value_name = "DURATION")]
    pub batch_delay: Option<String>,

    /// How long after its tick the run may take; at the deadline its open orgs end with the
    /// reason deadline [key: runs.deadline, default: one period of schedule.cron]
    #[arg(long, value_name = "DURATION")]
    pub deadline: Option<String>,
}

/// Flags of commands that run jobs (take slots, query).
#[derive(Debug, Clone, Default, Args)]
pub struct JobArgs {
    /// Slots held at once across the fleet (Redis's stored limit wins once set) [key: slots.limit, default 50]
    #[arg(long, value_name = "N")]
    pub slots_limit: Option<String>,

    /// Longest wait for a slot before slots.on_timeout applies [key: slots.max_wait, default 60s]
    #[arg(long, value_name = "DURATION")]
    pub slots_max_wait: Option<String>,

    /// Jobs in flight per worker process [key: worker.concurrency, default 64]
    #[arg(long, value_name = "N")]
    pub concurrency: Option<String>,
}

/// Flags only the worker process takes.
#[derive(Debug, Clone, Default, Args)]
pub struct WorkerArgs {
    /// Address for /metrics, /healthz and /readyz; port 0 picks a free one [key: worker.metrics_addr, default 127.0.0.1:9464]
    #[arg(long, value_name = "HOST:PORT")]
    pub metrics_addr: Option<String>,
}

/// Flags only `projector-scheduler serve` takes.
#[derive(Debug, Clone, Default, Args)]
pub struct ServeArgs {
    /// Address for /metrics, /healthz and /readyz; port 0 picks a free one [key: schedule.metrics_addr, default 127.0.0.1:9465]
    #[arg(long, value_name = "HOST:PORT")]
    pub metrics_addr: Option<String>,
}

fn named(pairs: &[(&str, &str, &Option<String>)]) -> Vec<FlagValue> {
    pairs
        .iter()
        .filter_map(|(key, flag, value)| {
            value.as_ref().map(|v| FlagValue { key: (*key).to_owned(), value: v.clone(), flag: (*flag).to_owned() })
        })
        .collect()
}

impl FanOutArgs {
    pub fn flag_values(&self) -> Vec<FlagValue> {
        named(&[
            ("orgs.count", "--orgs", &self.orgs),
            ("batch.size", "--batch-size", &self.batch_size),
            ("batch.delay", "--batch-delay", &self.batch_delay),
            ("runs.deadline", "--deadline", &self.deadline),
        ])
    }
}

impl JobArgs {
    pub fn flag_values(&self) -> Vec<FlagValue> {
        named(&[
            ("slots.limit", "--slots-limit", &self.slots_limit),
            ("slots.max_wait", "--slots-max-wait", &self.slots_max_wait),
            ("worker.concurrency", "--concurrency", &self.concurrency),
        ])
    }
}

impl WorkerArgs {
    pub fn flag_values(&self) -> Vec<FlagValue> {
        named(&[("worker.metrics_addr", "--metrics-addr", &self.metrics_addr)])
    }
}

impl ServeArgs {
    pub fn flag_values(&self) -> Vec<FlagValue> {
        named(&[("schedule.metrics_addr", "--metrics-addr", &self.metrics_addr)])
    }
}

impl ConfigArgs {
    /// The flag layer as (key, value, flag) triples: `--set` first, then the named flags
    /// (`extra` included), so that the more specific spelling wins.
    pub fn flag_values(&self, extra: Vec<FlagValue>) -> Vec<FlagValue> {
        let mut out: Vec<FlagValue> = self
            .set
            .iter()
            .map(|pair| {
                let (key, value) = pair.split_once('=').unwrap_or((pair.as_str(), ""));
                FlagValue { key: key.trim().to_owned(), value: value.to_owned(), flag: "--set".to_owned() }
            })
            .collect();
        out.extend(named(&[("redis.url", "--redis-url", &self.redis_url)]));
        out.extend(extra);
        out
    }

    /// Loads the configuration from every layer, reading the process environment; `extra` are
    /// the named flags of the command being run.
    pub fn load(&self, extra: Vec<FlagValue>) -> Result<Config, ConfigError> {
        load(self.config.as_deref(), &Env::from_process(), &self.flag_values(extra))
    }
}
