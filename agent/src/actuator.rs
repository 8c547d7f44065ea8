//! The node actuator: carries out the remediator's commands on its own node — a reboot, or a
//! restart of an allowed component — and reports on each.
//!
//! Commands come from the command topic ([`NODE_COMMAND_TOPIC`]): a [`Listener`] reads only the
//! partitions its nodes' commands are written to ([`command_partition`]), without a consumer
//! group rebalance among thousands of agents, and hands each command to its node's
//! [`NodeActuator`], one at a time, storing the offset after the command is handled.
//!
//! Nothing acts twice. A reboot is asked for a boot id and carried out only on that boot: read
//! again after the reboot (the agent restarted with the machine), it is reported done, not
//! repeated. Before it acts, the actuator writes the pending reboot to its state directory and
//! confirms (`accepted`); on the next boot — or, in-process, when the boot id changes — it
//! reports `done` with the new boot id, which is how the remediator hears the node's agent again.
//! A handled command's id is kept in the state directory, so a command delivered again is
//! skipped. An expired command (past its `not_after`: the workflow gave up) is refused, as is a
//! restart of a component not in the allowed list.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use chrono::Utc;
use firebreak_plumbing::kafka::{KafkaConfig, Producer, assign, decode_message, next_message};
use firebreak_schema::{
    CloudEvent, CommandOutcome, CommandReport, NODE_COMMAND_TOPIC, NodeAction, NodeCommand, command_partition,
};
use rdkafka::{
    Message,
    consumer::{Consumer, StreamConsumer},
};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::{Error, Result, boot_id};

/// How a command takes effect.
#[derive(Clone)]
pub enum Effect {
    /// Run programs (a real node): the reboot's argv, and the restart's argv in which
    /// `{component}` is replaced by the component.
    Exec {
        /// E.g. `["systemctl", "reboot"]`.
        reboot: Vec<String>,
        /// E.g. `["systemctl", "restart", "{component}"]`.
        restart: Vec<String>,
    },
    /// Call a function with the node and the action (a simulated machine). `Ok` says what was
    /// done, `Err` why it failed.
    Call(Arc<Machine>),
}

/// A simulated machine's side of a command: the node and the action in, what was done (or why
/// it failed) out.
pub type Machine = dyn Fn(&str, &NodeAction) -> std::result::Result<String, String> + Send + Sync;

impl std::fmt::Debug for Effect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Effect::Exec { reboot, restart } => write!(f, "Exec {{ reboot: {reboot:?}, restart: {restart:?} }}"),
            Effect::Call(_) => f.write_str("Call"),
        }
    }
}

impl Effect {
    /// `systemctl reboot` and `systemctl restart {component}`.
    pub fn systemd() -> Self {
        let argv = |s: &str| s.split_whitespace().map(str::to_owned).collect();
        Effect::Exec { reboot: argv("systemctl reboot"), restart: argv("systemctl restart {component}") }
    }

    async fn apply(&self, node: &str, action: &NodeAction, timeout: Duration) -> std::result::Result<String, String> {
        let argv: Vec<String> = match (self, action) {
            (Effect::Call(f), _) => return f(node, action),
            (Effect::Exec { reboot, .. }, NodeAction::Reboot) => reboot.clone(),
            (Effect::Exec { restart, .. }, NodeAction::Restart { component }) => {
                restart.iter().map(|a| a.replace("{component}", component)).collect()
            }
            (Effect::Exec { .. }, NodeAction::Report) => return Ok("nothing to do".into()),
        };
        let Some((program, args)) = argv.split_first() else { return Err("no command is configured".into()) };
        let run = tokio::process::Command::new(program).args(args).kill_on_drop(true).output();
        let shown = argv.join(" ");
        match tokio::time::timeout(timeout, run).await {
            Err(_) => Err(format!("`{shown}` did not finish within {}s", timeout.as_secs())),
            Ok(Err(e)) => Err(format!("`{shown}` could not run: {e}")),
            Ok(Ok(out)) => {
                let text = String::from_utf8_lossy(if out.stderr.is_empty() { &out.stdout } else { &out.stderr });
                let tail: String = text.trim().chars().rev().take(300).collect::<Vec<_>>().into_iter().rev().collect();
                if out.status.success() {
                    Ok(format!(
                        "`{shown}` succeeded{}",
                        if tail.is_empty() { String::new() } else { format!(": {tail}") }
                    ))
                } else {
                    Err(format!("`{shown}` failed ({}): {tail}", out.status))
                }
            }
        }
    }
}

/// How the actuator of a node works.
#[derive(Debug, Clone)]
pub struct ActuatorConfig {
    /// How commands take effect.
    pub effect: Effect,
    /// Components a restart may name.
    pub restartable: Vec<String>,
    /// Longest a command may run.
    pub timeout: Duration,
}

/// The reboot a node was asked for and has not yet come back from.
#[derive(Debug, Serialize, Deserialize)]
struct Pending {
    command: NodeCommand,
}

/// The actuator of one node.
pub struct NodeActuator {
    cluster: String,
    node: String,
    host_root: PathBuf,
    state_dir: PathBuf,
    cfg: ActuatorConfig,
    producer: Producer,
}

/// How many handled command ids are remembered.
const HANDLED_KEPT: usize = 256;

impl NodeActuator {
    /// The actuator of `node`, its boot id read under `host_root`, its state kept in `state_dir`.
    pub fn new(
        cluster: &str,
        node: &str,
        host_root: &Path,
        state_dir: &Path,
        cfg: ActuatorConfig,
        producer: Producer,
    ) -> Self {
        Self {
            cluster: cluster.into(),
            node: node.into(),
            host_root: host_root.into(),
            state_dir: state_dir.into(),
            cfg,
            producer,
        }
    }

    /// The node this actuator acts on.
    pub fn node(&self) -> &str {
        &self.node
    }

    fn key(&self) -> String {
        format!("{}/{}", self.cluster, self.node)
    }

    fn io(&self, path: PathBuf) -> impl FnOnce(std::io::Error) -> Error {
        move |source| Error::Io { path, source }
    }

    fn handled(&self) -> Vec<uuid::Uuid> {
        std::fs::read(self.state_dir.join("handled.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    /// Writes `bytes` to `name` in the state directory, atomically (a temporary file renamed).
    fn write_state(&self, name: &str, bytes: &[u8]) -> Result<()> {
        std::fs::create_dir_all(&self.state_dir).map_err(self.io(self.state_dir.clone()))?;
        let path = self.state_dir.join(name);
        crate::replace_file(&path, bytes, false).map_err(self.io(path))
    }

    fn remember(&self, id: uuid::Uuid) -> Result<()> {
        let mut ids = self.handled();
        ids.push(id);
        let drop = ids.len().saturating_sub(HANDLED_KEPT);
        ids.drain(..drop);
        let bytes = serde_json::to_vec(&ids).unwrap_or_default();
        self.write_state("handled.json", &bytes)
    }

    async fn report(&self, cmd: &NodeCommand, outcome: CommandOutcome, detail: String, cancel: &CancellationToken) {
        let boot_id = boot_id(&self.host_root);
        let report = CommandReport {
            command_id: cmd.id,
            cluster: self.cluster.clone(),
            node: self.node.clone(),
            workflow_id: cmd.workflow_id,
            action: cmd.action.clone(),
            outcome,
            boot_id,
            detail,
            at: Utc::now(),
        };
        tracing::info!(command = %cmd.id, workflow_id = %cmd.workflow_id, action = %cmd.action, outcome = outcome.as_str(), detail = %report.detail, "command report");
        self.producer.publish_until_delivered(&firebreak_schema::report_topic(&report.cluster), &report, cancel).await;
    }

    /// Handles one command of this node: reports on it, and acts at most once.
    pub async fn handle(&self, cmd: &NodeCommand, cancel: &CancellationToken) -> Result<()> {
        if self.handled().contains(&cmd.id) {
            tracing::info!(command = %cmd.id, "command handled before; skipped");
            return Ok(());
        }
        let boot = boot_id(&self.host_root);
        if Utc::now() > cmd.not_after {
            let why = format!("expired: asked at {}, not to be carried out after {}", cmd.requested_at, cmd.not_after);
            self.report(cmd, CommandOutcome::Refused, why, cancel).await;
            return self.remember(cmd.id);
        }
        match &cmd.action {
            NodeAction::Reboot if !boot.is_empty() && boot != cmd.boot_id => {
                let done =
                    format!("the node already runs boot {boot}, not boot {} the reboot was asked on", cmd.boot_id);
                self.report(cmd, CommandOutcome::Done, done, cancel).await;
                return self.remember(cmd.id);
            }
            NodeAction::Reboot => {
                // Written before acting: the next boot reports the reboot done.
                let pending = serde_json::to_vec(&Pending { command: cmd.clone() }).unwrap_or_default();
                self.write_state("pending-reboot.json", &pending)?;
            }
            NodeAction::Restart { component } if !self.cfg.restartable.contains(component) => {
                let why = format!(
                    "{component} may not be restarted on this node (allowed: {})",
                    self.cfg.restartable.join(", ")
                );
                self.report(cmd, CommandOutcome::Refused, why, cancel).await;
                return self.remember(cmd.id);
            }
            NodeAction::Restart { .. } => {}
            NodeAction::Report => {
                self.report(cmd, CommandOutcome::Done, format!("the agent runs on boot {boot}"), cancel).await;
                return self.remember(cmd.id);
            }
        }
        self.report(cmd, CommandOutcome::Accepted, format!("{} on boot {boot}", cmd.action), cancel).await;
        let result = self.cfg.effect.apply(&self.node, &cmd.action, self.cfg.timeout).await;
        match (&cmd.action, result) {
            (_, Err(why)) => {
                let _ = std::fs::remove_file(self.state_dir.join("pending-reboot.json"));
                self.report(cmd, CommandOutcome::Failed, why, cancel).await;
            }
            // Done once the node runs a new boot (`confirm_reboot`).
            (NodeAction::Reboot, Ok(what)) => tracing::info!(what, "reboot under way"),
            (NodeAction::Restart { .. } | NodeAction::Report, Ok(what)) => {
                self.report(cmd, CommandOutcome::Done, what, cancel).await
            }
        }
        self.remember(cmd.id)
    }

    /// Reports a pending reboot done once the node runs another boot. Called when the agent
    /// starts and whenever it sees the boot id change.
    pub async fn confirm_reboot(&self, cancel: &CancellationToken) -> Result<()> {
        let path = self.state_dir.join("pending-reboot.json");
        let Ok(bytes) = std::fs::read(&path) else { return Ok(()) };
        let boot = boot_id(&self.host_root);
        let pending: Pending = match serde_json::from_slice(&bytes) {
            Ok(p) => p,
            Err(error) => {
                tracing::warn!(%error, "unreadable pending reboot dropped");
                return std::fs::remove_file(&path).map_err(self.io(path));
            }
        };
        if boot.is_empty() || boot == pending.command.boot_id {
            return Ok(());
        }
        let done = format!("rebooted: boot {} -> {boot}", pending.command.boot_id);
        self.report(&pending.command, CommandOutcome::Done, done, cancel).await;
        std::fs::remove_file(&path).map_err(self.io(path))
    }
}

/// Reads the command topic for a set of nodes and hands each command to its node's actuator.
pub struct Listener {
    actuators: HashMap<String, Arc<NodeActuator>>,
}

impl Listener {
    /// A listener for these nodes' actuators.
    pub fn new(actuators: impl IntoIterator<Item = Arc<NodeActuator>>) -> Self {
        Self { actuators: actuators.into_iter().map(|a| (a.key(), a)).collect() }
    }

    /// Runs until cancelled. `group` keeps the position read (a node's own group on a real node);
    /// with none committed yet, reading starts at the topic's end.
    pub async fn run(
        self,
        kafka: &KafkaConfig,
        group: &str,
        producer: &Producer,
        cancel: CancellationToken,
    ) -> Result<()> {
        let span = tracing::info_span!("actuator", nodes = self.actuators.len());
        self.run_inner(kafka, group, producer, cancel).instrument(span).await
    }

    async fn run_inner(
        self,
        kafka: &KafkaConfig,
        group: &str,
        producer: &Producer,
        cancel: CancellationToken,
    ) -> Result<()> {
        let Some(partitions) = producer.partitions_when_known(NODE_COMMAND_TOPIC, &cancel).await else {
            return Ok(());
        };
        let mut mine: Vec<i32> = self.actuators.keys().map(|k| command_partition(k, partitions)).collect();
        mine.sort_unstable();
        mine.dedup();
        // A command may wait for the next fetch (on a broker that parks fetches, as librdkafka's
        // mock does): a second is nothing beside a reboot, and an idle agent asks its brokers
        // once a second rather than twenty times (the consumers' 50 ms default).
        let consumer: StreamConsumer = kafka
            .consumer_with(group, &[("fetch.wait.max.ms", "1000")])
            .set("auto.offset.reset", "latest")
            .create()
            .map_err(firebreak_plumbing::Error::from)?;
        assign(&consumer, NODE_COMMAND_TOPIC, &mine)?;
        tracing::info!(partitions = ?mine, of = partitions, "reading node commands");
        loop {
            let msg = tokio::select! {
                _ = cancel.cancelled() => break,
                m = next_message(&consumer) => m,
            };
            let key = msg.key().map(String::from_utf8_lossy).unwrap_or_default();
            if let Some(actuator) = self.actuators.get(key.as_ref()) {
                match decode_message::<NodeCommand>(&msg) {
                    Err(error) => tracing::warn!(%error, offset = msg.offset(), %key, "undecodable command skipped"),
                    Ok(cmd) if cmd.key() != key => {
                        tracing::warn!(command = %cmd.id, %key, "command for another node under this key skipped")
                    }
                    Ok(cmd) => {
                        let span = tracing::info_span!("command", cluster = %cmd.cluster, node = %cmd.node, workflow_id = %cmd.workflow_id);
                        if let Err(error) = actuator.handle(&cmd, &cancel).instrument(span).await {
                            tracing::warn!(%error, command = %cmd.id, "command handling failed");
                        }
                    }
                }
            }
            if let Err(error) = consumer.store_offset_from_message(&msg) {
                tracing::warn!(%error, "could not store offset");
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    struct Node {
        _tmp: tempfile::TempDir,
        root: PathBuf,
        acted: Arc<Mutex<Vec<String>>>,
        actuator: NodeActuator,
    }

    fn node(restartable: &[&str], effect: Option<Effect>) -> Node {
        let tmp = tempfile::Builder::new().prefix("fb-act-").tempdir().unwrap();
        let root = tmp.path().to_owned();
        std::fs::create_dir_all(root.join("proc/sys/kernel/random")).unwrap();
        std::fs::write(root.join("proc/sys/kernel/random/boot_id"), "boot-1\n").unwrap();
        let acted = Arc::new(Mutex::new(Vec::new()));
        let log = acted.clone();
        let effect = effect.unwrap_or_else(|| {
            Effect::Call(Arc::new(move |_: &str, a: &NodeAction| {
                log.lock().unwrap().push(a.to_string());
                Ok(format!("{a} done"))
            }))
        });
        // Nothing listens there: reports stay queued, which these tests do not read.
        let producer = Producer::new(&KafkaConfig::new("127.0.0.1:1")).unwrap();
        let cfg = ActuatorConfig {
            effect,
            restartable: restartable.iter().map(|s| s.to_string()).collect(),
            timeout: Duration::from_secs(2),
        };
        let actuator = NodeActuator::new("c1", "n1", &root, &root.join("state"), cfg, producer);
        Node { _tmp: tmp, root, acted, actuator }
    }

    fn command(action: NodeAction, boot: &str, ttl_s: i64) -> NodeCommand {
        NodeCommand {
            id: uuid::Uuid::now_v7(),
            cluster: "c1".into(),
            node: "n1".into(),
            workflow_id: uuid::Uuid::now_v7(),
            action,
            boot_id: boot.into(),
            requested_at: Utc::now(),
            not_after: Utc::now() + chrono::TimeDelta::seconds(ttl_s),
        }
    }

    /// `handle` with reports that cannot be delivered: cancelled after a moment, so that
    /// `publish_until_delivered` gives up.
    async fn handle(n: &Node, cmd: &NodeCommand) {
        let cancel = CancellationToken::new();
        let c = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            c.cancel();
        });
        n.actuator.handle(cmd, &cancel).await.unwrap();
    }

    #[tokio::test]
    async fn a_reboot_happens_once_per_boot_and_a_command_once() {
        let n = node(&[], None);
        let reboot = command(NodeAction::Reboot, "boot-1", 60);
        handle(&n, &reboot).await;
        assert_eq!(*n.acted.lock().unwrap(), ["reboot"]);
        assert!(n.root.join("state/pending-reboot.json").exists(), "pending until the next boot");
        handle(&n, &reboot).await;
        assert_eq!(n.acted.lock().unwrap().len(), 1, "delivered again, skipped");
        // The machine rebooted: a new boot id. The same request, asked for the old boot, is done.
        std::fs::write(n.root.join("proc/sys/kernel/random/boot_id"), "boot-2\n").unwrap();
        let again = NodeCommand { id: uuid::Uuid::now_v7(), ..reboot.clone() };
        handle(&n, &again).await;
        assert_eq!(n.acted.lock().unwrap().len(), 1, "never a second reboot for one boot");
        let cancel = CancellationToken::new();
        cancel.cancel();
        n.actuator.confirm_reboot(&cancel).await.unwrap();
        assert!(!n.root.join("state/pending-reboot.json").exists(), "reported done on the new boot");
    }

    #[tokio::test]
    async fn expired_and_disallowed_commands_are_refused_and_failures_reported() {
        let n = node(&["kubelet"], None);
        handle(&n, &command(NodeAction::Reboot, "boot-1", -1)).await;
        handle(&n, &command(NodeAction::Restart { component: "sshd".into() }, "boot-1", 60)).await;
        assert!(n.acted.lock().unwrap().is_empty(), "nothing done");
        handle(&n, &command(NodeAction::Restart { component: "kubelet".into() }, "boot-1", 60)).await;
        assert_eq!(*n.acted.lock().unwrap(), ["restart kubelet"]);
        // A report command is answered, never acted on.
        handle(&n, &command(NodeAction::Report, "boot-1", 60)).await;
        assert_eq!(*n.acted.lock().unwrap(), ["restart kubelet"]);

        // A real program: its failure and its timeout are failures, with what it said.
        let exec = |reboot: &[&str]| Effect::Exec {
            reboot: reboot.iter().map(|s| s.to_string()).collect(),
            restart: vec!["true".into()],
        };
        let out = exec(&["sh", "-c", "exit 3"]).apply("n1", &NodeAction::Reboot, Duration::from_secs(5)).await;
        assert!(matches!(&out, Err(m) if m.contains("exit status: 3")), "{out:?}");
        let out = exec(&["sleep", "5"]).apply("n1", &NodeAction::Reboot, Duration::from_millis(100)).await;
        assert!(matches!(&out, Err(m) if m.contains("did not finish within")), "{out:?}");
        let out = exec(&["no-such-program-here"]).apply("n1", &NodeAction::Reboot, Duration::from_secs(5)).await;
        assert!(matches!(&out, Err(m) if m.contains("could not run")), "{out:?}");
        let restart = Effect::Exec { reboot: vec![], restart: vec!["echo".into(), "restarted {component}".into()] };
        let out =
            restart.apply("n1", &NodeAction::Restart { component: "kubelet".into() }, Duration::from_secs(5)).await;
        assert_eq!(out.unwrap(), "`echo restarted kubelet` succeeded: restarted kubelet");
        // A failed reboot leaves nothing pending.
        let n = node(&[], Some(exec(&["false"])));
        handle(&n, &command(NodeAction::Reboot, "boot-1", 60)).await;
        assert!(!n.root.join("state/pending-reboot.json").exists());
    }

    #[tokio::test]
    async fn corrupt_state_files_are_survived_not_obeyed() {
        let n = node(&["kubelet"], None);
        let state = n.root.join("state");
        std::fs::create_dir_all(&state).unwrap();
        // A pending reboot that is not one: dropped, nothing reported as done.
        std::fs::write(state.join("pending-reboot.json"), b"\xff{not json").unwrap();
        let cancel = CancellationToken::new();
        cancel.cancel();
        n.actuator.confirm_reboot(&cancel).await.unwrap();
        assert!(!state.join("pending-reboot.json").exists());
        // A garbled list of handled commands reads as none: the next command is still carried out
        // once, and remembered again.
        std::fs::write(state.join("handled.json"), b"[\"oops\"").unwrap();
        let restart = command(NodeAction::Restart { component: "kubelet".into() }, "boot-1", 60);
        handle(&n, &restart).await;
        handle(&n, &restart).await;
        assert_eq!(*n.acted.lock().unwrap(), ["restart kubelet"]);
    }
}
