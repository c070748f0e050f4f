//! The promise under fire, with real processes: the query service (a fake that observes instead
//! of refusing: its concurrency limit is far above the slot limit) never sees more concurrent
//! queries than the slot limit, and every org of a run ends in exactly one recorded outcome, none
//! foreign, through worker pauses past their lease, Redis restarts and stalls, and poison queue
//! entries. After each fault a follow-up run on the same processes completes every org.

use std::process::Stdio;
use std::time::Duration;

use projector_shared::slots::{RedisSlotLimiter, RedisSlotSettings};
use projector_tests::fleet::Fleet;
use projector_tests::{Proc, RedisServer, command, wait_until, workspace_bin};
use serde_json::Value;

const FAKE: &str = env!("CARGO_BIN_EXE_projector-fake-snuba");

/// The chaos tests' fleet: the query service observes and never refuses (its concurrency limit
/// is far above the slot limit), so any concurrency above the limit shows in max_in_flight.
fn cluster(redis: RedisServer, fake_latency: &str, extra: &[(&str, &str)]) -> Fleet {
    Fleet::start(redis, FAKE, &["--latency", fake_latency, "--concurrency-limit", "10000"], extra)
}

/// The slot holders in Redis now.
fn holders(c: &Fleet) -> Vec<projector_shared::slots::Holder> {
    let url = c.redis.url();
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime").block_on(async {
            RedisSlotLimiter::new(&url, RedisSlotSettings::new(1, Duration::from_secs(1))).expect("limiter").inspect().await
        })
    })
    .join()
    .expect("inspect thread")
    .map(|s| s.holders)
    .unwrap_or_default()
}

/// A GC pause or VM stall: a worker whose queries are running at the service is stopped for
/// longer than its lease. Its slots must not be granted again before those queries have ended.
#[test]
fn a_worker_paused_past_its_lease_never_pushes_the_service_past_the_limit() {
    // Queries of 4 s against a 1 s lease: a plain lease would be reclaimed mid-query.
    let c = cluster(
        RedisServer::start(),
        "4s",
        &[
            ("PROJECTOR_SLOTS_LEASE_TTL", "1s"),
            ("PROJECTOR_QUERY_MAX_DURATION", "5s"),
            ("PROJECTOR_QUERY_MAX_DURATION_BELOW_SERVICE", "true"),
        ],
    );
    let victim = c.worker(&["--slots-limit", "3", "--concurrency", "3"]);
    let first = c.run(3);
    let pid = victim.pid().to_string();
    // Its three queries are running at the service when it stops.
    wait_until(Duration::from_secs(60), "the victim's 3 queries are in flight", || c.fake.stats_now()["in_flight"].as_u64() == Some(3));
    victim.signal("STOP");
    // Another worker, and a run whose jobs only it can take, wait for slots meanwhile.
    let _other = c.worker(&["--slots-limit", "3", "--concurrency", "16"]);
    let second = c.run(6);
    // Keep the victim stopped until its leases are older than two lease_ttls on Redis's clock:
    // plain leases would have been reclaimed and granted to the waiting jobs by then.
    wait_until(Duration::from_secs(30), "the victim's leases are 2.5 × lease_ttl old", || {
        let mine: Vec<_> = holders(&c).into_iter().filter(|h| h.process.contains(&pid)).collect();
        mine.is_empty() || mine.iter().all(|h| h.age >= Duration::from_millis(2500))
    });
    victim.signal("CONT");
    let first = c.finish(first, 3);
    let second = c.finish(second, 6);
    assert!(c.max_in_flight() <= 3, "the service saw {} concurrent queries, limit 3", c.max_in_flight());
    assert_eq!(first.get("completed").copied().unwrap_or(0), 3, "{first:?}");
    assert_eq!(second.get("completed").copied().unwrap_or(0), 6, "{second:?}");
}

/// Redis killed and restarted (empty): the next run loses no org to a stale connection.
#[test]
fn a_redis_restart_loses_no_org_of_the_next_run() {
    let mut c = cluster(RedisServer::start(), "20ms", &[]);
    let w = c.worker(&["--slots-limit", "5", "--concurrency", "16"]);
    let first = c.run(10);
    assert_eq!(c.finish(first, 10).get("completed").copied(), Some(10));
    // Restart Redis underneath the worker, whose pooled connections all die.
    c.redis.kill();
    w.wait_for_line(&["job loop failed"], Duration::from_secs(30));
    c.redis.restart();
    let run = c.run(50);
    let outcomes = c.finish(run, 50);
    assert_eq!(outcomes.get("completed").copied(), Some(50), "no org lost to a dead connection: {outcomes:?}");
    assert!(c.max_in_flight() <= 5);
}

/// Redis stalls (SIGSTOP) for 3 s while a run is in flight: the run still completes, within the
/// limit, and every org is accounted for.
#[test]
fn a_redis_stall_mid_run_keeps_the_bound_and_accounts_for_every_org() {
    let c = cluster(RedisServer::start(), "300ms", &[]);
    let _w = c.worker(&["--slots-limit", "4", "--concurrency", "16", "--slots-max-wait", "5m"]);
    let run = c.run(40);
    wait_until(Duration::from_secs(60), "queries are running", || c.fake.stats_now()["requests"].as_u64().unwrap_or(0) >= 4);
    let pid = c.redis.pid().to_string();
    let status = std::process::Command::new("kill").args(["-STOP", &pid]).status().expect("kill");
    assert!(status.success());
    // Redis is frozen: nothing of ours can move, so wait on the query service's side.
    wait_until(Duration::from_secs(30), "the in-flight queries drained at the service", || {
        c.fake.stats_now()["in_flight"].as_u64() == Some(0)
    });
    let frozen_at = std::time::Instant::now();
    wait_until(Duration::from_secs(10), "3 s of stall", || frozen_at.elapsed() >= Duration::from_secs(3));
    std::process::Command::new("kill").args(["-CONT", &pid]).status().expect("kill");
    let outcomes = c.finish(run, 40);
    assert!(c.max_in_flight() <= 4, "{}", c.max_in_flight());
    assert_eq!(outcomes.values().sum::<u64>(), 40, "{outcomes:?}");
    let again = c.run(10);
    assert_eq!(c.finish(again, 10).get("completed").copied(), Some(10), "the follow-up run completes");
}

/// Poison queue entries (an id without data, data without apalis metadata, a payload that is
/// not JSON) are moved to the dead set with their reason, and the job loop goes on.
#[test]
fn poison_queue_entries_are_quarantined_and_the_loop_goes_on() {
    let c = cluster(RedisServer::start(), "10ms", &[]);
    let config = projector_queue::config(projector_shared::keys::KeyLayout::Server);
    {
        let mut conn = c.redis.connection();
        let active = config.active_jobs_list();
        let data = config.job_data_hash();
        // An id with no data at all.
        let _: () = redis::cmd("RPUSH").arg(&active).arg("poison-no-data").query(&mut conn).expect("rpush");
        // Data, but no metadata.
        let _: () =
            redis::cmd("HSET").arg(&data).arg("poison-no-meta").arg("{\"run_id\":\"run-x\",\"org_id\":1}").query(&mut conn).expect("hset");
        let _: () = redis::cmd("RPUSH").arg(&active).arg("poison-no-meta").query(&mut conn).expect("rpush");
    }
    let w = c.worker(&[]);
    let run = c.run(5);
    assert_eq!(c.finish(run, 5).get("completed").copied(), Some(5), "the loop went on past the poison");
    let mut conn = c.redis.connection();
    let dead: Vec<String> = redis::cmd("SMEMBERS").arg(config.dead_jobs_set()).query(&mut conn).expect("smembers");
    for id in ["poison-no-data", "poison-no-meta"] {
        assert!(dead.contains(&id.to_owned()), "{id} quarantined: {dead:?}");
        let reason: Option<String> =
            redis::cmd("HGET").arg(format!("{}:{id}", config.job_meta_hash())).arg("projector_reason").query(&mut conn).expect("hget");
        assert!(reason.is_some_and(|r| !r.is_empty()), "{id} has its reason recorded");
    }
    let restarts = w.stderr().matches("job loop stopped on a poison queue entry").count();
    assert!((1..=2).contains(&restarts), "one restart per poison entry at most, not a loop: {}", w.stderr());
}

/// Nothing grows without bound: after many jobs and job-loop restarts, every key Projector or
/// apalis wrote has a TTL, or is one of the few whose size is bounded by what is live.
#[test]
fn every_key_has_a_ttl_or_a_bounded_size_after_many_jobs_and_restarts() {
    let c = cluster(RedisServer::start(), "1ms", &[]);
    let w = c.worker(&["--concurrency", "32"]);
    for orgs in [100, 100] {
        let run = c.run(orgs);
        c.finish(run, orgs);
    }
    // Job-loop restarts: each leaves apalis worker metadata behind unless it is cleaned up.
    let pid = c.redis.pid().to_string();
    for _ in 0..2 {
        std::process::Command::new("kill").args(["-STOP", &pid]).status().expect("kill");
        let failures = w.stderr().matches("job loop failed").count();
        wait_until(Duration::from_secs(30), "the job loop fails", || w.stderr().matches("job loop failed").count() > failures);
        std::process::Command::new("kill").args(["-CONT", &pid]).status().expect("kill");
    }
    let run = c.run(50);
    c.finish(run, 50);
    // The vacuum runs every 60 housekeeping rounds (6 s here).
    let config = projector_queue::config(projector_shared::keys::KeyLayout::Server);
    let mut conn = c.redis.connection();
    wait_until(Duration::from_secs(60), "finished jobs are vacuumed", || {
        redis::cmd("HLEN").arg(config.job_data_hash()).query::<u64>(&mut conn).expect("hlen") == 0
    });
    // Live, bounded by what is in flight or configured, and named here on purpose.
    let bounded = [
        config.active_jobs_list(),
        config.scheduled_jobs_set(),
        config.dead_jobs_set(),
        config.workers_set(),
        config.signal_list(),
        projector_queue::QUEUES_LIST.to_owned(),
    ];
    let keys: Vec<String> = redis::cmd("KEYS").arg("*").query(&mut conn).expect("keys");
    let mut unbounded = Vec::new();
    for key in keys {
        let ttl: i64 = redis::cmd("PTTL").arg(&key).query(&mut conn).expect("pttl");
        if ttl < 0 && !bounded.contains(&key) {
            unbounded.push(key);
        }
    }
    assert!(unbounded.is_empty(), "keys with no TTL and no bound: {unbounded:?}");
}

/// The scheduler is killed (SIGKILL) in the middle of a fan-out; `run-once --resume <run_id>`
/// finishes that same run from its stored plan: every org planned once, queried once.
#[test]
fn a_fan_out_killed_half_way_is_finished_by_run_id_without_querying_any_org_twice() {
    let c = cluster(RedisServer::start(), "1ms", &[("PROJECTOR_SINK_KIND", "discard")]);
    let orgs = 600u64;
    let mut cmd = command(workspace_bin("projector-scheduler"));
    cmd.args(["run-once", "--batch-delay", "0s", "--orgs", &orgs.to_string()])
        .envs(c.env.iter().cloned())
        .env("RUST_LOG", "debug")
        .stdout(Stdio::null());
    let fan_out = Proc::spawn(cmd);
    // Killed once its plan is stored, while it enqueues (or before it could).
    let planned = fan_out.wait_for_line(&["run planned"], Duration::from_secs(60));
    drop(fan_out);
    let run_id = planned.split("run_id=").nth(1).and_then(|r| r.split_whitespace().next()).expect("run id").to_owned();
    let _w = c.worker(&["--concurrency", "64"]);
    let mut resume = command(workspace_bin("projector-scheduler"));
    resume
        .args(["run-once", "--resume", &run_id, "--batch-delay", "0s", "--wait", "--wait-timeout", "150s"])
        .envs(c.env.iter().cloned())
        .stdout(Stdio::piped());
    let outcomes = c.finish(Proc::spawn(resume), orgs);
    assert_eq!(outcomes.get("completed").copied(), Some(orgs), "{outcomes:?}");
    assert_eq!(c.fake.stats_now()["requests"].as_u64(), Some(orgs), "each org queried exactly once");
    // Resuming again enqueues nothing new.
    let again = command(workspace_bin("projector-scheduler"))
        .args(["run-once", "--resume", &run_id])
        .envs(c.env.iter().cloned())
        .output()
        .expect("resume again");
    assert!(
        String::from_utf8_lossy(&again.stdout).contains(&format!("0 jobs enqueued, {orgs} already enqueued")),
        "{}",
        String::from_utf8_lossy(&again.stdout)
    );
}

/// Redis with AOF killed (SIGKILL) while slots are held and restarted from its log: the restored
/// leases of queries that finished meanwhile are released by the retries, `run-once --wait`
/// follows the run through the outage, and a follow-up run is not stalled by dead leases.
#[test]
fn a_redis_restart_from_aof_loses_no_org_and_leaves_no_dead_lease() {
    // The fake is the service here and ends every query within 1 s, so 2 s is its bound: a job
    // the failing loop drops mid-query keeps its slot that long (not Snuba's 60 s), as it must.
    let mut c = cluster(
        RedisServer::start_with(&["--appendonly", "yes", "--appendfsync", "always"]),
        "1s",
        &[("PROJECTOR_QUERY_MAX_DURATION", "2s"), ("PROJECTOR_QUERY_MAX_DURATION_BELOW_SERVICE", "true")],
    );
    // A short max_wait: slots held by dead leases would show as skipped_no_slot.
    let w = c.worker(&["--slots-limit", "5", "--concurrency", "16", "--slots-max-wait", "5s"]);
    let run = c.run(20);
    wait_until(Duration::from_secs(60), "5 queries in flight", || c.fake.stats_now()["in_flight"].as_u64() == Some(5));
    c.redis.kill();
    w.wait_for_line(&["job loop failed"], Duration::from_secs(30));
    c.redis.restart();
    let first = c.finish(run, 20);
    assert_eq!(first.get("completed").copied(), Some(20), "no org lost to the outage: {first:?} holders {:?}\n{}", holders(&c), w.stderr());
    wait_until(Duration::from_secs(30), "no lease outlives its query", || holders(&c).is_empty());
    let again = c.run(10);
    let second = c.finish(again, 10);
    assert_eq!(second.get("completed").copied(), Some(10), "the follow-up run is not stalled: {second:?}\n{}", w.stderr());
    assert!(c.max_in_flight() <= 5, "{}", c.max_in_flight());
}

/// SIGTERM with `worker.shutdown_grace` shorter than the queries running: the worker drops its
/// jobs at the grace's end and exits, but a slot whose query was sent and not answered stays
/// leased until that query must have ended at the service, so the worker that takes over the
/// rest of the run never joins the queries the service still runs.
#[test]
fn a_worker_stopped_past_its_grace_mid_query_keeps_its_slots_until_the_queries_must_have_ended() {
    // The fake is the service here: it ends every query within 6 s, so 8 s is its bound.
    let c = cluster(
        RedisServer::start(),
        "6s",
        &[("PROJECTOR_QUERY_MAX_DURATION", "8s"), ("PROJECTOR_QUERY_MAX_DURATION_BELOW_SERVICE", "true")],
    );
    let mut victim = c.worker(&["--slots-limit", "3", "--concurrency", "3", "--set", "worker.shutdown_grace=500ms"]);
    let run = c.run(6);
    wait_until(Duration::from_secs(60), "the victim's 3 queries are in flight", || c.fake.stats_now()["in_flight"].as_u64() == Some(3));
    victim.signal("TERM");
    // Another worker takes the rest of the run while the victim's queries still run at the service.
    let _other = c.worker(&["--slots-limit", "3", "--concurrency", "16"]);
    wait_until(Duration::from_secs(30), "the victim exits after its grace", || !victim.is_running());
    assert!(victim.stderr().contains("did not finish within worker.shutdown_grace"), "{}", victim.stderr());
    assert!(victim.stderr().contains("slot kept"), "the dropped jobs kept their slots: {}", victim.stderr());
    let outcomes = c.finish(run, 6);
    assert!(c.max_in_flight() <= 3, "the service saw {} concurrent queries, limit 3\n{}", c.max_in_flight(), c.worker_tails());
    assert_eq!(outcomes.get("completed").copied(), Some(6), "{outcomes:?}");
}

/// Redis stalls while long queries run: the job loop fails and restarts, dropping the jobs in
/// flight, and those jobs come back to be run again. Their first queries still run at the
/// service, so their slots stay held until those queries must have ended: the service never
/// sees more than the limit.
#[test]
fn a_redis_stall_during_long_queries_never_gives_back_a_slot_whose_query_still_runs() {
    let c = cluster(
        RedisServer::start(),
        "8s",
        &[("PROJECTOR_QUERY_MAX_DURATION", "10s"), ("PROJECTOR_QUERY_MAX_DURATION_BELOW_SERVICE", "true")],
    );
    let w = c.worker(&["--slots-limit", "3", "--concurrency", "16", "--slots-max-wait", "5m"]);
    let run = c.run(6);
    wait_until(Duration::from_secs(60), "3 queries in flight", || c.fake.stats_now()["in_flight"].as_u64() == Some(3));
    let pid = c.redis.pid().to_string();
    assert!(std::process::Command::new("kill").args(["-STOP", &pid]).status().expect("kill").success());
    // Redis is frozen until the job loop gives up on it, which drops the jobs in flight (a
    // stopped Redis is still killed with the test if the line never comes).
    w.wait_for_line(&["job loop failed"], Duration::from_secs(20));
    std::process::Command::new("kill").args(["-CONT", &pid]).status().expect("kill");
    let outcomes = c.finish(run, 6);
    assert!(c.max_in_flight() <= 3, "the service saw {} concurrent queries, limit 3", c.max_in_flight());
    assert_eq!(outcomes.values().sum::<u64>(), 6, "{outcomes:?}");
    assert_eq!(outcomes.get("completed").copied(), Some(6), "{outcomes:?}");
}

/// `projectorctl <args> --json`, parsed.
fn ctl(env: &[(String, String)], args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.push("--json");
    projector_tests::fleet::json_of(&projector_tests::fleet::run("projectorctl", env, &all))
}

/// More orgs than `batch.delay` can release before the deadline: 200 orgs in batches of 5 at
/// most 1 s apart would take 39 s against a 20 s deadline. The pacing tightens so the releases end
/// within half of it, the plan and `runs show` say so, and every org completes instead of the
/// late batches ending at the deadline without a query.
#[test]
fn a_run_of_more_orgs_than_batch_delay_fits_is_released_in_time_and_completes() {
    let c = cluster(RedisServer::start(), "20ms", &[]);
    let _w = c.worker(&["--concurrency", "16"]);
    let args = ["run-once", "--orgs", "200", "--set", "batch.size=5", "--batch-delay", "1s", "--deadline", "20s"];
    let dry = projector_tests::fleet::run("projector-scheduler", &c.env, &[&args[..], &["--dry-run"]].concat());
    let plan = projector_tests::fleet::text(&dry.stdout);
    assert!(plan.contains("tightened") && plan.contains("from batch.delay 1s"), "the dry run says the pacing was tightened: {plan}");
    let out = projector_tests::fleet::run("projector-scheduler", &c.env, &args);
    let stdout = projector_tests::fleet::text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", projector_tests::fleet::text(&out.stderr));
    let run_id = stdout.split_whitespace().nth(1).expect("run id").trim_end_matches(':').to_owned();
    projector_tests::wait_until(Duration::from_secs(60), "the run finishes", || ctl(&c.env, &["runs", "show", &run_id])["state"] == "done");
    let shown = ctl(&c.env, &["runs", "show", &run_id]);
    assert_eq!(shown["outcomes"]["completed"], 200, "every org released in time completes: {shown}");
    assert_eq!(shown["pacing"]["tightened"], true, "{shown}");
    let delay = shown["pacing"]["batch_delay_ms"].as_u64().expect("delay");
    assert!(delay * 39 <= 10_000, "the releases end within half of the 20 s deadline: {delay} ms apart");
}

/// A cron every second and a run far longer than its deadline (15 s): with `overlap = skip` every
/// tick while the run is open is skipped, and by the deadline more skipped ticks are newer than
/// the run than any window of recent runs would hold. The deadline sweep and the overlap check
/// read the index of open runs, so the run still ends within a few seconds of its deadline, no
/// second run is ever open beside it, and `status` shows the open run, not the newest tick.
#[test]
fn a_run_behind_many_skipped_ticks_ends_at_its_deadline_and_no_second_run_overlaps_it() {
    let redis = RedisServer::start();
    let fake = projector_tests::FakeSnuba::start(FAKE, &["--latency", "1s"]);
    let env = projector_tests::fleet::base_env(&redis, &fake.url());
    let _w = projector_tests::fleet::worker(&env, &["--concurrency", "1"]);
    let mut cmd = projector_tests::command(projector_tests::workspace_bin("projector-scheduler"));
    cmd.args(["serve", "--orgs", "40", "--batch-delay", "0s", "--set", "schedule.cron=* * * * * *", "--set", "schedule.overlap=skip"])
        .args(["--set", "runs.deadline=15s"])
        .envs(env.iter().cloned())
        .stdout(std::process::Stdio::null());
    let serve = Proc::spawn(cmd);
    let (mut most_open, mut first, mut shown_while_open) = (0, None::<Value>, None::<Value>);
    let mut runs = Value::Null;
    let ended = projector_tests::holds_within(Duration::from_secs(60), || {
        runs = ctl(&env, &["runs", "list", "--limit", "100"]);
        let list = runs["runs"].as_array().cloned().unwrap_or_default();
        let open: Vec<&Value> =
            list.iter().filter(|r| ["running", "fanning out"].contains(&r["state"].as_str().unwrap_or_default())).collect();
        most_open = most_open.max(open.len());
        let skipped = list.iter().filter(|r| r["state"] == "skipped").count();
        if first.is_none() && open.len() == 1 && skipped >= 11 {
            // Eleven ticks are newer than the open run, more than a window of ten recent runs
            // would hold: status must still show it.
            first = Some(open[0].clone());
            shown_while_open = Some(ctl(&env, &["status"]));
        }
        let Some(run) = &first else { return false };
        list.iter().any(|r| r["run_id"] == run["run_id"] && r["state"] == "done")
    });
    assert!(ended, "the first run ended: {runs}\n{}", serve.stderr());
    assert!(most_open <= 1, "at most one run open at a time, saw {most_open}: {runs}");
    let run = first.expect("the first run");
    let status = shown_while_open.expect("status while open");
    assert_eq!(status["run"]["run_id"], run["run_id"], "status shows the open run first: {status}");
    let run_id = run["run_id"].as_str().expect("run id");
    let shown = ctl(&env, &["runs", "show", run_id]);
    let at = |field: &str| {
        chrono::DateTime::parse_from_rfc3339(shown[field].as_str().unwrap_or_else(|| panic!("{field}: {shown}"))).expect("rfc3339")
    };
    let late = (at("finished") - at("deadline")).num_milliseconds();
    assert!(late <= 3_000, "the run ended {late} ms after its deadline: {shown}");
    assert!(shown["outcomes"]["deadline"].as_u64().is_some_and(|n| n > 0), "{shown}");
}

/// kill -9 of a worker whose jobs wait in the slot queue ahead of another worker's: the dead
/// process's waiters must not be handed the slots its queries free (each hand-off would sit
/// reserved for a waiter that never collects it). Their entries lapse about a second after they
/// would have re-checked, so the fleet's longest stretch without a query start after the kill is
/// at most `slots.lease_ttl` plus one second (the dead holders' leases run out first).
#[test]
fn a_killed_workers_waiters_take_no_hand_off_and_the_fleet_keeps_querying() {
    let c = cluster(
        RedisServer::start(),
        "500ms",
        &[
            ("PROJECTOR_SLOTS_LEASE_TTL", "2s"),
            ("PROJECTOR_QUERY_MAX_DURATION", "1s"),
            ("PROJECTOR_QUERY_MAX_DURATION_BELOW_SERVICE", "true"),
            ("PROJECTOR_SLOTS_MAX_WAIT", "5m"),
        ],
    );
    let victim = c.worker(&["--slots-limit", "4", "--concurrency", "32"]);
    let run = c.run(300);
    let pid = victim.pid().to_string();
    let waiting_of = |needle: &str| {
        let url = c.redis.url();
        let needle = needle.to_owned();
        std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime").block_on(async {
                let l = RedisSlotLimiter::new(&url, RedisSlotSettings::new(1, Duration::from_secs(1))).expect("limiter");
                l.inspect().await.map(|s| s.waiters.iter().filter(|(_, info)| info.contains(&needle)).count()).unwrap_or(0)
            })
        })
        .join()
        .expect("inspect thread")
    };
    wait_until(Duration::from_secs(60), "the victim has 20 jobs waiting for a slot", || waiting_of(&pid) >= 20);
    // A second worker queues behind the victim's waiters.
    let other = c.worker(&["--slots-limit", "4", "--concurrency", "8"]);
    let other_pid = other.pid().to_string();
    wait_until(Duration::from_secs(30), "the other worker waits too", || waiting_of(&other_pid) >= 4);
    let before: Vec<u64> = timeline(&c);
    drop(victim); // kill -9
    let outcomes = c.finish(run, 300);
    assert_eq!(outcomes.get("completed").copied(), Some(300), "{outcomes:?}");
    let starts = timeline(&c);
    let after = &starts[before.len().saturating_sub(1)..];
    let longest = after.windows(2).map(|w| w[1].saturating_sub(w[0])).max().unwrap_or(0);
    eprintln!("the longest stretch without a query start after the kill: {longest} ms");
    assert!(longest <= 3_000, "the longest stretch without a query start after the kill was {longest} ms (lease_ttl 2 s + 1 s)");
    assert!(c.max_in_flight() <= 4, "{}", c.max_in_flight());
}

/// The query starts the fake has seen, in ms since it started, oldest first.
fn timeline(c: &Fleet) -> Vec<u64> {
    let t: serde_json::Value =
        serde_json::from_str(&projector_tests::http_get(&format!("{}/timeline", c.fake.url()))).expect("timeline JSON");
    t["starts_ms"].as_array().expect("starts_ms").iter().filter_map(serde_json::Value::as_u64).collect()
}
