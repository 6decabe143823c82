//! Manual actions on one pod, for on-call engineers: eject, restore, pause, unpause.
//!
//! Each is a JSON Patch whose `test` operations are the state the decision was made on,
//! exactly like the operator's own writes, so a pod changed meanwhile (by the operator,
//! another person) is never overwritten. Taking a pod out of traffic is refused when it
//! would leave fewer pods serving than the floor of the KubervisorService, unless forced.

use std::fmt;

use jiff::Timestamp;
use json_patch::PatchOperation;
use k8s_openapi::api::core::v1::Pod;
use kubervisor_api::patch::{add, annotation, label, path, replace, test, test_resource_version};
use kubervisor_api::pod::{
    BREAK_AT_ANNOTATION, MarksIn, PodMarks, RETRY_COUNT_ANNOTATION, STRATEGY_LABEL, TRAFFIC_LABEL,
    Traffic, format_break_at,
};
use kubervisor_api::{ResolvedSpec, TrafficControl};
use serde_json::Value;

use crate::error::PluginError;

/// The breaker name a manual ejection records (`kubervisor/strategy`); the default
/// activator brings such a pod back.
pub const MANUAL: &str = "manual";

/// What an on-call engineer asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// `yes` → `no`: out of traffic until the activator's period has passed.
    Eject,
    /// `no` → `yes`, retry count kept.
    Restore,
    /// `yes` or `no` → `pause`: parked until someone unpauses it.
    Pause,
    /// `pause` → `yes`.
    Unpause,
}

impl Action {
    fn allowed_from(self) -> &'static [Traffic] {
        match self {
            Action::Eject => &[Traffic::Yes],
            Action::Restore => &[Traffic::No],
            Action::Pause => &[Traffic::Yes, Traffic::No],
            Action::Unpause => &[Traffic::Pause],
        }
    }

    fn to(self) -> Traffic {
        match self {
            Action::Eject => Traffic::No,
            Action::Restore | Action::Unpause => Traffic::Yes,
            Action::Pause => Traffic::Pause,
        }
    }

    pub fn command(self) -> &'static str {
        match self {
            Action::Eject => "eject",
            Action::Restore => "restore",
            Action::Pause => "pause",
            Action::Unpause => "unpause",
        }
    }

    /// The past participle, for messages.
    pub fn done(self) -> &'static str {
        match self {
            Action::Eject => "ejected",
            Action::Restore => "restored",
            Action::Pause => "paused",
            Action::Unpause => "unpaused",
        }
    }

    /// The reason of the Event that records it.
    pub fn reason(self) -> &'static str {
        match self {
            Action::Eject => "ManualEject",
            Action::Restore => "ManualRestore",
            Action::Pause => "ManualPause",
            Action::Unpause => "ManualUnpause",
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.command())
    }
}

/// Where pods' traffic state is kept for this spec.
pub fn marks_in(spec: &ResolvedSpec) -> MarksIn {
    match spec.traffic_control {
        TrafficControl::Label => MarksIn::Labels,
        TrafficControl::ReadinessGate => MarksIn::Annotations,
    }
}

/// The fleet as the floor sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fleet {
    /// Ready (in readiness-gate mode: containers ready), non-terminating pods with traffic.
    pub serving: usize,
    /// The highest floor of the resource's breakers.
    pub floor: usize,
}

/// What the pod's readiness counts as, in this mode.
fn is_ready(pod: &Pod, marks_in: MarksIn) -> bool {
    let condition = match marks_in {
        MarksIn::Labels => "Ready",
        MarksIn::Annotations => "ContainersReady",
    };
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == condition && c.status == "True"))
}

fn marks(pod: &Pod, marks_in: MarksIn) -> PodMarks {
    PodMarks::read_in(
        marks_in,
        pod.metadata.labels.as_ref(),
        pod.metadata.annotations.as_ref(),
    )
}

/// The floor and the serving count of the managed pods, as the breaker computes them.
pub fn fleet(spec: &ResolvedSpec, pods: &[Pod]) -> Fleet {
    let marks_in = marks_in(spec);
    let live = pods
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none() && is_ready(p, marks_in));
    let ready_managed = live.clone().count();
    let serving = live
        .filter(|p| marks(p, marks_in).traffic() == Some(Traffic::Yes))
        .count();
    let floor = spec
        .breakers
        .iter()
        .map(|b| {
            kubervisor_core::breaker::MinAvailable {
                count: b.min_pods_available_count,
                ratio_percent: b.min_pods_available_ratio,
            }
            .floor(ready_managed)
        })
        .max()
        .unwrap_or(0);
    Fleet { serving, floor }
}

/// The write of `action` on `pod`, or why not.
pub fn plan(
    action: Action,
    pod: &Pod,
    spec: &ResolvedSpec,
    fleet: Fleet,
    force: bool,
    now: Timestamp,
) -> Result<Vec<PatchOperation>, PluginError> {
    let name = pod.metadata.name.as_deref().unwrap_or_default();
    let marks_in = marks_in(spec);
    let where_ = marks_in.as_str();
    let marks = marks(pod, marks_in);
    let from = match &marks.traffic {
        Some(Ok(traffic)) => *traffic,
        Some(Err(why)) => return Err(PluginError::Refused(format!("pod {name:?}: {why}"))),
        None => {
            return Err(PluginError::Refused(format!(
                "pod {name:?} has no {where_} {TRAFFIC_LABEL}: Kubervisor has not adopted it yet"
            )));
        }
    };
    if !action.allowed_from().contains(&from) {
        let allowed: Vec<&str> = action.allowed_from().iter().map(|t| t.as_str()).collect();
        return Err(PluginError::Refused(format!(
            "pod {name:?} has {where_} {TRAFFIC_LABEL}={from}; {action} needs {}",
            allowed.join(" or ")
        )));
    }
    let serves = from == Traffic::Yes && is_ready(pod, marks_in);
    if serves && action.to() != Traffic::Yes && fleet.serving <= fleet.floor && !force {
        return Err(PluginError::Refused(format!(
            "{action} of pod {name:?} refused: {} of the pods serve and the floor is {}, so one fewer would break it; use --force to {action} anyway",
            fleet.serving, fleet.floor
        )));
    }
    let state = |key: &str| match marks_in {
        MarksIn::Labels => label(key),
        MarksIn::Annotations => annotation(key),
    };
    let mut ops = vec![
        test(state(TRAFFIC_LABEL), from.as_str()),
        replace(state(TRAFFIC_LABEL), action.to().as_str()),
    ];
    let annotations = pod.metadata.annotations.as_ref();
    match action {
        Action::Eject => {
            ops.push(add(state(STRATEGY_LABEL), MANUAL));
            let retries = marks.retries().unwrap_or(0).to_string();
            let pairs = [
                (BREAK_AT_ANNOTATION, format_break_at(now)),
                (RETRY_COUNT_ANNOTATION, retries),
            ];
            if annotations.is_some_and(|a| !a.is_empty()) {
                for (key, value) in pairs {
                    ops.push(add(annotation(key), value));
                }
            } else {
                // Creating the map is only safe if nothing was added meanwhile.
                ops.insert(
                    0,
                    test_resource_version(pod.metadata.resource_version.as_deref().unwrap_or("")),
                );
                let map: serde_json::Map<String, Value> = pairs
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), Value::String(v)))
                    .collect();
                ops.push(add(path(["metadata", "annotations"]), map));
            }
        }
        Action::Restore => {
            // Only the same ejection: a newer one has a new breakAt.
            if let Some(at) = annotations.and_then(|a| a.get(BREAK_AT_ANNOTATION)) {
                ops.insert(1, test(annotation(BREAK_AT_ANNOTATION), at.as_str()));
            }
        }
        Action::Pause | Action::Unpause => {}
    }
    Ok(ops)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(gate: bool) -> ResolvedSpec {
        let mut spec: kubervisor_api::KubervisorServiceSpec = serde_json::from_value(json!({
            "service": "web",
            "breakers": [{"name": "errors", "minPodsAvailableCount": 2, "minPodsAvailableRatio": 50,
                          "customService": "detector:8080"}],
        }))
        .unwrap();
        if gate {
            spec.traffic_control = Some(TrafficControl::ReadinessGate);
        }
        spec.resolve().unwrap()
    }

    fn pod(name: &str, traffic: &str, ready: bool) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name, "resourceVersion": "7",
                         "labels": {"app": "web", "kubervisor/traffic": traffic, "kubervisor/name": "web"}},
            "status": {"conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]},
        }))
        .unwrap()
    }

    fn now() -> Timestamp {
        "2026-11-25T10:00:00Z".parse().unwrap()
    }

    fn refusal(result: Result<Vec<PatchOperation>, PluginError>) -> String {
        match result {
            Err(PluginError::Refused(why)) => why,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn the_floor_is_the_breakers_and_counts_serving_ready_pods() {
        let pods = [
            pod("a", "yes", true),
            pod("b", "yes", true),
            pod("c", "no", true),
            pod("d", "yes", false),
        ];
        // m = 3 Ready pods: max(2, ⌈3 × 50 %⌉) = 2; a and b serve.
        assert_eq!(
            fleet(&spec(false), &pods),
            Fleet {
                serving: 2,
                floor: 2
            }
        );
    }

    #[test]
    fn eject_tests_the_state_it_read_and_records_a_manual_ejection() {
        let fleet = Fleet {
            serving: 3,
            floor: 2,
        };
        let ops = plan(
            Action::Eject,
            &pod("a", "yes", true),
            &spec(false),
            fleet,
            false,
            now(),
        )
        .unwrap();
        let patch = serde_json::to_value(&ops).unwrap();
        assert_eq!(
            patch[0],
            json!({"op": "test", "path": "/metadata/resourceVersion", "value": "7"})
        );
        assert_eq!(
            patch[1],
            json!({"op": "test", "path": "/metadata/labels/kubervisor~1traffic", "value": "yes"})
        );
        assert_eq!(
            patch[2],
            json!({"op": "replace", "path": "/metadata/labels/kubervisor~1traffic", "value": "no"})
        );
        assert_eq!(
            patch[3],
            json!({"op": "add", "path": "/metadata/labels/kubervisor~1strategy", "value": "manual"})
        );
        assert_eq!(
            patch[4]["value"],
            json!({"breaker/breakAt": "2026-11-25T10:00:00Z", "breaker/retryCount": "0"})
        );
    }

    #[test]
    fn taking_a_serving_pod_out_at_the_floor_is_refused_unless_forced() {
        let at_floor = Fleet {
            serving: 2,
            floor: 2,
        };
        for action in [Action::Eject, Action::Pause] {
            let why = refusal(plan(
                action,
                &pod("a", "yes", true),
                &spec(false),
                at_floor,
                false,
                now(),
            ));
            assert!(
                why.contains("2 of the pods serve and the floor is 2"),
                "{why}"
            );
            assert!(why.contains("--force"), "{why}");
            assert!(
                plan(
                    action,
                    &pod("a", "yes", true),
                    &spec(false),
                    at_floor,
                    true,
                    now()
                )
                .is_ok()
            );
        }
        // An unready pod serves nobody: taking it out costs nothing.
        assert!(
            plan(
                Action::Eject,
                &pod("a", "yes", false),
                &spec(false),
                at_floor,
                false,
                now()
            )
            .is_ok()
        );
        // Pausing an ejected pod does not reduce the serving count either.
        assert!(
            plan(
                Action::Pause,
                &pod("a", "no", true),
                &spec(false),
                at_floor,
                false,
                now()
            )
            .is_ok()
        );
    }

    #[test]
    fn each_action_needs_its_starting_state() {
        let fleet = Fleet {
            serving: 5,
            floor: 1,
        };
        let why = refusal(plan(
            Action::Restore,
            &pod("a", "yes", true),
            &spec(false),
            fleet,
            false,
            now(),
        ));
        assert_eq!(
            why,
            "pod \"a\" has label kubervisor/traffic=yes; restore needs no"
        );
        let why = refusal(plan(
            Action::Unpause,
            &pod("a", "no", true),
            &spec(false),
            fleet,
            false,
            now(),
        ));
        assert_eq!(
            why,
            "pod \"a\" has label kubervisor/traffic=no; unpause needs pause"
        );
        let why = refusal(plan(
            Action::Eject,
            &pod("a", "pause", true),
            &spec(false),
            fleet,
            false,
            now(),
        ));
        assert_eq!(
            why,
            "pod \"a\" has label kubervisor/traffic=pause; eject needs yes"
        );
        let ops = plan(
            Action::Unpause,
            &pod("a", "pause", true),
            &spec(false),
            fleet,
            false,
            now(),
        )
        .unwrap();
        assert_eq!(ops.len(), 2);
    }

    #[test]
    fn readiness_gate_mode_writes_annotations() {
        let mut p = pod("a", "yes", true);
        p.metadata
            .labels
            .as_mut()
            .unwrap()
            .remove("kubervisor/traffic");
        p.metadata.annotations =
            Some([("kubervisor/traffic".to_string(), "yes".to_string())].into());
        p.status = serde_json::from_value(
            json!({"conditions": [{"type": "ContainersReady", "status": "True"}]}),
        )
        .unwrap();
        let ops = plan(
            Action::Eject,
            &p,
            &spec(true),
            Fleet {
                serving: 3,
                floor: 2,
            },
            false,
            now(),
        )
        .unwrap();
        let patch = serde_json::to_value(&ops).unwrap();
        assert_eq!(
            patch[1]["path"],
            "/metadata/annotations/kubervisor~1traffic"
        );
        assert_eq!(
            patch[2]["path"],
            "/metadata/annotations/kubervisor~1strategy"
        );
    }
}
