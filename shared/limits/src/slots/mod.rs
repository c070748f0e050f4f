//! The cluster-wide concurrency slot: the `SlotLimiter` trait, the permit a holder keeps while it
//! queries, and the metrics every limiter records. Implementations live beside it.

mod fail_open;
mod memory;
mod redis;
mod scripts;
mod sqlite;
mod sqlite_admin;

use std::time::Duration;

use futures::future::BoxFuture;
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

use crate::error::Error;
use projector_core::ids::OrgId;
use projector_core::metrics as m;

pub use self::redis::{
    AdaptiveWindow, HISTORY_SPAN, Holder, RedisSlotLimiter, RedisSlotSettings, ServiceSteering, SlotHistory, SlotSample, SlotState,
    samples_to_keep,
};
pub use self::scripts::{AdaptiveReport, Occupancy, ServiceCap};
pub use fail_open::FailOpenLimiter;
pub use memory::MemorySlotLimiter;
pub use sqlite::{SqliteSlotLimiter, SqliteSlotSettings};

/// Who asks for a slot; stored with the lease so operators can see who holds what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotRequest {
    /// The worker process (host, pid, random suffix).
    pub holder: String,
    pub org_id: OrgId,
    /// Set when the slot is taken for a query that starts at the grant: the longest the query
    /// service lets a query run (`query.max_duration`). The lease is then not reclaimed before
    /// grant + this, even if its holder stops renewing (paused, stalled or killed), because the
    /// query may still be running at the service until then. `None`: only `lease_ttl` applies.
    pub query_max_duration: Option<Duration>,
}

impl SlotRequest {
    /// A request for a slot held without a query in flight (only `lease_ttl` applies).
    pub fn new(holder: impl Into<String>, org_id: OrgId) -> Self {
        SlotRequest { holder: holder.into(), org_id, query_max_duration: None }
    }
}

/// The answer to a bounded wait for a slot.
#[derive(Debug)]
pub enum Acquire {
    Granted(SlotPermit),
    TimedOut(TimedOut),
}

/// Why a wait gave up, with what a person needs to tune `slots.*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimedOut {
    pub waited: Duration,
    /// Slots held when the wait gave up.
    pub in_use: u32,
    pub limit: u32,
    /// Waiters in line when the wait gave up, this one included.
    pub queue_position: u32,
}

/// Hands out at most `limit` slots at once; a wait for one is bounded by `max_wait`.
pub trait SlotLimiter: Send + Sync {
    /// Waits at most `max_wait` for a slot. `Err` means the limiter could not be asked at all.
    fn acquire(&self, request: SlotRequest, max_wait: Duration) -> BoxFuture<'_, Result<Acquire, Error>>;

    /// The limit in force now.
    fn limit(&self) -> u32;

    /// Grants no slot to anyone for `cooldown` (the fleet's cooldown after a 429): waiters keep
    /// their place in line instead of being refused. Limiters without a shared queue ignore it
    /// (the rate gate's cooldown then holds queries back).
    fn pause_grants(&self, _cooldown: Duration) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(async { Ok(()) })
    }

    /// The query service's own numbers from one answer: a limiter that follows them lowers the
    /// limit in force at once (`rejected`: they came with a 429; `age`: how long ago the answered
    /// query was sent). The others ignore them.
    fn heard_service(
        &self,
        _quota: projector_core::service::ServiceQuota,
        _rejected: bool,
        _age: Duration,
    ) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(async { Ok(()) })
    }
}

/// Gives a slot back; each limiter supplies its own.
pub trait ReleaseSlot: Send + Sync + 'static {
    /// Gives the slot back and reports whether that worked.
    fn release(self: Box<Self>) -> BoxFuture<'static, Result<(), Error>>;

    /// Makes the lease last at least `query_max_duration` from now, for a query about to start
    /// under it (the next page of an org): a holder that stops renewing keeps the slot until that
    /// query must have ended at the service. Limiters without leases have nothing to do.
    fn cover(&self, _query_max_duration: Duration) -> BoxFuture<'static, Result<(), Error>> {
        Box::pin(async { Ok(()) })
    }

    /// Keeps the slot for a query this holder abandoned but the service may still be running:
    /// it goes back no sooner than `until`, on a timer.
    fn keep(self: Box<Self>, until: Instant) {
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            tracing::warn!("slot kept outside a runtime; released now");
            self.release_on_drop();
            return;
        };
        // The task only sleeps and releases; a release error is logged inside `release_on_drop`.
        handle.spawn(async move {
            tokio::time::sleep_until(until).await;
            self.release_on_drop();
        });
    }

    /// Gives the slot back from `Drop`, where nothing can be awaited or returned.
    fn release_on_drop(self: Box<Self>) {
        let release = self.release();
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                handle.spawn(async move {
                    if let Err(e) = release.await {
                        tracing::warn!(error = %e, "releasing a dropped slot permit failed; its lease expires on its own");
                    }
                });
            }
            Err(_) => tracing::warn!("slot permit dropped outside a runtime; its lease expires on its own"),
        }
    }
}

/// A held slot. Dropping it gives the slot back; `release().await` does the same and reports errors.
///
/// How late after the grant a first query may go without stretching its lease first. A first
/// lease runs `query.max_duration` (plus `rate.max_delay`) from the grant, and the query starts
/// milliseconds after it: always asking the store first would cost every org a round trip. A
/// holder paused longer than this between its grant and its query (SIGSTOP, a long GC) asks.
pub const SEND_SLACK: Duration = Duration::from_millis(500);

/// **The one rule for giving a slot back**, kept here so that no path can bypass it: a slot under
/// which a query was sent ([`SlotPermit::query_sent`]) and not answered goes back no sooner than
/// that query must have ended at the service (its start + `query.max_duration`), whatever ends
/// the holder's use of it: `release`, a drop (a job dropped with its loop, a cancel, SIGTERM past
/// the grace), a panic's unwinding, a lost lease, a client-side timeout. Only an answer from the
/// service, or a query provably never sent, lets it go back at once.
pub struct SlotPermit {
    lease_id: String,
    fencing_token: u64,
    lost: CancellationToken,
    release: Option<Box<dyn ReleaseSlot>>,
    /// The query sent last under this slot, while its answer has not come; `None` when no query
    /// is in flight.
    unanswered: std::sync::Mutex<Option<Sent>>,
    /// Until when the first lease surely holds, on this process's monotonic clock: counted from
    /// before the call that made it, so a holder paused (SIGSTOP, a GC) anywhere after that call
    /// sees the lease as possibly lapsed. `None`: the permit does not lapse (in memory).
    surely_until: Option<Instant>,
}

/// A query sent and not answered: when, and the bounds that tell when the service has ended it.
#[derive(Debug, Clone, Copy)]
struct Sent {
    at: Instant,
    /// It reached the service within this long after `at`, or never did.
    arrives_within: Duration,
    /// The service counts a query at most this long after it reached it.
    max_duration: Duration,
}

impl Sent {
    /// When the service must have ended the query, judged at `now`: it reached the service by
    /// now at the latest (a query still on its way at `now` arrives no later), and by `at +
    /// arrives_within` in any case; it runs there at most `max_duration` more.
    fn must_end_by(&self, now: Instant) -> Instant {
        now.min(self.at + self.arrives_within) + self.max_duration
    }
}

/// A query sent under a permit, until its answer comes. Dropped without
/// [`QuerySent::answered`] (the future awaiting the answer was dropped, timed out or panicked),
/// the query still counts as running at the service, and the permit keeps its slot until the
/// query must have ended there.
#[must_use = "call answered() once the service has answered, or the slot is kept for the query's whole bound"]
pub struct QuerySent<'a> {
    permit: &'a SlotPermit,
}

impl QuerySent<'_> {
    /// The service answered (any status), or the query never reached it: nothing runs there now.
    pub fn answered(self) {
        *self.permit.unanswered.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
}

impl std::fmt::Debug for SlotPermit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SlotPermit")
            .field("lease_id", &self.lease_id)
            .field("fencing_token", &self.fencing_token)
            .field("lost", &self.lost.is_cancelled())
            .finish()
    }
}

/// Slots this process holds now, whatever limiter granted them: the source of
/// `spike_projection_concurrent_queries`, so the gauge is 0 whenever the process holds nothing.
static HELD_BY_PROCESS: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);

fn held_by_process_changed(delta: i64) {
    let now = HELD_BY_PROCESS.fetch_add(delta, std::sync::atomic::Ordering::SeqCst) + delta;
    metrics::gauge!(m::CONCURRENT_QUERIES).set(now.max(0) as f64);
}

/// Slots this process holds now.
pub fn held_by_process() -> u64 {
    HELD_BY_PROCESS.load(std::sync::atomic::Ordering::SeqCst).max(0) as u64
}

impl SlotPermit {
    /// Builds a permit; `lost` is cancelled by the limiter if the lease is lost while held.
    pub fn new(lease_id: String, fencing_token: u64, lost: CancellationToken, release: Box<dyn ReleaseSlot>) -> Self {
        held_by_process_changed(1);
        SlotPermit { lease_id, fencing_token, lost, release: Some(release), unanswered: std::sync::Mutex::new(None), surely_until: None }
    }

    /// The permit of a lease made by a call begun at `asked` for `first_lease`: it surely holds
    /// until `asked + first_lease`, and a query that could outlive that is covered first.
    pub fn leased(mut self, asked: Instant, first_lease: Duration) -> Self {
        self.surely_until = Some(asked + first_lease);
        self
    }

    /// Whether the first lease surely covers a query sent now: it lasts until the query must
    /// have ended at the service (`query_max_duration` from now), give or take [`SEND_SLACK`];
    /// if not, [`SlotPermit::cover`] it before sending.
    pub fn covers(&self, query_max_duration: Duration) -> bool {
        self.surely_until.is_none_or(|until| Instant::now() + query_max_duration <= until + SEND_SLACK)
    }

    pub fn lease_id(&self) -> &str {
        &self.lease_id
    }

    /// Grows with every grant: a store can refuse writes carrying an older token than it has seen.
    pub fn fencing_token(&self) -> u64 {
        self.fencing_token
    }

    /// Resolves if the lease is lost while held; a job selects on it to abandon its query.
    pub fn lost(&self) -> WaitForCancellationFuture<'_> {
        self.lost.cancelled()
    }

    pub fn is_lost(&self) -> bool {
        self.lost.is_cancelled()
    }

    /// Makes the lease last at least `query_max_duration` from now, before a further query under
    /// this slot (one org's next page): see [`ReleaseSlot::cover`].
    pub async fn cover(&self, query_max_duration: Duration) -> Result<(), Error> {
        match &self.release {
            Some(r) => r.cover(query_max_duration).await,
            None => Ok(()),
        }
    }

    /// Marks a query as sent under this slot: it reaches the service within `arrives_within`
    /// (the client's timeout covers connecting and sending), and the service counts it at most
    /// `max_duration` from its start there. Until the returned guard says it was answered, the
    /// slot is not given back before that count must have ended, whatever ends this permit.
    pub fn query_sent(&self, arrives_within: Duration, max_duration: Duration) -> QuerySent<'_> {
        let sent = Sent { at: Instant::now(), arrives_within, max_duration };
        let mut unanswered = self.unanswered.lock().unwrap_or_else(|p| p.into_inner());
        // Pages go one at a time; should an earlier one still be unanswered, the later bound holds.
        let now = Instant::now();
        *unanswered = Some(match *unanswered {
            Some(earlier) if earlier.must_end_by(now) > sent.must_end_by(now) => earlier,
            _ => sent,
        });
        QuerySent { permit: self }
    }

    /// How long the slot must still be kept for a query sent and not answered; `None`: no query
    /// runs at the service under it, and it may go back now.
    pub fn query_may_run_for(&self) -> Option<Duration> {
        self.kept_until().map(|until| until.saturating_duration_since(Instant::now()))
    }

    /// When a query sent and not answered must have ended at the service, if that is still ahead.
    fn kept_until(&self) -> Option<Instant> {
        let unanswered = *self.unanswered.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        unanswered.map(|sent| sent.must_end_by(now)).filter(|until| *until > now)
    }

    /// Ends this holder's use of the slot: the slot to give back now, or `None` when there is
    /// none or when it is kept (on a timer) for a query that may still run at the service.
    fn end_use(&mut self) -> Option<Box<dyn ReleaseSlot>> {
        let release = self.release.take()?;
        // The process stops holding the slot now, whether or not Redis hears of it yet.
        held_by_process_changed(-1);
        match self.kept_until() {
            None => Some(release),
            Some(until) => {
                metrics::counter!(m::SLOT_KEPT_AFTER_ABANDON_TOTAL).increment(1);
                let kept_ms = u64::try_from(until.saturating_duration_since(Instant::now()).as_millis()).unwrap_or(u64::MAX);
                tracing::info!(
                    lease_id = %self.lease_id, kept_ms,
                    "slot kept: its query was sent and not answered, so it may still run at the service until query.max_duration has passed"
                );
                release.keep(until);
                None
            }
        }
    }

    /// Gives the slot back now (or keeps it, for a query not answered) and reports whether that
    /// worked.
    pub async fn release(mut self) -> Result<(), Error> {
        match self.end_use() {
            Some(r) => r.release().await,
            None => Ok(()),
        }
    }
}

impl Drop for SlotPermit {
    fn drop(&mut self) {
        if let Some(r) = self.end_use() {
            r.release_on_drop();
        }
    }
}

/// Renews a lease every `every` until `stop` (its release) with `renew`, which answers whether
/// the lease was still there. Tells the holder through `lost` when the lease ran out before a
/// renewal, or when renewals kept failing for a whole `lease_ttl` after `held_until` (when the
/// first lease, its query floor included, ends at the latest). The Redis and SQLite limiters share it.
pub(crate) async fn renew_while_held<F, Fut>(
    id: String,
    every: Duration,
    lease_ttl: Duration,
    held_until: Instant,
    lost: CancellationToken,
    stop: CancellationToken,
    mut renew: F,
) where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool, Error>>,
{
    let mut last_ok = Instant::now();
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
        match renew().await {
            Ok(true) => last_ok = Instant::now(),
            Ok(false) => {
                tracing::warn!(lease_id = %id, "slot lease lost: it ran out before renewal (holder paused or stalled, or the store lost it)");
                metrics::counter!(m::SLOT_LEASE_LOST_TOTAL).increment(1);
                lost.cancel();
                return;
            }
            Err(e) if last_ok.elapsed() >= lease_ttl && Instant::now() >= held_until => {
                tracing::warn!(lease_id = %id, error = %e, "slot lease lost: renewals failed until the lease ran out");
                metrics::counter!(m::SLOT_LEASE_LOST_TOTAL).increment(1);
                lost.cancel();
                return;
            }
            Err(e) => tracing::debug!(lease_id = %id, error = %e, "slot lease renewal failed; retrying"),
        }
    }
}

/// Records a grant: counter and wait histogram.
pub(crate) fn record_granted(waited: Duration) {
    metrics::counter!(m::SLOT_ACQUIRED_TOTAL).increment(1);
    metrics::histogram!(m::SLOT_WAIT_SECONDS).record(waited.as_secs_f64());
}

/// Records a wait that gave up.
pub(crate) fn record_timed_out(waited: Duration) {
    metrics::counter!(m::SLOT_WAIT_TIMEOUT_TOTAL).increment(1);
    metrics::histogram!(m::SLOT_WAIT_SECONDS).record(waited.as_secs_f64());
}

/// Records a release.
pub(crate) fn record_released() {
    metrics::counter!(m::SLOT_RELEASED_TOTAL).increment(1);
}

/// What can set the limit in force, the labels of `spike_projection_slot_limit{source}`: the query
/// service's cap, the adaptive multiplier, a limit an operator stored in Redis, `slots.limit`.
pub const LIMIT_SOURCES: &[&str] = &["service", "adaptive", "stored", "config"];

/// Records the whole fleet's occupancy as the limiter's own state has it (Redis leases, or the
/// in-memory count): the limit in force under the label of what sets it (the other sources read
/// 0, so `max()` over the series is the limit), and the share of it in use.
pub fn record_occupancy(in_use: u32, limit: u32, source: &'static str) {
    for s in LIMIT_SOURCES {
        metrics::gauge!(m::SLOT_LIMIT, "source" => *s).set(if *s == source { f64::from(limit) } else { 0.0 });
    }
    let percent = if limit == 0 { 100.0 } else { f64::from(in_use) * 100.0 / f64::from(limit) };
    metrics::gauge!(m::UTILIZATION_PERCENT).set(percent);
}

#[cfg(test)]
mod tests {
    //! The permit's one rule for giving a slot back, on every way a holder can end.
    use super::*;

    const QUERY_BOUND: Duration = Duration::from_secs(60);

    async fn granted(limiter: &MemorySlotLimiter) -> SlotPermit {
        match limiter.acquire(SlotRequest::new("test", OrgId(1)), Duration::ZERO).await {
            Ok(Acquire::Granted(permit)) => permit,
            other => panic!("no slot: {other:?}"),
        }
    }

    /// Lets the timers due by now fire (the clock is paused: this advances it by `by`).
    async fn after(by: Duration) {
        tokio::time::advance(by).await;
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_first_query_sent_long_after_the_grant_is_not_covered_by_the_first_lease() {
        let limiter = MemorySlotLimiter::new(1);
        let in_memory = granted(&limiter).await;
        after(Duration::from_secs(3600)).await;
        assert!(in_memory.covers(QUERY_BOUND), "a memory permit does not lapse");
        drop(in_memory);
        let asked = Instant::now();
        let leased = granted(&limiter).await.leased(asked, QUERY_BOUND);
        assert!(leased.covers(QUERY_BOUND), "sent at once, the first lease covers it");
        after(SEND_SLACK).await;
        assert!(leased.covers(QUERY_BOUND), "within the slack");
        after(Duration::from_millis(1)).await;
        assert!(!leased.covers(QUERY_BOUND), "paused past the slack: the lease must be stretched before the query");
    }

    #[tokio::test(start_paused = true)]
    async fn a_slot_with_no_query_sent_goes_back_at_once_whatever_ends_it() {
        let limiter = MemorySlotLimiter::new(2);
        let released = granted(&limiter).await;
        let dropped = granted(&limiter).await;
        released.release().await.expect("release");
        drop(dropped);
        assert_eq!(limiter.in_use(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn an_answered_query_lets_the_slot_go_back_at_once() {
        let limiter = MemorySlotLimiter::new(1);
        let permit = granted(&limiter).await;
        permit.query_sent(Duration::ZERO, QUERY_BOUND).answered();
        assert_eq!(permit.query_may_run_for(), None);
        drop(permit);
        assert_eq!(limiter.in_use(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_query_sent_and_not_answered_keeps_its_slot_until_it_must_have_ended_on_release_and_on_drop() {
        let limiter = MemorySlotLimiter::new(2);
        let released = granted(&limiter).await;
        let dropped = granted(&limiter).await;
        // The guards are dropped unanswered: the futures awaiting the answers were dropped.
        drop(released.query_sent(Duration::ZERO, QUERY_BOUND));
        drop(dropped.query_sent(Duration::ZERO, QUERY_BOUND));
        after(Duration::from_secs(10)).await;
        released.release().await.expect("release keeps the slot");
        drop(dropped);
        after(Duration::from_secs(49)).await;
        assert_eq!(limiter.in_use(), 2, "50 s after the queries were sent both slots are still kept");
        after(Duration::from_secs(2)).await;
        assert_eq!(limiter.in_use(), 0, "both go back once the service must have ended the queries");
    }

    #[tokio::test(start_paused = true)]
    async fn a_job_that_panics_or_is_aborted_mid_query_keeps_its_slot() {
        let limiter = MemorySlotLimiter::new(2);
        let panicking = granted(&limiter).await;
        let aborted = granted(&limiter).await;
        let panicked = tokio::spawn(async move {
            let _sent = panicking.query_sent(Duration::ZERO, QUERY_BOUND);
            panic!("a bug in the job, mid-query");
        });
        let cancelled = tokio::spawn(async move {
            let _sent = aborted.query_sent(Duration::ZERO, QUERY_BOUND);
            std::future::pending::<()>().await;
        });
        assert!(panicked.await.expect_err("it panicked").is_panic());
        tokio::task::yield_now().await;
        cancelled.abort();
        assert!(cancelled.await.expect_err("aborted").is_cancelled());
        after(Duration::from_secs(59)).await;
        assert_eq!(limiter.in_use(), 2, "neither slot goes back while its query may still run");
        after(Duration::from_secs(2)).await;
        assert_eq!(limiter.in_use(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_query_not_answered_counts_from_when_it_may_have_reached_the_service() {
        let limiter = MemorySlotLimiter::new(2);
        let early = granted(&limiter).await;
        let late = granted(&limiter).await;
        let patience = Duration::from_secs(30);
        drop(early.query_sent(patience, QUERY_BOUND));
        drop(late.query_sent(patience, QUERY_BOUND));
        // Dropped 10 s after sending: the query reached the service by then at the latest.
        after(Duration::from_secs(10)).await;
        assert_eq!(early.query_may_run_for(), Some(QUERY_BOUND));
        drop(early);
        // Abandoned 40 s after sending: it reached the service within the client's 30 s or never.
        after(Duration::from_secs(30)).await;
        assert_eq!(late.query_may_run_for(), Some(Duration::from_secs(50)));
        drop(late);
        after(Duration::from_secs(31)).await;
        assert_eq!(limiter.in_use(), 1, "the early one went back 70 s after sending; the late one is kept to 90 s");
        after(Duration::from_secs(20)).await;
        assert_eq!(limiter.in_use(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_later_page_extends_what_is_kept_and_its_answer_clears_it() {
        let limiter = MemorySlotLimiter::new(1);
        let permit = granted(&limiter).await;
        permit.query_sent(Duration::ZERO, QUERY_BOUND).answered();
        after(Duration::from_secs(30)).await;
        let second = permit.query_sent(Duration::ZERO, QUERY_BOUND);
        assert_eq!(permit.query_may_run_for(), Some(QUERY_BOUND));
        drop(second);
        drop(permit);
        after(Duration::from_secs(59)).await;
        assert_eq!(limiter.in_use(), 1, "kept from the second page's start");
        after(Duration::from_secs(2)).await;
        assert_eq!(limiter.in_use(), 0);
    }
}
