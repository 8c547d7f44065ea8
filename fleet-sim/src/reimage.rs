//! Re-imaging, as the tools behind a remediator's reinstall do it: a Job controller (the Job
//! stands for PXE or cloud re-imaging tooling; it runs no pods here) and Cluster API's Machine
//! controllers (a deleted Machine's node is drained of its objects and deleted, and its
//! MachineSet makes a new Machine with a new node).

use chrono::Utc;
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::{
    At, Result,
    cluster::{Cluster, State},
    fmt_time,
    resources::{JOBS, LEASES, MACHINES, NODES, PODS},
    str_at,
};

/// Job annotation naming the node the Job re-images (the test's template renders it from the
/// remediator's `{{node}}`).
pub const REIMAGE_NODE_ANNOTATION: &str = "sim.firebreak.io/reimage-node";
/// The Cluster API annotations a Node of a Machine carries.
pub const MACHINE_ANNOTATION: &str = "cluster.x-k8s.io/machine";
/// The namespace of the node's Machine.
pub const MACHINE_NAMESPACE_ANNOTATION: &str = "cluster.x-k8s.io/cluster-namespace";
/// The Cluster API cluster the node belongs to.
pub const CLUSTER_NAME_ANNOTATION: &str = "cluster.x-k8s.io/cluster-name";

fn condition(kind: &str, reason: &str, message: &str) -> Value {
    let now = fmt_time(Utc::now());
    json!({"type": kind, "status": "True", "reason": reason, "message": message,
        "lastProbeTime": now, "lastTransitionTime": now})
}

impl Cluster {
    /// Makes every node a Cluster API machine: a Machine per node in `namespace` (owned by the
    /// MachineSet `<cluster>-workers`), and the annotations Cluster API puts on the Node. From
    /// then on, deleting a node's Machine replaces the node with a new one, of a new name.
    pub fn adopt_machines(&self, namespace: &str) -> Result<()> {
        let mut st = self.lock();
        let names: Vec<String> = st.nodes.keys().cloned().collect();
        for node in names {
            self.make_machine(&mut st, namespace, &node)?;
        }
        Ok(())
    }

    /// Makes every re-imaging Job of `node` fail with `why` (a PXE boot that times out, an image
    /// that will not write).
    pub fn fail_reimaging(&self, node: &str, why: &str) {
        self.lock().reimage_failures.insert(node.to_owned(), why.to_owned());
    }

    fn make_machine(&self, st: &mut State, namespace: &str, node: &str) -> Result<()> {
        let machine = format!("{}-workers-{}", self.name, node.rsplit('-').next().unwrap_or(node));
        st.store.create(&MACHINES, json!({
            "metadata": {"name": machine, "namespace": namespace,
                "labels": {"cluster.x-k8s.io/cluster-name": self.name, "cluster.x-k8s.io/set-name": format!("{}-workers", self.name)},
                "ownerReferences": [{"apiVersion": "cluster.x-k8s.io/v1beta1", "kind": "MachineSet",
                    "name": format!("{}-workers", self.name), "uid": format!("ms-{}", self.name), "controller": true}]},
            "spec": {"clusterName": self.name, "providerID": format!("sim://{}/{node}", self.name),
                "bootstrap": {"dataSecretName": format!("{machine}-bootstrap")},
                "infrastructureRef": {"apiVersion": "infrastructure.cluster.x-k8s.io/v1beta1", "kind": "SimMachine", "name": machine}},
            "status": {"phase": "Running", "nodeRef": {"apiVersion": "v1", "kind": "Node", "name": node},
                "bootstrapReady": true, "infrastructureReady": true}
        }))?;
        if let Some(mut n) = st.store.get(&NODES, "", node) {
            n["metadata"]["annotations"][MACHINE_ANNOTATION] = json!(machine);
            n["metadata"]["annotations"][MACHINE_NAMESPACE_ANNOTATION] = json!(namespace);
            n["metadata"]["annotations"][CLUSTER_NAME_ANNOTATION] = json!(self.name);
            st.store.replace(&NODES, n)?;
        }
        Ok(())
    }

    /// The Job controller: a Job runs for the pod start time, then re-images the node it names
    /// and completes — or fails, if that node's re-imaging is broken.
    pub(crate) fn tick_jobs(&self, st: &mut State, now: Instant) -> Result<()> {
        let running: Vec<Value> = st
            .store
            .iter(&JOBS, None)
            .filter(|j| j.at("/status/completionTime").is_none())
            .filter(|j| {
                !j.at("/status/conditions")
                    .and_then(Value::as_array)
                    .is_some_and(|c| c.iter().any(|c| c["type"] == "Failed" && c["status"] == "True"))
            })
            .cloned()
            .collect();
        for mut job in running {
            let key = (str_at(&job, "/metadata/namespace"), str_at(&job, "/metadata/name"));
            let started = *st.jobs_started.entry(key.clone()).or_insert(now);
            if job.at("/status/startTime").is_none() {
                job["status"] = json!({"startTime": fmt_time(Utc::now()), "active": 1});
                st.store.replace(&JOBS, job)?;
                continue;
            }
            if now.duration_since(started) < self.timings.pod_start {
                continue;
            }
            st.jobs_started.remove(&key);
            let target = job
                .at(&format!("/metadata/annotations/{}", REIMAGE_NODE_ANNOTATION.replace('/', "~1")))
                .and_then(Value::as_str)
                .map(str::to_owned);
            let outcome = match target {
                Some(node) => match st.reimage_failures.get(&node) {
                    Some(why) => Err(why.clone()),
                    None => self.reimage(st, &node).map_err(|e| format!("re-imaging {node}: {e}")),
                },
                None => Ok(()),
            };
            let now_s = fmt_time(Utc::now());
            job["status"] = match outcome {
                Ok(()) => json!({"startTime": job["status"]["startTime"], "completionTime": now_s, "succeeded": 1,
                    "conditions": [condition("SuccessCriteriaMet", "CompletionsReached", "Reached expected number of succeeded pods"),
                                   condition("Complete", "CompletionsReached", "Reached expected number of succeeded pods")]}),
                Err(why) => json!({"startTime": job["status"]["startTime"], "failed": 1,
                    "conditions": [condition("FailureTarget", "BackoffLimitExceeded", &why),
                                   condition("Failed", "BackoffLimitExceeded", &why)]}),
            };
            st.store.replace(&JOBS, job)?;
        }
        Ok(())
    }

    /// The Machine and MachineSet controllers: a node whose Machine was deleted loses its pods
    /// and its Node; a new Machine, with a new node, takes its place.
    pub(crate) fn tick_machines(&self, st: &mut State) -> Result<()> {
        let orphans: Vec<(String, String)> = st
            .store
            .iter(&NODES, None)
            .filter_map(|n| {
                let machine = n.at(&format!("/metadata/annotations/{}", MACHINE_ANNOTATION.replace('/', "~1")))?;
                let ns = n.at(&format!("/metadata/annotations/{}", MACHINE_NAMESPACE_ANNOTATION.replace('/', "~1")))?;
                let (machine, ns) = (machine.as_str()?, ns.as_str()?);
                st.store.get_ref(&MACHINES, ns, machine).is_none().then(|| (str_at(n, "/metadata/name"), ns.to_owned()))
            })
            .collect();
        for (node, ns) in orphans {
            let pods: Vec<(String, String)> = st
                .store
                .pods_on(&node)
                .map(|p| (str_at(p, "/metadata/namespace"), str_at(p, "/metadata/name")))
                .collect();
            for (pns, name) in pods {
                st.store.remove(&PODS, &pns, &name)?;
                st.pending_ready.remove(&(pns, name));
            }
            st.store.remove(&NODES, "", &node)?;
            let _ = st.store.remove(&LEASES, "kube-node-lease", &node);
            st.nodes.remove(&node);
            let i = st.next_node;
            let new = self.add_node(st, i)?;
            self.make_machine(st, &ns, &new)?;
            tracing::info!(cluster = %self.name, node, new, "machine deleted: node replaced");
        }
        Ok(())
    }
}
