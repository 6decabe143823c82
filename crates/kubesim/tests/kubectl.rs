//! Conformance with the real kubectl, through the kubeconfig kubesim writes.

mod common;

use common::{kubectl, kubectl_raw, require_binary, sim, wait_for};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(20);

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

#[tokio::test]
async fn kubectl_applies_watches_labels_patches_and_deletes() {
    require_binary("kubectl", "kubernetes-client");
    let sim = sim().await;
    let dir = tempfile::tempdir().unwrap();
    let kc = dir.path().join("kubeconfig");
    sim.write_kubeconfig(&kc).unwrap();
    let app = dir.path().join("app.yaml");
    std::fs::write(&app, APP).unwrap();

    let out = kubectl(&kc, &["apply", "-f", app.to_str().unwrap()]).await;
    assert!(
        out.contains("deployment.apps/web created") && out.contains("service/web created"),
        "{out}"
    );
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
        .env("HOME", dir.path())
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
    sim.shutdown().await;
}

#[tokio::test]
async fn kubectl_applies_a_crd_then_a_custom_resource_and_patches_its_status() {
    require_binary("kubectl", "kubernetes-client");
    let sim = sim().await;
    let dir = tempfile::tempdir().unwrap();
    let kc = dir.path().join("kubeconfig");
    sim.write_kubeconfig(&kc).unwrap();
    let crd = dir.path().join("crd.yaml");
    std::fs::write(&crd, CRD).unwrap();
    let widget = dir.path().join("widget.yaml");
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
    sim.shutdown().await;
}
