//! One simulated cluster: its object store, its nodes, the control API's fault injection and
//! audit log, and the loop that drives its kubelets and controllers.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, MutexGuard},
};

use chrono::Utc;
use serde::Serialize;
use serde_json::json;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::{
    Apps, Error, Result, Timings,
    controllers::Workload,
    faults::Fault,
    fmt_micro_time,
    kubelet::{INITIAL_RUNTIME, NOT_READY_TAINT, NodeSim, RUNTIME_LABEL, RuntimeFailure, cond},
    pdb::update_pdbs,
    resources::{DAEMONSETS, DEPLOYMENTS, LEASES, NAMESPACES, NODES, PDBS, PODS, REPLICASETS},
    store::Store,
    str_at,
};

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

/// A cluster's mutable state, behind one mutex.
pub(crate) struct State {
    pub(crate) store: Store,
    pub(crate) nodes: BTreeMap<String, NodeSim>,
    pub(crate) audit: Vec<AuditEntry>,
    /// Pods scheduled and not yet started, since when.
    pub(crate) pending_ready: BTreeMap<(String, String), Instant>,
    /// Runtime versions marked unhealthy, and how pods fail on them.
    pub(crate) bad_runtimes: BTreeMap<String, RuntimeFailure>,
    /// Crash-looping pods: when their container restarts next, and how often it has.
    pub(crate) crashing: BTreeMap<(String, String), (Instant, u32)>,
    /// The number the next new node takes.
    pub(crate) next_node: usize,
    /// Jobs running, since when.
    pub(crate) jobs_started: BTreeMap<(String, String), Instant>,
    /// Nodes whose re-imaging fails, and how.
    pub(crate) reimage_failures: BTreeMap<String, String>,
}

/// A simulated cluster.
pub struct Cluster {
    pub(crate) name: String,
    dir: PathBuf,
    addr: SocketAddr,
    pub(crate) timings: Timings,
    pub(crate) workloads: Vec<Workload>,
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
        apps: Apps,
        shutdown: CancellationToken,
    ) -> Result<Self> {
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| Error::Io { path, source }
        };
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        let kubeconfig = dir.join("kubeconfig");
        std::fs::write(&kubeconfig, kubeconfig_yaml(&name, addr)).map_err(io(&kubeconfig))?;
        let app = |name: String, replicas: usize, min_available: Option<usize>| Workload {
            name,
            namespace: "default",
            replicas,
            lifetime: None,
            min_available,
        };
        let mut workloads = match apps {
            Apps::Default => {
                let web = nodes + nodes / 4;
                vec![app("web".into(), web, Some(web.saturating_sub(1))), app("batch".into(), nodes / 2, None)]
            }
            Apps::Dense { per_node, max_unavailable_percent } => (1..=per_node)
                .map(|i| {
                    let down = (nodes * max_unavailable_percent.min(100) as usize).div_ceil(100).max(1);
                    app(format!("app-{i:02}"), nodes, Some(nodes.saturating_sub(down)))
                })
                .collect(),
        };
        // Steady churn: replicas that each live `pod_lifetime` make `churn_per_minute` starts.
        let churn = (f64::from(timings.churn_per_minute) * timings.pod_lifetime.as_secs_f64() / 60.0).ceil() as usize;
        workloads.push(Workload { lifetime: Some(timings.pod_lifetime), ..app("churn".into(), churn, None) });
        let cluster = Cluster {
            workloads,
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
                bad_runtimes: BTreeMap::new(),
                crashing: BTreeMap::new(),
                next_node: 1,
                jobs_started: BTreeMap::new(),
                reimage_failures: BTreeMap::new(),
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

    /// Marks a runtime version healthy or not; pods that start from now on on nodes labelled
    /// with it fail as `failure` says.
    pub fn set_runtime_health(&self, version: &str, healthy: bool, failure: RuntimeFailure) {
        let mut st = self.lock();
        if healthy {
            st.bad_runtimes.remove(version);
        } else {
            st.bad_runtimes.insert(version.to_owned(), failure);
        }
        tracing::info!(cluster = %self.name, version, healthy, ?failure, "runtime version health set");
    }

    /// Runtime versions marked unhealthy.
    pub fn bad_runtimes(&self) -> BTreeMap<String, RuntimeFailure> {
        self.lock().bad_runtimes.clone()
    }

    /// Injects a fault into a node.
    pub fn inject(&self, node: &str, fault: Fault) -> Result<()> {
        let mut st = self.lock();
        let sim = st.nodes.get_mut(node).ok_or_else(|| Error::NotFound("node".into(), node.to_owned()))?;
        if matches!(fault, Fault::NotReady | Fault::KubeletOom) {
            sim.heartbeating = false;
        }
        if fault.survives_reboot() && !sim.persistent.contains(&fault) {
            sim.persistent.push(fault);
        }
        sim.append_kmsg(&fault.kmsg_lines())?;
        tracing::info!(cluster = %self.name, node, ?fault, "fault injected");
        Ok(())
    }

    /// Ends a `NotReady` fault without a reboot, as when a network partition heals: the kubelet
    /// posts status again and the node turns Ready.
    pub fn recover(&self, node: &str) -> Result<()> {
        let mut st = self.lock();
        let sim = st.nodes.get_mut(node).ok_or_else(|| Error::NotFound("node".into(), node.to_owned()))?;
        sim.heartbeating = true;
        tracing::info!(cluster = %self.name, node, "kubelet posting status again");
        Ok(())
    }

    /// Stores a JSON merge patch to a node past the checks the API makes, as a newer or broken
    /// API server might serve it (`{"spec": {"unschedulable": "yes"}}`): for tests of clients
    /// that must survive an object they cannot decode.
    pub fn corrupt_node(&self, node: &str, patch: &serde_json::Value) -> Result<()> {
        let mut st = self.lock();
        let mut obj = st.store.get(&NODES, "", node).ok_or_else(|| Error::NotFound("node".into(), node.to_owned()))?;
        json_patch::merge(&mut obj, patch);
        st.store.replace(&NODES, obj)?;
        Ok(())
    }

    /// Reboots a node, as its actuator's `systemctl reboot` would: it goes NotReady, boots with a
    /// new boot id, boot time and kernel log (faults a reboot does not clear are logged again),
    /// and turns Ready when the boot is over.
    pub fn reboot(&self, node: &str) -> Result<()> {
        let mut st = self.lock();
        let sim = st.nodes.get_mut(node).ok_or_else(|| Error::NotFound("node".into(), node.to_owned()))?;
        sim.reboot_asked = true;
        tracing::info!(cluster = %self.name, node, "reboot asked");
        Ok(())
    }

    /// Re-images a node, as a PXE or cloud re-imaging system would when Firebreak's reinstall
    /// webhook asks: the node keeps its name, its disk state is wiped (everything under its
    /// host root's `var/`, where the agent keeps its state), and it boots afresh — NotReady
    /// meanwhile, a new boot id, a fresh kernel log. Faults of the hardware survive it.
    pub fn reinstall(&self, node: &str) -> Result<()> {
        let mut st = self.lock();
        self.reimage(&mut st, node)
    }

    pub(crate) fn reimage(&self, st: &mut State, node: &str) -> Result<()> {
        let sim = st.nodes.get_mut(node).ok_or_else(|| Error::NotFound("node".into(), node.to_owned()))?;
        let var = sim.host_root.join("var");
        match std::fs::remove_dir_all(&var) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(Error::Io { path: var, source }),
        }
        sim.reboot_asked = true;
        tracing::info!(cluster = %self.name, node, "reinstall asked");
        Ok(())
    }

    /// Restarts a node component, as its actuator's `systemctl restart` would: a restarted
    /// kubelet posts status again; the container runtime restarts harmlessly; anything else is
    /// no unit of this node.
    pub fn restart(&self, node: &str, component: &str) -> Result<()> {
        let mut st = self.lock();
        let sim = st.nodes.get_mut(node).ok_or_else(|| Error::NotFound("node".into(), node.to_owned()))?;
        match component {
            "kubelet" => sim.heartbeating = true,
            "containerd" => {}
            other => return Err(Error::NotFound("unit".into(), format!("{other}.service"))),
        }
        tracing::info!(cluster = %self.name, node, component, "component restarted");
        Ok(())
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Creates node number `i` (`<cluster>-node-<i>`): its Node, NotReady and tainted until its
    /// kubelet first reports, its Lease and its host root, booted.
    pub(crate) fn add_node(&self, st: &mut State, i: usize) -> Result<String> {
        let name = format!("{}-node-{i:03}", self.name);
        let host_root = self.host_root(&name);
        let mut sim = NodeSim::new(host_root);
        sim.boot()?;
        let zone = ["a", "b", "c"][i % 3];
        st.store.create(&NODES, json!({
            "metadata": {"name": name, "labels": {
                "kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64", "node-role.kubernetes.io/worker": "", RUNTIME_LABEL: INITIAL_RUNTIME,
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
        st.store.create(
            &LEASES,
            json!({"metadata": {"name": name, "namespace": "kube-node-lease"},
            "spec": {"holderIdentity": name, "leaseDurationSeconds": self.timings.lease_duration.as_secs().max(1),
                "renewTime": fmt_micro_time(Utc::now())}}),
        )?;
        st.nodes.insert(name.clone(), sim);
        st.next_node = st.next_node.max(i + 1);
        Ok(name)
    }

    fn bootstrap(&self, nodes: usize) -> Result<()> {
        let mut st = self.lock();
        for ns in ["default", "kube-system", "kube-node-lease"] {
            st.store.create(&NAMESPACES, json!({"metadata": {"name": ns}, "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}}))?;
        }
        for i in 1..=nodes {
            self.add_node(&mut st, i)?;
        }
        // The workloads' owners, as `kubectl drain` and `kubectl get` look them up: a Deployment
        // owning a ReplicaSet per workload (the controller of its pods), a DaemonSet for the
        // per-node pods.
        for w in &self.workloads {
            let rs = format!("{}-7d4b9c", w.name);
            let selector = json!({"matchLabels": {"app": w.name}});
            let template = json!({"metadata": {"labels": {"app": w.name}},
                "spec": {"containers": [{"name": w.name, "image": format!("registry.example/{}:1.0", w.name)}]}});
            let status = json!({"replicas": w.replicas, "readyReplicas": w.replicas, "availableReplicas": w.replicas,
                "updatedReplicas": w.replicas, "observedGeneration": 1});
            st.store.create(&DEPLOYMENTS, json!({
                "metadata": {"name": w.name, "namespace": w.namespace, "uid": format!("deploy-{}", w.name), "generation": 1},
                "spec": {"replicas": w.replicas, "selector": selector, "template": template},
                "status": status}))?;
            st.store.create(
                &REPLICASETS,
                json!({
                "metadata": {"name": rs, "namespace": w.namespace, "uid": format!("rs-{}", w.name), "generation": 1,
                    "labels": {"app": w.name, "pod-template-hash": "7d4b9c"},
                    "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": w.name,
                        "uid": format!("deploy-{}", w.name), "controller": true, "blockOwnerDeletion": true}]},
                "spec": {"replicas": w.replicas, "selector": selector, "template": template},
                "status": {"replicas": w.replicas, "readyReplicas": w.replicas, "availableReplicas": w.replicas,
                    "fullyLabeledReplicas": w.replicas, "observedGeneration": 1}}),
            )?;
        }
        st.store.create(&DAEMONSETS, json!({
            "metadata": {"name": "node-exporter", "namespace": "kube-system", "uid": "ds-node-exporter", "generation": 1},
            "spec": {"selector": {"matchLabels": {"app": "node-exporter"}},
                "template": {"metadata": {"labels": {"app": "node-exporter"}},
                    "spec": {"tolerations": [{"operator": "Exists"}],
                        "containers": [{"name": "node-exporter", "image": "registry.example/node-exporter:1.0"}]}}},
            "status": {"currentNumberScheduled": nodes, "desiredNumberScheduled": nodes, "numberReady": nodes,
                "numberAvailable": nodes, "updatedNumberScheduled": nodes, "numberMisscheduled": 0, "observedGeneration": 1}}))?;
        for w in &self.workloads {
            if let Some(min_available) = w.min_available {
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

    fn tick(&self) -> Result<()> {
        let now = Instant::now();
        let mut st = self.lock();
        let st = &mut *st;
        let names: Vec<String> = st.nodes.keys().cloned().collect();
        for name in &names {
            self.tick_node(st, name, now)?;
        }
        self.tick_kubelet_pods(st, now)?;
        self.tick_jobs(st, now)?;
        self.tick_machines(st)?;
        self.reconcile_workloads(st, now)?;
        update_pdbs(&mut st.store)?;
        Ok(())
    }
}

/// Runs the cluster's kubelets and controllers until cancelled.
pub(crate) async fn run(cluster: Arc<Cluster>, cancel: CancellationToken) {
    let mut tick = tokio::time::interval(cluster.timings.tick);
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

fn kubeconfig_yaml(name: &str, addr: SocketAddr) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: {name}\n  cluster:\n    server: http://{addr}\n\
         contexts:\n- name: {name}\n  context:\n    cluster: {name}\n    user: firebreak-sim\n\
         current-context: {name}\nusers:\n- name: firebreak-sim\n  user: {{}}\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kubelet::ready_status;

    #[test]
    fn new_nodes_are_tainted_not_ready_until_their_kubelet_reports() {
        let dir = tempfile::Builder::new().prefix("fb-sim-").tempdir().unwrap();
        let addr: SocketAddr = ([127, 0, 0, 1], 1).into();
        let c = Cluster::new(
            "t".into(),
            dir.path().to_owned(),
            addr,
            2,
            Timings::default(),
            Apps::Default,
            CancellationToken::new(),
        )
        .unwrap();
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
}
