//! The gate's HTTP API on its own, on real databases: exact budgets under 1,000 concurrent
//! requests (one replica on SQLite, two replicas sharing PostgreSQL), permits that survive a
//! restart and expire when abandoned, and who may do what.

mod common;

use std::{collections::BTreeMap, time::Duration};

use common::{temp_dir, wait_for};
use firebreak_plumbing::auth::{Tokens, entry, new_secret};
use firebreak_rate_limiter::{Limits, OperationPolicy, Policy};
use firebreak_schema::{Operation, PermitRequest, PermitResponse, Role};
use tokio_util::sync::CancellationToken;

struct Secrets {
    viewer: String,
    requester: String,
    other: String,
    operator: String,
    admin: String,
}

impl Secrets {
    fn new() -> Self {
        Self {
            viewer: new_secret(),
            requester: new_secret(),
            other: new_secret(),
            operator: new_secret(),
            admin: new_secret(),
        }
    }

    fn tokens(&self) -> Tokens {
        let text = [
            entry("viewer", Role::Viewer, &self.viewer),
            entry("remediator-a", Role::Requester, &self.requester),
            entry("remediator-b", Role::Requester, &self.other),
            entry("ops", Role::Operator, &self.operator),
            entry("root", Role::Admin, &self.admin),
        ]
        .join("\n");
        Tokens::parse(&text).unwrap()
    }
}

struct Server {
    url: String,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    async fn start(db: &str, policy: &Policy, secrets: &Secrets) -> Server {
        Self::start_with(db, policy, None, secrets, None).await
    }

    async fn start_with(
        db: &str,
        policy: &Policy,
        policy_path: Option<std::path::PathBuf>,
        secrets: &Secrets,
        tls: Option<firebreak_plumbing::serve::Tls>,
    ) -> Server {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let url = if tls.is_some() { format!("https://localhost:{port}") } else { format!("http://127.0.0.1:{port}") };
        let probe = reqwest::Client::builder().danger_accept_invalid_certs(true).build().unwrap();
        let stop = CancellationToken::new();
        let cfg = firebreak_rate_limiter::Config {
            database_url: db.into(),
            policy: policy.clone(),
            policy_path,
            tokens: secrets.tokens(),
            kafka: None,
            tls,
        };
        let s = stop.clone();
        let task = tokio::spawn(async move { firebreak_rate_limiter::run(cfg, listener, s).await.unwrap() });
        let health = format!("{url}/healthz");
        wait_for("the gate up", Duration::from_secs(10), || async {
            probe.get(&health).send().await.ok().filter(|r| r.status().is_success())
        })
        .await;
        Server { url, stop, task }
    }

    async fn stop(self) {
        self.stop.cancel();
        self.task.await.unwrap();
    }
}

fn cordons(max_in_flight: u32, ttl: Duration) -> Policy {
    Policy {
        permit_ttl: ttl,
        operations: BTreeMap::from([(
            Operation::Cordon,
            OperationPolicy {
                cluster: Some(Limits { max_in_flight: Some(max_in_flight), ..Limits::default() }),
                ..OperationPolicy::default()
            },
        )]),
        ..Policy::default()
    }
}

fn request(node: &str) -> PermitRequest {
    PermitRequest {
        operation: Operation::Cordon,
        cluster: "c1".into(),
        node: Some(node.into()),
        requester: format!("test/{node}"),
        domains: BTreeMap::new(),
    }
}

async fn ask(http: &reqwest::Client, url: &str, token: &str, req: &PermitRequest) -> reqwest::Response {
    http.post(format!("{url}/api/v1/permits")).bearer_auth(token).json(req).send().await.unwrap()
}

/// 1,000 requests at once, spread over the given gates; how many were granted.
async fn storm(urls: &[String], token: &str) -> usize {
    let http = reqwest::Client::builder().pool_max_idle_per_host(64).build().unwrap();
    let tasks: Vec<_> = (0..1000)
        .map(|i| {
            let (http, url, token) = (http.clone(), urls[i % urls.len()].clone(), token.to_owned());
            tokio::spawn(async move {
                let r = ask(&http, &url, &token, &request(&format!("n{i:04}"))).await;
                let code = r.status();
                if code != 200 {
                    panic!("HTTP {code}: {}", r.text().await.unwrap_or_default());
                }
                r.json::<PermitResponse>().await.unwrap().granted
            })
        })
        .collect();
    let mut granted = 0;
    for t in tasks {
        granted += usize::from(t.await.unwrap());
    }
    granted
}

async fn active(url: &str, token: &str) -> Vec<serde_json::Value> {
    let r = reqwest::Client::new().get(format!("{url}/api/v1/permits")).bearer_auth(token).send().await.unwrap();
    r.json::<Vec<serde_json::Value>>().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn budget_of_ten_holds_exactly_under_a_thousand_requests_sqlite() {
    let secrets = Secrets::new();
    let db = format!("sqlite://{}", temp_dir("gate-sqlite").join("gate.db").display());
    let gate = Server::start(&db, &cordons(10, Duration::from_secs(600)), &secrets).await;
    assert_eq!(storm(std::slice::from_ref(&gate.url), &secrets.requester).await, 10);
    assert_eq!(active(&gate.url, &secrets.viewer).await.len(), 10);
    gate.stop().await;
}

/// A change id that no change can have (not a DNS-1123 name: a NUL, a capital) is answered 404
/// on every route that names a change, on both stores: PostgreSQL refuses a NUL in text, and
/// such an id was sent to it (a 500).
async fn ids_no_change_has_are_not_found(db: &str) {
    let secrets = Secrets::new();
    let mut policy = cordons(10, Duration::from_secs(60));
    policy.operations.insert(Operation::CanaryBatch, OperationPolicy::default());
    let gate = Server::start(db, &policy, &secrets).await;
    let http = reqwest::Client::new();
    for id in ["c%00x", "Upgrade_1", "a%E2%80%AEb"] {
        let base = format!("{}/api/v1/changes/{id}", gate.url);
        let asks = [
            http.get(&base).bearer_auth(&secrets.viewer),
            http.get(format!("{}/api/v1/verdict?cluster=c1&change={id}", gate.url)).bearer_auth(&secrets.viewer),
            http.post(format!("{base}/batches/1/begin")).bearer_auth(&secrets.requester).json(&serde_json::json!({})),
            http.post(format!("{base}/batches/1/complete"))
                .bearer_auth(&secrets.requester)
                .json(&serde_json::json!({})),
            http.post(format!("{base}/resume")).bearer_auth(&secrets.operator).json(&serde_json::json!({})),
            http.post(format!("{base}/abort")).bearer_auth(&secrets.operator).json(&serde_json::json!({})),
        ];
        for ask in asks {
            let r = ask.send().await.unwrap();
            let (url, status) = (r.url().clone(), r.status());
            let body: serde_json::Value = r.json().await.unwrap();
            assert_eq!(status, 404, "{url}: {body}");
            assert!(body["error"].as_str().is_some_and(|e| e.starts_with("no change")), "{url}: {body}");
        }
    }
    gate.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_no_change_has_sqlite() {
    ids_no_change_has_are_not_found(&format!("sqlite://{}", temp_dir("gate-ids").join("gate.db").display())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_no_change_has_postgres() {
    let Some(db) = common::postgres_db().await else { return };
    ids_no_change_has_are_not_found(&db).await;
}

/// What the gate's OpenAPI document refuses, the gate refuses with a JSON 400 (or a 404 for a
/// batch or change that is not there), and nothing is recorded; what it allows is taken. Each was
/// a defect schemathesis found: an array read as a scope, a domain without its cluster halting
/// the fleet, a NUL in a breaker's scope reaching PostgreSQL, a batch number past the change's,
/// a soak of `600.0` refused.
async fn input_the_document_refuses(db: &str) {
    let secrets = Secrets::new();
    let mut policy = cordons(10, Duration::from_secs(60));
    policy.operations.insert(Operation::CanaryBatch, OperationPolicy::default());
    let gate = Server::start(db, &policy, &secrets).await;
    let http = reqwest::Client::new();
    let url = &gate.url;
    let post = |path: &str, token: &str, body: serde_json::Value| {
        http.post(format!("{url}{path}")).bearer_auth(token.to_owned()).json(&body).send()
    };
    use serde_json::json;
    let refused = [
        ("/api/v1/halts", json!({"scope": [null, null], "reason": "r"})),
        ("/api/v1/halts", json!({"scope": {"domain": ["rack", "r1"]}, "reason": "r"})),
        ("/api/v1/halts", json!({"scope": {"cluster": "c1", "zone": "a"}, "reason": "r"})),
        ("/api/v1/halts", json!({"scope": {}, "operation": ["reboot"], "reason": "typo: operations"})),
        ("/api/v1/breakers/reset", json!({"operation": "cordon", "scope": {"cluster": "c\u{0}1"}})),
        ("/api/v1/permits", json!(["cordon", "c1", "n1", "test"])),
        (
            "/api/v1/permits",
            json!({"operation": "cordon", "cluster": "c1", "node": "n1", "requester": "t", "nodes": []}),
        ),
        (
            "/api/v1/permits",
            json!({"operation": "cordon", "cluster": "c1", "node": "n1", "requester": "t", "domains": {"bad key!": "a"}}),
        ),
        (
            "/api/v1/changes",
            json!({"id": "up", "kind": "k", "owner": "o", "cluster": "c1", "batches": ["+5"], "soak_s": 0}),
        ),
        (
            "/api/v1/changes",
            json!({"id": "up", "kind": "k", "owner": "o", "cluster": "C1", "batches": [1], "soak_s": 0}),
        ),
    ];
    for (path, body) in refused {
        let r = post(path, &secrets.operator, body.clone()).await.unwrap();
        let status = r.status();
        let answer: serde_json::Value = r.json().await.unwrap();
        assert_eq!(status, 400, "{path} {body}: {answer}");
        assert!(answer["error"].as_str().is_some_and(|e| !e.is_empty()), "{path} {body}: {answer}");
    }
    let halts = common::get_json_as(&secrets.viewer, &format!("{url}/api/v1/halts")).await.unwrap();
    assert_eq!(halts, json!([]), "nothing was halted");
    // Unknown query parameters (a misspelt `limit` or `change`) are refused too, not ignored.
    for q in ["decisions?limt=5", "changes?limt=5", "verdict?cluster=c1&chnage=up"] {
        let r = http.get(format!("{url}/api/v1/{q}")).bearer_auth(&secrets.viewer).send().await.unwrap();
        assert_eq!(r.status(), 400, "{q}");
        assert!(r.json::<serde_json::Value>().await.unwrap()["error"].is_string(), "{q}");
    }
    let r = http
        .post(format!("{url}/api/v1/permits/not-a-uuid/renew"))
        .bearer_auth(&secrets.requester)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.json::<serde_json::Value>().await.unwrap()["error"].is_string(), "a path's error is JSON too");
    // Taken: a soak written 600.0 (an integer to JSON Schema), sizes between spaces.
    let change = json!({"id": "up", "kind": "k", "owner": "o", "cluster": "c1", "batches": [" 1 ", "50%", 7.0], "soak_s": 600.0});
    let r = post("/api/v1/changes", &secrets.requester, change).await.unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    for n in [0, 4, 101] {
        let r = post(&format!("/api/v1/changes/up/batches/{n}/begin"), &secrets.requester, json!({})).await.unwrap();
        assert_eq!(r.status(), 404, "batch {n}");
        assert!(r.text().await.unwrap().contains(&format!("no batch {n}")));
    }
    let r = http
        .get(format!("{url}/api/v1/verdict?cluster=c2&change=up"))
        .bearer_auth(&secrets.viewer)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404, "the change is in c1, not c2");
    gate.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn input_the_document_refuses_sqlite() {
    input_the_document_refuses(&format!("sqlite://{}", temp_dir("gate-input").join("gate.db").display())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn input_the_document_refuses_postgres() {
    let Some(db) = common::postgres_db().await else { return };
    input_the_document_refuses(&db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn budget_of_ten_holds_exactly_across_two_replicas_on_postgres() {
    let Some(db) = common::postgres_db().await else { return };
    let secrets = Secrets::new();
    let policy = cordons(10, Duration::from_secs(600));
    let a = Server::start(&db, &policy, &secrets).await;
    let b = Server::start(&db, &policy, &secrets).await;
    assert_eq!(storm(&[a.url.clone(), b.url.clone()], &secrets.requester).await, 10);
    assert_eq!(active(&a.url, &secrets.viewer).await.len(), 10);
    assert_eq!(active(&b.url, &secrets.viewer).await.len(), 10, "both replicas see the same permits");
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_gate_knows_its_permits_and_abandoned_ones_expire() {
    let secrets = Secrets::new();
    let db = format!("sqlite://{}", temp_dir("gate-restart").join("gate.db").display());
    let policy = cordons(2, Duration::from_secs(3));
    let http = reqwest::Client::new();
    let gate = Server::start(&db, &policy, &secrets).await;
    for n in ["n1", "n2"] {
        let r: PermitResponse = ask(&http, &gate.url, &secrets.requester, &request(n)).await.json().await.unwrap();
        assert!(r.granted, "{r:?}");
    }
    gate.stop().await;

    // Restarted: the budget is still used by the two permits.
    let gate = Server::start(&db, &policy, &secrets).await;
    let r: PermitResponse = ask(&http, &gate.url, &secrets.requester, &request("n3")).await.json().await.unwrap();
    assert!(!r.granted);
    assert_eq!((r.limit.as_deref(), r.measured, r.threshold), (Some("in_flight"), Some(2.0), Some(2.0)));
    // Nobody renews them: they expire, are counted as abandoned, and the budget frees.
    let granted = wait_for("the abandoned permits to expire", Duration::from_secs(15), || async {
        let r: PermitResponse = ask(&http, &gate.url, &secrets.requester, &request("n3")).await.json().await.ok()?;
        r.granted.then_some(r)
    })
    .await;
    assert!(granted.permit_id.is_some());
    let metrics_url = format!("{}/metrics", gate.url);
    wait_for("both counted as abandoned", Duration::from_secs(10), || async {
        let text = http.get(&metrics_url).bearer_auth(&secrets.viewer).send().await.ok()?.text().await.ok()?;
        text.contains("firebreak_gate_permits_abandoned_total{operation=\"cordon\"} 2").then_some(())
    })
    .await;
    gate.stop().await;
}

/// Grants 60 permits, then, all at once: 40 released twice by their holder, renewed by
/// another requester and released by ids nobody was granted; the other 20 renewed by their
/// holder and by an operator. Renewals and releases that arrive together are decided together
/// (a batch reads the permits it names at once and writes what changed at once): each must
/// still settle as if it came alone.
async fn renewals_and_releases_at_once(urls: &[String], secrets: &Secrets) {
    let http = reqwest::Client::builder().pool_max_idle_per_host(64).build().unwrap();
    let mut ids = Vec::new();
    for i in 0..60 {
        let r: PermitResponse =
            ask(&http, &urls[0], &secrets.requester, &request(&format!("n{i:02}"))).await.json().await.unwrap();
        ids.push((r.permit_id.unwrap(), r.expires_at.unwrap()));
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
    let mut tasks = Vec::new();
    for (i, (id, _)) in ids.iter().enumerate() {
        let url = urls[i % urls.len()].clone();
        let permit = format!("{url}/api/v1/permits/{id}");
        let calls = if i < 40 {
            vec![
                ("release", "DELETE", permit.clone(), &secrets.requester),
                ("release", "DELETE", permit.clone(), &secrets.requester),
                ("not-yours", "POST", format!("{permit}/renew"), &secrets.other),
                ("unknown", "DELETE", format!("{url}/api/v1/permits/{}", uuid::Uuid::now_v7()), &secrets.requester),
            ]
        } else {
            vec![
                ("renew", "POST", format!("{permit}/renew"), &secrets.requester),
                ("renew", "POST", format!("{permit}/renew"), &secrets.operator),
            ]
        };
        for (what, method, url, token) in calls {
            let (http, token) = (http.clone(), token.clone());
            tasks.push(tokio::spawn(async move {
                let r = match method {
                    "DELETE" => http.delete(&url).bearer_auth(token).send().await.unwrap(),
                    _ => http.post(&url).bearer_auth(token).send().await.unwrap(),
                };
                (i, what, r.status().as_u16())
            }));
        }
    }
    let mut released = vec![0; 40];
    for t in tasks {
        match t.await.unwrap() {
            (i, "release", 200) => released[i] += 1,
            (_, "release", code) => assert_eq!(code, 410, "a second release finds the permit ended"),
            (_, "not-yours", code) => assert!([403, 410].contains(&code), "another requester's renewal: {code}"),
            (_, "unknown", code) => assert_eq!(code, 404),
            (_, "renew", code) => assert_eq!(code, 200),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(released, vec![1; 40], "every permit released exactly once");
    let left = active(&urls[0], &secrets.viewer).await;
    assert_eq!(left.len(), 20, "the renewed ones are still held: {left:?}");
    for (id, granted_expiry) in &ids[40..] {
        let p = left.iter().find(|p| p["id"] == id.to_string()).unwrap_or_else(|| panic!("{id} in {left:?}"));
        let expires: chrono::DateTime<chrono::Utc> = serde_json::from_value(p["expires_at"].clone()).unwrap();
        assert!(expires > *granted_expiry, "{id}: renewed to {expires}, granted until {granted_expiry}");
        assert_eq!(p["state"], "active");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn renewals_and_releases_at_once_settle_each_exactly_once_sqlite() {
    let secrets = Secrets::new();
    let db = format!("sqlite://{}", temp_dir("gate-settle").join("gate.db").display());
    let gate = Server::start(&db, &cordons(1000, Duration::from_secs(600)), &secrets).await;
    renewals_and_releases_at_once(std::slice::from_ref(&gate.url), &secrets).await;
    gate.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn renewals_and_releases_at_once_settle_each_exactly_once_across_two_replicas_on_postgres() {
    let Some(db) = common::postgres_db().await else { return };
    let secrets = Secrets::new();
    let policy = cordons(1000, Duration::from_secs(600));
    let a = Server::start(&db, &policy, &secrets).await;
    let b = Server::start(&db, &policy, &secrets).await;
    renewals_and_releases_at_once(&[a.url.clone(), b.url.clone()], &secrets).await;
    a.stop().await;
    b.stop().await;
}

/// A rate of one cordon a minute per cluster after a burst of three: 40 requests at once on
/// each of two clusters get three permits each, and the budget's state (written by the batch
/// that spent it, every scope in one statement) outlives a restart of the gate.
async fn rate_budget_outlives_a_restart(db: &str) {
    let secrets = Secrets::new();
    let policy = Policy {
        operations: BTreeMap::from([(
            Operation::Cordon,
            OperationPolicy {
                cluster: Some(Limits {
                    rate_per_minute: std::num::NonZeroU32::new(1),
                    burst: std::num::NonZeroU32::new(3),
                    ..Limits::default()
                }),
                ..OperationPolicy::default()
            },
        )]),
        ..Policy::default()
    };
    let on = |cluster: &str, node: String| PermitRequest { cluster: cluster.into(), ..request(&node) };
    let http = reqwest::Client::builder().pool_max_idle_per_host(64).build().unwrap();
    let gate = Server::start(db, &policy, &secrets).await;
    let tasks: Vec<_> = (0..80)
        .map(|i| {
            let (http, url, token) = (http.clone(), gate.url.clone(), secrets.requester.clone());
            let req = on(if i % 2 == 0 { "c1" } else { "c2" }, format!("n{i:02}"));
            tokio::spawn(async move {
                let r: PermitResponse = ask(&http, &url, &token, &req).await.json().await.unwrap();
                (req.cluster, r)
            })
        })
        .collect();
    let mut granted = BTreeMap::<String, usize>::new();
    for t in tasks {
        let (cluster, r) = t.await.unwrap();
        if r.granted {
            *granted.entry(cluster).or_default() += 1;
        } else {
            assert_eq!(r.limit.as_deref(), Some("rate"), "{r:?}");
        }
    }
    assert_eq!(granted, BTreeMap::from([("c1".to_owned(), 3), ("c2".to_owned(), 3)]));
    gate.stop().await;
    let gate = Server::start(db, &policy, &secrets).await;
    for cluster in ["c1", "c2"] {
        let r: PermitResponse =
            ask(&http, &gate.url, &secrets.requester, &on(cluster, "n99".into())).await.json().await.unwrap();
        assert!(!r.granted, "{cluster} after the restart: {r:?}");
        assert_eq!(r.limit.as_deref(), Some("rate"));
    }
    gate.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rate_budget_outlives_a_restart_sqlite() {
    rate_budget_outlives_a_restart(&format!("sqlite://{}", temp_dir("gate-rate").join("gate.db").display())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rate_budget_outlives_a_restart_postgres() {
    let Some(db) = common::postgres_db().await else { return };
    rate_budget_outlives_a_restart(&db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_and_roles_decide_who_may_do_what() {
    let secrets = Secrets::new();
    let db = format!("sqlite://{}", temp_dir("gate-auth").join("gate.db").display());
    // The policy names the fleet: a cluster outside it is a stranger.
    let policy = Policy { clusters: vec!["c1".into(), "c2".into()], ..cordons(5, Duration::from_secs(4)) };
    let gate = Server::start(&db, &policy, &secrets).await;
    let http = reqwest::Client::new();
    let url = &gate.url;

    // No token, or a wrong one: 401, on every route but /healthz and the API's document.
    assert_eq!(http.post(format!("{url}/api/v1/permits")).json(&request("n1")).send().await.unwrap().status(), 401);
    assert_eq!(ask(&http, url, "not-a-token", &request("n1")).await.status(), 401);
    for path in ["/api/v1/permits", "/api/v1/decisions", "/api/v1/status", "/metrics"] {
        assert_eq!(http.get(format!("{url}{path}")).send().await.unwrap().status(), 401, "{path}");
    }
    assert_eq!(http.get(format!("{url}/healthz")).send().await.unwrap().status(), 200);
    let doc = http.get(format!("{url}/api/v1/openapi.json")).send().await.unwrap();
    assert_eq!(doc.status(), 200);
    assert_eq!(doc.json::<serde_json::Value>().await.unwrap()["info"]["title"], "Firebreak gate");
    // A viewer reads but may not ask.
    assert_eq!(ask(&http, url, &secrets.viewer, &request("n1")).await.status(), 403);
    let r: PermitResponse = ask(&http, url, &secrets.requester, &request("n1")).await.json().await.unwrap();
    let id = r.permit_id.unwrap();
    let release = |token: &str| http.delete(format!("{url}/api/v1/permits/{id}")).bearer_auth(token.to_owned()).send();
    let renew =
        |token: &str| http.post(format!("{url}/api/v1/permits/{id}/renew")).bearer_auth(token.to_owned()).send();
    // A viewer releasing a permit: 403. Another requester: 403, naming the holder.
    assert_eq!(release(&secrets.viewer).await.unwrap().status(), 403);
    let other = release(&secrets.other).await.unwrap();
    assert_eq!(other.status(), 403);
    assert!(other.text().await.unwrap().contains("held by `remediator-a`"));
    assert_eq!(renew(&secrets.other).await.unwrap().status(), 403);
    // Its holder renews it: it lives on past its first TTL.
    let before = r.expires_at.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let renewed: serde_json::Value = renew(&secrets.requester).await.unwrap().json().await.unwrap();
    let after: chrono::DateTime<chrono::Utc> = serde_json::from_value(renewed["expires_at"].clone()).unwrap();
    assert!(after > before, "{before} -> {after}");
    // An operator may release anyone's; after that it is gone (410).
    assert_eq!(release(&secrets.operator).await.unwrap().status(), 200);
    assert_eq!(release(&secrets.requester).await.unwrap().status(), 410);
    assert_eq!(renew(&secrets.requester).await.unwrap().status(), 410);
    // Halts: operators only; a halt denies with its reason and survives a restart.
    let halt = serde_json::json!({"scope": {"cluster": "c1"}, "reason": "rack 7 power work"});
    let post_halt =
        |token: &str| http.post(format!("{url}/api/v1/halts")).bearer_auth(token.to_owned()).json(&halt).send();
    assert_eq!(post_halt(&secrets.requester).await.unwrap().status(), 403);
    let h: serde_json::Value = post_halt(&secrets.operator).await.unwrap().json().await.unwrap();
    gate.stop().await;
    let gate = Server::start(&db, &policy, &secrets).await;
    let url = &gate.url;
    let r: PermitResponse = ask(&http, url, &secrets.requester, &request("n2")).await.json().await.unwrap();
    assert_eq!(r.limit.as_deref(), Some("halt"));
    assert!(r.reason.contains("halted by ops") && r.reason.contains("rack 7 power work"), "{}", r.reason);
    let resume = format!("{url}/api/v1/halts/{}/resume", h["id"].as_str().unwrap());
    assert_eq!(http.post(&resume).bearer_auth(&secrets.requester).send().await.unwrap().status(), 403);
    assert_eq!(http.post(&resume).bearer_auth(&secrets.operator).send().await.unwrap().status(), 200);
    let r: PermitResponse = ask(&http, url, &secrets.requester, &request("n2")).await.json().await.unwrap();
    assert!(r.granted, "{r:?}");
    // Bad input is a clear 400, never stored.
    for bad in [
        serde_json::json!({"operation": "cordon", "cluster": "c1", "node": "", "requester": "x"}),
        serde_json::json!({"operation": "cordon", "cluster": "c1", "node": "a".repeat(300), "requester": "x"}),
        serde_json::json!({"operation": "cordon", "cluster": "C 1", "node": "n1", "requester": "x"}),
        serde_json::json!({"operation": "cordon", "cluster": "c1", "node": "n1", "requester": "x\u{1b}[31m"}),
        serde_json::json!({"operation": "explode", "cluster": "c1", "node": "n1", "requester": "x"}),
        serde_json::json!({"operation": "cordon", "cluster": "c9", "node": "n1", "requester": "x"}),
        serde_json::json!({"operation": "cordon", "cluster": "c1", "node": "n1\r\nx", "requester": "x"}),
        serde_json::json!({"operation": "cordon", "cluster": "c1", "node": "n1\u{202e}", "requester": "x"}),
        serde_json::json!({"operation": "cordon", "cluster": "c1", "node": "a".repeat(10_000), "requester": "x"}),
    ] {
        let r =
            http.post(format!("{url}/api/v1/permits")).bearer_auth(&secrets.requester).json(&bad).send().await.unwrap();
        assert_eq!(r.status(), 400, "{bad}");
        let body: serde_json::Value = r.json().await.unwrap();
        assert!(!body["error"].as_str().unwrap_or_default().is_empty(), "{bad}: a clear error");
    }
    let huge =
        serde_json::json!({"operation": "cordon", "cluster": "c1", "node": "n1", "requester": "x".repeat(2_000_000)});
    let r =
        http.post(format!("{url}/api/v1/permits")).bearer_auth(&secrets.requester).json(&huge).send().await.unwrap();
    assert_eq!(r.status(), 413);
    let stranger = http
        .post(format!("{url}/api/v1/permits"))
        .bearer_auth(&secrets.requester)
        .json(&serde_json::json!({"operation": "cordon", "cluster": "c9", "node": "n1", "requester": "x"}))
        .send()
        .await
        .unwrap();
    assert!(stranger.text().await.unwrap().contains("cluster `c9` is not in the fleet the policy names (c1, c2)"));
    let halt_stranger = serde_json::json!({"scope": {"cluster": "c9"}, "reason": "typo"});
    let r = http
        .post(format!("{url}/api/v1/halts"))
        .bearer_auth(&secrets.operator)
        .json(&halt_stranger)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    // The decision log stays bounded in bytes: every field of an entry is.
    let widest = serde_json::json!({"operation": "cordon", "cluster": "c1", "node": "n".repeat(253),
        "requester": "r".repeat(256), "domains": {"topology.kubernetes.io/zone": "z".repeat(63)}});
    for _ in 0..150 {
        let r = http
            .post(format!("{url}/api/v1/permits"))
            .bearer_auth(&secrets.requester)
            .json(&widest)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let log = http
        .get(format!("{url}/api/v1/decisions?limit=1000"))
        .bearer_auth(&secrets.viewer)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let entries = serde_json::from_slice::<Vec<serde_json::Value>>(&log).unwrap().len();
    assert!(entries >= 150 && log.len() < entries * 2048, "{} bytes for {entries} decisions", log.len());
    gate.stop().await;
}

/// With a certificate the gate speaks HTTPS only; clients trust it through `--gate-ca`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gate_serves_https_with_its_certificate() {
    let dir = temp_dir("gate-tls");
    let rcgen::CertifiedKey { cert, key_pair } = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let (cert_path, key_path) = (dir.join("gate.crt"), dir.join("gate.key"));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key_pair.serialize_pem()).unwrap();
    let tls = firebreak_plumbing::serve::Tls::load(&cert_path, &key_path).unwrap();
    let secrets = Secrets::new();
    let db = format!("sqlite://{}", dir.join("gate.db").display());
    let gate = Server::start_with(&db, &cordons(5, Duration::from_secs(60)), None, &secrets, Some(tls)).await;
    assert!(gate.url.starts_with("https://"));

    let trusting = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(cert.pem().as_bytes()).unwrap())
        .build()
        .unwrap();
    let r: PermitResponse = ask(&trusting, &gate.url, &secrets.requester, &request("n1")).await.json().await.unwrap();
    assert!(r.granted, "{r:?}");
    // Without the CA the certificate is not trusted; plain HTTP is not spoken.
    assert!(reqwest::Client::new().get(format!("{}/healthz", gate.url)).send().await.is_err());
    let plain = gate.url.replace("https://", "http://");
    let plain_ok = reqwest::get(format!("{plain}/healthz")).await.is_ok_and(|r| r.status().is_success());
    assert!(!plain_ok, "no plain HTTP on the HTTPS port");
    // The operator CLI with --gate-ca.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_firebreak"))
        .args(["gate", "permits", "-o", "json", "--gate-url", &gate.url, "--gate-ca"])
        .arg(&cert_path)
        .env("FIREBREAK_GATE_TOKEN", &secrets.viewer)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let permits: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(permits.len(), 1);
    gate.stop().await;
}

/// A token over its request rate (when the policy sets one) gets 429 with Retry-After; other
/// tokens are not affected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runaway_token_is_answered_429() {
    let secrets = Secrets::new();
    let db = format!("sqlite://{}", temp_dir("gate-api-rate").join("gate.db").display());
    let mut policy = cordons(100, Duration::from_secs(60));
    policy.api_rate_per_token = Some(firebreak_rate_limiter::ApiRate {
        per_second: std::num::NonZeroU32::new(1).unwrap(),
        burst: std::num::NonZeroU32::new(3).unwrap(),
    });
    let gate = Server::start(&db, &policy, &secrets).await;
    let http = reqwest::Client::new();
    for n in ["n1", "n2", "n3"] {
        assert_eq!(ask(&http, &gate.url, &secrets.requester, &request(n)).await.status(), 200, "within the burst");
    }
    let r = ask(&http, &gate.url, &secrets.requester, &request("n4")).await;
    assert_eq!(r.status(), 429);
    let retry: u64 = r.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=2).contains(&retry), "{retry}");
    assert!(r.text().await.unwrap().contains("token `remediator-a` is over its request rate"));
    assert_eq!(ask(&http, &gate.url, &secrets.other, &request("n5")).await.status(), 200, "other tokens go on");
    gate.stop().await;
}

/// The change protocol's edges, the Argo and Flagger answers for proceed and hold, and the
/// signed halt webhook.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn changes_verdicts_flagger_and_signed_halt_webhooks() {
    let (hook_url, mut got) = common::webhook_receiver().await;
    // SAFETY of the test: only this test reads this variable.
    unsafe { std::env::set_var("FIREBREAK_TEST_HOOK_SECRET", "s3cret") };
    let mut policy = cordons(10, Duration::from_secs(60));
    policy.operations.insert(Operation::CanaryBatch, OperationPolicy::default());
    policy.webhooks =
        vec![firebreak_rate_limiter::Webhook { url: hook_url, secret_env: "FIREBREAK_TEST_HOOK_SECRET".into() }];
    let secrets = Secrets::new();
    let db = format!("sqlite://{}/gate.db", temp_dir("gate-changes").display());
    let server = Server::start(&db, &policy, &secrets).await;
    let http = reqwest::Client::new();
    let post = |token: &str, path: &str, body: serde_json::Value| {
        http.post(format!("{}{path}", server.url)).bearer_auth(token).json(&body).send()
    };
    let change = serde_json::json!({"id": "upgrade-1", "kind": "runtime", "owner": "team-a", "cluster": "c1",
        "batches": [1, "100%"], "soak_s": 1});
    // Registering needs a requester; registering again is idempotent, differently is a conflict.
    assert_eq!(post(&secrets.viewer, "/api/v1/changes", change.clone()).await.unwrap().status(), 403);
    assert_eq!(post(&secrets.requester, "/api/v1/changes", change.clone()).await.unwrap().status(), 201);
    assert_eq!(post(&secrets.requester, "/api/v1/changes", change.clone()).await.unwrap().status(), 201);
    let mut other = change.clone();
    other["soak_s"] = 5.into();
    assert_eq!(post(&secrets.requester, "/api/v1/changes", other).await.unwrap().status(), 409);
    let mut bad = change.clone();
    bad["batches"] = serde_json::json!(["150%"]);
    bad["id"] = "upgrade-2".into();
    assert_eq!(post(&secrets.requester, "/api/v1/changes", bad).await.unwrap().status(), 400);
    // Batches go in turn; a batch is judged only after its soak.
    let begin = |n: u32| format!("/api/v1/changes/upgrade-1/batches/{n}/begin");
    let complete = |n: u32| format!("/api/v1/changes/upgrade-1/batches/{n}/complete");
    assert_eq!(post(&secrets.requester, &begin(2), serde_json::json!({})).await.unwrap().status(), 409);
    let a: serde_json::Value =
        post(&secrets.requester, &begin(1), serde_json::json!({})).await.unwrap().json().await.unwrap();
    assert_eq!(a["proceed"], true, "{a}");
    let a: serde_json::Value =
        post(&secrets.requester, &complete(1), serde_json::json!({})).await.unwrap().json().await.unwrap();
    assert_eq!(a["proceed"], false);
    assert!(a["reason"].as_str().unwrap().contains("soaking"), "{a}");
    assert!(a["retry_after_s"].as_u64().unwrap() >= 1);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let a: serde_json::Value =
        post(&secrets.requester, &complete(1), serde_json::json!({})).await.unwrap().json().await.unwrap();
    assert_eq!(a["proceed"], true, "{a}");
    assert_eq!(a["change"]["state"], "ready");
    assert_eq!(a["change"]["history"][0]["verdict"]["verdict"], "Successful");

    // Proceed: Argo's web provider reads Successful, Flagger gets 200.
    let verdict = format!("{}/api/v1/verdict?cluster=c1&change=upgrade-1", server.url);
    let v: serde_json::Value =
        http.get(&verdict).bearer_auth(&secrets.viewer).send().await.unwrap().json().await.unwrap();
    assert_eq!(v["verdict"], "Successful", "{v}");
    let flagger = format!("{}/api/v1/webhooks/flagger", server.url);
    let hook = |kind: &str, token: &str| {
        serde_json::json!({"name": "podinfo", "namespace": "test", "phase": "Progressing", "type": kind,
            "checksum": "abc", "metadata": {"cluster": "c1", "token": token}})
    };
    let ask = |body: serde_json::Value| http.post(&flagger).json(&body).send();
    assert_eq!(ask(hook("confirm-rollout", &secrets.viewer)).await.unwrap().status(), 200);
    assert_eq!(ask(hook("rollback", &secrets.viewer)).await.unwrap().status(), 403, "nothing to roll back");
    assert_eq!(ask(hook("confirm-rollout", "wrong")).await.unwrap().status(), 401);
    // Hostile or broken input: clear 4xx errors, nothing decided.
    let r = http.post(&flagger).body("{not json").header("content-type", "application/json").send().await.unwrap();
    assert_eq!(r.status(), 400);
    let no_cluster = serde_json::json!({"name": "p", "namespace": "t", "metadata": {"token": secrets.viewer}});
    assert_eq!(ask(no_cluster).await.unwrap().status(), 400);
    let mut evil = hook("confirm-rollout", &secrets.viewer);
    evil["metadata"]["cluster"] = "c1\u{1b}[31m\n".into();
    assert_eq!(ask(evil).await.unwrap().status(), 400);
    for q in ["cluster=C_1", "cluster=c1&change=nope", ""] {
        let r =
            http.get(format!("{}/api/v1/verdict?{q}", server.url)).bearer_auth(&secrets.viewer).send().await.unwrap();
        assert!(r.status() == 400 || r.status() == 404, "{q}: {}", r.status());
    }
    let mut evil = change.clone();
    evil["id"] = "../../etc".into();
    assert_eq!(post(&secrets.requester, "/api/v1/changes", evil).await.unwrap().status(), 400);
    let r = post(&secrets.requester, "/api/v1/changes/nope/batches/1/begin", serde_json::json!({})).await.unwrap();
    assert_eq!(r.status(), 404);
    // Hold: an operator halts canary batches in c1.
    let h = serde_json::json!({"scope": {"cluster": "c1"}, "operations": ["canary_batch"], "reason": "bad canary"});
    let halt: serde_json::Value = post(&secrets.operator, "/api/v1/halts", h).await.unwrap().json().await.unwrap();
    let v: serde_json::Value =
        http.get(&verdict).bearer_auth(&secrets.viewer).send().await.unwrap().json().await.unwrap();
    assert_eq!(v["verdict"], "Failed");
    assert!(v["reason"].as_str().unwrap().contains("bad canary"), "{v}");
    let r = ask(hook("confirm-rollout", &secrets.viewer)).await.unwrap();
    assert_eq!(r.status(), 403);
    assert!(r.text().await.unwrap().contains("bad canary"));
    assert_eq!(ask(hook("rollback", &secrets.viewer)).await.unwrap().status(), 200, "roll back");
    // ... and the next batch is denied with the halt's reason.
    let a: serde_json::Value =
        post(&secrets.requester, &begin(2), serde_json::json!({})).await.unwrap().json().await.unwrap();
    assert_eq!(a["proceed"], false);
    assert!(a["reason"].as_str().unwrap().contains("bad canary"), "{a}");

    // The webhook got the halt, signed over the exact body.
    let (sig, event, body) = tokio::time::timeout(Duration::from_secs(10), got.recv()).await.unwrap().unwrap();
    assert_eq!(event, "halted");
    assert_eq!(sig, firebreak_rate_limiter::signature(b"s3cret", &body));
    let sent: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(sent["halt"]["id"], halt["id"]);

    // Abort needs an operator.
    let abort = "/api/v1/changes/upgrade-1/abort";
    assert_eq!(post(&secrets.requester, abort, serde_json::json!({})).await.unwrap().status(), 403);
    let c: serde_json::Value =
        post(&secrets.operator, abort, serde_json::json!({})).await.unwrap().json().await.unwrap();
    assert_eq!(c["state"], "aborted");
    server.stop().await;
}

/// The gate's API holds to its OpenAPI document (`GET /api/v1/openapi.json`), as a tool that wrote
/// neither reads them: schemathesis (pinned; `.ci/test` installs it) generates requests from the
/// document alone, valid ones (which must be answered 2xx, or 404 for ids nothing has), invalid
/// ones (which must be refused with a 4xx: wrong types, names that are not DNS-1123, arrays for
/// objects, unknown fields, batch sizes out of range), sequences that follow the document's links
/// (register a change → begin its batch → complete it; a permit → renew → release; a halt →
/// resume), and every route without its token (401). Each answer's status, type and body must be
/// the document's, and none a 5xx. On both stores: PostgreSQL refuses a NUL in text that SQLite
/// takes.
async fn the_gate_holds_to_its_openapi_document(db: &str) {
    let Some(schemathesis) = common::schemathesis_tool() else { return };
    let dir = temp_dir("gate-contract");
    // A policy file, so that an admin's reload has one to read.
    let text = "permit_ttl = \"60s\"\nfailure_domains = [\"topology.kubernetes.io/zone\"]\n\
                [operations.cordon.cluster]\nmax_in_flight = 1000\n\
                [operations.drain.cluster]\nmax_in_flight = 1000\n\
                [operations.canary_batch.cluster]\nmax_in_flight = 1000\n";
    let path = dir.join("policy.toml");
    std::fs::write(&path, text).unwrap();
    let policy = Policy::parse(text).unwrap();
    let secrets = Secrets::new();
    let gate = Server::start_with(db, &policy, Some(path), &secrets, None).await;
    // A permit released or expired is gone (410): its documented answer when a sequence renews
    // or releases one that it released a step before.
    let config = r#"[[operations]]
include-path-regex = "^/api/v1/permits/\\{id\\}"
checks.positive_data_acceptance.expected-statuses = ["2xx", "401", "403", "404", "410", "429"]
"#;
    let (passed, report) = common::schemathesis(&schemathesis, &dir, &gate.url, &secrets.admin, config, &[]).await;
    assert!(passed, "schemathesis found the gate's API and its document apart:\n{report}");
    // schemathesis leaves out the route that serves the document.
    assert!(report.contains("Operations:       22 selected"), "every route was tried:\n{report}");
    gate.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_contract_sqlite() {
    the_gate_holds_to_its_openapi_document(&format!(
        "sqlite://{}",
        temp_dir("gate-contract").join("gate.db").display()
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_contract_postgres() {
    let Some(db) = common::postgres_db().await else { return };
    the_gate_holds_to_its_openapi_document(&db).await;
}
