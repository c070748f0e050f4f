//! The table of every configuration key, written once each: its name, where it lives in
//! `Config`, what it accepts, its default and its help. Parsing, printing, the defaults,
//! `config.example.toml`'s check and `--help` all come from this table.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::value::{RateWindow, boolean, choice, duration, float, format_duration, int, rates, text, url};
use crate::{BackendKind, Config, OnRedisError, OnSlotTimeout, OrgSourceKind, Overlap, QuerySourceKind, RateMode, SinkKind, WhenPaused};

/// One configuration key.
pub struct KeySpec {
    /// Dotted name: `section.key`.
    pub name: &'static str,
    /// One line for `--help`, error messages and `config.example.toml`.
    pub help: &'static str,
    /// The default, as it would be written in a file; `None` means unset.
    pub default: Option<&'static str>,
    /// Parses a raw value into the config; the error says what is allowed.
    pub set: fn(&mut Config, &str) -> Result<(), String>,
    /// The current value, written as it would be in a file.
    pub get: fn(&Config) -> String,
}

/// The configuration table of docs/configuration.md, from [`KEYS`]: one row per key with its default and its
/// help, so the table cannot drift from what the binaries accept. A test compares it with the
/// file (`UPDATE_README=1 cargo test -p projector-config readme` rewrites it).
pub fn markdown_table() -> String {
    let mut out = String::from("| key | default | what it does |\n|---|---|---|\n");
    for key in KEYS {
        let default = key.default.map(|d| format!("`{d}`")).unwrap_or_else(|| "unset".to_owned());
        let help = key.help.replace('|', "\\|");
        out.push_str(&format!("| `{}` | {default} | {help} |\n", key.name));
    }
    out
}

/// The environment variable for a key: `slots.lease_ttl` → `PROJECTOR_SLOTS_LEASE_TTL`.
pub fn env_var_for(key: &str) -> String {
    format!("PROJECTOR_{}", key.replace('.', "_").to_ascii_uppercase())
}

/// What a key accepts: parses raw text into the field's type and writes it back as text.
trait Kind<T> {
    fn parse(&self, raw: &str) -> Result<T, String>;
    fn show(&self, value: &T) -> String;
}

/// An integer within bounds.
struct Int<T>(T, T);
/// A number within bounds.
struct Float(f64, f64);
/// A duration within bounds ("2s", "500ms").
struct Dur(Duration, Duration);
/// One of a fixed set of words.
struct Choice<T: 'static>(&'static [(&'static str, T)]);
/// Non-empty text.
struct Text;
/// A dataset name: letters, digits and `_`.
struct Dataset;
/// `true` or `false`.
struct Bool;
/// Outcome categories: small integers, comma-separated.
struct Categories;
/// A URL with one of these schemes.
struct Url(&'static [&'static str]);
/// A file path.
struct FilePath;
/// A six-field cron expression, seconds first.
struct Cron;
/// A socket address.
struct Addr;
/// A rate policy: windows, shortest first.
struct Rates;
/// An optional value: unset shows as empty.
struct Opt<K>(K);

impl<T: std::str::FromStr + PartialOrd + std::fmt::Display + Copy> Kind<T> for Int<T> {
    fn parse(&self, raw: &str) -> Result<T, String> {
        int(raw, self.0, self.1)
    }
    fn show(&self, value: &T) -> String {
        value.to_string()
    }
}

impl Kind<f64> for Float {
    fn parse(&self, raw: &str) -> Result<f64, String> {
        float(raw, self.0, self.1)
    }
    fn show(&self, value: &f64) -> String {
        value.to_string()
    }
}

impl Kind<Duration> for Dur {
    fn parse(&self, raw: &str) -> Result<Duration, String> {
        duration(raw, self.0, self.1)
    }
    fn show(&self, value: &Duration) -> String {
        format_duration(*value)
    }
}

impl<T: PartialEq + Copy> Kind<T> for Choice<T> {
    fn parse(&self, raw: &str) -> Result<T, String> {
        choice(raw, self.0)
    }
    fn show(&self, value: &T) -> String {
        self.0.iter().find(|(_, o)| o == value).map(|(n, _)| (*n).to_owned()).unwrap_or_default()
    }
}

impl Kind<String> for Text {
    fn parse(&self, raw: &str) -> Result<String, String> {
        text(raw)
    }
    fn show(&self, value: &String) -> String {
        value.clone()
    }
}

impl Kind<String> for Dataset {
    fn parse(&self, raw: &str) -> Result<String, String> {
        let dataset = text(raw)?;
        if !dataset.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '_') {
            return Err("must be a dataset name such as \"outcomes\" (letters, digits, _)".to_owned());
        }
        // Checked here, at start, rather than as a 400 per org: the query reads org_id,
        // project_id, timestamp, outcome, category and quantity, which only these datasets' entity
        // has (Snuba's entity YAML files; docs/snuba.md).
        if !crate::DATASETS_WITH_OUTCOMES.contains(&dataset.as_str()) {
            return Err(format!(
                "must be a dataset whose entity has the accepted-outcomes columns (org_id, quantity, outcome, category): {}; \
                 \"events\" has none of them and holds stored errors only",
                crate::DATASETS_WITH_OUTCOMES.join(" or ")
            ));
        }
        Ok(dataset)
    }
    fn show(&self, value: &String) -> String {
        value.clone()
    }
}

impl Kind<Vec<u8>> for Categories {
    fn parse(&self, raw: &str) -> Result<Vec<u8>, String> {
        let mut categories = Vec::new();
        for part in raw.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let c: u8 =
                part.parse().map_err(|_| format!("{part:?} is not a category number (0 to 255, as Sentry's DataCategory numbers them)"))?;
            if !categories.contains(&c) {
                categories.push(c);
            }
        }
        if categories.is_empty() {
            return Err("must name at least one category, like \"0,1,3\" (default, error, security: Sentry's error events)".to_owned());
        }
        Ok(categories)
    }
    fn show(&self, value: &Vec<u8>) -> String {
        value.iter().map(u8::to_string).collect::<Vec<_>>().join(",")
    }
}

impl Kind<bool> for Bool {
    fn parse(&self, raw: &str) -> Result<bool, String> {
        boolean(raw)
    }
    fn show(&self, value: &bool) -> String {
        value.to_string()
    }
}

impl Kind<String> for Url {
    fn parse(&self, raw: &str) -> Result<String, String> {
        url(raw, self.0)
    }
    fn show(&self, value: &String) -> String {
        value.clone()
    }
}

impl Kind<PathBuf> for FilePath {
    fn parse(&self, raw: &str) -> Result<PathBuf, String> {
        text(raw).map(PathBuf::from)
    }
    fn show(&self, value: &PathBuf) -> String {
        value.display().to_string()
    }
}

impl Kind<cron::Schedule> for Cron {
    fn parse(&self, raw: &str) -> Result<cron::Schedule, String> {
        <cron::Schedule as std::str::FromStr>::from_str(&text(raw)?)
            .map_err(|e| format!("must be a cron expression with seconds first, like \"0 0 * * * *\" (hourly): {e}"))
    }
    fn show(&self, value: &cron::Schedule) -> String {
        value.source().to_owned()
    }
}

impl Kind<SocketAddr> for Addr {
    fn parse(&self, raw: &str) -> Result<SocketAddr, String> {
        raw.trim().parse().map_err(|_| "must be a socket address like \"127.0.0.1:9464\" or \"0.0.0.0:9464\"".to_owned())
    }
    fn show(&self, value: &SocketAddr) -> String {
        value.to_string()
    }
}

impl Kind<Vec<RateWindow>> for Rates {
    fn parse(&self, raw: &str) -> Result<Vec<RateWindow>, String> {
        rates(raw)
    }
    fn show(&self, value: &Vec<RateWindow>) -> String {
        value.iter().map(ToString::to_string).collect::<Vec<_>>().join(",")
    }
}

impl<T, K: Kind<T>> Kind<Option<T>> for Opt<K> {
    fn parse(&self, raw: &str) -> Result<Option<T>, String> {
        self.0.parse(raw).map(Some)
    }
    fn show(&self, value: &Option<T>) -> String {
        value.as_ref().map(|v| self.0.show(v)).unwrap_or_default()
    }
}

const SECS: fn(u64) -> Duration = Duration::from_secs;
const MILLIS: fn(u64) -> Duration = Duration::from_millis;
const DAY: Duration = Duration::from_secs(86_400);

const WHEN_PAUSED_CHOICES: &[(&str, WhenPaused)] = &[("enqueue", WhenPaused::Enqueue), ("skip", WhenPaused::Skip)];
const OVERLAP_CHOICES: &[(&str, Overlap)] = &[("skip", Overlap::Skip), ("queue", Overlap::Queue), ("replace", Overlap::Replace)];
const TIMEOUT_CHOICES: &[(&str, OnSlotTimeout)] = &[("skip", OnSlotTimeout::Skip), ("reschedule", OnSlotTimeout::Reschedule)];
const REDIS_ERROR_CHOICES: &[(&str, OnRedisError)] = &[("fail_closed", OnRedisError::FailClosed), ("fail_open", OnRedisError::FailOpen)];
const ORG_SOURCE_CHOICES: &[(&str, OrgSourceKind)] = &[("synthetic", OrgSourceKind::Synthetic), ("file", OrgSourceKind::File)];
const SINK_CHOICES: &[(&str, SinkKind)] = &[
    ("redis", SinkKind::Redis),
    ("jsonl", SinkKind::JsonLines),
    ("discard", SinkKind::Discard),
    ("postgres", SinkKind::Postgres),
    ("sqlite", SinkKind::Sqlite),
];
const BACKEND_CHOICES: &[(&str, BackendKind)] =
    &[("memory", BackendKind::Memory), ("sqlite", BackendKind::Sqlite), ("redis", BackendKind::Redis)];
const RATE_MODE_CHOICES: &[(&str, RateMode)] = &[("strict", RateMode::Strict), ("smooth", RateMode::Smooth)];
const QUERY_SOURCE_CHOICES: &[(&str, QuerySourceKind)] = &[("synthetic", QuerySourceKind::Synthetic), ("snuba", QuerySourceKind::Snuba)];

/// Declares the key table: `"section.key" => section.field: kind, default ..., help;`.
macro_rules! keys {
    ($( $name:literal => $section:ident . $field:ident : $kind:expr, default $default:expr, $help:literal; )*) => {
        /// Every key Projector understands, in the order `config.example.toml` lists them.
        pub static KEYS: &[KeySpec] = &[$(
            KeySpec {
                name: $name,
                help: $help,
                default: $default,
                set: |c, v| {
                    c.$section.$field = Kind::parse(&$kind, v)?;
                    Ok(())
                },
                get: |c| Kind::show(&$kind, &c.$section.$field),
            },
        )*];
    };
}

keys! {
    "backend.kind" => backend.kind: Opt(Choice(BACKEND_CHOICES)), default None,
        "where the queue, slots, rate windows and runs live: \"memory\" (this process only, forgotten at exit), \"sqlite\" (one file shared by the processes of one machine, kept across restarts) or \"redis\" (a fleet); unset: memory for run-once --embedded, redis (redis.url) for every other process";
    "backend.dsn" => backend.dsn: Opt(Text), default None,
        "with backend.kind = \"sqlite\": the file, as sqlx reads it (sqlite:///absolute/path.db or sqlite://relative.db; created if missing); with \"redis\": Redis's URL, in place of redis.url";
    "backend.busy_timeout" => backend.busy_timeout: Dur(Duration::ZERO, SECS(600)), default Some("5s"),
        "with backend.kind = \"sqlite\": how long a process waits for another's write lock before it fails with an error naming the file";
    "redis.url" => redis.url: Url(&["redis", "rediss", "unix", "redis+unix"]), default Some("redis://127.0.0.1:6379"),
        "Redis holding jobs, slots, run records and flags (redis://, rediss:// for TLS, or unix:///path)";
    "redis.tls_ca_file" => redis.tls_ca_file: Opt(FilePath), default None,
        "with rediss://: PEM file of the CA that signed the server's certificate (default: the system's roots)";
    "redis.tls_insecure" => redis.tls_insecure: Bool, default Some("false"),
        "with rediss://: accept any server certificate (self-signed staging servers only; same as a #insecure URL)";
    "redis.sentinel_master" => redis.sentinel_master: Opt(Text), default None,
        "set: redis.url is a Redis Sentinel, and this the name of the master set it watches (SENTINEL MONITOR <name> …); every connection goes to the master it names now, and again after a failover";
    "redis.cluster" => redis.cluster: Bool, default Some("false"),
        "redis.url is one node of a Redis Cluster (the others are found from it): keys get hash tags so that the keys of each script share a cluster slot. Key names differ from a single server's, so switch with an empty queue";
    "slots.limit" => slots.limit: Int(1, 100_000), default Some("50"),
        "slots held at once across the whole fleet (keep it below the query service's per-referrer limit of 100)";
    "slots.lease_ttl" => slots.lease_ttl: Dur(MILLIS(300), DAY), default Some("30s"),
        "how long a slot lease lives without renewal; a crashed holder's slot is free again after this";
    "slots.max_wait" => slots.max_wait: Dur(Duration::ZERO, DAY), default Some("60s"),
        "how long a job waits for a slot before slots.on_timeout applies";
    "slots.on_timeout" => slots.on_timeout: Choice(TIMEOUT_CHOICES), default Some("skip"),
        "\"skip\" (record skipped_no_slot) or \"reschedule\" (re-enqueue with backoff, then skip)";
    "slots.on_redis_error" => slots.on_redis_error: Choice(REDIS_ERROR_CHOICES), default Some("fail_closed"),
        "\"fail_closed\" (do not query, record slot_unavailable) or \"fail_open\" (query under a local fallback limit)";
    "slots.fallback_limit" => slots.fallback_limit: Int(1, 10_000), default Some("2"),
        "with on_redis_error = \"fail_open\": slots per worker process while Redis is unreachable";
    "slots.follow_service" => slots.follow_service: Bool, default Some("true"),
        "cap the limit in force by the query service's own numbers from each answer (Snuba's ReferrerGuardRailPolicy: its limit, less what other callers hold there, less slots.service_margin); false: only slots.limit and [adaptive] set it";
    "slots.service_margin" => slots.service_margin: Int(0, 10_000), default Some("2"),
        "slots kept below what the query service admits, for queries that start between two answers";
    "slots.service_ttl" => slots.service_ttl: Dur(SECS(1), SECS(3600)), default Some("60s"),
        "how long one answer's cap holds without a newer one; after it, slots.limit and [adaptive] rule again";
    "slots.service_memory" => slots.service_memory: Dur(Duration::ZERO, SECS(7 * 24 * 3600)), default Some("24h"),
        "how long the query service's own limit is remembered after its last answer (every answer refreshes it): after slots.service_ttl, the limit in force stays at most that limit less slots.service_margin, so the next run starts within what the service admits instead of learning it from 429s; \"0s\" forgets it with the cap";
    "slots.service_report_every" => slots.service_report_every: Dur(Duration::ZERO, SECS(60)), default Some("250ms"),
        "at most one report of the query service's numbers (one Redis script call) per this span from each worker: the cap and the other callers' count stay current without a call per answer; a refusal or a changed service limit is always reported; \"0s\": every answer";
    "slots.max_reschedules" => slots.max_reschedules: Int(0, 100), default Some("3"),
        "with on_timeout = \"reschedule\": how many times a job is re-enqueued before it is skipped";
    "batch.size" => batch.size: Int(1, 1_000_000), default Some("25"),
        "organizations per batch";
    "batch.delay" => batch.delay: Dur(Duration::ZERO, SECS(3600)), default Some("2s"),
        "batch k becomes runnable at k x batch.delay after the tick, or after the fan-out for a past tick replayed with run-once --tick (\"0s\" releases everything at once); an upper bound: when the releases would not end within half of the time to the run's deadline, the delay tightens to fit, and the plan says by how much";
    "schedule.cron" => schedule.cron: Cron, default Some("0 0 * * * *"),
        "when the scheduler fans out, as a six-field cron expression with seconds first, in UTC";
    "schedule.when_paused" => schedule.when_paused: Choice(WHEN_PAUSED_CHOICES), default Some("enqueue"),
        "what a tick does while the fleet is paused (projectorctl pause): \"enqueue\" (jobs wait in the queue until resume) or \"skip\" (logged; re-run with run-once --tick)";
    "schedule.overlap" => schedule.overlap: Choice(OVERLAP_CHOICES), default Some("skip"),
        "what a tick does while an earlier run is still open: \"skip\" (recorded as a skipped run in runs list; the open run keeps going; the default, so runs never pile up), \"queue\" (waits for the open run to end, until the next tick at most) or \"replace\" (cancels the open run)";
    "schedule.metrics_addr" => schedule.metrics_addr: Addr, default Some("127.0.0.1:9465"),
        "where projector-scheduler serve answers /metrics (ticks, fan-outs, the last finished run), /healthz and /readyz (Redis answers and the tick loop runs); port 0 picks a free port (logged at start)";
    "orgs.source" => orgs.source: Choice(ORG_SOURCE_CHOICES), default Some("synthetic"),
        "where organizations come from: \"synthetic\" (orgs.count of them) or \"file\" (JSON lines at orgs.path)";
    "orgs.count" => orgs.count: Int(1, 10_000_000), default Some("200"),
        "how many synthetic organizations";
    "orgs.path" => orgs.path: Opt(FilePath), default None,
        "JSON-lines file of organizations, for orgs.source = \"file\" (refused with any other source); each line has org_id, and may have project_ids and active";
    "orgs.allow_unknown_keys" => orgs.allow_unknown_keys: Bool, default Some("false"),
        "true: ignore keys of the organizations file other than org_id, project_ids and active (a file written for another tool too); false: a line with another key refuses the file, naming the line, the key and the nearest known one";
    "query.source" => query.source: Choice(QUERY_SOURCE_CHOICES), default Some("synthetic"),
        "where hourly counts come from: \"synthetic\" (built in) or \"snuba\" (HTTP at query.url)";
    "query.url" => query.url: Opt(Url(&["http", "https"])), default None,
        "base URL of the Snuba-compatible query service (http:// or https://), for query.source = \"snuba\"";
    "query.tls_ca_file" => query.tls_ca_file: Opt(FilePath), default None,
        "with an https:// query.url: PEM file of the CA that signed the service's certificate (default: the system's roots)";
    "query.tls_insecure" => query.tls_insecure: Bool, default Some("false"),
        "with an https:// query.url: accept any certificate (staging only)";
    "query.dataset" => query.dataset: Dataset, default Some("outcomes"),
        "dataset queried, as in {query.url}/{dataset}/snql, and its entity: \"outcomes\" (accepted volume per org, project, hour and category; served from the hourly table for windows under 90 days) or \"outcomes_raw\"";
    "query.categories" => query.categories: Categories, default Some("0,1,3"),
        "outcome categories summed into an hour's accepted volume, as Sentry's DataCategory numbers them; default 0,1,3 (default, error, security): the error events spike protection guards, all counted in events so their sum means something (attachments count bytes: never mix them in)";
    "query.page_rows" => query.page_rows: Int(1, 10_000), default Some("10000"),
        "rows asked per query (LIMIT); the query service allows at most 10,000 and caps an unlimited query at 1,000, so an org's projects are read in groups whose every hour fits one page";
    "query.referrer" => query.referrer: Text, default Some("getsentry.get_spike_projections"),
        "referrer sent with every query; the query service limits concurrency per referrer";
    "query.timeout" => query.timeout: Dur(MILLIS(1), SECS(3600)), default Some("30s"),
        "give up on one query after this long (counted as a retryable timeout)";
    "query.max_duration" => query.max_duration: Dur(MILLIS(1), SECS(3600)), default Some("60s"),
        "the longest the query service counts one query as running: Snuba's max_query_duration_s (60 s, docs/snuba.md), not Projector's patience (query.timeout); a slot under which a query was sent is not given to anyone else before its start + this, whatever ends the job; a value below 60s is refused unless query.max_duration_below_service = true";
    "query.max_duration_below_service" => query.max_duration_below_service: Bool, default Some("false"),
        "true: accept a query.max_duration below the service's own bound (60 s); only right when the service's max_query_duration_s is lowered too, since a slot could otherwise go back while the service still counts its query";
    "query.synthetic_latency" => query.synthetic_latency: Dur(Duration::ZERO, SECS(600)), default Some("50ms"),
        "latency of one synthetic query, standing in for the analytics store";
    "query.referrer_limit" => query.referrer_limit: Int(1, 100_000), default Some("100"),
        "the query service's own limit of concurrent queries for query.referrer; projectorctl refuses a slot limit above it";
    "sink.kind" => sink.kind: Choice(SINK_CHOICES), default Some("redis"),
        "where projections go: \"redis\" (a hash per org at redis.url), \"postgres\" (table spike_projections at sink.postgres_url), \"sqlite\" (table projector_projections in backend.dsn's file; with backend.kind = \"sqlite\", where it is also the default), \"jsonl\" (file at sink.path) or \"discard\"";
    "sink.path" => sink.path: Opt(FilePath), default None,
        "JSON-lines file of projections, for sink.kind = \"jsonl\"";
    "sink.ttl" => sink.ttl: Dur(SECS(60), SECS(90 * 24 * 3600)), default Some("48h"),
        "how long an org's stored projections live after its last write (redis sink); projected hours older than this are pruned";
    "sink.postgres_url" => sink.postgres_url: Opt(Url(&["postgresql", "postgres"])), default None,
        "PostgreSQL database for sink.kind = \"postgres\", like postgresql://user:password@host:5432/billing (a unix socket directory goes percent-encoded in the host: %2Frun%2Fpostgresql)";
    "sink.postgres_pool" => sink.postgres_pool: Int(1, 1_000), default Some("16"),
        "connections each process keeps to sink.postgres_url (one write per org holds one for a round trip)";
    "sink.migrate" => sink.migrate: Bool, default Some("true"),
        "apply the PostgreSQL store's schema migrations at start; false: an operator runs `projectorctl db migrate` before deploying";
    "worker.concurrency" => worker.concurrency: Int(1, 10_000), default Some("64"),
        "jobs in flight per worker process (slots bound the queries across the fleet, not this)";
    "worker.metrics_addr" => worker.metrics_addr: Addr, default Some("127.0.0.1:9464"),
        "address serving /metrics, /healthz and /readyz; port 0 picks a free port (logged at start)";
    "worker.shutdown_grace" => worker.shutdown_grace: Dur(Duration::ZERO, SECS(3600)), default Some("30s"),
        "on SIGTERM, how long in-flight jobs may run before the worker exits";
    "worker.rollout_refresh" => worker.rollout_refresh: Dur(MILLIS(10), SECS(600)), default Some("2s"),
        "how long a worker trusts the rollout flag it read before reading it again";
    "worker.poll_interval" => worker.poll_interval: Dur(MILLIS(10), SECS(3600)), default Some("100ms"),
        "how often an idle job loop looks for jobs; jobs announced ready (a fan-out, a promotion of due jobs, a retry) are fetched at once regardless";
    "worker.housekeeping_interval" => worker.housekeeping_interval: Dur(MILLIS(10), SECS(60)), default Some("1s"),
        "how often a worker promotes due jobs, refreshes queue and slot gauges and writes its heartbeat";
    "worker.slot_sample_interval" => worker.slot_sample_interval: Dur(MILLIS(100), SECS(600)), default Some("10s"),
        "spacing of the fleet's slot samples (slots in use, the limit in force, the service's own count) that the status page charts over the last hour; one sample per interval for the whole fleet, an hour's worth kept in Redis (at most 3,600)";
    "runs.deadline" => runs.deadline: Opt(Dur(SECS(1), SECS(7 * 86_400))), default None,
        "how long after its tick a run may take (default: one period of the schedule, which for a scheduled run is until the next tick; a manual run started just before a tick gets a whole period too); at the deadline every org still open ends deadline (one already querying ends as its query does), so no org of an old run competes with the next run's, and no try is retried past it";
    "runs.max_attempts" => runs.max_attempts: Int(1, 100), default Some("4"),
        "tries of one org in one run when a try fails in a way that may pass (a 5xx, a timeout, ClickHouse overloaded, a referrer 429, the store unreachable); the retries come after a jittered exponential backoff (1 s, 2 s, 4 s…). Default 4: a blip of a few seconds passes, a service that stays down costs each org 4 queries, not an hour of them. A 400, a malformed answer or a stale write is never retried";
    "runs.retention" => runs.retention: Dur(SECS(60), SECS(90 * 86_400)), default Some("7days"),
        "how long a run's record, per-org outcomes and plan stay in Redis after their last write (run-once --resume and projectorctl run need them); the expiry is moved at most every quarter of the shorter retention (at most hourly), so it may come that much sooner";
    "runs.summary_retention" => runs.summary_retention: Dur(SECS(60), SECS(3_650 * 86_400)), default Some("90days"),
        "how long a run's summary (tick, org count, a count per outcome, start and end: what runs list and runs show print) stays after the run's last write; at least runs.retention. A few hundred bytes per run: the per-org records are gone after runs.retention, the summary is not";
    "runs.trail_retention" => runs.trail_retention: Dur(SECS(60), SECS(90 * 86_400)), default Some("24h"),
        "how long each org's trail in a run (route, slot wait, query, store, reason: what projectorctl explain and runs show print) stays in Redis after the run's last write (moved at most every quarter of it, at most hourly); about 360 B per org per run, so kept shorter than runs.retention. Once a run is compacted (runs.completed_detail), the trails of its orgs that did not complete are kept runs.retention";
    "runs.completed_detail" => runs.completed_detail: Dur(Duration::ZERO, SECS(90 * 86_400)), default Some("1h"),
        "how long a finished run keeps each completed org's full record (outcome, plan entry, trail: what explain prints step by step); after it the completed orgs are kept as a compact list of org and time recorded (about 4 B each) for the rest of runs.retention, so explain still says completed and when. Orgs that did not complete keep everything";
    "runs.dedup_window" => runs.dedup_window: Dur(SECS(60), SECS(30 * 86_400)), default Some("2h"),
        "how long after a fan-out its jobs stay deduplicated: a re-fan-out of the tick or --resume within it enqueues no job twice (one set per run, ~45 B of Redis per org)";
    "ops.action_token" => ops.action_token: Opt(Text), default None,
        "token the status page (projectorctl serve --allow-actions) requires for pause, resume, retry and cancel; a secret: `config show` prints it as ***";
    "rate.rates" => rate.rates: Rates, default None,
        "rate policy on query starts across the fleet, shortest window first, e.g. \"20/s, 5000/h\" (also 20/SECOND, 50/10s); unset: none";
    "rate.max_delay" => rate.max_delay: Dur(Duration::ZERO, SECS(3600)), default Some("2s"),
        "the longest a query start is delayed to fit rate.rates; a job that would wait longer ends skipped_rate_policy";
    "rate.mode" => rate.mode: Choice(RATE_MODE_CHOICES), default Some("strict"),
        "\"strict\" (never more than N starts in any interval W) or \"smooth\" (starts spaced W/N apart after rate.burst)";
    "rate.burst" => rate.burst: Int(1, 1_000_000), default Some("1"),
        "with mode = \"smooth\": starts allowed back to back before spacing applies";
    "rate.start_jitter" => rate.start_jitter: Dur(Duration::ZERO, SECS(10)), default Some("50ms"),
        "with mode = \"strict\": how far out of order two admitted starts may reach the query service (scheduling, network); each window is kept this much wider, so the service never counts more than N in W";
    "rate.enforce" => rate.enforce: Bool, default Some("true"),
        "false: shadow mode; nothing is delayed or refused, what would have been is logged and counted";
    "rate.cooldown_after_429" => rate.cooldown_after_429: Dur(Duration::ZERO, SECS(3600)), default Some("0s"),
        "after a 429 from the query service, no query starts anywhere in the fleet for this long (\"0s\": no cooldown)";
    "adaptive.enabled" => adaptive.enabled: Bool, default Some("false"),
        "adapt one multiplier for the whole fleet (on the slot limit and every rate) from the query service's 429s and throttle warnings";
    "adaptive.window" => adaptive.window: Dur(MILLIS(100), SECS(3600)), default Some("10s"),
        "the fleet decides once per window, from at least 10 answers";
    "adaptive.high_429_ratio" => adaptive.high_429_ratio: Float(0.0, 1.0), default Some("0.05"),
        "share of 429 answers in a window above which the multiplier drops by decrease_step_pct";
    "adaptive.increase_step_pct" => adaptive.increase_step_pct: Float(0.0, 100.0), default Some("5"),
        "growth per window while demand fills the limit and nothing warns";
    "adaptive.decrease_step_pct" => adaptive.decrease_step_pct: Float(0.0, 100.0), default Some("20"),
        "cut after a window above high_429_ratio (a quarter of it for throttle warnings)";
    "adaptive.min_multiplier" => adaptive.min_multiplier: Float(0.01, 1.0), default Some("0.3"),
        "the multiplier never goes below this";
    "adaptive.max_multiplier" => adaptive.max_multiplier: Float(0.01, 10.0), default Some("1.0"),
        "the multiplier never goes above this (1.0: never above the configured limit and rates)";
    "adaptive.use_throttle_signal" => adaptive.use_throttle_signal: Bool, default Some("true"),
        "treat the query service's throttled answers (is_throttled) as an early warning: hold growth, or cut gently above high_429_ratio";
}

/// The spec of a key, if it exists.
pub(crate) fn find(name: &str) -> Option<&'static KeySpec> {
    KEYS.iter().find(|k| k.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_default_parses_and_prints_back_and_unset_keys_print_empty() {
        let config = Config::default();
        for key in KEYS {
            let shown = (key.get)(&config);
            match key.default {
                Some(default) => {
                    let mut again = Config::default();
                    (key.set)(&mut again, &shown).unwrap_or_else(|e| panic!("{}: {shown:?} does not load back: {e}", key.name));
                    assert_eq!(again, config, "{}: the default {default:?} prints as {shown:?}, which loads back the same", key.name);
                }
                None => assert_eq!(shown, "", "{} has no default and shows as unset", key.name),
            }
        }
    }
}
