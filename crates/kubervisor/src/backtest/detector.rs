//! The detectors as the replay runs them: one query over the whole range, then the core's
//! own judgement at every instant.
//!
//! A new PromQL detector is one arm of [`replayable`] and one small implementation of
//! [`Replayable`] that calls its `kubervisor_core::detect` function.

use kubervisor_api::{ContinuousRule, Detection, DiscreteRule, ResolvedBreaker};
use kubervisor_core::detect::{self, ContinuousSample, DiscreteSample, Findings};

use crate::source::Labels;

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
    /// The findings of one evaluation, from the samples of that instant.
    fn judge(&self, keys: &[SeriesKey], samples: &InstantSamples) -> Findings;
    /// The detector's own per-pod quantity at that instant (bad ratio, deviation), for
    /// charts: `None` for pods it does not judge.
    fn quantity(&self, keys: &[SeriesKey], samples: &InstantSamples) -> Vec<(String, f64)>;
    /// The quantity above which a pod is anomalous.
    fn threshold(&self) -> f64;
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
    #[allow(unreachable_patterns)] // Detectors added later are reported until they get an arm.
    match &breaker.detection {
        Detection::Discrete(rule) => Ok(Box::new(Discrete(rule.clone()))),
        Detection::Continuous(rule) => Ok(Box::new(Continuous(rule.clone()))),
        Detection::Custom(_) => Err(NotReplayable {
            breaker: breaker.name.clone(),
            reason: "customService: an HTTP service answers for the present only, it has no history to replay".into(),
        }),
        other => Err(NotReplayable {
            breaker: breaker.name.clone(),
            reason: format!("{}: not supported by the backtest yet", other.kind()),
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

struct Discrete(DiscreteRule);

impl Discrete {
    fn samples(keys: &[SeriesKey], samples: &InstantSamples) -> Vec<DiscreteSample> {
        samples
            .iter()
            .map(|&(i, value)| DiscreteSample {
                pod: keys[i].pod.clone(),
                key: keys[i].key.clone().unwrap_or_default(),
                value,
            })
            .collect()
    }
}

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
    fn judge(&self, keys: &[SeriesKey], samples: &InstantSamples) -> Findings {
        detect::discrete(&self.0, &Self::samples(keys, samples))
    }
    fn quantity(&self, keys: &[SeriesKey], samples: &InstantSamples) -> Vec<(String, f64)> {
        let rule = DiscreteRule {
            tolerance_percent: 0,
            ..self.0.clone()
        };
        scores(detect::discrete(&rule, &Self::samples(keys, samples)))
    }
    fn threshold(&self) -> f64 {
        f64::from(self.0.tolerance_percent) / 100.0
    }
    fn quantity_name(&self) -> &'static str {
        "bad ratio"
    }
}

struct Continuous(ContinuousRule);

impl Continuous {
    fn samples(keys: &[SeriesKey], samples: &InstantSamples) -> Vec<ContinuousSample> {
        samples
            .iter()
            .map(|&(i, value)| ContinuousSample {
                pod: keys[i].pod.clone(),
                value,
            })
            .collect()
    }
}

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
    fn judge(&self, keys: &[SeriesKey], samples: &InstantSamples) -> Findings {
        detect::continuous(&self.0, &Self::samples(keys, samples))
    }
    fn quantity(&self, keys: &[SeriesKey], samples: &InstantSamples) -> Vec<(String, f64)> {
        let rule = ContinuousRule {
            max_deviation_percent: 0.0,
            ..self.0.clone()
        };
        scores(detect::continuous(&rule, &Self::samples(keys, samples)))
    }
    fn threshold(&self) -> f64 {
        self.0.max_deviation_percent / 100.0
    }
    fn quantity_name(&self) -> &'static str {
        "deviation from the fleet"
    }
}
