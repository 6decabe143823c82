//! `scale`: what the operator costs on a large, healthy fleet: memory, CPU, API requests,
//! detector queries, and how long until every breaker has been evaluated once.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::bail;
use kubesim::Sim;
use serde_json::{Value, json};

use crate::Env;
use crate::cluster::{self, FleetSpec};
use crate::detector::Detector;
use crate::operator::{Operator, ProcSample, clock_ticks_per_second};
use crate::stats::round;

#[derive(Clone, Debug)]
pub struct ScaleConfig {
    /// Fleet sizes in pods, run one after the other.
    pub sizes: Vec<usize>,
    pub pods_per_service: usize,
    pub breakers: usize,
    /// Seconds.
    pub evaluation_period: f64,
    /// The steady-state measurement window.
    pub window: Duration,
    /// From the end of start-up to the window.
    pub settle: Duration,
}

impl Default for ScaleConfig {
    fn default() -> Self {
        ScaleConfig {
            sizes: vec![1_000, 10_000],
            pods_per_service: 10,
            breakers: 2,
            evaluation_period: 5.0,
            window: Duration::from_secs(60),
            settle: Duration::from_secs(30),
        }
    }
}

const WRITE_VERBS: [&str; 5] = ["create", "update", "patch", "delete", "deletecollection"];
const STARTUP_TIMEOUT: Duration = Duration::from_secs(300);

pub async fn run(env: &Env, config: &ScaleConfig) -> anyhow::Result<Value> {
    let began = Instant::now();
    let mut runs = Vec::new();
    for &pods in &config.sizes {
        let mut figures = run_size(env, config, pods).await?;
        figures["targets"] = targets(&figures);
        print_table(&figures);
        runs.push(figures);
    }
    let targets = runs
        .last()
        .map_or(Value::Null, |run| run["targets"].clone());
    Ok(json!({
        "scenario": "scale",
        "runs": runs,
        "targets": targets,
        "wall_seconds": round(began.elapsed().as_secs_f64()),
    }))
}

/// The targets of issue 17 for the run's size (10,000 and 100,000 pods), each with the
/// figure and whether it is met; `null` for other sizes.
fn targets(run: &Value) -> Value {
    let num = |p: &str| run.pointer(p).and_then(Value::as_f64).unwrap_or(f64::NAN);
    let at_most = |pointer: &str, target: f64| {
        let value = num(pointer);
        json!({"target_at_most": target, "value": value, "met": value <= target})
    };
    let pods = run["pods"].as_u64().unwrap_or(0);
    let writes = at_most("/steady/api_writes_per_tick", 0.0);
    if pods >= 100_000 {
        json!({
            "pods": pods,
            "start_to_first_full_evaluation_s": at_most("/startup/start_to_first_full_evaluation_s", 20.0),
            "steady_rss_mib_max": at_most("/steady/rss_mib/max", 256.0),
            "api_writes_per_tick": writes,
            "late_evaluation_share": at_most("/steady/late_evaluations/late_share", 0.01),
        })
    } else if pods >= 10_000 {
        json!({
            "pods": pods,
            "start_to_first_full_evaluation_s": at_most("/startup/start_to_first_full_evaluation_s", 5.0),
            "steady_rss_mib_max": at_most("/steady/rss_mib/max", 40.0),
            "steady_cpu_seconds_per_minute": at_most("/steady/cpu_seconds_per_minute", 1.5),
            "api_writes_per_tick": writes,
        })
    } else {
        Value::Null
    }
}

async fn run_size(env: &Env, config: &ScaleConfig, pods: usize) -> anyhow::Result<Value> {
    let began = Instant::now();
    let sim = cluster::start_sim().await?;
    let detector = Detector::start().await?;
    detector.count_late_after(Duration::from_secs_f64(config.evaluation_period * 1.1));
    let spec = FleetSpec {
        services: pods.div_ceil(config.pods_per_service),
        pods_per_service: config.pods_per_service,
        breakers: (1..=config.breakers)
            .map(|i| format!("breaker-{i}"))
            .collect(),
        evaluation_period: config.evaluation_period,
        activator_period: 30.0,
        activators: Vec::new(),
        min_pods_available: 1,
    };
    eprintln!(
        "scale {pods}: creating {} Deployments, Services and KubervisorServices",
        spec.services
    );
    cluster::create_fleet(&sim, &detector, &spec)?;
    cluster::wait_fleet_ready(&sim, &spec, STARTUP_TIMEOUT).await?;
    let fleet_ready_s = began.elapsed().as_secs_f64();
    let keys = spec.breaker_keys();
    let total_pods = spec.services * spec.pods_per_service;
    let kubeconfig = env.dir.path().join(format!("scale-{pods}.kubeconfig"));
    sim.write_kubeconfig(&kubeconfig)?;
    let (ticks, ticks_source) = clock_ticks_per_second();

    // Cold start: nothing adopted yet.
    eprintln!("scale {pods}: fleet ready after {fleet_ready_s:.1} s; starting the operator");
    let requests_before = sim.request_counts();
    let log = env.dir.path().join(format!("scale-{pods}.log"));
    let mut operator = Operator::start(&env.operator_bin, &kubeconfig, &log).await?;
    let mut startup =
        wait_first_full_evaluation(&sim, &detector, &mut operator, &keys, total_pods).await?;

    // Steady state: every pod adopted (breakers evaluate while adoption goes on), every
    // breaker evaluated twice and every resource's status written with its breakers'
    // results, then a window with nothing changing.
    let deadline = Instant::now() + STARTUP_TIMEOUT;
    let mut reported_s = None;
    loop {
        operator.check_alive()?;
        if startup.adopted_s.is_none() && cluster::adopted_pods(&sim) >= total_pods {
            startup.adopted_s = Some(operator.started.elapsed().as_secs_f64());
        }
        if startup.adopted_s.is_some()
            && reported_s.is_none()
            && cluster::reported_resources(&sim, config.breakers) >= spec.services
        {
            reported_s = Some(operator.started.elapsed().as_secs_f64());
        }
        if reported_s.is_some() && detector.coverage(&keys, 2).0 == keys.len() {
            break;
        }
        if Instant::now() >= deadline {
            bail!(
                "within {STARTUP_TIMEOUT:?} after the first full evaluation, not every pod was adopted, not every status written or not every breaker evaluated twice"
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let startup_sample = operator.sample()?;
    let startup_requests = delta(&requests_before, &sim.request_counts());
    eprintln!(
        "scale {pods}: every pod adopted, every status written, every breaker evaluated twice; measuring for {} s after {} s",
        config.window.as_secs(),
        config.settle.as_secs()
    );
    // Breaker queries queued behind start-up's writes drain before the window: at
    // 100,000 pods they made 3.8 % of the first minute's evaluations late.
    let settle_end = Instant::now() + config.settle;
    while Instant::now() < settle_end {
        operator.check_alive()?;
        tokio::time::sleep(Duration::from_millis(200).min(settle_end - Instant::now())).await;
    }
    let steady = measure_window(&sim, &detector, &mut operator, config, &keys, ticks).await?;
    let log_lines = operator.log_lines();
    let log_head = operator.log_head(3);
    operator.stop().await;

    // Warm restart: every pod already adopted, as after a crash or a rollout.
    detector.reset_counts();
    let requests_before = sim.request_counts();
    let mut operator = Operator::start(&env.operator_bin, &kubeconfig, &log).await?;
    let restart =
        wait_first_full_evaluation(&sim, &detector, &mut operator, &keys, total_pods).await?;
    let restart_requests = delta(&requests_before, &sim.request_counts());
    operator.stop().await;
    sim.shutdown().await;

    Ok(json!({
        "pods": total_pods,
        "services": spec.services,
        "kubervisorservices": spec.services,
        "breakers": keys.len(),
        "evaluation_period_s": config.evaluation_period,
        "fleet_created_through": "kubesim store (no HTTP), before the operator starts",
        "fleet_ready_s": round(fleet_ready_s),
        "settle_s": config.settle.as_secs(),
        "startup": {
            "start_to_first_full_evaluation_s": round(startup.first_full_s),
            "start_to_all_pods_adopted_s": startup.adopted_s.map(round),
            "start_to_every_status_written_s": reported_s.map(round),
            "cpu_seconds": round(startup_sample.cpu_ticks as f64 / ticks as f64),
            "peak_rss_mib": mib(startup_sample.peak_rss_kib),
            "api_requests": by_verb(&startup_requests),
        },
        "restart": {
            "start_to_first_full_evaluation_s": round(restart.first_full_s),
            "api_requests": by_verb(&restart_requests),
        },
        "steady": steady,
        "clock_ticks_per_second": ticks,
        "clock_ticks_source": ticks_source,
        "operator_log_lines_at_warn": log_lines,
        "operator_log_head": log_head,
        "wall_seconds": round(began.elapsed().as_secs_f64()),
    }))
}

struct Startup {
    /// From starting the process to the detector's first answer to the last breaker.
    first_full_s: f64,
    /// From starting the process to every pod carrying the operator's name (sampled every 0.5 s).
    adopted_s: Option<f64>,
}

async fn wait_first_full_evaluation(
    sim: &Sim,
    detector: &Detector,
    operator: &mut Operator,
    keys: &[String],
    total_pods: usize,
) -> anyhow::Result<Startup> {
    let deadline = Instant::now() + STARTUP_TIMEOUT;
    let mut adopted_s = None;
    let mut last_adoption_check = Instant::now();
    loop {
        operator.check_alive()?;
        let now = Instant::now();
        if adopted_s.is_none() && now - last_adoption_check >= Duration::from_millis(500) {
            last_adoption_check = now;
            if cluster::adopted_pods(sim) >= total_pods {
                adopted_s = Some((now - operator.started).as_secs_f64());
            }
        }
        let (covered, latest) = detector.coverage(keys, 1);
        if covered == keys.len()
            && let Some(latest) = latest
        {
            if adopted_s.is_none() && cluster::adopted_pods(sim) >= total_pods {
                adopted_s = Some((Instant::now() - operator.started).as_secs_f64());
            }
            return Ok(Startup {
                first_full_s: latest
                    .saturating_duration_since(operator.started)
                    .as_secs_f64(),
                adopted_s,
            });
        }
        if now >= deadline {
            bail!(
                "after {STARTUP_TIMEOUT:?}, {covered} of {} breakers had been evaluated",
                keys.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn measure_window(
    sim: &Sim,
    detector: &Detector,
    operator: &mut Operator,
    config: &ScaleConfig,
    keys: &[String],
    ticks: u64,
) -> anyhow::Result<Value> {
    let breakers = keys.len();
    // Scrapes sit outside the CPU samples, so the window does not count their cost.
    let metrics_before = operator.metrics().await?;
    let requests_before = sim.request_counts();
    let queries_before = detector.total_queries();
    let lateness_before = detector.lateness();
    let window_start = Instant::now();
    let first = operator.sample()?;
    let mut rss: Vec<u64> = vec![first.rss_kib];
    let end = Instant::now() + config.window;
    let mut last: ProcSample = first;
    while Instant::now() < end {
        tokio::time::sleep(Duration::from_secs(1).min(end - Instant::now())).await;
        operator.check_alive()?;
        last = operator.sample()?;
        rss.push(last.rss_kib);
    }
    let (open_files, open_sockets) = crate::operator::open_files(operator.pid);
    let queries = detector.total_queries() - queries_before;
    let lateness = detector.lateness();
    let (gaps, late) = (
        lateness.gaps - lateness_before.gaps,
        lateness.late - lateness_before.late,
    );
    // A breaker not queried at all in the window is late too, by the whole window.
    let silent = detector.silent_since(keys, window_start);
    let requests = delta(&requests_before, &sim.request_counts());
    let metrics_after = operator.metrics().await?;
    let seconds = last
        .at
        .zip(first.at)
        .map_or(0.0, |(a, b)| (a - b).as_secs_f64());
    let cpu_seconds = (last.cpu_ticks - first.cpu_ticks) as f64 / ticks as f64;
    let period_ticks = seconds / config.evaluation_period;
    let writes: u64 = requests
        .iter()
        .filter(|((verb, _), _)| WRITE_VERBS.contains(&verb.as_str()))
        .map(|(_, n)| n)
        .sum();
    let total_requests: u64 = requests.values().sum();
    let per_second: BTreeMap<String, f64> = requests
        .iter()
        .map(|((verb, resource), n)| (format!("{verb} {resource}"), round(*n as f64 / seconds)))
        .collect();
    let counter_delta = |name: &str, label: &str| -> BTreeMap<String, f64> {
        let before = metrics_before.by_label(name, label);
        metrics_after
            .by_label(name, label)
            .into_iter()
            .map(|(k, v)| {
                let d = v - before.get(&k).copied().unwrap_or(0.0);
                (k, d)
            })
            .collect()
    };
    let pod_writes: f64 = counter_delta("kubervisor_pod_writes_total", "verb")
        .values()
        .sum();
    let evaluations = counter_delta("kubervisor_breaker_evaluations_total", "outcome");
    let mean_rss = rss.iter().sum::<u64>() as f64 / rss.len() as f64;
    Ok(json!({
        "window_s": round(seconds),
        "rss_mib": {
            "mean": round(mean_rss / 1024.0),
            "max": mib(rss.iter().copied().max().unwrap_or(0)),
            "samples": rss.len(),
        },
        "peak_rss_mib_since_start": mib(last.peak_rss_kib),
        "cpu_seconds_per_minute": round(cpu_seconds / seconds * 60.0),
        "open_files_at_end": open_files,
        "open_sockets_at_end": open_sockets,
        "api_requests_per_second": round(total_requests as f64 / seconds),
        "api_requests_per_second_by": per_second,
        "api_writes": writes,
        "api_writes_per_tick": round(writes as f64 / period_ticks),
        "pod_writes": pod_writes,
        "detector_queries_per_tick": round(queries as f64 / period_ticks),
        "breakers": breakers,
        "evaluations_per_tick": evaluations
            .iter()
            .map(|(k, v)| (k.clone(), round(v / period_ticks)))
            .collect::<BTreeMap<_, _>>(),
        "late_evaluations": {
            "what": "gaps between two detector queries of one breaker in the window; late when longer than the period plus 10 %, as the detector saw them arrive",
            "gaps": gaps,
            "late": late,
            "breakers_not_evaluated_in_window": silent,
            "late_share": round4((late + silent as u64) as f64 / ((gaps + silent as u64).max(1)) as f64),
        },
    }))
}

pub(crate) fn delta(
    before: &BTreeMap<(String, String), u64>,
    after: &BTreeMap<(String, String), u64>,
) -> BTreeMap<(String, String), u64> {
    after
        .iter()
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0)))
        .filter(|(_, v)| *v > 0)
        .collect()
}

pub(crate) fn by_verb(counts: &BTreeMap<(String, String), u64>) -> BTreeMap<String, u64> {
    counts
        .iter()
        .map(|((verb, resource), n)| (format!("{verb} {resource}"), *n))
        .collect()
}

fn round4(x: f64) -> f64 {
    (x * 10_000.0).round() / 10_000.0
}

fn mib(kib: u64) -> f64 {
    round(kib as f64 / 1024.0)
}

fn print_table(run: &Value) {
    let get = |p: &str| run.pointer(p).cloned().unwrap_or(Value::Null);
    eprintln!(
        "\nscale: {} pods, {} breakers",
        get("/pods"),
        get("/breakers")
    );
    for (label, pointer) in [
        (
            "start -> every breaker evaluated (s)",
            "/startup/start_to_first_full_evaluation_s",
        ),
        (
            "start -> every pod adopted (s)",
            "/startup/start_to_all_pods_adopted_s",
        ),
        (
            "start -> every status written (s)",
            "/startup/start_to_every_status_written_s",
        ),
        (
            "restart -> every breaker evaluated (s)",
            "/restart/start_to_first_full_evaluation_s",
        ),
        ("steady RSS mean (MiB)", "/steady/rss_mib/mean"),
        ("steady RSS max (MiB)", "/steady/rss_mib/max"),
        (
            "peak RSS since start (MiB)",
            "/steady/peak_rss_mib_since_start",
        ),
        (
            "steady CPU (CPU-s per minute)",
            "/steady/cpu_seconds_per_minute",
        ),
        ("open sockets", "/steady/open_sockets_at_end"),
        ("API requests per second", "/steady/api_requests_per_second"),
        ("API writes per tick", "/steady/api_writes_per_tick"),
        (
            "late evaluations (share)",
            "/steady/late_evaluations/late_share",
        ),
        (
            "detector queries per tick",
            "/steady/detector_queries_per_tick",
        ),
    ] {
        eprintln!("  {label:<42} {}", get(pointer));
    }
}
