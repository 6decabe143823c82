//! The eviction subresource: a delete that a PodDisruptionBudget may refuse with 429.

mod common;

use std::time::Duration;

use common::{pod_json, sim, wait_for};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, EvictParams, Patch, PatchParams, PostParams};
use kubesim::Sim;
use serde_json::json;

const WAIT: Duration = Duration::from_secs(10);

/// A client that gives up at the first 429, as the operator's does: kube's default client
/// retries 429 answers for a long time, which would hide the refusal.
fn no_retry_client(sim: &Sim) -> kube::Client {
    let mut config = kube::Config::new(sim.url().parse().unwrap());
    config.default_retry = false;
    kube::Client::try_from(config).unwrap()
}

async fn ready_pods(pods: &Api<Pod>, names: &[&str]) {
    for name in names {
        let p: Pod = serde_json::from_value(pod_json(name, json!({"app": "web"}))).unwrap();
        pods.create(&PostParams::default(), &p).await.unwrap();
    }
    wait_for("pods Ready", WAIT, || async {
        let list = pods.list(&Default::default()).await.ok()?;
        let ready = list
            .items
            .iter()
            .filter(|p| {
                p.status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
            })
            .count();
        (ready == names.len()).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_budget_that_allows_no_disruption_refuses_with_429_until_it_allows_one() {
    let sim = sim().await;
    let pods: Api<Pod> = Api::namespaced(no_retry_client(&sim), "default");
    ready_pods(&pods, &["a", "b"]).await;
    let pdbs: Api<PodDisruptionBudget> = Api::default_namespaced(sim.client());
    let pdb: PodDisruptionBudget = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {"minAvailable": 2, "selector": {"matchLabels": {"app": "web"}}}
    }))
    .unwrap();
    pdbs.create(&PostParams::default(), &pdb).await.unwrap();

    let refused = pods.evict("a", &EvictParams::default()).await.unwrap_err();
    let kube::Error::Api(status) = refused else {
        panic!("expected an API error, got {refused:?}")
    };
    assert_eq!(
        (status.code, status.reason.as_str()),
        (429, "TooManyRequests")
    );
    assert!(
        status.message.contains("disruption budget"),
        "{}",
        status.message
    );
    assert!(
        pods.get_opt("a").await.unwrap().is_some(),
        "nothing deleted"
    );

    let patch = json!({"spec": {"minAvailable": "50%"}});
    pdbs.patch("web", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    pods.evict("a", &EvictParams::default()).await.unwrap();
    let a = pods.get_opt("a").await.unwrap();
    assert!(
        a.is_none_or(|p| p.metadata.deletion_timestamp.is_some()),
        "evicted"
    );
    // One of two gone: 50% of 2 = 1 must stay, and b is that one.
    let again = pods.evict("b", &EvictParams::default()).await.unwrap_err();
    assert!(matches!(again, kube::Error::Api(s) if s.code == 429));
}

/// Posts a policy/v1 Eviction as the API server expects it (kube-rs 5's `evict` sends its
/// delete options under `delete_options`, a field the server does not know).
async fn evict_with_uid(client: &kube::Client, name: &str, uid: &str) -> Result<(), kube::Error> {
    let body = json!({
        "apiVersion": "policy/v1", "kind": "Eviction",
        "metadata": {"name": name, "namespace": "default"},
        "deleteOptions": {"preconditions": {"uid": uid}},
    });
    let request = http::Request::post(format!("/api/v1/namespaces/default/pods/{name}/eviction"))
        .header("content-type", "application/json")
        .body(serde_json::to_vec(&body).unwrap())
        .unwrap();
    client.request_text(request).await.map(|_| ())
}

#[tokio::test]
async fn eviction_honours_delete_preconditions_and_needs_no_budget() {
    let sim = sim().await;
    let pods: Api<Pod> = Api::default_namespaced(sim.client());
    ready_pods(&pods, &["solo"]).await;
    let conflict = evict_with_uid(&sim.client(), "solo", "not-its-uid")
        .await
        .unwrap_err();
    assert!(matches!(conflict, kube::Error::Api(s) if s.code == 409));
    let uid = pods.get("solo").await.unwrap().metadata.uid.unwrap();
    evict_with_uid(&sim.client(), "solo", &uid).await.unwrap();
    let missing = pods
        .evict("nobody", &EvictParams::default())
        .await
        .unwrap_err();
    assert!(matches!(missing, kube::Error::Api(s) if s.code == 404));
}
