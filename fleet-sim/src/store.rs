//! The object store behind one simulated API server: JSON objects by resource, namespace and
//! name, a cluster-wide resourceVersion, and a bounded watch history so that watches can resume
//! from a resourceVersion (or get 410 Gone when it is too old), as with etcd behind a kube-apiserver.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, VecDeque},
    sync::Arc,
};

use serde_json::{Value, json};
use tokio::sync::broadcast;

use crate::{At, Error, Result, resources::Resource, time_now_rfc3339};

/// How many changes a watch can resume across, at most.
const HISTORY: usize = 20_000;

/// How old a change a watch can resume from, at most: kube-apiserver sizes its watch cache to
/// hold about 75 s of changes.
const HISTORY_AGE: std::time::Duration = std::time::Duration::from_secs(75);

/// How many changes a watch may fall behind before it is ended with 410 Expired (and its client
/// lists again), as a slow watcher of the API server's cache is.
const WATCH_BUFFER: usize = 8_192;

/// One change to one object.
#[derive(Debug, Clone)]
pub struct Change {
    /// resourceVersion the change produced.
    pub rv: u64,
    /// Resource plural.
    pub resource: &'static str,
    /// `ADDED`, `MODIFIED` or `DELETED`.
    pub kind: &'static str,
    /// The object after the change (before it, for `DELETED`), shared by the store, its history
    /// and every watch: each version of an object is held once.
    pub object: Arc<Value>,
}

type Key = (&'static str, String, String);

/// The plural the node index covers.
const PODS: &str = "pods";

/// The store. Callers hold it behind a mutex; every method is short.
pub struct Store {
    rv: u64,
    objects: BTreeMap<Key, Arc<Value>>,
    /// Pods by `spec.nodeName`, as the API server's watch cache indexes them: a node's pods
    /// without a scan of every pod.
    pods_by_node: HashMap<String, BTreeSet<(String, String)>>,
    history: VecDeque<(std::time::Instant, Change)>,
    tx: broadcast::Sender<Change>,
}

impl Default for Store {
    fn default() -> Self {
        Self::new()
    }
}

impl Store {
    /// An empty store.
    pub fn new() -> Self {
        let (tx, _) = broadcast::channel(WATCH_BUFFER);
        Self { rv: 1, objects: BTreeMap::new(), pods_by_node: HashMap::new(), history: VecDeque::new(), tx }
    }

    /// The current resourceVersion.
    pub fn rv(&self) -> u64 {
        self.rv
    }

    /// A copy of one object.
    pub fn get(&self, res: &Resource, ns: &str, name: &str) -> Option<Value> {
        self.objects.get(&(res.plural, ns.to_owned(), name.to_owned())).map(|v| (**v).clone())
    }

    /// One object, borrowed.
    pub fn get_ref(&self, res: &Resource, ns: &str, name: &str) -> Option<&Value> {
        self.objects.get(&(res.plural, ns.to_owned(), name.to_owned())).map(Arc::as_ref)
    }

    /// Every object of a resource, in one namespace or all (`None`), borrowed.
    pub fn iter<'a>(&'a self, res: &Resource, ns: Option<&'a str>) -> impl Iterator<Item = &'a Value> + 'a {
        let plural = res.plural;
        self.objects
            .range((plural, String::new(), String::new())..)
            .take_while(move |((r, _, _), _)| *r == plural)
            .filter(move |((_, n, _), _)| ns.is_none_or(|ns| ns == n))
            .map(|(_, v)| v.as_ref())
    }

    /// The pods bound to a node, borrowed.
    pub fn pods_on<'a>(&'a self, node: &str) -> impl Iterator<Item = &'a Value> + 'a {
        self.pods_by_node
            .get(node)
            .into_iter()
            .flatten()
            .filter_map(|(ns, name)| self.objects.get(&(PODS, ns.clone(), name.clone())).map(Arc::as_ref))
    }

    fn index(&mut self, key: &Key, old: Option<&Value>, new: Option<&Value>) {
        if key.0 != PODS {
            return;
        }
        let node =
            |v: Option<&Value>| v.and_then(|v| v.at("/spec/nodeName")).and_then(Value::as_str).map(str::to_owned);
        let (was, is) = (node(old), node(new));
        if was == is {
            return;
        }
        let pair = (key.1.clone(), key.2.clone());
        if let Some(was) = was
            && let Some(set) = self.pods_by_node.get_mut(&was)
        {
            set.remove(&pair);
            if set.is_empty() {
                self.pods_by_node.remove(&was);
            }
        }
        if let Some(is) = is {
            self.pods_by_node.entry(is).or_default().insert(pair);
        }
    }

    /// Copies of every object of a resource, in one namespace or all (`None`).
    pub fn list(&self, res: &Resource, ns: Option<&str>) -> Vec<Value> {
        self.iter(res, ns).cloned().collect()
    }

    /// Creates an object; fails with 409 when it exists.
    pub fn create(&mut self, res: &Resource, mut obj: Value) -> Result<Value> {
        let (ns, name) = names(res, &obj)?;
        let key = (res.plural, ns, name.clone());
        if self.objects.contains_key(&key) {
            return Err(Error::Conflict(format!("{} \"{name}\" already exists", res.plural)));
        }
        let meta = obj
            .get_mut("metadata")
            .and_then(Value::as_object_mut)
            .ok_or_else(|| Error::BadRequest("object has no metadata".into()))?;
        meta.entry("uid").or_insert_with(|| json!(uuid::Uuid::new_v4().to_string()));
        meta.insert("creationTimestamp".into(), json!(time_now_rfc3339()));
        if let Some(o) = obj.as_object_mut() {
            o.insert("apiVersion".into(), json!(res.api_version()));
            o.insert("kind".into(), json!(res.kind));
        }
        Ok(self.commit(key, "ADDED", obj))
    }

    /// Replaces an object. A resourceVersion in the new object must match the stored one.
    pub fn replace(&mut self, res: &Resource, mut obj: Value) -> Result<Value> {
        let (ns, name) = names(res, &obj)?;
        let key = (res.plural, ns, name.clone());
        let old = self.objects.get(&key).ok_or_else(|| Error::NotFound(res.singular(), name.clone()))?;
        if let Some(rv) = obj.at("/metadata/resourceVersion").and_then(Value::as_str)
            && !rv.is_empty()
            && Some(rv) != old.at("/metadata/resourceVersion").and_then(Value::as_str)
        {
            return Err(Error::Conflict(format!(
                "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; \
                 please apply your changes to the latest version and try again",
                res.plural
            )));
        }
        for keep in ["uid", "creationTimestamp"] {
            if let Some(v) = old.at(&format!("/metadata/{keep}")).cloned()
                && let Some(m) = obj.get_mut("metadata").and_then(Value::as_object_mut)
            {
                m.insert(keep.into(), v);
            }
        }
        if let Some(o) = obj.as_object_mut() {
            o.insert("apiVersion".into(), json!(res.api_version()));
            o.insert("kind".into(), json!(res.kind));
        }
        if obj == **old {
            return Ok(obj);
        }
        Ok(self.commit(key, "MODIFIED", obj))
    }

    /// Removes an object and returns its last state.
    pub fn remove(&mut self, res: &Resource, ns: &str, name: &str) -> Result<Value> {
        let key = (res.plural, ns.to_owned(), name.to_owned());
        let obj = self.objects.remove(&key).ok_or_else(|| Error::NotFound(res.singular(), name.to_owned()))?;
        self.index(&key, Some(&obj), None);
        self.rv += 1;
        let mut obj = Arc::unwrap_or_clone(obj);
        set_rv(&mut obj, self.rv);
        self.record(Change { rv: self.rv, resource: res.plural, kind: "DELETED", object: Arc::new(obj.clone()) });
        Ok(obj)
    }

    /// Changes since `rv` for a resource, and a receiver for every later change; `Err(Gone)` when
    /// `rv` is older than the kept history.
    pub fn watch_from(&self, res: &Resource, rv: u64) -> Result<(Vec<Change>, broadcast::Receiver<Change>)> {
        let oldest = self.history.front().map_or(self.rv, |(_, c)| c.rv);
        if rv + 1 < oldest {
            return Err(Error::Gone(format!("too old resource version: {rv} ({oldest})")));
        }
        let past =
            self.history.iter().map(|(_, c)| c).filter(|c| c.rv > rv && c.resource == res.plural).cloned().collect();
        Ok((past, self.tx.subscribe()))
    }

    /// A receiver for every change from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.tx.subscribe()
    }

    fn commit(&mut self, key: Key, kind: &'static str, mut obj: Value) -> Value {
        self.rv += 1;
        set_rv(&mut obj, self.rv);
        let obj = Arc::new(obj);
        let old = self.objects.insert(key.clone(), obj.clone());
        self.index(&key, old.as_deref(), Some(&obj));
        self.record(Change { rv: self.rv, resource: key.0, kind, object: obj.clone() });
        Arc::unwrap_or_clone(obj)
    }

    fn record(&mut self, change: Change) {
        let now = std::time::Instant::now();
        while self.history.len() >= HISTORY
            || self.history.front().is_some_and(|(at, _)| now.duration_since(*at) > HISTORY_AGE)
        {
            self.history.pop_front();
        }
        self.history.push_back((now, change.clone()));
        // No receivers is fine.
        let _ = self.tx.send(change);
    }
}

fn set_rv(obj: &mut Value, rv: u64) {
    if let Some(m) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        m.insert("resourceVersion".into(), json!(rv.to_string()));
    }
}

fn names(res: &Resource, obj: &Value) -> Result<(String, String)> {
    let name = obj
        .at("/metadata/name")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| Error::BadRequest("metadata.name is required".into()))?;
    let ns = if res.namespaced {
        obj.at("/metadata/namespace")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
            .ok_or_else(|| Error::BadRequest("metadata.namespace is required".into()))?
    } else {
        ""
    };
    Ok((ns.to_owned(), name.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        resources::{EVENTS, NAMESPACES},
        str_at,
    };

    #[test]
    fn the_node_index_follows_creates_moves_and_deletes() {
        use crate::resources::PODS;
        let mut s = Store::new();
        let pod = |name: &str, node: &str| json!({"metadata": {"name": name, "namespace": "default"}, "spec": {"nodeName": node}});
        s.create(&PODS, pod("a", "n1")).unwrap();
        s.create(&PODS, pod("b", "n1")).unwrap();
        s.create(&PODS, json!({"metadata": {"name": "pending", "namespace": "default"}, "spec": {}})).unwrap();
        let on = |s: &Store, n: &str| s.pods_on(n).map(|p| str_at(p, "/metadata/name")).collect::<Vec<_>>();
        assert_eq!(on(&s, "n1"), ["a", "b"]);
        s.replace(&PODS, pod("b", "n2")).unwrap();
        s.replace(&PODS, pod("pending", "n2")).unwrap();
        assert_eq!(on(&s, "n1"), ["a"]);
        assert_eq!(on(&s, "n2"), ["b", "pending"]);
        s.remove(&PODS, "default", "a").unwrap();
        assert!(on(&s, "n1").is_empty());
        assert!(on(&s, "nowhere").is_empty());
    }

    #[test]
    fn watches_resume_from_a_resource_version_or_are_gone() {
        let mut s = Store::new();
        let rv0 = s.rv();
        s.create(&NAMESPACES, json!({"metadata": {"name": "a"}})).unwrap();
        s.create(&NAMESPACES, json!({"metadata": {"name": "b"}})).unwrap();
        let (past, _) = s.watch_from(&NAMESPACES, rv0 + 1).unwrap();
        assert_eq!(past.iter().map(|c| str_at(&c.object, "/metadata/name")).collect::<Vec<_>>(), ["b"]);
        for i in 0..20_001 {
            s.create(&EVENTS, json!({"metadata": {"name": format!("e{i}"), "namespace": "default"}})).unwrap();
        }
        assert!(matches!(s.watch_from(&NAMESPACES, rv0), Err(Error::Gone(_))));
    }
}
