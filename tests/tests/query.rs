//! The query path against real processes: the Snuba client against `projector-fake-snuba` (rows,
//! every error class, the 159-query incident) and the Redis projection store against `redis-server`.

use std::sync::Arc;
use std::time::Duration;

use chrono::{TimeZone, Utc};
use projector_shared::{OrgId, ProjectId, RunId};
use projector_tests::{FakeSnuba, RedisServer};
use projector_worker::Error;
use projector_worker::query::{HistoryRequest, QuerySource, SyntheticQuery};
use projector_worker::redis_sink::RedisSink;
use projector_worker::sink::{ProjectionRecord, ProjectionSink};
use projector_worker::snuba::{SnubaQuery, SnubaSettings};

const FAKE: &str = env!("CARGO_BIN_EXE_projector-fake-snuba");
const REFERRER: &str = "getsentry.get_spike_projections";

fn client(url: &str, timeout: Duration) -> SnubaQuery {
    SnubaQuery::new(SnubaSettings {
        url: url.to_owned(),
        dataset: "events".into(),
        referrer: REFERRER.into(),
        timeout,
        tls_ca_file: None,
        tls_insecure: false,
    })
    .expect("client")
}

fn request(org: u64, hours: usize) -> HistoryRequest {
    HistoryRequest {
        org_id: OrgId(org),
        project_ids: projector_shared::synthetic::synthetic_projects(OrgId(org)),
        end: Utc.with_ymd_and_hms(2026, 11, 22, 13, 0, 0).single().expect("valid"),
        hours,
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Runtime::new().expect("runtime")
}

#[test]
fn the_client_reads_the_same_counts_the_embedded_source_computes() {
    let fake = FakeSnuba::start(FAKE, &["--latency", "1ms"]);
    runtime().block_on(async {
        let snuba = client(&fake.url(), Duration::from_secs(5));
        for org in [1, 7, 42] {
            let req = request(org, 504);
            let got = snuba.hourly_counts(&req).await.expect("rows");
            let expected = SyntheticQuery { latency: Duration::ZERO }.hourly_counts(&req).await.expect("synthetic");
            assert_eq!(got, expected, "org {org}");
            assert!(got.values().all(|c| c.len() == 504));
        }
        let stats = fake.stats().await;
        assert_eq!(stats["by_referrer"][REFERRER]["requests"], 3, "{stats}");
    });
}

#[test]
fn each_fault_mode_maps_to_its_error_class() {
    let rt = runtime();
    let server_errors = FakeSnuba::start(FAKE, &["--latency", "1ms", "--error-rate", "1"]);
    let malformed = FakeSnuba::start(FAKE, &["--latency", "1ms", "--malformed-rate", "1"]);
    let slow = FakeSnuba::start(FAKE, &["--latency", "1ms", "--slow-rate", "1", "--slow-latency", "10s"]);
    let healthy = FakeSnuba::start(FAKE, &["--latency", "1ms"]);
    let gone = format!("http://127.0.0.1:{}", projector_tests::free_port());
    rt.block_on(async {
        let fast = Duration::from_secs(5);
        let r = client(&server_errors.url(), fast).hourly_counts(&request(1, 24)).await;
        assert!(matches!(&r, Err(e @ Error::QueryServer { status: 500, .. }) if e.is_retryable()), "{r:?}");

        let r = client(&malformed.url(), fast).hourly_counts(&request(1, 24)).await;
        assert!(
            matches!(&r, Err(e @ Error::QueryMalformed { sample, .. }) if !e.is_retryable() && sample.starts_with("{\"data\"")),
            "{r:?}"
        );

        let r = client(&slow.url(), Duration::from_millis(200)).hourly_counts(&request(1, 24)).await;
        assert!(matches!(&r, Err(e @ Error::QueryTimeout(_)) if e.is_retryable()), "{r:?}");

        // An empty window is a query the service refuses as bad: permanent.
        let r = client(&healthy.url(), fast).hourly_counts(&request(1, 0)).await;
        assert!(
            matches!(&r, Err(e @ Error::QueryBadRequest { status: 400, detail }) if !e.is_retryable() && detail.contains("invalid_query")),
            "{r:?}"
        );

        let r = client(&gone, fast).hourly_counts(&request(1, 24)).await;
        assert!(matches!(&r, Err(e @ Error::QueryUnreachable { .. }) if e.is_retryable()), "{r:?}");
    });
}

/// The original incident: 159 concurrent queries for one referrer against Snuba's limit of 100.
#[test]
fn the_incident_reproduced_159_concurrent_queries_against_a_limit_of_100() {
    let fake = FakeSnuba::start(FAKE, &["--latency", "2s", "--concurrency-limit", "100"]);
    runtime().block_on(async {
        let snuba = Arc::new(client(&fake.url(), Duration::from_secs(30)));
        let (mut ok, mut rate_limited) = (0, 0);
        for answer in answers(&snuba, 1..=159).await {
            match answer {
                Ok(_) => ok += 1,
                Err(Error::RateLimited { policy, quota_used, threshold }) => {
                    assert_eq!(policy.as_deref(), Some("ConcurrentRateLimitAllocationPolicy"));
                    assert_eq!(threshold, Some(100));
                    assert!(quota_used.unwrap_or(0) > 100);
                    rate_limited += 1;
                }
                Err(e) => panic!("unexpected error class: {e}"),
            }
        }
        let stats = fake.stats().await;
        assert_eq!(stats["max_in_flight"], 100, "{stats}");
        assert_eq!(stats["rejected_429"], 59, "{stats}");
        assert_eq!((ok, rate_limited), (100, 59));
    });
}

/// Concurrent queries against the fake; (ok, rate limited) counts.
async fn concurrent(snuba: &Arc<SnubaQuery>, orgs: std::ops::RangeInclusive<u64>) -> (u64, u64) {
    let (mut ok, mut rate_limited) = (0, 0);
    for answer in answers(snuba, orgs).await {
        match answer {
            Ok(_) => ok += 1,
            Err(Error::RateLimited { .. }) => rate_limited += 1,
            Err(e) => panic!("unexpected error class: {e}"),
        }
    }
    (ok, rate_limited)
}

/// Every org's query sent at once; the answers in org order.
async fn answers(snuba: &Arc<SnubaQuery>, orgs: std::ops::RangeInclusive<u64>) -> Vec<Result<projector_worker::query::OrgHistory, Error>> {
    let queries: Vec<_> = orgs
        .map(|org| {
            let snuba = snuba.clone();
            tokio::spawn(async move { snuba.hourly_counts(&request(org, 24)).await })
        })
        .collect();
    let mut answers = Vec::new();
    for q in queries {
        answers.push(q.await.expect("query task"));
    }
    answers
}

/// The fake's throttle (Snuba's early warning above limit x throttle-at), its rate limit, and
/// capacity changed mid-run with `POST /config`.
#[test]
fn the_fake_throttles_above_its_threshold_rate_limits_and_takes_new_capacity_mid_run() {
    let fake = FakeSnuba::start(FAKE, &["--latency", "1s", "--concurrency-limit", "9", "--throttle-at", "0.66"]);
    runtime().block_on(async {
        let snuba = Arc::new(client(&fake.url(), Duration::from_secs(30)));
        assert_eq!(concurrent(&snuba, 1..=9).await, (9, 0));
        let stats = fake.stats().await;
        // floor(9 x 0.66) = 5: the 6th to 9th concurrent queries are throttled, not refused.
        assert_eq!((stats["throttled"].as_u64(), stats["rejected_429"].as_u64()), (Some(4), Some(0)), "{stats}");

        let http = reqwest::Client::new();
        let set =
            http.post(format!("{}/config", fake.url())).json(&serde_json::json!({"concurrency_limit": 4})).send().await.expect("post");
        assert_eq!(set.status(), 200);
        assert_eq!(concurrent(&snuba, 1..=9).await, (4, 5), "the halved capacity holds at once");
        let shown: serde_json::Value = http.get(format!("{}/config", fake.url())).send().await.expect("get").json().await.expect("json");
        assert_eq!(shown["concurrency_limit"], 4, "{shown}");
        let bad = http.post(format!("{}/config", fake.url())).json(&serde_json::json!({"capacity": 3})).send().await.expect("post");
        assert_eq!(bad.status(), 400, "an unknown setting is refused");

        http.post(format!("{}/config", fake.url()))
            .json(&serde_json::json!({"concurrency_limit": 100, "rate_limit": "3/10s", "latency": "1ms"}))
            .send()
            .await
            .expect("post");
        assert_eq!(concurrent(&snuba, 1..=5).await, (3, 2), "3 starts per 10 s");
        let stats = fake.stats().await;
        assert_eq!(stats["max_started_in_1s"], 9, "the first round started 9 at once: {stats}");
    });
}

fn record(run: &str, org: u64, project: u64, hour: u32, token: u64, base: u64) -> ProjectionRecord {
    ProjectionRecord {
        run_id: RunId(run.into()),
        org_id: OrgId(org),
        project_id: ProjectId(project),
        first_hour: Utc.with_ymd_and_hms(2026, 11, 22, hour, 0, 0).single().expect("valid"),
        hourly: (0..24).map(|i| base + i).collect(),
        spike_threshold: 3 * (base + 23),
        fencing_token: token,
    }
}

fn stored(server: &RedisServer, org: u64) -> std::collections::BTreeMap<String, serde_json::Value> {
    let mut conn = server.connection();
    let raw: std::collections::BTreeMap<String, String> =
        redis::cmd("HGETALL").arg(projector_shared::keys::projections(OrgId(org))).query(&mut conn).expect("hgetall");
    raw.into_iter().map(|(k, v)| (k, serde_json::from_str(&v).expect("stored JSON"))).collect()
}

#[test]
fn the_redis_store_is_idempotent_and_refuses_stale_writes() {
    let server = RedisServer::start();
    runtime().block_on(async {
        let sink = RedisSink::new(server.url(), Duration::from_secs(48 * 3600)).expect("sink");
        let run = vec![record("run-13", 5, 501, 13, 10, 100), record("run-13", 5, 502, 13, 10, 200)];
        sink.write(run.clone()).await.expect("first write");
        let first = stored(&server, 5);
        assert_eq!(first.len(), 2, "one field per project: {first:?}");
        let hour13 = Utc.with_ymd_and_hms(2026, 11, 22, 13, 0, 0).single().expect("valid").timestamp();
        let field = projector_shared::keys::projection_field(ProjectId(501));
        assert_eq!(first[&field]["hourly"][1], 101, "hour 14 is hourly[1]");
        assert_eq!(first[&field]["hourly"].as_array().map(Vec::len), Some(24));
        assert_eq!((first[&field]["fencing_token"].as_u64(), first[&field]["first_hour"].as_i64()), (Some(10), Some(hour13)));
        assert_eq!(first[&field]["run_id"], "run-13");

        // The same run written twice: harmless.
        sink.write(run).await.expect("second write");
        assert_eq!(stored(&server, 5), first);

        // A stale lease of the same run (older fencing token) is refused and changes nothing.
        let stale = sink.write(vec![record("run-13", 5, 501, 13, 7, 999)]).await;
        assert!(matches!(stale, Err(Error::StaleWrite { token: 7, stored_token: 10, .. })), "{stale:?}");
        assert_eq!(stored(&server, 5), first);

        // An older run arriving late is refused too, even with a higher token.
        let late = sink.write(vec![record("run-12", 5, 501, 12, 99, 999)]).await;
        assert!(matches!(late, Err(Error::StaleWrite { .. })), "{late:?}");
        assert_eq!(stored(&server, 5), first);

        // The legacy path (no slot, token 0) of the same run is not fenced.
        sink.write(vec![record("run-13", 5, 501, 13, 0, 300)]).await.expect("unfenced write");
        assert_eq!(stored(&server, 5)[&field]["hourly"][1], 301);

        let mut conn = server.connection();
        let ttl: i64 = redis::cmd("PTTL").arg(projector_shared::keys::projections(OrgId(5))).query(&mut conn).expect("pttl");
        assert!(ttl > 47 * 3600 * 1000, "the org's hash carries the sink TTL: {ttl}");
    });
}

#[test]
fn a_newer_run_overwrites_and_projects_gone_longer_than_the_ttl_are_dropped() {
    let server = RedisServer::start();
    runtime().block_on(async {
        let sink = RedisSink::new(server.url(), Duration::from_secs(3 * 3600)).expect("sink");
        // Before an upgrade, the store kept one field per project and hour.
        let mut conn = server.connection();
        let _: () = redis::cmd("HSET")
            .arg(projector_shared::keys::projections(OrgId(9)))
            .arg("901:1795352400")
            .arg(r#"{"projected":1,"first_hour":1795352400,"fencing_token":1}"#)
            .query(&mut conn)
            .expect("old layout field");
        sink.write(vec![record("run-10", 9, 901, 10, 50, 100), record("run-10", 9, 902, 10, 50, 100)]).await.expect("run 10");
        assert_eq!(stored(&server, 9).len(), 2, "the per-hour field is gone with the first write");
        // Run 12 (a lower token: fencing tokens are compared within a run only) overwrites 901;
        // 902, which it does not carry, is kept: its projection (hour 10) is within the 3 h TTL.
        sink.write(vec![record("run-12", 9, 901, 12, 1, 500)]).await.expect("run 12");
        let fields = stored(&server, 9);
        assert_eq!((fields["901"]["run_id"].as_str(), fields["901"]["hourly"][0].as_u64()), (Some("run-12"), Some(500)));
        assert_eq!(fields["902"]["run_id"], "run-10", "kept");
        // Run 14: 902's projection is now older than 14 - 3 = 11, and it is dropped.
        sink.write(vec![record("run-14", 9, 901, 14, 1, 700)]).await.expect("run 14");
        let fields = stored(&server, 9);
        assert!(!fields.contains_key("902"), "dropped: {fields:?}");
        assert_eq!(fields["901"]["run_id"], "run-14");
    });
}

/// The cost of one org's write in Redis: one script call, and inside it one read of every
/// project, one multi-field write and two bookkeeping commands, however many hours and projects.
#[test]
fn one_org_write_costs_one_script_call_and_four_commands_inside_it() {
    let server = RedisServer::start();
    runtime().block_on(async {
        let sink = RedisSink::new(server.url(), Duration::from_secs(48 * 3600)).expect("sink");
        sink.write(vec![record("run-13", 4, 401, 13, 1, 100)]).await.expect("warm-up: loads the script");
        let mut conn = server.connection();
        let _: () = redis::cmd("CONFIG").arg("RESETSTAT").query(&mut conn).expect("resetstat");
        let projects: Vec<_> = (0..5).map(|p| record("run-14", 4, 400 + p, 14, 1, 100)).collect();
        sink.write(projects).await.expect("write");
        let info: String = redis::cmd("INFO").arg("commandstats").query(&mut conn).expect("info");
        let calls = |cmd: &str| -> u64 {
            info.lines()
                .find(|l| l.starts_with(&format!("cmdstat_{cmd}:")))
                .and_then(|l| l.split("calls=").nth(1))
                .and_then(|v| v.split(',').next())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        assert_eq!(calls("evalsha"), 1, "{info}");
        // One HMGET for the 5 projects + 1 HSET + HLEN + PEXPIRE.
        assert_eq!((calls("hmget"), calls("hget"), calls("hset"), calls("hlen"), calls("pexpire")), (1, 0, 1, 1, 1), "{info}");
    });
}
