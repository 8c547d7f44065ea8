//! `firebreak bench ingest`: the event center's ingest rate against the raw consume rate of the
//! same topic, in the same run.
//!
//! A Kafka mock cluster (librdkafka's, in this process) holds `--events` faults of
//! `--clusters` clusters on their fault topics. The baseline is a bare rdkafka consumer of a
//! fresh group reading them all (no decoding, no writes). Then the event center — the product's
//! own consumer, store and HTTP server, as `firebreak event-center` runs them — reads the same
//! records into a fresh database, SQLite and (when reachable) PostgreSQL; its rate is measured
//! by its own `records_stored` counter on `/metrics`. Both clocks run from the first record
//! read (or stored) to the last, so joining the consumer group (about 3 s on the mock broker)
//! is left out of both. The figure that matters is the ratio: what decoding, deduplicating and
//! storing every record durably, offset after write, costs over reading it.
//!
//! The mock broker keeps about 5 MiB per partition and drops older records beyond that, so the
//! records are spread over enough clusters' topics (3 partitions each) to stay under it.
//!
//! `--kafka-brokers` runs it against a broker of its own process instead (Tansu, a Kafka
//! cluster): both readers then fetch over TCP from another process, as a deployed event center
//! does. The broker must hold no fault topics: the event center reads every one.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use clap::Args;
use firebreak_plumbing::kafka::{KafkaConfig, Producer};
use firebreak_schema::{FaultEvent, FaultKind, Severity, Source, fault_topic};
use rdkafka::consumer::{Consumer, StreamConsumer};
use tokio_util::sync::CancellationToken;

use crate::{Error, Result};

/// `firebreak bench ingest` flags.
#[derive(Debug, Clone, Args)]
pub struct IngestBench {
    /// Faults on the topics.
    #[arg(long, default_value_t = 100_000)]
    pub events: usize,
    /// Clusters (one fault topic each, 3 partitions). The mock broker keeps about 5 MiB per
    /// partition: a run with more records per partition than that is refused.
    #[arg(long, default_value_t = 12)]
    pub clusters: usize,
    /// The databases measured.
    #[command(flatten)]
    pub db: super::Databases,
    /// The broker.
    #[command(flatten)]
    pub broker: super::Broker,
    /// Longest to wait for one reader to read everything.
    #[arg(long, default_value = "10m", value_parser = crate::cli::positive_duration)]
    pub max_wait: Duration,
}

fn failed(e: impl std::fmt::Display) -> Error {
    Error::Bench(e.to_string())
}

/// A fault as an agent publishes one: a kernel log record's.
fn fault(i: usize, clusters: usize) -> FaultEvent {
    let cluster = format!("bench{}", i % clusters);
    let node = format!("{cluster}-node-{:04}", (i / clusters) % 1000);
    let kind = [FaultKind::MemoryUncorrectable, FaultKind::KernelHung, FaultKind::ReadonlyFilesystem][i % 3];
    FaultEvent {
        id: uuid::Uuid::now_v7(),
        cluster,
        node,
        class: kind.class(),
        kind,
        severity: Severity::Critical,
        source: Source::Agent,
        observed_at: chrono::Utc::now(),
        message: format!("EDAC MC0: 1 UE memory read error on CPU_SrcID#0_Ha#0_Chan#1_DIMM#0 (record {i})"),
        evidence: BTreeMap::from([
            ("rule".into(), "edac-uncorrectable".into()),
            ("kmsg_seq".into(), i.to_string()),
            ("boot_id".into(), "5f1c0c2e-4bde-4a8e-9d0e-2f6f4d3b1a77".into()),
        ]),
    }
}

/// Reads every record of the topics with a bare consumer; how long from its first record to
/// its last.
async fn raw(kafka: &KafkaConfig, topics: &[String], want: usize, max_wait: Duration) -> Result<Duration> {
    let consumer: StreamConsumer =
        kafka.consumer(&format!("bench-raw-{}", uuid::Uuid::now_v7())).create().map_err(failed)?;
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    consumer.subscribe(&names).map_err(failed)?;
    let mut seen = 0;
    let mut first = None;
    tokio::time::timeout(max_wait, async {
        while seen < want {
            if consumer.recv().await.is_ok() {
                first.get_or_insert_with(Instant::now);
                seen += 1;
            }
        }
    })
    .await
    .map_err(|_| failed(format!("the raw consumer read {seen} of {want} records in {max_wait:?}")))?;
    Ok(first.map_or(Duration::ZERO, |t| t.elapsed()))
}

/// `records_stored_total` from an event center's `/metrics`.
async fn stored(http: &reqwest::Client, base: &str) -> Option<u64> {
    let text = http.get(format!("{base}/metrics")).send().await.ok()?.text().await.ok()?;
    Some(super::metric_sum(&text, "firebreak_event_center_records_stored_total", "") as u64)
}

/// Runs an event center on `db` until it has stored `want` records; how long from its first
/// record stored to its last.
async fn event_center(kafka: &KafkaConfig, db: &str, want: usize, max_wait: Duration) -> Result<Duration> {
    let listener = crate::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr().map_err(|source| Error::Io { what: "bench address".into(), source })?;
    let base = format!("http://{addr}");
    let cancel = CancellationToken::new();
    let cfg = firebreak_event_center::Config {
        kafka: kafka.clone(),
        database_url: db.into(),
        group_id: format!("bench-event-center-{}", uuid::Uuid::now_v7()),
        tokens: None,
        upkeep: Default::default(),
        webhooks: Vec::new(),
    };
    let server = tokio::spawn(firebreak_event_center::run(cfg, listener, cancel.clone()));
    let http = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().map_err(failed)?;
    let mut last = 0;
    let mut first: Option<Instant> = None;
    let done = tokio::time::timeout(max_wait, async {
        loop {
            if server.is_finished() {
                return false;
            }
            if let Some(n) = stored(&http, &base).await {
                last = n;
                if n > 0 {
                    first.get_or_insert_with(Instant::now);
                }
                if n as usize >= want {
                    return true;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let took = first.map_or(Duration::ZERO, |t| t.elapsed());
    cancel.cancel();
    let ended = server.await;
    match done {
        Ok(true) => Ok(took),
        Ok(false) => Err(failed(format!("the event center stopped after storing {last} records: {ended:?}"))),
        Err(_) => Err(failed(format!("the event center stored {last} of {want} records in {max_wait:?}"))),
    }
}

/// Runs the benchmark and prints its table.
pub async fn ingest(args: IngestBench) -> Result<Vec<super::Headline>> {
    if args.events == 0 || args.clusters == 0 {
        return Err(Error::Usage("--events and --clusters must be more than 0".into()));
    }
    let clusters: Vec<String> = (0..args.clusters).map(|c| format!("bench{c}")).collect();
    let wanted = firebreak_schema::topics::for_clusters(clusters.iter().map(String::as_str));
    let (mock, kafka) = match args.broker.checked()? {
        None => {
            let mock = rdkafka::mocking::MockCluster::new(1).map_err(failed)?;
            for (topic, partitions) in &wanted {
                mock.create_topic(topic, *partitions, 1).map_err(failed)?;
            }
            let kafka = KafkaConfig::new(mock.bootstrap_servers());
            (Some(mock), kafka)
        }
        Some(kafka) => {
            kafka.ensure_topics(&wanted, 1).await?;
            (None, kafka)
        }
    };
    let broker = args.broker.describe();
    let topics: Vec<String> = clusters.iter().map(|c| fault_topic(c)).collect();
    let record = firebreak_schema::encode(&fault(0, args.clusters)).map_err(failed)?;
    let per_partition = (args.events / (args.clusters * 3) + 1) * (record.payload.len() + 200);
    if mock.is_some() && per_partition > 4 << 20 {
        return Err(Error::Usage(format!(
            "{} records on {} partitions is about {} MiB per partition, more than the mock broker keeps (5 MiB): \
             raise --clusters",
            args.events,
            args.clusters * 3,
            per_partition >> 20
        )));
    }

    let producer = Producer::new(&kafka)?;
    let started = Instant::now();
    for i in 0..args.events {
        let e = fault(i, args.clusters);
        let topic = fault_topic(&e.cluster);
        // A full local queue: wait for deliveries to make room.
        while producer.publish_nowait(&topic, &e).is_err() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    producer.flush(Duration::from_secs(120))?;
    let produced = started.elapsed();

    let scratch = super::Scratch::new()?;
    let dbs = args.db.urls(&scratch, "events.db").await;
    println!(
        "firebreak bench ingest: {} faults on {} fault topics (3 partitions each), {broker}, this machine ({} \
         CPUs); produced in {:.2} s ({:.0}/s); rates from the first record read or stored to the last",
        args.events,
        args.clusters,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        produced.as_secs_f64(),
        args.events as f64 / produced.as_secs_f64().max(1e-9)
    );
    let rate = |d: Duration| args.events as f64 / d.as_secs_f64().max(1e-9);
    let baseline = raw(&kafka, &topics, args.events, args.max_wait).await?;
    println!("{:<34} {:>10} {:>12} {:>8}", "reader", "seconds", "records/s", "ratio");
    println!(
        "{:<34} {:>10.2} {:>12.0} {:>8}",
        "raw rdkafka consumer (baseline)",
        baseline.as_secs_f64(),
        rate(baseline),
        "1.00"
    );
    let mut rows = Vec::new();
    for (name, url) in dbs {
        let took = event_center(&kafka, &url, args.events, args.max_wait).await?;
        let ratio = rate(took) / rate(baseline);
        rows.push(super::Headline::new(
            "ingest",
            format!("event center / raw consumer, {name}"),
            format!("{ratio:.3}"),
            "≥ 0.5",
            ratio >= 0.5,
        ));
        println!(
            "{:<34} {:>10.2} {:>12.0} {:>8.3}",
            format!("event center, {name}"),
            took.as_secs_f64(),
            rate(took),
            ratio
        );
    }
    println!("goal: event center / raw ≥ 0.5");
    Ok(rows)
}
