//! The topic contract: every Kafka topic Firebreak uses, what it carries, who writes and who
//! reads it, and how it is created when missing. `firebreak topics` prints it; services create
//! the topics they need at start-up from it.

use crate::{
    ClearEscalation, CloudEvent, CommandReport, Correlation, FaultEvent, HealthSample, Heartbeat, Incident,
    NodeCommand, Occurrence, RemediationEvent, Topology,
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
    /// Created compacted (`cleanup.policy=compact`): a current-state topic, the latest record
    /// per key kept.
    pub compacted: bool,
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
        name: crate::REMEDIATION_TOPIC,
        per_cluster: false,
        key: "<cluster>/<node>",
        types: &[RemediationEvent::TYPE],
        writers: "remediator",
        readers: "event-center, detector (node conditions), platform services",
        compacted: false,
        partitions: 3,
        purpose: "every workflow step with its reason, published from the remediator's outbox",
    },
    Topic {
        name: crate::HEALTH_TOPIC,
        per_cluster: false,
        key: "<cluster>",
        types: &[HealthSample::TYPE, Topology::TYPE, Correlation::TYPE],
        writers: "detector (samples, topology), event-center (correlations)",
        readers: "gate, event-center",
        compacted: false,
        partitions: 3,
        purpose: "each cluster's health sample (node readiness, pod start success, nodes out of service), which \
                  nodes are in which failure domain, and correlated incidents (many nodes of a cluster or of \
                  one domain reporting the same kind at once)",
    },
    Topic {
        name: crate::CHANGES_TOPIC,
        per_cluster: false,
        key: "<cluster> or global",
        types: &[crate::Change::TYPE, crate::Halt::TYPE, crate::Decision::TYPE],
        writers: "gate",
        readers: "event-center, change systems",
        compacted: false,
        partitions: 3,
        purpose: "changes and halts, each time their state changes, and each permit decision with its reason",
    },
    Topic {
        name: crate::NODE_COMMAND_TOPIC,
        per_cluster: false,
        key: "<cluster>/<node>",
        types: &[NodeCommand::TYPE],
        writers: "remediator",
        readers: "agent (its nodes' partitions only)",
        compacted: false,
        partitions: 8,
        purpose: "repair commands to the nodes' actuators (reboot, restart a component, report)",
    },
    Topic {
        name: crate::INCIDENTS_TOPIC,
        per_cluster: false,
        key: "<incident id>",
        types: &[Incident::TYPE],
        writers: "event-center",
        readers: "platform services",
        compacted: true,
        partitions: 3,
        purpose: "every incident's current state, each time it changes (compacted: the latest per incident)",
    },
    Topic {
        name: crate::OCCURRENCES_TOPIC,
        per_cluster: false,
        key: "<cluster>/<node>",
        types: &[Occurrence::TYPE],
        writers: "event-center",
        readers: "platform services",
        compacted: false,
        partitions: 3,
        purpose: "every fault once, as an occurrence of its incident (expected when Firebreak's own repair caused it)",
    },
    Topic {
        name: crate::DEAD_LETTER_TOPIC,
        per_cluster: false,
        key: "the record's own key",
        types: &["any: the undecodable record as it came"],
        writers: "event-center",
        readers: "operators, the producers' owners",
        compacted: false,
        partitions: 1,
        purpose: "records the event center could not decode, with the reason in the `firebreak_error` header",
    },
    Topic {
        name: "firebreak.node-reports.v1.<cluster>",
        per_cluster: true,
        key: "<cluster>/<node>",
        types: &[CommandReport::TYPE],
        writers: "agent of <cluster>",
        readers: "remediator of <cluster>",
        compacted: false,
        partitions: 3,
        purpose: "the actuators' answers to commands",
    },
    Topic {
        name: "firebreak.remediation-control.v1.<cluster>",
        per_cluster: true,
        key: "<cluster>/<node>",
        types: &[ClearEscalation::TYPE],
        writers: "event-center",
        readers: "remediator of <cluster>",
        compacted: false,
        partitions: 1,
        purpose: "operators' instructions to the cluster's remediator (clear an escalation)",
    },
    Topic {
        name: "firebreak.heartbeats.v1.<cluster>",
        per_cluster: true,
        key: "<cluster>/<node>",
        types: &[Heartbeat::TYPE],
        writers: "agent of <cluster>",
        readers: "detector of <cluster>",
        compacted: false,
        partitions: 3,
        purpose: "each agent's heartbeat (every 10 s by default): a silent agent is a fault",
    },
    Topic {
        name: "firebreak.faults.v1.<cluster>",
        per_cluster: true,
        key: "<cluster>/<node>",
        types: &[FaultEvent::TYPE],
        writers: "agent and detector of <cluster>",
        readers: "remediator and detector of <cluster>, event-center",
        compacted: false,
        partitions: 3,
        purpose: "the cluster's faults; the remediator acts only on faults from the sources its policy trusts",
    },
];

/// Whether the contract's topic of that name is compacted.
pub fn is_compacted(name: &str) -> bool {
    TOPICS.iter().any(|t| t.compacted && !t.per_cluster && t.name == name)
}

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
        let per_cluster = TOPICS.iter().filter(|t| t.per_cluster).count();
        assert_eq!(fleet.len(), TOPICS.len() + per_cluster);
        for topic in [crate::heartbeat_topic("c2"), crate::report_topic("c2"), crate::control_topic("c2")] {
            assert!(fleet.iter().any(|(n, _)| *n == topic), "{topic}");
        }
        assert!(fleet.iter().all(|(_, p)| *p > 0));
        for t in TOPICS.iter().filter(|t| t.per_cluster) {
            assert_eq!(t.name_for("c1").replace("c1", "<cluster>"), t.name, "one <cluster> in {}", t.name);
        }
    }
}
