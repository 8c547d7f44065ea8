//! Changes the gate watches over (canary and batch rollouts), and the health verdicts that
//! decide whether they go on. A verdict has the four phases of an Argo Rollouts AnalysisRun.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{Error, Halt, Operation, Result, deterministic_id, event::validate_names, names, wire::CloudEvent};

/// How a health check came out, as an Argo Rollouts AnalysisRun says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Phase {
    /// Every rule holds.
    Successful,
    /// No rule failed, but one could not tell (no data where the rule says inconclusive).
    Inconclusive,
    /// A rule could not be measured (its source failed).
    Error,
    /// A rule failed.
    Failed,
}

impl Phase {
    /// Every phase.
    pub const ALL: [Phase; 4] = [Phase::Successful, Phase::Inconclusive, Phase::Error, Phase::Failed];

    /// The name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Successful => "Successful",
            Phase::Inconclusive => "Inconclusive",
            Phase::Error => "Error",
            Phase::Failed => "Failed",
        }
    }
}

/// One rule measured in one scope.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Measurement {
    /// The rule's name.
    pub rule: String,
    /// What was measured: a signal name, or `promql`.
    pub signal: String,
    /// Where (`cluster=c1`, `cluster=c1,topology.kubernetes.io/zone=zone-a`).
    pub scope: String,
    /// How it came out.
    pub phase: Phase,
    /// The value measured; `None`: no data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
    /// The rule's bound (its `min` or `max`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<f64>,
    /// The value when the change's batch began, for rules that limit the drop.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline: Option<f64>,
    /// In words, with the numbers.
    pub message: String,
}

/// The verdict on a cluster's health: the worst phase of its rules, with every measurement.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    /// `Successful`, `Inconclusive`, `Error` or `Failed` (`result.verdict` in an Argo
    /// AnalysisTemplate's `successCondition`).
    pub verdict: Phase,
    /// The cluster.
    pub cluster: String,
    /// When it was reached.
    pub at: DateTime<Utc>,
    /// Why, in one line.
    pub reason: String,
    /// Every rule's measurement.
    pub signals: Vec<Measurement>,
}

/// The size of a batch: a number of nodes, or a percentage of the cluster's nodes (`"10%"`).
/// Sizes are cumulative: `[1, "10%", "100%"]` changes 1 node, then up to 10 %, then the rest.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "serde_json::Value", into = "serde_json::Value")]
pub enum BatchSize {
    /// This many nodes in total.
    Nodes(u32),
    /// This share of the nodes in total, in (0, 100].
    Percent(f64),
}

impl BatchSize {
    /// The nodes changed once this batch is done, out of `total` (a percentage rounds up, so a
    /// batch is never empty).
    pub fn cumulative(self, total: u32) -> u32 {
        match self {
            BatchSize::Nodes(n) => n.min(total),
            BatchSize::Percent(p) => ((p * f64::from(total) / 100.0).ceil() as u32).min(total),
        }
    }
}

impl BatchSize {
    /// Most nodes a batch may count (a cluster has at most some thousands).
    pub const MAX_NODES: u32 = 100_000;
}

impl std::str::FromStr for BatchSize {
    type Err = Error;
    /// `N` (1 to 100,000 nodes) or `P%` (more than 0 and at most 100, with at most two decimals),
    /// between optional spaces; no sign, exponent or leading zero, as the API's document says.
    fn from_str(s: &str) -> Result<Self> {
        let bad = || {
            Error::Invalid(format!(
                "batch size `{}`: expected a node count (1 to {}) or a percentage (`10%`, `12.5%`)",
                s.escape_debug(),
                BatchSize::MAX_NODES
            ))
        };
        let digits = |d: &str, max: usize| {
            !d.is_empty()
                && d.len() <= max
                && d.bytes().all(|b| b.is_ascii_digit())
                && (d == "0" || !d.starts_with('0'))
        };
        let t = s.trim_matches(' ');
        match t.strip_suffix('%') {
            Some(p) => {
                let (whole, fraction) = p.split_once('.').map_or((p, None), |(w, f)| (w, Some(f)));
                let plain = digits(whole, 3)
                    && fraction.is_none_or(|f| (1..=2).contains(&f.len()) && f.bytes().all(|b| b.is_ascii_digit()));
                match p.parse::<f64>() {
                    Ok(v) if plain && v > 0.0 && v <= 100.0 => Ok(BatchSize::Percent(v)),
                    _ => Err(bad()),
                }
            }
            None => match t.parse::<u32>() {
                Ok(n) if digits(t, 6) && (1..=BatchSize::MAX_NODES).contains(&n) => Ok(BatchSize::Nodes(n)),
                _ => Err(bad()),
            },
        }
    }
}

impl std::fmt::Display for BatchSize {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BatchSize::Nodes(n) => write!(f, "{n}"),
            BatchSize::Percent(p) => write!(f, "{p}%"),
        }
    }
}

impl TryFrom<serde_json::Value> for BatchSize {
    type Error = Error;
    fn try_from(v: serde_json::Value) -> Result<Self> {
        match v {
            serde_json::Value::String(s) => s.parse(),
            // A whole number written as `5.0` is an integer to JSON Schema too.
            serde_json::Value::Number(n) => match whole(&n).and_then(|u| u32::try_from(u).ok()) {
                Some(u) if (1..=BatchSize::MAX_NODES).contains(&u) => Ok(BatchSize::Nodes(u)),
                _ => Err(Error::Invalid(format!("batch size {n}: expected 1 to {} nodes", BatchSize::MAX_NODES))),
            },
            other => Err(Error::Invalid(format!("batch size {other}: expected a number or a string"))),
        }
    }
}

impl From<BatchSize> for serde_json::Value {
    fn from(b: BatchSize) -> Self {
        match b {
            BatchSize::Nodes(n) => n.into(),
            BatchSize::Percent(_) => b.to_string().into(),
        }
    }
}

/// `POST /api/v1/changes` body: a change to roll out in batches.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChangeRequest {
    /// The change's id (a DNS-1123 name, chosen by the change system: registering it again is
    /// idempotent).
    pub id: String,
    /// What kind of change (`node-runtime-upgrade`, `kernel`, ...).
    pub kind: String,
    /// Who owns it (a team, a pipeline).
    pub owner: String,
    /// The cluster it changes.
    pub cluster: String,
    /// The batches, cumulative.
    pub batches: Vec<BatchSize>,
    /// Seconds to wait after a batch before its health is judged.
    #[serde(deserialize_with = "whole_number")]
    pub soak_s: u64,
}

/// A JSON number as a non-negative whole number, written `600` or `600.0` (both integers to
/// JSON Schema); `None` for a fraction, a negative number or one past 2^53.
fn whole(n: &serde_json::Number) -> Option<u64> {
    n.as_u64().or_else(|| {
        n.as_f64().filter(|f| f.fract() == 0.0 && (0.0..=9_007_199_254_740_992.0).contains(f)).map(|f| f as u64)
    })
}

/// Reads a field with [`whole`].
fn whole_number<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<u64, D::Error> {
    let n = serde_json::Number::deserialize(d)?;
    whole(&n).ok_or_else(|| serde::de::Error::custom(format!("{n}: expected a non-negative whole number")))
}

impl ChangeRequest {
    /// Checks names, sizes and the soak.
    pub fn validate(&self) -> Result<()> {
        if !names::is_dns1123_subdomain(&self.id) {
            return Err(Error::Invalid(format!("change id `{}` is not a DNS-1123 name", self.id.escape_debug())));
        }
        if !names::is_dns1123_subdomain(&self.cluster) {
            return Err(Error::Invalid(format!("cluster `{}` is not a DNS-1123 name", self.cluster.escape_debug())));
        }
        for (what, v) in [("kind", &self.kind), ("owner", &self.owner)] {
            if v.is_empty() || !names::is_plain_text(v, 256) {
                return Err(Error::Invalid(format!("{what}: 1 to 256 characters of plain text")));
            }
        }
        if self.batches.is_empty() || self.batches.len() > 100 {
            return Err(Error::Invalid("batches: 1 to 100 batches".into()));
        }
        if self.soak_s > 86_400 {
            return Err(Error::Invalid("soak_s: at most a day".into()));
        }
        Ok(())
    }
}

/// Where a change is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeState {
    /// Between batches (or before the first): the next batch may begin.
    Ready,
    /// A batch has begun: it is applied, then soaks, then is completed.
    InBatch,
    /// Stopped by a failed verdict; an operator may resume or abort it.
    Halted,
    /// Stopped by an operator for good.
    Aborted,
    /// Every batch done.
    Completed,
}

impl ChangeState {
    /// Every state, in a change's order.
    pub const ALL: [ChangeState; 5] =
        [ChangeState::Ready, ChangeState::InBatch, ChangeState::Halted, ChangeState::Aborted, ChangeState::Completed];

    /// The name stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeState::Ready => "ready",
            ChangeState::InBatch => "in_batch",
            ChangeState::Halted => "halted",
            ChangeState::Aborted => "aborted",
            ChangeState::Completed => "completed",
        }
    }
}

/// One batch of a change, as it went.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchRecord {
    /// 1-based.
    pub n: u32,
    /// When it began.
    pub begun_at: DateTime<Utc>,
    /// The `canary_batch` permit it holds while it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub permit_id: Option<Uuid>,
    /// The signals when it began.
    pub baseline: Vec<Measurement>,
    /// When it was completed (judged).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<DateTime<Utc>>,
    /// The verdict after its soak.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verdict: Option<Verdict>,
}

/// A change as the gate keeps it: `GET /api/v1/changes/{id}`, and on `firebreak.changes.v1`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Change {
    /// What was registered.
    #[serde(flatten)]
    pub spec: ChangeRequest,
    /// Where it is.
    pub state: ChangeState,
    /// Every batch begun so far.
    pub history: Vec<BatchRecord>,
    /// Why it is halted or aborted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Who registered it (token name).
    pub registered_by: String,
    /// When.
    pub created_at: DateTime<Utc>,
    /// Last change of state.
    pub updated_at: DateTime<Utc>,
}

/// `POST /api/v1/changes/{id}/batches/{n}/begin|complete` answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchAnswer {
    /// Begin: the batch may be applied. Complete: the batch is good, the change goes on.
    pub proceed: bool,
    /// Why, with the measured values.
    pub reason: String,
    /// When to ask again (a denial that may clear: budgets, windows, a soak not over).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_s: Option<u64>,
    /// The change as it is now.
    pub change: Change,
}

impl CloudEvent for Change {
    const TYPE: &'static str = "io.firebreak.change.v1";
    fn ce_id(&self) -> String {
        let step = format!("{}/{}", self.state.as_str(), self.history.len());
        deterministic_id(self.updated_at, &[&self.spec.cluster, &self.spec.id, &step]).to_string()
    }
    fn ce_source(&self) -> String {
        "/firebreak/gate".into()
    }
    fn ce_time(&self) -> DateTime<Utc> {
        self.updated_at
    }
    fn key(&self) -> String {
        self.spec.cluster.clone()
    }
    fn validate(&self) -> Result<()> {
        self.spec.validate()
    }
}

impl CloudEvent for Halt {
    const TYPE: &'static str = "io.firebreak.halt.v1";
    fn ce_id(&self) -> String {
        let at = self.resumed_at.unwrap_or(self.at);
        let what = if self.resumed_at.is_some() { "resumed" } else { "halted" };
        deterministic_id(at, &[&self.id.to_string(), what]).to_string()
    }
    fn ce_source(&self) -> String {
        "/firebreak/gate".into()
    }
    fn ce_time(&self) -> DateTime<Utc> {
        self.resumed_at.unwrap_or(self.at)
    }
    fn key(&self) -> String {
        self.scope.cluster.clone().unwrap_or_else(|| "global".into())
    }
    fn validate(&self) -> Result<()> {
        if let Some(c) = &self.scope.cluster {
            validate_names(c, "-")?;
        }
        Ok(())
    }
}

/// One of the gate's decisions on a permit request, as its log keeps it and as it is published
/// on [`crate::CHANGES_TOPIC`] (key = cluster), so the event center can show it with the
/// incident and the node it concerns.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    /// Its id.
    pub id: Uuid,
    /// When it was made.
    pub at: DateTime<Utc>,
    /// The operation asked for.
    pub operation: Operation,
    /// Cluster.
    pub cluster: String,
    /// Node, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Who asked (`remediator/<workflow id>`, a change system).
    pub requester: String,
    /// The token that asked.
    pub holder: String,
    /// The answer.
    pub granted: bool,
    /// The rule that denied, if one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// Its scope.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    /// The value measured against it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub measured: Option<f64>,
    /// Its threshold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<f64>,
    /// Why.
    pub reason: String,
    /// The permit granted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub permit_id: Option<Uuid>,
}

impl Decision {
    /// The workflow that asked, when a remediator did (`remediator/<workflow id>`).
    pub fn workflow_id(&self) -> Option<Uuid> {
        self.requester.strip_prefix("remediator/")?.parse().ok()
    }
}

impl CloudEvent for Decision {
    const TYPE: &'static str = "io.firebreak.decision.v1";
    fn ce_id(&self) -> String {
        self.id.to_string()
    }
    fn ce_source(&self) -> String {
        "/firebreak/gate".into()
    }
    fn ce_time(&self) -> DateTime<Utc> {
        self.at
    }
    fn key(&self) -> String {
        self.cluster.clone()
    }
    fn validate(&self) -> Result<()> {
        validate_names(&self.cluster, self.node.as_deref().unwrap_or("-"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_sizes_read_and_resolve() {
        let b: Vec<BatchSize> = serde_json::from_str(r#"[1, "10%", "50%", "100%"]"#).unwrap();
        let sizes: Vec<u32> = b.iter().map(|b| b.cumulative(25)).collect();
        assert_eq!(sizes, [1, 3, 13, 25]);
        assert_eq!(serde_json::to_string(&b).unwrap(), r#"[1,"10%","50%","100%"]"#);
        let b: Vec<BatchSize> = serde_json::from_str(r#"[" 3 ", 100000, 7.0, "0.01%", "12.5%", "100.00%"]"#).unwrap();
        assert_eq!(b[0], BatchSize::Nodes(3));
        assert_eq!(b[2], BatchSize::Nodes(7));
        assert_eq!(serde_json::to_string(&b[3..]).unwrap(), r#"["0.01%","12.5%","100%"]"#);
        for bad in [
            r#"[0]"#,
            r#"["150%"]"#,
            r#"["x"]"#,
            r#"[true]"#,
            r#"["-1"]"#,
            r#"[100001]"#,
            r#"[2.5]"#,
            r#"["+5"]"#,
            r#"["05"]"#,
            r#"["1e1%"]"#,
            r#"["0%"]"#,
            r#"["0.00%"]"#,
            r#"["5.%"]"#,
            r#"[".5%"]"#,
            r#"["12.345%"]"#,
            r#"["100.01%"]"#,
            r#"["\t5"]"#,
            r#"["inf%"]"#,
        ] {
            assert!(serde_json::from_str::<Vec<BatchSize>>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn phases_rank_failed_worst() {
        let worst = [Phase::Successful, Phase::Failed, Phase::Inconclusive, Phase::Error].into_iter().max();
        assert_eq!(worst, Some(Phase::Failed));
        assert!(Phase::Error > Phase::Inconclusive);
        assert_eq!(serde_json::to_string(&Phase::Successful).unwrap(), r#""Successful""#);
    }
}
