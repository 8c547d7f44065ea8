//! Intake policy: what one consumed fault means for its node. It is a pure decision over the
//! fault and what the store knows (an open workflow on the node); the store records the fault
//! and the decision atomically (`Store::intake`).

use std::time::Duration;

use chrono::{DateTime, Utc};
use firebreak_schema::{FaultClass, FaultEvent, Severity};
use uuid::Uuid;

use crate::store::{Step, Workflow};

/// What the intake decided about one consumed fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Intake {
    /// Seen before: nothing to do.
    Duplicate,
    /// Recorded, no action, with why.
    Ignored(String),
    /// Recorded against the node's open workflow.
    Attached(Uuid),
    /// A new workflow was created, with its first step.
    Started(Box<Workflow>, Step),
}

/// The decision for a fault that was not seen before.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Attach to the node's open workflow.
    Attach(Uuid),
    /// Record only, with why.
    Ignore(String),
    /// Start a workflow.
    Start,
}

/// Decides on a new fault. Rules, in order: a node with an open workflow gets the fault
/// attached (never a second workflow); a node escalated to a human (`escalated`, until an
/// operator clears it) is left alone; a fault observed longer ago than `stale_after` is
/// history (a replayed topic), not a reason to act; only critical faults are remediated; a
/// fault our own remediation caused starts nothing; component faults are not repaired by a
/// reboot, the one repair there is today.
pub(crate) fn decide(
    e: &FaultEvent,
    open_workflow: Option<Uuid>,
    escalated: Option<Uuid>,
    now: DateTime<Utc>,
    stale_after: Duration,
) -> Verdict {
    let ours = e.evidence.get("caused_by_remediation").is_some_and(|v| v == "true");
    let age = (now - e.observed_at).num_seconds();
    if let Some(id) = open_workflow {
        Verdict::Attach(id)
    } else if let Some(wf) = escalated {
        Verdict::Ignore(format!(
            "the node needs a human since workflow {wf} escalated; nothing starts on it until an operator clears \
             that (removes the node's {} annotation)",
            firebreak_schema::ESCALATED_ANNOTATION
        ))
    } else if age > i64::try_from(stale_after.as_secs()).unwrap_or(i64::MAX) {
        Verdict::Ignore(format!("observed {age}s ago, older than the {}s limit", stale_after.as_secs()))
    } else if e.severity != Severity::Critical {
        Verdict::Ignore(format!("severity {} (only critical faults are remediated)", e.severity))
    } else if ours {
        Verdict::Ignore("caused by our own remediation".into())
    } else if e.class == FaultClass::Component {
        Verdict::Ignore(format!("{} is a component fault; reboot does not repair it", e.kind))
    } else {
        Verdict::Start
    }
}

impl Intake {
    /// A bounded metric label.
    pub(crate) fn label(&self) -> &'static str {
        match self {
            Intake::Started(..) => "started",
            Intake::Attached(_) => "attached",
            Intake::Ignored(_) => "ignored",
            Intake::Duplicate => "duplicate",
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::BTreeMap;

    use chrono::TimeDelta;
    use firebreak_schema::{FaultKind, Source, deterministic_id};

    use super::*;

    /// A fault of cluster `c1` observed `age_s` seconds ago.
    pub(crate) fn fault_on(node: &str, kind: FaultKind, severity: Severity, age_s: i64) -> FaultEvent {
        let at = Utc::now() - TimeDelta::seconds(age_s);
        FaultEvent {
            id: deterministic_id(at, &["c1", node, kind.as_str()]),
            cluster: "c1".into(),
            node: node.into(),
            class: kind.class(),
            kind,
            severity,
            source: Source::Agent,
            observed_at: at,
            message: "m".into(),
            evidence: BTreeMap::new(),
        }
    }

    fn fault(kind: FaultKind, severity: Severity, age_s: i64) -> FaultEvent {
        fault_on("n1", kind, severity, age_s)
    }

    #[test]
    fn rules_in_order() {
        let limit = Duration::from_secs(600);
        let now = Utc::now();
        let crit = fault(FaultKind::MemoryUncorrectable, Severity::Critical, 1);
        assert_eq!(decide(&crit, None, None, now, limit), Verdict::Start);
        let open = Uuid::now_v7();
        assert_eq!(decide(&crit, Some(open), None, now, limit), Verdict::Attach(open), "one workflow per node");
        let old = fault(FaultKind::MemoryUncorrectable, Severity::Critical, 3600);
        assert!(
            matches!(decide(&old, None, None, now, limit), Verdict::Ignore(w) if w.contains("older than the 600s limit"))
        );
        assert_eq!(decide(&old, Some(open), None, now, limit), Verdict::Attach(open), "history still attaches");
        let warn = fault(FaultKind::KernelHung, Severity::Warning, 1);
        assert!(matches!(decide(&warn, None, None, now, limit), Verdict::Ignore(w) if w.contains("severity warning")));
        let mut ours = fault(FaultKind::NodeNotReady, Severity::Critical, 1);
        ours.evidence.insert("caused_by_remediation".into(), "true".into());
        assert!(matches!(decide(&ours, None, None, now, limit), Verdict::Ignore(w) if w.contains("our own")));
        let escalated = Uuid::now_v7();
        assert!(
            matches!(decide(&crit, None, Some(escalated), now, limit), Verdict::Ignore(w) if w.contains("needs a human")),
            "an escalated node is left alone"
        );
        assert_eq!(decide(&crit, Some(open), Some(escalated), now, limit), Verdict::Attach(open));
        let component = fault(FaultKind::KubeletDown, Severity::Critical, 1);
        assert!(matches!(decide(&component, None, None, now, limit), Verdict::Ignore(w) if w.contains("component")));
    }
}
