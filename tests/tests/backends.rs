//! One table of slot and rate cases, run against every backend: memory, a real `redis-server`,
//! and a SQLite file. A case states what every backend must do, and where a backend differs by
//! design (memory forgets at exit and has no shared line to pause), the case says so, so the
//! three cannot drift apart unnoticed.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use projector_shared::OrgId;
use projector_shared::rate::{
    Admission, BlockReason, MemoryRateLimiter, RateLimiter, RateMode, RatePolicy, RateWindow, RedisRateLimiter, SqliteRateLimiter,
};
use projector_shared::slots::{
    Acquire, MemorySlotLimiter, RedisSlotLimiter, RedisSlotSettings, SlotLimiter, SlotPermit, SlotRequest, SqliteSlotLimiter,
    SqliteSlotSettings,
};
use projector_sqlite::{DEFAULT_BUSY_TIMEOUT, Database};
use projector_tests::{RedisServer, runtime};

/// Where the state lives for one case.
enum Store {
    Memory,
    Redis(RedisServer),
    Sqlite(tempfile::TempDir),
}

impl Store {
    fn start(kind: &str) -> Store {
        match kind {
            "memory" => Store::Memory,
            "redis" => Store::Redis(RedisServer::start()),
            "sqlite" => Store::Sqlite(tempfile::tempdir().expect("tempdir")),
            other => panic!("no backend {other}"),
        }
    }

    fn shared(&self) -> bool {
        !matches!(self, Store::Memory)
    }

    async fn database(dir: &tempfile::TempDir) -> Database {
        Database::open(&format!("sqlite://{}", dir.path().join("fleet.db").display()), DEFAULT_BUSY_TIMEOUT).await.expect("database")
    }

    /// `processes` limiters on the same state, as that many processes would hold.
    async fn slot_limiters(&self, limit: u32, processes: usize) -> Slots {
        let lease_ttl = Duration::from_secs(5);
        match self {
            Store::Memory => {
                let one = Arc::new(MemorySlotLimiter::new(limit));
                Slots { all: vec![one.clone() as Arc<dyn SlotLimiter>; processes], memory: Some(one) }
            }
            Store::Redis(server) => Slots {
                all: (0..processes)
                    .map(|_| {
                        let l = RedisSlotLimiter::new(server.url(), RedisSlotSettings::new(limit, lease_ttl)).expect("redis limiter");
                        Arc::new(l) as Arc<dyn SlotLimiter>
                    })
                    .collect(),
                memory: None,
            },
            Store::Sqlite(dir) => {
                let mut all = Vec::new();
                for _ in 0..processes {
                    let l = SqliteSlotLimiter::new(Self::database(dir).await, SqliteSlotSettings::new(limit, lease_ttl));
                    all.push(Arc::new(l) as Arc<dyn SlotLimiter>);
                }
                Slots { all, memory: None }
            }
        }
    }

    /// Waiters in line now, as the backend's own state has them.
    async fn waiting(&self, slots: &Slots) -> u64 {
        match self {
            Store::Memory => slots.memory.as_ref().map_or(0, |m| u64::from(m.waiting())),
            Store::Redis(server) => {
                let queue = projector_shared::keys::SlotKeys::new("default").queue();
                redis::cmd("ZCARD").arg(queue).query(&mut server.connection()).expect("ZCARD")
            }
            Store::Sqlite(dir) => {
                let db = Self::database(dir).await;
                let n: i64 = projector_sqlite::sqlx::query_scalar("SELECT count(*) FROM projector_slot_waiters")
                    .fetch_one(db.pool())
                    .await
                    .expect("count waiters");
                u64::try_from(n).unwrap_or(0)
            }
        }
    }

    /// Waits, up to 30 s, until `n` waiters are in line.
    async fn until_waiting(&self, slots: &Slots, n: u64) {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let now = self.waiting(slots).await;
            if now == n {
                return;
            }
            assert!(std::time::Instant::now() < deadline, "{now} waiters in line after 30 s, not {n}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// A rate limiter as a process starting now would build it.
    async fn rate_limiter(&self, memory: &Arc<MemoryRateLimiter>, policy: RatePolicy) -> Arc<dyn RateLimiter> {
        match self {
            Store::Memory => memory.clone(),
            Store::Redis(server) => {
                let (_, conn) = projector_shared::redis_conn::connection_manager(server.url(), Duration::from_secs(2)).expect("connection");
                Arc::new(RedisRateLimiter::new(conn, "billing-test", policy))
            }
            Store::Sqlite(dir) => Arc::new(SqliteRateLimiter::new(Self::database(dir).await, "billing-test", policy)),
        }
    }
}

/// The limiters of one case, one per process, and the in-process one behind them for memory.
struct Slots {
    all: Vec<Arc<dyn SlotLimiter>>,
    memory: Option<Arc<MemorySlotLimiter>>,
}

/// Runs `case` once per backend, as three tests named after it.
macro_rules! on_every_backend {
    ($case:ident) => {
        mod $case {
            #[test]
            fn memory() {
                super::$case(super::Store::start("memory"));
            }
            #[test]
            fn redis() {
                super::$case(super::Store::start("redis"));
            }
            #[test]
            fn sqlite() {
                super::$case(super::Store::start("sqlite"));
            }
        }
    };
}

async fn take(l: &Arc<dyn SlotLimiter>, org: u64, max_wait: Duration) -> Option<SlotPermit> {
    match l.acquire(SlotRequest::new("backends-test", OrgId(org)), max_wait).await.expect("the limiter answers") {
        Acquire::Granted(p) => Some(p),
        Acquire::TimedOut(_) => None,
    }
}

on_every_backend!(the_bound_holds_across_processes_and_every_waiter_is_served);
fn the_bound_holds_across_processes_and_every_waiter_is_served(store: Store) {
    runtime().block_on(async {
        let limiters = store.slot_limiters(3, 2).await.all;
        let (held, most, served) = (Arc::new(AtomicU32::new(0)), Arc::new(AtomicU32::new(0)), Arc::new(AtomicU32::new(0)));
        let tasks: Vec<_> = (0..30_u64)
            .map(|org| {
                let l = limiters[org as usize % limiters.len()].clone();
                let (held, most, served) = (held.clone(), most.clone(), served.clone());
                tokio::spawn(async move {
                    let permit = take(&l, org, Duration::from_secs(30)).await.expect("every waiter is served within 30 s");
                    let now = held.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    // The first holders keep their slots until the limit is full once, so that a
                    // limiter granting fewer than its limit shows (for at most 10 s).
                    let deadline = std::time::Instant::now() + Duration::from_secs(10);
                    while most.load(Ordering::SeqCst) < 3 && std::time::Instant::now() < deadline {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                    held.fetch_sub(1, Ordering::SeqCst);
                    permit.release().await.expect("release");
                    served.fetch_add(1, Ordering::SeqCst);
                })
            })
            .collect();
        for t in tasks {
            t.await.expect("task");
        }
        assert_eq!(served.load(Ordering::SeqCst), 30);
        assert!(most.load(Ordering::SeqCst) <= 3, "{} held at once against a limit of 3", most.load(Ordering::SeqCst));
        assert_eq!(most.load(Ordering::SeqCst), 3, "the limit is used, not starved");
    });
}

on_every_backend!(a_timed_out_wait_says_why_and_leaves_nothing_behind);
fn a_timed_out_wait_says_why_and_leaves_nothing_behind(store: Store) {
    runtime().block_on(async {
        let limiters = store.slot_limiters(1, 2).await.all;
        let holder = take(&limiters[0], 1, Duration::ZERO).await.expect("a free slot");
        match limiters[1].acquire(SlotRequest::new("backends-test", OrgId(2)), Duration::from_millis(200)).await.expect("answer") {
            Acquire::TimedOut(t) => {
                assert!(t.waited >= Duration::from_millis(200), "{t:?}");
                assert_eq!((t.in_use, t.limit, t.queue_position), (1, 1, 1), "{t:?}");
            }
            Acquire::Granted(_) => panic!("granted past the limit"),
        }
        holder.release().await.expect("release");
        let again = take(&limiters[1], 3, Duration::from_secs(2)).await;
        assert!(again.is_some(), "the timed-out waiter left no place in line behind");
    });
}

on_every_backend!(waiters_are_served_in_arrival_order);
fn waiters_are_served_in_arrival_order(store: Store) {
    runtime().block_on(async {
        let slots = store.slot_limiters(1, 2).await;
        let limiters = &slots.all;
        let holder = take(&limiters[0], 0, Duration::ZERO).await.expect("a free slot");
        let order = Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for org in 1..=5_u64 {
            let (l, order) = (limiters[org as usize % 2].clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                let p = take(&l, org, Duration::from_secs(30)).await.expect("served");
                order.lock().expect("order").push(org);
                p.release().await.expect("release");
            }));
            // Each waiter is in line before the next arrives.
            store.until_waiting(&slots, org).await;
        }
        holder.release().await.expect("release");
        for t in tasks {
            t.await.expect("task");
        }
        assert_eq!(*order.lock().expect("order"), vec![1, 2, 3, 4, 5]);
    });
}

on_every_backend!(a_wait_dropped_midway_leaves_the_line);
fn a_wait_dropped_midway_leaves_the_line(store: Store) {
    runtime().block_on(async {
        let slots = store.slot_limiters(1, 2).await;
        let limiters = &slots.all;
        let holder = take(&limiters[0], 0, Duration::ZERO).await.expect("a free slot");
        // A job cancelled while it waits: its future is dropped, not answered.
        let dropped = tokio::time::timeout(Duration::from_millis(150), take(&limiters[0], 1, Duration::from_secs(30))).await;
        assert!(dropped.is_err(), "no slot was free for it");
        let next = tokio::spawn({
            let l = limiters[1].clone();
            async move { take(&l, 2, Duration::from_secs(30)).await.map(|p| (std::time::Instant::now(), p)) }
        });
        // The dropped waiter has left the line, and the live one is in it.
        store.until_waiting(&slots, 1).await;
        let released_at = std::time::Instant::now();
        holder.release().await.expect("release");
        let (granted_at, _p) = next.await.expect("task").expect("the live waiter is served");
        assert!(
            granted_at.duration_since(released_at) < Duration::from_secs(1),
            "the slot went to the live waiter, not to the dropped one: {:?}",
            granted_at.duration_since(released_at)
        );
    });
}

on_every_backend!(a_cooldown_pauses_grants_where_the_line_is_shared);
fn a_cooldown_pauses_grants_where_the_line_is_shared(store: Store) {
    runtime().block_on(async {
        let limiters = store.slot_limiters(2, 2).await.all;
        limiters[0].pause_grants(Duration::from_millis(600)).await.expect("pause");
        let started = std::time::Instant::now();
        let p = take(&limiters[1], 1, Duration::from_secs(5)).await.expect("granted once the cooldown ends");
        let waited = started.elapsed();
        if store.shared() {
            assert!(waited >= Duration::from_millis(450), "granted {waited:?} into a 600 ms cooldown");
        } else {
            // The in-process limiter has no shared line: the rate gate's cooldown holds queries back.
            assert!(waited < Duration::from_millis(300), "memory ignores pause_grants: {waited:?}");
        }
        p.release().await.expect("release");
    });
}

fn policy(mode: RateMode, limit: u32, span: Duration, max_delay: Duration) -> RatePolicy {
    RatePolicy { windows: vec![RateWindow { limit, span }], mode, burst: 1, max_delay, start_jitter: Duration::ZERO }
}

on_every_backend!(strict_admits_n_per_window_and_says_when_the_next_may_start);
fn strict_admits_n_per_window_and_says_when_the_next_may_start(store: Store) {
    runtime().block_on(async {
        let p = policy(RateMode::Strict, 5, Duration::from_secs(60), Duration::ZERO);
        let memory = Arc::new(MemoryRateLimiter::new(p.clone()));
        let l = store.rate_limiter(&memory, p).await;
        for i in 0..5 {
            assert!(matches!(l.admit().await.expect("answer"), Admission::Admitted { .. }), "start {i}");
        }
        match l.admit().await.expect("answer") {
            Admission::Refused { retry_after, reason } => {
                assert_eq!(reason, BlockReason::Window);
                assert!(retry_after > Duration::from_secs(50) && retry_after <= Duration::from_secs(60), "{retry_after:?}");
            }
            other => panic!("a sixth start in the minute: {other:?}"),
        }
    });
}

on_every_backend!(smooth_spaces_starts_evenly_within_the_delay);
fn smooth_spaces_starts_evenly_within_the_delay(store: Store) {
    runtime().block_on(async {
        let p = policy(RateMode::Smooth, 10, Duration::from_secs(1), Duration::from_secs(1));
        let memory = Arc::new(MemoryRateLimiter::new(p.clone()));
        let l = store.rate_limiter(&memory, p).await;
        let mut waits = Vec::new();
        for _ in 0..4 {
            match l.admit().await.expect("answer") {
                Admission::Admitted { wait, .. } => waits.push(wait),
                other => panic!("refused within the delay: {other:?}"),
            }
        }
        // 100 ms apart: each reservation lands one interval after the last (less the time the
        // calls themselves took).
        for pair in waits.windows(2) {
            let step = pair[1].saturating_sub(pair[0]);
            assert!(step > Duration::from_millis(60) && step <= Duration::from_millis(101), "{waits:?}");
        }
    });
}

on_every_backend!(a_cooldown_refuses_every_start_until_it_ends);
fn a_cooldown_refuses_every_start_until_it_ends(store: Store) {
    runtime().block_on(async {
        let p = policy(RateMode::Strict, 100, Duration::from_secs(1), Duration::from_secs(5));
        let memory = Arc::new(MemoryRateLimiter::new(p.clone()));
        let l = store.rate_limiter(&memory, p).await;
        l.cool_down(Duration::from_secs(30)).await.expect("cooldown");
        match l.admit().await.expect("answer") {
            Admission::Refused { reason, retry_after } => {
                assert_eq!(reason, BlockReason::Cooldown);
                assert!(retry_after > Duration::from_secs(25), "{retry_after:?}");
            }
            other => panic!("admitted during a cooldown: {other:?}"),
        }
    });
}

on_every_backend!(an_hourly_budget_survives_a_restart_where_the_backend_persists);
fn an_hourly_budget_survives_a_restart_where_the_backend_persists(store: Store) {
    runtime().block_on(async {
        let p = policy(RateMode::Strict, 3, Duration::from_secs(3_600), Duration::ZERO);
        let before = store.rate_limiter(&Arc::new(MemoryRateLimiter::new(p.clone())), p.clone()).await;
        for _ in 0..3 {
            assert!(matches!(before.admit().await.expect("answer"), Admission::Admitted { .. }));
        }
        drop(before);
        // A new process: for memory, a new limiter with nothing in it.
        let after = store.rate_limiter(&Arc::new(MemoryRateLimiter::new(p.clone())), p).await;
        let next = after.admit().await.expect("answer");
        if store.shared() {
            assert!(
                matches!(next, Admission::Refused { reason: BlockReason::Window, .. }),
                "the hour's budget was used before the restart: {next:?}"
            );
        } else {
            assert!(matches!(next, Admission::Admitted { .. }), "memory forgets at exit: {next:?}");
        }
    });
}
