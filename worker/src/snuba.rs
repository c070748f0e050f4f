//! The Snuba-compatible query client: `POST {url}/{dataset}/snql` over pooled HTTP, the SnQL text of
//! the hourly-counts query, and the mapping of every answer to rows or to a classified error.

use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use projector_shared::ProjectId;
use projector_shared::metrics as m;
use serde::Deserialize;

use crate::error::Error;
use crate::query::{Answer, HistoryRequest, OrgHistory, QuerySource};

/// Where and how to query.
#[derive(Debug, Clone)]
pub struct SnubaSettings {
    /// Base URL, without the dataset path.
    pub url: String,
    pub dataset: String,
    pub referrer: String,
    pub timeout: Duration,
    /// With https: PEM file of the CA to trust besides the system's roots.
    pub tls_ca_file: Option<std::path::PathBuf>,
    /// With https: accept any certificate (staging only).
    pub tls_insecure: bool,
}

/// A pooled HTTP client for one query service; cheap to share across jobs.
#[derive(Debug, Clone)]
pub struct SnubaQuery {
    http: reqwest::Client,
    endpoint: String,
    settings: SnubaSettings,
}

impl SnubaQuery {
    pub fn new(settings: SnubaSettings) -> Result<Self, Error> {
        let unusable = |detail: String| Error::QueryUnreachable { url: settings.url.clone(), detail };
        let mut builder = reqwest::Client::builder()
            .use_rustls_tls()
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout.min(Duration::from_secs(5)))
            .pool_idle_timeout(Duration::from_secs(60))
            .danger_accept_invalid_certs(settings.tls_insecure);
        if let Some(path) = &settings.tls_ca_file {
            let pem = std::fs::read(path).map_err(|e| unusable(format!("cannot read query.tls_ca_file {}: {e}", path.display())))?;
            let ca = reqwest::Certificate::from_pem(&pem)
                .map_err(|e| unusable(format!("query.tls_ca_file {} is not a PEM certificate: {e}", path.display())))?;
            builder = builder.add_root_certificate(ca);
        }
        let http = builder.build().map_err(|e| unusable(format!("cannot build the HTTP client: {e}")))?;
        let endpoint = format!("{}/{}/snql", settings.url.trim_end_matches('/'), settings.dataset);
        Ok(SnubaQuery { http, endpoint, settings })
    }

    async fn send(&self, request: &HistoryRequest) -> Result<Answer, Error> {
        let body = serde_json::json!({
            "query": snql(&self.settings.dataset, request),
            "dataset": self.settings.dataset,
            "app_id": "projector",
            "tenant_ids": { "organization_id": request.org_id.0, "referrer": self.settings.referrer },
            "parent_api": "projector.spike_projection",
        });
        let response = self
            .http
            .post(&self.endpoint)
            .header("referer", &self.settings.referrer)
            .json(&body)
            .send()
            .await
            .map_err(|e| self.transport_error(e))?;
        let status = response.status().as_u16();
        let body = response.bytes().await.map_err(|e| self.transport_error(e))?;
        // Strict UTF-8 is a fast check; only a broken body pays for the lossy copy.
        let text = match std::str::from_utf8(&body) {
            Ok(text) => std::borrow::Cow::Borrowed(text),
            Err(_) => String::from_utf8_lossy(&body),
        };
        let (history, throttled) = classify_answer(status, &text, request)?;
        if let Some(t) = &throttled {
            metrics::counter!(m::QUERY_THROTTLED_TOTAL).increment(1);
            projector_shared::adaptive::SIGNALS.throttled();
            tracing::debug!(
                org_id = %request.org_id, policy = t.policy.as_deref().unwrap_or("-"), quota_used = t.quota_used,
                throttle_threshold = t.threshold, "query throttled by the query service (early warning)"
            );
        }
        Ok(Answer { history, throttled: throttled.is_some() })
    }

    fn transport_error(&self, e: reqwest::Error) -> Error {
        if e.is_timeout() {
            Error::QueryTimeout(self.settings.timeout)
        } else {
            Error::QueryUnreachable { url: self.endpoint.clone(), detail: error_chain(&e) }
        }
    }
}

impl QuerySource for SnubaQuery {
    fn hourly_counts(&self, request: &HistoryRequest) -> BoxFuture<'_, Result<OrgHistory, Error>> {
        let request = request.clone();
        Box::pin(async move { Ok(self.answer(&request).await?.history) })
    }

    fn answer<'a>(&'a self, request: &'a HistoryRequest) -> BoxFuture<'a, Result<Answer, Error>> {
        Box::pin(async move {
            // The pipeline times every query (any source); this counts what only HTTP can go wrong.
            let result = self.send(request).await;
            if let Err(e) = &result {
                metrics::counter!(m::QUERY_ERRORS_TOTAL, "kind" => e.reason()).increment(1);
                if matches!(e, Error::RateLimited { .. }) {
                    metrics::counter!(m::QUERY_RATE_LIMITED_TOTAL).increment(1);
                }
                tracing::warn!(org_id = %request.org_id, endpoint = %self.endpoint, kind = e.reason(), error = %e, "query failed");
            }
            result
        })
    }
}

/// The SnQL of one organization's hourly counts per project over the request's window.
pub fn snql(dataset: &str, request: &HistoryRequest) -> String {
    let start = request.end - chrono::TimeDelta::hours(request.hours as i64);
    let projects = if request.project_ids.is_empty() {
        String::new()
    } else {
        let ids: Vec<String> = request.project_ids.iter().map(|p| p.0.to_string()).collect();
        format!(" AND project_id IN tuple({})", ids.join(", "))
    };
    format!(
        "MATCH ({dataset}) SELECT count() AS count BY project_id, time \
         WHERE org_id = {org}{projects} AND timestamp >= toDateTime('{start}') AND timestamp < toDateTime('{end}') \
         ORDER BY time ASC GRANULARITY 3600",
        org = request.org_id.0,
        start = start.format("%Y-%m-%dT%H:%M:%S"),
        end = request.end.format("%Y-%m-%dT%H:%M:%S"),
    )
}

#[derive(Deserialize)]
struct Rows<'a> {
    #[serde(borrow)]
    data: Vec<Row<'a>>,
    #[serde(default)]
    quota_allowance: Option<QuotaAllowance>,
}

/// Snuba's early warning on a 200 answer (`quota_allowance.summary.is_throttled`): the referrer is
/// above a policy's throttle threshold (`ReferrerGuardRailPolicy`: limit / 1.5 concurrent queries)
/// and its queries get fewer ClickHouse threads. It rejects only above the limit.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Throttled {
    pub policy: Option<String>,
    pub quota_used: Option<u64>,
    pub threshold: Option<u64>,
}

#[derive(Deserialize)]
struct Row<'a> {
    project_id: u64,
    /// Read as text and turned into an hour by [`unix_hour`]: chrono's general parser was a fifth
    /// of a worker's CPU at 40 ms queries (one call per row).
    #[serde(borrow)]
    time: std::borrow::Cow<'a, str>,
    count: u64,
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

#[derive(Deserialize, Default)]
struct ErrorBody {
    #[serde(default)]
    error: ErrorDetail,
    #[serde(default)]
    quota_allowance: Option<QuotaAllowance>,
}

#[derive(Deserialize, Default)]
struct ErrorDetail {
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    message: Option<String>,
}

#[derive(Deserialize)]
struct QuotaAllowance {
    summary: Option<QuotaSummary>,
}

#[derive(Deserialize)]
struct QuotaSummary {
    rejected_by: Option<RejectedBy>,
    #[serde(default)]
    is_throttled: bool,
    #[serde(default)]
    throttled_by: Option<ThrottledBy>,
}

#[derive(Deserialize)]
struct ThrottledBy {
    policy: Option<String>,
    quota_used: Option<u64>,
    throttle_threshold: Option<u64>,
}

#[derive(Deserialize)]
struct RejectedBy {
    policy: Option<String>,
    quota_used: Option<u64>,
    rejection_threshold: Option<u64>,
}

/// Maps one HTTP answer to the request's history or to the error class it belongs to.
pub fn classify(status: u16, body: &str, request: &HistoryRequest) -> Result<OrgHistory, Error> {
    classify_answer(status, body, request).map(|(history, _)| history)
}

/// [`classify`], plus Snuba's throttle warning when a 200 answer carries one.
pub fn classify_answer(status: u16, body: &str, request: &HistoryRequest) -> Result<(OrgHistory, Option<Throttled>), Error> {
    match status {
        200 => parse_rows(body, request),
        429 => {
            // A 429 is a rate limit whatever its body says; the body only adds the policy details.
            let rejected = serde_json::from_str::<ErrorBody>(body)
                .ok()
                .and_then(|b| b.quota_allowance)
                .and_then(|q| q.summary)
                .and_then(|s| s.rejected_by);
            Err(Error::RateLimited {
                policy: rejected.as_ref().and_then(|r| r.policy.clone()),
                quota_used: rejected.as_ref().and_then(|r| r.quota_used),
                threshold: rejected.as_ref().and_then(|r| r.rejection_threshold),
            })
        }
        500..=599 => Err(Error::QueryServer { status, detail: error_message(body) }),
        _ => Err(Error::QueryBadRequest { status, detail: error_message(body) }),
    }
}

fn parse_rows(body: &str, request: &HistoryRequest) -> Result<(OrgHistory, Option<Throttled>), Error> {
    let rows: Rows = serde_json::from_str(body).map_err(|e| Error::QueryMalformed { reason: e.to_string(), sample: sample(body) })?;
    let throttled = rows.quota_allowance.and_then(|q| q.summary).filter(|s| s.is_throttled).map(|s| {
        let by = s.throttled_by;
        Throttled {
            policy: by.as_ref().and_then(|b| b.policy.clone()),
            quota_used: by.as_ref().and_then(|b| b.quota_used),
            threshold: by.as_ref().and_then(|b| b.throttle_threshold),
        }
    });
    let start_hour = request.end.timestamp().div_euclid(3600) - request.hours as i64;
    let mut history: OrgHistory = request.project_ids.iter().map(|p| (*p, vec![0; request.hours])).collect();
    for row in rows.data {
        let Some(hour) = unix_hour(&row.time) else {
            return Err(Error::QueryMalformed { reason: format!("row time {:?} is not an RFC 3339 time", row.time), sample: sample(body) });
        };
        let offset = hour - start_hour;
        let Some(slot) = usize::try_from(offset).ok().filter(|o| *o < request.hours) else {
            return Err(Error::QueryMalformed {
                reason: format!("row for hour {} lies outside the queried window", row.time),
                sample: sample(body),
            });
        };
        // Snuba leaves out hours without events; they stay 0.
        history.entry(ProjectId(row.project_id)).or_insert_with(|| vec![0; request.hours])[slot] += row.count;
    }
    Ok((history, throttled))
}

/// The `error.type: error.message` of an error body, or a sample of the body.
fn error_message(body: &str) -> String {
    match serde_json::from_str::<ErrorBody>(body) {
        Ok(ErrorBody { error: ErrorDetail { kind, message }, .. }) if kind.is_some() || message.is_some() => {
            format!("{}: {}", kind.unwrap_or_default(), message.unwrap_or_default())
        }
        _ => sample(body),
    }
}

fn sample(body: &str) -> String {
    projector_shared::job::sample(body.as_bytes())
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use projector_shared::OrgId;

    fn request() -> HistoryRequest {
        HistoryRequest {
            org_id: OrgId(7),
            project_ids: vec![ProjectId(701), ProjectId(702)],
            end: Utc.with_ymd_and_hms(2026, 11, 22, 13, 0, 0).single().expect("valid"),
            hours: 3,
        }
    }

    #[test]
    fn a_throttled_200_answer_is_read_as_the_early_warning_and_still_gives_rows() {
        let body = r#"{"data":[{"project_id":701,"time":"2026-11-22T12:00:00+00:00","count":4}],
            "quota_allowance":{"summary":{"is_successful":true,"is_rejected":false,"is_throttled":true,
              "throttled_by":{"policy":"ReferrerGuardRailPolicy","quota_used":70,"throttle_threshold":66},"rejected_by":{}}}}"#;
        let (h, throttled) = classify_answer(200, body, &request()).expect("rows");
        assert_eq!(h[&ProjectId(701)], vec![0, 0, 4]);
        let t = throttled.expect("throttled");
        assert_eq!((t.policy.as_deref(), t.quota_used, t.threshold), (Some("ReferrerGuardRailPolicy"), Some(70), Some(66)));
        let calm = r#"{"data":[],"quota_allowance":{"summary":{"is_throttled":false,"throttled_by":{}}}}"#;
        assert_eq!(classify_answer(200, calm, &request()).expect("rows").1, None);
        assert_eq!(classify_answer(200, r#"{"data":[]}"#, &request()).expect("rows").1, None, "no quota_allowance at all");
    }

    #[test]
    fn rows_fill_their_hour_and_missing_hours_stay_zero() {
        let body = r#"{"data":[{"project_id":701,"time":"2026-11-22T11:00:00+00:00","count":5},
                               {"project_id":701,"time":"2026-11-22T12:00:00+00:00","count":9}]}"#;
        let h = classify(200, body, &request()).expect("rows");
        assert_eq!(h[&ProjectId(701)], vec![0, 5, 9]);
        assert_eq!(h[&ProjectId(702)], vec![0, 0, 0], "a project with no events is still projected");
    }

    #[test]
    fn a_row_outside_the_window_is_a_malformed_answer() {
        let body = r#"{"data":[{"project_id":701,"time":"2026-11-22T13:00:00+00:00","count":5}]}"#;
        assert!(matches!(classify(200, body, &request()), Err(Error::QueryMalformed { .. })));
    }

    #[test]
    fn a_429_carries_the_policy_fields_and_a_bare_429_is_still_a_rate_limit() {
        let body = r#"{"error":{"type":"rate-limited","message":"query on referrer x could not be run"},
            "quota_allowance":{"summary":{"rejected_by":{"policy":"ConcurrentRateLimitAllocationPolicy","quota_used":101,"rejection_threshold":100,"quota_unit":"concurrent_queries"}}}}"#;
        match classify(429, body, &request()) {
            Err(Error::RateLimited { policy, quota_used, threshold }) => {
                assert_eq!(policy.as_deref(), Some("ConcurrentRateLimitAllocationPolicy"));
                assert_eq!((quota_used, threshold), (Some(101), Some(100)));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(classify(429, "busy", &request()), Err(Error::RateLimited { policy: None, .. })));
    }

    #[test]
    fn statuses_map_to_their_error_class() {
        let server = classify(503, r#"{"error":{"type":"clickhouse","message":"too many parts"}}"#, &request());
        assert!(matches!(&server, Err(Error::QueryServer { status: 503, detail }) if detail == "clickhouse: too many parts"));
        assert!(matches!(classify(400, "{}", &request()), Err(Error::QueryBadRequest { status: 400, .. })));
        let long = "x".repeat(1_000);
        match classify(200, &long, &request()) {
            Err(Error::QueryMalformed { sample, .. }) => assert_eq!(sample.len(), projector_shared::job::SAMPLE_CHARS),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_query_names_org_projects_and_window() {
        let q = snql("events", &request());
        assert!(q.starts_with("MATCH (events) SELECT count() AS count BY project_id, time"), "{q}");
        assert!(q.contains("org_id = 7 AND project_id IN tuple(701, 702)"), "{q}");
        assert!(q.contains("timestamp >= toDateTime('2026-11-22T10:00:00') AND timestamp < toDateTime('2026-11-22T13:00:00')"), "{q}");
    }

    #[test]
    fn row_times_become_hours_the_same_way_chrono_reads_them() {
        for time in ["2026-11-22T12:00:00+00:00", "2026-11-22T12:59:59Z", "1999-12-31T23:00:00+00:00", "2028-02-29T05:30:00+00:00"] {
            let chrono_hour = time.parse::<DateTime<Utc>>().map(|t| t.timestamp().div_euclid(3600)).ok();
            assert_eq!(unix_hour(time), chrono_hour, "{time}");
        }
        // Another offset goes through chrono: 14:00+02:00 is 12:00 UTC.
        assert_eq!(unix_hour("2026-11-22T14:00:00+02:00"), unix_hour("2026-11-22T12:00:00+00:00"));
        for bad in [
            "2026-11-22T12:00:00",
            "2026-02-30T12:00:00+00:00",
            "2026-11-22T24:00:00+00:00",
            "2026-11-22",
            "yesterday",
            "2026-1a-22T12:00:00Z",
        ] {
            assert_eq!(unix_hour(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_row_whose_time_is_not_a_time_is_a_malformed_answer() {
        let body = r#"{"data":[{"project_id":701,"time":"noon","count":5}]}"#;
        assert!(matches!(classify(200, body, &request()), Err(Error::QueryMalformed { .. })));
    }
}
