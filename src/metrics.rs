//! The controller's Prometheus metrics, prefix `artgc_`, in its own registry (no global one).
//! Labels are of low cardinality: namespace, strategy, category, reason; never a workflow name.
//! Every label but the namespace is a `&'static str` taken from a closed set (an enum's
//! `as_str`, an error's `category`), so no free text can become a series.

use std::sync::{Arc, OnceLock, Weak};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NamespaceStrategy {
    pub namespace: String,
    pub strategy: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Category {
    pub category: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Reason {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StrategyLabel {
    pub strategy: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NamespaceCategory {
    pub namespace: String,
    pub category: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NamespaceForced {
    pub namespace: String,
    pub forced: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NamespaceLabel {
    pub namespace: String,
}

/// An S3 request attempt: the endpoint (`host:port`, one the policy let artgc reach) and how
/// it ended: `answered` (any answer but those below), `throttled` (429, 503), `failed` (another
/// 5xx, or no answer: network, timeout).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointOutcome {
    pub endpoint: String,
    pub outcome: &'static str,
}

/// S3 request attempts, counted by the store's clients (every retry is one).
pub type S3Requests = Family<EndpointOutcome, Counter>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildInfo {
    pub version: String,
}

/// Times a reconcile into `reconcile_duration` when dropped, labelled with how it ended; one
/// that never says (abandoned on shutdown) is not observed.
pub struct ReconcileTimer<'a> {
    histogram: &'a Family<ResultLabel, Histogram>,
    started: std::time::Instant,
    result: Option<&'static str>,
}

impl<'a> ReconcileTimer<'a> {
    pub fn start(metrics: &'a Metrics) -> Self {
        Self {
            histogram: &metrics.reconcile_duration,
            started: std::time::Instant::now(),
            result: None,
        }
    }

    pub fn ended(&mut self, ok: bool) {
        self.result = Some(if ok { "ok" } else { "error" });
    }
}

impl Drop for ReconcileTimer<'_> {
    fn drop(&mut self) {
        if let Some(result) = self.result {
            self.histogram
                .get_or_create(&ResultLabel { result })
                .observe(self.started.elapsed().as_secs_f64());
        }
    }
}

/// The controller's state as the gauges show it, read at scrape time: nothing sets a gauge as
/// the state changes, so no change can be missed.
#[derive(Debug, Clone, Default)]
pub struct StateSnapshot {
    pub workflows_pending: usize,
    pub workflows_watched: usize,
    pub keys_indexed: usize,
    pub key_index_bytes: usize,
    pub leader: bool,
    /// The watch listed every stream and indexed what it listed.
    pub watch_ready: bool,
    /// How long every watch attempt has failed; 0 while it works.
    pub watch_failing_seconds: f64,
    /// Per namespace, the Workflows being deleted that still hold artgc's finalizer.
    pub waiting: Vec<FinalizerWait>,
    /// The namespaces past their share of the shared-key index.
    pub coarse: Vec<artgc_core::keys::NamespaceShare>,
}

/// A namespace's Workflows waiting on artgc's finalizer (being deleted, the finalizer still on).
#[derive(Debug, Clone, PartialEq)]
pub struct FinalizerWait {
    pub namespace: String,
    pub workflows: usize,
    /// Since the oldest one's deletionTimestamp.
    pub oldest_seconds: f64,
}

/// What the state gauges are read from.
pub trait StateSource: Send + Sync {
    fn snapshot(&self) -> StateSnapshot;
}

/// The state gauges' names and help, in exposition order.
const STATE_GAUGES: [(&str, &str); 5] = [
    ("workflows_pending", "Workflows queued for a reconcile"),
    ("workflows_watched", "Workflows known from the watch"),
    (
        "keys_indexed",
        "S3 keys of live workflows in the shared-key index",
    ),
    (
        "key_index_bytes",
        "Bytes held by the shared-key index's sorted runs (its bulk)",
    ),
    (
        "leader",
        "1 while this replica leads (or runs without leader election)",
    ),
];

#[derive(Clone, Default)]
struct StateCollector {
    source: Arc<OnceLock<Weak<dyn StateSource>>>,
}

impl std::fmt::Debug for StateCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StateCollector")
    }
}

impl Collector for StateCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = self
            .source
            .get()
            .and_then(Weak::upgrade)
            .map(|s| s.snapshot())
            .unwrap_or_default();
        let values = [
            s.workflows_pending,
            s.workflows_watched,
            s.keys_indexed,
            s.key_index_bytes,
            usize::from(s.leader),
        ];
        for ((name, help), value) in STATE_GAUGES.into_iter().zip(values) {
            let gauge = ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX));
            let metric = encoder.encode_descriptor(name, help, None, gauge.metric_type())?;
            gauge.encode(metric)?;
        }
        let gauge = ConstGauge::new(i64::from(s.watch_ready));
        let metric = encoder.encode_descriptor(
            "watch_ready",
            "1 once the watch listed every watched namespace and indexed what it listed",
            None,
            gauge.metric_type(),
        )?;
        gauge.encode(metric)?;
        let gauge = ConstGauge::new(s.watch_failing_seconds);
        let metric = encoder.encode_descriptor(
            "watch_failing",
            "How long every attempt of the Workflow watch has failed; 0 while it works",
            Some(&Unit::Seconds),
            gauge.metric_type(),
        )?;
        gauge.encode(metric)?;
        // Per namespace, only where some Workflow waits (or the index share is full): no series
        // lingers for a namespace whose Workflows are gone.
        let count = |n: usize| ConstGauge::new(i64::try_from(n).unwrap_or(i64::MAX));
        per_namespace(
            &mut encoder,
            (
                "finalizer_waiting_workflows",
                "Workflows being deleted that still hold artgc's finalizer, by namespace",
                None,
            ),
            s.waiting.iter().map(|w| (&w.namespace, count(w.workflows))),
        )?;
        per_namespace(
            &mut encoder,
            (
                "finalizer_oldest_wait",
                "Since the deletionTimestamp of the namespace's oldest Workflow waiting on artgc's finalizer",
                Some(&Unit::Seconds),
            ),
            s.waiting
                .iter()
                .map(|w| (&w.namespace, ConstGauge::new(w.oldest_seconds))),
        )?;
        per_namespace(
            &mut encoder,
            (
                "index_coarse_workflows",
                "Workflows whose keys the shared-key index holds as coarser folders because their namespace reached --index-keys-per-namespace, by namespace",
                None,
            ),
            s.coarse
                .iter()
                .map(|c| (&c.namespace, count(c.coarse_workflows))),
        )?;
        per_namespace(
            &mut encoder,
            (
                "index_namespace_keys",
                "Shared-key index entries held by a namespace whose share is full, by namespace",
                None,
            ),
            s.coarse.iter().map(|c| (&c.namespace, count(c.entries))),
        )?;
        Ok(())
    }
}

/// One gauge family labelled by namespace: `(name, help, unit)` and each namespace's value.
fn per_namespace<'a, N: prometheus_client::encoding::EncodeGaugeValue + 'a>(
    encoder: &mut DescriptorEncoder,
    (name, help, unit): (&str, &str, Option<&Unit>),
    values: impl Iterator<Item = (&'a String, ConstGauge<N>)>,
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(
        name,
        help,
        unit,
        prometheus_client::metrics::MetricType::Gauge,
    )?;
    for (namespace, gauge) in values {
        let labels = NamespaceLabel {
            namespace: namespace.clone(),
        };
        gauge.encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

/// The strategies whose artifacts are collected (and counted).
const COLLECTED: [artgc_core::plan::Strategy; 2] = [
    artgc_core::plan::Strategy::OnWorkflowCompletion,
    artgc_core::plan::Strategy::OnWorkflowDeletion,
];

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
    pub bytes_hidden: Family<NamespaceStrategy, Counter>,
    pub artifacts_deleted: Family<NamespaceStrategy, Counter>,
    pub artifacts_failed: Family<NamespaceCategory, Counter>,
    pub artifacts_kept: Family<Reason, Counter>,
    pub finalizers_removed: Family<NamespaceForced, Counter>,
    pub s3_requests: S3Requests,
    pub gc_latency: Family<StrategyLabel, Histogram>,
    pub reconcile_duration: Family<ResultLabel, Histogram>,
    pub reconcile_errors: Family<Category, Counter>,
    /// The controller's state gauges, read when scraped.
    state: StateCollector,
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
            bytes_hidden: Family::default(),
            artifacts_deleted: Family::default(),
            artifacts_failed: Family::default(),
            artifacts_kept: Family::default(),
            finalizers_removed: Family::default(),
            s3_requests: Family::default(),
            gc_latency: Family::new_with_constructor(latency_histogram as fn() -> Histogram),
            reconcile_duration: Family::new_with_constructor(
                duration_histogram as fn() -> Histogram,
            ),
            reconcile_errors: Family::default(),
            state: StateCollector::default(),
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
            "Bytes freed in S3: objects deleted from unversioned buckets, versions deleted from versioned ones",
            Some(Unit::Bytes),
            m.bytes_reclaimed.clone(),
        );
        r.counter(
            "hidden",
            "Bytes deleted in name only: behind delete markers in versioned buckets, still stored",
            Some(Unit::Bytes),
            m.bytes_hidden.clone(),
        );
        r.counter(
            "artifacts_deleted",
            "Artifacts deleted and recorded",
            None,
            m.artifacts_deleted.clone(),
        );
        r.counter(
            "artifacts_failed",
            "Artifacts whose collection failed, by namespace and error category",
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
            "Finalizers released, by namespace; forced by forceFinalizerRemoval or not",
            None,
            m.finalizers_removed.clone(),
        );
        r.counter(
            "s3_requests",
            "S3 request attempts (each retry counts), by endpoint and outcome: answered, throttled, failed",
            None,
            m.s3_requests.clone(),
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
            "Reconciles that ended in an error of artgc's own (Kubernetes API, status write, internal), by category; artifact failures are artifacts_failed",
            None,
            m.reconcile_errors.clone(),
        );
        for (name, _) in STATE_GAUGES {
            r.series.push(format!("artgc_{name}"));
        }
        for name in [
            "watch_ready",
            "watch_failing_seconds",
            "finalizer_waiting_workflows",
            "finalizer_oldest_wait_seconds",
            "index_coarse_workflows",
            "index_namespace_keys",
        ] {
            r.series.push(format!("artgc_{name}"));
        }
        r.registry.register_collector(Box::new(m.state.clone()));
        let build = Family::<BuildInfo, Gauge>::default();
        build
            .get_or_create(&BuildInfo {
                version: env!("CARGO_PKG_VERSION").into(),
            })
            .set(1);
        r.gauge("build_info", "Build information", build);
        let series = r.series;
        // Series of closed label sets exist from the start at 0: a series that first appears
        // with its value already counted is lost to rate() and increase() (the first GC
        // latency observed would give a quantile of NaN).
        for strategy in COLLECTED {
            drop(m.gc_latency.get_or_create(&StrategyLabel {
                strategy: strategy.as_str(),
            }));
        }
        for result in ["ok", "error"] {
            drop(m.reconcile_duration.get_or_create(&ResultLabel { result }));
        }
        Self {
            registry,
            series,
            ..m
        }
    }

    /// A namespace's Workflows are watched: its reclaim counters exist from now on, at 0, so
    /// that its first collection shows in increase() and rate().
    pub fn namespace_seen(&self, namespace: &str) {
        for strategy in COLLECTED {
            let l = NamespaceStrategy {
                namespace: namespace.to_string(),
                strategy: strategy.as_str(),
            };
            drop(self.artifacts_deleted.get_or_create(&l));
            drop(self.objects_deleted.get_or_create(&l));
            drop(self.bytes_reclaimed.get_or_create(&l));
            drop(self.bytes_hidden.get_or_create(&l));
        }
    }

    /// Where the state gauges are read from from now on (the controller, once started); they
    /// read 0 before and after it.
    pub fn observe_state(&self, source: Weak<dyn StateSource>) {
        let _ = self.state.source.set(source);
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
            strategy: "OnWorkflowCompletion",
        };
        m.bytes_reclaimed.get_or_create(&l).inc_by(10);
        m.gc_latency
            .get_or_create(&StrategyLabel {
                strategy: "OnWorkflowCompletion",
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

    struct Fixed(StateSnapshot);

    impl StateSource for Fixed {
        fn snapshot(&self) -> StateSnapshot {
            self.0.clone()
        }
    }

    /// The state gauges show the source as it is at the scrape, and 0 once it is gone.
    #[test]
    fn state_gauges_are_read_from_the_source_when_scraped() {
        let m = Metrics::new();
        let source: Arc<dyn StateSource> = Arc::new(Fixed(StateSnapshot {
            workflows_pending: 3,
            workflows_watched: 7,
            keys_indexed: 11,
            key_index_bytes: 64,
            leader: true,
            watch_ready: true,
            watch_failing_seconds: 2.5,
            waiting: vec![FinalizerWait {
                namespace: "team-a".into(),
                workflows: 2,
                oldest_seconds: 90.5,
            }],
            coarse: vec![artgc_core::keys::NamespaceShare {
                namespace: "team-b".into(),
                entries: 100,
                coarse_workflows: 4,
            }],
        }));
        m.observe_state(Arc::downgrade(&source));
        let text = m.encode();
        for line in [
            "artgc_workflows_pending 3",
            "artgc_workflows_watched 7",
            "artgc_keys_indexed 11",
            "artgc_key_index_bytes 64",
            "artgc_leader 1",
            "# HELP artgc_leader 1 while this replica leads",
            "# TYPE artgc_workflows_pending gauge",
            "artgc_watch_ready 1",
            "artgc_watch_failing_seconds 2.5",
            "# UNIT artgc_watch_failing_seconds seconds",
            "artgc_finalizer_waiting_workflows{namespace=\"team-a\"} 2",
            "artgc_finalizer_oldest_wait_seconds{namespace=\"team-a\"} 90.5",
            "artgc_index_coarse_workflows{namespace=\"team-b\"} 4",
            "artgc_index_namespace_keys{namespace=\"team-b\"} 100",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
        for series in ["artgc_workflows_pending", "artgc_leader"] {
            assert!(m.series.iter().any(|s| s == series), "{series}");
        }
        drop(source);
        let text = m.encode();
        assert!(text.contains("artgc_workflows_watched 0"));
        // No waiting workflow, no per-namespace series: none lingers.
        assert!(
            !text.contains("artgc_finalizer_oldest_wait_seconds{"),
            "{text}"
        );
    }
}
