//! The topic contract: every Kafka topic Firebreak uses, what it carries, who writes and who
//! reads it, and how it is created when missing. `firebreak topics` prints it; services create
//! the topics they need at start-up from it.

use crate::{
    ClearEscalation, CloudEvent, CommandReport, FaultEvent, HealthSample, Heartbeat, NodeCommand, RemediationEvent,
};

/// One topic of the contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Topic {
    /// Its name; for a per-cluster topic, the name with `<cluster>` in it.
    pub name: &'static str,
    /// One topic per cluster (`<cluster>` in the name).
    pub per_cluster: bool,
    /// The record key.
    pub key: &'static str,
    /// The records' CloudEvents types (`ce_type` header); the body is their JSON.
    pub types: &'static [&'static str],
    /// Who writes it (the principals to grant Write on it, and nobody else).
    pub writers: &'static str,
    /// Who reads it.
    pub readers: &'static str,
    /// Partitions it is created with, unless configured otherwise.
    pub partitions: i32,
    /// What it is for.
    pub purpose: &'static str,
}

impl Topic {
    /// The topic's name for a cluster (per-cluster topics), or its name.
    pub fn name_for(&self, cluster: &str) -> String {
        self.name.replace("<cluster>", cluster)
    }
}

/// Every topic, fleet-wide ones first.
pub const TOPICS: &[Topic] = &[
    Topic {
        name: crate::HEARTBEAT_TOPIC,
        per_cluster: false,
        key: "<cluster>/<node>",
        types: &[Heartbeat::TYPE],
        writers: "agent",
        readers: "detector",
        partitions: 6,
        purpose: "each agent's heartbeat (every 10 s by default): a silent agent is a fault",
    },
    Topic {
        name: crate::REMEDIATION_TOPIC,
        per_cluster: false,
        key: "<cluster>/<node>",
        types: &[RemediationEvent::TYPE],
        writers: "remediator",
        readers: "event-center, detector (node conditions), platform services",
        partitions: 3,
        purpose: "every workflow step with its reason, published from the remediator's outbox",
    },
    Topic {
        name: crate::HEALTH_TOPIC,
        per_cluster: false,
        key: "<cluster>",
        types: &[HealthSample::TYPE],
        writers: "detector",
        readers: "gate, event-center",
        partitions: 3,
        purpose: "each cluster's health sample: node readiness, pod start success, nodes out of service",
    },
    Topic {
        name: crate::CHANGES_TOPIC,
        per_cluster: false,
        key: "<cluster> or global",
        types: &[crate::Change::TYPE, crate::Halt::TYPE],
        writers: "gate",
        readers: "event-center, change systems",
        partitions: 3,
        purpose: "changes and halts, each time their state changes",
    },
    Topic {
        name: crate::NODE_COMMAND_TOPIC,
        per_cluster: false,
        key: "<cluster>/<node>",
        types: &[NodeCommand::TYPE],
        writers: "remediator",
        readers: "agent (its nodes' partitions only)",
        partitions: 8,
        purpose: "repair commands to the nodes' actuators (reboot, restart a component, report)",
    },
    Topic {
        name: crate::NODE_REPORT_TOPIC,
        per_cluster: false,
        key: "<cluster>/<node>",
        types: &[CommandReport::TYPE],
        writers: "agent",
        readers: "remediator",
        partitions: 3,
        purpose: "the actuators' answers to commands",
    },
    Topic {
        name: crate::REMEDIATION_CONTROL_TOPIC,
        per_cluster: false,
        key: "<cluster>/<node>",
        types: &[ClearEscalation::TYPE],
        writers: "event-center",
        readers: "remediator",
        partitions: 3,
        purpose: "operators' instructions to the remediators (clear an escalation)",
    },
    Topic {
        name: "firebreak.faults.v1.<cluster>",
        per_cluster: true,
        key: "<cluster>/<node>",
        types: &[FaultEvent::TYPE],
        writers: "agent and detector of <cluster>",
        readers: "remediator and detector of <cluster>, event-center",
        partitions: 3,
        purpose: "the cluster's faults; the remediator acts only on faults from the sources its policy trusts",
    },
];

/// The topics to create for a fleet of `clusters` (fleet-wide ones, then each cluster's), with
/// their partitions.
pub fn for_clusters<'a>(clusters: impl IntoIterator<Item = &'a str> + Clone) -> Vec<(String, i32)> {
    TOPICS
        .iter()
        .flat_map(|t| {
            let names: Vec<String> = if t.per_cluster {
                clusters.clone().into_iter().map(|c| t.name_for(c)).collect()
            } else {
                vec![t.name.to_owned()]
            };
            names.into_iter().map(|n| (n, t.partitions))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_contract_names_every_topic_once_and_the_fault_topic_as_the_code_does() {
        let names: std::collections::BTreeSet<_> = TOPICS.iter().map(|t| t.name).collect();
        assert_eq!(names.len(), TOPICS.len());
        assert_eq!(for_clusters(["c1"]).last().map(|(n, _)| n.clone()), Some(crate::fault_topic("c1")));
        let fleet = for_clusters(["c1", "c2"]);
        assert_eq!(fleet.len(), TOPICS.len() + 1);
        assert!(fleet.iter().all(|(_, p)| *p > 0));
    }
}
