//! The operator's metrics and the HTTP endpoint of `kubervisor run --addr`:
//! `/metrics`, `/live` and `/ready`.
//!
//! Series exposed (sample names as they appear in the text output; prometheus-client
//! appends `_total` to every counter, as the exposition formats expect):
//!
//! | sample name | type | labels |
//! |---|---|---|
//! | `kubervisor_breaker_gauge` | gauge | `name`, `namespace`, `type` (managed, breaked, paused, unknown) |
//! | `kubervisor_item_gauge` | gauge | `namespace` |
//! | `kubervisor_breaker_count_total` | counter | `breaker`, `namespace`, `pod`, `type` (break, activate, pause, kill, `dryrun_*`); removed 10 min after the pod is gone |
//! | `kubervisor_reconcile_duration_seconds_{bucket,sum,count}` | histogram | `namespace`, `name` |
//! | `kubervisor_reconcile_errors_total` | counter | `namespace`, `name`, `reason` |
//! | `kubervisor_source_query_duration_seconds_{bucket,sum,count}` | histogram | `source` (prometheus, custom) |
//! | `kubervisor_source_errors_total` | counter | `source`, `kind` |
//! | `kubervisor_pod_writes_total` | counter | `verb` (patch, delete), `outcome` (ok, conflict, error) |
//! | `kubervisor_breaker_evaluations_total` | counter | `outcome` (ok, source_error) |
//! | `kubervisor_breaker_act_duration_seconds_{bucket,sum,count}` | histogram | (none): from the source's answer to the last write acknowledged |

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

use crate::labels::share;

/// Content type of the OpenMetrics text format, served to scrapers that ask for it.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// Content type of the classic Prometheus text format, served to everyone else.
pub const PROMETHEUS_TEXT_CONTENT_TYPE: &str =
    prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// The pod states counted per KubervisorService by `kubervisor_breaker_gauge`.
const POD_STATES: [&str; 4] = ["managed", "breaked", "paused", "unknown"];

// The series kept per KubervisorService hold its namespace and name as strings shared
// with one another ([`crate::labels::share`]): a dozen series per resource would
// otherwise hold a dozen copies of each.

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServicePodsLabels {
    name: Arc<str>,
    namespace: Arc<str>,
    r#type: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NamespaceLabels {
    namespace: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DecisionLabels {
    breaker: String,
    namespace: String,
    pod: String,
    r#type: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReconcileLabels {
    namespace: Arc<str>,
    name: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReconcileErrorLabels {
    namespace: Arc<str>,
    name: Arc<str>,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabels {
    source: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceErrorLabels {
    source: String,
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PodWriteLabels {
    verb: String,
    outcome: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// A KubervisorService's namespace and name, shared with its series' labels.
type ResourceKey = (Arc<str>, Arc<str>);

/// Buckets from 5 ms to about 10 s: a reconcile or a PromQL query slower than that is an outage.
fn duration_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.005, 2.0, 12))
}

/// Which text format `/metrics` answers in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// OpenMetrics 1.0 text, ending with `# EOF`.
    OpenMetrics,
    /// Prometheus text format 0.0.4.
    PrometheusText,
}

impl Format {
    /// The `Content-Type` header value of this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::OpenMetrics => OPENMETRICS_CONTENT_TYPE,
            Format::PrometheusText => PROMETHEUS_TEXT_CONTENT_TYPE,
        }
    }

    /// OpenMetrics when the `Accept` header names it (Prometheus does by default), the
    /// classic text format otherwise, which every scraper and `curl` user can read.
    pub fn negotiate(accept: Option<&str>) -> Format {
        match accept {
            Some(a) if a.contains("application/openmetrics-text") => Format::OpenMetrics,
            _ => Format::PrometheusText,
        }
    }
}

/// The operator's metrics. Every method takes `&self` and is safe to call from any task.
pub struct Metrics {
    registry: Registry,
    /// `kubervisor_breaker_gauge` and the breaker gauges.
    gauges: Arc<ResourceGauges>,
    item_gauge: Family<NamespaceLabels, Gauge>,
    breaker_count: Family<DecisionLabels, Counter>,
    reconcile_duration: HistogramFamily<ReconcileLabels>,
    reconcile_errors: Family<ReconcileErrorLabels, Counter>,
    source_duration: HistogramFamily<SourceLabels>,
    source_errors: Family<SourceErrorLabels, Counter>,
    pod_writes: Family<PodWriteLabels, Counter>,
    evaluations: Family<OutcomeLabels, Counter>,
    act_duration: Histogram,
    /// Per pod (namespace, name): its decision counters' label sets, and since when the
    /// pod has been seen gone.
    decided_pods: std::sync::Mutex<HashMap<(String, String), DecidedPod>>,
    leading: Gauge,
}

/// How long a pod's decision counters outlive the pod by default (`--pod-metrics-retention`): long enough for every scrape
/// (and `increase()` over it) to see their last value, short enough that pods replaced
/// all day (rolling updates, kills) do not grow the series for ever.
pub const DECISIONS_KEPT_AFTER_POD: Duration = Duration::from_secs(600);

#[derive(Default)]
struct DecidedPod {
    series: HashSet<DecisionLabels>,
    gone_since: Option<std::time::Instant>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BreakerLabels {
    namespace: Arc<str>,
    name: Arc<str>,
    breaker: Arc<str>,
}

/// What one breaker's last evaluation found, as gauges.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BreakerState {
    pub anomalous: u32,
    pub spared_by_floor: u32,
    pub panic: bool,
    pub source_failing: bool,
}

/// The breaker gauges: name and help, in `breaker_state`'s order.
const BREAKER_STATE_SERIES: [(&str, &str); 4] = [
    (
        "kubervisor_breaker_anomalous_pods",
        "Pods the breaker's last evaluation found anomalous",
    ),
    (
        "kubervisor_breaker_spared_pods",
        "Anomalous pods the breaker's last evaluation left in traffic because of the floor",
    ),
    (
        "kubervisor_breaker_panic",
        "1 while the breaker is in panic (too few healthy pods: it ejects nothing)",
    ),
    (
        "kubervisor_breaker_source_failing",
        "1 while the breaker's last query to its source failed (it ejects nothing)",
    ),
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: String,
}

/// The gauges of each KubervisorService, its pod counts and its breakers' last
/// evaluations, kept as plain numbers per resource and written out at each scrape. A
/// family of gauges holds each series behind an allocation and a hash entry of its own:
/// with a dozen series per resource, that was 1.8 KiB a resource (heap profile at 10,000
/// pods, `BENCHMARKS.md`).
#[derive(Debug, Default)]
struct ResourceGauges(std::sync::Mutex<BTreeMap<ResourceKey, ResourceValues>>);

#[derive(Debug, Default)]
struct ResourceValues {
    /// managed, breaked, paused, unknown ([`POD_STATES`]); `None` until first set.
    pods: Option<[i64; 4]>,
    /// Each breaker's last evaluation, in the order first set.
    breakers: Vec<(Arc<str>, BreakerState)>,
}

impl BreakerState {
    /// The values of [`BREAKER_STATE_SERIES`], in its order.
    fn values(self) -> [i64; 4] {
        [
            i64::from(self.anomalous),
            i64::from(self.spared_by_floor),
            i64::from(self.panic),
            i64::from(self.source_failing),
        ]
    }
}

impl ResourceGauges {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<ResourceKey, ResourceValues>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Collector for ResourceGauges {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let resources = self.lock();
        let mut family = encoder.encode_descriptor(
            "kubervisor_breaker_gauge",
            BREAKER_GAUGE_HELP,
            None,
            MetricType::Gauge,
        )?;
        for ((namespace, name), values) in resources.iter() {
            for (state, count) in POD_STATES.into_iter().zip(values.pods.iter().flatten()) {
                let labels = ServicePodsLabels {
                    name: name.clone(),
                    namespace: namespace.clone(),
                    r#type: state,
                };
                ConstGauge::new(*count).encode(family.encode_family(&labels)?)?;
            }
        }
        for (i, (series, help)) in BREAKER_STATE_SERIES.into_iter().enumerate() {
            let mut family = encoder.encode_descriptor(series, help, None, MetricType::Gauge)?;
            for ((namespace, name), values) in resources.iter() {
                for (breaker, state) in &values.breakers {
                    let labels = BreakerLabels {
                        namespace: namespace.clone(),
                        name: name.clone(),
                        breaker: breaker.clone(),
                    };
                    ConstGauge::new(state.values()[i]).encode(family.encode_family(&labels)?)?;
                }
            }
        }
        Ok(())
    }
}

const BREAKER_GAUGE_HELP: &str =
    "Pods of a KubervisorService by state (managed, breaked, paused, unknown)";

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Gauges take i64; counts beyond that cannot happen, so saturate rather than fail.
fn gauge_value(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl Metrics {
    /// A registry with every series of the operator registered and empty.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let gauges = Arc::new(ResourceGauges::default());
        registry.register_collector(Box::new(gauges.clone()));
        let item_gauge = Family::default();
        registry.register(
            "kubervisor_item_gauge",
            "KubervisorServices handled per namespace",
            item_gauge.clone(),
        );
        let breaker_count = Family::default();
        registry.register(
            "kubervisor_breaker_count",
            "Decisions taken on pods by breakers and activators; dryrun_ kinds were not applied",
            breaker_count.clone(),
        );
        let reconcile_duration: HistogramFamily<ReconcileLabels> =
            Family::new_with_constructor(duration_histogram);
        registry.register(
            "kubervisor_reconcile_duration_seconds",
            "Duration of one reconcile of a KubervisorService",
            reconcile_duration.clone(),
        );
        let reconcile_errors = Family::default();
        registry.register(
            "kubervisor_reconcile_errors",
            "Reconciles of a KubervisorService that failed, by reason",
            reconcile_errors.clone(),
        );
        let source_duration: HistogramFamily<SourceLabels> =
            Family::new_with_constructor(duration_histogram);
        registry.register(
            "kubervisor_source_query_duration_seconds",
            "Duration of one query to a metric source (prometheus, custom)",
            source_duration.clone(),
        );
        let source_errors = Family::default();
        registry.register(
            "kubervisor_source_errors",
            "Failed queries to a metric source, by kind of failure",
            source_errors.clone(),
        );
        let evaluations = Family::default();
        registry.register(
            "kubervisor_breaker_evaluations",
            "Breaker evaluations, by outcome (ok, source_error)",
            evaluations.clone(),
        );
        let act_duration = Histogram::new(exponential_buckets(0.0005, 2.0, 14));
        registry.register(
            "kubervisor_breaker_act_duration_seconds",
            "Time inside the operator from a source's answer to the last pod write acknowledged",
            act_duration.clone(),
        );
        let pod_writes = Family::default();
        registry.register(
            "kubervisor_pod_writes",
            "Writes to pods by verb (patch, delete) and outcome (ok, conflict, error)",
            pod_writes.clone(),
        );
        let leading = Gauge::default();
        registry.register(
            "kubervisor_leading",
            "1 while this replica acts: it holds the Lease, or runs without leader election",
            leading.clone(),
        );
        Metrics {
            registry,
            gauges,
            decided_pods: Default::default(),
            leading,
            item_gauge,
            breaker_count,
            reconcile_duration,
            reconcile_errors,
            source_duration,
            source_errors,
            pod_writes,
            evaluations,
            act_duration,
        }
    }

    /// Sets the pod counts of one KubervisorService.
    pub fn set_pod_counts(
        &self,
        namespace: &str,
        name: &str,
        managed: usize,
        breaked: usize,
        paused: usize,
        unknown: usize,
    ) {
        let counts = [managed, breaked, paused, unknown].map(gauge_value);
        let mut resources = self.gauges.lock();
        resources
            .entry((share(namespace), share(name)))
            .or_default()
            .pods = Some(counts);
    }

    /// Removes the gauge series of a KubervisorService that is gone; counters and
    /// histograms stay, since they are cumulative and rates over them remain true.
    pub fn forget(&self, namespace: &str, name: &str) {
        let mut resources = self.gauges.lock();
        resources.remove(&(Arc::from(namespace), Arc::from(name)));
    }

    /// Sets the gauges of one breaker's last evaluation.
    pub fn set_breaker_state(
        &self,
        namespace: &str,
        name: &str,
        breaker: &str,
        state: BreakerState,
    ) {
        let mut resources = self.gauges.lock();
        let breakers = &mut resources
            .entry((share(namespace), share(name)))
            .or_default()
            .breakers;
        match breakers.iter_mut().find(|(b, _)| **b == *breaker) {
            Some((_, kept)) => *kept = state,
            None => {
                breakers.reserve_exact(1);
                breakers.push((share(breaker), state));
            }
        }
    }

    /// Whether this replica acts now.
    pub fn set_leading(&self, leading: bool) {
        self.leading.set(i64::from(leading));
    }

    /// Sets the number of KubervisorServices handled in `namespace`.
    pub fn set_items(&self, namespace: &str, count: usize) {
        self.item_gauge
            .get_or_create(&NamespaceLabels {
                namespace: namespace.to_owned(),
            })
            .set(gauge_value(count));
    }

    /// Counts one decision on a pod: `kind` is `break`, `activate`, `pause`, `kill`, or a
    /// `dryrun_` variant of them.
    pub fn count_decision(&self, breaker: &str, namespace: &str, pod: &str, kind: &str) {
        let labels = DecisionLabels {
            breaker: breaker.to_owned(),
            namespace: namespace.to_owned(),
            pod: pod.to_owned(),
            r#type: kind.to_owned(),
        };
        self.breaker_count.get_or_create(&labels).inc();
        let mut decided = self
            .decided_pods
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let entry = decided
            .entry((namespace.to_owned(), pod.to_owned()))
            .or_default();
        entry.gone_since = None;
        entry.series.insert(labels);
    }

    /// Removes the decision counters of pods gone for `keep` (by default
    /// [`DECISIONS_KEPT_AFTER_POD`]); `exists` tells whether a pod (namespace, name) is
    /// still in the cluster.
    pub fn forget_gone_pods(
        &self,
        exists: impl Fn(&str, &str) -> bool,
        keep: Duration,
        now: std::time::Instant,
    ) {
        let mut decided = self
            .decided_pods
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        decided.retain(|(namespace, pod), entry| {
            if exists(namespace, pod) {
                entry.gone_since = None;
                return true;
            }
            let since = *entry.gone_since.get_or_insert(now);
            if now.saturating_duration_since(since) < keep {
                return true;
            }
            for labels in &entry.series {
                self.breaker_count.remove(labels);
            }
            false
        });
    }

    /// Records one reconcile of a KubervisorService and, when it failed, why.
    pub fn observe_reconcile(
        &self,
        namespace: &str,
        name: &str,
        took: Duration,
        error_reason: Option<&str>,
    ) {
        self.reconcile_duration
            .get_or_create(&ReconcileLabels {
                namespace: share(namespace),
                name: share(name),
            })
            .observe(took.as_secs_f64());
        if let Some(reason) = error_reason {
            self.reconcile_errors
                .get_or_create(&ReconcileErrorLabels {
                    namespace: share(namespace),
                    name: share(name),
                    reason: reason.to_owned(),
                })
                .inc();
        }
    }

    /// Records one query to a metric source and, when it failed, the kind of failure.
    /// Counts one breaker evaluation and, when it succeeded, the time spent acting on it.
    pub fn observe_evaluation(&self, acted_in: Option<Duration>) {
        let outcome = if acted_in.is_some() {
            "ok"
        } else {
            "source_error"
        };
        self.evaluations
            .get_or_create(&OutcomeLabels {
                outcome: outcome.to_owned(),
            })
            .inc();
        if let Some(took) = acted_in {
            self.act_duration.observe(took.as_secs_f64());
        }
    }

    pub fn observe_source(&self, source: &str, took: Duration, error_kind: Option<&str>) {
        self.source_duration
            .get_or_create(&SourceLabels {
                source: source.to_owned(),
            })
            .observe(took.as_secs_f64());
        if let Some(kind) = error_kind {
            self.source_errors
                .get_or_create(&SourceErrorLabels {
                    source: source.to_owned(),
                    kind: kind.to_owned(),
                })
                .inc();
        }
    }

    /// Counts one write to a pod: `verb` is `patch` or `delete`, `outcome` is `ok`,
    /// `conflict` or `error`.
    pub fn count_pod_write(&self, verb: &str, outcome: &str) {
        self.pod_writes
            .get_or_create(&PodWriteLabels {
                verb: verb.to_owned(),
                outcome: outcome.to_owned(),
            })
            .inc();
    }

    /// Every series in the OpenMetrics text format.
    pub fn encode(&self) -> String {
        self.encode_as(Format::OpenMetrics)
    }

    /// Every series in the given text format.
    pub fn encode_as(&self, format: Format) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail; an error would only come from a metric's own encoder.
        let written = match format {
            Format::OpenMetrics => {
                prometheus_client::encoding::text::encode(&mut out, &self.registry)
            }
            Format::PrometheusText => {
                prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)
            }
        };
        if let Err(e) = written {
            tracing::error!(error = %e, "encoding metrics failed");
        }
        out
    }
}

/// What `/live` and `/ready` report, set by the rest of the operator.
#[derive(Debug, Default)]
pub struct Health {
    caches_synced: AtomicBool,
    election_enabled: AtomicBool,
    leading: AtomicBool,
}

impl Health {
    /// Not synced, no leader election, not leading.
    pub fn new() -> Self {
        Self::default()
    }

    /// Marks the watch caches as filled (or, after a lost watch, no longer).
    pub fn set_caches_synced(&self, synced: bool) {
        self.caches_synced.store(synced, Ordering::Release);
    }

    /// Whether this replica takes part in leader election.
    pub fn set_election_enabled(&self, enabled: bool) {
        self.election_enabled.store(enabled, Ordering::Release);
    }

    /// Whether this replica currently holds the leader lease.
    pub fn set_leading(&self, leading: bool) {
        self.leading.store(leading, Ordering::Release);
    }

    /// Whether the watch caches are filled.
    pub fn caches_synced(&self) -> bool {
        self.caches_synced.load(Ordering::Acquire)
    }

    /// Whether this replica takes part in leader election.
    pub fn election_enabled(&self) -> bool {
        self.election_enabled.load(Ordering::Acquire)
    }

    /// Whether this replica holds the leader lease.
    pub fn leading(&self) -> bool {
        self.leading.load(Ordering::Acquire)
    }

    /// `Ok(role)` when ready to serve, `Err(reason)` otherwise. A standby replica is
    /// ready: readiness gates traffic to the endpoint, not leadership.
    pub fn readiness(&self) -> Result<&'static str, &'static str> {
        if !self.caches_synced() {
            return Err("caches not synced");
        }
        Ok(match (self.election_enabled(), self.leading()) {
            (false, _) => "ok",
            (true, true) => "ok: leader",
            (true, false) => "ok: standby",
        })
    }
}

#[derive(Clone)]
struct Endpoint {
    metrics: Arc<Metrics>,
    health: Arc<Health>,
}

/// The routes of the endpoint, for embedding or for tests without a socket.
pub fn router(metrics: Arc<Metrics>, health: Arc<Health>) -> Router {
    Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/live", get(live_handler))
        .route("/ready", get(ready_handler))
        .fallback(not_found)
        .with_state(Endpoint { metrics, health })
}

async fn metrics_handler(State(endpoint): State<Endpoint>, headers: HeaderMap) -> Response {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let format = Format::negotiate(accept);
    let body = endpoint.metrics.encode_as(format);
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static(format.content_type()),
        )],
        body,
    )
        .into_response()
}

async fn live_handler() -> &'static str {
    "ok\n"
}

async fn ready_handler(State(endpoint): State<Endpoint>) -> Response {
    match endpoint.health.readiness() {
        Ok(role) => (StatusCode::OK, format!("{role}\n")).into_response(),
        Err(reason) => (StatusCode::SERVICE_UNAVAILABLE, format!("{reason}\n")).into_response(),
    }
}

async fn not_found() -> (StatusCode, &'static str) {
    (StatusCode::NOT_FOUND, "not found\n")
}

/// Serves the endpoint on `listener` until `shutdown` completes, then finishes the
/// requests in flight.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "serving /metrics, /live and /ready");
    }
    axum::serve(listener, router(metrics, health))
        .with_graceful_shutdown(shutdown)
        .await
}

/// The endpoint's address could not be bound.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr}{hint}")]
pub struct BindError {
    pub addr: SocketAddr,
    hint: &'static str,
    #[source]
    pub source: std::io::Error,
}

/// Binds the endpoint's listener, with an error that names the address.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, BindError> {
    TcpListener::bind(addr).await.map_err(|source| BindError {
        addr,
        hint: match source.kind() {
            std::io::ErrorKind::AddrInUse => {
                " (already in use: another process listens there; choose another with --addr)"
            }
            _ => "",
        },
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gone_pods_decision_counters_are_removed_after_the_retention() {
        let metrics = Metrics::new();
        metrics.count_decision("errors", "shop", "web-1", "break");
        metrics.count_decision("errors", "shop", "web-2", "break");
        metrics.count_decision("errors", "shop", "web-2", "activate");
        let series = |pod: &str| {
            metrics
                .encode()
                .lines()
                .filter(|l| {
                    l.starts_with("kubervisor_breaker_count_total")
                        && l.contains(&format!("pod=\"{pod}\""))
                })
                .count()
        };
        assert_eq!((series("web-1"), series("web-2")), (1, 2));
        let only_web_1 = |_: &str, pod: &str| pod == "web-1";
        let t0 = std::time::Instant::now();
        metrics.forget_gone_pods(only_web_1, DECISIONS_KEPT_AFTER_POD, t0);
        metrics.forget_gone_pods(
            only_web_1,
            DECISIONS_KEPT_AFTER_POD,
            t0 + DECISIONS_KEPT_AFTER_POD / 2,
        );
        assert_eq!(
            series("web-2"),
            2,
            "kept while scrapes may not have seen the last value"
        );
        metrics.forget_gone_pods(
            only_web_1,
            DECISIONS_KEPT_AFTER_POD,
            t0 + DECISIONS_KEPT_AFTER_POD,
        );
        assert_eq!((series("web-1"), series("web-2")), (1, 0));
        // A pod decided on again is counted from scratch, and kept while it exists.
        metrics.count_decision("errors", "shop", "web-2", "break");
        metrics.forget_gone_pods(
            |_, _| true,
            DECISIONS_KEPT_AFTER_POD,
            t0 + 3 * DECISIONS_KEPT_AFTER_POD,
        );
        assert_eq!(series("web-2"), 1);
    }
}
