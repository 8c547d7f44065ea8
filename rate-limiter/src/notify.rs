//! Telling others: every change of a change's state and every halt raised or lifted goes to the
//! `firebreak.changes.v1` topic (when the gate has Kafka) and, for halts, to the policy's
//! webhooks — a JSON body signed with HMAC-SHA256 (`X-Firebreak-Signature: sha256=<hex>` over
//! the exact body), retried with backoff in the background, never holding up a decision.

use std::time::Duration;

use firebreak_plumbing::{kafka::Producer, retry};
use firebreak_schema::{CHANGES_TOPIC, Change, Halt};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio_util::sync::CancellationToken;

use crate::policy::Webhook;

/// Where the gate's news goes.
#[derive(Clone)]
pub(crate) struct Notifier {
    producer: Option<Producer>,
    http: reqwest::Client,
    cancel: CancellationToken,
}

/// `sha256=<hex>` of the body under the secret.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    // HMAC takes keys of any length; `new_from_slice` cannot fail for it.
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret) {
        Ok(m) => m,
        Err(_) => return String::new(),
    };
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

impl Notifier {
    pub(crate) fn new(producer: Option<Producer>, cancel: CancellationToken) -> Self {
        let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap_or_default();
        Self { producer, http, cancel }
    }

    /// A change's new state, on the topic.
    pub(crate) fn change(&self, c: &Change) {
        if let Some(p) = &self.producer
            && let Err(error) = p.publish_nowait(CHANGES_TOPIC, c)
        {
            tracing::warn!(%error, change = %c.spec.id, "change event not queued");
        }
    }

    /// A halt raised or lifted: on the topic, and to every webhook.
    pub(crate) fn halt(&self, h: &Halt, webhooks: &[Webhook]) {
        if let Some(p) = &self.producer
            && let Err(error) = p.publish_nowait(CHANGES_TOPIC, h)
        {
            tracing::warn!(%error, halt_id = %h.id, "halt event not queued");
        }
        let event = if h.resumed_at.is_some() { "resumed" } else { "halted" };
        let body = match serde_json::to_vec(&serde_json::json!({"event": event, "halt": h})) {
            Ok(b) => b,
            Err(error) => {
                tracing::error!(%error, "halt not serialisable for webhooks");
                return;
            }
        };
        for w in webhooks {
            let Ok(secret) = std::env::var(&w.secret_env) else {
                tracing::error!(url = %w.url, env = %w.secret_env, "webhook secret variable not set; webhook not sent");
                continue;
            };
            let sig = signature(secret.as_bytes(), &body);
            let (http, url, body, cancel) = (self.http.clone(), w.url.clone(), body.clone(), self.cancel.clone());
            let halt_id = h.id;
            tokio::spawn(async move {
                let policy = retry::Policy::times(8, Duration::from_millis(500), Duration::from_secs(60));
                let sent = policy
                    .until_ok("halt webhook", &cancel, || async {
                        let r = http
                            .post(&url)
                            .header("content-type", "application/json")
                            .header("x-firebreak-signature", &sig)
                            .header("x-firebreak-event", event)
                            .body(body.clone())
                            .send()
                            .await?;
                        r.error_for_status().map(|_| ())
                    })
                    .await;
                match sent {
                    Some(()) => tracing::info!(%url, %halt_id, event, "halt webhook delivered"),
                    None => tracing::error!(%url, %halt_id, event, "halt webhook given up"),
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn signature_is_rfc_4231_hmac_sha256() {
        // RFC 4231, test case 2.
        let s = super::signature(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(s, "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
    }
}
