//! The embedded run through the real `projector-scheduler` binary: accounting, the slot bound, output, config errors.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Output};

use projector_shared::OrgId;
use projector_shared::run::RunSummary;
use projector_shared::synthetic::synthetic_projects;

fn scheduler(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_projector-scheduler"));
    cmd.current_dir(dir).args(args);
    // Only the variables a test sets: a developer's own PROJECTOR_* must not leak in.
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("PROJECTOR_")) {
        cmd.env_remove(k);
    }
    cmd.envs(env.iter().copied());
    cmd.output().expect("run projector-scheduler")
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
    assert_eq!(s.completed, 60, "{s:?}");
    assert!(s.max_concurrent_queries >= 1 && s.max_concurrent_queries <= 50, "{s:?}");
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
    assert!(out.status.success(), "exit {:?}: {}", out.status, String::from_utf8_lossy(&out.stderr));
    let s = summary(dir.path());
    assert_eq!(s.accounted(), 60, "{s:?}");
    assert!(s.skipped_no_slot > 0, "some orgs found no slot: {s:?}");
    assert!(s.completed >= 3, "the slots were used: {s:?}");
    assert!(s.max_concurrent_queries <= 3, "bound held: {s:?}");
    assert_eq!(s.skipped_org_ids.len() as u64, s.skipped_no_slot);
    let (orgs, _) = projected_orgs(dir.path());
    assert_eq!(orgs.len() as u64, s.completed, "projections for exactly the completed orgs");
    assert!(s.skipped_org_ids.iter().all(|o| !orgs.contains(&o.0)), "skipped orgs were not queried");
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
