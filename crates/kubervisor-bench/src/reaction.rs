//! `reaction`: how long from a detector naming a pod to the pod leaving its Service's
//! endpoints, and back after the activator's period.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::bail;
use serde_json::{Value, json};

use crate::cluster::{self, FleetSpec, NAMESPACE, Tracker};
use crate::detector::Detector;
use crate::operator::Operator;
use crate::stats::{Summary, XorShift, round};
use crate::{Env, table_row};

#[derive(Clone, Debug)]
pub struct ReactionConfig {
    pub services: usize,
    pub pods_per_service: usize,
    pub ejections: usize,
    /// Seconds.
    pub evaluation_period: f64,
    /// Seconds.
    pub activator_period: f64,
    pub seed: u64,
}

impl Default for ReactionConfig {
    fn default() -> Self {
        ReactionConfig {
            services: 20,
            pods_per_service: 10,
            ejections: 200,
            evaluation_period: 1.0,
            activator_period: 2.0,
            seed: 1,
        }
    }
}

/// The moments of one ejection and re-activation.
#[derive(Clone, Debug)]
struct Cycle {
    /// The detector starts naming the pod.
    reported: Instant,
    /// The detector's first answer naming it.
    answered: Instant,
    /// The ejection patch is applied in the store.
    ejected: Instant,
    /// The pod left the ready endpoints.
    left: Instant,
    /// The re-activation patch is applied.
    activated: Option<Instant>,
    /// The pod is back in the ready endpoints.
    joined: Option<Instant>,
}

pub async fn run(env: &Env, config: &ReactionConfig) -> anyhow::Result<Value> {
    let began = Instant::now();
    let sim = cluster::start_sim().await?;
    let detector = Detector::start().await?;
    let spec = FleetSpec {
        services: config.services,
        pods_per_service: config.pods_per_service,
        breakers: vec!["detector".into()],
        evaluation_period: config.evaluation_period,
        activator_period: config.activator_period,
        activators: Vec::new(),
        min_pods_available: 1,
    };
    cluster::create_fleet(&sim, &detector, &spec)?;
    cluster::wait_fleet_ready(&sim, &spec, Duration::from_secs(60)).await?;
    let tracker = Arc::new(Tracker::start(&sim));
    let kubeconfig = env.dir.path().join("reaction.kubeconfig");
    sim.write_kubeconfig(&kubeconfig)?;
    let mut operator = Operator::start(
        &env.operator_bin,
        &kubeconfig,
        &env.dir.path().join("reaction.log"),
    )
    .await?;
    operator.wait_live(Duration::from_secs(30)).await?;

    // Measure from a settled state: every pod adopted, every breaker evaluated once.
    let keys = spec.breaker_keys();
    let total_pods = spec.services * spec.pods_per_service;
    let deadline = Instant::now() + Duration::from_secs(60);
    while cluster::adopted_pods(&sim) < total_pods || detector.coverage(&keys, 1).0 < keys.len() {
        operator.check_alive()?;
        if Instant::now() >= deadline {
            bail!("the operator did not adopt every pod and evaluate every breaker within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let before = operator.metrics().await?;
    let cpu_before = operator.sample()?;

    let remaining = Arc::new(AtomicUsize::new(config.ejections));
    let period = Duration::from_secs_f64(config.activator_period);
    let mut tasks = Vec::new();
    for (i, service) in spec.service_names().into_iter().enumerate() {
        let tracker = tracker.clone();
        let detector = detector.clone();
        let remaining = remaining.clone();
        let mut rng = XorShift::new(config.seed ^ (i as u64 + 1) << 8);
        let evaluation = Duration::from_secs_f64(config.evaluation_period);
        tasks.push(tokio::spawn(async move {
            let key = format!("{NAMESPACE}/{service}/detector");
            let mut cycles = Vec::new();
            let mut misses = Vec::new();
            // Each task takes one ejection at a time from the shared budget.
            while remaining
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
            {
                // A random moment, unrelated to the breaker's tick.
                tokio::time::sleep(rng.duration_below(evaluation * 2)).await;
                let ready = tracker.timeline().ready(&service);
                if ready.is_empty() {
                    misses.push(format!("{service}: no ready pod to report"));
                    continue;
                }
                let pod = ready[rng.below(ready.len() as u64) as usize].clone();
                let reported = detector.report(&key, vec![pod.clone()]);
                let left = tracker
                    .wait_for(evaluation * 3 + Duration::from_secs(5), |t| {
                        t.left_endpoints
                            .get(&pod)
                            .filter(|at| **at > reported)
                            .copied()
                    })
                    .await;
                let answered = detector.stats(&key).first_reporting_answer;
                // Stop naming the pod as soon as it is out, so it comes back after `period`.
                detector.clear(&key);
                let Some(left) = left else {
                    misses.push(format!("{service}: {pod} was not ejected"));
                    continue;
                };
                let ejected = tracker
                    .timeline()
                    .ejected
                    .get(&pod)
                    .copied()
                    .filter(|at| *at > reported);
                let joined = tracker
                    .wait_for(period * 3 + Duration::from_secs(5), |t| {
                        t.joined_endpoints
                            .get(&pod)
                            .filter(|at| **at > left)
                            .copied()
                    })
                    .await;
                let activated = tracker
                    .timeline()
                    .activated
                    .get(&pod)
                    .copied()
                    .filter(|at| *at > left);
                match (answered, ejected) {
                    (Some(answered), Some(ejected)) => cycles.push(Cycle {
                        reported,
                        answered,
                        ejected,
                        left,
                        activated,
                        joined,
                    }),
                    _ => misses.push(format!(
                        "{service}: {pod} left without a seen answer or patch"
                    )),
                }
                if joined.is_none() {
                    misses.push(format!("{service}: {pod} did not come back"));
                }
            }
            (cycles, misses)
        }));
    }
    let mut cycles = Vec::new();
    let mut misses = Vec::new();
    for task in tasks {
        let (c, m) = task.await?;
        cycles.extend(c);
        misses.extend(m);
    }
    let cpu_after = operator.sample()?;
    let after = operator.metrics().await?;
    operator.check_alive()?;
    let warnings_logged = operator.log_lines();
    let log_head = operator.log_head(3);
    operator.stop().await;
    sim.shutdown().await;

    let durations = |f: &dyn Fn(&Cycle) -> Option<Duration>| -> Vec<Duration> {
        cycles.iter().filter_map(f).collect()
    };
    let reaction = Summary::of(&durations(&|c| {
        Some(c.left.saturating_duration_since(c.reported))
    }));
    let inside = Summary::of(&durations(&|c| {
        Some(c.ejected.saturating_duration_since(c.answered))
    }));
    let wait_for_query = Summary::of(&durations(&|c| {
        Some(c.answered.saturating_duration_since(c.reported))
    }));
    let endpoints_lag = Summary::of(&durations(&|c| {
        Some(c.left.saturating_duration_since(c.ejected))
    }));
    let back = Summary::of(&durations(&|c| {
        c.joined.map(|j| j.saturating_duration_since(c.left))
    }));
    let back_after_period = Summary::of(&durations(&|c| {
        c.joined.map(|j| {
            j.saturating_duration_since(c.ejected)
                .saturating_sub(period)
        })
    }));
    let activation_to_endpoints = Summary::of(&durations(&|c| {
        Some(c.joined?.saturating_duration_since(c.activated?))
    }));
    let act = after
        .histogram("kubervisor_breaker_act_duration_seconds")
        .since(&before.histogram("kubervisor_breaker_act_duration_seconds"));
    let to_ms = |s: Option<f64>| s.map(|v| round(v * 1e3));
    let (ticks, ticks_source) = crate::operator::clock_ticks_per_second();
    let seconds = cpu_after
        .at
        .zip(cpu_before.at)
        .map_or(0.0, |(a, b)| (a - b).as_secs_f64());
    let cpu_seconds = (cpu_after.cpu_ticks - cpu_before.cpu_ticks) as f64 / ticks as f64;
    let target_ms = config.evaluation_period * 1e3 + 100.0;
    let figures = json!({
        "scenario": "reaction",
        "services": config.services,
        "pods_per_service": config.pods_per_service,
        "evaluation_period_s": config.evaluation_period,
        "activator": {"mode": "periodic", "period_s": config.activator_period},
        "seed": config.seed,
        "ejections": cycles.len(),
        "misses": misses,
        "ejection_ms": reaction.to_json(),
        "ejection_parts_ms": {
            "report_to_first_answer": wait_for_query.to_json(),
            "answer_to_patch_applied": inside.to_json(),
            "patch_to_endpoints": endpoints_lag.to_json(),
        },
        "operator_act_histogram": {
            "what": "kubervisor_breaker_act_duration_seconds over the run, every evaluation (most eject nothing); values are bucket upper bounds",
            "evaluations": act.count,
            "mean_ms": if act.count > 0.0 { round(act.sum / act.count * 1e3) } else { 0.0 },
            "p50_ms_at_most": to_ms(act.quantile_upper_bound(0.5)),
            "p99_ms_at_most": to_ms(act.quantile_upper_bound(0.99)),
        },
        "reactivation_ms": {
            "left_to_back_in_endpoints": back.to_json(),
            "back_in_endpoints_after_period": back_after_period.to_json(),
            "patch_to_endpoints": activation_to_endpoints.to_json(),
        },
        "operator": {
            "cpu_seconds": round(cpu_seconds),
            "over_seconds": round(seconds),
            "clock_ticks_per_second": ticks,
            "clock_ticks_source": ticks_source,
            "peak_rss_mib": round(cpu_after.peak_rss_kib as f64 / 1024.0),
            "log_lines_at_warn": warnings_logged,
            "log_head": log_head,
        },
        "targets": {
            "ejection_p99_ms": {"target_at_most": target_ms, "met": reaction.p99_ms <= target_ms},
            "inside_operator_p99_ms": {"target_at_most": 20.0, "met": inside.p99_ms <= 20.0},
        },
        "wall_seconds": round(began.elapsed().as_secs_f64()),
    });
    eprintln!(
        "\nreaction ({} ejections, {} misses)",
        cycles.len(),
        misses.len()
    );
    eprintln!(
        "{:<44} {:>9} {:>9} {:>9} {:>9}",
        "", "p50 ms", "p99 ms", "max ms", "n"
    );
    for (name, s) in [
        ("detector reports -> out of endpoints", &reaction),
        ("  reports -> first answer naming the pod", &wait_for_query),
        ("  answer -> ejection patch applied", &inside),
        ("  patch -> out of endpoints", &endpoints_lag),
        ("out -> back in endpoints", &back),
        (
            "  back in endpoints after breakAt+period",
            &back_after_period,
        ),
    ] {
        eprintln!("{}", table_row(name, s));
    }
    Ok(figures)
}
