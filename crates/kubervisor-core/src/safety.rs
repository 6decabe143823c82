//! Rules that keep the floor a promise when pods are lost for reasons outside Kubervisor.

use std::fmt;

use jiff::Timestamp;
use kubervisor_api::ResolvedSpec;
use kubervisor_api::pod::Traffic;

use crate::PodView;
use crate::breaker::MinAvailable;

/// An ejected pod given its traffic back early, because fewer pods serve than the floor of
/// the breaker that ejected it.
#[derive(Clone, Debug, PartialEq)]
pub struct Restoration {
    pub pod: String,
    pub breaker: String,
    /// Pods serving before this restoration.
    pub serving: usize,
    pub floor: usize,
    pub ready_managed: usize,
}

impl fmt::Display for Restoration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "pod {} re-admitted early: {} of {} pods serve, fewer than the floor {} of breaker {}",
            self.pod, self.serving, self.ready_managed, self.floor, self.breaker
        )
    }
}

/// The floor of `breaker` over `ready_managed` pods; a breaker no longer in the spec is
/// given the highest floor of those that are, so a pod it ejected is not kept out by less.
fn floor_of(spec: &ResolvedSpec, breaker: Option<&str>, ready_managed: usize) -> usize {
    let floor = |b: &kubervisor_api::ResolvedBreaker| {
        MinAvailable {
            count: b.min_pods_available_count,
            ratio_percent: b.min_pods_available_ratio,
        }
        .floor(ready_managed)
    };
    match breaker.and_then(|name| spec.breakers.iter().find(|b| b.name == name)) {
        Some(b) => floor(b),
        None => spec.breakers.iter().map(floor).max().unwrap_or(1),
    }
}

/// Which ejected pods get their traffic back now so that the floor holds again: while
/// fewer pods serve than the floor of the breaker that ejected a pod, that pod comes
/// back, those out the longest first (ties by name). Only pods able to serve (Running,
/// Ready, not terminating, readable marks) are restored; paused pods stay paused.
pub fn restore_floor(spec: &ResolvedSpec, pods: &[PodView]) -> Vec<Restoration> {
    let ready_managed = pods.iter().filter(|p| p.is_serving_capable()).count();
    let mut serving = pods.iter().filter(|p| p.has_traffic()).count();
    let mut ejected: Vec<(&PodView, Timestamp)> = pods
        .iter()
        .filter(|p| p.is_serving_capable() && p.marks.traffic() == Some(Traffic::No))
        .filter_map(|p| match &p.marks.break_at {
            Some(Ok(at)) if p.marks.unknown_reason().is_none() => Some((p, *at)),
            _ => None,
        })
        .collect();
    ejected.sort_by(|(a, at_a), (b, at_b)| at_a.cmp(at_b).then_with(|| a.name.cmp(&b.name)));
    let mut restored = Vec::new();
    for (pod, _) in ejected {
        let breaker = pod.marks.strategy.as_deref();
        let floor = floor_of(spec, breaker, ready_managed);
        if serving < floor {
            restored.push(Restoration {
                pod: pod.name.clone(),
                breaker: breaker.unwrap_or("unknown").to_string(),
                serving,
                floor,
                ready_managed,
            });
            serving += 1;
        }
    }
    restored
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use kubervisor_api::{CustomRule, Detection, ResolvedActivator, ResolvedBreaker};

    use super::*;
    use crate::pod::fixtures::{ejected, pod};

    fn t(secs: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + secs).unwrap()
    }

    fn spec(min_count: u32) -> ResolvedSpec {
        ResolvedSpec {
            service: "web".into(),
            breakers: vec![ResolvedBreaker {
                name: "b".into(),
                evaluation_period: Duration::from_secs(1),
                min_pods_available_count: min_count,
                min_pods_available_ratio: 0,
                detection: Detection::Custom(CustomRule { url: "x".into() }),
                activator: None,
                panic_threshold_percent: 0,
                max_ejections_per_evaluation: None,
                dry_run: false,
            }],
            default_activator: ResolvedActivator::default(),
            dry_run: false,
            traffic_control: Default::default(),
        }
    }

    fn names(restored: &[Restoration]) -> Vec<&str> {
        restored.iter().map(|r| r.pod.as_str()).collect()
    }

    #[test]
    fn six_pods_floor_four_two_out_two_unready_brings_both_back() {
        let mut pods = vec![
            ejected("e1", "b", t(10), 1),
            ejected("e2", "b", t(0), 1),
            pod("p1", Traffic::Yes),
            pod("p2", Traffic::Yes),
            pod("p3", Traffic::Yes),
            pod("p4", Traffic::Yes),
        ];
        assert!(
            restore_floor(&spec(4), &pods).is_empty(),
            "4 serve, floor 4"
        );
        pods[4].ready = false;
        pods[5].ready = false;
        let restored = restore_floor(&spec(4), &pods);
        // The one out the longest comes back first.
        assert_eq!(names(&restored), ["e2", "e1"]);
        assert_eq!(
            restored[0].to_string(),
            "pod e2 re-admitted early: 2 of 4 pods serve, fewer than the floor 4 of breaker b"
        );
    }

    #[test]
    fn only_as_many_as_the_floor_needs_and_never_paused_or_unready_pods() {
        let mut unready = ejected("e3", "b", t(0), 1);
        unready.ready = false;
        let pods = vec![
            ejected("e1", "b", t(5), 1),
            ejected("e2", "b", t(6), 1),
            unready,
            pod("z", Traffic::Pause),
            pod("p1", Traffic::Yes),
            pod("p2", Traffic::Yes),
        ];
        // 2 serve, floor 3: one comes back, the oldest able to serve.
        assert_eq!(names(&restore_floor(&spec(3), &pods)), ["e1"]);
    }
}
