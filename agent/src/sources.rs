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

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::Duration,
};

use firebreak_schema::{FaultKind, Severity};

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

/// EDAC counters: `(controller, ue, ce)`.
pub fn edac(root: &Path) -> Vec<(String, u64, u64)> {
    let dir = root.join("sys/devices/system/edac/mc");
    let Ok(entries) = std::fs::read_dir(&dir) else { return Vec::new() };
    let count = |p: PathBuf| std::fs::read_to_string(p).ok().and_then(|s| s.trim().parse::<u64>().ok());
    let mut out: Vec<(String, u64, u64)> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            if !name.starts_with("mc") || !name[2..].chars().all(|c| c.is_ascii_digit()) {
                return None;
            }
            Some((name, count(e.path().join("ue_count"))?, count(e.path().join("ce_count"))?))
        })
        .collect();
    out.sort();
    out
}

/// The host's mount table, mount point → (filesystem type, read-only): `proc/1/mounts` (the
/// host's init, seen with the host's PID namespace), else `proc/mounts` (`proc/self/mounts`:
/// the reader's own, right on a node without containers). Octal escapes (`\040` for a space)
/// are decoded as the kernel writes them.
pub fn mounts(root: &Path) -> Option<BTreeMap<String, (String, bool)>> {
    let text = std::fs::read_to_string(root.join("proc/1/mounts"))
        .or_else(|_| std::fs::read_to_string(root.join("proc/mounts")))
        .ok()?;
    let unescape = |s: &str| {
        let mut out = String::new();
        let mut rest = s;
        while let Some(i) = rest.find('\\') {
            out.push_str(&rest[..i]);
            let code = rest.get(i + 1..i + 4).and_then(|o| u8::from_str_radix(o, 8).ok());
            match code {
                Some(c) => {
                    out.push(char::from(c));
                    rest = &rest[i + 4..];
                }
                None => {
                    out.push('\\');
                    rest = &rest[i + 1..];
                }
            }
        }
        out.push_str(rest);
        out
    };
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if let [_dev, point, fstype, options, ..] = f[..] {
            let ro = options.split(',').any(|o| o == "ro");
            // The last mount of a point is the one that counts.
            out.insert(unescape(point), (fstype.to_owned(), ro));
        }
    }
    Some(out)
}

/// Physical network interfaces (those with a `device` link) and whether their link is up.
pub fn nics(root: &Path) -> Vec<(String, bool)> {
    let dir = root.join("sys/class/net");
    let Ok(entries) = std::fs::read_dir(&dir) else { return Vec::new() };
    let mut out: Vec<(String, bool)> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("device").exists())
        .map(|e| {
            let read = |f: &str| std::fs::read_to_string(e.path().join(f)).map(|s| s.trim().to_owned()).ok();
            // `operstate` says `up`; `carrier` (1) is the fallback for drivers that say `unknown`.
            let up = match read("operstate").as_deref() {
                Some("up") => true,
                Some("down" | "lowerlayerdown" | "notpresent") => false,
                _ => read("carrier").as_deref() == Some("1"),
            };
            (e.file_name().to_string_lossy().into_owned(), up)
        })
        .collect();
    out.sort();
    out
}

/// Physical NICs' error counters: received plus sent errors (`statistics/rx_errors`,
/// `statistics/tx_errors`), for the NICs that have them.
pub fn nic_errors(root: &Path) -> Vec<(String, u64)> {
    let dir = root.join("sys/class/net");
    let Ok(entries) = std::fs::read_dir(&dir) else { return Vec::new() };
    let mut out: Vec<(String, u64)> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("device").exists())
        .filter_map(|e| {
            let count =
                |f: &str| std::fs::read_to_string(e.path().join("statistics").join(f)).ok()?.trim().parse::<u64>().ok();
            Some((
                e.file_name().to_string_lossy().into_owned(),
                count("rx_errors")?.saturating_add(count("tx_errors")?),
            ))
        })
        .collect();
    out.sort();
    out
}

/// Physical disks: the block devices with a `device` link (not loop, ram, dm or zram devices).
pub fn disks(root: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(root.join("sys/block")) else { return Vec::new() };
    let mut out: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("device").exists())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    out.sort();
    out
}

/// What `smartctl -H -j` says of a disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Smart {
    /// The self-assessment passed.
    Passed,
    /// The self-assessment says failing.
    Failing,
    /// No verdict (no SMART support, a timeout, unreadable output): with why.
    Unknown(String),
    /// The program could not be started.
    Missing(String),
}

/// Asks `smartctl` for a disk's SMART health self-assessment, for at most `timeout`.
pub async fn smart_health(smartctl: &str, device: &str, timeout: Duration) -> Smart {
    let child = tokio::process::Command::new(smartctl)
        .args(["-H", "-j", device])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn();
    let child = match child {
        Ok(c) => c,
        Err(e) => return Smart::Missing(format!("cannot start {smartctl}: {e}")),
    };
    let out = match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Err(_) => return Smart::Unknown(format!("no answer within {}s; killed", timeout.as_secs())),
        Ok(Err(e)) => return Smart::Unknown(e.to_string()),
        Ok(Ok(out)) => out,
    };
    // smartctl's exit status is a bit mask (bit 3: "disk failing"); its JSON says the verdict.
    let json: serde_json::Value = match serde_json::from_slice(&out.stdout) {
        Ok(v) => v,
        Err(e) => return Smart::Unknown(format!("unreadable output (exit {:?}): {e}", out.status.code())),
    };
    match json.pointer("/smart_status/passed").and_then(serde_json::Value::as_bool) {
        Some(true) => Smart::Passed,
        Some(false) => Smart::Failing,
        None => {
            let said = json
                .pointer("/smartctl/messages/0/string")
                .and_then(serde_json::Value::as_str)
                .unwrap_or("no smart_status in its output");
            Smart::Unknown(said.chars().take(200).collect())
        }
    }
}

/// What a program's exit says, by node-problem-detector's custom plugin contract.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PluginStatus {
    /// Exit 0.
    Ok,
    /// Exit 1, with its first line of output.
    Problem(String),
    /// Exit 2 or another code, a timeout, or a program that would not start: with why.
    Unknown(String),
}

/// Runs a plugin (`program` split on spaces) for at most `timeout`.
pub async fn run_plugin(program: &str, timeout: Duration) -> PluginStatus {
    let mut argv = program.split_whitespace();
    let Some(bin) = argv.next() else { return PluginStatus::Unknown("no program".into()) };
    let child = tokio::process::Command::new(bin)
        .args(argv)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn();
    let child = match child {
        Ok(c) => c,
        Err(e) => return PluginStatus::Unknown(format!("cannot start {bin}: {e}")),
    };
    match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Err(_) => PluginStatus::Unknown(format!("no answer within {}s; killed", timeout.as_secs())),
        Ok(Err(e)) => PluginStatus::Unknown(e.to_string()),
        Ok(Ok(out)) => {
            let first =
                String::from_utf8_lossy(&out.stdout).lines().next().unwrap_or_default().chars().take(512).collect();
            match out.status.code() {
                Some(0) => PluginStatus::Ok,
                Some(1) => PluginStatus::Problem(first),
                Some(code) => PluginStatus::Unknown(format!("exit {code}: {first}")),
                None => PluginStatus::Unknown("killed by a signal".into()),
            }
        }
    }
}

/// Whether a node component answers: an `http://` healthz URL answers 200 `ok`, or a unix
/// socket accepts a connection.
pub async fn component_healthy(root: &Path, target: &str, timeout: Duration) -> Result<(), String> {
    let probe = async {
        if let Some(rest) = target.strip_prefix("http://") {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let (host, path) = rest.split_once('/').map_or((rest, "/"), |(h, p)| (h, p));
            let mut s = tokio::net::TcpStream::connect(host).await.map_err(|e| format!("{target}: {e}"))?;
            let req = format!("GET /{} HTTP/1.0\r\nHost: {host}\r\n\r\n", path.trim_start_matches('/'));
            s.write_all(req.as_bytes()).await.map_err(|e| format!("{target}: {e}"))?;
            let mut buf = Vec::new();
            s.take(4096).read_to_end(&mut buf).await.map_err(|e| format!("{target}: {e}"))?;
            let text = String::from_utf8_lossy(&buf);
            let status = text.lines().next().unwrap_or_default().to_owned();
            if status.split_whitespace().nth(1) == Some("200") {
                Ok(())
            } else {
                Err(format!("{target} answered `{status}`"))
            }
        } else {
            let path = root.join(target.trim_start_matches('/'));
            tokio::net::UnixStream::connect(&path).await.map(drop).map_err(|e| format!("{}: {e}", path.display()))
        }
    };
    tokio::time::timeout(timeout, probe)
        .await
        .map_err(|_| format!("{target}: no answer within {}s", timeout.as_secs()))?
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

#[cfg(test)]
mod tests {
    use super::*;

    fn root(name: &str) -> PathBuf {
        let r = std::env::temp_dir().join(format!("firebreak-sources-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&r);
        std::fs::create_dir_all(&r).unwrap();
        r
    }

    fn write(root: &Path, file: &str, text: &str) {
        let p = root.join(file);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    #[test]
    fn edac_counters_as_sysfs_serves_them() {
        let r = root("edac");
        write(&r, "sys/devices/system/edac/mc/mc0/ue_count", "0\n");
        write(&r, "sys/devices/system/edac/mc/mc0/ce_count", "12\n");
        write(&r, "sys/devices/system/edac/mc/mc1/ue_count", "2\n");
        write(&r, "sys/devices/system/edac/mc/mc1/ce_count", "0\n");
        write(&r, "sys/devices/system/edac/mc/power/control", "auto\n");
        assert_eq!(edac(&r), [("mc0".into(), 0, 12), ("mc1".into(), 2, 0)]);
        assert!(edac(&root("no-edac")).is_empty(), "no EDAC driver: nothing to say");
    }

    #[test]
    fn proc_mounts_as_the_kernel_writes_it() {
        let r = root("mounts");
        write(
            &r,
            "proc/mounts",
            "/dev/sda1 / ext4 rw,relatime 0 0\nproc /proc proc rw,nosuid,nodev,noexec,relatime 0 0\n\
             /dev/sdb1 /var/lib/kubelet xfs ro,relatime,attr2 0 0\n/dev/sdc1 /mnt/my\\040disk ext4 rw 0 0\n",
        );
        let m = mounts(&r).unwrap();
        assert_eq!(m["/"], ("ext4".into(), false));
        assert_eq!(m["/var/lib/kubelet"], ("xfs".into(), true));
        assert!(m.contains_key("/mnt/my disk"), "octal escapes decoded: {m:?}");
    }

    #[test]
    fn physical_nics_only_and_their_link() {
        let r = root("nics");
        write(&r, "sys/class/net/eth0/operstate", "up\n");
        write(&r, "sys/class/net/eth0/device/vendor", "0x8086\n");
        write(&r, "sys/class/net/eth1/operstate", "down\n");
        write(&r, "sys/class/net/eth1/device/vendor", "0x8086\n");
        write(&r, "sys/class/net/eth2/operstate", "unknown\n");
        write(&r, "sys/class/net/eth2/carrier", "1\n");
        write(&r, "sys/class/net/eth2/device/vendor", "0x15b3\n");
        write(&r, "sys/class/net/veth1234/operstate", "down\n");
        write(&r, "sys/class/net/lo/operstate", "unknown\n");
        assert_eq!(nics(&r), [("eth0".into(), true), ("eth1".into(), false), ("eth2".into(), true)]);
    }

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

    /// A plugin script, run as `sh FILE`.
    fn script(name: &str, body: &str) -> String {
        let path = root(&format!("plugin-{name}")).join("check.sh");
        std::fs::write(&path, body).unwrap();
        format!("sh {}", path.display())
    }

    #[tokio::test]
    async fn plugins_follow_the_npd_contract() {
        let t = Duration::from_secs(2);
        assert_eq!(run_plugin(&script("ok", "exit 0\n"), t).await, PluginStatus::Ok);
        assert_eq!(
            run_plugin(&script("problem", "echo 'NTP is not synchronised'\necho more\nexit 1\n"), t).await,
            PluginStatus::Problem("NTP is not synchronised".into())
        );
        assert!(
            matches!(run_plugin(&script("unknown", "echo maybe\nexit 2\n"), t).await, PluginStatus::Unknown(w) if w == "exit 2: maybe")
        );
        assert!(
            matches!(run_plugin("sleep 5", Duration::from_millis(200)).await, PluginStatus::Unknown(w) if w.contains("killed"))
        );
        assert!(
            matches!(run_plugin("/no/such/plugin", t).await, PluginStatus::Unknown(w) if w.contains("cannot start"))
        );
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
        let cfg = Sources {
            ce_threshold: 100,
            mounts: vec!["/".into(), "/var/lib/kubelet".into()],
            components: BTreeMap::from([
                ("kubelet".into(), format!("http://{addr}/healthz")),
                ("containerd".into(), "/run/containerd/containerd.sock".into()),
            ]),
            plugins: vec![("ntp".into(), script("ntp", "echo drift\nexit 1\n"))],
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
