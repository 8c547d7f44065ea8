//! Incidents: what the event center makes of faults. One incident per fingerprint (cluster,
//! node, kind) while it is not resolved; each fault of that fingerprint is an occurrence of it.
//! A correlation groups the incidents of many nodes that reported the same kind at once.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{CloudEvent, Error, FaultClass, FaultEvent, FaultKind, Result, Severity, event::str_enum};

/// Where an incident stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IncidentState {
    /// Nobody and nothing is on it yet.
    Open,
    /// An operator took it.
    Acknowledged,
    /// An operator silenced it until `silenced_until`; it opens again then.
    Silenced,
    /// A remediation workflow is working on its node.
    Remediating,
    /// The workflow gave up: it needs a human.
    Escalated,
    /// The node healed, or the fault stayed away for the configured time.
    Resolved,
}
str_enum!(IncidentState {
    Open => "open",
    Acknowledged => "acknowledged",
    Silenced => "silenced",
    Remediating => "remediating",
    Escalated => "escalated",
    Resolved => "resolved"
});

impl IncidentState {
    /// Every state, most urgent first (the board's order).
    pub const ALL: [IncidentState; 6] = [
        IncidentState::Escalated,
        IncidentState::Open,
        IncidentState::Remediating,
        IncidentState::Acknowledged,
        IncidentState::Silenced,
        IncidentState::Resolved,
    ];

    /// Rank on the board: 0 is the most urgent.
    pub fn urgency(self) -> i32 {
        Self::ALL.iter().position(|s| *s == self).unwrap_or(Self::ALL.len()) as i32
    }
}

impl FaultKind {
    /// Whether a fault of this kind is what Firebreak's own remediation causes on the node it
    /// works on (a reboot makes the node NotReady and its agent silent): while a workflow runs on
    /// the node, such a fault is attached to the incident being remediated as expected, not made
    /// a new incident.
    pub fn expected_during_remediation(self) -> bool {
        matches!(
            self,
            FaultKind::NodeNotReady | FaultKind::AgentSilent | FaultKind::NodeFlapping | FaultKind::KubeletDown
        )
    }
}

/// An incident as stored, served and published on [`crate::INCIDENTS_TOPIC`] (its current
/// state; key = its id, on a compacted topic).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Incident {
    /// Its id: the id of its first occurrence.
    pub id: Uuid,
    /// `<cluster>/<node>/<kind>`: at most one unresolved incident has it.
    pub fingerprint: String,
    /// Cluster name.
    pub cluster: String,
    /// Node name.
    pub node: String,
    /// Layer that failed.
    pub class: FaultClass,
    /// What failed.
    pub kind: FaultKind,
    /// The highest severity of its occurrences.
    pub severity: Severity,
    /// Where it stands.
    pub state: IncidentState,
    /// Why it is in that state (the step's reason, who acknowledged, ...).
    pub reason: String,
    /// The earliest occurrence's time.
    pub first_seen: DateTime<Utc>,
    /// The latest occurrence's time.
    pub last_seen: DateTime<Utc>,
    /// Occurrences counted (each fault once, whatever the replays).
    pub occurrences: i64,
    /// Faults Firebreak's own remediation caused, attached to it.
    pub expected: i64,
    /// The remediation workflow working on it, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workflow_id: Option<Uuid>,
    /// That workflow's latest state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workflow_state: Option<String>,
    /// The correlated incident it belongs to, if many nodes reported the same at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<Uuid>,
    /// The operator who acknowledged it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acknowledged_by: Option<String>,
    /// Who it is assigned to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assignee: Option<String>,
    /// Silenced until then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub silenced_until: Option<DateTime<Utc>>,
    /// When it was resolved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolved_at: Option<DateTime<Utc>>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
    /// Grows with every change: a consumer keeps the highest.
    pub version: i64,
}

impl CloudEvent for Incident {
    const TYPE: &'static str = "io.firebreak.incident.v1";
    fn ce_id(&self) -> String {
        format!("{}@{}", self.id, self.version)
    }
    fn ce_source(&self) -> String {
        format!("/firebreak/event-center/{}/{}", self.cluster, self.node)
    }
    fn ce_time(&self) -> DateTime<Utc> {
        self.updated_at
    }
    fn key(&self) -> String {
        self.id.to_string()
    }
    fn validate(&self) -> Result<()> {
        crate::event::validate_names(&self.cluster, &self.node)?;
        if self.fingerprint != fingerprint(&self.cluster, &self.node, self.kind) {
            return Err(Error::Invalid(format!("incident {} has fingerprint `{}`", self.id, self.fingerprint)));
        }
        Ok(())
    }
}

/// An incident's fingerprint: `<cluster>/<node>/<kind>`.
pub fn fingerprint(cluster: &str, node: &str, kind: FaultKind) -> String {
    format!("{cluster}/{node}/{kind}")
}

/// A fault as an occurrence of an incident, on [`crate::OCCURRENCES_TOPIC`] (append-only; key
/// `<cluster>/<node>`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Occurrence {
    /// The fault.
    #[serde(flatten)]
    pub event: FaultEvent,
    /// The incident it was counted in.
    pub incident_id: Uuid,
    /// Caused by Firebreak's own remediation of the node (attached, not a new incident).
    pub expected: bool,
}

impl CloudEvent for Occurrence {
    const TYPE: &'static str = "io.firebreak.occurrence.v1";
    fn ce_id(&self) -> String {
        self.event.id.to_string()
    }
    fn ce_source(&self) -> String {
        self.event.ce_source()
    }
    fn ce_time(&self) -> DateTime<Utc> {
        self.event.observed_at
    }
    fn key(&self) -> String {
        self.event.key()
    }
    fn validate(&self) -> Result<()> {
        self.event.validate()
    }
}

/// Many nodes of one cluster, or of one failure domain of it (a zone, a rack), reporting the
/// same kind within a window: likely the infrastructure, not the nodes. Published on
/// [`crate::HEALTH_TOPIC`] (key = cluster) each time it grows, so the gate sees it beside the
/// cluster's health.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Correlation {
    /// Its id: deterministic from cluster, kind and its first incident.
    pub id: Uuid,
    /// Cluster name.
    pub cluster: String,
    /// The failure domain (label key, value) that holds most of the nodes; `None`: spread over
    /// the cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<(String, String)>,
    /// What the nodes reported.
    pub kind: FaultKind,
    /// Layer.
    pub class: FaultClass,
    /// The nodes, in order of their incidents.
    pub nodes: Vec<String>,
    /// The earliest of their incidents.
    pub first_seen: DateTime<Utc>,
    /// The latest of their incidents.
    pub last_seen: DateTime<Utc>,
    /// The rule that grouped them: at least `threshold` nodes within `window_s`.
    pub threshold: i64,
    /// The window, seconds.
    pub window_s: i64,
    /// For people: what it likely is.
    pub message: String,
}

impl Correlation {
    /// Where it is: its cluster, or its failure domain of the cluster.
    pub fn scope(&self) -> crate::Scope {
        match &self.domain {
            Some((k, v)) => crate::Scope::domain(&self.cluster, k, v),
            None => crate::Scope::cluster(&self.cluster),
        }
    }
}

impl CloudEvent for Correlation {
    const TYPE: &'static str = "io.firebreak.correlation.v1";
    fn ce_id(&self) -> String {
        format!("{}@{}", self.id, self.nodes.len())
    }
    fn ce_source(&self) -> String {
        format!("/firebreak/event-center/{}", self.cluster)
    }
    fn ce_time(&self) -> DateTime<Utc> {
        self.last_seen
    }
    fn key(&self) -> String {
        self.cluster.clone()
    }
    fn validate(&self) -> Result<()> {
        if !crate::names::is_dns1123_subdomain(&self.cluster) {
            return Err(Error::Invalid(format!("cluster `{}` is not a DNS-1123 subdomain", self.cluster)));
        }
        Ok(())
    }
}
