//! The remediator's metrics, registered under `firebreak_remediator`. Every label has a bounded
//! set of values (cluster names, workflow states, fixed outcome names).

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family},
    registry::Registry,
};

macro_rules! labels {
    ($($name:ident { $field:ident }),+) => {$(
        #[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
        pub(crate) struct $name {
            cluster: String,
            $field: &'static str,
        }
        impl $name {
            fn new(cluster: &str, $field: &'static str) -> Self {
                Self { cluster: cluster.to_owned(), $field }
            }
        }
    )+};
}
labels!(
    Decision { decision },
    StateLabel { state },
    Outcome { outcome },
    Limit { limit },
    Kind { kind },
    HookLabel { hook }
);

/// Counters of one or more remediators (labelled by cluster); clones share the counts.
#[derive(Clone, Default)]
pub struct Metrics {
    intake: Family<Decision, Counter>,
    transitions: Family<StateLabel, Counter>,
    evictions: Family<Outcome, Counter>,
    denials: Family<Limit, Counter>,
    undecodable: Family<Kind, Counter>,
    given_up: Family<HookLabel, Counter>,
    pub(crate) lag: firebreak_plumbing::kafka::Lag,
}

impl Metrics {
    /// Creates the counters and registers them.
    pub fn new(registry: &mut Registry) -> Self {
        let m = Self::default();
        let r = registry.sub_registry_with_prefix("firebreak_remediator");
        r.register("faults", "Consumed faults by cluster and decision", m.intake.clone());
        r.register(
            "consumer_lag",
            "Faults on the cluster's topic not yet read, per consumer group and partition",
            m.lag.clone(),
        );
        r.register("workflow_transitions", "Workflow transitions by cluster and new state", m.transitions.clone());
        r.register("evictions", "Eviction attempts by cluster and outcome (accepted, refused)", m.evictions.clone());
        r.register("permit_denials", "Gate denials by cluster and limit", m.denials.clone());
        r.register(
            "undecodable_objects",
            "Objects the node watch could not decode, skipped while the rest are watched",
            m.undecodable.clone(),
        );
        r.register(
            "webhooks_given_up",
            "Webhook calls given up by cluster and hook, undelivered a day after they were stored",
            m.given_up.clone(),
        );
        m
    }

    pub(crate) fn webhook_given_up(&self, cluster: &str, hook: crate::outbox::Hook) {
        self.given_up.get_or_create(&HookLabel::new(cluster, hook.as_str())).inc();
    }

    pub(crate) fn intake(&self, cluster: &str, decision: &'static str) {
        self.intake.get_or_create(&Decision::new(cluster, decision)).inc();
    }

    pub(crate) fn transition(&self, cluster: &str, state: &'static str) {
        self.transitions.get_or_create(&StateLabel::new(cluster, state)).inc();
    }

    pub(crate) fn eviction(&self, cluster: &str, accepted: bool) {
        self.evictions.get_or_create(&Outcome::new(cluster, if accepted { "accepted" } else { "refused" })).inc();
    }

    pub(crate) fn undecodable(&self, cluster: &str, kind: &'static str) {
        self.undecodable.get_or_create(&Kind::new(cluster, kind)).inc();
    }

    pub(crate) fn denial(&self, cluster: &str, limit: Option<&str>) {
        let limit = match limit {
            Some("concurrency") => "concurrency",
            Some("rate") => "rate",
            Some("policy") => "policy",
            Some("gate_unavailable") => "gate_unavailable",
            _ => "other",
        };
        self.denials.get_or_create(&Limit::new(cluster, limit)).inc();
    }
}
