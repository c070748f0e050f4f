//! The alert rules and the dashboard only name metrics Projector emits, and cover the seed's
//! three alerts and five dashboard panels.

fn ops_file(name: &str) -> String {
    std::fs::read_to_string(format!("{}/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// Metric names a file uses, checked against shared/src/metrics.rs. Histogram series
/// (`_bucket`, `_count`, `_sum`) count as their histogram.
fn assert_known_metrics(file: &str, text: &str) -> usize {
    let metrics = ops_file("../shared/src/metrics.rs");
    let defined: Vec<&str> = metrics.lines().filter_map(|l| l.split('"').nth(1)).collect();
    let mut used = 0;
    for line in text.lines().filter(|l| !l.trim_start().starts_with('#')) {
        for word in line.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            if word.starts_with("spike_projection_") || word.starts_with("run_spike_projection_") || word.starts_with("projector_") {
                let base = ["_bucket", "_count", "_sum"].iter().find_map(|s| word.strip_suffix(s)).unwrap_or(word);
                assert!(defined.contains(&base), "{file} names {word}, which shared/src/metrics.rs does not define");
                used += 1;
            }
        }
    }
    used
}

#[test]
fn dashboard_names_only_metrics_that_exist_and_has_the_seed_panels() {
    let text = ops_file("dashboard.json");
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("dashboard is JSON");
    assert!(assert_known_metrics("ops/dashboard.json", &text) >= 10);
    let titles: Vec<String> =
        dashboard["panels"].as_array().expect("panels").iter().map(|p| p["title"].as_str().unwrap_or_default().to_lowercase()).collect();
    for seed in ["concurrent queries", "utilization", "skipped", "completed", "ratelimitexceeded"] {
        assert!(titles.iter().any(|t| t.contains(seed)), "no panel for {seed}: {titles:?}");
    }
}

#[test]
fn alert_rules_name_only_metrics_that_exist() {
    let rules = ops_file("alerts.yml");
    assert!(assert_known_metrics("ops/alerts.yml", &rules) >= 6);
    for seed in ["spike_projection_slot_wait_timeout_total", "run_spike_projection_error_total", "spike_projection_concurrent_queries"] {
        assert!(rules.contains(seed), "the seed's alert on {seed} is missing");
    }
}
