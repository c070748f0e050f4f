//! What an operator does to a run, end to end against real processes: retry the orgs that did
//! not complete, cancel a run, ask why one org ended as it did, and watch it all on the status
//! page in a real (headless) browser.

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::Duration;

use projector_tests::fleet::{base_env, json_of, run, text, worker};
use projector_tests::{FakeSnuba, Proc, RedisServer, command, holds_within, http_get, wait_until, workspace_bin};
use serde_json::Value;

const FAKE: &str = env!("CARGO_BIN_EXE_projector-fake-snuba");

fn ctl(env: &[(String, String)], args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.push("--json");
    json_of(&run("projectorctl", env, &all))
}

/// Starts a run without waiting for it; returns its id.
fn start_run(env: &[(String, String)], orgs: u32) -> String {
    let out = run("projector-scheduler", env, &["run-once", "--orgs", &orgs.to_string(), "--batch-delay", "0s"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    text(&out.stdout).split_whitespace().nth(1).map(|r| r.trim_end_matches(':').to_owned()).expect("run id")
}

fn queries_by_org(fake: &FakeSnuba) -> BTreeMap<u64, u64> {
    fake.stats_now()["queries_by_org"]
        .as_object()
        .expect("queries_by_org")
        .iter()
        .map(|(org, n)| (org.parse().expect("org id"), n.as_u64().expect("count")))
        .collect()
}

/// Retry: the fake fails the first query of three orgs; the run ends with them failed, each with
/// its reason; `runs retry` runs exactly those again and they complete. No org that had
/// completed is queried twice, and explain tells each attempt's story.
#[test]
fn a_retry_completes_the_failed_orgs_and_queries_no_completed_org_twice() {
    let redis = RedisServer::start();
    let fake = FakeSnuba::start(FAKE, &["--latency", "20ms", "--fail-first-for", "3,7,11"]);
    // One try per org: the failures stay failed, for the operator to retry.
    let mut env = base_env(&redis, &fake.url());
    env.push(("PROJECTOR_RUNS_MAX_ATTEMPTS".into(), "1".into()));
    let _w = worker(&env, &["--concurrency", "8"]);
    let out = run(
        "projector-scheduler",
        &env,
        &["run-once", "--wait", "--wait-timeout", "60s", "--orgs", "20", "--batch-delay", "0s", "--fail-on", "none"],
    );
    assert!(out.status.success(), "{}\n{}", text(&out.stdout), text(&out.stderr));
    let run_id = text(&out.stdout).split_whitespace().nth(1).map(|r| r.trim_end_matches(':').to_owned()).expect("run id");

    let shown = ctl(&env, &["runs", "show", &run_id]);
    assert_eq!((shown["outcomes"]["completed"].as_u64(), shown["outcomes"]["failed"].as_u64()), (Some(17), Some(3)), "{shown}");
    let mut conn = redis.connection();
    let failed_in_redis: u64 =
        redis::cmd("HGET").arg(format!("projector:run:{run_id}")).arg("failed").query(&mut conn).expect("failed count");
    assert_eq!(failed_in_redis, 3);
    assert_eq!(shown["not_completed_total"], 3, "{shown}");
    assert_eq!(
        ctl(&env, &["runs", "show", &run_id, "--all"])["not_completed"],
        shown["not_completed"],
        "under the cap, --all lists the same"
    );
    let not_completed = shown["not_completed"].as_array().expect("not_completed");
    assert_eq!(not_completed.iter().map(|o| o["org_id"].as_u64().expect("org")).collect::<Vec<_>>(), [3, 7, 11], "{shown}");
    for o in not_completed {
        assert_eq!((o["outcome"].as_str(), o["reason"]["kind"].as_str()), (Some("failed"), Some("server_error")), "{o}");
        assert!(o["reason"]["message"].as_str().is_some_and(|m| m.contains("500")), "the message says what happened: {o}");
        assert!(o["worker"].as_str().is_some_and(|w| !w.is_empty()) && o["slot_wait_ms"].is_u64(), "{o}");
    }
    let human = text(&run("projectorctl", &env, &["runs", "show", &run_id]).stdout);
    assert!(human.contains("org 7") && human.contains("server_error") && human.contains("progress"), "{human}");

    // Explain: every step of the failed attempt, in order.
    let why = ctl(&env, &["explain", &run_id, "7"]);
    let steps = why["attempts"][0]["steps"].as_array().expect("steps");
    let step = |name: &str| steps.iter().find(|s| s["step"] == name).cloned().unwrap_or_else(|| panic!("no {name} step: {why}"));
    // The rate admission shows only where a rate policy or a 429 cooldown is in force.
    let names: Vec<&str> = steps.iter().filter_map(|s| s["step"].as_str()).filter(|s| *s != "rate").collect();
    assert_eq!(names, ["routed", "slot", "query"], "in order: {why}");
    assert_eq!(step("routed")["limited"], true, "the flag was never set: limited. {why}");
    assert!(step("slot")["token"].as_u64().is_some_and(|t| t > 0), "{why}");
    assert_eq!(step("query")["status"], "server_error", "{why}");
    let told = text(&run("projectorctl", &env, &["explain", &run_id, "7"]).stdout);
    for line in ["routed: limited path", "slot: granted", "query: server_error", "outcome: failed"] {
        assert!(told.contains(line), "explain says {line:?}: {told}");
    }
    let completed = ctl(&env, &["explain", &run_id, "1"]);
    let steps = completed["attempts"][0]["steps"].as_array().expect("steps");
    let token = |name: &str| steps.iter().find(|s| s["step"] == name).map(|s| s["token"].clone());
    assert_eq!(token("store"), token("slot"), "the write carries the slot's fencing token: {completed}");
    assert!(token("store").is_some(), "{completed}");
    let stranger = run("projectorctl", &env, &["explain", &run_id, "999"]);
    assert!(!stranger.status.success() && text(&stranger.stderr).contains("not in the plan"), "{}", text(&stranger.stderr));

    let bad = run("projectorctl", &env, &["runs", "retry", &run_id, "--outcomes", "completed"]);
    assert!(!bad.status.success() && text(&bad.stderr).contains("skipped_no_slot"), "{}", text(&bad.stderr));
    let retried = ctl(&env, &["runs", "retry", &run_id, "--outcomes", "failed"]);
    assert_eq!(retried["reopened"], serde_json::json!([[3, 1], [7, 1], [11, 1]]), "{retried}");
    assert_eq!(retried["enqueued"], 3, "{retried}");
    wait_until(Duration::from_secs(60), "the retried orgs completed", || {
        ctl(&env, &["runs", "show", &run_id])["outcomes"]["completed"] == 20
    });
    let shown = ctl(&env, &["runs", "show", &run_id]);
    assert_eq!(
        (shown["state"].as_str(), shown["retried"].as_u64(), shown["accounted"].as_u64()),
        (Some("done"), Some(3), Some(20)),
        "{shown}"
    );
    let queries = queries_by_org(&fake);
    for org in 1..=20u64 {
        let expected = if [3, 7, 11].contains(&org) { 2 } else { 1 };
        assert_eq!(queries.get(&org), Some(&expected), "org {org}: {queries:?}");
    }
    let why = ctl(&env, &["explain", &run_id, "7"]);
    let outcomes: Vec<(u64, &str)> = why["attempts"]
        .as_array()
        .expect("attempts")
        .iter()
        .map(|a| (a["attempt"].as_u64().expect("attempt"), a["outcome"].as_str().expect("outcome")))
        .collect();
    assert_eq!(outcomes, [(0, "failed"), (1, "completed")], "the history of attempts is kept: {why}");
    assert_eq!(why["outcome"], "completed");
    // Nothing left to retry: a second retry changes nothing and queries nothing.
    let again = ctl(&env, &["runs", "retry", &run_id]);
    assert_eq!((again["reopened"].as_array().map(Vec::len), again["enqueued"].as_u64()), (Some(0), Some(0)), "{again}");
}

/// Cancel, with one slot and four jobs per worker: at the cancel one org is querying and three
/// wait for the slot. The waiting jobs get the slot later and must not query; the queued ones
/// are removed. Every org ends accounted, most as cancelled.
#[test]
fn a_cancelled_run_sends_no_more_queries_and_every_org_is_accounted() {
    let redis = RedisServer::start();
    let fake = FakeSnuba::start(FAKE, &["--latency", "400ms"]);
    let mut env = base_env(&redis, &fake.url());
    env.push(("PROJECTOR_SLOTS_LIMIT".into(), "1".into()));
    env.push(("PROJECTOR_SLOTS_MAX_WAIT".into(), "60s".into()));
    let w = worker(&env, &["--concurrency", "4"]);
    let run_id = start_run(&env, 60);
    let requests = || fake.stats_now()["requests"].as_u64().unwrap_or(0);
    wait_until(Duration::from_secs(30), "queries started and jobs wait for the slot", || {
        requests() >= 2 && ctl(&env, &["status"])["slots"]["waiters"].as_u64().unwrap_or(0) >= 2
    });
    // Explain says where an org under way is now: the last in line for the one slot waits.
    wait_until(Duration::from_secs(10), "explain shows an org waiting for a slot", || {
        let slots = ctl(&env, &["slots", "inspect", "--all"]);
        let Some(org) =
            slots["waiter_list"].as_array().and_then(|w| w.last()).and_then(|w| w["info"].as_str()?.rsplit('|').next().map(str::to_owned))
        else {
            return false;
        };
        let told = ctl(&env, &["explain", &run_id, &org]);
        told["outcome"].is_null() && told["now"]["waiting_for_slot"].as_str().is_some_and(|w| w.contains("waits for a slot"))
    });
    let cancelled = ctl(&env, &["runs", "cancel", &run_id, "--yes"]);
    let at_cancel = requests();
    // The worker heard of it on the cancel channel: its slot grants ask its own mirror.
    w.wait_for_line(&["run cancelled; its jobs that get a slot send no query", &run_id], Duration::from_secs(10));
    assert!(cancelled["orgs_cancelled"].as_u64().is_some_and(|n| n >= 50), "{cancelled}");
    assert!(cancelled["jobs_removed"].as_u64().is_some_and(|n| n >= 40), "{cancelled}");
    wait_until(Duration::from_secs(30), "the waiting jobs saw the cancel", || {
        w.stderr().matches("run cancelled during the slot wait; no query").count() >= 2 && fake.stats_now()["in_flight"] == 0
    });
    // One job may have passed its check just before the cancel, its query not yet arrived.
    let after = requests();
    assert!(after <= at_cancel + 1, "{after} queries after the cancel, {at_cancel} at it");
    assert!(holds_within(Duration::from_secs(2), || requests() == after), "no query starts after the cancel settled");
    let shown = ctl(&env, &["runs", "show", &run_id]);
    assert_eq!((shown["state"].as_str(), shown["accounted"].as_u64()), (Some("cancelled"), Some(60)), "{shown}");
    let sum: u64 = shown["outcomes"].as_object().expect("outcomes").values().filter_map(Value::as_u64).sum();
    assert_eq!(sum, 60, "every org has exactly one outcome: {shown}");
    assert_eq!(
        shown["outcomes"]["completed"].as_u64(),
        Some(after),
        "an org whose query ran is completed, even if cancelled meanwhile: {shown}"
    );
    let status = ctl(&env, &["status"]);
    assert_eq!((status["queue"]["ready"].as_u64(), status["queue"]["scheduled"].as_u64()), (Some(0), Some(0)), "{status}");
    // Jobs are not taken in org order: explain one the cancel caught.
    let caught = shown["not_completed"]
        .as_array()
        .and_then(|orgs| orgs.iter().find(|o| o["outcome"] == "cancelled"))
        .and_then(|o| o["org_id"].as_u64())
        .expect("a cancelled org");
    let explained = text(&run("projectorctl", &env, &["explain", &run_id, &caught.to_string()]).stdout);
    assert!(explained.contains("cancelled by an operator"), "{explained}");
}

/// Runs headless chromium on `url`: the page's DOM after its scripts ran.
fn browse(url: &str) -> String {
    let out = chromium().arg("--dump-dom").arg(url).output().expect("run chromium (ops/install-test-tools.sh installs it)");
    assert!(out.status.success(), "chromium --dump-dom {url}: {}", text(&out.stderr));
    text(&out.stdout)
}

fn screenshot(url: &str, name: &str) -> std::path::PathBuf {
    let dir = workspace_bin("projectorctl").parent().expect("target dir").join("screenshots");
    std::fs::create_dir_all(&dir).expect("screenshot dir");
    let path = dir.join(name);
    let out =
        chromium().arg(format!("--screenshot={}", path.display())).arg("--window-size=1280,1000").arg(url).output().expect("chromium");
    assert!(out.status.success() && path.exists(), "screenshot of {url}: {}", text(&out.stderr));
    path
}

fn chromium() -> Command {
    let profile = std::env::temp_dir().join(format!("projector-chromium-{}", std::process::id()));
    let mut cmd = command("chromium");
    // No sandbox: CI runs as root, where chromium's sandbox refuses to start.
    cmd.args(["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars"])
        .arg(format!("--user-data-dir={}", profile.display()))
        .stdin(Stdio::null());
    cmd
}

/// The `data-field` values a page shows, by their path in `status --json`.
fn fields(dom: &str) -> BTreeMap<String, String> {
    dom.split("data-field=\"")
        .skip(1)
        .filter_map(|rest| {
            let (path, after) = rest.split_once('"')?;
            let value = after.split_once('>')?.1.split('<').next()?;
            Some((path.to_owned(), value.replace("&amp;", "&")))
        })
        .collect()
}

fn shown_as(value: &Value) -> String {
    match value {
        Value::Null => "-".to_owned(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The numbers of the page against `status --json`, read while nothing moves (the fleet paused
/// and drained, or the run done); `run.eta_s` is left out, it moves with the clock.
fn assert_page_matches_status(env: &[(String, String)], dom: &str) {
    let status = ctl(env, &["status"]);
    let shown = fields(dom);
    assert!(shown.len() >= 15, "the page tags its numbers: {shown:?}");
    for (path, value) in &shown {
        if path == "run.eta_s" {
            continue;
        }
        let expected = path.split('.').fold(&status, |v, k| &v[k]);
        assert_eq!(value, &shown_as(expected), "{path} on the page vs status --json: {status}");
    }
}

/// The status page in a real browser, during a run (paused, so nothing moves) and after it:
/// its numbers are `status --json`'s, run detail lists the failed orgs with their reasons, and
/// without --allow-actions there is no button and no action route.
#[test]
fn the_status_page_shows_what_status_json_says_in_a_real_browser() {
    let redis = RedisServer::start();
    let fake = FakeSnuba::start(FAKE, &["--latency", "200ms", "--fail-first-for", "2,4"]);
    let mut env = base_env(&redis, &fake.url());
    env.push(("PROJECTOR_RUNS_MAX_ATTEMPTS".into(), "1".into()));
    env.push(("PROJECTOR_WORKER_SLOT_SAMPLE_INTERVAL".into(), "200ms".into()));
    let w = worker(&env, &["--concurrency", "4"]);
    let mut serve_cmd = command(workspace_bin("projectorctl"));
    serve_cmd.args(["serve", "--addr", "127.0.0.1:0"]).envs(env.iter().cloned()).stdout(Stdio::null());
    let page = Proc::spawn(serve_cmd);
    let line = page.wait_for_line(&["status page serving"], Duration::from_secs(30));
    let addr = line.split("addr=").nth(1).and_then(|r| r.split_whitespace().next()).expect("addr in the log line").to_owned();
    let base = format!("http://{addr}");

    let run_id = start_run(&env, 40);
    wait_until(Duration::from_secs(30), "the run is under way", || fake.stats_now()["requests"].as_u64().unwrap_or(0) >= 4);
    ctl(&env, &["pause", "--reason", "browser test"]);
    w.wait_for_line(&["in-flight jobs finished"], Duration::from_secs(30));
    wait_until(Duration::from_secs(10), "the worker reports nothing in flight", || {
        ctl(&env, &["status"])["workers"]["jobs_in_flight"] == 0
    });
    let during = browse(&format!("{base}/"));
    assert!(during.contains("PAUSED") && during.contains(&run_id), "{during}");
    assert_page_matches_status(&env, &during);
    let _ = screenshot(&format!("{base}/"), "status-during-run.png");
    assert!(!during.contains("<form"), "no action without --allow-actions: {during}");

    ctl(&env, &["resume"]);
    wait_until(Duration::from_secs(60), "the run is done", || ctl(&env, &["runs", "show", &run_id])["state"] == "done");
    let after = browse(&format!("{base}/"));
    assert_page_matches_status(&env, &after);
    // The chart is drawn by the server: an SVG with the run's progress and its deadline.
    let chart = after.split("id=\"progress-chart\"").nth(1).and_then(|c| c.split("</svg>").next()).expect("the progress chart");
    let points = chart.split("points=\"").nth(1).and_then(|p| p.split('"').next()).expect("a progress line");
    assert_eq!(points.split_whitespace().count(), 11, "the tick and ten progress points: {chart}");
    assert!(chart.contains("class=\"deadline\""), "the deadline is drawn: {chart}");
    // The slots chart draws the samples the worker kept in Redis during the run; its peaks are
    // data-fields, checked against status --json above.
    let slots = after.split("id=\"slots-chart\"").nth(1).and_then(|c| c.split("</svg>").next()).expect("the slots chart");
    for class in ["in-use", "limit", "service"] {
        let points = slots.split(&format!("class=\"{class}\" points=\"")).nth(1).and_then(|p| p.split('"').next());
        assert!(points.is_some_and(|p| p.split_whitespace().count() >= 2), "a {class} line: {slots}");
    }
    let history = ctl(&env, &["status"])["slot_history"].clone();
    let peak = history["peak_in_use"].as_u64().expect("a peak");
    assert!((1..=4).contains(&peak), "the run held 1 to 4 slots at once (--concurrency 4): {history}");
    assert!(history["peak_service_used"].as_u64().is_some_and(|u| u >= 1), "the service's own count was sampled: {history}");
    let shot = screenshot(&format!("{base}/"), "status-after-run.png");
    assert!(std::fs::metadata(&shot).expect("screenshot").len() > 10_000, "a real picture");

    let detail = browse(&format!("{base}/runs/{run_id}"));
    let _ = screenshot(&format!("{base}/runs/{run_id}"), "run-detail.png");
    for org in [2, 4] {
        let row = detail.split(&format!("data-org=\"{org}\"")).nth(1).and_then(|r| r.split("</tr>").next()).unwrap_or_default();
        assert!(row.contains("failed") && row.contains("server_error"), "org {org} is listed with its reason: {detail}");
    }
    assert!(!detail.contains("<form"), "{detail}");
    let explained = browse(&format!("{base}/runs/{run_id}/orgs/2"));
    assert!(explained.contains("query: server_error"), "{explained}");

    // The JSON API is the --json of the CLI.
    let api: Value = serde_json::from_str(&http_get(&format!("{base}/api/runs/{run_id}"))).expect("API JSON");
    let cli = ctl(&env, &["runs", "show", &run_id]);
    assert_eq!((api["outcomes"].clone(), api["not_completed"].clone()), (cli["outcomes"].clone(), cli["not_completed"].clone()));
    assert_eq!(http_post(&format!("{base}/actions/pause"), "token=x"), 404, "no action route without --allow-actions");
}

fn http_post(url: &str, form: &str) -> u16 {
    let (url, form) = (url.to_owned(), form.to_owned());
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime").block_on(async {
            let client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().expect("client");
            client
                .post(url)
                .header("content-type", "application/x-www-form-urlencoded")
                .body(form)
                .send()
                .await
                .expect("POST")
                .status()
                .as_u16()
        })
    })
    .join()
    .expect("http thread")
}

/// With --allow-actions the page offers the actions, refuses a wrong token, and a right one
/// pauses the fleet; without a token configured, --allow-actions does not start.
#[test]
fn page_actions_need_the_token() {
    let redis = RedisServer::start();
    let env = base_env(&redis, "http://127.0.0.1:1");
    let refused = run("projectorctl", &env, &["serve", "--addr", "127.0.0.1:0", "--allow-actions"]);
    assert!(!refused.status.success() && text(&refused.stderr).contains("ops.action_token"), "{}", text(&refused.stderr));

    let mut env = env;
    env.push(("PROJECTOR_OPS_ACTION_TOKEN".into(), "s3cret-token".into()));
    let mut serve_cmd = command(workspace_bin("projectorctl"));
    serve_cmd.args(["serve", "--addr", "127.0.0.1:0", "--allow-actions"]).envs(env.iter().cloned()).stdout(Stdio::null());
    let page = Proc::spawn(serve_cmd);
    let line = page.wait_for_line(&["status page serving"], Duration::from_secs(30));
    let addr = line.split("addr=").nth(1).and_then(|r| r.split_whitespace().next()).expect("addr").to_owned();
    let home = http_get(&format!("http://{addr}/"));
    assert!(home.contains("action=\"/actions/pause\""), "{home}");
    assert_eq!(http_post(&format!("http://{addr}/actions/pause"), "token=wrong&reason=x"), 403);
    page.wait_for_line(&["action refused"], Duration::from_secs(10));
    assert!(ctl(&env, &["status"])["paused"].is_null(), "a refused action changes nothing");
    assert_eq!(http_post(&format!("http://{addr}/actions/pause"), "token=s3cret-token&reason=from+the+page"), 303);
    assert_eq!(ctl(&env, &["status"])["paused"]["reason"], "from the page");
    // As a script sends it: the token in the header, no body and no content type.
    let bearer = |token: &str| {
        let (url, token) = (format!("http://{addr}/actions/resume"), token.to_owned());
        std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime").block_on(async {
                let client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().expect("client");
                client.post(url).bearer_auth(token).send().await.expect("POST").status().as_u16()
            })
        })
        .join()
        .expect("http thread")
    };
    assert_eq!(bearer("wrong"), 403);
    assert_eq!(bearer("s3cret-token"), 303, "a bodiless POST with the bearer token is accepted");
    assert!(ctl(&env, &["status"])["paused"].is_null(), "resumed by the bearer request");
    assert_eq!(http_post(&format!("http://{addr}/actions/pause"), "token=s3cret-token&reason=from+the+page"), 303);
    page.wait_for_line(&["action done", "pause"], Duration::from_secs(10));
    let shown = run("projector-worker", &env, &["config"]);
    assert!(text(&shown.stdout).contains("action_token = \"***\""), "{}", text(&shown.stdout));
    assert!(!text(&shown.stdout).contains("s3cret-token"), "the token is a secret");
}

/// `runs.completed_detail = 0s`: as soon as a run finishes, a worker compacts its completed orgs.
/// `explain` still says "completed" and when, `runs show` counts every org, a failed org keeps
/// its whole story, and `runs retry` of it finishes the run again.
#[test]
fn a_compacted_run_still_answers_for_every_org() {
    let redis = RedisServer::start();
    let fake = FakeSnuba::start(FAKE, &["--latency", "5ms", "--fail-first-for", "4"]);
    let mut env = base_env(&redis, &fake.url());
    env.push(("PROJECTOR_RUNS_MAX_ATTEMPTS".into(), "1".into()));
    env.push(("PROJECTOR_RUNS_COMPLETED_DETAIL".into(), "0s".into()));
    let w = worker(&env, &["--concurrency", "4"]);
    let out = run(
        "projector-scheduler",
        &env,
        &["run-once", "--wait", "--wait-timeout", "60s", "--orgs", "30", "--batch-delay", "0s", "--fail-on", "none"],
    );
    assert!(out.status.success(), "{}\n{}", text(&out.stdout), text(&out.stderr));
    let run_id = text(&out.stdout).split_whitespace().nth(1).map(|r| r.trim_end_matches(':').to_owned()).expect("run id");
    w.wait_for_line(&["compacted the completed orgs of a finished run", &run_id, "orgs=29"], Duration::from_secs(30));

    let completed = ctl(&env, &["explain", &run_id, "1"]);
    assert_eq!((completed["outcome"].as_str(), completed["compacted"].as_bool()), (Some("completed"), Some(true)), "{completed}");
    assert!(completed["recorded_at"].as_str().is_some_and(|t| t.starts_with("20")), "{completed}");
    let told = text(&run("projectorctl", &env, &["explain", &run_id, "1"]).stdout);
    assert!(told.contains(": completed") && told.contains("its projection was written and the outcome recorded"), "{told}");
    let failed = ctl(&env, &["explain", &run_id, "4"]);
    assert_eq!((failed["outcome"].as_str(), failed["compacted"].as_bool()), (Some("failed"), Some(false)), "{failed}");
    assert!(!failed["attempts"].as_array().expect("attempts").is_empty(), "a failed org keeps its trail: {failed}");
    let shown = ctl(&env, &["runs", "show", &run_id]);
    assert_eq!((shown["outcomes"]["completed"].as_u64(), shown["outcomes"]["failed"].as_u64()), (Some(29), Some(1)), "{shown}");

    // The compacted orgs left the plan but still count: a resume finds nothing missing.
    let resumed = run("projector-scheduler", &env, &["run-once", "--resume", &run_id]);
    assert!(resumed.status.success(), "{}\n{}", text(&resumed.stdout), text(&resumed.stderr));
    assert!(
        !text(&resumed.stderr).contains("cut short") && !text(&resumed.stderr).contains("before the fan-out stopped"),
        "{}",
        text(&resumed.stderr)
    );
    let retried = ctl(&env, &["runs", "retry", &run_id, "--outcomes", "failed"]);
    assert_eq!(retried["reopened"], serde_json::json!([[4, 1]]), "{retried}");
    let mut shown = Value::Null;
    wait_until(Duration::from_secs(60), "the retried org completed and the run is done again", || {
        shown = ctl(&env, &["runs", "show", &run_id]);
        shown["outcomes"]["completed"] == 30 && shown["state"] == "done"
    });
}
