//! Physical disks (`sys/block/<disk>` with a `device` link) and their SMART health, as
//! smartmontools' `smartctl -H -j` reports it.

use std::{path::Path, time::Duration};

/// Physical disks: the block devices with a `device` link (not loop, ram, dm or zram devices).
pub fn disks(root: &Path) -> Vec<String> {
    super::physical(root, "sys/block").into_iter().map(|(name, _)| name).collect()
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
    let out = match super::run_program(smartctl, ["-H", "-j", device], timeout).await {
        super::Ran::NotStarted(why) => return Smart::Missing(why),
        super::Ran::Failed(why) => return Smart::Unknown(why),
        super::Ran::Exited(out) => out,
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
