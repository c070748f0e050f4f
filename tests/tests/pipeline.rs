//! The distributed pipeline as it runs in production, with real processes only: `redis-server`,
//! `projector-fake-snuba`, several `projector-worker`s and `projector-scheduler`.

use std::process::{Output, Stdio};
use std::time::Duration;

use projector_shared::OrgId;
use projector_shared::rollout::Rollout;
use projector_shared::slots::{RedisSlotLimiter, RedisSlotSettings};
use projector_tests::fleet::{base_env, metrics_addr, worker};
use projector_tests::{FakeSnuba, Proc, RedisServer, command, wait_until, wait_until_or, workspace_bin};

const FAKE: &str = env!("CARGO_BIN_EXE_projector-fake-snuba");

/// Environment every Projector process of a test shares.
fn env(redis: &RedisServer, fake: &FakeSnuba) -> Vec<(String, String)> {
    base_env(redis, &fake.url())
}

fn scheduler(env: &[(String, String)], args: &[&str]) -> Output {
    command(workspace_bin("projector-scheduler")).args(args).envs(env.iter().cloned()).output().expect("run projector-scheduler")
}

/// GET a path of a worker's HTTP endpoint: (status, body).
fn get(addr: &str, path: &str) -> (u16, String) {
    let url = format!("http://{addr}{path}");
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime").block_on(async {
            let r = reqwest::get(url).await.expect("GET");
            (r.status().as_u16(), r.text().await.expect("body"))
        })
    })
    .join()
    .expect("http thread")
}

fn summary(path: &std::path::Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).expect("summary written")).expect("summary JSON")
}

use projector_tests::runtime;

/// Runs `orgs` orgs through `run-once --wait` (no batch delay, every outcome accepted) and returns
/// the summary, written to `dir/name`.
fn run_orgs(env: &[(String, String)], dir: &std::path::Path, name: &str, orgs: u32) -> serde_json::Value {
    run_orgs_with(env, dir, name, orgs, &[])
}

/// [`run_orgs`] with more `run-once` flags.
fn run_orgs_with(env: &[(String, String)], dir: &std::path::Path, name: &str, orgs: u32, extra: &[&str]) -> serde_json::Value {
    let path = dir.join(name);
    let orgs = orgs.to_string();
    let mut args = vec![
        "run-once",
        "--wait",
        "--wait-timeout",
        "120s",
        "--fail-on",
        "none",
        "--orgs",
        &orgs,
        "--batch-delay",
        "0s",
        "--summary-json",
        path.to_str().expect("utf-8"),
    ];
    args.extend_from_slice(extra);
    let out = scheduler(env, &args);
    assert!(out.status.success(), "run-once failed: {}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    summary(&path)
}

/// 3 workers × 64 jobs in flight = 192 would-be concurrent queries (the incident had 159) against
/// a per-referrer limit of 100: with slots.limit 50 the fake never sees more than 50 at once.
/// The same run with the rollout flag off for everyone reproduces the 429s.
#[test]
fn the_incident_prevented_and_reproduced_with_the_flag_off() {
    let redis = RedisServer::start();
    let fake = FakeSnuba::start(FAKE, &["--concurrency-limit", "100", "--latency", "1s"]);
    let env = env(&redis, &fake);
    let _workers: Vec<_> =
        (0..3).map(|_| worker(&env, &["--concurrency", "64", "--slots-limit", "50", "--slots-max-wait", "5m"])).collect();
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = runtime();

    let limited = run_orgs(&env, dir.path(), "limited.json", 500);
    let stats = rt.block_on(fake.stats());
    assert_eq!(limited["orgs_total"], 500, "{limited}");
    assert_eq!(limited["completed"], 500, "every org completed: {limited}");
    assert!(stats["max_in_flight"].as_u64().unwrap_or(u64::MAX) <= 50, "the slot bound held at the query service: {stats}");
    assert!(stats["max_in_flight"].as_u64().unwrap_or(0) >= 40, "the slots were actually used: {stats}");
    assert_eq!(stats["rejected_429"], 0, "{stats}");

    // Control: the legacy path for everyone, as before the fix.
    rt.block_on(async {
        let mut conn = redis::Client::open(redis.url()).expect("client").get_multiplexed_async_connection().await.expect("conn");
        Rollout { enabled: Some(false), ..Rollout::default() }.save(&mut conn).await.expect("flag off");
        reqwest::Client::new().post(format!("{}/stats/reset", fake.url())).send().await.expect("reset");
    });
    // Workers re-read the flag every 100 ms here (worker.rollout_refresh): the run's first jobs
    // may still take the limited path, which the assertions below allow.
    let legacy = run_orgs(&env, dir.path(), "legacy.json", 500);
    let stats = rt.block_on(fake.stats());
    assert_eq!(legacy["orgs_total"], 500, "{legacy}");
    assert!(stats["rejected_429"].as_u64().unwrap_or(0) > 0, "without slots the query service refuses queries: {stats}");
    assert!(legacy["rate_limited"].as_u64().unwrap_or(0) > 0, "and the run records them as rate_limited: {legacy}");
    let accounted: u64 = ["completed", "skipped_no_slot", "rate_limited", "failed", "slot_unavailable"]
        .iter()
        .map(|k| legacy[*k].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(accounted, 500, "every org accounted for: {legacy}");
}

#[test]
fn a_killed_worker_loses_no_org_and_the_bound_still_holds() {
    let redis = RedisServer::start();
    let fake = FakeSnuba::start(FAKE, &["--latency", "300ms"]);
    let env = env(&redis, &fake);
    let slot_args = ["--slots-limit", "20", "--set", "slots.lease_ttl=2s", "--concurrency", "32"];
    let victim = worker(&env, &slot_args);
    let _survivor = worker(&env, &slot_args);
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("s.json");
    let mut run = command(workspace_bin("projector-scheduler"));
    run.args(["run-once", "--wait", "--wait-timeout", "120s", "--orgs", "200", "--batch-delay", "0s", "--summary-json"])
        .arg(&path)
        .envs(env.iter().cloned())
        .stdout(Stdio::null());
    let run = Proc::spawn(run);
    // Kill -9 one worker while it holds slots and jobs: once the victim has queries in flight.
    wait_until(Duration::from_secs(60), "the victim holds slots", || {
        let held = projector_tests::sample(&projector_tests::scrape(&metrics_addr(&victim)), "spike_projection_concurrent_queries");
        held.unwrap_or(0.0) >= 1.0
    });
    drop(victim);
    let out = run.wait_with_output(Duration::from_secs(150));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let s = summary(&path);
    assert_eq!(s["completed"], 200, "the killed worker's jobs were taken over: {s}");
    let stats = runtime().block_on(fake.stats());
    assert!(stats["max_in_flight"].as_u64().unwrap_or(u64::MAX) <= 20, "{stats}");
}

#[test]
fn two_schedulers_on_the_same_tick_fan_out_once() {
    let redis = RedisServer::start();
    let fake = FakeSnuba::start(FAKE, &[]);
    let env = env(&redis, &fake);
    let serve = |env: &[(String, String)]| {
        let mut cmd = command(workspace_bin("projector-scheduler"));
        // No worker runs the jobs, so every run stays open: "replace" lets each tick fan out.
        cmd.args(["serve", "--orgs", "20", "--set", "schedule.cron=*/2 * * * * *", "--set", "schedule.overlap=replace"])
            .envs(env.iter().cloned())
            .stdout(Stdio::null());
        Proc::spawn(cmd)
    };
    let replicas = [serve(&env), serve(&env)];
    // Per tick, each replica logs either "tick fanned out" or "another … fans out this tick".
    // Three ticks each: a replica that started just after a tick boundary misses that tick, so
    // three lines each leave at least two ticks that both replicas saw.
    replicas[0].wait_for_lines(&["tick", "run_id="], 3, Duration::from_secs(60));
    replicas[1].wait_for_lines(&["tick", "run_id="], 3, Duration::from_secs(60));
    let logs: Vec<String> = replicas.iter().map(Proc::stderr).collect();
    drop(replicas);
    let run_of = |line: &str| line.split("run_id=").nth(1).and_then(|r| r.split_whitespace().next()).map(str::to_owned);
    let fanned: Vec<String> = logs.iter().flat_map(|l| l.lines()).filter(|l| l.contains("tick fanned out")).filter_map(run_of).collect();
    let stood_aside: Vec<String> =
        logs.iter().flat_map(|l| l.lines()).filter(|l| l.contains("another scheduler replica")).filter_map(run_of).collect();
    // Every tick both replicas saw (at least two) was fanned out by exactly one of them.
    let ticks_of = |log: &String| -> Vec<String> { log.lines().filter(|l| l.contains("tick")).filter_map(run_of).take(3).collect() };
    let (seen_by_0, seen_by_1) = (ticks_of(&logs[0]), ticks_of(&logs[1]));
    let both_saw: Vec<&String> = seen_by_0.iter().filter(|r| seen_by_1.contains(r)).collect();
    assert!(both_saw.len() >= 2, "both replicas saw at least two of the same ticks: {logs:?}");
    for run in both_saw {
        let by = fanned.iter().filter(|r| *r == run).count();
        assert_eq!(by, 1, "tick {run} fanned out by exactly one replica: {logs:?}");
        assert!(stood_aside.contains(run), "the other replica stood aside for {run}: {logs:?}");
    }
    let mut conn = redis.connection();
    let config = projector_queue::config(projector_shared::keys::KeyLayout::Server);
    let jobs: u64 = redis::cmd("HLEN").arg(config.job_data_hash()).query(&mut conn).expect("hlen");
    // A replica killed between its enqueue and its log line leaves 20 more jobs than lines.
    assert!(
        jobs >= 20 * fanned.len() as u64 && jobs.is_multiple_of(20),
        "one fan-out of 20 jobs per tick ({jobs} jobs, {} ticks)",
        fanned.len()
    );
}

#[test]
fn dry_run_prints_the_plan_with_rollout_routing_and_enqueues_nothing() {
    let redis = RedisServer::start();
    let fake = FakeSnuba::start(FAKE, &[]);
    let env = env(&redis, &fake);
    let rollout = Rollout { percentage: Some(50), deny: [OrgId(3)].into(), ..Rollout::default() };
    // Set through the operator CLI, as on-call would.
    let ctl = command(workspace_bin("projectorctl"))
        .args(["flag", "set", "--percentage", "50", "--deny", "3", "--yes"])
        .envs(env.iter().cloned())
        .output()
        .expect("projectorctl");
    assert!(ctl.status.success(), "{}", String::from_utf8_lossy(&ctl.stderr));
    assert!(String::from_utf8_lossy(&ctl.stdout).contains("percentage: 50"), "{}", String::from_utf8_lossy(&ctl.stdout));
    // A file source with a bad line and an inactive org.
    let dir = tempfile::tempdir().expect("tempdir");
    let orgs = dir.path().join("orgs.jsonl");
    let mut lines: Vec<String> = (1..=30).map(|o| format!(r#"{{"org_id": {o}, "project_ids": [{o}01], "active": true}}"#)).collect();
    lines.insert(4, "{not json".into());
    lines.push(r#"{"org_id": 99, "project_ids": [9901], "active": false}"#.into());
    std::fs::write(&orgs, lines.join("\n")).expect("write orgs");
    let out = scheduler(
        &env,
        &["run-once", "--dry-run", "--batch-size", "10", "--set", "orgs.source=file", "--set", &format!("orgs.path={}", orgs.display())],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("line skipped") && log.contains("line=5"), "the bad line is reported by number: {log}");
    assert!(text.contains("30 orgs in 3 batches"), "{text}");
    let planned: Vec<u64> = text
        .lines()
        .filter_map(|l| l.split("  orgs ").nth(1))
        .flat_map(|rest| rest.split_whitespace().next().unwrap_or_default().split(',').map(|o| o.parse::<u64>().expect("org id")))
        .collect();
    assert_eq!(planned, (1..=30).collect::<Vec<_>>(), "every active org planned once, the inactive org 99 left out: {text}");
    let legacy: Vec<u64> = (1..=30).filter(|o| !rollout.is_limited(OrgId(*o))).collect();
    assert!(legacy.contains(&3));
    let expected = format!("{} orgs on the limited path (slot first), {} on the legacy path", 30 - legacy.len(), legacy.len());
    assert!(text.contains(&expected), "{text}");
    let mut conn = redis.connection();
    let jobs: u64 = redis::cmd("HLEN")
        .arg(projector_queue::config(projector_shared::keys::KeyLayout::Server).job_data_hash())
        .query(&mut conn)
        .expect("hlen");
    assert_eq!(jobs, 0, "a dry run enqueues nothing");
}

#[test]
fn sigterm_drains_in_flight_jobs_releases_slots_and_exits_0() {
    let redis = RedisServer::start();
    let fake = FakeSnuba::start(FAKE, &["--latency", "3s"]);
    let env = env(&redis, &fake);
    let w = worker(&env, &["--concurrency", "8", "--set", "worker.shutdown_grace=30s"]);
    let out = scheduler(&env, &["run-once", "--orgs", "8", "--batch-delay", "0s"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // SIGTERM once all 8 jobs have started their query (fetching 8 jobs can take longer than
    // one query on a loaded machine, so "some query started" is not enough).
    let rt = runtime();
    wait_until(Duration::from_secs(60), "all 8 queries started", || fake.stats_now()["requests"].as_u64().unwrap_or(0) >= 8);
    w.signal("TERM");
    let out = w.wait_with_output(Duration::from_secs(60));
    assert!(out.status.success(), "exit 0 after SIGTERM: {:?}", out.status);
    let stats = rt.block_on(fake.stats());
    assert_eq!(stats["in_flight"], 0, "in-flight queries finished before exit: {stats}");
    let state = rt
        .block_on(async {
            let settings = projector_shared::slots::RedisSlotSettings::new(50, Duration::from_secs(30));
            projector_shared::slots::RedisSlotLimiter::new(redis.url(), settings).expect("limiter").inspect().await
        })
        .expect("inspect");
    assert!(state.holders.is_empty(), "every slot released: {state:?}");
    let mut conn = redis.connection();
    let run_keys: Vec<String> = redis::cmd("KEYS").arg("projector:run:*:orgs").query(&mut conn).expect("keys");
    let outcomes: std::collections::HashMap<u64, String> = redis::cmd("HGETALL").arg(&run_keys[0]).query(&mut conn).expect("hgetall");
    assert_eq!(outcomes.len(), 8, "the drained jobs finished and recorded their outcomes: {outcomes:?}");
    assert!(outcomes.values().all(|o| o == "completed"), "{outcomes:?}");
}

#[test]
fn a_malformed_job_is_counted_as_failed_and_the_worker_goes_on() {
    let redis = RedisServer::start();
    let fake = FakeSnuba::start(FAKE, &["--latency", "10ms"]);
    let env = env(&redis, &fake);
    let w = worker(&env, &[]);
    // A job whose org id is readable but whose other fields are not.
    runtime().block_on(async {
        let (_, mut conn) = projector_shared::redis_conn::connection_manager(redis.url(), Duration::from_secs(2)).expect("conn");
        // Its run exists and plans org 7: the run must account for the malformed job.
        let records = projector_shared::run_record::RunRecords::new(conn.clone(), Duration::from_secs(7 * 86_400));
        let run = projector_shared::RunId("run-bad".into());
        records.create(&run, chrono::Utc::now(), 1).await.expect("create");
        records.store_plan(&run, &[(OrgId(7), vec![])]).await.expect("plan");
        let bad = serde_json::json!({"run_id": "run-bad", "org_id": 7, "scheduled_at": "yesterday"});
        let task = apalis::prelude::TaskBuilder::new(serde_json::to_vec(&bad).expect("json")).build();
        // And one that is not even JSON: apalis-redis fails the whole fetch on it.
        let garbage = apalis::prelude::TaskBuilder::new(b"not json at all".to_vec()).build();
        apalis_redis::queries::push_tasks(&mut conn, &projector_queue::config(projector_shared::keys::KeyLayout::Server), &[task, garbage])
            .await
            .expect("push");
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("s.json");
    let out = scheduler(
        &env,
        &[
            "run-once",
            "--wait",
            "--wait-timeout",
            "60s",
            "--orgs",
            "5",
            "--batch-delay",
            "0s",
            "--summary-json",
            path.to_str().expect("utf-8"),
        ],
    );
    assert!(out.status.success(), "the worker went on after the bad job: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(summary(&path)["completed"], 5);
    let mut conn = redis.connection();
    // Jobs are not taken in push order: the bad ones may still be in hand when the new run ends.
    let config = projector_queue::config(projector_shared::keys::KeyLayout::Server);
    let mut outcome: Option<String> = None;
    let mut dead: Vec<String> = Vec::new();
    wait_until_or(
        Duration::from_secs(30),
        || {
            outcome = redis::cmd("HGET").arg("projector:run:run-bad:orgs").arg(7).query(&mut conn).expect("hget");
            dead = redis::cmd("SMEMBERS").arg(config.dead_jobs_set()).query(&mut conn).expect("smembers");
            outcome.is_some() && !dead.is_empty()
        },
        || format!("the bad jobs were not both handled: {}", w.stderr()),
    );
    assert_eq!(outcome.as_deref(), Some("failed"), "the malformed job is accounted for in its run");
    assert_eq!(dead.len(), 1, "the non-JSON job was moved to the dead set: {dead:?}");
    let data: String = redis::cmd("HGET").arg(config.job_data_hash()).arg(&dead[0]).query(&mut conn).expect("hget");
    assert_eq!(data, "not json at all");
    drop(w);
}

#[test]
fn a_worker_survives_a_redis_restart() {
    let mut redis = RedisServer::start();
    let fake = FakeSnuba::start(FAKE, &["--latency", "10ms"]);
    let env = env(&redis, &fake);
    let mut w = worker(&env, &[]);
    let addr = metrics_addr(&w);
    wait_until(Duration::from_secs(30), "the worker is ready", || get(&addr, "/readyz").0 == 200);
    redis.kill();
    // Not ready while Redis is gone, but alive: the job loop restarts with backoff.
    wait_until(Duration::from_secs(30), "/readyz reports Redis gone", || get(&addr, "/readyz").0 == 503);
    w.wait_for_line(&["job loop failed"], Duration::from_secs(30));
    assert_eq!(get(&addr, "/healthz"), (200, "ok".to_owned()), "liveness holds while Redis is down");
    assert!(w.is_running(), "the worker is still running while Redis is down");
    redis.restart();
    wait_until(Duration::from_secs(60), "the worker is ready again", || get(&addr, "/readyz").0 == 200);
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("s.json");
    let out = scheduler(
        &env,
        &[
            "run-once",
            "--wait",
            "--wait-timeout",
            "60s",
            "--orgs",
            "10",
            "--batch-delay",
            "0s",
            "--summary-json",
            path.to_str().expect("utf-8"),
        ],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(summary(&path)["completed"], 10, "the same worker served the run after the restart");
    drop(w);
}

/// After a worker outage during a big run, more jobs are due at once than apalis-redis's fetch can
/// move in one script call; workers must still drain the backlog.
#[test]
fn a_backlog_of_10000_due_jobs_is_drained_after_a_worker_outage() {
    let redis = RedisServer::start();
    let fake = FakeSnuba::start(FAKE, &["--latency", "1ms"]);
    let env = env(&redis, &fake);
    let out = scheduler(&env, &["run-once", "--orgs", "10000", "--batch-delay", "0s"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // No worker until every job is due (the fan-out spreads them over 3 s), on Redis's clock.
    let mut conn = redis.connection();
    let scheduled = projector_queue::config(projector_shared::keys::KeyLayout::Server).scheduled_jobs_set();
    wait_until(Duration::from_secs(30), "every job is due", || {
        let last: Vec<(String, f64)> =
            redis::cmd("ZRANGE").arg(&scheduled).arg(-1).arg(-1).arg("WITHSCORES").query(&mut conn).expect("zrange");
        let (now, _): (u64, u64) = redis::cmd("TIME").query(&mut conn).expect("time");
        last.first().is_some_and(|(_, due)| *due <= now as f64)
    });
    let w = worker(&env, &["--concurrency", "64", "--set", "sink.kind=discard"]);
    // "run <run_id>: 10000 jobs enqueued, …"
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let run_id = stdout.split_whitespace().nth(1).map(|r| r.trim_end_matches(':')).expect("run id on stdout");
    let orgs_key = format!("projector:run:{run_id}:orgs");
    let accounted = |conn: &mut redis::Connection| redis::cmd("HLEN").arg(&orgs_key).query::<u64>(conn).expect("hlen");
    let mut report_conn = redis.connection();
    wait_until_or(
        Duration::from_secs(90),
        || accounted(&mut conn) >= 500,
        || {
            format!(
                "the worker did not work through the backlog: {} orgs accounted after 90 s; queries: {}; worker log:\n{}",
                accounted(&mut report_conn),
                fake.stats_now(),
                w.stderr().lines().rev().take(30).collect::<Vec<_>>().join("\n")
            )
        },
    );
}

/// Two workers, 128 jobs in flight and 50 slots against a strict 10/s policy: the query
/// service itself (which refuses the 11th start of any second with a 429) never sees more than
/// 10 starts in any sliding second, and every org completes.
#[test]
fn the_query_service_never_sees_more_starts_in_a_second_than_the_rate_policy_allows() {
    let redis = RedisServer::start();
    let fake = FakeSnuba::start(FAKE, &["--latency", "50ms", "--gateway-rate-limit", "10/s"]);
    let env = env(&redis, &fake);
    // start_jitter 150ms: this machine is loaded by the rest of the suite.
    let rate = ["--set", "rate.rates=10/s", "--set", "rate.max_delay=15s", "--set", "rate.start_jitter=150ms"];
    let _workers: Vec<_> = (0..2).map(|_| worker(&env, &[&["--concurrency", "64"][..], &rate[..]].concat())).collect();
    let dir = tempfile::tempdir().expect("tempdir");
    let s = run_orgs(&env, dir.path(), "s.json", 60);
    let stats = runtime().block_on(fake.stats());
    assert_eq!(s["completed"], 60, "{s}\n{stats}");
    assert_eq!(stats["rejected_429"], 0, "{stats}");
    let most = stats["max_started_in_1s"].as_u64().unwrap_or(u64::MAX);
    assert!((8..=10).contains(&most), "at most 10 starts in any second at the service, and the policy's budget used: {stats}");
}

#[test]
fn a_job_the_rate_policy_refuses_waits_for_its_turn_unless_the_deadline_leaves_no_time() {
    let redis = RedisServer::start();
    let fake = FakeSnuba::start(FAKE, &["--latency", "10ms"]);
    let env = env(&redis, &fake);
    // 2 per 2 s with no delay allowed: of 6 orgs offered at once, 2 start and 4 are refused.
    let rate = ["--set", "rate.rates=2/2s", "--set", "rate.max_delay=0s"];
    let w = worker(&env, &[&["--concurrency", "8"][..], &rate[..]].concat());
    let dir = tempfile::tempdir().expect("tempdir");
    // A deadline of 1 s leaves no time to come back after a 2 s window: the 4 end refused.
    let s = run_orgs_with(&env, dir.path(), "s.json", 6, &["--deadline", "1s"]);
    assert_eq!((s["completed"].as_u64(), s["skipped_rate_policy"].as_u64()), (Some(2), Some(4)), "{s}");
    let metrics = projector_tests::scrape(&metrics_addr(&w));
    assert_eq!(projector_tests::sample(&metrics, "projector_rate_blocked_total{reason=\"window\"}"), Some(4.0), "{metrics}");

    // With the default deadline (a period of the schedule), each refused job comes back at its retry_after
    // and completes: a refusal with time left is a wait, not an outcome.
    let s = run_orgs(&env, dir.path(), "s.json", 6);
    assert_eq!(s["completed"], 6, "{s}");
}

/// A fake that takes 2 queries at once against 6 slots: the third gets a 429. With
/// `rate.cooldown_after_429 = 1s`, no query starts at the service, from any worker, until the
/// cooldown ends: checked from the fake's own request timestamps. Every org ends in one outcome.
#[test]
fn after_a_429_no_query_starts_anywhere_in_the_fleet_until_the_cooldown_ends() {
    let redis = RedisServer::start();
    let fake = FakeSnuba::start(FAKE, &["--latency", "200ms", "--concurrency-limit", "2"]);
    let env = env(&redis, &fake);
    // Refused jobs come back at the cooldown's end: several cooldowns in one run.
    let args = [
        "--concurrency",
        "8",
        "--slots-limit",
        "6",
        "--set",
        "rate.cooldown_after_429=1s",
        "--set",
        "slots.on_timeout=reschedule",
        "--set",
        "slots.max_reschedules=3",
        // The cooldown alone: the service's numbers do not cap.
        "--set",
        "slots.follow_service=false",
    ];
    let _workers: Vec<_> = (0..2).map(|_| worker(&env, &args)).collect();
    let dir = tempfile::tempdir().expect("tempdir");
    let s = run_orgs(&env, dir.path(), "s.json", 40);
    let accounted: u64 = ["completed", "rate_limited", "skipped_rate_policy"].iter().map(|k| s[*k].as_u64().unwrap_or(0)).sum();
    assert_eq!(accounted, 40, "{s}");
    // A 429 with the run's deadline far off is a wait, not an outcome: every org completes.
    assert_eq!(s["completed"], 40, "{s}");
    let timeline: serde_json::Value = runtime()
        .block_on(async { reqwest::get(format!("{}/timeline", fake.url())).await.expect("GET /timeline").json().await.expect("json") });
    let list = |k: &str| -> Vec<u64> { timeline[k].as_array().expect("list").iter().filter_map(serde_json::Value::as_u64).collect() };
    let (starts, rejected) = (list("starts_ms"), list("rejected_ms"));
    let first_429 = rejected.iter().min().copied().expect("a 429 was answered");
    assert!(starts.iter().any(|t| *t >= first_429 + 1_000), "queries started again once the first cooldown ended: {starts:?}");
    // A start already on its way when the 429 was answered may land just after it: 150 ms of
    // grace for the 429 to reach its worker and the cooldown to be written.
    for r in &rejected {
        let inside: Vec<&u64> = starts.iter().filter(|t| **t > r + 150 && **t < r + 1_000).collect();
        assert!(
            inside.is_empty(),
            "starts at {inside:?} ms inside the cooldown after the 429 at {r} ms\nstarts {starts:?}\n429s {rejected:?}"
        );
    }
}

#[test]
fn reschedule_on_timeout_retries_a_job_that_got_no_slot() {
    let redis = RedisServer::start();
    let fake = FakeSnuba::start(FAKE, &["--latency", "1s"]);
    let env = env(&redis, &fake);
    let _w = worker(
        &env,
        &["--slots-limit", "1", "--slots-max-wait", "100ms", "--set", "slots.on_timeout=reschedule", "--set", "slots.max_reschedules=3"],
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("s.json");
    let out = scheduler(
        &env,
        &[
            "run-once",
            "--wait",
            "--wait-timeout",
            "90s",
            "--fail-on",
            "none",
            "--orgs",
            "4",
            "--batch-delay",
            "0s",
            "--summary-json",
            path.to_str().expect("utf-8"),
        ],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let s = summary(&path);
    // With "skip", one slot and a 100 ms wait, exactly one of four would complete.
    assert!(s["completed"].as_u64().unwrap_or(0) >= 2, "rescheduled jobs got a slot later: {s}");
    assert_eq!(s["completed"].as_u64().unwrap_or(0) + s["skipped_no_slot"].as_u64().unwrap_or(0), 4, "{s}");
    // Some org was rescheduled before it ended, and its trail says so first.
    let run_id = s["run_id"].as_str().expect("run id");
    let told: Vec<String> = (1..=4)
        .map(|org| {
            let out = projector_tests::fleet::run("projectorctl", &env, &["explain", run_id, &org.to_string()]);
            projector_tests::fleet::text(&out.stdout)
        })
        .collect();
    assert!(told.iter().any(|t| t.contains("1. rescheduled")), "{told:?}");
}

#[test]
fn a_duplicate_delivery_is_acknowledged_without_a_second_query_and_metrics_are_served() {
    let redis = RedisServer::start();
    let fake = FakeSnuba::start(FAKE, &["--latency", "10ms"]);
    let env = env(&redis, &fake);
    let w = worker(&env, &[]);
    let addr = metrics_addr(&w);
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("s.json");
    let out = scheduler(
        &env,
        &[
            "run-once",
            "--wait",
            "--wait-timeout",
            "60s",
            "--orgs",
            "3",
            "--batch-delay",
            "0s",
            "--summary-json",
            path.to_str().expect("utf-8"),
        ],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let run_id = summary(&path)["run_id"].as_str().expect("run id").to_owned();
    // The worker that recorded the run's last org says so, once, with the totals.
    w.wait_for_line(&["run finished", &run_id, "completed=3"], Duration::from_secs(10));
    let rt = runtime();
    assert_eq!(rt.block_on(fake.stats())["requests"], 3);

    // The same job delivered again (no idempotency key: as if the backend re-ran it).
    rt.block_on(async {
        let (_, mut conn) = projector_shared::redis_conn::connection_manager(redis.url(), Duration::from_secs(2)).expect("conn");
        let job = projector_shared::SpikeProjectionJob {
            run_id: projector_shared::RunId(run_id.clone()),
            org_id: OrgId(2),
            batch_index: 0,
            scheduled_at: chrono::Utc::now(),
            project_ids: vec![],
            reschedules: 0,
            attempt: 0,
            last_try: None,
            tries: Vec::new(),
            deadline: None,
        };
        let task = apalis::prelude::TaskBuilder::new(job.encode()).build();
        apalis_redis::queries::push_tasks(&mut conn, &projector_queue::config(projector_shared::keys::KeyLayout::Server), &[task])
            .await
            .expect("push");
    });
    w.wait_for_line(&["duplicate delivery; already accounted for", "org_id=2"], Duration::from_secs(30));
    assert_eq!(fake.stats_now()["requests"], 3, "the duplicate did not query again");

    assert_eq!(get(&addr, "/healthz"), (200, "ok".to_owned()));
    let metrics = get(&addr, "/metrics").1;
    for name in [
        "run_spike_projection_completed_total 3",
        "spike_projection_slot_acquired_total 3",
        "projector_query_duration_seconds_count 3",
        "spike_projection_slot_limit{source=\"config\"} 50",
        "spike_projection_concurrent_queries 0",
    ] {
        assert!(metrics.contains(name), "/metrics lacks {name:?}:\n{metrics}");
    }
    // The fleet gauge comes from the leases in Redis: nothing is held after the run.
    wait_until(Duration::from_secs(10), "utilization returns to 0", || {
        projector_tests::sample(&get(&addr, "/metrics").1, "spike_projection_utilization_percent") == Some(0.0)
    });
}

/// Run accounting accepts no strangers: a job for an org the run did not plan, or for a run that
/// does not exist, is refused without a query and leaves the run's totals true.
#[test]
fn jobs_for_unplanned_orgs_or_unknown_runs_are_refused_without_a_query() {
    let redis = RedisServer::start();
    let fake = FakeSnuba::start(FAKE, &["--latency", "10ms"]);
    let env = env(&redis, &fake);
    let w = worker(&env, &[]);
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("s.json");
    let out = scheduler(
        &env,
        &[
            "run-once",
            "--wait",
            "--wait-timeout",
            "60s",
            "--orgs",
            "3",
            "--batch-delay",
            "0s",
            "--summary-json",
            path.to_str().expect("utf-8"),
        ],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let run_id = summary(&path)["run_id"].as_str().expect("run id").to_owned();
    runtime().block_on(async {
        let (_, mut conn) = projector_shared::redis_conn::connection_manager(redis.url(), Duration::from_secs(2)).expect("conn");
        let job = |run: &str, org: u64| projector_shared::SpikeProjectionJob {
            run_id: projector_shared::RunId(run.to_owned()),
            org_id: OrgId(org),
            batch_index: 0,
            scheduled_at: chrono::Utc::now(),
            project_ids: vec![],
            reschedules: 0,
            attempt: 0,
            last_try: None,
            tries: Vec::new(),
            deadline: None,
        };
        let tasks: Vec<_> =
            [job(&run_id, 99_999), job("run-bogus", 1)].iter().map(|j| apalis::prelude::TaskBuilder::new(j.encode()).build()).collect();
        apalis_redis::queries::push_tasks(&mut conn, &projector_queue::config(projector_shared::keys::KeyLayout::Server), &tasks)
            .await
            .expect("push");
    });
    w.wait_for_line(&["job refused without a query", "org_id=99999", "reason=\"not_planned\""], Duration::from_secs(30));
    w.wait_for_line(&["job refused without a query", "run-bogus", "reason=\"unknown_run\""], Duration::from_secs(30));
    assert_eq!(fake.stats_now()["requests"], 3, "neither stranger was queried");
    let mut conn = redis.connection();
    let recorded: std::collections::HashMap<u64, String> =
        redis::cmd("HGETALL").arg(format!("projector:run:{run_id}:orgs")).query(&mut conn).expect("hgetall");
    assert_eq!(recorded.len(), 3, "the run still accounts for exactly its 3 orgs: {recorded:?}");
    let exists: bool = redis::cmd("EXISTS").arg("projector:run:run-bogus:orgs").query(&mut conn).expect("exists");
    assert!(!exists, "no record was made up for a run that never existed");
}

/// One sample of an adaptive run: seconds since the load started, the windows the fleet has
/// closed, the slot limit in force (from Redis), and the fake's queries in flight, 429s and
/// throttled answers so far.
#[derive(Debug, Clone, Copy)]
struct AdaptiveSample {
    t: f64,
    windows: u64,
    limit: u32,
    in_flight: u64,
    rejected_429: u64,
    throttled: u64,
}

/// Two workers with `[adaptive]` on (1 s windows) and 50 slots against the fake, under more load
/// than it can take, sampled every 250 ms by a background task. Steps wait for conditions and
/// count windows, never wall time, so a loaded machine only makes them slower.
struct AdaptiveRun {
    _redis: RedisServer,
    fake: FakeSnuba,
    _workers: Vec<Proc>,
    _load: Proc,
    samples: std::sync::Arc<std::sync::Mutex<Vec<AdaptiveSample>>>,
    rt: tokio::runtime::Runtime,
    name: &'static str,
}

impl AdaptiveRun {
    fn start(name: &'static str, fake_args: &[&str], use_throttle: bool) -> Self {
        let redis = RedisServer::start();
        let fake = FakeSnuba::start(FAKE, fake_args);
        let env = env(&redis, &fake);
        let throttle = format!("adaptive.use_throttle_signal={use_throttle}");
        let args = [
            "--concurrency",
            "64",
            "--slots-limit",
            "50",
            "--slots-max-wait",
            "10m",
            "--set",
            "adaptive.enabled=true",
            "--set",
            "adaptive.window=1s",
            "--set",
            &throttle,
            // These runs measure AIMD alone: the service's own numbers would cap the limit first.
            "--set",
            "slots.follow_service=false",
        ];
        let workers: Vec<_> = (0..2).map(|_| worker(&env, &args)).collect();
        let mut load = command(workspace_bin("projector-scheduler"));
        load.args(["run-once", "--orgs", "50000", "--batch-delay", "0s"]).envs(env.iter().cloned()).stdout(Stdio::null());
        let load = Proc::spawn(load);
        let rt = runtime();
        let samples = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (url, fake_url, into) = (redis.url(), fake.url(), samples.clone());
        rt.spawn(async move {
            let slots = RedisSlotLimiter::new(url, RedisSlotSettings::new(50, Duration::from_secs(30))).expect("limiter");
            let started = tokio::time::Instant::now();
            // The measurement's sampling period, not a wait for a condition.
            let mut every = tokio::time::interval(Duration::from_millis(250));
            loop {
                every.tick().await;
                let (Ok(now), Ok(last), Ok(stats)) = (
                    slots.occupancy_now().await,
                    slots.last_adaptive_window().await,
                    async { reqwest::get(format!("{fake_url}/stats")).await?.json::<serde_json::Value>().await }.await,
                ) else {
                    continue;
                };
                let n = |k: &str| stats[k].as_u64().unwrap_or(0);
                let sample = AdaptiveSample {
                    t: started.elapsed().as_secs_f64(),
                    windows: last.map_or(0, |w| w.windows_closed),
                    limit: now.in_force.unwrap_or(50),
                    in_flight: n("in_flight"),
                    rejected_429: n("rejected_429"),
                    throttled: n("throttled"),
                };
                into.lock().expect("samples").push(sample);
            }
        });
        AdaptiveRun { _redis: redis, fake, _workers: workers, _load: load, samples, rt, name }
    }

    fn latest(&self) -> Option<AdaptiveSample> {
        self.samples.lock().expect("samples").last().copied()
    }

    /// Waits (deadline `within`, for a loaded machine) for a sample that meets `condition`.
    fn until(&self, what: &str, within: Duration, condition: impl Fn(&AdaptiveSample) -> bool) -> AdaptiveSample {
        let mut found = None;
        projector_tests::wait_until_or(
            within,
            || {
                found = self.latest().filter(|s| condition(s));
                found.is_some()
            },
            || format!("{what}: not within {within:?}; {}", self.csv()),
        );
        found.expect("the condition held")
    }

    /// The samples of the next `windows` closed windows.
    fn over_windows(&self, windows: u64) -> Vec<AdaptiveSample> {
        let from = self.latest().map_or(0, |s| s.windows);
        let last = self.until(&format!("{windows} more windows closed"), Duration::from_secs(120), |s| s.windows >= from + windows);
        self.samples.lock().expect("samples").iter().filter(|s| s.windows > from && s.windows <= last.windows).copied().collect()
    }

    fn post_config(&self, change: serde_json::Value) {
        let url = format!("{}/config", self.fake.url());
        let status =
            self.rt.block_on(async { reqwest::Client::new().post(url).json(&change).send().await.expect("POST /config").status() });
        assert!(status.is_success(), "{change}");
    }

    fn csv(&self) -> String {
        let samples = self.samples.lock().expect("samples");
        std::iter::once("t_s,windows_closed,limit_in_force,in_flight,rejected_429_total,throttled_total\n".to_owned())
            .chain(
                samples
                    .iter()
                    .map(|s| format!("{:.2},{},{},{},{},{}\n", s.t, s.windows, s.limit, s.in_flight, s.rejected_429, s.throttled)),
            )
            .collect()
    }
}

impl Drop for AdaptiveRun {
    /// Keeps the curve for BENCHMARKS.md and for whoever reads a failure: target/adaptive-<name>.csv.
    fn drop(&mut self) {
        let dir = projector_tests::manifest_path("../target");
        let _ = std::fs::create_dir_all(&dir);
        let _ = std::fs::write(dir.join(format!("adaptive-{}.csv", self.name)), self.csv());
    }
}

fn mean_limit(samples: &[AdaptiveSample]) -> f64 {
    samples.iter().map(|s| f64::from(s.limit)).sum::<f64>() / samples.len().max(1) as f64
}

/// Capacity C = 30 against a configured limit of 50, 429s as the only signal: the limit comes
/// down and settles around C, a sawtooth of 20 % cuts after a window above 5 % 429s and 5 % growth
/// while demand fills it; over 10 windows its mean lies in [0.8·C, C]. Capacity halved: the limit
/// is at or below the new C within 7 windows. Capacity restored: it climbs back.
#[test]
fn the_adaptive_limit_finds_the_capacity_and_follows_it_down_and_up() {
    let c = 30.0;
    let run = AdaptiveRun::start("429", &["--latency", "600ms", "--concurrency-limit", "30"], false);
    run.until("the limit comes down to the capacity", Duration::from_secs(90), |s| f64::from(s.limit) <= c);
    let settled = run.over_windows(10);
    // With 429s as the only signal the limit has to probe above C to find it (up to C / (1 -
    // high_429_ratio) before a window's ratio trips the cut), so it saws around C; its mean lies
    // in [0.8·C, C] up to the one step of the integer limit (measured means: bench/log/).
    let mean = mean_limit(&settled);
    assert!((0.8 * c..=c + 1.0).contains(&mean), "mean limit in force over 10 windows: {mean:.1}\n{}", run.csv());

    run.post_config(serde_json::json!({"concurrency_limit": 15}));
    let halved = run.latest().expect("sampled").windows;
    let below = run.until("at or below the halved capacity", Duration::from_secs(90), |s| s.limit <= 15);
    assert!(below.windows - halved <= 7, "{} windows to get under the halved capacity\n{}", below.windows - halved, run.csv());

    run.post_config(serde_json::json!({"concurrency_limit": 30}));
    run.until("the limit climbs back after capacity returns", Duration::from_secs(120), |s| s.limit >= 22);
}

/// The same capacity with Snuba's throttle warning (at 0.66 x C = 19 in flight) as a signal:
/// the limit settles at the throttle point, where the service answers no 429 at all; the 429s it
/// took to get there are compared with the 429-only run in bench/log/.
#[test]
fn with_the_throttle_signal_the_limit_settles_below_the_throttle_point_without_429s() {
    let run = AdaptiveRun::start("throttle", &["--latency", "600ms", "--concurrency-limit", "30", "--default-limit", "30"], true);
    run.until("the limit comes down to the throttle point", Duration::from_secs(90), |s| s.limit <= 20);
    let settled = run.over_windows(10);
    let (first, last) = (settled.first().expect("sampled"), settled.last().expect("sampled"));
    assert_eq!(last.rejected_429 - first.rejected_429, 0, "no 429 once settled\n{}", run.csv());
    let mean = mean_limit(&settled);
    assert!((12.0..=21.0).contains(&mean), "settled at or below the throttle point (19): mean {mean:.1}\n{}", run.csv());
}

/// Jobs-ready announcements: a worker follows the channel and a fan-out of jobs due now announces
/// on it, so idle job loops fetch at once instead of at their next poll (here an hour away). How
/// much sooner is measured by the pipeline bench; promotions announce too (`scripts.rs`).
#[test]
fn a_fan_out_announces_ready_jobs_to_the_workers() {
    let redis = RedisServer::start();
    let fake = FakeSnuba::start(FAKE, &["--latency", "5ms"]);
    let env = env(&redis, &fake);
    let _w = worker(&env, &["--concurrency", "4", "--set", "worker.poll_interval=1h"]);
    let mut conn = redis.connection();
    wait_until(Duration::from_secs(10), "the worker follows the jobs-ready channel", || {
        let (_, n): (String, u64) =
            redis::cmd("PUBSUB").arg("NUMSUB").arg(projector_shared::keys::JOBS_READY_CHANNEL).query(&mut conn).expect("numsub");
        n == 1
    });
    // Listen as a second subscriber, on its own connection and thread.
    let url = redis.url();
    let (heard_tx, heard) = std::sync::mpsc::channel::<()>();
    let listener = std::thread::spawn(move || {
        let client = redis::Client::open(url).expect("client");
        let mut conn = client.get_connection().expect("connection");
        conn.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
        let mut pubsub = conn.as_pubsub();
        pubsub.subscribe(projector_shared::keys::JOBS_READY_CHANNEL).expect("subscribe");
        heard_tx.send(()).expect("subscribed");
        while pubsub.get_message().is_ok() {
            if heard_tx.send(()).is_err() {
                break;
            }
        }
    });
    heard.recv_timeout(Duration::from_secs(10)).expect("the listener subscribed");
    let out = scheduler(&env, &["run-once", "--wait", "--wait-timeout", "60s", "--orgs", "30", "--batch-delay", "0s"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(heard.try_iter().count() >= 1, "the fan-out announced its ready jobs");
    drop(heard);
    drop(listener);
}

#[test]
fn serve_exports_its_ticks_and_the_last_finished_run_and_is_ready_only_while_redis_answers() {
    let mut redis = RedisServer::start();
    let fake = FakeSnuba::start(FAKE, &[]);
    let env = env(&redis, &fake);
    let _w = worker(&env, &[]);
    let mut cmd = command(workspace_bin("projector-scheduler"));
    cmd.args(["serve", "--orgs", "5", "--batch-delay", "0s", "--set", "schedule.cron=*/2 * * * * *"])
        .envs(env.iter().cloned())
        .stdout(Stdio::null());
    let serve = Proc::spawn(cmd);
    let addr = metrics_addr(&serve);
    let mut metrics = String::new();
    wait_until_or(
        Duration::from_secs(60),
        || {
            metrics = projector_tests::scrape(&addr);
            let finished = projector_tests::sample(&metrics, "projector_run_last_finished_timestamp_seconds");
            finished.is_some_and(|at| at > 0.0)
        },
        || format!("no finished run was exported: {}", serve.stderr()),
    );
    let sample = |series: &str| projector_tests::sample(&metrics, series);
    assert!(sample(r#"projector_scheduler_ticks_total{outcome="fanned_out"}"#).is_some_and(|n| n >= 1.0), "{metrics}");
    assert_eq!(sample(r#"projector_run_last_orgs{outcome="completed"}"#), Some(5.0), "{metrics}");
    assert!(sample("projector_run_last_duration_seconds").is_some_and(|s| s > 0.0), "{metrics}");
    assert!(sample("projector_run_last_fanout_timestamp_seconds").is_some_and(|s| s > 0.0), "{metrics}");
    assert_eq!(sample("projector_workers_alive"), Some(1.0), "the one worker's heartbeat: {metrics}");
    assert_eq!(sample("projector_schedule_period_seconds"), Some(2.0), "{metrics}");
    assert_eq!(get(&addr, "/readyz").0, 200);
    redis.kill();
    wait_until(Duration::from_secs(30), "/readyz reports Redis gone", || {
        let (status, body) = get(&addr, "/readyz");
        status == 503 && body.contains("redis unreachable")
    });
    assert_eq!(get(&addr, "/healthz"), (200, "ok".to_owned()), "liveness holds while Redis is down");
}

#[test]
fn a_wrong_redis_password_stops_each_process_at_start_with_a_line_that_names_it() {
    let redis = RedisServer::start_with(&["--requirepass", "right-password"]);
    let fake = FakeSnuba::start(FAKE, &[]);
    for url in [format!("{}?pass=wrong-password", redis.url()), redis.url()] {
        let mut env = env(&redis, &fake);
        env.retain(|(k, _)| k != "PROJECTOR_REDIS_URL");
        env.push(("PROJECTOR_REDIS_URL".into(), url.clone()));
        for (bin, args) in [("projector-worker", &["run"][..]), ("projector-scheduler", &["serve"][..])] {
            let mut cmd = command(workspace_bin(bin));
            cmd.args(args).envs(env.iter().cloned()).stdout(Stdio::null());
            let out = Proc::spawn(cmd).wait_with_output(Duration::from_secs(30));
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(1), "{bin} with {url} exits 1: {stderr}");
            assert!(stderr.contains("redis refused the credentials") && stderr.contains("check the user and password"), "{bin}: {stderr}");
            assert!(!stderr.contains("worker started"), "{bin} does not claim to have started: {stderr}");
            assert!(!stderr.contains("wrong-password"), "{bin} never prints the password: {stderr}");
        }
        let out = projector_tests::fleet::run("projectorctl", &env, &["status"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains("redis refused the credentials") && !stderr.contains("wrong-password"), "projectorctl status: {stderr}");
        // The status page starts without Redis and names the failure in its place.
        let mut serve = command(workspace_bin("projectorctl"));
        serve.args(["serve", "--addr", "127.0.0.1:0"]).envs(env.iter().cloned()).stdout(Stdio::null());
        let page = Proc::spawn(serve);
        let line = page.wait_for_line(&["status page serving"], Duration::from_secs(30));
        let addr = line.split("addr=").nth(1).and_then(|r| r.split_whitespace().next()).expect("addr in the log line").to_owned();
        let body = projector_tests::http_get(&format!("http://{addr}/"));
        assert!(body.contains("redis refused the credentials"), "the page names the wrong password: {body}");
        assert!(!body.contains("no answer within") && !body.contains("wrong-password"), "{body}");
    }
}

/// Redis reaches `maxmemory` after the plan was stored, while the jobs are pushed: the error is
/// classed like every Redis failure (it names the memory) and says how to finish the run.
#[test]
fn jobs_that_redis_has_no_room_for_are_named_out_of_memory_with_the_resume_to_run() {
    let redis = RedisServer::start_with(&["--maxmemory", "4mb", "--maxmemory-policy", "noeviction", "--appendonly", "no"]);
    let fake = FakeSnuba::start(FAKE, &[]);
    let env = env(&redis, &fake);
    let out = scheduler(&env, &["run-once", "--orgs", "20000", "--batch-delay", "0s"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("redis is out of memory (maxmemory reached)"), "{stderr}");
    assert!(stderr.contains("finish the run with run-once --resume run-"), "{stderr}");
    assert!(!stderr.contains("rolled back"), "the plan was stored: the run is kept to be resumed: {stderr}");
}

/// Redis reaches `maxmemory` while a run's plan is stored: the error names the memory, and the
/// run is rolled back whole, so no run stays "fanning out" and a later try starts clean.
#[test]
fn a_plan_that_redis_has_no_room_for_is_rolled_back_and_named_out_of_memory() {
    let redis = RedisServer::start_with(&["--maxmemory", "4mb", "--maxmemory-policy", "noeviction", "--appendonly", "no"]);
    let fake = FakeSnuba::start(FAKE, &[]);
    let env = env(&redis, &fake);
    let out = scheduler(&env, &["run-once", "--orgs", "100000", "--batch-delay", "0s"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("redis is out of memory (maxmemory reached)"), "{stderr}");
    assert!(stderr.contains("the run was rolled back and nothing was enqueued"), "{stderr}");
    let listed = projector_tests::fleet::json_of(&projector_tests::fleet::run("projectorctl", &env, &["runs", "list", "--json"]));
    assert_eq!(listed["runs"].as_array().map(Vec::len), Some(0), "no run is left fanning out: {listed}");
    let mut conn = redis.connection();
    let keys: Vec<String> = redis::cmd("KEYS").arg("projector:run:*").query(&mut conn).expect("keys");
    assert!(keys.is_empty(), "nothing of the run is left: {keys:?}");
}
