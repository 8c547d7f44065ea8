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

/// A cluster's nodes as its detector sees them, published periodically on the health topic
/// (key = cluster). The gate's storm rules read it: node counts per scope and which nodes are
/// unhealthy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterSnapshot {
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
}

impl ClusterSnapshot {
    /// Nodes in one failure domain (`None` for the whole cluster).
    pub fn nodes_in(&self, domain: Option<(&str, &str)>) -> u32 {
        match domain {
            None => self.nodes,
            Some((k, v)) => self.domains.get(k).and_then(|m| m.get(v)).copied().unwrap_or(0),
        }
    }
}

impl CloudEvent for ClusterSnapshot {
    const TYPE: &'static str = "io.firebreak.cluster-snapshot.v1";
    fn ce_id(&self) -> String {
        deterministic_id(self.at, &[&self.cluster, "snapshot"]).to_string()
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
