//! The health monitor: judges every health rule in every cluster as samples arrive (and PromQL
//! rules, and no data, every `evaluate_every`). A rule that fails `consecutive` times in a row
//! for at least `for` halts its scope for the operations it names, with the measurement as the
//! halt's evidence; once it has passed for `resume_after` (if the policy gives one) its halt
//! is lifted. Each replica judges on its own; halts are recorded once per rule and scope.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::Duration,
};

use chrono::{DateTime, TimeDelta, Utc};
use firebreak_schema::{HaltRequest, Phase};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::{Gate, health};

/// A rule's run of results in one scope.
#[derive(Debug, Default)]
struct Streak {
    failures: u32,
    failing_since: Option<DateTime<Utc>>,
    passing_since: Option<DateTime<Utc>>,
}

impl Gate {
    pub(crate) async fn monitor(self: Arc<Self>, cancel: CancellationToken) {
        let http = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap_or_default();
        let mut streaks: HashMap<(String, String), Streak> = HashMap::new();
        // The sample time last judged per cluster: a sample is counted once.
        let mut judged: HashMap<String, DateTime<Utc>> = HashMap::new();
        let mut last_tick = Instant::now() - Duration::from_secs(3600);
        loop {
            let every = self.policy().evaluate_every;
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
                _ = self.sampled.notified() => {}
            }
            let policy = self.policy();
            if policy.health_rules.is_empty() {
                continue;
            }
            let tick = last_tick.elapsed() >= every;
            let samples = self.samples();
            if tick {
                last_tick = Instant::now();
                let mut prom = HashMap::new();
                for rule in &policy.health_rules {
                    let Some(q) = &rule.prometheus else { continue };
                    for cluster in samples.keys() {
                        prom.insert((rule.name.clone(), cluster.clone()), health::query(&http, q, cluster).await);
                    }
                }
                *self.prom.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(prom);
            }
            let prom = self.prom.read().unwrap_or_else(|e| e.into_inner()).clone();
            let now = Utc::now();
            let max_age = TimeDelta::from_std(policy.snapshot_max_age).unwrap_or(TimeDelta::MAX);
            let inputs = health::Inputs { samples: &samples, prom: &prom, max_age, now };
            let mut fresh: HashSet<&str> = HashSet::new();
            for (cluster, s) in samples.iter() {
                let stale = now - s.at > max_age;
                if judged.get(cluster) != Some(&s.at) || (stale && tick) {
                    judged.insert(cluster.clone(), s.at);
                    fresh.insert(cluster);
                }
            }
            for rule in &policy.health_rules {
                for cluster in samples.keys() {
                    let new = if rule.prometheus.is_some() { tick } else { fresh.contains(cluster.as_str()) };
                    if !new {
                        continue;
                    }
                    for scope in health::scopes(&policy, rule, cluster, &inputs) {
                        let m = health::measure(rule, &scope, &inputs, None);
                        let source = format!("rule:{}", rule.name);
                        let streak = streaks.entry((rule.name.clone(), m.scope.clone())).or_default();
                        match m.phase {
                            Phase::Failed | Phase::Error => {
                                streak.failures += 1;
                                let since = *streak.failing_since.get_or_insert(now);
                                streak.passing_since = None;
                                let held = (now - since).to_std().unwrap_or_default();
                                if streak.failures < rule.consecutive.get() || held < rule.for_ {
                                    continue;
                                }
                                let req = HaltRequest {
                                    scope: scope.clone(),
                                    operations: rule.halts.clone(),
                                    reason: format!(
                                        "health rule {} {}: {} (failing {} time(s) in a row, for {}s)",
                                        rule.name,
                                        if m.phase == Phase::Failed { "failed" } else { "could not measure" },
                                        m.message,
                                        streak.failures,
                                        held.as_secs()
                                    ),
                                };
                                if let Err(error) = self.auto_halt(&req, &source, std::slice::from_ref(&m)).await {
                                    tracing::error!(%error, rule = %rule.name, %scope, "cannot record a health halt");
                                }
                            }
                            Phase::Inconclusive => {}
                            Phase::Successful => {
                                streak.failures = 0;
                                streak.failing_since = None;
                                let since = *streak.passing_since.get_or_insert(now);
                                let Some(after) = rule.resume_after else { continue };
                                if (now - since).to_std().unwrap_or_default() < after {
                                    continue;
                                }
                                // Passed long enough: lift, then count the next recovery afresh.
                                streak.passing_since = Some(now);
                                if let Err(error) = self.lift(&source, Some(&scope), &source).await {
                                    tracing::error!(%error, rule = %rule.name, %scope, "cannot lift a health halt");
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}
