//! Intake policy: what one consumed fault means for its node. It is a pure decision over the
//! fault and what the store knows (an open workflow on the node); the store records the fault
//! and the decision atomically (`Store::intake`).

use std::time::Duration;

use chrono::{DateTime, Utc};
use firebreak_schema::FaultEvent;
use uuid::Uuid;

use crate::{
    policy::{Policy, Rung},
    store::Workflow,
};

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
    Started(Box<Workflow>),
}

/// What the store knows about a node when a new fault of it arrives.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct History {
    /// The node's open workflow.
    pub(crate) open_workflow: Option<Uuid>,
    /// The node's escalated workflow no operator has cleared.
    pub(crate) escalated: Option<Uuid>,
    /// Faults of the node the fault's process takes, within its `within`, this one included.
    pub(crate) occurrences: u32,
    /// The node's repairs (workflows that healed it) within the budget window since an operator
    /// last cleared an escalation on it, oldest first: (workflow, process).
    pub(crate) repairs: Vec<(Uuid, String)>,
}

/// What a started workflow is to do, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Plan {
    /// The policy's process that took the fault.
    pub(crate) process: String,
    /// The repair.
    pub(crate) rung: Rung,
    /// Why this rung: the ladder's place, the repairs before, the budget.
    pub(crate) why: String,
}

/// The decision for a fault that was not seen before.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Attach to the node's open workflow.
    Attach(Uuid),
    /// Record only, with why.
    Ignore(String),
    /// Start a workflow.
    Start(Plan),
}

/// Decides on a new fault. Rules, in order: a node with an open workflow gets the fault
/// attached (never a second workflow); a node escalated to a human (until an operator clears
/// it) is left alone; a fault observed longer ago than `stale_after` is history (a replayed
/// topic), not a reason to act; a fault our own remediation caused starts nothing; a fault no
/// process of the policy takes is left alone, as is one the process needs more of. Then the
/// ladder: the rung after the node's earlier repairs by the same process, or a human once the
/// ladder or the node's attempt budget is spent.
pub(crate) fn decide(
    e: &FaultEvent,
    policy: &Policy,
    history: &History,
    now: DateTime<Utc>,
    stale_after: Duration,
) -> Verdict {
    let ours = e.evidence.get("caused_by_remediation").is_some_and(|v| v == "true");
    let age = (now - e.observed_at).num_seconds();
    if let Some(id) = history.open_workflow {
        return Verdict::Attach(id);
    }
    if let Some(wf) = history.escalated {
        return Verdict::Ignore(format!(
            "the node needs a human since workflow {wf} escalated; nothing starts on it until an operator clears \
             that (removes the node's {} annotation)",
            firebreak_schema::ESCALATED_ANNOTATION
        ));
    }
    if age > i64::try_from(stale_after.as_secs()).unwrap_or(i64::MAX) {
        return Verdict::Ignore(format!("observed {age}s ago, older than the {}s limit", stale_after.as_secs()));
    }
    if ours {
        return Verdict::Ignore("caused by our own remediation".into());
    }
    if !policy.trusted_sources.contains(&e.source) {
        let trusted: Vec<&str> = policy.trusted_sources.iter().map(|s| s.as_str()).collect();
        return Verdict::Ignore(format!(
            "from source `{}`, which the remediation policy does not trust (trusted_sources: {})",
            e.source.as_str(),
            if trusted.is_empty() { "none".to_owned() } else { trusted.join(", ") }
        ));
    }
    let Some(process) = policy.process_for(e.kind, e.severity) else {
        return Verdict::Ignore(format!(
            "no process of the remediation policy takes {} at severity {}",
            e.kind, e.severity
        ));
    };
    if history.occurrences < process.occurrences {
        return Verdict::Ignore(format!(
            "{} of the {} faults within {} that process `{}` needs before it acts",
            history.occurrences,
            process.occurrences,
            humantime::format_duration(process.within),
            process.name
        ));
    }
    let budget = &policy.budget;
    let window = humantime::format_duration(budget.window);
    let ids = |r: &[&(Uuid, String)]| r.iter().map(|(id, _)| id.to_string()).collect::<Vec<_>>().join(", ");
    let all: Vec<&(Uuid, String)> = history.repairs.iter().collect();
    let same: Vec<&(Uuid, String)> = all.iter().copied().filter(|(_, p)| *p == process.name).collect();
    let ladder: Vec<String> = process.ladder.iter().map(Rung::name).collect();
    let ladder = ladder.join(" → ");
    let (rung, why) = if all.len() >= budget.attempts as usize {
        (
            Rung::Human,
            format!(
                "attempt budget spent: {} repairs of this node within {window} (at most {}: {})",
                all.len(),
                budget.attempts,
                ids(&all)
            ),
        )
    } else if let Some(rung) = process.ladder.get(same.len()) {
        let came_back = if same.is_empty() {
            String::new()
        } else {
            format!("; the fault came back within {window} after {} repair(s) by it ({})", same.len(), ids(&same))
        };
        (
            rung.clone(),
            format!(
                "process `{}`, rung {} of {} ({ladder}){came_back}",
                process.name,
                same.len() + 1,
                process.ladder.len()
            ),
        )
    } else {
        (
            Rung::Human,
            format!(
                "process `{}`: ladder ({ladder}) climbed to its end; the fault came back after {} repairs ({})",
                process.name,
                same.len(),
                ids(&same)
            ),
        )
    };
    Verdict::Start(Plan { process: process.name.clone(), rung, why })
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
    use firebreak_schema::{FaultKind, Severity, Source, deterministic_id};

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

    fn history() -> History {
        History { occurrences: 1, ..History::default() }
    }

    #[test]
    fn rules_in_order() {
        let limit = Duration::from_secs(600);
        let now = Utc::now();
        let policy = Policy::default();
        let decide = |e: &FaultEvent, h: &History| decide(e, &policy, h, now, limit);
        let crit = fault(FaultKind::MemoryUncorrectable, Severity::Critical, 1);
        assert!(
            matches!(decide(&crit, &history()), Verdict::Start(p) if p.rung == Rung::Reboot && p.process == "memory")
        );
        let open = Uuid::now_v7();
        let with_open = History { open_workflow: Some(open), ..history() };
        assert_eq!(decide(&crit, &with_open), Verdict::Attach(open), "one workflow per node");
        let old = fault(FaultKind::MemoryUncorrectable, Severity::Critical, 3600);
        assert!(matches!(decide(&old, &history()), Verdict::Ignore(w) if w.contains("older than the 600s limit")));
        assert_eq!(decide(&old, &with_open), Verdict::Attach(open), "history still attaches");
        let warn = fault(FaultKind::MemoryUncorrectable, Severity::Warning, 1);
        assert!(matches!(decide(&warn, &history()), Verdict::Ignore(w) if w.contains("no process")));
        let mut ours = fault(FaultKind::NodeNotReady, Severity::Critical, 1);
        ours.evidence.insert("caused_by_remediation".into(), "true".into());
        assert!(matches!(decide(&ours, &history()), Verdict::Ignore(w) if w.contains("our own")));
        let escalated = History { escalated: Some(Uuid::now_v7()), ..history() };
        assert!(
            matches!(decide(&crit, &escalated), Verdict::Ignore(w) if w.contains("needs a human")),
            "an escalated node is left alone"
        );
        assert_eq!(decide(&crit, &History { open_workflow: Some(open), ..escalated }), Verdict::Attach(open));
        let component = fault(FaultKind::AgentSilent, Severity::Critical, 1);
        assert!(matches!(decide(&component, &history()), Verdict::Ignore(w) if w.contains("no process")));
    }

    #[test]
    fn only_trusted_sources_start_work() {
        let policy = Policy { trusted_sources: vec![firebreak_schema::Source::Detector], ..Policy::default() };
        let crit = fault(FaultKind::MemoryUncorrectable, Severity::Critical, 1);
        let v = decide(&crit, &policy, &history(), Utc::now(), Duration::from_secs(600));
        assert!(
            matches!(&v, Verdict::Ignore(w) if w.contains("source `agent`, which the remediation policy does not trust (trusted_sources: detector)")),
            "{v:?}"
        );
        let e = Policy::parse("trusted_sources = [\"kernel\"]\n[budget]\nattempts = 1\nwindow = \"1h\"").unwrap_err();
        assert!(e.to_string().contains("kernel"), "{e}");
    }

    #[test]
    fn a_single_hung_task_is_recorded_three_start_a_reboot() {
        let now = Utc::now();
        let policy = Policy::default();
        let hung = fault(FaultKind::KernelHung, Severity::Warning, 1);
        for n in 1..3 {
            let h = History { occurrences: n, ..History::default() };
            let v = decide(&hung, &policy, &h, now, Duration::from_secs(600));
            assert!(
                matches!(&v, Verdict::Ignore(w) if w.contains(&format!("{n} of the 3 faults within 15m")) && w.contains("hung-tasks")),
                "{v:?}"
            );
        }
        let h = History { occurrences: 3, ..History::default() };
        assert!(
            matches!(decide(&hung, &policy, &h, now, Duration::from_secs(600)), Verdict::Start(p) if p.rung == Rung::Reboot)
        );
    }

    #[test]
    fn a_fault_that_comes_back_climbs_the_ladder_and_the_budget_caps_every_ladder() {
        let now = Utc::now();
        let policy = Policy::default();
        let decide = |e: &FaultEvent, h: &History| match decide(e, &policy, h, now, Duration::from_secs(600)) {
            Verdict::Start(p) => p,
            other => panic!("{other:?}"),
        };
        let mem = fault(FaultKind::MemoryUncorrectable, Severity::Critical, 1);
        let first = decide(&mem, &history());
        assert_eq!(
            (first.rung.clone(), first.why.as_str()),
            (Rung::Reboot, "process `memory`, rung 1 of 2 (reboot → human)")
        );
        let healed = Uuid::now_v7();
        let again = decide(&mem, &History { repairs: vec![(healed, "memory".into())], ..history() });
        assert_eq!(again.rung, Rung::Human, "the memory ladder climbs to a human");
        assert!(again.why.contains("rung 2 of 2") && again.why.contains(&healed.to_string()), "{}", again.why);
        // A repair by another process does not climb this one's ladder, but counts in the budget.
        let fs = fault(FaultKind::ReadonlyFilesystem, Severity::Critical, 1);
        let other = History { repairs: vec![(healed, "memory".into())], ..history() };
        assert_eq!(decide(&fs, &other).rung, Rung::Reboot);
        let spent = History {
            repairs: vec![
                (Uuid::now_v7(), "memory".into()),
                (Uuid::now_v7(), "not-ready".into()),
                (healed, "hung-tasks".into()),
            ],
            ..history()
        };
        let capped = decide(&fs, &spent);
        assert_eq!(capped.rung, Rung::Human);
        assert!(
            capped.why.starts_with("attempt budget spent: 3 repairs of this node within 1day (at most 3"),
            "{}",
            capped.why
        );
        // A ladder without a human rung still ends with one.
        let reboots = Policy::parse(
            "[budget]\nattempts = 9\nwindow = \"1h\"\n[[process]]\nname = \"m\"\nclasses = [\"hardware\"]\nladder = [\"reboot\"]\n",
        )
        .unwrap();
        let h = History { repairs: vec![(healed, "m".into())], ..history() };
        match super::decide(&mem, &reboots, &h, now, Duration::from_secs(600)) {
            Verdict::Start(p) => assert!(p.rung == Rung::Human && p.why.contains("climbed to its end"), "{}", p.why),
            other => panic!("{other:?}"),
        }
    }
}
