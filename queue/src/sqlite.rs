//! The job queue of a single-machine fleet: apalis-sqlite 1.0.0's `Jobs` table in the same file
//! as Projector's own tables. Its migrations run here, on the shared pool but never through
//! `SqliteStorage::setup`, which would also set `synchronous = OFF` on a pooled connection
//! (docs/sqlite.md).

use std::time::Duration;

use apalis_sqlite::{Config, SqliteStorage};
use projector_shared::SpikeProjectionJob;
use projector_sqlite::{Database, sqlx};

/// The queue's name in apalis-sqlite's `job_type` column.
pub const SQLITE_QUEUE: &str = "projector:spike-projection";

/// Tries at the apalis migrations: processes starting together race to apply them, and the
/// loser's transaction fails on what the winner created; the next try finds them applied.
const MIGRATION_TRIES: u32 = 20;

/// apalis's default, as the Redis queue writes it.
const MAX_ATTEMPTS: i64 = 25;

/// The queue's depth by state ([`SqliteQueue::depth`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SqliteDepth {
    pub ready: u64,
    pub scheduled: u64,
    pub in_flight: u64,
    pub dead: u64,
}

/// The spike-projection queue in one SQLite file.
#[derive(Debug, Clone)]
pub struct SqliteQueue {
    db: Database,
}

/// apalis-sqlite's settings, as the Redis queue's (`apalis_layout::config`): one job per fetch,
/// so a fetched job is never left waiting behind another in a worker's buffer, and a worker that
/// misses three 2 s heartbeats (killed, stopped) has its jobs put back for the others.
pub fn sqlite_config() -> Config {
    Config::default()
        .queue(SQLITE_QUEUE)
        .batch_size(1)
        .heartbeat_interval(Duration::from_secs(2))
        .missed_heartbeats(3)
        // Locking only moves a fetched job from `Queued` to `Running`, one more write transaction
        // per job on a file every process writes: the fetch already names the worker
        // (`lock_by`), and a dead worker's jobs come back from either status
        // (`queries/backend/reenqueue_orphaned.sql`).
        .lock_tasks(false)
}

impl SqliteQueue {
    /// The queue in `db`'s file, its tables created or brought up to date.
    pub async fn open(db: &Database) -> Result<SqliteQueue, projector_sqlite::Error> {
        let migrator = SqliteStorage::<()>::migrations();
        let mut pause = Duration::from_millis(20);
        for tried in 1.. {
            match migrator.run(db.pool()).await {
                Ok(()) => break,
                Err(e) if tried < MIGRATION_TRIES => {
                    tracing::debug!(error = %e, tried, "apalis-sqlite migrations met another process's; trying again");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(500));
                }
                Err(e) => return Err(db.err("creating the job queue's tables (apalis-sqlite migrations)")(sqlx::Error::from(e))),
            }
        }
        Ok(SqliteQueue { db: db.clone() })
    }

    /// The storage a worker's job loop fetches from.
    pub fn storage(&self) -> SqliteStorage<serde_json::Value> {
        SqliteStorage::new(self.db.pool()).with_config(sqlite_config())
    }

    /// Pushes `jobs`, each runnable from its unix second, in one transaction; a job whose run
    /// and dedupe member are already in the queue is left out (apalis-sqlite's unique
    /// idempotency key). Returns how many were new. The row is the one apalis-sqlite 1.0.0's own
    /// push writes (`queries/task/sink.sql`), written here because its sink's future cannot be
    /// held across a job's await points (it is not `Send`).
    pub async fn push(&self, jobs: &[(SpikeProjectionJob, u64)]) -> Result<u64, projector_sqlite::Error> {
        if jobs.is_empty() {
            return Ok(0);
        }
        let mut w = self.db.write("pushing jobs").await?;
        let mut new = 0;
        for (job, run_at) in jobs {
            let pushed = sqlx::query(
                "INSERT INTO Jobs (job, id, job_type, status, attempts, max_attempts, run_at, priority, metadata, idempotency_key)
                 VALUES (?1, ?2, ?3, 'Pending', 0, ?4, ?5, 0, '{}', ?6) ON CONFLICT (job_type, idempotency_key) DO NOTHING",
            )
            .bind(job.encode())
            .bind(ulid::Ulid::generate().to_string())
            .bind(SQLITE_QUEUE)
            .bind(MAX_ATTEMPTS)
            .bind(i64::try_from(*run_at).unwrap_or(i64::MAX))
            .bind(job.idempotency_key())
            .execute(&mut *w.tx)
            .await
            .map_err(w.err())?;
            new += pushed.rows_affected();
        }
        w.commit().await?;
        Ok(new)
    }

    /// The queue as the Redis one is shown: jobs due (`ready`), not due yet (`scheduled`), taken
    /// by a worker and not acknowledged (`in_flight`), and given up on after every attempt
    /// failed (`dead`).
    pub async fn depth(&self) -> Result<SqliteDepth, projector_sqlite::Error> {
        let (ready, scheduled, in_flight, dead): (i64, i64, i64, i64) = sqlx::query_as(
            "SELECT coalesce(sum(status IN ('Pending', 'Failed') AND attempts < max_attempts AND run_at <= CAST(unixepoch() AS INTEGER)), 0),
                    coalesce(sum(status = 'Pending' AND run_at > CAST(unixepoch() AS INTEGER)), 0),
                    coalesce(sum(status IN ('Queued', 'Running')), 0),
                    coalesce(sum(status = 'Failed' AND attempts >= max_attempts), 0)
             FROM Jobs WHERE job_type = ?1",
        )
        .bind(SQLITE_QUEUE)
        .fetch_one(self.db.pool())
        .await
        .map_err(self.db.err("reading the queue's depth"))?;
        let n = |v: i64| u64::try_from(v).unwrap_or(0);
        Ok(SqliteDepth { ready: n(ready), scheduled: n(scheduled), in_flight: n(in_flight), dead: n(dead) })
    }

    /// Marks the job loop `loop_name` alive now, as apalis-sqlite's own heartbeat does
    /// (`queries/backend/keep_alive.sql`). apalis beats only when the loop asks for its next job;
    /// a worker whose every job waits for a slot longer than three beats would be judged dead
    /// and its jobs run again by the others. The worker beats here every second besides.
    pub async fn keep_alive(&self, loop_name: &str) -> Result<(), projector_sqlite::Error> {
        sqlx::query("UPDATE Workers SET last_seen = CAST(unixepoch() AS INTEGER) WHERE id = ?1 AND worker_type = ?2")
            .bind(loop_name)
            .bind(SQLITE_QUEUE)
            .execute(self.db.pool())
            .await
            .map_err(self.db.err("writing the worker's heartbeat"))?;
        Ok(())
    }

    /// Removes the run's jobs that no worker has taken yet (a cancel); returns how many.
    pub async fn remove_run_jobs(&self, run_id: &projector_shared::RunId) -> Result<u64, projector_sqlite::Error> {
        let removed = sqlx::query(
            "DELETE FROM Jobs WHERE job_type = ?1 AND status IN ('Pending', 'Failed') AND lock_by IS NULL
               AND substr(idempotency_key, 1, length(?2) + 1) = ?2 || ':'",
        )
        .bind(SQLITE_QUEUE)
        .bind(&run_id.0)
        .execute(self.db.pool())
        .await
        .map_err(self.db.err(format!("removing the jobs of run {run_id}")))?;
        Ok(removed.rows_affected())
    }

    /// The workers whose job loop beat in the last 10 s: their name and how many seconds ago
    /// (whole seconds, as apalis-sqlite keeps `last_seen`). A worker names each job loop
    /// `<worker>-<n>` and starts a new one after a pause or a failure: the loops of one worker
    /// count once.
    pub async fn workers(&self) -> Result<Vec<(String, u64)>, projector_sqlite::Error> {
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT id, CAST(unixepoch() AS INTEGER) - last_seen FROM Workers WHERE worker_type = ?1 AND last_seen >= CAST(unixepoch() AS INTEGER) - 10",
        )
        .bind(SQLITE_QUEUE)
        .fetch_all(self.db.pool())
        .await
        .map_err(self.db.err("listing the workers alive"))?;
        let mut workers = std::collections::BTreeMap::<String, u64>::new();
        for (loop_name, ago) in rows {
            let worker = loop_name.rsplit_once('-').map_or(loop_name.as_str(), |(w, _)| w).to_owned();
            let ago = u64::try_from(ago).unwrap_or(0);
            workers.entry(worker).and_modify(|a| *a = (*a).min(ago)).or_insert(ago);
        }
        Ok(workers.into_iter().collect())
    }

    /// How many workers beat in the last 10 s ([`SqliteQueue::workers`]).
    pub async fn workers_alive(&self) -> Result<u64, projector_sqlite::Error> {
        Ok(self.workers().await?.len() as u64)
    }

    /// Deletes jobs that ended: done ones after `done_after` (their outcome is in the run
    /// record), and those apalis gave up on (every attempt failed) after `dead_after`, for an
    /// operator to look at. Returns how many.
    pub async fn vacuum(&self, done_after: Duration, dead_after: Duration) -> Result<u64, projector_sqlite::Error> {
        let secs = |d: Duration| i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
        let deleted = sqlx::query(
            "DELETE FROM Jobs WHERE job_type = ?1 AND done_at IS NOT NULL AND (
                 (status IN ('Done', 'Killed') AND done_at < CAST(unixepoch() AS INTEGER) - ?2)
              OR (status = 'Failed' AND attempts >= max_attempts AND done_at < CAST(unixepoch() AS INTEGER) - ?3))",
        )
        .bind(SQLITE_QUEUE)
        .bind(secs(done_after))
        .bind(secs(dead_after))
        .execute(self.db.pool())
        .await
        .map_err(self.db.err("deleting finished jobs"))?;
        Ok(deleted.rows_affected())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use projector_shared::{OrgId, RunId};

    async fn queue(dir: &tempfile::TempDir) -> SqliteQueue {
        let dsn = format!("sqlite://{}", dir.path().join("fleet.db").display());
        let db = Database::open(&dsn, Duration::from_secs(5)).await.expect("file");
        SqliteQueue::open(&db).await.expect("queue")
    }

    fn job(org: u64) -> SpikeProjectionJob {
        SpikeProjectionJob::planned(RunId("run-q".to_owned()), OrgId(org), 0, chrono::Utc::now(), Vec::new())
    }

    async fn set(q: &SqliteQueue, org: u64, status: &str, attempts: i64, done_ago_s: i64) {
        sqlx::query("UPDATE Jobs SET status = ?2, attempts = ?3, done_at = CAST(unixepoch() AS INTEGER) - ?4 WHERE idempotency_key = ?1")
            .bind(job(org).idempotency_key())
            .bind(status)
            .bind(attempts)
            .bind(done_ago_s)
            .execute(q.db.pool())
            .await
            .expect("update");
    }

    #[tokio::test]
    async fn a_job_is_pushed_once_and_the_vacuum_keeps_what_may_still_run() {
        let dir = tempfile::tempdir().expect("dir");
        let q = queue(&dir).await;
        let now = chrono::Utc::now().timestamp() as u64;
        let jobs: Vec<_> = (1..=4).map(|org| (job(org), now)).collect();
        assert_eq!(q.push(&jobs).await.expect("push"), 4);
        assert_eq!(q.push(&jobs).await.expect("again"), 0, "the same jobs again are duplicates");
        assert_eq!(q.depth().await.expect("depth").ready, 4);
        set(&q, 1, "Done", 1, 120).await;
        set(&q, 2, "Done", 1, 10).await;
        // Failed with attempts left: apalis fetches it again. Failed for good: kept for an operator.
        set(&q, 3, "Failed", 1, 120).await;
        set(&q, 4, "Failed", 25, 120).await;
        assert_eq!(
            q.vacuum(Duration::from_secs(60), Duration::from_secs(3600)).await.expect("vacuum"),
            1,
            "only the job done a minute ago"
        );
        let depth = q.depth().await.expect("depth");
        assert_eq!((depth.ready, depth.dead), (1, 1), "{depth:?}");
        assert_eq!(q.vacuum(Duration::from_secs(60), Duration::from_secs(60)).await.expect("vacuum"), 1, "the dead one past its time");
        assert_eq!(q.remove_run_jobs(&RunId("run-q".to_owned())).await.expect("remove"), 1, "the retry waiting in the queue");
    }
}
