//! The decision: one permit request against the policy and the world as the store holds it —
//! permits in flight, rate state, recent grants, halts, breaker trips and cluster snapshots.
//! Pure: the caller loads the world inside a transaction that holds the gate's lock, decides a
//! batch of requests in order (each decision updates the world the next one sees) and writes the
//! results in the same transaction, so budgets are exact across requests, replicas and restarts.
//!
//! Order of the rules: the policy knows the operation → the same requester already holds it
//! (idempotent) → halts → freezes → windows → open breakers → per scope (global, cluster, each
//! failure domain): in-flight cap, in-flight percentage, unhealthy ratio, rate → the breaker's
//! window. The first rule that says no decides, with its name, scope, measured value and
//! threshold.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::Arc,
};

use chrono::{DateTime, TimeDelta, Utc};
use firebreak_schema::{
    BreakerTrip, Halt, HealthSample, Operation, Permit, PermitRequest, PermitResponse, PermitState, Scope,
};
use uuid::Uuid;

use crate::policy::{BreakerScope, Limits, Policy};

/// A grant as the rate and breaker rules count it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Grant {
    pub(crate) operation: Operation,
    pub(crate) cluster: String,
    pub(crate) domains: BTreeMap<String, String>,
    pub(crate) at: DateTime<Utc>,
}

/// What the decision reads, loaded under the gate's lock.
#[derive(Debug, Clone, Default)]
pub(crate) struct World {
    /// Active permits.
    pub(crate) active: Vec<Permit>,
    /// GCRA theoretical arrival time per (operation, scope).
    pub(crate) tats: HashMap<(Operation, String), DateTime<Utc>>,
    /// Grants since the longest window any rule looks back over.
    pub(crate) grants: Vec<Grant>,
    /// Halts in force.
    pub(crate) halts: Vec<Halt>,
    /// Breakers open now.
    pub(crate) trips: Vec<BreakerTrip>,
    /// When each breaker (operation, scope) last closed — reset by an operator or cooled down:
    /// grants before that do not count again.
    pub(crate) closed: HashMap<(Operation, String), DateTime<Utc>>,
    /// The latest snapshot per cluster.
    pub(crate) snapshots: Arc<HashMap<String, HealthSample>>,
}

/// What to write for one decision.
#[derive(Debug, Clone)]
pub(crate) enum Outcome {
    /// Granted now, with the measured values that allowed it: insert the permit.
    Granted(Permit, String),
    /// The same requester already holds this permit.
    Held(Permit),
    /// Denied, with why; maybe a breaker tripped.
    Denied(Denial, Option<BreakerTrip>),
}

/// A denial, explained.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Denial {
    pub(crate) rule: &'static str,
    pub(crate) scope: Scope,
    pub(crate) measured: f64,
    pub(crate) threshold: f64,
    pub(crate) reason: String,
    pub(crate) retry_after_s: u64,
}

impl Outcome {
    /// The answer the requester gets.
    pub(crate) fn response(&self) -> PermitResponse {
        match self {
            Outcome::Granted(p, _) | Outcome::Held(p) => PermitResponse {
                granted: true,
                permit_id: Some(p.id),
                reason: match self {
                    Outcome::Granted(_, why) => why.clone(),
                    _ => format!("permit {} already held by {}", p.id, p.requester),
                },
                limit: None,
                scope: None,
                measured: None,
                threshold: None,
                retry_after_s: None,
                expires_at: Some(p.expires_at),
            },
            Outcome::Denied(d, _) => PermitResponse {
                granted: false,
                permit_id: None,
                reason: d.reason.clone(),
                limit: Some(d.rule.into()),
                scope: Some(d.scope.to_string()),
                measured: Some(d.measured),
                threshold: Some(d.threshold),
                retry_after_s: Some(d.retry_after_s.max(1)),
                expires_at: None,
            },
        }
    }

    /// A bounded metric label.
    pub(crate) fn label(&self) -> &'static str {
        match self {
            Outcome::Granted(..) | Outcome::Held(_) => "granted",
            Outcome::Denied(d, _) => d.rule,
        }
    }
}

/// Scopes a request falls in, in order: the fleet, its cluster, each of its failure domains
/// the policy names.
fn scopes_of(policy: &Policy, req: &PermitRequest) -> Vec<(Scope, BreakerScope)> {
    let mut out = vec![(Scope::global(), BreakerScope::Global), (Scope::cluster(&req.cluster), BreakerScope::Cluster)];
    for key in &policy.failure_domains {
        if let Some(v) = req.domains.get(key) {
            out.push((Scope::domain(&req.cluster, key, v), BreakerScope::Domain));
        }
    }
    out
}

fn in_scope(scope: &Scope, cluster: &str, domains: &BTreeMap<String, String>) -> bool {
    scope.covers(cluster, domains)
}

/// Decides one request at `now` and, when it is granted, records the grant in `world`.
pub(crate) fn decide(
    policy: &Policy,
    world: &mut World,
    req: &PermitRequest,
    holder: &str,
    now: DateTime<Utc>,
) -> Outcome {
    let op = req.operation;
    let deny = |rule: &'static str, scope: Scope, measured: f64, threshold: f64, retry: u64, reason: String| {
        Outcome::Denied(Denial { rule, scope, measured, threshold, reason, retry_after_s: retry }, None)
    };
    let Some(op_policy) = policy.operations.get(&op) else {
        return deny("policy", Scope::global(), 0.0, 0.0, 60, format!("operation {op} is not allowed by the policy"));
    };
    if let Some(p) = world
        .active
        .iter()
        .find(|p| p.operation == op && p.cluster == req.cluster && p.node == req.node && p.requester == req.requester)
    {
        return Outcome::Held(p.clone());
    }
    let target = match &req.node {
        Some(n) => format!("{op} of {}/{n}", req.cluster),
        None => format!("{op} in {}", req.cluster),
    };
    if let Some(h) = world.halts.iter().find(|h| h.stops(op) && in_scope(&h.scope, &req.cluster, &req.domains)) {
        return deny(
            "halt",
            h.scope.clone(),
            1.0,
            0.0,
            10,
            format!("{target} denied: {} halted by {} since {}: {}", h.scope, h.by, h.at.to_rfc3339(), h.reason),
        );
    }
    if let Some(f) = op_policy.freezes.iter().find(|f| f.from <= now && now < f.to) {
        let left = (f.to - now).num_seconds().max(1) as u64;
        return deny(
            "freeze",
            Scope::global(),
            1.0,
            0.0,
            left.min(3600),
            format!("{target} denied: freeze from {} to {}: {}", f.from.to_rfc3339(), f.to.to_rfc3339(), f.reason),
        );
    }
    if !op_policy.windows.is_empty() && !op_policy.windows.iter().any(|w| w.contains(now)) {
        let windows: Vec<String> = op_policy
            .windows
            .iter()
            .map(|w| {
                let days: Vec<String> = w.days.iter().map(|d| String::from(*d)).collect();
                format!("{} {}-{} {}", days.join(","), String::from(w.from), String::from(w.to), w.time_zone)
            })
            .collect();
        return deny(
            "window",
            Scope::global(),
            0.0,
            1.0,
            60,
            format!("{target} denied: outside the operation's windows ({})", windows.join("; ")),
        );
    }
    if let Some(t) = world.trips.iter().find(|t| {
        t.operation == op && in_scope(&t.scope, &req.cluster, &req.domains) && t.until.is_none_or(|u| now < u)
    }) {
        let until = t.until.map_or("until an operator resets it".to_owned(), |u| format!("until {}", u.to_rfc3339()));
        // A latched breaker closes when an operator says so: ask again soon.
        let retry = t.until.map_or(10, |u| (u - now).num_seconds().clamp(1, 3600) as u64);
        return deny(
            "breaker",
            t.scope.clone(),
            1.0,
            0.0,
            retry,
            format!(
                "{target} denied: breaker open in {} {until}; tripped {}: {}",
                t.scope,
                t.tripped_at.to_rfc3339(),
                t.reason
            ),
        );
    }

    let scopes = scopes_of(policy, req);
    let mut new_tats = Vec::new();
    let mut why = Vec::new();
    for (scope, kind) in &scopes {
        let limits = match kind {
            BreakerScope::Global => &op_policy.global,
            BreakerScope::Cluster => &op_policy.cluster,
            BreakerScope::Domain => &op_policy.domain,
        };
        let Some(limits) = limits else { continue };
        match check_scope(policy, world, req, scope, limits, now, &target) {
            Err(d) => return Outcome::Denied(*d, None),
            Ok((tat, measured)) => {
                new_tats.extend(tat.map(|t| ((op, scope.to_string()), t)));
                if !measured.is_empty() {
                    why.push(format!("{scope}: {}", measured.join(", ")));
                }
            }
        }
    }

    if let Some(b) = &op_policy.breaker {
        for (scope, _) in scopes.iter().filter(|(_, k)| *k == b.scope) {
            let window_start = now - TimeDelta::from_std(b.window).unwrap_or(TimeDelta::MAX);
            let since = world.closed.get(&(op, scope.to_string())).map_or(window_start, |c| (*c).max(window_start));
            let count = world
                .grants
                .iter()
                .filter(|g| g.operation == op && g.at > since && in_scope(scope, &g.cluster, &g.domains))
                .count() as u32;
            if count >= b.max_grants {
                let window = humantime::format_duration(b.window);
                let reason = format!(
                    "{count} {op} grants in {scope} within {window} reached the breaker's limit of {}; the next would exceed it",
                    b.max_grants
                );
                let until = b.cooldown.map(|c| now + TimeDelta::from_std(c).unwrap_or(TimeDelta::zero()));
                let trip = BreakerTrip {
                    operation: op,
                    scope: scope.clone(),
                    tripped_at: now,
                    reason: reason.clone(),
                    until,
                    reset_at: None,
                    reset_by: None,
                };
                world.trips.push(trip.clone());
                let how = until.map_or("latched until an operator resets it".to_owned(), |u| {
                    format!("closes by itself at {}", u.to_rfc3339())
                });
                let d = Denial {
                    rule: "breaker",
                    scope: scope.clone(),
                    measured: f64::from(count),
                    threshold: f64::from(b.max_grants),
                    reason: format!("{target} denied: breaker tripped: {reason}; {how}"),
                    retry_after_s: until.map_or(10, |u| (u - now).num_seconds().clamp(1, 3600) as u64),
                };
                return Outcome::Denied(d, Some(trip));
            }
        }
    }

    let ttl = TimeDelta::from_std(policy.permit_ttl).unwrap_or(TimeDelta::minutes(10));
    let permit = Permit {
        id: Uuid::now_v7(),
        operation: op,
        cluster: req.cluster.clone(),
        node: req.node.clone(),
        domains: req.domains.clone(),
        requester: req.requester.clone(),
        holder: holder.to_owned(),
        state: PermitState::Active,
        granted_at: now,
        expires_at: now + ttl,
        ended_at: None,
    };
    world.tats.extend(new_tats);
    world.grants.push(Grant { operation: op, cluster: req.cluster.clone(), domains: req.domains.clone(), at: now });
    world.active.push(permit.clone());
    let why = if why.is_empty() { "no limit applies".to_owned() } else { why.join("; ") };
    Outcome::Granted(permit, format!("{target} granted: {why}"))
}

/// The fresh snapshots of the clusters a scope covers; `Err` names what is missing.
fn fresh_snapshots<'a>(
    policy: &Policy,
    world: &'a World,
    scope: &Scope,
    cluster: &str,
    now: DateTime<Utc>,
) -> Result<Vec<&'a HealthSample>, String> {
    let max_age = TimeDelta::from_std(policy.snapshot_max_age).unwrap_or(TimeDelta::MAX);
    let fresh = |s: &&HealthSample| now - s.at <= max_age;
    match world.snapshots.get(cluster) {
        None => return Err(format!("no cluster snapshot of {cluster} has arrived from its detector")),
        Some(s) if !fresh(&s) => {
            return Err(format!(
                "the last snapshot of {cluster} is from {} ({}s old; at most {}s is data)",
                s.at.to_rfc3339(),
                (now - s.at).num_seconds(),
                policy.snapshot_max_age.as_secs()
            ));
        }
        Some(_) => {}
    }
    Ok(world
        .snapshots
        .values()
        .filter(fresh)
        .filter(|s| scope.cluster.as_ref().is_none_or(|c| *c == s.cluster))
        .collect())
}

/// A scope's limits passed: the rate state to record if the request is granted, and the measured
/// values that allowed it.
type Passed = (Option<DateTime<Utc>>, Vec<String>);

/// Checks one scope's limits; `Ok` carries the new rate state to record if the request is
/// granted, and the measured values that allowed it.
fn check_scope(
    policy: &Policy,
    world: &World,
    req: &PermitRequest,
    scope: &Scope,
    limits: &Limits,
    now: DateTime<Utc>,
    target: &str,
) -> Result<Passed, Box<Denial>> {
    let op = req.operation;
    let mut measured = Vec::new();
    let denial = |rule, measured: f64, threshold: f64, retry: u64, why: String| {
        Box::new(Denial {
            rule,
            scope: scope.clone(),
            measured,
            threshold,
            reason: format!("{target} denied: {why}"),
            retry_after_s: retry,
        })
    };
    let mine: Vec<&Permit> =
        world.active.iter().filter(|p| p.operation == op && in_scope(scope, &p.cluster, &p.domains)).collect();
    let in_flight = mine.len() as u32;
    // When the soonest of the permits in the way lapses, if nobody renews it.
    let soonest = mine.iter().map(|p| (p.expires_at - now).num_seconds()).min().unwrap_or(5).clamp(1, 5) as u64;
    if let Some(max) = limits.max_in_flight
        && in_flight >= max
    {
        return Err(denial(
            "in_flight",
            f64::from(in_flight),
            f64::from(max),
            soonest,
            format!("{in_flight} {op} permits in flight in {scope} (limit {max})"),
        ));
    }
    if let Some(max) = limits.max_in_flight {
        measured.push(format!("{} of {max} in flight", in_flight + 1));
    }
    if limits.needs_snapshot() {
        let snaps = fresh_snapshots(policy, world, scope, &req.cluster, now)
            .map_err(|why| denial("no_data", 0.0, 0.0, 10, format!("no data for the {scope} limits: {why}")))?;
        let domain = scope.domain.as_ref().map(|(k, v)| (k.as_str(), v.as_str()));
        let nodes: u32 = snaps.iter().map(|s| s.nodes_in(domain)).sum();
        if nodes == 0 {
            return Err(denial("no_data", 0.0, 0.0, 10, format!("the snapshot has no nodes in {scope}")));
        }
        if let Some(pct) = limits.max_in_flight_percent {
            let max = ((f64::from(nodes) * pct.get() / 100.0).floor() as u32).max(1);
            if in_flight >= max {
                return Err(denial(
                    "in_flight_percent",
                    f64::from(in_flight),
                    f64::from(max),
                    soonest,
                    format!(
                        "{in_flight} {op} permits in flight in {scope}, limit {max} ({}% of {nodes} nodes)",
                        pct.get()
                    ),
                ));
            }
            measured.push(format!("{} of {max} in flight ({}% of {nodes} nodes)", in_flight + 1, pct.get()));
        }
        if let Some(pct) = limits.max_unhealthy_percent {
            // Unhealthy: NotReady or out of service by Firebreak (from the snapshot), or
            // holding any permit, or the node asked for — each node once.
            let mut unhealthy: BTreeSet<(&str, &str)> = BTreeSet::new();
            let (mut not_ready, mut out) = (0u32, 0u32);
            for s in &snaps {
                for n in s.unhealthy.iter().filter(|n| in_scope(scope, &s.cluster, &n.domains)) {
                    unhealthy.insert((&s.cluster, &n.name));
                    not_ready += u32::from(!n.ready);
                    out += u32::from(n.out_of_service);
                }
            }
            let before = unhealthy.len();
            for p in world.active.iter().filter(|p| in_scope(scope, &p.cluster, &p.domains)) {
                if let Some(n) = &p.node {
                    unhealthy.insert((&p.cluster, n));
                }
            }
            let held = unhealthy.len() - before;
            if let Some(n) = &req.node {
                unhealthy.insert((&req.cluster, n));
            }
            let ratio = unhealthy.len() as f64 * 100.0 / f64::from(nodes);
            if ratio > pct.get() {
                return Err(denial(
                    "unhealthy_ratio",
                    ratio,
                    pct.get(),
                    10,
                    format!(
                        "{} of {nodes} nodes in {scope} would be unhealthy ({ratio:.1}%, limit {}%): {not_ready} NotReady, \
                         {out} out of service by Firebreak, {held} more holding permits, and this one",
                        unhealthy.len(),
                        pct.get()
                    ),
                ));
            }
            measured.push(format!("{ratio:.1}% unhealthy with this one (limit {}%)", pct.get()));
        }
    }
    if let Some(rate) = limits.rate_per_minute {
        let burst = limits.burst.map_or(1, |b| b.get());
        let interval = TimeDelta::milliseconds(60_000 / i64::from(rate.get()));
        let tolerance = interval * i32::try_from(burst).unwrap_or(i32::MAX);
        let tat = world.tats.get(&(op, scope.to_string())).copied().unwrap_or(now).max(now);
        let next = tat + interval;
        if next - now > tolerance {
            let wait = next - now - tolerance;
            let minute = now - TimeDelta::minutes(1);
            let recent = world
                .grants
                .iter()
                .filter(|g| g.operation == op && g.at > minute && in_scope(scope, &g.cluster, &g.domains))
                .count();
            return Err(denial(
                "rate",
                recent as f64,
                f64::from(rate.get()),
                wait.num_seconds().max(1) as u64,
                format!(
                    "{recent} {op} grants in {scope} in the last minute (limit {}/min, burst {burst}); next in {:.1}s",
                    rate.get(),
                    wait.num_milliseconds() as f64 / 1000.0
                ),
            ));
        }
        measured.push(format!("rate {}/min, burst {burst}", rate.get()));
        return Ok((Some(next), measured));
    }
    Ok((None, measured))
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroU32;

    use firebreak_schema::UnhealthyNode;

    use super::*;
    use crate::policy::{Breaker, OperationPolicy, Percent};

    const ZONE: &str = "topology.kubernetes.io/zone";

    fn req(cluster: &str, node: &str) -> PermitRequest {
        let zone = if node.ends_with('1') { "a" } else { "b" };
        PermitRequest {
            operation: Operation::Cordon,
            cluster: cluster.into(),
            node: Some(node.into()),
            requester: format!("test/{node}"),
            domains: BTreeMap::from([(ZONE.into(), zone.into())]),
        }
    }

    fn policy(cluster: Limits) -> Policy {
        Policy {
            operations: BTreeMap::from([(
                Operation::Cordon,
                OperationPolicy { cluster: Some(cluster), ..OperationPolicy::default() },
            )]),
            ..Policy::default()
        }
    }

    fn snapshot(cluster: &str, nodes: u32, unhealthy: &[&str], now: DateTime<Utc>) -> HealthSample {
        HealthSample {
            cluster: cluster.into(),
            at: now,
            nodes,
            ready: nodes - unhealthy.len() as u32,
            unhealthy: unhealthy
                .iter()
                .map(|n| UnhealthyNode {
                    name: (*n).into(),
                    ready: false,
                    out_of_service: false,
                    domains: BTreeMap::new(),
                })
                .collect(),
            domains: BTreeMap::from([(
                ZONE.into(),
                BTreeMap::from([("a".into(), nodes / 2), ("b".into(), nodes - nodes / 2)]),
            )]),
            ..HealthSample::default()
        }
    }

    fn denied(o: &Outcome) -> &Denial {
        match o {
            Outcome::Denied(d, _) => d,
            other => panic!("expected a denial, got {other:?}"),
        }
    }

    #[test]
    fn in_flight_cap_counts_active_permits_and_is_idempotent_per_requester() {
        let p = policy(Limits { max_in_flight: Some(2), ..Limits::default() });
        let mut w = World::default();
        let now = Utc::now();
        assert!(matches!(decide(&p, &mut w, &req("c1", "n1"), "t", now), Outcome::Granted(..)));
        assert!(matches!(decide(&p, &mut w, &req("c1", "n1"), "t", now), Outcome::Held(_)), "same requester");
        assert!(matches!(decide(&p, &mut w, &req("c1", "n2"), "t", now), Outcome::Granted(..)));
        let o = decide(&p, &mut w, &req("c1", "n3"), "t", now);
        let d = denied(&o);
        assert_eq!((d.rule, d.measured, d.threshold), ("in_flight", 2.0, 2.0));
        assert_eq!(d.scope.to_string(), "cluster=c1");
        assert!(d.reason.contains("2 cordon permits in flight in cluster=c1 (limit 2)"), "{}", d.reason);
        assert!(matches!(decide(&p, &mut w, &req("c2", "n3"), "t", now), Outcome::Granted(..)), "per cluster");
        let unknown = PermitRequest { operation: Operation::Delete, ..req("c1", "n9") };
        assert_eq!(denied(&decide(&p, &mut w, &unknown, "t", now)).rule, "policy");
    }

    #[test]
    fn percentages_and_unhealthy_ratio_need_fresh_snapshots() {
        let p = policy(Limits {
            max_in_flight_percent: Some(Percent::try_from(20.0).unwrap()),
            max_unhealthy_percent: Some(Percent::try_from(30.0).unwrap()),
            ..Limits::default()
        });
        let now = Utc::now();
        let mut w = World::default();
        assert_eq!(denied(&decide(&p, &mut w, &req("c1", "n1"), "t", now)).rule, "no_data");
        w.snapshots = Arc::new(HashMap::from([("c1".into(), snapshot("c1", 10, &[], now - TimeDelta::minutes(5)))]));
        let o = decide(&p, &mut w, &req("c1", "n1"), "t", now);
        assert!(denied(&o).reason.contains("300s old"), "{}", denied(&o).reason);
        // 10 nodes, 1 NotReady: 20% in flight = 2 permits; unhealthy 30% = 3 nodes.
        w.snapshots = Arc::new(HashMap::from([("c1".into(), snapshot("c1", 10, &["n9"], now))]));
        assert!(matches!(decide(&p, &mut w, &req("c1", "n1"), "t", now), Outcome::Granted(..)));
        let o = decide(&p, &mut w, &req("c1", "n2"), "t", now);
        assert!(matches!(o, Outcome::Granted(..)), "{o:?}");
        let o = decide(&p, &mut w, &req("c1", "n3"), "t", now);
        assert_eq!((denied(&o).rule, denied(&o).threshold), ("in_flight_percent", 2.0));
        // Without the in-flight limit, the unhealthy ratio stops the fourth node: n9 + n1 + n2 + n3 = 40%.
        let p = policy(Limits { max_unhealthy_percent: Some(Percent::try_from(30.0).unwrap()), ..Limits::default() });
        let o = decide(&p, &mut w, &req("c1", "n3"), "t", now);
        let d = denied(&o);
        assert_eq!((d.rule, d.measured, d.threshold), ("unhealthy_ratio", 40.0, 30.0));
        assert!(d.reason.contains("1 NotReady, 0 out of service by Firebreak, 2 more holding permits"), "{}", d.reason);
        // The NotReady node itself is already unhealthy: its cordon adds nothing.
        let o = decide(&p, &mut w, &req("c1", "n9"), "t", now);
        assert!(matches!(o, Outcome::Granted(..)), "{o:?}");
    }

    #[test]
    fn rate_is_gcra_with_burst() {
        let p = policy(Limits { rate_per_minute: NonZeroU32::new(60), burst: NonZeroU32::new(2), ..Limits::default() });
        let mut w = World::default();
        let now = Utc::now();
        for n in ["n1", "n2"] {
            assert!(matches!(decide(&p, &mut w, &req("c1", n), "t", now), Outcome::Granted(..)), "burst of 2");
        }
        let o = decide(&p, &mut w, &req("c1", "n3"), "t", now);
        let d = denied(&o);
        assert_eq!((d.rule, d.measured, d.threshold, d.retry_after_s), ("rate", 2.0, 60.0, 1));
        // One per second after that.
        let later = now + TimeDelta::milliseconds(1000);
        assert!(matches!(decide(&p, &mut w, &req("c1", "n3"), "t", later), Outcome::Granted(..)));
        assert_eq!(denied(&decide(&p, &mut w, &req("c1", "n4"), "t", later)).rule, "rate");
    }

    #[test]
    fn breaker_trips_and_latches_or_cools_down() {
        let mut p = policy(Limits::default());
        let breaker = Breaker {
            max_grants: 2,
            window: std::time::Duration::from_secs(60),
            scope: BreakerScope::Cluster,
            cooldown: None,
        };
        p.operations.get_mut(&Operation::Cordon).unwrap().breaker = Some(breaker.clone());
        let mut w = World::default();
        let now = Utc::now();
        for n in ["n1", "n2"] {
            assert!(matches!(decide(&p, &mut w, &req("c1", n), "t", now), Outcome::Granted(..)));
        }
        let o = decide(&p, &mut w, &req("c1", "n3"), "t", now);
        let Outcome::Denied(d, Some(trip)) = &o else { panic!("the breaker trips: {o:?}") };
        assert_eq!((d.rule, d.measured, d.threshold), ("breaker", 2.0, 2.0));
        assert!(d.reason.contains("latched until an operator resets it"), "{}", d.reason);
        assert_eq!(trip.until, None);
        // Latched: even long after the window, still denied.
        let o = decide(&p, &mut w, &req("c1", "n4"), "t", now + TimeDelta::hours(1));
        assert!(denied(&o).reason.contains("until an operator resets it"), "{}", denied(&o).reason);
        assert!(matches!(decide(&p, &mut w, &req("c2", "n4"), "t", now), Outcome::Granted(..)), "other clusters");
        // An operator's reset closes it; the grants before it do not count again.
        let grants = w.grants.clone();
        w.trips.clear();
        w.closed.insert((Operation::Cordon, "cluster=c1".into()), now);
        let later = now + TimeDelta::seconds(1);
        assert!(matches!(decide(&p, &mut w, &req("c1", "n6"), "t", later), Outcome::Granted(..)));
        assert!(matches!(decide(&p, &mut w, &req("c1", "n7"), "t", later), Outcome::Granted(..)));
        assert_eq!(denied(&decide(&p, &mut w, &req("c1", "n8"), "t", later)).rule, "breaker", "counting anew");
        // With a cooldown it closes by itself.
        p.operations.get_mut(&Operation::Cordon).unwrap().breaker =
            Some(Breaker { cooldown: Some(std::time::Duration::from_secs(300)), ..breaker });
        let mut w = World { grants, ..World::default() };
        let Outcome::Denied(_, Some(trip)) = decide(&p, &mut w, &req("c1", "n5"), "t", now) else { panic!() };
        assert_eq!(trip.until, Some(now + TimeDelta::seconds(300)));
        assert_eq!(denied(&decide(&p, &mut w, &req("c1", "n5"), "t", now + TimeDelta::seconds(299))).rule, "breaker");
        let o = decide(&p, &mut w, &req("c1", "n5"), "t", now + TimeDelta::seconds(301));
        assert!(matches!(o, Outcome::Granted(..)), "{o:?}");
    }

    #[test]
    fn halts_freezes_windows_and_domains() {
        let now = Utc::now();
        let mut p = policy(Limits::default());
        p.operations.get_mut(&Operation::Cordon).unwrap().domain =
            Some(Limits { max_in_flight: Some(1), ..Limits::default() });
        let mut w = World::default();
        assert!(matches!(decide(&p, &mut w, &req("c1", "n1"), "t", now), Outcome::Granted(..)));
        let o = decide(&p, &mut w, &req("c1", "n11"), "t", now);
        assert_eq!(denied(&o).scope.to_string(), format!("cluster=c1,{ZONE}=a"), "one per zone");
        assert!(matches!(decide(&p, &mut w, &req("c1", "n2"), "t", now), Outcome::Granted(..)), "zone b is free");
        w.halts.push(Halt {
            id: Uuid::now_v7(),
            scope: Scope::domain("c1", ZONE, "b"),
            operations: vec![Operation::Cordon],
            reason: "switch replacement".into(),
            by: "ops".into(),
            at: now,
            resumed_at: None,
            resumed_by: None,
            source: None,
            signals: vec![],
        });
        let o = decide(&p, &mut w, &req("c1", "n4"), "t", now);
        assert_eq!(denied(&o).rule, "halt");
        assert!(denied(&o).reason.contains("halted by ops") && denied(&o).reason.contains("switch replacement"));
        let op = p.operations.get_mut(&Operation::Cordon).unwrap();
        op.freezes.push(crate::policy::Freeze {
            from: now - TimeDelta::hours(1),
            to: now + TimeDelta::hours(1),
            reason: "holidays".into(),
        });
        assert_eq!(denied(&decide(&p, &mut w, &req("c2", "n1"), "t", now)).rule, "freeze");
        let op = p.operations.get_mut(&Operation::Cordon).unwrap();
        op.freezes.clear();
        op.windows.push(crate::policy::Window {
            days: vec![],
            from: crate::policy::TimeOfDay(chrono::NaiveTime::MIN),
            to: crate::policy::TimeOfDay(chrono::NaiveTime::MIN),
            time_zone: chrono_tz::UTC,
        });
        assert_eq!(denied(&decide(&p, &mut w, &req("c2", "n1"), "t", now)).rule, "window");
    }
}
