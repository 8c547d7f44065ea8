//! The resources a simulated cluster serves, and the discovery documents that describe them.

use serde_json::{Value, json};

/// A served resource type.
#[derive(Debug)]
pub struct Resource {
    /// URL plural, e.g. `pods`.
    pub plural: &'static str,
    /// Kind, e.g. `Pod`.
    pub kind: &'static str,
    /// API group, empty for the core group.
    pub group: &'static str,
    /// API version.
    pub version: &'static str,
    /// Whether objects live in namespaces.
    pub namespaced: bool,
    /// kubectl short names.
    pub short_names: &'static [&'static str],
    /// Subresources (`status`, `eviction`).
    pub subresources: &'static [&'static str],
}

impl Resource {
    /// `v1` or `group/version`.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() { self.version.to_owned() } else { format!("{}/{}", self.group, self.version) }
    }

    /// The lowercase kind, used in error messages.
    pub fn singular(&self) -> String {
        self.kind.to_lowercase()
    }

    /// Whether objects have a `status` that only the status subresource changes.
    pub fn has_status(&self) -> bool {
        self.subresources.contains(&"status")
    }
}

/// Namespaces.
pub const NAMESPACES: Resource = Resource {
    plural: "namespaces",
    kind: "Namespace",
    group: "",
    version: "v1",
    namespaced: false,
    short_names: &["ns"],
    subresources: &["status"],
};
/// Nodes.
pub const NODES: Resource = Resource {
    plural: "nodes",
    kind: "Node",
    group: "",
    version: "v1",
    namespaced: false,
    short_names: &["no"],
    subresources: &["status"],
};
/// Pods.
pub const PODS: Resource = Resource {
    plural: "pods",
    kind: "Pod",
    group: "",
    version: "v1",
    namespaced: true,
    short_names: &["po"],
    subresources: &["status", "eviction"],
};
/// Core events.
pub const EVENTS: Resource = Resource {
    plural: "events",
    kind: "Event",
    group: "",
    version: "v1",
    namespaced: true,
    short_names: &["ev"],
    subresources: &[],
};
/// Node leases.
pub const LEASES: Resource = Resource {
    plural: "leases",
    kind: "Lease",
    group: "coordination.k8s.io",
    version: "v1",
    namespaced: true,
    short_names: &[],
    subresources: &[],
};
/// PodDisruptionBudgets.
pub const PDBS: Resource = Resource {
    plural: "poddisruptionbudgets",
    kind: "PodDisruptionBudget",
    group: "policy",
    version: "v1",
    namespaced: true,
    short_names: &["pdb"],
    subresources: &["status"],
};

/// ConfigMaps (other teams' components write readiness gates in them).
pub const CONFIGMAPS: Resource = Resource {
    plural: "configmaps",
    kind: "ConfigMap",
    group: "",
    version: "v1",
    namespaced: true,
    short_names: &["cm"],
    subresources: &[],
};

/// Deployments: the owners of the workloads' ReplicaSets.
pub const DEPLOYMENTS: Resource = Resource {
    plural: "deployments",
    kind: "Deployment",
    group: "apps",
    version: "v1",
    namespaced: true,
    short_names: &["deploy"],
    subresources: &["status"],
};
/// ReplicaSets: the controllers of the workloads' pods.
pub const REPLICASETS: Resource = Resource {
    plural: "replicasets",
    kind: "ReplicaSet",
    group: "apps",
    version: "v1",
    namespaced: true,
    short_names: &["rs"],
    subresources: &["status"],
};
/// DaemonSets: the controller of the per-node pods.
pub const DAEMONSETS: Resource = Resource {
    plural: "daemonsets",
    kind: "DaemonSet",
    group: "apps",
    version: "v1",
    namespaced: true,
    short_names: &["ds"],
    subresources: &["status"],
};

/// Jobs: re-imaging tooling run per node (the remediator's reinstall Job).
pub const JOBS: Resource = Resource {
    plural: "jobs",
    kind: "Job",
    group: "batch",
    version: "v1",
    namespaced: true,
    short_names: &[],
    subresources: &["status"],
};
/// Cluster API Machines: the machines behind the nodes, when a cluster is built with Cluster
/// API (a self-hosted management cluster: the Machines live beside their nodes).
pub const MACHINES: Resource = Resource {
    plural: "machines",
    kind: "Machine",
    group: "cluster.x-k8s.io",
    version: "v1beta1",
    namespaced: true,
    short_names: &["ma"],
    subresources: &["status"],
};

/// Everything served.
pub const ALL: [&Resource; 12] = [
    &NAMESPACES,
    &NODES,
    &PODS,
    &EVENTS,
    &LEASES,
    &PDBS,
    &CONFIGMAPS,
    &DEPLOYMENTS,
    &REPLICASETS,
    &DAEMONSETS,
    &JOBS,
    &MACHINES,
];

/// Finds a resource by group, version and plural.
pub fn find(group: &str, version: &str, plural: &str) -> Option<&'static Resource> {
    ALL.into_iter().find(|r| r.group == group && r.version == version && r.plural == plural)
}

/// The Kubernetes version the simulator claims to be.
pub fn version() -> Value {
    json!({
        "major": "1", "minor": "33", "gitVersion": "v1.33.0-firebreak-sim",
        "gitCommit": "0000000000000000000000000000000000000000", "gitTreeState": "clean",
        "buildDate": "2026-01-01T00:00:00Z", "goVersion": "go1.24", "compiler": "gc",
        "platform": "linux/amd64"
    })
}

/// `GET /api`.
pub fn core_versions() -> Value {
    json!({
        "kind": "APIVersions", "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}]
    })
}

/// `GET /apis`.
pub fn groups() -> Value {
    let mut groups: Vec<(&str, &str)> =
        ALL.iter().filter(|r| !r.group.is_empty()).map(|r| (r.group, r.version)).collect();
    groups.dedup();
    let groups: Vec<Value> = groups
        .into_iter()
        .map(|(g, v)| {
            let gv = json!({"groupVersion": format!("{g}/{v}"), "version": v});
            json!({"name": g, "versions": [gv.clone()], "preferredVersion": gv})
        })
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// `GET /api/v1` or `GET /apis/{group}/{version}`; `None` for an unknown group version.
pub fn resource_list(group: &str, version: &str) -> Option<Value> {
    let mut out = Vec::new();
    for r in ALL.iter().filter(|r| r.group == group && r.version == version) {
        let verbs = ["create", "delete", "get", "list", "patch", "update", "watch"];
        out.push(json!({
            "name": r.plural, "singularName": r.kind.to_lowercase(), "namespaced": r.namespaced,
            "kind": r.kind, "verbs": verbs, "shortNames": r.short_names,
        }));
        for sub in r.subresources {
            let (kind, verbs, group, version): (&str, &[&str], &str, &str) = match *sub {
                "eviction" => ("Eviction", &["create"], "policy", "v1"),
                _ => (r.kind, &["get", "patch", "update"], r.group, r.version),
            };
            out.push(json!({
                "name": format!("{}/{sub}", r.plural), "singularName": "", "namespaced": r.namespaced,
                "group": group, "version": version, "kind": kind, "verbs": verbs,
            }));
        }
    }
    if out.is_empty() {
        return None;
    }
    let gv = if group.is_empty() { version.to_owned() } else { format!("{group}/{version}") };
    Some(json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": out}))
}
