//! `decide`: the decision engine alone on a large discrete-value result, the same result
//! read from the bytes of a Prometheus answer, and fetched over HTTP.
//!
//! `kubervisor::source::findings_from_answer` reads an answer as the operator does, without
//! the transfer: the target's figure (parse + detect + plan) is timed through it. A local
//! server also answers `Sources` over loopback, and the bare transfer of the same body is
//! measured apart, so the transfer's share stays visible beside it.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use kubervisor::source::{Request, SourceSettings, Sources, findings_from_answer};
use kubervisor_api::pod::{NAME_LABEL, PodMarks, TRAFFIC_LABEL};
use kubervisor_api::{Detection, DiscreteRule, ValueList};
use kubervisor_core::PodView;
use kubervisor_core::breaker::{EjectionPlan, MinAvailable, plan_ejections};
use kubervisor_core::detect::{self, DiscreteSample, Findings};
use serde_json::{Value, json};
use tokio::task::JoinHandle;

use crate::stats::{Summary, round};

/// The breaker name used in plans.
pub const BREAKER: &str = "http-errors";
/// Every hundredth pod answers 80 % errors.
const ANOMALOUS_EVERY: usize = 100;

/// A fleet of `pods` pods with two series each (codes 200 and 500).
pub struct Fixture {
    pub rule: DiscreteRule,
    pub samples: Vec<DiscreteSample>,
    pub pods: Vec<PodView>,
    /// The same samples as a Prometheus `/api/v1/query` answer.
    pub body: Bytes,
    /// The same answer with its series in a fixed pseudo-random order: Prometheus does not
    /// sort instant vectors, nor keep a pod's series together.
    pub unordered_body: Bytes,
}

impl Fixture {
    pub fn new(pods: usize) -> Fixture {
        let name = |i: usize| format!("pod-{i:06}");
        let mut samples = Vec::with_capacity(pods * 2);
        for i in 0..pods {
            let ok = 100.0 + (i % 7) as f64;
            let errors = if i % ANOMALOUS_EVERY == 0 {
                ok * 4.0
            } else {
                (i % 3) as f64
            };
            for (code, value) in [("200", ok), ("500", errors)] {
                samples.push(DiscreteSample {
                    pod: name(i),
                    key: code.to_string(),
                    value,
                });
            }
        }
        let labels: BTreeMap<String, String> = [
            (TRAFFIC_LABEL.to_string(), "yes".to_string()),
            (NAME_LABEL.to_string(), "web".to_string()),
        ]
        .into();
        let views = (0..pods)
            .map(|i| PodView {
                name: name(i),
                running: true,
                ready: true,
                terminating: false,
                marks: PodMarks::read(Some(&labels), None),
            })
            .collect();
        let mut result: Vec<Value> = samples
            .iter()
            .map(|s| {
                json!({
                    "metric": {"code": s.key, "pod": s.pod},
                    "value": [1_767_225_600.123, format!("{}", s.value)],
                })
            })
            .collect();
        let answer = |result: &[Value]| {
            let body =
                json!({"status": "success", "data": {"resultType": "vector", "result": result}});
            Bytes::from(body.to_string())
        };
        let body = answer(&result);
        shuffle(&mut result);
        let unordered_body = answer(&result);
        Fixture {
            rule: DiscreteRule {
                prometheus_service: String::new(),
                promql: "sum by (code, pod) (increase(http_requests_total[1m]))".into(),
                key: "code".into(),
                pod_name_key: "pod".into(),
                values: ValueList::Good(["200".to_string()].into()),
                tolerance_percent: 50,
                min_activity: 10,
            },
            samples,
            pods: views,
            body,
            unordered_body,
        }
    }

    pub fn series(&self) -> usize {
        self.samples.len()
    }

    /// The rule pointed at a Prometheus at `addr`.
    pub fn rule_at(&self, addr: SocketAddr) -> DiscreteRule {
        DiscreteRule {
            prometheus_service: format!("http://{addr}"),
            ..self.rule.clone()
        }
    }
}

/// A Fisher-Yates shuffle with a fixed linear congruential generator: the same order on
/// every run.
fn shuffle<T>(items: &mut [T]) {
    let mut state: u64 = 42;
    for i in (1..items.len()).rev() {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        items.swap(i, (state >> 33) as usize % (i + 1));
    }
}

/// The limits of the benchmark's breaker: at least half of the pods keep traffic.
pub fn limits() -> MinAvailable {
    MinAvailable {
        count: 1,
        ratio_percent: 50,
    }
}

/// The decision engine alone: detection on parsed samples, then the ejection plan.
pub fn engine(rule: &DiscreteRule, samples: &[DiscreteSample], pods: &[PodView]) -> EjectionPlan {
    let findings = detect::discrete(rule, samples);
    plan_ejections(BREAKER, limits(), pods, &findings)
}

/// What the operator does with an answer it has received: read it for the rule and judge.
pub fn parse_and_detect(rule: &DiscreteRule, body: &[u8]) -> Findings {
    let request = Request::Prometheus {
        base: "http://prometheus.bench".into(),
        promql: rule.promql.clone(),
    };
    findings_from_answer(&request, 200, body, &Detection::Discrete(rule.clone()))
        .expect("the benchmark's answer is valid")
}

/// Parse + detect + plan on the answer's bytes: the decision with parsing, no transfer.
pub fn parse_and_decide(rule: &DiscreteRule, body: &[u8], pods: &[PodView]) -> EjectionPlan {
    let findings = parse_and_detect(rule, body);
    plan_ejections(BREAKER, limits(), pods, &findings)
}

/// What the operator does per evaluation: fetch and parse the answer, detect, plan.
pub async fn fetch_and_decide(
    sources: &Sources,
    rule: &DiscreteRule,
    pods: &[PodView],
) -> EjectionPlan {
    let findings = sources
        .findings(&Detection::Discrete(rule.clone()), Duration::from_secs(10))
        .await
        .expect("the local Prometheus answers");
    plan_ejections(BREAKER, limits(), pods, &findings)
}

/// Fetch and parse with the full parser (every label of every series kept): the samples
/// `Sources::discrete_samples` returns.
pub async fn fetch_samples(sources: &Sources, rule: &DiscreteRule) -> Vec<DiscreteSample> {
    sources
        .discrete_samples(rule, Duration::from_secs(10))
        .await
        .expect("the local Prometheus answers")
}

/// Sources as the operator builds them, with default settings.
pub fn sources() -> Sources {
    Sources::new(SourceSettings::default()).expect("default source settings are valid")
}

/// A Prometheus stand-in answering every request with the same body.
pub struct FakePrometheus {
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for FakePrometheus {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakePrometheus {
    pub async fn start(body: Bytes) -> anyhow::Result<FakePrometheus> {
        let app = axum::Router::new().fallback(move || {
            let body = body.clone();
            async move { ([(http::header::CONTENT_TYPE, "application/json")], body) }
        });
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(FakePrometheus { addr, task })
    }
}

/// A bare HTTP client, to time the transfer of the answer without parsing it.
pub struct RawClient {
    client: Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
    uri: http::Uri,
}

impl RawClient {
    pub fn new(addr: SocketAddr) -> RawClient {
        RawClient {
            client: Client::builder(TokioExecutor::new()).build_http(),
            uri: format!("http://{addr}/api/v1/query")
                .parse()
                .expect("a loopback URL"),
        }
    }

    /// POSTs a query and reads the whole answer; returns its length.
    pub async fn fetch(&self) -> usize {
        let request = http::Request::post(self.uri.clone())
            .header(
                http::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .body(Full::new(Bytes::from_static(b"query=up")))
            .expect("a valid request");
        let response = self
            .client
            .request(request)
            .await
            .expect("the local server answers");
        response
            .into_body()
            .collect()
            .await
            .expect("the body is read")
            .to_bytes()
            .len()
    }
}

/// Runs `f` `warmup` times, then times it `iterations` times.
async fn time<F, Fut, T>(warmup: usize, iterations: usize, mut f: F) -> Summary
where
    F: FnMut() -> Fut,
    Fut: Future<Output = T>,
{
    for _ in 0..warmup {
        std::hint::black_box(f().await);
    }
    let mut took = Vec::with_capacity(iterations);
    for _ in 0..iterations {
        let started = Instant::now();
        std::hint::black_box(f().await);
        took.push(started.elapsed());
    }
    Summary::of(&took)
}

/// The driver's `decide` scenario: the criterion benchmark's measurements with a timer loop.
pub async fn run(pods: usize, iterations: usize) -> anyhow::Result<Value> {
    let began = Instant::now();
    let fixture = Fixture::new(pods);
    let server = FakePrometheus::start(fixture.body.clone()).await?;
    let rule = fixture.rule_at(server.addr);
    let sources = sources();
    let raw = RawClient::new(server.addr);
    let warmup = 3;

    let plan = engine(&fixture.rule, &fixture.samples, &fixture.pods);
    let detect_only = time(warmup, iterations, || async {
        detect::discrete(&fixture.rule, &fixture.samples)
    })
    .await;
    let findings = detect::discrete(&fixture.rule, &fixture.samples);
    let plan_only = time(warmup, iterations, || async {
        plan_ejections(BREAKER, limits(), &fixture.pods, &findings)
    })
    .await;
    let engine_only = time(warmup, iterations, || async {
        engine(&fixture.rule, &fixture.samples, &fixture.pods)
    })
    .await;
    let parse_detect = time(warmup, iterations, || async {
        parse_and_detect(&fixture.rule, &fixture.body)
    })
    .await;
    let parse_decide = time(warmup, iterations, || async {
        parse_and_decide(&fixture.rule, &fixture.body, &fixture.pods)
    })
    .await;
    let parse_decide_unordered = time(warmup, iterations, || async {
        parse_and_decide(&fixture.rule, &fixture.unordered_body, &fixture.pods)
    })
    .await;
    let transfer = time(warmup, iterations, || raw.fetch()).await;
    let fetch_parse = time(warmup, iterations, || fetch_samples(&sources, &rule)).await;
    let end_to_end = time(warmup, iterations, || {
        fetch_and_decide(&sources, &rule, &fixture.pods)
    })
    .await;

    let parse_estimate = (fetch_parse.p50_ms - transfer.p50_ms).max(0.0);
    let figures = json!({
        "scenario": "decide",
        "pods": pods,
        "series": fixture.series(),
        "answer_bytes": fixture.body.len(),
        "ejections_planned": plan.ejections.len(),
        "iterations": iterations,
        "engine_only_ms": engine_only.to_json(),
        "engine_parts_ms": {"detect_discrete": detect_only.to_json(), "plan_ejections": plan_only.to_json()},
        "parse_detect_ms": parse_detect.to_json(),
        "parse_detect_plan_ms": parse_decide.to_json(),
        "parse_detect_plan_unordered_ms": parse_decide_unordered.to_json(),
        "http_transfer_only_ms": transfer.to_json(),
        "fetch_and_parse_ms": fetch_parse.to_json(),
        "parse_estimate_p50_ms": round(parse_estimate),
        "fetch_parse_decide_ms": end_to_end.to_json(),
        "targets": {
            "decide_with_parsing_p50_ms": {
                "target_at_most": 20.0,
                "value": parse_decide.p50_ms,
                "met": parse_decide.p50_ms <= 20.0,
                "note": "findings_from_answer on the answer's bytes, then plan_ejections; the transfer is http_transfer_only_ms",
            },
            "decide_with_parsing_minus_transfer_p50_ms": {
                "target_at_most": 20.0,
                "value": round((end_to_end.p50_ms - transfer.p50_ms).max(0.0)),
                "met": end_to_end.p50_ms - transfer.p50_ms <= 20.0,
                "note": "the same through Sources over loopback, the transfer's p50 subtracted",
            },
        },
        "wall_seconds": round(began.elapsed().as_secs_f64()),
    });
    eprintln!(
        "\ndecide ({} series, answer {:.1} MB, {iterations} iterations)",
        fixture.series(),
        fixture.body.len() as f64 / 1e6
    );
    eprintln!(
        "{:<44} {:>9} {:>9} {:>9} {:>9}",
        "", "p50 ms", "p99 ms", "max ms", "n"
    );
    for (name, s) in [
        ("engine: detect + plan (parsed)", &engine_only),
        ("  detect::discrete", &detect_only),
        ("  plan_ejections", &plan_only),
        ("parse + detect (findings_from_answer)", &parse_detect),
        ("parse + detect + plan (the target)", &parse_decide),
        (
            "  the same, series in random order",
            &parse_decide_unordered,
        ),
        ("HTTP transfer of the answer only", &transfer),
        ("fetch + full parse (discrete_samples)", &fetch_parse),
        ("fetch + parse + detect + plan (Sources)", &end_to_end),
    ] {
        eprintln!("{}", crate::table_row(name, s));
    }
    Ok(figures)
}
