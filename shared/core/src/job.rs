//! The spike-projection job: a wire format carrying ids, never models; fields are added compatibly.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::ids::{OrgId, ProjectId, RunId};

/// One organization's projection within one run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpikeProjectionJob {
    pub run_id: RunId,
    pub org_id: OrgId,
    /// Index of the batch the org was planned in; batch k is released at k x batch.delay.
    pub batch_index: u32,
    /// The tick this run projects from: history ends here, projections start here.
    pub scheduled_at: DateTime<Utc>,
    /// Projects to project; empty means every project of the organization.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub project_ids: Vec<ProjectId>,
    /// How many times a slot timeout re-enqueued this job (`slots.on_timeout = "reschedule"`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub reschedules: u32,
    /// 0 for the run's own job; n for the n-th follow-up attempt (`projectorctl runs retry`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub attempt: u32,
    /// Why the try before this one did not end the org, as jobs enqueued before `tries` carried
    /// it: read, never written ([`SpikeProjectionJob::earlier_tries`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_try: Option<String>,
    /// How each earlier try ended (a retried failure, a refusal) and the wait before the next,
    /// oldest first, the last [`KEPT_TRIES`] of them, for the trail; each cut to the trail's
    /// message length.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tries: Vec<String>,
    /// When the run must be over: no try is retried past it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline: Option<DateTime<Utc>>,
}

/// Earlier tries a job carries for its trail: past this many, the oldest are counted, not kept.
pub const KEPT_TRIES: usize = 8;

/// The first projected hour of a run ticked at `tick`: its hour.
pub fn first_hour_of(tick: DateTime<Utc>) -> DateTime<Utc> {
    use chrono::DurationRound;
    tick.duration_trunc(chrono::TimeDelta::hours(1)).unwrap_or(tick)
}

impl SpikeProjectionJob {
    /// How the earlier tries ended, oldest first (a job of an older fan-out carried one).
    pub fn earlier_tries(&self) -> Vec<String> {
        if self.tries.is_empty() { self.last_try.iter().cloned().collect() } else { self.tries.clone() }
    }

    /// The job's next try, carrying how this one ended (`this_try`), the last [`KEPT_TRIES`] kept.
    pub fn next_try(&self, this_try: Option<String>) -> SpikeProjectionJob {
        let mut tries = self.earlier_tries();
        tries.extend(this_try);
        let drop = tries.len().saturating_sub(KEPT_TRIES);
        tries.drain(..drop);
        SpikeProjectionJob { reschedules: self.reschedules + 1, last_try: None, tries, ..self.clone() }
    }
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// How much of an unreadable payload or body goes into an error or a log line.
pub const SAMPLE_CHARS: usize = 200;

/// The first `SAMPLE_CHARS` characters of a payload that could not be read, for errors and logs.
pub fn sample(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).chars().take(SAMPLE_CHARS).collect()
}

impl SpikeProjectionJob {
    /// The job's member in its run's dedupe set (`projector_queue::job_dedupe`): pushing a job whose member
    /// the run already holds is a no-op. `<org>` for the run's own job; a follow-up attempt has
    /// its own (`<org>:a<n>`), so a retry is not taken for a duplicate of the job it follows, and
    /// so has a reschedule (`…:r<n>`).
    pub fn dedupe_member(&self) -> String {
        let mut member = self.org_id.to_string();
        if self.attempt > 0 {
            member.push_str(&format!(":a{}", self.attempt));
        }
        if self.reschedules > 0 {
            member.push_str(&format!(":r{}", self.reschedules));
        }
        member
    }

    /// The same, unique across runs (`<run>:<member>`): the embedded run's in-memory queue key.
    pub fn idempotency_key(&self) -> String {
        format!("{}:{}", self.run_id, self.dedupe_member())
    }

    /// The job for one planned org of a run: the one way a run's jobs are built, by the fan-out,
    /// its resume and the embedded run alike.
    pub fn planned(run_id: RunId, org_id: OrgId, batch_index: u32, scheduled_at: DateTime<Utc>, project_ids: Vec<ProjectId>) -> Self {
        SpikeProjectionJob {
            run_id,
            org_id,
            batch_index,
            scheduled_at,
            project_ids,
            reschedules: 0,
            attempt: 0,
            last_try: None,
            tries: Vec::new(),
            deadline: None,
        }
    }

    /// The first projected hour: the scheduled tick's hour. It orders runs at the store's fence.
    pub fn first_hour(&self) -> DateTime<Utc> {
        first_hour_of(self.scheduled_at)
    }

    /// Decodes a job from the queue's JSON payload; the error carries a truncated sample for the log.
    pub fn decode(payload: &serde_json::Value) -> Result<Self, Error> {
        Self::deserialize(payload)
            .map_err(|e| Error::MalformedJob { reason: e.to_string(), sample: sample(payload.to_string().as_bytes()) })
    }

    pub fn encode(&self) -> Vec<u8> {
        // A struct of plain fields always serializes.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// The payload an in-memory queue carries (the embedded run's).
    pub fn to_payload(&self) -> serde_json::Value {
        // A struct of plain fields always serializes.
        serde_json::to_value(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn job() -> SpikeProjectionJob {
        SpikeProjectionJob {
            run_id: RunId("run-x".into()),
            org_id: OrgId(42),
            batch_index: 3,
            scheduled_at: Utc.with_ymd_and_hms(2026, 11, 22, 13, 0, 0).single().expect("valid"),
            project_ids: vec![],
            reschedules: 0,
            attempt: 0,
            last_try: None,
            tries: Vec::new(),
            deadline: None,
        }
    }

    #[test]
    fn round_trips_and_accepts_older_payloads() {
        let j = job();
        let wire: serde_json::Value = serde_json::from_slice(&j.encode()).expect("JSON");
        assert_eq!(SpikeProjectionJob::decode(&wire).expect("decodes"), j);
        let old = serde_json::json!({"run_id":"run-x","org_id":42,"batch_index":3,"scheduled_at":"2026-11-22T13:00:00Z"});
        assert_eq!(SpikeProjectionJob::decode(&old).expect("older payload decodes"), j);
    }

    #[test]
    fn malformed_payloads_are_named_errors() {
        let err = SpikeProjectionJob::decode(&serde_json::json!({"org_id":"forty-two"})).expect_err("malformed");
        let text = err.to_string();
        assert!(text.contains("malformed spike-projection job"), "{text}");
        assert!(text.contains("forty-two"), "sample included: {text}");
        assert!(err.to_string().contains("cannot run and is dropped"), "{err}");
    }

    #[test]
    fn dedupe_member_names_org_attempt_and_reschedule() {
        assert_eq!(job().dedupe_member(), "42");
        assert_eq!(job().idempotency_key(), "run-x:42");
        assert_eq!(SpikeProjectionJob { reschedules: 3, ..job() }.dedupe_member(), "42:r3");
        assert_eq!(SpikeProjectionJob { attempt: 2, reschedules: 1, ..job() }.dedupe_member(), "42:a2:r1");
        let retry = SpikeProjectionJob { attempt: 2, ..job() };
        assert_eq!(retry.dedupe_member(), "42:a2");
        let wire: serde_json::Value = serde_json::from_slice(&retry.encode()).expect("JSON");
        assert_eq!(wire["attempt"], 2);
        let first: serde_json::Value = serde_json::from_slice(&job().encode()).expect("JSON");
        assert!(first.get("attempt").is_none() && first.get("reschedules").is_none(), "zeros stay off the wire: {first}");
    }

    #[test]
    fn each_try_is_carried_to_the_next_and_only_the_last_few_are_kept() {
        let mut j = job();
        j.last_try = Some("timeout: an older payload's try".into());
        assert_eq!(j.earlier_tries(), ["timeout: an older payload's try"], "a job of an older fan-out is read");
        for n in 1..=10 {
            j = j.next_try(Some(format!("server_error: try {n}")));
        }
        assert_eq!(j.reschedules, 10);
        assert_eq!(j.last_try, None);
        assert_eq!(j.tries.len(), KEPT_TRIES);
        assert_eq!(j.tries.first().map(String::as_str), Some("server_error: try 3"));
        assert_eq!(j.tries.last().map(String::as_str), Some("server_error: try 10"));
        let step = crate::trail::Step::Rescheduled { times: j.reschedules, last: None, tries: j.tries.clone() };
        let line = step.describe();
        assert!(line.starts_with("tried again: 10 earlier tries; try 3: server_error: try 3;"), "{line}");
        assert!(line.ends_with("try 10: server_error: try 10"), "{line}");
    }
}
