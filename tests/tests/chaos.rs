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
    let mut c = cluster(RedisServer::start_with(&["--appendonly", "yes", "--appendfsync", "always"]), "1s", &[]);
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
    wait_until(Duration::from_secs(30), "the victim exits after its grace", || !victim.is_running());
    assert!(victim.stderr().contains("did not finish within worker.shutdown_grace"), "{}", victim.stderr());
    assert!(victim.stderr().contains("slot kept"), "the dropped jobs kept their slots: {}", victim.stderr());
    // Its queries still run at the service while another worker takes the rest of the run.
    assert_eq!(c.fake.stats_now()["in_flight"].as_u64(), Some(3), "the victim's queries outlive it");
    let _other = c.worker(&["--slots-limit", "3", "--concurrency", "16"]);
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
