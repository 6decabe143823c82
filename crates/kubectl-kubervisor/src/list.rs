//! The `list` view: a kubectl-style table, or a `List` document.

use jiff::Timestamp;
use kubervisor_api::{BreakerStrategy, KubervisorService, KubervisorServiceCondition};
use serde_json::{Value, json};

use crate::format::{NONE, age, table};

/// Which columns to print.
#[derive(Clone, Copy, Debug, Default)]
pub struct Columns {
    /// Prefix with NAMESPACE (`-A`).
    pub namespace: bool,
    /// Add UNKNOWN, DRYRUN and BREAKERS (`-o wide`).
    pub wide: bool,
}

/// The table of KubervisorServices, sorted by namespace then name.
pub fn render_table(items: &[KubervisorService], columns: Columns, now: Timestamp) -> String {
    let mut headers = Vec::new();
    if columns.namespace {
        headers.push("NAMESPACE");
    }
    headers.extend(["NAME", "SERVICE", "STATE", "MANAGED", "BROKEN", "PAUSED"]);
    if columns.wide {
        headers.extend(["UNKNOWN", "DRYRUN"]);
    }
    headers.push("AGE");
    if columns.wide {
        // Last, because it is the one column of unbounded width.
        headers.push("BREAKERS");
    }

    let mut sorted: Vec<&KubervisorService> = items.iter().collect();
    sorted.sort_by(|a, b| {
        (&a.metadata.namespace, &a.metadata.name).cmp(&(&b.metadata.namespace, &b.metadata.name))
    });
    let rows: Vec<Vec<String>> = sorted
        .into_iter()
        .map(|kvs| row(kvs, columns, now))
        .collect();
    table(&headers, &rows)
}

fn row(kvs: &KubervisorService, columns: Columns, now: Timestamp) -> Vec<String> {
    let counts = kvs.status.as_ref().and_then(|s| s.pod_count.as_ref());
    let count = |f: fn(&kubervisor_api::PodCountStatus) -> u32| {
        counts.map_or_else(|| NONE.to_string(), |c| f(c).to_string())
    };
    let mut cells = Vec::new();
    if columns.namespace {
        cells.push(text(kvs.metadata.namespace.as_deref()));
    }
    cells.push(text(kvs.metadata.name.as_deref()));
    cells.push(text(Some(kvs.spec.service.as_str())));
    cells.push(state(kvs));
    cells.push(count(|c| c.nb_pods_managed));
    cells.push(count(|c| c.nb_pods_breaked));
    cells.push(count(|c| c.nb_pods_paused));
    if columns.wide {
        cells.push(count(|c| c.nb_pods_unknown));
        cells.push(kvs.spec.dry_run.unwrap_or(false).to_string());
    }
    cells.push(
        kvs.metadata
            .creation_timestamp
            .as_ref()
            .map_or_else(|| NONE.to_string(), |t| age(t.0, now)),
    );
    if columns.wide {
        cells.push(breakers(&kvs.spec.breakers));
    }
    cells
}

fn text(value: Option<&str>) -> String {
    match value {
        Some(v) if !v.is_empty() => v.to_string(),
        _ => NONE.to_string(),
    }
}

/// The resource's `Ready` condition, if the operator has written one.
pub fn ready_condition(kvs: &KubervisorService) -> Option<&KubervisorServiceCondition> {
    kvs.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
}

/// The state shown in the STATE column: the Ready condition's reason, as the CRD's printer column does.
pub fn state(kvs: &KubervisorService) -> String {
    text(ready_condition(kvs).and_then(|c| c.reason.as_deref()))
}

/// The detection method a breaker uses, in the manifest's words.
pub fn method(breaker: &BreakerStrategy) -> String {
    let methods: Vec<&str> = [
        (
            breaker.discrete_value_out_of_list.is_some(),
            "discreteValueOutOfList",
        ),
        (
            breaker.continuous_value_deviation.is_some(),
            "continuousValueDeviation",
        ),
        (breaker.custom_service.is_some(), "customService"),
        (breaker.value_threshold.is_some(), "valueThreshold"),
        (breaker.value_trend.is_some(), "valueTrend"),
        (breaker.success_rate_outlier.is_some(), "successRateOutlier"),
        (breaker.continuous_outlier.is_some(), "continuousOutlier"),
    ]
    .into_iter()
    .filter_map(|(set, name)| set.then_some(name))
    .collect();
    if methods.is_empty() {
        return NONE.into();
    }
    methods.join("+")
}

fn short_method(breaker: &BreakerStrategy) -> String {
    method(breaker)
        .replace("discreteValueOutOfList", "discrete")
        .replace("continuousValueDeviation", "continuous")
        .replace("customService", "custom")
        .replace("valueThreshold", "threshold")
        .replace("valueTrend", "trend")
        .replace("successRateOutlier", "successRate")
        .replace("continuousOutlier", "outlier")
}

/// `errors(discrete),latency(continuous)`.
fn breakers(breakers: &[BreakerStrategy]) -> String {
    if breakers.is_empty() {
        return NONE.into();
    }
    breakers
        .iter()
        .map(|b| format!("{}({})", b.name, short_method(b)))
        .collect::<Vec<_>>()
        .join(",")
}

/// The objects wrapped in a `v1` `List`, as `kubectl get -o json|yaml` prints several objects.
pub fn list_document(items: &[KubervisorService]) -> Value {
    let mut sorted: Vec<&KubervisorService> = items.iter().collect();
    sorted.sort_by(|a, b| {
        (&a.metadata.namespace, &a.metadata.name).cmp(&(&b.metadata.namespace, &b.metadata.name))
    });
    json!({
        "apiVersion": "v1",
        "kind": "List",
        "metadata": {"resourceVersion": ""},
        "items": sorted,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use kubervisor_api::{KubervisorServiceStatus, PodCountStatus};

    fn kvs(
        namespace: &str,
        name: &str,
        reason: Option<&str>,
        managed: Option<u32>,
    ) -> KubervisorService {
        let mut value = json!({
            "apiVersion": "kubervisor.k8s.io/v1alpha1",
            "kind": "KubervisorService",
            "metadata": {
                "name": name,
                "namespace": namespace,
                "creationTimestamp": "2026-11-25T10:00:00Z"
            },
            "spec": {
                "service": name,
                "dryRun": true,
                "breakers": [
                    {"name": "errors", "discreteValueOutOfList": {"prometheusService": "p:9090", "promQL": "q", "key": "code", "podNamekey": "pod", "goodValues": ["200"]}},
                    {"name": "slow", "customService": "detector:8080"}
                ]
            }
        });
        let mut status = KubervisorServiceStatus::default();
        if let Some(reason) = reason {
            status.conditions.push(KubervisorServiceCondition {
                type_: "Ready".into(),
                status: "True".into(),
                reason: Some(reason.into()),
                ..Default::default()
            });
        }
        status.pod_count = managed.map(|m| PodCountStatus {
            nb_pods_managed: m,
            nb_pods_breaked: 1,
            nb_pods_paused: 0,
            nb_pods_unknown: 2,
            last_probe_time: None,
        });
        value["status"] = serde_json::to_value(status).unwrap();
        serde_json::from_value(value).unwrap()
    }

    fn now() -> Timestamp {
        "2026-11-25T10:05:00Z".parse().unwrap()
    }

    #[test]
    fn table_has_kubectl_columns_sorted_by_name() {
        let items = [
            kvs("default", "web", Some("Running"), Some(3)),
            kvs("default", "api", None, None),
        ];
        let out = render_table(&items, Columns::default(), now());
        assert_eq!(
            out,
            "NAME   SERVICE   STATE     MANAGED   BROKEN   PAUSED   AGE\n\
             api    api       <none>    <none>    <none>   <none>   5m\n\
             web    web       Running   3         1        0        5m\n"
        );
    }

    #[test]
    fn all_namespaces_puts_namespace_first() {
        let items = [
            kvs("shop", "web", Some("Running"), Some(3)),
            kvs("default", "web", Some("DryRun"), Some(1)),
        ];
        let out = render_table(
            &items,
            Columns {
                namespace: true,
                wide: false,
            },
            now(),
        );
        let lines: Vec<&str> = out.lines().collect();
        assert!(lines[0].starts_with("NAMESPACE   NAME   SERVICE"), "{out}");
        assert!(lines[1].starts_with("default     web"), "{out}");
        assert!(lines[2].starts_with("shop        web"), "{out}");
    }

    #[test]
    fn wide_adds_unknown_dry_run_and_breakers() {
        let items = [kvs("default", "web", Some("DryRun"), Some(3))];
        let out = render_table(
            &items,
            Columns {
                namespace: false,
                wide: true,
            },
            now(),
        );
        let lines: Vec<&str> = out.lines().collect();
        let headers: Vec<&str> = lines[0].split_whitespace().collect();
        assert_eq!(
            headers,
            [
                "NAME", "SERVICE", "STATE", "MANAGED", "BROKEN", "PAUSED", "UNKNOWN", "DRYRUN",
                "AGE", "BREAKERS"
            ]
        );
        let cells: Vec<&str> = lines[1].split_whitespace().collect();
        assert_eq!(
            cells,
            [
                "web",
                "web",
                "DryRun",
                "3",
                "1",
                "0",
                "2",
                "true",
                "5m",
                "errors(discrete),slow(custom)"
            ]
        );
    }

    #[test]
    fn list_document_is_a_v1_list_of_full_objects() {
        let doc = list_document(&[kvs("default", "web", Some("Running"), Some(3))]);
        assert_eq!(doc["apiVersion"], "v1");
        assert_eq!(doc["kind"], "List");
        assert_eq!(doc["items"][0]["kind"], "KubervisorService");
        assert_eq!(doc["items"][0]["apiVersion"], "kubervisor.k8s.io/v1alpha1");
        assert_eq!(doc["items"][0]["status"]["podCount"]["nbPodsManaged"], 3);
    }
}
