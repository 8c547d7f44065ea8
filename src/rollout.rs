//! `firebreak rollout`: a reference change driver. It registers a change with the gate, then
//! for each batch asks to begin it, applies a node label to the batch's nodes through the
//! Kubernetes API, waits the soak, and asks to complete it; it stops when the gate halts the
//! change (putting the old label values back with `--rollback-on-halt`). A progress bar on a
//! terminal, plain lines otherwise. The exit code says how it ended: 0 completed, 2 halted,
//! 1 error.

use std::{collections::BTreeMap, path::PathBuf, time::Duration};

use clap::Args;
use firebreak_schema::{BatchAnswer, BatchSize, Change, ChangeRequest, ChangeState};
use indicatif::{ProgressBar, ProgressStyle};
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, ListParams, Patch, PatchParams};

use crate::{
    Error, Result,
    gate_cli::{Client, GateClientArgs},
};

/// `firebreak rollout` flags.
#[derive(Debug, Clone, Args)]
pub struct RolloutArgs {
    /// The cluster (as the gate knows it).
    #[arg(long)]
    pub cluster: String,
    /// Kubeconfig of the cluster.
    #[arg(long)]
    pub kubeconfig: PathBuf,
    #[command(flatten)]
    pub gate: GateClientArgs,
    /// The label that stands for the change: `KEY=VALUE`.
    #[arg(long, value_parser = parse_label)]
    pub set_label: (String, String),
    /// Cumulative batch sizes: node counts or percentages.
    #[arg(long, default_value = "1,10%,50%,100%", value_delimiter = ',')]
    pub batches: Vec<BatchSize>,
    /// Wait after each batch before its health is judged.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub soak: Duration,
    /// Only nodes matching this label selector.
    #[arg(long)]
    pub selector: Option<String>,
    /// Put the old label values back on the changed nodes when the gate halts the change.
    #[arg(long)]
    pub rollback_on_halt: bool,
    /// The change's id (default: `rollout-<cluster>-<random>`).
    #[arg(long)]
    pub id: Option<String>,
    /// Give up when the gate holds a batch (budgets, windows, no data) longer than this.
    #[arg(long, default_value = "10m", value_parser = crate::cli::positive_duration)]
    pub max_wait: Duration,
}

fn parse_label(s: &str) -> std::result::Result<(String, String), String> {
    let (k, v) = s.split_once('=').ok_or_else(|| format!("`{s}` is not KEY=VALUE"))?;
    if k.is_empty() || !firebreak_schema::names::is_label_value(v) {
        return Err(format!("`{s}`: not a label KEY=VALUE"));
    }
    Ok((k.to_owned(), v.to_owned()))
}

/// How a rollout ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Ended {
    /// Every batch done.
    Completed(Change),
    /// The gate halted the change; the nodes rolled back, if asked.
    Halted {
        /// The change as the gate has it.
        change: Change,
        /// Nodes whose old label was put back.
        rolled_back: Vec<String>,
    },
}

impl Ended {
    /// The process exit code: 0 completed, 2 halted.
    pub fn code(&self) -> i32 {
        match self {
            Ended::Completed(_) => 0,
            Ended::Halted { .. } => 2,
        }
    }
}

struct Progress(ProgressBar);

impl Progress {
    fn new(total: u64) -> Self {
        let bar = ProgressBar::new(total);
        if bar.is_hidden() {
            return Progress(bar);
        }
        let style = ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} nodes  {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar());
        bar.set_style(style);
        bar.enable_steady_tick(Duration::from_millis(200));
        Progress(bar)
    }

    /// A line: in the bar's message on a terminal, printed otherwise.
    fn say(&self, line: String) {
        if self.0.is_hidden() {
            println!("{line}");
        } else {
            self.0.set_message(line);
        }
    }

    fn log(&self, line: String) {
        if self.0.is_hidden() { println!("{line}") } else { self.0.println(line) }
    }
}

/// Runs a rollout to its end.
pub async fn run(args: &RolloutArgs, kube: kube::Client) -> Result<Ended> {
    let gate = Client::new(&args.gate)?;
    let nodes: Api<Node> = Api::all(kube);
    let (key, value) = &args.set_label;
    let mut lp = ListParams::default();
    if let Some(s) = &args.selector {
        lp = lp.labels(s);
    }
    let kube_err = |e: kube::Error| Error::Usage(format!("cluster {}: {e}", args.cluster));
    let mut names: Vec<(String, Option<String>)> = nodes
        .list(&lp)
        .await
        .map_err(kube_err)?
        .items
        .into_iter()
        .filter_map(|n| {
            let old = n.metadata.labels.as_ref().and_then(|l| l.get(key).cloned());
            n.metadata.name.map(|name| (name, old))
        })
        .collect();
    names.sort();
    let total = names.len() as u32;
    if total == 0 {
        return Err(Error::Usage(format!("no nodes in cluster {} match", args.cluster)));
    }
    let id = args
        .id
        .clone()
        .unwrap_or_else(|| format!("rollout-{}-{}", args.cluster, &uuid::Uuid::now_v7().simple().to_string()[24..]));
    let req = ChangeRequest {
        id: id.clone(),
        kind: format!("label {key}={value}"),
        owner: "firebreak-rollout".into(),
        cluster: args.cluster.clone(),
        batches: args.batches.clone(),
        soak_s: args.soak.as_secs(),
    };
    let (change, _): (Change, _) = gate.post("/api/v1/changes", &req).await?;
    let bar = Progress::new(u64::from(total));
    bar.log(format!(
        "change {id}: {key}={value} on {total} nodes of {} in {} batches",
        args.cluster,
        req.batches.len()
    ));
    let mut changed: Vec<(String, Option<String>)> = Vec::new();
    let mut done = 0usize;
    for (i, size) in change.spec.batches.iter().enumerate() {
        let n = i as u32 + 1;
        let upto = size.cumulative(total) as usize;
        // Begin: the gate may hold the batch (budgets, windows, health, no data) for a while.
        let begun = ask(&gate, &bar, &format!("/api/v1/changes/{id}/batches/{n}/begin"), args.max_wait).await?;
        if !begun.proceed {
            return halted(args, &nodes, &bar, begun, changed).await;
        }
        bar.log(format!("batch {n}: {}", begun.reason));
        for (name, old) in names.iter().take(upto).skip(done) {
            if old.as_deref() != Some(value.as_str()) {
                label(&nodes, name, key, Some(value)).await.map_err(kube_err)?;
                changed.push((name.clone(), old.clone()));
            }
            bar.0.inc(1);
        }
        done = done.max(upto);
        bar.say(format!("batch {n}: {done} nodes labelled; soaking {}s", args.soak.as_secs()));
        tokio::time::sleep(args.soak).await;
        let completed = ask(&gate, &bar, &format!("/api/v1/changes/{id}/batches/{n}/complete"), args.max_wait).await?;
        if !completed.proceed {
            return halted(args, &nodes, &bar, completed, changed).await;
        }
        bar.log(format!("batch {n} done: {}", completed.reason));
        if completed.change.state == ChangeState::Completed {
            bar.0.finish_with_message("completed");
            return Ok(Ended::Completed(completed.change));
        }
    }
    let (change, _): (Change, _) = gate.get(&format!("/api/v1/changes/{id}")).await?;
    bar.0.finish_with_message("completed");
    Ok(Ended::Completed(change))
}

/// Asks the gate until it answers for good: a denial with `retry_after_s` (soaking, budgets,
/// an inconclusive verdict) is asked again after it, up to `max_wait`.
async fn ask(gate: &Client, bar: &Progress, path: &str, max_wait: Duration) -> Result<BatchAnswer> {
    let start = tokio::time::Instant::now();
    loop {
        let (a, _): (BatchAnswer, _) = gate.post(path, &()).await?;
        let final_state = matches!(a.change.state, ChangeState::Halted | ChangeState::Aborted);
        match a.retry_after_s {
            Some(s) if !a.proceed && !final_state => {
                if start.elapsed() > max_wait {
                    return Err(Error::GateApi(format!("held longer than {}s: {}", max_wait.as_secs(), a.reason)));
                }
                bar.say(format!("waiting {s}s: {}", a.reason));
                tokio::time::sleep(Duration::from_secs(s)).await;
            }
            _ => return Ok(a),
        }
    }
}

async fn halted(
    args: &RolloutArgs,
    nodes: &Api<Node>,
    bar: &Progress,
    answer: BatchAnswer,
    changed: Vec<(String, Option<String>)>,
) -> Result<Ended> {
    bar.log(format!("halted: {}", answer.reason));
    let mut rolled_back = Vec::new();
    if args.rollback_on_halt {
        for (name, old) in changed.iter().rev() {
            label(nodes, name, &args.set_label.0, old.as_deref())
                .await
                .map_err(|e| Error::Usage(format!("rolling back {name}: {e}")))?;
            rolled_back.push(name.clone());
        }
        bar.log(format!("rolled back {} nodes to their old {}", rolled_back.len(), args.set_label.0));
    }
    bar.0.abandon_with_message("halted");
    Ok(Ended::Halted { change: answer.change, rolled_back })
}

/// Sets (or, with `None`, removes) a node label with a merge patch.
async fn label(nodes: &Api<Node>, name: &str, key: &str, value: Option<&str>) -> kube::Result<()> {
    let labels: BTreeMap<&str, Option<&str>> = BTreeMap::from([(key, value)]);
    let patch = serde_json::json!({"metadata": {"labels": labels}});
    nodes.patch(name, &PatchParams::default(), &Patch::Merge(&patch)).await.map(|_| ())
}
