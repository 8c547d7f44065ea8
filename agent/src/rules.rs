//! Kernel log rules: a regular expression that, when it matches a record, yields a fault.

use firebreak_schema::{FaultKind, Severity};
use regex::Regex;

/// One rule.
#[derive(Debug, Clone)]
pub struct Rule {
    /// Stable name, recorded as evidence.
    pub name: &'static str,
    /// What to look for in the message.
    pub pattern: Regex,
    /// The fault it reveals.
    pub kind: FaultKind,
    /// How urgent.
    pub severity: Severity,
}

/// The built-in rules.
pub fn defaults() -> Vec<Rule> {
    let specs: [(&str, &str, FaultKind, Severity); 5] = [
        ("edac-uncorrectable", r"EDAC MC\d+: \d+ UE ", FaultKind::MemoryUncorrectable, Severity::Critical),
        (
            "mce-fatal",
            r"mce: \[Hardware Error\]: .*(Fatal|Uncorrected)",
            FaultKind::MemoryUncorrectable,
            Severity::Critical,
        ),
        (
            "fs-readonly",
            r"(EXT4-fs|XFS|Btrfs).*(Remounting filesystem read-only|forced shutdown|Filesystem has been shut down)",
            FaultKind::ReadonlyFilesystem,
            Severity::Critical,
        ),
        ("hung-task", r"task \S+ blocked for more than \d+ seconds", FaultKind::KernelHung, Severity::Warning),
        ("kubelet-oom", r"Out of memory: Killed process \d+ \(kubelet\)", FaultKind::KubeletDown, Severity::Critical),
    ];
    specs
        .into_iter()
        .filter_map(|(name, re, kind, severity)| match Regex::new(re) {
            Ok(pattern) => Some(Rule { name, pattern, kind, severity }),
            Err(error) => {
                tracing::error!(%error, rule = name, "built-in rule does not compile");
                None
            }
        })
        .collect()
}

/// The first rule matching `message`.
pub fn first_match<'a>(rules: &'a [Rule], message: &str) -> Option<&'a Rule> {
    rules.iter().find(|r| r.pattern.is_match(message))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_rules_match_real_kernel_lines() {
        let rules = defaults();
        assert_eq!(rules.len(), 5);
        let cases = [
            (
                "EDAC MC0: 1 UE memory read error on CPU_SrcID#0_MC#0_Chan#1_DIMM#0 (channel:1 slot:0 page:0x3fe12)",
                Some(FaultKind::MemoryUncorrectable),
            ),
            ("EDAC MC0: 3 CE memory read error on CPU_SrcID#0", None),
            ("EXT4-fs (sda1): Remounting filesystem read-only", Some(FaultKind::ReadonlyFilesystem)),
            ("EXT4-fs (sda1): mounted filesystem with ordered data mode.", None),
            ("INFO: task kworker/u16:2:4127 blocked for more than 120 seconds.", Some(FaultKind::KernelHung)),
            ("Linux version 6.1.0", None),
        ];
        for (line, want) in cases {
            assert_eq!(first_match(&rules, line).map(|r| r.kind), want, "{line}");
        }
    }
}
