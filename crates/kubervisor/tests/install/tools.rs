//! What the installation tests share: the repository's files, kubectl, helm, waiting.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::Value;

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("the repository root exists")
}

pub fn read(relative: &str) -> String {
    let path = repo().join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {relative}: {e}"))
}

/// Every YAML document of a repository file, as JSON values.
pub fn documents(relative: &str) -> Vec<Value> {
    serde_saphyr::from_multiple::<Value>(&read(relative))
        .unwrap_or_else(|e| panic!("{relative} is not valid YAML: {e}"))
        .into_iter()
        .filter(|doc| !doc.is_null())
        .collect()
}

pub fn document(relative: &str) -> Value {
    let mut docs = documents(relative);
    assert_eq!(docs.len(), 1, "{relative} should hold exactly one document");
    docs.remove(0)
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

pub fn kubervisor(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kubervisor"))
        .args(args)
        .output()
        .expect("kubervisor runs")
}

/// Locates a required external binary, failing with install advice when it is missing.
pub fn require_binary(name: &str, package: &str) -> PathBuf {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join(name))
        .find(|path| path.is_file())
        .unwrap_or_else(|| {
            panic!(
                "`{name}` is not installed: this test needs the real binary \
                 (Debian package `{package}`; `scripts/test.sh` installs it)"
            )
        })
}

/// A copy of the admin kubeconfig that authenticates as the service account
/// `namespace/account`, with a token the API server issues for it.
pub async fn service_account_kubeconfig(
    admin: &Path,
    dir: &Path,
    namespace: &str,
    account: &str,
) -> PathBuf {
    let token = kubectl(
        admin,
        &[
            "-n",
            namespace,
            "create",
            "token",
            account,
            "--duration=30m",
        ],
    )
    .await;
    let path = dir.join(format!("{namespace}-{account}-kubeconfig"));
    std::fs::copy(admin, &path).unwrap();
    let user = format!("system:serviceaccount:{namespace}:{account}");
    kubectl(
        &path,
        &[
            "config",
            "set-credentials",
            &user,
            &format!("--token={}", token.trim()),
        ],
    )
    .await;
    kubectl(
        &path,
        &[
            "config",
            "set-context",
            "--current",
            &format!("--user={user}"),
        ],
    )
    .await;
    assert_eq!(
        kubectl(
            &path,
            &[
                "auth",
                "whoami",
                "-o",
                "jsonpath={.status.userInfo.username}"
            ]
        )
        .await,
        user
    );
    path
}

/// Runs kubectl without blocking the runtime that serves the simulated API.
pub async fn kubectl_raw(kubeconfig: &Path, args: &[&str]) -> Output {
    tokio::process::Command::new(require_binary("kubectl", "kubernetes-client"))
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        // kubectl caches discovery under $HOME: keep each test's cache its own.
        .env(
            "HOME",
            kubeconfig
                .parent()
                .expect("the kubeconfig is in a directory"),
        )
        .output()
        .await
        .expect("kubectl runs")
}

/// Runs kubectl and returns its standard output, failing the test on a non-zero exit.
pub async fn kubectl(kubeconfig: &Path, args: &[&str]) -> String {
    let out = kubectl_raw(kubeconfig, args).await;
    assert!(
        out.status.success(),
        "kubectl {} failed: {}{}",
        args.join(" "),
        text(&out.stderr),
        text(&out.stdout)
    );
    text(&out.stdout)
}

/// Polls `check` until it returns Some, failing the test after `timeout`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A minimal HTTP/1.0 GET: the status code, or None when nothing answers yet.
pub async fn http_status(addr: &str, path: &str) -> Option<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    let request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer))
        .await
        .ok()?
        .ok()?;
    text(&answer).split_whitespace().nth(1)?.parse().ok()
}

pub fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .map(|items| {
            items
                .iter()
                .map(|item| item.as_str().expect("a list of strings").to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// Applies `deploy/crd.yaml` as the cluster admin and waits until it is Established.
pub async fn install_crd(admin: &Path) {
    kubectl(
        admin,
        &[
            "apply",
            "-f",
            repo().join("deploy/crd.yaml").to_str().unwrap(),
        ],
    )
    .await;
    kubectl(
        admin,
        &[
            "wait",
            "--for=condition=Established",
            "crd/kubervisorservices.kubervisor.k8s.io",
            "--timeout=30s",
        ],
    )
    .await;
}

/// Applies the stand-in for the Prometheus operator's PrometheusRule CRD (what a cluster
/// with the Prometheus operator has) and waits until it is Established. It stays, as the
/// KubervisorService CRD does: tests on the shared control plane use it concurrently.
pub async fn install_prometheus_rule_crd(admin: &Path) {
    let crd = repo().join("crates/kubervisor/tests/install/prometheusrule-crd.yaml");
    kubectl(admin, &["apply", "-f", crd.to_str().unwrap()]).await;
    kubectl(
        admin,
        &[
            "wait",
            "--for=condition=Established",
            "crd/prometheusrules.monitoring.coreos.com",
            "--timeout=30s",
        ],
    )
    .await;
}
