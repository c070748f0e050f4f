//! The Redis slot limiter against a real `redis-server`: exact bound across processes, crash,
//! long holds, pauses, Redis restarts, timeouts, fairness and runtime limit changes.

use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use projector_shared::OrgId;
use projector_shared::slots::{Acquire, FailOpenLimiter, RedisSlotLimiter, RedisSlotSettings, SlotLimiter, SlotPermit, SlotRequest};
use projector_tests::{Proc, RedisServer, command};

fn limiter(server: &RedisServer, limit: u32, lease_ttl: Duration) -> RedisSlotLimiter {
    RedisSlotLimiter::new(server.url(), RedisSlotSettings::new(limit, lease_ttl)).expect("limiter")
}

fn request(org: u64) -> SlotRequest {
    SlotRequest::new("test", OrgId(org))
}

async fn take(l: &RedisSlotLimiter, org: u64, max_wait: Duration) -> Option<SlotPermit> {
    match l.acquire(request(org), max_wait).await.expect("redis answers") {
        Acquire::Granted(p) => Some(p),
        Acquire::TimedOut(_) => None,
    }
}

/// A slot-holder process, killed when the test ends.
fn holder(server: &RedisServer, args: &[&str]) -> Proc {
    let mut cmd = command(env!("CARGO_BIN_EXE_projector-slot-holder"));
    cmd.arg("--redis-url").arg(server.url()).args(args).stdout(Stdio::piped());
    Proc::spawn(cmd)
}

fn last_json(stdout: &[u8]) -> serde_json::Value {
    let text = String::from_utf8_lossy(stdout);
    let line = text.lines().rev().find(|l| l.starts_with('{')).unwrap_or_else(|| panic!("no summary in: {text}"));
    serde_json::from_str(line).expect("summary JSON")
}

#[test]
fn the_bound_is_exact_across_processes() {
    let server = RedisServer::start();
    let children: Vec<_> =
        (0..3).map(|_| holder(&server, &["--limit", "4", "--tasks", "12", "--iterations", "6", "--hold", "3ms"])).collect();
    let mut granted = 0;
    for child in children {
        let out = child.wait_with_output(Duration::from_secs(60));
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let s = last_json(&out.stdout);
        assert_eq!(s["violations"], 0, "observer saw more holders than the limit: {s}");
        assert!(s["max_seen"].as_u64().unwrap_or(0) <= 4, "{s}");
        granted += s["granted"].as_u64().unwrap_or(0);
    }
    assert_eq!(granted, 3 * 12 * 6, "every patient waiter was served");
    let mut conn = server.connection();
    let observer: i64 = redis::cmd("GET").arg("observer:holding").query(&mut conn).expect("get");
    assert_eq!(observer, 0);
}

#[test]
fn a_killed_holders_slots_come_back_within_the_lease_ttl() {
    let server = RedisServer::start();
    let victim = holder(&server, &["--limit", "3", "--tasks", "3", "--iterations", "1", "--hold", "60s", "--lease-ttl", "1s"]);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let l = limiter(&server, 3, Duration::from_secs(1));
        // Wait until the victim holds all three.
        let deadline = Instant::now() + Duration::from_secs(10);
        while l.inspect().await.expect("inspect").holders.len() < 3 {
            assert!(Instant::now() < deadline, "victim never took its slots");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(take(&l, 1, Duration::from_millis(200)).await.is_none(), "no over-admission while the victim lives");
        drop(victim);
        // lease_ttl 1s + renew interval 333ms, plus slack for the test's own round trips.
        let mut permits = Vec::new();
        for org in 0..3 {
            permits.push(take(&l, org, Duration::from_secs(3)).await.expect("slot reclaimed after the crash"));
        }
        assert!(take(&l, 9, Duration::from_millis(100)).await.is_none(), "still exactly three slots");
    });
}

#[test]
fn a_long_holder_keeps_its_slot_through_renewals() {
    let server = RedisServer::start();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let ttl = Duration::from_millis(600);
        let a = limiter(&server, 1, ttl);
        let b = limiter(&server, 1, ttl);
        let held = take(&a, 1, Duration::ZERO).await.expect("first holder");
        // B waits 3x the lease: renewals must keep A's lease alive the whole time.
        assert!(take(&b, 2, ttl * 3).await.is_none(), "nobody else got the slot");
        assert!(!held.is_lost());
        held.release().await.expect("release");
        assert!(take(&b, 2, Duration::from_millis(500)).await.is_some());
    });
}

#[test]
fn a_paused_holder_loses_its_lease_and_learns_it() {
    let server = RedisServer::start();
    let paused = holder(&server, &["--limit", "1", "--tasks", "1", "--iterations", "1", "--hold", "4s", "--lease-ttl", "600ms"]);
    let pid = paused.pid().to_string();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let (first_token, second_token) = rt.block_on(async {
        let l = limiter(&server, 1, Duration::from_millis(600));
        let deadline = Instant::now() + Duration::from_secs(10);
        let first = loop {
            if let Some(h) = l.inspect().await.expect("inspect").holders.first() {
                break h.fencing_token;
            }
            assert!(Instant::now() < deadline, "holder never took its slot");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        Command::new("kill").args(["-STOP", &pid]).status().expect("SIGSTOP");
        let taken = take(&l, 2, Duration::from_secs(3)).await.expect("the paused holder's lease was reclaimed");
        let second = taken.fencing_token();
        Command::new("kill").args(["-CONT", &pid]).status().expect("SIGCONT");
        // The lease is gone from Redis whatever this holder does now: the paused one learns it
        // at its next renewal.
        taken.release().await.expect("release");
        (first, second)
    });
    assert!(second_token > first_token, "the new holder's fencing token is newer");
    let out = paused.wait_with_output(Duration::from_secs(60));
    let s = last_json(&out.stdout);
    assert_eq!(s["lost"], 1, "after SIGCONT the holder learned its lease was lost: {s}");
}

/// The failure class of a GC pause or VM stall: a holder whose query is still running at the
/// service stops renewing. Its lease must not be granted again before the query must have ended
/// (grant + query.max_duration), even though lease_ttl passed long ago.
#[test]
fn a_paused_holder_with_a_query_in_flight_keeps_its_slot_until_the_query_must_have_ended() {
    let server = RedisServer::start();
    let paused = holder(
        &server,
        &["--limit", "1", "--tasks", "1", "--iterations", "1", "--hold", "8s", "--lease-ttl", "600ms", "--query-max-duration", "6s"],
    );
    let pid = paused.pid().to_string();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let l = limiter(&server, 1, Duration::from_millis(600));
        let deadline = Instant::now() + Duration::from_secs(10);
        while l.inspect().await.expect("inspect").holders.is_empty() {
            assert!(Instant::now() < deadline, "holder never took its slot");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Command::new("kill").args(["-STOP", &pid]).status().expect("SIGSTOP");
        // More than three lease_ttls without a renewal: a plain lease would have been reclaimed.
        assert!(take(&l, 2, Duration::from_secs(2)).await.is_none(), "the slot of a query still in flight was granted again");
        let state = l.inspect().await.expect("inspect");
        assert!(state.holders[0].age >= Duration::from_secs(2), "the paused holder's lease outlived its ttl: {state:?}");
        // Once the query must have ended at the service, the slot comes back.
        let taken = take(&l, 3, Duration::from_secs(10)).await.expect("the slot comes back after the query's longest run");
        Command::new("kill").args(["-CONT", &pid]).status().expect("SIGCONT");
        taken.release().await.expect("release");
    });
    let out = paused.wait_with_output(Duration::from_secs(60));
    assert_eq!(last_json(&out.stdout)["lost"], 1, "after SIGCONT the holder learned its lease was gone");
}

#[test]
fn a_redis_restart_gives_clear_errors_and_service_resumes() {
    let mut server = RedisServer::start();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let l = limiter(&server, 1, Duration::from_secs(2));
        let held = take(&l, 1, Duration::ZERO).await.expect("slot");
        let waiter = tokio::spawn({
            let l = l.clone();
            async move { l.acquire(request(2), Duration::from_secs(2)).await.map(|a| matches!(a, Acquire::Granted(_))) }
        });
        // Kill Redis once the waiter is in line.
        let deadline = Instant::now() + Duration::from_secs(10);
        while l.inspect().await.expect("inspect").waiters.is_empty() {
            assert!(Instant::now() < deadline, "the waiter never queued");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        server.kill();
        let started = Instant::now();
        let err = l.acquire(request(3), Duration::from_millis(300)).await.expect_err("redis is down");
        assert!(err.to_string().contains("slot backend unavailable"), "{err}");
        assert!(started.elapsed() < Duration::from_millis(300) + Duration::from_secs(2), "bounded even when down");
        let waited = waiter.await.expect("no panic");
        assert!(!matches!(waited, Ok(true)), "the waiter was not granted a slot by a dead Redis");
        drop(held);
        server.restart();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match l.acquire(request(4), Duration::from_millis(200)).await {
                Ok(Acquire::Granted(_)) => break,
                _ if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(100)).await,
                other => panic!("service did not resume: {other:?}"),
            }
        }
    });
}

/// A job loop that fails during an outage drops its jobs mid-release. The release must still
/// reach Redis once it is back: with AOF the lease is restored, and a release lost with its
/// caller would hold the slot until its query floor ran out, stalling every later job.
#[test]
fn a_release_cut_short_by_an_outage_still_frees_the_slot_once_redis_is_back() {
    let mut server = RedisServer::start_with(&["--appendonly", "yes", "--appendfsync", "always"]);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        // A lease far longer than the test: only a release frees the slot in time.
        let l = limiter(&server, 1, Duration::from_secs(60));
        let held = take(&l, 1, Duration::ZERO).await.expect("slot");
        server.kill();
        // The caller gives up on the release while Redis is down, as a dropped job does.
        let cut_short = tokio::time::timeout(Duration::from_millis(100), held.release()).await;
        assert!(cut_short.is_err(), "the release cannot finish while Redis is down: {cut_short:?}");
        server.restart();
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            match l.inspect().await {
                Ok(state) if state.holders.is_empty() => break,
                state => {
                    assert!(Instant::now() < deadline, "the restored lease was never released: {state:?}");
                    tokio::task::yield_now().await;
                }
            }
        }
        assert!(take(&l, 2, Duration::from_secs(1)).await.is_some(), "the slot is free for the next job");
    });
}

#[test]
fn waiters_are_served_in_arrival_order_and_timeouts_leave_nothing_behind() {
    let server = RedisServer::start();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let l = limiter(&server, 1, Duration::from_secs(5));
        let held = take(&l, 0, Duration::ZERO).await.expect("slot");

        // A waiter that gives up leaves no key of its own behind.
        assert!(take(&l, 99, Duration::from_millis(100)).await.is_none());
        let state = l.inspect().await.expect("inspect");
        assert!(state.waiters.is_empty(), "{state:?}");
        let keys = l.existing_keys().await.expect("keys");
        assert!(keys.iter().all(|k| !k.contains(":wake:")), "{keys:?}");

        let order = Arc::new(Mutex::new(Vec::new()));
        let mut waiters = Vec::new();
        for org in 1..=5u64 {
            let (own, order) = (limiter(&server, 1, Duration::from_secs(5)), order.clone());
            waiters.push(tokio::spawn(async move {
                let p = take(&own, org, Duration::from_secs(10)).await.expect("served");
                order.lock().expect("lock").push(org);
                tokio::time::sleep(Duration::from_millis(10)).await;
                p.release().await.expect("release");
            }));
            // Arrive one after another.
            let deadline = Instant::now() + Duration::from_secs(5);
            while l.inspect().await.expect("inspect").waiters.len() < org as usize {
                assert!(Instant::now() < deadline);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        // With holders and waiters in place, every key the limiter wrote carries a TTL.
        let mut conn = server.connection();
        for key in l.existing_keys().await.expect("keys") {
            let ttl: i64 = redis::cmd("PTTL").arg(&key).query(&mut conn).expect("pttl");
            assert!(ttl > 0, "{key} has no TTL ({ttl})");
        }
        held.release().await.expect("release");
        for w in waiters {
            w.await.expect("waiter");
        }
        assert_eq!(*order.lock().expect("lock"), vec![1, 2, 3, 4, 5]);
        let state = l.inspect().await.expect("inspect");
        assert!(state.holders.is_empty() && state.waiters.is_empty(), "{state:?}");
    });
}

#[test]
fn a_runtime_limit_change_reaches_every_process() {
    let server = RedisServer::start();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let ops = limiter(&server, 2, Duration::from_secs(5));
        let a = take(&ops, 1, Duration::ZERO).await.expect("slot");
        let _b = take(&ops, 2, Duration::ZERO).await.expect("slot");
        ops.set_limit(1).await.expect("set limit");
        assert!(!a.is_lost(), "lowering the limit interrupts no holder");
        a.release().await.expect("release");
        assert!(take(&ops, 3, Duration::from_millis(100)).await.is_none(), "the lower limit holds");
    });
    // Another process sees the raised limit without a restart.
    let mut conn = server.connection();
    let _: () = redis::cmd("DEL").arg("observer:holding").query(&mut conn).expect("del");
    rt.block_on(async { limiter(&server, 2, Duration::from_secs(5)).set_limit(6).await.expect("raise") });
    let out = holder(&server, &["--limit", "2", "--tasks", "12", "--iterations", "3", "--hold", "20ms"])
        .wait_with_output(Duration::from_secs(60));
    let s = last_json(&out.stdout);
    assert!(s["max_seen"].as_u64().unwrap_or(0) > 2, "the process used the raised limit, not its own default: {s}");
}

#[test]
fn fail_open_falls_back_to_the_local_limit_only_while_redis_is_unreachable() {
    let mut server = RedisServer::start();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let primary = Arc::new(limiter(&server, 1, Duration::from_secs(5)));
        let open = FailOpenLimiter::new(primary.clone(), 2);
        // Redis up: a full cluster stays full; a timeout never falls back.
        let held = match open.acquire(request(1), Duration::ZERO).await.expect("redis answers") {
            Acquire::Granted(p) => p,
            Acquire::TimedOut(t) => panic!("the first slot is free: {t:?}"),
        };
        assert!(matches!(open.acquire(request(2), Duration::from_millis(100)).await, Ok(Acquire::TimedOut(_))));
        assert_eq!(open.fallback_in_use(), 0);
        drop(held);

        server.kill();
        // Fail closed (the plain limiter): an error, so the job is recorded as slot_unavailable.
        assert!(primary.acquire(request(3), Duration::from_millis(100)).await.is_err());
        // Fail open: the local limit of 2 applies, and no more.
        let mut granted = Vec::new();
        let mut timed_out = 0;
        for org in 10..13 {
            match open.acquire(request(org), Duration::from_millis(200)).await.expect("fallback answers") {
                Acquire::Granted(p) => granted.push(p),
                Acquire::TimedOut(_) => timed_out += 1,
            }
        }
        assert_eq!((granted.len(), timed_out), (2, 1), "the fallback limit bounds the process");
        assert_eq!(open.fallback_in_use(), 2);
        drop(granted);
        let deadline = Instant::now() + Duration::from_secs(5);
        while open.fallback_in_use() != 0 {
            assert!(Instant::now() < deadline, "fallback permits release on drop");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }

        // Redis back: the cluster-wide limiter answers again and the fallback is left alone.
        server.restart();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match open.acquire(request(20), Duration::from_millis(200)).await {
                Ok(Acquire::Granted(p))
                    if open.fallback_in_use() == 0 && primary.inspect().await.map(|s| s.holders.len()).ok() == Some(1) =>
                {
                    drop(p);
                    break;
                }
                _ if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(100)).await,
                other => panic!("the cluster-wide limiter did not take over again: {other:?}"),
            }
        }
    });
}

/// The query service's numbers cap the limit at once: it admits 10 and counts 8 while the fleet
/// holds 5 leases, so 3 are other callers' and, with a margin of 1, the fleet may hold 6. The
/// cap holds the slot a holder gives back after a refusal; with no newer answer it lapses and
/// the stored limit rules again. A count of -1 (the service's counter failed) changes nothing.
#[test]
fn the_services_own_numbers_cap_the_limit_and_lapse_without_answers() {
    use projector_shared::service::ServiceQuota;
    use projector_shared::slots::ServiceSteering;
    let server = RedisServer::start();
    let steering = ServiceSteering { margin: 1, ttl: Duration::from_secs(2), use_throttle: false, memory: Duration::ZERO };
    tokio::runtime::Runtime::new().expect("runtime").block_on(async {
        let settings = RedisSlotSettings::new(10, Duration::from_secs(30)).following_service(steering);
        let l = RedisSlotLimiter::new(server.url(), settings).expect("limiter");
        let mut held = Vec::new();
        for org in 0..5 {
            held.push(take(&l, org, Duration::ZERO).await.expect("under the limit"));
        }
        let cap = l
            .heard_service(
                ServiceQuota { quota_used: 8, rejection_threshold: 10, throttle_threshold: 66 },
                &steering,
                false,
                Duration::ZERO,
            )
            .await
            .expect("capped");
        assert_eq!((cap.cap, cap.others, cap.in_use, cap.limit_in_force), (6, 3, 5, 6));
        assert_eq!(l.limit(), 6);
        held.push(take(&l, 5, Duration::ZERO).await.expect("the sixth fits under the cap"));
        assert!(take(&l, 6, Duration::ZERO).await.is_none(), "the seventh does not");
        let occupancy = l.occupancy_now().await.expect("occupancy");
        assert_eq!((occupancy.service_cap, occupancy.source(10)), (Some(6), "service"));

        // A refusal while the fleet is over the service's count: the cap drops below what the
        // fleet holds, so a slot given back is not handed to a waiter.
        let waiter = tokio::spawn({
            let l = l.clone();
            async move { take(&l, 7, Duration::from_millis(800)).await.map(|p| p.fencing_token()) }
        });
        l.heard_service(ServiceQuota { quota_used: 11, rejection_threshold: 10, throttle_threshold: 66 }, &steering, true, Duration::ZERO)
            .await
            .expect("capped");
        held.pop().expect("held").release().await.expect("released");
        assert_eq!(waiter.await.expect("waiter"), None, "the waiter got nothing while the fleet was over");

        // An answer to a query sent before that refusal tells of the service as it was: it cannot
        // raise the cap (the service's limit may have dropped since it started).
        let stale = l
            .heard_service(
                ServiceQuota { quota_used: 5, rejection_threshold: 100, throttle_threshold: 66 },
                &steering,
                false,
                Duration::from_secs(10),
            )
            .await
            .expect("capped");
        assert_eq!(stale.cap, 4, "{stale:?}");

        // The throttle point caps too when asked (Snuba's: 100 // 1.5)...
        let throttled = ServiceSteering { use_throttle: true, ..steering };
        let cap = l
            .heard_service(
                ServiceQuota { quota_used: 5, rejection_threshold: 100, throttle_threshold: 66 },
                &throttled,
                false,
                Duration::ZERO,
            )
            .await
            .expect("capped");
        assert_eq!(cap.cap, 66, "at most the throttle point: {cap:?}");
        // ...but never below half the room to refusal: with 80 other queries past the throttle
        // point, keeping under it would leave the fleet one slot, and a throttled query still runs.
        let cap = l
            .heard_service(
                ServiceQuota { quota_used: 85, rejection_threshold: 100, throttle_threshold: 66 },
                &throttled,
                true,
                Duration::ZERO,
            )
            .await
            .expect("capped");
        assert_eq!((cap.others, cap.cap), (80, 10), "half of 100 - 80 - 1: {cap:?}");

        // The trait ignores a failed counter; the cap lapses after its ttl.
        SlotLimiter::heard_service(
            &l,
            ServiceQuota { quota_used: -1, rejection_threshold: 1, throttle_threshold: 1 },
            false,
            Duration::ZERO,
        )
        .await
        .expect("ignored");
        assert_eq!(l.occupancy_now().await.expect("occupancy").service_cap, Some(10));
        drop(held);
        let limiter = &l;
        let o = projector_tests::eventually(Duration::from_secs(10), "the cap lapses after its ttl", move || async move {
            Some(limiter.occupancy_now().await.expect("occupancy")).filter(|o| o.service_cap.is_none())
        })
        .await;
        assert_eq!((o.in_force, o.source(10)), (Some(10), "config"));
    });
}

/// `slots.service_memory`: the service's own limit less the margin outlives the cap that also
/// counted other callers. It admits 10 and counts 8 while the fleet holds 5, so the cap is 6;
/// once the cap lapses the limit in force is 9 (10 − 1), not the stored 20, and the next run
/// starts within what the service admits.
#[test]
fn the_services_room_bounds_the_limit_after_its_cap_lapses() {
    use projector_shared::service::ServiceQuota;
    use projector_shared::slots::ServiceSteering;
    let server = RedisServer::start();
    let steering = ServiceSteering { margin: 1, ttl: Duration::from_secs(1), use_throttle: false, memory: Duration::from_secs(3600) };
    tokio::runtime::Runtime::new().expect("runtime").block_on(async {
        let settings = RedisSlotSettings::new(20, Duration::from_secs(30)).following_service(steering);
        let l = RedisSlotLimiter::new(server.url(), settings).expect("limiter");
        let mut held = Vec::new();
        for org in 0..5 {
            held.push(take(&l, org, Duration::ZERO).await.expect("under the limit"));
        }
        let numbers = ServiceQuota { quota_used: 8, rejection_threshold: 10, throttle_threshold: 66 };
        let cap = l.heard_service(numbers, &steering, false, Duration::ZERO).await.expect("capped");
        assert_eq!((cap.cap, cap.limit_in_force), (6, 6));
        drop(held);
        let limiter = &l;
        let o = projector_tests::eventually(Duration::from_secs(10), "the cap lapses into the room", move || async move {
            Some(limiter.occupancy_now().await.expect("occupancy")).filter(|o| o.service_cap == Some(9))
        })
        .await;
        assert_eq!((o.in_force, o.source(20)), (Some(9), "service"));
        let mut held = Vec::new();
        for org in 10..19 {
            held.push(take(&l, org, Duration::ZERO).await.expect("within the room"));
        }
        assert!(take(&l, 19, Duration::ZERO).await.is_none(), "the tenth is over the service's room");
    });
}

/// A cooldown after a 429 pauses every grant: a waiter keeps its place in line through it and
/// is served when it ends, not refused.
#[test]
fn a_cooldown_pauses_grants_and_waiters_are_served_when_it_ends() {
    let server = RedisServer::start();
    tokio::runtime::Runtime::new().expect("runtime").block_on(async {
        let l = limiter(&server, 4, Duration::from_secs(30));
        let held = take(&l, 1, Duration::ZERO).await.expect("a free slot");
        l.pause_grants(Duration::from_millis(800)).await.expect("paused");
        assert!(take(&l, 2, Duration::ZERO).await.is_none(), "nothing is granted during the cooldown");
        let started = Instant::now();
        let waiter = take(&l, 3, Duration::from_secs(10)).await.expect("served when the cooldown ends");
        assert!(started.elapsed() >= Duration::from_millis(500), "not before the cooldown ended: {:?}", started.elapsed());
        drop((held, waiter));
    });
}
