//! The status page (`projectorctl serve`): server-rendered HTML of the fleet's status, recent
//! runs, one run with per-org reasons, one org's trail and the workers; the same data as JSON
//! under `/api/` (the objects `--json` prints); and, only with `--allow-actions` and the token
//! `ops.action_token`, pause, resume, retry and cancel, each logged.

use crate::records::Records;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use maud::{DOCTYPE, Markup, PreEscaped, html};
use projector_config::Config;
use projector_shared::RunId;
use projector_shared::run::Outcome;
use serde_json::Value;

use crate::{actions, views};

/// Seconds between refreshes of a page (by its script; without JavaScript the page stays as served).
const REFRESH_SECONDS: u32 = 2;

struct Site {
    config: Config,
    allow_actions: bool,
}

type Shared = State<Arc<Site>>;

/// Serves the page until SIGINT or SIGTERM. Prints `serving http://<addr>` on stdout once
/// listening (port 0 picks a free port).
pub async fn serve(config: Config, addr: SocketAddr, allow_actions: bool) -> anyhow::Result<()> {
    if allow_actions && config.ops.action_token.as_deref().is_none_or(str::is_empty) {
        anyhow::bail!(
            "--allow-actions needs a token: set ops.action_token in the config file or PROJECTOR_OPS_ACTION_TOKEN (actions change the fleet; the page asks for the token with each one)"
        );
    }
    let mut app = Router::new()
        .route("/", get(home))
        .route("/runs/{run}", get(run_page))
        .route("/runs/{run}/orgs/{org}", get(org_page))
        .route("/api/status", get(api_status))
        .route("/api/runs", get(api_runs))
        .route("/api/runs/{run}", get(api_run))
        .route("/api/runs/{run}/orgs/{org}", get(api_org))
        .route("/api/workers", get(api_workers));
    if allow_actions {
        app = app
            .route("/actions/pause", post(pause))
            .route("/actions/resume", post(resume))
            .route("/actions/runs/{run}/retry", post(retry))
            .route("/actions/runs/{run}/cancel", post(cancel));
    }
    let app = app.with_state(Arc::new(Site { config, allow_actions }));
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e} (in use? pick another --addr, or port 0 for a free one)"))?;
    let bound = listener.local_addr()?;
    tracing::info!(addr = %bound, allow_actions, "status page serving");
    projector_process::telemetry::print(&format!("serving http://{bound}\n"));
    let shutdown = projector_process::shutdown::on_signal();
    axum::serve(listener, app).with_graceful_shutdown(async move { shutdown.cancelled().await }).await?;
    Ok(())
}

/// A failed read, shown as a page or a JSON error: 404 for an unknown run or org, else 503
/// (Redis cannot be read).
struct Failure(anyhow::Error);

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Failure(e)
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let text = format!("{:#}", self.0);
        let status =
            if self.0.downcast_ref::<views::NotFound>().is_some() { StatusCode::NOT_FOUND } else { StatusCode::SERVICE_UNAVAILABLE };
        (status, layout("error", false, html! { p.error { (text) } })).into_response()
    }
}

async fn api_status(State(site): Shared) -> Result<Response, Failure> {
    Ok(Json(views::status(&site.config).await?).into_response())
}

async fn api_runs(State(site): Shared) -> Result<Response, Failure> {
    Ok(Json(views::runs_list(&site.config, 20).await?).into_response())
}

async fn api_run(State(site): Shared, Path(run): Path<String>) -> Result<Response, Failure> {
    Ok(Json(views::runs_show(&site.config, &run, views::Listed::First).await?).into_response())
}

async fn api_org(State(site): Shared, Path((run, org)): Path<(String, u64)>) -> Result<Response, Failure> {
    Ok(Json(views::explain(&site.config, &run, org).await?).into_response())
}

async fn api_workers(State(site): Shared) -> Result<Response, Failure> {
    Ok(Json(views::workers(&site.config).await?).into_response())
}

/// The page around every view: title, navigation, style and the refresh script.
fn layout(title: &str, refresh: bool, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                title { "Projector · " (title) }
                style { (PreEscaped(STYLE)) }
            }
            body {
                nav { a href="/" { "Projector" } " · " span { (title) } }
                main { (body) }
                @if refresh {
                    script { (PreEscaped(format!("setTimeout(function () {{ location.reload(); }}, {});", REFRESH_SECONDS * 1000))) }
                }
            }
        }
    }
}

const STYLE: &str = "body{font-family:sans-serif;margin:1.5em;color:#222}nav{margin-bottom:1em;font-weight:bold}\
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left}\
th{background:#f3f3f3}td.n{text-align:right;font-variant-numeric:tabular-nums}.paused{background:#fde2e2;padding:.5em;border:1px solid #e99}\
.error{color:#a00}pre{background:#f6f6f6;padding:.8em}form{display:inline-block;margin:0 1em .5em 0}progress{width:20em}";

/// A JSON value as a table shows it: text as is, `-` for null.
fn show(value: &Value) -> String {
    match value {
        Value::Null => "-".to_owned(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The run's accounted orgs over time against its deadline, as a server-rendered SVG (no
/// script needed): the progress points of `runs show --json`, a line at the deadline, and the
/// total as the top. Empty when the run has no progress yet.
fn progress_chart(detail: &Value) -> Markup {
    let (width, height, pad) = (600.0_f64, 160.0_f64, 30.0_f64);
    let points: Vec<(f64, f64)> = detail["progress"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| Some((p["after_ms"].as_f64()? / 1000.0, p["accounted"].as_f64()?)))
        .collect();
    let total = detail["orgs_total"].as_f64().unwrap_or(0.0);
    if points.is_empty() || total <= 0.0 {
        return html! {};
    }
    // From the run's start: its tick, or when a replayed past tick was fanned out.
    let tick = detail["started"].as_str().or(detail["tick"].as_str()).and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok());
    let deadline = detail["deadline"].as_str().and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok());
    let deadline_s = tick.zip(deadline).map(|(t, d)| (d - t).num_milliseconds() as f64 / 1000.0);
    let last_s = points.last().map_or(1.0, |p| p.0);
    let span = deadline_s.unwrap_or(last_s).max(last_s).max(1.0);
    let x = |s: f64| pad + s / span * (width - 2.0 * pad);
    let y = |n: f64| height - pad - n / total * (height - 2.0 * pad);
    let line: Vec<String> = std::iter::once((0.0, 0.0)).chain(points).map(|(s, n)| format!("{:.1},{:.1}", x(s), y(n))).collect();
    html! {
        svg.chart #progress-chart width=(width) height=(height) viewBox={ "0 0 " (width) " " (height) } role="img"
            aria-label="orgs accounted over time against the deadline" {
            (chart_frame(width, pad, y(0.0), y(total), &format!("{total:.0} orgs")))
            polyline.progress points=(line.join(" ")) fill="none" stroke="#2a7" stroke-width="2" {}
            @if let Some(d) = deadline_s {
                line.deadline x1=(x(d)) y1=(pad / 2.0) x2=(x(d)) y2=(y(0.0)) stroke="#c33" stroke-width="2" {}
                text x=(x(d) - 4.0) y=(pad / 2.0 + 10.0) font-size="11" text-anchor="end" fill="#c33" { "deadline" }
            }
            text x=(pad) y=(height - 8.0) font-size="11" { "start" }
            text x=(width - pad) y=(height - 8.0) font-size="11" text-anchor="end" { (format!("+{span:.0} s")) }
        }
    }
}

/// A chart's frame: the zero line, and a dashed line at the top value with its label.
fn chart_frame(width: f64, pad: f64, zero_y: f64, top_y: f64, top_label: &str) -> Markup {
    html! {
        line x1=(pad) y1=(zero_y) x2=(width - pad) y2=(zero_y) stroke="#888" {}
        line x1=(pad) y1=(top_y) x2=(width - pad) y2=(top_y) stroke="#ccc" stroke-dasharray="4" {}
        text x=(pad) y=(top_y - 4.0) font-size="11" { (top_label) }
    }
}

/// The fleet's slots over the last hour as a server-rendered SVG: slots in use, the limit in
/// force and the query service's own count for the referrer, from the samples the workers keep
/// in Redis (`status --json`'s `slot_history`). Each line has a point per sample that has the
/// value; a sample without the service's count (no answer within two periods) is left out of that line.
fn slots_chart(history: &Value) -> Markup {
    let (width, height, pad) = (600.0_f64, 160.0_f64, 30.0_f64);
    let samples = history["samples"].as_array().map(Vec::as_slice).unwrap_or_default();
    let Some(now) = history["now_ms"].as_f64().filter(|_| !samples.is_empty()) else {
        return html! { p { "No slot samples yet: workers take one per worker.slot_sample_interval." } };
    };
    // The last hour, or less while the history is younger: a fleet that started minutes ago
    // fills the chart rather than a sliver at its right edge.
    let first = samples.iter().filter_map(|s| s["at_ms"].as_f64()).fold(now, f64::min);
    let span_ms = (now - first).clamp(1000.0, 3_600_000.0);
    let top = ["peak_in_use", "peak_limit", "peak_service_used"].iter().filter_map(|k| history[*k].as_f64()).fold(1.0_f64, f64::max);
    let x = |at: f64| pad + (at - (now - span_ms)).max(0.0) / span_ms * (width - 2.0 * pad);
    let y = |n: f64| height - pad - n / top * (height - 2.0 * pad);
    let line = |field: &str| -> Vec<String> {
        samples.iter().filter_map(|s| Some(format!("{:.1},{:.1}", x(s["at_ms"].as_f64()?), y(s[field].as_f64()?)))).collect()
    };
    let series = [
        ("in-use", "in_use", "#2a7", "slots in use"),
        ("limit", "limit", "#c33", "limit in force"),
        ("service", "service_used", "#36c", "service's own count"),
    ];
    html! {
        svg.chart #slots-chart width=(width) height=(height) viewBox={ "0 0 " (width) " " (height) } role="img"
            aria-label="slots in use, the limit in force and the service's own count over the last hour" {
            (chart_frame(width, pad, y(0.0), y(top), &format!("{top:.0}")))
            @for (i, (class, field, colour, label)) in series.iter().enumerate() {
                @let points = line(field);
                @if !points.is_empty() {
                    polyline class=(class) points=(points.join(" ")) fill="none" stroke=(colour) stroke-width="2" {}
                }
                text x=(width - pad - 130.0 * (2.0 - i as f64)) y=(pad / 2.0) font-size="11" fill=(colour) text-anchor="end" { (label) }
            }
            text x=(pad) y=(height - 8.0) font-size="11" { (ago(span_ms)) }
            text x=(width - pad) y=(height - 8.0) font-size="11" text-anchor="end" { "now" }
        }
        p { "Peak in the last hour: " (field("slot_history.peak_in_use", &history["peak_in_use"])) " slots in use, limit "
            (field("slot_history.peak_limit", &history["peak_limit"])) ", service's own count "
            (field("slot_history.peak_service_used", &history["peak_service_used"])) "." }
    }
}

/// A chart's left edge: "1 h ago", "12 min ago", "40 s ago".
fn ago(span_ms: f64) -> String {
    match span_ms / 1000.0 {
        s if s >= 3599.0 => "1 h ago".to_owned(),
        s if s >= 120.0 => format!("{:.0} min ago", s / 60.0),
        s => format!("{s:.0} s ago"),
    }
}

/// A number (or text) the page shows, tagged with where it comes from in `status --json`.
fn field(path: &str, value: &Value) -> Markup {
    html! { span data-field=(path) { (show(value)) } }
}

fn at<'a>(value: &'a Value, path: &str) -> &'a Value {
    path.split('.').fold(value, |v, key| &v[key])
}

fn token_form(action: &str, label: &str, extra: Markup) -> Markup {
    html! {
        form method="post" action=(action) {
            (extra)
            input type="password" name="token" placeholder="ops.action_token" required;
            " "
            button type="submit" { (label) }
        }
    }
}

async fn home(State(site): Shared) -> Result<Markup, Failure> {
    let status = views::status(&site.config).await?.into_json();
    let runs = views::runs_list(&site.config, 20).await?.into_json();
    let workers = views::workers(&site.config).await?.into_json();
    let f = |path: &str| field(path, at(&status, path));
    let run = &status["run"];
    // The latest run's progress against its deadline, drawn under the table; a skipped tick
    // never ran, so it has no progress to draw.
    let latest = match run["run_id"].as_str().filter(|_| run["state"] != "skipped") {
        Some(id) => Some(views::runs_show(&site.config, id, views::Listed::First).await?.into_json()),
        None => None,
    };
    let body = html! {
        @if !status["paused"].is_null() {
            p.paused { "PAUSED: " (f("paused.reason")) " — workers take no new jobs." }
        }
        @for w in status["warnings"].as_array().into_iter().flatten() {
            p.paused { "WARNING: " (w.as_str().unwrap_or_default()) }
        }
        h2 { "Status" }
        table {
            tr { th { "limit in force" } td { (f("limit.in_force")) " (source: " (f("limit.source")) ", adaptive ×" (f("limit.adaptive_multiplier")) ")" } }
            tr { th { "query service" } td {
                @if status["service"].is_null() { "no numbers heard yet" } @else {
                    (f("service.quota_used")) " of " (f("service.rejection_threshold")) " running for the referrer (throttles above "
                    (f("service.throttle_threshold")) "; other callers " (f("service.others")) ")"
                }
            } }
            tr { th { "slots" } td {
                (f("slots.in_use")) " in use, " (f("slots.waiters")) " waiting"
                // Nobody waiting has no oldest wait: say nothing rather than "oldest - ms".
                @if !status["slots"]["oldest_wait_ms"].is_null() { " (oldest " (f("slots.oldest_wait_ms")) " ms)" }
            } }
            tr { th { "queue" } td { (f("queue.ready")) " ready, " (f("queue.scheduled")) " scheduled, " (f("queue.in_flight")) " in flight, " (f("queue.dead")) " dead" } }
            tr { th { "workers" } td { (f("workers.alive")) " alive, " (f("workers.jobs_in_flight")) " jobs in flight" } }
            tr { th { "latest run" } td {
                @if run.is_null() { "none recorded" } @else {
                    a href={ "/runs/" (run["run_id"].as_str().unwrap_or_default()) } { (f("run.run_id")) } " "
                    (f("run.state")) ": " (f("run.accounted")) " of " (f("run.orgs_total")) " orgs accounted"
                    @if run["eta_s"].is_number() && status["workers"]["alive"] == 0 {
                        " (no worker alive to finish it: start projector-worker) "
                    } @else if let Some(eta) = run["eta_s"].as_f64() {
                        " (about " span data-field="run.eta_s" { (format!("{eta:.0}")) } " s left) "
                    }
                    @if let Some(d) = run["deadline_in_s"].as_f64().filter(|d| *d > 0.0) {
                        " deadline in " (format!("{d:.0}")) " s"
                        @if let Some(late) = run["predicted_overrun_s"].as_f64().filter(|l| *l > 0.0) { ", predicted " (format!("{late:.0}")) " s late" }
                        " "
                    }
                    progress max=(run["orgs_total"].as_u64().unwrap_or(0)) value=(run["accounted"].as_u64().unwrap_or(0)) {}
                }
            } }
            tr { th { "rollout flag" } td {
                @if status["rollout"]["enabled"].is_null() && status["rollout"]["percentage"].is_null() {
                    "never set: every org takes the limited path (slot first)"
                } @else {
                    // Only what is set: an unset field would read "-".
                    @if !status["rollout"]["enabled"].is_null() { "enabled " (f("rollout.enabled")) " " }
                    @if !status["rollout"]["percentage"].is_null() {
                        (f("rollout.percentage")) " % of orgs on the limited path (slot first), the others on the legacy path"
                    }
                }
            } }
        }
        @if site.allow_actions {
            h3 { "Actions" }
            @if status["paused"].is_null() {
                (token_form("/actions/pause", "Pause the fleet", html! { input type="text" name="reason" placeholder="reason" required; " " }))
            } @else {
                (token_form("/actions/resume", "Resume", html! {}))
            }
        }
        @if let Some(detail) = &latest {
            h3 { "Latest run against its deadline" }
            (progress_chart(detail))
        }
        h3 { "Slots over the last hour" }
        (slots_chart(&status["slot_history"]))
        h2 { "Runs" }
        (runs_table(&runs))
        h2 { "Workers" }
        (workers_table(&workers))
    };
    Ok(layout("status", true, body))
}

/// An RFC 3339 time as `YYYY-MM-DD HH:MM:SS`, for tables.
fn short_time(value: &Value) -> String {
    value.as_str().map_or_else(|| "-".to_owned(), |t| t.get(..19).unwrap_or(t).replace('T', " "))
}

fn runs_table(runs: &Value) -> Markup {
    html! {
        table #runs {
            tr { th { "run" } th { "tick" } th { "state" } th { "orgs" } th { "accounted" }
                 @for o in Outcome::ALL { th { (o.as_str().replace('_', " ")) } } th { "seconds" } }
            @for r in runs["runs"].as_array().into_iter().flatten() {
                tr {
                    td { a href={ "/runs/" (r["run_id"].as_str().unwrap_or_default()) } { (r["run_id"].as_str().unwrap_or_default()) } }
                    td { (short_time(&r["tick"])) }
                    td { (r["state"].as_str().unwrap_or("-")) }
                    td.n { (show(&r["orgs_total"])) }
                    td.n { (show(&r["accounted"])) }
                    @for o in Outcome::ALL { td.n { (show(&r["outcomes"][o.as_str()])) } }
                    td.n { (format!("{:.1}", r["duration_ms"].as_f64().unwrap_or(0.0) / 1000.0)) }
                }
            }
        }
    }
}

fn workers_table(workers: &Value) -> Markup {
    html! {
        table #workers {
            tr { th { "worker" } th { "host" } th { "pid" } th { "version" } th { "started" } th { "jobs" } th { "slots" } th { "beat" } th { "last error" } }
            @for w in workers["workers"].as_array().into_iter().flatten() {
                tr {
                    td { (w["name"].as_str().unwrap_or_default()) }
                    td { (w["host"].as_str().unwrap_or_default()) }
                    td.n { (show(&w["pid"])) }
                    td { (w["version"].as_str().unwrap_or_default()) }
                    td { (short_time(&w["started"])) }
                    td.n { (show(&w["jobs_in_flight"])) }
                    td.n { (show(&w["slots_held"])) }
                    td.n { (w["beat_ms_ago"]) " ms ago" }
                    td { (w["last_error"].as_str().unwrap_or_default()) }
                }
            }
        }
    }
}

async fn run_page(State(site): Shared, Path(run): Path<String>) -> Result<Markup, Failure> {
    let detail = views::runs_show(&site.config, &run, views::Listed::First).await?.into_json();
    let running = detail["state"].as_str().is_some_and(|s| s == "running" || s == "fanning out");
    let body = html! {
        h2 { "Run " span data-field="run_id" { (run) } }
        p { (field("state", &detail["state"])) ": " (field("accounted", &detail["accounted"])) " of " (field("orgs_total", &detail["orgs_total"]))
            " orgs accounted; tick " (short_time(&detail["tick"])) "; retried " (field("retried", &detail["retried"])) }
        (progress_chart(&detail))
        table #outcomes {
            tr { th { "outcome" } th { "orgs" } }
            @for o in Outcome::ALL {
                tr { td { (o.as_str()) } td.n data-outcome=(o.as_str()) { (detail["outcomes"][o.as_str()]) } }
            }
        }
        h3 { "Orgs that did not complete" }
        table #not-completed {
            tr { th { "org" } th { "outcome" } th { "reason" } th { "advice" } th { "slot wait (ms)" } th { "retry after (ms)" } th { "attempts" } th { "worker" } }
            @for o in detail["not_completed"].as_array().into_iter().flatten() {
                tr data-org=(o["org_id"]) {
                    td { a href={ "/runs/" (run) "/orgs/" (o["org_id"]) } { (o["org_id"]) } }
                    td.outcome { (o["outcome"].as_str().unwrap_or("-")) }
                    td.reason { (o["reason"]["kind"].as_str().unwrap_or("-")) ": " (o["reason"]["message"].as_str().unwrap_or("")) }
                    td.advice { (o["reason"]["advice"].as_str().unwrap_or("")) }
                    td.n { (show(&o["slot_wait_ms"])) }
                    td.n { (show(&o["retry_after_ms"])) }
                    td.n { (show(&o["attempts"])) }
                    td { (o["worker"].as_str().unwrap_or("")) }
                }
            }
        }
        @let listed = detail["not_completed"].as_array().map_or(0, Vec::len) as u64;
        @let total = detail["not_completed_total"].as_u64().unwrap_or(listed);
        @if total > listed { p { "… and " (total - listed) " more (the first " (listed) " are listed)" } }
        h3 { "Progress" }
        table #progress {
            tr { th { "after the tick (s)" } th { "accounted" } }
            @for p in detail["progress"].as_array().into_iter().flatten() {
                tr { td.n { (format!("{:.1}", p["after_ms"].as_f64().unwrap_or(0.0) / 1000.0)) } td.n { (show(&p["accounted"])) } }
            }
        }
        @if site.allow_actions {
            h3 { "Actions" }
            (token_form(&format!("/actions/runs/{run}/retry"), "Retry orgs that did not complete", html! {
                input type="text" name="outcomes" placeholder="outcomes (default: all but cancelled)"; " "
            }))
            @if running { (token_form(&format!("/actions/runs/{run}/cancel"), "Cancel this run", html! {})) }
        }
        p { a href={ "/api/runs/" (run) } { "as JSON" } }
    };
    Ok(layout(&format!("run {run}"), running, body))
}

async fn org_page(State(site): Shared, Path((run, org)): Path<(String, u64)>) -> Result<Markup, Failure> {
    let text = views::explain(&site.config, &run, org).await?.to_string();
    let body = html! {
        h2 { "Org " (org) " in run " a href={ "/runs/" (run) } { (run) } }
        pre #explain { (text) }
        p { a href={ "/api/runs/" (run) "/orgs/" (org) } { "as JSON" } }
    };
    Ok(layout(&format!("org {org}"), false, body))
}

/// What an action request may carry: a form body, or nothing at all. A script that sends only
/// `Authorization: Bearer <token>` (curl -X POST -H …) has no body and no content type; a
/// `Form` extractor would refuse it with 415, so the body is read as a form whatever it says.
#[derive(Default)]
struct ActionForm {
    token: String,
    reason: String,
    outcomes: String,
}

impl ActionForm {
    fn parse(body: &[u8]) -> ActionForm {
        let mut form = ActionForm::default();
        for (key, value) in url::form_urlencoded::parse(body) {
            match key.as_ref() {
                "token" => form.token = value.into_owned(),
                "reason" => form.reason = value.into_owned(),
                "outcomes" => form.outcomes = value.into_owned(),
                _ => {}
            }
        }
        form
    }
}

/// Whether the request carries the token, in the form or as `Authorization: Bearer <token>`.
/// Compared in constant time, so the token cannot be guessed a byte at a time.
fn authorized(site: &Site, headers: &HeaderMap, form: &ActionForm) -> bool {
    let Some(expected) = site.config.ops.action_token.as_deref() else { return false };
    let bearer = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    let given = bearer.unwrap_or(&form.token);
    given.len() == expected.len() && given.bytes().zip(expected.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}

/// Runs an action when authorized, logging it either way; then back to `back`.
async fn act<F: Future<Output = anyhow::Result<String>>>(
    site: &Site,
    headers: &HeaderMap,
    form: &ActionForm,
    name: &str,
    back: String,
    action: F,
) -> Response {
    if !authorized(site, headers, form) {
        tracing::warn!(action = name, "status page action refused: wrong or missing ops.action_token");
        return (StatusCode::FORBIDDEN, layout("refused", false, html! { p.error { "Refused: wrong or missing token." } })).into_response();
    }
    match action.await {
        Ok(done) => {
            tracing::warn!(action = name, result = %done, "status page action done");
            Redirect::to(&back).into_response()
        }
        Err(e) => Failure(e).into_response(),
    }
}

async fn pause(State(site): Shared, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    let form = ActionForm::parse(&body);
    let reason = if form.reason.is_empty() { "paused from the status page".to_owned() } else { form.reason.clone() };
    act(&site, &headers, &form, "pause", "/".into(), async {
        let p = actions::pause(&Records::open(&site.config).await?, &reason).await?;
        Ok(format!("paused: {}", p.reason))
    })
    .await
}

async fn resume(State(site): Shared, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    let form = ActionForm::parse(&body);
    act(&site, &headers, &form, "resume", "/".into(), async {
        let was = actions::resume(&Records::open(&site.config).await?).await?;
        Ok(format!("resumed (was paused: {was})"))
    })
    .await
}

async fn retry(State(site): Shared, Path(run): Path<String>, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    let form = ActionForm::parse(&body);
    act(&site, &headers, &form, "retry", format!("/runs/{run}"), async {
        let outcomes =
            if form.outcomes.trim().is_empty() { actions::RETRY_BY_DEFAULT.to_vec() } else { actions::parse_outcomes(&form.outcomes)? };
        let done = actions::retry(&Records::open(&site.config).await?, &site.config, &RunId(run.clone()), &outcomes).await?;
        Ok(format!("run {run}: {} orgs reopened, {} jobs enqueued", done.reopened.len(), done.enqueued))
    })
    .await
}

async fn cancel(State(site): Shared, Path(run): Path<String>, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    let form = ActionForm::parse(&body);
    act(&site, &headers, &form, "cancel", format!("/runs/{run}"), async {
        let done = actions::cancel(&Records::open(&site.config).await?, &site.config, &RunId(run.clone())).await?;
        Ok(format!("run {run}: {} orgs cancelled, {} jobs removed", done.orgs_cancelled, done.jobs_removed))
    })
    .await
}
