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

/// Two detector replicas of one cluster: only the holder of the Lease `firebreak-detector-<c>`
/// builds and publishes health samples; when it dies without giving the Lease up, the other
/// takes over once the Lease lapses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_detector_replica_publishes_and_the_standby_takes_over() {
    let (_mock, kafka) = common::mock_kafka(&[
        (&firebreak_schema::fault_topic("c1"), 3),
        (&firebreak_schema::heartbeat_topic("c1"), 3),
        (firebreak_schema::HEALTH_TOPIC, 1),
        (firebreak_schema::REMEDIATION_TOPIC, 3),
    ]);
    let fleet = common::fleet("detector-leader", 2).await;
    let cluster = fleet.clusters()[0].clone();
    let client = firebreak::kube_client(&cluster.kubeconfig_path()).await.unwrap();
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-system");
    let lease_name = format!("firebreak-detector-{}", cluster.name());
    let holder = || async { leases.get_opt(&lease_name).await.ok().flatten().and_then(|l| l.spec?.holder_identity) };
    let replica = |id: &str| {
        let mut registry = prometheus_client::registry::Registry::default();
        let metrics = firebreak_detector::Metrics::new(&mut registry);
        let cfg = firebreak_detector::Config {
            sample_every: Duration::from_millis(300),
            lease: Some(firebreak_plumbing::leader::LeaseConfig {
                namespace: "kube-system".into(),
                identity: id.into(),
                duration: Duration::from_secs(3),
            }),
            ..common::detector_config(cluster.name(), &kafka)
        };
        let task = tokio::spawn(firebreak_detector::run(cfg, client.clone(), metrics, Default::default()));
        (registry, task)
    };
    let samples = |registry: &prometheus_client::registry::Registry| {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, registry).unwrap();
        text.lines()
            .filter(|l| l.starts_with("firebreak_detector_health_samples_total"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum::<u64>()
    };
    let (reg_a, task_a) = replica("detector-a");
    let (reg_b, task_b) = replica("detector-b");
    let leader = wait_for("a leader", Duration::from_secs(20), || async { holder().await }).await;
    let (lead_reg, lead_task, standby_reg, standby_id) = if leader == "detector-a" {
        (&reg_a, &task_a, &reg_b, "detector-b")
    } else {
        (&reg_b, &task_b, &reg_a, "detector-a")
    };
    wait_for("the leader's samples", Duration::from_secs(20), || async { (samples(lead_reg) >= 3).then_some(()) })
        .await;
    assert_eq!(samples(standby_reg), 0, "the standby publishes nothing");
    // The leader dies without a word (its task dropped, the Lease not given up).
    lead_task.abort();
    let taken = wait_for("the standby leading", Duration::from_secs(30), || async {
        holder().await.filter(|h| h == standby_id)
    })
    .await;
    assert_eq!(taken, standby_id);
    wait_for("the new leader's samples", Duration::from_secs(20), || async {
        (samples(standby_reg) >= 3).then_some(())
    })
    .await;
    task_a.abort();
    task_b.abort();
    fleet.shutdown().await;
}
