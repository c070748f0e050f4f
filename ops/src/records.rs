//! Where `projectorctl` reads and writes the fleet's run records, pause and rollout flag: Redis,
//! or one machine's SQLite file (`backend.kind = "sqlite"`). The views and actions ask this one
//! seam, so they read the same on both.

use anyhow::Context;
use projector_config::Config;
use projector_shared::pause::Pause;
use projector_shared::rollout::Rollout;
use projector_shared::run::Outcome;
use projector_shared::run_record::{OrgRecord, RunOverview, RunRecords};
use projector_shared::run_sqlite::SqliteRuns;
use projector_shared::trail::Attempt;
use projector_shared::{OrgId, RunId};

use crate::commands::connection;

/// The fleet's records, where `backend.kind` keeps them.
pub enum Records {
    Redis(RunRecords, projector_shared::redis_conn::RedisConn),
    File(SqliteRuns, projector_queue::sqlite::SqliteQueue),
}

impl Records {
    pub async fn open(config: &Config) -> anyhow::Result<Records> {
        if config.on_file() {
            let dsn = config.backend.dsn.clone().unwrap_or_default();
            let db = projector_sqlite::Database::open(&dsn, config.backend.busy_timeout).await?;
            let queue = projector_queue::sqlite::SqliteQueue::open(&db).await?;
            return Ok(Records::File(SqliteRuns::new(db, config.runs.retention), queue));
        }
        let conn = connection(config)?;
        Ok(Records::Redis(RunRecords::for_config(conn.clone(), &config.runs), conn))
    }

    /// Where the records are, for messages: the Redis endpoint or the file.
    pub fn place(&self, config: &Config) -> String {
        match self {
            Records::Redis(..) => projector_shared::redis_conn::Endpoint::from(&config.redis).redacted(),
            Records::File(runs, _) => runs.database().file().display().to_string(),
        }
    }

    pub async fn recent(&self, limit: usize) -> anyhow::Result<Vec<RunOverview>> {
        Ok(match self {
            Records::Redis(r, _) => r.recent(limit).await?,
            Records::File(r, _) => r.recent(limit).await?,
        })
    }

    pub async fn open_runs(&self) -> anyhow::Result<Vec<RunOverview>> {
        Ok(match self {
            Records::Redis(r, _) => r.open_runs().await?,
            Records::File(r, _) => r.open_runs().await?,
        })
    }

    pub async fn overview(&self, run_id: &RunId) -> anyhow::Result<Option<RunOverview>> {
        Ok(match self {
            Records::Redis(r, _) => r.overview(run_id).await?,
            Records::File(r, _) => r.overview(run_id).await?,
        })
    }

    /// Every planned org with its outcome; trails are filled by [`Records::trails`].
    pub async fn orgs(&self, run_id: &RunId) -> anyhow::Result<Vec<OrgRecord>> {
        Ok(match self {
            Records::Redis(r, _) => r.orgs(run_id).await?,
            Records::File(r, _) => r.orgs(run_id).await?,
        })
    }

    /// Fills in the trails of `orgs` (the file's `orgs` already carries them).
    pub async fn trails(&self, run_id: &RunId, orgs: &mut [OrgRecord]) -> anyhow::Result<()> {
        if let Records::Redis(r, _) = self {
            r.trails(run_id, orgs).await?;
        }
        Ok(())
    }

    /// When orgs ended (ms), sorted: at most about `sample` of them.
    pub async fn end_times(&self, run_id: &RunId, sample: usize) -> anyhow::Result<Vec<i64>> {
        Ok(match self {
            Records::Redis(r, _) => r.end_times(run_id, sample).await?,
            Records::File(r, _) => {
                let orgs = r.orgs(run_id).await?;
                let step = orgs.len().div_ceil(sample.max(1)).max(1);
                let mut times: Vec<i64> = orgs.iter().step_by(step).filter_map(|o| o.trail.last().map(|t| t.at_ms)).collect();
                times.sort_unstable();
                times
            }
        })
    }

    pub async fn org(&self, run_id: &RunId, org: OrgId) -> anyhow::Result<Option<OrgRecord>> {
        Ok(match self {
            Records::Redis(r, _) => r.org(run_id, org).await?,
            Records::File(r, _) => r.org(run_id, org).await?,
        })
    }

    /// Ends the run's open orgs as `cancelled`; returns how many.
    pub async fn cancel(&self, run_id: &RunId) -> anyhow::Result<u64> {
        Ok(match self {
            Records::Redis(r, _) => r.cancel(run_id).await?,
            Records::File(r, _) => {
                let line = Attempt { steps: vec![projector_shared::trail::Step::Cancelled], ..Attempt::bare(Outcome::Cancelled) };
                r.end_open_orgs(run_id, Outcome::Cancelled, &line).await?
            }
        })
    }

    pub async fn pause(&self, reason: &str) -> anyhow::Result<Pause> {
        Ok(match self {
            Records::Redis(_, conn) => projector_shared::pause::pause(conn, reason).await?,
            Records::File(r, _) => r.pause(reason).await?,
        })
    }

    pub async fn resume(&self) -> anyhow::Result<bool> {
        Ok(match self {
            Records::Redis(_, conn) => projector_shared::pause::resume(conn).await?,
            Records::File(r, _) => r.resume().await?,
        })
    }

    pub async fn paused(&self) -> anyhow::Result<Option<Pause>> {
        Ok(match self {
            Records::Redis(_, conn) => projector_shared::pause::paused(conn).await?,
            Records::File(r, _) => r.paused().await?,
        })
    }

    pub async fn rollout(&self) -> anyhow::Result<Rollout> {
        Ok(match self {
            Records::Redis(_, conn) => Rollout::load(&mut conn.clone()).await.context("reading the rollout flag")?,
            Records::File(r, _) => r.rollout().await?,
        })
    }

    /// Forgets the flag: the safe default, every org limited.
    pub async fn clear_rollout(&self) -> anyhow::Result<()> {
        match self {
            Records::Redis(_, conn) => {
                let key = projector_shared::keys::flag(projector_shared::rollout::RATE_LIMIT_FLAG);
                redis::cmd("DEL").arg(key).query_async::<()>(&mut conn.clone()).await.context("clearing the rollout flag")?;
            }
            Records::File(r, _) => {
                r.set_setting(projector_shared::rollout::RATE_LIMIT_FLAG, None, false).await?;
            }
        }
        Ok(())
    }

    pub async fn save_rollout(&self, rollout: &Rollout) -> anyhow::Result<()> {
        match self {
            Records::Redis(_, conn) => rollout.save(&mut conn.clone()).await?,
            Records::File(r, _) => r.save_rollout(rollout).await?,
        }
        Ok(())
    }
}
