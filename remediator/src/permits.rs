//! The permits the remediator holds, kept alive by renewing them while their steps run. One
//! renewer serves every workflow of the remediator: each permit is renewed when a third of its
//! remaining life has passed. A permit the gate says is over, or one that lapses because the
//! gate could not be reached in time, is lost: the workflow checks before each risky side effect
//! and stops there (and asks again) rather than act without a permit.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use chrono::{DateTime, TimeDelta, Utc};
use firebreak_schema::Operation;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::gate::{GateClient, Renewal};

#[derive(Debug, Clone)]
struct Hold {
    operation: Operation,
    expires_at: DateTime<Utc>,
    renew_at: DateTime<Utc>,
    lost: Option<String>,
}

/// The permits held, shared by the workflows and the renewer.
#[derive(Clone, Default)]
pub(crate) struct Held {
    inner: Arc<Mutex<HashMap<Uuid, Hold>>>,
}

impl Held {
    /// Starts the renewer; it runs until `cancel`.
    pub(crate) fn start(gate: GateClient, cancel: CancellationToken) -> Self {
        let held = Held::default();
        let renewer = held.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tick.tick() => renewer.renew_due(&gate).await,
                }
            }
        });
        held
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, Hold>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Holds a permit just granted until `expires_at`.
    pub(crate) fn hold(&self, id: Uuid, operation: Operation, expires_at: DateTime<Utc>) {
        let now = Utc::now();
        let renew_at = now + (expires_at - now) / 3;
        self.lock().insert(id, Hold { operation, expires_at, renew_at, lost: None });
    }

    /// Holds a permit whose expiry is not known (a restarted remediator's): it is renewed at
    /// once, and lost if that does not succeed within a few seconds.
    pub(crate) fn adopt(&self, id: Uuid, operation: Operation) {
        let now = Utc::now();
        self.lock().entry(id).or_insert(Hold {
            operation,
            expires_at: now + TimeDelta::seconds(10),
            renew_at: now,
            lost: None,
        });
    }

    /// `Err` with why, when the permit is not held any more.
    pub(crate) fn check(&self, id: Uuid) -> Result<(), String> {
        let held = self.lock();
        let Some(h) = held.get(&id) else { return Err(format!("permit {id} is not held")) };
        if let Some(why) = &h.lost {
            return Err(why.clone());
        }
        if h.expires_at <= Utc::now() {
            return Err(format!(
                "{} permit {id} lapsed at {} without a renewal",
                h.operation,
                h.expires_at.to_rfc3339()
            ));
        }
        Ok(())
    }

    /// Stops renewing a permit (released, or given up).
    pub(crate) fn forget(&self, id: Uuid) {
        self.lock().remove(&id);
    }

    async fn renew_due(&self, gate: &GateClient) {
        let now = Utc::now();
        let due: Vec<(Uuid, Hold)> = self
            .lock()
            .iter()
            .filter(|(_, h)| h.lost.is_none() && h.renew_at <= now)
            .map(|(id, h)| (*id, h.clone()))
            .collect();
        for (id, h) in due {
            let outcome = gate.renew(id).await;
            let now = Utc::now();
            let mut held = self.lock();
            let Some(hold) = held.get_mut(&id) else { continue };
            match outcome {
                Renewal::Until(t) => {
                    hold.expires_at = t;
                    hold.renew_at = now + (t - now) / 3;
                }
                Renewal::Lost(why) => {
                    tracing::warn!(permit_id = %id, operation = %h.operation, why, "permit lost");
                    hold.lost = Some(format!("{} permit {id} is over at the gate: {why}", h.operation));
                }
                Renewal::Unknown(why) if now >= hold.expires_at => {
                    tracing::warn!(permit_id = %id, operation = %h.operation, why, "permit lapsed: the gate could not renew it in time");
                    hold.lost = Some(format!(
                        "{} permit {id} lapsed: the gate could not renew it in time ({why})",
                        h.operation
                    ));
                }
                Renewal::Unknown(why) => {
                    tracing::warn!(permit_id = %id, why, "permit renewal failed; retrying");
                    hold.renew_at = now + TimeDelta::seconds(1);
                }
            }
        }
    }
}
