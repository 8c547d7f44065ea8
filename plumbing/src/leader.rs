//! Leader election: one replica of a per-cluster service (the remediator, the detector) acts on
//! a cluster at a time, the holder of a `coordination.k8s.io/v1` Lease in that cluster (as
//! kube-controller-manager and client-go's leaderelection do). Written here because no
//! maintained crate supports this kube version. [`lead`] runs a service's work only while this
//! replica holds the Lease.
//!
//! The Lease is taken when it is free or its holder let it lapse (`renewTime +
//! leaseDurationSeconds` in the past), and renewed every third of its duration; every write is
//! conditional on the resourceVersion read, so of two candidates only one wins. A leader that
//! cannot renew within two thirds of the duration stops acting before anyone else may take the
//! Lease; a replica killed outright loses it when it lapses.

use std::time::Duration;

use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::MicroTime,
    jiff::Timestamp,
};
use kube::{
    Api, Client,
    api::{ObjectMeta, PostParams},
};
use tokio_util::sync::CancellationToken;

use crate::Result;

/// Where the Lease lives and who asks for it.
#[derive(Debug, Clone)]
pub struct LeaseConfig {
    /// The Lease's namespace.
    pub namespace: String,
    /// This replica's identity (pod name, or host and pid).
    pub identity: String,
    /// How long a lease lasts without renewal.
    pub duration: Duration,
}

/// One Lease and this replica's claim on it.
pub struct Elector {
    api: Api<Lease>,
    name: String,
    cfg: LeaseConfig,
}

fn micro_now() -> MicroTime {
    MicroTime(Timestamp::now())
}

impl Elector {
    /// The Lease `name` in `cfg.namespace`.
    pub fn new(client: Client, name: &str, cfg: LeaseConfig) -> Self {
        Self { api: Api::namespaced(client, &cfg.namespace), name: name.to_owned(), cfg }
    }

    /// Takes or renews the Lease; whether this replica holds it now.
    pub async fn try_acquire_or_renew(&self) -> Result<bool> {
        let secs = i32::try_from(self.cfg.duration.as_secs().max(1)).unwrap_or(i32::MAX);
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta { name: Some(self.name.clone()), ..Default::default() },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.cfg.identity.clone()),
                    lease_duration_seconds: Some(secs),
                    acquire_time: Some(micro_now()),
                    renew_time: Some(micro_now()),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                Err(e) => Err(e.into()),
            };
        };
        let spec = lease.spec.get_or_insert_with(Default::default);
        let holder = spec.holder_identity.clone().unwrap_or_default();
        let ours = holder == self.cfg.identity;
        if !ours && !holder.is_empty() && !lapsed(spec) {
            return Ok(false);
        }
        if !ours {
            tracing::info!(lease = %self.name, previous = %holder, "taking the lease");
            spec.holder_identity = Some(self.cfg.identity.clone());
            spec.acquire_time = Some(micro_now());
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
        spec.renew_time = Some(micro_now());
        spec.lease_duration_seconds = Some(secs);
        // Conditional on the resourceVersion read: of two writers, one gets 409.
        match self.api.replace(&self.name, &PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Gives the Lease up at a clean shutdown, so that another replica need not wait for it to
    /// lapse.
    pub async fn release(&self) {
        let Ok(Some(mut lease)) = self.api.get_opt(&self.name).await else { return };
        let Some(spec) = lease.spec.as_mut() else { return };
        if spec.holder_identity.as_deref() != Some(self.cfg.identity.as_str()) {
            return;
        }
        spec.holder_identity = None;
        spec.renew_time = None;
        if let Err(error) = self.api.replace(&self.name, &PostParams::default(), &lease).await {
            tracing::warn!(%error, "could not give the lease up; it lapses");
        }
    }

    /// Waits until this replica holds the Lease (`false` if cancelled first).
    pub async fn acquire(&self, cancel: &CancellationToken) -> bool {
        let period = self.cfg.duration / 3;
        loop {
            match self.try_acquire_or_renew().await {
                Ok(true) => {
                    tracing::info!(lease = %self.name, identity = %self.cfg.identity, "leading");
                    return true;
                }
                Ok(false) => {}
                Err(error) => tracing::warn!(%error, "could not read or take the lease"),
            }
            tokio::select! {
                _ = cancel.cancelled() => return false,
                _ = tokio::time::sleep(period) => {}
            }
        }
    }

    /// Renews the Lease every third of its duration until `cancel`; returns when a renewal did
    /// not succeed within two thirds of it (then this replica must stop acting at once).
    pub async fn hold(&self, cancel: &CancellationToken) {
        let period = self.cfg.duration / 3;
        let deadline = self.cfg.duration * 2 / 3;
        let mut renewed = tokio::time::Instant::now();
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(period) => {}
            }
            match tokio::time::timeout(deadline, self.try_acquire_or_renew()).await {
                Ok(Ok(true)) => renewed = tokio::time::Instant::now(),
                Ok(Ok(false)) => {
                    tracing::warn!(lease = %self.name, "the lease is someone else's; stopping");
                    return;
                }
                Ok(Err(error)) => tracing::warn!(%error, "could not renew the lease"),
                Err(_) => tracing::warn!("renewing the lease timed out"),
            }
            if renewed.elapsed() >= deadline {
                tracing::warn!(lease = %self.name, "the lease was not renewed in time; stopping");
                return;
            }
        }
    }
}

/// Runs `work` only while this replica holds the Lease `name`, with a token cancelled when
/// the Lease is lost (or `cancel` is); stands by and runs it again when the Lease is won back.
/// Without a Lease configuration, runs `work` alone. Returns when `cancel` is cancelled or
/// `work` fails, giving the Lease up.
pub async fn lead<E, F, Fut>(
    client: Client,
    name: &str,
    lease: Option<LeaseConfig>,
    cancel: CancellationToken,
    mut work: F,
) -> std::result::Result<(), E>
where
    F: FnMut(CancellationToken) -> Fut,
    Fut: Future<Output = std::result::Result<(), E>>,
{
    let Some(lease) = lease else { return work(cancel).await };
    let elector = Elector::new(client, name, lease);
    loop {
        if !elector.acquire(&cancel).await {
            return Ok(());
        }
        let term = cancel.child_token();
        let running = work(term.clone());
        tokio::pin!(running);
        let result = tokio::select! {
            r = &mut running => r,
            () = elector.hold(&term) => {
                // Lost (or shutting down): stop acting before anyone else may take the Lease.
                term.cancel();
                running.await
            }
        };
        term.cancel();
        if cancel.is_cancelled() || result.is_err() {
            elector.release().await;
            return result;
        }
        tracing::warn!(lease = %name, "leadership lost; standing by");
    }
}

/// Whether the holder let the lease lapse.
fn lapsed(spec: &LeaseSpec) -> bool {
    let Some(renewed) = spec.renew_time.as_ref() else { return true };
    let secs = i64::from(spec.lease_duration_seconds.unwrap_or(0));
    let until = renewed.0.as_millisecond() + secs * 1000;
    Timestamp::now().as_millisecond() > until
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_lapses_after_its_duration_without_renewal() {
        let at = |secs_ago: i64| {
            Some(MicroTime(Timestamp::from_millisecond(Timestamp::now().as_millisecond() - secs_ago * 1000).unwrap()))
        };
        let spec = |renewed, duration| LeaseSpec {
            holder_identity: Some("a".into()),
            renew_time: renewed,
            lease_duration_seconds: Some(duration),
            ..Default::default()
        };
        assert!(!lapsed(&spec(at(5), 15)));
        assert!(lapsed(&spec(at(16), 15)));
        assert!(lapsed(&spec(None, 15)), "never renewed");
    }
}
