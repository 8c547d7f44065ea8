//! The three patch formats of the API server: JSON merge patch (RFC 7386), JSON patch (RFC 6902)
//! and strategic merge patch, the latter for the list fields our resources use.

use serde_json::{Map, Value};

use crate::{Error, Result};

/// Applies a patch of the given content type to `target`.
pub fn apply(target: &mut Value, content_type: &str, body: &[u8]) -> Result<()> {
    let ct = content_type.split(';').next().unwrap_or("").trim();
    let bad = |e: serde_json::Error| Error::BadRequest(format!("invalid patch: {e}"));
    match ct {
        "application/merge-patch+json" => {
            let p: Value = serde_json::from_slice(body).map_err(bad)?;
            json_patch::merge(target, &p);
        }
        "application/json-patch+json" => {
            let p: json_patch::Patch = serde_json::from_slice(body).map_err(bad)?;
            json_patch::patch(target, &p).map_err(|e| Error::Unprocessable(e.to_string()))?;
        }
        "application/strategic-merge-patch+json" => {
            let p: Value = serde_json::from_slice(body).map_err(bad)?;
            strategic_merge(target, p, "");
        }
        other => return Err(Error::UnsupportedMediaType(other.to_owned())),
    }
    Ok(())
}

/// List fields merged by key rather than replaced, with their merge key.
fn merge_key(path: &str) -> Option<&'static str> {
    match path {
        "/status/conditions" | "/status/addresses" => Some("type"),
        "/spec/containers" | "/spec/initContainers" | "/spec/volumes" | "/status/containerStatuses" => Some("name"),
        "/metadata/ownerReferences" => Some("uid"),
        "/spec/taints" => None,
        _ => None,
    }
}

fn strategic_merge(target: &mut Value, patch: Value, path: &str) {
    let Value::Object(patch) = patch else {
        *target = patch;
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Some(t) = target.as_object_mut() else { return };
    if patch.get("$patch").and_then(Value::as_str) == Some("replace") {
        t.clear();
    }
    for (k, v) in patch {
        if k.starts_with('$') {
            continue;
        }
        let child = format!("{path}/{k}");
        match v {
            Value::Null => {
                t.remove(&k);
            }
            Value::Array(items) => match (merge_key(&child), t.get_mut(&k)) {
                (Some(key), Some(Value::Array(existing))) => merge_list(existing, items, key),
                _ => {
                    t.insert(k, Value::Array(items));
                }
            },
            Value::Object(_) => strategic_merge(t.entry(k).or_insert(Value::Null), v, &child),
            other => {
                t.insert(k, other);
            }
        }
    }
}

fn merge_list(existing: &mut Vec<Value>, items: Vec<Value>, key: &str) {
    for item in items {
        let id = item.get(key).cloned();
        let delete = item.get("$patch").and_then(Value::as_str) == Some("delete");
        match existing.iter().position(|e| id.is_some() && e.get(key) == id.as_ref()) {
            Some(i) if delete => {
                existing.remove(i);
            }
            Some(i) => strategic_merge(&mut existing[i], item, ""),
            None if delete => {}
            None => existing.push(item),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    use proptest::prelude::*;

    /// Any JSON value, nested a few levels.
    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|n| json!(n)),
            "[a-z/\\-$ .]{0,12}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 64, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::btree_map(
                    "(metadata|spec|status|labels|taints|unschedulable|conditions|name|op|path|value|from|\\$patch|[a-z]{1,6})",
                    inner,
                    0..6
                )
                .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        /// Any patch body, of any of the three patch types, applied to a node: a new object or
        /// a clear error, never a panic; and what the API would store is checked by kube's rules.
        #[test]
        fn any_patch_applies_or_is_an_error(
            body in json_value(),
            raw in prop::collection::vec(any::<u8>(), 0..64),
            ct in prop::sample::select(vec![
                "application/merge-patch+json",
                "application/json-patch+json",
                "application/strategic-merge-patch+json",
                "application/apply-patch+yaml",
            ]),
        ) {
            let node = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1", "labels": {"a": "b"}},
                "spec": {"taints": [{"key": "k", "effect": "NoSchedule"}]},
                "status": {"conditions": [{"type": "Ready", "status": "True"}]}});
            for bytes in [serde_json::to_vec(&body).unwrap_or_default(), raw.clone()] {
                let mut target = node.clone();
                if apply(&mut target, ct, &bytes).is_ok() {
                    let _ = crate::validate::object(&crate::resources::NODES, &target);
                }
            }
        }
    }

    #[test]
    fn strategic_merge_merges_conditions_by_type_and_replaces_taints() {
        let mut node = json!({
            "spec": {"taints": [{"key": "a", "effect": "NoSchedule"}]},
            "status": {"conditions": [{"type": "Ready", "status": "True"}, {"type": "DiskPressure", "status": "False"}]}
        });
        let p = json!({
            "$setElementOrder/conditions": [{"type": "Ready"}],
            "spec": {"taints": [{"key": "b", "effect": "NoSchedule"}], "unschedulable": true},
            "status": {"conditions": [{"type": "Ready", "status": "False"}]}
        });
        apply(&mut node, "application/strategic-merge-patch+json", p.to_string().as_bytes()).unwrap();
        assert_eq!(node["spec"]["taints"], json!([{"key": "b", "effect": "NoSchedule"}]));
        assert_eq!(node["spec"]["unschedulable"], json!(true));
        assert_eq!(node["status"]["conditions"][0], json!({"type": "Ready", "status": "False"}));
        assert_eq!(node["status"]["conditions"][1]["type"], json!("DiskPressure"));
    }

    #[test]
    fn merge_and_json_patch() {
        let mut obj = json!({"metadata": {"labels": {"a": "1", "b": "2"}}});
        apply(&mut obj, "application/merge-patch+json", br#"{"metadata":{"labels":{"a":null,"c":"3"}}}"#).unwrap();
        assert_eq!(obj, json!({"metadata": {"labels": {"b": "2", "c": "3"}}}));
        apply(&mut obj, "application/json-patch+json", br#"[{"op":"remove","path":"/metadata/labels/b"}]"#).unwrap();
        assert_eq!(obj, json!({"metadata": {"labels": {"c": "3"}}}));
        assert!(matches!(apply(&mut obj, "text/plain", b"{}"), Err(Error::UnsupportedMediaType(_))));
        assert!(matches!(apply(&mut obj, "application/merge-patch+json", b"{"), Err(Error::BadRequest(_))));
    }
}
