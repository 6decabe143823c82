//! The simulated workload: a load generator per Service, per-pod answers and metrics,
//! and the Prometheus file service-discovery document.

use crate::resources::ResKey;
use crate::store::{Event, EventType};
use crate::util::{labels_of, str_at};
use axum::Router;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::mpsc::UnboundedReceiver;

/// Service annotation: requests per second the load generator sends.
pub const RPS_ANNOTATION: &str = "sim.kubervisor.io/rps";
/// Pod annotation: share of requests answered with 500, 0..1.
pub const ERROR_RATE_ANNOTATION: &str = "sim.kubervisor.io/error-rate";
/// Pod annotation: mean latency in milliseconds.
pub const LATENCY_ANNOTATION: &str = "sim.kubervisor.io/latency-ms";
/// Pod annotation: business value observed into the `price` summary per request.
pub const PRICE_ANNOTATION: &str = "sim.kubervisor.io/price";

const DEFAULT_LATENCY_MS: f64 = 20.0;
/// Histogram buckets in seconds (Prometheus client defaults).
const BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Deterministic latency observations cycle through these multiples of the mean (mean 1.0).
const LATENCY_FACTORS: [f64; 5] = [0.5, 0.75, 1.0, 1.25, 1.5];

/// Cumulative counts the load generator recorded for one Service.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ServiceStats {
    pub requests: u64,
    pub errors: u64,
}

impl ServiceStats {
    /// Share of successful requests, 1.0 when nothing was sent yet.
    pub fn success_rate(&self) -> f64 {
        if self.requests == 0 {
            1.0
        } else {
            1.0 - self.errors as f64 / self.requests as f64
        }
    }
}

/// Cumulative counts of one simulated pod.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PodStats {
    pub ok: u64,
    pub errors: u64,
    pub latency_sum_seconds: f64,
    pub price_sum: f64,
    pub price_count: u64,
}

#[derive(Debug, Default)]
struct PodSim {
    uid: String,
    labels: BTreeMap<String, String>,
    running: bool,
    error_rate: f64,
    latency_ms: f64,
    price: Option<f64>,
    /// Fractional errors owed: makes the error share exact over any window.
    error_debt: f64,
    observations: u64,
    stats: PodStats,
    buckets: [u64; BUCKETS.len()],
    /// Services this pod has been an endpoint of; sticky so relabelled pods keep their series.
    services: BTreeSet<String>,
}

impl PodSim {
    fn serve(&mut self) -> bool {
        self.error_debt += self.error_rate;
        let failed = self.error_debt >= 1.0 - 1e-9;
        if failed {
            self.error_debt -= 1.0;
            self.stats.errors += 1;
        } else {
            self.stats.ok += 1;
        }
        let factor = LATENCY_FACTORS[(self.observations % LATENCY_FACTORS.len() as u64) as usize];
        self.observations += 1;
        let seconds = self.latency_ms * factor / 1000.0;
        self.stats.latency_sum_seconds += seconds;
        for (i, le) in BUCKETS.iter().enumerate() {
            if seconds <= *le {
                self.buckets[i] += 1;
            }
        }
        if let Some(p) = self.price {
            self.stats.price_sum += p;
            self.stats.price_count += 1;
        }
        failed
    }

    fn render(&self, out: &mut String, extra_labels: &str) {
        let sep = if extra_labels.is_empty() { "" } else { "," };
        let total = self.stats.ok + self.stats.errors;
        let _ = writeln!(
            out,
            "http_requests_total{{{extra_labels}{sep}code=\"200\"}} {}",
            self.stats.ok
        );
        let _ = writeln!(
            out,
            "http_requests_total{{{extra_labels}{sep}code=\"500\"}} {}",
            self.stats.errors
        );
        for (i, le) in BUCKETS.iter().enumerate() {
            let _ = writeln!(
                out,
                "http_request_duration_seconds_bucket{{{extra_labels}{sep}le=\"{le}\"}} {}",
                self.buckets[i]
            );
        }
        let _ = writeln!(
            out,
            "http_request_duration_seconds_bucket{{{extra_labels}{sep}le=\"+Inf\"}} {total}"
        );
        let braces = if extra_labels.is_empty() {
            String::new()
        } else {
            format!("{{{extra_labels}}}")
        };
        let _ = writeln!(
            out,
            "http_request_duration_seconds_sum{braces} {}",
            self.stats.latency_sum_seconds
        );
        let _ = writeln!(out, "http_request_duration_seconds_count{braces} {total}");
        if self.price.is_some() || self.stats.price_count > 0 {
            let _ = writeln!(out, "price_sum{braces} {}", self.stats.price_sum);
            let _ = writeln!(out, "price_count{braces} {}", self.stats.price_count);
        }
    }
}

const HEADER: &str = "# HELP http_requests_total Requests answered by the simulated pod.\n# TYPE http_requests_total counter\n# HELP http_request_duration_seconds Simulated request latency.\n# TYPE http_request_duration_seconds histogram\n# HELP price Business value of the answers (from sim.kubervisor.io/price).\n# TYPE price summary\n";

#[derive(Debug, Default)]
struct ServiceSim {
    rps: Option<f64>,
    owed: f64,
    cursor: usize,
    /// Ready endpoints as the Endpoints object lists them: pod names, in order.
    endpoints: Vec<String>,
    stats: ServiceStats,
}

#[derive(Default)]
struct WorkloadState {
    pods: HashMap<(String, String), PodSim>,
    services: BTreeMap<(String, String), ServiceSim>,
    sd_dirty: bool,
}

/// Shared handle on the simulated workload.
pub struct Workload {
    state: Mutex<WorkloadState>,
    default_rps: f64,
    metrics_addr: Mutex<Option<SocketAddr>>,
    sd_path: Option<std::path::PathBuf>,
}

fn parse_f64(annotations: Option<&Value>, key: &str) -> Option<f64> {
    annotations?
        .get(key)?
        .as_str()?
        .trim()
        .parse::<f64>()
        .ok()
        .filter(|v| v.is_finite())
}

impl Workload {
    pub fn new(default_rps: f64, sd_path: Option<std::path::PathBuf>) -> Self {
        Workload {
            state: Mutex::new(WorkloadState {
                sd_dirty: true,
                ..Default::default()
            }),
            default_rps,
            metrics_addr: Mutex::new(None),
            sd_path,
        }
    }

    fn lock(&self) -> MutexGuard<'_, WorkloadState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn service_stats(&self, namespace: &str, service: &str) -> Option<ServiceStats> {
        self.lock()
            .services
            .get(&(namespace.to_string(), service.to_string()))
            .map(|s| s.stats)
    }

    pub fn pod_stats(&self, namespace: &str, pod: &str) -> Option<PodStats> {
        self.lock()
            .pods
            .get(&(namespace.to_string(), pod.to_string()))
            .map(|p| p.stats.clone())
    }

    fn apply(&self, ev: &Event) {
        let pods = ResKey::new("", "pods");
        let services = ResKey::new("", "services");
        let endpoints = ResKey::new("", "endpoints");
        let key = (ev.namespace.clone(), ev.name.clone());
        let mut st = self.lock();
        if ev.key == pods {
            if ev.kind == EventType::Deleted {
                if st.pods.remove(&key).is_some_and(|p| p.running) {
                    st.sd_dirty = true;
                }
                return;
            }
            let obj = &ev.object;
            let uid = str_at(obj, "/metadata/uid").unwrap_or_default();
            let annotations = obj.pointer("/metadata/annotations");
            let running = str_at(obj, "/status/phase") == Some("Running");
            let labels = labels_of(obj);
            let entry = st.pods.entry(key.clone()).or_default();
            if entry.uid != uid {
                *entry = PodSim {
                    uid: uid.to_string(),
                    ..Default::default()
                };
            }
            let changed = entry.running != running || entry.labels != labels;
            entry.running = running;
            entry.labels = labels;
            entry.error_rate = parse_f64(annotations, ERROR_RATE_ANNOTATION)
                .unwrap_or(0.0)
                .clamp(0.0, 1.0);
            entry.latency_ms = parse_f64(annotations, LATENCY_ANNOTATION)
                .unwrap_or(DEFAULT_LATENCY_MS)
                .max(0.0);
            entry.price = parse_f64(annotations, PRICE_ANNOTATION);
            if changed {
                st.sd_dirty = true;
            }
        } else if ev.key == services {
            if ev.kind == EventType::Deleted {
                st.services.remove(&key);
                return;
            }
            let rps = parse_f64(ev.object.pointer("/metadata/annotations"), RPS_ANNOTATION)
                .map(|r| r.max(0.0));
            st.services.entry(key).or_default().rps = rps;
        } else if ev.key == endpoints {
            let mut ready = Vec::new();
            let mut all = Vec::new();
            if ev.kind != EventType::Deleted {
                for subset in ev
                    .object
                    .get("subsets")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    for (field, is_ready) in [("addresses", true), ("notReadyAddresses", false)] {
                        for a in subset
                            .get(field)
                            .and_then(Value::as_array)
                            .into_iter()
                            .flatten()
                        {
                            if let Some(name) = str_at(a, "/targetRef/name") {
                                all.push(name.to_string());
                                if is_ready {
                                    ready.push(name.to_string());
                                }
                            }
                        }
                    }
                }
            }
            for pod in all {
                if let Some(p) = st.pods.get_mut(&(ev.namespace.clone(), pod))
                    && p.services.insert(ev.name.clone())
                {
                    st.sd_dirty = true;
                }
            }
            if let Some(svc) = st.services.get_mut(&key) {
                svc.endpoints = ready;
            }
        }
    }

    /// Sends `rps × elapsed` requests per Service, round-robin over its ready endpoints.
    fn tick(&self, elapsed: Duration) {
        let mut guard = self.lock();
        let st = &mut *guard;
        let dt = elapsed.as_secs_f64();
        for ((ns, _), svc) in st.services.iter_mut() {
            if svc.endpoints.is_empty() {
                svc.owed = 0.0;
                continue;
            }
            svc.owed += svc.rps.unwrap_or(self.default_rps) * dt;
            let n = svc.owed.floor();
            svc.owed -= n;
            for _ in 0..n as u64 {
                let pod = &svc.endpoints[svc.cursor % svc.endpoints.len()];
                svc.cursor = svc.cursor.wrapping_add(1);
                let Some(p) = st.pods.get_mut(&(ns.clone(), pod.clone())) else {
                    continue;
                };
                let failed = p.serve();
                svc.stats.requests += 1;
                if failed {
                    svc.stats.errors += 1;
                }
            }
        }
    }

    fn pod_metrics(&self, ns: &str, name: &str) -> Option<String> {
        let st = self.lock();
        let p = st.pods.get(&(ns.to_string(), name.to_string()))?;
        let mut out = String::from(HEADER);
        p.render(&mut out, "");
        Some(out)
    }

    fn all_pod_metrics(&self) -> String {
        let st = self.lock();
        let mut out = String::from(HEADER);
        let mut keys: Vec<&(String, String)> = st.pods.keys().collect();
        keys.sort();
        for k in keys {
            let labels = format!("namespace=\"{}\",pod=\"{}\"", k.0, k.1);
            st.pods[k].render(&mut out, &labels);
        }
        out
    }

    fn service_metrics(&self) -> String {
        let st = self.lock();
        let mut out = String::from(
            "# HELP sim_service_requests_total Requests the load generator sent to the Service.\n# TYPE sim_service_requests_total counter\n",
        );
        for ((ns, name), s) in &st.services {
            let ok = s.stats.requests - s.stats.errors;
            let _ = writeln!(
                out,
                "sim_service_requests_total{{namespace=\"{ns}\",service=\"{name}\",code=\"200\"}} {ok}"
            );
            let _ = writeln!(
                out,
                "sim_service_requests_total{{namespace=\"{ns}\",service=\"{name}\",code=\"500\"}} {}",
                s.stats.errors
            );
        }
        out
    }

    /// The file_sd document, when pods changed since the last call.
    fn sd_document(&self) -> Option<Vec<u8>> {
        let addr = (*self.metrics_addr.lock().unwrap_or_else(|e| e.into_inner()))?;
        let mut st = self.lock();
        if !st.sd_dirty {
            return None;
        }
        st.sd_dirty = false;
        let mut keys: Vec<&(String, String)> = st
            .pods
            .iter()
            .filter(|(_, p)| p.running)
            .map(|(k, _)| k)
            .collect();
        keys.sort();
        let targets: Vec<Value> = keys
            .into_iter()
            .map(|k| {
                let p = &st.pods[k];
                let mut labels = serde_json::Map::new();
                for (lk, lv) in &p.labels {
                    labels.insert(sanitize_label(lk), json!(lv));
                }
                labels.insert("namespace".into(), json!(k.0));
                labels.insert("pod".into(), json!(k.1));
                if let Some(svc) = p.services.iter().next() {
                    labels.insert("service".into(), json!(svc));
                }
                labels.insert(
                    "__metrics_path__".into(),
                    json!(format!("/pods/{}/{}/metrics", k.0, k.1)),
                );
                json!({"targets": [addr.to_string()], "labels": labels})
            })
            .collect();
        serde_json::to_vec_pretty(&targets).ok()
    }
}

/// A Prometheus-valid label name: invalid characters become `_`, no leading digit.
pub fn sanitize_label(name: &str) -> String {
    let mut out: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if out.starts_with(|c: char| c.is_ascii_digit()) || out.is_empty() {
        out.insert(0, '_');
    }
    out
}

/// Applies store changes and runs the load generator and the SD writer until the channel closes.
pub async fn run(workload: Arc<Workload>, mut rx: UnboundedReceiver<Arc<Event>>, tick: Duration) {
    let mut ticker = tokio::time::interval(tick.max(Duration::from_millis(1)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = tokio::time::Instant::now();
    loop {
        tokio::select! {
            ev = rx.recv() => {
                let Some(ev) = ev else { return };
                workload.apply(&ev);
                while let Ok(ev) = rx.try_recv() {
                    workload.apply(&ev);
                }
            }
            _ = ticker.tick() => {
                let now = tokio::time::Instant::now();
                workload.tick(now - last);
                last = now;
                if let Some(path) = &workload.sd_path
                    && let Some(doc) = workload.sd_document()
                {
                    let path = path.clone();
                    let _ = tokio::task::spawn_blocking(move || {
                        if let Err(e) = write_atomically(&path, &doc) {
                            tracing::warn!(path = %path.display(), error = %e, "cannot write the Prometheus SD file");
                        }
                    })
                    .await;
                }
            }
        }
    }
}

fn write_atomically(path: &std::path::Path, data: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, data)?;
    std::fs::rename(&tmp, path)
}

pub fn metrics_router(workload: Arc<Workload>) -> Router {
    Router::new()
        .route("/pods/{ns}/{name}/metrics", axum::routing::get(pod_metrics))
        .route("/metrics", axum::routing::get(all_metrics))
        .route("/services/metrics", axum::routing::get(service_metrics))
        .with_state(workload)
}

fn text(body: String) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        body,
    )
        .into_response()
}

async fn pod_metrics(
    State(w): State<Arc<Workload>>,
    Path((ns, name)): Path<(String, String)>,
) -> Response {
    match w.pod_metrics(&ns, &name) {
        Some(body) => text(body),
        None => (StatusCode::NOT_FOUND, "no such pod\n").into_response(),
    }
}

async fn all_metrics(State(w): State<Arc<Workload>>) -> Response {
    text(w.all_pod_metrics())
}

async fn service_metrics(State(w): State<Arc<Workload>>) -> Response {
    text(w.service_metrics())
}

impl Workload {
    pub(crate) fn set_metrics_addr(&self, addr: SocketAddr) {
        *self.metrics_addr.lock().unwrap_or_else(|e| e.into_inner()) = Some(addr);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_debt_makes_the_error_share_exact() {
        let mut p = PodSim {
            error_rate: 0.8,
            latency_ms: 20.0,
            ..Default::default()
        };
        for _ in 0..10 {
            p.serve();
        }
        assert_eq!(p.stats.errors, 8);
        assert_eq!(p.stats.ok, 2);
        let mut q = PodSim {
            error_rate: 0.0,
            latency_ms: 20.0,
            price: Some(2.5),
            ..Default::default()
        };
        for _ in 0..5 {
            q.serve();
        }
        assert_eq!(q.stats.errors, 0);
        assert!((q.stats.latency_sum_seconds - 0.1).abs() < 1e-9);
        assert_eq!(q.stats.price_count, 5);
        assert!((q.stats.price_sum - 12.5).abs() < 1e-9);
    }

    #[test]
    fn label_names_are_sanitised_for_prometheus() {
        assert_eq!(sanitize_label("kubervisor/traffic"), "kubervisor_traffic");
        assert_eq!(
            sanitize_label("app.kubernetes.io/name"),
            "app_kubernetes_io_name"
        );
        assert_eq!(sanitize_label("1x"), "_1x");
    }
}
