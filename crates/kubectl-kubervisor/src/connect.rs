use std::path::{Path, PathBuf};

use kube::config::{Config, KubeConfigOptions, Kubeconfig, KubeconfigError};
use kube::{Client, Resource};
use kubervisor_api::KubervisorService;

use crate::cli::ConnectionArgs;
use crate::error::PluginError;

/// A client and what the user asked it to point at.
#[derive(Clone)]
pub struct Cluster {
    pub client: Client,
    /// The API server URL, for error messages.
    pub url: String,
    /// `-n`, else the context's namespace, else `default`.
    pub namespace: String,
}

impl Cluster {
    /// Builds a client the way kubectl resolves its configuration.
    pub async fn connect(args: &ConnectionArgs) -> Result<Cluster, PluginError> {
        let config = load_config(args).await?;
        let url = config.cluster_url.to_string();
        let url = url.trim_end_matches('/').to_string();
        let namespace = args
            .namespace
            .clone()
            .unwrap_or_else(|| config.default_namespace.clone());
        let client = Client::try_from(config).map_err(|e| {
            PluginError::Kubeconfig(format!("cannot build a client for {url}: {e}"))
        })?;
        Ok(Cluster {
            client,
            url,
            namespace,
        })
    }

    /// Wraps a client error with the server URL and what was being done.
    pub fn error(&self, err: kube::Error, action: &str) -> PluginError {
        PluginError::from_kube(err, &self.url, action)
    }

    /// Whether the API server serves KubervisorServices; asked only after a 404, to tell
    /// a missing CRD from a missing object.
    pub async fn crd_installed(&self) -> Result<bool, PluginError> {
        let api_version = KubervisorService::api_version(&());
        match self.client.list_api_group_resources(&api_version).await {
            Ok(list) => Ok(list
                .resources
                .iter()
                .any(|r| r.name == KubervisorService::plural(&()))),
            Err(kube::Error::Api(status)) if status.code == 404 => Ok(false),
            Err(e) => Err(self.error(e, "cannot discover the kubervisor.k8s.io API")),
        }
    }
}

async fn load_config(args: &ConnectionArgs) -> Result<Config, PluginError> {
    let options = KubeConfigOptions {
        context: args.context.clone(),
        ..Default::default()
    };
    if let Some(path) = &args.kubeconfig {
        let file = Kubeconfig::read_from(path).map_err(|e| read_error(path, e))?;
        return from_kubeconfig(file, &options).await;
    }
    match Kubeconfig::from_env() {
        Ok(Some(file)) => return from_kubeconfig(file, &options).await,
        Ok(None) => {}
        Err(e) => {
            return Err(PluginError::Kubeconfig(format!(
                "cannot read KUBECONFIG: {e}"
            )));
        }
    }
    if let Some(path) = default_kubeconfig_path().filter(|p| p.exists()) {
        let file = Kubeconfig::read_from(&path).map_err(|e| read_error(&path, e))?;
        return from_kubeconfig(file, &options).await;
    }
    // Like kubectl, fall back to the pod's service account when running inside a cluster.
    if args.context.is_none() && std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() {
        return Config::incluster().map_err(|e| {
            PluginError::Kubeconfig(format!("cannot use the in-cluster configuration: {e}"))
        });
    }
    Err(PluginError::Kubeconfig(
        "no kubeconfig found: set KUBECONFIG, pass --kubeconfig FILE, or create ~/.kube/config"
            .into(),
    ))
}

async fn from_kubeconfig(
    file: Kubeconfig,
    options: &KubeConfigOptions,
) -> Result<Config, PluginError> {
    Config::from_custom_kubeconfig(file, options)
        .await
        .map_err(|e| {
            PluginError::Kubeconfig(match e {
                KubeconfigError::LoadContext(name) => {
                    format!("context {name:?} not found in the kubeconfig")
                }
                KubeconfigError::CurrentContextNotSet => {
                    "the kubeconfig has no current-context: pass --context NAME".into()
                }
                KubeconfigError::LoadClusterOfContext(name) => {
                    format!("cluster {name:?} of the selected context not found in the kubeconfig")
                }
                other => format!("invalid kubeconfig: {other}"),
            })
        })
}

fn read_error(path: &Path, err: KubeconfigError) -> PluginError {
    let detail = match err {
        KubeconfigError::ReadConfig(io, _) => io.to_string(),
        other => other.to_string(),
    };
    PluginError::Kubeconfig(format!(
        "cannot read kubeconfig {}: {detail}",
        path.display()
    ))
}

fn default_kubeconfig_path() -> Option<PathBuf> {
    let home = std::env::var_os("HOME").or_else(|| std::env::var_os("USERPROFILE"))?;
    Some(PathBuf::from(home).join(".kube").join("config"))
}
