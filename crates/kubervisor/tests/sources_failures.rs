//! Every way a source can fail ejects nothing and says what went wrong.

mod support;

use std::time::{Duration, Instant};

use axum::Router;
use axum::http::StatusCode;
use axum::routing::{get, post};
use kubervisor::harness::{PrometheusOptions, PrometheusProcess};
use kubervisor::source::{SourceError, SourceSettings, Sources};
use kubervisor_api::{ContinuousRule, CustomRule, Detection, DiscreteRule, ValueList};
use support::{
    FakeFleet, FakePod, closed_port, eventually, serve, start_prometheus, write_sd_file,
};

const EVALUATION_PERIOD: Duration = Duration::from_secs(5);

fn sources() -> Sources {
    Sources::new(SourceSettings::default()).unwrap()
}

fn requests_by_code(prometheus_service: &str, promql: &str) -> Detection {
    Detection::Discrete(DiscreteRule {
        prometheus_service: prometheus_service.into(),
        promql: promql.into(),
        key: "code".into(),
        pod_name_key: "pod".into(),
        values: ValueList::Good(["200".to_string()].into()),
        tolerance_percent: 50,
        min_activity: 2,
    })
}

fn custom(url: String) -> Detection {
    Detection::Custom(CustomRule { url })
}

#[tokio::test]
async fn prometheus_down_is_unreachable_naming_the_endpoint() {
    let address = format!("127.0.0.1:{}", closed_port());
    let detection = requests_by_code(
        &address,
        "sum by (code, pod) (increase(http_requests_total[10s]))",
    );

    let err = sources()
        .findings(&detection, EVALUATION_PERIOD)
        .await
        .unwrap_err();

    assert_eq!(err.kind(), "unreachable");
    let message = err.to_string();
    assert!(
        message.contains(&format!("Prometheus http://{address}"))
            && message.contains("increase(http_requests_total[10s])")
            && message.to_lowercase().contains("connection refused"),
        "{message}"
    );
}

#[tokio::test]
async fn slow_prometheus_times_out_after_the_evaluation_period() {
    let router = Router::new().route(
        "/api/v1/query",
        post(|| async {
            tokio::time::sleep(Duration::from_secs(30)).await;
            "{}"
        }),
    );
    let address = serve(router).await;
    let detection = Detection::Continuous(ContinuousRule {
        prometheus_service: address.clone(),
        promql: "rate(price_sum[10s])".into(),
        pod_name_key: "pod".into(),
        max_deviation_percent: 50.0,
    });

    let started = Instant::now();
    let err = sources()
        .findings(&detection, Duration::from_millis(300))
        .await
        .unwrap_err();

    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert!(matches!(err, SourceError::Timeout { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!(
            "query `rate(price_sum[10s])` to Prometheus http://{address}: no complete answer after 0.3 s"
        )
    );
}

#[tokio::test]
async fn real_prometheus_syntax_errors_are_surfaced_and_no_data_judges_nobody() {
    let dir = tempfile::tempdir().unwrap();
    let sd_file = dir.path().join("targets.json");
    write_sd_file(&sd_file, &[]);
    let prometheus = start_prometheus(&sd_file).await;

    let broken = requests_by_code(
        prometheus.url(),
        "sum by (code, pod (increase(http_requests_total[10s]))",
    );
    let err = sources()
        .findings(&broken, EVALUATION_PERIOD)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), "prometheus");
    let message = err.to_string();
    assert!(
        message.contains("Prometheus answered bad_data: invalid parameter \"query\": ")
            && message.contains("parse error"),
        "{message}"
    );

    // Nothing scraped: the query matches no series, which is no verdict, never "all broken".
    let nothing = requests_by_code(
        prometheus.url(),
        "sum by (code, pod) (increase(http_requests_total[10s]))",
    );
    let findings = sources()
        .findings(&nothing, EVALUATION_PERIOD)
        .await
        .unwrap();
    assert!(
        findings.anomalies.is_empty() && findings.healthy.is_empty(),
        "{findings:?}"
    );
    prometheus.stop().await;
}

#[tokio::test]
async fn real_prometheus_series_without_the_pod_label_are_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let fleet = FakeFleet::start(
        dir.path(),
        vec![
            FakePod::new("shop-1"),
            FakePod::new("shop-2").error_rate(0.9),
        ],
    )
    .await;
    let prometheus = start_prometheus(&fleet.sd_file).await;
    prometheus
        .wait_for_targets(2, Duration::from_secs(20))
        .await
        .unwrap();
    // The pod label aggregated away, as happens when a user forgets it in `by (…)`.
    let promql = "sum by (code) (increase(http_requests_total[10s]))";
    let detection = requests_by_code(prometheus.address(), promql);

    let err = eventually("series to be scraped", Duration::from_secs(30), || async {
        match sources().findings(&detection, EVALUATION_PERIOD).await {
            Ok(findings) => Err(format!("no error yet: {findings:?}")),
            Err(e) => Ok(e),
        }
    })
    .await;

    assert_eq!(err.kind(), "missing_label", "{err}");
    let message = err.to_string();
    assert!(
        message.starts_with("series {code=")
            && message.contains(&format!("of query `{promql}` to Prometheus"))
            && message.contains("has no label `pod` (the breaker's podNamekey)"),
        "{message}"
    );
    prometheus.stop().await;
}

#[tokio::test]
async fn missing_prometheus_binary_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let options = PrometheusOptions {
        binary: Some(dir.path().join("no-such-prometheus")),
        ..PrometheusOptions::new(dir.path().join("targets.json"))
    };
    let err = PrometheusProcess::start(options).await.err().unwrap();
    assert!(err.to_string().contains("no-such-prometheus"), "{err}");
}

async fn custom_detector(router: Router) -> String {
    format!("{}/anomalies", serve(router).await)
}

#[tokio::test]
async fn custom_detector_pod_list_names_the_anomalous_pods() {
    let url = custom_detector(Router::new().route(
        "/anomalies",
        get(|| async {
            r#"{"kind":"PodList","apiVersion":"v1","metadata":{"resourceVersion":""},
                "items":[{"metadata":{"name":"shop-3","namespace":"default"}},
                         {"metadata":{"name":"shop-1","namespace":"default"}}]}"#
        }),
    ))
    .await;
    let findings = sources()
        .findings(&custom(url), EVALUATION_PERIOD)
        .await
        .unwrap();
    let pods: Vec<&str> = findings.anomalies.iter().map(|a| a.pod.as_str()).collect();
    assert_eq!(pods, ["shop-1", "shop-3"]);
}

#[tokio::test]
async fn custom_detector_non_200_is_an_error_with_status_and_body() {
    let url = custom_detector(Router::new().route(
        "/anomalies",
        get(|| async { (StatusCode::SERVICE_UNAVAILABLE, "model is still loading") }),
    ))
    .await;
    let err = sources()
        .findings(&custom(url.clone()), EVALUATION_PERIOD)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), "http");
    assert_eq!(
        err.to_string(),
        format!("custom detector http://{url}: HTTP 503: model is still loading")
    );
}

#[tokio::test]
async fn custom_detector_invalid_json_is_an_error() {
    let url =
        custom_detector(Router::new().route("/anomalies", get(|| async { "shop-1, shop-2" })))
            .await;
    let err = sources()
        .findings(&custom(url.clone()), EVALUATION_PERIOD)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), "decode");
    let message = err.to_string();
    assert!(
        message.starts_with(&format!(
            "custom detector http://{url}: the answer is not a PodList"
        )) && message.contains("shop-1, shop-2"),
        "{message}"
    );
}

#[tokio::test]
async fn custom_detector_slower_than_its_timeout_is_an_error() {
    let url = custom_detector(Router::new().route(
        "/anomalies",
        get(|| async {
            tokio::time::sleep(Duration::from_secs(30)).await;
            r#"{"items":[]}"#
        }),
    ))
    .await;
    let sources = Sources::new(SourceSettings {
        custom_timeout: Duration::from_millis(300),
        ..SourceSettings::default()
    })
    .unwrap();
    let started = Instant::now();
    let err = sources
        .findings(&custom(url.clone()), EVALUATION_PERIOD)
        .await
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!(
        err.to_string(),
        format!("custom detector http://{url}: no complete answer after 0.3 s")
    );
}

#[tokio::test]
async fn custom_detector_down_is_unreachable() {
    let url = format!("127.0.0.1:{}/anomalies", closed_port());
    let err = sources()
        .findings(&custom(url.clone()), EVALUATION_PERIOD)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), "unreachable");
    assert!(
        err.to_string()
            .starts_with(&format!("custom detector http://{url}: cannot connect")),
        "{err}"
    );
}

/// A source whose answer exceeds `--source-max-body-mib` is refused by name, whether the
/// answer is large (a 50 MB PodList) or never ends; nothing is judged from it.
#[tokio::test]
async fn oversized_and_endless_answers_are_refused_at_the_bound() {
    use axum::body::Body;
    let huge = || {
        // A valid PodList of about 50 MB.
        let item = r#"{"metadata":{"name":"web-0000000000000000000000000000000000000000000000000000000000"}},"#;
        let mut body = String::from(r#"{"kind":"PodList","items":["#);
        while body.len() < 50_000_000 {
            body.push_str(item);
        }
        body.push_str(r#"{"metadata":{"name":"last"}}]}"#);
        body
    };
    let endless = || {
        let chunk = axum::body::Bytes::from(vec![b' '; 64 * 1024]);
        let stream = futures::stream::repeat_with(move || Ok::<_, std::io::Error>(chunk.clone()));
        Body::from_stream(stream)
    };
    let url = serve(
        Router::new()
            .route("/huge", get(move || async move { huge() }))
            .route("/endless", get(move || async move { endless() }))
            .route("/api/v1/query", post(move || async move { endless() })),
    )
    .await;
    let sources = Sources::new(SourceSettings {
        custom_timeout: Duration::from_secs(20),
        max_body: 16 << 20,
        ..SourceSettings::default()
    })
    .unwrap();
    for path in ["huge", "endless"] {
        let started = Instant::now();
        let err = sources
            .findings(&custom(format!("{url}/{path}")), EVALUATION_PERIOD)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), "decode", "{path}: {err}");
        let message = err.to_string();
        assert!(
            message.contains(&format!("/{path}"))
                && message.contains("larger than 16 MiB (--source-max-body-mib)"),
            "{message}"
        );
        // Refused at the bound, not at the timeout.
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{path}: {:?}",
            started.elapsed()
        );
    }
    // The same bound for Prometheus: an answer that never ends.
    let err = sources
        .findings(&requests_by_code(&url, "up"), Duration::from_secs(20))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), "decode", "{err}");
    assert!(err.to_string().contains("larger than 16 MiB"), "{err}");
}
