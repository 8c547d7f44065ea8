//! The agent's own counters, for node_exporter's textfile collector: the agent serves no HTTP
//! (it runs on every node, and one more port per node is one more thing to secure), so
//! `--metrics-textfile` has it write them, whole (a temporary file renamed over the old one),
//! every heartbeat, into the directory node_exporter reads (`--collector.textfile.directory`).
//!
//! - `firebreak_agent_faults_found_total{kind}`: faults found, by kind;
//! - `firebreak_agent_kmsg_records_lost_total`: kernel log records the kernel overwrote before
//!   the agent read them (EPIPE, or a gap in sequence numbers);
//! - `firebreak_agent_spool_dropped_total`: faults the full spool dropped;
//! - `firebreak_agent_spool_faults`: faults waiting in the spool for delivery.

use std::{path::Path, sync::Arc};

use firebreak_schema::FaultKind;
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

/// The agent's counters; clones share them.
#[derive(Clone, Debug)]
pub struct Metrics {
    registry: Arc<Registry>,
    found: Family<KindLabels, Counter>,
    lost: Counter,
    dropped: Counter,
    spooled: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let (found, lost, dropped, spooled) =
            (Family::<KindLabels, Counter>::default(), Counter::default(), Counter::default(), Gauge::default());
        let mut registry = Registry::default();
        let r = registry.sub_registry_with_prefix("firebreak_agent");
        r.register("faults_found", "Faults found, by kind", found.clone());
        r.register(
            "kmsg_records_lost",
            "Kernel log records the kernel overwrote before the agent read them",
            lost.clone(),
        );
        r.register("spool_dropped", "Faults the full spool dropped undelivered", dropped.clone());
        r.register("spool_faults", "Faults waiting in the spool for delivery", spooled.clone());
        Self { registry: Arc::new(registry), found, lost, dropped, spooled }
    }
}

impl Metrics {
    /// A fault was found.
    pub fn found(&self, kind: FaultKind) {
        self.found.get_or_create(&KindLabels { kind: kind.as_str() }).inc();
    }

    /// The kernel overwrote `n` records before they were read.
    pub fn lost(&self, n: u64) {
        self.lost.inc_by(n);
    }

    /// The full spool dropped a fault.
    pub fn spool_dropped(&self) {
        self.dropped.inc();
    }

    /// Faults waiting in the spool now.
    pub fn spooled(&self, waiting: usize) {
        self.spooled.set(i64::try_from(waiting).unwrap_or(i64::MAX));
    }

    /// The counters in Prometheus's text exposition format (0.0.4), which node_exporter's
    /// textfile collector reads. prometheus-client writes OpenMetrics, which differs in two
    /// places: a counter family is named without its `_total` (in its `HELP` and `TYPE` lines),
    /// and the text ends with `# EOF`; both are turned into the older format here.
    pub fn encode(&self) -> String {
        let mut open_metrics = String::new();
        if let Err(error) = prometheus_client::encoding::text::encode(&mut open_metrics, &self.registry) {
            tracing::warn!(%error, "agent metrics not encoded");
        }
        let counters: std::collections::BTreeSet<&str> =
            open_metrics.lines().filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter")).collect();
        let mut out = String::with_capacity(open_metrics.len() + 64);
        for line in open_metrics.lines().filter(|l| *l != "# EOF") {
            let family = ["# HELP ", "# TYPE "].iter().find_map(|p| {
                let rest = line.strip_prefix(p)?;
                let name = rest.split(' ').next()?;
                counters.contains(name).then(|| (p, name, &rest[name.len()..]))
            });
            match family {
                Some((prefix, name, rest)) => out.push_str(&format!("{prefix}{name}_total{rest}")),
                None => out.push_str(line),
            }
            out.push('\n');
        }
        out
    }

    /// Writes the counters to `path` whole: a temporary file beside it, renamed over it.
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        crate::replace_file(path, self.encode().as_bytes(), false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_counters_are_text_that_promtool_accepts() {
        let m = Metrics::default();
        m.found(FaultKind::MemoryUncorrectable);
        m.found(FaultKind::MemoryUncorrectable);
        m.lost(7);
        m.spooled(3);
        for _ in 0..5 {
            m.spool_dropped();
        }
        m.spooled(1);
        let text = m.encode();
        assert!(text.contains("firebreak_agent_faults_found_total{kind=\"MemoryUncorrectable\"} 2"), "{text}");
        assert!(text.contains("firebreak_agent_kmsg_records_lost_total 7"), "{text}");
        assert!(text.contains("firebreak_agent_spool_dropped_total 5"), "{text}");
        assert!(text.contains("firebreak_agent_spool_faults 1"), "{text}");
        let tmp = tempfile::Builder::new().prefix("fb-agent-metrics-").tempdir().unwrap();
        let dir = tmp.path();
        let file = dir.join("firebreak-agent.prom");
        m.write(&file).unwrap();
        assert_eq!(std::fs::read_to_string(&file).unwrap(), text);
        // Prometheus's own linter, where it is installed (CI installs it), reads it as a scrape.
        if let Ok(out) = std::process::Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(std::fs::File::open(&file).unwrap())
            .output()
        {
            assert!(
                out.status.success(),
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}
