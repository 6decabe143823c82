//! The `describe` view, in the layout of `kubectl describe`.

use std::fmt::Write as _;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Pod, Service};
use kubervisor_api::TrafficControl;
use kubervisor_api::pod::{MarksIn, TRAFFIC_LABEL};
use kubervisor_api::{ActivatorStrategy, KubervisorService};

use crate::format::{self, NONE, table_indented};
use crate::gate::{self, PodRow};
use crate::list::method;

/// What `describe` found about one KubervisorService.
pub struct Description<'a> {
    pub kvs: &'a KubervisorService,
    /// `None` when the Service does not exist.
    pub service: Option<&'a Service>,
    /// The managed pods, in any order.
    pub pods: &'a [Pod],
    pub now: Timestamp,
}

impl Description<'_> {
    pub fn render(&self) -> String {
        let kvs = self.kvs;
        let spec = kvs.spec.defaulted();
        let mut out = String::new();
        let field = |out: &mut String, name: &str, value: &str| {
            let _ = writeln!(out, "{:<14}{value}", format!("{name}:"));
        };
        field(
            &mut out,
            "Name",
            kvs.metadata.name.as_deref().unwrap_or(NONE),
        );
        field(
            &mut out,
            "Namespace",
            kvs.metadata.namespace.as_deref().unwrap_or(NONE),
        );
        field(&mut out, "Service", &self.service_line());
        field(
            &mut out,
            "Dry Run",
            &spec.dry_run.unwrap_or(false).to_string(),
        );
        field(
            &mut out,
            "Traffic",
            match spec.traffic_control.unwrap_or_default() {
                TrafficControl::Label => "label kubervisor/traffic (the Service selects yes)",
                TrafficControl::ReadinessGate => {
                    "readiness gate kubervisor.k8s.io/traffic (state in annotations)"
                }
            },
        );
        if let Some(created) = &kvs.metadata.creation_timestamp {
            field(
                &mut out,
                "Created",
                &format!("{} ({} ago)", created.0, format::age(created.0, self.now)),
            );
        }

        let _ = writeln!(out, "Breakers:");
        if spec.breakers.is_empty() {
            let _ = writeln!(out, "  {NONE}");
        } else {
            let rows: Vec<Vec<String>> = spec
                .breakers
                .iter()
                .map(|b| {
                    vec![
                        b.name.clone(),
                        method(b),
                        b.evaluation_period.map_or(NONE.into(), format::seconds),
                        min_available(b.min_pods_available_count, b.min_pods_available_ratio),
                        safety(b),
                    ]
                })
                .collect();
            out.push_str(&table_indented(
                "  ",
                &["NAME", "METHOD", "PERIOD", "MIN AVAILABLE", "SAFETY"],
                &rows,
            ));
        }

        let _ = writeln!(out, "Activators:");
        let mut rows = Vec::new();
        if let Some(default) = &spec.default_activator {
            rows.push(activator_row("(default)", default));
        }
        for breaker in &spec.breakers {
            if let Some(own) = &breaker.activator {
                rows.push(activator_row(&format!("breaker {}", breaker.name), own));
            }
        }
        out.push_str(&table_indented(
            "  ",
            &[
                "FOR",
                "MODE",
                "PERIOD",
                "MAX RETRIES",
                "MAX PAUSED",
                "MAX OUT",
                "FORGET AFTER",
                "KILL BY",
            ],
            &rows,
        ));

        let _ = writeln!(out, "Conditions:");
        let conditions = kvs
            .status
            .as_ref()
            .map(|s| s.conditions.as_slice())
            .unwrap_or_default();
        if conditions.is_empty() {
            let _ = writeln!(
                out,
                "  {NONE} (not reconciled yet: is the Kubervisor operator running?)"
            );
        } else {
            let rows: Vec<Vec<String>> = conditions
                .iter()
                .map(|c| {
                    vec![
                        c.type_.clone(),
                        c.status.clone(),
                        c.reason.clone().unwrap_or_else(|| NONE.into()),
                        c.last_transition_time.as_ref().map_or(NONE.into(), |t| {
                            format!("{} ({} ago)", t.0, format::age(t.0, self.now))
                        }),
                        c.message.clone().unwrap_or_default(),
                    ]
                })
                .collect();
            out.push_str(&table_indented(
                "  ",
                &["TYPE", "STATUS", "REASON", "LAST TRANSITION", "MESSAGE"],
                &rows,
            ));
        }

        let counts = kvs.status.as_ref().and_then(|s| s.pod_count.as_ref());
        field(
            &mut out,
            "Pod Counts",
            &counts.map_or_else(
                || NONE.to_string(),
                |c| {
                    format!(
                        "{} managed, {} broken, {} paused, {} unknown",
                        c.nb_pods_managed, c.nb_pods_breaked, c.nb_pods_paused, c.nb_pods_unknown
                    )
                },
            ),
        );

        self.render_evaluations(&mut out);

        let _ = writeln!(out, "Pods:");
        let marks_in = match spec.traffic_control.unwrap_or_default() {
            TrafficControl::Label => MarksIn::Labels,
            TrafficControl::ReadinessGate => MarksIn::Annotations,
        };
        let mut rows: Vec<PodRow> = self
            .pods
            .iter()
            .map(|p| PodRow::from_pod(p, marks_in, self.now))
            .collect();
        rows.sort_by(|a, b| a.name.cmp(&b.name));
        if rows.is_empty() {
            let _ = writeln!(out, "  {NONE}");
        } else {
            let cells: Vec<Vec<String>> = rows.iter().map(PodRow::cells).collect();
            out.push_str(&table_indented(
                "  ",
                &[
                    "NAME", "TRAFFIC", "READY", "STRATEGY", "BREAK-AT", "RETRIES",
                ],
                &cells,
            ));
        }
        let unknown: Vec<&PodRow> = rows.iter().filter(|r| r.unknown_reason.is_some()).collect();
        if !unknown.is_empty() {
            let _ = writeln!(out, "Unknown Pods:");
            for row in unknown {
                let _ = writeln!(
                    out,
                    "  {}: {}",
                    row.name,
                    row.unknown_reason.as_deref().unwrap_or_default()
                );
            }
        }
        out
    }

    /// Each breaker's last evaluation from `status.breakers`, and the anomalous pods' scores.
    fn render_evaluations(&self, out: &mut String) {
        let results = self
            .kvs
            .status
            .as_ref()
            .map(|s| s.breakers.as_slice())
            .unwrap_or_default();
        let _ = writeln!(out, "Evaluations:");
        if results.is_empty() {
            let _ = writeln!(out, "  {NONE}");
            return;
        }
        let rows: Vec<Vec<String>> = results
            .iter()
            .map(|b| {
                vec![
                    b.name.clone(),
                    b.result.clone(),
                    b.judged.to_string(),
                    b.anomalous.to_string(),
                    b.ejected.to_string(),
                    b.spared_by_floor.to_string(),
                    b.statistic.as_ref().map_or(NONE.into(), statistic),
                    b.last_evaluation_time.as_ref().map_or(NONE.into(), |t| {
                        format!("{} ago", format::age(t.0, self.now))
                    }),
                ]
            })
            .collect();
        out.push_str(&table_indented(
            "  ",
            &[
                "BREAKER",
                "RESULT",
                "JUDGED",
                "ANOMALOUS",
                "EJECTED",
                "SPARED",
                "FLEET",
                "CHANGED",
            ],
            &rows,
        ));
        for b in results {
            if let Some(message) = &b.message {
                let _ = writeln!(out, "  {}: {message}", b.name);
            }
        }
        let scores: Vec<Vec<String>> = results
            .iter()
            .flat_map(|b| {
                b.anomalous_pods.iter().map(|p| {
                    vec![
                        b.name.clone(),
                        p.pod.clone(),
                        p.score.to_string(),
                        p.threshold.to_string(),
                    ]
                })
            })
            .collect();
        if !scores.is_empty() {
            let _ = writeln!(out, "Anomalous Pods:");
            out.push_str(&table_indented(
                "  ",
                &["BREAKER", "POD", "SCORE", "THRESHOLD"],
                &scores,
            ));
        }
    }

    /// The Service's name, selector and whether Kubervisor's decisions take effect.
    fn service_line(&self) -> String {
        let name = &self.kvs.spec.service;
        let Some(service) = self.service else {
            return format!("{name} (not found)");
        };
        let selector = format::selector(&gate::service_selector(service));
        let gate = if gate::is_active(service) {
            "active".to_string()
        } else {
            format!(
                "inactive: selector lacks {TRAFFIC_LABEL}=yes, run `kubectl kubervisor activate {}`",
                self.kvs.metadata.name.as_deref().unwrap_or_default()
            )
        };
        format!("{name} (selector {selector}; {gate})")
    }
}

/// A fleet statistic in one cell: `median 0.0275, MAD 0.002 (8 pods)`.
fn statistic(s: &kubervisor_api::FleetStatisticStatus) -> String {
    let number = |v: Option<f64>| v.map_or(NONE.into(), |v| v.to_string());
    let (a, b) = if s.kind == "medianMad" {
        (
            format!("median {}", number(s.median)),
            format!("MAD {}", number(s.mad)),
        )
    } else {
        (
            format!("mean {}", number(s.mean)),
            format!("stdev {}", number(s.stdev)),
        )
    };
    format!("{a}, {b} ({} pods)", s.hosts)
}

fn min_available(count: Option<u32>, ratio: Option<u32>) -> String {
    let count = count.map_or(NONE.into(), |c| {
        format!("{c} {}", if c == 1 { "pod" } else { "pods" })
    });
    match ratio {
        Some(r) if r > 0 => format!("{count}, {r}%"),
        _ => count,
    }
}

fn activator_row(for_: &str, activator: &ActivatorStrategy) -> Vec<String> {
    vec![
        for_.to_string(),
        activator
            .mode
            .map_or(NONE.into(), |m| m.as_str().to_string()),
        activator.period.map_or(NONE.into(), format::seconds),
        activator
            .max_retry_count
            .map_or(NONE.into(), |n| n.to_string()),
        activator
            .max_pause_count
            .map_or(NONE.into(), |n| n.to_string()),
        activator
            .max_ejection_time
            .map_or(NONE.into(), format::seconds),
        activator.forget_after.map_or(NONE.into(), format::seconds),
        activator
            .kill_method
            .map_or(NONE.into(), |m| m.as_str().to_string()),
    ]
}

/// The breaker's safety settings beyond the floor, `<none>` when none is set.
fn safety(breaker: &kubervisor_api::BreakerStrategy) -> String {
    let mut parts = Vec::new();
    if let Some(p) = breaker.panic_threshold_percent.filter(|p| *p > 0) {
        parts.push(format!("panic below {p}% healthy"));
    }
    if let Some(max) = breaker.max_ejections_per_evaluation {
        parts.push(format!("at most {max} per evaluation"));
    }
    if breaker.dry_run == Some(true) {
        parts.push("dry run".to_string());
    }
    if parts.is_empty() {
        NONE.into()
    } else {
        parts.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn kvs() -> KubervisorService {
        serde_json::from_value(json!({
            "apiVersion": "kubervisor.k8s.io/v1alpha1",
            "kind": "KubervisorService",
            "metadata": {"name": "web", "namespace": "shop", "creationTimestamp": "2026-11-25T09:00:00Z"},
            "spec": {
                "service": "web",
                "breakers": [{
                    "name": "errors",
                    "minPodsAvailableCount": 3,
                    "minPodsAvailableRatio": 50,
                    "discreteValueOutOfList": {"prometheusService": "p:9090", "promQL": "q", "key": "code", "podNamekey": "pod", "goodValues": ["200"]},
                    "panicThresholdPercent": 40,
                    "maxEjectionsPerEvaluation": 2,
                    "activator": {"mode": "retryAndKill", "period": 60, "maxEjectionTime": 300, "forgetAfter": 3600, "killMethod": "delete"}
                }],
                "defaultActivator": {"mode": "retryAndPause", "period": 30}
            },
            "status": {
                "conditions": [{"type": "Ready", "status": "True", "reason": "Running", "message": "breakers errors running", "lastTransitionTime": "2026-11-25T09:01:00Z"}],
                "podCount": {"nbPodsManaged": 2, "nbPodsBreaked": 1, "nbPodsPaused": 0, "nbPodsUnknown": 0},
                "breakers": [{"name": "errors", "lastEvaluationTime": "2026-11-25T09:58:00Z", "result": "Ok",
                              "judged": 8, "anomalous": 1, "ejected": 1, "sparedByFloor": 0,
                              "statistic": {"kind": "medianMad", "hosts": 8, "median": 0.0275, "mad": 0.002},
                              "anomalousPods": [{"pod": "web-b", "score": 73.35, "threshold": 3.5}]}]
            }
        }))
        .unwrap()
    }

    #[test]
    fn describe_shows_spec_conditions_and_each_pod() {
        let kvs = kvs();
        let service: Service = serde_json::from_value(json!({
            "metadata": {"name": "web"},
            "spec": {"selector": {"app": "web", "kubervisor/traffic": "yes"}}
        }))
        .unwrap();
        let pods: Vec<Pod> = serde_json::from_value(json!([
            {"metadata": {"name": "web-b", "labels": {"kubervisor/traffic": "no", "kubervisor/strategy": "errors"},
                          "annotations": {"breaker/breakAt": "2026-11-25T09:58:00Z", "breaker/retryCount": "1"}}},
            {"metadata": {"name": "web-a", "labels": {"kubervisor/traffic": "yes"}},
             "status": {"conditions": [{"type": "Ready", "status": "True"}]}}
        ]))
        .unwrap();
        let out = Description {
            kvs: &kvs,
            service: Some(&service),
            pods: &pods,
            now: "2026-11-25T10:00:00Z".parse().unwrap(),
        }
        .render();
        for expected in [
            "Name:         web\n",
            "Namespace:    shop\n",
            "Service:      web (selector app=web,kubervisor/traffic=yes; active)\n",
            "Dry Run:      false\n",
            "  errors   discreteValueOutOfList   5s       3 pods, 50%     panic below 40% healthy, at most 2 per evaluation\n",
            "  (default)        retryAndPause   30s      3             1            <none>    <none>         evict\n",
            "  breaker errors   retryAndKill    1m       3             1            5m        1h             delete\n",
            "  Ready   True     Running   2026-11-25T09:01:00Z (59m ago)   breakers errors running\n",
            "Pod Counts:   2 managed, 1 broken, 0 paused, 0 unknown\n",
            "  errors    Ok       8        1           1         0        median 0.0275, MAD 0.002 (8 pods)   2m ago\n",
            "  errors    web-b   73.35   3.5\n",
            "  web-a   yes       True      <none>     <none>                          0\n",
            "  web-b   no        Unknown   errors     2026-11-25T09:58:00Z (2m ago)   1\n",
        ] {
            assert!(out.contains(expected), "missing {expected:?} in\n{out}");
        }
        let pods = &out[out.find("\nPods:").unwrap()..];
        assert!(pods.find("web-a").unwrap() < pods.find("web-b").unwrap());
    }

    #[test]
    fn describe_says_when_the_service_is_missing_or_inactive_and_no_status_yet() {
        let mut kvs = kvs();
        kvs.status = None;
        let out = Description {
            kvs: &kvs,
            service: None,
            pods: &[],
            now: "2026-11-25T10:00:00Z".parse().unwrap(),
        }
        .render();
        assert!(out.contains("Service:      web (not found)"), "{out}");
        assert!(out.contains("not reconciled yet"), "{out}");
        assert!(out.contains("Pods:\n  <none>\n"), "{out}");

        let service: Service = serde_json::from_value(json!({
            "metadata": {"name": "web"},
            "spec": {"selector": {"app": "web"}}
        }))
        .unwrap();
        let out = Description {
            kvs: &kvs,
            service: Some(&service),
            pods: &[],
            now: "2026-11-25T10:00:00Z".parse().unwrap(),
        }
        .render();
        assert!(
            out.contains("inactive: selector lacks kubervisor/traffic=yes, run `kubectl kubervisor activate web`"),
            "{out}"
        );
    }
}
