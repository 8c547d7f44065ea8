use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::{Error, Result, wire::CloudEvent};

/// Which layer of the machine failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FaultClass {
    /// CPU, memory, disks, NICs.
    Hardware,
    /// Kernel and operating system.
    System,
    /// Node components: kubelet, container runtime, the agent itself.
    Component,
}

/// What failed. Each kind has a default class and severity. Ordered as declared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum FaultKind {
    /// EDAC reported an uncorrectable memory error.
    MemoryUncorrectable,
    /// The kernel reported a task blocked for too long.
    KernelHung,
    /// A filesystem hit an error and was remounted read-only.
    ReadonlyFilesystem,
    /// The kubelet stopped working.
    KubeletDown,
    /// The node's Ready condition went False or Unknown.
    NodeNotReady,
    /// The node's agent stopped sending heartbeats.
    AgentSilent,
    /// The node's Ready condition left True and came back, again and again, each time sooner
    /// than a NotReady counts as a fault.
    NodeFlapping,
    /// The kernel logged an error a rule names that no other kind covers (an oops, an I/O or
    /// filesystem error: node-problem-detector's rules); recorded, not repaired by default.
    KernelError,
    /// EDAC's corrected memory error counters grew fast: a DIMM on its way out.
    MemoryCorrectable,
    /// A physical network interface lost its link.
    NicDown,
    /// A filesystem the node needs is not mounted.
    MountMissing,
    /// A custom plugin (node-problem-detector's contract: exit 1) reported a problem.
    PluginProblem,
    /// The agent knows it lost fault reports: the kernel overwrote log records before they were
    /// read, or its full spool dropped faults to make room. The evidence says how many.
    FaultsLost,
    /// A physical NIC's error counters (received and sent errors) grew by the agent's threshold
    /// between two checks.
    NicErrors,
    /// A disk's SMART health self-assessment (`smartctl -H`) says it is failing.
    DiskFailing,
    /// A node component other than the kubelet (the container runtime, or another the agent
    /// is told to watch) does not answer its health check; the evidence's `check` names it.
    ComponentDown,
}

impl FaultKind {
    /// Every kind, in a stable order.
    pub const ALL: [FaultKind; 16] = [
        FaultKind::MemoryUncorrectable,
        FaultKind::KernelHung,
        FaultKind::ReadonlyFilesystem,
        FaultKind::KubeletDown,
        FaultKind::NodeNotReady,
        FaultKind::AgentSilent,
        FaultKind::NodeFlapping,
        FaultKind::KernelError,
        FaultKind::MemoryCorrectable,
        FaultKind::NicDown,
        FaultKind::MountMissing,
        FaultKind::PluginProblem,
        FaultKind::FaultsLost,
        FaultKind::NicErrors,
        FaultKind::DiskFailing,
        FaultKind::ComponentDown,
    ];

    /// The name used on the wire and in APIs.
    pub fn as_str(self) -> &'static str {
        match self {
            FaultKind::MemoryUncorrectable => "MemoryUncorrectable",
            FaultKind::KernelHung => "KernelHung",
            FaultKind::ReadonlyFilesystem => "ReadonlyFilesystem",
            FaultKind::KubeletDown => "KubeletDown",
            FaultKind::NodeNotReady => "NodeNotReady",
            FaultKind::AgentSilent => "AgentSilent",
            FaultKind::NodeFlapping => "NodeFlapping",
            FaultKind::KernelError => "KernelError",
            FaultKind::MemoryCorrectable => "MemoryCorrectable",
            FaultKind::NicDown => "NicDown",
            FaultKind::MountMissing => "MountMissing",
            FaultKind::PluginProblem => "PluginProblem",
            FaultKind::FaultsLost => "FaultsLost",
            FaultKind::NicErrors => "NicErrors",
            FaultKind::DiskFailing => "DiskFailing",
            FaultKind::ComponentDown => "ComponentDown",
        }
    }

    /// The class a fault of this kind belongs to.
    pub fn class(self) -> FaultClass {
        match self {
            FaultKind::MemoryUncorrectable
            | FaultKind::MemoryCorrectable
            | FaultKind::NicDown
            | FaultKind::NicErrors
            | FaultKind::DiskFailing => FaultClass::Hardware,
            FaultKind::MountMissing => FaultClass::System,
            FaultKind::KernelHung
            | FaultKind::ReadonlyFilesystem
            | FaultKind::NodeNotReady
            | FaultKind::NodeFlapping
            | FaultKind::KernelError => FaultClass::System,
            FaultKind::KubeletDown
            | FaultKind::ComponentDown
            | FaultKind::AgentSilent
            | FaultKind::PluginProblem
            | FaultKind::FaultsLost => FaultClass::Component,
        }
    }
}

impl std::fmt::Display for FaultKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for FaultKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        FaultKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| Error::Invalid(format!("unknown fault kind `{s}`")))
    }
}

/// How urgent a fault is. The remediation policy says which severities it acts on (by default
/// critical faults, and repeated hung-task warnings).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Worth recording.
    Info,
    /// Degraded, not yet harmful.
    Warning,
    /// The node cannot be trusted with workloads.
    Critical,
}

/// Who observed the fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// The per-node agent.
    Agent,
    /// The cluster-level detector.
    Detector,
}

macro_rules! str_enum {
    ($t:ty { $($v:ident => $s:literal),+ }) => {
        impl $t {
            /// The name used on the wire and in APIs.
            pub fn as_str(self) -> &'static str { match self { $(Self::$v => $s),+ } }
        }
        impl std::fmt::Display for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result { f.write_str(self.as_str()) }
        }
        impl std::str::FromStr for $t {
            type Err = Error;
            fn from_str(s: &str) -> Result<Self> {
                match s { $($s => Ok(Self::$v),)+ _ => Err(Error::Invalid(format!("unknown {} `{s}`", stringify!($t)))) }
            }
        }
    };
}
pub(crate) use str_enum;
str_enum!(FaultClass { Hardware => "hardware", System => "system", Component => "component" });
str_enum!(Severity { Info => "info", Warning => "warning", Critical => "critical" });
str_enum!(Source { Agent => "agent", Detector => "detector" });

/// One observed fault on one node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FaultEvent {
    /// UUIDv7; derived deterministically from what was observed, so a re-read log line or a
    /// re-observed transition yields the same id and is deduplicated downstream.
    pub id: Uuid,
    /// Cluster name.
    pub cluster: String,
    /// Node name.
    pub node: String,
    /// Layer that failed.
    pub class: FaultClass,
    /// What failed.
    pub kind: FaultKind,
    /// How urgent.
    pub severity: Severity,
    /// Who observed it.
    pub source: Source,
    /// When it was observed.
    pub observed_at: DateTime<Utc>,
    /// Human-readable description (the matched log line, the condition message, ...).
    pub message: String,
    /// Raw facts behind the observation (log sequence number, rule, condition reason, ...).
    #[serde(default)]
    pub evidence: BTreeMap<String, String>,
}

impl FaultEvent {
    /// Checks the invariants decoding relies on.
    pub fn validate(&self) -> Result<()> {
        validate_names(&self.cluster, &self.node)?;
        if self.id.get_version_num() != 7 {
            return Err(Error::Invalid(format!("event id {} is not a UUIDv7", self.id)));
        }
        Ok(())
    }
}

impl CloudEvent for FaultEvent {
    const TYPE: &'static str = "io.firebreak.fault.v1";
    fn ce_id(&self) -> String {
        self.id.to_string()
    }
    fn ce_source(&self) -> String {
        format!("/firebreak/{}/{}/{}", self.source, self.cluster, self.node)
    }
    fn ce_time(&self) -> DateTime<Utc> {
        self.observed_at
    }
    fn key(&self) -> String {
        format!("{}/{}", self.cluster, self.node)
    }
    fn validate(&self) -> Result<()> {
        FaultEvent::validate(self)
    }
}

/// An agent's periodic sign of life.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// Cluster name.
    pub cluster: String,
    /// Node name.
    pub node: String,
    /// Agent version.
    pub agent_version: String,
    /// Monotonic per agent process.
    pub seq: u64,
    /// When it was sent.
    pub sent_at: DateTime<Utc>,
}

impl CloudEvent for Heartbeat {
    const TYPE: &'static str = "io.firebreak.heartbeat.v1";
    fn ce_id(&self) -> String {
        format!("{}/{}/{}/{}", self.cluster, self.node, self.sent_at.timestamp(), self.seq)
    }
    fn ce_source(&self) -> String {
        format!("/firebreak/agent/{}/{}", self.cluster, self.node)
    }
    fn ce_time(&self) -> DateTime<Utc> {
        self.sent_at
    }
    fn key(&self) -> String {
        format!("{}/{}", self.cluster, self.node)
    }
    fn validate(&self) -> Result<()> {
        validate_names(&self.cluster, &self.node)
    }
}

/// A fault event as stored and served by the event center.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventRecord {
    /// The event as it was published.
    #[serde(flatten)]
    pub event: FaultEvent,
    /// When the event center stored it.
    pub received_at: DateTime<Utc>,
    /// How far past `received_at` the event says it was observed, when that is more than the
    /// event center tolerates (its source's clock is wrong): its time is not trusted, and it is
    /// ordered by `received_at` instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clock_skew_s: Option<i64>,
}

pub(crate) fn validate_names(cluster: &str, node: &str) -> Result<()> {
    for (what, v) in [("cluster", cluster), ("node", node)] {
        if v.is_empty() || v.len() > 253 || v.contains('/') || v.chars().any(char::is_control) {
            return Err(Error::Invalid(format!(
                "{what} name `{}` is empty, too long, or holds '/' or a control character",
                v.escape_debug()
            )));
        }
    }
    Ok(())
}

/// A UUIDv7 whose timestamp is `at` and whose remaining bits are a hash of `parts`: the same
/// observation always gets the same id, so re-publishing it is harmless.
pub fn deterministic_id(at: DateTime<Utc>, parts: &[&str]) -> Uuid {
    let mut hasher = Sha256::new();
    for p in parts {
        hasher.update((p.len() as u64).to_le_bytes());
        hasher.update(p.as_bytes());
    }
    let digest = hasher.finalize();
    let mut bytes = [0u8; 10];
    bytes.copy_from_slice(&digest[..10]);
    let millis = u64::try_from(at.timestamp_millis()).unwrap_or(0);
    uuid::Builder::from_unix_timestamp_millis(millis, &bytes).into_uuid()
}

/// One step of a remediation workflow, published by the remediator so that the event center
/// and platform services can follow (and explain) what was done to a node and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RemediationEvent {
    /// UUIDv7 of this step record (deterministic per workflow and step).
    pub id: Uuid,
    /// The workflow.
    pub workflow_id: Uuid,
    /// Cluster name.
    pub cluster: String,
    /// Node name.
    pub node: String,
    /// The fault that started the workflow.
    pub trigger_event_id: Uuid,
    /// The workflow's state after this step (`permit_wait`, `cordoned`, `healed`, ...).
    pub state: String,
    /// Why, with the measured values.
    pub reason: String,
    /// When the step happened.
    pub at: DateTime<Utc>,
}

impl CloudEvent for RemediationEvent {
    const TYPE: &'static str = "io.firebreak.remediation.v1";
    fn ce_id(&self) -> String {
        self.id.to_string()
    }
    fn ce_source(&self) -> String {
        format!("/firebreak/remediator/{}/{}", self.cluster, self.node)
    }
    fn ce_time(&self) -> DateTime<Utc> {
        self.at
    }
    fn key(&self) -> String {
        format!("{}/{}", self.cluster, self.node)
    }
    fn validate(&self) -> Result<()> {
        validate_names(&self.cluster, &self.node)?;
        if self.state.is_empty() {
            return Err(Error::Invalid("remediation state is empty".into()));
        }
        Ok(())
    }
}
