//! EDAC memory controllers, as sysfs serves them:
//! `sys/devices/system/edac/mc/mc*/{ue_count,ce_count}`.

use std::path::Path;

/// EDAC counters: `(controller, ue, ce)`.
pub fn edac(root: &Path) -> Vec<(String, u64, u64)> {
    let dir = root.join("sys/devices/system/edac/mc");
    let Ok(entries) = std::fs::read_dir(&dir) else { return Vec::new() };
    let mut out: Vec<(String, u64, u64)> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            if !name.starts_with("mc") || !name[2..].chars().all(|c| c.is_ascii_digit()) {
                return None;
            }
            let count = |f: &str| super::sysfs_count(&e.path().join(f));
            Some((name, count("ue_count")?, count("ce_count")?))
        })
        .collect();
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::testing::{root, write};

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
}
