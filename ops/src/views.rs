//! Read-only views of the fleet for operators and scripts: the workers alive, recent runs, one
//! run, and the one-screen status; each as text or as JSON of a documented shape.

use std::fmt::Write as _;

use anyhow::Context;
use chrono::{DateTime, Utc};
use projector_config::Config;
use projector_shared::heartbeat::{self, WorkerEntry};
use projector_shared::redis_conn::Endpoint;
use projector_shared::rollout::Rollout;
use projector_shared::run::Outcome;
use projector_shared::run_record::{OrgIds, RunOverview, RunRecords};
use projector_shared::slots::{RedisSlotLimiter, RedisSlotSettings};
use projector_shared::{OrgId, RunId};
use serde_json::{Value, json};

use crate::connection;

fn worker_json(w: &WorkerEntry) -> Value {
    let r = w.registration.clone().unwrap_or_default();
    json!({
        "name": w.name, "host": r.host, "pid": r.pid, "version": r.version, "started": r.started,
        "jobs_in_flight": r.jobs_in_flight, "slots_held": r.slots_held, "last_error": r.last_error,
        "beat_ms_ago": w.beat_ms_ago, "registered": w.registration.is_some(),
    })
}

/// `projectorctl workers`.
pub async fn workers(config: &Config, as_json: bool) -> anyhow::Result<String> {
    let conn = connection(config)?;
    let list =
        heartbeat::workers(&conn).await.with_context(|| format!("reading workers from {}", Endpoint::from(&config.redis).redacted()))?;
    if as_json {
        return Ok(format!("{}\n", json!({"alive": list.len(), "workers": list.iter().map(worker_json).collect::<Vec<_>>()})));
    }
    let mut out = format!("{} worker(s) alive (beat within {} s)\n", list.len(), heartbeat::ALIVE_WITHIN.as_secs());
    for w in &list {
        match &w.registration {
            Some(r) => {
                let _ = writeln!(
                    out,
                    "  {}  host {}  pid {}  v{}  since {}  jobs {}  slots {}  beat {} ms ago",
                    w.name, r.host, r.pid, r.version, r.started, r.jobs_in_flight, r.slots_held, w.beat_ms_ago
                );
                if !r.last_error.is_empty() {
                    let _ = writeln!(out, "      last error: {}", r.last_error);
                }
            }
            None => {
                let _ = writeln!(out, "  {}  (no registration: an older build)  beat {} ms ago", w.name, w.beat_ms_ago);
            }
        }
    }
    Ok(out)
}

fn outcomes_json(counts: &[(Outcome, u64)]) -> Value {
    Value::Object(counts.iter().map(|(o, n)| (o.as_str().to_owned(), json!(n))).collect())
}

/// How long a run took (finished) or has been going (running), from its tick.
fn duration_ms(run: &RunOverview, now: DateTime<Utc>) -> Option<i64> {
    let tick = run.tick?;
    Some((run.finished.unwrap_or(now) - tick).num_milliseconds().max(0))
}

/// Seconds left at the pace so far, for a running run that has made progress.
fn eta_s(run: &RunOverview, now: DateTime<Utc>) -> Option<f64> {
    if run.state() != "running" || run.accounted() == 0 {
        return None;
    }
    let elapsed = duration_ms(run, now)? as f64 / 1000.0;
    let pace = run.accounted() as f64 / elapsed.max(0.001);
    Some(run.orgs_total.saturating_sub(run.accounted()) as f64 / pace)
}

fn run_json(run: &RunOverview, now: DateTime<Utc>) -> Value {
    json!({
        "run_id": run.run_id, "tick": run.tick.map(|t| t.to_rfc3339()), "orgs_total": run.orgs_total,
        "accounted": run.accounted(), "state": run.state(), "duration_ms": duration_ms(run, now),
        "finished": run.finished.map(|t| t.to_rfc3339()), "eta_s": eta_s(run, now), "outcomes": outcomes_json(&run.counts),
    })
}

/// `projectorctl runs list`.
pub async fn runs_list(config: &Config, limit: usize, as_json: bool) -> anyhow::Result<String> {
    let records = RunRecords::new(connection(config)?, config.runs.retention);
    let runs = records.recent(limit).await?;
    let now = Utc::now();
    if as_json {
        return Ok(format!("{}\n", json!({"runs": runs.iter().map(|r| run_json(r, now)).collect::<Vec<_>>()})));
    }
    if runs.is_empty() {
        return Ok(format!("no runs recorded in {} (records are kept runs.retention)\n", Endpoint::from(&config.redis).redacted()));
    }
    let mut out = format!("{:<36} {:<20} {:>8} {:>10} {:>9} {:>8}  state\n", "run", "tick", "orgs", "completed", "other", "seconds");
    for r in &runs {
        let completed = r.counts.iter().find(|(o, _)| *o == Outcome::Completed).map_or(0, |(_, n)| *n);
        let _ = writeln!(
            out,
            "{:<36} {:<20} {:>8} {:>10} {:>9} {:>8.1}  {}",
            r.run_id,
            r.tick.map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string()).unwrap_or_default(),
            r.orgs_total,
            completed,
            r.accounted() - completed,
            duration_ms(r, now).unwrap_or(0) as f64 / 1000.0,
            r.state()
        );
    }
    Ok(out)
}

/// `projectorctl runs show <id>` (and its older spelling `projectorctl run <id>`).
pub async fn runs_show(config: &Config, run_id: &str, as_json: bool) -> anyhow::Result<String> {
    let records = RunRecords::new(connection(config)?, config.runs.retention);
    let run_id = RunId(run_id.to_owned());
    let Some(s) = records.summary(&run_id, OrgIds::List).await? else {
        anyhow::bail!(
            "no record of run {run_id} in {} (records are kept runs.retention; `projectorctl runs list` shows the recent ones)",
            Endpoint::from(&config.redis).redacted()
        );
    };
    let ids = |v: &[OrgId]| v.iter().map(|o| o.0).collect::<Vec<_>>();
    if as_json {
        let counts: Vec<(Outcome, u64)> = Outcome::ALL.iter().map(|o| (*o, s.count(*o))).collect();
        let state = if s.is_finished() { "done" } else { "running" };
        let value = json!({
            "run_id": s.run_id, "orgs_total": s.orgs_total, "accounted": s.accounted(), "state": state,
            "outcomes": outcomes_json(&counts),
            "not_queried_org_ids": ids(&s.skipped_org_ids), "failed_org_ids": ids(&s.failed_org_ids),
        });
        return Ok(format!("{value}\n"));
    }
    let mut out = format!("run {}: {} of {} orgs accounted for\n", s.run_id, s.accounted(), s.orgs_total);
    for outcome in Outcome::ALL {
        let _ = writeln!(out, "  {:<18}{:>8}", outcome.as_str(), s.count(outcome));
    }
    let text = |v: &[OrgId]| v.iter().map(|o| o.0.to_string()).collect::<Vec<_>>().join(",");
    if !s.skipped_org_ids.is_empty() {
        let _ = writeln!(out, "  not queried (skipped_no_slot, slot_unavailable, skipped_rate_policy): {}", text(&s.skipped_org_ids));
    }
    if !s.failed_org_ids.is_empty() {
        let _ = writeln!(out, "  failed (rate_limited, failed): {}", text(&s.failed_org_ids));
    }
    Ok(out)
}

/// `projectorctl status`: everything an operator looks at first, read in one pass.
pub async fn status(config: &Config, as_json: bool) -> anyhow::Result<String> {
    let redis = Endpoint::from(&config.redis).redacted();
    let conn = connection(config)?;
    let limiter = RedisSlotLimiter::new(&config.redis, RedisSlotSettings::new(config.slots.limit, config.slots.lease_ttl))?;
    let occupancy = limiter.occupancy_now().await.with_context(|| format!("reading slots from {redis}"))?;
    let slots = limiter.inspect().await.with_context(|| format!("reading slots from {redis}"))?;
    let queue = projector_queue::overview(&conn).await.with_context(|| format!("reading the queue from {redis}"))?;
    let workers = heartbeat::workers(&conn).await?;
    let latest = RunRecords::new(conn.clone(), config.runs.retention).recent(1).await?.into_iter().next();
    let rollout = Rollout::load(&mut conn.clone()).await?;
    let pause = projector_shared::pause::paused(&conn).await?;
    let now = Utc::now();
    let (in_force, source) = match (occupancy.in_force, occupancy.limit) {
        (Some(limit), Some(_)) => (limit, "redis"),
        _ => (config.slots.limit, "config (no limit stored in Redis yet)"),
    };
    let value = json!({
        "redis": redis,
        "limit": {
            "in_force": in_force, "source": source, "stored": occupancy.limit, "configured": config.slots.limit,
            "adaptive_multiplier": occupancy.multiplier,
        },
        "slots": {"in_use": occupancy.in_use, "waiters": slots.waiters.len()},
        "queue": {"ready": queue.ready, "scheduled": queue.scheduled, "in_flight": queue.in_flight, "dead": queue.dead},
        "workers": {"alive": workers.len(), "jobs_in_flight": workers.iter().filter_map(|w| w.registration.as_ref()).map(|r| r.jobs_in_flight).sum::<u64>()},
        "run": latest.as_ref().map(|r| run_json(r, now)),
        "paused": pause.as_ref().map(|p| json!({"reason": p.reason, "since_ms": p.since_ms})),
        "rollout": {
            "enabled": rollout.enabled, "percentage": rollout.percentage,
            "allow": rollout.allow.iter().map(|o| o.0).collect::<Vec<_>>(), "deny": rollout.deny.iter().map(|o| o.0).collect::<Vec<_>>(),
        },
    });
    if as_json {
        return Ok(format!("{value}\n"));
    }
    let mut out = String::new();
    let _ = writeln!(out, "redis        {redis}");
    if let Some(p) = &pause {
        let _ = writeln!(out, "PAUSED       {} (workers take no jobs; `projectorctl resume` ends it)", p.reason);
    }
    let _ = writeln!(out, "limit        {in_force} in force (source: {source}; adaptive multiplier {:.2})", occupancy.multiplier);
    let _ = writeln!(out, "slots        {} in use, {} waiting", occupancy.in_use, slots.waiters.len());
    let _ = writeln!(
        out,
        "queue        {} ready, {} scheduled, {} in flight, {} dead",
        queue.ready, queue.scheduled, queue.in_flight, queue.dead
    );
    let _ = writeln!(out, "workers      {} alive (`projectorctl workers` lists them)", workers.len());
    match &latest {
        Some(r) => {
            let eta = eta_s(r, now).map(|s| format!(", about {s:.0} s left")).unwrap_or_default();
            let _ = writeln!(out, "latest run   {} {}: {} of {} orgs accounted{eta}", r.run_id, r.state(), r.accounted(), r.orgs_total);
        }
        None => {
            let _ = writeln!(out, "latest run   none recorded");
        }
    }
    let flag = match (rollout.enabled, rollout.percentage) {
        (Some(false), _) => "off: every org takes the legacy path unless allowed".to_owned(),
        (_, Some(p)) => format!("{p}% of orgs on the limited path"),
        _ => "never set: every org takes the limited path (slot first)".to_owned(),
    };
    let _ = writeln!(out, "rollout      {flag}");
    Ok(out)
}
