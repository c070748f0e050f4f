//! The embedded run through the real `projector-scheduler` binary: accounting, the slot bound, output, config errors.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use projector_shared::OrgId;
use projector_shared::run::{Outcome, RunSummary};
use projector_shared::synthetic::synthetic_projects;

fn scheduler_command(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Command {
    // Only the variables a test sets: a developer's own PROJECTOR_* must not leak in.
    let mut cmd = projector_tests::command(env!("CARGO_BIN_EXE_projector-scheduler"));
    cmd.current_dir(dir).args(args).envs(env.iter().copied());
    cmd
}

fn scheduler(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    scheduler_command(dir, args, env).output().expect("run projector-scheduler")
}

fn summary(dir: &Path) -> RunSummary {
    let text = std::fs::read_to_string(dir.join("s.json")).expect("summary written");
    serde_json::from_str(&text).expect("summary is JSON")
}

/// Org ids with at least one projection line, and the number of lines.
fn projected_orgs(dir: &Path) -> (BTreeSet<u64>, usize) {
    let text = std::fs::read_to_string(dir.join("p.jsonl")).expect("projections written");
    let mut orgs = BTreeSet::new();
    let mut lines = 0;
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).expect("each line is JSON");
        assert_eq!(v["hourly"].as_array().map(Vec::len), Some(24), "24 projected hours: {line}");
        assert!(v["spike_threshold"].as_u64().is_some());
        orgs.insert(v["org_id"].as_u64().expect("org id"));
        lines += 1;
    }
    (orgs, lines)
}

const RUN: &[&str] =
    &["run-once", "--embedded", "--orgs", "60", "--batch-delay", "100ms", "--summary-json", "s.json", "--output", "p.jsonl"];

#[test]
fn sixty_orgs_are_all_accounted_for_and_projected() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = scheduler(dir.path(), RUN, &[("PROJECTOR_QUERY_SYNTHETIC_LATENCY", "5ms")]);
    assert!(out.status.success(), "exit {:?}: {}", out.status, String::from_utf8_lossy(&out.stderr));
    let s = summary(dir.path());
    assert_eq!(s.orgs_total, 60);
    assert_eq!(s.accounted(), 60);
    assert_eq!(s.count(Outcome::Completed), 60, "{s:?}");
    assert!(s.max_concurrent_queries.is_some_and(|m| (1..=50).contains(&m)), "{s:?}");
    let (orgs, lines) = projected_orgs(dir.path());
    assert_eq!(orgs, (1..=60).collect::<BTreeSet<u64>>());
    let expected_lines: usize = (1..=60).map(|o| synthetic_projects(OrgId(o)).len()).sum();
    assert_eq!(lines, expected_lines, "one line per org and project");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("completed") && stdout.contains("60"), "summary table printed: {stdout}");
}

#[test]
fn a_tight_limit_skips_some_orgs_and_the_counts_still_add_up() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = scheduler(
        dir.path(),
        RUN,
        &[("PROJECTOR_SLOTS_LIMIT", "3"), ("PROJECTOR_SLOTS_MAX_WAIT", "10ms"), ("PROJECTOR_QUERY_SYNTHETIC_LATENCY", "200ms")],
    );
    assert_eq!(out.status.code(), Some(3), "skipped orgs make the run exit 3: {}", String::from_utf8_lossy(&out.stderr));
    let s = summary(dir.path());
    assert_eq!(s.accounted(), 60, "{s:?}");
    assert!(s.count(Outcome::SkippedNoSlot) > 0, "some orgs found no slot: {s:?}");
    assert!(s.count(Outcome::Completed) >= 3, "the slots were used: {s:?}");
    assert!(s.max_concurrent_queries.is_some_and(|m| m <= 3), "bound held: {s:?}");
    assert_eq!(s.skipped_org_ids.len() as u64, s.count(Outcome::SkippedNoSlot));
    let (orgs, _) = projected_orgs(dir.path());
    assert_eq!(orgs.len() as u64, s.count(Outcome::Completed), "projections for exactly the completed orgs");
    assert!(s.skipped_org_ids.iter().all(|o| !orgs.contains(&o.0)), "skipped orgs were not queried");
}

/// The embedded run applies `[rate]` in memory: 60 orgs offered at once against 10 per minute
/// with no delay allowed start exactly 10 queries. The other 50 would wait for the next minute,
/// but the run's deadline (30 s) comes first, so they end skipped_rate_policy, unqueried.
#[test]
fn the_embedded_run_applies_the_rate_policy_in_memory() {
    let dir = tempfile::tempdir().expect("temp dir");
    let env = [("PROJECTOR_RATE_RATES", "10/m"), ("PROJECTOR_RATE_MAX_DELAY", "0s"), ("PROJECTOR_RUNS_DEADLINE", "30s")];
    let out = scheduler(dir.path(), RUN, &env);
    assert_eq!(out.status.code(), Some(3), "skipped orgs make the run exit 3: {}", String::from_utf8_lossy(&out.stderr));
    let s = summary(dir.path());
    assert_eq!((s.count(Outcome::Completed), s.count(Outcome::SkippedRatePolicy)), (10, 50), "{s:?}");
    let (orgs, _) = projected_orgs(dir.path());
    assert_eq!(orgs.len(), 10, "projections for exactly the admitted orgs");
    assert!(s.skipped_org_ids.iter().all(|o| !orgs.contains(&o.0)), "refused orgs were not queried");
}

#[test]
fn bad_configuration_exits_2_naming_key_value_and_source() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("bad.toml"), "[slots]\nlimt = 3\n").expect("write config");
    // (arguments, environment, what the message must name)
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a [&'a str]);
    let cases: [Case; 3] = [
        (&["run-once", "--embedded"], &[("PROJECTOR_SLOTS_LIMIT", "0")], &["slots.limit", "\"0\"", "PROJECTOR_SLOTS_LIMIT", "from 1 to"]),
        (
            &["run-once", "--embedded"],
            &[("PROJECTOR_BATCH_DELAY", "soon")],
            &["batch.delay", "\"soon\"", "PROJECTOR_BATCH_DELAY", "duration"],
        ),
        (&["run-once", "--embedded", "--config", "bad.toml"], &[], &["slots.limt", "\"3\"", "file bad.toml", "unknown key"]),
    ];
    for (args, env, needles) in cases {
        let out = scheduler(dir.path(), args, env);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?} {env:?}: {stderr}");
        for needle in needles {
            assert!(stderr.contains(needle), "{needle:?} missing from: {stderr}");
        }
    }
}

#[test]
fn flags_override_the_environment() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = scheduler(
        dir.path(),
        &["run-once", "--embedded", "--orgs", "5", "--batch-delay", "0s", "--summary-json", "s.json"],
        &[("PROJECTOR_ORGS_COUNT", "7"), ("PROJECTOR_QUERY_SYNTHETIC_LATENCY", "1ms")],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(summary(dir.path()).orgs_total, 5);
}

#[test]
fn json_logs_are_one_object_per_line() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = scheduler(
        dir.path(),
        &["run-once", "--embedded", "--orgs", "3", "--batch-delay", "0s", "--log-format", "json"],
        &[("PROJECTOR_QUERY_SYNTHETIC_LATENCY", "1ms")],
    );
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty());
    for line in lines {
        let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(v.get("level").is_some(), "{line}");
    }
}

#[test]
fn fail_on_judges_skips_leniently_when_asked() {
    let dir = tempfile::tempdir().expect("temp dir");
    let args = [RUN, &["--fail-on", "failed,rate_limited"]].concat();
    let env = [("PROJECTOR_SLOTS_LIMIT", "3"), ("PROJECTOR_SLOTS_MAX_WAIT", "10ms"), ("PROJECTOR_QUERY_SYNTHETIC_LATENCY", "200ms")];
    let out = scheduler(dir.path(), &args, &env);
    assert_eq!(out.status.code(), Some(0), "skips tolerated on purpose: {}", String::from_utf8_lossy(&out.stderr));
    assert!(summary(dir.path()).count(Outcome::SkippedNoSlot) > 0, "the run did skip orgs");
    let bad = scheduler(dir.path(), &[RUN, &["--fail-on", "completed"]].concat(), &env);
    assert_eq!(bad.status.code(), Some(2), "completed is not a failure outcome");
}

#[test]
fn an_org_file_with_no_usable_line_is_an_error_and_bad_lines_reach_the_summary() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("bad.jsonl"), "{not json\n[1]\n").expect("write");
    let file_env = [("PROJECTOR_ORGS_SOURCE", "file"), ("PROJECTOR_ORGS_PATH", "bad.jsonl")];
    let out = scheduler(dir.path(), &["run-once", "--embedded"], &file_env);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("no organizations to run") && stderr.contains("2 bad lines") && stderr.contains("line 1"), "{stderr}");
    assert_eq!(stderr.matches("no organizations to run").count(), 1, "the fatal error is printed once: {stderr}");

    // A run of no orgs is bad configuration, and the range the error gives says so.
    let zero = scheduler(dir.path(), &["run-once", "--embedded", "--orgs", "0"], &[]);
    assert_eq!(zero.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&zero.stderr).contains("must be an integer from 1 to"), "{}", String::from_utf8_lossy(&zero.stderr));
    let missing =
        scheduler(dir.path(), &["run-once", "--embedded"], &[("PROJECTOR_ORGS_SOURCE", "file"), ("PROJECTOR_ORGS_PATH", "none.jsonl")]);
    let said = String::from_utf8_lossy(&missing.stderr);
    assert_eq!(said.matches("No such file or directory").count(), 1, "the cause is said once: {said}");

    std::fs::write(dir.path().join("some.jsonl"), "{\"org_id\": 1}\nnope\n{\"org_id\": 2}\n").expect("write");
    let some_env = [("PROJECTOR_ORGS_SOURCE", "file"), ("PROJECTOR_ORGS_PATH", "some.jsonl"), ("PROJECTOR_QUERY_SYNTHETIC_LATENCY", "1ms")];
    let out = scheduler(dir.path(), &["run-once", "--embedded", "--batch-delay", "0s", "--summary-json", "s.json"], &some_env);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.path().join("s.json")).expect("read")).expect("json");
    assert_eq!(json["bad_lines"]["count"], 1, "{json}");
    assert_eq!(json["bad_lines"]["first"][0]["line"], 2, "{json}");
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("1 line(s) of the organizations file were skipped") && table.contains("line 2:"), "{table}");
}

/// A misspelt key (`projects`, `actve`) or a value of the wrong type would change what is queried
/// without a word: the file is refused, naming the line, the key and the nearest known key, and
/// nothing runs. `orgs.allow_unknown_keys = true` ignores other keys; a wrong type stays refused.
#[test]
fn an_org_file_with_an_unknown_key_or_a_wrong_type_is_refused_naming_line_key_and_nearest() {
    let dir = tempfile::tempdir().expect("temp dir");
    let text = "{\"org_id\": 1, \"project_ids\": [10]}\n{\"org_id\": 2, \"projects\": [20]}\n{\"org_id\": 3, \"actve\": false}\n";
    std::fs::write(dir.path().join("orgs.jsonl"), text).expect("write");
    let env = [("PROJECTOR_ORGS_SOURCE", "file"), ("PROJECTOR_ORGS_PATH", "orgs.jsonl"), ("PROJECTOR_QUERY_SYNTHETIC_LATENCY", "1ms")];
    let out = scheduler(dir.path(), &["run-once", "--embedded", "--batch-delay", "0s", "--output", "p.jsonl"], &env);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("organizations file orgs.jsonl is refused, nothing was enqueued"), "{stderr}");
    assert!(stderr.contains("line 2: unknown key \"projects\"; did you mean \"project_ids\"?"), "{stderr}");
    assert!(stderr.contains("line 3: unknown key \"actve\"; did you mean \"active\"?"), "{stderr}");
    assert!(
        !dir.path().join("p.jsonl").exists() || std::fs::read_to_string(dir.path().join("p.jsonl")).unwrap_or_default().is_empty(),
        "nothing ran"
    );
    let lenient = [&env[..], &[("PROJECTOR_ORGS_ALLOW_UNKNOWN_KEYS", "true")]].concat();
    let out = scheduler(dir.path(), &["run-once", "--embedded", "--batch-delay", "0s"], &lenient);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("3 orgs"), "{}", String::from_utf8_lossy(&out.stdout));
    std::fs::write(dir.path().join("orgs.jsonl"), "{\"org_id\": \"one\"}\n").expect("write");
    let out = scheduler(dir.path(), &["run-once", "--embedded"], &lenient);
    assert!(String::from_utf8_lossy(&out.stderr).contains("line 1: invalid type"), "{}", String::from_utf8_lossy(&out.stderr));
    let path_only = scheduler(dir.path(), &["run-once", "--embedded"], &[("PROJECTOR_ORGS_PATH", "orgs.jsonl")]);
    assert_eq!(path_only.status.code(), Some(2), "orgs.path without the file source is bad configuration");
}

#[test]
fn ctrl_c_writes_the_partial_summary_and_says_how_to_finish() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut cmd = scheduler_command(
        dir.path(),
        &["run-once", "--embedded", "--orgs", "100", "--batch-size", "10", "--batch-delay", "1s", "--summary-json", "s.json"],
        &[("PROJECTOR_QUERY_SYNTHETIC_LATENCY", "1ms"), ("RUST_LOG", "debug")],
    );
    cmd.stdout(std::process::Stdio::piped());
    let run = projector_tests::Proc::spawn(cmd);
    run.wait_for_line(&["batch released", "batch=1"], Duration::from_secs(30));
    run.signal("INT");
    let out = run.wait_with_output(Duration::from_secs(30));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("a new run of all 100 orgs"), "{stderr}");
    let s = summary(dir.path());
    assert!(s.interrupted, "{s:?}");
    assert!(s.accounted() >= 10 && s.accounted() < 100, "a partial run: {s:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("accounted"), "the table is printed too");
}

#[test]
fn with_json_logs_every_stderr_line_is_json_config_errors_included() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = scheduler(dir.path(), &["run-once", "--embedded", "--log-format", "json"], &[("PROJECTOR_SLOT_LIMIT", "3")]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line for the whole error: {stderr}");
    let v: serde_json::Value = serde_json::from_str(lines[0]).unwrap_or_else(|e| panic!("{e}: {stderr}"));
    assert!(v["error"].as_str().is_some_and(|e| e.contains("did you mean PROJECTOR_SLOTS_LIMIT?")), "{v}");
}

#[test]
fn each_subcommand_lists_only_its_own_flags() {
    let dir = tempfile::tempdir().expect("temp dir");
    let help = |args: &[&str]| String::from_utf8_lossy(&scheduler(dir.path(), args, &[]).stdout).into_owned();
    let serve = help(&["serve", "--help"]);
    assert!(serve.contains("--batch-size") && serve.contains("--redis-url"), "{serve}");
    assert!(!serve.contains("--concurrency") && !serve.contains("--slots-limit"), "serve runs no job: {serve}");
    let run_once = help(&["run-once", "--help"]);
    assert!(run_once.contains("--fail-on") && run_once.contains("--slots-limit") && run_once.contains("Exit codes"), "{run_once}");
}

/// On a terminal (a pty from `script`), the embedded run draws a bar with an ETA, and its last
/// frame keeps the final count.
#[test]
fn on_a_terminal_the_bar_shows_an_eta_and_its_last_frame_the_final_count() {
    let command = format!(
        "{} run-once --embedded --orgs 500 --batch-delay 0s --set query.synthetic_latency=20ms",
        env!("CARGO_BIN_EXE_projector-scheduler")
    );
    let out = projector_tests::command("script").args(["-qec", &command, "/dev/null"]).output().expect("script (util-linux) runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let screen = String::from_utf8_lossy(&out.stdout).replace('\r', "\n");
    let frames: Vec<&str> = screen.lines().filter(|l| l.contains(" orgs  eta ")).collect();
    assert!(!frames.is_empty(), "no progress bar on the terminal:\n{screen}");
    let last = frames.last().expect("a frame");
    assert!(last.contains("500/500 orgs") && last.contains("completed 500") && last.contains("done"), "last frame: {last}");
}
