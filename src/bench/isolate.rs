//! `firebreak bench detect` and `firebreak bench isolate`: from a kernel log line to a node
//! out of service, on the whole stack as `firebreak demo` runs it (fleet-sim's Kubernetes API,
//! an agent per node, the Kafka mock, the gate, a remediator per cluster), under a gate policy
//! that limits nothing.
//!
//! A node counts as isolated at the first moment this benchmark's own watch of the cluster's
//! nodes sees it cordoned and tainted `firebreak.io/unhealthy`.
//!
//! - `detect`: faults one at a time, spread over the clusters, each written to a node's kernel
//!   log once the previous one's node is isolated; the latency of each, p50 and p99.
//! - `isolate`: `--faults` nodes of one cluster fail at once; nodes isolated per second from the
//!   moment the faults are written to the last node isolated. One fault on another node is
//!   isolated first, so the storm meets a running control plane, not a cold start.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use clap::Args;
use firebreak_schema::UNHEALTHY_TAINT_KEY;
use k8s_openapi::api::core::v1::Node;

use super::{Figures, drain, ms};
use crate::{Error, Result};

/// `firebreak bench detect` flags.
#[derive(Debug, Clone, Args)]
pub struct DetectBench {
    /// Simulated clusters.
    #[arg(long, default_value_t = 3)]
    pub clusters: usize,
    /// Nodes per cluster.
    #[arg(long, default_value_t = 1000)]
    pub nodes: usize,
    /// Faults, one after another.
    #[arg(long, default_value_t = 60)]
    pub faults: usize,
    /// How long to wait for one node before calling the run failed.
    #[arg(long, default_value = "60s", value_parser = crate::cli::positive_duration)]
    pub max_wait: Duration,
    /// How long the stack is watched idle, once up, for its memory and CPU.
    #[arg(long, default_value = "10s", value_parser = crate::cli::positive_duration)]
    pub idle: Duration,
    /// The broker.
    #[command(flatten)]
    pub broker: super::Broker,
}

/// `firebreak bench isolate` flags.
#[derive(Debug, Clone, Args)]
pub struct IsolateBench {
    /// Nodes in the cluster.
    #[arg(long, default_value_t = 1000)]
    pub nodes: usize,
    /// Nodes that fail at once.
    #[arg(long, default_value_t = 500)]
    pub faults: usize,
    /// How long to wait for them all before calling the run failed.
    #[arg(long, default_value = "5m", value_parser = crate::cli::positive_duration)]
    pub max_wait: Duration,
    /// The broker.
    #[command(flatten)]
    pub broker: super::Broker,
}

/// Whether a node is out of service: cordoned and tainted by Firebreak.
pub(super) fn isolated(n: &Node) -> bool {
    let spec = n.spec.as_ref();
    spec.and_then(|s| s.unschedulable) == Some(true)
        && spec.and_then(|s| s.taints.as_ref()).is_some_and(|t| t.iter().any(|t| t.key == UNHEALTHY_TAINT_KEY))
}

pub(super) type Nodes = Arc<Mutex<HashMap<String, bool>>>;

/// A stack of `clusters` × `nodes`, with pods that do not churn and one pod of one app per
/// node (the drain after the cordon is not what is measured).
async fn stack(
    dir: &std::path::Path,
    clusters: usize,
    nodes: usize,
    max_wait: Duration,
    broker: &super::Broker,
) -> Result<crate::demo::Stack> {
    let mut opts = crate::demo::StackOptions::new(dir.to_owned(), clusters, nodes);
    opts.kafka_brokers = broker.checked()?.map(|k| k.brokers);
    opts.apps = firebreak_fleet_sim::Apps::Dense { per_node: 1, max_unavailable_percent: 100 };
    opts.timings.churn_per_minute = 0;
    opts.policy = drain::generous();
    opts.drain_timeout = max_wait.max(Duration::from_secs(60));
    crate::demo::Stack::start(opts).await
}

/// A watch of each cluster's nodes (isolated or not), listed.
async fn watch_nodes(stack: &crate::demo::Stack) -> Result<(Vec<Nodes>, Vec<tokio::task::JoinHandle<()>>)> {
    let mut all = Vec::new();
    let mut tasks = Vec::new();
    for cluster in stack.fleet.clusters() {
        let client = crate::kube_client(&cluster.kubeconfig_path()).await?;
        let nodes: Nodes = Arc::default();
        let (tx, listed) = tokio::sync::oneshot::channel();
        tasks.push(tokio::spawn(drain::watch(client, nodes.clone(), isolated, tx)));
        listed.await.map_err(|_| Error::Bench("the node watch ended before it listed".into()))?;
        all.push(nodes);
    }
    Ok((all, tasks))
}

pub(super) fn is_isolated(nodes: &Nodes, node: &str) -> bool {
    nodes.lock().unwrap_or_else(|e| e.into_inner()).get(&format!("/{node}")).copied().unwrap_or(false)
}

fn setup_line(what: &str, clusters: usize, nodes: usize, broker: &super::Broker, took: Duration) {
    let broker = broker.describe();
    println!(
        "firebreak bench {what}: {clusters} cluster(s) × {nodes} nodes (fleet-sim), an agent per node, {broker}, gate \
         policy limiting nothing, a remediator per cluster, this machine ({} CPUs); stack up in {:.1} s",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        took.as_secs_f64()
    );
}

/// `firebreak bench detect`.
pub async fn detect(args: DetectBench) -> Result<Vec<super::Headline>> {
    if args.clusters == 0 || args.nodes == 0 || args.faults == 0 || args.faults > args.clusters * args.nodes {
        return Err(Error::Usage(
            "--clusters, --nodes and --faults must be more than 0, the faults at most the nodes".into(),
        ));
    }
    let scratch = super::Scratch::new()?;
    let dir = scratch.0.clone();
    let started = Instant::now();
    let stack = stack(&dir, args.clusters, args.nodes, args.max_wait, &args.broker).await?;
    let result = async {
        let (watches, tasks) = watch_nodes(&stack).await?;
        let setup = started.elapsed();
        setup_line("detect", args.clusters, args.nodes, &args.broker, setup);
        let before = super::usage(std::process::id())?;
        tokio::time::sleep(args.idle).await;
        let idle = super::usage(std::process::id())?;
        let idle_cpu = 100.0 * (idle.cpu.saturating_sub(before.cpu)).as_secs_f64() / args.idle.as_secs_f64();
        let rss_mib = idle.rss_kib as f64 / 1024.0;
        println!(
            "the whole process (simulated clusters, agents, control plane), up and idle for {:.0} s: resident {rss_mib:.0} \
             MiB, CPU {idle_cpu:.0} % of one core",
            args.idle.as_secs_f64()
        );
        let clusters = stack.fleet.clusters();
        let one = |c: usize, node: String| {
            let watch = watches[c].clone();
            let cluster = clusters[c].clone();
            async move {
                let t = Instant::now();
                cluster.inject(&node, firebreak_fleet_sim::Fault::MemoryUncorrectable)?;
                loop {
                    if is_isolated(&watch, &node) {
                        return Ok(t.elapsed());
                    }
                    if t.elapsed() > args.max_wait {
                        return Err(Error::Bench(format!("{node} not isolated within {:?}", args.max_wait)));
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        };
        // Each cluster's first fault finds its path cold (the remediator's first workflow, the
        // gate's first request from it): reported apart, not among the samples.
        let mut cold = Vec::new();
        for (c, cluster) in clusters.iter().enumerate() {
            let last = cluster.node_names().last().cloned().ok_or_else(|| Error::Bench("an empty cluster".into()))?;
            cold.push(one(c, last).await?);
        }
        let mut samples = Vec::with_capacity(args.faults);
        let run = Instant::now();
        for i in 0..args.faults {
            let c = i % clusters.len();
            let names = clusters[c].node_names();
            let step = (names.len() * clusters.len() / args.faults).max(1);
            let node = names[(i / clusters.len() * step) % (names.len() - 1).max(1)].clone();
            samples.push(one(c, node).await?);
        }
        for t in tasks {
            t.abort();
        }
        let listed =
            |d: &[Duration]| d.iter().map(|d| format!("{:.0}", d.as_secs_f64() * 1000.0)).collect::<Vec<_>>().join(" ");
        println!("each cluster's first fault, cold (ms): {}", listed(&cold));
        println!("then each, in order (ms): {}", listed(&samples));
        Ok::<_, Error>(Figures::of(samples, run.elapsed()))
    }
    .await;
    stack.shutdown().await;
    let f = result?;
    println!("{:<44} {:>8} {:>10} {:>10}", "kernel log line → node cordoned and tainted", "faults", "p50", "p99");
    println!("{:<44} {:>8} {:>10} {:>10}", "", f.count, ms(f.p50), ms(f.p99));
    println!("goal: p50 ≤ 25 ms, p99 ≤ 100 ms (3 clusters × 1,000 nodes)");
    let what = format!("log line → cordoned, {} × {} nodes, p50 / p99", args.clusters, args.nodes);
    let met = f.p50 <= Duration::from_millis(25) && f.p99 <= Duration::from_millis(100);
    Ok(vec![super::Headline::new("detect", what, format!("{} / {}", ms(f.p50), ms(f.p99)), "≤ 25 / 100 ms", met)])
}

/// `firebreak bench isolate`.
pub async fn isolate(args: IsolateBench) -> Result<Vec<super::Headline>> {
    if args.faults == 0 || args.faults > args.nodes {
        return Err(Error::Usage("--faults must be between 1 and --nodes".into()));
    }
    let scratch = super::Scratch::new()?;
    let dir = scratch.0.clone();
    let started = Instant::now();
    let stack = stack(&dir, 1, args.nodes, args.max_wait, &args.broker).await?;
    let result = async {
        let (watches, tasks) = watch_nodes(&stack).await?;
        setup_line("isolate", 1, args.nodes, &args.broker, started.elapsed());
        let cluster = stack.fleet.clusters().first().ok_or_else(|| Error::Bench("no cluster".into()))?.clone();
        let names = cluster.node_names();
        let step = (names.len() / args.faults).max(1);
        let targets: Vec<String> = names.iter().step_by(step).take(args.faults).cloned().collect();
        // A running control plane meets the storm, not one still joining its consumer groups
        // (seconds on a fresh start): one fault on another node first, isolated before the storm.
        match names.iter().find(|n| !targets.contains(n)) {
            Some(warm) => {
                let t = Instant::now();
                cluster.inject(warm, firebreak_fleet_sim::Fault::MemoryUncorrectable)?;
                while !is_isolated(&watches[0], warm) {
                    if t.elapsed() > args.max_wait {
                        return Err(Error::Bench(format!("{warm} (warm-up) not isolated within {:?}", args.max_wait)));
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                println!("warm-up: one fault on {warm}, isolated in {} (consumer groups joined)", ms(t.elapsed()));
            }
            None => println!("no warm-up (every node fails in the storm): the figures include the stack's cold start"),
        }
        let t = Instant::now();
        for n in &targets {
            cluster.inject(n, firebreak_fleet_sim::Fault::MemoryUncorrectable)?;
        }
        let written = t.elapsed();
        let mut at: HashMap<&str, Duration> = HashMap::new();
        while at.len() < targets.len() {
            let now = t.elapsed();
            for n in &targets {
                if !at.contains_key(n.as_str()) && is_isolated(&watches[0], n) {
                    at.insert(n, now);
                }
            }
            if now > args.max_wait {
                return Err(Error::Bench(format!(
                    "{} of {} nodes isolated within {:?}",
                    at.len(),
                    targets.len(),
                    args.max_wait
                )));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        for t in tasks {
            t.abort();
        }
        let first = at.values().min().copied().unwrap_or_default();
        let last = at.values().max().copied().unwrap_or_default();
        Ok((written, first, Figures::of(at.into_values().collect(), last)))
    }
    .await;
    stack.shutdown().await;
    let (written, first, f) = result?;
    println!("{:<34} {:>8} {:>12} {:>10} {:>10} {:>10}", "faults at once", "nodes", "nodes/s", "first", "p50", "last");
    println!(
        "{:<34} {:>8} {:>12.1} {:>10} {:>10} {:>10}",
        format!("written in {}", ms(written)),
        f.count,
        f.per_second(),
        ms(first),
        ms(f.p50),
        ms(f.elapsed)
    );
    println!("goal: ≥ 100 nodes/s");
    let rate = f.per_second();
    let what = format!("{} faults at once: nodes cordoned and tainted", f.count);
    Ok(vec![super::Headline::new("isolate", what, format!("{rate:.1} nodes/s"), "≥ 100 nodes/s", rate >= 100.0)])
}
