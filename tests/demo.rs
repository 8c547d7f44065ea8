//! `firebreak demo`, the binary, as a user runs it: it starts, injects faults, and Ctrl-C
//! (SIGINT) stops it cleanly.

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

#[test]
fn demo_runs_injects_and_stops_cleanly_on_ctrl_c() {
    let dir = std::env::temp_dir().join(format!("firebreak-demo-{}", uuid::Uuid::now_v7().simple()));
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
        .arg(&dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut lines = Vec::new();
    while lines.iter().filter(|l: &&String| l.starts_with("injected ")).count() < 5 {
        lines.push(out.next().expect("the demo keeps printing").unwrap());
    }
    let ui =
        lines.iter().find_map(|l| l.trim().strip_prefix("event center (web UI): ")).expect("prints the UI address");
    assert!(ui.starts_with("http://127.0.0.1:") && !ui.ends_with(":0/"), "{ui}");
    for c in ["c1", "c2"] {
        let kubeconfig = dir.join("clusters").join(c).join("kubeconfig");
        assert!(lines.iter().any(|l| l.contains(&kubeconfig.display().to_string())), "prints {c}'s kubeconfig");
        assert!(kubeconfig.exists());
    }
    assert!(dir.join("event-center.db").exists());

    let interrupted = Instant::now();
    assert!(Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap().success());
    let status = child.wait().unwrap();
    let rest: Vec<String> = out.map(Result::unwrap).collect();
    assert!(status.success(), "clean exit after Ctrl-C: {status:?}");
    assert!(interrupted.elapsed() < Duration::from_secs(20), "stopped promptly");
    assert_eq!(rest.last().map(String::as_str), Some("stopping…"));
}
