//! The alert rules and the dashboard only name metrics Projector emits, and cover the three
//! alerts and five dashboard panels on-call relies on (slot timeouts, job errors, concurrency).

fn ops_file(name: &str) -> String {
    std::fs::read_to_string(format!("{}/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// Metric names a file uses, checked against shared/core/src/metrics.rs. Histogram series
/// (`_bucket`, `_count`, `_sum`) count as their histogram.
fn assert_known_metrics(file: &str, text: &str) -> usize {
    let metrics = ops_file("../shared/core/src/metrics.rs");
    let defined: Vec<&str> = metrics.lines().filter_map(|l| l.split('"').nth(1)).collect();
    let mut used = 0;
    for line in text.lines().filter(|l| !l.trim_start().starts_with('#')) {
        for word in line.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            if word.starts_with("spike_projection_") || word.starts_with("run_spike_projection_") || word.starts_with("projector_") {
                let base = ["_bucket", "_count", "_sum"].iter().find_map(|s| word.strip_suffix(s)).unwrap_or(word);
                assert!(defined.contains(&base), "{file} names {word}, which shared/core/src/metrics.rs does not define");
                used += 1;
            }
        }
    }
    used
}

#[test]
fn dashboard_names_only_metrics_that_exist_and_has_the_on_call_panels() {
    let text = ops_file("dashboard.json");
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("dashboard is JSON");
    assert!(assert_known_metrics("ops/dashboard.json", &text) >= 10);
    let titles: Vec<String> =
        dashboard["panels"].as_array().expect("panels").iter().map(|p| p["title"].as_str().unwrap_or_default().to_lowercase()).collect();
    for panel in [
        "concurrent queries",
        "utilization",
        "skipped",
        "completed",
        "ratelimitexceeded",
        "workers alive",
        "last finished run",
        "per outcome",
        "rate policy",
        "adaptive multiplier",
        "slot fallback",
        "sink write",
        "the query service's own count",
    ] {
        assert!(titles.iter().any(|t| t.contains(panel)), "no panel for {panel}: {titles:?}");
    }
    assert!(!text.contains("vector("), "no hard-coded limit: the referrer's limit is exported (projector_query_referrer_limit)");
    assert_eq!(dashboard["templating"]["list"][0]["type"], "datasource", "a datasource variable");
    for panel in dashboard["panels"].as_array().expect("panels") {
        assert_eq!(panel["datasource"]["uid"], "${datasource}", "every panel reads the chosen datasource: {}", panel["title"]);
    }
}

#[test]
fn alert_rules_name_only_metrics_that_exist() {
    let rules = ops_file("alerts.yml");
    assert!(assert_known_metrics("ops/alerts.yml", &rules) >= 6);
    for required in ["spike_projection_slot_wait_timeout_total", "run_spike_projection_error_total", "spike_projection_concurrent_queries"]
    {
        assert!(rules.contains(required), "the alert on {required} is missing");
    }
}

fn promtool(args: &[&str]) -> std::process::Output {
    std::process::Command::new("promtool")
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("promtool must be installed (Debian package prometheus; ops/test.sh installs it)")
}

#[test]
fn promtool_accepts_the_rules() {
    let out = promtool(&["check", "rules", "alerts.yml"]);
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
}

/// ops/alerts.test.yml has, for every alert, a case where it fires and one where it stays quiet,
/// and promtool runs them all.
#[test]
fn every_alert_fires_when_it_should_and_only_then() {
    let rules = ops_file("alerts.yml");
    let tests = ops_file("alerts.test.yml");
    let names: Vec<&str> = rules.lines().filter_map(|l| l.trim().strip_prefix("- alert: ")).collect();
    assert!(names.len() >= 6, "{names:?}");
    for name in &names {
        let cases: Vec<&str> = tests.split("alertname: ").skip(1).filter(|c| c.starts_with(&format!("{name}\n"))).collect();
        assert!(cases.iter().any(|c| c.contains("exp_alerts: []")), "no quiet case for {name}");
        assert!(cases.iter().any(|c| c.contains("- exp_labels:")), "no firing case for {name}");
    }
    let out = promtool(&["test", "rules", "alerts.test.yml"]);
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
}

/// GitHub's anchor for a Markdown heading: lower case, punctuation dropped, spaces to hyphens.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// Every alert and every link of the runbook's symptom table lands on a heading of the runbook.
#[test]
fn every_runbook_link_lands_on_a_heading() {
    let runbook = ops_file("RUNBOOK.md");
    let anchors: Vec<String> = runbook.lines().filter_map(|l| l.strip_prefix('#')).map(|l| anchor(l.trim_start_matches('#'))).collect();
    let rules = ops_file("alerts.yml");
    let from_alerts = rules.lines().filter_map(|l| l.trim().strip_prefix("runbook: \"ops/RUNBOOK.md#")).map(|l| l.trim_end_matches('"'));
    let from_runbook = runbook.split("](#").skip(1).filter_map(|rest| rest.split(')').next());
    let links: Vec<&str> = from_alerts.chain(from_runbook).collect();
    assert!(links.len() >= 20, "{links:?}");
    for link in links {
        assert!(anchors.iter().any(|a| a == link), "#{link} is no heading of ops/RUNBOOK.md: {anchors:?}");
    }
}
