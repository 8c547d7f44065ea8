//! The host's mount table, as the kernel writes `proc/mounts`.

use std::{collections::BTreeMap, path::Path};

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::testing::{root, write};

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
}
