//! Detectors judging a kubesim fleet from a real Prometheus that scrapes it every second.

mod support;

use std::time::Duration;

use kubervisor::source::{QueryResult, SourceSettings, Sources};
use kubervisor_api::{ContinuousRule, Detection, DiscreteRule, ValueList};
use kubervisor_core::detect::Findings;
use support::{SimFleet, eventually, start_prometheus};

const EVALUATION_PERIOD: Duration = Duration::from_secs(5);
/// Bound on pods becoming ready and Prometheus scraping each twice within the range window.
const DATA_TIMEOUT: Duration = Duration::from_secs(30);
const ERROR_RATE: &str = "sim.kubervisor.io/error-rate";
const PRICE: &str = "sim.kubervisor.io/price";

fn anomalous(findings: &Findings) -> Vec<&str> {
    findings.anomalies.iter().map(|a| a.pod.as_str()).collect()
}

/// Evaluates `detection` until every one of `pods` is judged, then returns the findings.
/// Waits until every pod has served for a whole 10 s query window: before that, pods that
/// joined the load balancer later weigh less in fleet-wide sums, which skews the verdicts.
async fn wait_full_windows(sources: &Sources, prometheus: &str, metric: &str, pods: usize) {
    let promql = format!("count(min by (pod) (count_over_time({metric}[10s])) >= 9)");
    eventually("every pod to fill a 10 s window", DATA_TIMEOUT, || async {
        let full = match sources.query(prometheus, &promql, EVALUATION_PERIOD).await {
            Ok(QueryResult::Vector(samples)) => samples.first().map_or(0.0, |s| s.value),
            other => return Err(format!("{other:?}")),
        };
        if full >= pods as f64 {
            Ok(())
        } else {
            Err(format!("{full} of {pods} pods have a full window"))
        }
    })
    .await
}

async fn judge_all(sources: &Sources, detection: &Detection, pods: usize) -> Findings {
    eventually("every pod to be judged", DATA_TIMEOUT, || async {
        let findings = sources
            .findings(detection, EVALUATION_PERIOD)
            .await
            .map_err(|e| e.to_string())?;
        let judged = findings.anomalies.len() + findings.healthy.len();
        if judged == pods {
            Ok(findings)
        } else {
            Err(format!("{judged} of {pods} judged: {findings:?}"))
        }
    })
    .await
}

#[tokio::test]
async fn discrete_detector_flags_exactly_the_pods_above_tolerance() {
    let dir = tempfile::tempdir().unwrap();
    let pods: Vec<(&str, Vec<(&str, String)>)> = [
        ("shop-ok", 0.0),
        ("shop-few-errors", 0.05),
        ("shop-below-tolerance", 0.3),
        ("shop-failing", 0.7),
        ("shop-down", 1.0),
    ]
    .into_iter()
    .map(|(name, rate)| (name, vec![(ERROR_RATE, rate.to_string())]))
    .collect();
    let fleet = SimFleet::start(dir.path(), 100.0, &pods).await;
    let prometheus = start_prometheus(&fleet.sd_file).await;
    let sources = Sources::new(SourceSettings::default()).unwrap();
    let detection = Detection::Discrete(DiscreteRule {
        // The original `host:port` form.
        prometheus_service: prometheus.address().to_string(),
        promql: "sum by (code, pod) (increase(http_requests_total[10s]))".into(),
        key: "code".into(),
        pod_name_key: "pod".into(),
        values: ValueList::Good(["200".to_string()].into()),
        tolerance_percent: 50,
        min_activity: 2,
    });

    wait_full_windows(&sources, prometheus.url(), "http_requests_total", 5).await;
    let findings = judge_all(&sources, &detection, 5).await;

    assert_eq!(anomalous(&findings), ["shop-down", "shop-failing"]);
    assert_eq!(
        findings.healthy,
        ["shop-below-tolerance", "shop-few-errors", "shop-ok"]
    );
    prometheus.stop().await;
    fleet.sim.shutdown().await;
}

#[tokio::test]
async fn continuous_detector_flags_exactly_the_pods_whose_price_deviates() {
    let dir = tempfile::tempdir().unwrap();
    let pods: Vec<(&str, Vec<(&str, String)>)> = [
        ("shop-1", 10.0),
        ("shop-2", 10.0),
        ("shop-3", 10.0),
        ("shop-4", 10.0),
        ("shop-expensive", 60.0),
        ("shop-cheap", 1.0),
    ]
    .into_iter()
    .map(|(name, price)| (name, vec![(PRICE, price.to_string())]))
    .collect();
    let fleet = SimFleet::start(dir.path(), 120.0, &pods).await;
    let prometheus = start_prometheus(&fleet.sd_file).await;
    let sources = Sources::new(SourceSettings::default()).unwrap();
    let detection = Detection::Continuous(ContinuousRule {
        // The full-URL form.
        prometheus_service: prometheus.url().to_string(),
        promql: "(rate(price_sum[10s]) / rate(price_count[10s])) \
                 / scalar(sum(rate(price_sum[10s])) / sum(rate(price_count[10s])))"
            .into(),
        pod_name_key: "pod".into(),
        max_deviation_percent: 50.0,
    });

    wait_full_windows(&sources, prometheus.url(), "price_count", 6).await;
    let findings = judge_all(&sources, &detection, 6).await;

    // Fleet mean 16.8: the 10s deviate by 41% (within 50%), 60 by 256%, 1 by 94%.
    assert_eq!(anomalous(&findings), ["shop-expensive", "shop-cheap"]);
    assert_eq!(findings.healthy, ["shop-1", "shop-2", "shop-3", "shop-4"]);
    prometheus.stop().await;
    fleet.sim.shutdown().await;
}
