//! `firebreak bench drain`: a mass drain. One simulated cluster whose nodes each run one pod of
//! every app (Deployments `app-01`..., each under a PodDisruptionBudget); a memory fault on
//! most of its nodes at once, whose ladder starts with a reboot; the remediator drains them
//! all through the Eviction API under a gate policy that limits nothing. Measured by this
//! benchmark's own watch of the cluster's pods: from the faults to each node empty of app pods,
//! and to every app whole and Ready again elsewhere. The baseline is the bound the budgets set:
//! each app can lose only its budget's share at a time, and each wave waits for its
//! replacements to start.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use clap::Args;
use firebreak_rate_limiter::{OperationPolicy, Policy};
use firebreak_schema::Operation;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::runtime::{WatchStreamExt, watcher};

use super::{Figures, ms};
use crate::{Error, Result};

/// `firebreak bench drain` flags.
#[derive(Debug, Clone, Args)]
pub struct DrainBench {
    /// Nodes in the cluster.
    #[arg(long, default_value_t = 1000)]
    pub nodes: usize,
    /// Nodes that fail at once and are drained (spread over the cluster).
    #[arg(long, default_value_t = 750)]
    pub drain: usize,
    /// Apps, so pods per node: each app has one replica per node.
    #[arg(long, default_value_t = 15)]
    pub pods_per_node: usize,
    /// The share of each app its PodDisruptionBudget lets be disrupted at once.
    #[arg(long, default_value_t = 10)]
    pub max_unavailable_percent: u32,
    /// The owners' grace period between labelling pods and evicting them.
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    pub migration_grace: Duration,
    /// The wait after a PodDisruptionBudget refuses an eviction (the remediator's default).
    #[arg(long, default_value = "5s", value_parser = crate::cli::positive_duration)]
    pub eviction_retry: Duration,
    /// How long to wait for the drain before calling it failed.
    #[arg(long, default_value = "10m", value_parser = crate::cli::positive_duration)]
    pub max_wait: Duration,
}

/// What the benchmark's watch knows of one pod.
struct Seen {
    node: String,
    app: bool,
    ready: bool,
    terminating: bool,
}

type Pods = Arc<Mutex<HashMap<String, Seen>>>;

fn seen(p: &Pod) -> Seen {
    let app = p.metadata.labels.as_ref().and_then(|l| l.get("app")).is_some_and(|a| a.starts_with("app-"));
    let ready = p
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    Seen {
        node: p.spec.as_ref().and_then(|s| s.node_name.clone()).unwrap_or_default(),
        app,
        ready,
        terminating: p.metadata.deletion_timestamp.is_some(),
    }
}

/// Whether a node is cordoned.
fn cordoned(n: &Node) -> bool {
    n.spec.as_ref().and_then(|s| s.unschedulable) == Some(true)
}

/// Keeps `into` current from a watch of every object of a kind, each as `seen` makes it; `listed`
/// fires once the watch has listed them.
pub(super) async fn watch<K, V>(
    client: kube::Client,
    into: Arc<Mutex<HashMap<String, V>>>,
    seen: fn(&K) -> V,
    listed: tokio::sync::oneshot::Sender<()>,
) where
    K: kube::Resource<DynamicType = ()> + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + 'static,
{
    use kube::ResourceExt;
    let key = |o: &K| format!("{}/{}", o.namespace().unwrap_or_default(), o.name_any());
    let api: kube::Api<K> = kube::Api::all(client);
    let mut stream = watcher(api, watcher::Config::default()).default_backoff().boxed();
    let mut listed = Some(listed);
    let mut relist = HashMap::new();
    while let Some(ev) = stream.next().await {
        match ev {
            Ok(watcher::Event::Init) => relist.clear(),
            Ok(watcher::Event::InitApply(o)) => {
                relist.insert(key(&o), seen(&o));
            }
            Ok(watcher::Event::InitDone) => {
                *into.lock().unwrap_or_else(|e| e.into_inner()) = std::mem::take(&mut relist);
                if let Some(l) = listed.take() {
                    let _ = l.send(());
                }
            }
            Ok(watcher::Event::Apply(o)) => {
                into.lock().unwrap_or_else(|e| e.into_inner()).insert(key(&o), seen(&o));
            }
            Ok(watcher::Event::Delete(o)) => {
                into.lock().unwrap_or_else(|e| e.into_inner()).remove(&key(&o));
            }
            Err(error) => tracing::warn!(%error, "benchmark watch failed; retrying"),
        }
    }
}

/// App pods per node (live ones), and app pods Ready and not terminating.
fn count(pods: &Pods) -> (HashMap<String, usize>, usize) {
    let pods = pods.lock().unwrap_or_else(|e| e.into_inner());
    let mut per_node: HashMap<String, usize> = HashMap::new();
    let mut ready = 0;
    for p in pods.values().filter(|p| p.app) {
        *per_node.entry(p.node.clone()).or_default() += 1;
        ready += usize::from(p.ready && !p.terminating);
    }
    (per_node, ready)
}

/// The gate policy of a mass drain: every node operation allowed, nothing limited.
pub(super) fn generous() -> Policy {
    let operations: BTreeMap<Operation, OperationPolicy> =
        [Operation::Cordon, Operation::Drain, Operation::Reboot, Operation::Reinstall]
            .into_iter()
            .map(|op| (op, OperationPolicy::default()))
            .collect();
    Policy { operations, ..Policy::default() }
}

/// `firebreak bench drain`.
pub async fn drain(args: DrainBench) -> Result<Vec<super::Headline>> {
    if args.drain == 0 || args.drain > args.nodes {
        return Err(Error::Usage("--drain must be between 1 and --nodes".into()));
    }
    if args.pods_per_node == 0 || args.pods_per_node > 99 {
        return Err(Error::Usage("--pods-per-node must be between 1 and 99".into()));
    }
    if args.drain == args.nodes {
        return Err(Error::Usage("--drain must leave nodes for the pods to move to".into()));
    }
    let scratch = super::Scratch::new()?;
    let dir = scratch.0.clone();
    let mut opts = crate::demo::StackOptions::new(dir.clone(), 1, args.nodes);
    opts.apps = firebreak_fleet_sim::Apps::Dense {
        per_node: args.pods_per_node,
        max_unavailable_percent: args.max_unavailable_percent,
    };
    opts.timings.churn_per_minute = 0;
    opts.policy = generous();
    opts.migration_grace = args.migration_grace;
    opts.eviction_retry = args.eviction_retry;
    opts.drain_timeout = args.max_wait;
    let started = Instant::now();
    let stack = crate::demo::Stack::start(opts).await?;
    let result = measure(&stack, &args, started).await;
    stack.shutdown().await;
    result
}

async fn measure(stack: &crate::demo::Stack, args: &DrainBench, started: Instant) -> Result<Vec<super::Headline>> {
    let cluster = stack.fleet.clusters().first().ok_or_else(|| Error::Bench("the stack has no cluster".into()))?;
    let client = crate::kube_client(&cluster.kubeconfig_path()).await?;
    let pods: Pods = Arc::default();
    let nodes: Arc<Mutex<HashMap<String, bool>>> = Arc::default();
    let (pods_tx, pods_listed) = tokio::sync::oneshot::channel();
    let (nodes_tx, nodes_listed) = tokio::sync::oneshot::channel();
    let watching = [
        tokio::spawn(watch(client.clone(), pods.clone(), seen, pods_tx)),
        tokio::spawn(watch(client, nodes.clone(), cordoned, nodes_tx)),
    ];
    let out = async {
        pods_listed.await.map_err(|_| Error::Bench("the pod watch ended before it listed".into()))?;
        nodes_listed.await.map_err(|_| Error::Bench("the node watch ended before it listed".into()))?;
        let apps = args.nodes * args.pods_per_node;
        let deadline = Instant::now() + args.max_wait;
        let wait = |what: &'static str| {
            let pods = pods.clone();
            async move {
                loop {
                    let (per_node, ready) = count(&pods);
                    if ready == apps && per_node.values().sum::<usize>() == apps {
                        return Ok(());
                    }
                    if Instant::now() > deadline {
                        return Err(Error::Bench(format!("{what}: {ready} of {apps} app pods Ready")));
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        };
        wait("the cluster's start").await?;
        let setup = started.elapsed();
        let names = cluster.node_names();
        let step = (names.len() / args.drain).max(1);
        let targets: Vec<String> = names.iter().step_by(step).take(args.drain).cloned().collect();
        let faulted = Instant::now();
        for n in &targets {
            cluster.inject(n, firebreak_fleet_sim::Fault::MemoryUncorrectable)?;
        }
        let injected = faulted.elapsed();
        // Each target's first moments cordoned and without app pods.
        let (mut isolated, mut emptied): (HashMap<&str, Duration>, HashMap<&str, Duration>) = Default::default();
        while emptied.len() < targets.len() {
            let (per_node, _) = count(&pods);
            let at = faulted.elapsed();
            let cordons = nodes.lock().unwrap_or_else(|e| e.into_inner()).clone();
            for n in &targets {
                if cordons.get(&format!("/{n}")).copied().unwrap_or(false) {
                    isolated.entry(n.as_str()).or_insert(at);
                }
                if per_node.get(n).copied().unwrap_or(0) == 0 {
                    emptied.entry(n.as_str()).or_insert(at);
                }
            }
            if Instant::now() > deadline {
                return Err(Error::Bench(format!(
                    "drain: {} of {} nodes emptied within {:?}",
                    emptied.len(),
                    targets.len(),
                    args.max_wait
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let all_drained = faulted.elapsed();
        wait("rescheduling").await?;
        let rescheduled = faulted.elapsed();
        let cordoned: Vec<Duration> = isolated.into_values().collect();
        Ok((setup, injected, cordoned, emptied.into_values().collect::<Vec<_>>(), all_drained, rescheduled))
    }
    .await;
    for w in watching {
        w.abort();
    }
    let (setup, injected, cordoned, per_node, all_drained, rescheduled) = out?;
    let metrics = reqwest::get(format!("{}/metrics", stack.metrics_url))
        .await
        .map_err(|e| Error::Bench(format!("remediator metrics: {e}")))?
        .text()
        .await
        .map_err(|e| Error::Bench(format!("remediator metrics: {e}")))?;
    let evictions = |outcome: &str| -> u64 {
        super::metric_sum(&metrics, "firebreak_remediator_evictions_total", &format!("outcome=\"{outcome}\"")) as u64
    };
    let per_node = Figures::of(per_node, all_drained);
    let cordoned = Figures::of(cordoned, all_drained);
    // The bound the budgets set: each app moves `drain` replicas, at most its budget's share at
    // a time, and a wave's replacements must start before the next wave may go.
    let down = (args.nodes * args.max_unavailable_percent.min(100) as usize).div_ceil(100).max(1);
    let waves = args.drain.div_ceil(down);
    let start = firebreak_fleet_sim::Timings::default().pod_start;
    println!(
        "firebreak bench drain: 1 cluster × {} nodes, {} apps with one replica per node (so {} pods per node), each \
         under a PodDisruptionBudget allowing {}% ({down} pods) down; {} nodes fail at once (MemoryUncorrectable, \
         ladder: reboot); gate limits nothing; migration grace {}s, eviction retry {}s; this machine ({} CPUs); \
         the stack started in {:.1}s, the faults were written in {}",
        args.nodes,
        args.pods_per_node,
        args.pods_per_node,
        args.max_unavailable_percent,
        args.drain,
        args.migration_grace.as_secs_f64(),
        args.eviction_retry.as_secs_f64(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        setup.as_secs_f64(),
        ms(injected)
    );
    let row = |what: String, figure: String, note: &str| println!("{what:<46} {figure:>13}   {note}");
    let secs = |d: Duration| format!("{:.1}s", d.as_secs_f64());
    row("faults → node cordoned, p50 / p99".into(), format!("{} / {}", secs(cordoned.p50), secs(cordoned.p99)), "");
    row(
        "faults → node empty of app pods, p50 / p99".into(),
        format!("{} / {}", secs(per_node.p50), secs(per_node.p99)),
        "",
    );
    row(format!("faults → all {} nodes drained", args.drain), secs(all_drained), "");
    row(
        format!("faults → all {} app pods Ready elsewhere", args.drain * args.pods_per_node),
        secs(rescheduled),
        "(goal ≤ 120s)",
    );
    row(
        "baseline: the budgets' floor".into(),
        format!("{:.1}s", waves as f64 * start.as_secs_f64()),
        &format!("({waves} waves of {down} pods per app × {:.1}s pod start)", start.as_secs_f64()),
    );
    row(
        "evictions accepted / refused by budgets".into(),
        format!("{} / {}", evictions("accepted"), evictions("refused")),
        "(beyond the pods: replacements that landed on a failing node before its cordon)",
    );
    Ok(vec![super::Headline::new(
        "drain",
        format!("{} nodes × {} pods: faults → all Ready elsewhere", args.drain, args.pods_per_node),
        secs(rescheduled),
        "≤ 120 s",
        rescheduled <= Duration::from_secs(120),
    )])
}
