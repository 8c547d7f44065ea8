//! (e) The real kubectl against fleet-sim: the simulated API server must be truthful enough for it.

mod common;

use std::{process::Command, time::Duration};

use common::{temp_dir, wait_for};
use firebreak_fleet_sim::{Fleet, FleetConfig};
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
    let dir = temp_dir("kubectl");
    let fleet = Fleet::start(FleetConfig {
        data_dir: dir.clone(),
        clusters: 1,
        nodes_per_cluster: 3,
        timings: Default::default(),
    })
    .await
    .unwrap();
    let cluster = fleet.clusters()[0].clone();
    let client = firebreak::kube_client(&cluster.kubeconfig_path()).await.unwrap();
    let nodes: Api<Node> = Api::all(client.clone());
    let pods: Api<Pod> = Api::all(client.clone());
    wait_for("pods running", Duration::from_secs(10), || async {
        let l = pods.list(&ListParams::default()).await.ok()?;
        l.items.iter().all(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")).then_some(())
    })
    .await;
    let k = Kubectl { kubeconfig: cluster.kubeconfig_path(), cache: dir.join("kube-cache") };
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
