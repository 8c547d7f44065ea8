//! Incidents in the store: faults grouped by fingerprint as they are written, moved through their
//! states by the remediation steps and by operators, correlated when many nodes report the same
//! kind at once, resolved when quiet, and published through an outbox (a version per incident, a
//! flag per occurrence) so that a crash between the write and the publication loses nothing.
//!
//! Every change is a compare-and-set on the incident's version inside the caller's transaction:
//! two replicas that touch one incident at once cannot both win, and the loser's batch is
//! retried against what the winner wrote.

use std::{
    collections::{BTreeMap, HashMap},
    time::Duration,
};

use chrono::{DateTime, TimeDelta, Utc};
use firebreak_plumbing::retry;
use firebreak_schema::{
    Correlation, FaultClass, FaultEvent, FaultKind, Incident, IncidentState, Occurrence, RemediationEvent, Severity,
    Topology, fingerprint,
};
use sqlx::{Any, Row, Transaction, any::AnyRow};
use uuid::Uuid;

use super::{Arg, Store, Where, given, ms, printable};
use crate::{Error, Result};

/// How faults become incidents and incidents end.
#[derive(Debug, Clone, Copy)]
pub struct Rules {
    /// An incident nothing works on (open, acknowledged, silenced) is resolved after this long
    /// without an occurrence.
    pub resolve_quiet_after: TimeDelta,
    /// This many nodes of one cluster reporting one kind within [`Rules::correlate_window`]
    /// make a correlated incident.
    pub correlate_nodes: usize,
    /// See [`Rules::correlate_nodes`].
    pub correlate_window: TimeDelta,
}

impl Default for Rules {
    fn default() -> Self {
        Self { resolve_quiet_after: TimeDelta::hours(1), correlate_nodes: 5, correlate_window: TimeDelta::minutes(5) }
    }
}

/// What a write changed, for the live stream (the topics read the outbox).
#[derive(Debug, Default)]
pub struct Changed {
    /// Incidents created or changed.
    pub incidents: Vec<Incident>,
    /// Correlations created or grown.
    pub correlations: Vec<Correlation>,
}

const COLUMNS: &str = "id, fingerprint, cluster, node, class, kind, severity, state, reason, first_seen_ms, \
    last_seen_ms, occurrences, expected, workflow_id, workflow_state, correlation_id, acknowledged_by, assignee, \
    silenced_until_ms, resolved_at_ms, updated_at_ms, version";

fn time(ms: i64) -> Result<DateTime<Utc>> {
    DateTime::from_timestamp_millis(ms).ok_or_else(|| Error::Corrupt(format!("time {ms} ms")))
}

fn uuid(s: &str) -> Result<Uuid> {
    s.parse().map_err(|e| Error::Corrupt(format!("uuid `{s}`: {e}")))
}

pub(super) fn incident_of_row(r: &AnyRow) -> Result<Incident> {
    let s = |c: &str| -> Result<String> { Ok(r.try_get::<String, _>(c)?) };
    let opt = |c: &str| -> Result<Option<String>> { Ok(r.try_get::<Option<String>, _>(c)?) };
    let corrupt = |e: firebreak_schema::Error| Error::Corrupt(e.to_string());
    Ok(Incident {
        id: uuid(&s("id")?)?,
        fingerprint: s("fingerprint")?,
        cluster: s("cluster")?,
        node: s("node")?,
        class: s("class")?.parse().map_err(corrupt)?,
        kind: s("kind")?.parse().map_err(corrupt)?,
        severity: s("severity")?.parse().map_err(corrupt)?,
        state: s("state")?.parse().map_err(corrupt)?,
        reason: s("reason")?,
        first_seen: time(r.try_get("first_seen_ms")?)?,
        last_seen: time(r.try_get("last_seen_ms")?)?,
        occurrences: r.try_get("occurrences")?,
        expected: r.try_get("expected")?,
        workflow_id: opt("workflow_id")?.map(|s| uuid(&s)).transpose()?,
        workflow_state: opt("workflow_state")?,
        correlation_id: opt("correlation_id")?.map(|s| uuid(&s)).transpose()?,
        acknowledged_by: opt("acknowledged_by")?,
        assignee: opt("assignee")?,
        silenced_until: r.try_get::<Option<i64>, _>("silenced_until_ms")?.map(time).transpose()?,
        resolved_at: r.try_get::<Option<i64>, _>("resolved_at_ms")?.map(time).transpose()?,
        updated_at: time(r.try_get("updated_at_ms")?)?,
        version: r.try_get("version")?,
    })
}

fn severity_rank(s: Severity) -> i32 {
    match s {
        Severity::Info => 0,
        Severity::Warning => 1,
        Severity::Critical => 2,
    }
}

/// The board's order in one integer: the state's urgency, then the severity (see the migration).
pub(super) fn board_key(state: IncidentState, severity: Severity) -> i32 {
    state.urgency() * 10 + 2 - severity_rank(severity)
}

/// The state an incident returns to when an operator's hold (a silence) ends: what its workflow
/// says, or open.
fn natural_state(i: &Incident) -> IncidentState {
    match i.workflow_state.as_deref() {
        Some("escalated") => IncidentState::Escalated,
        None | Some("cancelled" | "shadowed") => IncidentState::Open,
        Some(_) => IncidentState::Remediating,
    }
}

fn resolve(i: &mut Incident, at: DateTime<Utc>, reason: String) {
    i.state = IncidentState::Resolved;
    i.resolved_at = Some(at);
    i.reason = reason;
}

/// Applies a workflow step to the incident it concerns; `false` if nothing changed (it was
/// resolved already).
pub(super) fn apply_step(i: &mut Incident, step: &RemediationEvent) -> bool {
    if i.state == IncidentState::Resolved {
        return false;
    }
    i.workflow_id = Some(step.workflow_id);
    i.workflow_state = Some(step.state.clone());
    let why = format!("{}: {}", step.state, step.reason);
    match step.state.as_str() {
        "escalated" => {
            i.state = IncidentState::Escalated;
            i.reason = why;
        }
        "healed" | "replaced" | "node_gone" | "cleared" => resolve(i, step.at, why),
        "cancelled" | "shadowed" => {
            if i.state == IncidentState::Remediating {
                i.state = IncidentState::Open;
            }
            i.reason = why;
        }
        _ => {
            if i.state == IncidentState::Open {
                i.state = IncidentState::Remediating;
            }
            i.reason = why;
        }
    }
    true
}

/// Whether a workflow is working on the incident's node now (whatever an operator set its state
/// to): its workflow has a state, and not one in which the workflow stopped.
fn being_repaired(i: &Incident) -> bool {
    i.workflow_state.as_deref().is_some_and(|s| !matches!(s, "escalated" | "cancelled" | "shadowed"))
}

/// Whether a step ends every incident of its node seen before it (the node healed or is gone).
fn heals_node(step: &RemediationEvent) -> bool {
    matches!(step.state.as_str(), "healed" | "replaced" | "node_gone")
}

/// Writes one incident: see [`put_many`].
async fn put(tx: &mut Transaction<'_, Any>, i: &mut Incident, before: Option<i64>, now: DateTime<Utc>) -> Result<()> {
    let mut one = [(i.clone(), before)];
    put_many(tx, &mut one, now).await?;
    (i.version, i.updated_at) = (one[0].0.version, one[0].0.updated_at);
    Ok(())
}

/// Writes incidents, each inserted when its stored version (`before`) is `None`, else updated
/// if its stored version is still `before`: multi-row upserts, 200 rows a statement. Another
/// writer's change in between (or a second active incident of one fingerprint, which the unique
/// index refuses) is a conflict: the caller's transaction is retried. Bumps each version and
/// update time.
async fn put_many(
    tx: &mut Transaction<'_, Any>,
    list: &mut [(Incident, Option<i64>)],
    now: DateTime<Utc>,
) -> Result<()> {
    const ROWS: usize = 200;
    const COLS: usize = 24;
    // In id order, as every writer of many incidents takes them: two writers cannot each hold a
    // row the other waits for.
    list.sort_by_key(|(i, _)| i.id);
    for chunk in list.chunks_mut(ROWS) {
        let mut sql =
            format!("INSERT INTO incidents ({COLUMNS}, board_key, active, published_version, unpublished) VALUES ");
        let params = firebreak_plumbing::db::placeholders(tx, chunk.len() * COLS);
        for (row, params) in params.chunks(COLS).enumerate() {
            sql.push_str(if row == 0 { "(" } else { ",(" });
            sql.push_str(&params.join(","));
            sql.push_str(",0,1)");
        }
        sql.push_str(
            " ON CONFLICT (id) DO UPDATE SET fingerprint = excluded.fingerprint, cluster = excluded.cluster, \
             node = excluded.node, class = excluded.class, kind = excluded.kind, severity = excluded.severity, \
             state = excluded.state, reason = excluded.reason, first_seen_ms = excluded.first_seen_ms, \
             last_seen_ms = excluded.last_seen_ms, occurrences = excluded.occurrences, expected = excluded.expected, \
             workflow_id = excluded.workflow_id, workflow_state = excluded.workflow_state, \
             correlation_id = excluded.correlation_id, acknowledged_by = excluded.acknowledged_by, \
             assignee = excluded.assignee, silenced_until_ms = excluded.silenced_until_ms, \
             resolved_at_ms = excluded.resolved_at_ms, updated_at_ms = excluded.updated_at_ms, \
             version = excluded.version, board_key = excluded.board_key, active = excluded.active, \
             unpublished = 1 WHERE incidents.version = excluded.version - 1",
        );
        let mut q = sqlx::query(&sql);
        for (i, before) in chunk.iter_mut() {
            i.version = before.unwrap_or(0) + 1;
            i.updated_at = now;
            q = q
                .bind(i.id.to_string())
                .bind(i.fingerprint.clone())
                .bind(i.cluster.clone())
                .bind(i.node.clone())
                .bind(i.class.as_str())
                .bind(i.kind.as_str())
                .bind(i.severity.as_str())
                .bind(i.state.as_str())
                .bind(i.reason.clone())
                .bind(ms(i.first_seen))
                .bind(ms(i.last_seen))
                .bind(i.occurrences)
                .bind(i.expected)
                .bind(i.workflow_id.map(|w| w.to_string()))
                .bind(i.workflow_state.clone())
                .bind(i.correlation_id.map(|c| c.to_string()))
                .bind(i.acknowledged_by.clone())
                .bind(i.assignee.clone())
                .bind(i.silenced_until.map(ms))
                .bind(i.resolved_at.map(ms))
                .bind(ms(i.updated_at))
                .bind(i.version)
                .bind(board_key(i.state, i.severity))
                .bind(i32::from(i.state != IncidentState::Resolved));
        }
        let written = q.execute(&mut **tx).await?.rows_affected();
        if written != chunk.len() as u64 {
            return Err(Error::Conflict(format!(
                "{} of {} incidents changed meanwhile",
                chunk.len() as u64 - written,
                chunk.len()
            )));
        }
    }
    Ok(())
}

/// A new incident from its first occurrence.
fn open(e: &FaultEvent) -> Incident {
    Incident {
        id: e.id,
        fingerprint: fingerprint(&e.cluster, &e.node, e.kind),
        cluster: e.cluster.clone(),
        node: e.node.clone(),
        class: e.class,
        kind: e.kind,
        severity: e.severity,
        state: IncidentState::Open,
        reason: format!("first occurrence: {}", e.message),
        first_seen: e.observed_at,
        last_seen: e.observed_at,
        occurrences: 0,
        expected: 0,
        workflow_id: None,
        workflow_state: None,
        correlation_id: None,
        acknowledged_by: None,
        assignee: None,
        silenced_until: None,
        resolved_at: None,
        updated_at: e.observed_at,
        version: 0,
    }
}

/// Active incidents of these nodes.
async fn active_of_nodes(tx: &mut Transaction<'_, Any>, nodes: &[(&str, &str)]) -> Result<Vec<Incident>> {
    let mut out = Vec::new();
    for chunk in nodes.chunks(200) {
        let params = firebreak_plumbing::db::placeholders(tx, 2 * chunk.len());
        let terms: Vec<String> =
            params.chunks(2).map(|p| format!("(cluster = {} AND node = {})", p[0], p[1])).collect();
        let sql = format!("SELECT {COLUMNS} FROM incidents WHERE active = 1 AND ({})", terms.join(" OR "));
        let mut q = sqlx::query(&sql);
        for (c, n) in chunk {
            q = q.bind(*c).bind(*n);
        }
        for r in q.fetch_all(&mut **tx).await? {
            out.push(incident_of_row(&r)?);
        }
    }
    Ok(out)
}

/// Rows of `SELECT {COLUMNS} FROM incidents WHERE <cond> AND <col> IN (values)`, in chunks.
async fn incidents_where_in(
    tx: &mut Transaction<'_, Any>,
    cond: &str,
    col: &str,
    values: &[String],
) -> Result<Vec<Incident>> {
    let mut out = Vec::new();
    for chunk in values.chunks(500) {
        let params = firebreak_plumbing::db::placeholders(tx, chunk.len());
        let sql = format!("SELECT {COLUMNS} FROM incidents WHERE {cond} AND {col} IN ({})", params.join(","));
        let mut q = sqlx::query(&sql);
        for v in chunk {
            q = q.bind(v.as_str());
        }
        for r in q.fetch_all(&mut **tx).await? {
            out.push(incident_of_row(&r)?);
        }
    }
    Ok(out)
}

/// Steps of the workflows these faults started, oldest first.
async fn steps_triggered_by(tx: &mut Transaction<'_, Any>, ids: &[String]) -> Result<Vec<RemediationEvent>> {
    let mut out = Vec::new();
    for chunk in ids.chunks(500) {
        let params = firebreak_plumbing::db::placeholders(tx, chunk.len());
        let sql = format!("{} WHERE trigger_event_id IN ({}) ORDER BY at_ms, id", super::STEP_SELECT, params.join(","));
        let mut q = sqlx::query(&sql);
        for id in chunk {
            q = q.bind(id.clone());
        }
        for r in q.fetch_all(&mut **tx).await? {
            out.push(super::step_of_row(&r)?);
        }
    }
    Ok(out)
}

/// Marks an incident published at its version and state, if no later version was marked already;
/// it stays queued when it changed again since it was read. Rows marked: 1 if the mark moved.
async fn mark_published<'e>(db: impl sqlx::Executor<'e, Database = Any>, i: &Incident) -> Result<u64> {
    Ok(sqlx::query(
        "UPDATE incidents SET published_version = $2, published_state = $3, \
         unpublished = CASE WHEN version = $2 THEN 0 ELSE 1 END WHERE id = $1 AND published_version < $2",
    )
    .bind(i.id.to_string())
    .bind(i.version)
    .bind(i.state.as_str())
    .execute(db)
    .await?
    .rows_affected())
}

/// A webhook call an incident's change makes: the receiver, the event (the incident's new
/// state) and the JSON body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookCall {
    /// The subscription's URL.
    pub url: String,
    /// `X-Firebreak-Event`: the incident's state.
    pub event: String,
    /// `{"event", "incident"}` as JSON.
    pub body: String,
}

/// A stored webhook call not delivered yet.
#[derive(Debug, Clone)]
pub struct PendingCall {
    /// Its id (time-ordered).
    pub id: Uuid,
    /// The incident it tells of.
    pub incident_id: Uuid,
    /// What to send.
    pub call: WebhookCall,
    /// Failed attempts so far.
    pub attempts: i64,
}

/// Which incident each new fault counts in, and whether it is expected.
pub(super) type Links = HashMap<Uuid, (Uuid, bool)>;

/// Counts new faults (none of them stored yet) into their incidents, inside the transaction
/// that stores them, and writes the incidents. A fault joins the active incident of its
/// fingerprint; else, when it is a kind Firebreak's own remediation causes and a workflow is
/// working on its node, it is attached to that node's incident as expected; else it opens a new
/// incident. Returns each fault's incident (the caller stores the faults with it, queued for the
/// occurrences topic) and what changed. A handful of statements per batch, whatever its size.
pub(super) async fn count(
    tx: &mut Transaction<'_, Any>,
    fresh: &[&FaultEvent],
    rules: &Rules,
    now: DateTime<Utc>,
) -> Result<(Links, Changed)> {
    let mut links = Links::new();
    if fresh.is_empty() {
        return Ok((links, Changed::default()));
    }
    // id → (incident, its stored version or None when new)
    let mut incidents: HashMap<Uuid, (Incident, Option<i64>)> = HashMap::new();
    let mut by_fingerprint: HashMap<String, Uuid> = HashMap::new();
    let mut fingerprints: Vec<String> = fresh.iter().map(|e| fingerprint(&e.cluster, &e.node, e.kind)).collect();
    fingerprints.sort_unstable();
    fingerprints.dedup();
    let mut known = incidents_where_in(tx, "active = 1", "fingerprint", &fingerprints).await?;
    // The nodes a workflow may be repairing: only those with a fault of a kind repairs cause.
    let mut nodes: Vec<(&str, &str)> = fresh
        .iter()
        .filter(|e| e.kind.expected_during_remediation())
        .map(|e| (e.cluster.as_str(), e.node.as_str()))
        .collect();
    nodes.sort_unstable();
    nodes.dedup();
    known.extend(active_of_nodes(tx, &nodes).await?.into_iter().filter(being_repaired));
    for i in known {
        by_fingerprint.insert(i.fingerprint.clone(), i.id);
        let v = i.version;
        incidents.insert(i.id, (i, Some(v)));
    }
    let mut order: Vec<&FaultEvent> = fresh.to_vec();
    order.sort_by_key(|e| e.observed_at);
    let mut touched: Vec<Uuid> = Vec::new();
    for e in order {
        let fp = fingerprint(&e.cluster, &e.node, e.kind);
        let repairing = || {
            incidents
                .values()
                .filter(|(i, _)| i.cluster == e.cluster && i.node == e.node && being_repaired(i))
                .map(|(i, _)| i.id)
                .min()
        };
        let (id, expected) = match by_fingerprint.get(&fp) {
            Some(id) => (*id, false),
            None => match repairing().filter(|_| e.kind.expected_during_remediation()) {
                Some(id) => (id, true),
                None => {
                    let i = open(e);
                    by_fingerprint.insert(fp, i.id);
                    incidents.insert(i.id, (i, None));
                    (e.id, false)
                }
            },
        };
        let Some((i, _)) = incidents.get_mut(&id) else { continue };
        if expected {
            i.expected += 1;
        } else {
            i.occurrences += 1;
            i.severity = i.severity.max(e.severity);
            i.first_seen = i.first_seen.min(e.observed_at);
            i.last_seen = i.last_seen.max(e.observed_at);
        }
        links.insert(e.id, (id, expected));
        if !touched.contains(&id) {
            touched.push(id);
        }
    }
    // Steps that arrived before the fault that started their workflow.
    let new_ids: Vec<String> = incidents.values().filter(|(_, v)| v.is_none()).map(|(i, _)| i.id.to_string()).collect();
    for step in steps_triggered_by(tx, &new_ids).await? {
        if let Some((i, _)) = incidents.get_mut(&step.trigger_event_id) {
            apply_step(i, &step);
        }
    }
    let correlations = correlate(tx, rules, now, &mut incidents).await?;
    let mut write: Vec<(Incident, Option<i64>)> = touched.iter().filter_map(|id| incidents.remove(id)).collect();
    put_many(tx, &mut write, now).await?;
    Ok((links, Changed { incidents: write.into_iter().map(|(i, _)| i).collect(), correlations }))
}

/// One incident within a correlation window: stored (with the correlation it joined, if any) or
/// new in this batch.
struct Member {
    id: Uuid,
    node: String,
    first_seen: DateTime<Utc>,
    correlation_id: Option<Uuid>,
    stored: bool,
}

/// The correlation windows of the clusters and kinds this batch opened incidents of, read in a
/// few statements for all of them (a storm over many clusters and kinds is when ingest is
/// busiest): each (cluster, kind)'s window of active incidents, its cluster's topology and its
/// correlations that still have an active incident; then [`correlate_one`] for each window
/// that holds enough nodes.
async fn correlate(
    tx: &mut Transaction<'_, Any>,
    rules: &Rules,
    now: DateTime<Utc>,
    incidents: &mut HashMap<Uuid, (Incident, Option<i64>)>,
) -> Result<Vec<Correlation>> {
    let window_ms = rules.correlate_window.num_milliseconds();
    // This batch's new incidents, and per (cluster, kind) the newest first seen among them.
    let fresh: Vec<&Incident> =
        incidents.values().filter(|(i, v)| v.is_none() && i.state != IncidentState::Resolved).map(|(i, _)| i).collect();
    let mut newest: BTreeMap<(String, FaultKind), i64> = BTreeMap::new();
    for i in &fresh {
        let at = newest.entry((i.cluster.clone(), i.kind)).or_insert(i64::MIN);
        *at = (*at).max(ms(i.first_seen));
    }
    let Some(since) = newest.values().min().map(|n| n - window_ms) else { return Ok(Vec::new()) };
    let (clusters, kinds) = clusters_and_kinds(&newest);
    let mut windows: BTreeMap<(String, FaultKind), Vec<Member>> = BTreeMap::new();
    for r in rows_of_pairs(
        tx,
        "SELECT id, cluster, kind, node, first_seen_ms, correlation_id FROM incidents \
         WHERE active = 1 AND first_seen_ms >= {since} AND {pairs}",
        Some(since),
        &clusters,
        &kinds,
    )
    .await?
    {
        let kind: FaultKind = r
            .try_get::<String, _>("kind")?
            .parse()
            .map_err(|e: firebreak_schema::Error| Error::Corrupt(e.to_string()))?;
        let key = (r.try_get::<String, _>("cluster")?, kind);
        let first_seen_ms: i64 = r.try_get("first_seen_ms")?;
        if newest.get(&key).is_none_or(|n| first_seen_ms < n - window_ms) {
            continue;
        }
        windows.entry(key).or_default().push(Member {
            id: uuid(&r.try_get::<String, _>("id")?)?,
            node: r.try_get("node")?,
            first_seen: time(first_seen_ms)?,
            correlation_id: r.try_get::<Option<String>, _>("correlation_id")?.as_deref().map(uuid).transpose()?,
            stored: true,
        });
    }
    for i in fresh {
        let key = (i.cluster.clone(), i.kind);
        if newest.get(&key).is_some_and(|n| ms(i.first_seen) >= n - window_ms) {
            windows.entry(key).or_default().push(Member {
                id: i.id,
                node: i.node.clone(),
                first_seen: i.first_seen,
                correlation_id: i.correlation_id,
                stored: false,
            });
        }
    }
    // One active incident per node for one kind: incidents are nodes.
    let least = rules.correlate_nodes.max(2);
    windows.retain(|_, w| w.len() >= least);
    if windows.is_empty() {
        return Ok(Vec::new());
    }
    let (clusters, kinds) = clusters_and_kinds(&windows);
    let mut topologies: HashMap<String, Topology> = HashMap::new();
    let params = firebreak_plumbing::db::placeholders(tx, clusters.len());
    let sql = format!("SELECT cluster, body FROM topologies WHERE cluster IN ({})", params.join(","));
    let mut q = sqlx::query(&sql);
    for c in &clusters {
        q = q.bind(*c);
    }
    for r in q.fetch_all(&mut **tx).await? {
        let cluster: String = r.try_get("cluster")?;
        let t = serde_json::from_str(&r.try_get::<String, _>("body")?)
            .map_err(|e| Error::Corrupt(format!("topology of {cluster}: {e}")))?;
        topologies.insert(cluster, t);
    }
    // The correlations of these clusters and kinds that still have an active incident.
    let mut existing: HashMap<(String, FaultKind), Vec<(Correlation, i64)>> = HashMap::new();
    for r in rows_of_pairs(
        tx,
        "SELECT body, version FROM correlations WHERE id IN (SELECT correlation_id FROM incidents \
         WHERE active = 1 AND correlation_id IS NOT NULL AND {pairs})",
        None,
        &clusters,
        &kinds,
    )
    .await?
    {
        let c: Correlation = serde_json::from_str(&r.try_get::<String, _>("body")?)
            .map_err(|e| Error::Corrupt(format!("correlation: {e}")))?;
        existing.entry((c.cluster.clone(), c.kind)).or_default().push((c, r.try_get::<i64, _>("version")?));
    }
    let (mut out, none) = (Vec::new(), Topology::default());
    for ((cluster, kind), window) in windows {
        // A cluster's topology serves each of its kinds.
        let topology = topologies.get(&cluster).unwrap_or(&none);
        let existing = existing.remove(&(cluster.clone(), kind)).unwrap_or_default();
        let newest = newest.get(&(cluster.clone(), kind)).copied().unwrap_or_else(|| ms(now));
        let one = Window { cluster: &cluster, kind, newest, members: window, topology, existing };
        out.extend(correlate_one(tx, one, rules, now, incidents).await?);
    }
    Ok(out)
}

/// The distinct clusters and kinds of these (cluster, kind) keys, each sorted.
fn clusters_and_kinds<V>(keys: &BTreeMap<(String, FaultKind), V>) -> (Vec<&str>, Vec<&'static str>) {
    let clusters: std::collections::BTreeSet<&str> = keys.keys().map(|(c, _)| c.as_str()).collect();
    let kinds: std::collections::BTreeSet<&'static str> = keys.keys().map(|(_, k)| k.as_str()).collect();
    (clusters.into_iter().collect(), kinds.into_iter().collect())
}

/// Rows of `select` with `{pairs}` in it replaced by a condition on the incidents' cluster and
/// kind (one of `clusters`, one of `kinds`), and `{since}` by a parameter bound to `since`.
async fn rows_of_pairs(
    tx: &mut Transaction<'_, Any>,
    select: &str,
    since: Option<i64>,
    clusters: &[&str],
    kinds: &[&str],
) -> Result<Vec<sqlx::any::AnyRow>> {
    let n = usize::from(since.is_some()) + clusters.len() + kinds.len();
    let params = firebreak_plumbing::db::placeholders(tx, n);
    let (first, rest) = params.split_at(usize::from(since.is_some()));
    let (cs, ks) = rest.split_at(clusters.len());
    let pairs = format!("cluster IN ({}) AND kind IN ({})", cs.join(","), ks.join(","));
    let mut sql = select.replace("{pairs}", &pairs);
    if let Some(p) = first.first() {
        sql = sql.replace("{since}", p);
    }
    let mut q = sqlx::query(&sql);
    if let Some(since) = since {
        q = q.bind(since);
    }
    for c in clusters {
        q = q.bind(*c);
    }
    for k in kinds {
        q = q.bind(*k);
    }
    Ok(q.fetch_all(&mut **tx).await?)
}

/// One (cluster, kind)'s correlation window as [`correlate`] read it.
struct Window<'a> {
    cluster: &'a str,
    kind: FaultKind,
    /// The newest first seen of the batch's new incidents of it (ms).
    newest: i64,
    /// The window's incidents, stored and new: at least the threshold's number.
    members: Vec<Member>,
    topology: &'a Topology,
    /// Its correlations that still have an active incident, with their versions.
    existing: Vec<(Correlation, i64)>,
}

/// When enough nodes of a cluster opened an incident of one kind within the window (the stored
/// active ones and this batch's new ones), groups them into correlations, created or grown.
///
/// Where: each incident not yet in a correlation joins the narrowest scope that holds enough of
/// the window's nodes and more than half of those of the scope around it: the cluster, then its
/// failure domains from the widest (a zone) to the narrowest (a rack), as the cluster's last
/// [`firebreak_schema::Topology`] has them. Five nodes of one rack are that rack's storm; three
/// hundred nodes of one zone over fifteen racks are the zone's; nodes spread over the zones
/// are the cluster's. A scope with no correlation yet needs enough incidents joining it, or
/// they try the next wider one: a lone node of another zone beside a rack's storm stays out of
/// it. A rack's storm that grows over its zone widens to the zone (same id). Each batch is
/// judged on the window as it stands when it is written: the first nodes of a storm may be
/// grouped more widely (the cluster's) than the storm turns out to be, and stay so.
///
/// The batch's incidents take the correlation's id in memory (`incidents`, written by the
/// caller), the stored ones in one statement per correlation (their version bumped, so the
/// outbox publishes them again).
async fn correlate_one(
    tx: &mut Transaction<'_, Any>,
    w: Window<'_>,
    rules: &Rules,
    now: DateTime<Utc>,
    incidents: &mut HashMap<Uuid, (Incident, Option<i64>)>,
) -> Result<Vec<Correlation>> {
    let Window { cluster, kind, newest, members: window, topology, mut existing } = w;
    let least = rules.correlate_nodes.max(2);
    let (domains_of, size) = topology.by_node();
    let mut affected: HashMap<(&str, &str), usize> = HashMap::new();
    for m in &window {
        for d in domains_of.get(m.node.as_str()).into_iter().flatten() {
            *affected.entry(*d).or_default() += 1;
        }
    }
    // Each incident's scopes, from the cluster down to the narrowest domain that holds more
    // than half of the nodes of the one around it.
    let mut chains: Vec<(usize, Vec<Place>)> = Vec::new();
    for (at, m) in window.iter().enumerate().filter(|(_, m)| m.correlation_id.is_none()) {
        let mut ds = domains_of.get(m.node.as_str()).cloned().unwrap_or_default();
        ds.sort_by_key(|d| std::cmp::Reverse(size.get(d).copied().unwrap_or(0)));
        let (mut chain, mut around) = (vec![None], window.len());
        for d in ds {
            let n = affected.get(&d).copied().unwrap_or(0);
            if n >= least && 2 * n > around {
                chain.push(Some((d.0.to_owned(), d.1.to_owned())));
                around = n;
            }
        }
        chains.push((at, chain));
    }
    // An incident joins its narrowest scope if that scope has a correlation already or enough
    // incidents join it; if not, the next wider one; none: it stays alone (for now).
    loop {
        let mut joining: HashMap<Place, usize> = HashMap::new();
        for (_, chain) in &chains {
            if let Some(s) = chain.last() {
                *joining.entry(s.clone()).or_default() += 1;
            }
        }
        let mut moved = false;
        for (_, chain) in &mut chains {
            if let Some(s) = chain.last()
                && joining.get(s).copied().unwrap_or(0) < least
                && joins(&existing, s, &domains_of).is_none()
            {
                chain.pop();
                moved = true;
            }
        }
        if !moved {
            break;
        }
    }
    let mut groups: BTreeMap<Place, Vec<usize>> = BTreeMap::new();
    for (at, mut chain) in chains {
        if let Some(s) = chain.pop() {
            groups.entry(s).or_default().push(at);
        }
    }
    let mut out = Vec::new();
    for (domain, members) in groups {
        let members: Vec<&Member> = members.iter().map(|&at| &window[at]).collect();
        let (first_seen, first) = members.iter().map(|m| (m.first_seen, m.id)).min().unwrap_or((now, Uuid::nil()));
        let found = joins(&existing, &domain, &domains_of);
        let (mut c, version) = match found {
            Some(at) => {
                // A rack's storm that turned out to be its zone's: it widens to the zone.
                let (c, v) = &existing[at];
                (Correlation { domain: domain.clone(), ..c.clone() }, *v)
            }
            None => {
                let mut parts = vec!["correlation".to_owned(), cluster.to_owned()];
                parts.extend(domain.iter().map(|(k, v)| format!("{k}={v}")));
                parts.extend([kind.as_str().to_owned(), first.to_string()]);
                let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
                let c = Correlation {
                    id: firebreak_schema::deterministic_id(first_seen, &parts),
                    cluster: cluster.to_owned(),
                    domain: domain.clone(),
                    kind,
                    class: kind.class(),
                    nodes: Vec::new(),
                    first_seen,
                    last_seen: first_seen,
                    threshold: least as i64,
                    window_s: rules.correlate_window.num_seconds(),
                    message: String::new(),
                };
                (c, 0)
            }
        };
        let mut nodes = Vec::new();
        let stored: Vec<String> = members.iter().filter(|m| m.stored).map(|m| m.id.to_string()).collect();
        for chunk in stored.chunks(500) {
            let params = firebreak_plumbing::db::placeholders(tx, chunk.len() + 2);
            let sql = format!(
                "UPDATE incidents SET correlation_id = {}, version = version + 1, updated_at_ms = {}, unpublished = 1 \
                 WHERE correlation_id IS NULL AND id IN ({}) RETURNING id, node",
                params[0],
                params[1],
                params[2..].join(",")
            );
            let mut q = sqlx::query(&sql).bind(c.id.to_string()).bind(ms(now));
            for id in chunk {
                q = q.bind(id);
            }
            for r in q.fetch_all(&mut **tx).await? {
                nodes.push(r.try_get::<String, _>("node")?);
                if let Some((i, Some(v))) = incidents.get_mut(&uuid(&r.try_get::<String, _>("id")?)?) {
                    i.correlation_id = Some(c.id);
                    *v += 1;
                }
            }
        }
        for m in members.iter().filter(|m| !m.stored) {
            if let Some((i, None)) = incidents.get_mut(&m.id) {
                i.correlation_id = Some(c.id);
                nodes.push(i.node.clone());
            }
        }
        let before = c.nodes.len();
        let mut known: std::collections::HashSet<String> = c.nodes.iter().cloned().collect();
        for n in nodes {
            if known.insert(n.clone()) {
                c.nodes.push(n);
            }
        }
        if c.nodes.len() == before && version > 0 {
            continue;
        }
        c.first_seen = c.first_seen.min(first_seen);
        c.last_seen = c.last_seen.max(DateTime::from_timestamp_millis(newest).unwrap_or(now));
        let (n, w) = (c.nodes.len(), rules.correlate_window.num_seconds());
        c.message = match &c.domain {
            Some((k, v)) => format!(
                "{n} nodes of {k}={v} in {cluster} reported {kind} within {w} s: likely that domain's \
                 infrastructure, not the nodes"
            ),
            None => format!("{n} nodes of {cluster} reported {kind} within {w} s: likely infrastructure, not nodes"),
        };
        let body = serde_json::to_string(&c).map_err(|e| Error::Corrupt(e.to_string()))?;
        let done = sqlx::query(
            "INSERT INTO correlations (id, cluster, kind, first_seen_ms, last_seen_ms, body, version, published_version) \
             VALUES ($1, $2, $3, $4, $5, $6, 1, 0) ON CONFLICT (id) DO UPDATE SET last_seen_ms = excluded.last_seen_ms, \
             body = excluded.body, version = correlations.version + 1 WHERE correlations.version = $7",
        )
        .bind(c.id.to_string())
        .bind(cluster)
        .bind(kind.as_str())
        .bind(ms(c.first_seen))
        .bind(ms(c.last_seen))
        .bind(body)
        .bind(version)
        .execute(&mut **tx)
        .await?;
        if done.rows_affected() != 1 {
            return Err(Error::Conflict(format!("correlation {} changed meanwhile", c.id)));
        }
        match found {
            Some(at) => existing[at] = (c.clone(), version + 1),
            None => existing.push((c.clone(), 1)),
        }
        out.push(c);
    }
    Ok(out)
}

/// The correlation (of `existing`) that incidents joining `scope` join: the one of that scope,
/// or, for a failure domain, one of a narrower domain whose nodes all lie in it (which widens).
fn joins(existing: &[(Correlation, i64)], scope: &Place, of: &NodeDomains) -> Option<usize> {
    existing.iter().position(|(c, _)| &c.domain == scope).or_else(|| {
        let (k, v) = scope.as_ref()?;
        existing.iter().position(|(c, _)| {
            c.domain.is_some()
                && c.nodes.iter().all(|n| of.get(n.as_str()).is_some_and(|ds| ds.contains(&(k.as_str(), v.as_str()))))
        })
    })
}

/// Where a correlation is: its cluster (`None`) or a failure domain (label key, value) of it.
type Place = Option<(String, String)>;

/// Each node's failure domains: node → [(label key, value)].
type NodeDomains<'a> = BTreeMap<&'a str, Vec<firebreak_schema::Domain<'a>>>;

/// Applies a stored step to its node's incidents, inside the transaction that stored it: the
/// incident its workflow started from follows the workflow; a healed (or replaced, or gone) node
/// resolves every other active incident seen on it before the step.
pub(super) async fn follow_step(
    tx: &mut Transaction<'_, Any>,
    step: &RemediationEvent,
    now: DateTime<Utc>,
) -> Result<Vec<Incident>> {
    let trigger: Option<String> = sqlx::query("SELECT incident_id FROM fault_events WHERE id = $1")
        .bind(step.trigger_event_id.to_string())
        .fetch_optional(&mut **tx)
        .await?
        .map(|r| r.try_get::<Option<String>, _>("incident_id"))
        .transpose()?
        .flatten();
    let mut out = Vec::new();
    for mut i in active_of_nodes(tx, &[(step.cluster.as_str(), step.node.as_str())]).await? {
        let before = i.version;
        let changed = if Some(i.id.to_string()) == trigger {
            apply_step(&mut i, step)
        } else if heals_node(step) && i.last_seen <= step.at {
            resolve(&mut i, step.at, format!("node {}: {}", step.state, step.reason));
            true
        } else {
            false
        };
        if changed {
            put(tx, &mut i, Some(before), now).await?;
            out.push(i);
        }
    }
    Ok(out)
}

/// An operator's action on an incident.
#[derive(Debug, Clone)]
pub enum Action {
    /// Take it: acknowledged, with a note.
    Acknowledge {
        /// Why, or what the operator will do.
        note: String,
    },
    /// Silence it until a time; it returns to what its workflow says then.
    Silence {
        /// Until when.
        until: DateTime<Utc>,
        /// Why.
        note: String,
    },
    /// Assign it to someone.
    Assign {
        /// To whom.
        to: String,
    },
    /// Add a note to its timeline.
    Annotate {
        /// The note.
        text: String,
    },
    /// The operator asked the remediator to clear the node's escalation (the request travels
    /// on the control topic; this records it).
    ClearEscalation {
        /// Why.
        note: String,
    },
}

impl Action {
    /// The action's name in the timeline.
    pub fn name(&self) -> &'static str {
        match self {
            Action::Acknowledge { .. } => "acknowledge",
            Action::Silence { .. } => "silence",
            Action::Assign { .. } => "assign",
            Action::Annotate { .. } => "annotate",
            Action::ClearEscalation { .. } => "clear_escalation",
        }
    }
}

/// One entry of a timeline.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Entry {
    /// A fault, as an occurrence of an incident.
    Occurrence {
        /// When it was observed (or received, for a source whose clock is wrong).
        at: DateTime<Utc>,
        /// The fault.
        #[serde(flatten)]
        record: Box<firebreak_schema::EventRecord>,
        /// Its incident.
        incident_id: Option<Uuid>,
        /// Caused by Firebreak's own remediation.
        expected: bool,
    },
    /// A remediation step, with its reason.
    Step {
        /// When.
        at: DateTime<Utc>,
        /// The step.
        #[serde(flatten)]
        step: RemediationEvent,
    },
    /// The gate's answer to a permit request for the node (a run of the same denial is one
    /// entry, at its latest).
    Decision {
        /// When (the latest of the run).
        at: DateTime<Utc>,
        /// The decision.
        #[serde(flatten)]
        decision: Box<super::DecisionRun>,
    },
    /// An operator's action.
    Note {
        /// When.
        at: DateTime<Utc>,
        /// The incident.
        incident_id: Uuid,
        /// Who.
        by: String,
        /// What: acknowledge, silence, assign, annotate, clear_escalation.
        action: String,
        /// The note.
        text: String,
    },
}

impl Entry {
    fn at(&self) -> DateTime<Utc> {
        match self {
            Entry::Occurrence { at, .. }
            | Entry::Step { at, .. }
            | Entry::Decision { at, .. }
            | Entry::Note { at, .. } => *at,
        }
    }
}

/// The gate's decisions as timeline entries.
fn decision_entries(runs: Vec<super::DecisionRun>) -> impl Iterator<Item = Entry> {
    runs.into_iter().map(|d| Entry::Decision { at: d.decision.at, decision: Box::new(d) })
}

/// Newest first.
fn newest_first(mut entries: Vec<Entry>, limit: usize) -> Vec<Entry> {
    entries.sort_by_key(|e| std::cmp::Reverse(e.at()));
    entries.truncate(limit);
    entries
}

/// An incident with its timeline.
#[derive(Debug, Clone, serde::Serialize)]
pub struct IncidentDetail {
    /// The incident.
    pub incident: Incident,
    /// Its correlation, if any.
    pub correlation: Option<Correlation>,
    /// Its occurrences, its workflow's steps and the operators' notes, newest first.
    pub timeline: Vec<Entry>,
}

/// A node's incidents and timeline.
#[derive(Debug, Clone, serde::Serialize)]
pub struct NodeTimeline {
    /// Cluster.
    pub cluster: String,
    /// Node.
    pub node: String,
    /// Its active incidents, most urgent first.
    pub incidents: Vec<Incident>,
    /// The node as the cluster's latest health sample saw it, if it was unhealthy there.
    pub health: Option<firebreak_schema::UnhealthyNode>,
    /// Faults, steps and notes on the node, newest first.
    pub timeline: Vec<Entry>,
}

/// One cluster in the fleet view.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ClusterSummary {
    /// Cluster.
    pub cluster: String,
    /// Nodes, from its latest health sample (absent without one).
    pub nodes: Option<i64>,
    /// Ready nodes, likewise.
    pub ready: Option<i64>,
    /// Nodes Firebreak took out of service, likewise.
    pub out_of_service: Option<i64>,
    /// Nodes with an escalated incident.
    pub escalated_nodes: i64,
    /// Active incidents by class.
    pub open_by_class: BTreeMap<String, i64>,
    /// Nodes with an active incident, by class.
    pub nodes_by_class: BTreeMap<String, i64>,
    /// When its health sample was taken.
    pub sampled_at: Option<DateTime<Utc>>,
}

/// `GET /api/v1/incidents` parameters.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IncidentQuery {
    /// Only this cluster.
    pub cluster: Option<String>,
    /// Only this node (with or without `cluster`).
    pub node: Option<String>,
    /// Only this class.
    pub class: Option<String>,
    /// Only this kind.
    pub kind: Option<String>,
    /// Only these states, comma-separated; `active` for every state but resolved.
    pub state: Option<String>,
    /// Only incidents seen at or after this time (RFC 3339).
    pub since: Option<String>,
    /// Only incidents first seen at or before this time (RFC 3339).
    pub until: Option<String>,
    /// Where the previous page ended (its `next`).
    pub cursor: Option<String>,
    /// At most this many (1 to 1000, default 100).
    pub limit: Option<i64>,
}

/// A page of incidents.
#[derive(Debug, Clone, serde::Serialize)]
pub struct IncidentPage {
    /// Most urgent first: state, then severity, then the newest opened (first seen).
    pub items: Vec<Incident>,
    /// The cursor of the next page; absent on the last.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

fn bad(what: &str) -> Error {
    Error::BadRequest(what.to_owned())
}

fn parse_rfc3339(name: &str, s: &str) -> Result<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| Error::BadRequest(format!("{name} `{s}` is not an RFC 3339 time: {e}")))
}

impl Store {
    /// Incidents matching `q`, most urgent first, a page at a time.
    pub async fn list_incidents(&self, q: &IncidentQuery) -> Result<IncidentPage> {
        let limit = super::limit(q.limit)?;
        let mut w = Where::default();
        w.eq("cluster", given("cluster", &q.cluster)?);
        w.eq("node", given("node", &q.node)?);
        if let Some(c) = given("class", &q.class)? {
            c.parse::<FaultClass>().map_err(|_| bad(&format!("unknown class `{c}` (hardware, system, component)")))?;
            w.eq("class", Some(c));
        }
        if let Some(k) = given("kind", &q.kind)? {
            k.parse::<FaultKind>().map_err(|e| bad(&e.to_string()))?;
            w.eq("kind", Some(k));
        }
        if let Some(states) = given("state", &q.state)? {
            let mut ranges = Vec::new();
            for s in states.split(',') {
                let list: Vec<IncidentState> = if s == "active" {
                    IncidentState::ALL.into_iter().filter(|s| *s != IncidentState::Resolved).collect()
                } else {
                    vec![s.parse().map_err(|_| {
                        bad(&format!(
                            "unknown state `{s}` (active, open, acknowledged, silenced, remediating, escalated, resolved)"
                        ))
                    })?]
                };
                for st in list {
                    let lo = w.param(Arg::Int(i64::from(st.urgency() * 10)));
                    let hi = w.param(Arg::Int(i64::from(st.urgency() * 10 + 9)));
                    ranges.push(format!("board_key BETWEEN {lo} AND {hi}"));
                }
            }
            w.terms.push(format!("({})", ranges.join(" OR ")));
        }
        if let Some(s) = given("since", &q.since)? {
            let p = w.param(Arg::Int(ms(parse_rfc3339("since", s)?)));
            w.terms.push(format!("last_seen_ms >= {p}"));
        }
        if let Some(s) = given("until", &q.until)? {
            let p = w.param(Arg::Int(ms(parse_rfc3339("until", s)?)));
            w.terms.push(format!("first_seen_ms <= {p}"));
        }
        if let Some(c) = given("cursor", &q.cursor)? {
            let parts: Vec<&str> = c.splitn(3, '.').collect();
            let [k, t, id] = parts[..] else { return Err(bad(&format!("cursor `{c}` is not one this API gave"))) };
            // Only as this API writes them (no `+1`, no uppercase or braced ids).
            let (Ok(k), Ok(t), Ok(id)) = (k.parse::<i64>(), t.parse::<i64>(), id.parse::<Uuid>()) else {
                return Err(bad(&format!("cursor `{c}` is not one this API gave")));
            };
            if format!("{k}.{t}.{id}") != c {
                return Err(bad(&format!("cursor `{c}` is not one this API gave")));
            }
            let (pk, pt, pi) = (w.param(Arg::Int(k)), w.param(Arg::Int(t)), w.param(Arg::Text(id.to_string())));
            w.terms.push(format!(
                "(board_key > {pk} OR (board_key = {pk} AND (first_seen_ms < {pt} OR (first_seen_ms = {pt} AND id < {pi}))))"
            ));
        }
        let lim = w.param(Arg::Int(limit + 1));
        let sql = format!(
            "SELECT {COLUMNS}, board_key FROM incidents {} ORDER BY board_key, first_seen_ms DESC, id DESC LIMIT {lim}",
            w.sql()
        );
        let rows = w.bind(sqlx::query(&sql)).fetch_all(&self.pool).await?;
        let mut items: Vec<Incident> = rows.iter().map(incident_of_row).collect::<Result<_>>()?;
        let next = if items.len() as i64 > limit {
            items.truncate(limit as usize);
            items.last().map(|i| format!("{}.{}.{}", board_key(i.state, i.severity), ms(i.first_seen), i.id))
        } else {
            None
        };
        Ok(IncidentPage { items, next })
    }

    /// One incident.
    pub async fn incident(&self, id: Uuid) -> Result<Option<Incident>> {
        let sql = format!("SELECT {COLUMNS} FROM incidents WHERE id = $1");
        sqlx::query(&sql)
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(incident_of_row)
            .transpose()
    }

    /// An incident with its correlation and its timeline (its latest 200 occurrences, its
    /// workflow's steps and the gate's decisions on them, the operators' notes), newest first.
    pub async fn incident_detail(&self, id: Uuid) -> Result<Option<IncidentDetail>> {
        let Some(incident) = self.incident(id).await? else { return Ok(None) };
        let mut timeline = self.occurrences("incident_id = $1", &[id.to_string()], 200).await?;
        if let Some(w) = incident.workflow_id {
            let rows =
                sqlx::query(&format!("{} WHERE workflow_id = $1 ORDER BY at_ms DESC LIMIT 200", super::STEP_SELECT))
                    .bind(w.to_string())
                    .fetch_all(&self.pool)
                    .await?;
            for r in rows {
                let step = super::step_of_row(&r)?;
                timeline.push(Entry::Step { at: step.at, step });
            }
            timeline.extend(decision_entries(self.decisions(super::DecisionsOf::Workflow(w)).await?));
        }
        timeline.extend(self.notes(&[id.to_string()]).await?);
        let correlation = match incident.correlation_id {
            Some(c) => self.correlation(c).await?,
            None => None,
        };
        Ok(Some(IncidentDetail { incident, correlation, timeline: newest_first(timeline, 600) }))
    }

    async fn occurrences(&self, cond: &str, args: &[String], limit: i64) -> Result<Vec<Entry>> {
        let sql = format!(
            "SELECT id, cluster, node, class, kind, severity, source, observed_at, message, evidence, received_at, \
             clock_skew_ms, sort_at_ms, incident_id, expected FROM fault_events WHERE {cond} \
             ORDER BY sort_at_ms DESC, id DESC LIMIT {limit}"
        );
        let mut q = sqlx::query(&sql);
        for a in args {
            q = q.bind(a.as_str());
        }
        q.fetch_all(&self.pool)
            .await?
            .iter()
            .map(|r| {
                Ok(Entry::Occurrence {
                    at: time(r.try_get("sort_at_ms")?)?,
                    record: Box::new(super::fault_of_row(r)?),
                    incident_id: r.try_get::<Option<String>, _>("incident_id")?.map(|s| uuid(&s)).transpose()?,
                    expected: r.try_get::<i32, _>("expected")? != 0,
                })
            })
            .collect()
    }

    async fn notes(&self, incidents: &[String]) -> Result<Vec<Entry>> {
        let mut out = Vec::new();
        for chunk in incidents.chunks(200) {
            let params: Vec<String> = (1..=chunk.len()).map(|k| format!("${k}")).collect();
            let sql = format!(
                "SELECT incident_id, at_ms, by_name, action, text FROM incident_notes WHERE incident_id IN ({}) \
                 ORDER BY at_ms DESC LIMIT 200",
                params.join(",")
            );
            let mut q = sqlx::query(&sql);
            for id in chunk {
                q = q.bind(id.as_str());
            }
            for r in q.fetch_all(&self.pool).await? {
                out.push(Entry::Note {
                    at: time(r.try_get("at_ms")?)?,
                    incident_id: uuid(&r.try_get::<String, _>("incident_id")?)?,
                    by: r.try_get("by_name")?,
                    action: r.try_get("action")?,
                    text: r.try_get("text")?,
                });
            }
        }
        Ok(out)
    }

    /// A node's active incidents and its timeline: its latest 200 faults, steps and gate
    /// decisions, and the notes on its incidents, newest first.
    pub async fn node_timeline(&self, cluster: &str, node: &str) -> Result<NodeTimeline> {
        let (cluster, node) = (printable("cluster", cluster)?, printable("node", node)?);
        let sql = format!(
            "SELECT {COLUMNS} FROM incidents WHERE cluster = $1 AND node = $2 AND active = 1 ORDER BY board_key, last_seen_ms DESC"
        );
        let rows = sqlx::query(&sql).bind(cluster).bind(node).fetch_all(&self.pool).await?;
        let incidents: Vec<Incident> = rows.iter().map(incident_of_row).collect::<Result<_>>()?;
        let args = [cluster.to_owned(), node.to_owned()];
        let mut timeline = self.occurrences("cluster = $1 AND node = $2", &args, 200).await?;
        let rows = sqlx::query(&format!(
            "{} WHERE cluster = $1 AND node = $2 ORDER BY at_ms DESC LIMIT 200",
            super::STEP_SELECT
        ))
        .bind(cluster)
        .bind(node)
        .fetch_all(&self.pool)
        .await?;
        for r in rows {
            let step = super::step_of_row(&r)?;
            timeline.push(Entry::Step { at: step.at, step });
        }
        timeline.extend(decision_entries(self.decisions(super::DecisionsOf::Node(cluster, node)).await?));
        let ids: Vec<String> = sqlx::query("SELECT id FROM incidents WHERE cluster = $1 AND node = $2")
            .bind(cluster)
            .bind(node)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|r| r.try_get("id"))
            .collect::<std::result::Result<_, _>>()?;
        timeline.extend(self.notes(&ids).await?);
        let health = self
            .gate_view()
            .await?
            .clusters
            .into_iter()
            .find(|h| h.cluster == cluster)
            .and_then(|h| h.unhealthy.into_iter().find(|u| u.name == node));
        Ok(NodeTimeline {
            cluster: cluster.to_owned(),
            node: node.to_owned(),
            incidents,
            health,
            timeline: newest_first(timeline, 400),
        })
    }

    /// Per cluster: its size and readiness from its latest health sample, the nodes Firebreak
    /// took out of service, nodes escalated, and active incidents (and their nodes) by class.
    pub async fn fleet(&self) -> Result<Vec<ClusterSummary>> {
        let mut out: BTreeMap<String, ClusterSummary> = BTreeMap::new();
        for h in self.gate_view().await?.clusters {
            let s = out.entry(h.cluster.clone()).or_default();
            s.nodes = Some(h.nodes as i64);
            s.ready = Some(h.ready as i64);
            s.out_of_service = Some(h.unhealthy.iter().filter(|u| u.out_of_service).count() as i64);
            s.sampled_at = Some(h.at);
        }
        let rows = sqlx::query(
            "SELECT cluster, class, COUNT(*) AS n, COUNT(DISTINCT node) AS nodes FROM incidents WHERE active = 1 \
             GROUP BY cluster, class",
        )
        .fetch_all(&self.pool)
        .await?;
        for r in rows {
            let s = out.entry(r.try_get("cluster")?).or_default();
            let class: String = r.try_get("class")?;
            s.open_by_class.insert(class.clone(), r.try_get("n")?);
            s.nodes_by_class.insert(class, r.try_get("nodes")?);
        }
        let rows = sqlx::query(
            "SELECT cluster, COUNT(DISTINCT node) AS nodes FROM incidents WHERE active = 1 AND state = 'escalated' \
             GROUP BY cluster",
        )
        .fetch_all(&self.pool)
        .await?;
        for r in rows {
            out.entry(r.try_get("cluster")?).or_default().escalated_nodes = r.try_get("nodes")?;
        }
        Ok(out
            .into_iter()
            .map(|(cluster, mut s)| {
                s.cluster = cluster;
                s
            })
            .collect())
    }

    /// One correlation.
    pub async fn correlation(&self, id: Uuid) -> Result<Option<Correlation>> {
        sqlx::query("SELECT body FROM correlations WHERE id = $1")
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await?
            .map(|r| {
                serde_json::from_str(&r.try_get::<String, _>("body")?)
                    .map_err(|e| Error::Corrupt(format!("correlation {id}: {e}")))
            })
            .transpose()
    }

    /// Correlations with an active incident, newest first.
    pub async fn active_correlations(&self) -> Result<Vec<Correlation>> {
        let rows = sqlx::query(
            "SELECT body FROM correlations WHERE id IN \
             (SELECT DISTINCT correlation_id FROM incidents WHERE active = 1 AND correlation_id IS NOT NULL) \
             ORDER BY last_seen_ms DESC LIMIT 50",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                serde_json::from_str(&r.try_get::<String, _>("body")?)
                    .map_err(|e| Error::Corrupt(format!("correlation: {e}")))
            })
            .collect()
    }

    /// Records an operator's action on an incident and applies it; the incident as it now is.
    /// A resolved incident takes notes only.
    ///
    /// Every write of an incident is a compare-and-set on its version, and an occurrence may come
    /// between this read and write (on PostgreSQL, where ingest runs beside it): the action is
    /// then applied again to what the incident has become, rather than refusing the operator a
    /// busy incident. Its note is written in the same transaction, so it is kept once.
    pub async fn act(&self, id: Uuid, by: &str, action: &Action) -> Result<Option<Incident>> {
        const AGAIN: retry::Policy = retry::Policy::times(10, Duration::from_millis(2), Duration::from_millis(100));
        AGAIN
            .while_err("an operator's action", |e| matches!(e, Error::Conflict(_)), || self.act_once(id, by, action))
            .await
    }

    async fn act_once(&self, id: Uuid, by: &str, action: &Action) -> Result<Option<Incident>> {
        let now = Utc::now();
        let mut tx = self.pool.begin().await?;
        let sql = format!("SELECT {COLUMNS} FROM incidents WHERE id = $1");
        let Some(row) = sqlx::query(&sql).bind(id.to_string()).fetch_optional(&mut *tx).await? else {
            return Ok(None);
        };
        let mut i = incident_of_row(&row)?;
        let before = i.version;
        let live = i.state != IncidentState::Resolved;
        let text = match action {
            Action::Acknowledge { note } => {
                if live {
                    i.state = IncidentState::Acknowledged;
                    i.acknowledged_by = Some(by.to_owned());
                    i.reason = format!("acknowledged by {by}: {note}");
                }
                note.clone()
            }
            Action::Silence { until, note } => {
                if *until <= now {
                    return Err(bad(&format!("silence until {until}: that is not in the future")));
                }
                if live {
                    i.state = IncidentState::Silenced;
                    i.silenced_until = Some(*until);
                    i.reason = format!("silenced by {by} until {}: {note}", super::fmt(*until));
                }
                format!("until {}: {note}", super::fmt(*until))
            }
            Action::Assign { to } => {
                i.assignee = Some(to.clone());
                format!("assigned to {to}")
            }
            Action::Annotate { text } => text.clone(),
            Action::ClearEscalation { note } => note.clone(),
        };
        sqlx::query(
            "INSERT INTO incident_notes (id, incident_id, at_ms, by_name, action, text) VALUES ($1,$2,$3,$4,$5,$6)",
        )
        .bind(Uuid::now_v7().to_string())
        .bind(id.to_string())
        .bind(ms(now))
        .bind(by)
        .bind(action.name())
        .bind(text)
        .execute(&mut *tx)
        .await?;
        put(&mut tx, &mut i, Some(before), now).await?;
        tx.commit().await?;
        Ok(Some(i))
    }

    /// Ends silences that are over and resolves incidents nothing works on that stayed quiet for
    /// `rules.resolve_quiet_after`; the incidents changed.
    pub async fn expire(&self, now: DateTime<Utc>) -> Result<Vec<Incident>> {
        let quiet = ms(now - self.rules.resolve_quiet_after);
        let sql = format!(
            "SELECT {COLUMNS} FROM incidents WHERE active = 1 AND ((state = 'silenced' AND silenced_until_ms <= $1) \
             OR (state IN ('open', 'acknowledged', 'silenced') AND last_seen_ms < $2)) LIMIT 1000"
        );
        let rows = sqlx::query(&sql).bind(ms(now)).bind(quiet).fetch_all(&self.pool).await?;
        let mut out = Vec::new();
        for r in rows {
            let mut i = incident_of_row(&r)?;
            let before = i.version;
            if ms(i.last_seen) < quiet {
                let quiet_s = self.rules.resolve_quiet_after.num_seconds();
                let why = format!("no occurrence for {quiet_s} s since {}", super::fmt(i.last_seen));
                resolve(&mut i, now, why);
            } else {
                i.state = natural_state(&i);
                i.reason = format!("silence ended at {}", i.silenced_until.map(super::fmt).unwrap_or_default());
                i.silenced_until = None;
            }
            let mut tx = self.pool.begin().await?;
            match put(&mut tx, &mut i, Some(before), now).await {
                Ok(()) => {
                    tx.commit().await?;
                    out.push(i);
                }
                // Another writer changed it: the next round sees its change.
                Err(Error::Conflict(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// Incidents changed since they were last published, oldest change first, each with the
    /// state it had when last published (`None`: never published).
    pub async fn unpublished_incidents(&self, limit: i64) -> Result<Vec<(Incident, Option<IncidentState>)>> {
        let sql = format!(
            "SELECT {COLUMNS}, published_state FROM incidents WHERE unpublished = 1 ORDER BY updated_at_ms LIMIT $1"
        );
        let rows = sqlx::query(&sql).bind(limit).fetch_all(&self.pool).await?;
        rows.iter()
            .map(|r| {
                let before = r
                    .try_get::<Option<String>, _>("published_state")?
                    .map(|s| s.parse().map_err(|e: firebreak_schema::Error| Error::Corrupt(e.to_string())))
                    .transpose()?;
                Ok((incident_of_row(r)?, before))
            })
            .collect()
    }

    /// Marks incidents published at the versions (and states) given, each with the webhook calls
    /// its change makes: a short transaction each, outside any other, so that the outbox never
    /// holds one incident's row while it waits for another's that an ingest batch holds (on
    /// PostgreSQL that was a deadlock, retried, under load). Each mark only moves forward, so a
    /// partial pass is published again, never lost; the calls are stored only by the mark that
    /// moved, so a change that two replicas publish queues its calls once.
    pub async fn incidents_published(&self, done: &[(&Incident, Vec<WebhookCall>)]) -> Result<()> {
        let now = ms(Utc::now());
        for (i, calls) in done {
            // Most changes call no webhook: their mark is one statement.
            if calls.is_empty() {
                mark_published(&self.pool, i).await?;
                continue;
            }
            let mut tx = self.pool.begin().await?;
            if mark_published(&mut *tx, i).await? == 1 {
                for c in calls {
                    sqlx::query(
                        "INSERT INTO incident_webhooks (id, incident_id, url, event, body, attempts, next_at_ms) \
                         VALUES ($1, $2, $3, $4, $5, 0, $6)",
                    )
                    .bind(Uuid::now_v7().to_string())
                    .bind(i.id.to_string())
                    .bind(&c.url)
                    .bind(&c.event)
                    .bind(&c.body)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                }
            }
            tx.commit().await?;
        }
        Ok(())
    }

    /// Webhook calls due now, oldest first, at most `limit`: for each incident and receiver only
    /// the oldest not yet delivered, so that a receiver is told of an incident's changes in order.
    pub async fn due_webhooks(&self, limit: i64) -> Result<Vec<PendingCall>> {
        let rows = sqlx::query(
            "SELECT id, incident_id, url, event, body, attempts FROM incident_webhooks w WHERE next_at_ms <= $1 AND NOT EXISTS \
             (SELECT 1 FROM incident_webhooks o WHERE o.incident_id = w.incident_id AND o.url = w.url AND o.id < w.id) \
             ORDER BY id LIMIT $2",
        )
        .bind(ms(Utc::now()))
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(PendingCall {
                    id: uuid(&r.try_get::<String, _>("id")?)?,
                    incident_id: uuid(&r.try_get::<String, _>("incident_id")?)?,
                    call: WebhookCall { url: r.try_get("url")?, event: r.try_get("event")?, body: r.try_get("body")? },
                    attempts: r.try_get("attempts")?,
                })
            })
            .collect()
    }

    /// Forgets a delivered (or no longer deliverable) webhook call.
    pub async fn webhook_delivered(&self, id: Uuid) -> Result<()> {
        sqlx::query("DELETE FROM incident_webhooks WHERE id = $1").bind(id.to_string()).execute(&self.pool).await?;
        Ok(())
    }

    /// Gives up a webhook call that could not be delivered: it is forgotten, and the incident's
    /// timeline says so (a note by `firebreak`, action `webhook_given_up`), in one transaction.
    pub async fn webhook_given_up(&self, id: Uuid, incident_id: Uuid, why: &str) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        let gone =
            sqlx::query("DELETE FROM incident_webhooks WHERE id = $1").bind(id.to_string()).execute(&mut *tx).await?;
        // Given up once, whoever else tried it meanwhile.
        if gone.rows_affected() == 1 {
            sqlx::query(
                "INSERT INTO incident_notes (id, incident_id, at_ms, by_name, action, text) VALUES ($1,$2,$3,$4,$5,$6)",
            )
            .bind(Uuid::now_v7().to_string())
            .bind(incident_id.to_string())
            .bind(ms(Utc::now()))
            .bind("firebreak")
            .bind("webhook_given_up")
            .bind(why)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Records a failed attempt at a webhook call and when to try again.
    pub async fn webhook_failed(&self, id: Uuid, attempts: i64, next_at: DateTime<Utc>) -> Result<()> {
        sqlx::query("UPDATE incident_webhooks SET attempts = $2, next_at_ms = $3 WHERE id = $1")
            .bind(id.to_string())
            .bind(attempts)
            .bind(ms(next_at))
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Occurrences not yet published, in the order they were received.
    pub async fn unpublished_occurrences(&self, limit: i64) -> Result<Vec<Occurrence>> {
        let rows = sqlx::query(
            "SELECT id, cluster, node, class, kind, severity, source, observed_at, message, evidence, received_at, \
             clock_skew_ms, incident_id, expected FROM fault_events WHERE published = 0 \
             ORDER BY received_at_ms, id LIMIT $1",
        )
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .filter_map(|r| {
                let incident = match r.try_get::<Option<String>, _>("incident_id") {
                    Ok(Some(s)) => s,
                    Ok(None) => return None,
                    Err(e) => return Some(Err(e.into())),
                };
                Some((|| {
                    Ok(Occurrence {
                        event: super::fault_of_row(r)?.event,
                        incident_id: uuid(&incident)?,
                        expected: r.try_get::<i32, _>("expected")? != 0,
                    })
                })())
            })
            .collect()
    }

    /// Marks occurrences published.
    pub async fn occurrences_published(&self, ids: &[Uuid]) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        for chunk in ids.chunks(500) {
            let params = firebreak_plumbing::db::placeholders(&tx, chunk.len());
            let sql = format!("UPDATE fault_events SET published = 1 WHERE id IN ({})", params.join(","));
            let mut q = sqlx::query(&sql);
            for id in chunk {
                q = q.bind(id.to_string());
            }
            q.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Correlations changed since they were last published, with their versions.
    pub async fn unpublished_correlations(&self) -> Result<Vec<(Correlation, i64)>> {
        let rows = sqlx::query(
            "SELECT body, version FROM correlations WHERE version > published_version ORDER BY last_seen_ms LIMIT 100",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let c = serde_json::from_str(&r.try_get::<String, _>("body")?)
                    .map_err(|e| Error::Corrupt(format!("correlation: {e}")))?;
                Ok((c, r.try_get("version")?))
            })
            .collect()
    }

    /// Marks a correlation published at a version.
    pub async fn correlation_published(&self, id: Uuid, version: i64) -> Result<()> {
        sqlx::query("UPDATE correlations SET published_version = $2 WHERE id = $1 AND published_version < $2")
            .bind(id.to_string())
            .bind(version)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(state: &str) -> RemediationEvent {
        RemediationEvent {
            id: Uuid::now_v7(),
            workflow_id: Uuid::now_v7(),
            cluster: "c1".into(),
            node: "n1".into(),
            trigger_event_id: Uuid::now_v7(),
            state: state.into(),
            reason: "why".into(),
            at: Utc::now(),
        }
    }

    fn incident() -> Incident {
        let e = FaultEvent {
            id: Uuid::now_v7(),
            cluster: "c1".into(),
            node: "n1".into(),
            class: FaultClass::System,
            kind: FaultKind::KernelHung,
            severity: Severity::Warning,
            source: firebreak_schema::Source::Agent,
            observed_at: Utc::now(),
            message: "hung".into(),
            evidence: Default::default(),
        };
        open(&e)
    }

    #[test]
    fn a_workflow_moves_its_incident_and_an_operator_hold_outlasts_progress() {
        let mut i = incident();
        assert!(apply_step(&mut i, &step("cordoning")));
        assert_eq!(i.state, IncidentState::Remediating);
        i.state = IncidentState::Acknowledged;
        apply_step(&mut i, &step("draining"));
        assert_eq!(i.state, IncidentState::Acknowledged, "progress does not undo an operator's acknowledgement");
        apply_step(&mut i, &step("escalated"));
        assert_eq!(i.state, IncidentState::Escalated);
        assert_eq!(natural_state(&i), IncidentState::Escalated);
        apply_step(&mut i, &step("healed"));
        assert_eq!((i.state, i.resolved_at.is_some()), (IncidentState::Resolved, true));
        assert!(!apply_step(&mut i, &step("escalated")), "a resolved incident stays resolved");
    }

    #[test]
    fn the_board_orders_by_state_then_severity() {
        let k = |s, v| board_key(s, v);
        assert!(k(IncidentState::Escalated, Severity::Info) < k(IncidentState::Open, Severity::Critical));
        assert!(k(IncidentState::Open, Severity::Critical) < k(IncidentState::Open, Severity::Warning));
        assert!(k(IncidentState::Silenced, Severity::Critical) < k(IncidentState::Resolved, Severity::Critical));
        for s in IncidentState::ALL {
            for v in [Severity::Info, Severity::Warning, Severity::Critical] {
                let key = k(s, v);
                assert!((s.urgency() * 10..=s.urgency() * 10 + 9).contains(&key), "the state filter's range holds it");
            }
        }
    }
}
