//! A remediator process killed with SIGKILL in every state of a repair: each time a new process
//! resumes the workflow from its database, and no side effect happens twice — one workflow, one
//! cordon kept, each pod evicted once, one reboot, the node back in service with no permit left.

mod common;

use std::time::Duration;

use common::{no_permits, stack, steps, temp_dir, wait_for};
use firebreak_fleet_sim::Fault;
use k8s_openapi::api::core::v1::Node;
use kube::Api;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_remediator_killed_in_every_state_resumes_and_acts_once() {
    let stack = stack("crash", |o| o.remediators = false).await;
    let cluster = stack.fleet.clusters()[0].clone();
    let client = firebreak::kube_client(&cluster.kubeconfig_path()).await.unwrap();
    let dir = temp_dir("crash-remediator");
    let db = format!("sqlite://{}", dir.join("remediator.db").display());
    // One replica, so a new process acts at once; the Lease's own takeover is tests/leader.rs's.
    let args = ["--no-leader-election", "--migration-grace", "2s", "--quiet-period", "3s"];
    let mut lives = 0;
    let mut process = common::remediator_process(&stack, &dir, &db, "life-0", &args);

    let node = format!("{}-node-001", cluster.name());
    let nodes: Api<Node> = Api::all(client.clone());
    let boot = |n: Node| n.status.unwrap().node_info.unwrap().boot_id;
    let boot_before = boot(nodes.get(&node).await.unwrap());
    cluster.inject(&node, Fault::MemoryUncorrectable).unwrap();
    let states = ["permit_wait", "cordoning", "draining", "rebooting", "awaiting_boot", "verifying"];
    for state in states {
        wait_for(&format!("the workflow in {state}"), Duration::from_secs(60), || async {
            steps(&stack, &node).await.iter().any(|(s, _)| s == state).then_some(())
        })
        .await;
        process.kill().await.unwrap();
        lives += 1;
        process = common::remediator_process(&stack, &dir, &db, &format!("life-{lives}"), &args);
    }
    let (_, why) = wait_for("the workflow's end", Duration::from_secs(90), || async {
        steps(&stack, &node).await.into_iter().find(|(s, _)| s == "healed" || s == "escalated")
    })
    .await;
    let all = steps(&stack, &node).await;
    let seen: Vec<&str> = all.iter().map(|(s, _)| s.as_str()).collect();
    assert!(seen.contains(&"healed"), "{why}: {seen:?}");
    for state in states {
        assert!(seen.contains(&state), "{state} in {seen:?}");
    }
    let url = format!("{}/api/v1/remediations?node={node}&limit=1000", stack.event_center_url);
    let published = common::get_json(&url).await.unwrap();
    let workflows: std::collections::BTreeSet<&str> =
        published.as_array().unwrap().iter().filter_map(|s| s["workflow_id"].as_str()).collect();
    assert_eq!(workflows.len(), 1, "one workflow across {lives} kills");
    // One reboot: the boot it came back on is the one it runs now.
    let rebooted: Vec<&str> = all
        .iter()
        .filter_map(|(_, r)| r.strip_prefix("rebooted in "))
        .filter_map(|r| r.split(" -> ").nth(1)?.split(';').next())
        .collect();
    assert_eq!(rebooted.len(), 1, "{seen:?}");
    let now = nodes.get(&node).await.unwrap();
    assert_eq!(boot(now.clone()), rebooted[0], "one reboot, not two");
    assert_ne!(rebooted[0], boot_before);
    assert!(now.spec.as_ref().and_then(|s| s.unschedulable) != Some(true), "back in service");
    let audit = cluster.audit();
    let mut evicted: Vec<&str> =
        audit.iter().filter(|e| e.subresource == "eviction" && e.code == 201).map(|e| e.name.as_str()).collect();
    assert!(!evicted.is_empty(), "the node was drained");
    let n = evicted.len();
    evicted.sort_unstable();
    evicted.dedup();
    assert_eq!(evicted.len(), n, "no pod evicted twice");
    no_permits(&stack).await;
    process.kill().await.unwrap();
    stack.shutdown().await;
}
