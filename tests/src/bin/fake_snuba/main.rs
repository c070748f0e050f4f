//! A fake Snuba for tests and staging load tests, made from Snuba's own source (docs/snuba.md):
//! `POST /{dataset}/snql` parses SnQL with Snuba's grammar and refuses what Snuba refuses with
//! Snuba's 400 and message; answers the same deterministic synthetic counts as the embedded
//! source, paged by LIMIT/OFFSET; applies Snuba's allocation policies (the per-referrer guard
//! rail, optionally the per-org concurrency and bytes policies) with Snuba's `quota_allowance`
//! and 429 body; keeps counting a query its client abandoned until its latency has passed; and
//! injects latency, ClickHouse errors and other callers' load on demand.

mod snql;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, NaiveDateTime, TimeDelta, Utc};
use clap::Parser;
use projector_shared::synthetic::{hourly_counts, mix, synthetic_projects};
use projector_shared::{OrgId, ProjectId};
use serde::Serialize;
use serde_json::{Value, json};

/// Serves a Snuba-compatible `POST /{dataset}/snql` with synthetic data, Snuba's query checks,
/// its allocation policies and injectable faults; `GET /stats` reports what it saw.
#[derive(Debug, Clone, Parser)]
#[command(name = "projector-fake-snuba", version)]
struct Args {
    /// Address to listen on; port 0 picks a free one. The bound address is the first line of stdout.
    #[arg(long, default_value = "127.0.0.1:1218")]
    addr: SocketAddr,
    /// The referrer's concurrency limit in force (ReferrerGuardRailPolicy's rejection_threshold:
    /// the default, or the referrer's override); one query more is refused with 429.
    #[arg(long, default_value_t = 100)]
    concurrency_limit: u64,
    /// Snuba's `default_concurrent_request_per_referrer`. The throttle threshold is this // 1.5,
    /// computed from the default even when the referrer has an override, as Snuba does.
    #[arg(long, default_value_t = 100)]
    default_limit: u64,
    /// Queries of other callers on the same referrer, always running: they count in quota_used
    /// and against the limit, as old tasks outside Projector would.
    #[arg(long, default_value_t = 0)]
    background: u64,
    /// The per-org concurrency limit (ConcurrentRateLimitAllocationPolicy, 22 in Snuba); unset:
    /// that policy is not active, as in open-source Snuba's storages since #8260.
    #[arg(long)]
    org_concurrency_limit: Option<u64>,
    /// Per-org overrides of --org-concurrency-limit, as "ORG:LIMIT" (Snuba's
    /// `organization_override`); 0 refuses every query of that org.
    #[arg(long, value_delimiter = ',')]
    org_concurrency_override: Vec<String>,
    /// Columns the entities lack, comma-separated: a Snuba older than the migration that added
    /// them (outcomes 0003 added `category` and `quantity`). A query naming one gets Snuba's 400.
    #[arg(long, value_delimiter = ',')]
    without_columns: Vec<String>,
    /// Orgs over their bytes-scanned budget (BytesScannedWindowAllocationPolicy): their queries
    /// get a bytes 429. Comma-separated org ids.
    #[arg(long, value_delimiter = ',')]
    bytes_rejected_orgs: Vec<u64>,
    /// Answer without `quota_allowance`, as a gateway in front of Snuba might.
    #[arg(long)]
    no_quota_details: bool,
    /// Query starts allowed per referrer in any sliding window, like "40/s": not Snuba (which
    /// has no rate limit) but any gateway's in front of it; one more gets a bare 429.
    #[arg(long, value_parser = rate_limit)]
    gateway_rate_limit: Option<projector_config::RateWindow>,
    /// Fixed latency of every query.
    #[arg(long, default_value = "50ms", value_parser = humantime::parse_duration)]
    latency: Duration,
    /// Throttled queries take this many times the latency (fewer ClickHouse threads).
    #[arg(long, default_value_t = 2.0)]
    throttle_slowdown: f64,
    /// Extra latency, uniform in [0, jitter].
    #[arg(long, default_value = "0ms", value_parser = humantime::parse_duration)]
    jitter: Duration,
    /// Share of queries (0..=1) answered with a ClickHouse error of --error-code.
    #[arg(long, default_value_t = 0.0)]
    error_rate: f64,
    /// The ClickHouse code of injected errors: 500 for most (159/160 a timeout, 202 overload),
    /// 400 for 241 (memory limit), as Snuba maps them.
    #[arg(long, default_value_t = 210)]
    error_code: i64,
    /// Share of queries (0..=1) that take --slow-latency instead of --latency.
    #[arg(long, default_value_t = 0.0)]
    slow_rate: f64,
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    slow_latency: Duration,
    /// Orgs whose first query is answered 500 (a transient fault); their later queries succeed.
    /// Comma-separated org ids, e.g. "3,5,7".
    #[arg(long, value_delimiter = ',')]
    fail_first_for: Vec<u64>,
    /// Answer 500 to the n-th query (1-based) of an org, as "ORG:N", comma-separated: an org
    /// whose pages fail half-way.
    #[arg(long, value_delimiter = ',')]
    fail_query: Vec<String>,
    /// Share of queries (0..=1) answered 200 with a truncated, unreadable body.
    #[arg(long, default_value_t = 0.0)]
    malformed_rate: f64,
    /// Serve HTTPS with this PEM certificate (chain) instead of plain HTTP; needs --tls-key.
    #[arg(long, value_name = "PEM", requires = "tls_key")]
    tls_cert: Option<std::path::PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    tls_key: Option<std::path::PathBuf>,
}

fn rate_limit(raw: &str) -> Result<projector_config::RateWindow, String> {
    match projector_config::parse_rates(raw)?.as_slice() {
        [one] => Ok(*one),
        _ => Err("one rate, like 40/s".to_owned()),
    }
}

#[derive(Debug, Default, Clone, Serialize)]
struct Counts {
    requests: u64,
    in_flight: u64,
    max_in_flight: u64,
    rejected_429: u64,
    /// 200 answers marked throttled.
    throttled: u64,
    /// The most query starts (admitted requests) seen in any sliding 1 s window.
    max_started_in_1s: u64,
}

fn unix_ms() -> u64 {
    u64::try_from(Utc::now().timestamp_millis()).unwrap_or(0)
}

/// Query starts of the last `span`, oldest first.
#[derive(Debug, Default)]
struct StartLog(VecDeque<Instant>);

impl StartLog {
    /// Starts within `span` before `now`.
    fn within(&mut self, now: Instant, span: Duration) -> u64 {
        while self.0.front().is_some_and(|&t| now.duration_since(t) >= span) {
            self.0.pop_front();
        }
        self.0.len() as u64
    }
}

#[derive(Debug, Default, Serialize)]
struct Stats {
    #[serde(flatten)]
    total: Counts,
    by_referrer: BTreeMap<String, Counts>,
    /// Summed duration of admitted queries (ms): divided by the span from the first start to the
    /// last end, the mean number in flight.
    busy_ms: f64,
    /// Wall-clock (Unix ms) of the first admitted start and the last end.
    first_start_unix_ms: u64,
    last_end_unix_ms: u64,
    /// Wall-clock (Unix ms) of the last admitted start.
    last_start_unix_ms: u64,
    /// Admitted queries per org id: a second query of one org shows here.
    queries_by_org: BTreeMap<u64, u64>,
    /// Queries refused with 400 (Snuba's checks), and the last message.
    invalid_queries: u64,
    last_invalid: Option<String>,
    /// 429s by the policy that refused (`gateway` for --gateway-rate-limit).
    rejected_by_policy: BTreeMap<String, u64>,
    /// Rows answered in all.
    rows_served: u64,
    /// Queries running now per org (the per-org policy's count).
    #[serde(skip)]
    org_in_flight: HashMap<u64, u64>,
}

struct Fake {
    args: Args,
    /// What `POST /config` can change while the fake runs.
    live: Mutex<Live>,
    stats: Mutex<Stats>,
    seq: AtomicU64,
    /// `--fail-query`: (org, n-th query) pairs answered 500.
    fail_query: Vec<(u64, u64)>,
    /// `--org-concurrency-override`: org -> its concurrency limit.
    org_overrides: HashMap<u64, u64>,
}

/// Capacity and latency, changeable mid-run (`GET`/`POST /config`).
#[derive(Debug, Clone, Copy, Serialize, serde::Deserialize)]
struct Live {
    concurrency_limit: u64,
    /// Other callers' queries on the referrer, always running.
    background: u64,
    /// "40/s" in JSON; null for none.
    #[serde(with = "rate_text")]
    gateway_rate_limit: Option<projector_config::RateWindow>,
    /// "50ms" in JSON.
    #[serde(with = "latency_text")]
    latency: Duration,
}

mod rate_text {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(rate: &Option<projector_config::RateWindow>, s: S) -> Result<S::Ok, S::Error> {
        match rate {
            Some(r) => s.serialize_str(&r.to_string()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<projector_config::RateWindow>, D::Error> {
        Option::<String>::deserialize(d)?.map(|t| super::rate_limit(&t).map_err(serde::de::Error::custom)).transpose()
    }
}

mod latency_text {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        humantime::parse_duration(&String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

/// Snuba's `MAX_THRESHOLD` (1e12), the thresholds of a policy that does not limit.
const MAX_THRESHOLD: i64 = 1_000_000_000_000;
/// `max_threads` of an unthrottled query, and of a throttled one (`threads_throttle_divider` 2).
const MAX_THREADS: i64 = 10;

/// An admitted query: its guard, the `quota_allowance` it gets, and its latency.
struct Admitted {
    guard: InFlight,
    allowance: Value,
    latency: Duration,
}

/// When queries started and when 429s were answered, in ms since the fake started (`GET
/// /timeline`), so a test can check what happened between them; the latest 100,000 of each.
#[derive(Default, Serialize)]
struct Timeline {
    starts_ms: VecDeque<u64>,
    rejected_ms: VecDeque<u64>,
}

const TIMELINE_KEPT: usize = 100_000;

static TIMELINE: std::sync::LazyLock<Mutex<Timeline>> = std::sync::LazyLock::new(Mutex::default);
static STARTED: std::sync::LazyLock<Instant> = std::sync::LazyLock::new(Instant::now);

fn stamp(list: fn(&mut Timeline) -> &mut VecDeque<u64>) {
    let ms = STARTED.elapsed().as_millis() as u64;
    let mut t = TIMELINE.lock().unwrap_or_else(|p| p.into_inner());
    let l = list(&mut t);
    if l.len() == TIMELINE_KEPT {
        l.pop_front();
    }
    l.push_back(ms);
}

/// Per-referrer start logs: the last second (for `max_started_in_1s`), and the gateway's window.
#[derive(Default)]
struct Starts {
    last_second: HashMap<String, StartLog>,
    all_last_second: StartLog,
    rate_window: HashMap<String, StartLog>,
}

static STARTS: std::sync::LazyLock<Mutex<Starts>> = std::sync::LazyLock::new(Mutex::default);

/// One policy's answer for a query: Snuba's `QuotaAllowance`.
struct PolicyAnswer<'a> {
    can_run: bool,
    threads: i64,
    reason: &'a str,
    throttled: bool,
    throttle: i64,
    reject: i64,
    used: i64,
    unit: &'a str,
}

/// The answer as an entry of `quota_allowance.details` (`QuotaAllowance.to_dict()`).
fn detail(p: PolicyAnswer, storage: &str) -> Value {
    let PolicyAnswer { can_run, threads, reason, throttled, throttle, reject, used, unit } = p;
    json!({
        "can_run": can_run, "max_threads": if can_run { threads } else { 0 },
        "explanation": {"reason": reason, "storage_key": storage},
        "is_throttled": throttled, "throttle_threshold": throttle, "rejection_threshold": reject,
        "quota_used": used, "quota_unit": unit,
        "suggestion": if can_run { "no_suggestion" } else { "this query was refused by the fake's copy of the policy" },
        "max_bytes_to_read": 0,
    })
}

impl Fake {
    fn stats(&self) -> MutexGuard<'_, Stats> {
        self.stats.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn live(&self) -> Live {
        *self.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Snuba's `_apply_allocation_policies_quota`: each policy in the storage's order counts this
    /// query and may refuse it; the first refusal ends the walk. A gateway, if any, comes first.
    fn admit(self: &Arc<Self>, referrer: &str, org: u64, storage: &str) -> Result<Admitted, Box<Response>> {
        let live = self.live();
        let a = &self.args;
        let mut stats = self.stats();
        stats.total.requests += 1;
        stats.by_referrer.entry(referrer.to_owned()).or_default().requests += 1;
        let now = Instant::now();
        let mut starts = STARTS.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(rate) = live.gateway_rate_limit {
            let log = starts.rate_window.entry(referrer.to_owned()).or_default();
            if log.within(now, rate.span) >= u64::from(rate.limit) {
                count_rejection(&mut stats, referrer, "gateway");
                return Err(Box::new((StatusCode::TOO_MANY_REQUESTS, "rate limit exceeded (gateway)").into_response()));
            }
            log.0.push_back(now);
        }
        let mut details = serde_json::Map::new();
        let mut throttle_by = None;
        let org_running = stats.org_in_flight.get(&org).copied().unwrap_or(0);
        let org_limit = self.org_overrides.get(&org).copied().or(a.org_concurrency_limit);
        if let Some(limit) = org_limit {
            let used = (org_running + 1) as i64;
            let can = used <= limit as i64;
            let reason = if can { "within limit".to_owned() } else { format!("concurrent policy {used} exceeds limit of {limit}") };
            let d = detail(
                PolicyAnswer {
                    can_run: can,
                    threads: MAX_THREADS,
                    reason: &reason,
                    throttled: false,
                    throttle: limit as i64,
                    reject: limit as i64,
                    used,
                    unit: "concurrent_queries",
                },
                storage,
            );
            details.insert("ConcurrentRateLimitAllocationPolicy".into(), d);
            if !can {
                count_rejection(&mut stats, referrer, "ConcurrentRateLimitAllocationPolicy");
                return Err(Box::new(rejected(
                    details,
                    "ConcurrentRateLimitAllocationPolicy",
                    used,
                    limit as i64,
                    "concurrent_queries",
                    storage,
                )));
            }
        }
        if !a.bytes_rejected_orgs.is_empty() {
            let over = a.bytes_rejected_orgs.contains(&org);
            let (limit, used) = (10_000_000_000i64, if over { 10_000_000_001 } else { 0 });
            let reason =
                if over { format!("organization {org} is over the bytes scanned limit of {limit}") } else { "within limit".into() };
            details.insert(
                "BytesScannedWindowAllocationPolicy".into(),
                detail(
                    PolicyAnswer {
                        can_run: !over,
                        threads: MAX_THREADS,
                        reason: &reason,
                        throttled: false,
                        throttle: MAX_THRESHOLD,
                        reject: limit,
                        used,
                        unit: "bytes",
                    },
                    storage,
                ),
            );
            if over {
                count_rejection(&mut stats, referrer, "BytesScannedWindowAllocationPolicy");
                return Err(Box::new(rejected(details, "BytesScannedWindowAllocationPolicy", used, limit, "bytes", storage)));
            }
        }
        // ReferrerGuardRailPolicy: this query is counted first (ZADD, then ZCOUNT), refused when
        // the count exceeds the limit; the throttle threshold comes from the *default* limit.
        let r = stats.by_referrer.entry(referrer.to_owned()).or_default();
        let used = (r.in_flight + live.background + 1) as i64;
        let limit = live.concurrency_limit as i64;
        let throttle_threshold = ((a.default_limit as f64 / 1.5).floor() as i64).max(1);
        let can = used <= limit;
        let throttled = can && used > throttle_threshold;
        let reason = if can { "within limit".to_owned() } else { format!("concurrent policy {used} exceeds limit of {limit}") };
        let threads = if throttled { MAX_THREADS / 2 } else { MAX_THREADS };
        let d = detail(
            PolicyAnswer {
                can_run: can,
                threads,
                reason: &reason,
                throttled,
                throttle: throttle_threshold,
                reject: limit,
                used,
                unit: "concurrent_queries",
            },
            storage,
        );
        details.insert("ReferrerGuardRailPolicy".into(), d);
        if !can {
            count_rejection(&mut stats, referrer, "ReferrerGuardRailPolicy");
            return Err(Box::new(rejected(details, "ReferrerGuardRailPolicy", used, limit, "concurrent_queries", storage)));
        }
        if throttled {
            throttle_by = Some(json!({"policy": "ReferrerGuardRailPolicy", "quota_used": used, "quota_unit": "concurrent_queries",
                "suggestion": "no_suggestion", "storage_key": storage, "throttle_threshold": throttle_threshold}));
        }
        let log = starts.last_second.entry(referrer.to_owned()).or_default();
        log.0.push_back(now);
        r.max_started_in_1s = r.max_started_in_1s.max(log.within(now, Duration::from_secs(1)));
        r.in_flight += 1;
        r.max_in_flight = r.max_in_flight.max(r.in_flight);
        if throttled {
            r.throttled += 1;
            stats.total.throttled += 1;
        }
        starts.all_last_second.0.push_back(now);
        let all = starts.all_last_second.within(now, Duration::from_secs(1));
        *stats.org_in_flight.entry(org).or_default() += 1;
        stats.total.in_flight += 1;
        if stats.first_start_unix_ms == 0 {
            stats.first_start_unix_ms = unix_ms();
        }
        stats.total.max_started_in_1s = stats.total.max_started_in_1s.max(all);
        stats.total.max_in_flight = stats.total.max_in_flight.max(stats.total.in_flight);
        let summary = json!({
            "threads_used": threads, "is_successful": !throttled, "is_rejected": false, "is_throttled": throttled,
            "rejection_storage_key": null, "throttle_storage_key": if throttled { json!(storage) } else { Value::Null },
            "rejected_by": {}, "throttled_by": throttle_by.unwrap_or(json!({})),
        });
        let allowance = json!({"details": details, "summary": summary});
        let latency = if throttled { live.latency.mul_f64(a.throttle_slowdown) } else { live.latency };
        let guard = InFlight { fake: self.clone(), referrer: referrer.to_owned(), org, started: now };
        Ok(Admitted { guard, allowance, latency })
    }
}

fn count_rejection(stats: &mut Stats, referrer: &str, policy: &str) {
    stats.total.rejected_429 += 1;
    stats.by_referrer.entry(referrer.to_owned()).or_default().rejected_429 += 1;
    *stats.rejected_by_policy.entry(policy.to_owned()).or_default() += 1;
}

/// Snuba's 429: `rate-limited`, the `AllocationPolicyViolations` message (Python's dict repr),
/// and the `quota_allowance` with the refusing policy in `rejected_by`.
fn rejected(details: serde_json::Map<String, Value>, policy: &str, used: i64, limit: i64, unit: &str, storage: &str) -> Response {
    let summary = json!({
        "threads_used": 0, "is_successful": false, "is_rejected": true, "is_throttled": false,
        "rejection_storage_key": storage, "throttle_storage_key": null,
        "rejected_by": {"policy": policy, "quota_used": used, "quota_unit": unit, "suggestion": "this query was refused by the fake's copy of the policy",
            "storage_key": storage, "rejection_threshold": limit},
        "throttled_by": {},
    });
    let violations: serde_json::Map<String, Value> =
        details.iter().filter(|(_, d)| d["can_run"] == json!(false)).map(|(k, v)| (k.clone(), v.clone())).collect();
    let message = format!(
        "Query on could not be run due to allocation policies, info: {{'details': {}, 'summary': {}}}",
        python_repr(&Value::Object(violations)),
        python_repr(&summary)
    );
    let stamp_ms = Utc::now().timestamp();
    let body = json!({
        "error": {"type": "rate-limited", "message": message},
        "timing": {"timestamp": stamp_ms, "duration_ms": 1, "marks_ms": {}},
        "quota_allowance": {"details": details, "summary": summary},
        "stats": {}, "sql": "",
    });
    (StatusCode::TOO_MANY_REQUESTS, Json(body)).into_response()
}

/// A JSON value as Python's `repr` of the same dict would print it.
fn python_repr(v: &Value) -> String {
    match v {
        Value::Null => "None".into(),
        Value::Bool(b) => if *b { "True" } else { "False" }.into(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => format!("'{s}'"),
        Value::Array(a) => format!("[{}]", a.iter().map(python_repr).collect::<Vec<_>>().join(", ")),
        Value::Object(o) => format!("{{{}}}", o.iter().map(|(k, v)| format!("'{k}': {}", python_repr(v))).collect::<Vec<_>>().join(", ")),
    }
}

/// One admitted query; dropping it (its latency passed, whether or not its client waited) ends it.
struct InFlight {
    fake: Arc<Fake>,
    referrer: String,
    org: u64,
    started: Instant,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut stats = self.fake.stats();
        stats.total.in_flight = stats.total.in_flight.saturating_sub(1);
        stats.busy_ms += self.started.elapsed().as_secs_f64() * 1000.0;
        stats.last_end_unix_ms = unix_ms();
        if let Some(r) = stats.by_referrer.get_mut(&self.referrer) {
            r.in_flight = r.in_flight.saturating_sub(1);
        }
        if let Some(n) = stats.org_in_flight.get_mut(&self.org) {
            *n = n.saturating_sub(1);
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    for (name, rate) in [("--error-rate", args.error_rate), ("--slow-rate", args.slow_rate), ("--malformed-rate", args.malformed_rate)] {
        anyhow::ensure!((0.0..=1.0).contains(&rate), "{name} {rate} must be between 0 and 1");
    }
    anyhow::ensure!(args.error_rate + args.slow_rate + args.malformed_rate <= 1.0, "the fault rates add up to more than 1");
    anyhow::ensure!(args.throttle_slowdown >= 1.0, "--throttle-slowdown must be at least 1");
    let fail_query = pairs("--fail-query", &args.fail_query)?;
    let org_overrides = pairs("--org-concurrency-override", &args.org_concurrency_override)?.into_iter().collect();
    std::sync::LazyLock::force(&STARTED);
    let listener = std::net::TcpListener::bind(args.addr)?;
    listener.set_nonblocking(true)?;
    let bound = listener.local_addr()?;
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(axum_server::tls_rustls::RustlsConfig::from_pem_file(cert, key).await?),
        _ => None,
    };
    let live = Live {
        concurrency_limit: args.concurrency_limit,
        background: args.background,
        gateway_rate_limit: args.gateway_rate_limit,
        latency: args.latency,
    };
    let fake = Arc::new(Fake { args, live: Mutex::new(live), stats: Mutex::default(), seq: AtomicU64::new(0), fail_query, org_overrides });
    let app = Router::new()
        .route("/{dataset}/snql", post(query))
        .route("/stats", get(stats))
        .route("/stats/reset", post(reset))
        .route("/config", get(show_config).post(set_config))
        .route("/timeline", get(timeline))
        .route("/health", get(|| async { "ok" }))
        .with_state(fake);
    let mut out = std::io::stdout().lock();
    writeln!(out, "{bound}")?;
    out.flush()?;
    drop(out);
    let scheme = if tls.is_some() { "https" } else { "http" };
    eprintln!(
        "projector-fake-snuba: serving POST {scheme}://{bound}/{{dataset}}/snql, GET /stats, POST /stats/reset, GET|POST /config, GET /timeline"
    );
    match tls {
        Some(tls) => axum_server::from_tcp_rustls(listener, tls).serve(app.into_make_service()).await?,
        None => {
            axum::serve(tokio::net::TcpListener::from_std(listener)?, app)
                .with_graceful_shutdown(async {
                    let _ = tokio::signal::ctrl_c().await;
                })
                .await?
        }
    }
    Ok(())
}

/// `A:B` pairs of numbers, as `flag` takes them.
fn pairs(flag: &str, raw: &[String]) -> anyhow::Result<Vec<(u64, u64)>> {
    raw.iter()
        .map(|pair| {
            let (a, b) = pair.split_once(':').ok_or_else(|| anyhow::anyhow!("{flag} {pair:?}: expected two numbers as A:B, like 7:3"))?;
            Ok((a.trim().parse()?, b.trim().parse()?))
        })
        .collect()
}

async fn stats(State(fake): State<Arc<Fake>>) -> Json<Value> {
    let mut value = serde_json::to_value(&*fake.stats()).unwrap_or(Value::Null);
    value["background"] = json!(fake.live().background);
    Json(value)
}

async fn timeline() -> Json<Value> {
    Json(serde_json::to_value(&*TIMELINE.lock().unwrap_or_else(|p| p.into_inner())).unwrap_or(Value::Null))
}

async fn show_config(State(fake): State<Arc<Fake>>) -> Json<Live> {
    Json(fake.live())
}

/// Changes capacity mid-run: any of `concurrency_limit`, `background`, `gateway_rate_limit`
/// ("40/s" or null), `latency` ("50ms"); answers the configuration now in force.
async fn set_config(State(fake): State<Arc<Fake>>, Json(change): Json<Value>) -> Response {
    let mut merged = serde_json::to_value(fake.live()).unwrap_or(Value::Null);
    if let (Some(target), Some(changes)) = (merged.as_object_mut(), change.as_object()) {
        for (k, v) in changes {
            if !target.contains_key(k) {
                return bad_config(format!("unknown setting {k:?}; known: concurrency_limit, background, gateway_rate_limit, latency"));
            }
            target.insert(k.clone(), v.clone());
        }
    }
    match serde_json::from_value::<Live>(merged) {
        Ok(live) if live.concurrency_limit > 0 => {
            *fake.live.lock().unwrap_or_else(|p| p.into_inner()) = live;
            eprintln!("projector-fake-snuba: configuration now {}", serde_json::to_string(&live).unwrap_or_default());
            Json(live).into_response()
        }
        Ok(_) => bad_config("concurrency_limit must be at least 1".to_owned()),
        Err(e) => bad_config(format!("bad configuration: {e}")),
    }
}

fn bad_config(message: String) -> Response {
    (StatusCode::BAD_REQUEST, Json(json!({"error": message}))).into_response()
}

/// Zeroes the counters; queries still in flight stay counted as in flight.
async fn reset(State(fake): State<Arc<Fake>>) -> StatusCode {
    let mut stats = fake.stats();
    let zero = |c: &mut Counts| *c = Counts { in_flight: c.in_flight, max_in_flight: c.in_flight, ..Counts::default() };
    *STARTS.lock().unwrap_or_else(|p| p.into_inner()) = Starts::default();
    *TIMELINE.lock().unwrap_or_else(|p| p.into_inner()) = Timeline::default();
    zero(&mut stats.total);
    stats.by_referrer.values_mut().for_each(zero);
    (stats.busy_ms, stats.first_start_unix_ms, stats.last_end_unix_ms, stats.last_start_unix_ms) = (0.0, 0, 0, 0);
    stats.queries_by_org.clear();
    stats.rejected_by_policy.clear();
    (stats.invalid_queries, stats.last_invalid, stats.rows_served) = (0, None, 0);
    StatusCode::NO_CONTENT
}

/// Keys of Snuba's SnQL request schema (`snuba/request/schema.py`): query, settings, attribution.
const REQUEST_KEYS: &[&str] = &[
    "query",
    "dataset",
    "turbo",
    "consistent",
    "debug",
    "dry_run",
    "legacy",
    "referrer",
    "team",
    "feature",
    "app_id",
    "tenant_ids",
    "parent_api",
];

/// Datasets and their entities, from `snuba/datasets/configuration/*/dataset.yaml`.
const DATASETS: &[(&str, &[&str])] = &[
    ("outcomes", &["outcomes", "outcomes_cross_org_hourly", "llm_proxy_cost_raw"]),
    ("outcomes_raw", &["outcomes_raw"]),
    ("events", &["events"]),
];

async fn query(State(fake): State<Arc<Fake>>, Path(dataset): Path<String>, headers: HeaderMap, body: String) -> Response {
    let body: Value = match serde_json::from_str(&body) {
        Ok(v) => v,
        Err(e) => return error_400("json", e.to_string()),
    };
    if let Some(extra) = body.as_object().and_then(|o| o.keys().find(|k| !REQUEST_KEYS.contains(&k.as_str()))) {
        return error_400("schema", format!("Additional properties are not allowed ('{extra}' was unexpected)"));
    }
    if !DATASETS.iter().any(|(d, _)| *d == dataset) {
        let body = json!({"error": {"type": "dataset", "message": format!("dataset '{dataset}' does not exist")}});
        return (StatusCode::NOT_FOUND, Json(body)).into_response();
    }
    let referrer = body["tenant_ids"]["referrer"]
        .as_str()
        .or_else(|| headers.get("referer").and_then(|h| h.to_str().ok()))
        .unwrap_or("<unknown>")
        .to_owned();
    let text = body["query"].as_str().unwrap_or_default();
    let parsed = match snql::parse(text, &fake.args.without_columns).and_then(|q| answerable(&q).map(|a| (q, a))) {
        Ok(parsed) => parsed,
        Err(snql::Refused::Invalid(message)) => {
            let mut stats = fake.stats();
            stats.invalid_queries += 1;
            stats.last_invalid = Some(message.clone());
            return error_400("invalid_query", message);
        }
        Err(snql::Refused::FakeCannot(message)) => return error_400("fake_unsupported", message),
    };
    let (q, hourly) = parsed;
    let storage = storage_key(&q.entity, hourly.start, &referrer);
    let admitted = match fake.admit(&referrer, hourly.org.0, &storage) {
        Ok(admitted) => admitted,
        Err(refusal) => {
            stamp(|t| &mut t.rejected_ms);
            return *refusal;
        }
    };
    stamp(|t| &mut t.starts_ms);
    // The query runs in a task of its own: a client that gives up does not stop it, and it keeps
    // counting against the referrer until its latency has passed, as at Snuba.
    let run = tokio::spawn(execute(fake.clone(), q, hourly, admitted));
    run.await.unwrap_or_else(|_| (StatusCode::INTERNAL_SERVER_ERROR, "query task failed").into_response())
}

async fn execute(fake: Arc<Fake>, q: snql::Query, hourly: HourlyQuery, admitted: Admitted) -> Response {
    let org = hourly.org.0;
    let queries_of_org = {
        let mut stats = fake.stats();
        stats.last_start_unix_ms = unix_ms();
        let n = stats.queries_by_org.entry(org).or_default();
        *n += 1;
        *n
    };
    let n = fake.seq.fetch_add(1, Ordering::Relaxed);
    let r = unit(mix(n, 1, 0));
    let a = &fake.args;
    let jitter = a.jitter.mul_f64(unit(mix(n, 2, 0)));
    let allowance = if a.no_quota_details { Value::Null } else { admitted.allowance.clone() };
    let first_fails = queries_of_org == 1 && a.fail_first_for.contains(&org);
    let chosen_fails = fake.fail_query.contains(&(org, queries_of_org));
    if first_fails || chosen_fails || r < a.error_rate {
        tokio::time::sleep(admitted.latency + jitter).await;
        let code = if first_fails || chosen_fails { 210 } else { a.error_code };
        // Snuba's get_http_status_for_clickhouse_error: typing and memory errors are the caller's.
        let status = if matches!(code, 43 | 53 | 241) { StatusCode::BAD_REQUEST } else { StatusCode::INTERNAL_SERVER_ERROR };
        let body = json!({"error": {"type": "clickhouse", "message": format!("DB::Exception: injected fault (code {code})"), "code": code},
            "timing": {}, "quota_allowance": allowance});
        return (status, Json(body)).into_response();
    }
    if r < a.error_rate + a.malformed_rate {
        tokio::time::sleep(admitted.latency + jitter).await;
        return (StatusCode::OK, "{\"data\": [{\"project_id\": 1, \"ti").into_response();
    }
    let latency = if r < a.error_rate + a.malformed_rate + a.slow_rate { a.slow_latency } else { admitted.latency };
    tokio::time::sleep(latency + jitter).await;
    let (body, rows) = rows(&q, &hourly, &allowance);
    fake.stats().rows_served += rows;
    drop(admitted.guard);
    (StatusCode::OK, [(axum::http::header::CONTENT_TYPE, "application/json")], body).into_response()
}

fn error_400(kind: &str, message: String) -> Response {
    (StatusCode::BAD_REQUEST, Json(json!({"error": {"type": kind, "message": message}}))).into_response()
}

/// The storage Snuba's selectors pick (`OutcomesStorageSelector`: the daily table for windows
/// older than the hourly table's 90 days or for `billing.` referrers).
fn storage_key(entity: &str, start: DateTime<Utc>, referrer: &str) -> String {
    match entity {
        "outcomes" if start < Utc::now() - TimeDelta::days(90) || referrer.starts_with("billing.") => "outcomes_daily".into(),
        "outcomes" => "outcomes_hourly".into(),
        "events" => "errors".into(),
        other => other.into(),
    }
}

/// What the fake needs from a query: the org, its projects (none: all of them), the window, and
/// the name of the summed value.
struct HourlyQuery {
    org: OrgId,
    projects: Vec<ProjectId>,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    value_alias: String,
}

/// The part of valid SnQL the fake can answer: a sum or count per project and hour.
fn answerable(q: &snql::Query) -> Result<HourlyQuery, snql::Refused> {
    let cannot = |what: String| Err(snql::Refused::FakeCannot(format!("the fake cannot answer {what}")));
    if let Some(what) = q.unsupported.first() {
        return cannot((*what).to_owned());
    }
    if q.nested_where {
        return cannot("OR or parenthesized conditions".into());
    }
    if q.granularity != Some(3600) {
        return cannot("a granularity other than 3600".into());
    }
    let col = |name: &str| snql::Expr::Column(name.into());
    if q.group_by != [col("project_id"), col("time")] {
        return cannot("a grouping other than BY project_id, time".into());
    }
    if q.order_by.iter().any(|(_, asc)| !asc) {
        return cannot("descending order".into());
    }
    let value_alias = q
        .select
        .iter()
        .find_map(|e| match e {
            snql::Expr::Call { name, alias: Some(alias), .. } if name == "sum" || name == "count" => Some(alias.clone()),
            _ => None,
        })
        .ok_or_else(|| snql::Refused::FakeCannot("the fake answers sum(quantity) or count() with an alias".into()))?;
    let org = OrgId(snql::int_condition(q, "org_id", "=").and_then(|v| u64::try_from(v).ok()).unwrap_or(0));
    let mut projects: Vec<ProjectId> = Vec::new();
    for c in &q.conditions {
        match (&c.lhs, c.op.as_str(), &c.rhs) {
            (snql::Expr::Column(n), "IN", snql::Expr::Call { name, args, .. }) if n == "project_id" && name == "tuple" => {
                projects.extend(args.iter().filter_map(|a| match a {
                    snql::Expr::Int(v) => u64::try_from(*v).ok().map(ProjectId),
                    _ => None,
                }))
            }
            (snql::Expr::Column(n), "=", snql::Expr::Int(v)) if n == "project_id" => projects.extend(u64::try_from(*v).ok().map(ProjectId)),
            _ => {}
        }
    }
    let time = |op: &str| {
        q.conditions
            .iter()
            .find(|c| c.op == op && c.lhs == col("timestamp"))
            .and_then(|c| snql::datetime(&c.rhs))
            .and_then(parse_datetime)
            .ok_or_else(|| snql::Refused::Invalid(format!("invalid time condition timestamp {op} …")))
    };
    let (start, end) = (time(">=")?, time("<")?);
    if start > end {
        return Err(snql::Refused::Invalid("invalid time conditions on entity outcomes".into()));
    }
    if projects.is_empty() {
        projects = synthetic_projects(org);
    }
    projects.sort_unstable();
    projects.dedup();
    Ok(HourlyQuery { org, projects, start, end, value_alias })
}

/// Snuba's `parse_datetime` (dateutil, time zone ignored) for the forms SnQL clients send.
fn parse_datetime(text: &str) -> Option<DateTime<Utc>> {
    ["%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M"]
        .iter()
        .find_map(|f| NaiveDateTime::parse_from_str(text.trim_end_matches('Z'), f).ok())
        .map(|t| t.and_utc())
}

/// One row: project, hour, and the summed value under the query's alias. Serialized by hand:
/// serde's `flatten` made the fake spend most of a 10,000-row page building maps.
struct Row<'a> {
    project_id: u64,
    time: &'a str,
    alias: &'a str,
    value: u64,
}

impl Serialize for Row<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = s.serialize_map(Some(3))?;
        map.serialize_entry("project_id", &self.project_id)?;
        map.serialize_entry("time", self.time)?;
        map.serialize_entry(self.alias, &self.value)?;
        map.end()
    }
}

/// Snuba's 200 body, written straight from the rows.
#[derive(Serialize)]
struct Answer<'a> {
    data: Vec<Row<'a>>,
    meta: Value,
    timing: Value,
    #[serde(skip_serializing_if = "Value::is_null")]
    quota_allowance: &'a Value,
}

/// Snuba's answer: one row per project and hour that had events (hours with none are left out),
/// ordered by project and hour, `LIMIT` rows from `OFFSET`. Returns the body and its row count.
fn rows(q: &snql::Query, h: &HourlyQuery, allowance: &Value) -> (Vec<u8>, u64) {
    let hours = usize::try_from((h.end - h.start).num_hours()).unwrap_or(0);
    let end_hour = h.end.timestamp().div_euclid(3600);
    let times: Vec<String> = (0..hours).map(|i| (h.start + TimeDelta::hours(i as i64)).to_rfc3339()).collect();
    let (offset, limit) = (usize::try_from(q.offset).unwrap_or(0), usize::try_from(q.limit).unwrap_or(0));
    let mut data = Vec::new();
    let mut skipped = 0;
    'projects: for p in &h.projects {
        for (i, count) in hourly_counts(h.org, *p, end_hour, hours).into_iter().enumerate() {
            if count == 0 {
                continue;
            }
            if skipped < offset {
                skipped += 1;
                continue;
            }
            if data.len() == limit {
                break 'projects;
            }
            data.push(Row { project_id: p.0, time: &times[i], alias: &h.value_alias, value: count });
        }
    }
    let n = data.len() as u64;
    let answer = Answer {
        data,
        meta: json!([{"name": "project_id", "type": "UInt64"}, {"name": "time", "type": "DateTime"}, {"name": h.value_alias, "type": "UInt64"}]),
        timing: json!({"timestamp": Utc::now().timestamp(), "duration_ms": 0}),
        quota_allowance: allowance,
    };
    (serde_json::to_vec(&answer).unwrap_or_default(), n)
}

/// Fault choice depends only on the request's sequence number, so a run repeats exactly.
fn unit(x: u64) -> f64 {
    (x >> 11) as f64 / (1u64 << 53) as f64
}
