//! What kube-apiserver checks of an object written through the API, answered as it does with a
//! `422 Invalid` `Status`: every field has its schema's type (an object is decoded into its
//! `k8s-openapi` type, and the failing field is named), object names are DNS-1123 subdomains,
//! label and annotation keys are qualified names, label values are label values.

use firebreak_schema::names;
use serde_json::Value;

use crate::{At, Error, Result, resources::Resource};

/// Checks an object about to be stored by a create, update or patch.
pub(crate) fn object(res: &Resource, obj: &Value) -> Result<()> {
    let name = obj.at("/metadata/name").and_then(Value::as_str).unwrap_or_default();
    let invalid = |field: &str, why: String| {
        Error::Unprocessable(format!("{} \"{}\" is invalid: {field}: {why}", res.kind, name.escape_debug()))
    };
    if !names::is_dns1123_subdomain(name) {
        return Err(invalid(
            "metadata.name",
            format!(
                "Invalid value: \"{}\": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character",
                name.escape_debug()
            ),
        ));
    }
    for (field, values_are_labels) in [("labels", true), ("annotations", false)] {
        let Some(map) = obj.at(&format!("/metadata/{field}")) else { continue };
        let Some(map) = map.as_object() else {
            if map.is_null() {
                continue;
            }
            return Err(invalid(&format!("metadata.{field}"), "Invalid value: must be a map of strings".into()));
        };
        for (k, v) in map {
            if !names::is_qualified_name(k) {
                return Err(invalid(
                    &format!("metadata.{field}"),
                    format!(
                        "Invalid value: \"{}\": name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character, with an optional DNS subdomain prefix and '/'",
                        k.escape_debug()
                    ),
                ));
            }
            let Some(v) = v.as_str() else {
                return Err(invalid(&format!("metadata.{field}.{k}"), format!("Invalid value: {v}: must be a string")));
            };
            if values_are_labels && !names::is_label_value(v) {
                return Err(invalid(
                    &format!("metadata.labels.{k}"),
                    format!(
                        "Invalid value: \"{}\": a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (at most 63)",
                        v.escape_debug()
                    ),
                ));
            }
        }
    }
    typed(res.kind, obj).map_err(|(path, why)| invalid(&path, why))
}

/// Decodes `obj` into the `k8s-openapi` type of its kind; `Err` names the field and why.
fn typed(kind: &str, obj: &Value) -> std::result::Result<(), (String, String)> {
    use k8s_openapi::api::{
        apps::v1::{DaemonSet, Deployment, ReplicaSet},
        batch::v1::Job,
        coordination::v1::Lease,
        core::v1::{ConfigMap, Event, Namespace, Node, Pod},
        policy::v1::PodDisruptionBudget,
    };
    fn decode<T: serde::de::DeserializeOwned>(obj: &Value) -> std::result::Result<(), (String, String)> {
        serde_path_to_error::deserialize::<_, T>(obj)
            .map(drop)
            .map_err(|e| (e.path().to_string(), e.inner().to_string()))
    }
    match kind {
        "Namespace" => decode::<Namespace>(obj),
        "Node" => decode::<Node>(obj),
        "Pod" => decode::<Pod>(obj),
        "Event" => decode::<Event>(obj),
        "Lease" => decode::<Lease>(obj),
        "PodDisruptionBudget" => decode::<PodDisruptionBudget>(obj),
        "ConfigMap" => decode::<ConfigMap>(obj),
        "Deployment" => decode::<Deployment>(obj),
        "ReplicaSet" => decode::<ReplicaSet>(obj),
        "DaemonSet" => decode::<DaemonSet>(obj),
        "Job" => decode::<Job>(obj),
        // Cluster API's Machine has no type here: its metadata is checked above.
        _ => decode::<k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta>(&obj["metadata"])
            .map_err(|(path, why)| (format!("metadata.{path}"), why)),
    }
}
