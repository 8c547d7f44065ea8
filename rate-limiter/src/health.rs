//! Health verdicts: each rule of the policy measured against the clusters' health samples (or
//! Prometheus), with a baseline when a change batch took one. Pure but for the PromQL query.
//!
//! A measurement is `Failed` when the value breaks a bound, `Error` when its source failed, and
//! for no data what the rule says (`Failed`, `Inconclusive` or, ignored, `Successful`). A
//! verdict is the worst phase of its measurements (Failed > Error > Inconclusive > Successful).

use std::collections::HashMap;

use chrono::{DateTime, TimeDelta, Utc};
use firebreak_schema::{HealthSample, Measurement, Phase, Scope, Signal, Verdict};

use crate::policy::{HealthRule, NoData, Policy, PromQuery, RuleScope};

/// The value a rule measured: a number, no data (why), or an error (why).
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value {
    Some(f64),
    NoData(String),
    Error(String),
}

/// What rules read: the latest sample per cluster, and the PromQL results fetched for this
/// evaluation (rule name, cluster) → value.
pub(crate) struct Inputs<'a> {
    pub(crate) samples: &'a HashMap<String, HealthSample>,
    pub(crate) prom: &'a HashMap<(String, String), Value>,
    pub(crate) max_age: TimeDelta,
    pub(crate) now: DateTime<Utc>,
}

impl Inputs<'_> {
    /// The rule's value in a scope of `cluster`.
    fn value(&self, rule: &HealthRule, cluster: &str, domain: Option<(&str, &str)>) -> Value {
        if rule.prometheus.is_some() {
            return self
                .prom
                .get(&(rule.name.clone(), cluster.to_owned()))
                .cloned()
                .unwrap_or_else(|| Value::NoData("not queried yet".into()));
        }
        let Some(signal) = &rule.signal else { return Value::Error("the rule names no signal".into()) };
        let Some(s) = self.samples.get(cluster) else {
            return Value::NoData(format!("no health sample from cluster {cluster}"));
        };
        let age = self.now - s.at;
        if age > self.max_age {
            return Value::NoData(format!("the latest health sample is {}s old", age.num_seconds()));
        }
        if *signal == Signal::PodStartSuccessRate {
            let starts = match domain {
                None => Some(&s.pod_starts),
                Some((k, v)) => s.pod_starts_by_domain.get(&format!("{k}={v}")),
            };
            let decided = starts.map_or(0, |p| p.decided());
            if decided < rule.min_pod_starts {
                return Value::NoData(format!(
                    "{decided} pod starts decided in the last {}s, fewer than {}",
                    s.window_s, rule.min_pod_starts
                ));
            }
        }
        match s.signal(signal, domain) {
            Some(v) => Value::Some(v),
            None => Value::NoData(format!("the sample has no {signal}")),
        }
    }
}

/// The scopes a rule is measured in for a cluster: the cluster, or each of its failure domains.
pub(crate) fn scopes(policy: &Policy, rule: &HealthRule, cluster: &str, inputs: &Inputs) -> Vec<Scope> {
    match rule.scope {
        RuleScope::Cluster => vec![Scope::cluster(cluster)],
        RuleScope::Domain => {
            let Some(s) = inputs.samples.get(cluster) else { return vec![Scope::cluster(cluster)] };
            policy
                .failure_domains
                .iter()
                .flat_map(|k| s.domains.get(k).into_iter().flat_map(move |vs| vs.keys().map(move |v| (k, v))))
                .map(|(k, v)| Scope::domain(cluster, k, v))
                .collect()
        }
    }
}

/// Measures one rule in one scope, against a baseline if there is one.
pub(crate) fn measure(rule: &HealthRule, scope: &Scope, inputs: &Inputs, baseline: Option<f64>) -> Measurement {
    let cluster = scope.cluster.as_deref().unwrap_or_default();
    let domain = scope.domain.as_ref().map(|(k, v)| (k.as_str(), v.as_str()));
    let value = inputs.value(rule, cluster, domain);
    let signal = rule.signal.as_ref().map_or_else(|| "promql".to_owned(), |s| s.to_string());
    let threshold = rule.min.or(rule.max);
    let mut m = Measurement {
        rule: rule.name.clone(),
        signal: signal.clone(),
        scope: scope.to_string(),
        phase: Phase::Successful,
        value: None,
        threshold,
        baseline,
        message: String::new(),
    };
    let v = match value {
        Value::Some(v) => v,
        Value::Error(why) => {
            m.phase = Phase::Error;
            m.message = format!("{signal} in {scope}: cannot be measured: {why}");
            return m;
        }
        Value::NoData(why) => {
            m.phase = match rule.no_data {
                NoData::Fail => Phase::Failed,
                NoData::Inconclusive => Phase::Inconclusive,
                NoData::Ignore => Phase::Successful,
            };
            let means = match rule.no_data {
                NoData::Fail => "fails",
                NoData::Inconclusive => "is inconclusive",
                NoData::Ignore => "is ignored",
            };
            m.message = format!("{signal} in {scope}: no data ({why}); no data {means} for rule {}", rule.name);
            return m;
        }
    };
    m.value = Some(v);
    let mut broken = Vec::new();
    if let Some(min) = rule.min
        && v < min
    {
        broken.push(format!("below the minimum {min}"));
        m.threshold = Some(min);
    }
    if let Some(max) = rule.max
        && v > max
    {
        broken.push(format!("above the maximum {max}"));
        m.threshold = Some(max);
    }
    if let (Some(base), Some(drop)) = (baseline, rule.max_drop_percent)
        && base > 0.0
        && v < base * (1.0 - drop.get() / 100.0)
    {
        broken.push(format!(
            "{:.1}% below its baseline {}, more than the {}% allowed",
            100.0 * (base - v) / base,
            round(base),
            drop.get()
        ));
    }
    if let (Some(base), Some(rise)) = (baseline, rule.max_rise)
        && v > base + rise
    {
        broken.push(format!("{} above its baseline {}, more than the {rise} allowed", round(v - base), round(base)));
    }
    let base = baseline.map(|b| format!(", baseline {}", round(b))).unwrap_or_default();
    let bounds = [rule.min.map(|x| format!("min {x}")), rule.max.map(|x| format!("max {x}"))]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join(", ");
    if broken.is_empty() {
        m.message = format!("{signal} in {scope} is {}{base} ({bounds}): holds", round(v));
    } else {
        m.phase = Phase::Failed;
        m.message = format!("{signal} in {scope} is {}{base} ({bounds}): {}", round(v), broken.join("; "));
    }
    m
}

/// The verdict on a cluster: every rule (those halting `only` if given) in every scope, each
/// against the baseline of the same rule and scope when `baselines` has one.
pub(crate) fn verdict(
    policy: &Policy,
    cluster: &str,
    inputs: &Inputs,
    baselines: &[Measurement],
    only: Option<firebreak_schema::Operation>,
) -> Verdict {
    let mut signals = Vec::new();
    for rule in policy.health_rules.iter().filter(|r| only.is_none_or(|op| r.halts.contains(&op))) {
        for scope in scopes(policy, rule, cluster, inputs) {
            let scope_text = scope.to_string();
            let base = baselines.iter().find(|b| b.rule == rule.name && b.scope == scope_text).and_then(|b| b.value);
            signals.push(measure(rule, &scope, inputs, base));
        }
    }
    summarise(cluster, inputs.now, signals)
}

/// The worst phase of the measurements, with its reason.
pub(crate) fn summarise(cluster: &str, at: DateTime<Utc>, signals: Vec<Measurement>) -> Verdict {
    let worst = signals.iter().map(|m| m.phase).max().unwrap_or(Phase::Successful);
    let reason = if signals.is_empty() {
        "no health rules apply".to_owned()
    } else if worst == Phase::Successful {
        format!("{} health measurements hold", signals.len())
    } else {
        signals.iter().filter(|m| m.phase == worst).map(|m| m.message.as_str()).collect::<Vec<_>>().join("; ")
    };
    Verdict { verdict: worst, cluster: cluster.to_owned(), at, reason, signals }
}

fn round(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}

/// Runs an instant PromQL query (`{cluster}` replaced) and reads its first value: a vector's
/// first sample or a scalar. An empty result is no data; anything else that goes wrong is an
/// error.
pub(crate) async fn query(http: &reqwest::Client, q: &PromQuery, cluster: &str) -> Value {
    let promql = q.query.replace("{cluster}", cluster);
    let url = format!("{}/api/v1/query", q.url.trim_end_matches('/'));
    let resp = match http.get(&url).query(&[("query", promql.as_str())]).send().await {
        Ok(r) => r,
        Err(e) => return Value::Error(format!("Prometheus at {} unreachable: {e}", q.url)),
    };
    let status = resp.status();
    let body: serde_json::Value = match resp.json().await {
        Ok(b) => b,
        Err(e) => return Value::Error(format!("Prometheus answered {status} with no JSON: {e}")),
    };
    if body["status"] != "success" {
        return Value::Error(format!("Prometheus: {} {}", body["errorType"], body["error"]));
    }
    let data = &body["data"];
    let value = match data["resultType"].as_str() {
        Some("vector") => match data["result"].as_array().and_then(|r| r.first()) {
            None => return Value::NoData(format!("`{promql}` returned no series")),
            Some(s) => s["value"][1].clone(),
        },
        Some("scalar") => data["result"][1].clone(),
        other => return Value::Error(format!("`{promql}` returned a {other:?}, not a vector or a scalar")),
    };
    match value.as_str().map(str::parse::<f64>) {
        Some(Ok(v)) if v.is_finite() => Value::Some(v),
        Some(Ok(_)) => Value::NoData(format!("`{promql}` returned {value}")),
        _ => Value::Error(format!("`{promql}` returned {value}, not a number")),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use firebreak_schema::PodStarts;

    use super::*;

    fn policy(rules: &str) -> Policy {
        Policy::parse(rules).unwrap()
    }

    fn sample(at: DateTime<Utc>, started: u32, failed: u32) -> HealthSample {
        HealthSample {
            cluster: "c1".into(),
            at,
            nodes: 10,
            ready: 10,
            unhealthy: vec![],
            domains: BTreeMap::new(),
            window_s: 60,
            start_deadline_s: 15,
            pod_starts: PodStarts { started, failed, ..PodStarts::default() },
            pod_starts_by_domain: BTreeMap::new(),
            pods_unschedulable: 0,
            faults_by_class: BTreeMap::new(),
        }
    }

    #[test]
    fn bounds_baselines_and_no_data() {
        let p = policy(
            r#"
[[health_rules]]
name = "pod-starts"
signal = "pod_start_success_rate"
min = 90.0
max_drop_percent = 5
no_data = "fail"

[[health_rules]]
name = "quiet"
signal = "pod_start_success_rate"
min = 50.0
no_data = "ignore"
min_pod_starts = 1000

[[health_rules]]
name = "maybe"
signal = "pods_unschedulable"
max = 3.0
"#,
        );
        let now = Utc::now();
        let prom = HashMap::new();
        let samples = HashMap::from([("c1".to_owned(), sample(now, 95, 5))]);
        let inputs = Inputs { samples: &samples, prom: &prom, max_age: TimeDelta::seconds(30), now };
        let v = verdict(&p, "c1", &inputs, &[], None);
        assert_eq!(v.verdict, Phase::Successful, "{v:?}");
        assert_eq!(v.signals[0].value, Some(95.0));
        assert!(v.signals[1].message.contains("no data") && v.signals[1].message.contains("ignored"));
        // Against a baseline of 100: 95 is a 5% drop, at the limit; 94 is past it.
        let base = vec![Measurement { value: Some(100.0), ..v.signals[0].clone() }];
        assert_eq!(verdict(&p, "c1", &inputs, &base, None).verdict, Phase::Successful);
        let samples = HashMap::from([("c1".to_owned(), sample(now, 94, 6))]);
        let inputs = Inputs { samples: &samples, prom: &prom, max_age: TimeDelta::seconds(30), now };
        let v = verdict(&p, "c1", &inputs, &base, None);
        assert_eq!(v.verdict, Phase::Failed);
        assert!(v.reason.contains("pod_start_success_rate in cluster=c1 is 94, baseline 100"), "{}", v.reason);
        assert!(v.reason.contains("6.0% below its baseline 100"), "{}", v.reason);
        // Below the minimum.
        let samples = HashMap::from([("c1".to_owned(), sample(now, 8, 2))]);
        let inputs = Inputs { samples: &samples, prom: &prom, max_age: TimeDelta::seconds(30), now };
        let v = verdict(&p, "c1", &inputs, &[], None);
        assert!(v.reason.contains("is 80") && v.reason.contains("below the minimum 90"), "{}", v.reason);
        // A stale sample is no data: the first rule fails on it, the third is inconclusive.
        let samples = HashMap::from([("c1".to_owned(), sample(now - TimeDelta::seconds(60), 95, 5))]);
        let inputs = Inputs { samples: &samples, prom: &prom, max_age: TimeDelta::seconds(30), now };
        let v = verdict(&p, "c1", &inputs, &[], None);
        assert_eq!(v.verdict, Phase::Failed);
        assert_eq!(v.signals[2].phase, Phase::Inconclusive);
        assert!(v.signals[0].message.contains("60s old"), "{}", v.signals[0].message);
        // Too few pod starts is no data too.
        let samples = HashMap::from([("c1".to_owned(), sample(now, 2, 0))]);
        let inputs = Inputs { samples: &samples, prom: &prom, max_age: TimeDelta::seconds(30), now };
        let v = verdict(&p, "c1", &inputs, &[], None);
        assert!(v.signals[0].message.contains("2 pod starts decided"), "{}", v.signals[0].message);
        assert_eq!(v.signals[0].phase, Phase::Failed);
    }

    #[test]
    fn a_prometheus_error_is_an_error_and_empty_is_no_data() {
        let p = policy(
            r#"
[[health_rules]]
name = "errors"
prometheus = { url = "http://127.0.0.1:9", query = "sum(rate(x[1m]))" }
max = 1.0
"#,
        );
        let now = Utc::now();
        let samples = HashMap::new();
        for (value, phase) in [
            (Value::Error("down".into()), Phase::Error),
            (Value::NoData("empty".into()), Phase::Inconclusive),
            (Value::Some(0.5), Phase::Successful),
            (Value::Some(2.0), Phase::Failed),
        ] {
            let prom = HashMap::from([(("errors".to_owned(), "c1".to_owned()), value)]);
            let inputs = Inputs { samples: &samples, prom: &prom, max_age: TimeDelta::seconds(30), now };
            assert_eq!(verdict(&p, "c1", &inputs, &[], None).verdict, phase);
        }
    }
}
