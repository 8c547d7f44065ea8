//! `firebreak bench fleet`: the control plane alone at fleet scale, in three processes.
//!
//! - `firebreak fleet-sim` (a child process): the simulated clusters behind their Kubernetes
//!   API servers, kubelets renewing their node Leases at a real kubelet's period, steady pod
//!   churn, and each cluster's simulated machines carrying out the remediators' commands.
//! - `firebreak bench control-plane` (a child process, hidden): what is measured — the event
//!   center, the gate (with a policy that limits no node operation), a detector and a
//!   remediator per cluster, in one process, as [`crate::demo::ControlPlane`] runs them,
//!   reaching the clusters through their kubeconfigs.
//! - this process: librdkafka's mock broker and the load on it — every node's agent heartbeat
//!   on its cluster's topic, spread evenly over the heartbeat period, and a fault every
//!   `--fault-every` on a random node (each node once), as that node's agent would publish it,
//!   and a watch of every cluster's nodes that sees each faulted node cordoned and tainted.
//!
//! Every `--sample-every` it reads each process's resident memory and CPU time from `/proc`, and
//! the control plane's consumer lag from its `/metrics` (every consumer's
//! `*_consumer_lag{group,topic,partition}`). The lag is "growing" when the mean of the run's
//! last third of samples is above the mean of its middle third by more than one second of
//! heartbeats; "unknown" when a metrics endpoint did not answer a sample (a starved control
//! plane's silence is not zero lag).

use std::{
    collections::{BTreeMap, HashMap},
    path::PathBuf,
    process::Stdio,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use clap::Args;
use firebreak_plumbing::kafka::{KafkaConfig, Producer};
use firebreak_schema::{FaultEvent, FaultKind, Heartbeat, Severity, Source};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio_util::sync::CancellationToken;

use super::isolate::{Nodes, is_isolated, isolated};
use crate::{
    Error, Result,
    demo::{ClusterAccess, ControlPlane, StackOptions},
};

/// `firebreak bench fleet` flags.
#[derive(Debug, Clone, Args)]
pub struct FleetBench {
    /// Simulated clusters.
    #[arg(long, default_value_t = 100)]
    pub clusters: usize,
    /// Nodes per cluster.
    #[arg(long, default_value_t = 1000)]
    pub nodes: usize,
    /// Each node's agent heartbeat and kubelet Lease renewal period (a real kubelet's is 10 s).
    #[arg(long, default_value = "10s", value_parser = crate::cli::positive_duration)]
    pub heartbeat: Duration,
    /// A fault on a random node this often.
    #[arg(long, default_value = "1s", value_parser = crate::cli::positive_duration)]
    pub fault_every: Duration,
    /// Pods of the churn workload created per minute in each cluster.
    #[arg(long, default_value_t = 60)]
    pub churn_per_minute: u32,
    /// How often fleet-sim's kubelets and controllers run in each cluster.
    #[arg(long, default_value = "1s", value_parser = crate::cli::positive_duration)]
    pub tick: Duration,
    /// How long the loaded control plane is measured.
    #[arg(long, default_value = "10m", value_parser = crate::cli::positive_duration)]
    pub duration: Duration,
    /// How often memory, CPU and lag are sampled.
    #[arg(long, default_value = "30s", value_parser = crate::cli::positive_duration)]
    pub sample_every: Duration,
    /// How long fleet-sim and the control plane may take to come up (past it, a control plane
    /// whose detectors and remediators are not all consuming yet is measured as it is).
    #[arg(long, default_value = "10m", value_parser = crate::cli::positive_duration)]
    pub setup_timeout: Duration,
    /// Also write the figures as JSON to this file (for `bench scale`).
    #[arg(long, hide = true)]
    pub figures_to: Option<PathBuf>,
}

/// What `bench fleet` measured at one fleet size (`--figures-to`), for `bench scale`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) struct SizeFigures {
    /// Simulated nodes.
    pub(crate) nodes: usize,
    /// Seconds from start until fleet-sim and the control plane were up.
    pub(crate) setup_s: f64,
    /// The control plane's peak resident memory, MiB.
    pub(crate) control_mib: f64,
    /// The control plane's mean CPU under the load, percent of one core.
    pub(crate) control_cpu_percent: f64,
    /// fleet-sim's peak resident memory, MiB.
    pub(crate) sim_mib: f64,
    /// Fault published → node cordoned and tainted, p50 and p99, ms; `None` when no faulted
    /// node was.
    pub(crate) cordoned_ms: Option<(f64, f64)>,
    /// What the consumer lag did over the run: `flat`, `grows`, or `unknown` (the control
    /// plane's metrics did not answer).
    pub(crate) lag: String,
}

/// `firebreak bench control-plane`: the control plane for `bench fleet`'s child process. It
/// prints one JSON line with its addresses when it is up and runs until it is killed.
#[derive(Debug, Clone, Args)]
pub struct ControlPlaneChild {
    /// Where its databases go.
    #[arg(long)]
    pub data_dir: PathBuf,
    /// Kafka bootstrap servers.
    #[arg(long)]
    pub kafka_brokers: String,
    /// The agents' heartbeat period (a silent agent is one quiet for five of them).
    #[arg(long, value_parser = crate::cli::positive_duration)]
    pub heartbeat: Duration,
    /// A cluster, `NAME=KUBECONFIG` (repeatable).
    #[arg(long = "cluster", value_parser = cluster_access, required = true)]
    pub clusters: Vec<ClusterAccess>,
}

fn cluster_access(s: &str) -> std::result::Result<ClusterAccess, String> {
    let (name, path) = s.split_once('=').ok_or_else(|| format!("`{s}`: NAME=KUBECONFIG"))?;
    if name.is_empty() || path.is_empty() {
        return Err(format!("`{s}`: NAME=KUBECONFIG"));
    }
    Ok(ClusterAccess { name: name.into(), kubeconfig: path.into() })
}

/// What the control plane child prints when it is up.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Ready {
    event_center_url: String,
    gate_url: String,
    metrics_url: String,
    viewer_token: String,
}

/// Runs the control plane until the process is killed.
pub(super) async fn control_plane(args: ControlPlaneChild) -> Result<Vec<super::Headline>> {
    std::fs::create_dir_all(&args.data_dir)
        .map_err(|source| Error::Io { what: format!("create {}", args.data_dir.display()), source })?;
    // Production's detector and leader Lease defaults; a gate policy that limits no node
    // operation (the built-in one's breaker would stop a cluster's remediation after ten faults
    // in ten minutes, and the cost measured is the control plane doing the work); the agents'
    // heartbeat as given.
    let mut opts = StackOptions::new(args.data_dir.clone(), args.clusters.len(), 1);
    opts.heartbeat = args.heartbeat;
    opts.sample_every = Duration::from_secs(10);
    opts.pod_window = Duration::from_secs(300);
    opts.pod_start_deadline = Duration::from_secs(120);
    opts.not_ready_for = Duration::from_secs(30);
    opts.policy = super::drain::generous();
    opts.leader_lease = Duration::from_secs(15);
    let kafka = KafkaConfig::new(args.kafka_brokers.clone());
    let control = ControlPlane::start(&opts, &args.data_dir, &args.clusters, &kafka).await?;
    let ready = Ready {
        event_center_url: control.event_center_url.clone(),
        gate_url: control.gate_url.clone(),
        metrics_url: control.metrics_url.clone(),
        viewer_token: control.tokens.viewer.clone(),
    };
    println!("{}", serde_json::to_string(&ready).map_err(|e| Error::Bench(e.to_string()))?);
    std::future::pending::<()>().await;
    Ok(Vec::new())
}

/// A child process of this binary, killed when dropped.
struct Child {
    what: &'static str,
    child: tokio::process::Child,
    pid: u32,
    stdout: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
}

impl Child {
    fn spawn(what: &'static str, args: &[String]) -> Result<Child> {
        let exe = std::env::current_exe().map_err(|source| Error::Io { what: "find this binary".into(), source })?;
        let mut child = tokio::process::Command::new(&exe)
            .args(args)
            .stdout(Stdio::piped())
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| Error::Io { what: format!("run {} {what}", exe.display()), source })?;
        let pid = child.id().ok_or_else(|| Error::Bench(format!("{what} exited at once")))?;
        let stdout = child.stdout.take().ok_or_else(|| Error::Bench(format!("{what}: no stdout")))?;
        Ok(Child { what, child, pid, stdout: BufReader::new(stdout).lines() })
    }

    /// The next line it prints, within `timeout`.
    async fn line(&mut self, timeout: Duration) -> Result<String> {
        match tokio::time::timeout(timeout, self.stdout.next_line()).await {
            Ok(Ok(Some(line))) => Ok(line),
            Ok(Ok(None)) => Err(Error::Bench(format!("{} exited before it was up", self.what))),
            Ok(Err(source)) => Err(Error::Io { what: format!("read {}'s output", self.what), source }),
            Err(_) => Err(Error::Bench(format!("{} not up within {timeout:?}", self.what))),
        }
    }

    /// An error if it has exited.
    fn alive(&mut self) -> Result<()> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(Error::Bench(format!("{} exited during the run: {status}", self.what))),
            Err(source) => Err(Error::Io { what: format!("wait for {}", self.what), source }),
        }
    }
}

/// Every node's heartbeat, once per `every`, spread evenly over it (a slice every 100 ms).
async fn heartbeats(
    producer: Producer,
    nodes: Vec<(String, String)>,
    every: Duration,
    sent: Arc<AtomicU64>,
    dropped: Arc<AtomicU64>,
    cancel: CancellationToken,
) {
    let slice = Duration::from_millis(100);
    let slices = (every.as_millis() / slice.as_millis()).max(1) as usize;
    let per_slice = nodes.len().div_ceil(slices);
    let mut tick = tokio::time::interval(slice);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let topics: HashMap<&str, String> =
        nodes.iter().map(|(c, _)| (c.as_str(), firebreak_schema::heartbeat_topic(c))).collect();
    let mut seq = 0_u64;
    for chunk in nodes.chunks(per_slice.max(1)).cycle() {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        if std::ptr::eq(chunk.as_ptr(), nodes.as_ptr()) {
            seq += 1;
        }
        for (cluster, node) in chunk {
            let hb = Heartbeat {
                cluster: cluster.clone(),
                node: node.clone(),
                agent_version: "bench".into(),
                seq,
                sent_at: chrono::Utc::now(),
            };
            let published = topics.get(cluster.as_str()).map(|topic| producer.publish_nowait(topic, &hb));
            match published {
                Some(Ok(())) => sent.fetch_add(1, Ordering::Relaxed),
                _ => dropped.fetch_add(1, Ordering::Relaxed),
            };
        }
    }
}

/// Faults published and not yet seen isolated: (cluster, node, when published).
type Pending = Arc<Mutex<Vec<(String, String, Instant)>>>;

/// A fault on a random node every `every` (each node once), as its agent would publish it.
async fn faults(
    producer: Producer,
    mut nodes: Vec<(String, String)>,
    every: Duration,
    sent: Arc<AtomicU64>,
    pending: Pending,
    cancel: CancellationToken,
) {
    use rand::seq::SliceRandom;
    nodes.shuffle(&mut rand::rng());
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let Some((cluster, node)) = nodes.pop() else { return };
        let kind = FaultKind::MemoryUncorrectable;
        let fault = FaultEvent {
            id: uuid::Uuid::now_v7(),
            class: kind.class(),
            kind,
            severity: Severity::Critical,
            source: Source::Agent,
            observed_at: chrono::Utc::now(),
            message: "EDAC MC0: 1 UE memory read error on CPU_SrcID#0_Ha#0_Chan#1_DIMM#0".into(),
            evidence: BTreeMap::from([("rule".into(), "edac-uncorrectable".into())]),
            cluster,
            node,
        };
        let published = Instant::now();
        if producer.publish(&firebreak_schema::fault_topic(&fault.cluster), &fault).await.is_ok() {
            sent.fetch_add(1, Ordering::Relaxed);
            pending.lock().unwrap_or_else(|e| e.into_inner()).push((fault.cluster, fault.node, published));
        }
    }
}

/// Moves each pending fault's latency into `done` once its node is seen cordoned and tainted.
async fn isolations(
    watches: HashMap<String, Nodes>,
    pending: Pending,
    done: Arc<Mutex<Vec<Duration>>>,
    cancel: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(5)) => {}
        }
        let mut p = pending.lock().unwrap_or_else(|e| e.into_inner());
        p.retain(|(cluster, node, at)| {
            let seen = watches.get(cluster).is_some_and(|w| is_isolated(w, node));
            if seen {
                done.lock().unwrap_or_else(|e| e.into_inner()).push(at.elapsed());
            }
            !seen
        });
    }
}

/// One sample of the run.
struct Sample {
    at: Duration,
    control_rss_mib: f64,
    control_cpu: f64,
    sim_rss_mib: f64,
    sim_cpu: f64,
    own_cpu: f64,
    /// `None` when a metrics endpoint did not answer.
    lag: Option<BTreeMap<String, f64>>,
    stored: Option<f64>,
}

impl Sample {
    fn total_lag(&self) -> Option<f64> {
        self.lag.as_ref().map(|l| l.values().fold(0.0, |a, b| a + b))
    }
}

/// Every `firebreak_<service>_consumer_lag{…group="G"…} value` sample of a metrics text:
/// (service, group, value).
fn consumer_lags(metrics: &str) -> impl Iterator<Item = (&str, &str, f64)> {
    metrics.lines().filter(|l| !l.starts_with('#')).filter_map(|line| {
        let (name, rest) = line.split_once('{')?;
        let service = name.strip_prefix("firebreak_")?.strip_suffix("_consumer_lag")?;
        let group = rest.split("group=\"").nth(1)?.split('"').next()?;
        let value = rest.rsplit_once(' ')?.1.trim().parse::<f64>().ok()?;
        Some((service, group, value))
    })
}

/// The consumer lag of a metrics text, summed per service.
fn lag_by_service(metrics: &str, into: &mut BTreeMap<String, f64>) {
    for (service, _, value) in consumer_lags(metrics) {
        *into.entry(service.to_owned()).or_default() += value;
    }
}

/// CPU used between two readings, in % of one core.
fn cpu_percent(before: &super::Usage, after: &super::Usage, over: Duration) -> f64 {
    100.0 * after.cpu.saturating_sub(before.cpu).as_secs_f64() / over.as_secs_f64().max(1e-9)
}

fn mean(xs: impl Iterator<Item = f64>) -> f64 {
    let (sum, n) = xs.fold((0.0, 0_usize), |(s, n), x| (s + x, n + 1));
    if n == 0 { 0.0 } else { sum / n as f64 }
}

/// Runs `bench fleet`.
pub(super) async fn fleet(args: FleetBench) -> Result<Vec<super::Headline>> {
    if args.clusters == 0 || args.nodes == 0 {
        return Err(Error::Usage("--clusters and --nodes must be more than zero".into()));
    }
    let scratch = super::Scratch::new()?;
    let mock = rdkafka::mocking::MockCluster::new(1).map_err(firebreak_plumbing::Error::from)?;
    let kafka = KafkaConfig::new(mock.bootstrap_servers());
    let names: Vec<String> = (1..=args.clusters).map(|i| format!("c{i}")).collect();
    crate::demo::create_mock_topics(&mock, &firebreak_schema::topics::for_clusters(names.iter().map(String::as_str)))?;
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "firebreak bench fleet: {} cluster(s) × {} nodes = {} simulated nodes; kubelet Leases and agent heartbeats every \
         {:?}, a fault every {:?}, {} churn pods per minute per cluster; measured for {:?} after setup; this machine ({cores} \
         CPUs). Processes: fleet-sim, the control plane (measured), this one (the mock broker and the load)",
        args.clusters,
        args.nodes,
        args.clusters * args.nodes,
        args.heartbeat,
        args.fault_every,
        args.churn_per_minute,
        args.duration
    );

    let started = Instant::now();
    let fmt = |d: Duration| humantime::format_duration(d).to_string();
    let mut sim = Child::spawn(
        "fleet-sim",
        &[
            "fleet-sim".into(),
            "--data-dir".into(),
            scratch.0.join("sim").display().to_string(),
            "--clusters".into(),
            args.clusters.to_string(),
            "--nodes-per-cluster".into(),
            args.nodes.to_string(),
            "--heartbeat".into(),
            fmt(args.heartbeat),
            "--unreachable-after".into(),
            fmt(args.heartbeat * 5),
            "--churn-per-minute".into(),
            args.churn_per_minute.to_string(),
            "--tick".into(),
            fmt(args.tick),
            "--kafka-brokers".into(),
            kafka.brokers.clone(),
            "--no-create-topics".into(),
        ],
    )?;
    let mut clusters = Vec::new();
    while clusters.len() < args.clusters {
        let line = sim.line(args.setup_timeout).await?;
        // `cluster NAME at URL: KUBECONFIG=PATH`
        let Some((name, path)) =
            line.strip_prefix("cluster ").and_then(|l| Some((l.split_once(' ')?.0, l.split_once("KUBECONFIG=")?.1)))
        else {
            continue;
        };
        if !names.iter().any(|n| n == name) {
            return Err(Error::Bench(format!("fleet-sim named a cluster {name}, not one of c1..c{}", args.clusters)));
        }
        clusters.push(ClusterAccess { name: name.into(), kubeconfig: path.into() });
    }
    let sim_up = started.elapsed();
    println!("fleet-sim up in {:.1} s (pid {})", sim_up.as_secs_f64(), sim.pid);

    // The nodes, as a watch of each cluster's API server lists them; the same watches see
    // each faulted node cordoned and tainted.
    let mut watches = HashMap::new();
    let mut watch_tasks = Vec::new();
    let mut nodes = Vec::new();
    for c in &clusters {
        let client = crate::kube_client(&c.kubeconfig).await?;
        let seen: Nodes = Arc::default();
        let (tx, listed) = tokio::sync::oneshot::channel();
        watch_tasks.push(tokio::spawn(super::drain::watch(client, seen.clone(), isolated, tx)));
        listed.await.map_err(|_| Error::Bench("a node watch ended before it listed".into()))?;
        let mut names: Vec<String> = seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .map(|k| k.trim_start_matches('/').to_owned())
            .collect();
        names.sort();
        nodes.extend(names.into_iter().map(|n| (c.name.clone(), n)));
        watches.insert(c.name.clone(), seen);
    }
    // The agents' heartbeats start before the control plane does, as a fleet's agents would.
    let producer = Producer::new(&kafka)?;
    let load = CancellationToken::new();
    let (beats, dropped, faulted) =
        (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let beating = tokio::spawn(heartbeats(
        producer.clone(),
        nodes.clone(),
        args.heartbeat,
        beats.clone(),
        dropped.clone(),
        load.clone(),
    ));

    let control_started = Instant::now();
    let mut cp_args = vec![
        "bench".to_owned(),
        "control-plane".into(),
        "--data-dir".into(),
        scratch.0.join("control-plane").display().to_string(),
        "--kafka-brokers".into(),
        kafka.brokers.clone(),
        "--heartbeat".into(),
        fmt(args.heartbeat),
    ];
    for c in &clusters {
        cp_args.push("--cluster".into());
        cp_args.push(format!("{}={}", c.name, c.kubeconfig.display()));
    }
    let mut control = Child::spawn("the control plane", &cp_args)?;
    let ready: Ready = loop {
        let line = control.line(args.setup_timeout).await?;
        if let Ok(ready) = serde_json::from_str(&line) {
            break ready;
        }
    };
    println!(
        "control plane up in {:.1} s (pid {}): event center {}, gate {}",
        control_started.elapsed().as_secs_f64(),
        control.pid,
        ready.event_center_url,
        ready.gate_url
    );
    let http =
        reqwest::Client::builder().timeout(Duration::from_secs(10)).build().map_err(|e| Error::Bench(e.to_string()))?;
    let scrape = |url: String| {
        let (http, token) = (http.clone(), ready.viewer_token.clone());
        async move {
            match http.get(format!("{url}/metrics")).bearer_auth(token).send().await {
                Ok(r) if r.status().is_success() => r.text().await.ok(),
                _ => None,
            }
        }
    };
    // Faults start once every cluster's detector and remediator consume (each leads its
    // cluster and reports its consumer lag): the latency measured is the working control
    // plane's, not its start-up.
    let consuming = Instant::now();
    loop {
        let text = scrape(ready.metrics_url.clone()).await.unwrap_or_default();
        let groups = |service: &str| {
            consumer_lags(&text)
                .filter(|(s, _, _)| *s == service)
                .map(|(_, group, _)| group)
                .collect::<std::collections::BTreeSet<_>>()
                .len()
        };
        if groups("detector") >= args.clusters && groups("remediator") >= args.clusters {
            break;
        }
        control.alive()?;
        if consuming.elapsed() > args.setup_timeout {
            // A control plane that cannot start on this machine is measured as it is: its
            // memory, its CPU and its lag say why.
            println!(
                "not every detector and remediator consuming after {:?} (detectors {}, remediators {} of {}); \
                 measuring anyway",
                args.setup_timeout,
                groups("detector"),
                groups("remediator"),
                args.clusters
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    println!("consumers checked {:.1} s after the control plane was up", consuming.elapsed().as_secs_f64());
    let setup = started.elapsed();
    let pending = Pending::default();
    let isolated_after = Arc::new(Mutex::new(Vec::new()));
    let faulting =
        tokio::spawn(faults(producer.clone(), nodes, args.fault_every, faulted.clone(), pending.clone(), load.clone()));
    let checking = tokio::spawn(isolations(watches, pending.clone(), isolated_after.clone(), load.clone()));

    println!(
        "{:>6} {:>12} {:>9} {:>12} {:>9} {:>9} {:>10} {:>8}  lag by service",
        "t (s)", "control MiB", "CPU %", "sim MiB", "CPU %", "load %", "lag", "stored"
    );
    let run = async {
        let mut samples: Vec<Sample> = Vec::new();
        let measured = Instant::now();
        let mut before = (super::usage(control.pid)?, super::usage(sim.pid)?, super::usage(std::process::id())?);
        let mut last = Instant::now();
        while measured.elapsed() < args.duration {
            tokio::time::sleep(args.sample_every.min(args.duration.saturating_sub(measured.elapsed()))).await;
            control.alive()?;
            sim.alive()?;
            let now = (super::usage(control.pid)?, super::usage(sim.pid)?, super::usage(std::process::id())?);
            let over = last.elapsed();
            last = Instant::now();
            let ec = scrape(ready.event_center_url.clone()).await;
            let texts = [ec.clone(), scrape(ready.metrics_url.clone()).await, scrape(ready.gate_url.clone()).await];
            let lag = texts.iter().all(Option::is_some).then(|| {
                let mut lag = BTreeMap::new();
                for text in texts.iter().flatten() {
                    lag_by_service(text, &mut lag);
                }
                lag
            });
            let s = Sample {
                at: measured.elapsed(),
                control_rss_mib: now.0.rss_kib as f64 / 1024.0,
                control_cpu: cpu_percent(&before.0, &now.0, over),
                sim_rss_mib: now.1.rss_kib as f64 / 1024.0,
                sim_cpu: cpu_percent(&before.1, &now.1, over),
                own_cpu: cpu_percent(&before.2, &now.2, over),
                lag,
                stored: ec.map(|t| super::metric_sum(&t, "firebreak_event_center_records_stored_total", "")),
            };
            println!(
                "{:>6.0} {:>12.0} {:>9.0} {:>12.0} {:>9.0} {:>9.0} {:>10} {:>8}  {}",
                s.at.as_secs_f64(),
                s.control_rss_mib,
                s.control_cpu,
                s.sim_rss_mib,
                s.sim_cpu,
                s.own_cpu,
                s.total_lag().map_or("?".into(), |l| format!("{l:.0}")),
                s.stored.map_or("?".into(), |n| format!("{n:.0}")),
                match &s.lag {
                    Some(lag) => lag.iter().map(|(k, v)| format!("{k} {v:.0}")).collect::<Vec<_>>().join(", "),
                    None => "(the control plane's metrics did not answer within 10 s)".into(),
                }
            );
            samples.push(s);
            before = now;
        }
        let peaks = (super::usage(control.pid)?.peak_kib, super::usage(sim.pid)?.peak_kib);
        Ok::<_, Error>((samples, peaks, measured.elapsed()))
    }
    .await;
    load.cancel();
    let _ = tokio::join!(beating, faulting, checking);
    for t in watch_tasks {
        t.abort();
    }
    drop(control);
    drop(sim);
    let _ = producer.flush(Duration::from_secs(2));
    drop(producer);
    let (samples, (control_peak_kib, sim_peak_kib), measured) = run?;

    let third = samples.len() / 3;
    let lag_mean = |from: usize, to: usize| mean(samples[from..to].iter().filter_map(Sample::total_lag));
    let unanswered = samples.iter().filter(|s| s.lag.is_none()).count();
    let (early, middle, late) = if third == 0 {
        let all = lag_mean(0, samples.len());
        (all, all, all)
    } else {
        (lag_mean(0, third), lag_mean(third, 2 * third), lag_mean(2 * third, samples.len()))
    };
    let per_second = (args.clusters * args.nodes) as f64 / args.heartbeat.as_secs_f64();
    let lag = if unanswered > 0 {
        "unknown"
    } else if late > middle + per_second.max(100.0) {
        "grows"
    } else {
        "flat"
    };
    let control_cpu = mean(samples.iter().map(|s| s.control_cpu));
    let control_gib = control_peak_kib as f64 / 1024.0 / 1024.0;
    println!(
        "over {:.0} s: heartbeats sent {} ({} not queued), faults sent {}; the event center stored {:.0} records \
         (faults and remediation steps)",
        measured.as_secs_f64(),
        beats.load(Ordering::Relaxed),
        dropped.load(Ordering::Relaxed),
        faulted.load(Ordering::Relaxed),
        samples.iter().rev().find_map(|s| s.stored).unwrap_or(0.0)
    );
    println!(
        "control plane: peak resident {:.0} MiB, CPU mean {control_cpu:.0} % of one core (max sample {:.0} %)",
        control_peak_kib as f64 / 1024.0,
        samples.iter().map(|s| s.control_cpu).fold(0.0, f64::max)
    );
    println!(
        "fleet-sim: peak resident {:.0} MiB, CPU mean {:.0} %; this process (broker and load): CPU mean {:.0} %",
        sim_peak_kib as f64 / 1024.0,
        mean(samples.iter().map(|s| s.sim_cpu)),
        mean(samples.iter().map(|s| s.own_cpu))
    );
    let verdict = match lag {
        "unknown" => format!("unknown: the metrics did not answer in {unanswered} of {} samples", samples.len()),
        "grows" => "growing".into(),
        _ => "not growing".into(),
    };
    println!(
        "consumer lag, mean of each third of the run: {early:.0} → {middle:.0} → {late:.0} records ({verdict}; one \
         second of heartbeats is {per_second:.0})"
    );
    let latencies = std::mem::take(&mut *isolated_after.lock().unwrap_or_else(|e| e.into_inner()));
    let waiting = pending.lock().unwrap_or_else(|e| e.into_inner()).len();
    let isolated_count = latencies.len();
    let f = super::Figures::of(latencies, measured);
    let cordoned = if isolated_count == 0 {
        "none".to_owned()
    } else {
        format!("p50 {}, p99 {}", super::ms(f.p50), super::ms(f.p99))
    };
    println!(
        "fault published → node cordoned and tainted (this process's watch of the node): {isolated_count} nodes, \
         {cordoned}; {waiting} not yet at the end"
    );
    if let Some(path) = &args.figures_to {
        let figures = SizeFigures {
            nodes: args.clusters * args.nodes,
            setup_s: setup.as_secs_f64(),
            control_mib: control_peak_kib as f64 / 1024.0,
            control_cpu_percent: control_cpu,
            sim_mib: sim_peak_kib as f64 / 1024.0,
            cordoned_ms: (isolated_count > 0).then_some((f.p50.as_secs_f64() * 1000.0, f.p99.as_secs_f64() * 1000.0)),
            lag: lag.into(),
        };
        let json = serde_json::to_vec(&figures).map_err(|e| Error::Bench(e.to_string()))?;
        std::fs::write(path, json).map_err(|source| Error::Io { what: format!("write {}", path.display()), source })?;
    }
    println!("goal: control plane ≤ 4 GB, no lag growing over 10 min (100 clusters × 1,000 nodes)");
    let size = format!("{} × {} nodes", args.clusters, args.nodes);
    Ok(vec![
        super::Headline::new(
            "fleet",
            format!("control plane peak RSS, {size}"),
            format!("{control_gib:.2} GiB"),
            "≤ 4 GB",
            control_gib * 1.073_741_824 <= 4.0,
        ),
        super::Headline::new(
            "fleet",
            format!("control plane CPU, mean over {:.0} s", measured.as_secs_f64()),
            format!("{control_cpu:.0} % of a core"),
            "-",
            true,
        ),
        super::Headline::new(
            "fleet",
            format!("fault published → cordoned, p50 / p99, {size}"),
            cordoned,
            "-",
            isolated_count > 0,
        ),
        super::Headline::new(
            "fleet",
            "consumer lag, first → last third (mean)",
            if lag == "unknown" { verdict } else { format!("{early:.0} → {late:.0}") },
            "not growing",
            lag == "flat",
        ),
    ])
}
