//! fleet-sim: simulated Kubernetes clusters that speak the real Kubernetes REST API (JSON over
//! HTTP on 127.0.0.1), so Firebreak's detector and remediator — and `kubectl` — talk to them
//! exactly as they would to a kube-apiserver.
//!
//! It owns: the API surface Firebreak and kubectl need (discovery, nodes, pods with eviction and
//! PodDisruptionBudgets, leases, events, watches with resourceVersion), a kubelet-like simulation
//! of every node (status heartbeats, leases, reboots, a host-root directory with a `/dev/kmsg`
//! file and `/proc/stat`), ReplicaSet/DaemonSet-like controllers that recreate evicted pods, and
//! a fault injector that writes real kernel log lines or stops a node's heartbeats.
//!
//! Node software is a label, `sim.firebreak.io/runtime=<version>` (every node starts on
//! [`INITIAL_RUNTIME`]). A version marked unhealthy through the control API
//! (`POST /fleet-sim/v1/runtime-versions/{v}` with `{"healthy": false}`, optionally
//! `"failure": "crash_loop" | "never_ready"`) makes the pods that start on a node carrying it fail
//! as they would on a real node: Running but never Ready, their container in `CrashLoopBackOff`
//! with a rising `restartCount`, or running and never passing readiness. A steady `churn`
//! workload creates pods all the time ([`Timings::churn_per_minute`]), so the pod start success
//! rate moves when such nodes appear.
//!
//! A node is rebooted, and its components restarted, as on a real node — by the node's own
//! actuator (Firebreak's agent), which calls [`Cluster::reboot`] and [`Cluster::restart`]
//! where a real one runs `systemctl`. A rebooted node goes NotReady for [`Timings::reboot`]
//! and comes back with a new `status.nodeInfo.bootID`, a fresh kernel log and no injected fault
//! but those that survive a reboot ([`Fault::BadDimm`]); a restarted kubelet posts status again
//! (after [`Fault::KubeletOom`]).
//!
//! A node is reinstalled as the tools a remediator asks would do it: a `batch/v1` Job annotated
//! [`REIMAGE_NODE_ANNOTATION`] re-images that node when it completes (same name, new boot, its
//! disk state wiped; [`Cluster::fail_reimaging`] makes it fail instead), and once
//! [`Cluster::adopt_machines`] has made the nodes Cluster API Machines, deleting a Machine
//! replaces its node with a new one of a new name. [`Apps::Dense`] gives every node one replica
//! of each of many apps under disruption budgets, for a mass drain.
//!
//! Rooms: `api` (the REST face), `store` (objects, resourceVersions, watch history), `cluster`
//! (one cluster's state and loop, fault injection, audit log), `kubelet` (node lifecycle and
//! pod start), `controllers` (workloads and scheduling), `pdb` (disruption budgets), `reimage`
//! (reinstall Jobs, Cluster API Machines), `host`
//! (a node's host-root files), `faults`, `patch`, `select`, `resources`.

mod api;
mod cluster;
mod controllers;
mod faults;
mod host;
mod kubelet;
mod patch;
mod pdb;
mod reimage;
mod resources;
mod select;
mod store;
mod validate;

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use chrono::{DateTime, SecondsFormat, Utc};
pub use cluster::{AuditEntry, Cluster};
pub use faults::Fault;
pub use kubelet::{INITIAL_RUNTIME, RUNTIME_LABEL, RuntimeFailure};
pub use reimage::{MACHINE_ANNOTATION, MACHINE_NAMESPACE_ANNOTATION, REIMAGE_NODE_ANNOTATION};
use serde_json::Value;

/// Everything that can go wrong in the simulator; API errors map to Kubernetes `Status` replies.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// 404.
    #[error("{0} \"{1}\" not found")]
    NotFound(String, String),
    /// 409.
    #[error("{0}")]
    Conflict(String),
    /// 400.
    #[error("{0}")]
    BadRequest(String),
    /// 410: a watch asked for a resourceVersion older than the kept history.
    #[error("{0}")]
    Gone(String),
    /// 415.
    #[error(
        "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json (got {0})"
    )]
    UnsupportedMediaType(String),
    /// 422.
    #[error("{0}")]
    Unprocessable(String),
    /// 429: an eviction would violate a PodDisruptionBudget (named).
    #[error("Cannot evict pod as it would violate the pod's disruption budget.")]
    TooManyRequests(String),
    /// 405.
    #[error("the server does not allow this method on the requested resource")]
    MethodNotAllowed,
    /// Writing a kubeconfig or a node's host-root files failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How fast simulated time goes, and how busy the workload is.
#[derive(Debug, Clone, Copy)]
pub struct Timings {
    /// Period of node status heartbeats and lease renewals.
    pub heartbeat: Duration,
    /// Silence after which the node controller marks a node `Unknown`.
    pub unreachable_after: Duration,
    /// `leaseDurationSeconds` of the node Leases in `kube-node-lease` (whole seconds; a real
    /// kubelet's is 40 s, and its node controller's grace period 50 s).
    pub lease_duration: Duration,
    /// How long a reboot keeps a node NotReady.
    pub reboot: Duration,
    /// How long a scheduled pod takes to become Running and Ready.
    pub pod_start: Duration,
    /// Default grace period of the simulated pods.
    pub pod_grace: Duration,
    /// Pods of the `churn` workload created per minute (steady: each lives [`Timings::pod_lifetime`]
    /// and is replaced), so that the pod start success rate is always measurable. 0: none.
    pub churn_per_minute: u32,
    /// How long a `churn` pod lives, on average, before it is deleted and replaced (each pod
    /// between half and one and a half times this, so that starts are spread evenly).
    pub pod_lifetime: Duration,
    /// How often a crash-looping container restarts.
    pub crash_backoff: Duration,
    /// How often the kubelets and controllers of a cluster run: the granularity of every
    /// duration above. Each run looks at every node and pod of the cluster, so a large fleet
    /// wants a coarser one.
    pub tick: Duration,
}

impl Default for Timings {
    fn default() -> Self {
        Self {
            heartbeat: Duration::from_millis(1000),
            unreachable_after: Duration::from_secs(3),
            lease_duration: Duration::from_secs(40),
            reboot: Duration::from_secs(3),
            pod_start: Duration::from_millis(1500),
            pod_grace: Duration::from_secs(1),
            churn_per_minute: 120,
            pod_lifetime: Duration::from_secs(30),
            crash_backoff: Duration::from_secs(2),
            tick: Duration::from_millis(200),
        }
    }
}

/// What to simulate.
#[derive(Debug, Clone)]
pub struct FleetConfig {
    /// Kubeconfigs and host roots go under `<data_dir>/clusters/<cluster>/`.
    pub data_dir: PathBuf,
    /// Number of clusters, named `c1`, `c2`, ...
    pub clusters: usize,
    /// Nodes per cluster, named `<cluster>-node-001`, ...
    pub nodes_per_cluster: usize,
    /// Simulated durations.
    pub timings: Timings,
    /// The replicated apps every cluster runs.
    pub apps: Apps,
}

/// The replicated apps of a simulated cluster, besides the `churn` workload and the
/// `node-exporter` DaemonSet that every cluster has.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Apps {
    /// `web`, 1.25 replicas per node under a PodDisruptionBudget that allows one disruption at
    /// a time, and `batch`, half a replica per node with no budget: few pods per node, one tight
    /// budget, as the end-to-end tests want it.
    #[default]
    Default,
    /// `per_node` Deployments `app-01`, `app-02`, ..., each with one replica per node and a
    /// PodDisruptionBudget that lets `max_unavailable_percent` of its replicas be down at once
    /// (at least one): a dense node, as a mass drain meets it.
    Dense {
        /// Apps, so pods per node.
        per_node: usize,
        /// The share of each app its budget lets be disrupted at once.
        max_unavailable_percent: u32,
    },
}

/// A running fleet of simulated clusters.
pub struct Fleet {
    clusters: Vec<Arc<Cluster>>,
    cancel: tokio_util::sync::CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Fleet {
    /// Creates the clusters, binds each API server on 127.0.0.1 (a free port) and writes the
    /// kubeconfigs and host roots.
    pub async fn start(cfg: FleetConfig) -> Result<Fleet> {
        let cancel = tokio_util::sync::CancellationToken::new();
        let mut clusters = Vec::new();
        let mut tasks = Vec::new();
        for i in 1..=cfg.clusters {
            let name = format!("c{i}");
            let dir = cfg.data_dir.join("clusters").join(&name);
            let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
                .await
                .map_err(|source| Error::Io { path: dir.clone(), source })?;
            let addr = listener.local_addr().map_err(|source| Error::Io { path: dir.clone(), source })?;
            let cluster =
                Arc::new(Cluster::new(name, dir, addr, cfg.nodes_per_cluster, cfg.timings, cfg.apps, cancel.clone())?);
            tasks.push(tokio::spawn(api::serve(cluster.clone(), listener, cancel.clone())));
            tasks.push(tokio::spawn(cluster::run(cluster.clone(), cancel.clone())));
            clusters.push(cluster);
        }
        Ok(Fleet { clusters, cancel, tasks })
    }

    /// The clusters.
    pub fn clusters(&self) -> &[Arc<Cluster>] {
        &self.clusters
    }

    /// A cluster by name.
    pub fn cluster(&self, name: &str) -> Option<&Arc<Cluster>> {
        self.clusters.iter().find(|c| c.name() == name)
    }

    /// Stops the API servers and simulation loops.
    pub async fn shutdown(self) {
        self.cancel.cancel();
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

pub(crate) fn time_now_rfc3339() -> String {
    fmt_time(Utc::now())
}

/// RFC 3339 with whole seconds, as the API server writes `metav1.Time`.
pub(crate) fn fmt_time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// RFC 3339 with microseconds, as the API server writes `metav1.MicroTime`.
pub(crate) fn fmt_micro_time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// `metav1.Time` of now plus `d`.
pub(crate) fn now_plus(d: Duration) -> String {
    fmt_time(Utc::now() + chrono::TimeDelta::from_std(d).unwrap_or_default())
}

/// The string at a JSON pointer, or "".
pub(crate) fn str_at(v: &Value, ptr: &str) -> String {
    v.at(ptr).and_then(Value::as_str).unwrap_or_default().to_owned()
}

/// [`Value::pointer`] without its allocations. serde_json unescapes every token of a pointer
/// into two new strings (`~1`, `~0`) before it looks it up: that was more than half of the
/// simulation's tick at 1,000 nodes and 16,000 pods, under the cluster's lock. A pointer with an
/// escape in it takes serde_json's way.
pub(crate) trait At {
    /// The value at a JSON pointer (RFC 6901), as [`Value::pointer`] finds it.
    fn at(&self, ptr: &str) -> Option<&Value>;
}

impl At for Value {
    fn at(&self, ptr: &str) -> Option<&Value> {
        if ptr.contains('~') {
            return self.pointer(ptr);
        }
        if ptr.is_empty() {
            return Some(self);
        }
        ptr.strip_prefix('/')?.split('/').try_fold(self, |v, token| match v {
            Value::Object(m) => m.get(token),
            // An index as serde_json reads one: no sign, no leading zero.
            Value::Array(a) if !token.starts_with('+') && (token == "0" || !token.starts_with('0')) => {
                token.parse::<usize>().ok().and_then(|i| a.get(i))
            }
            _ => None,
        })
    }
}

#[cfg(test)]
mod at_tests {
    use super::At;

    #[test]
    fn at_finds_what_pointer_finds() {
        let v = serde_json::json!({
            "metadata": {"name": "p", "labels": {"a/b": "1", "c~d": "2", "": "3"}},
            "spec": {"containers": [{"name": "main"}, {"name": "side"}]},
            "0": "key",
        });
        for ptr in [
            "",
            "/",
            "/metadata",
            "/metadata/name",
            "/metadata/labels/a~1b",
            "/metadata/labels/c~0d",
            "/metadata/labels/",
            "/spec/containers/0/name",
            "/spec/containers/1/name",
            "/spec/containers/2",
            "/spec/containers/01",
            "/spec/containers/+1",
            "/spec/containers/-",
            "/spec/containers/x",
            "/metadata/name/deeper",
            "/0",
            "metadata",
            "/nothing",
            "//",
        ] {
            assert_eq!(v.at(ptr), v.pointer(ptr), "{ptr:?}");
        }
    }
}
