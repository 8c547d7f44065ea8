//! The per-node agent: follows the node's kernel log, turns matching records into
//! [`FaultEvent`]s and publishes them, with periodic [`Heartbeat`]s, to Kafka.
//!
//! It owns the node-side half of detection: kernel log parsing ([`kmsg`]), the rule set
//! ([`rules`]) and the publishing loop ([`NodeAgent`]). Event ids are derived from the boot id
//! and the kernel sequence number, so re-reading the log after a restart republishes the same
//! ids, which consumers deduplicate: nothing is lost and nothing acts twice. Each fault is
//! written to the node's crash-safe [`spool`] before the log is read past it and deleted once
//! the brokers have it, so neither a Kafka outage nor a crash of the agent loses one. Many
//! [`NodeAgent`]s can share one [`Producer`] (the demo runs thousands).
//!
//! It deliberately depends on no Kubernetes, SQL or HTTP-server crate: it runs on every node.

pub mod actuator;
pub mod kmsg;
pub mod metrics;
pub mod rules;
pub mod sources;
pub mod spool;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use chrono::{DateTime, TimeDelta, Utc};
use firebreak_plumbing::kafka::{KafkaConfig, Producer};
use firebreak_schema::{FaultEvent, FaultKind, Heartbeat, Severity, Source, deterministic_id, fault_topic};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// Everything that can go wrong in the agent.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading the host's files failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A kernel log record could not be parsed.
    #[error("unparsable kernel log record: {0}")]
    Kmsg(String),
    /// The agent was started with settings it cannot run on.
    #[error("{0}")]
    Config(String),
    /// Creating the producer or publishing an event failed.
    #[error(transparent)]
    Plumbing(#[from] firebreak_plumbing::Error),
}

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The agent of one node.
pub struct NodeAgent {
    /// Cluster name.
    pub cluster: String,
    /// Node name.
    pub node: String,
    /// Where the node's `/` is mounted (`/` on a real node).
    pub host_root: PathBuf,
    /// Kernel log rules.
    pub rules: Arc<Vec<rules::Rule>>,
    /// Shared producer.
    pub producer: Producer,
    /// How often the kernel log is read where it cannot be waited on (see
    /// [`kmsg::Follower::wait`]).
    pub poll_interval: Duration,
    /// How often a heartbeat is sent.
    pub heartbeat_interval: Duration,
    /// The node's actuator, told when the node runs a new boot (so a pending reboot is
    /// reported done). Its commands come through a [`actuator::Listener`].
    pub actuator: Option<Arc<actuator::NodeActuator>>,
    /// Where the kernel log cursor is kept (the boot id and the last sequence number whose
    /// faults were delivered): a restarted agent goes on from there instead of publishing the
    /// boot's faults again. `None`: no cursor (every start reads the log from its start).
    pub cursor: Option<PathBuf>,
    /// The sources beyond the kernel log and how often they are checked; `None`: none.
    pub sources: Option<(sources::Sources, Duration)>,
    /// Where faults wait for delivery (`firebreak-agent` keeps it in its state directory).
    /// `None`: no spool; each fault is published and the log read on only once it is delivered,
    /// so a crash during an outage loses nothing that the kernel still holds.
    pub spool: Option<spool::Spool>,
    /// The agent's counters (faults found, kernel log records lost).
    pub metrics: metrics::Metrics,
}

/// The kernel log cursor: the boot and the last record whose faults the brokers have.
fn read_cursor(path: &Path) -> Option<(String, u64)> {
    let text = std::fs::read_to_string(path).ok()?;
    let (boot, seq) = text.trim().split_once(' ')?;
    Some((boot.to_owned(), seq.parse().ok()?))
}

fn write_cursor(path: &Path, boot: &str, seq: u64) -> std::io::Result<()> {
    replace_file(path, format!("{boot} {seq}\n").as_bytes(), false)
}

/// Replaces `path` whole or not at all: the bytes go to a temporary file beside it (`*.tmp`),
/// which is renamed over it. `durable`: the file is synced before the rename and its directory
/// after, so the new content survives a power loss too, not only a crash of the agent.
pub(crate) fn replace_file(path: &Path, bytes: &[u8], durable: bool) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    if durable {
        f.sync_all()?;
    }
    drop(f);
    std::fs::rename(&tmp, path)?;
    match path.parent() {
        Some(dir) if durable => std::fs::File::open(dir).and_then(|d| d.sync_all()),
        _ => Ok(()),
    }
}

impl NodeAgent {
    /// Runs until cancelled.
    pub async fn run(self, cancel: CancellationToken) {
        let span = tracing::info_span!("agent", cluster = %self.cluster, node = %self.node);
        self.run_inner(cancel).instrument(span).await
    }

    async fn run_inner(self, cancel: CancellationToken) {
        let faults = fault_topic(&self.cluster);
        let sender = self.spool.clone().map(|spool| {
            let (producer, topic, cancel) = (self.producer.clone(), faults.clone(), cancel.clone());
            let (cluster, node, root) = (self.cluster.clone(), self.node.clone(), self.host_root.clone());
            tokio::spawn(
                async move {
                    let dropped = |n| lost_faults(&cluster, &node, &root, "spool-full", n, format!(
                        "the agent's spool was full: {n} faults (the oldest of the lowest severity) were dropped undelivered"
                    ));
                    spool.send(&producer, &topic, dropped, &cancel).await
                }
                .in_current_span(),
            )
        });
        // Returns once cancelled, as does the sender; what it did not deliver stays spooled.
        self.follow(&faults, &cancel).await;
        if let Some(sender) = sender {
            let _ = sender.await;
        }
    }

    /// Hands a fault on: to the spool, or (without one, or if the disk refuses it) straight to
    /// the brokers, waiting for delivery. `false`: cancelled before it was handed on.
    async fn emit(&self, topic: &str, event: &FaultEvent, cancel: &CancellationToken) -> bool {
        self.metrics.found(event.kind);
        if let Some(spool) = &self.spool {
            match spool.push(event).await {
                Ok(()) => return true,
                Err(error) => {
                    tracing::error!(%error, event_id = %event.id, "cannot spool a fault: publishing it directly")
                }
            }
        }
        self.producer.publish_until_delivered(topic, event, cancel).await
    }

    /// Reads the kernel log and the sources until cancelled.
    async fn follow(&self, faults: &str, cancel: &CancellationToken) {
        let mut follower = kmsg::Follower::new(&self.host_root);
        let heartbeats = firebreak_schema::heartbeat_topic(&self.cluster);
        let mut beat = tokio::time::interval(self.heartbeat_interval);
        beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut seq = 0u64;
        let mut boot: Option<String> = None;
        // Records of this boot up to here were handled before a restart.
        let mut handled: Option<(String, u64)> = self.cursor.as_deref().and_then(read_cursor);
        // When the cursor was last written.
        let mut kept: Option<std::time::Instant> = None;
        let mut checker = sources::Checker::default();
        let mut holding: std::collections::BTreeSet<String> = Default::default();
        let mut check = tokio::time::interval(self.sources.as_ref().map_or(Duration::from_secs(3600), |s| s.1));
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        if let Some(dir) = self.cursor.as_deref().and_then(Path::parent)
            && let Err(error) = std::fs::create_dir_all(dir)
        {
            tracing::warn!(%error, dir = %dir.display(), "cannot keep the kernel log cursor");
        }
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = beat.tick() => {
                    seq += 1;
                    let hb = Heartbeat {
                        cluster: self.cluster.clone(), node: self.node.clone(),
                        agent_version: env!("CARGO_PKG_VERSION").into(), seq, sent_at: Utc::now(),
                    };
                    if let Err(error) = self.producer.publish_nowait(&heartbeats, &hb) {
                        tracing::warn!(%error, "heartbeat not queued");
                    }
                }
                _ = check.tick(), if self.sources.is_some() => {
                    let Some((cfg, _)) = &self.sources else { continue };
                    let found = checker.check(&self.host_root, cfg).await;
                    let now: std::collections::BTreeSet<String> = found.iter().map(|f| f.key.clone()).collect();
                    for finding in found.into_iter().filter(|f| !holding.contains(&f.key)) {
                        let event = self.fault_of_finding(&finding);
                        tracing::info!(kind = %event.kind, event_id = %event.id, key = %finding.key, "fault found");
                        if !self.emit(faults, &event, cancel).await {
                            return;
                        }
                    }
                    for gone in holding.difference(&now) {
                        tracing::info!(key = %gone, "no longer holds");
                    }
                    holding = now;
                }
                _ = follower.wait(self.poll_interval) => {
                    // A new boot id: the host booted again and its kernel log started over.
                    // (An unreadable boot id tells nothing.)
                    let now_booted = boot_id(&self.host_root);
                    if !now_booted.is_empty() && boot.as_ref() != Some(&now_booted) {
                        if boot.is_some() {
                            tracing::info!(boot_id = %now_booted, "new boot; reading its kernel log from the start");
                            follower.restart();
                        }
                        // Started, or a new boot: a reboot asked for before is done.
                        if let Some(actuator) = &self.actuator
                            && let Err(error) = actuator.confirm_reboot(cancel).await
                        {
                            tracing::warn!(%error, "could not confirm a pending reboot");
                        }
                        boot = Some(now_booted);
                    }
                    let records = match follower.poll() {
                        Ok(r) => r,
                        Err(error) => {
                            tracing::warn!(%error, "cannot read the kernel log");
                            continue;
                        }
                    };
                    let lost = follower.take_lost();
                    if lost > 0 {
                        let next = records.first().map_or(0, |r| r.seq);
                        let event = lost_faults(&self.cluster, &self.node, &self.host_root, "kmsg-overrun", lost, format!(
                            "{lost} kernel log records were overwritten before the agent read them: faults among them are unknown"
                        ));
                        tracing::warn!(lost, next, "kernel log records were overwritten before they were read");
                        self.metrics.lost(lost);
                        if !self.emit(faults, &event, cancel).await {
                            return;
                        }
                    }
                    let this_boot = boot.clone().unwrap_or_default();
                    let done = handled.as_ref().filter(|(b, _)| *b == this_boot).map(|(_, s)| *s);
                    let mut last = None;
                    let mut emitted = false;
                    for record in records {
                        last = Some(record.seq);
                        if done.is_some_and(|s| record.seq <= s) {
                            continue;
                        }
                        let Some(event) = self.fault_of(&record) else { continue };
                        emitted = true;
                        tracing::info!(kind = %event.kind, event_id = %event.id, seq = record.seq, "fault detected");
                        if !self.emit(faults, &event, cancel).await {
                            return;
                        }
                    }
                    // Every fault up to `last` is spooled or delivered: a restart goes on from there.
                    // Kept at once after a fault (a restart does not find it again), else at most
                    // once a second (what a restart reads again then holds no fault): a busy log
                    // would otherwise replace the file fifty times a second.
                    if let (Some(path), Some(seq)) = (&self.cursor, last)
                        && done.is_none_or(|s| seq > s)
                        && !this_boot.is_empty()
                        && (emitted || kept.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)))
                    {
                        if let Err(error) = write_cursor(path, &this_boot, seq) {
                            tracing::warn!(%error, path = %path.display(), "cannot keep the kernel log cursor");
                        }
                        handled = Some((this_boot, seq));
                        kept = Some(std::time::Instant::now());
                    }
                }
            }
        }
    }

    /// The event of a finding of the sources: its id is named by the boot, the finding's key
    /// and what was seen, so the same finding found again (after a restart) has the same id.
    fn fault_of_finding(&self, f: &sources::Finding) -> FaultEvent {
        let (btime, boot_id) = boot_facts(&self.host_root);
        let boot = btime.and_then(|b| DateTime::from_timestamp(b, 0)).unwrap_or(DateTime::UNIX_EPOCH);
        FaultEvent {
            id: deterministic_id(boot, &[&self.cluster, &self.node, &boot_id, &f.key, &f.seen]),
            cluster: self.cluster.clone(),
            node: self.node.clone(),
            class: f.kind.class(),
            kind: f.kind,
            severity: f.severity,
            source: Source::Agent,
            observed_at: Utc::now(),
            message: f.message.clone(),
            evidence: BTreeMap::from([
                ("check".into(), f.key.clone()),
                ("seen".into(), f.seen.clone()),
                ("boot_id".into(), boot_id),
            ]),
        }
    }

    /// The fault a kernel log record reveals, if a rule matches it.
    pub fn fault_of(&self, record: &kmsg::Record) -> Option<FaultEvent> {
        let rule = rules::first_match(&self.rules, &record.message)?;
        let (btime, boot_id) = boot_facts(&self.host_root);
        let since_boot = TimeDelta::microseconds(i64::try_from(record.usec).unwrap_or(i64::MAX));
        // The kernel stamps records with its monotonic clock since boot. The real clock converts
        // that: now − (uptime now − the record's stamp), from the same kernel's `proc/uptime`.
        // Without it, the boot time (`btime`, whole seconds, and off by however much the real
        // clock was stepped since boot) plus the stamp; without that either, the agent's own
        // clock when it read the record, and the event says so: never a date in 1970.
        let uptime = std::fs::read_to_string(self.host_root.join("proc/uptime"))
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse::<f64>().ok())
            .filter(|up| up.is_finite() && *up >= 0.0)
            .map(|up| TimeDelta::microseconds((up * 1e6) as i64))
            .filter(|up| *up >= since_boot);
        let (observed_at, time_source) = match (uptime, btime.and_then(|b| DateTime::from_timestamp(b, 0))) {
            (Some(up), _) => (Utc::now() - (up - since_boot), "real clock − (uptime − kernel timestamp)".to_owned()),
            (None, Some(boot)) => match boot.checked_add_signed(since_boot) {
                Some(t) => (t, "boot time + kernel timestamp".to_owned()),
                None => (Utc::now(), "agent clock when read: kernel timestamp out of range".to_owned()),
            },
            (None, None) => (
                Utc::now(),
                format!("agent clock when read: no boot time in {}", self.host_root.join("proc/stat").display()),
            ),
        };
        // The id must not change when the record is read again: with no boot time it takes the
        // kernel timestamp alone for its time part.
        let id_time = btime
            .and_then(|b| DateTime::from_timestamp(b, 0))
            .and_then(|b| b.checked_add_signed(since_boot))
            .unwrap_or(DateTime::UNIX_EPOCH + since_boot);
        let seq = record.seq.to_string();
        Some(FaultEvent {
            id: deterministic_id(id_time, &[&self.cluster, &self.node, &boot_id, &seq]),
            cluster: self.cluster.clone(),
            node: self.node.clone(),
            class: rule.kind.class(),
            kind: rule.kind,
            severity: rule.severity,
            source: Source::Agent,
            observed_at,
            message: record.message.clone(),
            evidence: BTreeMap::from([
                ("rule".into(), rule.name.clone()),
                ("kmsg_seq".into(), seq),
                ("kmsg_level".into(), record.level.to_string()),
                ("boot_id".into(), boot_id),
                ("time_source".into(), time_source),
            ]),
        })
    }
}

/// The report that the agent lost `n` fault reports (`why`: `kmsg-overrun`, `spool-full`).
/// Its id names the moment: two losses are two reports.
fn lost_faults(cluster: &str, node: &str, root: &Path, why: &str, n: u64, message: String) -> FaultEvent {
    let boot_id = boot_id(root);
    let now = Utc::now();
    FaultEvent {
        id: deterministic_id(now, &[cluster, node, &boot_id, why, &n.to_string()]),
        cluster: cluster.to_owned(),
        node: node.to_owned(),
        class: FaultKind::FaultsLost.class(),
        kind: FaultKind::FaultsLost,
        severity: Severity::Warning,
        source: Source::Agent,
        observed_at: now,
        message,
        evidence: BTreeMap::from([
            ("rule".into(), why.into()),
            ("lost".into(), n.to_string()),
            ("boot_id".into(), boot_id),
        ]),
    }
}

/// `btime` from `<root>/proc/stat` (`None` if it cannot be read) and the boot id from
/// `<root>/proc/sys/kernel/random/boot_id`.
fn boot_facts(root: &Path) -> (Option<i64>, String) {
    let btime = std::fs::read_to_string(root.join("proc/stat"))
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("btime ")?.trim().parse().ok()))
        .filter(|b: &i64| *b > 0);
    (btime, boot_id(root))
}

/// The boot id from `<root>/proc/sys/kernel/random/boot_id` (empty if it cannot be read).
fn boot_id(root: &Path) -> String {
    std::fs::read_to_string(root.join("proc/sys/kernel/random/boot_id"))
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// Command-line arguments of `firebreak agent` and `firebreak-agent`.
#[derive(Debug, Clone, clap::Args)]
pub struct AgentArgs {
    /// Cluster this node belongs to.
    #[arg(long, env = "FIREBREAK_CLUSTER")]
    pub cluster: String,
    /// This node's name.
    #[arg(long, env = "FIREBREAK_NODE")]
    pub node: String,
    /// Where the host's root filesystem is mounted.
    #[arg(long, default_value = "/")]
    pub host_root: PathBuf,
    /// Kafka bootstrap servers.
    #[arg(long, env = "FIREBREAK_KAFKA_BROKERS")]
    pub kafka_brokers: String,
    /// A librdkafka property for the agent's Kafka clients, `key=value` (repeatable): TLS and
    /// SASL (`security.protocol=SASL_SSL`, `sasl.mechanism=…`, …).
    #[arg(long = "kafka-option", value_parser = key_value)]
    pub kafka_options: Vec<(String, String)>,
    /// A file of librdkafka properties, `key=value` per line, read before `--kafka-option`.
    #[arg(long = "kafka-config", env = "FIREBREAK_KAFKA_CONFIG")]
    pub kafka_config: Option<PathBuf>,
    /// Kernel log rules (repeatable), replacing the built-in ones: node-problem-detector's
    /// system-log-monitor files (`.json`, e.g. its `kernel-monitor.json`, unchanged) or
    /// Firebreak's own TOML; matched in the order given.
    #[arg(long = "rules", value_name = "FILE")]
    pub rules: Vec<PathBuf>,
    /// How often the sources beyond the kernel log are checked (EDAC counters, mounts, NICs,
    /// node components, plugins); `0s`: never.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub check_interval: Duration,
    /// A mount point the node needs mounted read-write (repeatable).
    #[arg(long = "mount", value_name = "PATH", default_values = ["/", "/var/lib/kubelet"])]
    pub mounts: Vec<String>,
    /// A node component's health: `NAME=http://HOST:PORT/PATH` (200 is healthy) or
    /// `NAME=/path/to/socket` under the host root (repeatable).
    #[arg(long = "component", value_name = "NAME=TARGET", value_parser = key_value,
          default_values = ["kubelet=http://127.0.0.1:10248/healthz", "containerd=/run/containerd/containerd.sock"])]
    pub components: Vec<(String, String)>,
    /// A custom plugin, node-problem-detector's contract (exit 0 ok, 1 problem, 2 unknown):
    /// `NAME=PROGRAM ARGS` (repeatable).
    #[arg(long = "plugin", value_name = "NAME=PROGRAM", value_parser = key_value)]
    pub plugins: Vec<(String, String)>,
    /// Corrected memory errors between two checks that make a `MemoryCorrectable` fault.
    #[arg(long, default_value_t = 100)]
    pub ce_threshold: u64,
    /// Receive and send errors of a physical NIC between two checks that make a `NicErrors`
    /// fault.
    #[arg(long, default_value_t = 100)]
    pub nic_error_threshold: u64,
    /// smartmontools' `smartctl`, asked for each physical disk's SMART health
    /// (`smartctl -H -j /dev/DISK`); a failing disk is a `DiskFailing` fault. Not installed:
    /// the check says so once and stops.
    #[arg(long, default_value = "smartctl")]
    pub smartctl: String,
    /// No SMART checks.
    #[arg(long)]
    pub no_smart: bool,
    /// Heartbeat period.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub heartbeat_interval: Duration,
    /// Kernel log poll period, where the log cannot be waited on (the agent waits on the
    /// device's readiness, or on a regular file's inotify watch, and reads it at least every
    /// 10 s).
    #[arg(long, default_value = "250ms", value_parser = humantime::parse_duration)]
    pub poll_interval: Duration,
    /// Carry out no commands: the node's reboots and restarts are someone else's job.
    #[arg(long)]
    pub no_actuator: bool,
    /// The program (and arguments, split on spaces) that reboots this node. In a container,
    /// reach the host, e.g. `nsenter --target 1 --mount --uts --ipc --net -- systemctl reboot`.
    #[arg(long, default_value = "systemctl reboot")]
    pub reboot_command: String,
    /// The program that restarts a component; `{component}` is replaced by its name.
    #[arg(long, default_value = "systemctl restart {component}")]
    pub restart_command: String,
    /// Components a restart may name (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "kubelet,containerd")]
    pub restartable: Vec<String>,
    /// Longest a reboot or restart command may run.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub command_timeout: Duration,
    /// Where the agent keeps its state: the faults waiting for delivery (`spool/`), the kernel
    /// log cursor (`kmsg-cursor`), the reboot the actuator is waiting for and the commands it
    /// handled. Keep it on the host's disk (deploy/agent.yaml mounts a hostPath): what is
    /// spooled there survives the agent's crash and its pod's replacement.
    #[arg(long, default_value = "/var/lib/firebreak-agent")]
    pub state_dir: PathBuf,
    /// Most faults the spool keeps while the brokers cannot be reached; when full, the oldest
    /// of the lowest severity is dropped, and the loss reported once there is room.
    #[arg(long, default_value_t = 10_000)]
    pub spool_max_entries: usize,
    /// Most bytes the spool keeps (the faults' JSON).
    #[arg(long, default_value_t = 64 << 20)]
    pub spool_max_bytes: u64,
    /// Write the agent's counters here every heartbeat, for node_exporter's textfile collector
    /// (a `.prom` file in its `--collector.textfile.directory`): faults found by kind, kernel
    /// log records lost, faults the spool dropped and holds.
    #[arg(long, value_name = "FILE")]
    pub metrics_textfile: Option<PathBuf>,
}

/// `key=value`, for `--kafka-option`, `--component` and `--plugin`.
fn key_value(s: &str) -> std::result::Result<(String, String), String> {
    s.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())).ok_or_else(|| format!("`{s}` is not key=value"))
}

/// Checks the settings an agent cannot run blind without: names as Kubernetes spells them, a
/// host root with the kernel log and the boot id, non-zero intervals; says what it reads.
pub fn check(args: &AgentArgs) -> Result<Vec<rules::Rule>> {
    use firebreak_schema::names::is_dns1123_subdomain;
    for (flag, v) in [("--cluster", &args.cluster), ("--node", &args.node)] {
        if !is_dns1123_subdomain(v) {
            return Err(Error::Config(format!("{flag} `{}` is not a DNS-1123 name", v.escape_debug())));
        }
    }
    let root = &args.host_root;
    for (file, why) in [
        ("dev/kmsg", "the kernel log (mount the host's /dev/kmsg there; deploy/agent.yaml does)"),
        ("proc/sys/kernel/random/boot_id", "the boot id (mount the host's /proc there)"),
    ] {
        let path = root.join(file);
        if !path.exists() {
            return Err(Error::Config(format!("--host-root {}: no {}: {why}", root.display(), path.display())));
        }
    }
    if !root.join("proc/stat").exists() {
        tracing::warn!(root = %root.display(), "no proc/stat: kernel log times come from the agent's clock, and events say so");
    }
    for (flag, d) in [
        ("--heartbeat-interval", args.heartbeat_interval),
        ("--poll-interval", args.poll_interval),
        ("--command-timeout", args.command_timeout),
    ] {
        if d.is_zero() {
            return Err(Error::Config(format!("{flag} must be more than 0")));
        }
    }
    let rules = if args.rules.is_empty() {
        rules::defaults()
    } else {
        let mut all = Vec::new();
        for path in &args.rules {
            all.extend(rules::load(path)?);
        }
        all
    };
    if rules.is_empty() {
        return Err(Error::Config("no kernel log rules: the files given hold none".into()));
    }
    tracing::info!(cluster = %args.cluster, node = %args.node, host_root = %root.display(), brokers = %args.kafka_brokers, rules = rules.len(), "agent starting");
    Ok(rules)
}

/// The agent's producer. It lingers for nothing (`linger.ms=0`, where Firebreak's services
/// wait 5 ms to batch): an agent's records are a heartbeat every few seconds and, rarely, a
/// fault that should be on its way at once; there is nothing to batch them with, and 5 ms were a
/// fifth of a fault's way from the kernel log to its node cordoned (`firebreak bench detect`).
/// The operator's options still win.
pub fn producer(kafka: &KafkaConfig) -> Result<Producer> {
    Ok(Producer::with(kafka, &[("linger.ms", "0")])?)
}

/// Runs one agent until Ctrl-C, then flushes what is queued.
pub async fn run(args: AgentArgs) -> Result<()> {
    let rules = check(&args)?;
    let mut kafka = KafkaConfig::new(args.kafka_brokers);
    if let Some(p) = &args.kafka_config {
        kafka.client_options = KafkaConfig::options_file(p)?;
    }
    kafka.client_options.extend(args.kafka_options.iter().cloned());
    let producer = producer(&kafka)?;
    let limits = spool::Limits { entries: args.spool_max_entries, bytes: args.spool_max_bytes };
    let metrics = metrics::Metrics::default();
    let spool = spool::Spool::open(&args.state_dir.join("spool"), limits, metrics.clone())?;
    let cancel = CancellationToken::new();
    let argv = |s: &str| s.split_whitespace().map(str::to_owned).collect::<Vec<_>>();
    let actuator = (!args.no_actuator).then(|| {
        let cfg = actuator::ActuatorConfig {
            effect: actuator::Effect::Exec { reboot: argv(&args.reboot_command), restart: argv(&args.restart_command) },
            restartable: args.restartable.clone(),
            timeout: args.command_timeout,
        };
        Arc::new(actuator::NodeActuator::new(
            &args.cluster,
            &args.node,
            &args.host_root,
            &args.state_dir,
            cfg,
            producer.clone(),
        ))
    });
    let listener = actuator.clone().map(|a| {
        let group = format!("firebreak-agent-{}-{}", args.cluster, args.node);
        let (kafka, producer, cancel) = (kafka.clone(), producer.clone(), cancel.clone());
        tokio::spawn(async move {
            if let Err(error) = actuator::Listener::new([a]).run(&kafka, &group, &producer, cancel).await {
                tracing::error!(%error, "the command listener stopped: this node's commands are not carried out");
            }
        })
    });
    let agent = NodeAgent {
        cluster: args.cluster,
        node: args.node,
        host_root: args.host_root,
        rules: Arc::new(rules),
        producer: producer.clone(),
        poll_interval: args.poll_interval,
        heartbeat_interval: args.heartbeat_interval,
        actuator,
        sources: (!args.check_interval.is_zero()).then(|| {
            let cfg = sources::Sources {
                ce_threshold: args.ce_threshold,
                mounts: args.mounts.clone(),
                components: args.components.iter().cloned().collect(),
                plugins: args.plugins.clone(),
                nic_error_threshold: args.nic_error_threshold,
                smartctl: (!args.no_smart).then(|| args.smartctl.clone()),
                timeout: args.command_timeout.min(Duration::from_secs(30)),
            };
            (cfg, args.check_interval)
        }),
        cursor: Some(args.state_dir.join("kmsg-cursor")),
        spool: Some(spool),
        metrics,
    };
    let textfile = args.metrics_textfile.clone().map(|path| {
        let (metrics, cancel) = (agent.metrics.clone(), cancel.clone());
        let every = args.heartbeat_interval;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tick.tick() => {}
                }
                if let Err(error) = metrics.write(&path) {
                    tracing::warn!(%error, path = %path.display(), "cannot write the metrics textfile");
                }
            }
        })
    });
    let task = tokio::spawn(agent.run(cancel.clone()));
    let _ = tokio::signal::ctrl_c().await;
    cancel.cancel();
    let _ = task.await;
    if let Some(textfile) = textfile {
        let _ = textfile.await;
    }
    if let Some(listener) = listener {
        let _ = listener.await;
    }
    producer.flush(Duration::from_secs(10))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent(root: &Path) -> NodeAgent {
        let cfg = KafkaConfig::new("127.0.0.1:1");
        NodeAgent {
            cluster: "c1".into(),
            node: "n1".into(),
            host_root: root.to_owned(),
            rules: Arc::new(rules::defaults()),
            producer: Producer::new(&cfg).unwrap(),
            poll_interval: Duration::from_secs(1),
            heartbeat_interval: Duration::from_secs(1),
            actuator: None,
            cursor: None,
            sources: None,
            spool: None,
            metrics: Default::default(),
        }
    }

    #[test]
    fn a_fault_is_dated_from_the_boot_time_or_says_why_not_never_1970() {
        let tmp = tempfile::Builder::new().prefix("fb-agent-").tempdir().unwrap();
        let root = tmp.path();
        std::fs::create_dir_all(root.join("proc")).unwrap();
        let record = kmsg::Record { level: 3, seq: 7, usec: 5_000_000, message: "EDAC MC0: 1 UE read error".into() };
        // No proc/stat: the agent's clock, and the event says so.
        let a = agent(root);
        let e = a.fault_of(&record).unwrap();
        assert!((Utc::now() - e.observed_at).num_seconds().abs() < 5, "{}", e.observed_at);
        assert!(e.evidence["time_source"].contains("no boot time"), "{:?}", e.evidence);
        assert_eq!(a.fault_of(&record).unwrap().id, e.id, "read again, the same id");
        // With btime: boot time + the kernel's timestamp.
        std::fs::write(root.join("proc/stat"), "cpu 0\nbtime 1800000000\n").unwrap();
        let e = a.fault_of(&record).unwrap();
        assert_eq!(e.observed_at, DateTime::from_timestamp(1_800_000_005, 0).unwrap());
        assert_eq!(e.evidence["time_source"], "boot time + kernel timestamp");
        // With the kernel's uptime: the real clock minus how long ago the kernel stamped it.
        std::fs::write(root.join("proc/uptime"), "65.25 120.50\n").unwrap();
        let e = a.fault_of(&record).unwrap();
        let ago = (Utc::now() - e.observed_at).num_milliseconds();
        assert!((60_200..61_000).contains(&ago), "stamped 60.25 s before now, not {ago} ms");
        assert_eq!(e.evidence["time_source"], "real clock − (uptime − kernel timestamp)");
        assert_eq!(a.fault_of(&record).unwrap().id, e.id, "the id does not move with the clock");
        // An uptime shorter than the stamp is another kernel's: not used.
        std::fs::write(root.join("proc/uptime"), "1.00 1.00\n").unwrap();
        assert_eq!(a.fault_of(&record).unwrap().evidence["time_source"], "boot time + kernel timestamp");
    }
}
