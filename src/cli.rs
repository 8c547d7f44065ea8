//! Command-line interface.

use std::{path::PathBuf, sync::Arc, time::Duration};

use clap::{Args, Parser, Subcommand};
use firebreak_plumbing::kafka::KafkaConfig;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

#[cfg(feature = "demo")]
use crate::demo;
use crate::{Result, bind, cluster_client, kube_client};

/// Firebreak: node fault self-healing and risk-gated change for Kubernetes fleets.
#[derive(Debug, Parser)]
#[command(version, about)]
pub struct Cli {
    /// Log as JSON lines (for clusters) instead of text.
    #[arg(long, global = true, env = "FIREBREAK_LOG_JSON")]
    pub log_json: bool,
    /// What to run.
    #[command(subcommand)]
    pub command: Command,
}

/// Kafka flags shared by the services.
#[derive(Debug, Clone, Args)]
pub struct KafkaArgs {
    /// Kafka bootstrap servers.
    #[arg(long, env = "FIREBREAK_KAFKA_BROKERS")]
    pub kafka_brokers: Option<String>,
    /// A librdkafka property for every Kafka client, `key=value` (repeatable): TLS and SASL
    /// (`security.protocol=SASL_SSL`, `ssl.ca.location=/etc/kafka/ca.pem`,
    /// `sasl.mechanism=SCRAM-SHA-512`, `sasl.username=…`, `sasl.password=…`) or tuning.
    #[arg(long = "kafka-option", value_parser = parse_kv)]
    pub options: Vec<(String, String)>,
    /// A file of librdkafka properties, `key=value` per line (`#` comments), read before
    /// `--kafka-option`: keep SASL passwords there rather than on the command line.
    #[arg(long = "kafka-config", env = "FIREBREAK_KAFKA_CONFIG")]
    pub config_file: Option<PathBuf>,
    /// Extra librdkafka consumer property, `key=value` (repeatable).
    #[arg(long = "kafka-consumer-option", value_parser = parse_kv)]
    pub consumer_options: Vec<(String, String)>,
    /// Copies of each topic created at start-up when missing (-1: the brokers' default).
    #[arg(long, default_value_t = -1, allow_negative_numbers = true)]
    pub topic_replication: i32,
    /// Create no topics at start-up (someone else does, as `firebreak topics` lists them; a
    /// topic that appears later is picked up within 10 s).
    #[arg(long)]
    pub no_create_topics: bool,
}

impl KafkaArgs {
    /// The clients' configuration, if brokers are named.
    fn optional(&self) -> Result<Option<KafkaConfig>> {
        let Some(brokers) = self.kafka_brokers.clone().filter(|b| !b.trim().is_empty()) else {
            return Ok(None);
        };
        if self.topic_replication == 0 || self.topic_replication < -1 {
            return Err(crate::Error::Usage("--topic-replication: -1 (the brokers' default) or at least 1".into()));
        }
        let mut client_options = match &self.config_file {
            Some(p) => KafkaConfig::options_file(p)?,
            None => Vec::new(),
        };
        client_options.extend(self.options.iter().cloned());
        let cfg = KafkaConfig { brokers, client_options, consumer_options: self.consumer_options.clone() };
        // librdkafka checks every property when a client is made: a misspelt one stops the
        // service here, not at its first record.
        cfg.consumer("firebreak-config-check")
            .create::<rdkafka::consumer::BaseConsumer>()
            .map_err(|e| crate::Error::Usage(format!("Kafka options: {e}")))?;
        Ok(Some(cfg))
    }

    /// The clients' configuration; brokers are required.
    pub(crate) fn config(&self) -> Result<KafkaConfig> {
        self.optional()?
            .ok_or_else(|| crate::Error::Usage("--kafka-brokers (or FIREBREAK_KAFKA_BROKERS) is required".into()))
    }

    /// Creates the contract's missing topics for `clusters` (fleet-wide ones too), unless told
    /// not to, and says what the service is connected to. Brokers that cannot be reached in
    /// time are not fatal (consumers pick topics up when they appear); a refusal is.
    async fn ensure_topics(&self, cfg: &KafkaConfig, clusters: &[&str]) -> Result<()> {
        if self.no_create_topics {
            tracing::info!(brokers = %cfg.brokers, "Kafka: creating no topics (--no-create-topics)");
            return Ok(());
        }
        let topics = firebreak_schema::topics::for_clusters(clusters.iter().copied());
        match cfg.ensure_topics(&topics, self.topic_replication).await {
            Ok(created) => {
                tracing::info!(brokers = %cfg.brokers, ?created, topics = topics.len(), "Kafka: topics in place");
                Ok(())
            }
            Err(firebreak_plumbing::Error::Kafka(rdkafka::error::KafkaError::AdminOp(code)))
                if matches!(
                    code,
                    rdkafka::types::RDKafkaErrorCode::OperationTimedOut
                        | rdkafka::types::RDKafkaErrorCode::RequestTimedOut
                        | rdkafka::types::RDKafkaErrorCode::AllBrokersDown
                        | rdkafka::types::RDKafkaErrorCode::BrokerTransportFailure
                ) =>
            {
                tracing::warn!(brokers = %cfg.brokers, %code, "Kafka: brokers not reached to create topics; going on");
                Ok(())
            }
            Err(e) => Err(crate::Error::Usage(format!(
                "Kafka topics could not be created ({e}); create them as `firebreak topics` lists, and pass \
                 --no-create-topics"
            ))),
        }
    }
}

/// Node labels that name failure domains (repeatable).
#[derive(Debug, Clone, Args)]
pub struct DomainArgs {
    /// A node label that names a failure domain, as the gate's policy names it (repeatable).
    #[arg(long = "failure-domain-label", default_value = "topology.kubernetes.io/zone")]
    pub failure_domains: Vec<String>,
}

/// Flags of the per-cluster services (detector, remediator).
#[derive(Debug, Clone, Args)]
pub struct ClusterArgs {
    /// Cluster name.
    #[arg(long)]
    pub cluster: String,
    /// Kubeconfig of the cluster; without it, the pod's service account (in-cluster
    /// configuration), else `$KUBECONFIG` or `~/.kube/config`, as kubectl finds them.
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    #[command(flatten)]
    pub kafka: KafkaArgs,
    /// Serve Prometheus metrics at `http://ADDR/metrics`.
    #[arg(long)]
    pub metrics_listen: Option<String>,
}

fn parse_kv(s: &str) -> Result<(String, String), String> {
    s.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())).ok_or_else(|| format!("`{s}` is not key=value"))
}

/// A duration flag that must be more than zero (an interval, a timeout, a window): humantime's
/// syntax (`500ms`, `30s`, `10m`), and a clear error for `0s` instead of a panic or a busy loop.
pub fn positive_duration(s: &str) -> std::result::Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("`{s}`: {e}"))?;
    if d.is_zero() {
        return Err(format!("`{s}`: must be more than zero"));
    }
    Ok(d)
}

/// How the event center forms, correlates, resolves and keeps incidents.
#[derive(Debug, clap::Args)]
pub struct IncidentArgs {
    /// An incident nothing works on (open, acknowledged, silenced) is resolved after this long
    /// without an occurrence.
    #[arg(long, default_value = "1h", value_parser = positive_duration)]
    resolve_quiet_after: Duration,
    /// This many nodes of one cluster reporting one kind within --correlate-window make a
    /// correlated incident ("likely infrastructure, not nodes"), published on the health topic;
    /// placed in the zone or rack that holds most of them, when one does.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u16).range(2..))]
    correlate_nodes: u16,
    /// See --correlate-nodes.
    #[arg(long, default_value = "5m", value_parser = positive_duration)]
    correlate_window: Duration,
    /// Faults, steps and resolved incidents older than this are deleted.
    #[arg(long, default_value = "30d", value_parser = positive_duration)]
    retain_for: Duration,
    /// At most this many faults are kept; the oldest go first.
    #[arg(long, default_value_t = 5_000_000, value_parser = clap::value_parser!(i64).range(1..))]
    retain_faults: i64,
}

impl IncidentArgs {
    fn upkeep(&self) -> Result<firebreak_event_center::Upkeep> {
        let delta = |what: &str, d: Duration| {
            chrono::TimeDelta::from_std(d).map_err(|e| crate::Error::Usage(format!("--{what}: {e}")))
        };
        Ok(firebreak_event_center::Upkeep {
            rules: firebreak_event_center::Rules {
                resolve_quiet_after: delta("resolve-quiet-after", self.resolve_quiet_after)?,
                correlate_nodes: usize::from(self.correlate_nodes),
                correlate_window: delta("correlate-window", self.correlate_window)?,
            },
            retain_for: delta("retain-for", self.retain_for)?,
            retain_faults: self.retain_faults,
            ..Default::default()
        })
    }
}

/// Leader election among a cluster's replicas of the remediator or the detector.
#[derive(Debug, clap::Args)]
pub struct LeaderArgs {
    /// Act alone: no leader election (only with a single replica per cluster).
    #[arg(long)]
    pub no_leader_election: bool,
    /// Namespace of the cluster's Lease (`firebreak-remediator-<cluster>`,
    /// `firebreak-detector-<cluster>`).
    #[arg(long, default_value = "kube-system")]
    pub lease_namespace: String,
    /// This replica's identity in the Lease (default: `$POD_NAME`, or host and pid).
    #[arg(long, env = "POD_NAME")]
    pub lease_identity: Option<String>,
    /// How long the Lease lasts without renewal: how soon a replica takes over from a dead
    /// leader.
    #[arg(long, default_value = "15s", value_parser = crate::cli::positive_duration)]
    pub lease_duration: Duration,
}

impl LeaderArgs {
    /// The Lease configuration, or `None` with `--no-leader-election`.
    pub fn lease(self) -> Option<firebreak_plumbing::leader::LeaseConfig> {
        (!self.no_leader_election).then(|| firebreak_plumbing::leader::LeaseConfig {
            namespace: self.lease_namespace,
            identity: self.lease_identity.unwrap_or_else(|| {
                let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
                format!("{}-{}", host.trim(), std::process::id())
            }),
            duration: self.lease_duration,
        })
    }
}

/// `firebreak remediator` flags.
#[derive(Debug, clap::Args)]
pub struct RemediatorArgs {
    #[command(flatten)]
    pub on: ClusterArgs,
    /// Base URL of the gate.
    #[arg(long, default_value = "http://127.0.0.1:8181", value_parser = crate::parse_http_url)]
    pub gate_url: String,
    /// Bearer token (role requester) presented to the gate.
    #[arg(long, env = "FIREBREAK_GATE_TOKEN", hide_env_values = true)]
    pub gate_token: String,
    /// A certificate authority (PEM file) to trust for the gate's HTTPS.
    #[arg(long)]
    pub gate_ca: Option<PathBuf>,
    #[command(flatten)]
    pub domains: DomainArgs,
    /// `sqlite://FILE` or `postgres://...`.
    #[arg(long, default_value = "sqlite://firebreak-remediator.db", env = "FIREBREAK_DATABASE_URL")]
    pub database_url: String,
    /// Quiet period after a reboot before uncordon.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub quiet_period: Duration,
    /// A node condition that must be True before uncordon (repeatable).
    #[arg(long = "readiness-condition", value_name = "TYPE")]
    pub readiness_conditions: Vec<String>,
    /// A readiness gate whose ConfigMap (labelled `firebreak.io/readiness-gate=GATE`,
    /// `firebreak.io/node=NODE`) must say `data.ready: "true"` before uncordon (repeatable).
    #[arg(long = "readiness-configmap", value_name = "GATE")]
    pub readiness_configmaps: Vec<String>,
    /// How long after the quiet period to wait for the readiness gates before escalating.
    #[arg(long, default_value = "10m", value_parser = crate::cli::positive_duration)]
    pub readiness_timeout: Duration,
    #[command(flatten)]
    pub leader: LeaderArgs,
    /// Longest a drain may take before the node goes to a human.
    #[arg(long, default_value = "10m", value_parser = crate::cli::positive_duration)]
    pub drain_timeout: Duration,
    /// Longest a drain may go without fewer pods left on the node before the node goes to a
    /// human and the drain's permits are given back (pods that come back are not progress).
    #[arg(long, default_value = "5m", value_parser = crate::cli::positive_duration)]
    pub drain_stall: Duration,
    /// Longest a reboot may take (from its request to the node Ready on a new boot).
    #[arg(long, default_value = "15m", value_parser = crate::cli::positive_duration)]
    pub reboot_timeout: Duration,
    /// Longest a component restart may take (to the actuator's report and the node Ready).
    #[arg(long, default_value = "5m", value_parser = crate::cli::positive_duration)]
    pub restart_timeout: Duration,
    /// How long pod owners have to move pods labelled `firebreak.io/to-be-migrated` before
    /// they are evicted.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub migration_grace: Duration,
    /// Evict pods no controller would recreate, as `kubectl drain --force` does (without it a
    /// node with such pods is escalated, not drained).
    #[arg(long)]
    pub evict_unmanaged_pods: bool,
    /// The remediation policy (TOML: processes, ladders, the attempt budget); the built-in
    /// one without it (`firebreak check-remediation-policy` prints it).
    #[arg(long)]
    pub policy: Option<PathBuf>,
    /// Shadow mode: decide and record what each workflow would do, and do nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Also POST every escalation here, signed with `--escalation-webhook-secret`.
    #[arg(long, value_parser = crate::parse_http_url)]
    pub escalation_webhook: Option<String>,
    /// The escalation webhook's HMAC-SHA256 secret.
    #[arg(long, env = "FIREBREAK_ESCALATION_WEBHOOK_SECRET", hide_env_values = true)]
    pub escalation_webhook_secret: Option<String>,
    /// Where a reinstall is asked for (the policy's `reinstall` rung), signed with
    /// `--reinstall-webhook-secret`: PXE or cloud re-imaging behind it.
    #[arg(long, value_parser = crate::parse_http_url)]
    pub reinstall_webhook: Option<String>,
    /// The reinstall webhook's HMAC-SHA256 secret.
    #[arg(long, env = "FIREBREAK_REINSTALL_WEBHOOK_SECRET", hide_env_values = true)]
    pub reinstall_webhook_secret: Option<String>,
    /// Cluster API's management cluster (where the Machines are): a node annotated
    /// `cluster.x-k8s.io/machine` is reinstalled by deleting its Machine, which its MachineSet
    /// replaces with a new node. The first choice of the `reinstall` rung.
    #[arg(long)]
    pub cluster_api_kubeconfig: Option<PathBuf>,
    /// A batch/v1 Job template (YAML; `{{node}}`, `{{cluster}}`, `{{workflow_id}}`,
    /// `{{boot_id}}` are replaced) that re-images a node in place: the second choice of the
    /// `reinstall` rung, before `--reinstall-webhook`.
    #[arg(long)]
    pub reinstall_job_template: Option<PathBuf>,
    /// Longest a reinstall may take, from its request to the node Ready on a new boot (or,
    /// through Cluster API, to the old node gone).
    #[arg(long, default_value = "60m", value_parser = crate::cli::positive_duration)]
    pub reinstall_timeout: Duration,
    /// Where a hardware ticket is opened (the policy's `ticket` rung), signed with
    /// `--ticket-webhook-secret`.
    #[arg(long, value_parser = crate::parse_http_url)]
    pub ticket_webhook: Option<String>,
    /// The ticket webhook's HMAC-SHA256 secret.
    #[arg(long, env = "FIREBREAK_TICKET_WEBHOOK_SECRET", hide_env_values = true)]
    pub ticket_webhook_secret: Option<String>,
}
/// The services.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Per-node agent: kernel log faults and heartbeats to Kafka.
    Agent(firebreak_agent::AgentArgs),
    /// Per-cluster detector: NotReady nodes, silent agents, cluster snapshots for the gate.
    Detector {
        #[command(flatten)]
        on: ClusterArgs,
        /// Silence after which an agent is reported.
        #[arg(long, default_value = "30s", value_parser = crate::cli::positive_duration)]
        agent_silent_after: Duration,
        /// How often a health sample is published on the health topic.
        #[arg(long, default_value = "10s", value_parser = crate::cli::positive_duration)]
        sample_every: Duration,
        /// The sliding window of pod starts (and faults per class) in a health sample.
        #[arg(long, default_value = "5m", value_parser = crate::cli::positive_duration)]
        pod_window: Duration,
        /// A pod not Ready this long after its creation counts as a failed start (timed out).
        #[arg(long, default_value = "2m", value_parser = crate::cli::positive_duration)]
        pod_start_deadline: Duration,
        /// How long a node must stay NotReady before it is a fault; shorter spells are flaps.
        #[arg(long, default_value = "30s", value_parser = crate::cli::positive_duration)]
        not_ready_for: Duration,
        /// This many flaps within --flapping-within are reported as one `NodeFlapping` fault.
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(2..))]
        flapping_count: u32,
        /// The window flaps are counted in.
        #[arg(long, default_value = "10m", value_parser = crate::cli::positive_duration)]
        flapping_within: Duration,
        #[command(flatten)]
        domains: DomainArgs,
        #[command(flatten)]
        leader: LeaderArgs,
    },
    /// Central event center: store, API and web UI.
    EventCenter {
        #[command(flatten)]
        kafka: KafkaArgs,
        /// `sqlite://FILE` or `postgres://...`.
        #[arg(long, default_value = "sqlite://firebreak-events.db", env = "FIREBREAK_DATABASE_URL")]
        database_url: String,
        /// HTTP listen address.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: String,
        /// Tokens file for write actions (clearing an escalation needs an operator's), the
        /// gate's format; or the same TOML in FIREBREAK_EVENT_CENTER_TOKENS. Without: read-only.
        #[arg(long)]
        tokens: Option<PathBuf>,
        #[command(flatten)]
        incidents: IncidentArgs,
        /// Webhook subscriptions (TOML `[[webhooks]]`: url, secret_env, and optional clusters,
        /// classes, min_severity): told, HMAC-signed, of incidents that open or change state.
        #[arg(long)]
        subscriptions: Option<PathBuf>,
    },
    /// Central gate: serve it, check a policy file, or operate it.
    Gate {
        #[command(subcommand)]
        command: GateMode,
    },
    /// Bearer tokens for the gate: make one, or hash a secret.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Per-cluster remediator: durable repair workflows.
    Remediator(Box<RemediatorArgs>),
    /// Nodes escalated to a human: list them, clear them.
    Escalations {
        #[command(subcommand)]
        command: crate::escalations::EscalationCommand,
    },
    /// The Kafka topic contract: every topic, its key and types, who writes and who reads it,
    /// its partitions; `--create` makes the missing ones.
    Topics {
        /// Name each cluster's topics for these clusters (repeatable).
        #[arg(long = "cluster")]
        clusters: Vec<String>,
        /// Output format.
        #[arg(short = 'o', long, value_enum, default_value_t = crate::gate_cli::Output::Table)]
        output: crate::gate_cli::Output,
        /// Create the missing topics on the brokers (needs --kafka-brokers).
        #[arg(long)]
        create: bool,
        #[command(flatten)]
        kafka: KafkaArgs,
    },
    /// Checks a remediation policy file and prints it with its defaults filled in (the built-in
    /// policy, with the reasons for its choices, without a file).
    CheckRemediationPolicy {
        /// The TOML policy file.
        file: Option<PathBuf>,
    },
    /// Simulated clusters speaking the Kubernetes API, for trying things out with kubectl.
    #[cfg(feature = "demo")]
    FleetSim {
        /// Where kubeconfigs and node host roots are written.
        #[arg(long, default_value = "./firebreak-data")]
        data_dir: PathBuf,
        /// Number of clusters.
        #[arg(long, default_value_t = 1)]
        clusters: usize,
        /// Nodes per cluster.
        #[arg(long, default_value_t = 5)]
        nodes_per_cluster: usize,
        /// How often each simulated kubelet renews its node Lease (a real kubelet's is 10 s;
        /// the demo's 1 s).
        #[arg(long, default_value = "1s", value_parser = positive_duration)]
        heartbeat: Duration,
        /// Silence after which the simulated node controller marks a node Unknown (a real
        /// one's grace period is 50 s).
        #[arg(long, default_value = "3s", value_parser = positive_duration)]
        unreachable_after: Duration,
        /// Pods of the `churn` workload created per minute in each cluster (0: none).
        #[arg(long, default_value_t = 120)]
        churn_per_minute: u32,
        /// How often each cluster's simulated kubelets and controllers run (each run looks at
        /// every node and pod: coarser for large fleets).
        #[arg(long, default_value = "200ms", value_parser = positive_duration)]
        tick: Duration,
        /// With brokers, the simulated machines also carry out the remediators' commands
        /// (reboot, restart a component) as each node's agent would, and report them.
        #[command(flatten)]
        kafka: KafkaArgs,
    },
    /// The whole loop on this machine, with no external service.
    #[cfg(feature = "demo")]
    Demo(demo::DemoArgs),
    /// Rolls a node label out in batches, each begun and judged by the gate; stops when the
    /// gate halts the change. Exit code: 0 completed, 2 halted, 1 error.
    Rollout(crate::rollout::RolloutArgs),
    /// Benchmarks that print their figures beside a baseline measured in the same run.
    #[cfg(feature = "demo")]
    Bench {
        #[command(subcommand)]
        command: crate::bench::BenchCommand,
    },
}

/// `firebreak gate …`.
#[derive(Debug, Subcommand)]
pub enum GateMode {
    /// Serves the gate.
    Serve {
        /// HTTP listen address.
        #[arg(long, default_value = "127.0.0.1:8181")]
        listen: String,
        /// TOML policy file; the built-in policy applies without it.
        #[arg(long)]
        policy: Option<PathBuf>,
        /// `sqlite://FILE` (one replica) or `postgres://…` (several share it).
        #[arg(long, default_value = "sqlite://firebreak-gate.db", env = "FIREBREAK_GATE_DATABASE_URL")]
        database_url: String,
        /// Tokens file (TOML, SHA-256 hashes); or the same TOML in FIREBREAK_GATE_TOKENS.
        #[arg(long)]
        tokens: Option<PathBuf>,
        /// Kafka, to read cluster snapshots from (the health topic) and publish changes and
        /// halts; without brokers, rules that need snapshots deny.
        #[command(flatten)]
        kafka: KafkaArgs,
        /// Serve HTTPS with this PEM certificate chain (needs --tls-key).
        #[arg(long, requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// The PEM private key of --tls-cert.
        #[arg(long, requires = "tls_cert")]
        tls_key: Option<PathBuf>,
    },
    /// Validates a policy file and prints the effective policy (defaults filled in).
    CheckPolicy {
        /// The TOML policy file.
        file: PathBuf,
    },
    #[command(flatten)]
    Operate(crate::gate_cli::GateCommand),
}

/// `firebreak token …`.
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Makes a random secret and prints it with its tokens-file entry (hash only).
    New {
        /// Who the token is for (recorded as the holder of what it does).
        #[arg(long)]
        name: String,
        /// viewer, requester, operator or admin.
        #[arg(long, value_parser = parse_role)]
        role: firebreak_schema::Role,
    },
    /// Reads a secret from standard input and prints its SHA-256, as a tokens file holds it.
    Hash,
}

fn parse_role(s: &str) -> Result<firebreak_schema::Role, String> {
    serde_json::from_value(serde_json::Value::String(s.into()))
        .map_err(|_| format!("`{s}` is not a role (viewer, requester, operator, admin)"))
}

/// Runs a command until Ctrl-C.
pub async fn run(cli: Cli) -> Result<()> {
    let cancel = CancellationToken::new();
    let stop = cancel.clone();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("stopping");
        stop.cancel();
    });
    match cli.command {
        Command::Agent(args) => Ok(firebreak_agent::run(args).await?),
        Command::Detector {
            on,
            agent_silent_after,
            sample_every,
            pod_window,
            pod_start_deadline,
            not_ready_for,
            flapping_count,
            flapping_within,
            domains,
            leader,
        } => {
            let kafka = on.kafka.config()?;
            let client = cluster_client(on.kubeconfig.as_deref()).await?;
            on.kafka.ensure_topics(&kafka, &[&on.cluster]).await?;
            let mut registry = Registry::default();
            let metrics = firebreak_detector::Metrics::new(&mut registry);
            metrics_server(on.metrics_listen, registry, &cancel).await?;
            let cfg = firebreak_detector::Config {
                kafka,
                cluster: on.cluster,
                agent_silent_after,
                new_node_grace: Duration::from_secs(60),
                sample_every,
                failure_domains: domains.failure_domains,
                pod_window,
                pod_start_deadline,
                not_ready_for,
                flapping_count,
                flapping_within,
                lease: leader.lease(),
            };
            Ok(firebreak_detector::run(cfg, client, metrics, cancel).await?)
        }
        Command::EventCenter { kafka, database_url, listen, tokens, incidents, subscriptions } => {
            let webhooks = match subscriptions {
                Some(path) => {
                    let text = std::fs::read_to_string(&path)
                        .map_err(|source| crate::Error::Io { what: format!("read {}", path.display()), source })?;
                    firebreak_event_center::subscriptions::parse(&text, |k| std::env::var(k).ok())?
                }
                None => Vec::new(),
            };
            let tokens = match (tokens, std::env::var("FIREBREAK_EVENT_CENTER_TOKENS")) {
                (Some(path), _) => Some(firebreak_plumbing::auth::Tokens::load(&path)?),
                (None, Ok(text)) => Some(firebreak_plumbing::auth::Tokens::parse(&text)?),
                (None, Err(_)) => None,
            };
            let listener = bind(&listen).await?;
            let kafka_cfg = kafka.config()?;
            kafka.ensure_topics(&kafka_cfg, &[]).await?;
            let cfg = firebreak_event_center::Config {
                kafka: kafka_cfg,
                database_url,
                group_id: "firebreak-event-center".into(),
                tokens,
                upkeep: incidents.upkeep()?,
                webhooks,
            };
            Ok(firebreak_event_center::run(cfg, listener, cancel).await?)
        }
        Command::Gate { command: GateMode::CheckPolicy { file } } => {
            let policy = firebreak_rate_limiter::Policy::load(&file)?;
            print!("{}", policy.to_toml());
            Ok(())
        }
        Command::Gate { command: GateMode::Operate(cmd) } => crate::gate_cli::run(cmd).await,
        Command::Gate {
            command: GateMode::Serve { listen, policy, database_url, tokens, kafka, tls_cert, tls_key },
        } => {
            let tls = match (tls_cert, tls_key) {
                (Some(cert), Some(key)) => Some(firebreak_plumbing::serve::Tls::load(&cert, &key)?),
                _ => None,
            };
            let (policy, policy_path) = match policy {
                Some(p) => (firebreak_rate_limiter::Policy::load(&p)?, Some(p)),
                None => (firebreak_rate_limiter::Policy::default(), None),
            };
            let tokens = match (tokens, std::env::var("FIREBREAK_GATE_TOKENS")) {
                (Some(path), _) => firebreak_plumbing::auth::Tokens::load(&path)?,
                (None, Ok(text)) => firebreak_plumbing::auth::Tokens::parse(&text)?,
                (None, Err(_)) => {
                    return Err(crate::Error::Usage(
                        "the gate needs tokens: --tokens FILE or FIREBREAK_GATE_TOKENS (make them with `firebreak token new`)"
                            .into(),
                    ));
                }
            };
            let kafka_cfg = kafka.optional()?;
            if let Some(k) = &kafka_cfg {
                kafka.ensure_topics(k, &[]).await?;
            }
            let kafka = kafka_cfg;
            let listener = bind(&listen).await?;
            let cfg = firebreak_rate_limiter::Config { database_url, policy, policy_path, tokens, kafka, tls };
            Ok(firebreak_rate_limiter::run(cfg, listener, cancel).await?)
        }
        Command::Token { command: TokenCommand::New { name, role } } => {
            let secret = firebreak_plumbing::auth::new_secret();
            println!("# secret for `{name}` (give it to the client; it is not stored anywhere):\n# {secret}");
            print!("{}", firebreak_plumbing::auth::entry(&name, role, &secret));
            Ok(())
        }
        Command::Token { command: TokenCommand::Hash } => {
            let mut secret = String::new();
            std::io::stdin()
                .read_line(&mut secret)
                .map_err(|source| crate::Error::Io { what: "read the secret from standard input".into(), source })?;
            println!("{}", firebreak_plumbing::auth::hash(secret.trim_end_matches(['\r', '\n'])));
            Ok(())
        }
        Command::Escalations { command } => crate::escalations::run(command).await,
        Command::Topics { clusters, output, create, kafka } => {
            crate::topics::run(&clusters, output, create, &kafka).await
        }
        Command::CheckRemediationPolicy { file: None } => {
            print!("{}", firebreak_remediator::policy::DEFAULT_POLICY);
            Ok(())
        }
        Command::CheckRemediationPolicy { file: Some(file) } => {
            print!("{}", firebreak_remediator::Policy::load(&file)?.to_toml());
            Ok(())
        }
        Command::Remediator(args) => {
            let RemediatorArgs {
                on,
                gate_url,
                gate_token,
                gate_ca,
                domains,
                database_url,
                quiet_period,
                readiness_conditions,
                readiness_configmaps,
                readiness_timeout,
                leader,
                drain_timeout,
                drain_stall,
                reboot_timeout,
                restart_timeout,
                migration_grace,
                evict_unmanaged_pods,
                policy,
                dry_run,
                escalation_webhook,
                escalation_webhook_secret,
                reinstall_webhook,
                reinstall_webhook_secret,
                cluster_api_kubeconfig,
                reinstall_job_template,
                reinstall_timeout,
                ticket_webhook,
                ticket_webhook_secret,
            } = *args;
            let policy = match policy {
                Some(p) => firebreak_remediator::Policy::load(&p)?,
                None => firebreak_remediator::Policy::default(),
            };
            let webhook = |flag: &str, url: Option<String>, secret: Option<String>| match (url, secret) {
                (None, _) => Ok(None),
                (Some(url), Some(secret)) if !secret.is_empty() => {
                    Ok(Some(firebreak_remediator::Webhook { url, secret }))
                }
                (Some(_), _) => Err(crate::Error::Usage(format!(
                    "--{flag} needs --{flag}-secret (or FIREBREAK_{}_SECRET)",
                    flag.replace('-', "_").to_uppercase()
                ))),
            };
            let escalation_webhook = webhook("escalation-webhook", escalation_webhook, escalation_webhook_secret)?;
            let reinstall_webhook = webhook("reinstall-webhook", reinstall_webhook, reinstall_webhook_secret)?;
            let ticket_webhook = webhook("ticket-webhook", ticket_webhook, ticket_webhook_secret)?;
            let reinstall_job = reinstall_job_template
                .map(|p| {
                    let text = String::from_utf8(read_file(&p)?)
                        .map_err(|_| crate::Error::Usage(format!("{} is not UTF-8 text", p.display())))?;
                    firebreak_remediator::reinstall::JobTemplate::parse(&text)
                        .map_err(|e| crate::Error::Usage(format!("--reinstall-job-template {}: {e}", p.display())))
                })
                .transpose()?;
            let cluster_api = match cluster_api_kubeconfig {
                Some(p) => Some(firebreak_remediator::reinstall::ClusterApi(kube_client(&p).await?)),
                None => None,
            };
            let kafka = on.kafka.config()?;
            let client = cluster_client(on.kubeconfig.as_deref()).await?;
            on.kafka.ensure_topics(&kafka, &[&on.cluster]).await?;
            let mut registry = Registry::default();
            let metrics = firebreak_remediator::Metrics::new(&mut registry);
            metrics_server(on.metrics_listen, registry, &cancel).await?;
            let mut cfg = firebreak_remediator::Config::new(&on.cluster, kafka, &gate_url, &gate_token, &database_url);
            cfg.quiet_period = quiet_period;
            cfg.readiness = firebreak_remediator::ReadinessGates {
                conditions: readiness_conditions,
                configmaps: readiness_configmaps,
                timeout: readiness_timeout,
            };
            cfg.dry_run = dry_run;
            cfg.policy = policy;
            cfg.migration_grace = migration_grace;
            cfg.lease = leader.lease();
            cfg.drain_timeout = drain_timeout;
            cfg.drain_stall = drain_stall;
            cfg.reboot_timeout = reboot_timeout;
            cfg.restart_timeout = restart_timeout;
            cfg.evict_unmanaged = evict_unmanaged_pods;
            cfg.escalation_webhook = escalation_webhook;
            cfg.reinstall_webhook = reinstall_webhook;
            cfg.reinstall_job = reinstall_job;
            cfg.cluster_api = cluster_api;
            cfg.ticket_webhook = ticket_webhook;
            cfg.reinstall_timeout = reinstall_timeout;
            cfg.failure_domains = domains.failure_domains;
            cfg.gate_ca = gate_ca.map(|p| read_file(&p)).transpose()?;
            Ok(firebreak_remediator::run(cfg, client, metrics, cancel).await?)
        }
        #[cfg(feature = "demo")]
        Command::FleetSim {
            data_dir,
            clusters,
            nodes_per_cluster,
            heartbeat,
            unreachable_after,
            churn_per_minute,
            tick,
            kafka,
        } => {
            if clusters == 0 {
                return Err(crate::Error::Usage("--clusters must be at least 1".into()));
            }
            let timings = firebreak_fleet_sim::Timings {
                heartbeat,
                unreachable_after,
                churn_per_minute,
                tick,
                ..Default::default()
            };
            // Timings under which no node could stay Ready are refused.
            if unreachable_after <= heartbeat {
                return Err(crate::Error::Usage(
                    "--unreachable-after must be longer than --heartbeat (every node would be Unknown between renewals)"
                        .into(),
                ));
            }
            if heartbeat >= timings.lease_duration {
                return Err(crate::Error::Usage(format!(
                    "--heartbeat must be shorter than the node Leases' {:?} (every Lease would lapse between renewals)",
                    timings.lease_duration
                )));
            }
            if tick > heartbeat {
                return Err(crate::Error::Usage(
                    "--tick must not be longer than --heartbeat (the kubelets renew their Leases on the tick)".into(),
                ));
            }
            let fleet = firebreak_fleet_sim::Fleet::start(firebreak_fleet_sim::FleetConfig {
                data_dir,
                clusters,
                nodes_per_cluster,
                timings,
                apps: Default::default(),
            })
            .await?;
            let mut listeners = Vec::new();
            let mut producer = None;
            if let Some(cfg) = kafka.optional()? {
                let names: Vec<&str> = fleet.clusters().iter().map(|c| c.name()).collect();
                kafka.ensure_topics(&cfg, &names).await?;
                let p = firebreak_plumbing::kafka::Producer::new(&cfg)?;
                for c in fleet.clusters() {
                    let (listener, _) = crate::demo::simulated_actuators(c, &p);
                    listeners.push(crate::demo::spawn_command_listener(c.name(), listener, &cfg, &p, cancel.clone()));
                }
                producer = Some(p);
            }
            for c in fleet.clusters() {
                println!("cluster {} at {}: KUBECONFIG={}", c.name(), c.url(), c.kubeconfig_path().display());
            }
            cancel.cancelled().await;
            for l in listeners {
                let _ = l.await;
            }
            drop(producer);
            fleet.shutdown().await;
            Ok(())
        }
        #[cfg(feature = "demo")]
        Command::Demo(args) => demo::run(args, cancel).await,
        Command::Rollout(args) => {
            let client = kube_client(&args.kubeconfig).await?;
            let ended = crate::rollout::run(&args, client).await?;
            if ended.code() != 0 {
                std::process::exit(ended.code());
            }
            Ok(())
        }
        #[cfg(feature = "demo")]
        Command::Bench { command } => crate::bench::run(command).await,
    }
}

fn read_file(path: &std::path::Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|source| crate::Error::Io { what: format!("read {}", path.display()), source })
}

/// Starts the metrics server when an address was given.
async fn metrics_server(listen: Option<String>, registry: Registry, cancel: &CancellationToken) -> Result<()> {
    if let Some(addr) = listen {
        let listener = bind(&addr).await?;
        let serving = crate::serve_metrics(listener, Arc::new(registry), cancel.clone());
        tokio::spawn(async move {
            if let Err(error) = serving.await {
                tracing::error!(%error, "metrics server failed");
            }
        });
    }
    Ok(())
}
