//! The durable store, through `sqlx`'s `Any` driver: SQLite (embedded, the default) or
//! PostgreSQL, chosen by the URL. Migrations are embedded and portable between both.

mod incidents;

use std::str::FromStr;

use chrono::{DateTime, SecondsFormat, Utc};
use firebreak_schema::{
    Change, Decision, EventRecord, FaultClass, FaultEvent, Halt, HealthSample, RemediationEvent, Topology,
};
use sqlx::{Any, AnyPool, Row};

use crate::{Error, Result};

pub use incidents::{
    Action, Changed, ClusterSummary, Entry, IncidentDetail, IncidentPage, IncidentQuery, NodeTimeline, PendingCall,
    Rules, WebhookCall,
};

/// `GET /api/v1/events` parameters; an empty one is none, as on every list.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventFilter {
    /// Only this cluster.
    pub cluster: Option<String>,
    /// Only this node.
    pub node: Option<String>,
    /// Only this class.
    pub class: Option<String>,
    /// At most this many (default 100, at most 1000).
    pub limit: Option<i64>,
}

/// `GET /api/v1/remediations` parameters; an empty one is none.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepFilter {
    /// Only this cluster.
    pub cluster: Option<String>,
    /// Only this node.
    pub node: Option<String>,
    /// At most this many (default 100, at most 1000).
    pub limit: Option<i64>,
}

/// `GET /api/v1/gate`: what the gate's topic and the health topic last said.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct GateView {
    /// Each cluster's latest health sample.
    pub clusters: Vec<HealthSample>,
    /// Halts in force.
    pub halts: Vec<Halt>,
    /// The most recently updated changes.
    pub changes: Vec<Change>,
}

/// What one round of retention deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Retained {
    /// Faults.
    pub faults: u64,
    /// Remediation steps.
    pub steps: u64,
    /// Resolved incidents.
    pub incidents: u64,
}

/// The event center's database.
#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    /// The SQLite WAL's background checkpoints, while the store lives.
    _checkpoints: firebreak_plumbing::db::Checkpoints,
    rules: Rules,
}

// Times are stored as RFC 3339 text (what the API shows) beside milliseconds since the epoch
// (what queries sort and filter on): sqlx's `Any` driver, which keeps one code path for SQLite and
// PostgreSQL, has no date-time type, so chrono formats and parses them here.
fn fmt(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

/// How far in the future an event was observed, in milliseconds, when that is beyond
/// [`CLOCK_SKEW_BOUND`]: its source's clock is wrong.
fn skew_ms(e: &FaultEvent, received_at: DateTime<Utc>) -> Option<i64> {
    let skew = ms(e.observed_at) - ms(received_at);
    (skew > CLOCK_SKEW_BOUND.num_milliseconds()).then_some(skew)
}

fn ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

fn parse_time(s: &str) -> Result<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| Error::Corrupt(format!("time `{s}`: {e}")))
}

/// How far in the future (past its receive time) an event's observation time may be before it is
/// not trusted: more is a wrong clock, not transit.
pub const CLOCK_SKEW_BOUND: chrono::TimeDelta = chrono::TimeDelta::minutes(5);

impl Store {
    /// Connects and migrates, with the default [`Rules`].
    pub async fn open(url: &str) -> Result<Self> {
        Self::open_with(url, Rules::default()).await
    }

    /// Connects and migrates; incidents follow `rules`.
    pub async fn open_with(url: &str, rules: Rules) -> Result<Self> {
        let (pool, checkpoints) = firebreak_plumbing::db::open(url, sqlx::migrate!("./migrations"), 8).await?;
        Ok(Self { pool, _checkpoints: checkpoints, rules })
    }

    /// Stores events in one transaction (all or none), as multi-row inserts, and counts the new
    /// ones into their incidents in the same transaction (so an occurrence is counted exactly
    /// once, whatever is replayed); for each event, its record, or `None` if an event with that
    /// id was already stored (or came earlier in the same batch); and what changed. An event
    /// observed more than [`CLOCK_SKEW_BOUND`] after it was received is kept, flagged with its
    /// skew, and ordered by its receive time.
    pub async fn insert_faults(&self, events: &[FaultEvent]) -> Result<(Vec<Option<EventRecord>>, Changed)> {
        // Rows per statement: 18 parameters each, well under SQLite's and PostgreSQL's limits.
        const ROWS: usize = 200;
        const COLS: usize = 18;
        let received_at = Utc::now();
        let mut first = std::collections::HashSet::new();
        let fresh: Vec<bool> = events.iter().map(|e| first.insert(e.id)).collect();
        let mut tx = self.pool.begin().await?;
        let batch: Vec<&FaultEvent> = events.iter().zip(&fresh).filter(|(_, f)| **f).map(|(e, _)| e).collect();
        // Which are stored already (replays): only the others are counted.
        let mut stored = std::collections::HashSet::new();
        for chunk in batch.chunks(500) {
            let params = firebreak_plumbing::db::placeholders(&tx, chunk.len());
            let sql = format!("SELECT id FROM fault_events WHERE id IN ({})", params.join(","));
            let mut q = sqlx::query(&sql);
            for e in chunk {
                q = q.bind(e.id.to_string());
            }
            for row in q.fetch_all(&mut *tx).await? {
                stored.insert(row.try_get::<String, _>(0)?);
            }
        }
        let new: Vec<&FaultEvent> = batch.iter().copied().filter(|e| !stored.contains(&e.id.to_string())).collect();
        let (links, changed) = incidents::count(&mut tx, &new, &self.rules, received_at).await?;
        let mut inserted = std::collections::HashSet::new();
        for chunk in new.chunks(ROWS) {
            let mut sql = String::from(
                "INSERT INTO fault_events (id, cluster, node, class, kind, severity, source, observed_at, \
                 observed_at_ms, message, evidence, received_at, received_at_ms, sort_at_ms, clock_skew_ms, \
                 incident_id, expected, published) VALUES ",
            );
            let params = firebreak_plumbing::db::placeholders(&tx, chunk.len() * COLS);
            for (row, params) in params.chunks(COLS).enumerate() {
                sql.push_str(if row == 0 { "(" } else { ",(" });
                sql.push_str(&params.join(","));
                sql.push(')');
            }
            sql.push_str(" ON CONFLICT (id) DO NOTHING RETURNING id");
            let mut q = sqlx::query(&sql);
            for e in chunk {
                let evidence = serde_json::to_string(&e.evidence).map_err(|e| Error::Corrupt(e.to_string()))?;
                let skew_ms = skew_ms(e, received_at);
                let sort_at_ms = if skew_ms.is_some() { ms(received_at) } else { ms(e.observed_at) };
                let (incident, expected) = links.get(&e.id).copied().unzip();
                q = q
                    .bind(e.id.to_string())
                    .bind(e.cluster.clone())
                    .bind(e.node.clone())
                    .bind(e.class.as_str())
                    .bind(e.kind.as_str())
                    .bind(e.severity.as_str())
                    .bind(e.source.as_str())
                    .bind(fmt(e.observed_at))
                    .bind(ms(e.observed_at))
                    .bind(e.message.clone())
                    .bind(evidence)
                    .bind(fmt(received_at))
                    .bind(ms(received_at))
                    .bind(sort_at_ms)
                    .bind(skew_ms)
                    .bind(incident.map(|i| i.to_string()))
                    .bind(i32::from(expected.unwrap_or(false)))
                    .bind(0_i32);
            }
            for row in q.fetch_all(&mut *tx).await? {
                inserted.insert(row.try_get::<String, _>(0)?);
            }
        }
        // Another writer stored some of them since they were looked up: they were counted here
        // and there. Start again (the retry sees them stored).
        if inserted.len() != new.len() {
            return Err(Error::Conflict(format!(
                "{} of {} faults were stored meanwhile by another writer",
                new.len() - inserted.len(),
                new.len()
            )));
        }
        tx.commit().await?;
        let records = events
            .iter()
            .zip(fresh)
            .map(|(e, fresh)| {
                if !fresh || !inserted.contains(&e.id.to_string()) {
                    return None;
                }
                let clock_skew_s = skew_ms(e, received_at).map(|ms| ms / 1000);
                if let Some(skew_s) = clock_skew_s {
                    tracing::warn!(event_id = %e.id, cluster = %e.cluster, node = %e.node, skew_s, "event from the future: its source's clock is wrong; ordered by its receive time");
                }
                Some(EventRecord { event: e.clone(), received_at, clock_skew_s })
            })
            .collect();
        Ok((records, changed))
    }

    /// Stores a remediation step and applies it to its node's incidents, in one transaction;
    /// `None` if it was already stored, else the incidents it changed.
    pub async fn insert_remediation(&self, r: &RemediationEvent) -> Result<Option<Vec<firebreak_schema::Incident>>> {
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query(
            "INSERT INTO remediation_events (id, workflow_id, cluster, node, trigger_event_id, state, reason, at, at_ms) \
             VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9) ON CONFLICT (id) DO NOTHING",
        )
        .bind(r.id.to_string())
        .bind(r.workflow_id.to_string())
        .bind(&r.cluster)
        .bind(&r.node)
        .bind(r.trigger_event_id.to_string())
        .bind(&r.state)
        .bind(&r.reason)
        .bind(fmt(r.at))
        .bind(ms(r.at))
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() != 1 {
            return Ok(None);
        }
        let changed = incidents::follow_step(&mut tx, r, Utc::now()).await?;
        tx.commit().await?;
        Ok(Some(changed))
    }

    /// Keeps a cluster's health sample if it is newer than the one kept.
    pub async fn put_health(&self, h: &HealthSample) -> Result<()> {
        let body = serde_json::to_string(h).map_err(|e| Error::Corrupt(format!("health sample: {e}")))?;
        sqlx::query(
            "INSERT INTO cluster_health (cluster, at_ms, body) VALUES ($1, $2, $3) ON CONFLICT (cluster) DO UPDATE \
             SET at_ms = excluded.at_ms, body = excluded.body WHERE cluster_health.at_ms < excluded.at_ms",
        )
        .bind(&h.cluster)
        .bind(ms(h.at))
        .bind(body)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Keeps a cluster's failure domains as its detector last published them (an older record,
    /// replayed, does not replace a newer one).
    pub async fn put_topology(&self, t: &Topology) -> Result<()> {
        let body = serde_json::to_string(t).map_err(|e| Error::Corrupt(format!("topology: {e}")))?;
        sqlx::query(
            "INSERT INTO topologies (cluster, at_ms, body) VALUES ($1, $2, $3) ON CONFLICT (cluster) DO UPDATE \
             SET at_ms = excluded.at_ms, body = excluded.body WHERE topologies.at_ms < excluded.at_ms",
        )
        .bind(&t.cluster)
        .bind(ms(t.at))
        .bind(body)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Keeps a halt as the gate last told it (raised, then perhaps lifted).
    pub async fn put_halt(&self, h: &Halt) -> Result<()> {
        let body = serde_json::to_string(h).map_err(|e| Error::Corrupt(format!("halt: {e}")))?;
        let at = ms(h.resumed_at.unwrap_or(h.at));
        sqlx::query(
            "INSERT INTO gate_halts (id, active, at_ms, body) VALUES ($1, $2, $3, $4) ON CONFLICT (id) DO UPDATE \
             SET active = excluded.active, at_ms = excluded.at_ms, body = excluded.body WHERE gate_halts.at_ms <= excluded.at_ms",
        )
        .bind(h.id.to_string())
        .bind(i32::from(h.resumed_at.is_none()))
        .bind(at)
        .bind(body)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Keeps a change as the gate last told it.
    pub async fn put_change(&self, c: &Change) -> Result<()> {
        let body = serde_json::to_string(c).map_err(|e| Error::Corrupt(format!("change: {e}")))?;
        sqlx::query(
            "INSERT INTO gate_changes (id, updated_at_ms, body) VALUES ($1, $2, $3) ON CONFLICT (id) DO UPDATE \
             SET updated_at_ms = excluded.updated_at_ms, body = excluded.body \
             WHERE gate_changes.updated_at_ms <= excluded.updated_at_ms",
        )
        .bind(&c.spec.id)
        .bind(ms(c.updated_at))
        .bind(body)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Keeps one of the gate's decisions. A denial like the requester's latest row (same
    /// operation, rule and scope) extends that row (`repeats`, last time, latest body); anything
    /// else is a row of its own. A record seen before (its id, or a time not after the row it
    /// would extend) changes nothing, so a replay counts nothing twice.
    pub async fn put_decision(&self, d: &Decision) -> Result<()> {
        let body = serde_json::to_string(d).map_err(|e| Error::Corrupt(format!("decision: {e}")))?;
        let run_key = if d.granted {
            format!("granted/{}", d.id)
        } else {
            format!("denied/{}/{}/{}", d.operation, d.rule.as_deref().unwrap_or(""), d.scope.as_deref().unwrap_or(""))
        };
        let mut tx = self.pool.begin().await?;
        let seen = sqlx::query("SELECT 1 AS x FROM decision_events WHERE id = $1")
            .bind(d.id.to_string())
            .fetch_optional(&mut *tx)
            .await?
            .is_some();
        let latest = sqlx::query(
            "SELECT id, run_key, last_at_ms FROM decision_events WHERE requester = $1 ORDER BY last_at_ms DESC LIMIT 1",
        )
        .bind(&d.requester)
        .fetch_optional(&mut *tx)
        .await?;
        let at = ms(d.at);
        match latest {
            _ if seen => {}
            Some(r) if r.try_get::<i64, _>("last_at_ms")? >= at => {}
            Some(r) if !d.granted && r.try_get::<String, _>("run_key")? == run_key => {
                sqlx::query(
                    "UPDATE decision_events SET repeats = repeats + 1, last_at_ms = $2, body = $3 WHERE id = $1",
                )
                .bind(r.try_get::<String, _>("id")?)
                .bind(at)
                .bind(body)
                .execute(&mut *tx)
                .await?;
            }
            _ => {
                sqlx::query(
                    "INSERT INTO decision_events (id, cluster, node, requester, workflow_id, first_at_ms, last_at_ms, \
                     repeats, run_key, body) VALUES ($1, $2, $3, $4, $5, $6, $6, 1, $7, $8)",
                )
                .bind(d.id.to_string())
                .bind(&d.cluster)
                .bind(d.node.clone())
                .bind(&d.requester)
                .bind(d.workflow_id().map(|w| w.to_string()))
                .bind(at)
                .bind(run_key)
                .bind(body)
                .execute(&mut *tx)
                .await?;
            }
        }
        tx.commit().await?;
        Ok(())
    }

    /// The gate's decisions on a node (`node` given) or for a workflow, newest first, at most
    /// 200.
    pub async fn decisions(&self, about: DecisionsOf<'_>) -> Result<Vec<DecisionRun>> {
        const COLS: &str = "SELECT first_at_ms, repeats, body FROM decision_events";
        let rows = match about {
            DecisionsOf::Node(cluster, node) => {
                sqlx::query(&format!("{COLS} WHERE cluster = $1 AND node = $2 ORDER BY last_at_ms DESC LIMIT 200"))
                    .bind(cluster)
                    .bind(node)
                    .fetch_all(&self.pool)
                    .await?
            }
            DecisionsOf::Workflow(w) => {
                sqlx::query(&format!("{COLS} WHERE workflow_id = $1 ORDER BY last_at_ms DESC LIMIT 200"))
                    .bind(w.to_string())
                    .fetch_all(&self.pool)
                    .await?
            }
        };
        rows.iter()
            .map(|r| {
                Ok(DecisionRun {
                    decision: serde_json::from_str(&r.try_get::<String, _>("body")?)
                        .map_err(|e| Error::Corrupt(format!("stored decision: {e}")))?,
                    first_at: DateTime::from_timestamp_millis(r.try_get("first_at_ms")?).unwrap_or_default(),
                    repeats: r.try_get("repeats")?,
                })
            })
            .collect()
    }

    /// The gate's state as the event center knows it: every cluster's latest health sample,
    /// the halts in force, and the 20 most recently updated changes.
    pub async fn gate_view(&self) -> Result<GateView> {
        fn bodies<T: serde::de::DeserializeOwned>(rows: &[sqlx::any::AnyRow]) -> Result<Vec<T>> {
            rows.iter()
                .map(|r| {
                    serde_json::from_str(&r.try_get::<String, _>("body")?)
                        .map_err(|e| Error::Corrupt(format!("stored gate state: {e}")))
                })
                .collect()
        }
        let health = sqlx::query("SELECT body FROM cluster_health ORDER BY cluster").fetch_all(&self.pool).await?;
        let halts =
            sqlx::query("SELECT body FROM gate_halts WHERE active = 1 ORDER BY at_ms").fetch_all(&self.pool).await?;
        let changes = sqlx::query("SELECT body FROM gate_changes ORDER BY updated_at_ms DESC LIMIT 20")
            .fetch_all(&self.pool)
            .await?;
        Ok(GateView { clusters: bodies(&health)?, halts: bodies(&halts)?, changes: bodies(&changes)? })
    }

    /// Keeps a record that could not be decoded.
    pub async fn insert_rejected(
        &self,
        topic: &str,
        partition: i32,
        offset: i64,
        key: Option<&[u8]>,
        payload: Option<&[u8]>,
        error: &str,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO rejected_messages (topic, kafka_partition, kafka_offset, message_key, payload, error, received_at) \
             VALUES ($1,$2,$3,$4,$5,$6,$7) ON CONFLICT (topic, kafka_partition, kafka_offset) DO NOTHING",
        )
        .bind(topic)
        .bind(partition)
        .bind(offset)
        .bind(key.map(|k| String::from_utf8_lossy(k).into_owned()))
        .bind(payload.map(|p| String::from_utf8_lossy(p).into_owned()))
        .bind(error)
        .bind(fmt(Utc::now()))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Events matching `f`, most recently observed first (those from the future by their
    /// receive time).
    pub async fn list_faults(&self, f: &EventFilter) -> Result<Vec<EventRecord>> {
        let mut w = Where::default();
        w.eq("cluster", given("cluster", &f.cluster)?);
        w.eq("node", given("node", &f.node)?);
        if let Some(c) = given("class", &f.class)? {
            FaultClass::from_str(c)
                .map_err(|_| Error::BadRequest(format!("unknown class `{c}` (hardware, system, component)")))?;
            w.eq("class", Some(c));
        }
        let lim = w.param(Arg::Int(limit(f.limit)?));
        let sql = format!(
            "SELECT id, cluster, node, class, kind, severity, source, observed_at, message, evidence, received_at, \
             clock_skew_ms FROM fault_events {} ORDER BY sort_at_ms DESC, id DESC LIMIT {lim}",
            w.sql()
        );
        w.bind(sqlx::query(&sql)).fetch_all(&self.pool).await?.iter().map(fault_of_row).collect()
    }

    /// Remediation steps matching `f`, newest first.
    pub async fn list_remediations(&self, f: &StepFilter) -> Result<Vec<RemediationEvent>> {
        let mut w = Where::default();
        w.eq("cluster", given("cluster", &f.cluster)?);
        w.eq("node", given("node", &f.node)?);
        let lim = w.param(Arg::Int(limit(f.limit)?));
        let sql = format!("{STEP_SELECT} {} ORDER BY at_ms DESC, id DESC LIMIT {lim}", w.sql());
        w.bind(sqlx::query(&sql)).fetch_all(&self.pool).await?.iter().map(step_of_row).collect()
    }

    /// Deletes what is older than `max_age` — faults, steps, resolved incidents and their notes,
    /// correlations, the gate's decisions, rejected records — and the oldest faults beyond the newest `max_faults`,
    /// in chunks so that no statement holds the database long. A fault not yet published on the
    /// occurrences topic is kept whatever its age, and so are active incidents. Returns how many
    /// faults, steps and incidents were deleted.
    pub async fn retain(&self, max_age: chrono::TimeDelta, max_faults: i64) -> Result<Retained> {
        const CHUNK: i64 = 5000;
        let cutoff = ms(Utc::now() - max_age);
        // The newest `max_faults` faults are kept: the cutoff moves up to the oldest of them.
        let nth: Option<i64> =
            sqlx::query("SELECT sort_at_ms FROM fault_events ORDER BY sort_at_ms DESC LIMIT 1 OFFSET $1")
                .bind(max_faults)
                .fetch_optional(&self.pool)
                .await?
                .map(|r| r.try_get("sort_at_ms"))
                .transpose()?;
        let fault_cutoff = nth.map_or(cutoff, |n| cutoff.max(n + 1));
        let mut out = Retained::default();
        let chunked = |sql: &'static str, bound: i64| {
            let pool = self.pool.clone();
            async move {
                let mut n = 0;
                loop {
                    let done = sqlx::query(sql).bind(bound).bind(CHUNK).execute(&pool).await?.rows_affected();
                    n += done;
                    if done < CHUNK as u64 {
                        return Ok::<u64, Error>(n);
                    }
                }
            }
        };
        out.faults = chunked(
            "DELETE FROM fault_events WHERE id IN \
             (SELECT id FROM fault_events WHERE sort_at_ms < $1 AND published = 1 LIMIT $2)",
            fault_cutoff,
        )
        .await?;
        out.steps = chunked(
            "DELETE FROM remediation_events WHERE id IN (SELECT id FROM remediation_events WHERE at_ms < $1 LIMIT $2)",
            cutoff,
        )
        .await?;
        chunked(
            "DELETE FROM incident_notes WHERE id IN (SELECT n.id FROM incident_notes n JOIN incidents i \
             ON i.id = n.incident_id WHERE i.active = 0 AND i.resolved_at_ms < $1 LIMIT $2)",
            cutoff,
        )
        .await?;
        out.incidents = chunked(
            "DELETE FROM incidents WHERE id IN (SELECT id FROM incidents WHERE active = 0 AND resolved_at_ms < $1 \
             AND version = published_version LIMIT $2)",
            cutoff,
        )
        .await?;
        chunked(
            "DELETE FROM correlations WHERE id IN (SELECT id FROM correlations WHERE last_seen_ms < $1 \
             AND version = published_version LIMIT $2)",
            cutoff,
        )
        .await?;
        chunked(
            "DELETE FROM decision_events WHERE id IN (SELECT id FROM decision_events WHERE last_at_ms < $1 LIMIT $2)",
            cutoff,
        )
        .await?;
        sqlx::query("DELETE FROM rejected_messages WHERE received_at < $1")
            .bind(fmt(Utc::now() - max_age))
            .execute(&self.pool)
            .await?;
        Ok(out)
    }

    /// Number of records kept as undecodable.
    pub async fn rejected_count(&self) -> Result<i64> {
        Ok(sqlx::query("SELECT COUNT(*) AS n FROM rejected_messages").fetch_one(&self.pool).await?.try_get("n")?)
    }

    /// Whether the database answers.
    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }
}

/// Whose decisions: a node's, or a workflow's.
#[derive(Debug, Clone, Copy)]
pub enum DecisionsOf<'a> {
    /// Every decision on a node (cluster, node).
    Node(&'a str, &'a str),
    /// The decisions a workflow asked for.
    Workflow(uuid::Uuid),
}

/// One of the gate's decisions as the event center shows it: the latest of a run of the same
/// denial to one requester, with when the run began and how many it holds (1 for a grant).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DecisionRun {
    /// The latest decision of the run.
    #[serde(flatten)]
    pub decision: Decision,
    /// When the run began.
    pub first_at: DateTime<Utc>,
    /// Decisions in the run.
    pub repeats: i64,
}

enum Arg {
    Text(String),
    Int(i64),
}

/// A query built from the filters given, and nothing for those not given (so the planner sees
/// only real conditions and can use the indexes): no `($1 = '' OR col = $1)`.
#[derive(Default)]
struct Where {
    terms: Vec<String>,
    args: Vec<Arg>,
}

impl Where {
    fn param(&mut self, a: Arg) -> String {
        self.args.push(a);
        format!("${}", self.args.len())
    }
    /// `col = v`, when there is a `v`.
    fn eq(&mut self, col: &str, v: Option<&str>) {
        if let Some(v) = v {
            let p = self.param(Arg::Text(v.to_owned()));
            self.terms.push(format!("{col} = {p}"));
        }
    }
    fn sql(&self) -> String {
        if self.terms.is_empty() { String::new() } else { format!("WHERE {}", self.terms.join(" AND ")) }
    }
    fn bind<'q>(
        &'q self,
        mut q: sqlx::query::Query<'q, Any, sqlx::any::AnyArguments<'q>>,
    ) -> sqlx::query::Query<'q, Any, sqlx::any::AnyArguments<'q>> {
        for a in &self.args {
            q = match a {
                Arg::Text(s) => q.bind(s.as_str()),
                Arg::Int(n) => q.bind(*n),
            };
        }
        q
    }
}

/// A filter's value, if one was given: `?cluster=` (a form's empty field) is no filter, on every
/// list alike. A value that no name, time or cursor is (control characters, over 253 characters)
/// is a 400 rather than a query: PostgreSQL refuses a NUL in text.
fn given<'a>(what: &str, v: &'a Option<String>) -> Result<Option<&'a str>> {
    match v.as_deref() {
        None | Some("") => Ok(None),
        Some(v) => printable(what, v).map(Some),
    }
}

/// A name or filter value as the API takes one: printable, at most 253 characters.
fn printable<'a>(what: &str, v: &'a str) -> Result<&'a str> {
    if !firebreak_schema::names::is_plain_text(v, 253) {
        return Err(Error::BadRequest(format!("`{what}` must be printable text of at most 253 characters")));
    }
    Ok(v)
}

/// The one rule for `?limit=` on every list: 1 to 1000, 100 when absent; anything else is a 400.
fn limit(asked: Option<i64>) -> Result<i64> {
    let limit = asked.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(Error::BadRequest(format!("limit {limit} is not between 1 and 1000")));
    }
    Ok(limit)
}

/// The columns of a stored step.
const STEP_SELECT: &str =
    "SELECT id, workflow_id, cluster, node, trigger_event_id, state, reason, at FROM remediation_events";

fn step_of_row(r: &sqlx::any::AnyRow) -> Result<RemediationEvent> {
    let uuid = |c: &str| -> Result<uuid::Uuid> {
        let s: String = r.try_get(c)?;
        s.parse().map_err(|e| Error::Corrupt(format!("{c}: {e}")))
    };
    Ok(RemediationEvent {
        id: uuid("id")?,
        workflow_id: uuid("workflow_id")?,
        cluster: r.try_get("cluster")?,
        node: r.try_get("node")?,
        trigger_event_id: uuid("trigger_event_id")?,
        state: r.try_get("state")?,
        reason: r.try_get("reason")?,
        at: parse_time(&r.try_get::<String, _>("at")?)?,
    })
}

fn fault_of_row(r: &sqlx::any::AnyRow) -> Result<EventRecord> {
    let s = |c: &str| -> Result<String> { Ok(r.try_get::<String, _>(c)?) };
    let corrupt = |e: firebreak_schema::Error| Error::Corrupt(e.to_string());
    Ok(EventRecord {
        event: FaultEvent {
            id: s("id")?.parse().map_err(|e| Error::Corrupt(format!("id: {e}")))?,
            cluster: s("cluster")?,
            node: s("node")?,
            class: s("class")?.parse().map_err(corrupt)?,
            kind: s("kind")?.parse().map_err(corrupt)?,
            severity: s("severity")?.parse().map_err(corrupt)?,
            source: s("source")?.parse().map_err(corrupt)?,
            observed_at: parse_time(&s("observed_at")?)?,
            message: s("message")?,
            evidence: serde_json::from_str(&s("evidence")?).map_err(|e| Error::Corrupt(format!("evidence: {e}")))?,
        },
        received_at: parse_time(&s("received_at")?)?,
        clock_skew_s: r.try_get::<Option<i64>, _>("clock_skew_ms")?.map(|ms| ms / 1000),
    })
}
