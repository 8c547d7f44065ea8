//! The remediator: durable, one-per-cluster workflows that take a faulty node out of service,
//! repair it and put it back, each risky step under its own permit from the gate.
//!
//! It owns the repair decision and its execution. Intake (`intake`, a policy separate from the
//! store): a fault a process of the remediation policy ([`Policy`]) takes, often enough, starts
//! a workflow on the rung of that process's ladder the node's earlier repairs lead to, or with a
//! human once the ladder or the node's attempt budget is spent (one open workflow per node;
//! later faults attach to it); every consumed fault is recorded with the
//! decision taken, what has arrived (up to 256 faults, a storm's) in one transaction. A workflow: ask the gate for a `cordon` permit (no answer = no permit: fail
//! closed), held until the node is back in service → cordon and taint
//! `firebreak.io/unhealthy=<kind>:NoSchedule` → under a `drain` permit, label pods
//! `firebreak.io/to-be-migrated=true` and evict them through the Eviction API, retrying
//! PodDisruptionBudget refusals, never skipping them → under a `reboot` permit, ask the node's
//! actuator (its agent, through the command topic: `commands`) for a reboot → wait for a new
//! boot id and Ready (on a reflector store of the cluster's nodes, not by polling), the
//! actuator's report of the new boot, or its refusal or failure, which escalates → a quiet
//! period with no critical fault since the reboot was asked for (so a fault logged during boot
//! counts), then the readiness gates (node conditions, other teams'
//! ConfigMaps, [`ReadinessGates`]) → uncordon, untaint, release. On a `restart` rung the
//! actuator restarts a component instead of the drain and the reboot; on the `human` rung the
//! workflow escalates right after its cordon; on a `reinstall` rung the node is re-imaged through
//! Cluster API, a Job or a webhook (`reinstall`) and, replaced by Cluster API, ends `replaced`;
//! on a `ticket` rung a hardware ticket is opened and the node stays isolated. A step that cannot complete
//! escalates to a human and leaves the node cordoned and marked `firebreak.io/escalated`, and no
//! later fault starts work on it until an operator removes the mark; a node deleted meanwhile
//! ends its workflow as `node_gone`. Humans' decisions stand: a fault that no longer holds before
//! the cordon or the reboot ends the workflow as `cleared`; a node someone else uncordons
//! mid-workflow ends it as `cancelled`; a cordon that was there before stays after. In dry-run
//! mode ([`Config::dry_run`]) each workflow records what it would do and ends as `shadowed`.
//!
//! State is written before each side effect and every action is idempotent, so a restarted
//! remediator resumes where it stopped; step deadlines count from persisted times, so it also
//! escalates on time. Permits are renewed while their steps run (`permits`); a
//! permit lost stops the workflow before its next risky side effect, and it asks again. Each
//! transition is published to the remediation topic with its reason (an id derived from the
//! workflow and the step), with the webhooks it calls, from an outbox written in the
//! transition's transaction (`outbox`), and recorded as a Kubernetes Event on the node (best
//! effort). Operators' instructions from the event center (clearing an escalation) arrive on the
//! cluster's control topic (`control`), the actuators' reports on its report topic (`commands`).

mod commands;
mod control;
mod gate;
mod intake;
mod metrics;
mod node_cache;
mod node_ops;
pub mod outbox;
mod permits;
pub mod policy;
pub mod reinstall;
pub mod store;
mod workflow;

use std::{collections::HashMap, sync::Arc, time::Duration};

use firebreak_plumbing::{
    kafka::{KafkaConfig, Producer, arrived, decode_message, next_message},
    retry,
};
use firebreak_schema::{FaultEvent, control_topic, fault_topic};
use rdkafka::{
    Message,
    consumer::{Consumer, StreamConsumer},
};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

pub use firebreak_plumbing::leader::LeaseConfig;
pub use gate::GateClient;
pub use intake::Intake;
pub use metrics::Metrics;
pub use policy::{Policy, Rung};
pub use store::{State, Store, Workflow};

/// Everything that can go wrong in the remediator.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The database failed.
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    /// A stored row cannot be read back.
    #[error("corrupt row: {0}")]
    Corrupt(String),
    /// The Kubernetes API failed.
    #[error("kubernetes: {0}")]
    Kube(#[from] kube::Error),
    /// An object kept changing under us.
    #[error("conflict: {0}")]
    Conflict(String),
    /// Kafka, or opening and migrating the database, failed.
    #[error(transparent)]
    Plumbing(#[from] firebreak_plumbing::Error),
    /// The remediator is shutting down.
    #[error("cancelled")]
    Cancelled,
    /// A setting is unusable.
    #[error("configuration: {0}")]
    Config(String),
    /// The remediation policy is invalid: what and where.
    #[error("remediation policy: {0}")]
    Policy(String),
    /// The node no longer exists (the API server answers 404 for it).
    #[error("node {0} no longer exists")]
    NodeGone(String),
    /// The API server serves the node in a form that does not decode (the step is retried).
    #[error("node {0} does not decode: {1}")]
    Undecodable(String, String),
    /// A permit a step needs is not held any more (the gate says it is over, or it lapsed).
    #[error("permit lost: {why}")]
    PermitLost {
        /// The permit (nil when none was held).
        permit: uuid::Uuid,
        /// Why.
        why: String,
    },
}

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Every Kubernetes API request the remediator makes, as RBAC names it: (API group, resource,
/// verbs). `deploy/` grants its service account exactly these (a test renders the manifests and
/// compares): leases in its own namespace, the rest cluster-wide. The Cluster API Machine it may
/// delete lives in the management cluster, under the credentials of `--cluster-api-kubeconfig`.
pub const KUBE_ACCESS: &[(&str, &str, &[&str])] = &[
    ("", "nodes", &["get", "list", "watch", "patch"]),
    ("", "pods", &["list", "patch"]),
    ("", "pods/eviction", &["create"]),
    ("", "events", &["create"]),
    ("", "configmaps", &["list"]),
    ("batch", "jobs", &["create", "get"]),
    ("coordination.k8s.io", "leases", &["get", "create", "update"]),
];

/// How to run the remediator of one cluster.
#[derive(Debug, Clone)]
pub struct Config {
    /// The cluster remediated.
    pub cluster: String,
    /// Kafka brokers and tuning.
    pub kafka: KafkaConfig,
    /// Base URL of the gate.
    pub gate_url: String,
    /// Bearer token presented to the gate.
    pub gate_token: String,
    /// A certificate authority (PEM) to trust for the gate's HTTPS, beside the system's.
    pub gate_ca: Option<Vec<u8>>,
    /// Node labels that name failure domains, reported to the gate with each request.
    pub failure_domains: Vec<String>,
    /// `sqlite://...` or `postgres://...`.
    pub database_url: String,
    /// How long a rebooted node must stay Ready with no new critical fault before uncordon.
    pub quiet_period: Duration,
    /// Wait between eviction rounds when a PodDisruptionBudget refused one.
    pub eviction_retry: Duration,
    /// Longest time a drain may take before escalation.
    pub drain_timeout: Duration,
    /// Longest time a drain may go without fewer pods left on the node before it escalates and
    /// gives its permits back (after the owners' grace period).
    pub drain_stall: Duration,
    /// How long the owners of pods labelled `firebreak.io/to-be-migrated` have to move them
    /// before they are evicted.
    pub migration_grace: Duration,
    /// Evict pods no controller would recreate, as `kubectl drain --force` does; without it a
    /// node with such pods is escalated instead of drained.
    pub evict_unmanaged: bool,
    /// Longest time a reboot may take before escalation.
    pub reboot_timeout: Duration,
    /// Longest time a component restart may take (the actuator's report and the node Ready)
    /// before escalation.
    pub restart_timeout: Duration,
    /// Faults observed longer ago than this are recorded but not acted on (a new consumer
    /// group reads the topic from its start).
    pub stale_after: Duration,
    /// What must hold, beyond Ready, no recurrence and the quiet period, before a repaired node
    /// goes back into service.
    pub readiness: ReadinessGates,
    /// Where an escalation is also POSTed, signed (besides the remediation topic).
    pub escalation_webhook: Option<Webhook>,
    /// Where a reinstall is asked for (PXE or cloud re-imaging behind it), when neither Cluster
    /// API nor a Job does it (third choice of the `reinstall` rung).
    pub reinstall_webhook: Option<Webhook>,
    /// Where a hardware ticket is opened: the `ticket` rung.
    pub ticket_webhook: Option<Webhook>,
    /// Cluster API's management cluster: a node that is a Machine is reinstalled by deleting
    /// its Machine (first choice of the `reinstall` rung).
    pub cluster_api: Option<reinstall::ClusterApi>,
    /// A Job rendered per node from a template re-images it (second choice).
    pub reinstall_job: Option<reinstall::JobTemplate>,
    /// Longest a reinstall may take, from its request to the node Ready on a new boot (or,
    /// through Cluster API, to the old node gone).
    pub reinstall_timeout: Duration,
    /// Which faults are repaired and how: processes, ladders, the attempt budget.
    pub policy: Policy,
    /// Leader election among replicas (a Lease in the cluster); `None`: this replica acts alone.
    pub lease: Option<LeaseConfig>,
    /// Dry-run (shadow) mode: every fault is taken in and decided as usual, and each workflow
    /// records what it would do — and ends; nothing is asked of the gate or done to the cluster.
    pub dry_run: bool,
}

/// A webhook the remediator POSTs to, signed `X-Firebreak-Signature: sha256=HMAC(secret, body)`
/// (`firebreak_plumbing::webhook`), with the event in `X-Firebreak-Event`. Escalations:
/// `{"event": "escalated", "workflow_id", "cluster", "node", "fault_kind", "trigger_event_id",
/// "reason"}`; reinstalls: `{"event": "reinstall", "workflow_id", "cluster", "node", "boot_id",
/// "requested_at"}`; hardware tickets: `{"event": "hardware_ticket", "workflow_id", "cluster",
/// "node", "fault_kind", "trigger_event_id", "why", "evidence"}` (`why`: the ladder's reason for a
/// ticket; `evidence`: the node's conditions, recent faults and remaining pods). A receiver
/// dedupes by `workflow_id`.
#[derive(Debug, Clone)]
pub struct Webhook {
    /// `http(s)://…`.
    pub url: String,
    /// The shared secret.
    pub secret: String,
}

/// Readiness gates (Ant's "Full ReadinessGates + Condition ConfigMap"): every node condition
/// named in `conditions` must be `True`, and for every gate named in `configmaps` a ConfigMap
/// labelled `firebreak.io/readiness-gate=<gate>` and `firebreak.io/node=<node>` (any namespace),
/// as the team owning that component writes it, must say `data.ready: "true"`. A node whose
/// gates do not all hold within `timeout` after its quiet period is escalated.
#[derive(Debug, Clone)]
pub struct ReadinessGates {
    /// Node condition types that must be `True`.
    pub conditions: Vec<String>,
    /// Gate names, each a ConfigMap per node.
    pub configmaps: Vec<String>,
    /// How long to wait for them after the quiet period.
    pub timeout: Duration,
}

impl Default for ReadinessGates {
    fn default() -> Self {
        Self { conditions: Vec::new(), configmaps: Vec::new(), timeout: Duration::from_secs(600) }
    }
}

impl Config {
    /// Production defaults for a cluster.
    pub fn new(cluster: &str, kafka: KafkaConfig, gate_url: &str, gate_token: &str, database_url: &str) -> Self {
        Self {
            cluster: cluster.into(),
            kafka,
            gate_url: gate_url.into(),
            gate_token: gate_token.into(),
            gate_ca: None,
            failure_domains: vec!["topology.kubernetes.io/zone".into()],
            database_url: database_url.into(),
            quiet_period: Duration::from_secs(60),
            eviction_retry: Duration::from_secs(5),
            drain_timeout: Duration::from_secs(600),
            drain_stall: Duration::from_secs(300),
            migration_grace: Duration::from_secs(30),
            evict_unmanaged: false,
            reboot_timeout: Duration::from_secs(900),
            restart_timeout: Duration::from_secs(300),
            stale_after: Duration::from_secs(600),
            readiness: ReadinessGates::default(),
            policy: Policy::default(),
            lease: None,
            dry_run: false,
            escalation_webhook: None,
            reinstall_webhook: None,
            cluster_api: None,
            reinstall_job: None,
            ticket_webhook: None,
            reinstall_timeout: Duration::from_secs(3600),
        }
    }
}

/// Runs the cluster's remediation until `cancel`: with leader election, only while this replica
/// holds the cluster's Lease (and at once again when it wins it back).
pub async fn run(cfg: Config, client: kube::Client, metrics: Metrics, cancel: CancellationToken) -> Result<()> {
    let name = format!("firebreak-remediator-{}", cfg.cluster);
    let lease = cfg.lease.clone();
    firebreak_plumbing::leader::lead(client.clone(), &name, lease, cancel, |term| {
        lead(cfg.clone(), client.clone(), metrics.clone(), term)
    })
    .await
}

/// Runs intake and workflows until `cancel`.
async fn lead(cfg: Config, client: kube::Client, metrics: Metrics, cancel: CancellationToken) -> Result<()> {
    tracing::info!(cluster = %cfg.cluster, gate = %cfg.gate_url, database = %firebreak_plumbing::db::redacted(&cfg.database_url),
        brokers = %cfg.kafka.brokers, dry_run = cfg.dry_run, "remediator starting");
    let store = Store::open(&cfg.database_url).await?;
    let producer = Producer::new(&cfg.kafka)?;
    let group = format!("firebreak-remediator-{}", cfg.cluster);
    let consumer: StreamConsumer = cfg.kafka.consumer(&group).create().map_err(firebreak_plumbing::Error::from)?;
    // Its own cluster's fault topic only.
    consumer.subscribe(&[&fault_topic(&cfg.cluster)]).map_err(firebreak_plumbing::Error::from)?;
    let consumer = Arc::new(consumer);
    let lagging = firebreak_plumbing::kafka::spawn_lag_metric(&consumer, group, metrics.lag.clone(), cancel.clone());
    // Assigned, not subscribed: a replica that takes over from a killed leader reads the reports
    // at once, without waiting for the dead member to time out of a consumer group.
    let reports: StreamConsumer = cfg
        .kafka
        .consumer(&format!("firebreak-remediator-{}-reports", cfg.cluster))
        .create()
        .map_err(firebreak_plumbing::Error::from)?;
    let control: StreamConsumer = cfg
        .kafka
        .consumer(&format!("firebreak-remediator-{}-control", cfg.cluster))
        .create()
        .map_err(firebreak_plumbing::Error::from)?;
    control.subscribe(&[&control_topic(&cfg.cluster)]).map_err(firebreak_plumbing::Error::from)?;
    let gate = GateClient::new(&cfg.gate_url, &cfg.gate_token, cfg.gate_ca.as_deref())?;
    let ctx = Arc::new(workflow::Ctx {
        held: permits::Held::start(gate.clone(), cancel.clone()),
        gate,
        http: reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap_or_default(),
        nodes: node_cache::NodeCache::start(client.clone(), cfg.cluster.clone(), metrics.clone(), cancel.clone()),
        ops: node_ops::NodeOps::new(client),
        store: store.clone(),
        commands: commands::Commands::new(producer.clone()),
        producer,
        metrics,
        outbox: tokio::sync::Notify::new(),
        cancel: cancel.clone(),
        cfg,
    });
    let span = tracing::info_span!("remediator", cluster = %ctx.cfg.cluster);
    let reporting = tokio::spawn(commands::reports_loop(ctx.clone(), reports).instrument(span.clone()));
    let sending = tokio::spawn(outbox::run(ctx.clone()).instrument(span.clone()));
    let controlling = tokio::spawn(control::control_loop(ctx.clone(), control).instrument(span.clone()));
    let result = intake_loop(ctx, store, consumer).instrument(span).await;
    lagging.abort();
    let _ = reporting.await;
    let _ = sending.await;
    let _ = controlling.await;
    result
}

/// How recording a consumed fault is retried: its offset must not move past an unrecorded fault.
pub(crate) const INTAKE_RETRY: retry::Policy =
    retry::Policy::forever(Duration::from_millis(100), Duration::from_secs(5));

/// Faults recorded in one transaction at most: what has arrived, without waiting for more.
const INTAKE_BATCH: usize = 256;

/// The escalated workflows no operator has cleared, by node, of the nodes of `events`. The store
/// knows which escalations stand; an operator clears one by removing the node's escalation
/// annotation, which is read here (only for a node the store says is escalated). A node that
/// cannot be read stays escalated: no new work on it.
async fn escalations(ctx: &workflow::Ctx, events: &[FaultEvent]) -> Result<HashMap<String, uuid::Uuid>> {
    let nodes: std::collections::BTreeSet<&str> = events.iter().map(|e| e.node.as_str()).collect();
    let mut escalated = ctx.store.escalated_among(&ctx.cfg.cluster, &nodes.into_iter().collect::<Vec<_>>()).await?;
    let mut cleared = Vec::new();
    for (node, wf) in &escalated {
        if let Ok(n) = ctx.ops.get(node).await
            && !n.metadata.annotations.as_ref().is_some_and(|a| a.contains_key(firebreak_schema::ESCALATED_ANNOTATION))
        {
            tracing::info!(workflow_id = %wf, node, "escalation cleared by an operator");
            ctx.store.clear_escalation(*wf, "the node's escalation annotation was removed").await?;
            cleared.push(node.clone());
        }
    }
    for node in cleared {
        escalated.remove(&node);
    }
    Ok(escalated)
}

async fn intake_loop(ctx: Arc<workflow::Ctx>, store: Store, consumer: Arc<StreamConsumer>) -> Result<()> {
    let cancel = ctx.cancel.clone();
    // Workflows read nodes from the cache: not before it holds the cluster's nodes (a resumed
    // workflow would take its node for deleted).
    if !ctx.nodes.synced(&cancel).await {
        return Ok(());
    }
    let mut tasks = tokio::task::JoinSet::new();
    for wf in store.open_workflows(&ctx.cfg.cluster).await? {
        tracing::info!(workflow_id = %wf.id, node = %wf.node, state = wf.state.as_str(), "resuming workflow");
        // Permits held before the restart are renewed at once, or lost.
        if let Some(p) = wf.permit_id {
            ctx.held.adopt(p, firebreak_schema::Operation::Cordon);
        }
        if let Some(p) = wf.step_permit_id {
            let op = match wf.state {
                State::Draining => firebreak_schema::Operation::Drain,
                State::Reinstalling | State::AwaitingReinstall => firebreak_schema::Operation::Reinstall,
                _ => firebreak_schema::Operation::Reboot,
            };
            ctx.held.adopt(p, op);
        }
        tasks.spawn(workflow::drive(ctx.clone(), wf));
    }
    tracing::info!("remediator running");
    loop {
        let first = tokio::select! {
            _ = cancel.cancelled() => break,
            m = next_message(&consumer) => m,
            Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
        };
        // A storm's faults are recorded together: one transaction, not one each.
        let batch = arrived(&consumer, first, INTAKE_BATCH).await;
        let mut events = Vec::with_capacity(batch.len());
        for msg in &batch {
            match decode_message::<FaultEvent>(msg) {
                Err(error) => tracing::warn!(%error, offset = msg.offset(), "undecodable fault skipped"),
                // A record naming another cluster on this cluster's topic is a misrouted or
                // forged one: never acted on here.
                Ok(event) if event.cluster != ctx.cfg.cluster => {
                    tracing::warn!(event_id = %event.id, other = %event.cluster, node = %event.node, "fault of another cluster on this cluster's topic skipped");
                    ctx.metrics.intake(&ctx.cfg.cluster, "other_cluster");
                }
                Ok(event) => events.push(event),
            }
        }
        if !events.is_empty() {
            let what = match events.as_slice() {
                [one] => format!("recording fault {}", one.id),
                many => format!("recording {} faults", many.len()),
            };
            let recorded = INTAKE_RETRY
                .until_ok(&what, &cancel, || async {
                    let escalated = escalations(&ctx, &events).await?;
                    ctx.store.intake_all(&events, &ctx.cfg.policy, ctx.cfg.stale_after, &escalated).await
                })
                .await;
            let Some(decisions) = recorded else { break };
            for (event, decision) in events.iter().zip(decisions) {
                ctx.metrics.intake(&ctx.cfg.cluster, decision.label());
                match decision {
                    Intake::Started(wf) => {
                        ctx.metrics.transition(&ctx.cfg.cluster, wf.state.as_str());
                        tracing::info!(workflow_id = %wf.id, node = %wf.node, incident = %event.id, kind = %event.kind, "workflow started");
                        ctx.outbox.notify_one();
                        tasks.spawn(workflow::drive(ctx.clone(), *wf));
                    }
                    Intake::Attached(id) => {
                        tracing::info!(workflow_id = %id, node = %event.node, incident = %event.id, "fault attached to open workflow")
                    }
                    Intake::Ignored(why) => {
                        tracing::info!(node = %event.node, incident = %event.id, why, "fault not remediated")
                    }
                    Intake::Duplicate => {}
                }
            }
        }
        for msg in &batch {
            if let Err(error) = consumer.store_offset_from_message(msg) {
                tracing::warn!(%error, "could not store offset");
            }
        }
    }
    tasks.shutdown().await;
    Ok(())
}
