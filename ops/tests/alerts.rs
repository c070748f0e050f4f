//! The alert rules only name metrics Projector emits, and cover the seed's three alerts.

#[test]
fn alert_rules_name_only_metrics_that_exist() {
    let rules = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/alerts.yml")).expect("ops/alerts.yml");
    let metrics = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/src/metrics.rs")).expect("metrics.rs");
    let defined: Vec<&str> = metrics.lines().filter_map(|l| l.split('"').nth(1)).collect();
    let mut used = Vec::new();
    for line in rules.lines().filter(|l| !l.trim_start().starts_with('#')) {
        for word in line.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            if word.starts_with("spike_projection_") || word.starts_with("run_spike_projection_") || word.starts_with("projector_") {
                used.push(word);
            }
        }
    }
    assert!(used.len() >= 6, "{used:?}");
    for name in used {
        assert!(defined.contains(&name), "ops/alerts.yml names {name}, which shared/src/metrics.rs does not define");
    }
    for seed in ["spike_projection_slot_wait_timeout_total", "run_spike_projection_error_total", "spike_projection_concurrent_queries"] {
        assert!(rules.contains(seed), "the seed's alert on {seed} is missing");
    }
}
