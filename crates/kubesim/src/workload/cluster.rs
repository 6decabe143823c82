//! The workload as a client of any API server: kube-rs watches on Pods, Services and
//! EndpointSlices feed the same state machine the embedded workload uses.

use super::{PodStats, ServiceStats};
use super::{SERVICE_NAME_LABEL, WatchedKind, Workload, WorkloadEvent, serve_metrics};
use futures::stream::BoxStream;
use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::api::{ApiResource, DynamicObject};
use kube::runtime::{WatchStreamExt, watcher};
use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;

/// How to run the workload against an API server.
#[derive(Debug, Clone)]
pub struct WorkloadConfig {
    /// Watch this namespace only; `None` watches all of them.
    pub namespace: Option<String>,
    /// Where to serve every pod's metrics; must be a loopback address, port 0 picks a free one.
    pub metrics_addr: SocketAddr,
    /// Where to keep the Prometheus `file_sd_configs` document.
    pub prometheus_sd: Option<PathBuf>,
    /// Requests per second per Service without the `sim.kubervisor.io/rps` annotation.
    pub default_rps: f64,
    /// Period of the load generator.
    pub tick: Duration,
}

impl Default for WorkloadConfig {
    fn default() -> Self {
        WorkloadConfig {
            namespace: None,
            metrics_addr: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            prometheus_sd: None,
            default_rps: 50.0,
            tick: Duration::from_millis(100),
        }
    }
}

/// A running workload; dropping it stops it too.
pub struct WorkloadHandle {
    workload: Arc<Workload>,
    metrics_addr: SocketAddr,
    shutdown: tokio::sync::watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl WorkloadHandle {
    /// The metrics listener (`/pods/NS/NAME/metrics`, `/metrics`, `/services/metrics`).
    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics_addr
    }

    /// Cumulative requests and errors the load generator sent to a Service.
    pub fn service_stats(&self, namespace: &str, service: &str) -> Option<ServiceStats> {
        self.workload.service_stats(namespace, service)
    }

    /// Cumulative counts of one simulated pod.
    pub fn pod_stats(&self, namespace: &str, pod: &str) -> Option<PodStats> {
        self.workload.pod_stats(namespace, pod)
    }

    /// Stops the watches, the load generator and the metrics listener.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        for t in std::mem::take(&mut self.tasks) {
            t.abort();
            let _ = t.await;
        }
    }
}

impl Drop for WorkloadHandle {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Starts the simulated workload against the API server `client` talks to (kubesim over
/// HTTP or a real kube-apiserver): watches Pods, Services and EndpointSlices, generates
/// load on each Service's ready endpoints, serves every pod's metrics on one loopback
/// listener and keeps the Prometheus SD document up to date.
pub async fn start_against(
    client: kube::Client,
    config: WorkloadConfig,
) -> anyhow::Result<WorkloadHandle> {
    if !config.metrics_addr.ip().is_loopback() {
        anyhow::bail!(
            "the workload's metrics address must be on loopback, not {}",
            config.metrics_addr
        );
    }
    if !(config.default_rps.is_finite() && config.default_rps >= 0.0) {
        anyhow::bail!(
            "the default request rate must be a non-negative number, not {}",
            config.default_rps
        );
    }
    let listener = tokio::net::TcpListener::bind(config.metrics_addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.metrics_addr))?;
    let metrics_addr = listener.local_addr()?;
    let workload = Arc::new(Workload::new(config.default_rps, config.prometheus_sd));
    workload.set_metrics_addr(metrics_addr);
    let (shutdown, shutdown_rx) = tokio::sync::watch::channel(false);
    let feed = cluster_feed(client, config.namespace.as_deref());
    let tasks = vec![
        tokio::spawn(super::run(workload.clone(), feed, config.tick)),
        tokio::spawn(serve_metrics(listener, workload.clone(), shutdown_rx)),
    ];
    tracing::info!(metrics = %metrics_addr, namespace = config.namespace.as_deref().unwrap_or("(all)"), "simulated workload started");
    Ok(WorkloadHandle {
        workload,
        metrics_addr,
        shutdown,
        tasks,
    })
}

/// One merged stream of the three watches, as workload events.
pub(crate) fn cluster_feed(
    client: kube::Client,
    namespace: Option<&str>,
) -> impl Stream<Item = WorkloadEvent> + Send + Unpin + 'static {
    futures::stream::select_all([
        watch_kind(
            client.clone(),
            namespace,
            WatchedKind::Pod,
            ApiResource::erase::<Pod>(&()),
            watcher::Config::default(),
        ),
        watch_kind(
            client.clone(),
            namespace,
            WatchedKind::Service,
            ApiResource::erase::<Service>(&()),
            watcher::Config::default(),
        ),
        watch_kind(
            client,
            namespace,
            WatchedKind::EndpointSlice,
            ApiResource::erase::<EndpointSlice>(&()),
            watcher::Config::default().labels(SERVICE_NAME_LABEL),
        ),
    ])
}

fn watch_kind(
    client: kube::Client,
    namespace: Option<&str>,
    kind: WatchedKind,
    resource: ApiResource,
    config: watcher::Config,
) -> BoxStream<'static, WorkloadEvent> {
    let api: Api<DynamicObject> = match namespace {
        Some(ns) => Api::namespaced_with(client, ns, &resource),
        None => Api::all_with(client, &resource),
    };
    let mut listed = BTreeSet::new();
    watcher(api, config)
        .default_backoff()
        .map(move |event| {
            let value = |obj: DynamicObject| match serde_json::to_value(obj) {
                Ok(v) => Some(Arc::new(v)),
                Err(e) => {
                    tracing::warn!(?kind, error = %e, "cannot read a watched object");
                    None
                }
            };
            let out = match event {
                Ok(watcher::Event::Apply(obj)) => {
                    value(obj).map(|v| WorkloadEvent::Applied(kind, v))
                }
                Ok(watcher::Event::Delete(obj)) => {
                    value(obj).map(|v| WorkloadEvent::Deleted(kind, v))
                }
                Ok(watcher::Event::Init) => {
                    listed.clear();
                    None
                }
                Ok(watcher::Event::InitApply(obj)) => value(obj).map(|v| {
                    listed.insert(super::key_of(&v));
                    WorkloadEvent::Applied(kind, v)
                }),
                Ok(watcher::Event::InitDone) => {
                    Some(WorkloadEvent::Listed(kind, std::mem::take(&mut listed)))
                }
                Err(e) => {
                    tracing::warn!(?kind, error = %e, "workload watch failed; retrying");
                    None
                }
            };
            futures::stream::iter(out)
        })
        .flatten()
        .boxed()
}
