//! The distributed pipeline as it runs in production, with real processes only: `redis-server`,
//! `projector-fake-snuba`, several `projector-worker`s and `projector-scheduler`.

use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use projector_shared::OrgId;
use projector_shared::rollout::Rollout;
use projector_tests::{FakeSnuba, RedisServer, workspace_bin};

const FAKE: &str = env!("CARGO_BIN_EXE_projector-fake-snuba");

/// Environment every Projector process of a test shares.
fn env(redis: &RedisServer, fake: &FakeSnuba) -> Vec<(String, String)> {
    vec![
        ("PROJECTOR_REDIS_URL".into(), redis.url()),
        ("PROJECTOR_QUERY_SOURCE".into(), "snuba".into()),
        ("PROJECTOR_QUERY_URL".into(), fake.url()),
        ("PROJECTOR_WORKER_METRICS_ADDR".into(), "127.0.0.1:0".into()),
        ("RUST_LOG".into(), "warn".into()),
    ]
}

fn worker(env: &[(String, String)], args: &[&str]) -> Child {
    Command::new(workspace_bin("projector-worker"))
        .arg("run")
        .args(args)
        .envs(env.iter().cloned())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start projector-worker")
}

fn scheduler(env: &[(String, String)], args: &[&str]) -> Output {
    Command::new(workspace_bin("projector-scheduler")).args(args).envs(env.iter().cloned()).output().expect("run projector-scheduler")
}

fn stop(children: Vec<Child>) {
    for mut c in children {
        let _ = c.kill();
        let _ = c.wait();
    }
}

fn summary(path: &std::path::Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).expect("summary written")).expect("summary JSON")
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Runtime::new().expect("runtime")
}

fn run_500(env: &[(String, String)], dir: &std::path::Path, name: &str) -> serde_json::Value {
    let path = dir.join(name);
    let out = scheduler(
        env,
        &[
            "run-once",
            "--wait",
            "--wait-timeout",
            "120s",
            "--orgs",
            "500",
            "--batch-delay",
            "0s",
            "--summary-json",
            path.to_str().expect("utf-8"),
        ],
    );
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
    let workers: Vec<_> = (0..3).map(|_| worker(&env, &["--concurrency", "64", "--slots-limit", "50", "--slots-max-wait", "5m"])).collect();
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = runtime();

    let limited = run_500(&env, dir.path(), "limited.json");
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
    // Workers re-read the flag within 2 s.
    std::thread::sleep(Duration::from_secs(3));
    let legacy = run_500(&env, dir.path(), "legacy.json");
    let stats = rt.block_on(fake.stats());
    assert_eq!(legacy["orgs_total"], 500, "{legacy}");
    assert!(stats["rejected_429"].as_u64().unwrap_or(0) > 0, "without slots the query service refuses queries: {stats}");
    assert!(legacy["rate_limited"].as_u64().unwrap_or(0) > 0, "and the run records them as rate_limited: {legacy}");
    let accounted: u64 = ["completed", "skipped_no_slot", "rate_limited", "failed", "slot_unavailable"]
        .iter()
        .map(|k| legacy[*k].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(accounted, 500, "every org accounted for: {legacy}");
    stop(workers);
}

#[test]
fn a_killed_worker_loses_no_org_and_the_bound_still_holds() {
    let redis = RedisServer::start();
    let fake = FakeSnuba::start(FAKE, &["--latency", "300ms"]);
    let env = env(&redis, &fake);
    let slot_args = ["--slots-limit", "20", "--set", "slots.lease_ttl=2s", "--concurrency", "32"];
    let mut victim = worker(&env, &slot_args);
    let survivor = worker(&env, &slot_args);
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("s.json");
    let run = Command::new(workspace_bin("projector-scheduler"))
        .args(["run-once", "--wait", "--wait-timeout", "120s", "--orgs", "200", "--batch-delay", "0s", "--summary-json"])
        .arg(&path)
        .envs(env.iter().cloned())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run-once");
    // Kill -9 one worker while it holds slots and jobs.
    std::thread::sleep(Duration::from_millis(1500));
    victim.kill().expect("kill -9");
    let _ = victim.wait();
    let out = run.wait_with_output().expect("run-once ends");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let s = summary(&path);
    assert_eq!(s["completed"], 200, "the killed worker's jobs were taken over: {s}");
    let stats = runtime().block_on(fake.stats());
    assert!(stats["max_in_flight"].as_u64().unwrap_or(u64::MAX) <= 20, "{stats}");
    stop(vec![survivor]);
}

#[test]
fn two_schedulers_on_the_same_tick_fan_out_once() {
    let redis = RedisServer::start();
    let fake = FakeSnuba::start(FAKE, &[]);
    let env = env(&redis, &fake);
    let serve = |env: &[(String, String)]| {
        Command::new(workspace_bin("projector-scheduler"))
            .args(["serve", "--orgs", "20", "--set", "schedule.cron=*/2 * * * * *"])
            .envs(env.iter().cloned())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("serve")
    };
    let replicas = vec![serve(&env), serve(&env)];
    std::thread::sleep(Duration::from_millis(4_500));
    stop(replicas);
    let mut conn = redis.connection();
    let locks: Vec<String> = redis::cmd("KEYS").arg("projector:tick-lock:*").query(&mut conn).expect("keys");
    let config = projector_worker::queue::config();
    let jobs: u64 = redis::cmd("HLEN").arg(config.job_data_hash()).query(&mut conn).expect("hlen");
    assert!(!locks.is_empty(), "at least one tick passed");
    assert_eq!(jobs, 20 * locks.len() as u64, "one fan-out of 20 jobs per tick, never two ({} ticks)", locks.len());
}

#[test]
fn dry_run_prints_the_plan_with_rollout_routing_and_enqueues_nothing() {
    let redis = RedisServer::start();
    let fake = FakeSnuba::start(FAKE, &[]);
    let env = env(&redis, &fake);
    let rollout = Rollout { percentage: Some(50), deny: [OrgId(3)].into(), ..Rollout::default() };
    // Set through the operator CLI, as on-call would.
    let ctl = Command::new(workspace_bin("projectorctl"))
        .args(["flag", "set", "--percentage", "50", "--deny", "3"])
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
    assert!(!text.contains("99"), "inactive orgs are left out: {text}");
    let legacy: Vec<u64> = (1..=30).filter(|o| !rollout.is_limited(OrgId(*o))).collect();
    assert!(legacy.contains(&3));
    let expected = format!("{} orgs on the limited path (slot first), {} on the legacy path", 30 - legacy.len(), legacy.len());
    assert!(text.contains(&expected), "{text}");
    let mut conn = redis.connection();
    let jobs: u64 = redis::cmd("HLEN").arg(projector_worker::queue::config().job_data_hash()).query(&mut conn).expect("hlen");
    assert_eq!(jobs, 0, "a dry run enqueues nothing");
}

#[test]
fn sigterm_drains_in_flight_jobs_releases_slots_and_exits_0() {
    let redis = RedisServer::start();
    let fake = FakeSnuba::start(FAKE, &["--latency", "1500ms"]);
    let env = env(&redis, &fake);
    let w = worker(&env, &["--concurrency", "8", "--set", "worker.shutdown_grace=10s"]);
    let out = scheduler(&env, &["run-once", "--orgs", "8", "--batch-delay", "0s"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // Wait until queries are in flight, then SIGTERM.
    let rt = runtime();
    let deadline = Instant::now() + Duration::from_secs(10);
    while rt.block_on(fake.stats())["in_flight"].as_u64().unwrap_or(0) == 0 {
        assert!(Instant::now() < deadline, "no query started");
        std::thread::sleep(Duration::from_millis(50));
    }
    let pid = w.id().to_string();
    let status = Command::new("kill").args(["-TERM", &pid]).status().expect("kill -TERM");
    assert!(status.success());
    let out = w.wait_with_output().expect("worker exits");
    assert!(out.status.success(), "exit 0 after SIGTERM: {:?}", out.status);
    let stats = rt.block_on(fake.stats());
    assert_eq!(stats["in_flight"], 0, "in-flight queries finished before exit: {stats}");
    let state = rt
        .block_on(async {
            let settings = projector_shared::slots::RedisSlotSettings::new(50, Duration::from_secs(30));
            projector_shared::slots::RedisSlotLimiter::new(&redis.url(), settings).expect("limiter").inspect().await
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
        let (_, mut conn) = projector_shared::redis_conn::connection_manager(&redis.url(), Duration::from_secs(2)).expect("conn");
        let bad = serde_json::json!({"run_id": "run-bad", "org_id": 7, "scheduled_at": "yesterday"});
        let task = apalis::prelude::TaskBuilder::new(serde_json::to_vec(&bad).expect("json")).build();
        // And one that is not even JSON: apalis-redis fails the whole fetch on it.
        let garbage = apalis::prelude::TaskBuilder::new(b"not json at all".to_vec()).build();
        apalis_redis::queries::push_tasks(&mut conn, &projector_worker::queue::config(), &[task, garbage]).await.expect("push");
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
    let outcome: Option<String> = redis::cmd("HGET").arg("projector:run:run-bad:orgs").arg(7).query(&mut conn).expect("hget");
    assert_eq!(outcome.as_deref(), Some("failed"), "the malformed job is accounted for in its run");
    let config = projector_worker::queue::config();
    let dead: Vec<String> = redis::cmd("SMEMBERS").arg(config.dead_jobs_set()).query(&mut conn).expect("smembers");
    assert_eq!(dead.len(), 1, "the non-JSON job was moved to the dead set: {dead:?}");
    let data: String = redis::cmd("HGET").arg(config.job_data_hash()).arg(&dead[0]).query(&mut conn).expect("hget");
    assert_eq!(data, "not json at all");
    stop(vec![w]);
}

#[test]
fn a_worker_survives_a_redis_restart() {
    let mut redis = RedisServer::start();
    let fake = FakeSnuba::start(FAKE, &["--latency", "10ms"]);
    let env = env(&redis, &fake);
    let mut w = worker(&env, &[]);
    std::thread::sleep(Duration::from_millis(500));
    redis.kill();
    std::thread::sleep(Duration::from_secs(2));
    assert!(w.try_wait().expect("status").is_none(), "the worker is still running while Redis is down");
    redis.restart();
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
    stop(vec![w]);
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
    // No worker while every job becomes due (the fan-out spreads them over 3 s).
    std::thread::sleep(Duration::from_secs(4));
    let w = worker(&env, &["--concurrency", "64", "--set", "sink.kind=discard"]);
    let mut conn = redis.connection();
    let run_keys: Vec<String> = redis::cmd("KEYS").arg("projector:run:*").query(&mut conn).expect("keys");
    let orgs_key = format!("{}:orgs", run_keys.first().expect("the run record exists"));
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut accounted = 0;
    while accounted < 500 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(500));
        accounted = redis::cmd("HLEN").arg(&orgs_key).query(&mut conn).expect("hlen");
    }
    stop(vec![w]);
    assert!(accounted >= 500, "the worker is working through the backlog ({accounted} orgs accounted)");
}

#[test]
fn reschedule_on_timeout_retries_a_job_that_got_no_slot() {
    let redis = RedisServer::start();
    let fake = FakeSnuba::start(FAKE, &["--latency", "1s"]);
    let env = env(&redis, &fake);
    let w = worker(
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
    stop(vec![w]);
}

#[test]
fn a_duplicate_delivery_is_acknowledged_without_a_second_query_and_metrics_are_served() {
    let redis = RedisServer::start();
    let fake = FakeSnuba::start(FAKE, &["--latency", "10ms"]);
    let env = env(&redis, &fake);
    let port = projector_tests::free_port();
    let w = worker(&env, &["--set", &format!("worker.metrics_addr=127.0.0.1:{port}")]);
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
    let rt = runtime();
    assert_eq!(rt.block_on(fake.stats())["requests"], 3);

    // The same job delivered again (no idempotency key: as if the backend re-ran it).
    rt.block_on(async {
        let (_, mut conn) = projector_shared::redis_conn::connection_manager(&redis.url(), Duration::from_secs(2)).expect("conn");
        let job = projector_shared::SpikeProjectionJob {
            run_id: projector_shared::RunId(run_id.clone()),
            org_id: OrgId(2),
            batch_index: 0,
            scheduled_at: chrono::Utc::now(),
            project_ids: vec![],
            reschedules: 0,
        };
        let task = apalis::prelude::TaskBuilder::new(job.encode()).build();
        apalis_redis::queries::push_tasks(&mut conn, &projector_worker::queue::config(), &[task]).await.expect("push");
    });
    let mut conn = redis.connection();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let ready: u64 = redis::cmd("LLEN").arg(projector_worker::queue::config().active_jobs_list()).query(&mut conn).expect("llen");
        let scheduled: u64 =
            redis::cmd("ZCARD").arg(projector_worker::queue::config().scheduled_jobs_set()).query(&mut conn).expect("zcard");
        if ready + scheduled == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "the duplicate was never taken");
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(rt.block_on(fake.stats())["requests"], 3, "the duplicate did not query again");

    let (health, metrics) = rt.block_on(async {
        let get = |p: &str| reqwest::get(format!("http://127.0.0.1:{port}{p}"));
        (
            get("/healthz").await.expect("healthz").text().await.expect("body"),
            get("/metrics").await.expect("metrics").text().await.expect("body"),
        )
    });
    assert_eq!(health, "ok");
    for name in
        ["run_spike_projection_completed_total 3", "spike_projection_slot_acquired_total 3", "projector_query_duration_seconds_count 3"]
    {
        assert!(metrics.contains(name), "/metrics lacks {name:?}:\n{metrics}");
    }
    stop(vec![w]);
}
