//! Two remediator replicas of one cluster, as separate `firebreak remediator` processes sharing
//! a database: only the holder of the cluster's Lease acts; when it is killed with SIGKILL in
//! the middle of a drain, the other takes the Lease once it lapses, resumes the workflow where
//! the dead one left it, and no side effect happens twice.

mod common;

use std::time::Duration;

use common::{stack, steps, temp_dir, wait_for};
use firebreak_fleet_sim::Fault;
use k8s_openapi::api::{coordination::v1::Lease, core::v1::Node};
use kube::Api;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_replica_leads_and_a_killed_leader_is_taken_over_mid_drain() {
    // Mid-drain: the pods are labelled and their owners' grace period runs.
    takeover("leader-drain", "labelled ").await;
}

/// Killed right after it asked the node's actuator for the reboot: the new leader sends the same
/// command again, and the node reboots once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leader_killed_after_asking_for_the_reboot_reboots_the_node_once() {
    takeover("leader-reboot", "reboot asked of the node's actuator").await;
}

/// Two replicas; a fault; the leader killed with SIGKILL once a step whose reason starts with
/// `kill_at` is on record; the standby takes over and finishes, acting nothing twice.
async fn takeover(name: &str, kill_at: &str) {
    let stack = stack(name, |o| o.remediators = false).await;
    let cluster = stack.fleet.clusters()[0].clone();
    let client = firebreak::kube_client(&cluster.kubeconfig_path()).await.unwrap();
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-system");
    let lease_name = format!("firebreak-remediator-{}", cluster.name());
    let holder = || async { leases.get_opt(&lease_name).await.ok().flatten().and_then(|l| l.spec?.holder_identity) };
    let dir = temp_dir(&format!("{name}-replicas"));
    let db = format!("sqlite://{}", dir.join("remediator.db").display());
    let args = ["--lease-duration", "4s", "--migration-grace", "5s", "--quiet-period", "3s"];
    let replica = |id: &str| common::remediator_process(&stack, &dir, &db, id, &args);
    let mut a = replica("replica-a");
    wait_for("replica-a leading", Duration::from_secs(30), || async {
        (holder().await.as_deref() == Some("replica-a")).then_some(())
    })
    .await;
    let mut b = replica("replica-b");

    let node = format!("{}-node-001", cluster.name());
    let nodes: Api<Node> = Api::all(client.clone());
    let boot = |n: Node| n.status.unwrap().node_info.unwrap().boot_id;
    let boot_before = boot(nodes.get(&node).await.unwrap());
    cluster.inject(&node, Fault::MemoryUncorrectable).unwrap();
    wait_for(&format!("a step `{kill_at}`"), Duration::from_secs(60), || async {
        steps(&stack, &node).await.iter().any(|(_, r)| r.starts_with(kill_at)).then_some(())
    })
    .await;
    assert_eq!(holder().await.as_deref(), Some("replica-a"), "the standby never took over while the leader lived");
    a.kill().await.unwrap();

    wait_for("replica-b leading", Duration::from_secs(30), || async {
        (holder().await.as_deref() == Some("replica-b")).then_some(())
    })
    .await;
    let (all, rebooted) = common::healed_once(&stack, &node).await;
    let asked = all.iter().filter(|(_, r)| r.starts_with("reboot asked of the node's actuator")).count();
    assert_eq!(asked, 1, "the reboot asked once: {all:?}");
    let rebooted = rebooted.expect("the node rebooted");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(boot(nodes.get(&node).await.unwrap()), rebooted, "one reboot, not two");
    assert_ne!(rebooted, boot_before);
    let lease = leases.get(&lease_name).await.unwrap().spec.unwrap();
    assert!(lease.lease_transitions.unwrap_or(0) >= 1, "{lease:?}");
    b.kill().await.unwrap();
    stack.shutdown().await;
}
