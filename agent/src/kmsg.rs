//! The kernel log: parsing `/dev/kmsg` records and following the log as it grows.
//!
//! On a real node `<host-root>/dev/kmsg` is the kernel's character device, where each `read`
//! returns one record; on a simulated node it is a regular file of the same records, one per
//! line. [`Follower`] handles both and notices a reboot (the log starts over), and
//! [`Follower::wait`] wakes when the log may have grown: the device's readiness (epoll), or a
//! regular file's change (inotify on its directory, one instance for the whole process).

use std::{
    collections::HashMap,
    io::{ErrorKind, Read, Seek, SeekFrom},
    os::unix::fs::FileTypeExt,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, OnceLock},
    time::Duration,
};

use tokio::{io::unix::AsyncFd, sync::Notify};

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
    /// What wakes [`Follower::wait`]; set up on its first call.
    waker: Option<Waker>,
    /// When [`Follower::wait`] returns even if nothing woke it.
    due: Option<tokio::time::Instant>,
    /// When [`Follower::wait`] last returned.
    woken: Option<tokio::time::Instant>,
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
            waker: None,
            due: None,
            woken: None,
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
        // A device's readiness is its open file's; a directory's watch outlives the file.
        if matches!(self.waker, Some(Waker::Device(_))) {
            self.waker = None;
        }
        self.offset = 0;
        self.partial.clear();
        self.last_seq = None;
    }

    /// The log's open file (`file`), opened from `path` if it is not; `device` says whether it
    /// is the kernel's device. Takes the fields, not `self`, so the file can be read while the
    /// follower's other fields change.
    fn open<'a>(file: &'a mut Option<std::fs::File>, path: &Path, device: &mut bool) -> Result<&'a mut std::fs::File> {
        let io = |source| Error::Io { path: path.to_owned(), source };
        if let Some(f) = file {
            return Ok(f);
        }
        let f = std::fs::OpenOptions::new().read(true).custom_flags_nonblocking().open(path).map_err(io)?;
        *device = f.metadata().map_err(io)?.file_type().is_char_device();
        Ok(file.insert(f))
    }

    /// Waits until the log may hold records not yet read: the device is readable, or the
    /// regular file (or its directory's `kmsg`, replaced on a reboot) changed — at most
    /// [`BACKSTOP`], in case a wakeup was missed. Where neither can be waited on (the log
    /// cannot be opened, inotify is out of instances), waits `poll`. Never returns sooner than
    /// [`GAP`] after the last return. The first call (and the
    /// first after a device's [`Follower::restart`]) returns at once, for what the log already
    /// holds. Cancel-safe.
    pub async fn wait(&mut self, poll: Duration) {
        if self.waker.is_none() {
            match self.waker() {
                Ok(w) => {
                    self.waker = Some(w);
                    return;
                }
                Err(error) => tracing::debug!(%error, "the kernel log cannot be waited on: polling it"),
            }
        }
        // A busy log is read in batches: no sooner than GAP after the last wakeup (a record
        // after a quiet spell is read at once).
        if let Some(last) = self.woken {
            tokio::time::sleep_until(last + GAP).await;
        }
        // The deadline outlives a cancelled wait (the caller's other work woke it first).
        let every = if self.waker.is_some() { BACKSTOP } else { poll };
        let due = *self.due.get_or_insert_with(|| tokio::time::Instant::now() + every);
        match &self.waker {
            Some(Waker::Device(fd)) => {
                if let Ok(Ok(mut ready)) = tokio::time::timeout_at(due, fd.readable()).await {
                    // Cleared before the read that follows, which reads until EAGAIN: a record
                    // that comes after the clear wakes the next wait.
                    ready.clear_ready();
                }
            }
            Some(Waker::File(watch)) => {
                let _ = tokio::time::timeout_at(due, watch.notify.notified()).await;
            }
            None => tokio::time::sleep_until(due).await,
        }
        self.due = None;
        self.woken = Some(tokio::time::Instant::now());
    }

    fn waker(&mut self) -> Result<Waker> {
        let file = Self::open(&mut self.file, &self.path, &mut self.device)?;
        let io = |source| Error::Io { path: self.path.clone(), source };
        if self.device {
            // A duplicate of the descriptor shares the open file, so its readiness is this
            // reader's.
            let dup = file.try_clone().map_err(io)?;
            // SAFETY: the `File` owns its descriptor, open and the same until the `AsyncFd`
            // that owns the `File` is dropped.
            let fd = unsafe { AsyncFd::register_with_interest(dup, tokio::io::Interest::READABLE) }
                .map_err(|e| io(e.into()))?;
            return Ok(Waker::Device(fd));
        }
        let dir = self.path.parent().ok_or_else(|| Error::Kmsg(format!("{}: no directory", self.path.display())))?;
        let name = self.path.file_name().map(|n| n.to_owned()).unwrap_or_default();
        Ok(Waker::File(Watch::new(dir, name).map_err(io)?))
    }

    /// Reads every complete record appended since the last call. A log that starts over (a
    /// reboot truncated it, or the sequence number went back) is read again from its start.
    pub fn poll(&mut self) -> Result<Vec<Record>> {
        let file = Self::open(&mut self.file, &self.path, &mut self.device)?;
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

/// Longest [`Follower::wait`] waits for a wakeup before the log is read anyway.
pub const BACKSTOP: Duration = Duration::from_secs(10);

/// Shortest time between two returns of [`Follower::wait`]: a log written a thousand times a
/// second is read fifty times a second, not a thousand.
const GAP: Duration = Duration::from_millis(20);

enum Waker {
    /// The kernel's `/dev/kmsg`: readable when it has records this reader has not read.
    Device(AsyncFd<std::fs::File>),
    /// A regular file: its directory's inotify watch.
    File(Watch),
}

/// One follower's interest in a file of a directory, on the process's one inotify instance
/// (a demo runs thousands of followers; a user has 128 instances by default). Dropping it
/// removes the directory's watch once no follower needs it.
struct Watch {
    dir: inotify::WatchDescriptor,
    notify: Arc<Notify>,
}

/// The process's inotify instance: its watches, and who waits on each (which file of the
/// watched directory). A thread of its own reads the events, so that it serves every tokio
/// runtime (tests run many).
struct Hub {
    watches: Mutex<(inotify::Watches, HashMap<inotify::WatchDescriptor, Vec<Interest>>)>,
}

struct Interest {
    name: std::ffi::OsString,
    notify: Arc<Notify>,
}

fn hub() -> std::io::Result<&'static Hub> {
    static HUB: OnceLock<std::result::Result<Hub, String>> = OnceLock::new();
    HUB.get_or_init(|| {
        let mut inotify = inotify::Inotify::init().map_err(|e| e.to_string())?;
        let made = Hub { watches: Mutex::new((inotify.watches(), HashMap::new())) };
        std::thread::Builder::new()
            .name("kmsg-inotify".into())
            .spawn(move || {
                let mut buf = [0u8; 4096];
                loop {
                    let events = match inotify.read_events_blocking(&mut buf) {
                        Ok(events) => events,
                        Err(error) => {
                            tracing::warn!(%error, "inotify failed: kernel logs are read at their backstop period");
                            return;
                        }
                    };
                    let Ok(shared) = hub() else { return };
                    let Ok(watches) = shared.watches.lock() else { return };
                    for event in events {
                        // Events were lost: every follower reads its log.
                        if event.mask.contains(inotify::EventMask::Q_OVERFLOW) {
                            watches.1.values().flatten().for_each(|i| i.notify.notify_one());
                            continue;
                        }
                        let waiting = watches.1.get(&event.wd).into_iter().flatten();
                        for interest in waiting.filter(|i| event.name == Some(i.name.as_os_str())) {
                            interest.notify.notify_one();
                        }
                    }
                }
            })
            .map_err(|e| e.to_string())?;
        Ok(made)
    })
    .as_ref()
    .map_err(|e| std::io::Error::other(e.clone()))
}

impl Watch {
    fn new(dir: &Path, name: std::ffi::OsString) -> std::io::Result<Self> {
        use inotify::WatchMask;
        let hub = hub()?;
        let mut watches = hub.watches.lock().map_err(|_| std::io::Error::other("inotify hub poisoned"))?;
        // The same directory watched again is the same descriptor.
        let mask = WatchMask::MODIFY | WatchMask::CLOSE_WRITE | WatchMask::CREATE | WatchMask::MOVED_TO;
        let wd = watches.0.add(dir, mask)?;
        let notify = Arc::new(Notify::new());
        watches.1.entry(wd.clone()).or_default().push(Interest { name, notify: notify.clone() });
        Ok(Self { dir: wd, notify })
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let Ok(hub) = hub() else { return };
        let Ok(mut watches) = hub.watches.lock() else { return };
        let (inotify, waiting) = &mut *watches;
        if let Some(v) = waiting.get_mut(&self.dir) {
            v.retain(|i| !Arc::ptr_eq(&i.notify, &self.notify));
            if v.is_empty() {
                waiting.remove(&self.dir);
                // Gone already if the directory was.
                let _ = inotify.remove(self.dir.clone());
            }
        }
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

    /// Waits until `f` wakes, at most 5 s (half its backstop): `true` if it woke.
    async fn woke(f: &mut Follower) -> bool {
        tokio::time::timeout(Duration::from_secs(5), f.wait(Duration::from_secs(3600))).await.is_ok()
    }

    /// `true` if `f` stays asleep for a second (a cancelled wait keeps its backstop deadline:
    /// these seconds count towards it).
    async fn slept(f: &mut Follower) -> bool {
        tokio::time::timeout(Duration::from_secs(1), f.wait(Duration::from_secs(3600))).await.is_err()
    }

    #[tokio::test]
    async fn a_regular_file_log_wakes_its_follower_when_written_or_replaced() {
        let tmp = tempfile::Builder::new().prefix("fb-kmsg-wait-").tempdir().unwrap();
        let dir = tmp.path();
        std::fs::create_dir_all(dir.join("dev")).unwrap();
        let log = dir.join("dev/kmsg");
        std::fs::write(&log, "6,0,1,-;boot\n").unwrap();
        let mut f = Follower::new(dir);
        assert!(woke(&mut f).await, "the first wait returns at once, for what the log holds");
        assert_eq!(f.poll().unwrap().len(), 1);
        assert!(slept(&mut f).await, "woken with nothing written");
        // Another file of the directory is not the log.
        std::fs::write(dir.join("dev/other"), "x").unwrap();
        assert!(slept(&mut f).await, "woken by another file");
        let (mut f, writer) = tokio::join!(
            async move {
                assert!(woke(&mut f).await, "not woken by an append");
                f
            },
            async {
                tokio::time::sleep(Duration::from_millis(100)).await;
                use std::io::Write;
                let mut h = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
                h.write_all(b"3,1,2,-;EDAC\n").unwrap();
            }
        );
        let () = writer;
        assert_eq!(f.poll().unwrap()[0].message, "EDAC");
        // A reboot puts a new log in place: the directory's watch sees it.
        let fresh = dir.join("dev/kmsg.new");
        std::fs::write(&fresh, "6,0,9,-;next boot\n").unwrap();
        std::fs::rename(&fresh, &log).unwrap();
        assert!(woke(&mut f).await, "not woken by the log's replacement");
        f.restart();
        assert_eq!(f.poll().unwrap()[0].message, "next boot");
        // Two followers of one directory (one watch) each hear; one gone, the other still does.
        let mut g = Follower::new(dir);
        assert!(woke(&mut g).await);
        std::fs::write(&log, "6,0,1,-;again\n").unwrap();
        assert!(woke(&mut f).await && woke(&mut g).await, "both woken");
        drop(g);
        std::fs::write(&log, "6,0,1,-;and again\n").unwrap();
        assert!(woke(&mut f).await, "the watch went with the other follower");
    }

    /// The kernel's own `/dev/kmsg` where this machine lets the test read and write it (root):
    /// a record written wakes the follower, which reads it.
    #[tokio::test]
    async fn the_kernel_log_device_wakes_its_follower() {
        use std::io::Write;
        let Ok(mut kernel) = std::fs::OpenOptions::new().write(true).open("/dev/kmsg") else {
            eprintln!("/dev/kmsg cannot be written here: not tested");
            return;
        };
        let tmp = tempfile::Builder::new().prefix("fb-kmsg-device-").tempdir().unwrap();
        let dir = tmp.path();
        std::fs::create_dir_all(dir.join("dev")).unwrap();
        std::os::unix::fs::symlink("/dev/kmsg", dir.join("dev/kmsg")).unwrap();
        let mut f = Follower::new(dir);
        assert!(woke(&mut f).await);
        assert!(f.device);
        f.poll().unwrap();
        let mark = format!("firebreak agent test: kernel log readiness {}", std::process::id());
        let (mut f, ()) = tokio::join!(
            async move {
                assert!(woke(&mut f).await, "not woken by a kernel log record");
                f
            },
            async {
                tokio::time::sleep(Duration::from_millis(100)).await;
                kernel.write_all(format!("<6>{mark}\n").as_bytes()).unwrap();
            }
        );
        // Other records may have come too; ours is among what was read.
        let mut read = f.poll().unwrap();
        while !read.iter().any(|r| r.message.contains(&mark)) {
            assert!(woke(&mut f).await, "{mark} never read");
            read = f.poll().unwrap();
        }
    }

    #[test]
    fn follows_appends_and_restarts_after_truncation() {
        let tmp = tempfile::Builder::new().prefix("fb-kmsg-").tempdir().unwrap();
        let dir = tmp.path();
        std::fs::create_dir_all(dir.join("dev")).unwrap();
        let log = dir.join("dev/kmsg");
        std::fs::write(&log, "6,0,1,-;boot\n6,1,2,-;partial").unwrap();
        let mut f = Follower::new(dir);
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
    }
}
