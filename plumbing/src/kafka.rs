//! Kafka glue shared by every service (feature `kafka`): how Firebreak configures `rdkafka`
//! producers, consumers and the admin client (TLS and SASL through `client_options`), how the
//! topic contract's missing topics are created, and how a Kafka record becomes a typed event.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use rdkafka::{
    ClientConfig, ClientContext, Message,
    error::KafkaResult,
    message::{BorrowedMessage, Header, Headers, OwnedHeaders},
    producer::{BaseProducer, BaseRecord, DeliveryResult, ProducerContext},
};
use tokio::sync::oneshot;

use firebreak_schema::{CloudEvent, decode, encode};

use crate::{Error, Result, retry};

/// How a record is re-published after a failure: 200 ms doubling to 10 s, with jitter.
const PUBLISH_RETRY: retry::Policy = retry::Policy::forever(Duration::from_millis(200), Duration::from_secs(10));
/// How a topic's metadata is asked for again while the topic does not exist yet.
const METADATA_RETRY: retry::Policy = retry::Policy::forever(Duration::from_millis(500), Duration::from_secs(30));

/// Where the brokers are and how to tune the clients.
#[derive(Debug, Clone, Default)]
pub struct KafkaConfig {
    /// `bootstrap.servers`.
    pub brokers: String,
    /// librdkafka properties for every client, producers, consumers and the admin client alike:
    /// TLS and SASL (`security.protocol=SASL_SSL`, `ssl.ca.location=...`, `sasl.mechanism=...`,
    /// `sasl.username=...`, `sasl.password=...`) and any other tuning.
    pub client_options: Vec<(String, String)>,
    /// Extra librdkafka properties for consumers (`session.timeout.ms=3000`, ...).
    pub consumer_options: Vec<(String, String)>,
}

impl KafkaConfig {
    /// Brokers with default tuning.
    pub fn new(brokers: impl Into<String>) -> Self {
        Self { brokers: brokers.into(), client_options: Vec::new(), consumer_options: Vec::new() }
    }

    /// A client configuration with the brokers and the options every client takes.
    pub fn client(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers);
        for (k, v) in &self.client_options {
            c.set(k, v);
        }
        c
    }

    /// Reads librdkafka properties from a file in the Java client's `key=value` form (`#` and
    /// `!` start comments; blank lines are skipped); an error names the line.
    pub fn options_file(path: &std::path::Path) -> Result<Vec<(String, String)>> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
        let mut out = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') || line.starts_with('!') {
                continue;
            }
            let (k, v) = line
                .split_once('=')
                .map(|(k, v)| (k.trim(), v.trim()))
                .filter(|(k, _)| !k.is_empty())
                .ok_or_else(|| Error::Config(format!("{}:{}: expected key=value", path.display(), i + 1)))?;
            out.push((k.to_owned(), v.to_owned()));
        }
        Ok(out)
    }

    /// Creates the topics that are missing, each with its partitions and `replication` copies
    /// (`-1`: the brokers' default), compacted where the topic contract says so. A topic that already exists, with whatever partitions, is
    /// success; returns the names created.
    pub async fn ensure_topics(&self, topics: &[(String, i32)], replication: i32) -> Result<Vec<String>> {
        use rdkafka::{
            admin::{AdminClient, AdminOptions, NewTopic, TopicReplication},
            client::DefaultClientContext,
            types::RDKafkaErrorCode,
        };
        let admin: AdminClient<DefaultClientContext> = self.client().create()?;
        // Current-state topics of the contract are compacted.
        let new: Vec<NewTopic> = topics
            .iter()
            .map(|(n, p)| {
                let topic = NewTopic::new(n, *p, TopicReplication::Fixed(replication));
                if firebreak_schema::topics::is_compacted(n) { topic.set("cleanup.policy", "compact") } else { topic }
            })
            .collect();
        let opts = AdminOptions::new()
            .request_timeout(Some(Duration::from_secs(10)))
            .operation_timeout(Some(Duration::from_secs(10)));
        let mut created = Vec::new();
        for r in admin.create_topics(&new, &opts).await? {
            match r {
                Ok(name) => created.push(name),
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((name, code)) => return Err(Error::Topic(format!("cannot create {name}: {code}"))),
            }
        }
        Ok(created)
    }

    /// Whether the brokers hold `topic`, asked without creating it: a producer's metadata
    /// request creates the topic on brokers that create topics on demand, a consumer's that
    /// says so does not.
    pub async fn topic_exists(&self, topic: &str) -> Result<bool> {
        use rdkafka::consumer::{BaseConsumer, Consumer as _};
        let client: BaseConsumer = self.client().set("allow.auto.create.topics", "false").create()?;
        let name = topic.to_owned();
        let meta = tokio::task::spawn_blocking(move || client.fetch_metadata(Some(&name), Duration::from_secs(10)))
            .await
            .map_err(|e| Error::Topic(format!("metadata of {topic}: {e}")))??;
        Ok(meta.topics().iter().any(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty()))
    }

    /// A consumer configuration for a group: offsets are stored by the application only after
    /// the record's effect is durable (`enable.auto.offset.store=false`) and committed in the
    /// background; a new group starts from the earliest record; a topic created after the
    /// subscription (a new cluster's fault topic) is found within 10 s, not librdkafka's 5 min.
    pub fn consumer(&self, group: &str) -> ClientConfig {
        self.consumer_with(group, &[])
    }

    /// [`KafkaConfig::consumer`] with a client's own defaults beside Firebreak's (the operator's
    /// options still win over both).
    pub fn consumer_with(&self, group: &str, defaults: &[(&str, &str)]) -> ClientConfig {
        let mut c = self.client();
        c.set("group.id", group)
            .set("enable.auto.commit", "true")
            .set("auto.commit.interval.ms", "1000")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "false")
            // A broker answers a fetch as soon as it has data, but one that parked the fetch
            // before the data came (librdkafka's mock broker among them) answers only when the
            // wait is over: 500 ms by default, which was most of a fault's way to its cordon.
            .set("fetch.wait.max.ms", "50")
            .set("topic.metadata.refresh.interval.ms", "10000");
        for (k, v) in defaults {
            c.set(*k, *v);
        }
        for (k, v) in self.client_options.iter().chain(&self.consumer_options) {
            c.set(k, v);
        }
        c
    }
}

/// An idempotent producer (`acks=all`) that never gives up on a record: while the brokers are
/// down records wait in librdkafka's queue and are delivered, in order, once they are back.
///
/// A `BaseProducer` with a polling thread of its own, not rdkafka's `FutureProducer`: that one's
/// thread polls for 100 ms at a time, and rdkafka 0.39 rounds the time left of each poll down to
/// whole milliseconds, so the last fraction of a millisecond of every 100 ms is spent polling
/// without blocking — 0.9 % of a core for a producer with nothing to do (71 % of an idle agent's
/// CPU, profiled). rdkafka 0.40 fixes the rounding; this one asks for a whole number of
/// milliseconds and a few microseconds more, which the blocking wait outlasts.
#[derive(Clone)]
pub struct Producer {
    inner: Arc<Polled>,
}

/// Where a record's delivery report goes: to the publisher waiting for it, or nowhere
/// ([`Producer::publish_nowait`]).
type Report = Box<Option<oneshot::Sender<KafkaResult<()>>>>;

/// Hands each delivery report to whoever waits for it.
struct Deliveries;

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = Report;

    fn delivery(&self, result: &DeliveryResult<'_>, report: Report) {
        if let Some(tx) = *report {
            // The publisher may have stopped waiting (cancelled): nothing to tell.
            let _ = tx.send(result.as_ref().map(drop).map_err(|(e, _)| e.clone()));
        }
    }
}

/// How long the polling thread blocks at a time: a whole number of milliseconds and 20 µs
/// more, so that after rdkafka's rounding down the wait ends past the deadline, not just
/// before it (see [`Producer`]). A delivery report ends the wait when it comes; this is how
/// often an idle producer's thread wakes, and how long dropping the last clone may wait.
const POLL: Duration = Duration::from_micros(100_020);

/// The librdkafka producer and the thread that serves its delivery reports, stopped and joined
/// when the last [`Producer`] clone goes — so the librdkafka producer is gone with it, not
/// left reconnecting to brokers that may be gone too.
struct Polled {
    producer: Arc<BaseProducer<Deliveries>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Polled {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::warn!("the producer's polling thread panicked");
        }
    }
}

impl Producer {
    /// Creates the producer and starts its polling thread.
    pub fn new(cfg: &KafkaConfig) -> Result<Self> {
        Self::with(cfg, &[])
    }

    /// [`Producer::new`] with a client's own defaults beside Firebreak's (the operator's
    /// options still win over both): the agent's producer lingers for nothing, for one.
    pub fn with(cfg: &KafkaConfig, defaults: &[(&str, &str)]) -> Result<Self> {
        let c = Self::config(cfg, defaults);
        let producer: Arc<BaseProducer<Deliveries>> = Arc::new(c.create_with_context(Deliveries)?);
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::Builder::new()
            .name("kafka-producer-poll".into())
            .spawn({
                let (producer, stop) = (producer.clone(), stop.clone());
                move || {
                    while !stop.load(Ordering::Relaxed) {
                        producer.poll(POLL);
                    }
                }
            })
            .map_err(|e| Error::Config(format!("cannot start the producer's polling thread: {e}")))?;
        Ok(Self { inner: Arc::new(Polled { producer, stop, thread: Some(thread) }) })
    }

    /// The producer's configuration: Firebreak's defaults (idempotent, `acks=all`, never giving
    /// up on a record, 5 ms of linger to batch what comes together), then the client's, then
    /// the operator's options.
    fn config(cfg: &KafkaConfig, defaults: &[(&str, &str)]) -> ClientConfig {
        let mut c = cfg.client();
        c.set("enable.idempotence", "true")
            .set("acks", "all")
            .set("message.timeout.ms", "0")
            .set("linger.ms", "5")
            .set("queue.buffering.max.messages", "1000000");
        for (k, v) in defaults {
            c.set(*k, *v);
        }
        for (k, v) in &cfg.client_options {
            c.set(k, v);
        }
        c
    }

    /// Queues a record and waits until the brokers have it (or the producer gives up on it).
    async fn deliver<'a, K, P>(&self, record: impl FnOnce(Report) -> BaseRecord<'a, K, P, Report>) -> Result<()>
    where
        K: rdkafka::message::ToBytes + ?Sized + 'a,
        P: rdkafka::message::ToBytes + ?Sized + 'a,
    {
        let (tx, rx) = oneshot::channel();
        self.inner.producer.send(record(Box::new(Some(tx)))).map_err(|(e, _)| Error::Kafka(e))?;
        match rx.await {
            Ok(delivered) => delivered.map_err(Error::Kafka),
            // The report is dropped undelivered only when the producer is torn down.
            Err(_) => Err(Error::Kafka(rdkafka::error::KafkaError::Canceled)),
        }
    }

    /// Publishes an event and waits until the brokers have it.
    pub async fn publish<E: CloudEvent>(&self, topic: &str, event: &E) -> Result<()> {
        let msg = encode(event)?;
        let headers = to_headers(&msg.headers);
        self.deliver(|r| BaseRecord::with_opaque_to(topic, r).key(&msg.key).payload(&msg.payload).headers(headers))
            .await
    }

    /// Publishes an event to one partition of a topic (the command channel's, where the reader
    /// reads only its own partition) and waits until the brokers have it.
    pub async fn publish_to<E: CloudEvent>(&self, topic: &str, partition: i32, event: &E) -> Result<()> {
        let msg = encode(event)?;
        let headers = to_headers(&msg.headers);
        self.deliver(|r| {
            BaseRecord::with_opaque_to(topic, r)
                .partition(partition)
                .key(&msg.key)
                .payload(&msg.payload)
                .headers(headers)
        })
        .await
    }

    /// How many partitions a topic has, from the brokers' metadata.
    pub async fn partitions(&self, topic: &str) -> Result<i32> {
        use rdkafka::producer::Producer as _;
        let inner = self.inner.producer.clone();
        let name = topic.to_owned();
        let meta =
            tokio::task::spawn_blocking(move || inner.client().fetch_metadata(Some(&name), Duration::from_secs(10)))
                .await
                .map_err(|e| Error::Topic(format!("metadata of {topic}: {e}")))??;
        let found = meta.topics().iter().find(|t| t.name() == topic).map(|t| (t.partitions().len(), t.error()));
        match found {
            Some((n, None)) if n > 0 => i32::try_from(n).map_err(|_| Error::Topic(format!("{topic}: {n} partitions"))),
            Some((_, Some(e))) => Err(Error::Topic(format!("{topic}: {e:?}"))),
            _ => Err(Error::Topic(format!("{topic} does not exist"))),
        }
    }

    /// How many partitions a topic has, asked until the brokers know the topic (it may be created
    /// after the service starts); `None` if `cancel` fired first.
    pub async fn partitions_when_known(
        &self,
        topic: &str,
        cancel: &tokio_util::sync::CancellationToken,
    ) -> Option<i32> {
        let what = format!("reading the partitions of {topic}");
        METADATA_RETRY.until_ok(&what, cancel, || self.partitions(topic)).await
    }

    /// Publishes an event, retrying failures with the shared policy (200 ms doubling to 10 s,
    /// jittered), until the brokers have it; `false` if `cancel` fired first.
    pub async fn publish_until_delivered<E: CloudEvent>(
        &self,
        topic: &str,
        event: &E,
        cancel: &tokio_util::sync::CancellationToken,
    ) -> bool {
        let what = format!("publishing {} to {topic}", event.ce_id());
        PUBLISH_RETRY.until_ok(&what, cancel, || self.publish(topic, event)).await.is_some()
    }

    /// Copies a consumed record that could not be decoded to the dead-letter topic, as it came
    /// (key, payload, headers), with the reason and its origin in headers
    /// (`firebreak_error`, `firebreak_topic`, `firebreak_partition`, `firebreak_offset`), and
    /// waits until the brokers have it.
    pub async fn publish_dead_letter(&self, msg: &BorrowedMessage<'_>, reason: &str) -> Result<()> {
        let mut headers = OwnedHeaders::new();
        if let Some(h) = msg.headers() {
            for h in h.iter() {
                headers = headers.insert(Header { key: h.key, value: h.value });
            }
        }
        let (partition, offset) = (msg.partition().to_string(), msg.offset().to_string());
        for (k, v) in [
            (firebreak_schema::DEAD_LETTER_REASON_HEADER, reason),
            ("firebreak_topic", msg.topic()),
            ("firebreak_partition", &partition),
            ("firebreak_offset", &offset),
        ] {
            headers = headers.insert(Header { key: k, value: Some(v.as_bytes()) });
        }
        self.deliver(|r| {
            let mut record: BaseRecord<'_, [u8], [u8], Report> =
                BaseRecord::with_opaque_to(firebreak_schema::DEAD_LETTER_TOPIC, r).headers(headers);
            if let Some(k) = msg.key() {
                record = record.key(k);
            }
            if let Some(p) = msg.payload() {
                record = record.payload(p);
            }
            record
        })
        .await
    }

    /// Queues an event without waiting for delivery (heartbeats); fails if the queue is full.
    pub fn publish_nowait<E: CloudEvent>(&self, topic: &str, event: &E) -> Result<()> {
        let msg = encode(event)?;
        let headers = to_headers(&msg.headers);
        let record =
            BaseRecord::with_opaque_to(topic, Box::new(None)).key(&msg.key).payload(&msg.payload).headers(headers);
        self.inner.producer.send(record).map_err(|(e, _)| Error::Kafka(e))
    }

    /// Waits up to `timeout` for queued records to be delivered.
    pub fn flush(&self, timeout: Duration) -> Result<()> {
        use rdkafka::producer::Producer as _;
        self.inner.producer.flush(timeout).map_err(Error::Kafka)
    }
}

fn to_headers(headers: &[(String, String)]) -> OwnedHeaders {
    headers.iter().fold(OwnedHeaders::new_with_capacity(headers.len()), |h, (k, v)| {
        h.insert(Header { key: k, value: Some(v.as_bytes()) })
    })
}

/// Assigns a consumer these partitions of a topic, from the offsets its group stored: a reader
/// of chosen partitions, with no consumer group membership to rebalance or time out.
pub fn assign(consumer: &rdkafka::consumer::StreamConsumer, topic: &str, partitions: &[i32]) -> Result<()> {
    use rdkafka::consumer::Consumer as _;
    let mut list = rdkafka::TopicPartitionList::new();
    for p in partitions {
        list.add_partition_offset(topic, *p, rdkafka::Offset::Stored)?;
    }
    consumer.assign(&list)?;
    Ok(())
}

/// The next record of a consumer. A receive error (brokers down, a rebalance) is logged and
/// receiving goes on after 200 ms: a consumer never gives up on its topics. Cancel-safe, for
/// `select!` beside a cancellation.
pub async fn next_message(consumer: &rdkafka::consumer::StreamConsumer) -> BorrowedMessage<'_> {
    loop {
        match consumer.recv().await {
            Ok(m) => return m,
            Err(error) => {
                tracing::warn!(%error, "kafka receive failed");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// `first` and what has arrived after it, up to `max` records in all; waits for nothing more.
/// A batch of records is written in one transaction and its offsets stored after it.
pub async fn arrived<'a>(
    consumer: &'a rdkafka::consumer::StreamConsumer,
    first: BorrowedMessage<'a>,
    max: usize,
) -> Vec<BorrowedMessage<'a>> {
    let mut batch = vec![first];
    while batch.len() < max {
        // `timeout` polls the receive once before it looks at the (elapsed) deadline.
        match tokio::time::timeout(Duration::ZERO, consumer.recv()).await {
            Ok(Ok(m)) => batch.push(m),
            _ => break,
        }
    }
    batch
}

/// Decodes a consumed record into an event.
pub fn decode_message<E: CloudEvent>(msg: &BorrowedMessage<'_>) -> firebreak_schema::Result<E> {
    let headers: Vec<(&str, Option<&[u8]>)> =
        msg.headers().map(|h| h.iter().map(|h| (h.key, h.value)).collect()).unwrap_or_default();
    decode(headers, msg.payload())
}

/// The labels of a consumer's lag: its group, and the topic and partition.
#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct LagLabels {
    /// The consumer group.
    pub group: String,
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: i32,
}

/// Records not yet read by a consumer, per assigned partition.
pub type Lag = prometheus_client::metrics::family::Family<LagLabels, prometheus_client::metrics::gauge::Gauge>;

/// How often every service measures its consumers' lag.
pub const LAG_EVERY: Duration = Duration::from_secs(5);

/// [`report_lag`] into the gauge family alone, every [`LAG_EVERY`], on a task of its own (which
/// ends when the consumer is dropped, or at `cancel`).
pub fn spawn_lag_metric(
    consumer: &std::sync::Arc<rdkafka::consumer::StreamConsumer>,
    group: String,
    lag: Lag,
    cancel: tokio_util::sync::CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let (latest, _) = tokio::sync::watch::channel(Vec::new());
    tokio::spawn(report_lag(std::sync::Arc::downgrade(consumer), group, lag, latest, LAG_EVERY, cancel))
}

/// Measures a consumer's lag every `every` until `cancel`: for each partition assigned to it,
/// the partition's high watermark minus the consumer's position (from the low watermark when it
/// has read nothing there yet), into the gauge family and into `latest` (for an API to show).
/// A partition no longer assigned leaves the family. It holds the consumer only while it
/// measures: once its owner drops it (a task aborted, a leader's term over), this ends too, and
/// never keeps a client of the broker alive.
pub async fn report_lag(
    consumer: std::sync::Weak<rdkafka::consumer::StreamConsumer>,
    group: String,
    lag: Lag,
    latest: tokio::sync::watch::Sender<Vec<(LagLabels, i64)>>,
    every: Duration,
    cancel: tokio_util::sync::CancellationToken,
) {
    use rdkafka::{Offset, consumer::Consumer};
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let Some(c) = consumer.upgrade() else { return };
        let g = group.clone();
        // Watermarks are a broker round trip each: off the async threads.
        let measured = tokio::task::spawn_blocking(move || -> std::result::Result<Vec<(LagLabels, i64)>, String> {
            let positions = c.position().map_err(|e| e.to_string())?;
            let mut out = Vec::new();
            for p in positions.elements() {
                let (low, high) =
                    c.fetch_watermarks(p.topic(), p.partition(), Duration::from_secs(5)).map_err(|e| e.to_string())?;
                let at = match p.offset() {
                    Offset::Offset(o) => o,
                    _ => low,
                };
                out.push((
                    LagLabels { group: g.clone(), topic: p.topic().to_owned(), partition: p.partition() },
                    (high - at).max(0),
                ));
            }
            Ok(out)
        })
        .await;
        match measured {
            Ok(Ok(now)) => {
                for (labels, n) in &now {
                    lag.get_or_create(labels).set(*n);
                }
                // Partitions measured last time and no longer assigned leave the family.
                for (gone, _) in latest.send_replace(now.clone()) {
                    if !now.iter().any(|(l, _)| *l == gone) {
                        lag.remove(&gone);
                    }
                }
            }
            Ok(Err(error)) => tracing::debug!(%error, %group, "consumer lag not measured"),
            Err(error) => tracing::warn!(%error, %group, "consumer lag measurement failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use rdkafka::{
        consumer::{Consumer, StreamConsumer},
        mocking::MockCluster,
    };

    use super::*;

    fn beat(node: &str, seq: u64) -> firebreak_schema::Heartbeat {
        firebreak_schema::Heartbeat {
            cluster: "c1".into(),
            node: node.into(),
            agent_version: "test".into(),
            seq,
            sent_at: chrono::Utc::now(),
        }
    }

    #[test]
    fn a_producers_defaults_give_way_to_the_clients_and_those_to_the_operators() {
        let mut cfg = KafkaConfig::new("b:9092");
        let linger = |cfg: &KafkaConfig, defaults: &[(&str, &str)]| {
            Producer::config(cfg, defaults).get("linger.ms").map(str::to_owned)
        };
        assert_eq!(linger(&cfg, &[]).as_deref(), Some("5"));
        assert_eq!(linger(&cfg, &[("linger.ms", "0")]).as_deref(), Some("0"));
        cfg.client_options.push(("linger.ms".into(), "20".into()));
        assert_eq!(linger(&cfg, &[("linger.ms", "0")]).as_deref(), Some("20"), "the operator's option wins");
        assert_eq!(Producer::config(&cfg, &[("linger.ms", "0")]).get("acks"), Some("all"));
    }

    #[tokio::test]
    async fn each_publisher_hears_its_own_delivery_and_every_record_arrives() {
        let mock = MockCluster::new(1).unwrap();
        mock.create_topic("beats", 2, 1).unwrap();
        let cfg = KafkaConfig::new(mock.bootstrap_servers());
        let producer = Producer::new(&cfg).unwrap();
        // One publisher's record cannot be delivered (the topic has no partition 7), the other's
        // can, at the same time: each hears its own report.
        let (b1, b2) = (beat("n1", 1), beat("n2", 2));
        let (lost, kept) = tokio::join!(producer.publish_to("beats", 7, &b1), producer.publish("beats", &b2));
        let lost = lost.unwrap_err().to_string();
        assert!(lost.contains("Unknown partition") || lost.contains("UnknownPartition"), "{lost}");
        kept.unwrap();
        producer.publish_nowait("beats", &beat("n3", 3)).unwrap();
        producer.flush(Duration::from_secs(10)).unwrap();
        // A clone outlives the original; the polling thread serves it.
        let clone = producer.clone();
        drop(producer);
        clone.publish_to("beats", 1, &beat("n4", 4)).await.unwrap();

        let consumer: StreamConsumer = cfg.consumer("reader").create().unwrap();
        consumer.subscribe(&["beats"]).unwrap();
        let mut got = Vec::new();
        while got.len() < 3 {
            let msg = tokio::time::timeout(Duration::from_secs(20), consumer.recv()).await.unwrap().unwrap();
            let hb: firebreak_schema::Heartbeat = decode_message(&msg).unwrap();
            assert_eq!(msg.key(), Some(format!("c1/{}", hb.node).as_bytes()));
            got.push(hb.seq);
        }
        got.sort_unstable();
        assert_eq!(got, [2, 3, 4]);
    }
}
