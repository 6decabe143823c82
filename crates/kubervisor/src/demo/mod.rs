//! `kubervisor demo`: the operator at work on a simulated cluster, with no cluster at all.
//!
//! It starts kubesim in-process, a real Prometheus scraping the simulated pods (or, when
//! Prometheus is not installed, a custom detector served by the demo itself), and the
//! operator; then it plays a short scenario while a terminal view shows what happens.

pub mod fixtures;
mod view;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::events::v1::Event;
use kube::Client;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use kubervisor_api::KubervisorService;
use kubesim::{Sim, SimConfig};
use serde_json::json;
use tokio::time::Instant;

use crate::harness::prometheus::{HarnessError, PrometheusOptions, PrometheusProcess};
use crate::operator::{self, RunOptions};
use crate::task::Timing;
pub use view::Snapshot;
use view::{PodRow, View};

const NAMESPACE: &str = "default";
const APP: &str = "web";
const REPLICAS: i32 = 6;
/// When two pods start failing, after the start of traffic.
const GO_BAD_AT: Duration = Duration::from_secs(8);
/// When one of them recovers.
const RECOVER_AT: Duration = Duration::from_secs(30);
/// The demo ends this long after traffic starts, at the latest.
const END_AT: Duration = Duration::from_secs(75);
/// Length of the "after" window of the summary.
const AFTER_WINDOW: Duration = Duration::from_secs(10);
const ERROR_RATE: &str = "0.6";

/// How the demo shows itself.
#[derive(Clone, Debug)]
pub struct DemoOptions {
    /// Redraw a live table (when the output is a terminal); otherwise print plain lines.
    pub tui: bool,
    /// Leave everything running at the end, until interrupted.
    pub keep: bool,
}

/// What happened, for the closing summary.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Summary {
    pub ejected: usize,
    pub reactivated: usize,
    pub paused: usize,
    pub killed: usize,
    pub detector: String,
    pub success_before: f64,
    pub success_during: f64,
    pub success_after: f64,
}

/// Decisions seen so far, as lines, from the operator's events.
#[derive(Default)]
struct Decisions {
    lines: Vec<String>,
    by_reason: BTreeMap<String, usize>,
}

/// Runs the demo to its end and returns the summary it printed.
pub async fn run(options: DemoOptions) -> anyhow::Result<Summary> {
    let dir = tempfile::Builder::new()
        .prefix("kubervisor-demo-")
        .tempdir()
        .context("cannot create a temporary directory")?;
    let sd_file = dir.path().join("targets.json");
    let kubeconfig = dir.path().join("kubeconfig");
    let sim = Sim::start(SimConfig {
        ready_delay: Duration::from_millis(300),
        prometheus_sd: Some(sd_file.clone()),
        default_rps: 100.0,
        ..SimConfig::default()
    })
    .await
    .context("cannot start the simulated cluster")?;
    sim.write_kubeconfig(&kubeconfig)?;
    let client = sim.client();
    let mut view = View::new(options.tui);

    let (prometheus, mut detector) = match PrometheusProcess::start(PrometheusOptions::new(
        &sd_file,
    ))
    .await
    {
        Ok(prometheus) => {
            view.note(format!(
                "Prometheus {} scrapes the simulated pods every second",
                prometheus.url()
            ));
            (Some(prometheus), None)
        }
        Err(HarnessError::BinaryNotFound) => {
            view.note("Prometheus is not installed (apt-get install prometheus): the demo judges pods with a custom detector instead".to_string());
            (None, Some(FallbackDetector::start().await?))
        }
        Err(e) => return Err(e).context("cannot start Prometheus"),
    };

    let (stop_operator, operator_stopped) = tokio::sync::oneshot::channel::<()>();
    let operator = tokio::spawn(operator::run(
        RunOptions {
            kubeconfig: Some(kubeconfig.clone()),
            master: None,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            namespace: None,
            install_crd: true,
            leader_elect: false,
            lease_namespace: None,
            lease_name: "kubervisor".into(),
            identity: "demo".into(),
            sources: Default::default(),
            timing: Timing {
                activator_period: Duration::from_millis(500),
                ..Timing::default()
            },
        },
        async move {
            let _ = operator_stopped.await;
        },
    ));

    fixtures::deploy_guarded_service(&client, NAMESPACE, APP, REPLICAS, BTreeMap::new()).await?;
    wait_for_crd(&client).await?;
    let detector_name = match &prometheus {
        Some(p) => format!("Prometheus at {}", p.url()),
        None => "custom detector (Prometheus not installed)".to_string(),
    };
    let breaker = match (&prometheus, &detector) {
        (Some(p), _) => json!({
            "name": "error-rate",
            "evaluationPeriod": 2,
            "minPodsAvailableRatio": 50,
            "discreteValueOutOfList": {
                "prometheusService": p.address(),
                "promQL": "sum by (code, pod) (increase(http_requests_total{service=\"web\"}[5s]))",
                "key": "code",
                "podNamekey": "pod",
                "goodValues": ["200"],
                "tolerance": 30,
                "minActivity": 20
            }
        }),
        (None, Some(d)) => json!({
            "name": "error-rate",
            "evaluationPeriod": 2,
            "minPodsAvailableRatio": 50,
            "customService": d.url,
        }),
        (None, None) => unreachable!("one detector is always set"),
    };
    let kvs: KubervisorService = serde_json::from_value(json!({
        "apiVersion": "kubervisor.k8s.io/v1alpha1",
        "kind": "KubervisorService",
        "metadata": {"name": APP, "namespace": NAMESPACE},
        "spec": {
            "service": APP,
            "breakers": [breaker],
            "defaultActivator": {"mode": "retryAndPause", "period": 8, "maxRetryCount": 2, "maxPauseCount": 1}
        }
    }))?;
    Api::<KubervisorService>::namespaced(client.clone(), NAMESPACE)
        .create(&PostParams::default(), &kvs)
        .await
        .context("cannot create the KubervisorService")?;
    view.note(format!(
        "{REPLICAS} pods behind Service {APP}; breaker error-rate: more than 30% errors ejects a pod, at least 50% keep traffic; activator retryAndPause (period 8 s, 2 retries, 1 pause)"
    ));

    let decisions = Arc::new(Mutex::new(Decisions::default()));
    let events = tokio::spawn(follow_decisions(client.clone(), decisions.clone()));

    // The scenario clock starts once traffic flows.
    let pods = wait_for_traffic(&client, &sim).await?;
    let start = Instant::now();
    let bad: Vec<String> = vec![pods[1].clone(), pods[4].clone()];
    let mut went_bad = false;
    let mut recovered = false;
    let mut marks = PhaseMarks::new(&sim);
    let mut previous: BTreeMap<String, kubesim::PodStats> = BTreeMap::new();
    let mut ticker = tokio::time::interval(Duration::from_millis(500));
    loop {
        ticker.tick().await;
        let elapsed = start.elapsed();
        if !went_bad && elapsed >= GO_BAD_AT {
            went_bad = true;
            marks.at_bad = marks.stats(&sim);
            for pod in &bad {
                annotate(&client, pod, ERROR_RATE).await?;
            }
            view.note(format!(
                "{} and {} start failing ({}% of their answers are 500)",
                bad[0], bad[1], 60
            ));
        }
        if !recovered && elapsed >= RECOVER_AT {
            recovered = true;
            annotate(&client, &bad[1], "0").await?;
            view.note(format!("{} recovers", bad[1]));
        }
        let rows = pod_rows(&client, &sim, &mut previous).await;
        if let Some(detector) = &mut detector {
            detector.sample(&sim, &rows);
        }
        let service = sim.service_stats(NAMESPACE, APP).unwrap_or_default();
        let recent = marks.recent_success(&sim);
        let lines = decisions
            .lock()
            .map(|d| d.lines.clone())
            .unwrap_or_default();
        view.render(&Snapshot {
            elapsed,
            rows,
            service_success_recent: recent,
            service_requests: service.requests,
            decisions: lines,
        });
        if elapsed + AFTER_WINDOW >= END_AT && marks.at_after.is_none() {
            marks.at_after = Some(marks.stats(&sim));
        }
        if elapsed >= END_AT {
            break;
        }
    }
    let at_end = marks.stats(&sim);
    let counts = decisions
        .lock()
        .map(|d| d.by_reason.clone())
        .unwrap_or_default();
    let summary = Summary {
        ejected: counts.get("PodEjected").copied().unwrap_or(0),
        reactivated: counts.get("PodActivated").copied().unwrap_or(0),
        paused: counts.get("PodPaused").copied().unwrap_or(0),
        killed: counts.get("PodKilled").copied().unwrap_or(0),
        detector: detector_name,
        success_before: success(&marks.at_start, &marks.at_bad),
        success_during: success(&marks.at_bad, marks.at_after.as_ref().unwrap_or(&at_end)),
        success_after: success(marks.at_after.as_ref().unwrap_or(&at_end), &at_end),
    };
    view.summary(&summary);

    if options.keep {
        let kept = dir.keep();
        println!();
        println!("Everything keeps running. Poke around with kubectl:");
        println!("  export KUBECONFIG={}", kept.join("kubeconfig").display());
        println!("  kubectl get kvs,pods,endpoints");
        if let Some(p) = &prometheus {
            println!("Prometheus: {}", p.url());
        }
        println!("Press Ctrl-C to stop.");
        let _ = tokio::signal::ctrl_c().await;
    }
    events.abort();
    let _ = stop_operator.send(());
    let _ = operator.await;
    if let Some(p) = prometheus {
        p.stop().await;
    }
    drop(detector);
    sim.shutdown().await;
    Ok(summary)
}

/// Service counters at the boundaries of the summary's phases.
struct PhaseMarks {
    at_start: kubesim::ServiceStats,
    at_bad: kubesim::ServiceStats,
    at_after: Option<kubesim::ServiceStats>,
    window: std::collections::VecDeque<kubesim::ServiceStats>,
}

impl PhaseMarks {
    fn new(sim: &Sim) -> PhaseMarks {
        let now = sim.service_stats(NAMESPACE, APP).unwrap_or_default();
        PhaseMarks {
            at_start: now,
            at_bad: now,
            at_after: None,
            window: Default::default(),
        }
    }

    fn stats(&self, sim: &Sim) -> kubesim::ServiceStats {
        sim.service_stats(NAMESPACE, APP).unwrap_or_default()
    }

    /// Success rate over the last few seconds (ten ticks of the view).
    fn recent_success(&mut self, sim: &Sim) -> f64 {
        let now = self.stats(sim);
        self.window.push_back(now);
        if self.window.len() > 10 {
            self.window.pop_front();
        }
        success(self.window.front().unwrap_or(&now), &now)
    }
}

fn success(from: &kubesim::ServiceStats, to: &kubesim::ServiceStats) -> f64 {
    let requests = to.requests.saturating_sub(from.requests);
    let errors = to.errors.saturating_sub(from.errors);
    if requests == 0 {
        1.0
    } else {
        1.0 - errors as f64 / requests as f64
    }
}

async fn wait_for_crd(client: &Client) -> anyhow::Result<()> {
    let api: Api<KubervisorService> = Api::namespaced(client.clone(), NAMESPACE);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match api.list(&ListParams::default().limit(1)).await {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() >= deadline => {
                return Err(e).context("the operator did not install its CRD");
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// Waits until every pod is adopted and the Service receives traffic; returns the pod names.
async fn wait_for_traffic(client: &Client, sim: &Sim) -> anyhow::Result<Vec<String>> {
    let api: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let pods = api
            .list(&ListParams::default().labels(&format!("app={APP}")))
            .await?;
        let adopted: Vec<String> = pods
            .items
            .iter()
            .filter(|p| {
                p.metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get("kubervisor/traffic"))
                    .map(String::as_str)
                    == Some("yes")
            })
            .filter_map(|p| p.metadata.name.clone())
            .collect();
        let flowing = sim
            .service_stats(NAMESPACE, APP)
            .is_some_and(|s| s.requests > 0);
        if adopted.len() == REPLICAS as usize && flowing {
            let mut names = adopted;
            names.sort();
            return Ok(names);
        }
        if Instant::now() >= deadline {
            anyhow::bail!(
                "pods were not adopted in time: {} of {REPLICAS} have traffic=yes",
                adopted.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn annotate(client: &Client, pod: &str, error_rate: &str) -> anyhow::Result<()> {
    let patch = json!({"metadata": {"annotations": {kubesim::workload::ERROR_RATE_ANNOTATION: error_rate}}});
    Api::<Pod>::namespaced(client.clone(), NAMESPACE)
        .patch(pod, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .with_context(|| format!("cannot annotate pod {pod}"))?;
    Ok(())
}

async fn pod_rows(
    client: &Client,
    sim: &Sim,
    previous: &mut BTreeMap<String, kubesim::PodStats>,
) -> Vec<PodRow> {
    let api: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);
    let Ok(pods) = api
        .list(&ListParams::default().labels(&format!("app={APP}")))
        .await
    else {
        return Vec::new();
    };
    let now = jiff::Timestamp::now();
    let mut rows: Vec<PodRow> = pods
        .items
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .map(|pod| {
            let name = pod.metadata.name.clone().unwrap_or_default();
            let labels = pod.metadata.labels.clone().unwrap_or_default();
            let annotations = pod.metadata.annotations.clone().unwrap_or_default();
            let stats = sim.pod_stats(NAMESPACE, &name).unwrap_or_default();
            let before = previous
                .insert(name.clone(), stats.clone())
                .unwrap_or_default();
            let requests = (stats.ok + stats.errors).saturating_sub(before.ok + before.errors);
            let errors = stats.errors.saturating_sub(before.errors);
            let since = annotations
                .get(kubervisor_api::pod::BREAK_AT_ANNOTATION)
                .and_then(|t| t.parse::<jiff::Timestamp>().ok())
                .filter(|_| labels.get("kubervisor/traffic").map(String::as_str) != Some("yes"))
                .map(|t| now.duration_since(t).as_secs());
            PodRow {
                name,
                traffic: labels
                    .get("kubervisor/traffic")
                    .cloned()
                    .unwrap_or_else(|| "-".into()),
                error_rate: (requests > 0).then(|| errors as f64 / requests as f64),
                retries: annotations
                    .get(kubervisor_api::pod::RETRY_COUNT_ANNOTATION)
                    .cloned()
                    .unwrap_or_else(|| "0".into()),
                since_seconds: since,
            }
        })
        .collect();
    rows.sort_by(|a, b| a.name.cmp(&b.name));
    rows
}

/// Turns the operator's events on the KubervisorService into decision lines.
async fn follow_decisions(client: Client, decisions: Arc<Mutex<Decisions>>) {
    let api: Api<Event> = Api::namespaced(client, NAMESPACE);
    let mut seen = BTreeSet::new();
    let stream = watcher::watcher(api, watcher::Config::default());
    let mut stream = std::pin::pin!(stream);
    while let Some(event) = stream.next().await {
        let objects = match event {
            Ok(watcher::Event::Apply(e) | watcher::Event::InitApply(e)) => vec![e],
            _ => continue,
        };
        for e in objects {
            let regarding_kvs =
                e.regarding.as_ref().and_then(|r| r.kind.as_deref()) == Some("KubervisorService");
            let uid = e.metadata.uid.clone().unwrap_or_default();
            if !regarding_kvs || !seen.insert(uid) {
                continue;
            }
            let reason = e.reason.clone().unwrap_or_default();
            let at = e
                .event_time
                .as_ref()
                .map(|t| t.0.strftime("%H:%M:%S").to_string())
                .unwrap_or_default();
            let line = format!("{at} {reason}: {}", e.note.clone().unwrap_or_default());
            if let Ok(mut d) = decisions.lock() {
                *d.by_reason.entry(reason).or_default() += 1;
                d.lines.push(line);
            }
        }
    }
}

/// When Prometheus is not installed: a detector that reports pods whose share of
/// errors over the last five seconds, as counted by the simulated load, exceeds 30%.
struct FallbackDetector {
    url: String,
    faulty: Arc<Mutex<Vec<String>>>,
    history: BTreeMap<String, std::collections::VecDeque<kubesim::PodStats>>,
    server: tokio::task::JoinHandle<()>,
}

impl FallbackDetector {
    async fn start() -> anyhow::Result<FallbackDetector> {
        let faulty: Arc<Mutex<Vec<String>>> = Arc::default();
        let served = faulty.clone();
        let app = axum::Router::new().route(
            "/faulty",
            axum::routing::get(move || {
                let faulty = served.clone();
                async move {
                    let names = faulty.lock().map(|f| f.clone()).unwrap_or_default();
                    let items: Vec<serde_json::Value> = names
                        .iter()
                        .map(|n| json!({"metadata": {"name": n}}))
                        .collect();
                    axum::Json(json!({"apiVersion": "v1", "kind": "PodList", "items": items}))
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .context("cannot start the custom detector")?;
        let url = format!("http://{}/faulty", listener.local_addr()?);
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(FallbackDetector {
            url,
            faulty,
            history: BTreeMap::new(),
            server,
        })
    }

    /// Takes one sample of every pod's counters (called twice a second) and updates the report.
    fn sample(&mut self, sim: &Sim, pods: &[PodRow]) {
        let mut bad = Vec::new();
        for pod in pods {
            let now = sim.pod_stats(NAMESPACE, &pod.name).unwrap_or_default();
            let window = self.history.entry(pod.name.clone()).or_default();
            window.push_back(now.clone());
            if window.len() > 10 {
                window.pop_front();
            }
            let first = window.front().cloned().unwrap_or_default();
            let requests = (now.ok + now.errors).saturating_sub(first.ok + first.errors);
            let errors = now.errors.saturating_sub(first.errors);
            if requests >= 20 && errors * 100 > requests * 30 {
                bad.push(pod.name.clone());
            }
        }
        if let Ok(mut f) = self.faulty.lock() {
            *f = bad;
        }
    }
}

impl Drop for FallbackDetector {
    fn drop(&mut self) {
        self.server.abort();
    }
}
