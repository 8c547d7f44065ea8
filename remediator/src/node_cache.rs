//! The cluster's Nodes as a `kube` reflector store, kept current by one watch, with a signal on
//! every change: workflows that wait for a node to change (a new boot id, Ready) wait on the
//! signal instead of polling the API server. Nodes are decoded one by one ([`Lenient`]): one the
//! API serves undecodable is counted, reported and known only by name, and the rest stay watched.

use std::{sync::Arc, time::Duration};

use firebreak_plumbing::lenient::Lenient;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Node;
use kube::{
    Api, Client,
    runtime::{WatchStreamExt, reflector, watcher},
};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// A reader of the cluster's nodes; clones share one watch.
#[derive(Clone)]
pub(crate) struct NodeCache {
    store: reflector::Store<Lenient<Node>>,
    changed: watch::Receiver<u64>,
}

impl NodeCache {
    /// Starts the watch; it runs until `cancel`.
    pub(crate) fn start(client: Client, cluster: String, metrics: crate::Metrics, cancel: CancellationToken) -> Self {
        let (store, writer) = reflector::store();
        let (tx, changed) = watch::channel(0u64);
        let stream = reflector(writer, watcher(Api::<Lenient<Node>>::all(client), watcher::Config::default()))
            .default_backoff()
            .boxed();
        tokio::spawn(async move {
            let mut stream = stream;
            loop {
                let ev = tokio::select! {
                    _ = cancel.cancelled() => return,
                    ev = stream.next() => ev,
                };
                match ev {
                    None => return,
                    Some(Ok(ev)) => {
                        if let watcher::Event::Apply(Lenient::Undecodable { meta, error })
                        | watcher::Event::InitApply(Lenient::Undecodable { meta, error }) = ev
                        {
                            let name = meta.name.unwrap_or_default();
                            tracing::warn!(node = %name, %cluster, error, "undecodable node skipped; watching the rest");
                            metrics.undecodable(&cluster, "Node");
                        }
                        tx.send_modify(|n| *n = n.wrapping_add(1))
                    }
                    Some(Err(error)) => tracing::warn!(%error, "node watch failed; retrying"),
                }
            }
        });
        Self { store, changed }
    }

    /// Waits for the watch's first list (false if cancelled first): until then the store is
    /// empty, and a node missing from it is unknown, not gone.
    pub(crate) async fn synced(&self, cancel: &CancellationToken) -> bool {
        tokio::select! {
            _ = cancel.cancelled() => false,
            r = self.store.wait_until_ready() => r.is_ok(),
        }
    }

    /// The node as last seen, if it exists (once [`NodeCache::synced`]); it may be undecodable.
    pub(crate) fn get(&self, name: &str) -> Option<Arc<Lenient<Node>>> {
        self.store.get(&reflector::ObjectRef::new(name))
    }

    /// Waits until `done` holds for the node (`None` if it does not exist), at most `timeout`;
    /// returns the node as last seen and whether `done` held. An undecodable node holds nothing.
    pub(crate) async fn wait_for(
        &self,
        name: &str,
        timeout: Duration,
        cancel: &CancellationToken,
        done: impl Fn(Option<&Node>) -> bool,
    ) -> Option<(Option<Arc<Lenient<Node>>>, bool)> {
        let mut changed = self.changed.clone();
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        // The store fills after the first list; until then nothing is known.
        tokio::select! {
            _ = cancel.cancelled() => return None,
            _ = &mut deadline => return Some((None, false)),
            _ = self.store.wait_until_ready() => {}
        }
        loop {
            changed.mark_unchanged();
            let node = self.get(name);
            let holds = match node.as_deref() {
                None => done(None),
                Some(Lenient::Decoded(n)) => done(Some(n)),
                Some(Lenient::Undecodable { .. }) => false,
            };
            if holds {
                return Some((node, true));
            }
            tokio::select! {
                _ = cancel.cancelled() => return None,
                _ = &mut deadline => return Some((node, false)),
                r = changed.changed() => if r.is_err() { return Some((node, false)) },
            }
        }
    }
}
