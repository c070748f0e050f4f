//! What an operator and a cron job see: exit codes of a finished or abandoned run, the limit in
//! force everywhere, secrets never echoed, output that survives a closed pipe, printed config
//! that loads back, and a `--help` per command with only its own flags.

use std::process::{Output, Stdio};
use std::time::Duration;

use projector_tests::fleet::{base_env, json_of, run, text, worker};
use projector_tests::{FakeSnuba, RedisServer, command, free_port, wait_until, workspace_bin};

const FAKE: &str = env!("CARGO_BIN_EXE_projector-fake-snuba");

#[test]
fn a_run_where_every_org_failed_exits_3_not_0() {
    let redis = RedisServer::start();
    // A query service that is not there: every query fails as unreachable.
    let env = base_env(&redis, &format!("http://127.0.0.1:{}", free_port()));
    let _w = worker(&env, &["--set", "query.timeout=2s"]);
    let out = run("projector-scheduler", &env, &["run-once", "--wait", "--wait-timeout", "60s", "--orgs", "10", "--batch-delay", "0s"]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(3), "{stdout}\n{}", text(&out.stderr));
    assert!(stdout.contains("failed (rate_limited, failed): 1, 2, 3"), "{stdout}");
    let lenient = run(
        "projector-scheduler",
        &env,
        &["run-once", "--wait", "--wait-timeout", "60s", "--orgs", "10", "--batch-delay", "0s", "--fail-on", "none"],
    );
    assert_eq!(lenient.status.code(), Some(0), "--fail-on none judges leniently on purpose");
    // The worker publishes its last error with its registration.
    wait_until(Duration::from_secs(10), "the worker's registration shows its last error", || {
        let listed = json_of(&run("projectorctl", &env, &["workers", "--json"]));
        listed["workers"][0]["last_error"].as_str().is_some_and(|e| e.contains("unreachable"))
    });
}

/// `workers`, `runs list`, `runs show` and `status`, as JSON, against a real run: every number
/// is checked against Redis itself or against the processes.
#[test]
fn workers_runs_and_status_show_the_fleet_and_their_json_matches_redis() {
    let redis = RedisServer::start();
    let fake = FakeSnuba::start(FAKE, &["--latency", "20ms"]);
    let env = base_env(&redis, &fake.url());
    let workers = [worker(&env, &["--concurrency", "8"]), worker(&env, &["--concurrency", "8"])];
    let pids: std::collections::BTreeSet<u64> = workers.iter().map(|w| u64::from(w.pid())).collect();
    wait_until(Duration::from_secs(10), "both workers registered", || {
        json_of(&run("projectorctl", &env, &["workers", "--json"]))["alive"] == 2
    });
    let listed = json_of(&run("projectorctl", &env, &["workers", "--json"]));
    let listed_pids: std::collections::BTreeSet<u64> =
        listed["workers"].as_array().expect("workers").iter().filter_map(|w| w["pid"].as_u64()).collect();
    assert_eq!(listed_pids, pids, "{listed}");
    // Each worker registers what its --version prints: the release and the commit it runs.
    let version = text(&run("projector-worker", &[], &["--version"]).stdout).trim().trim_start_matches("projector-worker ").to_owned();
    assert!(version.starts_with(env!("CARGO_PKG_VERSION")) && version.contains("(commit "), "{version}");
    assert!(listed["workers"].as_array().expect("workers").iter().all(|w| w["version"] == version.as_str() && w["host"] != ""), "{listed}");

    let out = run("projector-scheduler", &env, &["run-once", "--wait", "--wait-timeout", "60s", "--orgs", "30", "--batch-delay", "0s"]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{}", text(&out.stderr));
    let run_id = stdout.split_whitespace().nth(1).map(|r| r.trim_end_matches(':').to_owned()).expect("run id");
    let mut conn = redis.connection();
    let record: std::collections::HashMap<String, u64> = redis::cmd("HGETALL")
        .arg(format!("projector:run:{run_id}"))
        .query::<std::collections::HashMap<String, String>>(&mut conn)
        .expect("run record")
        .into_iter()
        .filter_map(|(k, v)| v.parse().ok().map(|v| (k, v)))
        .collect();

    let runs = json_of(&run("projectorctl", &env, &["runs", "list", "--json"]));
    let latest = &runs["runs"][0];
    assert_eq!(latest["run_id"], run_id.as_str(), "{runs}");
    assert_eq!((latest["state"].as_str(), latest["accounted"].as_u64(), latest["orgs_total"].as_u64()), (Some("done"), Some(30), Some(30)));
    assert_eq!(latest["outcomes"]["completed"].as_u64(), record.get("completed").copied(), "{latest}");
    assert!(latest["duration_ms"].as_u64().is_some() && latest["finished"].is_string(), "{latest}");
    let human = text(&run("projectorctl", &env, &["runs", "list"]).stdout);
    assert!(human.lines().any(|l| l.starts_with(&run_id) && l.ends_with("done")), "{human}");

    let shown = json_of(&run("projectorctl", &env, &["runs", "show", &run_id, "--json"]));
    for (outcome, n) in shown["outcomes"].as_object().expect("outcomes") {
        assert_eq!(n.as_u64(), Some(record.get(outcome).copied().unwrap_or(0)), "{outcome}: {shown}");
    }
    let missing = run("projectorctl", &env, &["runs", "show", "run-nope"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(text(&missing.stderr).contains("runs list"), "{}", text(&missing.stderr));

    let status = json_of(&run("projectorctl", &env, &["status", "--json"]));
    let queue = projector_queue::config(projector_shared::keys::KeyLayout::Server);
    let (ready, scheduled, stored): (u64, u64, Option<u64>) = redis::pipe()
        .llen(queue.active_jobs_list())
        .zcard(queue.scheduled_jobs_set())
        .get(projector_shared::keys::SlotKeys::new("default").limit())
        .query(&mut conn)
        .expect("queue and limit");
    assert_eq!((status["queue"]["ready"].as_u64(), status["queue"]["scheduled"].as_u64()), (Some(ready), Some(scheduled)), "{status}");
    assert_eq!(status["limit"]["stored"].as_u64(), stored, "{status}");
    assert_eq!((status["limit"]["in_force"].as_u64(), status["limit"]["source"].as_str()), (stored, Some("config")), "{status}");
    assert_eq!(status["workers"]["alive"], 2, "{status}");
    assert_eq!((status["run"]["run_id"].as_str(), status["run"]["state"].as_str()), (Some(run_id.as_str()), Some("done")), "{status}");
    assert_eq!(status["rollout"]["enabled"], serde_json::Value::Null, "the flag was never set: {status}");
    let screen = text(&run("projectorctl", &env, &["status"]).stdout);
    assert!(screen.contains("2 alive") && screen.contains(&run_id) && screen.contains("never set"), "{screen}");
}

#[test]
fn a_wait_that_times_out_exits_4_and_says_no_worker_is_alive() {
    let redis = RedisServer::start();
    let env = base_env(&redis, "http://127.0.0.1:1");
    let out = run("projector-scheduler", &env, &["run-once", "--wait", "--wait-timeout", "1s", "--orgs", "3", "--batch-delay", "0s"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert!(stderr.contains("0 of 3 orgs accounted for") && stderr.contains("no worker is alive"), "{stderr}");
    // With a live worker whose slots are all taken, the message says the run is being worked on.
    let _w = worker(&env, &["--slots-limit", "1"]);
    let mut conn = redis.connection();
    projector_tests::wait_until(Duration::from_secs(30), "the worker's heartbeat", || {
        redis::cmd("ZCARD").arg(projector_shared::keys::KeyLayout::Server.workers()).query::<u64>(&mut conn).expect("zcard") >= 1
    });
    let out = run(
        "projector-scheduler",
        &[env.clone(), vec![("PROJECTOR_QUERY_URL".into(), format!("http://127.0.0.1:{}", free_port()))]].concat(),
        // Batches 10 s apart: the run cannot end within the wait, however fast the worker is.
        &["run-once", "--wait", "--wait-timeout", "10ms", "--orgs", "3", "--batch-size", "1", "--batch-delay", "10s"],
    );
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert!(stderr.contains("1 worker(s) alive"), "{stderr}");
}

#[test]
fn the_limit_in_force_is_reported_and_a_limit_above_the_service_limit_is_refused() {
    let redis = RedisServer::start();
    let fake = FakeSnuba::start(FAKE, &["--latency", "5ms"]);
    let env = base_env(&redis, &fake.url());
    let ctl = |args: &[&str]| run("projectorctl", &env, args);

    let empty = ctl(&["slots", "inspect"]);
    assert!(text(&empty.stdout).contains("none stored in Redis yet"), "{}", text(&empty.stdout));
    let summary: serde_json::Value = serde_json::from_slice(&ctl(&["slots", "inspect", "--json"]).stdout).expect("inspect JSON");
    assert_eq!(
        (summary["limit"].clone(), summary["holders"].as_u64(), summary["waiters"].as_u64()),
        (serde_json::Value::Null, Some(0), Some(0))
    );
    assert!(summary.get("holder_list").is_none(), "the list only with --all: {summary}");
    let flag: serde_json::Value = serde_json::from_slice(&ctl(&["flag", "show", "--json", "--sample", "10"]).stdout).expect("flag JSON");
    assert_eq!((flag["enabled"].clone(), flag["limited"].as_u64()), (serde_json::Value::Null, Some(10)), "never set: everyone limited");

    let refused = ctl(&["slots", "set-limit", "100000"]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(text(&refused.stderr).contains("above query.referrer_limit 100"), "{}", text(&refused.stderr));
    let forced = ctl(&["slots", "set-limit", "150", "--force"]);
    assert!(forced.status.success(), "{}", text(&forced.stderr));
    let set: serde_json::Value = serde_json::from_slice(&ctl(&["slots", "set-limit", "3", "--json"]).stdout).expect("set-limit JSON");
    assert_eq!(set["limit"], 3, "{set}");

    // A worker configured with 50 says that 3 is in force, and exports it.
    let w = worker(&env, &["--slots-limit", "50"]);
    w.wait_for_line(&["slots.limit differs from the limit stored in Redis", "in_force=3", "configured=50"], Duration::from_secs(30));
    w.wait_for_line(&["worker started", "slots_limit=3 (in Redis)"], Duration::from_secs(30));
    let addr = w.wait_for_line(&["serving /metrics"], Duration::from_secs(30));
    let addr = addr.split("addr=").nth(1).and_then(|a| a.split_whitespace().next()).expect("addr").to_owned();
    projector_tests::wait_until(Duration::from_secs(10), "spike_projection_slot_limit{source=\"stored\"} 3", || {
        projector_tests::sample(&projector_tests::scrape(&addr), "spike_projection_slot_limit{source=\"stored\"}") == Some(3.0)
    });
    // The run summary names the limit in force too.
    let out = run("projector-scheduler", &env, &["run-once", "--wait", "--wait-timeout", "60s", "--orgs", "3", "--batch-delay", "0s"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("bounded by the slot limit in force across workers, 3 now (set in Redis)"), "{}", text(&out.stdout));

    // Handing the limit back to config.
    let reset = ctl(&["slots", "reset-limit"]);
    assert!(text(&reset.stdout).contains("stored limit removed"), "{}", text(&reset.stdout));
    assert!(text(&ctl(&["slots", "inspect"]).stdout).contains("none stored in Redis yet"));
    let again: serde_json::Value = serde_json::from_slice(&ctl(&["slots", "reset-limit", "--json"]).stdout).expect("reset JSON");
    assert_eq!(again["removed"], false, "nothing left to remove: {again}");
    let flag: serde_json::Value =
        serde_json::from_slice(&ctl(&["flag", "set", "--percentage", "40", "--json", "--yes"]).stdout).expect("flag JSON");
    assert_eq!((flag["percentage"].as_u64(), flag["enabled"].clone()), (Some(40), serde_json::Value::Null), "{flag}");
    // At 40 %, the summary says how many orgs ran outside the limit: those the flag left legacy.
    let shown: serde_json::Value = serde_json::from_slice(&ctl(&["flag", "show", "--json", "--sample", "20"]).stdout).expect("flag JSON");
    let out = run("projector-scheduler", &env, &["run-once", "--wait", "--wait-timeout", "60s", "--orgs", "20", "--batch-delay", "0s"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let legacy = 20 - shown["limited"].as_u64().unwrap_or_else(|| panic!("limited: {shown}"));
    assert!(legacy > 0, "{shown}");
    assert!(
        text(&out.stdout).contains(&format!("; {legacy} org(s) on the legacy path (rollout flag) ran outside it")),
        "{legacy} legacy: {}",
        text(&out.stdout)
    );
    let cleared: serde_json::Value = serde_json::from_slice(&ctl(&["flag", "clear", "--json"]).stdout).expect("flag JSON");
    assert_eq!(cleared["percentage"], serde_json::Value::Null, "{cleared}");
}

/// `projectorctl rate set` changes the policy of a running worker (no restart), `rate show --json`
/// reports it with its live state, `rate reset` hands it back; a bad value is refused, naming
/// the key. `adaptive set|show|reset` steer the multiplier on the limit in force.
#[test]
fn the_rate_policy_and_the_multiplier_change_at_runtime_for_the_whole_fleet() {
    let redis = RedisServer::start();
    let fake = FakeSnuba::start(FAKE, &["--latency", "5ms"]);
    let mut env = base_env(&redis, &fake.url());
    env.push(("PROJECTOR_WORKER_ROLLOUT_REFRESH".into(), "100ms".into()));
    let ctl = |args: &[&str]| run("projectorctl", &env, args);
    let json = |out: &Output| -> serde_json::Value {
        assert!(out.status.success(), "{}", text(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out.stdout)))
    };

    let _w = worker(&env, &[]);
    let before = json(&ctl(&["rate", "show", "--json"]));
    assert_eq!(before["rates"], "", "no policy configured: {before}");

    let bad = ctl(&["rate", "set", "--rates", "10/h,20/s"]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(text(&bad.stderr).contains("rate.rates") && text(&bad.stderr).contains("strictly increasing"), "{}", text(&bad.stderr));

    // One start per minute and no delay: of 3 orgs, 1 completes and 2 are refused.
    let set = json(&ctl(&["rate", "set", "--rates", "1/m", "--max-delay", "0s", "--json"]));
    assert_eq!((set["rates"].as_str(), set["runtime_changes"]["max_delay"].as_str()), (Some("1/m"), Some("0s")), "{set}");
    // The worker's heartbeat says which policy it runs: wait on that, not on its log.
    let fleet_rate = || json(&ctl(&["rate", "show", "--json"]))["fleet"]["rate"][0]["value"].as_str().unwrap_or_default().to_owned();
    wait_until(Duration::from_secs(30), "the worker runs 1/m", || fleet_rate().contains("1/m"));
    let out = run(
        "projector-scheduler",
        &env,
        // A deadline the refused cannot wait for (1 per minute): they end skipped_rate_policy.
        &["run-once", "--wait", "--wait-timeout", "60s", "--fail-on", "none", "--orgs", "3", "--batch-delay", "0s", "--deadline", "5s"],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let count = |outcome: &str| -> Option<u64> {
        text(&out.stdout).lines().find_map(|l| l.trim().strip_prefix(outcome).and_then(|rest| rest.trim().parse().ok()))
    };
    assert_eq!((count("completed"), count("skipped_rate_policy")), (Some(1), Some(2)), "{}", text(&out.stdout));
    let live = json(&ctl(&["rate", "show", "--json"]));
    assert_eq!(live["live"]["windows"][0]["used"], 1, "the one admission is in the window: {live}");

    let reset = ctl(&["rate", "reset"]);
    assert!(text(&reset.stdout).contains("runtime policy removed"), "{}", text(&reset.stdout));
    wait_until(Duration::from_secs(30), "the worker is back on its configured policy", || !fleet_rate().contains("1/m"));

    // The multiplier scales the limit in force; out-of-range values are refused.
    assert!(ctl(&["slots", "set-limit", "40"]).status.success());
    assert_eq!(ctl(&["adaptive", "set", "5"]).status.code(), Some(1), "above adaptive.max_multiplier");
    let scaled = json(&ctl(&["adaptive", "set", "0.5", "--json"]));
    assert_eq!((scaled["stored_limit"].as_u64(), scaled["limit_in_force"].as_u64()), (Some(40), Some(20)), "{scaled}");
    let back = json(&ctl(&["adaptive", "reset", "--json"]));
    assert_eq!(back["limit_in_force"], 40, "{back}");
}

#[test]
fn passwords_are_never_echoed() {
    let env = vec![("PROJECTOR_REDIS_URL".to_owned(), format!("redis://:hunter2@127.0.0.1:{}", free_port()))];
    for args in [&["slots", "inspect"][..], &["flag", "show"], &["run", "run-x"]] {
        let out = run("projectorctl", &env, args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let stderr = text(&out.stderr);
        assert!(!stderr.contains("hunter2"), "{args:?}: {stderr}");
        assert_eq!(stderr.matches("error:").count(), 1, "printed once: {stderr}");
    }
    let printed = run("projector-worker", &env, &["config"]);
    assert!(printed.status.success());
    assert!(text(&printed.stdout).contains("url = \"redis://:***@127.0.0.1:"), "{}", text(&printed.stdout));
    // A malformed URL is refused at load without echoing the password either.
    let bad = vec![("PROJECTOR_REDIS_URL".to_owned(), "redis://:hunter2@127.0.0.1:notaport".to_owned())];
    let out = run("projector-worker", &bad, &["config"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("redis.url") && text(&out.stderr).contains("port"), "{}", text(&out.stderr));
}

#[test]
fn a_closed_pipe_ends_output_quietly() {
    let redis = RedisServer::start();
    let env = base_env(&redis, "http://127.0.0.1:1");
    for args in [&["flag", "show"][..], &["slots", "inspect"]] {
        // The reader is gone before the command writes: every write gets EPIPE.
        let mut child = command(workspace_bin("projectorctl"))
            .args(args)
            .envs(env.iter().cloned())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        drop(child.stdout.take());
        let out = child.wait_with_output().expect("exits");
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

#[test]
fn printed_config_loads_back_and_help_is_per_command() {
    let dir = tempfile::tempdir().expect("tempdir");
    let env = vec![("PROJECTOR_SLOTS_LIMIT".to_owned(), "17".to_owned())];
    let printed = run("projector-worker", &env, &["config"]);
    assert!(printed.status.success(), "{}", text(&printed.stderr));
    let path = dir.path().join("e.toml");
    std::fs::write(&path, &printed.stdout).expect("write");
    let again = run("projector-worker", &[], &["config", "--config", path.to_str().expect("utf-8")]);
    assert!(again.status.success(), "printed config loads back: {}", text(&again.stderr));
    assert_eq!(text(&again.stdout), text(&printed.stdout), "and prints the same");
    assert!(text(&again.stdout).contains("limit = 17"));

    let help = |bin: &str, args: &[&str]| text(&run(bin, &[], args).stdout);
    for (bin, args) in [("projectorctl", &["flag", "set", "--help"][..]), ("projectorctl", &["run", "--help"])] {
        let h = help(bin, args);
        assert!(h.contains("--redis-url"), "{h}");
        for other in ["--orgs", "--batch-size", "--concurrency", "--slots-limit"] {
            assert!(!h.contains(other), "{args:?} lists {other}: {h}");
        }
    }
    let worker_help = help("projector-worker", &["run", "--help"]);
    assert!(worker_help.contains("--metrics-addr") && worker_help.contains("--concurrency"), "{worker_help}");
    assert!(!worker_help.contains("--batch-size"), "{worker_help}");
}

/// A pause holds at the query service: once the worker has drained, the fake sees no new query
/// while the worker keeps beating for 1.5 s of Redis time; after resume, every org is accounted,
/// each queried once.
#[test]
fn a_pause_stops_new_queries_and_resume_finishes_the_run() {
    let redis = RedisServer::start();
    let fake = FakeSnuba::start(FAKE, &["--latency", "200ms"]);
    let env = base_env(&redis, &fake.url());
    let w = worker(&env, &["--concurrency", "4"]);
    let out = run("projector-scheduler", &env, &["run-once", "--orgs", "100", "--batch-delay", "0s"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let run_id = stdout.split_whitespace().nth(1).map(|r| r.trim_end_matches(':').to_owned()).expect("run id");
    let requests = || fake.stats_now()["requests"].as_u64().unwrap_or(0);
    wait_until(Duration::from_secs(30), "the first queries started", || requests() >= 4);

    let paused = json_of(&run("projectorctl", &env, &["pause", "--reason", "incident 42", "--json"]));
    assert_eq!((paused["paused"].as_bool(), paused["reason"].as_str()), (Some(true), Some("incident 42")), "{paused}");
    w.wait_for_line(&["fleet paused"], Duration::from_secs(10));
    // The running jobs finish; after the drain, nothing of this worker is running.
    w.wait_for_line(&["in-flight jobs finished"], Duration::from_secs(30));
    let at_pause = requests();
    let last_start = || fake.stats_now()["last_start_unix_ms"].as_u64().expect("last start");
    let last_start_at_pause = last_start();
    let name = json_of(&run("projectorctl", &env, &["workers", "--json"]))["workers"][0]["name"].as_str().expect("worker name").to_owned();
    let mut conn = redis.connection();
    let mut last_beat = || -> u64 {
        redis::cmd("HGET")
            .arg(projector_shared::keys::KeyLayout::Server.worker(&name))
            .arg("last_beat_ms")
            .query::<Option<u64>>(&mut conn)
            .expect("hget")
            .unwrap_or(0)
    };
    let first = last_beat();
    wait_until(Duration::from_secs(30), "the paused worker beat for 1.5 s more", || last_beat() >= first + 1_500);
    assert_eq!(requests(), at_pause, "no query started while the fleet was paused");
    assert_eq!(last_start(), last_start_at_pause, "the fake's start timestamps agree: nothing started while paused");
    let status = json_of(&run("projectorctl", &env, &["status", "--json"]));
    assert_eq!(status["paused"]["reason"], "incident 42", "{status}");
    assert!(status["run"]["accounted"].as_u64().unwrap_or(100) < 100, "the run waits: {status}");
    assert!(text(&run("projectorctl", &env, &["status"]).stdout).contains("PAUSED"));
    // A job fetched by the drained loop but never started goes back to the queue, where status
    // shows it: every org is accounted or waits as a queued job, none is stuck "in flight".
    wait_until(Duration::from_secs(10), "nothing left in flight once the worker drained", || {
        json_of(&run("projectorctl", &env, &["status", "--json"]))["queue"]["in_flight"] == 0
    });
    let status = json_of(&run("projectorctl", &env, &["status", "--json"]));
    let count = |v: &serde_json::Value| v.as_u64().unwrap_or(0);
    assert_eq!(
        count(&status["run"]["accounted"]) + count(&status["queue"]["ready"]) + count(&status["queue"]["scheduled"]),
        100,
        "every org is accounted or queued: {status}"
    );

    let resumed = json_of(&run("projectorctl", &env, &["resume", "--json"]));
    assert_eq!(resumed["was_paused"], true, "{resumed}");
    wait_until(Duration::from_secs(60), "every org of the run is accounted", || {
        json_of(&run("projectorctl", &env, &["runs", "show", &run_id, "--json"]))["accounted"] == 100
    });
    let shown = json_of(&run("projectorctl", &env, &["runs", "show", &run_id, "--json"]));
    assert_eq!(shown["outcomes"]["completed"], 100, "{shown}");
    assert_eq!(fake.stats_now()["requests"], 100, "each org queried once, none lost to the pause");
    assert_eq!(json_of(&run("projectorctl", &env, &["resume", "--json"]))["was_paused"], false);
}

/// Operators put global flags first out of habit (kubectl, redis-cli): the configuration flags
/// work before the subcommand as after it, and the later one wins where both are given.
#[test]
fn configuration_flags_work_before_the_subcommand_too() {
    let redis = RedisServer::start();
    let url = redis.url();
    let no_env: Vec<(String, String)> = Vec::new();
    let before = run("projectorctl", &no_env, &["--redis-url", &url, "--set", "slots.limit=7", "slots", "inspect", "--json"]);
    let after = run("projectorctl", &no_env, &["slots", "inspect", "--json", "--redis-url", &url, "--set", "slots.limit=7"]);
    for out in [&before, &after] {
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert_eq!(json_of(out)["configured"], 7, "{}", text(&out.stdout));
    }
    let both = run("projectorctl", &no_env, &["--redis-url", "redis://127.0.0.1:1", "slots", "inspect", "--json", "--redis-url", &url]);
    assert!(both.status.success(), "the URL after the subcommand wins: {}", text(&both.stderr));
}

/// A flag change that takes orgs off the limited path says how many and is refused without
/// `--yes` when nobody can be asked; one that adds protection needs no confirmation. Destructive
/// commands ask the same way.
#[test]
fn a_change_that_lowers_protection_shows_its_effect_and_needs_yes() {
    let redis = RedisServer::start();
    let env = vec![("PROJECTOR_REDIS_URL".to_owned(), redis.url())];
    let refused = run("projectorctl", &env, &["flag", "set", "--percentage", "10", "--deny", "42"]);
    let stderr = text(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{stderr}");
    // The flag routes by a hash of the org id: the count is the flag's own, read back below.
    let would = json_of(&run("projectorctl", &env, &["flag", "show", "--json"]));
    assert_eq!(would["limited"], 1000, "nothing changed: {would}");
    let done = json_of(&run("projectorctl", &env, &["flag", "set", "--percentage", "10", "--deny", "42", "--yes", "--json"]));
    let left = 1000 - done["limited"].as_u64().expect("limited");
    assert!(left > 800, "{done}");
    assert!(stderr.contains(&format!("{left} of 1000 orgs leave the limited path")) && stderr.contains("--yes"), "{stderr}");
    // Back to more protection: no question asked.
    let raised = run("projectorctl", &env, &["flag", "set", "--percentage", "100"]);
    assert!(raised.status.success(), "{}", text(&raised.stderr));
    for args in [&["slots", "reset"][..], &["runs", "cancel", "run-x"], &["jobs", "purge", "--all"]] {
        let out = run("projectorctl", &env, args);
        assert_eq!(out.status.code(), Some(1), "{args:?} needs --yes: {}", text(&out.stderr));
        assert!(text(&out.stderr).contains("Nothing changed: run it again with --yes"), "{args:?}: {}", text(&out.stderr));
    }
    let reset = run("projectorctl", &env, &["slots", "reset", "--yes"]);
    assert!(reset.status.success(), "{}", text(&reset.stderr));
}

/// `run-once --wait` ends at Ctrl-C with the summary so far and exit 130, and says the run goes
/// on; a run whose record Redis lost is named lost, with exit 1, instead of waiting it out.
#[test]
fn a_wait_ends_at_ctrl_c_with_130_and_a_lost_run_is_named_with_1() {
    let mut redis = RedisServer::start();
    let env = vec![("PROJECTOR_REDIS_URL".to_owned(), redis.url()), ("RUST_LOG".to_owned(), "info".to_owned())];
    // `queued`: the jobs in the queue once this run has fanned out (earlier runs' stay there).
    let dir = tempfile::tempdir().expect("tempdir");
    let summary_json = dir.path().join("s.json");
    let follow = |env: &[(String, String)], queued: u64| {
        let mut cmd = command(workspace_bin("projector-scheduler"));
        cmd.args(["run-once", "--wait", "--orgs", "5", "--batch-delay", "0s", "--summary-json"])
            .arg(&summary_json)
            .envs(env.iter().cloned())
            .stdout(Stdio::null());
        let p = projector_tests::Proc::spawn(cmd);
        // No worker runs the jobs: the wait would last its hour. Fanned out = all 5 queued.
        wait_until(Duration::from_secs(30), "the run's 5 jobs are queued", || {
            let queue = json_of(&run("projectorctl", env, &["status", "--json"]))["queue"].clone();
            queue["ready"].as_u64().unwrap_or(0) + queue["scheduled"].as_u64().unwrap_or(0) == queued
        });
        p
    };
    let waiting = follow(&env, 5);
    waiting.signal("INT");
    let out = waiting.wait_with_output(Duration::from_secs(10));
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("interrupted: 0 of 5 orgs accounted for so far; the run goes on"), "{stderr}");
    let written: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&summary_json).expect("summary")).expect("JSON");
    assert_eq!(written["interrupted"], true, "the fleet run's summary says it was interrupted, as the embedded run's does: {written}");

    let waiting = follow(&env, 10);
    let _: () = redis::cmd("FLUSHALL").query(&mut redis.connection()).expect("flushall");
    let out = waiting.wait_with_output(Duration::from_secs(30));
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("is gone from Redis") && stderr.contains("the run is lost"), "{stderr}");
    redis.kill();
}

/// Under `--log-format json` every stderr line is a JSON object, a usage error's too.
#[test]
fn a_usage_error_under_json_logs_is_one_json_line_and_exit_2() {
    let no_env: Vec<(String, String)> = Vec::new();
    for (bin, args) in [
        ("projectorctl", &["--log-format", "json", "slots", "inspct"][..]),
        ("projector-worker", &["run", "--log-format", "json", "--bogus"]),
        ("projector-scheduler", &["run-once", "--log-format=json", "--orgs"]),
    ] {
        let out = run(bin, &no_env, args);
        assert_eq!(out.status.code(), Some(2), "{bin}: {}", text(&out.stderr));
        let stderr = text(&out.stderr);
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{bin}: one line: {stderr}");
        let line: serde_json::Value = serde_json::from_str(lines[0]).unwrap_or_else(|e| panic!("{bin}: not JSON ({e}): {stderr}"));
        assert_eq!(line["level"], "ERROR", "{line}");
        assert!(line["error"].as_str().is_some_and(|e| !e.is_empty()), "{line}");
    }
}

/// `rate show` and `status` say what the workers run, from their heartbeats, and warn when they
/// disagree: a worker started with `--set rate.rates=5/s` refuses orgs that the others admit.
#[test]
fn rate_show_and_status_show_what_the_fleet_runs_and_who_disagrees() {
    let redis = RedisServer::start();
    let env = base_env(&redis, "http://127.0.0.1:1");
    let _odd = worker(&env, &["--set", "rate.rates=5/s"]);
    let _plain = worker(&env, &[]);
    let fleet_of = || json_of(&run("projectorctl", &env, &["rate", "show", "--json"]));
    wait_until(Duration::from_secs(30), "both workers' policies are shown", || {
        fleet_of()["fleet"]["rate"].as_array().is_some_and(|r| r.len() == 2)
    });
    let shown = fleet_of();
    let rates: Vec<&str> = shown["fleet"]["rate"].as_array().expect("rates").iter().filter_map(|r| r["value"].as_str()).collect();
    assert_eq!(rates, ["5/s (strict, enforced)", "none"], "{shown}");
    assert_eq!(shown["fleet"]["agree"], false, "{shown}");
    assert_eq!(shown["fleet"]["config_digest"].as_array().map(Vec::len), Some(2), "different flags, different digests: {shown}");
    assert_eq!(shown["fleet"]["slots"].as_array().map(Vec::len), Some(1), "the same slot settings: {shown}");
    let text_out = text(&run("projectorctl", &env, &["rate", "show"]).stdout);
    assert!(text_out.contains("what the workers run: 5/s (strict, enforced) on 1 worker(s)"), "{text_out}");
    assert!(text_out.contains("WARNING workers disagree on their rate policy"), "{text_out}");
    let status = json_of(&run("projectorctl", &env, &["status", "--json"]));
    let warnings = status["warnings"].as_array().cloned().unwrap_or_default();
    assert!(warnings.iter().any(|w| w.as_str().is_some_and(|w| w.contains("disagree on their rate policy"))), "{status}");
}

/// An `ops/demo.sh` stopped with Ctrl-C's signal however the test ends, so its fleet never
/// outlives the test.
struct Demo(std::process::Child);

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill").arg("-INT").arg(self.0.id().to_string()).status();
        let _ = self.0.wait();
    }
}

/// Starts `ops/demo.sh` on the test binaries and reads its walkthrough to the last line; the
/// demo, what it printed, and its folder.
fn start_demo() -> (Demo, String, String) {
    let mut cmd = command(projector_tests::manifest_path("../ops/demo.sh"));
    let bins = workspace_bin("projectorctl").parent().expect("bin dir").to_owned();
    cmd.arg("--bin-dir").arg(&bins).args(["--orgs", "20"]).stdout(Stdio::piped());
    let mut demo = Demo(cmd.spawn().expect("ops/demo.sh"));
    let mut out = String::new();
    let mut stdout = std::io::BufReader::new(demo.0.stdout.take().expect("stdout"));
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    while !out.contains("Ctrl-C stops everything") {
        assert!(std::time::Instant::now() < deadline, "the demo did not come up: {out}");
        let mut line = String::new();
        if std::io::BufRead::read_line(&mut stdout, &mut line).expect("read") == 0 {
            panic!("the demo ended before it was up: {out}");
        }
        out.push_str(&line);
    }
    let dir = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("export PROJECTOR_REDIS_URL=unix://"))
        .map(|v| v.trim_end_matches("/redis.sock").to_owned())
        .expect("the demo's Redis socket");
    (demo, out, dir)
}

/// `ops/demo.sh` brings up a whole local fleet on its own ports, prints where it is, runs a run
/// end to end, and stops every process and removes its files on Ctrl-C. A demo that could not
/// clean up (killed with -9, as a pipeline's harness may) leaves processes and a folder; the next
/// demo stops and removes them.
#[test]
fn the_demo_fleet_comes_up_runs_and_stops_whole_on_ctrl_c() {
    let (mut killed, _, killed_dir) = start_demo();
    let killed_pids = std::fs::read_to_string(format!("{killed_dir}/pids")).expect("the demo lists its processes");
    let killed_pids: Vec<String> = killed_pids.split_whitespace().map(str::to_owned).collect();
    assert_eq!(killed_pids.len(), 6, "redis, the fake, two workers, the scheduler, the page: {killed_pids:?}");
    let _ = std::process::Command::new("kill").arg("-KILL").arg(killed.0.id().to_string()).status();
    let _ = killed.0.wait();
    assert!(std::path::Path::new(&killed_dir).exists(), "kill -9 leaves the folder behind");

    let (mut demo, out, dir) = start_demo();
    assert!(!std::path::Path::new(&killed_dir).exists(), "the next demo removed the leftover folder {killed_dir}");
    wait_until(Duration::from_secs(30), "the killed demo's processes are stopped", || {
        killed_pids.iter().all(|pid| !std::path::Path::new(&format!("/proc/{pid}")).exists())
    });
    let value_after = |label: &str| -> String {
        out.lines()
            .find_map(|l| l.trim().strip_prefix(label))
            .map(|v| v.split_whitespace().next().unwrap_or_default().to_owned())
            .expect(label)
    };
    let redis_url = value_after("export PROJECTOR_REDIS_URL=");
    let env = vec![("PROJECTOR_REDIS_URL".to_owned(), redis_url)];
    let page = value_after("status page:");
    assert!(projector_tests::http_get(&page).contains("Projector"), "the status page answers");
    let finished =
        run("projector-scheduler", &env, &["run-once", "--wait", "--wait-timeout", "60s", "--orgs", "20", "--batch-delay", "0s"]);
    assert!(finished.status.success(), "a run through the demo fleet completes: {}", text(&finished.stderr));
    assert_eq!(json_of(&run("projectorctl", &env, &["status", "--json"]))["workers"]["alive"], 2);

    // Redis loses its data; the printed set-up carries every setting of the fleet, so the lost
    // tick is replayed as the runbook says, on the demo's own schedule.
    let mut printed = Vec::new();
    for line in out.lines().filter_map(|l| l.trim().strip_prefix("export ")) {
        if let Some((key, value)) = line.split_once("=\"") {
            printed.push((key.to_owned(), value.trim_end_matches('"').to_owned()));
        } else {
            printed.extend(line.split_whitespace().filter_map(|kv| kv.split_once('=')).map(|(k, v)| (k.to_owned(), v.to_owned())));
        }
    }
    let cron = printed.iter().find(|(k, _)| k == "PROJECTOR_SCHEDULE_CRON").map(|(_, v)| v.clone());
    assert_eq!(cron.as_deref(), Some("0 * * * * *"), "the set-up carries the demo's schedule: {out}");
    let client = redis::Client::open(env[0].1.as_str()).expect("client");
    let _: () = redis::cmd("FLUSHALL").query(&mut client.get_connection().expect("connection")).expect("flushall");
    let tick = chrono::Utc::now().format("%Y-%m-%dT%H:%M:00Z").to_string();
    let replayed = run("projector-scheduler", &printed, &["run-once", "--tick", &tick, "--wait", "--wait-timeout", "60s"]);
    assert!(replayed.status.success(), "the lost tick {tick} is replayed: {}\n{}", text(&replayed.stdout), text(&replayed.stderr));
    assert!(text(&replayed.stdout).contains("20 orgs"), "{}", text(&replayed.stdout));

    let status = std::process::Command::new("kill").arg("-INT").arg(demo.0.id().to_string()).status().expect("kill");
    assert!(status.success());
    wait_until(Duration::from_secs(30), "the demo exits on Ctrl-C", || demo.0.try_wait().expect("try_wait").is_some());
    wait_until(Duration::from_secs(30), "every process of the demo is gone", || {
        let left = std::process::Command::new("pgrep").arg("-f").arg(&dir).output().expect("pgrep");
        left.stdout.is_empty()
    });
    assert!(!std::path::Path::new(&dir).exists(), "its files are removed: {dir}");
}

/// `run-once --tick` refuses a time that is not a tick of schedule.cron (a typo, a local time),
/// naming the ticks around it, unless `--force`.
#[test]
fn an_off_schedule_tick_is_refused_unless_forced() {
    let redis = RedisServer::start();
    let env = vec![("PROJECTOR_REDIS_URL".to_owned(), redis.url())];
    let refused = run("projector-scheduler", &env, &["run-once", "--tick", "2026-11-22T13:17:00Z", "--orgs", "3"]);
    let stderr = text(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("is not on schedule.cron") && stderr.contains("2026-11-22T13:00:00+00:00"), "{stderr}");
    assert_eq!(json_of(&run("projectorctl", &env, &["runs", "list", "--json"]))["runs"].as_array().map(Vec::len), Some(0));
    let forced = run("projector-scheduler", &env, &["run-once", "--tick", "2026-11-22T13:17:00Z", "--orgs", "3", "--force"]);
    assert!(forced.status.success(), "{}", text(&forced.stderr));
    let on = run("projector-scheduler", &env, &["run-once", "--tick", "2026-11-22T13:00:00Z", "--orgs", "3"]);
    assert!(on.status.success(), "{}", text(&on.stderr));
}

/// Every line a job logs is inside one `job` span carrying its run, org and attempt: in JSON,
/// as one "span" object on the line, so a log query by org finds the job's whole story.
#[test]
fn a_jobs_log_lines_carry_its_run_org_and_attempt_in_one_span() {
    let redis = RedisServer::start();
    let fake = FakeSnuba::start(FAKE, &["--latency", "5ms"]);
    let mut env = base_env(&redis, &fake.url());
    env.retain(|(k, _)| k != "RUST_LOG");
    env.push(("RUST_LOG".into(), "info,projector_job=debug".into()));
    let w = worker(&env, &["--log-format", "json"]);
    let out = run("projector-scheduler", &env, &["run-once", "--wait", "--orgs", "1", "--batch-delay", "0s"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let line = w.wait_for_line(&["projections stored"], Duration::from_secs(30));
    let json = line.find('{').map(|i| &line[i..]).expect("a JSON line");
    let logged: serde_json::Value = serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}: {line}"));
    let run_id = json_of(&run("projectorctl", &env, &["runs", "list", "--json"]))["runs"][0]["run_id"].clone();
    assert_eq!(logged["span"]["name"], "job", "{logged}");
    assert_eq!(logged["span"]["run_id"], run_id, "{logged}");
    assert_eq!(logged["span"]["org_id"], "1", "{logged}");
    assert_eq!(logged["span"]["attempt"], 0, "{logged}");
    assert!(logged.get("org_id").is_none(), "the org is said once, by the span: {logged}");
}

/// A replayed past tick leaves out the orgs whose stored projection is fresher than its own:
/// "nothing to do" when that is every org, and only the others are queried otherwise, where
/// before each of them was queried and then refused by the store's fence as `stale_write`.
#[test]
fn a_replayed_past_tick_queries_only_the_orgs_without_a_fresher_projection() {
    let redis = RedisServer::start();
    let fake = FakeSnuba::start(FAKE, &["--latency", "5ms"]);
    let env = base_env(&redis, &fake.url());
    let _w = worker(&env, &[]);
    let fan_out = |tick: &str, orgs: &str| {
        run("projector-scheduler", &env, &["run-once", "--tick", tick, "--wait", "--orgs", orgs, "--batch-delay", "0s"])
    };
    let later = fan_out("2026-11-22T14:00:00Z", "3");
    assert!(later.status.success(), "{}", text(&later.stderr));
    let requests = || fake.stats_now()["requests"].as_u64().expect("requests");
    let after_later = requests();

    let replay = fan_out("2026-11-22T13:00:00Z", "3");
    let stdout = text(&replay.stdout);
    assert!(replay.status.success(), "{stdout}{}", text(&replay.stderr));
    assert!(stdout.contains("nothing to do: all 3 orgs"), "{stdout}");
    assert_eq!(requests(), after_later, "no org of the replay is queried");
    assert_eq!(json_of(&run("projectorctl", &env, &["runs", "list", "--json"]))["runs"].as_array().map(Vec::len), Some(1));

    let dry = run("projector-scheduler", &env, &["run-once", "--tick", "2026-11-22T13:00:00Z", "--orgs", "5", "--dry-run"]);
    let plan = text(&dry.stdout);
    assert!(plan.contains(": 2 orgs in 1 batches") && plan.contains("3 orgs left out"), "{plan}");
    let partial = fan_out("2026-11-22T13:00:00Z", "5");
    assert!(partial.status.success(), "{}{}", text(&partial.stdout), text(&partial.stderr));
    let runs = json_of(&run("projectorctl", &env, &["runs", "list", "--json"]));
    let replayed = runs["runs"].as_array().expect("runs").iter().find(|r| r["run_id"] == "run-20261122T130000Z").cloned();
    let replayed = replayed.unwrap_or_else(|| panic!("the replayed run is listed: {runs}"));
    assert_eq!(replayed["orgs_total"], 2, "only orgs 4 and 5 are in the replay: {replayed}");
    assert_eq!(replayed["outcomes"]["completed"], 2, "{replayed}");
    // A replay began when it was fanned out, not at its tick two weeks ago.
    assert!(replayed["duration_ms"].as_u64().is_some_and(|ms| ms < 600_000), "{replayed}");
    assert!(replayed["started"].as_str() > replayed["tick"].as_str(), "{replayed}");
    assert_eq!(requests(), after_later + 2, "only the two orgs without a projection are queried");
}

/// Every command in ops/RUNBOOK.md's shell blocks runs against a live fleet and exits 0, so the
/// runbook cannot drift from the binaries. The example run id and org become a real run's; the
/// commands that run until Ctrl-C are started and seen serving, then stopped.
#[test]
fn every_runbook_command_runs_against_a_live_fleet() {
    let redis = RedisServer::start();
    let fake = FakeSnuba::start(FAKE, &["--latency", "5ms"]);
    let env = base_env(&redis, &fake.url());
    let _w = worker(&env, &[]);
    let finished = run("projector-scheduler", &env, &["run-once", "--wait", "--orgs", "50", "--batch-delay", "0s"]);
    assert!(finished.status.success(), "{}", text(&finished.stderr));
    let run_id = json_of(&run("projectorctl", &env, &["runs", "list", "--json"]))["runs"][0]["run_id"].as_str().expect("a run").to_owned();
    let runbook = std::fs::read_to_string(projector_tests::manifest_path("../ops/RUNBOOK.md")).expect("runbook");
    let mut commands = Vec::new();
    let mut in_sh = false;
    for line in runbook.lines() {
        match line.trim() {
            "```sh" => in_sh = true,
            "```" => in_sh = false,
            l if in_sh && !l.is_empty() && !l.starts_with('#') => commands.push(l.split(" #").next().unwrap_or_default().trim().to_owned()),
            _ => {}
        }
    }
    assert!(commands.len() >= 20, "{commands:?}");
    for line in &commands {
        let line = line.replace("run-20261122T130000Z", &run_id).replace("--redis-url redis://…", "");
        let mut words = line.split_whitespace();
        let bin = words.next().expect("a command");
        let args: Vec<&str> = words.collect();
        if args.contains(&"--watch") {
            // `status --watch` redraws `status` (run above) until Ctrl-C.
            continue;
        }
        if args.first() == Some(&"serve") {
            let mut cmd = command(workspace_bin(bin));
            cmd.args(args.iter().map(|a| if a.starts_with("127.0.0.1:") { "127.0.0.1:0" } else { *a })).envs(env.iter().cloned());
            cmd.stdout(Stdio::null());
            let serving = projector_tests::Proc::spawn(cmd);
            serving.wait_for_line(&["status page serving"], Duration::from_secs(30));
            continue;
        }
        // As an operator types it: through a shell (quotes and all), the binaries on the PATH.
        let bins = workspace_bin("projectorctl").parent().expect("bin dir").to_owned();
        let path = format!("{}:{}", bins.display(), std::env::var("PATH").unwrap_or_default());
        let out = command("sh").arg("-c").arg(&line).env("PATH", path).envs(env.iter().cloned()).output().expect("sh");
        assert!(out.status.success(), "`{line}` exits 0: {}{}", text(&out.stdout), text(&out.stderr));
    }
}

/// `--json` is global like the configuration flags: before or after the subcommand.
#[test]
fn json_works_before_the_subcommand_too() {
    let redis = RedisServer::start();
    let env = vec![("PROJECTOR_REDIS_URL".to_owned(), redis.url())];
    for args in [&["--json", "slots", "inspect"][..], &["slots", "--json", "inspect"], &["slots", "inspect", "--json"]] {
        let out = run("projectorctl", &env, args);
        assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
        assert_eq!(json_of(&out)["configured"], 50, "{args:?}");
    }
}

/// A URL with a user and a password, through every path that can print one: a config error
/// (environment and flag, Redis and PostgreSQL), `config --show`, a connection that fails, the
/// logs of a process that starts, and the status page. The password appears in none of them.
#[test]
fn no_password_is_printed_on_any_path() {
    const SECRET: &str = "hunter2";
    let bad_port = format!("redis://app:{SECRET}@redis.internal:notaport");
    let closed = format!("redis://app:{SECRET}@127.0.0.1:{}", free_port());
    let pg = format!("postgresql://app:{SECRET}@db.internal:notaport/billing");
    let leaks = |what: &str, out: &Output| {
        let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
        assert!(!all.contains(SECRET), "{what} printed the password: {all}");
        assert!(!all.is_empty(), "{what} said nothing");
    };
    let env = |pairs: &[(&str, &str)]| -> Vec<(String, String)> { pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect() };
    for (bin, args) in [("projector-worker", &["run"][..]), ("projector-scheduler", &["run-once"][..]), ("projectorctl", &["status"][..])] {
        let out = run(bin, &env(&[("PROJECTOR_REDIS_URL", &bad_port)]), args);
        assert_eq!(out.status.code(), Some(2), "{bin}: {}", text(&out.stderr));
        leaks(&format!("{bin} with a bad URL in the environment"), &out);
        let flagged = [args, &["--redis-url", &bad_port][..]].concat();
        if bin != "projectorctl" {
            leaks(&format!("{bin} with a bad --redis-url"), &run(bin, &[], &flagged));
        }
        leaks(&format!("{bin} with a bad PostgreSQL URL"), &run(bin, &env(&[("PROJECTOR_SINK_POSTGRES_URL", &pg)]), args));
        // Unreachable: some processes exit, the worker starts and retries; either way it says so.
        let mut cmd = command(workspace_bin(bin));
        cmd.args(args).env("PROJECTOR_REDIS_URL", &closed).env("RUST_LOG", "debug").stdout(Stdio::null());
        let p = projector_tests::Proc::spawn(cmd);
        p.wait_for_line(&["127.0.0.1"], Duration::from_secs(30));
        let said = p.stderr();
        drop(p);
        assert!(!said.contains(SECRET), "{bin} with Redis unreachable printed the password: {said}");
    }
    for show in [&["config", "--show"][..], &["config"][..]] {
        let out = run(
            "projector-worker",
            &env(&[("PROJECTOR_REDIS_URL", &closed), ("PROJECTOR_SINK_POSTGRES_URL", &pg.replace("notaport", "5432"))]),
            show,
        );
        leaks("projector-worker config", &out);
    }
    // The page starts without Redis and names what failed in its place.
    let mut serve = command(workspace_bin("projectorctl"));
    serve.args(["serve", "--addr", "127.0.0.1:0"]).env("PROJECTOR_REDIS_URL", &closed).stdout(Stdio::null());
    let page = projector_tests::Proc::spawn(serve);
    let line = page.wait_for_line(&["status page serving"], Duration::from_secs(30));
    let addr = line.split("addr=").nth(1).and_then(|r| r.split_whitespace().next()).expect("addr").to_owned();
    for path in ["/", "/api/status"] {
        let body = projector_tests::http_get(&format!("http://{addr}{path}"));
        assert!(!body.contains(SECRET), "the page {path} printed the password: {body}");
    }
    assert!(!page.stderr().contains(SECRET), "the page's log printed the password: {}", page.stderr());
}

/// `--version` names the release and the commit the binary was built from, for every binary.
#[test]
fn every_binary_names_its_version_and_commit() {
    let head = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(projector_tests::manifest_path(".."))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| text(&o.stdout).trim().to_owned());
    for bin in ["projector-worker", "projector-scheduler", "projectorctl"] {
        let out = run(bin, &[], &["--version"]);
        assert!(out.status.success(), "{bin}: {}", text(&out.stderr));
        let printed = text(&out.stdout);
        let expected = format!("{bin} {} (commit {})\n", env!("CARGO_PKG_VERSION"), head.as_deref().unwrap_or("unknown"));
        assert_eq!(printed, expected, "{bin} --version");
    }
}
