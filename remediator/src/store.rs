//! Workflow state through `sqlx` (SQLite or PostgreSQL). Every transition is written here
//! before the side effect it leads to. Which fault starts a workflow is not decided here: the
//! store records each consumed fault with the decision of the intake policy (`intake`), in one
//! transaction.

use std::collections::HashMap;

use chrono::{DateTime, SecondsFormat, Utc};
use firebreak_schema::FaultEvent;
use sqlx::{AnyPool, Row};
use uuid::Uuid;

use crate::{
    Error, Result,
    intake::{self, History, Intake, Verdict},
    policy::{Policy, Rung},
};

/// Where a workflow is. Each state names the next action; all actions are idempotent, so a
/// restarted remediator resumes by doing the persisted state's action again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Waiting for a cordon permit from the gate.
    PermitWait,
    /// Permit held; cordon and taint next.
    Cordoning,
    /// Cordoned; label and evict pods next.
    Draining,
    /// Drained; ask for a reboot next.
    Rebooting,
    /// Cordoned; ask the node's actuator to restart a component next (the `restart` rung).
    Restarting,
    /// Restart asked for; waiting for the actuator's report and the node Ready.
    AwaitingRestart,
    /// Drained; ask for a reinstall next (the `reinstall` rung).
    Reinstalling,
    /// Reinstall asked for (persisted before asking); waiting for the node back on a new boot.
    AwaitingReinstall,
    /// Reboot asked for (persisted before asking, so it is asked at most once); waiting for a
    /// new boot id and Ready.
    AwaitingBoot,
    /// Back up; waiting for a quiet period with no new fault.
    Verifying,
    /// Verified; uncordon, untaint and release next.
    Uncordoning,
    /// Done: the node is back in service.
    Healed,
    /// Done: a human must take over; the node stays cordoned.
    Escalated,
    /// Done: the node was deleted; nothing is left to repair.
    NodeGone,
    /// Done: the fault no longer held before a destructive step; nothing more was done (a
    /// cordon Firebreak made is undone).
    Cleared,
    /// Done: someone else uncordoned the node mid-workflow; Firebreak stepped back (its taint
    /// removed, their uncordon standing).
    Cancelled,
    /// Done, in dry-run (shadow) mode: what would have been done is recorded; nothing was.
    Shadowed,
    /// Done: the node's Cluster API Machine was deleted for its reinstall and the node is gone;
    /// its MachineSet brings a new node, of a new name, in its place.
    Replaced,
}

impl State {
    /// Name stored and published.
    pub fn as_str(self) -> &'static str {
        match self {
            State::PermitWait => "permit_wait",
            State::Cordoning => "cordoning",
            State::Draining => "draining",
            State::Rebooting => "rebooting",
            State::Restarting => "restarting",
            State::AwaitingRestart => "awaiting_restart",
            State::Reinstalling => "reinstalling",
            State::AwaitingReinstall => "awaiting_reinstall",
            State::AwaitingBoot => "awaiting_boot",
            State::Verifying => "verifying",
            State::Uncordoning => "uncordoning",
            State::Healed => "healed",
            State::Escalated => "escalated",
            State::NodeGone => "node_gone",
            State::Cleared => "cleared",
            State::Cancelled => "cancelled",
            State::Shadowed => "shadowed",
            State::Replaced => "replaced",
        }
    }

    fn parse(s: &str) -> Result<Self> {
        [
            State::PermitWait,
            State::Cordoning,
            State::Draining,
            State::Rebooting,
            State::Restarting,
            State::AwaitingRestart,
            State::Reinstalling,
            State::AwaitingReinstall,
            State::AwaitingBoot,
            State::Verifying,
            State::Uncordoning,
            State::Healed,
            State::Escalated,
            State::NodeGone,
            State::Cleared,
            State::Cancelled,
            State::Shadowed,
            State::Replaced,
        ]
        .into_iter()
        .find(|st| st.as_str() == s)
        .ok_or_else(|| Error::Corrupt(format!("unknown workflow state `{s}`")))
    }

    /// Whether the workflow has ended.
    pub fn is_done(self) -> bool {
        matches!(
            self,
            State::Healed
                | State::Escalated
                | State::NodeGone
                | State::Cleared
                | State::Cancelled
                | State::Shadowed
                | State::Replaced
        )
    }
}

/// A workflow row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workflow {
    /// Workflow id.
    pub id: Uuid,
    /// Cluster.
    pub cluster: String,
    /// Node.
    pub node: String,
    /// The fault that started it.
    pub trigger_event_id: Uuid,
    /// The fault's kind.
    pub fault_kind: String,
    /// Current state.
    pub state: State,
    /// The `cordon` permit held, if any: from cordon until the node is back in service.
    pub permit_id: Option<Uuid>,
    /// The permit of the step running (`drain`, `reboot`), if any.
    pub step_permit_id: Option<Uuid>,
    /// The node's boot id before the reboot was asked for.
    pub boot_id_before: Option<String>,
    /// When the repair (reboot or restart) was asked for (ms since the epoch): a critical fault
    /// observed after it, boot time included, means the repair did not hold.
    pub reboot_requested_at_ms: Option<i64>,
    /// Whether the node was already cordoned (by someone else) when the workflow got its cordon
    /// permit: then it stays cordoned at the end. Unknown until then.
    pub was_cordoned: Option<bool>,
    /// When the running timed step began (ms since the epoch): the drain, from its first
    /// permit; the verification, from the node's return. Deadlines count from it, across
    /// restarts.
    pub step_started_at_ms: Option<i64>,
    /// The policy's process that started it (empty for workflows from before the policy).
    pub process: String,
    /// The repair it makes: its rung of the process's ladder.
    pub rung: Rung,
    /// Why that rung: its place on the ladder, the repairs before, the budget.
    pub rung_why: String,
    /// How its reinstall was asked for, once it was (persisted before it was).
    pub reinstall_via: Option<crate::reinstall::Via>,
    /// Why it is in its state.
    pub reason: String,
}

/// A node actuator's report on a command, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// `accepted`, `done`, `failed` or `refused`.
    pub outcome: String,
    /// The node's boot id when it reported.
    pub boot_id: String,
    /// What happened.
    pub detail: String,
}

/// The remediator's database.
#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    /// The SQLite WAL's background checkpoints, while the store lives.
    _checkpoints: firebreak_plumbing::db::Checkpoints,
}

/// Appends a line to a workflow's step log, next in its sequence, for the outbox to publish.
async fn append_step(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    workflow: Uuid,
    state: &str,
    reason: &str,
    at: DateTime<Utc>,
) -> Result<()> {
    let seq: i64 = sqlx::query("SELECT COUNT(*) AS n FROM workflow_steps WHERE workflow_id = $1")
        .bind(workflow.to_string())
        .fetch_one(&mut **tx)
        .await?
        .try_get("n")?;
    // Unpublished: the outbox's sender publishes it (see `outbox`).
    sqlx::query(
        "INSERT INTO workflow_steps (workflow_id, seq, state, reason, at, published) VALUES ($1, $2, $3, $4, $5, 0)",
    )
    .bind(workflow.to_string())
    .bind(seq)
    .bind(state)
    .bind(reason)
    .bind(text(at))
    .execute(&mut **tx)
    .await?;
    Ok(())
}

fn text(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

pub(crate) fn ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

fn uuid_col(r: &sqlx::any::AnyRow, c: &str) -> Result<Option<Uuid>> {
    let v: Option<String> = r.try_get(c)?;
    v.map(|s| s.parse().map_err(|e| Error::Corrupt(format!("{c}: {e}")))).transpose()
}

/// What the intake needs to know about the fault's node, read in the intake's transaction.
async fn history(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    e: &FaultEvent,
    policy: &Policy,
    escalated: Option<Uuid>,
    now: DateTime<Utc>,
) -> Result<History> {
    let open = sqlx::query("SELECT id FROM workflows WHERE cluster = $1 AND node = $2 AND done = 0")
        .bind(&e.cluster)
        .bind(&e.node)
        .fetch_optional(&mut **tx)
        .await?;
    let open_workflow = match open {
        Some(r) => uuid_col(&r, "id")?,
        None => None,
    };
    let Some(process) = policy.process_for(e.kind, e.severity) else {
        return Ok(History { open_workflow, escalated, ..History::default() });
    };
    // This fault, and the earlier ones of the node the process takes within its window, since
    // the node's last workflow ended (a repair starts the count over).
    let last_end: Option<String> =
        sqlx::query("SELECT MAX(updated_at) AS at FROM workflows WHERE cluster = $1 AND node = $2 AND done = 1")
            .bind(&e.cluster)
            .bind(&e.node)
            .fetch_one(&mut **tx)
            .await?
            .try_get("at")?;
    let last_end =
        last_end.and_then(|t| DateTime::parse_from_rfc3339(&t).ok()).map_or(i64::MIN, |t| t.timestamp_millis());
    let since = (ms(e.observed_at) - i64::try_from(process.within.as_millis()).unwrap_or(i64::MAX)).max(last_end);
    let rows =
        sqlx::query("SELECT kind, severity FROM seen_faults WHERE cluster = $1 AND node = $2 AND observed_at_ms >= $3")
            .bind(&e.cluster)
            .bind(&e.node)
            .bind(since)
            .fetch_all(&mut **tx)
            .await?;
    let earlier = rows
        .iter()
        .filter(|r| {
            let kind = r.try_get::<String, _>("kind").ok().and_then(|k| k.parse().ok());
            let severity = r.try_get::<String, _>("severity").ok().and_then(|s| s.parse().ok());
            matches!((kind, severity), (Some(k), Some(s)) if process.takes(k, s))
        })
        .count();
    let occurrences = u32::try_from(earlier + 1).unwrap_or(u32::MAX);
    // Repairs within the budget window, since an operator last cleared an escalation (which
    // starts the ladder over).
    let cleared: Option<String> =
        sqlx::query("SELECT MAX(escalation_cleared_at) AS at FROM workflows WHERE cluster = $1 AND node = $2")
            .bind(&e.cluster)
            .bind(&e.node)
            .fetch_one(&mut **tx)
            .await?
            .try_get("at")?;
    let window = chrono::TimeDelta::from_std(policy.budget.window).unwrap_or(chrono::TimeDelta::MAX);
    let from =
        text(now.checked_sub_signed(window).unwrap_or(DateTime::<Utc>::MIN_UTC)).max(cleared.unwrap_or_default());
    let rows = sqlx::query(
        "SELECT id, process FROM workflows WHERE cluster = $1 AND node = $2 AND state = 'healed' AND created_at >= $3 \
         ORDER BY created_at",
    )
    .bind(&e.cluster)
    .bind(&e.node)
    .bind(from)
    .fetch_all(&mut **tx)
    .await?;
    let repairs = rows
        .iter()
        .map(|r| {
            let id = uuid_col(r, "id")?.ok_or_else(|| Error::Corrupt("workflow without id".into()))?;
            Ok((id, r.try_get::<Option<String>, _>("process")?.unwrap_or_default()))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(History { open_workflow, escalated, occurrences, repairs })
}

/// One fault's intake, in the transaction of its batch.
async fn intake_one(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    e: &FaultEvent,
    policy: &Policy,
    stale_after: std::time::Duration,
    escalated: Option<Uuid>,
) -> Result<Intake> {
    let seen = sqlx::query("SELECT decision FROM seen_faults WHERE event_id = $1")
        .bind(e.id.to_string())
        .fetch_optional(&mut **tx)
        .await?;
    if seen.is_some() {
        return Ok(Intake::Duplicate);
    }
    let now = Utc::now();
    let history = history(tx, e, policy, escalated, now).await?;
    let (decision, workflow) = match intake::decide(e, policy, &history, now, stale_after) {
        Verdict::Attach(id) => (Intake::Attached(id), Some(id)),
        Verdict::Ignore(why) => (Intake::Ignored(why), None),
        Verdict::Start(plan) => {
            let wf = Workflow {
                id: Uuid::now_v7(),
                cluster: e.cluster.clone(),
                node: e.node.clone(),
                trigger_event_id: e.id,
                fault_kind: e.kind.to_string(),
                state: State::PermitWait,
                permit_id: None,
                step_permit_id: None,
                boot_id_before: None,
                reboot_requested_at_ms: None,
                was_cordoned: None,
                step_started_at_ms: None,
                reason: format!(
                    "{} {} fault {}: {}; repair: {} ({})",
                    e.severity,
                    e.kind,
                    e.id,
                    e.message,
                    plan.rung.name(),
                    plan.why
                ),
                process: plan.process,
                rung: plan.rung,
                rung_why: plan.why,
                reinstall_via: None,
            };
            sqlx::query(
                "INSERT INTO workflows (id, cluster, node, trigger_event_id, fault_kind, state, reason, done, \
                 created_at, updated_at, process, rung, rung_why) VALUES ($1,$2,$3,$4,$5,$6,$7,0,$8,$8,$9,$10,$11)",
            )
            .bind(wf.id.to_string())
            .bind(&wf.cluster)
            .bind(&wf.node)
            .bind(wf.trigger_event_id.to_string())
            .bind(&wf.fault_kind)
            .bind(wf.state.as_str())
            .bind(&wf.reason)
            .bind(text(now))
            .bind(&wf.process)
            .bind(wf.rung.name())
            .bind(&wf.rung_why)
            .execute(&mut **tx)
            .await?;
            append_step(tx, wf.id, wf.state.as_str(), &wf.reason, now).await?;
            let id = wf.id;
            (Intake::Started(Box::new(wf)), Some(id))
        }
    };
    let text_of_decision = match &decision {
        Intake::Ignored(why) => format!("ignored: {why}"),
        Intake::Attached(id) => format!("attached to open workflow {id}"),
        Intake::Started(wf) => format!("started workflow {}", wf.id),
        Intake::Duplicate => String::new(),
    };
    sqlx::query(
        "INSERT INTO seen_faults (event_id, cluster, node, kind, severity, observed_at_ms, workflow_id, decision, at, \
         message) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10)",
    )
    .bind(e.id.to_string())
    .bind(&e.cluster)
    .bind(&e.node)
    .bind(e.kind.as_str())
    .bind(e.severity.as_str())
    .bind(ms(e.observed_at))
    .bind(workflow.map(|w| w.to_string()))
    .bind(text_of_decision)
    .bind(text(now))
    .bind(e.message.chars().take(1000).collect::<String>())
    .execute(&mut **tx)
    .await?;
    Ok(decision)
}

impl Store {
    /// Connects (a SQLite file is created if missing) and migrates.
    pub async fn open(url: &str) -> Result<Self> {
        let (pool, checkpoints) = firebreak_plumbing::db::open(url, sqlx::migrate!("./migrations"), 4).await?;
        Ok(Self { pool, _checkpoints: checkpoints })
    }

    /// Records a consumed fault and the intake policy's decision on it, atomically (see
    /// [`Store::intake_all`]).
    pub async fn intake(
        &self,
        e: &FaultEvent,
        policy: &Policy,
        stale_after: std::time::Duration,
        escalated: Option<Uuid>,
    ) -> Result<Intake> {
        let escalated = escalated.map(|w| (e.node.clone(), w)).into_iter().collect();
        let mut all = self.intake_all(std::slice::from_ref(e), policy, stale_after, &escalated).await?;
        all.pop().ok_or_else(|| Error::Corrupt("an intake made no decision".into()))
    }

    /// Records consumed faults and the intake policy's decision on each, in order, in one
    /// transaction: all or none. A replayed fault is a `Duplicate` (also one repeated within
    /// `events`); a started workflow is written with its first step, and a later fault of the
    /// same node in `events` attaches to it. `escalated` holds the nodes' escalated workflows an
    /// operator has not cleared.
    pub async fn intake_all(
        &self,
        events: &[FaultEvent],
        policy: &Policy,
        stale_after: std::time::Duration,
        escalated: &HashMap<String, Uuid>,
    ) -> Result<Vec<Intake>> {
        let mut tx = self.pool.begin().await?;
        let mut decisions = Vec::with_capacity(events.len());
        for e in events {
            decisions.push(intake_one(&mut tx, e, policy, stale_after, escalated.get(&e.node).copied()).await?);
        }
        tx.commit().await?;
        Ok(decisions)
    }

    /// Persists a transition and appends it to the workflow's step log, with the webhook calls
    /// it makes (delivered from the outbox).
    pub async fn transition(&self, wf: &Workflow, notes: &[crate::outbox::Note]) -> Result<()> {
        let at = Utc::now();
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "UPDATE workflows SET state = $2, permit_id = $3, boot_id_before = $4, reboot_requested_at_ms = $5, \
             reason = $6, done = $7, updated_at = $8, step_permit_id = $9, was_cordoned = $10, \
             step_started_at_ms = $11, reinstall_via = $12 WHERE id = $1",
        )
        .bind(wf.id.to_string())
        .bind(wf.state.as_str())
        .bind(wf.permit_id.map(|p| p.to_string()))
        .bind(wf.boot_id_before.clone())
        .bind(wf.reboot_requested_at_ms)
        .bind(&wf.reason)
        .bind(i32::from(wf.state.is_done()))
        .bind(text(at))
        .bind(wf.step_permit_id.map(|p| p.to_string()))
        .bind(wf.was_cordoned.map(i32::from))
        .bind(wf.step_started_at_ms)
        .bind(wf.reinstall_via.as_ref().map(crate::reinstall::Via::to_db))
        .execute(&mut *tx)
        .await?;
        append_step(&mut tx, wf.id, wf.state.as_str(), &wf.reason, at).await?;
        for note in notes {
            sqlx::query(
                "INSERT INTO webhook_outbox (id, workflow_id, hook, event, body, attempts, next_at_ms) \
                 VALUES ($1, $2, $3, $4, $5, 0, $6)",
            )
            .bind(Uuid::now_v7().to_string())
            .bind(wf.id.to_string())
            .bind(note.hook.as_str())
            .bind(note.event)
            .bind(note.body.to_string())
            .bind(ms(at))
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// The cluster's steps not yet on the remediation topic, oldest first, as published: each
    /// with its place in its workflow's step log.
    pub async fn unpublished_steps(
        &self,
        cluster: &str,
        limit: i64,
    ) -> Result<Vec<(i64, firebreak_schema::RemediationEvent)>> {
        let rows = sqlx::query(
            "SELECT s.workflow_id, s.seq, s.state, s.reason, s.at, w.cluster, w.node, w.trigger_event_id \
             FROM workflow_steps s JOIN workflows w ON w.id = s.workflow_id \
             WHERE s.published = 0 AND w.cluster = $1 ORDER BY s.at, s.seq LIMIT $2",
        )
        .bind(cluster)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let workflow =
                    uuid_col(r, "workflow_id")?.ok_or_else(|| Error::Corrupt("step without workflow".into()))?;
                let trigger = uuid_col(r, "trigger_event_id")?
                    .ok_or_else(|| Error::Corrupt("workflow without trigger".into()))?;
                let at: String = r.try_get("at")?;
                let at = DateTime::parse_from_rfc3339(&at)
                    .map_err(|e| Error::Corrupt(format!("step time {at:?}: {e}")))?
                    .to_utc();
                let seq: i64 = r.try_get("seq")?;
                let event = crate::outbox::step_event(
                    workflow,
                    r.try_get("cluster")?,
                    r.try_get("node")?,
                    trigger,
                    seq,
                    r.try_get("state")?,
                    r.try_get("reason")?,
                    at,
                );
                Ok((seq, event))
            })
            .collect()
    }

    /// Marks steps the remediation topic has.
    pub async fn mark_published(&self, steps: &[(Uuid, i64)]) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        for (workflow, seq) in steps {
            sqlx::query("UPDATE workflow_steps SET published = 1 WHERE workflow_id = $1 AND seq = $2")
                .bind(workflow.to_string())
                .bind(seq)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// The cluster's webhook calls due for delivery, oldest first.
    pub async fn due_webhooks(&self, cluster: &str, limit: i64) -> Result<Vec<crate::outbox::Pending>> {
        let rows = sqlx::query(
            "SELECT o.id, o.hook, o.event, o.body, o.attempts FROM webhook_outbox o \
             JOIN workflows w ON w.id = o.workflow_id \
             WHERE w.cluster = $1 AND o.next_at_ms <= $2 ORDER BY o.id LIMIT $3",
        )
        .bind(cluster)
        .bind(ms(Utc::now()))
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(crate::outbox::Pending {
                    id: uuid_col(r, "id")?.ok_or_else(|| Error::Corrupt("webhook call without id".into()))?,
                    hook: r.try_get("hook")?,
                    event: r.try_get("event")?,
                    body: r.try_get("body")?,
                    attempts: r.try_get("attempts")?,
                })
            })
            .collect()
    }

    /// Forgets a delivered webhook call.
    pub async fn webhook_delivered(&self, id: Uuid) -> Result<()> {
        sqlx::query("DELETE FROM webhook_outbox WHERE id = $1").bind(id.to_string()).execute(&self.pool).await?;
        Ok(())
    }

    /// Gives up a webhook call that could not be delivered: it is forgotten, and its workflow's
    /// step log says so (a step in the state the workflow is in, published like every step), in
    /// one transaction.
    pub async fn webhook_given_up(&self, id: Uuid, why: &str) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        let workflow = sqlx::query(
            "SELECT w.id, w.state FROM webhook_outbox o JOIN workflows w ON w.id = o.workflow_id WHERE o.id = $1",
        )
        .bind(id.to_string())
        .fetch_optional(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM webhook_outbox WHERE id = $1").bind(id.to_string()).execute(&mut *tx).await?;
        if let Some(r) = workflow {
            let wf = uuid_col(&r, "id")?.ok_or_else(|| Error::Corrupt("workflow without id".into()))?;
            append_step(&mut tx, wf, &r.try_get::<String, _>("state")?, why, Utc::now()).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Records a failed delivery and when to try again.
    pub async fn webhook_failed(&self, id: Uuid, attempts: i64, next_at_ms: i64) -> Result<()> {
        sqlx::query("UPDATE webhook_outbox SET attempts = $2, next_at_ms = $3 WHERE id = $1")
            .bind(id.to_string())
            .bind(attempts)
            .bind(next_at_ms)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Open workflows of a cluster, to resume after a restart.
    pub async fn open_workflows(&self, cluster: &str) -> Result<Vec<Workflow>> {
        let rows = sqlx::query(
            "SELECT id, cluster, node, trigger_event_id, fault_kind, state, permit_id, step_permit_id, boot_id_before, \
             reboot_requested_at_ms, was_cordoned, step_started_at_ms, process, rung, rung_why, reinstall_via, reason \
             FROM workflows WHERE cluster = $1 AND done = 0",
        )
        .bind(cluster)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(Workflow {
                    id: uuid_col(r, "id")?.ok_or_else(|| Error::Corrupt("workflow without id".into()))?,
                    cluster: r.try_get("cluster")?,
                    node: r.try_get("node")?,
                    trigger_event_id: uuid_col(r, "trigger_event_id")?
                        .ok_or_else(|| Error::Corrupt("no trigger".into()))?,
                    fault_kind: r.try_get("fault_kind")?,
                    state: State::parse(&r.try_get::<String, _>("state")?)?,
                    permit_id: uuid_col(r, "permit_id")?,
                    step_permit_id: uuid_col(r, "step_permit_id")?,
                    boot_id_before: r.try_get("boot_id_before")?,
                    reboot_requested_at_ms: r.try_get("reboot_requested_at_ms")?,
                    was_cordoned: r.try_get::<Option<i32>, _>("was_cordoned")?.map(|v| v != 0),
                    step_started_at_ms: r.try_get("step_started_at_ms")?,
                    process: r.try_get::<Option<String>, _>("process")?.unwrap_or_default(),
                    rung: r
                        .try_get::<Option<String>, _>("rung")?
                        .as_deref()
                        .map_or(Ok(Rung::Reboot), Rung::parse)
                        .map_err(Error::Corrupt)?,
                    rung_why: r.try_get::<Option<String>, _>("rung_why")?.unwrap_or_default(),
                    reinstall_via: r
                        .try_get::<Option<String>, _>("reinstall_via")?
                        .as_deref()
                        .map(crate::reinstall::Via::from_db)
                        .transpose()?,
                    reason: r.try_get("reason")?,
                })
            })
            .collect()
    }

    /// The node's escalated workflow that no operator has cleared yet, if any.
    pub async fn escalated(&self, cluster: &str, node: &str) -> Result<Option<Uuid>> {
        Ok(self.escalated_among(cluster, &[node]).await?.remove(node))
    }

    /// The escalated workflows no operator has cleared yet of those of `nodes` that have one
    /// (a node's latest), by node: one statement for a batch of faults.
    pub async fn escalated_among(&self, cluster: &str, nodes: &[&str]) -> Result<HashMap<String, Uuid>> {
        let mut found = HashMap::new();
        let mut conn = self.pool.acquire().await?;
        // Bound parameters per statement stay far below SQLite's and PostgreSQL's limits.
        for chunk in nodes.chunks(500) {
            let params = firebreak_plumbing::db::placeholders(&conn, chunk.len() + 1);
            let sql = format!(
                "SELECT node, id FROM workflows WHERE cluster = {} AND node IN ({}) AND state = 'escalated' \
                 AND escalation_cleared_at IS NULL ORDER BY created_at",
                params[0],
                params[1..].join(",")
            );
            let mut query = sqlx::query(&sql).bind(cluster);
            for n in chunk {
                query = query.bind(*n);
            }
            // Ordered by creation: the latest of a node's stays.
            for r in query.fetch_all(&mut *conn).await? {
                if let Some(id) = uuid_col(&r, "id")? {
                    found.insert(r.try_get("node")?, id);
                }
            }
        }
        Ok(found)
    }

    /// Records that an operator cleared an escalation (with how it was seen), once.
    pub async fn clear_escalation(&self, workflow: Uuid, how: &str) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query(
            "UPDATE workflows SET escalation_cleared_at = $2 WHERE id = $1 AND escalation_cleared_at IS NULL",
        )
        .bind(workflow.to_string())
        .bind(text(Utc::now()))
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 1 {
            append_step(
                &mut tx,
                workflow,
                State::Escalated.as_str(),
                &format!("escalation cleared: {how}"),
                Utc::now(),
            )
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// The newest critical fault on a node observed after `after_ms`, if any.
    pub async fn critical_fault_since(
        &self,
        cluster: &str,
        node: &str,
        after_ms: i64,
    ) -> Result<Option<(String, String)>> {
        let row = sqlx::query(
            "SELECT event_id, kind FROM seen_faults WHERE cluster = $1 AND node = $2 AND severity = 'critical' \
             AND observed_at_ms > $3 ORDER BY observed_at_ms DESC LIMIT 1",
        )
        .bind(cluster)
        .bind(node)
        .bind(after_ms)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| Ok((r.try_get("event_id")?, r.try_get("kind")?))).transpose()
    }

    /// The node's most recent faults observed since `after_ms`, newest first, at most `limit`:
    /// (observed at, kind, severity, message).
    pub async fn recent_faults(
        &self,
        cluster: &str,
        node: &str,
        after_ms: i64,
        limit: i64,
    ) -> Result<Vec<(DateTime<Utc>, String, String, String)>> {
        let rows = sqlx::query(
            "SELECT observed_at_ms, kind, severity, message FROM seen_faults WHERE cluster = $1 AND node = $2 \
             AND observed_at_ms > $3 ORDER BY observed_at_ms DESC LIMIT $4",
        )
        .bind(cluster)
        .bind(node)
        .bind(after_ms)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let at = DateTime::from_timestamp_millis(r.try_get("observed_at_ms")?).unwrap_or_default();
                let message: Option<String> = r.try_get("message")?;
                Ok((at, r.try_get("kind")?, r.try_get("severity")?, message.unwrap_or_default()))
            })
            .collect()
    }

    /// Records a node actuator's report on a command, once.
    pub async fn record_report(&self, r: &firebreak_schema::CommandReport) -> Result<()> {
        sqlx::query(
            "INSERT INTO command_reports (command_id, workflow_id, cluster, node, action, outcome, boot_id, detail, at) \
             VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9) ON CONFLICT DO NOTHING",
        )
        .bind(r.command_id.to_string())
        .bind(r.workflow_id.to_string())
        .bind(&r.cluster)
        .bind(&r.node)
        .bind(r.action.to_string())
        .bind(r.outcome.as_str())
        .bind(&r.boot_id)
        .bind(&r.detail)
        .bind(text(r.at))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The reports on a command, oldest first.
    pub async fn reports(&self, command: Uuid) -> Result<Vec<Report>> {
        let rows = sqlx::query(
            "SELECT outcome, boot_id, detail FROM command_reports WHERE command_id = $1 ORDER BY at, outcome",
        )
        .bind(command.to_string())
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(Report {
                    outcome: r.try_get("outcome")?,
                    boot_id: r.try_get("boot_id")?,
                    detail: r.try_get("detail")?,
                })
            })
            .collect()
    }

    /// The step log of a workflow: (state, reason), oldest first.
    pub async fn steps(&self, workflow: Uuid) -> Result<Vec<(String, String)>> {
        let rows = sqlx::query("SELECT state, reason FROM workflow_steps WHERE workflow_id = $1 ORDER BY seq")
            .bind(workflow.to_string())
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(|r| Ok((r.try_get("state")?, r.try_get("reason")?))).collect()
    }
}

#[cfg(test)]
mod tests {
    use firebreak_schema::{FaultKind, Severity};

    use super::*;
    use crate::intake::tests::fault_on;

    /// A fault observed `secs` seconds after five minutes ago.
    fn fault(node: &str, kind: FaultKind, severity: Severity, secs: i64) -> FaultEvent {
        fault_on(node, kind, severity, 300 - secs)
    }

    const LIMIT: std::time::Duration = std::time::Duration::from_secs(600);
    static P: std::sync::LazyLock<Policy> = std::sync::LazyLock::new(Policy::default);

    /// Ends a workflow in `state`.
    async fn end(s: &Store, wf: &Workflow, state: State) {
        s.transition(&Workflow { state, ..wf.clone() }, &[]).await.unwrap();
    }

    /// The workflow `e`'s intake starts; any other decision fails the test.
    async fn started(s: &Store, e: &FaultEvent) -> Workflow {
        match s.intake(e, &P, LIMIT, None).await.unwrap() {
            Intake::Started(wf) => *wf,
            other => panic!("a workflow starts, not {other:?}"),
        }
    }

    /// A store in a directory of its own, removed when the directory is dropped.
    async fn store() -> (Store, tempfile::TempDir) {
        let dir = tempfile::Builder::new().prefix("fb-rem-").tempdir().unwrap();
        let store = Store::open(&format!("sqlite://{}", dir.path().join("r.db").display())).await.unwrap();
        (store, dir)
    }

    #[tokio::test]
    async fn a_batch_of_faults_is_decided_in_order_as_if_one_at_a_time() {
        let (s, _dir) = store().await;
        // n2's workflow escalates; the store names it among the batch's nodes, n1 has none.
        let n2 = started(&s, &fault("n2", FaultKind::MemoryUncorrectable, Severity::Critical, 0)).await;
        end(&s, &n2, State::Escalated).await;
        let escalated = s.escalated_among("c1", &["n1", "n2", "n3"]).await.unwrap();
        assert_eq!(escalated, HashMap::from([("n2".to_owned(), n2.id)]));

        let first = fault("n1", FaultKind::MemoryUncorrectable, Severity::Critical, 10);
        let second = fault("n1", FaultKind::ReadonlyFilesystem, Severity::Critical, 11);
        let on_escalated = fault("n2", FaultKind::MemoryUncorrectable, Severity::Critical, 12);
        let batch = [first.clone(), second, first.clone(), on_escalated];
        let d = s.intake_all(&batch, &P, LIMIT, &escalated).await.unwrap();
        let Intake::Started(wf) = &d[0] else { panic!("n1's first fault starts a workflow: {d:?}") };
        assert_eq!(d[1], Intake::Attached(wf.id), "a later fault of the node in the same batch joins it");
        assert_eq!(d[2], Intake::Duplicate, "a fault repeated within the batch acts once");
        assert!(matches!(&d[3], Intake::Ignored(w) if w.contains("needs a human")), "{:?}", d[3]);
        // All of it was kept: replayed, the batch is all duplicates.
        let again = s.intake_all(&batch, &P, LIMIT, &escalated).await.unwrap();
        assert_eq!(again, vec![Intake::Duplicate; 4]);
        assert_eq!(s.open_workflows("c1").await.unwrap().len(), 1, "one workflow for n1, none for n2");
    }

    #[tokio::test]
    async fn intake_decides_once_per_event_and_one_workflow_per_node() {
        let (s, _dir) = store().await;
        let first = fault("n1", FaultKind::MemoryUncorrectable, Severity::Critical, 0);
        let wf = started(&s, &first).await;
        assert_eq!((wf.state, wf.node.as_str()), (State::PermitWait, "n1"));
        assert_eq!(s.intake(&first, &P, LIMIT, None).await.unwrap(), Intake::Duplicate, "a replayed event acts once");
        let second = fault("n1", FaultKind::ReadonlyFilesystem, Severity::Critical, 5);
        assert_eq!(s.intake(&second, &P, LIMIT, None).await.unwrap(), Intake::Attached(wf.id));
        // The policy's other verdicts are recorded too (the rules are tested in `intake`).
        let warn = fault("n2", FaultKind::MemoryUncorrectable, Severity::Warning, 0);
        assert!(
            matches!(s.intake(&warn, &P, LIMIT, None).await.unwrap(), Intake::Ignored(w) if w.contains("severity warning"))
        );
        assert_eq!(s.intake(&warn, &P, LIMIT, None).await.unwrap(), Intake::Duplicate);
        // The attached fault counts as a recurrence after the time it was observed before.
        let since = ms(first.observed_at);
        assert_eq!(
            s.critical_fault_since("c1", "n1", since).await.unwrap().map(|f| f.1),
            Some("ReadonlyFilesystem".into())
        );
        assert_eq!(s.critical_fault_since("c1", "n1", ms(second.observed_at)).await.unwrap(), None);
    }

    #[tokio::test]
    async fn transitions_persist_and_open_workflows_resume() {
        let (s, _dir) = store().await;
        let mut wf = started(&s, &fault("n1", FaultKind::ReadonlyFilesystem, Severity::Critical, 0)).await;
        wf.state = State::AwaitingBoot;
        wf.permit_id = Some(Uuid::now_v7());
        wf.boot_id_before = Some("boot-1".into());
        wf.step_started_at_ms = Some(1_800_000_000_000);
        wf.was_cordoned = Some(true);
        wf.reason = "reboot requested".into();
        s.transition(&wf, &[]).await.unwrap();
        let open = s.open_workflows("c1").await.unwrap();
        assert_eq!(open, vec![wf.clone()], "a restarted remediator resumes exactly here");
        assert!(s.open_workflows("c2").await.unwrap().is_empty());
        wf.state = State::Healed;
        wf.reason = "healed".into();
        s.transition(&wf, &[]).await.unwrap();
        assert!(s.open_workflows("c1").await.unwrap().is_empty());
        let steps: Vec<String> = s.steps(wf.id).await.unwrap().into_iter().map(|(st, _)| st).collect();
        assert_eq!(steps, ["permit_wait", "awaiting_boot", "healed"]);
        // The node is free again: a new fault starts a new workflow.
        assert!(matches!(
            s.intake(&fault("n1", FaultKind::MemoryUncorrectable, Severity::Critical, 60), &P, LIMIT, None)
                .await
                .unwrap(),
            Intake::Started(..)
        ));
    }

    /// The outbox: steps wait unpublished and webhook calls undelivered in the store, across a
    /// restart, until the sender marks them; a step read again has the same id.
    #[tokio::test]
    async fn steps_and_webhook_calls_wait_in_the_outbox_until_sent() {
        use crate::outbox::{Hook, Note};
        let dir = tempfile::Builder::new().prefix("fb-rem-").tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("r.db").display());
        let s = Store::open(&url).await.unwrap();
        let mut wf = started(&s, &fault("n1", FaultKind::MemoryUncorrectable, Severity::Critical, 0)).await;
        wf.state = State::Escalated;
        wf.reason = "needs a human".into();
        let note = Note { hook: Hook::Escalation, event: "escalated", body: serde_json::json!({"workflow_id": wf.id}) };
        s.transition(&wf, &[note]).await.unwrap();
        let steps = s.unpublished_steps("c1", 100).await.unwrap();
        let states: Vec<&str> = steps.iter().map(|(_, e)| e.state.as_str()).collect();
        assert_eq!(states, ["permit_wait", "escalated"], "oldest first");
        assert_eq!(steps, s.unpublished_steps("c1", 100).await.unwrap(), "the same ids when read again");
        assert!(s.unpublished_steps("c2", 100).await.unwrap().is_empty(), "each cluster sends its own");
        let due = s.due_webhooks("c1", 10).await.unwrap();
        assert_eq!((due.len(), due[0].event.as_str(), due[0].hook.as_str()), (1, "escalated", "escalation"));
        assert!(due[0].body.contains(&wf.id.to_string()));
        // Still there for a restarted remediator: nothing was marked.
        drop(s);
        let again = Store::open(&url).await.unwrap();
        assert_eq!(again.unpublished_steps("c1", 100).await.unwrap().len(), 2);
        again.mark_published(&[(wf.id, steps[0].0)]).await.unwrap();
        assert_eq!(again.unpublished_steps("c1", 100).await.unwrap()[0].1.state, "escalated");
        // A failed delivery waits; a delivered one is gone.
        let later = ms(Utc::now()) + 60_000;
        again.webhook_failed(due[0].id, 1, later).await.unwrap();
        assert!(again.due_webhooks("c1", 10).await.unwrap().is_empty(), "not due before its retry time");
        again.webhook_failed(due[0].id, 2, 0).await.unwrap();
        assert_eq!(again.due_webhooks("c1", 10).await.unwrap()[0].attempts, 2);
        again.webhook_delivered(due[0].id).await.unwrap();
        assert!(again.due_webhooks("c1", 10).await.unwrap().is_empty());
        // One given up is gone too, and its workflow's step log says so, in the state it is in.
        let note = Note { hook: Hook::Ticket, event: "ticket", body: serde_json::json!({"workflow_id": wf.id}) };
        again.transition(&wf, &[note]).await.unwrap();
        let due = again.due_webhooks("c1", 10).await.unwrap();
        again.webhook_given_up(due[0].id, "the ticket webhook was given up").await.unwrap();
        assert!(again.due_webhooks("c1", 10).await.unwrap().is_empty());
        let steps = again.unpublished_steps("c1", 100).await.unwrap();
        let last = &steps.last().unwrap().1;
        assert_eq!((last.state.as_str(), last.reason.as_str()), ("escalated", "the ticket webhook was given up"));
        let before = steps.len();
        again.webhook_given_up(due[0].id, "again").await.unwrap();
        assert_eq!(again.unpublished_steps("c1", 100).await.unwrap().len(), before, "given up once");
    }

    #[tokio::test]
    async fn the_store_counts_occurrences_and_repairs_for_the_ladder() {
        let (s, _dir) = store().await;
        // Hung tasks: the third within 15 minutes starts a reboot; the first two are recorded.
        for i in 0..2 {
            let hung = fault("n1", FaultKind::KernelHung, Severity::Warning, i);
            let d = s.intake(&hung, &P, LIMIT, None).await.unwrap();
            assert!(matches!(&d, Intake::Ignored(w) if w.contains(&format!("{} of the 3", i + 1))), "{d:?}");
        }
        let wf = started(&s, &fault("n1", FaultKind::KernelHung, Severity::Warning, 2)).await;
        assert_eq!((wf.process.as_str(), wf.rung.clone()), ("hung-tasks", Rung::Reboot));
        assert_eq!(s.open_workflows("c1").await.unwrap()[0].rung_why, wf.rung_why, "the plan is persisted");
        end(&s, &wf, State::Healed).await;
        // After the repair the count starts over: one more hung task is one.
        let d = s.intake(&fault("n1", FaultKind::KernelHung, Severity::Warning, 3), &P, LIMIT, None).await.unwrap();
        assert!(matches!(&d, Intake::Ignored(w) if w.contains("1 of the 3")), "{d:?}");
        // Memory: the first UE reboots; back after a repair that held, a human.
        let mem = started(&s, &fault("n1", FaultKind::MemoryUncorrectable, Severity::Critical, 4)).await;
        assert_eq!(mem.rung, Rung::Reboot, "a repair by another process does not climb this ladder");
        end(&s, &mem, State::Healed).await;
        let again = started(&s, &fault("n1", FaultKind::MemoryUncorrectable, Severity::Critical, 5)).await;
        assert_eq!(again.rung, Rung::Human);
        assert!(again.rung_why.contains(&mem.id.to_string()), "{}", again.rung_why);
        end(&s, &again, State::Escalated).await;
        // An operator's clearing starts the ladder over.
        s.clear_escalation(again.id, "test").await.unwrap();
        let fresh = started(&s, &fault("n1", FaultKind::MemoryUncorrectable, Severity::Critical, 6)).await;
        assert_eq!(fresh.rung, Rung::Reboot, "{}", fresh.rung_why);
    }
}
