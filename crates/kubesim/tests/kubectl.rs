//! Conformance with the real kubectl, through the kubeconfig kubesim writes. Each test
//! runs on kubesim and on the real control plane (`on_both_backends!`), so the same
//! assertions hold on both.

mod common;

use common::{kubectl, kubectl_raw, require_binary, sim, wait_for};
use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Secret, Service, ServiceAccount};
use k8s_openapi::api::events::v1::Event as NewEvent;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, ListParams, PostParams};
use kubesim::Sim;
use kubesim::on_both_backends;
use kubesim::testing::{Backend, RealNamespace, unique_name};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(20);

/// The cluster of one test: its own kubesim, or a namespace of its own on the shared real
/// control plane; `kc` defaults to that namespace.
struct Target {
    sim: Option<Sim>,
    /// Defaults to `ns`.
    client: kube::Client,
    ns: String,
    kc: PathBuf,
    dir: tempfile::TempDir,
    backend: Backend,
    real_namespaces: Vec<RealNamespace>,
}

impl Target {
    async fn start(backend: Backend) -> Target {
        require_binary("kubectl", "kubernetes-client");
        let dir = tempfile::tempdir().unwrap();
        let kc = dir.path().join("kubeconfig");
        match &backend {
            Backend::Kubesim => {
                let sim = sim().await;
                sim.write_kubeconfig(&kc).unwrap();
                Target {
                    client: sim.client(),
                    sim: Some(sim),
                    ns: "default".into(),
                    kc,
                    dir,
                    backend,
                    real_namespaces: Vec::new(),
                }
            }
            Backend::Real(admin) => {
                let namespace = RealNamespace::create(admin, "kubectl").await;
                namespace.write_kubeconfig(&kc);
                Target {
                    sim: None,
                    client: namespace.client.clone(),
                    ns: namespace.name.clone(),
                    kc,
                    dir,
                    backend,
                    real_namespaces: vec![namespace],
                }
            }
        }
    }

    /// A name for a namespace the test creates itself: `name` on kubesim, a unique one
    /// (deleted when the test ends) on the shared real control plane.
    async fn new_namespace_name(&mut self, name: &str) -> String {
        match &self.backend {
            Backend::Kubesim => name.to_string(),
            Backend::Real(admin) => {
                let name = unique_name(name);
                self.real_namespaces
                    .push(RealNamespace::adopt(admin, &name).await);
                name
            }
        }
    }

    fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    async fn shutdown(self) {
        if let Some(sim) = self.sim {
            sim.shutdown().await;
        }
    }
}

const APP: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  replicas: 3
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web, kubervisor/traffic: "yes"}
    spec:
      containers:
      - name: app
        image: example/web:1
        ports: [{containerPort: 8080, name: http}]
---
apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  selector: {app: web, kubervisor/traffic: "yes"}
  ports: [{port: 80, targetPort: http}]
"#;

const CRD: &str = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.example.io
spec:
  group: example.io
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget, shortNames: [wd]}
  versions:
  - name: v1
    served: true
    storage: true
    subresources: {status: {}}
    schema:
      openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}
---
"#;

const WIDGET: &str = r#"
apiVersion: example.io/v1
kind: Widget
metadata:
  name: w1
spec:
  size: 3
"#;

on_both_backends! {
async fn kubectl_applies_watches_labels_patches_and_deletes(backend: Backend) {
    let target = Target::start(backend).await;
    let kc = target.kc.clone();
    let app = target.path("app.yaml");
    std::fs::write(&app, APP).unwrap();

    let out = kubectl(&kc, &["apply", "-f", app.to_str().unwrap()]).await;
    assert!(
        out.contains("deployment.apps/web created") && out.contains("service/web created"),
        "{out}"
    );
    // `kubectl wait` fails on no pods at all; a real Deployment creates them asynchronously.
    wait_for("three pods of the Deployment", WAIT, || async {
        let names = kubectl(&kc, &["get", "pods", "-l", "app=web", "-o", "name"]).await;
        (names.lines().count() == 3).then_some(())
    })
    .await;
    kubectl(
        &kc,
        &[
            "wait",
            "--for=condition=Ready",
            "pods",
            "-l",
            "app=web",
            "--timeout=20s",
        ],
    )
    .await;
    let ips = wait_for("three endpoint addresses", WAIT, || async {
        let ips = kubectl(
            &kc,
            &[
                "get",
                "endpoints",
                "web",
                "-o",
                "jsonpath={.subsets[0].addresses[*].ip}",
            ],
        )
        .await;
        (ips.split_whitespace().count() == 3).then_some(ips)
    })
    .await;
    assert!(
        ips.split_whitespace().all(|ip| ip.starts_with("127.")),
        "{ips}"
    );

    // Re-applying a changed manifest is a strategic merge patch that keeps the container's ports.
    std::fs::write(&app, APP.replace("example/web:1", "example/web:2")).unwrap();
    let out = kubectl(&kc, &["apply", "-f", app.to_str().unwrap()]).await;
    assert!(out.contains("deployment.apps/web configured"), "{out}");
    let ports = kubectl(
        &kc,
        &[
            "get",
            "deploy",
            "web",
            "-o",
            "jsonpath={.spec.template.spec.containers[0].ports[0].containerPort}",
        ],
    )
    .await;
    assert_eq!(ports, "8080");

    // A watch sees the label change.
    let bin = require_binary("kubectl", "kubernetes-client");
    let mut child = Command::new(bin)
        .args([
            "get",
            "pods",
            "-l",
            "kubervisor/traffic=no",
            "-w",
            "-o",
            "name",
        ])
        .env("KUBECONFIG", &kc)
        .env("HOME", target.dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let seen = Arc::new(Mutex::new(String::new()));
    let reader = {
        let seen = seen.clone();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                seen.lock().unwrap().push_str(&format!("{line}\n"));
            }
        })
    };
    let pod = wait_for("new pods after the rollout", WAIT, || async {
        let names = kubectl(
            &kc,
            &[
                "get",
                "pods",
                "-l",
                "app=web",
                "-o",
                "jsonpath={.items[*].metadata.name}",
            ],
        )
        .await;
        let images = kubectl(
            &kc,
            &[
                "get",
                "pods",
                "-l",
                "app=web",
                "-o",
                "jsonpath={.items[*].spec.containers[0].image}",
            ],
        )
        .await;
        (names.split_whitespace().count() == 3
            && images.split_whitespace().all(|i| i == "example/web:2"))
        .then(|| names.split_whitespace().next().unwrap().to_string())
    })
    .await;
    kubectl(
        &kc,
        &["label", "pod", &pod, "kubervisor/traffic=no", "--overwrite"],
    )
    .await;
    wait_for("kubectl get -w prints the relabelled pod", WAIT, || async {
        seen.lock().unwrap().contains(&pod).then_some(())
    })
    .await;
    let _ = child.kill();
    let _ = child.wait();
    let _ = reader.join();
    wait_for("relabelled pod leaves the endpoints", WAIT, || async {
        let names = kubectl(
            &kc,
            &[
                "get",
                "endpoints",
                "web",
                "-o",
                "jsonpath={.subsets[0].addresses[*].targetRef.name}",
            ],
        )
        .await;
        (!names.contains(&pod)).then_some(())
    })
    .await;

    kubectl(
        &kc,
        &[
            "patch",
            "deployment",
            "web",
            "-p",
            r#"{"spec":{"replicas":1}}"#,
        ],
    )
    .await;
    kubectl(
        &kc,
        &[
            "patch",
            "deployment",
            "web",
            "--type=merge",
            "-p",
            r#"{"metadata":{"annotations":{"note":"x"}}}"#,
        ],
    )
    .await;
    let failed = kubectl_raw(
        &kc,
        &[
            "patch",
            "deployment",
            "web",
            "--type=json",
            "-p",
            r#"[{"op":"test","path":"/spec/replicas","value":7}]"#,
        ],
    )
    .await;
    assert!(!failed.status.success());
    assert_eq!(
        kubectl(
            &kc,
            &["get", "deploy", "web", "-o", "jsonpath={.spec.replicas}"]
        )
        .await,
        "1"
    );

    let out = kubectl(&kc, &["get", "pods"]).await;
    assert!(out.contains("NAME"), "{out}");
    kubectl(
        &kc,
        &["delete", "-f", app.to_str().unwrap(), "--timeout=20s"],
    )
    .await;
    wait_for("everything is gone", WAIT, || async {
        kubectl(&kc, &["get", "pods", "-o", "name"])
            .await
            .trim()
            .is_empty()
            .then_some(())
    })
    .await;
    let missing = kubectl_raw(&kc, &["get", "deployment", "web"]).await;
    assert!(String::from_utf8_lossy(&missing.stderr).contains("NotFound"));
    target.shutdown().await;
}
}

on_both_backends! {
async fn kubectl_applies_a_crd_then_a_custom_resource_and_patches_its_status(backend: Backend) {
    let target = Target::start(backend).await;
    let kc = target.kc.clone();
    let crd = target.path("crd.yaml");
    std::fs::write(&crd, CRD).unwrap();
    let widget = target.path("widget.yaml");
    std::fs::write(&widget, WIDGET).unwrap();

    kubectl(&kc, &["apply", "-f", crd.to_str().unwrap()]).await;
    kubectl(
        &kc,
        &[
            "wait",
            "--for=condition=Established",
            "crd/widgets.example.io",
            "--timeout=10s",
        ],
    )
    .await;
    kubectl(&kc, &["apply", "-f", widget.to_str().unwrap()]).await;
    assert_eq!(
        kubectl(&kc, &["get", "wd", "w1", "-o", "jsonpath={.spec.size}"]).await,
        "3"
    );
    kubectl(
        &kc,
        &[
            "patch",
            "widget",
            "w1",
            "--subresource=status",
            "--type=merge",
            "-p",
            r#"{"status":{"phase":"Ready"}}"#,
        ],
    )
    .await;
    assert_eq!(
        kubectl(
            &kc,
            &["get", "widgets", "w1", "-o", "jsonpath={.status.phase}"]
        )
        .await,
        "Ready"
    );
    std::fs::write(&widget, WIDGET.replace("size: 3", "size: 4")).unwrap();
    kubectl(&kc, &["apply", "-f", widget.to_str().unwrap()]).await;
    assert_eq!(
        kubectl(
            &kc,
            &[
                "get",
                "widget",
                "w1",
                "-o",
                "jsonpath={.metadata.generation} {.spec.size} {.status.phase}"
            ]
        )
        .await,
        "2 4 Ready"
    );
    kubectl(&kc, &["delete", "widget", "w1"]).await;
    kubectl(&kc, &["delete", "-f", crd.to_str().unwrap()]).await;
    target.shutdown().await;
}
}

fn labels(pairs: &[(&str, &str)]) -> Option<BTreeMap<String, String>> {
    Some(
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    )
}

on_both_backends! {
/// kubectl's generators send protobuf bodies (checked with `-v=8`); kubesim must decode
/// every field they carry, and `kubectl scale` patches the scale subresource.
/// On the real control plane, the same commands build the objects these assertions expect.
async fn kubectl_generators_send_protobuf_that_kubesim_decodes(backend: Backend) {
    let mut target = Target::start(backend).await;
    let kc = target.kc.clone();
    let client = target.client.clone();

    let shop = target.new_namespace_name("shop").await;
    let shop = shop.as_str();
    kubectl(&kc, &["create", "namespace", shop]).await;
    let run = |args: &'static [&'static str]| {
        let kc = kc.clone();
        async move {
            let mut all = vec!["-n", shop];
            all.extend_from_slice(args);
            kubectl(&kc, &all).await
        }
    };
    run(&[
        "create",
        "deployment",
        "web",
        "--image=example/web:1",
        "--replicas=3",
        "--port=8080",
    ])
    .await;
    run(&[
        "expose",
        "deployment",
        "web",
        "--port=80",
        "--target-port=8080",
    ])
    .await;
    run(&["create", "service", "clusterip", "api", "--tcp=443:8443"]).await;
    run(&[
        "create",
        "configmap",
        "settings",
        "--from-literal=mode=fast",
    ])
    .await;
    run(&[
        "create",
        "secret",
        "generic",
        "token",
        "--from-literal=key=s3cret",
    ])
    .await;
    run(&["create", "serviceaccount", "robot"]).await;

    let namespace = Api::<Namespace>::all(client.clone())
        .get(shop)
        .await
        .unwrap();
    assert_eq!(
        namespace.status.and_then(|s| s.phase).as_deref(),
        Some("Active")
    );

    let deploy = Api::<Deployment>::namespaced(client.clone(), shop)
        .get("web")
        .await
        .unwrap();
    let spec = deploy.spec.unwrap();
    assert_eq!(spec.replicas, Some(3));
    assert_eq!(spec.selector.match_labels, labels(&[("app", "web")]));
    let template = spec.template;
    assert_eq!(
        template.metadata.and_then(|m| m.labels),
        labels(&[("app", "web")])
    );
    let container = &template.spec.unwrap().containers[0];
    assert_eq!(container.name, "web");
    assert_eq!(container.image.as_deref(), Some("example/web:1"));
    assert_eq!(container.ports.as_ref().unwrap()[0].container_port, 8080);

    let services = Api::<Service>::namespaced(client.clone(), shop);
    let web = services.get("web").await.unwrap().spec.unwrap();
    assert_eq!(web.selector, labels(&[("app", "web")]));
    let port = &web.ports.unwrap()[0];
    assert_eq!(
        (port.port, port.target_port.clone()),
        (80, Some(IntOrString::Int(8080)))
    );
    let api = services.get("api").await.unwrap().spec.unwrap();
    assert_eq!(api.selector, labels(&[("app", "api")]));
    let port = &api.ports.unwrap()[0];
    assert_eq!(
        (port.name.as_deref(), port.port, port.target_port.clone()),
        (Some("443-8443"), 443, Some(IntOrString::Int(8443)))
    );

    let settings = Api::<ConfigMap>::namespaced(client.clone(), shop)
        .get("settings")
        .await
        .unwrap();
    assert_eq!(settings.data, labels(&[("mode", "fast")]));
    let token = Api::<Secret>::namespaced(client.clone(), shop)
        .get("token")
        .await
        .unwrap();
    assert_eq!(
        token.data.unwrap().get("key"),
        Some(&ByteString(b"s3cret".to_vec()))
    );
    assert_eq!(token.type_.as_deref(), Some("Opaque"));
    Api::<ServiceAccount>::namespaced(client.clone(), shop)
        .get("robot")
        .await
        .unwrap();

    // The Deployment made from a protobuf body runs its pods, and kubectl scale resizes it.
    let pods = Api::<Pod>::namespaced(client.clone(), shop);
    let count_pods = |n: usize| {
        let pods = pods.clone();
        async move {
            let list = pods
                .list(&ListParams::default().labels("app=web"))
                .await
                .unwrap();
            (list.items.len() == n).then_some(())
        }
    };
    wait_for("three pods", WAIT, || count_pods(3)).await;
    let out = run(&["scale", "deployment", "web", "--replicas=5"]).await;
    assert!(out.contains("deployment.apps/web scaled"), "{out}");
    wait_for("five pods", WAIT, || count_pods(5)).await;
    let scale: serde_json::Value = serde_json::from_str(
        &kubectl(
            &kc,
            &[
                "get",
                "--raw",
                &format!("/apis/apps/v1/namespaces/{shop}/deployments/web/scale"),
            ],
        )
        .await,
    )
    .unwrap();
    assert_eq!(scale["kind"], "Scale");
    assert_eq!(scale["spec"]["replicas"], 5);
    assert_eq!(scale["status"]["selector"], "app=web");
    // With a precondition kubectl reads the Scale and replaces it (GET then PUT).
    let out = run(&[
        "scale",
        "deployment",
        "web",
        "--current-replicas=5",
        "--replicas=2",
    ])
    .await;
    assert!(out.contains("deployment.apps/web scaled"), "{out}");
    wait_for("two pods", WAIT, || count_pods(2)).await;
    let wrong = kubectl_raw(
        &kc,
        &[
            "-n",
            shop,
            "scale",
            "deployment",
            "web",
            "--current-replicas=7",
            "--replicas=1",
        ],
    )
    .await;
    assert!(!wrong.status.success());
    assert_eq!(
        Api::<Deployment>::namespaced(client.clone(), shop)
            .get("web")
            .await
            .unwrap()
            .spec
            .unwrap()
            .replicas,
        Some(2)
    );
    target.shutdown().await;
}
}

on_both_backends! {
/// `kubectl get events` and `kubectl describe pod` read core v1 Events; what an operator
/// writes through events.k8s.io/v1 must show there.
async fn kubectl_describe_shows_events_written_through_events_k8s_io(backend: Backend) {
    let target = Target::start(backend).await;
    let kc = target.kc.clone();
    kubectl(&kc, &["run", "web-1", "--image=example/web:1"]).await;
    let uid = kubectl(
        &kc,
        &["get", "pod", "web-1", "-o", "jsonpath={.metadata.uid}"],
    )
    .await;
    let ev: NewEvent = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "web-1.ejected"},
        "eventTime": kubesim_now_micro(),
        "regarding": {"apiVersion": "v1", "kind": "Pod", "name": "web-1", "namespace": target.ns, "uid": uid},
        "note": "ejected by breaker error-rate", "reason": "PodEjected", "action": "Eject",
        "type": "Warning", "reportingController": "kubervisor", "reportingInstance": "kubervisor-0",
    }))
    .unwrap();
    Api::<NewEvent>::default_namespaced(target.client.clone())
        .create(&PostParams::default(), &ev)
        .await
        .unwrap();

    let listed = kubectl(
        &kc,
        &[
            "get",
            "events",
            // A real control plane writes events of its own about the pod (Scheduled...).
            "--field-selector",
            "involvedObject.name=web-1,reason=PodEjected",
            "-o",
            "jsonpath={.items[*].message}",
        ],
    )
    .await;
    assert_eq!(listed, "ejected by breaker error-rate");
    let described = kubectl(&kc, &["describe", "pod", "web-1"]).await;
    let line = described
        .lines()
        .find(|l| l.contains("PodEjected"))
        .unwrap_or_else(|| panic!("no event in:\n{described}"));
    assert!(
        line.contains("Warning")
            && line.contains("kubervisor")
            && line.contains("ejected by breaker error-rate"),
        "{line}"
    );
    target.shutdown().await;
}
}

fn kubesim_now_micro() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    let t = jiff::Timestamp::from_second(now.as_secs() as i64).unwrap();
    format!(
        "{}.{:06}Z",
        t.to_string().trim_end_matches('Z'),
        now.subsec_micros()
    )
}
