//! Operators' instructions from the event center's API, on the control topic: this cluster's
//! remediator (the Lease's holder) carries out those for its cluster — clearing a node's
//! escalation — records them in the node's workflow, then stores the offset.

use std::sync::Arc;

use firebreak_plumbing::kafka::{decode_message, next_message};
use firebreak_schema::ClearEscalation;
use rdkafka::{
    Message,
    consumer::{Consumer, StreamConsumer},
};

use crate::{INTAKE_RETRY, Result, workflow::Ctx};

/// Consumes the control topic until cancelled.
pub(crate) async fn control_loop(ctx: Arc<Ctx>, consumer: StreamConsumer) {
    loop {
        let msg = tokio::select! {
            _ = ctx.cancel.cancelled() => return,
            m = next_message(&consumer) => m,
        };
        match decode_message::<ClearEscalation>(&msg) {
            Err(error) => tracing::warn!(%error, offset = msg.offset(), "undecodable instruction skipped"),
            Ok(c) if c.cluster != ctx.cfg.cluster => {
                tracing::warn!(other = %c.cluster, node = %c.node, "instruction for another cluster on this cluster's topic skipped")
            }
            Ok(c) => {
                let what = format!("clearing the escalation of {} ({})", c.node, c.id);
                if INTAKE_RETRY.until_ok(&what, &ctx.cancel, || clear(&ctx, &c)).await.is_none() {
                    return;
                }
            }
        }
        if let Err(error) = consumer.store_offset_from_message(&msg) {
            tracing::warn!(%error, "could not store offset");
        }
    }
}

/// Clears the node's escalation, if it has one: its mark on the node removed, the clearing
/// recorded (and published) as a step of the escalated workflow. Asked again, it finds none.
async fn clear(ctx: &Ctx, c: &ClearEscalation) -> Result<()> {
    let Some(wf) = ctx.store.escalated(&c.cluster, &c.node).await? else {
        tracing::info!(node = %c.node, id = %c.id, by = %c.by, "no escalation to clear");
        return Ok(());
    };
    ctx.ops.unmark_escalated(&c.node).await?;
    let how = format!("by {} through the event center (instruction {}): {}", c.by, c.id, c.reason);
    ctx.store.clear_escalation(wf, &how).await?;
    ctx.outbox.notify_one();
    tracing::info!(workflow_id = %wf, node = %c.node, by = %c.by, "escalation cleared");
    Ok(())
}
