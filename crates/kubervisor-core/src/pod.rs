use std::fmt;

use kubervisor_api::pod::{PodMarks, Traffic};

/// What the decision engine knows of one managed pod.
#[derive(Clone, Debug, PartialEq)]
pub struct PodView {
    pub name: String,
    /// `status.phase` is `Running`.
    pub running: bool,
    /// The `Ready` condition is `True`.
    pub ready: bool,
    /// `metadata.deletionTimestamp` is set: the pod is going away.
    pub terminating: bool,
    pub marks: PodMarks,
}

impl PodView {
    /// Running, Ready and not terminating: the pod can serve if it has traffic.
    pub fn is_serving_capable(&self) -> bool {
        self.running && self.ready && !self.terminating
    }

    /// Serving-capable and labelled `traffic=yes`: it serves now, and a breaker may eject it.
    pub fn has_traffic(&self) -> bool {
        self.is_serving_capable() && self.marks.traffic() == Some(Traffic::Yes)
    }

    /// Why a breaker may not eject this pod, or `None` when it may.
    pub fn not_a_candidate(&self) -> Option<NotCandidate> {
        if self.terminating {
            Some(NotCandidate::Terminating)
        } else if !self.running {
            Some(NotCandidate::NotRunning)
        } else if !self.ready {
            Some(NotCandidate::NotReady)
        } else if let Some(why) = self.marks.unknown_reason() {
            Some(NotCandidate::UnknownMarks(why))
        } else {
            self.marks
                .traffic()
                .filter(|t| *t != Traffic::Yes)
                .map(NotCandidate::Traffic)
        }
    }
}

/// Why a pod cannot be ejected whatever its findings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NotCandidate {
    Terminating,
    NotRunning,
    NotReady,
    /// Its Kubervisor marks cannot be read; the text says which.
    UnknownMarks(String),
    /// It already has no traffic or is paused.
    Traffic(Traffic),
}

impl fmt::Display for NotCandidate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NotCandidate::Terminating => f.write_str("pod is terminating"),
            NotCandidate::NotRunning => f.write_str("pod is not Running"),
            NotCandidate::NotReady => f.write_str("pod is not Ready"),
            NotCandidate::UnknownMarks(why) => f.write_str(why),
            NotCandidate::Traffic(traffic) => write!(f, "pod already has traffic={traffic}"),
        }
    }
}

#[cfg(test)]
pub(crate) mod fixtures {
    use std::collections::BTreeMap;

    use jiff::Timestamp;
    use kubervisor_api::pod::*;

    use super::PodView;

    /// A Running, Ready pod with the given traffic label.
    pub fn pod(name: &str, traffic: Traffic) -> PodView {
        let labels: BTreeMap<String, String> =
            [(TRAFFIC_LABEL.to_string(), traffic.as_str().to_string())].into();
        PodView {
            name: name.to_string(),
            running: true,
            ready: true,
            terminating: false,
            marks: PodMarks::read(Some(&labels), None),
        }
    }

    /// A pod ejected at `at` by `breaker`, `retries` times so far.
    pub fn ejected(name: &str, breaker: &str, at: Timestamp, retries: u32) -> PodView {
        let labels: BTreeMap<String, String> = [
            (TRAFFIC_LABEL.to_string(), "no".to_string()),
            (STRATEGY_LABEL.to_string(), breaker.to_string()),
        ]
        .into();
        let annotations: BTreeMap<String, String> = [
            (BREAK_AT_ANNOTATION.to_string(), format_break_at(at)),
            (RETRY_COUNT_ANNOTATION.to_string(), retries.to_string()),
        ]
        .into();
        PodView {
            name: name.to_string(),
            running: true,
            ready: true,
            terminating: false,
            marks: PodMarks::read(Some(&labels), Some(&annotations)),
        }
    }
}
