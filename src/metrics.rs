//! The controller's Prometheus metrics, prefix `artgc_`, in its own registry (no global one).
//! Labels are of low cardinality: namespace, strategy, category, reason; never a workflow name.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NamespaceStrategy {
    pub namespace: String,
    pub strategy: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Category {
    pub category: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Reason {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StrategyLabel {
    pub strategy: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Forced {
    pub forced: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildInfo {
    pub version: String,
}

fn latency_histogram() -> Histogram {
    // 10 ms .. ~1.5 h
    Histogram::new(exponential_buckets(0.01, 2.5, 14))
}

fn duration_histogram() -> Histogram {
    // 1 ms .. ~4 min
    Histogram::new(exponential_buckets(0.001, 2.5, 14))
}

/// Registers metrics and records the series names they expose.
struct Registrar<'a> {
    registry: &'a mut Registry,
    series: Vec<String>,
}

impl Registrar<'_> {
    fn counter(
        &mut self,
        name: &str,
        help: &str,
        unit: Option<Unit>,
        metric: impl prometheus_client::registry::Metric,
    ) {
        let full = match &unit {
            Some(u) => format!("artgc_{name}_{}_total", u.as_str()),
            None => format!("artgc_{name}_total"),
        };
        self.series.push(full);
        match unit {
            Some(u) => self.registry.register_with_unit(name, help, u, metric),
            None => self.registry.register(name, help, metric),
        }
    }

    fn histogram(
        &mut self,
        name: &str,
        help: &str,
        metric: impl prometheus_client::registry::Metric,
    ) {
        for suffix in ["bucket", "sum", "count"] {
            self.series.push(format!("artgc_{name}_seconds_{suffix}"));
        }
        self.registry
            .register_with_unit(name, help, Unit::Seconds, metric);
    }

    fn gauge(&mut self, name: &str, help: &str, metric: impl prometheus_client::registry::Metric) {
        self.series.push(format!("artgc_{name}"));
        self.registry.register(name, help, metric);
    }
}

pub struct Metrics {
    pub registry: Registry,
    /// Every series name the text exposition can contain (with `_total`, `_bucket`, ...),
    /// for checking dashboards against.
    pub series: Vec<String>,
    pub objects_deleted: Family<NamespaceStrategy, Counter>,
    pub bytes_reclaimed: Family<NamespaceStrategy, Counter>,
    pub artifacts_deleted: Family<NamespaceStrategy, Counter>,
    pub artifacts_failed: Family<Category, Counter>,
    pub artifacts_kept: Family<Reason, Counter>,
    pub finalizers_removed: Family<Forced, Counter>,
    pub gc_latency: Family<StrategyLabel, Histogram>,
    pub reconcile_duration: Family<ResultLabel, Histogram>,
    pub reconcile_errors: Family<Category, Counter>,
    pub workflows_pending: Gauge,
    pub workflows_watched: Gauge,
    pub keys_indexed: Gauge,
    pub key_index_bytes: Gauge,
    pub leader: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("artgc");
        let m = Self {
            objects_deleted: Family::default(),
            bytes_reclaimed: Family::default(),
            artifacts_deleted: Family::default(),
            artifacts_failed: Family::default(),
            artifacts_kept: Family::default(),
            finalizers_removed: Family::default(),
            gc_latency: Family::new_with_constructor(latency_histogram as fn() -> Histogram),
            reconcile_duration: Family::new_with_constructor(
                duration_histogram as fn() -> Histogram,
            ),
            reconcile_errors: Family::default(),
            workflows_pending: Gauge::default(),
            workflows_watched: Gauge::default(),
            keys_indexed: Gauge::default(),
            key_index_bytes: Gauge::default(),
            leader: Gauge::default(),
            registry: Registry::default(),
            series: Vec::new(),
        };
        let mut r = Registrar {
            registry: &mut registry,
            series: Vec::new(),
        };
        r.counter(
            "objects_deleted",
            "S3 objects deleted",
            None,
            m.objects_deleted.clone(),
        );
        r.counter(
            "reclaimed",
            "Bytes of S3 objects deleted",
            Some(Unit::Bytes),
            m.bytes_reclaimed.clone(),
        );
        r.counter(
            "artifacts_deleted",
            "Artifacts deleted and recorded",
            None,
            m.artifacts_deleted.clone(),
        );
        r.counter(
            "artifacts_failed",
            "Artifacts whose collection failed, by error category",
            None,
            m.artifacts_failed.clone(),
        );
        r.counter(
            "artifacts_kept",
            "Due or settled artifacts kept, by reason",
            None,
            m.artifacts_kept.clone(),
        );
        r.counter(
            "finalizers_removed",
            "Finalizers released; forced by forceFinalizerRemoval or not",
            None,
            m.finalizers_removed.clone(),
        );
        r.histogram(
            "gc_latency",
            "From the workflow's completion or deletion to its artifacts deleted and recorded",
            m.gc_latency.clone(),
        );
        r.histogram(
            "reconcile_duration",
            "Duration of one workflow's reconcile",
            m.reconcile_duration.clone(),
        );
        r.counter(
            "reconcile_errors",
            "Reconciles that ended in an error, by category",
            None,
            m.reconcile_errors.clone(),
        );
        r.gauge(
            "workflows_pending",
            "Workflows queued for a reconcile",
            m.workflows_pending.clone(),
        );
        r.gauge(
            "workflows_watched",
            "Workflows known from the watch",
            m.workflows_watched.clone(),
        );
        r.gauge(
            "keys_indexed",
            "S3 keys of live workflows in the shared-key index",
            m.keys_indexed.clone(),
        );
        r.gauge(
            "key_index_bytes",
            "Bytes held by the shared-key index's sorted runs (its bulk)",
            m.key_index_bytes.clone(),
        );
        r.gauge(
            "leader",
            "1 while this replica leads (or runs without leader election)",
            m.leader.clone(),
        );
        let build = Family::<BuildInfo, Gauge>::default();
        build
            .get_or_create(&BuildInfo {
                version: env!("CARGO_PKG_VERSION").into(),
            })
            .set(1);
        r.gauge("build_info", "Build information", build);
        let series = r.series;
        Self {
            registry,
            series,
            ..m
        }
    }

    /// The OpenMetrics text.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_conventions() {
        let m = Metrics::new();
        let l = NamespaceStrategy {
            namespace: "ns".into(),
            strategy: "OnWorkflowCompletion".into(),
        };
        m.bytes_reclaimed.get_or_create(&l).inc_by(10);
        m.gc_latency
            .get_or_create(&StrategyLabel {
                strategy: "OnWorkflowCompletion".into(),
            })
            .observe(0.2);
        let text = m.encode();
        for name in [
            "artgc_reclaimed_bytes_total{namespace=\"ns\",strategy=\"OnWorkflowCompletion\"} 10",
            "artgc_gc_latency_seconds_count{strategy=\"OnWorkflowCompletion\"} 1",
            "artgc_build_info{version=",
            "artgc_leader 0",
            "# EOF",
        ] {
            assert!(text.contains(name), "{name} missing from\n{text}");
        }
        // Every recorded series name is one the text really uses.
        for series in &m.series {
            let base = series
                .trim_end_matches("_bucket")
                .trim_end_matches("_sum")
                .trim_end_matches("_count");
            if base.starts_with("artgc_gc_latency") || base == "artgc_reclaimed_bytes_total" {
                assert!(text.contains(series.as_str()), "{series} not in\n{text}");
            }
        }
    }
}
