//! How a run's result reaches a person and a cron job: the summary table, the JSON written by
//! `--summary-json`, and the exit code that judges the run.

use std::path::Path;
use std::process::ExitCode;

use projector_shared::run::{BadLines, Outcome, RunSummary};

/// The documented exit codes of `projector-scheduler run-once`.
pub mod exit {
    /// Every org completed (or, without --wait, the run was enqueued; or the plan was printed).
    pub const OK: u8 = 0;
    /// The run could not be started or followed (Redis unreachable, no organizations, …).
    pub const ERROR: u8 = 1;
    /// Bad configuration or usage.
    pub const CONFIG: u8 = 2;
    /// The run finished, and some org ended in an outcome named by --fail-on.
    pub const ORGS_NOT_COMPLETED: u8 = 3;
    /// --wait-timeout passed before every org was accounted for.
    pub const WAIT_TIMED_OUT: u8 = 4;
    /// Interrupted (Ctrl-C / SIGTERM) before the run finished; the partial summary was written.
    pub const INTERRUPTED: u8 = 130;
}

/// Which outcomes make a finished run exit non-zero (`--fail-on`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailOn(pub Vec<Outcome>);

impl Default for FailOn {
    /// Anything but completed.
    fn default() -> Self {
        FailOn(Outcome::ALL.into_iter().filter(|o| *o != Outcome::Completed).collect())
    }
}

impl std::str::FromStr for FailOn {
    type Err = String;

    /// `none`, `any`, or a comma-separated list of outcomes.
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "none" => Ok(FailOn(Vec::new())),
            "any" => Ok(FailOn::default()),
            list => list
                .split(',')
                .map(|name| {
                    Outcome::parse(name.trim()).filter(|o| *o != Outcome::Completed).ok_or_else(|| {
                        let others: Vec<&str> =
                            Outcome::ALL.into_iter().filter(|o| *o != Outcome::Completed).map(Outcome::as_str).collect();
                        format!("unknown outcome {name:?}: use none, any, or a list of {}", others.join(", "))
                    })
                })
                .collect::<Result<Vec<_>, _>>()
                .map(FailOn),
        }
    }
}

impl FailOn {
    /// The outcomes of `summary` this policy fails on, with their counts.
    pub fn failing(&self, summary: &RunSummary) -> Vec<(Outcome, u64)> {
        self.0.iter().map(|o| (*o, summary.count(*o))).filter(|(_, n)| *n > 0).collect()
    }

    /// The exit code of a run that finished (every org accounted for).
    pub fn judge(&self, summary: &RunSummary) -> ExitCode {
        if self.failing(summary).is_empty() { ExitCode::from(exit::OK) } else { ExitCode::from(exit::ORGS_NOT_COMPLETED) }
    }
}

/// The sentence's caveat when `query.max_duration` was set below the service's own bound (the
/// operator said they know better): the slot limit bounds the service's count only if the
/// service ends every query that soon. `None` when the bound holds as stated.
pub fn max_duration_caveat(query: &projector_config::QueryConfig) -> Option<String> {
    (query.max_duration < projector_config::SERVICE_QUERY_BOUND).then(|| {
        format!(
            "only if the query service ends every query within query.max_duration ({}), which is set below its own {} bound",
            projector_config::format_duration(query.max_duration),
            projector_config::format_duration(projector_config::SERVICE_QUERY_BOUND)
        )
    })
}

/// What bounded a run's queries, for its summary: the limit in force and what set it, what the
/// bound assumes ([`max_duration_caveat`]), and the orgs the rollout flag kept outside it.
#[derive(Debug, Clone, Default)]
pub struct Bound {
    pub limit: u32,
    /// What sets the limit in force now: "slots.limit", "the query service's cap", …
    pub source: String,
    pub caveat: Option<String>,
    /// Orgs of the run on the legacy path (no slot): not bounded by the limit at all.
    pub legacy: u64,
}

impl Bound {
    /// The sentence a summary says of its concurrent queries: only what is true of the run.
    fn sentence(&self) -> String {
        let mut s = format!("concurrent queries: bounded by the slot limit in force across workers, {} now ({})", self.limit, self.source);
        if let Some(caveat) = &self.caveat {
            s.push(' ');
            s.push_str(caveat);
        }
        if self.legacy > 0 {
            s.push_str(&format!("; {} org(s) on the legacy path (rollout flag) ran outside it, with no slot", self.legacy));
        }
        s
    }
}

/// What sets the limit in force, as a summary names it (`Occupancy::source`'s labels).
pub fn source_text(source: &str) -> &'static str {
    match source {
        "service" => "the query service's cap",
        "adaptive" => "the adaptive limit",
        "stored" => "set in Redis",
        _ => "slots.limit",
    }
}

/// The summary as a plain-text table, with what bounded its queries.
pub fn summary_table(summary: &RunSummary, bound: &Bound) -> String {
    let seconds = summary.duration_ms as f64 / 1000.0;
    // A run followed only part of the way (a timed-out or interrupted wait) says so first.
    let mut out = if summary.is_finished() {
        format!("run {}: {} orgs in {seconds:.2}s\n", summary.run_id, summary.orgs_total)
    } else {
        format!(
            "run {}: {} of {} orgs accounted for after {seconds:.2}s (not finished)\n",
            summary.run_id,
            summary.accounted(),
            summary.orgs_total
        )
    };
    out.push_str(&format!("  {:<20}{:>8}\n", "outcome", "orgs"));
    for outcome in Outcome::ALL {
        out.push_str(&format!("  {:<20}{:>8}\n", outcome.as_str(), summary.count(outcome)));
    }
    out.push_str(&format!("  {:<20}{:>8}\n", "accounted", summary.accounted()));
    match summary.max_concurrent_queries {
        Some(max) => out.push_str(&format!("  max concurrent queries: {max} (slot limit {}, {})\n", bound.limit, bound.source)),
        None => out.push_str(&format!("  {}\n", bound.sentence())),
    }
    if !summary.skipped_org_ids.is_empty() {
        out.push_str(&format!(
            "  not queried (skipped_no_slot, slot_unavailable, skipped_rate_policy): {}\n",
            id_list(&summary.skipped_org_ids)
        ));
    }
    if !summary.failed_org_ids.is_empty() {
        out.push_str(&format!("  failed (rate_limited, failed): {}\n", id_list(&summary.failed_org_ids)));
    }
    out.push_str(&bad_lines_note(&summary.bad_lines));
    out
}

/// "3 lines of the organizations file were skipped: line 5: …" (empty when none were).
pub fn bad_lines_note(bad: &BadLines) -> String {
    if bad.is_empty() {
        return String::new();
    }
    let mut out = format!("  {} line(s) of the organizations file were skipped:\n", bad.count);
    for b in &bad.first {
        out.push_str(&format!("    line {}: {}\n", b.line, b.reason));
    }
    if bad.count > bad.first.len() as u64 {
        out.push_str(&format!("    … and {} more (see the log)\n", bad.count - bad.first.len() as u64));
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
    use projector_shared::OrgId;

    #[test]
    fn the_table_lists_every_outcome_and_the_peak() {
        let mut s = RunSummary {
            run_id: "run-x".into(),
            orgs_total: 3,
            max_concurrent_queries: Some(2),
            duration_ms: 1500,
            ..RunSummary::default()
        };
        s.add(OrgId(1), Outcome::Completed);
        s.add(OrgId(2), Outcome::Completed);
        s.add(OrgId(9), Outcome::SkippedNoSlot);
        let t = summary_table(&s, &Bound { limit: 3, source: "in Redis".into(), ..Bound::default() });
        for o in Outcome::ALL {
            assert!(t.contains(o.as_str()), "{t}");
        }
        assert!(t.contains("max concurrent queries: 2 (slot limit 3, in Redis)"), "{t}");
        assert!(t.contains("not queried (skipped_no_slot, slot_unavailable, skipped_rate_policy): 9"), "{t}");
        assert!(t.contains("1.50s"), "{t}");
    }

    #[test]
    fn fail_on_judges_a_finished_run() {
        let mut s = RunSummary::default();
        s.add(OrgId(1), Outcome::Completed);
        assert_eq!(FailOn::default().judge(&s), ExitCode::from(exit::OK));
        s.add(OrgId(2), Outcome::SkippedNoSlot);
        assert_eq!(FailOn::default().judge(&s), ExitCode::from(exit::ORGS_NOT_COMPLETED));
        let lenient: FailOn = "failed,rate_limited".parse().expect("parses");
        assert_eq!(lenient.judge(&s), ExitCode::from(exit::OK), "skips tolerated on purpose");
        assert_eq!("none".parse::<FailOn>().expect("parses").judge(&s), ExitCode::from(exit::OK));
        assert!("completed".parse::<FailOn>().is_err());
        assert!("faild".parse::<FailOn>().is_err());
    }

    #[test]
    fn an_unfinished_run_says_how_much_is_accounted_in_its_headline() {
        let mut s = RunSummary { run_id: "run-x".into(), orgs_total: 30, duration_ms: 5070, ..RunSummary::default() };
        s.add(OrgId(1), Outcome::Completed);
        let t = summary_table(&s, &Bound { limit: 50, source: "slots.limit".into(), ..Bound::default() });
        assert!(t.starts_with("run run-x: 1 of 30 orgs accounted for after 5.07s (not finished)"), "{t}");
    }

    #[test]
    fn the_bound_sentence_names_what_it_assumes_when_max_duration_is_below_the_service() {
        let s = RunSummary { run_id: "run-x".into(), orgs_total: 1, ..RunSummary::default() };
        let mut query = projector_config::Config::default().query;
        assert_eq!(max_duration_caveat(&query), None, "the default is the service's own bound");
        let plain = summary_table(&s, &Bound { limit: 10, source: "slots.limit".into(), ..Bound::default() });
        assert!(plain.contains("bounded by the slot limit in force across workers, 10 now (slots.limit)\n"), "{plain}");
        query.max_duration = std::time::Duration::from_secs(2);
        let caveat = max_duration_caveat(&query);
        let t = summary_table(&s, &Bound { limit: 10, source: "slots.limit".into(), caveat, legacy: 0 });
        assert!(t.contains("10 now (slots.limit) only if the query service ends every query within query.max_duration (2s)"), "{t}");
    }

    #[test]
    fn the_bound_names_the_services_cap_and_the_orgs_outside_it() {
        let s = RunSummary { run_id: "run-x".into(), orgs_total: 100, ..RunSummary::default() };
        let t = summary_table(&s, &Bound { limit: 11, source: source_text("service").into(), caveat: None, legacy: 90 });
        assert!(t.contains("11 now (the query service's cap); 90 org(s) on the legacy path (rollout flag) ran outside it"), "{t}");
    }
}
