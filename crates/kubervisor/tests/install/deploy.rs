//! The installation artefacts: `deploy/` applied with the real kubectl (to kubesim and to
//! the real control plane) and the operator started with the Deployment's own command line,
//! the generated CRD copies, the RBAC rules, the Helm chart's static files, the Dockerfile
//! and the examples.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kubesim::on_both_backends;
use kubesim::testing::{Backend, RealNamespace};
use kubesim::{Sim, SimConfig};
use serde_json::Value;

use crate::tools::*;

const WAIT: Duration = Duration::from_secs(30);
const NAMESPACE: &str = "kubervisor-system";

/// The CRD as the binary prints it today: the source of truth for every committed copy.
fn generated_crd() -> Value {
    let out = kubervisor(&["crd"]);
    assert!(
        out.status.success(),
        "kubervisor crd: {}",
        text(&out.stderr)
    );
    serde_saphyr::from_str(&text(&out.stdout)).expect("kubervisor crd prints YAML")
}

/// The path of the first place where two values differ, for a readable failure.
fn first_difference(a: &Value, b: &Value, path: String) -> Option<String> {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            keys.into_iter().find_map(|k| match (x.get(k), y.get(k)) {
                (Some(u), Some(v)) => first_difference(u, v, format!("{path}.{k}")),
                _ => Some(format!("{path}.{k}")),
            })
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => x
            .iter()
            .zip(y)
            .enumerate()
            .find_map(|(i, (u, v))| first_difference(u, v, format!("{path}[{i}]"))),
        _ if a == b => None,
        _ => Some(path),
    }
}

fn assert_is_generated_crd(relative: &str) {
    if let Some(path) = first_difference(&document(relative), &generated_crd(), String::new()) {
        panic!(
            "{relative} differs from `kubervisor crd` at `{path}`: regenerate it with \
             `cargo run -p kubervisor -- crd > {relative}`"
        );
    }
}

fn deployment_container() -> Value {
    document("deploy/deployment.yaml")["spec"]["template"]["spec"]["containers"][0].clone()
}

/// What `kubectl apply -k deploy/` installs at cluster scope, besides the CRD.
const CLUSTER_OBJECTS: [&str; 2] = ["clusterrole/kubervisor", "clusterrolebinding/kubervisor"];

/// On the shared real control plane, removes what `deploy/` installed, before (leftovers of
/// an interrupted run) and after the test. The CRD stays: other tests use it meanwhile.
struct Uninstall {
    kubeconfig: PathBuf,
}

impl Uninstall {
    async fn before(kubeconfig: &Path) -> Uninstall {
        for args in [
            &[
                "delete",
                "namespace",
                NAMESPACE,
                "--ignore-not-found",
                "--timeout=60s",
            ][..],
            &[
                "delete",
                CLUSTER_OBJECTS[0],
                CLUSTER_OBJECTS[1],
                "--ignore-not-found",
            ][..],
        ] {
            kubectl(kubeconfig, args).await;
        }
        Uninstall {
            kubeconfig: kubeconfig.to_path_buf(),
        }
    }
}

impl Drop for Uninstall {
    fn drop(&mut self) {
        for args in [
            &[
                "delete",
                "namespace",
                NAMESPACE,
                "--ignore-not-found",
                "--wait=false",
            ][..],
            &[
                "delete",
                CLUSTER_OBJECTS[0],
                CLUSTER_OBJECTS[1],
                "--ignore-not-found",
            ][..],
        ] {
            let _ = Command::new("kubectl")
                .args(args)
                .env("KUBECONFIG", &self.kubeconfig)
                .output();
        }
    }
}

on_both_backends! {
async fn kubectl_apply_k_deploy_installs_a_working_operator(backend: Backend) {
    require_binary("kubectl", "kubernetes-client");
    let dir = tempfile::tempdir().unwrap();
    let kc = dir.path().join("kubeconfig");
    // Where the example goes: `default` on kubesim, a namespace of its own on a real server.
    let (sim, real) = match &backend {
        Backend::Kubesim => {
            let sim = Sim::start(SimConfig {
                ready_delay: Duration::from_millis(100),
                ..Default::default()
            })
            .await
            .expect("kubesim starts");
            sim.write_kubeconfig(&kc).unwrap();
            (Some(sim), None)
        }
        Backend::Real(admin) => {
            std::fs::copy(admin, &kc).unwrap();
            let uninstall = Uninstall::before(&kc).await;
            let examples = RealNamespace::create(admin, "deploy-examples").await;
            (None, Some((uninstall, examples)))
        }
    };
    let examples_ns = real.as_ref().map_or("default", |(_, ns)| ns.name.as_str());
    let deploy = repo().join("deploy");
    let deploy = deploy.to_str().unwrap();

    let out = kubectl(&kc, &["apply", "-k", deploy]).await;
    // The operator tests install the same CRD (`--install-crd`) on the shared real control
    // plane, maybe before this test: there it may already exist.
    let crd = "customresourcedefinition.apiextensions.k8s.io/kubervisorservices.kubervisor.k8s.io";
    let crd_outcomes: &[&str] = if real.is_some() {
        &["created", "configured", "unchanged"]
    } else {
        &["created"]
    };
    assert!(
        crd_outcomes
            .iter()
            .any(|outcome| out.contains(&format!("{crd} {outcome}"))),
        "`{crd} {crd_outcomes:?}` missing from:\n{out}"
    );
    for created in [
        "namespace/kubervisor-system created",
        "serviceaccount/kubervisor created",
        "clusterrole.rbac.authorization.k8s.io/kubervisor created",
        "clusterrolebinding.rbac.authorization.k8s.io/kubervisor created",
        "role.rbac.authorization.k8s.io/kubervisor-leader-election created",
        "rolebinding.rbac.authorization.k8s.io/kubervisor-leader-election created",
        "deployment.apps/kubervisor created",
        "service/kubervisor-metrics created",
    ] {
        assert!(out.contains(created), "`{created}` missing from:\n{out}");
    }
    for (args, name) in [
        (
            vec!["get", "namespace", NAMESPACE],
            "namespace/kubervisor-system",
        ),
        (
            vec!["get", "crd", "kubervisorservices.kubervisor.k8s.io"],
            "customresourcedefinition.apiextensions.k8s.io/kubervisorservices.kubervisor.k8s.io",
        ),
        (
            vec!["get", "clusterrole", "kubervisor"],
            "clusterrole.rbac.authorization.k8s.io/kubervisor",
        ),
        (
            vec!["get", "clusterrolebinding", "kubervisor"],
            "clusterrolebinding.rbac.authorization.k8s.io/kubervisor",
        ),
        (
            vec!["-n", NAMESPACE, "get", "serviceaccount", "kubervisor"],
            "serviceaccount/kubervisor",
        ),
        (
            vec!["-n", NAMESPACE, "get", "deployment", "kubervisor"],
            "deployment.apps/kubervisor",
        ),
        (
            vec!["-n", NAMESPACE, "get", "service", "kubervisor-metrics"],
            "service/kubervisor-metrics",
        ),
    ] {
        let args: Vec<&str> = args.into_iter().chain(["-o", "name"]).collect();
        assert_eq!(kubectl(&kc, &args).await.trim(), name);
    }

    kubectl(
        &kc,
        &[
            "wait",
            "--for=condition=Established",
            "crd/kubervisorservices.kubervisor.k8s.io",
            "--timeout=30s",
        ],
    )
    .await;

    // The Deployment is well-formed enough for the controllers to run both replicas: on a
    // real server they are scheduled to (fake) nodes and reported Ready.
    wait_for("two ready kubervisor replicas", WAIT, || async {
        let ready = kubectl(
            &kc,
            &[
                "-n",
                NAMESPACE,
                "get",
                "deployment",
                "kubervisor",
                "-o",
                "jsonpath={.status.readyReplicas}",
            ],
        )
        .await;
        (ready == "2").then_some(())
    })
    .await;

    // The CRD is served: the short name resolves and an example is stored.
    kubectl(&kc, &["get", "kvs", "-A"]).await;
    let example = repo().join("examples/discrete-http-codes.yaml");
    kubectl(
        &kc,
        &["apply", "-n", examples_ns, "-f", example.to_str().unwrap()],
    )
    .await;
    let guarded = kubectl(
        &kc,
        &[
            "-n",
            examples_ns,
            "get",
            "kvs",
            "web",
            "-o",
            "jsonpath={.spec.service}",
        ],
    )
    .await;
    assert_eq!(guarded, "web");

    // Installing again is an upgrade that changes nothing.
    let again = kubectl(&kc, &["apply", "-k", deploy]).await;
    assert!(
        !again.contains(" created") && !again.contains(" configured"),
        "a second apply changed something:\n{again}"
    );

    apply_deploy_monitoring(&kc).await;

    // kubesim has no scheduler; a real one places both replicas on nodes.
    if real.is_some() {
        let nodes = kubectl(
            &kc,
            &[
                "-n",
                NAMESPACE,
                "get",
                "pods",
                "-l",
                "app.kubernetes.io/name=kubervisor",
                "-o",
                "jsonpath={.items[*].spec.nodeName}",
            ],
        )
        .await;
        assert_eq!(nodes.split_whitespace().count(), 2, "{nodes:?}");
    }

    run_the_deployment_command_line(&kc, dir.path(), real.as_ref().map(|(_, ns)| ns)).await;
    if let Some(sim) = sim {
        sim.shutdown().await;
    }
}
}

/// The README's next step, `kubectl apply -k deploy/monitoring`, on a cluster with the
/// Prometheus operator's CRDs: the alerts and the dashboard land in `kubervisor-system`
/// as the files in the repository say, and applying again changes nothing.
async fn apply_deploy_monitoring(kc: &Path) {
    install_prometheus_rule_crd(kc).await;
    let monitoring = repo().join("deploy/monitoring");
    let monitoring = monitoring.to_str().unwrap();
    let out = kubectl(kc, &["apply", "-k", monitoring]).await;
    for created in [
        "configmap/kubervisor-dashboard created",
        "prometheusrule.monitoring.coreos.com/kubervisor created",
    ] {
        assert!(out.contains(created), "`{created}` missing from:\n{out}");
    }
    let get = |kind: &'static str, name: &'static str| async move {
        let json = kubectl(kc, &["-n", NAMESPACE, "get", kind, name, "-o", "json"]).await;
        serde_json::from_str::<Value>(&json).unwrap()
    };
    let rule = get("prometheusrule", "kubervisor").await;
    let alerts = document("charts/kubervisor/files/alerts.yaml");
    assert_eq!(rule["spec"]["groups"], alerts["groups"]);
    let dashboard = get("configmap", "kubervisor-dashboard").await;
    assert_eq!(dashboard["metadata"]["labels"]["grafana_dashboard"], "1");
    let stored: Value =
        serde_json::from_str(dashboard["data"]["kubervisor.json"].as_str().unwrap()).unwrap();
    let shipped: Value =
        serde_json::from_str(&read("charts/kubervisor/files/dashboard.json")).unwrap();
    assert_eq!(stored, shipped);
    let again = kubectl(kc, &["apply", "-k", monitoring]).await;
    assert!(
        !again.contains(" created") && !again.contains(" configured"),
        "a second apply of deploy/monitoring changed something:\n{again}"
    );
}

/// Runs the binary with the Deployment's arguments and environment, and checks that its
/// probes answer and that it takes the Lease its Role allows. On a real server it runs as
/// the Deployment's service account, so RBAC is enforced as in the pod, and watches only
/// `real_namespace`: other tests share that server.
async fn run_the_deployment_command_line(
    kc: &Path,
    dir: &Path,
    real_namespace: Option<&RealNamespace>,
) {
    let container = deployment_container();
    let operator_kc = match real_namespace {
        None => kc.to_path_buf(),
        Some(_) => service_account_kubeconfig(kc, dir, NAMESPACE, "kubervisor").await,
    };
    let confined = real_namespace.map(|ns| format!("--namespace={}", ns.name));
    let free_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{free_port}");
    let identity = "kubervisor-test-0";
    let args: Vec<String> = strings(&container["args"])
        .into_iter()
        // In the pod it listens on every interface; here on loopback, on a free port.
        .map(|arg| {
            if arg.starts_with("--addr=") {
                format!("--addr={addr}")
            } else {
                arg.replace("$(POD_NAMESPACE)", NAMESPACE)
            }
        })
        .chain([format!("--kubeconfig={}", operator_kc.display())])
        .chain(confined)
        .collect();
    assert!(
        args.iter().any(|a| a.starts_with("--addr=")),
        "the Deployment sets --addr explicitly: {args:?}"
    );
    let log_path = dir.join("operator.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut operator = tokio::process::Command::new(env!("CARGO_BIN_EXE_kubervisor"))
        .args(&args)
        .env("POD_NAME", identity)
        .env("POD_NAMESPACE", NAMESPACE)
        .stdout(Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .expect("kubervisor starts");
    let logs = || std::fs::read_to_string(&log_path).unwrap_or_default();

    for probe in ["readinessProbe", "livenessProbe"] {
        let path = container[probe]["httpGet"]["path"]
            .as_str()
            .unwrap()
            .to_string();
        // Polled by hand rather than with wait_for, to show the operator's log on failure.
        let deadline = Instant::now() + WAIT;
        while http_status(&addr, &path).await != Some(200) {
            if let Some(status) = operator.try_wait().unwrap() {
                panic!(
                    "the operator exited ({status}) before its {probe} {path} answered 200; log:\n{}",
                    logs()
                );
            }
            if Instant::now() > deadline {
                panic!(
                    "{probe} {path} did not answer 200 within {WAIT:?}; operator log:\n{}",
                    logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    let holder = wait_for("the operator to hold its Lease", WAIT, || async {
        let out = kubectl_raw(
            kc,
            &[
                "-n",
                NAMESPACE,
                "get",
                "lease",
                "kubervisor",
                "-o",
                "jsonpath={.spec.holderIdentity}",
            ],
        )
        .await;
        let holder = text(&out.stdout);
        (out.status.success() && !holder.is_empty()).then_some(holder)
    })
    .await;
    assert_eq!(holder, identity, "operator log:\n{}", logs());
    let lines = logs();
    let first = lines.lines().next().unwrap_or_default();
    assert!(
        serde_json::from_str::<Value>(first).is_ok(),
        "--log-format=json logs JSON lines, got: {first}"
    );
    operator.kill().await.unwrap();
}

#[test]
fn deploy_crd_is_the_output_of_kubervisor_crd() {
    assert_is_generated_crd("deploy/crd.yaml");
}

#[test]
fn chart_crd_is_the_output_of_kubervisor_crd() {
    assert_is_generated_crd("charts/kubervisor/crds/kubervisorservices.yaml");
}

/// (API group, resource) to verbs, over every rule of the given Roles or ClusterRoles.
fn grants(roles: &[Value]) -> BTreeMap<(String, String), BTreeSet<String>> {
    let mut grants: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
    for role in roles {
        for rule in role["rules"].as_array().expect("rules") {
            for list in ["apiGroups", "resources", "verbs", "resourceNames"] {
                assert!(
                    !strings(&rule[list]).iter().any(|s| s.contains('*')),
                    "no wildcards: {rule}"
                );
            }
            assert!(
                rule.get("nonResourceURLs").is_none(),
                "no URL grants: {rule}"
            );
            for group in strings(&rule["apiGroups"]) {
                for resource in strings(&rule["resources"]) {
                    grants
                        .entry((group.clone(), resource))
                        .or_default()
                        .extend(strings(&rule["verbs"]));
                }
            }
        }
    }
    grants
}

fn expected(rules: &[(&str, &str, &[&str])]) -> BTreeMap<(String, String), BTreeSet<String>> {
    rules
        .iter()
        .map(|(group, resource, verbs)| {
            (
                (group.to_string(), resource.to_string()),
                verbs.iter().map(|v| v.to_string()).collect(),
            )
        })
        .collect()
}

/// What the operator does in the namespaces it watches, and nothing else.
const WORKLOAD_RULES: &[(&str, &str, &[&str])] = &[
    ("", "pods", &["list", "watch", "patch", "delete"]),
    ("", "pods/eviction", &["create"]),
    ("", "pods/status", &["patch"]),
    ("", "services", &["list", "watch"]),
    (
        "kubervisor.k8s.io",
        "kubervisorservices",
        &["list", "watch", "patch"],
    ),
    ("kubervisor.k8s.io", "kubervisorservices/status", &["patch"]),
    ("events.k8s.io", "events", &["create"]),
];

#[test]
fn deploy_rbac_grants_exactly_what_the_operator_uses() {
    let cluster_role = document("deploy/clusterrole.yaml");
    assert_eq!(cluster_role["kind"], "ClusterRole");
    assert_eq!(grants(&[cluster_role]), expected(WORKLOAD_RULES));

    let role = document("deploy/role.yaml");
    assert_eq!(role["kind"], "Role");
    assert_eq!(role["metadata"]["namespace"], NAMESPACE);
    assert_eq!(
        grants(std::slice::from_ref(&role)),
        expected(&[(
            "coordination.k8s.io",
            "leases",
            &["get", "create", "update"]
        )])
    );
    // Reads and updates are limited to the Lease the Deployment uses (--lease-name default).
    let args = strings(&deployment_container()["args"]);
    let lease_name = args
        .iter()
        .find_map(|a| a.strip_prefix("--lease-name="))
        .unwrap_or("kubervisor");
    for rule in role["rules"].as_array().unwrap() {
        let verbs = strings(&rule["verbs"]);
        if verbs.iter().any(|v| v != "create") {
            assert_eq!(strings(&rule["resourceNames"]), [lease_name], "{rule}");
        }
    }
    // The CRD comes with the manifests, so the operator gets no CRD rights.
    assert!(!args.iter().any(|a| a == "--install-crd"), "{args:?}");

    for (file, role_kind, role_name) in [
        (
            "deploy/clusterrolebinding.yaml",
            "ClusterRole",
            "kubervisor",
        ),
        (
            "deploy/rolebinding.yaml",
            "Role",
            "kubervisor-leader-election",
        ),
    ] {
        let binding = document(file);
        assert_eq!(binding["roleRef"]["kind"], role_kind, "{file}");
        assert_eq!(binding["roleRef"]["name"], role_name, "{file}");
        assert_eq!(
            binding["subjects"],
            serde_json::json!([{"kind": "ServiceAccount", "name": "kubervisor", "namespace": NAMESPACE}]),
            "{file}"
        );
    }
}

#[test]
fn deploy_lists_every_manifest_and_runs_a_hardened_elected_operator() {
    let kustomization = document("deploy/kustomization.yaml");
    assert_eq!(kustomization["namespace"], NAMESPACE);
    let listed: BTreeSet<String> = strings(&kustomization["resources"]).into_iter().collect();
    let present: BTreeSet<String> = std::fs::read_dir(repo().join("deploy"))
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".yaml") && name != "kustomization.yaml")
        .collect();
    assert_eq!(listed, present, "kustomization.yaml lists every manifest");

    let deployment = document("deploy/deployment.yaml");
    let pod = &deployment["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let args = strings(&container["args"]);
    assert_eq!(args[0], "run");
    assert!(
        deployment["spec"]["replicas"].as_u64() > Some(1)
            && args.iter().any(|a| a == "--leader-elect"),
        "several replicas, with leader election: {args:?}"
    );
    assert!(
        args.iter()
            .any(|a| a == "--lease-namespace=$(POD_NAMESPACE)")
    );
    assert_eq!(pod["serviceAccountName"], "kubervisor");
    assert_eq!(container["imagePullPolicy"], "IfNotPresent");
    for (variable, field) in [
        ("POD_NAME", "metadata.name"),
        ("POD_NAMESPACE", "metadata.namespace"),
    ] {
        let env = container["env"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == variable)
            .unwrap_or_else(|| panic!("{variable} is set"));
        assert_eq!(env["valueFrom"]["fieldRef"]["fieldPath"], field);
    }

    let port = &container["ports"][0];
    assert_eq!(port["containerPort"], 8086);
    assert!(args.iter().any(|a| a == "--addr=0.0.0.0:8086"), "{args:?}");
    for (probe, path) in [("livenessProbe", "/live"), ("readinessProbe", "/ready")] {
        assert_eq!(container[probe]["httpGet"]["path"], path);
        assert_eq!(container[probe]["httpGet"]["port"], port["name"]);
    }

    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    let security = &container["securityContext"];
    assert_eq!(security["readOnlyRootFilesystem"], true);
    assert_eq!(security["allowPrivilegeEscalation"], false);
    assert_eq!(security["capabilities"]["drop"], serde_json::json!(["ALL"]));
    assert!(container["resources"]["requests"].is_object());
    assert!(container["resources"]["limits"]["memory"].is_string());

    let service = document("deploy/service.yaml");
    assert_eq!(service["spec"]["ports"][0]["targetPort"], port["name"]);
    let pod_labels = &deployment["spec"]["template"]["metadata"]["labels"];
    for (key, value) in service["spec"]["selector"].as_object().unwrap() {
        assert_eq!(
            &pod_labels[key], value,
            "the metrics Service selects the pods"
        );
    }
}

/// Every `.Values.a.b` path a template reads, e.g. `image.repository`.
fn value_paths(template: &str) -> BTreeSet<String> {
    template
        .match_indices(".Values.")
        .map(|(at, needle)| {
            template[at + needle.len()..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '.')
                .collect::<String>()
                .trim_end_matches('.')
                .to_string()
        })
        .collect()
}

#[test]
fn chart_files_parse_and_templates_read_only_declared_values() {
    let chart = document("charts/kubervisor/Chart.yaml");
    assert_eq!(chart["apiVersion"], "v2");
    assert_eq!(chart["name"], "kubervisor");
    assert_eq!(
        chart["appVersion"],
        env!("CARGO_PKG_VERSION"),
        "the chart's appVersion (default image tag) follows the operator's version"
    );

    let values = document("charts/kubervisor/values.yaml");
    let templates = repo().join("charts/kubervisor/templates");
    let mut used = BTreeSet::new();
    for entry in std::fs::read_dir(&templates).unwrap() {
        let path = entry.unwrap().path();
        used.extend(value_paths(&std::fs::read_to_string(&path).unwrap()));
    }
    assert!(used.contains("image.repository"), "{used:?}");
    for path in &used {
        let declared = path
            .split('.')
            .try_fold(&values, |node, key| node.as_object()?.get(key));
        assert!(
            declared.is_some(),
            "templates read .Values.{path}, which values.yaml does not declare"
        );
    }

    // The chart's workload rules are the ClusterRole of deploy/, verbatim.
    let helpers = read("charts/kubervisor/templates/_helpers.tpl");
    let start = helpers
        .find(r#"{{- define "kubervisor.workloadRules" -}}"#)
        .expect("the workloadRules template");
    let body = &helpers[start..];
    let body = &body[body.find('\n').unwrap()..body.find("{{- end }}").unwrap()];
    let rules: Value = serde_saphyr::from_str(body).expect("the workload rules are plain YAML");
    assert_eq!(
        grants(&[serde_json::json!({ "rules": rules })]),
        expected(WORKLOAD_RULES)
    );
}

#[test]
fn dockerfile_builds_locked_and_runs_non_root() {
    let dockerfile = read("Dockerfile");
    let from: Vec<&str> = dockerfile
        .lines()
        .filter(|l| l.starts_with("FROM "))
        .collect();
    assert_eq!(
        from.len(),
        2,
        "a builder stage and a runtime stage: {from:?}"
    );
    assert!(dockerfile.contains("cargo build --release --locked -p kubervisor"));
    let user = dockerfile
        .lines()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("a USER line");
    assert!(
        user.split(':')
            .all(|id| id.parse::<u32>().is_ok_and(|id| id != 0)),
        "a numeric non-root user, so runAsNonRoot can verify it: {user}"
    );
    assert!(dockerfile.contains(r#"ENTRYPOINT ["/kubervisor"]"#));
    assert!(dockerfile.contains("EXPOSE 8086"));
    let ignored = read(".dockerignore");
    assert!(ignored.lines().any(|l| l.trim() == "target/"), "{ignored}");
}

const DETECTORS: [&str; 7] = [
    "discreteValueOutOfList",
    "continuousValueDeviation",
    "customService",
    "valueThreshold",
    "valueTrend",
    "successRateOutlier",
    "continuousOutlier",
];

#[test]
fn every_example_passes_kubervisor_check_and_guards_its_own_service() {
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo().join("examples"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    let mut detectors = BTreeSet::new();
    let mut modes = BTreeSet::new();
    let (mut dry_run, mut breaker_activator, mut readiness_gate) = (false, false, false);
    for file in &files {
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        let out = kubervisor(&["check", "-f", file.to_str().unwrap()]);
        assert!(
            out.status.success(),
            "kubervisor check -f examples/{name}: {}",
            text(&out.stderr)
        );
        let checked: Vec<Value> = serde_saphyr::from_multiple(&text(&out.stdout)).unwrap();
        assert_eq!(checked.len(), 1, "one KubervisorService in {name}");
        let kvs = &checked[0];
        assert_eq!(kvs["kind"], "KubervisorService", "{name}");

        let docs = documents(&format!("examples/{name}"));
        let guarded = kvs["spec"]["service"].as_str().unwrap();
        let service = docs
            .iter()
            .find(|d| d["kind"] == "Service" && d["metadata"]["name"] == guarded)
            .unwrap_or_else(|| panic!("{name} holds the Service {guarded}"));
        let selector = service["spec"]["selector"].as_object().unwrap();
        if kvs["spec"]["trafficControl"] == "readinessGate" {
            // The Service selects the app only; the pods declare Kubervisor's gate.
            assert!(!selector.contains_key("kubervisor/traffic"), "{name}");
            let deployment = docs
                .iter()
                .find(|d| d["kind"] == "Deployment")
                .unwrap_or_else(|| panic!("{name} holds the Deployment of the gated pods"));
            assert_eq!(
                deployment["spec"]["template"]["spec"]["readinessGates"],
                serde_json::json!([{"conditionType": "kubervisor.k8s.io/traffic"}]),
                "{name}"
            );
            readiness_gate = true;
        } else {
            assert_eq!(selector["kubervisor/traffic"], "yes", "{name}");
        }
        assert!(!selector.is_empty(), "{name}: an app label");

        dry_run |= kvs["spec"]["dryRun"] == true;
        modes.extend(
            kvs["spec"]["defaultActivator"]["mode"]
                .as_str()
                .map(String::from),
        );
        for breaker in kvs["spec"]["breakers"].as_array().unwrap() {
            for detector in DETECTORS {
                if !breaker[detector].is_null() {
                    detectors.insert(detector.to_string());
                }
            }
            if let Some(mode) = breaker["activator"]["mode"].as_str() {
                breaker_activator = true;
                modes.insert(mode.to_string());
            }
        }
    }
    assert_eq!(
        detectors,
        BTreeSet::from(DETECTORS.map(String::from)),
        "one example per detector"
    );
    assert_eq!(
        modes,
        BTreeSet::from(["periodic", "retryAndKill", "retryAndPause"].map(String::from)),
        "one example per activator mode"
    );
    assert!(dry_run, "an example in dry-run mode");
    assert!(
        breaker_activator,
        "an example with a breaker-specific activator"
    );
    assert!(readiness_gate, "an example in readiness-gate mode");
}
