use std::error::Error as _;

/// Everything the plugin reports as `error: …` with exit code 1.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    #[error(
        "the KubervisorService CRD is not installed in this cluster (kubervisor crd | kubectl apply -f -)"
    )]
    CrdNotInstalled,

    #[error("kubervisorservice {name:?} not found in namespace {namespace:?}")]
    NotFound { name: String, namespace: String },

    #[error(
        "service {service:?} (spec.service of kubervisorservice {kvs:?}) not found in namespace {namespace:?}"
    )]
    ServiceNotFound {
        service: String,
        kvs: String,
        namespace: String,
    },

    #[error("cannot reach the Kubernetes API server at {url}: {cause}")]
    Unreachable { url: String, cause: String },

    #[error("{0}")]
    Kubeconfig(String),

    #[error("{action}: {message} ({reason}, HTTP {code})")]
    Api {
        action: String,
        code: u16,
        reason: String,
        message: String,
    },

    #[error("{action}: {cause}")]
    Request { action: String, cause: String },

    /// A safety check said no; the message says why and how to override.
    #[error("{0}")]
    Refused(String),
}

impl PluginError {
    /// Classifies a client error: API answers keep their status, transport failures name the server.
    pub fn from_kube(err: kube::Error, url: &str, action: &str) -> PluginError {
        match err {
            kube::Error::Api(status) => PluginError::Api {
                action: action.to_string(),
                code: status.code,
                reason: status.reason.clone(),
                message: status.message.clone(),
            },
            kube::Error::HyperError(_) | kube::Error::Service(_) => PluginError::Unreachable {
                url: url.to_string(),
                cause: transport_cause(&err),
            },
            other => PluginError::Request {
                action: action.to_string(),
                cause: other.to_string(),
            },
        }
    }

    /// The HTTP status code of an API answer, if this is one.
    pub fn code(&self) -> Option<u16> {
        match self {
            PluginError::Api { code, .. } => Some(*code),
            _ => None,
        }
    }
}

/// The innermost meaningful cause of a transport failure, e.g. "connection refused".
fn transport_cause(err: &kube::Error) -> String {
    let mut current: Option<&(dyn std::error::Error + 'static)> = err.source();
    let mut last = err.to_string();
    while let Some(e) = current {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            return match io.kind() {
                std::io::ErrorKind::ConnectionRefused => "connection refused".into(),
                std::io::ErrorKind::TimedOut => "connection timed out".into(),
                _ => io.to_string(),
            };
        }
        last = e.to_string();
        current = e.source();
    }
    last
}
