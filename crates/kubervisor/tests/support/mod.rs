//! Shared test code: a fleet of fake pods serving Prometheus metrics, a real Prometheus
//! scraping them, and bounded waiting.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::routing::get;
use kubervisor::harness::{HarnessError, PrometheusOptions, PrometheusProcess};

/// How a fake pod behaves: what share of its requests fail and what it charges.
#[derive(Clone, Debug)]
pub struct FakePod {
    pub name: &'static str,
    pub error_rate: f64,
    pub price: f64,
}

impl FakePod {
    pub fn new(name: &'static str) -> FakePod {
        FakePod {
            name,
            error_rate: 0.0,
            price: 10.0,
        }
    }

    pub fn error_rate(mut self, rate: f64) -> FakePod {
        self.error_rate = rate;
        self
    }

    pub fn price(mut self, price: f64) -> FakePod {
        self.price = price;
        self
    }
}

/// Pods served by one HTTP server, each at `/pods/<name>/metrics`, listed in a
/// `file_sd_configs` file the same way kubesim lists its pods.
pub struct FakeFleet {
    pub sd_file: PathBuf,
    pub address: String,
}

struct FleetState {
    pods: BTreeMap<String, FakePod>,
    started: Instant,
    requests_per_second: f64,
}

impl FakeFleet {
    pub async fn start(dir: &Path, pods: Vec<FakePod>) -> FakeFleet {
        let state = Arc::new(FleetState {
            pods: pods
                .iter()
                .map(|p| (p.name.to_string(), p.clone()))
                .collect(),
            started: Instant::now(),
            requests_per_second: 50.0,
        });
        let router = Router::new()
            .route("/pods/{name}/metrics", get(metrics))
            .with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move { axum::serve(listener, router).await });
        let groups: Vec<serde_json::Value> = pods
            .iter()
            .map(|pod| {
                serde_json::json!({
                    "targets": [address],
                    "labels": {
                        "namespace": "default",
                        "pod": pod.name,
                        "service": "shop",
                        "app": "shop",
                        "__metrics_path__": format!("/pods/{}/metrics", pod.name),
                    }
                })
            })
            .collect();
        let sd_file = dir.join("targets.json");
        write_sd_file(&sd_file, &groups);
        FakeFleet { sd_file, address }
    }
}

/// Writes a `file_sd_configs` file at once (rename), so Prometheus never reads half of it.
pub fn write_sd_file(path: &Path, groups: &[serde_json::Value]) {
    let partial = path.with_extension("partial");
    std::fs::write(&partial, serde_json::to_vec(groups).unwrap()).unwrap();
    std::fs::rename(&partial, path).unwrap();
}

// Counters derive from the time since start, so every scrape sees steady rates.
async fn metrics(
    State(state): State<Arc<FleetState>>,
    UrlPath(name): UrlPath<String>,
) -> Result<String, StatusCode> {
    let pod = state.pods.get(&name).ok_or(StatusCode::NOT_FOUND)?;
    let total = (state.started.elapsed().as_secs_f64() * state.requests_per_second).floor();
    let errors = (total * pod.error_rate).floor();
    Ok(format!(
        "# TYPE http_requests_total counter\n\
         http_requests_total{{code=\"200\"}} {ok}\n\
         http_requests_total{{code=\"500\"}} {errors}\n\
         # TYPE price summary\n\
         price_sum {sum}\n\
         price_count {total}\n",
        ok = total - errors,
        sum = total * pod.price,
    ))
}

/// Starts a real Prometheus scraping `sd_file` every second. A missing binary fails the test.
pub async fn start_prometheus(sd_file: &Path) -> PrometheusProcess {
    match PrometheusProcess::start(PrometheusOptions::new(sd_file)).await {
        Ok(prometheus) => prometheus,
        Err(e @ HarnessError::BinaryNotFound) => {
            panic!("these tests need a real Prometheus: {e} (.ci/run installs it)")
        }
        Err(e) => panic!("{e}"),
    }
}

pub use kubesim::testing::eventually;

/// A port nothing listens on: bound, then released.
pub fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// Serves `router` on a free loopback port and returns `host:port`.
pub async fn serve(router: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move { axum::serve(listener, router).await });
    address
}

/// A kubesim cluster whose pods Prometheus scrapes through the SD file kubesim writes.
pub struct SimFleet {
    pub sim: kubesim::Sim,
    pub sd_file: PathBuf,
}

impl SimFleet {
    /// Starts kubesim with one Service `shop` (`rps` requests per second, spread round-robin)
    /// and one pod per `(name, annotations)`, e.g. `("shop-1", [("sim.kubervisor.io/price", "10")])`.
    pub async fn start(dir: &Path, rps: f64, pods: &[(&str, Vec<(&str, String)>)]) -> SimFleet {
        use k8s_openapi::api::core::v1::{Pod, Service};
        use kube::api::{Api, PostParams};

        let sd_file = dir.join("kubesim-targets.json");
        let sim = kubesim::Sim::start(kubesim::SimConfig {
            prometheus_sd: Some(sd_file.clone()),
            ready_delay: Duration::from_millis(100),
            ..kubesim::SimConfig::default()
        })
        .await
        .expect("kubesim starts");
        let client = sim.client();
        let service: Service = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "shop", "annotations": {"sim.kubervisor.io/rps": rps.to_string()}},
            "spec": {"selector": {"app": "shop"}, "ports": [{"port": 80}]},
        }))
        .unwrap();
        Api::<Service>::namespaced(client.clone(), "default")
            .create(&PostParams::default(), &service)
            .await
            .expect("create the Service");
        let api = Api::<Pod>::namespaced(client, "default");
        for (name, annotations) in pods {
            let annotations: serde_json::Map<String, serde_json::Value> = annotations
                .iter()
                .map(|(k, v)| (k.to_string(), serde_json::Value::from(v.as_str())))
                .collect();
            let pod: Pod = serde_json::from_value(serde_json::json!({
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": name, "labels": {"app": "shop"}, "annotations": annotations},
                "spec": {"containers": [{"name": "app", "image": "shop"}]},
            }))
            .unwrap();
            api.create(&PostParams::default(), &pod)
                .await
                .expect("create a pod");
        }
        SimFleet { sim, sd_file }
    }
}
