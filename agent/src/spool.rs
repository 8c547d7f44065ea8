//! The crash-safe spool: every fault the agent finds is written to disk before it counts as
//! handled (before the kernel log cursor moves past it) and deleted only once the brokers have
//! it. So neither a Kafka outage nor a crash of the agent (kill -9, OOM, power loss) loses a
//! fault, and the kernel log is read on during an outage instead of waiting while the kernel's
//! ring buffer overwrites what was not read yet.
//!
//! One file per fault, `<seq>-<severity>.json` in the spool directory, written to a temporary
//! file, synced, renamed into place and the directory synced ([`crate::replace_file`]): a file
//! is there whole or not at all. One sender delivers them oldest first and deletes each after its delivery report; a fault
//! delivered just before a crash is sent again after it, with the same id, which consumers
//! deduplicate (at least once, never lost).
//!
//! The spool is bounded by entries and bytes. When full, the oldest fault of the lowest severity
//! present makes room (so a flood of info records cannot push out a critical fault), the loss is
//! counted in a file beside the spool, and once the spool has room the count is reported as a
//! fault of its own: the operator learns how many were dropped, never nothing.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, PoisonError},
};

use firebreak_plumbing::kafka::Producer;
use firebreak_schema::{FaultEvent, Severity};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::{Error, Result};

/// The bounds of a spool.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most faults kept.
    pub entries: usize,
    /// Most bytes kept (the faults' JSON).
    pub bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self { entries: 10_000, bytes: 64 << 20 }
    }
}

/// A fault waiting for delivery.
#[derive(Debug, Clone, Copy)]
struct Entry {
    severity: Severity,
    bytes: u64,
}

#[derive(Debug, Default)]
struct State {
    entries: BTreeMap<u64, Entry>,
    bytes: u64,
    next: u64,
    /// Faults dropped to make room and not reported yet (persisted in `dropped`).
    dropped: u64,
}

impl State {
    /// Takes an entry out of the index (its file is the caller's business).
    fn forget(&mut self, seq: u64) -> Option<Entry> {
        let entry = self.entries.remove(&seq)?;
        self.bytes -= entry.bytes;
        Some(entry)
    }
}

/// A node's fault spool (see the module documentation). Cheap to share: the finding side
/// [`push`](Spool::push)es, one [`send`](Spool::send) task delivers.
#[derive(Debug, Clone)]
pub struct Spool {
    dir: PathBuf,
    limits: Limits,
    state: Arc<Mutex<State>>,
    pushed: Arc<Notify>,
    metrics: crate::metrics::Metrics,
}

const SUFFIX: &str = ".json";

fn severity_code(s: Severity) -> char {
    match s {
        Severity::Info => 'i',
        Severity::Warning => 'w',
        Severity::Critical => 'c',
    }
}

fn severity_of(code: &str) -> Option<Severity> {
    match code {
        "i" => Some(Severity::Info),
        "w" => Some(Severity::Warning),
        "c" => Some(Severity::Critical),
        _ => None,
    }
}

impl Spool {
    /// Opens (creating) the spool in `dir`: what a previous run left is delivered first.
    /// Temporary files of a write cut short are removed; a file that is not a spool entry is
    /// left alone and logged. `metrics` counts what it holds and drops.
    pub fn open(dir: &Path, limits: Limits, metrics: crate::metrics::Metrics) -> Result<Self> {
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| Error::Io { path, source }
        };
        if limits.entries == 0 || limits.bytes == 0 {
            return Err(Error::Config("the spool's limits must be more than 0".into()));
        }
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let mut state = State::default();
        for item in std::fs::read_dir(dir).map_err(io(dir))? {
            let item = item.map_err(io(dir))?;
            let path = item.path();
            let name = item.file_name().to_string_lossy().into_owned();
            if name.ends_with(".tmp") {
                std::fs::remove_file(&path).map_err(io(&path))?;
                continue;
            }
            let parsed = name
                .strip_suffix(SUFFIX)
                .and_then(|stem| stem.split_once('-'))
                .and_then(|(seq, sev)| Some((seq.parse::<u64>().ok()?, severity_of(sev)?)));
            match parsed {
                Some((seq, severity)) => {
                    let bytes = item.metadata().map_err(io(&path))?.len();
                    state.entries.insert(seq, Entry { severity, bytes });
                    state.bytes += bytes;
                    state.next = state.next.max(seq + 1);
                }
                None if name == "dropped" || name.ends_with(".bad") => {}
                None => tracing::warn!(path = %path.display(), "not a spool entry: left alone"),
            }
        }
        state.dropped =
            std::fs::read_to_string(dir.join("dropped")).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0);
        if !state.entries.is_empty() {
            tracing::info!(faults = state.entries.len(), dir = %dir.display(), "faults spooled before a restart: delivering them first");
        }
        metrics.spooled(state.entries.len());
        Ok(Self {
            dir: dir.to_owned(),
            limits,
            state: Arc::new(Mutex::new(state)),
            pushed: Arc::new(Notify::new()),
            metrics,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn path(&self, seq: u64, severity: Severity) -> PathBuf {
        self.dir.join(format!("{seq:020}-{}{SUFFIX}", severity_code(severity)))
    }

    /// How many faults wait for delivery.
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    /// Whether no fault waits for delivery.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Writes a fault to disk; once this returns `Ok` the fault survives a crash. When the
    /// spool is full, the oldest fault of the lowest severity present is dropped and counted.
    /// The write and its syncs run on a blocking thread: a storm's syncs (milliseconds each)
    /// hold no thread of the async runtime, which an agent shares with its heartbeats — and the
    /// demo's thousands of agents with the whole control plane.
    pub async fn push(&self, event: &FaultEvent) -> Result<()> {
        let (spool, event) = (self.clone(), event.clone());
        tokio::task::spawn_blocking(move || spool.write(&event)).await.map_err(|e| Error::Io {
            path: self.dir.clone(),
            source: std::io::Error::other(format!("the spool's write did not finish: {e}")),
        })?
    }

    /// [`Spool::push`], on the calling thread.
    fn write(&self, event: &FaultEvent) -> Result<()> {
        let body = serde_json::to_vec(event).map_err(|e| Error::Config(format!("a fault does not serialize: {e}")))?;
        let bytes = body.len() as u64;
        let mut state = self.lock();
        while !state.entries.is_empty()
            && (state.entries.len() >= self.limits.entries || state.bytes + bytes > self.limits.bytes)
        {
            let Some(lowest) = state.entries.values().map(|e| e.severity).min() else { break };
            let Some((&seq, &entry)) = state.entries.iter().find(|(_, e)| e.severity == lowest) else { break };
            let path = self.path(seq, entry.severity);
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => return Err(Error::Io { path, source }),
            }
            state.forget(seq);
            state.dropped += 1;
            self.metrics.spool_dropped();
            let path = self.dir.join("dropped");
            crate::replace_file(&path, state.dropped.to_string().as_bytes(), true)
                .map_err(|source| Error::Io { path, source })?;
            tracing::warn!(seq, severity = ?entry.severity, dropped = state.dropped, "the spool is full: dropped its oldest fault of the lowest severity");
        }
        let seq = state.next;
        let path = self.path(seq, event.severity);
        crate::replace_file(&path, &body, true).map_err(|source| Error::Io { path, source })?;
        state.next += 1;
        state.entries.insert(seq, Entry { severity: event.severity, bytes });
        state.bytes += bytes;
        self.metrics.spooled(state.entries.len());
        drop(state);
        self.pushed.notify_one();
        Ok(())
    }

    /// The oldest fault, read from disk. A file that no longer decodes (a damaged disk) is
    /// renamed `*.bad` for a human to look at, logged and skipped.
    fn oldest(&self) -> Option<(u64, FaultEvent)> {
        loop {
            let (seq, entry) = {
                let state = self.lock();
                let (&seq, &entry) = state.entries.iter().next()?;
                (seq, entry)
            };
            let path = self.path(seq, entry.severity);
            let read = std::fs::read(&path).map_err(|e| e.to_string()).and_then(|b| {
                serde_json::from_slice::<FaultEvent>(&b).map_err(|e| format!("does not decode as a fault: {e}"))
            });
            match read {
                Ok(event) => return Some((seq, event)),
                Err(why) => {
                    tracing::error!(path = %path.display(), %why, "a spooled fault cannot be read: kept as .bad, not delivered");
                    let _ = std::fs::rename(&path, path.with_extension("bad"));
                    self.forget(seq);
                }
            }
        }
    }

    /// Takes an entry out of the index, and says how many are left.
    fn forget(&self, seq: u64) -> Option<Entry> {
        let mut state = self.lock();
        let entry = state.forget(seq);
        self.metrics.spooled(state.entries.len());
        entry
    }

    /// Deletes a delivered fault.
    fn delivered(&self, seq: u64) {
        let forgotten = self.forget(seq);
        if let Some(entry) = forgotten {
            let path = self.path(seq, entry.severity);
            if let Err(error) = std::fs::remove_file(&path)
                && error.kind() != std::io::ErrorKind::NotFound
            {
                // Left on disk it is sent again after a restart: a duplicate, never a loss.
                tracing::warn!(%error, path = %path.display(), "cannot delete a delivered fault");
            }
        }
    }

    /// The dropped count, taken (and its file reset) once it is reported.
    fn take_dropped(&self) -> u64 {
        let mut state = self.lock();
        let n = std::mem::take(&mut state.dropped);
        if n > 0 {
            let _ = std::fs::remove_file(self.dir.join("dropped"));
        }
        n
    }

    /// Delivers the spooled faults to `topic`, oldest first, each deleted after its delivery
    /// report; waits for new ones; returns when cancelled (what is left stays on disk).
    /// `dropped` makes the report of faults the full spool dropped (see [`Spool::push`]).
    pub async fn send(
        &self,
        producer: &Producer,
        topic: &str,
        dropped: impl Fn(u64) -> FaultEvent,
        cancel: &CancellationToken,
    ) {
        loop {
            while let Some((seq, event)) = self.oldest() {
                if !producer.publish_until_delivered(topic, &event, cancel).await {
                    return;
                }
                self.delivered(seq);
            }
            let n = self.take_dropped();
            if n > 0 {
                let report = dropped(n);
                if let Err(error) = self.push(&report).await {
                    tracing::error!(%error, "cannot spool the report of dropped faults: sending it directly");
                    if !producer.publish_until_delivered(topic, &report, cancel).await {
                        return;
                    }
                }
                continue;
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = self.pushed.notified() => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;
    use firebreak_schema::{FaultKind, Source};

    fn fault(n: u32, severity: Severity) -> FaultEvent {
        FaultEvent {
            id: uuid::Uuid::now_v7(),
            cluster: "c1".into(),
            node: "n1".into(),
            class: FaultKind::KernelError.class(),
            kind: FaultKind::KernelError,
            severity,
            source: Source::Agent,
            observed_at: Utc::now(),
            message: format!("fault {n}"),
            evidence: Default::default(),
        }
    }

    fn dir() -> tempfile::TempDir {
        tempfile::Builder::new().prefix("fb-spool-").tempdir().unwrap()
    }

    #[tokio::test]
    async fn a_reopened_spool_holds_what_was_pushed_in_order_and_forgets_cut_writes() {
        let tmp = dir();
        let d = tmp.path();
        let spool = Spool::open(d, Limits::default(), Default::default()).unwrap();
        for n in 0..5 {
            spool.push(&fault(n, Severity::Warning)).await.unwrap();
        }
        spool.delivered(0);
        // A write cut short by a crash leaves a temporary file: not an entry.
        std::fs::write(d.join("00000000000000000099-c.tmp"), b"{\"half").unwrap();
        drop(spool);
        let again = Spool::open(d, Limits::default(), Default::default()).unwrap();
        assert_eq!(again.len(), 4);
        assert!(!d.join("00000000000000000099-c.tmp").exists());
        let (seq, first) = again.oldest().unwrap();
        assert_eq!((seq, first.message.as_str()), (1, "fault 1"));
        // New entries go after the old ones.
        again.push(&fault(9, Severity::Info)).await.unwrap();
        assert_eq!(*again.lock().entries.keys().last().unwrap(), 5);
    }

    #[test]
    fn a_full_spool_drops_the_oldest_of_the_lowest_severity_and_counts_it() {
        let tmp = dir();
        let d = tmp.path();
        let metrics = crate::metrics::Metrics::default();
        let spool = Spool::open(d, Limits { entries: 3, bytes: 1 << 20 }, metrics.clone()).unwrap();
        spool.write(&fault(0, Severity::Critical)).unwrap();
        spool.write(&fault(1, Severity::Info)).unwrap();
        spool.write(&fault(2, Severity::Info)).unwrap();
        spool.write(&fault(3, Severity::Warning)).unwrap();
        spool.write(&fault(4, Severity::Warning)).unwrap();
        let left: Vec<_> = std::iter::from_fn(|| {
            let (seq, e) = spool.oldest()?;
            spool.delivered(seq);
            Some(e.message)
        })
        .collect();
        assert_eq!(left, ["fault 0", "fault 3", "fault 4"], "the info faults made room; the critical one stayed");
        let counted = metrics.encode();
        assert!(counted.contains("firebreak_agent_spool_dropped_total 2"), "{counted}");
        assert!(counted.contains("firebreak_agent_spool_faults 0"), "{counted}");
        // The count survives a restart until it is reported.
        drop(spool);
        let again = Spool::open(d, Limits { entries: 3, bytes: 1 << 20 }, Default::default()).unwrap();
        assert_eq!(again.take_dropped(), 2);
        assert_eq!(again.take_dropped(), 0);
        assert!(!d.join("dropped").exists());
        // Bounded by bytes too.
        let small = Spool::open(&d.join("small"), Limits { entries: 100, bytes: 600 }, Default::default()).unwrap();
        for n in 0..10 {
            small.write(&fault(n, Severity::Warning)).unwrap();
        }
        assert!(small.lock().bytes <= 600, "{}", small.lock().bytes);
        assert!(small.take_dropped() > 0);
    }

    #[test]
    fn an_undecodable_entry_is_kept_aside_not_sent_and_not_a_panic() {
        let tmp = dir();
        let d = tmp.path();
        let spool = Spool::open(d, Limits::default(), Default::default()).unwrap();
        spool.write(&fault(0, Severity::Critical)).unwrap();
        spool.write(&fault(1, Severity::Critical)).unwrap();
        std::fs::write(d.join(format!("{:020}-c.json", 0)), b"\x00\x01 not json").unwrap();
        let (seq, e) = spool.oldest().unwrap();
        assert_eq!((seq, e.message.as_str()), (1, "fault 1"));
        assert!(d.join(format!("{:020}-c.bad", 0)).exists());
    }
}
