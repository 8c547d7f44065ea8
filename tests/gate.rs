//! (b) The gate's concurrency budget holds across simultaneous faults; (c) with the gate down
//! nothing is cordoned, and the workflow proceeds once it is back.

mod common;

use std::{collections::BTreeMap, time::Duration};

use common::{NodeLog, get_json_as, stack, steps, wait_for};
use firebreak_fleet_sim::Fault;
use firebreak_rate_limiter::{Limits, OperationPolicy, Policy};
use firebreak_schema::Operation;

/// One cordon at a time per cluster; drains and reboots unlimited.
fn one_cordon_at_a_time() -> Policy {
    let per_cluster = |max_in_flight| OperationPolicy {
        cluster: Some(Limits { max_in_flight, ..Limits::default() }),
        ..OperationPolicy::default()
    };
    Policy {
        permit_ttl: Duration::from_secs(300),
        operations: BTreeMap::from([
            (Operation::Cordon, per_cluster(Some(1))),
            (Operation::Drain, per_cluster(None)),
            (Operation::Reboot, per_cluster(None)),
        ]),
        ..Policy::default()
    }
}

async fn healed(stack: &firebreak::demo::Stack, node: &str) -> Option<()> {
    steps(stack, node).await.last().filter(|(s, _)| s == "healed").map(|_| ())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrency_budget_of_one_cordon_per_cluster_holds() {
    let stack = stack("budget", |o| {
        o.nodes_per_cluster = 5;
        o.policy = one_cordon_at_a_time();
    })
    .await;
    let cluster = stack.fleet.clusters()[0].clone();
    let client = firebreak::kube_client(&cluster.kubeconfig_path()).await.unwrap();
    let log = NodeLog::watch(client);
    let victims: Vec<String> = (1..=3).map(|i| format!("{}-node-00{i}", cluster.name())).collect();
    for node in &victims {
        cluster.inject(node, Fault::MemoryUncorrectable).unwrap();
    }
    for node in &victims {
        wait_for(&format!("{node} healed"), Duration::from_secs(120), || healed(&stack, node)).await;
    }
    assert_eq!(log.max_out_of_service(), 1, "never more than one node cordoned at a time, and one was");
    for node in &victims {
        assert!(log.first_out_of_service(node).is_some(), "{node} was taken out of service");
    }
    // The denials say which rule, where, and what was measured.
    let decisions =
        get_json_as(&stack.tokens.viewer, &format!("{}/api/v1/decisions?limit=1000", stack.gate_url)).await.unwrap();
    let denied: Vec<&serde_json::Value> =
        decisions.as_array().unwrap().iter().filter(|d| d["granted"] == false).collect();
    assert!(!denied.is_empty());
    for d in denied {
        assert_eq!(d["rule"], "in_flight", "{d}");
        assert_eq!(d["scope"], format!("cluster={}", cluster.name()));
        assert_eq!((d["measured"].as_f64(), d["threshold"].as_f64()), (Some(1.0), Some(1.0)));
    }
    let mut explained = false;
    for n in &victims {
        explained |= steps(&stack, n)
            .await
            .iter()
            .any(|(s, r)| s == "permit_wait" && r.contains("1 cordon permits in flight in cluster=c1 (limit 1)"));
    }
    assert!(explained, "a waiting workflow explains the concurrency limit it waits on");
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn gate_down_means_no_cordon_until_it_is_back() {
    let mut stack = stack("gate-down", |_| {}).await;
    let cluster = stack.fleet.clusters()[0].clone();
    let client = firebreak::kube_client(&cluster.kubeconfig_path()).await.unwrap();
    let log = NodeLog::watch(client);
    let node = format!("{}-node-002", cluster.name());
    stack.stop_gate().await;
    cluster.inject(&node, Fault::ReadonlyFilesystem).unwrap();
    wait_for("the workflow to report the gate unavailable", Duration::from_secs(20), || async {
        steps(&stack, &node)
            .await
            .iter()
            .any(|(s, r)| s == "permit_wait" && r.contains("gate unavailable, failing closed"))
            .then_some(())
    })
    .await;
    // Several refusals later (each a failed request to the dead gate), still nothing cordoned.
    let metrics = format!("{}/metrics", stack.metrics_url);
    wait_for("three fail-closed denials", Duration::from_secs(30), || async {
        let text = reqwest::get(&metrics).await.ok()?.text().await.ok()?;
        let line = text.lines().find(|l| {
            l.starts_with("firebreak_remediator_permit_denials_total{") && l.contains("limit=\"gate_unavailable\"")
        })?;
        let n: f64 = line.rsplit(' ').next()?.parse().ok()?;
        (n >= 3.0).then_some(())
    })
    .await;
    assert!(log.first_out_of_service(&node).is_none(), "nothing cordoned while the gate is down");
    assert!(steps(&stack, &node).await.iter().all(|(s, _)| s == "permit_wait"));

    stack.start_gate().await.unwrap();
    let back = tokio::time::Instant::now();
    wait_for("the node healed after the gate came back", Duration::from_secs(60), || healed(&stack, &node)).await;
    let cordoned = log.first_out_of_service(&node).expect("the node was cordoned once the gate was back");
    assert!(cordoned >= back);
    stack.shutdown().await;
}
