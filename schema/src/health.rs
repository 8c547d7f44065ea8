use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::{Error, Result, deterministic_id, event::validate_names, wire::CloudEvent};

/// A node that is not healthy now: not Ready, or taken out of service by Firebreak (it carries
/// the `firebreak.io/unhealthy` taint), or both.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnhealthyNode {
    /// Node name.
    pub name: String,
    /// Whether its Ready condition is True.
    pub ready: bool,
    /// Whether Firebreak has taken it out of service.
    pub out_of_service: bool,
    /// Its failure domains: label key → value, for the keys the detector was told to report.
    #[serde(default)]
    pub domains: BTreeMap<String, String>,
}

/// Pod starts in a sliding window: of the pods created in it, how many reached Running and Ready
/// within the deadline, how many failed (crash-looped, could not pull their image, failed) and
/// how many timed out. Pods still within their deadline are `pending` and count for neither.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodStarts {
    /// Reached Running and Ready within the deadline.
    pub started: u32,
    /// Failed to start: the reasons seen, with how many pods each.
    pub failed: u32,
    /// Not Ready by the deadline.
    pub timed_out: u32,
    /// Created, not yet decided.
    pub pending: u32,
    /// Why pods failed: reason (`CrashLoopBackOff`, `ImagePullBackOff`, `Failed`, ...) → pods.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub reasons: BTreeMap<String, u32>,
}

impl PodStarts {
    /// Pods decided: started, failed or timed out.
    pub fn decided(&self) -> u32 {
        self.started + self.failed + self.timed_out
    }

    /// The share of decided pods that started, in percent; `None` when none was decided.
    pub fn success_percent(&self) -> Option<f64> {
        let d = self.decided();
        (d > 0).then(|| 100.0 * f64::from(self.started) / f64::from(d))
    }
}

/// A cluster's health as its detector measures it, published every interval on the health topic
/// (key = cluster). The gate's storm rules read the node counts and which nodes are unhealthy;
/// its health rules read the signals ([`HealthSample::signal`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthSample {
    /// Cluster name.
    pub cluster: String,
    /// When it was taken.
    pub at: DateTime<Utc>,
    /// Nodes in the cluster.
    pub nodes: u32,
    /// Nodes whose Ready condition is True.
    pub ready: u32,
    /// Every node that is not Ready or is out of service by Firebreak.
    #[serde(default)]
    pub unhealthy: Vec<UnhealthyNode>,
    /// Nodes per failure domain: label key → label value → number of nodes.
    #[serde(default)]
    pub domains: BTreeMap<String, BTreeMap<String, u32>>,
    /// The pod-start window, in seconds.
    #[serde(default)]
    pub window_s: u64,
    /// The time a pod has to become Ready, in seconds.
    #[serde(default)]
    pub start_deadline_s: u64,
    /// Pod starts in the window, in the whole cluster.
    #[serde(default)]
    pub pod_starts: PodStarts,
    /// Pod starts in the window per failure domain: `label=value` → starts.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pod_starts_by_domain: BTreeMap<String, PodStarts>,
    /// Pods Pending because no node can take them (`PodScheduled=False`, `Unschedulable`).
    #[serde(default)]
    pub pods_unschedulable: u32,
    /// Faults reported in the window per fault class (`hardware`, `kernel`, ...).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub faults_by_class: BTreeMap<String, u32>,
}

/// A health signal a rule can test. Percentages are 0–100.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Signal {
    /// `pod_start_success_rate`: percent of decided pod starts that succeeded.
    PodStartSuccessRate,
    /// `not_ready_percent`: percent of nodes not Ready.
    NotReadyPercent,
    /// `out_of_service`: nodes taken out of service by Firebreak.
    OutOfService,
    /// `pods_unschedulable`: pods pending unschedulable.
    PodsUnschedulable,
    /// `fault_rate:<class>`: faults of a class in the window.
    FaultRate(String),
}

impl Signal {
    /// The signals with a fixed name.
    pub const NAMED: [&'static str; 4] =
        ["pod_start_success_rate", "not_ready_percent", "out_of_service", "pods_unschedulable"];
}

impl TryFrom<String> for Signal {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        Ok(match s.as_str() {
            "pod_start_success_rate" => Signal::PodStartSuccessRate,
            "not_ready_percent" => Signal::NotReadyPercent,
            "out_of_service" => Signal::OutOfService,
            "pods_unschedulable" => Signal::PodsUnschedulable,
            _ => match s.strip_prefix("fault_rate:") {
                Some(class) if !class.is_empty() && class.chars().all(|c| c.is_ascii_lowercase() || c == '_') => {
                    Signal::FaultRate(class.to_owned())
                }
                _ => {
                    return Err(format!(
                        "unknown signal `{s}` (one of {}, fault_rate:<class>)",
                        Signal::NAMED.join(", ")
                    ));
                }
            },
        })
    }
}

impl From<Signal> for String {
    fn from(s: Signal) -> String {
        s.to_string()
    }
}

impl std::fmt::Display for Signal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Signal::PodStartSuccessRate => f.write_str("pod_start_success_rate"),
            Signal::NotReadyPercent => f.write_str("not_ready_percent"),
            Signal::OutOfService => f.write_str("out_of_service"),
            Signal::PodsUnschedulable => f.write_str("pods_unschedulable"),
            Signal::FaultRate(c) => write!(f, "fault_rate:{c}"),
        }
    }
}

impl HealthSample {
    /// A signal's value in the cluster (`domain` `None`) or in one failure domain; `None` when
    /// the sample has no data for it (no decided pod start; a domain it does not know).
    pub fn signal(&self, signal: &Signal, domain: Option<(&str, &str)>) -> Option<f64> {
        let in_domain = |n: &UnhealthyNode| domain.is_none_or(|(k, v)| n.domains.get(k).map(String::as_str) == Some(v));
        match signal {
            Signal::PodStartSuccessRate => match domain {
                None => self.pod_starts.success_percent(),
                Some((k, v)) => self.pod_starts_by_domain.get(&format!("{k}={v}")).and_then(PodStarts::success_percent),
            },
            Signal::NotReadyPercent => {
                let nodes = self.nodes_in(domain);
                let not_ready = self.unhealthy.iter().filter(|n| !n.ready && in_domain(n)).count();
                (nodes > 0).then(|| 100.0 * not_ready as f64 / f64::from(nodes))
            }
            Signal::OutOfService => {
                Some(self.unhealthy.iter().filter(|n| n.out_of_service && in_domain(n)).count() as f64)
            }
            Signal::PodsUnschedulable => domain.is_none().then_some(f64::from(self.pods_unschedulable)),
            Signal::FaultRate(class) => {
                domain.is_none().then(|| f64::from(self.faults_by_class.get(class).copied().unwrap_or(0)))
            }
        }
    }

    /// Nodes in one failure domain (`None` for the whole cluster).
    pub fn nodes_in(&self, domain: Option<(&str, &str)>) -> u32 {
        match domain {
            None => self.nodes,
            Some((k, v)) => self.domains.get(k).and_then(|m| m.get(v)).copied().unwrap_or(0),
        }
    }
}

/// Which nodes of a cluster are in which failure domain, for the labels the detector was told
/// to report: label key → value → node names. Published on [`crate::HEALTH_TOPIC`] (key =
/// cluster) by the cluster's detector when it changes and at least every ten minutes, so the
/// event center can tell a storm in one zone or rack from one across the cluster.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Topology {
    /// Cluster name.
    pub cluster: String,
    /// When the detector's node watch saw it so.
    pub at: DateTime<Utc>,
    /// Label key → label value → the nodes with it, sorted.
    pub domains: BTreeMap<String, BTreeMap<String, Vec<String>>>,
}

/// A failure domain: (label key, value).
pub type Domain<'a> = (&'a str, &'a str);

impl Topology {
    /// Each node's domains: node → [(label key, value)], and each domain's size in nodes.
    pub fn by_node(&self) -> (BTreeMap<&str, Vec<Domain<'_>>>, BTreeMap<Domain<'_>, usize>) {
        let (mut of, mut size) = (BTreeMap::<&str, Vec<Domain<'_>>>::new(), BTreeMap::new());
        for (k, values) in &self.domains {
            for (v, nodes) in values {
                size.insert((k.as_str(), v.as_str()), nodes.len());
                for n in nodes {
                    of.entry(n.as_str()).or_default().push((k.as_str(), v.as_str()));
                }
            }
        }
        (of, size)
    }
}

impl CloudEvent for Topology {
    const TYPE: &'static str = "io.firebreak.topology.v1";
    fn ce_id(&self) -> String {
        deterministic_id(self.at, &[&self.cluster, "topology"]).to_string()
    }
    fn ce_source(&self) -> String {
        format!("/firebreak/detector/{}", self.cluster)
    }
    fn ce_time(&self) -> DateTime<Utc> {
        self.at
    }
    fn key(&self) -> String {
        self.cluster.clone()
    }
    fn validate(&self) -> Result<()> {
        validate_names(&self.cluster, "-")?;
        for (k, values) in &self.domains {
            if k.is_empty() || values.keys().any(String::is_empty) {
                return Err(Error::Invalid(format!("topology of {}: an empty label key or value", self.cluster)));
            }
            for n in values.values().flatten() {
                validate_names(&self.cluster, n)?;
            }
        }
        Ok(())
    }
}

impl CloudEvent for HealthSample {
    const TYPE: &'static str = "io.firebreak.health-sample.v1";
    fn ce_id(&self) -> String {
        deterministic_id(self.at, &[&self.cluster, "health-sample"]).to_string()
    }
    fn ce_source(&self) -> String {
        format!("/firebreak/detector/{}", self.cluster)
    }
    fn ce_time(&self) -> DateTime<Utc> {
        self.at
    }
    fn key(&self) -> String {
        self.cluster.clone()
    }
    fn validate(&self) -> Result<()> {
        validate_names(&self.cluster, "-")?;
        for n in &self.unhealthy {
            validate_names(&self.cluster, &n.name)?;
        }
        if self.ready > self.nodes {
            return Err(Error::Invalid(format!("{} ready of {} nodes", self.ready, self.nodes)));
        }
        Ok(())
    }
}
