//! Property tests of the statistical detectors: each rule of `valueThreshold`, `valueTrend`,
//! `successRateOutlier` and `continuousOutlier` has a property here that fails without it.

use std::time::Duration;

use kubervisor_api::{
    OutlierDirection, OutlierRule, SuccessRateRule, ThresholdRule, TrendRule, ValueList,
};
use kubervisor_core::detect::{
    ContinuousSample, DiscreteSample, Findings, FleetStatistic, TrendSeries, continuous_outlier,
    success_rate_outlier, threshold, trend,
};
use kubervisor_core::stats::RobustSpread;
use proptest::prelude::*;

fn sample(pod: String, value: f64) -> ContinuousSample {
    ContinuousSample { pod, value }
}

/// Finite values from a small grid, so that ties and equal fleets are common.
fn arb_value() -> impl Strategy<Value = f64> {
    prop_oneof![
        4 => (-20i32..20).prop_map(|v| f64::from(v) / 4.0),
        1 => -1e3f64..1e3,
    ]
}

fn arb_fleet(max: usize) -> impl Strategy<Value = Vec<ContinuousSample>> {
    prop::collection::vec(arb_value(), 0..max).prop_map(|values| {
        values
            .into_iter()
            .enumerate()
            .map(|(i, v)| sample(format!("pod-{i:02}"), v))
            .collect()
    })
}

fn outlier_rule(max_z_score: f64, direction: OutlierDirection, minimum_hosts: u32) -> OutlierRule {
    OutlierRule {
        prometheus_service: "p:9090".into(),
        promql: "q".into(),
        pod_name_key: "pod".into(),
        max_z_score,
        min_deviation_percent: 0.0,
        direction,
        minimum_hosts,
    }
}

fn arb_direction() -> impl Strategy<Value = OutlierDirection> {
    prop::sample::select(vec![
        OutlierDirection::Above,
        OutlierDirection::Below,
        OutlierDirection::Both,
    ])
}

fn anomalous(findings: &Findings) -> Vec<&str> {
    findings.anomalies.iter().map(|a| a.pod.as_str()).collect()
}

/// Worst first, ties by name: what the breaker relies on for a deterministic order.
fn assert_ordered(findings: &Findings) -> Result<(), TestCaseError> {
    for pair in findings.anomalies.windows(2) {
        prop_assert!(
            pair[0].score > pair[1].score
                || (pair[0].score == pair[1].score && pair[0].pod < pair[1].pod),
            "{:?} before {:?}",
            pair[0],
            pair[1]
        );
    }
    Ok(())
}

/// Every pod of the data is in exactly one of anomalous, healthy, not judged.
fn assert_partition(findings: &Findings, pods: usize) -> Result<(), TestCaseError> {
    let mut all: Vec<&str> = anomalous(findings);
    all.extend(findings.healthy.iter().map(String::as_str));
    all.extend(findings.not_judged.iter().map(|(p, _)| p.as_str()));
    let count = all.len();
    all.sort();
    all.dedup();
    prop_assert_eq!(all.len(), count, "a pod in two verdicts");
    prop_assert_eq!(count, pods);
    Ok(())
}

fn success_rule(stdev_factor: f64, minimum_hosts: u32, request_volume: u32) -> SuccessRateRule {
    SuccessRateRule {
        prometheus_service: "p:9090".into(),
        promql: "q".into(),
        pod_name_key: "pod".into(),
        key: "code".into(),
        values: ValueList::Good(["200".to_string()].into()),
        stdev_factor,
        minimum_hosts,
        request_volume,
    }
}

/// Pods with (good, bad) request counts.
fn arb_traffic() -> impl Strategy<Value = Vec<(u32, u32)>> {
    prop::collection::vec(
        prop_oneof![
            3 => (50u32..2000, 0u32..40),
            1 => (0u32..2000, 0u32..2000),
        ],
        0..16,
    )
}

fn traffic_samples(traffic: &[(u32, u32)]) -> Vec<DiscreteSample> {
    traffic
        .iter()
        .enumerate()
        .flat_map(|(i, (good, bad))| {
            let pod = format!("pod-{i:02}");
            [
                DiscreteSample {
                    pod: pod.clone(),
                    key: "200".into(),
                    value: f64::from(*good),
                },
                DiscreteSample {
                    pod,
                    key: "503".into(),
                    value: f64::from(*bad),
                },
            ]
        })
        .collect()
}

proptest! {
    // valueThreshold: anomalous exactly when the value is past a bound.
    #[test]
    fn threshold_flags_exactly_the_values_past_a_bound(
        fleet in arb_fleet(12),
        above in prop::option::of(arb_value()),
        below in prop::option::of(arb_value()),
    ) {
        let rule = ThresholdRule {
            prometheus_service: "p:9090".into(),
            promql: "q".into(),
            pod_name_key: "pod".into(),
            above,
            below,
        };
        let findings = threshold(&rule, &fleet);
        for s in &fleet {
            let past = above.is_some_and(|a| s.value > a) || below.is_some_and(|b| s.value < b);
            prop_assert_eq!(anomalous(&findings).contains(&s.pod.as_str()), past, "{:?}", s);
        }
        assert_ordered(&findings)?;
        assert_partition(&findings, fleet.len())?;
    }

    // valueTrend: a straight line's slope is found, and a pod with fewer than 3 points is
    // never judged.
    #[test]
    fn trend_finds_a_line_slope_and_needs_three_points(
        slopes in prop::collection::vec((-100i32..100, 0usize..8), 0..10),
        max_slope in -50i32..50,
    ) {
        let rule = TrendRule {
            prometheus_service: "p:9090".into(),
            promql: "q".into(),
            pod_name_key: "pod".into(),
            window: Duration::from_secs(300),
            max_slope: Some(f64::from(max_slope) / 1000.0),
            min_slope: None,
        };
        let series: Vec<TrendSeries> = slopes
            .iter()
            .enumerate()
            .map(|(i, (per_ms, points))| TrendSeries {
                pod: format!("pod-{i:02}"),
                points: (0..*points)
                    .map(|k| {
                        let t = 1.8e9 + 15.0 * k as f64;
                        (t, 5.0 + f64::from(*per_ms) / 1000.0 * 15.0 * k as f64)
                    })
                    .collect(),
            })
            .collect();
        let findings = trend(&rule, &series);
        for (s, (per_ms, points)) in series.iter().zip(&slopes) {
            let flagged = anomalous(&findings).contains(&s.pod.as_str());
            let judged = flagged || findings.healthy.contains(&s.pod);
            prop_assert_eq!(judged, *points >= 3, "{}: {} points", s.pod, points);
            if judged && *per_ms != max_slope {
                // Away from the bound itself, where the fitted slope may round either way.
                prop_assert_eq!(flagged, *per_ms > max_slope, "{} slope {}", s.pod, per_ms);
            }
        }
        assert_ordered(&findings)?;
        assert_partition(&findings, series.len())?;
    }

    // successRateOutlier: pods under requestVolume are never judged; with fewer than
    // minimumHosts qualifying pods nothing is; otherwise anomalous exactly below
    // mean − factor × population stdev of the qualifying pods.
    #[test]
    fn success_rate_follows_envoy(
        traffic in arb_traffic(),
        factor in prop::sample::select(vec![0.5, 1.0, 1.9, 3.0]),
        minimum_hosts in 1u32..8,
        request_volume in prop::sample::select(vec![0u32, 100, 1000]),
    ) {
        let rule = success_rule(factor, minimum_hosts, request_volume);
        let findings = success_rate_outlier(&rule, &traffic_samples(&traffic));
        let qualifying: Vec<(String, f64)> = traffic
            .iter()
            .enumerate()
            .filter(|(_, (g, b))| g + b >= request_volume && g + b > 0)
            .map(|(i, (g, b))| (format!("pod-{i:02}"), f64::from(*g) / f64::from(g + b)))
            .collect();
        let judged: Vec<&str> = anomalous(&findings)
            .into_iter()
            .chain(findings.healthy.iter().map(String::as_str))
            .collect();
        if qualifying.len() < minimum_hosts as usize {
            prop_assert!(judged.is_empty(), "judged {:?} with {} qualifying", judged, qualifying.len());
            prop_assert!(findings.not_enough_data.is_some());
            return Ok(());
        }
        prop_assert_eq!(judged.len(), qualifying.len());
        let n = qualifying.len() as f64;
        let mean = qualifying.iter().map(|(_, r)| r).sum::<f64>() / n;
        let stdev = (qualifying.iter().map(|(_, r)| (r - mean).powi(2)).sum::<f64>() / n).sqrt();
        let Some(FleetStatistic::MeanStdev { mean: m, stdev: s, .. }) = findings.statistic else {
            return Err(TestCaseError::fail("no statistic"));
        };
        prop_assert!((m - mean).abs() < 1e-12 && (s - stdev).abs() < 1e-12, "{} {} vs {} {}", m, s, mean, stdev);
        let limit = mean - factor * stdev;
        for (pod, rate) in &qualifying {
            // Away from the boundary, where both sums may round differently.
            if (rate - limit).abs() > 1e-9 {
                prop_assert_eq!(anomalous(&findings).contains(&pod.as_str()), *rate < limit, "{} rate {} limit {}", pod, rate, limit);
            }
        }
        assert_ordered(&findings)?;
        assert_partition(&findings, traffic.len())?;
    }

    // continuousOutlier: anomalous exactly when the modified z-score is past maxZScore in the
    // rule's direction and the value is at least minDeviationPercent of the median away
    // from it; nothing is judged under minimumHosts; worst first.
    #[test]
    fn outlier_follows_the_modified_z_score(
        fleet in arb_fleet(14),
        max_z in prop::sample::select(vec![1.0, 2.0, 3.5]),
        min_deviation_percent in prop::sample::select(vec![0.0, 10.0, 50.0]),
        direction in arb_direction(),
        minimum_hosts in 1u32..7,
    ) {
        let rule = OutlierRule {
            min_deviation_percent,
            ..outlier_rule(max_z, direction, minimum_hosts)
        };
        let findings = continuous_outlier(&rule, &fleet);
        assert_partition(&findings, fleet.len())?;
        assert_ordered(&findings)?;
        if fleet.len() < minimum_hosts as usize {
            prop_assert!(findings.anomalies.is_empty() && findings.healthy.is_empty());
            prop_assert!(findings.not_enough_data.is_some());
            return Ok(());
        }
        let values: Vec<f64> = fleet.iter().map(|s| s.value).collect();
        let Some(spread) = RobustSpread::of(&values) else {
            prop_assert!(fleet.is_empty());
            return Ok(());
        };
        for s in &fleet {
            let z = spread.z_score(s.value);
            let far = (s.value - spread.median).abs()
                >= min_deviation_percent / 100.0 * spread.median.abs();
            let expected = far && match direction {
                OutlierDirection::Above => z > max_z,
                OutlierDirection::Below => z < -max_z,
                OutlierDirection::Both => z.abs() > max_z,
            };
            prop_assert_eq!(anomalous(&findings).contains(&s.pod.as_str()), expected, "{:?} z {}", s, z);
        }
        for a in &findings.anomalies {
            prop_assert!(a.score.is_finite() && a.score > max_z);
        }
    }

    // minDeviationPercent: in a fleet of nearly equal values (tiny MAD), a pod closer to
    // the median than the bound is never an outlier although its z-score is far past
    // maxZScore; past the bound it is.
    #[test]
    fn a_pod_near_the_median_of_a_uniform_fleet_is_not_an_outlier(
        n in 5usize..20,
        base in 0.001f64..1000.0,
        jitter in prop::collection::vec(-1000i32..1000, 20),
        min_deviation_percent in 1.0f64..50.0,
        share in 0.05f64..0.95,
        sign in prop::sample::select(vec![-1.0, 1.0]),
    ) {
        // Healthy values within ±1e-5 of base: the MAD is at most base × 1e-5.
        let mut fleet: Vec<ContinuousSample> = (0..n)
            .map(|i| sample(format!("pod-{i:02}"), base * (1.0 + f64::from(jitter[i]) * 1e-8)))
            .collect();
        let offset = sign * share * min_deviation_percent / 100.0;
        fleet.push(sample("odd".into(), base * (1.0 + offset)));
        let rule = OutlierRule {
            min_deviation_percent,
            ..outlier_rule(3.5, OutlierDirection::Both, 5)
        };
        let values: Vec<f64> = fleet.iter().map(|s| s.value).collect();
        let spread = RobustSpread::of(&values).expect("a fleet");
        prop_assume!(spread.z_score(base * (1.0 + offset)).abs() > 3.5);
        let findings = continuous_outlier(&rule, &fleet);
        prop_assert!(findings.anomalies.is_empty(), "{:?}", findings.anomalies);
        // Twice the bound away, the same pod is an outlier.
        fleet.pop();
        fleet.push(sample("odd".into(), base * (1.0 + sign * 2.0 * min_deviation_percent / 100.0)));
        let findings = continuous_outlier(&rule, &fleet);
        prop_assert_eq!(anomalous(&findings), vec!["odd"]);
    }

    // The MAD-zero fallback: when more than half the fleet is equal, one pod far from them
    // is still found (its score is n / 1.253314 with n ≥ 5 > 3.5).
    #[test]
    fn one_pod_away_from_an_equal_majority_is_an_outlier(
        n in 5usize..20,
        base in arb_value(),
        offset in prop_oneof![(-1000i32..-1), (1i32..1000)],
        odd in 0usize..20,
    ) {
        let odd = odd % n;
        let fleet: Vec<ContinuousSample> = (0..n)
            .map(|i| {
                let v = if i == odd { base + f64::from(offset) / 8.0 } else { base };
                sample(format!("pod-{i:02}"), v)
            })
            .collect();
        let findings = continuous_outlier(&outlier_rule(3.5, OutlierDirection::Both, 5), &fleet);
        let odd_pod = format!("pod-{odd:02}");
        prop_assert_eq!(anomalous(&findings), vec![odd_pod.as_str()]);
    }

    // A fleet with no spread at all (all equal, or one pod) flags nobody and judges everyone.
    #[test]
    fn a_fleet_without_spread_flags_nobody(n in 1usize..20, value in arb_value(), direction in arb_direction()) {
        let fleet: Vec<ContinuousSample> = (0..n).map(|i| sample(format!("pod-{i:02}"), value)).collect();
        let findings = continuous_outlier(&outlier_rule(0.5, direction, 1), &fleet);
        prop_assert!(findings.anomalies.is_empty());
        prop_assert_eq!(findings.healthy.len(), n);
        let Some(FleetStatistic::MedianMad { mad, mean_ad, .. }) = findings.statistic else {
            return Err(TestCaseError::fail("no statistic"));
        };
        prop_assert_eq!((mad, mean_ad), (0.0, 0.0));
        // Scores are 0, not the NaN of 0 / 0 that would only be harmless by accident.
        let spread = RobustSpread::of(&vec![value; n]).unwrap();
        prop_assert_eq!(spread.z_score(value), 0.0);
    }

    // Non-finite values are set aside: the other pods get the verdicts they would get alone.
    #[test]
    fn non_finite_values_do_not_move_the_fleet(
        fleet in arb_fleet(12),
        bad in prop::collection::vec(prop::sample::select(vec![f64::NAN, f64::INFINITY, f64::NEG_INFINITY]), 1..4),
    ) {
        let rule = outlier_rule(2.0, OutlierDirection::Both, 1);
        let clean = continuous_outlier(&rule, &fleet);
        let mut dirty = fleet.clone();
        dirty.extend(bad.iter().enumerate().map(|(i, v)| sample(format!("bad-{i}"), *v)));
        let findings = continuous_outlier(&rule, &dirty);
        prop_assert_eq!(anomalous(&findings), anomalous(&clean));
        prop_assert_eq!(&findings.healthy, &clean.healthy);
        prop_assert_eq!(findings.not_judged.len(), clean.not_judged.len() + bad.len());
    }

    // The arithmetic does not depend on units: shifting and scaling every value by a power
    // of two keeps the verdicts.
    #[test]
    fn outliers_do_not_depend_on_units(
        fleet in arb_fleet(12),
        shift in -8i32..8,
        scale in prop::sample::select(vec![0.25, 0.5, 2.0, 4.0]),
    ) {
        let rule = outlier_rule(3.5, OutlierDirection::Both, 3);
        let moved: Vec<ContinuousSample> = fleet
            .iter()
            .map(|s| sample(s.pod.clone(), s.value * scale + f64::from(shift)))
            .collect();
        let a = continuous_outlier(&rule, &fleet);
        let b = continuous_outlier(&rule, &moved);
        // Only grid values shift exactly; compare when every value is on the grid.
        if fleet.iter().all(|s| (s.value * 4.0).fract() == 0.0) {
            prop_assert_eq!(anomalous(&a), anomalous(&b));
        }
    }
}
