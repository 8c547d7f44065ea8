//! Driving one workflow through its states.

use std::{sync::Arc, time::Duration};

use chrono::Utc;
use firebreak_plumbing::{kafka::Producer, lenient::Lenient, retry};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::{
    Config, Error, Result, Rung, State, Store, Workflow,
    gate::GateClient,
    node_cache::NodeCache,
    node_ops::{Eviction, NodeOps, boot_and_ready, listed, migration, pod_names, shortlist},
    outbox::{Hook, Note},
    permits::Held,
    reinstall::{self, Via},
    store::ms,
};
use firebreak_schema::Operation;

/// How a failed step is redone: 500 ms doubling to 30 s, jittered; reset after a success.
const STEP_RETRY: retry::Policy = retry::Policy::forever(Duration::from_millis(500), Duration::from_secs(30));
/// How the reboot request (asked for once, after `awaiting_boot` is persisted) is retried.
const REQUEST_RETRY: retry::Policy = retry::Policy::forever(Duration::from_millis(200), Duration::from_secs(10));
/// How a permit is given back; after that it expires at its TTL.
const RELEASE_RETRY: retry::Policy = retry::Policy::times(4, Duration::from_secs(1), Duration::from_secs(4));

pub(crate) struct Ctx {
    pub(crate) cfg: Config,
    pub(crate) store: Store,
    pub(crate) ops: NodeOps,
    pub(crate) nodes: NodeCache,
    pub(crate) held: Held,
    pub(crate) gate: GateClient,
    pub(crate) http: reqwest::Client,
    pub(crate) producer: Producer,
    pub(crate) commands: crate::commands::Commands,
    pub(crate) metrics: crate::Metrics,
    /// Woken after each persisted transition: the outbox's sender has something to send.
    pub(crate) outbox: tokio::sync::Notify,
    pub(crate) cancel: CancellationToken,
}

impl Ctx {
    /// `Err(PermitLost)` unless the permit is held and alive: checked before each risky side
    /// effect.
    fn holding(&self, permit: Option<uuid::Uuid>) -> Result<()> {
        let Some(permit) = permit else {
            return Err(Error::PermitLost { permit: uuid::Uuid::nil(), why: "no permit is held for this step".into() });
        };
        self.held.check(permit).map_err(|why| Error::PermitLost { permit, why })
    }

    /// The node's failure domains (the labels the remediator is told to report), for the gate's
    /// per-domain budgets.
    fn domains_of(&self, node: &str) -> std::collections::BTreeMap<String, String> {
        let Some(n) = self.nodes.get(node) else { return Default::default() };
        let Some(n) = n.decoded() else { return Default::default() };
        let labels = n.metadata.labels.clone().unwrap_or_default();
        self.cfg.failure_domains.iter().filter_map(|k| labels.get(k).map(|v| (k.clone(), v.clone()))).collect()
    }

    async fn sleep(&self, d: Duration) -> Result<()> {
        tokio::select! {
            _ = self.cancel.cancelled() => Err(Error::Cancelled),
            _ = tokio::time::sleep(d) => Ok(()),
        }
    }

    /// Persists a transition with the webhook calls it makes; the outbox then sends the step
    /// and the calls. Only then may the next side effect happen.
    async fn advance_noting(
        &self,
        wf: &mut Workflow,
        state: State,
        reason: String,
        notes: &[crate::outbox::Note],
    ) -> Result<()> {
        let previous = (wf.state, std::mem::replace(&mut wf.reason, reason));
        wf.state = state;
        if let Err(e) = self.store.transition(wf, notes).await {
            (wf.state, wf.reason) = previous;
            return Err(e);
        }
        self.outbox.notify_one();
        tracing::info!(state = state.as_str(), reason = %wf.reason, "workflow step");
        self.metrics.transition(&wf.cluster, state.as_str());
        let reason = format!("Firebreak{}", camel(state.as_str()));
        let message = format!("workflow {}: {}", wf.id, wf.reason);
        if let Err(error) = self.ops.record_event(&wf.node, &reason, &message, state == State::Escalated).await {
            tracing::warn!(%error, "could not record a Kubernetes event");
        }
        Ok(())
    }

    /// Persists a transition (see [`Ctx::advance_noting`]).
    async fn advance(&self, wf: &mut Workflow, state: State, reason: String) -> Result<()> {
        self.advance_noting(wf, state, reason, &[]).await
    }
}

/// Which permits a transition gives back.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Release {
    /// The step's own (`drain`, `reboot`): the step is done.
    Step,
    /// Every permit: the workflow is done.
    All,
}

impl Ctx {
    /// Persists a transition that gives permits back, then releases them. If the transition
    /// cannot be persisted, the workflow still holds them (and a retry gives them back).
    async fn advance_releasing(&self, wf: &mut Workflow, state: State, reason: String, which: Release) -> Result<()> {
        self.advance_releasing_noting(wf, state, reason, which, &[]).await
    }

    /// [`Ctx::advance_releasing`], with the webhook calls the transition makes.
    async fn advance_releasing_noting(
        &self,
        wf: &mut Workflow,
        state: State,
        reason: String,
        which: Release,
        notes: &[crate::outbox::Note],
    ) -> Result<()> {
        let kept = (wf.permit_id, wf.step_permit_id);
        if which == Release::All {
            wf.permit_id = None;
        }
        wf.step_permit_id = None;
        if let Err(e) = self.advance_noting(wf, state, reason, notes).await {
            (wf.permit_id, wf.step_permit_id) = kept;
            return Err(e);
        }
        release(self, [if which == Release::All { kept.0 } else { None }, kept.1]).await;
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
        let mut backoff = STEP_RETRY.backoff();
        let mut runner = Runner::default();
        while !wf.state.is_done() {
            match runner.step(&ctx, &mut wf).await {
                Ok(()) => backoff.reset(),
                Err(Error::Cancelled) => return,
                Err(error) => {
                    let what = format!("step {}", wf.state.as_str());
                    let Some(delay) = backoff.next_after(&what, &error) else { return };
                    if ctx.sleep(delay).await.is_err() {
                        return;
                    }
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
    /// Pods seen on the node during the drain, and those this process evicted.
    seen: std::collections::BTreeSet<(String, String)>,
    evicted: Vec<String>,
    /// The labelling and the grace period were recorded.
    announced: bool,
    /// The node command of the current step was sent by this process.
    sent: bool,
    /// The node's agent's acceptance of the command was recorded.
    accepted: bool,
    /// The `report` command of a verification was sent by this process.
    probed: bool,
    refused: usize,
}

impl Runner {
    async fn step(&mut self, ctx: &Ctx, wf: &mut Workflow) -> Result<()> {
        match self.act(ctx, wf).await {
            Err(Error::PermitLost { permit, why }) => self.lost(ctx, wf, permit, why).await,
            Err(Error::NodeGone(node))
                if wf.state == State::AwaitingReinstall
                    && let Some(Via::Machine { namespace, name }) = wf.reinstall_via.clone() =>
            {
                let reason = format!(
                    "replaced: Cluster API Machine {namespace}/{name} deleted and node {node} gone in {:.1}s; its \
                     MachineSet brings a new node in its place",
                    since(wf.reboot_requested_at_ms).as_secs_f64()
                );
                ctx.advance_releasing(wf, State::Replaced, reason, Release::All).await
            }
            Err(Error::NodeGone(node)) => {
                tracing::warn!(%node, "node deleted; workflow ends");
                let reason =
                    format!("node {node} no longer exists (the API server answers 404): nothing left to repair");
                ctx.advance_releasing(wf, State::NodeGone, reason, Release::All).await
            }
            other => other,
        }
    }

    async fn act(&mut self, ctx: &Ctx, wf: &mut Workflow) -> Result<()> {
        // Between our cordon and our uncordon, every step re-asserts that the node is isolated.
        // Read from the API, not the cache, which may not have seen our own cordon yet.
        if matches!(
            wf.state,
            State::Draining
                | State::Rebooting
                | State::AwaitingBoot
                | State::Restarting
                | State::AwaitingRestart
                | State::Reinstalling
                | State::AwaitingReinstall
                | State::Verifying
        ) {
            let node = ctx.ops.get(&wf.node).await?;
            if !self.still_isolated(ctx, wf, &node).await? {
                return Ok(());
            }
        }
        match wf.state {
            State::PermitWait if ctx.cfg.dry_run => self.shadow(ctx, wf).await,
            State::PermitWait => self.acquire(ctx, wf, Operation::Cordon).await,
            State::Cordoning => {
                ctx.holding(wf.permit_id)?;
                ctx.ops.cordon_and_taint(&wf.node, &wf.fault_kind).await?;
                let reason =
                    format!("cordoned; tainted {}={}:NoSchedule", firebreak_schema::UNHEALTHY_TAINT_KEY, wf.fault_kind);
                // What the node looked like before anything destructive, for the record.
                let evidence = evidence(ctx, wf).await?;
                ctx.advance(wf, State::Cordoning, evidence).await?;
                match wf.rung.clone() {
                    Rung::Reboot | Rung::Reinstall | Rung::Ticket => ctx.advance(wf, State::Draining, reason).await,
                    Rung::Restart(c) => {
                        let reason =
                            format!("{reason}; {c} is restarted next, without a drain (its pods keep running)");
                        ctx.advance(wf, State::Restarting, reason).await
                    }
                    Rung::Human => {
                        let why = format!(
                            "{reason}; the remediation policy gives this fault to a human ({})",
                            ladder_why(wf)
                        );
                        self.escalate(ctx, wf, why).await
                    }
                }
            }
            State::Draining if wf.step_permit_id.is_none() => self.acquire(ctx, wf, Operation::Drain).await,
            State::Draining => self.drain(ctx, wf).await,
            State::Rebooting if wf.step_permit_id.is_none() => self.acquire(ctx, wf, Operation::Reboot).await,
            State::Rebooting => self.reboot(ctx, wf).await,
            State::AwaitingBoot => self.await_boot(ctx, wf).await,
            State::Reinstalling if wf.step_permit_id.is_none() => self.acquire(ctx, wf, Operation::Reinstall).await,
            State::Reinstalling => self.reinstall(ctx, wf).await,
            State::AwaitingReinstall => self.await_reinstall(ctx, wf).await,
            State::Restarting => self.restart(ctx, wf).await,
            State::AwaitingRestart => self.await_restart(ctx, wf).await,
            State::Verifying => self.verify(ctx, wf).await,
            State::Uncordoning => {
                let reason = if wf.was_cordoned == Some(true) {
                    ctx.ops.untaint(&wf.node).await?;
                    "untainted; left cordoned, as it was before Firebreak took it (someone else's cordon stands)"
                } else {
                    ctx.ops.uncordon_and_untaint(&wf.node).await?;
                    "uncordoned and untainted; node back in service"
                };
                ctx.advance_releasing(wf, State::Healed, reason.into(), Release::All).await
            }
            State::Healed
            | State::Escalated
            | State::NodeGone
            | State::Cleared
            | State::Cancelled
            | State::Shadowed
            | State::Replaced => Ok(()),
        }
    }

    /// Asks for the permit of the step the workflow is in: `cordon` (then on to cordoning), or
    /// the step's own (`drain`, `reboot`), held with the cordon permit while the step runs.
    async fn acquire(&mut self, ctx: &Ctx, wf: &mut Workflow, op: Operation) -> Result<()> {
        // A node deleted while its workflow waits ends the workflow (`NodeGone`), not the wait.
        let node = ctx.ops.get(&wf.node).await?;
        if op == Operation::Cordon {
            if let Some(why) = cleared(wf, &node) {
                return self.cleared(ctx, wf, why, "cordon").await;
            }
            // Known once, before our own cordon: whether someone else's cordon is there (a
            // cordon beside our taint is ours, left by an escalation an operator cleared).
            if wf.was_cordoned.is_none() {
                let spec = node.spec.as_ref();
                wf.was_cordoned = Some(spec.and_then(|s| s.unschedulable) == Some(true) && !tainted(&node));
            }
        }
        let requester = format!("remediator/{}", wf.id);
        let domains = ctx.domains_of(&wf.node);
        let resp = ctx.gate.request(op, &wf.cluster, &wf.node, domains, &requester).await;
        if let (true, Some(id), Some(expires_at)) = (resp.granted, resp.permit_id, resp.expires_at) {
            ctx.held.hold(id, op, expires_at);
            self.last_denial = None;
            let reason = format!("{op} permit {id}: {}", resp.reason);
            return if op == Operation::Cordon {
                wf.permit_id = Some(id);
                ctx.advance(wf, State::Cordoning, reason).await
            } else {
                wf.step_permit_id = Some(id);
                // The drain's deadline counts from its first permit, across restarts and
                // permits lost and asked for again.
                if op == Operation::Drain && wf.step_started_at_ms.is_none() {
                    wf.step_started_at_ms = Some(ms(Utc::now()));
                }
                ctx.advance(wf, wf.state, reason).await
            };
        }
        ctx.metrics.denial(&wf.cluster, resp.limit.as_deref());
        let reason = format!("waiting for a {op} permit: {}", resp.reason);
        // Record and publish each distinct denial once, not every retry.
        let kind = format!("{op}/{}", resp.limit.clone().unwrap_or_default());
        if self.last_denial.as_deref() != Some(kind.as_str()) {
            self.last_denial = Some(kind);
            ctx.advance(wf, wf.state, reason).await?;
        }
        ctx.sleep(Duration::from_secs(resp.retry_after_s.unwrap_or(2).clamp(1, 30))).await
    }

    /// A permit was lost before a risky side effect: forget it and ask again (the cordon permit
    /// from the start, which is idempotent up to the reboot; a step's permit for that step).
    async fn lost(&mut self, ctx: &Ctx, wf: &mut Workflow, permit: uuid::Uuid, why: String) -> Result<()> {
        ctx.held.forget(permit);
        let state = wf.state;
        let next = if wf.permit_id.is_none() || wf.permit_id == Some(permit) {
            wf.permit_id = None;
            State::PermitWait
        } else {
            wf.step_permit_id = None;
            state
        };
        tracing::warn!(permit_id = %permit, why, state = state.as_str(), "permit lost; stopped before the next side effect");
        ctx.advance(wf, next, format!("{why}; stopped before the next side effect of {}; asking again", state.as_str()))
            .await
    }

    async fn drain(&mut self, ctx: &Ctx, wf: &mut Workflow) -> Result<()> {
        // (A workflow from before starts were persisted counts from now.)
        let started = wf.step_started_at_ms.or_else(|| Some(ms(Utc::now())));
        let grace = ctx.cfg.migration_grace;
        // Progress is a new low of the pods left on the node; a drain that makes none for
        // `drain_stall` gives its permits back (pods evicted and coming back are not progress).
        let mut fewest = (usize::MAX, tokio::time::Instant::now());
        loop {
            // Each round re-asserts that the node is isolated before evicting anything: an
            // uncordoned node takes evicted pods straight back. The cache answers when it shows
            // the node isolated; otherwise the API server decides.
            if !ctx.nodes.get(&wf.node).is_some_and(|n| n.decoded().is_some_and(isolated)) {
                let node = ctx.ops.get(&wf.node).await?;
                if !self.still_isolated(ctx, wf, &node).await? {
                    return Ok(());
                }
            }
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
            // The owners' grace period is not a stall.
            if pods.len() < fewest.0 || since(started) < grace {
                fewest = (pods.len().min(fewest.0), tokio::time::Instant::now());
            } else if fewest.1.elapsed() > ctx.cfg.drain_stall {
                return self
                    .escalate(ctx, wf, format!(
                        "drain made no progress for {}s: {} pods remain ({}), {} evicted and {} evictions refused by \
                         PodDisruptionBudgets so far; its permits are given back",
                        ctx.cfg.drain_stall.as_secs(), pods.len(), listed(pods.iter()),
                        self.evicted.len(), self.refused
                    ))
                    .await;
            }
            let plan = migration(&pods, ctx.cfg.evict_unmanaged);
            if !plan.unmanaged.is_empty() {
                return self
                    .escalate(ctx, wf, format!(
                        "drain refused: {} pods have no controller to recreate them elsewhere ({}); evicting them loses \
                         them, which the policy does not allow (--evict-unmanaged-pods, as kubectl drain --force)",
                        plan.unmanaged.len(),
                        listed(plan.unmanaged.iter().copied())
                    ))
                    .await;
            }
            // Every pod is labelled first; their owners have the grace period to move them.
            for pod in pods.iter().filter(|p| p.metadata.deletion_timestamp.is_none()) {
                ctx.holding(wf.permit_id)?;
                ctx.holding(wf.step_permit_id)?;
                ctx.ops.mark_for_migration(pod).await?;
                self.seen.insert(pod_names(pod));
            }
            if !self.announced {
                self.announced = true;
                let manual = if plan.manual.is_empty() {
                    String::new()
                } else {
                    format!("; {} left to their owners ({})", plan.manual.len(), listed(plan.manual.iter().copied()))
                };
                let reason = format!(
                    "labelled {} pods {}=true; evictions start {}s after the drain began{manual}",
                    pods.len(),
                    firebreak_schema::TO_BE_MIGRATED_LABEL,
                    grace.as_secs()
                );
                ctx.advance(wf, State::Draining, reason).await?;
            }
            let mut blocked = Vec::new();
            if since(started) >= grace {
                for pod in plan.evict.iter().filter(|p| p.metadata.deletion_timestamp.is_none()) {
                    ctx.holding(wf.permit_id)?;
                    ctx.holding(wf.step_permit_id)?;
                    let (ns, name) = pod_names(pod);
                    match ctx.ops.evict(pod).await? {
                        Eviction::Done => {
                            ctx.metrics.eviction(&wf.cluster, true);
                            self.evicted.push(format!("{ns}/{name}"));
                            tracing::info!(pod = %name, namespace = %ns, "pod evicted");
                        }
                        Eviction::Blocked(why) => {
                            ctx.metrics.eviction(&wf.cluster, false);
                            self.refused += 1;
                            tracing::info!(pod = %name, namespace = %ns, why, "eviction refused by a PodDisruptionBudget; will retry");
                            blocked.push(name);
                        }
                    }
                }
            }
            if since(started) > ctx.cfg.drain_timeout {
                let names: Vec<String> = pods.iter().filter_map(|p| p.metadata.name.clone()).collect();
                let manual = if plan.manual.is_empty() {
                    String::new()
                } else {
                    format!("; {} waited for their owners ({})", plan.manual.len(), listed(plan.manual.iter().copied()))
                };
                return self.escalate(ctx, wf, format!(
                    "drain did not finish within {}s: {} pods remain ({}); {} evictions refused by PodDisruptionBudgets{manual}",
                    ctx.cfg.drain_timeout.as_secs(), names.len(), names.join(", "), self.refused
                )).await;
            }
            ctx.sleep(if blocked.is_empty() { Duration::from_millis(500) } else { ctx.cfg.eviction_retry }).await?;
        }
        let evicted = self.evicted.len();
        let moved = self.seen.len().saturating_sub(evicted);
        let reason = format!(
            "drained: {evicted} pods evicted ({}), {moved} moved by their owners, {} evictions refused by \
             PodDisruptionBudgets and retried, in {:.1}s",
            shortlist(self.evicted.clone()),
            self.refused,
            since(started).as_secs_f64()
        );
        match wf.rung {
            Rung::Reinstall => ctx.advance_releasing(wf, State::Reinstalling, reason, Release::Step).await,
            Rung::Ticket => {
                ctx.advance_releasing(wf, State::Draining, reason, Release::Step).await?;
                self.ticket(ctx, wf).await
            }
            _ => ctx.advance_releasing(wf, State::Rebooting, reason, Release::Step).await,
        }
    }

    /// Opens a hardware ticket (the `ticket` rung, after the drain) and leaves the node
    /// isolated for the technician: the workflow escalates, and the ticket's closure is an
    /// operator clearing the escalation.
    async fn ticket(&mut self, ctx: &Ctx, wf: &mut Workflow) -> Result<()> {
        let Some(hook) = &ctx.cfg.ticket_webhook else {
            let why = "the policy asks for a hardware ticket, but no ticket webhook is configured (--ticket-webhook)";
            return self.escalate(ctx, wf, why.into()).await;
        };
        // The technician gets the node as it is now (drained) and why it came to a ticket.
        let evidence = evidence(ctx, wf).await?;
        let body = serde_json::json!({"event": "hardware_ticket", "workflow_id": wf.id, "cluster": wf.cluster,
            "node": wf.node, "fault_kind": wf.fault_kind, "trigger_event_id": wf.trigger_event_id,
            "why": wf.rung_why, "evidence": evidence});
        let why = format!(
            "hardware ticket opened ({}); the node stays drained and cordoned until the ticket is closed and the \
             escalation cleared",
            hook.url
        );
        let ticket = Note { hook: Hook::Ticket, event: "hardware_ticket", body };
        self.escalate_noting(ctx, wf, why, vec![ticket]).await
    }

    /// Re-images the node through the first actuator that applies (see `reinstall`): the
    /// actuator and the time are persisted with `awaiting_reinstall` before it is asked.
    async fn reinstall(&mut self, ctx: &Ctx, wf: &mut Workflow) -> Result<()> {
        let node = ctx.ops.get(&wf.node).await?;
        let Some(via) = reinstall::choose(&ctx.cfg, wf, &node) else {
            let why = "the policy asks for a reinstall, but no reinstall actuator is configured \
                       (--cluster-api-kubeconfig for Cluster API machines, --reinstall-job-template, \
                       --reinstall-webhook)";
            return self.escalate(ctx, wf, why.into()).await;
        };
        let (boot, ready) = boot_and_ready(&node);
        ctx.holding(wf.permit_id)?;
        ctx.holding(wf.step_permit_id)?;
        // Persisted first: a restarted remediator waits on the same actuator, and asks it again
        // only where asking twice is harmless.
        wf.boot_id_before = Some(boot.clone());
        let at = Utc::now();
        wf.reboot_requested_at_ms = Some(ms(at));
        wf.reinstall_via = Some(via.clone());
        let reason = format!("{} (boot id {boot}, Ready={ready})", via.describe(ctx.cfg.reinstall_webhook.as_ref()));
        // The webhook is called from the outbox, once the request is on record; the other
        // actuators are asked here.
        let notes = match via {
            Via::Webhook => vec![Note {
                hook: Hook::Reinstall,
                event: "reinstall",
                body: serde_json::json!({"event": "reinstall", "workflow_id": wf.id, "cluster": wf.cluster,
                    "node": wf.node, "boot_id": boot, "requested_at": at}),
            }],
            _ => Vec::new(),
        };
        ctx.advance_noting(wf, State::AwaitingReinstall, reason, &notes).await?;
        self.ask_reinstall(ctx, wf).await
    }

    /// Carries out the reinstall the workflow persisted: deletes the Machine or creates the Job
    /// (each safe to do again); the webhook's call is the outbox's.
    async fn ask_reinstall(&mut self, ctx: &Ctx, wf: &Workflow) -> Result<()> {
        self.sent = true;
        let boot = wf.boot_id_before.clone().unwrap_or_default();
        match (&wf.reinstall_via, &ctx.cfg.cluster_api, &ctx.cfg.reinstall_job, &ctx.cfg.reinstall_webhook) {
            (Some(Via::Machine { namespace, name }), Some(capi), _, _) => {
                reinstall::delete_machine(capi, namespace, name).await
            }
            (Some(Via::Job { .. }), _, Some(template), _) => {
                reinstall::create_job(ctx.ops.client(), template, wf, &boot).await
            }
            // Called from the outbox, with the transition that recorded it.
            (Some(Via::Webhook), ..) => Ok(()),
            // Asked before this process started, through an actuator it is not configured
            // with: it can still see the node come back.
            (via, ..) => {
                tracing::warn!(?via, "reinstall asked through an actuator this remediator is not configured with");
                Ok(())
            }
        }
    }

    /// Waits for the reinstalled node: back with a new boot id and Ready — or, replaced through
    /// Cluster API, gone.
    async fn await_reinstall(&mut self, ctx: &Ctx, wf: &mut Workflow) -> Result<()> {
        if !self.sent {
            self.ask_reinstall(ctx, wf).await?;
        }
        loop {
            let left = ctx.cfg.reinstall_timeout.saturating_sub(since(wf.reboot_requested_at_ms));
            // A node gone ends the workflow: `replaced` after a Machine's deletion (see `step`).
            let (back, boot, ready) = new_boot(ctx, wf, left.min(Duration::from_secs(2))).await?;
            if back {
                return back_on_new_boot(ctx, wf, "reinstalled", &boot).await;
            }
            if let Some(Via::Job { namespace, name }) = &wf.reinstall_via
                && let Some(why) = reinstall::job_failed(ctx.ops.client(), namespace, name).await?
            {
                return self.escalate(ctx, wf, why).await;
            }
            if left.is_zero() {
                let why = format!(
                    "node did not come back within {}s of the reinstall request (boot id {boot}, Ready={ready})",
                    ctx.cfg.reinstall_timeout.as_secs()
                );
                return self.escalate(ctx, wf, why).await;
            }
        }
    }

    async fn reboot(&mut self, ctx: &Ctx, wf: &mut Workflow) -> Result<()> {
        let node = ctx.ops.get(&wf.node).await?;
        if let Some(why) = cleared(wf, &node) {
            // Drained already: no reboot; verified from now, then back in service.
            wf.reboot_requested_at_ms = Some(ms(Utc::now()));
            wf.step_started_at_ms = wf.reboot_requested_at_ms;
            // No reboot was asked for: nothing for the node's agent to report.
            wf.boot_id_before = None;
            let reason = format!("cleared before action: {why}; reboot skipped, the node is verified and put back");
            return ctx.advance_releasing(wf, State::Verifying, reason, Release::Step).await;
        }
        let (boot, ready) = boot_and_ready(&node);
        // Persisted first, with the time that makes the command's id: a restarted remediator
        // sends the same command, which the node carries out at most once (on the boot it was
        // asked for). From this moment on, a critical fault on the node (boot time included)
        // means the repair did not hold.
        ctx.holding(wf.permit_id)?;
        ctx.holding(wf.step_permit_id)?;
        wf.boot_id_before = Some(boot.clone());
        wf.reboot_requested_at_ms = Some(ms(Utc::now()));
        let cmd = self.repair_command(ctx, wf);
        let reason = format!("reboot asked of the node's actuator (command {}); boot id {boot}, Ready={ready}", cmd.id);
        ctx.advance(wf, State::AwaitingBoot, reason).await?;
        self.send(ctx, &cmd).await
    }

    /// The node command of the workflow's repair (its reboot or restart): the same on every
    /// call, valid until the repair's deadline.
    fn repair_command(&self, ctx: &Ctx, wf: &Workflow) -> firebreak_schema::NodeCommand {
        let at = wf.reboot_requested_at_ms.unwrap_or_else(|| ms(Utc::now()));
        let (action, ttl) = match &wf.rung {
            Rung::Restart(component) => {
                (firebreak_schema::NodeAction::Restart { component: component.clone() }, ctx.cfg.restart_timeout)
            }
            _ => (firebreak_schema::NodeAction::Reboot, ctx.cfg.reboot_timeout),
        };
        crate::commands::command(wf, action, at, ttl)
    }

    /// Asks the node's actuator to restart the rung's component (once persisted, like a reboot).
    async fn restart(&mut self, ctx: &Ctx, wf: &mut Workflow) -> Result<()> {
        let node = ctx.ops.get(&wf.node).await?;
        let (boot, ready) = boot_and_ready(&node);
        ctx.holding(wf.permit_id)?;
        wf.boot_id_before = Some(boot.clone());
        wf.reboot_requested_at_ms = Some(ms(Utc::now()));
        let cmd = self.repair_command(ctx, wf);
        let reason =
            format!("{} asked of the node's actuator (command {}); boot id {boot}, Ready={ready}", cmd.action, cmd.id);
        ctx.advance(wf, State::AwaitingRestart, reason).await?;
        self.send(ctx, &cmd).await
    }

    /// Waits for the actuator to report the restart done and the node Ready.
    async fn await_restart(&mut self, ctx: &Ctx, wf: &mut Workflow) -> Result<()> {
        let cmd = self.repair_command(ctx, wf);
        if !self.sent {
            self.send(ctx, &cmd).await?;
        }
        let started = wf.reboot_requested_at_ms;
        let ready = |n: Option<&k8s_openapi::api::core::v1::Node>| n.is_none_or(|n| boot_and_ready(n).1);
        loop {
            let done = match self.heard(ctx, wf, &cmd).await? {
                Ok(done) => done,
                Err(why) => return self.escalate(ctx, wf, why).await,
            };
            let left = ctx.cfg.restart_timeout.saturating_sub(since(started));
            let (node, up) = ctx
                .nodes
                .wait_for(&wf.node, left.min(Duration::from_secs(1)), &ctx.cancel, ready)
                .await
                .ok_or(Error::Cancelled)?;
            if up && node.is_none() {
                return Err(Error::NodeGone(wf.node.clone()));
            }
            if let (Some(detail), true) = (&done, up) {
                let reason =
                    format!("{} done in {:.1}s ({detail}); node Ready", cmd.action, since(started).as_secs_f64());
                wf.step_started_at_ms = Some(ms(Utc::now()));
                return ctx.advance(wf, State::Verifying, reason).await;
            }
            if left.is_zero() {
                let why = format!(
                    "the {} did not complete within {}s: {}",
                    cmd.action,
                    ctx.cfg.restart_timeout.as_secs(),
                    if done.is_some() {
                        "done, but the node is not Ready"
                    } else {
                        "no report of it done from the node's agent"
                    }
                );
                return self.escalate(ctx, wf, why).await;
            }
        }
    }

    /// What the node's actuator reported on the workflow's command so far: `Err` with why if it
    /// failed or refused it, else the detail of its `done`, if it is. Its acceptance is recorded,
    /// once, in the workflow's current state.
    async fn heard(
        &mut self,
        ctx: &Ctx,
        wf: &mut Workflow,
        cmd: &firebreak_schema::NodeCommand,
    ) -> Result<std::result::Result<Option<String>, String>> {
        let mut done = None;
        for report in ctx.store.reports(cmd.id).await? {
            match report.outcome.as_str() {
                "failed" | "refused" => {
                    return Ok(Err(format!(
                        "the node's actuator {} the {}: {}",
                        report.outcome, cmd.action, report.detail
                    )));
                }
                "accepted" if !self.accepted => {
                    self.accepted = true;
                    let reason = format!("the node's agent accepted the {} on boot {}", cmd.action, report.boot_id);
                    ctx.advance(wf, wf.state, reason).await?;
                }
                "done" => done = Some(report.detail),
                _ => {}
            }
        }
        Ok(Ok(done))
    }

    async fn send(&mut self, ctx: &Ctx, cmd: &firebreak_schema::NodeCommand) -> Result<()> {
        send_command(ctx, cmd).await?;
        self.sent = true;
        Ok(())
    }

    async fn await_boot(&mut self, ctx: &Ctx, wf: &mut Workflow) -> Result<()> {
        let cmd = self.repair_command(ctx, wf);
        // After a restart the command is sent again: the node carries it out at most once.
        if !self.sent {
            self.send(ctx, &cmd).await?;
        }
        // The reboot's deadline counts from its request, persisted before it was made.
        let started = wf.reboot_requested_at_ms;
        loop {
            if let Err(why) = self.heard(ctx, wf, &cmd).await? {
                return self.escalate(ctx, wf, why).await;
            }
            let left = ctx.cfg.reboot_timeout.saturating_sub(since(started));
            let (done, boot, ready) = new_boot(ctx, wf, left.min(Duration::from_secs(1))).await?;
            if done {
                return back_on_new_boot(ctx, wf, "rebooted", &boot).await;
            }
            if left.is_zero() {
                let why = format!(
                    "node did not come back within {}s of the reboot request (boot id {boot}, Ready={ready})",
                    ctx.cfg.reboot_timeout.as_secs()
                );
                return self.escalate(ctx, wf, why).await;
            }
        }
    }

    async fn verify(&mut self, ctx: &Ctx, wf: &mut Workflow) -> Result<()> {
        let faults_after = wf.reboot_requested_at_ms.unwrap_or(0);
        // The quiet period and the readiness timeout count from the node's return, across restarts.
        let started = wf.step_started_at_ms.or_else(|| Some(ms(Utc::now())));
        let quiet = ctx.cfg.quiet_period;
        let mut waiting_on: Option<Vec<String>> = None;
        loop {
            let seen = ctx.nodes.get(&wf.node).ok_or_else(|| Error::NodeGone(wf.node.clone()))?;
            let node = match &*seen {
                Lenient::Decoded(n) => n,
                Lenient::Undecodable { error, .. } => return Err(Error::Undecodable(wf.node.clone(), error.clone())),
            };
            let (boot, ready) = boot_and_ready(node);
            let elapsed = since(started);
            if !ready {
                let why = format!(
                    "node went NotReady {:.1}s into verification after the {}",
                    elapsed.as_secs_f64(),
                    wf.rung.name()
                );
                return self.escalate(ctx, wf, why).await;
            }
            if let Some((event, kind)) = ctx.store.critical_fault_since(&wf.cluster, &wf.node, faults_after).await? {
                let why =
                    format!("fault recurred after the {} request: {kind} ({event}) on boot {boot}", wf.rung.name());
                return self.escalate(ctx, wf, why).await;
            }
            if elapsed >= quiet {
                let mut unmet = ctx.ops.readiness_unmet(node, &ctx.cfg.readiness).await?;
                if let Some(why) = self.agent_silent(ctx, wf, &boot).await? {
                    unmet.push(why);
                }
                if unmet.is_empty() {
                    break;
                }
                if elapsed >= quiet + ctx.cfg.readiness.timeout {
                    let why = format!(
                        "readiness gates did not hold within {}s of the quiet period: {}",
                        ctx.cfg.readiness.timeout.as_secs(),
                        unmet.join("; ")
                    );
                    return self.escalate(ctx, wf, why).await;
                }
                // Recorded each time what is awaited changes, not every poll.
                if waiting_on.as_ref() != Some(&unmet) {
                    let reason = format!("quiet period passed; waiting for readiness gates: {}", unmet.join("; "));
                    ctx.advance(wf, State::Verifying, reason).await?;
                    waiting_on = Some(unmet);
                }
            }
            ctx.sleep(Duration::from_millis(500)).await?;
        }
        let gates = &ctx.cfg.readiness;
        let held = if gates.conditions.is_empty() && gates.configmaps.is_empty() {
            String::new()
        } else {
            let named: Vec<&str> = gates.conditions.iter().chain(&gates.configmaps).map(String::as_str).collect();
            format!("; readiness gates hold ({})", named.join(", "))
        };
        let agent = if wf.rung == Rung::Reboot && wf.boot_id_before.is_some() {
            "; the node's agent reported the new boot"
        } else {
            ""
        };
        let reason =
            format!("quiet period passed: Ready and no new critical fault for {}s{agent}{held}", quiet.as_secs());
        ctx.advance(wf, State::Uncordoning, reason).await
    }

    /// Why the node's agent does not count as reporting again after its repair, if it does not.
    /// After a reboot, its actuator must have reported the reboot done on the node's current
    /// boot; after a reinstall in place, it must have answered a `report` command (sent once
    /// verification began) from that boot.
    async fn agent_silent(&mut self, ctx: &Ctx, wf: &Workflow, boot: &str) -> Result<Option<String>> {
        if wf.boot_id_before.is_none() {
            return Ok(None);
        }
        let cmd = match wf.rung {
            Rung::Reboot => self.repair_command(ctx, wf),
            Rung::Reinstall => {
                let ttl = ctx.cfg.quiet_period + ctx.cfg.readiness.timeout;
                let at = wf.step_started_at_ms.unwrap_or_else(|| ms(Utc::now()));
                let cmd = crate::commands::command(wf, firebreak_schema::NodeAction::Report, at, ttl);
                if !self.probed {
                    send_command(ctx, &cmd).await?;
                    self.probed = true;
                }
                cmd
            }
            _ => return Ok(None),
        };
        let reports = ctx.store.reports(cmd.id).await?;
        let done = reports.iter().any(|r| r.outcome == "done" && r.boot_id == boot);
        Ok((!done).then(|| format!("the node's agent has not reported from boot {boot} since the {}", wf.rung.name())))
    }

    /// Dry run: records what the workflow would do on the node as it is now, and ends.
    async fn shadow(&mut self, ctx: &Ctx, wf: &mut Workflow) -> Result<()> {
        let node = ctx.ops.get(&wf.node).await?;
        let reason = match cleared(wf, &node) {
            Some(why) => format!("dry run: nothing would be done: {why}"),
            None => {
                let pods = ctx.ops.pods_to_migrate(&wf.node).await?;
                let names: Vec<String> = pods.iter().map(pod_names).map(|(ns, name)| format!("{ns}/{name}")).collect();
                let cordoned = node.spec.as_ref().and_then(|s| s.unschedulable) == Some(true);
                let kept = if cordoned { " (already cordoned by someone else: kept at the end)" } else { "" };
                match &wf.rung {
                    Rung::Restart(c) => format!(
                        "dry run: would ask the gate for cordon, then cordon{kept} and taint, ask the node's actuator \
                         to restart {c} (no drain), verify and uncordon; nothing was done"
                    ),
                    Rung::Reboot => format!(
                        "dry run: would ask the gate for cordon, then cordon{kept} and taint, drain {} pods ({}) under \
                         a drain permit, reboot under a reboot permit, verify and uncordon; nothing was done",
                        names.len(),
                        names.join(", ")
                    ),
                    Rung::Reinstall | Rung::Ticket => format!(
                        "dry run: would ask the gate for cordon, then cordon{kept} and taint, drain {} pods ({}) under \
                         a drain permit, then {}; nothing was done",
                        names.len(),
                        names.join(", "),
                        if wf.rung == Rung::Reinstall {
                            "ask for a reinstall under a reinstall permit, verify and uncordon"
                        } else {
                            "open a hardware ticket and leave the node isolated"
                        }
                    ),
                    Rung::Human => format!(
                        "dry run: would ask the gate for cordon, then cordon{kept} and taint, and escalate to a human \
                         ({}); nothing was done",
                        ladder_why(wf)
                    ),
                }
            }
        };
        ctx.advance(wf, State::Shadowed, reason).await
    }

    /// The fault no longer holds before `action`: undo our isolation, give everything back, end.
    async fn cleared(&mut self, ctx: &Ctx, wf: &mut Workflow, why: String, action: &str) -> Result<()> {
        tracing::info!(why, action, "fault cleared before action; workflow ends");
        undo_isolation(ctx, wf).await?;
        let reason = format!("cleared before action ({action}): {why}; nothing more done");
        ctx.advance_releasing(wf, State::Cleared, reason, Release::All).await
    }

    /// Re-asserts the precondition of every step between our cordon and our uncordon: the node
    /// is cordoned and carries our taint. Someone's uncordon cancels the workflow (`Ok(false)`);
    /// a taint removed from a cordoned node is put back, and the record says so.
    async fn still_isolated(
        &mut self,
        ctx: &Ctx,
        wf: &mut Workflow,
        node: &k8s_openapi::api::core::v1::Node,
    ) -> Result<bool> {
        if node.spec.as_ref().and_then(|s| s.unschedulable) != Some(true) {
            self.cancel(ctx, wf).await?;
            return Ok(false);
        }
        if !tainted(node) {
            tracing::warn!(state = wf.state.as_str(), "our taint was removed from the cordoned node; putting it back");
            ctx.ops.cordon_and_taint(&wf.node, &wf.fault_kind).await?;
            let reason = format!(
                "the taint {}={}:NoSchedule was removed during {} while the node stayed cordoned; put back before \
                 going on",
                firebreak_schema::UNHEALTHY_TAINT_KEY,
                wf.fault_kind,
                wf.state.as_str()
            );
            ctx.advance(wf, wf.state, reason).await?;
        }
        Ok(true)
    }

    /// Someone else uncordoned the node mid-workflow: step back, leaving their uncordon.
    async fn cancel(&mut self, ctx: &Ctx, wf: &mut Workflow) -> Result<()> {
        let during = wf.state.as_str();
        tracing::warn!(during, "node uncordoned by someone else; workflow cancelled");
        ctx.ops.untaint(&wf.node).await?;
        let reason = format!(
            "cancelled: the node was uncordoned by someone else during {during}; Firebreak removed its taint and \
             left the node schedulable"
        );
        ctx.advance_releasing(wf, State::Cancelled, reason, Release::All).await
    }

    async fn escalate(&mut self, ctx: &Ctx, wf: &mut Workflow, why: String) -> Result<()> {
        self.escalate_noting(ctx, wf, why, Vec::new()).await
    }

    /// Escalates with the webhook calls that go with it (a hardware ticket), each delivered
    /// from the outbox once the escalation is persisted.
    async fn escalate_noting(&mut self, ctx: &Ctx, wf: &mut Workflow, why: String, mut notes: Vec<Note>) -> Result<()> {
        tracing::warn!(why, "escalating to a human; node stays cordoned");
        // Marked before the state is persisted: an escalation on record always has its mark,
        // which only an operator removes (see `escalation` at intake).
        ctx.ops.mark_escalated(&wf.node, &wf.id.to_string()).await?;
        let reason = format!("needs a human: {why}; node left cordoned and tainted");
        if ctx.cfg.escalation_webhook.is_some() {
            let body = serde_json::json!({"event": "escalated", "workflow_id": wf.id, "cluster": wf.cluster,
                "node": wf.node, "fault_kind": wf.fault_kind, "trigger_event_id": wf.trigger_event_id,
                "reason": reason});
            notes.push(Note { hook: Hook::Escalation, event: "escalated", body });
        }
        ctx.advance_releasing_noting(wf, State::Escalated, reason, Release::All, &notes).await
    }
}

/// The evidence recorded before the first destructive step: the node's conditions, its recent
/// faults (kernel log lines among them) and the pods on it.
async fn evidence(ctx: &Ctx, wf: &Workflow) -> Result<String> {
    let node = ctx.ops.get(&wf.node).await?;
    let conditions: Vec<String> = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .map(|c| match (c.status.as_str(), c.reason.as_deref()) {
            ("True", _) | (_, None) => format!("{}={}", c.type_, c.status),
            (status, Some(why)) => format!("{}={status} ({why})", c.type_),
        })
        .collect();
    let since = ms(Utc::now()) - 30 * 60 * 1000;
    let faults: Vec<String> = ctx
        .store
        .recent_faults(&wf.cluster, &wf.node, since, 10)
        .await?
        .into_iter()
        .map(|(at, kind, severity, message)| {
            let message: String = message.chars().take(200).collect();
            format!("{} {kind} ({severity}): {message}", at.format("%H:%M:%S%.3f"))
        })
        .collect();
    let pods = ctx.ops.pods_to_migrate(&wf.node).await?;
    Ok(format!(
        "evidence before the {}: conditions {}; faults in the last 30 min, newest first: {}; {} pods on the node: {}",
        wf.rung.name(),
        conditions.join(", "),
        if faults.is_empty() { "none".to_owned() } else { faults.join(" | ") },
        pods.len(),
        listed(&pods)
    ))
}

/// Sends a node command, retrying until the brokers have it.
async fn send_command(ctx: &Ctx, cmd: &firebreak_schema::NodeCommand) -> Result<()> {
    REQUEST_RETRY
        .until_ok("sending a node command", &ctx.cancel, || ctx.commands.send(cmd))
        .await
        .ok_or(Error::Cancelled)
        .map(|_| ())
}

/// Waits up to `wait` for the node back on a boot other than the one before its repair, and
/// Ready: whether it is, and its boot id and readiness now (`NodeGone` if it was deleted).
async fn new_boot(ctx: &Ctx, wf: &Workflow, wait: Duration) -> Result<(bool, String, bool)> {
    let before = wf.boot_id_before.clone().unwrap_or_default();
    let back = |n: Option<&k8s_openapi::api::core::v1::Node>| {
        n.is_none_or(|n| {
            let (boot, ready) = boot_and_ready(n);
            boot != before && ready
        })
    };
    let (node, done) = ctx.nodes.wait_for(&wf.node, wait, &ctx.cancel, back).await.ok_or(Error::Cancelled)?;
    if done && node.is_none() {
        return Err(Error::NodeGone(wf.node.clone()));
    }
    let (boot, ready) = node.as_deref().and_then(Lenient::decoded).map(boot_and_ready).unwrap_or_default();
    Ok((done, boot, ready))
}

/// The node is back on a new boot after its reboot or reinstall (`what`): verification starts,
/// and the step's permit is given back.
async fn back_on_new_boot(ctx: &Ctx, wf: &mut Workflow, what: &str, boot: &str) -> Result<()> {
    let before = wf.boot_id_before.clone().unwrap_or_default();
    let took = since(wf.reboot_requested_at_ms).as_secs_f64();
    let reason = format!("{what} in {took:.1}s: boot id {before} -> {boot}; node Ready");
    wf.step_started_at_ms = Some(ms(Utc::now()));
    ctx.advance_releasing(wf, State::Verifying, reason, Release::Step).await
}

/// Why the policy gave the workflow its rung.
fn ladder_why(wf: &Workflow) -> &str {
    if wf.rung_why.is_empty() { "the workflow predates the remediation policy" } else { &wf.rung_why }
}

/// How long ago `at_ms` (ms since the epoch) was; zero when it is unknown or in the future.
/// Whether the node carries Firebreak's taint.
fn tainted(node: &k8s_openapi::api::core::v1::Node) -> bool {
    node.spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .is_some_and(|t| t.iter().any(|t| t.key == firebreak_schema::UNHEALTHY_TAINT_KEY))
}

/// Whether the node is cordoned and carries Firebreak's taint.
fn isolated(node: &k8s_openapi::api::core::v1::Node) -> bool {
    node.spec.as_ref().and_then(|s| s.unschedulable) == Some(true) && tainted(node)
}

fn since(at_ms: Option<i64>) -> Duration {
    at_ms.map_or(Duration::ZERO, |at| Duration::from_millis(u64::try_from(ms(Utc::now()) - at).unwrap_or(0)))
}

/// Why the fault that started the workflow no longer holds, if it does not: a `NodeNotReady`
/// whose node is Ready again. Faults read from the kernel log (memory, filesystem, hung tasks)
/// have no state to clear on their own: they hold until a repair.
fn cleared(wf: &Workflow, node: &k8s_openapi::api::core::v1::Node) -> Option<String> {
    let (_, ready) = boot_and_ready(node);
    (wf.fault_kind == firebreak_schema::FaultKind::NodeNotReady.as_str() && ready)
        .then(|| "NodeNotReady no longer holds: the node is Ready again".to_owned())
}

/// Undoes the workflow's isolation of the node: its taint, and its cordon unless the node was
/// cordoned before the workflow took it.
async fn undo_isolation(ctx: &Ctx, wf: &Workflow) -> Result<()> {
    match wf.was_cordoned {
        None => Ok(()),
        Some(true) => ctx.ops.untaint(&wf.node).await,
        Some(false) => ctx.ops.uncordon_and_untaint(&wf.node).await,
    }
}

/// Gives permits back (after the step that needed them is persisted as done).
async fn release(ctx: &Ctx, permits: [Option<uuid::Uuid>; 2]) {
    for permit in permits.into_iter().flatten() {
        ctx.held.forget(permit);
        let released = RELEASE_RETRY
            .until_ok("permit release", &ctx.cancel, || async {
                if ctx.gate.release(permit).await { Ok(()) } else { Err("the gate did not confirm") }
            })
            .await;
        if released.is_none() {
            tracing::warn!(permit_id = %permit, "could not release permit; it will expire at its TTL");
        }
    }
}
