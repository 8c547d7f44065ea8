//! The gate's durable state through `sqlx`: SQLite (one replica) or PostgreSQL (several).
//!
//! Exactness: every batch of decisions runs in one transaction that first takes the gate's lock
//! — `pg_advisory_xact_lock` on PostgreSQL, held until commit; on SQLite the single connection
//! of the pool serialises transactions — then sweeps expired permits, loads the world, decides
//! and writes: the batch's renewals and releases (the permits they name read in one statement,
//! changed in memory, written in one more), then its decisions (the new permits and the log
//! each in one multi-row insert). No two decisions anywhere see the same budget. The sweeper,
//! which expires permits, takes the same lock: every write to a permit holds it.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, TimeDelta, Utc};
use firebreak_schema::{
    BreakerTrip, Change, Decision, Halt, HaltRequest, HealthSample, Operation, Permit, PermitRequest, PermitState,
    Scope,
};
use sqlx::{AnyPool, Row, any::AnyRow};
use uuid::Uuid;

use crate::{
    Error, Result,
    decide::{Grant, Outcome, World, decide},
    policy::Policy,
};

/// Decisions the decision log's trim deletes in one statement (see [`Store::trim_decisions`]).
const TRIM_ROWS: i64 = 500;

/// The advisory lock every decision batch holds on PostgreSQL.
const GATE_LOCK: i64 = 0x0066_6972_6562_726b;

/// The gate's database.
#[derive(Clone)]
pub(crate) struct Store {
    pool: AnyPool,
    /// The SQLite WAL's background checkpoints, while the store lives.
    _checkpoints: firebreak_plumbing::db::Checkpoints,
    postgres: bool,
}

/// What became of a renewal or a release.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum PermitChange {
    /// Done; the permit as it is now.
    Done(Permit),
    /// No such permit.
    Unknown,
    /// Held by another token, and the caller may not act for it.
    NotYours(String),
    /// It already ended (released or expired).
    Ended(Permit),
}

fn ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

fn time(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

fn corrupt(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Corrupt(format!("{what}: {e}"))
}

fn number(r: &AnyRow, column: &str) -> Result<Option<f64>> {
    r.try_get::<Option<String>, _>(column)?.map(|s| s.parse().map_err(|e| corrupt(column, e))).transpose()
}

fn permit_of(r: &AnyRow) -> Result<Permit> {
    let state = match r.try_get::<String, _>("state")?.as_str() {
        "active" => PermitState::Active,
        "released" => PermitState::Released,
        "expired" => PermitState::Expired,
        other => return Err(corrupt("permit state", other)),
    };
    Ok(Permit {
        id: r.try_get::<String, _>("id")?.parse().map_err(|e| corrupt("permit id", e))?,
        operation: r.try_get::<String, _>("operation")?.parse().map_err(|e| corrupt("operation", e))?,
        cluster: r.try_get("cluster")?,
        node: r.try_get("node")?,
        domains: serde_json::from_str(&r.try_get::<String, _>("domains")?).map_err(|e| corrupt("domains", e))?,
        requester: r.try_get("requester")?,
        holder: r.try_get("holder")?,
        state,
        granted_at: time(r.try_get("granted_at_ms")?),
        expires_at: time(r.try_get("expires_at_ms")?),
        ended_at: r.try_get::<Option<i64>, _>("ended_at_ms")?.map(time),
    })
}

const PERMIT_COLUMNS: &str =
    "id, operation, cluster, node, domains, requester, holder, state, granted_at_ms, expires_at_ms, ended_at_ms";

fn scope_text(s: &Scope) -> Result<String> {
    serde_json::to_string(s).map_err(|e| corrupt("scope", e))
}

fn scope_of(text: &str) -> Result<Scope> {
    serde_json::from_str(text).map_err(|e| corrupt("scope", e))
}

fn halt_of(r: &AnyRow) -> Result<Halt> {
    Ok(Halt {
        id: r.try_get::<String, _>("id")?.parse().map_err(|e| corrupt("halt id", e))?,
        scope: scope_of(&r.try_get::<String, _>("scope")?)?,
        operations: serde_json::from_str(&r.try_get::<String, _>("operations")?)
            .map_err(|e| corrupt("operations", e))?,
        reason: r.try_get("reason")?,
        by: r.try_get("by_name")?,
        at: time(r.try_get("at_ms")?),
        resumed_at: r.try_get::<Option<i64>, _>("resumed_at_ms")?.map(time),
        resumed_by: r.try_get("resumed_by")?,
        source: r.try_get("source")?,
        signals: match r.try_get::<Option<String>, _>("signals")? {
            Some(t) => serde_json::from_str(&t).map_err(|e| corrupt("halt signals", e))?,
            None => Vec::new(),
        },
    })
}

fn trip_of(r: &AnyRow) -> Result<BreakerTrip> {
    Ok(BreakerTrip {
        operation: r.try_get::<String, _>("operation")?.parse().map_err(|e| corrupt("operation", e))?,
        scope: scope_of(&r.try_get::<String, _>("scope")?)?,
        tripped_at: time(r.try_get("tripped_at_ms")?),
        reason: r.try_get("reason")?,
        until: r.try_get::<Option<i64>, _>("until_ms")?.map(time),
        reset_at: r.try_get::<Option<i64>, _>("reset_at_ms")?.map(time),
        reset_by: r.try_get("reset_by")?,
    })
}

impl Store {
    /// Connects and migrates.
    pub(crate) async fn open(url: &str) -> Result<Self> {
        let (pool, checkpoints) = firebreak_plumbing::db::open(url, sqlx::migrate!("./migrations"), 8).await?;
        Ok(Self { pool, _checkpoints: checkpoints, postgres: url.starts_with("postgres") })
    }

    /// Runs a batch in one locked transaction: renewals and releases first (a released budget
    /// is free for the requests of the same batch), then the decisions, in order. Also returns
    /// the permits found expired (abandoned by their holders) on the way.
    pub(crate) async fn run_batch(
        &self,
        policy: &Policy,
        ops: &[Op],
        snapshots: &std::sync::Arc<HashMap<String, HealthSample>>,
        now: DateTime<Utc>,
    ) -> Result<(Vec<Done>, Vec<Permit>)> {
        let mut tx = self.pool.begin().await?;
        if self.postgres {
            sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(GATE_LOCK).execute(&mut *tx).await?;
        }
        let abandoned = expire(&mut tx, now).await?;
        let mut done: Vec<Option<Done>> = vec![None; ops.len()];
        change_permits(&mut tx, ops, &mut done, now).await?;
        let asked: std::collections::BTreeSet<Operation> = ops
            .iter()
            .filter_map(|o| match o {
                Op::Decide(r, _) => Some(r.operation),
                _ => None,
            })
            .collect();
        if !asked.is_empty() {
            let mut world = load_world(&mut tx, policy, &asked, now).await?;
            world.snapshots = snapshots.clone();
            let loaded = world.tats.clone();
            let mut granted = Vec::new();
            let mut decisions = Vec::new();
            for (i, op) in ops.iter().enumerate() {
                let Op::Decide(req, holder) = op else { continue };
                let o = decide(policy, &mut world, req, holder, now);
                if let Outcome::Granted(p, _) = &o {
                    granted.push(p.clone());
                }
                if let Outcome::Denied(_, Some(trip)) = &o {
                    write_trip(&mut tx, trip).await?;
                }
                let d = decision_of(req, holder, &o, now);
                decisions.push(d.clone());
                done[i] = Some(Done::Decided(Box::new((o, d))));
            }
            insert_permits(&mut tx, &granted).await?;
            insert_decisions(&mut tx, &decisions).await?;
            // Only the rate states that moved.
            let mut moved: Vec<(&(Operation, String), &DateTime<Utc>)> =
                world.tats.iter().filter(|(k, v)| loaded.get(*k) != Some(*v)).collect();
            moved.sort_by_key(|(k, _)| *k);
            write_tats(&mut tx, &moved).await?;
        }
        tx.commit().await?;
        let done: Result<Vec<Done>> =
            done.into_iter().map(|d| d.ok_or_else(|| Error::Corrupt("a batch entry was not run".into()))).collect();
        Ok((done?, abandoned))
    }
}

/// One entry of a batch.
#[derive(Debug, Clone)]
pub(crate) enum Op {
    /// Decide a request made with the named token.
    Decide(PermitRequest, String),
    /// Extend a permit by `ttl`, if `caller` holds it (or `any` is set).
    Renew { id: Uuid, caller: String, any: bool, ttl: TimeDelta },
    /// End a permit as released, if `caller` holds it (or `any` is set).
    Release { id: Uuid, caller: String, any: bool },
}

/// What a batch entry came to.
#[derive(Debug, Clone)]
pub(crate) enum Done {
    /// A decision.
    Decided(Box<(Outcome, Decision)>),
    /// A renewal or release.
    Changed(PermitChange),
}

async fn write_tats(tx: &mut Tx<'_>, tats: &[(&(Operation, String), &DateTime<Utc>)]) -> Result<()> {
    for chunk in tats.chunks(ROWS) {
        let sql = format!(
            "INSERT INTO gate_rate (operation, scope, tat_ms) VALUES {} \
             ON CONFLICT (operation, scope) DO UPDATE SET tat_ms = excluded.tat_ms",
            values(tx, chunk.len(), 3)
        );
        let mut q = sqlx::query(&sql);
        for ((op, scope), tat) in chunk {
            q = q.bind(op.as_str()).bind(scope.clone()).bind(ms(**tat));
        }
        q.execute(&mut **tx).await?;
    }
    Ok(())
}

/// Most rows one multi-row statement writes (at most 14 parameters a row: under every
/// database's parameter limit).
const ROWS: usize = 256;

impl Store {
    /// Marks expired permits and trims the decision log to `keep` entries and ended permits to
    /// those still inside any window a rule looks back over.
    pub(crate) async fn sweep(&self, policy: &Policy, now: DateTime<Utc>) -> Result<Vec<Permit>> {
        let mut tx = self.pool.begin().await?;
        // Permits change only under the lock (a batch reads them, then writes what it decided).
        if self.postgres {
            sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(GATE_LOCK).execute(&mut *tx).await?;
        }
        let abandoned = expire(&mut tx, now).await?;
        sqlx::query("DELETE FROM gate_permits WHERE state <> 'active' AND granted_at_ms < $1")
            .bind(ms(now - lookback(policy) - TimeDelta::days(1)))
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        self.trim_decisions(policy.decision_log_entries, TRIM_ROWS).await?;
        Ok(abandoned)
    }

    /// Deletes the decisions older than the newest `keep` (those of the same millisecond as the
    /// `keep`th stay too), at most `chunk` a statement, each its own transaction, so that the
    /// trim never holds SQLite's one connection much longer than a decision batch does: a gate
    /// deciding thousands of requests a second (`bench gate`) has tens of thousands to trim at
    /// every sweep. Returns how many went.
    async fn trim_decisions(&self, keep: u32, chunk: i64) -> Result<u64> {
        let cutoff: Option<i64> =
            sqlx::query_scalar("SELECT at_ms FROM gate_decisions ORDER BY at_ms DESC LIMIT 1 OFFSET $1")
                .bind(i64::from(keep) - 1)
                .fetch_optional(&self.pool)
                .await?;
        let Some(cutoff) = cutoff else { return Ok(0) };
        let mut trimmed = 0;
        loop {
            let deleted = sqlx::query(
                "DELETE FROM gate_decisions WHERE id IN \
                 (SELECT id FROM gate_decisions WHERE at_ms < $1 ORDER BY at_ms LIMIT $2)",
            )
            .bind(cutoff)
            .bind(chunk)
            .execute(&self.pool)
            .await?
            .rows_affected();
            trimmed += deleted;
            if deleted < chunk.max(1) as u64 {
                return Ok(trimmed);
            }
        }
    }

    /// Active permits.
    pub(crate) async fn active_permits(&self, now: DateTime<Utc>) -> Result<Vec<Permit>> {
        let rows = sqlx::query(&format!(
            "SELECT {PERMIT_COLUMNS} FROM gate_permits WHERE state = 'active' AND expires_at_ms > $1 ORDER BY granted_at_ms"
        ))
        .bind(ms(now))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(permit_of).collect()
    }

    /// The newest decisions first, at most `limit`.
    pub(crate) async fn decisions(&self, limit: i64) -> Result<Vec<Decision>> {
        let rows = sqlx::query(
            "SELECT id, at_ms, operation, cluster, node, requester, holder, granted, rule, scope, measured, threshold, \
             reason, permit_id FROM gate_decisions ORDER BY at_ms DESC, id DESC LIMIT $1",
        )
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(Decision {
                    id: r.try_get::<String, _>("id")?.parse().map_err(|e| corrupt("decision id", e))?,
                    at: time(r.try_get("at_ms")?),
                    operation: r.try_get::<String, _>("operation")?.parse().map_err(|e| corrupt("operation", e))?,
                    cluster: r.try_get("cluster")?,
                    node: r.try_get("node")?,
                    requester: r.try_get("requester")?,
                    holder: r.try_get("holder")?,
                    granted: r.try_get::<i32, _>("granted")? == 1,
                    rule: r.try_get("rule")?,
                    scope: r.try_get("scope")?,
                    measured: number(r, "measured")?,
                    threshold: number(r, "threshold")?,
                    reason: r.try_get("reason")?,
                    permit_id: r
                        .try_get::<Option<String>, _>("permit_id")?
                        .map(|s| s.parse().map_err(|e| corrupt("permit id", e)))
                        .transpose()?,
                })
            })
            .collect()
    }

    /// Halts in force, oldest first.
    pub(crate) async fn halts(&self) -> Result<Vec<Halt>> {
        let rows = sqlx::query("SELECT * FROM gate_halts WHERE resumed_at_ms IS NULL ORDER BY at_ms")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(halt_of).collect()
    }

    /// Records a halt. One raised by a rule or a change (`source`) is recorded only if no halt
    /// of the same source and scope is in force (`None` then), under the gate's lock.
    pub(crate) async fn halt(
        &self,
        req: &HaltRequest,
        by: &str,
        source: Option<&str>,
        signals: &[firebreak_schema::Measurement],
        now: DateTime<Utc>,
    ) -> Result<Option<Halt>> {
        let h = Halt {
            id: Uuid::now_v7(),
            scope: req.scope.clone(),
            operations: req.operations.clone(),
            reason: req.reason.clone(),
            by: by.into(),
            at: now,
            resumed_at: None,
            resumed_by: None,
            source: source.map(str::to_owned),
            signals: signals.to_vec(),
        };
        let mut tx = self.pool.begin().await?;
        if self.postgres {
            sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(GATE_LOCK).execute(&mut *tx).await?;
        }
        if let Some(source) = source {
            let held =
                sqlx::query("SELECT id FROM gate_halts WHERE source = $1 AND scope = $2 AND resumed_at_ms IS NULL")
                    .bind(source)
                    .bind(scope_text(&h.scope)?)
                    .fetch_optional(&mut *tx)
                    .await?;
            if held.is_some() {
                return Ok(None);
            }
        }
        sqlx::query(
            "INSERT INTO gate_halts (id, scope, operations, reason, by_name, at_ms, source, signals) \
             VALUES ($1,$2,$3,$4,$5,$6,$7,$8)",
        )
        .bind(h.id.to_string())
        .bind(scope_text(&h.scope)?)
        .bind(serde_json::to_string(&h.operations).map_err(|e| corrupt("operations", e))?)
        .bind(&h.reason)
        .bind(&h.by)
        .bind(ms(now))
        .bind(h.source.clone())
        .bind(serde_json::to_string(&h.signals).map_err(|e| corrupt("signals", e))?)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Some(h))
    }

    /// Halts in force raised by `source`.
    pub(crate) async fn halts_from(&self, source: &str) -> Result<Vec<Halt>> {
        let rows = sqlx::query("SELECT * FROM gate_halts WHERE source = $1 AND resumed_at_ms IS NULL ORDER BY at_ms")
            .bind(source)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(halt_of).collect()
    }

    /// A change.
    pub(crate) async fn change(&self, id: &str) -> Result<Option<(Change, i64)>> {
        let row = sqlx::query("SELECT body, version FROM gate_changes WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| {
            let c: Change = serde_json::from_str(&r.try_get::<String, _>("body")?).map_err(|e| corrupt("change", e))?;
            Ok((c, r.try_get::<i64, _>("version")?))
        })
        .transpose()
    }

    /// The most recently changed changes, at most `limit`.
    pub(crate) async fn changes(&self, limit: i64) -> Result<Vec<Change>> {
        let rows = sqlx::query("SELECT body FROM gate_changes ORDER BY updated_at_ms DESC LIMIT $1")
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| serde_json::from_str(&r.try_get::<String, _>("body")?).map_err(|e| corrupt("change", e)))
            .collect()
    }

    /// Writes a change if it is still at `version` (`None`: it must be new); false if someone
    /// else changed (or created) it first.
    pub(crate) async fn put_change(&self, c: &Change, version: Option<i64>) -> Result<bool> {
        let body = serde_json::to_string(c).map_err(|e| corrupt("change", e))?;
        let done = match version {
            None => {
                sqlx::query(
                    "INSERT INTO gate_changes (id, cluster, state, version, body, updated_at_ms) \
                     VALUES ($1,$2,$3,1,$4,$5) ON CONFLICT (id) DO NOTHING",
                )
                .bind(&c.spec.id)
                .bind(&c.spec.cluster)
                .bind(c.state.as_str())
                .bind(body)
                .bind(ms(c.updated_at))
                .execute(&self.pool)
                .await?
            }
            Some(v) => {
                sqlx::query(
                    "UPDATE gate_changes SET state = $2, version = version + 1, body = $3, updated_at_ms = $4 \
                     WHERE id = $1 AND version = $5",
                )
                .bind(&c.spec.id)
                .bind(c.state.as_str())
                .bind(body)
                .bind(ms(c.updated_at))
                .bind(v)
                .execute(&self.pool)
                .await?
            }
        };
        Ok(done.rows_affected() == 1)
    }

    /// Lifts a halt; `None` if it is unknown or already lifted.
    pub(crate) async fn resume(&self, id: Uuid, by: &str, now: DateTime<Utc>) -> Result<Option<Halt>> {
        let done = sqlx::query(
            "UPDATE gate_halts SET resumed_at_ms = $2, resumed_by = $3 WHERE id = $1 AND resumed_at_ms IS NULL",
        )
        .bind(id.to_string())
        .bind(ms(now))
        .bind(by)
        .execute(&self.pool)
        .await?;
        if done.rows_affected() == 0 {
            return Ok(None);
        }
        let row =
            sqlx::query("SELECT * FROM gate_halts WHERE id = $1").bind(id.to_string()).fetch_one(&self.pool).await?;
        halt_of(&row).map(Some)
    }

    /// Breakers open at `now`.
    pub(crate) async fn open_breakers(&self, now: DateTime<Utc>) -> Result<Vec<BreakerTrip>> {
        let rows = sqlx::query(
            "SELECT * FROM gate_breakers WHERE reset_at_ms IS NULL AND (until_ms IS NULL OR until_ms > $1) ORDER BY tripped_at_ms",
        )
        .bind(ms(now))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(trip_of).collect()
    }

    /// Closes the open breakers of an operation in a scope; how many were open.
    pub(crate) async fn reset_breaker(
        &self,
        op: Operation,
        scope: &Scope,
        by: &str,
        now: DateTime<Utc>,
    ) -> Result<u64> {
        let done = sqlx::query(
            "UPDATE gate_breakers SET reset_at_ms = $3, reset_by = $4 WHERE operation = $1 AND scope = $2 \
             AND reset_at_ms IS NULL",
        )
        .bind(op.as_str())
        .bind(scope_text(scope)?)
        .bind(ms(now))
        .bind(by)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    /// Keeps a snapshot if it is newer than the one kept.
    pub(crate) async fn put_snapshot(&self, s: &HealthSample) -> Result<()> {
        let body = serde_json::to_string(s).map_err(|e| corrupt("snapshot", e))?;
        sqlx::query(
            "INSERT INTO gate_snapshots (cluster, at_ms, body) VALUES ($1, $2, $3) ON CONFLICT (cluster) DO UPDATE \
             SET at_ms = excluded.at_ms, body = excluded.body WHERE gate_snapshots.at_ms < excluded.at_ms",
        )
        .bind(&s.cluster)
        .bind(ms(s.at))
        .bind(body)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The kept snapshots.
    pub(crate) async fn snapshots(&self) -> Result<HashMap<String, HealthSample>> {
        let rows = sqlx::query("SELECT body FROM gate_snapshots").fetch_all(&self.pool).await?;
        rows.iter()
            .map(|r| {
                let s: HealthSample =
                    serde_json::from_str(&r.try_get::<String, _>("body")?).map_err(|e| corrupt("snapshot", e))?;
                Ok((s.cluster.clone(), s))
            })
            .collect()
    }
}

/// How far back any rule looks: a minute for rates, or the longest breaker window.
fn lookback(policy: &Policy) -> TimeDelta {
    let longest = policy.operations.values().filter_map(|o| o.breaker.as_ref()).map(|b| b.window).max();
    longest.and_then(|w| TimeDelta::from_std(w).ok()).unwrap_or_default().max(TimeDelta::minutes(1))
}

type Tx<'a> = sqlx::Transaction<'a, sqlx::Any>;

/// Marks lapsed permits expired; returns them.
async fn expire(tx: &mut Tx<'_>, now: DateTime<Utc>) -> Result<Vec<Permit>> {
    let rows = sqlx::query(&format!(
        "UPDATE gate_permits SET state = 'expired', ended_at_ms = $1, ended_by = 'expiry' \
         WHERE state = 'active' AND expires_at_ms <= $1 RETURNING {PERMIT_COLUMNS}"
    ))
    .bind(ms(now))
    .fetch_all(&mut **tx)
    .await?;
    rows.iter().map(permit_of).collect()
}

/// The world the decisions on `asked` operations read: past grants only of operations whose
/// rules count them (a rate or a breaker).
async fn load_world(
    tx: &mut Tx<'_>,
    policy: &Policy,
    asked: &std::collections::BTreeSet<Operation>,
    now: DateTime<Utc>,
) -> Result<World> {
    let active = sqlx::query(&format!("SELECT {PERMIT_COLUMNS} FROM gate_permits WHERE state = 'active'"))
        .fetch_all(&mut **tx)
        .await?
        .iter()
        .map(permit_of)
        .collect::<Result<Vec<_>>>()?;
    let mut tats = HashMap::new();
    for r in sqlx::query("SELECT operation, scope, tat_ms FROM gate_rate").fetch_all(&mut **tx).await? {
        let op: Operation = r.try_get::<String, _>("operation")?.parse().map_err(|e| corrupt("operation", e))?;
        tats.insert((op, r.try_get("scope")?), time(r.try_get("tat_ms")?));
    }
    let counted: Vec<&str> = asked
        .iter()
        .filter(|op| {
            policy.operations.get(op).is_some_and(|o| {
                o.breaker.is_some()
                    || [&o.global, &o.cluster, &o.domain]
                        .iter()
                        .any(|l| l.as_ref().is_some_and(|l| l.rate_per_minute.is_some()))
            })
        })
        .map(|op| op.as_str())
        .collect();
    let mut grants = Vec::new();
    let rows = if counted.is_empty() {
        Vec::new()
    } else {
        // The operation names are ours (`Operation::as_str`), not input.
        let list = counted.iter().map(|o| format!("'{o}'")).collect::<Vec<_>>().join(",");
        sqlx::query(&format!(
            "SELECT operation, cluster, domains, granted_at_ms FROM gate_permits WHERE granted_at_ms > $1 \
             AND operation IN ({list})"
        ))
        .bind(ms(now - lookback(policy)))
        .fetch_all(&mut **tx)
        .await?
    };
    for r in rows {
        grants.push(Grant {
            operation: r.try_get::<String, _>("operation")?.parse().map_err(|e| corrupt("operation", e))?,
            cluster: r.try_get("cluster")?,
            domains: serde_json::from_str::<BTreeMap<String, String>>(&r.try_get::<String, _>("domains")?)
                .map_err(|e| corrupt("domains", e))?,
            at: time(r.try_get("granted_at_ms")?),
        });
    }
    let halts = sqlx::query("SELECT * FROM gate_halts WHERE resumed_at_ms IS NULL")
        .fetch_all(&mut **tx)
        .await?
        .iter()
        .map(halt_of)
        .collect::<Result<Vec<_>>>()?;
    let trips =
        sqlx::query("SELECT * FROM gate_breakers WHERE reset_at_ms IS NULL AND (until_ms IS NULL OR until_ms > $1)")
            .bind(ms(now))
            .fetch_all(&mut **tx)
            .await?
            .iter()
            .map(trip_of)
            .collect::<Result<Vec<_>>>()?;
    let mut closed = HashMap::new();
    for r in sqlx::query(
        "SELECT operation, scope, reset_at_ms, until_ms FROM gate_breakers WHERE reset_at_ms IS NOT NULL OR until_ms <= $1",
    )
    .bind(ms(now))
    .fetch_all(&mut **tx)
    .await?
    {
        let op: Operation = r.try_get::<String, _>("operation")?.parse().map_err(|e| corrupt("operation", e))?;
        let scope = scope_of(&r.try_get::<String, _>("scope")?)?.to_string();
        let reset: Option<i64> = r.try_get("reset_at_ms")?;
        let until: Option<i64> = r.try_get("until_ms")?;
        let Some(at) = reset.or(until).map(time) else { continue };
        let e = closed.entry((op, scope)).or_insert(at);
        *e = (*e).max(at);
    }
    Ok(World { active, tats, grants, halts, trips, closed, snapshots: Default::default() })
}

/// Keeps a breaker's trip.
async fn write_trip(tx: &mut Tx<'_>, trip: &BreakerTrip) -> Result<()> {
    sqlx::query(
        "INSERT INTO gate_breakers (id, operation, scope, tripped_at_ms, reason, until_ms) VALUES ($1,$2,$3,$4,$5,$6)",
    )
    .bind(Uuid::now_v7().to_string())
    .bind(trip.operation.as_str())
    .bind(scope_text(&trip.scope)?)
    .bind(ms(trip.tripped_at))
    .bind(&trip.reason)
    .bind(trip.until.map(ms))
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// A decision as the log keeps it.
fn decision_of(req: &PermitRequest, holder: &str, o: &Outcome, now: DateTime<Utc>) -> Decision {
    let r = o.response();
    Decision {
        id: Uuid::now_v7(),
        at: now,
        operation: req.operation,
        cluster: req.cluster.clone(),
        node: req.node.clone(),
        requester: req.requester.clone(),
        holder: holder.to_owned(),
        granted: r.granted,
        rule: r.limit,
        scope: r.scope,
        measured: r.measured,
        threshold: r.threshold,
        reason: r.reason,
        permit_id: r.permit_id,
    }
}

/// `n` rows of `cols` placeholders each: `($1,$2),($3,$4)` (bare `?` on SQLite).
fn values(tx: &Tx<'_>, n: usize, cols: usize) -> String {
    let p = firebreak_plumbing::db::placeholders(tx, n * cols);
    p.chunks(cols).map(|r| format!("({})", r.join(","))).collect::<Vec<_>>().join(",")
}

/// Inserts new permits, a statement per [`ROWS`].
async fn insert_permits(tx: &mut Tx<'_>, permits: &[Permit]) -> Result<()> {
    for chunk in permits.chunks(ROWS) {
        let sql = format!("INSERT INTO gate_permits ({PERMIT_COLUMNS}) VALUES {}", values(tx, chunk.len(), 11));
        let mut q = sqlx::query(&sql);
        for p in chunk {
            q = q
                .bind(p.id.to_string())
                .bind(p.operation.as_str())
                .bind(p.cluster.clone())
                .bind(p.node.clone())
                .bind(serde_json::to_string(&p.domains).map_err(|e| corrupt("domains", e))?)
                .bind(p.requester.clone())
                .bind(p.holder.clone())
                .bind(state_text(p.state))
                .bind(ms(p.granted_at))
                .bind(ms(p.expires_at))
                .bind(p.ended_at.map(ms));
        }
        q.execute(&mut **tx).await?;
    }
    Ok(())
}

/// Appends decisions to the log, a statement per [`ROWS`].
async fn insert_decisions(tx: &mut Tx<'_>, decisions: &[Decision]) -> Result<()> {
    for chunk in decisions.chunks(ROWS) {
        let sql = format!(
            "INSERT INTO gate_decisions (id, at_ms, operation, cluster, node, requester, holder, granted, rule, scope, \
             measured, threshold, reason, permit_id) VALUES {}",
            values(tx, chunk.len(), 14)
        );
        let mut q = sqlx::query(&sql);
        for d in chunk {
            q = q
                .bind(d.id.to_string())
                .bind(ms(d.at))
                .bind(d.operation.as_str())
                .bind(d.cluster.clone())
                .bind(d.node.clone())
                .bind(d.requester.clone())
                .bind(d.holder.clone())
                .bind(i32::from(d.granted))
                .bind(d.rule.clone())
                .bind(d.scope.clone())
                .bind(d.measured.map(|v| v.to_string()))
                .bind(d.threshold.map(|v| v.to_string()))
                .bind(d.reason.clone())
                .bind(d.permit_id.map(|p| p.to_string()));
        }
        q.execute(&mut **tx).await?;
    }
    Ok(())
}

fn state_text(s: PermitState) -> &'static str {
    match s {
        PermitState::Active => "active",
        PermitState::Released => "released",
        PermitState::Expired => "expired",
    }
}

/// Runs a batch's renewals and releases, in order, on the permits they name, read in one
/// statement; writes what changed in one more. Exact because every writer of permits holds the
/// gate's lock (see the module's doc).
async fn change_permits(tx: &mut Tx<'_>, ops: &[Op], done: &mut [Option<Done>], now: DateTime<Utc>) -> Result<()> {
    let ids: std::collections::BTreeSet<Uuid> = ops
        .iter()
        .filter_map(|o| match o {
            Op::Renew { id, .. } | Op::Release { id, .. } => Some(*id),
            Op::Decide(..) => None,
        })
        .collect();
    if ids.is_empty() {
        return Ok(());
    }
    let ids: Vec<Uuid> = ids.into_iter().collect();
    let mut known: HashMap<Uuid, (Permit, Option<String>)> = HashMap::new();
    for chunk in ids.chunks(ROWS) {
        let p = firebreak_plumbing::db::placeholders(tx, chunk.len());
        let sql = format!("SELECT {PERMIT_COLUMNS} FROM gate_permits WHERE id IN ({})", p.join(","));
        let mut q = sqlx::query(&sql);
        for id in chunk {
            q = q.bind(id.to_string());
        }
        for row in q.fetch_all(&mut **tx).await? {
            let p = permit_of(&row)?;
            known.insert(p.id, (p, None));
        }
    }
    let mut changed = std::collections::BTreeSet::new();
    for (op, slot) in ops.iter().zip(done.iter_mut()) {
        let (id, caller, any) = match op {
            Op::Renew { id, caller, any, .. } | Op::Release { id, caller, any } => (id, caller, *any),
            Op::Decide(..) => continue,
        };
        let Some((p, ended_by)) = known.get_mut(id) else {
            *slot = Some(Done::Changed(PermitChange::Unknown));
            continue;
        };
        let change = if p.state == PermitState::Active && p.expires_at <= now {
            // Lapsed, not yet swept: it is over all the same.
            let mut p = p.clone();
            p.state = PermitState::Expired;
            PermitChange::Ended(p)
        } else if p.state != PermitState::Active {
            PermitChange::Ended(p.clone())
        } else if !any && p.holder != *caller {
            PermitChange::NotYours(p.holder.clone())
        } else {
            match op {
                Op::Renew { ttl, .. } => p.expires_at = now + *ttl,
                _ => {
                    p.state = PermitState::Released;
                    p.ended_at = Some(now);
                    *ended_by = Some(caller.clone());
                }
            }
            changed.insert(*id);
            PermitChange::Done(p.clone())
        };
        *slot = Some(Done::Changed(change));
    }
    let changed: Vec<&(Permit, Option<String>)> = changed.iter().filter_map(|id| known.get(id)).collect();
    for chunk in changed.chunks(ROWS) {
        let sql = format!(
            "UPDATE gate_permits SET state = v.column2, expires_at_ms = v.column3, ended_at_ms = v.column4, \
             ended_by = v.column5 FROM (VALUES {}) AS v WHERE gate_permits.id = v.column1",
            values(tx, chunk.len(), 5)
        );
        let mut q = sqlx::query(&sql);
        for (p, ended_by) in chunk {
            q = q
                .bind(p.id.to_string())
                .bind(state_text(p.state))
                .bind(ms(p.expires_at))
                .bind(p.ended_at.map(ms))
                .bind(ended_by.clone());
        }
        q.execute(&mut **tx).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decision(at_ms: i64) -> Decision {
        Decision {
            id: Uuid::now_v7(),
            at: DateTime::from_timestamp_millis(at_ms).unwrap(),
            operation: Operation::Cordon,
            cluster: "c1".into(),
            node: Some("n1".into()),
            requester: "r".into(),
            holder: "r".into(),
            granted: true,
            rule: None,
            scope: None,
            measured: None,
            threshold: None,
            reason: "test".into(),
            permit_id: None,
        }
    }

    /// The decision log keeps its newest entries, however many statements its trim takes.
    #[tokio::test]
    async fn the_decision_log_keeps_its_newest_entries_trimmed_a_chunk_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&format!("sqlite://{}", dir.path().join("g.db").display())).await.unwrap();
        assert_eq!(store.trim_decisions(5, 3).await.unwrap(), 0, "an empty log");
        let mut tx = store.pool.begin().await.unwrap();
        insert_decisions(&mut tx, &(0..23).map(|i| decision(1_000 + i)).collect::<Vec<_>>()).await.unwrap();
        tx.commit().await.unwrap();
        assert_eq!(store.trim_decisions(5, 3).await.unwrap(), 18, "six statements of three");
        let left: Vec<i64> = store.decisions(100).await.unwrap().iter().map(|d| d.at.timestamp_millis()).collect();
        assert_eq!(left, [1022, 1021, 1020, 1019, 1018], "the newest five");
        assert_eq!(store.trim_decisions(5, 3).await.unwrap(), 0, "nothing more");
    }
}
