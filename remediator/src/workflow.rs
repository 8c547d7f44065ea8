//! Driving one workflow through its states.

use std::{sync::Arc, time::Duration};

use firebreak_schema::{REMEDIATION_TOPIC, RemediationEvent, kafka::Producer};
use time::OffsetDateTime;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::{
    Config, Error, Result, State, Store, Workflow,
    gate::GateClient,
    node_ops::{Eviction, NodeOps, boot_and_ready},
    store::ms,
};

pub(crate) struct Ctx {
    pub(crate) cfg: Config,
    pub(crate) store: Store,
    pub(crate) ops: NodeOps,
    pub(crate) gate: GateClient,
    pub(crate) producer: Producer,
    pub(crate) metrics: crate::Metrics,
    pub(crate) cancel: CancellationToken,
}

impl Ctx {
    async fn sleep(&self, d: Duration) -> Result<()> {
        tokio::select! {
            _ = self.cancel.cancelled() => Err(Error::Cancelled),
            _ = tokio::time::sleep(d) => Ok(()),
        }
    }

    /// Publishes the workflow's current state; queued while Kafka is down.
    pub(crate) fn publish(&self, wf: &Workflow) {
        let step = RemediationEvent {
            id: uuid::Uuid::now_v7(),
            workflow_id: wf.id,
            cluster: wf.cluster.clone(),
            node: wf.node.clone(),
            trigger_event_id: wf.trigger_event_id,
            state: wf.state.as_str().into(),
            reason: wf.reason.clone(),
            at: OffsetDateTime::now_utc(),
        };
        if let Err(error) = self.producer.publish_nowait(REMEDIATION_TOPIC, &step) {
            tracing::warn!(%error, "remediation step not published");
        }
    }

    /// Persists a transition, then publishes it. Only then may the next side effect happen.
    async fn advance(&self, wf: &mut Workflow, state: State, reason: String) -> Result<()> {
        let previous = (wf.state, std::mem::replace(&mut wf.reason, reason));
        wf.state = state;
        if let Err(e) = self.store.transition(wf).await {
            (wf.state, wf.reason) = previous;
            return Err(e);
        }
        tracing::info!(state = state.as_str(), reason = %wf.reason, "workflow step");
        self.metrics.transition(&wf.cluster, state.as_str());
        self.publish(wf);
        let reason = format!("Firebreak{}", camel(state.as_str()));
        let message = format!("workflow {}: {}", wf.id, wf.reason);
        if let Err(error) = self.ops.record_event(&wf.node, &reason, &message, state == State::Escalated).await {
            tracing::warn!(%error, "could not record a Kubernetes event");
        }
        Ok(())
    }
}

/// `awaiting_boot` -> `AwaitingBoot`.
fn camel(s: &str) -> String {
    s.split('_')
        .map(|w| {
            let mut c = w.chars();
            c.next().map(|f| f.to_uppercase().chain(c).collect::<String>()).unwrap_or_default()
        })
        .collect()
}

/// Runs a workflow to its end (or until cancelled), retrying failed steps.
pub(crate) async fn drive(ctx: Arc<Ctx>, mut wf: Workflow) {
    let span = tracing::info_span!("workflow", cluster = %wf.cluster, node = %wf.node, workflow_id = %wf.id, incident = %wf.trigger_event_id);
    async move {
        let mut backoff = Duration::from_millis(500);
        let mut runner = Runner::default();
        while !wf.state.is_done() {
            match runner.step(&ctx, &mut wf).await {
                Ok(()) => backoff = Duration::from_millis(500),
                Err(Error::Cancelled) => return,
                Err(error) => {
                    tracing::warn!(%error, state = wf.state.as_str(), "step failed; retrying");
                    if ctx.sleep(backoff).await.is_err() {
                        return;
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
            }
        }
    }
    .instrument(span)
    .await
}

/// In-memory progress of the current step (lost on restart, which only restarts the step).
#[derive(Default)]
struct Runner {
    last_denial: Option<String>,
    evicted: usize,
    refused: usize,
    started: Option<Instant>,
}

impl Runner {
    async fn step(&mut self, ctx: &Ctx, wf: &mut Workflow) -> Result<()> {
        match wf.state {
            State::PermitWait => self.permit(ctx, wf).await,
            State::Cordoning => {
                ctx.ops.cordon_and_taint(&wf.node, &wf.fault_kind).await?;
                let reason =
                    format!("cordoned; tainted {}={}:NoSchedule", firebreak_schema::UNHEALTHY_TAINT_KEY, wf.fault_kind);
                ctx.advance(wf, State::Draining, reason).await
            }
            State::Draining => self.drain(ctx, wf).await,
            State::Rebooting => self.reboot(ctx, wf).await,
            State::AwaitingBoot => self.await_boot(ctx, wf).await,
            State::Verifying => self.verify(ctx, wf).await,
            State::Uncordoning => {
                ctx.ops.uncordon_and_untaint(&wf.node).await?;
                let permit = wf.permit_id;
                ctx.advance(wf, State::Healed, "uncordoned and untainted; node back in service".into()).await?;
                release(ctx, permit).await;
                Ok(())
            }
            State::Healed | State::Escalated => Ok(()),
        }
    }

    async fn permit(&mut self, ctx: &Ctx, wf: &mut Workflow) -> Result<()> {
        let requester = format!("remediator/{}", wf.id);
        let resp = ctx.gate.request(firebreak_schema::Operation::Cordon, &wf.cluster, &wf.node, &requester).await;
        if resp.granted {
            wf.permit_id = resp.permit_id;
            let reason =
                format!("cordon permit {}: {}", resp.permit_id.map(|p| p.to_string()).unwrap_or_default(), resp.reason);
            return ctx.advance(wf, State::Cordoning, reason).await;
        }
        ctx.metrics.denial(&wf.cluster, resp.limit.as_deref());
        let reason = format!("waiting for a cordon permit: {}", resp.reason);
        // Record and publish each distinct denial once, not every retry.
        let kind = resp.limit.clone().unwrap_or_default();
        if self.last_denial.as_deref() != Some(kind.as_str()) {
            self.last_denial = Some(kind);
            ctx.advance(wf, State::PermitWait, reason).await?;
        }
        ctx.sleep(Duration::from_secs(resp.retry_after_s.unwrap_or(2).clamp(1, 30))).await
    }

    async fn drain(&mut self, ctx: &Ctx, wf: &mut Workflow) -> Result<()> {
        let started = *self.started.get_or_insert_with(Instant::now);
        loop {
            let pods = ctx.ops.pods_to_migrate(&wf.node).await?;
            if pods.is_empty() {
                break;
            }
            // A node that is not Ready has no kubelet to finish terminations: once every pod's
            // eviction was accepted, waiting is futile and the reboot is what ends them.
            if pods.iter().all(|p| p.metadata.deletion_timestamp.is_some())
                && !boot_and_ready(&ctx.ops.get(&wf.node).await?).1
            {
                tracing::info!(terminating = pods.len(), "node not Ready; not waiting for its pods to terminate");
                break;
            }
            let mut blocked = Vec::new();
            for pod in pods.iter().filter(|p| p.metadata.deletion_timestamp.is_none()) {
                ctx.ops.mark_for_migration(pod).await?;
                let name = format!(
                    "{}/{}",
                    pod.metadata.namespace.as_deref().unwrap_or(""),
                    pod.metadata.name.as_deref().unwrap_or("")
                );
                match ctx.ops.evict(pod).await? {
                    Eviction::Done => {
                        ctx.metrics.eviction(&wf.cluster, true);
                        self.evicted += 1;
                        tracing::info!(pod = %name, "pod evicted");
                    }
                    Eviction::Blocked(why) => {
                        ctx.metrics.eviction(&wf.cluster, false);
                        self.refused += 1;
                        tracing::info!(pod = %name, why, "eviction refused by a PodDisruptionBudget; will retry");
                        blocked.push(name);
                    }
                }
            }
            if started.elapsed() > ctx.cfg.drain_timeout {
                let names: Vec<String> = pods.iter().filter_map(|p| p.metadata.name.clone()).collect();
                return self.escalate(ctx, wf, format!(
                    "drain did not finish within {}s: {} pods remain ({}); {} evictions refused by PodDisruptionBudgets",
                    ctx.cfg.drain_timeout.as_secs(), names.len(), names.join(", "), self.refused
                )).await;
            }
            ctx.sleep(if blocked.is_empty() { Duration::from_millis(500) } else { ctx.cfg.eviction_retry }).await?;
        }
        let node = ctx.ops.get(&wf.node).await?;
        let (boot_id, _) = boot_and_ready(&node);
        wf.boot_id_before = Some(boot_id);
        let reason = format!(
            "drained: {} pods evicted, {} evictions refused by PodDisruptionBudgets and retried, in {:.1}s",
            self.evicted,
            self.refused,
            started.elapsed().as_secs_f64()
        );
        self.started = None;
        ctx.advance(wf, State::Rebooting, reason).await
    }

    async fn reboot(&mut self, ctx: &Ctx, wf: &mut Workflow) -> Result<()> {
        let node = ctx.ops.get(&wf.node).await?;
        let (boot, ready) = boot_and_ready(&node);
        let reason = format!(
            "reboot requested (annotation {}); boot id {boot}, Ready={ready}",
            firebreak_schema::REBOOT_ANNOTATION
        );
        // Persisted first: after a crash the request is not repeated (a lost request times out
        // and escalates; a repeated one would reboot the node twice).
        ctx.advance(wf, State::AwaitingBoot, reason).await?;
        let mut backoff = Duration::from_millis(200);
        loop {
            match ctx.ops.request_reboot(&wf.node, &wf.id.to_string()).await {
                Ok(()) => return Ok(()),
                Err(error) => tracing::warn!(%error, "reboot request failed; retrying"),
            }
            ctx.sleep(backoff).await?;
            backoff = (backoff * 2).min(Duration::from_secs(10));
        }
    }

    async fn await_boot(&mut self, ctx: &Ctx, wf: &mut Workflow) -> Result<()> {
        let started = *self.started.get_or_insert_with(Instant::now);
        let before = wf.boot_id_before.clone().unwrap_or_default();
        loop {
            let node = ctx.ops.get(&wf.node).await?;
            let (boot, ready) = boot_and_ready(&node);
            if boot != before && ready {
                wf.rebooted_at_ms = Some(ms(OffsetDateTime::now_utc()));
                let reason = format!(
                    "rebooted in {:.1}s: boot id {before} -> {boot}; node Ready",
                    started.elapsed().as_secs_f64()
                );
                self.started = None;
                return ctx.advance(wf, State::Verifying, reason).await;
            }
            if started.elapsed() > ctx.cfg.reboot_timeout {
                let why = format!(
                    "node did not come back within {}s of the reboot request (boot id {boot}, Ready={ready})",
                    ctx.cfg.reboot_timeout.as_secs()
                );
                return self.escalate(ctx, wf, why).await;
            }
            ctx.sleep(Duration::from_millis(500)).await?;
        }
    }

    async fn verify(&mut self, ctx: &Ctx, wf: &mut Workflow) -> Result<()> {
        let since = wf.rebooted_at_ms.unwrap_or(0);
        let started = Instant::now();
        while started.elapsed() < ctx.cfg.quiet_period {
            let node = ctx.ops.get(&wf.node).await?;
            let (boot, ready) = boot_and_ready(&node);
            if !ready {
                return self
                    .escalate(
                        ctx,
                        wf,
                        format!(
                            "node went NotReady {:.1}s into the quiet period after reboot",
                            started.elapsed().as_secs_f64()
                        ),
                    )
                    .await;
            }
            if let Some((event, kind)) = ctx.store.critical_fault_since(&wf.cluster, &wf.node, since).await? {
                return self
                    .escalate(ctx, wf, format!("fault recurred after reboot: {kind} ({event}) on boot {boot}"))
                    .await;
            }
            ctx.sleep(Duration::from_millis(500)).await?;
        }
        let reason =
            format!("quiet period passed: Ready and no new critical fault for {}s", ctx.cfg.quiet_period.as_secs());
        ctx.advance(wf, State::Uncordoning, reason).await
    }

    async fn escalate(&mut self, ctx: &Ctx, wf: &mut Workflow, why: String) -> Result<()> {
        tracing::warn!(why, "escalating to a human; node stays cordoned");
        let permit = wf.permit_id;
        ctx.advance(wf, State::Escalated, format!("needs a human: {why}; node left cordoned and tainted")).await?;
        release(ctx, permit).await;
        Ok(())
    }
}

async fn release(ctx: &Ctx, permit: Option<uuid::Uuid>) {
    let Some(permit) = permit else { return };
    for _ in 0..5 {
        if ctx.gate.release(permit).await {
            return;
        }
        if ctx.sleep(Duration::from_secs(1)).await.is_err() {
            return;
        }
    }
    tracing::warn!(permit_id = %permit, "could not release permit; it will expire at its TTL");
}
