//! A simulated node's host root, as its agent reads it: `/dev/kmsg` records, `/proc/stat`
//! (`btime`) and the boot id.

use std::{io::Write, path::PathBuf};

use chrono::Utc;

use crate::{Error, Result, kubelet::NodeSim};

impl NodeSim {
    /// A fresh boot: new boot id and btime, a kernel log with the boot banner and the faults
    /// that survive a reboot. The new log replaces the old one whole (a new file renamed over
    /// it) before the boot time and the boot id change, so an agent that sees the new boot id
    /// finds the new boot's log and boot time.
    pub(crate) fn boot(&mut self) -> Result<()> {
        let io = |path: PathBuf| move |source| Error::Io { path, source };
        let root = self.host_root.clone();
        for d in ["dev", "proc/sys/kernel/random"] {
            std::fs::create_dir_all(root.join(d)).map_err(io(root.join(d)))?;
        }
        self.boot_id = uuid::Uuid::new_v4().to_string();
        self.seq = 0;
        self.btime = Utc::now().timestamp();
        let btime = self.btime;
        let mut lines = vec![
            (5, "Linux version 6.1.0-firebreak-sim (gcc 12.2.0) #1 SMP PREEMPT_DYNAMIC".into()),
            (6, "Command line: BOOT_IMAGE=/vmlinuz root=/dev/sda1 ro quiet".into()),
            (6, "EDAC MC0: Giving out device to module skx_edac controller Skylake Socket#0 IMC#0".into()),
            (6, "EXT4-fs (sda1): mounted filesystem with ordered data mode. Quota mode: none.".into()),
        ];
        lines.extend(self.persistent.iter().flat_map(|f| f.kmsg_lines()));
        let text = self.records(&lines);
        let (kmsg, fresh) = (root.join("dev/kmsg"), root.join("dev/kmsg.boot"));
        std::fs::write(&fresh, text).map_err(io(fresh.clone()))?;
        std::fs::rename(&fresh, &kmsg).map_err(io(kmsg))?;
        let stat = root.join("proc/stat");
        std::fs::write(&stat, format!("cpu  0 0 0 0 0 0 0 0 0 0\nbtime {btime}\nprocesses 1\n")).map_err(io(stat))?;
        let bid = root.join("proc/sys/kernel/random/boot_id");
        std::fs::write(&bid, format!("{}\n", self.boot_id)).map_err(io(bid))
    }

    /// Records in the kernel's `/dev/kmsg` format, `<prio>,<seq>,<usec>,<flags>;<text>`, stamped
    /// now; the sequence numbers are taken.
    fn records(&mut self, lines: &[(u8, String)]) -> String {
        let usec = (Utc::now().timestamp_micros() - self.btime * 1_000_000).max(0);
        let mut out = String::new();
        for (prio, text) in lines {
            out.push_str(&format!("{prio},{},{usec},-;{text}\n", self.seq));
            self.seq += 1;
        }
        out
    }

    /// Appends records to the kernel log.
    pub(crate) fn append_kmsg(&mut self, lines: &[(u8, String)]) -> Result<()> {
        let path = self.host_root.join("dev/kmsg");
        let out = self.records(lines);
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(&path)
            .map_err(|source| Error::Io { path: path.clone(), source })?;
        f.write_all(out.as_bytes()).map_err(|source| Error::Io { path, source })
    }
}
