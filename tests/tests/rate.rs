//! Rate policies against a real redis-server: `lua/rate_acquire.lua` through `RedisRateLimiter`
//! and `RateGate`. Admission times are Redis's own (the script returns them), so the windows are
//! counted on the clock that decided them.

use std::sync::Arc;
use std::time::{Duration, Instant};

use projector_shared::rate::{Admission, BlockReason, Pass, RateGate, RateLimiter, RateMode, RatePolicy, RateWindow, RedisRateLimiter};
use projector_tests::RedisServer;

use projector_tests::runtime;

fn policy(mode: RateMode, windows: &[(u32, u64)], burst: u32, max_delay: Duration) -> RatePolicy {
    RatePolicy {
        windows: windows.iter().map(|&(limit, ms)| RateWindow { limit, span: Duration::from_millis(ms) }).collect(),
        mode,
        burst,
        max_delay,
        start_jitter: Duration::ZERO,
    }
}

fn limiter(server: &RedisServer, referrer: &str, policy: RatePolicy) -> RedisRateLimiter {
    let (_, conn) = projector_shared::redis_conn::connection_manager(server.url(), Duration::from_secs(2)).expect("connection manager");
    RedisRateLimiter::new(conn, referrer, policy)
}

/// The most admission times (us) in any half-open interval of `span_us`.
fn most_in_any_window(times: &[u64], span_us: u64) -> usize {
    let mut sorted = times.to_vec();
    sorted.sort_unstable();
    let (mut start, mut most) = (0, 0);
    for end in 0..sorted.len() {
        while sorted[end] - sorted[start] >= span_us {
            start += 1;
        }
        most = most.max(end - start + 1);
    }
    most
}

/// `clients` tasks, each offering an admission every `every` for `length`; the Redis-time
/// admission stamps and the number of refusals.
async fn offer(limiter: Arc<RedisRateLimiter>, clients: usize, every: Duration, length: Duration) -> (Vec<u64>, usize) {
    let until = Instant::now() + length;
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let limiter = limiter.clone();
            tokio::spawn(async move {
                let (mut stamps, mut refused) = (Vec::new(), 0);
                while Instant::now() < until {
                    match limiter.admit().await.expect("redis answers") {
                        Admission::Admitted { at_us, .. } => stamps.push(at_us),
                        Admission::Refused { .. } => refused += 1,
                    }
                    tokio::time::sleep(every).await;
                }
                (stamps, refused)
            })
        })
        .collect();
    let (mut stamps, mut refused) = (Vec::new(), 0);
    for t in tasks {
        let (s, r) = t.await.expect("client task");
        stamps.extend(s);
        refused += r;
    }
    (stamps, refused)
}

#[test]
fn strict_admits_no_more_than_n_in_any_window_under_ten_times_the_allowed_load() {
    let server = RedisServer::start();
    runtime().block_on(async {
        let l = Arc::new(limiter(&server, "strict", policy(RateMode::Strict, &[(10, 1_000), (50, 10_000)], 1, Duration::from_millis(500))));
        // 32 clients, one offer each per 320 ms: 100/s, ten times the short window's 10/s.
        let (stamps, refused) = offer(l, 32, Duration::from_millis(320), Duration::from_secs(30)).await;
        assert!(most_in_any_window(&stamps, 1_000_000) <= 10, "a 1 s window over 10: {}", most_in_any_window(&stamps, 1_000_000));
        assert!(most_in_any_window(&stamps, 10_000_000) <= 50, "a 10 s window over 50: {}", most_in_any_window(&stamps, 10_000_000));
        // 30 s of 50/10s is 150 (plus one window's worth at the edges); the budget is used, not starved.
        assert!((140..=160).contains(&stamps.len()), "{} admitted in 30 s", stamps.len());
        assert!(refused > 1_000, "the overload was refused, not queued: {refused}");
    });
}

#[test]
fn smooth_keeps_the_exact_long_run_rate_after_its_burst() {
    let server = RedisServer::start();
    runtime().block_on(async {
        let l = Arc::new(limiter(&server, "smooth", policy(RateMode::Smooth, &[(20, 1_000)], 5, Duration::from_millis(500))));
        let (mut stamps, _) = offer(l, 16, Duration::from_millis(50), Duration::from_secs(10)).await;
        stamps.sort_unstable();
        assert!(most_in_any_window(&stamps, 1_000_000) <= 5 + 20, "burst + rate x W: {}", most_in_any_window(&stamps, 1_000_000));
        // After the burst, starts are spaced exactly W/N: the rate between the first spaced start
        // and the last is 20/s within 1 %.
        let steady = &stamps[4..];
        let span_s = (steady[steady.len() - 1] - steady[0]) as f64 / 1e6;
        let rate = (steady.len() - 1) as f64 / span_s;
        assert!((rate - 20.0).abs() / 20.0 <= 0.01, "long-run rate {rate:.3}/s over {span_s:.1} s");
        // 16 clients offer at once at the start: the burst of 5 starts without the 50 ms spacing.
        assert!(stamps[4] - stamps[0] < 50_000, "the burst of 5 started together: {:?}", &stamps[..6]);
    });
}

#[test]
fn a_wait_beyond_max_delay_is_refused_in_one_call_and_every_pass_returns_within_max_delay() {
    let server = RedisServer::start();
    let mut admin = server.connection();
    runtime().block_on(async {
        let max_delay = Duration::from_millis(300);
        let l = Arc::new(limiter(&server, "bounded", policy(RateMode::Strict, &[(2, 200)], 1, max_delay)));
        let gate = RateGate::new(l.clone(), "bounded", true, Duration::ZERO);
        let _: () = redis::cmd("CONFIG").arg("RESETSTAT").query(&mut admin).expect("resetstat");
        // 8 clients x 10 passes against 2 per 200 ms: some start at once, some are held, some refused.
        let clients: Vec<_> = (0..8)
            .map(|_| {
                let gate = gate.clone();
                tokio::spawn(async move {
                    let mut passes = Vec::new();
                    for _ in 0..10 {
                        let started = Instant::now();
                        let pass = gate.pass().await.expect("redis answers");
                        passes.push((pass, started.elapsed()));
                    }
                    passes
                })
            })
            .collect();
        let mut passes = Vec::new();
        for c in clients {
            passes.extend(c.await.expect("client"));
        }
        for (pass, took) in &passes {
            // max_delay plus a round trip; the margin is for a loaded machine, not for speed.
            assert!(*took < max_delay + Duration::from_millis(250), "a pass took {took:?}: {pass:?}");
            if let Pass::Refused { retry_after, reason } = pass {
                assert_eq!(*reason, BlockReason::Window);
                assert!(*retry_after > max_delay, "refused only beyond max_delay: {retry_after:?}");
            }
        }
        let refused = passes.iter().filter(|(p, _)| matches!(p, Pass::Refused { .. })).count();
        let held = passes.iter().filter(|(p, took)| *p == Pass::Go && *took >= Duration::from_millis(50)).count();
        assert!(refused > 0 && held > 0, "{refused} refused, {held} held: both paths ran");
        let info: String = redis::cmd("INFO").arg("commandstats").query(&mut admin).expect("info");
        let stat = |cmd: &str, field: &str| -> u64 {
            info.lines()
                .find(|l| l.starts_with(&format!("cmdstat_{cmd}:")))
                .and_then(|l| l.split(&format!("{field}=")).nth(1))
                .and_then(|v| v.split(',').next())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        // One script call per admission: the first EVALSHA fails (NOSCRIPT) before SCRIPT LOAD.
        let calls = stat("evalsha", "calls") - stat("evalsha", "failed_calls") + stat("eval", "calls");
        assert_eq!(calls, 80, "{info}");
    });
}

#[test]
fn a_cooldown_holds_every_admission_of_the_referrer_until_it_ends() {
    let server = RedisServer::start();
    runtime().block_on(async {
        let l = Arc::new(limiter(&server, "cool", policy(RateMode::Strict, &[(100, 1_000)], 1, Duration::from_millis(200))));
        let other = limiter(&server, "cool", policy(RateMode::Strict, &[(100, 1_000)], 1, Duration::from_millis(200)));
        let gate = RateGate::new(l.clone(), "cool", true, Duration::from_secs(3));
        gate.saw_429().await;
        match other.admit().await.expect("redis answers") {
            Admission::Refused { reason: BlockReason::Cooldown, retry_after } => {
                assert!(retry_after > Duration::from_secs(2) && retry_after <= Duration::from_secs(3), "{retry_after:?}");
            }
            a => panic!("another worker of the fleet was admitted during the cooldown: {a:?}"),
        }
        let left = l.cooldown_left().await.expect("redis answers").expect("a cooldown is in force");
        assert!(left <= Duration::from_secs(3));
    });
}

/// The same deterministic load (12 back-to-back passes against 5 per 10 s, no delay allowed)
/// through an enforced gate and through a gate in shadow mode: the enforced one refuses 7, the
/// shadow one lets all 12 through at once and counts exactly those 7 as "would refuse".
#[test]
fn shadow_mode_delays_nothing_and_counts_what_enforcement_would_have_done() {
    let server = RedisServer::start();
    runtime().block_on(async {
        let (_, conn) = projector_shared::redis_conn::connection_manager(server.url(), Duration::from_secs(2)).expect("connection manager");
        let policy = policy(RateMode::Strict, &[(5, 10_000)], 1, Duration::ZERO);
        let enforced =
            RateGate::new(Arc::new(RedisRateLimiter::new(conn.clone(), "enforced", policy.clone())), "enforced", true, Duration::ZERO);
        let shadow_limiter = Arc::new(RedisRateLimiter::new(conn.clone(), "shadow", policy).enforced(false));
        let shadow = RateGate::new(shadow_limiter.clone(), "shadow", false, Duration::ZERO);
        let mut refused = 0;
        for _ in 0..12 {
            if matches!(enforced.pass().await.expect("redis answers"), Pass::Refused { .. }) {
                refused += 1;
            }
        }
        let started = Instant::now();
        for _ in 0..12 {
            assert_eq!(shadow.pass().await.expect("redis answers"), Pass::Go, "shadow mode refuses nothing");
        }
        assert!(started.elapsed() < Duration::from_secs(2), "and delays nothing: {:?}", started.elapsed());
        let counted = shadow_limiter.now().await.expect("redis answers");
        assert_eq!(refused, 7);
        assert_eq!((counted.shadow_would_refuse, counted.shadow_would_delay), (7, 0), "{counted:?}");
    });
}
