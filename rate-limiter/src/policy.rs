//! The gate's policy (TOML). Every rule is checked while the file is read, so a mistake is an
//! error naming the key and the line: rates and bursts of at least 1, percentages in (0, 100],
//! durations, times of day, time zones, freeze ranges that end after they start.
//!
//! Per operation, limits per scope — `global`, `cluster` (each cluster), `domain` (each failure
//! domain of each cluster, for every label in `failure_domains`) — plus a breaker, time windows
//! and freezes. An operation the policy does not name is denied.
//!
//! Health rules (`[[health_rules]]`) test a signal of the detectors' health samples, or an
//! instant PromQL query, per cluster or per failure domain: bounds (`min`, `max`), a drop against
//! the baseline a change batch took (`max_drop_percent`, `max_rise`), `consecutive` failures
//! held `for` a duration before the rule halts, and what no data means. Webhooks
//! (`[[webhooks]]`) are told of every halt, HMAC-signed.
//!
//! Storms (`[storms]`): the event center's correlated incidents (many nodes of a cluster, or of
//! one zone or rack of it, reporting one kind at once, "likely infrastructure, not nodes") on
//! the health topic halt their cluster, or only that domain, for the node repairs named, until
//! no correlation there has grown for `resume_after`.

use std::{collections::BTreeMap, num::NonZeroU32, path::Path, time::Duration};

use chrono::{DateTime, NaiveTime, Utc, Weekday};
use firebreak_schema::{Operation, Signal};
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// A percentage in (0, 100].
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd, Serialize, Deserialize)]
#[serde(try_from = "f64", into = "f64")]
pub struct Percent(f64);

impl Percent {
    /// The value, 0–100.
    pub fn get(self) -> f64 {
        self.0
    }
}

impl TryFrom<f64> for Percent {
    type Error = String;
    fn try_from(v: f64) -> Result<Self, String> {
        if v > 0.0 && v <= 100.0 { Ok(Percent(v)) } else { Err(format!("{v} is not a percentage in (0, 100]")) }
    }
}

impl From<Percent> for f64 {
    fn from(p: Percent) -> f64 {
        p.0
    }
}

/// Limits of one operation in one kind of scope. Every limit is optional.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Sustained grants per minute (GCRA); needs `burst`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_per_minute: Option<NonZeroU32>,
    /// Grants that may come at once before the rate applies (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<NonZeroU32>,
    /// Permits of this operation held at once in the scope.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_in_flight: Option<u32>,
    /// Permits held at once, as a percentage of the scope's nodes (rounded down, at least 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_in_flight_percent: Option<Percent>,
    /// Deny when the scope's unhealthy nodes — NotReady, out of service by Firebreak, or holding
    /// a permit — would exceed this percentage of its nodes with this grant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_unhealthy_percent: Option<Percent>,
}

impl Limits {
    /// Whether any limit needs the scope's node counts (a cluster snapshot).
    pub fn needs_snapshot(&self) -> bool {
        self.max_in_flight_percent.is_some() || self.max_unhealthy_percent.is_some()
    }
}

/// Requests per second and burst, per token.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiRate {
    /// Sustained requests per second.
    pub per_second: NonZeroU32,
    /// Requests that may come at once.
    pub burst: NonZeroU32,
}

/// The scope a breaker counts grants in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BreakerScope {
    /// All clusters together.
    Global,
    /// Each cluster.
    Cluster,
    /// Each failure domain of each cluster.
    Domain,
}

/// More than `max_grants` grants in `window` trip the breaker: the operation is denied in that
/// scope until an operator resets it, or until `cooldown` has passed if the policy gives one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Breaker {
    /// Grants allowed within the window.
    pub max_grants: u32,
    /// The sliding window.
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// Where grants are counted (default: each cluster).
    #[serde(default = "cluster_scope")]
    pub scope: BreakerScope,
    /// Closes by itself this long after tripping; without it the breaker latches.
    #[serde(default, with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    pub cooldown: Option<Duration>,
}

fn cluster_scope() -> BreakerScope {
    BreakerScope::Cluster
}

/// A day of the week in a policy file: `mon` … `sun`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Day(pub Weekday);

impl TryFrom<String> for Day {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse::<Weekday>().map(Day).map_err(|_| format!("`{s}` is not a day (mon, tue, wed, thu, fri, sat, sun)"))
    }
}

impl From<Day> for String {
    fn from(d: Day) -> String {
        d.0.to_string().to_lowercase()
    }
}

/// A time of day `HH:MM`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TimeOfDay(pub NaiveTime);

impl TryFrom<String> for TimeOfDay {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        NaiveTime::parse_from_str(&s, "%H:%M").map(TimeOfDay).map_err(|_| format!("`{s}` is not a time of day HH:MM"))
    }
}

impl From<TimeOfDay> for String {
    fn from(t: TimeOfDay) -> String {
        t.0.format("%H:%M").to_string()
    }
}

/// A weekly window in which the operation may run: on `days`, from `from` to `to` (local time
/// in `time_zone`; `to` before `from` runs past midnight).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Window {
    /// Days the window opens on.
    pub days: Vec<Day>,
    /// Opens at.
    pub from: TimeOfDay,
    /// Closes at.
    pub to: TimeOfDay,
    /// IANA time zone (`Europe/Berlin`, `UTC`).
    pub time_zone: chrono_tz::Tz,
}

impl Window {
    /// Whether `at` falls in the window.
    pub fn contains(&self, at: DateTime<Utc>) -> bool {
        use chrono::Datelike;
        let local = at.with_timezone(&self.time_zone);
        let (day, t) = (local.weekday(), local.time());
        let opens_on = |d: Weekday| self.days.iter().any(|x| x.0 == d);
        if self.from <= self.to {
            opens_on(day) && self.from.0 <= t && t < self.to.0
        } else {
            (opens_on(day) && t >= self.from.0) || (opens_on(day.pred()) && t < self.to.0)
        }
    }
}

/// A period in which the operation must not run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "RawFreeze", deny_unknown_fields)]
pub struct Freeze {
    /// Starts at.
    pub from: DateTime<Utc>,
    /// Ends at.
    pub to: DateTime<Utc>,
    /// Why, shown in denials.
    pub reason: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFreeze {
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    reason: String,
}

impl TryFrom<RawFreeze> for Freeze {
    type Error = String;
    fn try_from(r: RawFreeze) -> Result<Self, String> {
        if r.to <= r.from {
            return Err(format!("freeze ends ({}) before it starts ({})", r.to, r.from));
        }
        Ok(Freeze { from: r.from, to: r.to, reason: r.reason })
    }
}

/// What a health rule makes of no data (no recent sample, too few pod starts, an empty query
/// result).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NoData {
    /// No data fails the rule.
    Fail,
    /// No data is inconclusive: a change waits, nothing halts.
    #[default]
    Inconclusive,
    /// No data passes.
    Ignore,
}

/// Where a health rule is measured.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RuleScope {
    /// Each cluster.
    #[default]
    Cluster,
    /// Each failure domain of each cluster (signals from samples only).
    Domain,
}

/// An instant PromQL query; `{cluster}` in it is replaced by the cluster's name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PromQuery {
    /// The Prometheus server (`http://prometheus:9090`).
    pub url: String,
    /// The query; its first result's value is measured.
    pub query: String,
}

/// What a correlated incident halts: repairing nodes one by one is wrong when the
/// infrastructure under them failed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Storms {
    /// The operations halted where the storm is (its cluster, or its failure domain).
    pub halts: Vec<Operation>,
    /// The halt is lifted once the correlation there has not grown for this long.
    #[serde(with = "humantime_serde", default = "default_storm_resume")]
    pub resume_after: Duration,
}

fn default_storm_resume() -> Duration {
    Duration::from_secs(1800)
}

/// A health rule: a signal, its bounds, and what its failure halts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthRule {
    /// Its name, in verdicts and halts.
    pub name: String,
    /// A signal of the health samples (`pod_start_success_rate`, `not_ready_percent`,
    /// `out_of_service`, `pods_unschedulable`, `fault_rate:<class>`) ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<Signal>,
    /// ... or a PromQL query.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prometheus: Option<PromQuery>,
    /// Per cluster (default) or per failure domain.
    #[serde(default)]
    pub scope: RuleScope,
    /// Fails below this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    /// Fails above this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
    /// After a change batch: fails when the value fell more than this percentage of the baseline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_drop_percent: Option<Percent>,
    /// After a change batch: fails when the value rose more than this above the baseline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_rise: Option<f64>,
    /// Pod starts a sample needs for `pod_start_success_rate` to be data (default 5).
    #[serde(default = "default_min_pod_starts")]
    pub min_pod_starts: u32,
    /// Failing measurements in a row before the rule halts (default 1).
    #[serde(default = "one")]
    pub consecutive: NonZeroU32,
    /// And for at least this long (default 0).
    #[serde(rename = "for", default, with = "humantime_serde")]
    pub for_: Duration,
    /// What no data means (default inconclusive).
    #[serde(default)]
    pub no_data: NoData,
    /// The operations its failure halts in its scope (default `canary_batch`: remediation goes on).
    #[serde(default = "default_halts")]
    pub halts: Vec<Operation>,
    /// Lift its halt once it has passed this long; without it, only an operator resumes.
    #[serde(default, with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    pub resume_after: Option<Duration>,
}

fn default_min_pod_starts() -> u32 {
    5
}

fn one() -> NonZeroU32 {
    NonZeroU32::MIN
}

fn default_halts() -> Vec<Operation> {
    vec![Operation::CanaryBatch]
}

/// An HTTP endpoint told of every halt: a JSON body signed with HMAC-SHA256 in
/// `X-Firebreak-Signature: sha256=<hex>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Webhook {
    /// Where to POST.
    pub url: String,
    /// The environment variable that holds the signing secret (never the secret itself).
    pub secret_env: String,
}

/// Everything the policy says about one operation.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OperationPolicy {
    /// Limits across the fleet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub global: Option<Limits>,
    /// Limits per cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<Limits>,
    /// Limits per failure domain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<Limits>,
    /// The breaker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub breaker: Option<Breaker>,
    /// When the operation may run; none: any time.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub windows: Vec<Window>,
    /// When it must not.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub freezes: Vec<Freeze>,
}

/// The whole policy, as read from a TOML file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// How long a permit lives unless renewed (1 s to 24 h).
    #[serde(with = "humantime_serde", default = "default_ttl")]
    pub permit_ttl: Duration,
    /// A cluster snapshot older than this is no data: rules that need one deny.
    #[serde(with = "humantime_serde", default = "default_snapshot_age")]
    pub snapshot_max_age: Duration,
    /// The node labels that name failure domains (`topology.kubernetes.io/zone`, a rack label).
    #[serde(default = "default_domains")]
    pub failure_domains: Vec<String>,
    /// The fleet: the clusters this gate serves. When named, a request, halt or snapshot for any
    /// other cluster is refused as bad input (a typo or a stranger, not a cluster to budget).
    /// Empty: any well-formed cluster name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub clusters: Vec<String>,
    /// Decisions kept in the log (at most 1,000,000; every field of an entry is bounded, so the
    /// log is bounded in bytes too).
    #[serde(default = "default_log_entries")]
    pub decision_log_entries: u32,
    /// Requests each token may make to the API (GCRA in this replica's memory, `governor`); a
    /// runaway client is answered 429 instead of loading the gate. Off without it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_rate_per_token: Option<ApiRate>,
    /// How often health rules are evaluated (samples are judged as they arrive; PromQL rules
    /// and no data on this tick).
    #[serde(with = "humantime_serde", default = "default_evaluate_every")]
    pub evaluate_every: Duration,
    /// Whether a change batch that fails its verdict also halts its cluster for the operations
    /// the failed rules name (default true); the change itself halts always.
    #[serde(default = "yes")]
    pub halt_cluster_on_failed_change: bool,
    /// Health rules.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub health_rules: Vec<HealthRule>,
    /// What a correlated incident (a storm) halts; off when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storms: Option<Storms>,
    /// Told of every halt.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub webhooks: Vec<Webhook>,
    /// Per operation; an operation without an entry is denied.
    #[serde(default)]
    pub operations: BTreeMap<Operation, OperationPolicy>,
}

fn default_evaluate_every() -> Duration {
    Duration::from_secs(5)
}

fn yes() -> bool {
    true
}

fn default_ttl() -> Duration {
    Duration::from_secs(600)
}

fn default_snapshot_age() -> Duration {
    Duration::from_secs(60)
}

fn default_domains() -> Vec<String> {
    vec!["topology.kubernetes.io/zone".into()]
}

fn default_log_entries() -> u32 {
    10_000
}

impl Default for Policy {
    /// The built-in policy: cautious for destructive operations. Per cluster: at most 3 nodes
    /// cordoned by Firebreak at once and never past 30 % of the cluster unhealthy; a breaker
    /// that latches after 10 cordons in 10 minutes.
    fn default() -> Self {
        let rate = |r: u32, b: u32| (NonZeroU32::new(r), NonZeroU32::new(b));
        let limits = |(rate_per_minute, burst): (Option<NonZeroU32>, Option<NonZeroU32>), max: u32| Limits {
            rate_per_minute,
            burst,
            max_in_flight: Some(max),
            ..Limits::default()
        };
        let op = |cluster: Limits| OperationPolicy { cluster: Some(cluster), ..OperationPolicy::default() };
        let mut cordon = limits(rate(30, 5), 3);
        cordon.max_unhealthy_percent = Some(Percent(30.0));
        Policy {
            permit_ttl: default_ttl(),
            snapshot_max_age: default_snapshot_age(),
            failure_domains: default_domains(),
            clusters: Vec::new(),
            decision_log_entries: default_log_entries(),
            api_rate_per_token: None,
            evaluate_every: default_evaluate_every(),
            halt_cluster_on_failed_change: true,
            health_rules: Vec::new(),
            storms: None,
            webhooks: Vec::new(),
            operations: BTreeMap::from([
                (
                    Operation::Cordon,
                    OperationPolicy {
                        breaker: Some(Breaker {
                            max_grants: 10,
                            window: Duration::from_secs(600),
                            scope: BreakerScope::Cluster,
                            cooldown: None,
                        }),
                        ..op(cordon)
                    },
                ),
                (Operation::Drain, op(limits(rate(30, 5), 3))),
                (Operation::Reboot, op(limits(rate(20, 3), 3))),
                (Operation::Reinstall, op(limits(rate(5, 1), 1))),
                (Operation::Delete, op(limits(rate(5, 1), 1))),
                (Operation::CanaryBatch, op(limits(rate(10, 1), 1))),
            ]),
        }
    }
}

impl Policy {
    /// `Err` naming the fleet when the policy names the fleet's clusters and `cluster` is not
    /// one of them.
    pub fn knows_cluster(&self, cluster: &str) -> Result<()> {
        if self.clusters.is_empty() || self.clusters.iter().any(|c| c == cluster) {
            return Ok(());
        }
        let fleet = self.clusters.iter().take(10).cloned().collect::<Vec<_>>().join(", ");
        let more =
            if self.clusters.len() > 10 { format!(" and {} more", self.clusters.len() - 10) } else { String::new() };
        Err(Error::BadRequest(format!(
            "cluster `{}` is not in the fleet the policy names ({fleet}{more})",
            cluster.chars().take(64).collect::<String>().escape_debug()
        )))
    }

    /// Reads and validates a TOML policy file.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io { path: path.to_owned(), source })?;
        Self::parse(&text).map_err(|e| match e {
            Error::Policy(m) => Error::Policy(format!("{}: {m}", path.display())),
            other => other,
        })
    }

    /// Parses and validates a TOML policy.
    pub fn parse(text: &str) -> Result<Self> {
        let p: Policy = toml::from_str(text).map_err(|e| Error::Policy(e.to_string()))?;
        if p.permit_ttl < Duration::from_secs(1) || p.permit_ttl > Duration::from_secs(86_400) {
            return Err(Error::Policy("permit_ttl: must be between 1s and 24h".into()));
        }
        if !(1..=1_000_000).contains(&p.decision_log_entries) {
            return Err(Error::Policy("decision_log_entries: between 1 and 1000000".into()));
        }
        let mut fleet = std::collections::BTreeSet::new();
        for c in &p.clusters {
            if !firebreak_schema::names::is_dns1123_subdomain(c) {
                return Err(Error::Policy(format!("clusters: `{}` is not a DNS-1123 name", c.escape_debug())));
            }
            if !fleet.insert(c) {
                return Err(Error::Policy(format!("clusters: `{c}` is named twice")));
            }
        }
        for (op, o) in &p.operations {
            for (scope, l) in [("global", &o.global), ("cluster", &o.cluster), ("domain", &o.domain)] {
                if let Some(l) = l
                    && l.burst.is_some()
                    && l.rate_per_minute.is_none()
                {
                    return Err(Error::Policy(format!("operations.{op}.{scope}: burst without rate_per_minute")));
                }
            }
            if o.domain.is_some() && p.failure_domains.is_empty() {
                return Err(Error::Policy(format!("operations.{op}.domain: no failure_domains are named")));
            }
            if o.breaker.as_ref().is_some_and(|b| b.window.is_zero()) {
                return Err(Error::Policy(format!("operations.{op}.breaker.window: must be positive")));
            }
        }
        if p.evaluate_every < Duration::from_millis(100) {
            return Err(Error::Policy("evaluate_every: at least 100ms".into()));
        }
        let mut names = std::collections::BTreeSet::new();
        for r in &p.health_rules {
            let at = format!("health_rules.{}", r.name);
            if r.name.is_empty() || !firebreak_schema::names::is_dns1123_subdomain(&r.name) {
                return Err(Error::Policy(format!("health_rules: name `{}` is not a DNS-1123 name", r.name)));
            }
            if !names.insert(r.name.as_str()) {
                return Err(Error::Policy(format!("{at}: the name is used twice")));
            }
            match (&r.signal, &r.prometheus) {
                (Some(_), None) => {}
                (None, Some(q)) => {
                    firebreak_schema::names::http_url(&q.url)
                        .map_err(|e| Error::Policy(format!("{at}.prometheus.url: {e}")))?;
                    if q.query.trim().is_empty() {
                        return Err(Error::Policy(format!("{at}.prometheus.query: empty")));
                    }
                    if r.scope == RuleScope::Domain {
                        return Err(Error::Policy(format!("{at}: a PromQL rule is per cluster")));
                    }
                }
                _ => return Err(Error::Policy(format!("{at}: needs a signal or a prometheus query, not both"))),
            }
            if r.min.is_none() && r.max.is_none() && r.max_drop_percent.is_none() && r.max_rise.is_none() {
                return Err(Error::Policy(format!("{at}: needs a bound (min, max, max_drop_percent or max_rise)")));
            }
            if r.scope == RuleScope::Domain && p.failure_domains.is_empty() {
                return Err(Error::Policy(format!("{at}: scope domain, but no failure_domains are named")));
            }
            if r.halts.is_empty() {
                return Err(Error::Policy(format!("{at}.halts: name at least one operation")));
            }
        }
        if let Some(st) = &p.storms {
            if st.halts.is_empty() {
                return Err(Error::Policy("storms.halts: name at least one operation".into()));
            }
            if st.resume_after.is_zero() {
                return Err(Error::Policy("storms.resume_after: must be more than zero".into()));
            }
        }
        for w in &p.webhooks {
            firebreak_schema::names::http_url(&w.url).map_err(|e| Error::Policy(format!("webhooks: {e}")))?;
            if w.secret_env.is_empty() {
                return Err(Error::Policy(format!("webhooks.{}: secret_env names no variable", w.url)));
            }
        }
        Ok(p)
    }

    /// Health rules that halt `op`.
    pub fn rules_halting(&self, op: Operation) -> impl Iterator<Item = &HealthRule> {
        self.health_rules.iter().filter(move |r| r.halts.contains(&op))
    }

    /// The effective policy as TOML (defaults filled in), for `firebreak gate check-policy`.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render the policy: {e}\n"))
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    proptest::proptest! {
        /// Any policy text, random or assembled from the policy's own keys with values of any
        /// kind, is a policy or an error naming the key; never a panic.
        #[test]
        fn any_policy_parses_or_is_an_error(
            text in "\\PC{0,300}",
            lines in proptest::collection::vec(
                "(\\[operations\\.(cordon|drain|reboot|x)(\\.(global|cluster|domain|breaker))?\\]|\\[\\[health_rules\\]\\]|\\[\\[operations\\.cordon\\.(windows|freezes)\\]\\]|(permit_ttl|snapshot_max_age|clusters|decision_log_entries|failure_domains|rate_per_minute|burst|max_in_flight|max_in_flight_percent|max_unhealthy_percent|max_grants|window|cooldown|scope|name|signal|min|max|days|start|end|timezone|from|to|evaluate_every) = (-?[0-9]{1,12}(\\.[0-9]+)?|\"[a-z0-9 :%.-]{0,12}\"|\\[\"[a-z0-9.-]{0,8}\"\\]|true|nan|inf))",
                0..16,
            ),
        ) {
            let _ = Policy::parse(&text);
            if let Ok(p) = Policy::parse(&lines.join("\n")) {
                proptest::prop_assert!(p.decision_log_entries >= 1 && p.permit_ttl.as_secs() >= 1);
            }
        }
    }

    #[test]
    fn the_fleet_is_named_once_and_strangers_are_refused() {
        let p = Policy::parse("clusters = [\"c1\", \"c2\"]").unwrap();
        assert!(p.knows_cluster("c1").is_ok());
        let e = p.knows_cluster("c9").unwrap_err().to_string();
        assert!(e.contains("`c9` is not in the fleet the policy names (c1, c2)"), "{e}");
        assert!(Policy::default().knows_cluster("anything").is_ok(), "no fleet named: any cluster");
        for (bad, why) in [
            ("clusters = [\"c1\", \"c1\"]", "named twice"),
            ("clusters = [\"C 1\"]", "not a DNS-1123 name"),
            ("decision_log_entries = 0", "between 1 and 1000000"),
        ] {
            let e = Policy::parse(bad).unwrap_err().to_string();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn parses_a_full_policy() {
        let p = Policy::parse(
            r#"
permit_ttl = "2m"
failure_domains = ["topology.kubernetes.io/zone", "example.com/rack"]
api_rate_per_token = { per_second = 50, burst = 100 }

[operations.cordon.cluster]
rate_per_minute = 6
burst = 2
max_in_flight = 3
max_in_flight_percent = 20
max_unhealthy_percent = 30

[operations.cordon.domain]
max_in_flight = 1

[operations.cordon.breaker]
max_grants = 5
window = "5m"
cooldown = "30m"

[[operations.cordon.windows]]
days = ["mon", "tue"]
from = "22:00"
to = "06:00"
time_zone = "Europe/Berlin"

[[operations.cordon.freezes]]
from = "2026-12-20T00:00:00Z"
to = "2027-01-04T00:00:00Z"
reason = "holidays"
"#,
        )
        .unwrap();
        assert_eq!(p.permit_ttl, Duration::from_secs(120));
        let c = &p.operations[&Operation::Cordon];
        assert_eq!(c.cluster.as_ref().unwrap().max_unhealthy_percent, Some(Percent(30.0)));
        assert_eq!(c.breaker.as_ref().unwrap().cooldown, Some(Duration::from_secs(1800)));
        assert!(!p.operations.contains_key(&Operation::Reboot));
        // The window runs past midnight: Monday 23:00 and Tuesday 05:00 in Berlin are in it,
        // Tuesday 12:00 and Wednesday 23:00 are not... but Wednesday 05:00 is (Tuesday's night).
        let berlin = |d, h| chrono_tz::Europe::Berlin.with_ymd_and_hms(2026, 11, d, h, 0, 0).unwrap().to_utc();
        let w = &c.windows[0];
        assert!(w.contains(berlin(23, 23)));
        assert!(w.contains(berlin(24, 5)));
        assert!(!w.contains(berlin(24, 12)));
        assert!(!w.contains(berlin(25, 23)));
        assert!(w.contains(berlin(25, 5)));
        // Rendering and reading again gives the same policy.
        assert_eq!(Policy::parse(&p.to_toml()).unwrap(), p);
        assert_eq!(Policy::parse(&Policy::default().to_toml()).unwrap(), Policy::default());
    }

    #[test]
    fn errors_name_the_key_and_the_line() {
        let cases = [
            ("[operations.cordon.cluster]\nrate_per_minute = 0\n", "line 2", "nonzero"),
            ("[operations.cordon.cluster]\nmax_in_flight_percent = 150\n", "line 2", "percentage"),
            ("[operations.explode.cluster]\nmax_in_flight = 1\n", "line 1", "explode"),
            ("typo = 1\n", "line 1", "typo"),
            ("[operations.cordon.cluster]\nmax_inflight = 1\n", "line 2", "max_inflight"),
            (
                "[[operations.cordon.windows]]\ndays = [\"mon\"]\nfrom = \"25:00\"\nto = \"06:00\"\ntime_zone = \"UTC\"\n",
                "line 3",
                "25:00",
            ),
            (
                "[[operations.cordon.windows]]\ndays = [\"moon\"]\nfrom = \"01:00\"\nto = \"06:00\"\ntime_zone = \"UTC\"\n",
                "line 2",
                "moon",
            ),
            (
                "[[operations.cordon.windows]]\ndays = [\"mon\"]\nfrom = \"01:00\"\nto = \"06:00\"\ntime_zone = \"Mars/Olympus\"\n",
                "line 5",
                "Mars",
            ),
            (
                "[[operations.cordon.freezes]]\nfrom = \"2027-01-04T00:00:00Z\"\nto = \"2026-12-20T00:00:00Z\"\nreason = \"x\"\n",
                "line 1",
                "before it starts",
            ),
            ("[operations.cordon.breaker]\nmax_grants = 1\nwindow = \"soon\"\n", "line 3", "soon"),
        ];
        for (text, line, word) in cases {
            let e = Policy::parse(text).unwrap_err().to_string();
            assert!(e.contains(line) && e.contains(word), "{text:?}: {e}");
        }
        let e = Policy::parse("[operations.cordon.cluster]\nburst = 2\n").unwrap_err().to_string();
        assert!(e.contains("operations.cordon.cluster: burst without rate_per_minute"), "{e}");
        let e = Policy::parse("permit_ttl = \"0s\"\n").unwrap_err().to_string();
        assert!(e.contains("permit_ttl"), "{e}");
    }
}

#[cfg(test)]
mod example_tests {
    use super::*;

    #[test]
    fn the_shipped_example_policy_reads_and_health_rules_are_checked() {
        let p = Policy::parse(include_str!("../../deploy/examples/gate-policy-health.toml")).unwrap();
        assert_eq!(p.health_rules.len(), 3);
        assert_eq!(p.health_rules[0].signal, Some(Signal::PodStartSuccessRate));
        assert_eq!(p.health_rules[1].scope, RuleScope::Domain);
        assert_eq!(p.health_rules[2].no_data, NoData::Fail);
        assert_eq!(Policy::parse(&p.to_toml()).unwrap(), p);
        for (text, word) in [
            ("[[health_rules]]\nname = \"a\"\nsignal = \"pod_start_success_rate\"\n", "needs a bound"),
            ("[[health_rules]]\nname = \"a\"\nsignal = \"pod_start_rate\"\nmin = 1.0\n", "unknown signal"),
            ("[[health_rules]]\nname = \"a\"\nmin = 1.0\n", "needs a signal or a prometheus query"),
            (
                "[[health_rules]]\nname = \"a\"\nprometheus = { url = \"ftp://x\", query = \"up\" }\nmin = 1.0\n",
                "not an http",
            ),
            ("[[health_rules]]\nname = \"a\"\nsignal = \"out_of_service\"\nmax = 1.0\nno_data = \"maybe\"\n", "maybe"),
            (
                "[[health_rules]]\nname = \"a\"\nsignal = \"out_of_service\"\nmax = 1.0\n[[health_rules]]\nname = \"a\"\nsignal = \"out_of_service\"\nmax = 1.0\n",
                "used twice",
            ),
            ("[[webhooks]]\nurl = \"http://x\"\nsecret = \"inline\"\n", "secret"),
            ("[storms]\nhalts = []\n", "storms.halts"),
            ("[storms]\nhalts = [\"reboot\"]\nresume_after = \"0s\"\n", "storms.resume_after"),
            ("[storms]\nhalts = [\"reboot\"]\nfor = \"1m\"\n", "for"),
        ] {
            let e = Policy::parse(text).unwrap_err().to_string();
            assert!(e.contains(word), "{text:?}: {e}");
        }
    }
}
