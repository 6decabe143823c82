//! The simulated workload: load balancing over endpoints, error rates, metrics, service discovery.

mod common;

use common::{http_get, pod_json, sim_with, wait_for};
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kubesim::SimConfig;
use serde_json::{Value, json};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(10);

#[tokio::test]
async fn load_follows_endpoints_and_error_rates_are_exact() {
    let dir = tempfile::tempdir().unwrap();
    let sd = dir.path().join("sd.json");
    let sim = sim_with(SimConfig {
        ready_delay: Duration::from_millis(50),
        prometheus_sd: Some(sd.clone()),
        workload_tick: Duration::from_millis(20),
        ..Default::default()
    })
    .await;
    let client = sim.client();
    let pods: Api<Pod> = Api::default_namespaced(client.clone());
    let svcs: Api<Service> = Api::default_namespaced(client.clone());
    for (name, err) in [("good", "0"), ("bad", "0.8")] {
        let mut p = pod_json(name, json!({"app": "shop", "kubervisor/traffic": "yes"}));
        p["metadata"]["annotations"] = json!({"sim.kubervisor.io/error-rate": err, "sim.kubervisor.io/price": if name == "bad" { "9.5" } else { "10" }});
        pods.create(&PostParams::default(), &serde_json::from_value(p).unwrap())
            .await
            .unwrap();
    }
    let svc = json!({"metadata": {"name": "shop", "annotations": {"sim.kubervisor.io/rps": "400"}},
        "spec": {"selector": {"app": "shop", "kubervisor/traffic": "yes"}, "ports": [{"port": 80}]}});
    svcs.create(
        &PostParams::default(),
        &serde_json::from_value(svc).unwrap(),
    )
    .await
    .unwrap();

    let stats = wait_for("traffic on the service", WAIT, || async {
        sim.service_stats("default", "shop")
            .filter(|s| s.requests >= 200)
    })
    .await;
    assert!(stats.errors > 0);
    let bad = sim.pod_stats("default", "bad").unwrap();
    let total = bad.ok + bad.errors;
    assert!(total > 50);
    let share = bad.errors as f64 / total as f64;
    assert!(
        (share - 0.8).abs() <= 1.0 / total as f64 + 1e-9,
        "exact 80% errors, got {share}"
    );
    assert_eq!(sim.pod_stats("default", "good").unwrap().errors, 0);

    // Metrics of one pod, as Prometheus scrapes them.
    let addr = sim.metrics_addr().to_string();
    let (code, text) = http_get(&addr, "/pods/default/bad/metrics").await.unwrap();
    assert_eq!(code, 200);
    for needle in [
        "http_requests_total{code=\"500\"}",
        "http_request_duration_seconds_bucket{le=\"0.025\"}",
        "price_sum",
        "price_count",
    ] {
        assert!(text.contains(needle), "missing {needle} in\n{text}");
    }
    let (_, svc_text) = http_get(&addr, "/services/metrics").await.unwrap();
    assert!(svc_text.contains(
        "sim_service_requests_total{namespace=\"default\",service=\"shop\",code=\"500\"}"
    ));

    // The SD file lists both pods with sanitised labels and per-target metrics paths.
    let doc: Value = wait_for("SD file lists both pods", WAIT, || async {
        let v: Value = serde_json::from_slice(&std::fs::read(&sd).ok()?).ok()?;
        (v.as_array()?.len() == 2 && v[0]["labels"]["service"] == "shop").then_some(v)
    })
    .await;
    let labels = &doc[0]["labels"];
    assert_eq!(labels["kubervisor_traffic"], "yes");
    assert_eq!(labels["namespace"], "default");
    assert_eq!(
        labels["__metrics_path__"],
        format!("/pods/default/{}/metrics", labels["pod"].as_str().unwrap())
    );
    assert_eq!(doc[0]["targets"][0], addr);

    // Ejecting the bad pod from the Service stops its traffic: the load balancer only uses endpoints.
    pods.patch(
        "bad",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"kubervisor/traffic": "no"}}})),
    )
    .await
    .unwrap();
    let frozen = wait_for("bad pod stops receiving requests", WAIT, || async {
        let a = sim.pod_stats("default", "bad").unwrap();
        tokio::time::sleep(Duration::from_millis(150)).await;
        let b = sim.pod_stats("default", "bad").unwrap();
        (a == b).then_some(b)
    })
    .await;
    let before = sim.service_stats("default", "shop").unwrap();
    wait_for(
        "service keeps serving, now without errors",
        WAIT,
        || async {
            let now = sim.service_stats("default", "shop").unwrap();
            (now.requests >= before.requests + 100).then_some(())
        },
    )
    .await;
    let after = sim.service_stats("default", "shop").unwrap();
    assert_eq!(
        after.errors, before.errors,
        "no new errors once the bad pod is out"
    );
    assert_eq!(sim.pod_stats("default", "bad").unwrap(), frozen);
    let (_, text) = http_get(&addr, "/pods/default/bad/metrics").await.unwrap();
    assert!(
        text.contains("http_requests_total"),
        "metrics stay while the pod exists"
    );
    sim.shutdown().await;
}
