//! Fleet events over Redis pub/sub, followed by every worker on one connection:
//! - cancelled runs: `runs cancel` adds the run to a Redis set and announces it (both inside
//!   `lua/run_cancel.lua`); each worker mirrors the set in memory, so a job that gets its slot
//!   asks the mirror, not Redis, whether its run was cancelled;
//! - jobs ready: whoever makes jobs runnable (a fan-out, a promotion of due jobs, a retry)
//!   announces it, and idle job loops fetch at once instead of at their next poll.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::StreamExt;
use projector_redis::redis_conn::RedisConn;
use tokio_util::sync::CancellationToken;

use crate::error::Error;
use projector_core::ids::RunId;
use projector_redis::keys;

/// Waits between attempts to (re)subscribe after the channel was lost.
const RESUBSCRIBE_AFTER: Duration = Duration::from_millis(500);

/// The in-memory mirror of the cancelled runs.
#[derive(Clone, Default)]
pub struct CancelWatch {
    inner: Arc<Mirror>,
}

#[derive(Default)]
struct Mirror {
    runs: RwLock<HashSet<String>>,
    /// Subscribed and loaded: the mirror misses no cancel from then on.
    live: AtomicBool,
}

impl CancelWatch {
    /// `Some(cancelled)` while the mirror is live; `None` when it is not (not yet subscribed, or the
    /// channel was lost): then ask the run record.
    pub fn is_cancelled(&self, run: &RunId) -> Option<bool> {
        if !self.inner.live.load(Ordering::Acquire) {
            return None;
        }
        Some(self.inner.runs.read().unwrap_or_else(std::sync::PoisonError::into_inner).contains(&run.0))
    }

    fn note(&self, runs: impl IntoIterator<Item = String>) {
        self.inner.runs.write().unwrap_or_else(std::sync::PoisonError::into_inner).extend(runs);
    }

    /// Keeps the mirror, and relays jobs-ready announcements to `ready`, until `shutdown`:
    /// subscribes to both channels, then loads the cancelled set (a cancel in between is seen
    /// twice, never missed), then follows; when the connection is lost the mirror stops being
    /// live until it is subscribed and loaded again (job loops still poll meanwhile).
    pub async fn follow(
        &self,
        endpoint: projector_redis::redis_conn::Endpoint,
        conn: RedisConn,
        ready: JobsReady,
        shutdown: CancellationToken,
    ) {
        while !shutdown.is_cancelled() {
            match self.subscribe_and_load(&endpoint, &conn).await {
                Ok(mut pubsub) => {
                    self.inner.live.store(true, Ordering::Release);
                    tracing::debug!("following cancelled runs");
                    let mut messages = pubsub.on_message();
                    loop {
                        tokio::select! {
                            message = messages.next() => match message {
                                Some(m) if m.get_channel_name() == keys::JOBS_READY_CHANNEL => ready.announce(),
                                Some(m) => match m.get_payload::<String>() {
                                    Ok(run) => {
                                        tracing::info!(run_id = %run, "run cancelled; its jobs that get a slot send no query");
                                        self.note([run]);
                                    }
                                    Err(e) => tracing::warn!(error = %e, "unreadable cancel announcement"),
                                },
                                None => break,
                            },
                            () = shutdown.cancelled() => return,
                        }
                    }
                    self.inner.live.store(false, Ordering::Release);
                    tracing::warn!("lost the cancel channel; jobs ask the run record until it is back");
                }
                Err(e) => tracing::debug!(error = %e, "cannot follow cancelled runs yet; jobs ask the run record"),
            }
            tokio::select! {
                () = tokio::time::sleep(RESUBSCRIBE_AFTER) => {}
                () = shutdown.cancelled() => return,
            }
        }
    }

    async fn subscribe_and_load(
        &self,
        endpoint: &projector_redis::redis_conn::Endpoint,
        conn: &RedisConn,
    ) -> Result<redis::aio::PubSub, Error> {
        let mut pubsub = projector_redis::redis_conn::pubsub(endpoint).await.map_err(Error::redis("opening the cancel channel"))?;
        pubsub
            .subscribe(&[keys::CANCELS_CHANNEL, keys::JOBS_READY_CHANNEL])
            .await
            .map_err(Error::redis("subscribing to the fleet's channels"))?;
        let runs: Vec<String> = redis::cmd("ZRANGE")
            .arg(keys::CANCELLED_RUNS)
            .arg(0)
            .arg(-1)
            .query_async(&mut conn.clone())
            .await
            .map_err(Error::redis("reading the cancelled runs"))?;
        self.note(runs);
        Ok(pubsub)
    }
}

/// "Jobs are ready": a wake-up for this process's job loop, as a stream its poll strategy reads.
#[derive(Clone)]
pub struct JobsReady(tokio::sync::watch::Sender<u64>);

impl Default for JobsReady {
    fn default() -> Self {
        JobsReady(tokio::sync::watch::Sender::new(0))
    }
}

impl JobsReady {
    /// Wakes every job loop of this process that waits.
    pub fn announce(&self) {
        self.0.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// One item per announcement (announcements while nobody reads collapse into one).
    pub fn stream(&self) -> std::pin::Pin<Box<dyn futures::Stream<Item = ()> + Send + Sync>> {
        let rx = self.0.subscribe();
        Box::pin(futures::stream::unfold(rx, |mut rx| async move { rx.changed().await.ok().map(|()| ((), rx)) }))
    }
}

/// Tells every worker that jobs are ready now: one PUBLISH (nobody listening is fine).
pub async fn announce_jobs_ready(conn: &RedisConn) -> Result<(), Error> {
    redis::cmd("PUBLISH")
        .arg(keys::JOBS_READY_CHANNEL)
        .arg(1)
        .query_async::<()>(&mut conn.clone())
        .await
        .map_err(Error::redis("announcing ready jobs"))
}
