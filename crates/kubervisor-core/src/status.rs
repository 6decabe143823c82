//! Counts of managed pods by traffic state, for the resource's status and metrics.

use kubervisor_api::pod::Traffic;

use crate::PodView;

/// Managed pods by traffic state; `unknown` pods are counted in no other state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PodCounts {
    pub managed: u32,
    pub broken: u32,
    pub paused: u32,
    pub unknown: u32,
}

/// Counts the managed pods by traffic state; terminating pods still count as managed.
pub fn count(pods: &[PodView]) -> PodCounts {
    let mut counts = PodCounts::default();
    for pod in pods {
        counts.managed += 1;
        if pod.marks.unknown_reason().is_some() {
            counts.unknown += 1;
            continue;
        }
        match pod.marks.traffic() {
            Some(Traffic::No) => counts.broken += 1,
            Some(Traffic::Pause) => counts.paused += 1,
            _ => {}
        }
    }
    counts
}

#[cfg(test)]
mod tests {
    use jiff::Timestamp;

    use super::*;
    use crate::pod::fixtures::{ejected, pod};

    #[test]
    fn counts_each_pod_in_exactly_one_state() {
        let mut odd = pod("odd", Traffic::Yes);
        odd.marks.traffic = Some(Err("label kubervisor/traffic=\"maybe\"".into()));
        let pods = [
            pod("a", Traffic::Yes),
            pod("b", Traffic::Yes),
            ejected("c", "errors", Timestamp::UNIX_EPOCH, 1),
            pod("d", Traffic::Pause),
            odd,
        ];
        assert_eq!(
            count(&pods),
            PodCounts {
                managed: 5,
                broken: 1,
                paused: 1,
                unknown: 1
            }
        );
    }
}
