//! Cluster snapshots from the health topic, and the event center's correlated incidents on it
//! (storms, see [`Gate::storm`]). Every gate replica reads every partition (a group of
//! its own that commits nothing), from the newest record on: a snapshot is a state, not an
//! event, and the latest kept one is in the store already.

use std::sync::Arc;

use firebreak_plumbing::kafka::{KafkaConfig, decode_message, next_message};
use firebreak_schema::{Correlation, HEALTH_TOPIC, HealthSample};
use rdkafka::consumer::{Consumer, StreamConsumer};
use tokio_util::sync::CancellationToken;

use crate::Gate;

pub(crate) async fn consume(kafka: KafkaConfig, gate: Arc<Gate>, cancel: CancellationToken) {
    let mut cfg = kafka.consumer(&format!("firebreak-gate-{}", uuid::Uuid::now_v7()));
    cfg.set("enable.auto.commit", "false").set("auto.offset.reset", "latest");
    let consumer: StreamConsumer = match cfg.create().and_then(|c: StreamConsumer| {
        c.subscribe(&[HEALTH_TOPIC])?;
        Ok(c)
    }) {
        Ok(c) => c,
        Err(error) => {
            tracing::error!(%error, "cannot read cluster snapshots; rules that need them will deny");
            return;
        }
    };
    loop {
        let msg = tokio::select! {
            _ = cancel.cancelled() => return,
            m = next_message(&consumer) => m,
        };
        match decode_message::<HealthSample>(&msg) {
            Ok(s) => {
                let cluster = s.cluster.clone();
                if let Err(error) = gate.observe(s).await {
                    tracing::warn!(%error, %cluster, "cluster snapshot not kept");
                }
            }
            // A correlated incident from the event center: a storm.
            Err(firebreak_schema::Error::WrongType { .. }) => match decode_message::<Correlation>(&msg) {
                Ok(c) => {
                    if let Err(error) = gate.storm(&c).await {
                        tracing::warn!(%error, cluster = %c.cluster, correlation_id = %c.id, "storm halt not recorded");
                    }
                }
                Err(firebreak_schema::Error::WrongType { .. }) => {}
                Err(error) => tracing::warn!(%error, "undecodable correlation skipped"),
            },
            Err(error) => tracing::warn!(%error, "undecodable cluster snapshot skipped"),
        }
    }
}
