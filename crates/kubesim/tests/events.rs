//! Core `v1` Events and `events.k8s.io/v1` Events are two views of one resource, as on
//! a real API server: what one API writes, the other reads, lists and watches.

mod common;

use common::{pod_json, sim, wait_for};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Event as CoreEvent, Pod};
use k8s_openapi::api::events::v1::Event as NewEvent;
use kube::api::{Api, DeleteParams, ListParams, PostParams, WatchEvent, WatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Resource, ResourceExt};
use serde_json::json;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(10);

async fn pod(sim: &kubesim::Sim, name: &str) -> Pod {
    let pods: Api<Pod> = Api::default_namespaced(sim.client());
    let p: Pod = serde_json::from_value(pod_json(name, json!({"app": "web"}))).unwrap();
    pods.create(&PostParams::default(), &p).await.unwrap()
}

/// The selector `kubectl describe pod` lists a pod's events with.
fn describe_selector(pod: &Pod) -> String {
    format!(
        "involvedObject.name={},involvedObject.namespace=default,involvedObject.kind=Pod,involvedObject.uid={}",
        pod.name_any(),
        pod.uid().unwrap()
    )
}

#[tokio::test]
async fn an_event_created_through_events_k8s_io_is_a_core_event_with_every_field_mapped() {
    let sim = sim().await;
    let web = pod(&sim, "web-1").await;
    let new_api: Api<NewEvent> = Api::default_namespaced(sim.client());
    let core_api: Api<CoreEvent> = Api::default_namespaced(sim.client());
    let ev: NewEvent = serde_json::from_value(json!({
        "apiVersion": "events.k8s.io/v1", "kind": "Event",
        "metadata": {"name": "web-1.ejected"},
        "eventTime": "2025-03-01T10:00:00.123456Z",
        "regarding": {"apiVersion": "v1", "kind": "Pod", "name": "web-1", "namespace": "default", "uid": web.uid()},
        "related": {"apiVersion": "v1", "kind": "Service", "name": "web", "namespace": "default"},
        "note": "ejected: 62% errors", "reason": "PodEjected", "action": "Eject", "type": "Warning",
        "reportingController": "kubervisor.io/operator", "reportingInstance": "kubervisor-0",
        // The deprecated* fields must be unset on an events.k8s.io create (422 otherwise, as
        // upstream); the reverse test maps them from core.
        "series": {"count": 4, "lastObservedTime": "2025-03-01T10:05:00.000000Z"},
    }))
    .unwrap();
    new_api.create(&PostParams::default(), &ev).await.unwrap();

    let listed = core_api
        .list(&ListParams::default().fields(&describe_selector(&web)))
        .await
        .unwrap();
    assert_eq!(listed.items.len(), 1, "{listed:?}");
    let core = serde_json::to_value(&listed.items[0]).unwrap();
    assert_eq!(core["apiVersion"], "v1");
    assert_eq!(core["involvedObject"]["uid"], json!(web.uid()));
    assert_eq!(core["related"]["name"], "web");
    assert_eq!(core["message"], "ejected: 62% errors");
    assert_eq!(core["reason"], "PodEjected");
    assert_eq!(core["action"], "Eject");
    assert_eq!(core["type"], "Warning");
    assert_eq!(core["reportingComponent"], "kubervisor.io/operator");
    assert_eq!(core["reportingInstance"], "kubervisor-0");
    // Go's core Event has source without omitempty: an empty source, as upstream shows it.
    assert_eq!(core["source"], json!({}));
    assert!(core.get("count").is_none(), "{core}");
    assert_eq!(core["series"]["count"], 4);
    assert_eq!(core["eventTime"], "2025-03-01T10:00:00.123456Z");
    for events_only in [
        "regarding",
        "note",
        "deprecatedCount",
        "reportingController",
    ] {
        assert!(core.get(events_only).is_none(), "{events_only} in {core}");
    }

    // Another object's selector finds nothing; a get by name through core works.
    let other = core_api
        .list(&ListParams::default().fields("involvedObject.name=web-2"))
        .await
        .unwrap();
    assert!(other.items.is_empty());
    assert_eq!(
        core_api
            .get("web-1.ejected")
            .await
            .unwrap()
            .message
            .as_deref(),
        Some("ejected: 62% errors")
    );

    // One object: deleting it through core removes it from events.k8s.io.
    core_api
        .delete("web-1.ejected", &DeleteParams::default())
        .await
        .unwrap();
    assert!(
        new_api
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn a_core_event_reads_back_through_events_k8s_io_and_its_selectors() {
    let sim = sim().await;
    let web = pod(&sim, "web-1").await;
    let new_api: Api<NewEvent> = Api::default_namespaced(sim.client());
    let core_api: Api<CoreEvent> = Api::default_namespaced(sim.client());
    let ev: CoreEvent = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"name": "web-1.started"},
        "involvedObject": {"apiVersion": "v1", "kind": "Pod", "name": "web-1", "namespace": "default", "uid": web.uid()},
        "message": "Started container app", "reason": "Started", "type": "Normal",
        "source": {"component": "kubelet", "host": "node-a"},
        "firstTimestamp": "2025-03-01T10:00:00Z", "lastTimestamp": "2025-03-01T10:00:00Z",
        "count": 1, "reportingComponent": "kubelet", "reportingInstance": "node-a",
    }))
    .unwrap();
    core_api.create(&PostParams::default(), &ev).await.unwrap();

    let got = new_api.get("web-1.started").await.unwrap();
    let got = serde_json::to_value(&got).unwrap();
    assert_eq!(got["apiVersion"], "events.k8s.io/v1");
    assert_eq!(got["regarding"]["name"], "web-1");
    assert_eq!(got["note"], "Started container app");
    assert_eq!(
        got["deprecatedSource"],
        json!({"component": "kubelet", "host": "node-a"})
    );
    assert_eq!(got["deprecatedFirstTimestamp"], "2025-03-01T10:00:00Z");
    assert_eq!(got["deprecatedLastTimestamp"], "2025-03-01T10:00:00Z");
    assert_eq!(got["deprecatedCount"], 1);
    assert_eq!(got["reportingController"], "kubelet");
    assert_eq!(got["reportingInstance"], "node-a");
    assert!(got.get("message").is_none() && got.get("involvedObject").is_none());

    // Selectors on the events.k8s.io view use its own field names.
    let by_regarding = new_api
        .list(&ListParams::default().fields("regarding.name=web-1,regarding.kind=Pod"))
        .await
        .unwrap();
    assert_eq!(by_regarding.items.len(), 1);
    let none = new_api
        .list(&ListParams::default().fields("regarding.name=web-2"))
        .await
        .unwrap();
    assert!(none.items.is_empty());

    // A replace through events.k8s.io is seen by core.
    let mut replaced = new_api.get("web-1.started").await.unwrap();
    replaced.note = Some("Started container app (again)".into());
    replaced.deprecated_count = Some(2);
    new_api
        .replace("web-1.started", &PostParams::default(), &replaced)
        .await
        .unwrap();
    let core = core_api.get("web-1.started").await.unwrap();
    assert_eq!(
        core.message.as_deref(),
        Some("Started container app (again)")
    );
    assert_eq!(core.count, Some(2));
    sim.shutdown().await;
}

/// The next event of a watch about the named object, as "TYPE text".
async fn next_about<K, S>(stream: &mut S, name: &str, text: impl Fn(&K) -> String) -> String
where
    K: Resource + Clone,
    S: futures::Stream<Item = kube::Result<WatchEvent<K>>> + Unpin,
{
    tokio::time::timeout(WAIT, async {
        while let Some(ev) = stream.next().await {
            match ev.unwrap() {
                WatchEvent::Added(o) if o.meta().name.as_deref() == Some(name) => {
                    return format!("ADDED {}", text(&o));
                }
                WatchEvent::Modified(o) if o.meta().name.as_deref() == Some(name) => {
                    return format!("MODIFIED {}", text(&o));
                }
                _ => {}
            }
        }
        panic!("watch ended before an event about {name}");
    })
    .await
    .unwrap_or_else(|_| panic!("no watch event about {name} within {WAIT:?}"))
}

#[tokio::test]
async fn watches_on_either_event_api_see_writes_through_the_other() {
    let sim = sim().await;
    let new_api: Api<NewEvent> = Api::default_namespaced(sim.client());
    let core_api: Api<CoreEvent> = Api::default_namespaced(sim.client());
    let mut core_watch = core_api
        .watch(&WatchParams::default(), "0")
        .await
        .unwrap()
        .boxed();
    let mut new_watch = new_api
        .watch(&WatchParams::default(), "0")
        .await
        .unwrap()
        .boxed();

    let created_new: NewEvent = serde_json::from_value(json!({
        "metadata": {"name": "from-events-api"}, "eventTime": "2025-03-01T10:00:00.000000Z",
        "regarding": {"kind": "Pod", "name": "web-1", "namespace": "default"},
        "note": "written as events.k8s.io", "reason": "A", "action": "A", "type": "Normal",
        "reportingController": "test", "reportingInstance": "test-0",
    }))
    .unwrap();
    new_api
        .create(&PostParams::default(), &created_new)
        .await
        .unwrap();
    let core_message = |e: &CoreEvent| e.message.clone().unwrap_or_default();
    let new_note = |e: &NewEvent| e.note.clone().unwrap_or_default();
    assert_eq!(
        next_about(&mut core_watch, "from-events-api", core_message).await,
        "ADDED written as events.k8s.io"
    );
    assert_eq!(
        next_about(&mut new_watch, "from-events-api", new_note).await,
        "ADDED written as events.k8s.io"
    );

    let created_core: CoreEvent = serde_json::from_value(json!({
        "metadata": {"name": "from-core-api"},
        "involvedObject": {"kind": "Pod", "name": "web-1", "namespace": "default"},
        "message": "written as core v1", "reason": "B", "type": "Normal",
    }))
    .unwrap();
    core_api
        .create(&PostParams::default(), &created_core)
        .await
        .unwrap();
    assert_eq!(
        next_about(&mut new_watch, "from-core-api", new_note).await,
        "ADDED written as core v1"
    );
    assert_eq!(
        next_about(&mut core_watch, "from-core-api", core_message).await,
        "ADDED written as core v1"
    );

    // A field-selected core watch (describe's selector) sees an events.k8s.io write.
    let mut selected = core_api
        .watch(
            &WatchParams::default().fields("involvedObject.name=web-2"),
            "0",
        )
        .await
        .unwrap()
        .boxed();
    let other: NewEvent = serde_json::from_value(json!({
        "metadata": {"name": "about-web-2"}, "eventTime": "2025-03-01T10:00:00.000000Z",
        "regarding": {"kind": "Pod", "name": "web-2", "namespace": "default"},
        "note": "for web-2", "reason": "C", "action": "C", "type": "Normal",
        "reportingController": "test", "reportingInstance": "test-0",
    }))
    .unwrap();
    new_api
        .create(&PostParams::default(), &other)
        .await
        .unwrap();
    assert_eq!(
        next_about(&mut selected, "about-web-2", core_message).await,
        "ADDED for web-2"
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn recorder_events_and_their_series_patches_show_as_core_events() {
    let sim = sim().await;
    let web = pod(&sim, "web-1").await;
    let recorder = Recorder::new(
        sim.client(),
        Reporter {
            controller: "kubervisor".into(),
            instance: Some("kubervisor-0".into()),
        },
    );
    let ejected = Event {
        type_: EventType::Warning,
        reason: "PodEjected".into(),
        note: Some("ejected by breaker error-rate".into()),
        action: "Eject".into(),
        secondary: None,
    };
    let reference = web.object_ref(&());
    recorder.publish(&ejected, &reference).await.unwrap();
    // The second identical event is a merge patch of `series` through events.k8s.io.
    recorder.publish(&ejected, &reference).await.unwrap();

    let core_api: Api<CoreEvent> = Api::default_namespaced(sim.client());
    let selector = describe_selector(&web);
    let core = wait_for("the recorded event as a core event", WAIT, || async {
        let list = core_api
            .list(&ListParams::default().fields(&selector))
            .await
            .unwrap();
        list.items.into_iter().next()
    })
    .await;
    assert_eq!(
        core.message.as_deref(),
        Some("ejected by breaker error-rate")
    );
    assert_eq!(core.reason.as_deref(), Some("PodEjected"));
    assert_eq!(core.type_.as_deref(), Some("Warning"));
    assert_eq!(core.reporting_component.as_deref(), Some("kubervisor"));
    assert_eq!(core.reporting_instance.as_deref(), Some("kubervisor-0"));
    assert_eq!(core.series.as_ref().and_then(|s| s.count), Some(2));
    sim.shutdown().await;
}
