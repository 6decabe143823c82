//! The pod contract: the labels and annotations through which every Kubervisor
//! component (operator, plugin, demo) reads and writes a pod's traffic state.

use std::collections::BTreeMap;
use std::fmt;

use jiff::Timestamp;

/// `yes`, `no` or `pause`; Services guarded by Kubervisor select `yes`.
pub const TRAFFIC_LABEL: &str = "kubervisor/traffic";
/// Name of the KubervisorService that manages the pod.
pub const NAME_LABEL: &str = "kubervisor/name";
/// Name of the breaker that ejected the pod.
pub const STRATEGY_LABEL: &str = "kubervisor/strategy";
/// When the pod was last ejected, RFC 3339.
pub const BREAK_AT_ANNOTATION: &str = "breaker/breakAt";
/// How many times the pod has been ejected.
pub const RETRY_COUNT_ANNOTATION: &str = "breaker/retryCount";
/// The pod condition, and readiness gate, through which Kubervisor takes a pod out of
/// traffic in readiness-gate mode (`spec.trafficControl: readinessGate`). In that mode the
/// traffic state and the breaker are annotations (`kubervisor/traffic`,
/// `kubervisor/strategy`), so that no label changes when a pod is ejected.
pub const TRAFFIC_CONDITION: &str = "kubervisor.k8s.io/traffic";

/// The values of the traffic label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Traffic {
    /// The pod receives traffic.
    Yes,
    /// The pod was ejected by a breaker.
    No,
    /// The pod is parked for investigation; nothing brings it back automatically.
    Pause,
}

impl Traffic {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Traffic::Yes => "yes",
            Traffic::No => "no",
            Traffic::Pause => "pause",
        }
    }

    /// Parses a label value; anything else is `None`.
    pub fn parse(value: &str) -> Option<Traffic> {
        match value {
            "yes" => Some(Traffic::Yes),
            "no" => Some(Traffic::No),
            "pause" => Some(Traffic::Pause),
            _ => None,
        }
    }
}

impl fmt::Display for Traffic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Kubervisor's marks on one pod, read leniently: a malformed value is kept as an
/// error message so the pod is reported as unknown instead of breaking anything.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct PodMarks {
    /// `None` when the label is absent.
    pub traffic: Option<Result<Traffic, String>>,
    /// The KubervisorService named by `kubervisor/name`.
    pub owner: Option<String>,
    /// The breaker named by `kubervisor/strategy`.
    pub strategy: Option<String>,
    /// `None` when the annotation is absent.
    pub break_at: Option<Result<Timestamp, String>>,
    /// `None` when the annotation is absent.
    pub retry_count: Option<Result<u32, String>>,
    /// Where the traffic state and the breaker were read.
    pub marks_in: MarksIn,
}

/// Where a pod's traffic state and breaker are kept: labels (the Service selects
/// `kubervisor/traffic: yes`), or annotations mirrored in the pod condition
/// `kubervisor.k8s.io/traffic` (readiness-gate mode).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum MarksIn {
    #[default]
    Labels,
    Annotations,
}

impl MarksIn {
    pub fn as_str(self) -> &'static str {
        match self {
            MarksIn::Labels => "label",
            MarksIn::Annotations => "annotation",
        }
    }
}

/// A map of strings the pod contract can be read from: a pod's labels or annotations as
/// the API gives them, or as a consumer keeps them.
pub trait StrMap {
    fn get_str(&self, key: &str) -> Option<&str>;
}

impl StrMap for BTreeMap<String, String> {
    fn get_str(&self, key: &str) -> Option<&str> {
        self.get(key).map(String::as_str)
    }
}

impl PodMarks {
    /// Reads the marks from a pod's labels and annotations.
    pub fn read(
        labels: Option<&BTreeMap<String, String>>,
        annotations: Option<&BTreeMap<String, String>>,
    ) -> PodMarks {
        PodMarks::read_in(MarksIn::Labels, labels, annotations)
    }

    /// Reads the marks with the traffic state and the breaker where `marks_in` says.
    pub fn read_in<M: StrMap>(
        marks_in: MarksIn,
        labels: Option<&M>,
        annotations: Option<&M>,
    ) -> PodMarks {
        let label = |key: &str| labels.and_then(|l| l.get_str(key));
        let annotation = |key: &str| annotations.and_then(|a| a.get_str(key));
        let kind = marks_in.as_str();
        let state_map = match marks_in {
            MarksIn::Labels => labels,
            MarksIn::Annotations => annotations,
        };
        let state = |key: &str| state_map.and_then(|m| m.get_str(key));
        PodMarks {
            traffic: state(TRAFFIC_LABEL).map(|v| {
                Traffic::parse(v).ok_or_else(|| {
                    format!("{kind} {TRAFFIC_LABEL}={v:?} is not one of yes, no, pause")
                })
            }),
            owner: label(NAME_LABEL).map(str::to_string),
            strategy: state(STRATEGY_LABEL).map(str::to_string),
            marks_in,
            break_at: annotation(BREAK_AT_ANNOTATION).map(|v| {
                v.parse::<Timestamp>().map_err(|e| {
                    format!("annotation {BREAK_AT_ANNOTATION}={v:?} is not an RFC 3339 time: {e}")
                })
            }),
            retry_count: annotation(RETRY_COUNT_ANNOTATION).map(|v| {
                v.parse::<u32>().map_err(|_| {
                    format!(
                        "annotation {RETRY_COUNT_ANNOTATION}={v:?} is not a non-negative integer"
                    )
                })
            }),
        }
    }

    /// The traffic state when the label is present and valid.
    pub fn traffic(&self) -> Option<Traffic> {
        self.traffic.as_ref().and_then(|t| t.as_ref().ok().copied())
    }

    /// The retry count, 0 when absent; `None` when malformed.
    pub fn retries(&self) -> Option<u32> {
        match &self.retry_count {
            None => Some(0),
            Some(Ok(n)) => Some(*n),
            Some(Err(_)) => None,
        }
    }

    /// Why the pod's state cannot be told, if it cannot: a missing or malformed traffic
    /// label, or an ejected pod whose ejection time or retry count is unreadable.
    pub fn unknown_reason(&self) -> Option<String> {
        match &self.traffic {
            None => Some(format!(
                "{} {TRAFFIC_LABEL} is missing",
                self.marks_in.as_str()
            )),
            Some(Err(why)) => Some(why.clone()),
            Some(Ok(Traffic::Yes)) => None,
            Some(Ok(Traffic::No | Traffic::Pause)) => {
                if let Some(Err(why)) = &self.retry_count {
                    return Some(why.clone());
                }
                match &self.break_at {
                    Some(Err(why)) => Some(why.clone()),
                    None if self.traffic() == Some(Traffic::No) => {
                        Some(format!("annotation {BREAK_AT_ANNOTATION} is missing"))
                    }
                    _ => None,
                }
            }
        }
    }
}

/// Formats a time the way `breaker/breakAt` stores it: RFC 3339 in UTC, whole seconds
/// or finer, so that the value sorts and parses everywhere.
/// The selector of the pods a KubervisorService manages: its Service's selector without
/// the traffic requirement Kubervisor itself toggles. `None` when that leaves nothing
/// (a Service without selector, or one that selects only on the traffic label).
pub fn managed_selector(
    service_selector: Option<&BTreeMap<String, String>>,
) -> Option<BTreeMap<String, String>> {
    let mut selector = service_selector?.clone();
    selector.remove(TRAFFIC_LABEL);
    (!selector.is_empty()).then_some(selector)
}

pub fn format_break_at(at: Timestamp) -> String {
    at.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn well_formed_ejected_pod_reads_back() {
        let labels = map(&[
            (TRAFFIC_LABEL, "no"),
            (NAME_LABEL, "web"),
            (STRATEGY_LABEL, "errors"),
        ]);
        let annotations = map(&[
            (BREAK_AT_ANNOTATION, "2026-11-25T10:00:00Z"),
            (RETRY_COUNT_ANNOTATION, "2"),
        ]);
        let marks = PodMarks::read(Some(&labels), Some(&annotations));
        assert_eq!(marks.traffic(), Some(Traffic::No));
        assert_eq!(marks.owner.as_deref(), Some("web"));
        assert_eq!(marks.strategy.as_deref(), Some("errors"));
        assert_eq!(
            marks.break_at,
            Some(Ok("2026-11-25T10:00:00Z".parse().unwrap()))
        );
        assert_eq!(marks.retries(), Some(2));
        assert_eq!(marks.unknown_reason(), None);
    }

    #[test]
    fn malformed_values_make_the_pod_unknown_with_a_reason() {
        let cases = [
            (
                map(&[(TRAFFIC_LABEL, "maybe")]),
                map(&[]),
                "is not one of yes, no, pause",
            ),
            (map(&[]), map(&[]), "is missing"),
            (
                map(&[(TRAFFIC_LABEL, "no")]),
                map(&[(BREAK_AT_ANNOTATION, "yesterday")]),
                "is not an RFC 3339 time",
            ),
            (
                map(&[(TRAFFIC_LABEL, "no")]),
                map(&[
                    (BREAK_AT_ANNOTATION, "2026-11-25T10:00:00Z"),
                    (RETRY_COUNT_ANNOTATION, "-1"),
                ]),
                "is not a non-negative integer",
            ),
            (
                map(&[(TRAFFIC_LABEL, "no")]),
                map(&[]),
                "breaker/breakAt is missing",
            ),
        ];
        for (labels, annotations, expected) in cases {
            let marks = PodMarks::read(Some(&labels), Some(&annotations));
            let reason = marks.unknown_reason().expect("unknown");
            assert!(reason.contains(expected), "{reason:?} lacks {expected:?}");
        }
    }

    #[test]
    fn pods_without_any_metadata_maps_are_unknown_not_a_crash() {
        let marks = PodMarks::read(None, None);
        assert_eq!(marks.traffic(), None);
        assert_eq!(marks.retries(), Some(0));
        assert!(marks.unknown_reason().is_some());
    }

    #[test]
    fn break_at_format_parses_back() {
        let now: Timestamp = "2026-11-25T10:00:00.5Z".parse().unwrap();
        assert_eq!(format_break_at(now).parse::<Timestamp>().unwrap(), now);
    }

    #[test]
    fn managed_selector_drops_the_traffic_requirement_and_refuses_an_empty_one() {
        let sel = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let service = sel(&[("app", "web"), (TRAFFIC_LABEL, "yes")]);
        assert_eq!(
            managed_selector(Some(&service)),
            Some(sel(&[("app", "web")]))
        );
        assert_eq!(
            managed_selector(Some(&sel(&[(TRAFFIC_LABEL, "yes")]))),
            None
        );
        assert_eq!(managed_selector(None), None);
    }
}
