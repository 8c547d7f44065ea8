//! The remediation policy: which faults are repaired, by which ladder of repairs, and the
//! attempt budget per node. A TOML file, validated as it is read (errors name the key and the
//! line); the default, with the reasons for each choice, is `remediator/policy.toml`.

use std::{path::Path, time::Duration};

use firebreak_schema::{FaultClass, FaultKind, Severity};
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// The default policy, documented.
pub const DEFAULT_POLICY: &str = include_str!("../policy.toml");

/// One repair on a ladder; in the policy file `restart:<component>`, `reboot` or `human`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Rung {
    /// Restart one node component (a systemd unit such as `kubelet`) through the node's
    /// actuator; no drain.
    Restart(String),
    /// Drain under a `drain` permit, reboot under a `reboot` permit, verify, uncordon.
    Reboot,
    /// Drain, then under a `reinstall` permit ask the reinstall webhook to re-image the node;
    /// wait for it back on a new boot, verify, uncordon.
    Reinstall,
    /// Drain, then open a hardware ticket (a signed webhook) and leave the node isolated until
    /// an operator closes it (clears the escalation).
    Ticket,
    /// Cordon, then escalate: a human takes over.
    Human,
}

impl Rung {
    /// The name stored and shown.
    pub fn name(&self) -> String {
        match self {
            Rung::Restart(c) => format!("restart:{c}"),
            Rung::Reboot => "reboot".into(),
            Rung::Reinstall => "reinstall".into(),
            Rung::Ticket => "ticket".into(),
            Rung::Human => "human".into(),
        }
    }

    /// Reads a rung's name.
    pub fn parse(s: &str) -> std::result::Result<Self, String> {
        match s {
            "reboot" => Ok(Rung::Reboot),
            "reinstall" => Ok(Rung::Reinstall),
            "ticket" => Ok(Rung::Ticket),
            "human" => Ok(Rung::Human),
            _ => match s.strip_prefix("restart:") {
                Some(c) if firebreak_schema::names::is_dns1123_subdomain(c) => Ok(Rung::Restart(c.into())),
                Some(c) => Err(format!("rung `{s}`: component `{c}` is not a DNS-1123 name")),
                None => Err(format!(
                    "unknown rung `{s}`: expected `restart:<component>`, `reboot`, `reinstall`, `ticket` or `human`"
                )),
            },
        }
    }
}

impl TryFrom<String> for Rung {
    type Error = String;
    fn try_from(s: String) -> std::result::Result<Self, String> {
        Rung::parse(&s)
    }
}

impl From<Rung> for String {
    fn from(r: Rung) -> String {
        r.name()
    }
}

/// How many repairs one node may have within a window before a human must look at it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Budget {
    /// Repairs (workflows that healed the node) per node within `window`.
    pub attempts: u32,
    /// The window; also how far back a recurrence climbs the ladder.
    #[serde(with = "humantime_serde")]
    pub window: Duration,
}

/// What to do about one family of faults.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Process {
    /// A DNS-1123 name, stored with each workflow it starts.
    pub name: String,
    /// Fault kinds it takes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kinds: Vec<FaultKind>,
    /// Fault classes it takes (every kind of the class).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub classes: Vec<FaultClass>,
    /// The least severity it takes.
    #[serde(default = "critical")]
    pub min_severity: Severity,
    /// How many matching faults within `within` (this one included) it takes to act.
    #[serde(default = "one")]
    pub occurrences: u32,
    /// The window `occurrences` are counted in.
    #[serde(default = "ten_minutes", with = "humantime_serde")]
    pub within: Duration,
    /// Repairs, mildest first.
    pub ladder: Vec<Rung>,
}

fn all_sources() -> Vec<firebreak_schema::Source> {
    vec![firebreak_schema::Source::Agent, firebreak_schema::Source::Detector]
}

fn critical() -> Severity {
    Severity::Critical
}
fn one() -> u32 {
    1
}
fn ten_minutes() -> Duration {
    Duration::from_secs(600)
}

impl Process {
    /// Whether a fault of this kind and severity is one of this process's.
    pub fn takes(&self, kind: FaultKind, severity: Severity) -> bool {
        (self.kinds.contains(&kind) || self.classes.contains(&kind.class())) && severity >= self.min_severity
    }
}

/// The remediation policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// The attempt budget per node.
    pub budget: Budget,
    /// The sources whose faults may start work (`agent`, `detector`); a fault from another is
    /// recorded and left alone. Records are not signed: this narrows what a writer of the fault
    /// topic can claim, and Kafka ACLs decide who may write it (see ARCHITECTURE).
    #[serde(default = "all_sources")]
    pub trusted_sources: Vec<firebreak_schema::Source>,
    /// The processes, matched in order.
    #[serde(rename = "process", default)]
    pub processes: Vec<Process>,
}

impl Default for Policy {
    fn default() -> Self {
        // The embedded default is checked by a test; should it ever fail to parse, no fault is
        // remediated rather than the binary failing.
        Self::parse(DEFAULT_POLICY).unwrap_or_else(|error| {
            tracing::error!(%error, "the built-in remediation policy is invalid; nothing is remediated");
            Policy {
                budget: Budget { attempts: 0, window: Duration::from_secs(86_400) },
                trusted_sources: Vec::new(),
                processes: Vec::new(),
            }
        })
    }
}

impl Policy {
    /// Reads and validates a policy file.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Policy(format!("{}: cannot read: {e}", path.display())))?;
        Self::parse(&text).map_err(|e| match e {
            Error::Policy(m) => Error::Policy(format!("{}: {m}", path.display())),
            other => other,
        })
    }

    /// Parses and validates a policy.
    pub fn parse(text: &str) -> Result<Self> {
        let p: Policy = toml::from_str(text).map_err(|e| Error::Policy(e.to_string()))?;
        if p.budget.window.is_zero() {
            return Err(Error::Policy("budget.window: must be positive".into()));
        }
        let mut names = std::collections::BTreeSet::new();
        for (i, pr) in p.processes.iter().enumerate() {
            let at = format!("process[{i}] `{}`", pr.name);
            if !firebreak_schema::names::is_dns1123_subdomain(&pr.name) {
                return Err(Error::Policy(format!("{at}: the name is not a DNS-1123 name")));
            }
            if !names.insert(pr.name.as_str()) {
                return Err(Error::Policy(format!("{at}: the name is used twice")));
            }
            if pr.kinds.is_empty() && pr.classes.is_empty() {
                return Err(Error::Policy(format!("{at}: names no kinds and no classes")));
            }
            if pr.occurrences == 0 {
                return Err(Error::Policy(format!("{at}.occurrences: at least 1")));
            }
            if pr.within.is_zero() {
                return Err(Error::Policy(format!("{at}.within: must be positive")));
            }
            if pr.ladder.is_empty() {
                return Err(Error::Policy(format!("{at}.ladder: name at least one rung")));
            }
            if pr.ladder.iter().rev().skip(1).any(|r| matches!(r, Rung::Human | Rung::Ticket)) {
                return Err(Error::Policy(format!("{at}.ladder: `human` and `ticket` can only be the last rung")));
            }
        }
        Ok(p)
    }

    /// The process that takes a fault of this kind and severity: the first that does.
    pub fn process_for(&self, kind: FaultKind, severity: Severity) -> Option<&Process> {
        self.processes.iter().find(|p| p.takes(kind, severity))
    }

    /// The policy as TOML, defaults filled in.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render the policy: {e}\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_policy_parses_and_says_what_operators_expect() {
        let p = Policy::parse(DEFAULT_POLICY).unwrap();
        assert_eq!(p, Policy::default());
        assert_eq!((p.budget.attempts, p.budget.window), (3, Duration::from_secs(86_400)));
        // One hung-task warning is not worth a reboot; three in 15 minutes are.
        let hung = p.process_for(FaultKind::KernelHung, Severity::Warning).unwrap();
        assert_eq!((hung.occurrences, hung.within), (3, Duration::from_secs(900)));
        let memory = p.process_for(FaultKind::MemoryUncorrectable, Severity::Critical).unwrap();
        assert_eq!(memory.ladder, [Rung::Reboot, Rung::Human]);
        assert!(p.process_for(FaultKind::MemoryUncorrectable, Severity::Warning).is_none());
        let kubelet = p.process_for(FaultKind::KubeletDown, Severity::Critical).unwrap();
        assert_eq!(kubelet.ladder, [Rung::Restart("kubelet".into()), Rung::Reboot, Rung::Human], "restart first");
        assert!(p.process_for(FaultKind::AgentSilent, Severity::Critical).is_none());
        assert_eq!(Policy::parse(&p.to_toml()).unwrap(), p, "the rendered policy reads back the same");
    }

    #[test]
    fn errors_name_the_key_and_the_line() {
        let ok = "[budget]\nattempts = 3\nwindow = \"1h\"\n";
        let cases = [
            ("[budget]\nattempts = 3\nwindow = \"soon\"\n", "line 3"),
            ("[budget]\nattempts = 3\nwindow = \"0s\"\n", "budget.window"),
            ("[budget]\nattempts = 3\n", "window"),
            (&format!("{ok}[[process]]\nname = \"a\"\nkinds = [\"Meltdown\"]\nladder = [\"reboot\"]\n"), "line 6"),
            (&format!("{ok}[[process]]\nname = \"a\"\nkinds = [\"KernelHung\"]\nladder = [\"pray\"]\n"), "line 7"),
            (
                &format!("{ok}[[process]]\nname = \"a\"\nkinds = [\"KernelHung\"]\nladder = [\"restart:rm -rf\"]\n"),
                "not a DNS-1123 name",
            ),
            (&format!("{ok}[[process]]\nname = \"a\"\nkinds = [\"KernelHung\"]\nladder = []\n"), "at least one rung"),
            (&format!("{ok}[[process]]\nname = \"a\"\nladder = [\"reboot\"]\n"), "no kinds and no classes"),
            (
                &format!("{ok}[[process]]\nname = \"a\"\nclasses = [\"system\"]\nladder = [\"human\", \"reboot\"]\n"),
                "only be the last",
            ),
            (
                &format!(
                    "{ok}[[process]]\nname = \"a\"\nclasses = [\"system\"]\nladder = [\"ticket\", \"reinstall\"]\n"
                ),
                "only be the last",
            ),
            (
                &format!(
                    "{ok}[[process]]\nname = \"a\"\nclasses = [\"system\"]\noccurrences = 0\nladder = [\"reboot\"]\n"
                ),
                "occurrences",
            ),
            (
                &format!("{ok}[[process]]\nname = \"Not A Name\"\nclasses = [\"system\"]\nladder = [\"reboot\"]\n"),
                "DNS-1123",
            ),
            (
                &format!(
                    "{ok}[[process]]\nname = \"a\"\nclasses = [\"system\"]\nladder = [\"reboot\"]\n\
                     [[process]]\nname = \"a\"\nclasses = [\"hardware\"]\nladder = [\"reboot\"]\n"
                ),
                "used twice",
            ),
            (&format!("{ok}[[process]]\nname = \"a\"\nclasses = [\"system\"]\nladders = [\"reboot\"]\n"), "ladders"),
        ];
        for (text, word) in cases {
            match Policy::parse(text) {
                Err(Error::Policy(m)) => assert!(m.contains(word), "{word:?} not in {m}"),
                other => panic!("{text}: {other:?}"),
            }
        }
    }

    #[test]
    fn the_first_process_that_takes_a_fault_decides() {
        let p = Policy::parse(
            "[budget]\nattempts = 3\nwindow = \"1h\"\n\
             [[process]]\nname = \"mem\"\nkinds = [\"MemoryUncorrectable\"]\nladder = [\"human\"]\n\
             [[process]]\nname = \"hw\"\nclasses = [\"hardware\", \"system\"]\nmin_severity = \"warning\"\nladder = [\"reboot\"]\n",
        )
        .unwrap();
        let name = |k, s| p.process_for(k, s).map(|p| p.name.as_str());
        assert_eq!(name(FaultKind::MemoryUncorrectable, Severity::Critical), Some("mem"));
        assert_eq!(name(FaultKind::KernelHung, Severity::Warning), Some("hw"));
        assert_eq!(name(FaultKind::KernelHung, Severity::Info), None);
        assert_eq!(name(FaultKind::KubeletDown, Severity::Critical), None);
    }
}
