//! The Helm chart with the real `helm` (built by `scripts/cluster.sh build`): linted,
//! rendered for every combination of values that changes its shape, and installed,
//! upgraded and uninstalled on the real control plane.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use kubesim::testing::{Backend, RealNamespace, unique_name};
use serde_json::Value;

use crate::tools::*;

/// The `helm` that `scripts/cluster.sh build` built, if it did. Missing, the tests that
/// need it skip, unless `KUBERVISOR_TEST_REQUIRE_REAL` is set (then they fail).
pub fn helm_binary() -> Option<PathBuf> {
    let out = Command::new("bash")
        .arg(repo().join("scripts/cluster.sh"))
        .arg("bindir")
        .output()
        .expect("bash runs");
    let helm = PathBuf::from(text(&out.stdout).trim()).join("helm");
    if helm.is_file() {
        return Some(helm);
    }
    assert!(
        std::env::var_os("KUBERVISOR_TEST_REQUIRE_REAL").is_none(),
        "helm is not built: run `scripts/cluster.sh build` (needs Go)"
    );
    eprintln!("SKIPPED: helm is not built (`scripts/cluster.sh build` builds it)");
    None
}

/// Runs helm with its caches and configuration in `home`, never the user's.
pub fn helm(helm: &Path, home: &Path, args: &[&str]) -> Output {
    Command::new(helm)
        .args(args)
        .env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_DATA_HOME", home.join("data"))
        .output()
        .expect("helm runs")
}

fn helm_ok(helm_bin: &Path, home: &Path, args: &[&str]) -> String {
    let out = helm(helm_bin, home, args);
    assert!(
        out.status.success(),
        "helm {} failed: {}{}",
        args.join(" "),
        text(&out.stderr),
        text(&out.stdout)
    );
    text(&out.stdout)
}

fn chart() -> String {
    repo().join("charts/kubervisor").display().to_string()
}

/// The objects `helm template` renders with these `--set` values.
fn render(helm_bin: &Path, home: &Path, values: &[&str]) -> Vec<Value> {
    let chart = chart();
    let mut args = vec!["template", "kv", &chart, "-n", "ops"];
    for value in values {
        args.extend(["--set", value]);
    }
    let out = helm_ok(helm_bin, home, &args);
    serde_saphyr::from_multiple::<Value>(&out)
        .unwrap_or_else(|e| panic!("helm template {values:?} is not YAML: {e}\n{out}"))
        .into_iter()
        .filter(|d| !d.is_null())
        .collect()
}

fn kinds(objects: &[Value]) -> BTreeSet<String> {
    objects
        .iter()
        .map(|o| o["kind"].as_str().unwrap().to_string())
        .collect()
}

fn find<'a>(objects: &'a [Value], kind: &str) -> Vec<&'a Value> {
    objects.iter().filter(|o| o["kind"] == kind).collect()
}

fn args(objects: &[Value]) -> Vec<String> {
    let deployment = find(objects, "Deployment")[0];
    strings(&deployment["spec"]["template"]["spec"]["containers"][0]["args"])
}

#[test]
fn chart_lints_strictly_and_renders_every_shape() {
    let Some(helm_bin) = helm_binary() else {
        return;
    };
    let home = tempfile::tempdir().unwrap();
    let home = home.path();
    let lint = helm_ok(&helm_bin, home, &["lint", "--strict", &chart()]);
    assert!(lint.contains("0 chart(s) failed"), "{lint}");

    // Defaults: every namespace watched (ClusterRole), two elected replicas.
    let objects = render(&helm_bin, home, &[]);
    for object in &objects {
        assert!(object["apiVersion"].is_string(), "{object}");
        assert!(object["metadata"]["name"].is_string(), "{object}");
    }
    assert_eq!(
        kinds(&objects),
        [
            "ClusterRole",
            "ClusterRoleBinding",
            "Deployment",
            "Role",
            "RoleBinding",
            "Service",
            "ServiceAccount"
        ]
        .map(String::from)
        .into()
    );
    assert_eq!(find(&objects, "Deployment")[0]["spec"]["replicas"], 2);
    assert!(args(&objects).contains(&"--leader-elect".to_string()));
    assert!(!args(&objects).iter().any(|a| a.starts_with("--namespace")));

    // One namespace watched: the workload rules become a Role there.
    let objects = render(&helm_bin, home, &["watchNamespace=shop"]);
    assert!(find(&objects, "ClusterRole").is_empty());
    let roles = find(&objects, "Role");
    assert!(
        roles.iter().any(|r| r["metadata"]["namespace"] == "shop"
            && r["rules"]
                .as_array()
                .unwrap()
                .iter()
                .any(|rule| rule["resources"][0] == "pods")),
        "{roles:?}"
    );
    assert!(args(&objects).contains(&"--namespace=shop".to_string()));

    // installCRD: the operator installs the CRD, with the rights to.
    let objects = render(&helm_bin, home, &["installCRD=true"]);
    assert!(args(&objects).contains(&"--install-crd".to_string()));
    assert!(
        find(&objects, "ClusterRole")
            .iter()
            .any(|r| r["rules"][0]["resources"][0] == "customresourcedefinitions"),
        "{:?}",
        find(&objects, "ClusterRole")
    );

    // One replica, with and without election.
    let objects = render(&helm_bin, home, &["replicaCount=1"]);
    assert_eq!(find(&objects, "Deployment")[0]["spec"]["replicas"], 1);
    let objects = render(
        &helm_bin,
        home,
        &["replicaCount=1", "leaderElection.enabled=false"],
    );
    assert!(!args(&objects).contains(&"--leader-elect".to_string()));
    assert!(
        find(&objects, "Role").is_empty(),
        "no Lease rights without election"
    );

    // Replicas without election would all act: refused, with the reason.
    let out = helm(
        &helm_bin,
        home,
        &[
            "template",
            "kv",
            &chart(),
            "--set",
            "replicaCount=2",
            "--set",
            "leaderElection.enabled=false",
        ],
    );
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("replicaCount > 1 needs leaderElection.enabled"),
        "{}",
        text(&out.stderr)
    );
}

/// Uninstalls the release if the test stops half way.
struct Release<'a> {
    helm: &'a Path,
    home: &'a Path,
    kubeconfig: &'a Path,
    name: String,
    namespace: String,
}

impl Drop for Release<'_> {
    fn drop(&mut self) {
        let kubeconfig = self.kubeconfig.display().to_string();
        let _ = helm(
            self.helm,
            self.home,
            &[
                "uninstall",
                &self.name,
                "-n",
                &self.namespace,
                "--kubeconfig",
                &kubeconfig,
                "--ignore-not-found",
            ],
        );
    }
}

/// `kind/name` of every object of a manifest, with its namespace flag when namespaced.
fn object_refs(manifest: &str) -> Vec<(String, Option<String>)> {
    serde_saphyr::from_multiple::<Value>(manifest)
        .unwrap()
        .into_iter()
        .filter(|d| !d.is_null())
        .map(|d| {
            (
                format!(
                    "{}/{}",
                    d["kind"].as_str().unwrap().to_lowercase(),
                    d["metadata"]["name"].as_str().unwrap()
                ),
                d["metadata"]["namespace"].as_str().map(String::from),
            )
        })
        .collect()
}

#[tokio::test]
async fn helm_installs_upgrades_and_uninstalls_on_the_real_control_plane() {
    let Some(Backend::Real(admin)) = Backend::real() else {
        return;
    };
    let Some(helm_bin) = helm_binary() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path();
    let kubeconfig = home.join("kubeconfig");
    std::fs::copy(&admin, &kubeconfig).unwrap();
    let kc = kubeconfig.display().to_string();
    let namespace = RealNamespace::create(&admin, "helm").await;
    let release = Release {
        helm: &helm_bin,
        home,
        kubeconfig: &kubeconfig,
        name: unique_name("kv"),
        namespace: namespace.name.clone(),
    };
    let (name, ns) = (release.name.as_str(), release.namespace.as_str());
    let chart = chart();
    // The README's command: with the alerts and the dashboard, on a cluster that has the
    // Prometheus operator's CRDs.
    install_prometheus_rule_crd(&admin).await;
    let monitoring = [
        "--set",
        "prometheusRule.enabled=true",
        "--set",
        "dashboards.enabled=true",
    ];

    // Every rendered object is accepted by the API server's own validation first.
    helm_ok(
        &helm_bin,
        home,
        &[
            "install",
            name,
            &chart,
            "-n",
            ns,
            "--kubeconfig",
            &kc,
            "--dry-run=server",
        ]
        .into_iter()
        .chain(monitoring)
        .collect::<Vec<_>>(),
    );
    helm_ok(
        &helm_bin,
        home,
        &[
            "install",
            name,
            &chart,
            "-n",
            ns,
            "--kubeconfig",
            &kc,
            "--wait",
            "--timeout",
            "120s",
        ]
        .into_iter()
        .chain(monitoring)
        .collect::<Vec<_>>(),
    );
    let manifest = helm_ok(
        &helm_bin,
        home,
        &["get", "manifest", name, "-n", ns, "--kubeconfig", &kc],
    );
    let objects = object_refs(&manifest);
    assert_eq!(objects.len(), 9, "{objects:?}");
    for kind in ["prometheusrule/", "configmap/"] {
        assert!(
            objects.iter().any(|(object, _)| object.starts_with(kind)),
            "no {kind} in {objects:?}"
        );
    }
    for (object, namespace) in &objects {
        let mut args = vec!["get", object.as_str(), "-o", "name"];
        if let Some(ns) = namespace {
            args.extend(["-n", ns]);
        }
        kubectl(&kubeconfig, &args).await;
    }
    let deployment = objects
        .iter()
        .map(|(object, _)| object.clone())
        .find(|object| object.starts_with("deployment/"))
        .expect("a Deployment");
    let replicas = |n: &'static str| {
        let kubeconfig = kubeconfig.clone();
        let deployment = deployment.clone();
        async move {
            let ready = kubectl(
                &kubeconfig,
                &[
                    "-n",
                    ns,
                    "get",
                    &deployment,
                    "-o",
                    "jsonpath={.status.readyReplicas}",
                ],
            )
            .await;
            (ready == n).then_some(())
        }
    };
    wait_for("two ready replicas", Duration::from_secs(60), || {
        replicas("2")
    })
    .await;

    // An upgrade changes what it says, and keeps the rest.
    helm_ok(
        &helm_bin,
        home,
        &[
            "upgrade",
            name,
            &chart,
            "-n",
            ns,
            "--kubeconfig",
            &kc,
            "--reuse-values",
            "--set",
            "replicaCount=3",
            "--wait",
            "--timeout",
            "120s",
        ],
    );
    wait_for("three ready replicas", Duration::from_secs(60), || {
        replicas("3")
    })
    .await;
    let history = helm_ok(
        &helm_bin,
        home,
        &["history", name, "-n", ns, "--kubeconfig", &kc, "-o", "json"],
    );
    let history: Value = serde_json::from_str(&history).unwrap();
    assert_eq!(history.as_array().map(Vec::len), Some(2), "{history}");

    // Uninstalled: every object it created is gone.
    helm_ok(
        &helm_bin,
        home,
        &["uninstall", name, "-n", ns, "--kubeconfig", &kc, "--wait"],
    );
    for (object, namespace) in &objects {
        let mut args = vec!["get", object.as_str(), "--ignore-not-found", "-o", "name"];
        if let Some(ns) = namespace {
            args.extend(["-n", ns]);
        }
        let left = kubectl(&kubeconfig, &args).await;
        assert!(left.trim().is_empty(), "{object} left after uninstall");
    }
}
