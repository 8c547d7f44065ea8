//! Pod start accounting: of the pods created in a sliding window, which reached Running and
//! Ready within the deadline, which failed to start (and why), which timed out; and which pods
//! are pending unschedulable now. Fed by a `kube` watch of every pod of the cluster.
//!
//! A pod start counts in the failure domains its node had when the start was decided (Ready or
//! failed), not the node's labels at measuring time: when a change relabels a batch of nodes (a
//! new runtime version), the pods that started before the change stay evidence about the old
//! version, and the batch's domain holds only the starts that happened under the new one.

use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::{DateTime, TimeDelta, Utc};
use firebreak_schema::PodStarts;
use k8s_openapi::api::core::v1::Pod;

/// Container waiting reasons that mean the pod failed to start.
const FAILED_WAITING: [&str; 7] = [
    "CrashLoopBackOff",
    "ImagePullBackOff",
    "ErrImagePull",
    "CreateContainerConfigError",
    "CreateContainerError",
    "RunContainerError",
    "InvalidImageName",
];

#[derive(Debug, Clone)]
struct Start {
    created: DateTime<Utc>,
    node: Option<String>,
    /// The node's failure domains (`label=value`) when the start was decided.
    domains: Option<Vec<String>>,
    ready_at: Option<DateTime<Utc>>,
    failed: Option<String>,
    /// Deleted before it was decided: counts for nothing.
    gone: bool,
}

/// The pods created in the window, and the pods pending unschedulable.
#[derive(Debug)]
pub(crate) struct PodStartTracker {
    window: TimeDelta,
    deadline: TimeDelta,
    starts: HashMap<String, Start>,
    unschedulable: HashSet<String>,
}

impl PodStartTracker {
    pub(crate) fn new(window: std::time::Duration, deadline: std::time::Duration) -> Self {
        Self {
            window: TimeDelta::from_std(window).unwrap_or(TimeDelta::minutes(5)),
            deadline: TimeDelta::from_std(deadline).unwrap_or(TimeDelta::minutes(2)),
            starts: HashMap::new(),
            unschedulable: HashSet::new(),
        }
    }

    /// A pod as the watch delivered it (created or changed), at `now`; `domains` are its node's
    /// failure domains now, if the node is known.
    pub(crate) fn apply(&mut self, pod: &Pod, now: DateTime<Utc>, domains: Option<Vec<String>>) {
        let Some(key) = key(pod) else { return };
        let status = pod.status.as_ref();
        let conditions = status.and_then(|s| s.conditions.as_deref()).unwrap_or_default();
        let unschedulable = conditions
            .iter()
            .any(|c| c.type_ == "PodScheduled" && c.status == "False" && c.reason.as_deref() == Some("Unschedulable"));
        if unschedulable && pod.metadata.deletion_timestamp.is_none() {
            self.unschedulable.insert(key.clone());
        } else {
            self.unschedulable.remove(&key);
        }
        let Some(created) = pod.metadata.creation_timestamp.as_ref().and_then(|t| to_chrono(&t.0)) else { return };
        if created < now - self.window {
            return;
        }
        let s = self.starts.entry(key).or_insert(Start {
            created,
            node: None,
            domains: None,
            ready_at: None,
            failed: None,
            gone: false,
        });
        if let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.clone()).filter(|n| !n.is_empty()) {
            s.node = Some(node);
            // Until the start is decided, the node's domains now; then they stay.
            if s.ready_at.is_none() && s.failed.is_none() && domains.is_some() {
                s.domains = domains;
            }
        }
        if s.ready_at.is_none()
            && let Some(c) = conditions.iter().find(|c| c.type_ == "Ready" && c.status == "True")
        {
            s.ready_at = Some(c.last_transition_time.as_ref().and_then(|t| to_chrono(&t.0)).unwrap_or(now));
        }
        if s.ready_at.is_none() && s.failed.is_none() {
            s.failed = failure(pod);
        }
    }

    /// A pod deleted: if it was not decided yet, it counts for nothing.
    pub(crate) fn delete(&mut self, pod: &Pod) {
        let Some(key) = key(pod) else { return };
        self.unschedulable.remove(&key);
        if let Some(s) = self.starts.get_mut(&key)
            && s.ready_at.is_none()
            && s.failed.is_none()
        {
            s.gone = true;
        }
    }

    /// Forgets pods created before the window; counts the rest, in the cluster and per failure
    /// domain (`label=value`: those the pod started in, else `domains_of` its node now).
    pub(crate) fn measure(
        &mut self,
        now: DateTime<Utc>,
        domains_of: impl Fn(&str) -> Vec<String>,
    ) -> (PodStarts, BTreeMap<String, PodStarts>, u32) {
        let since = now - self.window;
        self.starts.retain(|_, s| s.created >= since);
        let mut all = PodStarts::default();
        let mut by_domain: BTreeMap<String, PodStarts> = BTreeMap::new();
        for s in self.starts.values() {
            let count = |p: &mut PodStarts| match (&s.ready_at, &s.failed) {
                (Some(r), _) if *r - s.created <= self.deadline => p.started += 1,
                (_, Some(reason)) => {
                    p.failed += 1;
                    *p.reasons.entry(reason.clone()).or_default() += 1;
                }
                _ if s.gone => {}
                _ if now - s.created > self.deadline => {
                    p.timed_out += 1;
                    *p.reasons.entry("NotReadyInTime".into()).or_default() += 1;
                }
                _ => p.pending += 1,
            };
            count(&mut all);
            let now_of_node;
            let domains: &[String] = match (&s.domains, &s.node) {
                (Some(d), _) => d,
                (None, Some(node)) => {
                    now_of_node = domains_of(node);
                    &now_of_node
                }
                (None, None) => &[],
            };
            for d in domains {
                match by_domain.get_mut(d) {
                    Some(p) => count(p),
                    None => count(by_domain.entry(d.clone()).or_default()),
                }
            }
        }
        (all, by_domain, self.unschedulable.len() as u32)
    }
}

fn key(pod: &Pod) -> Option<String> {
    pod.metadata.uid.clone().or_else(|| {
        Some(format!("{}/{}", pod.metadata.namespace.as_deref().unwrap_or_default(), pod.metadata.name.as_deref()?))
    })
}

fn to_chrono(t: &k8s_openapi::jiff::Timestamp) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(t.as_second(), t.subsec_nanosecond().max(0) as u32)
}

/// Why a pod failed to start, if it did: `Failed` phase, or a container waiting for a reason
/// that means failure.
fn failure(pod: &Pod) -> Option<String> {
    let status = pod.status.as_ref()?;
    if status.phase.as_deref() == Some("Failed") {
        return Some(status.reason.clone().unwrap_or_else(|| "Failed".into()));
    }
    let containers = status.container_statuses.iter().flatten().chain(status.init_container_statuses.iter().flatten());
    containers
        .filter_map(|c| c.state.as_ref()?.waiting.as_ref()?.reason.clone())
        .find(|r| FAILED_WAITING.contains(&r.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(uid: &str, created: DateTime<Utc>, node: &str, status: serde_json::Value) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": uid, "namespace": "default", "uid": uid,
                "creationTimestamp": created.to_rfc3339()},
            "spec": {"nodeName": node, "containers": [{"name": "c"}]},
            "status": status,
        }))
        .unwrap()
    }

    fn ready_at(t: DateTime<Utc>) -> serde_json::Value {
        serde_json::json!({"phase": "Running", "conditions": [{"type": "Ready", "status": "True",
            "lastTransitionTime": t.to_rfc3339()}]})
    }

    #[test]
    fn counts_starts_failures_timeouts_and_pending() {
        let t0 = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        let mut t = PodStartTracker::new(std::time::Duration::from_secs(300), std::time::Duration::from_secs(120));
        let now = t0 + TimeDelta::seconds(200);
        // Ready 10 s after creation: started.
        t.apply(&pod("a", t0, "n1", ready_at(t0 + TimeDelta::seconds(10))), now, None);
        // Ready after 150 s: too late, and it did not fail: timed out.
        t.apply(&pod("b", t0, "n1", ready_at(t0 + TimeDelta::seconds(150))), now, None);
        // Crash-looping.
        let crash = serde_json::json!({"phase": "Running", "containerStatuses": [{"name": "c", "ready": false,
            "restartCount": 3, "image": "x", "imageID": "", "state": {"waiting": {"reason": "CrashLoopBackOff"}}}]});
        t.apply(&pod("c", t0 + TimeDelta::seconds(100), "n2", crash), now, None);
        // Created 50 s ago, not Ready yet: pending. Another, deleted before deciding: nothing.
        t.apply(&pod("d", now - TimeDelta::seconds(50), "n2", serde_json::json!({"phase": "Pending"})), now, None);
        let e = pod("e", now - TimeDelta::seconds(50), "n2", serde_json::json!({"phase": "Pending"}));
        t.apply(&e, now, None);
        t.delete(&e);
        // Older than the window: not counted at all.
        t.apply(&pod("f", t0 - TimeDelta::seconds(400), "n1", ready_at(t0)), now, None);
        // Unschedulable.
        let unsched = serde_json::json!({"phase": "Pending", "conditions": [{"type": "PodScheduled",
            "status": "False", "reason": "Unschedulable"}]});
        t.apply(&pod("g", now, "", unsched), now, None);
        let (all, by_domain, unschedulable) =
            t.measure(now, |n| if n == "n1" { vec!["zone=a".into()] } else { vec!["zone=b".into()] });
        assert_eq!((all.started, all.failed, all.timed_out, all.pending), (1, 1, 1, 2), "{all:?}");
        assert_eq!(all.reasons["CrashLoopBackOff"], 1);
        assert_eq!(all.success_percent(), Some(100.0 / 3.0));
        assert_eq!(by_domain["zone=a"].started, 1);
        assert_eq!(by_domain["zone=b"].failed, 1);
        assert_eq!(unschedulable, 1);
        // Later, the old ones leave the window.
        let (all, _, _) = t.measure(now + TimeDelta::seconds(400), |_| vec![]);
        assert_eq!(all.decided() + all.pending, 0);
    }

    #[test]
    fn a_start_counts_in_the_domains_its_node_had_when_it_was_decided() {
        let now = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        let mut t = PodStartTracker::new(std::time::Duration::from_secs(300), std::time::Duration::from_secs(120));
        let v1 = || Some(vec!["runtime=v1".to_owned()]);
        // Started under v1; the node is relabelled v2 afterwards.
        t.apply(&pod("old", now - TimeDelta::seconds(60), "n1", ready_at(now - TimeDelta::seconds(55))), now, v1());
        // Scheduled under v1, started under v2 and crash-looping; a later update does not move it.
        let pending = pod("new", now - TimeDelta::seconds(5), "n1", serde_json::json!({"phase": "Pending"}));
        t.apply(&pending, now, v1());
        let crash = serde_json::json!({"phase": "Running", "containerStatuses": [{"name": "c", "ready": false,
            "restartCount": 1, "image": "x", "imageID": "", "state": {"waiting": {"reason": "CrashLoopBackOff"}}}]});
        let new = pod("new", now - TimeDelta::seconds(5), "n1", crash);
        t.apply(&new, now, Some(vec!["runtime=v2".into()]));
        t.apply(&new, now, Some(vec!["runtime=v3".into()]));
        // Seen before its node was known: counted where the node is now.
        t.apply(&pod("unknown-node", now - TimeDelta::seconds(5), "n2", ready_at(now)), now, None);
        let (_, by_domain, _) = t.measure(now, |_| vec!["runtime=v2".into()]);
        assert_eq!((by_domain["runtime=v1"].started, by_domain["runtime=v1"].failed), (1, 0));
        assert_eq!((by_domain["runtime=v2"].started, by_domain["runtime=v2"].failed), (1, 1));
        assert!(!by_domain.contains_key("runtime=v3"));
    }
}
