//! Telling others: every change of a change's state, every halt raised or lifted and every
//! permit decision goes to the `firebreak.changes.v1` topic (when the gate has Kafka) and, for halts, to the policy's
//! webhooks — a JSON body signed with HMAC-SHA256 (`X-Firebreak-Signature: sha256=<hex>` over
//! the exact body), retried with backoff in the background, never holding up a decision.

use std::time::Duration;

use firebreak_plumbing::{kafka::Producer, webhook};
use firebreak_schema::{CHANGES_TOPIC, Change, Decision, Halt};
use tokio_util::sync::CancellationToken;

use crate::policy::Webhook;

/// Where the gate's news goes.
#[derive(Clone)]
pub(crate) struct Notifier {
    producer: Option<Producer>,
    http: reqwest::Client,
    cancel: CancellationToken,
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

    /// A decision, on the topic: the event center shows it with the node and incident it
    /// concerns. Queued, never awaited: the decision is already in the log.
    pub(crate) fn decision(&self, d: &Decision) {
        if let Some(p) = &self.producer
            && let Err(error) = p.publish_nowait(CHANGES_TOPIC, d)
        {
            tracing::warn!(%error, decision = %d.id, "decision event not queued");
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
            let what = format!("halt {} webhook", h.id);
            webhook::deliver(&self.http, &w.url, secret.as_bytes(), event, body.clone(), what, &self.cancel);
        }
    }
}
