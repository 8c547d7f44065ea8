//! Consumes the fault and remediation topics into the store. A record's offset is stored for
//! commit only after its write succeeded (or, for an undecodable record, after it was kept in
//! `rejected_messages`), so a crash replays records rather than losing them; inserts are
//! idempotent by event id, so replays do not duplicate. Stored offsets are committed in the
//! background and, at shutdown, synchronously, so a clean restart re-reads nothing.
//!
//! Records are taken in batches: what has arrived, up to [`BATCH`], without waiting for more.
//! A batch's faults are written in one transaction, with the incidents they count into, then its
//! other records one by one (a step moves its incidents in the same transaction that stores it),
//! and only then are the batch's offsets stored: one commit per batch instead of one per fault,
//! with "offset after write" kept whole. An undecodable record is kept and copied to the
//! dead-letter topic before its offset moves.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use firebreak_plumbing::{
    kafka::{arrived, decode_message, next_message},
    retry,
};
use firebreak_schema::{
    CHANGES_TOPIC, Change, Decision, FAULT_TOPIC_PATTERN, FAULT_TOPIC_PREFIX, FaultEvent, HEALTH_TOPIC, Halt,
    HealthSample, REMEDIATION_TOPIC, RemediationEvent, Topology,
};
use rdkafka::{
    Message,
    consumer::{CommitMode, Consumer as _, StreamConsumer},
    message::BorrowedMessage,
};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::{Live, Metrics, Result, store::Store};

/// Why a record was rejected, as a bounded metric label.
fn reject_label(e: &firebreak_schema::Error) -> &'static str {
    use firebreak_schema::Error as E;
    match e {
        E::MissingPayload => "missing_payload",
        E::MissingHeader(_) => "missing_header",
        E::HeaderEncoding(_) => "header_encoding",
        E::SpecVersion(_) => "spec_version",
        E::WrongType { .. } => "wrong_type",
        E::Json(_) => "json",
        E::Invalid(_) => "invalid",
    }
}

/// How a failed write is retried: the offset must not move past an unwritten record, so forever.
const WRITE_RETRY: retry::Policy = retry::Policy::forever(Duration::from_millis(100), Duration::from_secs(5));

/// Most records written in one batch.
pub(crate) const BATCH: usize = 512;

/// What the consumer writes through and tells.
pub(crate) struct Sinks {
    pub(crate) store: Store,
    pub(crate) live: broadcast::Sender<Live>,
    pub(crate) metrics: Metrics,
    /// Dead letters go out through it.
    pub(crate) producer: firebreak_plumbing::kafka::Producer,
    /// Wakes the outbox after a write.
    pub(crate) wake: Arc<tokio::sync::Notify>,
}

pub(crate) async fn run(
    consumer: Arc<StreamConsumer>,
    sinks: Sinks,
    ready: Arc<AtomicBool>,
    cancel: CancellationToken,
) {
    let mut check = tokio::time::interval(Duration::from_millis(500));
    loop {
        let first = tokio::select! {
            _ = cancel.cancelled() => break,
            _ = check.tick() => {
                let assigned = consumer.assignment().is_ok_and(|a| a.count() > 0);
                if assigned != ready.swap(assigned, Ordering::Relaxed) {
                    tracing::info!(assigned, "partition assignment changed");
                }
                continue;
            }
            m = next_message(&consumer) => m,
        };
        let batch = arrived(&consumer, first, BATCH).await;
        if !write(&batch, &sinks, &cancel).await {
            break;
        }
        sinks.wake.notify_one();
        for msg in &batch {
            if let Err(error) = consumer.store_offset_from_message(msg) {
                tracing::warn!(%error, "could not store offset");
            }
        }
    }
    // Everything stored so far is durable: commit it now rather than at the next interval.
    match consumer.commit_consumer_state(CommitMode::Sync) {
        Ok(()) => tracing::info!("offsets committed at shutdown"),
        // Nothing stored since the last commit.
        Err(rdkafka::error::KafkaError::ConsumerCommit(rdkafka::types::RDKafkaErrorCode::NoOffset)) => {}
        Err(error) => tracing::warn!(%error, "could not commit offsets at shutdown"),
    }
}

/// Runs a write until it succeeds (the offset must not move past an unwritten record), each
/// failure counted; `None` if cancelled first.
async fn retried<T, F, Fut>(what: &str, cancel: &CancellationToken, metrics: &Metrics, mut write: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    WRITE_RETRY
        .until_ok(what, cancel, || {
            let attempt = write();
            async {
                let r = attempt.await;
                if r.is_err() {
                    metrics.store_errors.inc();
                }
                r
            }
        })
        .await
}

/// Writes a batch: its faults in one transaction, then its other records one by one, each
/// retried until written; `false` if cancelled first.
async fn write(batch: &[BorrowedMessage<'_>], sinks: &Sinks, cancel: &CancellationToken) -> bool {
    let Sinks { store, live, metrics, .. } = sinks;
    let mut faults = Vec::new();
    let mut rest = Vec::new();
    for msg in batch {
        match msg.topic().starts_with(FAULT_TOPIC_PREFIX).then(|| decode_message::<FaultEvent>(msg)) {
            Some(Ok(event)) => faults.push(event),
            _ => rest.push(msg),
        }
    }
    if !faults.is_empty() {
        metrics.consumed.inc_by(faults.len() as u64);
        let what = format!("storing {} faults", faults.len());
        let Some((records, changed)) = retried(&what, cancel, metrics, || store.insert_faults(&faults)).await else {
            return false;
        };
        for record in records {
            match record {
                Some(record) => {
                    metrics.stored.inc();
                    let e = &record.event;
                    tracing::debug!(cluster = %e.cluster, node = %e.node, event_id = %e.id, kind = %e.kind, "fault stored");
                    let _ = live.send(Live::Fault(Box::new(record)));
                }
                None => {
                    metrics.duplicates.inc();
                }
            }
        }
        tell(live, changed);
    }
    for msg in rest {
        let what = format!("storing {}/{}@{}", msg.topic(), msg.partition(), msg.offset());
        if retried(&what, cancel, metrics, || handle(msg, sinks)).await.is_none() {
            return false;
        }
    }
    true
}

/// Tells the live stream what a write changed.
pub(crate) fn tell(live: &broadcast::Sender<Live>, changed: crate::store::Changed) {
    for i in changed.incidents {
        tracing::debug!(cluster = %i.cluster, node = %i.node, incident_id = %i.id, state = %i.state, "incident changed");
        let _ = live.send(Live::Incident(Box::new(i)));
    }
    for c in changed.correlations {
        tracing::info!(cluster = %c.cluster, kind = %c.kind, nodes = c.nodes.len(), correlation_id = %c.id, "correlated incident");
        let _ = live.send(Live::Correlation(Box::new(c)));
    }
}

async fn handle(msg: &BorrowedMessage<'_>, sinks: &Sinks) -> Result<()> {
    let Sinks { store, live, metrics, producer, .. } = sinks;
    metrics.consumed.inc();
    // Kept in the database and copied to the dead-letter topic, both before the offset moves.
    let reject = |e: firebreak_schema::Error| async move {
        metrics.rejected.get_or_create(&crate::RejectLabels { reason: reject_label(&e) }).inc();
        tracing::warn!(error = %e, topic = msg.topic(), partition = msg.partition(), offset = msg.offset(), "rejected undecodable record");
        producer.publish_dead_letter(msg, &e.to_string()).await?;
        store
            .insert_rejected(msg.topic(), msg.partition(), msg.offset(), msg.key(), msg.payload(), &e.to_string())
            .await
    };
    match msg.topic() {
        // Faults that decode are written in batches (see `write`): only the others come here.
        t if t.starts_with(FAULT_TOPIC_PREFIX) => {
            if let Err(e) = decode_message::<FaultEvent>(msg) {
                reject(e).await?
            }
        }
        t if t == REMEDIATION_TOPIC => match decode_message::<RemediationEvent>(msg) {
            Ok(step) => match store.insert_remediation(&step).await? {
                Some(incidents) => {
                    metrics.stored.inc();
                    let _ = live.send(Live::Remediation(Box::new(step)));
                    tell(live, crate::store::Changed { incidents, correlations: Vec::new() });
                }
                None => {
                    metrics.duplicates.inc();
                }
            },
            Err(e) => reject(e).await?,
        },
        // Samples from the detectors, and the correlations this service publishes itself.
        t if t == HEALTH_TOPIC => match decode_message::<HealthSample>(msg) {
            Ok(h) => {
                store.put_health(&h).await?;
                let _ = live.send(Live::Gate);
            }
            Err(firebreak_schema::Error::WrongType { .. }) => match decode_message::<Topology>(msg) {
                Ok(t) => store.put_topology(&t).await?,
                Err(firebreak_schema::Error::WrongType { .. }) => {
                    if let Err(e) = decode_message::<firebreak_schema::Correlation>(msg) {
                        reject(e).await?
                    }
                }
                Err(e) => reject(e).await?,
            },
            Err(e) => reject(e).await?,
        },
        // Three event types share the gate's topic: halts, changes and decisions.
        t if t == CHANGES_TOPIC => match decode_message::<Halt>(msg) {
            Ok(h) => {
                store.put_halt(&h).await?;
                let _ = live.send(Live::Gate);
            }
            Err(firebreak_schema::Error::WrongType { .. }) => match decode_message::<Change>(msg) {
                Ok(c) => {
                    store.put_change(&c).await?;
                    let _ = live.send(Live::Gate);
                }
                Err(firebreak_schema::Error::WrongType { .. }) => match decode_message::<Decision>(msg) {
                    Ok(d) => store.put_decision(&d).await?,
                    Err(e) => reject(e).await?,
                },
                Err(e) => reject(e).await?,
            },
            Err(e) => reject(e).await?,
        },
        other => tracing::warn!(topic = other, "record from an unexpected topic ignored"),
    }
    Ok(())
}

/// Subscribes a consumer to the topics the event center stores.
pub(crate) fn subscribe(consumer: &StreamConsumer) -> Result<()> {
    consumer
        .subscribe(&[FAULT_TOPIC_PATTERN, REMEDIATION_TOPIC, HEALTH_TOPIC, CHANGES_TOPIC])
        .map_err(|e| crate::Error::Plumbing(e.into()))
}
