//! What the query service answers, end to end: a fleet (redis-server, workers, the scheduler)
//! against `projector-fake-snuba` playing Snuba as its source has it. A query Snuba refuses
//! stops the run; an org whose pages fail half-way ends failed with nothing stored; each class of
//! 429 ends in its own outcome and reason; an abandoned query keeps its slot; a 20,000-project
//! org is read page by page among small ones.

use std::io::Write;
use std::process::Output;
use std::time::Duration;

use projector_shared::OrgId;
use projector_tests::fleet::{base_env, json_of, metrics_addr, run, text, worker};
use projector_tests::{FakeSnuba, Proc, RedisServer, sample, scrape};
use serde_json::Value;

const FAKE: &str = env!("CARGO_BIN_EXE_projector-fake-snuba");

fn ctl(env: &[(String, String)], args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.push("--json");
    json_of(&run("projectorctl", env, &all))
}

/// `run-once --wait` (the env's orgs, or `--orgs N` in `extra`); the run id and output.
fn run_wait(env: &[(String, String)], extra: &[&str]) -> (String, Output) {
    run_wait_for(env, "120s", extra)
}

fn run_wait_for(env: &[(String, String)], timeout: &str, extra: &[&str]) -> (String, Output) {
    let mut args = vec!["run-once", "--wait", "--wait-timeout", timeout, "--batch-delay", "0s", "--fail-on", "none"];
    args.extend_from_slice(extra);
    let out = run("projector-scheduler", env, &args);
    assert!(out.status.success(), "{}\n{}", text(&out.stdout), text(&out.stderr));
    let run_id = text(&out.stdout).split_whitespace().nth(1).map(|r| r.trim_end_matches(':').to_owned()).expect("run id");
    (run_id, out)
}

/// The reason kind of each org that did not complete, by org.
fn reasons(shown: &Value) -> Vec<(u64, String, String)> {
    shown["not_completed"]
        .as_array()
        .expect("not_completed")
        .iter()
        .map(|o| {
            let org = o["org_id"].as_u64().expect("org");
            (org, o["outcome"].as_str().unwrap_or_default().to_owned(), o["reason"]["kind"].as_str().unwrap_or_default().to_owned())
        })
        .collect()
}

/// A Snuba older than the migration that added `category` and `quantity` refuses every query
/// with the same 400: the first refusal stops the run, its other orgs end failed without a query,
/// and the service sees at most one refused query per job loop, not one per org.
#[test]
fn a_query_the_service_refuses_stops_the_run_after_the_first_org() {
    let redis = RedisServer::start();
    let fake = FakeSnuba::start(FAKE, &["--latency", "5ms", "--without-columns", "category,quantity"]);
    let env = base_env(&redis, &fake.url());
    let w = worker(&env, &["--concurrency", "1"]);
    let (run_id, _) = run_wait(&env, &["--orgs", "30"]);
    let shown = ctl(&env, &["runs", "show", &run_id]);
    assert_eq!((shown["outcomes"]["failed"].as_u64(), shown["outcomes"]["completed"].as_u64()), (Some(30), Some(0)), "{shown}");
    let stats = fake.stats_now();
    assert_eq!(stats["invalid_queries"], 1, "one query, not thirty: {stats}");
    assert_eq!(stats["last_invalid"], "Validation failed for entity outcomes: Tag keys (category, quantity) not resolved", "{stats}");
    let kinds = reasons(&ctl(&env, &["runs", "show", &run_id, "--all"]));
    assert_eq!(kinds.iter().filter(|(_, _, k)| k == "invalid_query").count(), 1, "{kinds:?}");
    assert!(kinds.iter().all(|(_, o, k)| o == "failed" && (k == "invalid_query" || k == "run_stopped")), "{kinds:?}");
    let log = w.wait_for_line(&["refused the query itself"], Duration::from_secs(10));
    assert!(log.contains("Tag keys (category, quantity) not resolved") && log.contains("MATCH (outcomes)"), "{log}");
    let metrics = scrape(&metrics_addr(&w));
    assert_eq!(sample(&metrics, "projector_run_stopped_total"), Some(1.0), "{metrics}");
}

/// An org of 40 projects is read in three queries (19 projects x 504 hours per page); its second
/// fails. It ends failed with nothing stored, and no third query is sent; other orgs complete.
#[test]
fn an_org_whose_pages_fail_half_way_ends_failed_with_nothing_stored() {
    let redis = RedisServer::start();
    let fake = FakeSnuba::start(FAKE, &["--latency", "2ms", "--fail-query", "5:2"]);
    let dir = tempfile::tempdir().expect("tempdir");
    let orgs = dir.path().join("orgs.jsonl");
    let mut file = std::fs::File::create(&orgs).expect("orgs file");
    for org in 1..=6u64 {
        let projects: Vec<u64> = (1..=40).map(|p| org * 1_000 + p).collect();
        writeln!(file, "{}", serde_json::json!({"org_id": org, "project_ids": projects})).expect("write");
    }
    let mut env = base_env(&redis, &fake.url());
    env.push(("PROJECTOR_ORGS_SOURCE".into(), "file".into()));
    env.push(("PROJECTOR_ORGS_PATH".into(), orgs.display().to_string()));
    // One try: with retries the org would complete on its next try (the fault is its 2nd query only).
    let _w = worker(&env, &["--concurrency", "4", "--set", "runs.max_attempts=1"]);
    let (run_id, _) = run_wait(&env, &[]);
    let shown = ctl(&env, &["runs", "show", &run_id]);
    assert_eq!((shown["outcomes"]["completed"].as_u64(), shown["outcomes"]["failed"].as_u64()), (Some(5), Some(1)), "{shown}");
    assert_eq!(reasons(&shown), [(5, "failed".to_owned(), "server_error".to_owned())]);
    let stats = fake.stats_now();
    assert_eq!(stats["queries_by_org"]["5"], 2, "no page after the failed one: {stats}");
    assert_eq!(stats["queries_by_org"]["1"], 3, "40 projects in three pages: {stats}");
    let mut conn = redis.connection();
    let stored: u64 = redis::cmd("HLEN").arg(projector_shared::keys::projections(OrgId(5))).query(&mut conn).expect("hlen");
    assert_eq!(stored, 0, "no projection from part of the rows");
    let whole: u64 = redis::cmd("HLEN").arg(projector_shared::keys::projections(OrgId(1))).query(&mut conn).expect("hlen");
    assert_eq!(whole, 40);
    let why = ctl(&env, &["explain", &run_id, "5"]);
    let query = why["attempts"][0]["steps"].as_array().and_then(|s| s.iter().find(|s| s["step"] == "query").cloned()).expect("query step");
    assert_eq!((query["status"].as_str(), query["pages"].as_u64()), (Some("server_error (page 2)"), Some(2)), "{why}");
}

/// Org 5's own traffic holds its share (Snuba's per-org override of 0) and org 7 is over its
/// bytes budget. Each 429 is counted under its own reason; org 5 waits and is tried again every
/// few seconds, org 7's policy window (10 min) is past the run's deadline (4 s). Both end
/// rate_limited with the reason deadline, their trails name the class, and the fleet's counter
/// of referrer 429s stays at 0.
#[test]
fn each_class_of_429_ends_in_its_own_outcome_and_reason() {
    let redis = RedisServer::start();
    let fake = FakeSnuba::start(
        FAKE,
        &["--latency", "2ms", "--org-concurrency-limit", "22", "--org-concurrency-override", "5:0", "--bytes-rejected-orgs", "7"],
    );
    let env = base_env(&redis, &fake.url());
    let w = worker(&env, &["--concurrency", "4"]);
    let (run_id, _) = run_wait(&env, &["--orgs", "10", "--deadline", "4s"]);
    let shown = ctl(&env, &["runs", "show", &run_id]);
    assert_eq!(shown["outcomes"]["completed"], 8, "{shown}");
    let kinds = reasons(&shown);
    // Org 7's next try would come after the deadline: its last try's outcome stands. Org 5 may
    // still be waiting in the queue when the deadline passes, and then ends as every org does
    // that had no turn: deadline. Both say deadline.
    assert_eq!(kinds.len(), 2, "{kinds:?}");
    assert!(kinds[0].0 == 5 && ["rate_limited", "deadline"].contains(&kinds[0].1.as_str()) && kinds[0].2 == "deadline", "{kinds:?}");
    assert_eq!(kinds[1], (7, "rate_limited".to_owned(), "deadline".to_owned()));
    // The trail of an org the deadline sweep ended holds the sweep's line alone: only org 7's last
    // try is sure to be its own.
    let why = ctl(&env, &["explain", &run_id, "7"]);
    let query = why["attempts"][0]["steps"].as_array().and_then(|s| s.iter().find(|s| s["step"] == "query").cloned());
    assert_eq!(query.as_ref().and_then(|q| q["status"].as_str()), Some("rate_limited_bytes"), "{why}");
    let metrics = scrape(&metrics_addr(&w));
    let errors = |reason: &str| sample(&metrics, &format!("run_spike_projection_error_total{{reason=\"{reason}\"}}")).unwrap_or(0.0);
    assert!(errors("rate_limited_org") >= 2.0, "org 5 waited and was tried again: {metrics}");
    assert_eq!((errors("rate_limited_bytes"), errors("rate_limited")), (1.0, 0.0), "{metrics}");
    assert_eq!(sample(&metrics, "projector_query_rate_limited_total"), Some(0.0), "no referrer 429: {metrics}");
    let stats = fake.stats_now();
    assert!(stats["rejected_by_policy"]["ConcurrentRateLimitAllocationPolicy"].as_u64().is_some_and(|n| n >= 2), "{stats}");
    assert_eq!(stats["rejected_by_policy"]["BytesScannedWindowAllocationPolicy"], 1, "{stats}");
}

/// Queries that take 2 s at the service against a 300 ms client timeout: each abandoned query
/// keeps its slot until query.max_duration (2 s) has passed, so the service never sees more than
/// slots.limit queries of the fleet at once, although every client gave up long before.
#[test]
fn an_abandoned_query_keeps_its_slot_until_it_must_have_ended_at_the_service() {
    let redis = RedisServer::start();
    let fake = FakeSnuba::start(FAKE, &["--latency", "2s"]);
    let env = base_env(&redis, &fake.url());
    let settings = [
        "--concurrency",
        "8",
        "--set",
        "slots.limit=2",
        "--set",
        "slots.max_wait=60s",
        "--set",
        "query.timeout=300ms",
        "--set",
        "query.max_duration=2s",
        "--set",
        "query.max_duration_below_service=true",
        "--set",
        "runs.max_attempts=1",
    ];
    let w = worker(&env, &settings);
    let (run_id, _) = run_wait(&env, &["--orgs", "6"]);
    let shown = ctl(&env, &["runs", "show", &run_id]);
    assert_eq!(shown["outcomes"]["failed"], 6, "every query timed out at the client: {shown}");
    let stats = fake.stats_now();
    assert_eq!(stats["requests"], 6, "{stats}");
    assert!(stats["max_in_flight"].as_u64().is_some_and(|m| m <= 2), "the service never counted more than slots.limit: {stats}");
    let metrics = scrape(&metrics_addr(&w));
    assert_eq!(sample(&metrics, "projector_slot_kept_after_abandon_total"), Some(6.0), "{metrics}");
}

/// One org with 20,000 projects among 500 small ones: every org completes, the big one in
/// 1,053 pages of at most 10,000 rows, all 20,000 projections stored (in chunks). The worker's
/// peak memory is printed for BENCHMARKS.md, not asserted.
#[test]
fn a_20000_project_org_is_read_page_by_page_among_500_small_ones() {
    let redis = RedisServer::start();
    let fake = FakeSnuba::start(FAKE, &["--latency", "1ms"]);
    let dir = tempfile::tempdir().expect("tempdir");
    let orgs = dir.path().join("orgs.jsonl");
    let mut file = std::io::BufWriter::new(std::fs::File::create(&orgs).expect("orgs file"));
    let big: Vec<u64> = (1..=20_000).map(|p| 9_000_000 + p).collect();
    writeln!(file, "{}", serde_json::json!({"org_id": 9, "project_ids": big})).expect("write");
    for org in 10..510u64 {
        writeln!(file, "{}", serde_json::json!({"org_id": org, "project_ids": [org * 10, org * 10 + 1]})).expect("write");
    }
    drop(file);
    let mut env = base_env(&redis, &fake.url());
    env.push(("PROJECTOR_ORGS_SOURCE".into(), "file".into()));
    env.push(("PROJECTOR_ORGS_PATH".into(), orgs.display().to_string()));
    let w = worker(&env, &["--concurrency", "16"]);
    // The big org's 1,053 pages take 45-65 s in a debug build; the bound only stops a stuck run.
    let (run_id, _) = run_wait_for(&env, "600s", &[]);
    let shown = ctl(&env, &["runs", "show", &run_id]);
    assert_eq!((shown["outcomes"]["completed"].as_u64(), shown["orgs_total"].as_u64()), (Some(501), Some(501)), "{shown}");
    assert_eq!(fake.stats_now()["queries_by_org"]["9"], 1_053, "20,000 projects, 19 per page");
    let mut conn = redis.connection();
    let stored: u64 = redis::cmd("HLEN").arg(projector_shared::keys::projections(OrgId(9))).query(&mut conn).expect("hlen");
    assert_eq!(stored, 20_000);
    let status = std::fs::read_to_string(format!("/proc/{}/status", w.pid())).unwrap_or_default();
    let peak = status.lines().find(|l| l.starts_with("VmHWM")).unwrap_or("VmHWM: unknown");
    eprintln!("worker peak resident memory over the run: {peak}");
}

/// The service admits 20 for the referrer and other callers hold 15 of them: while a run goes,
/// `status` shows the service's numbers beside the limit in force (50) and warns of both, the page
/// shows the same, and each worker exports the numbers as gauges.
#[test]
fn status_shows_the_services_own_count_and_warns_when_it_disagrees_with_the_fleet() {
    let redis = RedisServer::start();
    let fake = FakeSnuba::start(FAKE, &["--latency", "300ms", "--concurrency-limit", "20", "--background", "15"]);
    let env = base_env(&redis, &fake.url());
    // Not following the service's numbers: the fleet is exposed, and the log says so too.
    let w = worker(&env, &["--concurrency", "3", "--set", "slots.follow_service=false"]);
    let out = run("projector-scheduler", &env, &["run-once", "--orgs", "60", "--batch-delay", "0s"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let mut last = Value::Null;
    let both = projector_tests::holds_within(Duration::from_secs(30), || {
        last = ctl(&env, &["status"]);
        last["warnings"].as_array().is_some_and(|w| w.len() == 2)
    });
    assert!(both, "two warnings while the run goes: {last}");
    assert_eq!(
        (last["service"]["rejection_threshold"].as_i64(), last["service"]["throttle_threshold"].as_i64()),
        (Some(20), Some(66)),
        "{last}"
    );
    assert!(last["service"]["quota_used"].as_i64().is_some_and(|u| u >= 16), "15 others and ours: {last}");
    let warnings = last["warnings"].to_string();
    assert!(warnings.contains("admits 20") && warnings.contains("other callers"), "{warnings}");
    w.wait_for_line(&["the query service admits fewer queries for this referrer than the slots in force"], Duration::from_secs(10));
    let human = text(&run("projectorctl", &env, &["status"]).stdout);
    assert!(human.contains("of 20 running for getsentry.get_spike_projections") && human.contains("WARNING"), "{human}");
    let metrics = scrape(&metrics_addr(&w));
    let series = "{referrer=\"getsentry.get_spike_projections\"}";
    assert_eq!(sample(&metrics, &format!("projector_service_rejection_threshold{series}")), Some(20.0), "{metrics}");
    assert!(sample(&metrics, &format!("projector_service_quota_used{series}")).is_some_and(|u| u >= 16.0), "{metrics}");
}

/// The fleet alone on the referrer runs in bursts: the service's count is read mid-burst, while
/// the slots are often sampled between bursts. Other callers are worked out at the answers
/// themselves, so status, its JSON, the gauge behind the alert and the page's chart show none,
/// and the chart's "in use" shows the bursts the service counted. With a real background of 75
/// other queries, "other callers" reads about 75.
#[test]
fn other_callers_are_counted_at_the_answers_so_the_fleet_alone_shows_none() {
    // The count at an answer is the service's less the fleet's leases, and a lease is taken
    // before its query reaches the service: a window's smallest reading can be up to the slots
    // less one (7) under the background, never over it. So "about 75" is 68 to 75 here.
    for (background, expect) in [(0u64, 0..=5), (75, 68..=80)] {
        let redis = RedisServer::start();
        let background_arg = background.to_string();
        let fake = FakeSnuba::start(FAKE, &["--latency", "300ms", "--concurrency-limit", "200", "--background", &background_arg]);
        let mut env = base_env(&redis, &fake.url());
        env.push(("PROJECTOR_WORKER_SLOT_SAMPLE_INTERVAL".into(), "200ms".into()));
        env.push(("PROJECTOR_QUERY_REFERRER_LIMIT".into(), "200".into()));
        let w = worker(&env, &["--concurrency", "8", "--slots-limit", "8"]);
        let (run_id, _) = run_wait(&env, &["--orgs", "80", "--set", "batch.size=8", "--set", "batch.delay=1s"]);
        assert_eq!(ctl(&env, &["runs", "show", &run_id])["outcomes"]["completed"], 80);
        let status = ctl(&env, &["status"]);
        let others = status["service"]["others"].as_u64().unwrap_or_else(|| panic!("others: {status}"));
        assert!(expect.contains(&others), "background {background}: other callers {others}: {status}");
        let warned = status["warnings"].to_string().contains("other callers");
        assert_eq!(warned, background > 0, "background {background}: {status}");
        let gauge = sample(&scrape(&metrics_addr(&w)), "projector_service_other_callers").expect("the gauge");
        assert!(expect.contains(&(gauge as u64)), "background {background}: gauge {gauge}");
        let peak = status["slot_history"]["peak_in_use"].as_u64().unwrap_or(0);
        assert!(peak >= 4, "the chart shows the bursts the service counted (peak {peak} of 8): {}", status["slot_history"]);
    }
}

/// The query service admits 30 while slots.limit is 50: the fleet follows the service's own
/// numbers from the first answers on, so the 429s are the first wave's (before any answer came
/// back) and every later query fits; the refused orgs are tried again and every org completes.
/// The next run, after the cap has lapsed (`slots.service_ttl`), starts within the service's
/// remembered room (`slots.service_memory`) and meets no 429 at all. Without following the
/// service's numbers, many more queries are refused.
#[test]
fn the_fleet_follows_the_services_own_limit_when_it_is_below_slots_limit() {
    let redis = RedisServer::start();
    let fake = FakeSnuba::start(FAKE, &["--latency", "100ms", "--concurrency-limit", "30"]);
    let env = base_env(&redis, &fake.url());
    let settings = ["--concurrency", "60", "--set", "slots.max_wait=5m", "--set", "slots.service_ttl=2s"];
    let workers: Vec<Proc> = (0..3).map(|_| worker(&env, &settings)).collect();
    let (run_id, _) = run_wait(&env, &["--orgs", "1500"]);
    let shown = ctl(&env, &["runs", "show", &run_id]);
    let stats = fake.stats_now();
    let refused = stats["rejected_429"].as_u64().expect("429s");
    eprintln!("following the service: {refused} 429s of 1,500 orgs, at most {} in flight", stats["max_in_flight"]);
    assert!(refused <= 30, "at most 2 % of 1,500 orgs meet a 429: {refused}\n{stats}\n{shown}");
    assert!(stats["max_in_flight"].as_u64().is_some_and(|m| m <= 30), "{stats}");
    assert_eq!(shown["outcomes"]["completed"], 1500, "the refused were tried again and completed: {shown}");
    let metrics = scrape(&metrics_addr(&workers[0]));
    let cap = sample(&metrics, "spike_projection_slot_limit{source=\"service\"}").unwrap_or(0.0);
    assert!((24.0..=28.0).contains(&cap), "the limit in force comes from the service: 30 less the margin: {cap}\n{metrics}");
    let status = ctl(&env, &["status"]);
    assert_eq!(status["limit"]["source"], "service", "{status}");

    // The cap lapses 2 s after the last answer (Redis time); the room stays.
    let adaptive = projector_shared::keys::SlotKeys::new("default").adaptive();
    let mut conn = redis.connection();
    projector_tests::wait_until(Duration::from_secs(30), "the cap lapses after slots.service_ttl", || {
        let until: Option<i64> = redis::cmd("HGET").arg(&adaptive).arg("service_until_ms").query(&mut conn).unwrap_or(None);
        let (secs, micros): (i64, i64) = redis::cmd("TIME").query(&mut conn).expect("time");
        until.is_some_and(|u| u < secs * 1000 + micros / 1000)
    });
    let (run_id, _) = run_wait(&env, &["--orgs", "300"]);
    let again = fake.stats_now()["rejected_429"].as_u64().expect("429s");
    assert_eq!(again, refused, "the second run started within the remembered room (28 of 30): no new 429");
    assert_eq!(ctl(&env, &["runs", "show", &run_id])["outcomes"]["completed"], 300);
    drop(workers);

    // The control: the same fleet told not to follow the service's numbers.
    let fake = FakeSnuba::start(FAKE, &["--latency", "100ms", "--concurrency-limit", "30"]);
    let redis = RedisServer::start();
    let env = base_env(&redis, &fake.url());
    let _workers: Vec<Proc> = (0..3)
        .map(|_| worker(&env, &["--concurrency", "60", "--set", "slots.max_wait=5m", "--set", "slots.follow_service=false"]))
        .collect();
    run_wait(&env, &["--orgs", "1500"]);
    let refused = fake.stats_now()["rejected_429"].as_u64().expect("429s");
    eprintln!("not following it: {refused} 429s of 1,500 orgs");
    assert!(refused > 150, "without following, the 20 slots above the service's room keep meeting 429s: {refused}");
}

/// The fake injects 500s, malformed bodies and answers slower than the client waits. A failure
/// that may pass is tried again after a backoff, up to runs.max_attempts tries; a malformed body
/// is not (it would come back the same from Snuba). So every org not completed either met a
/// malformed body or used all its tries, and the fake's per-org counts show the retries.
#[test]
fn transient_failures_are_tried_again_until_the_org_completes_or_its_tries_run_out() {
    let redis = RedisServer::start();
    let fake = FakeSnuba::start(
        FAKE,
        &["--latency", "5ms", "--error-rate", "0.3", "--malformed-rate", "0.1", "--slow-rate", "0.1", "--slow-latency", "3s"],
    );
    let env = base_env(&redis, &fake.url());
    let settings = [
        "--concurrency",
        "16",
        "--set",
        "query.timeout=500ms",
        "--set",
        "query.max_duration=1s",
        "--set",
        "query.max_duration_below_service=true",
        "--set",
        "runs.max_attempts=4",
    ];
    let _w = worker(&env, &settings);
    let (run_id, _) = run_wait(&env, &["--orgs", "100"]);
    let shown = ctl(&env, &["runs", "show", &run_id, "--all"]);
    let queries = fake.stats_now()["queries_by_org"].clone();
    let tries = |org: u64| queries[org.to_string()].as_u64().unwrap_or(0);
    for (org, outcome, kind) in reasons(&shown) {
        let ran_out = tries(org) == 4 && ["server_error", "timeout"].contains(&kind.as_str());
        assert!(kind == "malformed_body" || ran_out, "org {org} ended {outcome} ({kind}) after {} tries", tries(org));
    }
    let retried: Vec<u64> = (1..=100).filter(|o| tries(*o) > 1).collect();
    assert!(retried.len() >= 20, "about 40 % of first tries fail in a way that may pass: {queries}");
    assert!((1..=100).all(|o| tries(o) <= 4), "never more than runs.max_attempts tries: {queries}");
    let completed = shown["outcomes"]["completed"].as_u64().unwrap_or(0);
    // Per try: 50 % succeed, 40 % fail in a way that may pass, 10 % are malformed: about 81 of
    // 100 complete on average; the bound is 4 standard deviations below.
    assert!(completed >= 65, "{shown}");
    // The trail of an org that completed after retries lists every earlier try: how it ended
    // and the wait before the next.
    let completed_after_retries = retried
        .iter()
        .filter(|o| !reasons(&shown).iter().any(|(n, _, _)| n == *o))
        .max_by_key(|o| tries(**o))
        .expect("a retried org completed");
    let org = *completed_after_retries;
    let why = ctl(&env, &["explain", &run_id, &org.to_string()]);
    let steps = why["attempts"][0]["steps"].as_array().cloned().unwrap_or_default();
    let rescheduled = steps.iter().find(|s| s["step"] == "rescheduled").cloned().unwrap_or_else(|| panic!("no rescheduled step: {why}"));
    let earlier = rescheduled["tries"].as_array().cloned().unwrap_or_default();
    assert_eq!(earlier.len() as u64, tries(org) - 1, "one entry per earlier try of org {org}: {why}");
    for t in &earlier {
        let t = t.as_str().unwrap_or_default();
        assert!(t.starts_with("server_error") || t.starts_with("timeout"), "{why}");
        assert!(t.contains("tried again after"), "each try names its backoff: {why}");
    }
    let text =
        projector_tests::fleet::text(&projector_tests::fleet::run("projectorctl", &env, &["explain", &run_id, &org.to_string()]).stdout);
    assert!(text.contains("try 1:"), "explain prints each try: {text}");
}

/// A scheduler ticking every second against runs that take several: under each
/// `schedule.overlap`, at most one run is ever open; `skip` records the skipped ticks in `runs
/// list`, `replace` cancels the open run, `queue` fans out a tick once the open run has ended.
#[test]
fn overlapping_ticks_follow_schedule_overlap_and_open_runs_stay_bounded() {
    for (mode, expect) in [("skip", "skipped"), ("replace", "cancelled"), ("queue", "queued")] {
        let redis = RedisServer::start();
        let fake = FakeSnuba::start(FAKE, &["--latency", "700ms"]);
        let env = base_env(&redis, &fake.url());
        let _w = worker(&env, &["--concurrency", "2"]);
        let mut cmd = projector_tests::command(projector_tests::workspace_bin("projector-scheduler"));
        cmd.args(["serve", "--orgs", "6", "--batch-delay", "0s", "--set", "schedule.cron=* * * * * *", "--set"])
            .arg(format!("schedule.overlap={mode}"))
            .envs(env.iter().cloned())
            .stdout(std::process::Stdio::null());
        let serve = Proc::spawn(cmd);
        let mut most_open = 0;
        let mut runs = Value::Null;
        let seen = projector_tests::holds_within(Duration::from_secs(40), || {
            runs = ctl(&env, &["runs", "list", "--limit", "50"]);
            let list = runs["runs"].as_array().cloned().unwrap_or_default();
            let open = list.iter().filter(|r| ["running", "fanning out"].contains(&r["state"].as_str().unwrap_or_default())).count();
            most_open = most_open.max(open);
            match expect {
                "skipped" => list.iter().filter(|r| r["state"] == "skipped").count() >= 3,
                "cancelled" => list.iter().filter(|r| r["state"] == "cancelled").count() >= 2,
                _ => list.iter().filter(|r| r["state"] == "done").count() >= 2,
            }
        });
        assert!(seen, "{mode}: {runs}\n{}", serve.stderr());
        assert!(most_open <= 1, "{mode}: at most one run open at a time, saw {most_open}: {runs}");
        if mode == "skip" {
            let skipped = runs["runs"].as_array().and_then(|l| l.iter().find(|r| r["state"] == "skipped").cloned()).expect("skipped");
            assert!(skipped["skipped"].as_str().is_some_and(|w| w.contains("still open")), "{skipped}");
        }
        if mode == "queue" {
            serve.wait_for_line(&["the queued tick fans out"], Duration::from_secs(5));
        }
    }
}

/// Waits until the run records one completed org per query the service saw: the queries in
/// flight when its deadline passed end completed (they replace `deadline`), a moment later.
fn every_query_answered_is_completed(env: &[(String, String)], fake: &FakeSnuba, run_id: &str) {
    projector_tests::wait_until(Duration::from_secs(10), "the queries in flight at the deadline are recorded", || {
        ctl(env, &["runs", "show", run_id])["outcomes"]["completed"].as_u64().unwrap_or(0)
            == fake.stats_now()["requests"].as_u64().unwrap_or(0)
    });
}

/// A run given a deadline it cannot meet (20 orgs of 1 s queries, two at a time, 3 s): when the
/// deadline passes, its open orgs end `deadline` and send no query, while the orgs already
/// querying then end as their query did (`completed`): every query the service answered is a
/// completed org, and `runs retry` queries none of them again. The next run is unaffected.
#[test]
fn a_run_past_its_deadline_ends_its_open_orgs_and_the_next_run_is_unaffected() {
    let redis = RedisServer::start();
    let fake = FakeSnuba::start(FAKE, &["--latency", "1s"]);
    let env = base_env(&redis, &fake.url());
    let _w = worker(&env, &["--concurrency", "2"]);
    let (run_id, _) = run_wait(&env, &["--orgs", "20", "--deadline", "3s"]);
    let shown = ctl(&env, &["runs", "show", &run_id, "--all"]);
    let kinds = reasons(&shown);
    let ended_at_deadline = kinds.iter().filter(|(_, o, k)| o == "deadline" && k == "deadline").count();
    assert!(ended_at_deadline >= 10, "{shown}");
    assert_eq!(shown["outcomes"]["deadline"].as_u64(), Some(ended_at_deadline as u64), "counted apart: {shown}");
    assert!(kinds.iter().all(|(_, o, _)| o == "deadline"), "every org that did not complete ended at the deadline: {kinds:?}");
    let completed = shown["outcomes"]["completed"].as_u64().unwrap_or(0);
    // The two in flight when the deadline passed were answered and stored: completed, not
    // "not run". Nothing of the run was sent after the deadline.
    every_query_answered_is_completed(&env, &fake, &run_id);
    let shown = ctl(&env, &["runs", "show", &run_id, "--all"]);
    let completed_now = shown["outcomes"]["completed"].as_u64().unwrap_or(0);
    assert!(completed_now >= completed, "{shown}");
    let retried = ctl(&env, &["runs", "retry", &run_id]);
    let reopened: Vec<u64> = retried["reopened"].as_array().map(|r| r.iter().filter_map(|p| p[0].as_u64()).collect()).unwrap_or_default();
    assert_eq!(reopened.len() as u64, 20 - completed_now, "runs retry reopens only what was not completed: {retried}");
    let (next, _) = run_wait(&env, &["--orgs", "4"]);
    assert_eq!(ctl(&env, &["runs", "show", &next])["outcomes"]["completed"], 4);
}

/// A run cut by its deadline cuts its last batches. The next run puts the orgs that did not
/// complete first, so the same orgs do not go last, and get cut, run after run.
#[test]
fn the_orgs_a_cut_run_left_out_go_first_in_the_next_run() {
    let redis = RedisServer::start();
    let fake = FakeSnuba::start(FAKE, &["--latency", "1s"]);
    let env = base_env(&redis, &fake.url());
    let _w = worker(&env, &["--concurrency", "2"]);
    let (cut, _) = run_wait(&env, &["--orgs", "20", "--deadline", "3s", "--set", "batch.size=5"]);
    // The queries in flight at the deadline end completed: read the record once they have.
    every_query_answered_is_completed(&env, &fake, &cut);
    let shown = ctl(&env, &["runs", "show", &cut, "--all"]);
    let left_out: Vec<u64> = reasons(&shown).into_iter().map(|(org, _, _)| org).collect();
    assert!(left_out.len() >= 10 && left_out.contains(&20), "the deadline cut the last orgs: {left_out:?}");
    let dry = run("projector-scheduler", &env, &["run-once", "--orgs", "20", "--set", "batch.size=5", "--dry-run"]);
    let plan = text(&dry.stdout);
    let order: Vec<u64> = plan
        .lines()
        .filter_map(|l| l.split("orgs ").nth(1))
        .filter_map(|rest| rest.split_whitespace().next())
        .flat_map(|list| list.split(',').filter_map(|o| o.parse().ok()).collect::<Vec<u64>>())
        .collect();
    assert_eq!(order.len(), 20, "{plan}");
    assert_eq!(
        order[..left_out.len()].iter().copied().collect::<std::collections::BTreeSet<_>>(),
        left_out.iter().copied().collect(),
        "{plan}"
    );
    assert!(order.iter().position(|o| *o == 20).is_some_and(|p| p < left_out.len()), "org 20, last before, is early now: {plan}");
}

/// Snuba reads integers as Python's `int`: the largest org id there is, sent as Projector sends
/// any, is a query like the others, and its org completes.
#[test]
fn the_largest_org_id_is_queried_like_any_other() {
    let redis = RedisServer::start();
    let fake = FakeSnuba::start(FAKE, &["--latency", "1ms"]);
    let dir = tempfile::tempdir().expect("tempdir");
    let orgs = dir.path().join("orgs.jsonl");
    std::fs::write(&orgs, format!("{{\"org_id\": {}, \"project_ids\": [1]}}\n{{\"org_id\": 7}}\n", u64::MAX)).expect("write");
    let mut env = base_env(&redis, &fake.url());
    env.push(("PROJECTOR_ORGS_SOURCE".into(), "file".into()));
    env.push(("PROJECTOR_ORGS_PATH".into(), orgs.display().to_string()));
    let _w = worker(&env, &["--concurrency", "2"]);
    let (run_id, _) = run_wait(&env, &[]);
    let shown = ctl(&env, &["runs", "show", &run_id]);
    assert_eq!(shown["outcomes"]["completed"], 2, "{shown}");
    assert_eq!(fake.stats_now()["invalid_queries"], 0);
}

/// Capacity drops from 100 to 20 mid-run (`POST /config`): the next answers carry the lower
/// limit and cap the fleet at once; the orgs refused meanwhile wait and are tried again, so every
/// org completes and the 429s stay a small share.
#[test]
fn when_capacity_drops_mid_run_the_fleet_follows_and_every_org_completes() {
    let redis = RedisServer::start();
    let fake = FakeSnuba::start(FAKE, &["--latency", "100ms", "--concurrency-limit", "100"]);
    let env = base_env(&redis, &fake.url());
    let _workers: Vec<Proc> = (0..2).map(|_| worker(&env, &["--concurrency", "64", "--set", "slots.max_wait=5m"])).collect();
    let out = run("projector-scheduler", &env, &["run-once", "--orgs", "2000", "--batch-delay", "0s"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let run_id = text(&out.stdout).split_whitespace().nth(1).map(|r| r.trim_end_matches(':').to_owned()).expect("run id");
    projector_tests::wait_until(Duration::from_secs(60), "a fifth of the run is done", || {
        ctl(&env, &["runs", "show", &run_id])["outcomes"]["completed"].as_u64().unwrap_or(0) >= 400
    });
    let set = tokio::runtime::Runtime::new().expect("runtime").block_on(async {
        let body = serde_json::json!({"concurrency_limit": 20});
        reqwest::Client::new().post(format!("{}/config", fake.url())).json(&body).send().await.expect("post").status()
    });
    assert_eq!(set, 200);
    projector_tests::wait_until(Duration::from_secs(120), "the run ends", || ctl(&env, &["runs", "show", &run_id])["state"] == "done");
    let shown = ctl(&env, &["runs", "show", &run_id]);
    let refused = fake.stats_now()["rejected_429"].as_u64().unwrap_or(0);
    eprintln!("capacity 100 -> 20 mid-run: {refused} 429s of 2,000 orgs");
    assert_eq!(shown["outcomes"]["completed"], 2000, "{shown}");
    assert!(refused <= 40, "at most 2 % of orgs met a 429: {refused}");
}

/// A service that gives no numbers (a gateway strips `quota_allowance`): AIMD alone brings the
/// fleet under the fake's 30 from slots.limit 50, cutting the moment a window's 429 ratio
/// crosses the bound; refused orgs wait and are tried again, so every org completes.
#[test]
fn without_the_services_numbers_aimd_brings_the_fleet_under_it_and_every_org_completes() {
    let redis = RedisServer::start();
    let fake = FakeSnuba::start(FAKE, &["--latency", "100ms", "--concurrency-limit", "30", "--no-quota-details"]);
    let env = base_env(&redis, &fake.url());
    let settings = ["--concurrency", "60", "--set", "slots.max_wait=5m", "--set", "adaptive.enabled=true", "--set", "adaptive.window=1s"];
    let _workers: Vec<Proc> = (0..2).map(|_| worker(&env, &settings)).collect();
    let (run_id, _) = run_wait_for(&env, "300s", &["--orgs", "2000"]);
    let shown = ctl(&env, &["runs", "show", &run_id]);
    let refused = fake.stats_now()["rejected_429"].as_u64().unwrap_or(0);
    eprintln!("no quota details, AIMD: {refused} 429s of 2,000 orgs");
    assert_eq!(shown["outcomes"]["completed"], 2000, "{shown}");
    assert!(refused <= 200, "at most 10 % of orgs met a 429: {refused}");
}

/// The embedded run against a service that admits 8 queries for the referrer, far below
/// `slots.limit` (50): the first answer caps the run's limit at 8 less `slots.service_margin`
/// (2), and the orgs the service refused before that go back to the in-memory queue after a
/// backoff and complete, as a worker's go back to Redis. No org ends `rate_limited`.
#[test]
fn an_embedded_run_follows_a_service_with_less_room_and_tries_its_refusals_again() {
    // A second per query: the first wave's 40 starts reach the service within it even on a
    // loaded machine, so some are refused before any answer has come back.
    let fake = FakeSnuba::start(FAKE, &["--latency", "1s", "--concurrency-limit", "8"]);
    let dir = tempfile::tempdir().expect("tempdir");
    let summary = dir.path().join("s.json");
    let env = [("PROJECTOR_QUERY_SOURCE".to_owned(), "snuba".to_owned()), ("PROJECTOR_QUERY_URL".to_owned(), fake.url())];
    let summary_arg = summary.display().to_string();
    let args = ["run-once", "--embedded", "--orgs", "40", "--batch-delay", "0s", "--summary-json", &summary_arg];
    let out = run("projector-scheduler", &env, &args);
    let log = text(&out.stderr);
    assert!(out.status.success(), "every org completes: {}\n{log}", text(&out.stdout));
    let s: Value = serde_json::from_str(&std::fs::read_to_string(&summary).expect("summary")).expect("JSON");
    assert_eq!((s["completed"].as_u64(), s["rate_limited"].as_u64()), (Some(40), Some(0)), "{s}");
    let stats = fake.stats_now();
    assert!(stats["rejected_429"].as_u64().is_some_and(|n| n > 0), "the first wave outran the service: {stats}");
    assert!(stats["queries_by_org"].as_object().is_some_and(|o| o.len() == 40), "every org was answered: {stats}");
    let capped = log.lines().find(|l| l.contains("the query service's numbers cap the slot limit")).unwrap_or_default();
    assert!(capped.contains("cap=6 "), "8 admitted, less the margin of 2: {capped:?}\n{log}");
}

/// The alert behind "other callers", evaluated by a real Prometheus from `ops/alerts.yml` while
/// it scrapes the demo's fleet (two workers with default settings, a service answering in
/// 50 ± 20 ms) through three runs: alone on the referrer, the alert's expression is never true,
/// so it never even goes pending; with 75 queries of another caller in the background, it does,
/// and the fleet still runs within the room the others leave it.
#[test]
fn the_other_callers_alert_stays_quiet_under_the_demos_load_and_goes_pending_with_a_real_background() {
    let rules = projector_tests::manifest_path("../ops/alerts.yml");
    for background in ["0", "75"] {
        let redis = RedisServer::start();
        let fake = FakeSnuba::start(FAKE, &["--latency", "50ms", "--jitter", "20ms", "--background", background]);
        let env = base_env(&redis, &fake.url());
        let workers: Vec<Proc> = (0..2).map(|_| worker(&env, &[])).collect();
        let targets: Vec<String> = workers.iter().map(metrics_addr).collect();
        let prometheus = projector_tests::prometheus::Prometheus::start(&targets, &rules);
        for _ in 0..3 {
            run_wait(&env, &["--orgs", "1000"]);
        }
        // Prometheus has scraped the gauge at least five times per worker, and the rules were
        // evaluated after that: what the alert would do is known.
        let scraped = || {
            prometheus
                .query("sum(count_over_time(projector_service_other_callers[10m]))")
                .first()
                .and_then(|s| s["value"][1].as_str()?.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        projector_tests::wait_until(Duration::from_secs(60), "ten samples of the gauge", || scraped() >= 10.0);
        let pending = |p: &projector_tests::prometheus::Prometheus| {
            p.query("count_over_time(ALERTS{alertname=\"ProjectorReferrerSharedWithOtherCallers\"}[10m])").len()
        };
        if background == "0" {
            let peak = prometheus.query("max(max_over_time(projector_service_other_callers[10m]))");
            let now = prometheus.query("vector(time())");
            let rules_ran_after = now[0]["value"][0].as_f64().expect("Prometheus's time");
            projector_tests::wait_until(Duration::from_secs(30), "the rules are evaluated after the last scrape", || {
                prometheus.query("max(timestamp(projector_service_other_callers))")[0]["value"][1]
                    .as_str()
                    .and_then(|v| v.parse::<f64>().ok())
                    .is_some_and(|t| t > rules_ran_after + 2.0)
            });
            assert_eq!(pending(&prometheus), 0, "alone on the referrer: never pending; the gauge peaked at {peak:?}");
            assert!(
                prometheus.alerts().iter().all(|a| a["labels"]["alertname"] != "ProjectorReferrerSharedWithOtherCallers"),
                "{:?}",
                prometheus.alerts()
            );
        } else {
            projector_tests::wait_until(Duration::from_secs(30), "the alert goes pending with a background of 75", || {
                pending(&prometheus) > 0
            });
            // 75 others are past the throttle point (66): keeping under it would leave the fleet
            // one slot and a 1,000-org run would take minutes. A throttled query still runs, so
            // the fleet keeps at least half its room to refusal (100 - 75 - margin).
            let status = ctl(&env, &["status"]);
            let in_force = status["limit"]["in_force"].as_u64().unwrap_or(0);
            assert!((8..=25).contains(&in_force), "the limit in force is half the room or more, never over it: {status}");
        }
        drop(workers);
    }
}
