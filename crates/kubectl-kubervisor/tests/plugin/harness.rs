//! A cluster per test (kubesim, or namespaces of its own on the real control plane), and
//! the plugin binary run against it as a user would.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Endpoints, Namespace, Pod, Service};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Client;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kubervisor_api::KubervisorService;
use kubesim::testing::{Backend, RealNamespace};
use kubesim::{Sim, SimConfig};
use serde_json::{Value, json};

pub const PLUGIN: &str = env!("CARGO_BIN_EXE_kubectl-kubervisor");

pub use kubesim::testing::eventually;

/// One finished run of a command.
#[derive(Debug)]
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// Asserts exit code 0 and returns stdout.
    pub fn ok(&self) -> &str {
        assert_eq!(self.code, Some(0), "expected success: {self:#?}");
        &self.stdout
    }

    /// Asserts exit code 1, an empty stdout, and returns stderr.
    pub fn failed(&self) -> &str {
        assert_eq!(self.code, Some(1), "expected failure: {self:#?}");
        assert!(self.stdout.is_empty(), "stdout on failure: {self:#?}");
        assert!(
            self.stderr.starts_with("error: ") && self.stderr.lines().count() == 1,
            "expected one `error:` line: {self:#?}"
        );
        &self.stderr
    }
}

/// Runs a program with a clean environment: no KUBECONFIG and a HOME without ~/.kube,
/// so the developer's own cluster is never touched.
pub async fn run(program: &str, args: &[&str], home: &Path, env: &[(&str, &str)]) -> Run {
    let mut command = tokio::process::Command::new(program);
    command
        .args(args)
        .env_remove("KUBECONFIG")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env("HOME", home);
    for (key, value) in env {
        command.env(key, value);
    }
    // Asynchronous, so the simulated API server on this runtime keeps answering.
    let out = command
        .output()
        .await
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Locates the real kubectl, failing with install advice when it is missing.
pub fn require_kubectl() -> PathBuf {
    std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .map(|dir| dir.join("kubectl"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "`kubectl` is not installed: this test runs the plugin through the real kubectl (Debian package `kubernetes-client`; `.ci/run` installs it)"
            )
        })
}

/// A cluster of one test: its own kubesim, or namespaces of its own on the real control
/// plane, with a kubeconfig that defaults to the test's namespace.
pub struct Cluster {
    /// The emulator, on the kubesim backend (kept running for the test).
    _sim: Option<Sim>,
    pub client: Client,
    pub kubeconfig: PathBuf,
    /// The namespace the kubeconfig defaults to: `default` on kubesim, a fresh one on the
    /// shared real control plane.
    pub ns: String,
    pub dir: tempfile::TempDir,
    backend: Backend,
    /// Deleted when the test ends.
    real_namespaces: Vec<RealNamespace>,
}

impl Cluster {
    /// A cluster without the CRD; on the real control plane (where other tests install
    /// it) only the test's namespace is fresh.
    pub async fn bare(backend: Backend) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let kubeconfig = dir.path().join("kubeconfig");
        match &backend {
            Backend::Kubesim => {
                let sim = Sim::start(SimConfig {
                    ready_delay: Duration::from_millis(50),
                    ..SimConfig::default()
                })
                .await
                .expect("kubesim starts");
                sim.write_kubeconfig(&kubeconfig).unwrap();
                let client = sim.client();
                Cluster {
                    _sim: Some(sim),
                    client,
                    kubeconfig,
                    ns: "default".into(),
                    dir,
                    backend,
                    real_namespaces: Vec::new(),
                }
            }
            Backend::Real(admin) => {
                let namespace = RealNamespace::create(admin, "plugin").await;
                namespace.write_kubeconfig(&kubeconfig);
                Cluster {
                    _sim: None,
                    client: namespace.client.clone(),
                    kubeconfig,
                    ns: namespace.name.clone(),
                    dir,
                    backend,
                    real_namespaces: vec![namespace],
                }
            }
        }
    }

    /// A cluster serving KubervisorServices.
    pub async fn start(backend: Backend) -> Cluster {
        let cluster = Cluster::bare(backend).await;
        cluster.install_crd().await;
        cluster
    }

    pub fn is_real(&self) -> bool {
        matches!(self.backend, Backend::Real(_))
    }

    /// The CRD, created unless another test of the shared real control plane already did.
    pub async fn install_crd(&self) {
        let created = Api::<CustomResourceDefinition>::all(self.client.clone())
            .create(&PostParams::default(), &kubervisor_api::crd())
            .await;
        match created {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 409 && self.is_real() => {}
            Err(e) => panic!("CRD not created: {e}"),
        }
        let api: Api<KubervisorService> = Api::all(self.client.clone());
        eventually("the CRD to be served", Duration::from_secs(10), || {
            let api = api.clone();
            async move {
                api.list(&ListParams::default())
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }
        })
        .await;
    }

    /// Another namespace for the test: `name` itself on kubesim, `name-PID-SEQUENCE` (deleted
    /// afterwards) on the shared real control plane. Returns its name.
    pub async fn namespace(&mut self, name: &str) -> String {
        match &self.backend {
            Backend::Kubesim => {
                let ns: Namespace = serde_json::from_value(json!({
                    "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}
                }))
                .unwrap();
                Api::<Namespace>::all(self.client.clone())
                    .create(&PostParams::default(), &ns)
                    .await
                    .unwrap();
                name.to_string()
            }
            Backend::Real(admin) => {
                let namespace = RealNamespace::create(admin, name).await;
                let name = namespace.name.clone();
                self.real_namespaces.push(namespace);
                name
            }
        }
    }

    /// The rows (by first cell) of an `--all-namespaces` table, header kept, in this test's namespaces: on
    /// the shared real control plane other tests' resources show too; kubesim must have
    /// no others.
    pub fn own_rows(&self, rows: Vec<Vec<String>>, namespaces: &[&str]) -> Vec<Vec<String>> {
        let total = rows.len();
        let own: Vec<Vec<String>> = rows
            .into_iter()
            .filter(|row| row[0] == "NAMESPACE" || namespaces.iter().any(|ns| row[0] == *ns))
            .collect();
        if !self.is_real() {
            assert_eq!(own.len(), total, "rows of other namespaces on kubesim");
        }
        own
    }

    /// Runs the plugin with `--kubeconfig` pointing at this cluster.
    pub async fn plugin(&self, args: &[&str]) -> Run {
        let mut all = vec!["--kubeconfig", self.kubeconfig.to_str().unwrap()];
        all.extend_from_slice(args);
        run(PLUGIN, &all, self.dir.path(), &[]).await
    }

    pub async fn service(&self, namespace: &str, name: &str, selector: Value) {
        let service: Service = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"selector": selector, "ports": [{"port": 80}]}
        }))
        .unwrap();
        Api::<Service>::namespaced(self.client.clone(), namespace)
            .create(&PostParams::default(), &service)
            .await
            .unwrap();
    }

    pub async fn selector(&self, namespace: &str, name: &str) -> BTreeMap<String, String> {
        Api::<Service>::namespaced(self.client.clone(), namespace)
            .get(name)
            .await
            .unwrap()
            .spec
            .and_then(|s| s.selector)
            .unwrap_or_default()
    }

    pub async fn pod(&self, namespace: &str, name: &str, labels: Value, annotations: Value) {
        let pod: Pod = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace, "labels": labels, "annotations": annotations},
            "spec": {"containers": [{"name": "app", "image": "example/app:1"}]}
        }))
        .unwrap();
        Api::<Pod>::namespaced(self.client.clone(), namespace)
            .create(&PostParams::default(), &pod)
            .await
            .unwrap();
    }

    /// Waits until the simulated kubelet reports these pods Ready.
    pub async fn wait_ready(&self, namespace: &str, names: &[&str]) {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        eventually("pods to be Ready", Duration::from_secs(10), || {
            let api = api.clone();
            async move {
                let pods = api
                    .list(&ListParams::default())
                    .await
                    .map_err(|e| e.to_string())?;
                let ready: Vec<String> = pods
                    .items
                    .iter()
                    .filter(|p| {
                        p.status
                            .as_ref()
                            .and_then(|s| s.conditions.as_ref())
                            .is_some_and(|c| {
                                c.iter().any(|c| c.type_ == "Ready" && c.status == "True")
                            })
                    })
                    .filter_map(|p| p.metadata.name.clone())
                    .collect();
                if names.iter().all(|n| ready.iter().any(|r| r == n)) {
                    Ok(())
                } else {
                    Err(format!("ready: {ready:?}"))
                }
            }
        })
        .await;
    }

    /// Pod addresses in the Service's Endpoints.
    pub async fn endpoint_count(&self, namespace: &str, service: &str) -> usize {
        Api::<Endpoints>::namespaced(self.client.clone(), namespace)
            .get_opt(service)
            .await
            .ok()
            .flatten()
            .and_then(|e| e.subsets)
            .unwrap_or_default()
            .iter()
            .map(|s| s.addresses.as_ref().map_or(0, Vec::len))
            .sum()
    }

    /// A KubervisorService over `service` with one breaker.
    pub async fn kvs(&self, namespace: &str, name: &str, service: &str) {
        let kvs: KubervisorService = serde_json::from_value(json!({
            "apiVersion": "kubervisor.k8s.io/v1alpha1",
            "kind": "KubervisorService",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {
                "service": service,
                "breakers": [{
                    "name": "errors",
                    "minPodsAvailableCount": 2,
                    "discreteValueOutOfList": {
                        "prometheusService": "prometheus:9090",
                        "promQL": "sum by (code, pod) (increase(http_requests_total[1m]))",
                        "key": "code", "podNamekey": "pod", "goodValues": ["200"]
                    }
                }],
                "defaultActivator": {"mode": "retryAndPause", "period": 30}
            }
        }))
        .unwrap();
        Api::<KubervisorService>::namespaced(self.client.clone(), namespace)
            .create(&PostParams::default(), &kvs)
            .await
            .unwrap();
    }

    /// Writes the status the operator would, through the status subresource.
    pub async fn set_status(&self, namespace: &str, name: &str, status: Value) {
        Api::<KubervisorService>::namespaced(self.client.clone(), namespace)
            .patch_status(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({ "status": status })),
            )
            .await
            .unwrap();
    }
}

/// A status with a Ready condition and pod counts.
pub fn status(ready: &str, reason: &str, message: &str, counts: [u32; 4]) -> Value {
    json!({
        "conditions": [{
            "type": "Ready", "status": ready, "reason": reason, "message": message,
            "lastTransitionTime": "2026-11-25T10:00:00Z"
        }],
        "podCount": {
            "nbPodsManaged": counts[0], "nbPodsBreaked": counts[1],
            "nbPodsPaused": counts[2], "nbPodsUnknown": counts[3]
        }
    })
}

/// Whitespace-split cells of each line, to compare tables without depending on widths.
pub fn cells(table: &str) -> Vec<Vec<String>> {
    table
        .lines()
        .map(|l| l.split_whitespace().map(str::to_string).collect())
        .collect()
}
