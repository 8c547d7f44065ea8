//! The node command channel: what the remediator asks a node's own actuator (the agent) to do,
//! and what the actuator reports back.
//!
//! Commands travel on [`crate::NODE_COMMAND_TOPIC`], each in the partition
//! [`command_partition`] computes from its key, so that a node's agent reads one partition (of
//! a few dozen nodes' commands) instead of the fleet's. Reports travel on
//! [`crate::report_topic`] (its cluster's), keyed like every node event.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{CloudEvent, Error, Result, event::validate_names};

/// What a node is asked to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum NodeAction {
    /// Reboot the machine.
    Reboot,
    /// Restart one node component (a systemd unit such as `kubelet`).
    Restart {
        /// The component.
        component: String,
    },
    /// Do nothing; report `done` from the boot the node runs: how the remediator learns that a
    /// reinstalled node's agent runs again.
    Report,
}

impl std::fmt::Display for NodeAction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NodeAction::Reboot => f.write_str("reboot"),
            NodeAction::Restart { component } => write!(f, "restart {component}"),
            NodeAction::Report => f.write_str("report"),
        }
    }
}

/// A request to one node's actuator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeCommand {
    /// Derived from the workflow and the action, so a command sent again is the same command.
    pub id: Uuid,
    /// Cluster name.
    pub cluster: String,
    /// Node name.
    pub node: String,
    /// The workflow that asks.
    pub workflow_id: Uuid,
    /// What to do.
    pub action: NodeAction,
    /// The node's boot id when it was asked. A reboot is carried out only on that boot: on any
    /// other, it has happened, and the actuator reports it done instead of rebooting again.
    pub boot_id: String,
    /// When it was asked.
    pub requested_at: DateTime<Utc>,
    /// After this the command is refused, not carried out: the workflow has given up on it.
    pub not_after: DateTime<Utc>,
}

impl CloudEvent for NodeCommand {
    const TYPE: &'static str = "io.firebreak.node-command.v1";
    fn ce_id(&self) -> String {
        self.id.to_string()
    }
    fn ce_source(&self) -> String {
        format!("/firebreak/remediator/{}", self.cluster)
    }
    fn ce_time(&self) -> DateTime<Utc> {
        self.requested_at
    }
    fn key(&self) -> String {
        format!("{}/{}", self.cluster, self.node)
    }
    fn validate(&self) -> Result<()> {
        validate_names(&self.cluster, &self.node)?;
        if let NodeAction::Restart { component } = &self.action
            && !crate::names::is_dns1123_subdomain(component)
        {
            return Err(Error::Invalid(format!("component `{component}` is not a DNS-1123 name")));
        }
        Ok(())
    }
}

/// How a command went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CommandOutcome {
    /// Taken: the actuator is about to act (sent before it acts).
    Accepted,
    /// Done: for a reboot, the node runs a new boot (`boot_id`); for a restart, the command
    /// succeeded.
    Done,
    /// Tried and failed (the command's exit status or timeout is in `detail`).
    Failed,
    /// Not carried out: expired, not allowed on this node, or not understood.
    Refused,
}

impl CommandOutcome {
    /// The name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            CommandOutcome::Accepted => "accepted",
            CommandOutcome::Done => "done",
            CommandOutcome::Failed => "failed",
            CommandOutcome::Refused => "refused",
        }
    }
}

/// An actuator's report on a command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandReport {
    /// The command.
    pub command_id: Uuid,
    /// Cluster name.
    pub cluster: String,
    /// Node name.
    pub node: String,
    /// The workflow that asked.
    pub workflow_id: Uuid,
    /// What was asked.
    pub action: NodeAction,
    /// How it went.
    pub outcome: CommandOutcome,
    /// The node's boot id when reporting.
    pub boot_id: String,
    /// What happened, in words (exit status, output, why refused).
    pub detail: String,
    /// When.
    pub at: DateTime<Utc>,
}

impl CloudEvent for CommandReport {
    const TYPE: &'static str = "io.firebreak.command-report.v1";
    fn ce_id(&self) -> String {
        format!("{}/{}/{}", self.command_id, self.outcome.as_str(), self.boot_id)
    }
    fn ce_source(&self) -> String {
        format!("/firebreak/agent/{}/{}", self.cluster, self.node)
    }
    fn ce_time(&self) -> DateTime<Utc> {
        self.at
    }
    fn key(&self) -> String {
        format!("{}/{}", self.cluster, self.node)
    }
    fn validate(&self) -> Result<()> {
        validate_names(&self.cluster, &self.node)
    }
}

/// The partition of the command topic that carries a node's commands: FNV-1a of the key
/// (`<cluster>/<node>`) modulo the topic's partitions. The remediator writes to it and the
/// node's agent reads only it, whatever partitioner a Kafka client would choose.
pub fn command_partition(key: &str, partitions: i32) -> i32 {
    let hash = key.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
    let n = u64::try_from(partitions.max(1)).unwrap_or(1);
    i32::try_from(hash % n).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{decode, encode};

    #[test]
    fn a_command_round_trips_and_a_bad_component_is_refused_at_decoding() {
        let now = Utc::now();
        let mut cmd = NodeCommand {
            id: Uuid::now_v7(),
            cluster: "c1".into(),
            node: "n1".into(),
            workflow_id: Uuid::now_v7(),
            action: NodeAction::Restart { component: "kubelet".into() },
            boot_id: "b1".into(),
            requested_at: now,
            not_after: now,
        };
        let wire = encode(&cmd).unwrap();
        assert_eq!(wire.key, "c1/n1");
        let back: NodeCommand =
            decode(wire.headers.iter().map(|(k, v)| (k.as_str(), Some(v.as_bytes()))), Some(&wire.payload)).unwrap();
        assert_eq!(back, cmd);
        assert!(
            String::from_utf8_lossy(&wire.payload).contains(r#""action":{"type":"restart","component":"kubelet"}"#)
        );
        cmd.action = NodeAction::Restart { component: "kubelet; rm -rf /".into() };
        let wire = encode(&cmd).unwrap();
        let bad = decode::<NodeCommand>(
            wire.headers.iter().map(|(k, v)| (k.as_str(), Some(v.as_bytes()))),
            Some(&wire.payload),
        );
        assert!(matches!(bad, Err(Error::Invalid(m)) if m.contains("DNS-1123")));
    }

    #[test]
    fn a_node_always_maps_to_one_partition_and_nodes_spread() {
        assert_eq!(command_partition("c1/n1", 8), command_partition("c1/n1", 8));
        assert_eq!(command_partition("anything", 1), 0);
        assert_eq!(command_partition("anything", 0), 0, "no partitions is one, not a division by zero");
        let mut counts = [0; 8];
        for i in 0..800 {
            let p = command_partition(&format!("c1/c1-node-{i:03}"), 8);
            counts[usize::try_from(p).unwrap()] += 1;
        }
        assert!(counts.iter().all(|c| (60..=140).contains(c)), "{counts:?}");
    }
}
