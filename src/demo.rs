//! The whole loop on one machine: [`Stack`] starts every component on the real protocols —
//! librdkafka's in-process mock cluster as the Kafka broker (real Kafka protocol on a real
//! 127.0.0.1 port), SQLite files, fleet-sim's clusters behind their Kubernetes API — and
//! `firebreak demo` adds a fault injector. The end-to-end tests drive the same [`Stack`].

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use firebreak_agent::{NodeAgent, actuator, rules};
use firebreak_fleet_sim::{Fault, Fleet, FleetConfig, Timings};
use firebreak_plumbing::{
    auth::{self, Tokens},
    kafka::{KafkaConfig, Producer},
};
use firebreak_rate_limiter::Policy;
use firebreak_schema::{NodeAction, Role};
use rand::seq::IndexedRandom;
use rdkafka::{mocking::MockCluster, producer::DefaultProducerContext};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::{Error, Result, bind, kube_client};

/// `firebreak demo` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// Where SQLite files, kubeconfigs and node host roots go.
    #[arg(long, default_value = "./firebreak-data")]
    pub data_dir: PathBuf,
    /// Number of simulated clusters.
    #[arg(long, default_value_t = 3)]
    pub clusters: usize,
    /// Nodes per cluster.
    #[arg(long, default_value_t = 20)]
    pub nodes_per_cluster: usize,
    /// A random fault is injected this often.
    #[arg(long, default_value = "5s", value_parser = crate::cli::positive_duration)]
    pub fault_every: Duration,
    /// Event center (web UI and API) address.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: String,
    /// Gate address.
    #[arg(long, default_value = "127.0.0.1:8181")]
    pub gate_listen: String,
    /// Detector and remediator metrics address (`/metrics`).
    #[arg(long, default_value = "127.0.0.1:9464")]
    pub metrics_listen: String,
    /// Stop by itself after this long (default: run until Ctrl-C).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub run_for: Option<Duration>,
}

/// How to assemble a [`Stack`].
#[derive(Debug, Clone)]
pub struct StackOptions {
    /// Data directory.
    pub data_dir: PathBuf,
    /// Number of clusters.
    pub clusters: usize,
    /// Nodes per cluster.
    pub nodes_per_cluster: usize,
    /// Kafka brokers to use instead of an in-process mock cluster (the topics are created).
    pub kafka_brokers: Option<String>,
    /// How long a node must stay NotReady before the detectors report it.
    pub not_ready_for: Duration,
    /// Event center address (`127.0.0.1:0` for any free port).
    pub listen: String,
    /// Gate address.
    pub gate_listen: String,
    /// Detector and remediator metrics address.
    pub metrics_listen: String,
    /// Gate policy.
    pub policy: Policy,
    /// Event center database; SQLite under the data directory when `None`.
    pub event_center_db: Option<String>,
    /// Remediator database (shared by all clusters); one SQLite file per cluster when `None`.
    pub remediator_db: Option<String>,
    /// Gate database; SQLite under the data directory when `None`.
    pub gate_db: Option<String>,
    /// How often detectors publish health samples.
    pub sample_every: Duration,
    /// The detectors' pod-start window.
    pub pod_window: Duration,
    /// The detectors' pod-start deadline.
    pub pod_start_deadline: Duration,
    /// How fast simulated time goes.
    pub timings: Timings,
    /// The apps each simulated cluster runs.
    pub apps: firebreak_fleet_sim::Apps,
    /// The token the remediators present; the stack's requester token when `None`.
    pub remediator_token: Option<String>,
    /// Remediator quiet period after reboot.
    pub quiet_period: Duration,
    /// Remediator wait after a PodDisruptionBudget refusal.
    pub eviction_retry: Duration,
    /// How long a remediator's drain may take before it escalates.
    pub drain_timeout: Duration,
    /// How long a remediator's drain may go without progress before it escalates.
    pub drain_stall: Duration,
    /// How long pod owners have to move labelled pods before the remediator evicts them.
    pub migration_grace: Duration,
    /// Remediators evict pods without a controller (`kubectl drain --force`).
    pub evict_unmanaged: bool,
    /// Remediators in dry-run (shadow) mode.
    pub dry_run: bool,
    /// The remediators' policy: processes, ladders, the attempt budget.
    pub remediation: firebreak_remediator::Policy,
    /// Where remediators POST escalations.
    pub escalation_webhook: Option<firebreak_remediator::Webhook>,
    /// Where remediators ask for reinstalls.
    pub reinstall_webhook: Option<firebreak_remediator::Webhook>,
    /// The Job template remediators re-image nodes with.
    pub reinstall_job: Option<firebreak_remediator::reinstall::JobTemplate>,
    /// Every cluster's nodes are Cluster API machines (the cluster is its own management
    /// cluster): remediators reinstall them by deleting their Machines.
    pub cluster_api: bool,
    /// Where remediators open hardware tickets.
    pub ticket_webhook: Option<firebreak_remediator::Webhook>,
    /// Agent heartbeat period.
    pub heartbeat: Duration,
    /// What must hold before a repaired node is put back, beyond Ready and the quiet period.
    pub readiness: firebreak_remediator::ReadinessGates,
    /// The detectors' and remediators' leader Lease duration (production's default is 15 s).
    pub leader_lease: Duration,
    /// Run a remediator per cluster in this process (off: the tests start their own replicas).
    pub remediators: bool,
    /// Run the healing loop: an agent per node and a remediator per cluster. Off, the stack is
    /// the clusters, detectors, gate and event center, for measuring the health path alone
    /// (the detectors then report no silent agents).
    pub healing: bool,
}

impl StackOptions {
    /// Demo-speed defaults.
    pub fn new(data_dir: PathBuf, clusters: usize, nodes_per_cluster: usize) -> Self {
        Self {
            data_dir,
            clusters,
            nodes_per_cluster,
            kafka_brokers: None,
            not_ready_for: Duration::from_secs(2),
            listen: "127.0.0.1:0".into(),
            gate_listen: "127.0.0.1:0".into(),
            metrics_listen: "127.0.0.1:0".into(),
            policy: demo_policy(),
            event_center_db: None,
            remediator_db: None,
            gate_db: None,
            sample_every: Duration::from_secs(1),
            pod_window: Duration::from_secs(60),
            pod_start_deadline: Duration::from_secs(15),
            timings: Timings::default(),
            apps: Default::default(),
            remediator_token: None,
            quiet_period: Duration::from_secs(5),
            eviction_retry: Duration::from_secs(1),
            drain_timeout: Duration::from_secs(600),
            drain_stall: Duration::from_secs(300),
            migration_grace: Duration::from_secs(1),
            evict_unmanaged: false,
            dry_run: false,
            remediation: firebreak_remediator::Policy::default(),
            escalation_webhook: None,
            reinstall_webhook: None,
            reinstall_job: None,
            cluster_api: false,
            ticket_webhook: None,
            heartbeat: Duration::from_secs(2),
            readiness: firebreak_remediator::ReadinessGates::default(),
            healing: true,
            remediators: true,
            leader_lease: Duration::from_secs(6),
        }
    }
}

/// The secrets of the tokens the demo makes, one per role (the gate keeps only their hashes).
#[derive(Debug, Clone)]
pub struct DemoTokens {
    /// Role viewer.
    pub viewer: String,
    /// Role requester: the remediators'.
    pub requester: String,
    /// Role operator.
    pub operator: String,
    /// Role admin.
    pub admin: String,
    /// Role requester: change systems' (`firebreak rollout`).
    pub changes: String,
}

impl DemoTokens {
    fn new() -> Self {
        Self {
            viewer: auth::new_secret(),
            requester: auth::new_secret(),
            operator: auth::new_secret(),
            admin: auth::new_secret(),
            changes: auth::new_secret(),
        }
    }

    fn file(&self) -> String {
        [
            auth::entry("viewer", Role::Viewer, &self.viewer),
            auth::entry("remediator", Role::Requester, &self.requester),
            auth::entry("operator", Role::Operator, &self.operator),
            auth::entry("admin", Role::Admin, &self.admin),
            auth::entry("change-system", Role::Requester, &self.changes),
        ]
        .join("\n")
    }
}

/// One cluster the control plane serves: its name and the kubeconfig of its API server.
#[derive(Debug, Clone)]
pub struct ClusterAccess {
    /// The cluster's name (its topics, its permits, its incidents).
    pub name: String,
    /// The kubeconfig that reaches its Kubernetes API.
    pub kubeconfig: PathBuf,
}

/// The control plane in one process: the event center, the gate, and a detector and (when
/// healing) a remediator per cluster, on given clusters and brokers. [`Stack`] runs it beside
/// simulated clusters and agents; `firebreak bench fleet` runs it alone, in a process of its own,
/// against a fleet-sim process, to measure what it costs.
pub struct ControlPlane {
    /// `http://...` of the event center.
    pub event_center_url: String,
    /// `http://...` of the gate.
    pub gate_url: String,
    /// `http://...` of the detectors' and remediators' metrics.
    pub metrics_url: String,
    /// The tokens' secrets.
    pub tokens: DemoTokens,
    kafka_config: KafkaConfig,
    gate_addr: SocketAddr,
    gate_db: String,
    policy: Policy,
    gate: Option<(CancellationToken, JoinHandle<()>)>,
    /// Each cluster's remediator: how it is run, its task, and what stops them all.
    remediator_runs: Vec<(firebreak_remediator::Config, kube::Client)>,
    remediator_metrics: firebreak_remediator::Metrics,
    remediator_tasks: Vec<JoinHandle<()>>,
    remediators: CancellationToken,
    cancel: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

fn spawn_logged<E: std::fmt::Display>(
    what: String,
    f: impl Future<Output = Result<(), E>> + Send + 'static,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        if let Err(error) = f.await {
            tracing::error!(%error, component = %what, "component stopped with an error");
        }
    })
}

/// How a component that stopped with an error is started again: after 1 s, then longer each
/// time, up to 30 s, as Kubernetes restarts a crashed pod (CrashLoopBackOff); after a run of
/// [`HEALTHY_RUN`] the delays start over.
const RESTART: firebreak_plumbing::retry::Policy =
    firebreak_plumbing::retry::Policy::forever(Duration::from_secs(1), Duration::from_secs(30));
/// A run this long was healthy: its crash is not part of a crash loop (Kubernetes: 10 minutes).
const HEALTHY_RUN: Duration = Duration::from_secs(600);
/// How long the demo's consumers let a broker park a fetch, in ms (see [`Stack::start`]).
const DEMO_FETCH_WAIT_MS: &str = "10";

/// Runs a component that holds no listener of its own until `cancel`: one that stops with an
/// error (a database that timed out at start-up, its leader Lease lost to a starved API server)
/// is started again ([`RESTART`]) instead of leaving its cluster alone. A component stops on
/// `cancel` by itself (releasing its Lease), so it is never cut short here.
fn spawn_restarted<E, F, Fut>(what: String, cancel: CancellationToken, mut start: F) -> JoinHandle<()>
where
    E: std::fmt::Display + Send + 'static,
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = Result<(), E>> + Send + 'static,
{
    tokio::spawn(async move {
        let mut backoff = RESTART.backoff();
        loop {
            let started = tokio::time::Instant::now();
            let Err(error) = start().await else { return };
            if started.elapsed() >= HEALTHY_RUN {
                backoff.reset();
            }
            let Some(wait) = backoff.next_after(&what, &error) else { return };
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    })
}

impl ControlPlane {
    /// Starts the control plane for `clusters` (their topics must exist), its databases under
    /// `data_dir` unless `opts` names others. Remediators run when `opts.remediators` and
    /// `opts.healing` say so; detectors report silent agents only when healing.
    pub async fn start(
        opts: &StackOptions,
        data_dir: &std::path::Path,
        clusters: &[ClusterAccess],
        kafka_config: &KafkaConfig,
    ) -> Result<ControlPlane> {
        let cancel = CancellationToken::new();
        let mut tasks = Vec::new();
        let mut remediator_runs = Vec::new();
        let tokens = DemoTokens::new();
        let gate_db =
            opts.gate_db.clone().unwrap_or_else(|| format!("sqlite://{}", data_dir.join("gate.db").display()));
        let gate_listener = bind(&opts.gate_listen).await?;
        let gate_addr =
            gate_listener.local_addr().map_err(|source| Error::Io { what: "gate address".into(), source })?;

        let ec_listener = bind(&opts.listen).await?;
        let ec_addr =
            ec_listener.local_addr().map_err(|source| Error::Io { what: "event center address".into(), source })?;
        let ec = firebreak_event_center::Config {
            kafka: kafka_config.clone(),
            database_url: opts
                .event_center_db
                .clone()
                .unwrap_or_else(|| format!("sqlite://{}", data_dir.join("event-center.db").display())),
            group_id: "firebreak-event-center".into(),
            tokens: Some(Tokens::parse(&tokens.file())?),
            upkeep: Default::default(),
            webhooks: Vec::new(),
        };
        tasks.push(spawn_logged("event-center".into(), firebreak_event_center::run(ec, ec_listener, cancel.clone())));

        let mut registry = prometheus_client::registry::Registry::default();
        let detector_metrics = firebreak_detector::Metrics::new(&mut registry);
        let remediator_metrics = firebreak_remediator::Metrics::new(&mut registry);
        let metrics_listener = bind(&opts.metrics_listen).await?;
        let metrics_url = format!(
            "http://{}",
            metrics_listener.local_addr().map_err(|source| Error::Io { what: "metrics address".into(), source })?
        );
        tasks.push(spawn_logged(
            "metrics".into(),
            crate::serve_metrics(metrics_listener, Arc::new(registry), cancel.clone()),
        ));
        for cluster in clusters {
            let client = kube_client(&cluster.kubeconfig).await?;
            let detector = firebreak_detector::Config {
                cluster: cluster.name.clone(),
                kafka: kafka_config.clone(),
                // Without agents, silence is expected: not a fault.
                agent_silent_after: if opts.healing { opts.heartbeat * 5 } else { Duration::MAX },
                new_node_grace: Duration::from_secs(60),
                sample_every: opts.sample_every,
                failure_domains: opts.policy.failure_domains.clone(),
                pod_window: opts.pod_window,
                pod_start_deadline: opts.pod_start_deadline,
                not_ready_for: opts.not_ready_for,
                flapping_count: 3,
                flapping_within: Duration::from_secs(600),
                // One replica per cluster here, under the same Lease as production's.
                lease: Some(firebreak_plumbing::leader::LeaseConfig {
                    namespace: "kube-system".into(),
                    identity: format!("demo-detector-{}", cluster.name),
                    duration: opts.leader_lease,
                }),
            };
            let (c, m, stop) = (client.clone(), detector_metrics.clone(), cancel.clone());
            tasks.push(spawn_restarted(format!("detector/{}", cluster.name), cancel.clone(), move || {
                firebreak_detector::run(detector.clone(), c.clone(), m.clone(), stop.clone())
            }));
            if !opts.healing {
                continue;
            }
            let db = opts.remediator_db.clone().unwrap_or_else(|| {
                format!("sqlite://{}", data_dir.join(format!("remediator-{}.db", cluster.name)).display())
            });
            let mut rem = firebreak_remediator::Config::new(
                &cluster.name,
                kafka_config.clone(),
                &format!("http://{gate_addr}"),
                opts.remediator_token.as_deref().unwrap_or(&tokens.requester),
                &db,
            );
            rem.failure_domains = opts.policy.failure_domains.clone();
            rem.quiet_period = opts.quiet_period;
            rem.eviction_retry = opts.eviction_retry;
            rem.readiness = opts.readiness.clone();
            rem.drain_timeout = opts.drain_timeout;
            rem.drain_stall = opts.drain_stall;
            rem.dry_run = opts.dry_run;
            rem.policy = opts.remediation.clone();
            rem.migration_grace = opts.migration_grace;
            // One replica per cluster here, under the same Lease as production's.
            rem.lease = Some(firebreak_remediator::LeaseConfig {
                namespace: "kube-system".into(),
                identity: format!("demo-remediator-{}", cluster.name),
                duration: opts.leader_lease,
            });
            rem.evict_unmanaged = opts.evict_unmanaged;
            rem.escalation_webhook = opts.escalation_webhook.clone();
            rem.reinstall_webhook = opts.reinstall_webhook.clone();
            rem.reinstall_job = opts.reinstall_job.clone();
            if opts.cluster_api {
                rem.cluster_api = Some(firebreak_remediator::reinstall::ClusterApi(client.clone()));
            }
            rem.ticket_webhook = opts.ticket_webhook.clone();
            remediator_runs.push((rem, client));
        }
        // The gate knows the fleet: a request for any other cluster is refused.
        let mut policy = opts.policy.clone();
        if policy.clusters.is_empty() {
            policy.clusters = clusters.iter().map(|c| c.name.clone()).collect();
        }
        let mut control = ControlPlane {
            event_center_url: format!("http://{ec_addr}"),
            gate_url: format!("http://{gate_addr}"),
            metrics_url,
            tokens,
            kafka_config: kafka_config.clone(),
            gate_addr,
            gate_db,
            policy,
            gate: None,
            remediators: cancel.child_token(),
            remediator_runs,
            remediator_metrics,
            remediator_tasks: Vec::new(),
            cancel,
            tasks,
        };
        control.serve_gate(gate_listener)?;
        if opts.remediators {
            control.spawn_remediators();
        }
        Ok(control)
    }

    fn serve_gate(&mut self, listener: tokio::net::TcpListener) -> Result<()> {
        let stop = CancellationToken::new();
        let cfg = firebreak_rate_limiter::Config {
            database_url: self.gate_db.clone(),
            policy: self.policy.clone(),
            policy_path: None,
            tokens: Tokens::parse(&self.tokens.file())?,
            kafka: Some(self.kafka_config.clone()),
            tls: None,
        };
        let task = spawn_logged("gate".into(), firebreak_rate_limiter::run(cfg, listener, stop.clone()));
        self.gate = Some((stop, task));
        Ok(())
    }

    fn spawn_remediators(&mut self) {
        for (cfg, client) in &self.remediator_runs {
            let (cfg, client, metrics, stop) =
                (cfg.clone(), client.clone(), self.remediator_metrics.clone(), self.remediators.clone());
            let what = format!("remediator/{}", cfg.cluster);
            self.remediator_tasks.push(spawn_restarted(what, self.remediators.clone(), move || {
                firebreak_remediator::run(cfg.clone(), client.clone(), metrics.clone(), stop.clone())
            }));
        }
    }

    /// Stops every remediator at once, mid-step, as a crash would.
    pub fn kill_remediators(&self) {
        self.remediators.cancel();
    }

    /// Kills every remediator, waits for them to stop, and starts them again on the same
    /// databases.
    pub async fn restart_remediators(&mut self) {
        self.remediators.cancel();
        for t in self.remediator_tasks.drain(..) {
            let _ = t.await;
        }
        self.remediators = self.cancel.child_token();
        self.spawn_remediators();
    }

    /// Stops the gate, as a crash would (its state is in its database).
    pub async fn stop_gate(&mut self) {
        if let Some((stop, task)) = self.gate.take() {
            stop.cancel();
            let _ = task.await;
        }
    }

    /// Starts the gate again on the same address.
    pub async fn start_gate(&mut self) -> Result<()> {
        if self.gate.is_none() {
            let listener = bind(&self.gate_addr.to_string()).await?;
            self.serve_gate(listener)?;
        }
        Ok(())
    }

    /// Stops everything and waits for it.
    pub async fn shutdown(mut self) {
        self.cancel.cancel();
        self.stop_gate().await;
        for t in self.tasks.drain(..).chain(self.remediator_tasks.drain(..)) {
            let _ = t.await;
        }
    }
}

/// The simulated machines' side of the remediators' commands for one fleet-sim cluster: an
/// actuator per node that acts on its simulated machine where a real one runs systemctl, and
/// one listener that reads the cluster's command topic for all of them.
pub fn simulated_actuators(
    cluster: &Arc<firebreak_fleet_sim::Cluster>,
    producer: &Producer,
) -> (actuator::Listener, Vec<Arc<actuator::NodeActuator>>) {
    let sim = cluster.clone();
    let effect = actuator::Effect::Call(Arc::new(move |node: &str, action: &NodeAction| match action {
        NodeAction::Reboot => sim.reboot(node).map(|()| "rebooting".to_owned()).map_err(|e| e.to_string()),
        NodeAction::Restart { component } => {
            sim.restart(node, component).map(|()| format!("{component} restarted")).map_err(|e| e.to_string())
        }
        NodeAction::Report => Ok("nothing to do".into()),
    }));
    let act = actuator::ActuatorConfig {
        effect,
        restartable: vec!["kubelet".into(), "containerd".into()],
        timeout: Duration::from_secs(60),
    };
    let actuators: Vec<_> = cluster
        .node_names()
        .into_iter()
        .map(|node| {
            let host_root = cluster.host_root(&node);
            Arc::new(actuator::NodeActuator::new(
                cluster.name(),
                &node,
                &host_root,
                &host_root.join("var/lib/firebreak-agent"),
                act.clone(),
                producer.clone(),
            ))
        })
        .collect();
    (actuator::Listener::new(actuators.clone()), actuators)
}

/// Runs a cluster's command listener (see [`simulated_actuators`]) until `cancel`.
pub fn spawn_command_listener(
    cluster: &str,
    listener: actuator::Listener,
    kafka: &KafkaConfig,
    producer: &Producer,
    cancel: CancellationToken,
) -> JoinHandle<()> {
    let (kafka, producer, group) = (kafka.clone(), producer.clone(), format!("firebreak-agents-{cluster}"));
    tokio::spawn(async move {
        if let Err(error) = listener.run(&kafka, &group, &producer, cancel).await {
            tracing::error!(%error, "a command listener stopped");
        }
    })
}

/// Every component, running.
pub struct Stack {
    /// Where the data directory's earlier run was moved, if there was one.
    pub previous_run: Option<PathBuf>,
    /// The simulated clusters.
    pub fleet: Fleet,
    /// The in-process Kafka cluster, unless brokers were given. Not `Send`: keep the stack on
    /// the task that made it.
    pub kafka: Option<MockCluster<'static, DefaultProducerContext>>,
    /// Broker addresses and client tuning.
    pub kafka_config: KafkaConfig,
    /// `http://...` of the event center.
    pub event_center_url: String,
    /// `http://...` of the gate.
    pub gate_url: String,
    /// `http://...` of the detectors' and remediators' metrics.
    pub metrics_url: String,
    /// The tokens' secrets.
    pub tokens: DemoTokens,
    control: ControlPlane,
    /// What stops the agents and command listeners.
    cancel: CancellationToken,
    agents: Vec<JoinHandle<()>>,
    producer: Producer,
}

impl Stack {
    /// Starts everything.
    pub async fn start(opts: StackOptions) -> Result<Stack> {
        if opts.clusters == 0 || opts.nodes_per_cluster == 0 {
            return Err(Error::Usage("at least one cluster and one node per cluster".into()));
        }
        std::fs::create_dir_all(&opts.data_dir)
            .map_err(|source| Error::Io { what: format!("create {}", opts.data_dir.display()), source })?;
        let data_dir = std::fs::canonicalize(&opts.data_dir)
            .map_err(|source| Error::Io { what: format!("resolve {}", opts.data_dir.display()), source })?;
        let previous_run = fresh_start(&data_dir)?;
        // librdkafka's in-process mock cluster, unless brokers are given (Tansu in the tests).
        let kafka = match &opts.kafka_brokers {
            Some(_) => None,
            None => Some(MockCluster::new(1).map_err(firebreak_plumbing::Error::from)?),
        };
        let brokers = match (&opts.kafka_brokers, &kafka) {
            (Some(b), _) => b.clone(),
            (None, Some(mock)) => mock.bootstrap_servers(),
            (None, None) => String::new(),
        };
        // Kafka answers a fetch it parked as soon as a record comes; the brokers a demo runs on
        // do not: librdkafka's mock answers it, empty, when the consumer's wait is over, Tansu
        // sleeps out the wait before it looks again. At the services' 50 ms that was 25 ms on
        // average of every record's way, half of a fault's way to its cordon. The demo's
        // consumers wait 10 ms at most: more fetches from an idle stack, less latency.
        let consumer_options = vec![
            ("session.timeout.ms".into(), "6000".into()),
            ("heartbeat.interval.ms".into(), "500".into()),
            ("fetch.wait.max.ms".into(), DEMO_FETCH_WAIT_MS.into()),
        ];
        let kafka_config = KafkaConfig { brokers, client_options: Vec::new(), consumer_options };
        let fleet = Fleet::start(FleetConfig {
            data_dir: data_dir.clone(),
            clusters: opts.clusters,
            nodes_per_cluster: opts.nodes_per_cluster,
            timings: opts.timings,
            apps: opts.apps,
        })
        .await?;
        // The topic contract, as every service creates it at start-up: fleet-wide topics and
        // each cluster's fault topic.
        let names: Vec<String> = fleet.clusters().iter().map(|c| c.name().to_owned()).collect();
        let topics = firebreak_schema::topics::for_clusters(names.iter().map(String::as_str));
        match &kafka {
            // The mock cluster answers no CreateTopics: it has its own call.
            Some(mock) => create_mock_topics(mock, &topics)?,
            None => {
                kafka_config.ensure_topics(&topics, 1).await?;
            }
        }
        if opts.cluster_api && opts.healing {
            for cluster in fleet.clusters() {
                cluster.adopt_machines("default")?;
            }
        }
        let access: Vec<ClusterAccess> = fleet
            .clusters()
            .iter()
            .map(|c| ClusterAccess { name: c.name().to_owned(), kubeconfig: c.kubeconfig_path() })
            .collect();
        let control = ControlPlane::start(&opts, &data_dir, &access, &kafka_config).await?;

        let cancel = CancellationToken::new();
        let mut agents = Vec::new();
        let producer = firebreak_agent::producer(&kafka_config)?;
        let rules = Arc::new(rules::defaults());
        for cluster in fleet.clusters().iter().filter(|_| opts.healing) {
            let (listener, actuators) = simulated_actuators(cluster, &producer);
            for actuator in actuators {
                let node = actuator.node().to_owned();
                let host_root = cluster.host_root(&node);
                let state = host_root.join("var/lib/firebreak-agent");
                let cursor = Some(state.join("kmsg-cursor"));
                let metrics = firebreak_agent::metrics::Metrics::default();
                let spool = Some(firebreak_agent::spool::Spool::open(
                    &state.join("spool"),
                    Default::default(),
                    metrics.clone(),
                )?);
                // fleet-sim's host roots hold a kernel log and boot facts, not a sysfs: the
                // sources beyond the kernel log are not simulated.
                let agent = NodeAgent {
                    sources: None,
                    cursor,
                    spool,
                    metrics,
                    cluster: cluster.name().into(),
                    host_root,
                    node,
                    rules: rules.clone(),
                    producer: producer.clone(),
                    poll_interval: Duration::from_millis(250),
                    heartbeat_interval: opts.heartbeat,
                    actuator: Some(actuator),
                };
                agents.push(tokio::spawn(agent.run(cancel.clone())));
            }
            agents.push(spawn_command_listener(cluster.name(), listener, &kafka_config, &producer, cancel.clone()));
        }
        Ok(Stack {
            previous_run,
            fleet,
            kafka,
            kafka_config,
            event_center_url: control.event_center_url.clone(),
            gate_url: control.gate_url.clone(),
            metrics_url: control.metrics_url.clone(),
            tokens: control.tokens.clone(),
            control,
            cancel,
            agents,
            producer,
        })
    }

    /// Stops every remediator at once, mid-step, as a crash would (their state is in their
    /// databases; their permits are left to expire).
    pub fn kill_remediators(&self) {
        self.control.kill_remediators();
    }

    /// Kills every remediator (as [`Stack::kill_remediators`]), waits for them to stop, and
    /// starts them again on the same databases, as a crash-looping deployment would.
    pub async fn restart_remediators(&mut self) {
        self.control.restart_remediators().await;
    }

    /// Stops the gate, as a crash would (its state is in its database).
    pub async fn stop_gate(&mut self) {
        self.control.stop_gate().await;
    }

    /// Starts the gate again on the same address.
    pub async fn start_gate(&mut self) -> Result<()> {
        self.control.start_gate().await
    }

    /// Stops everything and waits for it.
    pub async fn shutdown(mut self) {
        self.cancel.cancel();
        self.control.shutdown().await;
        for t in self.agents.drain(..) {
            let _ = t.await;
        }
        let _ = self.producer.flush(Duration::from_secs(2));
        let Stack { fleet, kafka, producer, .. } = self;
        // Every client goes before the broker does.
        drop(producer);
        fleet.shutdown().await;
        drop(kafka);
    }
}

/// Creates topics on librdkafka's mock cluster, which answers no CreateTopics.
pub fn create_mock_topics(mock: &MockCluster<'static, DefaultProducerContext>, topics: &[(String, i32)]) -> Result<()> {
    for (topic, partitions) in topics {
        mock.create_topic(topic, *partitions, 1).map_err(firebreak_plumbing::Error::from)?;
    }
    Ok(())
}

/// The runtime version `firebreak demo` marks unhealthy in every cluster.
pub const BAD_RUNTIME: &str = "v2-bad";

/// The demo's gate policy: the built-in one, plus a health rule that halts changes (not
/// remediation) when the pod start success rate falls below 90 % or more than 5 % below the
/// baseline a batch took, two samples in a row.
pub fn demo_policy() -> Policy {
    Policy {
        evaluate_every: Duration::from_secs(2),
        health_rules: vec![firebreak_rate_limiter::HealthRule {
            name: "pod-starts".into(),
            signal: Some(firebreak_schema::Signal::PodStartSuccessRate),
            prometheus: None,
            scope: firebreak_rate_limiter::RuleScope::Cluster,
            min: Some(90.0),
            max: None,
            max_drop_percent: firebreak_rate_limiter::Percent::try_from(5.0).ok(),
            max_rise: None,
            min_pod_starts: 10,
            consecutive: std::num::NonZeroU32::new(2).unwrap_or(std::num::NonZeroU32::MIN),
            for_: Duration::ZERO,
            no_data: firebreak_rate_limiter::NoData::Inconclusive,
            halts: vec![firebreak_schema::Operation::CanaryBatch],
            resume_after: None,
        }],
        ..Policy::default()
    }
}

/// Where a data directory's last run is kept when the demo starts again on it.
pub const PREVIOUS_RUN: &str = "previous-run";

/// Makes `dir` a fresh start: the demo's clusters and Kafka live in memory and are made anew on
/// every start, so workflows, permits and offsets of an earlier run name nodes, boots and
/// records that no longer exist, and resuming them would act on the wrong world. Whatever an
/// earlier run left in `dir` is moved into `dir/previous-run` (replacing the one before), and
/// its path returned so the demo can say so. Files the demo does not make are left alone.
fn fresh_start(dir: &std::path::Path) -> Result<Option<PathBuf>> {
    let io = |what: String| move |source| Error::Io { what, source };
    let earlier: Vec<_> = std::fs::read_dir(dir)
        .map_err(io(format!("read {}", dir.display())))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(demo_made))
        .collect();
    if earlier.is_empty() {
        return Ok(None);
    }
    let keep = dir.join(PREVIOUS_RUN);
    if keep.exists() {
        std::fs::remove_dir_all(&keep).map_err(io(format!("remove {}", keep.display())))?;
    }
    std::fs::create_dir(&keep).map_err(io(format!("create {}", keep.display())))?;
    for path in earlier {
        let to = keep.join(path.file_name().unwrap_or_default());
        std::fs::rename(&path, &to).map_err(io(format!("move {} to {}", path.display(), to.display())))?;
    }
    tracing::info!(kept = %keep.display(), "fresh start: the last run's data moved aside");
    Ok(Some(keep))
}

/// Whether a file name in the data directory is one the demo makes (it moves nothing else).
fn demo_made(name: &str) -> bool {
    name == "clusters" || ["gate.db", "event-center.db", "remediator-"].iter().any(|p| name.starts_with(p))
}

/// `firebreak demo`.
pub async fn run(args: DemoArgs, cancel: CancellationToken) -> Result<()> {
    let mut opts = StackOptions::new(args.data_dir.clone(), args.clusters, args.nodes_per_cluster);
    opts.listen = args.listen.clone();
    opts.gate_listen = args.gate_listen.clone();
    opts.metrics_listen = args.metrics_listen.clone();
    let stack = Stack::start(opts).await?;
    println!("Firebreak demo running. Ctrl-C stops it.");
    if let Some(kept) = &stack.previous_run {
        println!(
            "  fresh start: the clusters are simulated anew on every start, so the last run's workflows, permits and \
             events are not resumed; they are kept in {}",
            kept.display()
        );
    }
    println!("  event center (web UI): {}/", stack.event_center_url);
    println!("  events API:            {}/api/v1/events", stack.event_center_url);
    println!(
        "  gate:                  {} (every route but /healthz and /api/v1/openapi.json needs a token)",
        stack.gate_url
    );
    println!("    operator token:      {}", stack.tokens.operator);
    println!("    viewer token:        {}", stack.tokens.viewer);
    println!(
        "    try:                 FIREBREAK_GATE_TOKEN={} cargo run -- gate status --gate-url {}",
        stack.tokens.operator, stack.gate_url
    );
    println!(
        "  metrics:               {0}/metrics (detectors, remediators), {1}/metrics, {2}/metrics",
        stack.metrics_url, stack.event_center_url, stack.gate_url
    );
    println!("  kafka (mock cluster):  {}", stack.kafka_config.brokers);
    for c in stack.fleet.clusters() {
        println!("  cluster {}: kubectl --kubeconfig {} get nodes", c.name(), c.kubeconfig_path().display());
        c.set_runtime_health(BAD_RUNTIME, false, firebreak_fleet_sim::RuntimeFailure::CrashLoop);
    }
    if let Some(c) = stack.fleet.clusters().first() {
        println!(
            "  runtime version {BAD_RUNTIME} is bad in every cluster: pods started on its nodes crash-loop. Roll it out:"
        );
        println!(
            "    cargo run -- rollout --cluster {} --kubeconfig {} --gate-url {} --token {} \\\n      --set-label {}={BAD_RUNTIME} --batches 1,50%,100% --soak 20s --rollback-on-halt",
            c.name(),
            c.kubeconfig_path().display(),
            stack.gate_url,
            stack.tokens.changes,
            firebreak_fleet_sim::RUNTIME_LABEL
        );
    }
    let deadline = async {
        match args.run_for {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(deadline);
    let mut tick = tokio::time::interval(args.fault_every);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = &mut deadline => break,
            _ = tick.tick() => {
                let pick = {
                    let mut rng = rand::rng();
                    stack.fleet.clusters().choose(&mut rng).and_then(|c| {
                        let nodes = c.node_names();
                        let node = nodes.choose(&mut rng)?.clone();
                        let fault = *Fault::CLEARED_BY_REBOOT.choose(&mut rng)?;
                        Some((c.clone(), node, fault))
                    })
                };
                if let Some((cluster, node, fault)) = pick {
                    match cluster.inject(&node, fault) {
                        Ok(()) => println!("injected {fault:?} into {}/{node}", cluster.name()),
                        Err(error) => tracing::warn!(%error, "fault injection failed"),
                    }
                }
            }
        }
    }
    println!("stopping…");
    stack.shutdown().await;
    Ok(())
}
