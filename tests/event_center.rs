//! (d) The event center: malformed records are counted, kept and skipped; valid ones are stored
//! once; offsets survive a restart; the API validates its input. On SQLite and PostgreSQL.

mod common;

use std::{collections::BTreeMap, time::Duration};

use chrono::{DateTime, Utc};
use common::{get_json, temp_dir, wait_for};
use firebreak_plumbing::kafka::{KafkaConfig, Producer};
use firebreak_schema::{FaultEvent, FaultKind, REMEDIATION_TOPIC, Severity, Source, deterministic_id};
use rdkafka::{
    ClientConfig,
    message::{Header, OwnedHeaders},
    producer::{FutureProducer, FutureRecord},
};
use tokio_util::sync::CancellationToken;

/// Cluster c1's fault topic (`firebreak_schema::fault_topic("c1")`).
const FAULTS: &str = "firebreak.faults.v1.c1";

/// An hour ago, fixed for the test run (a fault is the same event each time it is made).
static BASE: std::sync::LazyLock<i64> = std::sync::LazyLock::new(|| chrono::Utc::now().timestamp() - 3600);

fn fault(node: &str, kind: FaultKind, secs: i64) -> FaultEvent {
    let at = DateTime::from_timestamp(*BASE + secs, 0).unwrap();
    FaultEvent {
        id: deterministic_id(at, &["c1", node, kind.as_str()]),
        cluster: "c1".into(),
        node: node.into(),
        class: kind.class(),
        kind,
        severity: Severity::Critical,
        source: Source::Agent,
        observed_at: at,
        message: format!("{kind} on {node}"),
        evidence: BTreeMap::from([("rule".into(), "test".into())]),
    }
}

struct Running {
    url: String,
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

async fn start(kafka: &KafkaConfig, db: &str) -> Running {
    start_with(kafka, db, "ec-test", None, Default::default()).await
}

async fn start_with(
    kafka: &KafkaConfig,
    db: &str,
    group: &str,
    tokens: Option<firebreak_plumbing::auth::Tokens>,
    upkeep: firebreak_event_center::Upkeep,
) -> Running {
    start_with_webhooks(kafka, db, group, tokens, upkeep, Vec::new()).await
}

async fn start_with_webhooks(
    kafka: &KafkaConfig,
    db: &str,
    group: &str,
    tokens: Option<firebreak_plumbing::auth::Tokens>,
    upkeep: firebreak_event_center::Upkeep,
    webhooks: Vec<firebreak_event_center::subscriptions::Webhook>,
) -> Running {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let cancel = CancellationToken::new();
    let cfg = firebreak_event_center::Config {
        kafka: kafka.clone(),
        database_url: db.into(),
        group_id: group.into(),
        tokens,
        upkeep,
        webhooks,
    };
    let c = cancel.clone();
    let task = tokio::spawn(async move { firebreak_event_center::run(cfg, listener, c).await.unwrap() });
    let ready = format!("{url}/readyz");
    wait_for("event center ready", Duration::from_secs(30), || async {
        reqwest::get(&ready).await.ok().filter(|r| r.status().is_success())
    })
    .await;
    Running { url, cancel, task }
}

async fn events(url: &str, query: &str) -> Vec<serde_json::Value> {
    get_json(&format!("{url}/api/v1/events?{query}")).await.and_then(|v| v.as_array().cloned()).unwrap_or_default()
}

async fn malformed_records_are_kept_and_skipped(db: String) {
    let (_mock, kafka) = common::mock_kafka(&[(FAULTS, 3), (REMEDIATION_TOPIC, 1)]);
    let ec = start(&kafka, &db).await;
    // Without tokens the event center is read-only: a write action is refused, with why.
    let write = reqwest::Client::new()
        .post(format!("{}/api/v1/escalations/clear", ec.url))
        .bearer_auth("anything")
        .json(&serde_json::json!({"cluster": "c1", "node": "n1", "reason": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(write.status(), 403);
    assert!(write.text().await.unwrap().contains("write actions are off"));

    let raw: FutureProducer = ClientConfig::new().set("bootstrap.servers", &kafka.brokers).create().unwrap();
    let send = |payload: &'static [u8], headers: OwnedHeaders| {
        let raw = raw.clone();
        async move {
            let rec = FutureRecord::to(FAULTS).key("c1/n1").payload(payload).headers(headers);
            raw.send(rec, Duration::from_secs(5)).await.unwrap();
        }
    };
    let ce = |h: OwnedHeaders| {
        h.insert(Header { key: "ce_specversion", value: Some("1.0") })
            .insert(Header { key: "ce_type", value: Some(<FaultEvent as firebreak_schema::CloudEvent>::TYPE) })
    };
    send(b"garbage", OwnedHeaders::new()).await;
    send(b"{not json", ce(OwnedHeaders::new())).await;
    let producer = Producer::new(&kafka).unwrap();
    let first = fault("n1", FaultKind::MemoryUncorrectable, 0);
    producer.publish(FAULTS, &first).await.unwrap();
    producer.publish(FAULTS, &first).await.unwrap();
    // A NUL in a string: PostgreSQL refuses it in text, so it is refused as invalid before it
    // reaches a batch (stored, that batch would fail for ever and hold up what comes after).
    let mut nul = fault("n9", FaultKind::KernelHung, 5);
    nul.message = "hung task\u{0}".into();
    producer.publish(FAULTS, &nul).await.unwrap();
    let second = fault("n2", FaultKind::KernelHung, 10);
    producer.publish(FAULTS, &second).await.unwrap();

    wait_for("both valid events stored", Duration::from_secs(15), || async {
        (events(&ec.url, "").await.len() == 2).then_some(())
    })
    .await;
    let want = [
        "firebreak_event_center_records_rejected_total{reason=\"missing_header\"} 1",
        "firebreak_event_center_records_rejected_total{reason=\"json\"} 1",
        "firebreak_event_center_records_rejected_total{reason=\"invalid\"} 1",
        "firebreak_event_center_records_duplicate_total 1",
        "firebreak_event_center_records_stored_total 2",
        "firebreak_event_center_records_consumed_total 6",
        // Everything read: no lag on the fault topic (measured every 5 s).
        "firebreak_event_center_consumer_lag{group=\"ec-test\",topic=\"firebreak.faults.v1.c1\",partition=\"0\"} 0",
    ];
    let metrics_url = format!("{}/metrics", ec.url);
    let mut last = String::new();
    let counted = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            last = reqwest::get(&metrics_url).await.unwrap().text().await.unwrap();
            if want.iter().all(|l| last.contains(l)) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(counted.is_ok(), "expected {want:?} in\n{last}");
    let lag = get_json(&format!("{}/api/v1/lag", ec.url)).await.unwrap();
    assert_eq!(lag["total"], 0, "{lag}");
    assert_eq!(lag["partitions"], serde_json::json!([]), "{lag}");

    // Filters, newest first, and input validation.
    let all = events(&ec.url, "").await;
    assert_eq!(all.len(), 2, "the duplicate was stored once");
    let nodes: Vec<&str> = all.iter().map(|e| e["node"].as_str().unwrap()).collect();
    assert_eq!(nodes, ["n2", "n1"], "newest first");
    assert_eq!(events(&ec.url, "node=n1").await[0]["id"], first.id.to_string());
    assert_eq!(events(&ec.url, "class=hardware").await.len(), 1);
    assert_eq!(events(&ec.url, "cluster=other").await.len(), 0);
    assert_eq!(events(&ec.url, "limit=1").await.len(), 1);
    assert_eq!(events(&ec.url, "cluster=c1&node=n2&class=system").await.len(), 1, "filters combine");
    assert_eq!(events(&ec.url, "cluster=c1&node=n2&class=hardware").await.len(), 0);
    assert_eq!(
        events(&ec.url, "cluster=&node=n1&class=").await,
        events(&ec.url, "node=n1").await,
        "an empty filter (a form's empty field) is no filter"
    );
    for (list, bad) in [
        ("events", "class=bogus"),
        ("events", "clustr=c1"),
        ("remediations", "nod=n1"),
        ("events", "limit=0"),
        ("events", "limit=abc"),
        ("remediations", "limit=-5"),
        ("remediations", "limit=5000"),
        ("remediations", "limit=abc"),
    ] {
        let r = reqwest::get(format!("{}/api/v1/{list}?{bad}", ec.url)).await.unwrap();
        assert_eq!(r.status(), 400, "{list}?{bad}: one rule for every list");
        let body: serde_json::Value = r.json().await.unwrap();
        assert!(!body["error"].as_str().unwrap().is_empty(), "{bad}: a clear error");
    }

    // A clean stop commits what was stored: the group's committed offsets reach the end of
    // every partition.
    ec.cancel.cancel();
    ec.task.await.unwrap();
    assert_eq!(committed_lag(&kafka, "ec-test"), 0, "every consumed record's offset is committed");

    // Restart: nothing is consumed again; what arrived meanwhile is stored.
    let third = fault("n3", FaultKind::ReadonlyFilesystem, 20);
    producer.publish(FAULTS, &third).await.unwrap();
    let ec = start(&kafka, &db).await;
    wait_for("the event published while down", Duration::from_secs(15), || async {
        (events(&ec.url, "node=n3").await.len() == 1).then_some(())
    })
    .await;
    assert_eq!(events(&ec.url, "").await.len(), 3);
    let metrics = reqwest::get(format!("{}/metrics", ec.url)).await.unwrap().text().await.unwrap();
    let before_future = metrics.clone();
    assert!(
        before_future.contains("firebreak_event_center_records_consumed_total 1\n"),
        "the restarted consumer read only the new record:\n{before_future}"
    );

    // A node whose clock says 2036: kept, flagged with its skew, and ordered by when it arrived
    // — not at the top of the list for ten years.
    let mut future = fault("n4", FaultKind::KernelHung, 0);
    future.observed_at = DateTime::from_timestamp(2_100_000_000, 0).unwrap();
    future.id = deterministic_id(future.observed_at, &["c1", "n4"]);
    producer.publish(FAULTS, &future).await.unwrap();
    wait_for("the event from the future", Duration::from_secs(15), || async {
        (events(&ec.url, "node=n4").await.len() == 1).then_some(())
    })
    .await;
    let all = events(&ec.url, "").await;
    assert_eq!(all[0]["node"], "n4", "as new as its arrival");
    let skew = all[0]["clock_skew_s"].as_i64().unwrap();
    assert!(skew > 9 * 365 * 86_400, "{skew}");
    assert_eq!(all[0]["observed_at"], "2036-07-18T13:20:00Z", "its own time is kept");
    assert!(all.iter().skip(1).all(|e| e.get("clock_skew_s").is_none()), "{all:?}");
    // An event observed after it arrived goes above it: it does not stay on top for ten years.
    let mut later = fault("n5", FaultKind::KernelHung, 0);
    later.observed_at = chrono::Utc::now();
    later.id = deterministic_id(later.observed_at, &["c1", "n5"]);
    producer.publish(FAULTS, &later).await.unwrap();
    wait_for("a later event", Duration::from_secs(15), || async {
        (events(&ec.url, "node=n5").await.len() == 1).then_some(())
    })
    .await;
    let order: Vec<String> = events(&ec.url, "").await.iter().map(|e| e["node"].as_str().unwrap().to_owned()).collect();
    assert_eq!(order[..2], ["n5", "n4"], "{order:?}");
    ec.cancel.cancel();
    ec.task.await.unwrap();
}

/// Records of the fault topic not yet committed by `group`: the sum, over partitions, of the
/// high watermark minus the committed offset (nothing committed counts as 0).
fn committed_lag(kafka: &KafkaConfig, group: &str) -> i64 {
    use rdkafka::{
        Offset, TopicPartitionList,
        consumer::{BaseConsumer, Consumer},
    };
    let c: BaseConsumer = kafka.consumer(group).create().unwrap();
    let timeout = Duration::from_secs(10);
    let meta = c.fetch_metadata(Some(FAULTS), timeout).unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in meta.topics()[0].partitions() {
        tpl.add_partition(FAULTS, p.id());
    }
    let committed = c.committed_offsets(tpl, timeout).unwrap();
    committed
        .elements()
        .iter()
        .map(|e| {
            let (_, high) = c.fetch_watermarks(FAULTS, e.partition(), timeout).unwrap();
            let done = match e.offset() {
                Offset::Offset(o) => o,
                _ => 0,
            };
            high - done
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_records_sqlite() {
    let db = format!("sqlite://{}", temp_dir("ec").join("events.db").display());
    malformed_records_are_kept_and_skipped(db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_records_postgres() {
    let Some(db) = common::postgres_db().await else { return };
    malformed_records_are_kept_and_skipped(db).await;
}

/// Faults are written in batches (one transaction, multi-row inserts): each is stored once,
/// whether its duplicate is in the same batch or was stored by an earlier one, and more rows
/// than one statement takes are all stored.
async fn batches_store_each_fault_once(db: String) {
    let store = firebreak_event_center::Store::open(&db).await.unwrap();
    let (a, b, c) = (
        fault("n1", FaultKind::KernelHung, 1),
        fault("n2", FaultKind::KernelHung, 2),
        fault("n3", FaultKind::KernelHung, 3),
    );
    let stored = |r: &[Option<firebreak_schema::EventRecord>]| r.iter().map(Option::is_some).collect::<Vec<_>>();
    let first = store.insert_faults(&[a.clone(), b.clone(), a.clone()]).await.unwrap().0;
    assert_eq!(stored(&first), [true, true, false], "a duplicate in the same batch is stored once");
    assert_eq!(first[0].as_ref().unwrap().event, a);
    let second = store.insert_faults(&[b.clone(), c.clone()]).await.unwrap().0;
    assert_eq!(stored(&second), [false, true], "stored by an earlier batch");
    let many: Vec<FaultEvent> = (10..460).map(|i| fault(&format!("m{i}"), FaultKind::MemoryUncorrectable, i)).collect();
    assert!(store.insert_faults(&many).await.unwrap().0.iter().all(Option::is_some));
    let filter = firebreak_event_center::EventFilter { limit: Some(1000), ..Default::default() };
    assert_eq!(store.list_faults(&filter).await.unwrap().len(), 453);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_sqlite() {
    batches_store_each_fault_once(format!("sqlite://{}", temp_dir("ec-batch").join("events.db").display())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_postgres() {
    let Some(db) = common::postgres_db().await else { return };
    batches_store_each_fault_once(db).await;
}

/// The board: most urgent first, then the newest opened; an incident that recurs keeps its place
/// (its count and last seen grow), and the cursor walks the same order a page at a time. The
/// outbox: every change is queued for the incidents topic until published at its version; a
/// publication of an older version leaves the newer change queued.
async fn the_board_keeps_its_order_and_the_outbox_every_change(db: String) {
    let store = firebreak_event_center::Store::open_with(&db, no_quiet_resolution().rules).await.unwrap();
    let hung = |node, secs| fault(node, FaultKind::KernelHung, secs);
    store.insert_faults(&[hung("n1", 0), hung("n2", 10), hung("n3", 20)]).await.unwrap();
    store.insert_faults(&[hung("n1", 30), hung("n1", 40)]).await.unwrap();
    let mut walked = Vec::new();
    let mut query = firebreak_event_center::store::IncidentQuery { limit: Some(1), ..Default::default() };
    loop {
        let page = store.list_incidents(&query).await.unwrap();
        walked.extend(page.items.iter().map(|i| (i.node.clone(), i.occurrences)));
        let Some(next) = page.next else { break };
        query.cursor = Some(next);
    }
    assert_eq!(walked, [("n3".into(), 1), ("n2".into(), 1), ("n1".into(), 3)], "newest opened first, n1 in its place");

    let queued = store.unpublished_incidents(100).await.unwrap();
    assert_eq!(queued.len(), 3, "each new incident is queued");
    let first: Vec<_> = queued.into_iter().map(|(i, _)| i).collect();
    store.incidents_published(&first.iter().map(|i| (i, Vec::new())).collect::<Vec<_>>()).await.unwrap();
    assert!(store.unpublished_incidents(100).await.unwrap().is_empty(), "published at their versions");
    store.insert_faults(&[hung("n2", 50)]).await.unwrap();
    let mut queued = store.unpublished_incidents(100).await.unwrap();
    assert_eq!(queued.iter().map(|(i, _)| i.node.as_str()).collect::<Vec<_>>(), ["n2"], "the change is queued");
    // n2 changes again after the outbox read it: publishing what it read leaves n2 queued.
    let (read, _) = queued.remove(0);
    store.insert_faults(&[hung("n2", 60)]).await.unwrap();
    store.incidents_published(&[(&read, Vec::new())]).await.unwrap();
    let (n2, before) = store.unpublished_incidents(100).await.unwrap().remove(0);
    assert_eq!((n2.occurrences, before), (3, Some(firebreak_schema::IncidentState::Open)), "queued still");
    // Its webhook calls are stored by the mark that moves: a second replica publishing the same
    // change queues nothing more.
    let call = |event: &str| firebreak_event_center::store::WebhookCall {
        url: "http://hooks.example/a".into(),
        event: event.into(),
        body: format!("{{\"event\":\"{event}\"}}"),
    };
    store.incidents_published(&[(&n2, vec![call("open")])]).await.unwrap();
    store.incidents_published(&[(&n2, vec![call("open")])]).await.unwrap();
    assert!(store.unpublished_incidents(100).await.unwrap().is_empty());
    let due = store.due_webhooks(100).await.unwrap();
    assert_eq!(due.iter().map(|p| p.call.clone()).collect::<Vec<_>>(), [call("open")], "queued once");
    // A later change's call waits for the earlier one to the same receiver: in order.
    store.insert_faults(&[hung("n2", 70)]).await.unwrap();
    let (n2, _) = store.unpublished_incidents(100).await.unwrap().remove(0);
    store.incidents_published(&[(&n2, vec![call("later")])]).await.unwrap();
    let due = store.due_webhooks(100).await.unwrap();
    assert_eq!(due.iter().map(|p| p.call.event.as_str()).collect::<Vec<_>>(), ["open"], "the oldest first, alone");
    store.webhook_failed(due[0].id, 1, Utc::now() + chrono::TimeDelta::seconds(60)).await.unwrap();
    assert!(store.due_webhooks(100).await.unwrap().is_empty(), "the first waits to be retried; the second behind it");
    store.webhook_delivered(due[0].id).await.unwrap();
    let due = store.due_webhooks(100).await.unwrap();
    assert_eq!(due.iter().map(|p| p.call.event.as_str()).collect::<Vec<_>>(), ["later"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn board_and_outbox_sqlite() {
    let db = format!("sqlite://{}", temp_dir("ec-board").join("events.db").display());
    the_board_keeps_its_order_and_the_outbox_every_change(db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn board_and_outbox_postgres() {
    let Some(db) = common::postgres_db().await else { return };
    the_board_keeps_its_order_and_the_outbox_every_change(db).await;
}

/// A WebDriver session on headless Chromium (chromedriver on a free port).
struct Browser {
    driver: std::process::Child,
    base: String,
    http: reqwest::Client,
}

impl Browser {
    async fn open(url: &str) -> Browser {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let driver = std::process::Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("chromedriver is installed (bash .ci/test installs it)");
        let http = reqwest::Client::new();
        let root = format!("http://127.0.0.1:{port}");
        let profile = temp_dir("chromium");
        let caps = serde_json::json!({"capabilities": {"alwaysMatch": {"browserName": "chrome", "goog:chromeOptions": {
            "binary": "/usr/bin/chromium",
            "args": ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                     "--disable-background-networking", "--disable-component-update", "--disable-sync",
                     format!("--user-data-dir={}", profile.display())]}}}});
        let session: serde_json::Value = wait_for("chromedriver session", Duration::from_secs(20), || async {
            http.post(format!("{root}/session")).json(&caps).send().await.ok()?.json().await.ok()
        })
        .await;
        let id = session["value"]["sessionId"].as_str().expect("a session").to_owned();
        let b = Browser { driver, base: format!("{root}/session/{id}"), http };
        let size = serde_json::json!({"width": 1280, "height": 900});
        b.http.post(format!("{}/window/rect", b.base)).json(&size).send().await.unwrap();
        b.http.post(format!("{}/url", b.base)).json(&serde_json::json!({"url": url})).send().await.unwrap();
        b
    }

    async fn script(&self, script: &str) -> serde_json::Value {
        let v: serde_json::Value = self
            .http
            .post(format!("{}/execute/sync", self.base))
            .json(&serde_json::json!({"script": script, "args": []}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v["value"].clone()
    }

    async fn text(&self, element: &str) -> String {
        let v = self.script(&format!("return document.getElementById('{element}').innerText")).await;
        v.as_str().unwrap_or_default().to_owned()
    }

    /// Saves a screenshot of the page as `target/test-artifacts/<name>.png`.
    async fn screenshot(&self, name: &str) {
        use base64::Engine as _;
        let v: serde_json::Value =
            self.http.get(format!("{}/screenshot", self.base)).send().await.unwrap().json().await.unwrap();
        let png = base64::engine::general_purpose::STANDARD.decode(v["value"].as_str().unwrap()).unwrap();
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-artifacts");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
    }

    async fn wait_text(&self, element: &str, needle: &str) {
        wait_for(&format!("`{needle}` in #{element}"), Duration::from_secs(15), || async {
            self.text(element).await.contains(needle).then_some(())
        })
        .await;
    }
}

impl Browser {
    async fn close(self) {
        let _ = self.http.delete(&self.base).send().await;
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
    }
}

/// Issue 10: the on-call page in headless Chromium at 1280 px: the incident board (most urgent
/// first, live, markup shown as text), the fleet view, the gate's banner halted with the reason
/// and the measured values, and a node's page with its timeline; no horizontal overflow.
/// Screenshots are kept in `target/test-artifacts/`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn web_page_shows_board_fleet_gate_and_node() {
    let (_mock, kafka) = incident_topics();
    let db = format!("sqlite://{}", temp_dir("ui").join("events.db").display());
    let ec = start_with(&kafka, &db, "ec-ui", None, no_quiet_resolution()).await;
    let producer = Producer::new(&kafka).unwrap();
    let mut before = fault("node-before", FaultKind::MemoryUncorrectable, 0);
    before.severity = Severity::Warning;
    producer.publish(FAULTS, &before).await.unwrap();
    incidents_until(&ec.url, "", |l| !l.is_empty()).await;

    let browser = Browser::open(&format!("{}/", ec.url)).await;
    browser.wait_text("status", "live").await;
    browser.wait_text("incidents", "node-before").await;
    assert!(browser.text("incidents").await.contains("MemoryUncorrectable"));

    // Arrives while the page is open: shown without a reload, markup shown as text.
    let mut live = fault("node-live", FaultKind::KernelHung, 30);
    live.message = "<img src=x onerror=alert(1)> hung".into();
    producer.publish(FAULTS, &live).await.unwrap();
    browser.wait_text("incidents", "node-live").await;
    assert!(browser.text("incidents").await.contains("<img src=x onerror=alert(1)> hung"));
    let workflow = uuid::Uuid::now_v7();
    producer.publish(REMEDIATION_TOPIC, &step(&live, workflow, "cordoning", 40)).await.unwrap();
    producer.publish(REMEDIATION_TOPIC, &step(&live, workflow, "escalated", 50)).await.unwrap();
    browser.wait_text("steps", "escalated").await;
    // Escalated first: it needs a human.
    wait_for("the escalated incident on top", Duration::from_secs(15), || async {
        let first = browser.script("return document.querySelector('#incidents tr').innerText").await;
        first.as_str().is_some_and(|t| t.contains("escalated") && t.contains("node-live")).then_some(())
    })
    .await;

    // The fleet view and the gate: open, then halted with the reason and values.
    browser.wait_text("banner", "Gate open").await;
    let sample = firebreak_schema::HealthSample {
        cluster: "c1".into(),
        at: Utc::now(),
        nodes: 10,
        ready: 9,
        pod_starts: firebreak_schema::PodStarts { started: 83, failed: 17, ..Default::default() },
        ..Default::default()
    };
    producer.publish(firebreak_schema::HEALTH_TOPIC, &sample).await.unwrap();
    browser.wait_text("fleet", "83.0 % of 100").await;
    let fleet = browser.text("fleet").await;
    assert!(
        fleet.contains("c1\t10\t9\t0\t1\t1\t1\t0"),
        "cluster, nodes, ready, out of service, escalated, per class: {fleet:?}"
    );
    let m = firebreak_schema::Measurement {
        rule: "pod-starts".into(),
        signal: "pod_start_success_rate".into(),
        scope: "cluster=c1".into(),
        phase: firebreak_schema::Phase::Failed,
        value: Some(83.0),
        threshold: Some(90.0),
        baseline: Some(100.0),
        message: "pod_start_success_rate in cluster=c1 is 83, baseline 100 (min 90): below the minimum 90".into(),
    };
    let halt = firebreak_schema::Halt {
        id: uuid::Uuid::now_v7(),
        scope: firebreak_schema::Scope::cluster("c1"),
        operations: vec![firebreak_schema::Operation::CanaryBatch],
        reason: "health rule pod-starts failed".into(),
        by: "firebreak-gate".into(),
        at: Utc::now(),
        resumed_at: None,
        resumed_by: None,
        source: Some("rule:pod-starts".into()),
        signals: vec![m],
    };
    producer.publish(firebreak_schema::CHANGES_TOPIC, &halt).await.unwrap();
    browser.wait_text("banner", "Gate HALTED").await;
    let banner = browser.text("banner").await;
    assert!(banner.contains("cluster=c1") && banner.contains("health rule pod-starts failed"), "{banner}");
    assert!(banner.contains("pod-starts: 83 (baseline 100) vs 90"), "{banner}");
    // Full timestamps with the date and a relative age.
    let year = Utc::now().format("%Y").to_string();
    assert!(browser.text("incidents").await.contains(&year) && browser.text("incidents").await.contains("ago"));
    let overflow = browser.script("return document.documentElement.scrollWidth - window.innerWidth").await;
    assert!(overflow.as_i64().is_some_and(|o| o <= 0), "no horizontal overflow at 1280 px: {overflow}");
    browser.screenshot("event-center-board").await;

    // The node's page: its incident and its timeline of faults and steps with their reasons.
    browser.script("location.hash = '#node/c1/node-live'; return 0").await;
    browser.wait_text("timeline", "step escalated").await;
    let timeline = browser.text("timeline").await;
    assert!(
        timeline.contains("fault KernelHung") && timeline.contains("escalated because the test says so"),
        "{timeline}"
    );
    assert!(browser.text("node-incidents").await.contains("escalated"));
    browser.screenshot("event-center-node").await;

    let lifted = firebreak_schema::Halt { resumed_at: Some(Utc::now()), resumed_by: Some("ops".into()), ..halt };
    producer.publish(firebreak_schema::CHANGES_TOPIC, &lifted).await.unwrap();
    browser.wait_text("banner", "Gate open").await;
    browser.close().await;
    ec.cancel.cancel();
    ec.task.await.unwrap();
}

/// Issue 12: query parameters from anyone. Generated query strings (known keys with values of
/// any kind, unknown keys, broken percent-encoding) against every list route: each answers
/// 200 with a JSON list or 400 with a JSON error, never a 500 or a hang.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_query_string_is_answered_200_or_400() {
    use proptest::strategy::{Strategy, ValueTree};
    let (_mock, kafka) = common::mock_kafka(&[(FAULTS, 1), (REMEDIATION_TOPIC, 1)]);
    let db = format!("sqlite://{}", temp_dir("ec-query").join("events.db").display());
    let ec = start(&kafka, &db).await;
    let pair = "(cluster|node|class|limit|kind|state|cursor|since|until|x|limit\\[\\]|)=(-?[0-9]{1,22}|[a-z0-9.-]{0,12}|%[0-9A-Fa-f]{0,2}|%00|%E2%80%AE|[^&#]{0,8})";
    let query = proptest::collection::vec(pair, 0..5).prop_map(|p| p.join("&"));
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
    for _ in 0..200 {
        let q = query.new_tree(&mut runner).unwrap().current();
        for route in ["events", "remediations", "incidents"] {
            let r = http.get(format!("{}/api/v1/{route}?{q}", ec.url)).send().await.unwrap();
            let status = r.status().as_u16();
            let body: serde_json::Value = r.json().await.unwrap_or_else(|e| panic!("{route}?{q}: not JSON: {e}"));
            match status {
                200 => assert!(body.is_array() || body["items"].is_array(), "{route}?{q}: {body}"),
                400 => assert!(body["error"].as_str().is_some_and(|e| !e.is_empty()), "{route}?{q}: {body}"),
                other => panic!("{route}?{q}: {other} {body}"),
            }
        }
    }
    ec.cancel.cancel();
    ec.task.await.unwrap();
}

/// Issue 10: the API holds to its OpenAPI document, as a tool that did not write either reads
/// them. schemathesis (pinned; `.ci/test` installs it) generates requests from the document alone:
/// valid ones, which must be accepted, invalid ones (wrong types, limits out of range, ids that
/// are not ids, arrays for objects, control characters in notes), which must be refused with a
/// 4xx, sequences that follow the document's links (list → incident → act on it), and every
/// write without its token, which must be refused. Each answer's status, type and body must be
/// the document's, and none a 5xx. On both stores: PostgreSQL refuses a NUL in text that SQLite
/// takes (a filter with one was a 500 there).
async fn the_api_holds_to_its_openapi_document(db: String) {
    use firebreak_plumbing::auth::{Tokens, entry};
    let Some(schemathesis) = common::schemathesis_tool() else { return };
    let (_mock, kafka) = incident_topics();
    let dir = temp_dir("ec-contract");
    let tokens = Tokens::parse(&entry("alice", firebreak_schema::Role::Operator, "o-secret")).unwrap();
    let ec = start_with(&kafka, &db, "ec-contract", Some(tokens), no_quiet_resolution()).await;
    // Incidents for the generated requests to find and act on.
    let producer = Producer::new(&kafka).unwrap();
    for (node, kind) in [("n1", FaultKind::ReadonlyFilesystem), ("n2", FaultKind::KernelHung)] {
        let mut f = fault(node, kind, 0);
        f.observed_at = Utc::now();
        f.id = deterministic_id(f.observed_at, &["contract", node]);
        producer.publish(FAULTS, &f).await.unwrap();
    }
    incidents_until(&ec.url, "", |l| l.len() == 2).await;
    // A silence must end in the future and within 7 days: the document cannot say "after now",
    // so a schema-valid `until` in the past is rightly refused there. And a readiness probe's
    // 503 (a consumer between assignments) is its documented answer, not a server error.
    let config = "[[operations]]\ninclude-path = \"/api/v1/incidents/{id}/silence\"\n\
                  checks.positive_data_acceptance.enabled = false\n\n\
                  [[operations]]\ninclude-path = \"/readyz\"\nchecks.not_a_server_error.enabled = false\n";
    let (passed, report) =
        common::schemathesis(&schemathesis, &dir, &ec.url, "o-secret", config, &["--exclude-path", "/api/v1/stream"])
            .await;
    assert!(passed, "schemathesis found the API and its document apart:\n{report}");
    assert!(report.contains("Operations:       19 selected"), "every route but the stream was tried:\n{report}");
    ec.cancel.cancel();
    ec.task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_contract_sqlite() {
    the_api_holds_to_its_openapi_document(format!("sqlite://{}", temp_dir("ec-contract").join("events.db").display()))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_contract_postgres() {
    let Some(db) = common::postgres_db().await else { return };
    the_api_holds_to_its_openapi_document(db).await;
}

/// Every topic the incident tests touch, on the mock broker.
fn incident_topics() -> (rdkafka::mocking::MockCluster<'static, rdkafka::producer::DefaultProducerContext>, KafkaConfig)
{
    common::mock_kafka(&[
        (FAULTS, 3),
        (REMEDIATION_TOPIC, 1),
        (firebreak_schema::HEALTH_TOPIC, 1),
        (firebreak_schema::CHANGES_TOPIC, 1),
        (firebreak_schema::INCIDENTS_TOPIC, 3),
        (firebreak_schema::OCCURRENCES_TOPIC, 3),
        (firebreak_schema::DEAD_LETTER_TOPIC, 1),
        (&firebreak_schema::control_topic("c1"), 1),
    ])
}

/// The default upkeep, but incidents never resolve by quiet during a test (its faults are an
/// hour old).
fn no_quiet_resolution() -> firebreak_event_center::Upkeep {
    let rules = firebreak_event_center::Rules { resolve_quiet_after: chrono::TimeDelta::days(1), ..Default::default() };
    firebreak_event_center::Upkeep { rules, ..Default::default() }
}

/// A record as a platform service reads it: key, headers, body.
struct Record {
    key: String,
    headers: BTreeMap<String, String>,
    body: Vec<u8>,
}

/// Reads a topic from its start until `done` says what was read is enough (or panics after 20 s).
async fn read_topic(kafka: &KafkaConfig, topic: &str, done: impl Fn(&[Record]) -> bool) -> Vec<Record> {
    use rdkafka::{
        Message,
        consumer::{BaseConsumer, Consumer},
        message::Headers,
    };
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &kafka.brokers)
        .set("group.id", format!("reader-{}", uuid::Uuid::now_v7()))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut out = Vec::new();
    while !done(&out) {
        assert!(std::time::Instant::now() < deadline, "{topic}: only {} records in 20 s", out.len());
        let polled = tokio::task::block_in_place(|| consumer.poll(Duration::from_millis(200)));
        if let Some(Ok(m)) = polled {
            let headers = m
                .headers()
                .map(|h| {
                    h.iter()
                        .map(|h| (h.key.to_owned(), String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned()))
                        .collect()
                })
                .unwrap_or_default();
            out.push(Record {
                key: String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned(),
                headers,
                body: m.payload().unwrap_or_default().to_vec(),
            });
        }
    }
    out
}

fn step(trigger: &FaultEvent, workflow: uuid::Uuid, state: &str, secs: i64) -> firebreak_schema::RemediationEvent {
    let at = DateTime::from_timestamp(*BASE + secs, 0).unwrap();
    firebreak_schema::RemediationEvent {
        id: deterministic_id(at, &[&workflow.to_string(), state]),
        workflow_id: workflow,
        cluster: trigger.cluster.clone(),
        node: trigger.node.clone(),
        trigger_event_id: trigger.id,
        state: state.into(),
        reason: format!("{state} because the test says so"),
        at,
    }
}

async fn incidents(url: &str, query: &str) -> Vec<serde_json::Value> {
    get_json(&format!("{url}/api/v1/incidents?{query}"))
        .await
        .and_then(|v| v["items"].as_array().cloned())
        .unwrap_or_default()
}

/// Waits until the incidents matching `query` satisfy `ok`, and returns them.
async fn incidents_until(url: &str, query: &str, ok: impl Fn(&[serde_json::Value]) -> bool) -> Vec<serde_json::Value> {
    wait_for(&format!("incidents?{query}"), Duration::from_secs(20), || async {
        let list = incidents(url, query).await;
        ok(&list).then_some(list)
    })
    .await
}

/// Issue 10: one incident per fingerprint, each occurrence counted once whatever is replayed,
/// moved by its workflow (remediating, escalated, resolved when the node heals), with the faults
/// the repair itself causes attached as expected; and every change on the subscription topics.
async fn incidents_dedupe_count_and_follow_their_workflow(db: String) {
    let (_mock, kafka) = incident_topics();
    let ec = start_with(&kafka, &db, "ec-incidents", None, no_quiet_resolution()).await;
    let producer = Producer::new(&kafka).unwrap();
    let hung: Vec<FaultEvent> = (0..3).map(|k| fault("n1", FaultKind::KernelHung, k * 10)).collect();
    for f in hung.iter().chain([&hung[0]]) {
        producer.publish(FAULTS, f).await.unwrap();
    }
    producer.publish(FAULTS, &fault("n2", FaultKind::MemoryUncorrectable, 5)).await.unwrap();
    let list = incidents_until(&ec.url, "node=n1", |l| l.first().is_some_and(|i| i["occurrences"] == 3)).await;
    assert_eq!(list.len(), 1, "one incident per fingerprint: {list:?}");
    let id = list[0]["id"].as_str().unwrap().to_owned();
    assert_eq!(id, hung[0].id.to_string(), "an incident's id is its first occurrence's");
    assert_eq!((list[0]["state"].as_str(), list[0]["fingerprint"].as_str()), (Some("open"), Some("c1/n1/KernelHung")));

    let workflow = uuid::Uuid::now_v7();
    producer.publish(REMEDIATION_TOPIC, &step(&hung[0], workflow, "cordoning", 40)).await.unwrap();
    incidents_until(&ec.url, "node=n1", |l| l.first().is_some_and(|i| i["state"] == "remediating")).await;
    // The reboot makes the node NotReady: expected, attached, not a new incident.
    producer.publish(FAULTS, &fault("n1", FaultKind::NodeNotReady, 50)).await.unwrap();
    let list = incidents_until(&ec.url, "node=n1", |l| l.first().is_some_and(|i| i["expected"] == 1)).await;
    assert_eq!((list.len(), &list[0]["occurrences"]), (1, &serde_json::json!(3)), "{list:?}");
    producer.publish(REMEDIATION_TOPIC, &step(&hung[0], workflow, "escalated", 60)).await.unwrap();
    let list = incidents_until(&ec.url, "state=escalated", |l| !l.is_empty()).await;
    assert!(list[0]["reason"].as_str().unwrap().contains("escalated because the test says so"), "{list:?}");
    assert_eq!(list[0]["workflow_id"], workflow.to_string());
    // Most urgent first: the escalated incident above the open critical one.
    let board = incidents(&ec.url, "state=active").await;
    assert_eq!(board.iter().map(|i| i["node"].as_str().unwrap()).collect::<Vec<_>>(), ["n1", "n2"]);

    // A restart that replays every record from the start counts nothing twice.
    ec.cancel.cancel();
    ec.task.await.unwrap();
    let ec = start_with(&kafka, &db, "ec-incidents-replay", None, no_quiet_resolution()).await;
    wait_for("the replay is read", Duration::from_secs(30), || async {
        let lag = get_json(&format!("{}/api/v1/lag", ec.url)).await?;
        (lag["total"] == 0 && lag["measured_every_s"].is_number()).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    let list = incidents(&ec.url, "node=n1").await;
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!((&list[0]["occurrences"], &list[0]["expected"]), (&serde_json::json!(3), &serde_json::json!(1)));
    assert_eq!(
        incidents(&ec.url, "cluster=&node=n1&class=&kind=&state=&since=&until=&cursor=").await,
        list,
        "an empty filter is no filter"
    );

    // The node heals: its incidents resolve; a new fault afterwards is a new incident.
    producer.publish(REMEDIATION_TOPIC, &step(&hung[0], workflow, "healed", 70)).await.unwrap();
    incidents_until(&ec.url, "node=n1&state=resolved", |l| l.len() == 1).await;
    let again = fault("n1", FaultKind::KernelHung, 80);
    producer.publish(FAULTS, &again).await.unwrap();
    let list = incidents_until(&ec.url, "node=n1&state=open", |l| l.len() == 1).await;
    assert_eq!(list[0]["id"], again.id.to_string());

    // The incident's timeline: its occurrences (the expected one too) and its workflow's steps.
    let detail = get_json(&format!("{}/api/v1/incidents/{id}", ec.url)).await.unwrap();
    let kinds: Vec<&str> = detail["timeline"].as_array().unwrap().iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(kinds.iter().filter(|k| **k == "occurrence").count(), 4, "{detail}");
    assert_eq!(kinds.iter().filter(|k| **k == "step").count(), 3, "{detail}");
    assert_eq!(detail["incident"]["state"], "resolved");
    let timeline = get_json(&format!("{}/api/v1/nodes/c1/n1", ec.url)).await.unwrap();
    assert_eq!(timeline["incidents"].as_array().unwrap().len(), 1, "only the active one: {timeline}");
    assert!(timeline["timeline"].as_array().unwrap().iter().any(|e| e["expected"] == true), "{timeline}");
    let fleet = get_json(&format!("{}/api/v1/fleet", ec.url)).await.unwrap();
    assert_eq!(fleet[0]["cluster"], "c1");
    assert_eq!(
        (&fleet[0]["nodes_by_class"]["system"], &fleet[0]["nodes_by_class"]["hardware"]),
        (&serde_json::json!(1), &serde_json::json!(1))
    );

    // The topics: the incident's states in order, keyed by its id, CloudEvents headers; every
    // occurrence once (at least once, deduplicated by id), keyed by node.
    let resolved = |r: &[Record]| {
        r.iter().any(|r| {
            r.key == id && serde_json::from_slice::<serde_json::Value>(&r.body).unwrap()["state"] == "resolved"
        })
    };
    let states = read_topic(&kafka, firebreak_schema::INCIDENTS_TOPIC, resolved).await;
    // Decoded as docs/subscriptions.md shows a platform service doing it.
    let mine: Vec<firebreak_schema::Incident> = states
        .iter()
        .filter(|r| r.key == id)
        .map(|r| {
            let headers: Vec<(&str, Option<&[u8]>)> =
                r.headers.iter().map(|(k, v)| (k.as_str(), Some(v.as_bytes()))).collect();
            firebreak_schema::decode(headers, Some(&r.body)).unwrap()
        })
        .collect();
    assert!(states.iter().all(|r| r.headers.get("ce_type").map(String::as_str) == Some("io.firebreak.incident.v1")));
    assert!(mine.windows(2).all(|w| w[0].version < w[1].version), "published in version order");
    let seen: Vec<&str> = mine.iter().map(|i| i.state.as_str()).collect();
    for state in ["open", "remediating", "escalated", "resolved"] {
        assert!(seen.contains(&state), "{state} in {seen:?}");
    }
    let occurrences = read_topic(&kafka, firebreak_schema::OCCURRENCES_TOPIC, |r| {
        r.iter().map(|r| r.headers.get("ce_id").cloned()).collect::<std::collections::BTreeSet<_>>().len() >= 6
    })
    .await;
    let o: Vec<firebreak_schema::Occurrence> =
        occurrences.iter().map(|r| serde_json::from_slice(&r.body).unwrap()).collect();
    assert!(
        occurrences.iter().all(|r| r.key.starts_with("c1/n") && r.headers["ce_type"] == "io.firebreak.occurrence.v1")
    );
    assert!(o.iter().any(|o| o.expected && o.event.kind == FaultKind::NodeNotReady && o.incident_id.to_string() == id));
    ec.cancel.cancel();
    ec.task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incidents_sqlite() {
    let db = format!("sqlite://{}", temp_dir("ec-incidents").join("events.db").display());
    incidents_dedupe_count_and_follow_their_workflow(db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incidents_postgres() {
    let Some(db) = common::postgres_db().await else { return };
    incidents_dedupe_count_and_follow_their_workflow(db).await;
}

/// An operator's action on an incident that occurrences keep changing (a hung task reported
/// every few hundred milliseconds) is applied, not refused as a conflict: each write is a
/// compare-and-set on the incident's version, and the action is applied again to what the
/// incident has become. On PostgreSQL, where ingest and the action run side by side.
async fn an_action_on_a_busy_incident_is_applied(db: String) {
    use firebreak_event_center::store::Action;
    let store = firebreak_event_center::Store::open(&db).await.unwrap();
    let (_, changed) = store.insert_faults(&[fault("n1", FaultKind::KernelHung, 0)]).await.unwrap();
    let id = changed.incidents[0].id;
    let busy = {
        let store = store.clone();
        tokio::spawn(async move {
            for i in 1..150 {
                // As the consumer does: a batch that met an operator's write is written again.
                while let Err(e) = store.insert_faults(&[fault("n1", FaultKind::KernelHung, i)]).await {
                    assert!(matches!(e, firebreak_event_center::Error::Conflict(_)), "{e}");
                }
            }
        })
    };
    let mut notes = 0;
    // (The timeline shows the newest 400 entries: occurrences and notes stay under that.)
    while !busy.is_finished() && notes < 200 {
        let text = format!("note {notes}");
        let i = store.act(id, "alice", &Action::Annotate { text }).await.unwrap().unwrap();
        assert_eq!(i.id, id);
        notes += 1;
    }
    busy.await.unwrap();
    let detail = store.incident_detail(id).await.unwrap().unwrap();
    assert_eq!(detail.incident.occurrences, 150, "every occurrence counted");
    let noted =
        detail.timeline.iter().filter(|e| matches!(e, firebreak_event_center::store::Entry::Note { .. })).count();
    assert_eq!(noted, notes, "each note once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_incident_sqlite() {
    an_action_on_a_busy_incident_is_applied(format!("sqlite://{}", temp_dir("ec-busy").join("events.db").display()))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_incident_postgres() {
    let Some(db) = common::postgres_db().await else { return };
    an_action_on_a_busy_incident_is_applied(db).await;
}

/// Issue 10: K nodes of a cluster reporting the same kind within W are one correlated incident,
/// on the API and the health topic; other kinds and fewer nodes are not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_correlated_storm_is_grouped() {
    let (_mock, kafka) = incident_topics();
    let db = format!("sqlite://{}", temp_dir("ec-storm").join("events.db").display());
    let rules = firebreak_event_center::Rules {
        correlate_nodes: 3,
        correlate_window: chrono::TimeDelta::minutes(2),
        ..no_quiet_resolution().rules
    };
    let upkeep = firebreak_event_center::Upkeep { rules, ..Default::default() };
    let ec = start_with(&kafka, &db, "ec-storm", None, upkeep).await;
    let producer = Producer::new(&kafka).unwrap();
    // Two NICs down ten minutes apart (not a storm), then four within a minute (a storm).
    producer.publish(FAULTS, &fault("early", FaultKind::NicDown, 0)).await.unwrap();
    producer.publish(FAULTS, &fault("n0", FaultKind::KernelHung, 600)).await.unwrap();
    for k in 1..=4 {
        producer.publish(FAULTS, &fault(&format!("n{k}"), FaultKind::NicDown, 600 + k * 10)).await.unwrap();
    }
    let list: Vec<serde_json::Value> = wait_for("a correlation of four", Duration::from_secs(20), || async {
        let l = get_json(&format!("{}/api/v1/correlations", ec.url)).await?.as_array()?.clone();
        (l.len() == 1 && l[0]["nodes"].as_array()?.len() == 4).then_some(l)
    })
    .await;
    let c = &list[0];
    assert_eq!((c["kind"].as_str(), c["cluster"].as_str()), (Some("NicDown"), Some("c1")));
    assert!(c["message"].as_str().unwrap().contains("likely infrastructure, not nodes"), "{c}");
    assert!(!c["nodes"].as_array().unwrap().contains(&serde_json::json!("early")), "outside the window: {c}");
    let members = incidents(&ec.url, "kind=NicDown").await;
    assert_eq!(members.iter().filter(|i| i["correlation_id"] == c["id"]).count(), 4, "{members:?}");
    assert!(incidents(&ec.url, "kind=KernelHung").await[0]["correlation_id"].is_null());
    // On the health topic, beside the samples, for the gate.
    let health = read_topic(&kafka, firebreak_schema::HEALTH_TOPIC, |r| !r.is_empty()).await;
    assert_eq!(health[0].headers["ce_type"], "io.firebreak.correlation.v1");
    assert_eq!(health[0].key, "c1");
    ec.cancel.cancel();
    ec.task.await.unwrap();
}

/// Issue 10: a storm is placed where it is, by the failure domains the detector publishes (a
/// `Topology` on the health topic): a rack's nodes are the rack's storm, a zone's spread over
/// its racks the zone's, nodes spread over zones the cluster's; a lone node of another zone
/// beside a rack's storm stays out of it; a rack's storm that spreads over its zone widens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_is_placed_in_the_failure_domain_that_holds_it() {
    const ZONE: &str = "topology.kubernetes.io/zone";
    const RACK: &str = "example.com/rack";
    let (_mock, kafka) = incident_topics();
    let db = format!("sqlite://{}", temp_dir("ec-domains").join("events.db").display());
    let rules = firebreak_event_center::Rules { correlate_nodes: 3, ..no_quiet_resolution().rules };
    let upkeep = firebreak_event_center::Upkeep { rules, ..Default::default() };
    let ec = start_with(&kafka, &db, "ec-domains", None, upkeep).await;
    let producer = Producer::new(&kafka).unwrap();
    // Zone a: racks r1 (a1–a4) and r2 (a5–a8); zone b: racks r3 (b1–b4) and r4 (b5–b8).
    let names = |p: &str, r: std::ops::RangeInclusive<i32>| r.map(|k| format!("{p}{k}")).collect::<Vec<_>>();
    let topology = firebreak_schema::Topology {
        cluster: "c1".into(),
        at: Utc::now(),
        domains: BTreeMap::from([
            (
                ZONE.to_owned(),
                BTreeMap::from([("a".to_owned(), names("a", 1..=8)), ("b".to_owned(), names("b", 1..=8))]),
            ),
            (
                RACK.to_owned(),
                BTreeMap::from([
                    ("r1".to_owned(), names("a", 1..=4)),
                    ("r2".to_owned(), names("a", 5..=8)),
                    ("r3".to_owned(), names("b", 1..=4)),
                    ("r4".to_owned(), names("b", 5..=8)),
                ]),
            ),
        ]),
    };
    producer.publish(firebreak_schema::HEALTH_TOPIC, &topology).await.unwrap();
    // A sample after it on the same partition: once the page has the sample, the topology is kept.
    let sample = firebreak_schema::HealthSample {
        cluster: "c1".into(),
        at: Utc::now(),
        nodes: 16,
        ready: 16,
        ..Default::default()
    };
    producer.publish(firebreak_schema::HEALTH_TOPIC, &sample).await.unwrap();
    wait_for("the health sample", Duration::from_secs(20), || async {
        let gate = get_json(&format!("{}/api/v1/gate", ec.url)).await?;
        (!gate["clusters"].as_array()?.is_empty()).then_some(())
    })
    .await;
    let zone_a = names("a", 1..=8);
    let storms = [
        // Three nodes of rack r1: the rack's.
        (FaultKind::NicDown, vec!["a1", "a2", "a3"]),
        // Three of rack r2: r2's (and b1 of zone b, below, alone).
        (FaultKind::DiskFailing, vec!["a5", "a6", "a7"]),
        // The whole of zone a, over both racks: the zone's.
        (FaultKind::KubeletDown, zone_a.iter().map(String::as_str).collect()),
        // One node of zone a and two of zone b: the cluster's.
        (FaultKind::KernelHung, vec!["a1", "b1", "b5"]),
    ];
    for (kind, nodes) in &storms {
        for (k, n) in nodes.iter().enumerate() {
            producer.publish(FAULTS, &fault(n, *kind, 600 + k as i64)).await.unwrap();
        }
    }
    let list: Vec<serde_json::Value> = wait_for("four correlations", Duration::from_secs(20), || async {
        let l = get_json(&format!("{}/api/v1/correlations", ec.url)).await?.as_array()?.clone();
        let nodes =
            |kind: &str| l.iter().find(|c| c["kind"] == kind).and_then(|c| c["nodes"].as_array()).map_or(0, Vec::len);
        (nodes("NicDown") == 3 && nodes("DiskFailing") == 3 && nodes("KubeletDown") == 8 && nodes("KernelHung") == 3)
            .then_some(l)
    })
    .await;
    assert_eq!(list.len(), 4, "{list:#?}");
    let of = |kind: &str| list.iter().find(|c| c["kind"] == kind).unwrap().clone();
    assert_eq!(of("NicDown")["domain"], serde_json::json!([RACK, "r1"]));
    assert!(of("NicDown")["message"].as_str().unwrap().contains("3 nodes of example.com/rack=r1 in c1"), "{list:#?}");
    assert_eq!(of("DiskFailing")["domain"], serde_json::json!([RACK, "r2"]));
    let mut disk: Vec<String> =
        of("DiskFailing")["nodes"].as_array().unwrap().iter().filter_map(|n| n.as_str().map(str::to_owned)).collect();
    disk.sort();
    assert_eq!(disk, ["a5", "a6", "a7"]);
    assert_eq!(of("KubeletDown")["domain"], serde_json::json!([ZONE, "a"]));
    assert!(of("KernelHung").get("domain").is_none(), "spread over zones: {list:#?}");
    // One node of zone b beside rack r2's storm: not part of it. (It comes after the storm:
    // had it come with the first two of r2's, the three would have been the cluster's storm, as
    // far as anyone could tell then.)
    producer.publish(FAULTS, &fault("b1", FaultKind::DiskFailing, 610)).await.unwrap();
    let disk = incidents_until(&ec.url, "kind=DiskFailing&node=b1", |l| l.len() == 1).await;
    assert!(disk[0]["correlation_id"].is_null(), "a lone node beside the rack's storm: {disk:?}");
    let r2 = get_json(&format!("{}/api/v1/correlations", ec.url)).await.unwrap();
    let r2 = r2.as_array().unwrap().iter().find(|c| c["kind"] == "DiskFailing").unwrap().clone();
    assert_eq!(r2["nodes"].as_array().unwrap().len(), 3, "{r2}");
    // Rack r1's storm spreads to rack r2 of the same zone: the zone's now, the same correlation.
    for (k, n) in ["a5", "a6"].iter().enumerate() {
        producer.publish(FAULTS, &fault(n, FaultKind::NicDown, 700 + k as i64)).await.unwrap();
    }
    let nic = wait_for("the rack's storm widened", Duration::from_secs(20), || async {
        let l = get_json(&format!("{}/api/v1/correlations", ec.url)).await?.as_array()?.clone();
        l.into_iter().find(|c| c["kind"] == "NicDown" && c["nodes"].as_array().is_some_and(|n| n.len() == 5))
    })
    .await;
    assert_eq!(nic["domain"], serde_json::json!([ZONE, "a"]), "{nic}");
    assert_eq!(nic["id"], of("NicDown")["id"]);
    ec.cancel.cancel();
    ec.task.await.unwrap();
}

/// Issue 10: the gate's decisions (on its topic) are on the node's page: a run of the same
/// denial is one entry with its count, a replayed record counts nothing twice, another rule or
/// a grant is an entry of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gate_decisions_show_on_the_node_page_once_each() {
    let (_mock, kafka) = incident_topics();
    let db = format!("sqlite://{}", temp_dir("ec-decisions").join("events.db").display());
    let ec = start_with(&kafka, &db, "ec-decisions", None, no_quiet_resolution()).await;
    let producer = Producer::new(&kafka).unwrap();
    let workflow = uuid::Uuid::now_v7();
    let decision = |secs: i64, granted: bool, rule: Option<&str>| firebreak_schema::Decision {
        id: deterministic_id(DateTime::from_timestamp(*BASE + secs, 0).unwrap(), &["decision"]),
        at: DateTime::from_timestamp(*BASE + secs, 0).unwrap(),
        operation: firebreak_schema::Operation::Cordon,
        cluster: "c1".into(),
        node: Some("n1".into()),
        requester: format!("remediator/{workflow}"),
        holder: "remediator".into(),
        granted,
        rule: rule.map(str::to_owned),
        scope: Some("cluster=c1".into()),
        measured: rule.map(|_| 1.0),
        threshold: rule.map(|_| 1.0),
        reason: rule.map_or("granted".into(), |r| format!("denied by {r}")),
        permit_id: granted.then(uuid::Uuid::now_v7),
    };
    let sent = [
        decision(0, false, Some("halt")),
        decision(2, false, Some("halt")),
        decision(2, false, Some("halt")),
        decision(4, false, Some("halt")),
        decision(6, false, Some("in_flight")),
        decision(8, true, None),
    ];
    for d in &sent {
        producer.publish(firebreak_schema::CHANGES_TOPIC, d).await.unwrap();
    }
    let url = format!("{}/api/v1/nodes/c1/n1", ec.url);
    let entries = wait_for("the decisions", Duration::from_secs(20), || async {
        let page = get_json(&url).await?;
        let d: Vec<serde_json::Value> =
            page["timeline"].as_array()?.iter().filter(|e| e["type"] == "decision").cloned().collect();
        d.iter().any(|e| e["granted"] == true).then_some(d)
    })
    .await;
    let summary: Vec<(bool, Option<&str>, i64)> =
        entries.iter().map(|e| (e["granted"] == true, e["rule"].as_str(), e["repeats"].as_i64().unwrap())).collect();
    assert_eq!(summary, [(true, None, 1), (false, Some("in_flight"), 1), (false, Some("halt"), 3)], "{entries:#?}");
    let halt = &entries[2];
    assert_eq!(halt["first_at"].as_str(), Some(sent[0].at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true).as_str()));
    assert_eq!(halt["at"].as_str().map(|t| t.parse::<DateTime<Utc>>().unwrap()), Some(sent[3].at));
    ec.cancel.cancel();
    ec.task.await.unwrap();
}

/// Issue 10: acknowledging, silencing, assigning, annotating need an operator's token (401
/// without, 403 for a viewer's); a silence ends by itself; the OpenAPI document is served and
/// each of its read routes answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_actions_need_a_token_and_silences_expire() {
    use firebreak_plumbing::auth::{Tokens, entry};
    use firebreak_schema::Role;
    let (_mock, kafka) = incident_topics();
    let db = format!("sqlite://{}", temp_dir("ec-actions").join("events.db").display());
    let tokens = Tokens::parse(
        &[entry("watcher", Role::Viewer, "v-secret"), entry("alice", Role::Operator, "o-secret")].join("\n"),
    )
    .unwrap();
    let upkeep = firebreak_event_center::Upkeep { expire_every: Duration::from_millis(300), ..Default::default() };
    let ec = start_with(&kafka, &db, "ec-actions", Some(tokens), upkeep).await;
    let producer = Producer::new(&kafka).unwrap();
    // Recent, so that no quiet resolution takes it during the test.
    let mut f = fault("n1", FaultKind::ReadonlyFilesystem, 0);
    f.observed_at = Utc::now();
    f.id = deterministic_id(f.observed_at, &["actions"]);
    producer.publish(FAULTS, &f).await.unwrap();
    let id = incidents_until(&ec.url, "", |l| l.len() == 1).await[0]["id"].as_str().unwrap().to_owned();
    let http = reqwest::Client::new();
    let post = |action: &str, token: Option<&str>, body: serde_json::Value| {
        let mut r = http.post(format!("{}/api/v1/incidents/{id}/{action}", ec.url)).json(&body);
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        r.send()
    };
    let ack = serde_json::json!({"note": "looking"});
    assert_eq!(post("acknowledge", None, ack.clone()).await.unwrap().status(), 401);
    assert_eq!(post("acknowledge", Some("v-secret"), ack.clone()).await.unwrap().status(), 403);
    // A body is an object: an array is not read as the fields in order, nor anything else.
    for bad in [serde_json::json!(["looking"]), serde_json::json!("looking"), serde_json::json!(null)] {
        let r = post("acknowledge", Some("o-secret"), bad.clone()).await.unwrap();
        assert_eq!(r.status(), 400, "{bad}");
    }
    assert_eq!(incidents_until(&ec.url, "", |l| l.len() == 1).await[0]["state"], "open", "nothing acknowledged");
    let r = post("acknowledge", Some("o-secret"), ack).await.unwrap();
    assert_eq!(r.status(), 200);
    let i: serde_json::Value = r.json().await.unwrap();
    assert_eq!((i["state"].as_str(), i["acknowledged_by"].as_str()), (Some("acknowledged"), Some("alice")));
    assert_eq!(post("assign", Some("o-secret"), serde_json::json!({"to": "bob"})).await.unwrap().status(), 200);
    assert_eq!(
        post("annotate", Some("o-secret"), serde_json::json!({"text": "DIMM B2 suspected"})).await.unwrap().status(),
        200
    );
    // Bad input: a 400 that says why; an unknown incident: 404.
    for (action, body) in [
        ("silence", serde_json::json!({"note": "no duration"})),
        ("silence", serde_json::json!({"for": "30d"})),
        ("silence", serde_json::json!({"until": "2001-01-01T00:00:00Z"})),
        ("annotate", serde_json::json!({"text": ""})),
        ("assign", serde_json::json!({"to": "bob", "extra": 1})),
    ] {
        let r = post(action, Some("o-secret"), body.clone()).await.unwrap();
        assert_eq!(r.status(), 400, "{action} {body}");
    }
    let r = http
        .post(format!("{}/api/v1/incidents/{}/acknowledge", ec.url, uuid::Uuid::now_v7()))
        .bearer_auth("o-secret")
        .json(&serde_json::json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    // An id that is not a UUID: a 400 naming it, to read and to act on.
    let r = reqwest::get(format!("{}/api/v1/incidents/not-an-id", ec.url)).await.unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("not-an-id"));
    let r = http
        .post(format!("{}/api/v1/incidents/not-an-id/acknowledge", ec.url))
        .bearer_auth("o-secret")
        .json(&serde_json::json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = post("silence", Some("o-secret"), serde_json::json!({"for": "2s", "note": "maintenance"})).await.unwrap();
    assert_eq!(r.json::<serde_json::Value>().await.unwrap()["state"], "silenced");
    let list = incidents_until(&ec.url, "", |l| l[0]["state"] == "open").await;
    assert!(list[0]["reason"].as_str().unwrap().starts_with("silence ended"), "{list:?}");
    assert_eq!(list[0]["assignee"], "bob");
    let detail = get_json(&format!("{}/api/v1/incidents/{id}", ec.url)).await.unwrap();
    let notes: Vec<(&str, &str)> = detail["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "note")
        .map(|e| (e["action"].as_str().unwrap(), e["by"].as_str().unwrap()))
        .collect();
    assert_eq!(notes, [("silence", "alice"), ("annotate", "alice"), ("assign", "alice"), ("acknowledge", "alice")]);

    // The OpenAPI document: every read route it names without parameters answers 200.
    let doc = get_json(&format!("{}/api/v1/openapi.json", ec.url)).await.unwrap();
    for (path, ops) in doc["paths"].as_object().unwrap() {
        if ops.get("get").is_some() && !path.contains('{') && path != "/api/v1/stream" {
            let r = reqwest::get(format!("{}{path}", ec.url)).await.unwrap();
            assert_eq!(r.status(), 200, "{path}");
        }
    }
    ec.cancel.cancel();
    ec.task.await.unwrap();
}

/// Issue 10: retention deletes faults past their age and beyond the count, oldest first, and
/// nothing else: not a fault still waiting for the occurrences topic, not an active incident.
async fn retention_deletes_only_what_it_should(db: String) {
    let store = firebreak_event_center::Store::open(&db).await.unwrap();
    let mut old: Vec<FaultEvent> = (0..3)
        .map(|k| {
            let mut f = fault(&format!("old{k}"), FaultKind::KernelHung, k);
            f.observed_at = Utc::now() - chrono::TimeDelta::days(40) + chrono::TimeDelta::seconds(k);
            f.id = deterministic_id(f.observed_at, &["old", &k.to_string()]);
            f
        })
        .collect();
    let new: Vec<FaultEvent> = (0..4)
        .map(|k| {
            let mut f = fault(&format!("new{k}"), FaultKind::KernelHung, k);
            f.observed_at = Utc::now() - chrono::TimeDelta::minutes(10 - k);
            f.id = deterministic_id(f.observed_at, &["new", &k.to_string()]);
            f
        })
        .collect();
    let (_, changed) = store.insert_faults(&[old.clone(), new.clone()].concat()).await.unwrap();
    assert_eq!(changed.incidents.len(), 7);
    // Published, all but the last old one.
    let waiting = old.pop().unwrap();
    let published: Vec<uuid::Uuid> = old.iter().chain(&new).map(|f| f.id).collect();
    store.occurrences_published(&published).await.unwrap();
    let all = firebreak_event_center::EventFilter { limit: Some(1000), ..Default::default() };
    let ids = |l: Vec<firebreak_schema::EventRecord>| l.into_iter().map(|r| r.event.id).collect::<Vec<_>>();
    let r = store.retain(chrono::TimeDelta::days(30), 1_000_000).await.unwrap();
    assert_eq!(r.faults, 2, "{r:?}");
    let left = ids(store.list_faults(&all).await.unwrap());
    assert!(left.contains(&waiting.id), "not yet on the occurrences topic: kept");
    assert!(new.iter().all(|f| left.contains(&f.id)));
    // By count: the newest two stay (and the unpublished one).
    let r = store.retain(chrono::TimeDelta::days(30), 2).await.unwrap();
    assert_eq!(r.faults, 2, "{r:?}");
    let left = ids(store.list_faults(&all).await.unwrap());
    assert_eq!(left, [new[3].id, new[2].id, waiting.id]);
    // Incidents stay while active, whatever their occurrences.
    let page = store.list_incidents(&Default::default()).await.unwrap();
    assert_eq!(page.items.len(), 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_sqlite() {
    let db = format!("sqlite://{}", temp_dir("ec-retention").join("events.db").display());
    retention_deletes_only_what_it_should(db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_postgres() {
    let Some(db) = common::postgres_db().await else { return };
    retention_deletes_only_what_it_should(db).await;
}

/// Issue 10: an undecodable record goes to the dead-letter topic as it came, with the reason and
/// its origin in headers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_records_go_to_the_dead_letter_topic() {
    let (_mock, kafka) = incident_topics();
    let db = format!("sqlite://{}", temp_dir("ec-dlq").join("events.db").display());
    let ec = start_with(&kafka, &db, "ec-dlq", None, Default::default()).await;
    let raw: FutureProducer = ClientConfig::new().set("bootstrap.servers", &kafka.brokers).create().unwrap();
    let headers = OwnedHeaders::new().insert(Header { key: "ce_type", value: Some("io.firebreak.fault.v1") });
    raw.send(FutureRecord::to(FAULTS).key("c1/bad").payload("{not json").headers(headers), Duration::from_secs(5))
        .await
        .unwrap();
    let dead = read_topic(&kafka, firebreak_schema::DEAD_LETTER_TOPIC, |r| !r.is_empty()).await;
    assert_eq!((dead[0].key.as_str(), dead[0].body.as_slice()), ("c1/bad", b"{not json".as_slice()));
    assert_eq!(dead[0].headers["ce_type"], "io.firebreak.fault.v1", "the record's own headers are kept");
    assert_eq!(dead[0].headers["firebreak_topic"], FAULTS);
    assert!(!dead[0].headers[firebreak_schema::DEAD_LETTER_REASON_HEADER].is_empty());
    // What the others publish beside it, undecodable: a correlation and a topology on the
    // health topic, a decision on the gate's topic. Each is set aside the same way.
    for (topic, ce_type) in [
        (firebreak_schema::HEALTH_TOPIC, "io.firebreak.correlation.v1"),
        (firebreak_schema::HEALTH_TOPIC, "io.firebreak.topology.v1"),
        (firebreak_schema::CHANGES_TOPIC, "io.firebreak.decision.v1"),
    ] {
        let headers = OwnedHeaders::new().insert(Header { key: "ce_type", value: Some(ce_type) });
        let body = r#"{"cluster": "c1", "nodes": 7}"#;
        raw.send(FutureRecord::to(topic).key("c1").payload(body).headers(headers), Duration::from_secs(5))
            .await
            .unwrap();
    }
    let dead = read_topic(&kafka, firebreak_schema::DEAD_LETTER_TOPIC, |r| r.len() >= 4).await;
    let mut types: Vec<&str> = dead.iter().map(|r| r.headers["ce_type"].as_str()).collect();
    types.sort();
    assert_eq!(
        types,
        [
            "io.firebreak.correlation.v1",
            "io.firebreak.decision.v1",
            "io.firebreak.fault.v1",
            "io.firebreak.topology.v1"
        ]
    );
    assert!(dead.iter().all(|r| !r.headers[firebreak_schema::DEAD_LETTER_REASON_HEADER].is_empty()));
    ec.cancel.cancel();
    ec.task.await.unwrap();
}

/// Issue 10: a webhook subscription is told, HMAC-signed, of the incidents its filter wants when
/// they open or change state, and of nothing else (not of each occurrence, not of other classes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_subscriptions_are_told_of_state_changes_they_want() {
    let (_mock, kafka) = incident_topics();
    let db = format!("sqlite://{}", temp_dir("ec-webhooks").join("events.db").display());
    let (url, mut got) = common::webhook_receiver().await;
    let file = format!(
        "[[webhooks]]\nurl = \"{url}\"\nsecret_env = \"HOOK\"\nclusters = [\"c1\"]\nclasses = [\"hardware\"]\nmin_severity = \"warning\"\n"
    );
    let webhooks =
        firebreak_event_center::subscriptions::parse(&file, |k| (k == "HOOK").then(|| "hook-secret".into())).unwrap();
    let ec = start_with_webhooks(&kafka, &db, "ec-webhooks", None, no_quiet_resolution(), webhooks).await;
    let producer = Producer::new(&kafka).unwrap();
    let dimm = fault("n1", FaultKind::MemoryUncorrectable, 0);
    producer.publish(FAULTS, &fault("n2", FaultKind::KernelHung, 0)).await.unwrap();
    producer.publish(FAULTS, &dimm).await.unwrap();
    async fn next(got: &mut tokio::sync::mpsc::UnboundedReceiver<common::Delivery>) -> common::Delivery {
        let got = tokio::time::timeout(Duration::from_secs(15), got.recv());
        got.await.expect("a delivery within 15 s").expect("the receiver runs")
    }
    let (signature, event, body) = next(&mut got).await;
    assert_eq!(signature, firebreak_plumbing::webhook::signature(b"hook-secret", &body));
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!((event.as_str(), &v["incident"]["node"]), ("open", &serde_json::json!("n1")));
    // Another occurrence changes the count, not the state: no delivery.
    producer.publish(FAULTS, &fault("n1", FaultKind::MemoryUncorrectable, 10)).await.unwrap();
    incidents_until(&ec.url, "node=n1", |l| l.first().is_some_and(|i| i["occurrences"] == 2)).await;
    producer.publish(REMEDIATION_TOPIC, &step(&dimm, uuid::Uuid::now_v7(), "escalated", 20)).await.unwrap();
    let (_, event, body) = next(&mut got).await;
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!((event.as_str(), v["incident"]["occurrences"].as_i64()), ("escalated", Some(2)));
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(got.try_recv().is_err(), "nothing for the system-class incident, nothing twice");
    ec.cancel.cancel();
    ec.task.await.unwrap();
}

/// Issue 10: a webhook call is stored with the change it tells of, so one that could not be
/// delivered before the event center stopped (its receiver down) is delivered after it starts
/// again, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_call_outlives_a_restart_while_its_receiver_is_down() {
    let (_mock, kafka) = incident_topics();
    let db = format!("sqlite://{}", temp_dir("ec-webhook-restart").join("events.db").display());
    let addr = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string();
    let file = format!("[[webhooks]]\nurl = \"http://{addr}/hook\"\nsecret_env = \"HOOK\"\n");
    let webhooks = || {
        firebreak_event_center::subscriptions::parse(&file, |k| (k == "HOOK").then(|| "hook-secret".into())).unwrap()
    };
    let ec = start_with_webhooks(&kafka, &db, "ec-webhook-restart", None, no_quiet_resolution(), webhooks()).await;
    let producer = Producer::new(&kafka).unwrap();
    producer.publish(FAULTS, &fault("n1", FaultKind::MemoryUncorrectable, 0)).await.unwrap();
    // On the incidents topic: published, and its call stored in the same step.
    read_topic(&kafka, firebreak_schema::INCIDENTS_TOPIC, |r| !r.is_empty()).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    ec.cancel.cancel();
    ec.task.await.unwrap();

    let (url, mut got) = common::webhook_receiver_on(&addr).await;
    assert_eq!(url, format!("http://{addr}/hook"));
    let ec = start_with_webhooks(&kafka, &db, "ec-webhook-restart", None, no_quiet_resolution(), webhooks()).await;
    let delivery = tokio::time::timeout(Duration::from_secs(20), got.recv()).await;
    let (signature, event, body) = delivery.expect("delivered after the restart").expect("the receiver runs");
    assert_eq!(signature, firebreak_plumbing::webhook::signature(b"hook-secret", &body));
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!((event.as_str(), &v["incident"]["node"]), ("open", &serde_json::json!("n1")));
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(got.try_recv().is_err(), "delivered once");
    ec.cancel.cancel();
    ec.task.await.unwrap();
}

/// Issue 10: a webhook call its receiver never took, a day after it was stored, is given up:
/// gone from the outbox, said on its incident's timeline with the attempts and the last error,
/// and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_call_undelivered_for_a_day_is_given_up_on_its_incidents_timeline() {
    let (_mock, kafka) = incident_topics();
    let path = temp_dir("ec-webhook-give-up").join("events.db");
    let db = format!("sqlite://{}", path.display());
    // Nobody listens there.
    let addr = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string();
    let file = format!("[[webhooks]]\nurl = \"http://{addr}/hook\"\nsecret_env = \"HOOK\"\n");
    let webhooks =
        firebreak_event_center::subscriptions::parse(&file, |k| (k == "HOOK").then(|| "hook-secret".into())).unwrap();
    let ec = start_with_webhooks(&kafka, &db, "ec-webhook-give-up", None, no_quiet_resolution(), webhooks).await;
    let producer = Producer::new(&kafka).unwrap();
    producer.publish(FAULTS, &fault("n1", FaultKind::MemoryUncorrectable, 0)).await.unwrap();
    let list = incidents_until(&ec.url, "", |l| !l.is_empty()).await;
    let id = list[0]["id"].as_str().unwrap().to_owned();

    // The stored call, made a day and a minute old (its UUIDv7 id holds when it was stored).
    let conn = sqlx::SqlitePool::connect(&db).await.unwrap();
    let stored = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM incident_webhooks").fetch_one(&conn).await.unwrap()
    };
    wait_for("the call stored", Duration::from_secs(20), || async { (stored().await == 1).then_some(()) }).await;
    let then = std::time::SystemTime::now() - Duration::from_secs(24 * 3600 + 60);
    let then = then.duration_since(std::time::UNIX_EPOCH).unwrap();
    let old = uuid::Uuid::new_v7(uuid::Timestamp::from_unix(uuid::NoContext, then.as_secs(), then.subsec_nanos()));
    sqlx::query("UPDATE incident_webhooks SET id = $1, next_at_ms = 0, attempts = 300")
        .bind(old.to_string())
        .execute(&conn)
        .await
        .unwrap();

    let note = wait_for("the giving up on the timeline", Duration::from_secs(20), || async {
        let detail = get_json(&format!("{}/api/v1/incidents/{id}", ec.url)).await?;
        detail["timeline"]
            .as_array()?
            .iter()
            .find(|e| e["type"] == "note" && e["action"] == "webhook_given_up")
            .cloned()
    })
    .await;
    assert_eq!(note["by"], "firebreak");
    let text = note["text"].as_str().unwrap();
    assert!(text.contains(&format!("http://{addr}/hook")) && text.contains("301 attempts over 24 h"), "{text}");
    assert_eq!(stored().await, 0, "given up, not retried");
    let metrics = reqwest::get(format!("{}/metrics", ec.url)).await.unwrap().text().await.unwrap();
    assert!(metrics.contains("firebreak_event_center_webhooks_given_up_total 1"), "{metrics}");
    ec.cancel.cancel();
    ec.task.await.unwrap();
}

/// Issue 10: two replicas share the fault topic's partitions through their consumer group; one
/// is killed (SIGKILL, offsets uncommitted) mid-ingest; the other takes its partitions over and
/// replays what it had not committed. Every occurrence is counted exactly once and each
/// fingerprint has one incident.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_mid_ingest_loses_and_doubles_nothing() {
    let Some(db) = common::postgres_db().await else { return };
    let (_mock, kafka) = incident_topics();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let log = std::fs::File::create(temp_dir("ec-replica").join("a.log")).unwrap();
    let mut a = tokio::process::Command::new(env!("CARGO_BIN_EXE_firebreak"))
        .args(["event-center", "--no-create-topics", "--kafka-brokers", &kafka.brokers, "--database-url", &db])
        .args(["--listen", &format!("127.0.0.1:{port}"), "--resolve-quiet-after", "1d"])
        .args([
            "--kafka-consumer-option",
            "session.timeout.ms=6000",
            "--kafka-consumer-option",
            "heartbeat.interval.ms=500",
        ])
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let a_url = format!("http://127.0.0.1:{port}");
    // The group id the binary uses, so that both are one group.
    let b = start_with(&kafka, &db, "firebreak-event-center", None, no_quiet_resolution()).await;
    wait_for("replica A ready", Duration::from_secs(30), || async {
        reqwest::get(format!("{a_url}/readyz")).await.ok().filter(|r| r.status().is_success())
    })
    .await;
    let producer = Producer::new(&kafka).unwrap();
    let (nodes, repeats): (usize, i64) = (60, 10);
    let all: Vec<FaultEvent> = (0..repeats)
        .flat_map(|r| {
            (0..nodes)
                .map(move |n| fault(&format!("r{n:02}"), [FaultKind::KernelHung, FaultKind::NicDown][n % 2], r * 10))
        })
        .collect();
    for (k, f) in all.iter().enumerate() {
        producer.publish(FAULTS, f).await.unwrap();
        if k == all.len() / 2 {
            a.start_kill().unwrap();
        }
    }
    a.wait().await.unwrap();
    let list = incidents_until(&b.url, "limit=1000", |l| {
        l.len() == nodes
            && l.iter().map(|i| i["occurrences"].as_i64().unwrap_or(0)).sum::<i64>() == nodes as i64 * repeats
    })
    .await;
    assert!(list.iter().all(|i| i["occurrences"] == repeats), "{list:?}");
    // And it stays so: nothing is counted late, twice.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let again = incidents(&b.url, "limit=1000").await;
    assert_eq!(again.iter().map(|i| i["occurrences"].as_i64().unwrap()).sum::<i64>(), nodes as i64 * repeats);
    b.cancel.cancel();
    b.task.await.unwrap();
}
