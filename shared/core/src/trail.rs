//! What happened to one org in one run, step by step: the trail the worker records with each
//! outcome, and that `projectorctl explain` and `runs show` read back.

use serde::{Deserialize, Serialize};

use crate::run::Outcome;

/// Attempts kept per org (a retry adds one); older ones are dropped, so the trail stays bounded.
pub const KEPT_ATTEMPTS: usize = 4;

/// Characters of an error message kept in a trail: enough to act on, bounded per org.
pub const MESSAGE_CHARS: usize = 160;

/// One thing that happened on the way to an outcome, in the order it happened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "step", rename_all = "snake_case")]
pub enum Step {
    /// The rollout flag sent the org down the limited path (slot first) or the legacy one.
    Routed { limited: bool, why: String },
    /// The wait for a slot: granted with a fencing token, or given up after `waited_ms`.
    Slot {
        granted: bool,
        waited_ms: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        token: Option<u64>,
        /// When the wait gave up: slots held, the limit, and the place in line.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        in_use: Option<u32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        limit: Option<u32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        queue_position: Option<u32>,
    },
    /// The rate policy (`[rate]`) admitted the query start, or refused it until `retry_after_ms`.
    Rate {
        admitted: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retry_after_ms: Option<u64>,
    },
    /// The query's answer: `ok`, or the error kind (`rate_limited`, `timeout`, …), and whether the
    /// service flagged the referrer as throttled.
    Query {
        status: String,
        ms: u64,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        throttled: bool,
        /// Queries (pages) the org's window took; 1 for most orgs.
        #[serde(default = "one", skip_serializing_if = "is_one")]
        pages: u32,
    },
    /// The store write, stamped with the slot's fencing token (0 on the legacy path).
    Store { ok: bool, token: u64, projects: usize, ms: u64 },
    /// Before this try, the job went back to the queue this many times: after a try that failed
    /// in a way that may pass or was refused (`runs.max_attempts`), or a slot timeout or rate
    /// refusal (`slots.on_timeout = "reschedule"`). `tries`: how each earlier try ended and the
    /// wait before the next, oldest first (the last [`crate::job::KEPT_TRIES`]); `last`: the one
    /// before this, as trails recorded before `tries` kept it.
    Rescheduled {
        times: u32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        last: Option<String>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        tries: Vec<String>,
    },
    /// An operator cancelled the run before this org ran.
    Cancelled,
    /// The run stopped before this org ran: the query service refused the query itself.
    Stopped,
    /// The run's deadline passed before this org ran.
    Deadline,
}

impl Step {
    /// One line for a person: what happened and the figures behind it.
    pub fn describe(&self) -> String {
        match self {
            Step::Routed { limited: true, why } => format!("routed: limited path (slot first) by the rollout flag: {why}"),
            Step::Routed { limited: false, why } => format!("routed: legacy path (no slot) by the rollout flag: {why}"),
            Step::Slot { granted: true, waited_ms, token, .. } => {
                format!("slot: granted after {waited_ms} ms, fencing token {}", token.unwrap_or(0))
            }
            Step::Slot { granted: false, waited_ms, in_use, limit, queue_position, .. } => format!(
                "slot: none within {waited_ms} ms (slots.max_wait); {} of {} held, place {} in line",
                in_use.unwrap_or(0),
                limit.unwrap_or(0),
                queue_position.unwrap_or(0)
            ),
            Step::Rate { admitted: true, .. } => "rate: start admitted".to_owned(),
            Step::Rate { admitted: false, reason, retry_after_ms } => {
                format!("rate: refused ({}), next admission in {} ms", reason.as_deref().unwrap_or("policy"), retry_after_ms.unwrap_or(0))
            }
            Step::Query { status, ms, throttled, pages } => {
                let throttled = if *throttled { ", throttled by the query service" } else { "" };
                let pages = if *pages == 1 { String::new() } else { format!(" over {pages} pages") };
                format!("query: {status} after {ms} ms{pages}{throttled}")
            }
            Step::Store { ok, token, projects, ms } => {
                let result = if *ok { "stored" } else { "failed" };
                format!("store: {result} {projects} projections in {ms} ms, fencing token {token}")
            }
            Step::Rescheduled { times, last, tries } => {
                let tries: Vec<&String> = if tries.is_empty() { last.iter().collect() } else { tries.iter().collect() };
                if tries.is_empty() {
                    return format!(
                        "rescheduled {times} time(s) before this try (no slot or no rate admission in time; slots.on_timeout = reschedule)"
                    );
                }
                // The kept tries are the last ones: number them from the first kept.
                let first = (*times as usize + 1).saturating_sub(tries.len()).max(1);
                let each: Vec<String> = tries.iter().enumerate().map(|(i, t)| format!("try {}: {t}", first + i)).collect();
                format!("tried again: {times} earlier tr{}; {}", if *times == 1 { "y" } else { "ies" }, each.join("; "))
            }
            Step::Cancelled => "cancelled by an operator before it ran".to_owned(),
            Step::Deadline => "not run: the run's deadline passed first (runs.deadline)".to_owned(),
            Step::Stopped => "not queried: the run stopped when the query service refused its query (see the reason)".to_owned(),
        }
    }
}

/// Why an org did not complete: the error's kind (the metric's `reason` label), what happened
/// with its numbers, and what to do about it, kept apart so that a cut message never loses the
/// advice and every view can show them as separate fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Why {
    pub kind: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub advice: String,
}

impl Why {
    /// A reason with its message cut to [`MESSAGE_CHARS`].
    pub fn new(kind: impl Into<String>, message: impl AsRef<str>) -> Self {
        Why { kind: kind.into(), message: message.as_ref().chars().take(MESSAGE_CHARS).collect(), advice: String::new() }
    }

    /// A reason whose message ends with its advice (`…; lower slots.limit` or `… (check …)`):
    /// the advice goes to its own field, whole, and the message keeps the rest.
    pub fn with_advice(kind: impl Into<String>, message: &str, advice: &str) -> Self {
        let rest = [format!("; {advice}"), format!(" ({advice})")]
            .iter()
            .find_map(|suffix| message.strip_suffix(suffix.as_str()))
            .map_or_else(|| message.to_owned(), str::to_owned);
        Why { advice: advice.to_owned(), ..Why::new(kind, rest) }
    }
}

fn is_first(attempt: &u32) -> bool {
    *attempt == 0
}

/// One attempt at one org, as the worker that ran it records it with the outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    /// 0 for the run's own job, n for the n-th `runs retry`.
    #[serde(default, skip_serializing_if = "is_first")]
    pub attempt: u32,
    pub outcome: Outcome,
    /// The worker that ran it (empty for the embedded run and operator actions).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub worker: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub why: Option<Why>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<Step>,
}

impl Attempt {
    /// An outcome with nothing else known (a malformed job, a test).
    pub fn bare(outcome: Outcome) -> Self {
        Attempt { attempt: 0, outcome, worker: String::new(), why: None, steps: Vec::new() }
    }

    /// The line stored in the trail: JSON (the recording script prefixes Redis time).
    pub fn to_line(&self) -> String {
        // A struct of plain fields always serializes.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// An attempt as stored: when it was recorded (Redis time, ms) and what it was.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recorded {
    pub at_ms: i64,
    #[serde(flatten)]
    pub attempt: Attempt,
}

/// Reads a stored trail (`<ms> <JSON>` per line, oldest first); unreadable lines are left out.
pub fn parse(trail: &str) -> Vec<Recorded> {
    trail
        .lines()
        .filter_map(|line| {
            let (at, json) = line.split_once(' ')?;
            Some(Recorded { at_ms: at.parse().ok()?, attempt: serde_json::from_str(json).ok()? })
        })
        .collect()
}

fn one() -> u32 {
    1
}

fn is_one(n: &u32) -> bool {
    *n == 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trail_round_trips_and_skips_what_it_cannot_read() {
        let a = Attempt {
            attempt: 1,
            outcome: Outcome::Failed,
            worker: "w1".into(),
            why: Some(Why::new("server_error", "x".repeat(500))),
            steps: vec![
                Step::Routed { limited: true, why: "flag unset".into() },
                Step::Slot { granted: true, waited_ms: 3, token: Some(9), in_use: None, limit: None, queue_position: None },
                Step::Query { status: "server_error".into(), ms: 40, throttled: false, pages: 1 },
            ],
        };
        assert_eq!(a.why.as_ref().map(|w| w.message.len()), Some(MESSAGE_CHARS));
        let stored = format!("100 {}\nnot a line\n200 {}", Attempt::bare(Outcome::SkippedNoSlot).to_line(), a.to_line());
        let read = parse(&stored);
        assert_eq!(read.len(), 2);
        assert_eq!((read[0].at_ms, read[0].attempt.outcome), (100, Outcome::SkippedNoSlot));
        assert_eq!(read[1].attempt, a);
        assert!(a.steps[1].describe().contains("fencing token 9"), "{}", a.steps[1].describe());
    }

    #[test]
    fn the_advice_is_kept_whole_apart_from_the_message() {
        let long = format!("query refused by the query service's ReferrerGuardRailPolicy, {} in use; lower slots.limit", "9".repeat(200));
        let why = Why::with_advice("rate_limited", &long, "lower slots.limit");
        assert_eq!(why.advice, "lower slots.limit");
        assert!(!why.message.contains("lower slots.limit") && why.message.chars().count() <= MESSAGE_CHARS, "{why:?}");
        let paren = Why::with_advice("timeout", "query timed out after 30s (raise query.timeout)", "raise query.timeout");
        assert_eq!((paren.message.as_str(), paren.advice.as_str()), ("query timed out after 30s", "raise query.timeout"));
        assert!(!format!("{why:?}").contains("Some("), "nothing a person reads prints Debug");
    }
}
