//! A simulated cluster with the operator running against it over HTTP.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Endpoints, Pod};
use kube::Client;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kubervisor::operator::{self, RunOptions};
use kubervisor::task::Timing;
use kubervisor_api::KubervisorService;
use kubesim::testing::RealNamespace;
use kubesim::{Sim, SimConfig};
use serde_json::json;
use tokio::task::JoinHandle;

pub use kubesim::testing::eventually;

/// Where a scenario runs: kubesim in-process, or the real control plane that
/// `scripts/cluster.sh up` started (its kubeconfig in `KUBERVISOR_TEST_KUBECONFIG`).
pub use kubesim::testing::Backend;

pub struct Cluster {
    /// The emulator, on the kubesim backend.
    pub sim: Option<Sim>,
    pub client: Client,
    pub kubeconfig: PathBuf,
    /// Every object of the scenario lives here: `default` on kubesim, a fresh namespace
    /// (deleted afterwards) on the shared real control plane.
    pub namespace: String,
    /// Deleted when the scenario ends, on the real control plane.
    real_namespace: Option<RealNamespace>,
    /// On the real control plane, the simulated workload as a client of the API.
    pub workload: Option<kubesim::workload::WorkloadHandle>,
    _dir: tempfile::TempDir,
    operators: BTreeMap<String, RunningOperator>,
    /// Background tasks of the scenario, aborted with it.
    tasks: Vec<JoinHandle<()>>,
}

type RunningOperator = (
    tokio::sync::oneshot::Sender<()>,
    JoinHandle<anyhow::Result<()>>,
);

fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("kubervisor=debug")),
        )
        .with_test_writer()
        .try_init();
}

impl Cluster {
    pub async fn start(backend: Backend) -> Cluster {
        match backend {
            Backend::Kubesim => {
                Cluster::start_with(SimConfig {
                    ready_delay: Duration::from_millis(100),
                    ..SimConfig::default()
                })
                .await
            }
            Backend::Real(kubeconfig) => Cluster::connect(kubeconfig).await,
        }
    }

    pub async fn start_with(config: SimConfig) -> Cluster {
        init_logs();
        let sim = Sim::start(config).await.expect("kubesim starts");
        let dir = tempfile::tempdir().unwrap();
        let kubeconfig = dir.path().join("kubeconfig");
        sim.write_kubeconfig(&kubeconfig).unwrap();
        // The test's own requests are never faulted: it observes, the operator lives
        // through the faults.
        let mut config = kube::Config::new(sim.url().parse().expect("a loopback URL"));
        config.headers.push((
            http::HeaderName::from_static(kubesim::faults::OBSERVER_HEADER),
            http::HeaderValue::from_static("test"),
        ));
        let client = Client::try_from(config).expect("a plain-HTTP client");
        Cluster {
            sim: Some(sim),
            client,
            kubeconfig,
            namespace: "default".into(),
            real_namespace: None,
            workload: None,
            _dir: dir,
            operators: BTreeMap::new(),
            tasks: Vec::new(),
        }
    }

    /// Connects to the real control plane and creates this scenario's namespace.
    async fn connect(kubeconfig: PathBuf) -> Cluster {
        init_logs();
        let namespace = RealNamespace::create(&kubeconfig, "e2e").await;
        Cluster {
            sim: None,
            client: namespace.client.clone(),
            kubeconfig,
            namespace: namespace.name.clone(),
            real_namespace: Some(namespace),
            workload: None,
            _dir: tempfile::tempdir().unwrap(),
            operators: BTreeMap::new(),
            tasks: Vec::new(),
        }
    }

    /// What the simulated load generator sent to `service` so far, on either backend.
    pub fn service_stats(&self, service: &str) -> Option<kubesim::ServiceStats> {
        match (&self.sim, &self.workload) {
            (Some(sim), _) => sim.service_stats(&self.namespace, service),
            (None, Some(workload)) => workload.service_stats(&self.namespace, service),
            (None, None) => panic!("no simulated workload runs in this scenario"),
        }
    }

    /// Starts the operator in-process, as `kubervisor run --kubeconfig … --install-crd` would.
    pub async fn start_operator(&mut self) {
        self.start_replica("e2e", false).await;
    }

    /// Stops the operator as SIGTERM would, and waits until it has exited.
    pub async fn stop_operator(&mut self) {
        self.stop_replica("e2e").await;
    }

    /// Starts the operator with `/metrics` on a free loopback port, and returns its address.
    pub async fn start_operator_serving_metrics(&mut self) -> SocketAddr {
        // Bound and released: the operator binds it again at once.
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free loopback port");
        let kubeconfig = self.kubeconfig.clone();
        let namespace = Some(self.namespace.clone());
        self.start_replica_with("e2e", false, &kubeconfig, addr, namespace)
            .await;
        addr
    }

    /// Starts the operator watching `namespace`, or every namespace, with `/metrics` on a
    /// free loopback port; returns its address.
    pub async fn start_operator_watching(&mut self, namespace: Option<&str>) -> SocketAddr {
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free loopback port");
        let kubeconfig = self.kubeconfig.clone();
        self.start_replica_with("e2e", false, &kubeconfig, addr, namespace.map(String::from))
            .await;
        addr
    }

    /// Whether the in-process operator `identity` still runs (it has not returned or panicked).
    pub fn operator_running(&self, identity: &str) -> bool {
        self.operators
            .get(identity)
            .is_some_and(|(_, task)| !task.is_finished())
    }

    /// Another namespace of the same cluster, for scenarios across namespaces: made here
    /// on kubesim (whose emulator stays with `self`), a fresh one of the test's own on the
    /// real control plane. Its operators are its own.
    pub async fn another_namespace(&self, name: &str) -> Cluster {
        if self.sim.is_none() {
            return Cluster::connect(self.kubeconfig.clone()).await;
        }
        let namespace: k8s_openapi::api::core::v1::Namespace =
            serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
        Api::<k8s_openapi::api::core::v1::Namespace>::all(self.client.clone())
            .create(&PostParams::default(), &namespace)
            .await
            .unwrap_or_else(|e| panic!("namespace {name} cannot be created: {e}"));
        let dir = tempfile::tempdir().unwrap();
        let kubeconfig = dir.path().join("kubeconfig");
        std::fs::copy(&self.kubeconfig, &kubeconfig).unwrap();
        Cluster {
            sim: None,
            client: self.client.clone(),
            kubeconfig,
            namespace: name.to_string(),
            real_namespace: None,
            workload: None,
            _dir: dir,
            operators: BTreeMap::new(),
            tasks: Vec::new(),
        }
    }

    /// Starts one replica of the operator named `identity`, optionally with leader election.
    pub async fn start_replica(&mut self, identity: &str, leader_elect: bool) {
        let kubeconfig = self.kubeconfig.clone();
        self.start_replica_via(identity, leader_elect, &kubeconfig)
            .await;
    }

    /// Like [`Cluster::start_replica`], reaching the API through `kubeconfig` (a proxy's).
    pub async fn start_replica_via(
        &mut self,
        identity: &str,
        leader_elect: bool,
        kubeconfig: &std::path::Path,
    ) {
        let addr = SocketAddr::from(([127, 0, 0, 1], 0));
        let namespace = Some(self.namespace.clone());
        self.start_replica_with(identity, leader_elect, kubeconfig, addr, namespace)
            .await;
    }

    /// Starts a replica reaching the API through `kubeconfig`, serving the operator's
    /// HTTP endpoint on `addr` and watching `namespace` (every namespace: `None`).
    async fn start_replica_with(
        &mut self,
        identity: &str,
        leader_elect: bool,
        kubeconfig: &std::path::Path,
        addr: SocketAddr,
        namespace: Option<String>,
    ) {
        assert!(
            !self.operators.contains_key(identity),
            "{identity} already running"
        );
        let options = RunOptions {
            kubeconfig: Some(kubeconfig.to_path_buf()),
            master: None,
            addr,
            namespace,
            install_crd: true,
            leader_elect,
            lease_namespace: None,
            lease_name: "kubervisor".into(),
            identity: identity.into(),
            sources: Default::default(),
            timing: Timing {
                reconcile_min_interval: Duration::from_millis(50),
                resync: Duration::from_secs(2),
                activator_period: Duration::from_millis(200),
                ..Timing::default()
            },
        };
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(operator::run(options, async move {
            let _ = rx.await;
        }));
        self.operators.insert(identity.to_string(), (tx, task));
        // The CRD is installed by the operator; wait until custom resources are served.
        let api: Api<KubervisorService> = Api::namespaced(self.client.clone(), &self.namespace);
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

    /// Stops a replica as SIGTERM would, and waits until it has exited.
    pub async fn stop_replica(&mut self, identity: &str) {
        let (tx, task) = self.operators.remove(identity).expect("replica running");
        let _ = tx.send(());
        task.await
            .expect("operator task")
            .expect("operator exits cleanly");
    }

    /// A Deployment of `replicas` pods labelled `app: name`, and a Service over them
    /// whose selector requires `kubervisor/traffic: yes`.
    pub async fn deploy(
        &self,
        name: &str,
        replicas: i32,
        pod_annotations: BTreeMap<String, String>,
    ) {
        kubervisor::demo::fixtures::deploy_guarded_service(
            &self.client,
            &self.namespace,
            name,
            replicas,
            pod_annotations,
        )
        .await
        .unwrap();
    }

    /// A Deployment `web` whose pods declare the readiness gate `kubervisor.k8s.io/traffic`
    /// (all but the first `without_gate` of them, which come from a second Deployment
    /// `web-bare` with the same `app` label), and a Service `web` selecting `app: web` only.
    pub async fn deploy_gated(&mut self, replicas: i32, without_gate: i32) {
        let deployment = |name: &str, replicas: i32, gates: serde_json::Value| {
            serde_json::from_value::<k8s_openapi::api::apps::v1::Deployment>(json!({
                "apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": name},
                "spec": {
                    "replicas": replicas,
                    "selector": {"matchLabels": {"app": "web", "deployment": name}},
                    "template": {
                        "metadata": {"labels": {"app": "web", "deployment": name}},
                        "spec": {
                            "readinessGates": gates,
                            "containers": [{"name": "app", "image": "example/app:1"}],
                        },
                    },
                },
            }))
            .unwrap()
        };
        let deployments: Api<k8s_openapi::api::apps::v1::Deployment> =
            Api::namespaced(self.client.clone(), &self.namespace);
        let gate = json!([{"conditionType": "kubervisor.k8s.io/traffic"}]);
        deployments
            .create(&PostParams::default(), &deployment("web", replicas, gate))
            .await
            .unwrap();
        if without_gate > 0 {
            deployments
                .create(
                    &PostParams::default(),
                    &deployment("web-bare", without_gate, json!([])),
                )
                .await
                .unwrap();
        }
        let service: k8s_openapi::api::core::v1::Service = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "web"},
            "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}]},
        }))
        .unwrap();
        Api::<k8s_openapi::api::core::v1::Service>::namespaced(
            self.client.clone(),
            &self.namespace,
        )
        .create(&PostParams::default(), &service)
        .await
        .unwrap();
        if self.sim.is_none() {
            self.tasks.push(tokio::spawn(follow_readiness_gates(
                self.client.clone(),
                self.namespace.clone(),
            )));
        }
    }

    /// A KubervisorService `web` over Service `web` with the given breakers and activator.
    pub async fn guard(
        &self,
        breakers: serde_json::Value,
        activator: serde_json::Value,
        dry_run: bool,
    ) {
        self.create_kvs(json!({
            "apiVersion": "kubervisor.k8s.io/v1alpha1",
            "kind": "KubervisorService",
            "metadata": {"name": "web", "namespace": self.namespace},
            "spec": {"service": "web", "breakers": breakers, "defaultActivator": activator, "dryRun": dry_run}
        }))
        .await;
    }

    /// Creates a KubervisorService in the scenario's namespace, whatever the manifest says.
    pub async fn create_kvs(&self, mut manifest: serde_json::Value) {
        manifest["metadata"]["namespace"] = json!(self.namespace);
        let kvs: KubervisorService = serde_json::from_value(manifest).unwrap();
        self.kvs_api()
            .create(&PostParams::default(), &kvs)
            .await
            .unwrap();
    }

    pub fn kvs_api(&self) -> Api<KubervisorService> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    pub async fn delete_kvs(&self, name: &str) {
        self.kvs_api()
            .delete(name, &DeleteParams::default())
            .await
            .unwrap();
    }

    /// Pods with `app=name`, by name: (traffic label, Ready).
    pub async fn pods(&self, app: &str) -> BTreeMap<String, Pod> {
        Api::<Pod>::namespaced(self.client.clone(), &self.namespace)
            .list(&ListParams::default().labels(&format!("app={app}")))
            .await
            .map(|list| {
                list.items
                    .into_iter()
                    .filter(|p| p.metadata.deletion_timestamp.is_none())
                    .map(|p| (p.metadata.name.clone().unwrap(), p))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Traffic label of each live pod of `app`.
    pub async fn traffic(&self, app: &str) -> BTreeMap<String, String> {
        self.pods(app)
            .await
            .into_iter()
            .map(|(name, pod)| {
                let traffic = pod
                    .metadata
                    .labels
                    .unwrap_or_default()
                    .get("kubervisor/traffic")
                    .cloned()
                    .unwrap_or_else(|| "-".into());
                (name, traffic)
            })
            .collect()
    }

    pub async fn wait_ready_pods(&self, app: &str, n: usize) -> Vec<String> {
        eventually(
            &format!("{n} Ready pods of {app} with traffic=yes"),
            Duration::from_secs(15),
            || async {
                let traffic = self.traffic(app).await;
                let ready = self
                    .pods(app)
                    .await
                    .values()
                    .filter(|p| {
                        p.status
                            .as_ref()
                            .and_then(|s| s.conditions.as_ref())
                            .is_some_and(|c| {
                                c.iter().any(|c| c.type_ == "Ready" && c.status == "True")
                            })
                    })
                    .count();
                let yes = traffic.values().filter(|t| *t == "yes").count();
                if ready == n && yes == n {
                    Ok(traffic.into_keys().collect())
                } else {
                    Err(format!("{ready} ready, traffic {traffic:?}"))
                }
            },
        )
        .await
    }

    /// Addresses in the Service's Endpoints.
    pub async fn endpoint_addresses(&self, service: &str) -> usize {
        let endpoints = Api::<Endpoints>::namespaced(self.client.clone(), &self.namespace)
            .get_opt(service)
            .await
            .ok()
            .flatten();
        endpoints
            .and_then(|e| e.subsets)
            .unwrap_or_default()
            .iter()
            .map(|s| s.addresses.as_ref().map_or(0, Vec::len))
            .sum()
    }

    /// Runs the real kubectl against the simulated cluster.
    pub fn kubectl(&self, args: &[&str]) -> String {
        let out = std::process::Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(["--namespace", &self.namespace])
            .args(args)
            .output()
            .expect("kubectl is installed (apt-get install kubernetes-client)");
        assert!(
            out.status.success(),
            "kubectl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    async fn events_with_reason(&self, reason: &str) -> Vec<k8s_openapi::api::events::v1::Event> {
        let api: Api<k8s_openapi::api::events::v1::Event> =
            Api::namespaced(self.client.clone(), &self.namespace);
        let events = api.list(&ListParams::default()).await.map(|l| l.items);
        events
            .unwrap_or_default()
            .into_iter()
            .filter(|e| e.reason.as_deref() == Some(reason))
            .collect()
    }

    /// Events of `reason` regarding `object`, as (reporting instance, note).
    pub async fn events_by(&self, reason: &str, object: &str) -> Vec<(String, String)> {
        self.events_with_reason(reason)
            .await
            .into_iter()
            .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(object))
            .map(|e| {
                (
                    e.reporting_instance.unwrap_or_default(),
                    e.note.unwrap_or_default(),
                )
            })
            .collect()
    }

    /// Events of `reason` in the scenario's namespace, as (regarding name, note).
    pub async fn events(&self, reason: &str) -> Vec<(String, String)> {
        self.events_with_reason(reason)
            .await
            .into_iter()
            .map(|e| {
                let on = e.regarding.and_then(|r| r.name).unwrap_or_default();
                (on, e.note.unwrap_or_default())
            })
            .collect()
    }

    /// How many events of `reason` regard a pod.
    pub async fn events_by_reason_on_pods(&self, reason: &str) -> usize {
        self.events_with_reason(reason)
            .await
            .iter()
            .filter(|e| e.regarding.as_ref().and_then(|r| r.kind.as_deref()) == Some("Pod"))
            .count()
    }

    /// Sets an annotation on one pod (the simulated workload reads them live).
    pub async fn annotate(&self, pod: &str, key: &str, value: &str) {
        let patch = json!({"metadata": {"annotations": {key: value}}});
        Api::<Pod>::namespaced(self.client.clone(), &self.namespace)
            .patch(
                pod,
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(&patch),
            )
            .await
            .unwrap();
    }

    /// Makes a running pod unready, as a failing readiness probe would: kubesim's kubelet
    /// follows `sim.kubervisor.io/ready: "false"`; on the real control plane the node
    /// simulator sets conditions once, so the pod's `Ready` condition is set directly.
    pub async fn make_unready(&self, pod: &str) {
        if self.sim.is_some() {
            self.annotate(pod, kubesim::controllers::READY_ANNOTATION, "false")
                .await;
            return;
        }
        let patch = json!({"status": {"conditions": [
            {"type": "Ready", "status": "False", "reason": "ReadinessProbeFailed"},
            {"type": "ContainersReady", "status": "False", "reason": "ReadinessProbeFailed"},
        ]}});
        Api::<Pod>::namespaced(self.client.clone(), &self.namespace)
            .patch_status(
                pod,
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Strategic(&patch),
            )
            .await
            .unwrap();
    }

    pub async fn label(&self, pod: &str, key: &str) -> Option<String> {
        self.pods_any(pod)
            .await
            .and_then(|p| p.metadata.labels.unwrap_or_default().get(key).cloned())
    }

    pub async fn annotation(&self, pod: &str, key: &str) -> Option<String> {
        self.pods_any(pod)
            .await
            .and_then(|p| p.metadata.annotations.unwrap_or_default().get(key).cloned())
    }

    async fn pods_any(&self, pod: &str) -> Option<Pod> {
        Api::<Pod>::namespaced(self.client.clone(), &self.namespace)
            .get_opt(pod)
            .await
            .ok()
            .flatten()
    }

    pub async fn status(&self, name: &str) -> serde_json::Value {
        let kvs = self.kvs_api().get(name).await.unwrap();
        serde_json::to_value(kvs.status).unwrap()
    }
}

/// A TCP proxy in front of the API server, which a test can cut: open connections are
/// dropped and new ones closed at once, as when the API is unreachable. Works on both
/// backends (TLS passes through untouched).
pub struct ApiProxy {
    /// A copy of the cluster's kubeconfig whose server is the proxy.
    pub kubeconfig: PathBuf,
    open: Arc<tokio::sync::watch::Sender<bool>>,
    _dir: tempfile::TempDir,
    task: JoinHandle<()>,
}

impl ApiProxy {
    pub async fn start(cluster: &Cluster) -> ApiProxy {
        let mut config =
            kube::config::Kubeconfig::read_from(&cluster.kubeconfig).expect("a kubeconfig");
        let named = config.clusters.first_mut().expect("a cluster");
        let server = named
            .cluster
            .as_mut()
            .and_then(|c| c.server.as_mut())
            .expect("a server");
        let uri: http::Uri = server.parse().expect("a server URL");
        let upstream = format!(
            "{}:{}",
            uri.host().expect("a host"),
            uri.port_u16().unwrap_or(443)
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        *server = format!(
            "{}://{}:{port}",
            uri.scheme_str().unwrap_or("https"),
            uri.host().unwrap()
        );
        let dir = tempfile::tempdir().unwrap();
        let kubeconfig = dir.path().join("kubeconfig");
        // YAML reads JSON.
        std::fs::write(&kubeconfig, serde_json::to_vec(&config).unwrap()).unwrap();
        let open = Arc::new(tokio::sync::watch::channel(true).0);
        let task = tokio::spawn(serve_proxy(listener, upstream, open.clone()));
        ApiProxy {
            kubeconfig,
            open,
            _dir: dir,
            task,
        }
    }

    /// The API becomes unreachable through this proxy.
    pub fn cut(&self) {
        self.open.send_replace(false);
    }

    pub fn restore(&self) {
        self.open.send_replace(true);
    }
}

impl Drop for ApiProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve_proxy(
    listener: tokio::net::TcpListener,
    upstream: String,
    open: Arc<tokio::sync::watch::Sender<bool>>,
) {
    let mut connections = tokio::task::JoinSet::new();
    while let Ok((mut client, _)) = listener.accept().await {
        if !*open.borrow() {
            continue;
        }
        let mut cut = open.subscribe();
        let upstream = upstream.clone();
        connections.spawn(async move {
            let Ok(mut server) = tokio::net::TcpStream::connect(&upstream).await else {
                return;
            };
            tokio::select! {
                _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                _ = cut.wait_for(|open| !*open) => {}
            }
        });
    }
}

/// The `kubervisor` binary as a child process, for kills without any cleanup (SIGKILL).
pub struct OperatorProcess {
    child: tokio::process::Child,
    /// The process's id when libfaketime runs in it, for what it leaves behind when killed.
    faked: Option<u32>,
}

impl OperatorProcess {
    /// `kubervisor run` against `cluster`, as `identity`.
    pub fn spawn(cluster: &Cluster, identity: &str, leader_elect: bool, log: PathBuf) -> Self {
        Self::spawn_with(cluster, identity, leader_elect, log, None)
    }

    /// Like [`OperatorProcess::spawn`], its wall clock set by `clock`.
    pub fn spawn_on(
        cluster: &Cluster,
        identity: &str,
        leader_elect: bool,
        log: PathBuf,
        clock: &SteppedClock,
    ) -> Self {
        Self::spawn_with(cluster, identity, leader_elect, log, Some(clock))
    }

    fn spawn_with(
        cluster: &Cluster,
        identity: &str,
        leader_elect: bool,
        log: PathBuf,
        clock: Option<&SteppedClock>,
    ) -> Self {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_kubervisor"));
        command
            .args(["run", "--install-crd", "--addr", "127.0.0.1:0"])
            .arg("--kubeconfig")
            .arg(&cluster.kubeconfig)
            .args(["--namespace", &cluster.namespace, "--identity", identity])
            .env("RUST_LOG", "kubervisor=debug")
            .stdout(std::process::Stdio::null())
            .stderr(file)
            .kill_on_drop(true);
        if leader_elect {
            command.arg("--leader-elect");
        }
        if let Some(clock) = clock {
            command.envs(clock.env());
        }
        let child = command.spawn().expect("the kubervisor binary starts");
        let faked = clock.and(child.id());
        OperatorProcess { child, faked }
    }

    /// SIGKILL, and waits (at most 5 s) until the process is gone.
    pub fn kill(mut self) {
        self.child.start_kill().expect("the operator is killed");
        tokio::task::block_in_place(|| {
            let deadline = Instant::now() + Duration::from_secs(5);
            while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
        });
    }
}

impl Drop for OperatorProcess {
    fn drop(&mut self) {
        // libfaketime removes its shared memory when the process exits, not when it is
        // killed; left behind, it fails a later process that gets the same pid.
        if let Some(pid) = self.faked {
            let _ = self.child.start_kill();
            for _ in 0..500 {
                if !matches!(self.child.try_wait(), Ok(None)) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            let _ = std::fs::remove_file(format!("/dev/shm/faketime_shm_{pid}"));
            let _ = std::fs::remove_file(format!("/dev/shm/sem.faketime_sem_{pid}"));
        }
    }
}

/// A wall clock the test steps, for operator processes started on it: libfaketime
/// (Debian package `faketime`) preloaded, reading its offset from a file at every reading
/// of the time, and leaving the monotonic clock alone, as an NTP step or a resumed VM
/// does. The process sees `CLOCK_REALTIME` (std's `SystemTime`) jump; its timers do not.
pub struct SteppedClock {
    library: PathBuf,
    offset_file: PathBuf,
    _dir: tempfile::TempDir,
}

impl SteppedClock {
    /// A clock `offset` seconds off the real one.
    pub fn new(offset: i64) -> SteppedClock {
        let library = libfaketime().unwrap_or_else(|| {
            panic!(
                "libfaketime (libfaketimeMT.so.1) was not found: install it (Debian/Ubuntu: `apt-get install faketime`; scripts/deps.sh does) or set {LIBFAKETIME} to its path"
            )
        });
        let dir = tempfile::tempdir().unwrap();
        let clock = SteppedClock {
            library,
            offset_file: dir.path().join("faketime.rc"),
            _dir: dir,
        };
        clock.set(offset);
        clock
    }

    /// Steps the clock to `offset` seconds off the real one, at once for running processes.
    pub fn set(&self, offset: i64) {
        // Written aside and renamed: a reader never sees a half-written offset.
        let next = self.offset_file.with_extension("next");
        std::fs::write(&next, format!("{offset:+}\n")).unwrap();
        std::fs::rename(&next, &self.offset_file).unwrap();
    }

    fn env(&self) -> Vec<(&'static str, std::ffi::OsString)> {
        vec![
            ("LD_PRELOAD", self.library.clone().into_os_string()),
            (
                "FAKETIME_TIMESTAMP_FILE",
                self.offset_file.clone().into_os_string(),
            ),
            // Read at every call, not every 10 s: the step lands when the test makes it.
            ("FAKETIME_NO_CACHE", "1".into()),
            ("FAKETIME_DONT_FAKE_MONOTONIC", "1".into()),
        ]
    }
}

/// Where the test looks for libfaketime first.
const LIBFAKETIME: &str = "KUBERVISOR_TEST_LIBFAKETIME";

/// The thread-safe libfaketime, where Debian and `make install` put it.
fn libfaketime() -> Option<PathBuf> {
    let arch = std::env::consts::ARCH;
    std::env::var_os(LIBFAKETIME)
        .map(PathBuf::from)
        .into_iter()
        .chain([
            PathBuf::from(format!(
                "/usr/lib/{arch}-linux-gnu/faketime/libfaketimeMT.so.1"
            )),
            PathBuf::from("/usr/local/lib/faketime/libfaketimeMT.so.1"),
            PathBuf::from("/usr/lib/faketime/libfaketimeMT.so.1"),
        ])
        .find(|path| path.is_file())
}

/// What the kubelet does and the real control plane's node simulator does not: a pod's
/// `Ready` condition is `True` only when its containers are ready and every readiness gate
/// condition is `True`. Runs for the pods of one namespace until aborted.
async fn follow_readiness_gates(client: Client, namespace: String) {
    use futures::StreamExt;
    use kube::runtime::watcher;
    let pods: Api<Pod> = Api::namespaced(client, &namespace);
    let mut events = std::pin::pin!(watcher::watcher(pods.clone(), watcher::Config::default()));
    while let Some(event) = events.next().await {
        let pod = match event {
            Ok(watcher::Event::Apply(pod) | watcher::Event::InitApply(pod)) => pod,
            _ => continue,
        };
        let gates: Vec<String> = pod
            .spec
            .as_ref()
            .and_then(|s| s.readiness_gates.as_ref())
            .map(|g| g.iter().map(|g| g.condition_type.clone()).collect())
            .unwrap_or_default();
        let Some(status) = pod.status.as_ref() else {
            continue;
        };
        if gates.is_empty() || status.pod_ip.is_none() || pod.metadata.deletion_timestamp.is_some()
        {
            continue;
        }
        let conditions = status.conditions.clone().unwrap_or_default();
        let is_true = |t: &str| {
            conditions
                .iter()
                .any(|c| c.type_ == t && c.status == "True")
        };
        let want = is_true("ContainersReady") && gates.iter().all(|g| is_true(g));
        if is_true("Ready") == want {
            continue;
        }
        let patch = json!({
            "metadata": {"resourceVersion": pod.metadata.resource_version},
            "status": {"conditions": [{"type": "Ready", "status": if want { "True" } else { "False" }}]},
        });
        // A conflict is followed by a newer event of the same pod.
        let _ = pods
            .patch_status(
                &pod.metadata.name.clone().unwrap_or_default(),
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Strategic(&patch),
            )
            .await;
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for (_, (_, task)) in std::mem::take(&mut self.operators) {
            task.abort();
        }
        for task in self.tasks.drain(..) {
            task.abort();
        }
        // The real control plane is shared: leave it as it was found. The operators are
        // gone, so their finalizer would hold the namespace Terminating for ever.
        if let Some(namespace) = self.real_namespace.take() {
            release_finalizers(&self.kubeconfig, &namespace.name);
        }
    }
}

/// Removes the operator's finalizer from every KubervisorService of `namespace`, with
/// kubectl (a drop cannot wait on the async client).
fn release_finalizers(kubeconfig: &std::path::Path, namespace: &str) {
    let kubectl = |args: &[&str]| {
        std::process::Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .args(["--namespace", namespace])
            .args(args)
            .output()
    };
    let Ok(listed) = kubectl(&["get", "kubervisorservices", "--output", "name"]) else {
        return;
    };
    for name in String::from_utf8_lossy(&listed.stdout).lines() {
        let patch = r#"{"metadata":{"finalizers":null}}"#;
        let _ = kubectl(&["patch", name, "--type", "merge", "--patch", patch]);
    }
}

/// An HTTP detector answering a Kubernetes PodList of the pods it is told are faulty.
pub struct CustomDetector {
    pub url: String,
    faulty: Arc<Mutex<Vec<String>>>,
    queries: Arc<std::sync::atomic::AtomicU64>,
    _server: JoinHandle<()>,
}

impl CustomDetector {
    pub async fn start() -> CustomDetector {
        let faulty: Arc<Mutex<Vec<String>>> = Arc::default();
        let queries: Arc<std::sync::atomic::AtomicU64> = Arc::default();
        let state = faulty.clone();
        let counter = queries.clone();
        let app = axum::Router::new().route(
            "/faulty",
            axum::routing::get(move || {
                let state = state.clone();
                counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                async move {
                    let names = state.lock().unwrap().clone();
                    let items: Vec<serde_json::Value> = names
                        .iter()
                        .map(|n| json!({"metadata": {"name": n}}))
                        .collect();
                    axum::Json(json!({"apiVersion": "v1", "kind": "PodList", "items": items}))
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/faulty", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        CustomDetector {
            url,
            faulty,
            queries,
            _server: server,
        }
    }

    /// Queries answered so far.
    pub fn queries(&self) -> u64 {
        self.queries.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn report(&self, pods: &[String]) {
        *self.faulty.lock().unwrap() = pods.to_vec();
    }
}
