//! Follows the fleet-wide pause. Every worker runs its own: it reads Redis and tells only this
//! worker's supervisor.

use futures::future::BoxFuture;
use projector_shared::redis_conn::RedisConn;

use super::Periodic;

/// Reads the fleet-wide pause (`projectorctl pause`) every round and tells the supervisor when it
/// changes. A read that fails keeps the last state: a Redis blip neither pauses nor resumes.
pub struct PauseWatch {
    pub conn: RedisConn,
    pub paused: tokio::sync::watch::Sender<bool>,
}

impl Periodic for PauseWatch {
    fn name(&self) -> &'static str {
        "pause_watch"
    }

    fn run_once(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            match projector_shared::pause::paused(&self.conn).await {
                Ok(pause) => {
                    self.paused.send_if_modified(|p| std::mem::replace(p, pause.is_some()) != pause.is_some());
                }
                Err(e) => tracing::debug!(error = %e, "cannot read the fleet pause; keeping the last state"),
            }
        })
    }
}
