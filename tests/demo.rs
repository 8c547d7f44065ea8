//! `firebreak demo`, the binary, as a user runs it: it starts, injects faults, serves the UI and
//! stops cleanly.

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
};

#[test]
fn demo_runs_injects_and_stops_cleanly() {
    let dir = std::env::temp_dir().join(format!("firebreak-demo-{}", uuid::Uuid::now_v7().simple()));
    let mut child = Command::new(env!("CARGO_BIN_EXE_firebreak"))
        .args(["demo", "--clusters", "2", "--nodes-per-cluster", "3", "--fault-every", "1s", "--run-for", "12s"])
        .args(["--listen", "127.0.0.1:0", "--gate-listen", "127.0.0.1:0", "--data-dir"])
        .arg(&dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let lines: Vec<String> = BufReader::new(child.stdout.take().unwrap()).lines().map(Result::unwrap).collect();
    let status = child.wait().unwrap();
    assert!(status.success(), "{lines:?}");
    let ui =
        lines.iter().find_map(|l| l.trim().strip_prefix("event center (web UI): ")).expect("prints the UI address");
    assert!(ui.starts_with("http://127.0.0.1:") && !ui.contains(":0/"), "{ui}");
    for c in ["c1", "c2"] {
        let kubeconfig = dir.join("clusters").join(c).join("kubeconfig");
        assert!(lines.iter().any(|l| l.contains(&kubeconfig.display().to_string())), "prints {c}'s kubeconfig");
        assert!(kubeconfig.exists());
    }
    assert!(lines.iter().filter(|l| l.starts_with("injected ")).count() >= 5, "{lines:?}");
    assert_eq!(lines.last().map(String::as_str), Some("stopping…"));
    assert!(dir.join("event-center.db").exists());
}
