//! A fake Snuba for tests and staging load tests: serves `POST /{dataset}/snql` with the same
//! deterministic synthetic counts as the embedded source, refuses queries over a per-referrer
//! concurrency limit (and, with `--rate-limit`, a per-referrer sliding-window rate limit) with
//! Snuba's 429 rate-limited body, counts query starts per sliding second, and injects latency and
//! faults on demand.

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

/// Serves a Snuba-compatible `POST /{dataset}/snql` with synthetic data, Snuba's per-referrer
/// concurrency limit and injectable faults; `GET /stats` reports what it saw.
#[derive(Debug, Clone, Parser)]
#[command(name = "projector-fake-snuba", version)]
struct Args {
    /// Address to listen on; port 0 picks a free one. The bound address is the first line of stdout.
    #[arg(long, default_value = "127.0.0.1:1218")]
    addr: SocketAddr,
    /// Queries in flight per referrer; one more is refused with 429 rate-limited (Snuba's
    /// ConcurrentRateLimitAllocationPolicy).
    #[arg(long, default_value_t = 100)]
    concurrency_limit: u64,
    /// Query starts allowed per referrer in any sliding window, like "40/s" or "50/10s"; one more
    /// is refused with 429 (ReferrerRateLimitPolicy). Unset: no rate limit.
    #[arg(long, value_parser = rate_limit)]
    rate_limit: Option<projector_config::RateWindow>,
    /// Fixed latency of every query.
    #[arg(long, default_value = "50ms", value_parser = humantime::parse_duration)]
    latency: Duration,
    /// Fraction of --concurrency-limit above which 200 answers are marked throttled
    /// (`is_throttled`, `throttled_by`), like Snuba's ReferrerGuardRailPolicy (1/1.5 = 0.66).
    /// Unset: never throttled.
    #[arg(long)]
    throttle_at: Option<f64>,
    /// Throttled queries take this many times the latency (fewer ClickHouse threads).
    #[arg(long, default_value_t = 2.0)]
    throttle_slowdown: f64,
    /// Extra latency, uniform in [0, jitter].
    #[arg(long, default_value = "0ms", value_parser = humantime::parse_duration)]
    jitter: Duration,
    /// Share of queries (0..=1) answered 500 with a ClickHouse error.
    #[arg(long, default_value_t = 0.0)]
    error_rate: f64,
    /// Share of queries (0..=1) that take --slow-latency instead of --latency.
    #[arg(long, default_value_t = 0.0)]
    slow_rate: f64,
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    slow_latency: Duration,
    /// Orgs whose first query is answered 500 (a transient fault); their later queries succeed.
    /// Comma-separated org ids, e.g. "3,5,7".
    #[arg(long, value_delimiter = ',')]
    fail_first_for: Vec<u64>,
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

/// Query starts of the last `span`, oldest first, and the most ever held at once.
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
}

struct Fake {
    args: Args,
    /// What `POST /config` can change while the fake runs.
    live: Mutex<Live>,
    stats: Mutex<Stats>,
    seq: AtomicU64,
}

/// Capacity and latency, changeable mid-run (`GET`/`POST /config`).
#[derive(Debug, Clone, Copy, Serialize, serde::Deserialize)]
struct Live {
    concurrency_limit: u64,
    /// "40/s" in JSON; null for none.
    #[serde(with = "rate_text")]
    rate_limit: Option<projector_config::RateWindow>,
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

/// An admitted query: its guard, and whether the service is throttling it.
struct Admitted {
    _in_flight: InFlight,
    throttled: Option<(u64, u64)>,
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

/// Per-referrer start logs: the last second (for `max_started_in_1s`), and the rate limit's window.
#[derive(Default)]
struct Starts {
    last_second: HashMap<String, StartLog>,
    all_last_second: StartLog,
    rate_window: HashMap<String, StartLog>,
}

static STARTS: std::sync::LazyLock<Mutex<Starts>> = std::sync::LazyLock::new(Mutex::default);

impl Fake {
    fn stats(&self) -> MutexGuard<'_, Stats> {
        self.stats.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Admits a query for `referrer`, or refuses it because the referrer is at its limit.
    fn live(&self) -> Live {
        *self.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn admit(self: &Arc<Self>, referrer: &str) -> Result<Admitted, Refusal> {
        let live = self.live();
        let mut stats = self.stats();
        stats.total.requests += 1;
        let r = stats.by_referrer.entry(referrer.to_owned()).or_default();
        r.requests += 1;
        if r.in_flight >= live.concurrency_limit {
            r.rejected_429 += 1;
            let used = r.in_flight + 1;
            stats.total.rejected_429 += 1;
            return Err(Refusal::Concurrency { used, limit: live.concurrency_limit });
        }
        let now = Instant::now();
        let mut starts = STARTS.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(rate) = live.rate_limit {
            let log = starts.rate_window.entry(referrer.to_owned()).or_default();
            let used = log.within(now, rate.span);
            if used >= u64::from(rate.limit) {
                r.rejected_429 += 1;
                stats.total.rejected_429 += 1;
                return Err(Refusal::Rate { used: used + 1, rate });
            }
            log.0.push_back(now);
        }
        let log = starts.last_second.entry(referrer.to_owned()).or_default();
        log.0.push_back(now);
        r.max_started_in_1s = r.max_started_in_1s.max(log.within(now, Duration::from_secs(1)));
        starts.all_last_second.0.push_back(now);
        let all = starts.all_last_second.within(now, Duration::from_secs(1));
        r.in_flight += 1;
        r.max_in_flight = r.max_in_flight.max(r.in_flight);
        let threshold = self.args.throttle_at.map(|f| (live.concurrency_limit as f64 * f).floor() as u64);
        let throttled = threshold.filter(|t| r.in_flight > *t).map(|t| (r.in_flight, t));
        if throttled.is_some() {
            r.throttled += 1;
            stats.total.throttled += 1;
        }
        stats.total.in_flight += 1;
        if stats.first_start_unix_ms == 0 {
            stats.first_start_unix_ms = unix_ms();
        }
        stats.total.max_started_in_1s = stats.total.max_started_in_1s.max(all);
        stats.total.max_in_flight = stats.total.max_in_flight.max(stats.total.in_flight);
        let latency = if throttled.is_some() { live.latency.mul_f64(self.args.throttle_slowdown) } else { live.latency };
        Ok(Admitted { _in_flight: InFlight { fake: self.clone(), referrer: referrer.to_owned(), started: now }, throttled, latency })
    }
}

/// Why a query was refused with 429.
enum Refusal {
    Concurrency { used: u64, limit: u64 },
    Rate { used: u64, rate: projector_config::RateWindow },
}

/// One admitted query; dropping it (answered, or the client went away) ends it.
struct InFlight {
    fake: Arc<Fake>,
    referrer: String,
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
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    for (name, rate) in [("--error-rate", args.error_rate), ("--slow-rate", args.slow_rate), ("--malformed-rate", args.malformed_rate)] {
        anyhow::ensure!((0.0..=1.0).contains(&rate), "{name} {rate} must be between 0 and 1");
    }
    anyhow::ensure!(args.error_rate + args.slow_rate + args.malformed_rate <= 1.0, "the fault rates add up to more than 1");
    if let Some(at) = args.throttle_at {
        anyhow::ensure!(at > 0.0 && at <= 1.0, "--throttle-at {at} must be in (0, 1]");
    }
    anyhow::ensure!(args.throttle_slowdown >= 1.0, "--throttle-slowdown must be at least 1");
    std::sync::LazyLock::force(&STARTED);
    let listener = std::net::TcpListener::bind(args.addr)?;
    listener.set_nonblocking(true)?;
    let bound = listener.local_addr()?;
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(axum_server::tls_rustls::RustlsConfig::from_pem_file(cert, key).await?),
        _ => None,
    };
    let live = Live { concurrency_limit: args.concurrency_limit, rate_limit: args.rate_limit, latency: args.latency };
    let fake = Arc::new(Fake { args, live: Mutex::new(live), stats: Mutex::default(), seq: AtomicU64::new(0) });
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

async fn stats(State(fake): State<Arc<Fake>>) -> Json<Value> {
    Json(serde_json::to_value(&*fake.stats()).unwrap_or(Value::Null))
}

async fn timeline() -> Json<Value> {
    Json(serde_json::to_value(&*TIMELINE.lock().unwrap_or_else(|p| p.into_inner())).unwrap_or(Value::Null))
}

async fn show_config(State(fake): State<Arc<Fake>>) -> Json<Live> {
    Json(fake.live())
}

/// Changes capacity mid-run: any of `concurrency_limit`, `rate_limit` ("40/s" or null), `latency`
/// ("50ms"); answers the configuration now in force.
async fn set_config(State(fake): State<Arc<Fake>>, Json(change): Json<Value>) -> Response {
    let mut merged = serde_json::to_value(fake.live()).unwrap_or(Value::Null);
    if let (Some(target), Some(changes)) = (merged.as_object_mut(), change.as_object()) {
        for (k, v) in changes {
            if !target.contains_key(k) {
                return invalid(format!("unknown setting {k:?}; known: concurrency_limit, rate_limit, latency"));
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
        Ok(_) => invalid("concurrency_limit must be at least 1".to_owned()),
        Err(e) => invalid(format!("bad configuration: {e}")),
    }
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
    StatusCode::NO_CONTENT
}

async fn query(State(fake): State<Arc<Fake>>, Path(dataset): Path<String>, headers: HeaderMap, body: String) -> Response {
    let body: Value = match serde_json::from_str(&body) {
        Ok(v) => v,
        Err(e) => return invalid(format!("request body is not JSON: {e}")),
    };
    let referrer = body["tenant_ids"]["referrer"]
        .as_str()
        .or_else(|| headers.get("referer").and_then(|h| h.to_str().ok()))
        .unwrap_or("<unknown>")
        .to_owned();
    let admitted = match fake.admit(&referrer) {
        Ok(admitted) => admitted,
        Err(refusal) => {
            stamp(|t| &mut t.rejected_ms);
            return rate_limited(&referrer, refusal);
        }
    };
    stamp(|t| &mut t.starts_ms);
    let parsed = match body["query"].as_str().ok_or("missing \"query\"".to_owned()).and_then(|q| parse_snql(q, &dataset)) {
        Ok(q) => q,
        Err(e) => return invalid(e),
    };
    let queries_of_org = {
        let mut stats = fake.stats();
        stats.last_start_unix_ms = unix_ms();
        let n = stats.queries_by_org.entry(parsed.org.0).or_default();
        *n += 1;
        *n
    };
    let n = fake.seq.fetch_add(1, Ordering::Relaxed);
    let r = unit(mix(n, 1, 0));
    let a = &fake.args;
    let jitter = a.jitter.mul_f64(unit(mix(n, 2, 0)));
    let first_fails = queries_of_org == 1 && a.fail_first_for.contains(&parsed.org.0);
    if first_fails || r < a.error_rate {
        tokio::time::sleep(admitted.latency + jitter).await;
        let body = json!({"error": {"type": "clickhouse", "message": "DB::Exception: Memory limit (for query) exceeded (injected fault)", "code": 241}});
        return (StatusCode::INTERNAL_SERVER_ERROR, Json(body)).into_response();
    }
    if r < a.error_rate + a.malformed_rate {
        tokio::time::sleep(admitted.latency + jitter).await;
        return (StatusCode::OK, "{\"data\": [{\"project_id\": 1, \"ti").into_response();
    }
    let latency = if r < a.error_rate + a.malformed_rate + a.slow_rate { a.slow_latency } else { admitted.latency };
    tokio::time::sleep(latency + jitter).await;
    (StatusCode::OK, [(axum::http::header::CONTENT_TYPE, "application/json")], rows(&parsed, admitted.throttled)).into_response()
}

/// What the fake needs from a query: the org, its projects (none: all of them) and the window.
struct HourlyQuery {
    org: OrgId,
    projects: Vec<ProjectId>,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
}

fn parse_snql(q: &str, dataset: &str) -> Result<HourlyQuery, String> {
    if !q.starts_with(&format!("MATCH ({dataset})")) {
        return Err(format!("query must MATCH the entity of the dataset in the path ({dataset})"));
    }
    if !q.contains("GRANULARITY 3600") {
        return Err("only hourly queries (GRANULARITY 3600) are served".to_owned());
    }
    let after = |marker: &str| q.split_once(marker).map(|(_, rest)| rest);
    let org = after("org_id = ")
        .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|d| d.parse().ok())
        .map(OrgId)
        .ok_or("missing condition org_id = <id>")?;
    let projects = match after("project_id IN tuple(") {
        Some(r) => r
            .split(')')
            .next()
            .unwrap_or_default()
            .split(',')
            .map(|p| p.trim().parse().map(ProjectId).map_err(|_| format!("bad project id {p:?}")))
            .collect::<Result<Vec<_>, _>>()?,
        None => synthetic_projects(org),
    };
    let time = |marker: &str| -> Result<DateTime<Utc>, String> {
        let text = after(marker).and_then(|r| r.split('\'').next()).ok_or(format!("missing condition {marker}'…')"))?;
        NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S").map(|t| t.and_utc()).map_err(|e| format!("bad time {text:?}: {e}"))
    };
    let (start, end) = (time("timestamp >= toDateTime('")?, time("timestamp < toDateTime('")?);
    if end <= start || (end - start).num_hours() > 24 * 90 {
        return Err(format!("window {start} .. {end} is empty or longer than 90 days"));
    }
    Ok(HourlyQuery { org, projects, start, end })
}

#[derive(Serialize)]
struct Row<'a> {
    project_id: u64,
    time: &'a str,
    count: u64,
}

#[derive(Serialize)]
struct Answer<'a> {
    data: Vec<Row<'a>>,
    meta: Value,
    timing: Value,
    quota_allowance: Value,
}

/// Snuba's answer: one row per project and hour that had events, oldest first. Built with typed
/// rows and one time string per hour: the fake shares the cores of the processes it measures.
/// `throttled`: (concurrent queries now, throttle threshold) when above the threshold.
fn rows(q: &HourlyQuery, throttled: Option<(u64, u64)>) -> Vec<u8> {
    let hours = (q.end - q.start).num_hours() as usize;
    let end_hour = q.end.timestamp().div_euclid(3600);
    let times: Vec<String> = (0..hours).map(|i| (q.start + TimeDelta::hours(i as i64)).to_rfc3339()).collect();
    let mut data = Vec::with_capacity(hours * q.projects.len());
    for p in &q.projects {
        for (i, count) in hourly_counts(q.org, *p, end_hour, hours).into_iter().enumerate() {
            if count > 0 {
                data.push(Row { project_id: p.0, time: &times[i], count });
            }
        }
    }
    let answer = Answer {
        data,
        meta: json!([{"name": "project_id", "type": "UInt64"}, {"name": "time", "type": "DateTime"}, {"name": "count", "type": "UInt64"}]),
        timing: json!({"timestamp": Utc::now().timestamp(), "duration_ms": 0}),
        quota_allowance: json!({"summary": {
            "is_successful": true, "is_rejected": false, "is_throttled": throttled.is_some(), "rejected_by": {},
            "throttled_by": throttled.map_or(json!({}), |(used, threshold)| json!({
                "policy": "ReferrerGuardRailPolicy", "quota_used": used, "quota_unit": "concurrent_queries",
                "throttle_threshold": threshold, "storage_key": "StorageKey.ERRORS",
            })),
        }}),
    };
    serde_json::to_vec(&answer).unwrap_or_default()
}

fn rate_limited(referrer: &str, refusal: Refusal) -> Response {
    let rejected_by = match refusal {
        Refusal::Concurrency { used, limit } => json!({
            "policy": "ConcurrentRateLimitAllocationPolicy",
            "quota_used": used,
            "quota_unit": "concurrent_queries",
            "rejection_threshold": limit,
            "suggestion": "scan less concurrent queries",
            "storage_key": "StorageKey.ERRORS",
        }),
        Refusal::Rate { used, rate } => json!({
            "policy": "ReferrerRateLimitPolicy",
            "quota_used": used,
            "quota_unit": format!("queries per {}", projector_config::format_duration(rate.span)),
            "rejection_threshold": rate.limit,
            "suggestion": "send fewer queries per second",
            "storage_key": "StorageKey.ERRORS",
        }),
    };
    let body = json!({
        "error": {"type": "rate-limited", "message": format!("Query on referrer {referrer} could not be run due to allocation policies, info: {rejected_by}")},
        "quota_allowance": {"summary": {
            "threads_used": 0, "max_threads": 0, "is_successful": false, "is_rejected": true, "is_throttled": false,
            "rejected_by": rejected_by, "throttled_by": {},
        }},
    });
    (StatusCode::TOO_MANY_REQUESTS, Json(body)).into_response()
}

fn invalid(message: String) -> Response {
    (StatusCode::BAD_REQUEST, Json(json!({"error": {"type": "invalid_query", "message": message}}))).into_response()
}

/// Fault choice depends only on the request's sequence number, so a run repeats exactly.
fn unit(x: u64) -> f64 {
    (x >> 11) as f64 / (1u64 << 53) as f64
}
