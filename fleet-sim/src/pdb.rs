//! PodDisruptionBudgets: which pods count as healthy, which budgets select a pod, and the
//! disruption controller that keeps every budget's status current.

use serde_json::{Value, json};

use crate::{
    Result,
    resources::{PDBS, PODS},
    select::Selector,
    store::Store,
    str_at,
};

/// Whether a pod counts as healthy for a disruption budget.
pub(crate) fn pod_ready(pod: &Value) -> bool {
    pod.pointer("/metadata/deletionTimestamp").is_none()
        && pod.pointer("/status/phase").and_then(Value::as_str) == Some("Running")
        && pod
            .pointer("/status/conditions")
            .and_then(Value::as_array)
            .is_some_and(|c| c.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
}

/// The PodDisruptionBudgets of the pod's namespace whose selector matches it.
pub(crate) fn matching_pdbs(store: &Store, pod: &Value) -> Vec<Value> {
    let ns = str_at(pod, "/metadata/namespace");
    store
        .iter(&PDBS, Some(&ns))
        .filter(|pdb| Selector::from_match_labels(pdb.pointer("/spec/selector/matchLabels")).matches_labels(pod))
        .cloned()
        .collect()
}

/// Recomputes every budget's status from the pods it selects.
pub(crate) fn update_pdbs(store: &mut Store) -> Result<()> {
    for pdb in store.list(&PDBS, None) {
        let ns = str_at(&pdb, "/metadata/namespace");
        let sel = Selector::from_match_labels(pdb.pointer("/spec/selector/matchLabels"));
        let (mut healthy, mut expected) = (0i64, 0i64);
        for p in store.iter(&PODS, Some(&ns)).filter(|p| sel.matches_labels(p)) {
            healthy += i64::from(pod_ready(p));
            expected += i64::from(p.pointer("/metadata/deletionTimestamp").is_none());
        }
        let desired = match pdb.pointer("/spec/minAvailable").and_then(Value::as_i64) {
            Some(m) => m,
            None => expected - pdb.pointer("/spec/maxUnavailable").and_then(Value::as_i64).unwrap_or(0),
        };
        let status = json!({"currentHealthy": healthy, "desiredHealthy": desired,
            "disruptionsAllowed": (healthy - desired).max(0), "expectedPods": expected, "observedGeneration": 1});
        if pdb.get("status") != Some(&status) {
            let mut p = pdb;
            p["status"] = status;
            store.replace(&PDBS, p)?;
        }
    }
    Ok(())
}
