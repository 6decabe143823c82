//! `kubervisor backtest` against a real Prometheus holding a known past: history written as
//! OpenMetrics, loaded with `promtool tsdb create-blocks-from openmetrics`, then replayed.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use jiff::{SignedDuration, Timestamp};
use kubervisor::harness::{HarnessError, PrometheusOptions, PrometheusProcess};
use serde_json::Value;

const PODS: [&str; 5] = ["web-1", "web-2", "web-3", "web-4", "web-5"];
/// Seconds of history, one sample every 10 s.
const SPAN: i64 = 300;

const KVS: &str = r#"apiVersion: kubervisor.k8s.io/v1alpha1
kind: KubervisorService
metadata:
  name: web
  namespace: shop
spec:
  service: web
  breakers:
  - name: errors
    evaluationPeriod: 10
    minPodsAvailableCount: 2
    discreteValueOutOfList:
      prometheusService: prometheus.monitoring:9090
      promQL: sum by (code, pod) (requests)
      key: code
      podNamekey: pod
      goodValues: ["200"]
      tolerance: 20
      minActivity: 10
  - name: price
    evaluationPeriod: 10
    minPodsAvailableCount: 2
    continuousValueDeviation:
      prometheusService: prometheus.monitoring:9090
      promQL: price / scalar(quantile(0.5, price))
      podNamekey: pod
      maxDeviationPercent: 50
  - name: custom
    customService: detector.monitoring:8080
  defaultActivator:
    mode: periodic
    period: 30
"#;

/// The statistical detectors over the same fleet, from metrics of their own.
const KVS_STATISTICAL: &str = r#"apiVersion: kubervisor.k8s.io/v1alpha1
kind: KubervisorService
metadata:
  name: web
  namespace: shop
spec:
  service: web
  breakers:
  - name: latency-bound
    evaluationPeriod: 10
    minPodsAvailableCount: 2
    valueThreshold:
      prometheusService: prometheus.monitoring:9090
      promQL: latency
      podNamekey: pod
      above: 200
      below: 50
  - name: latency-outlier
    evaluationPeriod: 10
    minPodsAvailableCount: 2
    continuousOutlier:
      prometheusService: prometheus.monitoring:9090
      promQL: latency
      podNamekey: pod
      maxZScore: 3.5
      direction: both
      minimumHosts: 5
  - name: success-rate
    evaluationPeriod: 10
    minPodsAvailableCount: 2
    successRateOutlier:
      prometheusService: prometheus.monitoring:9090
      promQL: sum by (code, pod) (calls)
      key: code
      podNamekey: pod
      goodValues: ["200"]
      stdevFactor: 1.9
      minimumHosts: 5
      requestVolume: 100
  - name: memory-leak
    evaluationPeriod: 10
    minPodsAvailableCount: 2
    valueTrend:
      prometheusService: prometheus.monitoring:9090
      promQL: memory
      podNamekey: pod
      window: 60
      maxSlope: 0.4
      minSlope: -0.4
  defaultActivator:
    mode: periodic
    period: 30
"#;

/// The history: web-3 fails half its requests and triples its price in [60 s, 120 s);
/// web-5 is noisy (10 % errors, price 30 % above or below the fleet's), the rest healthy.
///
/// For the statistical detectors: web-3's latency is 300 in [60 s, 120 s) against a fleet
/// near 100 (web-5 alternating 103 and 99); its calls fail half the time then, against
/// fleet failure rates of 0 to 6 %; its memory leaks 1 unit/s over [60 s, 120 s] and stays
/// up, while web-5's swings ±20 around a flat line. Memory starts one trend window before
/// the range, so the first evaluations already have a full window.
fn openmetrics(t0: Timestamp) -> String {
    let mut text = String::from("# TYPE requests gauge\n");
    let seconds = |t: i64| t0.as_second() + t;
    for t in (0..=SPAN).step_by(10) {
        for pod in PODS {
            let bad = match pod {
                "web-3" if (60..120).contains(&t) => 50,
                "web-5" => 10,
                _ => 0,
            };
            let _ = writeln!(
                text,
                "requests{{pod=\"{pod}\",code=\"200\"}} {} {}",
                100 - bad,
                seconds(t)
            );
            let _ = writeln!(
                text,
                "requests{{pod=\"{pod}\",code=\"500\"}} {bad} {}",
                seconds(t)
            );
        }
    }
    text.push_str("# TYPE price gauge\n");
    for t in (0..=SPAN).step_by(10) {
        for pod in PODS {
            let price = match pod {
                "web-3" if (60..120).contains(&t) => 30,
                "web-5" if t % 20 == 0 => 13,
                "web-5" => 7,
                _ => 10,
            };
            let _ = writeln!(text, "price{{pod=\"{pod}\"}} {price} {}", seconds(t));
        }
    }
    text.push_str("# TYPE latency gauge\n");
    for t in (0..=SPAN).step_by(10) {
        for pod in PODS {
            let latency = match pod {
                "web-1" => 100,
                "web-2" => 102,
                "web-3" if (60..120).contains(&t) => 300,
                "web-3" => 98,
                "web-4" => 101,
                _ if t % 20 == 0 => 103,
                _ => 99,
            };
            let _ = writeln!(text, "latency{{pod=\"{pod}\"}} {latency} {}", seconds(t));
        }
    }
    text.push_str("# TYPE calls gauge\n");
    for t in (0..=SPAN).step_by(10) {
        for pod in PODS {
            let bad = match pod {
                "web-1" => 0,
                "web-2" => 2,
                "web-3" if (60..120).contains(&t) => 50,
                "web-3" => 1,
                "web-4" => 3,
                _ if t % 20 == 0 => 6,
                _ => 4,
            };
            for (code, count) in [("200", 100 - bad), ("500", bad)] {
                let _ = writeln!(
                    text,
                    "calls{{pod=\"{pod}\",code=\"{code}\"}} {count} {}",
                    seconds(t)
                );
            }
        }
    }
    text.push_str("# TYPE memory gauge\n");
    for t in (-TREND_WINDOW..=SPAN).step_by(10) {
        for pod in PODS {
            let memory = match pod {
                "web-3" => 100 + (t.clamp(60, 120) - 60),
                "web-5" if t % 20 == 0 => 120,
                "web-5" => 80,
                _ => 100,
            };
            let _ = writeln!(text, "memory{{pod=\"{pod}\"}} {memory} {}", seconds(t));
        }
    }
    text.push_str("# EOF\n");
    text
}

/// The `valueTrend` breaker's window, in seconds.
const TREND_WINDOW: i64 = 60;

struct Past {
    _dir: tempfile::TempDir,
    kvs: PathBuf,
    statistical: PathBuf,
    prometheus: PrometheusProcess,
    t0: Timestamp,
}

/// Backfills the history a few hours back (older than anything the head block will
/// hold, well within retention) and starts Prometheus on it.
async fn past() -> Past {
    let dir = tempfile::tempdir().unwrap();
    let now = Timestamp::now().as_second();
    let t0 = Timestamp::from_second(now - now % 60 - 3 * 3600).unwrap();
    let input = dir.path().join("history.om");
    std::fs::write(&input, openmetrics(t0)).unwrap();
    let blocks = dir.path().join("blocks");
    let promtool = Command::new("promtool")
        .args(["tsdb", "create-blocks-from", "openmetrics"])
        .arg(&input)
        .arg(&blocks)
        .output()
        .expect("these tests need promtool (Debian: apt-get install prometheus)");
    assert!(
        promtool.status.success(),
        "promtool failed: {}",
        String::from_utf8_lossy(&promtool.stderr)
    );
    let options = PrometheusOptions {
        blocks: Some(blocks),
        ..PrometheusOptions::new(dir.path().join("targets.json"))
    };
    let prometheus = match PrometheusProcess::start(options).await {
        Ok(prometheus) => prometheus,
        Err(e @ HarnessError::BinaryNotFound) => panic!("these tests need Prometheus: {e}"),
        Err(e) => panic!("{e}"),
    };
    let kvs = dir.path().join("kvs.yaml");
    std::fs::write(&kvs, KVS).unwrap();
    let statistical = dir.path().join("statistical.yaml");
    std::fs::write(&statistical, KVS_STATISTICAL).unwrap();
    Past {
        _dir: dir,
        kvs,
        statistical,
        prometheus,
        t0,
    }
}

fn backtest(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kubervisor"))
        .arg("backtest")
        .args(args)
        .output()
        .unwrap()
}

impl Past {
    fn at(&self, seconds: i64) -> String {
        (self.t0 + SignedDuration::from_secs(seconds)).to_string()
    }

    fn run(&self, kvs: &Path, extra: &[&str]) -> Output {
        let (start, end) = (self.at(0), self.at(SPAN));
        let mut args = vec![
            "-f",
            kvs.to_str().unwrap(),
            "--prometheus",
            self.prometheus.url(),
            "--start",
            &start,
            "--end",
            &end,
        ];
        args.extend_from_slice(extra);
        backtest(&args)
    }

    /// The JSON lines of a run: decisions as (seconds, action, pod), and the summary.
    fn json(&self, breaker: &str) -> (Vec<(i64, String, String)>, Value) {
        self.json_of(&self.kvs, breaker)
    }

    fn json_of(&self, kvs: &Path, breaker: &str) -> (Vec<(i64, String, String)>, Value) {
        let output = self.run(kvs, &["--breaker", breaker, "--output", "json"]);
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let mut lines: Vec<Value> = String::from_utf8(output.stdout)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let summary = lines.pop().unwrap()["summary"].clone();
        let decisions = lines
            .iter()
            .map(|d| {
                assert_eq!(d["breaker"], breaker);
                let time: Timestamp = d["time"].as_str().unwrap().parse().unwrap();
                (
                    time.duration_since(self.t0).as_secs(),
                    d["action"].as_str().unwrap().to_string(),
                    d["pod"].as_str().unwrap_or("-").to_string(),
                )
            })
            .collect();
        (decisions, summary)
    }
}

fn expected() -> Vec<(i64, String, String)> {
    [
        (60, "eject"),
        (90, "activate"),
        (90, "eject"),
        (120, "activate"),
    ]
    .into_iter()
    .map(|(t, action)| (t, action.to_string(), "web-3".to_string()))
    .collect()
}

fn assert_summary(summary: &Value) {
    assert_eq!(summary["evaluations"], 31);
    assert_eq!(summary["ejections"], 2);
    assert_eq!(summary["distinctPodsEjected"], 1);
    assert_eq!(summary["activations"], 2);
    assert_eq!(summary["kills"], 0);
    assert_eq!(summary["pauses"], 0);
    assert_eq!(summary["pods"], 5);
    assert_eq!(summary["maxPodsOut"], 1);
    assert_eq!(summary["minPodsWithTraffic"], 4);
    assert_eq!(summary["floor"], 2);
    assert_eq!(summary["timeOutSeconds"]["web-3"], 60.0);
    assert_eq!(summary["timeOutSeconds"]["web-5"], 0.0);
    // `--breaker` leaves the other breakers out, the unreplayable one included.
    assert_eq!(summary["notReplayable"], serde_json::json!([]));
}

#[tokio::test]
async fn backfilled_history_replays_to_the_exact_decisions() {
    let past = past().await;

    let (decisions, summary) = past.json("errors");
    assert_eq!(decisions, expected(), "discrete breaker");
    assert_summary(&summary);

    let (decisions, summary) = past.json("price");
    assert_eq!(decisions, expected(), "continuous breaker");
    assert_summary(&summary);

    // The text output: the timeline, the caveat and the floor beside the minimum.
    let output = past.run(&past.kvs, &[]);
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(
        text.contains("Caveat: history was recorded with every pod serving"),
        "{text}"
    );
    assert!(
        text.contains("breaker custom: not replayable: customService"),
        "{text}"
    );
    assert!(text.contains(&format!("{}  eject     web-3  pod web-3 ejected by breaker errors: 50.0% bad code over 100 observations > tolerance 20%", past.at(60))), "{text}");
    assert!(
        text.contains("fewest pods with traffic     4 (floor 2)"),
        "{text}"
    );

    past.prometheus.stop().await;
}

#[tokio::test]
async fn statistical_detectors_replay_to_the_exact_decisions() {
    let past = past().await;

    // web-3's latency of 300 crosses `above: 200`; nobody's goes under 50.
    let (decisions, summary) = past.json_of(&past.statistical, "latency-bound");
    assert_eq!(decisions, expected(), "valueThreshold");
    assert_summary(&summary);

    // Against a fleet median of 101 or 102 with a MAD of 1, web-3's 300 scores over 130;
    // web-5's swings score at most 2.02, under 3.5.
    let (decisions, summary) = past.json_of(&past.statistical, "latency-outlier");
    assert_eq!(decisions, expected(), "continuousOutlier");
    assert_summary(&summary);

    // Success rates 1, .98, .99, .97 and .94 or .96: web-5 stays above mean − 1.9 × stdev
    // (.937 or .953); web-3 at .5 falls under it (.517 or .518).
    let (decisions, summary) = past.json_of(&past.statistical, "success-rate");
    assert_eq!(decisions, expected(), "successRateOutlier");
    assert_summary(&summary);

    // Slopes over the 60 s window at 10 s steps: 0.29/s at 80 s, 0.5/s at 90 s, 1/s at
    // 120 s, 0.5/s at 150 s, 0.29/s at 160 s; web-5's swings fit a slope of 0.
    let (decisions, summary) = past.json_of(&past.statistical, "memory-leak");
    let leak: Vec<(i64, String, String)> = [
        (90, "eject"),
        (120, "activate"),
        (120, "eject"),
        (150, "activate"),
        (150, "eject"),
        (180, "activate"),
    ]
    .into_iter()
    .map(|(t, action)| (t, action.to_string(), "web-3".to_string()))
    .collect();
    assert_eq!(decisions, leak, "valueTrend");
    assert_eq!(summary["evaluations"], 31);
    assert_eq!(summary["ejections"], 3);
    assert_eq!(summary["activations"], 3);
    assert_eq!(summary["distinctPodsEjected"], 1);
    assert_eq!(summary["maxPodsOut"], 1);
    assert_eq!(summary["minPodsWithTraffic"], 4);
    assert_eq!(summary["floor"], 2);
    assert_eq!(summary["timeOutSeconds"]["web-3"], 90.0);
    assert_eq!(summary["timeOutSeconds"]["web-5"], 0.0);

    // Every method replays; the report charts each one's own quantity and fixed bounds.
    let report = past.statistical.with_file_name("statistical.html");
    let output = past.run(&past.statistical, &["--report", report.to_str().unwrap()]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(!text.contains("not replayable"), "{text}");
    let page = std::fs::read_to_string(&report).unwrap();
    if let Ok(path) = std::env::var("BACKTEST_REPORT_SAMPLE") {
        std::fs::write(path, &page).unwrap();
    }
    assert_eq!(page.matches("<svg").count(), 4, "one chart per breaker");
    for label in [
        "threshold 200",
        "threshold 50",
        "threshold 3.5",
        "threshold -3.5",
        "threshold 0.4",
        "threshold -0.4",
        "modified z-score",
        "success rate",
        "slope (units per second)",
    ] {
        assert!(page.contains(label), "{label} missing from the report");
    }
    past.prometheus.stop().await;
}

#[tokio::test]
async fn report_and_comparison_on_the_same_history() {
    let past = past().await;
    // A stricter policy: web-5's 10 % errors are now too many, but the floor keeps 4 serving.
    let strict = past.kvs.with_file_name("strict.yaml");
    std::fs::write(
        &strict,
        KVS.replace("tolerance: 20", "tolerance: 5")
            .replace("minPodsAvailableCount: 2", "minPodsAvailableCount: 4"),
    )
    .unwrap();
    let report = past.kvs.with_file_name("report.html");
    let output = past.run(
        &past.kvs,
        &[
            "--breaker",
            "errors",
            "--compare",
            strict.to_str().unwrap(),
            "--report",
            report.to_str().unwrap(),
        ],
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8(output.stdout).unwrap();
    let row = |name: &str| {
        text.lines()
            .rev()
            .find(|l| l.trim_start().starts_with(name))
            .unwrap_or_else(|| panic!("no row {name} in {text}"))
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    };
    // The strict policy ejects web-5 at once and keeps it cycling; web-3 is spared while
    // web-5 is out, since the floor of 4 leaves room for one pod out at a time.
    assert!(row("ejections").starts_with("ejections 2 "), "{text}");
    assert!(row("most pods out at once").ends_with(" 1 1"), "{text}");
    assert!(
        row("fewest pods with traffic").contains("4 (floor 2) 4 (floor 4)"),
        "{text}"
    );

    let page = std::fs::read_to_string(&report).unwrap();
    assert!(
        !page.contains("http://") && !page.contains("https://"),
        "the report refers to the network"
    );
    assert_eq!(
        page.matches("<svg").count(),
        2,
        "one chart per policy's breaker"
    );
    for series in ["web-1", "web-3", "web-5", "threshold 0.2", "threshold 0.05"] {
        assert!(
            page.contains(&format!("{series}\n</text>")),
            "{series} missing from the report"
        );
    }
    past.prometheus.stop().await;
}

#[test]
fn bad_input_is_named_with_exit_code_2() {
    let dir = tempfile::tempdir().unwrap();
    let kvs = dir.path().join("kvs.yaml");
    std::fs::write(&kvs, KVS).unwrap();
    let kvs = kvs.to_str().unwrap();
    let cases: [(&[&str], &str); 5] = [
        (
            &["-f", kvs, "--start", "yesterday"],
            "invalid --start `yesterday`",
        ),
        (
            &["-f", kvs, "--start", "-1h", "--end", "-2h"],
            "is not before --end",
        ),
        (
            &["-f", kvs, "--breaker", "latency"],
            "--breaker latency: no such breaker; the resource has breakers errors, price, custom",
        ),
        (
            &["-f", "/nonexistent/kvs.yaml"],
            "/nonexistent/kvs.yaml: cannot read",
        ),
        (
            &["-f", kvs, "--breaker", "custom"],
            "no breaker can be replayed: breaker custom: customService",
        ),
    ];
    for (args, message) in cases {
        let output = backtest(args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(message), "{args:?}: {stderr}");
    }
    let invalid = dir.path().join("invalid.yaml");
    std::fs::write(&invalid, KVS.replace("tolerance: 20", "tolerance: 200")).unwrap();
    let output = backtest(&["-f", invalid.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("tolerance"), "{stderr}");
}

#[test]
fn unreachable_prometheus_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let kvs = dir.path().join("kvs.yaml");
    std::fs::write(&kvs, KVS).unwrap();
    // A port nothing listens on: bound, then released.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let output = backtest(&[
        "-f",
        kvs.to_str().unwrap(),
        "--prometheus",
        &url,
        "--start",
        "-10m",
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("breaker errors") && stderr.contains(&url),
        "{stderr}"
    );
}
