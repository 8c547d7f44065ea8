//! One simulated cluster: its store, its nodes' kubelets, its controllers and the fault injector.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    io::Write,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use serde::Serialize;
use serde_json::{Value, json};
use time::OffsetDateTime;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::{
    Error, Result, Timings, fmt_micro_time, fmt_time,
    resources::{EVENTS, LEASES, NAMESPACES, NODES, PDBS, PODS},
    select::Selector,
    store::Store,
    time_now_rfc3339,
};

/// Annotation that asks the simulated node to reboot.
const REBOOT_ANNOTATION: &str = "firebreak.io/reboot-requested";
const NOT_READY_TAINT: &str = "node.kubernetes.io/not-ready";
const UNREACHABLE_TAINT: &str = "node.kubernetes.io/unreachable";

/// A fault the injector can cause.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, Serialize)]
pub enum Fault {
    /// An EDAC uncorrectable memory error in the kernel log.
    MemoryUncorrectable,
    /// An EXT4 error followed by a read-only remount.
    ReadonlyFilesystem,
    /// A hung task report.
    KernelHung,
    /// The kubelet stops posting status and renewing its lease.
    NotReady,
}

impl Fault {
    /// Every injectable fault.
    pub const ALL: [Fault; 4] =
        [Fault::MemoryUncorrectable, Fault::ReadonlyFilesystem, Fault::KernelHung, Fault::NotReady];

    /// Kernel log lines (priority, text) the fault writes.
    fn kmsg_lines(self) -> Vec<(u8, String)> {
        match self {
            Fault::MemoryUncorrectable => vec![
                (1, "mce: [Hardware Error]: Machine check events logged".into()),
                (1, "EDAC MC0: 1 UE memory read error on CPU_SrcID#0_MC#0_Chan#1_DIMM#0 (channel:1 slot:0 page:0x3fe12 offset:0x0 grain:32 syndrome:0x0)".into()),
            ],
            Fault::ReadonlyFilesystem => vec![
                (3, "EXT4-fs error (device sda1): ext4_journal_check_start:83: Detected aborted journal".into()),
                (2, "EXT4-fs (sda1): Remounting filesystem read-only".into()),
            ],
            Fault::KernelHung => vec![
                (3, "INFO: task kworker/u16:2:4127 blocked for more than 120 seconds.".into()),
                (3, "      Not tainted 6.1.0-firebreak-sim #1".into()),
            ],
            Fault::NotReady => Vec::new(),
        }
    }
}

/// One mutating request, as an API server audit log records it.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct AuditEntry {
    /// RFC 3339 time.
    pub time: String,
    /// `create`, `update`, `patch` or `delete`.
    pub verb: String,
    /// Resource plural.
    pub resource: String,
    /// Subresource, if any (`status`, `eviction`).
    pub subresource: String,
    /// Namespace, empty for cluster-scoped objects.
    pub namespace: String,
    /// Object name.
    pub name: String,
    /// HTTP status code of the reply.
    pub code: u16,
    /// Client's User-Agent.
    pub user_agent: String,
}

struct NodeSim {
    host_root: PathBuf,
    seq: u64,
    boot_id: String,
    /// Boot time, seconds since the epoch (as `btime` in `/proc/stat`).
    btime: i64,
    heartbeating: bool,
    last_heartbeat: Instant,
    reboot_done_at: Option<Instant>,
}

struct Workload {
    name: &'static str,
    namespace: &'static str,
    replicas: usize,
}

pub(crate) struct State {
    pub(crate) store: Store,
    nodes: BTreeMap<String, NodeSim>,
    pub(crate) audit: Vec<AuditEntry>,
    pending_ready: BTreeMap<(String, String), Instant>,
}

/// A simulated cluster.
pub struct Cluster {
    name: String,
    dir: PathBuf,
    addr: SocketAddr,
    timings: Timings,
    workloads: Vec<Workload>,
    state: Mutex<State>,
    /// Cancelled when the fleet stops; open watches end then.
    pub(crate) shutdown: CancellationToken,
}

impl Cluster {
    pub(crate) fn new(
        name: String,
        dir: PathBuf,
        addr: SocketAddr,
        nodes: usize,
        timings: Timings,
        shutdown: CancellationToken,
    ) -> Result<Self> {
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| Error::Io { path, source }
        };
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        let kubeconfig = dir.join("kubeconfig");
        std::fs::write(&kubeconfig, kubeconfig_yaml(&name, addr)).map_err(io(&kubeconfig))?;
        let web = nodes + nodes / 4;
        let cluster = Cluster {
            workloads: vec![
                Workload { name: "web", namespace: "default", replicas: web },
                Workload { name: "batch", namespace: "default", replicas: nodes / 2 },
            ],
            name,
            dir,
            addr,
            timings,
            shutdown,
            state: Mutex::new(State {
                store: Store::new(),
                nodes: BTreeMap::new(),
                audit: Vec::new(),
                pending_ready: BTreeMap::new(),
            }),
        };
        cluster.bootstrap(nodes)?;
        Ok(cluster)
    }

    /// Cluster name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Path of the kubeconfig that reaches this cluster.
    pub fn kubeconfig_path(&self) -> PathBuf {
        self.dir.join("kubeconfig")
    }

    /// The host-root directory of a node (what its agent reads).
    pub fn host_root(&self, node: &str) -> PathBuf {
        self.dir.join("nodes").join(node)
    }

    /// Node names, sorted.
    pub fn node_names(&self) -> Vec<String> {
        self.lock().nodes.keys().cloned().collect()
    }

    /// The audit log of mutating API requests so far.
    pub fn audit(&self) -> Vec<AuditEntry> {
        self.lock().audit.clone()
    }

    /// Injects a fault into a node.
    pub fn inject(&self, node: &str, fault: Fault) -> Result<()> {
        let mut st = self.lock();
        let sim = st.nodes.get_mut(node).ok_or_else(|| Error::NotFound("node".into(), node.to_owned()))?;
        if fault == Fault::NotReady {
            sim.heartbeating = false;
        }
        let lines = fault.kmsg_lines();
        append_kmsg(sim, &lines)?;
        tracing::info!(cluster = %self.name, node, ?fault, "fault injected");
        Ok(())
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn bootstrap(&self, nodes: usize) -> Result<()> {
        let mut st = self.lock();
        for ns in ["default", "kube-system", "kube-node-lease"] {
            st.store.create(&NAMESPACES, json!({"metadata": {"name": ns}, "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}}))?;
        }
        for i in 1..=nodes {
            let name = format!("{}-node-{i:03}", self.name);
            let host_root = self.host_root(&name);
            let mut sim = NodeSim {
                host_root,
                seq: 0,
                boot_id: String::new(),
                btime: 0,
                heartbeating: true,
                last_heartbeat: Instant::now(),
                reboot_done_at: None,
            };
            boot(&mut sim)?;
            let zone = ["a", "b", "c"][i % 3];
            st.store.create(&NODES, json!({
                "metadata": {"name": name, "labels": {
                    "kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": "amd64", "node-role.kubernetes.io/worker": "",
                    "topology.kubernetes.io/zone": format!("zone-{zone}")}, "annotations": {}},
                "spec": {"podCIDR": format!("10.244.{i}.0/24"),
                    "taints": [{"key": NOT_READY_TAINT, "effect": "NoSchedule"}]},
                "status": {
                    "conditions": [
                        cond("Ready", "False", "KubeletNotReady", "container runtime status check may not have completed yet"),
                        cond("MemoryPressure", "False", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
                        cond("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
                        cond("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
                    ],
                    "addresses": [{"type": "InternalIP", "address": format!("10.0.{}.{}", i / 250, i % 250 + 1)},
                                  {"type": "Hostname", "address": name}],
                    "capacity": {"cpu": "32", "memory": "131072Mi", "pods": "110"},
                    "allocatable": {"cpu": "31", "memory": "129024Mi", "pods": "110"},
                    "nodeInfo": {"bootID": sim.boot_id, "kubeletVersion": "v1.33.0", "kubeProxyVersion": "v1.33.0",
                        "containerRuntimeVersion": "containerd://1.7.0", "kernelVersion": "6.1.0-firebreak-sim",
                        "osImage": "Debian GNU/Linux 12 (bookworm)", "operatingSystem": "linux", "architecture": "amd64",
                        "machineID": uuid::Uuid::new_v4().simple().to_string(), "systemUUID": uuid::Uuid::new_v4().to_string()}
                }
            }))?;
            st.store.create(&LEASES, json!({"metadata": {"name": name, "namespace": "kube-node-lease"},
                "spec": {"holderIdentity": name, "leaseDurationSeconds": 40, "renewTime": fmt_micro_time(OffsetDateTime::now_utc())}}))?;
            st.nodes.insert(name, sim);
        }
        for w in &self.workloads {
            let min_available = w.replicas.saturating_sub(1);
            if w.name == "web" {
                st.store.create(&PDBS, json!({"metadata": {"name": w.name, "namespace": w.namespace},
                    "spec": {"minAvailable": min_available, "selector": {"matchLabels": {"app": w.name}}},
                    "status": {"currentHealthy": 0, "desiredHealthy": min_available, "disruptionsAllowed": 0, "expectedPods": w.replicas, "observedGeneration": 1}}))?;
            }
        }
        // Initial placement: round robin, so that the first nodes carry two `web` replicas.
        let names: Vec<String> = st.nodes.keys().cloned().collect();
        if !names.is_empty() {
            for w in &self.workloads {
                for r in 0..w.replicas {
                    let node = &names[r % names.len()];
                    let pod = self.replica_pod(w, node, &format!("{r:05}"));
                    st.store.create(&PODS, pod)?;
                }
            }
            for node in &names {
                let pod = self.daemon_pod(node);
                st.store.create(&PODS, pod)?;
            }
        }
        let now = Instant::now();
        let keys: Vec<(String, String)> = st
            .store
            .list(&PODS, None)
            .iter()
            .map(|p| (str_at(p, "/metadata/namespace"), str_at(p, "/metadata/name")))
            .collect();
        for k in keys {
            st.pending_ready.insert(k, now);
        }
        Ok(())
    }

    fn replica_pod(&self, w: &Workload, node: &str, suffix: &str) -> Value {
        let rs = format!("{}-7d4b9c", w.name);
        json!({
            "metadata": {"name": format!("{rs}-{suffix}"), "namespace": w.namespace,
                "labels": {"app": w.name, "pod-template-hash": "7d4b9c"},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": rs,
                    "uid": format!("rs-{}", w.name), "controller": true, "blockOwnerDeletion": true}]},
            "spec": {"nodeName": node, "terminationGracePeriodSeconds": self.timings.pod_grace.as_secs(),
                "containers": [{"name": w.name, "image": format!("registry.example/{}:1.0", w.name)}]},
            "status": {"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "True"}]}
        })
    }

    fn daemon_pod(&self, node: &str) -> Value {
        json!({
            "metadata": {"name": format!("node-exporter-{node}"), "namespace": "kube-system",
                "labels": {"app": "node-exporter"},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "DaemonSet", "name": "node-exporter",
                    "uid": "ds-node-exporter", "controller": true, "blockOwnerDeletion": true}]},
            "spec": {"nodeName": node, "terminationGracePeriodSeconds": self.timings.pod_grace.as_secs(),
                "tolerations": [{"operator": "Exists"}],
                "containers": [{"name": "node-exporter", "image": "registry.example/node-exporter:1.0"}]},
            "status": {"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "True"}]}
        })
    }

    fn tick(&self) -> Result<()> {
        let now = Instant::now();
        let mut st = self.lock();
        let st = &mut *st;
        let names: Vec<String> = st.nodes.keys().cloned().collect();
        for name in &names {
            self.tick_node(st, name, now)?;
        }
        self.tick_pods(st, now)?;
        update_pdbs(&mut st.store)?;
        Ok(())
    }

    fn tick_node(&self, st: &mut State, name: &str, now: Instant) -> Result<()> {
        let Some(node) = st.store.get_ref(&NODES, "", name) else { return Ok(()) };
        let Some(sim) = st.nodes.get_mut(name) else { return Ok(()) };
        let reboot_asked = node.pointer("/metadata/annotations").and_then(|a| a.get(REBOOT_ANNOTATION)).is_some();
        let ready = ready_status(node).to_owned();
        if reboot_asked && sim.reboot_done_at.is_none() {
            tracing::info!(cluster = %self.name, node = name, "rebooting");
            sim.reboot_done_at = Some(now + self.timings.reboot);
            boot(sim)?;
            let mut n = node.clone();
            if let Some(a) = n.pointer_mut("/metadata/annotations").and_then(Value::as_object_mut) {
                a.remove(REBOOT_ANNOTATION);
            }
            set_condition(&mut n, "Ready", "False", "KubeletNotReady", "node is rebooting");
            set_taint(&mut n, NOT_READY_TAINT, true);
            set_taint(&mut n, UNREACHABLE_TAINT, false);
            st.store.replace(&NODES, n)?;
            return Ok(());
        }
        if let Some(done) = sim.reboot_done_at {
            if now < done {
                return Ok(());
            }
            sim.reboot_done_at = None;
            sim.heartbeating = true;
            sim.last_heartbeat = now - self.timings.heartbeat;
        }
        if sim.heartbeating {
            // Like a kubelet with node leases: the lease is renewed every period, the Node
            // object is written only when its status changes.
            let boot_id = sim.boot_id.clone();
            let stale_boot = node.pointer("/status/nodeInfo/bootID").and_then(Value::as_str) != Some(boot_id.as_str());
            if ready != "True" || stale_boot {
                let mut n = node.clone();
                set_condition(&mut n, "Ready", "True", "KubeletReady", "kubelet is posting ready status");
                set_taint(&mut n, NOT_READY_TAINT, false);
                set_taint(&mut n, UNREACHABLE_TAINT, false);
                if let Some(info) = n.pointer_mut("/status/nodeInfo").and_then(Value::as_object_mut) {
                    info.insert("bootID".into(), json!(boot_id));
                }
                st.store.replace(&NODES, n)?;
            }
            if now.duration_since(sim.last_heartbeat) >= self.timings.heartbeat {
                sim.last_heartbeat = now;
                if let Some(mut lease) = st.store.get(&LEASES, "kube-node-lease", name) {
                    lease["spec"]["renewTime"] = json!(fmt_micro_time(OffsetDateTime::now_utc()));
                    st.store.replace(&LEASES, lease)?;
                }
            }
        } else if now.duration_since(sim.last_heartbeat) >= self.timings.unreachable_after && ready == "True" {
            let mut n = node.clone();
            set_condition(&mut n, "Ready", "Unknown", "NodeStatusUnknown", "Kubelet stopped posting node status.");
            set_taint(&mut n, UNREACHABLE_TAINT, true);
            st.store.replace(&NODES, n)?;
            st.store.create(&EVENTS, node_event(name, "NodeNotReady", "Node is not ready"))?;
        }
        Ok(())
    }

    fn tick_pods(&self, st: &mut State, now: Instant) -> Result<()> {
        let wall = OffsetDateTime::now_utc();
        let key = |p: &Value| (str_at(p, "/metadata/namespace"), str_at(p, "/metadata/name"));
        // Kubelets: finish terminations whose grace period is over.
        let due: Vec<(String, String)> = st
            .store
            .iter(&PODS, None)
            .filter(|p| {
                p.pointer("/metadata/deletionTimestamp").and_then(Value::as_str).is_some_and(|ts| {
                    OffsetDateTime::parse(ts, &time::format_description::well_known::Rfc3339)
                        .map_or(true, |t| t <= wall)
                })
            })
            .map(key)
            .collect();
        for (ns, name) in due {
            st.store.remove(&PODS, &ns, &name)?;
            st.pending_ready.remove(&(ns, name));
        }
        // Kubelets: start scheduled pods once their node is up.
        let starting: Vec<(String, String)> = st
            .pending_ready
            .iter()
            .filter(|(_, since)| now.duration_since(**since) >= self.timings.pod_start)
            .map(|(k, _)| k.clone())
            .collect();
        for k in starting {
            let Some(pod) = st.store.get_ref(&PODS, &k.0, &k.1) else {
                st.pending_ready.remove(&k);
                continue;
            };
            if pod.pointer("/metadata/deletionTimestamp").is_some() {
                st.pending_ready.remove(&k);
                continue;
            }
            let node = str_at(pod, "/spec/nodeName");
            if st.store.get_ref(&NODES, "", &node).is_none_or(|n| ready_status(n) != "True") {
                continue;
            }
            let mut p = pod.clone();
            let started = time_now_rfc3339();
            p["status"] = json!({"phase": "Running", "startTime": started,
                "podIP": format!("10.244.{}.{}", rand::random::<u8>(), rand::random::<u8>()),
                "conditions": [{"type": "PodScheduled", "status": "True"},
                    {"type": "Initialized", "status": "True"},
                    {"type": "ContainersReady", "status": "True", "lastTransitionTime": started},
                    {"type": "Ready", "status": "True", "lastTransitionTime": started}],
                "containerStatuses": [{"name": p.pointer("/spec/containers/0/name").cloned().unwrap_or(json!("main")),
                    "ready": true, "started": true, "restartCount": 0,
                    "image": p.pointer("/spec/containers/0/image").cloned().unwrap_or(json!("")),
                    "state": {"running": {"startedAt": started}}}]});
            st.store.replace(&PODS, p)?;
            st.pending_ready.remove(&k);
        }
        // One pass over live pods: replicas per app, pods per node, nodes with a daemon pod.
        let mut live: HashMap<String, usize> = HashMap::new();
        let mut per_node: HashMap<String, usize> = HashMap::new();
        let mut daemon: HashSet<String> = HashSet::new();
        for p in st.store.iter(&PODS, None).filter(|p| p.pointer("/metadata/deletionTimestamp").is_none()) {
            let node = str_at(p, "/spec/nodeName");
            if str_at(p, "/metadata/namespace") == "kube-system" {
                daemon.insert(node.clone());
            }
            *per_node.entry(node).or_default() += 1;
            *live.entry(str_at(p, "/metadata/labels/app")).or_default() += 1;
        }
        // ReplicaSet controllers: replace pods that are terminating or gone.
        for w in &self.workloads {
            for _ in live.get(w.name).copied().unwrap_or(0)..w.replicas {
                let Some(node) = schedulable_node(&st.store, &per_node) else { break };
                *per_node.entry(node.clone()).or_default() += 1;
                let suffix = uuid::Uuid::new_v4().simple().to_string()[..5].to_owned();
                let pod = st.store.create(&PODS, self.replica_pod(w, &node, &suffix))?;
                st.pending_ready.insert(key(&pod), now);
            }
        }
        // DaemonSet controller: one pod per node, cordoned or not.
        let names: Vec<String> = st.nodes.keys().filter(|n| !daemon.contains(*n)).cloned().collect();
        for node in names {
            if st.store.get_ref(&PODS, "kube-system", &format!("node-exporter-{node}")).is_none() {
                let pod = st.store.create(&PODS, self.daemon_pod(&node))?;
                st.pending_ready.insert(key(&pod), now);
            }
        }
        Ok(())
    }
}

/// Runs the cluster's kubelets and controllers until cancelled.
pub(crate) async fn run(cluster: Arc<Cluster>, cancel: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {
                if let Err(error) = cluster.tick() {
                    tracing::warn!(%error, cluster = %cluster.name, "simulation step failed");
                }
            }
        }
    }
}

/// Whether a pod counts as healthy for a disruption budget.
pub(crate) fn pod_ready(pod: &Value) -> bool {
    pod.pointer("/metadata/deletionTimestamp").is_none()
        && pod.pointer("/status/phase").and_then(Value::as_str) == Some("Running")
        && pod
            .pointer("/status/conditions")
            .and_then(Value::as_array)
            .is_some_and(|c| c.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
}

/// The PodDisruptionBudgets of the pod's namespace whose selector matches it.
pub(crate) fn matching_pdbs(store: &Store, pod: &Value) -> Vec<Value> {
    let ns = str_at(pod, "/metadata/namespace");
    store
        .iter(&PDBS, Some(&ns))
        .filter(|pdb| Selector::from_match_labels(pdb.pointer("/spec/selector/matchLabels")).matches_labels(pod))
        .cloned()
        .collect()
}

/// Recomputes every budget's status from the pods it selects.
pub(crate) fn update_pdbs(store: &mut Store) -> Result<()> {
    for pdb in store.list(&PDBS, None) {
        let ns = str_at(&pdb, "/metadata/namespace");
        let sel = Selector::from_match_labels(pdb.pointer("/spec/selector/matchLabels"));
        let (mut healthy, mut expected) = (0i64, 0i64);
        for p in store.iter(&PODS, Some(&ns)).filter(|p| sel.matches_labels(p)) {
            healthy += i64::from(pod_ready(p));
            expected += i64::from(p.pointer("/metadata/deletionTimestamp").is_none());
        }
        let desired = match pdb.pointer("/spec/minAvailable").and_then(Value::as_i64) {
            Some(m) => m,
            None => expected - pdb.pointer("/spec/maxUnavailable").and_then(Value::as_i64).unwrap_or(0),
        };
        let status = json!({"currentHealthy": healthy, "desiredHealthy": desired,
            "disruptionsAllowed": (healthy - desired).max(0), "expectedPods": expected, "observedGeneration": 1});
        if pdb.get("status") != Some(&status) {
            let mut p = pdb;
            p["status"] = status;
            store.replace(&PDBS, p)?;
        }
    }
    Ok(())
}

/// A core Event about a node, named like the kubelet names them.
pub(crate) fn node_event(node: &str, reason: &str, message: &str) -> Value {
    let now = time_now_rfc3339();
    json!({"metadata": {"name": format!("{node}.{}", uuid::Uuid::new_v4().simple()), "namespace": "default"},
        "involvedObject": {"kind": "Node", "name": node, "apiVersion": "v1"},
        "reason": reason, "message": message, "type": "Warning", "count": 1,
        "firstTimestamp": now, "lastTimestamp": now, "source": {"component": "node-controller"}})
}

pub(crate) fn str_at(v: &Value, ptr: &str) -> String {
    v.pointer(ptr).and_then(Value::as_str).unwrap_or_default().to_owned()
}

fn ready_status(node: &Value) -> &str {
    node.pointer("/status/conditions")
        .and_then(Value::as_array)
        .and_then(|c| c.iter().find(|c| c["type"] == "Ready"))
        .and_then(|c| c["status"].as_str())
        .unwrap_or_default()
}

/// The schedulable node (Ready, not cordoned, no NoSchedule/NoExecute taint) with the fewest pods.
fn schedulable_node(store: &Store, per_node: &HashMap<String, usize>) -> Option<String> {
    store
        .iter(&NODES, None)
        .filter(|n| ready_status(n) == "True")
        .filter(|n| n.pointer("/spec/unschedulable").and_then(Value::as_bool) != Some(true))
        .filter(|n| {
            !n.pointer("/spec/taints")
                .and_then(Value::as_array)
                .is_some_and(|t| t.iter().any(|t| t["effect"] == "NoSchedule" || t["effect"] == "NoExecute"))
        })
        .filter_map(|n| n.pointer("/metadata/name").and_then(Value::as_str))
        .min_by_key(|name| per_node.get(*name).copied().unwrap_or(0))
        .map(str::to_owned)
}

fn cond(ty: &str, status: &str, reason: &str, message: &str) -> Value {
    let now = time_now_rfc3339();
    json!({"type": ty, "status": status, "reason": reason, "message": message,
        "lastHeartbeatTime": now, "lastTransitionTime": now})
}

fn set_condition(node: &mut Value, ty: &str, status: &str, reason: &str, message: &str) {
    let Some(conds) = node.pointer_mut("/status/conditions").and_then(Value::as_array_mut) else { return };
    match conds.iter_mut().find(|c| c["type"] == ty) {
        Some(c) if c["status"] == status => {
            c["reason"] = json!(reason);
            c["message"] = json!(message);
        }
        Some(c) => *c = cond(ty, status, reason, message),
        None => conds.push(cond(ty, status, reason, message)),
    }
}

fn set_taint(node: &mut Value, key: &str, present: bool) {
    let Some(spec) = node.get_mut("spec").and_then(Value::as_object_mut) else { return };
    let taints = spec.entry("taints").or_insert_with(|| json!([]));
    let Some(list) = taints.as_array_mut() else { return };
    list.retain(|t| t["key"] != key);
    if present {
        let mut t = json!({"key": key, "effect": "NoSchedule"});
        if key == UNREACHABLE_TAINT {
            t["timeAdded"] = json!(time_now_rfc3339());
        }
        list.push(t);
    }
    if list.is_empty() {
        spec.remove("taints");
    }
}

/// A fresh boot: new boot id and btime, a kernel log with only the boot banner.
fn boot(sim: &mut NodeSim) -> Result<()> {
    let io = |path: PathBuf| move |source| Error::Io { path, source };
    let root = &sim.host_root;
    for d in ["dev", "proc/sys/kernel/random"] {
        std::fs::create_dir_all(root.join(d)).map_err(io(root.join(d)))?;
    }
    sim.boot_id = uuid::Uuid::new_v4().to_string();
    sim.seq = 0;
    sim.btime = OffsetDateTime::now_utc().unix_timestamp();
    let btime = sim.btime;
    let stat = root.join("proc/stat");
    std::fs::write(&stat, format!("cpu  0 0 0 0 0 0 0 0 0 0\nbtime {btime}\nprocesses 1\n")).map_err(io(stat))?;
    let bid = root.join("proc/sys/kernel/random/boot_id");
    std::fs::write(&bid, format!("{}\n", sim.boot_id)).map_err(io(bid))?;
    let kmsg = root.join("dev/kmsg");
    std::fs::write(&kmsg, b"").map_err(io(kmsg))?;
    append_kmsg(
        sim,
        &[
            (5, "Linux version 6.1.0-firebreak-sim (gcc 12.2.0) #1 SMP PREEMPT_DYNAMIC".into()),
            (6, "Command line: BOOT_IMAGE=/vmlinuz root=/dev/sda1 ro quiet".into()),
            (6, "EDAC MC0: Giving out device to module skx_edac controller Skylake Socket#0 IMC#0".into()),
            (6, "EXT4-fs (sda1): mounted filesystem with ordered data mode. Quota mode: none.".into()),
        ],
    )
}

/// Appends records in the kernel's `/dev/kmsg` format: `<prio>,<seq>,<usec>,<flags>;<text>`.
fn append_kmsg(sim: &mut NodeSim, lines: &[(u8, String)]) -> Result<()> {
    let path = sim.host_root.join("dev/kmsg");
    let usec = (OffsetDateTime::now_utc().unix_timestamp_nanos() / 1000 - i128::from(sim.btime) * 1_000_000).max(0);
    let mut out = String::new();
    for (prio, text) in lines {
        out.push_str(&format!("{prio},{},{usec},-;{text}\n", sim.seq));
        sim.seq += 1;
    }
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(&path)
        .map_err(|source| Error::Io { path: path.clone(), source })?;
    f.write_all(out.as_bytes()).map_err(|source| Error::Io { path, source })
}

fn kubeconfig_yaml(name: &str, addr: SocketAddr) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: {name}\n  cluster:\n    server: http://{addr}\n\
         contexts:\n- name: {name}\n  context:\n    cluster: {name}\n    user: firebreak-sim\n\
         current-context: {name}\nusers:\n- name: firebreak-sim\n  user: {{}}\n"
    )
}

/// Formats an object's age the way kubectl does (`45s`, `3m12s`, `2h`, `4d`).
pub(crate) fn age(obj: &Value) -> String {
    let created = obj
        .pointer("/metadata/creationTimestamp")
        .and_then(Value::as_str)
        .and_then(|t| OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok());
    let Some(created) = created else { return "<unknown>".into() };
    let s = (OffsetDateTime::now_utc() - created).whole_seconds().max(0);
    match s {
        0..120 => format!("{s}s"),
        120..600 => format!("{}m{}s", s / 60, s % 60),
        600..10800 => format!("{}m", s / 60),
        10800..172800 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86400),
    }
}

pub(crate) fn now_plus(d: Duration) -> String {
    fmt_time(OffsetDateTime::now_utc() + d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_nodes_are_tainted_not_ready_until_their_kubelet_reports() {
        let dir = std::env::temp_dir().join(format!("fb-sim-{}", uuid::Uuid::new_v4().simple()));
        let addr: SocketAddr = ([127, 0, 0, 1], 1).into();
        let c = Cluster::new("t".into(), dir, addr, 2, Timings::default(), CancellationToken::new()).unwrap();
        let node = c.lock().store.get(&NODES, "", "t-node-001").unwrap();
        assert_eq!(ready_status(&node), "False");
        assert_eq!(node["spec"]["taints"][0]["key"], NOT_READY_TAINT);
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async { c.tick().unwrap() });
        let node = c.lock().store.get(&NODES, "", "t-node-001").unwrap();
        assert_eq!(ready_status(&node), "True");
        assert!(node["spec"].get("taints").is_none());
        assert!(std::fs::read_to_string(c.host_root("t-node-001").join("dev/kmsg")).unwrap().starts_with("5,0,"));
    }

    #[test]
    fn watches_resume_from_a_resource_version_or_are_gone() {
        let mut s = Store::new();
        let rv0 = s.rv();
        s.create(&NAMESPACES, json!({"metadata": {"name": "a"}})).unwrap();
        s.create(&NAMESPACES, json!({"metadata": {"name": "b"}})).unwrap();
        let (past, _) = s.watch_from(&NAMESPACES, rv0 + 1).unwrap();
        assert_eq!(past.iter().map(|c| str_at(&c.object, "/metadata/name")).collect::<Vec<_>>(), ["b"]);
        for i in 0..20_001 {
            s.create(&EVENTS, json!({"metadata": {"name": format!("e{i}"), "namespace": "default"}})).unwrap();
        }
        assert!(matches!(s.watch_from(&NAMESPACES, rv0), Err(Error::Gone(_))));
    }
}
