//! The dashboard and the alerts read what a running worker really exports: every expression in
//! ops/dashboard.json and ops/alerts.yml is checked against a live worker's /metrics, for metric
//! names, types (counter under rate/increase, gauge otherwise, histogram under
//! histogram_quantile), labels and label values.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Stdio;
use std::time::Duration;

use projector_tests::fleet::{env_with, metrics_addr, worker};
use projector_tests::{FakeSnuba, Proc, RedisServer, command, manifest_path, scrape, workspace_bin};

const FAKE: &str = env!("CARGO_BIN_EXE_projector-fake-snuba");

/// What /metrics says about one metric family.
#[derive(Debug, Default)]
struct Family {
    kind: String,
    /// Label name → values seen.
    labels: BTreeMap<String, BTreeSet<String>>,
    series: usize,
}

fn parse_exposition(text: &str) -> BTreeMap<String, Family> {
    let mut families: BTreeMap<String, Family> = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            if let (Some(name), Some(kind)) = (parts.next(), parts.next()) {
                families.entry(name.to_owned()).or_default().kind = kind.to_owned();
            }
            continue;
        }
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let (series, _) = line.rsplit_once(' ').expect("sample line");
        let (name, labels) = match series.split_once('{') {
            Some((n, l)) => (n, l.trim_end_matches('}')),
            None => (series, ""),
        };
        // Histogram samples belong to their family.
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|base| families.get(*base).is_some_and(|f| f.kind == "histogram")))
            .unwrap_or(name);
        let f = families.entry(family.to_owned()).or_default();
        f.series += 1;
        for pair in labels.split(',').filter(|p| !p.is_empty()) {
            if let Some((k, v)) = pair.split_once('=') {
                f.labels.entry(k.to_owned()).or_default().insert(v.trim_matches('"').to_owned());
            }
        }
    }
    families
}

/// Every PromQL expression of the dashboard and the alert rules, with where it came from.
fn expressions() -> Vec<(String, String)> {
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(manifest_path("../ops/dashboard.json")).expect("dashboard")).expect("json");
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().into_iter().flatten() {
            if let Some(expr) = target["expr"].as_str() {
                out.push((format!("dashboard panel {:?}", panel["title"]), expr.to_owned()));
            }
        }
    }
    // alerts.yml: each `expr:` is one line or a `|` block of indented lines.
    let rules = std::fs::read_to_string(manifest_path("../ops/alerts.yml")).expect("alerts");
    let lines: Vec<&str> = rules.lines().collect();
    let mut i = 0;
    while i < lines.len() {
        if let Some(rest) = lines[i].trim_start().strip_prefix("expr:") {
            let mut expr = rest.trim().to_owned();
            if expr == "|" {
                expr.clear();
                let indent = lines[i].len() - lines[i].trim_start().len();
                while i + 1 < lines.len() && lines[i + 1].len() - lines[i + 1].trim_start().len() > indent {
                    i += 1;
                    expr.push_str(lines[i].trim());
                    expr.push(' ');
                }
            }
            out.push((format!("alert rule at ops/alerts.yml:{}", i + 1), expr));
        }
        i += 1;
    }
    out
}

fn is_metric(word: &str) -> bool {
    ["spike_projection_", "run_spike_projection_", "projector_"].iter().any(|p| word.starts_with(p))
}

#[test]
fn every_dashboard_and_alert_expression_reads_a_real_series_of_the_right_type() {
    let redis = RedisServer::start();
    let fake = FakeSnuba::start(FAKE, &["--latency", "20ms"]);
    // A rate policy loose enough to admit at once, so its delay histogram has a sample.
    let env = env_with(redis.url(), &fake.url(), &[("PROJECTOR_RATE_RATES", "1000/s")]);
    let worker = worker(&env, &[]);
    let addr = metrics_addr(&worker);
    // A run, so that slot waits and queries have been observed (a histogram appears with its first sample).
    let out = command(workspace_bin("projector-scheduler"))
        .args(["run-once", "--wait", "--wait-timeout", "60s", "--orgs", "5", "--batch-delay", "0s"])
        .envs(env.iter().cloned())
        .output()
        .expect("scheduler");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // The run gauges, ticks and workers alive come from the scheduler's own endpoint: dashboards
    // and alerts read the two endpoints together.
    let mut cmd = command(workspace_bin("projector-scheduler"));
    cmd.args(["serve"]).envs(env.iter().cloned()).env("PROJECTOR_SCHEDULE_METRICS_ADDR", "127.0.0.1:0").stdout(Stdio::null());
    let scheduler = Proc::spawn(cmd);
    let scheduler_addr = metrics_addr(&scheduler);
    projector_tests::wait_until(Duration::from_secs(30), "the scheduler exports the finished run", || {
        scrape(&scheduler_addr).contains("projector_run_last_finished_timestamp_seconds ")
    });
    let text = format!("{}\n{}", scrape(&addr), scrape(&scheduler_addr));
    let families = parse_exposition(&text);

    let exprs = expressions();
    assert!(exprs.len() >= 20, "every panel target and rule found: {exprs:?}");
    let mut checked = 0;
    for (origin, expr) in &exprs {
        let grouping: Vec<String> = expr
            .match_indices("by (")
            .filter_map(|(i, _)| expr[i + 4..].split(')').next())
            .flat_map(|l| l.split(',').map(|s| s.trim().to_owned()))
            .filter(|l| l != "le")
            .collect();
        let mut at = 0;
        for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            let start = expr[at..].find(word).map_or(at, |p| at + p);
            at = start + word.len();
            if !is_metric(word) {
                continue;
            }
            checked += 1;
            let before = &expr[..start];
            // A histogram's _count and _sum are counters of its own family.
            let histogram_total = ["_count", "_sum"]
                .iter()
                .filter_map(|suffix| word.strip_suffix(suffix))
                .find(|base| families.get(*base).is_some_and(|f| f.kind == "histogram"));
            let (family, expected) = match word.strip_suffix("_bucket") {
                Some(base) => {
                    assert!(before.contains("histogram_quantile("), "{origin}: {word} outside histogram_quantile");
                    (base, "histogram")
                }
                None if histogram_total.is_some() => {
                    assert!(before.ends_with("rate(") || before.ends_with("increase("), "{origin}: {word} read without rate()/increase()");
                    (histogram_total.unwrap_or(word), "histogram")
                }
                None if before.ends_with("rate(") || before.ends_with("increase(") => (word, "counter"),
                // absent() asks only whether a series is exported, whatever its type.
                None if before.ends_with("absent(") => (word, "any"),
                None => (word, "gauge"),
            };
            let f =
                families.get(family).unwrap_or_else(|| panic!("{origin}: `{expr}` reads {word}, which /metrics does not export:\n{text}"));
            if expected != "any" {
                assert_eq!(f.kind, expected, "{origin}: `{expr}` reads {family} as a {expected}, /metrics has a {}", f.kind);
            }
            if expected == "histogram" {
                assert!(text.contains(&format!("{family}_bucket{{le=")), "{origin}: no buckets for {family}");
            }
            for label in &grouping {
                assert!(f.labels.contains_key(label), "{origin}: groups {family} by {label}, which it does not carry: {f:?}");
            }
            // Label matchers right after the name must name a label and a value that exist.
            if let Some(matchers) = expr[at..].strip_prefix('{').and_then(|r| r.split('}').next()) {
                for m in matchers.split(',') {
                    let (k, v) = m.split_once('=').expect("label matcher");
                    let values = f.labels.get(k.trim()).unwrap_or_else(|| panic!("{origin}: {family} has no label {k}"));
                    assert!(values.contains(v.trim().trim_matches('"')), "{origin}: {family}{{{m}}} matches nothing; values: {values:?}");
                }
            }
        }
    }
    assert!(checked >= 25, "metrics checked: {checked}");
    // Histogram buckets span what the durations need: 1 ms to 60 s for slot waits, 10 ms to 60 s for queries.
    for (family, low, high) in [("spike_projection_slot_wait_seconds", "0.001", "60"), ("projector_query_duration_seconds", "0.01", "60")] {
        for le in [low, high] {
            assert!(text.contains(&format!("{family}_bucket{{le=\"{le}\"}}")), "{family} has no bucket le={le}:\n{text}");
        }
    }
}
