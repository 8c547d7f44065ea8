//! The kernel log: parsing `/dev/kmsg` records and following the log as it grows.
//!
//! On a real node `<host-root>/dev/kmsg` is the kernel's character device, where each `read`
//! returns one record; on a simulated node it is a regular file of the same records, one per
//! line. [`Follower`] handles both and notices a reboot (the log starts over).

use std::{
    io::{ErrorKind, Read, Seek, SeekFrom},
    os::unix::fs::FileTypeExt,
    path::{Path, PathBuf},
};

use crate::{Error, Result};

/// One kernel log record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Syslog level (0 emerg .. 7 debug).
    pub level: u8,
    /// Kernel sequence number, monotonic within one boot.
    pub seq: u64,
    /// Microseconds since boot.
    pub usec: u64,
    /// The message text.
    pub message: String,
}

/// Parses `<prio>,<seq>,<usec>,<flags>[,...];<message>` (continuation lines are ignored).
pub fn parse(line: &str) -> Result<Record> {
    let bad = |why: &str| Error::Kmsg(format!("{why}: `{}`", line.chars().take(120).collect::<String>()));
    let (head, message) = line.split_once(';').ok_or_else(|| bad("no `;`"))?;
    let mut fields = head.split(',');
    let mut num =
        |what: &str| -> Result<u64> { fields.next().and_then(|f| f.trim().parse().ok()).ok_or_else(|| bad(what)) };
    let prio = num("bad priority")?;
    let seq = num("bad sequence number")?;
    let usec = num("bad timestamp")?;
    let message = message.split('\n').next().unwrap_or_default().to_owned();
    Ok(Record { level: (prio & 7) as u8, seq, usec, message })
}

/// Follows a kernel log from its first record.
pub struct Follower {
    path: PathBuf,
    file: Option<std::fs::File>,
    device: bool,
    offset: u64,
    partial: String,
    last_seq: Option<u64>,
    /// Records the kernel overwrote before they were read, since the last `take_lost`.
    lost: u64,
}

impl Follower {
    /// A follower of `<host_root>/dev/kmsg`.
    pub fn new(host_root: &Path) -> Self {
        Self {
            path: host_root.join("dev/kmsg"),
            file: None,
            device: false,
            offset: 0,
            partial: String::new(),
            last_seq: None,
            lost: 0,
        }
    }

    /// How many records were lost to the kernel's ring buffer since the last call.
    pub fn take_lost(&mut self) -> u64 {
        std::mem::take(&mut self.lost)
    }

    /// The log started over (the host booted again): the next poll opens it afresh (a log
    /// replaced by a new file included) and reads it from its start.
    pub fn restart(&mut self) {
        self.file = None;
        self.offset = 0;
        self.partial.clear();
        self.last_seq = None;
    }

    /// Reads every complete record appended since the last call. A log that starts over (a
    /// reboot truncated it, or the sequence number went back) is read again from its start.
    pub fn poll(&mut self) -> Result<Vec<Record>> {
        let io = |source| Error::Io { path: self.path.clone(), source };
        if self.file.is_none() {
            let file =
                std::fs::OpenOptions::new().read(true).custom_flags_nonblocking().open(&self.path).map_err(io)?;
            self.device = file.metadata().map_err(io)?.file_type().is_char_device();
            self.file = Some(file);
        }
        let Some(file) = self.file.as_mut() else { return Ok(Vec::new()) };
        let mut out = Vec::new();
        if self.device {
            let mut buf = vec![0u8; 8192];
            loop {
                match file.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => out.push(String::from_utf8_lossy(&buf[..n]).into_owned()),
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    // EPIPE: records were overwritten before we read them; the next read returns
                    // the oldest one left, and the gap in sequence numbers says how many.
                    Err(e) if e.raw_os_error() == Some(32) => continue,
                    Err(e) => return Err(Error::Io { path: self.path.clone(), source: e }),
                }
            }
        } else {
            let len = file.metadata().map_err(|source| Error::Io { path: self.path.clone(), source })?.len();
            if len < self.offset {
                self.offset = 0;
                self.partial.clear();
                self.last_seq = None;
            }
            file.seek(SeekFrom::Start(self.offset)).map_err(|source| Error::Io { path: self.path.clone(), source })?;
            let mut buf = Vec::new();
            file.read_to_end(&mut buf).map_err(|source| Error::Io { path: self.path.clone(), source })?;
            self.offset += buf.len() as u64;
            self.partial.push_str(&String::from_utf8_lossy(&buf));
            if let Some(end) = self.partial.rfind('\n') {
                let complete: String = self.partial.drain(..=end).collect();
                out.extend(complete.lines().map(str::to_owned));
            }
        }
        let mut records = Vec::new();
        for line in out.iter().filter(|l| !l.starts_with(' ') && !l.is_empty()) {
            match parse(line) {
                Ok(r) => {
                    if self.last_seq.is_some_and(|s| r.seq < s) {
                        tracing::info!(path = %self.path.display(), "kernel log started over");
                    }
                    if self.device {
                        self.lost += skipped(self.last_seq, r.seq);
                    }
                    self.last_seq = Some(r.seq);
                    records.push(r);
                }
                Err(error) => tracing::warn!(%error, "skipping unparsable kernel log record"),
            }
        }
        Ok(records)
    }
}

/// Records between the last one read and `seq` that were never read (the kernel's sequence
/// numbers have no holes of their own); a log that started over skipped none.
fn skipped(last: Option<u64>, seq: u64) -> u64 {
    match last {
        Some(l) if seq > l + 1 => seq - l - 1,
        _ => 0,
    }
}

trait NonBlocking {
    fn custom_flags_nonblocking(&mut self) -> &mut Self;
}

impl NonBlocking for std::fs::OpenOptions {
    fn custom_flags_nonblocking(&mut self) -> &mut Self {
        use std::os::unix::fs::OpenOptionsExt;
        // O_NONBLOCK: a read of /dev/kmsg with nothing new returns EAGAIN instead of waiting.
        self.custom_flags(0o4000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// Any line, however broken, is a record or an error; never a panic.
        #[test]
        fn any_line_parses_or_is_an_error(line in "\\PC{0,300}|[0-9,;-]{0,40}") {
            let _ = parse(&line);
        }

        /// A record as the kernel writes it parses back to its fields; only its first line is
        /// the message (continuation lines are the kernel's key=value dictionary).
        #[test]
        fn kernel_records_parse_back(prio in 0u64..1024, seq: u64, usec: u64, msg in "[^\n]{0,200}") {
            let r = parse(&format!("{prio},{seq},{usec},-,caller=T1;{msg}\n SUBSYSTEM=edac")).unwrap();
            proptest::prop_assert_eq!((r.level, r.seq, r.usec, r.message), ((prio & 7) as u8, seq, usec, msg));
        }
    }

    #[test]
    fn a_gap_in_sequence_numbers_is_records_lost() {
        assert_eq!(skipped(None, 40), 0, "the first record read");
        assert_eq!(skipped(Some(7), 8), 0);
        assert_eq!(skipped(Some(7), 12), 4, "8 to 11 were overwritten");
        assert_eq!(skipped(Some(900), 3), 0, "started over");
    }

    #[test]
    fn parses_records() {
        let r = parse("3,1234,5678901,-;EDAC MC0: 1 UE memory read error").unwrap();
        assert_eq!(
            r,
            Record { level: 3, seq: 1234, usec: 5678901, message: "EDAC MC0: 1 UE memory read error".into() }
        );
        let r = parse("14,2,3,c,more;text; with; semicolons").unwrap();
        assert_eq!((r.level, r.message.as_str()), (6, "text; with; semicolons"));
        assert!(parse("garbage").is_err());
        assert!(parse("x,1,2,-;m").is_err());
    }

    #[test]
    fn follows_appends_and_restarts_after_truncation() {
        let dir = std::env::temp_dir().join(format!("fb-kmsg-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("dev")).unwrap();
        let log = dir.join("dev/kmsg");
        std::fs::write(&log, "6,0,1,-;boot\n6,1,2,-;partial").unwrap();
        let mut f = Follower::new(&dir);
        assert_eq!(f.poll().unwrap().iter().map(|r| r.seq).collect::<Vec<_>>(), vec![0]);
        use std::io::Write;
        let mut h = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
        h.write_all(b" line\n SUBSYSTEM=x\ngarbage\n3,2,3,-;EDAC\n").unwrap();
        let got = f.poll().unwrap();
        assert_eq!(got.iter().map(|r| r.message.as_str()).collect::<Vec<_>>(), vec!["partial line", "EDAC"]);
        assert!(f.poll().unwrap().is_empty());
        std::fs::write(&log, "6,0,1,-;new boot\n").unwrap();
        assert_eq!(f.poll().unwrap()[0].message, "new boot");
        // A new boot's log no shorter than the old one, put in place as a new file: only the
        // restart (told by the boot id) finds it.
        let fresh = dir.join("dev/kmsg.new");
        std::fs::write(&fresh, "6,0,9,-;third boot, a longer first line\n").unwrap();
        std::fs::rename(&fresh, &log).unwrap();
        assert!(f.poll().unwrap().is_empty(), "the old file, still open, has nothing new");
        f.restart();
        assert_eq!(f.poll().unwrap()[0].message, "third boot, a longer first line");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
