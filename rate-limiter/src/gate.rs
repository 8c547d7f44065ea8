//! The gate as a service: requests, renewals and releases are validated, then queued to one
//! decider task per replica that runs them in batches, each batch in one locked transaction (see
//! `store`), so a burst costs one transaction, not one each. A sweeper marks permits whose holders
//! stopped renewing them as expired (abandoned) and trims the logs. Snapshots of the clusters
//! arrive from the health topic.

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{Arc, RwLock},
    time::Duration,
};

use chrono::{DateTime, TimeDelta, Utc};
use firebreak_plumbing::auth::Caller;
use firebreak_schema::{
    BreakerTrip, Decision, Halt, HaltRequest, HealthSample, Operation, Permit, PermitRequest, PermitResponse, Role,
    Scope, names,
};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::{
    Error, Policy, Result,
    decide::Outcome,
    health,
    metrics::Metrics,
    notify::Notifier,
    store::{Done, Op, PermitChange, Store},
};

/// Most requests decided in one transaction.
const BATCH: usize = 256;

struct Job {
    op: Op,
    reply: oneshot::Sender<Result<Done>>,
}

/// Permits of an operation held in a scope, against its limit.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InFlight {
    /// Operation.
    pub operation: Operation,
    /// Scope.
    pub scope: String,
    /// Permits held.
    pub held: u32,
    /// The absolute limit, if the policy sets one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
}

/// A cluster's latest snapshot, summarised.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SnapshotSummary {
    /// Cluster.
    pub cluster: String,
    /// When it was taken.
    pub at: DateTime<Utc>,
    /// Its age in seconds.
    pub age_s: i64,
    /// Whether it is recent enough to be data.
    pub fresh: bool,
    /// Nodes.
    pub nodes: u32,
    /// Ready nodes.
    pub ready: u32,
    /// Unhealthy nodes.
    pub unhealthy: u32,
}

/// `GET /api/v1/status`: budgets in use, halts, breakers and the data the rules read.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GateStatus {
    /// How long a permit lives unless renewed, in seconds.
    pub permit_ttl_s: u64,
    /// The operations the policy allows.
    pub operations: Vec<Operation>,
    /// Permits held per operation and scope.
    pub in_flight: Vec<InFlight>,
    /// Halts in force.
    pub halts: Vec<Halt>,
    /// Open breakers.
    pub breakers: Vec<BreakerTrip>,
    /// The clusters' snapshots.
    pub snapshots: Vec<SnapshotSummary>,
}

/// The gate's state and its workers.
pub struct Gate {
    policy: RwLock<Arc<Policy>>,
    policy_path: Option<PathBuf>,
    pub(crate) store: Store,
    jobs: mpsc::Sender<Job>,
    snapshots: RwLock<Arc<HashMap<String, HealthSample>>>,
    pub(crate) metrics: Metrics,
    pub(crate) notifier: Notifier,
    /// PromQL rules' latest values: (rule, cluster) → value.
    pub(crate) prom: RwLock<Arc<HashMap<(String, String), health::Value>>>,
    /// Woken when a sample arrives, so health rules judge it at once.
    pub(crate) sampled: tokio::sync::Notify,
    /// When the storm (a correlated incident) in each scope (`cluster=c1`, `cluster=c1,rack=r7`)
    /// last grew, as this replica heard it.
    pub(crate) storms: std::sync::Mutex<HashMap<String, chrono::DateTime<Utc>>>,
}

impl Gate {
    /// Opens the database and starts the decider and the sweeper; they stop with `cancel`.
    pub async fn open(
        database_url: &str,
        policy: Policy,
        policy_path: Option<PathBuf>,
        producer: Option<firebreak_plumbing::kafka::Producer>,
        cancel: CancellationToken,
    ) -> Result<Arc<Self>> {
        let store = Store::open(database_url).await?;
        let snapshots = store.snapshots().await?;
        let (jobs, rx) = mpsc::channel(4096);
        let gate = Arc::new(Gate {
            policy: RwLock::new(Arc::new(policy)),
            policy_path,
            store,
            jobs,
            snapshots: RwLock::new(Arc::new(snapshots)),
            metrics: Metrics::new(),
            notifier: Notifier::new(producer, cancel.clone()),
            prom: RwLock::new(Arc::new(HashMap::new())),
            sampled: tokio::sync::Notify::new(),
            storms: std::sync::Mutex::new(HashMap::new()),
        });
        tokio::spawn(gate.clone().decider(rx, cancel.clone()));
        tokio::spawn(gate.clone().monitor(cancel.clone()));
        tokio::spawn(gate.clone().calm(cancel.clone()));
        tokio::spawn(gate.clone().sweeper(cancel));
        Ok(gate)
    }

    /// The policy in force.
    pub fn policy(&self) -> Arc<Policy> {
        self.policy.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The registry of the gate's metrics.
    pub fn registry(&self) -> &prometheus_client::registry::Registry {
        &self.metrics.registry
    }

    /// Reads the policy file again; the old policy stays if the new one is invalid.
    pub fn reload_policy(&self) -> Result<Arc<Policy>> {
        let path = self.policy_path.as_ref().ok_or_else(|| {
            Error::BadRequest("the gate runs on its built-in policy; there is no file to reload".into())
        })?;
        let policy = Arc::new(Policy::load(path)?);
        *self.policy.write().unwrap_or_else(|e| e.into_inner()) = policy.clone();
        tracing::info!(path = %path.display(), "policy reloaded");
        Ok(policy)
    }

    /// Decides on a request made with `caller`'s token.
    pub async fn request(&self, mut req: PermitRequest, caller: &Caller) -> Result<PermitResponse> {
        let policy = self.policy();
        validate(&req)?;
        // Only the labels the policy names are failure domains; others are not the gate's business.
        req.domains.retain(|k, _| policy.failure_domains.contains(k));
        policy.knows_cluster(&req.cluster)?;
        match self.submit(Op::Decide(req, caller.name.clone())).await? {
            Done::Decided(d) => Ok(d.0.response()),
            Done::Changed(_) => Err(Error::Corrupt("a decision came back as a change".into())),
        }
    }

    async fn submit(&self, op: Op) -> Result<Done> {
        let (reply, answer) = oneshot::channel();
        self.jobs.send(Job { op, reply }).await.map_err(|_| Error::Unavailable("the gate is shutting down".into()))?;
        answer.await.map_err(|_| Error::Unavailable("the gate is shutting down".into()))?
    }

    async fn permit_change(&self, op: Op) -> Result<PermitChange> {
        match self.submit(op).await? {
            Done::Changed(c) => Ok(c),
            Done::Decided(_) => Err(Error::Corrupt("a change came back as a decision".into())),
        }
    }

    async fn decider(self: Arc<Self>, mut rx: mpsc::Receiver<Job>, cancel: CancellationToken) {
        loop {
            let first = tokio::select! {
                _ = cancel.cancelled() => return,
                j = rx.recv() => match j { Some(j) => j, None => return },
            };
            let mut batch = vec![first];
            while batch.len() < BATCH {
                match rx.try_recv() {
                    Ok(j) => batch.push(j),
                    Err(_) => break,
                }
            }
            let policy = self.policy();
            let snapshots = self.snapshots.read().unwrap_or_else(|e| e.into_inner()).clone();
            let ops: Vec<Op> = batch.iter().map(|j| j.op.clone()).collect();
            match self.store.run_batch(&policy, &ops, &snapshots, Utc::now()).await {
                Ok((done, abandoned)) => {
                    self.abandoned(&abandoned);
                    for (job, done) in batch.into_iter().zip(done) {
                        match (&job.op, &done) {
                            (Op::Decide(req, holder), Done::Decided(d)) => self.record(req, holder, &d.0, &d.1),
                            (Op::Release { .. }, Done::Changed(PermitChange::Done(p))) => {
                                tracing::info!(permit_id = %p.id, operation = %p.operation, cluster = %p.cluster,
                                    node = p.node.as_deref().unwrap_or(""), "permit released");
                                self.metrics.permit_delta(p.operation, -1);
                            }
                            _ => {}
                        }
                        let _ = job.reply.send(Ok(done));
                    }
                }
                Err(error) => {
                    tracing::error!(%error, requests = batch.len(), "deciding a batch failed; every request in it is refused");
                    for job in batch {
                        let _ = job.reply.send(Err(Error::Unavailable(format!("the gate's store failed: {error}"))));
                    }
                }
            }
        }
    }

    fn record(&self, req: &PermitRequest, holder: &str, outcome: &Outcome, decision: &Decision) {
        self.notifier.decision(decision);
        let r = outcome.response();
        tracing::info!(operation = %req.operation, cluster = %req.cluster, node = req.node.as_deref().unwrap_or(""),
            requester = %req.requester, holder = %holder, granted = r.granted, rule = r.limit.as_deref().unwrap_or(""),
            reason = %r.reason, "permit decision");
        self.metrics.decision(req.operation, outcome.label());
        match outcome {
            Outcome::Granted(..) => self.metrics.permit_delta(req.operation, 1),
            Outcome::Denied(_, Some(trip)) => {
                tracing::warn!(operation = %trip.operation, scope = %trip.scope, reason = %trip.reason, "breaker tripped");
                self.metrics.trip(trip.operation);
            }
            _ => {}
        }
    }

    fn abandoned(&self, permits: &[Permit]) {
        for p in permits {
            tracing::warn!(permit_id = %p.id, operation = %p.operation, cluster = %p.cluster,
                node = p.node.as_deref().unwrap_or(""), requester = %p.requester, holder = %p.holder,
                "permit expired: its holder stopped renewing it (abandoned)");
            self.metrics.abandoned(p.operation);
        }
    }

    async fn sweeper(self: Arc<Self>, cancel: CancellationToken) {
        let mut tick = tokio::time::interval(Duration::from_secs(2));
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tick.tick() => {}
            }
            let now = Utc::now();
            match self.store.sweep(&self.policy(), now).await {
                Ok(abandoned) => self.abandoned(&abandoned),
                Err(error) => tracing::warn!(%error, "sweep failed"),
            }
            match self.store.active_permits(now).await {
                Ok(active) => self.metrics.set_active(&active),
                Err(error) => tracing::warn!(%error, "counting permits failed"),
            }
        }
    }

    /// Extends a permit by the policy's TTL: its holder may, an operator may for anyone.
    pub async fn renew(&self, id: Uuid, caller: &Caller) -> Result<Permit> {
        let ttl = TimeDelta::from_std(self.policy().permit_ttl).unwrap_or(TimeDelta::minutes(10));
        let any = caller.role >= Role::Operator;
        settle(id, caller, self.permit_change(Op::Renew { id, caller: caller.name.clone(), any, ttl }).await?)
    }

    /// Gives a permit back: its holder may, an operator may for anyone.
    pub async fn release(&self, id: Uuid, caller: &Caller) -> Result<Permit> {
        let any = caller.role >= Role::Operator;
        settle(id, caller, self.permit_change(Op::Release { id, caller: caller.name.clone(), any }).await?)
    }

    /// Active permits.
    pub async fn permits(&self) -> Result<Vec<Permit>> {
        self.store.active_permits(Utc::now()).await
    }

    /// The newest decisions, at most `limit` (1–1000).
    pub async fn decisions(&self, limit: i64) -> Result<Vec<Decision>> {
        if !(1..=1000).contains(&limit) {
            return Err(Error::BadRequest(format!("limit {limit} is not between 1 and 1000")));
        }
        self.store.decisions(limit).await
    }

    /// Halts operations in a scope.
    pub async fn halt(&self, req: &HaltRequest, caller: &Caller) -> Result<Halt> {
        validate_scope(&req.scope)?;
        if let Some(c) = &req.scope.cluster {
            self.policy().knows_cluster(c)?;
        }
        if req.reason.trim().is_empty() || !names::is_plain_text(&req.reason, 1024) {
            return Err(Error::BadRequest("a halt needs a reason: plain text, at most 1024 characters".into()));
        }
        let h = self
            .store
            .halt(req, &caller.name, None, &[], Utc::now())
            .await?
            .ok_or_else(|| Error::Corrupt("an operator's halt was not recorded".into()))?;
        tracing::warn!(halt_id = %h.id, scope = %h.scope, by = %h.by, reason = %h.reason, "halted");
        self.notifier.halt(&h, &self.policy().webhooks);
        Ok(h)
    }

    /// Records a halt raised by a rule or a change, unless one of the same source and scope is
    /// in force; tells the topic and the webhooks.
    pub(crate) async fn auto_halt(
        &self,
        req: &HaltRequest,
        source: &str,
        signals: &[firebreak_schema::Measurement],
    ) -> Result<Option<Halt>> {
        let h = self.store.halt(req, "firebreak-gate", Some(source), signals, Utc::now()).await?;
        if let Some(h) = &h {
            tracing::warn!(halt_id = %h.id, scope = %h.scope, source, reason = %h.reason, "halted by health");
            self.metrics.auto_halt(source.split(':').next().unwrap_or("rule"));
            self.notifier.halt(h, &self.policy().webhooks);
        }
        Ok(h)
    }

    /// Lifts the halts in force from `source` (in `scope`, if given); returns them.
    pub(crate) async fn lift(&self, source: &str, scope: Option<&Scope>, by: &str) -> Result<Vec<Halt>> {
        let mut lifted = Vec::new();
        for h in self.store.halts_from(source).await? {
            if scope.is_some_and(|s| *s != h.scope) {
                continue;
            }
            if let Some(h) = self.store.resume(h.id, by, Utc::now()).await? {
                tracing::warn!(halt_id = %h.id, scope = %h.scope, source, by, "halt lifted");
                self.notifier.halt(&h, &self.policy().webhooks);
                lifted.push(h);
            }
        }
        Ok(lifted)
    }

    /// Lifts a halt.
    pub async fn resume(&self, id: Uuid, caller: &Caller) -> Result<Halt> {
        let h = self
            .store
            .resume(id, &caller.name, Utc::now())
            .await?
            .ok_or_else(|| Error::NotFound(format!("no halt {id} in force")))?;
        tracing::warn!(halt_id = %h.id, scope = %h.scope, by = %caller.name, "resumed");
        self.notifier.halt(&h, &self.policy().webhooks);
        Ok(h)
    }

    /// Halts in force.
    pub async fn halts(&self) -> Result<Vec<Halt>> {
        self.store.halts().await
    }

    /// Closes an operation's open breakers in a scope.
    pub async fn reset_breaker(&self, op: Operation, scope: &Scope, caller: &Caller) -> Result<u64> {
        validate_scope(scope)?;
        let n = self.store.reset_breaker(op, scope, &caller.name, Utc::now()).await?;
        if n == 0 {
            return Err(Error::NotFound(format!("no open {op} breaker in {scope}")));
        }
        tracing::warn!(operation = %op, %scope, by = %caller.name, "breaker reset");
        Ok(n)
    }

    /// Takes in a cluster snapshot from the health topic (newer ones win).
    pub async fn observe(&self, snapshot: HealthSample) -> Result<()> {
        self.policy().knows_cluster(&snapshot.cluster)?;
        {
            let mut map = self.snapshots.write().unwrap_or_else(|e| e.into_inner());
            if map.get(&snapshot.cluster).is_some_and(|s| s.at >= snapshot.at) {
                return Ok(());
            }
            Arc::make_mut(&mut map).insert(snapshot.cluster.clone(), snapshot.clone());
        }
        self.sampled.notify_one();
        self.store.put_snapshot(&snapshot).await
    }

    /// The latest sample per cluster.
    pub(crate) fn samples(&self) -> Arc<HashMap<String, HealthSample>> {
        self.snapshots.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The verdict on a cluster's health now: every rule (those that halt `only`, if given),
    /// against `baselines` where they have the same rule and scope.
    pub fn verdict(
        &self,
        cluster: &str,
        baselines: &[firebreak_schema::Measurement],
        only: Option<Operation>,
    ) -> firebreak_schema::Verdict {
        let policy = self.policy();
        let samples = self.samples();
        let prom = self.prom.read().unwrap_or_else(|e| e.into_inner()).clone();
        let inputs = health::Inputs {
            samples: &samples,
            prom: &prom,
            max_age: TimeDelta::from_std(policy.snapshot_max_age).unwrap_or(TimeDelta::MAX),
            now: Utc::now(),
        };
        health::verdict(&policy, cluster, &inputs, baselines, only)
    }

    /// Budgets in use, halts, breakers and snapshots.
    pub async fn status(&self) -> Result<GateStatus> {
        let now = Utc::now();
        let policy = self.policy();
        let permits = self.store.active_permits(now).await?;
        let mut held: std::collections::BTreeMap<(Operation, String), u32> = Default::default();
        for p in &permits {
            *held.entry((p.operation, "global".into())).or_default() += 1;
            *held.entry((p.operation, Scope::cluster(&p.cluster).to_string())).or_default() += 1;
            for (k, v) in &p.domains {
                *held.entry((p.operation, Scope::domain(&p.cluster, k, v).to_string())).or_default() += 1;
            }
        }
        let in_flight = held
            .into_iter()
            .map(|((operation, scope), held)| {
                let o = policy.operations.get(&operation);
                let limits = match scope.as_str() {
                    "global" => o.and_then(|o| o.global.as_ref()),
                    s if s.contains(',') => o.and_then(|o| o.domain.as_ref()),
                    _ => o.and_then(|o| o.cluster.as_ref()),
                };
                InFlight { operation, scope, held, limit: limits.and_then(|l| l.max_in_flight) }
            })
            .collect();
        let max_age = TimeDelta::from_std(policy.snapshot_max_age).unwrap_or(TimeDelta::MAX);
        let snaps = self.snapshots.read().unwrap_or_else(|e| e.into_inner()).clone();
        let mut snapshots: Vec<SnapshotSummary> = snaps
            .values()
            .map(|s| SnapshotSummary {
                cluster: s.cluster.clone(),
                at: s.at,
                age_s: (now - s.at).num_seconds(),
                fresh: now - s.at <= max_age,
                nodes: s.nodes,
                ready: s.ready,
                unhealthy: s.unhealthy.len() as u32,
            })
            .collect();
        snapshots.sort_by(|a, b| a.cluster.cmp(&b.cluster));
        Ok(GateStatus {
            permit_ttl_s: policy.permit_ttl.as_secs(),
            operations: policy.operations.keys().copied().collect(),
            in_flight,
            halts: self.store.halts().await?,
            breakers: self.store.open_breakers(now).await?,
            snapshots,
        })
    }
}

fn settle(id: Uuid, caller: &Caller, change: PermitChange) -> Result<Permit> {
    match change {
        PermitChange::Done(p) => Ok(p),
        PermitChange::Unknown => Err(Error::NotFound(format!("no permit {id}"))),
        PermitChange::NotYours(holder) => Err(Error::Forbidden(format!(
            "permit {id} is held by `{holder}`; `{}` may act only on its own permits (operators on any)",
            caller.name
        ))),
        PermitChange::Ended(p) => Err(Error::Gone(format!(
            "permit {id} is {} since {}",
            p.state.as_str(),
            p.ended_at.map_or_else(|| p.expires_at.to_rfc3339(), |t| t.to_rfc3339())
        ))),
    }
}

/// Checks a scope's names as Kubernetes would; a failure domain belongs to a cluster.
fn validate_scope(scope: &Scope) -> Result<()> {
    if scope.domain.is_some() && scope.cluster.is_none() {
        return Err(Error::BadRequest("a failure domain needs its cluster: `scope.cluster` is missing".into()));
    }
    if let Some(c) = &scope.cluster
        && !names::is_dns1123_subdomain(c)
    {
        return Err(Error::BadRequest(format!("cluster `{}` is not a DNS-1123 name", c.escape_debug())));
    }
    if let Some((k, v)) = &scope.domain
        && (!names::is_qualified_name(k) || !names::is_label_value(v))
    {
        return Err(Error::BadRequest(format!(
            "failure domain `{}={}` is not a label",
            k.escape_debug(),
            v.escape_debug()
        )));
    }
    Ok(())
}

/// Checks a request's fields as Kubernetes would check the names in it.
fn validate(req: &PermitRequest) -> Result<()> {
    if !names::is_dns1123_subdomain(&req.cluster) {
        return Err(Error::BadRequest(format!(
            "cluster `{}` is not a DNS-1123 name (lowercase letters, digits, '-', '.'; at most 253)",
            req.cluster.chars().take(64).collect::<String>().escape_debug()
        )));
    }
    match (&req.node, req.operation) {
        (Some(n), _) if !names::is_dns1123_subdomain(n) => {
            return Err(Error::BadRequest(format!(
                "node `{}` is not a DNS-1123 name (lowercase letters, digits, '-', '.'; at most 253)",
                n.chars().take(64).collect::<String>().escape_debug()
            )));
        }
        (None, op) if op != Operation::CanaryBatch => {
            return Err(Error::BadRequest(format!("{op} needs a node")));
        }
        _ => {}
    }
    if req.requester.is_empty() || !names::is_plain_text(&req.requester, 256) {
        return Err(Error::BadRequest("requester: 1 to 256 characters of plain text".into()));
    }
    for (k, v) in &req.domains {
        if !names::is_qualified_name(k) || !names::is_label_value(v) {
            return Err(Error::BadRequest(format!(
                "failure domain `{}={}` is not a label",
                k.escape_debug(),
                v.escape_debug()
            )));
        }
    }
    Ok(())
}
