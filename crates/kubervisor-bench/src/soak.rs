//! `soak`: the operator over a long run on a fleet that never rests: 2,000 pods under 200
//! KubervisorServices, a custom detector giving seeded random verdicts (so pods are
//! ejected, re-activated, paused and killed all along), rolling updates, scaling, pods
//! deleted by hand, and kubesim's API faults in turn. The invariant monitor
//! (`kubervisor-monitor`) judges every KubervisorService's history; the operator's memory
//! is sampled to show whether it grows after warm-up.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use kubervisor_monitor::{Limits, Monitor, MonitorConfig};
use kubesim::Sim;
use kubesim::patch::PatchKind;
use kubesim::resources::ResKey;
use kubesim::store::{DeleteOptions, Sub};
use serde_json::{Value, json};

use crate::Env;
use crate::cluster::{self, FleetSpec, NAMESPACE};
use crate::detector::Detector;
use crate::operator::{Operator, clock_ticks_per_second};
use crate::stats::{XorShift, round};

#[derive(Clone, Debug)]
pub struct SoakConfig {
    pub duration: Duration,
    pub seed: u64,
    pub services: usize,
    pub pods_per_service: usize,
    /// `minPodsAvailableCount` of every breaker.
    pub floor: u32,
    /// Seconds between evaluations of each breaker.
    pub evaluation_period: f64,
    /// New random verdicts this often.
    pub verdict_every: Duration,
    /// Percent of the breakers that name pods at each new verdict.
    pub anomalous_percent: u64,
    /// Deployments whose pods are replaced by a rolling update, this many this often.
    pub rollout_every: Duration,
    pub rollouts: usize,
    /// Deployments scaled to 8, 10 or 12 pods, this many this often.
    pub scale_every: Duration,
    pub scalings: usize,
    /// Pods deleted by hand, this many this often.
    pub delete_every: Duration,
    pub deletions: usize,
    /// A new API fault episode this often.
    pub fault_every: Duration,
    /// Memory after this is expected flat.
    pub warm_up: Duration,
    pub sample_every: Duration,
}

impl Default for SoakConfig {
    fn default() -> Self {
        SoakConfig {
            duration: Duration::from_secs(600),
            seed: 1,
            services: 200,
            pods_per_service: 10,
            floor: 7,
            evaluation_period: 2.0,
            verdict_every: Duration::from_secs(2),
            anomalous_percent: 15,
            rollout_every: Duration::from_secs(20),
            rollouts: 5,
            scale_every: Duration::from_secs(30),
            scalings: 2,
            delete_every: Duration::from_secs(5),
            deletions: 2,
            fault_every: Duration::from_secs(15),
            warm_up: Duration::from_secs(120),
            sample_every: Duration::from_secs(10),
        }
    }
}

/// The activators the services get in turn: every mode, with retries short enough that
/// pods reach their kill or pause within minutes.
fn activators() -> Vec<Value> {
    vec![
        json!({"mode": "periodic", "period": 10.0}),
        json!({"mode": "retryAndKill", "period": 4.0, "maxRetryCount": 2}),
        json!({"mode": "retryAndPause", "period": 4.0, "maxRetryCount": 2, "maxPauseCount": 1}),
    ]
}

/// The monitor's tolerances in this scenario, widened from the defaults where the faults
/// injected keep the operator from the API longer than the checks assume.
pub fn limits() -> Limits {
    let base = Limits::default();
    // A burst of three 429 with `Retry-After: 1` holds a write back 3 s (as in the chaos
    // test of 429), and may meet an activation or a restore.
    let retry_after_burst = Duration::from_secs(3);
    Limits {
        activation_slack: base.activation_slack + retry_after_burst,
        restore_window: base.restore_window + retry_after_burst,
        // 200 resources' events go out through one publisher, which backs off after the
        // 500s injected on event creations: the last ones may take longer to arrive.
        settle: Duration::from_secs(15),
        ..base
    }
}

/// The API faults, one episode each in turn.
const FAULTS: [&str; 5] = [
    "500 on pod patches and event creations",
    "503 on lists, watches cut, 410 on re-watch",
    "409 on pod patches",
    "429 with Retry-After: 1 on any request",
    "watches cut, 410 on re-watch",
];

fn inject(sim: &Sim, episode: usize) {
    let faults = sim.faults();
    faults.clear();
    match episode % FAULTS.len() {
        0 => {
            faults.fail_next("patch", "pods", 3, 500);
            faults.fail_next("create", "events", 2, 500);
        }
        1 => {
            faults.fail_next("list", "*", 2, 503);
            faults.expire_next_watches(3);
            faults.close_watches();
        }
        2 => faults.fail_next("patch", "pods", 3, 409),
        3 => faults.fail_next_retry_after("*", "*", 3, 429, 1),
        _ => {
            faults.expire_next_watches(4);
            faults.close_watches();
        }
    }
}

/// Memory flat after warm-up means a least-squares slope at most this (MiB per minute).
pub const RSS_SLOPE_TARGET: f64 = 0.25;

/// The least-squares slope of `(seconds, MiB)` samples taken at or after `after_s`, in
/// MiB per minute; `None` without two distinct instants.
pub fn slope_per_minute(samples: &[(f64, f64)], after_s: f64) -> Option<f64> {
    let points: Vec<(f64, f64)> = samples
        .iter()
        .filter(|(t, _)| *t >= after_s)
        .map(|(t, mib)| (t / 60.0, *mib))
        .collect();
    let n = points.len() as f64;
    if points.len() < 2 {
        return None;
    }
    let mean_x = points.iter().map(|p| p.0).sum::<f64>() / n;
    let mean_y = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = points.iter().map(|p| (p.0 - mean_x).powi(2)).sum();
    let sxy: f64 = points.iter().map(|p| (p.0 - mean_x) * (p.1 - mean_y)).sum();
    (sxx > 0.0).then(|| sxy / sxx)
}

/// The run's verdict: it passes with no violation; memory is judged flat separately
/// (a slope is a measurement, noisy on a loaded machine, and reported as such).
pub fn verdict(violations: usize, decisions: usize, slope: Option<f64>) -> Value {
    json!({
        "passed": violations == 0 && decisions > 0,
        "violations": violations,
        "exercised": decisions > 0,
        "rss_slope_mib_per_minute": slope.map(round),
        "rss_slope_target_at_most": RSS_SLOPE_TARGET,
        "rss_flat": slope.is_some_and(|s| s <= RSS_SLOPE_TARGET),
    })
}

/// Whether a soak report passed: what the exit status says.
pub fn passed(report: &Value) -> bool {
    report
        .pointer("/verdict/passed")
        .and_then(Value::as_bool)
        .unwrap_or(false)
}

/// The commit the driver runs from, `-dirty` when the tree has changes.
fn commit() -> String {
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    match git(&["rev-parse", "--short=12", "HEAD"]) {
        Some(head) => {
            let dirty = git(&["status", "--porcelain", "--untracked-files=no"])
                .is_some_and(|s| !s.is_empty());
            if dirty { format!("{head}-dirty") } else { head }
        }
        None => "unknown".into(),
    }
}

/// The fleet's pods by Service (those not terminating), from the store.
fn pods_by_service(sim: &Sim) -> BTreeMap<String, Vec<String>> {
    let mut by: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for pod in sim
        .store()
        .list_all(&ResKey::new("", "pods"), Some(NAMESPACE))
    {
        if pod.pointer("/metadata/deletionTimestamp").is_some() {
            continue;
        }
        if let (Some(app), Some(name)) = (
            pod.pointer("/metadata/labels/app").and_then(Value::as_str),
            pod.pointer("/metadata/name").and_then(Value::as_str),
        ) {
            by.entry(app.to_string())
                .or_default()
                .push(name.to_string());
        }
    }
    by
}

/// `n` distinct elements of `from`, drawn at random.
fn pick<T: Clone>(rng: &mut XorShift, from: &[T], n: usize) -> Vec<T> {
    let mut pool: Vec<T> = from.to_vec();
    let mut out = Vec::new();
    while out.len() < n && !pool.is_empty() {
        let i = rng.below(pool.len() as u64) as usize;
        out.push(pool.swap_remove(i));
    }
    out
}

#[derive(Default)]
struct Churn {
    verdicts_naming_pods: u64,
    rollouts: u64,
    scalings: u64,
    pods_deleted: u64,
    fault_episodes: BTreeMap<&'static str, u64>,
}

pub async fn run(env: &Env, config: &SoakConfig) -> anyhow::Result<Value> {
    let began = Instant::now();
    let sim = cluster::start_sim().await?;
    let detector = Detector::start().await?;
    let spec = FleetSpec {
        services: config.services,
        pods_per_service: config.pods_per_service,
        breakers: vec!["random".into()],
        evaluation_period: config.evaluation_period,
        activator_period: 10.0,
        activators: activators(),
        min_pods_available: config.floor,
    };
    eprintln!(
        "soak: creating {} Deployments of {} pods, their Services and KubervisorServices",
        spec.services, spec.pods_per_service
    );
    cluster::create_fleet(&sim, &detector, &spec)?;
    cluster::wait_fleet_ready(&sim, &spec, Duration::from_secs(300)).await?;
    let kubeconfig = env.dir.path().join("soak.kubeconfig");
    sim.write_kubeconfig(&kubeconfig)?;
    let limits = limits();
    let monitored: Vec<MonitorConfig> = spec
        .service_names()
        .into_iter()
        .map(|name| MonitorConfig {
            namespace: NAMESPACE.into(),
            pod_selector: format!("app={name}"),
            kvs: name,
            lease: None,
            limits,
        })
        .collect();
    // Started before the operator, so the monitor sees every pod adopted and decided.
    let monitor = Monitor::watch(&kubeconfig, monitored, Duration::from_secs(10))
        .await
        .context("starting the invariant monitor")?;
    let (ticks, _) = clock_ticks_per_second();
    let requests_before = sim.request_counts();
    let log = env.dir.path().join("soak.log");
    // Pods are replaced all the time here: their decision counters go after a minute
    // rather than ten, so that the memory after warm-up shows what grows, not what waits.
    let retention = ["--pod-metrics-retention", "60"];
    let mut operator =
        Operator::start_with(&env.operator_bin, &kubeconfig, &log, &retention).await?;
    operator.wait_live(Duration::from_secs(60)).await?;
    eprintln!(
        "soak: operator up; running for {} s (seed {})",
        config.duration.as_secs(),
        config.seed
    );

    let keys = spec.breaker_keys();
    let services = spec.service_names();
    let store = sim.store().clone();
    let deployments = store
        .resource("apps", "v1", "deployments")
        .context("kubesim serves no deployments")?;
    let pods_info = store
        .resource("", "v1", "pods")
        .context("kubesim serves no pods")?;
    // A merge patch on a Deployment, as `kubectl` would send (a rollout, a scaling).
    let patch_deployment = |service: &str, patch: &Value, what: &str| {
        store
            .patch(
                &deployments,
                NAMESPACE,
                service,
                PatchKind::Merge,
                patch,
                Sub::Main,
            )
            .map(|_| ())
            .map_err(|e| anyhow::anyhow!("{what} {service}: {e:?}"))
    };
    let mut rng = XorShift::new(config.seed);
    let mut churn = Churn::default();
    let started = Instant::now();
    let first = operator.sample()?;
    let mut samples: Vec<(f64, u64, u64)> = vec![(0.0, first.rss_kib, first.cpu_ticks)];
    let mut next = [started; 6];
    let mut episode = 0usize;
    let mut revision = 0u64;
    let mut last_progress = started;
    let end = started + config.duration;
    while Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(250)).await;
        operator.check_alive()?;
        let now = Instant::now();
        // Verdicts: some breakers name a few of their pods, the others none.
        if now >= next[0] {
            next[0] += config.verdict_every;
            let pods = pods_by_service(&sim);
            for (service, key) in services.iter().zip(&keys) {
                let names = pods.get(service).map(Vec::as_slice).unwrap_or_default();
                if rng.below(100) < config.anomalous_percent {
                    let n = 1 + rng.below(4) as usize;
                    detector.report(key, pick(&mut rng, names, n));
                    churn.verdicts_naming_pods += 1;
                } else {
                    detector.clear(key);
                }
            }
        }
        // Rolling updates: a new template, so every pod is replaced.
        if now >= next[1] {
            next[1] += config.rollout_every;
            for service in pick(&mut rng, &services, config.rollouts) {
                revision += 1;
                let patch = json!({"spec": {"template": {"metadata": {"annotations": {
                    "soak/revision": revision.to_string()}}}}});
                patch_deployment(&service, &patch, "rolling")?;
                churn.rollouts += 1;
            }
        }
        if now >= next[2] {
            next[2] += config.scale_every;
            for service in pick(&mut rng, &services, config.scalings) {
                let replicas = [8, 10, 12][rng.below(3) as usize];
                let patch = json!({"spec": {"replicas": replicas}});
                patch_deployment(&service, &patch, "scaling")?;
                churn.scalings += 1;
            }
        }
        if now >= next[3] {
            next[3] += config.delete_every;
            let all: Vec<String> = pods_by_service(&sim).into_values().flatten().collect();
            for pod in pick(&mut rng, &all, config.deletions) {
                // Gone already (a rollout or a kill won the race): nothing to count.
                if store
                    .delete(&pods_info, NAMESPACE, &pod, &DeleteOptions::default())
                    .is_ok()
                {
                    churn.pods_deleted += 1;
                }
            }
        }
        if now >= next[4] {
            next[4] += config.fault_every;
            inject(&sim, episode);
            *churn
                .fault_episodes
                .entry(FAULTS[episode % FAULTS.len()])
                .or_default() += 1;
            episode += 1;
        }
        if now >= next[5] {
            next[5] += config.sample_every;
            let s = operator.sample()?;
            samples.push((started.elapsed().as_secs_f64(), s.rss_kib, s.cpu_ticks));
            if now - last_progress >= Duration::from_secs(60) {
                last_progress = now;
                eprintln!(
                    "soak: {:>5.0} s  RSS {:>6.1} MiB  monitor records {:>7}  violations so far {}",
                    started.elapsed().as_secs_f64(),
                    s.rss_kib as f64 / 1024.0,
                    monitor.records(),
                    monitor.violations_so_far()
                );
            }
        }
    }
    let ran_s = started.elapsed().as_secs_f64();
    // Quiet: no fault, no verdict; the monitor lets the last events arrive and judges.
    sim.faults().clear();
    for key in &keys {
        detector.clear(key);
    }
    let requests = crate::scale::delta(&requests_before, &sim.request_counts());
    let injected = sim.faults().injected();
    let last = operator.sample()?;
    let metrics = operator.metrics().await.unwrap_or_default();
    eprintln!("soak: done; the monitor judges the whole history");
    let report = monitor.finish().await;
    operator.check_alive()?;
    let log_lines = operator.log_lines();
    let log_head = operator.log_head(5);
    operator.stop().await;
    sim.shutdown().await;

    let rss: Vec<(f64, f64)> = samples
        .iter()
        .map(|(t, kib, _)| (*t, *kib as f64 / 1024.0))
        .collect();
    let warm_up_s = config.warm_up.as_secs_f64();
    let slope = slope_per_minute(&rss, warm_up_s);
    let after: Vec<&(f64, u64, u64)> = samples.iter().filter(|s| s.0 >= warm_up_s).collect();
    let cpu_per_minute = |from: &(f64, u64, u64), to: &(f64, u64, u64)| {
        let minutes = (to.0 - from.0) / 60.0;
        (minutes > 0.0).then(|| round((to.2 - from.2) as f64 / ticks as f64 / minutes))
    };
    let whole = samples.first().zip(samples.last());
    let after_warm_up = after.first().zip(after.last());
    let total_requests: u64 = requests.values().sum();
    let reason = |r: &str| report.decisions_by_reason.get(r).copied().unwrap_or(0);
    let decisions: usize = report.decisions_by_reason.values().sum();
    let rss_after: Vec<f64> = rss
        .iter()
        .filter(|(t, _)| *t >= warm_up_s)
        .map(|s| s.1)
        .collect();
    let stat = |f: fn(f64, f64) -> f64| rss_after.iter().copied().reduce(f).map(round);
    Ok(json!({
        "scenario": "soak",
        "commit": commit(),
        "parameters": {
            "duration_s": config.duration.as_secs(),
            "seed": config.seed,
            "pods": spec.services * spec.pods_per_service,
            "services": spec.services,
            "kubervisorservices": spec.services,
            "breakers_per_service": 1,
            "floor": config.floor,
            "evaluation_period_s": config.evaluation_period,
            "activators_in_turn": activators(),
            "verdicts_every_s": config.verdict_every.as_secs_f64(),
            "breakers_naming_pods_percent": config.anomalous_percent,
            "pods_named_per_breaker": "1 to 4",
            "rollouts": format!("{} Deployments every {} s", config.rollouts, config.rollout_every.as_secs()),
            "scalings": format!("{} Deployments to 8, 10 or 12 pods every {} s", config.scalings, config.scale_every.as_secs()),
            "deletions": format!("{} pods every {} s", config.deletions, config.delete_every.as_secs()),
            "fault_episodes_in_turn": FAULTS,
            "fault_every_s": config.fault_every.as_secs(),
            "warm_up_s": config.warm_up.as_secs(),
            "monitor_limits_s": {
                "activation_slack": limits.activation_slack.as_secs_f64(),
                "restore_window": limits.restore_window.as_secs_f64(),
                "settle": limits.settle.as_secs_f64(),
            },
        },
        "invariants": {
            "violations": report.violations.len(),
            "first_violations": report.rendered(5),
            "records": report.records,
        },
        "decisions": {
            "ejections": reason("PodEjected"),
            "reactivations": reason("PodActivated"),
            "floor_restored": reason("FloorRestored"),
            "pauses": reason("PodPaused"),
            "kills": reason("PodKilled"),
        },
        "fleet_changes": {
            "verdicts_naming_pods": churn.verdicts_naming_pods,
            "rollouts": churn.rollouts,
            "scalings": churn.scalings,
            "pods_deleted_by_hand": churn.pods_deleted,
        },
        "faults": {
            "episodes": churn.fault_episodes,
            "requests_failed_by_status": injected.failures.iter()
                .map(|(s, n)| (s.to_string(), *n)).collect::<BTreeMap<_, _>>(),
            "watch_cuts": injected.watch_cuts,
            "watches_expired_410": injected.watches_expired,
        },
        "api_requests": {
            "note": "every request kubesim counted: the operator's, and the monitor's lists and watches",
            "total": total_requests,
            "per_second": round(total_requests as f64 / ran_s),
            "by": crate::scale::by_verb(&requests),
        },
        "operator": {
            "pod_writes_by_verb": metrics.by_label("kubervisor_pod_writes_total", "verb"),
            "rss_mib_samples": rss.iter().map(|(t, m)| json!([round(*t), round(*m)])).collect::<Vec<_>>(),
            "rss_mib_after_warm_up": {
                "min": stat(f64::min), "max": stat(f64::max),
            },
            "rss_slope_mib_per_minute_after_warm_up": slope.map(round),
            "peak_rss_mib": round(last.peak_rss_kib as f64 / 1024.0),
            "cpu_seconds_per_minute": whole.and_then(|(a, b)| cpu_per_minute(a, b)),
            "cpu_seconds_per_minute_after_warm_up": after_warm_up.and_then(|(a, b)| cpu_per_minute(a, b)),
            "log_lines_at_warn": log_lines,
            "log_head": log_head,
        },
        "verdict": verdict(report.violations.len(), decisions, slope),
        "wall_seconds": round(began.elapsed().as_secs_f64()),
    }))
}

/// Prints the figures that matter on stderr.
pub fn print_table(report: &Value) {
    let get = |p: &str| report.pointer(p).cloned().unwrap_or(Value::Null);
    eprintln!(
        "\nsoak: {} s, seed {}",
        get("/parameters/duration_s"),
        get("/parameters/seed")
    );
    for (label, pointer) in [
        ("invariant violations", "/invariants/violations"),
        ("ejections", "/decisions/ejections"),
        ("re-activations", "/decisions/reactivations"),
        ("floor restored", "/decisions/floor_restored"),
        ("pauses", "/decisions/pauses"),
        ("kills", "/decisions/kills"),
        ("rollouts", "/fleet_changes/rollouts"),
        (
            "pods deleted by hand",
            "/fleet_changes/pods_deleted_by_hand",
        ),
        (
            "requests failed by injected faults",
            "/faults/requests_failed_by_status",
        ),
        ("API requests per second", "/api_requests/per_second"),
        (
            "RSS slope after warm-up (MiB/min)",
            "/operator/rss_slope_mib_per_minute_after_warm_up",
        ),
        ("RSS after warm-up (MiB)", "/operator/rss_mib_after_warm_up"),
        (
            "CPU after warm-up (CPU-s per minute)",
            "/operator/cpu_seconds_per_minute_after_warm_up",
        ),
        ("passed", "/verdict/passed"),
    ] {
        eprintln!("  {label:<42} {}", get(pointer));
    }
    if let Some(first) = report
        .pointer("/invariants/first_violations")
        .and_then(Value::as_array)
    {
        for v in first {
            eprintln!("{}", v.as_str().unwrap_or_default());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_slope_is_least_squares_after_warm_up_in_mib_per_minute() {
        // Growing 2 MiB a minute during warm-up, then flat with noise around 40 MiB.
        let mut samples: Vec<(f64, f64)> = (0..12)
            .map(|i| (i as f64 * 10.0, 20.0 + i as f64 / 3.0))
            .collect();
        samples.extend((12..60).map(|i| (i as f64 * 10.0, if i % 2 == 0 { 40.0 } else { 40.5 })));
        let flat = slope_per_minute(&samples, 120.0).unwrap();
        assert!(flat.abs() < 0.01, "{flat}");
        // A steady leak of 1 MiB a minute is seen as such.
        let leak: Vec<(f64, f64)> = (0..60)
            .map(|i| (i as f64 * 10.0, 30.0 + i as f64 / 6.0))
            .collect();
        let slope = slope_per_minute(&leak, 120.0).unwrap();
        assert!((slope - 1.0).abs() < 1e-9, "{slope}");
        assert_eq!(slope_per_minute(&samples, 10_000.0), None);
        assert_eq!(slope_per_minute(&[(130.0, 1.0), (130.0, 2.0)], 120.0), None);
    }

    #[test]
    fn the_run_passes_with_no_violation_and_some_decisions_whatever_the_memory() {
        let clean = verdict(0, 120, Some(0.05));
        assert!(passed(&json!({"verdict": clean})));
        assert_eq!(clean["rss_flat"], true);
        assert!(!passed(&json!({"verdict": verdict(1, 120, Some(0.05))})));
        // A run that decided nothing proved nothing.
        assert!(!passed(&json!({"verdict": verdict(0, 0, Some(0.05))})));
        let growing = verdict(0, 120, Some(1.5));
        assert!(passed(&json!({"verdict": growing})));
        assert_eq!(growing["rss_flat"], false);
        assert!(!passed(&json!({})));
    }
}
