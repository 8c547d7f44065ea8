//! What the remediator does to a node, through the Kubernetes API. Every operation is
//! idempotent: doing it again after a crash changes nothing more.

use firebreak_schema::{
    ESCALATED_ANNOTATION, MIGRATION_ANNOTATION, NODE_LABEL, READINESS_GATE_LABEL, TO_BE_MIGRATED_LABEL,
    UNHEALTHY_TAINT_KEY,
};
use k8s_openapi::api::core::v1::{ConfigMap, Event, Node, Pod, Taint};
use kube::{
    Api, Client,
    api::{ListParams, Patch, PatchParams, PostParams},
};
use serde_json::json;

use crate::{Error, Result};

/// Node and pod operations of one cluster.
#[derive(Clone)]
pub struct NodeOps {
    nodes: Api<Node>,
    configmaps: Api<ConfigMap>,
    client: Client,
}

/// Outcome of one eviction attempt.
#[derive(Debug, PartialEq, Eq)]
pub enum Eviction {
    /// Accepted (201) or the pod is already gone (404).
    Done,
    /// 429: a PodDisruptionBudget allows no disruption now.
    Blocked(String),
}

impl NodeOps {
    /// Operations through `client`.
    pub fn new(client: Client) -> Self {
        Self { nodes: Api::all(client.clone()), configmaps: Api::all(client.clone()), client }
    }

    /// The cluster's client.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The node.
    pub async fn get(&self, node: &str) -> Result<Node> {
        self.nodes.get(node).await.map_err(|e| gone(node, e))
    }

    /// Cordons the node and adds `firebreak.io/unhealthy=<kind>:NoSchedule`.
    pub async fn cordon_and_taint(&self, node: &str, kind: &str) -> Result<()> {
        self.update_taints(node, Some(true), |taints| {
            if !taints.iter().any(|t| t.key == UNHEALTHY_TAINT_KEY) {
                taints.push(Taint {
                    key: UNHEALTHY_TAINT_KEY.into(),
                    value: Some(kind.into()),
                    effect: "NoSchedule".into(),
                    time_added: None,
                });
            }
        })
        .await
    }

    /// Removes our taint and uncordons.
    pub async fn uncordon_and_untaint(&self, node: &str) -> Result<()> {
        self.update_taints(node, Some(false), |taints| taints.retain(|t| t.key != UNHEALTHY_TAINT_KEY)).await
    }

    /// Removes Firebreak's taint and leaves `spec.unschedulable` as it is (someone else's cordon,
    /// or someone else's uncordon, stands).
    pub async fn untaint(&self, node: &str) -> Result<()> {
        self.update_taints(node, None, |taints| taints.retain(|t| t.key != UNHEALTHY_TAINT_KEY)).await
    }

    /// Marks the node as escalated to a human by `workflow` (idempotent).
    pub async fn mark_escalated(&self, node: &str, workflow: &str) -> Result<()> {
        let patch = json!({"metadata": {"annotations": {ESCALATED_ANNOTATION: workflow}}});
        self.nodes.patch(node, &PatchParams::default(), &Patch::Merge(&patch)).await.map_err(|e| gone(node, e))?;
        Ok(())
    }

    /// Removes the escalation mark, as an operator's clearing does (a node gone has none).
    pub async fn unmark_escalated(&self, node: &str) -> Result<()> {
        let patch = json!({"metadata": {"annotations": {ESCALATED_ANNOTATION: null}}});
        match self.nodes.patch(node, &PatchParams::default(), &Patch::Merge(&patch)).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Read-modify-write of the taint list with the resourceVersion as precondition, retried on
    /// conflict, so concurrent taint changes by others are never overwritten.
    async fn update_taints(
        &self,
        node: &str,
        unschedulable: Option<bool>,
        edit: impl Fn(&mut Vec<Taint>),
    ) -> Result<()> {
        for _ in 0..10 {
            let n = self.get(node).await?;
            let mut taints = n.spec.as_ref().and_then(|s| s.taints.clone()).unwrap_or_default();
            edit(&mut taints);
            let mut patch = json!({
                "metadata": {"resourceVersion": n.metadata.resource_version},
                "spec": {"taints": taints},
            });
            if let Some(u) = unschedulable {
                patch["spec"]["unschedulable"] = json!(u);
            }
            match self.nodes.patch(node, &PatchParams::default(), &Patch::Merge(&patch)).await {
                Ok(_) => return Ok(()),
                Err(kube::Error::Api(s)) if s.code == 409 => continue,
                Err(e) => return Err(gone(node, e)),
            }
        }
        Err(Error::Conflict(format!("node {node} kept changing while updating its taints")))
    }

    /// The pods to migrate off the node: everything but DaemonSet pods, mirror pods and pods
    /// that have already finished.
    pub async fn pods_to_migrate(&self, node: &str) -> Result<Vec<Pod>> {
        let pods: Api<Pod> = Api::all(self.client.clone());
        let list = pods.list(&ListParams::default().fields(&format!("spec.nodeName={node}"))).await?;
        Ok(list
            .items
            .into_iter()
            .filter(|p| {
                let owned_by_ds = p
                    .metadata
                    .owner_references
                    .as_ref()
                    .is_some_and(|o| o.iter().any(|o| o.kind == "DaemonSet" && o.controller == Some(true)));
                let mirror =
                    p.metadata.annotations.as_ref().is_some_and(|a| a.contains_key("kubernetes.io/config.mirror"));
                let finished = p
                    .status
                    .as_ref()
                    .and_then(|s| s.phase.as_deref())
                    .is_some_and(|ph| ph == "Succeeded" || ph == "Failed");
                !owned_by_ds && !mirror && !finished
            })
            .collect())
    }

    /// Labels a pod `firebreak.io/to-be-migrated=true` (unless it carries the label already).
    pub async fn mark_for_migration(&self, pod: &Pod) -> Result<()> {
        if pod.metadata.labels.as_ref().and_then(|l| l.get(TO_BE_MIGRATED_LABEL)).is_some_and(|v| v == "true") {
            return Ok(());
        }
        let (ns, name) = pod_names(pod);
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &ns);
        let patch = json!({"metadata": {"labels": {TO_BE_MIGRATED_LABEL: "true"}}});
        match api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch)).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Evicts a pod through the Eviction API. The body is posted by hand: kube-core's
    /// `EvictParams` serialises its delete options under a key the API server ignores.
    pub async fn evict(&self, pod: &Pod) -> Result<Eviction> {
        let (ns, name) = pod_names(pod);
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &ns);
        let body = json!({
            "apiVersion": "policy/v1", "kind": "Eviction",
            "metadata": {"name": name, "namespace": ns},
            "deleteOptions": {"propagationPolicy": "Background"},
        });
        match api.create_subresource::<_, serde_json::Value>("eviction", &name, &PostParams::default(), &body).await {
            Ok(_) => Ok(Eviction::Done),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(Eviction::Done),
            Err(kube::Error::Api(s)) if s.code == 429 => Ok(Eviction::Blocked(s.message)),
            Err(e) => Err(e.into()),
        }
    }

    /// Records a core/v1 Event on the node, so `kubectl describe node` shows what Firebreak did
    /// and why.
    pub async fn record_event(&self, node: &str, reason: &str, message: &str, warning: bool) -> Result<()> {
        let api: Api<Event> = Api::namespaced(self.client.clone(), "default");
        let now = k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::now());
        let event = Event {
            metadata: kube::api::ObjectMeta {
                name: Some(format!("{node}.{}", uuid::Uuid::now_v7().simple())),
                namespace: Some("default".into()),
                ..Default::default()
            },
            involved_object: k8s_openapi::api::core::v1::ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Node".into()),
                name: Some(node.into()),
                ..Default::default()
            },
            reason: Some(reason.into()),
            message: Some(message.chars().take(1024).collect()),
            type_: Some(if warning { "Warning" } else { "Normal" }.into()),
            count: Some(1),
            first_timestamp: Some(now.clone()),
            last_timestamp: Some(now),
            source: Some(k8s_openapi::api::core::v1::EventSource {
                component: Some("firebreak-remediator".into()),
                host: None,
            }),
            ..Default::default()
        };
        api.create(&PostParams::default(), &event).await?;
        Ok(())
    }

    /// The readiness gates that do not hold for the node, each with why: node conditions not
    /// `True`, gate ConfigMaps missing or not saying `data.ready: "true"`.
    pub async fn readiness_unmet(&self, node: &Node, gates: &crate::ReadinessGates) -> Result<Vec<String>> {
        let mut unmet = unmet_conditions(node, &gates.conditions);
        if gates.configmaps.is_empty() {
            return Ok(unmet);
        }
        let name = node.metadata.name.as_deref().unwrap_or_default();
        let lp = ListParams::default().labels(&format!("{NODE_LABEL}={name}"));
        let maps = self.configmaps.list(&lp).await?.items;
        unmet.extend(unmet_configmaps(&maps, &gates.configmaps));
        Ok(unmet)
    }
}

/// The named node conditions that are not `True`, each with its status.
fn unmet_conditions(node: &Node, wanted: &[String]) -> Vec<String> {
    let conditions = node.status.as_ref().and_then(|s| s.conditions.as_deref()).unwrap_or_default();
    wanted
        .iter()
        .filter_map(|want| match conditions.iter().find(|c| &c.type_ == want) {
            Some(c) if c.status == "True" => None,
            Some(c) => Some(format!("condition {want} is {}", c.status)),
            None => Some(format!("condition {want} is not reported")),
        })
        .collect()
}

/// The named gates whose ConfigMap (among `maps`, the node's) is missing or does not say
/// `data.ready: "true"`, each with why.
fn unmet_configmaps(maps: &[ConfigMap], gates: &[String]) -> Vec<String> {
    let mut unmet = Vec::new();
    for gate in gates {
        let of_gate = |m: &&ConfigMap| {
            m.metadata.labels.as_ref().and_then(|l| l.get(READINESS_GATE_LABEL)).is_some_and(|g| g == gate)
        };
        match maps.iter().find(of_gate) {
            None => unmet.push(format!("gate {gate}: no ConfigMap for the node yet")),
            Some(m) => {
                let ready = m.data.as_ref().and_then(|d| d.get("ready")).map(String::as_str);
                if ready != Some("true") {
                    let at = format!(
                        "{}/{}",
                        m.metadata.namespace.as_deref().unwrap_or_default(),
                        m.metadata.name.as_deref().unwrap_or_default()
                    );
                    unmet.push(format!("gate {gate}: ConfigMap {at} says ready={}", ready.unwrap_or("(unset)")));
                }
            }
        }
    }
    unmet
}

/// A 404 on the node itself means the node was deleted.
fn gone(node: &str, e: kube::Error) -> Error {
    match e {
        kube::Error::Api(s) if s.code == 404 => Error::NodeGone(node.to_owned()),
        other => other.into(),
    }
}

/// The node's boot id and whether it is Ready.
pub fn boot_and_ready(node: &Node) -> (String, bool) {
    let status = node.status.as_ref();
    let boot = status.and_then(|s| s.node_info.as_ref()).map(|i| i.boot_id.clone()).unwrap_or_default();
    let ready = status
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    (boot, ready)
}

/// How the pods to migrate leave the node.
#[derive(Debug, Default)]
pub(crate) struct Migration<'a> {
    /// Evicted (after the grace period): pods with a controller, and pods without one when the
    /// policy says so.
    pub(crate) evict: Vec<&'a Pod>,
    /// Annotated `firebreak.io/migration=manual`: labelled, then left for their owner to move.
    pub(crate) manual: Vec<&'a Pod>,
    /// Without a controller, which the policy does not allow evicting (`kubectl drain` without
    /// `--force` refuses them too: nothing would recreate them).
    pub(crate) unmanaged: Vec<&'a Pod>,
}

/// Sorts the pods to migrate by how they may leave. `evict_unmanaged` is `kubectl drain
/// --force`: pods no controller recreates are evicted too.
pub(crate) fn migration(pods: &[Pod], evict_unmanaged: bool) -> Migration<'_> {
    let mut m = Migration::default();
    for p in pods {
        let manual =
            p.metadata.annotations.as_ref().and_then(|a| a.get(MIGRATION_ANNOTATION)).is_some_and(|v| v == "manual");
        let controlled =
            p.metadata.owner_references.as_ref().is_some_and(|o| o.iter().any(|o| o.controller == Some(true)));
        if manual {
            m.manual.push(p);
        } else if controlled || evict_unmanaged {
            m.evict.push(p);
        } else {
            m.unmanaged.push(p);
        }
    }
    m
}

/// `namespace/name` of each pod, at most 20 and how many more.
pub(crate) fn listed<'a>(pods: impl IntoIterator<Item = &'a Pod>) -> String {
    shortlist(pods.into_iter().map(pod_names).map(|(ns, n)| format!("{ns}/{n}")).collect())
}

/// Names, at most 20 and how many more: a record's list stays readable on a large node.
pub(crate) fn shortlist(names: Vec<String>) -> String {
    let more = names.len().saturating_sub(20);
    let shown = names.into_iter().take(20).collect::<Vec<_>>().join(", ");
    if more > 0 { format!("{shown} and {more} more") } else { shown }
}

pub(crate) fn pod_names(pod: &Pod) -> (String, String) {
    (pod.metadata.namespace.clone().unwrap_or_default(), pod.metadata.name.clone().unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gate_configmap_must_exist_and_say_exactly_ready_true() {
        let map = |name: &str, gate: Option<&str>, data: serde_json::Value| -> ConfigMap {
            let labels = gate.map(|g| json!({READINESS_GATE_LABEL: g, NODE_LABEL: "n1"}));
            serde_json::from_value(json!({"metadata": {"name": name, "namespace": "ops", "labels": labels},
                "data": data}))
            .unwrap()
        };
        let maps = [
            map("ok", Some("storage"), json!({"ready": "true"})),
            map("shouty", Some("gpu"), json!({"ready": "True"})),
            map("empty", Some("net"), json!(null)),
            map("unlabelled", None, json!({"ready": "true"})),
        ];
        let gates: Vec<String> = ["storage", "gpu", "net", "dns"].iter().map(|g| (*g).to_owned()).collect();
        assert_eq!(
            unmet_configmaps(&maps, &gates),
            [
                "gate gpu: ConfigMap ops/shouty says ready=True",
                "gate net: ConfigMap ops/empty says ready=(unset)",
                "gate dns: no ConfigMap for the node yet",
            ]
        );
    }

    #[test]
    fn readiness_conditions_must_be_reported_and_true() {
        let node: Node = serde_json::from_value(json!({"metadata": {"name": "n1"}, "status": {"conditions": [
            {"type": "Ready", "status": "True"}, {"type": "GPUHealthy", "status": "False"}]}}))
        .unwrap();
        let want = |names: &[&str]| names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>();
        assert!(unmet_conditions(&node, &want(&["Ready"])).is_empty());
        assert_eq!(
            unmet_conditions(&node, &want(&["Ready", "GPUHealthy", "NetworkReady"])),
            ["condition GPUHealthy is False", "condition NetworkReady is not reported"]
        );
    }

    #[test]
    fn pods_leave_by_eviction_by_their_owner_or_not_without_force() {
        let pod = |name: &str, controller: Option<bool>, manual: bool| {
            let mut p = Pod::default();
            p.metadata.name = Some(name.into());
            p.metadata.namespace = Some("default".into());
            if let Some(c) = controller {
                p.metadata.owner_references =
                    Some(vec![k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
                        kind: "ReplicaSet".into(),
                        name: "rs".into(),
                        controller: Some(c),
                        ..Default::default()
                    }]);
            }
            if manual {
                p.metadata.annotations = Some([(MIGRATION_ANNOTATION.to_owned(), "manual".to_owned())].into());
            }
            p
        };
        let pods = vec![
            pod("web", Some(true), false),
            pod("db", Some(true), true),
            pod("bare", None, false),
            pod("referenced-only", Some(false), false),
        ];
        let names = |v: &[&Pod]| v.iter().map(|p| p.metadata.name.clone().unwrap()).collect::<Vec<_>>();
        let m = migration(&pods, false);
        assert_eq!(names(&m.evict), ["web"]);
        assert_eq!(names(&m.manual), ["db"], "the owner moves it");
        assert_eq!(names(&m.unmanaged), ["bare", "referenced-only"], "no controller would recreate them");
        let forced = migration(&pods, true);
        assert_eq!(names(&forced.evict), ["web", "bare", "referenced-only"], "as kubectl drain --force");
        assert_eq!(names(&forced.manual), ["db"], "manual stays manual");
        let many: Vec<Pod> = (0..25).map(|i| pod(&format!("p{i}"), Some(true), false)).collect();
        assert!(listed(&many).ends_with("default/p19 and 5 more"), "{}", listed(&many));
    }
}
