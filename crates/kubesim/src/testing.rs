//! Helpers for tests that drive a simulated cluster, and for running the same tests
//! against a real control plane ([`Backend`], [`on_both_backends!`](crate::on_both_backends),
//! [`RealNamespace`]).

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use kube::config::Kubeconfig;

/// Polls `check` until it returns `Ok`, and fails the test with the last state it
/// reported once `timeout` has passed: tests wait on conditions, not on fixed sleeps.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match check().await {
            Ok(value) => return value,
            Err(state) if tokio::time::Instant::now() >= deadline => {
                panic!("timed out after {timeout:?} waiting for {what}; last state: {state}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

// ---------------------------------------------------------------------------------------
// The same tests against a real API server.

/// The environment variable naming the kubeconfig of a real control plane to test against
/// (`scripts/cluster.sh up DIR` writes `DIR/kubeconfig`).
pub const REAL_KUBECONFIG: &str = "KUBERVISOR_TEST_KUBECONFIG";
/// Set by the test script when it started a real control plane: a test that finds no
/// kubeconfig then fails instead of being skipped.
pub const REQUIRE_REAL: &str = "KUBERVISOR_TEST_REQUIRE_REAL";

/// Where a test runs: kubesim in-process, or the real control plane of [`REAL_KUBECONFIG`].
#[derive(Debug, Clone)]
pub enum Backend {
    Kubesim,
    Real(PathBuf),
}

impl Backend {
    /// The real control plane, or `None` (said loudly on stderr) when none is configured.
    pub fn real() -> Option<Backend> {
        match std::env::var_os(REAL_KUBECONFIG) {
            Some(path) => Some(Backend::Real(PathBuf::from(path))),
            None if std::env::var_os(REQUIRE_REAL).is_some() => {
                panic!("{REQUIRE_REAL} is set but {REAL_KUBECONFIG} is not")
            }
            None => {
                eprintln!(
                    "SKIPPED on the real control plane: {REAL_KUBECONFIG} is not set (start one with `scripts/cluster.sh build && scripts/cluster.sh up DIR`, which needs a Go toolchain; scripts/test.sh does it)"
                );
                None
            }
        }
    }
}

/// Runs a test `async fn name(backend: Backend)` against kubesim and against the real
/// control plane, as two tests: `name::kubesim` and `name::real_cluster`.
#[macro_export]
macro_rules! on_both_backends {
    ($(#[$meta:meta])* async fn $name:ident($backend:ident: Backend) $body:block) => {
        $(#[$meta])*
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            async fn scenario($backend: $crate::testing::Backend) $body

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn kubesim() {
                scenario($crate::testing::Backend::Kubesim).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn real_cluster() {
                if let Some(backend) = $crate::testing::Backend::real() {
                    scenario(backend).await
                }
            }
        }
    };
}

/// A name no other test of any process uses: `PREFIX-PID-SEQUENCE`.
pub fn unique_name(prefix: &str) -> String {
    static SEQUENCE: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        SEQUENCE.fetch_add(1, Ordering::Relaxed)
    )
}

/// A client for the kubeconfig's current context, defaulting to `namespace`.
pub async fn client_for(kubeconfig: &Path, namespace: &str) -> kube::Client {
    let file = Kubeconfig::read_from(kubeconfig).expect("a readable kubeconfig");
    let mut config = kube::Config::from_custom_kubeconfig(file, &Default::default())
        .await
        .expect("a usable kubeconfig");
    config.default_namespace = namespace.to_string();
    kube::Client::try_from(config).expect("a client")
}

/// A namespace of a test's own on a shared real API server, deleted when dropped
/// (without waiting: the server finishes the deletion on its own).
pub struct RealNamespace {
    pub name: String,
    /// Defaults to this namespace.
    pub client: kube::Client,
    kubeconfig: PathBuf,
}

impl RealNamespace {
    /// Creates a fresh namespace `PREFIX-PID-SEQUENCE` with the admin kubeconfig.
    pub async fn create(kubeconfig: &Path, prefix: &str) -> RealNamespace {
        let name = unique_name(prefix);
        let client = client_for(kubeconfig, &name).await;
        let namespace: Namespace =
            serde_json::from_value(serde_json::json!({"metadata": {"name": name}})).unwrap();
        kube::Api::<Namespace>::all(client.clone())
            .create(&Default::default(), &namespace)
            .await
            .unwrap_or_else(|e| panic!("namespace {name} cannot be created: {e}"));
        RealNamespace {
            name,
            client,
            kubeconfig: kubeconfig.to_path_buf(),
        }
    }

    /// A namespace the test created itself (with `kubectl create namespace`, say), to be
    /// deleted like one made by [`RealNamespace::create`].
    pub async fn adopt(kubeconfig: &Path, name: &str) -> RealNamespace {
        RealNamespace {
            name: name.to_string(),
            client: client_for(kubeconfig, name).await,
            kubeconfig: kubeconfig.to_path_buf(),
        }
    }

    /// Writes a copy of the kubeconfig whose current context defaults to this namespace,
    /// so kubectl and the plugin work in it without `-n`.
    pub fn write_kubeconfig(&self, path: &Path) {
        let config = with_namespace(
            Kubeconfig::read_from(&self.kubeconfig).expect("a readable kubeconfig"),
            &self.name,
        );
        std::fs::write(path, serde_json::to_vec(&config).unwrap()).expect("kubeconfig written");
    }
}

/// The kubeconfig with its current context defaulting to `namespace` (JSON is YAML too).
pub fn with_namespace(mut config: Kubeconfig, namespace: &str) -> Kubeconfig {
    let current = config.current_context.clone();
    for named in &mut config.contexts {
        if Some(&named.name) == current.as_ref()
            && let Some(context) = named.context.as_mut()
        {
            context.namespace = Some(namespace.to_string());
        }
    }
    config
}

impl Drop for RealNamespace {
    fn drop(&mut self) {
        // The real control plane is shared: leave it as it was found.
        let _ = std::process::Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(["delete", "namespace", &self.name, "--wait=false"])
            .output();
    }
}
