//! The HTTP endpoint of `kubervisor run`: metrics series and values, liveness, readiness.

use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use kubervisor::telemetry::{
    self, Health, Metrics, OPENMETRICS_CONTENT_TYPE, PROMETHEUS_TEXT_CONTENT_TYPE,
};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

struct Endpoint {
    base: String,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    stop: Option<oneshot::Sender<()>>,
    server: JoinHandle<std::io::Result<()>>,
}

async fn start() -> Endpoint {
    let listener = telemetry::bind("127.0.0.1:0".parse().expect("literal address"))
        .await
        .expect("bind an ephemeral port");
    let addr = listener.local_addr().expect("bound address");
    let metrics = Arc::new(Metrics::new());
    let health = Arc::new(Health::new());
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(telemetry::serve(
        listener,
        metrics.clone(),
        health.clone(),
        async move {
            let _ = stopped.await;
        },
    ));
    Endpoint {
        base: format!("http://{addr}"),
        metrics,
        health,
        stop: Some(stop),
        server,
    }
}

struct Reply {
    status: u16,
    content_type: String,
    body: String,
}

async fn get(base: &str, path: &str, accept: Option<&str>) -> Reply {
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<bytes::Bytes>>();
    let mut request = http::Request::get(format!("{base}{path}"));
    if let Some(accept) = accept {
        request = request.header(http::header::ACCEPT, accept);
    }
    let request = request.body(Empty::new()).expect("valid request");
    let response = tokio::time::timeout(Duration::from_secs(10), client.request(request))
        .await
        .expect("the endpoint answers within 10 s")
        .expect("an HTTP response");
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("a complete body")
        .to_bytes();
    Reply {
        status,
        content_type,
        body: String::from_utf8(body.to_vec()).expect("a UTF-8 body"),
    }
}

const PROMETHEUS_ACCEPT: &str =
    "application/openmetrics-text;version=1.0.0;q=0.5,text/plain;version=0.0.4;q=0.3,*/*;q=0.1";

fn assert_has_lines(text: &str, expected: &[&str]) {
    for line in expected {
        assert!(
            text.lines().any(|l| l == *line),
            "missing line {line:?} in:\n{text}"
        );
    }
}

#[tokio::test]
async fn metrics_expose_every_series_with_its_values_in_openmetrics() {
    let endpoint = start().await;
    let m = &endpoint.metrics;
    m.set_pod_counts("shop", "web", 5, 2, 1, 0);
    m.set_items("shop", 1);
    m.count_decision("http-errors", "shop", "web-1", "break");
    m.count_decision("http-errors", "shop", "web-1", "break");
    m.count_decision("http-errors", "shop", "web-2", "dryrun_kill");
    m.observe_reconcile("shop", "web", Duration::from_millis(15), None);
    m.observe_reconcile(
        "shop",
        "web",
        Duration::from_millis(30),
        Some("index_not_synced"),
    );
    m.observe_source("prometheus", Duration::from_millis(3), None);
    m.observe_source("custom", Duration::from_secs(20), Some("timeout"));
    m.count_pod_write("patch", "ok");
    m.count_pod_write("patch", "ok");
    m.count_pod_write("patch", "conflict");
    m.count_pod_write("delete", "error");

    let reply = get(&endpoint.base, "/metrics", Some(PROMETHEUS_ACCEPT)).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.content_type, OPENMETRICS_CONTENT_TYPE);
    assert_has_lines(
        &reply.body,
        &[
            "# TYPE kubervisor_breaker_gauge gauge",
            r#"kubervisor_breaker_gauge{name="web",namespace="shop",type="managed"} 5"#,
            r#"kubervisor_breaker_gauge{name="web",namespace="shop",type="breaked"} 2"#,
            r#"kubervisor_breaker_gauge{name="web",namespace="shop",type="paused"} 1"#,
            r#"kubervisor_breaker_gauge{name="web",namespace="shop",type="unknown"} 0"#,
            "# TYPE kubervisor_item_gauge gauge",
            r#"kubervisor_item_gauge{namespace="shop"} 1"#,
            "# TYPE kubervisor_breaker_count counter",
            r#"kubervisor_breaker_count_total{breaker="http-errors",namespace="shop",pod="web-1",type="break"} 2"#,
            r#"kubervisor_breaker_count_total{breaker="http-errors",namespace="shop",pod="web-2",type="dryrun_kill"} 1"#,
            "# TYPE kubervisor_reconcile_duration_seconds histogram",
            r#"kubervisor_reconcile_duration_seconds_count{namespace="shop",name="web"} 2"#,
            r#"kubervisor_reconcile_duration_seconds_sum{namespace="shop",name="web"} 0.045"#,
            r#"kubervisor_reconcile_duration_seconds_bucket{le="0.01",namespace="shop",name="web"} 0"#,
            r#"kubervisor_reconcile_duration_seconds_bucket{le="0.02",namespace="shop",name="web"} 1"#,
            r#"kubervisor_reconcile_duration_seconds_bucket{le="0.04",namespace="shop",name="web"} 2"#,
            r#"kubervisor_reconcile_duration_seconds_bucket{le="+Inf",namespace="shop",name="web"} 2"#,
            "# TYPE kubervisor_reconcile_errors counter",
            r#"kubervisor_reconcile_errors_total{namespace="shop",name="web",reason="index_not_synced"} 1"#,
            "# TYPE kubervisor_source_query_duration_seconds histogram",
            r#"kubervisor_source_query_duration_seconds_count{source="prometheus"} 1"#,
            r#"kubervisor_source_query_duration_seconds_count{source="custom"} 1"#,
            r#"kubervisor_source_query_duration_seconds_bucket{le="10.24",source="custom"} 0"#,
            r#"kubervisor_source_query_duration_seconds_bucket{le="+Inf",source="custom"} 1"#,
            "# TYPE kubervisor_source_errors counter",
            r#"kubervisor_source_errors_total{source="custom",kind="timeout"} 1"#,
            "# TYPE kubervisor_pod_writes counter",
            r#"kubervisor_pod_writes_total{verb="patch",outcome="ok"} 2"#,
            r#"kubervisor_pod_writes_total{verb="patch",outcome="conflict"} 1"#,
            r#"kubervisor_pod_writes_total{verb="delete",outcome="error"} 1"#,
        ],
    );
    assert!(
        !reply
            .body
            .contains(r#"kubervisor_source_errors_total{source="prometheus""#),
        "a successful query counts no error"
    );
    assert!(
        reply.body.ends_with("# EOF\n"),
        "OpenMetrics ends with # EOF"
    );
    assert_eq!(reply.body, m.encode(), "the endpoint serves encode()");
}

#[tokio::test]
async fn metrics_without_accept_header_are_prometheus_text() {
    let endpoint = start().await;
    endpoint.metrics.count_pod_write("delete", "ok");

    let reply = get(&endpoint.base, "/metrics", None).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.content_type, PROMETHEUS_TEXT_CONTENT_TYPE);
    assert_has_lines(
        &reply.body,
        &[
            "# TYPE kubervisor_pod_writes_total counter",
            r#"kubervisor_pod_writes_total{verb="delete",outcome="ok"} 1"#,
        ],
    );
    assert!(!reply.body.contains("# EOF"));
}

#[tokio::test]
async fn forget_removes_the_pod_gauges_of_a_deleted_service_only() {
    let m = Metrics::new();
    m.set_pod_counts("shop", "web", 3, 0, 0, 0);
    m.set_pod_counts("shop", "api", 4, 1, 0, 0);
    m.count_decision("b", "shop", "web-1", "break");
    m.forget("shop", "web");

    let text = m.encode();
    assert!(
        !text.contains(r#"kubervisor_breaker_gauge{name="web""#),
        "web's gauges are gone:\n{text}"
    );
    assert_has_lines(
        &text,
        &[
            r#"kubervisor_breaker_gauge{name="api",namespace="shop",type="managed"} 4"#,
            r#"kubervisor_breaker_count_total{breaker="b",namespace="shop",pod="web-1",type="break"} 1"#,
        ],
    );
}

#[tokio::test]
async fn ready_flips_from_503_to_200_when_caches_sync_and_live_is_always_ok() {
    let endpoint = start().await;

    let live = get(&endpoint.base, "/live", None).await;
    assert_eq!((live.status, live.body.as_str()), (200, "ok\n"));
    let ready = get(&endpoint.base, "/ready", None).await;
    assert_eq!(
        (ready.status, ready.body.as_str()),
        (503, "caches not synced\n")
    );

    endpoint.health.set_caches_synced(true);
    let ready = get(&endpoint.base, "/ready", None).await;
    assert_eq!((ready.status, ready.body.as_str()), (200, "ok\n"));

    // A standby replica is ready too: readiness is not leadership.
    endpoint.health.set_election_enabled(true);
    let ready = get(&endpoint.base, "/ready", None).await;
    assert_eq!((ready.status, ready.body.as_str()), (200, "ok: standby\n"));
    endpoint.health.set_leading(true);
    let ready = get(&endpoint.base, "/ready", None).await;
    assert_eq!((ready.status, ready.body.as_str()), (200, "ok: leader\n"));

    let live = get(&endpoint.base, "/live", None).await;
    assert_eq!(live.status, 200);
}

#[tokio::test]
async fn unknown_paths_are_404() {
    let endpoint = start().await;
    for path in ["/", "/metricsx", "/healthz", "/ready/now"] {
        assert_eq!(get(&endpoint.base, path, None).await.status, 404, "{path}");
    }
}

#[tokio::test]
async fn serve_returns_ok_after_shutdown() {
    let mut endpoint = start().await;
    assert_eq!(get(&endpoint.base, "/live", None).await.status, 200);
    if let Some(stop) = endpoint.stop.take() {
        let _ = stop.send(());
    }
    let result = tokio::time::timeout(Duration::from_secs(10), &mut endpoint.server)
        .await
        .expect("the server stops within 10 s after shutdown")
        .expect("the server task does not panic");
    assert!(result.is_ok(), "{result:?}");
}

#[tokio::test]
async fn binding_an_address_in_use_names_the_address() {
    let first = telemetry::bind("127.0.0.1:0".parse().expect("literal address"))
        .await
        .expect("bind an ephemeral port");
    let addr = first.local_addr().expect("bound address");
    let err = telemetry::bind(addr).await.expect_err("the port is taken");
    let message = err.to_string();
    assert!(message.contains(&addr.to_string()), "{message}");
    assert!(message.contains("already in use"), "{message}");
}

#[tokio::test]
async fn breaker_gauges_follow_the_last_evaluation_and_go_with_their_service() {
    use kubervisor::telemetry::BreakerState;
    let m = Metrics::new();
    m.set_leading(true);
    m.set_breaker_state(
        "shop",
        "web",
        "errors",
        BreakerState {
            anomalous: 3,
            spared_by_floor: 1,
            panic: false,
            source_failing: false,
        },
    );
    m.set_breaker_state(
        "shop",
        "api",
        "latency",
        BreakerState {
            panic: true,
            ..BreakerState::default()
        },
    );
    assert_has_lines(
        &m.encode(),
        &[
            "kubervisor_leading 1",
            r#"kubervisor_breaker_anomalous_pods{namespace="shop",name="web",breaker="errors"} 3"#,
            r#"kubervisor_breaker_spared_pods{namespace="shop",name="web",breaker="errors"} 1"#,
            r#"kubervisor_breaker_panic{namespace="shop",name="api",breaker="latency"} 1"#,
            r#"kubervisor_breaker_source_failing{namespace="shop",name="web",breaker="errors"} 0"#,
        ],
    );
    m.forget("shop", "web");
    let text = m.encode();
    assert!(!text.contains(r#"name="web",breaker"#), "{text}");
    assert!(
        text.contains(
            r#"kubervisor_breaker_panic{namespace="shop",name="api",breaker="latency"} 1"#
        )
    );
    // A later evaluation replaces the breaker's values: one series, the last value.
    m.set_breaker_state("shop", "api", "latency", BreakerState::default());
    let text = m.encode();
    let panic_lines: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("kubervisor_breaker_panic{"))
        .collect();
    assert_eq!(
        panic_lines,
        [r#"kubervisor_breaker_panic{namespace="shop",name="api",breaker="latency"} 0"#]
    );
}
