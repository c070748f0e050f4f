//! The command-line layer: `--config`, `--set KEY=VALUE`, and named flags for the keys changed most often.

use std::path::PathBuf;

use clap::Args;

use crate::load::{Env, FlagValue, load};
use crate::{Config, ConfigError};

/// Configuration flags shared by every Projector binary.
///
/// Precedence: defaults < `--config` file < `PROJECTOR_<SECTION>_<KEY>` environment < these flags.
#[derive(Debug, Clone, Default, Args)]
pub struct ConfigArgs {
    /// TOML configuration file (see config.example.toml for every key)
    #[arg(long, value_name = "PATH", global = true)]
    pub config: Option<PathBuf>,

    /// Set any configuration key, e.g. --set slots.lease_ttl=10s (repeatable)
    #[arg(long = "set", value_name = "KEY=VALUE", global = true)]
    pub set: Vec<String>,

    /// Redis URL [key: redis.url]
    #[arg(long, value_name = "URL", global = true)]
    pub redis_url: Option<String>,

    /// Slots held at once across the fleet [key: slots.limit, default 50]
    #[arg(long, value_name = "N", global = true)]
    pub slots_limit: Option<String>,

    /// Longest wait for a slot before the job is skipped [key: slots.max_wait, default 60s]
    #[arg(long, value_name = "DURATION", global = true)]
    pub slots_max_wait: Option<String>,

    /// Organizations per batch [key: batch.size, default 25]
    #[arg(long, value_name = "N", global = true)]
    pub batch_size: Option<String>,

    /// Delay between batch releases, e.g. 2s or 100ms [key: batch.delay, default 2s]
    #[arg(long, value_name = "DURATION", global = true)]
    pub batch_delay: Option<String>,

    /// Number of synthetic organizations [key: orgs.count, default 200]
    #[arg(long, value_name = "N", global = true)]
    pub orgs: Option<String>,

    /// Jobs in flight per worker process [key: worker.concurrency, default 64]
    #[arg(long, value_name = "N", global = true)]
    pub concurrency: Option<String>,
}

impl ConfigArgs {
    /// The flag layer as (key, value, flag) triples, in the order given.
    pub fn flag_values(&self) -> Vec<FlagValue> {
        let named = [
            ("redis.url", "--redis-url", &self.redis_url),
            ("slots.limit", "--slots-limit", &self.slots_limit),
            ("slots.max_wait", "--slots-max-wait", &self.slots_max_wait),
            ("batch.size", "--batch-size", &self.batch_size),
            ("batch.delay", "--batch-delay", &self.batch_delay),
            ("orgs.count", "--orgs", &self.orgs),
            ("worker.concurrency", "--concurrency", &self.concurrency),
        ];
        let mut out: Vec<FlagValue> = self
            .set
            .iter()
            .map(|pair| {
                let (key, value) = pair.split_once('=').unwrap_or((pair.as_str(), ""));
                FlagValue { key: key.trim().to_owned(), value: value.to_owned(), flag: "--set".to_owned() }
            })
            .collect();
        // Named flags come after --set so that the more specific spelling wins.
        out.extend(named.into_iter().filter_map(|(key, flag, value)| {
            value.as_ref().map(|v| FlagValue { key: key.to_owned(), value: v.clone(), flag: flag.to_owned() })
        }));
        out
    }

    /// Loads the configuration from every layer, reading the process environment.
    pub fn load(&self) -> Result<Config, ConfigError> {
        load(self.config.as_deref(), &Env::from_process(), &self.flag_values())
    }

    /// Loads the configuration, or prints every problem and exits with code 2 (the documented
    /// exit code for bad configuration in every Projector binary).
    pub fn load_or_exit(&self) -> Config {
        match self.load() {
            Ok(config) => config,
            Err(e) => {
                eprintln!("error: {e}");
                std::process::exit(2);
            }
        }
    }
}
