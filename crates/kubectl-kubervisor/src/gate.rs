//! The Service side of Kubervisor: which pods it manages, and the selector change that
//! makes its decisions take effect (`kubervisor/traffic: yes` in the Service selector).

use std::collections::BTreeMap;

use json_patch::jsonptr::PointerBuf;
use k8s_openapi::api::core::v1::{Pod, Service};
use kubervisor_api::patch;
use kubervisor_api::pod::{MarksIn, PodMarks, TRAFFIC_LABEL, Traffic};

use crate::format;

/// The Service's selector, empty when it has none.
pub fn service_selector(service: &Service) -> BTreeMap<String, String> {
    service
        .spec
        .as_ref()
        .and_then(|s| s.selector.clone())
        .unwrap_or_default()
}

/// The selector of the managed pods, as the operator computes it; `None` when nothing is
/// left, since an empty selector would match every pod of the namespace.
pub fn managed_selector(service: &Service) -> Option<BTreeMap<String, String>> {
    kubervisor_api::pod::managed_selector(service.spec.as_ref()?.selector.as_ref())
}

/// A label selector string for the API (`a=1,b=2`).
pub fn label_selector(labels: &BTreeMap<String, String>) -> String {
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Whether the Service's selector already requires `kubervisor/traffic: yes`.
pub fn is_active(service: &Service) -> bool {
    service_selector(service)
        .get(TRAFFIC_LABEL)
        .map(String::as_str)
        == Some(Traffic::Yes.as_str())
}

/// `/spec/selector/kubervisor~1traffic`.
fn traffic_pointer() -> PointerBuf {
    patch::path(["spec", "selector", TRAFFIC_LABEL])
}

/// The selector as it was read, for the `test` that guards every selector change.
fn test_selector(current: &BTreeMap<String, String>) -> json_patch::PatchOperation {
    let value = serde_json::to_value(current).unwrap_or_default();
    patch::test(patch::path(["spec", "selector"]), value)
}

/// A JSON Patch adding `kubervisor/traffic: yes` to the selector; the `test` makes the
/// API server refuse it if someone changed the selector since we read it.
pub fn activation_patch(current: &BTreeMap<String, String>) -> json_patch::Patch {
    json_patch::Patch(vec![
        test_selector(current),
        patch::add(traffic_pointer(), Traffic::Yes.as_str()),
    ])
}

/// A JSON Patch removing `kubervisor/traffic` from the selector, guarded the same way.
pub fn deactivation_patch(current: &BTreeMap<String, String>) -> json_patch::Patch {
    json_patch::Patch(vec![
        test_selector(current),
        patch::remove(traffic_pointer()),
    ])
}

/// A managed pod that would stop receiving traffic once the Service selects `traffic=yes`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodLosingTraffic {
    pub name: String,
    /// The pod's traffic label, `None` when absent.
    pub traffic: Option<String>,
}

impl PodLosingTraffic {
    pub fn describe(&self) -> String {
        match &self.traffic {
            None => format!("{} (no {TRAFFIC_LABEL} label)", self.name),
            Some(value) => format!("{} ({TRAFFIC_LABEL}={value})", self.name),
        }
    }
}

/// Live pods lacking `kubervisor/traffic: yes`, by name; terminating pods are leaving anyway.
pub fn pods_losing_traffic(pods: &[Pod]) -> Vec<PodLosingTraffic> {
    let mut losing: Vec<PodLosingTraffic> = pods
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter_map(|p| {
            let traffic = p
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(TRAFFIC_LABEL))
                .cloned();
            (traffic.as_deref() != Some(Traffic::Yes.as_str())).then(|| PodLosingTraffic {
                name: p.metadata.name.clone().unwrap_or_default(),
                traffic,
            })
        })
        .collect();
    losing.sort_by(|a, b| a.name.cmp(&b.name));
    losing
}

/// One managed pod as the describe view shows it.
#[derive(Clone, Debug, PartialEq)]
pub struct PodRow {
    pub name: String,
    pub traffic: String,
    pub ready: String,
    pub strategy: String,
    pub break_at: String,
    pub retries: String,
    /// Why Kubervisor counts the pod as unknown, if it does.
    pub unknown_reason: Option<String>,
}

impl PodRow {
    /// A row for `pod`, its traffic state read where `marks_in` says (annotations in
    /// readiness-gate mode).
    pub fn from_pod(pod: &Pod, marks_in: MarksIn, now: jiff::Timestamp) -> PodRow {
        let marks = PodMarks::read_in(
            marks_in,
            pod.metadata.labels.as_ref(),
            pod.metadata.annotations.as_ref(),
        );
        let traffic = match &marks.traffic {
            None => format::NONE.to_string(),
            Some(Ok(t)) => t.to_string(),
            Some(Err(_)) => {
                let state = match marks_in {
                    MarksIn::Labels => &pod.metadata.labels,
                    MarksIn::Annotations => &pod.metadata.annotations,
                };
                let raw = state
                    .as_ref()
                    .and_then(|l| l.get(TRAFFIC_LABEL))
                    .cloned()
                    .unwrap_or_default();
                format!("{raw}(invalid)")
            }
        };
        let break_at = match &marks.break_at {
            None => format::NONE.to_string(),
            Some(Ok(at)) => format!("{at} ({} ago)", format::age(*at, now)),
            Some(Err(_)) => "<invalid>".to_string(),
        };
        let retries = match &marks.retry_count {
            None => "0".to_string(),
            Some(Ok(n)) => n.to_string(),
            Some(Err(_)) => "<invalid>".to_string(),
        };
        PodRow {
            name: pod.metadata.name.clone().unwrap_or_default(),
            traffic,
            ready: readiness(pod),
            strategy: marks
                .strategy
                .clone()
                .unwrap_or_else(|| format::NONE.to_string()),
            break_at,
            retries,
            unknown_reason: marks.unknown_reason(),
        }
    }

    pub fn cells(&self) -> Vec<String> {
        vec![
            self.name.clone(),
            self.traffic.clone(),
            self.ready.clone(),
            self.strategy.clone(),
            self.break_at.clone(),
            self.retries.clone(),
        ]
    }
}

/// `True`/`False` from the pod's Ready condition, or `Terminating`.
fn readiness(pod: &Pod) -> String {
    if pod.metadata.deletion_timestamp.is_some() {
        return "Terminating".into();
    }
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
        .map_or_else(|| "Unknown".to_string(), |c| c.status.clone())
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    fn service(selector: Value) -> Service {
        serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "web"},
            "spec": {"selector": selector}
        }))
        .unwrap()
    }

    fn pod(name: &str, labels: Value, annotations: Value) -> Pod {
        serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "labels": labels, "annotations": annotations},
            "status": {"conditions": [{"type": "Ready", "status": "True"}]}
        }))
        .unwrap()
    }

    #[test]
    fn managed_selector_drops_the_traffic_key_and_refuses_an_empty_one() {
        let active = service(json!({"app": "web", "kubervisor/traffic": "yes"}));
        assert!(is_active(&active));
        assert_eq!(
            managed_selector(&active).map(|s| label_selector(&s)),
            Some("app=web".to_string())
        );
        let only_traffic = service(json!({"kubervisor/traffic": "yes"}));
        assert_eq!(managed_selector(&only_traffic), None);
        assert!(!is_active(&service(json!({"app": "web"}))));
        assert!(!is_active(&service(
            json!({"app": "web", "kubervisor/traffic": "no"})
        )));
    }

    #[test]
    fn activation_patch_tests_the_selector_then_adds_the_escaped_key() {
        let current: BTreeMap<String, String> = [("app".to_string(), "web".to_string())].into();
        let parsed = activation_patch(&current);
        assert_eq!(
            serde_json::to_value(&parsed).unwrap(),
            json!([
                {"op": "test", "path": "/spec/selector", "value": {"app": "web"}},
                {"op": "add", "path": "/spec/selector/kubervisor~1traffic", "value": "yes"}
            ])
        );
        let mut svc = serde_json::to_value(service(json!({"app": "web"}))).unwrap();
        json_patch::patch(&mut svc, &parsed).unwrap();
        assert_eq!(
            svc["spec"]["selector"],
            json!({"app": "web", "kubervisor/traffic": "yes"})
        );
    }

    #[test]
    fn deactivation_patch_fails_when_the_selector_changed_meanwhile() {
        let read: BTreeMap<String, String> = [
            ("app".to_string(), "web".to_string()),
            (TRAFFIC_LABEL.to_string(), "yes".to_string()),
        ]
        .into();
        let parsed = deactivation_patch(&read);
        let mut same = serde_json::to_value(service(json!(read.clone()))).unwrap();
        json_patch::patch(&mut same, &parsed).unwrap();
        assert_eq!(same["spec"]["selector"], json!({"app": "web"}));
        let mut changed = serde_json::to_value(service(
            json!({"app": "web", "tier": "front", "kubervisor/traffic": "yes"}),
        ))
        .unwrap();
        assert!(json_patch::patch(&mut changed, &parsed).is_err());
    }

    #[test]
    fn pods_without_traffic_yes_are_listed_except_terminating_ones() {
        let mut leaving = pod("web-d", json!({"app": "web"}), json!({}));
        leaving.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                "2026-11-25T10:00:00Z".parse().unwrap(),
            ));
        let pods = [
            pod(
                "web-c",
                json!({"app": "web", "kubervisor/traffic": "no"}),
                json!({}),
            ),
            pod(
                "web-a",
                json!({"app": "web", "kubervisor/traffic": "yes"}),
                json!({}),
            ),
            pod("web-b", json!({"app": "web"}), json!({})),
            leaving,
        ];
        let losing: Vec<String> = pods_losing_traffic(&pods)
            .iter()
            .map(PodLosingTraffic::describe)
            .collect();
        assert_eq!(
            losing,
            [
                "web-b (no kubervisor/traffic label)",
                "web-c (kubervisor/traffic=no)"
            ]
        );
    }

    #[test]
    fn pod_row_shows_traffic_strategy_break_time_and_retries() {
        let now = "2026-11-25T10:05:00Z".parse().unwrap();
        let ejected = pod(
            "web-b",
            json!({"kubervisor/traffic": "no", "kubervisor/strategy": "errors"}),
            json!({"breaker/breakAt": "2026-11-25T10:00:00Z", "breaker/retryCount": "2"}),
        );
        let row = PodRow::from_pod(&ejected, MarksIn::Labels, now);
        assert_eq!(
            row.cells(),
            [
                "web-b",
                "no",
                "True",
                "errors",
                "2026-11-25T10:00:00Z (5m ago)",
                "2"
            ]
        );
        assert_eq!(row.unknown_reason, None);

        let broken = pod(
            "web-c",
            json!({"kubervisor/traffic": "maybe"}),
            json!({"breaker/retryCount": "x"}),
        );
        let row = PodRow::from_pod(&broken, MarksIn::Labels, now);
        assert_eq!(row.traffic, "maybe(invalid)");
        assert_eq!(row.retries, "<invalid>");
        assert!(
            row.unknown_reason
                .unwrap()
                .contains("not one of yes, no, pause")
        );
    }
}
