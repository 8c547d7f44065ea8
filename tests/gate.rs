//! (b) The gate's concurrency budget holds across simultaneous faults; (c) with the gate down
//! nothing is cordoned, and the workflow proceeds once it is back.

mod common;

use std::{collections::BTreeMap, time::Duration};

use common::{NodeLog, get_json, get_json_as, stack, steps, wait_for};
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

fn policy_with(cordon: OperationPolicy, ttl: Duration) -> Policy {
    let unlimited = OperationPolicy { cluster: Some(Limits::default()), ..OperationPolicy::default() };
    Policy {
        permit_ttl: ttl,
        operations: BTreeMap::from([
            (Operation::Cordon, cordon),
            (Operation::Drain, unlimited.clone()),
            (Operation::Reboot, unlimited),
        ]),
        ..Policy::default()
    }
}

/// Critical faults on 50 of 100 nodes at once, with a 20 % in-flight cap: never more than 20
/// nodes out of service at any moment (watched through kube), and all 50 healed in the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_storm_on_half_the_cluster_is_held_to_twenty_percent() {
    let cordon = OperationPolicy {
        cluster: Some(Limits {
            max_in_flight_percent: Some(firebreak_rate_limiter::Percent::try_from(20.0).unwrap()),
            ..Limits::default()
        }),
        ..OperationPolicy::default()
    };
    let stack = stack("storm", |o| {
        o.nodes_per_cluster = 100;
        o.policy = policy_with(cordon, Duration::from_secs(60));
        o.quiet_period = Duration::from_secs(1);
        o.eviction_retry = Duration::from_millis(200);
        o.timings.pod_start = Duration::from_millis(200);
        o.timings.reboot = Duration::from_secs(1);
    })
    .await;
    let cluster = stack.fleet.clusters()[0].clone();
    let client = firebreak::kube_client(&cluster.kubeconfig_path()).await.unwrap();
    let log = NodeLog::watch(client);
    let status = format!("{}/api/v1/status", stack.gate_url);
    wait_for("the first cluster snapshot at the gate", Duration::from_secs(20), || async {
        let s = get_json_as(&stack.tokens.viewer, &status).await?;
        (s["snapshots"][0]["nodes"] == 100).then_some(())
    })
    .await;
    let victims: Vec<String> = cluster.node_names().into_iter().step_by(2).collect();
    assert_eq!(victims.len(), 50);
    for node in &victims {
        cluster.inject(node, Fault::ReadonlyFilesystem).unwrap();
    }
    for node in &victims {
        wait_for(&format!("{node} healed"), Duration::from_secs(240), || healed(&stack, node)).await;
    }
    let max = log.max_out_of_service();
    assert!(max <= 20, "at most 20 of 100 nodes out of service at once, saw {max}");
    assert!(max >= 15, "the cap was used, not just respected: {max}");
    for node in &victims {
        assert!(log.first_out_of_service(node).is_some(), "{node} was taken out of service");
    }
    let mut explained = false;
    for n in &victims {
        explained |= steps(&stack, n).await.iter().any(|(s, r)| {
            s == "permit_wait" && r.contains("20 cordon permits in flight in cluster=c1, limit 20 (20% of 100 nodes)")
        });
    }
    assert!(explained, "waiting workflows say which rule holds them, with the measured values");
    stack.shutdown().await;
}

/// A breaker: more than 3 cordons in 10 minutes trips it; it latches (stays open after the
/// first three healed); the denials say so; an operator's reset lets the rest through.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_breaker_trips_latches_and_an_operator_resets_it() {
    let cordon = OperationPolicy {
        cluster: Some(Limits::default()),
        breaker: Some(firebreak_rate_limiter::Breaker {
            max_grants: 3,
            window: Duration::from_secs(600),
            scope: firebreak_rate_limiter::BreakerScope::Cluster,
            cooldown: None,
        }),
        ..OperationPolicy::default()
    };
    let stack = stack("breaker", |o| {
        o.nodes_per_cluster = 6;
        o.policy = policy_with(cordon, Duration::from_secs(60));
    })
    .await;
    let cluster = stack.fleet.clusters()[0].clone();
    let nodes = cluster.node_names();
    for node in &nodes[..3] {
        cluster.inject(node, Fault::MemoryUncorrectable).unwrap();
    }
    for node in &nodes[..3] {
        wait_for(&format!("{node} healed"), Duration::from_secs(60), || healed(&stack, node)).await;
    }
    for node in &nodes[3..5] {
        cluster.inject(node, Fault::MemoryUncorrectable).unwrap();
    }
    for node in &nodes[3..5] {
        let (_, why) = wait_for("a denial by the breaker", Duration::from_secs(30), || async {
            steps(&stack, node).await.into_iter().find(|(s, r)| s == "permit_wait" && r.contains("breaker"))
        })
        .await;
        assert!(
            why.contains("breaker") && why.contains("3 cordon grants in cluster=c1 within 10m"),
            "the denial names the rule, the measured grants and the window: {why}"
        );
    }
    // Latched: still denied a while later, though the window's grants all healed.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for node in &nodes[3..5] {
        assert!(!steps(&stack, node).await.iter().any(|(s, _)| s == "cordoning"), "{node} stays held");
    }
    let status = get_json_as(&stack.tokens.viewer, &format!("{}/api/v1/status", stack.gate_url)).await.unwrap();
    assert_eq!(status["breakers"][0]["scope"]["cluster"], "c1", "{status}");
    // A viewer cannot reset it; an operator can, through the CLI, and the held nodes heal.
    let cli = |token: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_firebreak"))
            .args(["gate", "reset-breaker", "--operation", "cordon", "--scope", "cluster=c1", "--gate-url"])
            .arg(&stack.gate_url)
            .env("FIREBREAK_GATE_TOKEN", token)
            .output()
            .unwrap()
    };
    let refused = cli(&stack.tokens.viewer);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("403"), "{refused:?}");
    let reset = cli(&stack.tokens.operator);
    assert!(reset.status.success(), "{reset:?}");
    for node in &nodes[3..5] {
        wait_for(&format!("{node} healed after the reset"), Duration::from_secs(60), || healed(&stack, node)).await;
    }
    stack.shutdown().await;
}

/// A drain that outlasts the permit TTL keeps its permits by renewing them; a remediator
/// killed mid-step loses its permits after the TTL and the budget frees.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn permits_are_renewed_while_a_step_runs_and_expire_when_their_holder_dies() {
    let cordon = OperationPolicy {
        cluster: Some(Limits { max_in_flight: Some(1), ..Limits::default() }),
        ..OperationPolicy::default()
    };
    let stack = stack("renew", |o| {
        o.policy = policy_with(cordon, Duration::from_secs(2));
        // Slow pod starts: the drain waits on the disruption budget for longer than the TTL.
        o.timings.pod_start = Duration::from_secs(4);
    })
    .await;
    let cluster = stack.fleet.clusters()[0].clone();
    let node = format!("{}-node-001", cluster.name());
    common::wait_pods_ready(&cluster).await;
    cluster.inject(&node, Fault::MemoryUncorrectable).unwrap();
    wait_for("the node healed", Duration::from_secs(90), || healed(&stack, &node)).await;
    let steps_seen = steps(&stack, &node).await;
    let drain_started = steps_seen.iter().position(|(s, r)| s == "draining" && r.starts_with("drain permit")).unwrap();
    let drained = steps_seen.iter().position(|(s, _)| s == "rebooting").unwrap();
    assert!(drained > drain_started);
    let (_, summary) = &steps_seen[drained];
    assert!(!summary.contains(" 0 evictions refused"), "the drain waited on the budget past the TTL: {summary}");
    assert!(!steps_seen.iter().any(|(_, r)| r.contains("lost")), "no permit was lost: {steps_seen:?}");
    let decisions =
        get_json_as(&stack.tokens.viewer, &format!("{}/api/v1/decisions?limit=1000", stack.gate_url)).await.unwrap();
    let grants =
        decisions.as_array().unwrap().iter().filter(|d| d["granted"] == true && d["operation"] == "cordon").count();
    assert_eq!(grants, 1, "one cordon permit for the whole workflow, kept alive by renewals");
    let metrics = common::gate_metrics(&stack).await;
    assert!(metrics.contains("firebreak_gate_decisions_total"), "{metrics}");
    assert!(!metrics.contains("firebreak_gate_permits_abandoned_total"), "nothing abandoned: {metrics}");

    // Now a remediator dies mid-drain: its permits lapse and the budget frees.
    let second = format!("{}-node-002", cluster.name());
    cluster.inject(&second, Fault::MemoryUncorrectable).unwrap();
    wait_for("the drain under way", Duration::from_secs(30), || async {
        steps(&stack, &second).await.iter().any(|(s, r)| s == "draining" && r.starts_with("drain permit")).then_some(())
    })
    .await;
    stack.kill_remediators();
    let permits = format!("{}/api/v1/permits", stack.gate_url);
    assert_eq!(get_json_as(&stack.tokens.viewer, &permits).await.unwrap().as_array().unwrap().len(), 2);
    wait_for("the dead remediator's permits counted as abandoned", Duration::from_secs(15), || async {
        let text = common::gate_metrics(&stack).await;
        ["cordon", "drain"]
            .iter()
            .all(|op| text.contains(&format!("firebreak_gate_permits_abandoned_total{{operation=\"{op}\"}} 1")))
            .then_some(())
    })
    .await;
    assert!(
        get_json_as(&stack.tokens.viewer, &permits).await.unwrap().as_array().unwrap().is_empty(),
        "the budget is free"
    );
    stack.shutdown().await;
}

/// A remediator with a wrong token gets nothing and does nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_remediator_with_a_wrong_token_does_nothing() {
    let stack = stack("bad-token", |o| o.remediator_token = Some("not-the-token".into())).await;
    let cluster = stack.fleet.clusters()[0].clone();
    let client = firebreak::kube_client(&cluster.kubeconfig_path()).await.unwrap();
    let log = NodeLog::watch(client);
    let node = format!("{}-node-002", cluster.name());
    cluster.inject(&node, Fault::ReadonlyFilesystem).unwrap();
    let (_, why) = wait_for("the refusal recorded", Duration::from_secs(20), || async {
        // (Not merely "401": the intake step names the fault's id, which may hold those digits.)
        steps(&stack, &node)
            .await
            .into_iter()
            .find(|(s, r)| s == "permit_wait" && r.contains("failing closed") && r.contains("401"))
    })
    .await;
    assert!(why.contains("gate unavailable, failing closed"), "{why}");
    let metrics = format!("{}/metrics", stack.metrics_url);
    wait_for("three refusals", Duration::from_secs(30), || async {
        let text = reqwest::get(&metrics).await.ok()?.text().await.ok()?;
        let line = text.lines().find(|l| {
            l.starts_with("firebreak_remediator_permit_denials_total{") && l.contains("limit=\"gate_unavailable\"")
        })?;
        (line.rsplit(' ').next()?.parse::<f64>().ok()? >= 3.0).then_some(())
    })
    .await;
    assert!(log.first_out_of_service(&node).is_none(), "nothing cordoned");
    stack.shutdown().await;
}

/// An operator takes a drain permit away mid-drain: the remediator's next renewal learns it is
/// over, the workflow stops before its next eviction, says why, and goes on only with a new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lost_permit_stops_the_step_until_a_new_one_is_granted() {
    let stack = stack("lost-permit", |o| {
        o.policy = policy_with(
            OperationPolicy { cluster: Some(Limits::default()), ..OperationPolicy::default() },
            Duration::from_secs(3),
        );
        o.timings.pod_start = Duration::from_secs(4);
    })
    .await;
    let cluster = stack.fleet.clusters()[0].clone();
    let node = format!("{}-node-001", cluster.name());
    // The budget binds only Ready pods: let the slow-starting workload come up first, so the
    // drain waits on the budget long enough to lose its permit mid-way.
    common::wait_pods_ready(&cluster).await;
    cluster.inject(&node, Fault::MemoryUncorrectable).unwrap();
    let permits = format!("{}/api/v1/permits", stack.gate_url);
    let drain = wait_for("the drain permit held", Duration::from_secs(30), || async {
        let list = get_json_as(&stack.tokens.viewer, &permits).await?;
        list.as_array()?.iter().find(|p| p["operation"] == "drain" && p["node"] == node.as_str()).cloned()
    })
    .await;
    let id = drain["id"].as_str().unwrap();
    let released = reqwest::Client::new()
        .delete(format!("{permits}/{id}"))
        .bearer_auth(&stack.tokens.operator)
        .send()
        .await
        .unwrap();
    assert_eq!(released.status(), 200);
    let (_, why) = wait_for("the loss recorded", Duration::from_secs(20), || async {
        steps(&stack, &node).await.into_iter().find(|(_, r)| r.contains("stopped before the next side effect"))
    })
    .await;
    assert!(why.contains(&format!("drain permit {id}")) && why.contains("410"), "{why}");
    wait_for("the node healed with a new drain permit", Duration::from_secs(90), || healed(&stack, &node)).await;
    let all = steps(&stack, &node).await;
    let lost = all.iter().position(|(_, r)| r.contains("stopped before the next side effect")).unwrap();
    assert!(
        all[lost..].iter().any(|(s, r)| s == "draining" && r.starts_with("drain permit") && !r.contains(id)),
        "a new drain permit after the loss: {all:?}"
    );
    stack.shutdown().await;
}

/// Issue 10: a storm in one zone halts repairs in that zone only. The detector publishes which
/// node is in which zone; the event center places the correlation there; the gate's halt has
/// that zone as its scope, and a node of another zone is repaired meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_in_one_zone_halts_repairs_in_that_zone_only() {
    let stack = stack("zone-storm", |o| {
        o.nodes_per_cluster = 15;
        o.policy.storms = Some(firebreak_rate_limiter::Storms {
            halts: vec![Operation::Cordon, Operation::Reboot],
            resume_after: Duration::from_secs(600),
        });
    })
    .await;
    let cluster = stack.fleet.clusters()[0].clone();
    // The sample comes after the topology on the health topic: once the event center has it,
    // it knows the zones.
    wait_for("the cluster's first health sample", Duration::from_secs(30), || async {
        let gate = get_json(&format!("{}/api/v1/gate", stack.event_center_url)).await?;
        gate["clusters"].as_array()?.iter().any(|c| c["cluster"] == cluster.name()).then_some(())
    })
    .await;
    // Nodes 3, 6, 9, 12, 15: the whole of zone-a.
    publish_nic_down(&stack, cluster.name(), [3, 6, 9, 12, 15]).await;
    let halts_url = format!("{}/api/v1/halts", stack.gate_url);
    let source = format!("storm:cluster={},topology.kubernetes.io/zone=zone-a", cluster.name());
    let halt = wait_for("the zone's storm halt", Duration::from_secs(30), || async {
        let halts = get_json_as(&stack.tokens.viewer, &halts_url).await?;
        halts.as_array()?.iter().find(|h| h["source"] == source).cloned()
    })
    .await;
    assert_eq!(halt["scope"]["domain"], serde_json::json!(["topology.kubernetes.io/zone", "zone-a"]), "{halt}");
    assert!(halt["reason"].as_str().unwrap().contains("topology.kubernetes.io/zone=zone-a"), "{halt}");
    // A node of zone-b is repaired while zone-a is halted.
    let other = format!("{}-node-001", cluster.name());
    cluster.inject(&other, Fault::MemoryUncorrectable).unwrap();
    wait_for(&format!("{other} healed beside the halted zone"), Duration::from_secs(120), || healed(&stack, &other))
        .await;
    let waited = steps(&stack, &other).await.into_iter().any(|(_, r)| r.contains("correlated incident"));
    assert!(!waited, "zone-b is not in the storm's scope");
    let halts = get_json_as(&stack.tokens.viewer, &halts_url).await.unwrap();
    assert_eq!(halts.as_array().unwrap().len(), 1, "zone-a still halted: {halts}");
    stack.shutdown().await;
}

/// Issue 10: a correlated storm halts node repairs in its cluster. Five nodes report a NIC down
/// at once (recorded, not repaired); the event center correlates them and publishes the
/// correlation on the health topic; the gate halts the cluster for cordons and reboots with the
/// correlation's figures. A node's own memory fault then waits for its cordon permit, its step
/// saying why, and is repaired once the storm has been calm for `resume_after`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_correlated_storm_halts_node_repairs_until_it_calms() {
    let stack = stack("storm", |o| {
        o.nodes_per_cluster = 6;
        o.policy.storms = Some(firebreak_rate_limiter::Storms {
            halts: vec![Operation::Cordon, Operation::Reboot],
            resume_after: Duration::from_secs(8),
        });
    })
    .await;
    let cluster = stack.fleet.clusters()[0].clone();
    publish_nic_down(&stack, cluster.name(), 2..=6).await;
    let halts_url = format!("{}/api/v1/halts", stack.gate_url);
    let halt = wait_for("the storm's halt", Duration::from_secs(30), || async {
        let halts = get_json_as(&stack.tokens.viewer, &halts_url).await?;
        halts.as_array()?.iter().find(|h| h["source"] == format!("storm:cluster={}", cluster.name())).cloned()
    })
    .await;
    assert!(halt["reason"].as_str().unwrap().contains("likely infrastructure, not nodes"), "{halt}");
    assert_eq!(
        (halt["signals"][0]["value"].as_f64(), halt["signals"][0]["threshold"].as_f64()),
        (Some(5.0), Some(5.0))
    );
    assert_eq!(halt["scope"]["cluster"], cluster.name());

    let victim = format!("{}-node-001", cluster.name());
    cluster.inject(&victim, Fault::MemoryUncorrectable).unwrap();
    wait_for("the repair waiting on the storm", Duration::from_secs(30), || async {
        steps(&stack, &victim)
            .await
            .iter()
            .any(|(s, r)| s == "permit_wait" && r.contains("correlated incident"))
            .then_some(())
    })
    .await;
    wait_for(&format!("{victim} healed once the storm calmed"), Duration::from_secs(120), || healed(&stack, &victim))
        .await;
    let halts = get_json_as(&stack.tokens.viewer, &halts_url).await.unwrap();
    assert!(halts.as_array().unwrap().is_empty(), "lifted: {halts}");
    // The gate's decisions are on the node's page of the event center and in its incident's
    // timeline: the cordon denied by the storm's halt (one entry however often it was asked),
    // then granted.
    let node_url = format!("{}/api/v1/nodes/{}/{victim}", stack.event_center_url, cluster.name());
    let decisions = wait_for("the gate's decisions on the node page", Duration::from_secs(20), || async {
        let page = get_json(&node_url).await?;
        let d: Vec<serde_json::Value> =
            page["timeline"].as_array()?.iter().filter(|e| e["type"] == "decision").cloned().collect();
        d.iter().any(|e| e["granted"] == true && e["operation"] == "reboot").then_some(d)
    })
    .await;
    let denied: Vec<_> = decisions.iter().filter(|e| e["granted"] == false && e["operation"] == "cordon").collect();
    assert_eq!(denied.len(), 1, "one run of the same denial: {decisions:#?}");
    assert_eq!(denied[0]["rule"], "halt", "{decisions:#?}");
    assert!(denied[0]["reason"].as_str().unwrap().contains("correlated incident"), "{decisions:#?}");
    assert!(denied[0]["repeats"].as_i64().unwrap() >= 1);
    assert!(denied[0]["requester"].as_str().unwrap().starts_with("remediator/"));
    let page = get_json(&node_url).await.unwrap();
    let incident = page["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .find_map(|e| {
            (e["type"] == "occurrence" && e["kind"] == "MemoryUncorrectable").then(|| e["incident_id"].clone())
        })
        .unwrap();
    let detail =
        get_json(&format!("{}/api/v1/incidents/{}", stack.event_center_url, incident.as_str().unwrap())).await.unwrap();
    let granted =
        detail["timeline"].as_array().unwrap().iter().filter(|e| e["type"] == "decision" && e["granted"] == true);
    assert!(granted.count() >= 2, "the workflow's cordon and reboot permits: {detail:#}");
    stack.shutdown().await;
}

/// Publishes a NIC-down fault (recorded, never repaired) for each of these nodes of `cluster`
/// (by number), as their agents would.
async fn publish_nic_down(stack: &firebreak::demo::Stack, cluster: &str, nodes: impl IntoIterator<Item = usize>) {
    let producer = firebreak_plumbing::kafka::Producer::new(&stack.kafka_config).unwrap();
    for k in nodes {
        let node = format!("{cluster}-node-{k:03}");
        let at = chrono::Utc::now();
        let fault = firebreak_schema::FaultEvent {
            id: firebreak_schema::deterministic_id(at, &[&node, "NicDown"]),
            cluster: cluster.to_owned(),
            node,
            class: firebreak_schema::FaultKind::NicDown.class(),
            kind: firebreak_schema::FaultKind::NicDown,
            severity: firebreak_schema::Severity::Warning,
            source: firebreak_schema::Source::Agent,
            observed_at: at,
            message: "eth0: link down".into(),
            evidence: BTreeMap::new(),
        };
        producer.publish(&firebreak_schema::fault_topic(cluster), &fault).await.unwrap();
    }
}
