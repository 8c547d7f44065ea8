//! The `reinstall` rung's actuators, tried in order for each node:
//! 1. **Cluster API**: a node annotated `cluster.x-k8s.io/machine` (as Cluster API annotates the
//!    nodes of its Machines) is replaced by deleting its Machine in the management cluster
//!    (`--cluster-api-kubeconfig`); its MachineSet makes a new Machine, with a new node of a new
//!    name. The workflow ends `replaced` when the old node is gone.
//! 2. **A Job** rendered per node from a template (`--reinstall-job-template`): PXE or cloud
//!    re-imaging tooling run in the cluster. The node keeps its name and comes back on a new
//!    boot; a Job that fails escalates with its reason.
//! 3. **A webhook** (`--reinstall-webhook`), HMAC-signed: the same contract as the Job.
//!
//! Which one a workflow took is persisted (`Via`) before it acts, so a restarted remediator
//! waits on the same one and asks nothing twice: the Machine's deletion and the Job's creation
//! are idempotent by name, the webhook's receiver dedupes by `workflow_id`.

use k8s_openapi::api::{batch::v1::Job, core::v1::Node};
use kube::{
    Api,
    api::{ApiResource, DeleteParams, DynamicObject, GroupVersionKind, PostParams},
};

use crate::{Error, Result, Workflow};

/// The annotation Cluster API puts on a Machine's Node: the Machine's name.
pub const MACHINE_ANNOTATION: &str = "cluster.x-k8s.io/machine";
/// The annotation Cluster API puts on a Machine's Node: the Machine's namespace.
pub const MACHINE_NAMESPACE_ANNOTATION: &str = "cluster.x-k8s.io/cluster-namespace";

/// A client of Cluster API's management cluster (where the Machines are; the cluster itself
/// when it is self-hosted).
#[derive(Clone)]
pub struct ClusterApi(pub kube::Client);

impl std::fmt::Debug for ClusterApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterApi(management cluster client)")
    }
}

/// A reinstall Job template: a `batch/v1` Job in YAML, in which `{{node}}`, `{{cluster}}`,
/// `{{workflow_id}}` and `{{boot_id}}` are replaced. Its `metadata.namespace` is required; its
/// name is Firebreak's (`reinstall-<workflow>-<node>`, so that a retry finds the Job made
/// before), and it is labelled `firebreak.io/workflow` and `firebreak.io/node`.
#[derive(Debug, Clone)]
pub struct JobTemplate {
    text: String,
    namespace: String,
}

/// Placeholders a template may use, and what the check renders them with.
const PLACEHOLDERS: [(&str, &str); 4] = [
    ("{{node}}", "node-1"),
    ("{{cluster}}", "cluster-1"),
    ("{{workflow_id}}", "00000000-0000-0000-0000-000000000000"),
    ("{{boot_id}}", "boot"),
];

impl JobTemplate {
    /// Checks a template: it renders into a `batch/v1` Job (k8s-openapi checks `apiVersion` and
    /// `kind`) with a namespace and a container.
    pub fn parse(text: &str) -> Result<Self> {
        let sample = PLACEHOLDERS.iter().fold(text.to_owned(), |t, (k, v)| t.replace(k, v));
        let job: Job = serde_yaml::from_str(&sample)
            .map_err(|e| Error::Config(format!("reinstall Job template is not a batch/v1 Job: {e}")))?;
        let namespace = job
            .metadata
            .namespace
            .clone()
            .filter(|n| !n.is_empty())
            .ok_or_else(|| Error::Config("reinstall Job template: metadata.namespace is required".into()))?;
        if job.spec.as_ref().and_then(|s| s.template.spec.as_ref()).is_none_or(|s| s.containers.is_empty()) {
            return Err(Error::Config("reinstall Job template: spec.template.spec.containers is empty".into()));
        }
        Ok(Self { text: text.to_owned(), namespace })
    }

    /// The Job for a workflow's node.
    fn render(&self, wf: &Workflow, boot: &str) -> Result<Job> {
        let id = wf.id.to_string();
        let values = [
            ("{{node}}", wf.node.as_str()),
            ("{{cluster}}", wf.cluster.as_str()),
            ("{{workflow_id}}", id.as_str()),
            ("{{boot_id}}", boot),
        ];
        let text = values.iter().fold(self.text.clone(), |t, (k, v)| t.replace(k, v));
        let mut job: Job =
            serde_yaml::from_str(&text).map_err(|e| Error::Config(format!("reinstall Job template: {e}")))?;
        job.metadata.name = Some(job_name(wf));
        job.metadata.generate_name = None;
        job.metadata.namespace = Some(self.namespace.clone());
        let labels = job.metadata.labels.get_or_insert_default();
        labels.insert(firebreak_schema::WORKFLOW_LABEL.into(), id);
        labels.insert(firebreak_schema::NODE_LABEL.into(), wf.node.clone());
        Ok(job)
    }
}

/// The reinstall Job's name: the workflow's and the node's, within Kubernetes' 63 characters.
fn job_name(wf: &Workflow) -> String {
    let name = format!("reinstall-{}-{}", &wf.id.simple().to_string()[..12], wf.node);
    name.chars().take(63).collect::<String>().trim_end_matches(['-', '.']).to_owned()
}

/// How a workflow's reinstall was asked for, persisted before it was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Via {
    /// The node's Cluster API Machine was deleted.
    Machine {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
    },
    /// A Job re-images the node.
    Job {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
    },
    /// The reinstall webhook was asked.
    Webhook,
}

impl Via {
    /// As stored: `machine:<ns>/<name>`, `job:<ns>/<name>` or `webhook`.
    pub fn to_db(&self) -> String {
        match self {
            Via::Machine { namespace, name } => format!("machine:{namespace}/{name}"),
            Via::Job { namespace, name } => format!("job:{namespace}/{name}"),
            Via::Webhook => "webhook".into(),
        }
    }

    /// Reads what [`Via::to_db`] wrote.
    pub fn from_db(s: &str) -> Result<Self> {
        let split = |rest: &str| {
            rest.split_once('/')
                .map(|(ns, n)| (ns.to_owned(), n.to_owned()))
                .ok_or_else(|| Error::Corrupt(format!("reinstall actuator {s:?}")))
        };
        match s.split_once(':') {
            Some(("machine", rest)) => split(rest).map(|(namespace, name)| Via::Machine { namespace, name }),
            Some(("job", rest)) => split(rest).map(|(namespace, name)| Via::Job { namespace, name }),
            None if s == "webhook" => Ok(Via::Webhook),
            _ => Err(Error::Corrupt(format!("reinstall actuator {s:?}"))),
        }
    }

    /// For the record.
    pub fn describe(&self, webhook: Option<&crate::Webhook>) -> String {
        match self {
            Via::Machine { namespace, name } => {
                format!("Cluster API Machine {namespace}/{name} to be deleted (its MachineSet replaces the node)")
            }
            Via::Job { namespace, name } => format!("Job {namespace}/{name} to re-image the node"),
            Via::Webhook => format!("reinstall asked of {}", webhook.map_or("the webhook", |w| w.url.as_str())),
        }
    }
}

/// The node's Cluster API Machine, from the annotations Cluster API puts on its Node.
fn machine_of(node: &Node) -> Option<(String, String)> {
    let a = node.metadata.annotations.as_ref()?;
    let name = a.get(MACHINE_ANNOTATION).filter(|n| !n.is_empty())?;
    let ns = a.get(MACHINE_NAMESPACE_ANNOTATION).map_or("default", String::as_str);
    Some((ns.to_owned(), name.clone()))
}

/// Which actuator reinstalls this node: the first configured that applies; `None` when none is.
pub(crate) fn choose(cfg: &crate::Config, wf: &Workflow, node: &Node) -> Option<Via> {
    if cfg.cluster_api.is_some()
        && let Some((namespace, name)) = machine_of(node)
    {
        return Some(Via::Machine { namespace, name });
    }
    if let Some(t) = &cfg.reinstall_job {
        return Some(Via::Job { namespace: t.namespace.clone(), name: job_name(wf) });
    }
    cfg.reinstall_webhook.as_ref().map(|_| Via::Webhook)
}

fn machines(client: &kube::Client, namespace: &str) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("cluster.x-k8s.io", "v1beta1", "Machine");
    Api::namespaced_with(client.clone(), namespace, &ApiResource::from_gvk(&gvk))
}

/// Deletes the Machine (gone already is done).
pub(crate) async fn delete_machine(capi: &ClusterApi, namespace: &str, name: &str) -> Result<()> {
    match machines(&capi.0, namespace).delete(name, &DeleteParams::background()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Creates the workflow's Job (made before is done).
pub(crate) async fn create_job(client: &kube::Client, template: &JobTemplate, wf: &Workflow, boot: &str) -> Result<()> {
    let job = template.render(wf, boot)?;
    let api: Api<Job> = Api::namespaced(client.clone(), &template.namespace);
    match api.create(&PostParams::default(), &job).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Why the Job failed, if it did (its `Failed` condition's reason and message); an error if it
/// was deleted.
pub(crate) async fn job_failed(client: &kube::Client, namespace: &str, name: &str) -> Result<Option<String>> {
    let api: Api<Job> = Api::namespaced(client.clone(), namespace);
    let job = match api.get_opt(name).await? {
        Some(job) => job,
        None => return Ok(Some(format!("Job {namespace}/{name} was deleted before the node came back"))),
    };
    Ok(job.status.and_then(|s| s.conditions).and_then(|c| {
        c.into_iter().find(|c| c.type_ == "Failed" && c.status == "True").map(|c| {
            format!(
                "Job {namespace}/{name} failed: {}: {}",
                c.reason.unwrap_or_default(),
                c.message.unwrap_or_default()
            )
        })
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEMPLATE: &str = r#"
apiVersion: batch/v1
kind: Job
metadata:
  name: ignored
  namespace: reimage
  annotations:
    example.com/node: "{{node}}"
spec:
  backoffLimit: 0
  template:
    spec:
      restartPolicy: Never
      containers:
      - name: reimage
        image: registry.example/pxe-reimage:1
        args: ["--node", "{{node}}", "--cluster", "{{cluster}}", "--boot", "{{boot_id}}", "--id", "{{workflow_id}}"]
"#;

    fn wf(node: &str) -> Workflow {
        Workflow {
            id: uuid::Uuid::now_v7(),
            cluster: "c1".into(),
            node: node.into(),
            trigger_event_id: uuid::Uuid::now_v7(),
            fault_kind: "MemoryUncorrectable".into(),
            state: crate::State::Reinstalling,
            permit_id: None,
            step_permit_id: None,
            boot_id_before: None,
            reboot_requested_at_ms: None,
            was_cordoned: Some(false),
            step_started_at_ms: None,
            process: "memory".into(),
            rung: crate::Rung::Reinstall,
            rung_why: String::new(),
            reinstall_via: None,
            reason: String::new(),
        }
    }

    #[test]
    fn a_template_renders_per_node_under_firebreaks_name() {
        let t = JobTemplate::parse(TEMPLATE).unwrap();
        let w = wf("c1-node-007");
        let job = t.render(&w, "b-1").unwrap();
        let name = job.metadata.name.clone().unwrap();
        assert!(name.starts_with("reinstall-") && name.ends_with("-c1-node-007"), "{name}");
        assert_eq!(job.metadata.namespace.as_deref(), Some("reimage"));
        assert_eq!(job.metadata.labels.as_ref().unwrap()[firebreak_schema::NODE_LABEL], "c1-node-007");
        assert_eq!(job.metadata.annotations.as_ref().unwrap()["example.com/node"], "c1-node-007");
        let args = job.spec.unwrap().template.spec.unwrap().containers[0].args.clone().unwrap();
        assert_eq!(args, ["--node", "c1-node-007", "--cluster", "c1", "--boot", "b-1", "--id", &w.id.to_string()]);
        assert_eq!(t.render(&w, "b-1").unwrap().metadata.name.unwrap(), name, "a retry finds the same Job");
        // A node name at Kubernetes' limit still makes a valid Job name.
        let long = wf(&"n".repeat(253));
        assert!(job_name(&long).len() <= 63);
    }

    #[test]
    fn bad_templates_are_refused_with_why() {
        let err = |t: &str| JobTemplate::parse(t).unwrap_err().to_string();
        assert!(err("not: [yaml").contains("not a batch/v1 Job"), "{}", err("not: [yaml"));
        assert!(err(&TEMPLATE.replace("  namespace: reimage\n", "")).contains("metadata.namespace is required"));
        let pod = err(&TEMPLATE.replace("kind: Job", "kind: Pod"));
        assert!(pod.contains("not a batch/v1 Job") && pod.contains("Pod"), "{pod}");
        let no_containers =
            "apiVersion: batch/v1\nkind: Job\nmetadata: {namespace: x}\nspec: {template: {spec: {containers: []}}}\n";
        assert!(err(no_containers).contains("containers is empty"));
    }

    #[test]
    fn the_actuator_taken_is_stored_and_read_back() {
        for via in [
            Via::Machine { namespace: "capi".into(), name: "m-1".into() },
            Via::Job { namespace: "reimage".into(), name: "reinstall-x".into() },
            Via::Webhook,
        ] {
            assert_eq!(Via::from_db(&via.to_db()).unwrap(), via);
        }
        assert!(Via::from_db("job:no-slash").is_err());
        assert!(Via::from_db("telepathy").is_err());
    }
}
