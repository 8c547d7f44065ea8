//! A remediator process killed with SIGKILL in every state of a repair — a reboot, a component
//! restart, a reinstall through a Job: each time a new process resumes the workflow from its
//! database, and no side effect happens twice — one workflow, each pod evicted once, one reboot
//! or one restart or one Job, the node back in service with no permit left. And what a
//! transition must tell — its step on the topic, its webhook — outlives a crash.

mod common;

use std::time::Duration;

use common::{no_permits, stack, steps, temp_dir, wait_for};
use firebreak::demo::Stack;
use firebreak_fleet_sim::{Cluster, Fault};
use k8s_openapi::api::{batch::v1::Job, core::v1::Node};
use kube::{Api, api::ListParams};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killed_in_every_state_of_a_reboot() {
    let states = ["permit_wait", "cordoning", "draining", "rebooting", "awaiting_boot", "verifying"];
    let (stack, (_, rebooted)) = crash_through("crash-reboot", Fault::MemoryUncorrectable, &states, &[]).await;
    let cluster = stack.fleet.clusters()[0].clone();
    // One reboot: the boot it came back on is the one it runs now.
    let rebooted = rebooted.expect("the node rebooted");
    assert_eq!(boot(&cluster, "c1-node-001").await, rebooted, "one reboot, not two");
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killed_in_every_state_of_a_restart() {
    let states = ["permit_wait", "cordoning", "restarting", "awaiting_restart", "verifying"];
    let (stack, (all, _)) = crash_through("crash-restart", Fault::KubeletOom, &states, &[]).await;
    let done = all.iter().filter(|(_, r)| r.starts_with("restart kubelet done in ")).count();
    assert_eq!(done, 1, "one restart: {all:?}");
    assert!(!all.iter().any(|(s, _)| s == "draining"), "no drain: {all:?}");
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killed_in_every_state_of_a_reinstall_through_a_job() {
    let dir = temp_dir("crash-reinstall-files");
    let template = dir.join("job.yaml");
    std::fs::write(
        &template,
        format!(
            "apiVersion: batch/v1\nkind: Job\nmetadata:\n  namespace: default\n  annotations:\n    {}: \"{{{{node}}}}\"\n\
             spec:\n  template:\n    spec:\n      restartPolicy: Never\n      containers:\n      - name: reimage\n        \
             image: registry.example/pxe-reimage:1\n",
            firebreak_fleet_sim::REIMAGE_NODE_ANNOTATION
        ),
    )
    .unwrap();
    let (template, policy) = (template.display().to_string(), memory_policy(&dir, r#""reinstall", "human""#));
    let states = ["permit_wait", "cordoning", "draining", "reinstalling", "awaiting_reinstall", "verifying"];
    let extra = ["--reinstall-job-template", template.as_str(), "--policy", policy.as_str()];
    let (stack, (all, _)) = crash_through("crash-reinstall", Fault::MemoryUncorrectable, &states, &extra).await;
    let cluster = stack.fleet.clusters()[0].clone();
    let client = firebreak::kube_client(&cluster.kubeconfig_path()).await.unwrap();
    let jobs: Api<Job> = Api::namespaced(client, "default");
    let made = jobs.list(&ListParams::default().labels("firebreak.io/node=c1-node-001")).await.unwrap();
    assert_eq!(made.items.len(), 1, "one Job across the kills");
    assert!(all.iter().any(|(_, r)| r.starts_with("reinstalled in ")), "{all:?}");
    stack.shutdown().await;
}

/// An escalation whose webhook receiver is down, and whose remediator is then killed: the
/// escalation waits in the outbox, and the next remediator process delivers it, signed, once
/// the receiver is up — besides the step on the remediation topic.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_escalation_webhook_outlives_a_crash_and_a_receiver_down() {
    let stack = stack("crash-outbox", |o| o.remediators = false).await;
    let cluster = stack.fleet.clusters()[0].clone();
    let dir = temp_dir("crash-outbox-remediator");
    let db = format!("sqlite://{}", dir.join("remediator.db").display());
    let policy = memory_policy(&dir, r#""human""#);
    // A port with nothing on it yet.
    let addr = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string();
    let url = format!("http://{addr}/hook");
    let args = ["--no-leader-election", "--policy", &policy, "--escalation-webhook", &url];
    let process = |life: &str| {
        let mut args = args.to_vec();
        args.extend(["--escalation-webhook-secret", "s3cret"]);
        common::remediator_process(&stack, &dir, &db, life, &args)
    };
    let mut first = process("life-0");
    let node = format!("{}-node-002", cluster.name());
    cluster.inject(&node, Fault::MemoryUncorrectable).unwrap();
    let (_, why) = wait_for("the escalation on the topic", Duration::from_secs(60), || async {
        steps(&stack, &node).await.into_iter().find(|(s, _)| s == "escalated")
    })
    .await;
    first.kill().await.unwrap();
    let (_, mut got) = common::webhook_receiver_on(&addr).await;
    let _second = process("life-1");
    let (sig, event, body) = tokio::time::timeout(Duration::from_secs(30), got.recv()).await.unwrap().unwrap();
    assert_eq!(event, "escalated");
    assert_eq!(sig, firebreak_plumbing::webhook::signature(b"s3cret", &body));
    let told: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(told["node"], node.as_str());
    assert_eq!(told["reason"], why.as_str(), "the webhook says what the record says");
    // Delivered once: nothing more comes.
    assert!(tokio::time::timeout(Duration::from_secs(3), got.recv()).await.is_err(), "delivered once");
    stack.shutdown().await;
}

/// A remediation policy file in `dir` whose memory errors take `ladder` (TOML list items); its
/// path.
fn memory_policy(dir: &std::path::Path, ladder: &str) -> String {
    let path = dir.join("policy.toml");
    let text = format!(
        "[budget]\nattempts = 3\nwindow = \"1h\"\n[[process]]\nname = \"memory\"\n\
         kinds = [\"MemoryUncorrectable\"]\nladder = [{ladder}]\n"
    );
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

/// A healed workflow's steps, and the boot it rebooted into if it did.
type Healed = (Vec<(String, String)>, Option<String>);

async fn boot(cluster: &Cluster, node: &str) -> String {
    let client = firebreak::kube_client(&cluster.kubeconfig_path()).await.unwrap();
    let n = Api::<Node>::all(client).get(node).await.unwrap();
    n.status.unwrap().node_info.unwrap().boot_id
}

/// A fault on `c1-node-001`, and a remediator process killed with SIGKILL (then started again)
/// once the workflow is on record in each of `states`; the stack, and the workflow's steps once
/// it healed. Checks what every repair must hold: one workflow, no pod evicted twice, the node
/// back in service, no permit left.
async fn crash_through(name: &str, fault: Fault, states: &[&str], extra: &[&str]) -> (Stack, Healed) {
    let stack = stack(name, |o| o.remediators = false).await;
    let cluster = stack.fleet.clusters()[0].clone();
    let dir = temp_dir(&format!("{name}-remediator"));
    let db = format!("sqlite://{}", dir.join("remediator.db").display());
    // One replica, so a new process acts at once; the Lease's own takeover is tests/leader.rs's.
    let mut args = vec!["--no-leader-election", "--migration-grace", "2s", "--quiet-period", "3s"];
    args.extend_from_slice(extra);
    let mut lives = 0;
    let mut process = common::remediator_process(&stack, &dir, &db, "life-0", &args);
    let node = format!("{}-node-001", cluster.name());
    let before = boot(&cluster, &node).await;
    cluster.inject(&node, fault).unwrap();
    for state in states {
        wait_for(&format!("the workflow in {state}"), Duration::from_secs(60), || async {
            steps(&stack, &node).await.iter().any(|(s, _)| s == state).then_some(())
        })
        .await;
        process.kill().await.unwrap();
        lives += 1;
        process = common::remediator_process(&stack, &dir, &db, &format!("life-{lives}"), &args);
    }
    let (all, rebooted) = common::healed_once(&stack, &node).await;
    for state in states {
        assert!(all.iter().any(|(s, _)| s == state), "{state} in {all:?}");
    }
    let client = firebreak::kube_client(&cluster.kubeconfig_path()).await.unwrap();
    let now = Api::<Node>::all(client).get(&node).await.unwrap();
    assert!(now.spec.as_ref().and_then(|s| s.unschedulable) != Some(true), "back in service");
    if fault != Fault::KubeletOom {
        assert!(cluster.audit().iter().any(|e| e.subresource == "eviction"), "the node was drained");
        assert_ne!(boot(&cluster, &node).await, before, "a new boot");
    }
    no_permits(&stack).await;
    process.kill().await.unwrap();
    (stack, (all, rebooted))
}
