//! The backtest's replay over a day of history: 24 h at a 5 s evaluation period over 100
//! pods (two series each), already fetched, so the figure is the replay alone.

use std::time::{Duration, Instant};

use jiff::{SignedDuration, Timestamp};
use kubervisor::backtest::detector::SeriesKey;
use kubervisor::backtest::report::Summary;
use kubervisor::backtest::{BreakerHistory, History, Options, Plan, Policy, replay_histories};
use serde_json::{Value, json};

const KVS: &str = r#"apiVersion: kubervisor.k8s.io/v1alpha1
kind: KubervisorService
metadata:
  name: web
spec:
  service: web
  breakers:
  - name: errors
    evaluationPeriod: 5
    minPodsAvailableCount: 80
    discreteValueOutOfList:
      prometheusService: prometheus:9090
      promQL: sum by (code, pod) (increase(http_requests_total[1m]))
      key: code
      podNamekey: pod
      goodValues: ["200"]
      tolerance: 20
      minActivity: 10
  defaultActivator:
    mode: retryAndKill
    period: 60
    maxRetryCount: 5
    forgetAfter: 900
"#;

/// A day of history: every pod healthy but for a 10-minute bad spell every 6 hours
/// (staggered by pod), and every seventh pod noisy around the tolerance.
pub fn history(pods: usize, hours: u64, period: Duration) -> History {
    let start: Timestamp = "2026-11-24T00:00:00Z".parse().expect("a valid time");
    let end = start + SignedDuration::from_hours(hours as i64);
    let mut history = History::empty(start, end, period);
    for p in 0..pods {
        for code in ["200", "500"] {
            history.keys.push(SeriesKey {
                pod: format!("web-{p:03}"),
                key: Some(code.to_string()),
            });
        }
    }
    let step = period.as_secs().max(1);
    for (i, samples) in history.instants.iter_mut().enumerate() {
        let t = i as u64 * step;
        for p in 0..pods {
            let phase = (t + p as u64 * 217) % (6 * 3600);
            let bad = if phase < 600 {
                40.0
            } else if p % 7 == 0 {
                [5.0, 15.0, 25.0][(i + p) % 3]
            } else {
                1.0
            };
            samples.push((2 * p, 100.0 - bad));
            samples.push((2 * p + 1, bad));
        }
    }
    history
}

/// CPU time of this thread (user + system) from `/proc/thread-self/stat`, in seconds: the
/// replay is single-threaded, so this is its cost whatever else shares the machine.
fn thread_cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap_or_default();
    // Fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of the line, 11 and 12 after the name.
    (ticks(11) + ticks(12)) / clock_ticks()
}

fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

fn replay_once(
    policy: &Policy,
    history: &History,
    charts: bool,
) -> anyhow::Result<(Duration, f64, Summary)> {
    let plan = Plan::new(policy, None)?;
    let (start, end) = (history.start, history.time(history.instants.len() - 1));
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
        start,
        end,
        breaker: None,
        fleet_size: None,
        charts,
    };
    let cpu = thread_cpu_seconds();
    let began = Instant::now();
    let backtest = replay_histories(policy, &plan.spec, breakers, plan.not_replayable, &options)?;
    let elapsed = began.elapsed();
    let cpu = thread_cpu_seconds() - cpu;
    Ok((elapsed, cpu, Summary::of(&backtest)))
}

pub fn run(pods: usize, hours: u64, iterations: usize) -> anyhow::Result<Value> {
    let policy = Policy::parse("bench.yaml", KVS)?;
    let period = Duration::from_secs(5);
    let history = history(pods, hours, period);
    let mut plain = Vec::new();
    let mut cpu = Vec::new();
    let mut summary = None;
    for _ in 0..iterations.max(1) {
        let (elapsed, seconds, s) = replay_once(&policy, &history, false)?;
        plain.push(elapsed.as_secs_f64());
        cpu.push(seconds);
        summary = Some(s);
    }
    let (charts, _, _) = replay_once(&policy, &history, true)?;
    cpu.sort_by(f64::total_cmp);
    let cpu_median = cpu[cpu.len() / 2];
    let summary = summary.expect("at least one iteration");
    plain.sort_by(f64::total_cmp);
    let median = plain[plain.len() / 2];
    eprintln!(
        "backtest: {pods} pods, {hours} h at {} s: {} evaluations, {} ejections, {} kills; replay {:.2} s wall, {:.2} CPU-s (medians of {}), {:.2} s wall keeping chart data",
        period.as_secs(),
        summary.evaluations,
        summary.ejections,
        summary.kills,
        median,
        cpu_median,
        plain.len(),
        charts.as_secs_f64()
    );
    Ok(json!({
        "scenario": "backtest",
        "pods": pods,
        "hours": hours,
        "evaluation_period_s": period.as_secs(),
        "evaluations": summary.evaluations,
        "ejections": summary.ejections,
        "kills": summary.kills,
        "replay_s_median": median,
        "replay_s_max": plain.last().copied().unwrap_or_default(),
        "replay_cpu_s_median": cpu_median,
        "replay_with_chart_data_s": charts.as_secs_f64(),
        "iterations": plain.len(),
        "includes_fetch": false,
    }))
}
