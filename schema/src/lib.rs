//! Firebreak's shared vocabulary: the fault and heartbeat events that travel over Kafka, their
//! wire format (JSON body plus CloudEvents binary-mode headers), the topic names, and the request
//! and response types of the gate and event-center HTTP APIs.
//!
//! This crate depends on no other Firebreak crate and on no transport: it turns events into
//! [`WireMessage`]s (key, headers, payload) and back. How those travel (Kafka clients, retries,
//! databases) lives in `firebreak-plumbing`. Times are `chrono::DateTime<Utc>`, RFC 3339 on the
//! wire. Decoding never panics; bad input is a typed [`Error`].

mod change;
mod command;
mod control;
mod event;
mod gate;
mod health;
mod incident;
pub mod names;
pub mod topics;
mod wire;

pub use change::{
    BatchAnswer, BatchRecord, BatchSize, Change, ChangeRequest, ChangeState, Decision, Measurement, Phase, Verdict,
};
pub use command::{CommandOutcome, CommandReport, NodeAction, NodeCommand, command_partition};
pub use control::ClearEscalation;
pub use event::{
    EventRecord, FaultClass, FaultEvent, FaultKind, Heartbeat, RemediationEvent, Severity, Source, deterministic_id,
};
pub use gate::{
    BreakerTrip, Halt, HaltRequest, Operation, Permit, PermitRequest, PermitResponse, PermitState, Role, Scope,
};
pub use health::{Domain, HealthSample, PodStarts, Signal, Topology, UnhealthyNode};
pub use incident::{Correlation, Incident, IncidentState, Occurrence, fingerprint};
pub use wire::{CloudEvent, SPEC_VERSION, WireMessage, decode, encode};

/// Prefix of the fault topics: each cluster's [`FaultEvent`]s, from its agents and its detector,
/// travel on their own topic, [`fault_topic`], so that a cluster's remediator reads only them
/// (and Kafka ACLs can be granted per cluster).
pub const FAULT_TOPIC_PREFIX: &str = "firebreak.faults.v1.";
/// Every cluster's fault topic, as a regex subscription (librdkafka's `^` prefix).
pub const FAULT_TOPIC_PATTERN: &str = r"^firebreak\.faults\.v1\..+";

/// The topic of one cluster's faults: `firebreak.faults.v1.<cluster>`.
pub fn fault_topic(cluster: &str) -> String {
    format!("{FAULT_TOPIC_PREFIX}{cluster}")
}
/// The prefix of every cluster's heartbeat topic.
pub const HEARTBEAT_TOPIC_PREFIX: &str = "firebreak.heartbeats.v1.";

/// The topic of one cluster's agent [`Heartbeat`]s: `firebreak.heartbeats.v1.<cluster>`. One
/// per cluster, so each cluster's detector reads its own nodes' heartbeats and no others'.
pub fn heartbeat_topic(cluster: &str) -> String {
    format!("{HEARTBEAT_TOPIC_PREFIX}{cluster}")
}
/// Topic carrying the remediator's workflow steps ([`RemediationEvent`]s).
pub const REMEDIATION_TOPIC: &str = "firebreak.remediations.v1";
/// Topic carrying cluster health: [`HealthSample`]s from the detectors (key = cluster).
pub const HEALTH_TOPIC: &str = "firebreak.health.v1";
/// Topic carrying the gate's changes ([`Change`], key = cluster) and halts ([`Halt`], key =
/// cluster or `global`), each time their state changes.
pub const CHANGES_TOPIC: &str = "firebreak.changes.v1";

/// Topic carrying [`NodeCommand`]s from the remediators to the nodes' actuators (the agents),
/// each in the partition [`command_partition`] gives its node.
pub const NODE_COMMAND_TOPIC: &str = "firebreak.node-commands.v1";
/// The topic of one cluster's actuator [`CommandReport`]s (key = `<cluster>/<node>`):
/// `firebreak.node-reports.v1.<cluster>`, read by that cluster's remediator alone.
pub fn report_topic(cluster: &str) -> String {
    format!("firebreak.node-reports.v1.{cluster}")
}
/// The topic of operators' instructions to one cluster's remediator ([`ClearEscalation`], key =
/// `<cluster>/<node>`), from the event center's API: `firebreak.remediation-control.v1.<cluster>`.
pub fn control_topic(cluster: &str) -> String {
    format!("firebreak.remediation-control.v1.{cluster}")
}

/// Compacted topic of every incident's current state ([`Incident`], key = its id), from the
/// event center: a platform service reads it from the start to know what is open.
pub const INCIDENTS_TOPIC: &str = "firebreak.incidents.v1";
/// Append-only topic of every fault as an occurrence of its incident ([`Occurrence`], key =
/// `<cluster>/<node>`), from the event center.
pub const OCCURRENCES_TOPIC: &str = "firebreak.occurrences.v1";
/// Dead letters: each record the event center could not decode, copied as it came, with the
/// reason in the header [`DEAD_LETTER_REASON_HEADER`] and its origin in `firebreak_topic`,
/// `firebreak_partition` and `firebreak_offset`.
pub const DEAD_LETTER_TOPIC: &str = "firebreak.dead-letter.v1";
/// The header of a dead letter that says why it could not be decoded.
pub const DEAD_LETTER_REASON_HEADER: &str = "firebreak_error";

/// Taint key the remediator puts on a node it has taken out of service.
pub const UNHEALTHY_TAINT_KEY: &str = "firebreak.io/unhealthy";
/// Label put on every pod of a node under remediation.
pub const TO_BE_MIGRATED_LABEL: &str = "firebreak.io/to-be-migrated";
/// Pod annotation: `manual` means its owner moves it; Firebreak labels it and waits, and never
/// evicts it.
pub const MIGRATION_ANNOTATION: &str = "firebreak.io/migration";
/// Node annotation of a node whose workflow escalated to a human (value: the workflow id). No
/// fault starts new work on the node while it is there; an operator removes it to clear.
pub const ESCALATED_ANNOTATION: &str = "firebreak.io/escalated";
/// Label of a ConfigMap that is a readiness gate: its value names the gate.
pub const READINESS_GATE_LABEL: &str = "firebreak.io/readiness-gate";
/// Label of an object about one node: the node a readiness-gate ConfigMap speaks for, the node
/// a reinstall Job re-images.
pub const NODE_LABEL: &str = "firebreak.io/node";
/// Label of an object a workflow made (a reinstall Job): the workflow's id.
pub const WORKFLOW_LABEL: &str = "firebreak.io/workflow";

/// Everything that can go wrong turning bytes into events.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The Kafka record had no value.
    #[error("message has no payload")]
    MissingPayload,
    /// A required CloudEvents header is absent.
    #[error("missing header `{0}`")]
    MissingHeader(&'static str),
    /// A header value is not UTF-8.
    #[error("header `{0}` is not valid UTF-8")]
    HeaderEncoding(String),
    /// The `ce_specversion` header is not one we speak.
    #[error("unsupported CloudEvents spec version `{0}`")]
    SpecVersion(String),
    /// The `ce_type` header names another event type.
    #[error("event type `{found}` where `{expected}` was expected")]
    WrongType {
        /// The type this decoder handles.
        expected: &'static str,
        /// The type the message carried.
        found: String,
    },
    /// The payload is not the JSON of the expected event.
    #[error("invalid JSON payload: {0}")]
    Json(#[from] serde_json::Error),
    /// The payload parsed but violates an invariant (empty cluster, mismatched id, ...).
    #[error("invalid event: {0}")]
    Invalid(String),
}

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    #[test]
    fn each_cluster_has_a_fault_topic_the_pattern_matches() {
        assert_eq!(super::fault_topic("c1"), "firebreak.faults.v1.c1");
        assert!(super::fault_topic("eu-west.prod").starts_with(super::FAULT_TOPIC_PREFIX));
    }
}
