//! Helpers shared by the end-to-end tests.
#![allow(dead_code)]

use std::{
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use firebreak::demo::{Stack, StackOptions};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Node;
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::Value;

/// A fresh directory, inside this test process's own directory of the system temp dir.
pub fn temp_dir(name: &str) -> PathBuf {
    let dir = process_dir().join(format!("{name}-{}", uuid::Uuid::now_v7().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A program the tests run beside Firebreak (a peer it did not write): the path in the
/// environment variable `env`, else `target/tools/<in_target>` in the workspace, else `name` on
/// the PATH. Without one the test skips, saying so; with `FIREBREAK_REQUIRE_<WHAT>` set (as
/// `.ci/test` sets it, having installed the program) it fails instead.
pub fn tool(env: &str, in_target: &str, name: &str) -> Option<PathBuf> {
    let candidates = [
        std::env::var_os(env).map(PathBuf::from),
        Some(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/tools").join(in_target)),
    ];
    let found = candidates.into_iter().flatten().find(|p| p.is_file()).or_else(|| {
        let found = std::process::Command::new("sh").args(["-c", &format!("command -v {name}")]).output().ok()?;
        let path = String::from_utf8(found.stdout).ok()?;
        (!path.trim().is_empty()).then(|| PathBuf::from(path.trim()))
    });
    if found.is_none() {
        let require = format!("FIREBREAK_REQUIRE_{}", name.to_uppercase());
        assert!(
            std::env::var(&require).is_err(),
            "{require} is set but no {name} was found ({env}, target/tools/{in_target}, the PATH)"
        );
        eprintln!("skipped: no {name} (set {env}, or run .ci/test, which installs it)");
    }
    found
}

/// schemathesis, found by [`tool`]: `None` when it is not here and not required.
pub fn schemathesis_tool() -> Option<PathBuf> {
    tool("FIREBREAK_SCHEMATHESIS", "venv/bin/schemathesis", "schemathesis")
}

/// Runs schemathesis (`tool`, from [`schemathesis_tool`]) against the OpenAPI document at
/// `base/api/v1/openapi.json`, with a bearer token, the per-operation `config` (TOML, written to
/// `dir`) and `extra` arguments; every phase and check, a fixed seed and 40 examples per
/// operation. Returns whether it passed, and its report.
pub async fn schemathesis(
    tool: &std::path::Path,
    dir: &std::path::Path,
    base: &str,
    token: &str,
    config: &str,
    extra: &[&str],
) -> (bool, String) {
    let file = dir.join("schemathesis.toml");
    std::fs::write(&file, config).unwrap();
    let out = tokio::process::Command::new(tool)
        .current_dir(dir)
        .arg("--no-color")
        .arg("--config-file")
        .arg(&file)
        .args(["run", &format!("{base}/api/v1/openapi.json")])
        .args(["--header", &format!("Authorization: Bearer {token}")])
        .args(["--max-examples", "40", "--seed", "20261204", "--request-timeout", "10"])
        .args(extra)
        .output()
        .await
        .unwrap();
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

/// The prefix of a test process's directory; its process id follows.
const PROCESS_DIR: &str = "firebreak-tests-";

/// `firebreak-tests-<pid>` in the system temp dir: every [`temp_dir`] of this process. The first
/// call removes those of test processes that have exited, so test runs leave behind only the
/// directories of the last process to run (kept for a look at a failure), not every run's.
fn process_dir() -> &'static std::path::Path {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let tmp = std::env::temp_dir();
        for entry in std::fs::read_dir(&tmp).into_iter().flatten().flatten() {
            let name = entry.file_name();
            let Some(pid) = name.to_str().and_then(|n| n.strip_prefix(PROCESS_DIR)) else { continue };
            if pid.parse::<u32>().is_ok() && !std::path::Path::new("/proc").join(pid).exists() {
                // Another process may be removing it too.
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
        tmp.join(format!("{PROCESS_DIR}{}", std::process::id()))
    })
}

/// A new, empty PostgreSQL database on the local server (`FIREBREAK_TEST_POSTGRES`, default
/// `postgres://postgres@127.0.0.1:5432`); its URL. Without a server the test cannot run: it
/// says why and is skipped, unless `FIREBREAK_REQUIRE_POSTGRES=1` (as `.ci/test` sets) makes
/// that a failure. Tests do not drop their databases; the first call of a test process drops
/// those made more than an hour ago (their names hold the time), unless one is still in use.
pub async fn postgres_db() -> Option<String> {
    use sqlx::Connection;
    static SWEPT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    let base = std::env::var("FIREBREAK_TEST_POSTGRES").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into());
    let name = format!("fb_{}", uuid::Uuid::now_v7().simple());
    let created = async {
        let mut conn = sqlx::PgConnection::connect(&format!("{base}/postgres")).await?;
        if !SWEPT.swap(true, std::sync::atomic::Ordering::Relaxed) {
            let names: Vec<String> = sqlx::query_scalar("SELECT datname FROM pg_database WHERE datname LIKE 'fb\\_%'")
                .fetch_all(&mut conn)
                .await?;
            let hour_ago = std::time::SystemTime::now() - Duration::from_secs(3600);
            for old in names {
                let made = uuid::Uuid::parse_str(&old["fb_".len()..]).ok().and_then(|u| u.get_timestamp());
                if made.is_some_and(|t| std::time::UNIX_EPOCH + Duration::from_secs(t.to_unix().0) < hour_ago) {
                    // Without FORCE: a database a test still uses stays.
                    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS \"{old}\"")).execute(&mut conn).await;
                }
            }
        }
        sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut conn).await?;
        Ok::<_, sqlx::Error>(())
    };
    match created.await {
        Ok(()) => Some(format!("{base}/{name}")),
        Err(error) => {
            let why = format!(
                "this test needs PostgreSQL at {base} (set FIREBREAK_TEST_POSTGRES, or run `bash .ci/test`, which \
                 starts one): {error}"
            );
            assert!(std::env::var("FIREBREAK_REQUIRE_POSTGRES").is_err(), "{why}");
            eprintln!("SKIPPED: {why}");
            None
        }
    }
}

/// Polls `f` every 100 ms until it returns `Some`, or panics after `timeout` saying `what`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = tokio::time::Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// GET a JSON document; `None` on any failure.
pub async fn get_json(url: &str) -> Option<Value> {
    let r = reqwest::get(url).await.ok()?;
    if !r.status().is_success() {
        return None;
    }
    r.json().await.ok()
}

/// GET a JSON document with a bearer token; `None` on any failure.
pub async fn get_json_as(token: &str, url: &str) -> Option<Value> {
    let r = reqwest::Client::new().get(url).bearer_auth(token).send().await.ok()?;
    if !r.status().is_success() {
        return None;
    }
    r.json().await.ok()
}

/// A small stack (one cluster by default), started and ready to consume.
pub async fn stack(name: &str, tune: impl FnOnce(&mut StackOptions)) -> Stack {
    let mut opts = StackOptions::new(temp_dir(name), 1, 4);
    opts.quiet_period = Duration::from_secs(2);
    opts.eviction_retry = Duration::from_millis(500);
    tune(&mut opts);
    let stack = Stack::start(opts).await.expect("stack starts");
    let url = format!("{}/readyz", stack.event_center_url);
    wait_for("the event center to be assigned partitions", Duration::from_secs(30), || async {
        reqwest::get(&url).await.ok().filter(|r| r.status().is_success())
    })
    .await;
    stack
}

/// Steps the remediator published for a node, oldest first: (state, reason).
pub async fn steps(stack: &Stack, node: &str) -> Vec<(String, String)> {
    let url = format!("{}/api/v1/remediations?node={node}&limit=1000", stack.event_center_url);
    let mut out: Vec<(String, String)> = get_json(&url)
        .await
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default()
        .iter()
        .map(|s| (s["state"].as_str().unwrap_or("").to_owned(), s["reason"].as_str().unwrap_or("").to_owned()))
        .collect();
    out.reverse();
    out
}

/// Whether a node is cordoned or carries Firebreak's taint.
pub fn out_of_service(n: &Node) -> bool {
    let spec = n.spec.as_ref();
    spec.and_then(|s| s.unschedulable).unwrap_or(false)
        || spec.and_then(|s| s.taints.as_ref()).is_some_and(|t| t.iter().any(|t| t.key == "firebreak.io/unhealthy"))
}

/// Every node state seen through a watch, in order: (node, out of service).
#[derive(Clone, Default)]
pub struct NodeLog(pub Arc<Mutex<Vec<(String, bool, tokio::time::Instant)>>>);

impl NodeLog {
    /// Starts watching the cluster's nodes; every change is recorded.
    pub fn watch(client: kube::Client) -> Self {
        let log = NodeLog::default();
        let inner = log.clone();
        tokio::spawn(async move {
            let api: kube::Api<Node> = kube::Api::all(client);
            let mut s = watcher(api, watcher::Config::default()).applied_objects().boxed();
            while let Some(Ok(n)) = s.next().await {
                let name = n.metadata.name.clone().unwrap_or_default();
                inner.0.lock().unwrap().push((name, out_of_service(&n), tokio::time::Instant::now()));
            }
        });
        log
    }

    /// Largest number of nodes out of service at the same time.
    pub fn max_out_of_service(&self) -> usize {
        let mut state = std::collections::BTreeMap::new();
        let mut max = 0;
        for (node, out, _) in self.0.lock().unwrap().iter() {
            state.insert(node.clone(), *out);
            max = max.max(state.values().filter(|v| **v).count());
        }
        max
    }

    /// When a node was first seen out of service.
    pub fn first_out_of_service(&self, node: &str) -> Option<tokio::time::Instant> {
        self.0.lock().unwrap().iter().find(|(n, out, _)| n == node && *out).map(|(_, _, t)| *t)
    }
}

/// librdkafka's mock cluster with the given topics, and a client config tuned for its quick
/// group rebalances.
pub fn mock_kafka(
    topics: &[(&str, i32)],
) -> (
    rdkafka::mocking::MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
    firebreak_plumbing::kafka::KafkaConfig,
) {
    let mock = rdkafka::mocking::MockCluster::new(1).unwrap();
    for (topic, partitions) in topics {
        mock.create_topic(topic, *partitions, 1).unwrap();
    }
    let cfg = firebreak_plumbing::kafka::KafkaConfig {
        brokers: mock.bootstrap_servers(),
        client_options: Vec::new(),
        consumer_options: vec![
            ("session.timeout.ms".into(), "6000".into()),
            ("heartbeat.interval.ms".into(), "500".into()),
        ],
    };
    (mock, cfg)
}

/// A detector of `cluster` on `kafka` as the tests run it: no silence reports, a NotReady a
/// fault after 30 s, three flaps in ten minutes a flapping, no leader election. Tests change
/// what they test with struct update syntax.
pub fn detector_config(cluster: &str, kafka: &firebreak_plumbing::kafka::KafkaConfig) -> firebreak_detector::Config {
    firebreak_detector::Config {
        cluster: cluster.into(),
        kafka: kafka.clone(),
        agent_silent_after: Duration::MAX,
        new_node_grace: Duration::from_secs(60),
        sample_every: Duration::from_secs(10),
        failure_domains: Vec::new(),
        pod_window: Duration::from_secs(300),
        pod_start_deadline: Duration::from_secs(120),
        not_ready_for: Duration::from_secs(30),
        flapping_count: 3,
        flapping_within: Duration::from_secs(600),
        lease: None,
    }
}

/// A one-cluster fleet-sim without pod churn: its pod lists hold still between two reads.
pub async fn fleet(name: &str, nodes: usize) -> firebreak_fleet_sim::Fleet {
    firebreak_fleet_sim::Fleet::start(firebreak_fleet_sim::FleetConfig {
        data_dir: temp_dir(name),
        clusters: 1,
        nodes_per_cluster: nodes,
        timings: firebreak_fleet_sim::Timings { churn_per_minute: 0, ..Default::default() },
        apps: Default::default(),
    })
    .await
    .unwrap()
}

/// Waits until every long-lived pod of the cluster is Running and Ready (the budgets bind Ready
/// pods only; `churn` pods come and go all the time, so some are always starting).
pub async fn wait_pods_ready(cluster: &firebreak_fleet_sim::Cluster) {
    let client = firebreak::kube_client(&cluster.kubeconfig_path()).await.unwrap();
    let pods: kube::Api<k8s_openapi::api::core::v1::Pod> = kube::Api::all(client);
    wait_for("every pod Ready", Duration::from_secs(30), || async {
        let list = pods.list(&Default::default()).await.ok()?;
        list.items
            .iter()
            .filter(|p| !p.metadata.name.as_deref().unwrap_or_default().starts_with("churn-"))
            .all(|p| {
                p.status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
            })
            .then_some(())
    })
    .await;
}

/// The gate's metrics (read with the stack's viewer token); empty on failure.
pub async fn gate_metrics(stack: &Stack) -> String {
    let url = format!("{}/metrics", stack.gate_url);
    let sent = reqwest::Client::new().get(url).bearer_auth(&stack.tokens.viewer).send().await;
    match sent {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

/// An operator halts `operations` (all when empty) in `cluster`; the halt's id.
pub async fn halt(stack: &Stack, cluster: &str, operations: &[&str]) -> String {
    let r: Value = reqwest::Client::new()
        .post(format!("{}/api/v1/halts", stack.gate_url))
        .bearer_auth(&stack.tokens.operator)
        .json(&serde_json::json!({"scope": {"cluster": cluster}, "operations": operations, "reason": "test"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    r["id"].as_str().unwrap().to_owned()
}

/// An operator lifts a halt.
pub async fn resume(stack: &Stack, id: &str) {
    let r = reqwest::Client::new()
        .post(format!("{}/api/v1/halts/{id}/resume", stack.gate_url))
        .bearer_auth(&stack.tokens.operator)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{r:?}");
}

/// Waits until the gate holds no permit.
pub async fn no_permits(stack: &Stack) {
    wait_for("every permit given back", Duration::from_secs(15), || async {
        get_json_as(&stack.tokens.viewer, &format!("{}/api/v1/permits", stack.gate_url))
            .await?
            .as_array()?
            .is_empty()
            .then_some(())
    })
    .await;
}

/// What a webhook receiver got: signature header, event header, body.
pub type Delivery = (String, String, Vec<u8>);

/// A webhook receiver on a free port, checking nothing (the test checks what it got): its URL
/// and what it receives.
pub async fn webhook_receiver() -> (String, tokio::sync::mpsc::UnboundedReceiver<Delivery>) {
    webhook_receiver_on("127.0.0.1:0").await
}

/// [`webhook_receiver`] on a given address (one that was down until now, say).
pub async fn webhook_receiver_on(addr: &str) -> (String, tokio::sync::mpsc::UnboundedReceiver<Delivery>) {
    let (got_tx, got) = tokio::sync::mpsc::unbounded_channel::<Delivery>();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
            let tx = got_tx.clone();
            async move {
                let h = |k: &str| headers.get(k).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
                let _ = tx.send((h("x-firebreak-signature"), h("x-firebreak-event"), body.to_vec()));
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, got)
}

/// The long-lived pods bound to a node (`churn` pods, which come and go, left out), by uid.
pub async fn pods_on(client: &kube::Client, node: &str) -> std::collections::BTreeSet<String> {
    let pods: kube::Api<k8s_openapi::api::core::v1::Pod> = kube::Api::all(client.clone());
    let lp = kube::api::ListParams::default().fields(&format!("spec.nodeName={node}"));
    pods.list(&lp)
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|p| !p.metadata.name.as_deref().unwrap_or_default().starts_with("churn-"))
        .filter_map(|p| p.metadata.uid)
        .collect()
}

/// A `firebreak remediator` process for the stack's first cluster, as production runs it: its
/// own database (`db`), the stack's broker and gate, `args` after the common ones; its log in
/// `dir/<id>.log`. Killed (SIGKILL) when dropped. It finds the cluster through `$KUBECONFIG`.
pub fn remediator_process(
    stack: &Stack,
    dir: &std::path::Path,
    db: &str,
    id: &str,
    args: &[&str],
) -> tokio::process::Child {
    let cluster = &stack.fleet.clusters()[0];
    let log = std::fs::File::create(dir.join(format!("{id}.log"))).unwrap();
    tokio::process::Command::new(env!("CARGO_BIN_EXE_firebreak"))
        // No --kubeconfig: the cluster is found as kubectl finds it ($KUBECONFIG). The mock
        // cluster answers no CreateTopics, and the stack made the topics.
        .args(["remediator", "--cluster", cluster.name(), "--no-create-topics"])
        .env("KUBECONFIG", cluster.kubeconfig_path())
        .args(["--kafka-brokers", &stack.kafka_config.brokers, "--gate-url", &stack.gate_url])
        .args(["--gate-token", &stack.tokens.requester, "--database-url", db, "--lease-identity", id])
        .args(args)
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

/// Waits for the node's workflow to end and checks what a repair interrupted by crashes or a
/// failover must still hold: it healed, in one workflow, with no pod evicted twice. Its steps,
/// and the boot it came back on if it rebooted (exactly once).
pub async fn healed_once(stack: &Stack, node: &str) -> (Vec<(String, String)>, Option<String>) {
    let (_, why) = wait_for("the workflow's end", Duration::from_secs(90), || async {
        steps(stack, node).await.into_iter().find(|(s, _)| s == "healed" || s == "escalated")
    })
    .await;
    let all = steps(stack, node).await;
    let states: Vec<&str> = all.iter().map(|(s, _)| s.as_str()).collect();
    assert!(states.contains(&"healed"), "{why}: {states:?}");
    let url = format!("{}/api/v1/remediations?node={node}&limit=1000", stack.event_center_url);
    let published = get_json(&url).await.unwrap();
    let workflows: std::collections::BTreeSet<&str> =
        published.as_array().unwrap().iter().filter_map(|s| s["workflow_id"].as_str()).collect();
    assert_eq!(workflows.len(), 1, "one workflow");
    let audit = stack.fleet.clusters()[0].audit();
    let mut evicted: Vec<&str> =
        audit.iter().filter(|e| e.subresource == "eviction" && e.code == 201).map(|e| e.name.as_str()).collect();
    let n = evicted.len();
    evicted.sort_unstable();
    evicted.dedup();
    assert_eq!(evicted.len(), n, "no pod evicted twice");
    // A reboot's new boot id is in its step; a command is bound to the boot it was asked on, so
    // a second reboot would have needed a second command and shown a second step.
    let rebooted: Vec<String> = all
        .iter()
        .filter_map(|(_, r)| r.strip_prefix("rebooted in "))
        .filter_map(|r| Some(r.split(" -> ").nth(1)?.split(';').next()?.to_owned()))
        .collect();
    assert!(rebooted.len() <= 1, "one reboot at most: {states:?}");
    (all, rebooted.into_iter().next())
}
