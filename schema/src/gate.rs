use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::Error;

/// A risky operation that needs a permit from the gate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Operation {
    /// Take a node out of scheduling.
    Cordon,
    /// Evict a node's pods.
    Drain,
    /// Reboot a node.
    Reboot,
    /// Reinstall a node's operating system.
    Reinstall,
    /// Delete a node.
    Delete,
    /// One batch of a canary change.
    CanaryBatch,
}

impl Operation {
    /// Every operation, in a stable order.
    pub const ALL: [Operation; 6] = [
        Operation::Cordon,
        Operation::Drain,
        Operation::Reboot,
        Operation::Reinstall,
        Operation::Delete,
        Operation::CanaryBatch,
    ];

    /// The name used on the wire, in policies and in metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Cordon => "cordon",
            Operation::Drain => "drain",
            Operation::Reboot => "reboot",
            Operation::Reinstall => "reinstall",
            Operation::Delete => "delete",
            Operation::CanaryBatch => "canary_batch",
        }
    }
}

impl std::fmt::Display for Operation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Operation {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        Operation::ALL.into_iter().find(|o| o.as_str() == s).ok_or_else(|| {
            let all: Vec<&str> = Operation::ALL.iter().map(|o| o.as_str()).collect();
            Error::Invalid(format!("unknown operation `{s}` (one of {})", all.join(", ")))
        })
    }
}

/// What a bearer token may do. Each role may do what the roles before it may.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Read: status, permits, decisions, halts, metrics.
    Viewer,
    /// Ask for permits; renew and release its own.
    Requester,
    /// Release any permit, halt and resume, reset breakers.
    Operator,
    /// Reload the policy.
    Admin,
}

impl Role {
    /// The name used in token files.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Requester => "requester",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }
}

/// Where a rule, a halt or a breaker applies: everywhere, one cluster, or one failure domain
/// (a node label and its value, as `topology.kubernetes.io/zone=zone-a`) of one cluster.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Scope {
    /// The cluster; `None` for the whole fleet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    /// The failure domain within the cluster: (label key, value).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<(String, String)>,
}

/// [`Scope`]'s fields as they are read: from an object only (serde would take an array's items
/// for a struct's fields, in order), and no other field.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ScopeFields {
    #[serde(default)]
    cluster: Option<String>,
    #[serde(default)]
    domain: Option<(String, String)>,
}

impl<'de> Deserialize<'de> for Scope {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct Object;
        impl<'de> serde::de::Visitor<'de> for Object {
            type Value = Scope;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a scope: an object with an optional `cluster` and `domain`")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> std::result::Result<Scope, A::Error> {
                let f = ScopeFields::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                Ok(Scope { cluster: f.cluster, domain: f.domain })
            }
        }
        d.deserialize_map(Object)
    }
}

impl Scope {
    /// The whole fleet.
    pub fn global() -> Self {
        Self::default()
    }

    /// One cluster.
    pub fn cluster(cluster: &str) -> Self {
        Self { cluster: Some(cluster.into()), domain: None }
    }

    /// One failure domain of one cluster.
    pub fn domain(cluster: &str, key: &str, value: &str) -> Self {
        Self { cluster: Some(cluster.into()), domain: Some((key.into(), value.into())) }
    }

    /// Whether this scope contains `other` (the fleet contains every cluster, a cluster its
    /// domains).
    pub fn contains(&self, other: &Scope) -> bool {
        match (&self.cluster, &other.cluster) {
            (None, _) => true,
            (Some(a), Some(b)) if a == b => self.domain.is_none() || self.domain == other.domain,
            _ => false,
        }
    }

    /// Whether a request for a node of `cluster` with failure domains `domains` falls in it.
    pub fn covers(&self, cluster: &str, domains: &BTreeMap<String, String>) -> bool {
        match (&self.cluster, &self.domain) {
            (None, _) => true,
            (Some(c), None) => c == cluster,
            (Some(c), Some((k, v))) => c == cluster && domains.get(k) == Some(v),
        }
    }
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.cluster, &self.domain) {
            (None, _) => f.write_str("global"),
            (Some(c), None) => write!(f, "cluster={c}"),
            (Some(c), Some((k, v))) => write!(f, "cluster={c},{k}={v}"),
        }
    }
}

impl std::str::FromStr for Scope {
    type Err = Error;
    /// `global`, `cluster=C` or `cluster=C,LABEL=VALUE`.
    fn from_str(s: &str) -> Result<Self, Error> {
        let bad = || Error::Invalid(format!("scope `{s}`: expected `global`, `cluster=C` or `cluster=C,LABEL=VALUE`"));
        if s == "global" {
            return Ok(Scope::global());
        }
        let mut parts = s.splitn(2, ',');
        let cluster =
            parts.next().and_then(|p| p.strip_prefix("cluster=")).filter(|c| !c.is_empty()).ok_or_else(bad)?;
        match parts.next() {
            None => Ok(Scope::cluster(cluster)),
            Some(d) => {
                let (k, v) = d.split_once('=').filter(|(k, v)| !k.is_empty() && !v.is_empty()).ok_or_else(bad)?;
                Ok(Scope::domain(cluster, k, v))
            }
        }
    }
}

/// `POST /api/v1/permits` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PermitRequest {
    /// What is about to be done.
    pub operation: Operation,
    /// In which cluster.
    pub cluster: String,
    /// To which node, if the operation targets one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Who asks (component and workflow id), recorded with the decision.
    pub requester: String,
    /// The node's failure domains (label key → value) for the labels the policy names, so that
    /// per-domain budgets apply.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub domains: BTreeMap<String, String>,
}

/// The gate's decision on a [`PermitRequest`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PermitResponse {
    /// Whether the operation may proceed.
    pub granted: bool,
    /// Id to release the permit with; present when granted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub permit_id: Option<Uuid>,
    /// Why, with the measured value and the threshold.
    pub reason: String,
    /// The rule that denied the request (`in_flight`, `in_flight_percent`, `rate`,
    /// `unhealthy_ratio`, `breaker`, `window`, `freeze`, `halt`, `no_data`, `policy`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<String>,
    /// The scope of that rule (`global`, `cluster=c1`, `cluster=c1,topology.kubernetes.io/zone=a`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    /// The value measured against the limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub measured: Option<f64>,
    /// The limit's threshold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<f64>,
    /// When to ask again; present when denied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_s: Option<u64>,
    /// When a granted permit lapses unless released first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,
}

/// Where a permit is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PermitState {
    /// Held: it counts against its budgets until released or expired.
    Active,
    /// Given back by its holder or an operator.
    Released,
    /// Its holder stopped renewing it: abandoned.
    Expired,
}

impl PermitState {
    /// Every state, in a permit's order.
    pub const ALL: [PermitState; 3] = [PermitState::Active, PermitState::Released, PermitState::Expired];

    /// The name stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            PermitState::Active => "active",
            PermitState::Released => "released",
            PermitState::Expired => "expired",
        }
    }
}

/// A permit, as the gate keeps and shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Permit {
    /// Permit id.
    pub id: Uuid,
    /// Operation.
    pub operation: Operation,
    /// Cluster.
    pub cluster: String,
    /// Node, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// The node's failure domains.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub domains: BTreeMap<String, String>,
    /// Who asked (component and workflow).
    pub requester: String,
    /// The token that holds it (its name).
    pub holder: String,
    /// Where it is in its life.
    pub state: PermitState,
    /// When it was granted.
    pub granted_at: DateTime<Utc>,
    /// When it lapses unless renewed.
    pub expires_at: DateTime<Utc>,
    /// When it ended (released or expired).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<DateTime<Utc>>,
}

/// `POST /api/v1/halts` body: stop operations in a scope until an operator resumes them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HaltRequest {
    /// Where.
    pub scope: Scope,
    /// Which operations; empty for all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub operations: Vec<Operation>,
    /// Why (shown with every denial it causes).
    pub reason: String,
}

/// A halt: operations stopped in a scope, with who and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Halt {
    /// Halt id.
    pub id: Uuid,
    /// Where.
    pub scope: Scope,
    /// Which operations; empty for all.
    #[serde(default)]
    pub operations: Vec<Operation>,
    /// Why.
    pub reason: String,
    /// Who (token name).
    pub by: String,
    /// Since when.
    pub at: DateTime<Utc>,
    /// When it was lifted, if it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resumed_at: Option<DateTime<Utc>>,
    /// Who lifted it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resumed_by: Option<String>,
    /// What raised it when no operator did: `rule:<health rule>` or `change:<id>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// The signals measured when it was raised.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub signals: Vec<crate::Measurement>,
}

impl Halt {
    /// Whether it stops `operation`.
    pub fn stops(&self, operation: Operation) -> bool {
        self.operations.is_empty() || self.operations.contains(&operation)
    }
}

/// A breaker trip: too many grants of an operation in a scope within a window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BreakerTrip {
    /// The operation.
    pub operation: Operation,
    /// Where.
    pub scope: Scope,
    /// When it tripped.
    pub tripped_at: DateTime<Utc>,
    /// Why, with the measured grants, the limit and the window.
    pub reason: String,
    /// When it closes by itself (the policy's cooldown); `None`: latched until an operator
    /// resets it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<DateTime<Utc>>,
    /// When an operator reset it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reset_at: Option<DateTime<Utc>>,
    /// Who reset it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reset_by: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scope_is_read_from_an_object_only() {
        let s: Scope = serde_json::from_str(r#"{"cluster":"c1","domain":["rack","r7"]}"#).unwrap();
        assert_eq!(s, Scope::domain("c1", "rack", "r7"));
        assert_eq!(serde_json::from_str::<Scope>("{}").unwrap(), Scope::global());
        assert_eq!(serde_json::from_str::<Scope>(r#"{"cluster":null}"#).unwrap(), Scope::global());
        for bad in [r#"[null, null]"#, r#"["c1"]"#, r#"{"cluster":"c1","zone":"a"}"#, r#""global""#, "null"] {
            assert!(serde_json::from_str::<Scope>(bad).is_err(), "{bad}");
        }
        let s = Scope::domain("c1", "topology.kubernetes.io/zone", "a");
        assert_eq!(serde_json::from_str::<Scope>(&serde_json::to_string(&s).unwrap()).unwrap(), s);
    }
}
