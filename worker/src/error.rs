//! The one error type of `projector-worker`; each variant says whether retrying could help.

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "query rate limited by the analytics store (policy {policy:?}, quota used {quota_used:?}, threshold {threshold:?}); lower slots.limit or check other referrers on the same storage"
    )]
    RateLimited { policy: Option<String>, quota_used: Option<u64>, threshold: Option<u64> },

    #[error("query service answered {status}: {detail}")]
    QueryServer { status: u16, detail: String },

    #[error("query timed out after {0:?} (raise query.timeout or check the query service)")]
    QueryTimeout(std::time::Duration),

    #[error("query service at {url} unreachable: {detail} (check query.url and that the service is up)")]
    QueryUnreachable { url: String, detail: String },

    #[error("query service refused the query as bad ({status}): {detail}")]
    QueryBadRequest { status: u16, detail: String },

    #[error("query service returned a body that cannot be read ({reason}); starts with {sample:?}")]
    QueryMalformed { reason: String, sample: String },

    #[error("the slot lease was lost while querying; the query was abandoned")]
    LeaseLost,

    #[error("cannot write projections to {target}: {detail}")]
    Sink { target: String, detail: String },

    #[error(
        "projections of org {org_id} refused as stale: this write (hour {first_hour}, fencing token {token}) is older than the stored one (hour {stored_first_hour}, token {stored_token}); a newer run or lease already wrote them"
    )]
    StaleWrite { org_id: projector_shared::OrgId, first_hour: i64, token: u64, stored_first_hour: i64, stored_token: u64 },

    #[error("cannot serve metrics on {addr}: {detail}")]
    Metrics { addr: std::net::SocketAddr, detail: String },

    #[error(transparent)]
    Shared(#[from] projector_shared::Error),
}

/// Every `reason` label of `run_spike_projection_error_total`: [`Error::reason`]'s values plus
/// `malformed_job` (a payload that is not a job), `unknown_run` and `not_planned` (a job refused
/// because its run or its org is not in the run record). Registered at zero at start.
pub const REASONS: &[&str] = &[
    "rate_limited",
    "server_error",
    "timeout",
    "unreachable",
    "bad_request",
    "malformed_body",
    "lease_lost",
    "sink",
    "stale_write",
    "slot_unavailable",
    "internal",
    "malformed_job",
    "unknown_run",
    "not_planned",
];

/// Every `kind` label of `projector_query_errors_total`: the query errors' reasons.
pub const QUERY_ERROR_KINDS: &[&str] = &["rate_limited", "server_error", "timeout", "unreachable", "bad_request", "malformed_body"];

impl Error {
    /// Whether the same job could succeed if tried again later.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::RateLimited { .. }
            | Error::QueryServer { .. }
            | Error::QueryUnreachable { .. }
            | Error::QueryTimeout(_)
            | Error::LeaseLost => true,
            Error::Sink { .. } => true,
            Error::Metrics { .. } => false,
            Error::QueryBadRequest { .. } | Error::QueryMalformed { .. } | Error::StaleWrite { .. } => false,
            Error::Shared(e) => e.is_retryable(),
        }
    }

    /// The bounded `reason` label for `run_spike_projection_error_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::RateLimited { .. } => "rate_limited",
            Error::QueryServer { .. } => "server_error",
            Error::QueryTimeout(_) => "timeout",
            Error::QueryUnreachable { .. } => "unreachable",
            Error::QueryBadRequest { .. } => "bad_request",
            Error::QueryMalformed { .. } => "malformed_body",
            Error::LeaseLost => "lease_lost",
            Error::Sink { .. } => "sink",
            Error::StaleWrite { .. } => "stale_write",
            Error::Metrics { .. } => "internal",
            Error::Shared(projector_shared::Error::SlotBackendUnavailable { .. }) => "slot_unavailable",
            Error::Shared(_) => "internal",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_is_registered() {
        let samples = [
            Error::RateLimited { policy: None, quota_used: None, threshold: None },
            Error::QueryServer { status: 500, detail: String::new() },
            Error::QueryTimeout(std::time::Duration::ZERO),
            Error::QueryUnreachable { url: String::new(), detail: String::new() },
            Error::QueryBadRequest { status: 400, detail: String::new() },
            Error::QueryMalformed { reason: String::new(), sample: String::new() },
            Error::LeaseLost,
            Error::Sink { target: String::new(), detail: String::new() },
            Error::StaleWrite { org_id: projector_shared::OrgId(1), first_hour: 0, token: 0, stored_first_hour: 0, stored_token: 0 },
            Error::Metrics { addr: std::net::SocketAddr::from(([127, 0, 0, 1], 0)), detail: String::new() },
            Error::Shared(projector_shared::Error::SlotBackendUnavailable { detail: String::new() }),
        ];
        for e in &samples {
            assert!(REASONS.contains(&e.reason()), "{} is not in REASONS", e.reason());
        }
        for kind in QUERY_ERROR_KINDS {
            assert!(REASONS.contains(kind), "{kind}");
        }
    }
}
