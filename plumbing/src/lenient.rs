//! Kubernetes objects decoded leniently. A list or a watch of `K` fails whole when one object in
//! it does not decode (a field of an unexpected type from a newer or broken API server): one bad
//! node would blind a detector to its whole cluster. Watching `Lenient<K>` instead keeps each
//! object that decodes and, for one that does not, its name and why, so the watch goes on and
//! the caller counts and reports the bad one.

use std::borrow::Cow;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::core::Resource;
use serde::{Deserialize, Deserializer, de::DeserializeOwned};
use serde_json::Value;

/// An object of kind `K` as the API server served it.
#[derive(Clone, Debug)]
pub enum Lenient<K> {
    /// It decoded.
    Decoded(K),
    /// It did not: its identity (name, namespace, uid, resource version) and why.
    Undecodable {
        /// What could be read of its metadata.
        meta: Box<ObjectMeta>,
        /// The decoding error, naming the field.
        error: String,
    },
}

impl<K> Lenient<K> {
    /// The object, if it decoded.
    pub fn decoded(&self) -> Option<&K> {
        match self {
            Self::Decoded(k) => Some(k),
            Self::Undecodable { .. } => None,
        }
    }
}

impl<'de, K: DeserializeOwned> Deserialize<'de> for Lenient<K> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = Value::deserialize(d)?;
        match K::deserialize(&raw) {
            Ok(k) => Ok(Self::Decoded(k)),
            Err(e) => {
                let text = |f: &str| raw.pointer(&format!("/metadata/{f}")).and_then(Value::as_str).map(str::to_owned);
                let meta = ObjectMeta {
                    name: text("name"),
                    namespace: text("namespace"),
                    uid: text("uid"),
                    resource_version: text("resourceVersion"),
                    ..ObjectMeta::default()
                };
                Ok(Self::Undecodable { meta: Box::new(meta), error: e.to_string() })
            }
        }
    }
}

impl<K: Resource<DynamicType = ()>> Resource for Lenient<K> {
    type DynamicType = ();
    type Scope = K::Scope;

    fn kind(dt: &()) -> Cow<'_, str> {
        K::kind(dt)
    }

    fn group(dt: &()) -> Cow<'_, str> {
        K::group(dt)
    }

    fn version(dt: &()) -> Cow<'_, str> {
        K::version(dt)
    }

    fn plural(dt: &()) -> Cow<'_, str> {
        K::plural(dt)
    }

    fn meta(&self) -> &ObjectMeta {
        match self {
            Self::Decoded(k) => k.meta(),
            Self::Undecodable { meta, .. } => meta,
        }
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        match self {
            Self::Decoded(k) => k.meta_mut(),
            Self::Undecodable { meta, .. } => meta,
        }
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::Node;

    use super::*;

    #[test]
    fn one_bad_object_in_a_list_costs_only_itself() {
        let list = serde_json::json!([
            {"metadata": {"name": "n1", "resourceVersion": "7"}, "spec": {"unschedulable": true}},
            {"metadata": {"name": "n2", "resourceVersion": "8"}, "spec": {"unschedulable": "yes"}},
            {"metadata": {"name": "n3", "labels": {"a": 7}}},
        ]);
        let got: Vec<Lenient<Node>> = serde_json::from_value(list).unwrap();
        assert_eq!(got[0].decoded().and_then(|n| n.spec.as_ref()?.unschedulable), Some(true));
        let Lenient::Undecodable { meta, error } = &got[1] else { panic!("{:?}", got[1]) };
        assert_eq!((meta.name.as_deref(), meta.resource_version.as_deref()), (Some("n2"), Some("8")));
        assert!(error.contains("expected a boolean"), "{error}");
        assert!(got[2].decoded().is_none());
        assert_eq!(got[2].meta().name.as_deref(), Some("n3"));
    }
}
