//! The event center's background work: the outbox that publishes what the store changed on the
//! subscription topics (occurrences, incidents' current state, correlations on the health topic),
//! webhook subscriptions, the expiry of silences and quiet incidents, and retention.
//!
//! The store marks each change unpublished in the transaction that made it, and this task
//! publishes it and then marks it published: a crash in between publishes it again (consumers see
//! at least once: occurrences carry the fault's id, incidents a version). Nothing here is on the
//! ingest path; a broker that is down delays the topics, never the store. Webhook calls are
//! stored with the mark that publishes their change and sent by a task of their own, so a slow
//! or dead receiver delays neither ingest nor the topics, and a restart loses no call.

use std::{sync::Arc, time::Duration};

use firebreak_plumbing::{kafka::Producer, webhook};
use firebreak_schema::{HEALTH_TOPIC, INCIDENTS_TOPIC, OCCURRENCES_TOPIC};
use tokio::sync::{Notify, broadcast};
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::{
    Live, Result,
    store::{Store, WebhookCall},
    subscriptions::Webhook,
};

/// How the background work runs.
#[derive(Debug, Clone, Copy)]
pub struct Upkeep {
    /// How incidents are formed, correlated and resolved when quiet.
    pub rules: crate::store::Rules,
    /// Faults, steps and resolved incidents older than this are deleted.
    pub retain_for: chrono::TimeDelta,
    /// At most this many faults are kept (the oldest go first).
    pub retain_faults: i64,
    /// How often silences and quiet incidents are checked.
    pub expire_every: Duration,
    /// How often retention runs.
    pub retain_every: Duration,
}

impl Default for Upkeep {
    fn default() -> Self {
        Self {
            rules: crate::store::Rules::default(),
            retain_for: chrono::TimeDelta::days(30),
            retain_faults: 5_000_000,
            expire_every: Duration::from_secs(10),
            retain_every: Duration::from_secs(300),
        }
    }
}

/// Where the outbox publishes.
pub(crate) struct Outlets {
    pub(crate) producer: Producer,
    /// Told of incidents that open or change state.
    pub(crate) webhooks: Vec<Webhook>,
    pub(crate) http: reqwest::Client,
    /// Counts the webhook calls given up.
    pub(crate) given_up: prometheus_client::metrics::counter::Counter,
}

/// Publishes the outbox whenever `wake` fires (after each write) and every second; runs expiry
/// and retention on their intervals; until `cancel`.
pub(crate) async fn run(
    store: Store,
    outlets: Outlets,
    upkeep: Upkeep,
    wake: Arc<Notify>,
    live: broadcast::Sender<Live>,
    cancel: CancellationToken,
) {
    let calls = tokio::spawn(send_webhooks(
        store.clone(),
        outlets.webhooks.clone(),
        outlets.http.clone(),
        outlets.given_up.clone(),
        cancel.clone(),
    ));
    let mut publish = tokio::time::interval(Duration::from_secs(1));
    let mut expire = tokio::time::interval(upkeep.expire_every);
    let mut retain = tokio::time::interval(upkeep.retain_every);
    for t in [&mut publish, &mut expire, &mut retain] {
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    }
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = wake.notified() => {}
            _ = publish.tick() => {}
            _ = expire.tick() => match store.expire(chrono::Utc::now()).await {
                Ok(changed) => {
                    crate::consumer::tell(&live, crate::store::Changed { incidents: changed, correlations: Vec::new() });
                }
                Err(error) => tracing::warn!(%error, "expiring silences and quiet incidents failed; retried"),
            },
            _ = retain.tick() => match store.retain(upkeep.retain_for, upkeep.retain_faults).await {
                Ok(r) => tracing::info!(faults = r.faults, steps = r.steps, incidents = r.incidents, "retention"),
                Err(error) => tracing::warn!(%error, "retention failed; retried"),
            },
        }
        if let Err(error) = publish_outbox(&store, &outlets, &cancel).await {
            tracing::warn!(%error, "publishing the outbox failed; retried");
        }
    }
    let _ = calls.await;
}

/// Publishes what is unpublished, oldest first, each kind until none is left; an incident that
/// opened or changed state also queues a call to each webhook that wants it.
async fn publish_outbox(store: &Store, outlets: &Outlets, cancel: &CancellationToken) -> Result<()> {
    let producer = &outlets.producer;
    const PAGE: i64 = 1000;
    while !cancel.is_cancelled() {
        let occurrences = store.unpublished_occurrences(PAGE).await?;
        if occurrences.is_empty() {
            break;
        }
        // Sent in order, delivered concurrently: one node's stay in order on its partition.
        futures::future::try_join_all(occurrences.iter().map(|o| producer.publish(OCCURRENCES_TOPIC, o))).await?;
        let ids: Vec<uuid::Uuid> = occurrences.iter().map(|o| o.event.id).collect();
        store.occurrences_published(&ids).await?;
    }
    while !cancel.is_cancelled() {
        let incidents = store.unpublished_incidents(PAGE).await?;
        if incidents.is_empty() {
            break;
        }
        futures::future::try_join_all(incidents.iter().map(|(i, _)| producer.publish(INCIDENTS_TOPIC, i))).await?;
        let mut done = Vec::with_capacity(incidents.len());
        for (i, before) in &incidents {
            let mut calls = Vec::new();
            if *before != Some(i.state) {
                let body = serde_json::to_string(&serde_json::json!({"event": i.state.as_str(), "incident": i}))
                    .map_err(|e| crate::Error::Corrupt(e.to_string()))?;
                calls = outlets
                    .webhooks
                    .iter()
                    .filter(|w| w.wants(i))
                    .map(|w| WebhookCall { url: w.url.clone(), event: i.state.as_str().into(), body: body.clone() })
                    .collect();
            }
            done.push((i, calls));
        }
        store.incidents_published(&done).await?;
    }
    for (c, version) in store.unpublished_correlations().await? {
        producer.publish(HEALTH_TOPIC, &c).await?;
        store.correlation_published(c.id, version).await?;
    }
    Ok(())
}

/// Sends the stored webhook calls that are due, every second until `cancel`: each receiver's
/// calls for an incident in order, different ones at once; a call that fails waits longer each
/// time and is kept until it is delivered or, undelivered a day after it was stored
/// ([`webhook::after_failure`]), given up: counted, and said on the incident's timeline. A call
/// to a URL no longer subscribed is dropped with an error log.
async fn send_webhooks(
    store: Store,
    webhooks: Vec<Webhook>,
    http: reqwest::Client,
    given_up: prometheus_client::metrics::counter::Counter,
    cancel: CancellationToken,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let due = match store.due_webhooks(100).await {
            Ok(due) => due,
            Err(error) => {
                tracing::warn!(%error, "reading due webhook calls failed; retried");
                continue;
            }
        };
        let sends = due.into_iter().map(|p| {
            let (store, http, given_up) = (&store, &http, &given_up);
            let hook = webhooks.iter().find(|w| w.url == p.call.url);
            let span = tracing::info_span!("webhook", incident_id = %p.incident_id, url = %p.call.url);
            async move {
                let Some(hook) = hook else {
                    tracing::error!(event = p.call.event, "webhook no longer subscribed; call dropped");
                    return store.webhook_delivered(p.id).await;
                };
                let sent = webhook::send(http, &hook.url, hook.secret(), &p.call.event, p.call.body.into_bytes()).await;
                let error = match sent {
                    Ok(()) => {
                        tracing::info!(event = p.call.event, "webhook delivered");
                        return store.webhook_delivered(p.id).await;
                    }
                    Err(error) => error,
                };
                let attempts = p.attempts + 1;
                match webhook::after_failure(p.id, attempts, std::time::SystemTime::now()) {
                    webhook::AfterFailure::RetryIn(wait) => {
                        tracing::warn!(event = p.call.event, attempts, %error, "webhook not delivered; retrying in {wait:?}");
                        let next = chrono::Utc::now() + chrono::TimeDelta::from_std(wait).unwrap_or_default();
                        store.webhook_failed(p.id, attempts, next).await
                    }
                    webhook::AfterFailure::GiveUp(age) => {
                        let why = format!(
                            "the {} call to {} was given up: not delivered in {} attempts over {} h (last: {error})",
                            p.call.event,
                            hook.url,
                            attempts,
                            age.as_secs() / 3600
                        );
                        tracing::error!(event = p.call.event, attempts, %error, "webhook given up");
                        store.webhook_given_up(p.id, p.incident_id, &why).await?;
                        given_up.inc();
                        Ok(())
                    }
                }
            }
            .instrument(span)
        });
        // Shutdown does not wait for a slow receiver: a call cut short stays stored and is sent
        // again after the restart.
        let sent = tokio::select! {
            _ = cancel.cancelled() => return,
            sent = futures::future::join_all(sends) => sent,
        };
        for r in sent {
            if let Err(error) = r {
                tracing::warn!(%error, "recording a webhook call failed; it is sent again");
            }
        }
    }
}
