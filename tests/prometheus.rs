//! A PromQL-backed health rule against a real Prometheus (Debian's `prometheus`) that scrapes
//! Firebreak's own `/metrics`: a value it reads, a bound it breaks, and no data that fails as
//! the rule says.

mod common;

use std::time::Duration;

use common::{get_json_as, stack, temp_dir, wait_for};
use firebreak_rate_limiter::{HealthRule, NoData, PromQuery, RuleScope};
use firebreak_schema::Operation;

fn rule(name: &str, url: &str, query: &str, min: Option<f64>, max: Option<f64>, no_data: NoData) -> HealthRule {
    HealthRule {
        name: name.into(),
        signal: None,
        prometheus: Some(PromQuery { url: url.into(), query: query.into() }),
        scope: RuleScope::Cluster,
        min,
        max,
        max_drop_percent: None,
        max_rise: None,
        min_pod_starts: 5,
        consecutive: std::num::NonZeroU32::MIN,
        for_: Duration::ZERO,
        no_data,
        halts: vec![Operation::CanaryBatch],
        resume_after: None,
    }
}

struct Prometheus(std::process::Child);

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn promql_rules_read_a_real_prometheus() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let prom_url = format!("http://127.0.0.1:{port}");
    // Prometheus runs before the gate first asks it: a rule measured while it is still starting
    // is an Error, which halts as a failure does. Its scrape target comes from a file, written
    // once the stack's metrics address is known.
    let dir = temp_dir("prometheus-data");
    let config = dir.join("prometheus.yml");
    let targets = dir.join("targets.json");
    std::fs::write(&targets, "[]").unwrap();
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n- job_name: firebreak\n  file_sd_configs:\n  - files: ['{}']\n    refresh_interval: 1s\n",
            targets.display()
        ),
    )
    .unwrap();
    let child = std::process::Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!("--storage.tsdb.path={}", dir.join("tsdb").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(std::process::Stdio::null())
        .stderr(
            std::fs::File::create(dir.join("prometheus.log")).map(Into::into).unwrap_or(std::process::Stdio::null()),
        )
        .spawn()
        .expect("Debian's `prometheus` is installed (.ci/test installs it)");
    let _prometheus = Prometheus(child);
    let ready = format!("{prom_url}/-/ready");
    wait_for("Prometheus to be ready", Duration::from_secs(60), || async {
        reqwest::get(&ready).await.ok().filter(|r| r.status().is_success())
    })
    .await;
    let stack = stack("prometheus", |o| {
        o.sample_every = Duration::from_secs(1);
        o.policy.evaluate_every = Duration::from_millis(500);
        o.policy.health_rules = vec![
            rule(
                "pod-starts-prom",
                &prom_url,
                r#"min(firebreak_detector_pod_start_success_percent{cluster="{cluster}"})"#,
                Some(90.0),
                None,
                NoData::Fail,
            ),
            rule(
                "too-many-nodes",
                &prom_url,
                r#"sum(firebreak_detector_nodes{cluster="{cluster}"})"#,
                None,
                Some(2.0),
                NoData::Inconclusive,
            ),
            rule(
                "absent",
                &prom_url,
                r#"firebreak_no_such_metric{cluster="{cluster}"}"#,
                None,
                Some(1.0),
                NoData::Inconclusive,
            ),
        ];
    })
    .await;
    let target = stack.metrics_url.trim_start_matches("http://").to_owned();
    let staged = dir.join("targets.json.new");
    std::fs::write(&staged, format!(r#"[{{"targets": ["{target}"]}}]"#)).unwrap();
    std::fs::rename(&staged, &targets).unwrap();
    let viewer = stack.tokens.viewer.clone();
    let url = format!("{}/api/v1/verdict?cluster=c1", stack.gate_url);
    let v = wait_for("Prometheus to have scraped the detector", Duration::from_secs(60), || async {
        get_json_as(&viewer, &url)
            .await
            .filter(|v| {
                v["signals"].as_array().is_some_and(|s| {
                    s.iter().all(|m| m["message"].as_str().is_some_and(|t| !t.contains("not queried")))
                })
            })
            .filter(|v| v["signals"][0]["value"].is_number())
    })
    .await;
    let by = |name: &str| v["signals"].as_array().unwrap().iter().find(|m| m["rule"] == name).cloned().unwrap();
    // The success rate as Prometheus scraped it from the detector: all pods start.
    let ok = by("pod-starts-prom");
    assert_eq!(ok["phase"], "Successful", "{ok}");
    assert_eq!(ok["value"], 100.0);
    assert_eq!(ok["signal"], "promql");
    // Four nodes, more than the two allowed.
    let many = by("too-many-nodes");
    assert_eq!(many["phase"], "Failed", "{many}");
    assert_eq!(many["value"], 4.0);
    assert!(many["message"].as_str().unwrap().contains("above the maximum 2"), "{many}");
    // No series: inconclusive, as that rule says.
    let absent = by("absent");
    assert_eq!(absent["phase"], "Inconclusive", "{absent}");
    assert!(absent["message"].as_str().unwrap().contains("returned no series"), "{absent}");
    assert_eq!(v["verdict"], "Failed");
    // The failing rule halts canary batches in c1 by itself, with the measurement.
    let halts = format!("{}/api/v1/halts", stack.gate_url);
    let halt = wait_for("the rule's halt", Duration::from_secs(20), || async {
        get_json_as(&viewer, &halts).await?.as_array()?.iter().find(|h| h["source"] == "rule:too-many-nodes").cloned()
    })
    .await;
    assert_eq!(halt["scope"]["cluster"], "c1");
    assert_eq!(halt["signals"][0]["value"], 4.0, "{halt}");
    assert!(halt["reason"].as_str().unwrap().contains("health rule too-many-nodes failed"), "{halt}");
    // Prometheus gone: the rule cannot be measured, an Error.
    drop(_prometheus);
    let v = wait_for("an error without Prometheus", Duration::from_secs(20), || async {
        get_json_as(&viewer, &url).await.filter(|v| v["signals"][0]["phase"] == "Error")
    })
    .await;
    assert!(v["signals"][0]["message"].as_str().unwrap().contains("unreachable"), "{v}");
    stack.shutdown().await;
}
