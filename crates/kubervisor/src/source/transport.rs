//! A small HTTP client on the hyper stack kube-client already brings: timeouts, size limits,
//! TLS from a CA bundle or the system's roots, errors classified for users.

use std::error::Error as _;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::{ConfigBuilderExt, HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rustls::RootCertStore;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

/// What went wrong with one HTTP exchange, before any meaning is given to the body.
#[derive(Debug)]
pub(crate) enum TransportError {
    /// No connection could be made (refused, DNS, TLS handshake).
    Unreachable(String),
    /// The connection broke or the body could not be read.
    Broken(String),
    /// No complete answer within the timeout.
    Timeout,
    /// The body exceeded the size limit.
    TooLarge(usize),
}

/// A complete HTTP answer; cheap to clone, as one may serve several breakers.
#[derive(Clone, Debug)]
pub(crate) struct Answer {
    pub status: StatusCode,
    pub body: Bytes,
}

/// An HTTP/1 client for plain HTTP and HTTPS.
#[derive(Clone)]
pub(crate) struct HttpClient {
    inner: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    /// Requests in flight per server, so a burst of evaluations reuses a few connections
    /// instead of opening one each; waiting for a slot counts against the timeout.
    slots: Arc<std::sync::Mutex<std::collections::HashMap<String, Arc<tokio::sync::Semaphore>>>>,
}

/// Requests in flight to one server at most.
const REQUESTS_PER_SERVER: usize = 16;

/// Which certificate authorities HTTPS connections trust.
pub(crate) enum Roots {
    /// The certificates of a PEM bundle.
    Bundle(RootCertStore),
    /// The operating system's store.
    Native,
    /// None: for clients that only ever speak plain HTTP (the Prometheus harness).
    #[cfg(feature = "demo")]
    Empty,
}

impl HttpClient {
    /// A client for plain HTTP and for HTTPS servers whose certificates `roots` vouch for.
    pub fn new(roots: Roots) -> Result<HttpClient, rustls::Error> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?;
        let tls = match roots {
            Roots::Bundle(store) => builder.with_root_certificates(store),
            #[cfg(feature = "demo")]
            Roots::Empty => builder.with_root_certificates(RootCertStore::empty()),
            Roots::Native => match builder.clone().with_native_roots() {
                Ok(with_roots) => with_roots,
                // Plain HTTP still works; HTTPS then fails with a certificate error naming the server.
                Err(e) => {
                    tracing::warn!(error = %e, "no system CA certificates; HTTPS sources need a CA bundle");
                    builder.with_root_certificates(RootCertStore::empty())
                }
            },
        }
        .with_no_client_auth();
        let connector = HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .build();
        let inner = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(REQUESTS_PER_SERVER)
            .build(connector);
        Ok(HttpClient {
            inner,
            slots: Arc::default(),
        })
    }

    /// A client for plain HTTP only, which needs no certificates.
    #[cfg(feature = "demo")]
    pub fn plain() -> Result<HttpClient, rustls::Error> {
        HttpClient::new(Roots::Empty)
    }

    /// Sends one request and reads the whole answer within `timeout`, counted once one of
    /// the server's connection slots is free.
    pub async fn send(
        &self,
        method: Method,
        url: &str,
        headers: &[(header::HeaderName, HeaderValue)],
        body: Option<(&'static str, String)>,
        timeout: Duration,
        max_body: usize,
    ) -> Result<Answer, TransportError> {
        let mut request = Request::builder().method(method).uri(url);
        for (name, value) in headers {
            request = request.header(name, value);
        }
        let body = match body {
            Some((content_type, body)) => {
                request = request.header(header::CONTENT_TYPE, content_type);
                Full::new(Bytes::from(body))
            }
            None => Full::new(Bytes::new()),
        };
        let request = request
            .body(body)
            .map_err(|e| TransportError::Unreachable(format!("invalid request: {e}")))?;
        let server = request
            .uri()
            .authority()
            .map(|a| a.to_string())
            .unwrap_or_default();
        let slots = {
            let mut all = self.slots.lock().unwrap_or_else(|e| e.into_inner());
            all.entry(server)
                .or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(REQUESTS_PER_SERVER)))
                .clone()
        };
        // The timeout measures the source, not the queue for a connection: a burst of
        // evaluations (every breaker at start-up) waits its turn without failing.
        let _slot = slots.acquire().await.map_err(|_| TransportError::Timeout)?;
        let exchange = async {
            let response = self.inner.request(request).await.map_err(|e| {
                // hyper-util's own layer ("client error (Connect)") says less than its causes.
                let reason = e.source().map_or_else(|| e.to_string(), error_chain);
                if e.is_connect() {
                    TransportError::Unreachable(reason)
                } else {
                    TransportError::Broken(reason)
                }
            })?;
            let status = response.status();
            let body = Limited::new(response.into_body(), max_body)
                .collect()
                .await
                .map_err(|e| {
                    if e.is::<http_body_util::LengthLimitError>() {
                        TransportError::TooLarge(max_body)
                    } else {
                        TransportError::Broken(error_chain(e.as_ref()))
                    }
                })?
                .to_bytes();
            Ok(Answer { status, body })
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .unwrap_or(Err(TransportError::Timeout))
    }
}

/// The certificates of a PEM bundle; a bundle without any is refused.
pub(crate) fn roots_from_pem(pem: &[u8]) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem) {
        let cert = cert.map_err(|e| format!("invalid PEM: {e}"))?;
        roots
            .add(cert)
            .map_err(|e| format!("invalid certificate: {e}"))?;
    }
    if roots.is_empty() {
        return Err("no PEM certificate found".into());
    }
    Ok(roots)
}

/// An error and its causes on one line, repeated messages once.
pub(crate) fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next = Some(error);
    while let Some(e) = next {
        let text = e.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        next = e.source();
    }
    parts.join(": ")
}
