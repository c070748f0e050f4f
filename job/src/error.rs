//! The one error type of `projector-job`; each variant says whether retrying could help, and its advice.

/// Whose concern a 429 is, by the policy that refused (docs/snuba.md, "Rejections").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectionClass {
    /// `ReferrerGuardRailPolicy`: the fleet has too many queries in flight; it feeds the limits.
    Referrer,
    /// The per-project-or-org concurrency policy: this org is busy elsewhere; only it waits.
    Tenant,
    /// A bytes-scanned policy, or a query stopped at its byte cap: this org backs off for the
    /// policy's window.
    Bytes,
}

impl RejectionClass {
    /// The `reason` label of this class.
    pub fn reason(self) -> &'static str {
        match self {
            RejectionClass::Referrer => "rate_limited",
            RejectionClass::Tenant => "rate_limited_org",
            RejectionClass::Bytes => "rate_limited_bytes",
        }
    }

    fn advice(self) -> &'static str {
        match self {
            RejectionClass::Referrer => "lower slots.limit, or look for other callers of this referrer",
            RejectionClass::Tenant => "the org's other traffic holds its share; only this org is tried again later",
            RejectionClass::Bytes => "the org scanned its byte budget; it is tried again after the policy's window",
        }
    }
}

/// `quota used 101 of 100` when the service said both.
fn numbers(quota_used: &Option<i64>, threshold: &Option<i64>) -> String {
    match (quota_used, threshold) {
        (Some(u), Some(t)) => format!(", {u} in use against a limit of {t}"),
        (Some(u), None) => format!(", {u} in use"),
        _ => String::new(),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("query refused by the query service's {policy}{numbers}; {advice}", numbers = numbers(quota_used, threshold), advice = class.advice())]
    RateLimited {
        class: RejectionClass,
        policy: String,
        quota_used: Option<i64>,
        threshold: Option<i64>,
        storage_key: Option<String>,
        message: String,
        /// The referrer policy's numbers in the refusal, when the service sent them.
        service: Option<Box<projector_shared::service::ServiceQuota>>,
    },

    #[error("the query service refused the tenant ids Projector sent ({policy}): {detail}; check query.referrer and the org id")]
    InvalidTenant { policy: String, detail: String },

    #[error("the query ran out of time in ClickHouse (code {code}): {detail}")]
    ServiceTimeout { code: i64, detail: String },

    #[error("ClickHouse is overloaded (too many simultaneous queries, code 202): {detail}")]
    ServiceOverloaded { detail: String },

    #[error("the query service refused Projector's query ({status} {kind}): {message}; the run is stopped. Query: {query}")]
    QueryRefused { status: u16, kind: String, message: String, query: String },

    #[error("query service answered {status}: {detail}")]
    QueryServer { status: u16, detail: String },

    #[error("query timed out after {0:?} (raise query.timeout or check the query service)")]
    QueryTimeout(std::time::Duration),

    #[error("query service at {url} unreachable: {detail} (check query.url and that the service is up)")]
    QueryUnreachable {
        url: String,
        detail: String,
        /// The request may have reached the service before the connection failed (false only
        /// when no connection was made: the query provably never ran there).
        sent: bool,
    },

    #[error("query service refused this org's query ({status}): {detail}")]
    QueryBadRequest { status: u16, detail: String },

    #[error("query service returned a body that cannot be read ({reason}); starts with {sample:?}")]
    QueryMalformed { reason: String, sample: String },

    #[error("the slot lease was lost while querying; the query was abandoned")]
    LeaseLost,

    #[error("the org's history could not be read whole: {detail}")]
    Incomplete { detail: String },

    #[error("the run was stopped before this org was queried: {reason}")]
    RunStopped { reason: String },

    #[error("cannot write projections to {target}: {detail}")]
    Sink { target: String, detail: String },

    #[error(
        "projections of org {org_id} refused as stale: this write (hour {first_hour}, fencing token {token}) is older than the stored one (hour {stored_first_hour}, token {stored_token}); a newer run or lease already wrote them"
    )]
    StaleWrite { org_id: projector_shared::OrgId, first_hour: i64, token: u64, stored_first_hour: i64, stored_token: u64 },

    #[error(transparent)]
    Shared(#[from] projector_shared::Error),
}

projector_shared::from_shared_errors!(Error, Error::Shared);

/// Every `reason` label of `run_spike_projection_error_total`: [`Error::reason`]'s values plus
/// `malformed_job` (a payload that is not a job), `unknown_run` and `not_planned` (a job refused
/// because its run or its org is not in the run record). Registered at zero at start.
pub const REASONS: &[&str] = &[
    // The query errors first: QUERY_ERROR_KINDS is this head.
    "rate_limited",
    "rate_limited_org",
    "rate_limited_bytes",
    "invalid_tenant",
    "overloaded",
    "invalid_query",
    "server_error",
    "timeout",
    "unreachable",
    "bad_request",
    "malformed_body",
    "run_stopped",
    "incomplete",
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
pub const QUERY_ERROR_KINDS: &[&str] = REASONS.split_at(11).0;

impl Error {
    /// What to do about this error, where its message ends with advice: the trail keeps it as
    /// its own field ([`Why::with_advice`](projector_shared::trail::Why::with_advice)).
    pub fn advice(&self) -> Option<&'static str> {
        match self {
            Error::RateLimited { class, .. } => Some(class.advice()),
            Error::InvalidTenant { .. } => Some("check query.referrer and the org id"),
            Error::QueryTimeout(_) => Some("raise query.timeout or check the query service"),
            Error::QueryUnreachable { .. } => Some("check query.url and that the service is up"),
            Error::Shared(e) => e.redis_failure().map(|r| r.failure().advice()),
            _ => None,
        }
    }

    /// Why an org ended with this error, for its trail: kind, message and advice apart.
    pub fn why(&self) -> projector_shared::trail::Why {
        let message = self.to_string();
        match self.advice() {
            Some(advice) => projector_shared::trail::Why::with_advice(self.reason(), &message, advice),
            None => projector_shared::trail::Why::new(self.reason(), message),
        }
    }

    /// Whether the query that ended in this error may still be running at the service: no answer
    /// came (a client-side timeout, a connection lost after the request went out, a lost lease).
    /// An answer of any status, or a connection never made, means nothing runs there.
    pub fn query_may_still_run(&self) -> bool {
        match self {
            Error::QueryTimeout(_) | Error::LeaseLost => true,
            Error::QueryUnreachable { sent, .. } => *sent,
            _ => false,
        }
    }

    /// Whether the same job could succeed if tried again later.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::RateLimited { .. }
            | Error::ServiceTimeout { .. }
            | Error::ServiceOverloaded { .. }
            | Error::QueryServer { .. }
            | Error::QueryUnreachable { .. }
            | Error::QueryTimeout(_)
            | Error::LeaseLost => true,
            Error::Sink { .. } => true,
            Error::Incomplete { .. } => true,
            Error::QueryBadRequest { .. }
            | Error::QueryRefused { .. }
            | Error::InvalidTenant { .. }
            | Error::RunStopped { .. }
            | Error::QueryMalformed { .. }
            | Error::StaleWrite { .. } => false,
            Error::Shared(e) => e.is_retryable(),
        }
    }

    /// The bounded `reason` label for `run_spike_projection_error_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::RateLimited { class, .. } => class.reason(),
            Error::InvalidTenant { .. } => "invalid_tenant",
            Error::ServiceTimeout { .. } => "timeout",
            Error::ServiceOverloaded { .. } => "overloaded",
            Error::QueryRefused { .. } => "invalid_query",
            Error::RunStopped { .. } => "run_stopped",
            Error::Incomplete { .. } => "incomplete",
            Error::QueryServer { .. } => "server_error",
            Error::QueryTimeout(_) => "timeout",
            Error::QueryUnreachable { .. } => "unreachable",
            Error::QueryBadRequest { .. } => "bad_request",
            Error::QueryMalformed { .. } => "malformed_body",
            Error::LeaseLost => "lease_lost",
            Error::Sink { .. } => "sink",
            Error::StaleWrite { .. } => "stale_write",
            Error::Shared(projector_shared::Error::Limits(projector_shared::LimitsError::SlotBackendUnavailable { .. })) => {
                "slot_unavailable"
            }
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
            Error::RateLimited {
                class: RejectionClass::Referrer,
                policy: String::new(),
                quota_used: None,
                threshold: None,
                storage_key: None,
                message: String::new(),
                service: None,
            },
            Error::InvalidTenant { policy: String::new(), detail: String::new() },
            Error::ServiceTimeout { code: 159, detail: String::new() },
            Error::ServiceOverloaded { detail: String::new() },
            Error::QueryRefused { status: 400, kind: String::new(), message: String::new(), query: String::new() },
            Error::RunStopped { reason: String::new() },
            Error::Incomplete { detail: String::new() },
            Error::QueryServer { status: 500, detail: String::new() },
            Error::QueryTimeout(std::time::Duration::ZERO),
            Error::QueryUnreachable { url: String::new(), detail: String::new(), sent: false },
            Error::QueryBadRequest { status: 400, detail: String::new() },
            Error::QueryMalformed { reason: String::new(), sample: String::new() },
            Error::LeaseLost,
            Error::Sink { target: String::new(), detail: String::new() },
            Error::StaleWrite { org_id: projector_shared::OrgId(1), first_hour: 0, token: 0, stored_first_hour: 0, stored_token: 0 },
            Error::Shared(projector_shared::Error::Limits(projector_shared::LimitsError::SlotBackendUnavailable { detail: String::new() })),
        ];
        for e in &samples {
            assert!(REASONS.contains(&e.reason()), "{} is not in REASONS", e.reason());
        }
        for kind in QUERY_ERROR_KINDS {
            assert!(REASONS.contains(kind), "{kind}");
        }
    }

    #[test]
    fn a_reason_keeps_its_numbers_and_its_advice_apart_and_never_prints_debug() {
        let refused = Error::RateLimited {
            class: RejectionClass::Referrer,
            policy: "ConcurrentRateLimitAllocationPolicy".into(),
            quota_used: Some(21),
            threshold: Some(20),
            storage_key: None,
            message: String::new(),
            service: None,
        };
        let why = refused.why();
        assert_eq!(why.kind, "rate_limited");
        assert_eq!(
            why.message,
            "query refused by the query service's ConcurrentRateLimitAllocationPolicy, 21 in use against a limit of 20"
        );
        assert_eq!(why.advice, "lower slots.limit, or look for other callers of this referrer");
        let timeout = Error::QueryTimeout(std::time::Duration::from_secs(30)).why();
        assert_eq!(
            (timeout.message.as_str(), timeout.advice.as_str()),
            ("query timed out after 30s", "raise query.timeout or check the query service")
        );
        for why in [why, timeout] {
            assert!(!format!("{} {}", why.message, why.advice).contains("Some("), "{why:?}");
        }
    }
}
