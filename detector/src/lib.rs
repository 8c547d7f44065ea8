//! The detector: the cluster-side half of fault detection, one per cluster.
//!
//! It owns two detections, one measurement (`pods` counts pod starts) and Firebreak's node
//! conditions ([`conditions`]). Node readiness: it watches Nodes through the
//! Kubernetes API and publishes `NodeNotReady` when a node's Ready condition has stayed away
//! from True, or its kubelet's Lease in `kube-node-lease` has stayed lapsed (the node controller
//! may be slow or down), for [`Config::not_ready_for`]; shorter spells are flaps, and
//! [`Config::flapping_count`] of them within [`Config::flapping_within`] are one `NodeFlapping`
//! (a warning). One node the API serves undecodable is counted and skipped. Silent agents: it consumes
//! agent heartbeats and publishes `AgentSilent` for a node whose agent has not been heard from
//! for [`Config::agent_silent_after`]. Health: every [`Config::sample_every`] it
//! publishes a [`HealthSample`] on the health topic — nodes and ready nodes, per failure
//! domain, every node that is NotReady or out of service by Firebreak, the pod start success
//! in the last [`Config::pod_window`] (a watch of every pod: Ready within
//! [`Config::pod_start_deadline`], failed, timed out), pods pending unschedulable, faults per
//! class from the fault topic — which the gate's storm and health rules read; the same values
//! are metrics. Beside it, when they change (and every ten minutes), a [`Topology`]: which nodes
//! are in which failure domain, so the event center can tell a rack's storm from a cluster's. A fault observed on a node Firebreak itself has taken out
//! of service (it carries the `firebreak.io/unhealthy` taint) is published as a warning with
//! evidence `caused_by_remediation=true`, so our own reboots never trigger new remediation.
//! Event ids derive from what was observed, so a restarted detector republishes the same ids and
//! consumers deduplicate: `NodeNotReady` from the node and its Ready transition time;
//! `AgentSilent` from the last heartbeat heard (its send time and sequence number) or, for an
//! agent not heard since the detector started, from the node's creation time. (A detector that
//! restarts while an agent is silent has not heard that agent's last heartbeat, so it reports
//! the silence once more, under the second kind of id.)

pub mod conditions;
mod pods;

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    sync::{Arc, Mutex},
    time::Duration,
};

use chrono::{DateTime, Utc};
use firebreak_plumbing::{
    kafka::{KafkaConfig, Producer, decode_message},
    lenient::Lenient,
};
use firebreak_schema::{
    FAULT_TOPIC_PREFIX, FaultEvent, FaultKind, HEALTH_TOPIC, HealthSample, Heartbeat, Severity, Source, Topology,
    UNHEALTHY_TAINT_KEY, UnhealthyNode, deterministic_id, fault_topic,
};
use futures::StreamExt;
use k8s_openapi::api::{
    coordination::v1::Lease,
    core::v1::{Node, Pod},
};
use kube::{
    Api, Client, Resource,
    runtime::{WatchStreamExt, watcher},
};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};
use rdkafka::{
    Message,
    consumer::{Consumer, StreamConsumer},
};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// Everything that can go wrong in the detector.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Kafka or event encoding failed.
    #[error(transparent)]
    Plumbing(#[from] firebreak_plumbing::Error),
    /// The Kubernetes client could not be built.
    #[error("kubernetes: {0}")]
    Kube(#[from] kube::Error),
}

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    cluster: String,
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    cluster: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClusterLabels {
    cluster: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReadyLabels {
    cluster: String,
    ready: &'static str,
}

/// The detector's metrics, registered under `firebreak_detector`, labelled by cluster; clones
/// share the values.
#[derive(Clone, Default)]
pub struct Metrics {
    published: Family<KindLabels, Counter>,
    nodes: Family<ReadyLabels, Gauge>,
    pod_starts: Family<OutcomeLabels, Gauge>,
    pod_start_success: Family<ClusterLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    unschedulable: Family<ClusterLabels, Gauge>,
    out_of_service: Family<ClusterLabels, Gauge>,
    samples: Family<ClusterLabels, Counter>,
    sample_seconds: Family<ClusterLabels, Counter<f64, std::sync::atomic::AtomicU64>>,
    undecodable: Family<KindLabels, Counter>,
    conditions: Family<ClusterLabels, Counter>,
    lag: firebreak_plumbing::kafka::Lag,
}

impl Metrics {
    /// Creates the metrics and registers them.
    pub fn new(registry: &mut Registry) -> Self {
        let m = Self::default();
        let r = registry.sub_registry_with_prefix("firebreak_detector");
        r.register(
            "consumer_lag",
            "Heartbeats and faults on the topics not yet read, per consumer group and partition",
            m.lag.clone(),
        );
        r.register("faults_published", "Faults published by cluster and kind", m.published.clone());
        r.register("nodes", "Nodes by cluster and Ready status (true, false)", m.nodes.clone());
        r.register(
            "pod_starts",
            "Pods created in the window by how their start went (started, failed, timed_out, pending)",
            m.pod_starts.clone(),
        );
        r.register(
            "pod_start_success_percent",
            "Percent of the window's decided pod starts that reached Ready in time",
            m.pod_start_success.clone(),
        );
        r.register("pods_unschedulable", "Pods pending because no node can take them", m.unschedulable.clone());
        r.register("nodes_out_of_service", "Nodes taken out of service by Firebreak", m.out_of_service.clone());
        r.register("health_samples", "Health samples built and queued for the health topic", m.samples.clone());
        r.register(
            "health_sample_seconds",
            "Time spent building health samples (divide by health_samples_total for the mean)",
            m.sample_seconds.clone(),
        );
        r.register(
            "undecodable_objects",
            "Objects the watches could not decode (kind Node or Pod), skipped while the rest are watched",
            m.undecodable.clone(),
        );
        r.register(
            "node_conditions_written",
            "Patches of Firebreak's node conditions (a fault set one, a healing cleared them)",
            m.conditions.clone(),
        );
        m
    }

    /// Counts and reports an object a watch could not decode; the watch goes on without it.
    fn condition_written(&self, cluster: &str) {
        self.conditions.get_or_create(&ClusterLabels { cluster: cluster.into() }).inc();
    }

    fn undecodable(&self, cluster: &str, kind: &'static str, name: Option<&str>, error: &str) {
        tracing::warn!(kind, name = name.unwrap_or_default(), error, "undecodable object skipped; watching the rest");
        self.undecodable.get_or_create(&KindLabels { cluster: cluster.into(), kind }).inc();
    }

    fn sample(&self, s: &HealthSample, took: Duration) {
        let c = || s.cluster.clone();
        self.samples.get_or_create(&ClusterLabels { cluster: c() }).inc();
        self.sample_seconds.get_or_create(&ClusterLabels { cluster: c() }).inc_by(took.as_secs_f64());
        let p = &s.pod_starts;
        for (outcome, n) in
            [("started", p.started), ("failed", p.failed), ("timed_out", p.timed_out), ("pending", p.pending)]
        {
            self.pod_starts.get_or_create(&OutcomeLabels { cluster: c(), outcome }).set(i64::from(n));
        }
        if let Some(v) = p.success_percent() {
            self.pod_start_success.get_or_create(&ClusterLabels { cluster: c() }).set(v);
        }
        self.unschedulable.get_or_create(&ClusterLabels { cluster: c() }).set(i64::from(s.pods_unschedulable));
        let oos = s.unhealthy.iter().filter(|n| n.out_of_service).count() as i64;
        self.out_of_service.get_or_create(&ClusterLabels { cluster: c() }).set(oos);
    }

    fn published(&self, cluster: &str, kind: FaultKind) {
        self.published.get_or_create(&KindLabels { cluster: cluster.into(), kind: kind.as_str() }).inc();
    }

    /// `nodes`: each node's last Ready condition status.
    fn nodes(&self, cluster: &str, nodes: &BTreeMap<String, Seen>) {
        let ready = nodes.values().filter(|n| n.ready == "True").count() as i64;
        let total = nodes.len() as i64;
        self.nodes.get_or_create(&ReadyLabels { cluster: cluster.into(), ready: "true" }).set(ready);
        self.nodes.get_or_create(&ReadyLabels { cluster: cluster.into(), ready: "false" }).set(total - ready);
    }
}

/// Every Kubernetes API request the detector makes, as RBAC names it: (API group, resource,
/// verbs). `deploy/` grants its service account exactly these (a test renders the manifests and
/// compares).
pub const KUBE_ACCESS: &[(&str, &str, &[&str])] = &[
    ("", "nodes", &["get", "list", "watch"]),
    ("", "nodes/status", &["patch"]),
    ("", "pods", &["list", "watch"]),
    // Its own Lease, in Firebreak's namespace (leader election).
    ("coordination.k8s.io", "leases", &["get", "create", "update"]),
    // The kubelets' node Leases, in `kube-node-lease`.
    ("coordination.k8s.io", "leases", &["list", "watch"]),
];

/// How to run the detector.
#[derive(Debug, Clone)]
pub struct Config {
    /// The cluster watched.
    pub cluster: String,
    /// Kafka brokers and tuning.
    pub kafka: KafkaConfig,
    /// Silence after which an agent is reported silent.
    pub agent_silent_after: Duration,
    /// A node first seen NotReady is reported only if it was created longer ago than this
    /// (new nodes are NotReady until their kubelet reports).
    pub new_node_grace: Duration,
    /// How often a cluster snapshot is published.
    pub sample_every: Duration,
    /// Node labels that name failure domains, counted in the snapshot.
    pub failure_domains: Vec<String>,
    /// The sliding window of pod starts (and of faults per class) in a health sample.
    pub pod_window: Duration,
    /// A pod not Ready this long after its creation has timed out.
    pub pod_start_deadline: Duration,
    /// How long a node must stay NotReady before it is a fault (shorter spells are flaps).
    pub not_ready_for: Duration,
    /// This many flaps within `flapping_within` are a `NodeFlapping` fault.
    pub flapping_count: u32,
    /// The window flaps are counted in.
    pub flapping_within: Duration,
    /// Leader election among the cluster's detector replicas (the Lease
    /// `firebreak-detector-<cluster>`); `None`: this replica acts alone.
    pub lease: Option<firebreak_plumbing::leader::LeaseConfig>,
}

/// What the health sample counts besides nodes: pod starts and recent faults per class.
struct Counts {
    pods: pods::PodStartTracker,
    /// Faults of this cluster: when observed, and their class.
    faults: VecDeque<(DateTime<Utc>, String)>,
}

type Shared = Arc<Mutex<Counts>>;

fn lock(c: &Shared) -> std::sync::MutexGuard<'_, Counts> {
    c.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs the detections until `cancel`: with leader election, only while this replica holds the
/// cluster's Lease, so two replicas never publish the same samples and faults twice.
pub async fn run(cfg: Config, client: Client, metrics: Metrics, cancel: CancellationToken) -> Result<()> {
    let name = format!("firebreak-detector-{}", cfg.cluster);
    let lease = cfg.lease.clone();
    firebreak_plumbing::leader::lead(client.clone(), &name, lease, cancel, |term| {
        detect(cfg.clone(), client.clone(), metrics.clone(), term)
    })
    .await
}

/// Watches, consumes and publishes until `cancel`.
async fn detect(cfg: Config, client: Client, metrics: Metrics, cancel: CancellationToken) -> Result<()> {
    let producer = Producer::new(&cfg.kafka)?;
    let group = format!("firebreak-detector-{}", cfg.cluster);
    let consumer: StreamConsumer = cfg.kafka.consumer(&group).create().map_err(firebreak_plumbing::Error::from)?;
    let faults = fault_topic(&cfg.cluster);
    // Its own cluster's heartbeats and faults only.
    let beats = firebreak_schema::heartbeat_topic(&cfg.cluster);
    consumer.subscribe(&[&beats, &faults]).map_err(firebreak_plumbing::Error::from)?;
    let consumer = Arc::new(consumer);
    let lagging = firebreak_plumbing::kafka::spawn_lag_metric(&consumer, group, metrics.lag.clone(), cancel.clone());
    let span = tracing::info_span!("detector", cluster = %cfg.cluster);
    tracing::info!(parent: &span, brokers = %cfg.kafka.brokers, not_ready_for = ?cfg.not_ready_for, "detector running");
    let counts: Shared = Arc::new(Mutex::new(Counts {
        pods: pods::PodStartTracker::new(cfg.pod_window, cfg.pod_start_deadline),
        faults: VecDeque::new(),
    }));
    let (nodes_tx, nodes_rx) = tokio::sync::watch::channel(BTreeMap::<String, Seen>::new());
    let watching = tokio::spawn(
        watch_nodes(
            cfg.clone(),
            Api::all(client.clone()),
            Api::namespaced(client.clone(), NODE_LEASE_NAMESPACE),
            producer.clone(),
            nodes_tx,
            metrics.clone(),
            cancel.clone(),
        )
        .instrument(span.clone()),
    );
    let conditions = tokio::spawn({
        let (cfg, nodes, metrics, cancel) = (cfg.clone(), Api::all(client.clone()), metrics.clone(), cancel.clone());
        async move {
            if let Err(error) = conditions::run(cfg, nodes, metrics, cancel).await {
                tracing::error!(%error, "node conditions are not written");
            }
        }
        .instrument(span.clone())
    });
    let pods = tokio::spawn(
        watch_pods(
            cfg.cluster.clone(),
            Api::all(client),
            nodes_rx.clone(),
            counts.clone(),
            metrics.clone(),
            cancel.clone(),
        )
        .instrument(span.clone()),
    );
    let samples = tokio::spawn(
        publish_samples(
            cfg.clone(),
            producer.clone(),
            nodes_rx.clone(),
            counts.clone(),
            metrics.clone(),
            cancel.clone(),
        )
        .instrument(span.clone()),
    );
    heartbeats(cfg, consumer, producer, nodes_rx, counts, metrics, cancel).instrument(span).await;
    let _ = watching.await;
    let _ = pods.await;
    let _ = samples.await;
    let _ = conditions.await;
    lagging.abort();
    Ok(())
}

/// Every pod of the cluster, through a `kube` watch, into the pod start accounting (with the
/// failure domains of its node as the node watch last saw them).
async fn watch_pods(
    cluster: String,
    api: Api<Lenient<Pod>>,
    nodes: tokio::sync::watch::Receiver<BTreeMap<String, Seen>>,
    counts: Shared,
    metrics: Metrics,
    cancel: CancellationToken,
) {
    let mut stream = watcher(api, watcher::Config::default()).default_backoff().boxed();
    loop {
        let ev = tokio::select! {
            _ = cancel.cancelled() => return,
            ev = stream.next() => ev,
        };
        match ev {
            None => return,
            Some(Err(error)) => tracing::warn!(%error, "pod watch failed; retrying"),
            Some(Ok(
                watcher::Event::Apply(Lenient::Undecodable { meta, error })
                | watcher::Event::InitApply(Lenient::Undecodable { meta, error }),
            )) => {
                metrics.undecodable(&cluster, "Pod", meta.name.as_deref(), &error);
            }
            Some(Ok(watcher::Event::Apply(Lenient::Decoded(p)) | watcher::Event::InitApply(Lenient::Decoded(p)))) => {
                // Read before the counts are locked: `publish_samples` takes them in that order.
                let domains = p
                    .spec
                    .as_ref()
                    .and_then(|s| s.node_name.as_deref())
                    .and_then(|n| nodes.borrow().get(n).map(Seen::domain_keys));
                lock(&counts).pods.apply(&p, Utc::now(), domains)
            }
            Some(Ok(watcher::Event::Delete(Lenient::Decoded(p)))) => lock(&counts).pods.delete(&p),
            Some(Ok(_)) => {}
        }
    }
}

/// What the detector knows of a node: its last Ready status, when it was created, whether
/// Firebreak took it out of service, and its failure domains.
#[derive(Debug, Clone)]
struct Seen {
    ready: String,
    created: DateTime<Utc>,
    out_of_service: bool,
    domains: BTreeMap<String, String>,
}

impl Seen {
    /// Its failure domains as the health sample names them: `label=value`.
    fn domain_keys(&self) -> Vec<String> {
        self.domains.iter().map(|(k, v)| format!("{k}={v}")).collect()
    }
}

/// The health sample: the nodes seen, pod starts and faults counted.
fn sample(cfg: &Config, nodes: &BTreeMap<String, Seen>, counts: &mut Counts, at: DateTime<Utc>) -> HealthSample {
    let domains_of = |node: &str| -> Vec<String> { nodes.get(node).map(Seen::domain_keys).unwrap_or_default() };
    let (pod_starts, pod_starts_by_domain, pods_unschedulable) = counts.pods.measure(at, domains_of);
    let since = at - chrono::TimeDelta::from_std(cfg.pod_window).unwrap_or_default();
    while counts.faults.front().is_some_and(|(t, _)| *t < since) {
        counts.faults.pop_front();
    }
    let mut faults_by_class: BTreeMap<String, u32> = BTreeMap::new();
    for (_, class) in &counts.faults {
        *faults_by_class.entry(class.clone()).or_default() += 1;
    }
    let mut domains: BTreeMap<String, BTreeMap<String, u32>> = BTreeMap::new();
    let mut unhealthy = Vec::new();
    for (name, n) in nodes {
        for (k, v) in &n.domains {
            *domains.entry(k.clone()).or_default().entry(v.clone()).or_default() += 1;
        }
        let ready = n.ready == "True";
        if !ready || n.out_of_service {
            unhealthy.push(UnhealthyNode {
                name: name.clone(),
                ready,
                out_of_service: n.out_of_service,
                domains: n.domains.clone(),
            });
        }
    }
    HealthSample {
        cluster: cfg.cluster.clone(),
        at,
        nodes: nodes.len() as u32,
        ready: nodes.values().filter(|n| n.ready == "True").count() as u32,
        unhealthy,
        domains,
        window_s: cfg.pod_window.as_secs(),
        start_deadline_s: cfg.pod_start_deadline.as_secs(),
        pod_starts,
        pod_starts_by_domain,
        pods_unschedulable,
        faults_by_class,
    }
}

/// Publishes a health sample every `sample_every`, once the node watch has seen the cluster.
async fn publish_samples(
    cfg: Config,
    producer: Producer,
    mut nodes: tokio::sync::watch::Receiver<BTreeMap<String, Seen>>,
    counts: Shared,
    metrics: Metrics,
    cancel: CancellationToken,
) {
    // Nothing is known before the first node is seen.
    tokio::select! {
        _ = cancel.cancelled() => return,
        r = nodes.wait_for(|n| !n.is_empty()) => if r.is_err() { return },
    }
    let mut tick = tokio::time::interval(cfg.sample_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut published: Option<(Instant, Topology)> = None;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let began = Instant::now();
        let s = sample(&cfg, &nodes.borrow(), &mut lock(&counts), Utc::now());
        metrics.sample(&s, began.elapsed());
        tracing::debug!(nodes = s.nodes, ready = s.ready, pod_starts = ?s.pod_starts, "health sample");
        // The failure domains, before the sample (one partition: whoever has read a sample has
        // read the topology it was taken with): when they changed, and every ten minutes for
        // readers that start late or lost theirs.
        let t = topology(&cfg.cluster, &nodes.borrow(), s.at);
        let stale = published
            .as_ref()
            .is_none_or(|(when, last)| last.domains != t.domains || when.elapsed() >= TOPOLOGY_REFRESH);
        if stale {
            match producer.publish_nowait(HEALTH_TOPIC, &t) {
                Ok(()) => published = Some((Instant::now(), t)),
                Err(error) => tracing::warn!(%error, "topology not queued"),
            }
        }
        if let Err(error) = producer.publish_nowait(HEALTH_TOPIC, &s) {
            tracing::warn!(%error, "health sample not queued");
        }
    }
}

/// How often the topology is published when it does not change.
const TOPOLOGY_REFRESH: Duration = Duration::from_secs(600);

/// Which nodes are in which failure domain, as the node watch sees them.
fn topology(cluster: &str, nodes: &BTreeMap<String, Seen>, at: DateTime<Utc>) -> Topology {
    let mut domains: BTreeMap<String, BTreeMap<String, Vec<String>>> = BTreeMap::new();
    for (name, n) in nodes {
        for (k, v) in &n.domains {
            domains.entry(k.clone()).or_default().entry(v.clone()).or_default().push(name.clone());
        }
    }
    Topology { cluster: cluster.to_owned(), at, domains }
}

fn ready_condition(node: &Node) -> Option<(String, String, String, Option<DateTime<Utc>>)> {
    let c = node.status.as_ref()?.conditions.as_ref()?.iter().find(|c| c.type_ == "Ready")?;
    let at = c.last_transition_time.as_ref().and_then(|t| DateTime::from_timestamp(t.0.as_second(), 0));
    Some((c.status.clone(), c.reason.clone().unwrap_or_default(), c.message.clone().unwrap_or_default(), at))
}

fn under_remediation(node: &Node) -> bool {
    node.spec.as_ref().and_then(|s| s.taints.as_ref()).is_some_and(|t| t.iter().any(|t| t.key == UNHEALTHY_TAINT_KEY))
}

/// What the node watch keeps of one node between events: a NotReady not yet old enough to be
/// a fault, and the recent NotReady spells too short to be one (flaps).
#[derive(Default)]
struct Track {
    /// The NotReady fault waiting for `not_ready_for`, or `None` once published (or Ready).
    pending: Option<FaultEvent>,
    /// The node is NotReady and that was published.
    reported: bool,
    /// Start times of recent NotReady spells that ended before `not_ready_for`.
    flaps: VecDeque<DateTime<Utc>>,
    /// The node's Lease in `kube-node-lease`: last renewed, for how many seconds.
    lease: Option<(DateTime<Utc>, i64)>,
    /// The Lease lapsed and that began the NotReady spell now tracked (the Ready condition
    /// turning later does not start it again).
    lease_lapsed: bool,
}

impl Track {
    /// Whether the node's Lease, as last seen, has lapsed by `now`.
    fn lease_lapsed_by(&self, now: DateTime<Utc>) -> bool {
        self.lease.is_some_and(|(renewed, secs)| now > renewed + chrono::TimeDelta::seconds(secs))
    }
}

/// Where kubelets keep their node Leases.
const NODE_LEASE_NAMESPACE: &str = "kube-node-lease";

/// A node Lease's renew time and duration.
fn lease_of(lease: &Lease) -> Option<(String, (DateTime<Utc>, i64))> {
    let spec = lease.spec.as_ref()?;
    let renewed = spec.renew_time.as_ref()?.0.as_millisecond();
    let renewed = DateTime::from_timestamp_millis(renewed)?;
    Some((lease.metadata.name.clone()?, (renewed, i64::from(spec.lease_duration_seconds?))))
}

/// The end of a spell: back before it was a fault, it is a flap, and enough flaps within the
/// window are one `NodeFlapping`.
fn spell_ended(cfg: &Config, name: &str, track: &mut Track) -> Option<FaultEvent> {
    track.reported = false;
    track.lease_lapsed = false;
    let spell = track.pending.take()?;
    let now = Utc::now();
    track.flaps.push_back(spell.observed_at);
    while track.flaps.front().is_some_and(|t| now - *t > delta(cfg.flapping_within)) {
        track.flaps.pop_front();
    }
    (track.flaps.len() >= cfg.flapping_count as usize).then(|| {
        let flaps: Vec<DateTime<Utc>> = track.flaps.drain(..).collect();
        flapping(cfg, name, &flaps)
    })
}

/// A node Lease seen by the watch: its renewal noted; renewed again after it lapsed (and Ready
/// says True), the spell the lapse began ends as a flap, which may make a `NodeFlapping`.
fn on_lease(
    cfg: &Config,
    tracks: &mut BTreeMap<String, Track>,
    seen: &BTreeMap<String, Seen>,
    event: std::result::Result<watcher::Event<Lenient<Lease>>, watcher::Error>,
    metrics: &Metrics,
) -> Option<FaultEvent> {
    let lease = match event {
        Err(error) => {
            tracing::warn!(%error, "node lease watch failed; retrying");
            return None;
        }
        Ok(watcher::Event::Apply(l) | watcher::Event::InitApply(l)) => l,
        Ok(_) => return None,
    };
    let lease = match lease {
        Lenient::Decoded(l) => l,
        Lenient::Undecodable { meta, error } => {
            metrics.undecodable(&cfg.cluster, "Lease", meta.name.as_deref(), &error);
            return None;
        }
    };
    let (name, renewal) = lease_of(&lease)?;
    let track = tracks.entry(name.clone()).or_default();
    track.lease = Some(renewal);
    let ready = seen.get(&name).is_some_and(|s| s.ready == "True");
    if track.lease_lapsed && !track.lease_lapsed_by(Utc::now()) && ready {
        spell_ended(cfg, &name, track)
    } else {
        None
    }
}

/// A node whose kubelet stopped renewing its Lease while its Ready condition still says True
/// (the node controller marks it Unknown only after its own grace period, and not at all when
/// it is down itself): the start of a NotReady spell, dated when the Lease lapsed.
fn lease_lapse(cfg: &Config, name: &str, seen: &Seen, renewed: DateTime<Utc>, secs: i64) -> FaultEvent {
    let observed_at = renewed + chrono::TimeDelta::seconds(secs);
    let ours = seen.out_of_service;
    let mut evidence = BTreeMap::from([
        ("ready_status".to_owned(), seen.ready.clone()),
        ("reason".to_owned(), "NodeLeaseExpired".to_owned()),
        ("lease_renew_time".to_owned(), renewed.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
        ("lease_duration_s".to_owned(), secs.to_string()),
        ("not_ready_for_s".to_owned(), cfg.not_ready_for.as_secs().to_string()),
    ]);
    if ours {
        evidence.insert("caused_by_remediation".into(), "true".into());
    }
    FaultEvent {
        id: deterministic_id(observed_at, &[&cfg.cluster, name, "NodeNotReady", "NodeLeaseExpired"]),
        cluster: cfg.cluster.clone(),
        node: name.to_owned(),
        class: FaultKind::NodeNotReady.class(),
        kind: FaultKind::NodeNotReady,
        severity: if ours { Severity::Warning } else { Severity::Critical },
        source: Source::Detector,
        observed_at,
        message: format!(
            "the kubelet has not renewed its node Lease since {} ({secs}s lease) for at least {}s; Ready still says {}",
            renewed.format("%H:%M:%S"),
            cfg.not_ready_for.as_secs(),
            seen.ready
        ),
        evidence,
    }
}

async fn watch_nodes(
    cfg: Config,
    api: Api<Lenient<Node>>,
    leases: Api<Lenient<Lease>>,
    producer: Producer,
    nodes_tx: tokio::sync::watch::Sender<BTreeMap<String, Seen>>,
    metrics: Metrics,
    cancel: CancellationToken,
) {
    let mut stream = watcher(api, watcher::Config::default()).default_backoff().boxed();
    let mut lease_stream = watcher(leases, watcher::Config::default()).default_backoff().boxed();
    let mut tracks: BTreeMap<String, Track> = BTreeMap::new();
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let ev = tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {
                let now = Utc::now();
                // A Lease that lapsed while Ready still says True starts a spell.
                {
                    let seen = nodes_tx.borrow();
                    for (name, track) in tracks.iter_mut() {
                        let Some((renewed, secs)) = track.lease else { continue };
                        let Some(node) = seen.get(name) else { continue };
                        let lapsed = track.lease_lapsed_by(now);
                        if lapsed && node.ready == "True" && !track.lease_lapsed && track.pending.is_none() && !track.reported {
                            track.lease_lapsed = true;
                            track.pending = Some(lease_lapse(&cfg, name, node, renewed, secs));
                        }
                    }
                }
                // A NotReady that lasted `not_ready_for` is a fault.
                let due: Vec<FaultEvent> = tracks
                    .values_mut()
                    .filter(|t| t.pending.as_ref().is_some_and(|e| now - e.observed_at >= delta(cfg.not_ready_for)))
                    .filter_map(|t| {
                        t.reported = true;
                        t.pending.take()
                    })
                    .collect();
                for event in due {
                    publish(&cfg, &producer, &metrics, &cancel, event).await;
                }
                continue;
            }
            lease = lease_stream.next() => {
                let Some(lease) = lease else { return };
                let flapping = on_lease(&cfg, &mut tracks, &nodes_tx.borrow(), lease, &metrics);
                if let Some(flapping) = flapping {
                    publish(&cfg, &producer, &metrics, &cancel, flapping).await;
                }
                continue;
            }
            ev = stream.next() => ev,
        };
        let node = match ev {
            None => return,
            Some(Err(error)) => {
                tracing::warn!(%error, "node watch failed; retrying");
                continue;
            }
            Some(Ok(watcher::Event::Apply(n) | watcher::Event::InitApply(n))) => match n {
                Lenient::Decoded(n) => n,
                // The node keeps what was last known of it.
                Lenient::Undecodable { meta, error } => {
                    metrics.undecodable(&cfg.cluster, "Node", meta.name.as_deref(), &error);
                    continue;
                }
            },
            Some(Ok(watcher::Event::Delete(n))) => {
                let name = n.meta().name.clone().unwrap_or_default();
                tracks.remove(&name);
                nodes_tx.send_modify(|m| {
                    m.remove(&name);
                });
                metrics.nodes(&cfg.cluster, &nodes_tx.borrow());
                continue;
            }
            Some(Ok(_)) => continue,
        };
        let name = node.metadata.name.clone().unwrap_or_default();
        let Some((status, reason, message, since)) = ready_condition(&node) else { continue };
        let created = node
            .metadata
            .creation_timestamp
            .as_ref()
            .and_then(|t| DateTime::from_timestamp(t.0.as_second(), 0))
            .unwrap_or(DateTime::UNIX_EPOCH);
        let labels = node.metadata.labels.clone().unwrap_or_default();
        let domains =
            cfg.failure_domains.iter().filter_map(|k| labels.get(k).map(|v| (k.clone(), v.clone()))).collect();
        let seen = Seen { ready: status.clone(), created, out_of_service: under_remediation(&node), domains };
        let mut previous = None;
        nodes_tx.send_if_modified(|m| {
            let changed = m.get(&name).is_none_or(|s| {
                s.ready != seen.ready || s.out_of_service != seen.out_of_service || s.domains != seen.domains
            });
            previous = m.insert(name.clone(), seen).map(|s| s.ready);
            changed
        });
        metrics.nodes(&cfg.cluster, &nodes_tx.borrow());
        let track = tracks.entry(name.clone()).or_default();
        if status == "True" {
            // Back before it was a fault: a flap (unless the Lease still lapses: then the spell
            // goes on until it is renewed). Enough flaps within the window are one fault.
            let lease_lapsed = track.lease_lapsed && track.lease_lapsed_by(Utc::now());
            if !lease_lapsed && let Some(flapping) = spell_ended(&cfg, &name, track) {
                publish(&cfg, &producer, &metrics, &cancel, flapping).await;
            }
            continue;
        }
        if track.lease_lapsed {
            // The spell began when the Lease lapsed; the Ready condition only caught up.
            continue;
        }
        if previous.as_deref() == Some(status.as_str()) {
            continue;
        }
        let was_ready = previous.as_deref() == Some("True");
        let age = (Utc::now() - created).num_seconds();
        if !was_ready && (previous.is_some() || age < cfg.new_node_grace.as_secs() as i64) {
            continue;
        }
        let observed_at = since.unwrap_or_else(Utc::now);
        let ours = under_remediation(&node);
        let mut evidence =
            BTreeMap::from([("ready_status".to_owned(), status.clone()), ("reason".to_owned(), reason.clone())]);
        evidence.insert("not_ready_for_s".into(), cfg.not_ready_for.as_secs().to_string());
        if ours {
            evidence.insert("caused_by_remediation".into(), "true".into());
        }
        let event = FaultEvent {
            id: deterministic_id(observed_at, &[&cfg.cluster, &name, "NodeNotReady", &status]),
            cluster: cfg.cluster.clone(),
            node: name.clone(),
            class: FaultKind::NodeNotReady.class(),
            kind: FaultKind::NodeNotReady,
            severity: if ours { Severity::Warning } else { Severity::Critical },
            source: Source::Detector,
            observed_at,
            message: format!("Ready={status} ({reason}) for at least {}s: {message}", cfg.not_ready_for.as_secs()),
            evidence,
        };
        // Published once it has lasted `not_ready_for` (on the next tick), or at once when the
        // node was already reported NotReady and only its status changed.
        if track.reported {
            publish(&cfg, &producer, &metrics, &cancel, event).await;
        } else {
            track.pending = Some(event);
        }
    }
}

fn delta(d: Duration) -> chrono::TimeDelta {
    chrono::TimeDelta::from_std(d).unwrap_or(chrono::TimeDelta::MAX)
}

async fn publish(cfg: &Config, producer: &Producer, metrics: &Metrics, cancel: &CancellationToken, event: FaultEvent) {
    tracing::info!(node = %event.node, event_id = %event.id, kind = %event.kind, message = %event.message, "node fault");
    if producer.publish_until_delivered(&fault_topic(&cfg.cluster), &event, cancel).await {
        metrics.published(&cfg.cluster, event.kind);
    }
}

/// A `NodeFlapping` fault: `flaps` NotReady spells, each shorter than `not_ready_for`, within
/// the window. Its id is named by the first spell, so a restart that sees the same spells says
/// the same.
fn flapping(cfg: &Config, node: &str, flaps: &[DateTime<Utc>]) -> FaultEvent {
    let first = flaps.first().copied().unwrap_or_else(Utc::now);
    let list: Vec<String> = flaps.iter().map(|t| t.format("%H:%M:%S").to_string()).collect();
    FaultEvent {
        id: deterministic_id(first, &[&cfg.cluster, node, "NodeFlapping", &flaps.len().to_string()]),
        cluster: cfg.cluster.clone(),
        node: node.to_owned(),
        class: FaultKind::NodeFlapping.class(),
        kind: FaultKind::NodeFlapping,
        severity: Severity::Warning,
        source: Source::Detector,
        observed_at: Utc::now(),
        message: format!(
            "Ready flapped: {} NotReady spells within {}, each shorter than {}s (at {})",
            flaps.len(),
            humantime::format_duration(cfg.flapping_within),
            cfg.not_ready_for.as_secs(),
            list.join(", ")
        ),
        evidence: BTreeMap::from([
            ("spells".to_owned(), flaps.len().to_string()),
            ("window_s".to_owned(), cfg.flapping_within.as_secs().to_string()),
            ("not_ready_for_s".to_owned(), cfg.not_ready_for.as_secs().to_string()),
        ]),
    }
}

/// The id of an `AgentSilent`: the silence is named by the last heartbeat heard (its sequence
/// number and send time), or by the node's creation time when none was, so the same conclusion
/// drawn again gets the same id.
fn silent_id(
    cluster: &str,
    node: &str,
    last_heard: Option<(u64, DateTime<Utc>)>,
    created: DateTime<Utc>,
) -> uuid::Uuid {
    match last_heard {
        Some((seq, sent_at)) => {
            deterministic_id(sent_at, &[cluster, node, "AgentSilent", "after", &seq.to_string(), &sent_at.to_rfc3339()])
        }
        None => deterministic_id(created, &[cluster, node, "AgentSilent", "never-heard"]),
    }
}

async fn heartbeats(
    cfg: Config,
    consumer: Arc<StreamConsumer>,
    producer: Producer,
    nodes: tokio::sync::watch::Receiver<BTreeMap<String, Seen>>,
    counts: Shared,
    metrics: Metrics,
    cancel: CancellationToken,
) {
    let started = Instant::now();
    let window = chrono::TimeDelta::from_std(cfg.pod_window).unwrap_or_default();
    // Per node: when its agent was last heard here, and that heartbeat's sequence number and send time.
    let mut last: HashMap<String, (Instant, u64, DateTime<Utc>)> = HashMap::new();
    let mut reported: HashMap<String, Instant> = HashMap::new();
    let mut check = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            msg = consumer.recv() => match msg {
                Err(error) => tracing::warn!(%error, "heartbeat receive failed"),
                Ok(msg) if msg.topic().starts_with(FAULT_TOPIC_PREFIX) => {
                    // Faults per class, for the health sample; our own cluster's only.
                    match decode_message::<FaultEvent>(&msg) {
                        Ok(f) if f.cluster == cfg.cluster && f.observed_at >= Utc::now() - window => {
                            let mut c = lock(&counts);
                            let at = c.faults.partition_point(|(t, _)| *t <= f.observed_at);
                            c.faults.insert(at, (f.observed_at, f.class.as_str().to_owned()));
                        }
                        Ok(_) => {}
                        Err(error) => tracing::debug!(%error, offset = msg.offset(), "undecodable fault not counted"),
                    }
                    let _ = consumer.store_offset_from_message(&msg);
                }
                Ok(msg) => {
                    match decode_message::<Heartbeat>(&msg) {
                        Ok(hb) if hb.cluster == cfg.cluster => {
                            if reported.remove(&hb.node).is_some() {
                                tracing::info!(node = %hb.node, "agent heard again");
                            }
                            last.insert(hb.node, (Instant::now(), hb.seq, hb.sent_at));
                        }
                        Ok(_) => {}
                        Err(error) => tracing::warn!(%error, offset = msg.offset(), "undecodable heartbeat skipped"),
                    }
                    let _ = consumer.store_offset_from_message(&msg);
                }
            },
            _ = check.tick() => {
                // Every node the API knows (with its creation time) and every agent heard.
                let mut known: BTreeMap<String, DateTime<Utc>> =
                    last.keys().map(|n| (n.clone(), DateTime::UNIX_EPOCH)).collect();
                known.extend(nodes.borrow().iter().map(|(n, s)| (n.clone(), s.created)));
                for (node, created) in known {
                    if reported.contains_key(&node) {
                        continue;
                    }
                    let heard = last.get(&node).copied();
                    let (since, seq) = heard.map_or((started, 0), |(at, seq, _)| (at, seq));
                    let silent = since.elapsed();
                    if silent < cfg.agent_silent_after {
                        continue;
                    }
                    let id = silent_id(&cfg.cluster, &node, heard.map(|(_, seq, at)| (seq, at)), created);
                    let observed_at = Utc::now();
                    let event = FaultEvent {
                        id,
                        cluster: cfg.cluster.clone(),
                        node: node.clone(),
                        class: FaultKind::AgentSilent.class(),
                        kind: FaultKind::AgentSilent,
                        severity: Severity::Warning,
                        source: Source::Detector,
                        observed_at,
                        message: format!("no heartbeat for {}s (threshold {}s)", silent.as_secs(), cfg.agent_silent_after.as_secs()),
                        evidence: BTreeMap::from([
                            ("silent_for_s".into(), silent.as_secs().to_string()),
                            ("threshold_s".into(), cfg.agent_silent_after.as_secs().to_string()),
                            ("last_heartbeat_seq".into(), seq.to_string()),
                        ]),
                    };
                    tracing::info!(node = %node, event_id = %event.id, silent_s = silent.as_secs(), "agent silent");
                    reported.insert(node, Instant::now());
                    if producer.publish_until_delivered(&fault_topic(&cfg.cluster), &event, &cancel).await {
                        metrics.published(&cfg.cluster, event.kind);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_silence_is_named_by_what_was_last_heard() {
        let created = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        let heard = DateTime::from_timestamp(1_700_000_500, 0).unwrap();
        let a = silent_id("c1", "n1", Some((41, heard)), created);
        assert_eq!(a, silent_id("c1", "n1", Some((41, heard)), created), "stable");
        assert_ne!(a, silent_id("c1", "n1", Some((42, heard)), created), "a later heartbeat, a new silence");
        assert_ne!(a, silent_id("c1", "n2", Some((41, heard)), created));
        let never = silent_id("c1", "n1", None, created);
        assert_eq!(never, silent_id("c1", "n1", None, created));
        assert_ne!(a, never);
        assert_eq!(a.get_version_num(), 7);
    }
}
