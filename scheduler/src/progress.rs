//! How a run's progress is shown while someone waits for it: a bar with an ETA on a terminal,
//! whose last frame stays with the final count; a log line every few seconds otherwise. Shared by
//! the embedded run and `run-once --wait`.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use projector_shared::run::{Outcome, RunSummary};

/// The progress display of one run.
pub struct Progress {
    bar: Option<indicatif::ProgressBar>,
    every: Duration,
    last: Instant,
}

impl Progress {
    /// A bar when stderr is a terminal, else log lines every `log_every`.
    pub fn new(total: u64, log_every: Duration) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = indicatif::ProgressBar::new(total);
            if let Ok(style) = indicatif::ProgressStyle::with_template("{elapsed_precise} [{bar:40}] {pos}/{len} orgs  eta {eta}  {msg}") {
                bar.set_style(style.progress_chars("=> "));
            }
            bar
        });
        Progress { bar, every: log_every, last: Instant::now() }
    }

    /// How often the caller should call [`Progress::show`].
    pub fn interval(&self) -> Duration {
        if self.bar.is_some() { Duration::from_millis(100) } else { self.every }
    }

    /// Shows where the run is.
    pub fn show(&mut self, s: &RunSummary) {
        match &self.bar {
            Some(bar) => {
                if bar.length() != Some(s.orgs_total) && s.orgs_total > 0 {
                    bar.set_length(s.orgs_total);
                }
                bar.set_position(s.accounted());
                bar.set_message(counts(s));
            }
            None if self.last.elapsed() >= self.every => {
                self.last = Instant::now();
                tracing::info!(run_id = %s.run_id, accounted = s.accounted(), total = s.orgs_total, outcomes = %s.outcomes, "progress");
            }
            None => {}
        }
    }

    /// The last frame: the final count stays on the terminal, saying "done" only for a run that
    /// ended whole, "interrupted" for one stopped by Ctrl-C, "not finished" otherwise.
    pub fn finish(self, s: &RunSummary, interrupted: bool) {
        if let Some(bar) = self.bar {
            bar.set_position(s.accounted());
            bar.finish_with_message(format!("{}  {}", counts(s), end_word(s, interrupted)));
        }
    }
}

/// How the bar's last frame ends: a Ctrl-C'd run never reads "done", whatever its counts say.
fn end_word(s: &RunSummary, interrupted: bool) -> &'static str {
    match (interrupted, s.is_finished()) {
        (true, _) => "interrupted",
        (false, true) => "done",
        (false, false) => "not finished",
    }
}

/// Completed, then every other outcome that has orgs, so the counts add up to the bar's position.
fn counts(s: &RunSummary) -> String {
    let mut parts = vec![format!("completed {}", s.count(Outcome::Completed))];
    for outcome in Outcome::ALL.into_iter().filter(|o| *o != Outcome::Completed) {
        let n = s.count(outcome);
        if n > 0 {
            parts.push(format!("{} {n}", outcome.as_str()));
        }
    }
    parts.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use projector_shared::OrgId;

    #[test]
    fn the_counts_add_up_to_the_orgs_accounted() {
        let mut s = RunSummary { orgs_total: 100, ..RunSummary::default() };
        for org in 1..=25 {
            s.add(OrgId(org), Outcome::Cancelled);
        }
        s.add(OrgId(26), Outcome::Completed);
        assert_eq!(counts(&s), "completed 1 cancelled 25");
    }

    #[test]
    fn only_a_whole_run_ends_done() {
        let mut s = RunSummary { orgs_total: 2, ..RunSummary::default() };
        s.add(OrgId(1), Outcome::Completed);
        assert_eq!(end_word(&s, false), "not finished");
        assert_eq!(end_word(&s, true), "interrupted");
        s.add(OrgId(2), Outcome::Completed);
        assert_eq!(end_word(&s, false), "done");
        assert_eq!(end_word(&s, true), "interrupted", "Ctrl-C after the last org still says so");
    }
}
