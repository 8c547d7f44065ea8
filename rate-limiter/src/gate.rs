//! The decision logic: concurrency per operation and cluster, GCRA rate via `governor`, permit
//! TTLs, and the decision log.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    num::NonZeroU32,
    sync::Mutex,
    time::{Duration, Instant},
};

use chrono::{DateTime, TimeDelta, Utc};
use firebreak_schema::{Operation, PermitRequest, PermitResponse};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter, clock::Clock};
use serde::Serialize;
use uuid::Uuid;

use crate::{Error, Policy, Result, metrics::Metrics};

/// A permit in flight.
#[derive(Debug, Clone, Serialize)]
pub struct Permit {
    /// Permit id.
    pub id: Uuid,
    /// Operation.
    pub operation: Operation,
    /// Cluster.
    pub cluster: String,
    /// Node, if any.
    pub node: Option<String>,
    /// Who holds it.
    pub requester: String,
    /// When it was granted.
    pub granted_at: DateTime<Utc>,
    /// When it lapses.
    pub expires_at: DateTime<Utc>,
    #[serde(skip)]
    deadline: Instant,
}

/// One decision, as kept in the decision log.
#[derive(Debug, Clone, Serialize)]
pub struct Decision {
    /// When it was made.
    pub at: DateTime<Utc>,
    /// What was asked.
    pub request: PermitRequest,
    /// What was answered.
    pub response: PermitResponse,
}

struct Inner {
    permits: BTreeMap<Uuid, Permit>,
    granted: HashMap<(Operation, String), VecDeque<Instant>>,
    log: VecDeque<Decision>,
}

/// The gate's state, shared by its HTTP handlers.
pub struct Gate {
    policy: Policy,
    rates: BTreeMap<Operation, DefaultKeyedRateLimiter<String>>,
    inner: Mutex<Inner>,
    metrics: Metrics,
}

const LOG_LEN: usize = 1000;

impl Gate {
    /// A gate enforcing `policy`.
    pub fn new(policy: Policy) -> Self {
        let one = NonZeroU32::MIN;
        let rates = policy
            .operations
            .iter()
            .map(|(op, l)| {
                let per_min = NonZeroU32::new(l.rate_per_minute).unwrap_or(one);
                let burst = NonZeroU32::new(l.burst).unwrap_or(one);
                (*op, RateLimiter::keyed(Quota::per_minute(per_min).allow_burst(burst)))
            })
            .collect();
        Gate {
            policy,
            rates,
            inner: Mutex::new(Inner { permits: BTreeMap::new(), granted: HashMap::new(), log: VecDeque::new() }),
            metrics: Metrics::new(),
        }
    }

    /// The registry of the gate's metrics.
    pub fn registry(&self) -> &prometheus_client::registry::Registry {
        &self.metrics.registry
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Decides on a request.
    pub fn request(&self, req: &PermitRequest) -> Result<PermitResponse> {
        if req.cluster.is_empty() || req.requester.is_empty() {
            return Err(Error::BadRequest("cluster and requester are required".into()));
        }
        let now = Instant::now();
        let mut inner = self.lock();
        self.expire(&mut inner, now);
        let op = req.operation;
        let (resp, outcome) = self.decide(&mut inner, req, now);
        tracing::info!(operation = %op, cluster = %req.cluster, node = req.node.as_deref().unwrap_or(""),
            requester = %req.requester, granted = resp.granted, reason = %resp.reason, "permit decision");
        self.metrics.decision(op, outcome);
        if inner.log.len() == LOG_LEN {
            inner.log.pop_front();
        }
        inner.log.push_back(Decision { at: Utc::now(), request: req.clone(), response: resp.clone() });
        self.update_gauges(&inner);
        Ok(resp)
    }

    fn decide(&self, inner: &mut Inner, req: &PermitRequest, now: Instant) -> (PermitResponse, &'static str) {
        let op = req.operation;
        let deny = |reason: String, limit: &str, measured: f64, threshold: f64, retry: u64| PermitResponse {
            granted: false,
            permit_id: None,
            reason,
            limit: Some(limit.into()),
            measured: Some(measured),
            threshold: Some(threshold),
            retry_after_s: Some(retry.max(1)),
            expires_at: None,
        };
        let (Some(limits), Some(rate)) = (self.policy.operations.get(&op), self.rates.get(&op)) else {
            return (
                deny(format!("operation {op} is not allowed by the policy"), "policy", 0.0, 0.0, 60),
                "denied_policy",
            );
        };
        if let Some(p) = inner.permits.values().find(|p| {
            p.operation == op && p.cluster == req.cluster && p.node == req.node && p.requester == req.requester
        }) {
            return (grant(p, format!("permit {} already held by {}", p.id, p.requester)), "granted");
        }
        let in_flight = inner.permits.values().filter(|p| p.operation == op && p.cluster == req.cluster).count();
        let cap = limits.max_concurrent_per_cluster as usize;
        if in_flight >= cap {
            let soonest = inner
                .permits
                .values()
                .filter(|p| p.operation == op && p.cluster == req.cluster)
                .map(|p| p.deadline.saturating_duration_since(now).as_secs())
                .min()
                .unwrap_or(5);
            return (
                deny(
                    format!(
                        "concurrency limit: {in_flight} {op} permits in flight in cluster {} (limit {cap})",
                        req.cluster
                    ),
                    "concurrency",
                    in_flight as f64,
                    cap as f64,
                    soonest.clamp(1, 5),
                ),
                "denied_concurrency",
            );
        }
        let window = inner.granted.entry((op, req.cluster.clone())).or_default();
        while window.front().is_some_and(|t| now.duration_since(*t) > Duration::from_secs(60)) {
            window.pop_front();
        }
        if let Err(not_until) = rate.check_key(&req.cluster) {
            let wait = not_until.wait_time_from(governor::clock::DefaultClock::default().now());
            return (
                deny(
                    format!(
                        "rate limit: {} {op} permits granted in cluster {} in the last minute (limit {}/min, burst {}); next in {:.1}s",
                        window.len(),
                        req.cluster,
                        limits.rate_per_minute,
                        limits.burst,
                        wait.as_secs_f64()
                    ),
                    "rate",
                    window.len() as f64,
                    f64::from(limits.rate_per_minute),
                    wait.as_secs_f64().ceil() as u64,
                ),
                "denied_rate",
            );
        }
        window.push_back(now);
        let ttl = self.policy.permit_ttl;
        let permit = Permit {
            id: Uuid::now_v7(),
            operation: op,
            cluster: req.cluster.clone(),
            node: req.node.clone(),
            requester: req.requester.clone(),
            granted_at: Utc::now(),
            expires_at: Utc::now() + TimeDelta::from_std(ttl).unwrap_or_default(),
            deadline: now + ttl,
        };
        let reason = format!(
            "granted: {} of {cap} {op} permits in flight in cluster {} after this one; {} granted in the last minute (limit {}/min)",
            in_flight + 1,
            req.cluster,
            window.len(),
            limits.rate_per_minute
        );
        let resp = grant(&permit, reason);
        inner.permits.insert(permit.id, permit);
        (resp, "granted")
    }

    /// Releases a permit; `false` if it was not held (released before, expired, unknown).
    pub fn release(&self, id: Uuid) -> bool {
        let mut inner = self.lock();
        let removed = inner.permits.remove(&id);
        if let Some(p) = &removed {
            tracing::info!(permit_id = %id, operation = %p.operation, cluster = %p.cluster, "permit released");
        }
        self.update_gauges(&inner);
        removed.is_some()
    }

    /// Permits in flight.
    pub fn permits(&self) -> Vec<Permit> {
        let mut inner = self.lock();
        self.expire(&mut inner, Instant::now());
        inner.permits.values().cloned().collect()
    }

    /// The most recent decisions, newest last.
    pub fn decisions(&self) -> Vec<Decision> {
        self.lock().log.iter().cloned().collect()
    }

    fn expire(&self, inner: &mut Inner, now: Instant) {
        inner.permits.retain(|id, p| {
            let live = p.deadline > now;
            if !live {
                tracing::warn!(permit_id = %id, operation = %p.operation, cluster = %p.cluster, requester = %p.requester, "permit expired unreleased");
            }
            live
        });
    }

    fn update_gauges(&self, inner: &Inner) {
        for op in Operation::ALL {
            let n = inner.permits.values().filter(|p| p.operation == op).count();
            self.metrics.active(op, n);
        }
    }
}

fn grant(p: &Permit, reason: String) -> PermitResponse {
    PermitResponse {
        granted: true,
        permit_id: Some(p.id),
        reason,
        limit: None,
        measured: None,
        threshold: None,
        retry_after_s: None,
        expires_at: Some(p.expires_at),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Limits;

    fn req(cluster: &str, node: &str, who: &str) -> PermitRequest {
        PermitRequest {
            operation: Operation::Cordon,
            cluster: cluster.into(),
            node: Some(node.into()),
            requester: who.into(),
        }
    }

    fn gate(rate: u32, burst: u32, cap: u32, ttl: Duration) -> Gate {
        Gate::new(Policy {
            permit_ttl: ttl,
            operations: BTreeMap::from([(
                Operation::Cordon,
                Limits { rate_per_minute: rate, burst, max_concurrent_per_cluster: cap },
            )]),
        })
    }

    #[test]
    fn concurrency_cap_per_cluster_names_the_limit_and_value() {
        let g = gate(600, 100, 1, Duration::from_secs(60));
        let a = g.request(&req("c1", "n1", "w1")).unwrap();
        assert!(a.granted);
        let b = g.request(&req("c1", "n2", "w2")).unwrap();
        assert!(!b.granted);
        assert_eq!(b.limit.as_deref(), Some("concurrency"));
        assert_eq!((b.measured, b.threshold), (Some(1.0), Some(1.0)));
        assert!(b.reason.contains("1 cordon permits in flight in cluster c1 (limit 1)"), "{}", b.reason);
        assert!(b.retry_after_s.is_some());
        assert!(g.request(&req("c2", "n9", "w3")).unwrap().granted, "other clusters have their own budget");
        // Asking again for the same thing returns the same permit.
        assert_eq!(g.request(&req("c1", "n1", "w1")).unwrap().permit_id, a.permit_id);
        assert!(g.release(a.permit_id.unwrap()));
        assert!(!g.release(a.permit_id.unwrap()));
        assert!(g.request(&req("c1", "n2", "w2")).unwrap().granted);
    }

    #[test]
    fn rate_limit_denies_with_measured_rate() {
        let g = gate(2, 2, 100, Duration::from_secs(60));
        assert!(g.request(&req("c1", "n1", "a")).unwrap().granted);
        assert!(g.request(&req("c1", "n2", "b")).unwrap().granted);
        let d = g.request(&req("c1", "n3", "c")).unwrap();
        assert!(!d.granted);
        assert_eq!(d.limit.as_deref(), Some("rate"));
        assert_eq!((d.measured, d.threshold), (Some(2.0), Some(2.0)));
        assert!(d.retry_after_s.unwrap() >= 1);
        assert_eq!(g.decisions().len(), 3);
    }

    #[test]
    fn permits_expire_after_ttl_and_unlisted_operations_are_denied() {
        let g = gate(600, 100, 1, Duration::from_millis(50));
        assert!(g.request(&req("c1", "n1", "a")).unwrap().granted);
        std::thread::sleep(Duration::from_millis(80));
        assert!(g.permits().is_empty());
        assert!(g.request(&req("c1", "n2", "b")).unwrap().granted);
        let r = g.request(&PermitRequest { operation: Operation::Delete, ..req("c1", "n1", "a") }).unwrap();
        assert!(!r.granted);
        assert_eq!(r.limit.as_deref(), Some("policy"));
        assert!(g.request(&req("", "n1", "a")).is_err());
    }
}
