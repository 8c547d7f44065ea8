//! Node conditions for Firebreak's fault classes, written on the Node as node-problem-detector
//! writes its own, so `kubectl describe node` and anything that reads node conditions shows
//! them: `FirebreakHardwareProblem`, `FirebreakSystemProblem` and `FirebreakComponentProblem`.
//!
//! The detector is their only writer (the agent stays without a Kubernetes client). It reads the
//! cluster's fault topic and the remediation topic in a consumer group of its own, committing
//! each offset only once the Node says so:
//! - a fault (warning or critical) sets its class's condition `True`, reason the fault's kind,
//!   message its message, `lastTransitionTime` when it was observed;
//! - a workflow that ends `healed` sets every Firebreak condition of the node back to `False`,
//!   reason `Remediated`, with the workflow's reason;
//! - a fault observed before the condition was last cleared is old news (a replay) and changes
//!   nothing, so reading the topics again leaves the Node as it was.
//!
//! Only lasting states set a condition (an uncorrected memory error, a hung kernel, a read-only
//! filesystem, a component down, a NIC down, a mount missing, a failing disk, a plugin's
//! problem); events stay events (`NodeNotReady` — the node's own Ready says it —, flaps, silent
//! agents, kernel oopses, error counts growing, lost reports). Patches are
//! strategic merges of `status.conditions`, merged by type as the kubelet's are, through the
//! `nodes/status` subresource, so the kubelet's own conditions are never touched.

use std::time::Duration;

use chrono::{DateTime, Utc};
use firebreak_plumbing::{kafka::decode_message, retry};
use firebreak_schema::{FaultClass, FaultEvent, FaultKind, REMEDIATION_TOPIC, RemediationEvent, Severity, fault_topic};
use k8s_openapi::api::core::v1::{Node, NodeCondition};
use kube::{
    Api,
    api::{Patch, PatchParams},
};
use rdkafka::{
    Message,
    consumer::{Consumer, StreamConsumer},
};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::{Config, Metrics, Result};

/// The node condition type of a fault class.
pub const fn condition_type(class: FaultClass) -> &'static str {
    match class {
        FaultClass::Hardware => "FirebreakHardwareProblem",
        FaultClass::System => "FirebreakSystemProblem",
        FaultClass::Component => "FirebreakComponentProblem",
    }
}

/// Every condition type Firebreak writes.
const TYPES: [&str; 3] =
    [condition_type(FaultClass::Hardware), condition_type(FaultClass::System), condition_type(FaultClass::Component)];

/// The longest condition message written (the API server takes more; a describe line does not).
const MESSAGE_MAX: usize = 1024;

const PATCH_RETRY: retry::Policy = retry::Policy::forever(Duration::from_millis(200), Duration::from_secs(10));

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn transition(c: &NodeCondition) -> Option<DateTime<Utc>> {
    let t = c.last_transition_time.as_ref()?;
    DateTime::from_timestamp(t.0.as_second(), 0)
}

/// The conditions to write for one record, given the node as it is: `None` when nothing changes.
fn change(node: &Node, record: &Record) -> Option<serde_json::Value> {
    let now = rfc3339(Utc::now());
    let current: Vec<&NodeCondition> =
        node.status.as_ref().and_then(|s| s.conditions.as_ref()).map(|c| c.iter().collect()).unwrap_or_default();
    let find = |ty: &str| current.iter().find(|c| c.type_ == ty).copied();
    let conditions: Vec<serde_json::Value> = match record {
        Record::Fault(f) => {
            let ty = condition_type(f.class);
            let message: String = f.message.chars().take(MESSAGE_MAX).collect();
            match find(ty) {
                // Cleared after this fault was observed: a replay of old news.
                Some(c) if c.status == "False" && transition(c).is_some_and(|t| t > f.observed_at) => return None,
                Some(c)
                    if c.status == "True"
                        && c.reason.as_deref() == Some(f.kind.as_str())
                        && c.message.as_deref() == Some(message.as_str()) =>
                {
                    return None;
                }
                // Still a problem: a new reason or message, the transition time kept.
                Some(c) if c.status == "True" => vec![json!({"type": ty, "status": "True", "reason": f.kind.as_str(),
                    "message": message, "lastHeartbeatTime": now,
                    "lastTransitionTime": c.last_transition_time.as_ref().map(|t| t.0.to_string())})],
                _ => vec![json!({"type": ty, "status": "True", "reason": f.kind.as_str(), "message": message,
                    "lastHeartbeatTime": now, "lastTransitionTime": rfc3339(f.observed_at.min(Utc::now()))})],
            }
        }
        Record::Healed(r) => {
            let message: String = format!("healed by Firebreak workflow {}: {}", r.workflow_id, r.reason)
                .chars()
                .take(MESSAGE_MAX)
                .collect();
            TYPES
                .iter()
                .filter_map(|ty| find(ty))
                .filter(|c| c.status == "True")
                .map(|c| {
                    json!({"type": c.type_, "status": "False", "reason": "Remediated", "message": message,
                    "lastHeartbeatTime": now, "lastTransitionTime": rfc3339(r.at.min(Utc::now()))})
                })
                .collect()
        }
    };
    (!conditions.is_empty()).then(|| json!({"status": {"conditions": conditions}}))
}

/// Whether a fault of this kind is a lasting state of the node (a condition, as
/// node-problem-detector's permanent problems are) rather than an event: what happened once
/// (a kernel oops, errors growing, a lost report, a flap) or what the node says itself (Ready).
fn lasting(kind: FaultKind) -> bool {
    match kind {
        FaultKind::MemoryUncorrectable
        | FaultKind::KernelHung
        | FaultKind::ReadonlyFilesystem
        | FaultKind::KubeletDown
        | FaultKind::ComponentDown
        | FaultKind::NicDown
        | FaultKind::MountMissing
        | FaultKind::DiskFailing
        | FaultKind::PluginProblem => true,
        FaultKind::NodeNotReady
        | FaultKind::NodeFlapping
        | FaultKind::AgentSilent
        | FaultKind::KernelError
        | FaultKind::MemoryCorrectable
        | FaultKind::NicErrors
        | FaultKind::FaultsLost => false,
    }
}

/// What one record of the two topics means for the node's conditions.
enum Record {
    Fault(FaultEvent),
    Healed(RemediationEvent),
}

impl Record {
    /// What a record says, if anything for the conditions; an undecodable record is logged
    /// and skipped (the event center keeps such records).
    fn of(cluster: &str, msg: &rdkafka::message::BorrowedMessage<'_>) -> Option<Self> {
        let undecodable = |error: firebreak_schema::Error| {
            tracing::warn!(%error, topic = msg.topic(), offset = msg.offset(), "undecodable record skipped");
        };
        if msg.topic() == REMEDIATION_TOPIC {
            let r = decode_message::<RemediationEvent>(msg).map_err(undecodable).ok()?;
            return (r.cluster == cluster && r.state == "healed").then_some(Record::Healed(r));
        }
        let f = decode_message::<FaultEvent>(msg).map_err(undecodable).ok()?;
        (f.cluster == cluster && f.severity >= Severity::Warning && lasting(f.kind)).then_some(Record::Fault(f))
    }

    fn node(&self) -> &str {
        match self {
            Record::Fault(f) => &f.node,
            Record::Healed(r) => &r.node,
        }
    }
}

/// Writes the conditions until cancelled (see the module documentation).
pub(crate) async fn run(cfg: Config, nodes: Api<Node>, metrics: Metrics, cancel: CancellationToken) -> Result<()> {
    let consumer: StreamConsumer = cfg
        .kafka
        .consumer(&format!("firebreak-detector-conditions-{}", cfg.cluster))
        .create()
        .map_err(firebreak_plumbing::Error::from)?;
    consumer.subscribe(&[&fault_topic(&cfg.cluster), REMEDIATION_TOPIC]).map_err(firebreak_plumbing::Error::from)?;
    let params = PatchParams::default();
    loop {
        let msg = tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            msg = consumer.recv() => msg,
        };
        let msg = match msg {
            Ok(m) => m,
            Err(error) => {
                tracing::warn!(%error, "fault and remediation topics: receive failed");
                continue;
            }
        };
        if let Some(record) = Record::of(&cfg.cluster, &msg) {
            let node = record.node().to_owned();
            let what = format!("node conditions of {node}");
            let done = PATCH_RETRY
                .until_ok(&what, &cancel, || async {
                    let Some(current) = nodes.get_opt(&node).await? else { return Ok::<_, kube::Error>(None) };
                    let Some(patch) = change(&current, &record) else { return Ok(Some(false)) };
                    nodes.patch_status(&node, &params, &Patch::Strategic(patch)).await?;
                    Ok(Some(true))
                })
                .await;
            match done {
                None => return Ok(()),
                Some(None) => tracing::debug!(%node, "no such node: its conditions are not written"),
                Some(Some(true)) => {
                    metrics.condition_written(&cfg.cluster);
                    tracing::info!(%node, "node conditions written");
                }
                Some(Some(false)) => {}
            }
        }
        let _ = consumer.store_offset_from_message(&msg);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn fault(kind: FaultKind, at: DateTime<Utc>, message: &str) -> Record {
        Record::Fault(FaultEvent {
            id: uuid::Uuid::now_v7(),
            cluster: "c1".into(),
            node: "n1".into(),
            class: kind.class(),
            kind,
            severity: Severity::Critical,
            source: firebreak_schema::Source::Agent,
            observed_at: at,
            message: message.into(),
            evidence: Default::default(),
        })
    }

    fn node(conditions: Vec<NodeCondition>) -> Node {
        Node {
            status: Some(k8s_openapi::api::core::v1::NodeStatus { conditions: Some(conditions), ..Default::default() }),
            ..Default::default()
        }
    }

    fn cond(ty: &str, status: &str, reason: &str, message: &str, at: DateTime<Utc>) -> NodeCondition {
        NodeCondition {
            type_: ty.into(),
            status: status.into(),
            reason: Some(reason.into()),
            message: Some(message.into()),
            last_transition_time: Some(Time(k8s_openapi::jiff::Timestamp::from_second(at.timestamp()).unwrap())),
            ..Default::default()
        }
    }

    #[test]
    fn a_fault_sets_its_class_condition_and_a_replay_after_healing_does_not() {
        let t0 = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        let ue = fault(FaultKind::MemoryUncorrectable, t0, "EDAC MC0: 1 UE");
        let patch = change(&node(vec![]), &ue).unwrap();
        let c = &patch["status"]["conditions"][0];
        assert_eq!(
            (c["type"].as_str(), c["status"].as_str(), c["reason"].as_str()),
            (Some("FirebreakHardwareProblem"), Some("True"), Some("MemoryUncorrectable"))
        );
        assert_eq!(c["lastTransitionTime"], "2023-11-14T22:13:20Z");
        // The same again: nothing to write.
        let set = node(vec![cond("FirebreakHardwareProblem", "True", "MemoryUncorrectable", "EDAC MC0: 1 UE", t0)]);
        assert!(change(&set, &ue).is_none());
        // Healed: False, with the workflow's reason; the kubelet's Ready untouched.
        let healed = Record::Healed(RemediationEvent {
            id: uuid::Uuid::now_v7(),
            workflow_id: uuid::Uuid::now_v7(),
            cluster: "c1".into(),
            node: "n1".into(),
            trigger_event_id: uuid::Uuid::now_v7(),
            state: "healed".into(),
            reason: "Ready after reboot".into(),
            at: t0 + chrono::TimeDelta::seconds(60),
        });
        let mut both = set.clone();
        both.status.as_mut().unwrap().conditions.as_mut().unwrap().push(cond("Ready", "True", "KubeletReady", "", t0));
        let patch = change(&both, &healed).unwrap();
        let list = patch["status"]["conditions"].as_array().unwrap();
        assert_eq!(list.len(), 1, "{list:?}");
        assert_eq!((list[0]["status"].as_str(), list[0]["reason"].as_str()), (Some("False"), Some("Remediated")));
        assert!(list[0]["message"].as_str().unwrap().contains("Ready after reboot"));
        // The fault read again after the healing is a replay; a later one is a new problem.
        let cleared = node(vec![cond(
            "FirebreakHardwareProblem",
            "False",
            "Remediated",
            "",
            t0 + chrono::TimeDelta::seconds(60),
        )]);
        assert!(change(&cleared, &ue).is_none());
        let again = fault(FaultKind::MemoryUncorrectable, t0 + chrono::TimeDelta::seconds(120), "EDAC MC0: 2 UE");
        assert_eq!(change(&cleared, &again).unwrap()["status"]["conditions"][0]["status"], "True");
        // Events are no conditions: a silent agent heard again would leave one standing.
        assert!(
            !lasting(FaultKind::AgentSilent) && !lasting(FaultKind::NodeNotReady) && lasting(FaultKind::KubeletDown)
        );
    }
}
