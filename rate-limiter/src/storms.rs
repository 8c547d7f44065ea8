//! Storms: when the event center correlates many nodes of a cluster, or of one failure domain
//! of it, reporting one kind at once (a `Correlation` on the health topic: "likely
//! infrastructure, not nodes"), repairing those nodes one by one would reboot or reinstall
//! healthy machines under a failed switch or power feed. The policy's `[storms]` names the
//! operations to halt where the storm is (its cluster, or its zone or rack only); the halt
//! carries the correlation's figures and is lifted once no correlation there has grown for
//! `resume_after`.

use std::{sync::Arc, time::Duration};

use chrono::Utc;
use firebreak_schema::{Correlation, HaltRequest, Measurement, Phase};
use tokio_util::sync::CancellationToken;

use crate::{Gate, Result};

/// The halt source of a storm where `scope` (`cluster=c1` or `cluster=c1,rack=r7`) is.
fn source(scope: &str) -> String {
    format!("storm:{scope}")
}

impl Gate {
    /// A correlated incident arrived: halts its scope (its cluster or its failure domain) for
    /// the operations `[storms]` names (one halt per scope while in force), with the
    /// correlation as the halt's evidence.
    pub(crate) async fn storm(&self, c: &Correlation) -> Result<()> {
        let Some(rule) = self.policy().storms.clone() else { return Ok(()) };
        let scope = c.scope();
        let key = scope.to_string();
        self.storms.lock().unwrap_or_else(|e| e.into_inner()).insert(key.clone(), Utc::now());
        let m = Measurement {
            rule: "storms".into(),
            signal: "correlated_nodes".into(),
            scope: key.clone(),
            phase: Phase::Failed,
            value: Some(c.nodes.len() as f64),
            threshold: Some(c.threshold as f64),
            baseline: None,
            message: c.message.clone(),
        };
        let req = HaltRequest {
            scope,
            operations: rule.halts,
            reason: format!("correlated incident {}: {} (nodes: {})", c.id, c.message, c.nodes.join(", ")),
        };
        self.auto_halt(&req, &source(&key), &[m]).await?;
        Ok(())
    }

    /// Lifts each storm halt once the storm in its scope has not grown for `resume_after`: from
    /// the last growth this replica heard, or from the halt's own time when it heard none (a
    /// replica started after it).
    pub(crate) async fn calm(self: Arc<Self>, cancel: CancellationToken) {
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            let Some(rule) = self.policy().storms.clone() else { continue };
            let halts = match self.halts().await {
                Ok(h) => h,
                Err(error) => {
                    tracing::warn!(%error, "cannot read halts to lift calm storms");
                    continue;
                }
            };
            let after = chrono::TimeDelta::from_std(rule.resume_after).unwrap_or(chrono::TimeDelta::MAX);
            for h in halts {
                let Some(key) = h.source.as_deref().and_then(|s| s.strip_prefix("storm:")) else { continue };
                let heard = self.storms.lock().unwrap_or_else(|e| e.into_inner()).get(key).copied();
                let last = heard.map_or(h.at, |t| t.max(h.at));
                if Utc::now() - last < after {
                    continue;
                }
                let src = source(key);
                if let Err(error) = self.lift(&src, Some(&h.scope), &src).await {
                    tracing::error!(%error, scope = key, "cannot lift a storm halt");
                }
            }
        }
    }
}
