//! Compaction of finished runs: `runs.completed_detail` after a run finished, its completed orgs
//! leave the per-org hashes (outcome, plan entry, attempts, trail: ~550 B each) for a compact
//! list of (org, when its outcome was recorded), ~4 B each, kept for the rest of
//! `runs.retention`. Orgs that did not complete keep everything, their trail included, for
//! `runs.retention`, so `runs retry`, `explain` and `runs show` answer for them as before; a
//! completed org still answers "completed" and when.

use std::collections::HashMap;
use std::time::Duration;

use redis::Script;

use crate::error::Error;
use crate::run_record::RunRecords;
use projector_core::ids::{OrgId, RunId};
use projector_redis::keys;
use projector_redis::lua::script;

/// Takes compacted orgs out of the per-org hashes; its contract is in the file's header.
static COMPACT: std::sync::LazyLock<Script> = std::sync::LazyLock::new(|| script(include_str!("../../../lua/run_compact.lua")));

/// Writes a compacted run's small per-org hashes afresh; its contract is in the file's header.
static REWRITE: std::sync::LazyLock<Script> = std::sync::LazyLock::new(|| script(include_str!("../../../lua/run_compact_rewrite.lua")));

/// Most fields a per-org hash may keep after compaction to be written afresh in one call.
const REWRITE_MOST: usize = 10_000;

/// Orgs per block of the compact list: one block is read to answer for one org.
const BLOCK_ORGS: usize = 256;

/// Orgs per read or per script call while compacting: Redis is never blocked for long.
const ORGS_PER_CALL: usize = 1_000;

/// Blocks read at most to find one org: a run compacted again after `runs retry` has blocks that
/// overlap, a few at most.
const BLOCKS_PER_LOOKUP: usize = 64;

/// A compacted org: completed, its outcome recorded at `at_ms` (Redis ms; `None` when its trail
/// had expired before compaction, which a `runs.trail_retention` below `runs.completed_detail`
/// allows).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompactedOrg {
    pub org: OrgId,
    pub at_ms: Option<i64>,
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn get_varint(bytes: &[u8], pos: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *bytes.get(*pos)?;
        *pos += 1;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// One block: `(org, 1 + seconds after the run began, or 0)` pairs in ascending org order.
pub(crate) fn pack(block: &[(u64, u64)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(block.len() * 4);
    let mut last = 0;
    for (org, at) in block {
        put_varint(&mut out, org - last);
        put_varint(&mut out, *at);
        last = *org;
    }
    out
}

/// The pairs of one block; a damaged block yields what could be read of it.
pub(crate) fn unpack(bytes: &[u8]) -> Vec<(u64, u64)> {
    let (mut pos, mut last, mut out) = (0, 0u64, Vec::new());
    while pos < bytes.len() {
        let (Some(delta), Some(at)) = (get_varint(bytes, &mut pos), get_varint(bytes, &mut pos)) else { break };
        last += delta;
        out.push((last, at));
    }
    out
}

impl RunRecords {
    /// When the run began (Redis ms): the base of the compact list's times.
    async fn began_ms(&self, run_id: &RunId) -> Result<Option<i64>, Error> {
        let (created, tick): (Option<i64>, Option<String>) = redis::pipe()
            .hget(self.conn.layout().run(run_id), "created_ms")
            .hget(self.conn.layout().run(run_id), "tick")
            .query_async(&mut self.conn.clone())
            .await
            .map_err(Error::redis(format!("reading run {run_id}")))?;
        let tick = tick.and_then(|t| chrono::DateTime::parse_from_rfc3339(&t).ok()).map(|t| t.timestamp_millis());
        Ok(created.or(tick))
    }

    pub(crate) fn at_ms(began: i64, at: u64) -> Option<i64> {
        (at > 0).then(|| began + i64::try_from(at - 1).unwrap_or(0) * 1_000)
    }

    /// Compacts one finished run now: its completed orgs go to the compact list, then leave the
    /// per-org hashes. Returns how many orgs this compacted (0 for a run not finished, gone, or
    /// compacted already). Safe to repeat after an error: the blocks are written before anything
    /// is taken out, and the script takes out only orgs still completed.
    pub async fn compact(&self, run_id: &RunId) -> Result<u64, Error> {
        let layout = self.conn.layout();
        let mut conn = self.conn.clone();
        let doing = || format!("compacting run {run_id}");
        let finished: Option<i64> =
            redis::cmd("HGET").arg(layout.run(run_id)).arg("finished_ms").query_async(&mut conn).await.map_err(Error::redis(doing()))?;
        let (Some(_), Some(began)) = (finished, self.began_ms(run_id).await?) else { return Ok(0) };
        let mut completed = Vec::new();
        let mut cursor = 0u64;
        loop {
            let (next, page): (u64, Vec<(u64, String)>) = redis::cmd("HSCAN")
                .arg(layout.run_orgs(run_id))
                .arg(cursor)
                .arg("COUNT")
                .arg(ORGS_PER_CALL)
                .query_async(&mut conn)
                .await
                .map_err(Error::redis(doing()))?;
            completed.extend(page.into_iter().filter(|(_, o)| o == "completed").map(|(org, _)| org));
            cursor = next;
            if cursor == 0 {
                break;
            }
        }
        completed.sort_unstable();
        completed.dedup();
        if completed.is_empty() {
            return Ok(0);
        }
        let mut entries = Vec::with_capacity(completed.len());
        for chunk in completed.chunks(ORGS_PER_CALL) {
            let lines: Vec<Option<String>> =
                redis::cmd("HMGET").arg(layout.run_trail(run_id)).arg(chunk).query_async(&mut conn).await.map_err(Error::redis(doing()))?;
            for (org, line) in chunk.iter().zip(lines) {
                let at_ms = line.as_deref().map(projector_core::trail::parse).and_then(|t| t.last().map(|r| r.at_ms));
                let at = at_ms.map_or(0, |ms| u64::try_from((ms - began).max(0) / 1_000).unwrap_or(0) + 1);
                entries.push((*org, at));
            }
        }
        // The list lives as long as the outcomes it replaces.
        let ttl: i64 = redis::cmd("PTTL").arg(layout.run_orgs(run_id)).query_async(&mut conn).await.map_err(Error::redis(doing()))?;
        let ttl = if ttl > 0 { ttl } else { i64::try_from(self.retention.as_millis()).unwrap_or(i64::MAX) };
        for blocks in entries.chunks(BLOCK_ORGS * 16) {
            let mut pipe = redis::pipe();
            for block in blocks.chunks(BLOCK_ORGS) {
                pipe.zadd(layout.run_completed(run_id), pack(block), block[0].0 as f64).ignore();
            }
            pipe.pexpire(layout.run_completed(run_id), ttl).ignore();
            pipe.query_async::<()>(&mut conn).await.map_err(Error::redis(doing()))?;
        }
        let mut compacted = 0;
        for chunk in completed.chunks(ORGS_PER_CALL) {
            let n: u64 = COMPACT
                .key(layout.run(run_id))
                .key(layout.run_orgs(run_id))
                .key(layout.run_plan(run_id))
                .key(layout.run_attempts(run_id))
                .key(layout.run_trail(run_id))
                .arg(chunk)
                .invoke_async(&mut conn)
                .await
                .map_err(Error::redis(doing()))?;
            compacted += n;
        }
        let _: u64 = REWRITE
            .key(layout.run_orgs(run_id))
            .key(layout.run_plan(run_id))
            .key(layout.run_attempts(run_id))
            .key(layout.run_trail(run_id))
            .arg(REWRITE_MOST)
            .invoke_async(&mut conn)
            .await
            .map_err(Error::redis(doing()))?;
        // What is left of the trail is the story of the orgs that did not complete: it is kept as
        // long as their outcomes (runs.retention), not runs.trail_retention.
        let _: () = redis::cmd("PEXPIRE")
            .arg(layout.run_trail(run_id))
            .arg(ttl)
            .arg("GT")
            .query_async(&mut conn)
            .await
            .map_err(Error::redis(doing()))?;
        Ok(compacted)
    }

    /// Compacts the oldest ended run whose `runs.completed_detail` (`after`) has passed, if any;
    /// returns it with the orgs compacted. One caller takes a run (ZREM decides); on an error
    /// the run goes back for the next round.
    pub async fn compact_due(&self, after: Duration) -> Result<Option<(RunId, u64)>, Error> {
        let mut conn = self.conn.clone();
        let now = self.redis_now().await?.timestamp_millis();
        let due = now - i64::try_from(after.as_millis()).unwrap_or(i64::MAX);
        let ids: Vec<(String, f64)> = redis::cmd("ZRANGE")
            .arg(keys::COMPACT_RUNS)
            .arg("-inf")
            .arg(due)
            .arg("BYSCORE")
            .arg("LIMIT")
            .arg(0)
            .arg(1)
            .arg("WITHSCORES")
            .query_async(&mut conn)
            .await
            .map_err(Error::redis("listing runs to compact"))?;
        let Some((id, finished)) = ids.into_iter().next() else { return Ok(None) };
        let taken: u64 = redis::cmd("ZREM")
            .arg(keys::COMPACT_RUNS)
            .arg(&id)
            .query_async(&mut conn)
            .await
            .map_err(Error::redis("taking a run to compact"))?;
        if taken == 0 {
            return Ok(None);
        }
        let run_id = RunId(id);
        match self.compact(&run_id).await {
            Ok(n) => Ok(Some((run_id, n))),
            Err(e) => {
                let _: Result<(), _> = redis::cmd("ZADD").arg(keys::COMPACT_RUNS).arg(finished).arg(&run_id.0).query_async(&mut conn).await;
                Err(e)
            }
        }
    }

    /// One compacted org of the run, if it is in the compact list.
    pub(crate) async fn compacted_org(&self, run_id: &RunId, org: OrgId) -> Result<Option<CompactedOrg>, Error> {
        let blocks: Vec<Vec<u8>> = redis::cmd("ZRANGE")
            .arg(self.conn.layout().run_completed(run_id))
            .arg(org.0 as f64)
            .arg("-inf")
            .arg("BYSCORE")
            .arg("REV")
            .arg("LIMIT")
            .arg(0)
            .arg(BLOCKS_PER_LOOKUP)
            .query_async(&mut self.conn.clone())
            .await
            .map_err(Error::redis(format!("reading the compacted orgs of run {run_id}")))?;
        let Some((_, at)) = blocks.iter().flat_map(|b| unpack(b)).find(|(o, _)| *o == org.0) else { return Ok(None) };
        let began = self.began_ms(run_id).await?.unwrap_or(0);
        Ok(Some(CompactedOrg { org, at_ms: Self::at_ms(began, at) }))
    }

    /// Every compacted org of the run, by org.
    pub async fn compacted_orgs(&self, run_id: &RunId) -> Result<Vec<CompactedOrg>, Error> {
        let blocks: Vec<Vec<u8>> = redis::cmd("ZRANGE")
            .arg(self.conn.layout().run_completed(run_id))
            .arg(0)
            .arg(-1)
            .query_async(&mut self.conn.clone())
            .await
            .map_err(Error::redis(format!("reading the compacted orgs of run {run_id}")))?;
        if blocks.is_empty() {
            return Ok(Vec::new());
        }
        let began = self.began_ms(run_id).await?.unwrap_or(0);
        let mut by_org: HashMap<u64, u64> = HashMap::new();
        for (org, at) in blocks.iter().flat_map(|b| unpack(b)) {
            by_org.insert(org, at);
        }
        let mut orgs: Vec<CompactedOrg> =
            by_org.into_iter().map(|(org, at)| CompactedOrg { org: OrgId(org), at_ms: Self::at_ms(began, at) }).collect();
        orgs.sort_by_key(|o| o.org);
        Ok(orgs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_block_round_trips_with_large_and_sparse_org_ids() {
        let block = vec![(1, 0), (2, 1), (300, 3_601), (1 << 40, 7), (u64::MAX, 1)];
        assert_eq!(unpack(&pack(&block)), block);
        let dense: Vec<(u64, u64)> = (1_000..1_256).map(|o| (o, 1_800)).collect();
        let packed = pack(&dense);
        assert_eq!(unpack(&packed), dense);
        assert!(packed.len() <= 3 * dense.len() + 2, "dense ids: one byte of delta, two of time (the first id two): {} B", packed.len());
    }
}
