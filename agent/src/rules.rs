//! Kernel log rules: a regular expression that, when it matches a record, yields a fault. Two
//! formats, one list (the first rule that matches a record decides):
//!
//! - **node-problem-detector's system-log-monitor files**, unchanged (`kernel-monitor.json`:
//!   `source`, `conditions`, `rules` of `type` `temporary` or `permanent` with `reason`,
//!   `pattern` and, for permanent ones, `condition`). As NPD does, a pattern must match the end
//!   of the record's message. Their reasons map to Firebreak kinds by this table:
//!
//!   | NPD rule | Firebreak kind | severity |
//!   | --- | --- | --- |
//!   | condition `ReadonlyFilesystem`, or reason `FilesystemIsReadOnly` | `ReadonlyFilesystem` | critical |
//!   | condition `KernelDeadlock`, or reason `TaskHung`, `DockerHung`, `AUFSUmountHung` | `KernelHung` | critical if permanent, else warning |
//!   | reason `MemoryReadError` (corrected errors) | `KernelError` | info |
//!   | any other | `KernelError` | critical if permanent, else warning |
//!
//!   Multi-line matches over NPD's `bufferSize` are not supported: a pattern sees one record.
//! - **Firebreak's own TOML** (`[[rule]]` with `name`, `pattern` searched anywhere, `kind`,
//!   `severity`), for what NPD's format cannot say: a Firebreak kind of the rule's choosing.
//!
//! The defaults are `agent/rules/hardware.toml` then NPD's `kernel-monitor.json`, embedded.

use std::path::Path;

use firebreak_schema::{FaultKind, Severity};
use regex::Regex;
use serde::Deserialize;

use crate::{Error, Result};

/// Firebreak's own default rules.
pub const DEFAULT_FIREBREAK_RULES: &str = include_str!("../rules/hardware.toml");
/// node-problem-detector's kernel monitor, as NPD ships it.
pub const DEFAULT_NPD_RULES: &str = include_str!("../rules/kernel-monitor.json");

/// One rule.
#[derive(Debug, Clone)]
pub struct Rule {
    /// Stable name, recorded as evidence (`npd:<source>/<reason>` for NPD rules).
    pub name: String,
    /// What to look for in the message.
    pub pattern: Regex,
    /// The fault it reveals.
    pub kind: FaultKind,
    /// How urgent.
    pub severity: Severity,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FirebreakFile {
    #[serde(default)]
    rule: Vec<FirebreakRule>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FirebreakRule {
    name: String,
    pattern: String,
    kind: FaultKind,
    severity: Severity,
}

/// NPD's system-log-monitor configuration; fields Firebreak does not use (`logPath`,
/// `lookback`, `bufferSize`, `pluginConfig`, ...) are accepted and ignored.
#[derive(Deserialize)]
struct NpdFile {
    source: String,
    #[serde(default)]
    conditions: Vec<NpdCondition>,
    rules: Vec<NpdRule>,
}

#[derive(Deserialize)]
struct NpdCondition {
    #[serde(rename = "type")]
    type_: String,
}

#[derive(Deserialize)]
struct NpdRule {
    #[serde(rename = "type")]
    type_: String,
    #[serde(default)]
    condition: Option<String>,
    reason: String,
    pattern: String,
}

/// The NPD mapping table (see the module documentation).
fn npd_kind(permanent: bool, condition: Option<&str>, reason: &str) -> (FaultKind, Severity) {
    let grave = if permanent { Severity::Critical } else { Severity::Warning };
    match (condition.unwrap_or_default(), reason) {
        ("ReadonlyFilesystem", _) | (_, "FilesystemIsReadOnly") => (FaultKind::ReadonlyFilesystem, Severity::Critical),
        ("KernelDeadlock", _) | (_, "TaskHung" | "DockerHung" | "AUFSUmountHung") => (FaultKind::KernelHung, grave),
        (_, "MemoryReadError") => (FaultKind::KernelError, Severity::Info),
        _ => (FaultKind::KernelError, grave),
    }
}

/// Parses node-problem-detector's system-log-monitor rules; `origin` names the file in errors.
pub fn parse_npd(text: &str, origin: &str) -> Result<Vec<Rule>> {
    let bad = |why: String| Error::Config(format!("{origin}: {why}"));
    let f: NpdFile = serde_json::from_str(text).map_err(|e| bad(e.to_string()))?;
    let conditions: Vec<&str> = f.conditions.iter().map(|c| c.type_.as_str()).collect();
    f.rules
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let at = format!("rules[{i}] ({})", r.reason);
            let permanent = match r.type_.as_str() {
                "temporary" => false,
                "permanent" => true,
                other => return Err(bad(format!("{at}: type `{other}` is neither temporary nor permanent"))),
            };
            if permanent {
                match r.condition.as_deref() {
                    Some(c) if conditions.contains(&c) => {}
                    Some(c) => return Err(bad(format!("{at}: condition `{c}` is not among the file's conditions"))),
                    None => return Err(bad(format!("{at}: a permanent rule names its condition"))),
                }
            }
            // As NPD does: the pattern matches the end of the log line.
            let pattern = Regex::new(&format!("(?:{})\\z", r.pattern)).map_err(|e| bad(format!("{at}: {e}")))?;
            let (kind, severity) = npd_kind(permanent, r.condition.as_deref(), &r.reason);
            Ok(Rule { name: format!("npd:{}/{}", f.source, r.reason), pattern, kind, severity })
        })
        .collect()
}

/// Parses Firebreak's own TOML rules; `origin` names the file in errors.
pub fn parse_firebreak(text: &str, origin: &str) -> Result<Vec<Rule>> {
    let bad = |why: String| Error::Config(format!("{origin}: {why}"));
    let f: FirebreakFile = toml::from_str(text).map_err(|e| bad(e.to_string()))?;
    f.rule
        .into_iter()
        .map(|r| {
            if r.name.is_empty() || !firebreak_schema::names::is_plain_text(&r.name, 128) {
                return Err(bad(format!("rule `{}`: a name is 1 to 128 characters of plain text", r.name)));
            }
            let pattern = Regex::new(&r.pattern).map_err(|e| bad(format!("rule `{}`: {e}", r.name)))?;
            Ok(Rule { name: r.name, pattern, kind: r.kind, severity: r.severity })
        })
        .collect()
}

/// Reads a rules file: NPD's JSON (`.json`) or Firebreak's TOML (anything else).
pub fn load(path: &Path) -> Result<Vec<Rule>> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Io { path: path.to_owned(), source })?;
    let origin = path.display().to_string();
    if path.extension().is_some_and(|e| e == "json") {
        parse_npd(&text, &origin)
    } else {
        parse_firebreak(&text, &origin)
    }
}

/// The built-in rules: Firebreak's, then NPD's kernel monitor.
pub fn defaults() -> Vec<Rule> {
    let mut rules = parse_firebreak(DEFAULT_FIREBREAK_RULES, "built-in hardware.toml").unwrap_or_else(|error| {
        tracing::error!(%error, "built-in rules do not parse");
        Vec::new()
    });
    rules.extend(parse_npd(DEFAULT_NPD_RULES, "built-in kernel-monitor.json").unwrap_or_else(|error| {
        tracing::error!(%error, "built-in NPD rules do not parse");
        Vec::new()
    }));
    rules
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
        assert_eq!(rules.len(), 5 + 12, "both built-in files parse whole");
        let cases = [
            (
                "EDAC MC0: 1 UE memory read error on CPU_SrcID#0_MC#0_Chan#1_DIMM#0 (channel:1 slot:0 page:0x3fe12)",
                Some((FaultKind::MemoryUncorrectable, Severity::Critical, "edac-uncorrectable")),
            ),
            (
                "EDAC MC0: 3 CE memory read error on CPU_SrcID#0_Ha#0_Chan#0_DIMM#0",
                Some((FaultKind::KernelError, Severity::Info, "npd:kernel-monitor/MemoryReadError")),
            ),
            (
                "EXT4-fs (sda1): Remounting filesystem read-only",
                Some((FaultKind::ReadonlyFilesystem, Severity::Critical, "fs-readonly")),
            ),
            ("EXT4-fs (sda1): mounted filesystem with ordered data mode.", None),
            (
                "INFO: task kworker/u16:2:4127 blocked for more than 120 seconds.",
                Some((FaultKind::KernelHung, Severity::Warning, "hung-task")),
            ),
            (
                "BUG: unable to handle kernel NULL pointer dereference at 0000000000000008",
                Some((FaultKind::KernelError, Severity::Warning, "npd:kernel-monitor/KernelOops")),
            ),
            (
                "Buffer I/O error on dev sdb1, logical block 0, async page read",
                Some((FaultKind::KernelError, Severity::Warning, "npd:kernel-monitor/IOError")),
            ),
            ("Linux version 6.1.0", None),
        ];
        for (line, want) in cases {
            let got = first_match(&rules, line).map(|r| (r.kind, r.severity, r.name.as_str()));
            assert_eq!(got, want, "{line}");
        }
    }

    #[test]
    fn npd_files_are_read_unchanged_and_mapped_by_the_table() {
        let npd = r#"{"plugin": "journald", "pluginConfig": {"source": "kernel"}, "logPath": "/var/log/journal",
            "lookback": "5m", "bufferSize": 10, "source": "kernel-monitor",
            "conditions": [{"type": "KernelDeadlock", "reason": "KernelHasNoDeadlock", "message": "none"}],
            "rules": [
              {"type": "permanent", "condition": "KernelDeadlock", "reason": "DockerHung",
               "pattern": "task docker:\\w+ blocked for more than \\w+ seconds\\."},
              {"type": "temporary", "reason": "OOMKilling", "pattern": "Killed process \\d+ (.+) total-vm:\\d+kB.*"}
            ]}"#;
        let rules = parse_npd(npd, "t.json").unwrap();
        let hung = first_match(&rules, "INFO: task docker:1234 blocked for more than 120 seconds.").unwrap();
        assert_eq!(
            (hung.kind, hung.severity, hung.name.as_str()),
            (FaultKind::KernelHung, Severity::Critical, "npd:kernel-monitor/DockerHung")
        );
        // Anchored at the end, as NPD matches: a pattern that only matches mid-line does not.
        assert!(first_match(&rules, "task docker:1 blocked for more than 5 seconds. and more").is_none());
        for (bad, why) in [
            (
                r#"{"source": "s", "rules": [{"type": "sometimes", "reason": "R", "pattern": "x"}]}"#,
                "neither temporary",
            ),
            (
                r#"{"source": "s", "rules": [{"type": "permanent", "reason": "R", "pattern": "x"}]}"#,
                "names its condition",
            ),
            (
                r#"{"source": "s", "rules": [{"type": "permanent", "condition": "C", "reason": "R", "pattern": "x"}]}"#,
                "not among",
            ),
            (r#"{"source": "s", "rules": [{"type": "temporary", "reason": "R", "pattern": "("}]}"#, "rules[0] (R)"),
            (r#"{"rules": []}"#, "missing field `source`"),
        ] {
            let e = parse_npd(bad, "t.json").unwrap_err().to_string();
            assert!(e.starts_with("t.json: ") && e.contains(why), "{bad}: {e}");
        }
        let e = parse_firebreak(
            "[[rule]]\nname = \"x\"\npattern = \"y\"\nkind = \"Nope\"\nseverity = \"info\"\n",
            "f.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("f.toml") && e.contains("Nope"), "{e}");
    }

    proptest::proptest! {
        /// Any rules file, NPD's or Firebreak's, is rules or an error naming the file.
        #[test]
        fn any_rules_file_parses_or_is_an_error(text in "\\PC{0,300}") {
            let _ = parse_npd(&text, "x.json");
            let _ = parse_firebreak(&text, "x.toml");
        }
    }
}
