//! kubesim: an in-process Kubernetes API emulator with built-in controllers and a simulated
//! workload, for Kubervisor's tests, demo and benchmarks. See the crate README.

pub mod controllers;
pub mod error;
mod eviction;
pub mod faults;
pub mod patch;
pub mod protobuf;
pub mod requests;
pub mod resources;
mod scale;
pub mod selector;
mod server;
pub mod store;
mod table;
pub mod testing;
mod util;
pub mod views;
pub mod workload;

pub use error::ApiError;
pub use faults::Faults;
pub use store::Store;
pub use workload::{PodStats, ServiceStats};

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;

/// How to run a simulated cluster.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// API port on 127.0.0.1; 0 picks a free one.
    pub port: u16,
    /// Time from a pod starting to it becoming Ready.
    pub ready_delay: Duration,
    /// Where to keep a Prometheus `file_sd_configs` document up to date.
    pub prometheus_sd: Option<PathBuf>,
    /// Requests per second per Service without the `sim.kubervisor.io/rps` annotation.
    pub default_rps: f64,
    /// Period of the load generator.
    pub workload_tick: Duration,
    /// Events kept for watches to resume from; older versions get 410 Gone.
    pub event_log_capacity: usize,
    /// How long the namespace controller waits after a change of a namespace being
    /// deleted before it acts (5 s upstream, so that no API server still admits content).
    pub namespace_deletion_delay: Duration,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            port: 0,
            ready_delay: Duration::from_millis(500),
            prometheus_sd: None,
            default_rps: 50.0,
            workload_tick: Duration::from_millis(100),
            event_log_capacity: 200_000,
            namespace_deletion_delay: Duration::from_secs(5),
        }
    }
}

/// A running simulated cluster.
pub struct Sim {
    addr: SocketAddr,
    metrics_addr: SocketAddr,
    store: Arc<Store>,
    faults: Arc<Faults>,
    requests: Arc<requests::RequestCounts>,
    workload: Arc<workload::Workload>,
    shutdown: tokio::sync::watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Sim {
    /// Starts the API server, the controllers and the workload.
    pub async fn start(config: SimConfig) -> anyhow::Result<Sim> {
        let store = Arc::new(Store::new(config.event_log_capacity));
        let faults = Arc::new(Faults::default());
        let workload = Arc::new(workload::Workload::new(
            config.default_rps,
            config.prometheus_sd.clone(),
        ));
        // Subscribe before serving so the controllers see every change.
        let mut tasks = Vec::with_capacity(8);
        tasks.push(tokio::spawn(controllers::kubelet(
            store.clone(),
            config.ready_delay,
            store.subscribe_all(),
        )));
        tasks.push(tokio::spawn(controllers::deployments(
            store.clone(),
            store.subscribe_all(),
        )));
        tasks.push(tokio::spawn(controllers::endpoints(
            store.clone(),
            store.subscribe_all(),
        )));
        tasks.push(tokio::spawn(controllers::namespaces(
            store.clone(),
            config.namespace_deletion_delay,
            store.subscribe_all(),
        )));
        tasks.push(tokio::spawn(controllers::garbage_collector(
            store.clone(),
            store.subscribe_all(),
        )));

        let metrics_listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
        let metrics_addr = metrics_listener.local_addr()?;
        workload.set_metrics_addr(metrics_addr);
        tasks.push(tokio::spawn(workload::run(
            workload.clone(),
            workload::store_feed(store.subscribe_all()),
            config.workload_tick,
        )));

        let listener = tokio::net::TcpListener::bind(("127.0.0.1", config.port)).await?;
        let addr = listener.local_addr()?;
        let requests = Arc::new(requests::RequestCounts::default());
        let state = Arc::new(server::ApiState {
            store: store.clone(),
            faults: faults.clone(),
            requests: requests.clone(),
            server_address: addr.to_string(),
            bookmark_interval: Duration::from_secs(1),
        });
        let (shutdown, mut shutdown_rx) = tokio::sync::watch::channel(false);
        let app = server::router(state);
        let metrics_shutdown = shutdown_rx.clone();
        tasks.push(tokio::spawn(async move {
            let serve = axum::serve(listener, app).with_graceful_shutdown(async move {
                let _ = shutdown_rx.wait_for(|s| *s).await;
            });
            if let Err(e) = serve.await {
                tracing::error!(error = %e, "kubesim API server stopped");
            }
        }));
        tasks.push(tokio::spawn(workload::serve_metrics(
            metrics_listener,
            workload.clone(),
            metrics_shutdown,
        )));
        Ok(Sim {
            addr,
            metrics_addr,
            store,
            faults,
            requests,
            workload,
            shutdown,
            tasks,
        })
    }

    /// Base URL of the API, `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Address of the metrics listener (`/pods/NS/NAME/metrics`, `/metrics`, `/services/metrics`).
    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics_addr
    }

    /// A kube-rs client for this cluster, default namespace `default`.
    pub fn client(&self) -> kube::Client {
        let uri: http::Uri = self.url().parse().expect("a loopback URL is a valid URI");
        kube::Client::try_from(kube::Config::new(uri))
            .expect("a plain-HTTP kube client needs no TLS setup")
    }

    /// A kubeconfig with one context, `kubesim`, pointing at this cluster.
    pub fn kubeconfig(&self) -> kube::config::Kubeconfig {
        kube::config::Kubeconfig::from_yaml(&self.kubeconfig_yaml())
            .expect("the generated kubeconfig is valid")
    }

    fn kubeconfig_yaml(&self) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: kubesim\n  cluster:\n    server: {url}\ncontexts:\n- name: kubesim\n  context:\n    cluster: kubesim\n    user: kubesim\n    namespace: default\ncurrent-context: kubesim\nusers:\n- name: kubesim\n  user: {{}}\npreferences: {{}}\n",
            url = self.url()
        )
    }

    /// Writes the kubeconfig for kubectl and kube-rs (`KUBECONFIG=PATH`).
    pub fn write_kubeconfig(&self, path: &Path) -> anyhow::Result<()> {
        std::fs::write(path, self.kubeconfig_yaml())?;
        Ok(())
    }

    pub fn faults(&self) -> &Faults {
        &self.faults
    }

    /// Resource requests served so far, by `(verb, resource)`; see [`requests::RequestCounts`].
    pub fn request_counts(&self) -> std::collections::BTreeMap<(String, String), u64> {
        self.requests.snapshot()
    }

    /// Direct access to the object store, bypassing HTTP (and fault injection).
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// Cumulative requests and errors the load generator sent to a Service.
    pub fn service_stats(&self, namespace: &str, service: &str) -> Option<ServiceStats> {
        self.workload.service_stats(namespace, service)
    }

    /// Cumulative counts of one simulated pod.
    pub fn pod_stats(&self, namespace: &str, pod: &str) -> Option<PodStats> {
        self.workload.pod_stats(namespace, pod)
    }

    /// Stops serving, ends watches and background tasks.
    pub async fn shutdown(mut self) {
        self.faults.close_watches();
        let _ = self.shutdown.send(true);
        let tasks = std::mem::take(&mut self.tasks);
        // Give the servers a moment to close connections gracefully, then stop everything.
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            tokio::time::sleep(Duration::from_millis(10)).await;
        })
        .await;
        for t in tasks {
            t.abort();
        }
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
        for t in &self.tasks {
            t.abort();
        }
    }
}
