//! The outbox: what a transition tells the world — its step on the remediation topic, and the
//! webhooks it calls (an escalation, a reinstall, a hardware ticket) — is written in the
//! transition's own transaction and sent from the store by one sender, so a crash between the
//! write and the delivery loses nothing. Delivery is at least once: a step keeps its id (the
//! topic's consumers dedupe by it), a webhook receiver dedupes by `workflow_id`. Steps go out in
//! the order they were written; a webhook that fails is retried with a growing delay (at most
//! 256 s) until it is delivered or, undelivered a day after it was stored, given up: counted
//! (`webhooks_given_up_total`) and said in its workflow's step log.

use std::{sync::Arc, time::Duration};

use chrono::{DateTime, Utc};
use firebreak_plumbing::webhook;
use firebreak_schema::{REMEDIATION_TOPIC, RemediationEvent, deterministic_id};
use uuid::Uuid;

use crate::{Result, workflow::Ctx};

/// Which configured webhook a note goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    /// `--escalation-webhook`.
    Escalation,
    /// `--reinstall-webhook`.
    Reinstall,
    /// `--ticket-webhook`.
    Ticket,
}

impl Hook {
    /// As stored.
    pub fn as_str(self) -> &'static str {
        match self {
            Hook::Escalation => "escalation",
            Hook::Reinstall => "reinstall",
            Hook::Ticket => "ticket",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        [Hook::Escalation, Hook::Reinstall, Hook::Ticket].into_iter().find(|h| h.as_str() == s)
    }

    fn of(self, cfg: &crate::Config) -> Option<&crate::Webhook> {
        match self {
            Hook::Escalation => cfg.escalation_webhook.as_ref(),
            Hook::Reinstall => cfg.reinstall_webhook.as_ref(),
            Hook::Ticket => cfg.ticket_webhook.as_ref(),
        }
    }
}

/// A webhook call a transition makes, delivered once the transition is persisted.
#[derive(Debug, Clone)]
pub struct Note {
    /// Where.
    pub hook: Hook,
    /// `X-Firebreak-Event`.
    pub event: &'static str,
    /// The JSON body.
    pub body: serde_json::Value,
}

/// A stored webhook call not delivered yet.
#[derive(Debug, Clone)]
pub struct Pending {
    /// Its id.
    pub id: Uuid,
    /// Where.
    pub hook: String,
    /// `X-Firebreak-Event`.
    pub event: String,
    /// The JSON body, as it is signed.
    pub body: String,
    /// Failed attempts so far.
    pub attempts: i64,
}

/// The published form of a stored step: its id derives from the workflow, the step's place in
/// the step log and its time, so a step published again has the same id.
#[allow(clippy::too_many_arguments)]
pub(crate) fn step_event(
    workflow_id: Uuid,
    cluster: String,
    node: String,
    trigger_event_id: Uuid,
    seq: i64,
    state: String,
    reason: String,
    at: DateTime<Utc>,
) -> RemediationEvent {
    RemediationEvent {
        id: deterministic_id(at, &[&workflow_id.to_string(), &seq.to_string()]),
        workflow_id,
        cluster,
        node,
        trigger_event_id,
        state,
        reason,
        at,
    }
}

/// Sends what the store holds until `ctx.cancel`: woken by every transition, and every second.
pub(crate) async fn run(ctx: Arc<Ctx>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ctx.cancel.cancelled() => return,
            _ = ctx.outbox.notified() => {}
            _ = tick.tick() => {}
        }
        if let Err(error) = send_steps(&ctx).await {
            tracing::warn!(%error, "publishing remediation steps failed; retrying");
        }
        if let Err(error) = send_webhooks(&ctx).await {
            tracing::warn!(%error, "delivering webhooks failed; retrying");
        }
    }
}

/// Publishes unpublished steps, oldest first, in batches; marks those the brokers have.
async fn send_steps(ctx: &Ctx) -> Result<()> {
    loop {
        let steps = ctx.store.unpublished_steps(&ctx.cfg.cluster, 500).await?;
        if steps.is_empty() {
            return Ok(());
        }
        let sent =
            futures::future::join_all(steps.iter().map(|(_, e)| ctx.producer.publish(REMEDIATION_TOPIC, e))).await;
        let delivered: Vec<(Uuid, i64)> =
            steps.iter().zip(&sent).filter(|(_, r)| r.is_ok()).map(|((seq, e), _)| (e.workflow_id, *seq)).collect();
        ctx.store.mark_published(&delivered).await?;
        if let Some(Err(error)) = sent.into_iter().find(Result::is_err) {
            return Err(error.into());
        }
    }
}

/// Delivers the webhook calls that are due, each once; a failure waits longer each time, and a
/// call still undelivered a day after it was stored is given up (`webhook::after_failure`).
async fn send_webhooks(ctx: &Ctx) -> Result<()> {
    for p in ctx.store.due_webhooks(&ctx.cfg.cluster, 100).await? {
        let Some((which, hook)) = Hook::parse(&p.hook).and_then(|h| Some((h, h.of(&ctx.cfg)?))) else {
            tracing::error!(id = %p.id, hook = p.hook, event = p.event, "webhook no longer configured; dropped");
            ctx.store.webhook_delivered(p.id).await?;
            continue;
        };
        let sent =
            webhook::send(&ctx.http, &hook.url, hook.secret.as_bytes(), &p.event, p.body.clone().into_bytes()).await;
        match sent {
            Ok(_) => {
                tracing::info!(url = %hook.url, event = p.event, "webhook delivered");
                ctx.store.webhook_delivered(p.id).await?;
            }
            Err(error) => {
                let attempts = p.attempts + 1;
                match webhook::after_failure(p.id, attempts, std::time::SystemTime::now()) {
                    webhook::AfterFailure::RetryIn(wait) => {
                        tracing::warn!(url = %hook.url, event = p.event, attempts, %error, "webhook not delivered; retrying in {wait:?}");
                        ctx.store
                            .webhook_failed(p.id, attempts, crate::store::ms(Utc::now()) + wait.as_millis() as i64)
                            .await?;
                    }
                    webhook::AfterFailure::GiveUp(age) => {
                        tracing::error!(url = %hook.url, event = p.event, attempts, %error, "webhook given up");
                        let why = format!(
                            "the {} webhook ({}) to {} was given up: not delivered in {attempts} attempts over {} h \
                             (last: {error})",
                            p.hook,
                            p.event,
                            hook.url,
                            age.as_secs() / 3600
                        );
                        ctx.store.webhook_given_up(p.id, &why).await?;
                        ctx.metrics.webhook_given_up(&ctx.cfg.cluster, which);
                        ctx.outbox.notify_one();
                    }
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_step_published_again_has_the_same_id_and_the_next_step_another() {
        let (wf, trigger, at) = (Uuid::now_v7(), Uuid::now_v7(), Utc::now());
        let event = |wf: Uuid, seq: i64| {
            step_event(wf, "c1".into(), "n1".into(), trigger, seq, "draining".into(), "cordoned".into(), at)
        };
        let a = event(wf, 2);
        assert_eq!(a, event(wf, 2), "a re-publication dedupes downstream");
        assert_eq!(a.id.get_version_num(), 7);
        assert_eq!((a.state.as_str(), a.at), ("draining", at));
        assert_ne!(a.id, event(wf, 3).id);
        assert_ne!(a.id, event(Uuid::now_v7(), 2).id);
    }
}
