//! The detector: the cluster-side half of fault detection, one per cluster.
//!
//! It owns two detections and one measurement. Node readiness: it watches Nodes through the
//! Kubernetes API and publishes `NodeNotReady` when a node's Ready condition leaves True. Silent agents: it consumes
//! agent heartbeats and publishes `AgentSilent` for a node whose agent has not been heard from
//! for [`Config::agent_silent_after`]. Cluster snapshots: every [`Config::snapshot_every`] it
//! publishes a [`ClusterSnapshot`] on the health topic — nodes and ready nodes, per failure
//! domain, and every node that is NotReady or out of service by Firebreak — which the gate's
//! storm rules read. A fault observed on a node Firebreak itself has taken out
//! of service (it carries the `firebreak.io/unhealthy` taint) is published as a warning with
//! evidence `caused_by_remediation=true`, so our own reboots never trigger new remediation.
//! Event ids derive from what was observed, so a restarted detector republishes the same ids and
//! consumers deduplicate: `NodeNotReady` from the node and its Ready transition time;
//! `AgentSilent` from the last heartbeat heard (its send time and sequence number) or, for an
//! agent not heard since the detector started, from the node's creation time. (A detector that
//! restarts while an agent is silent has not heard that agent's last heartbeat, so it reports
//! the silence once more, under the second kind of id.)

use std::{
    collections::{BTreeMap, HashMap},
    time::Duration,
};

use chrono::{DateTime, Utc};
use firebreak_plumbing::kafka::{KafkaConfig, Producer, decode_message};
use firebreak_schema::{
    ClusterSnapshot, FAULT_TOPIC, FaultEvent, FaultKind, HEALTH_TOPIC, HEARTBEAT_TOPIC, Heartbeat, Severity, Source,
    UNHEALTHY_TAINT_KEY, UnhealthyNode, deterministic_id,
};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Node;
use kube::{
    Api, Client,
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
}

impl Metrics {
    /// Creates the metrics and registers them.
    pub fn new(registry: &mut Registry) -> Self {
        let m = Self::default();
        let r = registry.sub_registry_with_prefix("firebreak_detector");
        r.register("faults_published", "Faults published by cluster and kind", m.published.clone());
        r.register("nodes", "Nodes by cluster and Ready status (true, false)", m.nodes.clone());
        m
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
    pub snapshot_every: Duration,
    /// Node labels that name failure domains, counted in the snapshot.
    pub failure_domains: Vec<String>,
}

/// Runs both detections until `cancel`.
pub async fn run(cfg: Config, client: Client, metrics: Metrics, cancel: CancellationToken) -> Result<()> {
    let producer = Producer::new(&cfg.kafka)?;
    let consumer: StreamConsumer = cfg
        .kafka
        .consumer(&format!("firebreak-detector-{}", cfg.cluster))
        .create()
        .map_err(firebreak_plumbing::Error::from)?;
    consumer.subscribe(&[HEARTBEAT_TOPIC]).map_err(firebreak_plumbing::Error::from)?;
    let span = tracing::info_span!("detector", cluster = %cfg.cluster);
    tracing::info!(parent: &span, "detector running");
    let (nodes_tx, nodes_rx) = tokio::sync::watch::channel(BTreeMap::<String, Seen>::new());
    let watching = tokio::spawn(
        watch_nodes(cfg.clone(), Api::all(client), producer.clone(), nodes_tx, metrics.clone(), cancel.clone())
            .instrument(span.clone()),
    );
    let snapshots = tokio::spawn(
        publish_snapshots(cfg.clone(), producer.clone(), nodes_rx.clone(), cancel.clone()).instrument(span.clone()),
    );
    heartbeats(cfg, consumer, producer, nodes_rx, metrics, cancel).instrument(span).await;
    let _ = watching.await;
    let _ = snapshots.await;
    Ok(())
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

/// The snapshot of the nodes seen.
fn snapshot(cfg: &Config, nodes: &BTreeMap<String, Seen>, at: DateTime<Utc>) -> ClusterSnapshot {
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
    ClusterSnapshot {
        cluster: cfg.cluster.clone(),
        at,
        nodes: nodes.len() as u32,
        ready: nodes.values().filter(|n| n.ready == "True").count() as u32,
        unhealthy,
        domains,
    }
}

/// Publishes a snapshot every `snapshot_every`, once the node watch has seen the cluster.
async fn publish_snapshots(
    cfg: Config,
    producer: Producer,
    mut nodes: tokio::sync::watch::Receiver<BTreeMap<String, Seen>>,
    cancel: CancellationToken,
) {
    // Nothing is known before the first node is seen.
    tokio::select! {
        _ = cancel.cancelled() => return,
        r = nodes.wait_for(|n| !n.is_empty()) => if r.is_err() { return },
    }
    let mut tick = tokio::time::interval(cfg.snapshot_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let s = snapshot(&cfg, &nodes.borrow(), Utc::now());
        if let Err(error) = producer.publish_nowait(HEALTH_TOPIC, &s) {
            tracing::warn!(%error, "cluster snapshot not queued");
        }
    }
}

fn ready_condition(node: &Node) -> Option<(String, String, String, Option<DateTime<Utc>>)> {
    let c = node.status.as_ref()?.conditions.as_ref()?.iter().find(|c| c.type_ == "Ready")?;
    let at = c.last_transition_time.as_ref().and_then(|t| DateTime::from_timestamp(t.0.as_second(), 0));
    Some((c.status.clone(), c.reason.clone().unwrap_or_default(), c.message.clone().unwrap_or_default(), at))
}

fn under_remediation(node: &Node) -> bool {
    node.spec.as_ref().and_then(|s| s.taints.as_ref()).is_some_and(|t| t.iter().any(|t| t.key == UNHEALTHY_TAINT_KEY))
}

async fn watch_nodes(
    cfg: Config,
    api: Api<Node>,
    producer: Producer,
    nodes_tx: tokio::sync::watch::Sender<BTreeMap<String, Seen>>,
    metrics: Metrics,
    cancel: CancellationToken,
) {
    let mut stream = watcher(api, watcher::Config::default()).default_backoff().boxed();
    loop {
        let ev = tokio::select! {
            _ = cancel.cancelled() => return,
            ev = stream.next() => ev,
        };
        let node = match ev {
            None => return,
            Some(Err(error)) => {
                tracing::warn!(%error, "node watch failed; retrying");
                continue;
            }
            Some(Ok(watcher::Event::Apply(n) | watcher::Event::InitApply(n))) => n,
            Some(Ok(watcher::Event::Delete(n))) => {
                let name = n.metadata.name.unwrap_or_default();
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
        if status == "True" || previous.as_deref() == Some(status.as_str()) {
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
            message: format!("Ready={status} ({reason}): {message}"),
            evidence,
        };
        tracing::info!(node = %name, event_id = %event.id, ready = %status, caused_by_remediation = ours, "node not ready");
        if producer.publish_until_delivered(FAULT_TOPIC, &event, &cancel).await {
            metrics.published(&cfg.cluster, event.kind);
        }
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
    consumer: StreamConsumer,
    producer: Producer,
    nodes: tokio::sync::watch::Receiver<BTreeMap<String, Seen>>,
    metrics: Metrics,
    cancel: CancellationToken,
) {
    let started = Instant::now();
    // Per node: when its agent was last heard here, and that heartbeat's sequence number and send time.
    let mut last: HashMap<String, (Instant, u64, DateTime<Utc>)> = HashMap::new();
    let mut reported: HashMap<String, Instant> = HashMap::new();
    let mut check = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            msg = consumer.recv() => match msg {
                Err(error) => tracing::warn!(%error, "heartbeat receive failed"),
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
                    if producer.publish_until_delivered(FAULT_TOPIC, &event, &cancel).await {
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
