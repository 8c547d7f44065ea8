//! PodDisruptionBudgets: which pods count as healthy, which budgets select a pod, and the
//! disruption controller that keeps every budget's status current.

use serde_json::{Value, json};

use crate::{
    At, Result,
    resources::{PDBS, PODS},
    select::Selector,
    store::Store,
    str_at,
};

/// Whether a pod counts as healthy for a disruption budget.
pub(crate) fn pod_ready(pod: &Value) -> bool {
    pod.at("/metadata/deletionTimestamp").is_none()
        && pod.at("/status/phase").and_then(Value::as_str) == Some("Running")
        && pod
            .at("/status/conditions")
            .and_then(Value::as_array)
            .is_some_and(|c| c.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
}

/// The PodDisruptionBudgets of the pod's namespace whose selector matches it.
pub(crate) fn matching_pdbs(store: &Store, pod: &Value) -> Vec<Value> {
    let ns = str_at(pod, "/metadata/namespace");
    store
        .iter(&PDBS, Some(&ns))
        .filter(|pdb| Selector::from_match_labels(pdb.at("/spec/selector/matchLabels")).matches_labels(pod))
        .cloned()
        .collect()
}

/// Recomputes every budget's status from the pods it selects: the disruption controller, which
/// runs on the simulation's tick (as the real one runs beside, not inside, the API server; an
/// eviction spends its budget at once). One pass over each namespace's pods.
pub(crate) fn update_pdbs(store: &mut Store) -> Result<()> {
    let pdbs = store.list(&PDBS, None);
    let mut by_ns: std::collections::BTreeMap<String, Vec<usize>> = std::collections::BTreeMap::new();
    for (i, pdb) in pdbs.iter().enumerate() {
        by_ns.entry(str_at(pdb, "/metadata/namespace")).or_default().push(i);
    }
    let selectors: Vec<Selector> =
        pdbs.iter().map(|p| Selector::from_match_labels(p.at("/spec/selector/matchLabels"))).collect();
    // (healthy, expected) per budget.
    let mut counts = vec![(0i64, 0i64); pdbs.len()];
    for (ns, idx) in &by_ns {
        for p in store.iter(&PODS, Some(ns)) {
            let labels = p.at("/metadata/labels");
            let mut ready = None;
            for &i in idx {
                if selectors[i].matches_label_map(labels) {
                    let ready = *ready.get_or_insert_with(|| pod_ready(p));
                    counts[i].0 += i64::from(ready);
                    counts[i].1 += i64::from(p.at("/metadata/deletionTimestamp").is_none());
                }
            }
        }
    }
    for (pdb, (healthy, expected)) in pdbs.into_iter().zip(counts) {
        let desired = match pdb.at("/spec/minAvailable").and_then(Value::as_i64) {
            Some(m) => m,
            None => expected - pdb.at("/spec/maxUnavailable").and_then(Value::as_i64).unwrap_or(0),
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
