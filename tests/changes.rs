//! Changes halted by health: a good runtime version rolls through every batch; a bad one (pods
//! crash-loop on its nodes) is halted after its first batch with a reason that names the pod
//! start success rate, its baseline and its threshold, and rolled back; the halt survives a gate
//! restart, only an operator resumes, the Argo and Flagger endpoints answer hold, and
//! remediation goes on healing nodes meanwhile.

mod common;

use std::time::Duration;

use common::{get_json_as, stack, steps, wait_for};
use firebreak::rollout::{Ended, RolloutArgs};
use firebreak_fleet_sim::{Fault, RUNTIME_LABEL, RuntimeFailure};
use k8s_openapi::api::core::v1::Node;
use serde_json::{Value, json};

fn args(stack: &firebreak::demo::Stack, version: &str, soak: u64, rollback: bool) -> RolloutArgs {
    let cluster = &stack.fleet.clusters()[0];
    RolloutArgs {
        cluster: cluster.name().into(),
        kubeconfig: cluster.kubeconfig_path(),
        gate: firebreak::gate_cli::GateClientArgs {
            gate_url: stack.gate_url.clone(),
            token: stack.tokens.changes.clone(),
            gate_ca: None,
            output: firebreak::gate_cli::Output::Table,
        },
        set_label: (RUNTIME_LABEL.into(), version.into()),
        batches: vec!["1".parse().unwrap(), "50%".parse().unwrap(), "100%".parse().unwrap()],
        soak: Duration::from_secs(soak),
        selector: None,
        rollback_on_halt: rollback,
        id: None,
        max_wait: Duration::from_secs(120),
    }
}

async fn runtimes(client: &kube::Client) -> Vec<String> {
    let nodes: kube::Api<Node> = kube::Api::all(client.clone());
    let mut out: Vec<(String, String)> = nodes
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|n| {
            let v = n.metadata.labels.unwrap_or_default().get(RUNTIME_LABEL).cloned().unwrap_or_default();
            (n.metadata.name.unwrap_or_default(), v)
        })
        .collect();
    out.sort();
    out.into_iter().map(|(_, v)| v).collect()
}

async fn post(token: &str, url: &str, body: Value) -> (u16, Value) {
    let r = reqwest::Client::new().post(url).bearer_auth(token).json(&body).send().await.unwrap();
    let code = r.status().as_u16();
    (code, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_bad_runtime_is_halted_after_its_first_batch_and_rolled_back() {
    let mut stack = stack("changes", |o| {
        o.nodes_per_cluster = 6;
        o.sample_every = Duration::from_secs(1);
        o.pod_window = Duration::from_secs(10);
        o.pod_start_deadline = Duration::from_secs(5);
        o.timings.churn_per_minute = 240;
        o.timings.pod_lifetime = Duration::from_secs(10);
    })
    .await;
    let cluster = stack.fleet.clusters()[0].clone();
    // The control API refuses what it cannot take.
    let runtime = |v: &str| format!("{}/fleet-sim/v1/runtime-versions/{v}", cluster.url());
    let http = reqwest::Client::new();
    assert_eq!(http.post(runtime("v2")).body("{\"healthy\": \"no\"}").send().await.unwrap().status(), 400);
    assert_eq!(http.post(runtime("bad%20value!")).body("{\"healthy\": false}").send().await.unwrap().status(), 422);
    cluster.set_runtime_health("v2-bad", false, RuntimeFailure::CrashLoop);
    let client = firebreak::kube_client(&cluster.kubeconfig_path()).await.unwrap();
    let viewer = stack.tokens.viewer.clone();
    let verdict_url = format!("{}/api/v1/verdict?cluster=c1", stack.gate_url);
    wait_for("a healthy, measurable cluster", Duration::from_secs(60), || async {
        get_json_as(&viewer, &verdict_url).await.filter(|v| v["verdict"] == "Successful")
    })
    .await;

    // A good version rolls through every batch.
    let good = firebreak::rollout::run(&args(&stack, "v1.1", 2, true), client.clone()).await.unwrap();
    let Ended::Completed(change) = &good else { panic!("the good version was halted: {good:?}") };
    assert_eq!(change.history.len(), 3);
    assert!(change.history.iter().all(|b| b.verdict.as_ref().is_some_and(|v| v.verdict.as_str() == "Successful")));
    assert_eq!(runtimes(&client).await, vec!["v1.1"; 6]);

    // The bad one is halted after its first batch, with the numbers, and rolled back.
    let bad = firebreak::rollout::run(&args(&stack, "v2-bad", 10, true), client.clone()).await.unwrap();
    let Ended::Halted { change, rolled_back } = &bad else { panic!("the bad version completed: {bad:?}") };
    assert_eq!(bad.code(), 2);
    assert_eq!(change.history.len(), 1, "halted after the first batch");
    let reason = change.reason.clone().unwrap_or_default();
    assert!(reason.contains("pod_start_success_rate in cluster=c1 is"), "{reason}");
    assert!(reason.contains("baseline 100"), "{reason}");
    assert!(reason.contains("min 90"), "{reason}");
    let verdict = change.history[0].verdict.clone().unwrap();
    let m = verdict.signals.iter().find(|m| m.rule == "pod-starts").unwrap();
    assert!(m.value.unwrap() < 95.0 && m.baseline == Some(100.0) && m.threshold == Some(90.0), "{m:?}");
    assert_eq!(rolled_back.len(), 1);
    assert_eq!(runtimes(&client).await, vec!["v1.1"; 6], "the changed node has its old label back");

    // The halt is recorded with the measured signals, and says so to Argo and Flagger.
    let halts = get_json_as(&viewer, &format!("{}/api/v1/halts", stack.gate_url)).await.unwrap();
    let source = format!("change:{}", change.spec.id);
    let halt = halts.as_array().unwrap().iter().find(|h| h["source"] == source.as_str()).cloned();
    let halt = halt.unwrap_or_else(|| panic!("no halt from {source}: {halts}"));
    assert_eq!(halt["operations"], json!(["canary_batch"]));
    assert!(halt["signals"][0]["value"].as_f64().unwrap() < 95.0);
    let argo = get_json_as(&viewer, &format!("{verdict_url}&change={}", change.spec.id)).await.unwrap();
    assert_eq!(argo["verdict"], "Failed", "{argo}");
    let flagger = format!("{}/api/v1/webhooks/flagger", stack.gate_url);
    let hook = json!({"name": "podinfo", "namespace": "test", "phase": "Progressing", "type": "confirm-rollout",
        "metadata": {"cluster": "c1", "token": viewer}});
    let r = reqwest::Client::new().post(&flagger).json(&hook).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 403, "Flagger is told to hold");

    // The halt survives a restart of the gate.
    stack.stop_gate().await;
    stack.start_gate().await.unwrap();
    let after = wait_for("the gate back", Duration::from_secs(20), || async {
        get_json_as(&viewer, &format!("{}/api/v1/halts", stack.gate_url)).await
    })
    .await;
    assert!(after.as_array().unwrap().iter().any(|h| h["id"] == halt["id"]), "{after}");

    // Remediation goes on under a change halt.
    let node = "c1-node-004";
    cluster.inject(node, Fault::MemoryUncorrectable).unwrap();
    wait_for("the node healed during the halt", Duration::from_secs(90), || async {
        steps(&stack, node).await.last().filter(|(s, _)| s == "healed").map(|_| ())
    })
    .await;

    // Only an operator resumes the change; resuming lifts its halt.
    let resume = format!("{}/api/v1/changes/{}/resume", stack.gate_url, change.spec.id);
    assert_eq!(post(&stack.tokens.changes, &resume, json!({})).await.0, 403);
    let (code, resumed) = post(&stack.tokens.operator, &resume, json!({})).await;
    assert_eq!(code, 200, "{resumed}");
    assert_eq!(resumed["state"], "ready");
    let halts = get_json_as(&viewer, &format!("{}/api/v1/halts", stack.gate_url)).await.unwrap();
    assert!(!halts.as_array().unwrap().iter().any(|h| h["source"] == source.as_str()), "{halts}");
    stack.shutdown().await;
}
