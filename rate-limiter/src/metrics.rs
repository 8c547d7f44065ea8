//! The gate's metrics, registered under `firebreak_gate`; every label has a bounded set of values
//! (operation names, fixed outcome names).

use firebreak_schema::Operation;
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DecisionLabels {
    operation: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationLabel {
    operation: &'static str,
}

/// Decisions by outcome and permits in flight, with their registry.
pub(crate) struct Metrics {
    decisions: Family<DecisionLabels, Counter>,
    active: Family<OperationLabel, Gauge>,
    pub(crate) registry: Registry,
}

impl Metrics {
    pub(crate) fn new() -> Self {
        let mut registry = Registry::with_prefix("firebreak_gate");
        let decisions = Family::default();
        let active = Family::default();
        registry.register("decisions", "Permit decisions by operation and outcome", decisions.clone());
        registry.register("permits_active", "Permits in flight by operation", active.clone());
        Self { decisions, active, registry }
    }

    pub(crate) fn decision(&self, operation: Operation, outcome: &'static str) {
        self.decisions.get_or_create(&DecisionLabels { operation: operation.as_str(), outcome }).inc();
    }

    pub(crate) fn active(&self, operation: Operation, n: usize) {
        self.active.get_or_create(&OperationLabel { operation: operation.as_str() }).set(n as i64);
    }
}
