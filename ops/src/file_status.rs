//! `projectorctl status` for a fleet on one machine's SQLite file: the limit, the slots held and
//! waited for, the queue, the workers alive, the latest run, the pause and the rollout flag, in
//! the same JSON fields as on Redis where the file keeps the same thing; and the workers alive.

use std::fmt::Write as _;

use chrono::Utc;
use projector_config::Config;
use projector_queue::sqlite::SqliteQueue;
use projector_shared::slots::{SqliteSlotLimiter, SqliteSlotSettings};
use serde_json::json;

use crate::records::Records;
use crate::views::{self, View};

pub async fn status(config: &Config) -> anyhow::Result<View> {
    let records = Records::open(config).await?;
    let Records::File(runs, queue) = &records else { anyhow::bail!("backend.kind is not \"sqlite\"") };
    let file = runs.database().file().display().to_string();
    let limiter = SqliteSlotLimiter::new(runs.database().clone(), SqliteSlotSettings::new(config.slots.limit, config.slots.lease_ttl));
    let (in_use, waiters, stored) = limiter.occupancy().await?;
    // A limit an operator stored wins over slots.limit, as on Redis; the service's cap is in it.
    let in_force = stored.unwrap_or(config.slots.limit);
    let depth = queue.depth().await?;
    let alive = SqliteQueue::workers_alive(queue).await?;
    let latest = match records.open_runs().await?.pop() {
        Some(open) => Some(open),
        None => records.recent(1).await?.into_iter().next(),
    };
    let pause = records.paused().await?;
    let rollout = records.rollout().await?;
    let now = Utc::now();
    let value = json!({
        "backend": {"kind": "sqlite", "file": file},
        "limit": {"in_force": in_force, "source": "config", "stored": stored, "configured": config.slots.limit},
        "slots": {"in_use": in_use, "waiters": waiters},
        "queue": {"ready": depth.ready, "scheduled": depth.scheduled, "in_flight": depth.in_flight, "dead": depth.dead},
        "workers": {"alive": alive},
        "run": latest.as_ref().map(|r| views::run_json(r, now)),
        "paused": pause.as_ref().map(|p| json!({"reason": p.reason, "since_ms": p.since_ms})),
        "rollout": {
            "enabled": rollout.enabled, "percentage": rollout.percentage,
            "allow": rollout.allow.iter().map(|o| o.0).collect::<Vec<_>>(), "deny": rollout.deny.iter().map(|o| o.0).collect::<Vec<_>>(),
        },
    });
    let mut out = String::new();
    let _ = writeln!(out, "file         {file} (backend.kind = \"sqlite\")");
    if let Some(p) = &pause {
        let _ = writeln!(out, "PAUSED       {} (workers take no jobs; `projectorctl resume` ends it)", p.reason);
    }
    let source = if stored.is_some_and(|s| s != config.slots.limit) {
        format!("stored in the file, or the service's cap; slots.limit {}", config.slots.limit)
    } else {
        "slots.limit".to_owned()
    };
    let _ = writeln!(out, "limit        {in_force} in force ({source})");
    let _ = writeln!(out, "slots        {in_use} in use, {waiters} waiting");
    let _ = writeln!(
        out,
        "queue        {} ready, {} scheduled, {} in flight, {} dead",
        depth.ready, depth.scheduled, depth.in_flight, depth.dead
    );
    let _ = writeln!(out, "workers      {alive} alive (a heartbeat in the file within 10 s)");
    let _ = writeln!(out, "latest run   {}", views::latest_run_line(latest.as_ref(), now, usize::try_from(alive).unwrap_or(0)));
    let _ = writeln!(out, "rollout      {}", views::rollout_line(&rollout));
    Ok(View::new(value, out))
}

/// `projectorctl workers` on the file: the job loops that beat in the last 10 s (apalis-sqlite's
/// `Workers` table keeps a name and a time; host, pid and jobs in flight are Redis-only).
pub async fn workers(config: &Config) -> anyhow::Result<View> {
    let records = Records::open(config).await?;
    let Records::File(_, queue) = &records else { anyhow::bail!("backend.kind is not \"sqlite\"") };
    let list = queue.workers().await?;
    let value = json!({
        "alive": list.len(),
        "workers": list.iter().map(|(name, ago)| json!({"name": name, "beat_ms_ago": ago * 1000, "registered": false})).collect::<Vec<_>>(),
    });
    let mut out = format!("{} worker(s) alive (beat within 10 s)\n", list.len());
    for (name, ago) in &list {
        let _ = writeln!(out, "  {name}  beat {ago} s ago");
    }
    Ok(View::new(value, out))
}
