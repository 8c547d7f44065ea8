//! (a) One uncorrectable memory error, from a node's kernel log to a healed node, on the real
//! protocols: kmsg file → agent → Kafka → event center API; remediator → gate → Kubernetes API.

mod common;

use std::time::Duration;

use common::{NodeLog, get_json, stack, steps, wait_for};
use firebreak_fleet_sim::Fault;
use k8s_openapi::api::{
    core::v1::{Node, Pod},
    policy::v1::PodDisruptionBudget,
};
use kube::{Api, api::ListParams};

async fn closed_loop(name: &str, db: Option<String>) {
    let stack = stack(name, |o| {
        o.event_center_db = db.clone();
        o.remediator_db = db.clone();
    })
    .await;
    let cluster = stack.fleet.clusters()[0].clone();
    let node = format!("{}-node-001", cluster.name());
    let client = firebreak::kube_client(&cluster.kubeconfig_path()).await.unwrap();
    let nodes: Api<Node> = Api::all(client.clone());
    let pods: Api<Pod> = Api::all(client.clone());
    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), "default");
    let log = NodeLog::watch(client.clone());

    let before = nodes.get(&node).await.unwrap();
    let boot_before = before.status.unwrap().node_info.unwrap().boot_id;
    let to_migrate: Vec<String> = pods
        .list(&ListParams::default().fields(&format!("spec.nodeName={node}")))
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|p| p.metadata.namespace.as_deref() == Some("default"))
        .map(|p| p.metadata.name.unwrap())
        // `churn` pods end on their own schedule, which races the drain.
        .filter(|p| !p.starts_with("churn-"))
        .collect();
    assert!(
        to_migrate.iter().filter(|p| p.starts_with("web-")).count() >= 2,
        "node carries two replicas under one PDB: {to_migrate:?}"
    );

    // Sample the disruption budget for the whole run: it must never be violated.
    let pdb_samples = std::sync::Arc::new(std::sync::Mutex::new(Vec::<i32>::new()));
    let samples = pdb_samples.clone();
    let sampler = tokio::spawn(async move {
        loop {
            if let Ok(p) = pdbs.get("web").await {
                let s = p.status.unwrap_or_default();
                samples.lock().unwrap().push(s.current_healthy - s.desired_healthy);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });

    cluster.inject(&node, Fault::MemoryUncorrectable).unwrap();
    let injected = tokio::time::Instant::now();

    // The event reaches the event center's API within 10 s.
    let url = format!("{}/api/v1/events?node={node}", stack.event_center_url);
    let event = wait_for("the fault in the events API", Duration::from_secs(10), || async {
        get_json(&url).await?.as_array()?.iter().find(|e| e["kind"] == "MemoryUncorrectable").cloned()
    })
    .await;
    assert!(injected.elapsed() < Duration::from_secs(10));
    assert_eq!(event["class"], "hardware");
    assert_eq!(event["severity"], "critical");
    assert_eq!(event["source"], "agent");
    assert_eq!(event["cluster"], cluster.name());
    assert!(event["message"].as_str().unwrap().contains("EDAC MC0: 1 UE"));

    // Cordoned and tainted, as a kube client sees it.
    wait_for("the node cordoned and tainted", Duration::from_secs(20), || async {
        let n = nodes.get(&node).await.ok()?;
        let spec = n.spec?;
        let tainted = spec.taints?.iter().any(|t| {
            t.key == "firebreak.io/unhealthy"
                && t.value.as_deref() == Some("MemoryUncorrectable")
                && t.effect == "NoSchedule"
        });
        (spec.unschedulable == Some(true) && tainted).then_some(())
    })
    .await;

    // Healed in the end: uncordoned, untainted, rebooted.
    wait_for("the workflow to heal the node", Duration::from_secs(60), || async {
        steps(&stack, &node).await.last().filter(|(s, _)| s == "healed").map(|_| ())
    })
    .await;
    let after = nodes.get(&node).await.unwrap();
    let spec = after.spec.clone().unwrap();
    assert_ne!(spec.unschedulable, Some(true), "uncordoned");
    assert!(!spec.taints.unwrap_or_default().iter().any(|t| t.key == "firebreak.io/unhealthy"), "untainted");
    assert_ne!(after.status.unwrap().node_info.unwrap().boot_id, boot_before, "the node rebooted");
    assert!(log.first_out_of_service(&node).is_some());

    // Pods: each labelled, then evicted through the Eviction API; the PDB's 429 was retried.
    let audit = cluster.audit();
    for pod in &to_migrate {
        let labelled =
            audit.iter().position(|a| a.verb == "patch" && a.resource == "pods" && &a.name == pod && a.code == 200);
        let evicted = audit.iter().position(|a| a.subresource == "eviction" && &a.name == pod && a.code == 201);
        assert!(labelled.is_some() && evicted.is_some() && labelled < evicted, "{pod} labelled then evicted");
    }
    assert!(
        audit.iter().any(|a| a.subresource == "eviction" && a.code == 429),
        "a PDB refusal happened and was retried"
    );
    assert!(!audit.iter().any(|a| a.verb == "delete" && a.resource == "pods"), "pods are evicted, never deleted");
    sampler.abort();
    let samples = pdb_samples.lock().unwrap().clone();
    assert!(samples.len() >= 20, "the budget was sampled throughout the drain: {} samples", samples.len());
    assert!(samples.iter().all(|headroom| *headroom >= 0), "the disruption budget was never violated: {samples:?}");
    assert!(samples.contains(&0), "the drain used the budget to its limit, no further: {samples:?}");

    // Every step is explained, in order.
    let states: Vec<String> = steps(&stack, &node).await.into_iter().map(|(s, _)| s).collect();
    let want =
        ["permit_wait", "cordoning", "draining", "rebooting", "awaiting_boot", "verifying", "uncordoning", "healed"];
    let mut it = states.iter();
    for w in want {
        assert!(it.any(|s| s == w), "step {w} missing or out of order in {states:?}");
    }
    let drained = steps(&stack, &node).await.into_iter().find(|(s, _)| s == "rebooting").unwrap().1;
    assert!(drained.contains("evictions refused by PodDisruptionBudgets"), "{drained}");
    assert!(!drained.contains(" 0 evictions refused"), "{drained}");
    // The reboot went through the node's own actuator, which confirmed it and reported the new
    // boot before the node went back into service.
    let reasons: Vec<String> = steps(&stack, &node).await.into_iter().map(|(_, r)| r).collect();
    assert!(reasons.iter().any(|r| r.starts_with("reboot asked of the node's actuator (command ")), "{reasons:?}");
    assert!(reasons.iter().any(|r| r.starts_with("the node's agent accepted the reboot on boot ")), "{reasons:?}");
    assert!(reasons.iter().any(|r| r.contains("the node's agent reported the new boot")), "{reasons:?}");
    // Evidence before the drain: conditions, the kernel's own line, the pods.
    let evidence = reasons.iter().find(|r| r.starts_with("evidence before the reboot: ")).expect("evidence recorded");
    assert!(
        evidence.contains("conditions Ready=True")
            && evidence.contains("MemoryUncorrectable (critical): EDAC MC0: 1 UE"),
        "{evidence}"
    );
    assert!(to_migrate.iter().all(|p| evidence.contains(p.as_str())), "the pods on it: {evidence}");

    // The NotReady our own reboot caused is reported, marked as ours, and starts nothing.
    let events = get_json(&url).await.unwrap();
    let ours: Vec<&serde_json::Value> =
        events.as_array().unwrap().iter().filter(|e| e["kind"] == "NodeNotReady").collect();
    assert!(!ours.is_empty(), "the reboot's NotReady was reported");
    assert!(ours.iter().all(|e| e["evidence"]["caused_by_remediation"] == "true" && e["severity"] == "warning"));
    let healed = states.iter().filter(|s| *s == "healed").count();
    assert_eq!(healed, 1, "one workflow: {states:?}");

    // And in the node's Kubernetes events.
    let events: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(client.clone(), "default");
    let reasons: Vec<String> = events
        .list(&ListParams::default().fields(&format!("involvedObject.name={node}")))
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|e| e.reason)
        .collect();
    for r in ["FirebreakCordoning", "FirebreakDraining", "FirebreakAwaitingBoot", "FirebreakHealed"] {
        assert!(reasons.iter().any(|x| x == r), "event {r} missing in {reasons:?}");
    }

    // The same story in the metrics.
    let metrics = reqwest::get(format!("{}/metrics", stack.metrics_url)).await.unwrap().text().await.unwrap();
    let c = cluster.name();
    for line in [
        format!("firebreak_remediator_workflow_transitions_total{{cluster=\"{c}\",state=\"healed\"}} 1"),
        format!("firebreak_remediator_faults_total{{cluster=\"{c}\",decision=\"started\"}} 1"),
        format!("firebreak_detector_nodes{{cluster=\"{c}\",ready=\"true\"}} 4"),
        format!("firebreak_detector_faults_published_total{{cluster=\"{c}\",kind=\"NodeNotReady\"}}"),
        format!("firebreak_remediator_evictions_total{{cluster=\"{c}\",outcome=\"refused\"}}"),
        // Each consumer's lag, per group and partition: the detector's own cluster's heartbeats,
        // the remediator's own cluster's faults.
        format!(
            "firebreak_detector_consumer_lag{{group=\"firebreak-detector-{c}\",topic=\"firebreak.heartbeats.v1.{c}\",partition=\"0\"}}"
        ),
        format!(
            "firebreak_remediator_consumer_lag{{group=\"firebreak-remediator-{c}\",topic=\"firebreak.faults.v1.{c}\",partition=\"0\"}}"
        ),
    ] {
        assert!(metrics.contains(&line), "missing `{line}` in\n{metrics}");
    }
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memory_error_heals_node_sqlite() {
    closed_loop("loop-sqlite", None).await;
}

/// The services may share one database (the test above does), each with its own migrations in
/// sqlx's one table of applied versions: two services' migrations with one version would make
/// the second service refuse to start ("previously applied but modified"). Every version is
/// unique across the workspace.
#[test]
fn migration_versions_are_unique_across_services() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut seen = std::collections::BTreeMap::new();
    for service in ["event-center", "remediator", "rate-limiter"] {
        for f in std::fs::read_dir(root.join(service).join("migrations")).unwrap() {
            let name = f.unwrap().file_name().to_string_lossy().into_owned();
            let version = name.split('_').next().unwrap().to_owned();
            if let Some(other) = seen.insert(version.clone(), format!("{service}/{name}")) {
                panic!("migration version {version} is both {other} and {service}/{name}");
            }
        }
    }
    assert!(seen.len() > 10, "{seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memory_error_heals_node_postgres() {
    let Some(db) = common::postgres_db().await else { return };
    closed_loop("loop-pg", Some(db)).await;
}

/// A node whose kubelet stops posting status: the detector reports it, the remediator reboots
/// it, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn not_ready_node_is_detected_and_healed() {
    let stack = stack("notready", |_| {}).await;
    let cluster = stack.fleet.clusters()[0].clone();
    let node = format!("{}-node-003", cluster.name());
    cluster.inject(&node, Fault::NotReady).unwrap();
    let url = format!("{}/api/v1/events?node={node}", stack.event_center_url);
    let detected = wait_for("NodeNotReady from the detector", Duration::from_secs(15), || async {
        get_json(&url).await?.as_array()?.iter().find(|e| e["kind"] == "NodeNotReady").cloned()
    })
    .await;
    assert_eq!(detected["source"], "detector");
    assert_eq!(detected["severity"], "critical");
    assert_eq!(detected["evidence"]["ready_status"], "Unknown");
    wait_for("the node healed", Duration::from_secs(60), || async {
        steps(&stack, &node).await.last().filter(|(s, _)| s == "healed").map(|_| ())
    })
    .await;
    let all = get_json(&format!("{}/api/v1/remediations?node={node}", stack.event_center_url)).await.unwrap();
    let mut workflows: Vec<&str> = all.as_array().unwrap().iter().map(|s| s["workflow_id"].as_str().unwrap()).collect();
    workflows.dedup();
    workflows.sort();
    workflows.dedup();
    assert_eq!(workflows.len(), 1, "one workflow, not one per NotReady");
    stack.shutdown().await;
}

/// A remediator that stopped with an error — here its database could not be opened — is
/// started again, as Kubernetes restarts a crashed pod, and heals the node once it can.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_remediator_that_failed_to_start_is_started_again_and_heals() {
    let missing = common::temp_dir("restarted").join("not-yet");
    let db = format!("sqlite://{}", missing.join("remediator.db").display());
    let stack = stack("restarted", |o| o.remediator_db = Some(db)).await;
    let cluster = stack.fleet.clusters()[0].clone();
    let node = format!("{}-node-002", cluster.name());
    cluster.inject(&node, Fault::MemoryUncorrectable).unwrap();
    // Its directory is missing: every start fails until it is made.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(steps(&stack, &node).await.is_empty(), "no remediator yet");
    std::fs::create_dir_all(&missing).unwrap();
    wait_for("the node healed", Duration::from_secs(90), || async {
        steps(&stack, &node).await.last().filter(|(s, _)| s == "healed").map(|_| ())
    })
    .await;
    stack.shutdown().await;
}

/// A fault that comes back right after the reboot: the remediator escalates to a human, leaves
/// the node cordoned and tainted, and gives its permit back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn recurring_fault_escalates_to_a_human() {
    let stack = stack("escalate", |o| o.quiet_period = Duration::from_secs(8)).await;
    let cluster = stack.fleet.clusters()[0].clone();
    let node = format!("{}-node-004", cluster.name());
    cluster.inject(&node, Fault::ReadonlyFilesystem).unwrap();
    wait_for("the quiet period after the reboot", Duration::from_secs(60), || async {
        steps(&stack, &node).await.iter().any(|(s, _)| s == "verifying").then_some(())
    })
    .await;
    cluster.inject(&node, Fault::MemoryUncorrectable).unwrap();
    let (_, why) = wait_for("escalation", Duration::from_secs(20), || async {
        steps(&stack, &node).await.into_iter().find(|(s, _)| s == "escalated")
    })
    .await;
    assert!(why.contains("fault recurred after the reboot request: MemoryUncorrectable"), "{why}");
    let client = firebreak::kube_client(&cluster.kubeconfig_path()).await.unwrap();
    let n = Api::<Node>::all(client).get(&node).await.unwrap();
    assert!(common::out_of_service(&n), "left cordoned for a human");
    assert_eq!(n.spec.unwrap().unschedulable, Some(true));
    let permits = wait_for("the permit released", Duration::from_secs(10), || async {
        common::get_json_as(&stack.tokens.viewer, &format!("{}/api/v1/permits", stack.gate_url))
            .await
            .filter(|p| p.as_array().is_some_and(Vec::is_empty))
    })
    .await;
    assert_eq!(permits, serde_json::json!([]));
    assert!(!steps(&stack, &node).await.iter().any(|(s, _)| s == "healed"));
    stack.shutdown().await;
}

/// A fault a reboot does not clear (a failing DIMM logs its error again while the node boots):
/// the fault logged during boot counts as a recurrence, so the node is escalated, not healed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fault_logged_during_boot_escalates_instead_of_healing() {
    // The boot-time fault must reach the remediator within the quiet period after the node is
    // Ready; give it room on a loaded machine (production's quiet period is 60 s).
    let stack = stack("bad-dimm", |o| o.quiet_period = Duration::from_secs(20)).await;
    let cluster = stack.fleet.clusters()[0].clone();
    let node = format!("{}-node-002", cluster.name());
    cluster.inject(&node, Fault::BadDimm).unwrap();
    let (_, why) = wait_for("escalation", Duration::from_secs(60), || async {
        steps(&stack, &node).await.into_iter().find(|(s, _)| s == "escalated" || s == "healed")
    })
    .await;
    assert!(why.contains("fault recurred after the reboot request: MemoryUncorrectable"), "{why}");
    let states: Vec<String> = steps(&stack, &node).await.into_iter().map(|(s, _)| s).collect();
    assert!(states.iter().any(|s| s == "awaiting_boot"), "it was rebooted first: {states:?}");
    assert!(!states.iter().any(|s| s == "healed" || s == "uncordoning"), "{states:?}");
    // The recurrence is the one logged during the new boot.
    let events = get_json(&format!("{}/api/v1/events?node={node}", stack.event_center_url)).await.unwrap();
    let boots: std::collections::BTreeSet<&str> = events
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "MemoryUncorrectable")
        .filter_map(|e| e["evidence"]["boot_id"].as_str())
        .collect();
    assert!(boots.len() >= 2, "the fault was seen before and after the reboot: {boots:?}");
    let client = firebreak::kube_client(&cluster.kubeconfig_path()).await.unwrap();
    let n = Api::<Node>::all(client).get(&node).await.unwrap();
    assert!(common::out_of_service(&n), "left cordoned for a human");
    stack.shutdown().await;
}

/// A node deleted while its workflow waits ends the workflow as "node gone", with its permit
/// given back — not a 404 retried forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_deleted_node_ends_its_workflow_as_node_gone() {
    let stack = stack("node-gone", |_| {}).await;
    let cluster = stack.fleet.clusters()[0].clone();
    let node = format!("{}-node-003", cluster.name());
    // Hold the workflow before its cordon: an operator halts the cluster.
    let halt = common::halt(&stack, cluster.name(), &[]).await;
    cluster.inject(&node, Fault::ReadonlyFilesystem).unwrap();
    wait_for("the workflow held by the halt", Duration::from_secs(20), || async {
        steps(&stack, &node)
            .await
            .iter()
            .any(|(s, r)| s == "permit_wait" && r.contains("halted by operator"))
            .then_some(())
    })
    .await;
    let client = firebreak::kube_client(&cluster.kubeconfig_path()).await.unwrap();
    Api::<Node>::all(client).delete(&node, &Default::default()).await.unwrap();
    common::resume(&stack, &halt).await;
    let (_, why) = wait_for("the workflow ended as node gone", Duration::from_secs(30), || async {
        steps(&stack, &node).await.into_iter().find(|(s, _)| s == "node_gone")
    })
    .await;
    assert!(why.contains("no longer exists"), "{why}");
    common::no_permits(&stack).await;
    stack.shutdown().await;
}
