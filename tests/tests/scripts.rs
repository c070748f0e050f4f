//! Each Redis script in `lua/` against a real redis-server, through the Rust function that calls
//! it: the contract in the script's header (keys, arguments, reply) is what is checked.
//! `projection_write` is checked in `query.rs` (idempotent, stale writes refused, pruning).

use std::time::Duration;

use chrono::Utc;
use projector_shared::adaptive::{AdaptiveSettings, SignalCounts};
use projector_shared::keys::SlotKeys;
use projector_shared::redis_conn::RedisConn;
use projector_shared::run::{Admission, Outcome, Recorded};
use projector_shared::run_record::{RunRecords, RunState};
use projector_shared::slots::{Acquire, RedisSlotLimiter, RedisSlotSettings, SlotLimiter, SlotRequest};
use projector_shared::trail::{Attempt, Step, Why};
use projector_shared::{OrgId, RunId};
use projector_tests::RedisServer;

use projector_tests::runtime;

fn manager(server: &RedisServer) -> RedisConn {
    projector_shared::redis_conn::connection_manager(server.url(), Duration::from_secs(2)).expect("connection manager").1
}

fn limiter(server: &RedisServer, limit: u32) -> RedisSlotLimiter {
    RedisSlotLimiter::new(server.url(), RedisSlotSettings::new(limit, Duration::from_secs(30))).expect("limiter")
}

async fn acquire(l: &RedisSlotLimiter, org: u64, max_wait: Duration) -> Acquire {
    l.acquire(SlotRequest::new("scripts-test", OrgId(org)), max_wait).await.expect("redis answers")
}

/// A task waiting (up to 10 s) for a slot for `org`, returned once it is in the queue.
async fn queued_waiter(l: &RedisSlotLimiter, org: u64) -> tokio::task::JoinHandle<Acquire> {
    let waiter = tokio::spawn({
        let l = l.clone();
        async move { acquire(&l, org, Duration::from_secs(10)).await }
    });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while l.inspect().await.expect("inspect").waiters.is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "the waiter never queued");
        tokio::task::yield_now().await;
    }
    waiter
}

#[test]
fn slots_acquire_grants_up_to_the_limit_with_growing_tokens_then_answers_a_position() {
    let server = RedisServer::start();
    runtime().block_on(async {
        let l = limiter(&server, 2);
        let (Acquire::Granted(a), Acquire::Granted(b)) = (acquire(&l, 1, Duration::ZERO).await, acquire(&l, 2, Duration::ZERO).await)
        else {
            panic!("two slots under limit 2");
        };
        assert!(b.fencing_token() > a.fencing_token(), "tokens grow: {a:?} {b:?}");
        match acquire(&l, 3, Duration::ZERO).await {
            Acquire::TimedOut(t) => assert_eq!((t.in_use, t.limit, t.queue_position), (2, 2, 1)),
            Acquire::Granted(p) => panic!("a third slot under limit 2: {p:?}"),
        }
        let state = l.inspect().await.expect("inspect");
        assert_eq!(state.holders.len(), 2);
        let mut orgs: Vec<_> = state.holders.iter().map(|h| h.org_id.as_str()).collect();
        orgs.sort_unstable();
        assert_eq!(orgs, vec!["1", "2"]);
    });
}

#[test]
fn slots_cancel_takes_the_waiter_out_of_the_queue() {
    let server = RedisServer::start();
    runtime().block_on(async {
        let l = limiter(&server, 1);
        let _held = acquire(&l, 1, Duration::ZERO).await;
        let gave_up = acquire(&l, 2, Duration::from_millis(200)).await;
        assert!(matches!(gave_up, Acquire::TimedOut(_)), "{gave_up:?}");
        let state = l.inspect().await.expect("inspect");
        assert!(state.waiters.is_empty(), "a waiter that gave up leaves the queue: {state:?}");
    });
}

#[test]
fn slots_release_frees_the_slot_and_hands_it_to_the_first_waiter() {
    let server = RedisServer::start();
    runtime().block_on(async {
        let l = limiter(&server, 1);
        let Acquire::Granted(held) = acquire(&l, 1, Duration::ZERO).await else { panic!("first slot") };
        let waiter = queued_waiter(&l, 2).await;
        held.release().await.expect("release");
        let Acquire::Granted(next) = waiter.await.expect("waiter") else { panic!("the waiter was handed the slot") };
        let state = l.inspect().await.expect("inspect");
        assert_eq!(state.holders.len(), 1);
        assert_eq!(state.holders[0].lease_id, next.lease_id());
        assert_eq!(state.holders[0].org_id, "2");
    });
}

#[test]
fn slot_keys_always_expire_and_are_refreshed_once_an_hour_not_on_every_call() {
    let server = RedisServer::start();
    let keys = SlotKeys::new("default");
    let week_ms: i64 = 7 * 24 * 3_600_000;
    let mut sync = server.connection();
    let pttl = |key: &str, conn: &mut redis::Connection| -> i64 { redis::cmd("PTTL").arg(key).query(conn).expect("pttl") };
    let set_pttl = |key: &str, ms: i64, conn: &mut redis::Connection| {
        let _: () = redis::cmd("PEXPIRE").arg(key).arg(ms).query(conn).expect("pexpire");
    };
    runtime().block_on(async {
        let l = limiter(&server, 2);
        let Acquire::Granted(first) = acquire(&l, 1, Duration::ZERO).await else { panic!("first slot") };
        let lease_keys = [keys.limit(), keys.leases(), keys.holders(), keys.fence()];
        for key in &lease_keys {
            assert!(pttl(key, &mut sync) > week_ms - 60_000, "{key} gets its TTL when it is created");
        }
        // Less than an hour of TTL gone: the next grant leaves the TTLs alone (one PTTL, no PEXPIRE).
        for key in &lease_keys {
            set_pttl(key, week_ms - 1_800_000, &mut sync);
        }
        let Acquire::Granted(second) = acquire(&l, 2, Duration::ZERO).await else { panic!("second slot") };
        for key in &lease_keys {
            assert!(pttl(key, &mut sync) <= week_ms - 1_800_000, "{key} is not refreshed on every grant");
        }
        second.release().await.expect("release");
        // More than an hour gone: the next grant refreshes every lease key.
        for key in &lease_keys {
            set_pttl(key, week_ms - 7_200_000, &mut sync);
        }
        let Acquire::Granted(third) = acquire(&l, 3, Duration::ZERO).await else { panic!("third slot") };
        for key in &lease_keys {
            assert!(pttl(key, &mut sync) > week_ms - 60_000, "{key} is refreshed an hour after the last refresh");
        }
        // The waiter keys get their TTL when the queue is created.
        let waiter = queued_waiter(&l, 4).await;
        for key in [keys.seq(), keys.queue(), keys.waiter_deadlines(), keys.waiting()] {
            assert!(pttl(&key, &mut sync) > week_ms - 60_000, "{key} gets its TTL when the queue is created");
        }
        first.release().await.expect("release");
        let Acquire::Granted(handed) = waiter.await.expect("waiter") else { panic!("the waiter was handed the slot") };
        assert!(handed.fencing_token() > third.fencing_token(), "fencing tokens keep growing");
    });
}

#[test]
fn slots_renew_keeps_a_lease_past_its_ttl_and_reports_a_lost_one() {
    let server = RedisServer::start();
    runtime().block_on(async {
        let ttl = Duration::from_millis(300);
        let l = RedisSlotLimiter::new(server.url(), RedisSlotSettings::new(1, ttl)).expect("limiter");
        let Acquire::Granted(held) = acquire(&l, 1, Duration::ZERO).await else { panic!("slot") };
        // Three lease lengths on: only renewals keep it.
        let other = RedisSlotLimiter::new(server.url(), RedisSlotSettings::new(1, ttl)).expect("limiter");
        assert!(matches!(acquire(&other, 2, ttl * 3).await, Acquire::TimedOut(_)), "renewed lease still holds the slot");
        assert!(!held.is_lost());
        // Dropped by an operator: the next renewal finds it gone and tells the holder.
        assert_eq!(l.reset().await.expect("reset"), 1);
        tokio::time::timeout(Duration::from_secs(5), held.lost()).await.expect("the holder learns its lease is gone");
    });
}

#[test]
fn slots_set_limit_stores_the_limit_and_serves_waiters_at_once() {
    let server = RedisServer::start();
    runtime().block_on(async {
        let l = limiter(&server, 1);
        let _held = acquire(&l, 1, Duration::ZERO).await;
        let waiter = queued_waiter(&l, 2).await;
        l.set_limit(2).await.expect("set limit");
        let served = waiter.await.expect("waiter");
        assert!(matches!(served, Acquire::Granted(_)), "raising the limit serves the waiter: {served:?}");
        assert_eq!(l.occupancy().await.expect("occupancy"), (2, Some(2)));
    });
}

#[test]
fn slots_reset_drops_every_lease_and_waiter_and_counts_the_leases() {
    let server = RedisServer::start();
    runtime().block_on(async {
        let l = limiter(&server, 2);
        let _a = acquire(&l, 1, Duration::ZERO).await;
        let _b = acquire(&l, 2, Duration::ZERO).await;
        assert_eq!(l.reset().await.expect("reset"), 2);
        let state = l.inspect().await.expect("inspect");
        assert!(state.holders.is_empty() && state.waiters.is_empty(), "{state:?}");
        assert_eq!(state.limit, Some(2), "the limit is kept");
    });
}

#[test]
fn slots_occupancy_counts_live_leases_on_redis_time_and_the_stored_limit() {
    let server = RedisServer::start();
    runtime().block_on(async {
        let l = limiter(&server, 3);
        assert_eq!(l.occupancy().await.expect("occupancy"), (0, None), "nothing stored before the first request");
        let _held = acquire(&l, 1, Duration::ZERO).await;
        assert_eq!(l.occupancy().await.expect("occupancy"), (1, Some(3)));
    });
}

fn adaptive(window_ms: u64) -> AdaptiveSettings {
    AdaptiveSettings {
        enabled: true,
        window: Duration::from_millis(window_ms),
        high_429_ratio: 0.05,
        increase_step_pct: 5.0,
        decrease_step_pct: 20.0,
        min_multiplier: 0.3,
        max_multiplier: 1.0,
        use_throttle_signal: true,
    }
}

fn answers(ok: u64, rate_limited: u64, throttled: u64) -> SignalCounts {
    SignalCounts { ok, rate_limited, throttled }
}

/// Waits (polling Redis time through the script) until the window opened by the first report ends.
async fn next_window(conn: &RedisConn, settings: &AdaptiveSettings) {
    let mut conn = conn.clone();
    let started: u64 =
        redis::cmd("HGET").arg(SlotKeys::new("default").adaptive()).arg("window_start_ms").query_async(&mut conn).await.expect("hget");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (secs, micros): (u64, u64) = redis::cmd("TIME").query_async(&mut conn).await.expect("time");
        if secs * 1000 + micros / 1000 >= started + settings.window.as_millis() as u64 {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "the window never ended");
        tokio::task::yield_now().await;
    }
}

#[test]
fn slots_adaptive_closes_each_window_once_for_the_fleet_and_scales_the_limit_in_force() {
    let server = RedisServer::start();
    runtime().block_on(async {
        let settings = adaptive(300);
        let (a, b) = (limiter(&server, 50), limiter(&server, 50));
        let admin = manager(&server);
        // Two workers report into one window: 18 ok and 2 429s, a 10 % ratio. The first report
        // already crosses the bound with enough answers: the cut comes at once, not at the close.
        let first = a.report_answers(answers(9, 1, 0), &settings).await.expect("report");
        assert!(!first.closed && first.cut_early && (first.multiplier - 0.8).abs() < 1e-9, "{first:?}");
        assert_eq!((first.direction, first.signal.as_str(), first.limit_in_force), (Some("down"), "429", 40), "{first:?}");
        let second = b.report_answers(answers(9, 1, 0), &settings).await.expect("report");
        assert!(!second.cut_early && (second.multiplier - 0.8).abs() < 1e-9, "at most one cut per window: {second:?}");
        next_window(&admin, &settings).await;
        // Both report after the window ended, at once: exactly one closes it.
        let (ra, rb) = tokio::join!(a.report_answers(answers(0, 0, 0), &settings), b.report_answers(answers(0, 0, 0), &settings));
        let (ra, rb) = (ra.expect("report"), rb.expect("report"));
        assert_eq!(u8::from(ra.closed) + u8::from(rb.closed), 1, "{ra:?} {rb:?}");
        let closer = if ra.closed { &ra } else { &rb };
        assert_eq!((closer.direction, closer.signal.as_str(), closer.window), (Some("hold"), "429", (18, 2, 0)), "already cut: {closer:?}");
        assert!(
            (ra.multiplier - 0.8).abs() < 1e-9 && (rb.multiplier - 0.8).abs() < 1e-9,
            "one cut of 20 % for the fleet, not one per worker"
        );
        let o = a.occupancy_now().await.expect("occupancy");
        assert_eq!((o.limit, o.in_force), (Some(50), Some(40)), "the stored limit is kept; 40 is in force");
        // The limit in force is what acquire grants.
        let mut held = Vec::new();
        for org in 0..40 {
            held.push(acquire(&a, org, Duration::ZERO).await);
        }
        assert!(held.iter().all(|h| matches!(h, Acquire::Granted(_))));
        assert!(matches!(acquire(&b, 99, Duration::ZERO).await, Acquire::TimedOut(_)), "the 41st waits");

        // Next window: throttle warnings above the ratio cut gently (a quarter of 20 %).
        a.report_answers(answers(10, 0, 4), &settings).await.expect("report");
        next_window(&admin, &settings).await;
        let gentle = a.report_answers(answers(0, 0, 0), &settings).await.expect("report");
        assert_eq!((gentle.direction, gentle.signal.as_str()), (Some("down"), "throttle"), "{gentle:?}");
        assert!((gentle.multiplier - 0.76).abs() < 1e-9, "{gentle:?}");

        // Next window: nothing warns and every slot is held (demand fills the limit): up 5 %.
        a.report_answers(answers(20, 0, 0), &settings).await.expect("report");
        next_window(&admin, &settings).await;
        let up = a.report_answers(answers(0, 0, 0), &settings).await.expect("report");
        assert_eq!((up.direction, up.signal.as_str()), (Some("up"), "demand"), "{up:?}");
        assert!((up.multiplier - 0.798).abs() < 1e-9, "{up:?}");

        // Too few answers decide nothing.
        a.report_answers(answers(3, 3, 0), &settings).await.expect("report");
        next_window(&admin, &settings).await;
        let quiet = a.report_answers(answers(0, 0, 0), &settings).await.expect("report");
        assert!(quiet.closed && quiet.direction.is_none(), "{quiet:?}");

        a.reset_multiplier().await.expect("reset");
        assert_eq!(a.occupancy_now().await.expect("occupancy").in_force, Some(50));
    });
}

#[test]
fn promote_due_moves_only_due_jobs_in_order_past_one_chunk_and_wakes_fetchers() {
    let server = RedisServer::start();
    let config = projector_queue::config(projector_shared::keys::KeyLayout::Server);
    let mut conn = server.connection();
    let now = Utc::now().timestamp();
    // More due jobs than one script call moves (1,000), so the loop must call again.
    let due: Vec<String> = (0..2_500).map(|i| format!("due-{i:05}")).collect();
    for (i, id) in due.iter().enumerate() {
        let _: () =
            redis::cmd("ZADD").arg(config.scheduled_jobs_set()).arg(now - 10_000 + i as i64).arg(id).query(&mut conn).expect("zadd");
    }
    let _: () = redis::cmd("ZADD").arg(config.scheduled_jobs_set()).arg(now + 3_600).arg("later").query(&mut conn).expect("zadd");
    let mut listening = server.connection();
    listening.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    let mut pubsub = listening.as_pubsub();
    pubsub.subscribe(projector_shared::keys::JOBS_READY_CHANNEL).expect("subscribe");
    let moved = runtime().block_on(async { projector_queue::promote_due(&manager(&server)).await.expect("promote") });
    assert_eq!(moved, 2_500);
    pubsub.get_message().expect("a promotion announces ready jobs to idle job loops");
    pubsub.set_read_timeout(Some(Duration::from_millis(1))).expect("timeout");
    let again = runtime().block_on(async { projector_queue::promote_due(&manager(&server)).await.expect("promote") });
    assert_eq!(again, 0);
    let ready: Vec<String> = redis::cmd("LRANGE").arg(config.active_jobs_list()).arg(0).arg(-1).query(&mut conn).expect("lrange");
    assert_eq!(ready, due, "every due job, in release order");
    let left: Vec<String> = redis::cmd("ZRANGE").arg(config.scheduled_jobs_set()).arg(0).arg(-1).query(&mut conn).expect("zrange");
    assert_eq!(left, vec!["later".to_owned()], "a job not yet due stays scheduled");
    let signal: u64 = redis::cmd("LLEN").arg(config.signal_list()).query(&mut conn).expect("llen");
    assert_eq!(signal, 1, "one wake-up for fetchers, however many jobs moved");
    // Three calls moved jobs (1,000, 1,000, 500): three announcements, then none for the empty one.
    let more: Vec<bool> = (0..3).map(|_| pubsub.get_message().is_ok()).collect();
    assert_eq!(more, [true, true, false], "an announcement per call that moved jobs, none for a call that moved none");
}

#[test]
fn vacuum_done_deletes_finished_jobs_only_and_keeps_the_rest() {
    let server = RedisServer::start();
    let config = projector_queue::config(projector_shared::keys::KeyLayout::Server);
    let mut conn = server.connection();
    let meta = config.job_meta_hash();
    for id in ["done-1", "done-2", "retrying"] {
        let _: () = redis::cmd("HSET").arg(config.job_data_hash()).arg(id).arg("{}").query(&mut conn).expect("hset");
        let _: () = redis::cmd("HSET").arg(format!("{meta}:{id}")).arg("attempts").arg(1).query(&mut conn).expect("hset");
    }
    let _: () = redis::cmd("SADD").arg(config.done_jobs_set()).arg("done-1").arg("done-2").query(&mut conn).expect("sadd");
    let removed = runtime().block_on(async { projector_queue::vacuum_done(&manager(&server)).await.expect("vacuum") });
    assert_eq!(removed, 2);
    let data: Vec<String> = redis::cmd("HKEYS").arg(config.job_data_hash()).query(&mut conn).expect("hkeys");
    assert_eq!(data, vec!["retrying".to_owned()], "a job waiting for a retry keeps its data");
    let metas: u64 = redis::cmd("EXISTS").arg(format!("{meta}:done-1")).arg(format!("{meta}:done-2")).query(&mut conn).expect("exists");
    assert_eq!(metas, 0);
    let done: u64 = redis::cmd("SCARD").arg(config.done_jobs_set()).query(&mut conn).expect("scard");
    assert_eq!(done, 0);
}

#[test]
fn run_record_refreshes_ttls_a_quarter_retention_after_the_last_refresh_and_always_on_keys_it_creates() {
    let server = RedisServer::start();
    runtime().block_on(async {
        let retention = Duration::from_secs(600);
        let records = RunRecords::new(manager(&server), retention);
        let run = RunId("run-ttl".into());
        records.create(&run, Utc::now(), 3).await.expect("create");
        records.store_plan(&run, &[(OrgId(1), vec![]), (OrgId(2), vec![]), (OrgId(3), vec![])]).await.expect("plan");
        let mut conn = server.connection();
        let (run_key, orgs_key, trail_key) = (
            projector_shared::keys::KeyLayout::Server.run(&run),
            projector_shared::keys::KeyLayout::Server.run_orgs(&run),
            projector_shared::keys::KeyLayout::Server.run_trail(&run),
        );
        let pttl = |key: &str, conn: &mut redis::Connection| -> i64 { redis::cmd("PTTL").arg(key).query(conn).expect("pttl") };
        let full = retention.as_millis() as i64;

        // The first outcome creates the orgs and trail hashes: they get a TTL although the run's is fresh.
        records.record(&run, OrgId(1), &Attempt::bare(Outcome::Completed)).await.expect("record");
        for key in [&orgs_key, &trail_key] {
            let ttl = pttl(key, &mut conn);
            assert!(ttl > full - 60_000 && ttl <= full, "{key} gets its TTL when created: {ttl} ms");
        }
        // Within a quarter of the retention since the last refresh, a record refreshes nothing.
        let _: () = redis::cmd("PEXPIRE").arg(&run_key).arg(full - 10_000).query(&mut conn).expect("pexpire");
        records.record(&run, OrgId(2), &Attempt::bare(Outcome::Completed)).await.expect("record");
        assert!(pttl(&run_key, &mut conn) <= full - 10_000, "no refresh on every record");
        // Later, a record refreshes every key, and a trail that expired meanwhile is created with a TTL.
        let _: () = redis::cmd("PEXPIRE").arg(&run_key).arg(full - 200_000).query(&mut conn).expect("pexpire");
        let _: () = redis::cmd("DEL").arg(&trail_key).query(&mut conn).expect("del");
        records.record(&run, OrgId(3), &Attempt::bare(Outcome::Failed)).await.expect("record");
        for key in [&run_key, &orgs_key, &trail_key] {
            let ttl = pttl(key, &mut conn);
            assert!(ttl > full - 60_000 && ttl <= full, "{key} is refreshed: {ttl} ms");
        }
    });
}

/// After `runs.retention` only the run's summary is left: the record hash and the runs index
/// live `runs.summary_retention`, the per-org hashes `runs.retention`, and `runs show` and
/// `runs list` still give the counts once the per-org hashes are gone.
#[test]
fn the_runs_summary_outlives_its_per_org_records() {
    let server = RedisServer::start();
    let runs = projector_config::RunsConfig {
        retention: Duration::from_secs(600),
        summary_retention: Duration::from_secs(36_000),
        trail_retention: Duration::from_secs(300),
        dedup_window: Duration::from_secs(60),
        max_attempts: 4,
        deadline: None,
        completed_detail: Duration::from_secs(3600),
    };
    let (run, cancelled) = (RunId("run-summary".into()), RunId("run-summary-cancelled".into()));
    runtime().block_on(async {
        let records = RunRecords::for_config(manager(&server), &runs);
        for (id, total) in [(&run, 2), (&cancelled, 1)] {
            records.create(id, Utc::now(), total).await.expect("create");
            let plan: Vec<_> = (1..=total).map(|o| (OrgId(o), vec![])).collect();
            records.store_plan(id, &plan).await.expect("plan");
        }
        records.record(&run, OrgId(1), &Attempt::bare(Outcome::Completed)).await.expect("record");
        records.record(&run, OrgId(2), &Attempt::bare(Outcome::Failed)).await.expect("record");
        records.cancel(&cancelled).await.expect("cancel");
    });
    let mut conn = server.connection();
    let pttl = |key: &str, conn: &mut redis::Connection| -> i64 { redis::cmd("PTTL").arg(key).query(conn).expect("pttl") };
    let within = |ttl: i64, full: Duration| ttl > full.as_millis() as i64 - 60_000 && ttl <= full.as_millis() as i64;
    for id in [&run, &cancelled] {
        let summary = projector_shared::keys::KeyLayout::Server.run(id);
        assert!(within(pttl(&summary, &mut conn), runs.summary_retention), "{summary} lives runs.summary_retention");
        for key in [projector_shared::keys::KeyLayout::Server.run_orgs(id), projector_shared::keys::KeyLayout::Server.run_plan(id)] {
            assert!(within(pttl(&key, &mut conn), runs.retention), "{key} lives runs.retention: {}", pttl(&key, &mut conn));
        }
        assert!(within(pttl(&projector_shared::keys::KeyLayout::Server.run_trail(id), &mut conn), runs.trail_retention));
    }
    assert!(within(pttl(projector_shared::keys::RUNS, &mut conn), runs.summary_retention), "the runs index too");

    // runs.retention later: Redis has dropped every per-org hash.
    let per_org: Vec<String> = redis::cmd("KEYS").arg("projector:run:run-summary*:*").query(&mut conn).expect("keys");
    assert!(!per_org.is_empty());
    let _: () = redis::cmd("DEL").arg(&per_org).query(&mut conn).expect("del");
    let ctl = |args: &[&str]| -> serde_json::Value {
        let out = projector_tests::command(projector_tests::workspace_bin("projectorctl"))
            .args(args)
            .env("PROJECTOR_REDIS_URL", server.url())
            .env("PROJECTOR_RUNS_RETENTION", "10m")
            .output()
            .expect("projectorctl");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).expect("JSON")
    };
    let shown = ctl(&["runs", "show", &run.0, "--json"]);
    assert_eq!(shown["per_org_records"], "expired", "{shown}");
    assert_eq!((shown["outcomes"]["completed"].as_u64(), shown["outcomes"]["failed"].as_u64()), (Some(1), Some(1)), "{shown}");
    assert_eq!(shown["orgs_total"], 2, "{shown}");
    let listed = ctl(&["runs", "list", "--json"]);
    let ids: Vec<&str> = listed["runs"].as_array().expect("runs").iter().filter_map(|r| r["run_id"].as_str()).collect();
    assert!(ids.contains(&run.0.as_str()) && ids.contains(&cancelled.0.as_str()), "{listed}");
}

#[test]
fn run_record_keeps_the_first_outcome_refuses_strangers_and_names_the_last_org() {
    let server = RedisServer::start();
    runtime().block_on(async {
        let retention = Duration::from_secs(600);
        let records = RunRecords::new(manager(&server), retention);
        let run = RunId("run-scripts".into());
        records.create(&run, Utc::now(), 2).await.expect("create");
        records.store_plan(&run, &[(OrgId(1), vec![]), (OrgId(2), vec![])]).await.expect("plan");
        assert_eq!(records.record(&run, OrgId(1), &Attempt::bare(Outcome::Completed)).await.expect("record"), Recorded::Recorded);
        assert_eq!(records.record(&run, OrgId(1), &Attempt::bare(Outcome::Failed)).await.expect("record"), Recorded::AlreadyAccounted);
        assert_eq!(records.record(&run, OrgId(99), &Attempt::bare(Outcome::Completed)).await.expect("record"), Recorded::NotPlanned);
        let ghost = RunId("run-never".into());
        assert_eq!(records.record(&ghost, OrgId(1), &Attempt::bare(Outcome::Completed)).await.expect("record"), Recorded::UnknownRun);
        assert_eq!(records.record(&run, OrgId(2), &Attempt::bare(Outcome::SkippedNoSlot)).await.expect("record"), Recorded::FinishedTheRun);
        assert!(records.wait_finished(&run, Duration::from_millis(10)).await.expect("blpop"), "the last org signals the run's end");
        assert!(!records.wait_finished(&run, Duration::from_millis(10)).await.expect("blpop"), "once");
        assert_eq!(
            records.admit(&run, OrgId(1), 0).await.expect("admission"),
            Admission::Accounted(Outcome::Completed),
            "the first outcome wins"
        );
        let summary = records.summary(&run, projector_shared::run_record::OrgIds::Leave).await.expect("summary").expect("run");
        assert_eq!((summary.count(Outcome::Completed), summary.count(Outcome::SkippedNoSlot), summary.count(Outcome::Failed)), (1, 1, 0));
        let mut conn = server.connection();
        for key in [format!("projector:run:{}", run.0), format!("projector:run:{}:orgs", run.0), format!("projector:run:{}:plan", run.0)] {
            let ttl: i64 = redis::cmd("PTTL").arg(&key).query(&mut conn).expect("pttl");
            assert!(ttl > 0 && ttl <= retention.as_millis() as i64, "{key} lives runs.retention: {ttl} ms");
        }
        let ghost_keys: Vec<String> = redis::cmd("KEYS").arg("projector:run:run-never*").query(&mut conn).expect("keys");
        assert!(ghost_keys.is_empty(), "a refused record writes nothing: {ghost_keys:?}");

        // The runs index: newest tick first, a finished run stamped with its end, an open one not.
        let later = RunId("run-later".into());
        records.create(&later, Utc::now() + chrono::TimeDelta::minutes(1), 5).await.expect("create");
        let recent = records.recent(10).await.expect("recent");
        assert_eq!(recent.iter().map(|r| r.run_id.as_str()).collect::<Vec<_>>(), ["run-later", "run-scripts"]);
        assert_eq!(
            (recent[0].state(), recent[0].accounted(), recent[0].orgs_total, recent[0].finished),
            (RunState::FanningOut, 0, 5, None)
        );
        records.mark_fanned_out(&later).await.expect("mark");
        assert_eq!(records.overview(&later).await.expect("overview").expect("run").state(), RunState::Running);
        assert_eq!((recent[1].state(), recent[1].accounted()), (RunState::Done, 2));
        assert!(recent[1].finished.is_some(), "the last org's record stamps the run's end");
        assert_eq!(records.recent(1).await.expect("recent").len(), 1);
        // A run more than runs.retention after the others trims them from the index.
        records.create(&RunId("run-much-later".into()), Utc::now() + chrono::TimeDelta::minutes(30), 1).await.expect("create");
        let recent = records.recent(10).await.expect("recent");
        assert_eq!(recent.iter().map(|r| r.run_id.as_str()).collect::<Vec<_>>(), ["run-much-later"]);
    });
}

#[test]
fn heartbeat_beat_and_alive_count_workers_on_redis_time() {
    let server = RedisServer::start();
    runtime().block_on(async {
        let conn = manager(&server);
        assert_eq!(projector_shared::heartbeat::alive(&conn).await.expect("alive"), 0);
        projector_shared::heartbeat::beat(&conn, "worker-a", &Default::default()).await.expect("beat");
        projector_shared::heartbeat::beat(&conn, "worker-b", &Default::default()).await.expect("beat");
        let registration = projector_shared::heartbeat::Registration {
            host: "host-1".into(),
            pid: 42,
            version: "0.1.0".into(),
            started: "2026-12-01T13:00:00Z".into(),
            jobs_in_flight: 3,
            slots_held: 2,
            last_error: "2026-12-01T13:05:00Z timeout: no answer".into(),
            service: Some((
                projector_shared::service::ServiceQuota { quota_used: 41, rejection_threshold: 100, throttle_threshold: 66 },
                120,
            )),
            rate: "20/s (strict, enforced)".into(),
            slots: "limit 50, max_wait 1m, on_timeout skip, follow_service true".into(),
            config_digest: "0123456789ab".into(),
        };
        projector_shared::heartbeat::beat(&conn, "worker-a", &registration).await.expect("beat again");
        assert_eq!(projector_shared::heartbeat::alive(&conn).await.expect("alive"), 2, "one entry per worker");
        let listed = projector_shared::heartbeat::workers(&conn).await.expect("workers");
        // Beats in the same millisecond tie, so the order is not checked, only who is listed.
        let mut names: Vec<&str> = listed.iter().map(|w| w.name.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, ["worker-a", "worker-b"]);
        let a = listed.iter().find(|w| w.name == "worker-a").expect("worker-a listed");
        assert_eq!(a.registration.as_ref(), Some(&registration), "the registration reads back whole");
        projector_shared::heartbeat::leave(&conn, "worker-b").await.expect("leave");
        assert_eq!(projector_shared::heartbeat::alive(&conn).await.expect("alive"), 1);
        let mut sync = server.connection();
        let ttl: i64 = redis::cmd("PTTL").arg(projector_shared::keys::KeyLayout::Server.workers()).query(&mut sync).expect("pttl");
        assert!(ttl > 0, "the set expires with the fleet: {ttl}");
        let ttl: i64 = redis::cmd("PTTL").arg(projector_shared::keys::KeyLayout::Server.worker("worker-a")).query(&mut sync).expect("pttl");
        let alive_ms = projector_shared::heartbeat::ALIVE_WITHIN.as_millis() as i64;
        assert!(ttl > 0 && ttl <= alive_ms, "a registration expires when its worker stops beating: {ttl}");
        let left: bool =
            redis::cmd("EXISTS").arg(projector_shared::keys::KeyLayout::Server.worker("worker-b")).query(&mut sync).expect("exists");
        assert!(!left, "leaving removes the registration");
    });
}

/// The push deduplicates by one set per run (kept `runs.dedup_window`), sends a job due now
/// straight to the ready list and a later one to the scheduled set, and writes the metadata
/// apalis's fetch reads.
#[test]
fn push_drops_a_duplicate_through_the_runs_dedupe_set_and_sends_due_jobs_to_the_ready_list() {
    let server = RedisServer::start();
    let queue = projector_queue::config(projector_shared::keys::KeyLayout::Server);
    let window = Duration::from_secs(120);
    let run = RunId("run-dedup".into());
    let job = |org: u64| projector_shared::SpikeProjectionJob::planned(run.clone(), OrgId(org), 0, Utc::now(), vec![]);
    let now = Utc::now().timestamp() as u64;
    let retry = projector_shared::SpikeProjectionJob { attempt: 1, ..job(7) };
    let (first, again, follow_up) = runtime().block_on(async {
        let conn = manager(&server);
        let push = |jobs: Vec<projector_queue::QueuedJob>| {
            let conn = conn.clone();
            let run = run.clone();
            async move { projector_queue::push(&conn, &run, &jobs, window).await.expect("push") }
        };
        let first = push(vec![projector_queue::task(&job(7), now), projector_queue::task(&job(8), now + 3_600)]).await;
        let again = push(vec![projector_queue::task(&job(7), now), projector_queue::task(&job(8), now + 3_600)]).await;
        let follow_up = push(vec![projector_queue::task(&retry, now)]).await;
        (first, again, follow_up)
    });
    assert_eq!((first, again, follow_up), (2, 0, 1), "a second push of the same jobs is dropped; a follow-up attempt is not a duplicate");
    let mut conn = server.connection();
    let ready: Vec<String> = redis::cmd("LRANGE").arg(queue.active_jobs_list()).arg(0).arg(-1).query(&mut conn).expect("lrange");
    let scheduled: Vec<String> = redis::cmd("ZRANGE").arg(queue.scheduled_jobs_set()).arg(0).arg(-1).query(&mut conn).expect("zrange");
    let payload = |conn: &mut redis::Connection, id: &str| -> serde_json::Value {
        let data: Vec<u8> = redis::cmd("HGET").arg(queue.job_data_hash()).arg(id).query(conn).expect("hget");
        serde_json::from_slice(&data).expect("JSON payload")
    };
    let ready_orgs: Vec<(u64, u64)> = ready
        .iter()
        .map(|id| payload(&mut conn, id))
        .map(|p| (p["org_id"].as_u64().unwrap_or(0), p["attempt"].as_u64().unwrap_or(0)))
        .collect();
    assert_eq!(ready_orgs, vec![(7, 0), (7, 1)], "jobs due now wait on the ready list, in push order");
    assert_eq!(scheduled.len(), 1, "the job due in an hour waits in the scheduled set");
    assert_eq!(payload(&mut conn, &scheduled[0])["org_id"], 8);
    let mut meta: Vec<(String, String)> =
        redis::cmd("HGETALL").arg(format!("{}:{}", queue.job_meta_hash(), ready[0])).query(&mut conn).expect("meta");
    meta.sort();
    let expected: Vec<(String, String)> =
        [("attempts", "0"), ("max_attempts", "25"), ("status", "Pending")].iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    assert_eq!(meta, expected, "the metadata apalis's fetch needs, nothing more");
    let legacy: Vec<String> = redis::cmd("KEYS").arg("*idempotency*").query(&mut conn).expect("keys");
    assert!(legacy.is_empty(), "no key per job: {legacy:?}");
    let mut members: Vec<String> = redis::cmd("SMEMBERS")
        .arg(projector_queue::job_dedupe(projector_shared::keys::KeyLayout::Server, &run))
        .query(&mut conn)
        .expect("smembers");
    members.sort();
    assert_eq!(members, vec!["7", "7:a1", "8"]);
    let ttl: i64 = redis::cmd("PTTL")
        .arg(projector_queue::job_dedupe(projector_shared::keys::KeyLayout::Server, &run))
        .query(&mut conn)
        .expect("pttl");
    assert!(ttl > 0 && ttl <= window.as_millis() as i64, "the set lives runs.dedup_window, not forever: {ttl} ms");
}

#[test]
fn dead_jobs_are_listed_with_their_reason_requeued_when_runnable_and_purged() {
    let server = RedisServer::start();
    let queue = projector_queue::config(projector_shared::keys::KeyLayout::Server);
    let job = projector_shared::SpikeProjectionJob::planned(RunId("run-dead".into()), OrgId(9), 0, Utc::now(), vec![]);
    let mut sync = server.connection();
    let id = runtime().block_on(async {
        let conn = manager(&server);
        let task = projector_queue::task(&job, Utc::now().timestamp() as u64);
        projector_queue::push(&conn, &job.run_id, &[task], Duration::from_secs(60)).await.expect("push");
        projector_queue::promote_due(&conn).await.expect("promote");
        let ids: Vec<String> = redis::cmd("LRANGE").arg(queue.active_jobs_list()).arg(0).arg(-1).query(&mut sync).expect("lrange");
        ids.into_iter().next().expect("the job is ready")
    });
    // The runnable job killed by apalis, and a poison payload quarantined by a worker.
    let meta = |id: &str| format!("{}:{id}", queue.job_meta_hash());
    let _: () = redis::pipe()
        .lrem(queue.active_jobs_list(), 0, &id)
        .sadd(queue.dead_jobs_set(), &id)
        .hset(meta(&id), "status", "Killed")
        .hset(queue.job_data_hash(), "poison-1", "{not json")
        .sadd(queue.dead_jobs_set(), "poison-1")
        .hset(meta("poison-1"), "projector_reason", "the payload is not JSON")
        .query(&mut sync)
        .expect("dead-letter both");

    let listed = projector_tests::command(projector_tests::workspace_bin("projectorctl"))
        .args(["jobs", "dead", "--json"])
        .env("PROJECTOR_REDIS_URL", server.url())
        .output()
        .expect("projectorctl");
    let listed: serde_json::Value = serde_json::from_slice(&listed.stdout).expect("JSON");
    assert_eq!(listed["dead"], 2, "{listed}");
    let reasons: Vec<&str> = listed["jobs"].as_array().expect("jobs").iter().filter_map(|j| j["reason"].as_str()).collect();
    assert!(reasons.contains(&"the payload is not JSON") && reasons.iter().any(|r| r.contains("Killed")), "{listed}");

    runtime().block_on(async {
        let conn = manager(&server);
        let requeued = projector_queue::requeue_dead(&conn, &[]).await.expect("requeue");
        assert_eq!((requeued.done, requeued.left), (1, 1), "the poison payload stays dead");
        let purged = projector_queue::purge_dead(&conn, &["poison-1".to_owned()]).await.expect("purge");
        assert_eq!(purged.done, 1);
    });
    let (ready, dead, status, poison): (Vec<String>, u64, String, bool) = redis::pipe()
        .lrange(queue.active_jobs_list(), 0, -1)
        .scard(queue.dead_jobs_set())
        .hget(meta(&id), "status")
        .hexists(queue.job_data_hash(), "poison-1")
        .query(&mut sync)
        .expect("state");
    assert_eq!((ready, dead, status.as_str(), poison), (vec![id], 0, "Pending", false));
}

#[test]
fn a_retry_reopens_only_what_it_names_a_stale_attempt_records_nothing_and_cancel_accounts_the_rest() {
    let server = RedisServer::start();
    runtime().block_on(async {
        let runs = projector_config::RunsConfig {
            retention: Duration::from_secs(600),
            trail_retention: Duration::from_secs(120),
            ..projector_config::RunsConfig::default()
        };
        let records = RunRecords::for_config(manager(&server), &runs);
        let run = RunId("run-retry".into());
        records.create(&run, Utc::now(), 4).await.expect("create");
        records.store_plan(&run, &[(OrgId(1), vec![]), (OrgId(2), vec![]), (OrgId(3), vec![]), (OrgId(4), vec![])]).await.expect("plan");
        let failed = Attempt {
            worker: "w-a".into(),
            why: Some(Why::new("server_error", "the query service answered 500")),
            steps: vec![Step::Query { status: "server_error".into(), ms: 12, throttled: false, pages: 1 }],
            ..Attempt::bare(Outcome::Failed)
        };
        records.record(&run, OrgId(1), &Attempt::bare(Outcome::Completed)).await.expect("record");
        records.record(&run, OrgId(2), &failed).await.expect("record");
        records.record(&run, OrgId(3), &Attempt::bare(Outcome::SkippedNoSlot)).await.expect("record");

        // Only failed orgs are named: org 3 (skipped) and org 1 (completed) stay as they are.
        let reopened = records.reopen(&run, &[Outcome::Failed]).await.expect("reopen");
        assert_eq!(reopened, [(OrgId(2), 1)]);
        let overview = records.overview(&run).await.expect("overview").expect("run");
        assert_eq!((overview.accounted(), overview.retried), (2, 1), "org 2 no longer counts until its retry ends");
        assert_eq!(records.admit(&run, OrgId(2), 0).await.expect("admit"), Admission::Superseded, "the first job is stale now");
        assert_eq!(records.admit(&run, OrgId(2), 1).await.expect("admit"), Admission::Open);
        // A late delivery of attempt 0 records nothing; attempt 1 does.
        let late = records.record(&run, OrgId(2), &Attempt::bare(Outcome::Completed)).await.expect("record");
        assert_eq!(late, Recorded::AlreadyAccounted);
        let retried = Attempt { attempt: 1, ..Attempt::bare(Outcome::Completed) };
        assert_eq!(records.record(&run, OrgId(2), &retried).await.expect("record"), Recorded::Recorded);
        let org2 = records.org(&run, OrgId(2)).await.expect("org").expect("planned");
        assert_eq!((org2.outcome, org2.attempt), (Some(Outcome::Completed), 1));
        assert_eq!(org2.trail.len(), 2, "the trail keeps both attempts: {:?}", org2.trail);
        assert_eq!(org2.trail[0].attempt, failed, "the first attempt as the worker recorded it");
        assert!(org2.trail[0].at_ms <= org2.trail[1].at_ms && org2.trail[0].at_ms > 0);
        let mut conn = server.connection();
        let ttl = |key: String, conn: &mut redis::Connection| -> i64 { redis::cmd("PTTL").arg(key).query(conn).expect("pttl") };
        let trail_ttl = ttl(format!("projector:run:{}:trail", run.0), &mut conn);
        assert!(trail_ttl > 0 && trail_ttl <= 120_000, "trails live runs.trail_retention: {trail_ttl}");
        assert!(ttl(format!("projector:run:{}:orgs", run.0), &mut conn) > 120_000, "outcomes live runs.retention");
        // Reopening an org whose outcome changed since it was read does nothing.
        assert_eq!(records.reopen(&run, &[Outcome::Failed]).await.expect("reopen"), []);

        // Cancel: the open org 4 ends cancelled; the others keep theirs; the run is cancelled.
        assert_eq!(records.cancel(&run).await.expect("cancel"), 1);
        let mut orgs = records.orgs(&run).await.expect("orgs");
        records.trails(&run, &mut orgs).await.expect("trails");
        let outcomes: Vec<_> = orgs.iter().map(|o| o.outcome).collect();
        assert_eq!(outcomes, [Some(Outcome::Completed), Some(Outcome::Completed), Some(Outcome::SkippedNoSlot), Some(Outcome::Cancelled)]);
        assert!(matches!(orgs[3].trail[..], [ref t] if t.attempt.steps == [Step::Cancelled]), "{:?}", orgs[3].trail);
        let overview = records.overview(&run).await.expect("overview").expect("run");
        assert_eq!((overview.state(), overview.accounted()), (RunState::Cancelled, 4));
        assert!(overview.finished.is_some(), "every org is accounted: the run is finished too");
        let times = records.end_times(&run, 2).await.expect("sample");
        assert_eq!(times.len(), 2, "a sample of the orgs' end times, as many as asked");
        assert!(times.windows(2).all(|w| w[0] <= w[1]) && times[0] > 0, "{times:?}");
        assert_eq!(records.cancel(&run).await.expect("cancel again"), 0, "cancelling twice changes nothing");
        // A job that was querying at the cancel: its real outcome replaces `cancelled`; a job
        // that never queried (its slot wait timed out) does not.
        let skipped = records.record(&run, OrgId(4), &Attempt::bare(Outcome::SkippedNoSlot)).await.expect("record");
        assert_eq!(skipped, Recorded::AlreadyAccounted);
        assert_eq!(records.record(&run, OrgId(4), &Attempt::bare(Outcome::Completed)).await.expect("record"), Recorded::Recorded);
        let overview = records.overview(&run).await.expect("overview").expect("run");
        let count = |o: Outcome| overview.counts.iter().find(|(x, _)| *x == o).map(|(_, n)| *n);
        assert_eq!((count(Outcome::Cancelled), count(Outcome::Completed), overview.accounted()), (Some(0), Some(3), 4));
    });
}

/// Each maintenance service does its duty in one `run_once`, against a real Redis: the due
/// promoter moves a due job to the ready list, the deadline sweep ends the open orgs of a run
/// past its deadline, and the vacuum leaves waiting jobs alone.
#[test]
fn each_maintenance_service_does_its_round_when_run_once() {
    use projector_worker::services::{DeadlineSweep, DuePromoter, Periodic, Vacuum};
    let server = RedisServer::start();
    runtime().block_on(async {
        let conn = manager(&server);
        // A job due a second from now waits in the scheduled set until the promoter's round.
        let run = RunId("run-services".into());
        let job = projector_shared::SpikeProjectionJob::planned(run.clone(), OrgId(1), 0, Utc::now(), vec![]);
        let due_at = u64::try_from(Utc::now().timestamp()).expect("now") + 1;
        projector_queue::push(&conn, &run, &[projector_queue::task(&job, due_at)], Duration::from_secs(60)).await.expect("push");
        assert_eq!(projector_queue::depth(&conn).await.expect("depth").scheduled, 1);
        let promoter = DuePromoter { conn: conn.clone() };
        let (promoter, conn_ref) = (&promoter, &conn);
        projector_tests::eventually(Duration::from_secs(10), "the due job is promoted", move || async move {
            promoter.run_once().await;
            let depth = projector_queue::depth(conn_ref).await.expect("depth");
            (depth.ready == 1 && depth.scheduled == 0).then_some(())
        })
        .await;
        Vacuum { conn: conn.clone() }.run_once().await;
        assert_eq!(projector_queue::depth(&conn).await.expect("depth").ready, 1, "the vacuum keeps a waiting job");

        // A run of two orgs whose deadline has passed: one round ends both.
        let records = RunRecords::new(conn.clone(), Duration::from_secs(3600));
        let late = RunId("run-late".into());
        records.create(&late, Utc::now(), 2).await.expect("create");
        records.store_plan(&late, &[(OrgId(1), vec![]), (OrgId(2), vec![])]).await.expect("plan");
        records.mark_fanned_out(&late).await.expect("fanned out");
        records.set_deadline(&late, Utc::now() - chrono::TimeDelta::seconds(1)).await.expect("deadline");
        DeadlineSweep { records: records.clone(), completed_detail: Duration::from_secs(3600) }.run_once().await;
        let overview = records.overview(&late).await.expect("overview").expect("the run");
        assert_eq!((overview.accounted(), overview.state()), (2, RunState::Done), "{overview:?}");
    });
}

/// A slot handed to a waiter while it is between two waits on its wake-up list: its next
/// `slots_acquire` finds the reserved lease and is granted. That lease must become a full one
/// there, as a collect makes it: left at the hand-off's short reservation it lapsed under the
/// running query, and the next waiter was granted the same slot (the service saw 4 of 3).
#[test]
fn slots_acquire_turns_a_slot_handed_off_between_two_waits_into_a_full_lease() {
    let server = RedisServer::start();
    let slots = RawSlots::new();
    let mut conn = server.connection();
    let (keys, lease_ms) = (&slots.keys, RawSlots::LEASE_MS);
    assert_eq!(slots.acquire(&mut conn, "holder", 0)[0], 1, "the one slot is granted");
    assert_eq!(slots.acquire(&mut conn, "waiter", 10_000)[0], 0, "the next one queues");
    slots.release(&mut conn, "holder");
    // The release handed the slot to the waiter, reserved briefly, while it was not blocked on
    // its wake-up list; it asks again instead of collecting.
    let reserved: f64 = redis::cmd("ZSCORE").arg(keys.leases()).arg("waiter").query(&mut conn).expect("zscore");
    assert_eq!(slots.acquire(&mut conn, "waiter", 10_000)[0], 1, "the waiter is granted its handed-off slot");
    let (secs, micros): (u64, u64) = redis::cmd("TIME").query(&mut conn).expect("time");
    let now_ms = secs * 1000 + micros / 1000;
    let lease: f64 = redis::cmd("ZSCORE").arg(keys.leases()).arg("waiter").query(&mut conn).expect("zscore");
    assert!(lease as u64 >= now_ms + lease_ms - 1_000, "a full lease ({lease} vs reservation {reserved}, now {now_ms})");
    let wake: i64 = redis::cmd("EXISTS").arg(keys.wake("waiter")).query(&mut conn).expect("exists");
    assert_eq!(wake, 0, "the spent wake-up token is gone");
}

/// The slot scripts called as the limiter calls them, one slot, for the tests that must place a
/// call between two others (a hand-off between two waits, a waiter that stops calling).
struct RawSlots {
    keys: SlotKeys,
    acquire: (redis::Script, Vec<String>),
    release: (redis::Script, Vec<String>),
}

impl RawSlots {
    const LEASE_MS: u64 = 30_000;
    const RESERVE_MS: u64 = 1_000;

    fn new() -> Self {
        let keys = SlotKeys::new("default");
        let script = |body: &str| {
            let line = body.lines().find(|l| l.starts_with("local SLOT_KEYS = {")).expect("SLOT_KEYS line");
            let names = line
                .trim_start_matches("local SLOT_KEYS = {")
                .trim_end_matches('}')
                .split(',')
                .map(|n| keys.named(n.trim().trim_matches('\'')))
                .collect();
            (projector_shared::lua::script(body), names)
        };
        let acquire = script(include_str!("../../lua/slots_acquire.lua"));
        let release = script(include_str!("../../lua/slots_release.lua"));
        RawSlots { keys, acquire, release }
    }

    /// `slots_acquire` for waiter `id`: its entry lasts `wait_ms` (0: ask for a position only).
    fn acquire(&self, conn: &mut redis::Connection, id: &str, wait_ms: u64) -> Vec<i64> {
        let mut inv = self.acquire.0.prepare_invoke();
        self.acquire.1.iter().for_each(|k| {
            inv.key(k);
        });
        inv.arg(id)
            .arg(format!("test|{id}"))
            .arg(Self::LEASE_MS)
            .arg(wait_ms)
            .arg(1)
            .arg(Self::RESERVE_MS)
            .arg(self.keys.wake_prefix())
            .invoke(conn)
            .expect("acquire")
    }

    fn release(&self, conn: &mut redis::Connection, id: &str) {
        let mut inv = self.release.0.prepare_invoke();
        self.release.1.iter().for_each(|k| {
            inv.key(k);
        });
        let _: redis::Value = inv.arg(id).arg(1).arg(Self::RESERVE_MS).arg(self.keys.wake_prefix()).invoke(conn).expect("release");
    }
}

/// A waiter whose process died stops calling: once it is overdue for its re-check (its entry
/// lapses within 700 ms) a hand-off passes it over and takes it out of the line, and the next
/// live waiter gets the slot. A slot reserved for a dead waiter would idle until the reserve ran out.
#[test]
fn a_hand_off_passes_over_a_waiter_overdue_for_its_recheck() {
    let server = RedisServer::start();
    let slots = RawSlots::new();
    let mut conn = server.connection();
    assert_eq!(slots.acquire(&mut conn, "holder", 0)[0], 1);
    // The dead one queued first; its entry was set to lapse 500 ms on (it never calls again).
    assert_eq!(slots.acquire(&mut conn, "dead", 500)[0], 0);
    assert_eq!(slots.acquire(&mut conn, "alive", 10_000)[0], 0);
    slots.release(&mut conn, "holder");
    let lease: Option<f64> = redis::cmd("ZSCORE").arg(slots.keys.leases()).arg("dead").query(&mut conn).expect("zscore");
    assert_eq!(lease, None, "no slot for the overdue waiter");
    let token: Vec<u64> = redis::cmd("LRANGE").arg(slots.keys.wake("alive")).arg(0).arg(-1).query(&mut conn).expect("lrange");
    assert_eq!(token.len(), 1, "the live waiter is handed the slot");
    let queued: u64 = redis::cmd("ZCARD").arg(slots.keys.queue()).query(&mut conn).expect("zcard");
    assert_eq!(queued, 0, "the overdue waiter left the line");
}

/// `runs.completed_detail` after a run finished, its completed orgs leave the per-org hashes for a
/// compact list: measured with `MEMORY USAGE` over every key of a 2,000-org run, what is left
/// costs at most 16 B per completed org, the failed orgs' full records included. Every read
/// answers as before: a completed org is "completed" with the time it was recorded, a failed org
/// keeps its trail, the summary and the org list count every org, the progress sample still has
/// the completed orgs' times, and `runs retry` of the failed orgs still finishes the run.
#[test]
fn a_finished_runs_completed_orgs_are_compacted_and_still_answered() {
    use projector_worker::services::{DeadlineSweep, Periodic};
    let server = RedisServer::start();
    runtime().block_on(async {
        let conn = manager(&server);
        let runs = projector_config::RunsConfig {
            retention: Duration::from_secs(600),
            summary_retention: Duration::from_secs(600),
            trail_retention: Duration::from_secs(300),
            ..projector_config::RunsConfig::default()
        };
        let records = RunRecords::for_config(conn.clone(), &runs);
        let run = RunId("run-compact".into());
        let total = 2_000u64;
        records.create(&run, Utc::now(), total).await.expect("create");
        let plan: Vec<(OrgId, Vec<projector_shared::ProjectId>)> =
            (1..=total).map(|o| (OrgId(o * 7), (0..3).map(|p| projector_shared::ProjectId(o * 10 + p)).collect())).collect();
        records.store_plan(&run, &plan).await.expect("plan");
        records.mark_fanned_out(&run).await.expect("fanned out");
        let completed = Attempt {
            worker: "worker-a".into(),
            steps: vec![
                Step::Routed { limited: true, why: "flag never set".into() },
                Step::Slot { granted: true, waited_ms: 3, token: Some(41), in_use: None, limit: None, queue_position: None },
                Step::Query { status: "ok".into(), ms: 40, throttled: false, pages: 1 },
            ],
            ..Attempt::bare(Outcome::Completed)
        };
        let failed = Attempt { why: Some(Why::new("server_error", "the query service answered 500")), ..Attempt::bare(Outcome::Failed) };
        let is_failed = |o: u64| o.is_multiple_of(200);
        for o in 1..=total {
            let attempt = if is_failed(o) { &failed } else { &completed };
            records.record(&run, OrgId(o * 7), attempt).await.expect("record");
        }
        let keys = |layout: projector_shared::keys::KeyLayout| {
            [
                layout.run(&run),
                layout.run_orgs(&run),
                layout.run_plan(&run),
                layout.run_trail(&run),
                layout.run_attempts(&run),
                layout.run_completed(&run),
            ]
        };
        let memory = || async {
            let mut conn = conn.clone();
            let mut sum = 0u64;
            for key in keys(conn.layout()) {
                let bytes: Option<u64> =
                    redis::cmd("MEMORY").arg("USAGE").arg(&key).arg("SAMPLES").arg(0).query_async(&mut conn).await.expect("memory usage");
                sum += bytes.unwrap_or(0);
            }
            sum
        };
        let before = memory().await;
        let sweep = DeadlineSweep { records: records.clone(), completed_detail: Duration::ZERO };
        sweep.run_once().await;
        let after = memory().await;
        let n_completed = total - total / 200;
        eprintln!("run of {total} orgs: {before} B before compaction, {after} B after ({} B per completed org)", after / n_completed);
        assert!(after <= 16 * n_completed, "at most 16 B per completed org after compaction: {after} B for {n_completed}");

        let done = records.org(&run, OrgId(7)).await.expect("org").expect("a compacted org is still planned");
        assert_eq!(done.outcome, Some(Outcome::Completed));
        let at = done.compacted_at_ms.flatten().expect("when it was recorded");
        let now = Utc::now().timestamp_millis();
        assert!((now - 60_000..=now).contains(&at), "recorded within the last minute: {at}");
        let bad = records.org(&run, OrgId(200 * 7)).await.expect("org").expect("planned");
        assert_eq!((bad.outcome, bad.compacted_at_ms), (Some(Outcome::Failed), None));
        assert_eq!(bad.trail.len(), 1, "a failed org keeps its trail");
        let trail_ttl: i64 = redis::cmd("PTTL").arg(conn.layout().run_trail(&run)).query_async(&mut conn.clone()).await.expect("pttl");
        assert!(trail_ttl > 300_000, "what is left of the trail lives runs.retention, not runs.trail_retention: {trail_ttl} ms");
        assert!(records.org(&run, OrgId(8)).await.expect("org").is_none(), "an org the run never planned");
        let orgs = records.orgs(&run).await.expect("orgs");
        assert_eq!(orgs.len() as u64, total);
        assert_eq!(orgs.iter().filter(|o| o.outcome == Some(Outcome::Completed)).count() as u64, n_completed);
        let summary = records.summary(&run, projector_shared::run_record::OrgIds::List).await.expect("summary").expect("run");
        assert_eq!((summary.count(Outcome::Completed), summary.count(Outcome::Failed)), (n_completed, total / 200));
        let times = records.end_times(&run, 100).await.expect("sample");
        assert!(times.len() >= 50, "the progress sample still has the completed orgs' times: {}", times.len());

        // A retry of the failed orgs finishes the run again, the compacted orgs counted.
        let reopened = records.reopen(&run, &[Outcome::Failed]).await.expect("reopen");
        assert_eq!(reopened.len() as u64, total / 200);
        let mut last = Recorded::Recorded;
        for (org, attempt) in reopened {
            last = records.record(&run, org, &Attempt { attempt, ..completed.clone() }).await.expect("record");
        }
        assert_eq!(last, Recorded::FinishedTheRun);
    });
}
