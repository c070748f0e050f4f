//! The query path against real processes: the Snuba client against `projector-fake-snuba` (every
//! row paged in, every answer class, the 159-query incident, the fake refusing what Snuba
//! refuses) and the Redis projection store against `redis-server`.

use std::sync::Arc;
use std::time::Duration;

use chrono::{TimeZone, Utc};
use projector_job::Error;
use projector_job::error::RejectionClass;
use projector_job::history::Fold;
use projector_job::query::{HistoryPlan, Page, PageRequest, QuerySource, SyntheticQuery};
use projector_job::redis_sink::RedisSink;
use projector_job::sink::{ProjectionRecord, ProjectionSink};
use projector_job::snuba::{SnubaQuery, SnubaSettings};
use projector_shared::{OrgId, ProjectId, RunId};
use projector_tests::{FakeSnuba, RedisServer};

const FAKE: &str = env!("CARGO_BIN_EXE_projector-fake-snuba");
const REFERRER: &str = "getsentry.get_spike_projections";

fn client(url: &str, timeout: Duration) -> SnubaQuery {
    SnubaQuery::new(SnubaSettings {
        url: url.to_owned(),
        dataset: "outcomes".into(),
        referrer: REFERRER.into(),
        categories: vec![0, 1, 3],
        timeout,
        tls_ca_file: None,
        tls_insecure: false,
    })
    .expect("client")
}

fn end() -> chrono::DateTime<Utc> {
    // Within the hourly table's 90 days, whatever day the tests run.
    use chrono::DurationRound;
    Utc::now().duration_trunc(chrono::TimeDelta::hours(1)).expect("hour")
}

fn request(org: u64, hours: i64) -> PageRequest {
    PageRequest {
        org_id: OrgId(org),
        project_ids: projector_shared::synthetic::synthetic_projects(OrgId(org)),
        start: end() - chrono::TimeDelta::hours(hours),
        end: end(),
        limit: 10_000,
        offset: 0,
    }
}

use projector_tests::runtime;

/// Reads a whole plan through `source` as the pipeline does; the projections and the pages.
async fn read_all(
    source: &dyn QuerySource,
    plan: &HistoryPlan,
) -> Result<(Vec<(ProjectId, projector_shared::projection::Projection)>, u32), Error> {
    let mut fold = Fold::new(plan.start().timestamp().div_euclid(3600), plan.hours);
    let mut pages = 0;
    for group in plan.groups() {
        let mut page = plan.first_page(group);
        loop {
            let answer: Page = source.page(&page).await?;
            pages += 1;
            fold.add(&answer.rows, group)?;
            if answer.rows.len() < page.limit {
                break;
            }
            page.offset += page.limit;
        }
        fold.end_group(group);
    }
    Ok((fold.into_projections(), pages))
}

/// An org with 8 projects gets all 8 x 504 hours, through pages that Snuba's limits allow, and the
/// same projections the embedded source computes; so do orgs of 1 to 30 projects.
#[test]
fn every_project_hour_of_the_window_is_read_and_projected_as_the_embedded_source_does() {
    let fake = FakeSnuba::start(FAKE, &["--latency", "1ms"]);
    runtime().block_on(async {
        let snuba = client(&fake.url(), Duration::from_secs(5));
        for projects in [1u64, 8, 19, 20, 30] {
            let org = 1_000 + projects;
            let plan = HistoryPlan {
                org_id: OrgId(org),
                project_ids: (1..=projects).map(|p| ProjectId(org * 100 + p)).collect(),
                end: end(),
                hours: 504,
                page_rows: 10_000,
            };
            let (got, pages) = read_all(&snuba, &plan).await.expect("read");
            let (expected, _) = read_all(&SyntheticQuery { latency: Duration::ZERO }, &plan).await.expect("synthetic");
            assert_eq!(got.len() as u64, projects);
            assert_eq!(got, expected, "org of {projects} projects");
            assert_eq!(pages as usize, (projects as usize).div_ceil(19), "19 projects x 504 hours fit one page");
        }
        // A small page size: every group pages on with OFFSET, and nothing is lost.
        let plan = HistoryPlan { org_id: OrgId(7), project_ids: vec![], end: end(), hours: 504, page_rows: 1_000 };
        let (paged, pages) = read_all(&snuba, &plan).await.expect("read");
        let (expected, _) = read_all(&SyntheticQuery { latency: Duration::ZERO }, &plan).await.expect("synthetic");
        assert!(pages > 1, "{pages}");
        assert_eq!(paged, expected);
        let stats = fake.stats().await;
        assert_eq!(stats["invalid_queries"], 0, "{stats}");
        let served = stats["rows_served"].as_u64().expect("rows");
        assert!(served > 8 * 400, "{stats}");
    });
}

#[test]
fn each_answer_maps_to_its_error_class() {
    let rt = runtime();
    let server_errors = FakeSnuba::start(FAKE, &["--latency", "1ms", "--error-rate", "1"]);
    let timeouts = FakeSnuba::start(FAKE, &["--latency", "1ms", "--error-rate", "1", "--error-code", "159"]);
    let overloaded = FakeSnuba::start(FAKE, &["--latency", "1ms", "--error-rate", "1", "--error-code", "202"]);
    let memory = FakeSnuba::start(FAKE, &["--latency", "1ms", "--error-rate", "1", "--error-code", "241"]);
    let malformed = FakeSnuba::start(FAKE, &["--latency", "1ms", "--malformed-rate", "1"]);
    let slow = FakeSnuba::start(FAKE, &["--latency", "1ms", "--slow-rate", "1", "--slow-latency", "10s"]);
    let healthy = FakeSnuba::start(FAKE, &["--latency", "1ms"]);
    let gone = format!("http://127.0.0.1:{}", projector_tests::free_port());
    rt.block_on(async {
        let fast = Duration::from_secs(5);
        let r = client(&server_errors.url(), fast).page(&request(1, 24)).await;
        assert!(matches!(&r, Err(e @ Error::QueryServer { status: 500, .. }) if e.is_retryable()), "{r:?}");
        let r = client(&timeouts.url(), fast).page(&request(1, 24)).await;
        assert!(matches!(&r, Err(e @ Error::ServiceTimeout { code: 159, .. }) if e.is_retryable() && e.reason() == "timeout"), "{r:?}");
        let r = client(&overloaded.url(), fast).page(&request(1, 24)).await;
        assert!(matches!(&r, Err(e @ Error::ServiceOverloaded { .. }) if e.reason() == "overloaded"), "{r:?}");
        let r = client(&memory.url(), fast).page(&request(1, 24)).await;
        assert!(matches!(&r, Err(e @ Error::QueryBadRequest { status: 400, .. }) if !e.is_retryable()), "{r:?}");

        let r = client(&malformed.url(), fast).page(&request(1, 24)).await;
        assert!(
            matches!(&r, Err(e @ Error::QueryMalformed { sample, .. }) if !e.is_retryable() && sample.starts_with("{\"data\"")),
            "{r:?}"
        );
        let r = client(&slow.url(), Duration::from_millis(200)).page(&request(1, 24)).await;
        assert!(matches!(&r, Err(e @ Error::QueryTimeout(_)) if e.is_retryable()), "{r:?}");

        // A window the wrong way round is a query the service refuses: the run stops.
        let mut backwards = request(1, 24);
        std::mem::swap(&mut backwards.start, &mut backwards.end);
        let r = client(&healthy.url(), fast).page(&backwards).await;
        assert!(
            matches!(&r, Err(e @ Error::QueryRefused { status: 400, kind, query, .. }) if !e.is_retryable() && kind == "invalid_query" && query.starts_with("MATCH (outcomes)")),
            "{r:?}"
        );
        let r = client(&gone, fast).page(&request(1, 24)).await;
        assert!(matches!(&r, Err(e @ Error::QueryUnreachable { .. }) if e.is_retryable()), "{r:?}");
    });
}

/// The fake refuses what Snuba refuses, with Snuba's 400 and message, whatever client sends it.
#[test]
fn the_fake_refuses_what_snuba_refuses_with_snubas_message() {
    let fake = FakeSnuba::start(FAKE, &["--latency", "1ms"]);
    runtime().block_on(async {
        let wide = PageRequest { project_ids: (1..=10).map(ProjectId).collect(), ..request(7, 504) };
        let good = client(&fake.url(), Duration::from_secs(5)).snql(&wide);
        let http = reqwest::Client::new();
        let send = |dataset: &'static str, body: serde_json::Value| {
            let http = http.clone();
            let url = format!("{}/{dataset}/snql", fake.url());
            async move {
                let r = http.post(url).json(&body).send().await.expect("post");
                (r.status().as_u16(), r.json::<serde_json::Value>().await.unwrap_or_default())
            }
        };
        let ok = send("outcomes", serde_json::json!({"query": good, "tenant_ids": {"referrer": REFERRER, "organization_id": 7}})).await;
        assert_eq!(ok.0, 200, "{ok:?}");
        assert_eq!(ok.1["quota_allowance"]["summary"]["rejected_by"], serde_json::json!({}));
        let cases = [
            (good.replace("GRANULARITY 3600", "GRANULARITY"), "Parsing error on line 1 at '"),
            (
                good.replace("MATCH (outcomes)", "MATCH (events)"),
                "Validation failed for entity events: missing required conditions for project_id",
            ),
            (good.replace("org_id = 7 AND ", ""), "Validation failed for entity outcomes: missing required conditions for org_id"),
            (good.replace("sum(quantity)", "sum(bytes)"), "Validation failed for entity outcomes: Tag keys (bytes) not resolved"),
            (good.replace("LIMIT 10000", "LIMIT 20000"), "queries cannot have a limit higher than 10000"),
            (good.split(" AND timestamp >=").next().unwrap_or_default().to_owned() + " GRANULARITY 3600", "Missing >= condition"),
        ];
        for (query, message) in cases {
            let (status, body) = send("outcomes", serde_json::json!({"query": query})).await;
            assert_eq!(status, 400, "{query}: {body}");
            assert_eq!(body["error"]["type"], "invalid_query", "{body}");
            assert!(body["error"]["message"].as_str().unwrap_or_default().starts_with(message), "{query}: {body}");
        }
        let (status, body) = send("outcomes", serde_json::json!({"query": good, "limit": 5})).await;
        assert_eq!((status, body["error"]["type"].as_str()), (400, Some("schema")), "{body}");
        // Without LIMIT, Snuba answers at most 1,000 rows.
        let unlimited = good.replace(" LIMIT 10000 OFFSET 0", "");
        let (_, body) = send("outcomes", serde_json::json!({"query": unlimited})).await;
        assert_eq!(body["data"].as_array().map(Vec::len), Some(1_000), "the default LIMIT");
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
                Err(Error::RateLimited { class, policy, quota_used, threshold, storage_key, .. }) => {
                    assert_eq!((class, policy.as_str()), (RejectionClass::Referrer, "ReferrerGuardRailPolicy"));
                    assert_eq!((threshold, storage_key.as_deref()), (Some(100), Some("outcomes_hourly")));
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

/// Concurrent queries against the fake: the answers' classes counted.
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
async fn answers(snuba: &Arc<SnubaQuery>, orgs: std::ops::RangeInclusive<u64>) -> Vec<Result<Page, Error>> {
    let queries: Vec<_> = orgs
        .map(|org| {
            let snuba = snuba.clone();
            tokio::spawn(async move { snuba.page(&request(org, 24)).await })
        })
        .collect();
    let mut answers = Vec::new();
    for q in queries {
        answers.push(q.await.expect("query task"));
    }
    answers
}

/// Snuba's throttle (above default // 1.5, from the default limit), the service's own count in
/// every answer, other callers' load, and capacity changed mid-run with `POST /config`.
#[test]
fn the_fake_throttles_from_the_default_limit_reports_its_count_and_takes_new_capacity_mid_run() {
    let fake = FakeSnuba::start(FAKE, &["--latency", "1s", "--concurrency-limit", "9", "--default-limit", "9", "--background", "1"]);
    runtime().block_on(async {
        let snuba = Arc::new(client(&fake.url(), Duration::from_secs(30)));
        let pages = answers(&snuba, 1..=8).await;
        let quotas: Vec<_> = pages.iter().filter_map(|p| p.as_ref().ok().and_then(|p| p.quota)).collect();
        assert_eq!(quotas.len(), 8);
        assert!(quotas.iter().all(|q| q.rejection_threshold == 9 && q.throttle_threshold == 6), "{quotas:?}");
        assert_eq!(quotas.iter().map(|q| q.quota_used).max(), Some(9), "8 of ours and 1 other caller's");
        let stats = fake.stats().await;
        // 9 // 1.5 = 6: the 7th to 9th running queries (counting the other caller's) are throttled.
        assert_eq!((stats["throttled"].as_u64(), stats["rejected_429"].as_u64()), (Some(3), Some(0)), "{stats}");

        let http = reqwest::Client::new();
        let set = http
            .post(format!("{}/config", fake.url()))
            .json(&serde_json::json!({"concurrency_limit": 4, "background": 0}))
            .send()
            .await
            .expect("post");
        assert_eq!(set.status(), 200);
        assert_eq!(concurrent(&snuba, 1..=9).await, (4, 5), "the lower capacity holds at once");
        let bad = http.post(format!("{}/config", fake.url())).json(&serde_json::json!({"capacity": 3})).send().await.expect("post");
        assert_eq!(bad.status(), 400, "an unknown setting is refused");

        http.post(format!("{}/config", fake.url()))
            .json(&serde_json::json!({"concurrency_limit": 100, "gateway_rate_limit": "3/10s", "latency": "1ms"}))
            .send()
            .await
            .expect("post");
        assert_eq!(concurrent(&snuba, 1..=5).await, (3, 2), "a gateway's 3 starts per 10 s");
    });
}

/// Each class of 429 by the policy that refused: the per-org policy and the bytes policy are this
/// org's concern, the referrer's is the fleet's.
#[test]
fn each_policy_refusal_is_classed_by_its_policy() {
    let fake = FakeSnuba::start(FAKE, &["--latency", "1s", "--org-concurrency-limit", "2", "--bytes-rejected-orgs", "9"]);
    runtime().block_on(async {
        let snuba = Arc::new(client(&fake.url(), Duration::from_secs(30)));
        let same_org: Vec<_> = (0..3)
            .map(|_| {
                let snuba = snuba.clone();
                tokio::spawn(async move { snuba.page(&request(5, 24)).await })
            })
            .collect();
        let mut classes = Vec::new();
        for q in same_org {
            if let Err(Error::RateLimited { class, .. }) = q.await.expect("task") {
                classes.push(class);
            }
        }
        assert_eq!(classes, vec![RejectionClass::Tenant], "the third query of one org meets the per-org limit of 2");
        let r = snuba.page(&request(9, 24)).await;
        assert!(matches!(r, Err(Error::RateLimited { class: RejectionClass::Bytes, .. })), "{r:?}");
        let stats = fake.stats().await;
        assert_eq!(stats["rejected_by_policy"]["ConcurrentRateLimitAllocationPolicy"], 1, "{stats}");
        assert_eq!(stats["rejected_by_policy"]["BytesScannedWindowAllocationPolicy"], 1, "{stats}");
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
