//! The RBAC of `deploy/` (and so of the chart, whose rules are the same: see
//! `deploy.rs`), checked by the real authorizer: the operator, running as a service
//! account bound to exactly those rules, carries a scenario that uses every kind of write
//! through to the end; and with any one verb of any one rule taken away, the same scenario
//! does not complete. So the rules are enough, and every permission they grant is needed.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::events::v1::Event;
use kube::Client;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kubervisor_api::KubervisorService;
use kubesim::testing::{Backend, RealNamespace};
use serde_json::{Value, json};

use futures::StreamExt;

use crate::tools::*;

/// How long the scenario may take; a run missing a permission fails within it.
const SCENARIO: Duration = Duration::from_secs(45);
const LEASE: &str = "kubervisor";

/// The rules granted to one run.
#[derive(Clone, Debug)]
struct Grant {
    /// What was taken away, `None` for the full set.
    without: Option<String>,
    workload: Vec<Value>,
    election: Vec<Value>,
}

/// The full rules, then each with one verb of one rule removed (a rule left with no verb
/// is dropped).
fn grants() -> Vec<Grant> {
    let workload = document("deploy/clusterrole.yaml")["rules"]
        .as_array()
        .unwrap()
        .clone();
    let election = document("deploy/role.yaml")["rules"]
        .as_array()
        .unwrap()
        .clone();
    let mut grants = vec![Grant {
        without: None,
        workload: workload.clone(),
        election: election.clone(),
    }];
    for (set, rules) in [("ClusterRole", &workload), ("Role", &election)] {
        for (i, rule) in rules.iter().enumerate() {
            for verb in strings(&rule["verbs"]) {
                let mut reduced = rules.clone();
                let verbs: Vec<String> = strings(&rule["verbs"])
                    .into_iter()
                    .filter(|v| *v != verb)
                    .collect();
                if verbs.is_empty() {
                    reduced.remove(i);
                } else {
                    reduced[i]["verbs"] = json!(verbs);
                }
                let what = format!(
                    "{set} rule {} {}: {verb}",
                    strings(&rule["resources"]).join(","),
                    strings(&rule["resourceNames"]).join(",")
                );
                let (workload, election) = if set == "ClusterRole" {
                    (reduced, election.clone())
                } else {
                    (workload.clone(), reduced)
                };
                grants.push(Grant {
                    without: Some(what),
                    workload,
                    election,
                });
            }
        }
    }
    grants
}

/// An HTTP detector answering, on each path, a PodList of the pods it is told.
struct Detector {
    url: String,
    faulty: Arc<Mutex<BTreeMap<String, Vec<String>>>>,
    _server: tokio::task::JoinHandle<()>,
}

impl Detector {
    async fn start() -> Detector {
        let faulty: Arc<Mutex<BTreeMap<String, Vec<String>>>> = Arc::default();
        let state = faulty.clone();
        let app = axum::Router::new().route(
            "/{path}",
            axum::routing::get(
                move |axum::extract::Path(path): axum::extract::Path<String>| {
                    let names = state
                        .lock()
                        .unwrap()
                        .get(&path)
                        .cloned()
                        .unwrap_or_default();
                    let items: Vec<Value> = names
                        .iter()
                        .map(|n| json!({"metadata": {"name": n}}))
                        .collect();
                    async move { axum::Json(json!({"kind": "PodList", "items": items})) }
                },
            ),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Detector {
            url,
            faulty,
            _server: server,
        }
    }

    fn report(&self, path: &str, pods: &[String]) {
        self.faulty
            .lock()
            .unwrap()
            .insert(path.to_string(), pods.to_vec());
    }
}

/// Where a run stands: its deadline and the operator's log.
struct Progress<'a> {
    deadline: Instant,
    log: &'a Path,
}

impl Progress<'_> {
    /// Waits for `check` until the deadline; the error names the stage. A refusal by the
    /// authorizer in the operator's log ends the run at once: that permission is used.
    async fn stage<F, Fut>(&self, name: &str, mut check: F) -> Result<(), String>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        loop {
            if check().await {
                return Ok(());
            }
            let log = std::fs::read_to_string(self.log).unwrap_or_default();
            if let Some(refused) = log.lines().find(|l| l.contains("is forbidden")) {
                return Err(format!("refused before {name}: {}", refused.trim()));
            }
            if Instant::now() > self.deadline {
                return Err(format!("{name} not reached within {SCENARIO:?}"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn kvs(name: &str, spec: Value) -> KubervisorService {
    serde_json::from_value(json!({
        "apiVersion": "kubervisor.k8s.io/v1alpha1", "kind": "KubervisorService",
        "metadata": {"name": name}, "spec": spec,
    }))
    .unwrap()
}

/// One breaker over the detector's `path`, killing by `kill` after one ejection.
fn killing(detector: &Detector, path: &str, kill: &str) -> Value {
    json!({
        "name": path, "evaluationPeriod": 0.3, "minPodsAvailableCount": 1,
        "customService": format!("{}/{path}", detector.url),
        "activator": {"mode": "retryAndKill", "period": 0.5, "maxRetryCount": 0, "killMethod": kill},
    })
}

async fn pod_names(client: &Client, selector: &str) -> Vec<String> {
    Api::<Pod>::default_namespaced(client.clone())
        .list(&ListParams::default().labels(selector))
        .await
        .map(|l| {
            l.items
                .into_iter()
                .filter(|p| p.metadata.deletion_timestamp.is_none())
                .filter_map(|p| p.metadata.name)
                .collect()
        })
        .unwrap_or_default()
}

/// Sets up one namespace with its own service account bound to `grant`, runs the operator
/// as that account, and plays the scenario; the first stage that does not complete is
/// the error.
async fn run(admin: &Path, grant: &Grant) -> Result<(), String> {
    let dir = tempfile::tempdir().unwrap();
    let namespace = RealNamespace::create(admin, "rbac").await;
    let ns = namespace.name.as_str();
    let client = namespace.client.clone();
    let role = format!("kubervisor-{ns}");
    let objects = json!({"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "kubervisor", "namespace": ns}},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
         "metadata": {"name": role}, "rules": grant.workload},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
         "metadata": {"name": "kubervisor", "namespace": ns},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
         "subjects": [{"kind": "ServiceAccount", "name": "kubervisor", "namespace": ns}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
         "metadata": {"name": "kubervisor-leader-election", "namespace": ns}, "rules": grant.election},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
         "metadata": {"name": "kubervisor-leader-election", "namespace": ns},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "kubervisor-leader-election"},
         "subjects": [{"kind": "ServiceAccount", "name": "kubervisor", "namespace": ns}]},
    ]});
    let file = dir.path().join("rbac.json");
    std::fs::write(&file, objects.to_string()).unwrap();
    kubectl(admin, &["apply", "-f", file.to_str().unwrap()]).await;
    let _role = ClusterRoleGuard {
        admin: admin.to_path_buf(),
        name: role.clone(),
    };
    let operator_kc = service_account_kubeconfig(admin, dir.path(), ns, "kubervisor").await;

    let log_path = dir.path().join("operator.log");
    let identity = format!("rbac-{ns}");
    let mut operator = tokio::process::Command::new(env!("CARGO_BIN_EXE_kubervisor"))
        .args([
            "run",
            "--addr=127.0.0.1:0",
            &format!("--kubeconfig={}", operator_kc.display()),
            &format!("--namespace={ns}"),
            "--leader-elect",
            &format!("--lease-namespace={ns}"),
            &format!("--lease-name={LEASE}"),
            &format!("--identity={identity}"),
        ])
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .kill_on_drop(true)
        .spawn()
        .expect("kubervisor starts");

    let detector = Detector::start().await;
    kubervisor::demo::fixtures::deploy_guarded_service(&client, ns, "web", 3, BTreeMap::new())
        .await
        .unwrap();
    let gated: Deployment = serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "gated"},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "gated"}},
                 "template": {"metadata": {"labels": {"app": "gated"}},
                              "spec": {"readinessGates": [{"conditionType": "kubervisor.k8s.io/traffic"}],
                                       "containers": [{"name": "app", "image": "example/app:1"}]}}},
    }))
    .unwrap();
    Api::<Deployment>::default_namespaced(client.clone())
        .create(&PostParams::default(), &gated)
        .await
        .unwrap();
    let service = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "gated"},
                         "spec": {"selector": {"app": "gated"}, "ports": [{"port": 80}]}});
    Api::<k8s_openapi::api::core::v1::Service>::default_namespaced(client.clone())
        .create(
            &PostParams::default(),
            &serde_json::from_value(service).unwrap(),
        )
        .await
        .unwrap();
    let kvs_api = Api::<KubervisorService>::default_namespaced(client.clone());
    kvs_api
        .create(
            &PostParams::default(),
            &kvs(
                "web",
                json!({"service": "web", "breakers": [killing(&detector, "evict", "evict"), killing(&detector, "delete", "delete")]}),
            ),
        )
        .await
        .unwrap();
    kvs_api
        .create(
            &PostParams::default(),
            &kvs(
                "gated",
                json!({"service": "gated", "trafficControl": "readinessGate",
                       "breakers": [{"name": "gated", "evaluationPeriod": 0.3, "customService": format!("{}/gated", detector.url)}],
                       "defaultActivator": {"mode": "periodic", "period": 600}}),
            ),
        )
        .await
        .unwrap();

    let progress = Progress {
        deadline: Instant::now() + SCENARIO,
        log: &log_path,
    };
    let outcome = async {
        progress
            .stage("the Lease held", || async {
                Api::<Lease>::default_namespaced(client.clone())
                    .get_opt(LEASE)
                    .await
                    .ok()
                    .flatten()
                    .and_then(|l| l.spec?.holder_identity)
                    .as_deref()
                    == Some(identity.as_str())
            })
            .await?;
        progress
            .stage("every pod adopted", || async {
                let adopted = pod_names(&client, "kubervisor/name").await.len();
                adopted == 5
            })
            .await?;
        progress
            .stage("finalizers and status written", || async {
                let list = kvs_api.list(&ListParams::default()).await.unwrap().items;
                list.len() == 2
                    && list.iter().all(|k| {
                        !k.metadata.finalizers.clone().unwrap_or_default().is_empty()
                            && k.status.as_ref().is_some_and(|s| {
                                s.conditions
                                    .iter()
                                    .any(|c| c.type_ == "Ready" && c.status == "True")
                            })
                    })
            })
            .await?;
        let web = pod_names(&client, "app=web").await;
        let gated = pod_names(&client, "app=gated").await;
        detector.report("evict", &web[..1]);
        detector.report("delete", &web[1..2]);
        detector.report("gated", &gated[..1]);
        progress
            .stage("a pod evicted", || async {
                !pod_names(&client, "app=web").await.contains(&web[0])
            })
            .await?;
        progress
            .stage("a pod deleted", || async {
                !pod_names(&client, "app=web").await.contains(&web[1])
            })
            .await?;
        progress
            .stage("a gate set False", || async {
                let pod = Api::<Pod>::default_namespaced(client.clone())
                    .get_opt(&gated[0])
                    .await
                    .ok()
                    .flatten();
                pod.and_then(|p| p.status?.conditions)
                    .unwrap_or_default()
                    .iter()
                    .any(|c| c.type_ == "kubervisor.k8s.io/traffic" && c.status == "False")
            })
            .await?;
        progress
            .stage("ejection events published", || async {
                let events = Api::<Event>::default_namespaced(client.clone())
                    .list(&ListParams::default())
                    .await
                    .map(|l| l.items)
                    .unwrap_or_default();
                events
                    .iter()
                    .filter(|e| e.reason.as_deref() == Some("PodEjected"))
                    .count()
                    >= 3
            })
            .await?;
        for name in ["web", "gated"] {
            kvs_api
                .delete(name, &DeleteParams::default())
                .await
                .unwrap();
        }
        progress
            .stage("pods handed back and finalizers removed", || async {
                kvs_api
                    .list(&ListParams::default())
                    .await
                    .unwrap()
                    .items
                    .is_empty()
                    && pod_names(&client, "kubervisor/name").await.is_empty()
            })
            .await?;
        // Leadership is kept by renewing the Lease (client-go's retry period: 2 s).
        progress
            .stage("the Lease renewed", || async {
                let spec = Api::<Lease>::default_namespaced(client.clone())
                    .get_opt(LEASE)
                    .await
                    .ok()
                    .flatten()
                    .and_then(|l| l.spec);
                spec.is_some_and(|s| {
                    s.holder_identity.as_deref() == Some(identity.as_str())
                        && s.renew_time.map(|t| t.0) > s.acquire_time.map(|t| t.0)
                })
            })
            .await?;
        Ok(())
    }
    .await;
    let _ = operator.kill().await;
    outcome
}

/// Deletes a run's ClusterRole, which its namespace does not take along.
struct ClusterRoleGuard {
    admin: std::path::PathBuf,
    name: String,
}

impl Drop for ClusterRoleGuard {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&self.admin)
            .args([
                "delete",
                "clusterrole",
                &self.name,
                "--ignore-not-found",
                "--wait=false",
            ])
            .output();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_rbac_is_enough_and_every_permission_is_needed() {
    let Some(Backend::Real(admin)) = Backend::real() else {
        return;
    };
    // The CRD, as the cluster admin installs it.
    install_crd(&admin).await;
    let grants = grants();
    let runs = grants.iter().map(|grant| {
        let admin = admin.clone();
        async move { (grant, run(&admin, grant).await) }
    });
    // A few at a time: each run is an operator and a small fleet on a shared machine.
    let results: Vec<_> = futures::stream::iter(runs).buffered(4).collect().await;
    let mut report = Vec::new();
    let mut wrong = false;
    for (grant, result) in &results {
        let what = grant.without.as_deref().unwrap_or("every rule");
        let expected = grant.without.is_none();
        wrong |= result.is_ok() != expected;
        report.push(format!(
            "{} {what}: {}",
            if result.is_ok() == expected {
                "ok  "
            } else {
                "FAIL"
            },
            match result {
                Ok(()) => "scenario completed".to_string(),
                Err(e) => e.clone(),
            }
        ));
    }
    eprintln!("{}", report.join("\n"));
    assert!(
        !wrong,
        "the full rules must carry the scenario, and each removal must stop it:\n{}",
        report.join("\n")
    );
}
