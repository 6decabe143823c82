//! Helpers shared by the kubesim conformance tests.
#![allow(dead_code)]

use kubesim::{Sim, SimConfig};
use std::future::Future;
use std::path::Path;
use std::time::Duration;

/// A simulated cluster with a short ready delay, so tests move fast.
pub async fn sim() -> Sim {
    sim_with(SimConfig {
        ready_delay: Duration::from_millis(100),
        ..Default::default()
    })
    .await
}

pub async fn sim_with(config: SimConfig) -> Sim {
    Sim::start(config).await.expect("kubesim starts")
}

/// Polls `check` until it returns Some, failing the test after `timeout`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    kubesim::testing::eventually(what, timeout, || {
        let next = check();
        async move { next.await.ok_or_else(|| "not yet".to_string()) }
    })
    .await
}

/// Locates a required external binary, failing with install advice when it is missing.
pub fn require_binary(name: &str, package: &str) -> String {
    for dir in std::env::var("PATH").unwrap_or_default().split(':') {
        let p = Path::new(dir).join(name);
        if p.is_file() {
            return p.to_string_lossy().into_owned();
        }
    }
    panic!(
        "`{name}` is not installed: this test needs the real binary (Debian package `{package}`; `.ci/run` installs it)"
    );
}

/// Runs kubectl against a kubeconfig; returns stdout, failing on a non-zero exit.
pub async fn kubectl(kubeconfig: &Path, args: &[&str]) -> String {
    let out = kubectl_raw(kubeconfig, args).await;
    assert!(
        out.status.success(),
        "kubectl {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs kubectl without blocking the runtime that serves the simulated API.
pub async fn kubectl_raw(kubeconfig: &Path, args: &[&str]) -> std::process::Output {
    let bin = require_binary("kubectl", "kubernetes-client");
    tokio::process::Command::new(bin)
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .env("HOME", kubeconfig.parent().unwrap_or(Path::new("/tmp")))
        .output()
        .await
        .expect("kubectl runs")
}

pub fn pod_json(name: &str, labels: serde_json::Value) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels},
        "spec": {"containers": [{"name": "app", "image": "sim"}]},
    })
}

/// A minimal HTTP/1.0 GET (no client dependency): returns status and body.
pub async fn http_get(addr: &str, path_and_query: &str) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    let req = format!("GET {path_and_query} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    s.write_all(req.as_bytes()).await.ok()?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf))
        .await
        .ok()?
        .ok()?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n")?;
    let code = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((code, body.to_string()))
}

/// Percent-encodes a query value.
pub fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
