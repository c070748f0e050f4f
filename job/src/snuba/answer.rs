//! Snuba's answers read as Snuba means them: the rows of a 200, the `quota_allowance` beside
//! them (summary and per-policy details), and every error body mapped to its class. The shapes
//! are Snuba's `snuba/web/views.py` and `snuba/web/db_query.py` (docs/snuba.md).

use std::borrow::Cow;

use chrono::{DateTime, Utc};
use projector_shared::ProjectId;
use serde::Deserialize;
use serde_json::Value;

use crate::error::{Error, RejectionClass};
use crate::query::{Page, PageRequest, Row, ServiceQuota};

/// The policy that guards one referrer's concurrency: the fleet's concern.
pub const REFERRER_POLICY: &str = "ReferrerGuardRailPolicy";
/// The per-project-or-org concurrency policy (22 by default), shared with the org's other traffic.
pub const TENANT_POLICY: &str = "ConcurrentRateLimitAllocationPolicy";
/// `quota_unit` of the concurrency policies.
pub const CONCURRENT_QUERIES: &str = "concurrent_queries";

/// ClickHouse's codes for a query that ran out of time (`TIMEOUT_EXCEEDED`, `TOO_SLOW`).
const CLICKHOUSE_TIMEOUTS: &[i64] = &[159, 160];
/// ClickHouse's `TOO_MANY_SIMULTANEOUS_QUERIES`: the cluster is overloaded.
const CLICKHOUSE_OVERLOADED: i64 = 202;

/// What a 200 answer throttled: nothing, the referrer (the fleet's own early warning), or
/// another policy (bytes scanned), which says nothing about the fleet's concurrency.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Throttle {
    None,
    Referrer { quota_used: i64, threshold: i64 },
    Other { policy: String },
}

#[derive(Deserialize)]
struct Rows<'a> {
    #[serde(borrow)]
    data: Vec<RawRow<'a>>,
    #[serde(default)]
    quota_allowance: Option<Value>,
}

#[derive(Deserialize)]
struct RawRow<'a> {
    project_id: u64,
    /// Read as text and turned into an hour by [`unix_hour`]: chrono's general parser was a fifth
    /// of a worker's CPU at 40 ms queries (one call per row).
    #[serde(borrow)]
    time: Cow<'a, str>,
    accepted: u64,
}

/// A page read from a 200 answer, with what its `quota_allowance` said.
#[derive(Debug)]
pub struct Read {
    pub page: Page,
    pub throttle: Throttle,
}

/// Maps one HTTP answer to the page's rows or to the error class it belongs to. `query` is the
/// SnQL sent, quoted in the error of a query the service refuses as invalid.
pub fn classify(status: u16, body: &str, request: &PageRequest, query: &str) -> Result<Read, Error> {
    match status {
        200 => parse_rows(body, request),
        429 => Err(rejection(body)),
        _ => Err(failure(status, body, request, query)),
    }
}

/// The referrer policy's numbers in an answer's `quota_allowance.details`, when that policy is
/// active there (an inactive one reports `no_units`).
pub fn service_quota(allowance: &Value) -> Option<ServiceQuota> {
    let details = allowance.get("details")?.get(REFERRER_POLICY)?;
    (details.get("quota_unit")?.as_str()? == CONCURRENT_QUERIES).then_some(())?;
    Some(ServiceQuota {
        quota_used: int(details.get("quota_used")?)?,
        rejection_threshold: int(details.get("rejection_threshold")?)?,
        throttle_threshold: int(details.get("throttle_threshold")?)?,
    })
}

fn int(v: &Value) -> Option<i64> {
    v.as_i64().or_else(|| v.as_f64().map(|f| f as i64))
}

fn text(v: Option<&Value>) -> Option<String> {
    v.and_then(Value::as_str).map(str::to_owned)
}

/// What a 200's summary says about throttling, by policy.
fn throttle(allowance: &Value) -> Throttle {
    let Some(summary) = allowance.get("summary") else { return Throttle::None };
    if summary.get("is_throttled").and_then(Value::as_bool) != Some(true) {
        return Throttle::None;
    }
    let by = summary.get("throttled_by");
    let policy = text(by.and_then(|b| b.get("policy"))).unwrap_or_default();
    let unit = text(by.and_then(|b| b.get("quota_unit"))).unwrap_or_default();
    if policy == REFERRER_POLICY && unit == CONCURRENT_QUERIES {
        let number = |k: &str| by.and_then(|b| b.get(k)).and_then(int).unwrap_or(-1);
        return Throttle::Referrer { quota_used: number("quota_used"), threshold: number("throttle_threshold") };
    }
    Throttle::Other { policy: if policy.is_empty() { "unknown".to_owned() } else { policy } }
}

/// A 429: which policy refused, and so whose concern it is.
fn rejection(body: &str) -> Error {
    let parsed: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    let allowance = parsed.get("quota_allowance").cloned().unwrap_or(Value::Null);
    let message = text(parsed.get("error").and_then(|e| e.get("message"))).unwrap_or_else(|| sample(body));
    let by = allowance.get("summary").and_then(|s| s.get("rejected_by"));
    let policy = text(by.and_then(|b| b.get("policy")));
    let unit = text(by.and_then(|b| b.get("quota_unit"))).unwrap_or_default();
    let number = |k: &str| by.and_then(|b| b.get(k)).and_then(int);
    let storage_key = text(by.and_then(|b| b.get("storage_key")));
    let Some(policy) = policy else {
        // Snuba's body with nothing in `rejected_by`: the query ran and was stopped at the byte
        // cap a policy set; back this org off, the fleet is fine. No Snuba body at all: a gateway
        // in front of the service refused, which is about the fleet's pace.
        let snubas = allowance.get("summary").is_some();
        return Error::RateLimited {
            class: if snubas { RejectionClass::Bytes } else { RejectionClass::Referrer },
            policy: if snubas { "byte cap (no policy named)" } else { "a gateway's rate limit (no Snuba body)" }.to_owned(),
            quota_used: None,
            threshold: None,
            storage_key,
            message,
            service: None,
        };
    };
    let explanation = allowance.get("details").and_then(|d| d.get(&policy)).and_then(|d| d.get("explanation"));
    let invalid_tenant = explanation.is_some_and(|e| e.to_string().contains("InvalidTenantsForAllocationPolicy"));
    if invalid_tenant {
        return Error::InvalidTenant { policy, detail: message };
    }
    let class = if policy == REFERRER_POLICY {
        RejectionClass::Referrer
    } else if unit == CONCURRENT_QUERIES || policy == TENANT_POLICY {
        RejectionClass::Tenant
    } else {
        RejectionClass::Bytes
    };
    Error::RateLimited {
        class,
        policy,
        quota_used: number("quota_used"),
        threshold: number("rejection_threshold"),
        storage_key,
        message,
        service: service_quota(&allowance).map(Box::new),
    }
}

/// Any other status: a 400 the query earned (the run stops), a ClickHouse code, or a server error.
/// A 400 whose message names this org's own ids (an org or project id the service will not take)
/// is this org's alone: it fails, and the run goes on.
fn failure(status: u16, body: &str, request: &PageRequest, query: &str) -> Error {
    let parsed: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    let error = parsed.get("error");
    let kind = text(error.and_then(|e| e.get("type"))).unwrap_or_default();
    let message = text(error.and_then(|e| e.get("message"))).unwrap_or_else(|| sample(body));
    let code = error.and_then(|e| e.get("code")).and_then(int);
    match (status, kind.as_str(), code) {
        (_, "clickhouse", Some(code)) if CLICKHOUSE_TIMEOUTS.contains(&code) => Error::ServiceTimeout { code, detail: message },
        (_, "clickhouse", Some(CLICKHOUSE_OVERLOADED)) => Error::ServiceOverloaded { detail: message },
        (400, "invalid_query" | "schema" | "json" | "request", _) if names_this_org(&message, request) => {
            Error::QueryBadRequest { status, detail: detail(&kind, &message, code) }
        }
        // The query itself is wrong: every org would earn the same answer.
        (400, "invalid_query" | "schema" | "json" | "request" | "query-too-long", _) | (404, "dataset", _) => {
            Error::QueryRefused { status, kind, message, query: query.to_owned() }
        }
        (500..=599, _, _) => Error::QueryServer { status, detail: detail(&kind, &message, code) },
        _ => Error::QueryBadRequest { status, detail: detail(&kind, &message, code) },
    }
}

/// Whether `message` names the org's id or one of its page's project ids, as a whole number: the
/// refusal then concerns values only this org sends, not the shape every query shares.
fn names_this_org(message: &str, request: &PageRequest) -> bool {
    let ids: std::collections::HashSet<u64> = std::iter::once(request.org_id.0).chain(request.project_ids.iter().map(|p| p.0)).collect();
    message.split(|c: char| !c.is_ascii_digit()).filter(|n| !n.is_empty()).any(|n| n.parse::<u64>().is_ok_and(|n| ids.contains(&n)))
}

/// `type: message (ClickHouse code N)`, each part only when the body had it.
fn detail(kind: &str, message: &str, code: Option<i64>) -> String {
    let text = if kind.is_empty() { message.to_owned() } else { format!("{kind}: {message}") };
    code.map_or(text.clone(), |c| format!("{text} (ClickHouse code {c})"))
}

fn parse_rows(body: &str, request: &PageRequest) -> Result<Read, Error> {
    let rows: Rows = serde_json::from_str(body).map_err(|e| Error::QueryMalformed { reason: e.to_string(), sample: sample(body) })?;
    let (quota, throttle) = match &rows.quota_allowance {
        Some(allowance) => (service_quota(allowance), throttle(allowance)),
        None => (None, Throttle::None),
    };
    let start_hour = request.start.timestamp().div_euclid(3600);
    let end_hour = request.end.timestamp().div_euclid(3600);
    let mut out = Vec::with_capacity(rows.data.len());
    for row in rows.data {
        let Some(hour) = unix_hour(&row.time) else {
            return Err(Error::QueryMalformed { reason: format!("row time {:?} is not an RFC 3339 time", row.time), sample: sample(body) });
        };
        if hour < start_hour || hour >= end_hour {
            return Err(Error::QueryMalformed {
                reason: format!("row for hour {} lies outside the queried window", row.time),
                sample: sample(body),
            });
        }
        out.push(Row { project_id: ProjectId(row.project_id), hour, count: row.accepted });
    }
    let throttled = matches!(throttle, Throttle::Referrer { .. });
    Ok(Read { page: Page { rows: out, quota, throttled }, throttle })
}

/// The Unix hour (seconds / 3600) of a row's time. Snuba writes `YYYY-MM-DDTHH:MM:SS+00:00`;
/// that form is read by position, any other RFC 3339 form by chrono.
fn unix_hour(time: &str) -> Option<i64> {
    fn number(bytes: &[u8]) -> Option<u32> {
        bytes.iter().try_fold(0u32, |n, b| b.is_ascii_digit().then(|| n * 10 + u32::from(b - b'0')))
    }
    let b = time.as_bytes();
    let utc_suffix = matches!(b.get(19..), Some(b"+00:00" | b"Z"));
    let shaped = b.len() >= 19 && b[4] == b'-' && b[7] == b'-' && matches!(b[10], b'T' | b' ') && b[13] == b':' && b[16] == b':';
    if utc_suffix && shaped {
        let date = chrono::NaiveDate::from_ymd_opt(number(&b[0..4])? as i32, number(&b[5..7])?, number(&b[8..10])?)?;
        let hour = number(&b[11..13])?;
        let (minute, second) = (number(&b[14..16])?, number(&b[17..19])?);
        if hour > 23 || minute > 59 || second > 60 {
            return None;
        }
        return Some(date.and_hms_opt(0, 0, 0)?.and_utc().timestamp().div_euclid(3600) + i64::from(hour));
    }
    time.parse::<DateTime<Utc>>().ok().map(|t| t.timestamp().div_euclid(3600))
}

fn sample(body: &str) -> String {
    projector_shared::job::sample(body.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use projector_shared::OrgId;

    fn request() -> PageRequest {
        PageRequest {
            org_id: OrgId(7),
            project_ids: vec![ProjectId(701), ProjectId(702)],
            start: Utc.with_ymd_and_hms(2026, 11, 22, 10, 0, 0).single().expect("valid"),
            end: Utc.with_ymd_and_hms(2026, 11, 22, 13, 0, 0).single().expect("valid"),
            limit: 10_000,
            offset: 0,
        }
    }

    fn read(status: u16, body: &str) -> Result<Read, Error> {
        classify(status, body, &request(), "MATCH (outcomes) SELECT …")
    }

    const DETAILS: &str = r#""details":{"ReferrerGuardRailPolicy":{"can_run":true,"max_threads":5,"explanation":{},
        "is_throttled":true,"throttle_threshold":66,"rejection_threshold":100,"quota_used":70,"quota_unit":"concurrent_queries",
        "suggestion":"no_suggestion","max_bytes_to_read":0}}"#;

    #[test]
    fn a_throttled_200_gives_rows_the_service_count_and_a_referrer_throttle() {
        let body = format!(
            r#"{{"data":[{{"project_id":701,"time":"2026-11-22T12:00:00+00:00","accepted":4}}],
            "quota_allowance":{{{DETAILS},"summary":{{"threads_used":5,"is_successful":false,"is_rejected":false,"is_throttled":true,
              "throttled_by":{{"policy":"ReferrerGuardRailPolicy","quota_used":70,"quota_unit":"concurrent_queries","throttle_threshold":66,
              "storage_key":"outcomes_hourly"}},"rejected_by":{{}}}}}}}}"#
        );
        let read = read(200, &body).expect("rows, although is_successful is false");
        assert_eq!(read.page.rows, vec![Row { project_id: ProjectId(701), hour: 1_795_348_800 / 3600, count: 4 }]);
        assert_eq!(read.throttle, Throttle::Referrer { quota_used: 70, threshold: 66 });
        assert!(read.page.throttled);
        assert_eq!(read.page.quota, Some(ServiceQuota { quota_used: 70, rejection_threshold: 100, throttle_threshold: 66 }));
    }

    #[test]
    fn a_bytes_throttle_is_not_the_referrers_and_a_passthrough_policy_gives_no_count() {
        let body = r#"{"data":[],"quota_allowance":{"details":{"PassthroughPolicy":{"quota_unit":"no_units","quota_used":0,
            "rejection_threshold":1000000000000,"throttle_threshold":1000000000000}},
            "summary":{"is_throttled":true,"throttled_by":{"policy":"BytesScannedWindowAllocationPolicy","quota_unit":"bytes"}}}}"#;
        let read = read(200, body).expect("rows");
        assert_eq!(read.throttle, Throttle::Other { policy: "BytesScannedWindowAllocationPolicy".into() });
        assert!(!read.page.throttled);
        assert_eq!(read.page.quota, None);
        assert_eq!(self::read(200, r#"{"data":[]}"#).expect("rows").throttle, Throttle::None);
    }

    fn rejected(policy: &str, unit: &str, explanation: &str) -> String {
        format!(
            r#"{{"error":{{"type":"rate-limited","message":"Query on could not be run due to allocation policies, info: ..."}},
            "quota_allowance":{{"details":{{"{policy}":{{"can_run":false,"explanation":{explanation},"quota_unit":"{unit}"}}}},
            "summary":{{"is_successful":false,"is_rejected":true,"rejected_by":{{"policy":"{policy}","quota_used":101,
            "quota_unit":"{unit}","rejection_threshold":100,"storage_key":"outcomes_hourly"}},"throttled_by":{{}}}}}}}}"#
        )
    }

    #[test]
    fn each_429_is_classed_by_the_policy_that_refused() {
        let class = |body: &str| match read(429, body) {
            Err(Error::RateLimited { class, .. }) => Some(class),
            _ => None,
        };
        assert_eq!(class(&rejected("ReferrerGuardRailPolicy", "concurrent_queries", "{}")), Some(RejectionClass::Referrer));
        assert_eq!(class(&rejected("ConcurrentRateLimitAllocationPolicy", "concurrent_queries", "{}")), Some(RejectionClass::Tenant));
        assert_eq!(class(&rejected("BytesScannedWindowAllocationPolicy", "bytes", "{}")), Some(RejectionClass::Bytes));
        let capped = r#"{"error":{"type":"rate-limited","message":"Query scanned more than the allocated amount of bytes"},
            "quota_allowance":{"summary":{"rejected_by":{},"throttled_by":{}}}}"#;
        assert_eq!(class(capped), Some(RejectionClass::Bytes));
        assert_eq!(class("busy"), Some(RejectionClass::Referrer), "a bare 429 (a gateway's) is about the fleet's pace");
        let tenants = rejected("ConcurrentRateLimitAllocationPolicy", "no_units", r#"{"__name__":"InvalidTenantsForAllocationPolicy"}"#);
        assert!(matches!(read(429, &tenants), Err(Error::InvalidTenant { .. })));
        match read(429, &rejected("ReferrerGuardRailPolicy", "concurrent_queries", "{}")) {
            Err(Error::RateLimited { quota_used: Some(101), threshold: Some(100), storage_key: Some(k), .. }) => {
                assert_eq!(k, "outcomes_hourly")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn clickhouse_codes_and_400s_map_to_their_class() {
        let ch = |code: i64| format!(r#"{{"error":{{"type":"clickhouse","message":"DB::Exception: x","code":{code}}}}}"#);
        assert!(matches!(read(500, &ch(159)), Err(Error::ServiceTimeout { code: 159, .. })));
        assert!(matches!(read(500, &ch(160)), Err(Error::ServiceTimeout { code: 160, .. })));
        assert!(matches!(read(500, &ch(202)), Err(Error::ServiceOverloaded { .. })));
        assert!(matches!(read(400, &ch(241)), Err(Error::QueryBadRequest { status: 400, .. })));
        assert!(matches!(read(500, &ch(1000)), Err(Error::QueryServer { status: 500, .. })));
        let invalid = r#"{"error":{"type":"invalid_query","message":"Validation failed for entity outcomes: missing required conditions for org_id"}}"#;
        match read(400, invalid) {
            Err(Error::QueryRefused { kind, message, query, .. }) => {
                assert_eq!(
                    (kind.as_str(), message.as_str()),
                    ("invalid_query", "Validation failed for entity outcomes: missing required conditions for org_id")
                );
                assert!(query.starts_with("MATCH"));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(read(503, "upstream down"), Err(Error::QueryServer { status: 503, .. })));
    }

    #[test]
    fn a_400_that_names_this_orgs_own_ids_fails_this_org_alone() {
        let naming = |text: &str| format!(r#"{{"error":{{"type":"invalid_query","message":"{text}"}}}}"#);
        assert!(matches!(read(400, &naming("org_id 7 is out of range")), Err(Error::QueryBadRequest { status: 400, .. })));
        assert!(matches!(read(400, &naming("unknown project 702")), Err(Error::QueryBadRequest { status: 400, .. })));
        // A number that is only part of another (70, 7020) is not this org's.
        assert!(matches!(read(400, &naming("LIMIT 7020 exceeds 70")), Err(Error::QueryRefused { .. })));
        assert!(matches!(read(400, &naming("missing required conditions for org_id")), Err(Error::QueryRefused { .. })));
    }

    #[test]
    fn rows_outside_the_window_or_with_bad_times_are_malformed() {
        let outside = r#"{"data":[{"project_id":701,"time":"2026-11-22T13:00:00+00:00","accepted":5}]}"#;
        assert!(matches!(read(200, outside), Err(Error::QueryMalformed { .. })));
        let noon = r#"{"data":[{"project_id":701,"time":"noon","accepted":5}]}"#;
        assert!(matches!(read(200, noon), Err(Error::QueryMalformed { .. })));
        let long = "x".repeat(1_000);
        match read(200, &long) {
            Err(Error::QueryMalformed { sample, .. }) => assert_eq!(sample.len(), projector_shared::job::SAMPLE_CHARS),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn row_times_become_hours_the_same_way_chrono_reads_them() {
        for time in ["2026-11-22T12:00:00+00:00", "2026-11-22T12:59:59Z", "1999-12-31T23:00:00+00:00", "2028-02-29T05:30:00+00:00"] {
            let chrono_hour = time.parse::<DateTime<Utc>>().map(|t| t.timestamp().div_euclid(3600)).ok();
            assert_eq!(unix_hour(time), chrono_hour, "{time}");
        }
        assert_eq!(unix_hour("2026-11-22T14:00:00+02:00"), unix_hour("2026-11-22T12:00:00+00:00"));
        for bad in ["2026-11-22T12:00:00", "2026-02-30T12:00:00+00:00", "2026-11-22T24:00:00+00:00", "2026-11-22", "yesterday"] {
            assert_eq!(unix_hour(bad), None, "{bad}");
        }
    }
}
