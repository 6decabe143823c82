//! Fleet-size check: a thousand pods behind a hundred Services settle quickly. The
//! benchmarks (`kubervisor-bench -- scale`) run the 10,000-pod fleet.

mod common;

use common::{sim_with, wait_for};
use kube::api::{Api, PostParams};
use kubesim::SimConfig;
use serde_json::json;
use std::time::{Duration, Instant};

const SERVICES: usize = 100;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_pods_behind_a_hundred_services() {
    let sim = sim_with(SimConfig {
        ready_delay: Duration::from_millis(200),
        ..Default::default()
    })
    .await;
    let client = sim.client();
    let deploys: Api<k8s_openapi::api::apps::v1::Deployment> =
        Api::default_namespaced(client.clone());
    let svcs: Api<k8s_openapi::api::core::v1::Service> = Api::default_namespaced(client.clone());
    let started = Instant::now();
    for i in 0..SERVICES {
        let app = format!("app-{i}");
        let d = json!({"metadata": {"name": app}, "spec": {"replicas": 10, "selector": {"matchLabels": {"app": app}},
            "template": {"metadata": {"labels": {"app": app, "kubervisor/traffic": "yes"}}, "spec": {"containers": [{"name": "c", "image": "sim"}]}}}});
        deploys
            .create(&PostParams::default(), &serde_json::from_value(d).unwrap())
            .await
            .unwrap();
        let s = json!({"metadata": {"name": app}, "spec": {"selector": {"app": app, "kubervisor/traffic": "yes"}, "ports": [{"port": 80}]}});
        svcs.create(&PostParams::default(), &serde_json::from_value(s).unwrap())
            .await
            .unwrap();
    }
    eprintln!(
        "created {SERVICES} deployments and services in {:?}",
        started.elapsed()
    );
    wait_for(
        "10 ready endpoints for every service",
        Duration::from_secs(60),
        || async {
            let eps = sim.store().list_all(
                &kubesim::resources::ResKey::new("", "endpoints"),
                Some("default"),
            );
            let full = eps
                .iter()
                .filter(|e| {
                    e.pointer("/subsets/0/addresses")
                        .and_then(|a| a.as_array())
                        .is_some_and(|a| a.len() == 10)
                })
                .count();
            tokio::time::sleep(Duration::from_millis(200)).await;
            (full == SERVICES).then_some(())
        },
    )
    .await;
    eprintln!("all endpoints ready after {:?}", started.elapsed());
    let t = Instant::now();
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::default_namespaced(client.clone());
    let list = pods.list(&Default::default()).await.unwrap();
    eprintln!("listed {} pods in {:?}", list.items.len(), t.elapsed());
    assert_eq!(list.items.len(), SERVICES * 10);
    sim.shutdown().await;
}
