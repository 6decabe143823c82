//! The breaker: which anomalous pods lose traffic, never leaving fewer than the minimum.

use std::fmt;

use crate::detect::{Evidence, Findings};
use crate::{NotCandidate, PodView};

/// The protection of one breaker, from `minPodsAvailableCount` and `minPodsAvailableRatio`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MinAvailable {
    pub count: u32,
    /// Percent of the Ready managed pods, whatever their traffic label.
    pub ratio_percent: u32,
}

impl MinAvailable {
    /// Pods that must keep traffic, given `ready_managed` Ready managed pods.
    ///
    /// The ratio applies to all Ready managed pods, not to those still serving:
    /// otherwise each ejection would lower the floor for the next tick.
    pub fn floor(self, ready_managed: usize) -> usize {
        let by_ratio = (ready_managed as u64 * u64::from(self.ratio_percent)).div_ceil(100);
        (self.count as usize).max(by_ratio as usize)
    }
}

/// Everything that bounds what one evaluation of a breaker may eject.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub min_available: MinAvailable,
    /// Below this percentage of healthy judged pods, nothing is ejected; 0 is off.
    pub panic_threshold_percent: u32,
    /// Ejections per evaluation at most; `None` is no limit but the floor.
    pub max_per_evaluation: Option<u32>,
}

impl From<MinAvailable> for Limits {
    fn from(min_available: MinAvailable) -> Limits {
        Limits {
            min_available,
            panic_threshold_percent: 0,
            max_per_evaluation: None,
        }
    }
}

/// Too few judged pods are healthy: the problem is taken to be fleet-wide, or the
/// detector broken, and the breaker ejects nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Panic {
    pub healthy: usize,
    pub judged: usize,
    pub threshold_percent: u32,
}

impl fmt::Display for Panic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} of {} judged pods healthy, fewer than panicThresholdPercent {}%: the problem looks fleet-wide, nothing is ejected",
            self.healthy, self.judged, self.threshold_percent
        )
    }
}

/// A pod to take out of traffic; its `Display` is the reason given in events and logs.
#[derive(Clone, Debug, PartialEq)]
pub struct Ejection {
    pub pod: String,
    pub breaker: String,
    /// The retry count to record: one more than before.
    pub retry_count: u32,
    /// What the detector found.
    pub evidence: Evidence,
    /// Pods serving once this ejection (and those before it in the plan) is done.
    pub serving_after: usize,
    pub ready_managed: usize,
    pub min_available: usize,
}

impl fmt::Display for Ejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "pod {} ejected by breaker {}: {}; {} of {} pods keep traffic (minimum {})",
            self.pod,
            self.breaker,
            self.evidence,
            self.serving_after,
            self.ready_managed,
            self.min_available
        )
    }
}

/// An anomalous pod that keeps its traffic; its `Display` says why.
#[derive(Clone, Debug, PartialEq)]
pub struct Spared {
    pub pod: String,
    pub evidence: Evidence,
    pub reason: SpareReason,
}

/// Why an anomalous pod keeps its traffic.
#[derive(Clone, Debug, PartialEq)]
pub enum SpareReason {
    /// The detector named a pod the Service does not manage.
    NotManaged,
    /// The pod cannot be ejected (not Ready, already out, ...).
    NotCandidate(NotCandidate),
    /// Ejecting it would leave fewer pods with traffic than the floor.
    Floor {
        min_available: usize,
        ready_managed: usize,
        limits: MinAvailable,
    },
    /// The breaker is in panic: it ejects nothing.
    Panic(Panic),
    /// `maxEjectionsPerEvaluation` pods were ejected already by this evaluation.
    RateLimited { max: u32 },
}

impl fmt::Display for Spared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.reason {
            SpareReason::NotManaged => write!(
                f,
                "{}, but it is not a managed pod of this Service",
                self.evidence
            ),
            SpareReason::NotCandidate(why) => {
                write!(f, "{}, but not ejected: {why}", self.evidence)
            }
            SpareReason::Floor {
                min_available,
                ready_managed,
                limits,
            } => write!(
                f,
                "{}, but not ejected: {min_available} of {ready_managed} pods must keep traffic (minPodsAvailableCount {}, minPodsAvailableRatio {}%)",
                self.evidence, limits.count, limits.ratio_percent
            ),
            SpareReason::Panic(panic) => write!(f, "{}, but not ejected: {panic}", self.evidence),
            SpareReason::RateLimited { max } => write!(
                f,
                "{}, but not ejected: maxEjectionsPerEvaluation {max} reached",
                self.evidence
            ),
        }
    }
}

impl EjectionPlan {
    /// The anomalous pods that keep traffic only because of the floor.
    pub fn spared_by_floor(&self) -> impl Iterator<Item = &Spared> {
        self.spared
            .iter()
            .filter(|s| matches!(s.reason, SpareReason::Floor { .. }))
    }
}

/// The outcome of one breaker evaluation.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EjectionPlan {
    pub ejections: Vec<Ejection>,
    pub spared: Vec<Spared>,
    /// Ready managed pods, whatever their traffic label.
    pub ready_managed: usize,
    /// Pods serving before the plan.
    pub serving: usize,
    /// Pods that must keep serving.
    pub min_available: usize,
    /// Set when the breaker refused to eject anything.
    pub panic: Option<Panic>,
}

impl EjectionPlan {
    /// Pods serving once the plan is carried out.
    pub fn serving_after(&self) -> usize {
        self.serving - self.ejections.len()
    }
}

/// Decides which anomalous pods the breaker `breaker` ejects.
///
/// Only Running, Ready pods labelled `traffic=yes` are candidates. At most
/// (serving − floor) pods are ejected, worst offenders first, ties broken by name.
pub fn plan_ejections(
    breaker: &str,
    limits: impl Into<Limits>,
    pods: &[PodView],
    findings: &Findings,
) -> EjectionPlan {
    let limits: Limits = limits.into();
    let ready_managed = pods.iter().filter(|p| p.is_serving_capable()).count();
    let serving = pods.iter().filter(|p| p.has_traffic()).count();
    let min_available = limits.min_available.floor(ready_managed);
    let by_floor = serving.saturating_sub(min_available);
    let mut budget = limits
        .max_per_evaluation
        .map_or(by_floor, |max| by_floor.min(max as usize));
    let mut plan = EjectionPlan {
        ready_managed,
        serving,
        min_available,
        panic: panic(limits.panic_threshold_percent, pods, findings),
        ..EjectionPlan::default()
    };
    let mut anomalies: Vec<&crate::detect::Anomaly> = findings.anomalies.iter().collect();
    anomalies.sort_by(|a, b| b.score.total_cmp(&a.score).then_with(|| a.pod.cmp(&b.pod)));
    let found = find_pods(pods, &anomalies);
    for (anomaly, pod) in anomalies.into_iter().zip(found) {
        let spare = |reason| Spared {
            pod: anomaly.pod.clone(),
            evidence: anomaly.evidence.clone(),
            reason,
        };
        let Some(pod) = pod else {
            plan.spared.push(spare(SpareReason::NotManaged));
            continue;
        };
        if let Some(why) = pod.not_a_candidate() {
            plan.spared.push(spare(SpareReason::NotCandidate(why)));
            continue;
        }
        if let Some(panic) = plan.panic {
            plan.spared.push(spare(SpareReason::Panic(panic)));
            continue;
        }
        if budget == 0 {
            plan.spared.push(spare(match limits.max_per_evaluation {
                Some(max) if plan.ejections.len() >= max as usize => {
                    SpareReason::RateLimited { max }
                }
                _ => SpareReason::Floor {
                    min_available,
                    ready_managed,
                    limits: limits.min_available,
                },
            }));
            continue;
        }
        budget -= 1;
        plan.ejections.push(Ejection {
            pod: pod.name.clone(),
            breaker: breaker.to_string(),
            retry_count: pod.marks.retries().unwrap_or(0).saturating_add(1),
            evidence: anomaly.evidence.clone(),
            serving_after: serving - plan.ejections.len() - 1,
            ready_managed,
            min_available,
        });
    }
    plan
}

/// The pod each anomaly names, in the anomalies' order (`None` for a pod not in `pods`).
///
/// A few anomalies (most evaluations have none) are found by scanning the pods. More are
/// put in a map that one pass over the pods fills: the map is as large as the anomalies,
/// not the fleet, which at 50,000 pods saves building a 50,000-entry table per evaluation.
fn find_pods<'p>(
    pods: &'p [PodView],
    anomalies: &[&crate::detect::Anomaly],
) -> Vec<Option<&'p PodView>> {
    if anomalies.len() <= 8 {
        return anomalies
            .iter()
            .map(|a| pods.iter().find(|p| p.name == a.pod))
            .collect();
    }
    // Each name's first anomaly holds the pod found for every anomaly of that name.
    let mut wanted: std::collections::HashMap<&str, usize> =
        std::collections::HashMap::with_capacity(anomalies.len());
    for (i, anomaly) in anomalies.iter().enumerate() {
        wanted.entry(anomaly.pod.as_str()).or_insert(i);
    }
    let mut found = vec![None; anomalies.len()];
    for pod in pods {
        if let Some(&i) = wanted.get(pod.name.as_str()) {
            // The first pod of a name, as the scan finds it.
            found[i].get_or_insert(pod);
        }
    }
    anomalies
        .iter()
        .map(|anomaly| found[wanted[anomaly.pod.as_str()]])
        .collect()
}

/// Whether fewer than `threshold_percent` of the judged pods are healthy.
///
/// Judged pods are those the detector gave a verdict on; a custom detector names only
/// anomalous pods, so there every other serving-capable pod counts as judged healthy.
fn panic(threshold_percent: u32, pods: &[PodView], findings: &Findings) -> Option<Panic> {
    if threshold_percent == 0 {
        return None;
    }
    let (healthy, judged) = if findings.unlisted_are_healthy {
        let anomalous: std::collections::HashSet<&str> =
            findings.anomalies.iter().map(|a| a.pod.as_str()).collect();
        let capable: Vec<&PodView> = pods.iter().filter(|p| p.is_serving_capable()).collect();
        let healthy = capable
            .iter()
            .filter(|p| !anomalous.contains(p.name.as_str()))
            .count();
        (healthy, capable.len())
    } else {
        let healthy = findings.healthy.len();
        (healthy, healthy + findings.anomalies.len())
    };
    let below = judged > 0 && (healthy as u64) * 100 < u64::from(threshold_percent) * judged as u64;
    below.then_some(Panic {
        healthy,
        judged,
        threshold_percent,
    })
}

#[cfg(test)]
mod tests {
    use kubervisor_api::pod::Traffic;

    use super::*;
    use crate::detect::{self, Anomaly};
    use crate::pod::fixtures::pod;

    fn fleet(n: usize) -> Vec<PodView> {
        (0..n)
            .map(|i| pod(&format!("p{i}"), Traffic::Yes))
            .collect()
    }

    fn reported(names: &[&str]) -> Findings {
        detect::custom(&names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
    }

    fn ejected(plan: &EjectionPlan) -> Vec<&str> {
        plan.ejections.iter().map(|e| e.pod.as_str()).collect()
    }

    const COUNT_3: MinAvailable = MinAvailable {
        count: 3,
        ratio_percent: 0,
    };

    #[test]
    fn two_of_five_faulty_with_min_three_ejects_two() {
        let plan = plan_ejections("custom", COUNT_3, &fleet(5), &reported(&["p1", "p3"]));
        assert_eq!(ejected(&plan), ["p1", "p3"]);
        assert_eq!(plan.serving_after(), 3);
        assert!(plan.spared.is_empty());
        assert_eq!(
            plan.ejections[0].to_string(),
            "pod p1 ejected by breaker custom: reported by the custom detector; 4 of 5 pods keep traffic (minimum 3)"
        );
    }

    #[test]
    fn four_of_five_faulty_with_ratio_fifty_ejects_only_two() {
        let limits = MinAvailable {
            count: 1,
            ratio_percent: 50,
        };
        let plan = plan_ejections("r", limits, &fleet(5), &reported(&["p0", "p1", "p2", "p3"]));
        // ceil(5 × 50%) = 3 must keep traffic.
        assert_eq!(plan.min_available, 3);
        assert_eq!(ejected(&plan), ["p0", "p1"]);
        assert_eq!(plan.spared.len(), 2);
        assert!(
            plan.spared[0]
                .to_string()
                .contains("3 of 5 pods must keep traffic")
        );
    }

    #[test]
    fn ratio_floor_is_computed_on_all_ready_pods_so_it_does_not_erode() {
        let limits = MinAvailable {
            count: 1,
            ratio_percent: 50,
        };
        let mut pods = fleet(5);
        pods[0] = pod("p0", Traffic::No);
        pods[1] = pod("p1", Traffic::No);
        // Two already out; 3 serve and the floor is still 3: nothing more goes.
        let plan = plan_ejections("r", limits, &pods, &reported(&["p2", "p3", "p4"]));
        assert!(plan.ejections.is_empty());
        assert_eq!(plan.min_available, 3);
    }

    #[test]
    fn worst_offender_is_ejected_first_when_budget_is_short() {
        let rule = kubervisor_api::ContinuousRule {
            prometheus_service: "p:1".into(),
            promql: "q".into(),
            pod_name_key: "pod".into(),
            max_deviation_percent: 10.0,
        };
        let samples: Vec<detect::ContinuousSample> = [("p0", 1.5), ("p1", 3.0), ("p2", 1.0)]
            .iter()
            .map(|(pod, value)| detect::ContinuousSample {
                pod: pod.to_string(),
                value: *value,
            })
            .collect();
        let findings = detect::continuous(&rule, &samples);
        let plan = plan_ejections(
            "price",
            MinAvailable {
                count: 2,
                ratio_percent: 0,
            },
            &fleet(3),
            &findings,
        );
        assert_eq!(ejected(&plan), ["p1"]);
    }

    #[test]
    fn pods_not_ready_not_running_terminating_or_not_serving_are_not_candidates() {
        let mut pods = fleet(6);
        pods[0].ready = false;
        pods[1].running = false;
        pods[2].terminating = true;
        pods[3] = pod("p3", Traffic::Pause);
        let all = reported(&["p0", "p1", "p2", "p3", "ghost"]);
        let plan = plan_ejections(
            "b",
            MinAvailable {
                count: 0,
                ratio_percent: 0,
            },
            &pods,
            &all,
        );
        assert!(plan.ejections.is_empty());
        let reasons: Vec<(&str, String)> = plan
            .spared
            .iter()
            .map(|s| (s.pod.as_str(), s.to_string()))
            .collect();
        assert_eq!(reasons.len(), 5);
        for (pod, expected) in [
            ("p0", "not Ready"),
            ("p1", "not Running"),
            ("p2", "terminating"),
            ("p3", "traffic=pause"),
            ("ghost", "not a managed pod"),
        ] {
            let (_, reason) = reasons.iter().find(|(p, _)| *p == pod).unwrap();
            assert!(reason.contains(expected), "{pod}: {reason}");
        }
    }

    #[test]
    fn ejection_counts_one_more_retry() {
        let mut pods = fleet(3);
        pods[0].marks.retry_count = Some(Ok(2));
        let plan = plan_ejections(
            "b",
            MinAvailable {
                count: 1,
                ratio_percent: 0,
            },
            &pods,
            &reported(&["p0", "p1"]),
        );
        assert_eq!(plan.ejections[0].retry_count, 3);
        assert_eq!(plan.ejections[1].retry_count, 1);
    }

    #[test]
    fn floor_rounds_the_ratio_up_and_takes_the_larger_limit() {
        let limits = |count, ratio_percent| MinAvailable {
            count,
            ratio_percent,
        };
        assert_eq!(limits(1, 50).floor(5), 3);
        assert_eq!(limits(1, 34).floor(3), 2);
        assert_eq!(limits(4, 10).floor(10), 4);
        assert_eq!(limits(0, 0).floor(10), 0);
        assert_eq!(limits(0, 100).floor(7), 7);
        assert_eq!(limits(1, 0).floor(0), 1);
    }

    #[test]
    fn anomalies_given_out_of_order_are_still_ejected_by_score_then_name() {
        let findings = Findings {
            anomalies: vec![
                Anomaly {
                    pod: "p2".into(),
                    score: 0.9,
                    evidence: Evidence::Reported,
                },
                Anomaly {
                    pod: "p0".into(),
                    score: 0.9,
                    evidence: Evidence::Reported,
                },
            ],
            ..Findings::default()
        };
        let plan = plan_ejections(
            "b",
            MinAvailable {
                count: 2,
                ratio_percent: 0,
            },
            &fleet(3),
            &findings,
        );
        assert_eq!(ejected(&plan), ["p0"]);
    }

    proptest::proptest! {
        /// Past a few anomalies the pods are found through a map: it must find what a scan
        /// of the pods finds, for names that are missing or given twice too.
        #[test]
        fn anomalies_find_the_pods_a_scan_finds(
            fleet_size in 0usize..40,
            named in proptest::collection::vec(0usize..50, 0..40),
        ) {
            let pods = fleet(fleet_size);
            let anomalies: Vec<Anomaly> = named
                .iter()
                .map(|i| Anomaly {
                    pod: format!("p{i}"),
                    score: 1.0,
                    evidence: detect::Evidence::Reported,
                })
                .collect();
            let anomalies: Vec<&Anomaly> = anomalies.iter().collect();
            let scanned: Vec<Option<&str>> = anomalies
                .iter()
                .map(|a| pods.iter().find(|p| p.name == a.pod).map(|p| p.name.as_str()))
                .collect();
            let found: Vec<Option<&str>> = find_pods(&pods, &anomalies)
                .into_iter()
                .map(|p| p.map(|p| p.name.as_str()))
                .collect();
            proptest::prop_assert_eq!(found, scanned);
        }
    }
}
