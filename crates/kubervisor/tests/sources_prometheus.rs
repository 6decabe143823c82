//! Detectors judging a kubesim fleet from a real Prometheus that scrapes it every second.

mod support;

use std::time::Duration;

use kubervisor::source::{QueryResult, SourceSettings, Sources};
use kubervisor_api::{
    ContinuousRule, Detection, DiscreteRule, OutlierDirection, OutlierRule, SuccessRateRule,
    ThresholdRule, TrendRule, ValueList,
};
use kubervisor_core::detect::{Findings, FleetStatistic};
use support::{SimFleet, eventually, start_prometheus};

const EVALUATION_PERIOD: Duration = Duration::from_secs(5);
/// Bound on pods becoming ready and Prometheus scraping each twice within the range window.
const DATA_TIMEOUT: Duration = Duration::from_secs(30);
const ERROR_RATE: &str = "sim.kubervisor.io/error-rate";
const PRICE: &str = "sim.kubervisor.io/price";
const LATENCY: &str = "sim.kubervisor.io/latency-ms";
const LATENCY_RAMP: &str = "sim.kubervisor.io/latency-ms-per-minute";

/// Each pod's p99 latency, in seconds, from its histogram over the last 10 s.
const P99: &str =
    "histogram_quantile(0.99, sum by (pod, le) (rate(http_request_duration_seconds_bucket[10s])))";

/// Eight pods named `shop-0`..`shop-7` with one annotation each; `odd` gets `odd_value`.
fn eight(
    annotation: &'static str,
    value: &str,
    odd: &str,
    odd_value: &str,
) -> Vec<(String, Vec<(&'static str, String)>)> {
    (0..8)
        .map(|i| {
            let name = format!("shop-{i}");
            let v = if name == odd { odd_value } else { value };
            (name, vec![(annotation, v.to_string())])
        })
        .collect()
}

fn borrowed<'a>(
    pods: &'a [(String, Vec<(&'a str, String)>)],
) -> Vec<(&'a str, Vec<(&'a str, String)>)> {
    pods.iter().map(|(n, a)| (n.as_str(), a.clone())).collect()
}

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

#[tokio::test]
async fn continuous_outlier_on_the_p99_ejects_exactly_the_slow_pod_of_eight() {
    let dir = tempfile::tempdir().unwrap();
    let pods = eight(LATENCY, "20", "shop-5", "200");
    let fleet = SimFleet::start(dir.path(), 400.0, &borrowed(&pods)).await;
    let prometheus = start_prometheus(&fleet.sd_file).await;
    let sources = Sources::new(SourceSettings::default()).unwrap();
    let detection = Detection::Outlier(OutlierRule {
        prometheus_service: prometheus.address().to_string(),
        promql: P99.into(),
        pod_name_key: "pod".into(),
        max_z_score: 3.5,
        min_deviation_percent: 10.0,
        direction: OutlierDirection::Both,
        minimum_hosts: 5,
    });

    wait_full_windows(
        &sources,
        prometheus.url(),
        "http_request_duration_seconds_count",
        8,
    )
    .await;
    let findings = judge_all(&sources, &detection, 8).await;

    assert_eq!(anomalous(&findings), ["shop-5"], "{findings:#?}");
    let Some(FleetStatistic::MedianMad { hosts, median, .. }) = findings.statistic else {
        panic!("{findings:?}")
    };
    assert_eq!(hosts, 8);
    // Latencies spread over [0.5, 1.5) × 20 ms: the p99 is close to 30 ms.
    assert!((0.025..0.031).contains(&median), "median p99 {median}");
    prometheus.stop().await;
    fleet.sim.shutdown().await;
}

#[tokio::test]
async fn value_threshold_on_an_error_ratio_ejects_exactly_the_pods_above_ten_percent() {
    let dir = tempfile::tempdir().unwrap();
    let pods: Vec<(&str, Vec<(&str, String)>)> = [
        ("shop-clean", 0.0),
        ("shop-two", 0.02),
        ("shop-eight", 0.08),
        ("shop-twenty", 0.2),
        ("shop-half", 0.5),
    ]
    .into_iter()
    .map(|(name, rate)| (name, vec![(ERROR_RATE, rate.to_string())]))
    .collect();
    let fleet = SimFleet::start(dir.path(), 200.0, &pods).await;
    let prometheus = start_prometheus(&fleet.sd_file).await;
    let sources = Sources::new(SourceSettings::default()).unwrap();
    let detection = Detection::Threshold(ThresholdRule {
        prometheus_service: prometheus.url().to_string(),
        promql: "sum by (pod) (rate(http_requests_total{code=\"500\"}[10s])) \
                 / sum by (pod) (rate(http_requests_total[10s]))"
            .into(),
        pod_name_key: "pod".into(),
        above: Some(0.1),
        below: None,
    });

    wait_full_windows(&sources, prometheus.url(), "http_requests_total", 5).await;
    let findings = judge_all(&sources, &detection, 5).await;

    assert_eq!(anomalous(&findings), ["shop-half", "shop-twenty"]);
    assert_eq!(findings.healthy, ["shop-clean", "shop-eight", "shop-two"]);
    prometheus.stop().await;
    fleet.sim.shutdown().await;
}

#[tokio::test]
async fn success_rate_outlier_ejects_forty_percent_among_two_and_judges_nothing_with_four() {
    let dir = tempfile::tempdir().unwrap();
    let rates = ["0", "0.01", "0.02", "0", "0.4", "0.01", "0.02", "0"];
    let pods: Vec<(String, Vec<(&str, String)>)> = rates
        .iter()
        .enumerate()
        .map(|(i, rate)| (format!("shop-{i}"), vec![(ERROR_RATE, rate.to_string())]))
        .collect();
    let fleet = SimFleet::start(dir.path(), 400.0, &borrowed(&pods)).await;
    let prometheus = start_prometheus(&fleet.sd_file).await;
    let sources = Sources::new(SourceSettings::default()).unwrap();
    let rule = |promql: &str| {
        Detection::SuccessRate(SuccessRateRule {
            prometheus_service: prometheus.address().to_string(),
            promql: promql.into(),
            pod_name_key: "pod".into(),
            key: "code".into(),
            values: ValueList::Good(["200".to_string()].into()),
            stdev_factor: 1.9,
            minimum_hosts: 5,
            request_volume: 100,
        })
    };

    wait_full_windows(&sources, prometheus.url(), "http_requests_total", 8).await;
    let detection = rule("sum by (code, pod) (increase(http_requests_total[10s]))");
    let findings = judge_all(&sources, &detection, 8).await;
    assert_eq!(anomalous(&findings), ["shop-4"], "{findings:#?}");
    assert!(matches!(
        findings.statistic,
        Some(FleetStatistic::MeanStdev { hosts: 8, .. })
    ));

    // Only four pods in the data: fewer than minimumHosts, nobody is judged.
    let four = rule("sum by (code, pod) (increase(http_requests_total{pod=~\"shop-[2-5]\"}[10s]))");
    let findings = sources.findings(&four, EVALUATION_PERIOD).await.unwrap();
    assert!(
        findings.anomalies.is_empty() && findings.healthy.is_empty(),
        "{findings:#?}"
    );
    assert_eq!(findings.not_judged.len(), 4);
    assert_eq!(
        findings.not_enough_data.as_deref(),
        Some("4 pods with enough requests, fewer than minimumHosts 5: nothing is judged")
    );
    prometheus.stop().await;
    fleet.sim.shutdown().await;
}

#[tokio::test]
async fn value_trend_ejects_the_pod_whose_latency_climbs_while_the_others_are_flat() {
    let dir = tempfile::tempdir().unwrap();
    let mut pods = eight(LATENCY, "20", "", "");
    // 20 ms, then 10 ms more every second.
    pods[3].1.push((LATENCY_RAMP, "600".into()));
    let fleet = SimFleet::start(dir.path(), 400.0, &borrowed(&pods)).await;
    let prometheus = start_prometheus(&fleet.sd_file).await;
    let sources = Sources::new(SourceSettings::default()).unwrap();
    let detection = Detection::Trend(TrendRule {
        prometheus_service: prometheus.address().to_string(),
        promql: "sum by (pod) (rate(http_request_duration_seconds_sum[5s])) \
                 / sum by (pod) (rate(http_request_duration_seconds_count[5s]))"
            .into(),
        pod_name_key: "pod".into(),
        window: Duration::from_secs(30),
        // 2 ms per second; the climbing pod gains 10.
        max_slope: Some(0.002),
        min_slope: None,
    });

    wait_full_windows(
        &sources,
        prometheus.url(),
        "http_request_duration_seconds_count",
        8,
    )
    .await;
    let findings = judge_all(&sources, &detection, 8).await;

    assert_eq!(anomalous(&findings), ["shop-3"], "{findings:#?}");
    let text = findings.anomalies[0].evidence.to_string();
    assert!(text.contains("> maxSlope 0.002"), "{text}");
    prometheus.stop().await;
    fleet.sim.shutdown().await;
}
