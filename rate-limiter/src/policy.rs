//! The gate's policy: per operation, a rate (GCRA) and a cap on concurrent permits per cluster.

use std::{collections::BTreeMap, path::Path, time::Duration};

use firebreak_schema::Operation;
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Limits for one operation, applied per cluster.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Sustained permits per minute (GCRA).
    pub rate_per_minute: u32,
    /// Permits that may be granted at once before the rate applies.
    pub burst: u32,
    /// Permits of this operation held at once in one cluster.
    pub max_concurrent_per_cluster: u32,
}

/// The whole policy, as read from a TOML file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// How long a permit lives unless released first.
    #[serde(with = "serde_with_humantime", default = "default_ttl")]
    pub permit_ttl: Duration,
    /// Limits by operation; an operation without an entry is denied.
    pub operations: BTreeMap<Operation, Limits>,
}

fn default_ttl() -> Duration {
    Duration::from_secs(600)
}

impl Default for Policy {
    /// The built-in policy: cautious for destructive operations.
    fn default() -> Self {
        let l = |rate_per_minute, burst, max_concurrent_per_cluster| Limits {
            rate_per_minute,
            burst,
            max_concurrent_per_cluster,
        };
        Policy {
            permit_ttl: default_ttl(),
            operations: BTreeMap::from([
                (Operation::Cordon, l(30, 5, 3)),
                (Operation::Drain, l(30, 5, 3)),
                (Operation::Reboot, l(20, 3, 3)),
                (Operation::Reinstall, l(5, 1, 1)),
                (Operation::Delete, l(5, 1, 1)),
                (Operation::CanaryBatch, l(10, 1, 1)),
            ]),
        }
    }
}

impl Policy {
    /// Reads and validates a TOML policy file.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io { path: path.to_owned(), source })?;
        Self::parse(&text).map_err(|e| match e {
            Error::Policy(m) => Error::Policy(format!("{}: {m}", path.display())),
            other => other,
        })
    }

    /// Parses and validates a TOML policy.
    pub fn parse(text: &str) -> Result<Self> {
        let p: Policy = toml::from_str(text).map_err(|e| Error::Policy(e.to_string()))?;
        for (op, l) in &p.operations {
            if l.rate_per_minute == 0 || l.burst == 0 {
                return Err(Error::Policy(format!("{op}: rate_per_minute and burst must be at least 1")));
            }
        }
        if p.permit_ttl.is_zero() || p.permit_ttl > Duration::from_secs(86_400) {
            return Err(Error::Policy("permit_ttl must be between 1s and 24h".into()));
        }
        Ok(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_policy_file_and_rejects_bad_ones() {
        let p = Policy::parse(
            "permit_ttl = \"2m\"\n[operations.cordon]\nrate_per_minute = 6\nburst = 2\nmax_concurrent_per_cluster = 1\n",
        )
        .unwrap();
        assert_eq!(p.permit_ttl, Duration::from_secs(120));
        assert_eq!(p.operations[&Operation::Cordon].max_concurrent_per_cluster, 1);
        assert!(!p.operations.contains_key(&Operation::Reboot));
        assert!(
            Policy::parse("[operations.cordon]\nrate_per_minute = 0\nburst = 1\nmax_concurrent_per_cluster = 1")
                .is_err()
        );
        assert!(
            Policy::parse("[operations.explode]\nrate_per_minute = 1\nburst = 1\nmax_concurrent_per_cluster = 1")
                .is_err()
        );
        assert!(Policy::parse("typo = 1\n[operations]").is_err());
    }
}
