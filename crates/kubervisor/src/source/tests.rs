//! Sources against small HTTP servers: sharing, headers, configuration and label errors.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Router;
use axum::http::HeaderMap;
use axum::routing::{get, post};
use kubervisor_api::ValueList;

use super::*;

const VECTOR: &str = r#"{"status":"success","data":{"resultType":"vector","result":[
    {"metric":{"code":"200","pod":"a"},"value":[1,"90"]},
    {"metric":{"code":"500","pod":"a"},"value":[1,"10"]}]}}"#;

async fn serve(router: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });
    address.to_string()
}

fn sources() -> Sources {
    Sources::new(SourceSettings::default()).unwrap()
}

fn discrete_rule(base: &str, promql: &str) -> DiscreteRule {
    DiscreteRule {
        prometheus_service: base.into(),
        promql: promql.into(),
        key: "code".into(),
        pod_name_key: "pod".into(),
        values: ValueList::Good(["200".to_string()].into()),
        tolerance_percent: 50,
        min_activity: 2,
    }
}

/// A Prometheus stand-in that answers `body` after `delay`, counting requests and keeping the last one.
async fn counting_prometheus(
    body: &'static str,
    delay: Duration,
) -> (
    String,
    Arc<AtomicUsize>,
    Arc<Mutex<Vec<(HeaderMap, String)>>>,
) {
    let count = Arc::new(AtomicUsize::new(0));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (c, s) = (count.clone(), seen.clone());
    let router = Router::new().route(
        "/api/v1/query",
        post(move |headers: HeaderMap, form: String| {
            let (c, s) = (c.clone(), s.clone());
            async move {
                c.fetch_add(1, Ordering::SeqCst);
                s.lock().unwrap().push((headers, form));
                tokio::time::sleep(delay).await;
                body
            }
        }),
    );
    (serve(router).await, count, seen)
}

#[tokio::test]
async fn concurrent_identical_queries_share_one_request() {
    let (base, count, _) = counting_prometheus(VECTOR, Duration::from_millis(300)).await;
    let sources = sources();
    let other = sources.clone();
    let url_form = format!("http://{base}/");
    let timeout = Duration::from_secs(5);
    // Two breakers, two spellings of the same endpoint, different timeouts.
    let (a, b) = tokio::join!(
        sources.query(&base, "up", timeout),
        other.query(&url_form, "up", Duration::from_secs(3)),
    );
    assert_eq!(a.unwrap(), b.unwrap());
    assert_eq!(count.load(Ordering::SeqCst), 1);

    // Nothing is cached once the request is over.
    sources.query(&base, "up", timeout).await.unwrap();
    assert_eq!(count.load(Ordering::SeqCst), 2);

    // Different PromQL is a different request.
    let (a, b) = tokio::join!(
        sources.query(&base, "up", timeout),
        sources.query(&base, "up == 1", timeout),
    );
    a.unwrap();
    b.unwrap();
    assert_eq!(count.load(Ordering::SeqCst), 4);
    assert!(sources.inner.lock_in_flight().is_empty());
}

#[tokio::test]
async fn a_shared_request_reports_its_failure_to_every_waiter() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let base = listener.local_addr().unwrap().to_string();
    drop(listener);
    let sources = sources();
    let timeout = Duration::from_secs(2);
    let (a, b) = tokio::join!(
        sources.query(&base, "up", timeout),
        sources.query(&base, "up", timeout)
    );
    let (a, b) = (a.unwrap_err(), b.unwrap_err());
    assert_eq!(a, b);
    assert_eq!(a.kind(), "unreachable");
}

#[tokio::test]
async fn queries_are_posted_with_the_bearer_token_and_a_server_side_timeout() {
    let (base, _, seen) = counting_prometheus(VECTOR, Duration::ZERO).await;
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "s3cr3t\n").unwrap();
    let sources = Sources::new(SourceSettings {
        bearer_token_file: Some(token_file),
        ..SourceSettings::default()
    })
    .unwrap();
    assert!(!format!("{sources:?}").contains("s3cr3t"));
    sources
        .query(
            &base,
            "sum by (pod) (rate(x{a=\"b c\"}[1m]))",
            Duration::from_millis(2500),
        )
        .await
        .unwrap();
    let (headers, form) = seen.lock().unwrap().pop().unwrap();
    assert_eq!(headers["authorization"], "Bearer s3cr3t");
    assert_eq!(headers["content-type"], "application/x-www-form-urlencoded");
    assert_eq!(
        form,
        "query=sum%20by%20%28pod%29%20%28rate%28x%7Ba%3D%22b%20c%22%7D%5B1m%5D%29%29&timeout=2500ms"
    );
}

#[tokio::test]
async fn custom_detectors_never_receive_the_bearer_token() {
    let seen = Arc::new(Mutex::new(None));
    let s = seen.clone();
    let router = Router::new().route(
        "/anomalies",
        get(move |headers: HeaderMap| async move {
            *s.lock().unwrap() = Some(headers);
            r#"{"kind":"PodList","items":[{"metadata":{"name":"shop-2"}}]}"#
        }),
    );
    let base = serve(router).await;
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "s3cr3t").unwrap();
    let sources = Sources::new(SourceSettings {
        bearer_token_file: Some(token_file),
        ..SourceSettings::default()
    })
    .unwrap();
    let rule = CustomRule {
        url: format!("{base}/anomalies"),
    };
    assert_eq!(sources.custom_pods(&rule).await.unwrap(), ["shop-2"]);
    let headers = seen.lock().unwrap().take().unwrap();
    assert!(headers.get("authorization").is_none());
}

#[tokio::test]
async fn discrete_samples_carry_pod_and_key() {
    let (base, _, _) = counting_prometheus(VECTOR, Duration::ZERO).await;
    let samples = sources()
        .discrete_samples(&discrete_rule(&base, "q"), Duration::from_secs(2))
        .await
        .unwrap();
    assert_eq!(
        samples,
        [
            DiscreteSample {
                pod: "a".into(),
                key: "200".into(),
                value: 90.0
            },
            DiscreteSample {
                pod: "a".into(),
                key: "500".into(),
                value: 10.0
            },
        ]
    );
}

#[tokio::test]
async fn a_series_without_the_key_label_names_query_series_and_label() {
    let body = r#"{"status":"success","data":{"resultType":"vector","result":[
        {"metric":{"pod":"a"},"value":[1,"3"]}]}}"#;
    let (base, _, _) = counting_prometheus(body, Duration::ZERO).await;
    let err = sources()
        .discrete_samples(
            &discrete_rule(&base, "sum by (pod) (x)"),
            Duration::from_secs(2),
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), "missing_label");
    assert_eq!(
        err.to_string(),
        format!(
            "series {{pod=\"a\"}} of query `sum by (pod) (x)` to Prometheus http://{base} has no label `code` (the breaker's key); keep it in the query's `by (…)` clause"
        )
    );
}

#[tokio::test]
async fn scalar_and_matrix_results_are_refused_for_pod_detectors() {
    for (body, expected) in [
        (
            r#"{"status":"success","data":{"resultType":"scalar","result":[1,"3"]}}"#,
            "returned a scalar, expected a vector with one series per pod (label `pod`)",
        ),
        (
            r#"{"status":"success","data":{"resultType":"matrix","result":[]}}"#,
            "returned a matrix, expected a vector",
        ),
    ] {
        let (base, _, _) = counting_prometheus(body, Duration::ZERO).await;
        let rule = ContinuousRule {
            prometheus_service: base,
            promql: "q".into(),
            pod_name_key: "pod".into(),
            max_deviation_percent: 50.0,
        };
        let err = sources()
            .findings(&Detection::Continuous(rule), Duration::from_secs(1))
            .await
            .unwrap_err();
        assert!(err.to_string().contains(expected), "{err}");
    }
}

#[tokio::test]
async fn no_series_is_no_data_and_judges_nobody() {
    let body = r#"{"status":"success","data":{"resultType":"vector","result":[]}}"#;
    let (base, _, _) = counting_prometheus(body, Duration::ZERO).await;
    let findings = sources()
        .findings(
            &Detection::Discrete(discrete_rule(&base, "q")),
            Duration::from_secs(1),
        )
        .await
        .unwrap();
    assert_eq!(findings, Findings::default());
}

#[test]
fn query_timeout_is_the_evaluation_period_capped() {
    let sources = Sources::new(SourceSettings::default()).unwrap();
    assert_eq!(
        sources.query_timeout(Duration::from_secs(5)),
        Duration::from_secs(5)
    );
    assert_eq!(
        sources.query_timeout(Duration::from_secs(60)),
        Duration::from_secs(10)
    );
    assert_eq!(
        sources.query_timeout(Duration::ZERO),
        Duration::from_secs(10)
    );
}

#[test]
fn missing_or_bad_files_are_errors_naming_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing-token");
    let err = Sources::new(SourceSettings {
        bearer_token_file: Some(missing.clone()),
        ..SourceSettings::default()
    })
    .unwrap_err();
    assert_eq!(err.kind(), "config");
    let message = err.to_string();
    assert!(
        message.contains("bearer token file") && message.contains(&missing.display().to_string()),
        "{message}"
    );

    let empty = dir.path().join("empty-token");
    std::fs::write(&empty, " \n").unwrap();
    let err = Sources::new(SourceSettings {
        bearer_token_file: Some(empty),
        ..SourceSettings::default()
    })
    .unwrap_err();
    assert!(err.to_string().contains("empty"), "{err}");

    let bundle = dir.path().join("ca.pem");
    std::fs::write(&bundle, "not a certificate").unwrap();
    let err = Sources::new(SourceSettings {
        ca_bundle: Some(bundle.clone()),
        ..SourceSettings::default()
    })
    .unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains("CA bundle") && message.contains(&bundle.display().to_string()),
        "{message}"
    );

    std::fs::write(
        &bundle,
        "-----BEGIN CERTIFICATE-----\nbm90IGRlcg==\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let err = Sources::new(SourceSettings {
        ca_bundle: Some(bundle),
        ..SourceSettings::default()
    })
    .unwrap_err();
    assert!(err.to_string().contains("invalid certificate"), "{err}");
}

#[tokio::test]
async fn invalid_addresses_fail_before_any_request() {
    let err = sources()
        .query("ftp://prom:9090", "up", Duration::from_secs(1))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), "address");
    assert!(err.to_string().contains("prometheusService"));
}

/// An HTTPS Prometheus stand-in with a certificate for 127.0.0.1 signed by `testdata/ca.pem`
/// (made once with openssl, valid until 2126). Sends each request's head to the returned channel.
fn tls_prometheus() -> (String, std::sync::mpsc::Receiver<String>) {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    use std::io::{Read, Write};

    let certs = CertificateDer::pem_slice_iter(include_bytes!("testdata/server.pem"))
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_slice(include_bytes!("testdata/server.key")).unwrap();
    let config = Arc::new(
        rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap(),
    );
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let connection = rustls::ServerConnection::new(config.clone()).unwrap();
            let mut tls = rustls::StreamOwned::new(connection, stream);
            let mut request = Vec::new();
            let mut buffer = [0u8; 4096];
            // A refused handshake ends here with an error; wait for the next client.
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                match tls.read(&mut buffer) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => request.extend_from_slice(&buffer[..n]),
                }
            }
            if request.is_empty() {
                continue;
            }
            let head = String::from_utf8_lossy(&request).to_string();
            let _ = sender.send(head);
            let answer = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{VECTOR}",
                VECTOR.len()
            );
            let _ = tls.write_all(answer.as_bytes());
            tls.conn.send_close_notify();
            let _ = tls.flush();
        }
    });
    (address, receiver)
}

#[tokio::test]
async fn https_prometheus_is_trusted_through_the_ca_bundle() {
    let (address, requests) = tls_prometheus();
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("ca.pem");
    std::fs::write(&bundle, include_bytes!("testdata/ca.pem")).unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "s3cr3t").unwrap();
    let sources = Sources::new(SourceSettings {
        ca_bundle: Some(bundle),
        bearer_token_file: Some(token_file),
        ..SourceSettings::default()
    })
    .unwrap();

    let result = sources
        .query(
            &format!("https://{address}/prefix"),
            "up",
            Duration::from_secs(5),
        )
        .await
        .unwrap();

    assert_eq!(result.type_name(), "vector");
    let head = requests.recv_timeout(Duration::from_secs(5)).unwrap();
    assert!(
        head.starts_with("POST /prefix/api/v1/query HTTP/1.1"),
        "{head}"
    );
    assert!(
        head.to_lowercase().contains("authorization: bearer s3cr3t"),
        "{head}"
    );
}

#[tokio::test]
async fn https_prometheus_with_an_unknown_authority_is_refused() {
    let (address, _requests) = tls_prometheus();
    // The system's roots do not include the test CA.
    let err = sources()
        .query(&format!("https://{address}"), "up", Duration::from_secs(5))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), "unreachable");
    let message = err.to_string();
    assert!(
        message.contains("certificate") && message.contains(&address),
        "{message}"
    );
}

#[test]
fn trend_step_is_a_twentieth_of_the_window_never_under_the_evaluation_period() {
    let s = Duration::from_secs;
    assert_eq!(trend_step(s(600), s(5)), s(30));
    assert_eq!(trend_step(s(60), s(5)), s(5));
    assert_eq!(trend_step(s(10), Duration::from_millis(100)), s(1));
}

/// A Prometheus stand-in answering range queries with `body`, keeping the forms it got.
async fn range_prometheus(body: &'static str) -> (String, Arc<Mutex<Vec<String>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    let router = Router::new().route(
        "/api/v1/query_range",
        post(move |form: String| {
            let s = s.clone();
            async move {
                s.lock().unwrap().push(form);
                body
            }
        }),
    );
    (serve(router).await, seen)
}

fn trend_rule(base: &str) -> TrendRule {
    TrendRule {
        prometheus_service: base.into(),
        promql: "latency".into(),
        pod_name_key: "pod".into(),
        window: Duration::from_secs(300),
        max_slope: Some(0.5),
        min_slope: None,
    }
}

#[tokio::test]
async fn a_trend_is_a_range_query_over_the_window_judged_per_pod() {
    const MATRIX: &str = r#"{"status":"success","data":{"resultType":"matrix","result":[
        {"metric":{"pod":"climb"},"values":[[1000,"1"],[1015,"11"],[1030,"21"]]},
        {"metric":{"pod":"flat"},"values":[[1000,"1"],[1015,"1"],[1030,"1"]]},
        {"metric":{"pod":"short"},"values":[[1000,"1"],[1015,"30"]]}]}}"#;
    let (base, seen) = range_prometheus(MATRIX).await;
    let rule = trend_rule(&base);
    let findings = sources()
        .findings(&Detection::Trend(rule), Duration::from_secs(5))
        .await
        .unwrap();
    let anomalous: Vec<&str> = findings.anomalies.iter().map(|a| a.pod.as_str()).collect();
    assert_eq!(anomalous, ["climb"]);
    assert_eq!(findings.healthy, ["flat"]);
    assert_eq!(findings.not_judged[0].0, "short");
    let form = seen.lock().unwrap()[0].clone();
    assert!(form.contains("step=15"), "{form}");
    let param = |name: &str| -> f64 {
        let prefix = format!("{name}=");
        form.split('&')
            .find_map(|p| p.strip_prefix(&prefix))
            .unwrap()
            .parse()
            .unwrap()
    };
    assert!(
        (param("end") - param("start") - 300.0).abs() < 1e-6,
        "{form}"
    );
}

#[tokio::test]
async fn a_trend_query_that_is_not_a_matrix_is_a_clear_error() {
    let (base, _) =
        range_prometheus(r#"{"status":"success","data":{"resultType":"scalar","result":[1,"1"]}}"#)
            .await;
    let error = sources()
        .findings(&Detection::Trend(trend_rule(&base)), Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(
        error
            .to_string()
            .contains("the range query returned a scalar, expected a matrix with one series per pod (label `pod`)"),
        "{error}"
    );
}
