//! The simulated workload: a load generator per Service, per-pod answers and metrics,
//! and the Prometheus file service-discovery document.
//!
//! One state machine, [`Workload`], is fed [`WorkloadEvent`]s from either source: the
//! in-process store of a [`crate::Sim`] ([`store_feed`]) or watches on any API server
//! ([`start_against`]). Nothing here opens a connection to a pod: the load generator
//! only moves counters, so pod IPs are informative and no traffic leaves the process.

mod cluster;

pub use cluster::{WorkloadConfig, WorkloadHandle, start_against};

use crate::resources::ResKey;
use crate::store::{Event, EventType};
use crate::util::{labels_of, name_of, namespace_of, str_at};
use axum::Router;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::{FutureExt, Stream, StreamExt};
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
/// Pod annotation: milliseconds added to the mean latency per minute since the workload
/// first saw the annotation (or a new value of it) on the pod; may be negative.
pub const LATENCY_RAMP_ANNOTATION: &str = "sim.kubervisor.io/latency-ms-per-minute";
/// Pod annotation: business value observed into the `price` summary per request.
pub const PRICE_ANNOTATION: &str = "sim.kubervisor.io/price";
/// EndpointSlice label naming the Service a slice belongs to.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

const DEFAULT_LATENCY_MS: f64 = 20.0;
/// Histogram buckets in seconds: 1, 1.5, 2, 2.5, 3, 4, 5, 7.5 per decade. Neighbours
/// differ by at most 1.5×, so the bucket holding a pod's mean lies inside the spread of
/// its observations and `histogram_quantile(0.5, …)` recovers the mean.
const BUCKETS: [f64; 33] = [
    0.001, 0.0015, 0.002, 0.0025, 0.003, 0.004, 0.005, 0.0075, //
    0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.075, //
    0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.75, //
    1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 7.5, //
    10.0,
];
/// Observations are `mean × (0.5 + u)` with `u` the Weyl sequence `frac(0.5 + k/φ)`:
/// evenly spread over [0.5, 1.5) × mean in any window, deterministic, mean 1.
const INVERSE_GOLDEN_RATIO: f64 = 0.618_033_988_749_894_9;

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

/// The kinds the workload follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum WatchedKind {
    Pod,
    Service,
    /// `discovery.k8s.io/v1`, labelled with [`SERVICE_NAME_LABEL`]: what a real cluster's
    /// endpoint-slice controller writes, and what kubesim writes next to its Endpoints.
    EndpointSlice,
}

/// One change, whatever its source (the in-process store or a watch on an API server).
#[derive(Debug, Clone)]
pub enum WorkloadEvent {
    /// The object was created or changed.
    Applied(WatchedKind, Arc<Value>),
    /// The object is gone; the value is its last known state.
    Deleted(WatchedKind, Arc<Value>),
    /// A complete list of `kind` ended (a watch started or restarted): known objects of that
    /// kind missing from these `(namespace, name)` keys were deleted meanwhile.
    Listed(WatchedKind, BTreeSet<(String, String)>),
}

type Key = (String, String);

fn key_of(obj: &Value) -> Key {
    (namespace_of(obj).to_string(), name_of(obj).to_string())
}

/// Annotation values that failed to parse, remembered so each bad value is logged once.
#[derive(Debug, Default)]
struct Complaints(BTreeMap<&'static str, String>);

impl Complaints {
    /// The annotation as a number: `None` when absent; a bad value is logged and ignored,
    /// one outside `min..=max` is logged and clamped.
    fn number(
        &mut self,
        obj: &Value,
        annotation: &'static str,
        min: f64,
        max: f64,
        fallback: &str,
    ) -> Option<f64> {
        let raw = obj
            .pointer("/metadata/annotations")
            .and_then(|a| a.get(annotation));
        let Some(raw) = raw else {
            self.0.remove(annotation);
            return None;
        };
        let text = raw
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| raw.to_string());
        let parsed = text.trim().parse::<f64>().ok().filter(|v| v.is_finite());
        let problem = match parsed {
            None => Some(format!("not a number; using {fallback}")),
            Some(v) if v < min => Some(format!("below {min}; using {min}")),
            Some(v) if v > max => Some(format!("above {max}; using {max}")),
            Some(_) => None,
        };
        match problem {
            Some(problem) => {
                if self.0.get(annotation) != Some(&text) {
                    let (ns, name) = key_of(obj);
                    tracing::warn!(
                        object = %format!("{ns}/{name}"), annotation, value = %text,
                        "ignoring a bad simulation annotation: {problem}"
                    );
                    self.0.insert(annotation, text);
                }
            }
            None => {
                self.0.remove(annotation);
            }
        }
        parsed.map(|v| v.clamp(min, max))
    }
}

/// Cumulative histogram counts, one per entry of [`BUCKETS`].
#[derive(Debug)]
struct Buckets([u64; BUCKETS.len()]);

impl Default for Buckets {
    fn default() -> Self {
        Buckets([0; BUCKETS.len()])
    }
}

#[derive(Debug, Default)]
struct PodSim {
    uid: String,
    labels: BTreeMap<String, String>,
    running: bool,
    error_rate: f64,
    latency_ms: f64,
    /// Mean latency growth, ms per minute, from `ramp_start` (workload clock, seconds).
    latency_ramp: f64,
    ramp_start: f64,
    price: Option<f64>,
    /// Fractional errors owed: makes the error share exact over any window.
    error_debt: f64,
    observations: u64,
    stats: PodStats,
    buckets: Buckets,
    /// Services this pod has been an endpoint of; sticky so relabelled pods keep their series.
    services: BTreeSet<String>,
    complaints: Complaints,
}

impl PodSim {
    /// Mean latency in ms at workload time `now` (seconds).
    fn mean_latency_ms(&self, now: f64) -> f64 {
        let minutes = (now - self.ramp_start).max(0.0) / 60.0;
        (self.latency_ms + self.latency_ramp * minutes).max(0.0)
    }

    fn serve(&mut self, now: f64) -> bool {
        self.error_debt += self.error_rate;
        let failed = self.error_debt >= 1.0 - 1e-9;
        if failed {
            self.error_debt -= 1.0;
            self.stats.errors += 1;
        } else {
            self.stats.ok += 1;
        }
        let u = (0.5 + self.observations as f64 * INVERSE_GOLDEN_RATIO).fract();
        self.observations += 1;
        let seconds = self.mean_latency_ms(now) * (0.5 + u) / 1000.0;
        self.stats.latency_sum_seconds += seconds;
        for (i, le) in BUCKETS.iter().enumerate() {
            if seconds <= *le {
                self.buckets.0[i] += 1;
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
                self.buckets.0[i]
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
    /// Ready endpoints as the Service's EndpointSlices list them: pod names, in order.
    endpoints: Vec<String>,
    stats: ServiceStats,
    complaints: Complaints,
}

/// One endpoint of an EndpointSlice that points at a pod.
#[derive(Debug, Clone, PartialEq)]
struct SliceEndpoint {
    pod: String,
    ready: bool,
    terminating: bool,
}

#[derive(Debug)]
struct SliceSim {
    service: String,
    endpoints: Vec<SliceEndpoint>,
}

#[derive(Default)]
struct WorkloadState {
    pods: HashMap<Key, PodSim>,
    services: BTreeMap<Key, ServiceSim>,
    /// EndpointSlices by (namespace, slice name), kept apart from Services because a
    /// watch may deliver a slice before its Service.
    slices: BTreeMap<Key, SliceSim>,
    /// The slices of each Service: (namespace, Service) → slice names. A Service's
    /// endpoints are recomputed on every change of one of its slices; scanning every
    /// slice of the namespace instead made a fleet of 10,000 Services quadratic.
    slices_of: HashMap<Key, BTreeSet<String>>,
    /// Which slices list a pod (not terminating): (namespace, pod) → slice name → Service.
    members: HashMap<Key, BTreeMap<String, String>>,
    sd_dirty: bool,
    /// Simulated time in seconds: the sum of the load generator's ticks.
    clock: f64,
}

impl WorkloadState {
    fn apply_pod(&mut self, obj: &Value) {
        let key = key_of(obj);
        let now = self.clock;
        let uid = str_at(obj, "/metadata/uid").unwrap_or_default();
        let running = str_at(obj, "/status/phase") == Some("Running");
        let labels = labels_of(obj);
        let known = self.pods.get(&key).is_some_and(|p| p.uid == uid);
        let entry = self.pods.entry(key.clone()).or_default();
        if !known {
            // New (or recreated under the same name): slices seen before the pod, through
            // a separate watch, still count.
            *entry = PodSim {
                uid: uid.to_string(),
                services: self
                    .members
                    .get(&key)
                    .map(|m| m.values().cloned().collect())
                    .unwrap_or_default(),
                ..Default::default()
            };
            self.sd_dirty = true;
        }
        let changed = entry.running != running || entry.labels != labels;
        entry.running = running;
        entry.labels = labels;
        let c = &mut entry.complaints;
        entry.error_rate = c
            .number(obj, ERROR_RATE_ANNOTATION, 0.0, 1.0, "0")
            .unwrap_or(0.0);
        entry.latency_ms = c
            .number(obj, LATENCY_ANNOTATION, 0.0, f64::MAX, "20")
            .unwrap_or(DEFAULT_LATENCY_MS);
        let ramp = c
            .number(obj, LATENCY_RAMP_ANNOTATION, f64::MIN, f64::MAX, "0")
            .unwrap_or(0.0);
        if ramp != entry.latency_ramp {
            entry.latency_ramp = ramp;
            entry.ramp_start = now;
        }
        entry.price = c.number(obj, PRICE_ANNOTATION, f64::MIN, f64::MAX, "no price");
        if changed {
            self.sd_dirty = true;
        }
    }

    fn delete_pod(&mut self, key: &Key) {
        if self.pods.remove(key).is_some_and(|p| p.running) {
            self.sd_dirty = true;
        }
    }

    fn apply_service(&mut self, obj: &Value) {
        let key = key_of(obj);
        let svc = self.services.entry(key.clone()).or_default();
        svc.rps = svc
            .complaints
            .number(obj, RPS_ANNOTATION, 0.0, f64::MAX, "the default rate");
        self.refresh_endpoints(&key);
    }

    fn apply_slice(&mut self, obj: &Value) {
        let key = key_of(obj);
        let Some(service) = str_at(
            obj,
            &format!("/metadata/labels/{}", SERVICE_NAME_LABEL.replace('/', "~1")),
        ) else {
            tracing::debug!(slice = %format!("{}/{}", key.0, key.1), "EndpointSlice without {SERVICE_NAME_LABEL}: ignored");
            return;
        };
        let mut endpoints = Vec::new();
        for e in obj
            .get("endpoints")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if str_at(e, "/targetRef/kind").is_some_and(|k| k != "Pod") {
                continue;
            }
            let Some(pod) = str_at(e, "/targetRef/name") else {
                continue;
            };
            // Unset conditions mean ready and not terminating (discovery.k8s.io/v1).
            let flag = |name: &str, unset: bool| {
                e.pointer(&format!("/conditions/{name}"))
                    .and_then(Value::as_bool)
                    .unwrap_or(unset)
            };
            endpoints.push(SliceEndpoint {
                pod: pod.to_string(),
                ready: flag("ready", true),
                terminating: flag("terminating", false),
            });
        }
        for e in endpoints.iter().filter(|e| !e.terminating) {
            if let Some(p) = self.pods.get_mut(&(key.0.clone(), e.pod.clone()))
                && p.services.insert(service.to_string())
            {
                self.sd_dirty = true;
            }
        }
        let slice = SliceSim {
            service: service.to_string(),
            endpoints,
        };
        for e in slice.endpoints.iter().filter(|e| !e.terminating) {
            self.members
                .entry((key.0.clone(), e.pod.clone()))
                .or_default()
                .insert(key.1.clone(), slice.service.clone());
        }
        let service = slice.service.clone();
        self.slices_of
            .entry((key.0.clone(), service.clone()))
            .or_default()
            .insert(key.1.clone());
        if let Some(old) = self.slices.insert(key.clone(), slice) {
            self.forget_members(&key, &old);
            if old.service != service {
                self.unfile_slice(&key, &old.service);
                self.refresh_endpoints(&(key.0.clone(), old.service));
            }
        }
        self.refresh_endpoints(&(key.0, service));
    }

    /// Drops an old version of a slice from `members`, keeping what its new version lists.
    fn forget_members(&mut self, key: &Key, old: &SliceSim) {
        let current = self.slices.get(key);
        for e in &old.endpoints {
            let still = current
                .is_some_and(|s| s.endpoints.iter().any(|n| n.pod == e.pod && !n.terminating));
            if still {
                continue;
            }
            let pod = (key.0.clone(), e.pod.clone());
            if let Some(m) = self.members.get_mut(&pod) {
                m.remove(&key.1);
                if m.is_empty() {
                    self.members.remove(&pod);
                }
            }
        }
    }

    fn unfile_slice(&mut self, key: &Key, service: &str) {
        let of = (key.0.clone(), service.to_string());
        if let Some(names) = self.slices_of.get_mut(&of) {
            names.remove(&key.1);
            if names.is_empty() {
                self.slices_of.remove(&of);
            }
        }
    }

    fn delete_slice(&mut self, key: &Key) {
        if let Some(old) = self.slices.remove(key) {
            self.unfile_slice(key, &old.service);
            self.forget_members(key, &old);
            self.refresh_endpoints(&(key.0.clone(), old.service));
        }
    }

    /// Recomputes a Service's ready endpoints from its slices, in slice-name order.
    fn refresh_endpoints(&mut self, service: &Key) {
        let Some(svc) = self.services.get_mut(service) else {
            return;
        };
        let ns = &service.0;
        let slices = &self.slices;
        svc.endpoints = self
            .slices_of
            .get(service)
            .into_iter()
            .flatten()
            .filter_map(|name| slices.get(&(ns.clone(), name.clone())))
            .flat_map(|s| s.endpoints.iter())
            .filter(|e| e.ready && !e.terminating)
            .map(|e| e.pod.clone())
            .collect();
    }

    fn apply(&mut self, ev: &WorkloadEvent) {
        match ev {
            WorkloadEvent::Applied(WatchedKind::Pod, obj) => self.apply_pod(obj),
            WorkloadEvent::Applied(WatchedKind::Service, obj) => self.apply_service(obj),
            WorkloadEvent::Applied(WatchedKind::EndpointSlice, obj) => self.apply_slice(obj),
            WorkloadEvent::Deleted(kind, obj) => self.delete(*kind, &key_of(obj)),
            WorkloadEvent::Listed(kind, present) => {
                let gone: Vec<Key> = match kind {
                    WatchedKind::Pod => self.pods.keys().cloned().collect(),
                    WatchedKind::Service => self.services.keys().cloned().collect(),
                    WatchedKind::EndpointSlice => self.slices.keys().cloned().collect(),
                };
                for key in gone.into_iter().filter(|k| !present.contains(k)) {
                    self.delete(*kind, &key);
                }
            }
        }
    }

    fn delete(&mut self, kind: WatchedKind, key: &Key) {
        match kind {
            WatchedKind::Pod => self.delete_pod(key),
            WatchedKind::Service => {
                self.services.remove(key);
            }
            WatchedKind::EndpointSlice => self.delete_slice(key),
        }
    }

    /// Sends `rps × elapsed` requests per Service, round-robin over its ready endpoints.
    fn tick(&mut self, elapsed: Duration, default_rps: f64) {
        let dt = elapsed.as_secs_f64();
        self.clock += dt;
        let now = self.clock;
        for ((ns, _), svc) in self.services.iter_mut() {
            if svc.endpoints.is_empty() {
                svc.owed = 0.0;
                continue;
            }
            svc.owed += svc.rps.unwrap_or(default_rps) * dt;
            let n = svc.owed.floor();
            svc.owed -= n;
            for _ in 0..n as u64 {
                let pod = &svc.endpoints[svc.cursor % svc.endpoints.len()];
                svc.cursor = svc.cursor.wrapping_add(1);
                let Some(p) = self.pods.get_mut(&(ns.clone(), pod.clone())) else {
                    continue;
                };
                let failed = p.serve(now);
                svc.stats.requests += 1;
                if failed {
                    svc.stats.errors += 1;
                }
            }
        }
    }
}

/// Shared handle on the simulated workload.
pub struct Workload {
    state: Mutex<WorkloadState>,
    default_rps: f64,
    metrics_addr: Mutex<Option<SocketAddr>>,
    sd_path: Option<std::path::PathBuf>,
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

    /// Applies one change to the state machine.
    pub fn apply(&self, ev: &WorkloadEvent) {
        self.lock().apply(ev);
    }

    /// Advances simulated time: sends the requests due in `elapsed`.
    pub fn tick(&self, elapsed: Duration) {
        self.lock().tick(elapsed, self.default_rps);
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

/// The changes of a [`crate::Sim`]'s own store, as workload events: no HTTP, no watch
/// delays, so the embedded workload sees every change in commit order.
pub fn store_feed(
    rx: UnboundedReceiver<Arc<Event>>,
) -> impl Stream<Item = WorkloadEvent> + Send + Unpin + 'static {
    let pods = ResKey::new("", "pods");
    let services = ResKey::new("", "services");
    let slices = ResKey::new("discovery.k8s.io", "endpointslices");
    futures::stream::unfold(
        rx,
        |mut rx| async move { rx.recv().await.map(|ev| (ev, rx)) },
    )
    .filter_map(move |ev| {
        let kind = if ev.key == pods {
            Some(WatchedKind::Pod)
        } else if ev.key == services {
            Some(WatchedKind::Service)
        } else if ev.key == slices {
            Some(WatchedKind::EndpointSlice)
        } else {
            None
        };
        let out = kind.map(|kind| match ev.kind {
            EventType::Deleted => WorkloadEvent::Deleted(kind, ev.object.clone()),
            EventType::Added | EventType::Modified => {
                WorkloadEvent::Applied(kind, ev.object.clone())
            }
        });
        futures::future::ready(out)
    })
    .boxed()
}

/// Applies changes from `feed` and runs the load generator and the SD writer, until the
/// feed ends.
pub async fn run<S>(workload: Arc<Workload>, feed: S, tick: Duration)
where
    S: Stream<Item = WorkloadEvent> + Unpin,
{
    let mut feed = feed.fuse();
    let mut ticker = tokio::time::interval(tick.max(Duration::from_millis(1)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = tokio::time::Instant::now();
    loop {
        tokio::select! {
            ev = feed.next() => {
                let Some(ev) = ev else { return };
                let mut st = workload.lock();
                st.apply(&ev);
                // Apply what is already queued under one lock.
                while let Some(Some(ev)) = feed.next().now_or_never() {
                    st.apply(&ev);
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

/// Serves [`metrics_router`] on `listener` until `shutdown` turns true.
pub async fn serve_metrics(
    listener: tokio::net::TcpListener,
    workload: Arc<Workload>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let serve =
        axum::serve(listener, metrics_router(workload)).with_graceful_shutdown(async move {
            let _ = shutdown.wait_for(|s| *s).await;
        });
    if let Err(e) = serve.await {
        tracing::warn!(error = %e, "the workload's metrics listener stopped");
    }
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

    fn pod(name: &str, uid: &str, annotations: Value) -> Arc<Value> {
        Arc::new(json!({
            "metadata": {"namespace": "ns", "name": name, "uid": uid,
                "labels": {"app": "shop"}, "annotations": annotations},
            "status": {"phase": "Running"},
        }))
    }

    fn service(name: &str, annotations: Value) -> Arc<Value> {
        Arc::new(json!({"metadata": {"namespace": "ns", "name": name, "annotations": annotations}}))
    }

    fn slice(name: &str, service: &str, endpoints: &[(&str, bool)]) -> Arc<Value> {
        let endpoints: Vec<Value> = endpoints
            .iter()
            .map(|(pod, ready)| {
                json!({"addresses": ["127.80.0.1"], "conditions": {"ready": ready},
                    "targetRef": {"kind": "Pod", "namespace": "ns", "name": pod}})
            })
            .collect();
        Arc::new(json!({
            "metadata": {"namespace": "ns", "name": name,
                "labels": {"kubernetes.io/service-name": service}},
            "endpoints": endpoints,
        }))
    }

    fn applied(kind: WatchedKind, obj: Arc<Value>) -> WorkloadEvent {
        WorkloadEvent::Applied(kind, obj)
    }

    /// Prometheus' `histogram_quantile`: linear interpolation inside the bucket.
    fn histogram_quantile(q: f64, p: &PodSim) -> f64 {
        let total = p.stats.ok + p.stats.errors;
        let rank = q * total as f64;
        let mut lower = (0.0, 0u64);
        for (le, count) in BUCKETS.iter().zip(p.buckets.0) {
            if count as f64 >= rank {
                let share = (rank - lower.1 as f64) / (count - lower.1) as f64;
                return lower.0 + (le - lower.0) * share;
            }
            lower = (*le, count);
        }
        f64::INFINITY
    }

    #[test]
    fn error_debt_makes_the_error_share_exact() {
        let mut p = PodSim {
            error_rate: 0.8,
            latency_ms: 20.0,
            ..Default::default()
        };
        for _ in 0..10 {
            p.serve(0.0);
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
            q.serve(0.0);
        }
        assert_eq!(q.stats.errors, 0);
        assert_eq!(q.stats.price_count, 5);
        assert!((q.stats.price_sum - 12.5).abs() < 1e-9);
    }

    #[test]
    fn latency_spreads_around_the_mean_so_quantiles_recover_it() {
        for mean_ms in [3.0, 20.0, 180.0, 1200.0] {
            let mut p = PodSim {
                latency_ms: mean_ms,
                ..Default::default()
            };
            for _ in 0..1000 {
                p.serve(0.0);
            }
            let mean = mean_ms / 1000.0;
            let avg = p.stats.latency_sum_seconds / 1000.0;
            assert!(
                (avg / mean - 1.0).abs() < 0.01,
                "{mean_ms} ms: average {avg}"
            );
            let p50 = histogram_quantile(0.5, &p);
            assert!((p50 / mean - 1.0).abs() < 0.02, "{mean_ms} ms: p50 {p50}");
            // Uniform over [0.5, 1.5) × mean: p10 is 0.6 × mean and p90 1.4 × mean, but the
            // buckets at the spread's edges reach past it, so these are exact to a bucket.
            let p10 = histogram_quantile(0.1, &p) / mean;
            let p90 = histogram_quantile(0.9, &p) / mean;
            assert!(
                (0.45..=0.75).contains(&p10),
                "{mean_ms} ms: p10 {p10} × mean"
            );
            assert!(
                (1.25..=1.55).contains(&p90),
                "{mean_ms} ms: p90 {p90} × mean"
            );
        }
    }

    #[test]
    fn latency_ramps_linearly_from_when_the_annotation_is_seen() {
        let mut st = WorkloadState::default();
        st.tick(Duration::from_secs(10), 0.0);
        st.apply(&applied(
            WatchedKind::Pod,
            pod("a", "u1", json!({"sim.kubervisor.io/latency-ms": "20", "sim.kubervisor.io/latency-ms-per-minute": "60"})),
        ));
        let key = ("ns".to_string(), "a".to_string());
        assert_eq!(st.pods[&key].mean_latency_ms(st.clock), 20.0);
        st.tick(Duration::from_secs(30), 0.0);
        assert!((st.pods[&key].mean_latency_ms(st.clock) - 50.0).abs() < 1e-9);
        // An unrelated change keeps the ramp going.
        st.apply(&applied(
            WatchedKind::Pod,
            pod("a", "u1", json!({"sim.kubervisor.io/latency-ms": "20", "sim.kubervisor.io/latency-ms-per-minute": "60", "x": "y"})),
        ));
        st.tick(Duration::from_secs(30), 0.0);
        assert!((st.pods[&key].mean_latency_ms(st.clock) - 80.0).abs() < 1e-9);
        // A new slope starts again from latency-ms; a falling ramp stops at zero.
        st.apply(&applied(
            WatchedKind::Pod,
            pod("a", "u1", json!({"sim.kubervisor.io/latency-ms": "20", "sim.kubervisor.io/latency-ms-per-minute": "-10"})),
        ));
        assert_eq!(st.pods[&key].mean_latency_ms(st.clock), 20.0);
        st.tick(Duration::from_secs(600), 0.0);
        assert_eq!(st.pods[&key].mean_latency_ms(st.clock), 0.0);
    }

    #[test]
    fn bad_annotations_fall_back_to_defaults_or_clamp() {
        let mut st = WorkloadState::default();
        st.apply(&applied(
            WatchedKind::Pod,
            pod(
                "a",
                "u1",
                json!({
                    "sim.kubervisor.io/error-rate": "lots",
                    "sim.kubervisor.io/latency-ms": "-5",
                    "sim.kubervisor.io/latency-ms-per-minute": "NaN",
                    "sim.kubervisor.io/price": "",
                }),
            ),
        ));
        st.apply(&applied(
            WatchedKind::Pod,
            pod("b", "u2", json!({"sim.kubervisor.io/error-rate": "1.5"})),
        ));
        st.apply(&applied(
            WatchedKind::Service,
            service("s", json!({"sim.kubervisor.io/rps": "fast"})),
        ));
        let a = &st.pods[&("ns".to_string(), "a".to_string())];
        assert_eq!(
            (a.error_rate, a.latency_ms, a.latency_ramp, a.price),
            (0.0, 0.0, 0.0, None)
        );
        assert_eq!(
            st.pods[&("ns".to_string(), "b".to_string())].error_rate,
            1.0
        );
        assert_eq!(st.services[&("ns".to_string(), "s".to_string())].rps, None);
        // Pods without annotations get the documented defaults.
        st.apply(&applied(WatchedKind::Pod, pod("c", "u3", json!(null))));
        let c = &st.pods[&("ns".to_string(), "c".to_string())];
        assert_eq!(
            (c.error_rate, c.latency_ms, c.price),
            (0.0, DEFAULT_LATENCY_MS, None)
        );
    }

    #[test]
    fn slices_before_pods_ready_endpoints_only_and_relists_forget_the_missing() {
        let workload = Workload::new(100.0, None);
        workload.set_metrics_addr(SocketAddr::from(([127, 0, 0, 1], 9)));
        // A watch on slices may run ahead of the one on pods.
        workload.apply(&applied(
            WatchedKind::EndpointSlice,
            slice("shop-abc", "shop", &[("a", true), ("b", false)]),
        ));
        workload.apply(&applied(WatchedKind::Service, service("shop", json!({}))));
        workload.apply(&applied(WatchedKind::Pod, pod("a", "u1", json!({}))));
        workload.apply(&applied(WatchedKind::Pod, pod("b", "u2", json!({}))));
        workload.tick(Duration::from_secs(1));
        assert_eq!(workload.service_stats("ns", "shop").unwrap().requests, 100);
        assert_eq!(workload.pod_stats("ns", "a").unwrap().ok, 100);
        assert_eq!(workload.pod_stats("ns", "b").unwrap().ok, 0);
        let doc: Value = serde_json::from_slice(&workload.sd_document().unwrap()).unwrap();
        let pods: Vec<(&str, &str)> = doc
            .as_array()
            .unwrap()
            .iter()
            .map(|t| {
                (
                    t["labels"]["pod"].as_str().unwrap(),
                    t["labels"]["service"].as_str().unwrap(),
                )
            })
            .collect();
        assert_eq!(pods, [("a", "shop"), ("b", "shop")]);

        // A second slice of the same Service adds its endpoints after the first's.
        workload.apply(&applied(
            WatchedKind::EndpointSlice,
            slice("shop-def", "shop", &[("b", true)]),
        ));
        workload.tick(Duration::from_secs(1));
        assert_eq!(workload.pod_stats("ns", "b").unwrap().ok, 50);

        // A relist without pod b (deleted while the watch was down) forgets it.
        workload.apply(&WorkloadEvent::Listed(
            WatchedKind::Pod,
            [("ns".to_string(), "a".to_string())].into(),
        ));
        assert_eq!(workload.pod_stats("ns", "b"), None);
        let doc: Value = serde_json::from_slice(&workload.sd_document().unwrap()).unwrap();
        assert_eq!(doc.as_array().unwrap().len(), 1);

        // Without slices the Service gets no traffic.
        workload.apply(&WorkloadEvent::Listed(
            WatchedKind::EndpointSlice,
            BTreeSet::new(),
        ));
        let before = workload.service_stats("ns", "shop").unwrap();
        workload.tick(Duration::from_secs(1));
        assert_eq!(workload.service_stats("ns", "shop").unwrap(), before);
    }

    #[test]
    fn a_slice_relabelled_to_another_service_or_deleted_moves_its_traffic() {
        let workload = Workload::new(100.0, None);
        workload.set_metrics_addr(SocketAddr::from(([127, 0, 0, 1], 9)));
        for name in ["shop", "cart"] {
            workload.apply(&applied(WatchedKind::Service, service(name, json!({}))));
        }
        workload.apply(&applied(WatchedKind::Pod, pod("a", "u1", json!({}))));
        let requests = |svc: &str| workload.service_stats("ns", svc).unwrap().requests;
        workload.apply(&applied(
            WatchedKind::EndpointSlice,
            slice("s-1", "shop", &[("a", true)]),
        ));
        workload.tick(Duration::from_secs(1));
        assert_eq!((requests("shop"), requests("cart")), (100, 0));
        // The same slice now names the other Service: the first one has no endpoint left.
        workload.apply(&applied(
            WatchedKind::EndpointSlice,
            slice("s-1", "cart", &[("a", true)]),
        ));
        workload.tick(Duration::from_secs(1));
        assert_eq!((requests("shop"), requests("cart")), (100, 100));
        workload.apply(&WorkloadEvent::Deleted(
            WatchedKind::EndpointSlice,
            slice("s-1", "cart", &[]),
        ));
        workload.tick(Duration::from_secs(1));
        assert_eq!((requests("shop"), requests("cart")), (100, 100));
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
