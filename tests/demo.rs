//! `firebreak demo`, the binary, as a user runs it: it starts, injects faults, and Ctrl-C
//! (SIGINT) stops it cleanly; started again on the same data directory, it starts afresh.

mod common;

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

/// A `firebreak demo` on `dir`, with what it printed until its fifth injected fault.
fn demo(
    dir: &std::path::Path,
) -> (std::process::Child, std::io::Lines<BufReader<std::process::ChildStdout>>, Vec<String>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_firebreak"))
        .args(["demo", "--clusters", "2", "--nodes-per-cluster", "3", "--fault-every", "1s"])
        .args([
            "--listen",
            "127.0.0.1:0",
            "--gate-listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut lines = Vec::new();
    while lines.iter().filter(|l: &&String| l.starts_with("injected ")).count() < 5 {
        lines.push(out.next().expect("the demo keeps printing").unwrap());
    }
    (child, out, lines)
}

/// Ctrl-C: a clean exit, promptly.
fn interrupt(mut child: std::process::Child, out: std::io::Lines<BufReader<std::process::ChildStdout>>) {
    let interrupted = Instant::now();
    assert!(Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap().success());
    let status = child.wait().unwrap();
    let rest: Vec<String> = out.map(Result::unwrap).collect();
    assert!(status.success(), "clean exit after Ctrl-C: {status:?}");
    assert!(interrupted.elapsed() < Duration::from_secs(20), "stopped promptly");
    assert_eq!(rest.last().map(String::as_str), Some("stopping…"));
}

#[test]
fn demo_runs_injects_and_stops_cleanly_on_ctrl_c() {
    let dir = common::temp_dir("demo");
    let (child, out, lines) = demo(&dir);
    let ui =
        lines.iter().find_map(|l| l.trim().strip_prefix("event center (web UI): ")).expect("prints the UI address");
    assert!(ui.starts_with("http://127.0.0.1:") && !ui.ends_with(":0/"), "{ui}");
    for c in ["c1", "c2"] {
        let kubeconfig = dir.join("clusters").join(c).join("kubeconfig");
        assert!(lines.iter().any(|l| l.contains(&kubeconfig.display().to_string())), "prints {c}'s kubeconfig");
        assert!(kubeconfig.exists());
    }
    assert!(dir.join("event-center.db").exists());
    assert!(!lines.iter().any(|l| l.contains("fresh start")), "a first run has nothing to set aside");
    interrupt(child, out);

    // Started again on the same directory: a fresh start that says so. The clusters are made
    // anew, so the last run's workflows and permits are not resumed against them; its files are
    // kept aside, and a file the demo did not make is left where it was.
    std::fs::write(dir.join("notes.txt"), "mine").unwrap();
    let (child, out, lines) = demo(&dir);
    let kept = dir.join("previous-run");
    let said = lines.iter().find(|l| l.contains("fresh start")).expect("says it starts afresh");
    assert!(said.contains(&kept.display().to_string()), "{said}");
    assert!(kept.join("event-center.db").exists() && kept.join("clusters").join("c1").exists());
    assert!(dir.join("event-center.db").exists(), "a new event center database");
    assert_eq!(std::fs::read_to_string(dir.join("notes.txt")).unwrap(), "mine");
    interrupt(child, out);
}

fn firebreak(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_firebreak")).args(args).output().unwrap()
}

#[test]
fn check_policy_prints_the_effective_policy_or_names_the_line() {
    let dir = common::temp_dir("policy");
    let good = dir.join("good.toml");
    std::fs::write(&good, "[operations.cordon.cluster]\nmax_in_flight = 2\n").unwrap();
    let out = firebreak(&["gate", "check-policy", good.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("permit_ttl = \"10m\""), "defaults filled in:\n{text}");
    assert!(text.contains("max_in_flight = 2"), "{text}");
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "permit_ttl = \"5m\"\n\n[operations.cordon.cluster]\nmax_in_flight_percent = 250\n").unwrap();
    let out = firebreak(&["gate", "check-policy", bad.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.toml") && err.contains("line 4") && err.contains("250"), "{err}");
}

#[test]
fn the_gate_refuses_to_start_without_tokens() {
    let out = Command::new(env!("CARGO_BIN_EXE_firebreak"))
        .args(["gate", "serve", "--listen", "127.0.0.1:0"])
        .env_remove("FIREBREAK_GATE_TOKENS")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("the gate needs tokens"), "{out:?}");
    let out = firebreak(&["remediator", "--help"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("--gate-token"));
    let remediator = [
        "remediator",
        "--cluster",
        "c1",
        "--kubeconfig",
        "/nonexistent",
        "--kafka-brokers",
        "127.0.0.1:1",
        "--gate-token",
        "t",
    ];
    let out = firebreak(&[&remediator[..], &["--escalation-webhook", "http://127.0.0.1:1/hook"]].concat());
    assert!(!out.status.success(), "a webhook without its secret is refused");
    assert!(String::from_utf8_lossy(&out.stderr).contains("needs --escalation-webhook-secret"), "{out:?}");
    let out = firebreak(
        &[&remediator[..], &["--escalation-webhook", "ftp://x", "--escalation-webhook-secret", "s"]].concat(),
    );
    assert!(!out.status.success(), "only http(s) webhooks");
    for flag in ["reinstall-webhook", "ticket-webhook"] {
        let out = firebreak(&[&remediator[..], &[format!("--{flag}").as_str(), "http://127.0.0.1:1/hook"]].concat());
        assert!(!out.status.success(), "--{flag} without its secret is refused");
        assert!(String::from_utf8_lossy(&out.stderr).contains(&format!("needs --{flag}-secret")), "{out:?}");
    }
    let out = firebreak(&[&remediator[..], &["--lease-duration", "soon"]].concat());
    assert!(!out.status.success(), "a duration that is none is refused");
    // A broken remediation policy stops the remediator before it acts, naming the file and line.
    let dir = common::temp_dir("bad-policy");
    let policy = dir.join("bad.toml");
    std::fs::write(&policy, "[budget]\nattempts = 3\nwindow = \"1h\"\n[[process]]\nname = \"m\"\nkinds = [\"KernelHung\"]\nladder = [\"pray\"]\n").unwrap();
    let out = firebreak(&[&remediator[..], &["--policy", policy.to_str().unwrap()]].concat());
    assert!(!out.status.success(), "a broken policy is refused");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.toml") && err.contains("line 7") && err.contains("pray"), "{err}");
    let out = firebreak(&[&remediator[..], &["--policy", dir.join("missing.toml").to_str().unwrap()]].concat());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read"), "{out:?}");
    let out = firebreak(&["gate", "status", "--gate-url", "http://", "--token", "x"]);
    assert!(!out.status.success(), "a URL without a host is refused");
    assert!(String::from_utf8_lossy(&out.stderr).contains("has no host"), "{out:?}");
}

/// The benchmark in its smoke size: it runs and prints its table (the figures are not judged).
#[test]
fn bench_gate_runs_in_smoke_mode() {
    let base = std::env::var("FIREBREAK_TEST_POSTGRES").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into());
    let out = Command::new(env!("CARGO_BIN_EXE_firebreak"))
        .args(["bench", "gate", "--requests", "200", "--concurrency", "8", "--postgres", &base])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    for want in ["GET /healthz (bare)", "POST /api/v1/permits", "p99 ratio permit / bare"] {
        assert!(text.contains(want), "{want} in\n{text}");
    }
    // The PostgreSQL database it measured on is gone once it ends.
    let made = text.split_whitespace().find(|w| w.starts_with("fb_bench_")).map(|w| w.trim_end_matches(','));
    let Some(made) = made else {
        assert!(std::env::var("FIREBREAK_REQUIRE_POSTGRES").is_err(), "no PostgreSQL database named in\n{text}");
        eprintln!("SKIPPED the database check: no PostgreSQL at {base}");
        return;
    };
    let left: i64 = tokio::runtime::Runtime::new().unwrap().block_on(async {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(&format!("{base}/postgres")).await.unwrap();
        sqlx::query_scalar("SELECT count(*) FROM pg_database WHERE datname = $1")
            .bind(made)
            .fetch_one(&mut conn)
            .await
            .unwrap()
    });
    assert_eq!(left, 0, "{made} was dropped");
}

/// The ingest benchmark in its smoke size: every record reaches the event center's store on
/// SQLite and PostgreSQL, and the table compares it with the bare consumer.
#[test]
fn bench_ingest_runs_in_smoke_mode() {
    let out = Command::new(env!("CARGO_BIN_EXE_firebreak"))
        .args(["bench", "ingest", "--events", "300", "--clusters", "2", "--max-wait", "60s"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    for want in ["raw rdkafka consumer (baseline)", "event center, SQLite", "goal: event center / raw ≥ 0.5"] {
        assert!(text.contains(want), "{want} in\n{text}");
    }
}

/// `bench all` runs the benchmarks not skipped and ends with one table of their headline figures
/// against their goals (here the gate's alone: the others have their own smoke tests).
#[test]
fn bench_all_ends_with_one_table_of_figures_and_goals() {
    let mut args = vec!["bench", "all", "--smoke"];
    for other in ["ingest", "ui", "agent", "detect", "isolate", "scale", "fleet", "drain", "health"] {
        args.extend(["--skip", other]);
    }
    let out = Command::new(env!("CARGO_BIN_EXE_firebreak")).args(&args).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    let table = text.split("=== firebreak bench all --smoke").nth(1).unwrap_or_else(|| panic!("the table in\n{text}"));
    assert!(table.contains("permit p99 / bare route p99, SQLite") && table.contains("≤ 1.5"), "{table}");
    let bad = Command::new(env!("CARGO_BIN_EXE_firebreak")).args(["bench", "all", "--skip", "nope"]).output().unwrap();
    assert!(!bad.status.success() && String::from_utf8_lossy(&bad.stderr).contains("no such benchmark"));
}

/// The fleet benchmark in its smoke size: fleet-sim and the control plane run as processes of
/// their own, the heartbeats and faults reach the control plane (the event center stores the
/// faults and the remediators' steps, faulted nodes are cordoned and tainted), and the report
/// gives each process's figures and the lag.
#[test]
fn bench_fleet_runs_in_smoke_mode() {
    let out = Command::new(env!("CARGO_BIN_EXE_firebreak"))
        .args(["bench", "fleet", "--clusters", "2", "--nodes", "5", "--heartbeat", "1s"])
        .args(["--duration", "8s", "--sample-every", "2s"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    let number_after = |what: &str| -> u64 {
        let rest = text.split(what).nth(1).unwrap_or_else(|| panic!("{what} in\n{text}"));
        rest.split(|c: char| !c.is_ascii_digit()).find(|s| !s.is_empty()).unwrap().parse().unwrap()
    };
    assert!(number_after("heartbeats sent ") >= 10, "every node beat at least once:\n{text}");
    assert!(number_after("faults sent ") >= 3, "{text}");
    assert!(number_after("the event center stored ") >= 3, "the faults reached the control plane:\n{text}");
    assert!(number_after("watch of the node): ") >= 1, "a faulted node was cordoned and tainted:\n{text}");
    for want in
        ["control plane up in", "control plane: peak resident", "fleet-sim: peak resident", "consumer lag, mean"]
    {
        assert!(text.contains(want), "{want} in\n{text}");
    }
    let bad =
        Command::new(env!("CARGO_BIN_EXE_firebreak")).args(["bench", "fleet", "--clusters", "0"]).output().unwrap();
    assert!(
        !bad.status.success() && String::from_utf8_lossy(&bad.stderr).contains("must be more than zero"),
        "{bad:?}"
    );
}

/// The page's benchmark in its smoke size: the store is filled and every query is measured on
/// SQLite and PostgreSQL.
#[test]
fn bench_ui_runs_in_smoke_mode() {
    let out = Command::new(env!("CARGO_BIN_EXE_firebreak"))
        .args(["bench", "ui", "--events", "3000", "--nodes", "200", "--clusters", "4", "--queries", "3"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    for want in ["stored 3000 faults", "into 1000+ incidents", "board: fifth page", "node page (timeline)", "goal:"] {
        assert!(text.contains(want), "{want} in\n{text}");
    }
}

/// The detect and isolate benchmarks in their smoke sizes: every faulted node is seen cordoned
/// and tainted, and the tables say how fast.
#[test]
fn bench_detect_and_isolate_run_in_smoke_mode() {
    let out = Command::new(env!("CARGO_BIN_EXE_firebreak"))
        .args(["bench", "detect", "--clusters", "2", "--nodes", "6", "--faults", "4", "--idle", "1s"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("kernel log line → node cordoned and tainted") && text.contains("goal: p50"), "{text}");
    assert!(text.contains("the whole process") && text.contains("MiB"), "{text}");
    let out = Command::new(env!("CARGO_BIN_EXE_firebreak"))
        .args(["bench", "isolate", "--nodes", "12", "--faults", "8"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("nodes/s") && text.contains("goal: ≥ 100 nodes/s"), "{text}");
    assert!(text.contains("warm-up: one fault on") && text.contains("isolated in"), "{text}");
}

/// The health benchmark in its smoke size: a bad batch in one small cluster is halted by the
/// rule, and the table says when (the figures themselves are not judged).
#[test]
fn bench_health_runs_in_smoke_mode() {
    let out = Command::new(env!("CARGO_BIN_EXE_firebreak"))
        .args(["bench", "health", "--clusters", "1", "--nodes", "30", "--interval", "1s", "--batch", "20%"])
        .args(["--pod-lifetime", "4s", "--max-wait", "90s"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    for want in ["failure→halt", "runtime=bench-bad is 0 (min 90)", "build mean (ms)", "goal ≤ 2"] {
        assert!(text.contains(want), "{want} in\n{text}");
    }
    let bad = Command::new(env!("CARGO_BIN_EXE_firebreak"))
        .args(["bench", "health", "--min-pod-starts", "0"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--min-pod-starts must be at least 1"), "{bad:?}");
}

/// The drain benchmark in its smoke size: a few nodes drained under their budgets, and the table
/// says how long it took (the figures themselves are not judged); nonsense sizes are refused.
#[test]
fn bench_drain_runs_in_smoke_mode() {
    let out = Command::new(env!("CARGO_BIN_EXE_firebreak"))
        .args(["bench", "drain", "--nodes", "12", "--drain", "6", "--pods-per-node", "3", "--eviction-retry", "1s"])
        .args(["--max-wait", "2m"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    for want in ["faults → all 6 nodes drained", "faults → all 18 app pods Ready elsewhere", "the budgets' floor"] {
        assert!(text.contains(want), "{want} in\n{text}");
    }
    // Each app pod on a drained node was evicted (more, if replacements landed on a node not yet
    // cordoned when the faults arrived).
    let line = text.lines().find(|l| l.starts_with("evictions accepted")).unwrap_or_default();
    let accepted: u64 =
        line.split_whitespace().skip_while(|w| *w != "budgets").nth(1).and_then(|n| n.parse().ok()).unwrap_or(0);
    assert!(accepted >= 18, "{line}");
    let bad = Command::new(env!("CARGO_BIN_EXE_firebreak"))
        .args(["bench", "drain", "--nodes", "5", "--drain", "5"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("leave nodes for the pods"), "{bad:?}");
}

/// `firebreak topics` prints the topic contract; Kafka settings are checked at start-up: a
/// property librdkafka does not know, or a properties file with a line that is not
/// `key=value`, stops the service with a clear error before it runs blind.
#[test]
fn the_topic_contract_and_kafka_settings_checked_at_start() {
    let out = firebreak(&["topics", "--cluster", "c1", "--cluster", "c2", "-o", "json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let topics: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let names: Vec<&str> = topics.iter().filter_map(|t| t["name"].as_str()).collect();
    assert!(names.contains(&"firebreak.faults.v1.c1") && names.contains(&"firebreak.faults.v1.c2"), "{names:?}");
    assert!(names.contains(&"firebreak.node-commands.v1"), "{names:?}");
    let faults = topics.iter().find(|t| t["name"] == "firebreak.faults.v1.c1").unwrap();
    assert_eq!(faults["types"], serde_json::json!(["io.firebreak.fault.v1"]));
    assert_eq!(faults["writers"], "agent and detector of <cluster>");
    let bad = firebreak(&["topics", "--cluster", "Not A Name"]);
    assert!(!bad.status.success());

    let dir = common::temp_dir("kafka");
    let kubeconfig = dir.join("kubeconfig");
    std::fs::write(&kubeconfig, "apiVersion: v1\nkind: Config\n").unwrap();
    let detector = |extra: &[&str]| {
        let mut args = vec!["detector", "--cluster", "c1", "--kubeconfig", kubeconfig.to_str().unwrap()];
        args.extend(["--kafka-brokers", "127.0.0.1:1", "--metrics-listen", "127.0.0.1:0"]);
        args.extend(extra);
        let out = firebreak(&args);
        assert!(!out.status.success(), "{extra:?}: refused");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = detector(&["--kafka-option", "no.such.property=1"]);
    assert!(err.contains("Kafka options") && err.contains("no.such.property"), "{err}");
    let props = dir.join("kafka.properties");
    std::fs::write(&props, "# TLS\nsecurity.protocol=SSL\nthis line is wrong\n").unwrap();
    let err = detector(&["--kafka-config", props.to_str().unwrap()]);
    assert!(err.contains("kafka.properties:3: expected key=value"), "{err}");
    let err = detector(&["--topic-replication", "0"]);
    assert!(err.contains("--topic-replication"), "{err}");
    // A zero interval, timeout or window is refused with the flag named (a zero sample period
    // used to panic inside the timer, a zero lease duration to spin).
    for flag in ["--sample-every", "--not-ready-for", "--lease-duration", "--flapping-within"] {
        let err = detector(&[flag, "0s"]);
        assert!(err.contains(flag) && err.contains("must be more than zero"), "{flag}: {err}");
    }
    let err = detector(&["--pod-window", "5 parsecs"]);
    assert!(err.contains("--pod-window"), "{err}");
}

/// An agent started on a host root without the kernel log or the boot id, or with a node name
/// Kubernetes would refuse, exits non-zero saying what is missing instead of running blind.
#[test]
fn an_agent_refuses_a_host_root_without_its_files() {
    let root = common::temp_dir("root");
    std::fs::create_dir_all(root.join("dev")).unwrap();
    let agent = |node: &str| {
        let out = firebreak(&[
            "agent",
            "--cluster",
            "c1",
            "--node",
            node,
            "--kafka-brokers",
            "127.0.0.1:1",
            "--host-root",
            root.to_str().unwrap(),
            "--no-actuator",
        ]);
        assert!(!out.status.success(), "{node}: refused");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = agent("n1");
    assert!(err.contains(&format!("no {}", root.join("dev/kmsg").display())) && err.contains("kernel log"), "{err}");
    std::fs::write(root.join("dev/kmsg"), "").unwrap();
    let err = agent("n1");
    assert!(err.contains("proc/sys/kernel/random/boot_id"), "{err}");
    let err = agent("Node_1");
    assert!(err.contains("--node `Node_1` is not a DNS-1123 name"), "{err}");
    // A node-problem-detector rule file with a permanent rule naming no condition.
    std::fs::create_dir_all(root.join("proc/sys/kernel/random")).unwrap();
    std::fs::write(root.join("proc/sys/kernel/random/boot_id"), "b1\n").unwrap();
    let npd = root.join("kernel-monitor.json");
    std::fs::write(
        &npd,
        r#"{"source": "kernel-monitor", "rules": [{"type": "permanent", "reason": "R", "pattern": "x"}]}"#,
    )
    .unwrap();
    let out = firebreak(&[
        "agent",
        "--cluster",
        "c1",
        "--node",
        "n1",
        "--kafka-brokers",
        "127.0.0.1:1",
        "--host-root",
        root.to_str().unwrap(),
        "--no-actuator",
        "--rules",
        npd.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("kernel-monitor.json: rules[0] (R): a permanent rule names its condition"), "{err}");
}

/// `firebreak bench agent` in smoke mode: it runs the real `firebreak-agent` binary (built
/// beside `firebreak` by a workspace build) and prints its memory and CPU, idle and loaded,
/// with every fault it was fed delivered.
#[test]
fn bench_agent_runs_in_smoke_mode() {
    let agent = std::path::Path::new(env!("CARGO_BIN_EXE_firebreak")).with_file_name("firebreak-agent");
    assert!(agent.is_file(), "{} missing: build the workspace (cargo build --workspace)", agent.display());
    let out = firebreak(&["bench", "agent", "--idle", "1s", "--load", "2s", "--rate", "200"]);
    assert!(out.status.success(), "{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    let rss = text.lines().find(|l| l.starts_with("resident memory (VmRSS)")).unwrap_or_default();
    let idle: f64 = rss.split_whitespace().nth(3).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    assert!(idle > 1.0, "a real process's memory: {rss}");
    let line = text.lines().find(|l| l.starts_with("records written")).unwrap_or_default();
    let n: Vec<u64> = line.split(|c: char| !c.is_ascii_digit()).filter_map(|w| w.parse().ok()).collect();
    assert!(matches!(n[..], [w, f, d] if w >= 300 && f == w / 100 && d == f), "every fault delivered: {line}");
}

/// The event center's incident flags are checked before it starts: each out of range is a
/// usage error naming the flag, not a service that runs with nonsense.
#[test]
fn event_center_flags_out_of_range_are_refused() {
    for (flag, value) in [
        ("--correlate-nodes", "1"),
        ("--correlate-nodes", "x"),
        ("--correlate-window", "0s"),
        ("--retain-faults", "0"),
        ("--retain-for", "0s"),
        ("--resolve-quiet-after", "soon"),
    ] {
        // A database it cannot open: should the flag be taken, the run ends at once anyway.
        let out = firebreak(&["event-center", "--database-url", "sqlite:///nonexistent/dir/x.db", flag, value]);
        assert_eq!(out.status.code(), Some(2), "{flag} {value}: {out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(flag) && err.contains(value), "{flag} {value}: {err}");
    }
}

/// Benchmark flags that cannot make a run are refused before anything starts, naming the flag.
#[test]
fn bench_flags_out_of_range_are_refused() {
    for (args, names) in [
        (&["scale", "--sizes", "0"][..], "--sizes"),
        (&["scale", "--sizes="][..], "--sizes"),
        (&["scale", "--sizes", "4,x"][..], "--sizes"),
        (&["ui", "--db", "mysql"][..], "--db"),
        (&["ui", "--nodes", "0"][..], "--nodes"),
        (&["ingest", "--max-wait", "0s"][..], "--max-wait"),
        // Nothing listens there: said with the address, after the 10 s metadata wait.
        (&["ingest", "--events", "10", "--kafka-brokers", "127.0.0.1:1"][..], "cannot read the topics of 127.0.0.1:1"),
        // The same check before a simulated fleet starts.
        (
            &["isolate", "--nodes", "10", "--faults", "2", "--kafka-brokers", "127.0.0.1:1"][..],
            "cannot read the topics of 127.0.0.1:1",
        ),
        (&["fleet", "--fault-every", "0s"][..], "--fault-every"),
        (&["gate", "--concurrency", "0"][..], "--concurrency"),
        (&["gate", "--requests", "0"][..], "--requests"),
        (
            &[
                "control-plane",
                "--data-dir",
                "/nonexistent",
                "--kafka-brokers",
                "b",
                "--heartbeat",
                "1s",
                "--cluster",
                "c1",
            ][..],
            "NAME=KUBECONFIG",
        ),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_firebreak")).arg("bench").args(args).output().unwrap();
        assert!(!out.status.success(), "{args:?}: refused");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(names), "{args:?}: {err}");
        assert!(out.stdout.is_empty(), "{args:?}: nothing ran: {}", String::from_utf8_lossy(&out.stdout));
    }
}

/// The scale benchmark in its smoke size: `fleet` at two fleet sizes, each in its own processes,
/// then one table and the SVG plot of the control plane's memory and latency against nodes.
#[test]
fn bench_scale_runs_each_size_and_draws_the_plot() {
    let dir = common::temp_dir("scale");
    let plot = dir.join("scale.svg");
    let out = Command::new(env!("CARGO_BIN_EXE_firebreak"))
        .args(["bench", "scale", "--sizes", "4,8", "--nodes-per-cluster", "4", "--duration", "6s", "--heartbeat", "1s"])
        .arg("--plot")
        .arg(&plot)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    // The last table is scale's own (each size's `bench fleet` prints one too).
    let table = text.rsplit_once("control MiB").unwrap_or_else(|| panic!("the table in\n{text}")).1;
    let rows = table.lines().map(str::trim).filter(|l| l.starts_with("4 ") || l.starts_with("8 ")).count();
    assert_eq!(rows, 2, "a row per size: {table}");
    assert!(!table.contains("failed"), "{table}");
    let svg = std::fs::read_to_string(&plot).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("Resident memory") && svg.contains("p99"), "{svg}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A benchmark whose subject fails says that the benchmark failed and why, not that a flag
/// was wrong.
#[test]
fn a_benchmark_whose_subject_fails_says_so() {
    let out = firebreak(&["bench", "agent", "--agent-bin", "/bin/false", "--idle", "1s", "--load", "1s"]);
    assert!(!out.status.success(), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("benchmark failed: the agent exited (exit status: 1)"), "{err}");
    assert!(!err.contains("invalid argument"), "{err}");
}

/// `firebreak fleet-sim` refuses timings under which no node could stay Ready, and an empty
/// fleet, before it starts anything.
#[test]
fn fleet_sim_refuses_timings_that_cannot_hold() {
    let dir = common::temp_dir("sim-flags");
    for (args, says) in [
        (&["--heartbeat", "10s", "--unreachable-after", "5s"][..], "--unreachable-after must be longer"),
        (&["--heartbeat", "45s", "--unreachable-after", "90s"][..], "--heartbeat must be shorter than the node Leases"),
        (&["--tick", "2s"][..], "--tick must not be longer than --heartbeat"),
        (&["--clusters", "0"][..], "--clusters must be at least 1"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_firebreak"))
            .args(["fleet-sim", "--data-dir"])
            .arg(&dir)
            .args(args)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?}: {out:?}");
        assert!(String::from_utf8_lossy(&out.stderr).contains(says), "{args:?}: {out:?}");
        assert!(out.stdout.is_empty(), "{args:?}: no cluster started");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
