//! `firebreak escalations`: the nodes a remediator handed to a human, and clearing them once the
//! human is done, through the cluster's Kubernetes API (the mark is the node's
//! `firebreak.io/escalated` annotation; the remediator records the clearance when it next hears
//! of the node).

use std::path::PathBuf;

use firebreak_schema::{ESCALATED_ANNOTATION, UNHEALTHY_TAINT_KEY};
use k8s_openapi::api::core::v1::Node;
use kube::{
    Api,
    api::{ListParams, Patch, PatchParams},
};
use serde_json::json;

use crate::{Error, Result, kube_client};

/// `firebreak escalations …`.
#[derive(Debug, clap::Subcommand)]
pub enum EscalationCommand {
    /// Lists the escalated nodes of a cluster: the workflow that escalated, whether the node is
    /// cordoned and carries Firebreak's taint.
    List {
        /// Kubeconfig of the cluster.
        #[arg(long)]
        kubeconfig: PathBuf,
    },
    /// Clears a node's escalation: new faults on it start work again (and its repair ladder
    /// starts over). With `--uncordon`, also puts it back in service.
    Clear {
        /// Kubeconfig of the cluster.
        #[arg(long)]
        kubeconfig: PathBuf,
        /// The node.
        #[arg(long)]
        node: String,
        /// Also uncordon the node and remove Firebreak's taint.
        #[arg(long)]
        uncordon: bool,
    },
}

/// Runs an escalation command; prints what it found or did.
pub async fn run(cmd: EscalationCommand) -> Result<()> {
    match cmd {
        EscalationCommand::List { kubeconfig } => {
            let nodes: Api<Node> = Api::all(kube_client(&kubeconfig).await?);
            let list = nodes.list(&ListParams::default()).await?;
            println!("{:<40} {:<38} {:<10} TAINTED", "NODE", "WORKFLOW", "CORDONED");
            for n in list.items {
                let Some(wf) = n.metadata.annotations.as_ref().and_then(|a| a.get(ESCALATED_ANNOTATION)) else {
                    continue;
                };
                let spec = n.spec.as_ref();
                let cordoned = spec.and_then(|s| s.unschedulable) == Some(true);
                let tainted = spec
                    .and_then(|s| s.taints.as_ref())
                    .is_some_and(|t| t.iter().any(|t| t.key == UNHEALTHY_TAINT_KEY));
                println!("{:<40} {wf:<38} {cordoned:<10} {tainted}", n.metadata.name.as_deref().unwrap_or_default());
            }
            Ok(())
        }
        EscalationCommand::Clear { kubeconfig, node, uncordon } => {
            let nodes: Api<Node> = Api::all(kube_client(&kubeconfig).await?);
            let n = nodes.get(&node).await?;
            let Some(wf) = n.metadata.annotations.as_ref().and_then(|a| a.get(ESCALATED_ANNOTATION)).cloned() else {
                return Err(Error::Usage(format!("node {node} is not escalated")));
            };
            // Conditional on the node as read: a taint or cordon changed meanwhile is not lost.
            let mut patch = json!({
                "metadata": {"resourceVersion": n.metadata.resource_version, "annotations": {ESCALATED_ANNOTATION: null}},
            });
            if uncordon {
                let taints: Vec<_> = n
                    .spec
                    .as_ref()
                    .and_then(|s| s.taints.clone())
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|t| t.key != UNHEALTHY_TAINT_KEY)
                    .collect();
                patch["spec"] = json!({"unschedulable": null, "taints": taints});
            }
            nodes.patch(&node, &PatchParams::default(), &Patch::Merge(&patch)).await?;
            let back =
                if uncordon { "; uncordoned and untainted" } else { "; still cordoned (--uncordon to put it back)" };
            println!("cleared the escalation of {node} by workflow {wf}{back}");
            Ok(())
        }
    }
}
