//! The run record in Redis: one run's totals and each organization's outcome, written by the
//! scheduler (totals) and by every worker (outcomes), read by `run-once --wait` and operators.

use std::time::Duration;

use chrono::{DateTime, Utc};
use redis::Script;
use redis::aio::ConnectionManager;

use crate::error::Error;
use crate::ids::{OrgId, RunId};
use crate::keys;
use crate::redis_conn::retry_transient;
use crate::run::{Outcome, RunSummary};

/// How long a run record is kept after its last write.
pub const RUN_RECORD_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// KEYS: run hash, run orgs hash. ARGV: org, outcome, ttl_ms. The first outcome of an org wins.
/// Returns 0 if the org already had an outcome, 1 if this call recorded it, 2 if it recorded the
/// run's last org (so exactly one worker sees the run finish).
const RECORD: &str = r"
local run, orgs = KEYS[1], KEYS[2]
if redis.call('HSETNX', orgs, ARGV[1], ARGV[2]) == 0 then return 0 end
redis.call('HINCRBY', run, ARGV[2], 1)
redis.call('PEXPIRE', run, ARGV[3])
redis.call('PEXPIRE', orgs, ARGV[3])
local total = tonumber(redis.call('HGET', run, 'orgs_total') or '0')
if total > 0 and redis.call('HLEN', orgs) == total then return 2 end
return 1
";

/// What recording an outcome did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    /// The org already had an outcome (a duplicate delivery); nothing changed.
    AlreadyAccounted,
    /// The outcome is recorded.
    Recorded,
    /// The outcome is recorded and it was the run's last org.
    FinishedTheRun,
}

/// Whether a summary lists the ids of orgs that did not complete (one read per org) or only totals.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrgIds {
    Leave,
    List,
}

/// Reads and writes run records over one shared connection.
#[derive(Clone)]
pub struct RunRecords {
    conn: ConnectionManager,
    record: Script,
}

impl RunRecords {
    pub fn new(conn: ConnectionManager) -> Self {
        RunRecords { conn, record: Script::new(RECORD) }
    }

    /// Creates (or, for a re-run of the same tick, keeps) the record of a run of `orgs_total` orgs.
    pub async fn create(&self, run_id: &RunId, tick: DateTime<Utc>, orgs_total: u64) -> Result<(), Error> {
        let key = keys::run(run_id);
        let ttl = RUN_RECORD_TTL.as_millis() as u64;
        redis::pipe()
            .atomic()
            .hset(&key, "run_id", &run_id.0)
            .hset(&key, "tick", tick.to_rfc3339())
            .hset(&key, "orgs_total", orgs_total)
            .pexpire(&key, ttl as i64)
            .query_async::<()>(&mut self.conn.clone())
            .await
            .map_err(Error::redis(format!("creating the record of run {run_id}")))
    }

    /// Records how an org ended; a second outcome for the same org (duplicate delivery) is ignored.
    pub async fn record(&self, run_id: &RunId, org: OrgId, outcome: Outcome) -> Result<Recorded, Error> {
        // Idempotent (the first outcome wins), so a transient error is simply retried.
        let recorded: u8 = retry_transient(|| {
            let mut conn = self.conn.clone();
            let mut invocation = self.record.key(keys::run(run_id));
            invocation.key(keys::run_orgs(run_id)).arg(org.0).arg(outcome.as_str()).arg(RUN_RECORD_TTL.as_millis() as u64);
            async move { invocation.invoke_async(&mut conn).await }
        })
        .await
        .map_err(Error::redis(format!("recording org {org} of run {run_id}")))?;
        Ok(match recorded {
            0 => Recorded::AlreadyAccounted,
            2 => Recorded::FinishedTheRun,
            _ => Recorded::Recorded,
        })
    }

    /// The outcome already recorded for an org, if any.
    pub async fn outcome_of(&self, run_id: &RunId, org: OrgId) -> Result<Option<Outcome>, Error> {
        let v: Option<String> = retry_transient(|| {
            let mut conn = self.conn.clone();
            let cmd = redis::cmd("HGET").arg(keys::run_orgs(run_id)).arg(org.0).to_owned();
            async move { cmd.query_async(&mut conn).await }
        })
        .await
        .map_err(Error::redis(format!("reading org {org} of run {run_id}")))?;
        Ok(v.and_then(|v| Outcome::parse(&v)))
    }

    /// The run's totals, and with [`OrgIds::List`] the ids of the orgs that did not complete.
    pub async fn summary(&self, run_id: &RunId, ids: OrgIds) -> Result<Option<RunSummary>, Error> {
        let mut conn = self.conn.clone();
        let doing = || format!("reading run {run_id}");
        let fields: std::collections::HashMap<String, String> =
            redis::cmd("HGETALL").arg(keys::run(run_id)).query_async(&mut conn).await.map_err(Error::redis(doing()))?;
        if fields.is_empty() {
            return Ok(None);
        }
        let n = |k: &str| fields.get(k).and_then(|v| v.parse().ok()).unwrap_or(0u64);
        let mut summary = RunSummary { run_id: run_id.0.clone(), orgs_total: n("orgs_total"), ..RunSummary::default() };
        match ids {
            OrgIds::Leave => {
                for outcome in Outcome::ALL {
                    summary.set_count(outcome, n(outcome.as_str()));
                }
            }
            OrgIds::List => {
                // Totals and lists from the same per-org record, filed as the embedded ledger files them.
                let orgs: std::collections::HashMap<u64, String> =
                    redis::cmd("HGETALL").arg(keys::run_orgs(run_id)).query_async(&mut conn).await.map_err(Error::redis(doing()))?;
                for (org, outcome) in orgs {
                    if let Some(outcome) = Outcome::parse(&outcome) {
                        summary.add(OrgId(org), outcome);
                    }
                }
                summary.sort_ids();
            }
        }
        Ok(Some(summary))
    }
}
