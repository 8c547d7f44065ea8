//! The kubelets and the node lifecycle controller of a simulated cluster: node status and
//! leases, NotReady after silence, reboots (asked for through [`Cluster::reboot`], as a node's
//! actuator does), graceful termination and the start of scheduled pods.

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::{
    At, Result,
    cluster::{Cluster, State},
    faults::Fault,
    fmt_micro_time,
    resources::{EVENTS, LEASES, NODES, PODS},
    str_at, time_now_rfc3339,
};

/// The node label that stands for the node's software version.
pub const RUNTIME_LABEL: &str = "sim.firebreak.io/runtime";
/// The version every simulated node starts with.
pub const INITIAL_RUNTIME: &str = "v1";

/// How pods fail on a node whose runtime version is unhealthy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RuntimeFailure {
    /// The container exits at once and is restarted with back-off: `CrashLoopBackOff`, rising
    /// `restartCount`, never Ready.
    #[default]
    CrashLoop,
    /// The container runs but never passes its readiness probe.
    NeverReady,
}

pub(crate) const NOT_READY_TAINT: &str = "node.kubernetes.io/not-ready";
const UNREACHABLE_TAINT: &str = "node.kubernetes.io/unreachable";

/// What the kubelet of one node knows: its boot, its kernel log, whether it is alive.
pub(crate) struct NodeSim {
    pub(crate) host_root: std::path::PathBuf,
    /// Next kernel log sequence number.
    pub(crate) seq: u64,
    pub(crate) boot_id: String,
    /// Boot time, seconds since the epoch (as `btime` in `/proc/stat`).
    pub(crate) btime: i64,
    pub(crate) heartbeating: bool,
    last_heartbeat: Instant,
    reboot_done_at: Option<Instant>,
    /// A reboot was asked for and has not started.
    pub(crate) reboot_asked: bool,
    /// Faults a reboot does not clear: logged again at every boot.
    pub(crate) persistent: Vec<Fault>,
    /// The boot the kubelet last found its Node Ready with and up to date: until its next
    /// Lease renewal the tick has nothing to do for it.
    settled_boot: Option<String>,
}

impl NodeSim {
    /// A node not yet booted.
    pub(crate) fn new(host_root: std::path::PathBuf) -> Self {
        Self {
            host_root,
            seq: 0,
            boot_id: String::new(),
            btime: 0,
            heartbeating: true,
            last_heartbeat: Instant::now(),
            reboot_done_at: None,
            reboot_asked: false,
            persistent: Vec::new(),
            settled_boot: None,
        }
    }
}

impl Cluster {
    pub(crate) fn tick_node(&self, st: &mut State, name: &str, now: Instant) -> Result<()> {
        // A settled kubelet between two renewals: no lookup, no write.
        if let Some(sim) = st.nodes.get(name)
            && sim.heartbeating
            && !sim.reboot_asked
            && sim.reboot_done_at.is_none()
            && sim.settled_boot.as_deref() == Some(sim.boot_id.as_str())
            && now.duration_since(sim.last_heartbeat) < self.timings.heartbeat
        {
            return Ok(());
        }
        let Some(node) = st.store.get_ref(&NODES, "", name) else { return Ok(()) };
        let Some(sim) = st.nodes.get_mut(name) else { return Ok(()) };
        let ready = ready_status(node).to_owned();
        if sim.reboot_asked && sim.reboot_done_at.is_none() {
            tracing::info!(cluster = %self.name, node = name, "rebooting");
            sim.reboot_asked = false;
            sim.reboot_done_at = Some(now + self.timings.reboot);
            sim.boot()?;
            let mut n = node.clone();
            set_condition(&mut n, "Ready", "False", "KubeletNotReady", "node is rebooting");
            set_taint(&mut n, NOT_READY_TAINT, true);
            set_taint(&mut n, UNREACHABLE_TAINT, false);
            st.store.replace(&NODES, n)?;
            return Ok(());
        }
        if let Some(done) = sim.reboot_done_at {
            if now < done {
                return Ok(());
            }
            sim.reboot_done_at = None;
            sim.heartbeating = true;
            sim.last_heartbeat = now - self.timings.heartbeat;
        }
        if sim.heartbeating {
            // Like a kubelet with node leases: the lease is renewed every period, the Node
            // object is written only when its status changes.
            let boot_id = sim.boot_id.clone();
            let stale_boot = node.at("/status/nodeInfo/bootID").and_then(Value::as_str) != Some(boot_id.as_str());
            if ready != "True" || stale_boot {
                let mut n = node.clone();
                set_condition(&mut n, "Ready", "True", "KubeletReady", "kubelet is posting ready status");
                set_taint(&mut n, NOT_READY_TAINT, false);
                set_taint(&mut n, UNREACHABLE_TAINT, false);
                if let Some(info) = n.pointer_mut("/status/nodeInfo").and_then(Value::as_object_mut) {
                    info.insert("bootID".into(), json!(boot_id));
                }
                st.store.replace(&NODES, n)?;
            }
            if now.duration_since(sim.last_heartbeat) >= self.timings.heartbeat {
                sim.last_heartbeat = now;
                if let Some(mut lease) = st.store.get(&LEASES, "kube-node-lease", name) {
                    lease["spec"]["renewTime"] = json!(fmt_micro_time(Utc::now()));
                    st.store.replace(&LEASES, lease)?;
                }
            }
            sim.settled_boot = Some(boot_id);
            return Ok(());
        }
        sim.settled_boot = None;
        if now.duration_since(sim.last_heartbeat) >= self.timings.unreachable_after && ready == "True" {
            let mut n = node.clone();
            set_condition(&mut n, "Ready", "Unknown", "NodeStatusUnknown", "Kubelet stopped posting node status.");
            set_taint(&mut n, UNREACHABLE_TAINT, true);
            st.store.replace(&NODES, n)?;
            st.store.create(&EVENTS, node_event(name, "NodeNotReady", "Node is not ready"))?;
        }
        Ok(())
    }

    /// Kubelets: finish terminations whose grace period is over, start scheduled pods once
    /// their node is up.
    pub(crate) fn tick_kubelet_pods(&self, st: &mut State, now: Instant) -> Result<()> {
        let wall = Utc::now();
        let key = |p: &Value| (str_at(p, "/metadata/namespace"), str_at(p, "/metadata/name"));
        // Kubelets: finish terminations whose grace period is over.
        let due: Vec<(String, String)> = st
            .store
            .iter(&PODS, None)
            .filter(|p| {
                p.at("/metadata/deletionTimestamp")
                    .and_then(Value::as_str)
                    .is_some_and(|ts| DateTime::parse_from_rfc3339(ts).map_or(true, |t| t <= wall))
            })
            .map(key)
            .collect();
        for (ns, name) in due {
            st.store.remove(&PODS, &ns, &name)?;
            st.crashing.remove(&(ns.clone(), name.clone()));
            st.pending_ready.remove(&(ns, name));
        }
        // Kubelets: start scheduled pods once their node is up.
        let starting: Vec<(String, String)> = st
            .pending_ready
            .iter()
            .filter(|(_, since)| now.duration_since(**since) >= self.timings.pod_start)
            .map(|(k, _)| k.clone())
            .collect();
        for k in starting {
            let Some(pod) = st.store.get_ref(&PODS, &k.0, &k.1) else {
                st.pending_ready.remove(&k);
                continue;
            };
            if pod.at("/metadata/deletionTimestamp").is_some() {
                st.pending_ready.remove(&k);
                continue;
            }
            let node = str_at(pod, "/spec/nodeName");
            let Some(n) = st.store.get_ref(&NODES, "", &node).filter(|n| ready_status(n) == "True") else {
                continue;
            };
            let failure = st
                .bad_runtimes
                .get(&str_at(n, &format!("/metadata/labels/{}", RUNTIME_LABEL.replace('/', "~1"))))
                .copied();
            let mut p = pod.clone();
            let started = time_now_rfc3339();
            if let Some(failure) = failure {
                p["status"] = failing_status(&p, &started, failure, 0);
                st.store.replace(&PODS, p)?;
                st.pending_ready.remove(&k);
                if failure == RuntimeFailure::CrashLoop {
                    st.crashing.insert(k, (now + self.timings.crash_backoff, 0));
                }
                continue;
            }
            p["status"] = json!({"phase": "Running", "startTime": started,
                "podIP": format!("10.244.{}.{}", rand::random::<u8>(), rand::random::<u8>()),
                "conditions": [{"type": "PodScheduled", "status": "True"},
                    {"type": "Initialized", "status": "True"},
                    {"type": "ContainersReady", "status": "True", "lastTransitionTime": started},
                    {"type": "Ready", "status": "True", "lastTransitionTime": started}],
                "containerStatuses": [{"name": p.at("/spec/containers/0/name").cloned().unwrap_or(json!("main")),
                    "ready": true, "started": true, "restartCount": 0,
                    "image": p.at("/spec/containers/0/image").cloned().unwrap_or(json!("")),
                    "state": {"running": {"startedAt": started}}}]});
            st.store.replace(&PODS, p)?;
            st.pending_ready.remove(&k);
        }
        // Crash-looping containers restart with back-off.
        let due: Vec<((String, String), u32)> =
            st.crashing.iter().filter(|(_, (at, _))| *at <= now).map(|(k, (_, n))| (k.clone(), *n)).collect();
        for (k, restarts) in due {
            let Some(pod) =
                st.store.get_ref(&PODS, &k.0, &k.1).filter(|p| p.at("/metadata/deletionTimestamp").is_none())
            else {
                st.crashing.remove(&k);
                continue;
            };
            let mut p = pod.clone();
            let started = str_at(&p, "/status/startTime");
            p["status"] = failing_status(&p, &started, RuntimeFailure::CrashLoop, restarts + 1);
            st.store.replace(&PODS, p)?;
            // Back-off doubles, as the kubelet's does (capped here at 8 periods).
            let backoff = self.timings.crash_backoff * 2u32.pow((restarts + 1).min(3));
            st.crashing.insert(k, (now + backoff, restarts + 1));
        }
        Ok(())
    }
}

/// The status of a pod whose containers fail on a bad runtime: Running, not Ready.
fn failing_status(pod: &Value, started: &str, failure: RuntimeFailure, restarts: u32) -> Value {
    let name = pod.at("/spec/containers/0/name").cloned().unwrap_or(json!("main"));
    let image = pod.at("/spec/containers/0/image").cloned().unwrap_or(json!(""));
    let (state, reason) = match failure {
        RuntimeFailure::CrashLoop => (
            json!({"waiting": {"reason": "CrashLoopBackOff",
                "message": format!("back-off restarting failed container {name} in pod {}", str_at(pod, "/metadata/name"))}}),
            "ContainersNotReady",
        ),
        RuntimeFailure::NeverReady => (json!({"running": {"startedAt": started}}), "ContainersNotReady"),
    };
    let last = match failure {
        RuntimeFailure::CrashLoop if restarts > 0 => {
            json!({"terminated": {"exitCode": 139, "reason": "Error", "finishedAt": time_now_rfc3339()}})
        }
        _ => json!({}),
    };
    json!({"phase": "Running", "startTime": started,
        "podIP": format!("10.244.{}.{}", rand::random::<u8>(), rand::random::<u8>()),
        "conditions": [{"type": "PodScheduled", "status": "True"},
            {"type": "Initialized", "status": "True"},
            {"type": "ContainersReady", "status": "False", "reason": reason},
            {"type": "Ready", "status": "False", "reason": reason}],
        "containerStatuses": [{"name": name, "ready": false, "started": failure == RuntimeFailure::NeverReady,
            "restartCount": restarts, "image": image, "state": state, "lastState": last}]})
}

/// A core Event about a node, named like the kubelet names them.
fn node_event(node: &str, reason: &str, message: &str) -> Value {
    let now = time_now_rfc3339();
    json!({"metadata": {"name": format!("{node}.{}", uuid::Uuid::new_v4().simple()), "namespace": "default"},
        "involvedObject": {"kind": "Node", "name": node, "apiVersion": "v1"},
        "reason": reason, "message": message, "type": "Warning", "count": 1,
        "firstTimestamp": now, "lastTimestamp": now, "source": {"component": "node-controller"}})
}

pub(crate) fn ready_status(node: &Value) -> &str {
    node.at("/status/conditions")
        .and_then(Value::as_array)
        .and_then(|c| c.iter().find(|c| c["type"] == "Ready"))
        .and_then(|c| c["status"].as_str())
        .unwrap_or_default()
}

pub(crate) fn cond(ty: &str, status: &str, reason: &str, message: &str) -> Value {
    let now = time_now_rfc3339();
    json!({"type": ty, "status": status, "reason": reason, "message": message,
        "lastHeartbeatTime": now, "lastTransitionTime": now})
}

pub(crate) fn set_condition(node: &mut Value, ty: &str, status: &str, reason: &str, message: &str) {
    let Some(conds) = node.pointer_mut("/status/conditions").and_then(Value::as_array_mut) else { return };
    match conds.iter_mut().find(|c| c["type"] == ty) {
        Some(c) if c["status"] == status => {
            c["reason"] = json!(reason);
            c["message"] = json!(message);
        }
        Some(c) => *c = cond(ty, status, reason, message),
        None => conds.push(cond(ty, status, reason, message)),
    }
}

pub(crate) fn set_taint(node: &mut Value, key: &str, present: bool) {
    let Some(spec) = node.get_mut("spec").and_then(Value::as_object_mut) else { return };
    let taints = spec.entry("taints").or_insert_with(|| json!([]));
    let Some(list) = taints.as_array_mut() else { return };
    list.retain(|t| t["key"] != key);
    if present {
        let mut t = json!({"key": key, "effect": "NoSchedule"});
        if key == UNREACHABLE_TAINT {
            t["timeAdded"] = json!(time_now_rfc3339());
        }
        list.push(t);
    }
    if list.is_empty() {
        spec.remove("taints");
    }
}
