//! Detection on the real protocols: the agent loses nothing while Kafka is down; the detector
//! reports silent agents and clears them when they speak again.

mod common;

use std::{sync::Arc, time::Duration};

use chrono::Utc;
use firebreak_agent::{NodeAgent, rules};
use firebreak_fleet_sim::Fault;
use firebreak_plumbing::kafka::{KafkaConfig, Producer, decode_message};
use firebreak_schema::{FaultEvent, FaultKind, Heartbeat};
use rdkafka::consumer::{Consumer, StreamConsumer};
use tokio_util::sync::CancellationToken;

/// Cluster c1's fault topic (`firebreak_schema::fault_topic("c1")`).
const FAULTS: &str = "firebreak.faults.v1.c1";
/// Cluster c1's heartbeat topic (`firebreak_schema::heartbeat_topic("c1")`).
const HEARTBEAT_TOPIC: &str = "firebreak.heartbeats.v1.c1";

/// Every record of a topic, read from the start by a fresh group.
fn reader(cfg: &KafkaConfig, topic: &str) -> StreamConsumer {
    let c: StreamConsumer = cfg.consumer(&format!("reader-{}", uuid::Uuid::now_v7())).create().unwrap();
    c.subscribe(&[topic]).unwrap();
    c
}

fn fault_reader(cfg: &KafkaConfig) -> StreamConsumer {
    reader(cfg, FAULTS)
}

async fn next_fault(c: &StreamConsumer, timeout: Duration, want: impl Fn(&FaultEvent) -> bool) -> FaultEvent {
    tokio::time::timeout(timeout, async {
        loop {
            let msg = c.recv().await.unwrap();
            if let Ok(e) = decode_message::<FaultEvent>(&msg)
                && want(&e)
            {
                return e;
            }
        }
    })
    .await
    .expect("the fault arrives")
}

fn agent(cluster: &firebreak_fleet_sim::Cluster, node: &str, producer: &Producer) -> NodeAgent {
    NodeAgent {
        cluster: cluster.name().into(),
        node: node.into(),
        host_root: cluster.host_root(node),
        rules: Arc::new(rules::defaults()),
        producer: producer.clone(),
        poll_interval: Duration::from_millis(100),
        heartbeat_interval: Duration::from_secs(1),
        actuator: None,
        cursor: None,
        sources: None,
        spool: None,
        metrics: Default::default(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_loses_nothing_while_kafka_is_down() {
    let (mock, cfg) = common::mock_kafka(&[(FAULTS, 3), (HEARTBEAT_TOPIC, 3)]);
    let fleet = common::fleet("agent", 1).await;
    let cluster = fleet.clusters()[0].clone();
    let node = cluster.node_names()[0].clone();
    let producer = Producer::new(&cfg).unwrap();
    let cancel = CancellationToken::new();
    let task = tokio::spawn(agent(&cluster, &node, &producer).run(cancel.clone()));
    // The agent is up and publishing: its first heartbeat is on the topic.
    let beats = reader(&cfg, HEARTBEAT_TOPIC);
    let first_beat = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            if let Ok(hb) = decode_message::<Heartbeat>(&beats.recv().await.unwrap()) {
                return hb;
            }
        }
    })
    .await
    .expect("a heartbeat");
    assert_eq!(first_beat.node, node);
    drop(beats);

    // The outage (the scenario, not a synchronisation): faults happen while the broker is down.
    mock.broker_down(1).unwrap();
    cluster.inject(&node, Fault::MemoryUncorrectable).unwrap();
    cluster.inject(&node, Fault::ReadonlyFilesystem).unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    mock.broker_up(1).unwrap();

    let reader = fault_reader(&cfg);
    // (The filesystem's own error line before its remount is node-problem-detector's
    // `Ext4Error`, a KernelError: not one of the two looked for here.)
    let wanted = |e: &FaultEvent| e.kind != FaultKind::KernelError;
    let first = next_fault(&reader, Duration::from_secs(30), wanted).await;
    let second = next_fault(&reader, Duration::from_secs(30), wanted).await;
    assert_eq!((first.kind, second.kind), (FaultKind::MemoryUncorrectable, FaultKind::ReadonlyFilesystem), "in order");
    assert_eq!(first.evidence["rule"], "edac-uncorrectable");
    assert!(first.observed_at <= second.observed_at);

    // A restarted agent re-reads the log and republishes the same ids: consumers deduplicate.
    cancel.cancel();
    task.await.unwrap();
    let cancel = CancellationToken::new();
    let task = tokio::spawn(agent(&cluster, &node, &producer).run(cancel.clone()));
    let replay = next_fault(&reader, Duration::from_secs(30), wanted).await;
    assert_eq!(replay.id, first.id, "same observation, same id");
    cancel.cancel();
    task.await.unwrap();

    // With a cursor (as `firebreak-agent` keeps one in its state directory), a restarted agent
    // goes on after the last record whose faults were delivered: nothing is published twice,
    // and what comes after is.
    let cursor = common::temp_dir("kmsg-cursor").join("kmsg-cursor");
    let with_cursor = || NodeAgent { cursor: Some(cursor.clone()), ..agent(&cluster, &node, &producer) };
    let records = || (0..3).map(|p| reader.fetch_watermarks(FAULTS, p, Duration::from_secs(5)).unwrap().1).sum::<i64>();
    let cancel = CancellationToken::new();
    let task = tokio::spawn(with_cursor().run(cancel.clone()));
    common::wait_for("the cursor written", Duration::from_secs(30), || async { cursor.exists().then_some(()) }).await;
    cancel.cancel();
    task.await.unwrap();
    let before = records();
    let cancel = CancellationToken::new();
    let task = tokio::spawn(with_cursor().run(cancel.clone()));
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(records(), before, "nothing published again after a restart with a cursor");
    cluster.inject(&node, Fault::MemoryUncorrectable).unwrap();
    common::wait_for("the new fault published", Duration::from_secs(30), || async {
        (records() == before + 1).then_some(())
    })
    .await;
    cancel.cancel();
    task.await.unwrap();
    drop(reader);
    drop(producer);
    fleet.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn detector_reports_silent_agents() {
    let (_mock, cfg) = common::mock_kafka(&[(FAULTS, 3), (HEARTBEAT_TOPIC, 3)]);
    let fleet = common::fleet("silent", 2).await;
    let cluster = fleet.clusters()[0].clone();
    let (talker, mute) = (cluster.node_names()[0].clone(), cluster.node_names()[1].clone());
    let client = firebreak::kube_client(&cluster.kubeconfig_path()).await.unwrap();
    let cancel = CancellationToken::new();
    let detector = firebreak_detector::Config {
        agent_silent_after: Duration::from_secs(12),
        failure_domains: vec!["topology.kubernetes.io/zone".into()],
        ..common::detector_config(cluster.name(), &cfg)
    };
    let task =
        tokio::spawn(firebreak_detector::run(detector, client, firebreak_detector::Metrics::default(), cancel.clone()));
    let producer = Producer::new(&cfg).unwrap();
    let beats = tokio::spawn({
        let (producer, cluster, talker) = (producer.clone(), cluster.name().to_owned(), talker.clone());
        async move {
            for seq in 0.. {
                let hb = Heartbeat {
                    cluster: cluster.clone(),
                    node: talker.clone(),
                    agent_version: "test".into(),
                    seq,
                    sent_at: Utc::now(),
                };
                producer.publish(HEARTBEAT_TOPIC, &hb).await.unwrap();
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    });
    let reader = fault_reader(&cfg);
    let silent = next_fault(&reader, Duration::from_secs(30), |e| e.kind == FaultKind::AgentSilent).await;
    assert_eq!(silent.node, mute, "only the node whose agent never spoke");
    assert_eq!(silent.evidence["threshold_s"], "12");
    assert_eq!(silent.severity, firebreak_schema::Severity::Warning, "a silent agent alone is not a reason to reboot");
    // The talking node stops talking: it is reported too.
    beats.abort();
    let later = next_fault(&reader, Duration::from_secs(30), |e| e.kind == FaultKind::AgentSilent).await;
    assert_eq!(later.node, talker);
    cancel.cancel();
    task.await.unwrap().unwrap();
    drop(reader);
    drop(producer);
    fleet.shutdown().await;
}

/// Ready status of a node as the API serves it.
async fn ready(nodes: &kube::Api<k8s_openapi::api::core::v1::Node>, node: &str) -> Option<String> {
    let n = nodes.get(node).await.ok()?;
    n.status?.conditions?.into_iter().find(|c| c.type_ == "Ready").map(|c| c.status)
}

/// Issue 9: a node is a NotReady fault only once it stayed NotReady for the policy's minimum;
/// shorter spells are flaps, and three within the window are reported as one `NodeFlapping`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_not_ready_is_a_flap_and_flaps_are_reported_as_flapping() {
    let (_mock, cfg) = common::mock_kafka(&[(FAULTS, 3), (HEARTBEAT_TOPIC, 3)]);
    let fleet = common::fleet("flapping", 2).await;
    let cluster = fleet.clusters()[0].clone();
    let node = cluster.node_names()[0].clone();
    let client = firebreak::kube_client(&cluster.kubeconfig_path()).await.unwrap();
    let nodes: kube::Api<k8s_openapi::api::core::v1::Node> = kube::Api::all(client.clone());
    let cancel = CancellationToken::new();
    let detector = firebreak_detector::Config {
        new_node_grace: Duration::from_secs(0),
        not_ready_for: Duration::from_secs(8),
        ..common::detector_config(cluster.name(), &cfg)
    };
    let task =
        tokio::spawn(firebreak_detector::run(detector, client, firebreak_detector::Metrics::default(), cancel.clone()));
    let reader = fault_reader(&cfg);
    for _ in 0..3 {
        cluster.inject(&node, Fault::NotReady).unwrap();
        common::wait_for("NotReady", Duration::from_secs(15), || async {
            ready(&nodes, &node).await.filter(|s| s != "True")
        })
        .await;
        cluster.recover(&node).unwrap();
        common::wait_for("Ready again", Duration::from_secs(15), || async {
            ready(&nodes, &node).await.filter(|s| s == "True")
        })
        .await;
    }
    let e = next_fault(&reader, Duration::from_secs(20), |e| e.node == node).await;
    assert_eq!(e.kind, FaultKind::NodeFlapping, "the first fault of the node is its flapping: {e:?}");
    assert_eq!(e.evidence["spells"], "3");
    assert!(e.message.contains("3 NotReady spells within 10m, each shorter than 8s"), "{}", e.message);
    // A NotReady that lasts is a fault, dated from its transition.
    cluster.inject(&node, Fault::NotReady).unwrap();
    let down = next_fault(&reader, Duration::from_secs(30), |e| e.node == node).await;
    assert_eq!(down.kind, FaultKind::NodeNotReady);
    assert_eq!(down.evidence["not_ready_for_s"], "8");
    assert!(Utc::now() - down.observed_at >= chrono::TimeDelta::seconds(8), "reported after the minimum");
    cancel.cancel();
    task.await.unwrap().unwrap();
    drop(reader);
    fleet.shutdown().await;
}

/// Issue 9: the agent's sources beyond the kernel log, on a host root laid out as sysfs and
/// procfs serve it: a physical NIC with its link down and a needed mount missing are faults,
/// published once while they hold, with the same ids after a restart (consumers deduplicate).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_reports_a_nic_down_and_a_missing_mount_once() {
    let (_mock, cfg) = common::mock_kafka(&[(FAULTS, 3), (HEARTBEAT_TOPIC, 3)]);
    let fleet = common::fleet("sources", 1).await;
    let cluster = fleet.clusters()[0].clone();
    let node = cluster.node_names()[0].clone();
    let root = cluster.host_root(&node);
    for (file, text) in [
        ("sys/class/net/eth0/operstate", "down\n"),
        ("sys/class/net/eth0/device/vendor", "0x8086\n"),
        ("sys/class/net/lo/operstate", "unknown\n"),
        ("proc/mounts", "/dev/sda1 / ext4 rw,relatime 0 0\n"),
    ] {
        std::fs::create_dir_all(root.join(file).parent().unwrap()).unwrap();
        std::fs::write(root.join(file), text).unwrap();
    }
    let producer = Producer::new(&cfg).unwrap();
    let sources = firebreak_agent::sources::Sources {
        mounts: vec!["/".into(), "/var/lib/kubelet".into()],
        components: Default::default(),
        ..Default::default()
    };
    let with_sources = || NodeAgent {
        sources: Some((sources.clone(), Duration::from_millis(300))),
        ..agent(&cluster, &node, &producer)
    };
    let reader = fault_reader(&cfg);
    let run = |agent: NodeAgent| {
        let cancel = CancellationToken::new();
        (cancel.clone(), tokio::spawn(agent.run(cancel)))
    };
    let (cancel, task) = run(with_sources());
    let mine = |e: &FaultEvent| matches!(e.kind, FaultKind::NicDown | FaultKind::MountMissing);
    let a = next_fault(&reader, Duration::from_secs(20), mine).await;
    let b = next_fault(&reader, Duration::from_secs(20), mine).await;
    let mut kinds = [a.kind, b.kind];
    kinds.sort_by_key(|k| k.as_str());
    assert_eq!(kinds, [FaultKind::MountMissing, FaultKind::NicDown]);
    let nic = if a.kind == FaultKind::NicDown { a.clone() } else { b.clone() };
    assert_eq!(nic.evidence["check"], "nic/eth0");
    assert_eq!(nic.class, firebreak_schema::FaultClass::Hardware);
    // Held, not repeated: several checks later nothing more is published.
    let records = || (0..3).map(|p| reader.fetch_watermarks(FAULTS, p, Duration::from_secs(5)).unwrap().1).sum::<i64>();
    let held = records();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(records(), held, "a finding that holds is published once");
    cancel.cancel();
    task.await.unwrap();
    let (cancel, task) = run(with_sources());
    let again = next_fault(&reader, Duration::from_secs(20), |e| e.kind == FaultKind::NicDown).await;
    assert_eq!(again.id, nic.id, "the same finding after a restart has the same id");
    cancel.cancel();
    task.await.unwrap();
    drop(reader);
    fleet.shutdown().await;
}

/// Issue 9: the crash-safe spool. Faults found while the brokers are down are on disk before
/// the agent reads the log past them. A real `firebreak agent` process killed with SIGKILL
/// mid-outage, and again mid-delivery, loses none: every fault the node's kernel logged
/// arrives once it runs again, and the spool is empty once they are delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_killed_with_sigkill_loses_no_fault() {
    let (mock, cfg) = common::mock_kafka(&[(FAULTS, 3), (HEARTBEAT_TOPIC, 3)]);
    let fleet = common::fleet("spool", 1).await;
    let cluster = fleet.clusters()[0].clone();
    let node = cluster.node_names()[0].clone();
    let root = cluster.host_root(&node);
    let state = common::temp_dir("agent-state");
    let spool = state.join("spool");
    let start = || {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(state.join("agent.log")).unwrap();
        std::process::Command::new(env!("CARGO_BIN_EXE_firebreak"))
            .args(["agent", "--cluster", cluster.name(), "--node", &node, "--kafka-brokers", &cfg.brokers])
            .arg("--host-root")
            .arg(&root)
            .arg("--state-dir")
            .arg(&state)
            .args(["--check-interval", "0s", "--no-actuator", "--poll-interval", "100ms", "--heartbeat-interval", "1s"])
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap()
    };
    let spooled = || {
        std::fs::read_dir(&spool)
            .map_or(0, |d| d.flatten().filter(|e| e.path().extension().is_some_and(|x| x == "json")).count())
    };
    // Every fault the node's kernel logged: the sequence numbers of the records a rule matches.
    let logged = || {
        let rules = rules::defaults();
        std::fs::read_to_string(root.join("dev/kmsg"))
            .unwrap()
            .lines()
            .filter_map(|l| firebreak_agent::kmsg::parse(l).ok())
            .filter(|r| rules::first_match(&rules, &r.message).is_some())
            .map(|r| r.seq.to_string())
            .collect::<std::collections::BTreeSet<_>>()
    };
    let faults = [Fault::MemoryUncorrectable, Fault::ReadonlyFilesystem, Fault::KernelHung];

    let mut agent = start();
    let beats = reader(&cfg, HEARTBEAT_TOPIC);
    tokio::time::timeout(Duration::from_secs(30), async {
        while decode_message::<Heartbeat>(&beats.recv().await.unwrap()).is_err() {}
    })
    .await
    .expect("the agent is up: a heartbeat");
    drop(beats);

    // Mid-outage: the faults are spooled (the log is read on while the brokers are down), then
    // the agent is killed; more faults happen while it is dead.
    mock.broker_down(1).unwrap();
    for fault in faults.iter().cycle().take(12) {
        cluster.inject(&node, *fault).unwrap();
    }
    let want = logged().len();
    common::wait_for("the faults spooled on disk", Duration::from_secs(30), || async {
        (spooled() >= want).then_some(())
    })
    .await;
    agent.kill().unwrap();
    agent.wait().unwrap();
    assert_eq!(spooled(), want, "a killed agent leaves its undelivered faults on disk");
    cluster.inject(&node, Fault::MemoryUncorrectable).unwrap();
    mock.broker_up(1).unwrap();
    let mut agent = start();

    // Mid-delivery: a burst, and the agent killed as soon as the first of it is on the topic.
    let reader = fault_reader(&cfg);
    let mut seen = std::collections::BTreeSet::new();
    let collect = async |seen: &mut std::collections::BTreeSet<String>,
                         until: &dyn Fn(&std::collections::BTreeSet<String>) -> bool| {
        tokio::time::timeout(Duration::from_secs(60), async {
            while !until(seen) {
                if let Ok(e) = decode_message::<FaultEvent>(&reader.recv().await.unwrap())
                    && let Some(seq) = e.evidence.get("kmsg_seq")
                {
                    assert_eq!(e.node, node);
                    seen.insert(seq.clone());
                }
            }
        })
        .await
    };
    let before = logged();
    collect(&mut seen, &|s| !s.is_empty()).await.expect("faults delivered after the restart");
    for fault in faults.iter().cycle().take(30) {
        cluster.inject(&node, *fault).unwrap();
    }
    let burst = logged().difference(&before).count();
    // Killed once the whole burst is read (the cursor is at its last record): some of it may
    // be delivered, the rest is only spooled.
    let last = logged().iter().filter_map(|s| s.parse::<u64>().ok()).max().unwrap_or(0);
    let cursor =
        || std::fs::read_to_string(state.join("kmsg-cursor")).ok()?.split_whitespace().nth(1)?.parse::<u64>().ok();
    common::wait_for("the burst read", Duration::from_secs(30), || async { (cursor()? >= last).then_some(()) }).await;
    agent.kill().unwrap();
    agent.wait().unwrap();
    let mut agent = start();

    let all = logged();
    assert!(all.len() > want + burst, "{} faults logged", all.len());
    let done = collect(&mut seen, &|s| all.is_subset(s)).await;
    assert!(done.is_ok(), "missing after two kills: {:?}", all.difference(&seen).collect::<Vec<_>>());
    common::wait_for("the spool emptied by delivery", Duration::from_secs(30), || async {
        (spooled() == 0).then_some(())
    })
    .await;
    agent.kill().unwrap();
    agent.wait().unwrap();
    drop(reader);
    fleet.shutdown().await;
}

/// Issue 9: Firebreak's fault classes as node conditions, as node-problem-detector writes its
/// own: the detector sets `FirebreakHardwareProblem` when a fault arrives on the fault topic,
/// `kubectl describe node` shows it beside the kubelet's, and a healed workflow clears it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_are_node_conditions_that_kubectl_describes() {
    use firebreak_schema::{REMEDIATION_TOPIC, RemediationEvent, Severity, Source};
    let (_mock, cfg) = common::mock_kafka(&[(FAULTS, 3), (HEARTBEAT_TOPIC, 3), (REMEDIATION_TOPIC, 3)]);
    let fleet = common::fleet("conditions", 2).await;
    let cluster = fleet.clusters()[0].clone();
    let node = cluster.node_names()[0].clone();
    let client = firebreak::kube_client(&cluster.kubeconfig_path()).await.unwrap();
    let nodes: kube::Api<k8s_openapi::api::core::v1::Node> = kube::Api::all(client.clone());
    let cancel = CancellationToken::new();
    let detector = common::detector_config(cluster.name(), &cfg);
    let metrics = firebreak_detector::Metrics::default();
    let task = tokio::spawn(firebreak_detector::run(detector, client, metrics, cancel.clone()));
    let condition = |ty: &'static str| {
        let (nodes, node) = (nodes.clone(), node.clone());
        async move {
            let n = nodes.get(&node).await.ok()?;
            n.status?.conditions?.into_iter().find(|c| c.type_ == ty)
        }
    };
    let producer = Producer::new(&cfg).unwrap();
    let fault = FaultEvent {
        id: uuid::Uuid::now_v7(),
        cluster: cluster.name().into(),
        node: node.clone(),
        class: FaultKind::MemoryUncorrectable.class(),
        kind: FaultKind::MemoryUncorrectable,
        severity: Severity::Critical,
        source: Source::Agent,
        observed_at: Utc::now(),
        message: "EDAC MC0: 1 UE memory read error on CPU_SrcID#0_Ha#0_Chan#1_DIMM#0".into(),
        evidence: Default::default(),
    };
    // A record that is no fault comes first, on the node's partition: skipped, and the fault
    // after it still counts.
    let raw: rdkafka::producer::FutureProducer = cfg.client().create().unwrap();
    let key = format!("{}/{node}", cluster.name());
    let garbage = rdkafka::producer::FutureRecord::to(FAULTS).key(&key).payload("not a CloudEvent");
    raw.send(garbage, Duration::from_secs(5)).await.unwrap();
    producer.publish(FAULTS, &fault).await.unwrap();
    let set = common::wait_for("the condition set", Duration::from_secs(30), || async {
        condition("FirebreakHardwareProblem").await.filter(|c| c.status == "True")
    })
    .await;
    assert_eq!(set.reason.as_deref(), Some("MemoryUncorrectable"));
    assert!(condition("Ready").await.is_some_and(|c| c.status == "True"), "the kubelet's conditions stay");

    let described = std::process::Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(cluster.kubeconfig_path())
        .arg("--cache-dir")
        .arg(common::temp_dir("kube-cache-conditions"))
        .args(["describe", "node", &node])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&described.stdout);
    assert!(described.status.success(), "{}", String::from_utf8_lossy(&described.stderr));
    let line = text
        .lines()
        .find(|l| l.trim_start().starts_with("FirebreakHardwareProblem"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(line.contains("True") && line.contains("MemoryUncorrectable") && line.contains("EDAC MC0"), "{line}");

    // Healed: cleared, with why; the fault read again (a replay) does not set it again.
    let healed = RemediationEvent {
        id: uuid::Uuid::now_v7(),
        workflow_id: uuid::Uuid::now_v7(),
        cluster: cluster.name().into(),
        node: node.clone(),
        trigger_event_id: fault.id,
        state: "healed".into(),
        reason: "Ready after reboot, boot id changed".into(),
        at: Utc::now(),
    };
    producer.publish(REMEDIATION_TOPIC, &healed).await.unwrap();
    let cleared = common::wait_for("the condition cleared", Duration::from_secs(30), || async {
        condition("FirebreakHardwareProblem").await.filter(|c| c.status == "False")
    })
    .await;
    assert_eq!(cleared.reason.as_deref(), Some("Remediated"));
    assert!(cleared.message.unwrap_or_default().contains("Ready after reboot"));
    producer.publish(FAULTS, &fault).await.unwrap();
    // A marker fault of another class after the replay: once it is written, the replay was read.
    let marker = FaultEvent {
        id: uuid::Uuid::now_v7(),
        kind: FaultKind::KubeletDown,
        class: FaultKind::KubeletDown.class(),
        observed_at: Utc::now(),
        ..fault.clone()
    };
    producer.publish(FAULTS, &marker).await.unwrap();
    common::wait_for("the marker written", Duration::from_secs(30), || async {
        condition("FirebreakComponentProblem").await.filter(|c| c.status == "True")
    })
    .await;
    assert_eq!(condition("FirebreakHardwareProblem").await.unwrap().status, "False", "a replay is old news");
    cancel.cancel();
    task.await.unwrap().unwrap();
    drop(producer);
    fleet.shutdown().await;
}

/// Issue 9: the detector watches the kubelets' Leases in `kube-node-lease` as well as the Ready
/// condition. Here the node controller is slow (it would mark the node Unknown only after five
/// minutes): the node whose kubelet stopped renewing its Lease is NotReady all the same, once
/// the Lease has lapsed for the minimum, while Ready still says True.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_lease_lapsed_is_not_ready_before_its_ready_condition_says_so() {
    let (_mock, cfg) = common::mock_kafka(&[(FAULTS, 3), (HEARTBEAT_TOPIC, 3)]);
    let fleet = firebreak_fleet_sim::Fleet::start(firebreak_fleet_sim::FleetConfig {
        data_dir: common::temp_dir("lease"),
        clusters: 1,
        nodes_per_cluster: 2,
        timings: firebreak_fleet_sim::Timings {
            churn_per_minute: 0,
            unreachable_after: Duration::from_secs(300),
            lease_duration: Duration::from_secs(2),
            ..Default::default()
        },
        apps: Default::default(),
    })
    .await
    .unwrap();
    let cluster = fleet.clusters()[0].clone();
    let node = cluster.node_names()[0].clone();
    let client = firebreak::kube_client(&cluster.kubeconfig_path()).await.unwrap();
    let nodes: kube::Api<k8s_openapi::api::core::v1::Node> = kube::Api::all(client.clone());
    let cancel = CancellationToken::new();
    let detector = firebreak_detector::Config {
        new_node_grace: Duration::from_secs(0),
        not_ready_for: Duration::from_secs(3),
        ..common::detector_config(cluster.name(), &cfg)
    };
    let task =
        tokio::spawn(firebreak_detector::run(detector, client, firebreak_detector::Metrics::default(), cancel.clone()));
    let reader = fault_reader(&cfg);
    // Healthy nodes renew their Leases: nothing is reported.
    tokio::time::sleep(Duration::from_secs(4)).await;
    // The kubelet goes silent.
    cluster.inject(&node, Fault::NotReady).unwrap();
    let e = next_fault(&reader, Duration::from_secs(30), |e| e.kind == FaultKind::NodeNotReady).await;
    assert_eq!(e.node, node, "only the silent node: {e:?}");
    assert_eq!(e.evidence["reason"], "NodeLeaseExpired");
    assert_eq!(e.evidence["lease_duration_s"], "2");
    assert_eq!(e.evidence["ready_status"], "True");
    assert!(e.message.contains("has not renewed its node Lease"), "{}", e.message);
    assert_eq!(ready(&nodes, &node).await.as_deref(), Some("True"), "the node controller has not caught up");
    assert!(Utc::now() - e.observed_at >= chrono::TimeDelta::seconds(3), "reported after the minimum");
    cancel.cancel();
    task.await.unwrap().unwrap();
    drop(reader);
    fleet.shutdown().await;
}
