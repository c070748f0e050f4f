//! Follows the fleet-wide pause. Every worker runs its own: it reads Redis (or the SQLite file of
//! a single-machine fleet) and tells only this worker's job loop.

use futures::future::BoxFuture;
use projector_shared::redis_conn::RedisConn;

use super::Periodic;

/// Where the fleet keeps its pause.
pub enum PauseSource {
    Redis(RedisConn),
    File(projector_shared::run_sqlite::SqliteRuns),
}

/// Reads the fleet-wide pause (`projectorctl pause`) every round and tells the supervisor when it
/// changes. A read that fails keeps the last state: a Redis blip neither pauses nor resumes.
pub struct PauseWatch {
    pub source: PauseSource,
    pub paused: tokio::sync::watch::Sender<bool>,
}

impl Periodic for PauseWatch {
    fn name(&self) -> &'static str {
        "pause_watch"
    }

    fn run_once(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let pause = match &self.source {
                PauseSource::Redis(conn) => projector_shared::pause::paused(conn).await,
                PauseSource::File(runs) => runs.paused().await,
            };
            match pause {
                Ok(pause) => {
                    self.paused.send_if_modified(|p| std::mem::replace(p, pause.is_some()) != pause.is_some());
                }
                Err(e) => tracing::debug!(error = %e, "cannot read the fleet pause; keeping the last state"),
            }
        })
    }
}
