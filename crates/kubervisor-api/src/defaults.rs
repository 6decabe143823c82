use std::time::Duration;

use crate::types::*;
use crate::validate::{ValidationErrors, validate};

/// Default `evaluationPeriod`, in seconds.
pub const DEFAULT_EVALUATION_PERIOD: f64 = 5.0;
/// Default `minPodsAvailableCount`.
pub const DEFAULT_MIN_PODS_AVAILABLE_COUNT: u32 = 1;
/// Default `minPodsAvailableRatio`, in percent.
pub const DEFAULT_MIN_PODS_AVAILABLE_RATIO: u32 = 0;
/// Default `tolerance`, in percent.
pub const DEFAULT_TOLERANCE: u32 = 50;
/// Default `minActivity`.
pub const DEFAULT_MIN_ACTIVITY: u32 = 2;
/// Default `maxDeviationPercent`.
pub const DEFAULT_MAX_DEVIATION_PERCENT: f64 = 75.0;
/// Default `successRateOutlier.stdevFactor`, Envoy's.
pub const DEFAULT_STDEV_FACTOR: f64 = 1.9;
/// Default `minimumHosts` of the fleet-relative methods, Envoy's.
pub const DEFAULT_MINIMUM_HOSTS: u32 = 5;
/// Default `successRateOutlier.requestVolume`, Envoy's.
pub const DEFAULT_REQUEST_VOLUME: u32 = 100;
/// Default `continuousOutlier.maxZScore`, the usual cut-off of the modified z-score.
pub const DEFAULT_MAX_Z_SCORE: f64 = 3.5;
/// Default `continuousOutlier.minDeviationPercent`: a pod closer than this to the fleet's
/// median is never an outlier, however small the fleet's spread.
pub const DEFAULT_MIN_DEVIATION_PERCENT: f64 = 10.0;
/// Default activator `period`, in seconds.
pub const DEFAULT_ACTIVATOR_PERIOD: f64 = 10.0;
/// Default activator `maxRetryCount`.
pub const DEFAULT_MAX_RETRY_COUNT: u32 = 3;
/// Default activator `maxPauseCount`.
pub const DEFAULT_MAX_PAUSE_COUNT: u32 = 1;

impl KubervisorServiceSpec {
    /// The spec with every omitted field set to its default, as `kubervisor check` prints it.
    pub fn defaulted(&self) -> KubervisorServiceSpec {
        let mut spec = self.clone();
        spec.dry_run.get_or_insert(false);
        spec.traffic_control.get_or_insert(TrafficControl::Label);
        default_activator(spec.default_activator.get_or_insert_with(Default::default));
        for breaker in &mut spec.breakers {
            breaker
                .evaluation_period
                .get_or_insert(DEFAULT_EVALUATION_PERIOD);
            breaker
                .min_pods_available_count
                .get_or_insert(DEFAULT_MIN_PODS_AVAILABLE_COUNT);
            breaker
                .min_pods_available_ratio
                .get_or_insert(DEFAULT_MIN_PODS_AVAILABLE_RATIO);
            breaker.panic_threshold_percent.get_or_insert(0);
            breaker.dry_run.get_or_insert(false);
            if let Some(discrete) = &mut breaker.discrete_value_out_of_list {
                discrete.tolerance.get_or_insert(DEFAULT_TOLERANCE);
                discrete.min_activity.get_or_insert(DEFAULT_MIN_ACTIVITY);
            }
            if let Some(continuous) = &mut breaker.continuous_value_deviation {
                continuous
                    .max_deviation_percent
                    .get_or_insert(DEFAULT_MAX_DEVIATION_PERCENT);
            }
            if let Some(rate) = &mut breaker.success_rate_outlier {
                rate.stdev_factor.get_or_insert(DEFAULT_STDEV_FACTOR);
                rate.minimum_hosts.get_or_insert(DEFAULT_MINIMUM_HOSTS);
                rate.request_volume.get_or_insert(DEFAULT_REQUEST_VOLUME);
            }
            if let Some(outlier) = &mut breaker.continuous_outlier {
                outlier.max_z_score.get_or_insert(DEFAULT_MAX_Z_SCORE);
                outlier
                    .min_deviation_percent
                    .get_or_insert(DEFAULT_MIN_DEVIATION_PERCENT);
                outlier.direction.get_or_insert(OutlierDirection::Both);
                outlier.minimum_hosts.get_or_insert(DEFAULT_MINIMUM_HOSTS);
            }
            if let Some(activator) = &mut breaker.activator {
                default_activator(activator);
            }
        }
        spec
    }

    /// Defaults and validates the spec into the typed form the decision engine runs on.
    pub fn resolve(&self) -> Result<ResolvedSpec, ValidationErrors> {
        let spec = self.defaulted();
        validate(&spec)?;
        let default_activator =
            ResolvedActivator::from_defaulted(spec.default_activator.as_ref().expect("defaulted"));
        let breakers = spec
            .breakers
            .iter()
            .map(|b| ResolvedBreaker {
                name: b.name.clone(),
                evaluation_period: Duration::from_secs_f64(b.evaluation_period.expect("defaulted")),
                min_pods_available_count: b.min_pods_available_count.expect("defaulted"),
                min_pods_available_ratio: b.min_pods_available_ratio.expect("defaulted"),
                detection: Detection::from_defaulted(b),
                activator: b.activator.as_ref().map(ResolvedActivator::from_defaulted),
                panic_threshold_percent: b.panic_threshold_percent.expect("defaulted"),
                max_ejections_per_evaluation: b.max_ejections_per_evaluation,
                dry_run: b.dry_run.expect("defaulted"),
            })
            .collect();
        Ok(ResolvedSpec {
            service: spec.service,
            breakers,
            default_activator,
            dry_run: spec.dry_run.unwrap_or(false),
            traffic_control: spec.traffic_control.unwrap_or_default(),
        })
    }
}

fn default_activator(activator: &mut ActivatorStrategy) {
    activator.mode.get_or_insert(ActivatorMode::Periodic);
    activator.period.get_or_insert(DEFAULT_ACTIVATOR_PERIOD);
    activator
        .max_retry_count
        .get_or_insert(DEFAULT_MAX_RETRY_COUNT);
    activator
        .max_pause_count
        .get_or_insert(DEFAULT_MAX_PAUSE_COUNT);
    activator.kill_method.get_or_insert(KillMethod::Evict);
}

/// A validated spec with every default applied.
#[derive(Clone, Debug, PartialEq)]
pub struct ResolvedSpec {
    pub service: String,
    pub breakers: Vec<ResolvedBreaker>,
    pub default_activator: ResolvedActivator,
    pub dry_run: bool,
    pub traffic_control: TrafficControl,
}

impl ResolvedSpec {
    /// The activator in charge of pods ejected by `breaker` (the breaker's own, else the default).
    pub fn activator_for(&self, breaker: Option<&str>) -> &ResolvedActivator {
        breaker
            .and_then(|name| self.breakers.iter().find(|b| b.name == name))
            .and_then(|b| b.activator.as_ref())
            .unwrap_or(&self.default_activator)
    }
}

/// A validated breaker.
#[derive(Clone, Debug, PartialEq)]
pub struct ResolvedBreaker {
    pub name: String,
    pub evaluation_period: Duration,
    pub min_pods_available_count: u32,
    pub min_pods_available_ratio: u32,
    pub detection: Detection,
    pub activator: Option<ResolvedActivator>,
    /// 0 is off.
    pub panic_threshold_percent: u32,
    /// `None`: only the floor limits ejections.
    pub max_ejections_per_evaluation: Option<u32>,
    pub dry_run: bool,
}

/// The one detection method of a breaker.
#[derive(Clone, Debug, PartialEq)]
pub enum Detection {
    Discrete(DiscreteRule),
    Continuous(ContinuousRule),
    Custom(CustomRule),
    Threshold(ThresholdRule),
    Trend(TrendRule),
    SuccessRate(SuccessRateRule),
    Outlier(OutlierRule),
}

impl Detection {
    fn from_defaulted(breaker: &BreakerStrategy) -> Detection {
        if let Some(d) = &breaker.discrete_value_out_of_list {
            Detection::Discrete(DiscreteRule {
                prometheus_service: d.prometheus_service.clone(),
                promql: d.prom_ql.clone(),
                key: d.key.clone(),
                pod_name_key: d.pod_name_key.clone(),
                values: ValueList::from_lists(&d.good_values, &d.bad_values),
                tolerance_percent: d.tolerance.expect("defaulted"),
                min_activity: d.min_activity.expect("defaulted"),
            })
        } else if let Some(c) = &breaker.continuous_value_deviation {
            Detection::Continuous(ContinuousRule {
                prometheus_service: c.prometheus_service.clone(),
                promql: c.prom_ql.clone(),
                pod_name_key: c.pod_name_key.clone(),
                max_deviation_percent: c.max_deviation_percent.expect("defaulted"),
            })
        } else if let Some(t) = &breaker.value_threshold {
            Detection::Threshold(ThresholdRule {
                prometheus_service: t.prometheus_service.clone(),
                promql: t.prom_ql.clone(),
                pod_name_key: t.pod_name_key.clone(),
                above: t.above,
                below: t.below,
            })
        } else if let Some(t) = &breaker.value_trend {
            Detection::Trend(TrendRule {
                prometheus_service: t.prometheus_service.clone(),
                promql: t.prom_ql.clone(),
                pod_name_key: t.pod_name_key.clone(),
                window: Duration::from_secs_f64(t.window.expect("validated")),
                max_slope: t.max_slope,
                min_slope: t.min_slope,
            })
        } else if let Some(r) = &breaker.success_rate_outlier {
            Detection::SuccessRate(SuccessRateRule {
                prometheus_service: r.prometheus_service.clone(),
                promql: r.prom_ql.clone(),
                pod_name_key: r.pod_name_key.clone(),
                key: r.key.clone(),
                values: ValueList::from_lists(&r.good_values, &r.bad_values),
                stdev_factor: r.stdev_factor.expect("defaulted"),
                minimum_hosts: r.minimum_hosts.expect("defaulted"),
                request_volume: r.request_volume.expect("defaulted"),
            })
        } else if let Some(o) = &breaker.continuous_outlier {
            Detection::Outlier(OutlierRule {
                prometheus_service: o.prometheus_service.clone(),
                promql: o.prom_ql.clone(),
                pod_name_key: o.pod_name_key.clone(),
                max_z_score: o.max_z_score.expect("defaulted"),
                min_deviation_percent: o.min_deviation_percent.expect("defaulted"),
                direction: o.direction.expect("defaulted"),
                minimum_hosts: o.minimum_hosts.expect("defaulted"),
            })
        } else {
            Detection::Custom(CustomRule {
                url: breaker.custom_service.clone().expect("validated"),
            })
        }
    }

    /// A short name of the method, for logs and metrics labels.
    pub fn kind(&self) -> &'static str {
        match self {
            Detection::Discrete(_) => "discreteValueOutOfList",
            Detection::Continuous(_) => "continuousValueDeviation",
            Detection::Custom(_) => "customService",
            Detection::Threshold(_) => "valueThreshold",
            Detection::Trend(_) => "valueTrend",
            Detection::SuccessRate(_) => "successRateOutlier",
            Detection::Outlier(_) => "continuousOutlier",
        }
    }
}

/// Which values of the key label are good: those listed, or those not listed as bad.
#[derive(Clone, Debug, PartialEq)]
pub enum ValueList {
    Good(std::collections::BTreeSet<String>),
    Bad(std::collections::BTreeSet<String>),
}

impl ValueList {
    /// The list that is set; validation makes sure exactly one is.
    fn from_lists(good: &[String], bad: &[String]) -> ValueList {
        if good.is_empty() {
            ValueList::Bad(bad.iter().cloned().collect())
        } else {
            ValueList::Good(good.iter().cloned().collect())
        }
    }

    /// Whether a value of the key label counts as good.
    pub fn is_good(&self, value: &str) -> bool {
        match self {
            ValueList::Good(good) => good.contains(value),
            ValueList::Bad(bad) => !bad.contains(value),
        }
    }
}

/// A validated `discreteValueOutOfList`.
#[derive(Clone, Debug, PartialEq)]
pub struct DiscreteRule {
    pub prometheus_service: String,
    pub promql: String,
    pub key: String,
    pub pod_name_key: String,
    pub values: ValueList,
    pub tolerance_percent: u32,
    pub min_activity: u32,
}

/// A validated `continuousValueDeviation`.
#[derive(Clone, Debug, PartialEq)]
pub struct ContinuousRule {
    pub prometheus_service: String,
    pub promql: String,
    pub pod_name_key: String,
    pub max_deviation_percent: f64,
}

/// A validated `valueThreshold`: at least one bound is set.
#[derive(Clone, Debug, PartialEq)]
pub struct ThresholdRule {
    pub prometheus_service: String,
    pub promql: String,
    pub pod_name_key: String,
    pub above: Option<f64>,
    pub below: Option<f64>,
}

/// A validated `valueTrend`: at least one bound is set, slopes in units per second.
#[derive(Clone, Debug, PartialEq)]
pub struct TrendRule {
    pub prometheus_service: String,
    pub promql: String,
    pub pod_name_key: String,
    pub window: Duration,
    pub max_slope: Option<f64>,
    pub min_slope: Option<f64>,
}

/// A validated `successRateOutlier`.
#[derive(Clone, Debug, PartialEq)]
pub struct SuccessRateRule {
    pub prometheus_service: String,
    pub promql: String,
    pub pod_name_key: String,
    pub key: String,
    pub values: ValueList,
    pub stdev_factor: f64,
    pub minimum_hosts: u32,
    pub request_volume: u32,
}

/// A validated `continuousOutlier`.
#[derive(Clone, Debug, PartialEq)]
pub struct OutlierRule {
    pub prometheus_service: String,
    pub promql: String,
    pub pod_name_key: String,
    pub max_z_score: f64,
    /// A pod is an outlier only when |value − median| ≥ this % of |median|.
    pub min_deviation_percent: f64,
    pub direction: OutlierDirection,
    pub minimum_hosts: u32,
}

/// A validated `customService`.
#[derive(Clone, Debug, PartialEq)]
pub struct CustomRule {
    pub url: String,
}

/// A validated activator.
#[derive(Clone, Debug, PartialEq)]
pub struct ResolvedActivator {
    pub mode: ActivatorMode,
    pub period: Duration,
    pub max_retry_count: u32,
    pub max_pause_count: u32,
    /// A re-activated pod's retry count is reset after this long with traffic.
    pub forget_after: Option<Duration>,
    /// The longest a pod stays out, whatever its retry count.
    pub max_ejection_time: Option<Duration>,
    pub kill_method: KillMethod,
}

impl ResolvedActivator {
    fn from_defaulted(a: &ActivatorStrategy) -> ResolvedActivator {
        ResolvedActivator {
            mode: a.mode.unwrap_or_default(),
            period: Duration::from_secs_f64(a.period.unwrap_or(DEFAULT_ACTIVATOR_PERIOD)),
            max_retry_count: a.max_retry_count.unwrap_or(DEFAULT_MAX_RETRY_COUNT),
            max_pause_count: a.max_pause_count.unwrap_or(DEFAULT_MAX_PAUSE_COUNT),
            forget_after: a.forget_after.map(Duration::from_secs_f64),
            max_ejection_time: a.max_ejection_time.map(Duration::from_secs_f64),
            kill_method: a.kill_method.unwrap_or_default(),
        }
    }
}

impl Default for ResolvedActivator {
    fn default() -> Self {
        ResolvedActivator::from_defaulted(&ActivatorStrategy::default())
    }
}
