//! The faults fleet-sim can inject, and what each writes to a node's kernel log.

use serde::Serialize;

/// A fault the injector can cause.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, Serialize)]
pub enum Fault {
    /// An EDAC uncorrectable memory error in the kernel log.
    MemoryUncorrectable,
    /// An EXT4 error followed by a read-only remount.
    ReadonlyFilesystem,
    /// A hung task report.
    KernelHung,
    /// The kubelet stops posting status and renewing its lease.
    NotReady,
    /// The kernel's OOM killer kills the kubelet, which stays down (the node turns NotReady)
    /// until it is restarted or the node reboots.
    KubeletOom,
    /// A failing DIMM: an EDAC uncorrectable memory error now and again during every boot,
    /// which a reboot does not clear (the node needs a human).
    BadDimm,
}

impl Fault {
    /// Every injectable fault.
    pub const ALL: [Fault; 6] = [
        Fault::MemoryUncorrectable,
        Fault::ReadonlyFilesystem,
        Fault::KernelHung,
        Fault::NotReady,
        Fault::KubeletOom,
        Fault::BadDimm,
    ];

    /// The faults a reboot clears.
    pub const CLEARED_BY_REBOOT: [Fault; 5] =
        [Fault::MemoryUncorrectable, Fault::ReadonlyFilesystem, Fault::KernelHung, Fault::NotReady, Fault::KubeletOom];

    /// Whether the fault is logged again at every boot.
    pub fn survives_reboot(self) -> bool {
        self == Fault::BadDimm
    }

    /// Kernel log lines (priority, text) the fault writes.
    pub(crate) fn kmsg_lines(self) -> Vec<(u8, String)> {
        match self {
            Fault::MemoryUncorrectable | Fault::BadDimm => vec![
                (1, "mce: [Hardware Error]: Machine check events logged".into()),
                (1, "EDAC MC0: 1 UE memory read error on CPU_SrcID#0_MC#0_Chan#1_DIMM#0 (channel:1 slot:0 page:0x3fe12 offset:0x0 grain:32 syndrome:0x0)".into()),
            ],
            Fault::ReadonlyFilesystem => vec![
                (3, "EXT4-fs error (device sda1): ext4_journal_check_start:83: Detected aborted journal".into()),
                (2, "EXT4-fs (sda1): Remounting filesystem read-only".into()),
            ],
            Fault::KernelHung => vec![
                (3, "INFO: task kworker/u16:2:4127 blocked for more than 120 seconds.".into()),
                (3, "      Not tainted 6.1.0-firebreak-sim #1".into()),
            ],
            Fault::KubeletOom => vec![
                (4, "kubelet invoked oom-killer: gfp_mask=0x140cca(GFP_HIGHUSER_MOVABLE|__GFP_COMP), order=0, oom_score_adj=-999".into()),
                (3, "Out of memory: Killed process 1187 (kubelet) total-vm:2145324kB, anon-rss:1843212kB, file-rss:0kB, shmem-rss:0kB, UID:0 pgtables:4012kB oom_score_adj:-999".into()),
            ],
            Fault::NotReady => Vec::new(),
        }
    }
}
