use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

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

/// `POST /api/v1/permits` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
    /// The limit that denied the request (`concurrency`, `rate`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<String>,
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
