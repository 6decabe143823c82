//! Detectors: from the samples of one evaluation to findings per pod.

use std::collections::BTreeMap;
use std::fmt;

use kubervisor_api::{ContinuousRule, DiscreteRule};

/// One series of a discrete-value query: the pod, the value of the `key` label, the sample.
#[derive(Clone, Debug, PartialEq)]
pub struct DiscreteSample {
    pub pod: String,
    pub key: String,
    pub value: f64,
}

/// One series of a continuous-value query: the pod and its value relative to the fleet.
#[derive(Clone, Debug, PartialEq)]
pub struct ContinuousSample {
    pub pod: String,
    pub value: f64,
}

/// A pod a detector found anomalous.
#[derive(Clone, Debug, PartialEq)]
pub struct Anomaly {
    pub pod: String,
    /// How bad it is, to eject the worst first: the bad ratio or the deviation.
    pub score: f64,
    /// The numbers that made it anomalous, for events and logs.
    pub evidence: Evidence,
}

/// Why a detector found a pod anomalous: the rule and its numbers, rendered to text
/// only when reported.
#[derive(Clone, Debug, PartialEq)]
pub enum Evidence {
    /// `discreteValueOutOfList`: the share of bad values of the key label.
    BadRatio {
        key: String,
        ratio: f64,
        observations: f64,
        tolerance_percent: u32,
    },
    /// `continuousValueDeviation`: how far the pod's relative value is from 1.
    Deviation {
        deviation: f64,
        max_deviation_percent: f64,
    },
    /// A custom detector named the pod.
    Reported,
}

impl fmt::Display for Evidence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Evidence::BadRatio {
                key,
                ratio,
                observations,
                tolerance_percent,
            } => write!(
                f,
                "{:.1}% bad {key} over {} observations > tolerance {tolerance_percent}%",
                ratio * 100.0,
                fmt_count(*observations)
            ),
            Evidence::Deviation {
                deviation,
                max_deviation_percent,
            } => write!(
                f,
                "deviates {:.1}% from the fleet > maxDeviationPercent {max_deviation_percent}%",
                deviation * 100.0
            ),
            Evidence::Reported => f.write_str("reported by the custom detector"),
        }
    }
}

/// What one evaluation of a detector found.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Findings {
    /// Anomalous pods, worst first, ties broken by name.
    pub anomalies: Vec<Anomaly>,
    /// Pods judged healthy.
    pub healthy: Vec<String>,
    /// Pods present in the data but not judged, with the reason.
    pub not_judged: Vec<(String, String)>,
    /// The detector names only anomalous pods (a custom detector): every other pod it
    /// could see counts as judged healthy.
    pub unlisted_are_healthy: bool,
}

impl Findings {
    fn finish(mut self) -> Findings {
        self.anomalies
            .sort_by(|a, b| b.score.total_cmp(&a.score).then_with(|| a.pod.cmp(&b.pod)));
        self.healthy.sort();
        self.not_judged.sort();
        self
    }
}

/// Judges pods by the share of bad values of the key label.
///
/// Per pod, samples whose key is good and bad are summed; a pod with fewer than
/// `min_activity` observations is not judged; a pod is anomalous when
/// bad / total > tolerance / 100, compared without any rounding.
pub fn discrete(rule: &DiscreteRule, samples: &[DiscreteSample]) -> Findings {
    #[derive(Default)]
    struct Tally {
        good: f64,
        bad: f64,
        invalid: Option<String>,
    }
    let mut tallies: BTreeMap<&str, Tally> = BTreeMap::new();
    for sample in samples {
        let tally = tallies.entry(sample.pod.as_str()).or_default();
        if !sample.value.is_finite() || sample.value < 0.0 {
            tally.invalid.get_or_insert_with(|| {
                format!(
                    "sample {}={:?} has value {}, not a finite count",
                    rule.key, sample.key, sample.value
                )
            });
        } else if rule.values.is_good(&sample.key) {
            tally.good += sample.value;
        } else {
            tally.bad += sample.value;
        }
    }
    let mut findings = Findings::default();
    for (pod, tally) in tallies {
        let total = tally.good + tally.bad;
        if let Some(why) = tally.invalid {
            findings.not_judged.push((pod.to_string(), why));
        } else if total < f64::from(rule.min_activity) {
            findings.not_judged.push((
                pod.to_string(),
                format!(
                    "{} observations, fewer than minActivity {}",
                    fmt_count(total),
                    rule.min_activity
                ),
            ));
        } else if tally.bad * 100.0 > f64::from(rule.tolerance_percent) * total {
            let ratio = tally.bad / total;
            findings.anomalies.push(Anomaly {
                pod: pod.to_string(),
                score: ratio,
                evidence: Evidence::BadRatio {
                    key: rule.key.clone(),
                    ratio,
                    observations: total,
                    tolerance_percent: rule.tolerance_percent,
                },
            });
        } else {
            findings.healthy.push(pod.to_string());
        }
    }
    findings.finish()
}

/// Judges pods by their value relative to the fleet: anomalous when
/// |1 - value| > maxDeviationPercent / 100.
pub fn continuous(rule: &ContinuousRule, samples: &[ContinuousSample]) -> Findings {
    // A pod with several series is judged on its worst one.
    let mut worst: BTreeMap<&str, Result<f64, String>> = BTreeMap::new();
    for sample in samples {
        let entry = worst.entry(sample.pod.as_str()).or_insert(Ok(0.0));
        if !sample.value.is_finite() {
            *entry = Err(format!(
                "relative value {} is not a finite number",
                sample.value
            ));
        } else if let Ok(deviation) = entry {
            *deviation = deviation.max((1.0 - sample.value).abs());
        }
    }
    let mut findings = Findings::default();
    for (pod, deviation) in worst {
        match deviation {
            Err(why) => findings.not_judged.push((pod.to_string(), why)),
            Ok(deviation) if deviation * 100.0 > rule.max_deviation_percent => {
                findings.anomalies.push(Anomaly {
                    pod: pod.to_string(),
                    score: deviation,
                    evidence: Evidence::Deviation {
                        deviation,
                        max_deviation_percent: rule.max_deviation_percent,
                    },
                })
            }
            Ok(_) => findings.healthy.push(pod.to_string()),
        }
    }
    findings.finish()
}

/// The pods a custom detector reported are anomalous; it says nothing of the others.
pub fn custom(reported: &[String]) -> Findings {
    let mut pods: Vec<&String> = reported.iter().collect();
    pods.sort();
    pods.dedup();
    Findings {
        anomalies: pods
            .into_iter()
            .map(|pod| Anomaly {
                pod: pod.clone(),
                score: 1.0,
                evidence: Evidence::Reported,
            })
            .collect(),
        unlisted_are_healthy: true,
        ..Findings::default()
    }
    .finish()
}

fn fmt_count(value: f64) -> String {
    if value.fract() == 0.0 && value.abs() < 1e15 {
        format!("{value:.0}")
    } else {
        format!("{value:.2}")
    }
}

#[cfg(test)]
mod tests {
    use kubervisor_api::ValueList;

    use super::*;

    fn rule(values: ValueList, tolerance: u32, min_activity: u32) -> DiscreteRule {
        DiscreteRule {
            prometheus_service: "prometheus:9090".into(),
            promql: "q".into(),
            key: "code".into(),
            pod_name_key: "pod".into(),
            values,
            tolerance_percent: tolerance,
            min_activity,
        }
    }

    fn good(values: &[&str]) -> ValueList {
        ValueList::Good(values.iter().map(|v| v.to_string()).collect())
    }

    fn bad(values: &[&str]) -> ValueList {
        ValueList::Bad(values.iter().map(|v| v.to_string()).collect())
    }

    fn s(pod: &str, key: &str, value: f64) -> DiscreteSample {
        DiscreteSample {
            pod: pod.into(),
            key: key.into(),
            value,
        }
    }

    fn names(findings: &Findings) -> Vec<&str> {
        findings.anomalies.iter().map(|a| a.pod.as_str()).collect()
    }

    #[test]
    fn pod_with_more_bad_codes_than_tolerance_is_anomalous() {
        let samples = [
            s("a", "200", 38.0),
            s("a", "500", 62.0),
            s("b", "200", 99.0),
            s("b", "500", 1.0),
        ];
        let findings = discrete(&rule(good(&["200"]), 50, 2), &samples);
        assert_eq!(names(&findings), ["a"]);
        assert_eq!(findings.healthy, ["b"]);
        assert!(
            findings.anomalies[0]
                .evidence
                .to_string()
                .contains("62.0% bad code over 100 observations > tolerance 50%"),
            "{}",
            findings.anomalies[0].evidence
        );
    }

    #[test]
    fn bad_values_list_counts_everything_else_as_good() {
        let samples = [s("a", "200", 1.0), s("a", "404", 5.0), s("a", "503", 4.0)];
        let findings = discrete(&rule(bad(&["503"]), 30, 2), &samples);
        // 4 of 10 are 503: 40% > 30%.
        assert_eq!(names(&findings), ["a"]);
        let findings = discrete(&rule(bad(&["503"]), 40, 2), &samples);
        assert!(
            findings.anomalies.is_empty(),
            "exactly at tolerance is not above it"
        );
    }

    #[test]
    fn ratio_is_compared_exactly_not_truncated() {
        // 1 of 3 = 33.3% > 33%: integer arithmetic would have said 33% and missed it.
        let samples = [s("a", "200", 2.0), s("a", "500", 1.0)];
        let findings = discrete(&rule(good(&["200"]), 33, 1), &samples);
        assert_eq!(names(&findings), ["a"]);
        // Fractional counts from increase() are kept as they are.
        let samples = [s("b", "200", 1.5), s("b", "500", 1.4999)];
        assert!(
            discrete(&rule(good(&["200"]), 50, 1), &samples)
                .anomalies
                .is_empty()
        );
    }

    #[test]
    fn pods_below_min_activity_are_not_judged() {
        let samples = [s("quiet", "500", 1.0), s("busy", "500", 3.0)];
        let findings = discrete(&rule(good(&["200"]), 50, 2), &samples);
        assert_eq!(names(&findings), ["busy"]);
        assert_eq!(findings.not_judged.len(), 1);
        assert_eq!(findings.not_judged[0].0, "quiet");
        assert!(
            findings.not_judged[0]
                .1
                .contains("fewer than minActivity 2")
        );
    }

    #[test]
    fn non_finite_or_negative_counts_leave_the_pod_unjudged() {
        let samples = [
            s("nan", "500", f64::NAN),
            s("nan", "200", 10.0),
            s("inf", "500", f64::INFINITY),
            s("neg", "500", -3.0),
        ];
        let findings = discrete(&rule(good(&["200"]), 10, 1), &samples);
        assert!(findings.anomalies.is_empty());
        let unjudged: Vec<&str> = findings
            .not_judged
            .iter()
            .map(|(p, _)| p.as_str())
            .collect();
        assert_eq!(unjudged, ["inf", "nan", "neg"]);
    }

    #[test]
    fn worst_offenders_come_first_ties_by_name() {
        let samples = [
            s("c", "500", 9.0),
            s("c", "200", 1.0),
            s("b", "500", 6.0),
            s("b", "200", 4.0),
            s("a", "500", 6.0),
            s("a", "200", 4.0),
        ];
        let findings = discrete(&rule(good(&["200"]), 50, 2), &samples);
        assert_eq!(names(&findings), ["c", "a", "b"]);
    }

    fn crule(max: f64) -> ContinuousRule {
        ContinuousRule {
            prometheus_service: "p:9090".into(),
            promql: "q".into(),
            pod_name_key: "pod".into(),
            max_deviation_percent: max,
        }
    }

    fn c(pod: &str, value: f64) -> ContinuousSample {
        ContinuousSample {
            pod: pod.into(),
            value,
        }
    }

    #[test]
    fn continuous_flags_pods_deviating_either_way() {
        let samples = [c("high", 1.9), c("low", 0.2), c("ok", 1.1), c("edge", 1.75)];
        let findings = continuous(&crule(75.0), &samples);
        assert_eq!(names(&findings), ["high", "low"]);
        assert_eq!(findings.healthy, ["edge", "ok"]);
        assert!(
            findings.anomalies[0]
                .evidence
                .to_string()
                .contains("deviates 90.0%")
        );
    }

    #[test]
    fn continuous_leaves_non_finite_values_unjudged() {
        let samples = [c("nan", f64::NAN), c("inf", f64::NEG_INFINITY)];
        let findings = continuous(&crule(10.0), &samples);
        assert!(findings.anomalies.is_empty());
        assert_eq!(findings.not_judged.len(), 2);
    }

    #[test]
    fn custom_reports_are_anomalies_deduplicated_and_sorted() {
        let findings = custom(&["b".into(), "a".into(), "b".into()]);
        assert_eq!(names(&findings), ["a", "b"]);
    }
}
