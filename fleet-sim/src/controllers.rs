//! The workload controllers of a simulated cluster — ReplicaSet-like `web` and `batch`, a
//! DaemonSet-like `node-exporter` — and the scheduler that places their pods.

use std::collections::{BTreeSet, HashMap, HashSet};

use serde_json::{Value, json};
use tokio::time::Instant;

use crate::{
    At, Result,
    cluster::{Cluster, State},
    kubelet::ready_status,
    resources::{NODES, PODS},
    store::Store,
    str_at,
};

/// A replicated workload.
pub(crate) struct Workload {
    pub(crate) name: String,
    pub(crate) namespace: &'static str,
    pub(crate) replicas: usize,
    /// Pods are deleted (and so replaced) this long after they were created.
    pub(crate) lifetime: Option<std::time::Duration>,
    /// The PodDisruptionBudget that guards it: the replicas that must stay available.
    pub(crate) min_available: Option<usize>,
}

impl Cluster {
    pub(crate) fn replica_pod(&self, w: &Workload, node: &str, suffix: &str) -> Value {
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

    pub(crate) fn daemon_pod(&self, node: &str) -> Value {
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

    /// ReplicaSet and DaemonSet controllers, with the scheduler: replace pods that are
    /// terminating or gone, keep one daemon pod per node.
    pub(crate) fn reconcile_workloads(&self, st: &mut State, now: Instant) -> Result<()> {
        let key = |p: &Value| (str_at(p, "/metadata/namespace"), str_at(p, "/metadata/name"));
        // One pass over live pods: replicas per app, pods per node, nodes with a daemon pod.
        let mut live: HashMap<String, usize> = HashMap::new();
        let mut per_node: HashMap<String, usize> = HashMap::new();
        let mut daemon: HashSet<String> = HashSet::new();
        for p in st.store.iter(&PODS, None).filter(|p| p.at("/metadata/deletionTimestamp").is_none()) {
            let node = str_at(p, "/spec/nodeName");
            if str_at(p, "/metadata/namespace") == "kube-system" {
                daemon.insert(node.clone());
            }
            *per_node.entry(node).or_default() += 1;
            *live.entry(str_at(p, "/metadata/labels/app")).or_default() += 1;
        }
        // Pods past their workload's lifetime are deleted, gracefully (the churn).
        let wall = chrono::Utc::now();
        let mut expired = Vec::new();
        for w in self.workloads.iter().filter(|w| w.lifetime.is_some()) {
            let life = chrono::TimeDelta::from_std(w.lifetime.unwrap_or_default()).unwrap_or_default();
            expired.extend(
                st.store
                    .iter(&PODS, Some(w.namespace))
                    .filter(|p| p.at("/metadata/deletionTimestamp").is_none())
                    .filter(|p| str_at(p, "/metadata/labels/app") == w.name)
                    .filter(|p| {
                        chrono::DateTime::parse_from_rfc3339(&str_at(p, "/metadata/creationTimestamp"))
                            .is_ok_and(|t| wall - t.to_utc() >= spread(life, &str_at(p, "/metadata/name")))
                    })
                    .cloned(),
            );
        }
        for mut p in expired {
            p["metadata"]["deletionTimestamp"] = json!(crate::now_plus(self.timings.pod_grace));
            p["metadata"]["deletionGracePeriodSeconds"] = json!(self.timings.pod_grace.as_secs());
            *live.entry(str_at(&p, "/metadata/labels/app")).or_default() -= 1;
            st.store.replace(&PODS, p)?;
        }
        // ReplicaSet controllers: replace pods that are terminating or gone, each on the
        // schedulable node with the fewest pods.
        let mut free: BTreeSet<(usize, String)> =
            schedulable_nodes(&st.store).map(|n| (per_node.get(&n).copied().unwrap_or(0), n)).collect();
        for w in &self.workloads {
            for _ in live.get(&w.name).copied().unwrap_or(0)..w.replicas {
                let Some((count, node)) = free.pop_first() else { break };
                free.insert((count + 1, node.clone()));
                // Like generateName: a random suffix, drawn again if a live pod has it.
                let suffix = std::iter::repeat_with(|| uuid::Uuid::new_v4().simple().to_string()[..5].to_owned())
                    .find(|s| st.store.get_ref(&PODS, w.namespace, &format!("{}-7d4b9c-{s}", w.name)).is_none())
                    .unwrap_or_default();
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

/// A pod's own lifetime: between half and one and a half times its workload's, by its name, so
/// that pods created together (at bootstrap) do not all end together and churn stays steady.
fn spread(life: chrono::TimeDelta, name: &str) -> chrono::TimeDelta {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    name.hash(&mut h);
    let per_mille = i32::try_from(h.finish() % 1000).unwrap_or(500);
    life * (500 + per_mille) / 1000
}

/// The schedulable nodes: Ready, not cordoned, no NoSchedule or NoExecute taint.
fn schedulable_nodes(store: &Store) -> impl Iterator<Item = String> + '_ {
    store
        .iter(&NODES, None)
        .filter(|n| ready_status(n) == "True")
        .filter(|n| n.at("/spec/unschedulable").and_then(Value::as_bool) != Some(true))
        .filter(|n| {
            !n.at("/spec/taints")
                .and_then(Value::as_array)
                .is_some_and(|t| t.iter().any(|t| t["effect"] == "NoSchedule" || t["effect"] == "NoExecute"))
        })
        .map(|n| str_at(n, "/metadata/name"))
}
