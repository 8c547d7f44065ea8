//! The remediator leaves humans' decisions standing: a fault that cleared while its workflow
//! waited is not acted on; a node cordoned before Firebreak took it stays cordoned after the
//! repair; a node a human uncordons mid-workflow cancels the workflow; an escalated node gets
//! no new work until an operator clears it. The repair ladder climbs, and ends with a human.

mod common;

use std::time::Duration;

use common::{get_json, get_json_as, halt, no_permits, resume, stack, steps, wait_for};
use firebreak::demo::Stack;
use firebreak_fleet_sim::{Fault, RuntimeFailure};
use k8s_openapi::api::core::v1::Node;
use kube::{
    Api,
    api::{Patch, PatchParams},
};
use serde_json::{Value, json};

async fn set_unschedulable(nodes: &Api<Node>, node: &str, on: bool) {
    let patch = json!({"spec": {"unschedulable": if on { json!(true) } else { Value::Null }}});
    nodes.patch(node, &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
}

fn tainted(n: &Node) -> bool {
    n.spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .is_some_and(|t| t.iter().any(|t| t.key == firebreak_schema::UNHEALTHY_TAINT_KEY))
}

/// Ids of the workflows the remediator ran on a node.
async fn workflows(stack: &Stack, node: &str) -> std::collections::BTreeSet<String> {
    let url = format!("{}/api/v1/remediations?node={node}&limit=1000", stack.event_center_url);
    let all = get_json(&url).await.unwrap_or(Value::Null);
    all.as_array().into_iter().flatten().filter_map(|s| s["workflow_id"].as_str().map(str::to_owned)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_human_uncordon_cancels_and_an_admin_cordon_stays() {
    let stack = stack("humans", |_| {}).await;
    let cluster = stack.fleet.clusters()[0].clone();
    let client = firebreak::kube_client(&cluster.kubeconfig_path()).await.unwrap();
    let nodes: Api<Node> = Api::all(client);

    // Held after its cordon (drains are halted), a workflow's node is uncordoned by a human.
    let node = format!("{}-node-004", cluster.name());
    let drains = halt(&stack, cluster.name(), &["drain"]).await;
    cluster.inject(&node, Fault::ReadonlyFilesystem).unwrap();
    wait_for("the workflow waiting for its drain permit", Duration::from_secs(30), || async {
        steps(&stack, &node)
            .await
            .iter()
            .any(|(s, r)| s == "draining" && r.contains("waiting for a drain"))
            .then_some(())
    })
    .await;
    assert!(tainted(&nodes.get(&node).await.unwrap()));
    set_unschedulable(&nodes, &node, false).await;
    let (_, why) = wait_for("the workflow cancelled", Duration::from_secs(30), || async {
        steps(&stack, &node).await.into_iter().find(|(s, _)| s == "cancelled")
    })
    .await;
    assert!(why.contains("uncordoned by someone else during draining"), "{why}");
    let n = nodes.get(&node).await.unwrap();
    assert_ne!(n.spec.as_ref().unwrap().unschedulable, Some(true), "their uncordon stands");
    assert!(!tainted(&n), "our taint is gone");
    no_permits(&stack).await;
    resume(&stack, &drains).await;

    // A node an admin cordoned before the fault is repaired and stays cordoned.
    let node = format!("{}-node-002", cluster.name());
    set_unschedulable(&nodes, &node, true).await;
    cluster.inject(&node, Fault::MemoryUncorrectable).unwrap();
    let (_, why) = wait_for("the node healed", Duration::from_secs(60), || async {
        steps(&stack, &node).await.into_iter().rfind(|(s, _)| s == "healed")
    })
    .await;
    assert!(why.contains("left cordoned"), "{why}");
    let n = nodes.get(&node).await.unwrap();
    assert_eq!(n.spec.as_ref().unwrap().unschedulable, Some(true), "the admin's cordon stands");
    assert!(!tainted(&n));
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fault_that_cleared_while_its_workflow_waited_is_not_acted_on() {
    let stack = stack("cleared", |_| {}).await;
    let cluster = stack.fleet.clusters()[0].clone();
    let client = firebreak::kube_client(&cluster.kubeconfig_path()).await.unwrap();
    let nodes: Api<Node> = Api::all(client);
    let node = format!("{}-node-003", cluster.name());
    let cordons = halt(&stack, cluster.name(), &["cordon"]).await;
    cluster.inject(&node, Fault::NotReady).unwrap();
    wait_for("the workflow held before its cordon", Duration::from_secs(30), || async {
        steps(&stack, &node)
            .await
            .iter()
            .any(|(s, r)| s == "permit_wait" && r.contains("halted by operator"))
            .then_some(())
    })
    .await;
    // The partition heals before the gate lets the cordon through.
    cluster.recover(&node).unwrap();
    let (_, why) = wait_for("the workflow ended as cleared", Duration::from_secs(30), || async {
        steps(&stack, &node).await.into_iter().find(|(s, _)| s == "cleared")
    })
    .await;
    assert!(why.contains("cleared before action (cordon): NodeNotReady no longer holds"), "{why}");
    resume(&stack, &cordons).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let n = nodes.get(&node).await.unwrap();
    assert_ne!(n.spec.as_ref().unwrap().unschedulable, Some(true), "never cordoned");
    assert!(!tainted(&n));
    let states: Vec<String> = steps(&stack, &node).await.into_iter().map(|(s, _)| s).collect();
    assert!(!states.iter().any(|s| s == "cordoning" || s == "draining"), "{states:?}");
    no_permits(&stack).await;
    stack.shutdown().await;
}

/// A node escalated to a human is left alone by later faults, until an operator removes its
/// escalation annotation.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_escalated_node_gets_no_new_work_until_an_operator_clears_it() {
    let (hook, mut got) = common::webhook_receiver().await;
    let stack = stack("escalated", |o| {
        // The fault a failing DIMM logs during boot must arrive within the quiet period, on a
        // loaded machine too.
        o.quiet_period = Duration::from_secs(20);
        o.escalation_webhook = Some(firebreak_remediator::Webhook { url: hook.clone(), secret: "s3cret".into() });
    })
    .await;
    let cluster = stack.fleet.clusters()[0].clone();
    let client = firebreak::kube_client(&cluster.kubeconfig_path()).await.unwrap();
    let nodes: Api<Node> = Api::all(client);
    let node = format!("{}-node-002", cluster.name());
    cluster.inject(&node, Fault::BadDimm).unwrap();
    let (end, why) = wait_for("the workflow's end", Duration::from_secs(90), || async {
        steps(&stack, &node).await.into_iter().find(|(s, _)| s == "escalated" || s == "healed")
    })
    .await;
    assert_eq!(end, "escalated", "{why}");
    let first = workflows(&stack, &node).await;
    assert_eq!(first.len(), 1);
    let n = nodes.get(&node).await.unwrap();
    let mark = n.metadata.annotations.unwrap_or_default().get(firebreak_schema::ESCALATED_ANNOTATION).cloned();
    assert_eq!(mark.as_ref(), first.iter().next(), "the node names the escalated workflow");
    // The escalation was also POSTed, signed.
    let (sig, event, body) = tokio::time::timeout(Duration::from_secs(10), got.recv()).await.unwrap().unwrap();
    assert_eq!(event, "escalated");
    assert_eq!(sig, firebreak_plumbing::webhook::signature(b"s3cret", &body));
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["workflow_id"].as_str(), mark.as_deref());
    assert_eq!(body["node"], node.as_str());
    assert!(body["reason"].as_str().unwrap().contains("needs a human"), "{body}");

    // Later faults start nothing: no drain, no reboot again.
    cluster.inject(&node, Fault::ReadonlyFilesystem).unwrap();
    let url = format!("{}/api/v1/events?node={node}", stack.event_center_url);
    wait_for("the later fault recorded", Duration::from_secs(20), || async {
        get_json(&url).await?.as_array()?.iter().any(|e| e["kind"] == "ReadonlyFilesystem").then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(workflows(&stack, &node).await, first, "no new workflow on an escalated node");

    // An operator lists the escalations and clears this one; the next fault is remediated again.
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_firebreak"))
            .arg("escalations")
            .args(args)
            .arg("--kubeconfig")
            .arg(cluster.kubeconfig_path())
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let listed = cli(&["list"]);
    let line = listed.lines().find(|l| l.starts_with(&node)).unwrap_or_else(|| panic!("{listed}"));
    assert!(line.contains(first.iter().next().unwrap()) && line.contains("true"), "{listed}");
    let cleared = cli(&["clear", "--node", &node]);
    assert!(cleared.contains("still cordoned"), "{cleared}");
    assert!(!cli(&["list"]).contains(&node));
    let again = std::process::Command::new(env!("CARGO_BIN_EXE_firebreak"))
        .args(["escalations", "clear", "--node", &node, "--kubeconfig"])
        .arg(cluster.kubeconfig_path())
        .output()
        .unwrap();
    assert!(!again.status.success(), "clearing twice is an error, not a silent success");
    assert!(String::from_utf8_lossy(&again.stderr).contains("is not escalated"), "{again:?}");
    cluster.inject(&node, Fault::MemoryUncorrectable).unwrap();
    wait_for("a new workflow after the clearance", Duration::from_secs(30), || async {
        (workflows(&stack, &node).await.len() == 2).then_some(())
    })
    .await;
    stack.shutdown().await;
}

/// A repaired node goes back into service only when another team's readiness gate says so: a
/// ConfigMap labelled for the gate and the node, with `data.ready: "true"`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn readiness_gates_hold_back_the_uncordon() {
    let stack = stack("readiness", |o| {
        o.readiness = firebreak_remediator::ReadinessGates {
            conditions: vec!["Ready".into()],
            configmaps: vec!["storage-agent".into()],
            timeout: Duration::from_secs(120),
        };
    })
    .await;
    let cluster = stack.fleet.clusters()[0].clone();
    let client = firebreak::kube_client(&cluster.kubeconfig_path()).await.unwrap();
    let nodes: Api<Node> = Api::all(client.clone());
    let maps: Api<k8s_openapi::api::core::v1::ConfigMap> = Api::namespaced(client, "default");
    let node = format!("{}-node-003", cluster.name());
    cluster.inject(&node, Fault::MemoryUncorrectable).unwrap();
    let waiting = |needle: &'static str| {
        let (stack, node) = (&stack, &node);
        async move {
            wait_for(needle, Duration::from_secs(60), || async {
                steps(stack, node).await.into_iter().any(|(s, r)| s == "verifying" && r.contains(needle)).then_some(())
            })
            .await
        }
    };
    waiting("waiting for readiness gates: gate storage-agent: no ConfigMap for the node yet").await;
    let name = format!("storage-agent-{node}");
    let map = json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": name, "labels": {"firebreak.io/readiness-gate": "storage-agent", "firebreak.io/node": node}},
        "data": {"ready": "false"}});
    maps.create(&Default::default(), &serde_json::from_value(map).unwrap()).await.unwrap();
    waiting("ConfigMap default/storage-agent-c1-node-003 says ready=false").await;
    assert_eq!(nodes.get(&node).await.unwrap().spec.unwrap().unschedulable, Some(true), "held out of service");
    assert!(!steps(&stack, &node).await.iter().any(|(s, _)| s == "uncordoning"));
    let ready = json!({"data": {"ready": "true"}});
    maps.patch(&name, &PatchParams::default(), &Patch::Merge(&ready)).await.unwrap();
    let (_, why) = wait_for("the node healed", Duration::from_secs(30), || async {
        steps(&stack, &node).await.into_iter().find(|(s, _)| s == "uncordoning")
    })
    .await;
    assert!(why.contains("readiness gates hold (Ready, storage-agent)"), "{why}");
    wait_for("back in service", Duration::from_secs(30), || async {
        let n = nodes.get(&node).await.ok()?;
        (n.spec?.unschedulable != Some(true)).then_some(())
    })
    .await;
    stack.shutdown().await;
}

/// A drain's deadline is persisted: a remediator that keeps crashing mid-drain still escalates
/// when the drain has run past its limit, counted from its start, not from the last restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_drain_deadline_survives_remediator_restarts() {
    let mut stack = stack("deadline", |o| o.drain_timeout = Duration::from_secs(8)).await;
    let cluster = stack.fleet.clusters()[0].clone();
    // The node carries two `web` replicas under one budget. Once the first is evicted, its
    // replacement never becomes Ready (new pods on the runtime every node runs never do), so
    // the budget refuses the second for good and the drain cannot end.
    let node = format!("{}-node-001", cluster.name());
    common::wait_pods_ready(&cluster).await;
    cluster.set_runtime_health(firebreak_fleet_sim::INITIAL_RUNTIME, false, RuntimeFailure::NeverReady);
    cluster.inject(&node, Fault::MemoryUncorrectable).unwrap();
    wait_for("the drain blocked by the budget", Duration::from_secs(30), || async {
        steps(&stack, &node).await.iter().any(|(s, r)| s == "draining" && r.starts_with("drain permit")).then_some(())
    })
    .await;
    let began = tokio::time::Instant::now();
    // Crash-looping: each remediator lives 3 s, less than the drain's 8 s limit.
    let (_, why) = loop {
        tokio::time::sleep(Duration::from_secs(3)).await;
        if let Some(done) = steps(&stack, &node).await.into_iter().find(|(s, _)| s == "escalated") {
            break done;
        }
        assert!(began.elapsed() < Duration::from_secs(40), "no escalation: {:?}", steps(&stack, &node).await);
        stack.restart_remediators().await;
    };
    assert!(why.contains("drain did not finish within 8s"), "{why}");
    assert!(began.elapsed() < Duration::from_secs(25), "escalated {:?} after the drain began", began.elapsed());
    stack.shutdown().await;
}

/// Dry-run (shadow) mode: the fault is decided and the workflow records what it would do, and
/// nothing is asked of the gate or done to the node.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dry_run_records_what_it_would_do_and_does_nothing() {
    let stack = stack("dry-run", |o| o.dry_run = true).await;
    let cluster = stack.fleet.clusters()[0].clone();
    let node = format!("{}-node-002", cluster.name());
    cluster.inject(&node, Fault::MemoryUncorrectable).unwrap();
    let (_, why) = wait_for("the shadowed workflow", Duration::from_secs(30), || async {
        steps(&stack, &node).await.into_iter().find(|(s, _)| s == "shadowed")
    })
    .await;
    assert!(why.contains("dry run: would ask the gate for cordon, then cordon and taint, drain"), "{why}");
    assert!(why.contains("default/web-"), "the pods it would evict are named: {why}");
    let decisions = get_json_as(&stack.tokens.viewer, &format!("{}/api/v1/decisions", stack.gate_url)).await;
    assert_eq!(decisions, Some(json!([])), "nothing asked of the gate");
    // The detector still reports the fault on the node (its conditions, `nodes/status`): a
    // report, not a repair. Nothing else touches nodes or pods.
    let (reported, touched): (Vec<_>, Vec<_>) = cluster
        .audit()
        .into_iter()
        .filter(|a| a.resource == "nodes" || a.resource == "pods")
        .partition(|a| a.resource == "nodes" && a.subresource == "status" && a.verb == "patch");
    assert!(touched.is_empty(), "nothing done to nodes or pods: {touched:?}");
    assert!(reported.iter().all(|a| a.name == node), "conditions only on the faulted node: {reported:?}");
    stack.shutdown().await;
}

/// The repair ladder: a memory error is repaired by a reboot; when it comes back after the
/// repair held, the next rung is a human — the node is cordoned and escalated, not drained and
/// rebooted again. One hung task is recorded and left alone; the third within 15 minutes starts
/// a reboot (the default policy).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_ladder_climbs_to_a_human_and_hung_tasks_need_three() {
    let stack = stack("ladder", |_| {}).await;
    let cluster = stack.fleet.clusters()[0].clone();
    let client = firebreak::kube_client(&cluster.kubeconfig_path()).await.unwrap();
    let nodes: Api<Node> = Api::all(client);
    let node = format!("{}-node-001", cluster.name());
    cluster.inject(&node, Fault::MemoryUncorrectable).unwrap();
    wait_for("the first repair", Duration::from_secs(60), || async {
        steps(&stack, &node).await.iter().any(|(s, _)| s == "healed").then_some(())
    })
    .await;
    let first = workflows(&stack, &node).await;
    let (_, started) = steps(&stack, &node).await.into_iter().next().unwrap();
    assert!(started.contains("repair: reboot (process `memory`, rung 1 of 2 (reboot → human))"), "{started}");

    // The fault comes back: the second rung.
    cluster.inject(&node, Fault::MemoryUncorrectable).unwrap();
    let (_, why) = wait_for("the escalation", Duration::from_secs(30), || async {
        steps(&stack, &node).await.into_iter().find(|(s, _)| s == "escalated")
    })
    .await;
    assert!(why.contains("needs a human") && why.contains("rung 2 of 2"), "{why}");
    assert!(why.contains(first.iter().next().unwrap()), "the repair that did not hold is named: {why}");
    let all = steps(&stack, &node).await;
    let second: Vec<&str> = all.iter().skip_while(|(s, _)| s != "healed").skip(1).map(|(s, _)| s.as_str()).collect();
    assert_eq!(second, ["permit_wait", "cordoning", "cordoning", "escalated"], "no drain, no reboot the second time");
    let evidence = &all.iter().rev().find(|(s, _)| s == "cordoning").unwrap().1;
    assert!(evidence.starts_with("evidence before the human: conditions Ready=True"), "{evidence}");
    assert!(evidence.contains("MemoryUncorrectable (critical): EDAC MC0: 1 UE"), "the kernel log line: {evidence}");
    let n = nodes.get(&node).await.unwrap();
    assert!(tainted(&n) && n.spec.as_ref().and_then(|s| s.unschedulable) == Some(true), "left isolated");
    assert!(n.metadata.annotations.unwrap_or_default().contains_key(firebreak_schema::ESCALATED_ANNOTATION));
    no_permits(&stack).await;

    // Hung tasks: two are recorded and start nothing; the third starts a reboot.
    let hung = format!("{}-node-002", cluster.name());
    let url = format!("{}/api/v1/events?node={hung}", stack.event_center_url);
    for n in 1..=2 {
        cluster.inject(&hung, Fault::KernelHung).unwrap();
        wait_for("the hung task recorded", Duration::from_secs(20), || async {
            let events = get_json(&url).await?;
            (events.as_array()?.iter().filter(|e| e["kind"] == "KernelHung").count() == n).then_some(())
        })
        .await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(workflows(&stack, &hung).await.is_empty(), "two hung tasks are not worth a reboot");
    cluster.inject(&hung, Fault::KernelHung).unwrap();
    let (_, started) = wait_for("a workflow on the third", Duration::from_secs(20), || async {
        steps(&stack, &hung).await.into_iter().next()
    })
    .await;
    assert!(started.starts_with("warning KernelHung fault") && started.contains("process `hung-tasks`"), "{started}");
    stack.shutdown().await;
}

/// A kubelet the OOM killer took is restarted by the node's actuator — no drain, the pods keep
/// running, the machine is not rebooted — and the node goes back into service. When it dies
/// again, the ladder's next rung reboots the node.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dead_kubelet_is_restarted_without_a_drain_then_the_node_rebooted() {
    let stack = stack("restart", |_| {}).await;
    let cluster = stack.fleet.clusters()[0].clone();
    let client = firebreak::kube_client(&cluster.kubeconfig_path()).await.unwrap();
    let nodes: Api<Node> = Api::all(client.clone());
    let node = format!("{}-node-003", cluster.name());
    let boot = |n: Node| n.status.unwrap().node_info.unwrap().boot_id;
    let boot_before = boot(nodes.get(&node).await.unwrap());
    let pods_before = common::pods_on(&client, &node).await;
    assert!(!pods_before.is_empty());

    cluster.inject(&node, Fault::KubeletOom).unwrap();
    let (_, why) = wait_for("the restart's end", Duration::from_secs(60), || async {
        steps(&stack, &node).await.into_iter().find(|(s, _)| s == "healed" || s == "escalated")
    })
    .await;
    let all = steps(&stack, &node).await;
    let states: Vec<&str> = all.iter().map(|(s, _)| s.as_str()).collect();
    assert!(states.contains(&"healed"), "{why}: {states:?}");
    assert!(!states.contains(&"draining") && !states.contains(&"awaiting_boot"), "no drain, no reboot: {states:?}");
    for want in ["restarting", "awaiting_restart", "verifying", "uncordoning"] {
        assert!(states.contains(&want), "{want} missing: {states:?}");
    }
    let reasons: Vec<&str> = all.iter().map(|(_, r)| r.as_str()).collect();
    assert!(
        reasons.iter().any(|r| r.contains("repair: restart:kubelet (process `kubelet`, rung 1 of 3")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.starts_with("restart kubelet done in ") && r.contains("kubelet restarted")),
        "{reasons:?}"
    );
    assert_eq!(boot(nodes.get(&node).await.unwrap()), boot_before, "the machine was not rebooted");
    assert_eq!(common::pods_on(&client, &node).await, pods_before, "its pods kept running");
    assert!(!cluster.audit().iter().any(|a| a.subresource == "eviction"), "nothing was evicted");

    // Again: the next rung reboots the node.
    cluster.inject(&node, Fault::KubeletOom).unwrap();
    wait_for("the reboot's end", Duration::from_secs(90), || async {
        let s = steps(&stack, &node).await;
        (s.iter().filter(|(s, _)| s == "healed").count() == 2).then_some(())
    })
    .await;
    let second: Vec<String> =
        steps(&stack, &node).await.into_iter().skip_while(|(s, _)| s != "healed").skip(1).map(|(s, _)| s).collect();
    assert!(second.contains(&"draining".to_owned()) && second.contains(&"awaiting_boot".to_owned()), "{second:?}");
    assert_ne!(boot(nodes.get(&node).await.unwrap()), boot_before, "rebooted the second time");
    stack.shutdown().await;
}

/// A command the node's actuator refuses (a component it may not restart) escalates at once,
/// with the actuator's reason, instead of waiting out the deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refused_command_escalates_with_the_actuators_reason() {
    let stack = stack("refused", |o| {
        o.remediation = firebreak_remediator::Policy::parse(
            "[budget]\nattempts = 3\nwindow = \"1h\"\n\
             [[process]]\nname = \"kubelet\"\nkinds = [\"KubeletDown\"]\nladder = [\"restart:sshd\", \"human\"]\n",
        )
        .unwrap();
    })
    .await;
    let cluster = stack.fleet.clusters()[0].clone();
    let node = format!("{}-node-002", cluster.name());
    cluster.inject(&node, Fault::KubeletOom).unwrap();
    let (_, why) = wait_for("the escalation", Duration::from_secs(30), || async {
        steps(&stack, &node).await.into_iter().find(|(s, _)| s == "escalated" || s == "healed")
    })
    .await;
    assert!(
        why.contains("the node's actuator refused the restart sshd: sshd may not be restarted on this node"),
        "{why}"
    );
    no_permits(&stack).await;
    stack.shutdown().await;
}

/// Migration: every pod is labelled before any is evicted; a pod annotated
/// `firebreak.io/migration=manual` is left for its owner to move, and the drain waits for it; a
/// pod no controller would recreate is not evicted (as `kubectl drain` without `--force`): the
/// node goes to a human instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn manual_pods_wait_for_their_owner_and_bare_pods_are_not_evicted() {
    let stack = stack("migration", |o| o.migration_grace = Duration::from_secs(2)).await;
    let cluster = stack.fleet.clusters()[0].clone();
    common::wait_pods_ready(&cluster).await;
    let client = firebreak::kube_client(&cluster.kubeconfig_path()).await.unwrap();
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client.clone(), "default");
    let node = format!("{}-node-001", cluster.name());
    let on_node = pods.list(&kube::api::ListParams::default().fields(&format!("spec.nodeName={node}"))).await.unwrap();
    let owned = on_node
        .items
        .iter()
        .find(|p| p.metadata.owner_references.iter().flatten().any(|o| o.kind == "ReplicaSet"))
        .and_then(|p| p.metadata.name.clone())
        .expect("a ReplicaSet pod on the node");
    let manual = json!({"metadata": {"annotations": {firebreak_schema::MIGRATION_ANNOTATION: "manual"}}});
    pods.patch(&owned, &PatchParams::default(), &Patch::Merge(&manual)).await.unwrap();

    cluster.inject(&node, Fault::MemoryUncorrectable).unwrap();
    let (_, labelled) = wait_for("the pods labelled", Duration::from_secs(30), || async {
        steps(&stack, &node).await.into_iter().find(|(_, r)| r.starts_with("labelled "))
    })
    .await;
    assert!(labelled.contains(&format!("1 left to their owners (default/{owned})")), "{labelled}");
    // The drain waits for the owner; the pod is labelled and never evicted.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let p = pods.get(&owned).await.unwrap();
    assert_eq!(
        p.metadata.labels.unwrap_or_default().get(firebreak_schema::TO_BE_MIGRATED_LABEL).map(String::as_str),
        Some("true")
    );
    assert!(!steps(&stack, &node).await.iter().any(|(s, _)| s == "rebooting"), "the drain waits for the owner");
    // Its owner moves it.
    pods.delete(&owned, &Default::default()).await.unwrap();
    let (_, drained) = wait_for("the drain's end", Duration::from_secs(30), || async {
        steps(&stack, &node).await.into_iter().find(|(s, _)| s == "rebooting")
    })
    .await;
    assert!(drained.contains("moved by their owners") && drained.contains("pods evicted (default/"), "{drained}");
    assert!(
        !cluster.audit().iter().any(|a| a.subresource == "eviction" && a.name == owned),
        "the manual pod was never evicted"
    );

    // A bare pod: not evicted; the node goes to a human.
    let bare_node = format!("{}-node-002", cluster.name());
    let bare: k8s_openapi::api::core::v1::Pod = serde_json::from_value(json!({
        "metadata": {"name": "hand-made", "namespace": "default"},
        "spec": {"nodeName": bare_node, "containers": [{"name": "c", "image": "busybox"}]},
    }))
    .unwrap();
    pods.create(&Default::default(), &bare).await.unwrap();
    cluster.inject(&bare_node, Fault::MemoryUncorrectable).unwrap();
    let (_, why) = wait_for("the escalation", Duration::from_secs(30), || async {
        steps(&stack, &bare_node).await.into_iter().find(|(s, _)| s == "escalated")
    })
    .await;
    assert!(why.contains("drain refused: 1 pods have no controller") && why.contains("default/hand-made"), "{why}");
    assert!(pods.get("hand-made").await.is_ok(), "the bare pod is still there");
    stack.shutdown().await;
}

/// The far rungs: a reinstall asked of a signed webhook (here fleet-sim re-images the node: same
/// name, new boot, its disk state wiped), then — when the fault comes back — a drain and a
/// hardware ticket, the node left isolated for the technician.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reinstall_through_its_webhook_then_a_hardware_ticket() {
    let (hook, mut got) = common::webhook_receiver().await;
    let stack = stack("reinstall", |o| {
        o.remediation = firebreak_remediator::Policy::parse(
            "[budget]\nattempts = 3\nwindow = \"1h\"\n\
             [[process]]\nname = \"memory\"\nkinds = [\"MemoryUncorrectable\"]\nladder = [\"reinstall\", \"ticket\"]\n",
        )
        .unwrap();
        let webhook = firebreak_remediator::Webhook { url: hook.clone(), secret: "s3cret".into() };
        o.reinstall_webhook = Some(webhook.clone());
        o.ticket_webhook = Some(webhook);
    })
    .await;
    let cluster = stack.fleet.clusters()[0].clone();
    let client = firebreak::kube_client(&cluster.kubeconfig_path()).await.unwrap();
    let nodes: Api<Node> = Api::all(client);
    let node = format!("{}-node-002", cluster.name());
    let marker = cluster.host_root(&node).join("var/lib/firebreak-agent/left-by-the-old-install");
    std::fs::create_dir_all(marker.parent().unwrap()).unwrap();
    std::fs::write(&marker, "x").unwrap();
    let boot = |n: Node| n.status.unwrap().node_info.unwrap().boot_id;
    let boot_before = boot(nodes.get(&node).await.unwrap());

    cluster.inject(&node, Fault::MemoryUncorrectable).unwrap();
    // The re-imaging system behind the webhook: checks the signature, re-images the node.
    let (sig, event, body) = tokio::time::timeout(Duration::from_secs(60), got.recv()).await.unwrap().unwrap();
    assert_eq!(event, "reinstall");
    assert_eq!(sig, firebreak_plumbing::webhook::signature(b"s3cret", &body));
    let asked: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!((asked["node"].as_str(), asked["boot_id"].as_str()), (Some(node.as_str()), Some(boot_before.as_str())));
    let (_, asked_step) = wait_for("the reinstall on record", Duration::from_secs(20), || async {
        steps(&stack, &node).await.into_iter().find(|(s, _)| s == "awaiting_reinstall")
    })
    .await;
    assert!(asked_step.starts_with("reinstall asked of http://"), "{asked_step}");
    let states: Vec<String> = steps(&stack, &node).await.into_iter().map(|(s, _)| s).collect();
    assert!(states.contains(&"draining".to_owned()) && states.contains(&"reinstalling".to_owned()), "{states:?}");
    cluster.reinstall(&node).unwrap();
    let (_, why) = wait_for("the reinstalled node back in service", Duration::from_secs(60), || async {
        steps(&stack, &node).await.into_iter().find(|(s, _)| s == "healed" || s == "escalated")
    })
    .await;
    assert!(why.contains("back in service"), "{why}");
    assert!(steps(&stack, &node).await.iter().any(|(_, r)| r.starts_with("reinstalled in ")));
    assert_ne!(boot(nodes.get(&node).await.unwrap()), boot_before);
    assert!(!marker.exists(), "the disk state was wiped");

    // Back again: drained, then a hardware ticket; the node stays isolated.
    cluster.inject(&node, Fault::MemoryUncorrectable).unwrap();
    let (sig, event, body) = tokio::time::timeout(Duration::from_secs(60), got.recv()).await.unwrap().unwrap();
    assert_eq!(event, "hardware_ticket");
    assert_eq!(sig, firebreak_plumbing::webhook::signature(b"s3cret", &body));
    let ticket: Value = serde_json::from_slice(&body).unwrap();
    assert!(ticket["why"].as_str().unwrap().contains("rung 2 of 2"), "{ticket}");
    let evidence = ticket["evidence"].as_str().unwrap();
    assert!(evidence.contains("MemoryUncorrectable (critical): EDAC MC0: 1 UE"), "the kernel's line: {evidence}");
    let (_, why) = wait_for("the escalation", Duration::from_secs(30), || async {
        steps(&stack, &node).await.into_iter().rfind(|(s, _)| s == "escalated")
    })
    .await;
    assert!(why.contains("hardware ticket opened"), "{why}");
    let n = nodes.get(&node).await.unwrap();
    assert!(tainted(&n) && n.spec.as_ref().and_then(|s| s.unschedulable) == Some(true), "left isolated");
    assert!(
        common::pods_on(&firebreak::kube_client(&cluster.kubeconfig_path()).await.unwrap(), &node).await.len() <= 1,
        "drained (the DaemonSet pod stays)"
    );
    no_permits(&stack).await;
    stack.shutdown().await;
}

/// The other two reinstall actuators. A node that is a Cluster API machine is replaced: its
/// Machine is deleted, the node goes, and its MachineSet brings a new node of a new name; the
/// workflow ends `replaced`. A node that is not is re-imaged in place by a Job rendered from the
/// operator's template (fleet-sim's Job controller re-images the node the Job names): same name,
/// new boot, back in service. A Job that fails escalates with its reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reinstalls_through_cluster_api_and_through_a_job() {
    use k8s_openapi::api::batch::v1::Job;
    use kube::api::{ApiResource, DynamicObject, GroupVersionKind, ListParams};
    let template = format!(
        "apiVersion: batch/v1\nkind: Job\nmetadata:\n  namespace: default\n  annotations:\n    {}: \"{{{{node}}}}\"\n\
         spec:\n  backoffLimit: 0\n  template:\n    spec:\n      restartPolicy: Never\n      containers:\n      \
         - name: reimage\n        image: registry.example/pxe-reimage:1\n        args: [\"--node\", \"{{{{node}}}}\", \
         \"--boot\", \"{{{{boot_id}}}}\"]\n",
        firebreak_fleet_sim::REIMAGE_NODE_ANNOTATION
    );
    let stack = stack("reinstall-actuators", |o| {
        o.remediation = firebreak_remediator::Policy::parse(
            "[budget]\nattempts = 3\nwindow = \"1h\"\n[[process]]\nname = \"memory\"\nkinds = [\"MemoryUncorrectable\"]\nladder = [\"reinstall\", \"human\"]\n",
        )
        .unwrap();
        o.cluster_api = true;
        o.reinstall_job = Some(firebreak_remediator::reinstall::JobTemplate::parse(&template).unwrap());
    })
    .await;
    let cluster = stack.fleet.clusters()[0].clone();
    let client = firebreak::kube_client(&cluster.kubeconfig_path()).await.unwrap();
    let nodes: Api<Node> = Api::all(client.clone());
    let machines: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        "default",
        &ApiResource::from_gvk(&GroupVersionKind::gvk("cluster.x-k8s.io", "v1beta1", "Machine")),
    );
    let boot = |n: Node| n.status.unwrap().node_info.unwrap().boot_id;

    // A machine: replaced.
    let machine_node = format!("{}-node-001", cluster.name());
    let machine = firebreak_fleet_sim::MACHINE_ANNOTATION;
    let annotations = nodes.get(&machine_node).await.unwrap().metadata.annotations.unwrap();
    let machine_name = annotations[machine].clone();
    cluster.inject(&machine_node, Fault::MemoryUncorrectable).unwrap();
    let (_, why) = wait_for("the machine's workflow to end", Duration::from_secs(60), || async {
        steps(&stack, &machine_node)
            .await
            .into_iter()
            .find(|(s, _)| ["replaced", "escalated", "healed"].contains(&s.as_str()))
    })
    .await;
    assert!(why.starts_with(&format!("replaced: Cluster API Machine default/{machine_name} deleted")), "{why}");
    let states: Vec<String> = steps(&stack, &machine_node).await.into_iter().map(|(s, _)| s).collect();
    assert!(states.contains(&"draining".to_owned()) && states.contains(&"awaiting_reinstall".to_owned()), "{states:?}");
    assert!(nodes.get_opt(&machine_node).await.unwrap().is_none(), "the old node is gone");
    assert!(machines.get_opt(&machine_name).await.unwrap().is_none(), "its Machine is gone");
    let fresh = format!("{}-node-005", cluster.name());
    let new_node = wait_for("the MachineSet's new node Ready", Duration::from_secs(30), || async {
        let n = nodes.get_opt(&fresh).await.ok()??;
        n.status.as_ref()?.conditions.as_ref()?.iter().any(|c| c.type_ == "Ready" && c.status == "True").then_some(n)
    })
    .await;
    let new_machine = new_node.metadata.annotations.unwrap()[machine].clone();
    assert!(machines.get_opt(&new_machine).await.unwrap().is_some(), "a new Machine {new_machine} behind it");

    // Not a machine (its Cluster API annotations removed): re-imaged in place by a Job.
    let job_node = format!("{}-node-002", cluster.name());
    let strip =
        json!({"metadata": {"annotations": {machine: null, firebreak_fleet_sim::MACHINE_NAMESPACE_ANNOTATION: null}}});
    nodes.patch(&job_node, &PatchParams::default(), &Patch::Merge(&strip)).await.unwrap();
    let boot_before = boot(nodes.get(&job_node).await.unwrap());
    cluster.inject(&job_node, Fault::MemoryUncorrectable).unwrap();
    let (_, why) = wait_for("the Job's workflow to end", Duration::from_secs(60), || async {
        steps(&stack, &job_node)
            .await
            .into_iter()
            .find(|(s, _)| ["replaced", "escalated", "healed"].contains(&s.as_str()))
    })
    .await;
    assert!(why.contains("back in service"), "{why}");
    let steps_of = steps(&stack, &job_node).await;
    let asked = &steps_of.iter().find(|(s, _)| s == "awaiting_reinstall").unwrap().1;
    assert!(asked.starts_with("Job default/reinstall-") && asked.contains(&boot_before), "{asked}");
    assert!(steps_of.iter().any(|(_, r)| r.starts_with("reinstalled in ")), "{steps_of:?}");
    let jobs: Api<Job> = Api::namespaced(client, "default");
    let made = jobs
        .list(&ListParams::default().labels(&format!("{}={job_node}", firebreak_schema::NODE_LABEL)))
        .await
        .unwrap();
    assert_eq!(made.items.len(), 1, "one Job for the one reinstall");
    let args = made.items[0].spec.clone().unwrap().template.spec.unwrap().containers[0].args.clone().unwrap();
    assert_eq!(args, ["--node", job_node.as_str(), "--boot", boot_before.as_str()]);
    assert_ne!(boot(nodes.get(&job_node).await.unwrap()), boot_before);

    // A Job that fails (the node's PXE boot times out): escalated with the Job's reason.
    let broken = format!("{}-node-003", cluster.name());
    nodes.patch(&broken, &PatchParams::default(), &Patch::Merge(&strip)).await.unwrap();
    cluster.fail_reimaging(&broken, "PXE boot timed out after 600s");
    cluster.inject(&broken, Fault::MemoryUncorrectable).unwrap();
    let (_, why) = wait_for("the failed Job's escalation", Duration::from_secs(60), || async {
        steps(&stack, &broken)
            .await
            .into_iter()
            .find(|(s, _)| ["replaced", "escalated", "healed"].contains(&s.as_str()))
    })
    .await;
    assert!(why.contains("failed: BackoffLimitExceeded: PXE boot timed out after 600s"), "{why}");
    let n = nodes.get(&broken).await.unwrap();
    assert!(tainted(&n) && n.spec.as_ref().and_then(|s| s.unschedulable) == Some(true), "left isolated");
    no_permits(&stack).await;
    stack.shutdown().await;
}

/// An operator clears an escalation through the event center's API (an operator's token; a
/// viewer's is refused, a bad node name too): the cluster's remediator removes the node's mark
/// and records who cleared it and why as a step on the remediation topic; the node's next fault
/// is remediated again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_operator_clears_an_escalation_through_the_event_center() {
    let stack = stack("clear-api", |o| {
        o.remediation = firebreak_remediator::Policy::parse(
            "[budget]\nattempts = 3\nwindow = \"1h\"\n[[process]]\nname = \"memory\"\n\
             kinds = [\"MemoryUncorrectable\"]\nladder = [\"human\"]\n",
        )
        .unwrap();
    })
    .await;
    let cluster = stack.fleet.clusters()[0].clone();
    let client = firebreak::kube_client(&cluster.kubeconfig_path()).await.unwrap();
    let nodes: Api<Node> = Api::all(client);
    let node = format!("{}-node-003", cluster.name());
    cluster.inject(&node, Fault::MemoryUncorrectable).unwrap();
    wait_for("the escalation", Duration::from_secs(60), || async {
        steps(&stack, &node).await.iter().any(|(s, _)| s == "escalated").then_some(())
    })
    .await;
    let url = format!("{}/api/v1/escalations/clear", stack.event_center_url);
    let http = reqwest::Client::new();
    let ask = |token: Option<&str>, node: &str| {
        let mut r = http.post(&url).json(&json!({"cluster": "c1", "node": node, "reason": "DIMM replaced (INC-42)"}));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        r.send()
    };
    assert_eq!(ask(None, &node).await.unwrap().status(), 401);
    assert_eq!(ask(Some(&stack.tokens.viewer), &node).await.unwrap().status(), 403);
    let bad = ask(Some(&stack.tokens.operator), "No_Such_Node!").await.unwrap();
    assert_eq!(bad.status(), 400);
    assert!(bad.text().await.unwrap().contains("DNS-1123"));
    // A cluster no remediator serves: refused as such, and asking does not make its topic (the
    // second ask is refused too).
    for _ in 0..2 {
        let none = http
            .post(&url)
            .bearer_auth(&stack.tokens.operator)
            .json(&json!({"cluster": "c9", "node": node, "reason": "DIMM replaced (INC-42)"}))
            .send()
            .await
            .unwrap();
        assert_eq!(none.status(), 404);
        let text = none.text().await.unwrap();
        assert!(text.contains("no remediator of cluster `c9`"), "{text}");
    }
    let ok = ask(Some(&stack.tokens.operator), &node).await.unwrap();
    assert_eq!(ok.status(), 202);
    let id = ok.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
    let (_, why) = wait_for("the clearing on record", Duration::from_secs(30), || async {
        steps(&stack, &node).await.into_iter().find(|(_, r)| r.starts_with("escalation cleared"))
    })
    .await;
    assert_eq!(
        why,
        format!("escalation cleared: by operator through the event center (instruction {id}): DIMM replaced (INC-42)")
    );
    let n = nodes.get(&node).await.unwrap();
    assert!(!n.metadata.annotations.unwrap_or_default().contains_key(firebreak_schema::ESCALATED_ANNOTATION));
    assert_eq!(n.spec.and_then(|s| s.unschedulable), Some(true), "still cordoned: a human uncordons it");
    cluster.inject(&node, Fault::MemoryUncorrectable).unwrap();
    wait_for("a new workflow after the clearance", Duration::from_secs(30), || async {
        (workflows(&stack, &node).await.len() == 2).then_some(())
    })
    .await;
    stack.shutdown().await;
}

/// Hostile records on the command channel: garbage for a node, and a well-formed reboot for
/// another node slipped under this node's key, are skipped (the forged one reboots nothing);
/// garbage and forged reports are ignored. The channel still works afterwards: the node's next
/// fault is repaired through it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hostile_commands_and_reports_are_skipped_and_the_channel_still_works() {
    use rdkafka::{
        ClientConfig,
        producer::{FutureProducer, FutureRecord},
    };
    let stack = stack("hostile-commands", |_| {}).await;
    let cluster = stack.fleet.clusters()[0].clone();
    let client = firebreak::kube_client(&cluster.kubeconfig_path()).await.unwrap();
    let nodes: Api<Node> = Api::all(client);
    let boot = |n: Node| n.status.unwrap().node_info.unwrap().boot_id;
    let (node, other) = (format!("{}-node-003", cluster.name()), format!("{}-node-004", cluster.name()));
    let other_boot = boot(nodes.get(&other).await.unwrap());
    let node_boot = boot(nodes.get(&node).await.unwrap());
    let raw: FutureProducer =
        ClientConfig::new().set("bootstrap.servers", &stack.kafka_config.brokers).create().unwrap();
    let key = format!("{}/{node}", cluster.name());
    let partition = firebreak_schema::command_partition(&key, 8);
    let send = |topic: &str, partition: Option<i32>, payload: Vec<u8>, headers: Vec<(String, String)>| {
        let (raw, key, topic) = (raw.clone(), key.clone(), topic.to_owned());
        async move {
            let headers = headers.iter().fold(rdkafka::message::OwnedHeaders::new(), |h, (k, v)| {
                h.insert(rdkafka::message::Header { key: k, value: Some(v.as_bytes()) })
            });
            let mut rec = FutureRecord::to(&topic).key(&key).payload(&payload).headers(headers);
            if let Some(p) = partition {
                rec = rec.partition(p);
            }
            raw.send(rec, Duration::from_secs(5)).await.unwrap();
        }
    };
    send(firebreak_schema::NODE_COMMAND_TOPIC, Some(partition), b"\xff not a command".to_vec(), vec![]).await;
    let now = chrono::Utc::now();
    let forged = firebreak_schema::NodeCommand {
        id: uuid::Uuid::now_v7(),
        cluster: cluster.name().into(),
        node: other.clone(),
        workflow_id: uuid::Uuid::now_v7(),
        action: firebreak_schema::NodeAction::Reboot,
        // The boot of the node whose key it travels under: were the body not checked against the
        // key, that node's actuator would reboot it.
        boot_id: node_boot.clone(),
        requested_at: now,
        not_after: now + chrono::TimeDelta::minutes(5),
    };
    let wire = firebreak_schema::encode(&forged).unwrap();
    send(firebreak_schema::NODE_COMMAND_TOPIC, Some(partition), wire.payload, wire.headers).await;
    send(&firebreak_schema::report_topic(cluster.name()), None, b"{\"outcome\": 7}".to_vec(), vec![]).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(boot(nodes.get(&node).await.unwrap()), node_boot, "the forged command rebooted nothing");

    cluster.inject(&node, Fault::MemoryUncorrectable).unwrap();
    wait_for("the node repaired through the channel", Duration::from_secs(60), || async {
        steps(&stack, &node).await.iter().any(|(s, _)| s == "healed").then_some(())
    })
    .await;
    assert_eq!(boot(nodes.get(&other).await.unwrap()), other_boot, "nor the node it named");
    stack.shutdown().await;
}

/// Hostile records on a cluster's fault topic, sent back to back with a real fault (so that the
/// remediator's intake takes them in one batch, or a few): an undecodable record is skipped, a
/// fault naming another cluster acts on nothing here (counted `other_cluster`), and the real
/// fault among them is remediated as if it came alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hostile_faults_in_a_batch_are_skipped_and_the_rest_is_remediated() {
    use rdkafka::{
        ClientConfig,
        producer::{FutureProducer, FutureRecord},
    };
    let stack = stack("hostile-faults", |_| {}).await;
    let cluster = stack.fleet.clusters()[0].clone();
    let c = cluster.name().to_owned();
    let (real, forged) = (format!("{c}-node-001"), format!("{c}-node-003"));
    let topic = firebreak_schema::fault_topic(&c);
    let fault = |cluster: &str, node: &str| {
        let kind = firebreak_schema::FaultKind::MemoryUncorrectable;
        firebreak_schema::FaultEvent {
            id: uuid::Uuid::now_v7(),
            cluster: cluster.into(),
            node: node.into(),
            class: kind.class(),
            kind,
            severity: firebreak_schema::Severity::Critical,
            source: firebreak_schema::Source::Agent,
            observed_at: chrono::Utc::now(),
            message: "EDAC MC0: 1 UE memory read error".into(),
            evidence: Default::default(),
        }
    };
    let raw: FutureProducer =
        ClientConfig::new().set("bootstrap.servers", &stack.kafka_config.brokers).create().unwrap();
    let producer = firebreak_plumbing::kafka::Producer::new(&stack.kafka_config).unwrap();
    let key = format!("{c}/{real}");
    let garbage = FutureRecord::to(&topic).key(&key).payload(b"\xff not a fault".as_slice());
    let (theirs, ours) = (fault("other", &forged), fault(&c, &real));
    let (sent, other, mine) = tokio::join!(
        raw.send(garbage, Duration::from_secs(5)),
        producer.publish(&topic, &theirs),
        producer.publish(&topic, &ours),
    );
    sent.unwrap();
    other.unwrap();
    mine.unwrap();

    wait_for("the real fault's node healed", Duration::from_secs(60), || async {
        steps(&stack, &real).await.last().filter(|(s, _)| s == "healed").map(|_| ())
    })
    .await;
    assert!(steps(&stack, &forged).await.is_empty(), "another cluster's fault started nothing here");
    let client = firebreak::kube_client(&cluster.kubeconfig_path()).await.unwrap();
    let n = Api::<Node>::all(client).get(&forged).await.unwrap();
    assert!(!common::out_of_service(&n), "{forged} left in service");
    let metrics = reqwest::get(format!("{}/metrics", stack.metrics_url)).await.unwrap().text().await.unwrap();
    let counted = format!("firebreak_remediator_faults_total{{cluster=\"{c}\",decision=\"other_cluster\"}} 1");
    assert!(metrics.contains(&counted), "{counted} in\n{metrics}");
    stack.shutdown().await;
}

/// The drain of `node`, blocked by its budget after the first eviction: the replacement pod
/// never becomes Ready, so the budget refuses the second eviction for good.
async fn blocked_drain(cluster: &firebreak_fleet_sim::Cluster, node: &str) {
    common::wait_pods_ready(cluster).await;
    cluster.set_runtime_health(firebreak_fleet_sim::INITIAL_RUNTIME, false, RuntimeFailure::NeverReady);
    cluster.inject(node, Fault::MemoryUncorrectable).unwrap();
    wait_for("the drain blocked by the budget", Duration::from_secs(30), || async {
        cluster.audit().iter().any(|a| a.subresource == "eviction" && a.code == 429).then_some(())
    })
    .await;
}

/// Issue 12: a drain re-asserts its precondition before each round of evictions. A taint
/// removed from the cordoned node is put back; a node uncordoned mid-drain (which takes every
/// evicted pod straight back) cancels the workflow instead of evicting on forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_uncordoned_mid_drain_stops_the_evictions() {
    let stack = stack("mid-drain", |_| {}).await;
    let cluster = stack.fleet.clusters()[0].clone();
    let client = firebreak::kube_client(&cluster.kubeconfig_path()).await.unwrap();
    let nodes: Api<Node> = Api::all(client);
    let node = format!("{}-node-001", cluster.name());
    blocked_drain(&cluster, &node).await;

    let untaint = json!({"spec": {"taints": null}});
    nodes.patch(&node, &PatchParams::default(), &Patch::Merge(&untaint)).await.unwrap();
    let (_, why) = wait_for("the taint put back", Duration::from_secs(30), || async {
        steps(&stack, &node).await.into_iter().find(|(_, r)| r.contains("put back"))
    })
    .await;
    assert!(why.contains("was removed during draining while the node stayed cordoned"), "{why}");
    assert!(tainted(&nodes.get(&node).await.unwrap()), "the taint is back");

    set_unschedulable(&nodes, &node, false).await;
    let (_, why) = wait_for("the workflow cancelled", Duration::from_secs(30), || async {
        steps(&stack, &node).await.into_iter().find(|(s, _)| s == "cancelled")
    })
    .await;
    assert!(why.contains("uncordoned by someone else during draining"), "{why}");
    no_permits(&stack).await;
    let evictions = || cluster.audit().iter().filter(|a| a.subresource == "eviction").count();
    let after_cancel = evictions();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(evictions(), after_cancel, "no eviction after the cancel");
    stack.shutdown().await;
}

/// Issue 12: a drain that makes no progress (no fewer pods left on the node) for the stall
/// limit escalates and gives its permits back, so the cluster's other nodes can be healed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stalled_drain_gives_its_permits_back() {
    let stack = stack("stalled", |o| o.drain_stall = Duration::from_secs(4)).await;
    let cluster = stack.fleet.clusters()[0].clone();
    let node = format!("{}-node-001", cluster.name());
    blocked_drain(&cluster, &node).await;
    let (_, why) = wait_for("the stalled drain escalated", Duration::from_secs(30), || async {
        steps(&stack, &node).await.into_iter().find(|(s, _)| s == "escalated")
    })
    .await;
    assert!(why.contains("drain made no progress for 4s: 1 pods remain (default/web-"), "{why}");
    assert!(why.contains("evictions refused by PodDisruptionBudgets"), "{why}");
    no_permits(&stack).await;
    stack.shutdown().await;
}

/// Issue 12: one node the API server serves undecodable (a string where the schema has a
/// boolean, stored past fleet-sim's checks as a broken or newer server might) blinds nobody.
/// The detector and a restarted remediator count it and keep watching the rest: a NotReady node
/// beside it is detected and healed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_undecodable_node_is_counted_and_the_rest_stay_watched() {
    let mut stack = stack("undecodable", |_| {}).await;
    let cluster = stack.fleet.clusters()[0].clone();
    let bad = format!("{}-node-004", cluster.name());
    cluster.corrupt_node(&bad, &json!({"spec": {"unschedulable": "yes"}})).unwrap();
    // A restarted remediator lists the nodes again, the bad one among them.
    stack.restart_remediators().await;
    let metrics_url = format!("{}/metrics", stack.metrics_url);
    let counted = |prefix: &'static str| {
        let url = metrics_url.clone();
        async move {
            let text = reqwest::get(&url).await.ok()?.text().await.ok()?;
            text.lines()
                .any(|l| l.starts_with(prefix) && l.contains("kind=\"Node\"") && !l.ends_with(" 0"))
                .then_some(())
        }
    };
    wait_for("the detector counts the bad node", Duration::from_secs(30), || {
        counted("firebreak_detector_undecodable_objects_total")
    })
    .await;
    wait_for("the remediator counts the bad node", Duration::from_secs(30), || {
        counted("firebreak_remediator_undecodable_objects_total")
    })
    .await;
    let node = format!("{}-node-002", cluster.name());
    cluster.inject(&node, Fault::NotReady).unwrap();
    wait_for("the node beside it healed", Duration::from_secs(60), || async {
        steps(&stack, &node).await.into_iter().find(|(s, _)| s == "healed")
    })
    .await;
    stack.shutdown().await;
}
