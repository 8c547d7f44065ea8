//! Physical NICs, as sysfs serves them: `sys/class/net/<if>` with a `device` link; link state
//! and error counters.

use std::path::Path;

/// Physical network interfaces (those with a `device` link) and whether their link is up.
pub fn nics(root: &Path) -> Vec<(String, bool)> {
    super::physical(root, "sys/class/net")
        .into_iter()
        .map(|(name, dir)| {
            let read = |f: &str| std::fs::read_to_string(dir.join(f)).map(|s| s.trim().to_owned()).ok();
            // `operstate` says `up`; `carrier` (1) is the fallback for drivers that say `unknown`.
            let up = match read("operstate").as_deref() {
                Some("up") => true,
                Some("down" | "lowerlayerdown" | "notpresent") => false,
                _ => read("carrier").as_deref() == Some("1"),
            };
            (name, up)
        })
        .collect()
}

/// Physical NICs' error counters: received plus sent errors (`statistics/rx_errors`,
/// `statistics/tx_errors`), for the NICs that have them.
pub fn nic_errors(root: &Path) -> Vec<(String, u64)> {
    super::physical(root, "sys/class/net")
        .into_iter()
        .filter_map(|(name, dir)| {
            let count = |f: &str| super::sysfs_count(&dir.join("statistics").join(f));
            Some((name, count("rx_errors")?.saturating_add(count("tx_errors")?)))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::testing::{root, write};

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
}
