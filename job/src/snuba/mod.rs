//! The Snuba query client: `POST {url}/{dataset}/snql` over pooled HTTP, one page of accepted
//! outcomes per call, every answer read as Snuba means it (docs/snuba.md).

mod answer;
pub mod snql;

use std::time::Duration;

use futures::future::BoxFuture;
use projector_shared::metrics as m;

pub use self::answer::{Read, Throttle, classify, service_quota};
use crate::error::{Error, RejectionClass};
use crate::query::{Page, PageRequest, QuerySource};

/// Where and how to query.
#[derive(Debug, Clone)]
pub struct SnubaSettings {
    /// Base URL, without the dataset path.
    pub url: String,
    pub dataset: String,
    pub referrer: String,
    /// Outcome categories summed into the accepted volume (`query.categories`).
    pub categories: Vec<u8>,
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
        let unusable = |detail: String| Error::QueryUnreachable { url: settings.url.clone(), detail, sent: false };
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

    /// The SnQL this client sends for `request`.
    pub fn snql(&self, request: &PageRequest) -> String {
        snql::page(&self.settings.dataset, &self.settings.categories, request)
    }

    async fn send(&self, request: &PageRequest) -> Result<Page, Error> {
        let query = self.snql(request);
        // Only keys of Snuba's request schema (`snuba/request/schema.py`): it refuses any other.
        let body = serde_json::json!({
            "query": query,
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
        let read = classify(status, &text, request, &query)?;
        match &read.throttle {
            Throttle::None => {}
            Throttle::Referrer { quota_used, threshold } => {
                metrics::counter!(m::QUERY_THROTTLED_TOTAL).increment(1);
                projector_shared::adaptive::SIGNALS.throttled();
                tracing::debug!(org_id = %request.org_id, quota_used, throttle_threshold = threshold, "referrer throttled by the query service (early warning)");
            }
            Throttle::Other { policy } => {
                metrics::counter!(m::QUERY_THROTTLED_OTHER_TOTAL, "policy" => policy_label(policy)).increment(1);
            }
        }
        if let Some(q) = &read.page.quota {
            projector_shared::service::heard(*q);
            let referrer = self.settings.referrer.clone();
            metrics::gauge!(m::SERVICE_QUOTA_USED, "referrer" => referrer.clone()).set(q.quota_used as f64);
            metrics::gauge!(m::SERVICE_REJECTION_THRESHOLD, "referrer" => referrer.clone()).set(q.rejection_threshold as f64);
            metrics::gauge!(m::SERVICE_HEARD_SECONDS, "referrer" => referrer).set(chrono::Utc::now().timestamp_millis() as f64 / 1000.0);
        }
        Ok(read.page)
    }

    fn transport_error(&self, e: reqwest::Error) -> Error {
        if e.is_timeout() {
            Error::QueryTimeout(self.settings.timeout)
        } else {
            // A connect error means the request never left: the service never ran the query.
            Error::QueryUnreachable { url: self.endpoint.clone(), detail: error_chain(&e), sent: !e.is_connect() }
        }
    }
}

/// Snuba's policy class names, as a bounded label: any other name counts as `other`.
fn policy_label(policy: &str) -> &'static str {
    const KNOWN: &[&str] = &[
        "BytesScannedWindowAllocationPolicy",
        "BytesScannedRejectingPolicy",
        "ConcurrentRateLimitAllocationPolicy",
        "CrossOrgQueryAllocationPolicy",
    ];
    KNOWN.iter().find(|k| **k == policy).copied().unwrap_or("other")
}

impl QuerySource for SnubaQuery {
    fn page<'a>(&'a self, request: &'a PageRequest) -> BoxFuture<'a, Result<Page, Error>> {
        Box::pin(async move {
            // The pipeline times every query (any source); this counts what only HTTP can go wrong.
            let result = self.send(request).await;
            if let Err(e) = &result {
                metrics::counter!(m::QUERY_ERRORS_TOTAL, "kind" => e.reason()).increment(1);
                if matches!(e, Error::RateLimited { class: RejectionClass::Referrer, .. }) {
                    metrics::counter!(m::QUERY_RATE_LIMITED_TOTAL).increment(1);
                }
                tracing::warn!(org_id = %request.org_id, endpoint = %self.endpoint, kind = e.reason(), error = %e, "query failed");
            }
            result
        })
    }
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
