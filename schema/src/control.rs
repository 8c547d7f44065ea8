//! Operators' instructions to a cluster's remediator, given through the event center's API
//! (an operator token) and carried on [`crate::control_topic`] (the cluster's), keyed by
//! `<cluster>/<node>`: the remediator of that cluster carries them out and records them in the
//! node's workflow.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{CloudEvent, Error, Result};

/// The longest `by` and `reason` accepted.
pub const MAX_WORDS: usize = 1000;

/// Clear a node's escalation: its repair ladder starts over, and its next fault may start work
/// on it again (the node stays cordoned until someone uncordons it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClearEscalation {
    /// This instruction.
    pub id: Uuid,
    /// Cluster name.
    pub cluster: String,
    /// Node name.
    pub node: String,
    /// Who asked (the token's name).
    pub by: String,
    /// Why, in their words.
    pub reason: String,
    /// When they asked.
    pub at: DateTime<Utc>,
}

impl CloudEvent for ClearEscalation {
    const TYPE: &'static str = "io.firebreak.clear-escalation.v1";
    fn ce_id(&self) -> String {
        self.id.to_string()
    }
    fn ce_source(&self) -> String {
        "/firebreak/event-center".into()
    }
    fn ce_time(&self) -> DateTime<Utc> {
        self.at
    }
    fn key(&self) -> String {
        format!("{}/{}", self.cluster, self.node)
    }
    fn validate(&self) -> Result<()> {
        // The cluster names a topic (`control_topic`), and the gate knows clusters by such names
        // (stricter than any event's names).
        for (what, v) in [("cluster", &self.cluster), ("node", &self.node)] {
            if !crate::names::is_dns1123_subdomain(v) {
                return Err(Error::Invalid(format!("{what} `{}` is not a DNS-1123 subdomain", v.escape_debug())));
            }
        }
        for (what, v) in [("by", &self.by), ("reason", &self.reason)] {
            if v.trim().is_empty() || !crate::names::is_plain_text(v, MAX_WORDS) {
                return Err(Error::Invalid(format!(
                    "{what} is empty, longer than {MAX_WORDS} characters or has control or bidirectional-override characters"
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clear_round_trips_and_bad_ones_are_refused() {
        let ok = ClearEscalation {
            id: Uuid::now_v7(),
            cluster: "c1".into(),
            node: "c1-node-001".into(),
            by: "alice".into(),
            reason: "DIMM replaced, ticket INC-42 closed".into(),
            at: Utc::now(),
        };
        let wire = crate::encode(&ok).unwrap();
        assert_eq!(wire.key, "c1/c1-node-001");
        let headers = wire.headers.iter().map(|(k, v)| (k.as_str(), Some(v.as_bytes())));
        let back: ClearEscalation = crate::decode(headers, Some(&wire.payload)).unwrap();
        assert_eq!(back, ok);
        for bad in [
            ClearEscalation { node: "Not_A_Node".into(), ..ok.clone() },
            ClearEscalation { node: String::new(), ..ok.clone() },
            ClearEscalation { cluster: "c\u{0}1".into(), ..ok.clone() },
            ClearEscalation { cluster: "Prod_East".into(), ..ok.clone() },
            ClearEscalation { reason: "ok \u{202e}kO".into(), ..ok.clone() },
            ClearEscalation { reason: " ".into(), ..ok.clone() },
            ClearEscalation { reason: "x".repeat(MAX_WORDS + 1), ..ok.clone() },
            ClearEscalation { by: "a\u{1b}[31m".into(), ..ok.clone() },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }
}
