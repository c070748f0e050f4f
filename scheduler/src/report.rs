//! How a run's result reaches a person: the summary table, and the JSON written by `--summary-json`.

use std::path::Path;

use projector_shared::run::{Outcome, RunSummary};

/// The summary as a plain-text table. `probed` says whether `max_concurrent_queries` was measured
/// (the embedded run's probe); a distributed run's queries happen in other processes.
pub fn summary_table(summary: &RunSummary, slots_limit: u32, probed: bool) -> String {
    let mut out = format!("run {}: {} orgs in {:.2}s\n", summary.run_id, summary.orgs_total, summary.duration_ms as f64 / 1000.0);
    out.push_str(&format!("  {:<18}{:>8}\n", "outcome", "orgs"));
    for outcome in Outcome::ALL {
        out.push_str(&format!("  {:<18}{:>8}\n", outcome.as_str(), summary.count(outcome)));
    }
    out.push_str(&format!("  {:<18}{:>8}\n", "accounted", summary.accounted()));
    if probed {
        out.push_str(&format!("  max concurrent queries: {} (slots.limit {slots_limit})\n", summary.max_concurrent_queries));
    } else {
        out.push_str(&format!(
            "  concurrent queries: bounded by slots.limit {slots_limit} across workers (see spike_projection_concurrent_queries)\n"
        ));
    }
    if !summary.skipped_org_ids.is_empty() {
        out.push_str(&format!("  not queried (skipped): {}\n", id_list(&summary.skipped_org_ids)));
    }
    if !summary.failed_org_ids.is_empty() {
        out.push_str(&format!("  failed: {}\n", id_list(&summary.failed_org_ids)));
    }
    out
}

fn id_list(ids: &[projector_shared::OrgId]) -> String {
    const SHOWN: usize = 20;
    let mut s: Vec<String> = ids.iter().take(SHOWN).map(|id| id.to_string()).collect();
    if ids.len() > SHOWN {
        s.push(format!("… and {} more (see --summary-json)", ids.len() - SHOWN));
    }
    s.join(", ")
}

/// Writes the summary as JSON.
pub fn write_summary_json(summary: &RunSummary, path: &Path) -> std::io::Result<()> {
    let json = serde_json::to_vec_pretty(summary).map_err(std::io::Error::other)?;
    std::fs::write(path, json)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_lists_every_outcome_and_the_peak() {
        let s = RunSummary {
            run_id: "run-x".into(),
            orgs_total: 3,
            completed: 2,
            skipped_no_slot: 1,
            max_concurrent_queries: 2,
            duration_ms: 1500,
            skipped_org_ids: vec![projector_shared::OrgId(9)],
            ..RunSummary::default()
        };
        let t = summary_table(&s, 50, true);
        for o in Outcome::ALL {
            assert!(t.contains(o.as_str()), "{t}");
        }
        assert!(t.contains("max concurrent queries: 2 (slots.limit 50)"), "{t}");
        assert!(t.contains("not queried (skipped): 9"), "{t}");
        assert!(t.contains("1.50s"), "{t}");
    }
}
