//! The shipped dashboard and alerts against a real Prometheus scraping the running
//! operator: once a scenario has made the operator's series exist (an ejection, a pause,
//! a pod spared by the floor, a breaker in panic, a failing source), every panel's query,
//! every dashboard variable and every alert's expression returns data. A misspelt series
//! or label name returns nothing, and fails here naming the panel or the alert.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use kubervisor::harness::{PrometheusOptions, PrometheusProcess};
use serde_json::{Value, json};

use crate::harness::{Cluster, CustomDetector, eventually};
use kubesim::on_both_backends;

/// How often Prometheus scrapes the operator, and what Grafana would then use for the
/// dashboard's interval variables (one point per scrape).
const SCRAPE_INTERVAL_SECONDS: u64 = 1;

/// What each alert does in the scenario below: `true` when its whole expression must
/// return data (the alert would fire once its `for` has passed), `false` when it must
/// return nothing (the operator is up and leads).
const ALERTS_FIRING: &[(&str, bool)] = &[
    ("KubervisorSourceFailing", true),
    ("KubervisorFloorHoldsAnomalousPods", true),
    ("KubervisorPanic", true),
    ("KubervisorPausedPods", true),
    ("KubervisorNoLeader", false),
    ("KubervisorDown", false),
];

fn repo_file(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(relative)
}

fn dashboard() -> Value {
    let path = repo_file("charts/kubervisor/files/dashboard.json");
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).expect("the dashboard is JSON")
}

fn alert_rules() -> Vec<Value> {
    let path = repo_file("charts/kubervisor/files/alerts.yaml");
    let rules: Value = serde_saphyr::from_str(&std::fs::read_to_string(&path).unwrap())
        .expect("the alerts are YAML");
    rules["groups"]
        .as_array()
        .expect("alert groups")
        .iter()
        .flat_map(|group| group["rules"].as_array().cloned().unwrap_or_default())
        .collect()
}

/// Replaces Grafana's `$var` and `${var}` (also `${var:format}`) by the concrete values a
/// viewer of this scenario would select; an unknown variable fails the test, naming it.
fn substitute(query: &str, values: &BTreeMap<&str, String>, what: &str) -> String {
    let mut out = String::new();
    let mut rest = query;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        let (name, consumed) = if let Some(braced) = after.strip_prefix('{') {
            let end = braced
                .find('}')
                .unwrap_or_else(|| panic!("{what}: unclosed ${{ in {query}"));
            let name = braced[..end].split(':').next().unwrap_or_default();
            (name, end + 2)
        } else {
            let end = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            (&after[..end], end)
        };
        let value = values.get(name).unwrap_or_else(|| {
            panic!("{what}: the test has no value for the Grafana variable ${name} in {query}")
        });
        out.push_str(value);
        rest = &after[consumed..];
    }
    out.push_str(rest);
    out
}

/// The labels every `by (...)` clause of `query` groups on, but `le`, which
/// `histogram_quantile` consumes: each result must carry them, so a misspelt grouping
/// label (which Prometheus accepts, and drops from the result) fails.
fn grouping_labels(query: &str) -> BTreeSet<String> {
    let mut labels = BTreeSet::new();
    let mut rest = query;
    while let Some(at) = rest.find("by (") {
        let inside = &rest[at + 4..];
        let end = inside.find(')').expect("a closed by clause");
        labels.extend(
            inside[..end]
                .split(',')
                .map(str::trim)
                .filter(|label| !label.is_empty() && *label != "le")
                .map(String::from),
        );
        rest = &inside[end..];
    }
    labels
}

/// The labels an alert's annotations print (`{{ $labels.breaker }}`).
fn annotation_labels(rule: &Value) -> BTreeSet<String> {
    let mut labels = BTreeSet::new();
    for text in rule["annotations"]
        .as_object()
        .into_iter()
        .flat_map(|a| a.values())
        .filter_map(Value::as_str)
    {
        let mut rest = text;
        while let Some(at) = rest.find("$labels.") {
            let name: String = rest[at + 8..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            rest = &rest[at + 8 + name.len()..];
            labels.insert(name);
        }
    }
    labels
}

/// The part of an alert expression that names the series: the left-hand side of its
/// top-level comparison (`max by (…) (x) > 0` → `max by (…) (x)`), or the argument of
/// `absent(…)`. Evaluated alone it must return data: a misspelt series or label matcher
/// makes it empty, which the comparison alone would hide (an alert that never fires).
fn operand(expr: &str) -> String {
    let expr = expr.trim();
    if let Some(inner) = expr
        .strip_prefix("absent(")
        .and_then(|e| e.strip_suffix(')'))
    {
        return inner.trim().to_string();
    }
    let (mut depth, mut quoted) = (0i32, false);
    for (i, c) in expr.char_indices() {
        match c {
            '"' => quoted = !quoted,
            '(' | '{' | '[' if !quoted => depth += 1,
            ')' | '}' | ']' if !quoted => depth -= 1,
            '>' | '<' | '=' | '!' if !quoted && depth == 0 => return expr[..i].trim().into(),
            _ => {}
        }
    }
    expr.to_string()
}

fn url_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// GETs a path of Prometheus' HTTP API and returns `data`, or why not.
async fn api(prometheus: &PrometheusProcess, path_and_query: &str) -> Result<Value, String> {
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<bytes::Bytes>>();
    let url = format!("{}{path_and_query}", prometheus.url());
    let request = http::Request::get(&url)
        .body(Empty::new())
        .map_err(|e| e.to_string())?;
    let response = tokio::time::timeout(Duration::from_secs(5), client.request(request))
        .await
        .map_err(|_| format!("{url}: no answer within 5 s"))?
        .map_err(|e| format!("{url}: {e}"))?;
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    let answer: Value = serde_json::from_slice(&body).map_err(|e| format!("{url}: {e}"))?;
    if answer["status"] != "success" {
        return Err(format!("Prometheus refused it: {answer}"));
    }
    Ok(answer["data"].clone())
}

/// The instant vector of `query` now.
async fn query(prometheus: &PrometheusProcess, query: &str) -> Result<Vec<Value>, String> {
    let data = api(
        prometheus,
        &format!("/api/v1/query?query={}", url_encode(query)),
    )
    .await?;
    Ok(data["result"].as_array().cloned().unwrap_or_default())
}

/// Checks that `query` returns series, each carrying every label in `labels`.
async fn returns_data(
    prometheus: &PrometheusProcess,
    query_text: &str,
    labels: &BTreeSet<String>,
) -> Result<(), String> {
    let series = query(prometheus, query_text).await?;
    if series.is_empty() {
        return Err("no data".into());
    }
    for one in &series {
        for label in labels {
            if one["metric"][label].as_str().is_none_or(str::is_empty) {
                return Err(format!("a series without the label {label}: {one}"));
            }
        }
    }
    Ok(())
}

/// Every check of the dashboard and the alerts, with what failed, by panel or alert.
async fn check_everything(
    prometheus: &PrometheusProcess,
    variables: &BTreeMap<&str, String>,
) -> Result<usize, String> {
    let dashboard = dashboard();
    let mut failures = Vec::new();
    let mut checked = 0;

    // The variables' own queries (`label_values(selector, label)`) offer the scenario's values.
    for variable in dashboard["templating"]["list"].as_array().unwrap() {
        if variable["type"] != "query" {
            continue;
        }
        let name = variable["name"].as_str().unwrap();
        let what = format!("dashboard variable ${name}");
        let definition = variable["query"].as_str().unwrap();
        let inner = definition
            .strip_prefix("label_values(")
            .and_then(|q| q.strip_suffix(')'))
            .unwrap_or_else(|| panic!("{what}: only label_values(…) is checked: {definition}"));
        let (selector, label) = inner.rsplit_once(',').unwrap();
        let selector = substitute(selector.trim(), variables, &what);
        let path = format!(
            "/api/v1/label/{}/values?match[]={}",
            label.trim(),
            url_encode(&selector)
        );
        checked += 1;
        match api(prometheus, &path).await {
            Ok(values) if strings_contain(&values, &variables[name]) => {}
            Ok(values) => failures.push(format!(
                "{what} ({definition}): offers {values}, not {:?}",
                variables[name]
            )),
            Err(e) => failures.push(format!("{what} ({definition}): {e}")),
        }
    }

    for panel in dashboard["panels"].as_array().unwrap() {
        let title = panel["title"].as_str().unwrap_or("(untitled)");
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().unwrap();
            let what = format!(
                "panel {title:?}, query {}",
                target["refId"].as_str().unwrap_or("?")
            );
            let concrete = substitute(expr, variables, &what);
            checked += 1;
            if let Err(e) = returns_data(prometheus, &concrete, &grouping_labels(expr)).await {
                failures.push(format!("{what}: {concrete}: {e}"));
            }
        }
    }

    for rule in alert_rules() {
        let alert = rule["alert"].as_str().unwrap();
        let expr = rule["expr"].as_str().unwrap();
        let firing = ALERTS_FIRING
            .iter()
            .find(|(name, _)| *name == alert)
            .map(|(_, firing)| *firing)
            .unwrap_or_else(|| {
                panic!("alert {alert} is not in ALERTS_FIRING: say whether the scenario fires it")
            });
        let operand = operand(expr);
        let mut labels = grouping_labels(expr);
        labels.extend(annotation_labels(&rule));
        checked += 1;
        if let Err(e) = returns_data(prometheus, &operand, &labels).await {
            failures.push(format!("alert {alert}, operand {operand}: {e}"));
        }
        checked += 1;
        match query(prometheus, expr).await {
            Ok(series) if series.is_empty() != firing => {}
            Ok(series) => failures.push(format!(
                "alert {alert}: {expr} should {} but returns {series:?}",
                if firing { "fire" } else { "stay silent" }
            )),
            Err(e) => failures.push(format!("alert {alert}: {expr}: {e}")),
        }
    }

    if failures.is_empty() {
        Ok(checked)
    } else {
        Err(format!("\n  {}", failures.join("\n  ")))
    }
}

fn strings_contain(values: &Value, wanted: &str) -> bool {
    values
        .as_array()
        .is_some_and(|values| values.iter().any(|v| v == wanted))
}

/// A custom detector whose every answer is an HTTP 500: the breaker's source fails.
async fn failing_detector() -> String {
    let app = axum::Router::new().route(
        "/faulty",
        axum::routing::get(|| async { (http::StatusCode::INTERNAL_SERVER_ERROR, "down") }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/faulty", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    url
}

async fn scrape_the_operator(metrics: SocketAddr, dir: &Path) -> PrometheusProcess {
    // No pod is scraped: the file lists no target, the operator is a static one.
    let sd_file = dir.join("targets.json");
    std::fs::write(&sd_file, "[]").unwrap();
    let options = PrometheusOptions {
        scrape_interval: Duration::from_secs(SCRAPE_INTERVAL_SECONDS),
        extra_static_targets: vec![metrics.to_string()],
        ..PrometheusOptions::new(&sd_file)
    };
    let prometheus = PrometheusProcess::start(options)
        .await
        .unwrap_or_else(|e| panic!("this test needs a real Prometheus: {e}"));
    prometheus
        .wait_for_targets(1, Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| panic!("Prometheus does not scrape the operator: {e}"));
    prometheus
}

on_both_backends! {
    async fn every_dashboard_query_and_alert_expression_returns_data(backend: Backend) {
        let mut cluster = Cluster::start(backend).await;
        let metrics = cluster.start_operator_serving_metrics().await;
        let dir = tempfile::tempdir().unwrap();
        let prometheus = scrape_the_operator(metrics, dir.path()).await;

        cluster.deploy("web", 5, BTreeMap::new()).await;
        let errors = CustomDetector::start().await;
        let fleet_wide = CustomDetector::start().await;
        let breakers = json!([
            // Two pods flagged, at least 4 of 5 keep traffic: one ejected, one spared.
            {"name": "errors", "evaluationPeriod": 0.3, "minPodsAvailableCount": 4,
             "customService": errors.url},
            // Any flagged pod is too many healthy ones lost: panic.
            {"name": "fleet-wide", "evaluationPeriod": 0.3, "panicThresholdPercent": 100,
             "customService": fleet_wide.url},
            {"name": "unreachable", "evaluationPeriod": 0.3,
             "customService": failing_detector().await},
        ]);
        // Ejected once is one time too many: the activator pauses the pod.
        let activator =
            json!({"mode": "retryAndPause", "period": 0.5, "maxRetryCount": 0, "maxPauseCount": 1});
        cluster.guard(breakers, activator, false).await;
        let pods = cluster.wait_ready_pods("web", 5).await;
        errors.report(&pods[..2]);
        fleet_wide.report(&pods[4..]);
        eventually("one pod paused, four serving", Duration::from_secs(30), || async {
            let traffic = cluster.traffic("web").await;
            let paused = traffic.values().filter(|t| *t == "pause").count();
            let serving = traffic.values().filter(|t| *t == "yes").count();
            if paused == 1 && serving == 4 {
                Ok(())
            } else {
                Err(format!("{traffic:?}"))
            }
        })
        .await;

        // What a viewer of this KubervisorService selects; the interval variables as Grafana
        // computes them for a data source scraped every second.
        let scrape = SCRAPE_INTERVAL_SECONDS;
        let variables = BTreeMap::from([
            ("namespace", cluster.namespace.clone()),
            ("name", "web".to_string()),
            ("__interval", format!("{scrape}s")),
            // max($__interval + scrape interval, 4 × scrape interval)
            ("__rate_interval", format!("{}s", (2 * scrape).max(4 * scrape))),
        ]);
        let checked = eventually(
            "every dashboard query and alert expression to return data",
            Duration::from_secs(30),
            || check_everything(&prometheus, &variables),
        )
        .await;
        // 2 variables, 11 panel queries, 2 checks per alert.
        assert!(checked >= 2 + 11 + 2 * ALERTS_FIRING.len(), "{checked} checks");
    }
}

#[test]
fn alert_operands_are_what_the_comparison_applies_to() {
    assert_eq!(
        operand("max by (namespace, name) (kubervisor_breaker_gauge{type=\"paused\"}) > 0"),
        "max by (namespace, name) (kubervisor_breaker_gauge{type=\"paused\"})"
    );
    assert_eq!(
        operand("sum(kubervisor_leading) < 1"),
        "sum(kubervisor_leading)"
    );
    assert_eq!(operand("absent(kubervisor_leading)"), "kubervisor_leading");
    assert_eq!(
        grouping_labels("histogram_quantile(0.99, sum by (le, source) (rate(x[5m])))"),
        BTreeSet::from(["source".to_string()])
    );
    let values = BTreeMap::from([
        ("namespace", "shop".to_string()),
        ("name", "web".to_string()),
    ]);
    assert_eq!(
        substitute(
            "x{namespace=~\"$namespace\", name=~\"${name}\"}",
            &values,
            "test"
        ),
        "x{namespace=~\"shop\", name=~\"web\"}"
    );
}
