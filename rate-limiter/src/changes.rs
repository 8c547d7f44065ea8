//! The change API: a change system registers a change, then for each batch asks to begin it
//! and, after the soak, to complete it. Begin checks the cluster's health (a failed or
//! inconclusive verdict holds the batch), then asks for a `canary_batch` permit like any risky
//! operation (halts, freezes, windows, budgets, breakers), then takes the baseline: every
//! rule's value now. Complete judges the rules against that baseline; a failed verdict halts
//! the change and, per policy, its cluster. Every transition is persisted (guarded by the
//! change's version, so two callers cannot both move it) and published.

use chrono::{TimeDelta, Utc};
use firebreak_plumbing::auth::Caller;
use firebreak_schema::{
    BatchAnswer, BatchRecord, Change, ChangeRequest, ChangeState, HaltRequest, Operation, PermitRequest, Phase, Scope,
};
use uuid::Uuid;

use crate::{Error, Gate, Result};

fn answer(proceed: bool, reason: String, retry_after_s: Option<u64>, change: Change) -> BatchAnswer {
    BatchAnswer { proceed, reason, retry_after_s, change }
}

impl Gate {
    /// Registers a change; registering the same one again returns it.
    pub async fn register_change(&self, req: ChangeRequest, caller: &Caller) -> Result<Change> {
        req.validate().map_err(|e| Error::BadRequest(e.to_string()))?;
        let now = Utc::now();
        let c = Change {
            spec: req,
            state: ChangeState::Ready,
            history: Vec::new(),
            reason: None,
            registered_by: caller.name.clone(),
            created_at: now,
            updated_at: now,
        };
        // The insert does nothing when the id is taken (before, or concurrently): a repeat.
        if !self.store.put_change(&c, None).await? {
            let (existing, _) = self.load(&c.spec.id).await?;
            return if existing.spec == c.spec {
                Ok(existing)
            } else {
                Err(Error::Conflict(format!("change {} is already registered with other settings", c.spec.id)))
            };
        }
        tracing::info!(change = %c.spec.id, cluster = %c.spec.cluster, kind = %c.spec.kind, by = %caller.name,
            batches = c.spec.batches.len(), "change registered");
        self.notifier.change(&c);
        Ok(c)
    }

    /// A change.
    pub async fn change(&self, id: &str) -> Result<Change> {
        Ok(self.load(id).await?.0)
    }

    /// The most recently updated changes.
    pub async fn changes(&self, limit: i64) -> Result<Vec<Change>> {
        if !(1..=1000).contains(&limit) {
            return Err(Error::BadRequest(format!("limit {limit} is not between 1 and 1000")));
        }
        self.store.changes(limit).await
    }

    async fn load(&self, id: &str) -> Result<(Change, i64)> {
        // Every change's id is a DNS-1123 name (checked when it is registered): another is none,
        // and is not sent to the database (PostgreSQL refuses a NUL in text: that was a 500).
        if !firebreak_schema::names::is_dns1123_subdomain(id) {
            return Err(Error::NotFound(format!("no change `{}`", id.escape_debug())));
        }
        self.store.change(id).await?.ok_or_else(|| Error::NotFound(format!("no change {id}")))
    }

    async fn save(&self, c: &Change, version: i64) -> Result<()> {
        if !self.store.put_change(c, Some(version)).await? {
            return Err(Error::Conflict(format!("change {} was updated concurrently; ask again", c.spec.id)));
        }
        tracing::info!(change = %c.spec.id, cluster = %c.spec.cluster, state = c.state.as_str(),
            batch = c.history.len(), reason = c.reason.as_deref().unwrap_or(""), "change updated");
        self.notifier.change(c);
        Ok(())
    }

    /// Asks to begin batch `n` (1-based) of a change.
    pub async fn begin_batch(&self, id: &str, n: u32, caller: &Caller) -> Result<BatchAnswer> {
        let (mut c, version) = self.load(id).await?;
        batch_of(&c, n)?;
        let begun = c.history.len() as u32;
        match c.state {
            ChangeState::InBatch if n == begun => {
                return Ok(answer(true, format!("batch {n} already begun"), None, c));
            }
            ChangeState::Ready if n == begun + 1 && n as usize <= c.spec.batches.len() => {}
            ChangeState::Halted | ChangeState::Aborted | ChangeState::Completed => {
                let why = c.reason.clone().unwrap_or_default();
                return Ok(answer(false, format!("change {id} is {}: {why}", c.state.as_str()), None, c));
            }
            _ => {
                return Err(Error::Conflict(format!(
                    "change {id} is {} after {begun} of {} batches: batch {n} cannot begin",
                    c.state.as_str(),
                    c.spec.batches.len()
                )));
            }
        }
        // Health before the change: the cluster must be healthy now, and measurable.
        let retry = self.policy().evaluate_every.as_secs().max(1);
        let before = self.verdict(&c.spec.cluster, &[], Some(Operation::CanaryBatch));
        if before.verdict != Phase::Successful {
            let reason = format!("health before batch {n} is {}: {}", before.verdict.as_str(), before.reason);
            tracing::info!(change = id, batch = n, %reason, "batch held");
            return Ok(answer(false, reason, Some(retry), c));
        }
        let permit = self
            .request(
                PermitRequest {
                    operation: Operation::CanaryBatch,
                    cluster: c.spec.cluster.clone(),
                    node: None,
                    requester: format!("change/{id}/{n}"),
                    domains: Default::default(),
                },
                caller,
            )
            .await?;
        if !permit.granted {
            return Ok(answer(false, permit.reason, permit.retry_after_s, c));
        }
        let now = Utc::now();
        c.history.push(BatchRecord {
            n,
            begun_at: now,
            permit_id: permit.permit_id,
            baseline: before.signals,
            completed_at: None,
            verdict: None,
        });
        c.state = ChangeState::InBatch;
        c.updated_at = now;
        if let Err(e) = self.save(&c, version).await {
            self.give_back(permit.permit_id, caller).await;
            return Err(e);
        }
        let baseline = c.history.last().map(|b| b.baseline.iter().map(|m| m.message.clone()).collect::<Vec<_>>());
        Ok(answer(true, format!("batch {n} may begin; baseline: {}", baseline.unwrap_or_default().join("; ")), None, c))
    }

    /// Asks to complete batch `n` after its soak: the verdict against its baseline.
    pub async fn complete_batch(&self, id: &str, n: u32, caller: &Caller) -> Result<BatchAnswer> {
        let (mut c, version) = self.load(id).await?;
        batch_of(&c, n)?;
        let begun = c.history.len() as u32;
        let Some(batch) = c.history.last().cloned().filter(|b| b.n == n) else {
            return Err(Error::Conflict(format!("batch {n} of change {id} has not begun ({begun} have)")));
        };
        if let Some(v) = &batch.verdict {
            let ok = v.verdict == Phase::Successful;
            return Ok(answer(ok, format!("batch {n} already completed: {}", v.reason), None, c));
        }
        if c.state != ChangeState::InBatch {
            let why = c.reason.clone().unwrap_or_default();
            return Ok(answer(false, format!("change {id} is {}: {why}", c.state.as_str()), None, c));
        }
        let now = Utc::now();
        let soaked = now - batch.begun_at;
        let soak = TimeDelta::seconds(c.spec.soak_s as i64);
        if soaked < soak {
            let left = (soak - soaked).num_milliseconds().max(0) as u64;
            let reason = format!("batch {n} is soaking: {:.1}s of {}s left", left as f64 / 1000.0, c.spec.soak_s);
            return Ok(answer(false, reason, Some(left.div_ceil(1000).max(1)), c));
        }
        let v = self.verdict(&c.spec.cluster, &batch.baseline, Some(Operation::CanaryBatch));
        self.metrics.verdict(v.verdict);
        if v.verdict == Phase::Inconclusive {
            let reason = format!("the verdict on batch {n} is inconclusive: {}", v.reason);
            return Ok(answer(false, reason, Some(self.policy().evaluate_every.as_secs().max(1)), c));
        }
        let last = c.history.len() == c.spec.batches.len();
        let proceed = v.verdict == Phase::Successful;
        let reason = format!("batch {n}: {}: {}", v.verdict.as_str(), v.reason);
        c.state = match (proceed, last) {
            (true, true) => ChangeState::Completed,
            (true, false) => ChangeState::Ready,
            (false, _) => ChangeState::Halted,
        };
        if !proceed {
            c.reason = Some(reason.clone());
        }
        let failed: Vec<_> =
            v.signals.iter().filter(|m| m.phase == Phase::Failed || m.phase == Phase::Error).cloned().collect();
        if let Some(b) = c.history.last_mut() {
            b.completed_at = Some(now);
            b.verdict = Some(v);
        }
        c.updated_at = now;
        self.save(&c, version).await?;
        self.give_back(batch.permit_id, caller).await;
        if !proceed && self.policy().halt_cluster_on_failed_change {
            let policy = self.policy();
            let mut operations: Vec<Operation> = policy
                .health_rules
                .iter()
                .filter(|r| failed.iter().any(|m| m.rule == r.name))
                .flat_map(|r| r.halts.iter().copied())
                .collect();
            operations.sort();
            operations.dedup();
            let req = HaltRequest {
                scope: Scope::cluster(&c.spec.cluster),
                operations,
                reason: format!("change {id} failed {reason}"),
            };
            self.auto_halt(&req, &format!("change:{id}"), &failed).await?;
        }
        Ok(answer(proceed, reason, None, c))
    }

    /// Lets a halted change go on (the failed batch stays failed; the next may begin) and lifts
    /// the halts it raised.
    pub async fn resume_change(&self, id: &str, caller: &Caller) -> Result<Change> {
        let (mut c, version) = self.load(id).await?;
        if c.state != ChangeState::Halted {
            return Err(Error::Conflict(format!("change {id} is {}, not halted", c.state.as_str())));
        }
        c.state = if c.history.len() == c.spec.batches.len() { ChangeState::Completed } else { ChangeState::Ready };
        c.reason = Some(format!("resumed by {} after: {}", caller.name, c.reason.clone().unwrap_or_default()));
        c.updated_at = Utc::now();
        self.save(&c, version).await?;
        self.lift(&format!("change:{id}"), None, &caller.name).await?;
        Ok(c)
    }

    /// Stops a change for good; gives back the permit of a batch in progress.
    pub async fn abort_change(&self, id: &str, caller: &Caller) -> Result<Change> {
        let (mut c, version) = self.load(id).await?;
        if matches!(c.state, ChangeState::Aborted | ChangeState::Completed) {
            return Err(Error::Conflict(format!("change {id} is already {}", c.state.as_str())));
        }
        let permit = c.history.last().filter(|b| b.verdict.is_none()).and_then(|b| b.permit_id);
        c.state = ChangeState::Aborted;
        c.reason = Some(format!("aborted by {}", caller.name));
        c.updated_at = Utc::now();
        self.save(&c, version).await?;
        self.give_back(permit, caller).await;
        self.lift(&format!("change:{id}"), None, &caller.name).await?;
        Ok(c)
    }

    async fn give_back(&self, permit: Option<Uuid>, caller: &Caller) {
        let Some(id) = permit else { return };
        // The permit may be gone already (expired); that is fine.
        let operator = Caller { role: firebreak_schema::Role::Operator, ..caller.clone() };
        if let Err(error) = self.release(id, &operator).await {
            tracing::debug!(%error, permit_id = %id, "batch permit not released");
        }
    }
}

/// A batch number the change has (1 to its batches), or 404.
fn batch_of(c: &Change, n: u32) -> Result<()> {
    if n == 0 || n as usize > c.spec.batches.len() {
        return Err(Error::NotFound(format!(
            "change {} has {} batches: no batch {n}",
            c.spec.id,
            c.spec.batches.len()
        )));
    }
    Ok(())
}
