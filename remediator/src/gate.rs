//! The gate client. Anything but a clear grant — the gate down, an error, a malformed answer —
//! is a denial: the risky operation does not happen (fail closed).

use std::time::Duration;

use firebreak_schema::{Operation, PermitRequest, PermitResponse};
use uuid::Uuid;

/// Talks to the gate's HTTP API.
#[derive(Clone)]
pub struct GateClient {
    base: String,
    http: reqwest::Client,
}

impl GateClient {
    /// A client for the gate at `base` (`http://127.0.0.1:8181`).
    pub fn new(base: &str) -> Self {
        let http = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap_or_default();
        Self { base: base.trim_end_matches('/').to_owned(), http }
    }

    /// Asks for a permit. Never errors: failures come back as denials saying why.
    pub async fn request(&self, operation: Operation, cluster: &str, node: &str, requester: &str) -> PermitResponse {
        let req =
            PermitRequest { operation, cluster: cluster.into(), node: Some(node.into()), requester: requester.into() };
        let denied = |why: String| PermitResponse {
            granted: false,
            permit_id: None,
            reason: format!("gate unavailable, failing closed: {why}"),
            limit: Some("gate_unavailable".into()),
            measured: None,
            threshold: None,
            retry_after_s: Some(2),
            expires_at: None,
        };
        let resp = match self.http.post(format!("{}/api/v1/permits", self.base)).json(&req).send().await {
            Ok(r) => r,
            Err(e) => return denied(e.to_string()),
        };
        if !resp.status().is_success() {
            let code = resp.status();
            let body = resp.text().await.unwrap_or_default();
            return denied(format!("HTTP {code}: {body}"));
        }
        match resp.json::<PermitResponse>().await {
            Ok(p) if p.granted && p.permit_id.is_none() => denied("grant without a permit id".into()),
            Ok(p) => p,
            Err(e) => denied(format!("unreadable answer: {e}")),
        }
    }

    /// Releases a permit; `true` when the gate confirmed or no longer knew it.
    pub async fn release(&self, permit: Uuid) -> bool {
        match self.http.delete(format!("{}/api/v1/permits/{permit}", self.base)).send().await {
            Ok(r) => r.status().is_success() || r.status() == reqwest::StatusCode::NOT_FOUND,
            Err(_) => false,
        }
    }
}
