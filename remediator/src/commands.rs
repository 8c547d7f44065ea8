//! The node command channel, remediator side: commands to a node's actuator (its agent) go to
//! the partition of the command topic that node reads; the actuators' reports are consumed
//! into the store, where workflows read them.

use std::{sync::Arc, time::Duration};

use chrono::{DateTime, TimeDelta, Utc};
use firebreak_plumbing::kafka::{Producer, assign, decode_message, next_message};
use firebreak_schema::{
    CloudEvent, CommandReport, NODE_COMMAND_TOPIC, NodeAction, NodeCommand, command_partition, deterministic_id,
};
use rdkafka::{
    Message,
    consumer::{Consumer, StreamConsumer},
};
use tokio::sync::OnceCell;

use crate::{Result, Workflow, workflow::Ctx};

/// Sends commands, each to its node's partition.
pub(crate) struct Commands {
    producer: Producer,
    /// The command topic's partitions, read once: the topic must keep its partition count while
    /// agents and remediators run (each computes its nodes' partitions from it).
    partitions: OnceCell<i32>,
}

impl Commands {
    pub(crate) fn new(producer: Producer) -> Self {
        Self { producer, partitions: OnceCell::new() }
    }

    /// Sends a command and waits until the brokers have it. Sending it again is harmless: the
    /// actuator skips a command it handled and a reboot asked for a boot that is over.
    pub(crate) async fn send(&self, cmd: &NodeCommand) -> Result<()> {
        let n = *self.partitions.get_or_try_init(|| self.producer.partitions(NODE_COMMAND_TOPIC)).await?;
        self.producer.publish_to(NODE_COMMAND_TOPIC, command_partition(&cmd.key(), n), cmd).await?;
        Ok(())
    }
}

/// The command a workflow sends for `action`, asked at `requested_at_ms` (persisted, so the
/// command and its id are the same when a restarted remediator sends it again), valid for `ttl`.
pub(crate) fn command(wf: &Workflow, action: NodeAction, requested_at_ms: i64, ttl: Duration) -> NodeCommand {
    let requested_at = DateTime::from_timestamp_millis(requested_at_ms).unwrap_or_else(Utc::now);
    NodeCommand {
        id: deterministic_id(requested_at, &[&wf.id.to_string(), &action.to_string()]),
        cluster: wf.cluster.clone(),
        node: wf.node.clone(),
        workflow_id: wf.id,
        action,
        boot_id: wf.boot_id_before.clone().unwrap_or_default(),
        requested_at,
        not_after: requested_at + TimeDelta::from_std(ttl).unwrap_or(TimeDelta::MAX),
    }
}

/// Consumes the actuators' reports on the cluster's commands into the store (then stores the
/// offset), until cancelled. The consumer is assigned every partition of the cluster's report
/// topic.
pub(crate) async fn reports_loop(ctx: Arc<Ctx>, consumer: StreamConsumer) {
    let topic = firebreak_schema::report_topic(&ctx.cfg.cluster);
    let Some(partitions) = ctx.producer.partitions_when_known(&topic, &ctx.cancel).await else { return };
    let all: Vec<i32> = (0..partitions).collect();
    if let Err(error) = assign(&consumer, &topic, &all) {
        tracing::error!(%error, "cannot assign the report topic; command reports are not read");
        return;
    }
    loop {
        let msg = tokio::select! {
            _ = ctx.cancel.cancelled() => return,
            m = next_message(&consumer) => m,
        };
        match decode_message::<CommandReport>(&msg) {
            Err(error) => tracing::warn!(%error, offset = msg.offset(), "undecodable command report skipped"),
            // Another cluster's report on this cluster's topic is a misrouted or forged one.
            Ok(r) if r.cluster != ctx.cfg.cluster => {
                tracing::warn!(other = %r.cluster, node = %r.node, "report of another cluster on this cluster's topic skipped")
            }
            Ok(r) => {
                let what = format!("recording the report on command {}", r.command_id);
                let stored = crate::INTAKE_RETRY.until_ok(&what, &ctx.cancel, || ctx.store.record_report(&r)).await;
                if stored.is_none() {
                    return;
                }
                tracing::info!(workflow_id = %r.workflow_id, node = %r.node, outcome = r.outcome.as_str(), detail = %r.detail, "command report");
            }
        }
        if let Err(error) = consumer.store_offset_from_message(&msg) {
            tracing::warn!(%error, "could not store offset");
        }
    }
}
