use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Which Service Kubervisor guards, how it detects anomalous pods and how it brings them back.
// The printer columns repeat `type_`, which this lint mistakes for a duplicated attribute.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "kubervisor.k8s.io",
    version = "v1alpha1",
    kind = "KubervisorService",
    plural = "kubervisorservices",
    singular = "kubervisorservice",
    shortname = "kvs",
    namespaced,
    status = "KubervisorServiceStatus",
    derive = "PartialEq",
    doc = "KubervisorService takes anomalous pods of a Service out of its traffic, never below a minimum.",
    annotation(
        "api-approved.kubernetes.io",
        "unapproved, the group name is kept for compatibility with existing KubervisorService manifests"
    ),
    printcolumn(name = "Service", type_ = "string", json_path = ".spec.service"),
    printcolumn(
        name = "State",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason"
    ),
    printcolumn(
        name = "Managed",
        type_ = "integer",
        json_path = ".status.podCount.nbPodsManaged"
    ),
    printcolumn(
        name = "Broken",
        type_ = "integer",
        json_path = ".status.podCount.nbPodsBreaked"
    ),
    printcolumn(
        name = "Paused",
        type_ = "integer",
        json_path = ".status.podCount.nbPodsPaused"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct KubervisorServiceSpec {
    /// Name of the Service, in the same namespace, whose pods are guarded.
    #[serde(default)]
    pub service: String,
    /// Anomaly detections; each runs on its own evaluation period.
    #[serde(default)]
    pub breakers: Vec<BreakerStrategy>,
    /// How ejected pods come back, for breakers without an activator of their own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_activator: Option<ActivatorStrategy>,
    /// Compute and report every decision, but never patch or delete a pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dry_run: Option<bool>,
    /// How a pod is taken out of traffic: `label` (the Service selects
    /// `kubervisor/traffic: yes`) or `readinessGate` (the pod condition
    /// `kubervisor.k8s.io/traffic`, for pods that declare it as a readiness gate).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic_control: Option<TrafficControl>,
}

/// How Kubervisor takes a pod out of traffic.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum TrafficControl {
    /// Relabel `kubervisor/traffic` from `yes` to `no`; the Service selects `yes`.
    #[default]
    Label,
    /// Set the pod condition `kubervisor.k8s.io/traffic` to `False`: the pod turns unready
    /// and leaves every Service, Ingress and load balancer that follows readiness.
    ReadinessGate,
}

impl TrafficControl {
    /// The name used in manifests.
    pub fn as_str(self) -> &'static str {
        match self {
            TrafficControl::Label => "label",
            TrafficControl::ReadinessGate => "readinessGate",
        }
    }
}

/// One anomaly detection and the protection that bounds what it may eject.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BreakerStrategy {
    /// Name of the breaker, a DNS-1035 label, unique within the resource.
    #[serde(default)]
    pub name: String,
    /// Seconds between two evaluations (default 5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evaluation_period: Option<f64>,
    /// Never leave fewer pods than this with traffic (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_pods_available_count: Option<u32>,
    /// Never leave fewer than this percentage of the Ready managed pods with traffic (default 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_pods_available_ratio: Option<u32>,
    /// Judge pods by the share of a discrete value (such as an HTTP code) outside a list.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discrete_value_out_of_list: Option<Box<DiscreteValueOutOfList>>,
    /// Judge pods by how far a continuous value deviates from the fleet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub continuous_value_deviation: Option<Box<ContinuousValueDeviation>>,
    /// Ask an HTTP service (`host[:port][/path]` or a URL) which pods are anomalous.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom_service: Option<String>,
    /// Judge each pod's value against fixed bounds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_threshold: Option<Box<ValueThreshold>>,
    /// Judge the slope of each pod's value over a time window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_trend: Option<Box<ValueTrend>>,
    /// Judge each pod's success rate against the fleet's, as Envoy's outlier detection does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub success_rate_outlier: Option<Box<SuccessRateOutlier>>,
    /// Judge each pod's raw value against the fleet's by the modified z-score.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub continuous_outlier: Option<Box<ContinuousOutlier>>,
    /// How the pods this breaker ejected come back (default: the resource's defaultActivator).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub activator: Option<ActivatorStrategy>,
    /// When fewer than this percentage of the judged pods are healthy, the problem is taken
    /// to be fleet-wide (or the detector broken) and nothing is ejected (default 0: off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub panic_threshold_percent: Option<u32>,
    /// Pods ejected at most per evaluation, worst first (default: no limit but the floor).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ejections_per_evaluation: Option<u32>,
    /// Report this breaker's decisions without carrying them out (default false).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dry_run: Option<bool>,
}

/// A PromQL query whose series carry a pod name label and a discrete value label.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DiscreteValueOutOfList {
    /// Prometheus to query: `host:port` (meaning http://) or a full URL.
    #[serde(default)]
    pub prometheus_service: String,
    /// Query returning one series per pod and discrete value, e.g. requests by code.
    #[serde(default, rename = "promQL")]
    pub prom_ql: String,
    /// Label holding the discrete value (for example `code`).
    #[serde(default)]
    pub key: String,
    /// Label holding the pod name.
    #[serde(default, rename = "podNamekey")]
    pub pod_name_key: String,
    /// Values that count as good; everything else is bad.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub good_values: Vec<String>,
    /// Values that count as bad; everything else is good.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bad_values: Vec<String>,
    /// Percentage of bad values above which a pod is anomalous (default 50).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tolerance: Option<u32>,
    /// Pods with fewer observations than this are not judged (default 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_activity: Option<u32>,
}

/// A PromQL query giving, per pod, its value relative to the fleet (1.0 means no deviation).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ContinuousValueDeviation {
    /// Prometheus to query: `host:port` (meaning http://) or a full URL.
    #[serde(default)]
    pub prometheus_service: String,
    /// Query returning one series per pod, the pod's value divided by the fleet's.
    #[serde(default, rename = "promQL")]
    pub prom_ql: String,
    /// Label holding the pod name.
    #[serde(default, rename = "podNamekey")]
    pub pod_name_key: String,
    /// Deviation from 1.0, in percent, above which a pod is anomalous (default 75).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_deviation_percent: Option<f64>,
}

/// A PromQL query giving one value per pod, judged against fixed bounds.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ValueThreshold {
    /// Prometheus to query: `host:port` (meaning http://) or a full URL.
    #[serde(default)]
    pub prometheus_service: String,
    /// Query returning one series per pod, such as a p99 latency or an error ratio.
    #[serde(default, rename = "promQL")]
    pub prom_ql: String,
    /// Label holding the pod name.
    #[serde(default, rename = "podNamekey")]
    pub pod_name_key: String,
    /// A pod whose value is greater than this is anomalous.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub above: Option<f64>,
    /// A pod whose value is less than this is anomalous.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub below: Option<f64>,
}

/// A PromQL query giving one value per pod, judged by its least-squares slope over a window.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ValueTrend {
    /// Prometheus to query: `host:port` (meaning http://) or a full URL.
    #[serde(default)]
    pub prometheus_service: String,
    /// Query returning one series per pod; it is run as a range query over the window.
    #[serde(default, rename = "promQL")]
    pub prom_ql: String,
    /// Label holding the pod name.
    #[serde(default, rename = "podNamekey")]
    pub pod_name_key: String,
    /// Seconds of history the slope is fitted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<f64>,
    /// A pod whose value rises faster than this (units per second) is anomalous.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_slope: Option<f64>,
    /// A pod whose slope is less than this (units per second) is anomalous.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_slope: Option<f64>,
}

/// Per-pod success rates from the same counters as `discreteValueOutOfList`, compared with
/// the fleet's mean and standard deviation.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SuccessRateOutlier {
    /// Prometheus to query: `host:port` (meaning http://) or a full URL.
    #[serde(default)]
    pub prometheus_service: String,
    /// Query returning one series per pod and discrete value, e.g. requests by code.
    #[serde(default, rename = "promQL")]
    pub prom_ql: String,
    /// Label holding the pod name.
    #[serde(default, rename = "podNamekey")]
    pub pod_name_key: String,
    /// Label holding the discrete value (for example `code`).
    #[serde(default)]
    pub key: String,
    /// Values that count as successes; everything else is a failure.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub good_values: Vec<String>,
    /// Values that count as failures; everything else is a success.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bad_values: Vec<String>,
    /// A pod is anomalous below mean − stdevFactor × stdev of the judged pods (default 1.9).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdev_factor: Option<f64>,
    /// With fewer judged pods than this, nothing is judged (default 5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minimum_hosts: Option<u32>,
    /// Pods with fewer observations than this are not judged (default 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_volume: Option<u32>,
}

/// A PromQL query giving each pod's raw value (a latency, a price, a queue length),
/// compared with the fleet by the modified z-score.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ContinuousOutlier {
    /// Prometheus to query: `host:port` (meaning http://) or a full URL.
    #[serde(default)]
    pub prometheus_service: String,
    /// Query returning one series per pod with its raw value.
    #[serde(default, rename = "promQL")]
    pub prom_ql: String,
    /// Label holding the pod name.
    #[serde(default, rename = "podNamekey")]
    pub pod_name_key: String,
    /// A pod whose modified z-score exceeds this, in the given direction, is anomalous
    /// (default 3.5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_z_score: Option<f64>,
    /// A pod is an outlier only when its value is also at least this far from the fleet's
    /// median, in percent of the median (default 10; 0 judges by the z-score alone). When
    /// the healthy pods' values are nearly equal their MAD is tiny, and sampling noise
    /// alone would score high.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_deviation_percent: Option<f64>,
    /// Which side of the fleet is anomalous: `above`, `below` or `both` (default both).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direction: Option<OutlierDirection>,
    /// With fewer judged pods than this, nothing is judged (default 5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minimum_hosts: Option<u32>,
}

/// Which side of the fleet a `continuousOutlier` looks at.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum OutlierDirection {
    /// Only values far above the fleet (latency, errors).
    Above,
    /// Only values far below the fleet (throughput, price).
    Below,
    /// Both sides.
    #[default]
    Both,
}

impl OutlierDirection {
    /// The name used in manifests.
    pub fn as_str(self) -> &'static str {
        match self {
            OutlierDirection::Above => "above",
            OutlierDirection::Below => "below",
            OutlierDirection::Both => "both",
        }
    }
}

/// How ejected pods are brought back, killed or parked.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ActivatorStrategy {
    /// `periodic`, `retryAndKill` or `retryAndPause` (default periodic).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<ActivatorMode>,
    /// Seconds an ejected pod stays out before it gets traffic again (default 10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub period: Option<f64>,
    /// Ejections after which a pod is killed or paused instead of put back (default 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_retry_count: Option<u32>,
    /// Paused pods allowed at once; past it, retryAndPause kills (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_pause_count: Option<u32>,
    /// Seconds a re-activated pod must keep traffic without a new ejection for its retry
    /// count to be reset to 0 (default: never).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forget_after: Option<f64>,
    /// Seconds a pod stays out at most, whatever its retry count (default: no cap).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ejection_time: Option<f64>,
    /// How retryAndKill and retryAndPause kill: `evict` (the Eviction API, which honours
    /// PodDisruptionBudgets) or `delete` (default evict).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kill_method: Option<KillMethod>,
}

/// How retryAndKill and retryAndPause kill a pod: `evict` (the Eviction API, which honours
/// PodDisruptionBudgets; the default) or `delete`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum KillMethod {
    /// Through the Eviction API (`pods/eviction`): a PodDisruptionBudget may refuse it,
    /// and the kill is tried again on the next activator pass.
    #[default]
    Evict,
    /// A plain DELETE, which ignores PodDisruptionBudgets.
    Delete,
}

impl KillMethod {
    /// The name used in manifests.
    pub fn as_str(self) -> &'static str {
        match self {
            KillMethod::Evict => "evict",
            KillMethod::Delete => "delete",
        }
    }
}

/// What the activator does with an ejected pod.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum ActivatorMode {
    /// Put the pod back after `period`, however often it fails.
    #[default]
    Periodic,
    /// Put the pod back after retryCount × period; kill it past maxRetryCount.
    RetryAndKill,
    /// Like retryAndKill, but park the pod (`traffic=pause`) for investigation instead.
    RetryAndPause,
}

impl ActivatorMode {
    /// The name used in manifests.
    pub fn as_str(self) -> &'static str {
        match self {
            ActivatorMode::Periodic => "periodic",
            ActivatorMode::RetryAndKill => "retryAndKill",
            ActivatorMode::RetryAndPause => "retryAndPause",
        }
    }
}

/// What Kubervisor observed and decided, written through the status subresource.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KubervisorServiceStatus {
    /// Conditions following Kubernetes conventions; `Ready` tells whether the breakers run.
    #[serde(default)]
    pub conditions: Vec<KubervisorServiceCondition>,
    /// When Kubervisor started guarding the Service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    /// Pods by traffic state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_count: Option<PodCountStatus>,
    /// The `metadata.generation` the status was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// What each breaker computed at its last evaluation that changed anything.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub breakers: Vec<BreakerStatus>,
}

/// The last evaluation of one breaker.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BreakerStatus {
    /// The breaker's name.
    pub name: String,
    /// When the breaker was last evaluated with this outcome.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_evaluation_time: Option<Time>,
    /// `Ok`, `SourceError`, `NotEnoughData`, `Panic` or `DryRun`.
    #[serde(default)]
    pub result: String,
    /// Why, when the result is not `Ok`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Pods the detector gave a verdict on.
    #[serde(default)]
    pub judged: u32,
    /// Judged pods found anomalous.
    #[serde(default)]
    pub anomalous: u32,
    /// Pods ejected by this evaluation (or that would be, in a dry run).
    #[serde(default)]
    pub ejected: u32,
    /// Anomalous pods that kept traffic because of the floor.
    #[serde(default)]
    pub spared_by_floor: u32,
    /// The fleet statistic the pods were compared with, when the method uses one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub statistic: Option<FleetStatisticStatus>,
    /// The anomalous pods, worst first: the score and the threshold it was compared with.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub anomalous_pods: Vec<PodScoreStatus>,
}

/// The fleet statistic of a breaker's evaluation, rounded to 4 significant digits.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FleetStatisticStatus {
    /// `meanStdev` (successRateOutlier) or `medianMad` (continuousOutlier).
    pub kind: String,
    /// Pods the statistic was computed over.
    pub hosts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mean: Option<f64>,
    /// Population standard deviation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdev: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub median: Option<f64>,
    /// Median absolute deviation from the median.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mad: Option<f64>,
}

/// One anomalous pod of a breaker's evaluation.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodScoreStatus {
    pub pod: String,
    /// What was compared: the value, slope, success rate or z-score.
    pub score: f64,
    /// What it was compared with.
    pub threshold: f64,
}

/// Counts of managed pods by traffic state.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodCountStatus {
    /// Pods selected by the Service (ignoring the traffic label).
    #[serde(default)]
    pub nb_pods_managed: u32,
    /// Pods ejected from traffic (`kubervisor/traffic=no`).
    #[serde(default)]
    pub nb_pods_breaked: u32,
    /// Pods parked for investigation (`kubervisor/traffic=pause`).
    #[serde(default)]
    pub nb_pods_paused: u32,
    /// Pods whose Kubervisor labels or annotations could not be read.
    #[serde(default)]
    pub nb_pods_unknown: u32,
    /// When the counts were taken.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_probe_time: Option<Time>,
}

/// One condition of a KubervisorService.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KubervisorServiceCondition {
    /// Condition type, such as `Ready`.
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    /// When the condition was last checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_probe_time: Option<Time>,
    /// When `status` last changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<Time>,
    /// One CamelCase word for machines.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// A sentence for humans.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}
