//! Conformance of the REST API as kube-rs sees it.

mod common;

use common::{pod_json, sim, sim_with, wait_for};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Endpoints, Pod, Service};
use kube::api::{
    Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kubesim::SimConfig;
use serde_json::{Value, json};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(10);

fn api_code(e: kube::Error) -> (u16, String) {
    match e {
        kube::Error::Api(s) => (s.code, s.reason),
        other => panic!("expected an API error, got {other:?}"),
    }
}

fn rv(p: &Pod) -> u64 {
    p.metadata
        .resource_version
        .as_deref()
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn create_get_update_conflict_and_not_found() {
    let sim = sim().await;
    let pods: Api<Pod> = Api::default_namespaced(sim.client());
    let p: Pod = serde_json::from_value(pod_json("a", json!({"app": "x"}))).unwrap();
    let created = pods.create(&PostParams::default(), &p).await.unwrap();
    assert!(created.metadata.uid.is_some());
    assert_eq!(
        api_code(pods.create(&PostParams::default(), &p).await.unwrap_err()),
        (409, "AlreadyExists".into())
    );
    assert_eq!(
        api_code(pods.get("missing").await.unwrap_err()),
        (404, "NotFound".into())
    );

    let mut fresh = pods.get("a").await.unwrap();
    let mut stale = fresh.clone();
    fresh
        .metadata
        .labels
        .get_or_insert_default()
        .insert("v".into(), "1".into());
    let updated = pods
        .replace("a", &PostParams::default(), &fresh)
        .await
        .unwrap();
    assert!(rv(&updated) > rv(&created), "resourceVersion increases");
    stale
        .metadata
        .labels
        .get_or_insert_default()
        .insert("v".into(), "2".into());
    assert_eq!(
        api_code(
            pods.replace("a", &PostParams::default(), &stale)
                .await
                .unwrap_err()
        ),
        (409, "Conflict".into())
    );

    // A patch carrying a stale resourceVersion is a precondition failure too.
    let stale_patch = json!({"metadata": {"resourceVersion": created.metadata.resource_version, "labels": {"v": "3"}}});
    let err = pods
        .patch("a", &PatchParams::default(), &Patch::Merge(&stale_patch))
        .await
        .unwrap_err();
    assert_eq!(api_code(err).0, 409);
    sim.shutdown().await;
}

#[tokio::test]
async fn label_and_field_selectors_filter_lists() {
    let sim = sim().await;
    let pods: Api<Pod> = Api::default_namespaced(sim.client());
    for (name, labels) in [
        ("p1", json!({"app": "web", "tier": "front"})),
        ("p2", json!({"app": "web", "tier": "back"})),
        ("p3", json!({"app": "db"})),
    ] {
        pods.create(
            &PostParams::default(),
            &serde_json::from_value(pod_json(name, labels)).unwrap(),
        )
        .await
        .unwrap();
    }
    let names = |sel: &'static str| {
        let pods = pods.clone();
        async move {
            let mut n: Vec<String> = pods
                .list(&ListParams::default().labels(sel))
                .await
                .unwrap()
                .items
                .into_iter()
                .map(|p| p.metadata.name.unwrap())
                .collect();
            n.sort();
            n.join(",")
        }
    };
    assert_eq!(names("app=web").await, "p1,p2");
    assert_eq!(names("app!=web").await, "p3");
    assert_eq!(names("tier in (front,side)").await, "p1");
    assert_eq!(names("tier notin (front)").await, "p2,p3");
    assert_eq!(names("tier").await, "p1,p2");
    assert_eq!(names("!tier").await, "p3");
    let by_name = pods
        .list(&ListParams::default().fields("metadata.name=p2"))
        .await
        .unwrap();
    assert_eq!(by_name.items.len(), 1);
    let by_ns = Api::<Pod>::all(sim.client())
        .list(&ListParams::default().fields("metadata.namespace=default"))
        .await
        .unwrap();
    assert_eq!(by_ns.items.len(), 3);
    wait_for("pods running", WAIT, || async {
        let l = pods
            .list(&ListParams::default().fields("status.phase=Running"))
            .await
            .unwrap();
        (l.items.len() == 3).then_some(())
    })
    .await;
    let err = pods
        .list(&ListParams::default().labels("app in web"))
        .await
        .unwrap_err();
    assert_eq!(api_code(err).0, 400);
    sim.shutdown().await;
}

#[tokio::test]
async fn list_pages_with_limit_and_continue() {
    let sim = sim().await;
    let cms: Api<k8s_openapi::api::core::v1::ConfigMap> = Api::default_namespaced(sim.client());
    for i in 0..7 {
        let cm = serde_json::from_value(
            json!({"metadata": {"name": format!("cm-{i}")}, "data": {"i": i.to_string()}}),
        )
        .unwrap();
        cms.create(&PostParams::default(), &cm).await.unwrap();
    }
    let mut seen = Vec::new();
    let mut lp = ListParams::default().limit(3);
    let mut pages = 0;
    loop {
        let page = cms.list(&lp).await.unwrap();
        pages += 1;
        seen.extend(page.items.into_iter().map(|c| c.metadata.name.unwrap()));
        match page.metadata.continue_ {
            Some(c) if !c.is_empty() => lp = lp.continue_token(&c),
            _ => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(seen.len(), 7);
    sim.shutdown().await;
}

#[tokio::test]
async fn watch_from_a_version_with_bookmarks_and_timeout() {
    let sim = sim().await;
    let cms: Api<k8s_openapi::api::core::v1::ConfigMap> = Api::default_namespaced(sim.client());
    let first = cms
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "one"}})).unwrap(),
        )
        .await
        .unwrap();
    let from = first.metadata.resource_version.clone().unwrap();
    cms.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": "two"}})).unwrap(),
    )
    .await
    .unwrap();
    cms.delete("one", &DeleteParams::default()).await.unwrap();
    let wp = WatchParams::default().timeout(2).disable_bookmarks();
    let events: Vec<_> = cms
        .watch(&wp, &from)
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    let kinds: Vec<String> = events
        .iter()
        .map(|e| match e {
            WatchEvent::Added(c) => format!("ADDED {}", c.metadata.name.clone().unwrap()),
            WatchEvent::Modified(c) => format!("MODIFIED {}", c.metadata.name.clone().unwrap()),
            WatchEvent::Deleted(c) => format!("DELETED {}", c.metadata.name.clone().unwrap()),
            WatchEvent::Bookmark(_) => "BOOKMARK".into(),
            WatchEvent::Error(e) => format!("ERROR {}", e.code),
        })
        .collect();
    assert_eq!(
        kinds,
        vec!["ADDED two", "DELETED one"],
        "watch replays exactly what followed the version; stream ends at timeoutSeconds"
    );

    let wp = WatchParams::default().timeout(3);
    let mut stream = cms.watch(&wp, &from).await.unwrap().boxed();
    // Skip the replay, then change something so the bookmark has news to report.
    stream.next().await.unwrap().unwrap();
    stream.next().await.unwrap().unwrap();
    cms.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": "three"}})).unwrap(),
    )
    .await
    .unwrap();
    let mut saw_bookmark = false;
    while let Some(ev) = stream.next().await {
        if let WatchEvent::Bookmark(b) = ev.unwrap() {
            assert!(b.metadata.resource_version.parse::<u64>().unwrap() > from.parse().unwrap());
            saw_bookmark = true;
            break;
        }
    }
    assert!(saw_bookmark, "allowWatchBookmarks yields a BOOKMARK");
    sim.shutdown().await;
}

#[tokio::test]
async fn watch_from_a_compacted_version_is_gone_and_watcher_relists() {
    let sim = sim_with(SimConfig {
        event_log_capacity: 20,
        ready_delay: Duration::from_millis(50),
        ..Default::default()
    })
    .await;
    let cms: Api<k8s_openapi::api::core::v1::ConfigMap> = Api::default_namespaced(sim.client());
    let first = cms
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "c0"}})).unwrap(),
        )
        .await
        .unwrap();
    for i in 1..40 {
        cms.create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": format!("c{i}")}})).unwrap(),
        )
        .await
        .unwrap();
    }
    let old = first.metadata.resource_version.unwrap();
    let mut stream = cms
        .watch(&WatchParams::default(), &old)
        .await
        .unwrap()
        .boxed();
    match stream.next().await.unwrap().unwrap() {
        WatchEvent::Error(e) => {
            assert_eq!(e.code, 410);
            assert_eq!(e.reason, "Expired");
        }
        other => panic!("expected 410 Gone, got {other:?}"),
    }

    // The kube-rs watcher relists after the server drops its watches.
    let (reader, writer) = reflector::store::<k8s_openapi::api::core::v1::ConfigMap>();
    let rf = reflector(writer, watcher(cms.clone(), watcher::Config::default())).applied_objects();
    let task = tokio::spawn(rf.for_each(|_| async {}));
    wait_for("reflector has 40 configmaps", WAIT, || async {
        (reader.state().len() == 40).then_some(())
    })
    .await;
    sim.faults().close_watches();
    for i in 40..60 {
        cms.create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": format!("c{i}")}})).unwrap(),
        )
        .await
        .unwrap();
    }
    wait_for(
        "reflector catches up after watches closed and the log compacted",
        WAIT,
        || async { (reader.state().len() == 60).then_some(()) },
    )
    .await;
    task.abort();
    sim.shutdown().await;
}

#[tokio::test]
async fn watcher_and_reflector_follow_pods_services_and_leases() {
    let sim = sim().await;
    let client = sim.client();
    let pods: Api<Pod> = Api::default_namespaced(client.clone());
    let svcs: Api<Service> = Api::default_namespaced(client.clone());
    let leases: Api<Lease> = Api::default_namespaced(client.clone());
    let (pod_reader, pod_writer) = reflector::store::<Pod>();
    let (svc_reader, svc_writer) = reflector::store::<Service>();
    let (lease_reader, lease_writer) = reflector::store::<Lease>();
    let cfg = watcher::Config::default().labels("app=web");
    let t1 = tokio::spawn(
        reflector(pod_writer, watcher(pods.clone(), cfg))
            .applied_objects()
            .for_each(|_| async {}),
    );
    let t2 = tokio::spawn(
        reflector(
            svc_writer,
            watcher(svcs.clone(), watcher::Config::default()),
        )
        .applied_objects()
        .for_each(|_| async {}),
    );
    let t3 = tokio::spawn(
        reflector(
            lease_writer,
            watcher(leases.clone(), watcher::Config::default().streaming_lists()),
        )
        .applied_objects()
        .for_each(|_| async {}),
    );

    pods.create(
        &PostParams::default(),
        &serde_json::from_value(pod_json("w1", json!({"app": "web"}))).unwrap(),
    )
    .await
    .unwrap();
    pods.create(
        &PostParams::default(),
        &serde_json::from_value(pod_json("d1", json!({"app": "db"}))).unwrap(),
    )
    .await
    .unwrap();
    svcs.create(&PostParams::default(), &serde_json::from_value(json!({"metadata": {"name": "web"}, "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}]}})).unwrap()).await.unwrap();
    let lease: Lease = serde_json::from_value(json!({"metadata": {"name": "leader"}, "spec": {"holderIdentity": "a", "leaseDurationSeconds": 10}})).unwrap();
    leases.create(&PostParams::default(), &lease).await.unwrap();
    wait_for("pod becomes ready in the reflector", WAIT, || async {
        pod_reader
            .state()
            .iter()
            .find(|p| p.metadata.name.as_deref() == Some("w1"))
            .and_then(|p| {
                p.status
                    .as_ref()?
                    .conditions
                    .as_ref()?
                    .iter()
                    .find(|c| c.type_ == "Ready" && c.status == "True")
                    .map(|_| ())
            })
    })
    .await;
    assert_eq!(
        pod_reader.state().len(),
        1,
        "label-selected watch only sees app=web"
    );
    wait_for("service and lease in reflectors", WAIT, || async {
        (svc_reader.state().len() == 1 && lease_reader.state().len() == 1).then_some(())
    })
    .await;

    // Relabelling out of the selector is a DELETED event for the selecting watcher.
    pods.patch(
        "w1",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"app": "other"}}})),
    )
    .await
    .unwrap();
    wait_for("pod leaves the selected reflector", WAIT, || async {
        pod_reader.state().is_empty().then_some(())
    })
    .await;

    let mut l = leases.get("leader").await.unwrap();
    l.spec.as_mut().unwrap().holder_identity = Some("b".into());
    leases
        .replace("leader", &PostParams::default(), &l)
        .await
        .unwrap();
    wait_for("lease holder change in reflector", WAIT, || async {
        lease_reader
            .state()
            .first()
            .and_then(|l| (l.spec.as_ref()?.holder_identity.as_deref() == Some("b")).then_some(()))
    })
    .await;
    for t in [t1, t2, t3] {
        t.abort();
    }
    sim.shutdown().await;
}

#[tokio::test]
async fn patch_types_and_their_failures() {
    let sim = sim().await;
    let pods: Api<Pod> = Api::default_namespaced(sim.client());
    pods.create(
        &PostParams::default(),
        &serde_json::from_value(pod_json("p", json!({"a": "1", "b": "2"}))).unwrap(),
    )
    .await
    .unwrap();

    let jp: json_patch::Patch = serde_json::from_value(json!([
        {"op": "test", "path": "/metadata/labels/a", "value": "1"},
        {"op": "replace", "path": "/metadata/labels/a", "value": "9"},
    ]))
    .unwrap();
    let p = pods
        .patch("p", &PatchParams::default(), &Patch::<()>::Json(jp))
        .await
        .unwrap();
    assert_eq!(p.metadata.labels.as_ref().unwrap()["a"], "9");
    let failing: json_patch::Patch =
        serde_json::from_value(json!([{"op": "test", "path": "/metadata/labels/a", "value": "1"}]))
            .unwrap();
    let err = pods
        .patch("p", &PatchParams::default(), &Patch::<()>::Json(failing))
        .await
        .unwrap_err();
    assert_eq!(api_code(err).0, 422, "a failed JSON Patch test is 422");

    let p = pods
        .patch(
            "p",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"b": null, "c": "3"}}})),
        )
        .await
        .unwrap();
    let labels = p.metadata.labels.unwrap();
    assert!(!labels.contains_key("b"));
    assert_eq!(labels["c"], "3");

    let p = pods
        .patch("p", &PatchParams::default(), &Patch::Strategic(json!({"metadata": {"annotations": {"x": "y"}}, "spec": {"containers": [{"name": "app", "image": "v2"}]}})))
        .await
        .unwrap();
    assert_eq!(p.metadata.annotations.unwrap()["x"], "y");
    assert_eq!(p.spec.unwrap().containers[0].image.as_deref(), Some("v2"));

    let applied = pods
        .patch("p", &PatchParams::apply("test").force(), &Patch::Apply(json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "labels": {"applied": "yes"}}})))
        .await
        .unwrap();
    assert_eq!(applied.metadata.labels.unwrap()["applied"], "yes");

    let err = pods
        .patch("missing", &PatchParams::default(), &Patch::Merge(json!({})))
        .await
        .unwrap_err();
    assert_eq!(api_code(err).0, 404);
    sim.shutdown().await;
}

#[tokio::test]
async fn bad_input_gets_status_errors_not_panics() {
    let sim = sim().await;
    let client = sim.client();
    let send = |method: &str, path: &str, ct: &str, body: &str| {
        let req = http::Request::builder()
            .method(method)
            .uri(path)
            .header("content-type", ct)
            .body(body.as_bytes().to_vec())
            .unwrap();
        let client = client.clone();
        async move {
            match client.request::<Value>(req).await {
                Ok(v) => (200, v["kind"].as_str().unwrap_or_default().to_string()),
                Err(kube::Error::Api(s)) => (s.code, s.reason),
                Err(e) => panic!("expected a Status, got {e:?}"),
            }
        }
    };
    let pods = "/api/v1/namespaces/default/pods";
    assert_eq!(
        send("POST", pods, "application/json", "{not json").await,
        (400, "BadRequest".into())
    );
    assert_eq!(
        send(
            "POST",
            pods,
            "application/json",
            r#"{"apiVersion":"apps/v1","kind":"Pod","metadata":{"name":"x"}}"#
        )
        .await
        .0,
        400
    );
    assert_eq!(
        send(
            "GET",
            "/api/v1/namespaces/default/widgets",
            "application/json",
            ""
        )
        .await,
        (404, "NotFound".into())
    );
    assert_eq!(
        send("GET", "/apis/nope.io/v1/things", "application/json", "")
            .await
            .0,
        404
    );
    assert_eq!(
        send("POST", &format!("{pods}/x"), "application/json", "{}")
            .await
            .0,
        405
    );
    assert_eq!(
        send(
            "POST",
            "/api/v1/namespaces/nowhere/configmaps",
            "application/json",
            r#"{"metadata":{"name":"c"}}"#
        )
        .await
        .0,
        404
    );
    let ok = send(
        "POST",
        "/api/v1/namespaces/default/configmaps",
        "application/json",
        r#"{"metadata":{"name":"c"}}"#,
    )
    .await;
    assert_eq!(ok.0, 200);
    let cm = "/api/v1/namespaces/default/configmaps/c";
    assert_eq!(send("PATCH", cm, "text/plain", "{}").await.0, 415);
    assert_eq!(
        send("PATCH", cm, "application/merge-patch+json", "[1,")
            .await
            .0,
        400
    );
    assert_eq!(
        send(
            "PATCH",
            cm,
            "application/json-patch+json",
            r#"[{"op":"nope"}]"#
        )
        .await
        .0,
        400
    );
    assert_eq!(
        send(
            "PATCH",
            cm,
            "application/json-patch+json",
            r#"[{"op":"remove","path":"/data/missing"}]"#
        )
        .await
        .0,
        422
    );
    assert_eq!(
        send(
            "POST",
            "/api/v1/namespaces/default/configmaps",
            "application/json",
            r#"{"metadata":{"name":"Bad_Name"}}"#
        )
        .await,
        (422, "Invalid".into())
    );
    assert_eq!(
        send(
            "GET",
            "/api/v1/namespaces/default/pods?watch=true&resourceVersion=abc",
            "application/json",
            ""
        )
        .await
        .0,
        400
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn custom_resources_have_status_generation_and_finalizers() {
    let sim = sim().await;
    let client = sim.client();
    let crds: Api<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> = Api::all(client.clone());
    let crd = json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.example.io"},
        "spec": {
            "group": "example.io",
            "scope": "Namespaced",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget", "shortNames": ["wd"]},
            "versions": [{"name": "v1", "served": true, "storage": true, "subresources": {"status": {}},
                          "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}],
        },
    });
    let created = crds
        .create(
            &PostParams::default(),
            &serde_json::from_value(crd).unwrap(),
        )
        .await
        .unwrap();
    let established = created
        .status
        .unwrap()
        .conditions
        .unwrap()
        .iter()
        .any(|c| c.type_ == "Established" && c.status == "True");
    assert!(established);

    let ar = kube::discovery::ApiResource {
        group: "example.io".into(),
        version: "v1".into(),
        api_version: "example.io/v1".into(),
        kind: "Widget".into(),
        plural: "widgets".into(),
    };
    let widgets: Api<kube::api::DynamicObject> = Api::default_namespaced_with(client.clone(), &ar);
    let writer = reflector::store::Writer::<kube::api::DynamicObject>::new(ar.clone());
    let reader = writer.as_reader();
    let task = tokio::spawn(
        reflector(writer, watcher(widgets.clone(), watcher::Config::default()))
            .applied_objects()
            .for_each(|_| async {}),
    );

    let w: kube::api::DynamicObject = serde_json::from_value(json!({
        "apiVersion": "example.io/v1", "kind": "Widget",
        "metadata": {"name": "w", "finalizers": ["example.io/cleanup"]},
        "spec": {"size": 1}, "status": {"ignored": true},
    }))
    .unwrap();
    let w = widgets.create(&PostParams::default(), &w).await.unwrap();
    assert_eq!(w.metadata.generation, Some(1));
    assert!(
        w.data.get("status").is_none(),
        "status is ignored on create"
    );

    let w = widgets
        .patch(
            "w",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"size": 2}, "status": {"phase": "x"}})),
        )
        .await
        .unwrap();
    assert_eq!(
        w.metadata.generation,
        Some(2),
        "spec change bumps generation"
    );
    assert!(w.data.get("status").is_none(), "spec writes ignore status");

    let w = widgets
        .patch_status(
            "w",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"size": 99}, "status": {"phase": "Ready"}})),
        )
        .await
        .unwrap();
    assert_eq!(w.data["status"]["phase"], "Ready");
    assert_eq!(w.data["spec"]["size"], 2, "status writes ignore spec");
    assert_eq!(
        w.metadata.generation,
        Some(2),
        "status writes keep generation"
    );

    let w = widgets
        .patch_status(
            "w",
            &PatchParams::apply("test").force(),
            &Patch::Apply(
                json!({"apiVersion": "example.io/v1", "kind": "Widget", "status": {"observed": 2}}),
            ),
        )
        .await
        .unwrap();
    assert_eq!(w.data["status"]["observed"], 2);

    wait_for("reflector sees the widget status", WAIT, || async {
        reader
            .state()
            .first()
            .and_then(|o| (o.data["status"]["observed"] == 2).then_some(()))
    })
    .await;

    widgets.delete("w", &DeleteParams::default()).await.unwrap();
    let w = widgets.get("w").await.unwrap();
    assert!(
        w.metadata.deletion_timestamp.is_some(),
        "finalizers hold the object with a deletionTimestamp"
    );
    widgets
        .patch(
            "w",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": null}})),
        )
        .await
        .unwrap();
    assert_eq!(
        api_code(widgets.get("w").await.unwrap_err()).0,
        404,
        "removing the last finalizer deletes"
    );
    wait_for("reflector drops the widget", WAIT, || async {
        reader.state().is_empty().then_some(())
    })
    .await;

    crds.delete("widgets.example.io", &DeleteParams::default())
        .await
        .unwrap();
    assert_eq!(
        api_code(widgets.list(&ListParams::default()).await.unwrap_err()).0,
        404,
        "resource goes with its CRD"
    );
    task.abort();
    sim.shutdown().await;
}

#[tokio::test]
async fn delete_with_grace_period_and_preconditions() {
    let sim = sim().await;
    let pods: Api<Pod> = Api::default_namespaced(sim.client());
    let p = pods
        .create(
            &PostParams::default(),
            &serde_json::from_value(pod_json("g", json!({}))).unwrap(),
        )
        .await
        .unwrap();
    let wrong = DeleteParams {
        preconditions: Some(kube::api::Preconditions {
            uid: Some("nope".into()),
            resource_version: None,
        }),
        ..Default::default()
    };
    assert_eq!(api_code(pods.delete("g", &wrong).await.unwrap_err()).0, 409);
    pods.delete("g", &DeleteParams::default().grace_period(30))
        .await
        .unwrap();
    let terminating = pods.get("g").await.unwrap();
    assert!(terminating.metadata.deletion_timestamp.is_some());
    wait_for(
        "the simulated kubelet finishes the graceful deletion",
        WAIT,
        || async { pods.get_opt("g").await.unwrap().is_none().then_some(()) },
    )
    .await;
    let q = pods
        .create(
            &PostParams::default(),
            &serde_json::from_value(pod_json("g", json!({}))).unwrap(),
        )
        .await
        .unwrap();
    assert_ne!(p.metadata.uid, q.metadata.uid);
    pods.delete("g", &DeleteParams::default().grace_period(0))
        .await
        .unwrap();
    assert!(
        pods.get_opt("g").await.unwrap().is_none(),
        "grace period 0 deletes at once"
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn a_pod_being_deleted_gracefully_takes_writes_until_the_kubelet_ends_it() {
    let sim = sim().await;
    let pods: Api<Pod> = Api::default_namespaced(sim.client());
    pods.create(
        &PostParams::default(),
        &serde_json::from_value(pod_json("g", json!({}))).unwrap(),
    )
    .await
    .unwrap();
    pods.delete("g", &DeleteParams::default().grace_period(30))
        .await
        .unwrap();
    let patched = pods
        .patch(
            "g",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"traffic": "yes"}}})),
        )
        .await
        .unwrap();
    assert!(patched.metadata.deletion_timestamp.is_some());
    let still = pods.get("g").await.unwrap();
    assert_eq!(
        still
            .metadata
            .labels
            .unwrap_or_default()
            .get("traffic")
            .map(String::as_str),
        Some("yes"),
        "the write is kept, the pod still terminating"
    );
    wait_for(
        "the simulated kubelet finishes the graceful deletion",
        WAIT,
        || async { pods.get_opt("g").await.unwrap().is_none().then_some(()) },
    )
    .await;
    sim.shutdown().await;
}

#[tokio::test]
async fn injected_faults_fail_slow_and_drop() {
    let sim = sim().await;
    let pods: Api<Pod> = Api::default_namespaced(sim.client());
    sim.faults().fail_next("list", "pods", 2, 500);
    assert_eq!(
        api_code(pods.list(&ListParams::default()).await.unwrap_err()).0,
        500
    );
    assert_eq!(
        api_code(pods.list(&ListParams::default()).await.unwrap_err()).0,
        500
    );
    pods.list(&ListParams::default()).await.unwrap();
    sim.faults()
        .add_latency("get", "pods", Duration::from_millis(200));
    let started = std::time::Instant::now();
    let _ = pods.get_opt("x").await;
    assert!(started.elapsed() >= Duration::from_millis(200));
    sim.faults().clear();
    let mut stream = pods
        .watch(&WatchParams::default(), "0")
        .await
        .unwrap()
        .boxed();
    sim.faults().close_watches();
    let ended = tokio::time::timeout(WAIT, async { while stream.next().await.is_some() {} }).await;
    assert!(ended.is_ok(), "close_watches ends open watch streams");
    sim.shutdown().await;
}

/// A client whose requests carry the observer header, as a test's invariant monitor's do.
fn observer_client(sim: &kubesim::Sim) -> kube::Client {
    let mut config = kube::Config::new(sim.url().parse().unwrap());
    config.headers.push((
        http::HeaderName::from_static(kubesim::faults::OBSERVER_HEADER),
        http::HeaderValue::from_static("1"),
    ));
    kube::Client::try_from(config).unwrap()
}

#[tokio::test]
async fn an_expired_watch_answers_410_once_and_a_fresh_list_serves() {
    let sim = sim().await;
    let pods: Api<Pod> = Api::default_namespaced(sim.client());
    let list = pods.list(&ListParams::default()).await.unwrap();
    let version = list.metadata.resource_version.unwrap();
    sim.faults().expire_next_watches(1);
    // A watch from scratch is not a resumed one: served.
    let mut fresh = pods
        .watch(&WatchParams::default(), "0")
        .await
        .unwrap()
        .boxed();
    let mut resumed = pods
        .watch(&WatchParams::default(), &version)
        .await
        .unwrap()
        .boxed();
    match resumed.next().await.unwrap().unwrap() {
        WatchEvent::Error(e) => assert_eq!((e.code, e.reason.as_str()), (410, "Expired")),
        other => panic!("expected 410 Gone, got {other:?}"),
    }
    // Consumed: the next resumed watch is served and sees a new pod.
    let mut again = pods
        .watch(&WatchParams::default(), &version)
        .await
        .unwrap()
        .boxed();
    pods.create(
        &PostParams::default(),
        &serde_json::from_value(pod_json("e", json!({"app": "x"}))).unwrap(),
    )
    .await
    .unwrap();
    for stream in [&mut fresh, &mut again] {
        match tokio::time::timeout(WAIT, stream.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap()
        {
            WatchEvent::Added(p) => assert_eq!(p.metadata.name.as_deref(), Some("e")),
            other => panic!("expected the new pod, got {other:?}"),
        }
    }
    sim.shutdown().await;
}

#[tokio::test]
async fn an_observer_is_never_faulted() {
    let sim = sim().await;
    let pods: Api<Pod> = Api::default_namespaced(sim.client());
    let observed: Api<Pod> = Api::default_namespaced(observer_client(&sim));
    sim.faults().fail_next("*", "*", 100, 500);
    sim.faults().expire_next_watches(100);
    assert_eq!(
        api_code(pods.list(&ListParams::default()).await.unwrap_err()).0,
        500
    );
    let version = observed
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    let mut stream = observed
        .watch(&WatchParams::default(), &version)
        .await
        .unwrap()
        .boxed();
    sim.faults().close_watches();
    sim.faults().clear();
    pods.create(
        &PostParams::default(),
        &serde_json::from_value(pod_json("o", json!({"app": "x"}))).unwrap(),
    )
    .await
    .unwrap();
    // Neither expired nor closed: the observer's stream goes on.
    match tokio::time::timeout(WAIT, stream.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap()
    {
        WatchEvent::Added(p) => assert_eq!(p.metadata.name.as_deref(), Some("o")),
        other => panic!("expected the new pod, got {other:?}"),
    }
    sim.shutdown().await;
}

#[tokio::test]
async fn endpoints_follow_readiness_and_labels_within_100ms() {
    let sim = sim().await;
    let client = sim.client();
    let pods: Api<Pod> = Api::default_namespaced(client.clone());
    let svcs: Api<Service> = Api::default_namespaced(client.clone());
    let eps: Api<Endpoints> = Api::default_namespaced(client.clone());
    svcs.create(&PostParams::default(), &serde_json::from_value(json!({"metadata": {"name": "web"}, "spec": {"selector": {"app": "web", "kubervisor/traffic": "yes"}, "ports": [{"port": 80, "targetPort": 8080}]}})).unwrap()).await.unwrap();
    for i in 0..3 {
        pods.create(
            &PostParams::default(),
            &serde_json::from_value(pod_json(
                &format!("w{i}"),
                json!({"app": "web", "kubervisor/traffic": "yes"}),
            ))
            .unwrap(),
        )
        .await
        .unwrap();
    }
    let ready_names = || async {
        let ep = eps.get_opt("web").await.unwrap()?;
        let mut names: Vec<String> = ep
            .subsets
            .unwrap_or_default()
            .into_iter()
            .flat_map(|s| s.addresses.unwrap_or_default())
            .filter_map(|a| a.target_ref?.name)
            .collect();
        names.sort();
        Some(names)
    };
    wait_for("three ready endpoints", WAIT, || async {
        ready_names().await.filter(|n| n.len() == 3)
    })
    .await;
    let started = std::time::Instant::now();
    pods.patch(
        "w1",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"kubervisor/traffic": "no"}}})),
    )
    .await
    .unwrap();
    wait_for(
        "relabelled pod leaves the endpoints",
        Duration::from_millis(100),
        || async {
            ready_names()
                .await
                .filter(|n| *n == vec!["w0".to_string(), "w2".to_string()])
        },
    )
    .await;
    assert!(started.elapsed() <= Duration::from_millis(150));

    // Readiness: the ready annotation makes a running pod unready, like a failing probe.
    pods.patch(
        "w2",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": {"sim.kubervisor.io/ready": "false"}}})),
    )
    .await
    .unwrap();
    wait_for(
        "unready pod leaves the endpoints",
        Duration::from_millis(500),
        || async { ready_names().await.filter(|n| *n == vec!["w0".to_string()]) },
    )
    .await;
    let slices: Api<k8s_openapi::api::discovery::v1::EndpointSlice> =
        Api::default_namespaced(client.clone());
    let slice = slices
        .list(&ListParams::default().labels("kubernetes.io/service-name=web"))
        .await
        .unwrap();
    let ready: Vec<_> = slice.items[0]
        .endpoints
        .iter()
        .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) == Some(true))
        .collect();
    assert_eq!(ready.len(), 1);
    svcs.delete("web", &DeleteParams::default()).await.unwrap();
    wait_for("endpoints go with the service", WAIT, || async {
        eps.get_opt("web").await.unwrap().is_none().then_some(())
    })
    .await;
    sim.shutdown().await;
}

#[tokio::test]
async fn deployments_keep_replicas_and_are_garbage_collected() {
    let sim = sim().await;
    let client = sim.client();
    let deploys: Api<k8s_openapi::api::apps::v1::Deployment> =
        Api::default_namespaced(client.clone());
    let pods: Api<Pod> = Api::default_namespaced(client.clone());
    let d = json!({"metadata": {"name": "web"}, "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web"}},
        "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "app", "image": "sim"}]}}}});
    deploys
        .create(&PostParams::default(), &serde_json::from_value(d).unwrap())
        .await
        .unwrap();
    let names = wait_for("three ready pods", WAIT, || async {
        let d = deploys.get("web").await.unwrap();
        let ready = d.status.and_then(|s| s.ready_replicas).unwrap_or(0);
        let l = pods
            .list(&ListParams::default().labels("app=web"))
            .await
            .unwrap();
        (ready == 3 && l.items.len() == 3).then(|| {
            l.items
                .into_iter()
                .map(|p| p.metadata.name.unwrap())
                .collect::<Vec<_>>()
        })
    })
    .await;
    for n in &names {
        assert!(
            n.starts_with("web-") && n.len() == "web-".len() + 5,
            "name {n}"
        );
    }
    let p = pods.get(&names[0]).await.unwrap();
    assert_eq!(p.metadata.owner_references.unwrap()[0].kind, "Deployment");
    pods.delete(&names[0], &DeleteParams::default().grace_period(0))
        .await
        .unwrap();
    wait_for("replacement pod", WAIT, || async {
        let l = pods
            .list(&ListParams::default().labels("app=web"))
            .await
            .unwrap();
        (l.items.len() == 3
            && l.items
                .iter()
                .all(|p| p.metadata.name.as_deref() != Some(&names[0])))
        .then_some(())
    })
    .await;
    deploys
        .delete("web", &DeleteParams::default())
        .await
        .unwrap();
    wait_for("pods collected", WAIT, || async {
        pods.list(&ListParams::default().labels("app=web"))
            .await
            .unwrap()
            .items
            .is_empty()
            .then_some(())
    })
    .await;
    sim.shutdown().await;
}

/// One HTTP/1.1 request on its own connection: (status code, body as JSON).
async fn raw_request(
    sim: &kubesim::Sim,
    method: &str,
    path: &str,
    ct: &str,
    body: &[u8],
) -> (u16, Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = sim.url().trim_start_matches("http://").to_string();
    let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: {ct}\r\nAccept: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(body).await.unwrap();
    let mut resp = Vec::new();
    stream.read_to_end(&mut resp).await.unwrap();
    let text = String::from_utf8_lossy(&resp).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let code = head.split(' ').nth(1).unwrap().parse().unwrap();
    (code, serde_json::from_str(body).unwrap_or(Value::Null))
}

/// A protobuf field of a test body: `number` with length-delimited `bytes`, or a varint.
fn pb_len(number: u8, bytes: &[u8]) -> Vec<u8> {
    assert!(
        bytes.len() < 128,
        "one-byte lengths keep the encoder trivial"
    );
    let mut out = vec![(number << 3) | 2, bytes.len() as u8];
    out.extend_from_slice(bytes);
    out
}

fn pb_envelope(api_version: &str, kind: &str, raw: &[u8]) -> Vec<u8> {
    let type_meta = [
        pb_len(1, api_version.as_bytes()),
        pb_len(2, kind.as_bytes()),
    ]
    .concat();
    [b"k8s\0".to_vec(), pb_len(1, &type_meta), pb_len(2, raw)].concat()
}

const PROTOBUF: &str = "application/vnd.kubernetes.protobuf";

#[tokio::test]
async fn protobuf_bodies_are_decoded_or_refused_with_a_status() {
    let sim = sim().await;
    let cms = "/api/v1/namespaces/default/configmaps";
    // ConfigMap{metadata{name: "pb"}, data{"k": "v"}}
    let entry = [pb_len(1, b"k"), pb_len(2, b"v")].concat();
    let cm = [pb_len(1, &pb_len(1, b"pb")), pb_len(2, &entry)].concat();
    let (code, created) = raw_request(
        &sim,
        "POST",
        cms,
        PROTOBUF,
        &pb_envelope("v1", "ConfigMap", &cm),
    )
    .await;
    assert_eq!(code, 201, "{created}");
    assert_eq!(created["data"], json!({"k": "v"}));

    // A kind with no protobuf form (custom resources have none): 415, as upstream.
    let (code, status) = raw_request(
        &sim,
        "POST",
        cms,
        PROTOBUF,
        &pb_envelope("example.io/v1", "Widget", &[]),
    )
    .await;
    assert_eq!(
        (code, status["reason"].as_str()),
        (415, Some("UnsupportedMediaType"))
    );
    assert!(
        status["message"]
            .as_str()
            .unwrap()
            .contains("example.io/v1, Kind=Widget"),
        "{status}"
    );

    // A field number the table does not know is refused, not dropped.
    let unknown = [pb_len(1, &pb_len(1, b"pb2")), pb_len(15, b"?")].concat();
    let (code, status) = raw_request(
        &sim,
        "POST",
        cms,
        PROTOBUF,
        &pb_envelope("v1", "ConfigMap", &unknown),
    )
    .await;
    assert_eq!((code, status["reason"].as_str()), (400, Some("BadRequest")));
    assert!(
        status["message"]
            .as_str()
            .unwrap()
            .contains("unknown field number 15"),
        "{status}"
    );

    // Truncated bodies and missing magic are 400s too.
    let mut truncated = pb_envelope("v1", "ConfigMap", &cm);
    truncated.truncate(truncated.len() - 2);
    let (code, _) = raw_request(&sim, "POST", cms, PROTOBUF, &truncated).await;
    assert_eq!(code, 400);
    let (code, status) = raw_request(&sim, "POST", cms, PROTOBUF, b"{}").await;
    assert_eq!(code, 400);
    assert!(
        status["message"].as_str().unwrap().contains("k8s"),
        "{status}"
    );
    // The envelope's kind must match the URL's resource.
    let (code, _) = raw_request(
        &sim,
        "POST",
        cms,
        PROTOBUF,
        &pb_envelope("v1", "Secret", &cm),
    )
    .await;
    assert_eq!(code, 400);
    let (code, _) = raw_request(&sim, "POST", cms, "text/plain", b"x").await;
    assert_eq!(code, 415);
    sim.shutdown().await;
}

#[tokio::test]
async fn the_scale_subresource_reads_and_writes_deployment_replicas() {
    let sim = sim().await;
    let deploy = json!({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
                 "template": {"metadata": {"labels": {"app": "web"}},
                              "spec": {"containers": [{"name": "app", "image": "sim"}]}}},
    });
    let deploys = "/apis/apps/v1/namespaces/default/deployments";
    let (code, _) = raw_request(
        &sim,
        "POST",
        deploys,
        "application/json",
        deploy.to_string().as_bytes(),
    )
    .await;
    assert_eq!(code, 201);
    let scale_path = format!("{deploys}/web/scale");
    let (code, scale) = raw_request(&sim, "GET", &scale_path, "", b"").await;
    assert_eq!(code, 200);
    assert_eq!(scale["apiVersion"], "autoscaling/v1");
    assert_eq!(scale["spec"]["replicas"], 2);
    assert_eq!(scale["status"]["selector"], "app=web");

    // PUT with the version read succeeds; the same version again is a conflict.
    let mut put = scale.clone();
    put["spec"]["replicas"] = json!(4);
    let (code, after) = raw_request(
        &sim,
        "PUT",
        &scale_path,
        "application/json",
        put.to_string().as_bytes(),
    )
    .await;
    assert_eq!((code, &after["spec"]["replicas"]), (200, &json!(4)));
    let (code, status) = raw_request(
        &sim,
        "PUT",
        &scale_path,
        "application/json",
        put.to_string().as_bytes(),
    )
    .await;
    assert_eq!((code, status["reason"].as_str()), (409, Some("Conflict")));

    let (code, after) = raw_request(
        &sim,
        "PATCH",
        &scale_path,
        "application/merge-patch+json",
        br#"{"spec":{"replicas":1}}"#,
    )
    .await;
    assert_eq!((code, &after["spec"]["replicas"]), (200, &json!(1)));
    let d: Value = serde_json::to_value(
        Api::<k8s_openapi::api::apps::v1::Deployment>::default_namespaced(sim.client())
            .get("web")
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(d["spec"]["replicas"], 1);

    let (code, status) = raw_request(
        &sim,
        "PATCH",
        &scale_path,
        "application/merge-patch+json",
        br#"{"spec":{"replicas":-1}}"#,
    )
    .await;
    assert_eq!((code, status["reason"].as_str()), (422, Some("Invalid")));
    let (code, _) = raw_request(&sim, "GET", &format!("{deploys}/missing/scale"), "", b"").await;
    assert_eq!(code, 404);
    let (code, _) = raw_request(
        &sim,
        "GET",
        "/api/v1/namespaces/default/pods/x/scale",
        "",
        b"",
    )
    .await;
    assert_eq!(code, 404);
    sim.shutdown().await;
}

/// As Kubernetes 1.34 deletes a namespace: its pods first, the rest only once they are
/// gone; nothing new is admitted meanwhile (a Deployment's replacement pods, an eviction),
/// and the namespace goes once it is empty.
#[tokio::test]
async fn a_namespace_is_emptied_pods_first_then_removed() {
    use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
    let sim = sim_with(SimConfig {
        ready_delay: Duration::from_millis(100),
        namespace_deletion_delay: Duration::from_millis(200),
        ..Default::default()
    })
    .await;
    let client = sim.client();
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "doomed"}})).unwrap(),
        )
        .await
        .unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), "doomed");
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "doomed");
    let mut held = pod_json("held", json!({"app": "web"}));
    held["metadata"]["finalizers"] = json!(["example.com/hold"]);
    pods.create(
        &PostParams::default(),
        &serde_json::from_value(held).unwrap(),
    )
    .await
    .unwrap();
    cms.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": "cfg"}})).unwrap(),
    )
    .await
    .unwrap();
    let deployments: Api<k8s_openapi::api::apps::v1::Deployment> =
        Api::namespaced(client.clone(), "doomed");
    deployments
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "web"}, "spec": {
                "replicas": 2,
                "selector": {"matchLabels": {"app": "fleet"}},
                "template": {"metadata": {"labels": {"app": "fleet"}},
                             "spec": {"containers": [{"name": "app", "image": "sim"}]}},
            }}))
            .unwrap(),
        )
        .await
        .unwrap();
    wait_for("three pods", WAIT, || async {
        (pods.list(&ListParams::default()).await.ok()?.items.len() == 3).then_some(())
    })
    .await;

    let deleted = namespaces
        .delete("doomed", &DeleteParams::default())
        .await
        .unwrap();
    let terminating = deleted
        .left()
        .expect("the namespace is kept while it empties");
    assert_eq!(
        terminating.status.and_then(|s| s.phase).as_deref(),
        Some("Terminating")
    );
    let refused = pods
        .create(
            &PostParams::default(),
            &serde_json::from_value(pod_json("late", json!({}))).unwrap(),
        )
        .await
        .unwrap_err();
    assert_eq!(api_code(refused), (403, "Forbidden".into()));

    // Only the held pod remains, terminating; the Deployment replaces nothing, and the
    // ConfigMap is left alone while a pod remains.
    wait_for("only the held pod left, terminating", WAIT, || async {
        let left = pods.list(&ListParams::default()).await.ok()?.items;
        let only_held = left.len() == 1
            && left[0].metadata.name.as_deref() == Some("held")
            && left[0].metadata.deletion_timestamp.is_some();
        only_held.then_some(())
    })
    .await;
    let cfg = cms.get("cfg").await.unwrap();
    assert!(cfg.metadata.deletion_timestamp.is_none(), "{cfg:?}");
    let eviction = http::Request::post("/api/v1/namespaces/doomed/pods/held/eviction")
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(serde_json::to_vec(&json!({"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": "held"}})).unwrap())
        .unwrap();
    let refused = client.request_text(eviction).await.unwrap_err();
    assert_eq!(api_code(refused), (403, "Forbidden".into()));

    pods.patch(
        "held",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .unwrap();
    wait_for("the namespace to be gone", WAIT, || async {
        matches!(namespaces.get_opt("doomed").await, Ok(None)).then_some(())
    })
    .await;
    for store_key in [("", "configmaps"), ("apps", "deployments"), ("", "pods")] {
        let key = kubesim::resources::ResKey::new(store_key.0, store_key.1);
        assert!(
            sim.store().list_all(&key, Some("doomed")).is_empty(),
            "{store_key:?} left behind"
        );
    }
    sim.shutdown().await;
}
