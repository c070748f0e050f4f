//! The fleet's slot history: one sample per period of Redis time (slots in use, the limit in
//! force, the query service's own count), kept as a bounded list that the status page charts.

use std::time::Duration;

use serde::Serialize;

use super::super::scripts::HISTORY;
use super::RedisSlotLimiter;
use crate::error::Error;

/// How far back the history reaches: the status page's chart shows the last hour.
pub const HISTORY_SPAN: Duration = Duration::from_secs(3600);

/// One sample of the fleet's slots, on Redis time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct SlotSample {
    pub at_ms: u64,
    pub in_use: u32,
    /// The limit in force; `None` before any limit was stored.
    pub limit: Option<u32>,
    /// The query service's own count for the referrer, when an answer came within two periods.
    pub service_used: Option<u64>,
}

impl SlotSample {
    /// Parses `at_ms in_use limit service_used` (-1: none); `None` for a malformed entry.
    fn parse(entry: &str) -> Option<SlotSample> {
        let mut parts = entry.split(' ');
        let at_ms = parts.next()?.parse().ok()?;
        let in_use = parts.next()?.parse().ok()?;
        let limit = parts.next()?.parse::<i64>().ok()?;
        let service_used = parts.next()?.parse::<i64>().ok()?;
        Some(SlotSample { at_ms, in_use, limit: u32::try_from(limit).ok(), service_used: u64::try_from(service_used).ok() })
    }
}

/// The samples of the last [`HISTORY_SPAN`], oldest first, and Redis's time when they were read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SlotHistory {
    pub now_ms: u64,
    pub samples: Vec<SlotSample>,
}

/// Samples kept for `every`: enough to cover [`HISTORY_SPAN`], at most 3,600.
pub fn samples_to_keep(every: Duration) -> u64 {
    let every = every.as_millis().max(1);
    u64::try_from(HISTORY_SPAN.as_millis().div_ceil(every)).unwrap_or(u64::MAX).clamp(1, 3600)
}

impl RedisSlotLimiter {
    /// Appends a sample unless this period of `every` already has one (another worker took it).
    /// Returns whether this call appended.
    pub async fn record_history(&self, every: Duration) -> Result<bool, Error> {
        let inner = &self.inner;
        let every_ms = u64::try_from(every.as_millis()).unwrap_or(u64::MAX).max(1);
        let mut call = HISTORY.on(&inner.keys);
        call.arg(every_ms).arg(samples_to_keep(every));
        let appended: u8 = inner.call(&call).await?;
        Ok(appended == 1)
    }

    /// The samples of the last hour, oldest first; malformed entries are skipped.
    pub async fn history(&self) -> Result<SlotHistory, Error> {
        let inner = &self.inner;
        let mut conn = inner.conn.clone();
        let (entries, time): (Vec<String>, (u64, u64)) =
            redis::pipe().lrange(inner.keys.history(), 0, -1).cmd("TIME").query_async(&mut conn).await.map_err(|e| inner.unavailable(e))?;
        let now_ms = time.0 * 1000 + time.1 / 1000;
        let since = now_ms.saturating_sub(u64::try_from(HISTORY_SPAN.as_millis()).unwrap_or(u64::MAX));
        let samples = entries.iter().filter_map(|e| SlotSample::parse(e)).filter(|s| s.at_ms >= since).collect();
        Ok(SlotHistory { now_ms, samples })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sample_reads_back_with_its_unknowns_as_none() {
        assert_eq!(
            SlotSample::parse("1700000000000 12 30 41"),
            Some(SlotSample { at_ms: 1_700_000_000_000, in_use: 12, limit: Some(30), service_used: Some(41) })
        );
        assert_eq!(
            SlotSample::parse("1700000000000 0 -1 -1"),
            Some(SlotSample { at_ms: 1_700_000_000_000, in_use: 0, limit: None, service_used: None })
        );
        assert_eq!(SlotSample::parse("garbage"), None);
        assert_eq!(SlotSample::parse("1 2 3"), None);
    }

    #[test]
    fn an_hour_of_samples_is_kept_whatever_the_period() {
        assert_eq!(samples_to_keep(Duration::from_secs(10)), 360);
        assert_eq!(samples_to_keep(Duration::from_secs(7)), 515);
        assert_eq!(samples_to_keep(Duration::from_millis(100)), 3600, "bounded");
        assert_eq!(samples_to_keep(Duration::from_secs(7200)), 1);
    }
}
