//! Property tests of the decision engine's promises.

use std::collections::BTreeMap;
use std::time::Duration;

use jiff::Timestamp;
use kubervisor_api::pod::*;
use kubervisor_api::{ActivatorMode, ResolvedActivator, ResolvedSpec};
use kubervisor_core::PodView;
use kubervisor_core::activator::{
    Action, CLOCK_SKEW_ALLOWANCE, due_at, plan_activations, wait_before_activation,
};
use kubervisor_core::breaker::{Limits, MinAvailable, plan_ejections};
use kubervisor_core::detect::{Anomaly, Evidence, Findings};
use kubervisor_core::safety::restore_floor;
use proptest::prelude::*;

fn view(
    name: String,
    running: bool,
    ready: bool,
    terminating: bool,
    traffic: &str,
    break_at: Timestamp,
    retries: u32,
) -> PodView {
    let labels: BTreeMap<String, String> =
        [(TRAFFIC_LABEL.to_string(), traffic.to_string())].into();
    let annotations: BTreeMap<String, String> = [
        (BREAK_AT_ANNOTATION.to_string(), format_break_at(break_at)),
        (RETRY_COUNT_ANNOTATION.to_string(), retries.to_string()),
    ]
    .into();
    PodView {
        name,
        running,
        ready,
        terminating,
        marks: PodMarks::read(Some(&labels), Some(&annotations)),
    }
}

fn base() -> Timestamp {
    Timestamp::from_second(1_800_000_000).unwrap()
}

fn arb_pod(index: usize) -> impl Strategy<Value = PodView> {
    (
        prop::bool::weighted(0.9),
        prop::bool::weighted(0.85),
        prop::bool::weighted(0.05),
        prop::sample::select(vec!["yes", "yes", "yes", "no", "pause", "bogus"]),
        0i64..120,
        0u32..6,
    )
        .prop_map(
            move |(running, ready, terminating, traffic, ago, retries)| {
                let at = base()
                    .checked_sub(jiff::SignedDuration::from_secs(ago))
                    .unwrap();
                view(
                    format!("pod-{index:03}"),
                    running,
                    ready,
                    terminating,
                    traffic,
                    at,
                    retries,
                )
            },
        )
}

fn arb_fleet() -> impl Strategy<Value = Vec<PodView>> {
    (0usize..25).prop_flat_map(|n| (0..n).map(arb_pod).collect::<Vec<_>>())
}

fn arb_findings(pods: usize) -> impl Strategy<Value = Findings> {
    prop::collection::vec((0..pods.max(1) + 2, 0u8..5), 0..pods + 3).prop_map(|picks| {
        let mut anomalies: Vec<Anomaly> = picks
            .into_iter()
            .map(|(i, score)| Anomaly {
                pod: format!("pod-{i:03}"),
                score: f64::from(score) / 4.0,
                evidence: Evidence::Reported,
            })
            .collect();
        anomalies.sort_by(|a, b| a.pod.cmp(&b.pod));
        anomalies.dedup_by(|a, b| a.pod == b.pod);
        Findings {
            anomalies,
            ..Findings::default()
        }
    })
}

fn arb_limits() -> impl Strategy<Value = MinAvailable> {
    (0u32..8, 0u32..=100).prop_map(|(count, ratio_percent)| MinAvailable {
        count,
        ratio_percent,
    })
}

fn serving(pods: &[PodView]) -> usize {
    pods.iter().filter(|p| p.has_traffic()).count()
}

fn fleet_and_findings() -> impl Strategy<Value = (Vec<PodView>, Findings)> {
    arb_fleet().prop_flat_map(|pods| {
        let n = pods.len();
        (Just(pods), arb_findings(n))
    })
}

proptest! {
    #[test]
    fn never_ejects_below_the_floor((pods, findings) in fleet_and_findings(), limits in arb_limits()) {
        let plan = plan_ejections("b", limits, &pods, &findings);
        let floor = limits.floor(pods.iter().filter(|p| p.is_serving_capable()).count());
        prop_assert_eq!(plan.serving, serving(&pods));
        if plan.ejections.is_empty() {
            return Ok(());
        }
        prop_assert!(plan.serving_after() >= floor, "{} serving after, floor {}", plan.serving_after(), floor);
    }

    #[test]
    fn never_ejects_a_pod_that_is_not_anomalous_or_not_serving((pods, findings) in fleet_and_findings(), limits in arb_limits()) {
        let plan = plan_ejections("b", limits, &pods, &findings);
        for ejection in &plan.ejections {
            prop_assert!(findings.anomalies.iter().any(|a| a.pod == ejection.pod));
            let pod = pods.iter().find(|p| p.name == ejection.pod).unwrap();
            prop_assert!(pod.has_traffic());
        }
        // Every anomaly is either ejected or spared with a reason, never dropped silently.
        prop_assert_eq!(plan.ejections.len() + plan.spared.len(), findings.anomalies.len());
    }

    #[test]
    fn same_input_in_any_order_gives_the_same_decision(
        (pods, findings) in fleet_and_findings(),
        limits in arb_limits(),
        seed in any::<u64>(),
    ) {
        let first = plan_ejections("b", limits, &pods, &findings);
        let again = plan_ejections("b", limits, &pods, &findings);
        prop_assert_eq!(&first, &again);
        let mut shuffled_pods = pods.clone();
        let mut shuffled = findings.clone();
        // A cheap deterministic shuffle: rotate by the seed.
        if !shuffled_pods.is_empty() {
            let k = (seed as usize) % shuffled_pods.len();
            shuffled_pods.rotate_left(k);
        }
        shuffled.anomalies.reverse();
        let other = plan_ejections("b", limits, &shuffled_pods, &shuffled);
        prop_assert_eq!(&first.ejections, &other.ejections);
    }

    #[test]
    fn protection_does_not_erode_over_many_ticks(
        n in 1usize..20,
        limits in arb_limits(),
        faulty in prop::collection::vec(prop::collection::btree_set(0usize..20, 0..20), 1..15),
    ) {
        let mut pods: Vec<PodView> = (0..n)
            .map(|i| view(format!("pod-{i:03}"), true, true, false, "yes", base(), 0))
            .collect();
        let floor = limits.floor(n);
        for tick in faulty {
            let findings = Findings {
                anomalies: tick.iter().filter(|i| **i < n).map(|i| Anomaly {
                    pod: format!("pod-{i:03}"),
                    score: 1.0,
                    evidence: Evidence::Reported,
                }).collect(),
                ..Findings::default()
            };
            let before = serving(&pods);
            let plan = plan_ejections("b", limits, &pods, &findings);
            for ejection in &plan.ejections {
                let pod = pods.iter_mut().find(|p| p.name == ejection.pod).unwrap();
                pod.marks.traffic = Some(Ok(Traffic::No));
            }
            let after = serving(&pods);
            prop_assert!(after >= floor.min(before), "tick left {} serving, floor {}", after, floor);
        }
    }

    #[test]
    fn activator_never_touches_a_pod_whose_time_has_not_come(
        pods in arb_fleet(),
        mode in prop::sample::select(vec![ActivatorMode::Periodic, ActivatorMode::RetryAndKill, ActivatorMode::RetryAndPause]),
        period in 1u64..60,
        max_retry_count in 0u32..5,
        max_pause_count in 0u32..3,
        cap in prop::option::of(1u64..200),
    ) {
        let spec = ResolvedSpec {
            service: "web".into(),
            breakers: vec![],
            default_activator: ResolvedActivator {
                mode,
                period: Duration::from_secs(period),
                max_retry_count,
                max_pause_count,
                forget_after: None,
                max_ejection_time: cap.map(Duration::from_secs),
                kill_method: Default::default(),
            },
            dry_run: false,
            traffic_control: Default::default(),
        };
        let now = base();
        let plan = plan_activations(&spec, &pods, now);
        let paused_before = pods.iter().filter(|p| p.marks.traffic() == Some(Traffic::Pause) && !p.terminating).count();
        let mut pauses = 0;
        for decision in &plan {
            let pod = pods.iter().find(|p| p.name == decision.pod).unwrap();
            prop_assert_eq!(pod.marks.traffic(), Some(Traffic::No));
            prop_assert!(!pod.terminating);
            let retries = pod.marks.retries().unwrap();
            let Some(Ok(break_at)) = &pod.marks.break_at else { panic!("acted without breakAt") };
            match decision.action {
                Action::Activate => {
                    let waits = if mode == ActivatorMode::Periodic { 1 } else { retries.max(1) };
                    let wait = (period * u64::from(waits)).min(cap.unwrap_or(u64::MAX));
                    let due = break_at.checked_add(jiff::SignedDuration::from_secs(wait as i64)).unwrap();
                    prop_assert!(now >= due, "activated at {} before due {}", now, due);
                    prop_assert!(mode == ActivatorMode::Periodic || retries <= max_retry_count);
                }
                Action::Kill | Action::Pause => {
                    prop_assert!(mode != ActivatorMode::Periodic);
                    prop_assert!(retries > max_retry_count);
                    if decision.action == Action::Pause {
                        pauses += 1;
                    }
                }
            }
        }
        prop_assert!(pauses == 0 || paused_before + pauses <= max_pause_count as usize);
        // And none is kept out past its time: min(retries × period, maxEjectionTime).
        for pod in pods.iter().filter(|p| p.marks.traffic() == Some(Traffic::No) && !p.terminating) {
            let (Some(Ok(break_at)), Some(retries)) = (&pod.marks.break_at, pod.marks.retries()) else { continue };
            if mode != ActivatorMode::Periodic && retries > max_retry_count {
                continue;
            }
            let waits = if mode == ActivatorMode::Periodic { 1 } else { retries.max(1) };
            let wait = (period * u64::from(waits)).min(cap.unwrap_or(u64::MAX));
            let due = break_at.checked_add(jiff::SignedDuration::from_secs(wait as i64)).unwrap();
            if now >= due {
                prop_assert!(plan.iter().any(|d| d.pod == pod.name && d.action == Action::Activate), "{} due at {} still out at {}", pod.name, due, now);
            }
        }
    }

    /// The activator sleeps until the earliest due time: a pod it would act on now must
    /// be due by now, or it would wait past its time.
    #[test]
    fn every_pod_acted_on_is_due(
        pods in arb_fleet(),
        mode in prop::sample::select(vec![ActivatorMode::Periodic, ActivatorMode::RetryAndKill, ActivatorMode::RetryAndPause]),
        period in 1u64..60,
        max_retry_count in 0u32..5,
        offset in 0i64..400,
    ) {
        let spec = ResolvedSpec {
            service: "web".into(),
            breakers: vec![],
            default_activator: ResolvedActivator {
                mode,
                period: Duration::from_secs(period),
                max_retry_count,
                max_pause_count: 1,
                forget_after: None,
                max_ejection_time: None,
                kill_method: Default::default(),
            },
            dry_run: false,
            traffic_control: Default::default(),
        };
        let now = base().checked_add(jiff::SignedDuration::from_secs(offset)).unwrap();
        for decision in plan_activations(&spec, &pods, now) {
            let pod = pods.iter().find(|p| p.name == decision.pod).unwrap();
            let due = due_at(&spec, pod, now);
            prop_assert!(due.is_some_and(|due| due <= now), "{} acted on at {} but due {:?}", decision.pod, now, due);
        }
    }

    /// A clock stepped back (or a replica whose clock ran ahead) leaves ejection times in
    /// the future: whatever they say, no pod is due later than its time out plus the skew
    /// allowance from now, and a pod due by now is acted on.
    #[test]
    fn no_ejection_time_keeps_a_pod_out_past_its_time_from_now(
        pods in arb_fleet(),
        mode in prop::sample::select(vec![ActivatorMode::Periodic, ActivatorMode::RetryAndKill, ActivatorMode::RetryAndPause]),
        period in 1u64..60,
        max_retry_count in 0u32..5,
        cap in prop::option::of(1u64..200),
        behind in prop::sample::select(vec![0i64, 1, 2, 30, 119, 3_600, 86_400]),
    ) {
        let activator = ResolvedActivator {
            mode,
            period: Duration::from_secs(period),
            max_retry_count,
            max_pause_count: 1,
            forget_after: None,
            max_ejection_time: cap.map(Duration::from_secs),
            kill_method: Default::default(),
        };
        let spec = ResolvedSpec {
            service: "web".into(),
            breakers: vec![],
            default_activator: activator.clone(),
            dry_run: false,
            traffic_control: Default::default(),
        };
        // Ejection times up to 120 s before base, read by a clock `behind` seconds back.
        let now = base().checked_sub(jiff::SignedDuration::from_secs(behind)).unwrap();
        let plan = plan_activations(&spec, &pods, now);
        for pod in pods.iter().filter(|p| p.marks.traffic() == Some(Traffic::No) && !p.terminating) {
            let Some(retries) = pod.marks.retries() else { continue };
            let Some(due) = due_at(&spec, pod, now) else { continue };
            let longest = wait_before_activation(&activator, retries) + CLOCK_SKEW_ALLOWANCE;
            let latest = now.checked_add(jiff::SignedDuration::try_from(longest).unwrap()).unwrap();
            prop_assert!(due <= latest, "{} due at {}, later than {} from now {}", pod.name, due, latest, now);
            if due <= now {
                prop_assert!(plan.iter().any(|d| d.pod == pod.name), "{} due at {} not acted on at {}", pod.name, due, now);
            }
        }
    }

    /// Panic: when fewer than the threshold of judged pods are healthy, nothing is ejected.
    #[test]
    fn a_breaker_in_panic_never_ejects(
        (pods, findings) in fleet_and_findings(),
        limits in arb_limits(),
        threshold in 1u32..=100,
        unlisted_are_healthy in any::<bool>(),
        healthy_every in 1usize..4,
    ) {
        let mut findings = findings;
        findings.unlisted_are_healthy = unlisted_are_healthy;
        let anomalous: Vec<&str> = findings.anomalies.iter().map(|a| a.pod.as_str()).collect();
        if !unlisted_are_healthy {
            findings.healthy = pods
                .iter()
                .map(|p| p.name.clone())
                .filter(|n| !anomalous.contains(&n.as_str()))
                .step_by(healthy_every)
                .collect();
        }
        let (healthy, judged) = if unlisted_are_healthy {
            let capable: Vec<&PodView> = pods.iter().filter(|p| p.is_serving_capable()).collect();
            let healthy = capable.iter().filter(|p| !anomalous.contains(&p.name.as_str())).count();
            (healthy, capable.len())
        } else {
            (findings.healthy.len(), findings.healthy.len() + findings.anomalies.len())
        };
        let limits = Limits { min_available: limits, panic_threshold_percent: threshold, max_per_evaluation: None };
        let plan = plan_ejections("b", limits, &pods, &findings);
        if judged > 0 && healthy * 100 < threshold as usize * judged {
            prop_assert!(plan.ejections.is_empty(), "{} of {} healthy < {}%: ejected {:?}", healthy, judged, threshold, plan.ejections);
        }
    }

    /// The rate limit is never exceeded, and the floor still holds under it.
    #[test]
    fn never_more_ejections_per_evaluation_than_the_limit(
        (pods, findings) in fleet_and_findings(),
        limits in arb_limits(),
        max in 1u32..4,
    ) {
        let floor = limits.floor(pods.iter().filter(|p| p.is_serving_capable()).count());
        let plan = plan_ejections("b", Limits { min_available: limits, panic_threshold_percent: 0, max_per_evaluation: Some(max) }, &pods, &findings);
        prop_assert!(plan.ejections.len() <= max as usize);
        prop_assert!(plan.serving_after() >= floor.min(plan.serving));
    }

    /// After outside losses, one pass of the restore rule brings the floor back, or gives
    /// back every ejected pod able to serve; and it never gives back more than needed.
    #[test]
    fn restoring_brings_the_floor_back_in_one_pass(
        pods in arb_fleet(),
        limits in arb_limits(),
    ) {
        let spec = ResolvedSpec {
            service: "web".into(),
            breakers: vec![kubervisor_api::ResolvedBreaker {
                name: "b".into(),
                evaluation_period: Duration::from_secs(1),
                min_pods_available_count: limits.count,
                min_pods_available_ratio: limits.ratio_percent,
                detection: kubervisor_api::Detection::Custom(kubervisor_api::CustomRule { url: "x".into() }),
                activator: None,
                panic_threshold_percent: 0,
                max_ejections_per_evaluation: None,
                dry_run: false,
            }],
            default_activator: ResolvedActivator::default(),
            dry_run: false,
            traffic_control: Default::default(),
        };
        let floor = limits.floor(pods.iter().filter(|p| p.is_serving_capable()).count());
        let before = serving(&pods);
        let restored = restore_floor(&spec, &pods);
        let mut after = pods.clone();
        for r in &restored {
            let pod = after.iter_mut().find(|p| p.name == r.pod).unwrap();
            prop_assert_eq!(pod.marks.traffic(), Some(Traffic::No));
            prop_assert!(pod.is_serving_capable());
            pod.marks.traffic = Some(Ok(Traffic::Yes));
        }
        let still_out = after
            .iter()
            .filter(|p| p.is_serving_capable() && p.marks.traffic() == Some(Traffic::No) && p.marks.unknown_reason().is_none())
            .count();
        prop_assert!(serving(&after) >= floor || still_out == 0, "{} serve, floor {}, {} still out", serving(&after), floor, still_out);
        prop_assert!(serving(&after) <= floor.max(before), "gave back more than needed");
    }
}
