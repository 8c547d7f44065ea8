//! Fault sources beyond the kernel log, each read from the host's files as the kernel serves
//! them (under `--host-root`) or from a program's exit code, every `--check-interval`:
//!
//! - EDAC memory controllers (`sys/devices/system/edac/mc/mc*/{ue_count,ce_count}`): an
//!   uncorrected error count above zero, or corrected errors growing by `ce_threshold` between two
//!   checks;
//! - mounts (`proc/mounts`): a filesystem the node needs that is not mounted, or mounted
//!   read-only;
//! - physical NICs (`sys/class/net/<if>` with a `device` link): link down (`operstate`,
//!   `carrier`), and their error counters (`statistics/rx_errors` + `tx_errors`) growing by
//!   `nic_error_threshold` between two checks;
//! - disks (`sys/block/<disk>` with a `device` link), when `smartctl` is installed: a SMART
//!   health self-assessment that says failing (`smartctl -H -j /dev/<disk>`);
//! - kubelet and container runtime health: their healthz URL (plain HTTP on the node) or their
//!   socket;
//! - custom plugins, node-problem-detector's contract: a program that exits 0 (ok), 1 (problem:
//!   its first output line says what) or 2 (unknown), killed after a timeout.
//!
//! A check returns findings, each with a stable key; a finding is published when it appears
//! (not again while it holds), and its id derives from the boot, the key and what was seen, so a
//! restarted agent's findings deduplicate downstream.

mod components;
mod disks;
mod edac;
mod mounts;
mod nics;
mod plugins;

use std::{collections::BTreeMap, path::Path, time::Duration};

pub use components::component_healthy;
pub use disks::{Smart, disks, smart_health};
pub use edac::edac;
pub use mounts::mounts;
pub use nics::{nic_errors, nics};
pub use plugins::{PluginStatus, run_plugin};

use firebreak_schema::{FaultKind, Severity};

/// The entries of a sysfs class directory (`sys/class/net`, `sys/block`) that hardware backs
/// (they have a `device` link), by name, sorted: virtual ones (`lo`, `veth*`, `loop*`, `dm-*`)
/// are left out. Name and directory.
pub(crate) fn physical(root: &Path, class_dir: &str) -> Vec<(String, std::path::PathBuf)> {
    let Ok(entries) = std::fs::read_dir(root.join(class_dir)) else { return Vec::new() };
    let mut out: Vec<(String, std::path::PathBuf)> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("device").exists())
        .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
        .collect();
    out.sort();
    out
}

/// A counter as sysfs serves it: one unsigned number and a newline.
pub(crate) fn sysfs_count(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// How running a check's program went.
pub(crate) enum Ran {
    /// It could not be started (not installed, not executable): why.
    NotStarted(String),
    /// It ran over its time and was killed, or could not be waited for: why.
    Failed(String),
    /// It exited: its status and output.
    Exited(std::process::Output),
}

/// Runs `program` with `args` (no input, its output kept), killed after `timeout`.
pub(crate) async fn run_program<'a>(program: &str, args: impl IntoIterator<Item = &'a str>, timeout: Duration) -> Ran {
    let child = tokio::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn();
    let child = match child {
        Ok(c) => c,
        Err(e) => return Ran::NotStarted(format!("cannot start {program}: {e}")),
    };
    match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Err(_) => Ran::Failed(format!("no answer within {}s; killed", timeout.as_secs())),
        Ok(Err(e)) => Ran::Failed(e.to_string()),
        Ok(Ok(out)) => Ran::Exited(out),
    }
}

/// One thing found wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// What it is about, stable while it holds (`edac/mc0/ue`, `mount//var/lib/kubelet`).
    pub key: String,
    /// What was seen, part of the event id (a count, a state).
    pub seen: String,
    /// The fault.
    pub kind: FaultKind,
    /// How urgent.
    pub severity: Severity,
    /// For people.
    pub message: String,
}

/// What the sources watch.
#[derive(Debug, Clone)]
pub struct Sources {
    /// Corrected errors per check that make a `MemoryCorrectable`.
    pub ce_threshold: u64,
    /// Mount points that must be mounted read-write.
    pub mounts: Vec<String>,
    /// Health endpoints (`http://127.0.0.1:10248/healthz`) or unix sockets of node components,
    /// by component name.
    pub components: BTreeMap<String, String>,
    /// Custom plugins: name and program (with arguments, split on spaces).
    pub plugins: Vec<(String, String)>,
    /// NIC errors (received plus sent) per check that make a `NicErrors`.
    pub nic_error_threshold: u64,
    /// The `smartctl` program (smartmontools); `None`: no SMART checks. A program that cannot
    /// be started (not installed) turns them off after saying so once.
    pub smartctl: Option<String>,
    /// How long a plugin, `smartctl` or a health probe may take.
    pub timeout: Duration,
}

impl Default for Sources {
    fn default() -> Self {
        Self {
            ce_threshold: 100,
            mounts: vec!["/".into(), "/var/lib/kubelet".into()],
            components: BTreeMap::from([
                ("kubelet".into(), "http://127.0.0.1:10248/healthz".into()),
                ("containerd".into(), "/run/containerd/containerd.sock".into()),
            ]),
            plugins: Vec::new(),
            nic_error_threshold: 100,
            smartctl: Some("smartctl".into()),
            timeout: Duration::from_secs(10),
        }
    }
}

/// The state the checks keep between two runs (corrected error and NIC error counts; whether
/// `smartctl` turned out to be missing).
#[derive(Debug, Default)]
pub struct Checker {
    ce: BTreeMap<String, u64>,
    nic_errors: BTreeMap<String, u64>,
    no_smartctl: bool,
}

impl Checker {
    /// Runs every check once; the findings that hold now.
    pub async fn check(&mut self, root: &Path, cfg: &Sources) -> Vec<Finding> {
        let mut out = Vec::new();
        for (mc, ue, ce) in edac(root) {
            if ue > 0 {
                out.push(Finding {
                    key: format!("edac/{mc}/ue"),
                    seen: ue.to_string(),
                    kind: FaultKind::MemoryUncorrectable,
                    severity: Severity::Critical,
                    message: format!("EDAC {mc}: {ue} uncorrected memory errors since boot (ue_count)"),
                });
            }
            let before = self.ce.insert(mc.clone(), ce);
            if let Some(b) = before
                && ce.saturating_sub(b) >= cfg.ce_threshold
            {
                out.push(Finding {
                    key: format!("edac/{mc}/ce"),
                    seen: ce.to_string(),
                    kind: FaultKind::MemoryCorrectable,
                    severity: Severity::Warning,
                    message: format!("EDAC {mc}: {} corrected memory errors since the last check ({b} → {ce})", ce - b),
                });
            }
        }
        if let Some(mounted) = mounts(root) {
            for point in &cfg.mounts {
                match mounted.get(point) {
                    None => out.push(Finding {
                        key: format!("mount/{point}"),
                        seen: "missing".into(),
                        kind: FaultKind::MountMissing,
                        severity: Severity::Critical,
                        message: format!("{point} is not mounted (proc/mounts)"),
                    }),
                    Some((fstype, true)) => out.push(Finding {
                        key: format!("mount/{point}"),
                        seen: "ro".into(),
                        kind: FaultKind::ReadonlyFilesystem,
                        severity: Severity::Critical,
                        message: format!("{point} ({fstype}) is mounted read-only (proc/mounts)"),
                    }),
                    Some(_) => {}
                }
            }
        }
        for (nic, up) in nics(root) {
            if !up {
                out.push(Finding {
                    key: format!("nic/{nic}"),
                    seen: "down".into(),
                    kind: FaultKind::NicDown,
                    severity: Severity::Critical,
                    message: format!("{nic}: link down (sys/class/net/{nic}/operstate)"),
                });
            }
        }
        for (nic, errors) in nic_errors(root) {
            let before = self.nic_errors.insert(nic.clone(), errors);
            if let Some(b) = before
                && errors.saturating_sub(b) >= cfg.nic_error_threshold
            {
                out.push(Finding {
                    key: format!("nic/{nic}/errors"),
                    seen: errors.to_string(),
                    kind: FaultKind::NicErrors,
                    severity: Severity::Warning,
                    message: format!(
                        "{nic}: {} receive and send errors since the last check ({b} → {errors}, sys/class/net/{nic}/statistics)",
                        errors - b
                    ),
                });
            }
        }
        if let Some(smartctl) = cfg.smartctl.as_deref().filter(|_| !self.no_smartctl) {
            for disk in disks(root) {
                let device = format!("/dev/{disk}");
                match smart_health(smartctl, &device, cfg.timeout).await {
                    Smart::Passed => {}
                    Smart::Failing => out.push(Finding {
                        key: format!("smart/{disk}"),
                        seen: "failing".into(),
                        kind: FaultKind::DiskFailing,
                        severity: Severity::Critical,
                        message: format!("{device}: SMART overall-health self-assessment says FAILED (smartctl -H)"),
                    }),
                    Smart::Unknown(why) => tracing::debug!(%device, why, "no SMART verdict"),
                    Smart::Missing(why) => {
                        tracing::info!(why, "no smartctl: disks' SMART health is not checked");
                        self.no_smartctl = true;
                        break;
                    }
                }
            }
        }
        for (component, target) in &cfg.components {
            if let Err(why) = component_healthy(root, target, cfg.timeout).await {
                out.push(Finding {
                    key: format!("component/{component}"),
                    seen: "unhealthy".into(),
                    kind: if component == "kubelet" { FaultKind::KubeletDown } else { FaultKind::ComponentDown },
                    severity: if component == "kubelet" { Severity::Critical } else { Severity::Warning },
                    message: format!("{component} is not healthy: {why}"),
                });
            }
        }
        for (name, program) in &cfg.plugins {
            match run_plugin(program, cfg.timeout).await {
                PluginStatus::Ok => {}
                PluginStatus::Problem(what) => out.push(Finding {
                    key: format!("plugin/{name}"),
                    seen: "problem".into(),
                    kind: FaultKind::PluginProblem,
                    severity: Severity::Warning,
                    message: format!("plugin {name}: {what}"),
                }),
                PluginStatus::Unknown(why) => tracing::warn!(plugin = %name, why, "plugin status unknown"),
            }
        }
        out
    }
}

/// Host roots laid out as the kernel serves them, for the sources' tests.
#[cfg(test)]
pub(crate) mod testing {
    use std::path::Path;

    /// A fresh, empty host root, removed when dropped.
    pub(crate) struct Root(tempfile::TempDir);

    impl std::ops::Deref for Root {
        type Target = Path;

        fn deref(&self) -> &Path {
            self.0.path()
        }
    }

    /// A fresh, empty host root.
    pub(crate) fn root(name: &str) -> Root {
        Root(tempfile::Builder::new().prefix(&format!("firebreak-sources-{name}-")).tempdir().unwrap())
    }

    /// Writes a file under the root, making its directories.
    pub(crate) fn write(root: &Path, file: &str, text: &str) {
        let p = root.join(file);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    /// A plugin script, run as `sh FILE` (the command), in a directory that goes with the
    /// returned root.
    pub(crate) fn script(name: &str, body: &str) -> (Root, String) {
        let dir = root(&format!("plugin-{name}"));
        let path = dir.join("check.sh");
        std::fs::write(&path, body).unwrap();
        let command = format!("sh {}", path.display());
        (dir, command)
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{root, script, write};
    use super::*;

    fn quiet() -> Sources {
        Sources { components: Default::default(), mounts: Vec::new(), smartctl: None, ..Default::default() }
    }

    #[tokio::test]
    async fn nic_errors_count_by_their_growth() {
        let r = root("nic-errors");
        write(&r, "sys/class/net/eth0/operstate", "up\n");
        write(&r, "sys/class/net/eth0/device/vendor", "0x8086\n");
        write(&r, "sys/class/net/eth0/statistics/rx_errors", "40\n");
        write(&r, "sys/class/net/eth0/statistics/tx_errors", "2\n");
        write(&r, "sys/class/net/veth9/statistics/rx_errors", "999999\n");
        write(&r, "sys/class/net/veth9/statistics/tx_errors", "0\n");
        assert_eq!(nic_errors(&r), [("eth0".into(), 42)], "physical NICs only");
        let mut c = Checker::default();
        let cfg = quiet();
        assert!(c.check(&r, &cfg).await.is_empty(), "a first count is a baseline, not a fault");
        write(&r, "sys/class/net/eth0/statistics/rx_errors", "90\n");
        assert!(c.check(&r, &cfg).await.is_empty(), "48 more errors: under the threshold");
        write(&r, "sys/class/net/eth0/statistics/tx_errors", "150\n");
        let found = c.check(&r, &cfg).await;
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(
            (found[0].kind, found[0].key.as_str(), found[0].seen.as_str()),
            (FaultKind::NicErrors, "nic/eth0/errors", "240")
        );
        assert!(found[0].message.contains("148 receive and send errors"), "{}", found[0].message);
    }

    #[tokio::test]
    async fn smart_says_which_disk_is_failing_and_its_absence_is_no_fault() {
        let r = root("smart");
        for disk in ["sda", "sdb", "nvme0n1"] {
            write(&r, &format!("sys/block/{disk}/device/model"), "SIM\n");
        }
        write(&r, "sys/block/loop0/size", "0\n");
        assert_eq!(disks(&r), ["nvme0n1", "sda", "sdb"], "physical disks only");
        // A smartctl that answers as smartmontools 7 does with -j.
        let bin = r.join("smartctl");
        std::fs::write(
            &bin,
            "#!/bin/sh\ncase \"$3\" in\n\
             /dev/sdb) echo '{\"smartctl\":{\"exit_status\":8},\"smart_status\":{\"passed\":false}}'; exit 8;;\n\
             /dev/sda) echo '{\"smartctl\":{\"exit_status\":0},\"smart_status\":{\"passed\":true}}'; exit 0;;\n\
             *) echo '{\"smartctl\":{\"messages\":[{\"string\":\"Unable to detect device type\"}]}}'; exit 1;;\n\
             esac\n",
        )
        .unwrap();
        std::fs::set_permissions(&bin, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let t = Duration::from_secs(5);
        let smartctl = bin.display().to_string();
        assert_eq!(smart_health(&smartctl, "/dev/sda", t).await, Smart::Passed);
        assert_eq!(smart_health(&smartctl, "/dev/sdb", t).await, Smart::Failing);
        assert_eq!(
            smart_health(&smartctl, "/dev/nvme0n1", t).await,
            Smart::Unknown("Unable to detect device type".into())
        );
        let mut c = Checker::default();
        let found = c.check(&r, &Sources { smartctl: Some(smartctl), ..quiet() }).await;
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(
            (found[0].kind, found[0].key.as_str(), found[0].severity),
            (FaultKind::DiskFailing, "smart/sdb", Severity::Critical)
        );
        // No smartctl on the node: nothing found, and not asked again.
        let mut c = Checker::default();
        let none = Sources { smartctl: Some("/nonexistent/smartctl".into()), ..quiet() };
        assert!(c.check(&r, &none).await.is_empty());
        assert!(c.no_smartctl);
    }

    #[tokio::test]
    async fn the_checks_find_what_is_wrong_and_corrected_errors_by_their_growth() {
        let r = root("check");
        write(&r, "sys/devices/system/edac/mc/mc0/ue_count", "0\n");
        write(&r, "sys/devices/system/edac/mc/mc0/ce_count", "5\n");
        write(&r, "proc/mounts", "/dev/sda1 / ext4 rw 0 0\n");
        write(&r, "sys/class/net/eth0/operstate", "down\n");
        write(&r, "sys/class/net/eth0/device/vendor", "0x8086\n");
        // A component healthz served by a one-shot HTTP server; containerd's socket is missing.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            while let Ok((mut s, _)) = listener.accept().await {
                let mut buf = [0u8; 512];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await;
            }
        });
        let (_plugin, ntp) = script("ntp", "echo drift\nexit 1\n");
        let cfg = Sources {
            ce_threshold: 100,
            mounts: vec!["/".into(), "/var/lib/kubelet".into()],
            components: BTreeMap::from([
                ("kubelet".into(), format!("http://{addr}/healthz")),
                ("containerd".into(), "/run/containerd/containerd.sock".into()),
            ]),
            plugins: vec![("ntp".into(), ntp)],
            timeout: Duration::from_secs(2),
            ..quiet()
        };
        let mut checker = Checker::default();
        let keys = |f: &[Finding]| f.iter().map(|f| (f.key.clone(), f.kind)).collect::<Vec<_>>();
        let first = checker.check(&r, &cfg).await;
        assert_eq!(
            keys(&first),
            [
                ("mount//var/lib/kubelet".to_owned(), FaultKind::MountMissing),
                ("nic/eth0".to_owned(), FaultKind::NicDown),
                ("component/containerd".to_owned(), FaultKind::ComponentDown),
                ("plugin/ntp".to_owned(), FaultKind::PluginProblem),
            ]
        );
        write(&r, "sys/devices/system/edac/mc/mc0/ce_count", "205\n");
        write(&r, "sys/devices/system/edac/mc/mc0/ue_count", "1\n");
        let second = checker.check(&r, &cfg).await;
        let edac: Vec<_> = second.iter().filter(|f| f.key.starts_with("edac/")).collect();
        assert_eq!(edac.len(), 2, "{second:?}");
        assert_eq!((edac[0].kind, edac[0].seen.as_str()), (FaultKind::MemoryUncorrectable, "1"));
        assert_eq!((edac[1].kind, edac[1].seen.as_str()), (FaultKind::MemoryCorrectable, "205"));
        assert!(edac[1].message.contains("200 corrected memory errors since the last check (5 → 205)"));
    }
}
