//! (e) The real kubectl against fleet-sim: the simulated API server must be truthful enough for it.

mod common;

use std::{process::Command, time::Duration};

use common::{temp_dir, wait_for};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::{Api, api::ListParams};

struct Kubectl {
    kubeconfig: std::path::PathBuf,
    cache: std::path::PathBuf,
}

impl Kubectl {
    fn run(&self, args: &[&str]) -> String {
        let out = Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .arg("--cache-dir")
            .arg(&self.cache)
            .args(args)
            .output()
            .expect("kubectl is installed");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "kubectl {args:?} failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
        stdout
    }
}

fn rows(out: &str) -> Vec<Vec<String>> {
    out.lines().map(|l| l.split_whitespace().map(str::to_owned).collect()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_works_against_fleet_sim() {
    let fleet = common::fleet("kubectl", 3).await;
    let cluster = fleet.clusters()[0].clone();
    let client = firebreak::kube_client(&cluster.kubeconfig_path()).await.unwrap();
    let nodes: Api<Node> = Api::all(client.clone());
    let pods: Api<Pod> = Api::all(client.clone());
    wait_for("pods running", Duration::from_secs(10), || async {
        let l = pods.list(&ListParams::default()).await.ok()?;
        l.items.iter().all(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")).then_some(())
    })
    .await;
    let k = Kubectl { kubeconfig: cluster.kubeconfig_path(), cache: temp_dir("kube-cache") };
    let node = "c1-node-001";

    let got = rows(&k.run(&["get", "nodes"]));
    assert_eq!(got[0], ["NAME", "STATUS", "ROLES", "AGE", "VERSION"]);
    assert_eq!(got.len(), 4);
    assert!(got[1..].iter().all(|r| r[1] == "Ready" && r[2] == "worker" && r[4] == "v1.33.0"), "{got:?}");

    assert!(k.run(&["cordon", node]).contains(&format!("node/{node} cordoned")));
    assert_eq!(nodes.get(node).await.unwrap().spec.unwrap().unschedulable, Some(true));
    let got = rows(&k.run(&["get", "node", node]));
    assert_eq!(got[1][1], "Ready,SchedulingDisabled");
    assert!(k.run(&["uncordon", node]).contains(&format!("node/{node} uncordoned")));
    assert_ne!(nodes.get(node).await.unwrap().spec.unwrap().unschedulable, Some(true));

    let got = rows(&k.run(&["get", "pods", "-A", "--field-selector", &format!("spec.nodeName={node}")]));
    assert_eq!(got[0], ["NAMESPACE", "NAME", "READY", "STATUS", "RESTARTS", "AGE"]);
    let mut listed: Vec<String> = got[1..].iter().map(|r| format!("{}/{}", r[0], r[1])).collect();
    let mut want: Vec<String> = pods
        .list(&ListParams::default().fields(&format!("spec.nodeName={node}")))
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|p| format!("{}/{}", p.metadata.namespace.unwrap(), p.metadata.name.unwrap()))
        .collect();
    listed.sort();
    want.sort();
    assert_eq!(listed, want);
    assert!(listed.len() >= 3, "web, batch and the daemon pod: {listed:?}");
    assert!(got[1..].iter().all(|r| r[2] == "1/1" && r[3] == "Running"), "{got:?}");

    assert!(k.run(&["label", "node", node, "firebreak.io/test=yes"]).contains("labeled"));
    let labels = nodes.get(node).await.unwrap().metadata.labels.unwrap();
    assert_eq!(labels.get("firebreak.io/test").map(String::as_str), Some("yes"));
    assert_eq!(labels.get("kubernetes.io/hostname").map(String::as_str), Some(node), "other labels kept");
    assert!(k.run(&["label", "node", node, "firebreak.io/test-"]).contains("unlabeled"));
    assert!(!nodes.get(node).await.unwrap().metadata.labels.unwrap().contains_key("firebreak.io/test"));

    // The other resources the loop uses are there too.
    assert!(k.run(&["get", "pdb", "-n", "default"]).contains("web"));
    assert_eq!(rows(&k.run(&["get", "leases", "-n", "kube-node-lease"])).len(), 4);
    let json: serde_json::Value = serde_json::from_str(&k.run(&["get", "node", node, "-o", "json"])).unwrap();
    assert_eq!(json["kind"], "Node");
    assert!(json["status"]["nodeInfo"]["bootID"].as_str().is_some_and(|b| !b.is_empty()));
    fleet.shutdown().await;
}

/// Eviction, deletion and rescheduling behave as a real kube-apiserver's do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_sim_evicts_and_deletes_like_the_api_server() {
    use kube::api::{DeleteParams, EvictParams, Patch, PatchParams};
    let fleet = common::fleet("sim-api", 4).await;
    let cluster = fleet.clusters()[0].clone();
    let client = firebreak::kube_client(&cluster.kubeconfig_path()).await.unwrap();
    let nodes: Api<Node> = Api::all(client.clone());
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let all_ready = || async {
        let l = pods.list(&ListParams::default().labels("app=web")).await.ok()?;
        l.items
            .iter()
            .all(|p| {
                p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
                    && p.metadata.deletion_timestamp.is_none()
            })
            .then_some(l.items)
    };
    let web = wait_for("web pods running", Duration::from_secs(10), all_ready).await;
    let node = "c1-node-001";
    let on_node: Vec<String> = web
        .iter()
        .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node))
        .map(|p| p.metadata.name.clone().unwrap())
        .collect();
    assert_eq!(on_node.len(), 2);
    nodes
        .patch(node, &PatchParams::default(), &Patch::Merge(serde_json::json!({"spec": {"unschedulable": true}})))
        .await
        .unwrap();

    // kube-core's EvictParams body: accepted, its `delete_options` ignored with a warning, as
    // a real API server does (dry run: nothing happens).
    let raw = reqwest::Client::new()
        .post(format!("{}/api/v1/namespaces/default/pods/{}/eviction?dryRun=All", cluster.url(), on_node[0]))
        .json(&serde_json::json!({"delete_options": {"gracePeriodSeconds": 0}, "metadata": {"name": on_node[0]}}))
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status(), 201);
    let warning = raw.headers().get("warning").unwrap().to_str().unwrap().to_owned();
    assert_eq!(warning, r#"299 - "unknown field \"delete_options\"""#);
    assert!(pods.get(&on_node[0]).await.unwrap().metadata.deletion_timestamp.is_none(), "dry run changes nothing");

    // One disruption allowed: the first eviction succeeds and the pod is Terminating, not gone.
    pods.evict(&on_node[0], &EvictParams::default()).await.unwrap();
    let terminating = pods.get(&on_node[0]).await.unwrap();
    assert!(terminating.metadata.deletion_timestamp.is_some());
    // None left: the second is refused with the API server's words.
    match pods.evict(&on_node[1], &EvictParams::default()).await {
        Err(kube::Error::Api(s)) => {
            assert_eq!(s.code, 429);
            assert_eq!(s.message, "Cannot evict pod as it would violate the pod's disruption budget.");
        }
        other => panic!("expected 429, got {other:?}"),
    }
    // The replacement is scheduled off the cordoned node; while it is not Ready it can be
    // evicted whatever the budget says.
    let replacement = wait_for("a replacement pod", Duration::from_secs(5), || async {
        let l = pods.list(&ListParams::default().labels("app=web")).await.ok()?;
        l.items.into_iter().find(|p| {
            p.metadata.name.as_deref().is_some_and(|n| !web.iter().any(|w| w.metadata.name.as_deref() == Some(n)))
        })
    })
    .await;
    let replacement_node = replacement.spec.as_ref().and_then(|s| s.node_name.clone()).unwrap();
    assert_ne!(replacement_node, node, "not on the cordoned node");
    assert_ne!(replacement.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Running"));
    pods.evict(replacement.metadata.name.as_deref().unwrap(), &EvictParams::default()).await.unwrap();
    // The terminating pod goes away after its grace period.
    wait_for("the evicted pod gone", Duration::from_secs(10), || async {
        matches!(pods.get(&on_node[0]).await, Err(kube::Error::Api(s)) if s.code == 404).then_some(())
    })
    .await;
    // Deletion with a zero grace period is immediate.
    pods.delete(&on_node[1], &DeleteParams { grace_period_seconds: Some(0), ..Default::default() }).await.unwrap();
    assert!(matches!(pods.get(&on_node[1]).await, Err(kube::Error::Api(s)) if s.code == 404));
    // Without a grace period of its own, a deletion takes the pod's terminationGracePeriodSeconds.
    let batch = pods.list(&ListParams::default().labels("app=batch")).await.unwrap().items.remove(0);
    let batch_name = batch.metadata.name.clone().unwrap();
    let own = batch.spec.as_ref().and_then(|s| s.termination_grace_period_seconds);
    pods.delete(&batch_name, &DeleteParams::default()).await.unwrap();
    let deleting = pods.get(&batch_name).await.unwrap();
    assert!(deleting.metadata.deletion_timestamp.is_some(), "Terminating, not gone");
    assert_eq!(deleting.metadata.deletion_grace_period_seconds, own);
    // Replicas come back to full strength, all off the cordoned node.
    let web = wait_for("web back to 5 ready pods", Duration::from_secs(15), || async {
        let items = all_ready().await?;
        (items.len() == 5).then_some(items)
    })
    .await;
    let moved = web.iter().filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node)).count();
    assert_eq!(moved, 0);
    fleet.shutdown().await;
}

/// `kubectl drain` against fleet-sim as against a real cluster: the workloads' owners are served
/// (`apps/v1` Deployments, ReplicaSets, DaemonSets, linked by ownerReferences), DaemonSet pods
/// are ignored, the rest leave through the Eviction API (never a delete), and kubectl waits until
/// they are gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_drain_works_against_fleet_sim() {
    let fleet = common::fleet("kubectl-drain", 3).await;
    let cluster = fleet.clusters()[0].clone();
    common::wait_pods_ready(&cluster).await;
    let client = firebreak::kube_client(&cluster.kubeconfig_path()).await.unwrap();
    let k = Kubectl { kubeconfig: cluster.kubeconfig_path(), cache: temp_dir("kube-cache-drain") };
    let node = "c1-node-001";

    let got = rows(&k.run(&["get", "deployments,replicasets", "-n", "default"]));
    let named = |n: &str| got.iter().any(|r| r.first().map(String::as_str) == Some(n));
    assert!(named("deployment.apps/web") && named("replicaset.apps/web-7d4b9c"), "{got:?}");
    assert!(k.run(&["get", "ds", "-n", "kube-system"]).contains("node-exporter"));
    let rs = k.run(&[
        "get",
        "rs",
        "web-7d4b9c",
        "-n",
        "default",
        "-o",
        "jsonpath={.metadata.ownerReferences[0].kind}/{.metadata.ownerReferences[0].name}",
    ]);
    assert_eq!(rs, "Deployment/web");

    let before = common::pods_on(&client, node).await;
    assert!(before.len() >= 2, "{before:?}");
    let out = k.run(&["drain", node, "--ignore-daemonsets", "--delete-emptydir-data", "--timeout=90s"]);
    assert!(out.contains(&format!("node/{node} drained")), "{out}");
    let nodes: Api<Node> = Api::all(client.clone());
    assert_eq!(nodes.get(node).await.unwrap().spec.unwrap().unschedulable, Some(true));
    let left: Vec<Pod> = Api::<Pod>::all(client.clone())
        .list(&ListParams::default().fields(&format!("spec.nodeName={node}")))
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|p| !p.metadata.name.as_deref().unwrap_or_default().starts_with("churn-"))
        .collect();
    let names: Vec<&str> = left.iter().filter_map(|p| p.metadata.name.as_deref()).collect();
    assert_eq!(names, [format!("node-exporter-{node}").as_str()], "only the DaemonSet pod stays");
    let audit = cluster.audit();
    assert!(audit.iter().any(|a| a.subresource == "eviction" && a.code == 201), "evicted through the Eviction API");
    assert!(!audit.iter().any(|a| a.verb == "delete" && a.resource == "pods"), "never deleted");
    fleet.shutdown().await;
}

/// Issue 12: fleet-sim refuses what kube-apiserver refuses, with a `422 Invalid` Status naming
/// the field: a string where the schema has a boolean, and label keys and values that are not
/// labels. The object stays as it was, and watchers never see the bad write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_sim_refuses_ill_typed_objects_and_bad_labels_with_422() {
    use kube::api::{Patch, PatchParams};
    let fleet = common::fleet("invalid", 1).await;
    let cluster = fleet.clusters()[0].clone();
    let client = firebreak::kube_client(&cluster.kubeconfig_path()).await.unwrap();
    let nodes: Api<Node> = Api::all(client);
    let node = "c1-node-001";
    let before = nodes.get(node).await.unwrap();
    for (patch, says) in [
        (
            serde_json::json!({"spec": {"unschedulable": "yes"}}),
            "spec.unschedulable: invalid type: string \"yes\", expected a boolean",
        ),
        (serde_json::json!({"metadata": {"labels": {"a/b/c": "x"}}}), "metadata.labels: Invalid value: \"a/b/c\""),
        (
            serde_json::json!({"metadata": {"labels": {"ok": "-bad value!"}}}),
            "metadata.labels.ok: Invalid value: \"-bad value!\"",
        ),
        (
            serde_json::json!({"metadata": {"labels": {"ok": 7}}}),
            "metadata.labels.ok: Invalid value: 7: must be a string",
        ),
        (
            serde_json::json!({"metadata": {"annotations": {"x y": "z"}}}),
            "metadata.annotations: Invalid value: \"x y\"",
        ),
    ] {
        match nodes.patch(node, &PatchParams::default(), &Patch::Merge(&patch)).await {
            Err(kube::Error::Api(s)) => {
                assert_eq!((s.code, s.reason.as_str()), (422, "Invalid"), "{patch}: {s:?}");
                assert!(s.message.contains(&format!("Node \"{node}\" is invalid: {says}")), "{patch}: {}", s.message);
            }
            other => panic!("{patch} was not refused: {other:?}"),
        }
    }
    let after = nodes.get(node).await.unwrap();
    assert_eq!(after.metadata.resource_version, before.metadata.resource_version, "nothing was written");
    // kubectl reports the refusal and exits non-zero.
    let out = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(cluster.kubeconfig_path())
        .args(["patch", "node", node, "--type", "merge", "-p", r#"{"spec":{"unschedulable":"yes"}}"#])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is invalid") && err.contains("spec.unschedulable"), "{err}");
}
