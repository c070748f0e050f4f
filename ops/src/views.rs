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
use projector_shared::run_record::{OrgRecord, RunOverview, RunRecords, RunState};

use crate::records::Records;
use projector_shared::slots::SlotHistory;
use projector_shared::trail::Step;
use projector_shared::{OrgId, RunId};
use serde_json::{Value, json};

/// What a read command shows: one set of facts, as JSON (`--json`, the page, `/api/…`) and as
/// text for a terminal. The page takes the JSON as it is built, never parsed back from text.
#[derive(Debug, Clone)]
pub struct View {
    json: Value,
    text: String,
}

impl View {
    pub fn new(json: Value, text: String) -> Self {
        View { json, text }
    }

    pub fn into_json(self) -> Value {
        self.json
    }
}

impl serde::Serialize for View {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.json.serialize(serializer)
    }
}

impl std::fmt::Display for View {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

/// The one way a view is printed: its JSON on one line with `--json`, else its text.
pub fn render(view: &View, json: bool) -> String {
    if json { format!("{}\n", view.json) } else { view.to_string() }
}

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
pub async fn workers(config: &Config) -> anyhow::Result<View> {
    if config.on_file() {
        return crate::file_status::workers(config).await;
    }
    let conn = connection(config)?;
    let list =
        heartbeat::workers(&conn).await.with_context(|| format!("reading workers from {}", Endpoint::from(&config.redis).redacted()))?;
    let value = json!({"alive": list.len(), "workers": list.iter().map(worker_json).collect::<Vec<_>>()});
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
    Ok(View::new(value, out))
}

fn outcomes_json(counts: &[(Outcome, u64)]) -> Value {
    Value::Object(counts.iter().map(|(o, n)| (o.as_str().to_owned(), json!(n))).collect())
}

/// How long a run took (finished) or has been going (running), from its tick.
fn duration_ms(run: &RunOverview, now: DateTime<Utc>) -> Option<i64> {
    run.duration_ms(now)
}

fn eta_s(run: &RunOverview, now: DateTime<Utc>) -> Option<f64> {
    run.eta_s(now)
}

pub(crate) fn run_json(run: &RunOverview, now: DateTime<Utc>) -> Value {
    json!({
        "run_id": run.run_id, "tick": run.tick.map(|t| t.to_rfc3339()), "started": run.started().map(|t| t.to_rfc3339()),
        "orgs_total": run.orgs_total,
        "accounted": run.accounted(), "state": run.state().as_str(), "duration_ms": duration_ms(run, now),
        "finished": run.finished.map(|t| t.to_rfc3339()), "cancelled": run.cancelled.map(|t| t.to_rfc3339()),
        "retried": run.retried, "eta_s": eta_s(run, now), "outcomes": outcomes_json(&run.counts),
        "skipped": run.skipped,
        "deadline": run.deadline.map(|t| t.to_rfc3339()),
        "deadline_in_s": run.deadline.map(|d| (d - now).num_milliseconds() as f64 / 1000.0),
        "predicted_overrun_s": run.predicted_overrun_s(now),
        "pacing": run.pacing.map(|p| json!({
            "batch_size": p.size, "batch_delay_ms": p.delay.as_millis() as u64,
            "batch_delay_configured_ms": p.configured.as_millis() as u64, "tightened": p.tightened(),
            "text": p.describe(),
        })),
    })
}

/// `projectorctl runs list`.
pub async fn runs_list(config: &Config, limit: usize) -> anyhow::Result<View> {
    let records = Records::open(config).await?;
    let runs = records.recent(limit).await?;
    let now = Utc::now();
    let value = json!({"runs": runs.iter().map(|r| run_json(r, now)).collect::<Vec<_>>()});
    if runs.is_empty() {
        let text = format!("no runs recorded in {} (records are kept runs.retention)\n", records.place(config));
        return Ok(View::new(value, text));
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
            r.skipped.as_ref().map_or_else(|| r.state().as_str().to_owned(), |why| format!("skipped: {why}"))
        );
    }
    Ok(View::new(value, out))
}

/// A run or an org that is not there: the page answers it with 404, other failures with 503.
#[derive(Debug)]
pub(crate) struct NotFound(String);

impl std::fmt::Display for NotFound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for NotFound {}

/// The error for a run with no record, saying where to look.
pub(crate) fn no_record(config: &Config, run_id: &RunId) -> anyhow::Error {
    let place = if config.on_file() { config.backend.dsn.clone().unwrap_or_default() } else { Endpoint::from(&config.redis).redacted() };
    NotFound(format!(
        "no record of run {run_id} in {place} (per-org records are kept runs.retention, summaries runs.summary_retention; `projectorctl runs list` shows the recent ones)"
    ))
    .into()
}

/// The run's record, or an error saying where to look.
pub(crate) async fn run_record(config: &Config, records: &Records, run_id: &RunId) -> anyhow::Result<RunOverview> {
    records.overview(run_id).await?.ok_or_else(|| no_record(config, run_id))
}

/// Accounted orgs over time: at each of `steps` even points from the start to the last outcome,
/// the share of `times` (a sample of end times) by then, scaled to the orgs accounted now.
fn progress(run: &RunOverview, times: &[i64], steps: usize) -> Vec<(i64, u64)> {
    let (Some(start), Some(&end)) = (run.started().map(|t| t.timestamp_millis()), times.last()) else { return Vec::new() };
    let span = (end - start).max(1);
    let scale = run.accounted() as f64 / times.len() as f64;
    (1..=steps as i64)
        .map(|k| {
            let at = start + span * k / steps as i64;
            (at - start, (times.partition_point(|&t| t <= at) as f64 * scale).round() as u64)
        })
        .collect()
}

/// Orgs whose reasons `runs show` and the page list; the others are counted.
const LISTED: usize = 500;

/// End times sampled for the progress table: a few thousand are as good as all of them.
const PROGRESS_SAMPLE: usize = 2_000;

fn org_json(o: &OrgRecord) -> Value {
    let last = o.trail.last();
    json!({
        "org_id": o.org.0, "outcome": o.outcome.map(Outcome::as_str), "attempt": o.attempt,
        "at_ms": last.map(|t| t.at_ms), "worker": last.map(|t| t.attempt.worker.clone()),
        "reason": last.and_then(|t| t.attempt.why.as_ref()).map(|w| json!({"kind": w.kind, "message": w.message, "advice": w.advice})),
        "slot_wait_ms": last.and_then(|t| slot_wait(&t.attempt.steps)),
        "retry_after_ms": last.and_then(|t| retry_after(&t.attempt.steps)),
        "attempts": o.trail.len(),
    })
}

fn slot_wait(steps: &[Step]) -> Option<u64> {
    steps.iter().find_map(|s| match s {
        Step::Slot { waited_ms, .. } => Some(*waited_ms),
        _ => None,
    })
}

fn retry_after(steps: &[Step]) -> Option<u64> {
    steps.iter().find_map(|s| match s {
        Step::Rate { retry_after_ms, .. } => *retry_after_ms,
        _ => None,
    })
}

/// A run, the orgs that did not complete (at most [`LISTED`], with their trails), how many orgs
/// have no outcome yet, and a sample of end times: what `runs show` and the page show.
struct RunDetail {
    run: RunOverview,
    not_completed: Vec<OrgRecord>,
    not_completed_total: usize,
    open: Vec<OrgId>,
    end_times: Vec<i64>,
    /// The per-org records are gone (`runs.retention`); only the run's summary is left.
    orgs_expired: bool,
}

async fn run_detail(config: &Config, records: &Records, run_id: &RunId, listed: Listed) -> anyhow::Result<RunDetail> {
    let run = run_record(config, records, run_id).await?;
    let orgs = records.orgs(run_id).await?;
    let orgs_expired = orgs.is_empty() && run.orgs_total > 0;
    let open = orgs.iter().filter(|o| o.outcome.is_none()).map(|o| o.org).collect();
    let mut not_completed: Vec<OrgRecord> = orgs.into_iter().filter(|o| o.outcome.is_some_and(|x| x != Outcome::Completed)).collect();
    let not_completed_total = not_completed.len();
    if listed == Listed::First {
        not_completed.truncate(LISTED);
    }
    records.trails(run_id, &mut not_completed).await?;
    let end_times = records.end_times(run_id, PROGRESS_SAMPLE).await?;
    Ok(RunDetail { run, not_completed, not_completed_total, open, end_times, orgs_expired })
}

fn run_detail_json(d: &RunDetail, now: DateTime<Utc>) -> Value {
    let mut value = run_json(&d.run, now);
    value["not_completed"] = json!(d.not_completed.iter().map(org_json).collect::<Vec<_>>());
    value["not_completed_total"] = json!(d.not_completed_total);
    value["open_org_ids"] = json!(d.open.iter().map(|o| o.0).collect::<Vec<_>>());
    value["per_org_records"] = json!(if d.orgs_expired { "expired" } else { "kept" });
    value["progress"] =
        json!(progress(&d.run, &d.end_times, 10).iter().map(|(ms, n)| json!({"after_ms": ms, "accounted": n})).collect::<Vec<_>>());
    value
}

/// `projectorctl runs show <id>` (and its older spelling `projectorctl run <id>`).
/// How many orgs that did not complete `runs show` lists with their reasons.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listed {
    /// The first [`LISTED`] (the page, and `runs show` by default).
    First,
    /// Every one (`runs show --all`).
    All,
}

pub async fn runs_show(config: &Config, run_id: &str, listed: Listed) -> anyhow::Result<View> {
    let records = Records::open(config).await?;
    let run_id = RunId(run_id.to_owned());
    let detail = run_detail(config, &records, &run_id, listed).await?;
    let now = Utc::now();
    let value = run_detail_json(&detail, now);
    let run = &detail.run;
    let mut out = format!("run {} ({}): {} of {} orgs accounted for", run.run_id, run.state().as_str(), run.accounted(), run.orgs_total);
    if run.retried > 0 {
        let _ = write!(out, "; {} org attempts retried", run.retried);
    }
    out.push('\n');
    if let Some(p) = &run.pacing {
        let _ = writeln!(out, "  {}", p.describe());
    }
    for (outcome, n) in &run.counts {
        let _ = writeln!(out, "  {:<20}{:>8}", outcome.as_str(), n);
    }
    if detail.orgs_expired {
        let _ = writeln!(
            out,
            "per-org records expired (kept runs.retention = {}): this is the run's summary; explain and retry need them",
            projector_config::format_duration(config.runs.retention)
        );
    }
    if !detail.not_completed.is_empty() {
        let _ = writeln!(out, "orgs that did not complete (`projectorctl explain {} <org>` tells the whole story):", run.run_id);
        for o in &detail.not_completed {
            let last = o.trail.last();
            let why = last.and_then(|t| t.attempt.why.as_ref()).map_or_else(String::new, |w| format!("{}: {}", w.kind, w.message));
            let mut extra = String::new();
            if let Some(w) = last.and_then(|t| slot_wait(&t.attempt.steps)) {
                let _ = write!(extra, " slot wait {w} ms");
            }
            if let Some(r) = last.and_then(|t| retry_after(&t.attempt.steps)) {
                let _ = write!(extra, " retry_after {r} ms");
            }
            let outcome = o.outcome.map_or("-", Outcome::as_str);
            let _ = writeln!(out, "  org {:<10} {:<20} {why}{extra}", o.org.0, outcome);
            if let Some(w) = last.and_then(|t| t.attempt.why.as_ref()).filter(|w| !w.advice.is_empty()) {
                let _ = writeln!(out, "  {:<31} advice: {}", "", w.advice);
            }
        }
        if detail.not_completed_total > detail.not_completed.len() {
            let _ = writeln!(
                out,
                "  … and {} more (`--json` lists the first {LISTED})",
                detail.not_completed_total - detail.not_completed.len()
            );
        }
    }
    if !detail.open.is_empty() {
        let _ = writeln!(out, "{} org(s) without an outcome yet", detail.open.len());
    }
    let points = progress(run, &detail.end_times, 10);
    if !points.is_empty() {
        let line = points.iter().map(|(ms, n)| format!("{:.1}s:{n}", *ms as f64 / 1000.0)).collect::<Vec<_>>().join(" ");
        let _ = writeln!(out, "progress (accounted after the start): {line}");
    }
    Ok(View::new(value, out))
}

/// Where an org under way is, as the slots see it.
struct SlotStateOf {
    holding: Option<String>,
    waiting: Option<String>,
}

async fn slot_state_of(config: &Config, org: u64) -> anyhow::Result<SlotStateOf> {
    let limiter = crate::slot_limiter(config)?;
    let state = limiter.inspect().await.with_context(|| format!("reading slots from {}", Endpoint::from(&config.redis).redacted()))?;
    let org_text = org.to_string();
    let holding = state.holders.iter().find(|h| h.org_id == org_text).map(|h| {
        format!("holds a slot (fencing token {}) on {} for {:.1} s: its query is running", h.fencing_token, h.process, h.age.as_secs_f64())
    });
    let waiting = state.waiters.iter().position(|(_, info)| info.rsplit('|').next() == Some(org_text.as_str())).map(|place| {
        format!("waits for a slot, place {} of {} in line ({} slots held)", place + 1, state.waiters.len(), state.holders.len())
    });
    Ok(SlotStateOf { holding, waiting })
}

/// `projectorctl explain <run> <org>`: everything recorded about one org in one run, in order.
pub async fn explain(config: &Config, run_id: &str, org: u64) -> anyhow::Result<View> {
    let records = Records::open(config).await?;
    let run_id = RunId(run_id.to_owned());
    let run = run_record(config, &records, &run_id).await?;
    let Some(record) = records.org(&run_id, OrgId(org)).await? else {
        return Err(NotFound(format!("org {org} is not in the plan of run {run_id} ({} orgs planned)", run.orgs_total)).into());
    };
    // An org still under way: where it is now, from the slots (who holds one for it, or waits).
    let now_at = match record.outcome {
        Some(_) => None,
        // The file's slot leases name no org to a reader yet: the trail says what is known.
        None if config.on_file() => None,
        None => Some(slot_state_of(config, org).await?),
    };
    let value = json!({
        "run_id": run_id.0, "org_id": org, "outcome": record.outcome.map(Outcome::as_str), "attempt": record.attempt,
        // A compacted completed org: when its outcome was recorded (null if that was not kept).
        "compacted": record.compacted_at_ms.is_some(),
        "recorded_at": record.compacted_at_ms.flatten().and_then(DateTime::<Utc>::from_timestamp_millis).map(|t| t.to_rfc3339()),
        "now": now_at.as_ref().map(|n| json!({"holding_slot": n.holding, "waiting_for_slot": n.waiting})),
        // The stored lines leave out attempt 0; the JSON always names it.
        "attempts": record.trail.iter().map(|t| {
            let mut v = serde_json::to_value(t).unwrap_or(Value::Null);
            v["attempt"] = json!(t.attempt.attempt);
            v
        }).collect::<Vec<_>>(),
    });
    let mut out = format!("org {org} in run {run_id}");
    if let Some(tick) = run.tick {
        let _ = write!(out, " (tick {})", tick.to_rfc3339());
    }
    let _ = writeln!(out, ": {}", record.outcome.map_or("no outcome yet", Outcome::as_str));
    if let Some(at) = record.compacted_at_ms {
        let at =
            at.and_then(DateTime::<Utc>::from_timestamp_millis).map_or_else(|| "at a time no longer kept".to_owned(), |t| t.to_rfc3339());
        let _ = writeln!(
            out,
            "  its projection was written and the outcome recorded {at}; its step-by-step trail was compacted away after runs.completed_detail"
        );
    } else if record.trail.is_empty() {
        let _ = writeln!(out, "  nothing recorded yet: its job has not ended (see `projectorctl status` for the queue)");
    }
    for entry in &record.trail {
        let at = DateTime::<Utc>::from_timestamp_millis(entry.at_ms).map(|t| t.format("%H:%M:%S%.3f").to_string()).unwrap_or_default();
        let a = &entry.attempt;
        let by = if a.worker.is_empty() { String::new() } else { format!(" on {}", a.worker) };
        let _ = writeln!(out, "attempt {}{by}, recorded {at}:", a.attempt);
        for (i, step) in a.steps.iter().enumerate() {
            let _ = writeln!(out, "  {}. {}", i + 1, step.describe());
        }
        let why = a.why.as_ref().map_or_else(String::new, |w| format!(" ({}: {})", w.kind, w.message));
        let _ = writeln!(out, "  {}. outcome: {}{why}", a.steps.len() + 1, a.outcome.as_str());
        if let Some(w) = a.why.as_ref().filter(|w| !w.advice.is_empty()) {
            let _ = writeln!(out, "     advice: {}", w.advice);
        }
    }
    if record.outcome.is_none() && record.attempt > 0 {
        let _ = writeln!(out, "attempt {} is queued (runs retry) and has not ended yet", record.attempt);
    }
    if let Some(n) = &now_at {
        match (&n.holding, &n.waiting) {
            (Some(h), _) => {
                let _ = writeln!(out, "now: {h}");
            }
            (None, Some(w)) => {
                let _ = writeln!(out, "now: {w}");
            }
            (None, None) => {
                let _ = writeln!(out, "now: neither holding nor waiting for a slot: queued, or between steps");
            }
        }
    }
    Ok(View::new(value, out))
}

/// The query service's numbers as the worker that heard them last reports them, with how long
/// ago (its beat's age included).
fn freshest_service(workers: &[WorkerEntry]) -> Option<(projector_shared::service::ServiceQuota, u64)> {
    workers
        .iter()
        .filter_map(|w| w.registration.as_ref()?.service.map(|(q, heard)| (q, heard.saturating_add(w.beat_ms_ago))))
        .min_by_key(|(_, ago)| *ago)
}

/// How recent the service's numbers must be to be compared with the slots held now: they hold
/// their last value between runs, when the fleet holds nothing.
const FRESH_FOR_COMPARISON_MS: u64 = 10_000;

/// What the service's own numbers say is wrong with the fleet's settings.
fn service_warnings(
    heard: Option<(projector_shared::service::ServiceQuota, u64)>,
    slot_limit: u32,
    in_force: u32,
    others: Option<u32>,
    referrer: &str,
) -> Vec<String> {
    let Some((q, ago)) = heard else { return Vec::new() };
    let mut warnings = Vec::new();
    if q.rejection_threshold < i64::from(slot_limit) {
        let now = if i64::from(in_force) < q.rejection_threshold {
            format!("the fleet follows the service's numbers ({in_force} in force) while they keep coming")
        } else {
            "nothing keeps the fleet under it (slots.follow_service is off)".to_owned()
        };
        warnings.push(format!(
            "the query service admits {} queries for {referrer}, fewer than slots.limit ({slot_limit}); {now}: \
             lower the limit to at most {} (`projectorctl slots set-limit`)",
            q.rejection_threshold, q.rejection_threshold
        ));
    }
    // Other callers' share as worked out at the answers (the count and the fleet's leases of the
    // same moments), never this moment's leases against a count read mid-burst.
    if let Some(others) = others.map(i64::from).filter(|o| ago <= FRESH_FOR_COMPARISON_MS && *o > q.others_margin()) {
        warnings.push(format!(
            "other callers run about {others} of {referrer}'s {} queries at the query service: \
             the fleet's slots no longer keep the referrer under its limit; find them (old tasks on the same referrer)",
            q.rejection_threshold
        ));
    }
    warnings
}

/// What the fleet's workers say they run (their heartbeats): each rate policy, slot setting
/// and config digest with the workers that run it. More than one of any means the workers
/// disagree: one was started with other flags, or missed a runtime change.
pub struct FleetSettings {
    pub rate: std::collections::BTreeMap<String, Vec<String>>,
    pub slots: std::collections::BTreeMap<String, Vec<String>>,
    pub config_digest: std::collections::BTreeMap<String, Vec<String>>,
}

impl FleetSettings {
    pub fn of(workers: &[WorkerEntry]) -> FleetSettings {
        let mut fleet = FleetSettings { rate: Default::default(), slots: Default::default(), config_digest: Default::default() };
        for w in workers {
            // A worker of an older build publishes none of these: it is left out, not counted as a disagreement.
            let Some(r) = w.registration.as_ref().filter(|r| !r.config_digest.is_empty()) else { continue };
            fleet.rate.entry(r.rate.clone()).or_default().push(w.name.clone());
            fleet.slots.entry(r.slots.clone()).or_default().push(w.name.clone());
            fleet.config_digest.entry(r.config_digest.clone()).or_default().push(w.name.clone());
        }
        fleet
    }

    /// One WARNING line per setting the workers disagree on.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (what, by) in [("rate policy", &self.rate), ("slot settings", &self.slots), ("configuration", &self.config_digest)] {
            if by.len() > 1 {
                let each: Vec<String> = by.iter().map(|(value, names)| format!("{} on {value}", names.len())).collect();
                out.push(format!("workers disagree on their {what}: {} (restart the odd ones with the fleet's settings)", each.join("; ")));
            }
        }
        out
    }

    pub fn to_json(&self) -> serde_json::Value {
        let list = |by: &std::collections::BTreeMap<String, Vec<String>>| -> Vec<serde_json::Value> {
            by.iter().map(|(value, names)| json!({"value": value, "workers": names})).collect()
        };
        json!({
            "rate": list(&self.rate), "slots": list(&self.slots), "config_digest": list(&self.config_digest),
            "agree": self.rate.len() <= 1 && self.slots.len() <= 1 && self.config_digest.len() <= 1,
        })
    }
}

/// `status`'s line about the query service's own numbers.
fn service_line(service: Option<(projector_shared::service::ServiceQuota, u64)>, referrer: &str) -> String {
    match service {
        Some((q, ago)) => {
            let used = if q.quota_used < 0 { "unknown (its counter failed)".to_owned() } else { q.quota_used.to_string() };
            format!(
                "{used} of {} running for {referrer} at the query service (throttles above {}; heard {:.1} s ago)",
                q.rejection_threshold,
                q.throttle_threshold,
                ago as f64 / 1000.0
            )
        }
        None => "no numbers heard from the query service (no answer yet, or no referrer policy live there)".to_owned(),
    }
}

/// `status`'s line about the latest run: its state, progress, ETA and deadline.
pub(crate) fn latest_run_line(latest: Option<&RunOverview>, now: chrono::DateTime<Utc>, workers_alive: usize) -> String {
    let Some(r) = latest else {
        return "none recorded".to_owned();
    };
    // With no worker alive nothing moves: a pace from the past would promise an end that never comes.
    let eta = match eta_s(r, now) {
        Some(_) if workers_alive == 0 => ", no worker alive to finish it (start projector-worker)".to_owned(),
        Some(s) => format!(", about {s:.0} s left"),
        None => String::new(),
    };
    let deadline = match (r.deadline, r.state()) {
        (Some(d), RunState::Running | RunState::FanningOut) => {
            let late = r.predicted_overrun_s(now);
            let verdict = if late > 0.0 { format!(": predicted {late:.0} s late") } else { String::new() };
            format!(", deadline in {:.0} s{verdict}", (d - now).num_milliseconds() as f64 / 1000.0)
        }
        _ => String::new(),
    };
    format!("{} {}: {} of {} orgs accounted{eta}{deadline}", r.run_id, r.state().as_str(), r.accounted(), r.orgs_total)
}

/// `status`'s line about the rollout flag.
pub(crate) fn rollout_line(rollout: &Rollout) -> String {
    match (rollout.enabled, rollout.percentage) {
        (Some(false), _) => "off: every org takes the legacy path unless allowed".to_owned(),
        (_, Some(p)) => format!("{p}% of orgs on the limited path"),
        _ => "never set: every org takes the limited path (slot first)".to_owned(),
    }
}

/// The fleet's slot samples of the last hour, with their peaks: what the page charts.
fn history_json(history: &SlotHistory) -> Value {
    let peak = |f: fn(&projector_shared::slots::SlotSample) -> Option<u64>| history.samples.iter().filter_map(f).max();
    json!({
        "now_ms": history.now_ms,
        "samples": history.samples,
        "peak_in_use": peak(|s| Some(u64::from(s.in_use))),
        "peak_limit": peak(|s| s.limit.map(u64::from)),
        "peak_service_used": peak(|s| s.service_used),
    })
}

fn history_line(history: &SlotHistory) -> String {
    let samples = &history.samples;
    let Some(peak) = samples.iter().map(|s| s.in_use).max() else {
        return "no slot samples yet (workers take one per worker.slot_sample_interval)".to_owned();
    };
    let limits: Vec<u32> = samples.iter().filter_map(|s| s.limit).collect();
    let limit = match (limits.iter().min(), limits.iter().max()) {
        (Some(lo), Some(hi)) if lo == hi => format!("limit {lo}"),
        (Some(lo), Some(hi)) => format!("limit {lo}–{hi}"),
        _ => "no limit stored".to_owned(),
    };
    let service =
        samples.iter().filter_map(|s| s.service_used).max().map_or_else(String::new, |u| format!(", service's own count up to {u}"));
    format!("peak {peak} slots in use, {limit}{service} ({} samples; the status page charts them)", samples.len())
}

/// `projectorctl status`: everything an operator looks at first, read in one pass.
pub async fn status(config: &Config) -> anyhow::Result<View> {
    if config.on_file() {
        return crate::file_status::status(config).await;
    }
    let redis = Endpoint::from(&config.redis).redacted();
    let conn = connection(config)?;
    // One PING first, classed: a wrong password reads as one, not as the slot limiter's "no
    // answer within 500ms" while its connection keeps retrying the handshake.
    projector_shared::redis_conn::check(&conn, std::time::Duration::from_secs(2)).await?;
    let limiter = crate::slot_limiter(config)?;
    let occupancy = limiter.occupancy_now().await.with_context(|| format!("reading slots from {redis}"))?;
    let slots = limiter.inspect().await.with_context(|| format!("reading slots from {redis}"))?;
    let queue = projector_queue::overview(&conn).await.with_context(|| format!("reading the queue from {redis}"))?;
    let workers = heartbeat::workers(&conn).await?;
    // The run that is open first (the oldest of them, the one a deadline ends next), else the
    // latest: a skipped tick after an open run must not hide it.
    let records = RunRecords::for_config(conn.clone(), &config.runs);
    let latest = match records.open_runs().await?.pop() {
        Some(open) => Some(open),
        None => records.recent(1).await?.into_iter().next(),
    };
    let rollout = Rollout::load(&mut conn.clone()).await?;
    let pause = projector_shared::pause::paused(&conn).await?;
    let history = limiter.history().await.with_context(|| format!("reading the slot history from {redis}"))?;
    let now = Utc::now();
    let oldest_wait_ms = slots.oldest_wait.map(|w| w.as_millis() as u64);
    // What sets the limit in force: the service's cap, the adaptive multiplier, a limit an
    // operator stored, or slots.limit (also before any limit is stored in Redis).
    let (in_force, source) = (occupancy.in_force.unwrap_or(config.slots.limit), occupancy.source(config.slots.limit));
    let service = freshest_service(&workers);
    let slot_limit = occupancy.limit.unwrap_or(config.slots.limit);
    let fleet = FleetSettings::of(&workers);
    let mut warnings = service_warnings(service, slot_limit, in_force, occupancy.service_others, &config.query.referrer);
    warnings.extend(fleet.warnings());
    let value = json!({
        "fleet": fleet.to_json(),
        "redis": redis,
        "service": service.map(|(q, ago)| json!({
            "referrer": config.query.referrer, "quota_used": q.quota_used, "rejection_threshold": q.rejection_threshold,
            "throttle_threshold": q.throttle_threshold, "heard_ms_ago": ago,
            "others": occupancy.service_others,
        })),
        "warnings": warnings,
        "limit": {
            "in_force": in_force, "source": source, "stored": occupancy.limit, "configured": config.slots.limit,
            "adaptive_multiplier": occupancy.multiplier,
        },
        "slots": {"in_use": occupancy.in_use, "waiters": slots.waiters.len(), "oldest_wait_ms": oldest_wait_ms},
        "slot_history": history_json(&history),
        "queue": {"ready": queue.ready, "scheduled": queue.scheduled, "in_flight": queue.in_flight, "dead": queue.dead},
        "workers": {"alive": workers.len(), "jobs_in_flight": workers.iter().filter_map(|w| w.registration.as_ref()).map(|r| r.jobs_in_flight).sum::<u64>()},
        "run": latest.as_ref().map(|r| run_json(r, now)),
        "paused": pause.as_ref().map(|p| json!({"reason": p.reason, "since_ms": p.since_ms})),
        "rollout": {
            "enabled": rollout.enabled, "percentage": rollout.percentage,
            "allow": rollout.allow.iter().map(|o| o.0).collect::<Vec<_>>(), "deny": rollout.deny.iter().map(|o| o.0).collect::<Vec<_>>(),
        },
    });
    let mut out = String::new();
    let _ = writeln!(out, "redis        {redis}");
    if let Some(p) = &pause {
        let _ = writeln!(out, "PAUSED       {} (workers take no jobs; `projectorctl resume` ends it)", p.reason);
    }
    let _ = writeln!(out, "limit        {in_force} in force (source: {source}; adaptive multiplier {:.2})", occupancy.multiplier);
    let _ = writeln!(out, "service      {}", service_line(service, &config.query.referrer));
    for w in &warnings {
        let _ = writeln!(out, "WARNING      {w}");
    }
    let oldest = oldest_wait_ms.map(|ms| format!(" (oldest for {:.1} s)", ms as f64 / 1000.0)).unwrap_or_default();
    let _ = writeln!(out, "slots        {} in use, {} waiting{oldest}", occupancy.in_use, slots.waiters.len());
    let _ = writeln!(out, "last hour    {}", history_line(&history));
    let _ = writeln!(
        out,
        "queue        {} ready, {} scheduled, {} in flight, {} dead",
        queue.ready, queue.scheduled, queue.in_flight, queue.dead
    );
    let _ = writeln!(out, "workers      {} alive (`projectorctl workers` lists them)", workers.len());
    if let Some((rate, _)) = fleet.rate.iter().next().filter(|_| fleet.rate.len() == 1) {
        let _ = writeln!(out, "fleet runs   rate {rate}; slots {}", fleet.slots.keys().next().map_or("-", String::as_str));
    }
    let _ = writeln!(out, "latest run   {}", latest_run_line(latest.as_ref(), now, workers.len()));
    let _ = writeln!(out, "rollout      {}", rollout_line(&rollout));
    Ok(View::new(value, out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn running(accounted: u64) -> RunOverview {
        let now = Utc::now();
        RunOverview {
            run_id: "run-x".into(),
            tick: Some(now - chrono::TimeDelta::seconds(10)),
            orgs_total: 100,
            counts: Outcome::ALL.iter().map(|o| (*o, if *o == Outcome::Completed { accounted } else { 0 })).collect(),
            fanned_out: Some(now - chrono::TimeDelta::seconds(9)),
            finished: None,
            cancelled: None,
            retried: 0,
            skipped: None,
            deadline: Some(now + chrono::TimeDelta::seconds(3600)),
            created: None,
            pacing: None,
        }
    }

    #[test]
    fn the_latest_run_line_promises_no_end_when_no_worker_is_alive() {
        let now = Utc::now();
        let r = running(50);
        assert!(latest_run_line(Some(&r), now, 2).contains("about 10 s left"), "{}", latest_run_line(Some(&r), now, 2));
        let stalled = latest_run_line(Some(&r), now, 0);
        assert!(stalled.contains("no worker alive to finish it") && !stalled.contains("s left"), "{stalled}");
    }

    #[test]
    fn a_skipped_tick_has_no_duration() {
        let skipped = RunOverview { skipped: Some("run-y still open".into()), fanned_out: None, ..running(0) };
        assert_eq!(skipped.duration_ms(Utc::now()), None);
    }
}
