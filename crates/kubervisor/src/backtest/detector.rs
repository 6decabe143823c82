//! The detectors as the replay runs them: one query over the whole range, then the core's
//! own judgement at every evaluation instant.
//!
//! A new `Detection` variant does not compile until [`replayable`] has an arm for it: one
//! small implementation of [`Replayable`] that calls its `kubervisor_core::detect` function,
//! or a reason why it cannot be replayed.

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use kubervisor_api::{
    ContinuousRule, Detection, DiscreteRule, OutlierDirection, OutlierRule, ResolvedBreaker,
    SuccessRateRule, ThresholdRule, TrendRule,
};
use kubervisor_core::detect::{
    self, ContinuousSample, DiscreteSample, Evidence, Findings, FleetStatistic, TrendSeries,
};

use super::history::History;
use crate::source::{Labels, trend_step};

/// What one series of a breaker's query is about, read once from its labels.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct SeriesKey {
    pub pod: String,
    /// The value of the detector's key label, for detectors that have one.
    pub key: Option<String>,
}

/// One instant's samples: (index into the series keys, value).
pub type InstantSamples = [(usize, f64)];

/// A breaker's detector, replayable from a range query.
pub trait Replayable: Send + Sync {
    /// The `prometheusService` the breaker queries.
    fn prometheus_service(&self) -> &str;
    fn promql(&self) -> &str;
    /// The label holding the pod name, and the breaker field that names it.
    fn pod_label(&self) -> &str;
    /// Another label every series must carry, with the breaker field that names it.
    fn key_label(&self) -> Option<(&str, &'static str)> {
        None
    }
    /// The range query that holds every evaluation of [start, end] at `period`: its first
    /// instant and its step. An instant query per evaluation is the range query at the
    /// evaluation period over the same range.
    fn range(&self, start: Timestamp, period: Duration) -> (Timestamp, Duration) {
        (start, period)
    }
    /// The findings of the evaluation at `now`, from the fetched history.
    fn judge(&self, history: &History, now: Timestamp) -> Findings;
    /// The quantity the detector compares with its threshold, per judged pod at `now`,
    /// for charts.
    fn quantity(&self, history: &History, now: Timestamp) -> Vec<(String, f64)>;
    /// The fixed bounds of that quantity, drawn as lines; none when the bound moves with
    /// the fleet.
    fn thresholds(&self) -> Vec<f64>;
    /// What the quantity is, for chart axes.
    fn quantity_name(&self) -> &'static str;
}

/// Why a breaker cannot be replayed from Prometheus history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NotReplayable {
    pub breaker: String,
    pub reason: String,
}

/// The replayable form of a breaker's detector.
pub fn replayable(breaker: &ResolvedBreaker) -> Result<Box<dyn Replayable>, NotReplayable> {
    // No wildcard: a new detection method must say here how it replays.
    match &breaker.detection {
        Detection::Discrete(rule) => Ok(Box::new(Discrete(rule.clone()))),
        Detection::Continuous(rule) => Ok(Box::new(Continuous(rule.clone()))),
        Detection::Threshold(rule) => Ok(Box::new(Threshold(rule.clone()))),
        Detection::Trend(rule) => Ok(Box::new(Trend(rule.clone()))),
        Detection::SuccessRate(rule) => Ok(Box::new(SuccessRate(rule.clone()))),
        Detection::Outlier(rule) => Ok(Box::new(Outlier(rule.clone()))),
        Detection::Custom(_) => Err(NotReplayable {
            breaker: breaker.name.clone(),
            reason: "customService: an HTTP service answers for the present only, it has no history to replay".into(),
        }),
    }
}

/// Reads the series' labels once: the pod, and the key when the detector has one.
pub fn series_keys(
    detector: &dyn Replayable,
    labels: &[Labels],
) -> Result<Vec<SeriesKey>, (usize, String)> {
    labels
        .iter()
        .enumerate()
        .map(|(i, labels)| {
            let pod = labels
                .get(detector.pod_label())
                .cloned()
                .ok_or_else(|| (i, detector.pod_label().to_string()))?;
            let key = match detector.key_label() {
                Some((label, _)) => Some(
                    labels
                        .get(label)
                        .cloned()
                        .ok_or_else(|| (i, label.to_string()))?,
                ),
                None => None,
            };
            Ok(SeriesKey { pod, key })
        })
        .collect()
}

/// Every judged pod's score, with healthy pods at 0: the detector run with its threshold at 0.
fn scores(findings: Findings) -> Vec<(String, f64)> {
    let mut out: Vec<(String, f64)> = findings
        .anomalies
        .into_iter()
        .map(|a| (a.pod, a.score))
        .chain(findings.healthy.into_iter().map(|pod| (pod, 0.0)))
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// Every anomalous pod's compared quantity (what the evidence says was compared with the
/// bound): run with a bound every judged pod crosses, the findings name them all.
fn compared(findings: Findings) -> Vec<(String, f64)> {
    let mut out: Vec<(String, f64)> = findings
        .anomalies
        .into_iter()
        .filter_map(|a| Some((a.pod, a.evidence.compared()?.0)))
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn discrete_samples(history: &History, now: Timestamp) -> Vec<DiscreteSample> {
    history
        .samples_at(now)
        .iter()
        .map(|&(i, value)| DiscreteSample {
            pod: history.keys[i].pod.clone(),
            key: history.keys[i].key.clone().unwrap_or_default(),
            value,
        })
        .collect()
}

fn continuous_samples(history: &History, now: Timestamp) -> Vec<ContinuousSample> {
    history
        .samples_at(now)
        .iter()
        .map(|&(i, value)| ContinuousSample {
            pod: history.keys[i].pod.clone(),
            value,
        })
        .collect()
}

struct Discrete(DiscreteRule);

impl Replayable for Discrete {
    fn prometheus_service(&self) -> &str {
        &self.0.prometheus_service
    }
    fn promql(&self) -> &str {
        &self.0.promql
    }
    fn pod_label(&self) -> &str {
        &self.0.pod_name_key
    }
    fn key_label(&self) -> Option<(&str, &'static str)> {
        Some((&self.0.key, "key"))
    }
    fn judge(&self, history: &History, now: Timestamp) -> Findings {
        detect::discrete(&self.0, &discrete_samples(history, now))
    }
    fn quantity(&self, history: &History, now: Timestamp) -> Vec<(String, f64)> {
        let rule = DiscreteRule {
            tolerance_percent: 0,
            ..self.0.clone()
        };
        scores(detect::discrete(&rule, &discrete_samples(history, now)))
    }
    fn thresholds(&self) -> Vec<f64> {
        vec![f64::from(self.0.tolerance_percent) / 100.0]
    }
    fn quantity_name(&self) -> &'static str {
        "bad ratio"
    }
}

struct Continuous(ContinuousRule);

impl Replayable for Continuous {
    fn prometheus_service(&self) -> &str {
        &self.0.prometheus_service
    }
    fn promql(&self) -> &str {
        &self.0.promql
    }
    fn pod_label(&self) -> &str {
        &self.0.pod_name_key
    }
    fn judge(&self, history: &History, now: Timestamp) -> Findings {
        detect::continuous(&self.0, &continuous_samples(history, now))
    }
    fn quantity(&self, history: &History, now: Timestamp) -> Vec<(String, f64)> {
        let rule = ContinuousRule {
            max_deviation_percent: 0.0,
            ..self.0.clone()
        };
        scores(detect::continuous(&rule, &continuous_samples(history, now)))
    }
    fn thresholds(&self) -> Vec<f64> {
        vec![self.0.max_deviation_percent / 100.0]
    }
    fn quantity_name(&self) -> &'static str {
        "deviation from the fleet"
    }
}

struct Threshold(ThresholdRule);

impl Replayable for Threshold {
    fn prometheus_service(&self) -> &str {
        &self.0.prometheus_service
    }
    fn promql(&self) -> &str {
        &self.0.promql
    }
    fn pod_label(&self) -> &str {
        &self.0.pod_name_key
    }
    fn judge(&self, history: &History, now: Timestamp) -> Findings {
        detect::threshold(&self.0, &continuous_samples(history, now))
    }
    fn quantity(&self, history: &History, now: Timestamp) -> Vec<(String, f64)> {
        // Every finite value is above −∞: each judged pod's evidence carries its value.
        let rule = ThresholdRule {
            above: Some(f64::NEG_INFINITY),
            below: None,
            ..self.0.clone()
        };
        compared(detect::threshold(&rule, &continuous_samples(history, now)))
    }
    fn thresholds(&self) -> Vec<f64> {
        [self.0.above, self.0.below].into_iter().flatten().collect()
    }
    fn quantity_name(&self) -> &'static str {
        "value"
    }
}

struct Trend(TrendRule);

impl Trend {
    /// Each series' points in the window ending at `now`, as the operator's range query
    /// over [now − window, now] returns them, taken from the fetched grid.
    fn series(&self, history: &History, now: Timestamp) -> Vec<TrendSeries> {
        let window = SignedDuration::try_from(self.0.window).unwrap_or(SignedDuration::MAX);
        let from = now.checked_sub(window).unwrap_or(Timestamp::MIN);
        let mut points: Vec<Vec<(f64, f64)>> = vec![Vec::new(); history.keys.len()];
        let mut seen = vec![false; history.keys.len()];
        for i in history.indices_between(from, now) {
            let time = history.time(i).as_millisecond() as f64 / 1000.0;
            for &(series, value) in &history.instants[i] {
                points[series].push((time, value));
                seen[series] = true;
            }
        }
        // A series with no point in the window is not in the operator's answer either.
        points
            .into_iter()
            .zip(&history.keys)
            .zip(seen)
            .filter(|(_, seen)| *seen)
            .map(|((points, key), _)| TrendSeries {
                pod: key.pod.clone(),
                points,
            })
            .collect()
    }
}

impl Replayable for Trend {
    fn prometheus_service(&self) -> &str {
        &self.0.prometheus_service
    }
    fn promql(&self) -> &str {
        &self.0.promql
    }
    fn pod_label(&self) -> &str {
        &self.0.pod_name_key
    }
    fn range(&self, start: Timestamp, period: Duration) -> (Timestamp, Duration) {
        let window = SignedDuration::try_from(self.0.window).unwrap_or(SignedDuration::MAX);
        (
            start.checked_sub(window).unwrap_or(Timestamp::MIN),
            trend_step(self.0.window, period),
        )
    }
    fn judge(&self, history: &History, now: Timestamp) -> Findings {
        detect::trend(&self.0, &self.series(history, now))
    }
    fn quantity(&self, history: &History, now: Timestamp) -> Vec<(String, f64)> {
        // Every slope is above −∞: each judged pod's evidence carries its slope.
        let rule = TrendRule {
            max_slope: Some(f64::NEG_INFINITY),
            min_slope: None,
            ..self.0.clone()
        };
        compared(detect::trend(&rule, &self.series(history, now)))
    }
    fn thresholds(&self) -> Vec<f64> {
        [self.0.max_slope, self.0.min_slope]
            .into_iter()
            .flatten()
            .collect()
    }
    fn quantity_name(&self) -> &'static str {
        "slope (units per second)"
    }
}

struct SuccessRate(SuccessRateRule);

impl Replayable for SuccessRate {
    fn prometheus_service(&self) -> &str {
        &self.0.prometheus_service
    }
    fn promql(&self) -> &str {
        &self.0.promql
    }
    fn pod_label(&self) -> &str {
        &self.0.pod_name_key
    }
    fn key_label(&self) -> Option<(&str, &'static str)> {
        Some((&self.0.key, "key"))
    }
    fn judge(&self, history: &History, now: Timestamp) -> Findings {
        detect::success_rate_outlier(&self.0, &discrete_samples(history, now))
    }
    fn quantity(&self, history: &History, now: Timestamp) -> Vec<(String, f64)> {
        // With stdevFactor −∞ the bound is +∞ whenever the fleet has a spread, and every
        // judged pod is anomalous with its rate; without a spread, every rate is the mean.
        let rule = SuccessRateRule {
            stdev_factor: f64::NEG_INFINITY,
            ..self.0.clone()
        };
        let findings = detect::success_rate_outlier(&rule, &discrete_samples(history, now));
        let mean = match findings.statistic {
            Some(FleetStatistic::MeanStdev { mean, .. }) => Some(mean),
            _ => None,
        };
        let healthy: Vec<(String, f64)> = mean
            .map(|mean| {
                findings
                    .healthy
                    .iter()
                    .map(|pod| (pod.clone(), mean))
                    .collect()
            })
            .unwrap_or_default();
        let mut out = compared(findings);
        out.extend(healthy);
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }
    fn thresholds(&self) -> Vec<f64> {
        // mean − stdevFactor × stdev moves with the fleet at every evaluation.
        Vec::new()
    }
    fn quantity_name(&self) -> &'static str {
        "success rate"
    }
}

struct Outlier(OutlierRule);

impl Replayable for Outlier {
    fn prometheus_service(&self) -> &str {
        &self.0.prometheus_service
    }
    fn promql(&self) -> &str {
        &self.0.promql
    }
    fn pod_label(&self) -> &str {
        &self.0.pod_name_key
    }
    fn judge(&self, history: &History, now: Timestamp) -> Findings {
        detect::continuous_outlier(&self.0, &continuous_samples(history, now))
    }
    fn quantity(&self, history: &History, now: Timestamp) -> Vec<(String, f64)> {
        // |z| > −1 always and no minimum deviation: every judged pod is anomalous with its
        // signed z-score.
        let rule = OutlierRule {
            max_z_score: -1.0,
            min_deviation_percent: 0.0,
            direction: OutlierDirection::Both,
            ..self.0.clone()
        };
        let findings = detect::continuous_outlier(&rule, &continuous_samples(history, now));
        let mut out: Vec<(String, f64)> = findings
            .anomalies
            .into_iter()
            .filter_map(|a| match a.evidence {
                Evidence::Outlier { z_score, .. } => Some((a.pod, z_score)),
                _ => None,
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }
    fn thresholds(&self) -> Vec<f64> {
        let z = self.0.max_z_score;
        match self.0.direction {
            OutlierDirection::Above => vec![z],
            OutlierDirection::Below => vec![-z],
            OutlierDirection::Both => vec![z, -z],
        }
    }
    fn quantity_name(&self) -> &'static str {
        "modified z-score"
    }
}
