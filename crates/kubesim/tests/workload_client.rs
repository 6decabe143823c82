//! The workload as a client of an API server: kubesim is driven over HTTP as if it were a
//! remote cluster, and the workload follows it through watches only.

mod common;

use common::{http_get, pod_json, sim_with, wait_for};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kubesim::workload::{WorkloadConfig, WorkloadHandle, start_against};
use kubesim::{Sim, SimConfig};
use serde_json::{Value, json};
use std::path::Path;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(15);

async fn fast_sim() -> Sim {
    sim_with(SimConfig {
        ready_delay: Duration::from_millis(50),
        ..Default::default()
    })
    .await
}

async fn create<K>(api: &Api<K>, object: Value)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    api.create(
        &PostParams::default(),
        &serde_json::from_value(object).unwrap(),
    )
    .await
    .unwrap();
}

async fn namespace(client: &kube::Client, name: &str) {
    create(
        &Api::<Namespace>::all(client.clone()),
        json!({"metadata": {"name": name}}),
    )
    .await;
}

/// A Service selecting `app=NAME, kubervisor/traffic=yes`.
fn service(name: &str, rps: &str) -> Value {
    json!({"metadata": {"name": name, "annotations": {"sim.kubervisor.io/rps": rps}},
        "spec": {"selector": {"app": name, "kubervisor/traffic": "yes"}, "ports": [{"port": 80}]}})
}

fn read_sd(path: &Path) -> Option<Vec<Value>> {
    serde_json::from_slice::<Value>(&std::fs::read(path).ok()?)
        .ok()?
        .as_array()
        .cloned()
}

fn sd_pods(doc: &[Value]) -> Vec<String> {
    doc.iter()
        .filter_map(|t| t["labels"]["pod"].as_str().map(str::to_string))
        .collect()
}

/// `(ok, errors)` from one pod's metrics endpoint, as Prometheus would scrape it.
async fn scrape_requests(handle: &WorkloadHandle, ns: &str, pod: &str) -> Option<(u64, u64)> {
    let addr = handle.metrics_addr().to_string();
    let (code, text) = http_get(&addr, &format!("/pods/{ns}/{pod}/metrics")).await?;
    if code != 200 {
        return None;
    }
    let counter = |code: &str| -> Option<u64> {
        let prefix = format!("http_requests_total{{code=\"{code}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix))?
            .parse()
            .ok()
    };
    Some((counter("200")?, counter("500")?))
}

/// Total requests the load generator sent to a Service, from `/services/metrics`.
async fn scrape_service_requests(handle: &WorkloadHandle, ns: &str, svc: &str) -> Option<u64> {
    let (_, text) = http_get(&handle.metrics_addr().to_string(), "/services/metrics").await?;
    let prefix = format!("sim_service_requests_total{{namespace=\"{ns}\",service=\"{svc}\",");
    let mut total = 0;
    let mut seen = false;
    for l in text.lines().filter(|l| l.starts_with(&prefix)) {
        total += l.rsplit(' ').next()?.parse::<u64>().ok()?;
        seen = true;
    }
    seen.then_some(total)
}

#[tokio::test]
async fn client_workload_follows_a_cluster_over_http() {
    let sim = fast_sim().await;
    let client = sim.client();
    let dir = tempfile::tempdir().unwrap();
    let sd = dir.path().join("targets.json");
    let handle = start_against(
        client.clone(),
        WorkloadConfig {
            namespace: Some("shop-ns".into()),
            prometheus_sd: Some(sd.clone()),
            tick: Duration::from_millis(20),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_ne!(handle.metrics_addr(), sim.metrics_addr());
    assert!(handle.metrics_addr().ip().is_loopback());

    namespace(&client, "shop-ns").await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "shop-ns");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "shop-ns");
    // The Deployment's selector leaves the canary alone, as a ReplicaSet would adopt it.
    let labels = json!({"app": "shop", "tier": "fleet", "kubervisor/traffic": "yes"});
    create(&deployments, json!({
        "metadata": {"name": "shop"},
        "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "shop", "tier": "fleet"}},
            "template": {"metadata": {"labels": labels, "annotations": {
                    "sim.kubervisor.io/error-rate": "0.25", "sim.kubervisor.io/latency-ms": "40"}},
                "spec": {"containers": [{"name": "app", "image": "sim"}]}}}
    }))
    .await;
    let mut canary = pod_json(
        "canary",
        json!({"app": "shop", "kubervisor/traffic": "yes"}),
    );
    canary["metadata"]["annotations"] = json!({"sim.kubervisor.io/error-rate": "0.8"});
    create(&pods, canary).await;
    create(
        &Api::<Service>::namespaced(client.clone(), "shop-ns"),
        service("shop", "400"),
    )
    .await;

    // The SD document lists the four pods, each with its own metrics path on the listener.
    let doc = wait_for("SD lists four pods of the shop Service", WAIT, || async {
        let doc = read_sd(&sd)?;
        (doc.len() == 4 && doc.iter().all(|t| t["labels"]["service"] == "shop")).then_some(doc)
    })
    .await;
    for t in &doc {
        let pod = t["labels"]["pod"].as_str().unwrap();
        assert_eq!(t["targets"], json!([handle.metrics_addr().to_string()]));
        assert_eq!(t["labels"]["namespace"], "shop-ns");
        assert_eq!(t["labels"]["kubervisor_traffic"], "yes");
        assert_eq!(
            t["labels"]["__metrics_path__"],
            format!("/pods/shop-ns/{pod}/metrics")
        );
    }
    let fleet: Vec<String> = sd_pods(&doc)
        .into_iter()
        .filter(|p| p != "canary")
        .collect();

    // Every pod serves, with the error share its annotation asks for, to the request.
    for (pod, rate) in fleet
        .iter()
        .map(|p| (p.as_str(), 0.25))
        .chain([("canary", 0.8)])
    {
        let (ok, errors) = wait_for(&format!("{pod} answers 100 requests"), WAIT, || async {
            scrape_requests(&handle, "shop-ns", pod)
                .await
                .filter(|(ok, err)| ok + err >= 100)
        })
        .await;
        let expected = ((ok + errors) as f64 * rate + 1e-6).floor() as u64;
        assert_eq!(
            errors,
            expected,
            "{pod}: {errors} errors of {}",
            ok + errors
        );
    }

    // Relabelled out of the Service's selector, the canary gets no more traffic.
    pods.patch(
        "canary",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"kubervisor/traffic": "no"}}})),
    )
    .await
    .unwrap();
    let frozen = wait_for("the canary stops receiving requests", WAIT, || async {
        let a = scrape_requests(&handle, "shop-ns", "canary").await?;
        tokio::time::sleep(Duration::from_millis(200)).await;
        let b = scrape_requests(&handle, "shop-ns", "canary").await?;
        (a == b).then_some(b)
    })
    .await;
    let before = scrape_service_requests(&handle, "shop-ns", "shop")
        .await
        .unwrap();
    wait_for("the Service keeps serving", WAIT, || async {
        let now = scrape_service_requests(&handle, "shop-ns", "shop").await?;
        (now >= before + 200).then_some(())
    })
    .await;
    assert_eq!(
        scrape_requests(&handle, "shop-ns", "canary").await,
        Some(frozen)
    );

    // A deleted pod leaves the SD document and its metrics path; its replacement joins.
    let victim = fleet[0].clone();
    pods.delete(&victim, &DeleteParams::default().grace_period(0))
        .await
        .unwrap();
    let doc = wait_for(
        "SD drops the deleted pod and lists its replacement",
        WAIT,
        || async {
            let doc = read_sd(&sd)?;
            let names = sd_pods(&doc);
            (names.len() == 4 && !names.contains(&victim)).then_some(names)
        },
    )
    .await;
    assert!(doc.contains(&"canary".to_string()), "{doc:?}");
    let (code, _) = http_get(
        &handle.metrics_addr().to_string(),
        &format!("/pods/shop-ns/{victim}/metrics"),
    )
    .await
    .unwrap();
    assert_eq!(code, 404);
    let replicas = pods
        .list(&ListParams::default().labels("tier=fleet"))
        .await
        .unwrap();
    assert_eq!(replicas.items.len(), 3);

    handle.shutdown().await;
    sim.shutdown().await;
}

#[tokio::test]
async fn client_workload_watches_one_namespace_or_all() {
    let sim = fast_sim().await;
    let client = sim.client();
    let dir = tempfile::tempdir().unwrap();
    let (one_sd, all_sd) = (dir.path().join("one.json"), dir.path().join("all.json"));
    let start = |namespace: Option<&str>, sd: &Path| {
        start_against(
            client.clone(),
            WorkloadConfig {
                namespace: namespace.map(str::to_string),
                prometheus_sd: Some(sd.to_path_buf()),
                tick: Duration::from_millis(20),
                ..Default::default()
            },
        )
    };
    let one = start(Some("team-a"), &one_sd).await.unwrap();
    let all = start(None, &all_sd).await.unwrap();
    for ns in ["team-b", "team-a"] {
        namespace(&client, ns).await;
        let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
        create(
            &pods,
            pod_json(
                &format!("{ns}-pod"),
                json!({"app": "web", "kubervisor/traffic": "yes"}),
            ),
        )
        .await;
        create(
            &Api::<Service>::namespaced(client.clone(), ns),
            service("web", "100"),
        )
        .await;
    }
    let everything = wait_for(
        "the all-namespaces workload sees both pods",
        WAIT,
        || async {
            let mut names = sd_pods(&read_sd(&all_sd)?);
            names.sort();
            (names.len() == 2).then_some(names)
        },
    )
    .await;
    assert_eq!(everything, ["team-a-pod", "team-b-pod"]);
    wait_for("team-a's Service gets traffic", WAIT, || async {
        scrape_service_requests(&one, "team-a", "web")
            .await
            .filter(|n| *n > 0)
    })
    .await;
    wait_for(
        "team-b's Service gets traffic from the other workload",
        WAIT,
        || async {
            scrape_service_requests(&all, "team-b", "web")
                .await
                .filter(|n| *n > 0)
        },
    )
    .await;
    assert_eq!(sd_pods(&read_sd(&one_sd).unwrap()), ["team-a-pod"]);
    assert_eq!(scrape_service_requests(&one, "team-b", "web").await, None);
    assert_eq!(scrape_requests(&one, "team-b", "team-b-pod").await, None);
    one.shutdown().await;
    all.shutdown().await;
    sim.shutdown().await;
}
