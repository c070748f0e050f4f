//! The table of every configuration key: its name, help, what it accepts, and how it is set and shown.

use std::time::Duration;

use crate::value::{boolean, choice, duration, format_duration, int, text, url};
use crate::{Config, OnRedisError, OnSlotTimeout, OrgSourceKind, QuerySourceKind, SinkKind};

/// One configuration key.
pub struct KeySpec {
    /// Dotted name: `section.key`.
    pub name: &'static str,
    /// One line for `--help`, error messages and `config.example.toml`.
    pub help: &'static str,
    /// Parses a raw value into the config; the error says what is allowed.
    pub set: fn(&mut Config, &str) -> Result<(), String>,
    /// The current value, written as it would be in a file.
    pub get: fn(&Config) -> String,
}

/// The environment variable for a key: `slots.lease_ttl` → `PROJECTOR_SLOTS_LEASE_TTL`.
pub fn env_var_for(key: &str) -> String {
    format!("PROJECTOR_{}", key.replace('.', "_").to_ascii_uppercase())
}

const SECS: fn(u64) -> Duration = Duration::from_secs;
const MILLIS: fn(u64) -> Duration = Duration::from_millis;
const DAY: Duration = Duration::from_secs(86_400);

const TIMEOUT_CHOICES: &[(&str, OnSlotTimeout)] = &[("skip", OnSlotTimeout::Skip), ("reschedule", OnSlotTimeout::Reschedule)];
const REDIS_ERROR_CHOICES: &[(&str, OnRedisError)] = &[("fail_closed", OnRedisError::FailClosed), ("fail_open", OnRedisError::FailOpen)];
const ORG_SOURCE_CHOICES: &[(&str, OrgSourceKind)] = &[("synthetic", OrgSourceKind::Synthetic), ("file", OrgSourceKind::File)];
const SINK_CHOICES: &[(&str, SinkKind)] = &[("redis", SinkKind::Redis), ("jsonl", SinkKind::JsonLines), ("discard", SinkKind::Discard)];
const QUERY_SOURCE_CHOICES: &[(&str, QuerySourceKind)] = &[("synthetic", QuerySourceKind::Synthetic), ("snuba", QuerySourceKind::Snuba)];

fn name_of<T: PartialEq + Copy>(options: &[(&'static str, T)], v: T) -> String {
    options.iter().find(|(_, o)| *o == v).map(|(n, _)| (*n).to_owned()).unwrap_or_default()
}

/// Every key Projector understands, in the order `config.example.toml` lists them.
pub static KEYS: &[KeySpec] = &[
    KeySpec {
        name: "redis.url",
        help: "Redis holding jobs, slots, run records and flags (redis://, rediss:// for TLS, or unix:///path)",
        set: |c, v| {
            c.redis.url = url(v, &["redis", "rediss", "unix", "redis+unix"])?;
            Ok(())
        },
        get: |c| c.redis.url.clone(),
    },
    KeySpec {
        name: "redis.tls_ca_file",
        help: "with rediss://: PEM file of the CA that signed the server's certificate (default: the system's roots)",
        set: |c, v| {
            c.redis.tls_ca_file = Some(text(v)?.into());
            Ok(())
        },
        get: |c| c.redis.tls_ca_file.as_ref().map(|p| p.display().to_string()).unwrap_or_default(),
    },
    KeySpec {
        name: "redis.tls_insecure",
        help: "with rediss://: accept any server certificate (self-signed staging servers only; same as a #insecure URL)",
        set: |c, v| {
            c.redis.tls_insecure = boolean(v)?;
            Ok(())
        },
        get: |c| c.redis.tls_insecure.to_string(),
    },
    KeySpec {
        name: "slots.limit",
        help: "slots held at once across the whole fleet (keep it below the query service's per-referrer limit of 100)",
        set: |c, v| {
            c.slots.limit = int(v, 1, 100_000)?;
            Ok(())
        },
        get: |c| c.slots.limit.to_string(),
    },
    KeySpec {
        name: "slots.lease_ttl",
        help: "how long a slot lease lives without renewal; a crashed holder's slot is free again after this",
        set: |c, v| {
            // Renewal runs every lease_ttl / 3; shorter would hammer Redis.
            c.slots.lease_ttl = duration(v, MILLIS(300), DAY)?;
            Ok(())
        },
        get: |c| format_duration(c.slots.lease_ttl),
    },
    KeySpec {
        name: "slots.max_wait",
        help: "how long a job waits for a slot before slots.on_timeout applies",
        set: |c, v| {
            c.slots.max_wait = duration(v, Duration::ZERO, DAY)?;
            Ok(())
        },
        get: |c| format_duration(c.slots.max_wait),
    },
    KeySpec {
        name: "slots.on_timeout",
        help: "\"skip\" (record skipped_no_slot) or \"reschedule\" (re-enqueue with backoff, then skip)",
        set: |c, v| {
            c.slots.on_timeout = choice(v, TIMEOUT_CHOICES)?;
            Ok(())
        },
        get: |c| name_of(TIMEOUT_CHOICES, c.slots.on_timeout),
    },
    KeySpec {
        name: "slots.on_redis_error",
        help: "\"fail_closed\" (do not query, record slot_unavailable) or \"fail_open\" (query under a local fallback limit)",
        set: |c, v| {
            c.slots.on_redis_error = choice(v, REDIS_ERROR_CHOICES)?;
            Ok(())
        },
        get: |c| name_of(REDIS_ERROR_CHOICES, c.slots.on_redis_error),
    },
    KeySpec {
        name: "slots.fallback_limit",
        help: "with on_redis_error = \"fail_open\": slots per worker process while Redis is unreachable",
        set: |c, v| {
            c.slots.fallback_limit = int(v, 1, 10_000)?;
            Ok(())
        },
        get: |c| c.slots.fallback_limit.to_string(),
    },
    KeySpec {
        name: "slots.max_reschedules",
        help: "with on_timeout = \"reschedule\": how many times a job is re-enqueued before it is skipped",
        set: |c, v| {
            c.slots.max_reschedules = int(v, 0, 100)?;
            Ok(())
        },
        get: |c| c.slots.max_reschedules.to_string(),
    },
    KeySpec {
        name: "batch.size",
        help: "organizations per batch",
        set: |c, v| {
            c.batch.size = int(v, 1, 1_000_000)?;
            Ok(())
        },
        get: |c| c.batch.size.to_string(),
    },
    KeySpec {
        name: "batch.delay",
        help: "batch k becomes runnable at k x batch.delay after the tick (\"0s\" releases everything at once)",
        set: |c, v| {
            c.batch.delay = duration(v, Duration::ZERO, SECS(3600))?;
            Ok(())
        },
        get: |c| format_duration(c.batch.delay),
    },
    KeySpec {
        name: "schedule.cron",
        help: "when the scheduler fans out, as a six-field cron expression with seconds first, in UTC",
        set: |c, v| {
            let expr = text(v)?;
            c.schedule.cron = <cron::Schedule as std::str::FromStr>::from_str(&expr)
                .map_err(|e| format!("must be a cron expression with seconds first, like \"0 0 * * * *\" (hourly): {e}"))?;
            Ok(())
        },
        get: |c| c.schedule.cron.source().to_owned(),
    },
    KeySpec {
        name: "orgs.source",
        help: "where organizations come from: \"synthetic\" (orgs.count of them) or \"file\" (JSON lines at orgs.path)",
        set: |c, v| {
            c.orgs.source = choice(v, ORG_SOURCE_CHOICES)?;
            Ok(())
        },
        get: |c| name_of(ORG_SOURCE_CHOICES, c.orgs.source),
    },
    KeySpec {
        name: "orgs.count",
        help: "how many synthetic organizations",
        set: |c, v| {
            c.orgs.count = int(v, 0, 10_000_000)?;
            Ok(())
        },
        get: |c| c.orgs.count.to_string(),
    },
    KeySpec {
        name: "orgs.path",
        help: "JSON-lines file of organizations, for orgs.source = \"file\"",
        set: |c, v| {
            c.orgs.path = Some(text(v)?.into());
            Ok(())
        },
        get: |c| c.orgs.path.as_ref().map(|p| p.display().to_string()).unwrap_or_default(),
    },
    KeySpec {
        name: "query.source",
        help: "where hourly counts come from: \"synthetic\" (built in) or \"snuba\" (HTTP at query.url)",
        set: |c, v| {
            c.query.source = choice(v, QUERY_SOURCE_CHOICES)?;
            Ok(())
        },
        get: |c| name_of(QUERY_SOURCE_CHOICES, c.query.source),
    },
    KeySpec {
        name: "query.url",
        help: "base URL of the Snuba-compatible query service (http:// or https://), for query.source = \"snuba\"",
        set: |c, v| {
            c.query.url = Some(url(v, &["http", "https"])?);
            Ok(())
        },
        get: |c| c.query.url.clone().unwrap_or_default(),
    },
    KeySpec {
        name: "query.tls_ca_file",
        help: "with an https:// query.url: PEM file of the CA that signed the service's certificate (default: the system's roots)",
        set: |c, v| {
            c.query.tls_ca_file = Some(text(v)?.into());
            Ok(())
        },
        get: |c| c.query.tls_ca_file.as_ref().map(|p| p.display().to_string()).unwrap_or_default(),
    },
    KeySpec {
        name: "query.tls_insecure",
        help: "with an https:// query.url: accept any certificate (staging only)",
        set: |c, v| {
            c.query.tls_insecure = boolean(v)?;
            Ok(())
        },
        get: |c| c.query.tls_insecure.to_string(),
    },
    KeySpec {
        name: "query.dataset",
        help: "dataset queried, as in {query.url}/{dataset}/snql",
        set: |c, v| {
            let dataset = text(v)?;
            if !dataset.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '_') {
                return Err("must be a dataset name such as \"events\" (letters, digits, _)".to_owned());
            }
            c.query.dataset = dataset;
            Ok(())
        },
        get: |c| c.query.dataset.clone(),
    },
    KeySpec {
        name: "query.referrer",
        help: "referrer sent with every query; the query service limits concurrency per referrer",
        set: |c, v| {
            c.query.referrer = text(v)?;
            Ok(())
        },
        get: |c| c.query.referrer.clone(),
    },
    KeySpec {
        name: "query.timeout",
        help: "give up on one query after this long (counted as a retryable timeout)",
        set: |c, v| {
            c.query.timeout = duration(v, MILLIS(1), SECS(3600))?;
            Ok(())
        },
        get: |c| format_duration(c.query.timeout),
    },
    KeySpec {
        name: "query.max_duration",
        help: "how long the query service lets one query run (default: query.timeout); a slot taken for a query is not given to anyone else before its start + this, even if its worker pauses",
        set: |c, v| {
            c.query.max_duration = Some(duration(v, MILLIS(1), SECS(3600))?);
            Ok(())
        },
        get: |c| c.query.max_duration.map(format_duration).unwrap_or_default(),
    },
    KeySpec {
        name: "query.synthetic_latency",
        help: "latency of one synthetic query, standing in for the analytics store",
        set: |c, v| {
            c.query.synthetic_latency = duration(v, Duration::ZERO, SECS(600))?;
            Ok(())
        },
        get: |c| format_duration(c.query.synthetic_latency),
    },
    KeySpec {
        name: "query.referrer_limit",
        help: "the query service's own limit of concurrent queries for query.referrer; projectorctl refuses a slot limit above it",
        set: |c, v| {
            c.query.referrer_limit = int(v, 1, 100_000)?;
            Ok(())
        },
        get: |c| c.query.referrer_limit.to_string(),
    },
    KeySpec {
        name: "sink.kind",
        help: "where projections go: \"redis\" (a hash per org at redis.url), \"jsonl\" (file at sink.path) or \"discard\"",
        set: |c, v| {
            c.sink.kind = choice(v, SINK_CHOICES)?;
            Ok(())
        },
        get: |c| name_of(SINK_CHOICES, c.sink.kind),
    },
    KeySpec {
        name: "sink.path",
        help: "JSON-lines file of projections, for sink.kind = \"jsonl\"",
        set: |c, v| {
            c.sink.path = Some(text(v)?.into());
            Ok(())
        },
        get: |c| c.sink.path.as_ref().map(|p| p.display().to_string()).unwrap_or_default(),
    },
    KeySpec {
        name: "sink.ttl",
        help: "how long an org's stored projections live after its last write (redis sink); projected hours older than this are pruned",
        set: |c, v| {
            c.sink.ttl = duration(v, SECS(60), SECS(90 * 24 * 3600))?;
            Ok(())
        },
        get: |c| format_duration(c.sink.ttl),
    },
    KeySpec {
        name: "worker.concurrency",
        help: "jobs in flight per worker process (slots bound the queries across the fleet, not this)",
        set: |c, v| {
            c.worker.concurrency = int(v, 1, 10_000)?;
            Ok(())
        },
        get: |c| c.worker.concurrency.to_string(),
    },
    KeySpec {
        name: "worker.metrics_addr",
        help: "address serving /metrics, /healthz and /readyz; port 0 picks a free port (logged at start)",
        set: |c, v| {
            c.worker.metrics_addr =
                v.trim().parse().map_err(|_| "must be a socket address like \"127.0.0.1:9464\" or \"0.0.0.0:9464\"".to_owned())?;
            Ok(())
        },
        get: |c| c.worker.metrics_addr.to_string(),
    },
    KeySpec {
        name: "worker.shutdown_grace",
        help: "on SIGTERM, how long in-flight jobs may run before the worker exits",
        set: |c, v| {
            c.worker.shutdown_grace = duration(v, Duration::ZERO, SECS(3600))?;
            Ok(())
        },
        get: |c| format_duration(c.worker.shutdown_grace),
    },
    KeySpec {
        name: "worker.rollout_refresh",
        help: "how long a worker trusts the rollout flag it read before reading it again",
        set: |c, v| {
            c.worker.rollout_refresh = duration(v, MILLIS(10), SECS(600))?;
            Ok(())
        },
        get: |c| format_duration(c.worker.rollout_refresh),
    },
    KeySpec {
        name: "worker.housekeeping_interval",
        help: "how often a worker promotes due jobs, refreshes queue and slot gauges and writes its heartbeat",
        set: |c, v| {
            c.worker.housekeeping_interval = duration(v, MILLIS(10), SECS(60))?;
            Ok(())
        },
        get: |c| format_duration(c.worker.housekeeping_interval),
    },
];

/// The spec of a key, if it exists.
pub(crate) fn find(name: &str) -> Option<&'static KeySpec> {
    KEYS.iter().find(|k| k.name == name)
}
