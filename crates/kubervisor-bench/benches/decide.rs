//! The decision engine on 100 000 series (50 000 pods × 2 codes), the same result read
//! from the bytes of a Prometheus answer, and fetched and parsed from it on loopback.
//!
//! `cargo bench -p kubervisor-bench --bench decide`

use criterion::{Criterion, criterion_group, criterion_main};
use kubervisor_bench::decide::{self, FakePrometheus, Fixture, RawClient};
use kubervisor_core::breaker::plan_ejections;
use kubervisor_core::detect;

const PODS: usize = 50_000;

fn decide(c: &mut Criterion) {
    let fixture = Fixture::new(PODS);
    let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime");
    let server = runtime
        .block_on(FakePrometheus::start(fixture.body.clone()))
        .expect("a local Prometheus stand-in");
    let rule = fixture.rule_at(server.addr);
    let sources = decide::sources();
    let raw = RawClient::new(server.addr);
    let findings = detect::discrete(&fixture.rule, &fixture.samples);

    let mut group = c.benchmark_group("decide_100k_series");
    group.sample_size(20);
    group.bench_function("engine_detect_and_plan", |b| {
        b.iter(|| decide::engine(&fixture.rule, &fixture.samples, &fixture.pods))
    });
    group.bench_function("detect_discrete", |b| {
        b.iter(|| detect::discrete(&fixture.rule, &fixture.samples))
    });
    group.bench_function("plan_ejections", |b| {
        b.iter(|| plan_ejections(decide::BREAKER, decide::limits(), &fixture.pods, &findings))
    });
    group.bench_function("parse_and_detect", |b| {
        b.iter(|| decide::parse_and_detect(&fixture.rule, &fixture.body))
    });
    group.bench_function("parse_detect_plan", |b| {
        b.iter(|| decide::parse_and_decide(&fixture.rule, &fixture.body, &fixture.pods))
    });
    group.bench_function("parse_detect_plan_unordered", |b| {
        b.iter(|| decide::parse_and_decide(&fixture.rule, &fixture.unordered_body, &fixture.pods))
    });
    group.bench_function("http_transfer_only", |b| {
        b.iter(|| runtime.block_on(raw.fetch()))
    });
    group.bench_function("fetch_and_parse", |b| {
        b.iter(|| runtime.block_on(decide::fetch_samples(&sources, &rule)))
    });
    group.bench_function("fetch_parse_detect_plan", |b| {
        b.iter(|| runtime.block_on(decide::fetch_and_decide(&sources, &rule, &fixture.pods)))
    });
    group.finish();
}

criterion_group!(benches, decide);
criterion_main!(benches);
