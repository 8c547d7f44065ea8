//! The gate client. Anything but a clear grant — the gate down, an error, a malformed answer, a
//! refused token — is a denial: the risky operation does not happen (fail closed).

use std::{collections::BTreeMap, time::Duration};

use chrono::{DateTime, Utc};
use firebreak_schema::{Operation, Permit, PermitRequest, PermitResponse};
use uuid::Uuid;

/// What became of a renewal.
#[derive(Debug, Clone, PartialEq)]
pub enum Renewal {
    /// Renewed: it now lapses at this time.
    Until(DateTime<Utc>),
    /// The gate says the permit is over (expired, released, unknown): it is lost.
    Lost(String),
    /// The gate could not be asked; the permit holds until it lapses.
    Unknown(String),
}

/// Talks to the gate's HTTP API with a bearer token.
#[derive(Clone)]
pub struct GateClient {
    base: String,
    token: String,
    http: reqwest::Client,
}

impl GateClient {
    /// A client for the gate at `base` (`https://gate:8181`) presenting `token`; `ca` (PEM) is
    /// a certificate authority to trust beside the system's, for a gate with its own.
    pub fn new(base: &str, token: &str, ca: Option<&[u8]>) -> crate::Result<Self> {
        let mut builder = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            // Idle connections go before the server's header timeout closes them (see
            // `plumbing::serve`), so a request never races a closing connection.
            .pool_idle_timeout(Duration::from_secs(5));
        if let Some(pem) = ca {
            let cert =
                reqwest::Certificate::from_pem(pem).map_err(|e| crate::Error::Config(format!("gate CA: {e}")))?;
            builder = builder.add_root_certificate(cert);
        }
        let http = builder.build().map_err(|e| crate::Error::Config(format!("gate client: {e}")))?;
        Ok(Self { base: base.trim_end_matches('/').to_owned(), token: token.to_owned(), http })
    }

    /// Asks for a permit. Never errors: failures come back as denials saying why.
    pub async fn request(
        &self,
        operation: Operation,
        cluster: &str,
        node: &str,
        domains: BTreeMap<String, String>,
        requester: &str,
    ) -> PermitResponse {
        let req = PermitRequest {
            operation,
            cluster: cluster.into(),
            node: Some(node.into()),
            requester: requester.into(),
            domains,
        };
        let denied = |why: String| PermitResponse {
            granted: false,
            permit_id: None,
            reason: format!("gate unavailable, failing closed: {why}"),
            limit: Some("gate_unavailable".into()),
            scope: None,
            measured: None,
            threshold: None,
            retry_after_s: Some(2),
            expires_at: None,
        };
        let sent =
            self.http.post(format!("{}/api/v1/permits", self.base)).bearer_auth(&self.token).json(&req).send().await;
        let resp = match sent {
            Ok(r) => r,
            Err(e) => return denied(e.to_string()),
        };
        if !resp.status().is_success() {
            let code = resp.status();
            let body = resp.text().await.unwrap_or_default();
            return denied(format!("HTTP {code}: {}", body.chars().take(500).collect::<String>()));
        }
        match resp.json::<PermitResponse>().await {
            Ok(p) if p.granted && (p.permit_id.is_none() || p.expires_at.is_none()) => {
                denied("grant without a permit id or an expiry".into())
            }
            Ok(p) => p,
            Err(e) => denied(format!("unreadable answer: {e}")),
        }
    }

    /// Renews a permit held by this client's token.
    pub async fn renew(&self, permit: Uuid) -> Renewal {
        let sent = self
            .http
            .post(format!("{}/api/v1/permits/{permit}/renew", self.base))
            .bearer_auth(&self.token)
            .send()
            .await;
        let resp = match sent {
            Ok(r) => r,
            Err(e) => return Renewal::Unknown(e.to_string()),
        };
        let code = resp.status();
        if code.is_success() {
            return match resp.json::<Permit>().await {
                Ok(p) => Renewal::Until(p.expires_at),
                Err(e) => Renewal::Unknown(format!("unreadable answer: {e}")),
            };
        }
        let body = resp.text().await.unwrap_or_default();
        if matches!(code.as_u16(), 403 | 404 | 410) {
            Renewal::Lost(format!("HTTP {code}: {}", body.chars().take(300).collect::<String>()))
        } else {
            Renewal::Unknown(format!("HTTP {code}: {}", body.chars().take(300).collect::<String>()))
        }
    }

    /// Releases a permit; `true` when the gate confirmed or it is over anyway.
    pub async fn release(&self, permit: Uuid) -> bool {
        match self.http.delete(format!("{}/api/v1/permits/{permit}", self.base)).bearer_auth(&self.token).send().await {
            Ok(r) => r.status().is_success() || matches!(r.status().as_u16(), 404 | 410),
            Err(_) => false,
        }
    }
}
