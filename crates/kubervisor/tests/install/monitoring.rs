//! The alerts and the dashboard: the rules pass `promtool check rules` and their unit
//! tests, the chart and `deploy/monitoring` ship the same rules and dashboard, and the
//! dashboard's queries name only series the operator serves.

use std::collections::BTreeSet;
use std::process::Command;

use serde_json::Value;

use crate::chart::{helm, helm_binary};
use crate::tools::*;

fn promtool(args: &[&str]) -> String {
    let out = Command::new(require_binary("promtool", "prometheus"))
        .args(args)
        .current_dir(repo().join("charts/kubervisor/files"))
        .output()
        .expect("promtool runs");
    assert!(
        out.status.success(),
        "promtool {}: {}{}",
        args.join(" "),
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

#[test]
fn alerts_pass_promtool_and_their_unit_tests() {
    assert!(promtool(&["check", "rules", "alerts.yaml"]).contains("SUCCESS: 6 rules found"));
    assert!(promtool(&["test", "rules", "alerts_test.yaml"]).contains("SUCCESS"));
}

fn alert_groups() -> Value {
    document("charts/kubervisor/files/alerts.yaml")["groups"].clone()
}

fn dashboard() -> Value {
    serde_json::from_str(&read("charts/kubervisor/files/dashboard.json"))
        .expect("the dashboard is JSON")
}

#[test]
fn deploy_monitoring_ships_the_charts_rules_and_dashboard() {
    let rule = document("deploy/monitoring/prometheusrule.yaml");
    assert_eq!(rule["kind"], "PrometheusRule");
    assert_eq!(rule["spec"]["groups"], alert_groups());
    let copy: Value = serde_json::from_str(&read("deploy/monitoring/dashboard.json")).unwrap();
    assert_eq!(copy, dashboard());
    let kustomization = document("deploy/monitoring/kustomization.yaml");
    assert_eq!(
        kustomization["configMapGenerator"][0]["options"]["labels"]["grafana_dashboard"],
        "1"
    );
}

#[test]
fn the_chart_renders_the_rules_and_the_dashboard_when_asked() {
    let Some(helm_bin) = helm_binary() else {
        return;
    };
    let home = tempfile::tempdir().unwrap();
    let chart = repo().join("charts/kubervisor").display().to_string();
    let out = helm(
        &helm_bin,
        home.path(),
        &[
            "template",
            "kv",
            &chart,
            "--set",
            "prometheusRule.enabled=true",
            "--set",
            "dashboards.enabled=true",
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let objects: Vec<Value> = serde_saphyr::from_multiple(&text(&out.stdout)).unwrap();
    let rule = objects
        .iter()
        .find(|o| o["kind"] == "PrometheusRule")
        .expect("a PrometheusRule");
    assert_eq!(rule["spec"]["groups"], alert_groups());
    let config_map = objects
        .iter()
        .find(|o| o["kind"] == "ConfigMap")
        .expect("the dashboard's ConfigMap");
    assert_eq!(config_map["metadata"]["labels"]["grafana_dashboard"], "1");
    let rendered: Value =
        serde_json::from_str(config_map["data"]["kubervisor.json"].as_str().unwrap()).unwrap();
    assert_eq!(rendered, dashboard());
    // Off by default.
    let out = helm(&helm_bin, home.path(), &["template", "kv", &chart]);
    let plain = text(&out.stdout);
    assert!(!plain.contains("PrometheusRule") && !plain.contains("grafana_dashboard"));
}

/// Every `kubervisor_…` name in a PromQL expression.
fn series_in(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = expr;
    while let Some(at) = rest.find("kubervisor_") {
        let name: String = rest[at..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        rest = &rest[at + name.len()..];
        names.insert(name);
    }
    names
}

#[test]
fn dashboard_and_alerts_query_only_series_the_operator_serves() {
    // Every series the operator serves once it has something to say, as /metrics names them.
    let metrics = kubervisor::telemetry::Metrics::new();
    let took = std::time::Duration::from_millis(3);
    metrics.set_pod_counts("shop", "web", 3, 1, 1, 0);
    metrics.set_items("shop", 1);
    metrics.count_decision("errors", "shop", "web-1", "break");
    metrics.observe_reconcile("shop", "web", took, Some("InvalidSpec"));
    metrics.observe_evaluation(Some(took));
    metrics.observe_source("prometheus", took, Some("timeout"));
    metrics.count_pod_write("patch", "ok");
    metrics.set_breaker_state("shop", "web", "errors", Default::default());
    metrics.set_leading(true);
    let served = metrics.encode();
    let mut known: BTreeSet<String> = BTreeSet::new();
    for line in served.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut words = rest.split_whitespace();
            let (name, kind) = (words.next().unwrap(), words.next().unwrap_or_default());
            known.insert(name.to_string());
            match kind {
                "counter" => {
                    known.insert(format!("{name}_total"));
                }
                "histogram" => {
                    for suffix in ["_bucket", "_sum", "_count"] {
                        known.insert(format!("{name}{suffix}"));
                    }
                }
                _ => {}
            }
        }
    }
    let mut queries: Vec<String> = dashboard()["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap().clone())
        .map(|t| t["expr"].as_str().unwrap().to_string())
        .collect();
    for group in alert_groups().as_array().unwrap() {
        for rule in group["rules"].as_array().unwrap() {
            queries.push(rule["expr"].as_str().unwrap().to_string());
        }
    }
    assert!(queries.len() >= 14, "{queries:?}");
    for query in &queries {
        let names = series_in(query);
        assert!(!names.is_empty(), "{query}");
        for name in names {
            assert!(
                known.contains(&name),
                "{query} asks for {name}, which the operator does not serve: {known:?}"
            );
        }
    }
}
