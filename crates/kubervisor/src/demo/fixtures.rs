//! The objects the demo (and the end-to-end tests) put in a cluster.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use kube::Client;
use kube::api::{Api, PostParams};
use serde_json::json;

/// Creates a Deployment of `replicas` pods labelled `app: name` and a Service over them
/// whose selector requires `kubervisor/traffic: yes`, as Kubervisor expects.
pub async fn deploy_guarded_service(
    client: &Client,
    namespace: &str,
    name: &str,
    replicas: i32,
    pod_annotations: BTreeMap<String, String>,
) -> Result<(), kube::Error> {
    let deployment: Deployment = serde_json::from_value(json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}, "annotations": pod_annotations},
                "spec": {"containers": [{"name": "app", "image": "example/app:1"}]}
            }
        }
    }))
    .expect("a valid Deployment");
    Api::<Deployment>::namespaced(client.clone(), namespace)
        .create(&PostParams::default(), &deployment)
        .await?;
    let service: Service = serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "selector": {"app": name, "kubervisor/traffic": "yes"},
            "ports": [{"port": 80}]
        }
    }))
    .expect("a valid Service");
    Api::<Service>::namespaced(client.clone(), namespace)
        .create(&PostParams::default(), &service)
        .await?;
    Ok(())
}
