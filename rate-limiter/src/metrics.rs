//! The gate's metrics, registered under `firebreak_gate`; every label has a bounded set of values
//! (operation names, rule names).

use firebreak_schema::{Operation, Permit};
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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabel {
    source: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VerdictLabel {
    verdict: &'static str,
}

/// Decisions by outcome, permits in flight, abandoned permits, breaker trips, halts raised by
/// health (rule or change) and change verdicts.
pub(crate) struct Metrics {
    auto_halts: Family<SourceLabel, Counter>,
    verdicts: Family<VerdictLabel, Counter>,
    decisions: Family<DecisionLabels, Counter>,
    active: Family<OperationLabel, Gauge>,
    abandoned: Family<OperationLabel, Counter>,
    trips: Family<OperationLabel, Counter>,
    pub(crate) registry: Registry,
}

impl Metrics {
    pub(crate) fn new() -> Self {
        let mut registry = Registry::with_prefix("firebreak_gate");
        let m = Self {
            auto_halts: Family::default(),
            verdicts: Family::default(),
            decisions: Family::default(),
            active: Family::default(),
            abandoned: Family::default(),
            trips: Family::default(),
            registry: Registry::default(),
        };
        registry.register(
            "decisions",
            "Permit decisions by operation and outcome (granted or the rule that denied)",
            m.decisions.clone(),
        );
        registry.register("permits_active", "Permits in flight by operation", m.active.clone());
        registry.register(
            "permits_abandoned",
            "Permits that expired because their holder stopped renewing them",
            m.abandoned.clone(),
        );
        registry.register("breaker_trips", "Breaker trips by operation", m.trips.clone());
        registry.register(
            "health_halts",
            "Halts raised without an operator, by source (rule: a health rule; change: a failed batch)",
            m.auto_halts.clone(),
        );
        registry.register("batch_verdicts", "Verdicts on completed change batches", m.verdicts.clone());
        Self { registry, ..m }
    }

    pub(crate) fn decision(&self, operation: Operation, outcome: &'static str) {
        self.decisions.get_or_create(&DecisionLabels { operation: operation.as_str(), outcome }).inc();
    }

    pub(crate) fn permit_delta(&self, operation: Operation, delta: i64) {
        self.active.get_or_create(&OperationLabel { operation: operation.as_str() }).inc_by(delta);
    }

    /// Sets the gauges from the permits in flight (the sweeper's periodic truth).
    pub(crate) fn set_active(&self, active: &[Permit]) {
        for op in Operation::ALL {
            let n = active.iter().filter(|p| p.operation == op).count() as i64;
            self.active.get_or_create(&OperationLabel { operation: op.as_str() }).set(n);
        }
    }

    pub(crate) fn abandoned(&self, operation: Operation) {
        self.abandoned.get_or_create(&OperationLabel { operation: operation.as_str() }).inc();
    }

    pub(crate) fn auto_halt(&self, source: &str) {
        let source = if source == "change" { "change" } else { "rule" };
        self.auto_halts.get_or_create(&SourceLabel { source }).inc();
    }

    pub(crate) fn verdict(&self, phase: firebreak_schema::Phase) {
        self.verdicts.get_or_create(&VerdictLabel { verdict: phase.as_str() }).inc();
    }

    pub(crate) fn trip(&self, operation: Operation) {
        self.trips.get_or_create(&OperationLabel { operation: operation.as_str() }).inc();
    }
}
