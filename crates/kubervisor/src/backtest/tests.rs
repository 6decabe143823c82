use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use proptest::prelude::*;

use super::detector::SeriesKey;
use super::*;

const T0: &str = "2026-11-25T06:00:00Z";

fn t0() -> Timestamp {
    T0.parse().unwrap()
}

fn at(seconds: i64) -> Timestamp {
    t0() + SignedDuration::from_secs(seconds)
}

fn policy(breaker: &str, activator: &str) -> Policy {
    let yaml = format!(
        "apiVersion: kubervisor.k8s.io/v1alpha1\nkind: KubervisorService\nmetadata:\n  name: web\n  namespace: shop\nspec:\n  service: web\n  breakers:\n{breaker}  defaultActivator:\n{activator}"
    );
    Policy::parse("kvs.yaml", &yaml).unwrap()
}

const ERRORS: &str = "  - name: errors\n    evaluationPeriod: 10\n    minPodsAvailableCount: 2\n    discreteValueOutOfList:\n      prometheusService: prometheus:9090\n      promQL: sum by (code, pod) (requests)\n      key: code\n      podNamekey: pod\n      goodValues: [\"200\"]\n      tolerance: 20\n      minActivity: 10\n";
const PERIODIC_30: &str = "    mode: periodic\n    period: 30\n";

/// Five pods over [0, 300 s]: web-3 half errors in [60 s, 120 s), web-5 always 10 %.
fn http_history(end: i64, bad: impl Fn(&str, i64) -> f64) -> History {
    let step = Duration::from_secs(10);
    let mut history = History::empty(t0(), at(end), step);
    for pod in ["web-1", "web-2", "web-3", "web-4", "web-5"] {
        for code in ["200", "500"] {
            history.keys.push(SeriesKey {
                pod: pod.into(),
                key: Some(code.into()),
            });
        }
    }
    for (i, samples) in history.instants.iter_mut().enumerate() {
        let t = i as i64 * 10;
        for (p, pod) in ["web-1", "web-2", "web-3", "web-4", "web-5"]
            .iter()
            .enumerate()
        {
            let ratio = bad(pod, t);
            samples.push((2 * p, 100.0 * (1.0 - ratio)));
            samples.push((2 * p + 1, 100.0 * ratio));
        }
    }
    history
}

fn scenario_bad(pod: &str, t: i64) -> f64 {
    match pod {
        "web-3" if (60..120).contains(&t) => 0.5,
        "web-5" => 0.1,
        _ => 0.0,
    }
}

fn run_on(policy: &Policy, history: History, end: i64, fleet_size: Option<usize>) -> Backtest {
    let plan = Plan::new(policy, None).unwrap();
    let breakers = plan
        .detectors
        .into_iter()
        .map(|(name, detector)| BreakerHistory {
            name,
            detector,
            history: history.clone(),
        })
        .collect();
    let options = Options {
        prometheus: None,
        start: t0(),
        end: at(end),
        breaker: None,
        fleet_size,
        charts: true,
    };
    replay_histories(policy, &plan.spec, breakers, plan.not_replayable, &options).unwrap()
}

fn timeline(backtest: &Backtest) -> Vec<(i64, &str, &str)> {
    backtest
        .replayed
        .decisions
        .iter()
        .map(|d| {
            (
                d.time.duration_since(t0()).as_secs(),
                d.action.as_str(),
                d.pod.as_deref().unwrap_or("-"),
            )
        })
        .collect()
}

#[test]
fn bad_pod_is_ejected_readmitted_and_ejected_again_while_bad() {
    let policy = policy(ERRORS, PERIODIC_30);
    let backtest = run_on(&policy, http_history(300, scenario_bad), 300, None);
    assert_eq!(
        timeline(&backtest),
        [
            (60, "eject", "web-3"),
            (90, "activate", "web-3"),
            (90, "eject", "web-3"),
            (120, "activate", "web-3"),
        ]
    );
    let summary = report::Summary::of(&backtest);
    assert_eq!(summary.evaluations, 31);
    assert_eq!(summary.ejections, 2);
    assert_eq!(summary.distinct_pods_ejected, 1);
    assert_eq!(summary.max_pods_out, 1);
    assert_eq!(summary.min_pods_with_traffic, 4);
    assert_eq!(summary.floor, 2);
    assert_eq!(summary.time_out_seconds["web-3"], 60.0);
    assert_eq!(summary.time_out_seconds["web-5"], 0.0);
}

#[test]
fn floor_spares_pods_and_says_so() {
    // Every pod but web-1 bad: with a floor of 2, three are ejected and one is spared.
    let policy = policy(ERRORS, PERIODIC_30);
    let history = http_history(20, |pod, _| if pod == "web-1" { 0.0 } else { 0.9 });
    let backtest = run_on(&policy, history, 20, None);
    let spared: Vec<_> = timeline(&backtest)
        .into_iter()
        .filter(|(_, action, _)| *action == "spare")
        .collect();
    assert_eq!(spared, [(0, "spare", "web-5")]);
    let summary = report::Summary::of(&backtest);
    assert_eq!(summary.ejections, 3);
    assert_eq!((summary.min_pods_with_traffic, summary.floor), (2, 2));
}

#[test]
fn unreported_pods_count_toward_the_fleet() {
    let policy = policy(ERRORS, PERIODIC_30);
    let backtest = run_on(&policy, http_history(300, scenario_bad), 300, Some(8));
    let summary = report::Summary::of(&backtest);
    assert_eq!(summary.pods, 8);
    assert_eq!(summary.min_pods_with_traffic, 7);
}

#[test]
fn custom_breakers_are_reported_not_replayable() {
    let custom = "  - name: custom\n    customService: detector:8080\n";
    let only_custom = policy(custom, PERIODIC_30);
    let err = Plan::new(&only_custom, None).err().unwrap();
    assert!(err.to_string().contains("customService"), "{err}");
    let both = policy(&format!("{ERRORS}{custom}"), PERIODIC_30);
    let plan = Plan::new(&both, None).unwrap();
    assert_eq!(plan.not_replayable.len(), 1);
    assert_eq!(plan.not_replayable[0].breaker, "custom");
}

#[test]
fn unknown_breaker_names_the_known_ones() {
    let policy = policy(ERRORS, PERIODIC_30);
    let err = Plan::new(&policy, Some("latency")).err().unwrap();
    assert_eq!(
        err.to_string(),
        "--breaker latency: no such breaker; the resource has breakers errors"
    );
    assert!(err.is_invalid_input());
}

#[test]
fn times_are_rfc3339_or_relative() {
    let now: Timestamp = "2026-11-25T12:00:00Z".parse().unwrap();
    let parse = |text| parse_time("--start", text, now);
    assert_eq!(parse("now").unwrap(), now);
    assert_eq!(
        parse("-6h").unwrap(),
        "2026-11-25T06:00:00Z".parse().unwrap()
    );
    assert_eq!(
        parse("-30m").unwrap(),
        "2026-11-25T11:30:00Z".parse().unwrap()
    );
    assert_eq!(
        parse("now-1h30m").unwrap(),
        "2026-11-25T10:30:00Z".parse().unwrap()
    );
    assert_eq!(
        parse("2026-11-24T10:00:00+01:00").unwrap(),
        "2026-11-24T09:00:00Z".parse().unwrap()
    );
    for bad in ["yesterday", "-6x", "2026-13-01T00:00:00Z", ""] {
        let err = parse(bad).unwrap_err().to_string();
        assert!(err.starts_with("invalid --start"), "{bad}: {err}");
    }
    assert!(check_range(now, now).is_err());
}

#[test]
fn text_and_json_state_the_caveat_and_the_floor() {
    let policy = policy(ERRORS, PERIODIC_30);
    let backtest = run_on(&policy, http_history(300, scenario_bad), 300, None);
    let text = report::text(&backtest);
    assert!(text.contains("Caveat: history was recorded"), "{text}");
    assert!(
        text.contains("fewest pods with traffic     4 (floor 2)"),
        "{text}"
    );
    let json = report::json_lines(&backtest);
    let lines: Vec<serde_json::Value> = json
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 5);
    assert_eq!(lines[0]["action"], "eject");
    assert_eq!(lines[0]["pod"], "web-3");
    assert_eq!(lines[0]["breaker"], "errors");
    assert_eq!(lines[0]["time"], "2026-11-25T06:01:00Z");
    assert_eq!(lines[4]["summary"]["minPodsWithTraffic"], 4);
    assert_eq!(lines[4]["summary"]["floor"], 2);
}

#[test]
fn html_report_is_self_contained_and_charts_every_pod() {
    let policy = policy(ERRORS, PERIODIC_30);
    let backtest = run_on(&policy, http_history(300, scenario_bad), 300, None);
    let page = html::render(&[&backtest]);
    assert!(!page.contains("http://") && !page.contains("https://"));
    assert!(page.contains("<svg"));
    if let Ok(path) = std::env::var("BACKTEST_REPORT_SAMPLE") {
        std::fs::write(path, &page).unwrap();
    }
    for pod in ["web-1", "web-3", "web-5", "threshold 0.2"] {
        assert!(
            page.contains(&format!("{pod}\n</text>")),
            "{pod} missing from the chart"
        );
    }
}

/// One series per pod with the given values, one row per instant from `first`.
fn value_history(first: Timestamp, step: Duration, rows: &[Vec<f64>]) -> History {
    let end = first + SignedDuration::try_from(step * (rows.len() as u32 - 1)).unwrap();
    let mut history = History::empty(first, end, step);
    for p in 0..rows[0].len() {
        history.keys.push(SeriesKey {
            pod: format!("web-{}", p + 1),
            key: None,
        });
    }
    for (i, row) in rows.iter().enumerate() {
        history.instants[i] = row.iter().copied().enumerate().collect();
    }
    history
}

const TREND: &str = "  - name: leak\n    evaluationPeriod: 10\n    minPodsAvailableCount: 1\n    valueTrend:\n      prometheusService: prometheus:9090\n      promQL: memory\n      podNamekey: pod\n      window: 60\n      maxSlope: 0.4\n";

fn only_detector(policy: &Policy) -> Box<dyn detector::Replayable> {
    Plan::new(policy, None).unwrap().detectors.remove(0).1
}

#[test]
fn trend_fits_the_window_the_operator_would_have_queried() {
    let policy = policy(TREND, PERIODIC_30);
    let detector = only_detector(&policy);
    // The range query starts one window before the range, at the operator's own step.
    let period = Duration::from_secs(10);
    assert_eq!(
        detector.range(t0(), period),
        (
            at(-60),
            crate::source::trend_step(Duration::from_secs(60), period)
        )
    );
    // web-2 rises 1 unit/s from -60 s; web-1 is flat. At 0 s the window [-60 s, 0 s]
    // holds 7 points, all before or at the start.
    let rows: Vec<Vec<f64>> = (0..13)
        .map(|i| vec![100.0, 100.0 + 10.0 * f64::from(i)])
        .collect();
    let history = value_history(at(-60), period, &rows);
    let findings = detector.judge(&history, t0());
    assert_eq!(findings.healthy, ["web-1"]);
    assert_eq!(findings.anomalies.len(), 1);
    let anomaly = &findings.anomalies[0];
    assert_eq!(anomaly.pod, "web-2");
    assert_eq!(
        anomaly.evidence.to_string(),
        "slope 1/s over 7 points in 60 s > maxSlope 0.4"
    );
    // The chart's quantity is the slope itself, per judged pod.
    assert_eq!(
        detector.quantity(&history, at(60)),
        [("web-1".to_string(), 0.0), ("web-2".to_string(), 1.0)]
    );
    // At the end of the data only 1 point is left in a window past it: not judged.
    let late = detector.judge(&history, at(120));
    assert!(late.anomalies.is_empty() && late.healthy.is_empty());
    assert_eq!(late.not_judged.len(), 2);
}

#[test]
fn chart_quantities_are_what_each_detector_compares() {
    let values = vec![vec![100.0, 102.0, 300.0, 101.0, 99.0]];
    let history = value_history(t0(), Duration::from_secs(10), &values);
    let threshold = "  - name: bound\n    valueThreshold:\n      prometheusService: prometheus:9090\n      promQL: latency\n      podNamekey: pod\n      above: 200\n";
    let detector = only_detector(&policy(threshold, PERIODIC_30));
    assert_eq!(detector.thresholds(), [200.0]);
    let quantity: Vec<f64> = detector
        .quantity(&history, t0())
        .into_iter()
        .map(|(_, v)| v)
        .collect();
    assert_eq!(quantity, values[0]);

    let outlier = "  - name: outlier\n    continuousOutlier:\n      prometheusService: prometheus:9090\n      promQL: latency\n      podNamekey: pod\n      direction: above\n";
    let detector = only_detector(&policy(outlier, PERIODIC_30));
    assert_eq!(detector.thresholds(), [3.5]);
    // Median 101, MAD 1: signed modified z-scores, both sides whatever the direction.
    let z: Vec<(String, f64)> = detector.quantity(&history, t0());
    let expected = [-1.0, 1.0, 199.0, 0.0, -2.0].map(|d| 0.6745 * d);
    for ((_, got), want) in z.iter().zip(expected) {
        assert!((got - want).abs() < 1e-9, "{z:?}");
    }
    assert_eq!(detector.judge(&history, t0()).anomalies[0].pod, "web-3");

    let rate = "  - name: rate\n    successRateOutlier:\n      prometheusService: prometheus:9090\n      promQL: sum by (code, pod) (requests)\n      key: code\n      podNamekey: pod\n      goodValues: [\"200\"]\n";
    let detector = only_detector(&policy(rate, PERIODIC_30));
    assert!(
        detector.thresholds().is_empty(),
        "the bound moves with the fleet"
    );
    let spread = http_history(0, |pod, _| if pod == "web-3" { 0.5 } else { 0.0 });
    let rates = detector.quantity(&spread, t0());
    assert_eq!(rates[2], ("web-3".to_string(), 0.5));
    assert_eq!(rates[0], ("web-1".to_string(), 1.0));
    // No spread: nobody is anomalous, yet every pod's rate is charted.
    let flat = http_history(0, |_, _| 0.1);
    let rates = detector.quantity(&flat, t0());
    assert_eq!(rates.len(), 5);
    assert!(
        rates.iter().all(|(_, r)| (r - 0.9).abs() < 1e-12),
        "{rates:?}"
    );
}

/// The detection methods the property test draws from.
#[derive(Clone, Copy, Debug)]
enum Method {
    Discrete,
    SuccessRate,
    Threshold,
    Outlier,
    Trend,
}

impl Method {
    /// The breaker, with a floor of `min` pods.
    fn breaker(self, min: u32) -> String {
        let head =
            format!("  - name: b\n    evaluationPeriod: 10\n    minPodsAvailableCount: {min}\n");
        let query = "      prometheusService: prometheus:9090\n      podNamekey: pod\n";
        match self {
            Method::Discrete => ERRORS.replace(
                "minPodsAvailableCount: 2",
                &format!("minPodsAvailableCount: {min}"),
            ),
            Method::SuccessRate => format!(
                "{head}    successRateOutlier:\n{query}      promQL: sum by (code, pod) (requests)\n      key: code\n      goodValues: [\"200\"]\n      minimumHosts: 2\n      requestVolume: 10\n      stdevFactor: 1\n"
            ),
            Method::Threshold => {
                format!("{head}    valueThreshold:\n{query}      promQL: ratio\n      above: 0.3\n")
            }
            Method::Outlier => format!(
                "{head}    continuousOutlier:\n{query}      promQL: ratio\n      minimumHosts: 2\n      maxZScore: 2\n"
            ),
            Method::Trend => format!(
                "{head}    valueTrend:\n{query}      promQL: ratio\n      window: 30\n      maxSlope: 0.01\n"
            ),
        }
    }

    /// Its history from per instant per pod bad ratios (tenths): counts by code for the
    /// keyed methods, the ratio itself for the others; a trend's starts a window early.
    fn history(self, ratios: &[Vec<u8>]) -> (History, i64) {
        let step = Duration::from_secs(10);
        match self {
            Method::Discrete | Method::SuccessRate => {
                let end = (ratios.len() as i64 - 1) * 10;
                let mut history = History::empty(t0(), at(end), step);
                for p in 1..=ratios[0].len() {
                    for code in ["200", "500"] {
                        history.keys.push(SeriesKey {
                            pod: format!("web-{p}"),
                            key: Some(code.into()),
                        });
                    }
                }
                for (i, row) in ratios.iter().enumerate() {
                    for (p, ratio) in row.iter().enumerate() {
                        history.instants[i].push((2 * p, f64::from(10 - ratio)));
                        history.instants[i].push((2 * p + 1, f64::from(*ratio)));
                    }
                }
                (history, end)
            }
            Method::Threshold | Method::Outlier | Method::Trend => {
                let rows: Vec<Vec<f64>> = ratios
                    .iter()
                    .map(|row| row.iter().map(|r| f64::from(*r) / 10.0).collect())
                    .collect();
                let early = if matches!(self, Method::Trend) { 30 } else { 0 };
                let end = (ratios.len() as i64 - 1) * 10 - early;
                (value_history(at(-early), step, &rows), end)
            }
        }
    }
}

/// Random fleets and histories: (method, pods, min count, per instant per pod bad ratio).
fn histories() -> impl Strategy<Value = (Method, usize, u32, Vec<Vec<u8>>)> {
    let method = prop_oneof![
        Just(Method::Discrete),
        Just(Method::SuccessRate),
        Just(Method::Threshold),
        Just(Method::Outlier),
        Just(Method::Trend),
    ];
    (method, 2usize..8, 1u32..4).prop_flat_map(|(method, pods, min)| {
        (
            Just(method),
            Just(pods),
            Just(min),
            prop::collection::vec(prop::collection::vec(0u8..=10, pods), 5..40),
        )
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn replay_never_goes_under_the_floor_and_is_deterministic((method, pods, min, ratios) in histories()) {
        let policy = policy(&method.breaker(min), "    mode: retryAndKill\n    period: 20\n    maxRetryCount: 2\n");
        let (history, end) = method.history(&ratios);
        let first = run_on(&policy, history.clone(), end, None);
        let second = run_on(&policy, history, end, None);
        prop_assert_eq!(report::json_lines(&first), report::json_lines(&second));
        let summary = report::Summary::of(&first);
        // Kills shrink the fleet: the floor holds over the pods that are left.
        let floor = (min as usize).min(pods - summary.kills);
        prop_assert!(
            summary.min_pods_with_traffic >= floor,
            "{} pods with traffic, floor {}", summary.min_pods_with_traffic, floor
        );
    }
}
